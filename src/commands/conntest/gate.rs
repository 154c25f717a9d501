//! How many connection attempts may be in flight at once.
//!
//! Each attempt holds one socket, so the cap is what keeps a scan of 65535 ports
//! within the file-descriptor limit ([`super::fdlimit`]). An attempt asks the [`Gate`]
//! for a [`Permit`] and holds it until its socket is closed; dropping the permit hands
//! the slot to the next waiter, first come first served.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;

use crate::reactor::endpoints::{AttemptLimiter, Grant};

type Waiter = Box<dyn FnOnce(Permit)>;

struct GateInner {
    free: Cell<usize>,
    waiters: RefCell<VecDeque<Waiter>>,
    /// True while waiters are being handed slots: a permit dropped meanwhile only adds
    /// its slot back, and the running loop hands it on. That keeps a long queue of
    /// waiters that give their slot straight back (cancelled attempts) from recursing.
    dispatching: Cell<bool>,
    /// After [`Gate::close`]: no slot is handed out any more.
    closed: Cell<bool>,
}

/// A counting semaphore for the reactor thread. Cheap to clone; clones share slots.
#[derive(Clone)]
pub struct Gate {
    inner: Rc<GateInner>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("free", &self.inner.free.get())
            .field("waiting", &self.inner.waiters.borrow().len())
            .finish()
    }
}

/// One slot of a [`Gate`], given back when dropped.
pub struct Permit {
    gate: Rc<GateInner>,
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Permit")
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.gate.free.set(self.gate.free.get() + 1);
        GateInner::dispatch(&self.gate);
    }
}

impl Gate {
    /// A gate with `slots` slots (at least one).
    pub fn new(slots: usize) -> Gate {
        Gate {
            inner: Rc::new(GateInner {
                free: Cell::new(slots.max(1)),
                waiters: RefCell::new(VecDeque::new()),
                dispatching: Cell::new(false),
                closed: Cell::new(false),
            }),
        }
    }

    /// Calls `f` with a permit: at once if a slot is free and nobody is queued before
    /// us, else when one is given back. `f` must not be holding a borrow that the
    /// code releasing a permit would need; it is called with no gate borrow held.
    pub fn acquire(&self, f: impl FnOnce(Permit) + 'static) {
        if self.inner.closed.get() {
            return;
        }
        let inner = &self.inner;
        if inner.free.get() > 0 && !inner.dispatching.get() && inner.waiters.borrow().is_empty() {
            // A slot is free and nobody is queued: what dispatching would do, without
            // boxing and queueing `f` first (every connect of a watch or scan asks).
            inner.dispatching.set(true);
            inner.free.set(inner.free.get() - 1);
            f(Permit {
                gate: inner.clone(),
            });
            inner.dispatching.set(false);
            // Slots given back and callers queued while `f` ran.
            GateInner::dispatch(inner);
            return;
        }
        inner.waiters.borrow_mut().push_back(Box::new(f));
        GateInner::dispatch(inner);
    }

    /// Hands out no slot any more and forgets every waiter: the run is over, and a
    /// queued attempt started now would only open a socket to close it.
    pub fn close(&self) {
        self.inner.closed.set(true);
        let waiters = std::mem::take(&mut *self.inner.waiters.borrow_mut());
        // Dropped outside the borrow: a waiter's captures may hold other handles.
        drop(waiters);
    }

    /// Slots not handed out.
    pub fn free(&self) -> usize {
        self.inner.free.get()
    }

    /// Callers queued for a slot.
    pub fn waiting(&self) -> usize {
        self.inner.waiters.borrow().len()
    }
}

/// The hostname endpoint asks the gate for a slot before each attempt.
impl AttemptLimiter for Gate {
    fn acquire(&self, grant: Grant) {
        Gate::acquire(self, move |permit| grant(Box::new(permit)));
    }
}

impl GateInner {
    fn dispatch(this: &Rc<GateInner>) {
        if this.dispatching.replace(true) {
            return;
        }
        while this.free.get() > 0 {
            let Some(waiter) = this.waiters.borrow_mut().pop_front() else {
                break;
            };
            this.free.set(this.free.get() - 1);
            waiter(Permit { gate: this.clone() });
        }
        this.dispatching.set(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_the_slot_count_is_handed_out_and_returned_slots_go_in_order() {
        let gate = Gate::new(2);
        let held: Rc<RefCell<Vec<(u32, Permit)>>> = Rc::default();
        for id in 0..5 {
            let held = held.clone();
            gate.acquire(move |permit| held.borrow_mut().push((id, permit)));
        }
        let ids = |held: &Rc<RefCell<Vec<(u32, Permit)>>>| {
            held.borrow().iter().map(|(id, _)| *id).collect::<Vec<_>>()
        };
        assert_eq!(ids(&held), vec![0, 1]);
        assert_eq!(gate.free(), 0);
        assert_eq!(gate.waiting(), 3);
        let first = held.borrow_mut().remove(0);
        drop(first);
        assert_eq!(ids(&held), vec![1, 2]);
        let all: Vec<_> = held.borrow_mut().drain(..).collect();
        drop(all);
        assert_eq!(ids(&held), vec![3, 4]);
        held.borrow_mut().clear();
        assert_eq!(gate.free(), 2);
        assert_eq!(gate.waiting(), 0);
    }

    #[test]
    fn an_acquire_from_inside_a_grant_is_served_after_the_grant_returns() {
        let gate = Gate::new(2);
        let log: Rc<RefCell<Vec<&str>>> = Rc::default();
        let held: Rc<RefCell<Vec<Permit>>> = Rc::default();
        let (inner_gate, inner_log, inner_held) = (gate.clone(), log.clone(), held.clone());
        gate.acquire(move |permit| {
            inner_log.borrow_mut().push("outer start");
            let (log, held) = (inner_log.clone(), inner_held.clone());
            inner_gate.acquire(move |permit| {
                log.borrow_mut().push("inner");
                held.borrow_mut().push(permit);
            });
            inner_log.borrow_mut().push("outer end");
            inner_held.borrow_mut().push(permit);
        });
        assert_eq!(*log.borrow(), vec!["outer start", "outer end", "inner"]);
        assert_eq!(gate.free(), 0);
        held.borrow_mut().clear();
        assert_eq!(gate.free(), 2);
    }

    #[test]
    fn a_long_queue_of_waiters_that_give_their_slot_back_does_not_recurse() {
        let gate = Gate::new(1);
        let first: Rc<RefCell<Option<Permit>>> = Rc::default();
        let slot = first.clone();
        gate.acquire(move |permit| *slot.borrow_mut() = Some(permit));
        let served = Rc::new(Cell::new(0u32));
        for _ in 0..200_000 {
            let served = served.clone();
            gate.acquire(move |permit| {
                served.set(served.get() + 1);
                drop(permit);
            });
        }
        first.borrow_mut().take();
        assert_eq!(served.get(), 200_000);
        assert_eq!(gate.free(), 1);
    }

    #[test]
    fn a_closed_gate_forgets_its_waiters_and_hands_out_nothing() {
        let gate = Gate::new(1);
        let held: Rc<RefCell<Option<Permit>>> = Rc::default();
        let slot = held.clone();
        gate.acquire(move |permit| *slot.borrow_mut() = Some(permit));
        let served = Rc::new(Cell::new(false));
        let s = served.clone();
        gate.acquire(move |_| s.set(true));
        gate.close();
        assert_eq!(gate.waiting(), 0);
        held.borrow_mut().take();
        let s = served.clone();
        gate.acquire(move |_| s.set(true));
        assert!(!served.get());
    }

    #[test]
    fn a_waiter_may_acquire_again_from_inside_its_callback() {
        let gate = Gate::new(1);
        let order: Rc<RefCell<Vec<&str>>> = Rc::default();
        let (g, o) = (gate.clone(), order.clone());
        gate.acquire(move |permit| {
            o.borrow_mut().push("outer");
            let o2 = o.clone();
            g.acquire(move |_permit| o2.borrow_mut().push("inner"));
            // Not yet: the outer permit is still held.
            assert_eq!(o.borrow().len(), 1);
            drop(permit);
        });
        assert_eq!(*order.borrow(), vec!["outer", "inner"]);
        assert_eq!(gate.free(), 1);
    }
}
