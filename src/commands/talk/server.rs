//! The talk-server's chat: who is connected, what they say, what the operator types,
//! and the orderly end.
//!
//! Everything here runs on the reactor thread and reaches the outside world through two
//! seams, so that tests drive it with fakes: an [`Operator`] (the console: where event
//! lines are printed) and a [`Scheduler`] (the reactor, or a `FakeClock`).

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};
use std::time::Duration;

use super::commands::{self, OperatorCommand};
use super::registry::{Registry, RouteError};
use super::server_client::{Client, ClientEvents, ClientSettings, Disconnect, Flow, plain_address};
use crate::commands::escape::escape_peer_text;
use crate::protocols::policies::{ConnectionLimits, LimitFactory, RefusedProtocol};
use crate::reactor::{
    Address, Deferred, Factory, Protocol, ProtocolResult, Scheduler, TransportRef,
};

/// Where the server's lines go: the console (above its prompt when interactive), or a
/// recorder in tests.
pub trait Operator {
    /// An event line for stdout: connects, messages, disconnects, `/who`.
    fn print(&self, line: &str);
    /// A notice for the operator on stderr: a line that could not be sent, a bad command.
    fn eprint(&self, line: &str);
    /// Where a line typed at the next prompt would go changed: to client N, or (None)
    /// to nobody in particular.
    fn recipient_changed(&self, recipient: Option<u64>) {
        let _ = recipient;
    }
}

/// How the server runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The operator chats with the clients.
    Console,
    /// No operator: every line goes back to its sender (`--echo`).
    Echo,
}

/// The server's settings, from the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerConfig {
    /// Console or echo.
    pub mode: Mode,
    /// The tutorial's wire format: no delimiters.
    pub raw: bool,
    /// At most this many clients at once.
    pub max_clients: usize,
    /// The longest line accepted from a client, without its delimiter.
    pub max_line: usize,
    /// Close clients that send nothing for this long.
    pub idle_timeout: Option<Duration>,
}

/// The last line a client gets when the operator kicks it (in line mode).
pub const KICK_NOTICE: &str = "* disconnected by the operator";

/// What the caller should do after a typed line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Go on reading lines.
    Continue,
    /// The operator typed `/quit`: shut down.
    Quit,
}

/// The chat server: a [`Factory`] for the listening port (at most `--max-clients`
/// connections, through the [`LimitFactory`] policy), and the operator's side.
#[derive(Clone)]
pub struct TalkServer {
    state: Rc<State>,
    /// Built once: it counts the connections for `--max-clients`.
    factory: Rc<dyn Factory>,
}

impl std::fmt::Debug for TalkServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TalkServer")
            .field("config", &self.state.config)
            .field("clients", &self.client_count())
            .finish()
    }
}

struct State {
    config: ServerConfig,
    operator: Rc<dyn Operator>,
    scheduler: Rc<dyn Scheduler>,
    clients: RefCell<Registry<Rc<Client>>>,
    stopping: Cell<bool>,
    /// Fired when the last client has gone during a shutdown.
    drained: RefCell<Option<Deferred<()>>>,
    /// The recipient last told to the operator.
    recipient: Cell<Option<u64>>,
    me: Weak<State>,
}

impl TalkServer {
    /// A server printing through `operator`, timing idle clients on `scheduler`.
    pub fn new(
        config: ServerConfig,
        operator: Rc<dyn Operator>,
        scheduler: Rc<dyn Scheduler>,
    ) -> TalkServer {
        let state = Rc::new_cyclic(|me| State {
            config,
            operator,
            scheduler,
            clients: RefCell::new(Registry::new()),
            stopping: Cell::new(false),
            drained: RefCell::new(None),
            recipient: Cell::new(None),
            me: me.clone(),
        });
        let limits = ConnectionLimits {
            total: Some(config.max_clients),
            per_peer: None,
        };
        let operator = state.operator.clone();
        let raw = config.raw;
        let refused: RefusedProtocol = Rc::new(move |addr: &Address, _why| {
            let notice = format!(
                "* connection from {} refused: server full",
                plain_address(addr.clone())
            );
            Some(Box::new(Refusal {
                raw,
                notice: Some((operator.clone(), notice)),
            }) as Box<dyn Protocol>)
        });
        let chat = Rc::new(ServerFactory {
            state: state.clone(),
        });
        let factory = Rc::new(LimitFactory::new(chat, limits).with_refusal(refused));
        TalkServer { state, factory }
    }

    /// The factory to listen with: one client per connection, or a polite refusal when
    /// the server is full.
    pub fn factory(&self) -> Rc<dyn Factory> {
        self.factory.clone()
    }

    /// How many clients are connected.
    pub fn client_count(&self) -> usize {
        self.state.clients.borrow().len()
    }

    /// Acts on one line of piped input (no prompt was shown): plain text goes to the
    /// client that spoke last, or to the only client.
    pub fn typed_line(&self, line: &str) -> Next {
        self.act(line, None)
    }

    /// Acts on one line typed at a prompt that named client `named` (`None`: nobody).
    /// Plain text goes to that client and to no one else, even if others spoke since
    /// the prompt was drawn; a prompt that named nobody sends to the only client, if
    /// exactly one is connected now.
    pub fn typed_at_prompt(&self, line: &str, named: Option<u64>) -> Next {
        self.act(line, Some(named))
    }

    /// Where the next prompt's line would go: the client that spoke last, or the only
    /// one; clients being closed do not count.
    pub fn recipient(&self) -> Option<u64> {
        self.state.recipient()
    }

    fn act(&self, line: &str, prompt: Option<Option<u64>>) -> Next {
        let next = self.act_on(line, prompt);
        // A bye or /kick may have changed who the next line goes to.
        self.state.publish_recipient();
        next
    }

    fn act_on(&self, line: &str, prompt: Option<Option<u64>>) -> Next {
        let command = match commands::parse(line) {
            Ok(command) => command,
            Err(error) => {
                self.state.operator.eprint(&format!("* {error}"));
                return Next::Continue;
            }
        };
        let state = &self.state;
        // Without a prompt nothing on the screen says where a line went: a line saying so
        // is printed instead, as the prompt would have shown it.
        let echo = |to: &str, text: &str| {
            if prompt.is_none() {
                state.operator.print(&format!("to {to}> {text}"));
            }
        };
        match command {
            OperatorCommand::Nothing => {}
            OperatorCommand::Say(text) => match prompt {
                None => {
                    let route = state.clients.borrow().route_among(is_open);
                    match route {
                        Ok(id) => {
                            if state.say_to(id, &text) {
                                echo(&id.to_string(), &text);
                            }
                        }
                        Err(error) => state.operator.eprint(&format!("* not sent: {error}")),
                    }
                }
                Some(Some(id)) => {
                    let client = state.clients.borrow().get(id).cloned();
                    match client.filter(is_open) {
                        Some(client) => {
                            state.say(&client, &text);
                        }
                        None => state
                            .operator
                            .eprint(&format!("* not sent: client {id} has left")),
                    }
                }
                Some(None) => {
                    let only = state.clients.borrow().only_among(is_open);
                    match only {
                        Ok(id) => {
                            state.say_to(id, &text);
                        }
                        Err(RouteError::NoClients) => {
                            state.operator.eprint("* not sent: no client is connected");
                        }
                        Err(RouteError::Ambiguous(count)) => state.operator.eprint(&format!(
                            "* not sent: the prompt named no client and {count} are connected; \
                             use /to N text"
                        )),
                    }
                }
            },
            OperatorCommand::To(id, text) => {
                if state.say_to(id, &text) {
                    echo(&id.to_string(), &text);
                }
            }
            OperatorCommand::All(text) => {
                let clients = state.clients.borrow().snapshot();
                if clients.is_empty() {
                    state.operator.eprint("* not sent: no client is connected");
                }
                let mut sent = false;
                for (_, client) in clients {
                    sent |= state.say(&client, &text);
                }
                if sent {
                    echo("all", &text);
                }
            }
            OperatorCommand::Who => state.who(),
            OperatorCommand::Kick(id) => {
                let client = state.clients.borrow().get(id).cloned();
                match client {
                    Some(client) => {
                        client.close_telling(Some(KICK_NOTICE), Disconnect::Kicked);
                    }
                    None => state.no_such_client(id),
                }
            }
            OperatorCommand::Quit => return Next::Quit,
            OperatorCommand::Help => {
                for line in commands::HELP {
                    state.operator.print(line);
                }
            }
        }
        Next::Continue
    }

    /// Begins the orderly end: no new clients; every client is closed after what is
    /// buffered for it has been sent. The Deferred fires once all are gone (each gets
    /// at most [`CLOSE_GRACE`](super::server_client::CLOSE_GRACE) to take its data).
    pub fn shut_down(&self) -> Deferred<()> {
        let state = &self.state;
        state.stopping.set(true);
        let clients = state.clients.borrow().snapshot();
        for (_, client) in &clients {
            client.close(Disconnect::Shutdown);
        }
        if state.clients.borrow().is_empty() {
            return Deferred::succeed(());
        }
        let drained = Deferred::new();
        *state.drained.borrow_mut() = Some(drained.clone());
        drained
    }
}

/// A client that lines may still be sent to (not being closed).
fn is_open(client: &Rc<Client>) -> bool {
    !client.is_closing()
}

impl State {
    fn recipient(&self) -> Option<u64> {
        self.clients.borrow().route_among(is_open).ok()
    }

    /// Tells the operator when the recipient of the next prompt changed.
    fn publish_recipient(&self) {
        let recipient = self.recipient();
        if self.recipient.replace(recipient) != recipient {
            self.operator.recipient_changed(recipient);
        }
    }

    fn settings(&self) -> ClientSettings {
        ClientSettings {
            raw: self.config.raw,
            max_line: self.config.max_line,
            idle_timeout: self.config.idle_timeout,
            flow: match self.config.mode {
                Mode::Console => Flow::Queue,
                Mode::Echo => Flow::Echo,
            },
        }
    }

    /// Sends to client `id`; true if the line was accepted.
    fn say_to(&self, id: u64, text: &str) -> bool {
        let client = self.clients.borrow().get(id).cloned();
        match client {
            Some(client) => self.say(&client, text),
            None => {
                self.no_such_client(id);
                false
            }
        }
    }

    /// Sends a typed line; a `bye` then closes that client, as in the tutorial. True if
    /// the line was accepted.
    fn say(&self, client: &Rc<Client>, text: &str) -> bool {
        if !client.send_line(text.as_bytes()) {
            return false;
        }
        if text.trim() == "bye" {
            client.close(Disconnect::Bye);
        }
        true
    }

    fn no_such_client(&self, id: u64) {
        self.operator
            .eprint(&format!("* no client {id}; /who lists the clients"));
    }

    fn who(&self) {
        let clients = self.clients.borrow().snapshot();
        if clients.is_empty() {
            self.operator.print("* no clients connected");
        }
        for (id, client) in clients {
            // Whole seconds: "0s", not "0ms", for a client heard just now.
            let idle = match client.idle().as_secs() {
                0 => "0s".to_string(),
                secs => crate::duration::format(Duration::from_secs(secs)),
            };
            let half_closed = if client.is_half_closed() {
                " half-closed"
            } else {
                ""
            };
            self.operator.print(&format!(
                "* client {id} {} {} idle {idle}{half_closed}",
                client.origin(),
                client.transport_name(),
            ));
        }
    }
}

impl ClientEvents for State {
    fn connected(&self, client: &Rc<Client>) {
        let id = self.clients.borrow_mut().add(client.clone());
        client.set_id(id);
        self.operator
            .print(&format!("* client {id} connected from {}", client.origin()));
        self.publish_recipient();
    }

    fn received(&self, client: &Rc<Client>, message: &[u8]) {
        if client.is_closing() {
            return;
        }
        match self.config.mode {
            Mode::Echo => {
                client.send_line(message);
            }
            Mode::Console => {
                let shown = if self.config.raw {
                    // One chunk is one message; a newline the peer ended it with is
                    // not part of what it said.
                    let message = message.strip_suffix(b"\n").unwrap_or(message);
                    message.strip_suffix(b"\r").unwrap_or(message)
                } else {
                    message
                };
                let id = client.id();
                self.operator
                    .print(&format!("Client {id}: {}", escape_peer_text(shown)));
                self.clients.borrow_mut().spoke(id);
                if shown.trim_ascii() == b"bye" {
                    client.close(Disconnect::Bye);
                }
                self.publish_recipient();
            }
        }
    }

    fn finished_sending(&self, client: &Rc<Client>) {
        match self.config.mode {
            // Everything that came has been echoed: nothing more will.
            Mode::Echo => client.close(Disconnect::ClosedByPeer),
            Mode::Console => self
                .operator
                .print(&format!("* client {} finished sending", client.id())),
        }
    }

    fn disconnected(&self, client: &Rc<Client>, reason: Disconnect) {
        let id = client.id();
        let removed = self.clients.borrow_mut().remove(id);
        if removed.is_none() {
            return; // never registered
        }
        self.operator
            .print(&format!("* client {id} disconnected: {reason}"));
        self.publish_recipient();
        if self.stopping.get() && self.clients.borrow().is_empty() {
            let drained = self.drained.borrow_mut().take();
            if let Some(drained) = drained {
                let _ = drained.callback(());
            }
        }
    }
}

struct ServerFactory {
    state: Rc<State>,
}

impl Factory for ServerFactory {
    fn build_protocol(&self, addr: Address) -> Option<Box<dyn Protocol>> {
        let state = &self.state;
        if state.stopping.get() {
            return None;
        }
        let events: Weak<dyn ClientEvents> = state.me.clone();
        let (_client, protocol) =
            Client::new_protocol(addr, state.settings(), events, state.scheduler.clone());
        Some(protocol)
    }
}

/// The connection of a client that came when the server was full: told so, then closed.
/// The operator hears of it as of a client: over TLS once the handshake completed, so
/// that a peer that fails it (a port scan) prints nothing.
struct Refusal {
    raw: bool,
    /// The line for the operator, until printed.
    notice: Option<(Rc<dyn Operator>, String)>,
}

impl Refusal {
    fn announce(&mut self) {
        if let Some((operator, line)) = self.notice.take() {
            operator.print(&line);
        }
    }
}

impl Protocol for Refusal {
    fn connection_made(&mut self, transport: &TransportRef) -> ProtocolResult {
        // Over TLS this waits for the handshake, and goes out with close_notify.
        let delimiter: &[u8] = if self.raw { b"" } else { b"\r\n" };
        transport.write_sequence(&[b"error: server full", delimiter]);
        transport.lose_connection();
        if !transport.is_tls() || transport.tls().is_some() {
            self.announce();
        }
        Ok(())
    }

    fn handshake_completed(&mut self, _transport: &TransportRef) -> ProtocolResult {
        self.announce();
        Ok(())
    }

    fn data_received(&mut self, _transport: &TransportRef, _data: &[u8]) -> ProtocolResult {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::talk::server_client::{CLOSE_GRACE, OUTGOING_LIMIT};
    use crate::reactor::testing::{ProtocolDriver, StringTransport};
    use crate::reactor::{CloseReason, FakeClock, Transport};
    use std::io;
    use std::net::SocketAddr;

    #[derive(Default)]
    struct Recorder {
        out: RefCell<Vec<String>>,
        err: RefCell<Vec<String>>,
        recipients: RefCell<Vec<Option<u64>>>,
    }

    impl Operator for Recorder {
        fn print(&self, line: &str) {
            self.out.borrow_mut().push(line.to_string());
        }
        fn eprint(&self, line: &str) {
            self.err.borrow_mut().push(line.to_string());
        }
        fn recipient_changed(&self, recipient: Option<u64>) {
            self.recipients.borrow_mut().push(recipient);
        }
    }

    type Driver = ProtocolDriver<dyn Protocol>;

    struct Harness {
        server: TalkServer,
        clock: FakeClock,
        operator: Rc<Recorder>,
        factory: Rc<dyn Factory>,
    }

    fn config() -> ServerConfig {
        ServerConfig {
            mode: Mode::Console,
            raw: false,
            max_clients: 1024,
            max_line: 64 * 1024,
            idle_timeout: None,
        }
    }

    impl Harness {
        fn new(config: ServerConfig) -> Harness {
            let clock = FakeClock::new();
            let operator = Rc::new(Recorder::default());
            let server = TalkServer::new(config, operator.clone(), Rc::new(clock.clone()));
            let factory = server.factory();
            Harness {
                server,
                clock,
                operator,
                factory,
            }
        }

        fn connect_from(&self, peer: SocketAddr) -> Driver {
            let protocol = self
                .factory
                .build_protocol(peer.into())
                .expect("a protocol");
            let host = SocketAddr::from(([127, 0, 0, 1], 8000));
            let mut driver = ProtocolDriver::from_box(protocol, StringTransport::new(peer, host));
            driver.connect().expect("connection_made");
            driver
        }

        fn connect(&self, port: u16) -> Driver {
            self.connect_from(SocketAddr::from(([127, 0, 0, 1], port)))
        }

        fn out(&self) -> Vec<String> {
            std::mem::take(&mut *self.operator.out.borrow_mut())
        }

        fn err(&self) -> Vec<String> {
            std::mem::take(&mut *self.operator.err.borrow_mut())
        }

        fn typed(&self, line: &str) -> Next {
            self.server.typed_line(line)
        }
    }

    fn written(driver: &Driver) -> String {
        String::from_utf8_lossy(&driver.transport().take_written()).into_owned()
    }

    fn pause(driver: &Driver) {
        driver
            .transport()
            .producer()
            .expect("a registered producer")
            .pause_producing();
    }

    fn resume(driver: &Driver) {
        driver
            .transport()
            .producer()
            .expect("a registered producer")
            .resume_producing();
    }

    #[test]
    fn p03_connect_prints_the_client_number_and_plain_address() {
        let h = Harness::new(config());
        let _one = h.connect(5001);
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:5002".parse().unwrap();
        let _two = h.connect_from(mapped);
        let v6: SocketAddr = "[::1]:5003".parse().unwrap();
        let _three = h.connect_from(v6);
        assert_eq!(
            h.out(),
            [
                "* client 1 connected from 127.0.0.1:5001",
                "* client 2 connected from 127.0.0.1:5002",
                "* client 3 connected from [::1]:5003",
            ]
        );
        assert_eq!(h.server.client_count(), 3);
    }

    #[test]
    fn l03_lines_flow_both_ways_with_crlf_on_the_wire() {
        let h = Harness::new(config());
        let mut client = h.connect(5001);
        h.out();
        client.feed(b"hello\r\nsecond line\n").unwrap();
        assert_eq!(h.out(), ["Client 1: hello", "Client 1: second line"]);
        assert_eq!(h.typed("  hi there  "), Next::Continue);
        assert_eq!(written(&client), "  hi there\r\n", "indentation is kept");
        assert!(h.err().is_empty());
    }

    #[test]
    fn peer_text_is_escaped_and_never_reaches_the_screen_raw() {
        let h = Harness::new(config());
        let mut client = h.connect(5001);
        h.out();
        client
            .feed(b"\x1b[2J\x1b]0;owned\x07 \\ caf\xc3\xa9 \xff\n")
            .unwrap();
        let out = h.out();
        assert_eq!(
            out,
            ["Client 1: \\x1b[2J\\x1b]0;owned\\x07 \\\\ café \\xff"]
        );
        assert!(!out[0].contains('\x1b'));
    }

    #[test]
    fn a_blank_typed_line_is_not_sent() {
        let h = Harness::new(config());
        let client = h.connect(5001);
        h.typed("   ");
        h.typed("");
        assert_eq!(written(&client), "");
        assert!(h.err().is_empty());
    }

    #[test]
    fn client_bye_is_printed_and_closes_that_client_after_flushing() {
        let h = Harness::new(config());
        let mut client = h.connect(5001);
        let other = h.connect(5002);
        h.out();
        client.feed(b"bye\r\n").unwrap();
        assert!(
            client.transport().lost_connection(),
            "closed in an orderly way"
        );
        assert!(!client.transport().aborted());
        client.close();
        assert_eq!(h.out(), ["Client 1: bye", "* client 1 disconnected: bye"]);
        assert!(!other.transport().lost_connection());
        assert_eq!(h.server.client_count(), 1);
    }

    #[test]
    fn operator_bye_is_sent_then_closes_the_client() {
        let h = Harness::new(config());
        let mut client = h.connect(5001);
        h.out();
        h.typed("bye");
        assert_eq!(written(&client), "bye\r\n");
        assert!(client.transport().lost_connection());
        client.close();
        assert_eq!(h.out(), ["to 1> bye", "* client 1 disconnected: bye"]);
    }

    #[test]
    fn typed_lines_go_to_the_last_speaker_else_the_only_client_else_nowhere() {
        let h = Harness::new(config());
        h.typed("anyone?");
        assert_eq!(
            h.err(),
            ["* not sent: no client is connected"],
            "nobody to send to"
        );
        let mut one = h.connect(5001);
        h.typed("only you");
        assert_eq!(written(&one), "only you\r\n");
        let mut two = h.connect(5002);
        h.typed("which one?");
        assert_eq!(written(&one), "");
        assert_eq!(written(&two), "");
        let error = h.err();
        assert_eq!(error.len(), 1);
        assert!(error[0].contains("/to N"), "{error:?}");
        two.feed(b"me\n").unwrap();
        h.typed("to two");
        assert_eq!(written(&two), "to two\r\n");
        one.feed(b"me too\n").unwrap();
        h.typed("to one");
        assert_eq!(written(&one), "to one\r\n");
        one.lose(CloseReason::Done);
        h.typed("to the only one left");
        assert_eq!(written(&two), "to the only one left\r\n");
    }

    #[test]
    fn to_all_and_double_slash() {
        let h = Harness::new(config());
        let one = h.connect(5001);
        let two = h.connect(5002);
        h.typed("/to 2 just you");
        assert_eq!(written(&one), "");
        assert_eq!(written(&two), "just you\r\n");
        h.typed("/all everybody");
        assert_eq!(written(&one), "everybody\r\n");
        assert_eq!(written(&two), "everybody\r\n");
        h.typed("/to 1 //not a command");
        assert_eq!(written(&one), "//not a command\r\n");
        h.typed("/to 9 nobody");
        assert_eq!(h.err(), ["* no client 9; /who lists the clients"]);
        h.typed("/to 1 bye");
        assert!(one.transport().lost_connection());
        assert!(!two.transport().lost_connection());
    }

    #[test]
    fn double_slash_sends_a_literal_slash_line_to_the_default_client() {
        let h = Harness::new(config());
        let one = h.connect(5001);
        h.typed("//who");
        assert_eq!(written(&one), "/who\r\n");
    }

    #[test]
    fn all_bye_closes_every_client() {
        let h = Harness::new(config());
        let one = h.connect(5001);
        let two = h.connect(5002);
        h.typed("/all bye");
        assert_eq!(written(&one), "bye\r\n");
        assert!(one.transport().lost_connection());
        assert!(two.transport().lost_connection());
    }

    #[test]
    fn kick_closes_the_client_with_reason_kicked() {
        let h = Harness::new(config());
        let mut one = h.connect(5001);
        let two = h.connect(5002);
        h.out();
        h.typed("/kick 1");
        assert!(one.transport().lost_connection());
        assert!(!two.transport().lost_connection());
        one.close();
        assert_eq!(h.out(), ["* client 1 disconnected: kicked"]);
        h.typed("/kick 1");
        assert_eq!(h.err(), ["* no client 1; /who lists the clients"]);
    }

    #[test]
    fn who_lists_number_address_transport_and_idle_time() {
        let h = Harness::new(config());
        h.typed("/who");
        assert_eq!(h.out(), ["* no clients connected"]);
        let _one = h.connect(5001);
        h.clock.advance(Duration::from_secs(65));
        let mut two = h.connect(5002);
        h.clock.advance(Duration::from_millis(2500));
        two.feed(b"x").unwrap();
        h.clock.advance(Duration::from_secs(3));
        h.out();
        h.typed("/who");
        assert_eq!(
            h.out(),
            [
                "* client 1 127.0.0.1:5001 tcp idle 1m10s",
                "* client 2 127.0.0.1:5002 tcp idle 3s",
            ]
        );
    }

    #[test]
    fn help_quit_and_bad_commands() {
        let h = Harness::new(config());
        h.typed("/help");
        assert_eq!(h.out().len(), commands::HELP.len());
        h.typed("/frob");
        let error = h.err();
        assert_eq!(error.len(), 1);
        assert!(error[0].starts_with("* unknown command /frob"), "{error:?}");
        assert_eq!(h.typed("/quit"), Next::Quit);
    }

    #[test]
    fn p05_disconnect_reasons_from_the_peer() {
        let h = Harness::new(config());
        let mut one = h.connect(5001);
        let mut two = h.connect(5002);
        let mut three = h.connect(5003);
        h.out();
        one.lose(CloseReason::Done);
        two.lose(CloseReason::Reset(Rc::new(io::Error::from(
            io::ErrorKind::ConnectionReset,
        ))));
        three.lose(CloseReason::Lost(Some(Rc::new(io::Error::from(
            io::ErrorKind::ConnectionReset,
        )))));
        assert_eq!(
            h.out(),
            [
                "* client 1 disconnected: closed by peer",
                "* client 2 disconnected: connection reset",
                "* client 3 disconnected: connection reset",
            ]
        );
        assert_eq!(h.server.client_count(), 0);
    }

    #[test]
    fn a_reset_mid_line_reports_connection_reset_and_shows_no_partial_line() {
        let h = Harness::new(config());
        let mut one = h.connect(5001);
        let two = h.connect(5002);
        h.out();
        one.feed(b"half a li").unwrap();
        one.lose(CloseReason::Reset(Rc::new(io::Error::from(
            io::ErrorKind::ConnectionReset,
        ))));
        assert_eq!(h.out(), ["* client 1 disconnected: connection reset"]);
        h.typed("still here?");
        assert_eq!(written(&two), "still here?\r\n");
    }

    #[test]
    fn l07_a_line_over_max_line_gets_an_error_and_is_closed() {
        let h = Harness::new(ServerConfig {
            max_line: 10,
            ..config()
        });
        let mut exact = h.connect(5001);
        exact.feed(b"0123456789\r\n").unwrap();
        assert!(!exact.transport().lost_connection(), "10 bytes are fine");
        let mut long = h.connect(5002);
        h.out();
        long.feed(b"0123456789A\n").unwrap();
        assert_eq!(written(&long), "error: line too long\r\n");
        assert!(long.transport().lost_connection());
        long.close();
        assert_eq!(h.out(), ["* client 2 disconnected: line too long"]);
    }

    #[test]
    fn l08_an_unterminated_line_over_max_line_is_rejected_before_its_newline() {
        let h = Harness::new(ServerConfig {
            max_line: 10,
            ..config()
        });
        let mut client = h.connect(5001);
        // Room for max_line plus a possible "\r\n": still undecided.
        client.feed(b"0123456789\r").unwrap();
        assert!(!client.transport().lost_connection());
        client.feed(b"xx").unwrap();
        assert_eq!(written(&client), "error: line too long\r\n");
        assert!(client.transport().lost_connection());
        // Nothing more is taken in for the rejected line.
        client.feed(&vec![b'y'; 1 << 20]).unwrap();
        assert_eq!(written(&client), "");
    }

    #[test]
    fn more_clients_than_max_clients_are_told_the_server_is_full() {
        let h = Harness::new(ServerConfig {
            max_clients: 2,
            ..config()
        });
        let one = h.connect(5001);
        let mut two = h.connect(5002);
        let three = h.connect(5003);
        assert_eq!(written(&three), "error: server full\r\n");
        assert!(three.transport().lost_connection());
        assert!(!one.transport().lost_connection());
        assert!(!two.transport().lost_connection());
        assert_eq!(h.server.client_count(), 2);
        assert_eq!(
            h.out().last().map(String::as_str),
            Some("* connection from 127.0.0.1:5003 refused: server full")
        );
        two.lose(CloseReason::Done);
        let four = h.connect(5004);
        assert!(!four.transport().lost_connection(), "room again");
        assert_eq!(h.server.client_count(), 2);
        assert_eq!(
            h.out().last().map(String::as_str),
            Some("* client 3 connected from 127.0.0.1:5004")
        );
    }

    #[test]
    fn idle_clients_are_told_and_closed_after_idle_timeout() {
        let h = Harness::new(ServerConfig {
            idle_timeout: Some(Duration::from_secs(10)),
            ..config()
        });
        let mut quiet = h.connect(5001);
        let mut chatty = h.connect(5002);
        h.clock.advance(Duration::from_secs(9));
        chatty.feed(b"still ").unwrap(); // a partial line is activity too
        h.clock.advance(Duration::from_secs(1));
        assert_eq!(written(&quiet), "* disconnected: idle for 10s\r\n");
        assert!(quiet.transport().lost_connection());
        assert!(!chatty.transport().lost_connection());
        quiet.close();
        h.clock.advance(Duration::from_secs(8));
        assert!(!chatty.transport().lost_connection(), "heard 8 s ago");
        h.clock.advance(Duration::from_secs(1));
        assert_eq!(written(&chatty), "* disconnected: idle for 10s\r\n");
        chatty.close();
        let out = h.out();
        assert!(out.contains(&"* client 1 disconnected: idle timeout".to_string()));
        assert!(out.contains(&"* client 2 disconnected: idle timeout".to_string()));
    }

    fn half_close(driver: &mut Driver) {
        let transport = driver.transport_ref().clone();
        driver
            .protocol_mut()
            .read_connection_lost(&transport)
            .expect("read_connection_lost");
    }

    #[test]
    fn a_client_that_half_closes_is_kept_for_writing_until_bye() {
        let h = Harness::new(config());
        let mut client = h.connect(5001);
        assert!(client.protocol().wants_half_close());
        h.out();
        client.feed(b"what time is it?\n").unwrap();
        half_close(&mut client);
        assert_eq!(
            h.out(),
            ["Client 1: what time is it?", "* client 1 finished sending"]
        );
        assert!(!client.transport().lost_connection());
        h.typed("/who");
        let who = h.out();
        assert!(who[0].ends_with(" half-closed"), "{who:?}");
        h.typed("noon");
        assert_eq!(written(&client), "noon\r\n");
        assert!(!client.transport().lost_connection());
        h.typed("bye");
        assert_eq!(written(&client), "bye\r\n");
        assert!(client.transport().lost_connection());
        client.close();
        assert_eq!(
            h.out(),
            ["to 1> noon", "to 1> bye", "* client 1 disconnected: bye"]
        );
    }

    #[test]
    fn an_unterminated_last_line_is_shown_before_finished_sending() {
        let h = Harness::new(config());
        let mut client = h.connect(5001);
        h.out();
        client.feed(b"final \x1b words\r").unwrap();
        half_close(&mut client);
        assert_eq!(
            h.out(),
            ["Client 1: final \\x1b words", "* client 1 finished sending"]
        );
    }

    #[test]
    fn an_unterminated_bye_before_half_close_closes_the_client() {
        let h = Harness::new(config());
        let mut client = h.connect(5001);
        h.out();
        client.feed(b"bye").unwrap();
        half_close(&mut client);
        assert!(client.transport().lost_connection());
        assert_eq!(h.out(), ["Client 1: bye"]);
    }

    #[test]
    fn a_half_closed_client_is_closed_by_kick_idle_timeout_and_shutdown() {
        let h = Harness::new(ServerConfig {
            idle_timeout: Some(Duration::from_secs(300)),
            ..config()
        });
        let mut kicked = h.connect(5001);
        let mut idle = h.connect(5002);
        let mut last = h.connect(5003);
        for client in [&mut kicked, &mut idle, &mut last] {
            half_close(client);
        }
        h.typed("/kick 1");
        assert_eq!(written(&kicked), "* disconnected by the operator\r\n");
        assert!(kicked.transport().lost_connection());
        h.typed("/to 3 still here");
        h.clock.advance(Duration::from_secs(300));
        assert_eq!(written(&idle), "* disconnected: idle for 5m\r\n");
        assert!(idle.transport().lost_connection());
        assert_eq!(
            written(&last),
            "still here\r\n* disconnected: idle for 5m\r\n"
        );
        let _ = h.server.shut_down();
        assert!(last.transport().lost_connection());
    }

    #[test]
    fn echo_mode_ends_a_client_at_its_end_of_input() {
        let h = Harness::new(ServerConfig {
            mode: Mode::Echo,
            ..config()
        });
        let mut client = h.connect(5001);
        h.out();
        client.feed(b"one\ntwo").unwrap();
        half_close(&mut client);
        assert_eq!(
            written(&client),
            "one\r\ntwo\r\n",
            "the last line is echoed too"
        );
        assert!(client.transport().lost_connection());
        client.close();
        assert_eq!(h.out(), ["* client 1 disconnected: closed by peer"]);
    }

    #[test]
    fn raw_mode_kick_sends_no_notice() {
        let h = Harness::new(ServerConfig {
            raw: true,
            ..config()
        });
        let client = h.connect(5001);
        h.typed("/kick 1");
        assert_eq!(written(&client), "");
        assert!(client.transport().lost_connection());
    }

    #[test]
    fn a_line_goes_to_the_client_its_prompt_named_even_if_another_spoke_since() {
        let h = Harness::new(config());
        let mut one = h.connect(5001);
        let mut two = h.connect(5002);
        one.feed(b"question for you\n").unwrap();
        let named = h.server.recipient();
        assert_eq!(named, Some(1));
        // While the operator types at "to 1> ", client 2 speaks.
        two.feed(b"me too!\n").unwrap();
        assert_eq!(h.server.recipient(), Some(2), "the next prompt names 2");
        h.server.typed_at_prompt("answer for one", named);
        assert_eq!(written(&one), "answer for one\r\n");
        assert_eq!(written(&two), "");
        // Piped input (no prompt) still goes to the last speaker.
        h.typed("for the last speaker");
        assert_eq!(written(&two), "for the last speaker\r\n");
        assert!(h.err().is_empty());
    }

    #[test]
    fn piped_lines_are_echoed_naming_their_recipient_and_typed_ones_are_not() {
        let h = Harness::new(config());
        let _one = h.connect(5001);
        let _two = h.connect(5002);
        h.out();
        h.typed("/to 2 for two");
        h.typed("/all for all");
        h.typed("nobody spoke");
        h.server.typed_at_prompt("/to 1 at a prompt", None);
        assert_eq!(h.out(), ["to 2> for two", "to all> for all"]);
        assert_eq!(
            h.err(),
            ["* not sent: 2 clients are connected and none of them spoke last; use /to N text"]
        );
    }

    #[test]
    fn a_line_for_a_client_that_left_is_not_sent_to_anyone() {
        let h = Harness::new(config());
        let mut one = h.connect(5001);
        let two = h.connect(5002);
        one.feed(b"hi\n").unwrap();
        let named = h.server.recipient();
        one.lose(CloseReason::Done);
        assert_eq!(h.server.recipient(), Some(2));
        h.server.typed_at_prompt("are you there?", named);
        assert_eq!(h.err(), ["* not sent: client 1 has left"]);
        assert_eq!(written(&two), "");
    }

    #[test]
    fn a_line_for_a_client_being_closed_is_not_sent() {
        let h = Harness::new(config());
        let one = h.connect(5001);
        h.server.typed_at_prompt("bye", Some(1));
        assert_eq!(
            h.server.recipient(),
            None,
            "closing clients are no recipients"
        );
        h.server.typed_at_prompt("one more thing", Some(1));
        assert_eq!(h.err(), ["* not sent: client 1 has left"]);
        assert_eq!(written(&one), "bye\r\n");
    }

    #[test]
    fn a_prompt_that_named_nobody_sends_to_the_only_client_at_enter() {
        let h = Harness::new(config());
        h.server.typed_at_prompt("anyone?", None);
        assert_eq!(h.err(), ["* not sent: no client is connected"]);
        let one = h.connect(5001);
        h.server.typed_at_prompt("just you", None);
        assert_eq!(written(&one), "just you\r\n");
        let two = h.connect(5002);
        h.server.typed_at_prompt("which one?", None);
        assert_eq!(
            h.err(),
            ["* not sent: the prompt named no client and 2 are connected; use /to N text"]
        );
        assert_eq!(written(&one), "");
        assert_eq!(written(&two), "");
        // Commands work at any prompt.
        h.server.typed_at_prompt("/to 2 you", None);
        assert_eq!(written(&two), "you\r\n");
    }

    #[test]
    fn the_operator_is_told_when_the_next_recipient_changes() {
        let h = Harness::new(config());
        let mut one = h.connect(5001);
        let mut two = h.connect(5002);
        two.feed(b"hello\n").unwrap();
        two.feed(b"again\n").unwrap();
        two.lose(CloseReason::Done);
        h.typed("bye");
        one.close();
        assert_eq!(
            *h.operator.recipients.borrow(),
            [Some(1), None, Some(2), Some(1), None]
        );
    }

    #[test]
    fn without_idle_timeout_no_timer_is_scheduled() {
        let h = Harness::new(config());
        let _client = h.connect(5001);
        assert!(h.clock.delayed_calls().is_empty());
    }

    #[test]
    fn x19_console_mode_queues_while_paused_and_sends_in_order_on_resume() {
        let h = Harness::new(config());
        let client = h.connect(5001);
        pause(&client);
        h.typed("one");
        h.typed("two");
        assert_eq!(
            written(&client),
            "",
            "held back while the transport is full"
        );
        assert!(!client.transport().paused(), "console mode keeps reading");
        resume(&client);
        assert_eq!(written(&client), "one\r\ntwo\r\n");
        h.typed("three");
        assert_eq!(written(&client), "three\r\n");
    }

    #[test]
    fn console_mode_a_client_that_does_not_read_is_dropped_as_too_slow() {
        let h = Harness::new(config());
        let mut slow = h.connect(5001);
        let mut other = h.connect(5002);
        h.out();
        pause(&slow);
        let line = "x".repeat(1000);
        let mut sent = 0;
        while !slow.transport().aborted() {
            h.typed(&format!("/to 1 {line}"));
            sent += 1;
            assert!(sent <= OUTGOING_LIMIT / 1000, "never dropped");
        }
        assert!(sent * 1002 <= OUTGOING_LIMIT);
        slow.close();
        assert_eq!(
            h.out().last().map(String::as_str),
            Some("* client 1 disconnected: too slow")
        );
        other.feed(b"hello\n").unwrap();
        h.typed("hi");
        assert_eq!(h.out(), ["Client 2: hello", "to 2> hi"]);
        assert_eq!(written(&other), "hi\r\n");
    }

    #[test]
    fn closing_sends_what_is_queued_first() {
        let h = Harness::new(config());
        let client = h.connect(5001);
        pause(&client);
        h.typed("queued");
        h.typed("bye");
        assert_eq!(written(&client), "queued\r\nbye\r\n");
        assert!(client.transport().lost_connection());
    }

    #[test]
    fn a_closing_client_that_takes_nothing_is_reset_after_the_grace_period() {
        let h = Harness::new(config());
        let client = h.connect(5001);
        h.typed("/kick 1");
        assert!(!client.transport().aborted());
        h.clock.advance(CLOSE_GRACE);
        assert!(client.transport().aborted());
    }

    #[test]
    fn echo_mode_sends_every_line_back_and_prints_no_messages() {
        let h = Harness::new(ServerConfig {
            mode: Mode::Echo,
            ..config()
        });
        let mut client = h.connect(5001);
        client.feed(b"one\r\ntwo\nbye\n").unwrap();
        assert_eq!(written(&client), "one\r\ntwo\r\nbye\r\n");
        assert!(!client.transport().lost_connection(), "echo is pure");
        assert_eq!(h.out(), ["* client 1 connected from 127.0.0.1:5001"]);
    }

    #[test]
    fn x19_echo_mode_stops_reading_a_client_until_its_output_drains() {
        let h = Harness::new(ServerConfig {
            mode: Mode::Echo,
            ..config()
        });
        let mut client = h.connect(5001);
        pause(&client);
        assert!(client.transport().paused(), "reading paused");
        client.feed(b"a\nb\n").unwrap();
        assert_eq!(written(&client), "", "nothing echoed while paused");
        resume(&client);
        assert!(!client.transport().paused());
        assert_eq!(written(&client), "a\r\nb\r\n");
    }

    /// A transport that, like the reactor's, pauses its producer from inside the
    /// write that takes it over a limit.
    struct PausingTransport {
        inner: Rc<StringTransport>,
        limit: usize,
    }

    impl Transport for PausingTransport {
        fn write(&self, data: &[u8]) {
            self.write_sequence(&[data]);
        }
        fn write_sequence(&self, chunks: &[&[u8]]) {
            self.inner.write_sequence(chunks);
            if self.inner.written().len() > self.limit
                && let Some(producer) = self.inner.producer()
            {
                producer.pause_producing();
            }
        }
        fn lose_connection(&self) {
            self.inner.lose_connection();
        }
        fn abort_connection(&self) {
            self.inner.abort_connection();
        }
        fn lose_write_connection(&self) {
            self.inner.lose_write_connection();
        }
        fn is_disconnecting(&self) -> bool {
            self.inner.is_disconnecting()
        }
        fn peer(&self) -> Address {
            self.inner.peer()
        }
        fn host(&self) -> Address {
            self.inner.host()
        }
        fn pause_producing(&self) {
            self.inner.pause_producing();
        }
        fn resume_producing(&self) {
            self.inner.resume_producing();
        }
        fn register_producer(&self, producer: Rc<dyn crate::reactor::Producer>) {
            self.inner.register_producer(producer);
        }
        fn unregister_producer(&self) {
            self.inner.unregister_producer();
        }
    }

    #[test]
    fn x19_echo_mode_a_pause_inside_an_echo_holds_the_rest_of_the_chunk() {
        let h = Harness::new(ServerConfig {
            mode: Mode::Echo,
            ..config()
        });
        let inner = StringTransport::with_default_addresses();
        let transport: TransportRef = Rc::new(PausingTransport {
            inner: inner.clone(),
            limit: 8,
        });
        let mut protocol = h.factory.build_protocol(inner.peer()).unwrap();
        protocol.connection_made(&transport).unwrap();
        protocol
            .data_received(&transport, b"first\nsecond\nthird\n")
            .unwrap();
        assert_eq!(inner.take_written(), b"first\r\nsecond\r\n");
        assert!(inner.paused(), "reading stopped too");
        inner.producer().unwrap().resume_producing();
        assert_eq!(inner.take_written(), b"third\r\n");
    }

    #[test]
    fn raw_mode_shows_each_chunk_and_sends_lines_bare() {
        let h = Harness::new(ServerConfig {
            raw: true,
            ..config()
        });
        let mut client = h.connect(5001);
        h.out();
        client.feed(b"hello").unwrap();
        assert_eq!(h.out(), ["Client 1: hello"]);
        client.feed(b"two\nlines\n").unwrap();
        assert_eq!(h.out(), ["Client 1: two\\x0alines"]);
        h.typed("hi");
        assert_eq!(written(&client), "hi");
        client.feed(b"bye").unwrap();
        assert!(client.transport().lost_connection());
    }

    #[test]
    fn raw_mode_operator_bye_is_sent_bare_and_closes() {
        let h = Harness::new(ServerConfig {
            raw: true,
            ..config()
        });
        let client = h.connect(5001);
        h.typed("bye");
        assert_eq!(written(&client), "bye");
        assert!(client.transport().lost_connection());
    }

    #[test]
    fn raw_echo_sends_chunks_back_unchanged() {
        let h = Harness::new(ServerConfig {
            raw: true,
            mode: Mode::Echo,
            ..config()
        });
        let mut client = h.connect(5001);
        client.feed(b"no newline").unwrap();
        assert_eq!(written(&client), "no newline");
    }

    #[test]
    fn r23_shutdown_closes_every_client_and_waits_for_them() {
        let h = Harness::new(config());
        let mut one = h.connect(5001);
        let mut two = h.connect(5002);
        h.out();
        h.typed("/to 1 last words");
        let done = h.server.shut_down();
        assert_eq!(written(&one), "last words\r\n");
        assert!(one.transport().lost_connection());
        assert!(two.transport().lost_connection());
        assert!(!done.is_called());
        one.close();
        assert!(!done.is_called());
        two.close();
        assert!(done.is_called());
        assert_eq!(
            h.out(),
            [
                "to 1> last words",
                "* client 1 disconnected: server shutting down",
                "* client 2 disconnected: server shutting down",
            ]
        );
        let peer = SocketAddr::from(([127, 0, 0, 1], 5003));
        assert!(
            h.factory.build_protocol(peer.into()).is_none(),
            "no new clients"
        );
    }

    #[test]
    fn r23_shutdown_with_no_clients_is_immediate() {
        let h = Harness::new(config());
        assert!(h.server.shut_down().is_called());
    }

    #[test]
    fn r23_shutdown_ends_within_the_grace_period_even_if_a_client_does_not_read() {
        let h = Harness::new(config());
        let mut stuck = h.connect(5001);
        let done = h.server.shut_down();
        h.clock.advance(CLOSE_GRACE);
        assert!(stuck.transport().aborted());
        stuck.close();
        assert!(done.is_called());
    }

    #[test]
    fn a_tls_client_is_announced_after_its_handshake_and_dropped_without_one() {
        use crate::commands::talk::server_client::HANDSHAKE_TIMEOUT;
        let h = Harness::new(config());
        let tls_client = |port: u16| {
            let peer = SocketAddr::from(([127, 0, 0, 1], port));
            let protocol = h.factory.build_protocol(peer.into()).expect("a protocol");
            let host = SocketAddr::from(([127, 0, 0, 1], 8443));
            let transport = StringTransport::new(peer, host);
            transport.set_handshaking();
            let mut driver = ProtocolDriver::from_box(protocol, transport);
            driver.connect().expect("connection_made");
            driver
        };
        let mut stalled = tls_client(5000);
        let mut quick = tls_client(5001);
        assert!(
            h.out().is_empty(),
            "nobody is announced before the handshake"
        );
        h.typed("/who");
        assert_eq!(h.out(), ["* no clients connected"]);

        h.clock.advance(Duration::from_secs(5));
        quick.transport().complete_handshake();
        let transport = quick.transport_ref().clone();
        quick
            .protocol_mut()
            .handshake_completed(&transport)
            .unwrap();
        assert_eq!(h.out(), ["* client 1 connected from 127.0.0.1:5001"]);

        h.clock.advance(HANDSHAKE_TIMEOUT - Duration::from_secs(5));
        assert!(
            stalled.transport().aborted(),
            "no handshake in time: dropped"
        );
        assert!(!quick.transport().aborted());
        stalled.lose(CloseReason::Aborted);
        assert!(
            h.out().is_empty(),
            "a client never announced leaves no line"
        );
        assert_eq!(h.server.client_count(), 1);
        h.typed("/who");
        let who = h.out();
        assert!(who[0].contains(" tls TLSv1.3 idle "), "{who:?}");
    }
}
