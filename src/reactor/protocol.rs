//! The Protocol/Factory pattern: what a connection's code implements ([`Protocol`]), how
//! the reactor makes one per connection ([`Factory`]), the handle a protocol writes
//! through ([`Transport`]), and why a connection ended ([`CloseReason`]).
//!
//! Lifecycle (spec P-03, P-04): `connection_made` once, first; `data_received` zero or
//! more times; `connection_lost` exactly once, last, and never from inside the call that
//! closed the connection.

use std::fmt;
use std::io;
use std::rc::Rc;

use super::address::Address;
use super::failure::Failure;
use super::tls::{StartTls, StartTlsError, TlsError, TlsSession, TlsTransport};

/// A shared handle on a connection's transport. Protocols may keep a clone; the handle
/// does not own the protocol, so keeping it makes no reference cycle.
pub type TransportRef = Rc<dyn Transport>;

/// The result of a protocol callback. An `Err` closes the connection in an orderly way
/// and becomes the reason given to `connection_lost` (P-22, P-23).
pub type ProtocolResult = Result<(), Failure>;

/// The code of one connection: told when it starts, what arrives, and when it ends.
pub trait Protocol: 'static {
    /// The connection is up; `transport` writes to it and closes it (P-03).
    fn connection_made(&mut self, transport: &TransportRef) -> ProtocolResult {
        let _ = transport;
        Ok(())
    }

    /// The TLS handshake completed and the peer was verified (S-02): once, before any
    /// `data_received`. Never called on a connection without TLS.
    fn handshake_completed(&mut self, transport: &TransportRef) -> ProtocolResult {
        let _ = transport;
        Ok(())
    }

    /// Bytes arrived. Chunk boundaries are arbitrary (P-04, X-17).
    fn data_received(&mut self, transport: &TransportRef, data: &[u8]) -> ProtocolResult;

    /// The connection ended; called exactly once, last (P-04, P-05).
    fn connection_lost(&mut self, reason: &CloseReason) {
        let _ = reason;
    }

    /// Whether the protocol wants half-close events: with `true`, a peer's EOF calls
    /// [`Protocol::read_connection_lost`] and the connection stays open for writing;
    /// with `false` (the default) it ends the connection with `CloseReason::Done`.
    fn wants_half_close(&self) -> bool {
        false
    }

    /// The peer shut down its write side; reading has ended, writing may go on.
    fn read_connection_lost(&mut self, transport: &TransportRef) -> ProtocolResult {
        let _ = transport;
        Ok(())
    }

    /// Our own write side has been shut down after `lose_write_connection`.
    fn write_connection_lost(&mut self, transport: &TransportRef) -> ProtocolResult {
        let _ = transport;
        Ok(())
    }
}

/// Something that produces data into a transport and can be told to slow down
/// (Twisted's push producer). Registered with [`Transport::register_producer`].
pub trait Producer {
    /// The transport's write buffer passed its high-water mark: stop producing.
    fn pause_producing(&self);
    /// The write buffer has drained: produce again.
    fn resume_producing(&self);
    /// The connection is going away: stop for good.
    fn stop_producing(&self);
}

/// The connection as seen by its protocol: write to it, close it, pause it.
///
/// Every method takes effect later, in the reactor loop: `write` buffers, closing
/// flushes first, and no protocol callback runs inside any of these calls.
pub trait Transport {
    /// Buffers `data` for sending; never blocks, never sends synchronously. Discarded
    /// after the connection or its write side is closed.
    fn write(&self, data: &[u8]);

    /// [`Transport::write`] of bytes the caller shares instead of lending: the transport
    /// may keep a reference until they are sent instead of copying them, as Twisted's
    /// `write` keeps the bytes object. Useful for a payload written many times. Otherwise
    /// the same as `write` (X-01..X-04, X-19); the default copies.
    fn write_shared(&self, data: &Rc<[u8]>) {
        self.write(data);
    }

    /// Writes each chunk in order, as one buffered write.
    fn write_sequence(&self, chunks: &[&[u8]]) {
        for chunk in chunks {
            self.write(chunk);
        }
    }

    /// Stops reading, sends everything buffered, then closes with FIN; the protocol later
    /// gets `connection_lost(Done)` (X-05..X-07).
    fn lose_connection(&self);

    /// Closes now with a reset, dropping unsent data; the protocol later gets
    /// `connection_lost(Aborted)`.
    fn abort_connection(&self);

    /// Shuts down the write side once the buffer is flushed; reading goes on.
    fn lose_write_connection(&self);

    /// True once `lose_connection` or `abort_connection` was called.
    fn is_disconnecting(&self) -> bool;

    /// The address of the other end (X-15, U-06).
    fn peer(&self) -> Address;

    /// The local address of the connection (X-15, U-06).
    fn host(&self) -> Address;

    /// The process, user and group at the other end of a UNIX connection, as the kernel
    /// recorded them when it connected (SO_PEERCRED), while the connection is open;
    /// `None` for TCP, after the close, and for transports that cannot tell.
    fn peer_credentials(&self) -> Option<PeerCredentials> {
        None
    }

    /// Stops reading until `resume_producing`.
    fn pause_producing(&self);

    /// Resumes reading after `pause_producing`.
    fn resume_producing(&self);

    /// Registers a producer to be paused when the write buffer passes its high-water
    /// mark and resumed when it drains. Replaces any earlier producer.
    fn register_producer(&self, producer: Rc<dyn Producer>);

    /// Forgets the registered producer.
    fn unregister_producer(&self);

    /// What the TLS handshake settled (version, cipher, ALPN, the peer's chain; S-06),
    /// once it completed; `None` without TLS or before.
    fn tls(&self) -> Option<Rc<TlsSession>> {
        None
    }

    /// True for a connection that speaks TLS, from its start (before the handshake
    /// settled what [`Transport::tls`] reports).
    fn is_tls(&self) -> bool {
        false
    }

    /// Starts TLS on this established connection (S-12): what was written before goes
    /// out in the clear, what is written after (through this handle too) is
    /// encrypted, and the same protocol goes on receiving the decrypted data; it gets
    /// `handshake_completed`, not a second `connection_made`.
    fn start_tls(&self, tls: StartTls) -> Result<(), StartTlsError> {
        let _ = tls;
        Err(StartTlsError::Unsupported)
    }

    /// For the TLS layer that is this transport's protocol: from now on this
    /// transport's methods go to `layer`, so that every holder of this handle writes
    /// through TLS. Returns the handle the layer itself uses to reach the stream, or
    /// `None` when this transport keeps no layer (the layer then uses this handle).
    fn layer_over(&self, layer: Rc<TlsTransport>) -> Option<TransportRef> {
        let _ = layer;
        None
    }
}

/// Who is at the other end of a local (UNIX) connection: the peer's process, user and
/// group when it connected, as the kernel tells them (not what the peer claims).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCredentials {
    /// The peer's process id.
    pub pid: i32,
    /// The peer's effective user id.
    pub uid: u32,
    /// The peer's effective group id.
    pub gid: u32,
}

/// Makes one protocol per connection, and is told when the first port or connector
/// starts using it and when the last one stops (P-01, P-02).
pub trait Factory: 'static {
    /// A protocol for a connection with `addr`, or `None` to refuse it (P-02, P-08).
    fn build_protocol(&self, addr: Address) -> Option<Box<dyn Protocol>>;

    /// Called once before the first port or connector uses the factory (P-01).
    fn start_factory(&self) {}

    /// Called once after the last port or connector stops using it (P-01).
    fn stop_factory(&self) {}
}

/// Why a connection ended: the reason passed to `connection_lost` (P-05).
#[derive(Debug, Clone)]
pub enum CloseReason {
    /// Closed in an orderly way, by either side (ConnectionDone).
    Done,
    /// Ended uncleanly: a socket error, or the reactor shutting down (ConnectionLost).
    Lost(Option<Rc<io::Error>>),
    /// The peer reset the connection (a ConnectionLost carrying the OS error, X-10).
    Reset(Rc<io::Error>),
    /// Closed by our own `abort_connection` (ConnectionAborted, X-08).
    Aborted,
    /// Closed because one of the protocol's own callbacks returned this error (P-22).
    Protocol(Failure),
    /// The TLS handshake or a TLS record failed (S-04): what went wrong, and the
    /// certificate chain the peer presented.
    Tls(TlsError),
}

impl CloseReason {
    /// True for an orderly close (Twisted's ConnectionDone).
    pub fn is_clean(&self) -> bool {
        matches!(self, CloseReason::Done)
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Done => f.write_str("connection closed cleanly"),
            CloseReason::Lost(None) => f.write_str("connection lost"),
            CloseReason::Lost(Some(e)) => write!(f, "connection lost: {e}"),
            CloseReason::Reset(e) => write!(f, "connection reset by peer: {e}"),
            CloseReason::Aborted => f.write_str("connection aborted"),
            CloseReason::Protocol(failure) => write!(f, "protocol error: {failure}"),
            CloseReason::Tls(error) => write!(f, "TLS: {error}"),
        }
    }
}

impl std::error::Error for CloseReason {}

/// Why a connection attempt failed: the reason passed to `client_connection_failed`
/// (P-15). Every variant but `Dns` is a connect error in Twisted's sense.
#[derive(Debug, Clone)]
pub enum ConnectError {
    /// The other side refused the connection (ECONNREFUSED).
    Refused(Rc<io::Error>),
    /// The attempt's own timeout expired before the handshake completed.
    TimedOut,
    /// The kernel gave up on the handshake (ETIMEDOUT).
    KernelTimedOut(Rc<io::Error>),
    /// No route to the network or host (ENETUNREACH, EHOSTUNREACH).
    Unreachable(Rc<io::Error>),
    /// The name could not be resolved.
    Dns(String),
    /// `stop_connecting` was called (Twisted's UserError).
    UserAborted,
    /// The local address to bind could not be used.
    Bind(Rc<io::Error>),
    /// Any other OS error.
    Other(Rc<io::Error>),
}

impl ConnectError {
    /// Classifies an OS error from a connect attempt.
    pub fn from_io(error: io::Error) -> ConnectError {
        let kind = error.kind();
        let error = Rc::new(error);
        match kind {
            io::ErrorKind::ConnectionRefused => ConnectError::Refused(error),
            io::ErrorKind::TimedOut => ConnectError::KernelTimedOut(error),
            io::ErrorKind::NetworkUnreachable | io::ErrorKind::HostUnreachable => {
                ConnectError::Unreachable(error)
            }
            io::ErrorKind::AddrInUse | io::ErrorKind::AddrNotAvailable => ConnectError::Bind(error),
            _ => ConnectError::Other(error),
        }
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::Refused(e) => write!(f, "connection refused: {e}"),
            ConnectError::TimedOut => f.write_str("connection attempt timed out"),
            ConnectError::KernelTimedOut(e) => write!(f, "connection timed out: {e}"),
            ConnectError::Unreachable(e) => write!(f, "network unreachable: {e}"),
            ConnectError::Dns(message) => write!(f, "name not resolved: {message}"),
            ConnectError::UserAborted => f.write_str("connection attempt stopped by the user"),
            ConnectError::Bind(e) => write!(f, "could not bind the local address: {e}"),
            ConnectError::Other(e) => write!(f, "connection failed: {e}"),
        }
    }
}

impl std::error::Error for ConnectError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind_of(errno: i32) -> (&'static str, String) {
        let error = ConnectError::from_io(io::Error::from_raw_os_error(errno));
        let kind = match &error {
            ConnectError::Refused(_) => "Refused",
            ConnectError::TimedOut => "TimedOut",
            ConnectError::KernelTimedOut(_) => "KernelTimedOut",
            ConnectError::Unreachable(_) => "Unreachable",
            ConnectError::Dns(_) => "Dns",
            ConnectError::UserAborted => "UserAborted",
            ConnectError::Bind(_) => "Bind",
            ConnectError::Other(_) => "Other",
        };
        (kind, error.to_string())
    }

    /// P-15: each raw OS error of a failed connect lands in its own kind, as Twisted's
    /// table has it (NoRouteError, TCPTimedOutError, ConnectBindError, ...), and one
    /// with no kind of its own is Other with the errno and the OS text kept.
    #[test]
    fn p15_raw_os_errors_map_to_connect_error_kinds() {
        let cases = [
            (libc::ECONNREFUSED, "Refused"),
            (libc::ENETUNREACH, "Unreachable"),
            (libc::EHOSTUNREACH, "Unreachable"),
            (libc::ETIMEDOUT, "KernelTimedOut"),
            (libc::EADDRINUSE, "Bind"),
            (libc::EADDRNOTAVAIL, "Bind"),
            (libc::ECONNRESET, "Other"),
            (libc::ENOENT, "Other"),
            (libc::EACCES, "Other"),
        ];
        for (errno, expected) in cases {
            let (kind, text) = kind_of(errno);
            assert_eq!(kind, expected, "errno {errno}: {text}");
            let os_text = io::Error::from_raw_os_error(errno).to_string();
            assert!(text.contains(&os_text), "errno {errno}: {text}");
            assert!(text.contains(&format!("os error {errno}")), "{text}");
        }
    }

    #[test]
    fn p15_only_the_attempts_own_timeout_is_timed_out() {
        assert!(matches!(
            ConnectError::from_io(io::Error::from(io::ErrorKind::TimedOut)),
            ConnectError::KernelTimedOut(_)
        ));
        assert_eq!(
            ConnectError::TimedOut.to_string(),
            "connection attempt timed out"
        );
    }
}
