//! talk with other people's tools: talk-server over TLS with `openssl s_client` and
//! `ncat --ssl` as clients, talk-client with `--ca` against `openssl s_server`, and
//! talk over UNIX sockets with `nc -U` and `socat`. A test whose tool is not installed
//! says so and passes; every wait is bounded.
mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::pki::TestCa;
use common::talk::{Running, STEP, have, port_of, twistctl};

fn temp_dir(name: &str) -> PathBuf {
    common::talk::temp_dir("talk-interop", name)
}

/// A `talk-server --echo` with `args`; it and its first output line.
fn echo_server(args: &[&str], state: &Path) -> (Running, String) {
    let server = Running::start(
        twistctl()
            .args(["talk-server", "--echo"])
            .args(args)
            .env("XDG_STATE_HOME", state),
    );
    let first = server.expect_line("Listening on ");
    (server, first)
}

#[test]
fn talk_server_tls_with_openssl_s_client() {
    if !have("openssl", "version") {
        return;
    }
    let dir = temp_dir("s_client");
    let (_server, listening) = echo_server(&["--tls", "--bind", "127.0.0.1", "0"], &dir);
    let mut client = Running::start(Command::new("openssl").args([
        "s_client",
        "-quiet",
        "-connect",
        &format!("127.0.0.1:{}", port_of(&listening)),
    ]));
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
    let mut client =
        Running::start(Command::new("ncat").args(["--ssl", "127.0.0.1", &port_of(&listening)]));
    client.send("hello over ncat\n");
    assert_eq!(client.expect_line("hello"), "hello over ncat");
}

#[test]
fn talk_client_with_ca_against_openssl_s_server() {
    if !have("openssl", "version") {
        return;
    }
    let dir = temp_dir("s_server");
    let authority = TestCa::new("interop CA");
    let leaf = authority.leaf(&["localhost"]);
    let ca = authority.write(&dir);
    let (cert, key) = leaf.write(&dir, "server");
    let mut server = Running::start(
        Command::new("openssl")
            .args(["s_server", "-accept", "127.0.0.1:0", "-cert"])
            .arg(&cert)
            .arg("-key")
            .arg(&key),
    );
    let accept = server.expect_line("ACCEPT ");
    let port = accept.rsplit(':').next().expect("a port").to_string();
    let mut client = Running::start_merged(
        twistctl()
            .args(["talk-client", "--tls", "--ca"])
            .arg(&ca)
            .args(["localhost", &port])
            .env("XDG_CONFIG_HOME", &dir),
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
    let _server = Running::start(
        Command::new("socat")
            .arg(format!("UNIX-LISTEN:{}", socket.display()))
            .arg("EXEC:cat"),
    );
    let deadline = Instant::now() + STEP;
    while !socket.exists() {
        assert!(Instant::now() < deadline, "socat never listened");
        thread::sleep(Duration::from_millis(10));
    }
    let mut client =
        Running::start(twistctl().args(["talk-client", &format!("unix:{}", socket.display())]));
    client.send("hello socat\n");
    // The end of input half-closes; cat then ends, and socat closes.
    client.close_stdin();
    assert_eq!(client.expect_line("Server: "), "Server: hello socat");
    client.expect_line("Connection lost - goodbye!");
    assert_eq!(client.status(), Some(0));
}

#[test]
fn talk_server_tls_on_a_unix_socket_with_openssl_s_client() {
    if !have("openssl", "version") {
        return;
    }
    let dir = temp_dir("s_client-unix");
    let socket = dir.join("talk.sock");
    let (server, listening) = echo_server(
        &["--listen", &format!("unix:{}:tls=1", socket.display())],
        &dir,
    );
    assert_eq!(
        listening,
        format!("Listening on unix:{} (TLS)", socket.display())
    );
    let mut client = Running::start(
        Command::new("openssl")
            .args(["s_client", "-quiet", "-unix"])
            .arg(&socket),
    );
    client.send("hello over a socket\n");
    assert_eq!(client.expect_line("hello"), "hello over a socket");
    server.expect_line("* client 1 connected from unix:");
}
