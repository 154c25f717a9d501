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

impl<E: Into<Failure>> CallResult for Result<(), E> {
    fn into_call_result(self) -> Result<(), Failure> {
        self.map_err(Into::into)
    }
}

/// Logs the error of a callable the reactor ran on someone's behalf; nobody else will see it.
pub(crate) fn log_result<R: CallResult>(what: &'static str, result: R) {
    if let Err(failure) = result.into_call_result() {
        log::error!("Unhandled error in {what}: {failure}");
    }
}

/// Wraps a user callable so that its error, if any, is logged under `what`.
#[allow(
    dead_code,
    reason = "for the reactor's boxed schedulers, which live elsewhere"
)]
pub(crate) fn logged<F, R>(what: &'static str, f: F) -> Box<dyn FnOnce()>
where
    F: FnOnce() -> R + 'static,
    R: CallResult,
{
    Box::new(move || log_result(what, f()))
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

struct QueueInner {
    clock: Rc<dyn Clock>,
    heap: RefCell<BinaryHeap<Reverse<Key>>>,
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
        let stored = self.heap.borrow().len() + self.incoming.borrow().len();
        if self.stale.get() > 50 && self.stale.get() * 2 > stored {
            self.purge();
        }
    }

    /// Drops every stale key. Runs only once stale keys are the majority, so its cost is
    /// paid for by the cancellations that made them (amortised O(1) per cancel, T-14).
    fn purge(&self) {
        self.heap.borrow_mut().retain(|k| k.0.is_current());
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
        let incoming = std::mem::take(self.incoming.get_mut());
        for key in heap.into_iter().map(|k| k.0).chain(incoming) {
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

#[allow(
    dead_code,
    reason = "now, run_due and next_time serve the reactor loop, which lives elsewhere"
)]
impl TimerQueue {
    pub(crate) fn new(clock: Rc<dyn Clock>) -> TimerQueue {
        TimerQueue {
            inner: Rc::new(QueueInner {
                clock,
                heap: RefCell::new(BinaryHeap::new()),
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

    /// Moves calls scheduled since the last admission into the heap.
    pub(crate) fn admit(&self) {
        let incoming = std::mem::take(&mut *self.inner.incoming.borrow_mut());
        if incoming.is_empty() {
            return;
        }
        let mut heap = self.inner.heap.borrow_mut();
        heap.extend(incoming.into_iter().map(Reverse));
    }

    /// Pops the earliest admitted call due at `now`, marking it called (K-14). Stale keys
    /// met on the way are discarded.
    fn pop_due(&self, now: u64) -> Option<Rc<CallInner>> {
        loop {
            let key = {
                let mut heap = self.inner.heap.borrow_mut();
                let top = heap.peek()?;
                if top.0.is_current() && top.0.time > now {
                    return None;
                }
                heap.pop()?.0
            };
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
        let admitted = {
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
        let incoming = self.inner.incoming.borrow();
        let mut keys: Vec<&Key> = heap
            .iter()
            .map(|k| &k.0)
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
        self.inner.heap.borrow().len() + self.inner.incoming.borrow().len()
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
