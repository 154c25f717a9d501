//! One check of one target: resolve its host if it is a name, race its addresses, and
//! say what happened as an [`Outcome`].

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use super::gate::Gate;
use super::outcome::Outcome;
use super::race::{Race, RaceOutcome, RaceSettings};
use super::resolve::Resolver;
use super::targets::{HostKind, Target};
use crate::reactor::Reactor;

/// What every check shares.
#[derive(Debug)]
pub struct CheckContext {
    /// The loop everything runs on.
    pub reactor: Reactor,
    /// The cap on attempts in flight.
    pub gate: Gate,
    /// Name lookups.
    pub resolver: Resolver,
    /// Each connection attempt's timeout.
    pub timeout: Duration,
}

/// A check in progress.
#[derive(Debug, Clone)]
pub struct Check {
    cancelled: Rc<Cell<bool>>,
    race: Rc<RefCell<Option<Race>>>,
}

impl Check {
    /// Starts checking `target`; `on_done` gets the outcome from the reactor loop,
    /// unless the check is cancelled first.
    pub fn start(
        ctx: &Rc<CheckContext>,
        target: &Target,
        on_done: impl FnOnce(Outcome) + 'static,
    ) -> Check {
        let check = Check {
            cancelled: Rc::new(Cell::new(false)),
            race: Rc::new(RefCell::new(None)),
        };
        let port = target.port;
        match &target.host.kind {
            HostKind::Ip(ip) => check.race(ctx, &[SocketAddr::new(*ip, port)], on_done),
            HostKind::Name(name) => {
                let (this, ctx2, host) = (check.clone(), ctx.clone(), target.host.clone());
                ctx.resolver.resolve(name, move |resolution| {
                    if this.cancelled.get() {
                        return;
                    }
                    match resolution {
                        Ok(ips) => {
                            let addrs: Vec<SocketAddr> = ips
                                .into_iter()
                                .map(|ip| SocketAddr::new(ip, port))
                                .collect();
                            this.race(&ctx2, &addrs, on_done);
                        }
                        Err(error) => on_done(Outcome::unresolved(&host.text, &error)),
                    }
                });
            }
        }
        check
    }

    fn race(
        &self,
        ctx: &Rc<CheckContext>,
        addrs: &[SocketAddr],
        on_done: impl FnOnce(Outcome) + 'static,
    ) {
        let cancelled = self.cancelled.clone();
        let timeout = ctx.timeout;
        let race = Race::start(
            &ctx.reactor,
            &ctx.gate,
            addrs,
            RaceSettings::with_timeout(timeout),
            move |outcome| {
                if cancelled.get() {
                    return;
                }
                on_done(match outcome {
                    RaceOutcome::Connected(addr) => Outcome::open(addr),
                    RaceOutcome::Failed { addr, error } => {
                        Outcome::connect_failed(addr, &error, timeout)
                    }
                    RaceOutcome::Cancelled { last_tried } => Outcome::cancelled(last_tried),
                });
            },
        );
        *self.race.borrow_mut() = Some(race);
    }

    /// The address the check is trying, or tried last; `None` while resolving.
    pub fn last_tried(&self) -> Option<SocketAddr> {
        self.race.borrow().as_ref().and_then(Race::last_tried)
    }

    /// Stops the check; its `on_done` is not called.
    pub fn cancel(&self) {
        self.cancelled.set(true);
        let race = self.race.borrow_mut().take();
        if let Some(race) = race {
            race.cancel();
        }
    }
}
