//! `twistctl timer-demo`: the classic callLater tour.
//!
//! The tour is written against [`Scheduler`], so tests drive it on a
//! [`FakeClock`](crate::reactor::FakeClock) and check the exact lines and moments without sleeping;
//! the command runs the same tour on the real reactor.

use std::cell::RefCell;
use std::io::{self, IsTerminal, Write};
use std::rc::Rc;
use std::time::Duration;

use super::scaffold::{self, Command, CommandError};
use crate::exit::ExitStatus;
use crate::reactor::looping::LoopingCall;
use crate::reactor::{Reactor, Scheduler, Signal, StopReason};

/// What `twistctl timer-demo` was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The tour.
    pub plan: TourPlan,
    /// Print UTC instead of local time.
    pub utc: bool,
}

/// What the tour prints, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TourPlan {
    /// Moments after start to print the time at (ignored with `every`).
    pub at: Vec<Duration>,
    /// When to stop.
    pub stop_after: Duration,
    /// Print on a LoopingCall every interval instead: `count` times, or without a
    /// count until the stop.
    pub every: Option<(Duration, Option<u64>)>,
    /// Print milliseconds and lateness.
    pub precise: bool,
}

/// Formats the wall-clock time for one line; `precise` adds milliseconds.
pub type WallClock = Rc<dyn Fn(bool) -> String>;

/// The local (or UTC) wall-clock time, as the tour prints it.
pub fn wall_clock(utc: bool) -> WallClock {
    Rc::new(move |precise| {
        let format = if precise { "%H:%M:%S%.3f" } else { "%H:%M:%S" };
        let now = jiff::Timestamp::now();
        let zoned = if utc {
            now.to_zoned_datetime(jiff::tz::TimeZone::UTC)
        } else {
            now.to_zoned_datetime(jiff::tz::TimeZone::system())
        };
        zoned.strftime(format).to_string()
    })
}

/// Where the tour writes; a write error (e.g. a closed pipe) ends the tour early.
pub type Output = Rc<RefCell<dyn Write>>;

/// The running tour's shared parts.
struct Tour<S: Scheduler + Clone + 'static> {
    scheduler: S,
    out: Output,
    clock: WallClock,
    precise: bool,
    stop: Rc<dyn Fn()>,
    stopped: RefCell<bool>,
}

impl<S: Scheduler + Clone + 'static> Tour<S> {
    fn line(&self, text: &str) {
        let written = {
            let mut out = self.out.borrow_mut();
            writeln!(out, "{text}").and_then(|()| out.flush())
        };
        if let Err(error) = written {
            // A closed pipe (`timer-demo | head -1`) is a normal end, not a failure.
            // (The scaffold reports any other write error once, at the end.)
            log::debug!("output failed: {error}");
            self.finish(false);
        }
    }

    fn print_time(&self, due: Duration) {
        let now = self.scheduler.seconds();
        log::debug!("call due at {due:?} ran at {now:?}");
        let text = if self.precise {
            // Whole milliseconds, written like every other duration (`7ms`, `1.2s`).
            let late = Duration::from_millis(
                u64::try_from(now.saturating_sub(due).as_millis()).unwrap_or(u64::MAX),
            );
            let lateness = if late.is_zero() {
                "on time".to_owned()
            } else {
                format!("{} late", crate::duration::format(late))
            };
            format!("Current time is {} ({lateness})", (self.clock)(true))
        } else {
            format!("Current time is {}", (self.clock)(false))
        };
        self.line(&text);
    }

    /// Stops once: prints "Stopping reactor" (unless output failed), then stops.
    fn finish(&self, announce: bool) {
        if self.stopped.replace(true) {
            return;
        }
        if announce {
            self.line("Stopping reactor");
        }
        (self.stop)();
    }
}

/// Schedules the tour on `scheduler`: the prints, then the stop, which calls `stop`.
/// Returns the LoopingCall, if the plan uses one, so the caller keeps it alive.
pub fn schedule_tour<S: Scheduler + Clone + 'static>(
    scheduler: &S,
    plan: &TourPlan,
    out: Output,
    clock: WallClock,
    stop: Rc<dyn Fn()>,
) -> Option<LoopingCall> {
    let start = scheduler.seconds();
    let tour = Rc::new(Tour {
        scheduler: scheduler.clone(),
        out,
        clock,
        precise: plan.precise,
        stop,
        stopped: RefCell::new(false),
    });
    let stopper = tour.clone();
    scheduler.schedule(plan.stop_after, Box::new(move || stopper.finish(true)));
    match plan.every {
        None => {
            for &at in &plan.at {
                let tour = tour.clone();
                let due = start + at;
                scheduler.schedule(
                    at,
                    Box::new(move || {
                        if !*tour.stopped.borrow() {
                            tour.print_time(due);
                        }
                    }),
                );
            }
            None
        }
        Some((interval, count)) => {
            let printed = Rc::new(RefCell::new(0u64));
            let looping = LoopingCall::new(scheduler.clone(), move || {
                let k = *printed.borrow();
                if *tour.stopped.borrow() {
                    return;
                }
                let due = start + interval.saturating_mul(u32::try_from(k).unwrap_or(u32::MAX));
                tour.print_time(due);
                *printed.borrow_mut() = k + 1;
                if count.is_some_and(|count| k + 1 >= count) {
                    tour.finish(true);
                }
            });
            if let Err(error) = looping.start(interval, true) {
                log::error!("cannot start the looping call: {error}");
            }
            Some(looping)
        }
    }
}

/// Runs `twistctl timer-demo`.
pub fn run(config: Config) -> ExitStatus {
    scaffold::run(Box::new(TimerDemo {
        config,
        looping: Rc::new(RefCell::new(None)),
    }))
}

/// The command: the tour on the real reactor, between "Running the reactor..." and
/// "Reactor stopped.".
struct TimerDemo {
    config: Config,
    looping: Rc<RefCell<Option<LoopingCall>>>,
}

impl Command for TimerDemo {
    fn start(&mut self, reactor: &Reactor) -> Result<(), CommandError> {
        let plan = self.config.plan.clone();
        if plan.every.is_none() {
            for late in plan.at.iter().filter(|at| **at >= plan.stop_after) {
                log::warn!(
                    "--at {} is not before --stop-after {}; it will not print",
                    crate::duration::format(*late),
                    crate::duration::format(plan.stop_after)
                );
            }
        }
        log::info!(
            "tour: {}, stop after {}",
            match plan.every {
                Some((_, Some(count))) => format!("{count} moment(s)"),
                Some((every, None)) => format!("every {}", crate::duration::format(every)),
                None => format!("{} moment(s)", plan.at.len()),
            },
            crate::duration::format(plan.stop_after)
        );
        let stopper = reactor.clone();
        let stop: Rc<dyn Fn()> = Rc::new(move || {
            let _ = stopper.stop();
        });
        let scheduled = reactor.clone();
        let out: Output = Rc::new(RefCell::new(scaffold::stdout()));
        let clock = wall_clock(self.config.utc);
        // The tour starts with the loop, so its moments count from when the reactor
        // runs; by then the signal handlers are installed, so the first line also tells
        // a watching script that Ctrl-C will stop the reactor cleanly.
        let keep = self.looping.clone();
        reactor.call_when_running(move || {
            if scaffold::print_line("Running the reactor...").is_err() {
                stop();
                return;
            }
            *keep.borrow_mut() = schedule_tour(&scheduled, &plan, out, clock, stop);
        });
        Ok(())
    }

    fn finish(self: Box<Self>, stopped: StopReason) -> ExitStatus {
        self.looping.borrow_mut().take();
        // The terminal echoed "^C" without a newline: end that line first.
        if stopped == StopReason::Signal(Signal::Interrupt) && terminal_echoed_ctrl_c() {
            let _ = scaffold::print_line("");
        }
        if !scaffold::stdout_gone() {
            let _ = scaffold::print_line("Reactor stopped.");
        }
        scaffold::status_for(stopped)
    }
}

/// True when stdout is a terminal that shows a typed Ctrl-C as `^C` (ECHO and
/// ECHOCTL, the usual default), leaving the cursor after it.
fn terminal_echoed_ctrl_c() -> bool {
    use nix::sys::termios::{LocalFlags, tcgetattr};
    if !io::stdout().is_terminal() {
        return false;
    }
    tcgetattr(io::stdout()).is_ok_and(|mode| {
        mode.local_flags
            .contains(LocalFlags::ECHO | LocalFlags::ECHOCTL)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reactor::FakeClock;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    struct Harness {
        clock: FakeClock,
        out: Rc<RefCell<Vec<u8>>>,
        stops: Rc<RefCell<Vec<Duration>>>,
        _looping: Option<LoopingCall>,
    }

    impl Harness {
        fn start(plan: TourPlan) -> Harness {
            let clock = FakeClock::new();
            let out = Rc::new(RefCell::new(Vec::new()));
            let stops = Rc::new(RefCell::new(Vec::new()));
            let (c, s) = (clock.clone(), stops.clone());
            let stop: Rc<dyn Fn()> = Rc::new(move || s.borrow_mut().push(c.seconds()));
            // The wall clock shows the fake clock's time, so lines say when they ran.
            let c = clock.clone();
            let wall: WallClock = Rc::new(move |precise| {
                let t = c.seconds();
                if precise {
                    format!("{}.{:03}", t.as_secs(), t.subsec_millis())
                } else {
                    format!("{}", t.as_secs())
                }
            });
            let looping = schedule_tour(&clock, &plan, out.clone(), wall, stop);
            Harness {
                clock,
                out,
                stops,
                _looping: looping,
            }
        }

        fn lines(&self) -> Vec<String> {
            String::from_utf8_lossy(&self.out.borrow())
                .lines()
                .map(str::to_string)
                .collect()
        }
    }

    fn default_plan() -> TourPlan {
        TourPlan {
            at: vec![ms(1000), ms(2000), ms(3000)],
            stop_after: ms(5000),
            every: None,
            precise: false,
        }
    }

    #[test]
    fn default_tour_prints_at_one_two_three_and_stops_at_five() {
        let h = Harness::start(default_plan());
        h.clock.advance(ms(999));
        assert!(h.lines().is_empty());
        h.clock.advance(ms(1));
        assert_eq!(h.lines(), ["Current time is 1"]);
        h.clock.pump(&[ms(1000), ms(1000)]);
        assert_eq!(h.lines().len(), 3);
        h.clock.advance(ms(1999));
        assert!(h.stops.borrow().is_empty());
        h.clock.advance(ms(1));
        assert_eq!(
            h.lines(),
            [
                "Current time is 1",
                "Current time is 2",
                "Current time is 3",
                "Stopping reactor"
            ]
        );
        assert_eq!(*h.stops.borrow(), [ms(5000)]);
    }

    #[test]
    fn moments_after_the_stop_are_not_printed() {
        let mut plan = default_plan();
        plan.at = vec![ms(500), ms(3000)];
        plan.stop_after = ms(2000);
        let h = Harness::start(plan);
        h.clock.pump(&[ms(500), ms(1500), ms(8000)]);
        assert_eq!(h.lines(), ["Current time is 0", "Stopping reactor"]);
        assert_eq!(*h.stops.borrow(), [ms(2000)]);
    }

    #[test]
    fn precise_lines_show_milliseconds_and_lateness() {
        let mut plan = default_plan();
        plan.at = vec![ms(1500)];
        plan.precise = true;
        let h = Harness::start(plan);
        // The fake clock jumps past the moment: the call runs 7 ms late.
        h.clock.advance(ms(1507));
        assert_eq!(h.lines(), ["Current time is 1.507 (7ms late)"]);
    }

    #[test]
    fn every_prints_at_once_then_each_interval_and_stops_after_count() {
        let plan = TourPlan {
            at: vec![],
            stop_after: ms(60_000),
            every: Some((ms(1000), Some(3))),
            precise: false,
        };
        let h = Harness::start(plan);
        assert_eq!(h.lines(), ["Current time is 0"]);
        h.clock.advance(ms(1000));
        h.clock.advance(ms(1000));
        assert_eq!(
            h.lines(),
            [
                "Current time is 0",
                "Current time is 1",
                "Current time is 2",
                "Stopping reactor"
            ]
        );
        assert_eq!(*h.stops.borrow(), [ms(2000)]);
        h.clock.advance(ms(10_000));
        assert_eq!(h.lines().len(), 4, "nothing after the stop");
    }

    #[test]
    fn every_stops_at_stop_after_when_that_comes_first() {
        let plan = TourPlan {
            at: vec![],
            stop_after: ms(1500),
            every: Some((ms(1000), Some(10))),
            precise: false,
        };
        let h = Harness::start(plan);
        h.clock
            .pump(&[ms(500), ms(500), ms(500), ms(500), ms(500), ms(500)]);
        assert_eq!(
            h.lines(),
            ["Current time is 0", "Current time is 1", "Stopping reactor"]
        );
        assert_eq!(*h.stops.borrow(), [ms(1500)]);
    }

    use crate::commands::test_support::ClosedPipe;

    #[test]
    fn a_closed_pipe_stops_the_tour_at_the_first_line() {
        let clock = FakeClock::new();
        let stops = Rc::new(RefCell::new(0));
        let s = stops.clone();
        let out: Output = Rc::new(RefCell::new(ClosedPipe));
        let _looping = schedule_tour(
            &clock,
            &default_plan(),
            out,
            wall_clock(true),
            Rc::new(move || *s.borrow_mut() += 1),
        );
        clock.advance(ms(10_000));
        assert_eq!(*stops.borrow(), 1, "stopped once, at the failed write");
    }
}
