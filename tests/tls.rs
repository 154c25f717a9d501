//! The TLS layer against spec items S-01..S-14, on loopback with certificates the tests
//! generate: a CA, a leaf for `localhost`/127.0.0.1, an expired leaf, one not yet
//! valid, one for another name, one signed by an impostor CA, a self-signed one.
//!
//! Both ends usually run on one reactor; where a misbehaving peer is needed (one that
//! never reads, one that closes without close_notify, one that checks the bytes on
//! the wire) it is a blocking rustls peer on a thread. Every run is bounded by a
//! watchdog that stops the reactor and fails the test after 10 s.

mod common;

use common::pki::{IN_DATE, Signed, TestCa, leaf_params};
use std::cell::{Cell, RefCell};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream as StdStream};
use std::rc::Rc;
use std::sync::OnceLock;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use twistctl::reactor::tcp::{ClientFactory, HIGH_WATER_MARK, WRITE_BUFFER_LIMIT};
use twistctl::reactor::tls::{
    CertificateInfo, ClientOptions, Fingerprint, Protocols, ServerIdentity, ServerOptions,
    StartTls, TlsClientConfig, TlsConfigError, TlsFailure, TlsServerConfig, Verify,
};
use twistctl::reactor::{
    Address, CloseReason, Factory, Producer, Protocol, ProtocolResult, Reactor, TransportRef,
};

// ---------------------------------------------------------------------------------------
// Certificates

struct Pki {
    ca: CertificateDer<'static>,
    /// localhost and 127.0.0.1, signed by the CA.
    leaf: ServerIdentity,
    expired: ServerIdentity,
    not_yet_valid: ServerIdentity,
    /// other.test only.
    other_name: ServerIdentity,
    /// Issued under the CA's name by a different key.
    impostor: ServerIdentity,
    self_signed: ServerIdentity,
}

fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let local = ["localhost", "127.0.0.1"];
        let valid = IN_DATE;
        let ca = TestCa::new("twistctl test CA");
        let signed = |params| ca.sign(params).identity();
        // A CA of the same name with another key.
        let impostor = TestCa::new("twistctl test CA").sign(leaf_params(&local, valid.0, valid.1));
        Pki {
            ca: ca.ca.der(),
            leaf: signed(leaf_params(&local, valid.0, valid.1)),
            expired: signed(leaf_params(&local, (2020, 1, 1), (2021, 1, 1))),
            not_yet_valid: signed(leaf_params(&local, (2090, 1, 1), (2091, 1, 1))),
            other_name: signed(leaf_params(&["other.test"], valid.0, valid.1)),
            impostor: impostor.identity(),
            self_signed: Signed::self_signed(leaf_params(&local, valid.0, valid.1)).identity(),
        }
    })
}

fn server_config(identities: &[&ServerIdentity], alpn: &[&str]) -> TlsServerConfig {
    TlsServerConfig::new(&ServerOptions {
        identities: identities.iter().map(|i| (*i).clone()).collect(),
        protocols: Protocols {
            alpn: alpn.iter().map(|p| p.as_bytes().to_vec()).collect(),
            ..Protocols::default()
        },
        resumption: false,
    })
    .expect("server config")
}

fn client_config(verify: Verify, alpn: &[&str]) -> TlsClientConfig {
    TlsClientConfig::new(&ClientOptions {
        verify,
        protocols: Protocols {
            alpn: alpn.iter().map(|p| p.as_bytes().to_vec()).collect(),
            ..Protocols::default()
        },
        resumption: false,
    })
    .expect("client config")
}

fn trusting_ca() -> TlsClientConfig {
    client_config(Verify::Roots(vec![pki().ca.clone()]), &[])
}

// ---------------------------------------------------------------------------------------
// A scripted protocol that logs what happens to it

type Log = Rc<RefCell<Vec<String>>>;
type Hook = Rc<dyn Fn(&Reactor, &TransportRef, &Peer)>;
type DataHook = Rc<dyn Fn(&Reactor, &TransportRef, &Peer, &[u8])>;

fn new_log() -> Log {
    Rc::new(RefCell::new(Vec::new()))
}

fn entries(log: &Log) -> Vec<String> {
    log.borrow().clone()
}

/// What a peer does; every hook is optional.
#[derive(Clone, Default)]
struct Script {
    made: Option<Hook>,
    handshake: Option<Hook>,
    data: Option<DataHook>,
    /// Stop the reactor once this many connections (of the peers sharing the count)
    /// have ended; 0: never.
    stop_after_ends: usize,
    half_close: bool,
}

struct Peer {
    side: &'static str,
    log: Log,
    script: Script,
    reactor: Reactor,
    received: Rc<RefCell<Vec<u8>>>,
    transport: RefCell<Option<TransportRef>>,
    ends: Rc<Cell<usize>>,
}

impl Peer {
    fn note(&self, event: String) {
        self.log.borrow_mut().push(format!("{} {event}", self.side));
    }
}

fn reason_word(reason: &CloseReason) -> String {
    match reason {
        CloseReason::Done => "done".to_string(),
        CloseReason::Lost(_) => "lost".to_string(),
        CloseReason::Reset(_) => "reset".to_string(),
        CloseReason::Aborted => "aborted".to_string(),
        CloseReason::Protocol(f) => format!("protocol {f}"),
        CloseReason::Tls(e) => format!("tls {:?}", e.failure),
    }
}

struct PeerProtocol(Rc<Peer>);

impl Protocol for PeerProtocol {
    fn connection_made(&mut self, transport: &TransportRef) -> ProtocolResult {
        let peer = &self.0;
        *peer.transport.borrow_mut() = Some(transport.clone());
        peer.note(format!("made tls={}", transport.tls().is_some()));
        if let Some(hook) = peer.script.made.clone() {
            hook(&peer.reactor, transport, peer);
        }
        Ok(())
    }

    fn handshake_completed(&mut self, transport: &TransportRef) -> ProtocolResult {
        let peer = &self.0;
        let session = transport.tls().expect("a session after the handshake");
        peer.note(format!("handshake {}", session.version));
        if let Some(hook) = peer.script.handshake.clone() {
            hook(&peer.reactor, transport, peer);
        }
        Ok(())
    }

    fn data_received(&mut self, transport: &TransportRef, data: &[u8]) -> ProtocolResult {
        let peer = &self.0;
        peer.received.borrow_mut().extend_from_slice(data);
        if let Some(hook) = peer.script.data.clone() {
            hook(&peer.reactor, transport, peer, data);
        }
        Ok(())
    }

    fn connection_lost(&mut self, reason: &CloseReason) {
        let peer = &self.0;
        peer.note(format!("lost {}", reason_word(reason)));
        peer.ends.set(peer.ends.get() + 1);
        if peer.script.stop_after_ends > 0 && peer.ends.get() >= peer.script.stop_after_ends {
            let _ = peer.reactor.stop();
        }
    }

    fn wants_half_close(&self) -> bool {
        self.0.script.half_close
    }

    fn read_connection_lost(&mut self, _: &TransportRef) -> ProtocolResult {
        self.0.note("read closed".to_string());
        Ok(())
    }
}

/// A factory of peers; keeps the last one built so the test can look at it.
struct Peers {
    side: &'static str,
    log: Log,
    script: Script,
    reactor: Reactor,
    last: RefCell<Option<Rc<Peer>>>,
    reasons: Rc<RefCell<Vec<CloseReason>>>,
    ends: Rc<Cell<usize>>,
}

impl Peers {
    fn new(side: &'static str, log: &Log, reactor: &Reactor, script: Script) -> Rc<Peers> {
        Peers::sharing(side, log, reactor, script, &Rc::new(Cell::new(0)))
    }

    /// Peers whose connection ends are counted together with others'.
    fn sharing(
        side: &'static str,
        log: &Log,
        reactor: &Reactor,
        script: Script,
        ends: &Rc<Cell<usize>>,
    ) -> Rc<Peers> {
        Rc::new(Peers {
            ends: ends.clone(),
            side,
            log: log.clone(),
            script,
            reactor: reactor.clone(),
            last: RefCell::new(None),
            reasons: Rc::new(RefCell::new(Vec::new())),
        })
    }

    fn peer(&self) -> Rc<Peer> {
        self.last.borrow().clone().expect("a peer was built")
    }

    fn received(&self) -> Vec<u8> {
        self.peer().received.borrow().clone()
    }
}

impl Factory for Peers {
    fn build_protocol(&self, _: Address) -> Option<Box<dyn Protocol>> {
        let peer = Rc::new(Peer {
            side: self.side,
            log: self.log.clone(),
            script: self.script.clone(),
            reactor: self.reactor.clone(),
            received: Rc::new(RefCell::new(Vec::new())),
            transport: RefCell::new(None),
            ends: self.ends.clone(),
        });
        *self.last.borrow_mut() = Some(peer.clone());
        Some(Box::new(PeerProtocol(peer)))
    }
}

impl ClientFactory for Peers {
    fn client_connection_lost(&self, _: &twistctl::reactor::tcp::Connector, reason: &CloseReason) {
        self.reasons.borrow_mut().push(reason.clone());
    }
}

fn hook(f: impl Fn(&Reactor, &TransportRef, &Peer) + 'static) -> Option<Hook> {
    Some(Rc::new(f))
}

fn data_hook(f: impl Fn(&Reactor, &TransportRef, &Peer, &[u8]) + 'static) -> Option<DataHook> {
    Some(Rc::new(f))
}

const WATCHDOG: Duration = Duration::from_secs(10);

/// Runs the reactor until the test stops it; fails if the watchdog had to.
fn run(reactor: &Reactor) {
    let fired = Rc::new(Cell::new(false));
    let (flag, r) = (fired.clone(), reactor.clone());
    let dog = reactor.call_later(WATCHDOG, move || {
        flag.set(true);
        let _ = r.stop();
    });
    reactor.run().expect("the reactor ran");
    let _ = dog.cancel();
    assert!(
        !fired.get(),
        "watchdog: the test did not finish within 10 s"
    );
}

fn loopback() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

/// A TLS server and a TLS client to `name` on one reactor; returns both factories.
fn pair(
    reactor: &Reactor,
    log: &Log,
    server: (TlsServerConfig, Script),
    client: (TlsClientConfig, &str, Script),
) -> (Rc<Peers>, Rc<Peers>) {
    // Both sides' ends are awaited, so that neither side's last events are cut off.
    let stop_after_ends = if server.1.stop_after_ends > 0 || client.2.stop_after_ends > 0 {
        2
    } else {
        0
    };
    let with_stop = |script: Script| Script {
        stop_after_ends,
        ..script
    };
    let ends = Rc::new(Cell::new(0));
    let servers = Peers::sharing("server", log, reactor, with_stop(server.1), &ends);
    let port = reactor
        .listen_tls(loopback(), &server.0, servers.clone())
        .expect("listening");
    let clients = Peers::sharing("client", log, reactor, with_stop(client.2), &ends);
    reactor
        .connect_tls(port.host(), client.1, &client.0, clients.clone(), None)
        .expect("connecting");
    // The port lives as long as the reactor runs: stopping it is not under test.
    std::mem::forget(port);
    (servers, clients)
}

/// A client that does nothing; the reactor stops when both ends have ended.
fn ending_client() -> Script {
    both_ends(Script::default())
}

/// The script, stopping the reactor once both sides' connections have ended.
fn both_ends(script: Script) -> Script {
    Script {
        stop_after_ends: 2,
        ..script
    }
}

/// Runs a handshake that fails on the client, and returns its failure.
fn client_failure(identity: &ServerIdentity, verify: Verify, name: &str) -> (TlsFailure, Log) {
    let reactor = Reactor::new().expect("reactor");
    let log = new_log();
    let (_, clients) = pair(
        &reactor,
        &log,
        (
            server_config(&[identity], &[]),
            both_ends(Script::default()),
        ),
        (client_config(verify, &[]), name, ending_client()),
    );
    run(&reactor);
    let reasons = clients.reasons.borrow();
    let failure = match reasons.first() {
        Some(CloseReason::Tls(error)) => {
            assert_eq!(
                error.presented.first(),
                identity.chain.first(),
                "the refused chain is reported"
            );
            error.failure.clone()
        }
        other => panic!(
            "expected a TLS failure, got {other:?}; log {:?}",
            entries(&log)
        ),
    };
    (failure, log)
}

// ---------------------------------------------------------------------------------------
// S-01, S-02, S-03

/// S-01, S-02: `connection_made` comes with the TCP connection, before the handshake;
/// what the server writes then waits for the handshake; `handshake_completed` comes
/// once, before any data.
#[test]
fn s01_s02_connection_made_first_writes_wait_for_the_handshake() {
    let reactor = Reactor::new().expect("reactor");
    let log = new_log();
    let server = Script {
        made: hook(|_, t, _| t.write(b"hello before the handshake")),
        ..Script::default()
    };
    let client = Script {
        data: data_hook(|_, t, peer, _| {
            peer.note(format!(
                "data {}",
                String::from_utf8_lossy(&peer.received.borrow())
            ));
            t.lose_connection();
        }),
        stop_after_ends: 1,
        ..Script::default()
    };
    let (servers, _) = pair(
        &reactor,
        &log,
        (server_config(&[&pki().leaf], &[]), server),
        (trusting_ca(), "localhost", client),
    );
    run(&reactor);
    let log = entries(&log);
    let client: Vec<_> = log.iter().filter(|e| e.starts_with("client")).collect();
    assert_eq!(
        client,
        [
            "client made tls=false",
            "client handshake TLSv1.3",
            "client data hello before the handshake",
            "client lost done",
        ]
    );
    let server: Vec<_> = log.iter().filter(|e| e.starts_with("server")).collect();
    assert_eq!(
        server[..2],
        ["server made tls=false", "server handshake TLSv1.3"]
    );
    assert_eq!(servers.peer().received.borrow().len(), 0);
}

/// S-03: only plaintext arrives, all of it and in order, across many records.
#[test]
fn s03_data_received_gets_the_plaintext_across_records() {
    let reactor = Reactor::new().expect("reactor");
    let log = new_log();
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let expected = payload.len();
    let server = Script {
        data: data_hook(move |_, t, peer, _| {
            if peer.received.borrow().len() == expected {
                t.lose_connection();
            }
        }),
        ..Script::default()
    };
    let to_send = payload.clone();
    let client = Script {
        made: hook(move |_, t, _| t.write(&to_send)),
        stop_after_ends: 1,
        ..Script::default()
    };
    let (servers, _) = pair(
        &reactor,
        &log,
        (server_config(&[&pki().leaf], &[]), server),
        (trusting_ca(), "localhost", client),
    );
    run(&reactor);
    assert!(
        servers.received() == payload,
        "the plaintext arrived unchanged"
    );
    assert!(entries(&log).contains(&"client lost done".to_string()));
}

// ---------------------------------------------------------------------------------------
// S-04: typed handshake failures

#[test]
fn s04_expired_certificate() {
    let (failure, _) = client_failure(
        &pki().expired,
        Verify::Roots(vec![pki().ca.clone()]),
        "localhost",
    );
    assert!(
        matches!(failure, TlsFailure::Expired { not_after: Some(_) }),
        "{failure:?}"
    );
    assert!(failure.is_verification());
    let words = failure.to_string();
    assert!(
        words.contains("expired") && words.contains("2021-01-01"),
        "{words}"
    );
}

#[test]
fn s04_not_yet_valid_certificate() {
    let (failure, _) = client_failure(
        &pki().not_yet_valid,
        Verify::Roots(vec![pki().ca.clone()]),
        "localhost",
    );
    assert!(
        matches!(failure, TlsFailure::NotYetValid { .. }),
        "{failure:?}"
    );
    assert!(failure.to_string().contains("not yet valid"), "{failure}");
}

#[test]
fn s04_unknown_issuer_for_a_self_signed_certificate() {
    let (failure, log) = client_failure(
        &pki().self_signed,
        Verify::Roots(vec![pki().ca.clone()]),
        "localhost",
    );
    assert_eq!(failure, TlsFailure::UnknownIssuer);
    assert!(
        failure.to_string().contains("issuer is unknown"),
        "{failure}"
    );
    // The client's alert reached the server, which names it.
    let log = entries(&log);
    assert!(
        log.iter()
            .any(|e| e.starts_with("server lost tls PeerAlert(")),
        "{log:?}"
    );
    assert!(!log.iter().any(|e| e.contains("handshake")), "{log:?}");
}

#[test]
fn s04_name_mismatch() {
    let (failure, _) = client_failure(
        &pki().other_name,
        Verify::Roots(vec![pki().ca.clone()]),
        "localhost",
    );
    match &failure {
        TlsFailure::NameMismatch {
            expected,
            presented,
        } => {
            assert_eq!(expected, "localhost");
            assert_eq!(presented, &["DnsName(\"other.test\")".to_string()]);
        }
        other => panic!("expected a name mismatch, got {other:?}"),
    }
    assert!(
        failure.to_string().contains("not valid for localhost"),
        "{failure}"
    );
}

#[test]
fn s04_bad_signature_from_an_impostor_ca() {
    let (failure, _) = client_failure(
        &pki().impostor,
        Verify::Roots(vec![pki().ca.clone()]),
        "localhost",
    );
    assert_eq!(failure, TlsFailure::BadSignature);
    assert!(failure.to_string().contains("bad signature"), "{failure}");
}

/// S-04: a protocol failure (no common cipher suite) is not a certificate failure; the
/// server's alert reaches the client, which names it.
#[test]
fn s04_protocol_failure_and_the_peer_alert() {
    let reactor = Reactor::new().expect("reactor");
    let log = new_log();
    let only = |suite| Protocols {
        tls13_only: true,
        cipher_suites: Some(vec![suite]),
        ..Protocols::default()
    };
    let server = TlsServerConfig::new(&ServerOptions {
        identities: vec![pki().leaf.clone()],
        protocols: only(rustls::CipherSuite::TLS13_AES_256_GCM_SHA384),
        resumption: false,
    })
    .expect("server config");
    let client = TlsClientConfig::new(&ClientOptions {
        verify: Verify::Roots(vec![pki().ca.clone()]),
        protocols: only(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256),
        resumption: false,
    })
    .expect("client config");
    let (servers, clients) = pair(
        &reactor,
        &log,
        (server, Script::default()),
        (client, "localhost", ending_client()),
    );
    run(&reactor);
    let client_reason = clients.reasons.borrow()[0].clone();
    let CloseReason::Tls(error) = client_reason else {
        panic!("expected a TLS failure, got {client_reason:?}");
    };
    assert_eq!(
        error.failure,
        TlsFailure::PeerAlert("handshake_failure".to_string())
    );
    assert!(!error.failure.is_verification());
    assert!(
        error
            .failure
            .to_string()
            .contains("the peer sent alert handshake_failure"),
        "{}",
        error.failure
    );
    let log = entries(&log);
    let server_lost = log
        .iter()
        .find(|e| e.starts_with("server lost"))
        .expect("server lost");
    assert!(
        server_lost.starts_with("server lost tls Protocol("),
        "{server_lost}"
    );
    assert!(servers.received().is_empty());
}

// ---------------------------------------------------------------------------------------
// S-05: verification by default, SNI, verification off, pins

/// S-05: the default is the system's trust store, where the test CA is not.
#[test]
fn s05_verification_is_on_by_default() {
    let (failure, _) = client_failure(&pki().leaf, Verify::default(), "localhost");
    assert_eq!(failure, TlsFailure::UnknownIssuer);
}

/// S-05: a DNS name is sent as SNI and verified; an IP literal is verified against the
/// IP SAN and not sent.
#[test]
fn s05_sni_for_names_not_for_ip_literals() {
    for (name, sni) in [("localhost", Some("localhost")), ("127.0.0.1", None)] {
        let reactor = Reactor::new().expect("reactor");
        let log = new_log();
        let seen = Rc::new(RefCell::new(None));
        let seen_by_server = seen.clone();
        let server = Script {
            handshake: hook(move |_, t, _| {
                *seen_by_server.borrow_mut() = Some(t.tls().expect("session").sni.clone());
            }),
            ..Script::default()
        };
        let client = Script {
            handshake: hook(|_, t, _| t.lose_connection()),
            stop_after_ends: 1,
            ..Script::default()
        };
        pair(
            &reactor,
            &log,
            (server_config(&[&pki().leaf], &[]), server),
            (trusting_ca(), name, client),
        );
        run(&reactor);
        assert_eq!(
            *seen.borrow(),
            Some(sni.map(str::to_string)),
            "{name}: {:?}",
            entries(&log)
        );
        assert!(entries(&log).contains(&"client lost done".to_string()));
    }
}

/// S-05: verification off is explicit, and the handshake still shows what the peer
/// presented; a pin accepts exactly the pinned certificate.
#[test]
fn s05_verification_off_and_pinned() {
    let identity = &pki().self_signed;
    let pin = Fingerprint::of(&identity.chain[0]);
    for verify in [Verify::Off, Verify::Pinned(vec![pin])] {
        let reactor = Reactor::new().expect("reactor");
        let log = new_log();
        let chain = Rc::new(RefCell::new(Vec::new()));
        let seen = chain.clone();
        let client = Script {
            handshake: hook(move |_, t, _| {
                *seen.borrow_mut() = t.tls().expect("session").peer_chain.clone();
                t.lose_connection();
            }),
            stop_after_ends: 1,
            ..Script::default()
        };
        pair(
            &reactor,
            &log,
            (server_config(&[identity], &[]), Script::default()),
            (
                client_config(verify.clone(), &[]),
                "wrong.name.test",
                client,
            ),
        );
        run(&reactor);
        assert_eq!(*chain.borrow(), identity.chain, "{verify:?}");
    }
    let other = Fingerprint::of(&pki().leaf.chain[0]);
    let (failure, _) = client_failure(identity, Verify::Pinned(vec![other]), "localhost");
    assert_eq!(failure, TlsFailure::NotPinned);
}

// ---------------------------------------------------------------------------------------
// S-06: what the handshake settled

#[test]
fn s06_version_cipher_alpn_and_the_peer_chain() {
    let reactor = Reactor::new().expect("reactor");
    let log = new_log();
    let sessions = Rc::new(RefCell::new(Vec::new()));
    let (s1, s2) = (sessions.clone(), sessions.clone());
    let server = Script {
        made: hook(|_, t, peer| peer.note(format!("tls before {}", t.tls().is_some()))),
        handshake: hook(move |_, t, _| s1.borrow_mut().push(("server", t.tls().unwrap()))),
        ..Script::default()
    };
    let client = Script {
        handshake: hook(move |_, t, _| {
            s2.borrow_mut().push(("client", t.tls().unwrap()));
            t.lose_connection();
        }),
        stop_after_ends: 1,
        ..Script::default()
    };
    pair(
        &reactor,
        &log,
        (server_config(&[&pki().leaf], &["h2", "http/1.1"]), server),
        (
            client_config(Verify::Roots(vec![pki().ca.clone()]), &["http/1.1"]),
            "localhost",
            client,
        ),
    );
    run(&reactor);
    assert!(entries(&log).contains(&"server tls before false".to_string()));
    let sessions = sessions.borrow();
    assert_eq!(sessions.len(), 2);
    for (side, session) in sessions.iter() {
        assert_eq!(session.version, "TLSv1.3", "{side}");
        assert!(
            session.cipher.starts_with("TLS_AES_") || session.cipher.starts_with("TLS_CHACHA20"),
            "{}",
            session.cipher
        );
        assert_eq!(session.alpn.as_deref(), Some(&b"http/1.1"[..]), "{side}");
        assert!(session.group.is_some(), "{side}");
    }
    let (_, client) = sessions.iter().find(|(side, _)| *side == "client").unwrap();
    let (_, server) = sessions.iter().find(|(side, _)| *side == "server").unwrap();
    assert!(server.peer_chain.is_empty(), "no client certificate");
    assert!(server.peer_certificate().is_none());
    assert_eq!(client.peer_chain, pki().leaf.chain);
    let info = client.peer_certificate().expect("a leaf").expect("parsed");
    assert_eq!(info.subject, "CN=localhost");
    assert_eq!(info.issuer, "CN=twistctl test CA");
    assert_eq!(info.sans(), ["localhost", "127.0.0.1"]);
    assert_eq!(info.not_before.to_string(), "2020-01-01T00:00:00Z");
    assert_eq!(info.not_after.to_string(), "2090-01-01T00:00:00Z");
    assert_eq!(info.sha256, Fingerprint::of(&pki().leaf.chain[0]));
}

/// S-06 against `openssl x509`: the same fingerprint, names and dates.
#[test]
fn s06_certificate_details_match_openssl() {
    let Some(dir) = openssl_dir("s06_certificate_details_match_openssl") else {
        return;
    };
    let der = &pki().leaf.chain[0];
    let pem_path = dir.join("leaf.pem");
    std::fs::write(&pem_path, pem("CERTIFICATE", der)).expect("write");
    let output = std::process::Command::new("openssl")
        .args([
            "x509",
            "-noout",
            "-fingerprint",
            "-sha256",
            "-enddate",
            "-subject",
            "-in",
        ])
        .arg(&pem_path)
        .output()
        .expect("openssl runs");
    let text = String::from_utf8_lossy(&output.stdout);
    let info = CertificateInfo::parse(der).expect("parsed");
    assert!(
        text.contains(&format!("Fingerprint={}", info.sha256)),
        "{text} vs {}",
        info.sha256
    );
    assert!(text.contains("notAfter=Jan  1 00:00:00 2090 GMT"), "{text}");
    assert!(
        text.contains("CN = localhost") || text.contains("CN=localhost"),
        "{text}"
    );
}

// ---------------------------------------------------------------------------------------
// S-07 .. S-10: closing

/// S-07: `lose_connection` sends what is buffered, then close_notify; the peer reads
/// all of it and ends cleanly (S-08 on its side), and so do we.
#[test]
fn s07_s08_lose_connection_flushes_then_close_notify() {
    let reactor = Reactor::new().expect("reactor");
    let log = new_log();
    let big = vec![7u8; 200_000];
    let payload = big.clone();
    let server = Script {
        made: hook(move |_, t, _| {
            t.write(&payload);
            t.lose_connection();
            t.write(b"after the close: dropped");
        }),
        ..Script::default()
    };
    let (_, clients) = pair(
        &reactor,
        &log,
        (server_config(&[&pki().leaf], &[]), server),
        (trusting_ca(), "localhost", ending_client()),
    );
    run(&reactor);
    assert!(
        clients.received() == big,
        "everything before the close arrived"
    );
    let log = entries(&log);
    assert!(log.contains(&"client lost done".to_string()), "{log:?}");
    assert!(log.contains(&"server lost done".to_string()), "{log:?}");
}

/// S-07: closing before the handshake with nothing buffered aborts: no handshake is
/// finished just to close.
#[test]
fn s07_lose_connection_before_the_handshake_aborts() {
    let reactor = Reactor::new().expect("reactor");
    let log = new_log();
    let client = Script {
        made: hook(|_, t, _| t.lose_connection()),
        stop_after_ends: 1,
        ..Script::default()
    };
    pair(
        &reactor,
        &log,
        (server_config(&[&pki().leaf], &[]), Script::default()),
        (trusting_ca(), "localhost", client),
    );
    run(&reactor);
    let log = entries(&log);
    assert!(log.contains(&"client lost aborted".to_string()), "{log:?}");
    assert!(!log.iter().any(|e| e.contains("handshake")), "{log:?}");
}

/// A blocking rustls client on a thread, against a TLS server on the reactor.
fn blocking_client(
    port: u16,
    script: impl FnOnce(&mut rustls::StreamOwned<rustls::ClientConnection, StdStream>) + Send + 'static,
) -> std::thread::JoinHandle<()> {
    let ca = pki().ca.clone();
    std::thread::spawn(move || {
        let connection = common::pki::client_connection(ca, "localhost");
        let socket = StdStream::connect(("127.0.0.1", port)).expect("connect");
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut stream = rustls::StreamOwned::new(connection, socket);
        script(&mut stream);
    })
}

/// S-09: the peer's TCP connection ends without close_notify: ConnectionLost, never
/// Done, so a truncated transfer cannot pass for a complete one.
#[test]
fn s09_truncation_is_connection_lost() {
    let reactor = Reactor::new().expect("reactor");
    let log = new_log();
    let servers = Peers::new(
        "server",
        &log,
        &reactor,
        Script {
            stop_after_ends: 1,
            ..Script::default()
        },
    );
    let port = reactor
        .listen_tls(
            loopback(),
            &server_config(&[&pki().leaf], &[]),
            servers.clone(),
        )
        .expect("listening");
    let peer = blocking_client(port.host().port(), |stream| {
        stream.write_all(b"partial transfer").expect("write");
        stream.flush().expect("flush");
        // The TCP connection ends; no close_notify was sent.
        stream
            .sock
            .shutdown(std::net::Shutdown::Both)
            .expect("shutdown");
    });
    run(&reactor);
    peer.join().expect("peer thread");
    assert_eq!(servers.received(), b"partial transfer");
    let log = entries(&log);
    assert_eq!(
        log.last().map(String::as_str),
        Some("server lost lost"),
        "{log:?}"
    );
}

/// A TLS server following `script` meets a peer that sends some bytes, then ends its
/// TCP stream without close_notify and reads until the server closes (so no reset ends
/// the connection). Returns what the server received and its log.
fn truncated_by_a_peer_that_still_reads(script: Script) -> (Vec<u8>, Vec<String>) {
    let reactor = Reactor::new().expect("reactor");
    let log = new_log();
    let servers = Peers::new("server", &log, &reactor, script);
    let port = reactor
        .listen_tls(
            loopback(),
            &server_config(&[&pki().leaf], &[]),
            servers.clone(),
        )
        .expect("listening");
    let peer = blocking_client(port.host().port(), |stream| {
        stream.write_all(b"partial transfer").expect("write");
        stream.flush().expect("flush");
        stream
            .sock
            .shutdown(std::net::Shutdown::Write)
            .expect("shutdown");
        let mut rest = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stream.sock, &mut rest);
    });
    run(&reactor);
    peer.join().expect("peer thread");
    (servers.received(), entries(&log))
}

/// S-09 with S-14: an inner protocol that asks for half-close still hears a truncation
/// as ConnectionLost (TLS has no half-close, so an end without close_notify is never a
/// "finished sending").
#[test]
fn s09_truncation_is_connection_lost_for_a_half_closing_protocol() {
    let (received, log) = truncated_by_a_peer_that_still_reads(Script {
        stop_after_ends: 1,
        half_close: true,
        ..Script::default()
    });
    assert_eq!(received, b"partial transfer");
    assert!(!log.iter().any(|e| e == "server read closed"), "{log:?}");
    assert_eq!(
        log.last().map(String::as_str),
        Some("server lost lost"),
        "{log:?}"
    );
}

/// A producer that closes its transport when stopped, as a line receiver does.
struct CloseOnStop(RefCell<Option<TransportRef>>);

impl Producer for CloseOnStop {
    fn pause_producing(&self) {}

    fn resume_producing(&self) {}

    fn stop_producing(&self) {
        if let Some(transport) = self.0.borrow_mut().take() {
            transport.lose_connection();
        }
    }
}

/// S-09 when the inner protocol's producer closes the connection as the end of stream
/// stops it: the close_notify the layer then sends does not make the truncation an
/// orderly close of ours.
#[test]
fn s09_truncation_is_connection_lost_when_a_stopped_producer_closes() {
    let (received, log) = truncated_by_a_peer_that_still_reads(Script {
        handshake: hook(|_, t, _| {
            t.register_producer(Rc::new(CloseOnStop(RefCell::new(Some(t.clone())))));
        }),
        stop_after_ends: 1,
        half_close: true,
        ..Script::default()
    });
    assert_eq!(received, b"partial transfer");
    assert_eq!(
        log.last().map(String::as_str),
        Some("server lost lost"),
        "{log:?}"
    );
}

/// S-10: `abort_connection` sends no close_notify: the peer sees the stream end
/// without one.
#[test]
fn s10_abort_sends_no_close_notify() {
    let reactor = Reactor::new().expect("reactor");
    let log = new_log();
    let servers = Peers::new(
        "server",
        &log,
        &reactor,
        Script {
            data: data_hook(|_, t, _, _| {
                t.write(b"never sent");
                t.abort_connection();
            }),
            stop_after_ends: 1,
            ..Script::default()
        },
    );
    let port = reactor
        .listen_tls(
            loopback(),
            &server_config(&[&pki().leaf], &[]),
            servers.clone(),
        )
        .expect("listening");
    let (tx, rx) = std::sync::mpsc::channel();
    let peer = blocking_client(port.host().port(), move |stream| {
        stream.write_all(b"abort me").expect("write");
        stream.flush().expect("flush");
        let mut sink = Vec::new();
        let result = stream.read_to_end(&mut sink);
        tx.send((result.map_err(|e| e.kind()), sink)).expect("send");
    });
    run(&reactor);
    peer.join().expect("peer thread");
    let (result, received) = rx.recv().expect("peer result");
    assert!(received.is_empty(), "nothing was sent: {received:?}");
    // A clean close_notify would make read_to_end return Ok.
    assert!(result.is_err(), "no close_notify arrived: {result:?}");
    assert!(entries(&log).contains(&"server lost aborted".to_string()));
}

// ---------------------------------------------------------------------------------------
// S-11: flow control and bounded memory

/// Writes chunks while not paused; counts pauses.
struct Flood {
    transport: RefCell<Option<TransportRef>>,
    paused: Cell<bool>,
    pauses: Cell<usize>,
    written: Cell<usize>,
    chunk: Vec<u8>,
    limit: usize,
}

impl Flood {
    fn pump(&self) {
        let Some(t) = self.transport.borrow().clone() else {
            return;
        };
        while !self.paused.get() && self.written.get() < self.limit && !t.is_disconnecting() {
            t.write(&self.chunk);
            self.written.set(self.written.get() + self.chunk.len());
        }
    }
}

impl Producer for Flood {
    fn pause_producing(&self) {
        self.paused.set(true);
        self.pauses.set(self.pauses.get() + 1);
    }

    fn resume_producing(&self) {
        self.paused.set(false);
        self.pump();
    }

    fn stop_producing(&self) {
        self.paused.set(true);
    }
}

/// S-11: against a peer that never reads, a producer on the TLS transport is paused
/// (the layer's buffer counts toward the high-water mark), so what is written but
/// unsent stays near the mark plus the kernel's buffers; and without a producer, the
/// connection is cut at the same write buffer limit as plain TCP.
#[test]
fn s11_a_peer_that_does_not_read_cannot_grow_memory() {
    for with_producer in [true, false] {
        let reactor = Reactor::new().expect("reactor");
        let log = new_log();
        let flood = Rc::new(Flood {
            transport: RefCell::new(None),
            paused: Cell::new(false),
            pauses: Cell::new(0),
            written: Cell::new(0),
            chunk: vec![0x5a; 256 * 1024],
            limit: 4 * WRITE_BUFFER_LIMIT,
        });
        let f = flood.clone();
        let servers = Peers::new(
            "server",
            &log,
            &reactor,
            Script {
                handshake: hook(move |reactor, t, _| {
                    *f.transport.borrow_mut() = Some(t.clone());
                    if with_producer {
                        t.register_producer(f.clone());
                        f.pump();
                        // Paused now: let the loop flush what it can, then look.
                        let r = reactor.clone();
                        reactor.call_later(Duration::from_millis(300), move || r.stop());
                    } else {
                        f.pump();
                    }
                }),
                stop_after_ends: 1,
                ..Script::default()
            },
        );
        let port = reactor
            .listen_tls(
                loopback(),
                &server_config(&[&pki().leaf], &[]),
                servers.clone(),
            )
            .expect("listening");
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let peer = blocking_client(port.host().port(), move |stream| {
            // Complete the handshake, then never read again.
            stream.write_all(b"hi").expect("write");
            stream.flush().expect("flush");
            let _ = done_rx.recv_timeout(Duration::from_secs(20));
        });
        run(&reactor);
        if with_producer {
            assert!(flood.pauses.get() >= 1, "the producer was paused");
            assert!(flood.paused.get(), "and is still paused");
            // Kernel buffers on loopback hold a few MB at most; the rest is ours.
            assert!(
                flood.written.get() < 16 * 1024 * 1024,
                "written {} before the pause held",
                flood.written.get()
            );
            assert!(flood.written.get() >= HIGH_WATER_MARK);
        } else {
            let log = entries(&log);
            assert_eq!(
                log.last().map(String::as_str),
                Some("server lost lost"),
                "{log:?}"
            );
            assert!(
                flood.written.get() <= WRITE_BUFFER_LIMIT + 32 * 1024 * 1024,
                "cut at the write buffer limit: written {}",
                flood.written.get()
            );
        }
        drop(done_tx);
        peer.join().expect("peer thread");
    }
}

/// S-11: pausing the TLS transport stops reading the one under it, and what was
/// already decrypted waits; resuming delivers everything, in order.
#[test]
fn s11_pausing_the_tls_transport_pauses_reading() {
    let reactor = Reactor::new().expect("reactor");
    let log = new_log();
    let payload: Vec<u8> = (0..500_000u32).map(|i| (i % 253) as u8).collect();
    let to_send = payload.clone();
    let server = Script {
        handshake: hook(move |_, t, _| {
            t.write(&to_send);
            t.lose_connection();
        }),
        ..Script::default()
    };
    // Bytes received when paused, and when resumed 200 ms later.
    let at_pause = Rc::new(Cell::new(0usize));
    let at_resume = Rc::new(Cell::new(0usize));
    let (paused, resumed) = (at_pause.clone(), at_resume.clone());
    let client = Script {
        data: data_hook(move |reactor, t, peer, _| {
            let received = peer.received.borrow().len();
            if received >= 100_000 && paused.get() == 0 {
                paused.set(received);
                t.pause_producing();
                let (t, seen, resumed) = (t.clone(), peer.received.clone(), resumed.clone());
                reactor.call_later(Duration::from_millis(200), move || {
                    resumed.set(seen.borrow().len());
                    t.resume_producing();
                });
            }
        }),
        stop_after_ends: 1,
        ..Script::default()
    };
    let (_, clients) = pair(
        &reactor,
        &log,
        (server_config(&[&pki().leaf], &[]), server),
        (trusting_ca(), "localhost", client),
    );
    run(&reactor);
    assert!(at_pause.get() >= 100_000);
    assert_eq!(
        at_resume.get(),
        at_pause.get(),
        "nothing arrived while paused"
    );
    assert!(
        clients.received() == payload,
        "everything arrived, in order"
    );
    assert!(entries(&log).contains(&"client lost done".to_string()));
}

// ---------------------------------------------------------------------------------------
// S-12: start_tls

/// S-12: both ends upgrade an established plain connection. Bytes written before
/// `start_tls` go in the clear, bytes written after it (through the same handle) are
/// encrypted; the protocols stay the same objects: no second `connection_made`.
#[test]
fn s12_start_tls_on_an_established_connection() {
    let reactor = Reactor::new().expect("reactor");
    let log = new_log();
    let server_tls = server_config(&[&pki().leaf], &[]);
    let server = Script {
        data: data_hook(move |_, t, peer, _| {
            let received = peer.received.borrow().clone();
            if received == b"STARTTLS\r\n" {
                t.write(b"GO\r\n");
                t.start_tls(StartTls::Server(server_tls.clone()))
                    .expect("start_tls");
                t.write(b"secret from the server");
                peer.received.borrow_mut().clear();
            } else if received == b"secret from the client" {
                assert!(t.tls().is_some());
                t.lose_connection();
            }
        }),
        ..Script::default()
    };
    let client_tls = trusting_ca();
    let client = Script {
        made: hook(|_, t, _| t.write(b"STARTTLS\r\n")),
        data: data_hook(move |_, t, peer, _| {
            if peer.received.borrow().as_slice() == b"GO\r\n" {
                peer.received.borrow_mut().clear();
                t.start_tls(StartTls::Client {
                    config: client_tls.clone(),
                    server_name: "localhost".to_string(),
                })
                .expect("start_tls");
                t.write(b"secret from the client");
                // A second start on the same connection is refused.
                assert!(
                    t.start_tls(StartTls::Server(server_config(&[&pki().leaf], &[])))
                        .is_err()
                );
            }
        }),
        stop_after_ends: 1,
        ..Script::default()
    };
    let servers = Peers::new("server", &log, &reactor, server);
    let port = reactor
        .listen_tcp(loopback(), servers.clone())
        .expect("listening");
    let clients = Peers::new("client", &log, &reactor, client);
    let _connector = reactor.connect_tcp(port.host(), clients.clone(), None);
    run(&reactor);
    assert_eq!(clients.received(), b"secret from the server");
    let log = entries(&log);
    let count = |event: &str| log.iter().filter(|e| e.as_str() == event).count();
    assert_eq!(count("client made tls=false"), 1, "{log:?}");
    assert_eq!(count("server made tls=false"), 1, "{log:?}");
    assert_eq!(count("client handshake TLSv1.3"), 1, "{log:?}");
    assert_eq!(count("server handshake TLSv1.3"), 1, "{log:?}");
    assert!(log.contains(&"client lost done".to_string()), "{log:?}");
}

/// S-12 on the wire: a plain peer sees the clear-text reply, then a TLS server on the
/// same connection, whose bytes written after `start_tls` come encrypted.
#[test]
fn s12_start_tls_bytes_before_are_clear_after_are_encrypted() {
    let reactor = Reactor::new().expect("reactor");
    let log = new_log();
    let server_tls = server_config(&[&pki().leaf], &[]);
    let servers = Peers::new(
        "server",
        &log,
        &reactor,
        Script {
            data: data_hook(move |_, t, peer, _| {
                if peer.received.borrow().as_slice() == b"STARTTLS\r\n" {
                    peer.received.borrow_mut().clear();
                    t.write(b"220 go ahead\r\n");
                    t.start_tls(StartTls::Server(server_tls.clone()))
                        .expect("start_tls");
                    t.write(b"encrypted hello");
                    t.lose_connection();
                }
            }),
            stop_after_ends: 1,
            ..Script::default()
        },
    );
    let port = reactor
        .listen_tcp(loopback(), servers.clone())
        .expect("listening");
    let ca = pki().ca.clone();
    let port_number = port.host().port();
    let peer = std::thread::spawn(move || {
        let mut socket = StdStream::connect(("127.0.0.1", port_number)).expect("connect");
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        socket.write_all(b"STARTTLS\r\n").expect("write");
        let mut clear = [0u8; 14];
        socket.read_exact(&mut clear).expect("the clear reply");
        assert_eq!(&clear, b"220 go ahead\r\n");
        let connection = common::pki::client_connection(ca, "localhost");
        let mut stream = rustls::StreamOwned::new(connection, socket);
        let mut received = Vec::new();
        stream.read_to_end(&mut received).expect("a clean TLS end");
        received
    });
    run(&reactor);
    let received = peer.join().expect("peer thread");
    assert_eq!(received, b"encrypted hello");
    assert!(entries(&log).contains(&"server handshake TLSv1.3".to_string()));
}

// ---------------------------------------------------------------------------------------
// S-13: the server side

/// S-13: the server picks its certificate by SNI, and falls back to the first.
#[test]
fn s13_sni_selects_among_certificates_and_alpn_is_offered() {
    for (name, expected) in [
        ("other.test", &pki().other_name),
        ("localhost", &pki().leaf),
    ] {
        let reactor = Reactor::new().expect("reactor");
        let log = new_log();
        let chain = Rc::new(RefCell::new(Vec::new()));
        let seen = chain.clone();
        let client = Script {
            handshake: hook(move |_, t, _| {
                let session = t.tls().unwrap();
                assert_eq!(session.alpn.as_deref(), Some(&b"h2"[..]));
                *seen.borrow_mut() = session.peer_chain.clone();
                t.lose_connection();
            }),
            stop_after_ends: 1,
            ..Script::default()
        };
        pair(
            &reactor,
            &log,
            (
                server_config(&[&pki().leaf, &pki().other_name], &["h2"]),
                Script::default(),
            ),
            (
                client_config(Verify::Roots(vec![pki().ca.clone()]), &["h2"]),
                name,
                client,
            ),
        );
        run(&reactor);
        assert_eq!(
            *chain.borrow(),
            expected.chain,
            "{name}: {:?}",
            entries(&log)
        );
    }
}

/// S-13: a server needs a certificate (an error at configuration time), reads PEM
/// files, and can generate a self-signed ECDSA P-256 certificate; a key that does not
/// match its certificate is refused up front.
#[test]
fn s13_server_certificates_from_files_generated_or_missing() {
    assert!(matches!(
        TlsServerConfig::new(&ServerOptions::default()),
        Err(TlsConfigError::NoCertificate)
    ));
    let dir = temp_dir("s13");
    let leaf = &pki().leaf;
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, pem("CERTIFICATE", &leaf.chain[0])).expect("write");
    std::fs::write(&key_path, pem("PRIVATE KEY", leaf.key.secret_der())).expect("write");
    let loaded = ServerIdentity::from_pem_files(&cert_path, &key_path).expect("loaded");
    assert_eq!(loaded.chain, leaf.chain);
    let missing = ServerIdentity::from_pem_files(&dir.join("nope.pem"), &key_path).unwrap_err();
    assert!(missing.to_string().contains("nope.pem"), "{missing}");
    let mismatched = ServerIdentity {
        chain: leaf.chain.clone(),
        key: pki().other_name.key.clone_key(),
    };
    assert!(
        TlsServerConfig::new(&ServerOptions {
            identities: vec![mismatched],
            ..ServerOptions::default()
        })
        .is_err()
    );

    let (generated, pem_files) =
        ServerIdentity::generate(&["localhost".to_string()]).expect("generated");
    let info = CertificateInfo::parse(&generated.chain[0]).expect("parsed");
    assert_eq!(info.dns_names, ["localhost"]);
    assert!(pem_files.key_pem.contains("BEGIN PRIVATE KEY"));
    let again = ServerIdentity::from_pem(&pem_files.cert_pem, &pem_files.key_pem).expect("pem");
    assert_eq!(again.fingerprint(), generated.fingerprint());
    // It serves, and a client pinning its fingerprint accepts it.
    let reactor = Reactor::new().expect("reactor");
    let log = new_log();
    let client = Script {
        handshake: hook(|_, t, _| t.lose_connection()),
        stop_after_ends: 1,
        ..Script::default()
    };
    pair(
        &reactor,
        &log,
        (server_config(&[&generated], &[]), Script::default()),
        (
            client_config(Verify::Pinned(vec![generated.fingerprint()]), &[]),
            "localhost",
            client,
        ),
    );
    run(&reactor);
    assert!(entries(&log).contains(&"client handshake TLSv1.3".to_string()));
    let _ = std::fs::remove_dir_all(dir);
}

// ---------------------------------------------------------------------------------------
// S-14: no half-close over TLS

/// S-14: a protocol that wants half-close still gets no `read_connection_lost` over
/// TLS: the peer's close_notify (sent by `lose_write_connection`) ends the connection.
#[test]
fn s14_no_half_close_over_tls() {
    let reactor = Reactor::new().expect("reactor");
    let log = new_log();
    let server = Script {
        half_close: true,
        stop_after_ends: 1,
        ..Script::default()
    };
    let client = Script {
        handshake: hook(|_, t, _| {
            t.write(b"last words");
            t.lose_write_connection();
        }),
        ..Script::default()
    };
    let (servers, _) = pair(
        &reactor,
        &log,
        (server_config(&[&pki().leaf], &[]), server),
        (trusting_ca(), "localhost", client),
    );
    run(&reactor);
    assert_eq!(servers.received(), b"last words");
    let log = entries(&log);
    assert!(!log.iter().any(|e| e.contains("read closed")), "{log:?}");
    assert!(log.contains(&"server lost done".to_string()), "{log:?}");
}

// ---------------------------------------------------------------------------------------
// Interoperability with the openssl command

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("twistctl-tls-{name}-{}", std::process::id()));
    // What an earlier run with the same process id left goes first.
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn pem(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut encoded = String::new();
    for chunk in der.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                encoded.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                encoded.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in encoded.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("ascii"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A temporary directory when the `openssl` command is installed; `None` (with the
/// reason printed) when it is not.
fn openssl_dir(test: &str) -> Option<std::path::PathBuf> {
    let found = std::process::Command::new("openssl")
        .arg("version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found {
        eprintln!("{test}: skipped: the openssl command is not installed");
        return None;
    }
    Some(temp_dir(test))
}

/// Kills a child process when dropped, so a failed test leaves none behind.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Our TLS client against `openssl s_server`: verified against the CA, data both ways.
#[test]
fn s_interop_client_against_openssl_s_server() {
    let Some(dir) = openssl_dir("s_interop_client_against_openssl_s_server") else {
        return;
    };
    let leaf = &pki().leaf;
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, pem("CERTIFICATE", &leaf.chain[0])).expect("write");
    std::fs::write(&key, pem("PRIVATE KEY", leaf.key.secret_der())).expect("write");
    // s_server cannot report a port it picked: take a free one from the kernel.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mut server = Child(
        std::process::Command::new("openssl")
            .args(["s_server", "-quiet", "-naccept", "2", "-accept"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("-cert")
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("openssl s_server"),
    );
    // Wait until it accepts connections (it prints nothing with -quiet): that probe is
    // the first of its two connections, ours the second.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while StdStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "s_server did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let reactor = Reactor::new().expect("reactor");
    let log = new_log();
    let client = Script {
        handshake: hook(|_, t, _| t.write(b"hello openssl\n")),
        data: data_hook(|_, t, peer, _| {
            if peer.received.borrow().ends_with(b"hello twistctl\n") {
                t.lose_connection();
            }
        }),
        stop_after_ends: 1,
        ..Script::default()
    };
    let clients = Peers::new("client", &log, &reactor, client);
    let _connector = reactor
        .connect_tls(
            SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            "localhost",
            &trusting_ca(),
            clients.clone(),
            None,
        )
        .expect("connecting");
    // s_server prints what the client sent, and sends its stdin: answer our line.
    let mut stdout = server.0.stdout.take().expect("stdout");
    let mut stdin = server.0.stdin.take().expect("stdin");
    let relay = std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut byte = [0u8; 1];
        while !got.ends_with(b"\n") && stdout.read(&mut byte).map(|n| n == 1).unwrap_or(false) {
            got.push(byte[0]);
        }
        let _ = stdin.write_all(b"hello twistctl\n");
        let _ = stdin.flush();
        (got, stdin)
    });
    run(&reactor);
    let (got, _stdin) = relay.join().expect("relay");
    assert_eq!(got, b"hello openssl\n");
    assert_eq!(clients.received(), b"hello twistctl\n");
    assert!(
        entries(&log).contains(&"client lost done".to_string()),
        "{:?}",
        entries(&log)
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// Our TLS server against `openssl s_client`, which verifies it against the CA.
#[test]
fn s_interop_server_against_openssl_s_client() {
    let Some(dir) = openssl_dir("s_interop_server_against_openssl_s_client") else {
        return;
    };
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, pem("CERTIFICATE", &pki().ca)).expect("write");
    let reactor = Reactor::new().expect("reactor");
    let log = new_log();
    let servers = Peers::new(
        "server",
        &log,
        &reactor,
        Script {
            data: data_hook(|_, t, peer, _| {
                if peer.received.borrow().ends_with(b"\n") {
                    let line = peer.received.borrow().clone();
                    t.write(b"echo: ");
                    t.write(&line);
                    t.lose_connection();
                }
            }),
            stop_after_ends: 1,
            ..Script::default()
        },
    );
    let port = reactor
        .listen_tls(
            loopback(),
            &server_config(&[&pki().leaf], &[]),
            servers.clone(),
        )
        .expect("listening");
    let port_number = port.host().port();
    let client = std::thread::spawn(move || {
        let mut child = Child(
            std::process::Command::new("openssl")
                .args([
                    "s_client",
                    "-quiet",
                    "-verify_return_error",
                    "-servername",
                    "localhost",
                ])
                .arg("-connect")
                .arg(format!("127.0.0.1:{port_number}"))
                .arg("-CAfile")
                .arg(&ca)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("openssl s_client"),
        );
        let mut stdin = child.0.stdin.take().expect("stdin");
        stdin.write_all(b"ping\n").expect("write");
        let mut out = Vec::new();
        let _ = child.0.stdout.take().expect("stdout").read_to_end(&mut out);
        drop(stdin);
        out
    });
    run(&reactor);
    let out = client.join().expect("s_client thread");
    assert_eq!(String::from_utf8_lossy(&out), "echo: ping\n");
    assert!(entries(&log).contains(&"server handshake TLSv1.3".to_string()));
    let _ = std::fs::remove_dir_all(dir);
}

// ---------------------------------------------------------------------------------------
// E-09: ssl: and tls: descriptions run on the layer

/// Writes the test CA, the leaf and its key as PEM files; returns their paths.
fn pem_files(
    dir: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let leaf = &pki().leaf;
    let paths = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&paths.0, pem("CERTIFICATE", &pki().ca)).expect("write");
    std::fs::write(&paths.1, pem("CERTIFICATE", &leaf.chain[0])).expect("write");
    std::fs::write(&paths.2, pem("PRIVATE KEY", leaf.key.secret_der())).expect("write");
    paths
}

/// E-09 over TLS: `ssl:PORT:privateKey=..:certKey=..` listens with the layer, and
/// `tls:HOST:PORT:trustRoots=..` connects through it; the endpoint fires once the
/// handshake verified the server, and fails with the TLS reason when it cannot.
#[test]
fn e09_ssl_and_tls_descriptions_listen_and_connect() {
    use twistctl::reactor::endpoints::{
        EndpointError, EndpointErrorKind, Listening, parse_client, parse_server,
    };
    let dir = temp_dir("e09");
    let (ca, cert, key) = pem_files(&dir);
    let missing = parse_server(&format!(
        "ssl:0:interface=127.0.0.1:privateKey={}:certKey={}",
        dir.join("missing.key").display(),
        cert.display()
    ))
    .expect("parsed");
    let reactor = Reactor::new().expect("reactor");
    let log = new_log();
    let servers = Peers::new("server", &log, &reactor, Script::default());
    let Err(error) = missing.listen(&reactor, servers.clone()) else {
        panic!("listening without a key");
    };
    assert!(error.to_string().contains("missing.key"), "{error}");

    let description = parse_server(&format!(
        "ssl:0:interface=127.0.0.1:privateKey={}:certKey={}",
        key.display(),
        cert.display()
    ))
    .expect("parsed");
    let Listening::Tcp(port) = description
        .listen(&reactor, servers.clone())
        .expect("listening")
    else {
        panic!("a TCP port");
    };
    let port = port.host().port();
    // Trusted by its CA file, then by the directory holding it; not by the system's roots.
    let roots_dir = dir.join("roots");
    std::fs::create_dir_all(&roots_dir).expect("dir");
    std::fs::copy(&ca, roots_dir.join("ca.pem")).expect("copy");
    let outcomes = Rc::new(RefCell::new(Vec::new()));
    let trusted = [
        format!("tls:localhost:{port}:trustRoots={}", ca.display()),
        format!("tls:localhost:{port}:trustRoots={}", roots_dir.display()),
        format!("tls:localhost:{port}"),
        format!(
            "tls:localhost:{port}:trustRoots={}",
            dir.join("nowhere.pem").display()
        ),
    ];
    let left = Rc::new(Cell::new(trusted.len()));
    for text in &trusted {
        let clients = Peers::new("client", &log, &reactor, Script::default());
        let outcomes = outcomes.clone();
        let (left, r) = (left.clone(), reactor.clone());
        let deferred = parse_client(text)
            .expect("parsed")
            .connect(&reactor, clients);
        let _ended = deferred.then(move |outcome| {
            outcomes.borrow_mut().push(match &outcome {
                Ok(connection) => {
                    let session = connection.transport.tls().expect("handshake done");
                    connection.transport.lose_connection();
                    format!("connected {}", session.version)
                }
                Err(failure) => match failure.downcast_ref::<EndpointError>() {
                    Some(EndpointError {
                        kind: EndpointErrorKind::Check { failure, .. },
                        ..
                    }) => match failure.downcast_ref::<CloseReason>() {
                        Some(CloseReason::Tls(error)) => format!("failed {:?}", error.failure),
                        other => format!("check failed otherwise: {other:?}"),
                    },
                    _ => format!("failed: {failure}"),
                },
            });
            left.set(left.get() - 1);
            if left.get() == 0 {
                let _ = r.stop();
            }
            twistctl::reactor::Step::Value(())
        });
    }
    run(&reactor);
    let mut outcomes = outcomes.borrow().clone();
    outcomes.sort();
    assert_eq!(
        outcomes[..3],
        [
            "connected TLSv1.3",
            "connected TLSv1.3",
            "failed UnknownIssuer"
        ]
    );
    assert!(
        outcomes[3].starts_with("failed: cannot read ") && outcomes[3].contains("nowhere.pem"),
        "{outcomes:?}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// The layer runs over any stream transport: a TLS chat over a UNIX socket, with the
/// same factories that `listen_tls` and `connect_tls` use over TCP.
#[test]
fn s01_s03_tls_over_a_unix_socket() {
    use twistctl::reactor::UnixAddress;
    use twistctl::reactor::tls::{client_factory, server_factory};
    let dir = temp_dir("unix");
    let path = UnixAddress::Path(dir.join("tls.sock"));
    let reactor = Reactor::new().expect("reactor");
    let log = new_log();
    let ends = Rc::new(Cell::new(0));
    let server = Script {
        data: data_hook(|_, t, peer, _| {
            if peer.received.borrow().ends_with(b"\n") {
                t.write(b"pong\n");
                t.lose_connection();
            }
        }),
        stop_after_ends: 2,
        ..Script::default()
    };
    let servers = Peers::sharing("server", &log, &reactor, server, &ends);
    let _port = reactor
        .listen_unix(
            path.clone(),
            server_factory(
                &reactor,
                &server_config(&[&pki().leaf], &[]),
                servers.clone(),
            ),
        )
        .expect("listening");
    let client = Script {
        made: hook(|_, t, _| t.write(b"ping\n")),
        stop_after_ends: 2,
        ..Script::default()
    };
    let clients = Peers::sharing("client", &log, &reactor, client, &ends);
    let factory =
        client_factory(&reactor, &trusting_ca(), "localhost", clients.clone()).expect("factory");
    let _connector = reactor.connect_unix(path, factory, None);
    run(&reactor);
    assert_eq!(servers.received(), b"ping\n");
    assert_eq!(clients.received(), b"pong\n");
    let log = entries(&log);
    assert!(
        log.contains(&"client handshake TLSv1.3".to_string()),
        "{log:?}"
    );
    assert!(log.contains(&"client lost done".to_string()), "{log:?}");
    assert!(log.contains(&"server lost done".to_string()), "{log:?}");
    let _ = std::fs::remove_dir_all(dir);
}
