//! talk over TLS end to end: the built talk-server (`--tls`) and talk-client on
//! loopback, with certificates made by the test (rcgen) or by the server itself, and
//! `known_hosts` in a temporary config dir. Every wait is bounded.
mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::pki::TestCa;
use common::talk::{Running, STEP, port_of, run_with_input, text, twistctl};
use common::{spawn_in_pty, type_in_pty};

/// A fresh temporary folder for one test.
fn temp_dir(name: &str) -> PathBuf {
    common::talk::temp_dir("talk-tls", name)
}

/// A running `talk-server --echo --tls` on 127.0.0.1 and its first output lines.
struct Server {
    run: Running,
    port: u16,
    /// `SHA256:AB:...`, from the second line.
    fingerprint: String,
    head: Vec<String>,
}

impl std::ops::Deref for Server {
    type Target = Running;

    fn deref(&self) -> &Running {
        &self.run
    }
}

impl std::ops::DerefMut for Server {
    fn deref_mut(&mut self) -> &mut Running {
        &mut self.run
    }
}

impl Server {
    fn start(tls_args: &[&str], state: &Path) -> Server {
        Server::start_with(&["--echo"], tls_args, state)
    }

    /// With the operator's stdin piped (`console`: no `--echo`).
    fn start_with(mode: &[&str], tls_args: &[&str], state: &Path) -> Server {
        let run = Running::start(
            twistctl()
                .arg("talk-server")
                .args(mode)
                .args(["--bind", "127.0.0.1", "0", "--tls"])
                .args(tls_args)
                .env("XDG_STATE_HOME", state),
        );
        let first = run.line();
        let second = run.line();
        assert!(first.ends_with(" (TLS)"), "{first}");
        let port = port_of(&first).parse().expect("a port");
        let fingerprint = second
            .strip_prefix("TLS certificate ")
            .unwrap_or_else(|| panic!("second line: {second}"))
            .to_string();
        Server {
            run,
            port,
            fingerprint,
            head: vec![first, second],
        }
    }
}

/// Runs talk-client with `input` piped, `config` as its config dir, bounded in time.
fn client(args: &[&str], input: &str, config: &Path) -> Output {
    run_with_input(
        twistctl()
            .arg("talk-client")
            .args(args)
            .env("XDG_CONFIG_HOME", config),
        input,
    )
}

/// talk-client pinned to the server's fingerprint, with `--linger 1s`.
fn pinned_client(server: &Server, input: &str, config: &Path) -> Output {
    let port = server.port.to_string();
    let pin = [
        "--tls",
        "--fingerprint",
        &server.fingerprint,
        "--linger",
        "1s",
    ];
    client(&[&pin[..], &["127.0.0.1", &port]].concat(), input, config)
}

/// A CA of the test's, written to `DIR/ca.pem`, and leaves it signs.
struct Pki {
    ca: PathBuf,
    authority: TestCa,
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        let authority = TestCa::new("talk test CA");
        Pki {
            ca: authority.write(dir),
            authority,
        }
    }

    /// A leaf for `names`, valid between the years given; its cert and key files.
    fn leaf(&self, dir: &Path, name: &str, names: &[&str], years: (i32, i32)) -> (String, String) {
        let params = common::pki::leaf_params(names, (years.0, 1, 1), (years.1, 1, 1));
        let (cert, key) = self.authority.sign(params).write(dir, name);
        (cert.display().to_string(), key.display().to_string())
    }
}

#[test]
fn tls_chat_with_a_pinned_fingerprint_and_no_close_notify_at_the_end_of_input() {
    let dir = temp_dir("pinned");
    let server = Server::start(&["--cert-dir", dir.join("cert").to_str().unwrap()], &dir);
    let out = pinned_client(&server, "hello\nagain\n", &dir);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("Server: hello\nServer: again\n"),
        "{stdout}"
    );
    // No close_notify at the end of input (S-14): the echo server cannot tell, so the
    // client waits out --linger, as over TCP when a server does not close.
    assert_eq!(out.status.code(), Some(124), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("had not closed after 1s"));
    server.expect_line("client 1 connected from 127.0.0.1");
}

#[test]
fn the_self_signed_certificate_is_kept_with_a_private_key_and_a_stable_fingerprint() {
    let dir = temp_dir("stable");
    let first = Server::start(&[], &dir);
    let fingerprint = first.fingerprint.clone();
    assert!(
        fingerprint.starts_with("SHA256:") && fingerprint.len() == 7 + 32 * 3 - 1,
        "{fingerprint}"
    );
    assert_eq!(
        fingerprint,
        fingerprint.to_uppercase(),
        "uppercase hex pairs"
    );
    drop(first);
    let second = Server::start(&[], &dir);
    assert_eq!(second.fingerprint, fingerprint);
    assert!(second.head[1].starts_with("TLS certificate SHA256:"));
    let key = dir.join("twistctl").join("talk-server.key");
    let mode = std::fs::metadata(&key)
        .expect("the key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{}", key.display());
    // openssl agrees with the fingerprint printed.
    if let Ok(out) = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(dir.join("twistctl").join("talk-server.crt"))
        .output()
    {
        let said = text(&out.stdout);
        assert!(
            said.trim()
                .ends_with(fingerprint.trim_start_matches("SHA256:")),
            "{said}"
        );
    } else {
        println!("openssl not installed: fingerprint not cross-checked");
    }
}

#[test]
fn tls_chat_verified_with_ca_and_refusals_name_their_reason() {
    let dir = temp_dir("ca");
    let pki = Pki::new(&dir);
    let ca = pki.ca.display().to_string();
    let (cert, key) = pki.leaf(&dir, "good", &["localhost", "127.0.0.1"], (2020, 2090));
    let server = Server::start(&["--cert", &cert, "--key", &key], &dir);
    let port = server.port.to_string();
    let out = client(
        &["--tls", "--ca", &ca, "--linger", "1s", "localhost", &port],
        "hi\n",
        &dir,
    );
    assert!(
        text(&out.stdout).contains("Server: hi"),
        "{}",
        text(&out.stderr)
    );
    drop(server);

    let (cert, key) = pki.leaf(&dir, "old", &["localhost", "127.0.0.1"], (2020, 2021));
    let server = Server::start(&["--cert", &cert, "--key", &key], &dir);
    let port = server.port.to_string();
    let out = client(&["--tls", "--ca", &ca, "localhost", &port], "hi\n", &dir);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("certificate has expired"), "{stderr}");
    assert!(!stderr.contains("--fingerprint"), "never offered: {stderr}");
    drop(server);

    let (cert, key) = pki.leaf(&dir, "other", &["other.test"], (2020, 2090));
    let server = Server::start(&["--cert", &cert, "--key", &key], &dir);
    let port = server.port.to_string();
    let out = client(&["--tls", "--ca", &ca, "localhost", &port], "hi\n", &dir);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("name mismatch"), "{stderr}");
    assert!(stderr.contains("other.test"), "{stderr}");
    assert!(text(&out.stdout).is_empty(), "nothing was said");
}

#[test]
fn without_a_terminal_an_unknown_certificate_is_refused_with_how_to_pin_it() {
    let dir = temp_dir("noterm");
    let server = Server::start(&[], &dir);
    let port = server.port.to_string();
    let out = client(&["--tls", "127.0.0.1", &port], "hi\n", &dir);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("issuer is unknown"), "{stderr}");
    assert!(
        stderr.contains(&format!("--fingerprint {}", server.fingerprint)),
        "{stderr}"
    );
    assert!(!dir.join("twistctl").join("known_hosts").exists());

    // A wrong pin is refused, naming both.
    let wrong = format!("SHA256:{}", ["AB"; 32].join(":"));
    let out = client(
        &["--tls", "--fingerprint", &wrong, "127.0.0.1", &port],
        "hi\n",
        &dir,
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("does not match --fingerprint"), "{stderr}");
    assert!(stderr.contains(&server.fingerprint), "{stderr}");

    // --insecure connects and says so.
    let out = client(
        &["--tls", "--insecure", "--linger", "1s", "127.0.0.1", &port],
        "hi\n",
        &dir,
    );
    assert!(text(&out.stdout).contains("Server: hi"));
    assert!(text(&out.stderr).contains("--insecure: the server's certificate is not verified"));
}

#[test]
fn trust_on_first_use_asks_remembers_and_refuses_a_changed_certificate() {
    let dir = temp_dir("tofu");
    let config = dir.join("config");
    let server = Server::start(&[], &dir);
    let port = server.port.to_string();
    let key = format!("127.0.0.1:{port}");

    // First use at a terminal: asked; yes remembers and connects.
    let mut command = Command::new(env!("CARGO_BIN_EXE_twistctl"));
    command
        .args(["talk-client", "--tls", "--linger", "1s", "127.0.0.1", &port])
        .env("XDG_CONFIG_HOME", &config);
    let mut session = spawn_in_pty(command, 10_000);
    session
        .exp_string(&format!("fingerprint is {}", server.fingerprint))
        .expect("the fingerprint shown");
    session
        .exp_string(&format!("Trust this certificate for {key}? [y/N]"))
        .expect("the question");
    type_in_pty(&mut session, "y\r");
    session.exp_string("remembered in").expect("remembered");
    session.exp_string("Client: ").expect("the chat's prompt");
    type_in_pty(&mut session, "hello\r");
    session.exp_string("Server: hello").expect("the echo");
    let known = std::fs::read_to_string(config.join("twistctl").join("known_hosts"))
        .expect("known_hosts written");
    assert_eq!(known, format!("{key} {}\n", server.fingerprint));
    type_in_pty(&mut session, "\x03");
    session.exp_eof().expect("the client ends");

    // Later: no question, even without a terminal.
    let out = client(
        &["--tls", "--linger", "1s", "127.0.0.1", &port],
        "again\n",
        &config,
    );
    assert!(
        text(&out.stdout).contains("Server: again"),
        "{}",
        text(&out.stderr)
    );
    assert!(!text(&out.stderr).contains("Trust this"));

    // A different certificate for the remembered host and port: refused loudly.
    let other = format!("SHA256:{}", ["0A"; 32].join(":"));
    std::fs::write(
        config.join("twistctl").join("known_hosts"),
        format!("# edited\n{key} {other}\n"),
    )
    .unwrap();
    let out = client(&["--tls", "127.0.0.1", &port], "hi\n", &config);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("HAS CHANGED"), "{stderr}");
    assert!(
        stderr.contains(&other) && stderr.contains(&server.fingerprint),
        "{stderr}"
    );
    assert!(stderr.contains("edit line 2 of"), "{stderr}");
    assert!(text(&out.stdout).is_empty());
}

#[test]
fn trust_on_first_use_answered_no_refuses_and_remembers_nothing() {
    let dir = temp_dir("tofu-no");
    let server = Server::start(&[], &dir);
    let port = server.port.to_string();
    let mut command = Command::new(env!("CARGO_BIN_EXE_twistctl"));
    command
        .args(["talk-client", "--tls", "127.0.0.1", &port])
        .env("XDG_CONFIG_HOME", &dir);
    let mut session = spawn_in_pty(command, 10_000);
    session.exp_string("[y/N]").expect("the question");
    type_in_pty(&mut session, "n\r");
    session.exp_string("was not trusted").expect("the refusal");
    session.exp_eof().expect("the client ends");
    let status = session.process_mut().wait().expect("the exit status");
    assert!(
        matches!(status, rexpect::process::WaitStatus::Exited(_, 1)),
        "{status:?}"
    );
    assert!(!dir.join("twistctl").join("known_hosts").exists());
}

#[test]
fn a_tls_client_that_never_reads_is_dropped_as_too_slow_with_bounded_memory() {
    if Command::new("openssl").arg("version").output().is_err() {
        println!("skipped: openssl is not installed (it plays the client that never reads)");
        return;
    }
    const MIB: u64 = 1024 * 1024;
    let dir = temp_dir("slow");
    let mut server = Server::start_with(&[], &[], &dir);
    // openssl writes what it receives to a pipe nobody reads: once the pipe is full it
    // stops reading the socket, and the server's data piles up on its side.
    let mut slow = Command::new("openssl")
        .args([
            "s_client",
            "-quiet",
            "-connect",
            &format!("127.0.0.1:{}", server.port),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start openssl s_client");
    server.expect_line("* client 1 connected from 127.0.0.1:");
    let (rss_before, _) = server.memory();
    let long = "y".repeat(60_000);
    let expected = "* client 1 disconnected: too slow";
    let mut sent = 0u64;
    let dropped = loop {
        for _ in 0..20 {
            server.type_line(&format!("/to 1 {long}"));
        }
        sent += 20 * 60_000;
        assert!(sent < 200 * MIB, "never dropped after {sent} bytes");
        match server.lines.recv_timeout(Duration::from_millis(200)) {
            Ok(line) if line.contains(expected) => break line,
            Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(error) => panic!("the server ended: {error:?}"),
        }
    };
    assert_eq!(dropped, expected);
    let (rss_after, peak) = server.memory();
    println!("dropped after {sent} bytes typed; RSS {rss_before} -> {rss_after}, peak {peak}");
    assert!(
        rss_after < rss_before + 16 * MIB && peak < rss_before + 16 * MIB,
        "RSS {rss_before} -> {rss_after} (peak {peak}) after {sent} bytes"
    );
    let _ = slow.kill();
    let _ = slow.wait();
}

#[test]
fn max_line_holds_over_tls() {
    if Command::new("openssl").arg("version").output().is_err() {
        println!("skipped: openssl is not installed (it plays the client)");
        return;
    }
    let dir = temp_dir("maxline");
    let server = Server::start_with(&["--max-line", "8"], &[], &dir);
    let mut peer = Command::new("openssl")
        .args([
            "s_client",
            "-quiet",
            "-connect",
            &format!("127.0.0.1:{}", server.port),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start openssl s_client");
    let mut stdin = peer.stdin.take().expect("stdin");
    stdin.write_all(b"123456789\n").expect("send a long line");
    stdin.flush().expect("flush");
    server.expect_line("* client 1 disconnected: line too long");
    let mut reply = String::new();
    BufReader::new(peer.stdout.take().expect("stdout"))
        .read_line(&mut reply)
        .expect("the reply");
    assert_eq!(reply, "error: line too long\r\n");
    let _ = peer.kill();
    let _ = peer.wait();
}

#[test]
fn a_client_that_fails_the_handshake_takes_no_number_and_no_line() {
    let dir = temp_dir("failed-handshake");
    let server = Server::start(&[], &dir);
    let port = server.port.to_string();
    // Plain text where a ClientHello belongs: the server answers with an alert, closes.
    let mut plain =
        std::net::TcpStream::connect(("127.0.0.1", server.port)).expect("connect in the clear");
    plain.set_read_timeout(Some(STEP)).expect("a read timeout");
    plain.write_all(b"hello in the clear\r\n").expect("send");
    let mut answer = Vec::new();
    let _ = std::io::Read::read_to_end(&mut plain, &mut answer);
    assert!(
        !text(&answer).contains("hello"),
        "nothing echoed: {answer:?}"
    );
    // A talk-client that refuses the certificate (no terminal, no pin) ends the
    // handshake from its side.
    let refused = client(&["--tls", "127.0.0.1", &port], "hi\n", &dir);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused.stderr));
    // The next client to complete a handshake is client 1, and it is the first line
    // after the head.
    let good = pinned_client(&server, "hello\n", &dir);
    assert!(
        text(&good.stdout).contains("Server: hello"),
        "{}",
        text(&good.stderr)
    );
    // SIGTERM ends the server; everything it said about clients is then in.
    server.signal(nix::sys::signal::Signal::SIGTERM);
    let said = server.rest();
    let connects: Vec<&String> = said.iter().filter(|l| l.contains(" connected")).collect();
    assert_eq!(connects.len(), 1, "{said:?}");
    assert!(
        connects[0].starts_with("* client 1 connected from 127.0.0.1:"),
        "{said:?}"
    );
    assert!(said.iter().all(|l| !l.contains("client 2")), "{said:?}");
}
