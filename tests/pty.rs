//! The talk commands in a pseudo-terminal (rexpect): the prompt, printing above a
//! half-typed line, Ctrl-C, and the terminal restored afterwards.
//!
//! `TERM` is set explicitly (CI's environment is unknown). The output carries rustyline's
//! escape sequences, so tests match substrings, never whole screens. Every expect is
//! bounded by the session timeout, every socket read by a read timeout.
mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use rexpect::session::PtySession;

use common::{
    TWISTCTL, expect_listening, loopback_listener, pty_exit_code, read_until_contains,
    spawn_in_pty, twistctl_in_pty, type_in_pty,
};

/// Bound on each expect, in milliseconds.
const EXPECT_MS: u64 = 5000;

/// Bound on each socket read, and on the accept.
const STEP: Duration = Duration::from_secs(5);

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
    twistctl_in_pty(&["talk-client", "127.0.0.1", &port.to_string()], EXPECT_MS)
}

/// A talk-client in a pseudo-terminal, connected to a loopback test server and showing
/// its prompt; the session and the server's end of the connection.
fn connected_client() -> (PtySession, TcpStream) {
    let (listener, port) = loopback_listener();
    let mut session = client_in_pty(port);
    let server = accept(listener);
    session.exp_string("Client: ").expect("the prompt");
    (session, server)
}

/// Waits for the client's farewell after the connection is gone.
fn expect_farewell(session: &mut PtySession) {
    session
        .exp_string("Connection lost - goodbye!")
        .expect("the farewell");
}

#[test]
fn a_line_typed_at_the_client_prompt_reaches_the_server() {
    let (mut session, mut server) = connected_client();
    type_in_pty(&mut session, "hello world\r");
    assert_eq!(
        read_until_contains(&mut server, b"\r\n"),
        b"hello world\r\n"
    );
    session.send_control('c').expect("Ctrl-C");
    assert_eq!(pty_exit_code(&mut session), 130);
}

#[test]
fn a_line_from_the_server_is_shown_as_server_text() {
    let (mut session, mut server) = connected_client();
    server.write_all(b"hi\r\n").expect("write");
    session
        .exp_string("Server: hi")
        .expect("the line above the prompt");
    drop(server);
    expect_farewell(&mut session);
    assert_eq!(pty_exit_code(&mut session), 0);
}

#[test]
fn an_incoming_line_leaves_a_partly_typed_line_intact() {
    let (mut session, mut server) = connected_client();
    type_in_pty(&mut session, "hel");
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
    type_in_pty(&mut session, "lo\r");
    assert_eq!(read_until_contains(&mut server, b"\r\n"), b"hello\r\n");
    session.send_control('c').expect("Ctrl-C");
    assert_eq!(pty_exit_code(&mut session), 130);
}

#[test]
fn a_half_typed_line_is_given_back_when_the_connection_drops() {
    let (mut session, server) = connected_client();
    type_in_pty(&mut session, "  half a tho");
    session
        .exp_string("half a tho")
        .expect("rustyline echoes the typing");
    drop(server);
    session
        .exp_string("* not sent:   half a tho")
        .expect("the unsent line given back");
    expect_farewell(&mut session);
    assert_eq!(pty_exit_code(&mut session), 0);
}

#[test]
fn ctrl_c_clears_a_half_typed_line_and_on_an_empty_prompt_exits_130() {
    let (mut session, mut server) = connected_client();
    type_in_pty(&mut session, "oops");
    session.exp_string("oops").expect("echoed");
    session.send_control('c').expect("Ctrl-C");
    session.exp_string("Client: ").expect("a fresh prompt");
    type_in_pty(&mut session, "  indented\r");
    assert_eq!(
        read_until_contains(&mut server, b"\r\n"),
        b"  indented\r\n",
        "the cleared line was not sent, leading blanks were kept"
    );
    session.send_control('c').expect("Ctrl-C");
    assert_eq!(pty_exit_code(&mut session), 130);
}

#[test]
fn bye_at_the_prompt_ends_with_status_0() {
    let (mut session, mut server) = connected_client();
    type_in_pty(&mut session, "bye\r");
    assert_eq!(read_to_eof(&mut server), b"bye\r\n", "bye, then EOF");
    server
        .write_all(b"farewell from the server\r\n")
        .expect("the client still reads after bye");
    drop(server);
    session
        .exp_string("Server: farewell from the server")
        .expect("the last line before the close is shown");
    expect_farewell(&mut session);
    assert_eq!(pty_exit_code(&mut session), 0);
}

#[test]
fn ctrl_d_half_closes_and_shows_replies_until_the_server_closes() {
    let (mut session, mut server) = connected_client();
    session.send_control('d').expect("Ctrl-D");
    assert_eq!(read_to_eof(&mut server), b"", "EOF, nothing sent");
    server
        .write_all(b"still here\n")
        .expect("the client still reads");
    session
        .exp_string("Server: still here")
        .expect("a reply after Ctrl-D is shown");
    drop(server);
    expect_farewell(&mut session);
    assert_eq!(pty_exit_code(&mut session), 0);
}

#[test]
fn ctrl_c_at_the_prompt_exits_130() {
    let (mut session, mut server) = connected_client();
    session.send_control('c').expect("Ctrl-C");
    assert_eq!(pty_exit_code(&mut session), 130);
    let mut rest = Vec::new();
    // Closed at once: EOF or a reset, and nothing was sent.
    let _ = server.read_to_end(&mut rest);
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
}

#[test]
fn sigterm_at_the_prompt_exits_143() {
    let (mut session, _server) = connected_client();
    session
        .process_mut()
        .signal(rexpect::process::Signal::SIGTERM)
        .expect("signal");
    assert_eq!(pty_exit_code(&mut session), 143);
}

#[test]
fn sigint_from_outside_exits_130_even_with_a_half_typed_line() {
    let (mut session, mut server) = connected_client();
    type_in_pty(&mut session, "half typed");
    session.exp_string("half typed").expect("echoed");
    session
        .process_mut()
        .signal(rexpect::process::Signal::SIGINT)
        .expect("signal");
    assert_eq!(pty_exit_code(&mut session), 130);
    assert_eq!(read_to_eof(&mut server), b"", "nothing was sent");
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

/// Runs talk-client from the interactive `shell` against a fresh loopback test server,
/// echoing its exit status as `STATUS=N` afterwards; returns once the client's prompt
/// shows, with the server's end of the connection.
fn run_client_in_shell(shell: &mut PtySession) -> TcpStream {
    let (listener, port) = loopback_listener();
    shell
        .send_line(&format!(
            "{TWISTCTL} talk-client 127.0.0.1 {port}; echo STATUS=$?"
        ))
        .expect("run the client");
    let server = accept(listener);
    shell.exp_string("Client: ").expect("the client prompt");
    server
}

/// Waits for the client's exit status and the shell prompt after it, then asserts that
/// `stty -a` reports canonical mode, i.e. the client gave the terminal back.
fn assert_terminal_restored(shell: &mut PtySession, status: i32, after: &str) {
    shell
        .exp_string(&format!("STATUS={status}"))
        .expect("the client's exit status");
    shell.exp_string("READY> ").expect("the shell prompt again");
    shell.send_line("stty -a; echo STTY-DONE").expect("stty");
    let (output, _) = shell.exp_regex("STTY-DONE\r?\n").expect("stty output");
    assert_eq!(icanon(&output), Some(true), "after {after}: {output}");
}

#[test]
fn the_terminal_is_restored_after_the_server_closes_and_after_ctrl_c() {
    let mut command = Command::new("bash");
    command
        .args(["--norc", "--noprofile", "-i"])
        .env("PS1", "READY> ")
        .env_remove("PROMPT_COMMAND");
    let mut shell = spawn_in_pty(command, EXPECT_MS);
    shell.exp_string("READY> ").expect("the shell prompt");

    // 1. The server closes while rustyline holds the terminal in raw mode.
    let server = run_client_in_shell(&mut shell);
    drop(server);
    expect_farewell(&mut shell);
    assert_terminal_restored(&mut shell, 0, "a server close");

    // 2. Ctrl-C at the prompt.
    let _server = run_client_in_shell(&mut shell);
    shell.send_control('c').expect("Ctrl-C");
    assert_terminal_restored(&mut shell, 130, "Ctrl-C");

    shell.send_line("exit").expect("leave the shell");
    shell.exp_eof().expect("the shell exits");
}

/// `twistctl talk-server --port 0` on loopback in a pseudo-terminal, and its port.
fn server_in_pty() -> (PtySession, u16) {
    let mut session = twistctl_in_pty(
        &["talk-server", "--port", "0", "--bind", "127.0.0.1"],
        EXPECT_MS,
    );
    let (listening, port) = expect_listening(&mut session);
    assert!(
        listening.starts_with("Listening on 127.0.0.1:"),
        "{listening}"
    );
    (session, port)
}

#[test]
fn talk_server_and_talk_client_in_two_terminals_talk_until_bye() {
    let (mut server, port) = server_in_pty();
    server
        .exp_string("> ")
        .expect("the server prompt, naming nobody yet");
    let mut client = client_in_pty(port);
    client.exp_string("Client: ").expect("the client prompt");
    server
        .exp_string("* client 1 connected from 127.0.0.1:")
        .expect("the server sees the client");

    type_in_pty(&mut client, "hello\r");
    server
        .exp_string("Client 1: hello")
        .expect("the line at the server");

    // The operator types half a line, the client speaks meanwhile, the operator ends it.
    type_in_pty(&mut server, "h");
    server.exp_string("h").expect("echoed");
    type_in_pty(&mut client, "are you there?\r");
    server
        .exp_string("Client 1: are you there?")
        .expect("printed above the server prompt");
    type_in_pty(&mut server, "i\r");
    client
        .exp_string("Server: hi")
        .expect("the operator's line at the client");

    type_in_pty(&mut client, "bye\r");
    server
        .exp_string("* client 1 disconnected: bye")
        .expect("the server closes on bye");
    expect_farewell(&mut client);
    assert_eq!(pty_exit_code(&mut client), 0);

    type_in_pty(&mut server, "/quit\r");
    assert_eq!(pty_exit_code(&mut server), 0);
}
