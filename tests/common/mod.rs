//! Scaffolding shared by the end-to-end tests: loopback listeners, bounded socket reads
//! and twistctl in a pseudo-terminal. Each test binary uses only part of it.
#![allow(dead_code)]

pub mod lifecycle;
pub mod pki;
pub mod talk;

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::process::Command;

use rexpect::process::WaitStatus;
use rexpect::session::{PtySession, spawn_command};

/// The binary under test.
pub const TWISTCTL: &str = env!("CARGO_BIN_EXE_twistctl");

/// A listener on an ephemeral loopback port, and that port.
pub fn loopback_listener() -> (TcpListener, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let port = listener.local_addr().expect("the bound address").port();
    (listener, port)
}

/// Reads until `wanted` has arrived in full; returns everything read. The stream's read
/// timeout bounds each read, so a peer that never sends fails the test.
pub fn read_until_contains(stream: &mut TcpStream, wanted: &[u8]) -> Vec<u8> {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    while !received.windows(wanted.len()).any(|w| w == wanted) {
        let n = stream.read(&mut buf).unwrap_or_else(|e| {
            panic!(
                "waiting for {:?}, got {:?}: {e}",
                String::from_utf8_lossy(wanted),
                String::from_utf8_lossy(&received)
            )
        });
        assert!(
            n > 0,
            "EOF while waiting for {:?}; got {:?}",
            String::from_utf8_lossy(wanted),
            String::from_utf8_lossy(&received)
        );
        received.extend_from_slice(&buf[..n]);
    }
    received
}

/// `command` in a pseudo-terminal with a known `TERM` (CI's is unknown) and no
/// `RUST_LOG`, every expect bounded by `expect_ms`.
pub fn spawn_in_pty(mut command: Command, expect_ms: u64) -> PtySession {
    command.env("TERM", "xterm").env_remove("RUST_LOG");
    let mut session = spawn_command(command, Some(expect_ms)).expect("spawn in a pty");
    session.process_mut().set_kill_timeout(Some(2000));
    session
}

/// `twistctl ARGS...` in a pseudo-terminal, as [`spawn_in_pty`].
pub fn twistctl_in_pty(args: &[&str], expect_ms: u64) -> PtySession {
    let mut command = Command::new(TWISTCTL);
    command.args(args);
    spawn_in_pty(command, expect_ms)
}

/// Types `text` into the terminal and pushes it through at once (rexpect buffers).
pub fn type_in_pty(session: &mut PtySession, text: &str) {
    session.send(text).expect("type into the pty");
    session.flush().expect("flush the pty");
}

/// Waits for talk-server's `Listening on ADDRESS:PORT` line; the line and the port.
pub fn expect_listening(session: &mut PtySession) -> (String, u16) {
    let (_, listening) = session
        .exp_regex(r"Listening on \S+:[0-9]+")
        .expect("the listening line");
    let port = listening
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a port in the listening line");
    (listening, port)
}

/// Waits for the process to end (the pty's EOF first, so the wait cannot hang) and
/// returns its exit code.
pub fn pty_exit_code(session: &mut PtySession) -> i32 {
    session.exp_eof().expect("the process exits");
    match session.process().wait().expect("waitpid") {
        WaitStatus::Exited(_, code) => code,
        other => panic!("the process did not exit normally: {other:?}"),
    }
}

/// Runs `command` with the stdout it was given (a file, /dev/full) and stderr
/// captured; a run longer than `limit` is killed, so a hang fails the test instead of
/// the suite.
pub fn output_within(mut command: Command, limit: std::time::Duration) -> std::process::Output {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let child = command
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("twistctl starts");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("a pid"));
    let done = Arc::new(AtomicBool::new(false));
    let finished = done.clone();
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        if !finished.load(Ordering::SeqCst) {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    });
    let output = child.wait_with_output().expect("wait for twistctl");
    done.store(true, Ordering::SeqCst);
    output
}

/// Whether this process runs as root, read from /proc (no unsafe call needed).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|uid| uid == "0"))
        })
        .unwrap_or(false)
}
