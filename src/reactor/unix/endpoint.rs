//! Connecting to a UNIX socket as an endpoint (Twisted's `UNIXClientEndpoint`): the
//! Deferred of [`UnixEndpoint::connect`] fires with the [`Connection`] once its
//! protocol's `connection_made` has run, or fails with a [`UnixConnectError`] that
//! carries the [`ConnectError`] (refused, ENOENT, EACCES, timed out). With
//! [`UnixEndpoint::connect_checked`] the connection counts as made only once its
//! protocol's check passed (a TLS handshake, an expected banner), as with a
//! `HostnameEndpoint`. What `unix:` client descriptions connect with. With
//! [`UnixEndpoint::with_limiter`] the connect waits for a slot of an
//! [`AttemptLimiter`] and holds it until its socket is closed, as a hostname
//! endpoint's attempts do, so that one cap counts TCP and UNIX sockets alike.

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};
use std::time::Duration;

use crate::reactor::endpoints::{
    AttemptLimiter, CheckHandle, CheckSink, CheckedFactory, Connection, Permit, Watch, Watched,
};
use crate::reactor::stream::{ClientFactory, Connector, DEFAULT_CONNECT_TIMEOUT};
use crate::reactor::{
    Address, CloseReason, ConnectError, Deferred, Factory, Failure, Protocol, ProtocolResult,
    Reactor, TransportRef, UnixAddress,
};

/// A UNIX socket to connect to, with a connect timeout.
#[derive(Clone)]
pub struct UnixEndpoint {
    reactor: Reactor,
    address: UnixAddress,
    timeout: Option<Duration>,
    limiter: Option<Rc<dyn AttemptLimiter>>,
}

impl std::fmt::Debug for UnixEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnixEndpoint")
            .field("address", &self.address)
            .field("timeout", &self.timeout)
            .field("limited", &self.limiter.is_some())
            .finish()
    }
}

/// A connect to a UNIX socket failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot connect to {address}: {error}")]
pub struct UnixConnectError {
    /// Where it tried to connect.
    pub address: UnixAddress,
    /// Why it failed: refused, timed out, cancelled (`UserAborted`), or the OS error
    /// (`Other`: ENOENT, EACCES...).
    pub error: ConnectError,
}

/// Connected to a UNIX socket, but the protocol's check failed (or the connection
/// ended before it passed).
#[derive(Debug, Clone, thiserror::Error)]
#[error("connected to {address}, but the check failed: {failure}")]
pub struct UnixCheckError {
    /// Where it connected.
    pub address: UnixAddress,
    /// What the protocol said, or why the connection ended.
    pub failure: Failure,
}

/// The factory refused the connection: it built no protocol.
#[derive(Debug, Clone, thiserror::Error)]
#[error("connected to {0}, but no protocol was built for it")]
pub struct NoProtocol(pub UnixAddress);

impl UnixEndpoint {
    /// An endpoint for `address`, with the default connect timeout.
    pub fn new(reactor: &Reactor, address: UnixAddress) -> UnixEndpoint {
        UnixEndpoint {
            reactor: reactor.clone(),
            address,
            timeout: Some(DEFAULT_CONNECT_TIMEOUT),
            limiter: None,
        }
    }

    /// The same endpoint, connecting only with a slot of `limiter`, held until the
    /// socket is closed.
    pub fn with_limiter(mut self, limiter: Rc<dyn AttemptLimiter>) -> UnixEndpoint {
        self.limiter = Some(limiter);
        self
    }

    /// The same endpoint with another connect timeout (`None`: none).
    pub fn with_timeout(mut self, timeout: Option<Duration>) -> UnixEndpoint {
        self.timeout = timeout;
        self
    }

    /// The address it connects to.
    pub fn address(&self) -> &UnixAddress {
        &self.address
    }

    /// Connects with `factory` making the protocol. The Deferred fires after the
    /// protocol's `connection_made` with the connection (its `attempts` are empty: a
    /// UNIX connect makes one), or fails with a [`UnixConnectError`] (or [`NoProtocol`]).
    /// Cancelling it before then stops the attempt.
    pub fn connect(&self, factory: Rc<dyn Factory>) -> Deferred<Connection> {
        self.start(Kind::Plain(factory))
    }

    /// Connects, and counts the connection as made only when its protocol passes its
    /// check (see [`CheckedFactory`]); a failed check closes the connection and fails
    /// the Deferred with a [`UnixCheckError`].
    pub fn connect_checked(&self, factory: Rc<dyn CheckedFactory>) -> Deferred<Connection> {
        self.start(Kind::Checked(factory))
    }

    fn start(&self, kind: Kind) -> Deferred<Connection> {
        let connector: Rc<RefCell<Option<Connector>>> = Rc::new(RefCell::new(None));
        let c = connector.clone();
        // Cancelled while waiting for a slot: the connect never starts. (The Deferred
        // fails with CancelledError once the canceller returns.)
        let cancelled = Rc::new(Cell::new(false));
        let flag = cancelled.clone();
        let deferred = Deferred::with_canceller(move |_| {
            flag.set(true);
            let connector = c.borrow().clone();
            if let Some(connector) = connector {
                // Fails the attempt at once, which fires the Deferred (UserAborted);
                // a connection made meanwhile is closed.
                if connector.stop_connecting().is_err() {
                    connector.disconnect();
                }
            }
        });
        let state = Rc::new(Connecting {
            address: self.address.clone(),
            deferred: deferred.clone(),
            reactor: self.reactor.clone(),
            started_at: self.reactor.seconds(),
            made: RefCell::new(None),
            passed_early: Cell::new(false),
            checked: matches!(kind, Kind::Checked(_)),
            peer: RefCell::new(None),
        });
        let (reactor, address, timeout) =
            (self.reactor.clone(), self.address.clone(), self.timeout);
        let begin = move |permit: Permit| {
            if cancelled.get() {
                return;
            }
            let client = Rc::new(EndpointClient {
                kind,
                state,
                permit: RefCell::new(Some(permit)),
            });
            let made = reactor.connect_unix(address, client, timeout);
            *connector.borrow_mut() = Some(made);
        };
        match &self.limiter {
            Some(limiter) => limiter.acquire(Box::new(begin)),
            None => begin(Box::new(())),
        }
        deferred
    }
}

/// The caller's factory, in either form.
enum Kind {
    Plain(Rc<dyn Factory>),
    Checked(Rc<dyn CheckedFactory>),
}

/// One connect: its Deferred, and for a checked one, what the check waits on.
struct Connecting {
    address: UnixAddress,
    deferred: Deferred<Connection>,
    reactor: Reactor,
    started_at: Duration,
    /// The connection, once its protocol's `connection_made` ran.
    made: RefCell<Option<(TransportRef, Address)>>,
    /// The check passed before `connection_made` had run.
    passed_early: Cell<bool>,
    /// A checked connect: it counts once the check passed.
    checked: bool,
    /// The peer of the connection's protocol, until its `connection_made`.
    peer: RefCell<Option<Address>>,
}

impl Connecting {
    fn fire(&self, transport: &TransportRef, peer: Address) {
        let connection = Connection {
            transport: transport.clone(),
            peer,
            attempts: Vec::new(),
            elapsed: self.reactor.seconds().saturating_sub(self.started_at),
        };
        // Already fired only if cancelled or failed meanwhile.
        let _ = self.deferred.callback(connection);
    }

    fn fail(&self, failure: Failure) {
        let _ = self.deferred.errback(failure);
    }
}

impl CheckSink for Connecting {
    fn check_passed(self: Rc<Self>) {
        let made = self.made.borrow().clone();
        match made {
            Some((transport, peer)) => self.fire(&transport, peer),
            None => self.passed_early.set(true),
        }
    }

    fn check_failed(self: Rc<Self>, failure: Failure) {
        let made = self.made.borrow().clone();
        if let Some((transport, _)) = made {
            transport.lose_connection();
        }
        self.fail(Failure::new(UnixCheckError {
            address: self.address.clone(),
            failure,
        }));
    }
}

/// The connector's factory: builds the caller's protocol, wrapped to fire the Deferred
/// when it is made (and checked), and fails the Deferred when the attempt fails.
struct EndpointClient {
    kind: Kind,
    state: Rc<Connecting>,
    /// The limiter's slot (or a stand-in), given back once the socket is closed.
    permit: RefCell<Option<Permit>>,
}

impl EndpointClient {
    /// The connector has closed the socket before telling us: the slot is free.
    fn release(&self) {
        let permit = self.permit.borrow_mut().take();
        drop(permit);
    }
}

impl Factory for EndpointClient {
    fn build_protocol(&self, addr: Address) -> Option<Box<dyn Protocol>> {
        let inner = match &self.kind {
            Kind::Plain(factory) => factory.build_protocol(addr.clone()),
            Kind::Checked(factory) => {
                let sink: Weak<dyn CheckSink> = Rc::downgrade(&self.state) as Weak<Connecting>;
                factory.build_protocol(addr.clone(), CheckHandle::new(sink))
            }
        };
        let Some(inner) = inner else {
            self.state
                .fail(Failure::new(NoProtocol(self.state.address.clone())));
            return None;
        };
        *self.state.peer.borrow_mut() = Some(addr);
        Some(Box::new(Watched::new(inner, self.state.clone())))
    }

    fn start_factory(&self) {
        if let Kind::Plain(factory) = &self.kind {
            factory.start_factory();
        }
    }

    fn stop_factory(&self) {
        if let Kind::Plain(factory) = &self.kind {
            factory.stop_factory();
        }
    }
}

impl ClientFactory for EndpointClient {
    fn client_connection_failed(&self, _connector: &Connector, reason: &ConnectError) {
        self.state.fail(Failure::new(UnixConnectError {
            address: self.state.address.clone(),
            error: reason.clone(),
        }));
        self.release();
    }

    fn client_connection_lost(&self, _connector: &Connector, _reason: &CloseReason) {
        self.release();
    }
}

/// The connection's protocol reports to its connect: the Deferred fires once the
/// connection is made (and checked), and an end before the check passed fails it.
impl Watch for Connecting {
    fn making(self: &Rc<Self>, _transport: &TransportRef) {}

    fn made(self: &Rc<Self>, transport: &TransportRef, _result: &ProtocolResult) -> bool {
        let peer = self.peer.borrow_mut().take();
        if let Some(peer) = peer {
            if !self.checked || self.passed_early.get() {
                self.fire(transport, peer);
            } else {
                *self.made.borrow_mut() = Some((transport.clone(), peer));
            }
        }
        true
    }

    fn lost(self: &Rc<Self>, reason: &CloseReason) {
        self.made.borrow_mut().take();
        if self.checked {
            // Ended before the check passed: that is the check's failure (a no-op once
            // the Deferred has fired).
            self.fail(Failure::new(UnixCheckError {
                address: self.address.clone(),
                failure: Failure::new(reason.clone()),
            }));
        }
    }
}
