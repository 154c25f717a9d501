//! The watch's grid and bookkeeping on a fake clock, with scripted probes.

use std::cell::{Cell, RefCell};
use std::io::{self, Write};
use std::rc::Rc;
use std::time::Duration;

use jiff::tz::TimeZone;

use super::*;
use crate::reactor::time::FakeClock;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// What a scripted probe does: answer after a delay, fail after a delay, or hang.
#[derive(Clone, Copy, Debug)]
enum Plan {
    Open(u64),
    Refused(u64),
    Hang,
}

/// Probes that follow a script per target (the last step repeats) and record when
/// each started.
struct Scripted {
    clock: FakeClock,
    plans: Vec<Vec<Plan>>,
    starts: Rc<RefCell<Vec<(usize, Duration)>>>,
}

struct Cancel(Rc<Cell<bool>>);

impl PendingProbe for Cancel {
    fn cancel(&self) {
        self.0.set(true);
    }
}

impl Prober for Scripted {
    fn start(&self, index: usize, done: Box<dyn FnOnce(ProbeResult)>) -> Box<dyn PendingProbe> {
        let mut starts = self.starts.borrow_mut();
        let nth = starts.iter().filter(|(i, _)| *i == index).count();
        starts.push((index, self.clock.seconds()));
        let plans = &self.plans[index];
        let plan = plans[nth.min(plans.len() - 1)];
        let cancelled = Rc::new(Cell::new(false));
        let flag = cancelled.clone();
        let finish = move |result: ProbeResult| {
            if !flag.get() {
                done(result);
            }
        };
        match plan {
            Plan::Open(after) => {
                self.clock.call_later(ms(after), move || {
                    finish(ProbeResult {
                        status: "open",
                        passed: true,
                        time: Some(ms(after)),
                        tls_time: None,
                        error: None,
                    })
                });
            }
            Plan::Refused(after) => {
                self.clock.call_later(ms(after), move || {
                    finish(ProbeResult {
                        status: "refused",
                        passed: false,
                        time: None,
                        tls_time: None,
                        error: Some("refused".into()),
                    })
                });
            }
            Plan::Hang => {}
        }
        Box::new(Cancel(cancelled))
    }
}

#[derive(Clone, Default)]
struct Output(Rc<RefCell<Vec<u8>>>);

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Output {
    fn lines(&self) -> Vec<String> {
        String::from_utf8(self.0.borrow().clone())
            .expect("UTF-8")
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

struct Run {
    clock: FakeClock,
    watch: Watch,
    out: Output,
    starts: Rc<RefCell<Vec<(usize, Duration)>>>,
    finished: Rc<Cell<bool>>,
}

fn options(interval: u64, timeout: u64, count: Option<u64>) -> WatchOptions {
    WatchOptions {
        interval: ms(interval),
        count,
        timeout: ms(timeout),
        timestamps: false,
        changes_only: false,
        json: false,
    }
}

fn target(n: u16) -> WatchTarget {
    WatchTarget {
        label: format!("127.0.0.1 port {n}"),
        host: "127.0.0.1".into(),
        port: Some(n),
    }
}

fn run(plans: Vec<Vec<Plan>>, options: WatchOptions) -> Run {
    let clock = FakeClock::new();
    let starts = Rc::new(RefCell::new(Vec::new()));
    let out = Output::default();
    let finished = Rc::new(Cell::new(false));
    let targets = (0..plans.len()).map(|i| target(8000 + i as u16)).collect();
    let flag = finished.clone();
    let watch = Watch::start(
        Rc::new(clock.clone()),
        Box::new(Scripted {
            clock: clock.clone(),
            plans,
            starts: starts.clone(),
        }),
        targets,
        options,
        Box::new(out.clone()),
        TimeZone::UTC,
        move || flag.set(true),
    );
    Run {
        clock,
        watch,
        out,
        starts,
        finished,
    }
}

impl Run {
    /// Moves the fake clock forward a millisecond at a time, so every call runs at
    /// its own time.
    fn advance(&self, total_ms: u64) {
        for _ in 0..total_ms {
            self.clock.advance(ms(1));
        }
    }

    fn start_times(&self, index: usize) -> Vec<u64> {
        self.starts
            .borrow()
            .iter()
            .filter(|(i, _)| *i == index)
            .map(|(_, t)| t.as_millis() as u64)
            .collect()
    }

    fn summary(&self, index: usize) -> stats::Summary {
        self.watch.inner.states.borrow()[index]
            .stats
            .summary(self.watch.now())
    }
}

#[test]
fn probes_start_on_a_fixed_grid_that_never_drifts() {
    let r = run(vec![vec![Plan::Open(300)]], options(1000, 1000, None));
    r.advance(10_000);
    let expected: Vec<u64> = (0..=10).map(|k| k * 1000).collect();
    assert_eq!(r.start_times(0), expected);
    let lines = r.out.lines();
    assert_eq!(
        lines.len(),
        10,
        "the 11th probe is still pending: {lines:?}"
    );
    assert_eq!(
        lines[2],
        "127.0.0.1 port 8000: open, seq=3, time=300.000 ms"
    );
}

#[test]
fn a_tick_while_a_probe_is_pending_within_its_timeout_is_skipped_and_counted() {
    // Each probe takes 2.5 s with a 3 s timeout on a 1 s grid: ticks at 1 s and 2 s
    // find it pending.
    let r = run(vec![vec![Plan::Open(2500)]], options(1000, 3000, None));
    r.advance(6_000);
    assert_eq!(r.start_times(0), vec![0, 3000, 6000]);
    let summary = r.summary(0);
    assert_eq!((summary.probes, summary.skipped), (2, 4));
}

#[test]
fn grid_points_the_loop_could_not_keep_are_counted_as_skipped() {
    // The process is not scheduled from 0.5 s to 3.5 s: the points at 1, 2 and 3 s are
    // missed, the loop resumes on the grid at 4 s, and the summary says so.
    let r = run(vec![vec![Plan::Open(1)]], options(1000, 1000, None));
    r.advance(500);
    r.clock.advance(ms(3000));
    r.advance(1_000);
    assert_eq!(r.start_times(0), vec![0, 3500, 4000]);
    let summary = r.summary(0);
    assert_eq!((summary.probes, summary.skipped), (3, 2));
}

#[test]
fn a_probe_past_its_timeout_ends_at_the_next_tick_without_skipping_it() {
    let r = run(vec![vec![Plan::Hang]], options(1000, 1000, None));
    r.advance(3_000);
    assert_eq!(r.start_times(0), vec![0, 1000, 2000, 3000]);
    assert_eq!(
        r.out.lines(),
        vec![
            "127.0.0.1 port 8000: timeout after 1s, seq=1",
            "127.0.0.1 port 8000 is down (timeout) since 00:00:00.000",
            "127.0.0.1 port 8000: timeout after 1s, seq=2",
            "127.0.0.1 port 8000: timeout after 1s, seq=3",
        ]
        .into_iter()
        .map(|l| l.replace(
            "00:00:00.000",
            &lines::clock(r.watch.inner.origin_wall, &TimeZone::UTC)
        ))
        .collect::<Vec<_>>()
    );
    assert_eq!(r.summary(0).skipped, 0);
}

#[test]
fn count_ends_the_watch_after_n_probes_per_target_and_skips_do_not_count() {
    let r = run(
        vec![vec![Plan::Open(1)], vec![Plan::Open(1500)]],
        options(1000, 2000, Some(3)),
    );
    r.advance(4_000);
    assert!(
        !r.finished.get(),
        "the slow target has run 2 of its 3 probes"
    );
    r.advance(2_000);
    assert!(r.finished.get());
    assert_eq!(r.start_times(0), vec![0, 1000, 2000]);
    assert_eq!(r.start_times(1), vec![0, 2000, 4000]);
    assert_eq!(r.summary(1).probes, 3);
    assert_eq!(r.summary(1).skipped, 2);
    // Nothing runs after the count.
    r.advance(3_000);
    assert_eq!(r.start_times(0).len() + r.start_times(1).len(), 6);
}

#[test]
fn changes_only_prints_the_state_changes() {
    let mut o = options(1000, 1000, Some(6));
    o.changes_only = true;
    let plan = vec![
        Plan::Open(1),
        Plan::Refused(1),
        Plan::Refused(1),
        Plan::Open(1),
        Plan::Open(1),
        Plan::Refused(1),
    ];
    let r = run(vec![plan], o);
    r.advance(6_000);
    let lines = r.out.lines();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines[0].starts_with("127.0.0.1 port 8000 is down (refused) since "));
    assert_eq!(lines[1], "127.0.0.1 port 8000 is up again after 2.000 s");
    assert!(lines[2].contains("is down (refused)"));
    let summary = r.summary(0);
    assert_eq!((summary.ok, summary.failed), (3, 3));
    assert_eq!(summary.longest_down.map(|d| d.length), Some(ms(2000)));
}

#[test]
fn json_lines_parse_and_carry_seq_status_and_time() {
    let mut o = options(500, 500, Some(2));
    o.json = true;
    let r = run(vec![vec![Plan::Open(2), Plan::Refused(1)]], o);
    r.advance(1_000);
    r.watch.print_summary();
    let objects: Vec<serde_json::Value> = r
        .out
        .lines()
        .iter()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert_eq!(objects.len(), 3);
    assert_eq!(objects[0]["seq"], 1);
    assert_eq!(objects[0]["status"], "open");
    assert_eq!(objects[0]["time_ms"], 2.0);
    assert_eq!(objects[1]["status"], "refused");
    assert_eq!(objects[1]["error"], "refused");
    assert_eq!(objects[2]["summary"], true);
    assert_eq!(objects[2]["probes"], 2);
    assert_eq!(objects[2]["state"], "down");
}

#[test]
fn stop_cancels_pending_probes_and_ticks() {
    let r = run(vec![vec![Plan::Open(700)]], options(1000, 1000, None));
    r.advance(1_500);
    r.watch.stop();
    r.advance(5_000);
    assert_eq!(r.start_times(0), vec![0, 1000]);
    assert_eq!(r.summary(0).probes, 1, "the cancelled probe never reports");
    assert!(r.watch.every_target_answered());
}

#[test]
fn a_target_that_never_answered_fails_the_watch() {
    let r = run(
        vec![vec![Plan::Open(1)], vec![Plan::Refused(1)]],
        options(1000, 1000, Some(2)),
    );
    r.advance(2_000);
    assert!(r.finished.get());
    assert!(!r.watch.every_target_answered());
}
