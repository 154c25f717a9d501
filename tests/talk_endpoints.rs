//! talk on several endpoints at once: the built talk-server with `--listen` on TCP,
//! TLS and a UNIX socket in a temporary folder, a talk-client on each, `/who` naming
//! every client's transport, and the UNIX socket's stale-file rules. Every wait is
//! bounded.
mod common;

use std::io::Write;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use twistctl::reactor::tls::ServerIdentity;

use common::talk::{Running, STEP, port_of, twistctl};

fn temp_dir(name: &str) -> PathBuf {
    common::talk::temp_dir("talk-ep", name)
}

fn write_identity(dir: &Path) -> (PathBuf, PathBuf, String) {
    let (identity, pem) =
        ServerIdentity::generate(&["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("a certificate");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, pem.cert_pem).unwrap();
    std::fs::write(&key, pem.key_pem).unwrap();
    (cert, key, format!("SHA256:{}", identity.fingerprint()))
}

#[test]
fn listening_on_tcp_tls_and_unix_at_once_with_a_client_on_each() {
    let dir = temp_dir("three");
    let (cert, key, fingerprint) = write_identity(&dir);
    let socket = dir.join("talk.sock");
    let mut server = Running::start(twistctl().args([
        "talk-server",
        "--listen",
        "tcp:0:interface=127.0.0.1",
        "--listen",
        &format!(
            "ssl:0:interface=127.0.0.1:privateKey={}:certKey={}",
            key.display(),
            cert.display()
        ),
        "--listen",
        &format!("unix:{}", socket.display()),
    ]));
    let tcp = server.line();
    let tls = server.line();
    let unix = server.line();
    assert!(tcp.starts_with("Listening on 127.0.0.1:"), "{tcp}");
    assert!(
        tls.starts_with("Listening on 127.0.0.1:") && tls.ends_with(" (TLS)"),
        "{tls}"
    );
    assert_eq!(unix, format!("Listening on unix:{}", socket.display()));
    assert_eq!(server.line(), format!("TLS certificate {fingerprint}"));

    let mut on_tcp = Running::start(twistctl().args(["talk-client", "127.0.0.1", &port_of(&tcp)]));
    server.expect_line("* client 1 connected from 127.0.0.1:");
    on_tcp.type_line("over tcp");
    server.expect_line("Client 1: over tcp");

    let mut on_tls = Running::start(twistctl().args([
        "talk-client",
        "--fingerprint",
        &fingerprint,
        &format!("tls:127.0.0.1:{}", port_of(&tls)),
    ]));
    server.expect_line("* client 2 connected from 127.0.0.1:");
    on_tls.type_line("over tls");
    server.expect_line("Client 2: over tls");

    let mut on_unix =
        Running::start(twistctl().args(["talk-client", &format!("unix:{}", socket.display())]));
    let announced = server.expect_line("* client 3 connected from");
    assert_eq!(
        announced,
        format!(
            "* client 3 connected from unix:{} (pid {}, uid {})",
            socket.display(),
            on_unix.child.id(),
            // Our uid: the owner of the folder we made.
            std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&dir).unwrap())
        )
    );
    on_unix.type_line("over unix");
    server.expect_line("Client 3: over unix");

    server.type_line("/who");
    let who: Vec<String> = (0..3).map(|_| server.expect_line("* client ")).collect();
    assert!(who[0].contains(" tcp idle "), "{who:?}");
    assert!(who[1].contains(" tls TLSv1.3 idle "), "{who:?}");
    assert!(
        who[2].starts_with(&format!("* client 3 unix:{}", socket.display())),
        "{who:?}"
    );
    assert!(who[2].contains(" unix idle "), "{who:?}");

    server.type_line("/all hello everyone");
    for client in [&on_tcp, &on_tls, &on_unix] {
        assert_eq!(client.expect_line("Server: "), "Server: hello everyone");
    }
    // The end of the operator's input is /quit: every client is closed and ends.
    assert_eq!(server.finish(), Some(0));
    for client in [on_tcp, on_tls, on_unix] {
        assert_eq!(client.finish(), Some(0));
    }
    assert!(!socket.exists(), "the socket file is removed at the end");
}

#[test]
fn a_stale_socket_file_is_reused_and_a_live_one_refused() {
    let dir = temp_dir("stale");
    let socket = dir.join("talk.sock");
    // A socket file nobody accepts on any more: its server is gone.
    drop(UnixListener::bind(&socket).expect("bind"));
    assert!(socket.exists());
    let mut server = Running::start(twistctl().args([
        "talk-server",
        "--echo",
        "--listen",
        &format!("unix:{}", socket.display()),
    ]));
    assert_eq!(
        server.line(),
        format!("Listening on unix:{}", socket.display())
    );
    let client = assert_cmd::Command::cargo_bin("twistctl")
        .unwrap()
        .args(["talk-client", &format!("unix:{}", socket.display())])
        .write_stdin("ping\n")
        .timeout(STEP)
        .output()
        .expect("talk-client runs");
    assert_eq!(
        String::from_utf8_lossy(&client.stdout),
        "Server: ping\nConnection lost - goodbye!\n"
    );
    assert_eq!(client.status.code(), Some(0));

    // While that server accepts, a second one is refused and the socket stays its.
    let second = assert_cmd::Command::cargo_bin("twistctl")
        .unwrap()
        .args([
            "talk-server",
            "--echo",
            "--listen",
            &format!("unix:{}", socket.display()),
        ])
        .timeout(STEP)
        .output()
        .expect("the second server runs");
    assert_eq!(second.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains(&socket.display().to_string()), "{stderr}");
    server.type_line("unused");
    drop(server.stdin.take());
    let _ = server.child.kill();
}

#[test]
fn limits_hold_on_a_unix_socket_max_clients_and_max_line() {
    use std::io::Read;
    use std::os::unix::net::UnixStream;
    let dir = temp_dir("limits");
    let socket = dir.join("talk.sock");
    let server = Running::start(twistctl().args([
        "talk-server",
        "--max-clients",
        "1",
        "--max-line",
        "8",
        "--listen",
        &format!("unix:{}", socket.display()),
    ]));
    server.expect_line("Listening on unix:");
    let read_all = |stream: &mut UnixStream| {
        stream.set_read_timeout(Some(STEP)).unwrap();
        let mut text = String::new();
        let _ = stream.read_to_string(&mut text);
        text
    };
    let mut first = UnixStream::connect(&socket).expect("connect");
    server.expect_line("* client 1 connected from unix:");
    let mut second = UnixStream::connect(&socket).expect("connect");
    assert_eq!(read_all(&mut second), "error: server full\r\n");
    first.write_all(b"123456789\n").unwrap();
    assert_eq!(read_all(&mut first), "error: line too long\r\n");
    server.expect_line("* client 1 disconnected: line too long");
}

#[test]
fn the_short_form_and_listen_combine_and_ssl_without_files_serves_the_cert_option() {
    let dir = temp_dir("combined");
    let (cert, key, fingerprint) = write_identity(&dir);
    let server = Running::start(twistctl().args([
        "talk-server",
        "--bind",
        "127.0.0.1",
        "0",
        "--tls",
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--listen",
        "tcp:0:interface=127.0.0.1",
        "--listen",
        "ssl:0:interface=127.0.0.1",
    ]));
    // The short form first, then the descriptions in order, then one fingerprint.
    let short = server.line();
    let plain = server.line();
    let described = server.line();
    assert!(
        short.starts_with("Listening on 127.0.0.1:") && short.ends_with(" (TLS)"),
        "{short}"
    );
    assert!(
        plain.starts_with("Listening on 127.0.0.1:") && !plain.ends_with(" (TLS)"),
        "{plain}"
    );
    assert!(described.ends_with(" (TLS)"), "{described}");
    assert_eq!(server.line(), format!("TLS certificate {fingerprint}"));

    let mut clients = Vec::new();
    for (n, (line, tls)) in [(&short, true), (&plain, false), (&described, true)]
        .into_iter()
        .enumerate()
    {
        let mut args = vec!["talk-client".to_string()];
        if tls {
            args.extend(["--tls".into(), "--fingerprint".into(), fingerprint.clone()]);
        }
        args.extend(["127.0.0.1".into(), port_of(line)]);
        let mut client = Running::start(twistctl().args(&args));
        server.expect_line(&format!("* client {} connected from 127.0.0.1:", n + 1));
        client.type_line(&format!("hello from {}", n + 1));
        server.expect_line(&format!("Client {}: hello from {}", n + 1, n + 1));
        clients.push(client);
    }
    assert_eq!(server.finish(), Some(0));
    for client in clients {
        assert_eq!(client.finish(), Some(0));
    }
}

#[test]
fn listen_errors_name_the_bad_value() {
    let run = |args: &[&str]| {
        assert_cmd::Command::cargo_bin("twistctl")
            .unwrap()
            .arg("talk-server")
            .args(args)
            .timeout(STEP)
            .output()
            .expect("talk-server runs")
    };
    let out = run(&["--listen", "ssl:0:certKey=c.pem"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("'ssl:0:certKey=c.pem'") && stderr.contains("privateKey is missing"),
        "{stderr}"
    );

    let out = run(&["--listen", "unix:/nowhere/t.sock:tls=2"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("tls '2' is not 1 or 0"));

    // A certificate option nothing would serve is a usage error, not silently unused.
    let out = run(&["--cert-dir", "/tmp", "--listen", "tcp:0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--cert-dir would not be used"));

    let dir = temp_dir("listen-errors");
    let missing = dir.join("missing.pem");
    let described = format!("ssl:0:privateKey={0}:certKey={0}", missing.display());
    let out = run(&[
        "--listen",
        "tcp:0:interface=127.0.0.1",
        "--listen",
        &described,
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("--listen {described}")),
        "{stderr}"
    );
    assert!(stderr.contains("No such file"), "{stderr}");
}
