//! System event triggers: code that runs before, during and after the reactor's
//! `Startup` and `Shutdown` events (R-18..R-24).
//!
//! A `Before` trigger may return a [`Deferred`]; the event's `During` phase starts only
//! once every such Deferred has fired, and the loop keeps serving I/O and timers
//! meanwhile.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use super::defer::{Deferred, Step};
use super::failure::Failure;

/// The two system events of a reactor's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SystemEvent {
    /// Fired inside `run()`, before the first loop iteration.
    Startup,
    /// Fired once `stop()` has been requested (or a handled signal arrived).
    Shutdown,
}

/// When, relative to the event itself, a trigger runs.
///
/// An enum, so Twisted's "unknown phase" error cannot happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// First; may return a Deferred that holds the event back until it fires.
    Before,
    /// The event itself.
    During,
    /// Last.
    After,
}

/// A registered trigger, for [`Reactor::remove_system_event_trigger`](super::Reactor::remove_system_event_trigger).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TriggerHandle {
    id: u64,
}

/// What a trigger may return: nothing, a `Result`, or (meaningful in the `Before` phase)
/// a `Deferred<()>` that the event waits for.
pub trait TriggerOutput {
    /// Converts the trigger's return value.
    fn into_trigger_output(self) -> Result<Option<Deferred<()>>, Failure>;
}

impl TriggerOutput for () {
    fn into_trigger_output(self) -> Result<Option<Deferred<()>>, Failure> {
        Ok(None)
    }
}

impl TriggerOutput for Deferred<()> {
    fn into_trigger_output(self) -> Result<Option<Deferred<()>>, Failure> {
        Ok(Some(self))
    }
}

impl<E: std::error::Error + 'static> TriggerOutput for Result<(), E> {
    fn into_trigger_output(self) -> Result<Option<Deferred<()>>, Failure> {
        self.map(|()| None).map_err(Failure::new)
    }
}

/// How the reactor takes work to run at the start of its next iteration.
pub(crate) type Soon = Rc<dyn Fn(Box<dyn FnOnce()>)>;

/// The rest of an event's firing, run once by whichever `Before` Deferred fires last.
type Continuation = Rc<RefCell<Option<Box<dyn FnOnce()>>>>;

type TriggerFn = Box<dyn FnOnce() -> Result<Option<Deferred<()>>, Failure>>;

struct Trigger {
    id: u64,
    event: SystemEvent,
    phase: Phase,
    func: TriggerFn,
}

/// Error from removing a trigger that is not registered (any more).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no such system event trigger (already run or removed)")]
pub struct UnknownTrigger;

/// Every trigger not yet run, in registration order.
#[derive(Default)]
pub(crate) struct Triggers {
    list: RefCell<Vec<Trigger>>,
    next_id: Cell<u64>,
}

impl Triggers {
    pub(crate) fn add(&self, phase: Phase, event: SystemEvent, func: TriggerFn) -> TriggerHandle {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        self.list.borrow_mut().push(Trigger {
            id,
            event,
            phase,
            func,
        });
        TriggerHandle { id }
    }

    pub(crate) fn remove(&self, handle: TriggerHandle) -> Result<(), UnknownTrigger> {
        let mut list = self.list.borrow_mut();
        let position = list
            .iter()
            .position(|t| t.id == handle.id)
            .ok_or(UnknownTrigger)?;
        // Dropped after the borrow ends: the closure's captures may run code on drop.
        let removed = list.remove(position);
        drop(list);
        drop(removed);
        Ok(())
    }

    /// Takes the first trigger of `event` and `phase` still registered. Taking them one at
    /// a time lets a trigger remove later ones, and runs triggers added meanwhile.
    fn take_next(&self, event: SystemEvent, phase: Phase) -> Option<TriggerFn> {
        let mut list = self.list.borrow_mut();
        let position = list
            .iter()
            .position(|t| t.event == event && t.phase == phase)?;
        Some(list.remove(position).func)
    }

    fn run_phase(&self, event: SystemEvent, phase: Phase) -> Vec<Deferred<()>> {
        let mut waits = Vec::new();
        while let Some(func) = self.take_next(event, phase) {
            match func() {
                Ok(Some(deferred)) if phase == Phase::Before => waits.push(deferred),
                Ok(_) => {}
                Err(failure) => {
                    log::error!("Unhandled error in a {phase:?} {event:?} trigger: {failure}")
                }
            }
        }
        waits
    }
}

/// Fires `event`: runs its `Before` triggers, waits for their Deferreds, then calls
/// `between` (the reactor's own work between the phases), then the `During` and `After`
/// triggers, then `done`.
///
/// The continuation after the Deferreds is handed to `soon`, which runs it from the loop,
/// so no phase ever runs inside a Deferred's callback chain.
pub(crate) fn fire(
    triggers: &Rc<Triggers>,
    event: SystemEvent,
    soon: Soon,
    between: Box<dyn FnOnce()>,
    done: Box<dyn FnOnce()>,
) {
    let waits = triggers.run_phase(event, Phase::Before);
    let triggers = triggers.clone();
    let rest = move || {
        between();
        triggers.run_phase(event, Phase::During);
        triggers.run_phase(event, Phase::After);
        done();
    };
    if waits.is_empty() {
        rest();
        return;
    }
    let remaining = Rc::new(Cell::new(waits.len()));
    let rest: Continuation = Rc::new(RefCell::new(Some(Box::new(rest))));
    for wait in waits {
        let remaining = remaining.clone();
        let rest = rest.clone();
        let soon = soon.clone();
        wait.add_both(move |result| {
            // A failed Deferred still counts as fired; it is reported, not passed on.
            if let Err(failure) = &result {
                log::error!("a {event:?} trigger's Deferred failed: {failure}");
            }
            remaining.set(remaining.get() - 1);
            if remaining.get() == 0
                && let Some(rest) = rest.borrow_mut().take()
            {
                soon(rest);
            }
            Step::Value(())
        });
    }
}
