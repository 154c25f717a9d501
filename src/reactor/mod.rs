//! The reactor: a Twisted-style event loop on `mio`.
//!
//! One thread runs the loop. Everything else is a callback it calls: timers
//! ([`Reactor::call_later`]), calls handed over from other threads
//! ([`ReactorHandle::call_from_thread`]), system event triggers, and the protocols of
//! connections. Callbacks get a cheap [`Reactor`] handle and may do anything with it,
//! including stopping the reactor, from inside any callback; no reactor borrow is held
//! while user code runs.
//!
//! One iteration of the loop (spec R-12): run the calls queued from other threads; admit
//! the timers scheduled since the last iteration; run every timer due now; start the
//! shutdown if `stop()` was called; poll I/O, sleeping no longer than the earliest timer,
//! and dispatch what is ready.
//!
//! ```
//! use std::time::Duration;
//! use twistctl::reactor::Reactor;
//!
//! let reactor = Reactor::new()?;
//! let r = reactor.clone();
//! reactor.call_later(Duration::from_millis(10), move || {
//!     println!("ten milliseconds later");
//!     r.stop()
//! });
//! reactor.run()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod address;
pub mod defer;
pub mod endpoints;
pub mod failure;
pub mod io;
pub mod looping;
pub mod protocol;
pub mod reconnect;
pub mod signal;
pub mod stream;
pub mod tcp;
pub mod testing;
pub mod thread;
pub mod time;
pub mod tls;
pub mod triggers;
pub mod unix;

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

pub use address::{Address, UnixAddress};
pub use defer::{
    AllFailedError, AlreadyCalledError, CancelledError, ChainingError, Deferred,
    DeferredListOptions, FirstError, Outcome, Step, TimeoutError, WeakDeferred, deferred_list,
    first_success, gather_results, maybe_deferred,
};
pub use failure::{Failure, MessageError};
pub use io::{IoHandler, IoKey, Readiness};
pub use looping::{LoopStep, LoopingCall, LoopingCallError, WeakLoopingCall, defer_later};
pub use protocol::{
    CloseReason, ConnectError, Factory, PeerCredentials, Producer, Protocol, ProtocolResult,
    Transport, TransportRef,
};
pub use signal::Signal;
pub use thread::ReactorHandle;
pub use time::{
    CallResult, Clock, DelayedCall, DelayedCallError, FakeClock, ManualClock, MonotonicClock,
    Scheduler,
};
pub use triggers::{Phase, SystemEvent, TriggerHandle, TriggerOutput, UnknownTrigger};

use io::{IoRegistry, SIGNAL_TOKEN, WAKER_TOKEN};

/// The reactor's connections: what the I/O registry keeps as their own type (see
/// [`io::Handler`]).
pub(crate) type StreamConnection = stream::StreamTransport;
use signal::SignalSource;
use thread::{ThreadQueue, WorkerPool};
use time::{TimerQueue, log_result};
use triggers::Triggers;

/// Reports a call the reactor (or a protocol built on it) had to swallow because it
/// re-entered something that was busy: an event for a protocol whose callback is
/// running, a channel value for a receiver that is running. The design says these
/// cannot happen, so one that does is a bug: in debug builds (the tests) it panics so
/// the bug shows; in release builds it is logged and the call is dropped.
#[track_caller]
pub fn swallowed_call(what: std::fmt::Arguments<'_>) {
    if cfg!(debug_assertions) {
        panic!("swallowed a re-entrant call: {what}");
    }
    log::error!("{what}");
}

/// Errors from reactor operations used at the wrong moment, or from the poll itself.
#[derive(Debug, thiserror::Error)]
pub enum ReactorError {
    /// `run()` while the reactor is running (R-06).
    #[error("the reactor is already running")]
    AlreadyRunning,
    /// `run()` after a completed `stop()` (R-07), or after a `crash()` that interrupted
    /// the shutdown `stop()` began.
    #[error("the reactor cannot be restarted")]
    NotRestartable,
    /// `stop()` when not running, or when a stop was already requested (R-08).
    #[error("the reactor is not running")]
    NotRunning,
    /// The poll or another operation the loop cannot do without failed.
    #[error("reactor I/O failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Why `run()` returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// `stop()` was called.
    Stopped,
    /// A handled signal stopped the reactor (see [`Reactor::handle_signals`]).
    Signal(Signal),
    /// `crash()` was called: no shutdown event fired.
    Crashed,
}

/// Where the reactor is in its life: the one state every run-time question is
/// answered from (is it running, may it stop, must the loop end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunState {
    /// Made, or crashed out of: `run()` may be called.
    Idle,
    /// Inside `run()`.
    Running(Run),
    /// `run()` returned after a shutdown (or after a crash that followed `stop()`).
    Ended,
}

/// The state of a `run()` under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    /// What [`Reactor::running`] says: true from startup's `During` phase until
    /// shutdown's `Before` phase has completed (R-02, R-10).
    running: bool,
    /// How far the shutdown has got.
    shutdown: Shutdown,
    /// `crash()` was called: the loop ends at the end of this iteration.
    crashing: bool,
}

/// How far a run's shutdown has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shutdown {
    /// `stop()` has not been called.
    NotRequested,
    /// `stop()` was called; the shutdown starts in the next iteration (R-09).
    Requested,
    /// The shutdown triggers are running.
    Begun,
    /// The shutdown is complete: the loop ends.
    Complete,
}

struct Inner {
    timers: TimerQueue,
    poll: RefCell<mio::Poll>,
    registry: mio::Registry,
    io: RefCell<IoRegistry<StreamConnection>>,
    thread_queue: Arc<ThreadQueue>,
    /// Continuations the reactor itself schedules for the next iteration.
    soon: RefCell<VecDeque<Box<dyn FnOnce()>>>,
    /// The queue `soon` was emptied into last time, kept empty with its memory, so that
    /// an iteration's continuations do not grow a new queue from nothing each time.
    soon_spare: RefCell<VecDeque<Box<dyn FnOnce()>>>,
    /// Registry entries whose source is known to be ready without asking the poll (a
    /// connect that completed when it started): told so in the next poll's I/O phase,
    /// where the poll's own event would have told them.
    known_ready: RefCell<Vec<IoKey>>,
    /// Write buffers given back by drained connections, for the next one that writes.
    spare_buffers: RefCell<SpareBuffers>,
    /// The buffers connections read into (see [`Reactor::take_read_buffer`]).
    read_buffers: RefCell<Vec<Box<[u8]>>>,
    /// TCP's own pools (sockets of connects refused at once, for the next connect).
    tcp: tcp::TcpPools,
    triggers: Rc<Triggers>,
    state: Cell<RunState>,
    stop_reason: Cell<StopReason>,
    wants_signals: Cell<bool>,
    signals: RefCell<Option<SignalSource>>,
    workers: RefCell<Option<WorkerPool>>,
    /// Deferreds waiting for a worker's result, by job id.
    thread_results: RefCell<HashMap<u64, Box<dyn std::any::Any>>>,
    next_job: Cell<u64>,
    /// Receivers of channels, by channel id (see [`Reactor::channel`]).
    channels: RefCell<HashMap<u64, Box<dyn std::any::Any>>>,
    /// How many ports and connectors use each factory, by the factory's address (P-01).
    factory_users: RefCell<HashMap<usize, usize, BuildHasherDefault<AddressHasher>>>,
}

/// Most bytes of spare write buffers the reactor keeps at once: enough for fifty
/// connections with a megabyte in flight each, small enough that a long-running server
/// does not sit on a burst's memory.
const SPARE_BUFFER_BYTES: usize = 64 * 1024 * 1024;

/// Spare buffers larger than this are freed rather than kept.
const SPARE_BUFFER_MAX: usize = 4 * 1024 * 1024;

/// Emptied write buffers, shared by every connection of the reactor.
///
/// A connection whose buffer drains gives it back here instead of freeing it, and a
/// connection that starts writing takes one from here. Freeing a large buffer and
/// growing a new one for the next burst costs the kernel a page fault for every 4 KiB
/// touched (glibc returns large blocks to the system), which halved bulk throughput
/// over 50 connections. Keeping the spares here instead of in each connection bounds
/// the memory they hold for the whole reactor, and leaves idle connections with no
/// buffer at all.
#[derive(Default)]
struct SpareBuffers {
    buffers: Vec<Vec<u8>>,
    bytes: usize,
}

/// A handle that does not keep the reactor alive: what long-lived objects owned by the
/// reactor (transports, ports) hold, so that no reference cycle forms.
#[derive(Clone)]
pub(crate) struct WeakReactor(std::rc::Weak<Inner>);

impl WeakReactor {
    pub(crate) fn upgrade(&self) -> Option<Reactor> {
        self.0.upgrade().map(|inner| Reactor { inner })
    }
}

/// A handle on a reactor. Cheap to clone; every clone is the same reactor. Not `Send`:
/// other threads use a [`ReactorHandle`].
#[derive(Clone)]
pub struct Reactor {
    inner: Rc<Inner>,
}

impl std::fmt::Debug for Reactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reactor")
            .field("state", &self.inner.state.get())
            .finish()
    }
}

type ChannelReceiver<T> = Rc<RefCell<dyn FnMut(&Reactor, T)>>;

/// The sending end of a [`Reactor::channel`]: `Send` and cheap to clone.
pub struct Sender<T: Send + 'static> {
    id: u64,
    handle: ReactorHandle,
    _values: std::marker::PhantomData<fn(T)>,
}

impl<T: Send + 'static> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Sender {
            id: self.id,
            handle: self.handle.clone(),
            _values: std::marker::PhantomData,
        }
    }
}

impl<T: Send + 'static> std::fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender").field("channel", &self.id).finish()
    }
}

impl<T: Send + 'static> Sender<T> {
    /// Hands `value` to the channel's receiver on the reactor thread and wakes the
    /// reactor. Values sent after the channel closed are dropped there.
    pub fn send(&self, value: T) {
        let id = self.id;
        self.handle
            .call_from_thread(move |reactor: &Reactor| reactor.deliver(id, value));
    }
}

/// Poll at most this long in one go: Twisted's clamp (T-16), far beyond any real timer.
pub const MAX_POLL_TIMEOUT: Duration = Duration::from_secs(2_147_483);

/// How long the poll may sleep when nothing else is waiting (T-16), with the earliest
/// timer due at `next_timer` and the clock at `now`: no timeout without timers; zero
/// for an overdue timer; else the time left rounded up to the next millisecond
/// (rounding down would make the loop spin on a timer a fraction of a millisecond
/// away), at most [`MAX_POLL_TIMEOUT`].
pub fn poll_timeout_for(next_timer: Option<Duration>, now: Duration) -> Option<Duration> {
    let wait = next_timer?.saturating_sub(now);
    let millis = wait.as_nanos().div_ceil(1_000_000);
    let wait = Duration::from_millis(u64::try_from(millis).unwrap_or(u64::MAX));
    Some(wait.min(MAX_POLL_TIMEOUT))
}

impl Reactor {
    /// A stopped reactor on the monotonic clock (R-01).
    pub fn new() -> Result<Reactor, ReactorError> {
        Reactor::with_clock(Rc::new(MonotonicClock::new()))
    }

    /// A stopped reactor reading time from `clock` (T-17).
    pub fn with_clock(clock: Rc<dyn Clock>) -> Result<Reactor, ReactorError> {
        let poll = mio::Poll::new()?;
        let registry = poll.registry().try_clone()?;
        let waker = mio::Waker::new(poll.registry(), WAKER_TOKEN)?;
        Ok(Reactor {
            inner: Rc::new(Inner {
                timers: TimerQueue::new(clock),
                poll: RefCell::new(poll),
                registry,
                io: RefCell::new(IoRegistry::default()),
                thread_queue: Arc::new(ThreadQueue::new(waker)),
                soon: RefCell::new(VecDeque::new()),
                soon_spare: RefCell::new(VecDeque::new()),
                known_ready: RefCell::new(Vec::new()),
                spare_buffers: RefCell::new(SpareBuffers::default()),
                read_buffers: RefCell::new(Vec::new()),
                tcp: tcp::TcpPools::default(),
                triggers: Rc::new(Triggers::default()),
                state: Cell::new(RunState::Idle),
                stop_reason: Cell::new(StopReason::Stopped),
                wants_signals: Cell::new(false),
                signals: RefCell::new(None),
                workers: RefCell::new(None),
                thread_results: RefCell::new(HashMap::new()),
                next_job: Cell::new(0),
                channels: RefCell::new(HashMap::new()),
                factory_users: RefCell::new(HashMap::default()),
            }),
        })
    }

    /// The reactor's monotonic time, from its clock's origin (T-17).
    pub fn seconds(&self) -> Duration {
        self.inner.timers.now()
    }

    /// True from the `During` phase of startup until shutdown's `Before` phase has
    /// completed (R-02, R-10).
    pub fn running(&self) -> bool {
        matches!(self.inner.state.get(), RunState::Running(run) if run.running)
    }

    /// Schedules `f` to run `delay` from now (T-01). It never runs inside this call, even
    /// with a zero delay (T-02); calls due at the same time run in the order they were
    /// scheduled (T-03). An `Err` returned by `f` is logged (T-15).
    pub fn call_later<F, R>(&self, delay: Duration, f: F) -> DelayedCall
    where
        F: FnOnce() -> R + 'static,
        R: CallResult,
    {
        self.inner
            .timers
            .schedule_fn(delay, move || log_result("a timer callback", f()))
    }

    /// Calls neither run nor cancelled, in the order they will run (T-12).
    pub fn delayed_calls(&self) -> Vec<DelayedCall> {
        self.inner.timers.pending()
    }

    /// Runs `f` once the reactor is running: at once if it is (R-04, returning `None`),
    /// else as an `After Startup` trigger whose handle is returned (R-03).
    pub fn call_when_running<F, R>(&self, f: F) -> Option<TriggerHandle>
    where
        F: FnOnce() -> R + 'static,
        R: CallResult,
    {
        if self.running() {
            if let Err(failure) = f().into_call_result() {
                log::error!("Unhandled error in a call_when_running callable: {failure}");
            }
            None
        } else {
            Some(
                self.add_system_event_trigger(Phase::After, SystemEvent::Startup, move || {
                    f().into_call_result()
                }),
            )
        }
    }

    /// Registers `f` to run in `phase` of `event` (R-18). A `Before` trigger may return
    /// a `Deferred<()>` to hold the event back until it fires (R-20).
    pub fn add_system_event_trigger<F, R>(
        &self,
        phase: Phase,
        event: SystemEvent,
        f: F,
    ) -> TriggerHandle
    where
        F: FnOnce() -> R + 'static,
        R: TriggerOutput,
    {
        self.inner
            .triggers
            .add(phase, event, Box::new(move || f().into_trigger_output()))
    }

    /// Unregisters a trigger that has not run yet (R-21).
    pub fn remove_system_event_trigger(&self, handle: TriggerHandle) -> Result<(), UnknownTrigger> {
        self.inner.triggers.remove(handle)
    }

    /// A `Send` handle for other threads (R-14).
    pub fn handle(&self) -> ReactorHandle {
        ReactorHandle::new(self.inner.thread_queue.clone())
    }

    /// Queues `f` like [`ReactorHandle::call_from_thread`]; usable from the reactor
    /// thread too (it then runs in the next iteration).
    pub fn call_from_thread<F, R>(&self, f: F)
    where
        F: FnOnce(&Reactor) -> R + Send + 'static,
        R: CallResult,
    {
        self.handle().call_from_thread(f)
    }

    /// Runs blocking `f` on a small pool of worker threads and fires the returned Deferred
    /// with its result on the reactor thread. A panic in `f` becomes a failure.
    pub fn defer_to_thread<T, E, F>(&self, f: F) -> Deferred<T>
    where
        T: Send + 'static,
        E: Into<Failure> + Send + 'static,
        F: FnOnce() -> Result<T, E> + Send + 'static,
    {
        let deferred = Deferred::new();
        let id = self.inner.next_job.get();
        self.inner.next_job.set(id + 1);
        if let Err(error) = self.ensure_workers() {
            let _ = deferred.errback(Failure::new(error));
            return deferred;
        }
        self.inner
            .thread_results
            .borrow_mut()
            .insert(id, Box::new(deferred.clone()));
        let handle = self.handle();
        let job = Box::new(move || {
            let outcome = thread::run_caught(f);
            handle.call_from_thread(move |reactor: &Reactor| {
                let waiting = reactor.inner.thread_results.borrow_mut().remove(&id);
                let Some(waiting) = waiting.and_then(|d| d.downcast::<Deferred<T>>().ok()) else {
                    return;
                };
                let result = match outcome {
                    Ok(Ok(value)) => waiting.callback(value),
                    Ok(Err(error)) => waiting.errback(error.into()),
                    Err(panic) => waiting.errback(Failure::msg(format!(
                        "a job on a worker thread panicked: {panic}"
                    ))),
                };
                // Cancelled meanwhile: the result has nowhere to go (D-19).
                let _ = result;
            });
        });
        let submitted = self
            .inner
            .workers
            .borrow()
            .as_ref()
            .is_some_and(|pool| pool.submit(job));
        if !submitted {
            self.inner.thread_results.borrow_mut().remove(&id);
            let _ = deferred.errback(Failure::msg("the worker threads have stopped"));
        }
        deferred
    }

    /// A channel from any thread into the reactor: values sent on the returned
    /// [`Sender`] reach `receiver` on the reactor thread, in order, through the
    /// call-from-thread queue (calloop's channel). For a console thread handing over
    /// typed lines, a resolver handing over answers. The receiver lives until
    /// [`Reactor::close_channel`] or the reactor's end.
    pub fn channel<T, F>(&self, receiver: F) -> Sender<T>
    where
        T: Send + 'static,
        F: FnMut(&Reactor, T) + 'static,
    {
        let id = self.inner.next_job.get();
        self.inner.next_job.set(id + 1);
        let receiver: ChannelReceiver<T> = Rc::new(RefCell::new(receiver));
        self.inner
            .channels
            .borrow_mut()
            .insert(id, Box::new(receiver));
        Sender {
            id,
            handle: self.handle(),
            _values: std::marker::PhantomData,
        }
    }

    /// Drops the receiver of `sender`'s channel; later values are discarded.
    pub fn close_channel<T: Send + 'static>(&self, sender: &Sender<T>) {
        let removed = self.inner.channels.borrow_mut().remove(&sender.id);
        drop(removed);
    }

    fn deliver<T: 'static>(&self, id: u64, value: T) {
        let receiver = self
            .inner
            .channels
            .borrow()
            .get(&id)
            .and_then(|r| r.downcast_ref::<ChannelReceiver<T>>())
            .cloned();
        let Some(receiver) = receiver else {
            return; // closed
        };
        // A receiver that sends to its own channel re-enters only through the queue,
        // so a busy receiver here is a bug.
        match receiver.try_borrow_mut() {
            Ok(mut receiver) => (*receiver)(self, value),
            Err(_) => swallowed_call(format_args!(
                "the receiver of channel {id} is running; value dropped"
            )),
        }
    }

    fn ensure_workers(&self) -> std::io::Result<()> {
        let mut workers = self.inner.workers.borrow_mut();
        if workers.is_none() {
            *workers = Some(WorkerPool::start()?);
        }
        Ok(())
    }

    /// Opts in to turning SIGINT and SIGTERM into an orderly stop; `run()` then reports
    /// the signal in its [`StopReason`] (R-23). The handlers are installed in the
    /// `During Startup` phase and removed when `run()` returns; from then on the process
    /// ignores both signals (the signal library cannot restore the default action), which
    /// suits a program that exits after `run()` or waits for a child it started.
    pub fn handle_signals(&self) {
        self.inner.wants_signals.set(true);
    }

    /// Requests shutdown and returns at once (R-09). Fails when the reactor is not
    /// running or a stop was already requested (R-08).
    pub fn stop(&self) -> Result<(), ReactorError> {
        match self.inner.state.get() {
            RunState::Running(run) if run.shutdown == Shutdown::NotRequested => {
                self.update_run(|run| run.shutdown = Shutdown::Requested);
                Ok(())
            }
            _ => Err(ReactorError::NotRunning),
        }
    }

    /// Leaves the loop at the end of the current iteration without firing shutdown or
    /// disconnecting anything; `run()` may be called again afterwards (R-13), unless
    /// `stop()` had been called: its shutdown cannot be started twice (as in Twisted).
    pub fn crash(&self) {
        self.update_run(|run| {
            // A shutdown that is complete ends the loop anyway, as a shutdown.
            if run.shutdown != Shutdown::Complete {
                run.crashing = true;
            }
        });
    }

    /// Changes the state of the run under way; nothing happens outside `run()`.
    fn update_run(&self, change: impl FnOnce(&mut Run)) {
        if let RunState::Running(mut run) = self.inner.state.get() {
            change(&mut run);
            self.inner.state.set(RunState::Running(run));
        }
    }

    /// The state of the run under way.
    fn current_run(&self) -> Option<Run> {
        match self.inner.state.get() {
            RunState::Running(run) => Some(run),
            RunState::Idle | RunState::Ended => None,
        }
    }

    /// The shutdown is complete: the loop must end before anything else runs.
    fn shutdown_complete(&self) -> bool {
        self.current_run()
            .is_some_and(|run| run.shutdown == Shutdown::Complete)
    }

    /// `crash()` was called during this run.
    fn crashing(&self) -> bool {
        self.current_run().is_some_and(|run| run.crashing)
    }

    /// Registers an I/O source; `handler` is called when it is ready. For transports and
    /// ports; protocols do not need this.
    pub fn register_io(
        &self,
        source: &mut impl mio::event::Source,
        interest: mio::Interest,
        handler: Rc<dyn IoHandler>,
    ) -> std::io::Result<IoKey> {
        self.register_handler(source, interest, io::Handler::Dyn(handler))
    }

    /// [`Reactor::register_io`] for any kind of registry entry (connections are
    /// registered as their own type, see [`io::Handler`]).
    pub(crate) fn register_handler(
        &self,
        source: &mut impl mio::event::Source,
        interest: mio::Interest,
        handler: io::Handler<StreamConnection>,
    ) -> std::io::Result<IoKey> {
        let key = self.inner.io.borrow_mut().insert(handler)?;
        if let Err(error) = self.inner.registry.register(source, key.token(), interest) {
            self.inner.io.borrow_mut().remove(key);
            return Err(error);
        }
        Ok(key)
    }

    /// Changes the interest of a registered source.
    pub fn reregister_io(
        &self,
        source: &mut impl mio::event::Source,
        key: IoKey,
        interest: mio::Interest,
    ) -> std::io::Result<()> {
        self.inner
            .registry
            .reregister(source, key.token(), interest)
    }

    /// Puts `source` in the poll under `key`, an entry made by [`Reactor::track_io`]
    /// (whose handler may since have been replaced).
    pub(crate) fn poll_io_under(
        &self,
        source: &mut impl mio::event::Source,
        key: IoKey,
        interest: mio::Interest,
    ) -> std::io::Result<()> {
        self.inner.registry.register(source, key.token(), interest)
    }

    /// Tells the handler of `key` (an entry made by [`Reactor::track_io`]) in the next
    /// poll's I/O phase that its source is writable, after the poll's own events: for a
    /// source whose readiness is already known, so the poll need not be asked.
    pub(crate) fn ready_next_poll(&self, key: IoKey) {
        self.inner.known_ready.borrow_mut().push(key);
    }

    /// Keeps `handler` in the registry without a source in the poll: it is told of the
    /// reactor's shutdown like every registered source, and never of readiness. For
    /// something waiting on a timer that must still end at shutdown (a UNIX connect
    /// waiting for room in a listener's queue). [`Reactor::forget_io`] removes it.
    pub(crate) fn track_io(&self, handler: Rc<dyn IoHandler>) -> std::io::Result<IoKey> {
        self.inner.io.borrow_mut().insert(io::Handler::Dyn(handler))
    }

    /// [`Reactor::track_io`] for any kind of registry entry: an accepted connection
    /// holds its key before it is added to the poll (see `StreamTransport::start`).
    pub(crate) fn track_handler(
        &self,
        handler: io::Handler<StreamConnection>,
    ) -> std::io::Result<IoKey> {
        self.inner.io.borrow_mut().insert(handler)
    }

    /// Frees the slot of a source that is about to be closed, without telling the poll:
    /// closing the descriptor removes it from epoll anyway, and that saves a syscall
    /// per short-lived socket (a port scan closes thousands). The caller must close
    /// `source` right after, and must not have duplicated its descriptor.
    pub fn forget_io(&self, key: IoKey) {
        self.inner.io.borrow_mut().remove(key);
    }

    /// Removes a source from the poll and frees its slot.
    pub fn deregister_io(
        &self,
        source: &mut impl mio::event::Source,
        key: IoKey,
    ) -> std::io::Result<()> {
        let removed = self.inner.io.borrow_mut().remove(key);
        if removed {
            self.inner.registry.deregister(source)
        } else {
            Ok(())
        }
    }

    /// Hands the source behind `key` to another handler (a connector's attempt becoming
    /// a connection keeps its registration). False if `key` is stale.
    pub fn replace_io_handler(&self, key: IoKey, handler: Rc<dyn IoHandler>) -> bool {
        self.replace_handler(key, io::Handler::Dyn(handler))
    }

    /// [`Reactor::replace_io_handler`] for any kind of registry entry.
    pub(crate) fn replace_handler(
        &self,
        key: IoKey,
        handler: io::Handler<StreamConnection>,
    ) -> bool {
        self.inner.io.borrow_mut().replace(key, handler)
    }

    /// The connection registered under `key`, if it is still registered.
    pub(crate) fn connection(&self, key: IoKey) -> Option<Rc<StreamConnection>> {
        self.inner.io.borrow().connection(key)
    }

    pub(crate) fn downgrade(&self) -> WeakReactor {
        WeakReactor(Rc::downgrade(&self.inner))
    }

    /// Runs `f` at the start of the next iteration, before anything else; the poll in
    /// between does not sleep. For the reactor's own deferred work (flushes, close
    /// notifications), which must never run inside the call that caused it (X-06).
    pub(crate) fn call_soon(&self, f: Box<dyn FnOnce()>) {
        self.inner.soon.borrow_mut().push_back(f);
    }

    /// An empty write buffer: a spare one if there is, else a new one that has not
    /// allocated yet.
    pub(crate) fn take_buffer(&self) -> Vec<u8> {
        let mut spare = self.inner.spare_buffers.borrow_mut();
        match spare.buffers.pop() {
            Some(buffer) => {
                spare.bytes -= buffer.capacity();
                buffer
            }
            None => Vec::new(),
        }
    }

    /// A buffer of `len` bytes to read into: one the loop keeps, unless none of that
    /// size is free. [`Reactor::give_read_buffer`] returns it. Reads happen one at a
    /// time (a TLS layer decrypting inside a socket read is the one nesting), so a few
    /// buffers, zeroed once, serve every connection: a fresh 64 KiB array for each read
    /// cost more to zero than a short message costs to read.
    pub(crate) fn take_read_buffer(&self, len: usize) -> Box<[u8]> {
        let mut spares = self.inner.read_buffers.borrow_mut();
        match spares.iter().position(|buffer| buffer.len() == len) {
            Some(at) => spares.swap_remove(at),
            None => vec![0; len].into_boxed_slice(),
        }
    }

    /// Keeps `buffer` for a later [`Reactor::take_read_buffer`].
    pub(crate) fn give_read_buffer(&self, buffer: Box<[u8]>) {
        let mut spares = self.inner.read_buffers.borrow_mut();
        // The socket read's buffer and the TLS layer's: more would only be nesting
        // that does not happen.
        if spares.len() < 2 {
            spares.push(buffer);
        }
    }

    /// Takes back a write buffer whose contents are no longer needed, keeping its memory
    /// for the next [`Reactor::take_buffer`] while the spares stay within their bound.
    pub(crate) fn give_buffer(&self, mut buffer: Vec<u8>) {
        let capacity = buffer.capacity();
        if capacity == 0 || capacity > SPARE_BUFFER_MAX {
            return;
        }
        let mut spare = self.inner.spare_buffers.borrow_mut();
        if spare.bytes + capacity > SPARE_BUFFER_BYTES {
            return;
        }
        buffer.clear();
        spare.bytes += capacity;
        spare.buffers.push(buffer);
    }

    /// Counts one more user of `factory`; true when it is the first (P-01: call
    /// `start_factory` then).
    pub(crate) fn factory_user_added(&self, factory_address: usize) -> bool {
        let mut users = self.inner.factory_users.borrow_mut();
        let count = users.entry(factory_address).or_insert(0);
        *count += 1;
        *count == 1
    }

    /// Counts one user less; true when it was the last (P-01: call `stop_factory` then).
    /// A factory with no users stays at zero.
    pub(crate) fn factory_user_removed(&self, factory_address: usize) -> bool {
        let mut users = self.inner.factory_users.borrow_mut();
        match users.get_mut(&factory_address) {
            Some(count) if *count > 1 => {
                *count -= 1;
                false
            }
            Some(_) => {
                users.remove(&factory_address);
                true
            }
            None => false,
        }
    }

    /// How many I/O sources are registered.
    pub fn io_source_count(&self) -> usize {
        self.inner.io.borrow().len()
    }

    /// Runs the loop until `stop()` (or a handled signal) completes the shutdown, or
    /// `crash()` (R-01, R-05).
    pub fn run(&self) -> Result<StopReason, ReactorError> {
        match self.inner.state.get() {
            RunState::Idle => {}
            RunState::Running(_) => return Err(ReactorError::AlreadyRunning),
            RunState::Ended => return Err(ReactorError::NotRestartable),
        }
        self.inner.state.set(RunState::Running(Run {
            running: false,
            shutdown: Shutdown::NotRequested,
            crashing: false,
        }));
        self.start_up();
        let outcome = self.run_loop();
        if let Some(signals) = self.inner.signals.borrow_mut().take() {
            signals.uninstall(&self.inner.registry);
        }
        if let Some(run) = self.current_run()
            && run.crashing
        {
            // Once stop() was called the shutdown has (partly) happened and cannot be
            // run again, so, as in Twisted, a crash after stop() leaves the reactor
            // unrestartable instead of restarting it with its shutdown state spent.
            let next = if run.shutdown == Shutdown::NotRequested {
                RunState::Idle
            } else {
                RunState::Ended
            };
            self.inner.state.set(next);
            outcome?;
            return Ok(StopReason::Crashed);
        }
        self.inner.state.set(RunState::Ended);
        outcome?;
        Ok(self.inner.stop_reason.get())
    }

    fn start_up(&self) {
        let reactor = self.clone();
        let between = Box::new(move || {
            reactor.update_run(|run| run.running = true);
            if reactor.inner.wants_signals.get() {
                match SignalSource::install(&reactor.inner.registry) {
                    Ok(source) => *reactor.inner.signals.borrow_mut() = Some(source),
                    Err(error) => log::error!("could not install signal handlers: {error}"),
                }
            }
        });
        triggers::fire(
            &self.inner.triggers,
            SystemEvent::Startup,
            self.soon_queue(),
            between,
            Box::new(|| {}),
        );
    }

    fn soon_queue(&self) -> triggers::Soon {
        let reactor = self.clone();
        Rc::new(move |f| reactor.inner.soon.borrow_mut().push_back(f))
    }

    fn run_loop(&self) -> Result<(), ReactorError> {
        let mut events = mio::Events::with_capacity(1024);
        loop {
            self.run_queued_calls();
            // The shutdown finished in a continuation: its after triggers are the last
            // thing that runs (R-10), so no timer of this iteration may follow them.
            if self.shutdown_complete() {
                return Ok(());
            }
            self.inner.timers.admit();
            self.inner.timers.run_due();
            if self
                .current_run()
                .is_some_and(|run| run.shutdown == Shutdown::Requested)
            {
                self.update_run(|run| run.shutdown = Shutdown::Begun);
                self.shut_down();
            }
            if self.shutdown_complete() || self.crashing() {
                return Ok(());
            }
            self.poll_io(&mut events)?;
            if self.crashing() {
                return Ok(());
            }
        }
    }

    /// R-12 step 1: the calls queued when the iteration began, FIFO (R-15).
    fn run_queued_calls(&self) {
        let spare = std::mem::take(&mut *self.inner.soon_spare.borrow_mut());
        let mut soon = std::mem::replace(&mut *self.inner.soon.borrow_mut(), spare);
        for f in soon.drain(..) {
            if self.shutdown_complete() {
                return;
            }
            f();
        }
        *self.inner.soon_spare.borrow_mut() = soon;
        if self.shutdown_complete() {
            return;
        }
        for call in self.inner.thread_queue.take_all() {
            call(self);
        }
    }

    fn shut_down(&self) {
        let reactor = self.clone();
        let between = Box::new(move || {
            reactor.update_run(|run| run.running = false);
            // Every connection and port ends with ConnectionLost (R-10, P-28).
            let handlers = reactor.inner.io.borrow().handlers();
            for handler in handlers {
                handler.shutdown(&reactor);
            }
        });
        let reactor = self.clone();
        let done = Box::new(move || {
            reactor.update_run(|run| {
                run.shutdown = Shutdown::Complete;
                // Complete wins over a crash asked for meanwhile: the run ended as a
                // shutdown (it is not restartable, R-07).
                run.crashing = false;
            });
        });
        triggers::fire(
            &self.inner.triggers,
            SystemEvent::Shutdown,
            self.soon_queue(),
            between,
            done,
        );
    }

    /// The poll timeout (T-16): none without timers, zero when work is already waiting,
    /// else the time to the earliest timer rounded up to the next millisecond (rounding
    /// down would spin on a timer a fraction of a millisecond away).
    fn poll_timeout(&self) -> Option<Duration> {
        if !self.inner.soon.borrow().is_empty()
            || !self.inner.thread_queue.is_empty()
            || !self.inner.known_ready.borrow().is_empty()
        {
            return Some(Duration::ZERO);
        }
        poll_timeout_for(self.inner.timers.next_time(), self.seconds())
    }

    fn poll_io(&self, events: &mut mio::Events) -> Result<(), ReactorError> {
        let timeout = self.poll_timeout();
        let polled = self.inner.poll.borrow_mut().poll(events, timeout);
        match polled {
            Ok(()) => {}
            // A signal arrived: the next iteration recomputes the timeout.
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => return Ok(()),
            Err(error) => return Err(ReactorError::Io(error)),
        }
        for event in events.iter() {
            let (token, readiness) = io::readiness(event);
            match token {
                WAKER_TOKEN => {}
                SIGNAL_TOKEN => self.on_signals(),
                token => {
                    let handler = self.inner.io.borrow().get(token);
                    if let Some(handler) = handler {
                        handler.ready(self, readiness);
                    }
                }
            }
        }
        let mut known = std::mem::take(&mut *self.inner.known_ready.borrow_mut());
        for key in known.drain(..) {
            let handler = self.inner.io.borrow().get(key.token());
            if let Some(handler) = handler {
                let readiness = io::Readiness {
                    writable: true,
                    ..io::Readiness::default()
                };
                handler.ready(self, readiness);
            }
        }
        // Kept for the next connects known to have succeeded (a watch makes one a tick),
        // unless a handler above queued one already.
        let mut slot = self.inner.known_ready.borrow_mut();
        if slot.is_empty() {
            *slot = known;
        }
        Ok(())
    }

    fn on_signals(&self) {
        let arrived = match self.inner.signals.borrow_mut().as_mut() {
            Some(source) => source.drain(),
            None => return,
        };
        for signal in arrived {
            // A second signal while stopping is ignored (R-23).
            if self
                .current_run()
                .is_some_and(|run| run.shutdown == Shutdown::NotRequested)
            {
                log::info!("received {signal:?}, stopping");
                self.inner.stop_reason.set(StopReason::Signal(signal));
                let _ = self.stop();
            }
        }
    }
}

/// Hashes the address of a factory, the key of the reactor's count of factory users:
/// one multiplication instead of SipHash, on every connect and close. The keys are the
/// program's own pointers, nothing a peer chooses.
#[derive(Default)]
struct AddressHasher(u64);

impl Hasher for AddressHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*byte)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_usize(&mut self, n: usize) {
        // Fibonacci hashing: the product's top bits are the well-mixed ones, and the
        // table picks its bucket from the low bits of the hash, so the bytes are
        // reversed (an allocation's alignment leaves the address's low bits at zero).
        self.0 = (n as u64 ^ self.0)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .swap_bytes();
    }
}

impl Scheduler for Reactor {
    fn seconds(&self) -> Duration {
        Reactor::seconds(self)
    }

    fn schedule(&self, delay: Duration, f: Box<dyn FnOnce()>) -> DelayedCall {
        self.inner.timers.schedule(delay, f)
    }
}

#[cfg(test)]
mod poll_timeout_tests {
    use super::*;

    const NOW: Duration = Duration::from_secs(100);

    #[test]
    fn t16_no_timer_means_no_timeout() {
        assert_eq!(poll_timeout_for(None, NOW), None);
    }

    #[test]
    fn t16_a_sub_millisecond_wait_rounds_up_to_one_millisecond() {
        for nanos in [1, 300_000, 999_999] {
            let next = NOW + Duration::from_nanos(nanos);
            assert_eq!(
                poll_timeout_for(Some(next), NOW),
                Some(Duration::from_millis(1)),
                "{nanos} ns"
            );
        }
        let next = NOW + Duration::from_micros(1_500);
        assert_eq!(
            poll_timeout_for(Some(next), NOW),
            Some(Duration::from_millis(2))
        );
        assert_eq!(
            poll_timeout_for(Some(NOW + Duration::from_millis(7)), NOW),
            Some(Duration::from_millis(7))
        );
    }

    #[test]
    fn t16_a_due_or_overdue_timer_means_no_sleep() {
        assert_eq!(poll_timeout_for(Some(NOW), NOW), Some(Duration::ZERO));
        let overdue = NOW - Duration::from_secs(3);
        assert_eq!(poll_timeout_for(Some(overdue), NOW), Some(Duration::ZERO));
    }

    #[test]
    fn t16_huge_delays_are_clamped() {
        assert_eq!(
            poll_timeout_for(Some(Duration::MAX), NOW),
            Some(MAX_POLL_TIMEOUT)
        );
        let just_over = NOW + MAX_POLL_TIMEOUT + Duration::from_millis(1);
        assert_eq!(
            poll_timeout_for(Some(just_over), NOW),
            Some(MAX_POLL_TIMEOUT)
        );
        let just_under = NOW + MAX_POLL_TIMEOUT - Duration::from_millis(1);
        assert_eq!(
            poll_timeout_for(Some(just_under), NOW),
            Some(MAX_POLL_TIMEOUT - Duration::from_millis(1))
        );
    }

    #[test]
    fn t16_the_reactor_polls_with_zero_while_thread_calls_wait() {
        let reactor = Reactor::new().unwrap();
        reactor.call_later(Duration::from_secs(60), || {});
        let timeout = reactor.poll_timeout().expect("a timer is pending");
        assert!(timeout > Duration::from_secs(59) && timeout <= Duration::from_secs(60));
        reactor.handle().call_from_thread(|_: &Reactor| {});
        assert_eq!(reactor.poll_timeout(), Some(Duration::ZERO));
    }
}

#[cfg(test)]
mod spare_buffer_tests {
    use super::*;

    #[test]
    fn a_given_buffer_comes_back_empty_with_its_memory() {
        let reactor = Reactor::new().unwrap();
        let mut buffer = Vec::with_capacity(4096);
        buffer.extend_from_slice(b"stale bytes");
        let address = buffer.as_ptr();
        reactor.give_buffer(buffer);
        let again = reactor.take_buffer();
        assert!(again.is_empty());
        assert_eq!(again.as_ptr(), address);
        assert!(again.capacity() >= 4096);
        // The only spare is taken: the next one is new and unallocated.
        assert_eq!(reactor.take_buffer().capacity(), 0);
    }

    #[test]
    fn spares_stay_within_their_bounds() {
        let reactor = Reactor::new().unwrap();
        reactor.give_buffer(Vec::new());
        reactor.give_buffer(Vec::with_capacity(SPARE_BUFFER_MAX + 1));
        assert_eq!(reactor.take_buffer().capacity(), 0);
        let mut kept = 0;
        for _ in 0..(SPARE_BUFFER_BYTES / SPARE_BUFFER_MAX + 2) {
            reactor.give_buffer(Vec::with_capacity(SPARE_BUFFER_MAX));
        }
        while reactor.take_buffer().capacity() > 0 {
            kept += 1;
        }
        assert_eq!(kept, SPARE_BUFFER_BYTES / SPARE_BUFFER_MAX);
    }
}

#[cfg(test)]
mod address_hasher_tests {
    use super::*;

    /// Aligned addresses (the keys) still spread over the table's buckets, which are
    /// chosen by the low bits of the hash.
    #[test]
    fn aligned_addresses_spread_over_the_low_bits() {
        let low_bits: std::collections::HashSet<u64> = (0..64usize)
            .map(|i| {
                let mut hasher = AddressHasher::default();
                hasher.write_usize(0x5555_0000 + i * 16);
                hasher.finish() & 63
            })
            .collect();
        assert!(low_bits.len() >= 40, "{} buckets of 64", low_bits.len());
    }
}
