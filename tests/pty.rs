//! The talk commands in a pseudo-terminal (rexpect): the prompt, printing above a
//! half-typed line, Ctrl-C, and the terminal restored afterwards.
//!
//! `TERM` is set explicitly (CI's environment is unknown). The output carries rustyline's
//! escape sequences, so tests match substrings, never whole screens. Every expect is
//! bounded by the session timeout, every socket read by a read timeout.
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use rexpect::process::WaitStatus;
use rexpect::session::{PtySession, spawn_command};

/// Bound on each expect, in milliseconds.
const EXPECT_MS: u64 = 5000;

/// Bound on each socket read, and on the accept.
const STEP: Duration = Duration::from_secs(5);

const TWISTCTL: &str = env!("CARGO_BIN_EXE_twistctl");

/// A loopback listener and its port.
fn listen() -> (TcpListener, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let port = listener.local_addr().expect("the bound address").port();
    (listener, port)
}

/// Accepts one connection within [`STEP`] (on a thread: `accept` has no timeout).
fn accept(listener: TcpListener) -> TcpStream {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(listener.accept());
    });
    let (stream, _) = rx
        .recv_timeout(STEP)
        .expect("the client connects in time")
        .expect("accept succeeds");
    stream.set_read_timeout(Some(STEP)).expect("read timeout");
    stream.set_write_timeout(Some(STEP)).expect("write timeout");
    stream
}

/// Reads until `wanted` has arrived; returns everything read.
fn read_until_contains(stream: &mut TcpStream, wanted: &[u8]) -> Vec<u8> {
    let mut received = Vec::new();
    let mut buf = [0u8; 1024];
    while !received.windows(wanted.len()).any(|w| w == wanted) {
        let n = stream.read(&mut buf).unwrap_or_else(|e| {
            panic!(
                "waiting for {:?}, got {:?}: {e}",
                String::from_utf8_lossy(wanted),
                String::from_utf8_lossy(&received)
            )
        });
        assert!(n > 0, "EOF; got {:?}", String::from_utf8_lossy(&received));
        received.extend_from_slice(&buf[..n]);
    }
    received
}

/// Reads until EOF; the bytes read.
fn read_to_eof(stream: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    stream
        .read_to_end(&mut received)
        .expect("the client half-closes in time");
    received
}

/// `twistctl talk-client 127.0.0.1 PORT` in a pseudo-terminal.
fn client_in_pty(port: u16) -> PtySession {
    let mut command = Command::new(TWISTCTL);
    command
        .args(["talk-client", "127.0.0.1", &port.to_string()])
        .env("TERM", "xterm")
        .env_remove("RUST_LOG");
    let mut session = spawn_command(command, Some(EXPECT_MS)).expect("spawn in a pty");
    session.process_mut().set_kill_timeout(Some(2000));
    session
}

/// Waits for the process to end (the pty's EOF first, so the wait cannot hang) and
/// returns its exit code.
fn exit_code(session: &mut PtySession) -> i32 {
    session.exp_eof().expect("the client exits");
    match session.process().wait().expect("waitpid") {
        WaitStatus::Exited(_, code) => code,
        other => panic!("the client did not exit normally: {other:?}"),
    }
}

#[test]
fn a_line_typed_at_the_client_prompt_reaches_the_server() {
    let (listener, port) = listen();
    let mut session = client_in_pty(port);
    let mut server = accept(listener);
    session.exp_string("Client: ").expect("the prompt");
    session.send("hello world\r").expect("type");
    session.flush().expect("flush");
    assert_eq!(
        read_until_contains(&mut server, b"\r\n"),
        b"hello world\r\n"
    );
    session.send_control('c').expect("Ctrl-C");
    assert_eq!(exit_code(&mut session), 130);
}

#[test]
fn a_line_from_the_server_is_shown_as_server_text() {
    let (listener, port) = listen();
    let mut session = client_in_pty(port);
    let mut server = accept(listener);
    session.exp_string("Client: ").expect("the prompt");
    server.write_all(b"hi\r\n").expect("write");
    session
        .exp_string("Server: hi")
        .expect("the line above the prompt");
    drop(server);
    session
        .exp_string("Connection lost - goodbye!")
        .expect("the farewell");
    assert_eq!(exit_code(&mut session), 0);
}

#[test]
fn an_incoming_line_leaves_a_partly_typed_line_intact() {
    let (listener, port) = listen();
    let mut session = client_in_pty(port);
    let mut server = accept(listener);
    session.exp_string("Client: ").expect("the prompt");
    session.send("hel").expect("type half a line");
    session.flush().expect("flush");
    session
        .exp_string("hel")
        .expect("rustyline echoes the typing");
    server.write_all(b"ping\n").expect("write");
    session
        .exp_string("Server: ping")
        .expect("printed above the prompt");
    session
        .exp_string("hel")
        .expect("the partial line is redrawn");
    session.send("lo\r").expect("finish the line");
    session.flush().expect("flush");
    assert_eq!(read_until_contains(&mut server, b"\r\n"), b"hello\r\n");
    session.send_control('c').expect("Ctrl-C");
    assert_eq!(exit_code(&mut session), 130);
}

#[test]
fn bye_at_the_prompt_ends_with_status_0() {
    let (listener, port) = listen();
    let mut session = client_in_pty(port);
    let mut server = accept(listener);
    session.exp_string("Client: ").expect("the prompt");
    session.send("bye\r").expect("type bye");
    session.flush().expect("flush");
    assert_eq!(read_to_eof(&mut server), b"bye\r\n", "bye, then EOF");
    server
        .write_all(b"farewell from the server\r\n")
        .expect("the client still reads after bye");
    drop(server);
    session
        .exp_string("Server: farewell from the server")
        .expect("the last line before the close is shown");
    session
        .exp_string("Connection lost - goodbye!")
        .expect("the farewell");
    assert_eq!(exit_code(&mut session), 0);
}

#[test]
fn ctrl_d_half_closes_and_shows_replies_until_the_server_closes() {
    let (listener, port) = listen();
    let mut session = client_in_pty(port);
    let mut server = accept(listener);
    session.exp_string("Client: ").expect("the prompt");
    session.send_control('d').expect("Ctrl-D");
    assert_eq!(read_to_eof(&mut server), b"", "EOF, nothing sent");
    server
        .write_all(b"still here\n")
        .expect("the client still reads");
    session
        .exp_string("Server: still here")
        .expect("a reply after Ctrl-D is shown");
    drop(server);
    session
        .exp_string("Connection lost - goodbye!")
        .expect("the farewell");
    assert_eq!(exit_code(&mut session), 0);
}

#[test]
fn ctrl_c_at_the_prompt_exits_130() {
    let (listener, port) = listen();
    let mut session = client_in_pty(port);
    let mut server = accept(listener);
    session.exp_string("Client: ").expect("the prompt");
    session.send_control('c').expect("Ctrl-C");
    assert_eq!(exit_code(&mut session), 130);
    let mut rest = Vec::new();
    // Closed at once: EOF or a reset, and nothing was sent.
    let _ = server.read_to_end(&mut rest);
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
}

#[test]
fn sigterm_at_the_prompt_exits_143() {
    let (listener, port) = listen();
    let mut session = client_in_pty(port);
    let _server = accept(listener);
    session.exp_string("Client: ").expect("the prompt");
    session
        .process_mut()
        .signal(rexpect::process::Signal::SIGTERM)
        .expect("signal");
    assert_eq!(exit_code(&mut session), 143);
}

/// The canonical-mode flag as `stty -a` printed it in `output`: `Some(true)` for
/// `icanon`, `Some(false)` for `-icanon`.
fn icanon(output: &str) -> Option<bool> {
    output.split_whitespace().find_map(|word| match word {
        "icanon" => Some(true),
        "-icanon" => Some(false),
        _ => None,
    })
}

#[test]
fn the_terminal_is_restored_after_the_server_closes_and_after_ctrl_c() {
    let mut command = Command::new("bash");
    command
        .args(["--norc", "--noprofile", "-i"])
        .env("TERM", "xterm")
        .env("PS1", "READY> ")
        .env_remove("PROMPT_COMMAND")
        .env_remove("RUST_LOG");
    let mut shell = spawn_command(command, Some(EXPECT_MS)).expect("bash in a pty");
    shell.process_mut().set_kill_timeout(Some(2000));
    shell.exp_string("READY> ").expect("the shell prompt");

    // 1. The server closes while rustyline holds the terminal in raw mode.
    let (listener, port) = listen();
    shell
        .send_line(&format!(
            "{TWISTCTL} talk-client 127.0.0.1 {port}; echo STATUS=$?"
        ))
        .expect("run the client");
    let server = accept(listener);
    shell.exp_string("Client: ").expect("the client prompt");
    drop(server);
    shell
        .exp_string("Connection lost - goodbye!")
        .expect("the farewell");
    shell.exp_string("STATUS=0").expect("exit status 0");
    shell.exp_string("READY> ").expect("the shell prompt again");
    shell.send_line("stty -a; echo STTY-DONE").expect("stty");
    let (output, _) = shell.exp_regex("STTY-DONE\r?\n").expect("stty output");
    assert_eq!(
        icanon(&output),
        Some(true),
        "after a server close: {output}"
    );

    // 2. Ctrl-C at the prompt.
    let (listener, port) = listen();
    shell
        .send_line(&format!(
            "{TWISTCTL} talk-client 127.0.0.1 {port}; echo STATUS=$?"
        ))
        .expect("run the client");
    let _server = accept(listener);
    shell.exp_string("Client: ").expect("the client prompt");
    shell.send_control('c').expect("Ctrl-C");
    shell.exp_string("STATUS=130").expect("exit status 130");
    shell.exp_string("READY> ").expect("the shell prompt again");
    shell.send_line("stty -a; echo STTY-DONE").expect("stty");
    let (output, _) = shell.exp_regex("STTY-DONE\r?\n").expect("stty output");
    assert_eq!(icanon(&output), Some(true), "after Ctrl-C: {output}");

    shell.send_line("exit").expect("leave the shell");
    shell.exp_eof().expect("the shell exits");
}

/// `twistctl talk-server --port 0` on loopback in a pseudo-terminal, and its port.
fn server_in_pty() -> (PtySession, u16) {
    let mut command = Command::new(TWISTCTL);
    command
        .args(["talk-server", "--port", "0", "--bind", "127.0.0.1"])
        .env("TERM", "xterm")
        .env_remove("RUST_LOG");
    let mut session = spawn_command(command, Some(EXPECT_MS)).expect("spawn in a pty");
    session.process_mut().set_kill_timeout(Some(2000));
    let (_, listening) = session
        .exp_regex(r"Listening on 127\.0\.0\.1:[0-9]+")
        .expect("the listening line");
    let port = listening
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a port in the listening line");
    (session, port)
}

#[test]
fn talk_server_and_talk_client_in_two_terminals_talk_until_bye() {
    let (mut server, port) = server_in_pty();
    server.exp_string("Server: ").expect("the server prompt");
    let mut client = client_in_pty(port);
    client.exp_string("Client: ").expect("the client prompt");
    server
        .exp_string("* client 1 connected from 127.0.0.1:")
        .expect("the server sees the client");

    client.send("hello\r").expect("type at the client");
    client.flush().expect("flush");
    server
        .exp_string("Client 1: hello")
        .expect("the line at the server");

    // The operator types half a line, the client speaks meanwhile, the operator ends it.
    server.send("h").expect("type at the server");
    server.flush().expect("flush");
    server.exp_string("h").expect("echoed");
    client.send("are you there?\r").expect("type at the client");
    client.flush().expect("flush");
    server
        .exp_string("Client 1: are you there?")
        .expect("printed above the server prompt");
    server.send("i\r").expect("finish the line");
    server.flush().expect("flush");
    client
        .exp_string("Server: hi")
        .expect("the operator's line at the client");

    client.send("bye\r").expect("type bye");
    client.flush().expect("flush");
    server
        .exp_string("* client 1 disconnected: bye")
        .expect("the server closes on bye");
    client
        .exp_string("Connection lost - goodbye!")
        .expect("the client's farewell");
    assert_eq!(exit_code(&mut client), 0);

    server.send("/quit\r").expect("quit the server");
    server.flush().expect("flush");
    assert_eq!(exit_code(&mut server), 0);
}
