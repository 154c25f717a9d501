//! The watch's real probes (conntest's check of one target) and what asks for a
//! summary while it runs: SIGQUIT (Ctrl-\), and Enter when stdin is a terminal, as
//! ping does. Both are read on threads of their own and handed to the reactor
//! through a channel; the terminal is never read on the reactor thread.

use std::cell::RefCell;
use std::io::{BufRead, IsTerminal};
use std::rc::Rc;
use std::time::Duration;

use super::super::check::{Check, CheckContext};
use super::super::outcome::{Outcome, Status};
use super::super::targets::Target;
use super::{PendingProbe, ProbeResult, Prober};
use crate::duration;
use crate::reactor::Reactor;
use crate::reactor::endpoints::HostnameEndpoint;

/// Probes that connect to conntest's targets.
pub struct CheckProber {
    ctx: Rc<CheckContext>,
    targets: Vec<Target>,
    /// Each TCP target's endpoint, built once for all its probes (`None`: UNIX).
    endpoints: Vec<Option<HostnameEndpoint>>,
}

impl CheckProber {
    /// Probes for `targets`, sharing the check context (resolver, concurrency gate,
    /// timeout).
    pub fn new(ctx: Rc<CheckContext>, targets: Vec<Target>) -> CheckProber {
        let endpoints = targets
            .iter()
            .map(|target| {
                target
                    .unix()
                    .is_none()
                    .then(|| Check::endpoint(&ctx, target))
            })
            .collect();
        CheckProber {
            ctx,
            targets,
            endpoints,
        }
    }
}

struct PendingCheck(Rc<RefCell<Option<Check>>>);

impl PendingProbe for PendingCheck {
    fn cancel(&self) {
        if let Some(check) = self.0.borrow_mut().take() {
            check.cancel();
        }
    }
}

impl Prober for CheckProber {
    fn start(&self, index: usize, done: Box<dyn FnOnce(ProbeResult)>) -> Box<dyn PendingProbe> {
        let slot: Rc<RefCell<Option<Check>>> = Rc::new(RefCell::new(None));
        let timeout = self.ctx.timeout;
        let mine = slot.clone();
        let on_done = move |outcome: Outcome| {
            // The winning attempt's own time: from its connect() to the handshake,
            // without the name lookup or losing attempts.
            let time = mine
                .borrow_mut()
                .take()
                .and_then(|check| check.connect_time());
            done(result_of(&outcome, time, timeout));
        };
        let target = &self.targets[index];
        let check = match &self.endpoints[index] {
            Some(endpoint) => Check::start_on(&self.ctx, endpoint, target, on_done),
            None => Check::start(&self.ctx, target, on_done),
        };
        *slot.borrow_mut() = Some(check);
        Box::new(PendingCheck(slot))
    }
}

/// A check's outcome as a probe result.
fn result_of(outcome: &Outcome, time: Option<Duration>, timeout: Duration) -> ProbeResult {
    let passed = outcome.status == Status::Open;
    let error = match outcome.status {
        Status::Open | Status::Cancelled => None,
        Status::Timeout => Some(format!("timeout after {}", duration::format(timeout))),
        Status::Refused | Status::Unreachable => Some(outcome.status.as_str().to_owned()),
        _ => Some(format!(
            "{} ({})",
            outcome.status.as_str(),
            outcome.reason.as_deref().unwrap_or("failed")
        )),
    };
    ProbeResult {
        status: outcome.status.as_str(),
        passed,
        time: if passed { time } else { None },
        // With --tls: from the TCP connection to the end of the handshake.
        tls_time: if passed { outcome.found.tls_time } else { None },
        error,
    }
}

/// Calls `summary` on the reactor thread whenever SIGQUIT arrives, or a line is
/// entered on stdin when stdin is a terminal.
pub fn summary_on_request(reactor: &Reactor, summary: impl Fn() + 'static) {
    let sender = reactor.channel(move |_reactor: &Reactor, (): ()| summary());
    match signal_hook::iterator::Signals::new([signal_hook::consts::SIGQUIT]) {
        Ok(mut signals) => {
            let sender = sender.clone();
            let spawned = std::thread::Builder::new()
                .name("sigquit".into())
                .spawn(move || {
                    for _ in signals.forever() {
                        sender.send(());
                    }
                });
            if let Err(error) = spawned {
                log::warn!("Ctrl-\\ will not print a summary: {error}");
            }
        }
        Err(error) => log::warn!("Ctrl-\\ will not print a summary: {error}"),
    }
    if std::io::stdin().is_terminal() {
        let spawned = std::thread::Builder::new()
            .name("stdin".into())
            .spawn(move || {
                for line in std::io::stdin().lock().lines() {
                    if line.is_err() {
                        break;
                    }
                    sender.send(());
                }
            });
        if let Err(error) = spawned {
            log::warn!("Enter will not print a summary: {error}");
        }
    }
}
