//! Endpoints: connecting to a host by name (Twisted's `HostnameEndpoint`, spec E-01..E-08)
//! and endpoint descriptions (`tcp:`, `unix:`, `ssl:`/`tls:`, E-09).
//!
//! [`HostnameEndpoint::connect`] resolves the host off the loop thread (an IP literal
//! skips the resolver), races its addresses with Happy Eyeballs ([`interleave`]d
//! families, [`ATTEMPT_DELAY`] between starts, the next attempt at once when the
//! latest fails), and returns a [`Deferred`] that fires with the first [`Connection`]
//! made. Only that connection gets a protocol from the caller's factory; every other
//! attempt is stopped and a late one is closed without a protocol.
//!
//! A caller that means "connected, and the protocol finished its check" (a TLS
//! handshake, a banner) uses [`HostnameEndpoint::connect_checked`]: its factory gets a
//! [`CheckHandle`], and the Deferred fires only when the protocol calls
//! [`CheckHandle::pass`]. A failed check ([`EndpointErrorKind::Check`]) is told apart
//! from a failed connect ([`EndpointErrorKind::Connect`]).
//!
//! Whatever the outcome, every address tried is reported with what became of it
//! ([`Attempt`]), on the [`Connection`] and on the [`EndpointError`].
//!
//! ```no_run
//! use std::rc::Rc;
//! use twistctl::reactor::endpoints::HostnameEndpoint;
//! use twistctl::reactor::{Address, Factory, Protocol, ProtocolResult, Reactor, Step, TransportRef};
//!
//! /// Says hello and hangs up.
//! struct Hello;
//!
//! impl Protocol for Hello {
//!     fn connection_made(&mut self, transport: &TransportRef) -> ProtocolResult {
//!         transport.write(b"hello\r\n");
//!         transport.lose_connection();
//!         Ok(())
//!     }
//!
//!     fn data_received(&mut self, _: &TransportRef, _: &[u8]) -> ProtocolResult {
//!         Ok(())
//!     }
//! }
//!
//! struct HelloFactory;
//!
//! impl Factory for HelloFactory {
//!     fn build_protocol(&self, _peer: Address) -> Option<Box<dyn Protocol>> {
//!         Some(Box::new(Hello))
//!     }
//! }
//!
//! let reactor = Reactor::new()?;
//! let r = reactor.clone();
//! HostnameEndpoint::new(&reactor, "localhost", 8000)
//!     .connect(Rc::new(HelloFactory))
//!     .add_both(move |outcome| {
//!         match &outcome {
//!             Ok(connection) => println!("connected to {}", connection.peer),
//!             Err(failure) => println!("{failure}"),
//!         }
//!         let _ = r.stop();
//!         Step::from(outcome)
//!     });
//! reactor.run()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod description;
mod race;
mod resolve;
mod watched;

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::rc::{Rc, Weak};
use std::time::Duration;

pub use description::{
    ClientDescription, DescriptionError, ListenError, Listening, ServerDescription, parse_client,
    parse_server,
};
pub use race::interleave;
pub use resolve::{Family, Resolution, ResolveError, Resolver};

use race::{Race, RaceSettings};
pub(crate) use watched::{Watch, Watched};

use super::tcp::DEFAULT_CONNECT_TIMEOUT;
use super::{
    Address, CloseReason, ConnectError, Deferred, DelayedCall, Factory, Failure, Protocol,
    ProtocolResult, Reactor, TransportRef,
};

/// RFC 8305's recommended "Connection Attempt Delay" (E-04; Twisted uses 300 ms).
pub const ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// How long a name lookup may take by default before it is given up.
pub const DEFAULT_RESOLVE_TIMEOUT: Duration = Duration::from_secs(30);

/// How an endpoint connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointOptions {
    /// Each attempt's own timeout (X-14; `None`: the kernel's).
    pub attempt_timeout: Option<Duration>,
    /// Time between the start of one attempt and the next (E-04).
    pub attempt_delay: Duration,
    /// How long the name lookup may take (ignored when a [`Resolver`] is given).
    pub resolve_timeout: Duration,
    /// An overall deadline for the whole connect, resolution and check included (E-08).
    pub deadline: Option<Duration>,
    /// Which address families may be used (ignored when a [`Resolver`] is given).
    pub family: Family,
}

impl Default for EndpointOptions {
    fn default() -> Self {
        EndpointOptions {
            attempt_timeout: Some(DEFAULT_CONNECT_TIMEOUT),
            attempt_delay: ATTEMPT_DELAY,
            resolve_timeout: DEFAULT_RESOLVE_TIMEOUT,
            deadline: None,
            family: Family::Any,
        }
    }
}

/// A slot of an [`AttemptLimiter`], held by an attempt until its socket is closed.
pub type Permit = Box<dyn Any>;

/// What an [`AttemptLimiter`] calls when it hands out a slot.
pub type Grant = Box<dyn FnOnce(Permit)>;

/// Caps how many attempts are in flight, across endpoints (a port scan's socket
/// budget). Each attempt asks for a slot before it opens a socket and holds the permit
/// it is given until its socket is closed; dropping the permit gives the slot back.
pub trait AttemptLimiter {
    /// Calls `grant` with a permit, now or when a slot is free. A limiter that will
    /// never grant (it was closed) may drop `grant`.
    fn acquire(&self, grant: Grant);
}

/// What became of one attempt.
#[derive(Debug, Clone)]
pub enum AttemptOutcome {
    /// Still under way.
    Pending,
    /// It connected first: its connection is the endpoint's.
    Connected,
    /// It failed.
    Failed(ConnectError),
    /// It was stopped (another won, the connect was cancelled or timed out), or it
    /// connected after the race was decided and was closed without a protocol.
    Stopped,
}

/// One address tried, and what became of it.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// The address tried.
    pub addr: SocketAddr,
    /// When the attempt started, from the start of the connect.
    pub started: Duration,
    /// How long it took to end (`None` while pending).
    pub took: Option<Duration>,
    /// How it ended.
    pub outcome: AttemptOutcome,
}

/// The connection an endpoint made: what its Deferred fires with.
///
/// Twisted's endpoint fires with the protocol; here the protocol belongs to its
/// transport, so the caller gets the transport and keeps its own handle on the
/// protocol's state if it needs one.
#[derive(Clone)]
pub struct Connection {
    /// The connection's transport.
    pub transport: TransportRef,
    /// The address connected to.
    pub peer: Address,
    /// Every address tried, in start order, the winner included.
    pub attempts: Vec<Attempt>,
    /// Time from the start of the connect until it fired.
    pub elapsed: Duration,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("peer", &self.peer)
            .field("attempts", &self.attempts)
            .field("elapsed", &self.elapsed)
            .finish()
    }
}

/// What a connect was still waiting for when its deadline passed (E-08).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pending {
    /// The name lookup.
    Resolving,
    /// These attempts (empty: waiting for a slot of the [`AttemptLimiter`]).
    Connecting(Vec<SocketAddr>),
    /// The check of the connection to this address.
    Checking(SocketAddr),
}

/// How a connect failed.
#[derive(Debug, Clone)]
pub enum EndpointErrorKind {
    /// The name could not be resolved, or had no address of an allowed family
    /// (Twisted's DNSLookupError, E-03).
    DnsLookup(ResolveError),
    /// Every attempt failed; the failure of the one that failed last (E-06).
    Connect {
        /// The address of that attempt.
        addr: SocketAddr,
        /// Why it failed.
        error: ConnectError,
    },
    /// The Deferred was cancelled before a connection was made (Twisted's
    /// ConnectingCancelledError, E-07).
    Cancelled,
    /// The overall deadline passed (E-08).
    TimedOut {
        /// The deadline.
        after: Duration,
        /// What was still pending.
        pending: Pending,
    },
    /// The winning connection's factory built no protocol (Twisted's NoProtocol).
    NoProtocol {
        /// The address connected to.
        addr: SocketAddr,
    },
    /// Connected, but the protocol's check failed (or the connection ended before the
    /// check passed).
    Check {
        /// The address connected to.
        addr: SocketAddr,
        /// What the protocol said, or why the connection ended.
        failure: Failure,
    },
}

/// A failed connect: which host and port, why, and every address tried.
#[derive(Debug, Clone)]
pub struct EndpointError {
    /// The host as given.
    pub host: String,
    /// The port.
    pub port: u16,
    /// What went wrong.
    pub kind: EndpointErrorKind,
    /// Every address tried, in start order, with its outcome.
    pub attempts: Vec<Attempt>,
}

impl fmt::Display for Pending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pending::Resolving => f.write_str("resolving the name"),
            Pending::Connecting(addrs) if addrs.is_empty() => {
                f.write_str("waiting for a slot to connect")
            }
            Pending::Connecting(addrs) => {
                f.write_str("connecting to ")?;
                for (i, addr) in addrs.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{addr}")?;
                }
                Ok(())
            }
            Pending::Checking(addr) => write!(f, "checking the connection to {addr}"),
        }
    }
}

impl fmt::Display for EndpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (host, port) = (&self.host, self.port);
        match &self.kind {
            EndpointErrorKind::DnsLookup(error) => write!(f, "cannot resolve {host}: {error}"),
            EndpointErrorKind::Connect { addr, error } => {
                write!(f, "cannot connect to {host} port {port}: {addr}: {error}")
            }
            EndpointErrorKind::Cancelled => {
                write!(f, "connecting to {host} port {port} was cancelled")
            }
            EndpointErrorKind::TimedOut { after, pending } => write!(
                f,
                "connecting to {host} port {port} timed out after {} while {pending}",
                crate::duration::format(*after)
            ),
            EndpointErrorKind::NoProtocol { addr } => {
                write!(f, "connected to {addr}, but no protocol was built for it")
            }
            EndpointErrorKind::Check { addr, failure } => {
                write!(f, "connected to {addr}, but the check failed: {failure}")
            }
        }
    }
}

impl std::error::Error for EndpointError {}

/// A factory whose protocol checks the connection before it counts as made: it gets a
/// [`CheckHandle`] and calls [`CheckHandle::pass`] or [`CheckHandle::fail`].
pub trait CheckedFactory: 'static {
    /// The protocol for the winning connection to `addr` (TCP, or UNIX through
    /// `unix::UnixEndpoint::connect_checked`), or `None` to refuse it.
    fn build_protocol(&self, addr: Address, check: CheckHandle) -> Option<Box<dyn Protocol>>;
}

/// What a [`CheckHandle`] reports to: the connect under way that waits for the check
/// (a [`HostnameEndpoint`]'s, or a UNIX endpoint's).
pub(crate) trait CheckSink {
    /// The check passed.
    fn check_passed(self: Rc<Self>);
    /// The check failed with `failure`.
    fn check_failed(self: Rc<Self>, failure: Failure);
}

/// How a protocol built by a [`CheckedFactory`] says its check is done. Calls after
/// the first, or after the connect ended (cancelled, timed out), do nothing.
#[derive(Clone)]
pub struct CheckHandle {
    sink: Weak<dyn CheckSink>,
}

impl fmt::Debug for CheckHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CheckHandle")
    }
}

impl CheckHandle {
    /// The check passed: the endpoint's Deferred fires with the connection (at once if
    /// `connection_made` has run, else right after it).
    pub fn pass(&self) {
        if let Some(sink) = self.sink.upgrade() {
            sink.check_passed();
        }
    }

    /// The check failed: the connection is closed (orderly) and the Deferred errbacks
    /// with [`EndpointErrorKind::Check`] (a UNIX endpoint's with its own error).
    pub fn fail(&self, failure: impl Into<Failure>) {
        if let Some(sink) = self.sink.upgrade() {
            sink.check_failed(failure.into());
        }
    }

    /// A handle reporting to `sink`.
    pub(crate) fn new(sink: Weak<dyn CheckSink>) -> CheckHandle {
        CheckHandle { sink }
    }
}

impl CheckSink for ConnectingInner {
    fn check_passed(self: Rc<Self>) {
        ConnectingInner::check_passed(&self);
    }

    fn check_failed(self: Rc<Self>, failure: Failure) {
        ConnectingInner::check_failed(&self, failure);
    }
}

/// The caller's factory, in either form.
#[derive(Clone)]
enum EndpointFactory {
    /// Connected means `connection_made` ran.
    Plain(Rc<dyn Factory>),
    /// Connected means the protocol passed its check.
    Checked(Rc<dyn CheckedFactory>),
}

/// A client endpoint for HOST:PORT (Twisted's `HostnameEndpoint`, E-01..E-08).
#[derive(Clone)]
pub struct HostnameEndpoint {
    reactor: Reactor,
    /// Shared with every connect it starts, so starting one copies no string.
    host: Rc<str>,
    port: u16,
    /// The host as an IP address, when it is one: parsed once, for every connect.
    literal: Option<IpAddr>,
    options: EndpointOptions,
    addresses: Option<Vec<SocketAddr>>,
    resolver: Option<Resolver>,
    limiter: Option<Rc<dyn AttemptLimiter>>,
}

impl fmt::Debug for HostnameEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostnameEndpoint")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("options", &self.options)
            .field("addresses", &self.addresses)
            .finish()
    }
}

/// `host` without the brackets of `[::1]`.
fn bare_host(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

impl HostnameEndpoint {
    /// An endpoint for `host` (a name, an IP literal, or `[v6]`) and `port`, with
    /// default options.
    pub fn new(reactor: &Reactor, host: impl Into<String>, port: u16) -> HostnameEndpoint {
        let host: String = host.into();
        let host: Rc<str> = Rc::from(bare_host(&host));
        HostnameEndpoint {
            reactor: reactor.clone(),
            literal: host.parse().ok(),
            host,
            port,
            options: EndpointOptions::default(),
            addresses: None,
            resolver: None,
            limiter: None,
        }
    }

    /// Connects with these options.
    pub fn with_options(mut self, options: EndpointOptions) -> HostnameEndpoint {
        self.options = options;
        self
    }

    /// Skips resolution and races exactly these addresses (tests; callers that know
    /// the addresses). The family filter does not apply to them.
    pub fn with_addresses(mut self, addresses: Vec<SocketAddr>) -> HostnameEndpoint {
        self.addresses = Some(addresses);
        self
    }

    /// Resolves through `resolver` (shared by many endpoints, so that overlapping
    /// lookups of one name are one lookup); its timeout and family apply.
    pub fn with_resolver(mut self, resolver: Resolver) -> HostnameEndpoint {
        self.resolver = Some(resolver);
        self
    }

    /// Takes a slot of `limiter` for each attempt.
    pub fn with_limiter(mut self, limiter: Rc<dyn AttemptLimiter>) -> HostnameEndpoint {
        self.limiter = Some(limiter);
        self
    }

    /// The host as given (without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Connects; the Deferred fires with the first connection made, after its
    /// protocol's `connection_made` (E-01), or errbacks with an [`EndpointError`].
    /// Cancelling it before then stops everything (E-07).
    pub fn connect(&self, factory: Rc<dyn Factory>) -> Deferred<Connection> {
        self.start(EndpointFactory::Plain(factory)).deferred()
    }

    /// Connects, and counts the connection as made only when its protocol passes its
    /// check (see [`CheckedFactory`]).
    pub fn connect_checked(&self, factory: Rc<dyn CheckedFactory>) -> Deferred<Connection> {
        self.start(EndpointFactory::Checked(factory)).deferred()
    }

    /// [`HostnameEndpoint::connect_checked`], returning a handle that can also say what
    /// is going on while the connect is under way.
    pub fn start_checked(&self, factory: Rc<dyn CheckedFactory>) -> Connecting {
        self.start(EndpointFactory::Checked(factory))
    }

    /// [`HostnameEndpoint::connect`], returning a handle that can also say what is going
    /// on while the connect is under way.
    pub fn start_plain(&self, factory: Rc<dyn Factory>) -> Connecting {
        self.start(EndpointFactory::Plain(factory))
    }

    fn start(&self, factory: EndpointFactory) -> Connecting {
        let started_at = self.reactor.seconds();
        let inner = Rc::new(ConnectingInner {
            reactor: self.reactor.clone(),
            host: self.host.clone(),
            port: self.port,
            settings: RaceSettings {
                attempt_timeout: self.options.attempt_timeout,
                attempt_delay: self.options.attempt_delay,
                limiter: self.limiter.clone(),
                origin: started_at,
            },
            factory,
            started_at,
            deferred: RefCell::new(None),
            phase: RefCell::new(Phase::Resolving),
            passed_early: Cell::new(false),
            deadline: RefCell::new(None),
        });
        let weak = Rc::downgrade(&inner);
        let deferred = Deferred::with_canceller(move |_| {
            if let Some(inner) = weak.upgrade() {
                inner.finish(Err(EndpointErrorKind::Cancelled));
            }
        });
        *inner.deferred.borrow_mut() = Some(deferred.clone());
        let connecting = Connecting {
            inner: inner.clone(),
            deferred,
        };
        if let Some(after) = self.options.deadline {
            let weak = Rc::downgrade(&inner);
            let timer = self.reactor.call_later(after, move || {
                if let Some(inner) = weak.upgrade() {
                    inner.time_out(after);
                }
            });
            *inner.deadline.borrow_mut() = Some(timer);
        }
        if let Some(addresses) = &self.addresses {
            inner.race(addresses);
            return connecting;
        }
        if let Some(ip) = self.literal {
            // E-02: an IP literal skips the resolver (but not its family filter).
            let family = self
                .resolver
                .as_ref()
                .map_or(self.options.family, Resolver::family);
            if family.allows(ip) {
                inner.race(&[SocketAddr::new(ip, self.port)]);
            } else {
                let error = ResolveError::NoAddressOfFamily(family);
                inner.finish(Err(EndpointErrorKind::DnsLookup(error)));
            }
            return connecting;
        }
        let resolver = self.resolver.clone().unwrap_or_else(|| {
            Resolver::new(
                &self.reactor,
                self.options.resolve_timeout,
                self.options.family,
            )
        });
        // The lookup holds the connect (strongly: a caller may drop every handle and
        // still expect its callbacks to run); the resolver's own timeout ends it.
        let pending = inner.clone();
        resolver.resolve(&self.host, move |resolution| pending.resolved(resolution));
        connecting
    }
}

/// A connect under way (or over): its Deferred, and what it has tried so far.
#[derive(Clone)]
pub struct Connecting {
    inner: Rc<ConnectingInner>,
    deferred: Deferred<Connection>,
}

impl fmt::Debug for Connecting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connecting")
            .field("host", &self.inner.host)
            .field("port", &self.inner.port)
            .finish()
    }
}

impl Connecting {
    /// The Deferred of the connection (another handle on the same Deferred).
    pub fn deferred(&self) -> Deferred<Connection> {
        self.deferred.clone()
    }

    /// Every attempt started so far, with its outcome.
    pub fn attempts(&self) -> Vec<Attempt> {
        self.inner.attempts()
    }

    /// The address of the attempt started last, if any has started.
    pub fn last_tried(&self) -> Option<SocketAddr> {
        self.inner
            .with_attempts(|attempts| attempts.last().map(|attempt| attempt.addr))
    }

    /// How long the attempt that connected took, from its `connect()` to the
    /// established connection; `None` until one connected. Copies no attempt list (a
    /// watch asks on every probe).
    pub fn connect_time(&self) -> Option<Duration> {
        self.inner.with_attempts(|attempts| {
            attempts
                .iter()
                .find(|attempt| matches!(attempt.outcome, AttemptOutcome::Connected))
                .and_then(|attempt| attempt.took)
        })
    }

    /// Cancels the connect (E-07): the same as cancelling its Deferred.
    pub fn cancel(&self) {
        self.deferred.cancel();
    }
}

/// Where a connect is.
enum Phase {
    /// Waiting for the resolver.
    Resolving,
    /// Racing the addresses.
    Racing(Race),
    /// Connected to `peer`; waiting for `connection_made` (no transport yet) and the
    /// check.
    Checking {
        race: Race,
        peer: SocketAddr,
        transport: Option<TransportRef>,
    },
    /// Over: the attempts as they ended.
    Done(Vec<Attempt>),
}

struct ConnectingInner {
    reactor: Reactor,
    host: Rc<str>,
    port: u16,
    settings: RaceSettings,
    factory: EndpointFactory,
    started_at: Duration,
    /// Until it fires.
    deferred: RefCell<Option<Deferred<Connection>>>,
    phase: RefCell<Phase>,
    /// The check passed before `connection_made` ran.
    passed_early: Cell<bool>,
    deadline: RefCell<Option<DelayedCall>>,
}

impl ConnectingInner {
    fn attempts(&self) -> Vec<Attempt> {
        self.with_attempts(<[Attempt]>::to_vec)
    }

    /// Runs `f` on the attempts so far, without copying them.
    fn with_attempts<R>(&self, f: impl FnOnce(&[Attempt]) -> R) -> R {
        match &*self.phase.borrow() {
            Phase::Resolving => f(&[]),
            Phase::Racing(race) | Phase::Checking { race, .. } => race.with_attempts(f),
            Phase::Done(attempts) => f(attempts),
        }
    }

    fn resolved(self: &Rc<Self>, resolution: Resolution) {
        if !matches!(*self.phase.borrow(), Phase::Resolving) {
            // E-07: cancelled (or timed out) meanwhile; the answer is ignored.
            return;
        }
        match resolution {
            Ok(ips) => {
                if log::log_enabled!(log::Level::Info) {
                    let shown: Vec<String> = ips.iter().map(IpAddr::to_string).collect();
                    // For `-v`: what a user debugging a connection wants to see first.
                    log::info!("{} resolved to {}", self.host, shown.join(", "));
                }
                let addrs: Vec<SocketAddr> = ips
                    .into_iter()
                    .map(|ip| SocketAddr::new(ip, self.port))
                    .collect();
                self.race(&addrs);
            }
            Err(error) => self.finish(Err(EndpointErrorKind::DnsLookup(error))),
        }
    }

    fn race(self: &Rc<Self>, addrs: &[SocketAddr]) {
        if addrs.is_empty() {
            let error = ResolveError::Failed("no addresses to connect to".into());
            self.finish(Err(EndpointErrorKind::DnsLookup(error)));
            return;
        }
        // The race holds the connect while it runs, and lets go of it when it ends,
        // which breaks the cycle.
        let race = Race::start(&self.reactor, addrs, self.settings.clone(), self.clone());
        let mut phase = self.phase.borrow_mut();
        if matches!(*phase, Phase::Resolving) {
            *phase = Phase::Racing(race);
        } else {
            drop(phase);
            race.cancel();
        }
    }

    /// The race's winner: only it gets a protocol (E-01, E-05).
    fn won(self: &Rc<Self>, peer: SocketAddr) -> Option<Box<dyn Protocol>> {
        {
            let mut phase = self.phase.borrow_mut();
            let race = match &*phase {
                Phase::Racing(race) => race.clone(),
                _ => return None,
            };
            *phase = Phase::Checking {
                race,
                peer,
                transport: None,
            };
        }
        let protocol = match &self.factory {
            EndpointFactory::Plain(factory) => factory.build_protocol(Address::Tcp(peer)),
            EndpointFactory::Checked(factory) => {
                let sink: Weak<dyn CheckSink> = Rc::downgrade(self) as Weak<ConnectingInner>;
                factory.build_protocol(Address::Tcp(peer), CheckHandle::new(sink))
            }
        };
        let Some(protocol) = protocol else {
            self.finish(Err(EndpointErrorKind::NoProtocol { addr: peer }));
            return None;
        };
        Some(Box::new(Watched::new(protocol, self.clone())))
    }

    /// The winner's connection is made: its transport is known.
    fn record_transport(self: &Rc<Self>, transport: &TransportRef) {
        if let Phase::Checking {
            transport: slot, ..
        } = &mut *self.phase.borrow_mut()
        {
            *slot = Some(transport.clone());
        }
        if self.passed_early.get() {
            self.check_passed();
        }
    }

    fn check_passed(self: &Rc<Self>) {
        let connection = match &*self.phase.borrow() {
            Phase::Checking {
                race,
                peer,
                transport: Some(transport),
            } => Connection {
                transport: transport.clone(),
                peer: Address::Tcp(*peer),
                attempts: race.attempts(),
                elapsed: self.reactor.seconds().saturating_sub(self.started_at),
            },
            Phase::Checking {
                transport: None, ..
            } => {
                self.passed_early.set(true);
                return;
            }
            _ => return,
        };
        self.finish(Ok(connection));
    }

    fn check_failed(self: &Rc<Self>, failure: Failure) {
        let addr = match &*self.phase.borrow() {
            Phase::Checking { peer, .. } => *peer,
            _ => return,
        };
        self.finish(Err(EndpointErrorKind::Check { addr, failure }));
    }

    /// E-08: the deadline passed; say what was pending.
    fn time_out(self: &Rc<Self>, after: Duration) {
        self.deadline.borrow_mut().take();
        let pending = match &*self.phase.borrow() {
            Phase::Resolving => Pending::Resolving,
            Phase::Racing(race) => Pending::Connecting(race.in_flight()),
            Phase::Checking { peer, .. } => Pending::Checking(*peer),
            Phase::Done(_) => return,
        };
        self.finish(Err(EndpointErrorKind::TimedOut { after, pending }));
    }

    /// Ends the connect with `result`: stops whatever is under way, and fires the
    /// Deferred. Only the first call counts.
    fn finish(self: &Rc<Self>, result: Result<Connection, EndpointErrorKind>) {
        let Some(deferred) = self.deferred.borrow_mut().take() else {
            return;
        };
        let timer = self.deadline.borrow_mut().take();
        if let Some(timer) = timer {
            let _ = timer.cancel();
        }
        let phase = std::mem::replace(&mut *self.phase.borrow_mut(), Phase::Done(Vec::new()));
        let attempts = match phase {
            Phase::Resolving | Phase::Done(_) => Vec::new(),
            Phase::Racing(race) => {
                race.cancel();
                race.take_attempts()
            }
            Phase::Checking {
                race, transport, ..
            } => {
                match (&result, transport) {
                    (Ok(_), _) | (Err(_), None) => {}
                    (Err(EndpointErrorKind::Check { .. }), Some(transport)) => {
                        transport.lose_connection();
                    }
                    (Err(_), Some(transport)) => transport.abort_connection(),
                }
                race.take_attempts()
            }
        };
        let _ = match result {
            Ok(connection) => {
                // The connection carries its own copy of the attempts.
                *self.phase.borrow_mut() = Phase::Done(attempts);
                deferred.callback(connection)
            }
            Err(kind) => {
                *self.phase.borrow_mut() = Phase::Done(attempts.clone());
                deferred.errback(Failure::new(EndpointError {
                    host: self.host.to_string(),
                    port: self.port,
                    kind,
                    attempts,
                }))
            }
        };
    }
}

/// The winning connection's protocol reports to its connect: the transport, for a plain
/// factory the "check" (its `connection_made` returned), and an end before the check
/// passed.
impl Watch for ConnectingInner {
    fn making(self: &Rc<Self>, transport: &TransportRef) {
        self.record_transport(transport);
    }

    fn made(self: &Rc<Self>, _transport: &TransportRef, result: &ProtocolResult) -> bool {
        if matches!(self.factory, EndpointFactory::Plain(_)) && result.is_ok() {
            self.check_passed();
            return false;
        }
        true
    }

    fn lost(self: &Rc<Self>, reason: &CloseReason) {
        // Ended before the check passed (nothing happens if it had).
        self.check_failed(Failure::new(reason.clone()));
    }
}
