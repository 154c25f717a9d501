//! Scaffolding for the talk tests: the binary as a running process whose output lines
//! arrive on a channel, a bounded run with piped input, temporary folders, and a
//! blocking peer that speaks plain or TLS over TCP or a UNIX socket. Every wait is
//! bounded by [`STEP`].

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

use rustls::pki_types::CertificateDer;

/// How long any single step may take before the test fails.
pub const STEP: Duration = Duration::from_secs(10);

/// The binary under test, with no `RUST_LOG` from the environment.
pub fn twistctl() -> Command {
    let mut command = Command::new(super::TWISTCTL);
    command.env_remove("RUST_LOG");
    command
}

/// A fresh temporary folder for one test: `twistctl-PREFIX-NAME-PID`.
pub fn temp_dir(prefix: &str, name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("twistctl-{prefix}-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a temporary folder");
    dir
}

/// True if `tool` runs; otherwise says the test is skipped and why.
pub fn have(tool: &str, version_arg: &str) -> bool {
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

/// The port at the end of a `Listening on ADDRESS:PORT[ (TLS)]` line.
pub fn port_of(line: &str) -> String {
    line.trim_end_matches(" (TLS)")
        .rsplit(':')
        .next()
        .expect("a port")
        .to_string()
}

/// Each line `stream` gives, on a channel, read on a thread.
pub fn line_channel(stream: impl Read + Send + 'static) -> Receiver<String> {
    let (sender, lines) = mpsc::channel();
    forward_lines(stream, sender);
    lines
}

/// Sends each line `stream` gives to `sender`, from a thread, until either ends.
fn forward_lines(stream: impl Read + Send + 'static, sender: mpsc::Sender<String>) {
    thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
}

/// A child with piped stdin and its stdout read line by line; killed when dropped.
pub struct Running {
    /// The process.
    pub child: Child,
    /// Its stdin, until closed.
    pub stdin: Option<ChildStdin>,
    /// Its stdout's lines.
    pub lines: Receiver<String>,
}

impl Running {
    /// Starts `command`: its stdout lines arrive, stderr is discarded.
    pub fn start(command: &mut Command) -> Running {
        Running::spawn(command, false)
    }

    /// Starts `command`: its stdout and stderr lines arrive on the one channel.
    pub fn start_merged(command: &mut Command) -> Running {
        Running::spawn(command, true)
    }

    fn spawn(command: &mut Command, merged: bool) -> Running {
        let mut child = command
            .env_remove("RUST_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(if merged {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .spawn()
            .unwrap_or_else(|e| panic!("start {:?}: {e}", command.get_program()));
        let (sender, lines) = mpsc::channel();
        forward_lines(child.stdout.take().expect("piped stdout"), sender.clone());
        if let Some(stderr) = child.stderr.take() {
            forward_lines(stderr, sender);
        }
        let stdin = child.stdin.take();
        Running {
            child,
            stdin,
            lines,
        }
    }

    /// The next output line.
    pub fn line(&self) -> String {
        self.lines.recv_timeout(STEP).expect("an output line")
    }

    /// Waits for an output line containing `wanted`, skipping the lines before it.
    pub fn expect_line(&self, wanted: &str) -> String {
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

    /// Every line until stdout closes (the process ended), waiting at most [`STEP`].
    pub fn rest(&self) -> Vec<String> {
        let deadline = Instant::now() + STEP;
        let mut lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => lines.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => return lines,
                Err(mpsc::RecvTimeoutError::Timeout) => panic!("stdout still open: {lines:?}"),
            }
        }
    }

    /// Types a line at the (piped) console.
    pub fn type_line(&mut self, text: &str) {
        self.send(&format!("{text}\n"));
    }

    /// Writes `text` to stdin as it is.
    pub fn send(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(text.as_bytes()).expect("write to stdin");
        stdin.flush().expect("flush");
    }

    /// Ends stdin.
    pub fn close_stdin(&mut self) {
        drop(self.stdin.take());
    }

    /// Resident memory in bytes, and its peak, from /proc.
    pub fn memory(&self) -> (u64, u64) {
        memory_of(self.child.id())
    }

    /// Sends the process a signal.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, signal).expect("send a signal");
    }

    /// The exit code, waiting at most [`STEP`].
    pub fn status(&mut self) -> Option<i32> {
        let deadline = Instant::now() + STEP;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.code();
            }
            thread::sleep(Duration::from_millis(20));
        }
        panic!("the process did not end");
    }

    /// Ends stdin and waits (bounded) for the exit code.
    pub fn finish(mut self) -> Option<i32> {
        drop(self.stdin.take());
        self.status()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The resident memory of process `pid` in bytes, and its peak, from /proc.
pub fn memory_of(pid: u32) -> (u64, u64) {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or_else(|| panic!("no {name} in {status}"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Runs `command` with `input` piped to it; killed after [`STEP`], so a hang fails
/// the test.
pub fn run_with_input(command: &mut Command, input: &str) -> Output {
    let mut child = command
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start twistctl");
    let mut stdin = child.stdin.take().expect("piped stdin");
    // A command that ended early (a refusal) may be gone before its input is written.
    let _ = stdin.write_all(input.as_bytes());
    drop(stdin);
    let pid = child.id() as i32;
    let (done, finished) = mpsc::channel::<()>();
    thread::spawn(move || {
        if finished.recv_timeout(STEP).is_err() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    });
    let output = child.wait_with_output().expect("the command ends");
    let _ = done.send(());
    output
}

/// Bytes as text, invalid UTF-8 replaced.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A TCP or UNIX stream.
pub enum Stream {
    /// TCP.
    Tcp(TcpStream),
    /// A UNIX socket.
    Unix(UnixStream),
}

impl Stream {
    fn set_read_timeout(&self, timeout: Duration) {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(Some(timeout)),
            Stream::Unix(s) => s.set_read_timeout(Some(timeout)),
        }
        .expect("a read timeout");
    }

    fn shutdown_write(&self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(Shutdown::Write),
            Stream::Unix(s) => s.shutdown(Shutdown::Write),
        };
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
        }
    }
}

/// Where a talk-server listens, as a test connects to it.
#[derive(Debug, Clone)]
pub enum Place {
    /// A loopback TCP port.
    Tcp(u16),
    /// A UNIX socket file.
    Unix(PathBuf),
}

impl Place {
    /// A plain connection.
    pub fn connect(&self) -> Stream {
        let stream = match self {
            Place::Tcp(port) => {
                Stream::Tcp(TcpStream::connect(("127.0.0.1", *port)).expect("connect"))
            }
            Place::Unix(path) => Stream::Unix(UnixStream::connect(path).expect("connect")),
        };
        stream.set_read_timeout(STEP);
        stream
    }
}

/// A blocking peer of talk-server: plain, or a TLS client (rustls) that trusts one CA.
pub struct Peer {
    io: PeerIo,
}

enum PeerIo {
    Plain(Stream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, Stream>>),
}

impl Peer {
    /// A plain connection to `place`.
    pub fn plain(place: &Place) -> Peer {
        Peer {
            io: PeerIo::Plain(place.connect()),
        }
    }

    /// A TLS connection to `place` that trusts `ca` and verifies the server as
    /// `localhost`; the handshake completes before this returns.
    pub fn tls(place: &Place, ca: CertificateDer<'static>) -> Peer {
        let connection = super::pki::client_connection(ca, "localhost");
        let mut stream = rustls::StreamOwned::new(connection, place.connect());
        while stream.conn.is_handshaking() {
            stream
                .conn
                .complete_io(&mut stream.sock)
                .expect("the TLS handshake");
        }
        Peer {
            io: PeerIo::Tls(Box::new(stream)),
        }
    }

    fn io(&mut self) -> &mut dyn ReadWrite {
        match &mut self.io {
            PeerIo::Plain(stream) => stream,
            PeerIo::Tls(stream) => stream.as_mut(),
        }
    }

    /// Sends `data`.
    pub fn send(&mut self, data: &[u8]) {
        let io = self.io();
        io.write_all(data).expect("send");
        io.flush().expect("flush");
    }

    /// Reads until `wanted` has arrived; everything read.
    pub fn read_until(&mut self, wanted: &[u8]) -> Vec<u8> {
        let mut received = Vec::new();
        let mut buf = [0u8; 4096];
        while !received.windows(wanted.len()).any(|w| w == wanted) {
            let n = self.io().read(&mut buf).unwrap_or_else(|e| {
                panic!(
                    "waiting for {:?}, got {:?}: {e}",
                    text(wanted),
                    text(&received)
                )
            });
            assert!(
                n > 0,
                "closed while waiting for {:?}; got {:?}",
                text(wanted),
                text(&received)
            );
            received.extend_from_slice(&buf[..n]);
        }
        received
    }

    /// Reads until the server ends the stream: its FIN, or over TLS its close_notify
    /// (a TLS stream cut without one fails the test).
    pub fn read_to_close(&mut self) -> Vec<u8> {
        let mut received = Vec::new();
        self.io()
            .read_to_end(&mut received)
            .unwrap_or_else(|e| panic!("reading to the end, after {:?}: {e}", text(&received)));
        received
    }

    /// Ends our side: close_notify over TLS (which ends the stream both ways, S-14),
    /// a half-close otherwise.
    pub fn end(&mut self) {
        match &mut self.io {
            PeerIo::Plain(stream) => stream.shutdown_write(),
            PeerIo::Tls(stream) => {
                stream.conn.send_close_notify();
                let _ = stream.conn.complete_io(&mut stream.sock);
            }
        }
    }
}

impl Peer {
    /// Ends the stream under TLS without a close_notify (a truncation, S-09): the
    /// socket's write side is shut; plain, this is [`Peer::end`].
    pub fn truncate(&mut self) {
        match &mut self.io {
            PeerIo::Plain(stream) => stream.shutdown_write(),
            PeerIo::Tls(stream) => stream.sock.shutdown_write(),
        }
    }
}

/// Read and Write together, for the peer's two kinds of stream.
trait ReadWrite: Read + Write {}

impl<T: Read + Write> ReadWrite for T {}
