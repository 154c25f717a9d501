//! The TLS workloads, `tls-connect` and `tls-echo`: `connect` and `echo` over TLS 1.3
//! with the parameters the contract fixes (TLS_AES_128_GCM_SHA256, X25519, the ECDSA
//! P-256 leaf of `../shared/bench/tls/`, verification against the test CA, no
//! resumption), through the reactor's TLS layer.

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::rc::{Rc, Weak};

use clap::Args;
use rustls::{CipherSuite, NamedGroup};

use twistctl::reactor::tcp::{ClientFactory, Connector, DEFAULT_CONNECT_TIMEOUT, ListenOptions};
use twistctl::reactor::tls::{
    self, ClientOptions, Protocols, ServerIdentity, ServerOptions, TlsClientConfig,
    TlsServerConfig, Verify,
};
use twistctl::reactor::{
    Address, CloseReason, ConnectError, Factory, Protocol, ProtocolResult, Reactor, TransportRef,
};

use super::{
    BACKLOG, Common, ConnectCounts, Ctx, EchoClients, EchoFactory, HELLO, HelloServerFactory, Obj,
    Outcome, Stopwatch, bump, emit, fail, loopback_any, rate, stop,
};

/// What every connection must negotiate, spelled as OpenSSL (and the JSON line) does.
const VERSION: &str = "TLSv1.3";
const CIPHER: &str = "TLS_AES_128_GCM_SHA256";
const GROUP: &str = "x25519";

/// The name the client verifies and sends as SNI; it still connects to 127.0.0.1.
const SERVER_NAME: &str = "localhost";

fn default_file(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/bench/tls/")).join(name)
}

/// `--ca`, `--cert`, `--key`: the test CA and the server's leaf and key.
#[derive(Debug, Clone, Args)]
pub struct TlsFiles {
    /// The CA the client trusts (PEM).
    #[arg(long, default_value_os_t = default_file("ca.pem"))]
    pub ca: PathBuf,
    /// The server's certificate (PEM).
    #[arg(long, default_value_os_t = default_file("server.pem"))]
    pub cert: PathBuf,
    /// The server's private key (PEM).
    #[arg(long, default_value_os_t = default_file("server.key"))]
    pub key: PathBuf,
}

impl Default for TlsFiles {
    fn default() -> Self {
        TlsFiles {
            ca: default_file("ca.pem"),
            cert: default_file("server.pem"),
            key: default_file("server.key"),
        }
    }
}

/// Flags of `tls-connect`.
#[derive(Debug, Clone, Args)]
pub struct TlsConnectArgs {
    /// Number of connections.
    #[arg(long, default_value_t = 5_000)]
    pub count: i64,
    /// Connections in flight at a time.
    #[arg(long, default_value_t = 100)]
    pub concurrency: i64,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub files: TlsFiles,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
}

/// Flags of `tls-echo`.
#[derive(Debug, Clone, Args)]
pub struct TlsEchoArgs {
    /// Number of connections.
    #[arg(long, default_value_t = 1)]
    pub connections: i64,
    /// Bytes echoed in total, over all connections (plaintext).
    #[arg(long, default_value_t = 512 * 1024 * 1024)]
    pub bytes: i64,
    /// Bytes per write.
    #[arg(long, default_value_t = 65536)]
    pub chunk: i64,
    /// Bytes a client may have sent and not yet received back.
    #[arg(long, default_value_t = 1024 * 1024)]
    pub window: i64,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub files: TlsFiles,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
}

/// The contract's parameters, the same on both ends.
fn pinned() -> Protocols {
    Protocols {
        tls13_only: true,
        cipher_suites: Some(vec![CipherSuite::TLS13_AES_128_GCM_SHA256]),
        groups: Some(vec![NamedGroup::X25519]),
        alpn: Vec::new(),
    }
}

fn configs(files: &TlsFiles) -> Result<(TlsServerConfig, TlsClientConfig), String> {
    let identity =
        ServerIdentity::from_pem_files(&files.cert, &files.key).map_err(|e| e.to_string())?;
    let server = TlsServerConfig::new(&ServerOptions {
        identities: vec![identity],
        protocols: pinned(),
        resumption: false,
    })
    .map_err(|e| e.to_string())?;
    let client = TlsClientConfig::new(&ClientOptions {
        verify: Verify::CaFile(files.ca.clone()),
        protocols: pinned(),
        resumption: false,
    })
    .map_err(|e| e.to_string())?;
    Ok((server, client))
}

/// What the connections negotiated: the first one's values, and how many differed.
#[derive(Default)]
struct Negotiated {
    first: RefCell<Option<(String, String, String)>>,
    handshakes: Cell<u64>,
    mismatched: Cell<u64>,
    first_failure: RefCell<Option<String>>,
}

impl Negotiated {
    fn record(&self, transport: &TransportRef) {
        bump(&self.handshakes);
        let Some(session) = transport.tls() else {
            bump(&self.mismatched);
            return;
        };
        let got = (
            session.version.clone(),
            session.cipher.clone(),
            session.group.clone().unwrap_or_default(),
        );
        if (got.0.as_str(), got.1.as_str(), got.2.as_str()) != (VERSION, CIPHER, GROUP) {
            bump(&self.mismatched);
        }
        self.first.borrow_mut().get_or_insert(got);
    }

    fn failed(&self, reason: &CloseReason) {
        let mut first = self.first_failure.borrow_mut();
        if first.is_none() {
            *first = Some(match reason {
                CloseReason::Tls(error) => format!("handshake failed: {error}"),
                other => other.to_string(),
            });
        }
    }

    fn put(&self, extra: &mut Obj) {
        let first = self.first.borrow();
        let (version, cipher, group) = match first.as_ref() {
            Some((v, c, g)) => (v.as_str(), c.as_str(), g.as_str()),
            None => ("", "", ""),
        };
        extra.put("tls_version", version);
        extra.put("cipher", cipher);
        extra.put("group", group);
    }

    /// The check's reason when something differs from the contract.
    fn problem(&self, expected: u64) -> Option<String> {
        if let Some(failure) = self.first_failure.borrow().clone() {
            return Some(failure);
        }
        if self.handshakes.get() != expected {
            return Some(format!(
                "{} handshakes of {expected} completed",
                self.handshakes.get()
            ));
        }
        if self.mismatched.get() > 0 {
            let first = self.first.borrow().clone().unwrap_or_default();
            return Some(format!(
                "{} connections negotiated other parameters than {VERSION} {CIPHER} {GROUP} (first: {} {} {})",
                self.mismatched.get(),
                first.0,
                first.1,
                first.2
            ));
        }
        None
    }
}

fn listen_tls(
    reactor: &Reactor,
    config: &TlsServerConfig,
    factory: Rc<dyn Factory>,
) -> Result<twistctl::reactor::tcp::ListeningPort, String> {
    let options = ListenOptions {
        backlog: BACKLOG,
        ..ListenOptions::default()
    };
    reactor
        .listen_tcp_with(
            loopback_any(),
            tls::server_factory(reactor, config, factory),
            options,
        )
        .map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------------------
// tls-connect

struct Clients {
    me: Weak<Clients>,
    reactor: Reactor,
    port: std::net::SocketAddr,
    total: u64,
    counts: Rc<ConnectCounts>,
    negotiated: Negotiated,
    /// The TLS client factory over this one, made once.
    tls: RefCell<Option<Rc<dyn ClientFactory>>>,
}

impl Clients {
    fn start_one(&self) {
        bump(&self.counts.started);
        if let Some(factory) = self.tls.borrow().clone() {
            self.reactor
                .connect_tcp(self.port, factory, Some(DEFAULT_CONNECT_TIMEOUT));
        }
    }

    fn completed(&self) {
        bump(&self.counts.completed);
        if self.counts.started.get() < self.total {
            self.start_one();
        } else if self.counts.completed.get() == self.total {
            stop(&self.reactor);
        }
    }
}

struct HelloClient {
    clients: Rc<Clients>,
    buf: Vec<u8>,
}

impl Protocol for HelloClient {
    fn handshake_completed(&mut self, transport: &TransportRef) -> ProtocolResult {
        self.clients.negotiated.record(transport);
        Ok(())
    }

    fn data_received(&mut self, _: &TransportRef, data: &[u8]) -> ProtocolResult {
        self.buf.extend_from_slice(data);
        Ok(())
    }

    fn connection_lost(&mut self, reason: &CloseReason) {
        let c = &self.clients;
        if self.buf != HELLO {
            bump(&c.counts.bad);
        }
        // Clean: the server's close_notify came before the end of the TCP stream.
        if !reason.is_clean() {
            bump(&c.counts.unclean);
            c.negotiated.failed(reason);
        }
        c.completed();
    }
}

impl Factory for Clients {
    fn build_protocol(&self, _: Address) -> Option<Box<dyn Protocol>> {
        let clients = self.me.upgrade()?;
        Some(Box::new(HelloClient {
            clients,
            buf: Vec::new(),
        }))
    }
}

impl ClientFactory for Clients {
    fn client_connection_failed(&self, _: &Connector, reason: &ConnectError) {
        log::warn!("connect failed: {reason}");
        bump(&self.counts.failed);
        self.completed();
    }
}

pub(super) fn run_tls_connect(ctx: &Ctx, a: &TlsConnectArgs) -> Outcome {
    if a.count < 1 || a.concurrency < 1 {
        return fail(ctx, "bad parameters");
    }
    let (m, c) = (a.count as u64, a.concurrency as u64);
    let (server_config, client_config) = match configs(&a.files) {
        Ok(configs) => configs,
        Err(e) => return fail(ctx, &e),
    };
    let reactor = match Reactor::new() {
        Ok(r) => r,
        Err(e) => return fail(ctx, &e.to_string()),
    };
    let counts = Rc::new(ConnectCounts::default());
    // connect's hello server: under TLS its hello, written at TCP accept, goes out once
    // the handshake is done, then close_notify.
    let servers = Rc::new(HelloServerFactory {
        counts: counts.clone(),
    });
    let port = match listen_tls(&reactor, &server_config, servers) {
        Ok(p) => p,
        Err(e) => return fail(ctx, &e),
    };
    let clients = Rc::new_cyclic(|me| Clients {
        me: me.clone(),
        reactor: reactor.clone(),
        port: port.host(),
        total: m,
        counts: counts.clone(),
        negotiated: Negotiated::default(),
        tls: RefCell::new(None),
    });
    match tls::client_factory(&reactor, &client_config, SERVER_NAME, clients.clone()) {
        Ok(factory) => *clients.tls.borrow_mut() = Some(factory),
        Err(e) => return fail(ctx, &e.to_string()),
    }

    let mut watch = Stopwatch::start();
    for _ in 0..c.min(m) {
        clients.start_one();
    }
    let run = reactor.run();
    watch.stop();
    // The factory holds the clients, which hold it: let go.
    clients.tls.borrow_mut().take();
    if let Err(e) = run {
        return fail(ctx, &format!("the reactor failed: {e}"));
    }

    let problem = clients.negotiated.problem(m);
    let ok = counts.completed.get() == m
        && counts.server_made.get() == m
        && counts.bad.get() == 0
        && counts.unclean.get() == 0
        && counts.failed.get() == 0
        && problem.is_none();
    let check = if ok {
        "ok".to_string()
    } else {
        format!(
            "fail: {}completed {} server_accepted {} bad {} unclean {} failed {}",
            problem.map(|p| format!("{p}; ")).unwrap_or_default(),
            counts.completed.get(),
            counts.server_made.get(),
            counts.bad.get(),
            counts.unclean.get(),
            counts.failed.get()
        )
    };
    let mut extra = Obj::default();
    extra.put("completed", counts.completed.get());
    extra.put("server_accepted", counts.server_made.get());
    clients.negotiated.put(&mut extra);
    extra.put_raw(
        "handshakes_per_s",
        rate(m as f64, watch.wall, 1).to_string(),
    );
    emit(ctx, Some(&watch), m, &check, extra)
}

// ---------------------------------------------------------------------------------------
// tls-echo

/// The echo client of `echo`, told of the handshake.
struct Recorded {
    inner: Box<dyn Protocol>,
    negotiated: Rc<Negotiated>,
    reactor: Reactor,
}

impl Protocol for Recorded {
    fn connection_made(&mut self, transport: &TransportRef) -> ProtocolResult {
        // `echo`'s client pumps here; over TLS its writes wait for the handshake.
        self.inner.connection_made(transport)
    }

    fn handshake_completed(&mut self, transport: &TransportRef) -> ProtocolResult {
        self.negotiated.record(transport);
        Ok(())
    }

    fn data_received(&mut self, transport: &TransportRef, data: &[u8]) -> ProtocolResult {
        self.inner.data_received(transport, data)
    }

    fn connection_lost(&mut self, reason: &CloseReason) {
        // A connection lost before it is done fails the run; the stop ends it.
        self.negotiated.failed(reason);
        stop(&self.reactor);
        self.inner.connection_lost(reason);
    }
}

struct RecordedClients {
    inner: Rc<EchoClients>,
    negotiated: Rc<Negotiated>,
    reactor: Reactor,
}

impl Factory for RecordedClients {
    fn build_protocol(&self, addr: Address) -> Option<Box<dyn Protocol>> {
        let inner = self.inner.build_protocol(addr)?;
        Some(Box::new(Recorded {
            inner,
            negotiated: self.negotiated.clone(),
            reactor: self.reactor.clone(),
        }))
    }
}

impl ClientFactory for RecordedClients {
    fn client_connection_failed(&self, connector: &Connector, reason: &ConnectError) {
        self.inner.client_connection_failed(connector, reason);
    }
}

pub(super) fn run_tls_echo(ctx: &Ctx, a: &TlsEchoArgs) -> Outcome {
    if a.connections < 1 || a.bytes < a.connections || a.chunk < 1 || a.window < a.chunk {
        return fail(ctx, "bad parameters");
    }
    let (k, total) = (a.connections as u64, a.bytes as u64);
    let (server_config, client_config) = match configs(&a.files) {
        Ok(configs) => configs,
        Err(e) => return fail(ctx, &e),
    };
    let reactor = match Reactor::new() {
        Ok(r) => r,
        Err(e) => return fail(ctx, &e.to_string()),
    };
    let port = match listen_tls(&reactor, &server_config, Rc::new(EchoFactory)) {
        Ok(p) => p,
        Err(e) => return fail(ctx, &e),
    };
    let clients = EchoClients::new(&reactor, k, total, a.chunk as u64, a.window as u64);
    let negotiated = Rc::new(Negotiated::default());
    let recorded = Rc::new(RecordedClients {
        inner: clients.clone(),
        negotiated: negotiated.clone(),
        reactor: reactor.clone(),
    });
    let factory = match tls::client_factory(&reactor, &client_config, SERVER_NAME, recorded) {
        Ok(factory) => factory,
        Err(e) => return fail(ctx, &e.to_string()),
    };

    let mut watch = Stopwatch::start();
    for _ in 0..k {
        reactor.connect_tcp(port.host(), factory.clone(), Some(DEFAULT_CONNECT_TIMEOUT));
    }
    let run = reactor.run();
    watch.stop();
    if let Err(e) = run {
        return fail(ctx, &format!("the reactor failed: {e}"));
    }

    let (done, echoed, failed) = (
        clients.done.get(),
        clients.echoed.get(),
        clients.failed.get(),
    );
    // Connections stay open when done, so only an end before that is a failure.
    let problem = if done == k {
        negotiated.first_failure.borrow_mut().take();
        negotiated.problem(k)
    } else {
        negotiated.problem(k)
    };
    let ok = done == k && echoed == total && failed == 0 && problem.is_none();
    let check = if ok {
        "ok".to_string()
    } else {
        format!(
            "fail: {}made {} done {done} echoed {echoed} failed {failed}",
            problem.map(|p| format!("{p}; ")).unwrap_or_default(),
            clients.made.get()
        )
    };
    let mut extra = Obj::default();
    extra.put("bytes_echoed", echoed);
    extra.put_raw("bytes_per_s", rate(total as f64, watch.wall, 1).to_string());
    extra.put_raw(
        "mb_per_s",
        rate(total as f64 / 1e6, watch.wall, 2).to_string(),
    );
    negotiated.put(&mut extra);
    emit(ctx, Some(&watch), total, &check, extra)
}
