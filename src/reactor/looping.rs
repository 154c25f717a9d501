//! [`LoopingCall`]: call a function every interval on a fixed grid (Twisted's
//! `task.LoopingCall`), and [`defer_later`]: a [`Deferred`] fired by a timer
//! (`task.deferLater`).
//!
//! Both are written against the [`Scheduler`] trait, so they run the same on the reactor
//! and on [`FakeClock`](super::time::FakeClock). Grid arithmetic is done in integer
//! nanoseconds, so a call never drifts off its grid and a non-zero interval never re-arms
//! with a zero delay (K-03, K-11).
//!
//! A running `LoopingCall` is kept alive by its pending timer (or by the Deferred its
//! function returned), so dropping every handle does not stop it: call
//! [`LoopingCall::stop`]. A function that needs its own `LoopingCall` should capture a
//! [`WeakLoopingCall`]; a strong handle inside the function is an `Rc` cycle that is never
//! freed.

use std::cell::RefCell;
use std::fmt;
use std::rc::{Rc, Weak};
use std::time::Duration;

use super::defer::{Deferred, Outcome, Step};
use super::failure::Failure;
use super::time::{DelayedCall, Scheduler};

/// What one call of a [`LoopingCall`]'s function returns. Functions may return `()`,
/// a `Result<(), E>` or a `Deferred<()>`, all of which convert into this.
#[derive(Debug)]
pub enum LoopStep {
    /// The call is done; schedule the next one.
    Continue,
    /// The call failed: the loop stops and its start Deferred errbacks (K-07).
    Fail(Failure),
    /// Schedule the next call only once this Deferred has fired (K-04); a failure stops
    /// the loop like `Fail`.
    Wait(Deferred<()>),
}

impl From<()> for LoopStep {
    fn from((): ()) -> LoopStep {
        LoopStep::Continue
    }
}

impl<E: Into<Failure>> From<Result<(), E>> for LoopStep {
    fn from(result: Result<(), E>) -> LoopStep {
        match result {
            Ok(()) => LoopStep::Continue,
            Err(error) => LoopStep::Fail(error.into()),
        }
    }
}

impl From<Deferred<()>> for LoopStep {
    fn from(d: Deferred<()>) -> LoopStep {
        LoopStep::Wait(d)
    }
}

/// Misuse of a [`LoopingCall`], which Twisted asserts on (K-02).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LoopingCallError {
    /// `start` on a running LoopingCall.
    #[error("the LoopingCall is already running")]
    AlreadyRunning,
    /// `stop` or `reset` on a LoopingCall that is not running.
    #[error("the LoopingCall is not running")]
    NotRunning,
    /// `start` after `stop` while the stopped run's last call has not finished yet (its
    /// start Deferred has not fired).
    #[error("the LoopingCall was stopped but its last call has not finished")]
    Stopping,
}

type LoopFn = Box<dyn FnMut(u64) -> LoopStep>;

struct LoopState {
    running: bool,
    /// The function is running, or the Deferred it returned has not fired.
    busy: bool,
    /// Nanoseconds; `None` before the first start.
    interval: Option<u64>,
    /// The grid's origin, nanoseconds on the scheduler's clock.
    start: u64,
    run_at_start: bool,
    /// Grid index of the previous call, for `with_count` (K-10).
    last_index: Option<u64>,
    call: Option<DelayedCall>,
    deferred: Option<Deferred<LoopingCall>>,
}

struct LoopInner {
    scheduler: Rc<dyn Scheduler>,
    /// Taken out while it runs, so no borrow is held during user code.
    f: RefCell<Option<LoopFn>>,
    state: RefCell<LoopState>,
}

/// Calls a function repeatedly on a grid of `start + k × interval` (K-01..K-11).
///
/// Cloning makes another handle on the same LoopingCall.
#[derive(Clone)]
pub struct LoopingCall {
    inner: Rc<LoopInner>,
}

impl fmt::Debug for LoopingCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.inner.state.try_borrow() {
            Ok(st) => f
                .debug_struct("LoopingCall")
                .field("running", &st.running)
                .field("interval", &st.interval.map(Duration::from_nanos))
                .finish(),
            Err(_) => f.write_str("LoopingCall { <busy> }"),
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl LoopingCall {
    /// A stopped LoopingCall that will call `f` on `scheduler`.
    pub fn new<S, F, R>(scheduler: S, mut f: F) -> LoopingCall
    where
        S: Scheduler + 'static,
        F: FnMut() -> R + 'static,
        R: Into<LoopStep>,
    {
        LoopingCall::build(Rc::new(scheduler), Box::new(move |_| f().into()))
    }

    /// Like [`LoopingCall::new`], but `f` receives the number of grid intervals elapsed
    /// since its previous call: 1 normally, more after skipped points, always 1 for
    /// interval 0 (K-10). After [`LoopingCall::reset`] the count restarts from the new
    /// grid, so the next call gets 1.
    pub fn with_count<S, F, R>(scheduler: S, mut f: F) -> LoopingCall
    where
        S: Scheduler + 'static,
        F: FnMut(u64) -> R + 'static,
        R: Into<LoopStep>,
    {
        LoopingCall::build(Rc::new(scheduler), Box::new(move |count| f(count).into()))
    }

    fn build(scheduler: Rc<dyn Scheduler>, f: LoopFn) -> LoopingCall {
        LoopingCall {
            inner: Rc::new(LoopInner {
                scheduler,
                f: RefCell::new(Some(f)),
                state: RefCell::new(LoopState {
                    running: false,
                    busy: false,
                    interval: None,
                    start: 0,
                    run_at_start: false,
                    last_index: None,
                    call: None,
                    deferred: None,
                }),
            }),
        }
    }

    /// A handle that does not keep the LoopingCall alive, for use inside its function.
    pub fn downgrade(&self) -> WeakLoopingCall {
        WeakLoopingCall {
            inner: Rc::downgrade(&self.inner),
        }
    }

    /// Starts calling the function every `interval`: at once (inside this call) when
    /// `now`, else first at start + `interval` (K-01).
    ///
    /// The returned Deferred fires with this LoopingCall when [`stop`](Self::stop) ends
    /// the loop, or errbacks with the function's failure (K-06, K-07).
    pub fn start(
        &self,
        interval: Duration,
        now: bool,
    ) -> Result<Deferred<LoopingCall>, LoopingCallError> {
        let time = nanos(self.inner.scheduler.seconds());
        let d = {
            let mut st = self.inner.state.borrow_mut();
            if st.running {
                return Err(LoopingCallError::AlreadyRunning);
            }
            if st.busy {
                return Err(LoopingCallError::Stopping);
            }
            let d = Deferred::new();
            st.running = true;
            st.interval = Some(nanos(interval));
            st.start = time;
            st.run_at_start = now;
            st.last_index = None;
            st.deferred = Some(d.clone());
            d
        };
        if now {
            self.call_now();
        } else {
            self.schedule_from(time);
        }
        Ok(d)
    }

    /// Stops the loop and cancels the pending call (K-06). With no call in progress the
    /// start Deferred fires at once; otherwise it fires when the call in progress (or the
    /// Deferred it returned) finishes, and nothing further is scheduled.
    pub fn stop(&self) -> Result<(), LoopingCallError> {
        let (call, d) = {
            let mut st = self.inner.state.borrow_mut();
            if !st.running {
                return Err(LoopingCallError::NotRunning);
            }
            st.running = false;
            match st.call.take() {
                Some(call) => (Some(call), st.deferred.take()),
                None => (None, None),
            }
        };
        if let Some(call) = call {
            let _ = call.cancel();
        }
        if let Some(d) = d {
            let _ = d.callback(self.clone());
        }
        Ok(())
    }

    /// Restarts the grid at the current time, so the next call is one full interval from
    /// now (K-09). Does nothing while a call is in progress.
    pub fn reset(&self) -> Result<(), LoopingCallError> {
        let call = {
            let mut st = self.inner.state.borrow_mut();
            if !st.running {
                return Err(LoopingCallError::NotRunning);
            }
            st.call.take()
        };
        if let Some(call) = call {
            let _ = call.cancel();
            let now = nanos(self.inner.scheduler.seconds());
            {
                let mut st = self.inner.state.borrow_mut();
                st.start = now;
                st.last_index = Some(0);
            }
            self.schedule_from(now);
        }
        Ok(())
    }

    /// True from `start` until `stop` or a failure; already false when the start Deferred
    /// fires (K-08).
    pub fn running(&self) -> bool {
        self.inner.state.borrow().running
    }

    /// The interval of the current or last run; `None` before the first `start`.
    pub fn interval(&self) -> Option<Duration> {
        self.inner.state.borrow().interval.map(Duration::from_nanos)
    }

    /// Schedules the next call on the first grid point strictly after `when` (K-03);
    /// the delay is in (0, interval], never zero for a non-zero interval (K-11).
    fn schedule_from(&self, when: u64) {
        let delay = {
            let st = self.inner.state.borrow();
            match st.interval {
                None | Some(0) => 0,
                Some(interval) => interval - when.saturating_sub(st.start) % interval,
            }
        };
        let me = self.clone();
        let call = self
            .inner
            .scheduler
            .schedule(Duration::from_nanos(delay), Box::new(move || me.call_now()));
        self.inner.state.borrow_mut().call = Some(call);
    }

    fn call_now(&self) {
        let now = nanos(self.inner.scheduler.seconds());
        let count = {
            let mut st = self.inner.state.borrow_mut();
            st.call = None;
            st.busy = true;
            match st.interval {
                None | Some(0) => 1,
                Some(interval) => {
                    let index = now.saturating_sub(st.start) / interval;
                    let count = match st.last_index {
                        Some(last) => index.saturating_sub(last),
                        None if st.run_at_start => index.saturating_add(1),
                        None => index,
                    };
                    st.last_index = Some(index);
                    count.max(1)
                }
            }
        };
        let f = self.inner.f.borrow_mut().take();
        // Never empty here: a call is scheduled only when none is in progress, and
        // `start` refuses while one is.
        let Some(mut f) = f else { return };
        let step = f(count);
        *self.inner.f.borrow_mut() = Some(f);
        match step {
            LoopStep::Continue => self.finished(Ok(())),
            LoopStep::Fail(failure) => self.finished(Err(failure)),
            LoopStep::Wait(d) => {
                let me = self.clone();
                // The failure goes to the start Deferred, so it is handled here.
                d.add_both(move |outcome| {
                    me.finished(outcome);
                    Step::Value(())
                });
            }
        }
    }

    fn finished(&self, outcome: Outcome<()>) {
        let fire = {
            let mut st = self.inner.state.borrow_mut();
            st.busy = false;
            match outcome {
                Ok(()) if st.running => None,
                Ok(()) => Some((st.deferred.take(), Ok(()))),
                Err(failure) => {
                    st.running = false;
                    Some((st.deferred.take(), Err(failure)))
                }
            }
        };
        match fire {
            None => self.schedule_from(nanos(self.inner.scheduler.seconds())),
            Some((Some(d), Ok(()))) => {
                let _ = d.callback(self.clone());
            }
            Some((Some(d), Err(failure))) => {
                let _ = d.errback(failure);
            }
            Some((None, Err(failure))) => {
                log::error!("Unhandled error in LoopingCall: {failure}");
            }
            Some((None, Ok(()))) => {}
        }
    }
}

/// A handle that does not keep its [`LoopingCall`] alive.
#[derive(Clone)]
pub struct WeakLoopingCall {
    inner: Weak<LoopInner>,
}

impl fmt::Debug for WeakLoopingCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WeakLoopingCall")
    }
}

impl WeakLoopingCall {
    /// The LoopingCall, if it is still alive.
    pub fn upgrade(&self) -> Option<LoopingCall> {
        self.inner.upgrade().map(|inner| LoopingCall { inner })
    }
}

/// A Deferred that, after `delay` on `scheduler`, fires with what `f` returns (a value,
/// a failure, or a Deferred to wait on) (K-18). Cancelling it first cancels the timer,
/// so `f` never runs, and errbacks it with [`CancelledError`](super::defer::CancelledError).
pub fn defer_later<T: 'static>(
    scheduler: &dyn Scheduler,
    delay: Duration,
    f: impl FnOnce() -> Step<T> + 'static,
) -> Deferred<T> {
    let timer: Rc<RefCell<Option<DelayedCall>>> = Rc::default();
    let slot = timer.clone();
    let d = Deferred::with_canceller(move |_| {
        let call = slot.borrow_mut().take();
        if let Some(call) = call {
            let _ = call.cancel();
        }
    });
    let target = d.clone();
    let call = scheduler.schedule(
        delay,
        Box::new(move || {
            let _ = target.resolve(f());
        }),
    );
    *timer.borrow_mut() = Some(call);
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reactor::defer::CancelledError;
    use crate::reactor::failure::MessageError;
    use crate::reactor::time::FakeClock;
    use crate::reactor::time::tests::{ms, secs};
    use std::cell::Cell;

    /// A LoopingCall recording the clock time of each call.
    fn recording(clock: &FakeClock) -> (LoopingCall, Rc<RefCell<Vec<Duration>>>) {
        let times: Rc<RefCell<Vec<Duration>>> = Rc::default();
        let (t, c) = (times.clone(), clock.clone());
        let lc = LoopingCall::new(clock.clone(), move || t.borrow_mut().push(c.seconds()));
        (lc, times)
    }

    /// A LoopingCall whose function returns a new Deferred each call, kept in the list
    /// for the test to fire.
    fn deferring(clock: &FakeClock) -> (LoopingCall, Rc<RefCell<Vec<Deferred<()>>>>) {
        let pending: Rc<RefCell<Vec<Deferred<()>>>> = Rc::default();
        let p = pending.clone();
        let lc = LoopingCall::new(clock.clone(), move || {
            let d = Deferred::new();
            p.borrow_mut().push(d.clone());
            d
        });
        (lc, pending)
    }

    /// Fires the Deferred the latest call returned.
    fn finish_latest(pending: &Rc<RefCell<Vec<Deferred<()>>>>) {
        let latest = pending
            .borrow()
            .last()
            .cloned()
            .expect("a call returned a Deferred");
        latest.callback(()).unwrap();
    }

    /// A counting LoopingCall recording the count passed to each call.
    fn counting(clock: &FakeClock) -> (LoopingCall, Rc<RefCell<Vec<u64>>>) {
        let counts: Rc<RefCell<Vec<u64>>> = Rc::default();
        let c = counts.clone();
        let lc = LoopingCall::with_count(clock.clone(), move |n| c.borrow_mut().push(n));
        (lc, counts)
    }

    /// Lets a LoopingCall's function reach its own LoopingCall, bound once it exists.
    #[derive(Clone, Default)]
    struct Me(Rc<RefCell<Option<WeakLoopingCall>>>);

    impl Me {
        fn bind(&self, lc: &LoopingCall) {
            *self.0.borrow_mut() = Some(lc.downgrade());
        }

        /// Stops the bound LoopingCall from inside its own function.
        fn stop(&self) {
            let lc = self.0.borrow().as_ref().and_then(WeakLoopingCall::upgrade);
            lc.expect("bound before it runs").stop().unwrap();
        }
    }

    /// The start Deferred fired with the LoopingCall already not running (K-06, K-08),
    /// and no call is left scheduled.
    fn assert_ended_by_stop(seen: &Rc<RefCell<Option<Result<bool, String>>>>, clock: &FakeClock) {
        assert_eq!(*seen.borrow(), Some(Ok(false)));
        assert!(clock.delayed_calls().is_empty());
    }

    /// Records how the start Deferred ended, handling it: `Ok(running)` as seen when it
    /// fired, or the failure's message.
    fn ending(d: &Deferred<LoopingCall>) -> Rc<RefCell<Option<Result<bool, String>>>> {
        let seen = Rc::new(RefCell::new(None));
        let s = seen.clone();
        d.clone().then(move |outcome| {
            *s.borrow_mut() = Some(
                outcome
                    .as_ref()
                    .map(LoopingCall::running)
                    .map_err(Failure::error_message),
            );
            Step::Value(())
        });
        seen
    }

    #[test]
    fn k01_start_now_calls_synchronously_else_after_one_interval() {
        let clock = FakeClock::new();
        let (lc, times) = recording(&clock);
        lc.start(secs(1), true).unwrap();
        assert_eq!(*times.borrow(), [secs(0)]);
        lc.stop().unwrap();

        let (lc, times) = recording(&clock);
        lc.start(secs(1), false).unwrap();
        assert!(times.borrow().is_empty());
        clock.advance(ms(999));
        assert!(times.borrow().is_empty());
        clock.advance(ms(1));
        assert_eq!(*times.borrow(), [secs(1)]);
        lc.stop().unwrap();
    }

    #[test]
    fn k02_misuse_is_an_error_not_a_panic() {
        let clock = FakeClock::new();
        let (lc, _) = recording(&clock);
        assert_eq!(lc.stop(), Err(LoopingCallError::NotRunning));
        assert_eq!(lc.reset(), Err(LoopingCallError::NotRunning));
        lc.start(secs(1), false).unwrap();
        assert_eq!(
            lc.start(secs(1), false).map(|_| ()),
            Err(LoopingCallError::AlreadyRunning)
        );
        lc.stop().unwrap();
        assert_eq!(lc.stop(), Err(LoopingCallError::NotRunning));
        // Restartable once stopped.
        lc.start(secs(1), false).unwrap();
        assert!(lc.running());
    }

    #[test]
    fn k03_calls_stay_on_the_grid_and_missed_points_are_skipped() {
        let clock = FakeClock::new();
        let (lc, times) = recording(&clock);
        lc.start(secs(1), true).unwrap();
        clock.advance(secs(1));
        // Late by 2.5 intervals: one call, no burst, next on the grid.
        clock.advance(ms(3_500));
        assert_eq!(*times.borrow(), [secs(0), secs(1), ms(4_500)]);
        assert_eq!(clock.delayed_calls()[0].time(), secs(5));
        clock.advance(ms(500));
        assert_eq!(times.borrow().last(), Some(&secs(5)));
    }

    #[test]
    fn k03_after_a_slow_deferred_the_next_call_is_the_next_grid_point() {
        let clock = FakeClock::new();
        let (lc, pending) = deferring(&clock);
        lc.start(secs(2), true).unwrap();
        clock.advance(ms(4_500));
        assert_eq!(pending.borrow().len(), 1, "one call, still pending");
        finish_latest(&pending);
        assert_eq!(clock.delayed_calls()[0].time(), secs(6));
    }

    #[test]
    fn k04_no_call_is_scheduled_while_the_returned_deferred_is_pending() {
        let clock = FakeClock::new();
        let (lc, pending) = deferring(&clock);
        lc.start(secs(1), true).unwrap();
        assert!(clock.delayed_calls().is_empty());
        clock.advance(secs(10));
        assert!(clock.delayed_calls().is_empty());
        finish_latest(&pending);
        assert_eq!(clock.delayed_calls()[0].time(), secs(11));
    }

    #[test]
    fn k05_interval_zero_reschedules_with_no_delay() {
        let clock = FakeClock::new();
        clock.advance(secs(3));
        let calls = Rc::new(Cell::new(0));
        let me = Me::default();
        let (n, w) = (calls.clone(), me.clone());
        let lc = LoopingCall::new(clock.clone(), move || {
            n.set(n.get() + 1);
            if n.get() == 5 {
                w.stop();
            }
        });
        me.bind(&lc);
        lc.start(Duration::ZERO, false).unwrap();
        assert_eq!(clock.delayed_calls()[0].time(), secs(3));
        assert_eq!(calls.get(), 0);
        clock.advance(Duration::ZERO);
        assert_eq!(calls.get(), 5);
        assert!(!lc.running());
        assert!(clock.delayed_calls().is_empty());
    }

    #[test]
    fn k06_stop_with_a_call_pending_fires_the_start_deferred_at_once() {
        let clock = FakeClock::new();
        let (lc, times) = recording(&clock);
        let d = lc.start(secs(1), false).unwrap();
        let seen = ending(&d);
        lc.stop().unwrap();
        assert_ended_by_stop(&seen, &clock);
        clock.advance(secs(5));
        assert!(times.borrow().is_empty());
    }

    #[test]
    fn k06_the_start_deferred_fires_with_the_looping_call_itself() {
        let clock = FakeClock::new();
        let (lc, _) = recording(&clock);
        let d = lc.start(secs(1), false).unwrap();
        let same = Rc::new(Cell::new(false));
        let (s, me) = (same.clone(), lc.clone());
        d.add_callback(move |got| {
            s.set(Rc::ptr_eq(&got.inner, &me.inner));
            Step::Value(got)
        });
        lc.stop().unwrap();
        assert!(same.get());
    }

    #[test]
    fn k06_stop_from_inside_the_function_fires_when_it_returns() {
        let clock = FakeClock::new();
        let me = Me::default();
        let observed: Rc<RefCell<Option<Deferred<LoopingCall>>>> = Rc::default();
        let (w, o) = (me.clone(), observed.clone());
        let fired_during_call = Rc::new(Cell::new(true));
        let f = fired_during_call.clone();
        let lc = LoopingCall::new(clock.clone(), move || {
            w.stop();
            f.set(o.borrow().as_ref().is_some_and(Deferred::is_called));
        });
        me.bind(&lc);
        let d = lc.start(secs(1), false).unwrap();
        *observed.borrow_mut() = Some(d.clone());
        let seen = ending(&d);
        clock.advance(secs(1));
        assert!(
            !fired_during_call.get(),
            "fired before the function returned"
        );
        assert_ended_by_stop(&seen, &clock);
    }

    #[test]
    fn k06_stop_while_the_returned_deferred_is_pending_fires_when_it_fires() {
        let clock = FakeClock::new();
        let (lc, pending) = deferring(&clock);
        let d = lc.start(secs(1), true).unwrap();
        let seen = ending(&d);
        lc.stop().unwrap();
        assert!(seen.borrow().is_none());
        assert_eq!(
            lc.start(secs(1), false).map(|_| ()),
            Err(LoopingCallError::Stopping)
        );
        finish_latest(&pending);
        assert_ended_by_stop(&seen, &clock);
    }

    #[test]
    fn k07_a_failure_stops_the_loop_and_errbacks_the_start_deferred() {
        let clock = FakeClock::new();
        let calls = Rc::new(Cell::new(0));
        let n = calls.clone();
        let lc = LoopingCall::new(clock.clone(), move || {
            n.set(n.get() + 1);
            if n.get() == 2 {
                Err(MessageError("second call broke".into()))
            } else {
                Ok(())
            }
        });
        let d = lc.start(secs(1), true).unwrap();
        let seen = ending(&d);
        clock.advance(secs(1));
        assert_eq!(*seen.borrow(), Some(Err("second call broke".to_string())));
        assert!(!lc.running());
        assert!(clock.delayed_calls().is_empty());
        clock.advance(secs(5));
        assert_eq!(calls.get(), 2);
    }

    #[test]
    fn k07_failing_after_stop_still_errbacks() {
        let clock = FakeClock::new();
        let me = Me::default();
        let w = me.clone();
        let lc = LoopingCall::new(clock.clone(), move || {
            w.stop();
            Err(MessageError("stopped then failed".into()))
        });
        me.bind(&lc);
        let d = lc.start(secs(1), true).unwrap();
        assert_eq!(
            *ending(&d).borrow(),
            Some(Err("stopped then failed".into()))
        );
    }

    #[test]
    fn k07_a_failed_returned_deferred_errbacks_the_start_deferred() {
        let clock = FakeClock::new();
        let lc = LoopingCall::new(clock.clone(), || {
            Deferred::<()>::fail(Failure::msg("async failure"))
        });
        let d = lc.start(secs(1), true).unwrap();
        assert_eq!(*ending(&d).borrow(), Some(Err("async failure".into())));
        assert!(!lc.running());
    }

    #[test]
    fn k08_running_spans_start_to_stop() {
        let clock = FakeClock::new();
        let (lc, _) = recording(&clock);
        assert!(!lc.running());
        let d = lc.start(secs(1), false).unwrap();
        assert!(lc.running());
        clock.advance(secs(3));
        assert!(lc.running());
        let seen = ending(&d);
        lc.stop().unwrap();
        assert!(!lc.running());
        // Already false inside the start Deferred's callback.
        assert_eq!(*seen.borrow(), Some(Ok(false)));
    }

    #[test]
    fn k09_reset_restarts_the_grid_from_now() {
        let clock = FakeClock::new();
        let (lc, times) = recording(&clock);
        lc.start(secs(2), false).unwrap();
        clock.advance(ms(1_500));
        lc.reset().unwrap();
        assert_eq!(clock.delayed_calls().len(), 1);
        clock.advance(ms(1_999));
        assert!(times.borrow().is_empty());
        clock.advance(ms(1));
        clock.advance(secs(2));
        assert_eq!(*times.borrow(), [ms(3_500), ms(5_500)]);
    }

    #[test]
    fn k10_with_count_gives_the_number_of_elapsed_intervals() {
        let clock = FakeClock::new();
        let (lc, counts) = counting(&clock);
        lc.start(secs(1), true).unwrap();
        clock.advance(secs(1));
        clock.advance(ms(3_200));
        clock.advance(ms(800));
        assert_eq!(*counts.borrow(), [1, 1, 3, 1]);
        lc.reset().unwrap();
        clock.advance(secs(1));
        assert_eq!(counts.borrow().last(), Some(&1));
        lc.stop().unwrap();

        let (lc, counts) = counting(&clock);
        lc.start(secs(1), false).unwrap();
        clock.advance(ms(2_500));
        assert_eq!(*counts.borrow(), [2]);
        lc.stop().unwrap();
    }

    #[test]
    fn k10_interval_zero_always_counts_one() {
        let clock = FakeClock::new();
        let counts: Rc<RefCell<Vec<u64>>> = Rc::default();
        let me = Me::default();
        let (c, w) = (counts.clone(), me.clone());
        let lc = LoopingCall::with_count(clock.clone(), move |n| {
            c.borrow_mut().push(n);
            if c.borrow().len() == 3 {
                w.stop();
            }
        });
        me.bind(&lc);
        lc.start(Duration::ZERO, true).unwrap();
        clock.advance(secs(7));
        assert_eq!(*counts.borrow(), [1, 1, 1]);
    }

    #[test]
    fn k11_integer_grid_never_drifts_or_rearms_with_zero_delay() {
        let clock = FakeClock::new();
        let interval = Duration::from_nanos(333_333_333);
        let (lc, times) = recording(&clock);
        lc.start(interval, true).unwrap();
        for _ in 0..3_000 {
            clock.advance(interval);
        }
        let times = times.borrow();
        assert_eq!(times.len(), 3_001);
        for (k, t) in times.iter().enumerate() {
            assert_eq!(*t, interval * k as u32);
        }
        // A call finishing exactly on a grid point waits a full interval, not zero.
        assert_eq!(clock.delayed_calls()[0].time(), interval * 3_001);
    }

    #[test]
    fn k11_a_deferred_firing_exactly_on_a_grid_point_waits_a_full_interval() {
        let clock = FakeClock::new();
        let (lc, pending) = deferring(&clock);
        lc.start(secs(1), true).unwrap();
        clock.advance(secs(3));
        finish_latest(&pending);
        assert_eq!(clock.delayed_calls()[0].time(), secs(4));
    }

    #[test]
    fn looping_call_is_released_after_stop() {
        let clock = FakeClock::new();
        let (lc, _) = recording(&clock);
        let weak = lc.downgrade();
        let d = lc.start(secs(1), false).unwrap();
        let ended = ending(&d);
        drop(lc);
        clock.advance(secs(2));
        // Alive while running: its timer holds it.
        let lc = weak.upgrade().unwrap();
        lc.stop().unwrap();
        assert_eq!(*ended.borrow(), Some(Ok(false)));
        drop((lc, d));
        assert!(weak.upgrade().is_none());
    }

    #[test]
    fn k18_defer_later_fires_with_the_functions_result_after_the_delay() {
        let clock = FakeClock::new();
        let d = defer_later(&clock, secs(2), || Step::Value(5));
        let seen = Rc::new(Cell::new(None));
        let (s, c) = (seen.clone(), clock.clone());
        d.add_callback(move |v| {
            s.set(Some((v, c.seconds())));
            Step::Value(v)
        });
        clock.advance(ms(1_999));
        assert_eq!(seen.get(), None);
        clock.advance(ms(1));
        assert_eq!(seen.get(), Some((5, secs(2))));
    }

    #[test]
    fn k18_an_error_from_the_function_errbacks() {
        let clock = FakeClock::new();
        let d = defer_later::<()>(&clock, secs(1), || Step::err(MessageError("late".into())));
        let seen = Rc::new(RefCell::new(None));
        let s = seen.clone();
        d.add_errback(move |f| {
            *s.borrow_mut() = Some(f.error_message());
            Step::Value(())
        });
        clock.advance(secs(1));
        assert_eq!(seen.borrow().as_deref(), Some("late"));
    }

    #[test]
    fn k18_cancelling_stops_the_timer_and_the_function_never_runs() {
        let clock = FakeClock::new();
        let ran = Rc::new(Cell::new(false));
        let r = ran.clone();
        let d = defer_later(&clock, secs(1), move || {
            r.set(true);
            Step::Value(())
        });
        let cancelled = Rc::new(Cell::new(false));
        let c = cancelled.clone();
        d.add_errback(move |f| {
            c.set(f.check::<CancelledError>());
            Step::Value(())
        });
        d.cancel();
        assert!(cancelled.get());
        assert!(clock.delayed_calls().is_empty());
        clock.advance(secs(5));
        assert!(!ran.get());
    }
}
