//! `conntest --watch`: probes repeated on a fixed grid, a line each, and a summary
//! with loss and latency when stopped (a TCP ping).
//!
//! - [`stats`]: per-target counts, latency statistics and the up/down history;
//! - [`lines`]: what is printed, as text and as JSON;
//! - [`probe`]: the real probes, and the requests for a summary (Ctrl-\\, Enter);
//! - this module: the grid. Each target has a [`LoopingCall`] started at once; a tick
//!   starts a probe, unless the previous one is still pending within its timeout, in
//!   which case the tick is skipped and counted (as are grid points that passed
//!   while the process was not scheduled). A pending probe whose timeout has
//!   passed by the time of the next tick is ended there as a timeout, so a timeout
//!   equal to the interval (the default) never costs a tick.
//!
//! The driver is written against a [`Prober`] and any [`Scheduler`], so the grid and
//! the bookkeeping are tested on `FakeClock` with scripted probes; the command plugs
//! in the real check.

pub mod lines;
pub mod probe;
pub mod stats;

use std::cell::RefCell;
use std::io::Write;
use std::rc::Rc;
use std::time::Duration;

use jiff::tz::TimeZone;

use crate::reactor::looping::LoopingCall;
use crate::reactor::time::Scheduler;

use lines::ProbeReport;
use stats::{Moment, TargetStats};

/// How a watch runs and what it prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchOptions {
    /// Time between the starts of two probes of one target.
    pub interval: Duration,
    /// Stop after this many probes per target (skipped ticks do not count).
    pub count: Option<u64>,
    /// One probe's timeout.
    pub timeout: Duration,
    /// `--timestamps`: prefix each probe line with the local time.
    pub timestamps: bool,
    /// `--changes`: print only the state-change lines (and the summary).
    pub changes_only: bool,
    /// `--json`: one object per probe, and one summary object per target.
    pub json: bool,
}

/// A watched target, as printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchTarget {
    /// `127.0.0.1 port 80`.
    pub label: String,
    /// The host as typed.
    pub host: String,
    /// The port (`None` for UNIX targets).
    pub port: Option<u16>,
}

/// How one probe ended.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeResult {
    /// The status word (`open`, `refused`, `timeout`, ...).
    pub status: &'static str,
    /// Whether the probe passed.
    pub passed: bool,
    /// From `connect()` to the connection being established.
    pub time: Option<Duration>,
    /// From `connect()` to the end of the TLS handshake, with TLS.
    pub tls_time: Option<Duration>,
    /// For a failure: its words.
    pub error: Option<String>,
}

/// A probe under way.
pub trait PendingProbe {
    /// Stops it; its `done` is then never called.
    fn cancel(&self);
}

/// What starts probes.
pub trait Prober {
    /// Starts probing target `index`; `done` gets the result through the loop (never
    /// from inside this call).
    fn start(&self, index: usize, done: Box<dyn FnOnce(ProbeResult)>) -> Box<dyn PendingProbe>;
}

struct Pending {
    seq: u64,
    started: Moment,
    probe: Box<dyn PendingProbe>,
}

struct TargetState {
    stats: TargetStats,
    /// Probes started so far (the last one's `seq`).
    started: u64,
    pending: Option<Pending>,
    looping: Option<LoopingCall>,
    /// Every probe it will run has finished.
    done: bool,
}

struct Inner {
    scheduler: Rc<dyn Scheduler>,
    prober: Box<dyn Prober>,
    options: WatchOptions,
    targets: Vec<WatchTarget>,
    origin: Duration,
    origin_wall: jiff::Timestamp,
    tz: TimeZone,
    states: RefCell<Vec<TargetState>>,
    out: RefCell<Box<dyn Write>>,
    /// The line being written, kept for the next one.
    line: RefCell<String>,
    on_finished: RefCell<Option<Box<dyn FnOnce()>>>,
}

/// A watch in progress. Cheap to clone.
#[derive(Clone)]
pub struct Watch {
    inner: Rc<Inner>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("targets", &self.inner.targets)
            .field("options", &self.inner.options)
            .finish()
    }
}

impl Watch {
    /// Starts watching `targets` (the first probes start inside this call). `out` gets
    /// every line, flushed as written; `tz` is the zone of the times printed;
    /// `on_finished` runs once every target has run its `--count` probes, or when a
    /// line cannot be written.
    pub fn start(
        scheduler: Rc<dyn Scheduler>,
        prober: Box<dyn Prober>,
        targets: Vec<WatchTarget>,
        options: WatchOptions,
        out: Box<dyn Write>,
        tz: TimeZone,
        on_finished: impl FnOnce() + 'static,
    ) -> Watch {
        let states = targets
            .iter()
            .map(|_| TargetState {
                stats: TargetStats::new(),
                started: 0,
                pending: None,
                looping: None,
                done: false,
            })
            .collect();
        let watch = Watch {
            inner: Rc::new(Inner {
                origin: scheduler.seconds(),
                origin_wall: jiff::Timestamp::now(),
                scheduler,
                prober,
                options,
                targets,
                tz,
                states: RefCell::new(states),
                out: RefCell::new(out),
                line: RefCell::new(String::new()),
                on_finished: RefCell::new(Some(Box::new(on_finished))),
            }),
        };
        for index in 0..watch.inner.targets.len() {
            let weak = Rc::downgrade(&watch.inner);
            // With the count of grid points since the previous call: points the loop
            // could not keep (the process was not scheduled in time) are skipped ticks
            // too, so a late machine shows in the summary instead of stretching it.
            let looping = LoopingCall::with_count(
                SchedulerRef(watch.inner.scheduler.clone()),
                move |points: u64| {
                    if let Some(inner) = weak.upgrade() {
                        Watch { inner }.tick(index, points);
                    }
                },
            );
            watch.inner.states.borrow_mut()[index].looping = Some(looping.clone());
            // A fresh LoopingCall always starts.
            let _ = looping.start(watch.inner.options.interval, true);
        }
        watch
    }

    /// Now, as a moment of this watch: the wall time follows the monotonic clock from
    /// the start, so a wall-clock jump cannot bend the times printed.
    fn now(&self) -> Moment {
        let offset = self
            .inner
            .scheduler
            .seconds()
            .saturating_sub(self.inner.origin);
        let wall = self
            .inner
            .origin_wall
            .checked_add(offset)
            .unwrap_or(self.inner.origin_wall);
        Moment { offset, wall }
    }

    fn tick(&self, index: usize, points: u64) {
        let now = self.now();
        let timeout = self.inner.options.timeout;
        let overdue = {
            let mut states = self.inner.states.borrow_mut();
            let state = &mut states[index];
            for _ in 1..points {
                state.stats.record_skipped();
            }
            match &state.pending {
                Some(p) if now.offset.saturating_sub(p.started.offset) >= timeout => {
                    state.pending.take()
                }
                Some(_) => {
                    state.stats.record_skipped();
                    return;
                }
                None => None,
            }
        };
        if let Some(pending) = overdue {
            pending.probe.cancel();
            let words = format!("timeout after {}", crate::duration::format(timeout));
            self.finish(
                index,
                pending.seq,
                pending.started,
                ProbeResult {
                    status: "timeout",
                    passed: false,
                    time: None,
                    tls_time: None,
                    error: Some(words),
                },
            );
            if self.inner.states.borrow()[index].done {
                return;
            }
        }
        let seq = {
            let mut states = self.inner.states.borrow_mut();
            let state = &mut states[index];
            state.started += 1;
            if self.inner.options.count == Some(state.started) {
                // The last probe: no more ticks for this target.
                if let Some(looping) = state.looping.take() {
                    let _ = looping.stop();
                }
            }
            state.started
        };
        let this = self.clone();
        let probe = self.inner.prober.start(
            index,
            Box::new(move |result| this.finish(index, seq, now, result)),
        );
        self.inner.states.borrow_mut()[index].pending = Some(Pending {
            seq,
            started: now,
            probe,
        });
    }

    fn finish(&self, index: usize, seq: u64, started: Moment, result: ProbeResult) {
        let (change, all_done) = {
            let mut states = self.inner.states.borrow_mut();
            let state = &mut states[index];
            if state.pending.as_ref().is_some_and(|p| p.seq == seq) {
                state.pending = None;
            }
            let change = if result.passed {
                state
                    .stats
                    .record_ok(started, result.time.unwrap_or_default())
            } else {
                state.stats.record_failed(started, result.status)
            };
            if self.inner.options.count == Some(state.stats.probes()) {
                state.done = true;
            }
            let all_done = states.iter().all(|s| s.done);
            (change, all_done)
        };
        let target = &self.inner.targets[index];
        let report = ProbeReport {
            label: &target.label,
            host: &target.host,
            port: target.port,
            seq,
            started,
            status: result.status,
            passed: result.passed,
            time: result.time,
            tls_time: result.tls_time,
            error: result.error.as_deref(),
        };
        if self.inner.options.json {
            if !self.inner.options.changes_only || change.is_some() {
                self.write_with(|line| lines::write_probe_json(line, &report));
            }
        } else {
            if !self.inner.options.changes_only {
                let tz = self.inner.options.timestamps.then_some(&self.inner.tz);
                self.write_with(|line| lines::write_probe_line(line, &report, tz));
            }
            if let Some(change) = &change {
                self.write(&lines::change_line(&target.label, change, &self.inner.tz));
            }
        }
        if all_done {
            let finished = self.inner.on_finished.borrow_mut().take();
            if let Some(finished) = finished {
                finished();
            }
        }
    }

    /// Writes the summary of every target, as it stands now.
    pub fn print_summary(&self) {
        let now = self.now();
        let summaries: Vec<_> = self
            .inner
            .states
            .borrow()
            .iter()
            .map(|s| s.stats.summary(now))
            .collect();
        for (target, summary) in self.inner.targets.iter().zip(&summaries) {
            if self.inner.options.json {
                self.write(&lines::summary_json(&target.host, target.port, summary).to_string());
            } else {
                for line in lines::summary_lines(&target.label, summary, &self.inner.tz) {
                    self.write(&line);
                }
            }
        }
    }

    /// Stops every probe and tick (the summary stays available).
    pub fn stop(&self) {
        let stopping: Vec<(Option<LoopingCall>, Option<Pending>)> = self
            .inner
            .states
            .borrow_mut()
            .iter_mut()
            .map(|s| (s.looping.take(), s.pending.take()))
            .collect();
        for (looping, pending) in stopping {
            if let Some(looping) = looping {
                let _ = looping.stop();
            }
            if let Some(pending) = pending {
                pending.probe.cancel();
            }
        }
    }

    /// Whether every target has answered at least once (exit status 0, else 1).
    pub fn every_target_answered(&self) -> bool {
        self.inner.states.borrow().iter().all(|s| s.stats.ever_up())
    }

    fn write(&self, line: &str) {
        self.write_with(|buffer| buffer.push_str(line));
    }

    /// Writes the line `fill` puts in a buffer, newline added, with one write and a
    /// flush (one `write(2)` per line: lines are seen as they are written).
    fn write_with(&self, fill: impl FnOnce(&mut String)) {
        let mut line = std::mem::take(&mut *self.inner.line.borrow_mut());
        line.clear();
        fill(&mut line);
        line.push('\n');
        let written = {
            let mut out = self.inner.out.borrow_mut();
            out.write_all(line.as_bytes()).and_then(|()| out.flush())
        };
        *self.inner.line.borrow_mut() = line;
        // Output is all a watch is for: once it cannot be written (a closed pipe, a
        // full disk, reported by whoever owns the writer), the watch ends.
        if written.is_err() {
            self.stop();
            let finished = self.inner.on_finished.borrow_mut().take();
            if let Some(finished) = finished {
                finished();
            }
        }
    }
}

/// The shared scheduler as the `Scheduler` a `LoopingCall` takes by value.
struct SchedulerRef(Rc<dyn Scheduler>);

impl Scheduler for SchedulerRef {
    fn seconds(&self) -> Duration {
        self.0.seconds()
    }

    fn schedule(&self, delay: Duration, f: Box<dyn FnOnce()>) -> crate::reactor::time::DelayedCall {
        self.0.schedule(delay, f)
    }
}

#[cfg(test)]
mod tests;
