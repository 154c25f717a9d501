//! talk's behaviour over TLS (on TCP), over a UNIX socket, and over TLS on a UNIX
//! socket, end to end: the built talk-server listening by description, with a blocking
//! peer (plain, or rustls trusting a CA the test made) or the built talk-client.
//! Routing both ways, escaping, `--raw`, signals, close_notify (S-14), and talk-client
//! speaking TLS over a UNIX socket. Every wait is bounded.
mod common;

use std::path::PathBuf;

use nix::sys::signal::Signal;
use rustls::pki_types::CertificateDer;

use common::pki::TestCa;
use common::talk::{Peer, Place, Running, port_of, run_with_input, temp_dir, text, twistctl};

/// What a test runs over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Over {
    /// TLS on a loopback TCP port (`ssl:`).
    Tls,
    /// A UNIX socket in the clear.
    Unix,
    /// TLS on a UNIX socket (`unix:PATH:tls=1`).
    UnixTls,
}

const EVERY: [Over; 3] = [Over::Tls, Over::Unix, Over::UnixTls];

/// A talk-server listening one way, and how to reach it.
struct Chat {
    server: Running,
    place: Place,
    over: Over,
    ca: CertificateDer<'static>,
    ca_file: PathBuf,
    socket: PathBuf,
    /// `SHA256:...` of the server's certificate, over TLS.
    fingerprint: Option<String>,
}

impl Chat {
    /// Starts `talk-server ARGS` listening only `over` the given way, with a
    /// certificate for localhost signed by a CA of the test's.
    fn start(over: Over, args: &[&str], name: &str) -> Chat {
        let dir = temp_dir("talk-over", &format!("{name}-{over:?}"));
        let ca = TestCa::new("talk transports CA");
        let ca_file = ca.write(&dir);
        let (cert, key) = ca.leaf(&["localhost", "127.0.0.1"]).write(&dir, "server");
        let socket = dir.join("talk.sock");
        let mut command = twistctl();
        command.arg("talk-server").args(args);
        let listen = match over {
            Over::Tls => "ssl:0:interface=127.0.0.1".to_string(),
            Over::Unix => format!("unix:{}", socket.display()),
            Over::UnixTls => format!("unix:{}:tls=1", socket.display()),
        };
        if over != Over::Unix {
            command.arg("--cert").arg(&cert).arg("--key").arg(&key);
        }
        let server = Running::start(command.args(["--listen", &listen]));
        let listening = server.line();
        assert!(
            listening.starts_with("Listening on "),
            "{over:?}: {listening}"
        );
        let place = match over {
            Over::Tls => Place::Tcp(port_of(&listening).parse().expect("a port")),
            Over::Unix | Over::UnixTls => Place::Unix(socket.clone()),
        };
        let fingerprint = (over != Over::Unix).then(|| {
            let line = server.line();
            line.strip_prefix("TLS certificate ")
                .unwrap_or_else(|| panic!("{over:?}: {line}"))
                .to_string()
        });
        Chat {
            server,
            place,
            over,
            ca: ca.ca.der(),
            ca_file,
            socket,
            fingerprint,
        }
    }

    /// A peer, plain or TLS as the server speaks, announced as client `n`.
    fn peer(&self, n: u64) -> Peer {
        let peer = match self.over {
            Over::Unix => Peer::plain(&self.place),
            Over::Tls | Over::UnixTls => Peer::tls(&self.place, self.ca.clone()),
        };
        self.server
            .expect_line(&format!("* client {n} connected from "));
        peer
    }
}

#[test]
fn lines_are_routed_both_ways_over_tls_and_unix() {
    for over in EVERY {
        let mut chat = Chat::start(over, &[], "routing");
        let mut first = chat.peer(1);
        first.send(b"hello from one\n");
        chat.server.expect_line("Client 1: hello from one");
        let mut second = chat.peer(2);
        second.send(b"hello from two\n");
        chat.server.expect_line("Client 2: hello from two");
        // Plain text goes to the client that spoke last; /to and /all as asked.
        chat.server.type_line("answer for two");
        assert!(
            text(&second.read_until(b"\r\n")).ends_with("answer for two\r\n"),
            "{over:?}"
        );
        chat.server.type_line("/to 1 answer for one");
        assert_eq!(
            text(&first.read_until(b"\r\n")),
            "answer for one\r\n",
            "{over:?}"
        );
        chat.server.type_line("/all to everyone");
        for peer in [&mut first, &mut second] {
            assert_eq!(
                text(&peer.read_until(b"\r\n")),
                "to everyone\r\n",
                "{over:?}"
            );
        }
        chat.server.type_line("/who");
        let who = chat.server.expect_line("* client 1 ");
        let transport = match over {
            Over::Tls => " tls TLSv1.3 idle ",
            Over::Unix => " unix idle ",
            Over::UnixTls => " tls TLSv1.3 idle ",
        };
        assert!(who.contains(transport), "{over:?}: {who}");
        // The end of the operator's input is /quit: both are closed in order (over
        // TLS with close_notify, which read_to_close insists on).
        assert_eq!(chat.server.finish(), Some(0), "{over:?}");
        assert!(first.read_to_close().is_empty(), "{over:?}");
        assert!(second.read_to_close().is_empty(), "{over:?}");
    }
}

#[test]
fn hostile_bytes_from_a_peer_are_shown_escaped_over_tls_and_unix() {
    for over in EVERY {
        let chat = Chat::start(over, &[], "escaping");
        let mut peer = chat.peer(1);
        peer.send(b"\x1b[2J\x1b]0;pwned\x07 \xff\xfe \xc2\x9b \xe2\x80\xae back\\slash\n");
        let line = chat.server.expect_line("Client 1: ");
        assert_eq!(
            line, "Client 1: \\x1b[2J\\x1b]0;pwned\\x07 \\xff\\xfe \\u{9b} \\u{202e} back\\\\slash",
            "{over:?}"
        );
    }
}

#[test]
fn raw_mode_over_tls_and_unix() {
    for over in EVERY {
        let mut chat = Chat::start(over, &["--raw"], "raw");
        let mut peer = chat.peer(1);
        peer.send(b"hello");
        chat.server.expect_line("Client 1: hello");
        chat.server.type_line("hi");
        chat.server.type_line("bye");
        assert_eq!(text(&peer.read_to_close()), "hibye", "{over:?}");
        chat.server.expect_line("* client 1 disconnected: bye");
    }
}

#[test]
fn sigterm_and_sigint_end_the_server_with_tls_and_unix_clients_connected() {
    for over in EVERY {
        let mut chat = Chat::start(over, &[], "sigterm");
        let mut peer = chat.peer(1);
        peer.send(b"hi\n");
        chat.server.expect_line("Client 1: hi");
        chat.server.signal(Signal::SIGTERM);
        // Closed in order: over TLS with close_notify.
        assert!(peer.read_to_close().is_empty(), "{over:?}");
        assert_eq!(chat.server.status(), Some(143), "{over:?}");
        let rest = chat.server.rest();
        assert!(
            rest.contains(&"* client 1 disconnected: server shutting down".to_string()),
            "{over:?}: {rest:?}"
        );
        if over == Over::Unix {
            assert!(
                !chat.socket.exists(),
                "the socket file is removed at the end"
            );
        }

        let mut chat = Chat::start(over, &["--echo"], "sigint");
        let mut peer = chat.peer(1);
        peer.send(b"ping\n");
        assert_eq!(text(&peer.read_until(b"\r\n")), "ping\r\n", "{over:?}");
        chat.server.signal(Signal::SIGINT);
        assert!(peer.read_to_close().is_empty(), "{over:?}");
        assert_eq!(chat.server.status(), Some(130), "{over:?}");
    }
}

#[test]
fn s14_a_tls_clients_close_notify_ends_its_stream_and_the_server_says_so() {
    for over in [Over::Tls, Over::UnixTls] {
        let chat = Chat::start(over, &[], "close-notify");
        let mut peer = chat.peer(1);
        peer.send(b"last words\n");
        chat.server.expect_line("Client 1: last words");
        peer.end();
        // No half-close over TLS: the client is gone, not "finished sending".
        let line = chat.server.expect_line("* client 1 ");
        assert_eq!(line, "* client 1 disconnected: closed by peer", "{over:?}");
        // The server answered with its own close_notify.
        assert!(peer.read_to_close().is_empty(), "{over:?}");
    }
}

#[test]
fn a_tls_client_that_ends_without_close_notify_is_reported_as_truncated() {
    for over in [Over::Tls, Over::UnixTls] {
        for echo in [false, true] {
            let args: &[&str] = if echo { &["--echo"] } else { &[] };
            let chat = Chat::start(over, args, "truncated");
            let mut peer = chat.peer(1);
            peer.send(b"hi\n");
            if echo {
                peer.read_until(b"hi");
            } else {
                chat.server.expect_line("Client 1: hi");
            }
            peer.truncate();
            let line = chat.server.expect_line("* client 1 ");
            assert_eq!(
                line,
                "* client 1 disconnected: the peer closed the connection without a TLS \
                 close_notify (truncated)",
                "{over:?}, echo {echo}"
            );
        }
    }
}

#[test]
fn talk_client_speaks_tls_over_a_unix_socket_pinned_or_verified_by_sni() {
    let chat = Chat::start(Over::UnixTls, &["--echo"], "client");
    let socket = format!("unix:{}", chat.socket.display());
    let fingerprint = chat.fingerprint.clone().expect("a fingerprint");
    let talk = |args: &[&str]| {
        run_with_input(
            twistctl()
                .args(["talk-client", "--tls", "--linger", "1s"])
                .args(args)
                .arg(&socket),
            "hello over tls\n",
        )
    };
    let ca = chat.ca_file.to_str().unwrap();

    let pinned = talk(&["--fingerprint", &fingerprint]);
    assert!(
        text(&pinned.stdout).starts_with("Server: hello over tls\n"),
        "{}",
        text(&pinned.stderr)
    );
    chat.server.expect_line("* client 1 connected from unix:");

    let verified = talk(&["--ca", ca, "--sni", "localhost"]);
    assert!(
        text(&verified.stdout).starts_with("Server: hello over tls\n"),
        "{}",
        text(&verified.stderr)
    );

    // The name is checked as over TCP.
    let mismatched = talk(&["--ca", ca, "--sni", "other.test"]);
    assert_eq!(mismatched.status.code(), Some(1));
    assert!(
        text(&mismatched.stderr).contains("name mismatch"),
        "{}",
        text(&mismatched.stderr)
    );
    assert!(mismatched.stdout.is_empty());

    // A UNIX socket has no host name to verify for: one must be given, or a pin.
    let nameless = talk(&["--ca", ca]);
    assert_eq!(nameless.status.code(), Some(2));
    let stderr = text(&nameless.stderr);
    assert!(
        stderr.contains(&format!("'{socket}'")) && stderr.contains("--sni NAME"),
        "{stderr}"
    );

    // Nobody vouches for an unknown certificate and nothing can remember it: refused
    // with how to pin it, never offered.
    let unknown = talk(&["--sni", "localhost"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        text(&unknown.stderr).contains(&format!("--fingerprint {fingerprint}")),
        "{}",
        text(&unknown.stderr)
    );
}

#[test]
fn piped_input_over_tls_sends_no_close_notify_and_lingers_as_over_tcp() {
    for over in [Over::Tls, Over::UnixTls] {
        let chat = Chat::start(over, &["--echo"], "linger");
        let target = match &chat.place {
            Place::Tcp(port) => vec!["127.0.0.1".to_string(), port.to_string()],
            Place::Unix(path) => vec![format!("unix:{}", path.display())],
        };
        let fingerprint = chat.fingerprint.clone().expect("a fingerprint");
        let out = run_with_input(
            twistctl()
                .args(["talk-client", "--tls", "--linger", "1s"])
                .args(["--fingerprint", &fingerprint])
                .args(&target),
            "hello\nagain\n",
        );
        // The echo server cannot learn that the input ended (no half-close over TLS),
        // so it never closes: the replies come, then --linger gives up as over TCP.
        assert!(
            text(&out.stdout).starts_with("Server: hello\nServer: again\n"),
            "{over:?}: {}",
            text(&out.stdout)
        );
        assert_eq!(
            out.status.code(),
            Some(124),
            "{over:?}: {}",
            text(&out.stderr)
        );
        chat.server.expect_line("* client 1 connected from ");
        chat.server.expect_line("* client 1 disconnected");
    }
}

#[test]
fn a_full_tls_server_tells_the_operator_of_refusals_only_after_the_handshake() {
    for over in [Over::Tls, Over::UnixTls] {
        let chat = Chat::start(over, &["--max-clients", "1"], "full");
        let _first = chat.peer(1);
        // Plain bytes where a ClientHello belongs: refused by the TLS layer, unseen.
        let mut plain = Peer::plain(&chat.place);
        plain.send(b"not a handshake\r\n");
        let alert = plain.read_to_close();
        assert!(!text(&alert).contains("server full"), "{over:?}: {alert:?}");
        // A real TLS client is told, after its handshake, and the operator sees it.
        let mut second = Peer::tls(&chat.place, chat.ca.clone());
        assert_eq!(
            text(&second.read_to_close()),
            "error: server full\r\n",
            "{over:?}"
        );
        chat.server.signal(Signal::SIGTERM);
        let said = chat.server.rest();
        let refusals: Vec<&String> = said.iter().filter(|l| l.contains("refused")).collect();
        assert_eq!(refusals.len(), 1, "{over:?}: {said:?}");
        assert!(
            refusals[0].starts_with("* connection from ")
                && refusals[0].ends_with(" refused: server full"),
            "{over:?}: {said:?}"
        );
    }
}
