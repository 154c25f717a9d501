//! One check of one target: connect to it through the reactor's hostname endpoint
//! (name lookup off the loop, Happy Eyeballs, each attempt holding a slot of the
//! [`Gate`]) and say what happened as an [`Outcome`].

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use super::gate::Gate;
use super::outcome::{Outcome, Status};
use super::probe::{Findings, Prepared, ProbeFailure};
use super::targets::Target;
use crate::reactor::endpoints::{
    AttemptOutcome, Connecting, EndpointError, EndpointErrorKind, EndpointOptions,
    HostnameEndpoint, Resolver,
};
use crate::reactor::{Address, Factory, Protocol, ProtocolResult, Reactor, Step, TransportRef};

/// What every check shares.
#[derive(Debug)]
pub struct CheckContext {
    /// The loop everything runs on.
    pub reactor: Reactor,
    /// The cap on attempts in flight.
    pub gate: Gate,
    /// Name lookups, shared so that overlapping lookups of one name are one.
    pub resolver: Resolver,
    /// Each connection attempt's timeout (and the check's on the connection).
    pub timeout: Duration,
    /// What is checked on a connection; `None`: that it opens.
    pub probe: Option<Rc<Prepared>>,
}

/// A check in progress.
#[derive(Debug, Clone)]
pub struct Check {
    cancelled: Rc<Cell<bool>>,
    connecting: Connecting,
}

impl Check {
    /// Starts checking `target`; `on_done` gets the outcome from the reactor loop,
    /// unless the check is cancelled first.
    pub fn start(
        ctx: &Rc<CheckContext>,
        target: &Target,
        on_done: impl FnOnce(Outcome) + 'static,
    ) -> Check {
        let cancelled = Rc::new(Cell::new(false));
        let timeout = ctx.timeout;
        let options = EndpointOptions {
            attempt_timeout: Some(timeout),
            ..EndpointOptions::default()
        };
        let endpoint = HostnameEndpoint::new(&ctx.reactor, target.host.text.clone(), target.port)
            .with_options(options)
            .with_resolver(ctx.resolver.clone())
            .with_limiter(Rc::new(ctx.gate.clone()));
        let findings = Rc::new(RefCell::new(Findings::default()));
        let connecting = match &ctx.probe {
            Some(probe) if !probe.is_plain() => endpoint.start_checked(probe.factory(
                &ctx.reactor,
                &target.host.text,
                timeout,
                findings.clone(),
            )),
            _ => endpoint.start_plain(Rc::new(OpenCheck)),
        };
        let (flag, host, checked) = (cancelled.clone(), target.host.clone(), target.clone());
        let _ = connecting.deferred().then(move |result| {
            if !flag.get() {
                let attempts = match &result {
                    Ok(connection) => Some(&connection.attempts),
                    Err(failure) => failure
                        .downcast_ref::<EndpointError>()
                        .map(|error| &error.attempts),
                };
                if let Some(attempts) = attempts {
                    super::output::log_attempts(&checked, attempts, timeout);
                }
                let mut outcome = match result {
                    Ok(connection) => match connection.peer {
                        Address::Tcp(addr) => Outcome::open(addr),
                        Address::Unix(_) => Outcome::cancelled(None),
                    },
                    Err(failure) => match failure.downcast_ref::<EndpointError>() {
                        Some(error) => outcome_of(&host.text, error, timeout),
                        None => Outcome::cancelled(None),
                    },
                };
                outcome.found = findings.take();
                on_done(outcome);
            }
            Step::Value(())
        });
        Check {
            cancelled,
            connecting,
        }
    }

    /// The address the check is trying, or tried last; `None` while resolving.
    pub fn last_tried(&self) -> Option<SocketAddr> {
        self.connecting.last_tried()
    }

    /// How long the winning attempt took, from its `connect()` to the established
    /// connection (no name lookup, no losing attempt); `None` until one connected.
    pub fn connect_time(&self) -> Option<Duration> {
        self.connecting
            .attempts()
            .into_iter()
            .find(|attempt| matches!(attempt.outcome, AttemptOutcome::Connected))
            .and_then(|attempt| attempt.took)
    }

    /// Stops the check; its `on_done` is not called.
    pub fn cancel(&self) {
        self.cancelled.set(true);
        self.connecting.cancel();
    }
}

/// The outcome a failed connect stands for.
fn outcome_of(host: &str, error: &EndpointError, timeout: Duration) -> Outcome {
    let last_tried = error.attempts.last().map(|attempt| attempt.addr);
    match &error.kind {
        EndpointErrorKind::DnsLookup(error) => Outcome::unresolved(host, error),
        EndpointErrorKind::Connect { addr, error } => {
            Outcome::connect_failed(Some(*addr), error, timeout)
        }
        EndpointErrorKind::Check { addr, failure } => {
            let (status, reason) = match failure.downcast_ref::<ProbeFailure>() {
                Some(probe) => (probe.status, probe.reason.clone()),
                None => (Status::Error, failure.error_message()),
            };
            Outcome {
                status,
                addr: Some(*addr),
                reason: Some(reason),
                gave_up_waiting: false,
                found: Findings::default(),
            }
        }
        EndpointErrorKind::Cancelled
        | EndpointErrorKind::TimedOut { .. }
        | EndpointErrorKind::NoProtocol { .. } => Outcome::cancelled(last_tried),
    }
}

/// The open check: a connection that completes is closed at once, without a byte.
struct OpenCheck;

impl Factory for OpenCheck {
    fn build_protocol(&self, _addr: Address) -> Option<Box<dyn Protocol>> {
        Some(Box::new(CloseAtOnce))
    }
}

struct CloseAtOnce;

impl Protocol for CloseAtOnce {
    fn connection_made(&mut self, transport: &TransportRef) -> ProtocolResult {
        transport.lose_connection();
        Ok(())
    }

    fn data_received(&mut self, _transport: &TransportRef, _data: &[u8]) -> ProtocolResult {
        Ok(())
    }
}
