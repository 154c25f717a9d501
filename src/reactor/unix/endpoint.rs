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
    AttemptLimiter, CheckHandle, CheckSink, CheckedFactory, Connection, Permit,
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
        let (inner, checked) = match &self.kind {
            Kind::Plain(factory) => (factory.build_protocol(addr.clone()), false),
            Kind::Checked(factory) => {
                let sink: Weak<dyn CheckSink> = Rc::downgrade(&self.state) as Weak<Connecting>;
                let check = CheckHandle::new(sink);
                (factory.build_protocol(addr.clone(), check), true)
            }
        };
        let Some(inner) = inner else {
            self.state
                .fail(Failure::new(NoProtocol(self.state.address.clone())));
            return None;
        };
        Some(Box::new(Announcing {
            inner,
            peer: Some(addr),
            checked,
            state: self.state.clone(),
        }))
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

/// The caller's protocol; fires the Deferred once it is made (and checked).
struct Announcing {
    inner: Box<dyn Protocol>,
    /// Until `connection_made`.
    peer: Option<Address>,
    checked: bool,
    state: Rc<Connecting>,
}

impl Protocol for Announcing {
    fn connection_made(&mut self, transport: &TransportRef) -> ProtocolResult {
        let result = self.inner.connection_made(transport);
        if let Some(peer) = self.peer.take() {
            if !self.checked || self.state.passed_early.get() {
                self.state.fire(transport, peer);
            } else {
                *self.state.made.borrow_mut() = Some((transport.clone(), peer));
            }
        }
        result
    }

    fn data_received(&mut self, transport: &TransportRef, data: &[u8]) -> ProtocolResult {
        self.inner.data_received(transport, data)
    }

    fn connection_lost(&mut self, reason: &CloseReason) {
        // The protocol hears first, as behind a HostnameEndpoint: a check may give its
        // verdict as its own orderly close completes (so that what it wrote last is
        // sent before the caller acts on the verdict).
        self.inner.connection_lost(reason);
        self.state.made.borrow_mut().take();
        if self.checked {
            // Ended before the check passed: that is the check's failure (a no-op once
            // the Deferred has fired).
            self.state.fail(Failure::new(UnixCheckError {
                address: self.state.address.clone(),
                failure: Failure::new(reason.clone()),
            }));
        }
    }

    fn wants_half_close(&self) -> bool {
        self.inner.wants_half_close()
    }

    fn read_connection_lost(&mut self, transport: &TransportRef) -> ProtocolResult {
        self.inner.read_connection_lost(transport)
    }

    fn write_connection_lost(&mut self, transport: &TransportRef) -> ProtocolResult {
        self.inner.write_connection_lost(transport)
    }

    fn handshake_completed(&mut self, transport: &TransportRef) -> ProtocolResult {
        self.inner.handshake_completed(transport)
    }
}
