//! What TCP and UNIX stream sockets share: one connection type ([`StreamTransport`],
//! the transport a protocol writes to and the I/O handler that reads its socket), one
//! listening port (accepting, with a back-off when the process runs out of descriptors),
//! and one [`Connector`] for outgoing connections, with the [`ClientFactory`] it reports
//! to. `tcp/` and `unix/` only make the sockets: bind, listen, start a connect.
//!
//! Ownership: one [`StreamTransport`] per connection is both the registry's I/O handler
//! and the transport its protocol writes to; it owns the protocol. The reactor's I/O
//! registry holds it while the socket is open, and the protocol may keep it (as its
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
//! [`TransportRef`]: crate::reactor::TransportRef

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV6};
use std::rc::Rc;
use std::time::Duration;

use super::Reactor;
use super::address::{Address, UnixAddress};
use super::protocol::{CloseReason, ConnectError, Factory};

mod connect;
mod listen;
mod transport;

pub use connect::Connector;
pub(crate) use listen::{PortInner, SocketFile};
pub use transport::StreamTransport;

/// Outgoing bytes above which a registered producer is told to pause.
pub const HIGH_WATER_MARK: usize = 64 * 1024;

/// Outgoing bytes above which a connection is aborted instead of buffering more: a peer
/// that does not read cannot make us hold unbounded memory.
pub const WRITE_BUFFER_LIMIT: usize = 64 * 1024 * 1024;

/// A non-blocking connect begun by `tcp/` or `unix/`: its socket, and whether the
/// connect has already completed (loopback TCP usually has by the second `connect()`,
/// a UNIX connect always has), in which case nobody needs to wait for the socket to turn
/// writable or ask the system whether it connected.
#[derive(Debug)]
pub(crate) struct StartedConnect {
    pub(crate) socket: socket2::Socket,
    pub(crate) connected: bool,
}

/// The poll interest of a stream socket that is read: urgent data included where the
/// poll reports it, so that an event says whether a short read can have stopped at an
/// urgent mark (see the transport's `AfterShortRead`).
pub(crate) fn reading_interest() -> mio::Interest {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        mio::Interest::READABLE | mio::Interest::PRIORITY
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        mio::Interest::READABLE
    }
}

/// The default connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// A port could not bind or listen (Twisted's CannotListenError, P-06, U-02).
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {address}: {source}")]
pub struct CannotListenError {
    /// The address asked for.
    pub address: Address,
    /// What the OS said.
    #[source]
    pub source: std::io::Error,
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
pub(crate) fn factory_do_start(reactor: &Reactor, factory: &Rc<dyn Factory>) {
    if reactor.factory_user_added(factory_address(factory)) {
        factory.start_factory();
    }
}

/// P-01: `stop_factory` after the last user only.
pub(crate) fn factory_do_stop(reactor: &Reactor, factory: &Rc<dyn Factory>) {
    if reactor.factory_user_removed(factory_address(factory)) {
        factory.stop_factory();
    }
}

/// An address in 16 bytes instead of `Address`'s 40: IPv4 inline, an unnamed UNIX
/// socket (the usual peer of a UNIX server) in the tag, the rest boxed. Every
/// connection keeps its peer's, and every connector its destination.
#[derive(Debug, Clone)]
pub(crate) enum CompactAddr {
    V4(Ipv4Addr, u16),
    V6(Box<SocketAddrV6>),
    UnixUnnamed,
    Unix(Box<UnixAddress>),
}

impl CompactAddr {
    pub(crate) fn new(address: Address) -> CompactAddr {
        match address {
            Address::Tcp(SocketAddr::V4(a)) => CompactAddr::V4(*a.ip(), a.port()),
            Address::Tcp(SocketAddr::V6(a)) => CompactAddr::V6(Box::new(a)),
            Address::Unix(UnixAddress::Unnamed) => CompactAddr::UnixUnnamed,
            Address::Unix(a) => CompactAddr::Unix(Box::new(a)),
        }
    }

    pub(crate) fn get(&self) -> Address {
        match self {
            CompactAddr::V4(ip, port) => Address::Tcp(SocketAddr::from((*ip, *port))),
            CompactAddr::V6(a) => Address::Tcp(SocketAddr::V6(**a)),
            CompactAddr::UnixUnnamed => Address::Unix(UnixAddress::Unnamed),
            CompactAddr::Unix(a) => Address::Unix((**a).clone()),
        }
    }
}

#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<CompactAddr>() == 16);
