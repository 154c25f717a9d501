//! TLS as a layer between a stream transport and a protocol (spec S-01..S-14), on
//! rustls: the application's protocol sees the same [`Protocol`]/[`Transport`] interface
//! as without TLS, plus [`Protocol::handshake_completed`] and [`Transport::tls`].
//!
//! - A TLS server: [`Reactor::listen_tls`] (TCP), or [`server_factory`] /
//!   [`server_protocol`] over any stream transport.
//! - A TLS client: [`Reactor::connect_tls`] (TCP), or [`client_factory`] /
//!   [`client_protocol`] over any stream transport.
//! - On an established connection: [`Transport::start_tls`] (S-12).
//!
//! Configurations ([`TlsClientConfig`], [`TlsServerConfig`]) are built once, up front;
//! a handshake failure reaches `connection_lost` as [`CloseReason::Tls`] with a
//! [`TlsFailure`] saying what went wrong in words.
//!
//! [`Protocol`]: crate::reactor::Protocol
//! [`Protocol::handshake_completed`]: crate::reactor::Protocol::handshake_completed
//! [`Transport`]: crate::reactor::Transport
//! [`Transport::tls`]: crate::reactor::Transport::tls
//! [`Transport::start_tls`]: crate::reactor::Transport::start_tls
//! [`CloseReason::Tls`]: crate::reactor::CloseReason::Tls

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use super::Reactor;
use super::address::Address;
use super::endpoints::{CheckHandle, CheckedFactory};
use super::failure::Failure;
use super::protocol::{CloseReason, ConnectError, Factory, Protocol, TransportRef};
use super::tcp::{CannotListenError, ClientFactory, Connector, ListeningPort};

mod cert;
mod config;
mod error;
mod layer;

pub use cert::{CertificateInfo, CertificateParseError, Fingerprint};
pub use config::{
    ClientOptions, GeneratedPem, Protocols, ServerIdentity, ServerOptions, TlsClientConfig,
    TlsServerConfig, Verify, read_certificates, server_name,
};
pub use error::{TlsConfigError, TlsError, TlsFailure};
pub use layer::{TlsSession, TlsTransport};

use layer::{Start, TlsProtocol};

/// Which side of TLS to start on an established connection (S-12).
#[derive(Debug, Clone)]
pub enum StartTls {
    /// Act as the client, verifying the server as `server_name` (a DNS name, sent as
    /// SNI, or an IP literal).
    Client {
        /// The client configuration.
        config: TlsClientConfig,
        /// The name to verify and send.
        server_name: String,
    },
    /// Act as the server.
    Server(TlsServerConfig),
}

/// `start_tls` could not start TLS.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartTlsError {
    /// The transport cannot carry TLS (or already does).
    #[error("this transport cannot start TLS")]
    Unsupported,
    /// The connection is closing or closed.
    #[error("the connection is closing")]
    NotConnected,
    /// The configuration or the name was refused.
    #[error(transparent)]
    Config(#[from] TlsConfigError),
}

/// The TLS layer of a server connection, to install on any stream transport before
/// its `connection_made`: wraps `inner`.
pub fn server_protocol(
    reactor: &Reactor,
    config: &TlsServerConfig,
    inner: Box<dyn Protocol>,
) -> Result<Box<dyn Protocol>, TlsConfigError> {
    let connection = rustls::Connection::Server(config.connection()?);
    let tls = TlsTransport::new(reactor, connection, None, Some(inner), Start::Fresh, None);
    Ok(Box::new(TlsProtocol { tls }))
}

/// The TLS layer of a client connection to `server_name`, to install on any stream
/// transport before its `connection_made`: wraps `inner`.
pub fn client_protocol(
    reactor: &Reactor,
    config: &TlsClientConfig,
    server_name: &str,
    inner: Box<dyn Protocol>,
) -> Result<Box<dyn Protocol>, TlsConfigError> {
    client_layer(reactor, config, server_name, inner, None)
}

fn client_layer(
    reactor: &Reactor,
    config: &TlsClientConfig,
    server_name: &str,
    inner: Box<dyn Protocol>,
    lost_slot: Option<Rc<RefCell<Option<CloseReason>>>>,
) -> Result<Box<dyn Protocol>, TlsConfigError> {
    let name = config::server_name(server_name)?;
    let (connection, recorder) = config.connection(&name)?;
    let tls = TlsTransport::new(
        reactor,
        rustls::Connection::Client(connection),
        Some(recorder),
        Some(inner),
        Start::Fresh,
        lost_slot,
    );
    Ok(Box::new(TlsProtocol { tls }))
}

/// Puts a TLS layer under an established connection's protocol (S-12): `outer` is the
/// stream transport's own (unlayered) handle. Returns the layer, which the stream
/// transport hands its protocol to and sends its protocol's calls to from now on.
pub(crate) fn start_layer(
    reactor: &Reactor,
    outer: TransportRef,
    tls: StartTls,
) -> Result<(Rc<TlsTransport>, Box<dyn Protocol>), TlsConfigError> {
    let (connection, recorder) = match &tls {
        StartTls::Client {
            config,
            server_name,
        } => {
            let name = config::server_name(server_name)?;
            let (connection, recorder) = config.connection(&name)?;
            (rustls::Connection::Client(connection), Some(recorder))
        }
        StartTls::Server(config) => (rustls::Connection::Server(config.connection()?), None),
    };
    let layer = TlsTransport::new(
        reactor,
        connection,
        recorder,
        None,
        Start::Established(outer),
        None,
    );
    // A client speaks first: its ClientHello goes out after what was written before.
    layer.flush_records();
    let protocol = Box::new(TlsProtocol { tls: layer.clone() });
    Ok((layer, protocol))
}

/// Gives the protocol of an established connection to its new layer (S-12).
pub(crate) fn adopt_protocol(layer: &TlsTransport, protocol: Box<dyn Protocol>) {
    layer.set_protocol(protocol);
}

/// The address a layer reports once the transport under it is gone.
pub(crate) fn unknown_address() -> Address {
    Address::Tcp(SocketAddr::from(([0, 0, 0, 0], 0)))
}

struct ServerFactory {
    reactor: super::WeakReactor,
    config: TlsServerConfig,
    inner: Rc<dyn Factory>,
}

impl Factory for ServerFactory {
    fn build_protocol(&self, addr: Address) -> Option<Box<dyn Protocol>> {
        let reactor = self.reactor.upgrade()?;
        let inner = self.inner.build_protocol(addr.clone())?;
        match server_protocol(&reactor, &self.config, inner) {
            Ok(protocol) => Some(protocol),
            Err(error) => {
                log::error!("TLS connection from {addr} refused: {error}");
                None
            }
        }
    }

    fn start_factory(&self) {
        self.inner.start_factory();
    }

    fn stop_factory(&self) {
        self.inner.stop_factory();
    }
}

/// A factory whose protocols speak TLS as a server over any stream transport.
pub fn server_factory(
    reactor: &Reactor,
    config: &TlsServerConfig,
    inner: Rc<dyn Factory>,
) -> Rc<dyn Factory> {
    Rc::new(ServerFactory {
        reactor: reactor.downgrade(),
        config: config.clone(),
        inner,
    })
}

struct ClientSide {
    reactor: super::WeakReactor,
    config: TlsClientConfig,
    server_name: String,
    inner: Rc<dyn ClientFactory>,
    /// The close reason the inner protocol got, handed to the inner factory's
    /// `client_connection_lost` in place of the outer connection's.
    lost: Rc<RefCell<Option<CloseReason>>>,
}

impl Factory for ClientSide {
    fn build_protocol(&self, addr: Address) -> Option<Box<dyn Protocol>> {
        let reactor = self.reactor.upgrade()?;
        let inner = self.inner.build_protocol(addr.clone())?;
        let layer = client_layer(
            &reactor,
            &self.config,
            &self.server_name,
            inner,
            Some(self.lost.clone()),
        );
        match layer {
            Ok(protocol) => Some(protocol),
            Err(error) => {
                log::error!("TLS connection to {addr} not started: {error}");
                None
            }
        }
    }

    fn start_factory(&self) {
        self.inner.start_factory();
    }

    fn stop_factory(&self) {
        self.inner.stop_factory();
    }
}

impl ClientFactory for ClientSide {
    fn started_connecting(&self, connector: &Connector) {
        self.inner.started_connecting(connector);
    }

    fn client_connection_failed(&self, connector: &Connector, reason: &ConnectError) {
        self.inner.client_connection_failed(connector, reason);
    }

    fn client_connection_lost(&self, connector: &Connector, reason: &CloseReason) {
        let ours = self.lost.borrow_mut().take();
        self.inner
            .client_connection_lost(connector, ours.as_ref().unwrap_or(reason));
    }
}

/// A client factory whose protocols speak TLS to `server_name` over any stream
/// transport. Fails on a name that is neither a DNS name nor an IP literal.
pub fn client_factory(
    reactor: &Reactor,
    config: &TlsClientConfig,
    server_name: &str,
    inner: Rc<dyn ClientFactory>,
) -> Result<Rc<dyn ClientFactory>, TlsConfigError> {
    config::server_name(server_name)?;
    Ok(Rc::new(ClientSide {
        reactor: reactor.downgrade(),
        config: config.clone(),
        server_name: server_name.to_string(),
        inner,
        lost: Rc::new(RefCell::new(None)),
    }))
}

/// The user's protocol, with the endpoint's check passed when the handshake completed
/// (a failed handshake ends the connection, which fails the check with its reason).
struct HandshakeCheck {
    inner: Box<dyn Protocol>,
    check: CheckHandle,
}

impl Protocol for HandshakeCheck {
    fn connection_made(&mut self, transport: &TransportRef) -> Result<(), Failure> {
        self.inner.connection_made(transport)
    }

    fn handshake_completed(&mut self, transport: &TransportRef) -> Result<(), Failure> {
        self.check.pass();
        self.inner.handshake_completed(transport)
    }

    fn data_received(&mut self, transport: &TransportRef, data: &[u8]) -> Result<(), Failure> {
        self.inner.data_received(transport, data)
    }

    fn connection_lost(&mut self, reason: &CloseReason) {
        // Before the handshake completed: the check fails with the TLS reason (the
        // stream under it only saw an orderly close). After it: nothing happens.
        self.check.fail(Failure::new(reason.clone()));
        self.inner.connection_lost(reason);
    }

    fn wants_half_close(&self) -> bool {
        self.inner.wants_half_close()
    }

    fn read_connection_lost(&mut self, transport: &TransportRef) -> Result<(), Failure> {
        self.inner.read_connection_lost(transport)
    }

    fn write_connection_lost(&mut self, transport: &TransportRef) -> Result<(), Failure> {
        self.inner.write_connection_lost(transport)
    }
}

struct CheckedClient {
    reactor: super::WeakReactor,
    config: TlsClientConfig,
    server_name: String,
    inner: Rc<dyn Factory>,
}

impl CheckedFactory for CheckedClient {
    fn build_protocol(&self, addr: Address, check: CheckHandle) -> Option<Box<dyn Protocol>> {
        let reactor = self.reactor.upgrade()?;
        let inner = self.inner.build_protocol(addr.clone())?;
        let checked = Box::new(HandshakeCheck { inner, check });
        match client_protocol(&reactor, &self.config, &self.server_name, checked) {
            Ok(protocol) => Some(protocol),
            Err(error) => {
                log::error!("TLS connection to {addr} not started: {error}");
                None
            }
        }
    }
}

/// For an endpoint's `connect_checked`: protocols from `inner` over TLS to
/// `server_name`, the connection counting as made once the handshake completed and
/// the server was verified. A failed handshake fails the endpoint's check with
/// [`CloseReason::Tls`] as the failure.
pub fn checked_client_factory(
    reactor: &Reactor,
    config: &TlsClientConfig,
    server_name: &str,
    inner: Rc<dyn Factory>,
) -> Result<Rc<dyn CheckedFactory>, TlsConfigError> {
    config::server_name(server_name)?;
    Ok(Rc::new(CheckedClient {
        reactor: reactor.downgrade(),
        config: config.clone(),
        server_name: server_name.to_string(),
        inner,
    }))
}

/// The CA certificates of a PEM file, or of every PEM file in a directory (as
/// `trustRoots=` of a `tls:` description takes them).
pub fn trust_roots(path: &std::path::Path) -> Result<Verify, TlsConfigError> {
    if !path.is_dir() {
        return Ok(Verify::CaFile(path.to_path_buf()));
    }
    let entries = std::fs::read_dir(path).map_err(|source| TlsConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut roots = Vec::new();
    for entry in entries.flatten() {
        if entry.path().is_file() {
            // Files that hold no certificate (keys, notes) are skipped.
            roots.extend(read_certificates(&entry.path()).unwrap_or_default());
        }
    }
    if roots.is_empty() {
        return Err(TlsConfigError::Missing {
            path: path.to_path_buf(),
            what: "certificate",
        });
    }
    Ok(Verify::Roots(roots))
}

impl Reactor {
    /// Listens for TLS connections on `address` (Twisted's `listenSSL`): every
    /// connection's protocol comes from `factory` and speaks through the TLS layer.
    pub fn listen_tls(
        &self,
        address: SocketAddr,
        config: &TlsServerConfig,
        factory: Rc<dyn Factory>,
    ) -> Result<ListeningPort, CannotListenError> {
        self.listen_tcp(address, server_factory(self, config, factory))
    }

    /// Connects to `address` over TLS, verifying the server as `server_name`
    /// (Twisted's `connectSSL`). `connection_made` comes with the TCP connection,
    /// `handshake_completed` after the handshake; a failed handshake ends the
    /// connection with [`CloseReason::Tls`].
    pub fn connect_tls(
        &self,
        address: SocketAddr,
        server_name: &str,
        config: &TlsClientConfig,
        factory: Rc<dyn ClientFactory>,
        timeout: Option<Duration>,
    ) -> Result<Connector, TlsConfigError> {
        let factory = client_factory(self, config, server_name, factory)?;
        Ok(self.connect_tcp(address, factory, timeout))
    }
}
