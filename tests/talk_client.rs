//! `twistctl talk-client` end to end: the built binary against a test server made of a
//! `std::net::TcpListener` on 127.0.0.1 in a thread. Every read has a timeout and every
//! wait is bounded, so a broken client fails a test instead of hanging it.
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use assert_cmd::cargo::CommandCargoExt;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use common::{loopback_listener, read_until_contains};

/// How long any single step may take before the test fails.
const STEP: Duration = Duration::from_secs(10);

fn twistctl() -> Command {
    Command::cargo_bin("twistctl").expect("the twistctl binary is built for tests")
}

/// A listening test server on an ephemeral loopback port.
struct TestServer {
    listener: TcpListener,
    address: SocketAddr,
}

impl TestServer {
    fn new() -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let address = listener.local_addr().expect("the bound address");
        TestServer { listener, address }
    }

    fn port(&self) -> String {
        self.address.port().to_string()
    }

    /// Accepts one client in a thread and runs `script` on it, with read and write
    /// timeouts set. The accepted stream is signalled on `accepted` first.
    fn serve<T: Send + 'static>(
        self,
        script: impl FnOnce(TcpStream) -> T + Send + 'static,
    ) -> (JoinHandle<T>, Receiver<()>) {
        let (accepted_tx, accepted) = mpsc::channel();
        let handle = thread::spawn(move || {
            self.listener
                .set_nonblocking(false)
                .expect("a blocking listener");
            let (stream, _) = self.listener.accept().expect("a client connects");
            stream.set_read_timeout(Some(STEP)).expect("read timeout");
            stream.set_write_timeout(Some(STEP)).expect("write timeout");
            let _ = accepted_tx.send(());
            script(stream)
        });
        (handle, accepted)
    }
}

/// A test server on an ephemeral loopback port that runs `script` on its one client
/// (see [`TestServer::serve`]); the port to give the client, and the server thread.
fn serve_one<T: Send + 'static>(
    script: impl FnOnce(TcpStream) -> T + Send + 'static,
) -> (String, JoinHandle<T>) {
    let server = TestServer::new();
    let port = server.port();
    let (served, _) = server.serve(script);
    (port, served)
}

/// Reads until the peer's EOF (or a reset); the bytes and whether it ended in EOF.
fn read_to_eof(stream: &mut TcpStream) -> (Vec<u8>, bool) {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (received, true),
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                assert!(
                    e.kind() != std::io::ErrorKind::WouldBlock
                        && e.kind() != std::io::ErrorKind::TimedOut,
                    "the client neither closed nor half-closed within {STEP:?}; got {:?}",
                    String::from_utf8_lossy(&received)
                );
                return (received, false);
            }
        }
    }
}

/// A running twistctl (a talk-client, or the talk-server it talks to) with its stdout
/// read line by line as it comes.
struct Client {
    pid: Pid,
    stdin: Option<ChildStdin>,
    lines: Receiver<Vec<u8>>,
    stderr: Receiver<String>,
    exited: Receiver<Option<i32>>,
}

/// How a client run ended.
struct Finished {
    code: Option<i32>,
    stdout: Vec<Vec<u8>>,
    stderr: String,
}

impl Finished {
    /// Asserts the whole of stdout, as lines, and the exit status.
    fn assert_ended(&self, stdout: &[&str], code: i32) {
        assert_eq!(self.stdout_text(), stdout, "stderr: {}", self.stderr);
        assert_eq!(self.code, Some(code), "stderr: {}", self.stderr);
    }

    fn stdout_text(&self) -> Vec<String> {
        self.stdout
            .iter()
            .map(|l| {
                String::from_utf8_lossy(l)
                    .trim_end_matches('\n')
                    .to_string()
            })
            .collect()
    }
}

impl Client {
    /// `twistctl talk-client ARGS...`.
    fn spawn(args: &[&str]) -> Client {
        let mut all = vec!["talk-client"];
        all.extend_from_slice(args);
        Client::spawn_twistctl(&all)
    }

    /// `twistctl ARGS...`, any subcommand.
    fn spawn_twistctl(args: &[&str]) -> Client {
        let mut child = twistctl()
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("twistctl starts");
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("a pid"));
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let mut stderr_pipe = child.stderr.take().expect("piped stderr");
        let (line_tx, lines) = mpsc::channel();
        thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            loop {
                let mut line = Vec::new();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        if line_tx.send(line).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        let (stderr_tx, stderr) = mpsc::channel();
        thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr_pipe.read_to_string(&mut text);
            let _ = stderr_tx.send(text);
        });
        let (exit_tx, exited) = mpsc::channel();
        thread::spawn(move || {
            let status = child.wait().ok().and_then(|s| s.code());
            let _ = exit_tx.send(status);
        });
        Client {
            pid,
            stdin,
            lines,
            stderr,
            exited,
        }
    }

    /// `twistctl talk-client ARGS...` given `input` on stdin, which then ends; how it
    /// ended.
    fn run_with_input(args: &[&str], input: &str) -> Finished {
        let mut client = Client::spawn(args);
        if !input.is_empty() {
            client.type_text(input);
        }
        client.close_stdin();
        client.finish()
    }

    /// `twistctl talk-client ARGS...` whose stdin gets `input` and then ends, running.
    fn run_piped(args: &[&str], input: &str) -> Client {
        let mut client = Client::spawn(args);
        client.type_text(input);
        client.close_stdin();
        client
    }

    fn type_text(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin.write_all(text.as_bytes()).expect("write to stdin");
        stdin.flush().expect("flush stdin");
    }

    fn close_stdin(&mut self) {
        self.stdin.take();
    }

    fn next_line(&self) -> String {
        let line = self
            .lines
            .recv_timeout(STEP)
            .expect("a line on stdout in time");
        String::from_utf8_lossy(&line)
            .trim_end_matches('\n')
            .to_string()
    }

    fn signal(&self, signal: Signal) {
        kill(self.pid, signal).expect("signal the client");
    }

    /// Waits (bounded) for the exit; kills the client if it does not exit in time.
    fn finish(self) -> Finished {
        let code = match self.exited.recv_timeout(STEP) {
            Ok(code) => code,
            Err(RecvTimeoutError::Timeout) => {
                let _ = kill(self.pid, Signal::SIGKILL);
                panic!("talk-client did not exit within {STEP:?}");
            }
            Err(RecvTimeoutError::Disconnected) => None,
        };
        drop(self.stdin);
        let mut stdout = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(STEP) {
            stdout.push(line);
        }
        let stderr = self.stderr.recv_timeout(STEP).unwrap_or_default();
        Finished {
            code,
            stdout,
            stderr,
        }
    }
}

#[test]
fn scripted_mode_prints_every_reply_that_comes_after_the_end_of_input() {
    let (port, served) = serve_one(|mut stream| {
        // Replies only once the client's input has ended: a client that quit at the end
        // of its input would lose them.
        let (received, eof) = read_to_eof(&mut stream);
        stream
            .write_all(b"reply one\r\nreply two\n")
            .expect("write replies");
        (received, eof)
    });
    let finished =
        Client::run_with_input(&["127.0.0.1", &port], "  hello there \n\n \t \nsecond\n");
    let (received, eof) = served.join().expect("the server thread");
    assert_eq!(
        received, b"  hello there\r\nsecond\r\n",
        "leading blanks kept, trailing ones dropped, no empty lines"
    );
    assert!(eof, "the end of input is a half-close");
    finished.assert_ended(
        &[
            "Server: reply one",
            "Server: reply two",
            "Connection lost - goodbye!",
        ],
        0,
    );
}

#[test]
fn scripted_hello_bye_loses_no_reply() {
    let (port, served) = serve_one(|mut stream| {
        let received = read_until_contains(&mut stream, b"bye\r\n");
        stream
            .write_all(b"echo: hello\r\nbye\r\n")
            .expect("write replies");
        stream.shutdown(Shutdown::Both).expect("close");
        received
    });
    let finished = Client::run_with_input(&["127.0.0.1", &port], "hello\nbye\n");
    assert_eq!(
        served.join().expect("the server thread"),
        b"hello\r\nbye\r\n"
    );
    finished.assert_ended(
        &[
            "Server: echo: hello",
            "Server: bye",
            "Connection lost - goodbye!",
        ],
        0,
    );
}

#[test]
fn bye_half_closes_so_the_server_sees_eof_and_can_still_answer() {
    let (port, served) = serve_one(|mut stream| {
        // stdin stays open on the client: this EOF can only come from `bye`.
        let (received, eof) = read_to_eof(&mut stream);
        stream
            .write_all(b"answer after eof\n")
            .expect("the client still reads");
        (received, eof)
    });
    let mut client = Client::spawn(&["127.0.0.1", &port]);
    client.type_text("bye\n");
    assert_eq!(client.next_line(), "Server: answer after eof");
    let (received, eof) = served.join().expect("the server thread");
    assert_eq!(received, b"bye\r\n");
    assert!(eof);
    let finished = client.finish();
    finished.assert_ended(&["Connection lost - goodbye!"], 0);
}

#[test]
fn after_bye_the_client_gives_up_with_124_if_the_server_does_not_close() {
    let (release, released) = mpsc::channel::<()>();
    let (port, served) = serve_one(move |mut stream| {
        let (received, eof) = read_to_eof(&mut stream);
        // Stay open (reads would only repeat the EOF): the client must give up on its
        // own, 2 s after bye.
        let _ = released.recv_timeout(STEP);
        (received, eof)
    });
    let mut client = Client::spawn(&["127.0.0.1", &port]);
    let started = Instant::now();
    client.type_text("bye\n");
    let finished = client.finish();
    let waited = started.elapsed();
    let _ = release.send(());
    let (received, eof) = served.join().expect("the server thread");
    assert_eq!(received, b"bye\r\n");
    assert!(eof);
    finished.assert_ended(&[], 124);
    assert_eq!(
        finished.stderr,
        "* the server had not closed after 2s; giving up\n"
    );
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_secs(8),
        "closed after {waited:?}, expected about 2 s"
    );
}

#[test]
fn linger_bounds_the_wait_after_the_end_of_input() {
    let (release, released) = mpsc::channel::<()>();
    let (port, served) = serve_one(move |mut stream| {
        let (received, _) = read_to_eof(&mut stream);
        stream.write_all(b"thinking...\n").expect("write");
        let _ = released.recv_timeout(STEP);
        received
    });
    let started = Instant::now();
    let finished = Client::run_with_input(
        &["127.0.0.1", &port, "--linger", "300ms"],
        "what time is it?\n",
    );
    let waited = started.elapsed();
    let _ = release.send(());
    assert_eq!(served.join().unwrap(), b"what time is it?\r\n");
    finished.assert_ended(&["Server: thinking..."], 124);
    assert_eq!(
        finished.stderr,
        "* the server had not closed after 300ms; giving up\n"
    );
    assert!(waited < Duration::from_secs(8), "{waited:?}");
}

#[test]
fn without_linger_the_end_of_input_waits_as_long_as_the_server_takes() {
    let (port, served) = serve_one(|mut stream| {
        let (received, _) = read_to_eof(&mut stream);
        // Longer than the 2 s limit that applies after bye.
        thread::sleep(Duration::from_millis(2500));
        stream.write_all(b"late answer\n").expect("write");
        received
    });
    let finished = Client::run_with_input(&["127.0.0.1", &port], "question\n");
    assert_eq!(served.join().unwrap(), b"question\r\n");
    finished.assert_ended(&["Server: late answer", "Connection lost - goodbye!"], 0);
}

#[test]
fn an_unterminated_last_line_from_the_server_is_shown_in_line_and_raw_mode() {
    for raw in [false, true] {
        let (port, served) = serve_one(|mut stream| {
            stream.write_all(b"first\nfinal words").expect("write");
        });
        let mut args = vec!["127.0.0.1", &port];
        if raw {
            args.push("--raw");
        }
        let client = Client::spawn(&args);
        served.join().expect("the server thread");
        let finished = client.finish();
        let expected: &[&str] = if raw {
            // One read may bring both parts: raw mode shows reads, not lines.
            &[]
        } else {
            &[
                "Server: first",
                "Server: final words",
                "Connection lost - goodbye!",
            ]
        };
        if raw {
            let text = finished.stdout_text().join("|");
            assert!(
                text.contains("final words") && text.ends_with("|Connection lost - goodbye!"),
                "{text}"
            );
            assert_eq!(finished.code, Some(0));
        } else {
            finished.assert_ended(expected, 0);
        }
    }
}

#[test]
fn the_server_closing_ends_the_client_with_goodbye_and_status_0() {
    let (port, served) = serve_one(|mut stream| {
        stream.write_all(b"hi\r\n").expect("write");
        // Closing drops the stream.
    });
    // stdin stays open: the end comes from the server alone.
    let client = Client::spawn(&["127.0.0.1", &port]);
    served.join().expect("the server thread");
    let finished = client.finish();
    finished.assert_ended(&["Server: hi", "Connection lost - goodbye!"], 0);
}

#[test]
fn a_refused_connection_says_so_on_stderr_and_exits_1() {
    // A port that was free a moment ago: nothing listens there now.
    let (_, port) = loopback_listener();
    let finished = Client::run_with_input(&["127.0.0.1", &port.to_string()], "");
    assert_eq!(finished.code, Some(1));
    assert!(finished.stdout.is_empty(), "{:?}", finished.stdout_text());
    assert_eq!(
        finished.stderr.trim_end(),
        format!("Connection failed - goodbye! (127.0.0.1:{port}: connection refused)")
    );
}

#[test]
fn verbose_logs_each_attempt_with_its_address_outcome_and_time() {
    let (_, port) = loopback_listener();
    let finished = Client::run_with_input(&["-v", "localhost", &port.to_string()], "");
    assert_eq!(finished.code, Some(1));
    let stderr = &finished.stderr;
    assert!(
        stderr.contains("twistctl: localhost resolved to "),
        "the addresses the name resolved to: {stderr}"
    );
    let attempt = stderr
        .lines()
        .find(|line| line.contains(&format!("trying 127.0.0.1:{port} at +")))
        .unwrap_or_else(|| panic!("no attempt line: {stderr}"));
    assert!(
        attempt.starts_with(&format!("twistctl: localhost port {port}: ")),
        "{attempt}"
    );
    assert!(attempt.contains(": connection refused after "), "{attempt}");
}

#[test]
fn when_no_address_of_a_name_connects_each_one_tried_is_reported() {
    let (_, port) = loopback_listener();
    let finished = Client::run_with_input(&["localhost", &port.to_string()], "");
    assert_eq!(finished.code, Some(1));
    let stderr = finished.stderr.trim_end();
    assert!(
        stderr.starts_with("Connection failed - goodbye! ("),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("127.0.0.1:{port}: connection refused")),
        "{stderr}"
    );
    // Every address localhost has is named, not only the last one tried.
    let named = stderr.matches(": connection refused").count();
    let addresses = std::net::ToSocketAddrs::to_socket_addrs(&("localhost", port))
        .unwrap()
        .collect::<std::collections::HashSet<_>>()
        .len();
    assert_eq!(named, addresses, "{stderr}");
}

#[test]
fn an_unresolvable_name_fails_with_status_1() {
    let finished = Client::run_with_input(&["no-such-host.invalid", "8000", "--timeout", "5s"], "");
    assert_eq!(finished.code, Some(1));
    assert!(
        finished
            .stderr
            .starts_with("Connection failed - goodbye! ("),
        "{}",
        finished.stderr
    );
    assert!(
        finished.stderr.contains("no-such-host.invalid"),
        "{}",
        finished.stderr
    );
}

#[test]
fn a_host_name_is_resolved_and_each_address_tried() {
    // `localhost` may resolve to ::1 first, where nothing listens: the client must go on
    // to 127.0.0.1.
    let (port, served) = serve_one(|mut stream| {
        let received = read_until_contains(&mut stream, b"over\r\n");
        stream.write_all(b"roger\n").expect("write");
        received
    });
    let mut client = Client::spawn(&["localhost", &port]);
    client.type_text("over\n");
    assert_eq!(client.next_line(), "Server: roger");
    assert_eq!(served.join().expect("the server thread"), b"over\r\n");
    let finished = client.finish();
    finished.assert_ended(&["Connection lost - goodbye!"], 0);
}

#[test]
fn raw_mode_shows_unterminated_text_at_once_and_sends_lines_without_newline() {
    let (port, served) = serve_one(|mut stream| {
        stream.write_all(b"hello").expect("write without newline");
        let first = read_until_contains(&mut stream, b"hi");
        stream.write_all(b"bye").expect("write");
        let (rest, eof) = read_to_eof(&mut stream);
        (first, rest, eof)
    });
    let mut client = Client::spawn(&["--raw", "127.0.0.1", &port]);
    assert_eq!(
        client.next_line(),
        "Server: hello",
        "shown with no newline sent"
    );
    client.type_text("hi\n");
    assert_eq!(client.next_line(), "Server: bye");
    client.type_text("bye\n");
    let (first, rest, eof) = served.join().expect("the server thread");
    assert_eq!(first, b"hi", "no newline after a typed line");
    assert_eq!(rest, b"bye");
    assert!(eof, "the tutorial's client closes after sending bye");
    let finished = client.finish();
    finished.assert_ended(&["Connection lost - goodbye!"], 0);
}

#[test]
fn escaped_output_contains_no_escape_byte() {
    let (port, served) = serve_one(|mut stream| {
        let mut hostile = b"\x1b]0;PWNED\x07\x1b[2J\x1b[31mred".to_vec();
        hostile.extend_from_slice("\u{9b}1m\r\nback\\slash\u{ff}\n".as_bytes());
        hostile.extend_from_slice(b"bad utf8 \xff\xfe\n");
        stream.write_all(&hostile).expect("write");
    });
    let client = Client::spawn(&["127.0.0.1", &port]);
    served.join().expect("the server thread");
    let finished = client.finish();
    let all: Vec<u8> = finished.stdout.concat();
    assert!(!all.contains(&0x1b), "an ESC byte reached the terminal");
    assert!(!all.contains(&0x07), "a BEL byte reached the terminal");
    assert!(!all.contains(&0x9b) && !all.windows(2).any(|w| w == [0xc2, 0x9b]));
    finished.assert_ended(
        &[
            "Server: \\x1b]0;PWNED\\x07\\x1b[2J\\x1b[31mred\\u{9b}1m",
            "Server: back\\\\slash\u{ff}",
            "Server: bad utf8 \\xff\\xfe",
            "Connection lost - goodbye!",
        ],
        0,
    );
}

#[test]
fn bidi_and_invisible_characters_from_the_server_are_shown_escaped_and_emoji_kept() {
    let (port, served) = serve_one(|mut stream| {
        let text =
            "if \u{202e}}\u{2066}admin\u{2069}\u{200f} \u{3164}\u{2060}ok \u{2764}\u{fe0f}\n";
        stream.write_all(text.as_bytes()).expect("write");
    });
    let client = Client::spawn(&["127.0.0.1", &port]);
    served.join().expect("the server thread");
    client.finish().assert_ended(
        &[
            "Server: if \\u{202e}}\\u{2066}admin\\u{2069}\\u{200f} \\u{3164}\\u{2060}ok \u{2764}\u{fe0f}",
            "Connection lost - goodbye!",
        ],
        0,
    );
}

#[test]
fn a_server_line_over_64_kib_disconnects_with_a_clear_message() {
    let (port, served) = serve_one(|mut stream| {
        stream.write_all(b"fine\n").expect("write");
        // 100 KB and no newline: the client must not wait for one.
        let _ = stream.write_all(&vec![b'x'; 100_000]);
        let (_, _) = read_to_eof(&mut stream);
    });
    let client = Client::spawn(&["127.0.0.1", &port]);
    let finished = client.finish();
    served.join().expect("the server saw the client go");
    finished.assert_ended(
        &[
            "Server: fine",
            "Connection lost - goodbye! (the server sent a line longer than 65536 bytes)",
        ],
        1,
    );
}

#[test]
fn a_line_of_exactly_64_kib_is_accepted() {
    let (port, served) = serve_one(|mut stream| {
        let mut line = vec![b'y'; 64 * 1024];
        line.extend_from_slice(b"\r\n");
        stream.write_all(&line).expect("write");
    });
    let client = Client::spawn(&["127.0.0.1", &port]);
    served.join().expect("the server thread");
    let finished = client.finish();
    let lines = finished.stdout_text();
    assert_eq!(lines.len(), 2, "{:?}", finished.stderr);
    assert_eq!(lines[0].len(), "Server: ".len() + 64 * 1024);
    assert_eq!(lines[1], "Connection lost - goodbye!");
    assert_eq!(finished.code, Some(0));
}

#[test]
fn a_reset_mid_line_is_reported_and_exits_1() {
    let (port, served) = serve_one(|mut stream| {
        stream.write_all(b"whole\npartial li").expect("write");
        let _ = read_until_contains(&mut stream, b"ack\r\n");
        // SO_LINGER 0: close with a reset instead of a FIN.
        socket2::SockRef::from(&stream)
            .set_linger(Some(Duration::ZERO))
            .expect("linger 0");
    });
    let mut client = Client::spawn(&["127.0.0.1", &port]);
    assert_eq!(client.next_line(), "Server: whole");
    client.type_text("ack\n");
    served.join().expect("the server thread");
    let finished = client.finish();
    finished.assert_ended(
        &["Connection lost - goodbye! (connection reset by peer)"],
        1,
    );
}

#[test]
fn sigterm_exits_143_and_sigint_130() {
    for (signal, expected) in [(Signal::SIGTERM, 143), (Signal::SIGINT, 130)] {
        let server = TestServer::new();
        let port = server.port();
        let (served, accepted) = server.serve(|mut stream| read_to_eof(&mut stream));
        let client = Client::spawn(&["127.0.0.1", &port]);
        accepted.recv_timeout(STEP).expect("the client connects");
        client.signal(signal);
        let finished = client.finish();
        assert_eq!(
            finished.code,
            Some(expected),
            "{signal:?}: {}",
            finished.stderr
        );
        assert!(finished.stdout.is_empty(), "{:?}", finished.stdout_text());
        // EOF or reset, within the read timeout: either way the connection is gone,
        // and the signal made the client send nothing on its way out.
        let (sent, _) = served.join().expect("the server thread");
        assert!(
            sent.is_empty(),
            "{signal:?}: {:?}",
            String::from_utf8_lossy(&sent)
        );
    }
}

/// Reads lines until one starts with `prefix` (bounded by [`STEP`] per line).
fn line_starting_with(process: &Client, prefix: &str) -> String {
    for _ in 0..20 {
        let line = process.next_line();
        if line.starts_with(prefix) {
            return line;
        }
    }
    panic!("no line starting with {prefix:?}");
}

/// `twistctl talk-server --port 0 --bind 127.0.0.1 EXTRA...` with stdin and stdout
/// pipes, past its first line; the server and the port that line names.
fn talk_server_over_pipes(extra: &[&str]) -> (Client, String) {
    let mut args = vec!["talk-server", "--port", "0", "--bind", "127.0.0.1"];
    args.extend_from_slice(extra);
    let server = Client::spawn_twistctl(&args);
    let listening = server.next_line();
    let port = listening
        .strip_prefix("Listening on 127.0.0.1:")
        .unwrap_or_else(|| panic!("the first line names the port: {listening}"))
        .to_string();
    (server, port)
}

#[test]
fn a_piped_client_gets_the_answer_typed_after_its_input_ended_and_exits_0_on_bye() {
    let (mut server, port) = talk_server_over_pipes(&[]);
    let client = Client::run_piped(&["127.0.0.1", &port], "what time is it?\n");
    line_starting_with(&server, "* client 1 connected from 127.0.0.1:");
    assert_eq!(server.next_line(), "Client 1: what time is it?");
    assert_eq!(server.next_line(), "* client 1 finished sending");
    server.type_text("/who\n");
    let who = line_starting_with(&server, "* client 1 ");
    assert!(who.ends_with(" half-closed"), "{who}");
    server.type_text("about noon\n");
    assert_eq!(client.next_line(), "Server: about noon");
    server.type_text("bye\n");
    assert_eq!(client.next_line(), "Server: bye");
    let finished = client.finish();
    finished.assert_ended(&["Connection lost - goodbye!"], 0);
    // With no prompt, the server's transcript names where each typed line went.
    assert_eq!(server.next_line(), "to 1> about noon");
    assert_eq!(server.next_line(), "to 1> bye");
    assert_eq!(server.next_line(), "* client 1 disconnected: bye");
    server.close_stdin();
    assert_eq!(server.finish().code, Some(0));
}

#[test]
fn talk_client_and_talk_server_chat_over_pipes_in_line_and_raw_mode() {
    for raw in [false, true] {
        let mode: &[&str] = if raw { &["--raw"] } else { &[] };
        let (mut server, port) = talk_server_over_pipes(mode);
        let mut client_args = vec!["127.0.0.1", port.as_str()];
        client_args.extend_from_slice(mode);
        let mut client = Client::spawn(&client_args);
        line_starting_with(&server, "* client 1 connected from 127.0.0.1:");

        client.type_text("hello\n");
        assert_eq!(server.next_line(), "Client 1: hello", "raw: {raw}");
        server.type_text("hi\n");
        assert_eq!(client.next_line(), "Server: hi", "raw: {raw}");
        client.type_text("bye\n");
        let finished = client.finish();
        assert_eq!(
            finished.stdout_text(),
            ["Connection lost - goodbye!"],
            "raw: {raw}: {}",
            finished.stderr
        );
        assert_eq!(finished.code, Some(0), "raw: {raw}");
        line_starting_with(&server, "* client 1 disconnected");

        server.close_stdin();
        let stopped = server.finish();
        assert_eq!(stopped.code, Some(0), "raw: {raw}: {}", stopped.stderr);
    }
}
