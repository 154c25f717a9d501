//! Time and timers: the [`Clock`], the timer queue behind `call_later`, [`DelayedCall`],
//! and [`FakeClock`], the test clock that drives the same timer code without sleeping
//! (Twisted's `task.Clock`).
//!
//! Times are integer nanoseconds since the clock's origin, so arithmetic on scheduled
//! times is exact (spec T-17, K-11).
//!
//! Cancelling is lazy: a cancelled call drops its callable at once (T-13) and leaves a
//! stale entry in the heap, which is skipped when it surfaces and purged in bulk once
//! more than 50 and more than half of the heap is stale (T-14). Equal times run in
//! scheduling order because every heap key carries a sequence number (T-03).
//!
//! A large batch of calls scheduled in one iteration (thousands of connection timeouts,
//! a burst of `call_later`) is not pushed into the heap: it is sorted once and kept
//! aside as a sorted run, popped from its end. Popping a heap of a million keys costs a
//! cache miss on nearly every level of the sift; popping a sorted run reads memory in
//! order. Firing takes the earlier of the heap's top and the run's end, so the order is
//! the same either way.

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use super::failure::Failure;

/// A source of monotonic time for the reactor and its timers.
pub trait Clock {
    /// Time elapsed since the clock's origin. Never goes backwards.
    fn now(&self) -> Duration;
}

/// The real clock: `std::time::Instant`, measured from when the clock was made.
#[derive(Debug, Clone, Copy)]
pub struct MonotonicClock {
    origin: Instant,
}

impl MonotonicClock {
    /// A clock whose origin is now.
    pub fn new() -> MonotonicClock {
        MonotonicClock {
            origin: Instant::now(),
        }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        MonotonicClock::new()
    }
}

impl Clock for MonotonicClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// A clock that moves only when told to. Shared by handle: clones see the same time.
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    now: Rc<Cell<Duration>>,
}

impl ManualClock {
    /// A clock at time zero.
    pub fn new() -> ManualClock {
        ManualClock::default()
    }

    /// Moves the clock forward by `by` (saturating at the largest representable time).
    pub fn advance(&self, by: Duration) {
        self.now.set(self.now.get().saturating_add(by));
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        self.now.get()
    }
}

/// The result of a callable that the reactor runs on your behalf (a timer, a
/// call-from-thread entry, a system event trigger).
///
/// Closures may return `()` or a `Result<(), E>`; an `Err` is logged and the reactor goes
/// on with the next call (spec R-17, T-15).
pub trait CallResult {
    /// Converts the callable's return value into the reactor's error type.
    fn into_call_result(self) -> Result<(), Failure>;
}

impl CallResult for () {
    fn into_call_result(self) -> Result<(), Failure> {
        Ok(())
    }
}

impl<E: std::error::Error + 'static> CallResult for Result<(), E> {
    fn into_call_result(self) -> Result<(), Failure> {
        self.map_err(Failure::new)
    }
}

/// Logs the error of a callable the reactor ran on someone's behalf; nobody else will see it.
pub(crate) fn log_result<R: CallResult>(what: &'static str, result: R) {
    if let Err(failure) = result.into_call_result() {
        log::error!("Unhandled error in {what}: {failure}");
    }
}

/// Anything that can schedule calls: the [`Reactor`](super::Reactor) and [`FakeClock`].
///
/// Deferred timeouts, `LoopingCall` and `defer_later` are written against this trait, so
/// they run the same on the real reactor and on the fake clock.
pub trait Scheduler {
    /// The scheduler's current time.
    fn seconds(&self) -> Duration;
    /// Schedules `f` to run `delay` from now (see [`Reactor::call_later`](super::Reactor::call_later)).
    fn schedule(&self, delay: Duration, f: Box<dyn FnOnce()>) -> DelayedCall;
}

/// Errors from [`DelayedCall`] operations on a call that is no longer pending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DelayedCallError {
    /// The call has already run, or is running now (T-08).
    #[error("the delayed call has already been called")]
    AlreadyCalled,
    /// The call was cancelled before (T-08).
    #[error("the delayed call has already been cancelled")]
    AlreadyCancelled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallState {
    Pending,
    Called,
    Cancelled,
}

/// A call's callable, behind a trait so that the call's bookkeeping and its closure share
/// one allocation: the closure's type is erased by unsizing the `Rc<CallInner<Slot<F>>>`.
trait Callable {
    /// Takes the callable out and runs it; does nothing if it is gone.
    fn fire(&self);
    /// Takes the callable out and drops it, releasing its captures.
    fn release(&self);
}

/// A callable that runs at most once. A `Cell`, not a `RefCell`: taking the closure out
/// leaves no borrow held while it runs or while its captures drop.
struct Slot<F>(Cell<Option<F>>);

impl<F: FnOnce()> Callable for Slot<F> {
    fn fire(&self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }

    fn release(&self) {
        drop(self.0.take());
    }
}

struct CallInner<S: ?Sized = dyn Callable> {
    time: Cell<u64>,
    /// Sequence number of the call's current heap key; a key with another is stale.
    seq: Cell<u64>,
    state: Cell<CallState>,
    queue: Weak<QueueInner>,
    func: S,
}

/// A handle on a scheduled call, returned by `call_later` (Twisted's `IDelayedCall`).
///
/// Cloning the handle does not clone the call. Dropping every handle leaves the call
/// scheduled.
#[derive(Clone)]
pub struct DelayedCall {
    inner: Rc<CallInner>,
}

impl fmt::Debug for DelayedCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DelayedCall")
            .field("time", &self.time())
            .field("state", &self.inner.state.get())
            .finish()
    }
}

impl DelayedCall {
    /// True until the call starts running or is cancelled (T-07).
    pub fn active(&self) -> bool {
        self.inner.state.get() == CallState::Pending
    }

    /// The absolute time (on the scheduler's clock) the call is scheduled for (T-06).
    pub fn time(&self) -> Duration {
        Duration::from_nanos(self.inner.time.get())
    }

    fn check_pending(&self) -> Result<Rc<QueueInner>, DelayedCallError> {
        match self.inner.state.get() {
            CallState::Called => Err(DelayedCallError::AlreadyCalled),
            CallState::Cancelled => Err(DelayedCallError::AlreadyCancelled),
            CallState::Pending => self
                .inner
                .queue
                .upgrade()
                // The queue is gone with its reactor: nothing can run the call any more,
                // which to its holder is the same as having been cancelled.
                .ok_or(DelayedCallError::AlreadyCancelled),
        }
    }

    /// Unschedules the call and releases its callable at once (T-08, T-13).
    pub fn cancel(&self) -> Result<(), DelayedCallError> {
        let queue = self.check_pending()?;
        self.inner.state.set(CallState::Cancelled);
        queue.mark_stale();
        // Released last, outside every borrow: the captures may own handles on other
        // calls, and their drop code may cancel those.
        self.inner.func.release();
        Ok(())
    }

    /// Reschedules the call to `delay` from the scheduler's current time (T-09).
    pub fn reset(&self, delay: Duration) -> Result<(), DelayedCallError> {
        let queue = self.check_pending()?;
        let time = nanos(queue.clock.now()).saturating_add(nanos(delay));
        queue.reschedule(&self.inner, time);
        Ok(())
    }

    /// Moves the call later by `by`, relative to its current time (T-10).
    pub fn delay(&self, by: Duration) -> Result<(), DelayedCallError> {
        let queue = self.check_pending()?;
        let time = self.inner.time.get().saturating_add(nanos(by));
        queue.reschedule(&self.inner, time);
        Ok(())
    }

    /// Moves the call earlier by `by`, relative to its current time (T-10 with a negative
    /// shift). A time before the clock's origin becomes the origin.
    pub fn bring_forward(&self, by: Duration) -> Result<(), DelayedCallError> {
        let queue = self.check_pending()?;
        let time = self.inner.time.get().saturating_sub(nanos(by));
        queue.reschedule(&self.inner, time);
        Ok(())
    }
}

/// Whole nanoseconds, saturating: a delay of `Duration::MAX` (or a timer 2^128 s away,
/// T-16) lands at the end of time instead of overflowing.
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A heap key: time, then sequence number (FIFO among equal times).
struct Key {
    time: u64,
    seq: u64,
    call: Rc<CallInner>,
}

impl Key {
    fn is_current(&self) -> bool {
        self.call.state.get() == CallState::Pending && self.call.seq.get() == self.seq
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        (self.time, self.seq) == (other.time, other.seq)
    }
}
impl Eq for Key {}
impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Key {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.time, self.seq).cmp(&(other.time, other.seq))
    }
}

/// Admissions of at least this many keys become a sorted run instead of joining the
/// heap (when no run is pending already). Tests use a small threshold so that the
/// model-based firing-order test mixes runs and heap keys.
const SORTED_RUN_MIN: usize = if cfg!(test) { 8 } else { 256 };

struct QueueInner {
    clock: Rc<dyn Clock>,
    heap: RefCell<BinaryHeap<Reverse<Key>>>,
    /// One large admission, sorted latest first: its earliest key is the last one.
    sorted: RefCell<Vec<Key>>,
    /// Keys scheduled since the last admission (R-12 step 2, T-04).
    incoming: RefCell<Vec<Key>>,
    next_seq: Cell<u64>,
    /// Heap and incoming keys that no longer belong to a pending call.
    stale: Cell<usize>,
    /// Stale keys popped (not purged) since the queue was made: what cancelled calls
    /// cost at firing time (T-14).
    #[cfg(test)]
    stale_popped: Cell<usize>,
}

impl QueueInner {
    fn push(&self, call: Rc<CallInner>) {
        let seq = self.next_seq.get();
        self.next_seq.set(seq + 1);
        call.seq.set(seq);
        self.incoming.borrow_mut().push(Key {
            time: call.time.get(),
            seq,
            call,
        });
    }

    fn reschedule(&self, call: &Rc<CallInner>, time: u64) {
        call.time.set(time);
        // The old key stays behind, stale; the new one carries a fresh sequence number.
        // Push first: until then the old key still looks current and a purge would keep it.
        self.push(call.clone());
        self.mark_stale();
    }

    fn mark_stale(&self) {
        self.stale.set(self.stale.get() + 1);
        let stored =
            self.heap.borrow().len() + self.sorted.borrow().len() + self.incoming.borrow().len();
        if self.stale.get() > 50 && self.stale.get() * 2 > stored {
            self.purge();
        }
    }

    /// Drops every stale key. Runs only once stale keys are the majority, so its cost is
    /// paid for by the cancellations that made them (amortised O(1) per cancel, T-14).
    fn purge(&self) {
        self.heap.borrow_mut().retain(|k| k.0.is_current());
        // `retain` keeps the order, so the run stays sorted.
        self.sorted.borrow_mut().retain(Key::is_current);
        self.incoming.borrow_mut().retain(Key::is_current);
        self.stale.set(0);
    }

    /// Accounts for a stale key popped off the heap.
    fn popped_stale(&self) {
        self.stale.set(self.stale.get().saturating_sub(1));
        #[cfg(test)]
        self.stale_popped.set(self.stale_popped.get() + 1);
    }
}

impl Drop for QueueInner {
    fn drop(&mut self) {
        // Nothing can run the pending calls any more. Release their callables, so that a
        // callable holding a handle on its own call (an Rc cycle) is freed, and mark them
        // cancelled, which is what their handles' operations report from now on.
        let heap = std::mem::take(self.heap.get_mut()).into_vec();
        let sorted = std::mem::take(self.sorted.get_mut());
        let incoming = std::mem::take(self.incoming.get_mut());
        for key in heap.into_iter().map(|k| k.0).chain(sorted).chain(incoming) {
            if key.is_current() {
                key.call.state.set(CallState::Cancelled);
                key.call.func.release();
            }
        }
    }
}

/// The timer queue shared by the reactor and [`FakeClock`]. Cheap to clone (a handle).
///
/// One reactor iteration's timer step is [`admit`](TimerQueue::admit) then
/// [`run_due`](TimerQueue::run_due) (R-12 steps 2 and 3).
#[derive(Clone)]
pub(crate) struct TimerQueue {
    inner: Rc<QueueInner>,
}

impl TimerQueue {
    pub(crate) fn new(clock: Rc<dyn Clock>) -> TimerQueue {
        TimerQueue {
            inner: Rc::new(QueueInner {
                clock,
                heap: RefCell::new(BinaryHeap::new()),
                sorted: RefCell::new(Vec::new()),
                incoming: RefCell::new(Vec::new()),
                next_seq: Cell::new(0),
                stale: Cell::new(0),
                #[cfg(test)]
                stale_popped: Cell::new(0),
            }),
        }
    }

    pub(crate) fn now(&self) -> Duration {
        self.inner.clock.now()
    }

    /// Schedules a boxed callable (the [`Scheduler`] form).
    pub(crate) fn schedule(&self, delay: Duration, func: Box<dyn FnOnce()>) -> DelayedCall {
        self.schedule_fn(delay, func)
    }

    /// Schedules `f` at `now + delay`. The call and its closure take one allocation.
    pub(crate) fn schedule_fn<F>(&self, delay: Duration, f: F) -> DelayedCall
    where
        F: FnOnce() + 'static,
    {
        let time = nanos(self.inner.clock.now()).saturating_add(nanos(delay));
        let call: Rc<CallInner> = Rc::new(CallInner {
            time: Cell::new(time),
            seq: Cell::new(0),
            state: Cell::new(CallState::Pending),
            queue: Rc::downgrade(&self.inner),
            func: Slot(Cell::new(Some(f))),
        });
        self.inner.push(call.clone());
        DelayedCall { inner: call }
    }

    /// Moves calls scheduled since the last admission into the heap, or, for a large
    /// batch while no sorted run is pending, makes them the sorted run.
    pub(crate) fn admit(&self) {
        let mut slot = self.inner.incoming.borrow_mut();
        if slot.is_empty() {
            return;
        }
        let large = slot.len() >= SORTED_RUN_MIN;
        if large {
            let mut sorted = self.inner.sorted.borrow_mut();
            if sorted.is_empty() {
                let mut incoming = std::mem::take(&mut *slot);
                incoming.sort_unstable_by(|a, b| b.cmp(a));
                *sorted = incoming;
                return;
            }
        }
        let mut heap = self.inner.heap.borrow_mut();
        if large && heap.is_empty() {
            // Heapify in place: no second copy of a large batch.
            let incoming = std::mem::take(&mut *slot);
            *heap = BinaryHeap::from(incoming.into_iter().map(Reverse).collect::<Vec<_>>());
            return;
        }
        // A small batch (a connect's timeout, say, every iteration): the incoming list
        // keeps its memory for the next one instead of growing from nothing each time.
        heap.extend(slot.drain(..).map(Reverse));
        if slot.capacity() > SORTED_RUN_MIN {
            *slot = Vec::new();
        }
    }

    /// Removes and returns the earliest admitted key (of the heap and the sorted run),
    /// unless it is current and later than `now`.
    fn pop_earliest(&self, now: u64) -> Option<Key> {
        let mut heap = self.inner.heap.borrow_mut();
        let mut sorted = self.inner.sorted.borrow_mut();
        let from_run = match (heap.peek(), sorted.last()) {
            (None, None) => return None,
            (Some(_), None) => false,
            (None, Some(_)) => true,
            (Some(top), Some(last)) => *last < top.0,
        };
        let earliest = if from_run {
            sorted.last()?
        } else {
            &heap.peek()?.0
        };
        if earliest.time > now && earliest.is_current() {
            return None;
        }
        if from_run {
            sorted.pop()
        } else {
            heap.pop().map(|k| k.0)
        }
    }

    /// Pops the earliest admitted call due at `now`, marking it called (K-14). Stale keys
    /// met on the way are discarded.
    fn pop_due(&self, now: u64) -> Option<Rc<CallInner>> {
        loop {
            let key = self.pop_earliest(now)?;
            if key.is_current() {
                key.call.state.set(CallState::Called);
                return Some(key.call);
            }
            self.inner.popped_stale();
        }
    }

    /// Runs every admitted call due at one sample of the clock (T-05). Calls scheduled
    /// or rescheduled meanwhile wait for the next admission (T-04).
    pub(crate) fn run_due(&self) {
        let now = nanos(self.inner.clock.now());
        while let Some(call) = self.pop_due(now) {
            call.func.fire();
        }
    }

    /// Admits and runs calls until none is due at the clock's current time, including
    /// calls scheduled while running (the fake clock's `advance`, K-13).
    pub(crate) fn run_until_idle(&self) {
        loop {
            self.admit();
            let now = nanos(self.inner.clock.now());
            match self.pop_due(now) {
                Some(call) => call.func.fire(),
                None => return,
            }
        }
    }

    /// The time of the earliest pending call, admitted or not: what the reactor's poll
    /// timeout is computed from (T-16).
    pub(crate) fn next_time(&self) -> Option<Duration> {
        let heaped = {
            let mut heap = self.inner.heap.borrow_mut();
            loop {
                match heap.peek() {
                    None => break None,
                    Some(top) if top.0.is_current() => break Some(top.0.time),
                    Some(_) => {
                        heap.pop();
                        self.inner.popped_stale();
                    }
                }
            }
        };
        let run = {
            let mut sorted = self.inner.sorted.borrow_mut();
            loop {
                match sorted.last() {
                    None => break None,
                    Some(last) if last.is_current() => break Some(last.time),
                    Some(_) => {
                        sorted.pop();
                        self.inner.popped_stale();
                    }
                }
            }
        };
        let admitted = match (heaped, run) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let incoming = self
            .inner
            .incoming
            .borrow()
            .iter()
            .filter(|k| k.is_current())
            .map(|k| k.time)
            .min();
        match (admitted, incoming) {
            (Some(a), Some(b)) => Some(Duration::from_nanos(a.min(b))),
            (a, b) => a.or(b).map(Duration::from_nanos),
        }
    }

    /// Calls neither run nor cancelled, in the order they will run (T-12).
    pub(crate) fn pending(&self) -> Vec<DelayedCall> {
        let heap = self.inner.heap.borrow();
        let sorted = self.inner.sorted.borrow();
        let incoming = self.inner.incoming.borrow();
        let mut keys: Vec<&Key> = heap
            .iter()
            .map(|k| &k.0)
            .chain(sorted.iter())
            .chain(incoming.iter())
            .filter(|k| k.is_current())
            .collect();
        keys.sort();
        keys.into_iter()
            .map(|k| DelayedCall {
                inner: k.call.clone(),
            })
            .collect()
    }

    /// Keys stored, current and stale, admitted or not (for tests of T-14).
    #[cfg(test)]
    pub(crate) fn stored_keys(&self) -> usize {
        self.inner.heap.borrow().len()
            + self.inner.sorted.borrow().len()
            + self.inner.incoming.borrow().len()
    }

    /// The queue's count of stale keys (for tests of T-14).
    #[cfg(test)]
    pub(crate) fn stale_keys(&self) -> usize {
        self.inner.stale.get()
    }

    /// Stale keys popped since the queue was made (for tests of T-14).
    #[cfg(test)]
    pub(crate) fn stale_popped(&self) -> usize {
        self.inner.stale_popped.get()
    }
}

/// A fake clock with its own timer queue, for tests: time moves only through
/// [`FakeClock::advance`], and due calls run inside it (Twisted's `task.Clock`, K-12..K-17).
#[derive(Clone)]
pub struct FakeClock {
    clock: ManualClock,
    queue: TimerQueue,
}

impl Default for FakeClock {
    fn default() -> Self {
        FakeClock::new()
    }
}

impl FakeClock {
    /// A fake clock at time zero with no calls (K-12).
    pub fn new() -> FakeClock {
        let clock = ManualClock::new();
        let queue = TimerQueue::new(Rc::new(clock.clone()));
        FakeClock { clock, queue }
    }

    /// The clock's time: zero at first, changed only by `advance`.
    pub fn seconds(&self) -> Duration {
        self.clock.now()
    }

    /// Schedules `f` at `seconds() + delay`, with the same semantics and errors as the
    /// reactor's `call_later`.
    pub fn call_later<F, R>(&self, delay: Duration, f: F) -> DelayedCall
    where
        F: FnOnce() -> R + 'static,
        R: CallResult,
    {
        self.queue
            .schedule_fn(delay, move || log_result("a timer callback", f()))
    }

    /// Moves time forward by `by`, then runs every call due, earliest first, including
    /// calls scheduled during this advance that are already due (K-13, K-17).
    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
        self.queue.run_until_idle();
    }

    /// `advance` by each step in turn (K-15).
    pub fn pump(&self, steps: &[Duration]) {
        for step in steps {
            self.advance(*step);
        }
    }

    /// Calls neither run nor cancelled, in the order they will run (K-16).
    pub fn delayed_calls(&self) -> Vec<DelayedCall> {
        self.queue.pending()
    }
}

impl Scheduler for FakeClock {
    fn seconds(&self) -> Duration {
        self.clock.now()
    }

    fn schedule(&self, delay: Duration, f: Box<dyn FnOnce()>) -> DelayedCall {
        self.queue.schedule(delay, f)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::reactor::failure::Failure;
    use proptest::prelude::*;

    /// Shorthands for the durations the timer tests of this crate use.
    pub(crate) fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    pub(crate) fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// A shared event log that callables append to.
    #[derive(Clone, Default)]
    struct Log(Rc<RefCell<Vec<String>>>);

    impl Log {
        fn push(&self, s: impl Into<String>) {
            self.0.borrow_mut().push(s.into());
        }
        fn take(&self) -> Vec<String> {
            std::mem::take(&mut *self.0.borrow_mut())
        }
        /// A callable that records `name`.
        fn rec(&self, name: &'static str) -> impl FnOnce() + 'static {
            let log = self.clone();
            move || log.push(name)
        }
    }

    /// A timer queue on a manual clock, driven one reactor iteration at a time.
    fn manual_queue() -> (ManualClock, TimerQueue) {
        let clock = ManualClock::new();
        let queue = TimerQueue::new(Rc::new(clock.clone()));
        (clock, queue)
    }

    /// A fake clock and a log for its calls to write to.
    fn logged_clock() -> (FakeClock, Log) {
        (FakeClock::new(), Log::default())
    }

    /// [`manual_queue`] and a log for its calls to write to.
    fn logged_queue() -> (ManualClock, TimerQueue, Log) {
        let (clock, queue) = manual_queue();
        (clock, queue, Log::default())
    }

    /// `call`, which logs "a", is due at `at` (still ahead) and runs exactly then: not a
    /// nanosecond before.
    fn assert_runs_exactly_at(clock: &FakeClock, log: &Log, call: &DelayedCall, at: Duration) {
        assert_eq!(call.time(), at);
        let last = Duration::from_nanos(1);
        clock.advance(at - clock.seconds() - last);
        assert!(log.take().is_empty(), "ran before its time");
        clock.advance(last);
        assert_eq!(log.take(), ["a"]);
        assert_eq!(clock.seconds(), at);
    }

    /// Schedules a call logging "a" `delay` from zero, lets `elapsed` pass, moves the call
    /// with `adjust` and checks that it then runs exactly at `at`.
    fn assert_adjusted_call_runs_at(
        delay: Duration,
        elapsed: Duration,
        adjust: impl FnOnce(&DelayedCall) -> Result<(), DelayedCallError>,
        at: Duration,
    ) {
        let (clock, log) = logged_clock();
        let call = clock.call_later(delay, log.rec("a"));
        clock.advance(elapsed);
        adjust(&call).unwrap();
        assert_runs_exactly_at(&clock, &log, &call, at);
    }

    /// Two calls of `clock` that are no longer pending: one cancelled, one that ran.
    fn cancelled_and_called(clock: &FakeClock) -> (DelayedCall, DelayedCall) {
        let cancelled = clock.call_later(secs(1), || ());
        let called = clock.call_later(secs(1), || ());
        cancelled.cancel().unwrap();
        clock.advance(secs(1));
        assert!(!called.active(), "the other call ran");
        (cancelled, called)
    }

    /// Schedules `f` through `schedule` and hands it, when it runs, the handle of its own
    /// call.
    fn with_own_handle(
        schedule: impl FnOnce(Box<dyn FnOnce()>) -> DelayedCall,
        f: impl FnOnce(DelayedCall) + 'static,
    ) -> DelayedCall {
        let slot: Rc<RefCell<Option<DelayedCall>>> = Rc::default();
        let inner_slot = slot.clone();
        let call = schedule(Box::new(move || {
            let me = inner_slot.borrow_mut().take();
            if let Some(me) = me {
                f(me);
            }
        }));
        *slot.borrow_mut() = Some(call.clone());
        call
    }

    /// One reactor iteration's timer step (R-12 steps 2 and 3).
    fn iterate(queue: &TimerQueue) {
        queue.admit();
        queue.run_due();
    }

    // ----- T: timers -----

    #[test]
    fn t01_call_later_schedules_at_seconds_plus_delay() {
        let (clock, log) = logged_clock();
        clock.advance(secs(3));
        let call = clock.call_later(secs(2), log.rec("a"));
        assert_runs_exactly_at(&clock, &log, &call, secs(5));
    }

    #[test]
    fn t02_zero_delay_never_runs_inside_call_later() {
        let (clock, log) = logged_clock();
        let call = clock.call_later(Duration::ZERO, log.rec("a"));
        assert!(log.take().is_empty());
        assert!(call.active());
        clock.advance(Duration::ZERO);
        assert_eq!(log.take(), ["a"]);
    }

    #[test]
    fn t02_zero_delay_never_runs_inside_schedule_on_the_queue() {
        let (_clock, queue, log) = logged_queue();
        queue.schedule(Duration::ZERO, Box::new(log.rec("a")));
        assert!(log.take().is_empty());
        iterate(&queue);
        assert_eq!(log.take(), ["a"]);
    }

    #[test]
    fn t03_timers_run_in_time_order() {
        let (clock, log) = logged_clock();
        clock.call_later(secs(3), log.rec("c"));
        clock.call_later(secs(1), log.rec("a"));
        clock.call_later(secs(2), log.rec("b"));
        clock.advance(secs(10));
        assert_eq!(log.take(), ["a", "b", "c"]);
    }

    #[test]
    fn t03_equal_times_run_in_scheduling_order() {
        let (clock, log) = logged_clock();
        let names = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
        for name in names {
            clock.call_later(secs(1), log.rec(name));
        }
        clock.advance(secs(1));
        assert_eq!(log.take(), names);
    }

    #[test]
    fn t03_equal_times_from_different_moments_run_in_scheduling_order() {
        let (clock, log) = logged_clock();
        clock.call_later(secs(2), log.rec("a"));
        clock.advance(secs(1));
        clock.call_later(secs(1), log.rec("b"));
        clock.advance(secs(1));
        assert_eq!(log.take(), ["a", "b"]);
    }

    #[test]
    fn t03_equal_times_run_in_scheduling_order_within_a_step() {
        let (clock, queue, log) = logged_queue();
        queue.schedule(secs(2), Box::new(log.rec("a")));
        clock.advance(secs(1));
        queue.schedule(secs(1), Box::new(log.rec("b")));
        queue.schedule(secs(1), Box::new(log.rec("c")));
        clock.advance(secs(1));
        iterate(&queue);
        assert_eq!(log.take(), ["a", "b", "c"]);
    }

    #[test]
    fn t03_equal_times_after_reset_follow_the_last_scheduling() {
        let (clock, log) = logged_clock();
        let a = clock.call_later(secs(1), log.rec("a"));
        clock.call_later(secs(1), log.rec("b"));
        a.reset(secs(1)).unwrap();
        clock.advance(secs(1));
        assert_eq!(log.take(), ["b", "a"]);
    }

    #[test]
    fn t04_zero_delay_timer_scheduled_in_timer_waits_for_next_iteration() {
        let (clock, queue, log) = logged_queue();
        let inner_queue = queue.clone();
        let inner_log = log.clone();
        queue.schedule(
            ms(5),
            Box::new(move || {
                inner_log.push("outer");
                inner_queue.schedule(Duration::ZERO, Box::new(inner_log.rec("inner")));
            }),
        );
        clock.advance(ms(5));
        iterate(&queue);
        assert_eq!(log.take(), ["outer"]);
        // The poll after this step must not sleep: the new call is due now.
        assert_eq!(queue.next_time(), Some(ms(5)));
        iterate(&queue);
        assert_eq!(log.take(), ["inner"]);
        assert_eq!(queue.next_time(), None);
    }

    #[test]
    fn t04_call_moved_to_now_inside_timer_waits_for_next_iteration() {
        let (clock, queue, log) = logged_queue();
        let later = queue.schedule(secs(10), Box::new(log.rec("later")));
        let inner_log = log.clone();
        queue.schedule(
            secs(1),
            Box::new(move || {
                inner_log.push("first");
                later.reset(Duration::ZERO).unwrap();
            }),
        );
        clock.advance(secs(1));
        iterate(&queue);
        assert_eq!(log.take(), ["first"]);
        iterate(&queue);
        assert_eq!(log.take(), ["later"]);
    }

    #[test]
    fn t04_timer_not_admitted_does_not_run_in_run_due() {
        let (_clock, queue, log) = logged_queue();
        queue.schedule(Duration::ZERO, Box::new(log.rec("a")));
        queue.run_due();
        assert!(log.take().is_empty());
        iterate(&queue);
        assert_eq!(log.take(), ["a"]);
    }

    #[test]
    fn t05_now_is_sampled_once_per_step() {
        let (clock, queue, log) = logged_queue();
        let inner_clock = clock.clone();
        let inner_log = log.clone();
        queue.schedule(
            secs(1),
            Box::new(move || {
                inner_log.push("a");
                // Time passes while this call runs; the step keeps its sample.
                inner_clock.advance(secs(1));
            }),
        );
        queue.schedule(secs(2), Box::new(log.rec("b")));
        clock.advance(secs(1));
        iterate(&queue);
        assert_eq!(log.take(), ["a"]);
        iterate(&queue);
        assert_eq!(log.take(), ["b"]);
    }

    #[test]
    fn t05_due_means_time_at_or_before_now() {
        let (clock, queue, log) = logged_queue();
        queue.schedule(secs(1), Box::new(log.rec("at")));
        queue.schedule(
            secs(1) + Duration::from_nanos(1),
            Box::new(log.rec("after")),
        );
        clock.advance(secs(1));
        iterate(&queue);
        assert_eq!(log.take(), ["at"]);
        clock.advance(Duration::from_nanos(1));
        iterate(&queue);
        assert_eq!(log.take(), ["after"]);
    }

    #[test]
    fn t05_every_due_timer_runs_in_one_step() {
        let (clock, queue, log) = logged_queue();
        queue.schedule(secs(3), Box::new(log.rec("c")));
        queue.schedule(secs(1), Box::new(log.rec("a")));
        queue.schedule(secs(2), Box::new(log.rec("b")));
        queue.schedule(secs(4), Box::new(log.rec("d")));
        clock.advance(secs(3));
        iterate(&queue);
        assert_eq!(log.take(), ["a", "b", "c"]);
        assert_eq!(queue.next_time(), Some(secs(4)));
    }

    #[test]
    fn t06_time_is_absolute_and_includes_adjustments() {
        let clock = FakeClock::new();
        clock.advance(secs(10));
        let call = clock.call_later(secs(5), || ());
        assert_eq!(call.time(), secs(15));
        call.delay(secs(2)).unwrap();
        assert_eq!(call.time(), secs(17));
        call.bring_forward(secs(4)).unwrap();
        assert_eq!(call.time(), secs(13));
        clock.advance(secs(1));
        call.reset(secs(1)).unwrap();
        assert_eq!(call.time(), secs(12));
    }

    #[test]
    fn t07_active_until_running_or_cancelled() {
        let clock = FakeClock::new();
        let seen_inside = Rc::new(Cell::new(None));
        let call = clock.call_later(secs(1), || ());
        let inner_seen = seen_inside.clone();
        let own = with_own_handle(
            |f| clock.call_later(secs(1), f),
            move |me| inner_seen.set(Some(me.active())),
        );
        assert!(call.active());
        assert!(own.active());
        call.cancel().unwrap();
        assert!(!call.active());
        clock.advance(secs(1));
        assert_eq!(seen_inside.get(), Some(false));
        assert!(!own.active());
    }

    #[test]
    fn t08_cancelled_call_does_not_run() {
        let (clock, log) = logged_clock();
        let call = clock.call_later(secs(1), log.rec("a"));
        clock.call_later(secs(1), log.rec("b"));
        call.cancel().unwrap();
        clock.advance(secs(5));
        assert_eq!(log.take(), ["b"]);
    }

    #[test]
    fn t08_cancel_twice_is_already_cancelled() {
        let clock = FakeClock::new();
        let call = clock.call_later(secs(1), || ());
        assert_eq!(call.cancel(), Ok(()));
        assert_eq!(call.cancel(), Err(DelayedCallError::AlreadyCancelled));
    }

    #[test]
    fn t08_cancel_after_run_is_already_called() {
        let clock = FakeClock::new();
        let call = clock.call_later(secs(1), || ());
        clock.advance(secs(1));
        assert_eq!(call.cancel(), Err(DelayedCallError::AlreadyCalled));
    }

    #[test]
    fn t08_cancel_inside_own_callable_is_already_called() {
        let (clock, queue) = manual_queue();
        let result = Rc::new(Cell::new(None));
        let inner_result = result.clone();
        let call = with_own_handle(
            |f| queue.schedule(secs(1), f),
            move |me| inner_result.set(Some(me.cancel())),
        );
        clock.advance(secs(1));
        iterate(&queue);
        assert_eq!(result.get(), Some(Err(DelayedCallError::AlreadyCalled)));
        assert_eq!(call.cancel(), Err(DelayedCallError::AlreadyCalled));
    }

    #[test]
    fn t08_cancel_from_earlier_callable_stops_a_call_due_in_the_same_step() {
        let (clock, queue, log) = logged_queue();
        let victim: Rc<RefCell<Option<DelayedCall>>> = Rc::default();
        let (inner_victim, inner_log) = (victim.clone(), log.clone());
        queue.schedule(
            secs(1),
            Box::new(move || {
                inner_log.push("killer");
                let v = inner_victim.borrow_mut().take();
                inner_log.push(format!("{:?}", v.map(|v| v.cancel())));
            }),
        );
        *victim.borrow_mut() = Some(queue.schedule(secs(1), Box::new(log.rec("victim"))));
        clock.advance(secs(1));
        iterate(&queue);
        iterate(&queue);
        assert_eq!(log.take(), ["killer", "Some(Ok(()))"]);
    }

    #[test]
    fn t09_reset_measures_from_the_moment_of_reset() {
        assert_adjusted_call_runs_at(secs(5), secs(2), |c| c.reset(secs(1)), secs(3));
    }

    #[test]
    fn t09_reset_can_move_later() {
        assert_adjusted_call_runs_at(secs(1), Duration::ZERO, |c| c.reset(secs(10)), secs(10));
    }

    #[test]
    fn t09_reset_on_cancelled_or_called_call_fails() {
        let clock = FakeClock::new();
        let (cancelled, called) = cancelled_and_called(&clock);
        assert_eq!(
            cancelled.reset(secs(1)),
            Err(DelayedCallError::AlreadyCancelled)
        );
        assert_eq!(called.reset(secs(1)), Err(DelayedCallError::AlreadyCalled));
        assert_eq!(clock.delayed_calls().len(), 0);
    }

    #[test]
    fn t10_delay_shifts_relative_to_scheduled_time() {
        assert_adjusted_call_runs_at(secs(5), secs(2), |c| c.delay(secs(1)), secs(6));
    }

    #[test]
    fn t10_bring_forward_is_a_negative_delay() {
        assert_adjusted_call_runs_at(
            secs(5),
            Duration::ZERO,
            |c| c.bring_forward(secs(3)),
            secs(2),
        );
    }

    #[test]
    fn t10_bring_forward_before_origin_stops_at_origin() {
        let (clock, log) = logged_clock();
        let call = clock.call_later(secs(1), log.rec("a"));
        call.bring_forward(secs(100)).unwrap();
        assert_eq!(call.time(), Duration::ZERO);
        clock.advance(Duration::ZERO);
        assert_eq!(log.take(), ["a"]);
    }

    #[test]
    fn t10_delay_and_bring_forward_fail_like_reset() {
        let clock = FakeClock::new();
        let (cancelled, called) = cancelled_and_called(&clock);
        let cases = [
            (&cancelled, DelayedCallError::AlreadyCancelled),
            (&called, DelayedCallError::AlreadyCalled),
        ];
        for (call, expected) in cases {
            assert_eq!(call.delay(secs(1)), Err(expected));
            assert_eq!(call.bring_forward(secs(1)), Err(expected));
        }
    }

    #[test]
    fn t11_reset_past_another_runs_after_it() {
        let (clock, log) = logged_clock();
        let a = clock.call_later(secs(1), log.rec("a"));
        clock.call_later(secs(2), log.rec("b"));
        let c = clock.call_later(secs(3), log.rec("c"));
        a.reset(secs(4)).unwrap();
        c.bring_forward(secs(3)).unwrap();
        clock.advance(secs(10));
        assert_eq!(log.take(), ["c", "b", "a"]);
    }

    #[test]
    fn t11_delay_past_another_runs_after_it() {
        let (clock, log) = logged_clock();
        let a = clock.call_later(secs(1), log.rec("a"));
        clock.call_later(secs(2), log.rec("b"));
        a.delay(secs(2)).unwrap();
        clock.advance(secs(2));
        assert_eq!(log.take(), ["b"]);
        clock.advance(secs(1));
        assert_eq!(log.take(), ["a"]);
    }

    #[test]
    fn t11_reset_inside_another_timer_reorders() {
        let (clock, log) = logged_clock();
        let b = clock.call_later(secs(2), log.rec("b"));
        clock.call_later(secs(3), log.rec("c"));
        let d = clock.call_later(secs(5), log.rec("d"));
        let inner_log = log.clone();
        clock.call_later(secs(1), move || {
            inner_log.push("a");
            // At 1 s: b moves to 4 s, after c; d moves to 2 s, before c.
            b.reset(secs(3)).unwrap();
            d.bring_forward(secs(3)).unwrap();
        });
        clock.advance(secs(1));
        assert_eq!(log.take(), ["a"]);
        clock.advance(secs(10));
        assert_eq!(log.take(), ["d", "c", "b"]);
    }

    #[test]
    fn t11_reset_inside_a_step_pushes_a_due_call_out_of_it() {
        let (clock, queue, log) = logged_queue();
        let b = queue.schedule(secs(1), Box::new(log.rec("b")));
        let inner_log = log.clone();
        let a = queue.schedule(
            secs(1),
            Box::new(move || {
                inner_log.push("a");
                b.reset(secs(1)).unwrap();
            }),
        );
        // a at 999 ms, b at 1 s: both due in the same step, a first.
        a.bring_forward(ms(1)).unwrap();
        clock.advance(secs(1));
        iterate(&queue);
        assert_eq!(log.take(), ["a"]);
        assert_eq!(queue.next_time(), Some(secs(2)));
        clock.advance(secs(1));
        iterate(&queue);
        assert_eq!(log.take(), ["b"]);
    }

    #[test]
    fn t12_pending_lists_calls_neither_run_nor_cancelled_in_run_order() {
        let clock = FakeClock::new();
        let a = clock.call_later(secs(3), || ());
        let b = clock.call_later(secs(1), || ());
        let c = clock.call_later(secs(2), || ());
        let d = clock.call_later(secs(2), || ());
        c.cancel().unwrap();
        let listed = clock.delayed_calls();
        assert_eq!(listed.len(), 3);
        assert!(Rc::ptr_eq(&listed[0].inner, &b.inner));
        assert!(Rc::ptr_eq(&listed[1].inner, &d.inner));
        assert!(Rc::ptr_eq(&listed[2].inner, &a.inner));
        clock.advance(secs(2));
        let listed = clock.delayed_calls();
        assert_eq!(listed.len(), 1);
        assert!(Rc::ptr_eq(&listed[0].inner, &a.inner));
    }

    #[test]
    fn t13_cancel_drops_captures_at_once() {
        let clock = FakeClock::new();
        let data = Rc::new(vec![1u8; 16]);
        let captured = data.clone();
        let call = clock.call_later(secs(1), move || drop(captured));
        assert_eq!(Rc::strong_count(&data), 2);
        call.cancel().unwrap();
        assert_eq!(Rc::strong_count(&data), 1);
        // The handle and the queue's stale key are still alive; the data is not held.
        assert_eq!(clock.queue.stored_keys(), 1);
    }

    #[test]
    fn t13_running_a_call_drops_its_captures() {
        let clock = FakeClock::new();
        let data = Rc::new(());
        let captured = data.clone();
        let call = clock.call_later(secs(1), move || {
            let _keep = &captured;
        });
        assert_eq!(
            Rc::strong_count(&data),
            2,
            "the pending call holds the data"
        );
        clock.advance(secs(1));
        assert!(!call.active(), "the call ran");
        assert_eq!(Rc::strong_count(&data), 1);
        drop(call);
    }

    #[test]
    fn t13_dropping_captures_may_cancel_other_calls() {
        struct CancelOnDrop(DelayedCall);
        impl Drop for CancelOnDrop {
            fn drop(&mut self) {
                let _ = self.0.cancel();
            }
        }
        let (clock, log) = logged_clock();
        // Enough stale keys that the inner cancel purges while the outer one is finishing.
        let fillers: Vec<_> = (0..60).map(|_| clock.call_later(secs(1), || ())).collect();
        let other = clock.call_later(secs(1), log.rec("other"));
        let guard = CancelOnDrop(other.clone());
        let outer = clock.call_later(secs(1), move || drop(guard));
        for f in &fillers {
            f.cancel().unwrap();
        }
        outer.cancel().unwrap();
        assert!(!other.active());
        clock.advance(secs(1));
        assert!(log.take().is_empty());
    }

    #[test]
    fn t13_dropping_the_clock_releases_pending_callables() {
        let data = Rc::new(());
        let handle;
        {
            let clock = FakeClock::new();
            let slot: Rc<RefCell<Option<DelayedCall>>> = Rc::default();
            let (captured, inner_slot) = (data.clone(), slot.clone());
            // A callable holding a handle on its own call: an Rc cycle until released.
            handle = clock.call_later(secs(1), move || {
                let _keep = (&captured, &inner_slot);
            });
            *slot.borrow_mut() = Some(handle.clone());
            assert_eq!(Rc::strong_count(&data), 2);
        }
        assert_eq!(Rc::strong_count(&data), 1);
        assert!(!handle.active());
        assert_eq!(handle.cancel(), Err(DelayedCallError::AlreadyCancelled));
    }

    #[test]
    fn t14_cancelled_calls_are_purged_and_cost_nothing_at_fire_time() {
        let clock = FakeClock::new();
        let fired = Rc::new(Cell::new(0usize));
        let calls: Vec<DelayedCall> = (0..100_000u64)
            .map(|i| {
                let fired = fired.clone();
                clock.call_later(ms(i % 1000), move || fired.set(fired.get() + 1))
            })
            .collect();
        for (i, call) in calls.iter().enumerate() {
            if i % 10 != 0 {
                call.cancel().unwrap();
            }
        }
        let live = 10_000;
        let stored = clock.queue.stored_keys();
        let stale = clock.queue.stale_keys();
        assert_eq!(stored, live + stale);
        // The purge keeps stale keys at most half the queue (or at most 50).
        assert!(stale <= live.max(50), "stale {stale}, stored {stored}");
        clock.advance(secs(1));
        assert_eq!(fired.get(), live);
        assert_eq!(clock.queue.stored_keys(), 0);
        assert!(clock.queue.stale_popped() <= stale);
    }

    #[test]
    fn t14_cancelling_admitted_calls_purges_the_heap() {
        let (clock, queue) = manual_queue();
        let calls: Vec<DelayedCall> = (0..100_000u64)
            .map(|i| queue.schedule(ms(1 + (i * 7919) % 1000), Box::new(|| ())))
            .collect();
        iterate(&queue);
        // Cancel in an order unrelated to time.
        for (i, call) in calls.iter().enumerate() {
            if (i * 31) % 10 != 0 {
                call.cancel().unwrap();
            }
        }
        let stale = queue.stale_keys();
        assert_eq!(queue.stored_keys(), 10_000 + stale);
        assert!(stale <= 10_000);
        clock.advance(secs(1));
        iterate(&queue);
        assert_eq!(queue.stored_keys(), 0);
        assert!(queue.stale_popped() <= stale);
        assert!(calls.iter().all(|c| !c.active()));
    }

    #[test]
    fn t03_a_large_batch_fires_in_time_then_scheduling_order() {
        let (clock, queue) = manual_queue();
        let fired = Rc::new(RefCell::new(Vec::new()));
        let schedule = |id: u64, delay: u64| {
            let fired = fired.clone();
            queue.schedule(ms(delay), Box::new(move || fired.borrow_mut().push(id)))
        };
        // One batch far above the sorted-run threshold, with many equal times...
        let mut expected: Vec<(u64, u64)> = Vec::new();
        for id in 0..1000u64 {
            let delay = (id * 7919) % 37;
            schedule(id, delay);
            expected.push((delay, id));
        }
        iterate(&queue);
        // ...then a small batch that joins the heap, interleaving with the run.
        for id in 1000..1010u64 {
            let delay = (id * 13) % 37;
            schedule(id, delay);
            expected.push((delay, id));
        }
        clock.advance(ms(40));
        iterate(&queue);
        expected.sort();
        let order: Vec<u64> = expected.into_iter().map(|(_, id)| id).collect();
        assert_eq!(*fired.borrow(), order);
        assert_eq!(queue.stored_keys(), 0);
    }

    #[test]
    fn t08_t09_cancelled_and_reset_calls_of_a_sorted_run() {
        let (clock, queue, log) = logged_queue();
        let calls: Vec<DelayedCall> = (0..SORTED_RUN_MIN as u64 * 4)
            .map(|i| queue.schedule(ms(10 + i % 5), Box::new(|| ())))
            .collect();
        let moved = queue.schedule(ms(10), Box::new(log.rec("moved")));
        let dropped = queue.schedule(ms(1), Box::new(log.rec("dropped")));
        iterate(&queue);
        for call in &calls {
            call.cancel().unwrap();
        }
        dropped.cancel().unwrap();
        moved.reset(ms(2)).unwrap();
        assert_eq!(queue.next_time(), Some(ms(2)));
        assert_eq!(queue.pending().len(), 1);
        clock.advance(ms(2));
        iterate(&queue);
        assert_eq!(log.take(), ["moved"]);
        assert_eq!(queue.next_time(), None);
        assert!(calls.iter().all(|c| !c.active()));
    }

    #[test]
    fn t14_repeated_reset_leaves_a_bounded_number_of_keys() {
        let (clock, log) = logged_clock();
        let call = clock.call_later(secs(1), log.rec("a"));
        for i in 0..10_000u64 {
            call.reset(ms(i % 50)).unwrap();
            assert!(clock.queue.stored_keys() <= 52);
            assert_eq!(clock.queue.stale_keys(), clock.queue.stored_keys() - 1);
        }
        clock.advance(secs(1));
        assert_eq!(log.take(), ["a"]);
    }

    #[test]
    fn t15_error_in_timer_does_not_affect_other_timers() {
        let (clock, log) = logged_clock();
        clock.call_later(secs(1), log.rec("a"));
        let inner_log = log.clone();
        clock.call_later(secs(1), move || -> Result<(), Failure> {
            inner_log.push("failing");
            Err(Failure::msg("boom"))
        });
        clock.call_later(secs(1), log.rec("b"));
        clock.advance(secs(1));
        assert_eq!(log.take(), ["a", "failing", "b"]);
    }

    #[test]
    fn t16_next_time_is_none_without_pending_timers() {
        let (clock, queue) = manual_queue();
        assert_eq!(queue.next_time(), None);
        let call = queue.schedule(secs(1), Box::new(|| ()));
        assert_eq!(queue.next_time(), Some(secs(1)));
        call.cancel().unwrap();
        assert_eq!(queue.next_time(), None);
        queue.schedule(secs(1), Box::new(|| ()));
        clock.advance(secs(1));
        iterate(&queue);
        assert_eq!(queue.next_time(), None);
    }

    #[test]
    fn t16_next_time_ignores_cancelled_and_reset_keys() {
        let (clock, queue) = manual_queue();
        let a = queue.schedule(secs(1), Box::new(|| ()));
        let b = queue.schedule(secs(2), Box::new(|| ()));
        queue.schedule(secs(5), Box::new(|| ()));
        iterate(&queue);
        a.cancel().unwrap();
        b.reset(secs(4)).unwrap();
        // b's old key (2 s) is admitted, its new one (4 s) is not.
        assert_eq!(queue.next_time(), Some(secs(4)));
        iterate(&queue);
        assert_eq!(queue.next_time(), Some(secs(4)));
        b.cancel().unwrap();
        assert_eq!(queue.next_time(), Some(secs(5)));
        // An overdue timer reports its own (past) time; the reactor clamps to zero.
        clock.advance(secs(7));
        assert_eq!(queue.next_time(), Some(secs(5)));
    }

    #[test]
    fn t16_next_time_sees_timers_scheduled_during_the_step() {
        let (clock, queue) = manual_queue();
        let inner = queue.clone();
        queue.schedule(
            secs(1),
            Box::new(move || {
                inner.schedule(ms(500), Box::new(|| ()));
            }),
        );
        queue.schedule(secs(9), Box::new(|| ()));
        clock.advance(secs(1));
        iterate(&queue);
        assert_eq!(queue.next_time(), Some(ms(1500)));
    }

    #[test]
    fn t16_max_delay_saturates_and_keeps_order() {
        let (clock, log) = logged_clock();
        clock.advance(secs(1));
        let far1 = clock.call_later(Duration::MAX, log.rec("far1"));
        let far2 = clock.call_later(Duration::MAX, log.rec("far2"));
        clock.call_later(secs(1), log.rec("near"));
        let end = Duration::from_nanos(u64::MAX);
        assert_eq!(far1.time(), end);
        assert_eq!(clock.queue.next_time(), Some(secs(2)));
        // Further pushes stay at the end without wrapping around.
        far1.delay(Duration::MAX).unwrap();
        far2.reset(Duration::MAX).unwrap();
        assert_eq!(far1.time(), end);
        assert_eq!(far2.time(), end);
        clock.advance(secs(1));
        assert_eq!(log.take(), ["near"]);
        assert_eq!(clock.queue.next_time(), Some(end));
        clock.advance(Duration::MAX);
        assert_eq!(log.take(), ["far1", "far2"]);
        // The clock itself saturates too.
        clock.advance(Duration::MAX);
        let late = clock.call_later(secs(1), log.rec("late"));
        assert_eq!(late.time(), end);
        clock.advance(Duration::ZERO);
        assert_eq!(log.take(), ["late"]);
    }

    #[test]
    fn t17_reset_measures_from_the_queue_clock() {
        let (clock, queue) = manual_queue();
        let call = queue.schedule(secs(1), Box::new(|| ()));
        clock.advance(secs(100));
        assert_eq!(queue.now(), secs(100));
        call.reset(secs(1)).unwrap();
        assert_eq!(call.time(), secs(101));
    }

    #[test]
    fn t17_fake_clock_scheduler_and_call_later_share_one_clock() {
        let (clock, log) = logged_clock();
        clock.advance(secs(4));
        assert_eq!(Scheduler::seconds(&clock), secs(4));
        let boxed = Scheduler::schedule(&clock, secs(1), Box::new(log.rec("boxed")));
        let direct = clock.call_later(secs(1), log.rec("direct"));
        assert_eq!(boxed.time(), direct.time());
        clock.advance(secs(1));
        assert_eq!(log.take(), ["boxed", "direct"]);
    }

    #[test]
    fn t17_monotonic_clock_never_goes_backwards() {
        let clock = MonotonicClock::new();
        let mut last = clock.now();
        for _ in 0..1000 {
            let now = clock.now();
            assert!(now >= last);
            last = now;
        }
    }

    // ----- K: the fake clock -----

    #[test]
    fn k12_seconds_starts_at_zero_and_moves_only_by_advance() {
        let clock = FakeClock::new();
        assert_eq!(clock.seconds(), Duration::ZERO);
        clock.call_later(secs(5), || ());
        assert_eq!(clock.seconds(), Duration::ZERO);
        clock.advance(ms(1500));
        assert_eq!(clock.seconds(), ms(1500));
        let copy = clock.clone();
        copy.advance(ms(500));
        assert_eq!(clock.seconds(), secs(2));
    }

    #[test]
    fn k12_call_later_errors_match_the_reactor() {
        let clock = FakeClock::new();
        let call = clock.call_later(secs(1), || ());
        call.cancel().unwrap();
        assert_eq!(call.cancel(), Err(DelayedCallError::AlreadyCancelled));
        assert_eq!(call.reset(secs(1)), Err(DelayedCallError::AlreadyCancelled));
        assert_eq!(call.delay(secs(1)), Err(DelayedCallError::AlreadyCancelled));
    }

    #[test]
    fn k13_advance_runs_calls_scheduled_during_advance() {
        let (clock, log) = logged_clock();
        let (inner_clock, inner_log) = (clock.clone(), log.clone());
        clock.call_later(secs(1), move || {
            inner_log.push("a");
            let deeper = (inner_clock.clone(), inner_log.clone());
            // Measured from the advanced time (2 s): due at once, inside this advance.
            inner_clock.call_later(Duration::ZERO, move || {
                deeper.1.push("b");
                // At 2.5 s: beyond this advance.
                deeper.0.call_later(ms(500), deeper.1.rec("c"));
            });
        });
        clock.advance(secs(2));
        assert_eq!(log.take(), ["a", "b"]);
        assert_eq!(clock.delayed_calls()[0].time(), ms(2500));
        clock.advance(ms(500));
        assert_eq!(log.take(), ["c"]);
    }

    #[test]
    fn k13_calls_made_due_during_advance_run_earliest_first() {
        let (clock, log) = logged_clock();
        let d = clock.call_later(secs(10), log.rec("d"));
        let inner_log = log.clone();
        clock.call_later(secs(1), move || {
            inner_log.push("a");
            // Now at 1.5 s: earlier than c (2 s), so it runs before c in this advance.
            d.bring_forward(ms(8500)).unwrap();
        });
        clock.call_later(secs(2), log.rec("c"));
        clock.advance(secs(3));
        assert_eq!(log.take(), ["a", "d", "c"]);
    }

    #[test]
    fn k13_new_call_due_now_runs_after_calls_due_at_the_same_time() {
        let (clock, log) = logged_clock();
        let (inner_clock, inner_log) = (clock.clone(), log.clone());
        clock.call_later(secs(1), move || {
            inner_log.push("a");
            inner_clock.call_later(Duration::ZERO, inner_log.rec("b"));
        });
        clock.call_later(secs(1), log.rec("c"));
        clock.advance(secs(1));
        assert_eq!(log.take(), ["a", "c", "b"]);
    }

    #[test]
    fn k13_advance_zero_runs_what_is_due_now() {
        let (clock, log) = logged_clock();
        clock.call_later(Duration::ZERO, log.rec("a"));
        clock.call_later(ms(1), log.rec("b"));
        clock.advance(Duration::ZERO);
        assert_eq!(log.take(), ["a"]);
    }

    #[test]
    fn k13_reentrant_advance_inside_a_call() {
        let (clock, log) = logged_clock();
        let (inner_clock, inner_log) = (clock.clone(), log.clone());
        clock.call_later(secs(1), move || {
            inner_log.push("a start");
            inner_clock.advance(secs(1));
            inner_log.push("a end");
        });
        clock.call_later(secs(2), log.rec("b"));
        clock.advance(secs(1));
        assert_eq!(log.take(), ["a start", "b", "a end"]);
        assert_eq!(clock.seconds(), secs(2));
    }

    #[test]
    fn k14_call_is_marked_called_before_it_runs() {
        let clock = FakeClock::new();
        let results = Rc::new(RefCell::new(Vec::new()));
        let inner_results = results.clone();
        with_own_handle(
            |f| clock.call_later(secs(1), f),
            move |me| {
                inner_results.borrow_mut().extend([
                    me.cancel(),
                    me.reset(secs(1)),
                    me.delay(secs(1)),
                    me.bring_forward(secs(1)),
                ]);
                assert!(!me.active());
            },
        );
        clock.advance(secs(1));
        assert_eq!(
            *results.borrow(),
            vec![Err(DelayedCallError::AlreadyCalled); 4]
        );
        assert!(clock.delayed_calls().is_empty());
    }

    #[test]
    fn k15_pump_advances_step_by_step() {
        let clock = FakeClock::new();
        let seen = Rc::new(RefCell::new(Vec::new()));
        for delay in [1, 2, 4] {
            let (inner_clock, inner_seen) = (clock.clone(), seen.clone());
            clock.call_later(secs(delay), move || {
                inner_seen.borrow_mut().push(inner_clock.seconds());
            });
        }
        clock.pump(&[secs(1), secs(1), secs(3)]);
        assert_eq!(*seen.borrow(), vec![secs(1), secs(2), secs(5)]);
        assert_eq!(clock.seconds(), secs(5));
    }

    #[test]
    fn k16_delayed_calls_follow_cancel_and_reset() {
        let (clock, log) = logged_clock();
        let a = clock.call_later(secs(1), log.rec("a"));
        let b = clock.call_later(secs(2), log.rec("b"));
        let c = clock.call_later(secs(3), log.rec("c"));
        b.cancel().unwrap();
        c.reset(ms(500)).unwrap();
        let listed = clock.delayed_calls();
        assert_eq!(listed.len(), 2);
        assert!(Rc::ptr_eq(&listed[0].inner, &c.inner));
        assert!(Rc::ptr_eq(&listed[1].inner, &a.inner));
        clock.advance(secs(5));
        assert_eq!(log.take(), ["c", "a"]);
    }

    #[test]
    fn k17_zero_delay_call_scheduled_inside_runs_in_same_advance() {
        let (clock, log) = logged_clock();
        let (inner_clock, inner_log) = (clock.clone(), log.clone());
        clock.call_later(secs(1), move || {
            inner_log.push("outer");
            inner_clock.call_later(Duration::ZERO, inner_log.rec("inner"));
        });
        clock.advance(secs(1));
        assert_eq!(log.take(), ["outer", "inner"]);
    }

    // ----- Model-based check of the firing order (T-03, T-04, T-09..T-12, K-13, K-16) -----

    /// What a call does when it fires; targets index the calls made so far (modulo).
    #[derive(Debug, Clone, Copy)]
    enum Action {
        Nothing,
        Cancel(usize),
        Reset(usize, u64),
        BringForward(usize, u64),
        Schedule(u64),
    }

    /// Operations from outside any call. Times are in milliseconds.
    #[derive(Debug, Clone, Copy)]
    enum Op {
        Schedule(u64, Action),
        Cancel(usize),
        Reset(usize, u64),
        Delay(usize, u64),
        BringForward(usize, u64),
        /// `FakeClock::advance`: run until nothing is due.
        Advance(u64),
        /// Move the clock without running anything.
        Tick(u64),
        /// One reactor iteration's timer step: admit, then run what is due.
        Iterate,
        /// Schedule this many calls with this delay and cancel all but the last (purges).
        Churn(usize, u64),
        /// Reset one call this many times to this delay (purges of rescheduled keys).
        Respin(usize, usize, u64),
    }

    #[derive(Debug, Clone, PartialEq)]
    enum Event {
        Fired(usize),
        Result(Result<(), DelayedCallError>),
    }

    struct ModelCall {
        time: u64,
        seq: u64,
        state: CallState,
        /// Whether its current scheduling has been admitted (T-04).
        admitted: bool,
        action: Action,
    }

    /// The specification in its plainest form: calls run by (time, sequence number of the
    /// last (re)scheduling); a reactor step runs only what was admitted when it began.
    #[derive(Default)]
    struct Model {
        now: u64,
        next_seq: u64,
        calls: Vec<ModelCall>,
        events: Vec<Event>,
    }

    impl Model {
        fn bump(&mut self) -> u64 {
            self.next_seq += 1;
            self.next_seq
        }

        fn schedule(&mut self, delay: u64, action: Action) {
            let seq = self.bump();
            self.calls.push(ModelCall {
                time: self.now + delay,
                seq,
                state: CallState::Pending,
                admitted: false,
                action,
            });
        }

        fn check(&self, i: usize) -> Result<(), DelayedCallError> {
            match self.calls[i].state {
                CallState::Pending => Ok(()),
                CallState::Called => Err(DelayedCallError::AlreadyCalled),
                CallState::Cancelled => Err(DelayedCallError::AlreadyCancelled),
            }
        }

        fn cancel(&mut self, i: usize) -> Result<(), DelayedCallError> {
            self.check(i)?;
            self.calls[i].state = CallState::Cancelled;
            Ok(())
        }

        fn move_to(
            &mut self,
            i: usize,
            time: impl Fn(&Model) -> u64,
        ) -> Result<(), DelayedCallError> {
            self.check(i)?;
            let time = time(self);
            let seq = self.bump();
            let call = &mut self.calls[i];
            call.time = time;
            call.seq = seq;
            call.admitted = false;
            Ok(())
        }

        fn reset(&mut self, i: usize, d: u64) -> Result<(), DelayedCallError> {
            self.move_to(i, |m| m.now + d)
        }

        fn delay(&mut self, i: usize, by: u64) -> Result<(), DelayedCallError> {
            self.move_to(i, |m| m.calls[i].time + by)
        }

        fn bring_forward(&mut self, i: usize, by: u64) -> Result<(), DelayedCallError> {
            self.move_to(i, |m| m.calls[i].time.saturating_sub(by))
        }

        fn pending(&self) -> Vec<usize> {
            let mut ids: Vec<usize> = (0..self.calls.len())
                .filter(|&i| self.calls[i].state == CallState::Pending)
                .collect();
            ids.sort_by_key(|&i| (self.calls[i].time, self.calls[i].seq));
            ids
        }

        fn next_due(&self, admitted_only: bool) -> Option<usize> {
            self.pending().into_iter().find(|&i| {
                self.calls[i].time <= self.now && (self.calls[i].admitted || !admitted_only)
            })
        }

        fn admit(&mut self) {
            for call in &mut self.calls {
                call.admitted = true;
            }
        }

        fn fire(&mut self, i: usize) {
            self.calls[i].state = CallState::Called;
            self.events.push(Event::Fired(i));
            let n = self.calls.len();
            let result = match self.calls[i].action {
                Action::Nothing => return,
                Action::Schedule(d) => return self.schedule(d, Action::Nothing),
                Action::Cancel(j) => self.cancel(j % n),
                Action::Reset(j, d) => self.reset(j % n, d),
                Action::BringForward(j, by) => self.bring_forward(j % n, by),
            };
            self.events.push(Event::Result(result));
        }

        fn advance(&mut self, by: u64) {
            self.now += by;
            loop {
                self.admit();
                match self.next_due(false) {
                    Some(i) => self.fire(i),
                    None => return,
                }
            }
        }

        fn iterate(&mut self) {
            self.admit();
            while let Some(i) = self.next_due(true) {
                self.fire(i);
            }
        }

        fn next_time(&self) -> Option<u64> {
            self.pending().first().map(|&i| self.calls[i].time)
        }
    }

    /// The real thing: a fake clock whose calls log and act like the model's.
    #[derive(Clone, Default)]
    struct Env {
        clock: FakeClock,
        calls: Rc<RefCell<Vec<DelayedCall>>>,
        events: Rc<RefCell<Vec<Event>>>,
    }

    impl Env {
        fn schedule(&self, delay: u64, action: Action) {
            let id = self.calls.borrow().len();
            let env = self.clone();
            let call = self
                .clock
                .call_later(ms(delay), move || env.fire(id, action));
            self.calls.borrow_mut().push(call);
        }

        fn call(&self, i: usize) -> DelayedCall {
            self.calls.borrow()[i].clone()
        }

        fn fire(&self, id: usize, action: Action) {
            self.events.borrow_mut().push(Event::Fired(id));
            let n = self.calls.borrow().len();
            let result = match action {
                Action::Nothing => return,
                Action::Schedule(d) => return self.schedule(d, Action::Nothing),
                Action::Cancel(j) => self.call(j % n).cancel(),
                Action::Reset(j, d) => self.call(j % n).reset(ms(d)),
                Action::BringForward(j, by) => self.call(j % n).bring_forward(ms(by)),
            };
            self.events.borrow_mut().push(Event::Result(result));
        }

        fn id_of(&self, call: &DelayedCall) -> Option<usize> {
            let calls = self.calls.borrow();
            calls.iter().position(|c| Rc::ptr_eq(&c.inner, &call.inner))
        }
    }

    fn apply(env: &Env, model: &mut Model, op: Op) -> Result<(), TestCaseError> {
        let n = model.calls.len();
        let (real, expected) = match op {
            Op::Schedule(d, action) => {
                env.schedule(d, action);
                model.schedule(d, action);
                (Ok(()), Ok(()))
            }
            Op::Churn(count, d) => {
                for _ in 0..count {
                    env.schedule(d, Action::Nothing);
                    model.schedule(d, Action::Nothing);
                }
                let len = model.calls.len();
                for i in len - count..len - 1 {
                    prop_assert_eq!(env.call(i).cancel(), model.cancel(i));
                }
                (Ok(()), Ok(()))
            }
            Op::Respin(i, count, d) if n > 0 => {
                for _ in 0..count {
                    let result = env.call(i % n).reset(ms(d));
                    prop_assert_eq!(result, model.reset(i % n, d));
                }
                (Ok(()), Ok(()))
            }
            Op::Cancel(i) if n > 0 => (env.call(i % n).cancel(), model.cancel(i % n)),
            Op::Reset(i, d) if n > 0 => (env.call(i % n).reset(ms(d)), model.reset(i % n, d)),
            Op::Delay(i, by) if n > 0 => (env.call(i % n).delay(ms(by)), model.delay(i % n, by)),
            Op::BringForward(i, by) if n > 0 => (
                env.call(i % n).bring_forward(ms(by)),
                model.bring_forward(i % n, by),
            ),
            Op::Cancel(_)
            | Op::Reset(..)
            | Op::Delay(..)
            | Op::BringForward(..)
            | Op::Respin(..) => (Ok(()), Ok(())),
            Op::Advance(by) => {
                env.clock.advance(ms(by));
                model.advance(by);
                (Ok(()), Ok(()))
            }
            Op::Tick(by) => {
                env.clock.clock.advance(ms(by));
                model.now += by;
                (Ok(()), Ok(()))
            }
            Op::Iterate => {
                iterate(&env.clock.queue);
                model.iterate();
                (Ok(()), Ok(()))
            }
        };
        prop_assert_eq!(real, expected);
        Ok(())
    }

    fn compare(env: &Env, model: &Model) -> Result<(), TestCaseError> {
        prop_assert_eq!(&*env.events.borrow(), &model.events);
        prop_assert_eq!(env.clock.seconds(), ms(model.now));
        let calls = env.calls.borrow().clone();
        prop_assert_eq!(calls.len(), model.calls.len());
        for (call, expected) in calls.iter().zip(&model.calls) {
            prop_assert_eq!(call.active(), expected.state == CallState::Pending);
            prop_assert_eq!(call.time(), ms(expected.time));
        }
        let listed = env.clock.delayed_calls();
        let ids: Vec<Option<usize>> = listed.iter().map(|c| env.id_of(c)).collect();
        let expected: Vec<Option<usize>> = model.pending().into_iter().map(Some).collect();
        prop_assert_eq!(ids, expected);
        let queue = &env.clock.queue;
        prop_assert_eq!(queue.next_time(), model.next_time().map(ms));
        // The stale count the purge relies on is exact.
        prop_assert_eq!(queue.stale_keys(), queue.stored_keys() - listed.len());
        Ok(())
    }

    fn action_strategy() -> impl Strategy<Value = Action> {
        prop_oneof![
            3 => Just(Action::Nothing),
            1 => any::<usize>().prop_map(Action::Cancel),
            1 => (any::<usize>(), 0..6u64).prop_map(|(j, d)| Action::Reset(j, d)),
            1 => (any::<usize>(), 0..6u64).prop_map(|(j, by)| Action::BringForward(j, by)),
            1 => (0..4u64).prop_map(Action::Schedule),
        ]
    }

    fn op_strategy() -> impl Strategy<Value = Op> {
        prop_oneof![
            5 => (0..10u64, action_strategy()).prop_map(|(d, a)| Op::Schedule(d, a)),
            2 => any::<usize>().prop_map(Op::Cancel),
            1 => (any::<usize>(), 0..10u64).prop_map(|(i, d)| Op::Reset(i, d)),
            1 => (any::<usize>(), 0..10u64).prop_map(|(i, by)| Op::Delay(i, by)),
            1 => (any::<usize>(), 0..10u64).prop_map(|(i, by)| Op::BringForward(i, by)),
            2 => (0..5u64).prop_map(Op::Advance),
            1 => (0..5u64).prop_map(Op::Tick),
            2 => Just(Op::Iterate),
            1 => (1..80usize, 0..10u64).prop_map(|(n, d)| Op::Churn(n, d)),
            1 => (any::<usize>(), 1..120usize, 0..10u64)
                .prop_map(|(i, n, d)| Op::Respin(i, n, d)),
        ]
    }

    proptest! {
        #[test]
        fn t03_t11_k13_firing_order_matches_the_model(
            ops in prop::collection::vec(op_strategy(), 1..60)
        ) {
            let env = Env::default();
            let mut model = Model::default();
            for op in ops {
                apply(&env, &mut model, op)?;
                compare(&env, &model)?;
            }
            // Drain: everything left runs in model order. A call that resets another can
            // push it past an advance, but then that advance fired it; calls made while
            // draining do nothing when fired, so there are at most twice as many passes as
            // calls.
            for _ in 0..2 * model.calls.len() + 1 {
                if model.pending().is_empty() {
                    break;
                }
                apply(&env, &mut model, Op::Advance(1_000))?;
                compare(&env, &model)?;
            }
            prop_assert!(env.clock.delayed_calls().is_empty());
            // Break the Env <-> call cycles of any call still holding its closure.
            for call in env.calls.borrow().iter() {
                let _ = call.cancel();
            }
        }
    }
}
