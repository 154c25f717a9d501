//! The reactor loop against spec items R-01..R-24 (plus T-04, T-08, T-16 on the real loop
//! and `defer_to_thread`), on a real reactor with the monotonic clock.
//!
//! No test sleeps: time passes through short `call_later` delays, other threads hand work
//! over with `call_from_thread`, and I/O comes from a Unix socket pair registered with the
//! reactor. Every run is bounded by a watchdog timer that crashes the loop after 5 s and
//! fails the test.

use std::cell::{Cell, RefCell};
use std::io::{ErrorKind, Read, Write};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use mio::Interest;
use mio::net::UnixStream;
use twistctl::reactor::{
    Deferred, DelayedCall, DelayedCallError, Failure, IoHandler, LoopingCall, Phase, Reactor,
    ReactorError, Readiness, Step, StopReason, SystemEvent, TriggerHandle, UnknownTrigger,
};

const WATCHDOG: Duration = Duration::from_secs(5);
const MS: Duration = Duration::from_millis(1);

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// An ordered record of what happened, shared by the callbacks of one test. `Send`, so
/// calls handed over with `call_from_thread` can write to it too.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn push(&self, entry: impl Into<String>) {
        self.0.lock().unwrap().push(entry.into());
    }

    fn entries(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    /// A closure that records `entry` when called (for triggers and timers).
    fn recorder(&self, entry: &str) -> impl FnOnce() + 'static {
        let log = self.clone();
        let entry = entry.to_string();
        move || log.push(entry)
    }
}

/// Runs the reactor with a watchdog: if `run()` has not returned after 5 s the loop is
/// crashed and the test fails.
fn run_bounded(reactor: &Reactor) -> StopReason {
    let timed_out = Rc::new(Cell::new(false));
    let (r, t) = (reactor.clone(), timed_out.clone());
    let dog = reactor.call_later(WATCHDOG, move || {
        t.set(true);
        r.crash();
    });
    let reason = reactor.run().expect("run() failed");
    assert!(!timed_out.get(), "watchdog: the reactor ran for 5 s");
    // Leave no timer of ours behind for delayed_calls() checks or a second run.
    let _ = dog.cancel();
    reason
}

/// Calls `run()` expecting it to refuse; should it start the loop instead, a timer
/// crashes it at once so the test fails rather than hangs.
fn run_expecting_refusal(reactor: &Reactor) -> Result<StopReason, ReactorError> {
    let r = reactor.clone();
    let guard = reactor.call_later(Duration::ZERO, move || r.crash());
    let outcome = reactor.run();
    let _ = guard.cancel();
    outcome
}

/// A fresh reactor and the log its test's callbacks write to.
fn setup() -> (Reactor, Log) {
    (Reactor::new().unwrap(), Log::default())
}

/// Registers a trigger that only records `label` when `phase` of `event` runs.
fn record_trigger(
    reactor: &Reactor,
    phase: Phase,
    event: SystemEvent,
    log: &Log,
    label: &str,
) -> TriggerHandle {
    reactor.add_system_event_trigger(phase, event, log.recorder(label))
}

/// [`record_trigger`] for the startup event.
fn record_startup(reactor: &Reactor, log: &Log, phase: Phase, label: &str) -> TriggerHandle {
    record_trigger(reactor, phase, SystemEvent::Startup, log, label)
}

/// [`record_trigger`] for the shutdown event, which most tests watch.
fn record_shutdown(reactor: &Reactor, log: &Log, phase: Phase, label: &str) -> TriggerHandle {
    record_trigger(reactor, phase, SystemEvent::Shutdown, log, label)
}

/// Runs the reactor to a normal stop (not a crash or the watchdog) and checks the log.
fn run_to_stop_and_expect(reactor: &Reactor, log: &Log, expected: &[&str]) {
    assert_eq!(run_bounded(reactor), StopReason::Stopped);
    assert_eq!(log.entries(), expected);
}

/// Records "before", "during" and "after" as the three phases of `event` run.
fn record_each_phase(reactor: &Reactor, log: &Log, event: SystemEvent) {
    for (phase, label) in [
        (Phase::Before, "before"),
        (Phase::During, "during"),
        (Phase::After, "after"),
    ] {
        record_trigger(reactor, phase, event, log, label);
    }
}

/// A before-`event` trigger returning a pending Deferred: the event waits until the test
/// fires the returned Deferred.
fn hold_before(reactor: &Reactor, event: SystemEvent) -> Deferred<()> {
    let held = Deferred::<()>::new();
    let h = held.clone();
    reactor.add_system_event_trigger(Phase::Before, event, move || h);
    held
}

/// A timer that records `entry` and then stops the reactor.
fn log_then_stop(reactor: &Reactor, log: &Log, delay: Duration, entry: &str) -> DelayedCall {
    let (r, l, entry) = (reactor.clone(), log.clone(), entry.to_string());
    reactor.call_later(delay, move || {
        l.push(entry);
        r.stop()
    })
}

fn stop_in(reactor: &Reactor, delay: Duration) -> DelayedCall {
    let r = reactor.clone();
    reactor.call_later(delay, move || r.stop())
}

fn is_running(reactor: &Reactor, log: &Log, label: &'static str) -> impl FnOnce() + 'static {
    let (r, log) = (reactor.clone(), log.clone());
    move || log.push(format!("{label} running={}", r.running()))
}

/// Passes a Deferred's result on unchanged after handing a copy to `seen`.
fn observe<T: Clone + 'static>(
    deferred: &Deferred<T>,
    seen: impl FnOnce(Result<T, Failure>) + 'static,
) {
    deferred.add_both(move |result| {
        seen(result.clone());
        match result {
            Ok(value) => Step::Value(value),
            Err(failure) => Step::Fail(failure),
        }
    });
}

type OnReady = Box<dyn FnOnce(&Reactor)>;

/// The read end of a socket pair, registered with the reactor: logs "io" when data
/// arrives (and runs a one-shot hook), and logs the reactor's shutdown call.
struct Reader {
    stream: RefCell<UnixStream>,
    log: Log,
    on_ready: RefCell<Option<OnReady>>,
}

impl IoHandler for Reader {
    fn ready(&self, reactor: &Reactor, readiness: Readiness) {
        if !readiness.readable {
            return;
        }
        let mut buf = [0u8; 64];
        loop {
            match self.stream.borrow_mut().read(&mut buf) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("read failed: {e}"),
            }
        }
        self.log.push("io");
        let hook = self.on_ready.borrow_mut().take();
        if let Some(hook) = hook {
            hook(reactor);
        }
    }

    fn shutdown(&self, reactor: &Reactor) {
        self.log
            .push(format!("io-shutdown running={}", reactor.running()));
    }
}

/// A socket pair whose read end is registered with `reactor`; returns the write end.
fn pipe(reactor: &Reactor, log: &Log) -> (Rc<Reader>, UnixStream) {
    let (read_end, write_end) = UnixStream::pair().expect("socketpair");
    let reader = Rc::new(Reader {
        stream: RefCell::new(read_end),
        log: log.clone(),
        on_ready: RefCell::new(None),
    });
    reactor
        .register_io(
            &mut *reader.stream.borrow_mut(),
            Interest::READABLE,
            reader.clone(),
        )
        .expect("register_io");
    (reader, write_end)
}

fn poke(writer: &mut UnixStream) {
    writer.write_all(b"x").expect("write to socket pair");
}

// ---------------------------------------------------------------------------------------
// R-01 .. R-05: creation and startup
// ---------------------------------------------------------------------------------------

#[test]
fn r01_reactor_is_created_stopped_and_run_returns_after_the_loop_exits() {
    let reactor = Reactor::new().unwrap();
    assert!(!reactor.running());
    assert!(reactor.delayed_calls().is_empty());
    let log = Log::default();
    record_startup(&reactor, &log, Phase::Before, "startup");
    record_shutdown(&reactor, &log, Phase::After, "after shutdown");
    log_then_stop(&reactor, &log, MS, "loop");
    assert!(log.entries().is_empty(), "nothing runs before run()");
    run_to_stop_and_expect(&reactor, &log, &["startup", "loop", "after shutdown"]);
    assert!(!reactor.running());
}

#[test]
fn r02_running_is_false_in_before_startup_and_true_in_during_and_after() {
    let (reactor, log) = setup();
    for (phase, label) in [
        (Phase::Before, "before"),
        (Phase::During, "during"),
        (Phase::After, "after"),
    ] {
        reactor.add_system_event_trigger(
            phase,
            SystemEvent::Startup,
            is_running(&reactor, &log, label),
        );
    }
    reactor.call_when_running(is_running(&reactor, &log, "cwr"));
    stop_in(&reactor, Duration::ZERO);
    run_to_stop_and_expect(
        &reactor,
        &log,
        &[
            "before running=false",
            "during running=true",
            "after running=true",
            "cwr running=true",
        ],
    );
}

#[test]
fn r03_call_when_running_before_run_is_a_removable_after_startup_trigger() {
    let (reactor, log) = setup();
    let first = reactor.call_when_running(log.recorder("cwr1"));
    record_startup(&reactor, &log, Phase::After, "after");
    let removed = reactor.call_when_running(log.recorder("removed"));
    reactor.call_when_running(log.recorder("cwr2"));
    record_startup(&reactor, &log, Phase::During, "during");
    assert!(first.is_some());
    let removed = removed.expect("a handle before run()");
    reactor.remove_system_event_trigger(removed).unwrap();
    assert!(
        log.entries().is_empty(),
        "call_when_running before run() runs nothing"
    );
    stop_in(&reactor, Duration::ZERO);
    run_bounded(&reactor);
    // After-startup triggers in registration order, after the During phase.
    assert_eq!(log.entries(), ["during", "cwr1", "after", "cwr2"]);
}

#[test]
fn r04_call_when_running_while_running_calls_at_once_without_handle() {
    let (reactor, log) = setup();
    let (r, l) = (reactor.clone(), log.clone());
    reactor.call_later(Duration::ZERO, move || {
        let handle = r.call_when_running(l.recorder("cwr"));
        assert!(handle.is_none());
        l.push("returned");
        r.stop()
    });
    run_to_stop_and_expect(&reactor, &log, &["cwr", "returned"]);
}

#[test]
fn r05_startup_order() {
    let (reactor, log) = setup();
    // Queued before run(): both must run after every call_when_running.
    reactor.call_later(Duration::ZERO, log.recorder("call_later(0)"));
    let l = log.clone();
    reactor.call_from_thread(move |_: &Reactor| l.push("call_from_thread"));
    // Registered out of phase order on purpose.
    reactor.call_when_running(log.recorder("cwr"));
    record_startup(&reactor, &log, Phase::After, "after");
    reactor.add_system_event_trigger(
        Phase::During,
        SystemEvent::Startup,
        is_running(&reactor, &log, "during"),
    );
    reactor.add_system_event_trigger(
        Phase::Before,
        SystemEvent::Startup,
        is_running(&reactor, &log, "before"),
    );
    stop_in(&reactor, Duration::ZERO);
    run_to_stop_and_expect(
        &reactor,
        &log,
        &[
            "before running=false",
            "during running=true",
            "cwr",
            "after",
            "call_from_thread",
            "call_later(0)",
        ],
    );
}

// ---------------------------------------------------------------------------------------
// R-06 .. R-11: run/stop misuse and shutdown
// ---------------------------------------------------------------------------------------

#[test]
fn r06_run_while_running_fails_and_the_loop_is_unaffected() {
    let (reactor, log) = setup();
    let (r, l) = (reactor.clone(), log.clone());
    reactor.call_later(Duration::ZERO, move || {
        match r.run() {
            Err(ReactorError::AlreadyRunning) => l.push("already running"),
            other => l.push(format!("unexpected {other:?}")),
        }
        l.push(format!("running={}", r.running()));
    });
    log_then_stop(&reactor, &log, 5 * MS, "later timer");
    run_to_stop_and_expect(
        &reactor,
        &log,
        &["already running", "running=true", "later timer"],
    );
}

#[test]
fn r07_run_after_stop_is_not_restartable() {
    let reactor = Reactor::new().unwrap();
    stop_in(&reactor, Duration::ZERO);
    assert_eq!(run_bounded(&reactor), StopReason::Stopped);
    assert!(matches!(
        run_expecting_refusal(&reactor),
        Err(ReactorError::NotRestartable)
    ));
    assert!(!reactor.running());
}

#[test]
fn r08_stop_before_run_is_not_running() {
    let reactor = Reactor::new().unwrap();
    assert!(matches!(reactor.stop(), Err(ReactorError::NotRunning)));
    // The failed stop left nothing behind: the reactor still runs and stops normally.
    stop_in(&reactor, Duration::ZERO);
    assert_eq!(run_bounded(&reactor), StopReason::Stopped);
}

#[test]
fn r08_second_stop_is_not_running() {
    let (reactor, log) = setup();
    let (r, l) = (reactor.clone(), log.clone());
    reactor.call_later(Duration::ZERO, move || {
        l.push(format!("first {:?}", r.stop().is_ok()));
        l.push(format!(
            "second {:?}",
            matches!(r.stop(), Err(ReactorError::NotRunning))
        ));
    });
    // Still an error from a later callback while shutdown waits on a Deferred.
    let pending = hold_before(&reactor, SystemEvent::Shutdown);
    let (r, l) = (reactor.clone(), log.clone());
    reactor.call_later(5 * MS, move || {
        l.push(format!(
            "during shutdown {:?}",
            matches!(r.stop(), Err(ReactorError::NotRunning))
        ));
        pending.callback(()).unwrap();
    });
    run_to_stop_and_expect(
        &reactor,
        &log,
        &["first true", "second true", "during shutdown true"],
    );
    assert!(matches!(reactor.stop(), Err(ReactorError::NotRunning)));
}

#[test]
fn r09_stop_inside_timer_returns_at_once_and_due_timers_still_run() {
    let (reactor, log) = setup();
    record_shutdown(&reactor, &log, Phase::Before, "before shutdown");
    record_shutdown(&reactor, &log, Phase::During, "during shutdown");
    let (r, l) = (reactor.clone(), log.clone());
    reactor.call_later(Duration::ZERO, move || {
        r.stop().unwrap();
        l.push(format!("after stop running={}", r.running()));
    });
    reactor.call_later(Duration::ZERO, log.recorder("due in the same step"));
    run_to_stop_and_expect(
        &reactor,
        &log,
        &[
            "after stop running=true",
            "due in the same step",
            "before shutdown",
            "during shutdown",
        ],
    );
}

#[test]
fn r09_stop_from_io_callback_shuts_down_at_the_next_timer_step() {
    let (reactor, log) = setup();
    let (reader, mut writer) = pipe(&reactor, &log);
    record_shutdown(&reactor, &log, Phase::Before, "before shutdown");
    let l = log.clone();
    *reader.on_ready.borrow_mut() = Some(Box::new(move |r: &Reactor| {
        r.stop().unwrap();
        l.push("stopped in io");
        let l2 = l.clone();
        r.call_from_thread(move |_: &Reactor| l2.push("call_from_thread"));
        r.call_later(Duration::ZERO, l.recorder("timer due next step"));
    }));
    poke(&mut writer);
    run_to_stop_and_expect(
        &reactor,
        &log,
        &[
            "io",
            "stopped in io",
            "call_from_thread",
            "timer due next step",
            "before shutdown",
            "io-shutdown running=false",
        ],
    );
}

#[test]
fn r10_shutdown_order() {
    let (reactor, log) = setup();
    let (reader, mut writer) = pipe(&reactor, &log);
    let held = Deferred::<()>::new();
    let (h, r, l) = (held.clone(), reactor.clone(), log.clone());
    reactor.add_system_event_trigger(Phase::Before, SystemEvent::Shutdown, move || {
        l.push(format!("before1 running={}", r.running()));
        h
    });
    reactor.add_system_event_trigger(
        Phase::During,
        SystemEvent::Shutdown,
        is_running(&reactor, &log, "during"),
    );
    record_shutdown(&reactor, &log, Phase::After, "after");
    record_shutdown(&reactor, &log, Phase::Before, "before2");
    stop_in(&reactor, Duration::ZERO);
    // While the Deferred is pending, the loop keeps running timers and I/O.
    let (l, r) = (log.clone(), reactor.clone());
    reactor.call_later(5 * MS, move || {
        l.push(format!("timer running={}", r.running()));
        poke(&mut writer);
    });
    let l = log.clone();
    *reader.on_ready.borrow_mut() = Some(Box::new(move |_: &Reactor| {
        held.callback(()).unwrap();
        l.push("fired");
    }));
    run_to_stop_and_expect(
        &reactor,
        &log,
        &[
            "before1 running=true",
            "before2",
            "timer running=true",
            "io",
            "fired",
            "io-shutdown running=false",
            "during running=false",
            "after",
        ],
    );
}

#[test]
fn r10_nothing_runs_after_the_after_shutdown_triggers() {
    // The shutdown resumes from a Deferred fired by a timer; a timer due by then must not
    // run between the after-shutdown triggers and run() returning.
    let (reactor, log) = setup();
    let held = hold_before(&reactor, SystemEvent::Shutdown);
    record_shutdown(&reactor, &log, Phase::After, "after");
    stop_in(&reactor, Duration::ZERO);
    let (r, l) = (reactor.clone(), log.clone());
    reactor.call_later(2 * MS, move || {
        held.callback(()).unwrap();
        // Due in the very next iteration: it would run after "after" if the loop went
        // through its timer step before exiting.
        let late = l.recorder("late timer");
        r.call_later(Duration::ZERO, late);
    });
    run_to_stop_and_expect(&reactor, &log, &["after"]);
    assert_eq!(reactor.delayed_calls().len(), 1);
}

#[test]
fn r11_pending_timers_neither_run_nor_get_cancelled_at_shutdown() {
    let reactor = Reactor::new().unwrap();
    let ran = Rc::new(Cell::new(false));
    let r = ran.clone();
    let pending = reactor.call_later(Duration::from_secs(60), move || r.set(true));
    stop_in(&reactor, MS);
    run_bounded(&reactor);
    assert!(!ran.get());
    assert!(pending.active());
    let listed = reactor.delayed_calls();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].time(), pending.time());
    // Still a live call: cancelling it works once.
    assert_eq!(pending.cancel(), Ok(()));
    assert!(reactor.delayed_calls().is_empty());
}

// ---------------------------------------------------------------------------------------
// R-12 .. R-17: the iteration, crash, calls from threads, errors
// ---------------------------------------------------------------------------------------

#[test]
fn r12_iteration_runs_thread_calls_then_timers_then_shutdown_then_io() {
    let (reactor, log) = setup();
    let (reader, mut writer) = pipe(&reactor, &log);
    poke(&mut writer); // readable from the first poll on
    let l = log.clone();
    reactor.call_from_thread(move |_: &Reactor| l.push("call_from_thread"));
    log_then_stop(&reactor, &log, Duration::ZERO, "timer");
    let held = Deferred::<()>::new();
    let (h, l) = (held.clone(), log.clone());
    reactor.add_system_event_trigger(Phase::Before, SystemEvent::Shutdown, move || {
        l.push("before shutdown");
        h
    });
    record_shutdown(&reactor, &log, Phase::During, "during shutdown");
    *reader.on_ready.borrow_mut() = Some(Box::new(move |_: &Reactor| {
        held.callback(()).unwrap();
    }));
    run_to_stop_and_expect(
        &reactor,
        &log,
        &[
            "call_from_thread",
            "timer",
            "before shutdown",
            "io",
            "io-shutdown running=false",
            "during shutdown",
        ],
    );
}

#[test]
fn r13_crash_skips_shutdown_and_run_can_be_called_again() {
    let (reactor, log) = setup();
    let (_reader, _writer) = pipe(&reactor, &log);
    record_each_phase(&reactor, &log, SystemEvent::Shutdown);
    record_startup(&reactor, &log, Phase::Before, "startup");
    let (r, l) = (reactor.clone(), log.clone());
    reactor.call_later(Duration::ZERO, move || {
        r.crash();
        l.push("crashed");
        // Queued for the next iteration, which this run() does not reach.
        let l2 = l.clone();
        r.call_later(Duration::ZERO, move || l2.push("next iteration"));
    });
    // Due in the same timer step: the iteration is finished.
    reactor.call_later(Duration::ZERO, log.recorder("same iteration"));
    assert_eq!(run_bounded(&reactor), StopReason::Crashed);
    assert!(!reactor.running());
    assert_eq!(log.entries(), ["startup", "crashed", "same iteration"]);
    assert_eq!(reactor.io_source_count(), 1, "crash disconnects nothing");

    reactor.call_when_running(is_running(&reactor, &log, "cwr"));
    stop_in(&reactor, 2 * MS);
    assert_eq!(run_bounded(&reactor), StopReason::Stopped);
    assert_eq!(
        log.entries()[3..],
        [
            "cwr running=true",
            "next iteration",
            "before",
            "io-shutdown running=false",
            "during",
            "after"
        ]
    );
}

#[test]
fn r13_crash_while_shutting_down_ends_the_reactor() {
    // Twisted: stop() marks the reactor as started before, so after a crash in the middle
    // of the shutdown run() raises ReactorNotRestartable rather than starting a reactor
    // whose shutdown half happened.
    let reactor = Reactor::new().unwrap();
    let held = hold_before(&reactor, SystemEvent::Shutdown);
    stop_in(&reactor, Duration::ZERO);
    let r = reactor.clone();
    reactor.call_later(MS, move || r.crash());
    assert_eq!(run_bounded(&reactor), StopReason::Crashed);
    assert!(!reactor.running());
    assert!(matches!(reactor.stop(), Err(ReactorError::NotRunning)));
    assert!(matches!(
        run_expecting_refusal(&reactor),
        Err(ReactorError::NotRestartable)
    ));
    drop(held);
}

#[test]
fn r14_call_from_thread_wakes_the_sleeping_poll_and_runs_on_the_reactor_thread() {
    let reactor = Reactor::new().unwrap();
    let reactor_thread = thread::current().id();
    let ran_on = Arc::new(Mutex::new(None));
    let worker: Rc<RefCell<Option<JoinHandle<()>>>> = Rc::default();
    let (handle, ran) = (reactor.handle(), ran_on.clone());
    let (go_tx, go) = std::sync::mpsc::channel::<()>();
    *worker.borrow_mut() = Some(thread::spawn(move || {
        // Told from the reactor's last timer before it goes to sleep: the only timer left
        // then is the watchdog, so the loop sleeps until this call wakes it.
        if go.recv().is_ok() {
            handle.call_from_thread(move |r: &Reactor| {
                *ran.lock().unwrap() = Some(thread::current().id());
                r.stop()
            });
        }
    }));
    reactor.call_later(MS, move || go_tx.send(()).unwrap());
    assert_eq!(run_bounded(&reactor), StopReason::Stopped);
    worker.borrow_mut().take().unwrap().join().unwrap();
    assert_eq!(*ran_on.lock().unwrap(), Some(reactor_thread));
}

#[test]
fn r15_call_from_thread_requeued_waits_for_next_iteration() {
    let (reactor, log) = setup();
    let l = log.clone();
    reactor.call_from_thread(move |r: &Reactor| {
        l.push("A");
        let l = l.clone();
        r.call_from_thread(move |r: &Reactor| {
            l.push("B");
            r.stop()
        });
    });
    reactor.call_later(Duration::ZERO, log.recorder("timer"));
    assert_eq!(run_bounded(&reactor), StopReason::Stopped);
    // B was queued while the iteration ran A: that iteration's timer step came first.
    assert_eq!(log.entries(), ["A", "timer", "B"]);
}

#[test]
fn r15_self_requeuing_call_does_not_starve_timers_or_io() {
    const LIMIT: usize = 100_000;
    fn requeue(reactor: &Reactor, count: Arc<AtomicUsize>) {
        if count.fetch_add(1, Ordering::SeqCst) < LIMIT {
            reactor.call_from_thread(move |r: &Reactor| requeue(r, count));
        }
    }
    let (reactor, log) = setup();
    let (reader, mut writer) = pipe(&reactor, &log);
    poke(&mut writer);
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    reactor.call_from_thread(move |r: &Reactor| requeue(r, c));
    let at_io = Rc::new(Cell::new(usize::MAX));
    let (a, c) = (at_io.clone(), count.clone());
    *reader.on_ready.borrow_mut() =
        Some(Box::new(move |_: &Reactor| a.set(c.load(Ordering::SeqCst))));
    let at_timer = Rc::new(Cell::new(usize::MAX));
    let (a, c, r) = (at_timer.clone(), count.clone(), reactor.clone());
    reactor.call_later(MS, move || {
        a.set(c.load(Ordering::SeqCst));
        r.stop()
    });
    assert_eq!(run_bounded(&reactor), StopReason::Stopped);
    assert!(
        at_io.get() < LIMIT,
        "I/O waited for the requeuing call ({})",
        at_io.get()
    );
    assert!(
        at_timer.get() < LIMIT,
        "the timer waited for the requeuing call ({})",
        at_timer.get()
    );
}

#[test]
fn r16_call_from_thread_before_run_is_queued_and_runs_in_the_first_iteration() {
    let (reactor, log) = setup();
    let l = log.clone();
    reactor
        .handle()
        .call_from_thread(move |_: &Reactor| l.push("call_from_thread"));
    assert!(log.entries().is_empty(), "queued, not run");
    reactor.call_when_running(log.recorder("cwr"));
    log_then_stop(&reactor, &log, Duration::ZERO, "first timer");
    run_to_stop_and_expect(&reactor, &log, &["cwr", "call_from_thread", "first timer"]);
}

#[test]
fn r16_ten_thousand_calls_from_eight_threads_each_run_once_in_order() {
    const THREADS: usize = 8;
    const PER_THREAD: usize = 1250;
    const TOTAL: usize = THREADS * PER_THREAD;
    let reactor = Reactor::new().unwrap();
    let reactor_thread = thread::current().id();
    let seen = Arc::new(Mutex::new(Vec::<(usize, usize)>::with_capacity(TOTAL)));
    let off_thread = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(Barrier::new(THREADS));
    let mut workers = Vec::new();
    for t in 0..THREADS {
        let (handle, seen, off, start) = (
            reactor.handle(),
            seen.clone(),
            off_thread.clone(),
            start.clone(),
        );
        workers.push(thread::spawn(move || {
            start.wait();
            for i in 0..PER_THREAD {
                let (seen, off) = (seen.clone(), off.clone());
                handle.call_from_thread(move |r: &Reactor| {
                    if thread::current().id() != reactor_thread {
                        off.fetch_add(1, Ordering::SeqCst);
                    }
                    let mut seen = seen.lock().unwrap();
                    seen.push((t, i));
                    if seen.len() == TOTAL {
                        r.stop().unwrap();
                    }
                });
            }
        }));
    }
    // Some calls arrive before run(), the rest while the loop runs.
    assert_eq!(run_bounded(&reactor), StopReason::Stopped);
    for worker in workers {
        worker.join().unwrap();
    }
    assert_eq!(off_thread.load(Ordering::SeqCst), 0);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), TOTAL);
    let mut next = [0usize; THREADS];
    for &(t, i) in seen.iter() {
        assert_eq!(i, next[t], "thread {t}: call {i} out of order or repeated");
        next[t] += 1;
    }
    assert!(next.iter().all(|&n| n == PER_THREAD));
}

#[test]
fn r17_errors_from_timers_thread_calls_and_triggers_are_logged_and_the_loop_goes_on() {
    let (reactor, log) = setup();
    reactor.call_later(Duration::ZERO, || {
        Err::<(), _>(std::io::Error::other("timer"))
    });
    reactor.call_later(Duration::ZERO, log.recorder("next timer"));
    let ran = Arc::new(AtomicUsize::new(0));
    reactor.call_from_thread(|_: &Reactor| Err::<(), _>(std::io::Error::other("call")));
    let r = ran.clone();
    reactor.call_from_thread(move |_: &Reactor| {
        r.fetch_add(1, Ordering::SeqCst);
    });
    reactor.add_system_event_trigger(Phase::Before, SystemEvent::Shutdown, || {
        Err::<(), _>(std::io::Error::other("trigger"))
    });
    record_shutdown(&reactor, &log, Phase::Before, "next trigger");
    record_shutdown(&reactor, &log, Phase::During, "during");
    reactor.call_when_running(|| Err::<(), _>(std::io::Error::other("cwr")));
    stop_in(&reactor, MS);
    capture_errors();
    assert_eq!(run_bounded(&reactor), StopReason::Stopped);
    let logged = CAPTURED.with(|c| c.take());
    assert_eq!(ran.load(Ordering::SeqCst), 1);
    assert_eq!(log.entries(), ["next timer", "next trigger", "during"]);
    for what in ["timer", "call", "trigger", "cwr"] {
        assert!(
            logged.iter().any(|line| line.ends_with(what)),
            "no error logged for {what}: {logged:?}"
        );
    }
}

thread_local! {
    /// Error records logged on this thread (each test runs on its own thread).
    static CAPTURED: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// Keeps error records per thread, so tests running in parallel do not see each other's.
struct CaptureErrors;

impl log::Log for CaptureErrors {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::Level::Error
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            CAPTURED.with(|c| c.borrow_mut().push(record.args().to_string()));
        }
    }

    fn flush(&self) {}
}

fn capture_errors() {
    static LOGGER: CaptureErrors = CaptureErrors;
    // Only the first call installs it; later ones find it in place.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(log::LevelFilter::Error);
}

// ---------------------------------------------------------------------------------------
// R-18 .. R-24: system event triggers
// ---------------------------------------------------------------------------------------

#[test]
fn r18_add_system_event_trigger_returns_a_handle_per_registration() {
    let reactor = Reactor::new().unwrap();
    let a = reactor.add_system_event_trigger(Phase::Before, SystemEvent::Startup, || ());
    let b = reactor.add_system_event_trigger(Phase::Before, SystemEvent::Startup, || ());
    let c = reactor.add_system_event_trigger(Phase::After, SystemEvent::Shutdown, || ());
    assert_ne!(a, b);
    assert_ne!(b, c);
    for handle in [a, b, c] {
        assert_eq!(reactor.remove_system_event_trigger(handle), Ok(()));
    }
}

#[test]
fn r19_triggers_run_by_phase_in_registration_order_once_each() {
    let (reactor, log) = setup();
    for (phase, label) in [
        (Phase::After, "after1"),
        (Phase::During, "during1"),
        (Phase::Before, "before1"),
        (Phase::After, "after2"),
        (Phase::Before, "before2"),
        (Phase::During, "during2"),
    ] {
        reactor.add_system_event_trigger(phase, SystemEvent::Startup, log.recorder(label));
    }
    let r = reactor.clone();
    reactor.call_later(Duration::ZERO, move || r.crash());
    assert_eq!(run_bounded(&reactor), StopReason::Crashed);
    assert_eq!(
        log.entries(),
        [
            "before1", "before2", "during1", "during2", "after1", "after2"
        ]
    );
    // Firing startup again (run() after crash) runs only the triggers added since.
    record_startup(&reactor, &log, Phase::During, "new");
    stop_in(&reactor, Duration::ZERO);
    assert_eq!(run_bounded(&reactor), StopReason::Stopped);
    assert_eq!(log.entries()[6..], ["new"]);
}

#[test]
fn r20_before_shutdown_deferred_delays_shutdown() {
    let (reactor, log) = setup();
    let held = hold_before(&reactor, SystemEvent::Shutdown);
    record_shutdown(&reactor, &log, Phase::During, "during");
    stop_in(&reactor, Duration::ZERO);
    let (r, l) = (reactor.clone(), log.clone());
    reactor.call_later(3 * MS, move || {
        l.push(format!("waiting running={}", r.running()));
        held.callback(()).unwrap();
        l.push("fired");
    });
    assert_eq!(run_bounded(&reactor), StopReason::Stopped);
    // The During phase never runs inside the Deferred's callback chain.
    assert_eq!(log.entries(), ["waiting running=true", "fired", "during"]);
}

#[test]
fn r20_failed_before_deferred_still_lets_the_event_proceed() {
    let (reactor, log) = setup();
    let ok = hold_before(&reactor, SystemEvent::Shutdown);
    let failing = hold_before(&reactor, SystemEvent::Shutdown);
    record_shutdown(&reactor, &log, Phase::During, "during");
    stop_in(&reactor, Duration::ZERO);
    let l = log.clone();
    reactor.call_later(2 * MS, move || {
        failing.errback(Failure::msg("no")).unwrap();
        l.push("failed one");
    });
    let l = log.clone();
    reactor.call_later(4 * MS, move || {
        l.push("ok one");
        ok.callback(()).unwrap();
    });
    run_to_stop_and_expect(&reactor, &log, &["failed one", "ok one", "during"]);
}

#[test]
fn r20_before_trigger_firing_an_earlier_deferred_does_not_skip_the_rest() {
    let (reactor, log) = setup();
    let first = Deferred::<()>::new();
    let (f, l) = (first.clone(), log.clone());
    reactor.add_system_event_trigger(Phase::Before, SystemEvent::Shutdown, move || {
        l.push("before1");
        f
    });
    let l = log.clone();
    reactor.add_system_event_trigger(Phase::Before, SystemEvent::Shutdown, move || {
        first.callback(()).unwrap();
        l.push("before2 fired before1's Deferred");
    });
    record_shutdown(&reactor, &log, Phase::Before, "before3");
    record_shutdown(&reactor, &log, Phase::During, "during");
    stop_in(&reactor, Duration::ZERO);
    run_to_stop_and_expect(
        &reactor,
        &log,
        &[
            "before1",
            "before2 fired before1's Deferred",
            "before3",
            "during",
        ],
    );
}

#[test]
fn r21_removed_trigger_does_not_run() {
    let (reactor, log) = setup();
    let gone = record_shutdown(&reactor, &log, Phase::During, "gone");
    record_shutdown(&reactor, &log, Phase::During, "kept");
    assert_eq!(reactor.remove_system_event_trigger(gone), Ok(()));
    assert_eq!(
        reactor.remove_system_event_trigger(gone),
        Err(UnknownTrigger)
    );
    stop_in(&reactor, Duration::ZERO);
    run_to_stop_and_expect(&reactor, &log, &["kept"]);
}

#[test]
fn r21_earlier_trigger_of_the_same_firing_can_remove_a_later_one() {
    let (reactor, log) = setup();
    let later: Rc<Cell<Option<TriggerHandle>>> = Rc::default();
    let (r, l, h) = (reactor.clone(), log.clone(), later.clone());
    reactor.add_system_event_trigger(Phase::Before, SystemEvent::Shutdown, move || {
        l.push(format!(
            "removed {:?}",
            r.remove_system_event_trigger(h.get().unwrap())
        ));
    });
    later.set(Some(record_shutdown(
        &reactor,
        &log,
        Phase::After,
        "after (removed)",
    )));
    record_shutdown(&reactor, &log, Phase::After, "after");
    stop_in(&reactor, Duration::ZERO);
    run_to_stop_and_expect(&reactor, &log, &["removed Ok(())", "after"]);
}

#[test]
fn r21_trigger_can_be_removed_while_before_deferreds_are_pending() {
    let (reactor, log) = setup();
    let held = hold_before(&reactor, SystemEvent::Shutdown);
    let during = record_shutdown(&reactor, &log, Phase::During, "during (removed)");
    record_shutdown(&reactor, &log, Phase::After, "after");
    let ran_before = reactor.add_system_event_trigger(Phase::Before, SystemEvent::Shutdown, || ());
    stop_in(&reactor, Duration::ZERO);
    let (r, l) = (reactor.clone(), log.clone());
    reactor.call_later(2 * MS, move || {
        l.push(format!(
            "remove during {:?}",
            r.remove_system_event_trigger(during)
        ));
        // A trigger that has already run is no longer registered.
        l.push(format!(
            "remove run {:?}",
            r.remove_system_event_trigger(ran_before)
        ));
        held.callback(()).unwrap();
    });
    run_to_stop_and_expect(
        &reactor,
        &log,
        &[
            "remove during Ok(())",
            "remove run Err(UnknownTrigger)",
            "after",
        ],
    );
}

#[test]
fn r22_before_startup_deferred_holds_running_but_the_loop_runs() {
    let (reactor, log) = setup();
    let held = hold_before(&reactor, SystemEvent::Startup);
    reactor.call_when_running(is_running(&reactor, &log, "cwr"));
    reactor.add_system_event_trigger(
        Phase::During,
        SystemEvent::Startup,
        is_running(&reactor, &log, "during"),
    );
    reactor.call_later(Duration::ZERO, is_running(&reactor, &log, "loop"));
    let (r, l) = (reactor.clone(), log.clone());
    reactor.call_later(3 * MS, move || {
        held.callback(()).unwrap();
        l.push(format!("fired running={}", r.running()));
        let r2 = r.clone();
        r.call_later(Duration::ZERO, move || r2.stop());
    });
    assert!(!reactor.running());
    run_to_stop_and_expect(
        &reactor,
        &log,
        &[
            "loop running=false",
            "fired running=false",
            "during running=true",
            "cwr running=true",
        ],
    );
}

#[test]
fn r24_shutdown_proceeds_while_startup_waits_on_a_before_deferred() {
    let (reactor, log) = setup();
    let stuck = hold_before(&reactor, SystemEvent::Startup);
    reactor.call_when_running(log.recorder("cwr"));
    record_each_phase(&reactor, &log, SystemEvent::Shutdown);
    stop_in(&reactor, 2 * MS);
    run_to_stop_and_expect(&reactor, &log, &["before", "during", "after"]);
    assert!(!stuck.is_called());
    assert!(!reactor.running());
}

// ---------------------------------------------------------------------------------------
// Timers on the real loop: T-04, T-08, T-16
// ---------------------------------------------------------------------------------------

#[test]
fn t04_zero_delay_timer_from_a_timer_runs_next_iteration_after_an_io_poll() {
    let (reactor, log) = setup();
    let (_reader, mut writer) = pipe(&reactor, &log);
    let queued = Arc::new(AtomicUsize::new(0));
    let (r, l, q) = (reactor.clone(), log.clone(), queued.clone());
    reactor.call_later(MS, move || {
        l.push("A");
        poke(&mut writer);
        let (l2, r2, q2) = (l.clone(), r.clone(), q.clone());
        r.call_later(Duration::ZERO, move || {
            l2.push(format!("B after {} thread call", q2.load(Ordering::SeqCst)));
            r2.stop()
        });
        r.call_from_thread(move |_: &Reactor| {
            q.fetch_add(1, Ordering::SeqCst);
        });
    });
    assert_eq!(run_bounded(&reactor), StopReason::Stopped);
    // A's iteration polled I/O ("io"), and B ran after the next iteration's thread calls.
    assert_eq!(
        log.entries(),
        [
            "A",
            "io",
            "B after 1 thread call",
            "io-shutdown running=false"
        ]
    );
}

#[test]
fn t08_cancel_inside_own_callback_is_already_called() {
    let reactor = Reactor::new().unwrap();
    let own: Rc<RefCell<Option<DelayedCall>>> = Rc::default();
    let outcome = Rc::new(Cell::new(None));
    let (o, c, r) = (own.clone(), outcome.clone(), reactor.clone());
    let call = reactor.call_later(MS, move || {
        let call = o.borrow_mut().take().unwrap();
        c.set(Some((call.active(), call.cancel())));
        r.stop()
    });
    *own.borrow_mut() = Some(call);
    run_bounded(&reactor);
    assert_eq!(
        outcome.get(),
        Some((false, Err(DelayedCallError::AlreadyCalled)))
    );
}

#[test]
fn t16_timer_at_duration_max_does_not_break_the_loop() {
    let (reactor, log) = setup();
    let far = reactor.call_later(Duration::MAX, log.recorder("far timer"));
    log_then_stop(&reactor, &log, 2 * MS, "near timer");
    run_to_stop_and_expect(&reactor, &log, &["near timer"]);
    assert!(far.active());
}

#[test]
fn t16_timer_at_duration_max_alone_still_lets_a_thread_call_wake_the_loop() {
    let reactor = Reactor::new().unwrap();
    reactor.call_later(Duration::MAX, || ());
    let worker: Rc<RefCell<Option<JoinHandle<()>>>> = Rc::default();
    let (handle, w) = (reactor.handle(), worker.clone());
    reactor.call_when_running(move || {
        *w.borrow_mut() = Some(thread::spawn(move || {
            handle.call_from_thread(|r: &Reactor| r.stop());
        }));
    });
    assert_eq!(run_bounded(&reactor), StopReason::Stopped);
    worker.borrow_mut().take().unwrap().join().unwrap();
}

// ---------------------------------------------------------------------------------------
// defer_to_thread: blocking work on the worker pool
// ---------------------------------------------------------------------------------------

#[test]
fn r14_defer_to_thread_delivers_the_result_on_the_reactor_thread() {
    let reactor = Reactor::new().unwrap();
    let reactor_thread = thread::current().id();
    let job_thread = Arc::new(Mutex::new(None));
    let jt = job_thread.clone();
    let deferred = reactor.defer_to_thread(move || {
        *jt.lock().unwrap() = Some(thread::current().id());
        Ok::<_, std::io::Error>(6 * 7)
    });
    assert!(!deferred.is_called(), "the result arrives through the loop");
    let got = Rc::new(Cell::new(None));
    let (g, r) = (got.clone(), reactor.clone());
    observe(&deferred, move |result| {
        g.set(Some((result.ok(), thread::current().id())));
        r.stop().unwrap();
    });
    assert_eq!(run_bounded(&reactor), StopReason::Stopped);
    assert_eq!(got.get(), Some((Some(42), reactor_thread)));
    let ran_on = job_thread.lock().unwrap().expect("the job ran");
    assert_ne!(ran_on, reactor_thread);
}

#[test]
fn r14_defer_to_thread_err_becomes_a_failure() {
    let reactor = Reactor::new().unwrap();
    let deferred = reactor
        .defer_to_thread(|| Err::<u8, _>(std::io::Error::new(ErrorKind::NotFound, "no such host")));
    let got = Rc::new(RefCell::new(None));
    let (g, r) = (got.clone(), reactor.clone());
    observe(&deferred, move |result| {
        *g.borrow_mut() = Some(result);
        r.stop().unwrap();
    });
    run_bounded(&reactor);
    let failure = got
        .borrow_mut()
        .take()
        .expect("fired")
        .expect_err("a failure");
    let error = failure
        .downcast_ref::<std::io::Error>()
        .expect("the original error");
    assert_eq!(error.kind(), ErrorKind::NotFound);
    assert_eq!(failure.error_message(), "no such host");
}

#[test]
fn r14_defer_to_thread_panic_becomes_a_failure_and_the_pool_survives() {
    let (reactor, log) = setup();
    // More panics than workers: a dead worker would leave the later jobs unanswered.
    for _ in 0..5 {
        let deferred =
            reactor.defer_to_thread(|| -> Result<u8, std::io::Error> { panic!("job exploded") });
        let l = log.clone();
        observe(&deferred, move |result| match result {
            Err(failure) if failure.error_message().contains("job exploded") => l.push("failure"),
            other => l.push(format!("unexpected {other:?}")),
        });
    }
    let after = reactor.defer_to_thread(|| Ok::<_, std::io::Error>(1u8));
    let l = log.clone();
    observe(&after, move |result| {
        l.push(format!("after {:?}", result.ok()))
    });
    // Results come back in any order; stop once all six have.
    fn stop_when_all_back(reactor: &Reactor, log: Log) {
        if log.entries().len() == 6 {
            reactor.stop().unwrap();
        } else {
            let r = reactor.clone();
            reactor.call_later(MS, move || stop_when_all_back(&r, log));
        }
    }
    stop_when_all_back(&reactor, log.clone());
    assert_eq!(run_bounded(&reactor), StopReason::Stopped);
    let entries = log.entries();
    assert_eq!(
        entries.iter().filter(|e| *e == "failure").count(),
        5,
        "{entries:?}"
    );
    assert!(entries.iter().any(|e| e == "after Some(1)"), "{entries:?}");
}

/// Counts jobs inside the pool and holds them until four have arrived together.
#[derive(Default)]
struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Default)]
struct GateState {
    active: usize,
    max_active: usize,
    arrived: usize,
    finished: usize,
    finished_when_fifth_started: Option<usize>,
    timed_out: bool,
}

impl Gate {
    fn pass(&self) {
        let mut s = self.state.lock().unwrap();
        s.active += 1;
        s.max_active = s.max_active.max(s.active);
        let index = s.arrived;
        s.arrived += 1;
        if index == 4 {
            s.finished_when_fifth_started = Some(s.finished);
        }
        self.changed.notify_all();
        // A Barrier(4) per batch of four, bounded so that a smaller pool fails, not hangs.
        let batch_end = (index / 4 + 1) * 4;
        let (mut s, wait) = self
            .changed
            .wait_timeout_while(s, Duration::from_secs(3), |s| s.arrived < batch_end)
            .unwrap();
        if wait.timed_out() {
            s.timed_out = true;
        }
        s.active -= 1;
        s.finished += 1;
        self.changed.notify_all();
    }
}

#[test]
fn r14_defer_to_thread_runs_at_most_four_jobs_at_once() {
    let reactor = Reactor::new().unwrap();
    let gate = Arc::new(Gate::default());
    let done = Rc::new(Cell::new(0));
    for job in 0..8u32 {
        let g = gate.clone();
        let deferred = reactor.defer_to_thread(move || {
            g.pass();
            Ok::<_, std::io::Error>(job)
        });
        let (d, r) = (done.clone(), reactor.clone());
        observe(&deferred, move |result| {
            assert_eq!(result.ok(), Some(job));
            d.set(d.get() + 1);
            if d.get() == 8 {
                r.stop().unwrap();
            }
        });
    }
    assert_eq!(run_bounded(&reactor), StopReason::Stopped);
    assert_eq!(done.get(), 8);
    let s = gate.state.lock().unwrap();
    assert!(!s.timed_out, "fewer than four jobs ran at once");
    assert_eq!(s.max_active, 4);
    // A pool: the fifth job started only once a worker had finished a job.
    assert!(
        s.finished_when_fifth_started.is_some_and(|n| n >= 1),
        "the fifth job started while the first four were still running"
    );
}

// ---------------------------------------------------------------------------------------
// K-05 on the real reactor
// ---------------------------------------------------------------------------------------

/// K-05: a LoopingCall with interval 0 runs once per iteration of the real loop, and
/// I/O is dispatched between its calls. A call handed over from "another thread" by
/// each tick runs at the start of the next iteration, so one tick per iteration
/// shows as ticks and hand-overs strictly alternating; the socket written to by the
/// third tick is read before the fourth.
#[test]
fn k05_interval_zero_runs_once_per_iteration_interleaved_with_io() {
    let (reactor, log) = setup();
    let (_reader, writer) = pipe(&reactor, &log);
    let writer = RefCell::new(writer);
    let ticks = Rc::new(Cell::new(0));
    let handle = reactor.handle();
    let (t, l, r) = (ticks.clone(), log.clone(), reactor.clone());
    let looping = LoopingCall::new(reactor.clone(), move || {
        t.set(t.get() + 1);
        l.push(format!("tick {}", t.get()));
        let l2 = l.clone();
        handle.call_from_thread(move |_: &Reactor| l2.push("next iteration"));
        match t.get() {
            3 => poke(&mut writer.borrow_mut()),
            10 => r.stop().expect("running"),
            _ => {}
        }
    });
    looping.start(Duration::ZERO, true).unwrap();
    assert_eq!(run_bounded(&reactor), StopReason::Stopped);
    let entries = log.entries();
    let ticks_and_io: Vec<&str> = entries
        .iter()
        .map(String::as_str)
        .filter(|e| *e != "next iteration")
        .collect();
    assert_eq!(
        &ticks_and_io[..5],
        ["tick 1", "tick 2", "tick 3", "io", "tick 4"],
        "{entries:?}"
    );
    // Exactly one tick per iteration: every tick but the first follows a hand-over
    // made by the tick before, and no two ticks share an iteration.
    let mut previous = "";
    for entry in entries.iter().filter(|e| e.as_str() != "io") {
        if entry.starts_with("tick") && entry != "tick 1" {
            assert_eq!(previous, "next iteration", "{entries:?}");
        }
        previous = entry;
    }
    assert!(ticks.get() >= 10);
}
