//! talk with other people's tools: talk-server over TLS with `openssl s_client` and
//! `ncat --ssl` as clients, talk-client with `--ca` against `openssl s_server`, and
//! talk over UNIX sockets with `nc -U` and `socat`. A test whose tool is not installed
//! says so and passes; every wait is bounded.
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

use assert_cmd::cargo::CommandCargoExt;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// How long any single step may take before the test fails.
const STEP: Duration = Duration::from_secs(10);

fn twistctl() -> Command {
    Command::cargo_bin("twistctl").expect("the twistctl binary is built for tests")
}

/// True if `tool` runs; otherwise says the test is skipped and why.
fn have(tool: &str, version_arg: &str) -> bool {
    let found = Command::new(tool)
        .arg(version_arg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        println!("skipped: {tool} is not installed");
    }
    found
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "twistctl-talk-interop-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a temporary folder");
    dir
}

/// A child whose stdout (or stderr) lines arrive on a channel; killed when dropped.
struct Tool {
    child: Child,
    lines: Receiver<String>,
}

impl Tool {
    fn spawn(command: &mut Command, read_stderr: bool) -> Tool {
        let mut child = command
            .env_remove("RUST_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the tool");
        let (sender, lines) = mpsc::channel();
        let stdout: Box<dyn Read + Send> = Box::new(child.stdout.take().expect("stdout"));
        let stderr: Box<dyn Read + Send> = Box::new(child.stderr.take().expect("stderr"));
        let mut sources = vec![stdout];
        if read_stderr {
            sources.push(stderr);
        }
        for source in sources {
            let sender = sender.clone();
            thread::spawn(move || {
                for line in BufReader::new(source).lines() {
                    let Ok(line) = line else { break };
                    if sender.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Tool { child, lines }
    }

    fn send(&mut self, text: &str) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        stdin.write_all(text.as_bytes()).expect("write");
        stdin.flush().expect("flush");
    }

    fn close_stdin(&mut self) {
        drop(self.child.stdin.take());
    }

    fn expect_line(&self, wanted: &str) -> String {
        let deadline = Instant::now() + STEP;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(wanted) => return line,
                Ok(line) => seen.push(line),
                Err(error) => panic!("no line with {wanted:?} ({error:?}); seen {seen:?}"),
            }
        }
    }

    /// The exit status, waiting at most [`STEP`].
    fn status(&mut self) -> Option<i32> {
        let deadline = Instant::now() + STEP;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.code();
            }
            thread::sleep(Duration::from_millis(20));
        }
        panic!("the process did not end");
    }
}

impl Drop for Tool {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `talk-server --echo` with `args`; it and its first output line.
fn echo_server(args: &[&str], state: &Path) -> (Tool, String) {
    let server = Tool::spawn(
        twistctl()
            .args(["talk-server", "--echo"])
            .args(args)
            .env("XDG_STATE_HOME", state),
        false,
    );
    let first = server.expect_line("Listening on ");
    (server, first)
}

fn port_of(line: &str) -> String {
    line.trim_end_matches(" (TLS)")
        .rsplit(':')
        .next()
        .expect("a port")
        .to_string()
}

#[test]
fn talk_server_tls_with_openssl_s_client() {
    if !have("openssl", "version") {
        return;
    }
    let dir = temp_dir("s_client");
    let (_server, listening) = echo_server(&["--tls", "--bind", "127.0.0.1", "0"], &dir);
    let mut client = Tool::spawn(
        Command::new("openssl").args([
            "s_client",
            "-quiet",
            "-connect",
            &format!("127.0.0.1:{}", port_of(&listening)),
        ]),
        false,
    );
    client.send("hello over openssl\n");
    assert_eq!(client.expect_line("hello"), "hello over openssl");
}

#[test]
fn talk_server_tls_with_ncat_ssl() {
    if !have("ncat", "--version") {
        return;
    }
    let dir = temp_dir("ncat");
    let (_server, listening) = echo_server(&["--tls", "--bind", "127.0.0.1", "0"], &dir);
    let mut client = Tool::spawn(
        Command::new("ncat").args(["--ssl", "127.0.0.1", &port_of(&listening)]),
        false,
    );
    client.send("hello over ncat\n");
    assert_eq!(client.expect_line("hello"), "hello over ncat");
}

#[test]
fn talk_client_with_ca_against_openssl_s_server() {
    if !have("openssl", "version") {
        return;
    }
    let dir = temp_dir("s_server");
    let ca_key = KeyPair::generate().expect("key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "interop CA");
    let ca = ca_params.self_signed(&ca_key).expect("CA");
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().expect("key");
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .expect("params")
        .signed_by(&key, &issuer)
        .expect("leaf");
    for (name, pem) in [
        ("ca.pem", ca.pem()),
        ("cert.pem", leaf.pem()),
        ("key.pem", key.serialize_pem()),
    ] {
        std::fs::write(dir.join(name), pem).expect("write PEM");
    }
    let mut server = Tool::spawn(
        Command::new("openssl")
            .args(["s_server", "-accept", "127.0.0.1:0", "-cert"])
            .arg(dir.join("cert.pem"))
            .arg("-key")
            .arg(dir.join("key.pem")),
        false,
    );
    let accept = server.expect_line("ACCEPT ");
    let port = accept.rsplit(':').next().expect("a port").to_string();
    let mut client = Tool::spawn(
        twistctl()
            .args(["talk-client", "--tls", "--ca"])
            .arg(dir.join("ca.pem"))
            .args(["localhost", &port])
            .env("XDG_CONFIG_HOME", &dir),
        true,
    );
    client.send("hello from talk-client\n");
    server.expect_line("hello from talk-client");
    server.send("hello from s_server\n");
    assert_eq!(
        client.expect_line("Server: "),
        "Server: hello from s_server"
    );
    // `Q` makes s_server exit without a close_notify: the client cannot tell that from
    // an attacker cutting the connection, and says so (exit 1).
    server.send("Q\n");
    let last = client.expect_line("Connection lost - goodbye!");
    assert!(last.contains("without a TLS close_notify"), "{last}");
    assert_eq!(client.status(), Some(1));
}

#[test]
fn talk_server_on_a_unix_socket_with_nc_and_socat() {
    let dir = temp_dir("unix");
    let socket = dir.join("talk.sock");
    let (_server, listening) =
        echo_server(&["--listen", &format!("unix:{}", socket.display())], &dir);
    assert_eq!(listening, format!("Listening on unix:{}", socket.display()));
    if have("nc", "-h") {
        let out = Command::new("nc")
            .args(["-N", "-U"])
            .arg(&socket)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                child
                    .stdin
                    .take()
                    .expect("stdin")
                    .write_all(b"hello over nc\n")?;
                child.wait_with_output()
            })
            .expect("nc runs");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "hello over nc\r\n");
    }
    if have("socat", "-V") {
        let out = Command::new("socat")
            .arg("-")
            .arg(format!("UNIX-CONNECT:{}", socket.display()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                child
                    .stdin
                    .take()
                    .expect("stdin")
                    .write_all(b"hello over socat\n")?;
                child.wait_with_output()
            })
            .expect("socat runs");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "hello over socat\r\n");
    }
}

#[test]
fn talk_client_against_a_socat_unix_listen_server() {
    if !have("socat", "-V") {
        return;
    }
    let dir = temp_dir("socat-listen");
    let socket = dir.join("echo.sock");
    let _server = Tool::spawn(
        Command::new("socat")
            .arg(format!("UNIX-LISTEN:{}", socket.display()))
            .arg("EXEC:cat"),
        false,
    );
    let deadline = Instant::now() + STEP;
    while !socket.exists() {
        assert!(Instant::now() < deadline, "socat never listened");
        thread::sleep(Duration::from_millis(10));
    }
    let mut client = Tool::spawn(
        twistctl().args(["talk-client", &format!("unix:{}", socket.display())]),
        false,
    );
    client.send("hello socat\n");
    // The end of input half-closes; cat then ends, and socat closes.
    client.close_stdin();
    assert_eq!(client.expect_line("Server: "), "Server: hello socat");
    client.expect_line("Connection lost - goodbye!");
    assert_eq!(client.status(), Some(0));
}
