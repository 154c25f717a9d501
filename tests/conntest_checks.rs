//! conntest's checks on the connection (issue 14): `--tls` and the certificate,
//! `--send`/`--expect`, UNIX targets, `--closed` and `--nagios`, against servers on
//! loopback (or UNIX sockets in a temp dir) that the tests start, with
//! certificates the tests generate (a CA, a leaf for localhost/127.0.0.1, an expired
//! leaf, a leaf for another name, a self-signed leaf, a leaf expiring in 5 days).
//! Every twistctl run is bounded by a 10 s limit.

#![allow(missing_docs)]

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use assert_cmd::Command;
use common::pki::{Signed, TestCa};
use twistctl::reactor::tls::{Protocols, ServerIdentity, ServerOptions, TlsServerConfig};
use twistctl::reactor::{Factory, Protocol, ProtocolResult, Reactor, TransportRef};

use common::TWISTCTL;

// ---------------------------------------------------------------------------------------
// Certificates

struct Pki {
    dir: PathBuf,
    /// The CA itself, served as if it were a server's certificate.
    ca: ServerIdentity,
    leaf: ServerIdentity,
    expired: ServerIdentity,
    other_name: ServerIdentity,
    self_signed: ServerIdentity,
    expiring: ServerIdentity,
    /// The leaf's PEM, for openssl.
    leaf_pem: String,
}

/// A leaf for `names`, valid from midnight of today plus `from_days` to midnight of
/// today plus `to_days`.
fn leaf_params(names: &[&str], from_days: i64, to_days: i64) -> rcgen::CertificateParams {
    common::pki::leaf_params(names, midnight(from_days), midnight(to_days))
}

/// Midnight (UTC) of today plus `days`: a certificate ending at midnight of today+62
/// has 61 whole days left whatever the time of day.
fn midnight(days: i64) -> (i32, u8, u8) {
    let today = jiff::Timestamp::now().as_second().div_euclid(86_400);
    let at = jiff::Timestamp::from_second((today + days) * 86_400).unwrap();
    let text = at.strftime("%Y %m %d").to_string();
    let mut parts = text.split(' ').map(|p| p.parse::<i32>().unwrap());
    let (y, m, d) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    (y, m as u8, d as u8)
}

fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("conntest-checks-{}", std::process::id()));
        // A process id comes round again: what an earlier run of the same id left (its
        // socket files above all, which a bind refuses to replace) goes first.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ca = TestCa::new("conntest test CA");
        ca.write(&dir);
        let signed = |params| {
            let leaf = ca.sign(params);
            (leaf.identity(), leaf.cert.pem())
        };
        let local = ["localhost", "127.0.0.1"];
        let (leaf, leaf_pem) = signed(leaf_params(&local, -1, 62));
        let self_signed = Signed::self_signed(leaf_params(&local, -1, 62));
        Pki {
            ca: ca.ca.identity(),
            leaf,
            leaf_pem,
            expired: signed(leaf_params(&local, -60, -31)).0,
            other_name: signed(leaf_params(&["other.test"], -1, 62)).0,
            self_signed: self_signed.identity(),
            expiring: signed(leaf_params(&local, -1, 6)).0,
            dir,
        }
    })
}

fn ca_file() -> String {
    pki().dir.join("ca.pem").display().to_string()
}

// ---------------------------------------------------------------------------------------
// Servers, each on its own reactor thread

/// What a test server says once the connection is ready (after the handshake with TLS).
#[derive(Clone)]
struct Script {
    /// Sent at once.
    banner: Vec<u8>,
    /// Sent for every chunk received (an echo when empty and `echo` is set).
    echo: bool,
}

struct Talker {
    script: Script,
    tls: bool,
}

impl Protocol for Talker {
    fn connection_made(&mut self, transport: &TransportRef) -> ProtocolResult {
        if !self.tls && !self.script.banner.is_empty() {
            transport.write(&self.script.banner);
        }
        Ok(())
    }

    fn handshake_completed(&mut self, transport: &TransportRef) -> ProtocolResult {
        if !self.script.banner.is_empty() {
            transport.write(&self.script.banner);
        }
        Ok(())
    }

    fn data_received(&mut self, transport: &TransportRef, data: &[u8]) -> ProtocolResult {
        if self.script.echo {
            transport.write(data);
        }
        Ok(())
    }
}

struct TalkerFactory {
    script: Script,
    tls: bool,
}

impl Factory for TalkerFactory {
    fn build_protocol(&self, _addr: twistctl::reactor::Address) -> Option<Box<dyn Protocol>> {
        Some(Box::new(Talker {
            script: self.script.clone(),
            tls: self.tls,
        }))
    }
}

/// A server on 127.0.0.1 (TLS with `identity` when given); returns its port. It runs
/// until the test process ends.
fn server(identity: Option<&ServerIdentity>, alpn: &[&str], script: Script) -> u16 {
    let config = identity.map(|identity| {
        TlsServerConfig::new(&ServerOptions {
            identities: vec![identity.clone()],
            protocols: Protocols {
                alpn: alpn.iter().map(|p| p.as_bytes().to_vec()).collect(),
                ..Protocols::default()
            },
            resumption: false,
        })
        .expect("server config")
    });
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let reactor = Reactor::new().unwrap();
        let factory = Rc::new(TalkerFactory {
            script,
            tls: config.is_some(),
        });
        let addr = "127.0.0.1:0".parse().unwrap();
        let port = match &config {
            Some(config) => reactor.listen_tls(addr, config, factory),
            None => reactor.listen_tcp(addr, factory),
        }
        .expect("listen");
        sender.send(port.host().port()).unwrap();
        let _ = reactor.run();
    });
    receiver.recv().unwrap()
}

fn tls_server(identity: &ServerIdentity) -> u16 {
    server(
        Some(identity),
        &["h2", "http/1.1"],
        Script {
            banner: Vec::new(),
            echo: false,
        },
    )
}

fn banner_server(banner: &[u8], echo: bool) -> u16 {
    server(
        None,
        &[],
        Script {
            banner: banner.to_vec(),
            echo,
        },
    )
}

// ---------------------------------------------------------------------------------------
// Running twistctl

struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(args: &[&str]) -> Output {
    let output = Command::new(TWISTCTL)
        .arg("conntest")
        .args(args)
        .timeout(Duration::from_secs(10))
        .output()
        .expect("twistctl runs");
    Output {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn json(args: &[&str]) -> (i32, serde_json::Value) {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = run(&all);
    let value = serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {:?} {:?}", out.stdout, out.stderr));
    (out.code, value)
}

// ---------------------------------------------------------------------------------------
// --tls

#[test]
fn tls_with_a_trusted_certificate_passes_and_reports_the_session_and_certificate() {
    let port = tls_server(&pki().leaf).to_string();
    let ca = ca_file();
    let out = run(&["--tls", "--ca", &ca, "localhost", &port]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let line = out.stdout.trim();
    assert!(
        line.starts_with(&format!("Connected to port {port} (TLS 1.3, TLS_")),
        "{line}"
    );
    assert!(
        line.contains("; certificate for localhost, expires "),
        "{line}"
    );
    assert!(line.ends_with("61 days left)"), "{line}");

    let (code, v) = json(&["--tls", "--ca", &ca, "127.0.0.1", &port]);
    assert_eq!(code, 0);
    assert_eq!(v["status"], "open");
    assert_eq!(v["tls_version"], "TLSv1.3");
    assert!(v["cipher"].as_str().unwrap().starts_with("TLS_"));
    assert_eq!(v["cert_subject"], "CN=localhost");
    assert_eq!(v["cert_issuer"], "CN=conntest test CA");
    assert_eq!(
        v["cert_sans"],
        serde_json::json!(["localhost", "127.0.0.1"])
    );
    assert_eq!(v["cert_days_left"], 61);
    let sha = v["cert_sha256"].as_str().unwrap();
    assert_eq!(sha.len(), 95);
    assert!(
        v.get("alpn").is_none(),
        "no ALPN offered, none reported: {v}"
    );
    assert!(v["cert_not_after"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn alpn_offers_protocols_and_reports_the_chosen_one() {
    let port = tls_server(&pki().leaf).to_string();
    let (code, v) = json(&[
        "--tls",
        "--ca",
        &ca_file(),
        "--alpn",
        "h2,http/1.1",
        "localhost",
        &port,
    ]);
    assert_eq!(code, 0);
    assert_eq!(v["alpn"], "h2");
    let out = run(&[
        "--tls",
        "--ca",
        &ca_file(),
        "--alpn",
        "http/1.1",
        "localhost",
        &port,
    ]);
    assert!(
        out.stdout.contains("TLS_AES") && out.stdout.contains(", http/1.1; certificate"),
        "{}",
        out.stdout
    );
}

#[test]
fn each_certificate_problem_is_cert_invalid_with_exit_4_and_says_which() {
    let ca = ca_file();
    let cases: [(&ServerIdentity, &str, &str); 3] = [
        (&pki().expired, "localhost", "certificate has expired ("),
        (&pki().other_name, "localhost", "certificate name mismatch"),
        (
            &pki().self_signed,
            "localhost",
            "certificate issuer is unknown",
        ),
    ];
    for (identity, host, words) in cases {
        let port = tls_server(identity).to_string();
        let out = run(&["--tls", "--ca", &ca, host, &port]);
        assert_eq!(out.code, 4, "{words}: {}", out.stderr);
        assert!(
            out.stderr
                .contains(&format!("Error connecting to port {port}: {words}")),
            "{}",
            out.stderr
        );
        let (code, v) = json(&["--tls", "--ca", &ca, host, &port]);
        assert_eq!(code, 4);
        assert_eq!(v["status"], "cert-invalid", "{v}");
        assert!(v["error"].as_str().unwrap().contains(words), "{v}");
        // What the server presented is reported even though it was refused.
        assert!(v["cert_sha256"].is_string(), "{v}");
    }
    // The expired one says when and how long ago.
    let port = tls_server(&pki().expired).to_string();
    let out = run(&["--tls", "--ca", &ca, "localhost", &port]);
    assert!(out.stderr.contains("31 days ago)"), "{}", out.stderr);
}

#[test]
fn the_system_trust_store_does_not_know_the_test_ca() {
    let port = tls_server(&pki().leaf).to_string();
    let (code, v) = json(&["--tls", "localhost", &port]);
    assert_eq!(code, 4);
    assert_eq!(v["status"], "cert-invalid");
}

#[test]
fn sni_names_the_certificate_to_verify() {
    let port = tls_server(&pki().other_name).to_string();
    let ca = ca_file();
    let out = run(&[
        "--tls",
        "--ca",
        &ca,
        "--sni",
        "other.test",
        "127.0.0.1",
        &port,
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains("certificate for other.test"),
        "{}",
        out.stdout
    );
}

#[test]
fn insecure_passes_any_certificate_and_still_reports_it() {
    for identity in [&pki().expired, &pki().self_signed, &pki().other_name] {
        let port = tls_server(identity).to_string();
        let (code, v) = json(&["--tls", "--insecure", "localhost", &port]);
        assert_eq!(code, 0, "{v}");
        assert_eq!(v["status"], "open");
        assert!(
            v["cert_subject"].is_string() && v["cert_sha256"].is_string(),
            "{v}"
        );
    }
    // --cert-days still applies.
    let port = tls_server(&pki().expired).to_string();
    let (code, v) = json(&[
        "--tls",
        "--insecure",
        "--cert-days",
        "1",
        "localhost",
        &port,
    ]);
    assert_eq!(code, 4);
    assert_eq!(v["status"], "cert-expiring");
}

#[test]
fn cert_days_fails_a_certificate_expiring_sooner_with_cert_expiring() {
    let port = tls_server(&pki().expiring).to_string();
    let ca = ca_file();
    let out = run(&["--tls", "--ca", &ca, "localhost", &port]);
    assert_eq!(out.code, 0, "only expired fails by default: {}", out.stderr);
    assert!(out.stdout.contains("5 days left"), "{}", out.stdout);
    let (code, v) = json(&["--tls", "--ca", &ca, "--cert-days", "7", "localhost", &port]);
    assert_eq!(code, 4);
    assert_eq!(v["status"], "cert-expiring");
    assert_eq!(v["cert_days_left"], 5);
    assert!(
        v["error"].as_str().unwrap().contains("expires in 5 days"),
        "{v}"
    );
    let (code, _) = json(&["--tls", "--ca", &ca, "--cert-days", "5", "localhost", &port]);
    assert_eq!(code, 0);
}

#[test]
fn a_ca_certificate_served_as_the_leaf_is_cert_invalid_in_words() {
    let port = tls_server(&pki().ca).to_string();
    let (code, v) = json(&["--tls", "--ca", &ca_file(), "127.0.0.1", &port]);
    assert_eq!(code, 4, "{v}");
    assert_eq!(v["status"], "cert-invalid");
    assert_eq!(
        v["error"],
        "certificate is a CA certificate, not a server certificate"
    );
    assert_eq!(v["cert_subject"], "CN=conntest test CA");
}

#[test]
fn a_plain_server_is_a_tls_error_with_exit_4() {
    let port = banner_server(b"HTTP/1.0 400 Bad Request\r\n\r\n", false).to_string();
    let (code, v) = json(&["--tls", "--insecure", "127.0.0.1", &port]);
    assert_eq!(code, 4, "{v}");
    assert_eq!(v["status"], "tls-error");
}

#[test]
fn a_bad_ca_file_is_a_usage_error_naming_it() {
    let out = run(&["--tls", "--ca", "/nonexistent/ca.pem", "127.0.0.1", "1"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("/nonexistent/ca.pem"), "{}", out.stderr);
}

#[test]
fn the_fingerprint_and_dates_agree_with_openssl() {
    let Ok(status) = std::process::Command::new("openssl")
        .arg("version")
        .output()
    else {
        eprintln!("skipped: openssl is not installed");
        return;
    };
    assert!(status.status.success());
    let pem = pki().dir.join("leaf.pem");
    std::fs::write(&pem, &pki().leaf_pem).unwrap();
    let openssl = std::process::Command::new("openssl")
        .args([
            "x509",
            "-noout",
            "-fingerprint",
            "-sha256",
            "-startdate",
            "-enddate",
        ])
        .args(["-dateopt", "iso_8601", "-in"])
        .arg(&pem)
        .output()
        .unwrap();
    let text = String::from_utf8(openssl.stdout).unwrap();
    let port = tls_server(&pki().leaf).to_string();
    let (_, v) = json(&["--tls", "--ca", &ca_file(), "localhost", &port]);
    let fingerprint = v["cert_sha256"].as_str().unwrap();
    assert!(
        text.contains(&format!("Fingerprint={fingerprint}")),
        "{text} vs {fingerprint}"
    );
    // notAfter=2027-02-01 00:00:00Z against 2027-02-01T00:00:00Z.
    for (field, ours) in [
        ("notBefore=", "cert_not_before"),
        ("notAfter=", "cert_not_after"),
    ] {
        let theirs = text.lines().find_map(|l| l.strip_prefix(field)).unwrap();
        assert_eq!(
            theirs.replace(' ', "T"),
            v[ours].as_str().unwrap(),
            "{text}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// --send / --expect

#[test]
fn expect_matches_a_banner_and_reports_it() {
    let port = banner_server(b"SSH-2.0-OpenSSH_9.6\r\n", false).to_string();
    let out = run(&["--expect", "^SSH-2\\.0", "127.0.0.1", &port]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.stdout.trim(),
        format!("Connected to port {port} (\"SSH-2.0-OpenSSH_9.6\\x0d\\x0a\")")
    );
    let (_, v) = json(&["--expect", "^SSH-2\\.0", "127.0.0.1", &port]);
    assert_eq!(v["banner"], "SSH-2.0-OpenSSH_9.6\\x0d\\x0a");
}

#[test]
fn a_banner_that_does_not_match_is_a_mismatch_with_exit_4() {
    let port = banner_server(b"220 mail ESMTP\r\n", false).to_string();
    let started = Instant::now();
    let out = run(&[
        "--expect",
        "^SSH-2\\.0",
        "--timeout",
        "1s",
        "127.0.0.1",
        &port,
    ]);
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!("Error connecting to port {port}: expected /^SSH-2\\.0/, got \"220 mail ESMTP\\x0d\\x0a\"")),
        "{}",
        out.stderr
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    let (_, v) = json(&["--expect", "^SSH", "--timeout", "1s", "127.0.0.1", &port]);
    assert_eq!(v["status"], "mismatch");
    assert_eq!(v["banner"], "220 mail ESMTP\\x0d\\x0a");
}

#[test]
fn send_then_expect_the_reply_and_escapes_in_the_banner() {
    let port = banner_server(b"", true).to_string();
    let (code, v) = json(&[
        "--send",
        "PING\\r\\n",
        "--expect",
        "^PING\\r\\n$",
        "127.0.0.1",
        &port,
    ]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["banner"], "PING\\x0d\\x0a");
    // Terminal escapes from the peer never come back raw.
    let (code, v) = json(&[
        "--send",
        "\\x1b[2J",
        "--expect",
        "nomatch",
        "--timeout",
        "500ms",
        "127.0.0.1",
        &port,
    ]);
    assert_eq!(code, 4);
    assert_eq!(v["banner"], "\\x1b[2J");
}

#[test]
fn a_server_that_sends_more_than_max_bytes_is_a_mismatch_at_once() {
    let big = vec![b'x'; 100_000];
    let port = banner_server(&big, false).to_string();
    let started = Instant::now();
    let (code, v) = json(&[
        "--expect",
        "never",
        "--max-bytes",
        "1000",
        "--timeout",
        "5s",
        "127.0.0.1",
        &port,
    ]);
    assert_eq!(code, 4);
    assert_eq!(v["status"], "mismatch");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "at once, not at the timeout"
    );
    // Cut to 200 characters.
    assert!(v["banner"].as_str().unwrap().len() <= 203, "{v}");
}

#[test]
fn a_server_that_never_answers_is_a_timeout_with_124() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let started = Instant::now();
    let out = run(&["--expect", "^SSH", "--timeout", "500ms", "127.0.0.1", &port]);
    assert_eq!(out.code, 124, "{}", out.stderr);
    assert!(started.elapsed() < Duration::from_secs(3));
    drop(listener);
}

#[test]
fn expect_works_over_tls() {
    let port = server(
        Some(&pki().leaf),
        &[],
        Script {
            banner: b"* OK IMAP ready\r\n".to_vec(),
            echo: false,
        },
    )
    .to_string();
    let (code, v) = json(&[
        "--tls",
        "--ca",
        &ca_file(),
        "--expect",
        "^\\* OK",
        "localhost",
        &port,
    ]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["tls_version"], "TLSv1.3");
    assert_eq!(v["banner"], "* OK IMAP ready\\x0d\\x0a");
}

#[test]
fn quit_is_sent_before_closing() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream.write_all(b"220 ready\r\n").unwrap();
        let mut got = Vec::new();
        let _ = stream.read_to_end(&mut got);
        got
    });
    let out = run(&[
        "--expect",
        "^220",
        "--quit",
        "QUIT\\r\\n",
        "127.0.0.1",
        &port,
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(server.join().unwrap(), b"QUIT\r\n");
}

#[test]
fn bad_check_options_are_usage_errors_naming_the_value() {
    for (args, words) in [
        (
            vec!["--expect", "(", "127.0.0.1", "1"],
            "invalid value '(' for '--expect <REGEX>': bad regular expression: ",
        ),
        (
            vec!["--send", "\\q", "127.0.0.1", "1"],
            "invalid value '\\q' for '--send <STR>': invalid value '\\q': unknown escape '\\q'",
        ),
        (
            vec!["--quit", "\\x4", "127.0.0.1", "1"],
            "invalid value '\\x4' for '--quit <STR>': invalid value '\\x4': '\\x4' is not \\x \
             followed by two hex digits",
        ),
        (vec!["--sni", "x", "127.0.0.1", "1"], "--sni"),
        (vec!["--starttls", "gopher", "127.0.0.1", "1"], "gopher"),
        (
            vec!["--tls", "--cert-days", "soon", "127.0.0.1", "1"],
            "soon",
        ),
    ] {
        let out = run(&args);
        assert_eq!(out.code, 2, "{args:?}");
        assert!(out.stderr.contains(words), "{args:?}: {}", out.stderr);
    }
}

// ---------------------------------------------------------------------------------------
// unix: targets

fn socket_dir() -> PathBuf {
    let dir = pki()
        .dir
        .join(format!("sockets-{:?}", std::thread::current().id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn unix_targets_report_open_missing_and_refused_like_tcp() {
    use std::os::unix::net::UnixListener;
    let dir = socket_dir();
    let open = dir.join("open.sock");
    let _listener = UnixListener::bind(&open).unwrap();
    let dead = dir.join("dead.sock");
    drop(UnixListener::bind(&dead).unwrap());
    let open_arg = format!("unix:{}", open.display());
    let out = run(&[&open_arg]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout.trim(), format!("Connected to {open_arg}"));

    let missing_arg = format!("unix:{}", dir.join("missing.sock").display());
    let out = run(&[&missing_arg]);
    assert_eq!(out.code, 1);
    assert_eq!(
        out.stderr.trim(),
        format!("Error connecting to {missing_arg}: No such file or directory")
    );

    let dead_arg = format!("unix:{}", dead.display());
    let (code, v) = json(&[&dead_arg]);
    assert_eq!(code, 1);
    assert_eq!(v["status"], "refused");
    assert_eq!(v["host"], dead_arg.as_str());
    assert!(v["port"].is_null());
}

#[test]
fn a_unix_target_that_is_not_a_socket_is_an_error_in_the_os_words() {
    let dir = socket_dir();
    let file = dir.join("regular-file");
    std::fs::write(&file, b"not a socket").unwrap();
    let arg = format!("unix:{}", file.display());
    let out = run(&[&arg]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    let words = std::io::Error::from_raw_os_error(libc::ENOTSOCK).to_string();
    let words = words.split(" (os error").next().unwrap();
    assert_eq!(
        out.stderr.trim(),
        format!("Error connecting to {arg}: {words}")
    );
    let (code, v) = json(&[&arg]);
    assert_eq!(code, 1);
    assert_eq!(v["status"], "error");
    assert_eq!(v["error"], words);
}

/// A socket file its user may not write to: EACCES. Root passes every permission
/// check, so as root twistctl runs as nobody (setpriv); without setpriv the test says
/// why it skipped.
#[test]
fn a_unix_target_without_permission_is_an_error_in_the_os_words() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::net::UnixListener;
    let dir = socket_dir();
    let path = dir.join("private.sock");
    let _listener = UnixListener::bind(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o000)).unwrap();
    let arg = format!("unix:{}", path.display());
    let mut command = if common::is_root() {
        if std::process::Command::new("setpriv")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("skipped: running as root, and no setpriv to run twistctl as nobody");
            return;
        }
        let mut command = Command::new("setpriv");
        command.args(["--reuid=65534", "--regid=65534", "--clear-groups", TWISTCTL]);
        command
    } else {
        Command::new(TWISTCTL)
    };
    let output = command
        .args(["conntest", "--json", &arg])
        .timeout(Duration::from_secs(10))
        .output()
        .expect("twistctl runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {stdout:?} {:?}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    assert_eq!(output.status.code(), Some(1), "{v}");
    assert_eq!(v["status"], "error");
    assert_eq!(v["error"], "Permission denied");
}

/// A TLS server on the UNIX socket `name` (in the test's socket directory) that sends
/// a POP3-like banner; its certificate is for localhost, signed by the test's CA.
fn tls_unix_server(name: &str) -> PathBuf {
    let path = socket_dir().join(name);
    let config = TlsServerConfig::new(&ServerOptions {
        identities: vec![pki().leaf.clone()],
        protocols: Protocols::default(),
        resumption: false,
    })
    .expect("server config");
    let (sender, receiver) = std::sync::mpsc::channel();
    let address = twistctl::reactor::UnixAddress::Path(path.clone());
    std::thread::spawn(move || {
        let reactor = Reactor::new().unwrap();
        let factory = Rc::new(TalkerFactory {
            script: Script {
                banner: b"+OK ready\r\n".to_vec(),
                echo: false,
            },
            tls: true,
        });
        let tls = twistctl::reactor::tls::server_factory(&reactor, &config, factory);
        let _port = reactor.listen_unix(address, tls).expect("listen");
        sender.send(()).unwrap();
        let _ = reactor.run();
    });
    receiver.recv().unwrap();
    path
}

#[test]
fn tls_works_over_a_unix_socket() {
    let path = tls_unix_server("tls.sock");
    let arg = format!("unix:{}", path.display());
    let (code, v) = json(&[
        "--tls",
        "--ca",
        &ca_file(),
        "--sni",
        "localhost",
        "--expect",
        "^\\+OK",
        &arg,
    ]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["status"], "open");
    assert_eq!(v["tls_version"], "TLSv1.3");
    assert_eq!(v["cert_subject"], "CN=localhost");
    assert_eq!(v["banner"], "+OK ready\\x0d\\x0a");
    // Verified for the --sni name: another name fails as it would over TCP.
    let (code, v) = json(&["--tls", "--ca", &ca_file(), "--sni", "other.test", &arg]);
    assert_eq!(code, 4, "{v}");
    assert_eq!(v["status"], "cert-invalid");
    let out = run(&["--tls", "--ca", &ca_file(), "--sni", "localhost", &arg]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout
            .starts_with(&format!("Connected to {arg} (TLS 1.3, ")),
        "{}",
        out.stdout
    );
}

/// A UNIX socket has no host name to verify the certificate for: without --sni, --tls
/// (or --starttls) to one is a usage error naming the socket, as in talk-client, and
/// nothing is connected to; --insecure verifies no name and still reports the
/// certificate.
#[test]
fn tls_over_a_unix_socket_needs_sni_or_insecure() {
    let path = tls_unix_server("tls-no-sni.sock");
    let arg = format!("unix:{}", path.display());
    for args in [
        vec!["--tls", "--ca", ca_file().as_str(), arg.as_str()],
        vec!["--starttls", "smtp", arg.as_str()],
        vec!["--tls", "localhost:1", arg.as_str()],
    ] {
        let out = run(&args);
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
        assert!(out.stdout.is_empty(), "{args:?}: {}", out.stdout);
        assert!(
            out.stderr.contains(&format!(
                "--tls to the UNIX socket '{arg}' has no host name to verify the certificate \
                 for: give --sni NAME (the name in the server's certificate), or --insecure"
            )),
            "{args:?}: {}",
            out.stderr
        );
    }
    let (code, v) = json(&["--tls", "--insecure", &arg]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["status"], "open");
    assert_eq!(v["cert_subject"], "CN=localhost");
    // Plain checks of a socket need no name.
    let (code, v) = json(&[&arg]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["status"], "open");
}

/// --concurrency counts UNIX sockets too: with one slot, the second target is
/// connected to only once the first one's socket is closed.
#[test]
fn unix_targets_wait_for_a_slot_of_the_concurrency_cap() {
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::sync::mpsc;
    let dir = socket_dir();
    let (silent, answering) = (dir.join("silent.sock"), dir.join("answering.sock"));
    let silent_listener = UnixListener::bind(&silent).unwrap();
    let answering_listener = UnixListener::bind(&answering).unwrap();
    let (held_tx, held_rx) = mpsc::channel::<UnixStream>();
    std::thread::spawn(move || {
        // Accepts and says nothing: the check waits out its --timeout.
        for stream in silent_listener.incoming().flatten() {
            let _ = held_tx.send(stream);
        }
    });
    let (seen_tx, seen_rx) = mpsc::channel::<&'static str>();
    std::thread::spawn(move || {
        // Kept open here: only conntest closes the first target's connection.
        let mut kept = Vec::new();
        for stream in answering_listener.incoming().flatten() {
            let mut stream = stream;
            // When this connection arrives, has the first target's socket been closed?
            let verdict = match held_rx.recv_timeout(Duration::from_secs(5)) {
                Ok(mut first) => {
                    first.set_nonblocking(true).unwrap();
                    let mut buf = [0u8; 16];
                    let verdict = match first.read(&mut buf) {
                        Ok(0) => "first closed",
                        Ok(_) => "first sent data",
                        Err(_) => "first still open",
                    };
                    kept.push(first);
                    verdict
                }
                Err(_) => "first not connected yet",
            };
            let _ = seen_tx.send(verdict);
            let _ = stream.write_all(b"x\n");
        }
    });
    let (silent_arg, answering_arg) = (
        format!("unix:{}", silent.display()),
        format!("unix:{}", answering.display()),
    );
    let out = run(&[
        "--concurrency",
        "1",
        "--expect",
        "^x",
        "--timeout",
        "500ms",
        &silent_arg,
        &answering_arg,
    ]);
    assert_eq!(
        seen_rx.recv_timeout(Duration::from_secs(5)).unwrap(),
        "first closed"
    );
    assert_eq!(out.code, 124, "{}", out.stderr);
    assert_eq!(
        out.stdout.trim(),
        format!("Connected to {answering_arg} (\"x\\x0a\")")
    );
}

#[test]
fn abstract_unix_targets_connect() {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixListener};
    let name = format!("conntest-checks-{}", std::process::id());
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let _listener = UnixListener::bind_addr(&addr).unwrap();
    let out = run(&[&format!("unix:@{name}")]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = run(&[&format!("unix:@{name}-nobody")]);
    assert_eq!(out.code, 1, "{}", out.stderr);
}

#[test]
fn expect_works_over_a_unix_socket() {
    use std::os::unix::net::UnixListener;
    let path = socket_dir().join("banner.sock");
    let listener = UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            let _ = stream.write_all(b"+OK POP3 ready\r\n");
        }
    });
    let arg = format!("unix:{}", path.display());
    let (code, v) = json(&["--expect", "^\\+OK", &arg]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["banner"], "+OK POP3 ready\\x0d\\x0a");
    let (code, v) = json(&["--expect", "^\\* OK", "--timeout", "1s", &arg]);
    assert_eq!(code, 4, "{v}");
    assert_eq!(v["status"], "mismatch");
}

// ---------------------------------------------------------------------------------------
// --closed

#[test]
fn closed_passes_when_nothing_accepts_and_fails_while_open() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let out = run(&["--closed", "127.0.0.1", &port]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert_eq!(
        out.stderr.trim(),
        format!("127.0.0.1 port {port} is still open")
    );
    let (code, v) = json(&["--closed", "127.0.0.1", &port]);
    assert_eq!(code, 1);
    assert_eq!(v["status"], "still-open");
    drop(listener);
    let out = run(&["--closed", "127.0.0.1", &port]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.stdout.trim(),
        format!("Closed: 127.0.0.1 port {port} (Connection refused)")
    );
    let (code, v) = json(&["--closed", "127.0.0.1", &port]);
    assert_eq!(code, 0);
    assert_eq!(v["status"], "closed");
}

#[test]
fn closed_names_a_unix_socket_as_written_while_open_and_passes_once_refused() {
    use std::os::unix::net::UnixListener;
    let path = socket_dir().join("closed.sock");
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).unwrap();
    let arg = format!("unix:{}", path.display());
    let out = run(&["--closed", &arg]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert_eq!(out.stderr.trim(), format!("{arg} is still open"));
    let (code, v) = json(&["--closed", &arg]);
    assert_eq!(code, 1);
    assert_eq!(v["status"], "still-open");
    assert_eq!(v["error"], format!("{arg} is still open"));
    // The socket file stays: a connect to it is refused.
    drop(listener);
    let out = run(&["--closed", &arg]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.stdout.trim(),
        format!("Closed: {arg} (Connection refused)")
    );
    let (code, v) = json(&["--closed", &arg]);
    assert_eq!(code, 0);
    assert_eq!(v["status"], "closed");
}

#[test]
fn closed_with_any_and_every_target_still_open_says_so_for_each() {
    let (a, b) = (
        TcpListener::bind("127.0.0.1:0").unwrap(),
        TcpListener::bind("127.0.0.1:0").unwrap(),
    );
    let ports = [
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    ];
    let targets = ports.map(|p| format!("127.0.0.1:{p}"));
    let out = run(&["--closed", "--any", &targets[0], &targets[1]]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(
        lines,
        ports.map(|p| format!("127.0.0.1 port {p} is still open")),
        "{}",
        out.stderr
    );
}

#[test]
fn closed_with_wait_waits_until_the_listener_has_gone() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let started = Instant::now();
    let (done, gone) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // The old server lets go of the port after a second.
        std::thread::sleep(Duration::from_secs(1));
        drop(listener);
        let _ = done.send(());
    });
    let out = run(&[
        "--closed",
        "--wait",
        "5s",
        "--interval",
        "100ms",
        "127.0.0.1",
        &port,
    ]);
    gone.recv().unwrap();
    let took = started.elapsed();
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.starts_with("Closed: "), "{}", out.stdout);
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[test]
fn closed_with_wait_ends_still_open_with_124_at_the_deadline() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let (code, v) = json(&["--closed", "--wait", "500ms", "127.0.0.1", &port]);
    assert_eq!(code, 124);
    assert_eq!(v["status"], "still-open");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .ends_with("is still open after waiting 500ms"),
        "{v}"
    );
    drop(listener);
}

// ---------------------------------------------------------------------------------------
// --starttls, against small fake servers: a greeting, one reply per command received,
// then (when `upgrade`) TLS as the server.

struct Upgrader {
    greeting: &'static [u8],
    replies: Vec<&'static [u8]>,
    upgrade: Option<TlsServerConfig>,
}

impl Protocol for Upgrader {
    fn connection_made(&mut self, transport: &TransportRef) -> ProtocolResult {
        transport.write(self.greeting);
        Ok(())
    }

    fn data_received(&mut self, transport: &TransportRef, _data: &[u8]) -> ProtocolResult {
        if self.replies.is_empty() {
            return Ok(());
        }
        transport.write(self.replies.remove(0));
        if self.replies.is_empty()
            && let Some(config) = self.upgrade.take()
        {
            transport
                .start_tls(twistctl::reactor::tls::StartTls::Server(config))
                .expect("start TLS");
        }
        Ok(())
    }
}

struct UpgraderFactory {
    greeting: &'static [u8],
    replies: Vec<&'static [u8]>,
    upgrade: Option<TlsServerConfig>,
}

impl Factory for UpgraderFactory {
    fn build_protocol(&self, _addr: twistctl::reactor::Address) -> Option<Box<dyn Protocol>> {
        Some(Box::new(Upgrader {
            greeting: self.greeting,
            replies: self.replies.clone(),
            upgrade: self.upgrade.clone(),
        }))
    }
}

fn upgrade_server(greeting: &'static [u8], replies: Vec<&'static [u8]>, upgrade: bool) -> u16 {
    let config = upgrade.then(|| {
        TlsServerConfig::new(&ServerOptions {
            identities: vec![pki().leaf.clone()],
            protocols: Protocols::default(),
            resumption: false,
        })
        .expect("server config")
    });
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let reactor = Reactor::new().unwrap();
        let factory = Rc::new(UpgraderFactory {
            greeting,
            replies,
            upgrade: config,
        });
        let port = reactor
            .listen_tcp("127.0.0.1:0".parse().unwrap(), factory)
            .expect("listen");
        sender.send(port.host().port()).unwrap();
        let _ = reactor.run();
    });
    receiver.recv().unwrap()
}

/// A dialect, the server's greeting and its replies.
type Dialogue = (&'static str, &'static [u8], Vec<&'static [u8]>);

#[test]
fn starttls_upgrades_each_dialect_and_checks_the_certificate() {
    let cases: Vec<Dialogue> = vec![
        (
            "smtp",
            b"220 mail ESMTP\r\n",
            vec![b"250-mail\r\n250 STARTTLS\r\n", b"220 Go ahead\r\n"],
        ),
        (
            "imap",
            b"* OK IMAP4rev1 ready\r\n",
            vec![b"a001 OK Begin TLS\r\n"],
        ),
        ("pop3", b"+OK POP3 ready\r\n", vec![b"+OK Begin TLS\r\n"]),
        ("ftp", b"220 FTP ready\r\n", vec![b"234 AUTH TLS OK\r\n"]),
        ("postgres", b"", vec![b"S"]),
    ];
    let ca = ca_file();
    for (dialect, greeting, replies) in cases {
        let port = upgrade_server(greeting, replies, true).to_string();
        let (code, v) = json(&["--starttls", dialect, "--ca", &ca, "localhost", &port]);
        assert_eq!(code, 0, "{dialect}: {v}");
        assert_eq!(v["status"], "open", "{dialect}");
        assert_eq!(v["tls_version"], "TLSv1.3", "{dialect}");
        assert_eq!(v["cert_subject"], "CN=localhost", "{dialect}");
    }
}

#[test]
fn a_refused_starttls_fails_with_what_the_server_said() {
    let port = upgrade_server(
        b"220 mail ESMTP\r\n",
        vec![b"250 mail\r\n", b"454 TLS not available\r\n"],
        false,
    )
    .to_string();
    let out = run(&["--starttls", "smtp", "--timeout", "2s", "127.0.0.1", &port]);
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(
        out.stderr.contains("454 TLS not available"),
        "{}",
        out.stderr
    );
    let (code, v) = json(&["--starttls", "smtp", "--timeout", "2s", "127.0.0.1", &port]);
    assert_eq!(code, 4);
    assert_eq!(v["status"], "starttls-refused");
    let port = upgrade_server(b"", vec![b"N"], false).to_string();
    let (code, v) = json(&[
        "--starttls",
        "postgres",
        "--timeout",
        "2s",
        "127.0.0.1",
        &port,
    ]);
    assert_eq!(code, 4, "{v}");
    assert_eq!(v["status"], "starttls-refused");
}

#[test]
fn watch_with_tls_reports_the_handshake_time() {
    let port = tls_server(&pki().leaf).to_string();
    let out = run(&[
        "--watch",
        "--count",
        "1",
        "--tls",
        "--ca",
        &ca_file(),
        "localhost",
        &port,
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let line = out.stdout.lines().next().unwrap();
    assert!(
        line.starts_with(&format!("localhost port {port}: open, seq=1, time=")),
        "{line}"
    );
    assert!(
        line.contains(" ms, tls=") && line.ends_with(" ms"),
        "{line}"
    );
}

// ---------------------------------------------------------------------------------------
// --nagios

/// A plain server that answers each connection with `banner` only after `delay`: a
/// response time that is at least `delay` whatever the machine's load.
fn slow_banner_server(delay: Duration, banner: &'static [u8]) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut stream = stream;
                std::thread::sleep(delay);
                let _ = stream.write_all(banner);
                let mut rest = Vec::new();
                let _ = stream.read_to_end(&mut rest);
            });
        }
    });
    port
}

/// A port on which nothing listens.
fn refused_port() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port().to_string()
}

fn nagios(args: &[&str]) -> Output {
    let mut all = vec!["--nagios"];
    all.extend_from_slice(args);
    run(&all)
}

#[test]
fn nagios_ok_is_one_line_with_the_time_and_certificate_days_as_perfdata() {
    let port = tls_server(&pki().leaf).to_string();
    let out = nagios(&[
        "--tls",
        "--ca",
        &ca_file(),
        "--cert-warn-days",
        "30",
        "--cert-days",
        "7",
        "--warning",
        "10s",
        "--critical",
        "20s",
        "127.0.0.1",
        &port,
    ]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(out.stdout.lines().count(), 1, "{}", out.stdout);
    let pattern = format!(
        r"^CONNTEST OK - 127\.0\.0\.1 port {port} open in ([0-9]+\.[0-9]{{2}}) ms, certificate expires in 61 days\|time=([0-9]+\.[0-9]{{6}})s;10;20;0; cert_days=61;30;7;;$"
    );
    let line = out.stdout.trim_end();
    let caps = regex::Regex::new(&pattern)
        .unwrap()
        .captures(line)
        .unwrap_or_else(|| panic!("{line}"));
    let ms: f64 = caps[1].parse().unwrap();
    let seconds: f64 = caps[2].parse().unwrap();
    assert!(
        ms > 0.0 && (ms / 1000.0 - seconds).abs() < 0.00001,
        "{line}"
    );
}

#[test]
fn nagios_without_thresholds_leaves_the_perfdata_fields_empty() {
    let port = banner_server(b"SSH-2.0-test\r\n", false).to_string();
    let out = nagios(&["--expect", "^SSH-2\\.0", "127.0.0.1", &port]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let line = out.stdout.trim_end();
    assert!(
        line.starts_with(&format!("CONNTEST OK - 127.0.0.1 port {port} open in ")),
        "{line}"
    );
    assert!(
        line.contains(r#", reply "SSH-2.0-test\x0d\x0a"|time="#),
        "{line}"
    );
    assert!(line.ends_with("s;;;0;"), "{line}");
}

#[test]
fn nagios_warns_for_a_certificate_inside_cert_warn_days_and_is_critical_inside_cert_days() {
    let port = tls_server(&pki().expiring).to_string();
    let args = |warn: &'static str, crit: &'static str| {
        let ca = ca_file();
        let port = port.clone();
        move || {
            nagios(&[
                "--tls",
                "--ca",
                &ca,
                "--cert-warn-days",
                warn,
                "--cert-days",
                crit,
                "127.0.0.1",
                &port,
            ])
        }
    };
    let out = args("30", "2")();
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    let line = out.stdout.trim_end();
    assert!(
        line.starts_with("CONNTEST WARNING - 127.0.0.1 port "),
        "{line}"
    );
    assert!(
        line.contains(", certificate expires in 5 days|time="),
        "{line}"
    );
    assert!(line.ends_with(" cert_days=5;30;2;;"), "{line}");

    let out = args("30", "7")();
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
    let line = out.stdout.trim_end();
    assert!(
        line.starts_with(&format!(
            "CONNTEST CRITICAL - 127.0.0.1 port {port} cert-expiring: certificate expires in 5 days"
        )),
        "{line}"
    );
    assert!(line.ends_with("|cert_days=5;30;7;;"), "{line}");
}

#[test]
fn nagios_response_time_thresholds_warn_and_go_critical() {
    // The banner comes after 300 ms, so the response time is above 100 ms on any
    // machine, however loaded.
    let port = slow_banner_server(Duration::from_millis(300), b"SSH-2.0-slow\r\n").to_string();
    let out = nagios(&["--expect", "^SSH", "--warning", "100ms", "127.0.0.1", &port]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    let line = out.stdout.trim_end();
    assert!(
        line.starts_with("CONNTEST WARNING - 127.0.0.1 port "),
        "{line}"
    );
    assert!(line.contains("s;0.1;;0;"), "{line}");
    let time: f64 = line
        .split("|time=")
        .nth(1)
        .and_then(|p| p.split('s').next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(time >= 0.3, "{line}");

    let out = nagios(&[
        "--expect",
        "^SSH",
        "--warning",
        "50ms",
        "--critical",
        "100ms",
        "127.0.0.1",
        &port,
    ]);
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .starts_with("CONNTEST CRITICAL - 127.0.0.1 port "),
        "{}",
        out.stdout
    );
}

#[test]
fn nagios_a_refused_port_is_critical() {
    let port = refused_port();
    let out = nagios(&["127.0.0.1", &port]);
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
    assert_eq!(
        out.stdout,
        format!("CONNTEST CRITICAL - 127.0.0.1 port {port} refused: Connection refused\n")
    );
}

#[test]
fn nagios_usage_errors_are_unknown_with_exit_3() {
    let port = refused_port();
    for (args, words) in [
        (
            vec!["--warning", "5x", "127.0.0.1", &port],
            "invalid value '5x' for '--warning <DUR>'",
        ),
        (
            vec!["--json", "127.0.0.1", &port],
            "the argument '--nagios' cannot be used with '--json'",
        ),
        (
            vec!["--wait", "1s", "127.0.0.1", &port],
            "the argument '--nagios' cannot be used with '--wait <DUR>'",
        ),
        (
            vec!["127.0.0.1", &port, "--", "true"],
            "the argument '--nagios' cannot be used with '[CMD]...'",
        ),
        (vec!["127.0.0.1:0"], "invalid port"),
        (
            vec![],
            "the following required arguments were not provided: <TARGET>...",
        ),
        (
            vec!["--tls", "--ca", "/nonexistent/ca.pem", "127.0.0.1", &port],
            "cannot read /nonexistent/ca.pem",
        ),
    ] {
        let out = nagios(&args);
        assert_eq!(out.code, 3, "{args:?}: {}{}", out.stdout, out.stderr);
        assert_eq!(out.stdout.lines().count(), 1, "{args:?}: {}", out.stdout);
        assert!(
            out.stdout.starts_with("CONNTEST UNKNOWN - ") && out.stdout.contains(words),
            "{args:?}: {}",
            out.stdout
        );
    }
    // Without --nagios the same mistake is the usual usage error.
    let out = run(&["--warning", "1s", "127.0.0.1", &port]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stdout.is_empty());
}

#[test]
fn nagios_several_targets_worst_state_wins_with_a_summary_and_a_line_each() {
    let good = tls_server(&pki().leaf).to_string();
    let expired = tls_server(&pki().expired).to_string();
    let refused = refused_port();
    let targets = [
        format!("127.0.0.1:{good}"),
        format!("127.0.0.1:{expired}"),
        format!("127.0.0.1:{refused}"),
    ];
    let out = nagios(&[
        "--tls",
        "--ca",
        &ca_file(),
        &targets[0],
        &targets[1],
        &targets[2],
    ]);
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{}", out.stdout);
    assert!(
        lines[0].starts_with("CONNTEST CRITICAL - 3 targets, 2 critical, 1 ok|"),
        "{}",
        lines[0]
    );
    assert!(
        lines[0].contains(&format!("'time 127.0.0.1:{good}'=")),
        "{}",
        lines[0]
    );
    assert!(
        lines[0].contains(&format!("'cert_days 127.0.0.1:{expired}'=-")),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with(&format!("127.0.0.1 port {good}: OK - open in ")),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].starts_with(&format!(
            "127.0.0.1 port {expired}: CRITICAL - cert-invalid: certificate has expired"
        )),
        "{}",
        lines[2]
    );
    assert_eq!(
        lines[3],
        format!("127.0.0.1 port {refused}: CRITICAL - refused: Connection refused")
    );

    // Only warnings and passes: WARNING, exit 1.
    let expiring = tls_server(&pki().expiring).to_string();
    let out = nagios(&[
        "--tls",
        "--ca",
        &ca_file(),
        "--cert-warn-days",
        "30",
        &targets[0],
        &format!("127.0.0.1:{expiring}"),
    ]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .starts_with("CONNTEST WARNING - 2 targets, 1 warning, 1 ok|"),
        "{}",
        out.stdout
    );
}
