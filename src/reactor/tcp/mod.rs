//! TCP on the reactor: listening ports ([`Reactor::listen_tcp`]) and outgoing
//! connections ([`Reactor::connect_tcp`]). The connection, the accepting and the
//! connector are the stream code shared with UNIX sockets (`reactor::stream`); this
//! module makes the TCP sockets: binding with its options, and starting a connect on a
//! spare socket where it can (`connect_socket`).

use std::cell::RefCell;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use super::Reactor;
use super::address::Address;
use super::defer::Deferred;
use super::protocol::Factory;
use super::stream::PortInner;

mod connect_socket;

pub use super::stream::{
    AlreadyConnectingError, CannotListenError, ClientFactory, Connector, DEFAULT_CONNECT_TIMEOUT,
    HIGH_WATER_MARK, NotConnectingError, WRITE_BUFFER_LIMIT,
};

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

/// TCP's state kept by the reactor: sockets of connects refused at once, for the next
/// connect (see `connect_socket`).
#[derive(Default)]
pub(crate) struct TcpPools {
    spare_sockets: RefCell<connect_socket::SpareSockets>,
}

/// A listening TCP port (Twisted's `IListeningPort`).
#[derive(Clone)]
pub struct ListeningPort {
    inner: Rc<PortInner>,
}

impl fmt::Debug for ListeningPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListeningPort")
            .field("address", &self.host())
            .finish()
    }
}

impl ListeningPort {
    /// The listening address, with the port the OS chose for port 0 (P-10, X-15).
    pub fn host(&self) -> SocketAddr {
        match self.inner.address() {
            Address::Tcp(address) => *address,
            Address::Unix(_) => unreachable!("a TCP port has an IP address"),
        }
    }

    /// Stops accepting. The socket closes later, then the factory's `stop_factory` runs
    /// if this was its last user, then the returned Deferred fires (P-09). Connections
    /// already accepted stay open.
    pub fn stop_listening(&self) -> Deferred<()> {
        self.inner.stop_listening()
    }
}

fn bind_listener(address: SocketAddr, options: ListenOptions) -> io::Result<socket2::Socket> {
    let domain = socket2::Domain::for_address(address);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if let (SocketAddr::V6(_), Some(v6_only)) = (address, options.v6_only) {
        socket.set_only_v6(v6_only)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(options.backlog)?;
    Ok(socket)
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
        let fail = |source| CannotListenError {
            address: Address::Tcp(address),
            source,
        };
        let socket = bind_listener(address, options).map_err(fail)?;
        let bound = socket
            .local_addr()
            .map_err(fail)?
            .as_socket()
            .unwrap_or(address);
        let inner =
            PortInner::open(self, socket, Address::Tcp(bound), factory, None).map_err(fail)?;
        Ok(ListeningPort { inner })
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
        Connector::start(self, Address::Tcp(address), factory, timeout)
    }

    /// Begins a non-blocking connect to `destination`, reusing a spare socket where it
    /// can; see [`connect_socket::start_connect`].
    pub(crate) fn start_tcp_connect(
        &self,
        destination: SocketAddr,
    ) -> io::Result<super::stream::StartedConnect> {
        let mut spares = self.inner.tcp.spare_sockets.borrow_mut();
        connect_socket::start_connect(&mut spares, destination)
    }
}
