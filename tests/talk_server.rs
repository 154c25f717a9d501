//! End-to-end tests of `twistctl talk-server`: the built binary with stdin a pipe, and
//! plain `std::net::TcpStream` clients on 127.0.0.1. Every blocking read has a timeout,
//! and every child process is killed when its test ends, whatever happens.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use rexpect::session::PtySession;

use common::{
    TWISTCTL, expect_listening, loopback_listener, pty_exit_code, twistctl_in_pty, type_in_pty,
};

/// How long any single expected event may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(20);

const MIB: u64 = 1024 * 1024;

/// A running talk-server whose stdout and stderr are read line by line on threads.
struct Server {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Receiver<String>,
    stderr: Receiver<String>,
    /// Every stdout line seen so far, in order.
    seen: Vec<String>,
    port: u16,
    listening: String,
}

fn line_reader(stream: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    while matches!(line.last(), Some(b'\n' | b'\r')) {
                        line.pop();
                    }
                    if tx
                        .send(String::from_utf8_lossy(&line).into_owned())
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    });
    rx
}

impl Server {
    fn start(args: &[&str]) -> Server {
        let mut command = Command::new(TWISTCTL);
        command.arg("talk-server").arg("--port").arg("0").args(args);
        Server::spawn(command)
    }

    fn spawn(mut command: Command) -> Server {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start twistctl");
        let stdout = line_reader(child.stdout.take().unwrap());
        let stderr = line_reader(child.stderr.take().unwrap());
        let stdin = child.stdin.take();
        let mut server = Server {
            child,
            stdin,
            stdout,
            stderr,
            seen: Vec::new(),
            port: 0,
            listening: String::new(),
        };
        let first = server.next_line();
        let port = first
            .strip_prefix("Listening on ")
            .and_then(|address| address.parse::<SocketAddr>().ok())
            .unwrap_or_else(|| panic!("first line: {first:?}"))
            .port();
        server.port = port;
        server.listening = first;
        server
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn next_line(&mut self) -> String {
        match self.stdout.recv_timeout(PATIENCE) {
            Ok(line) => {
                self.seen.push(line.clone());
                line
            }
            Err(error) => panic!(
                "no stdout line ({error:?}); seen {:?}; stderr {:?}",
                self.seen,
                self.stderr_now()
            ),
        }
    }

    /// Waits for a stdout line satisfying `want`, returning it.
    fn wait_for(&mut self, what: &str, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if want(&line) {
                        return line;
                    }
                }
                Err(error) => panic!(
                    "waiting for {what} ({error:?}); seen {:?}; stderr {:?}",
                    self.seen,
                    self.stderr_now()
                ),
            }
        }
    }

    /// Asserts that `exact` is among the stdout lines already read.
    fn assert_saw(&self, exact: &str) {
        assert!(
            self.seen.iter().any(|line| line == exact),
            "{exact:?} not in {:?}",
            self.seen
        );
    }

    fn expect(&mut self, exact: &str) {
        self.wait_for(exact, |line| line == exact);
    }

    fn stderr_now(&self) -> Vec<String> {
        self.stderr.try_iter().collect()
    }

    fn wait_for_stderr(&mut self, what: &str, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) if want(&line) => return line,
                Ok(_) => {}
                Err(error) => panic!("waiting on stderr for {what} ({error:?})"),
            }
        }
    }

    fn type_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        writeln!(stdin, "{line}").expect("write to the server's stdin");
        stdin.flush().expect("flush stdin");
    }

    fn close_stdin(&mut self) {
        self.stdin.take();
    }

    /// Connects a client and waits for the server to announce it; returns it and its
    /// number.
    fn connect(&mut self) -> (Peer, u64) {
        let peer = Peer::connect(self.port);
        let number = self.connected_number(peer.local_port());
        (peer, number)
    }

    fn connected_number(&mut self, local_port: u16) -> u64 {
        let suffix = format!(" connected from 127.0.0.1:{local_port}");
        let line = self.wait_for(&suffix, |line| {
            line.starts_with("* client ") && line.ends_with(&suffix)
        });
        line["* client ".len()..line.len() - suffix.len()]
            .parse()
            .expect("a client number")
    }

    /// Waits for the process to end (its stdout closes first) and returns its status.
    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => panic!("server did not exit: {:?}", self.seen),
            }
        }
        self.child.wait().expect("wait for the server")
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Resident memory in bytes, and its peak, from /proc.
    fn memory(&self) -> (u64, u64) {
        common::talk::memory_of(self.pid())
    }

    /// CPU time used so far (user + system).
    fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .expect("read /proc/PID/stat");
        // Fields after the command name, which is in parentheses and may hold spaces.
        let rest = &stat[stat.rfind(')').expect("comm") + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        Duration::from_secs_f64(ticks as f64 / clock_ticks_per_second())
    }
}

fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client: a plain TcpStream with read and write timeouts.
struct Peer {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Peer {
    fn connect(port: u16) -> Peer {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        Peer::from_stream(stream)
    }

    fn from_stream(stream: TcpStream) -> Peer {
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        stream.set_write_timeout(Some(PATIENCE)).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Peer { stream, reader }
    }

    fn local_port(&self) -> u16 {
        self.stream.local_addr().unwrap().port()
    }

    fn send(&mut self, data: &[u8]) {
        self.stream.write_all(data).expect("send");
    }

    /// One line including its `\r\n`.
    fn read_line(&mut self) -> String {
        let mut line = Vec::new();
        self.reader
            .read_until(b'\n', &mut line)
            .expect("read a line");
        String::from_utf8_lossy(&line).into_owned()
    }

    /// Reads until the server closes; returns what arrived.
    fn read_to_close(&mut self) -> Vec<u8> {
        let mut all = Vec::new();
        match self.reader.read_to_end(&mut all) {
            Ok(_) => all,
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => all,
            Err(error) => panic!("reading until close: {error} (got {all:?})"),
        }
    }

    fn expect_closed(&mut self) {
        let rest = self.read_to_close();
        assert!(rest.is_empty(), "unexpected data before close: {rest:?}");
    }
}

// ---------------------------------------------------------------------------------------
// The wire and the operator

#[test]
fn first_line_names_the_real_port_and_ipv4_peers_are_shown_plainly() {
    let mut server = Server::start(&[]);
    assert!(server.port > 0);
    assert!(
        server.listening == format!("Listening on [::]:{}", server.port)
            || server.listening == format!("Listening on 0.0.0.0:{}", server.port),
        "{}",
        server.listening
    );
    let peer = Peer::connect(server.port);
    server.expect(&format!(
        "* client 1 connected from 127.0.0.1:{}",
        peer.local_port()
    ));
}

#[test]
fn bind_listens_on_the_given_address_only() {
    let server = Server::start(&["--bind", "127.0.0.1"]);
    assert_eq!(
        server.listening,
        format!("Listening on 127.0.0.1:{}", server.port)
    );
    // The line alone could be wrong: where it really listens is what counts. Another
    // loopback address on the same port must be refused.
    let _peer = Peer::connect(server.port);
    let elsewhere = TcpStream::connect(("127.0.0.2", server.port));
    assert!(
        elsewhere.is_err(),
        "127.0.0.2:{} accepted a connection",
        server.port
    );
}

#[test]
fn a_port_in_use_is_a_runtime_failure() {
    let (_taken, port) = loopback_listener();
    let port = port.to_string();
    let output = Command::new(TWISTCTL)
        .args(["talk-server", "--bind", "127.0.0.1", "--port", &port])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot listen"), "{stderr}");
}

#[test]
fn lines_go_both_ways_and_a_client_bye_closes_it() {
    let mut server = Server::start(&[]);
    let (mut peer, n) = server.connect();
    peer.send(b"hello\r\n");
    server.expect(&format!("Client {n}: hello"));
    server.type_line("  hi there ");
    assert_eq!(peer.read_line(), "  hi there\r\n");
    peer.send(b"bye\n");
    server.expect(&format!("Client {n}: bye"));
    server.expect(&format!("* client {n} disconnected: bye"));
    peer.expect_closed();
}

#[test]
fn an_operator_bye_is_sent_and_closes_the_client() {
    let mut server = Server::start(&[]);
    let (mut peer, n) = server.connect();
    server.type_line("bye");
    assert_eq!(peer.read_line(), "bye\r\n");
    peer.expect_closed();
    server.expect(&format!("* client {n} disconnected: bye"));
}

#[test]
fn two_clients_with_to_all_and_kick() {
    let mut server = Server::start(&[]);
    let (mut one, n1) = server.connect();
    let (mut two, n2) = server.connect();
    server.type_line(&format!("/to {n2} just for two"));
    server.type_line("/all for everyone");
    assert_eq!(two.read_line(), "just for two\r\n");
    assert_eq!(two.read_line(), "for everyone\r\n");
    assert_eq!(one.read_line(), "for everyone\r\n", "one did not get /to 2");
    // The last speaker gets plain lines.
    one.send(b"me!\n");
    server.expect(&format!("Client {n1}: me!"));
    server.type_line("answer");
    assert_eq!(one.read_line(), "answer\r\n");
    server.type_line(&format!("/kick {n1}"));
    assert_eq!(one.read_line(), "* disconnected by the operator\r\n");
    one.expect_closed();
    server.expect(&format!("* client {n1} disconnected: kicked"));
    // Two is the only client now: plain lines go to it.
    server.type_line("still there?");
    assert_eq!(two.read_line(), "still there?\r\n");
}

#[test]
fn a_half_closed_client_is_answered_and_closed_by_bye_kick_idle_or_quit() {
    let mut server = Server::start(&["--idle-timeout", "3s"]);
    let (mut asker, n1) = server.connect();
    let (mut kicked, n2) = server.connect();
    let (mut idle, n3) = server.connect();
    let (mut quitting, n4) = server.connect();
    asker.send(b"what time is it?\n");
    asker.stream.shutdown(Shutdown::Write).unwrap();
    server.expect(&format!("Client {n1}: what time is it?"));
    server.expect(&format!("* client {n1} finished sending"));
    for peer in [&mut kicked, &mut idle, &mut quitting] {
        peer.stream.shutdown(Shutdown::Write).unwrap();
    }
    for n in [n2, n3, n4] {
        server.expect(&format!("* client {n} finished sending"));
    }
    server.type_line("/who");
    let prefix = format!("* client {n1} 127.0.0.1:{} tcp idle ", asker.local_port());
    server.wait_for("/who's half-closed line", |line| {
        line.starts_with(&prefix) && line.ends_with("s half-closed")
    });
    server.type_line(&format!("/to {n1} noon"));
    assert_eq!(asker.read_line(), "noon\r\n");
    server.type_line(&format!("/to {n1} bye"));
    assert_eq!(asker.read_line(), "bye\r\n");
    asker.expect_closed();
    server.expect(&format!("* client {n1} disconnected: bye"));
    server.type_line(&format!("/kick {n2}"));
    assert_eq!(kicked.read_line(), "* disconnected by the operator\r\n");
    kicked.expect_closed();
    server.expect(&format!("* client {n2} disconnected: kicked"));
    // Keep the last one from idling out.
    server.type_line(&format!("/to {n4} still there?"));
    assert_eq!(quitting.read_line(), "still there?\r\n");
    assert_eq!(idle.read_line(), "* disconnected: idle for 3s\r\n");
    idle.expect_closed();
    server.expect(&format!("* client {n3} disconnected: idle timeout"));
    server.type_line("/quit");
    let rest = quitting.read_to_close();
    assert!(
        rest.is_empty() || rest == b"* disconnected: idle for 3s\r\n",
        "{rest:?}"
    );
    assert_eq!(server.wait_exit().code(), Some(0));
}

#[test]
fn an_unterminated_last_line_is_shown_before_the_disconnect_notice() {
    for raw in [false, true] {
        let args: &[&str] = if raw { &["--raw"] } else { &[] };
        let mut server = Server::start(args);
        let (mut peer, n) = server.connect();
        peer.send(b"final \x1b[1mwords");
        peer.stream.shutdown(Shutdown::Write).unwrap();
        server.expect(&format!("Client {n}: final \\x1b[1mwords"));
        server.expect(&format!("* client {n} finished sending"));
        // A peer that closes for good after its last words.
        let (mut other, m) = server.connect();
        other.send(b"so long");
        drop(other);
        server.expect(&format!("Client {m}: so long"));
        server.expect(&format!("* client {m} finished sending"));
    }
}

#[test]
fn echo_mode_echoes_what_came_then_closes_at_the_end_of_input() {
    let mut server = Server::start(&["--echo"]);
    let (mut peer, n) = server.connect();
    peer.send(b"one\ntwo");
    peer.stream.shutdown(Shutdown::Write).unwrap();
    assert_eq!(peer.read_to_close(), b"one\r\ntwo\r\n");
    server.expect(&format!("* client {n} disconnected: closed by peer"));
}

#[test]
fn stdin_eof_sends_what_is_buffered_then_shuts_down_with_status_0() {
    let mut server = Server::start(&[]);
    let (mut peer, n) = server.connect();
    server.type_line("last words");
    server.close_stdin();
    assert_eq!(peer.read_line(), "last words\r\n");
    peer.expect_closed();
    let status = server.wait_exit();
    assert_eq!(status.code(), Some(0));
    server.assert_saw(&format!("* client {n} disconnected: server shutting down"));
}

#[test]
fn quit_shuts_down_with_status_0_and_stops_listening() {
    let mut server = Server::start(&[]);
    let port = server.port;
    let (mut peer, _) = server.connect();
    server.type_line("/quit");
    peer.expect_closed();
    assert_eq!(server.wait_exit().code(), Some(0));
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[test]
fn r23_sigterm_shuts_down_in_order_with_status_143() {
    let mut server = Server::start(&[]);
    let (mut peer, n) = server.connect();
    peer.send(b"hi\n");
    server.expect(&format!("Client {n}: hi"));
    server.signal("TERM");
    peer.expect_closed();
    assert_eq!(server.wait_exit().code(), Some(143));
    server.assert_saw(&format!("* client {n} disconnected: server shutting down"));
}

#[test]
fn r23_sigint_shuts_down_in_order_with_status_130() {
    let mut server = Server::start(&["--echo"]);
    let (mut peer, _) = server.connect();
    server.signal("INT");
    peer.expect_closed();
    assert_eq!(server.wait_exit().code(), Some(130));
}

#[test]
fn raw_mode_shows_bytes_at_once_and_sends_typed_lines_without_newline() {
    let mut server = Server::start(&["--raw"]);
    let (mut peer, n) = server.connect();
    peer.send(b"hello");
    server.expect(&format!("Client {n}: hello"));
    server.type_line("hi");
    server.type_line("bye");
    assert_eq!(peer.read_to_close(), b"hibye");
    server.expect(&format!("* client {n} disconnected: bye"));
}

// ---------------------------------------------------------------------------------------
// --echo

#[test]
fn echo_200_clients_times_200_lines_each_come_back_in_order() {
    const CLIENTS: usize = 200;
    const LINES: usize = 200;
    let mut server = Server::start(&["--echo"]);
    let port = server.port;
    let started = Instant::now();
    let workers: Vec<_> = (0..CLIENTS)
        .map(|c| {
            thread::spawn(move || -> Result<(), String> {
                let mut peer = Peer::connect(port);
                let mut batch = String::new();
                for l in 0..LINES {
                    batch.push_str(&format!("client {c} line {l}\n"));
                }
                peer.send(batch.as_bytes());
                for l in 0..LINES {
                    let line = peer.read_line();
                    let want = format!("client {c} line {l}\r\n");
                    if line != want {
                        return Err(format!("client {c}: got {line:?}, want {want:?}"));
                    }
                }
                peer.stream.shutdown(Shutdown::Write).ok();
                Ok(())
            })
        })
        .collect();
    for worker in workers {
        if let Err(error) = worker.join().expect("client thread") {
            panic!("{error}");
        }
    }
    assert!(started.elapsed() < Duration::from_secs(60));
    // Every client was announced; the server is still serving.
    let (mut late, _) = server.connect();
    late.send(b"ping\n");
    assert_eq!(late.read_line(), "ping\r\n");
}

#[test]
fn x19_echo_a_non_reading_client_costs_bounded_memory_while_another_chats() {
    let mut server = Server::start(&["--echo"]);
    let (mut chatty, _) = server.connect();
    chatty.send(b"warm up\n");
    assert_eq!(chatty.read_line(), "warm up\r\n");
    let (rss_before, _) = server.memory();
    let (hog, hog_number) = server.connect();
    let mut hog_stream = hog.stream.try_clone().unwrap();
    hog_stream
        .set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let writer = thread::spawn(move || {
        let line = [b"x".repeat(1000), b"\n".to_vec()].concat();
        let mut sent = 0u64;
        // Until the server stops reading and every buffer on the way is full.
        while hog_stream.write_all(&line).is_ok() {
            sent += line.len() as u64;
            if sent > 512 * MIB {
                break;
            }
        }
        sent
    });
    for i in 0..50 {
        let text = format!("chat {i}\n");
        chatty.send(text.as_bytes());
        assert_eq!(chatty.read_line(), format!("chat {i}\r\n"));
    }
    let sent = writer.join().unwrap();
    assert!(sent < 512 * MIB, "the server never stopped reading");
    let (rss_after, peak) = server.memory();
    assert!(
        rss_after < rss_before + 16 * MIB && peak < rss_before + 16 * MIB,
        "RSS {rss_before} -> {rss_after} (peak {peak}) after the hog sent {sent} bytes"
    );
    chatty.send(b"after\n");
    assert_eq!(chatty.read_line(), "after\r\n");
    // Flow control, not loss: the hog is still connected, and gets its echoes in order
    // once it reads.
    let mut hog = hog;
    let line = format!("{}\r\n", "x".repeat(1000));
    for _ in 0..1000 {
        assert_eq!(hog.read_line(), line);
    }
    assert!(
        !server
            .seen
            .iter()
            .any(|l| l.starts_with(&format!("* client {hog_number} disconnected"))),
        "{:?}",
        server.seen
    );
}

// ---------------------------------------------------------------------------------------
// Hostile peers

#[test]
fn control_characters_from_a_peer_are_shown_escaped() {
    let mut server = Server::start(&[]);
    let (mut peer, n) = server.connect();
    peer.send(b"\x1b[2J\x1b]0;pwned\x07 \xff\xfe \xc2\x9b back\\slash\n");
    let line = server.wait_for("the escaped line", |l| l.starts_with("Client "));
    assert_eq!(
        line,
        format!("Client {n}: \\x1b[2J\\x1b]0;pwned\\x07 \\xff\\xfe \\u{{9b}} back\\\\slash")
    );
    assert!(!line.contains('\x1b'));
    assert!(!line.contains('\u{9b}'));
}

#[test]
fn bidi_and_invisible_characters_from_a_peer_are_shown_escaped_and_emoji_kept() {
    let mut server = Server::start(&[]);
    let (mut peer, n) = server.connect();
    peer.send("pay \u{202e}0001\u{202c} to\u{200b}me \u{2066}x\u{2069} \u{feff}".as_bytes());
    peer.send("\u{1f468}\u{200d}\u{1f469}\u{200d}\u{1f467} \u{2764}\u{fe0f}\n".as_bytes());
    let line = server.wait_for("the escaped line", |l| l.starts_with("Client "));
    assert_eq!(
        line,
        format!(
            "Client {n}: pay \\u{{202e}}0001\\u{{202c}} to\\u{{200b}}me \\u{{2066}}x\\u{{2069}} \\u{{feff}}{}",
            "\u{1f468}\u{200d}\u{1f469}\u{200d}\u{1f467} \u{2764}\u{fe0f}"
        )
    );
}

#[test]
fn l08_a_100_mb_line_without_newline_is_refused_with_bounded_memory() {
    let mut server = Server::start(&[]);
    let (mut other, n_other) = server.connect();
    let (rss_before, _) = server.memory();
    let (peer, n) = server.connect();
    let mut writer_stream = peer.stream.try_clone().unwrap();
    let writer = thread::spawn(move || {
        let chunk = vec![b'x'; 64 * 1024];
        let mut sent = 0u64;
        while sent < 100 * 1000 * 1000 {
            if writer_stream.write_all(&chunk).is_err() {
                break; // closed by the server
            }
            sent += chunk.len() as u64;
        }
        sent
    });
    let mut peer = peer;
    assert_eq!(peer.read_line(), "error: line too long\r\n");
    peer.read_to_close();
    let sent = writer.join().unwrap();
    server.expect(&format!("* client {n} disconnected: line too long"));
    let (rss_after, peak) = server.memory();
    assert!(
        rss_after < rss_before + 16 * MIB && peak < rss_before + 16 * MIB,
        "RSS {rss_before} -> {rss_after} (peak {peak}) after {sent} bytes"
    );
    other.send(b"unaffected\n");
    server.expect(&format!("Client {n_other}: unaffected"));
}

#[test]
fn max_line_is_counted_without_the_delimiter() {
    let mut server = Server::start(&["--max-line", "8"]);
    let (mut peer, n) = server.connect();
    peer.send(b"12345678\r\n");
    server.expect(&format!("Client {n}: 12345678"));
    peer.send(b"123456789\n");
    assert_eq!(peer.read_line(), "error: line too long\r\n");
    peer.expect_closed();
    server.expect(&format!("* client {n} disconnected: line too long"));
}

#[test]
fn console_mode_a_client_that_does_not_read_is_dropped_as_too_slow() {
    let mut server = Server::start(&[]);
    // A small receive window, so the kernel holds little on the client's side.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let address: SocketAddr = ([127, 0, 0, 1], server.port).into();
    socket.connect(&address.into()).unwrap();
    let slow = Peer::from_stream(socket.into());
    let n_slow = server.connected_number(slow.local_port());
    let (mut chatty, n_chatty) = server.connect();
    let long = "y".repeat(60_000);
    let mut sent = 0;
    let expected = format!("* client {n_slow} disconnected: too slow");
    while !server.seen.contains(&expected) {
        for _ in 0..20 {
            server.type_line(&format!("/to {n_slow} {long}"));
        }
        sent += 20 * 60_000;
        assert!(
            sent < 200 * MIB as usize,
            "never dropped: {:?}",
            server.seen
        );
        // Chatting goes on meanwhile.
        chatty.send(b"ping\n");
        server.expect(&format!("Client {n_chatty}: ping"));
    }
    server.type_line(&format!("/to {n_chatty} pong"));
    assert_eq!(chatty.read_line(), "pong\r\n");
    drop(slow);
}

#[test]
fn more_clients_than_max_clients_are_told_and_closed() {
    let mut server = Server::start(&["--max-clients", "2"]);
    let (mut one, n1) = server.connect();
    let (mut two, n2) = server.connect();
    let mut three = Peer::connect(server.port);
    assert_eq!(three.read_line(), "error: server full\r\n");
    three.expect_closed();
    one.send(b"one\n");
    server.expect(&format!("Client {n1}: one"));
    two.send(b"two\n");
    server.expect(&format!("Client {n2}: two"));
    server.type_line("/all still here");
    assert_eq!(one.read_line(), "still here\r\n");
    assert_eq!(two.read_line(), "still here\r\n");
}

#[test]
fn an_idle_client_is_told_and_closed() {
    let mut server = Server::start(&["--idle-timeout", "300ms"]);
    let (mut peer, n) = server.connect();
    assert_eq!(peer.read_line(), "* disconnected: idle for 300ms\r\n");
    peer.expect_closed();
    server.expect(&format!("* client {n} disconnected: idle timeout"));
}

#[test]
fn a_reset_mid_line_is_reported_and_affects_nobody_else() {
    let mut server = Server::start(&[]);
    let (other, n_other) = server.connect();
    let (peer, n) = server.connect();
    let mut peer = peer;
    peer.send(b"half a li");
    socket2::SockRef::from(&peer.stream)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(peer);
    server.expect(&format!("* client {n} disconnected: connection reset"));
    let mut other = other;
    other.send(b"fine\n");
    server.expect(&format!("Client {n_other}: fine"));
    server.type_line("good");
    assert_eq!(other.read_line(), "good\r\n");
}

#[test]
fn out_of_descriptors_the_server_survives_idles_cheaply_and_serves_again() {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(r#"ulimit -n 64 && exec "$0" "$@""#)
        .arg(TWISTCTL)
        .args(["talk-server", "--port", "0"]);
    let mut server = Server::spawn(command);
    let crowd: Vec<TcpStream> = (0..200)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", server.port)).ok())
        .collect();
    assert!(crowd.len() > 64, "only {} connections made", crowd.len());
    server.wait_for_stderr("the accept error", |l| l.contains("pausing accepts"));
    let cpu_before = server.cpu_time();
    let idle_start = Instant::now();
    thread::sleep(Duration::from_secs(2));
    let idle = idle_start.elapsed();
    let cpu = server.cpu_time().saturating_sub(cpu_before);
    assert!(
        cpu < Duration::from_millis(200),
        "{cpu:?} of CPU in {idle:?} while out of descriptors"
    );
    // Reset, not closed: a client's FIN would only say it finished sending, and the
    // server would rightly keep its connection open for the operator's answer.
    for stream in crowd {
        socket2::SockRef::from(&stream)
            .set_linger(Some(Duration::ZERO))
            .expect("SO_LINGER 0");
    }
    // The backlog drains; then a newcomer is served.
    let (mut newcomer, n) = server.connect();
    newcomer.send(b"alive?\n");
    server.expect(&format!("Client {n}: alive?"));
    server.type_line(&format!("/to {n} yes"));
    assert_eq!(newcomer.read_line(), "yes\r\n");
}

// ---------------------------------------------------------------------------------------
// In a pseudo-terminal: the prompt, and printing above it

/// `twistctl talk-server --port 0` in a pseudo-terminal, past its listening line and
/// at its prompt; the session and the port.
fn server_in_pty() -> (PtySession, u16) {
    let timeout_ms = u64::try_from(PATIENCE.as_millis()).unwrap();
    let mut session = twistctl_in_pty(&["talk-server", "--port", "0"], timeout_ms);
    let (_, port) = expect_listening(&mut session);
    session.exp_string("> ").expect("the prompt, naming nobody");
    (session, port)
}

/// Connects a client and waits until the server in `session` announces it.
fn pty_connect(session: &mut PtySession, port: u16, n: u64) -> Peer {
    let peer = Peer::connect(port);
    session
        .exp_string(&format!(
            "* client {n} connected from 127.0.0.1:{}",
            peer.local_port()
        ))
        .expect("the connect line");
    peer
}

/// Asserts that `peer` receives `line` as the next thing sent to it.
fn assert_next_line(peer: &mut Peer, line: &str) {
    assert_eq!(peer.read_line(), line);
}

#[test]
fn pty_a_line_goes_to_the_client_its_prompt_named_while_another_speaks() {
    let (mut session, port) = server_in_pty();
    let mut one = pty_connect(&mut session, port, 1);
    let mut two = pty_connect(&mut session, port, 2);
    one.send(b"question from one\n");
    session.exp_string("Client 1: question from one").unwrap();
    // Enter on an empty line draws a fresh prompt, which names the last speaker.
    type_in_pty(&mut session, "\r");
    session
        .exp_string("to 1> ")
        .expect("the prompt names client 1");
    type_in_pty(&mut session, "  ans");
    session.exp_string("ans").unwrap();
    // Client 2 speaks while the operator types: it becomes the next recipient, not
    // this line's.
    two.send(b"interrupting\n");
    session.exp_string("Client 2: interrupting").unwrap();
    one.send(b"and one again\n");
    session.exp_string("Client 1: and one again").unwrap();
    two.send(b"two again\n");
    session.exp_string("Client 2: two again").unwrap();
    type_in_pty(&mut session, "wer\r");
    assert_next_line(&mut one, "  answer\r\n");
    session
        .exp_string("to 2> ")
        .expect("the next prompt names the last speaker");
    type_in_pty(&mut session, "for two\r");
    assert_next_line(&mut two, "for two\r\n");
    type_in_pty(&mut session, "/quit\r");
    assert_eq!(pty_exit_code(&mut session), 0);
}

#[test]
fn pty_a_line_for_a_client_that_left_before_enter_is_not_sent_to_anyone() {
    let (mut session, port) = server_in_pty();
    let mut one = pty_connect(&mut session, port, 1);
    let mut two = pty_connect(&mut session, port, 2);
    let mut three = pty_connect(&mut session, port, 3);
    two.send(b"hi from two\n");
    session.exp_string("Client 2: hi from two").unwrap();
    type_in_pty(&mut session, "\r");
    session
        .exp_string("to 2> ")
        .expect("the prompt names client 2");
    type_in_pty(&mut session, "are you the");
    session.exp_string("are you the").unwrap();
    // Gone for good (a FIN would only say it finished sending).
    socket2::SockRef::from(&two.stream)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(two);
    session
        .exp_string("* client 2 disconnected: connection reset")
        .unwrap();
    type_in_pty(&mut session, "re?\r");
    session
        .exp_string("* not sent: client 2 has left")
        .expect("the notice");
    // Two clients remain and neither spoke: the next prompt names nobody, and a line
    // typed there is not sent either.
    session.exp_string("> ").unwrap();
    type_in_pty(&mut session, "anyone?\r");
    session
        .exp_string("* not sent: the prompt named no client and 2 are connected")
        .unwrap();
    type_in_pty(&mut session, "/all first line for all\r");
    assert_next_line(&mut one, "first line for all\r\n");
    assert_next_line(&mut three, "first line for all\r\n");
    type_in_pty(&mut session, "/quit\r");
    assert_eq!(pty_exit_code(&mut session), 0);
}

#[test]
fn pty_ctrl_c_clears_a_half_typed_line_and_on_an_empty_prompt_stops_with_130() {
    let (mut session, port) = server_in_pty();
    let mut peer = pty_connect(&mut session, port, 1);
    type_in_pty(&mut session, "not this");
    session.exp_string("not this").unwrap();
    session.send_control('c').unwrap();
    session.exp_string("> ").expect("a fresh prompt");
    type_in_pty(&mut session, "this\r");
    assert_next_line(&mut peer, "this\r\n");
    session.send_control('c').unwrap();
    peer.expect_closed();
    assert_eq!(pty_exit_code(&mut session), 130);
}

#[test]
fn pty_prompt_shows_client_lines_above_a_half_typed_line_and_quit_exits_0() {
    let (mut session, port) = server_in_pty();

    let mut peer = Peer::connect(port);
    session
        .exp_string(&format!(
            "* client 1 connected from 127.0.0.1:{}",
            peer.local_port()
        ))
        .expect("the connect line");
    peer.send(b"hello\n");
    session
        .exp_string("Client 1: hello")
        .expect("the client's line");
    type_in_pty(&mut session, "hi\r");
    assert_eq!(peer.read_line(), "hi\r\n");

    // A line arriving while the operator is half-way through typing one.
    type_in_pty(&mut session, "par");
    session
        .exp_string("par")
        .expect("the typed characters echoed");
    peer.send(b"meanwhile\n");
    session
        .exp_string("Client 1: meanwhile")
        .expect("printed above the prompt");
    type_in_pty(&mut session, "tial\r");
    assert_eq!(
        peer.read_line(),
        "partial\r\n",
        "the half-typed line survived"
    );

    type_in_pty(&mut session, "/quit\r");
    peer.expect_closed();
    assert_eq!(pty_exit_code(&mut session), 0);
}

#[test]
fn pty_ctrl_c_at_the_prompt_closes_clients_and_exits_130() {
    let (mut session, port) = server_in_pty();
    let mut peer = Peer::connect(port);
    session
        .exp_string("* client 1 connected from 127.0.0.1:")
        .expect("the connect line");
    session.send_control('c').unwrap();
    peer.expect_closed();
    assert_eq!(pty_exit_code(&mut session), 130);
}

#[test]
fn pty_sigint_from_outside_stops_the_server_even_with_a_half_typed_line() {
    let (mut session, port) = server_in_pty();
    let mut peer = pty_connect(&mut session, port, 1);
    type_in_pty(&mut session, "half a li");
    session.exp_string("half a li").unwrap();
    session
        .process_mut()
        .signal(nix::sys::signal::Signal::SIGINT)
        .expect("send SIGINT");
    peer.expect_closed();
    assert_eq!(pty_exit_code(&mut session), 130);
}
