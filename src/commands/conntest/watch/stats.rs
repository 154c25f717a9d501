//! What a watch knows about one target: counts, latency statistics and the up/down
//! history, kept as probes finish. Pure bookkeeping: the caller passes in when each
//! probe started, so the logic is tested without a clock.
//!
//! Times come in two forms: a monotonic offset from the start of the watch (for
//! durations, which must not jump with the wall clock) and the wall-clock moment of
//! the same instant (for the `since 12:00:03.412` a person reads).

use std::time::Duration;

/// One instant of the watch: where it lies on the monotonic clock, and what the wall
/// clock said then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Moment {
    /// Time since the watch started, on the monotonic clock.
    pub offset: Duration,
    /// The wall-clock time of the same instant.
    pub wall: jiff::Timestamp,
}

/// A target's state as the probes so far tell it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// No probe has finished yet.
    Unknown,
    /// The last probe passed.
    Up,
    /// The last probe failed; the target has been down since the first failure of this
    /// run of failures.
    Down {
        /// When the first failed probe of this run started.
        since: Moment,
        /// What that probe found (`refused`, `timeout`, ...).
        reason: String,
    },
}

impl State {
    /// The word for the summary and JSON: `up`, `down` or `unknown`.
    pub fn as_str(&self) -> &'static str {
        match self {
            State::Unknown => "unknown",
            State::Up => "up",
            State::Down { .. } => "down",
        }
    }
}

/// A change of state that deserves a line of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The target went down (or was down from the first probe).
    Down {
        /// When the failing probe started.
        since: Moment,
        /// What it found.
        reason: String,
    },
    /// The target answered again after being down.
    Up {
        /// How long it was down: from the first failed probe's start to this probe's start.
        after: Duration,
    },
}

/// A stretch of time a target was down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DownSpan {
    /// When it began (the first failed probe's start).
    pub from: Moment,
    /// When it ended (the next passing probe's start); `None` while it lasts.
    pub to: Option<Moment>,
    /// Its length (up to the summary's moment, for a span that lasts).
    pub length: Duration,
}

/// Everything a watch's summary says about one target.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Probes that finished.
    pub probes: u64,
    /// Probes that passed.
    pub ok: u64,
    /// Probes that failed.
    pub failed: u64,
    /// Ticks skipped because the previous probe was still pending.
    pub skipped: u64,
    /// Latency of the passing probes, in milliseconds; `None` when none passed.
    pub latency: Option<Latency>,
    /// The longest time the target was down, if it ever was.
    pub longest_down: Option<DownSpan>,
    /// The state at the summary's moment.
    pub state: State,
}

impl Summary {
    /// The share of finished probes that failed, in percent (0 with no probes).
    pub fn failed_percent(&self) -> f64 {
        if self.probes == 0 {
            0.0
        } else {
            self.failed as f64 * 100.0 / self.probes as f64
        }
    }
}

/// Latency statistics as ping prints them, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    /// The fastest.
    pub min_ms: f64,
    /// The mean.
    pub avg_ms: f64,
    /// The slowest.
    pub max_ms: f64,
    /// ping's mdev: the square root of mean(t²) − mean(t)².
    pub mdev_ms: f64,
}

/// The running record of one target.
#[derive(Debug, Clone)]
pub struct TargetStats {
    probes: u64,
    ok: u64,
    skipped: u64,
    // Exact sums in microseconds (the resolution reported), so the variance of equal samples is exactly zero
    // (u128 holds the squares of a century of probes).
    sum_us: u128,
    sum_sq_us: u128,
    min: Duration,
    max: Duration,
    state: State,
    longest_down: Option<DownSpan>,
}

impl Default for TargetStats {
    fn default() -> Self {
        TargetStats::new()
    }
}

impl TargetStats {
    /// A target with no probe yet.
    pub fn new() -> TargetStats {
        TargetStats {
            probes: 0,
            ok: 0,
            skipped: 0,
            sum_us: 0,
            sum_sq_us: 0,
            min: Duration::MAX,
            max: Duration::ZERO,
            state: State::Unknown,
            longest_down: None,
        }
    }

    /// The number of probes that finished (the next probe's `seq` is one more).
    pub fn probes(&self) -> u64 {
        self.probes
    }

    /// The current state.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Whether any probe has passed.
    pub fn ever_up(&self) -> bool {
        self.ok > 0
    }

    /// A tick came while the previous probe was still pending (K-03): no probe started.
    pub fn record_skipped(&mut self) {
        self.skipped += 1;
    }

    /// A probe that started at `started` passed after `time`. Returns the change of
    /// state, if this ends a time down.
    pub fn record_ok(&mut self, started: Moment, time: Duration) -> Option<Change> {
        self.probes += 1;
        self.ok += 1;
        let us = time.as_micros();
        self.sum_us += us;
        self.sum_sq_us += us * us;
        self.min = self.min.min(time);
        self.max = self.max.max(time);
        let previous = std::mem::replace(&mut self.state, State::Up);
        match previous {
            State::Down { since, .. } => {
                let span = DownSpan {
                    from: since,
                    to: Some(started),
                    length: started.offset.saturating_sub(since.offset),
                };
                self.keep_if_longest(span);
                Some(Change::Up { after: span.length })
            }
            State::Up | State::Unknown => None,
        }
    }

    /// A probe that started at `started` failed with `reason`. Returns the change of
    /// state when the target was not already down.
    pub fn record_failed(&mut self, started: Moment, reason: &str) -> Option<Change> {
        self.probes += 1;
        if matches!(self.state, State::Down { .. }) {
            return None;
        }
        self.state = State::Down {
            since: started,
            reason: reason.to_owned(),
        };
        Some(Change::Down {
            since: started,
            reason: reason.to_owned(),
        })
    }

    fn keep_if_longest(&mut self, span: DownSpan) {
        if self
            .longest_down
            .is_none_or(|longest| span.length > longest.length)
        {
            self.longest_down = Some(span);
        }
    }

    /// The summary at `now`: a time down that still lasts counts up to `now`.
    pub fn summary(&self, now: Moment) -> Summary {
        let mut longest_down = self.longest_down;
        if let State::Down { since, .. } = &self.state {
            let ongoing = DownSpan {
                from: *since,
                to: None,
                length: now.offset.saturating_sub(since.offset),
            };
            if longest_down.is_none_or(|longest| ongoing.length > longest.length) {
                longest_down = Some(ongoing);
            }
        }
        let latency = (self.ok > 0).then(|| {
            let n = u128::from(self.ok);
            // mean(t²) − mean(t)² = (n·Σt² − (Σt)²) / n², never negative in integers.
            let spread = n * self.sum_sq_us - self.sum_us * self.sum_us;
            let variance_us2 = spread as f64 / (n * n) as f64;
            Latency {
                min_ms: self.min.as_secs_f64() * 1000.0,
                avg_ms: self.sum_us as f64 / n as f64 / 1e3,
                max_ms: self.max.as_secs_f64() * 1000.0,
                mdev_ms: variance_us2.sqrt() / 1e3,
            }
        });
        Summary {
            probes: self.probes,
            ok: self.ok,
            failed: self.probes - self.ok,
            skipped: self.skipped,
            latency,
            longest_down,
            state: self.state.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Moment {
        let base = jiff::Timestamp::from_second(1_800_000_000).expect("a valid timestamp");
        Moment {
            offset: Duration::from_millis(ms),
            wall: base + jiff::SignedDuration::from_millis(ms as i64),
        }
    }

    fn ms(n: f64) -> Duration {
        Duration::from_secs_f64(n / 1000.0)
    }

    #[test]
    fn mdev_is_the_root_of_mean_square_minus_square_mean() {
        let mut stats = TargetStats::new();
        let samples = [0.081, 0.104, 0.131, 0.100];
        for (i, t) in samples.iter().enumerate() {
            assert_eq!(stats.record_ok(at(i as u64 * 1000), ms(*t)), None);
        }
        let latency = stats
            .summary(at(4000))
            .latency
            .expect("four passing probes");
        let n = samples.len() as f64;
        let mean = samples.iter().sum::<f64>() / n;
        let mean_sq = samples.iter().map(|t| t * t).sum::<f64>() / n;
        let expected = (mean_sq - mean * mean).sqrt();
        assert!((latency.mdev_ms - expected).abs() < 1e-6, "{latency:?}");
        assert!((latency.avg_ms - mean).abs() < 1e-6);
        assert!((latency.min_ms - 0.081).abs() < 1e-6);
        assert!((latency.max_ms - 0.131).abs() < 1e-6);
    }

    #[test]
    fn equal_samples_have_zero_mdev_not_nan() {
        let mut stats = TargetStats::new();
        for i in 0..1000 {
            stats.record_ok(at(i), ms(0.1));
        }
        let latency = stats.summary(at(1000)).latency.expect("passing probes");
        assert_eq!(latency.mdev_ms, 0.0);
    }

    #[test]
    fn a_target_that_never_answered_has_no_latency() {
        let mut stats = TargetStats::new();
        stats.record_failed(at(0), "refused");
        let summary = stats.summary(at(10));
        assert_eq!(summary.latency, None);
        assert!(!stats.ever_up());
        assert_eq!(summary.failed_percent(), 100.0);
    }

    #[test]
    fn first_failure_is_a_change_and_later_ones_are_not() {
        let mut stats = TargetStats::new();
        assert_eq!(
            stats.record_failed(at(0), "refused"),
            Some(Change::Down {
                since: at(0),
                reason: "refused".into()
            })
        );
        assert_eq!(stats.record_failed(at(1000), "timeout"), None);
        // The reason stays that of the probe that started the time down.
        assert!(matches!(stats.state(), State::Down { reason, .. } if reason == "refused"));
    }

    #[test]
    fn first_success_is_not_a_change() {
        let mut stats = TargetStats::new();
        assert_eq!(stats.record_ok(at(0), ms(0.1)), None);
        assert_eq!(stats.state(), &State::Up);
    }

    #[test]
    fn up_again_reports_the_time_since_the_first_failure() {
        let mut stats = TargetStats::new();
        stats.record_ok(at(0), ms(0.1));
        stats.record_failed(at(1000), "refused");
        stats.record_failed(at(2000), "refused");
        assert_eq!(
            stats.record_ok(at(3004), ms(0.1)),
            Some(Change::Up {
                after: Duration::from_millis(2004)
            })
        );
        let summary = stats.summary(at(5000));
        assert_eq!(
            summary.longest_down,
            Some(DownSpan {
                from: at(1000),
                to: Some(at(3004)),
                length: Duration::from_millis(2004)
            })
        );
        assert_eq!(summary.state, State::Up);
        assert_eq!((summary.probes, summary.ok, summary.failed), (4, 2, 2));
        assert_eq!(summary.failed_percent(), 50.0);
    }

    #[test]
    fn the_longest_of_several_times_down_is_kept() {
        let mut stats = TargetStats::new();
        stats.record_failed(at(0), "refused");
        stats.record_ok(at(3000), ms(0.1)); // down 3 s
        stats.record_failed(at(4000), "refused");
        stats.record_ok(at(5000), ms(0.1)); // down 1 s: shorter, not kept
        let longest = stats.summary(at(6000)).longest_down.expect("was down");
        assert_eq!(longest.length, Duration::from_secs(3));
        assert_eq!(longest.from, at(0));
    }

    #[test]
    fn a_time_down_that_lasts_counts_up_to_the_summary() {
        let mut stats = TargetStats::new();
        stats.record_failed(at(0), "refused");
        stats.record_ok(at(1000), ms(0.1)); // down 1 s
        stats.record_failed(at(2000), "timeout");
        let longest = stats.summary(at(4500)).longest_down.expect("down now");
        assert_eq!(longest.length, Duration::from_millis(2500));
        assert_eq!(longest.to, None);
        // An earlier, longer time down beats a short ongoing one.
        let longest = stats.summary(at(2500)).longest_down.expect("was down");
        assert_eq!(longest.length, Duration::from_secs(1));
        assert_eq!(longest.to, Some(at(1000)));
    }

    #[test]
    fn skipped_ticks_are_counted_but_are_not_probes() {
        let mut stats = TargetStats::new();
        stats.record_ok(at(0), ms(0.1));
        stats.record_skipped();
        stats.record_skipped();
        let summary = stats.summary(at(3000));
        assert_eq!((summary.probes, summary.skipped), (1, 2));
        assert_eq!(stats.probes(), 1);
    }
}
