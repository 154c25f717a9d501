//! TCP on the reactor: listening ports ([`Reactor::listen_tcp`]), outgoing connections
//! ([`Reactor::connect_tcp`] and its [`Connector`]), and the connection's transport
//! ([`TcpTransport`]).
//!
//! Ownership: one [`TcpTransport`] per connection is both the registry's I/O handler and
//! the transport its protocol writes to; it owns the protocol. The reactor's I/O registry
//! holds it while the socket is open, and the protocol may keep it (as its
//! [`TransportRef`]) as long as it likes. The transport holds no pointer to itself: where
//! it needs its own `Rc` (to run something later, or to hand itself to its protocol) it
//! looks itself up in the registry by its key, which only succeeds while it is open.
//! So nothing forms a cycle, and a connection is freed once it is closed and its
//! protocol lets go of it.
//!
//! Everything a transport method asks for happens later, from the loop: writes are
//! flushed at the start of the next iteration (or when the socket turns writable), and
//! `connection_lost` is never called inside `lose_connection` or `abort_connection`
//!
//!
//! The code is in three parts: the connection and its transport (`transport`), listening
//! ports (`listen`), and outgoing connections (`connect`). This module keeps what they
//! share, and the reactor's methods that open ports and connections.
//!
//! [`TransportRef`]: crate::reactor::TransportRef

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV6};
use std::rc::Rc;
use std::time::Duration;

use super::Reactor;
use super::protocol::{CloseReason, ConnectError, Factory};

mod connect;
mod connect_socket;
mod listen;
mod transport;

pub use connect::Connector;
pub use listen::ListeningPort;
pub use transport::TcpTransport;

/// Outgoing bytes above which a registered producer is told to pause.
pub const HIGH_WATER_MARK: usize = 64 * 1024;

/// Outgoing bytes above which a connection is aborted instead of buffering more: a peer
/// that does not read cannot make us hold unbounded memory.
pub const WRITE_BUFFER_LIMIT: usize = 64 * 1024 * 1024;

/// The default connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Options of a listening socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenOptions {
    /// The accept queue length passed to `listen`.
    pub backlog: i32,
    /// For an IPv6 address: accept only IPv6 (`true`) or IPv4 too (`false`, dual
    /// stack). `None` leaves the system's default.
    pub v6_only: Option<bool>,
}

impl Default for ListenOptions {
    fn default() -> Self {
        ListenOptions {
            backlog: 1024,
            v6_only: None,
        }
    }
}

/// `listen_tcp` could not bind or listen (Twisted's CannotListenError, P-06).
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {address}: {source}")]
pub struct CannotListenError {
    /// The address asked for.
    pub address: SocketAddr,
    /// What the OS said.
    #[source]
    pub source: io::Error,
}

/// `stop_connecting` was called on a connector that is not connecting (P-18).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the connector is not connecting")]
pub struct NotConnectingError;

/// `connect` was called on a connector that is not disconnected (P-17).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the connector is already connecting or connected")]
pub struct AlreadyConnectingError;

/// A factory for outgoing connections: a [`Factory`] that is also told how the attempt
/// went (P-11..P-14).
pub trait ClientFactory: Factory {
    /// An attempt has started; `connector.stop_connecting()` may be called here (P-11).
    fn started_connecting(&self, connector: &Connector) {
        let _ = connector;
    }

    /// The attempt failed; `connector.connect()` here tries again (P-13, P-17).
    fn client_connection_failed(&self, connector: &Connector, reason: &ConnectError) {
        let _ = (connector, reason);
    }

    /// An established connection ended, after its protocol's `connection_lost`;
    /// `connector.connect()` here reconnects (P-14, P-17).
    fn client_connection_lost(&self, connector: &Connector, reason: &CloseReason) {
        let _ = (connector, reason);
    }
}

fn factory_address(factory: &Rc<impl ?Sized>) -> usize {
    Rc::as_ptr(factory) as *const () as usize
}

/// P-01: `start_factory` on the first user only.
fn factory_do_start(reactor: &Reactor, factory: &Rc<dyn Factory>) {
    if reactor.factory_user_added(factory_address(factory)) {
        factory.start_factory();
    }
}

/// P-01: `stop_factory` after the last user only.
fn factory_do_stop(reactor: &Reactor, factory: &Rc<dyn Factory>) {
    if reactor.factory_user_removed(factory_address(factory)) {
        factory.stop_factory();
    }
}

/// A socket address in 16 bytes instead of `SocketAddr`'s 32: IPv4 inline, IPv6 boxed.
/// Every connection keeps its peer's, and every connector its destination.
#[derive(Debug, Clone)]
enum CompactAddr {
    V4(Ipv4Addr, u16),
    V6(Box<SocketAddrV6>),
}

impl CompactAddr {
    fn new(address: SocketAddr) -> CompactAddr {
        match address {
            SocketAddr::V4(a) => CompactAddr::V4(*a.ip(), a.port()),
            SocketAddr::V6(a) => CompactAddr::V6(Box::new(a)),
        }
    }

    fn get(&self) -> SocketAddr {
        match self {
            CompactAddr::V4(ip, port) => SocketAddr::from((*ip, *port)),
            CompactAddr::V6(a) => SocketAddr::V6(**a),
        }
    }
}

/// TCP's state kept by the reactor: sockets of connects refused at once, for the next
/// connect (see `connect_socket`).
#[derive(Default)]
pub(crate) struct TcpPools {
    spare_sockets: std::cell::RefCell<connect_socket::SpareSockets>,
}

// ---------------------------------------------------------------------------------------
// The reactor's TCP methods

impl Reactor {
    /// Listens on `address` with default options; see [`Reactor::listen_tcp_with`].
    pub fn listen_tcp(
        &self,
        address: SocketAddr,
        factory: Rc<dyn Factory>,
    ) -> Result<ListeningPort, CannotListenError> {
        self.listen_tcp_with(address, factory, ListenOptions::default())
    }

    /// Binds and listens at once (failure: `CannotListenError`, factory untouched), then
    /// starts the factory (P-06). Port 0 picks a free port; see
    /// [`ListeningPort::host`] (P-10).
    pub fn listen_tcp_with(
        &self,
        address: SocketAddr,
        factory: Rc<dyn Factory>,
        options: ListenOptions,
    ) -> Result<ListeningPort, CannotListenError> {
        ListeningPort::open(self, address, factory, options)
    }

    /// Connects to `address` (P-11): starts the factory if this connector is its first
    /// user, begins a non-blocking connect with `timeout` (`None`: no timeout, P-21),
    /// calls `started_connecting`, and returns. Everything else is reported later
    /// through the factory.
    pub fn connect_tcp(
        &self,
        address: SocketAddr,
        factory: Rc<dyn ClientFactory>,
        timeout: Option<Duration>,
    ) -> Connector {
        Connector::start(self, address, factory, timeout)
    }

    /// Begins a non-blocking connect to `destination`, reusing a spare socket where it
    /// can; see [`connect_socket::start_connect`].
    fn start_connect(&self, destination: SocketAddr) -> io::Result<mio::net::TcpStream> {
        let mut spares = self.inner.tcp.spare_sockets.borrow_mut();
        connect_socket::start_connect(&mut spares, destination)
    }
}
