//! The whole run: every target checked concurrently on one reactor, retried under
//! `--wait`, cut short by `--any`, each result printed as soon as the order allows,
//! and the reactor stopped when nothing is left to learn.

use std::cell::{Cell, RefCell};
use std::io::Write;
use std::rc::Rc;
use std::time::Duration;

use super::check::{Check, CheckContext};
use super::outcome::Outcome;
use super::output::{Printer, Report};
use super::targets::Target;
use crate::exit::ExitStatus;
use crate::reactor::{DelayedCall, Phase, Reactor, SystemEvent};

/// The options that shape the run (the per-attempt timeout is in the
/// [`CheckContext`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionOptions {
    /// `--wait`: retry down targets until this long after the start.
    pub wait: Option<Duration>,
    /// `--interval`: time between retries of one target.
    pub interval: Duration,
    /// `--any`: done as soon as one target is up.
    pub any: bool,
}

enum Slot {
    /// A check was asked to start and has not returned yet.
    Starting,
    /// A check is in flight; `last` is what the previous attempt saw (under `--wait`).
    Checking { check: Check, last: Option<Outcome> },
    /// Under `--wait`: down, and checked again when the timer fires.
    Retrying { timer: DelayedCall, last: Outcome },
    /// Under `--wait`: down, and no retry fits before the deadline, which decides.
    Down { last: Outcome },
    /// The result is in (the outcome itself went to the printer).
    Final { up: bool, exit: ExitStatus },
}

struct Inner<O: Write, E: Write> {
    ctx: Rc<CheckContext>,
    targets: Vec<Target>,
    options: SessionOptions,
    started_at: Duration,
    slots: RefCell<Vec<Slot>>,
    printer: RefCell<Printer<O, E>>,
    unfinished: Cell<usize>,
    finished: Cell<bool>,
    deadline: RefCell<Option<DelayedCall>>,
}

/// A run over a list of targets. Cheap to clone.
pub struct Session<O: Write + 'static, E: Write + 'static> {
    inner: Rc<Inner<O, E>>,
}

impl<O: Write + 'static, E: Write + 'static> Clone for Session<O, E> {
    fn clone(&self) -> Self {
        Session {
            inner: self.inner.clone(),
        }
    }
}

impl<O: Write + 'static, E: Write + 'static> std::fmt::Debug for Session<O, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("targets", &self.inner.targets.len())
            .field("unfinished", &self.inner.unfinished.get())
            .finish()
    }
}

impl<O: Write + 'static, E: Write + 'static> Session<O, E> {
    /// Starts checking every target; the reactor is stopped once all results are in.
    /// Call before or while the reactor runs.
    pub fn start(
        ctx: Rc<CheckContext>,
        targets: Vec<Target>,
        options: SessionOptions,
        printer: Printer<O, E>,
    ) -> Session<O, E> {
        let count = targets.len();
        let session = Session {
            inner: Rc::new(Inner {
                started_at: ctx.reactor.seconds(),
                ctx,
                targets,
                options,
                slots: RefCell::new((0..count).map(|_| Slot::Starting).collect()),
                printer: RefCell::new(printer),
                unfinished: Cell::new(count),
                finished: Cell::new(false),
                deadline: RefCell::new(None),
            }),
        };
        // Once shutdown begins (a signal), attempts end with "the reactor is shutting
        // down": that is not a result to report.
        let this = session.clone();
        session.inner.ctx.reactor.add_system_event_trigger(
            Phase::Before,
            SystemEvent::Shutdown,
            move || this.inner.finished.set(true),
        );
        if let Some(wait) = options.wait {
            let this = session.clone();
            let timer = session
                .inner
                .ctx
                .reactor
                .call_later(wait, move || this.give_up_waiting());
            *session.inner.deadline.borrow_mut() = Some(timer);
        }
        for index in 0..count {
            session.start_check(index, None);
            if session.inner.finished.get() {
                break;
            }
        }
        if count == 0 {
            session.finish();
        }
        session
    }

    /// The exit status the results call for: that of the first target in argument
    /// order that is not up; with `--any`, success if any one is up; under `--nagios`,
    /// the plugin state's (0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN).
    pub fn exit_status(&self) -> ExitStatus {
        if let Some(state) = self.inner.printer.borrow().plugin_state() {
            return state.exit_status();
        }
        let slots = self.inner.slots.borrow();
        let mut first_failure = None;
        let mut any_up = false;
        for slot in slots.iter() {
            match *slot {
                Slot::Final { up: true, .. } => any_up = true,
                Slot::Final { up: false, exit } if first_failure.is_none() => {
                    first_failure = Some(exit);
                }
                _ => {}
            }
        }
        match first_failure {
            _ if self.inner.options.any && any_up => ExitStatus::Success,
            Some(status) => status,
            None => ExitStatus::Success,
        }
    }

    /// The targets without a result yet (an interrupted `--wait`), each with what its
    /// last finished attempt saw, in argument order.
    pub fn still_down(&self) -> Vec<(Target, Option<Outcome>)> {
        let slots = self.inner.slots.borrow();
        slots
            .iter()
            .zip(&self.inner.targets)
            .filter_map(|(slot, target)| match slot {
                Slot::Final { .. } => None,
                Slot::Checking { last, .. } => Some((target.clone(), last.clone())),
                Slot::Retrying { last, .. } | Slot::Down { last } => {
                    Some((target.clone(), Some(last.clone())))
                }
                Slot::Starting => Some((target.clone(), None)),
            })
            .collect()
    }

    fn reactor(&self) -> &Reactor {
        &self.inner.ctx.reactor
    }

    fn start_check(&self, index: usize, last: Option<Outcome>) {
        let Some(target) = self.inner.targets.get(index) else {
            return;
        };
        if let Some(slot) = self.inner.slots.borrow_mut().get_mut(index) {
            *slot = Slot::Starting;
        }
        let this = self.clone();
        let check = Check::start(&self.inner.ctx, target, move |outcome| {
            this.check_done(index, outcome);
        });
        let mut slots = self.inner.slots.borrow_mut();
        if let Some(slot) = slots.get_mut(index)
            && matches!(slot, Slot::Starting)
        {
            *slot = Slot::Checking { check, last };
        }
    }

    fn check_done(&self, index: usize, outcome: Outcome) {
        if self.inner.finished.get() {
            return;
        }
        if outcome.status.passed() {
            self.finalize(index, outcome);
            if self.inner.options.any {
                self.cancel_the_rest();
            }
            return;
        }
        let Some(wait) = self.inner.options.wait else {
            self.finalize(index, outcome);
            return;
        };
        let deadline = self.inner.started_at + wait;
        let retry_at = self.reactor().seconds() + self.inner.options.interval;
        if retry_at >= deadline {
            // No retry fits before the deadline; the deadline reports it, so that
            // "still down after waiting 5s" is true.
            if let Some(slot) = self.inner.slots.borrow_mut().get_mut(index) {
                *slot = Slot::Down { last: outcome };
            }
            return;
        }
        let this = self.clone();
        let timer = self
            .reactor()
            .call_later(self.inner.options.interval, move || {
                let last = match this.inner.slots.borrow_mut().get_mut(index) {
                    Some(slot @ Slot::Retrying { .. }) => {
                        match std::mem::replace(slot, Slot::Starting) {
                            Slot::Retrying { last, .. } => Some(last),
                            _ => None,
                        }
                    }
                    _ => return,
                };
                this.start_check(index, last);
            });
        if let Some(slot) = self.inner.slots.borrow_mut().get_mut(index) {
            *slot = Slot::Retrying {
                timer,
                last: outcome,
            };
        }
    }

    /// Records a target's result, prints what the order allows, and ends the run when
    /// it was the last one.
    fn finalize(&self, index: usize, outcome: Outcome) {
        let done = Slot::Final {
            up: outcome.status.passed(),
            exit: outcome.exit_status(),
        };
        let previous = match self.inner.slots.borrow_mut().get_mut(index) {
            Some(slot) => std::mem::replace(slot, done),
            None => return,
        };
        if matches!(previous, Slot::Final { .. }) {
            // Already counted; keep the first result.
            if let Some(slot) = self.inner.slots.borrow_mut().get_mut(index) {
                *slot = previous;
            }
            return;
        }
        stop_slot(previous);
        let report = Report {
            target: self.inner.targets[index].clone(),
            outcome,
            elapsed: self
                .reactor()
                .seconds()
                .saturating_sub(self.inner.started_at),
        };
        self.inner.printer.borrow_mut().record(index, report);
        let unfinished = self.inner.unfinished.get().saturating_sub(1);
        self.inner.unfinished.set(unfinished);
        if unfinished == 0 {
            self.finish();
        }
    }

    /// `--any`: one is up, so every target still being checked is cancelled.
    fn cancel_the_rest(&self) {
        // No queued attempt may start now: that would only open sockets to close them.
        self.inner.ctx.gate.close();
        for index in self.unfinished_indices() {
            let last_addr = match &self.inner.slots.borrow()[index] {
                Slot::Checking { check, last } => check
                    .last_tried()
                    .or_else(|| last.as_ref().and_then(|o| o.addr)),
                Slot::Retrying { last, .. } | Slot::Down { last } => last.addr,
                Slot::Starting | Slot::Final { .. } => None,
            };
            self.finalize(index, Outcome::cancelled(last_addr));
        }
    }

    /// `--wait`'s deadline: every target still down is final with what it last saw.
    fn give_up_waiting(&self) {
        let Some(wait) = self.inner.options.wait else {
            return;
        };
        self.inner.deadline.borrow_mut().take();
        self.inner.ctx.gate.close();
        for index in self.unfinished_indices() {
            let (last, trying) = match &self.inner.slots.borrow()[index] {
                Slot::Checking { check, last } => (last.clone(), check.last_tried()),
                Slot::Retrying { last, .. } | Slot::Down { last } => (Some(last.clone()), None),
                Slot::Starting | Slot::Final { .. } => (None, None),
            };
            self.finalize(index, Outcome::gave_up(last, trying, wait));
        }
    }

    fn unfinished_indices(&self) -> Vec<usize> {
        self.inner
            .slots
            .borrow()
            .iter()
            .enumerate()
            .filter(|(_, slot)| !matches!(slot, Slot::Final { .. }))
            .map(|(index, _)| index)
            .collect()
    }

    fn finish(&self) {
        if self.inner.finished.replace(true) {
            return;
        }
        self.inner.printer.borrow_mut().finish();
        let deadline = self.inner.deadline.borrow_mut().take();
        if let Some(timer) = deadline {
            let _ = timer.cancel();
        }
        let reactor = self.reactor().clone();
        if reactor.running() {
            let _ = reactor.stop();
        } else {
            // Finished before the loop started (nothing to check): stop once it has.
            let r = reactor.clone();
            reactor.call_when_running(move || {
                let _ = r.stop();
            });
        }
    }
}

/// Stops whatever a slot had going.
fn stop_slot(slot: Slot) {
    match slot {
        Slot::Checking { check, .. } => check.cancel(),
        Slot::Retrying { timer, .. } => {
            let _ = timer.cancel();
        }
        Slot::Starting | Slot::Down { .. } | Slot::Final { .. } => {}
    }
}
