//! Connecting to a UNIX socket as an endpoint (Twisted's `UNIXClientEndpoint`): the
//! Deferred of [`UnixEndpoint::connect`] fires with the [`Connection`] once its
//! protocol's `connection_made` has run, or fails with a [`UnixConnectError`] that
//! carries the [`ConnectError`] (refused, ENOENT, EACCES, timed out). What `unix:`
//! client descriptions connect with.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use crate::reactor::endpoints::Connection;
use crate::reactor::stream::{ClientFactory, Connector, DEFAULT_CONNECT_TIMEOUT};
use crate::reactor::{
    Address, CloseReason, ConnectError, Deferred, Factory, Failure, Protocol, ProtocolResult,
    Reactor, TransportRef, UnixAddress,
};

/// A UNIX socket to connect to, with a connect timeout.
#[derive(Debug, Clone)]
pub struct UnixEndpoint {
    reactor: Reactor,
    address: UnixAddress,
    timeout: Option<Duration>,
}

/// A connect to a UNIX socket failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot connect to {address}: {error}")]
pub struct UnixConnectError {
    /// Where it tried to connect.
    pub address: UnixAddress,
    /// Why it failed: refused, timed out, cancelled (`UserAborted`), or the OS error
    /// (`Other`: ENOENT, EACCES, ENOTSOCK...).
    pub error: ConnectError,
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
        }
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
        let connector: Rc<RefCell<Option<Connector>>> = Rc::new(RefCell::new(None));
        let c = connector.clone();
        let deferred = Deferred::with_canceller(move |_| {
            let connector = c.borrow().clone();
            if let Some(connector) = connector {
                // Fails the attempt at once, which fires the Deferred (UserAborted).
                let _ = connector.stop_connecting();
            }
        });
        let client = Rc::new(EndpointClient {
            factory,
            address: self.address.clone(),
            deferred: deferred.clone(),
            reactor: self.reactor.clone(),
            started_at: self.reactor.seconds(),
        });
        let made = self
            .reactor
            .connect_unix(self.address.clone(), client, self.timeout);
        *connector.borrow_mut() = Some(made);
        deferred
    }
}

/// The connector's factory: builds the caller's protocol, wrapped to fire the Deferred
/// when it is made, and fails the Deferred when the attempt fails.
struct EndpointClient {
    factory: Rc<dyn Factory>,
    address: UnixAddress,
    deferred: Deferred<Connection>,
    reactor: Reactor,
    started_at: Duration,
}

impl Factory for EndpointClient {
    fn build_protocol(&self, addr: Address) -> Option<Box<dyn Protocol>> {
        let Some(inner) = self.factory.build_protocol(addr.clone()) else {
            let _ = self
                .deferred
                .errback(Failure::new(NoProtocol(self.address.clone())));
            return None;
        };
        Some(Box::new(Announcing {
            inner,
            waiting: Some((self.deferred.clone(), addr)),
            reactor: self.reactor.clone(),
            started_at: self.started_at,
        }))
    }

    fn start_factory(&self) {
        self.factory.start_factory();
    }

    fn stop_factory(&self) {
        self.factory.stop_factory();
    }
}

impl ClientFactory for EndpointClient {
    fn client_connection_failed(&self, _connector: &Connector, reason: &ConnectError) {
        let error = UnixConnectError {
            address: self.address.clone(),
            error: reason.clone(),
        };
        // Already fired only if it was refused a protocol.
        let _ = self.deferred.errback(Failure::new(error));
    }
}

/// The caller's protocol, and the Deferred to fire once it is made.
struct Announcing {
    inner: Box<dyn Protocol>,
    waiting: Option<(Deferred<Connection>, Address)>,
    reactor: Reactor,
    started_at: Duration,
}

impl Protocol for Announcing {
    fn connection_made(&mut self, transport: &TransportRef) -> ProtocolResult {
        let result = self.inner.connection_made(transport);
        if let Some((deferred, peer)) = self.waiting.take() {
            let connection = Connection {
                transport: transport.clone(),
                peer,
                attempts: Vec::new(),
                elapsed: self.reactor.seconds().saturating_sub(self.started_at),
            };
            let _ = deferred.callback(connection);
        }
        result
    }

    fn data_received(&mut self, transport: &TransportRef, data: &[u8]) -> ProtocolResult {
        self.inner.data_received(transport, data)
    }

    fn connection_lost(&mut self, reason: &CloseReason) {
        self.inner.connection_lost(reason);
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
}
