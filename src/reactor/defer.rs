//! [`Deferred`]: a result that is not there yet, with a chain of steps to run on it
//! (Twisted's `Deferred`), plus [`deferred_list`], [`first_success`], [`gather_results`]
//! and [`maybe_deferred`].
//!
//! # Shape
//!
//! A `Deferred<T>` is a cheap handle on shared state; cloning it makes another handle on
//! the same Deferred. Its result is a `Result<T, Failure>`. Each step of the chain takes
//! the current result and returns a [`Step`]: a value, a failure, or
//! [`Step::Wait`] with an inner `Deferred<T>` whose result the chain waits for (D-07).
//! Steps that keep the type are appended in place ([`Deferred::add_callback`] and
//! friends, as in Twisted); a step that changes the type consumes the handle and returns
//! a new `Deferred<U>` ([`Deferred::then`]).
//!
//! # How chains run
//!
//! Chains run in an explicit loop, never by recursion: when a Deferred's chain ends and
//! another Deferred is waiting on it, the loop hands the result over and goes on with the
//! waiting one (a trampoline). Nested Deferreds therefore resume in constant stack depth
//! however deep they are (D-09). No `RefCell` borrow is held while a step runs, so a step
//! may add steps to its own Deferred (they run after it returns, D-12), fire other
//! Deferreds, or cancel them.
//!
//! # Results handed on
//!
//! A result moves: when an outer Deferred waits on an inner one, or a [`deferred_list`]
//! records a success, the value leaves the inner Deferred (D-08). A step added to it
//! afterwards runs with a [`ChainingError::ResultTaken`] failure, the typed stand-in for
//! Twisted's `None`.
//!
//! # Unhandled failures and reference cycles
//!
//! When the last handle on a Deferred is dropped while its result is a failure, the
//! failure is logged at error level as `Unhandled error in Deferred: ...` (D-23). A step
//! that captures a strong handle on its own Deferred forms an `Rc` cycle until the step
//! runs; if it never runs (the Deferred never fires) the Deferred leaks and nothing is
//! logged. Capture a [`WeakDeferred`] ([`Deferred::downgrade`]) instead. A Deferred with
//! a pending [`Deferred::add_timeout`] timer, or made by
//! [`defer_later`](super::looping::defer_later), is held by its timer until the timer runs
//! or is cancelled; that is the point of a timeout, but it also means a scheduler dropped
//! with such a timer still pending leaks the pair.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::rc::{Rc, Weak};
use std::time::Duration;

use super::failure::Failure;
use super::time::Scheduler;

/// The result a Deferred carries: a value or a failure.
pub type Outcome<T> = Result<T, Failure>;

/// What a step of a chain returns.
pub enum Step<T: 'static> {
    /// Continue the chain with this value (callback path).
    Value(T),
    /// Continue the chain with this failure (errback path, D-04).
    Fail(Failure),
    /// Pause the chain until this inner Deferred fires, then continue with its result,
    /// which moves out of it (D-07, D-08).
    Wait(Deferred<T>),
}

impl<T: 'static> Step<T> {
    /// A failing step from any error convertible to a [`Failure`], so that errbacks and
    /// callbacks can write `Step::err(e)` instead of `Step::Fail(Failure::new(e))`.
    pub fn err(error: impl Into<Failure>) -> Step<T> {
        Step::Fail(error.into())
    }
}

impl<T: 'static> From<Result<T, Failure>> for Step<T> {
    fn from(outcome: Result<T, Failure>) -> Step<T> {
        match outcome {
            Ok(value) => Step::Value(value),
            Err(failure) => Step::Fail(failure),
        }
    }
}

impl<T: 'static> From<Deferred<T>> for Step<T> {
    fn from(inner: Deferred<T>) -> Step<T> {
        Step::Wait(inner)
    }
}

impl<T: fmt::Debug + 'static> fmt::Debug for Step<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Value(v) => f.debug_tuple("Value").field(v).finish(),
            Step::Fail(e) => f.debug_tuple("Fail").field(e).finish(),
            Step::Wait(d) => f.debug_tuple("Wait").field(d).finish(),
        }
    }
}

/// Firing a Deferred that has already been fired (D-01, D-19).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the Deferred has already been fired")]
pub struct AlreadyCalledError;

/// The failure a cancelled Deferred carries when its canceller did not fire it (D-17).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the Deferred was cancelled")]
pub struct CancelledError;

/// The failure a Deferred carries after [`Deferred::add_timeout`] expired (D-22).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the Deferred timed out after {timeout:?}")]
pub struct TimeoutError {
    /// The timeout that expired.
    pub timeout: Duration,
}

/// The first failure among a collection's inputs, and which input it came from
/// (fire-on-one-errback lists and [`gather_results`], D-25, D-28).
#[derive(Debug, Clone, thiserror::Error)]
#[error("the Deferred at index {index} failed: {failure}")]
pub struct FirstError {
    /// The input's own failure, the same object (D-29).
    pub failure: Failure,
    /// The input's position in the list given.
    pub index: usize,
}

/// Every input of a [`first_success`] failed; the failures in input order.
#[derive(Debug, Clone, thiserror::Error)]
#[error("all {} Deferreds failed", .failures.len())]
pub struct AllFailedError {
    /// Each input's failure, in input order.
    pub failures: Vec<Failure>,
}

/// Misuse of chaining that Twisted allows and Rust turns into a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChainingError {
    /// A step returned `Step::Wait` with the Deferred it belongs to, which could never
    /// fire (D-10).
    #[error("a callback returned the Deferred it is attached to")]
    OwnDeferred,
    /// The Deferred's result had already been handed on (to an outer Deferred, a
    /// [`deferred_list`], or another waiter), so nothing is left for this consumer (D-08).
    #[error("the Deferred's result was already handed on to another consumer")]
    ResultTaken,
}

macro_rules! into_failure {
    ($($t:ty),*) => {$(
        impl From<$t> for Failure {
            fn from(error: $t) -> Failure {
                Failure::new(error)
            }
        }
    )*};
}
into_failure!(
    AlreadyCalledError,
    CancelledError,
    TimeoutError,
    FirstError,
    AllFailedError,
    ChainingError
);

/// A step stored in the chain. `None` means the step consumed the result (a collection
/// moved it away), leaving the Deferred with nothing.
type Entry<T> = Box<dyn FnOnce(Outcome<T>) -> Option<Step<T>>>;
type Head<T> = Box<dyn FnOnce() -> Step<T>>;
type Canceller<T> = Box<dyn FnOnce(&Deferred<T>)>;

struct State<T: 'static> {
    /// Fired (or waiting on the source it was made from, for `then`).
    called: bool,
    /// The current result; `None` while unfired, while waiting, and once taken.
    result: Option<Outcome<T>>,
    /// The result was moved away (handed on or consumed).
    taken: bool,
    /// A step to run before the chain, producing the first result (used by `then` and
    /// by firing with a `Step`).
    head: Option<Head<T>>,
    chain: VecDeque<Entry<T>>,
    paused: u32,
    /// A step of this Deferred is running further up the stack.
    running: bool,
    /// Paused until an inner Deferred hands its result over (D-07).
    waiting: bool,
    /// The Deferred waited on, for cancel (D-20). Weak: the inner one points back
    /// strongly through its `parent`.
    waiting_on: Option<Weak<dyn Cancel>>,
    /// Who receives the result when the chain is done.
    parent: Option<Box<dyn Parent<T>>>,
    canceller: Option<Canceller<T>>,
    /// Swallow the next firing: cancelled without a canceller (D-19).
    swallow_next: bool,
}

impl<T: 'static> State<T> {
    fn new() -> State<T> {
        State {
            called: false,
            result: None,
            taken: false,
            head: None,
            chain: VecDeque::new(),
            paused: 0,
            running: false,
            waiting: false,
            waiting_on: None,
            parent: None,
            canceller: None,
            swallow_next: false,
        }
    }
}

struct Inner<T: 'static> {
    state: RefCell<State<T>>,
}

/// A type-erased Deferred the trampoline can run: `run` advances the chain as far as it
/// can and returns the Deferred to continue with (the one it handed its result to).
trait Run {
    fn run(self: Rc<Self>) -> Option<Rc<dyn Run>>;
}

/// A type-erased Deferred that can be cancelled (for D-20 across `then`).
trait Cancel {
    fn cancel_dyn(self: Rc<Self>);
}

/// The receiver of a Deferred's final result.
trait Parent<T> {
    /// Stores the result in the receiver and returns it, to be run next.
    fn receive(self: Box<Self>, outcome: Outcome<T>) -> Rc<dyn Run>;
}

/// An outer Deferred of the same type waiting on this one (`Step::Wait`).
struct SameLink<T: 'static>(Rc<Inner<T>>);

impl<T: 'static> Parent<T> for SameLink<T> {
    fn receive(self: Box<Self>, outcome: Outcome<T>) -> Rc<dyn Run> {
        {
            let mut s = self.0.state.borrow_mut();
            s.result = Some(outcome);
            s.waiting = false;
            s.waiting_on = None;
        }
        self.0
    }
}

/// A Deferred made by `then`: its first result is `f` applied to this one's result.
struct ThenLink<T, U: 'static> {
    out: Rc<Inner<U>>,
    f: Box<dyn FnOnce(Outcome<T>) -> Step<U>>,
}

impl<T: 'static, U: 'static> Parent<T> for ThenLink<T, U> {
    fn receive(self: Box<Self>, outcome: Outcome<T>) -> Rc<dyn Run> {
        let ThenLink { out, f } = *self;
        {
            let mut s = out.state.borrow_mut();
            s.head = Some(Box::new(move || f(outcome)));
            s.waiting = false;
            s.waiting_on = None;
        }
        out
    }
}

enum Action<T: 'static> {
    Head(Head<T>),
    Entry(Entry<T>, Outcome<T>),
    HandOff(Box<dyn Parent<T>>, Outcome<T>),
}

impl<T: 'static> Inner<T> {
    /// Runs one user step with the `running` flag up, so that re-entrant adds and fires
    /// only queue work for the loop below (D-06, D-12).
    fn run_step(&self, f: impl FnOnce() -> Option<Step<T>>) -> Option<Step<T>> {
        self.state.borrow_mut().running = true;
        let step = f();
        self.state.borrow_mut().running = false;
        step
    }

    /// Stores what a step returned. Returns the inner Deferred to run next when the step
    /// asked to wait.
    fn settle(self: &Rc<Self>, step: Option<Step<T>>) -> Option<Rc<dyn Run>> {
        match step {
            None => {
                let mut s = self.state.borrow_mut();
                s.result = None;
                s.taken = true;
                None
            }
            Some(Step::Value(v)) => {
                self.state.borrow_mut().result = Some(Ok(v));
                None
            }
            Some(Step::Fail(f)) => {
                self.state.borrow_mut().result = Some(Err(f));
                None
            }
            Some(Step::Wait(inner)) => self.wait_on(inner),
        }
    }

    fn wait_on(self: &Rc<Self>, inner: Deferred<T>) -> Option<Rc<dyn Run>> {
        if Rc::ptr_eq(&inner.inner, self) {
            self.state.borrow_mut().result = Some(Err(ChainingError::OwnDeferred.into()));
            return None;
        }
        let link: Box<dyn Parent<T>> = Box::new(SameLink(self.clone()));
        let rejected = {
            let mut is = inner.inner.state.borrow_mut();
            if is.parent.is_some() {
                Some(link)
            } else {
                is.parent = Some(link);
                None
            }
        };
        if rejected.is_some() {
            // Someone already waits on `inner`: its result is promised elsewhere.
            self.state.borrow_mut().result = Some(Err(ChainingError::ResultTaken.into()));
            drop(rejected);
            return None;
        }
        {
            let mut s = self.state.borrow_mut();
            s.waiting = true;
            let weak: Weak<dyn Cancel> = Rc::downgrade(&inner.inner) as Weak<dyn Cancel>;
            s.waiting_on = Some(weak);
        }
        // Run the inner one next: if it already has a result, it hands it straight back
        // and this chain continues at once (D-07); if not, the trampoline stops here.
        Some(inner.inner.clone() as Rc<dyn Run>)
    }
}

impl<T: 'static> Run for Inner<T> {
    fn run(self: Rc<Self>) -> Option<Rc<dyn Run>> {
        loop {
            let action = {
                let mut s = self.state.borrow_mut();
                if s.running || s.paused > 0 || s.waiting {
                    return None;
                }
                if let Some(head) = s.head.take() {
                    Action::Head(head)
                } else {
                    let current = match s.result.take() {
                        Some(outcome) => outcome,
                        None if s.taken && (!s.chain.is_empty() || s.parent.is_some()) => {
                            Err(Failure::new(ChainingError::ResultTaken))
                        }
                        None => return None,
                    };
                    if let Some(entry) = s.chain.pop_front() {
                        s.taken = false;
                        Action::Entry(entry, current)
                    } else if let Some(parent) = s.parent.take() {
                        s.taken = true;
                        Action::HandOff(parent, current)
                    } else {
                        s.result = Some(current);
                        return None;
                    }
                }
            };
            let step = match action {
                Action::HandOff(parent, outcome) => return Some(parent.receive(outcome)),
                Action::Head(head) => self.run_step(|| Some(head())),
                Action::Entry(entry, outcome) => self.run_step(|| entry(outcome)),
            };
            if let Some(next) = self.settle(step) {
                return Some(next);
            }
        }
    }
}

impl<T: 'static> Cancel for Inner<T> {
    fn cancel_dyn(self: Rc<Self>) {
        Deferred { inner: self }.cancel();
    }
}

/// Runs chains until none can go further, following hand-offs from inner to outer
/// Deferreds in a loop rather than by recursion (D-09).
fn drive(start: Rc<dyn Run>) {
    let mut next = Some(start);
    while let Some(current) = next {
        next = current.run();
    }
}

impl<T: 'static> Drop for Inner<T> {
    fn drop(&mut self) {
        let s = self.state.get_mut();
        if let Some(Err(failure)) = &s.result {
            log::error!("Unhandled error in Deferred: {}", failure);
        }
        // Nothing left that could hold another Deferred (the common end of a fired
        // one, whose chain has run): dropped in place, without boxing it for the queue.
        let nothing_nested = s.chain.is_empty()
            && s.parent.is_none()
            && s.canceller.is_none()
            && s.head.is_none()
            && match &s.result {
                None => true,
                Some(Ok(_)) => !std::mem::needs_drop::<T>(),
                Some(Err(_)) => false,
            };
        if nothing_nested {
            return;
        }
        let garbage: Box<dyn Any> = Box::new((
            std::mem::take(&mut s.chain),
            s.parent.take(),
            s.canceller.take(),
            s.head.take(),
            s.result.take(),
        ));
        drop_later(garbage);
    }
}

thread_local! {
    /// Deferred contents waiting to be dropped; `Some` while a drop is being unwound.
    static DROP_QUEUE: RefCell<Option<Vec<Box<dyn Any>>>> = const { RefCell::new(None) };
}

/// Drops a dead Deferred's contents without recursion: dropping a long chain of nested
/// Deferreds (each holding the outer one) would otherwise recurse once per level.
fn drop_later(garbage: Box<dyn Any>) {
    let mut slot = Some(garbage);
    let owner = DROP_QUEUE
        .try_with(|queue| {
            let mut queue = queue.borrow_mut();
            match queue.as_mut() {
                Some(pending) => {
                    pending.extend(slot.take());
                    false
                }
                None => {
                    *queue = Some(Vec::new());
                    true
                }
            }
        })
        .unwrap_or(false);
    drop(slot);
    if !owner {
        return;
    }
    loop {
        let next = DROP_QUEUE
            .try_with(|queue| queue.borrow_mut().as_mut().and_then(Vec::pop))
            .ok()
            .flatten();
        match next {
            Some(garbage) => drop(garbage),
            None => break,
        }
    }
    let _ = DROP_QUEUE.try_with(|queue| queue.borrow_mut().take());
}

/// A result that is not there yet, and the chain of steps to run on it (D-01..D-23).
///
/// Cloning makes another handle on the same Deferred.
pub struct Deferred<T: 'static> {
    inner: Rc<Inner<T>>,
}

impl<T: 'static> Clone for Deferred<T> {
    fn clone(&self) -> Self {
        Deferred {
            inner: self.inner.clone(),
        }
    }
}

impl<T: 'static> fmt::Debug for Deferred<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.inner.state.try_borrow() {
            Ok(s) => f
                .debug_struct("Deferred")
                .field("called", &s.called)
                .field(
                    "result",
                    &match &s.result {
                        None => "none",
                        Some(Ok(_)) => "value",
                        Some(Err(_)) => "failure",
                    },
                )
                .field("paused", &s.paused)
                .field("waiting", &s.waiting)
                .field("steps", &s.chain.len())
                .finish(),
            Err(_) => f.write_str("Deferred { <busy> }"),
        }
    }
}

impl<T: 'static> Default for Deferred<T> {
    fn default() -> Self {
        Deferred::new()
    }
}

impl<T: 'static> Deferred<T> {
    fn from_state(state: State<T>) -> Deferred<T> {
        Deferred {
            inner: Rc::new(Inner {
                state: RefCell::new(state),
            }),
        }
    }

    /// An unfired Deferred with no canceller (D-01).
    pub fn new() -> Deferred<T> {
        Deferred::from_state(State::new())
    }

    /// An unfired Deferred whose `cancel()` calls `canceller` once with the Deferred, so
    /// that the producer can stop its work and, if it likes, fire it (D-17, D-18).
    pub fn with_canceller(canceller: impl FnOnce(&Deferred<T>) + 'static) -> Deferred<T> {
        let mut state = State::new();
        state.canceller = Some(Box::new(canceller));
        Deferred::from_state(state)
    }

    /// A Deferred already fired with `value` (D-14).
    pub fn succeed(value: T) -> Deferred<T> {
        let mut state = State::new();
        state.called = true;
        state.result = Some(Ok(value));
        Deferred::from_state(state)
    }

    /// A Deferred already fired with `failure` (D-14).
    pub fn fail(failure: impl Into<Failure>) -> Deferred<T> {
        let mut state = State::new();
        state.called = true;
        state.result = Some(Err(failure.into()));
        Deferred::from_state(state)
    }

    /// A weak handle, for steps that need to reach their own Deferred without keeping
    /// it alive (a strong one would form an `Rc` cycle, hiding D-23 reports).
    pub fn downgrade(&self) -> WeakDeferred<T> {
        WeakDeferred {
            inner: Rc::downgrade(&self.inner),
        }
    }

    /// Fires the Deferred with a value and runs the chain (D-01, D-03).
    pub fn callback(&self, value: T) -> Result<(), AlreadyCalledError> {
        self.fire(Ok(value))
    }

    /// Fires the Deferred with a failure; a plain error is wrapped (D-01, D-16).
    pub fn errback(&self, failure: impl Into<Failure>) -> Result<(), AlreadyCalledError> {
        self.fire(Err(failure.into()))
    }

    fn fire(&self, outcome: Outcome<T>) -> Result<(), AlreadyCalledError> {
        let canceller = {
            let mut s = self.inner.state.borrow_mut();
            if s.called {
                if s.swallow_next {
                    s.swallow_next = false;
                    return Ok(());
                }
                return Err(AlreadyCalledError);
            }
            s.called = true;
            s.result = Some(outcome);
            s.canceller.take()
        };
        // The canceller can no longer run; release what it holds, outside the borrow.
        drop(canceller);
        drive(self.inner.clone());
        Ok(())
    }

    /// Fires the Deferred with what a step would return: a value, a failure, or an inner
    /// Deferred to wait on.
    pub(crate) fn resolve(&self, step: Step<T>) -> Result<(), AlreadyCalledError> {
        let canceller = {
            let mut s = self.inner.state.borrow_mut();
            if s.called {
                if s.swallow_next {
                    s.swallow_next = false;
                    return Ok(());
                }
                return Err(AlreadyCalledError);
            }
            s.called = true;
            s.head = Some(Box::new(move || step));
            s.canceller.take()
        };
        drop(canceller);
        drive(self.inner.clone());
        Ok(())
    }

    fn add_entry(&self, entry: Entry<T>) -> &Self {
        self.inner.state.borrow_mut().chain.push_back(entry);
        // Runs at once if fired and free; otherwise the entry waits its turn (D-06).
        drive(self.inner.clone());
        self
    }

    /// Appends a (callback, errback) pair: `cb` gets values, `eb` failures. A failure
    /// returned by `cb` goes to later pairs, never to this `eb` (D-02, D-05).
    pub fn add_callbacks(
        &self,
        cb: impl FnOnce(T) -> Step<T> + 'static,
        eb: impl FnOnce(Failure) -> Step<T> + 'static,
    ) -> &Self {
        self.add_entry(Box::new(move |outcome| {
            Some(match outcome {
                Ok(value) => cb(value),
                Err(failure) => eb(failure),
            })
        }))
    }

    /// Appends a callback; failures pass it by (D-02).
    pub fn add_callback(&self, cb: impl FnOnce(T) -> Step<T> + 'static) -> &Self {
        self.add_entry(Box::new(move |outcome| {
            Some(match outcome {
                Ok(value) => cb(value),
                Err(failure) => Step::Fail(failure),
            })
        }))
    }

    /// Appends an errback; values pass it by (D-02).
    pub fn add_errback(&self, eb: impl FnOnce(Failure) -> Step<T> + 'static) -> &Self {
        self.add_entry(Box::new(move |outcome| {
            Some(match outcome {
                Ok(value) => Step::Value(value),
                Err(failure) => eb(failure),
            })
        }))
    }

    /// Appends one step for both paths (D-02).
    pub fn add_both(&self, f: impl FnOnce(Outcome<T>) -> Step<T> + 'static) -> &Self {
        self.add_entry(Box::new(move |outcome| Some(f(outcome))))
    }

    /// A type-changing step: consumes this handle and returns a Deferred that fires with
    /// what `f` makes of this one's final result. Nothing can be added to this chain
    /// through the consumed handle, so the hand-over (D-08) is unobservable. Cancelling
    /// the new Deferred cancels this one (D-20).
    pub fn then<U: 'static>(self, f: impl FnOnce(Outcome<T>) -> Step<U> + 'static) -> Deferred<U> {
        let mut state = State::<U>::new();
        state.called = true;
        state.waiting = true;
        let source: Weak<dyn Cancel> = Rc::downgrade(&self.inner) as Weak<dyn Cancel>;
        state.waiting_on = Some(source);
        let out = Deferred::from_state(state);
        let link: Box<dyn Parent<T>> = Box::new(ThenLink {
            out: out.inner.clone(),
            f: Box::new(f),
        });
        let rejected = {
            let mut s = self.inner.state.borrow_mut();
            if s.parent.is_some() {
                Some(link)
            } else {
                s.parent = Some(link);
                None
            }
        };
        if rejected.is_some() {
            drop(rejected);
            let mut s = out.inner.state.borrow_mut();
            s.waiting = false;
            s.waiting_on = None;
            s.result = Some(Err(ChainingError::ResultTaken.into()));
        } else {
            drive(self.inner.clone());
        }
        out
    }

    /// True once fired (by `callback`, `errback`, a canceller, or `succeed`/`fail`).
    pub fn is_called(&self) -> bool {
        self.inner.state.borrow().called
    }

    /// Cancels the Deferred (D-17..D-21): an unfired one runs its canceller once and, if
    /// that did not fire it, errbacks with [`CancelledError`]; a fired one waiting on an
    /// inner Deferred cancels the inner one; anything else is left alone.
    pub fn cancel(&self) {
        enum Act<T: 'static> {
            Canceller(Canceller<T>),
            NoCanceller,
            Inner(Rc<dyn Cancel>),
            Nothing,
        }
        let act = {
            let mut s = self.inner.state.borrow_mut();
            if !s.called {
                match s.canceller.take() {
                    Some(canceller) => Act::Canceller(canceller),
                    None => {
                        s.swallow_next = true;
                        Act::NoCanceller
                    }
                }
            } else if s.waiting {
                match s.waiting_on.as_ref().and_then(Weak::upgrade) {
                    Some(inner) => Act::Inner(inner),
                    None => Act::Nothing,
                }
            } else {
                Act::Nothing
            }
        };
        match act {
            Act::Canceller(canceller) => {
                canceller(self);
                if !self.is_called() {
                    let _ = self.errback(CancelledError);
                }
            }
            Act::NoCanceller => {
                let _ = self.fire(Err(CancelledError.into()));
            }
            Act::Inner(inner) => inner.cancel_dyn(),
            Act::Nothing => {}
        }
    }

    /// Holds the chain: no step runs until as many `unpause` calls as `pause` calls
    /// (D-13).
    pub fn pause(&self) {
        let mut s = self.inner.state.borrow_mut();
        s.paused = s.paused.saturating_add(1);
    }

    /// Undoes one `pause`; at zero the chain resumes with the current result (D-13).
    /// Extra calls are ignored.
    pub fn unpause(&self) {
        let resume = {
            let mut s = self.inner.state.borrow_mut();
            s.paused = s.paused.saturating_sub(1);
            s.paused == 0
        };
        if resume {
            drive(self.inner.clone());
        }
    }

    /// Cancels the Deferred if it has not fired after `timeout` on `scheduler` (D-22).
    ///
    /// Pairs added before this call see the cancellation (a [`CancelledError`] or the
    /// canceller's own result); a `CancelledError` reaching this point becomes a
    /// [`TimeoutError`] for pairs added after. Firing in time cancels the timer.
    pub fn add_timeout(&self, timeout: Duration, scheduler: &dyn Scheduler) -> &Self {
        let timed_out = Rc::new(Cell::new(false));
        let flag = timed_out.clone();
        let target = self.clone();
        let call = scheduler.schedule(
            timeout,
            Box::new(move || {
                flag.set(true);
                target.cancel();
            }),
        );
        self.add_both(move |outcome| {
            // Already called or cancelled when the timer itself fired: nothing to undo.
            let _ = call.cancel();
            match outcome {
                Err(failure) if timed_out.get() && failure.check::<CancelledError>() => {
                    Step::err(TimeoutError { timeout })
                }
                other => other.into(),
            }
        })
    }
}

/// A handle that does not keep its Deferred alive.
pub struct WeakDeferred<T: 'static> {
    inner: Weak<Inner<T>>,
}

impl<T: 'static> Clone for WeakDeferred<T> {
    fn clone(&self) -> Self {
        WeakDeferred {
            inner: self.inner.clone(),
        }
    }
}

impl<T: 'static> fmt::Debug for WeakDeferred<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WeakDeferred")
    }
}

impl<T: 'static> WeakDeferred<T> {
    /// The Deferred, if some strong handle still exists.
    pub fn upgrade(&self) -> Option<Deferred<T>> {
        self.inner.upgrade().map(|inner| Deferred { inner })
    }
}

/// Calls `f` now and always returns a Deferred: a value gives a fired one, a failure a
/// failed one, and a Deferred is returned as it is (D-15). Panics are not caught.
pub fn maybe_deferred<T: 'static>(f: impl FnOnce() -> Step<T>) -> Deferred<T> {
    match f() {
        Step::Value(value) => Deferred::succeed(value),
        Step::Fail(failure) => Deferred::fail(failure),
        Step::Wait(inner) => inner,
    }
}

/// Options of [`deferred_list`] and [`first_success`] (Twisted's keyword arguments).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeferredListOptions {
    /// Errback with [`FirstError`] on the first failing input instead of waiting for
    /// all (D-25).
    pub fire_on_one_errback: bool,
    /// Consume each input's failure once recorded, so it is not reported as unhandled
    /// (D-26). Without it, a failed input keeps its failure.
    pub consume_errors: bool,
}

/// Attaches a recording step to every input. Each value moves into the collection (the
/// input is left with nothing, as after a hand-over); each failure is recorded and,
/// unless `consume_errors`, left on the input too (D-26).
fn observe_each<T: 'static>(
    inputs: Vec<Deferred<T>>,
    consume_errors: bool,
    record: Rc<dyn Fn(usize, Outcome<T>)>,
) {
    for (index, input) in inputs.into_iter().enumerate() {
        let record = record.clone();
        input.add_entry(Box::new(move |outcome| {
            let left = match &outcome {
                Ok(_) => None,
                Err(_) if consume_errors => None,
                Err(failure) => Some(Step::Fail(failure.clone())),
            };
            record(index, outcome);
            left
        }));
    }
}

/// A canceller that cancels each input still alive (D-27). Weak handles: the inputs'
/// recording steps hold the collection, not the other way round.
fn cancel_inputs<T: 'static, U: 'static>(
    inputs: &[Deferred<T>],
) -> impl FnOnce(&Deferred<U>) + use<T, U> {
    let weak: Vec<WeakDeferred<T>> = inputs.iter().map(Deferred::downgrade).collect();
    move |_| {
        for input in weak.iter().filter_map(WeakDeferred::upgrade) {
            input.cancel();
        }
    }
}

/// Waits for every input and fires with their results in input order (D-24..D-27).
///
/// Inputs already fired are recorded at once; an empty list fires at once with `[]`.
/// Successful values move into the list; a failure stays on its input (to be handled
/// there or reported, D-23) unless `consume_errors`. With `fire_on_one_errback` the first
/// failure errbacks the list with [`FirstError`]. Cancelling the unfired list cancels
/// every input; cancelling a fired one does nothing.
pub fn deferred_list<T: 'static>(
    inputs: Vec<Deferred<T>>,
    options: DeferredListOptions,
) -> Deferred<Vec<Outcome<T>>> {
    let out = Deferred::with_canceller(cancel_inputs(&inputs));
    if inputs.is_empty() {
        let _ = out.callback(Vec::new());
        return out;
    }
    struct ListState<T: 'static> {
        results: Vec<Option<Outcome<T>>>,
        remaining: usize,
        out: Option<Deferred<Vec<Outcome<T>>>>,
    }
    let state = Rc::new(RefCell::new(ListState {
        results: inputs.iter().map(|_| None).collect(),
        remaining: inputs.len(),
        out: Some(out.clone()),
    }));
    let record = move |index: usize, outcome: Outcome<T>| {
        enum Fire<T: 'static> {
            Nothing(Option<Outcome<T>>),
            All(Deferred<Vec<Outcome<T>>>, Vec<Outcome<T>>),
            First(Deferred<Vec<Outcome<T>>>, FirstError),
        }
        let fire = {
            let mut st = state.borrow_mut();
            match (&outcome, st.out.is_some()) {
                (_, false) => Fire::Nothing(Some(outcome)),
                (Err(failure), true) if options.fire_on_one_errback => {
                    let error = FirstError {
                        failure: failure.clone(),
                        index,
                    };
                    match st.out.take() {
                        Some(out) => Fire::First(out, error),
                        None => Fire::Nothing(Some(outcome)),
                    }
                }
                (_, true) => {
                    if let Some(slot) = st.results.get_mut(index) {
                        *slot = Some(outcome);
                    }
                    st.remaining = st.remaining.saturating_sub(1);
                    match (st.remaining, st.out.take()) {
                        (0, Some(out)) => {
                            let results = std::mem::take(&mut st.results);
                            Fire::All(out, results.into_iter().flatten().collect())
                        }
                        (_, out) => {
                            st.out = out;
                            Fire::Nothing(None)
                        }
                    }
                }
            }
        };
        match fire {
            // Dropped here, outside the borrow: a value may own other Deferreds.
            Fire::Nothing(leftover) => drop(leftover),
            Fire::All(out, results) => {
                let _ = out.callback(results);
            }
            Fire::First(out, error) => {
                let _ = out.errback(error);
            }
        }
    };
    observe_each(inputs, options.consume_errors, Rc::new(record));
    out
}

/// Fires with the first successful input's value and index (Twisted's
/// `fireOnOneCallback`, D-25). With no inputs it never fires. When every input failed it
/// errbacks with [`AllFailedError`]; with `fire_on_one_errback` the first failure
/// errbacks it with [`FirstError`] instead. Values of later successes are dropped;
/// failures are treated as in [`deferred_list`].
pub fn first_success<T: 'static>(
    inputs: Vec<Deferred<T>>,
    options: DeferredListOptions,
) -> Deferred<(T, usize)> {
    let out = Deferred::with_canceller(cancel_inputs(&inputs));
    if inputs.is_empty() {
        return out;
    }
    struct FirstState<T: 'static> {
        failures: Vec<Option<Failure>>,
        remaining: usize,
        out: Option<Deferred<(T, usize)>>,
    }
    let state = Rc::new(RefCell::new(FirstState {
        failures: inputs.iter().map(|_| None).collect(),
        remaining: inputs.len(),
        out: Some(out.clone()),
    }));
    let record = move |index: usize, outcome: Outcome<T>| {
        let (fire, leftover) = {
            let mut st = state.borrow_mut();
            if st.out.is_none() {
                (None, Some(outcome))
            } else {
                match outcome {
                    Ok(value) => (st.out.take().map(|out| (out, Ok((value, index)))), None),
                    Err(failure) if options.fire_on_one_errback => {
                        let error = FirstError { failure, index };
                        (st.out.take().map(|out| (out, Err(error.into()))), None)
                    }
                    Err(failure) => {
                        if let Some(slot) = st.failures.get_mut(index) {
                            *slot = Some(failure);
                        }
                        st.remaining = st.remaining.saturating_sub(1);
                        if st.remaining == 0 {
                            let failures = std::mem::take(&mut st.failures);
                            let error = AllFailedError {
                                failures: failures.into_iter().flatten().collect(),
                            };
                            (st.out.take().map(|out| (out, Err(error.into()))), None)
                        } else {
                            (None, None)
                        }
                    }
                }
            }
        };
        // Dropped here, outside the borrow: a value may own other Deferreds.
        drop(leftover);
        if let Some((out, first)) = fire {
            let _ = out.fire(first);
        }
    };
    observe_each(inputs, options.consume_errors, Rc::new(record));
    out
}

/// Fires with the plain values of every input, in input order, or errbacks on the first
/// failure with [`FirstError`] carrying that failure and its index (D-28).
/// `consume_errors` as in [`deferred_list`]; cancelling cancels every input (D-27).
pub fn gather_results<T: 'static>(
    inputs: Vec<Deferred<T>>,
    consume_errors: bool,
) -> Deferred<Vec<T>> {
    let options = DeferredListOptions {
        fire_on_one_errback: true,
        consume_errors,
    };
    deferred_list(inputs, options).then(|outcome| match outcome {
        Ok(results) => results.into_iter().collect::<Outcome<Vec<T>>>().into(),
        Err(failure) => Step::Fail(failure),
    })
}

/// Log capture for tests: a `log::Log` installed once per test binary that records each
/// thread's messages separately, so parallel tests do not see each other's lines.
#[cfg(test)]
pub(crate) mod capture_log {
    use std::cell::RefCell;
    use std::sync::Once;

    struct Capture;

    static CAPTURE: Capture = Capture;
    static INSTALL: Once = Once::new();

    thread_local! {
        static LINES: RefCell<Vec<(log::Level, String)>> = const { RefCell::new(Vec::new()) };
    }

    impl log::Log for Capture {
        fn enabled(&self, _: &log::Metadata<'_>) -> bool {
            true
        }

        fn log(&self, record: &log::Record<'_>) {
            let line = record.args().to_string();
            let _ = LINES.try_with(|lines| lines.borrow_mut().push((record.level(), line)));
        }

        fn flush(&self) {}
    }

    /// Installs the logger (once) and clears this thread's captured lines.
    pub(crate) fn start() {
        INSTALL.call_once(|| {
            if log::set_logger(&CAPTURE).is_ok() {
                log::set_max_level(log::LevelFilter::Trace);
            }
        });
        LINES.with(|lines| lines.borrow_mut().clear());
    }

    /// Takes the lines this thread logged since `start` or the last `take`.
    pub(crate) fn take() -> Vec<(log::Level, String)> {
        LINES.with(|lines| std::mem::take(&mut *lines.borrow_mut()))
    }

    /// Takes this thread's error-level lines that report unhandled Deferred failures.
    pub(crate) fn unhandled() -> Vec<String> {
        take()
            .into_iter()
            .filter(|(level, line)| {
                *level == log::Level::Error && line.starts_with("Unhandled error in Deferred:")
            })
            .map(|(_, line)| line)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reactor::failure::MessageError;
    use crate::reactor::time::FakeClock;
    use std::io;

    type Seen<T> = Rc<RefCell<Vec<Result<T, String>>>>;

    /// Records every result reaching this point of the chain and passes it on.
    fn watch<T: Clone + 'static>(d: &Deferred<T>) -> Seen<T> {
        let seen: Seen<T> = Rc::default();
        let sink = seen.clone();
        d.add_both(move |outcome| {
            sink.borrow_mut()
                .push(outcome.clone().map_err(|f| f.error_message()));
            outcome.into()
        });
        seen
    }

    /// Records the result reaching this point and handles it (a failure stops here).
    fn settle<T: Clone + Default + 'static>(d: &Deferred<T>) -> Seen<T> {
        let seen: Seen<T> = Rc::default();
        let sink = seen.clone();
        d.add_both(move |outcome| {
            sink.borrow_mut()
                .push(outcome.map_err(|f| f.error_message()));
            Step::Value(T::default())
        });
        seen
    }

    fn log() -> Rc<RefCell<Vec<String>>> {
        Rc::default()
    }

    fn push(log: &Rc<RefCell<Vec<String>>>, line: &str) {
        log.borrow_mut().push(line.to_string());
    }

    /// Makes `outer`'s chain return `inner` from a callback, so it waits on it (D-07).
    fn wait_on<T: 'static>(outer: &Deferred<T>, inner: &Deferred<T>) {
        let inner = inner.clone();
        outer.add_callback(move |_| Step::Wait(inner));
    }

    /// List options that handle the inputs' failures, so none is logged as unhandled.
    fn consuming() -> DeferredListOptions {
        DeferredListOptions {
            consume_errors: true,
            ..Default::default()
        }
    }

    /// Handles the [`FirstError`] a combined Deferred errbacks with, keeping what `view`
    /// takes from it (`None` if it failed with anything else).
    fn on_first_error<T: 'static, R: 'static>(
        d: &Deferred<Vec<T>>,
        view: impl FnOnce(&FirstError) -> R + 'static,
    ) -> Rc<RefCell<Option<R>>> {
        let seen = Rc::new(RefCell::new(None));
        let s = seen.clone();
        d.add_errback(move |f| {
            *s.borrow_mut() = f.downcast_ref::<FirstError>().map(view);
            Step::Value(Vec::new())
        });
        seen
    }

    /// An errback that recovers from I/O errors only (D-30) and passes others on.
    fn trap_io_errors(d: &Deferred<i32>) {
        d.add_errback(|f| match f.trap::<io::Error>() {
            Ok(_) => Step::Value(-1),
            Err(other) => Step::Fail(other),
        });
    }

    #[test]
    fn d01_fires_once_and_a_second_firing_is_rejected() {
        let d = Deferred::new();
        let seen = watch(&d);
        assert!(!d.is_called());
        assert_eq!(d.callback(1), Ok(()));
        assert!(d.is_called());
        assert_eq!(d.callback(2), Err(AlreadyCalledError));
        assert_eq!(d.errback(Failure::msg("late")), Err(AlreadyCalledError));
        assert_eq!(*seen.borrow(), vec![Ok(1)]);
        // The chain is untouched: a step added now still sees the first result.
        assert_eq!(*watch(&d).borrow(), vec![Ok(1)]);
    }

    #[test]
    fn d02_pairs_run_in_order_and_adders_return_the_same_deferred() {
        let d = Deferred::new();
        let order = log();
        let (a, b, c, e, f) = (
            order.clone(),
            order.clone(),
            order.clone(),
            order.clone(),
            order.clone(),
        );
        let returned: *const Deferred<i32> = d
            .add_callback(move |v| {
                push(&a, "callback");
                Step::Value(v)
            })
            .add_errback(move |f| {
                push(&b, "errback");
                Step::Fail(f)
            })
            .add_both(move |o| {
                push(&c, "both");
                o.into()
            })
            .add_callbacks(
                move |v| {
                    push(&e, "pair-callback");
                    Step::Value(v)
                },
                move |failure| {
                    push(&f, "pair-errback");
                    Step::Fail(failure)
                },
            );
        assert!(std::ptr::eq(returned, &d));
        d.callback(1).unwrap();
        assert_eq!(*order.borrow(), ["callback", "both", "pair-callback"]);
    }

    #[test]
    fn d03_each_step_gets_the_previous_result() {
        let d = Deferred::new();
        d.add_callback(|v: i32| Step::Value(v + 1))
            .add_callback(|v| Step::Value(v * 10));
        let seen = watch(&d);
        d.callback(4).unwrap();
        assert_eq!(*seen.borrow(), vec![Ok(50)]);
    }

    #[test]
    fn d04_failures_switch_paths_and_errbacks_can_recover() {
        let d = Deferred::new();
        let order = log();
        let (a, b, c) = (order.clone(), order.clone(), order.clone());
        d.add_callback(|_: i32| Step::err(MessageError("bad".into())))
            .add_callback(move |v| {
                push(&a, "skipped callback");
                Step::Value(v)
            })
            .add_errback(move |f| {
                push(&b, &format!("errback {}", f.error_message()));
                Step::Fail(f)
            })
            .add_errback(|_| Step::Value(7))
            .add_callback(move |v| {
                push(&c, &format!("recovered {v}"));
                Step::Value(v)
            });
        d.callback(1).unwrap();
        assert_eq!(*order.borrow(), ["errback bad", "recovered 7"]);
    }

    #[test]
    fn d05_a_pairs_errback_never_sees_its_own_callbacks_failure() {
        let d = Deferred::new();
        let order = log();
        let (a, b) = (order.clone(), order.clone());
        d.add_callbacks(
            |_: i32| Step::err(MessageError("from callback".into())),
            move |f| {
                push(&a, "same pair");
                Step::Fail(f)
            },
        )
        .add_errback(move |f| {
            push(&b, &format!("later {}", f.error_message()));
            Step::Value(0)
        });
        d.callback(1).unwrap();
        assert_eq!(*order.borrow(), ["later from callback"]);
    }

    #[test]
    fn d06_adding_to_a_fired_deferred_runs_synchronously() {
        let d = Deferred::succeed(3);
        let ran = Rc::new(Cell::new(0));
        let r = ran.clone();
        d.add_callback(move |v| {
            r.set(v);
            Step::Value(v)
        });
        assert_eq!(ran.get(), 3);
        // Paused: the pair waits for unpause.
        d.pause();
        let r = ran.clone();
        d.add_callback(move |v| {
            r.set(v + 1);
            Step::Value(v)
        });
        assert_eq!(ran.get(), 3);
        d.unpause();
        assert_eq!(ran.get(), 4);
    }

    #[test]
    fn d07_a_returned_deferred_pauses_the_chain_until_it_fires() {
        let outer = Deferred::new();
        let inner = Deferred::new();
        wait_on(&outer, &inner);
        let seen = watch(&outer);
        outer.callback(1).unwrap();
        assert!(seen.borrow().is_empty());
        inner.callback(2).unwrap();
        assert_eq!(*seen.borrow(), vec![Ok(2)]);

        // A failure of the inner one continues the outer chain on the error path.
        let outer = Deferred::new();
        let inner = Deferred::<i32>::new();
        wait_on(&outer, &inner);
        let seen = settle(&outer);
        outer.callback(1).unwrap();
        inner.errback(Failure::msg("inner broke")).unwrap();
        assert_eq!(*seen.borrow(), vec![Err("inner broke".to_string())]);
    }

    #[test]
    fn d07_an_already_fired_inner_deferred_continues_at_once() {
        let outer = Deferred::succeed(1);
        outer.add_callback(|_| Step::Wait(Deferred::succeed(9)));
        assert_eq!(*watch(&outer).borrow(), vec![Ok(9)]);
    }

    #[test]
    fn d07_waiting_on_a_deferred_whose_chain_is_running_resumes_when_it_ends() {
        let inner = Deferred::new();
        let outer = Deferred::new();
        let o = outer.clone();
        inner.add_callback(move |v: i32| {
            // The outer one fires and waits on `inner` while this step is running.
            o.callback(0).unwrap();
            Step::Value(v + 1)
        });
        wait_on(&outer, &inner);
        let seen = watch(&outer);
        inner.callback(1).unwrap();
        assert_eq!(*seen.borrow(), vec![Ok(2)]);
    }

    #[test]
    fn d08_the_inner_result_moves_to_the_outer_chain() {
        capture_log::start();
        let outer = Deferred::succeed(1);
        let inner = Deferred::<i32>::new();
        wait_on(&outer, &inner);
        inner.errback(Failure::msg("moved")).unwrap();
        let seen = settle(&outer);
        assert_eq!(*seen.borrow(), vec![Err("moved".to_string())]);
        // The inner Deferred no longer holds the result: a later step sees ResultTaken.
        let later = settle(&inner);
        assert_eq!(
            *later.borrow(),
            vec![Err(ChainingError::ResultTaken.to_string())]
        );
        drop(inner);
        drop(outer);
        assert!(capture_log::unhandled().is_empty());
    }

    const DEPTH: usize = 100_000;

    #[test]
    fn d09_a_long_chain_of_nested_deferreds_resumes_in_constant_stack() {
        let ds: Vec<Deferred<usize>> = (0..=DEPTH).map(|_| Deferred::new()).collect();
        for k in 0..DEPTH {
            let next = ds[k + 1].clone();
            ds[k].add_callback(move |_| Step::Wait(next));
        }
        let seen = watch(&ds[0]);
        // Outermost first: each one fires and then waits on the next.
        for (k, d) in ds.iter().enumerate().take(DEPTH) {
            d.callback(k).unwrap();
        }
        assert!(seen.borrow().is_empty());
        ds[DEPTH].callback(42).unwrap();
        assert_eq!(*seen.borrow(), vec![Ok(42)]);
    }

    #[test]
    fn d09_a_long_chain_of_type_changing_steps_runs_in_constant_stack() {
        let source = Deferred::new();
        let mut d: Deferred<u64> = source.clone();
        for _ in 0..DEPTH {
            d = d.then(|outcome| outcome.map(|v| v + 1).into());
        }
        let last = d.then(|outcome| outcome.map(|v| v.to_string()).into());
        let seen = watch(&last);
        source.callback(0).unwrap();
        assert_eq!(*seen.borrow(), vec![Ok(DEPTH.to_string())]);
    }

    #[test]
    fn d09_dropping_a_long_unfired_nest_does_not_recurse() {
        let ds: Vec<Deferred<usize>> = (0..=DEPTH).map(|_| Deferred::new()).collect();
        for k in 0..DEPTH {
            let next = ds[k + 1].clone();
            ds[k].add_callback(move |_| Step::Wait(next));
            ds[k].callback(k).unwrap();
        }
        // Each inner one now holds its outer one; the innermost never fires.
        let (outermost, innermost) = (ds[0].downgrade(), ds[DEPTH].downgrade());
        drop(ds);
        // Dropping got through the whole nest (no stack overflow) and freed all of it.
        assert!(
            innermost.upgrade().is_none(),
            "the innermost is still alive"
        );
        assert!(
            outermost.upgrade().is_none(),
            "the outermost is still alive"
        );
    }

    #[test]
    fn d10_waiting_on_its_own_deferred_becomes_a_failure() {
        let d = Deferred::<i32>::new();
        let me = d.downgrade();
        d.add_callback(move |_| match me.upgrade() {
            Some(me) => Step::Wait(me),
            None => Step::Value(0),
        });
        let seen = settle(&d);
        d.callback(1).unwrap();
        assert_eq!(
            *seen.borrow(),
            vec![Err(ChainingError::OwnDeferred.to_string())]
        );
    }

    #[test]
    fn d10_a_second_waiter_on_the_same_inner_gets_result_taken() {
        let inner = Deferred::<i32>::new();
        let first = Deferred::succeed(0);
        let second = Deferred::succeed(0);
        wait_on(&first, &inner);
        wait_on(&second, &inner);
        let seen_second = settle(&second);
        assert_eq!(
            *seen_second.borrow(),
            vec![Err(ChainingError::ResultTaken.to_string())]
        );
        inner.callback(5).unwrap();
        assert_eq!(*watch(&first).borrow(), vec![Ok(5)]);
    }

    #[test]
    fn d11_a_deferred_passed_as_a_value_does_not_chain() {
        let d = Deferred::<Deferred<i32>>::new();
        let unfired = Deferred::<i32>::new();
        let got = Rc::new(Cell::new(false));
        let g = got.clone();
        d.add_callback(move |value| {
            g.set(!value.is_called());
            Step::Value(value)
        });
        d.callback(unfired).unwrap();
        assert!(
            got.get(),
            "the chain ran with the unfired Deferred as its value"
        );
    }

    #[test]
    fn d12_steps_added_from_inside_a_step_run_after_it_returns() {
        let d = Deferred::new();
        let order = log();
        let depth = Rc::new(Cell::new(0));
        let (me, o, dp) = (d.downgrade(), order.clone(), depth.clone());
        d.add_callback(move |v: i32| {
            dp.set(dp.get() + 1);
            if let Some(me) = me.upgrade() {
                let (o2, dp2) = (o.clone(), dp.clone());
                me.add_callback(move |v| {
                    push(&o2, &format!("added sees {v} at depth {}", dp2.get()));
                    Step::err(MessageError("added fails".into()))
                });
                let o3 = o.clone();
                me.add_errback(move |f| {
                    push(&o3, &format!("then {}", f.error_message()));
                    Step::Value(0)
                });
            }
            push(&o, "first returns");
            dp.set(dp.get() - 1);
            Step::Value(v + 1)
        });
        d.callback(1).unwrap();
        assert_eq!(
            *order.borrow(),
            [
                "first returns",
                "added sees 2 at depth 0",
                "then added fails"
            ]
        );
    }

    #[test]
    fn d13_pause_nests_as_a_counter() {
        let d = Deferred::new();
        let seen = watch(&d);
        d.pause();
        d.pause();
        d.callback(1).unwrap();
        assert!(seen.borrow().is_empty());
        d.unpause();
        assert!(seen.borrow().is_empty());
        d.unpause();
        assert_eq!(*seen.borrow(), vec![Ok(1)]);
        // Extra unpause is harmless.
        d.unpause();
        assert_eq!(seen.borrow().len(), 1);
    }

    #[test]
    fn d13_a_paused_inner_deferred_keeps_the_outer_one_waiting() {
        let inner = Deferred::succeed(8);
        inner.pause();
        let outer = Deferred::succeed(0);
        wait_on(&outer, &inner);
        let seen = watch(&outer);
        assert!(seen.borrow().is_empty());
        inner.unpause();
        assert_eq!(*seen.borrow(), vec![Ok(8)]);
    }

    #[test]
    fn d14_succeed_and_fail_are_already_fired() {
        let ok = Deferred::succeed("yes");
        assert!(ok.is_called());
        assert_eq!(*watch(&ok).borrow(), vec![Ok("yes")]);
        let failed = Deferred::<&str>::fail(Failure::msg("no"));
        assert!(failed.is_called());
        assert_eq!(*settle(&failed).borrow(), vec![Err("no".to_string())]);
        assert_eq!(failed.callback("again"), Err(AlreadyCalledError));
    }

    #[test]
    fn d15_maybe_deferred_always_gives_a_deferred() {
        let v = maybe_deferred(|| Step::Value(1));
        assert_eq!(*watch(&v).borrow(), vec![Ok(1)]);
        let f = maybe_deferred::<i32>(|| Step::err(MessageError("nope".into())));
        assert_eq!(*settle(&f).borrow(), vec![Err("nope".to_string())]);
        let pending = Deferred::<i32>::new();
        let p = pending.clone();
        let passed = maybe_deferred(move || Step::Wait(p));
        assert!(Rc::ptr_eq(&passed.inner, &pending.inner));
        let from_result = maybe_deferred(|| Ok::<_, Failure>(3).into());
        assert_eq!(*watch(&from_result).borrow(), vec![Ok(3)]);
    }

    #[test]
    fn d16_errback_wraps_a_plain_error() {
        let d = Deferred::<()>::new();
        let kind = Rc::new(Cell::new(None));
        let k = kind.clone();
        d.add_errback(move |f| {
            k.set(f.downcast_ref::<io::Error>().map(io::Error::kind));
            Step::Value(())
        });
        d.errback(io::Error::new(io::ErrorKind::TimedOut, "slow"))
            .unwrap();
        assert_eq!(kind.get(), Some(io::ErrorKind::TimedOut));
    }

    #[test]
    fn d17_cancel_calls_the_canceller_once_then_errbacks_cancelled() {
        let calls = Rc::new(Cell::new(0));
        let c = calls.clone();
        let d = Deferred::<i32>::with_canceller(move |d| {
            assert!(!d.is_called());
            c.set(c.get() + 1);
        });
        let seen = Rc::new(Cell::new(false));
        let s = seen.clone();
        d.add_errback(move |f| {
            s.set(f.check::<CancelledError>());
            Step::Value(0)
        });
        d.cancel();
        assert_eq!(calls.get(), 1);
        assert!(seen.get());
    }

    #[test]
    fn d18_a_canceller_may_fire_with_its_own_result() {
        let d = Deferred::with_canceller(|d| {
            d.callback(99).unwrap();
        });
        let seen = watch(&d);
        d.cancel();
        assert_eq!(*seen.borrow(), vec![Ok(99)]);

        let d = Deferred::<i32>::with_canceller(|d| {
            d.errback(Failure::msg("stopped by producer")).unwrap();
        });
        let seen = settle(&d);
        d.cancel();
        assert_eq!(*seen.borrow(), vec![Err("stopped by producer".to_string())]);
    }

    #[test]
    fn d19_without_a_canceller_the_next_firing_is_swallowed_once() {
        let d = Deferred::new();
        let seen = settle(&d);
        d.cancel();
        assert_eq!(d.callback(1), Ok(()));
        assert_eq!(d.callback(2), Err(AlreadyCalledError));
        assert_eq!(*seen.borrow(), vec![Err(CancelledError.to_string())]);

        let d = Deferred::<i32>::with_canceller(|_| {});
        settle(&d);
        d.cancel();
        assert_eq!(d.callback(1), Err(AlreadyCalledError));
    }

    #[test]
    fn d20_cancel_on_a_fired_deferred_does_nothing() {
        let d = Deferred::succeed(1);
        d.cancel();
        assert_eq!(*watch(&d).borrow(), vec![Ok(1)]);
    }

    #[test]
    fn d20_cancel_on_a_waiting_deferred_cancels_the_inner_one() {
        let cancelled = Rc::new(Cell::new(false));
        let c = cancelled.clone();
        let inner = Deferred::<i32>::with_canceller(move |_| c.set(true));
        let outer = Deferred::succeed(0);
        wait_on(&outer, &inner);
        let seen = settle(&outer);
        outer.cancel();
        assert!(cancelled.get());
        assert_eq!(*seen.borrow(), vec![Err(CancelledError.to_string())]);
    }

    #[test]
    fn d20_cancel_reaches_the_source_of_a_type_changing_step() {
        let source = Deferred::<i32>::new();
        let out = source.clone().then(|o| o.map(|v| v.to_string()).into());
        let seen = settle(&out);
        out.cancel();
        assert_eq!(*seen.borrow(), vec![Err(CancelledError.to_string())]);
        assert!(source.is_called());
    }

    #[test]
    fn d21_repeated_cancel_is_harmless() {
        let calls = Rc::new(Cell::new(0));
        let c = calls.clone();
        let d = Deferred::<i32>::with_canceller(move |_| c.set(c.get() + 1));
        let seen = settle(&d);
        d.cancel();
        d.cancel();
        d.cancel();
        assert_eq!(calls.get(), 1);
        assert_eq!(seen.borrow().len(), 1);
    }

    #[test]
    fn d22_timeout_cancels_and_becomes_a_timeout_error_after_its_pair() {
        let clock = FakeClock::new();
        let d = Deferred::<i32>::new();
        let before = watch(&d);
        d.add_timeout(Duration::from_secs(5), &clock);
        let after = Rc::new(RefCell::new(None));
        let a = after.clone();
        d.add_errback(move |f| {
            *a.borrow_mut() = f.downcast_ref::<TimeoutError>().map(|e| e.timeout);
            Step::Value(0)
        });
        clock.advance(Duration::from_millis(4_999));
        assert!(before.borrow().is_empty());
        clock.advance(Duration::from_millis(1));
        assert_eq!(*before.borrow(), vec![Err(CancelledError.to_string())]);
        assert_eq!(*after.borrow(), Some(Duration::from_secs(5)));
    }

    #[test]
    fn d22_a_cancellers_own_result_passes_the_timeout_untouched() {
        let clock = FakeClock::new();
        let d = Deferred::with_canceller(|d| d.callback(-1).unwrap());
        d.add_timeout(Duration::from_secs(1), &clock);
        let seen = watch(&d);
        clock.advance(Duration::from_secs(1));
        assert_eq!(*seen.borrow(), vec![Ok(-1)]);
    }

    #[test]
    fn d22_firing_in_time_cancels_the_timer() {
        let clock = FakeClock::new();
        let d = Deferred::new();
        d.add_timeout(Duration::from_secs(1), &clock);
        assert_eq!(clock.delayed_calls().len(), 1);
        let seen = watch(&d);
        d.callback(3).unwrap();
        assert!(clock.delayed_calls().is_empty());
        clock.advance(Duration::from_secs(2));
        assert_eq!(*seen.borrow(), vec![Ok(3)]);
    }

    #[test]
    fn d23_an_unhandled_failure_is_logged_when_the_last_handle_drops() {
        capture_log::start();
        let d = Deferred::<i32>::new();
        let other = d.clone();
        d.errback(Failure::msg("nobody cared")).unwrap();
        drop(d);
        assert!(
            capture_log::unhandled().is_empty(),
            "a handle is still alive"
        );
        drop(other);
        assert_eq!(
            capture_log::unhandled(),
            ["Unhandled error in Deferred: nobody cared"]
        );
    }

    #[test]
    fn d23_handled_recovered_or_handed_on_failures_are_not_logged() {
        capture_log::start();
        let handled = Deferred::<i32>::fail(Failure::msg("handled"));
        handled.add_errback(|_| Step::Value(0));
        drop(handled);

        let outer = Deferred::succeed(0);
        outer.add_callback(|_| Step::Wait(Deferred::fail(Failure::msg("handed on"))));
        outer.add_errback(|_| Step::Value(1));
        drop(outer);

        let unfired = Deferred::<i32>::new();
        drop(unfired);
        assert!(capture_log::unhandled().is_empty());

        // A failure that moved to an outer Deferred is reported there, once.
        let outer = Deferred::succeed(0);
        outer.add_callback(|_| Step::Wait(Deferred::fail(Failure::msg("moved"))));
        drop(outer);
        assert_eq!(
            capture_log::unhandled(),
            ["Unhandled error in Deferred: moved"]
        );
    }

    #[test]
    fn d23_a_weak_self_reference_keeps_the_report() {
        capture_log::start();
        let d = Deferred::<i32>::new();
        let me = d.downgrade();
        d.add_callback(move |v| {
            let _ = me.upgrade();
            Step::Value(v)
        });
        d.errback(Failure::msg("still reported")).unwrap();
        drop(d);
        assert_eq!(capture_log::unhandled().len(), 1);
    }

    #[test]
    fn d24_a_list_fires_with_results_in_input_order() {
        let a = Deferred::new();
        let b = Deferred::succeed(2);
        let c = Deferred::new();
        let list = deferred_list(vec![a.clone(), b, c.clone()], consuming());
        let seen = Rc::new(RefCell::new(None));
        let s = seen.clone();
        list.add_callback(move |results| {
            *s.borrow_mut() = Some(
                results
                    .iter()
                    .map(|r| r.as_ref().map(|v| *v).map_err(Failure::error_message))
                    .collect::<Vec<_>>(),
            );
            Step::Value(results)
        });
        c.errback(Failure::msg("c failed")).unwrap();
        assert!(seen.borrow().is_none());
        a.callback(1).unwrap();
        assert_eq!(
            *seen.borrow(),
            Some(vec![Ok(1), Ok(2), Err("c failed".to_string())])
        );
    }

    #[test]
    fn d24_an_empty_list_fires_at_once() {
        let list = deferred_list::<i32>(Vec::new(), DeferredListOptions::default());
        let seen = Rc::new(Cell::new(None));
        let s = seen.clone();
        list.add_callback(move |r| {
            s.set(Some(r.len()));
            Step::Value(r)
        });
        assert_eq!(seen.get(), Some(0));
    }

    #[test]
    fn d25_first_success_fires_with_value_and_index() {
        let a = Deferred::<&str>::new();
        let b = Deferred::new();
        let first = first_success(vec![a.clone(), b.clone()], consuming());
        let seen = watch(&first);
        a.errback(Failure::msg("a failed")).unwrap();
        assert!(seen.borrow().is_empty());
        b.callback("b").unwrap();
        assert_eq!(*seen.borrow(), vec![Ok(("b", 1))]);
    }

    #[test]
    fn d25_first_success_with_no_inputs_never_fires_and_all_failing_errbacks() {
        let empty = first_success::<i32>(Vec::new(), DeferredListOptions::default());
        assert!(!empty.is_called());

        let a = Deferred::<i32>::fail(Failure::msg("x"));
        let b = Deferred::<i32>::fail(Failure::msg("y"));
        let all = first_success(vec![a, b], consuming());
        let seen = Rc::new(RefCell::new(Vec::new()));
        let s = seen.clone();
        all.add_errback(move |f| {
            if let Some(e) = f.downcast_ref::<AllFailedError>() {
                s.borrow_mut()
                    .extend(e.failures.iter().map(Failure::error_message));
            }
            Step::Value((0, 0))
        });
        assert_eq!(*seen.borrow(), ["x", "y"]);
    }

    #[test]
    fn d25_fire_on_one_errback_gives_first_error_and_keeps_recording() {
        capture_log::start();
        let a = Deferred::<i32>::new();
        let b = Deferred::<i32>::new();
        let c = Deferred::<i32>::new();
        let list = deferred_list(
            vec![a.clone(), b.clone(), c.clone()],
            DeferredListOptions {
                fire_on_one_errback: true,
                consume_errors: true,
            },
        );
        let seen = on_first_error(&list, |e| (e.index, e.failure.error_message()));
        a.callback(1).unwrap();
        b.errback(Failure::msg("b failed")).unwrap();
        assert_eq!(*seen.borrow(), Some((1, "b failed".to_string())));
        // A later failing input is still recorded, so its failure is consumed too.
        c.errback(Failure::msg("c failed")).unwrap();
        drop((a, b, c, list));
        assert!(capture_log::unhandled().is_empty());
    }

    #[test]
    fn d26_a_list_leaves_failures_on_their_inputs_unless_consumed() {
        capture_log::start();
        let a = Deferred::<i32>::new();
        let list = deferred_list(vec![a.clone()], DeferredListOptions::default());
        let seen = Rc::new(Cell::new(0));
        let s = seen.clone();
        list.add_callback(move |r| {
            s.set(r.len());
            Step::Value(r)
        });
        a.errback(Failure::msg("still on input")).unwrap();
        assert_eq!(seen.get(), 1);
        drop(list);
        assert!(capture_log::unhandled().is_empty());
        drop(a);
        assert_eq!(
            capture_log::unhandled(),
            ["Unhandled error in Deferred: still on input"]
        );

        let a = Deferred::<i32>::new();
        let list = deferred_list(vec![a.clone()], consuming());
        a.errback(Failure::msg("consumed")).unwrap();
        drop((a, list));
        assert!(capture_log::unhandled().is_empty());
    }

    #[test]
    fn d27_cancelling_a_list_cancels_every_input() {
        let cancelled = Rc::new(Cell::new(0));
        let c = cancelled.clone();
        let a = Deferred::<i32>::with_canceller(move |_| c.set(c.get() + 1));
        let b = Deferred::<i32>::new();
        let done = Deferred::succeed(3);
        let list = deferred_list(vec![a.clone(), b.clone(), done], consuming());
        let seen = Rc::new(RefCell::new(Vec::new()));
        let s = seen.clone();
        list.add_callback(move |r| {
            s.borrow_mut().extend(r.iter().map(|o| match o {
                Ok(v) => v.to_string(),
                Err(f) if f.check::<CancelledError>() => "cancelled".to_string(),
                Err(f) => f.error_message(),
            }));
            Step::Value(r)
        });
        list.cancel();
        assert_eq!(cancelled.get(), 1);
        assert!(b.is_called());
        assert_eq!(*seen.borrow(), ["cancelled", "cancelled", "3"]);
        // Cancelling the fired list does nothing.
        list.cancel();
        assert_eq!(cancelled.get(), 1);
    }

    #[test]
    fn d28_gather_results_gives_plain_values_in_input_order() {
        let a = Deferred::new();
        let b = Deferred::new();
        let all = gather_results(vec![a.clone(), b.clone()], false);
        let seen = watch(&all);
        b.callback("b").unwrap();
        a.callback("a").unwrap();
        assert_eq!(*seen.borrow(), vec![Ok(vec!["a", "b"])]);
    }

    #[test]
    fn d28_gather_results_errbacks_with_the_first_error() {
        capture_log::start();
        let a = Deferred::<i32>::new();
        let b = Deferred::<i32>::new();
        let original = Failure::msg("b failed");
        let all = gather_results(vec![a.clone(), b.clone()], true);
        let seen = on_first_error(&all, |e| (e.index, e.failure.clone()));
        b.errback(original.clone()).unwrap();
        let (index, failure) = seen.borrow_mut().take().unwrap();
        assert_eq!(index, 1);
        assert!(Rc::ptr_eq(failure.error(), original.error()));
        drop((a, b, all));
        assert!(capture_log::unhandled().is_empty());
    }

    #[test]
    fn d28_cancelling_gather_results_cancels_the_inputs() {
        let a = Deferred::<i32>::new();
        let b = Deferred::<i32>::new();
        let all = gather_results(vec![a.clone(), b.clone()], true);
        let seen = on_first_error(&all, |e| (e.index, e.failure.check::<CancelledError>()));
        all.cancel();
        assert!(a.is_called() && b.is_called());
        assert_eq!(*seen.borrow(), Some((0, true)));
    }

    #[test]
    fn d29_the_errback_gets_the_same_failure_object() {
        let original = Failure::msg("identity");
        let d = Deferred::<()>::new();
        let same = Rc::new(Cell::new(false));
        let (s, o) = (same.clone(), original.clone());
        d.add_callback(Step::Value).add_errback(move |f| {
            s.set(Rc::ptr_eq(f.error(), o.error()));
            Step::Value(())
        });
        d.errback(original).unwrap();
        assert!(same.get());
    }

    #[test]
    fn d30_errbacks_trap_by_type_and_pass_others_on() {
        let d = Deferred::<i32>::new();
        trap_io_errors(&d);
        let seen = settle(&d);
        d.errback(Failure::new(CancelledError)).unwrap();
        assert_eq!(*seen.borrow(), vec![Err(CancelledError.to_string())]);

        let d = Deferred::<i32>::new();
        trap_io_errors(&d);
        let seen = watch(&d);
        d.errback(io::Error::other("io")).unwrap();
        assert_eq!(*seen.borrow(), vec![Ok(-1)]);
    }

    #[test]
    fn then_changes_the_type_and_runs_at_once_on_a_fired_source() {
        let out = Deferred::succeed(21).then(|o| o.map(|v| v * 2).map(|v| format!("{v}")).into());
        assert_eq!(*watch(&out).borrow(), vec![Ok("42".to_string())]);
        assert_eq!(out.callback("x".into()), Err(AlreadyCalledError));
    }

    #[test]
    fn then_can_wait_on_a_deferred_of_the_new_type() {
        let inner = Deferred::<String>::new();
        let i = inner.clone();
        let out = Deferred::succeed(1).then(move |_| Step::Wait(i));
        let seen = watch(&out);
        assert!(seen.borrow().is_empty());
        inner.callback("late".into()).unwrap();
        assert_eq!(*seen.borrow(), vec![Ok("late".to_string())]);
    }
}
