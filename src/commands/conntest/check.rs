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
    CheckedFactory, Connecting, Connection, EndpointError, EndpointErrorKind, EndpointOptions,
    HostnameEndpoint, Resolver,
};
use crate::reactor::unix::{UnixCheckError, UnixConnectError, UnixEndpoint};
use crate::reactor::{
    Address, Deferred, Factory, Failure, Protocol, ProtocolResult, Reactor, Step, TransportRef,
    UnixAddress,
};

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
    /// `--closed`: a target passes when nothing accepts.
    pub closed: bool,
}

/// A check in progress.
#[derive(Debug, Clone)]
pub struct Check {
    cancelled: Rc<Cell<bool>>,
    connecting: Attempting,
}

/// A TCP connect through the hostname endpoint, or a UNIX one.
#[derive(Debug, Clone)]
enum Attempting {
    Host(Connecting),
    Unix(Deferred<Connection>),
}

impl Attempting {
    /// The connect's Deferred (another handle on it).
    fn deferred(&self) -> Deferred<Connection> {
        match self {
            Attempting::Host(connecting) => connecting.deferred(),
            Attempting::Unix(deferred) => deferred.clone(),
        }
    }
}

/// What a check connects with: the open check, or the probe's checked factory.
enum CheckFactory {
    Open(Rc<dyn Factory>),
    Probe(Rc<dyn CheckedFactory>),
}

impl Check {
    /// Starts checking `target`; `on_done` gets the outcome from the reactor loop,
    /// unless the check is cancelled first.
    pub fn start(
        ctx: &Rc<CheckContext>,
        target: &Target,
        on_done: impl FnOnce(Outcome) + 'static,
    ) -> Check {
        if let Some(address) = target.unix() {
            return Check::start_unix(ctx, target, address.clone(), on_done);
        }
        Check::start_on(ctx, &Check::endpoint(ctx, target), target, on_done)
    }

    /// The endpoint a check of the TCP `target` connects through: a caller that checks
    /// one target again and again (a watch) builds it once, and its name or IP literal
    /// is not taken apart again for every check.
    pub fn endpoint(ctx: &CheckContext, target: &Target) -> HostnameEndpoint {
        let options = EndpointOptions {
            attempt_timeout: Some(ctx.timeout),
            ..EndpointOptions::default()
        };
        HostnameEndpoint::new(&ctx.reactor, target.host.text.clone(), target.port)
            .with_options(options)
            .with_resolver(ctx.resolver.clone())
            .with_limiter(Rc::new(ctx.gate.clone()))
    }

    /// [`Check::start`] for a TCP `target`, through its `endpoint` (see
    /// [`Check::endpoint`]).
    pub fn start_on(
        ctx: &Rc<CheckContext>,
        endpoint: &HostnameEndpoint,
        target: &Target,
        on_done: impl FnOnce(Outcome) + 'static,
    ) -> Check {
        let timeout = ctx.timeout;
        let connect = |factory| {
            Attempting::Host(match factory {
                CheckFactory::Open(open) => endpoint.start_plain(open),
                CheckFactory::Probe(probe) => endpoint.start_checked(probe),
            })
        };
        let judge = move |result: Result<Connection, Failure>, target: &Target| {
            if let Some(attempts) = crate::commands::attempts::tried(&result) {
                super::output::log_attempts(target, attempts, timeout);
            }
            match result {
                Ok(connection) => match connection.peer {
                    Address::Tcp(addr) => Outcome::open(addr),
                    Address::Unix(_) => Outcome::cancelled(None),
                },
                Err(failure) => match failure.downcast_ref::<EndpointError>() {
                    Some(error) => outcome_of(&target.host.text, error, timeout),
                    None => Outcome::cancelled(None),
                },
            }
        };
        Check::start_with(ctx, target, connect, judge, on_done)
    }

    /// Checks a UNIX socket: one connect (no lookup, no race), then the same probe.
    fn start_unix(
        ctx: &Rc<CheckContext>,
        target: &Target,
        address: UnixAddress,
        on_done: impl FnOnce(Outcome) + 'static,
    ) -> Check {
        let timeout = ctx.timeout;
        // One cap for every socket: a UNIX target waits for a slot as a TCP attempt does.
        let endpoint = UnixEndpoint::new(&ctx.reactor, address)
            .with_timeout(Some(timeout))
            .with_limiter(Rc::new(ctx.gate.clone()));
        let connect = |factory| {
            Attempting::Unix(match factory {
                CheckFactory::Open(open) => endpoint.connect(open),
                CheckFactory::Probe(probe) => endpoint.connect_checked(probe),
            })
        };
        let judge = move |result: Result<Connection, Failure>, _: &Target| match result {
            Ok(_) => Outcome::open_unix(),
            Err(failure) => {
                if let Some(error) = failure.downcast_ref::<UnixConnectError>() {
                    Outcome::connect_failed(None, &error.error, timeout)
                } else if let Some(error) = failure.downcast_ref::<UnixCheckError>() {
                    check_failed(None, &error.failure)
                } else {
                    Outcome::cancelled(None)
                }
            }
        };
        Check::start_with(ctx, target, connect, judge, on_done)
    }

    /// The one way a check runs, over TCP or a UNIX socket: `connect` starts with the
    /// open check or the probe, `judge` says what the connect's result stands for, and
    /// what the probe found and `--closed` are applied here, before `on_done`.
    fn start_with(
        ctx: &Rc<CheckContext>,
        target: &Target,
        connect: impl FnOnce(CheckFactory) -> Attempting,
        judge: impl FnOnce(Result<Connection, Failure>, &Target) -> Outcome + 'static,
        on_done: impl FnOnce(Outcome) + 'static,
    ) -> Check {
        let cancelled = Rc::new(Cell::new(false));
        // What a probe finds (a certificate, a banner); the open check finds nothing.
        let mut findings = None;
        let connecting = connect(match &ctx.probe {
            Some(probe) if !probe.is_plain() => {
                let found = Rc::new(RefCell::new(Findings::default()));
                findings = Some(found.clone());
                CheckFactory::Probe(probe.factory(&ctx.reactor, target, ctx.timeout, found))
            }
            _ => CheckFactory::Open(OPEN_CHECK.with(Rc::clone)),
        });
        let (flag, checked, closed) = (cancelled.clone(), target.clone(), ctx.closed);
        let _ = connecting.deferred().then(move |result| {
            if !flag.get() {
                let mut outcome = judge(result, &checked);
                if let Some(findings) = findings {
                    outcome.found = findings.take();
                }
                if closed {
                    outcome = outcome.inverted(&checked.place());
                }
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
        match &self.connecting {
            Attempting::Host(connecting) => connecting.last_tried(),
            Attempting::Unix(_) => None,
        }
    }

    /// How long the winning attempt took, from its `connect()` to the established
    /// connection (no name lookup, no losing attempt); `None` until one connected.
    pub fn connect_time(&self) -> Option<Duration> {
        let Attempting::Host(connecting) = &self.connecting else {
            return None;
        };
        connecting.connect_time()
    }

    /// Stops the check; its `on_done` is not called.
    pub fn cancel(&self) {
        self.cancelled.set(true);
        match &self.connecting {
            Attempting::Host(connecting) => connecting.cancel(),
            Attempting::Unix(deferred) => deferred.cancel(),
        }
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
        EndpointErrorKind::Check { addr, failure } => check_failed(Some(*addr), failure),
        EndpointErrorKind::Cancelled
        | EndpointErrorKind::TimedOut { .. }
        | EndpointErrorKind::NoProtocol { .. } => Outcome::cancelled(last_tried),
    }
}

/// The outcome of a connection whose check failed.
fn check_failed(addr: Option<SocketAddr>, failure: &Failure) -> Outcome {
    let (status, reason) = match failure.downcast_ref::<ProbeFailure>() {
        Some(probe) => (probe.status, probe.reason.clone()),
        None => (Status::Error, failure.error_message()),
    };
    Outcome::new(status, addr, Some(reason))
}

/// The open check: a connection that completes is closed at once, without a byte.
struct OpenCheck;

thread_local! {
    /// The one open check every plain connect shares (it has no state).
    static OPEN_CHECK: Rc<dyn Factory> = Rc::new(OpenCheck);
}

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
