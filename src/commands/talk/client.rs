//! `twistctl talk-client`: the client side of the line chat.
//!
//! The classic tutorial's client calls `raw_input` from `dataReceived`, so while the
//! operator types nothing arrives, and what the server sends waits for the next Enter.
//! Here the console is read on its own thread ([`Console`]) and each typed line reaches
//! the reactor through a channel; what the server sends is printed at once, above the
//! prompt, and a half-typed line stays intact.
//!
//! The parts:
//! - [`Conversation`]: what the chat does — sends typed lines, shows received ones
//!   (escaped), handles `bye`, the end of input and Ctrl-C, and decides how the talk
//!   ended ([`Ending`]). It knows neither the console nor the reactor: it talks to a
//!   [`ChatView`] and a [`Scheduler`], so tests drive it with a fake view, a
//!   `StringTransport` and a `FakeClock`.
//! - `dial`: connects through the reactor's hostname endpoint (the lookup on a worker
//!   thread, Happy Eyeballs over the addresses, `--timeout` bounding it all) and, when
//!   nothing connected, says what became of every address tried; `dial_unix` connects
//!   to a UNIX socket. Both go through `connect`, the one path that puts TLS under the
//!   conversation and hands a failure to it (or a TLS refusal to the trust decision).
//! - [`run`]: wires both to the reactor and the console, and on every exit path restores
//!   the terminal before printing the last message.

use std::cell::{Cell, RefCell};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::rc::{Rc, Weak};
use std::time::Duration;

use crate::commands::scaffold::{self, Command, CommandError};
use crate::commands::target::Destination;
use crate::exit::ExitStatus;
use crate::protocols::line::{Delimiter, LineControl, LineHandler, LineReceiver};
use crate::reactor::endpoints::{
    Attempt, AttemptOutcome, CheckedFactory, Connection, EndpointError, EndpointErrorKind,
    EndpointOptions, HostnameEndpoint,
};
use crate::reactor::unix::{UnixCheckError, UnixEndpoint};
use crate::reactor::{
    Address, CloseReason, ConnectError, Deferred, DelayedCall, Factory, Failure, Protocol,
    ProtocolResult, Reactor, Scheduler, Step, StopReason, TransportRef,
};

use super::console::{Console, ConsoleEvent, Prompt};
use super::trust::{self, TlsVerify, Trust, Verdict};
use crate::commands::escape::escape_peer_text;
use crate::reactor::tls::{Fingerprint, TlsClientConfig, TlsError};

/// The prompt shown while the operator may type.
pub const PROMPT: &str = "Client: ";

/// The longest line accepted from the server, without its delimiter (the talk-server's
/// default `--max-line`). A longer one ends the connection, so a hostile server cannot
/// make the client hold more than about one line in memory.
pub const MAX_LINE: usize = 64 * 1024;

/// How long after sending `bye` the client waits for the server to close before it
/// gives up, unless `--linger` says otherwise: the server closes on `bye`, but one that
/// does not must not keep the client hanging.
pub const BYE_GRACE: Duration = Duration::from_secs(2);

/// How long an interactive client lets the console thread print what it was already
/// handed before the terminal is restored. rustyline's printer only queues a message for
/// the console thread; restoring the terminal and exiting at once can lose a line that
/// arrived just before the server closed.
const PRINT_SETTLE: Duration = Duration::from_millis(50);

/// The line ending sent after each typed line (any line client accepts `\r\n`).
const LINE_END: &[u8] = b"\r\n";

/// How a conversation ended; decides the last message and the exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The server closed the connection (after our `bye`, after the end of our input, or
    /// on its own).
    Closed,
    /// We had stopped sending and the server had not closed within this time (the
    /// linger limit): we closed.
    GaveUp(Duration),
    /// The server sent a line longer than this many bytes; we disconnected.
    LineTooLong(usize),
    /// The connection broke: reset, or a socket error (the text says which).
    Broken(String),
    /// Ctrl-C at the prompt.
    Interrupted,
    /// The connection could not be made (the text says why).
    ConnectFailed(String),
}

impl Ending {
    /// The exit status: 0 for an orderly end, 1 for a connection that broke or could not
    /// be made, 130 for Ctrl-C.
    pub fn status(&self) -> ExitStatus {
        match self {
            Ending::Closed => ExitStatus::Success,
            Ending::LineTooLong(_) | Ending::Broken(_) | Ending::ConnectFailed(_) => {
                ExitStatus::Failure
            }
            Ending::GaveUp(_) => ExitStatus::TimedOut,
            Ending::Interrupted => ExitStatus::Signal(crate::reactor::Signal::Interrupt),
        }
    }

    /// The last line to print, and whether it goes to stderr; `None` prints nothing
    /// (Ctrl-C closes at once, silently).
    pub fn farewell(&self) -> Option<(String, bool)> {
        match self {
            Ending::Closed => Some(("Connection lost - goodbye!".to_string(), false)),
            Ending::LineTooLong(max) => Some((
                format!(
                    "Connection lost - goodbye! (the server sent a line longer than {max} bytes)"
                ),
                false,
            )),
            Ending::Broken(reason) => {
                Some((format!("Connection lost - goodbye! ({reason})"), false))
            }
            Ending::GaveUp(after) => Some((
                format!(
                    "* the server had not closed after {}; giving up",
                    crate::duration::format(*after)
                ),
                true,
            )),
            Ending::Interrupted => None,
            Ending::ConnectFailed(reason) => {
                Some((format!("Connection failed - goodbye! ({reason})"), true))
            }
        }
    }
}

/// Describes why an established connection ended, for an end that was not decided by
/// the conversation itself.
fn ending_from(reason: &CloseReason) -> Ending {
    match reason {
        CloseReason::Done => Ending::Closed,
        CloseReason::Reset(_) => Ending::Broken("connection reset by peer".to_string()),
        CloseReason::Lost(Some(error)) => Ending::Broken(format!("connection lost: {error}")),
        CloseReason::Lost(None) => Ending::Broken("connection lost".to_string()),
        CloseReason::Aborted => Ending::Broken("connection aborted".to_string()),
        CloseReason::Protocol(failure) => Ending::Broken(failure.to_string()),
        CloseReason::Tls(error) => Ending::Broken(error.to_string()),
    }
}

/// Where the conversation shows things and reads typed lines from: the console in the
/// command, a recorder in tests.
pub trait ChatView {
    /// The connection is up: start reading typed lines and hand each to `deliver`, on
    /// the reactor thread. Called at most once.
    fn start_input(&self, deliver: Box<dyn FnMut(ConsoleEvent)>);

    /// Shows one line of the conversation (stdout; above the prompt when interactive).
    fn show(&self, line: &str);

    /// Shows a notice about the conversation itself (stderr; above the prompt when
    /// interactive).
    fn warn(&self, line: &str);
}

/// What is called once when the conversation is over.
type EndCallback = Box<dyn FnOnce(Ending)>;

/// How the conversation behaves, from the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChatOptions {
    /// The tutorial's wire format: no delimiters; each read is one message; the client
    /// closes after sending `bye`.
    pub raw: bool,
    /// Once we stop sending, how long to wait for the server to close: `None` waits
    /// as long as it takes after the end of input, and [`BYE_GRACE`] after `bye`.
    pub linger: Option<Duration>,
}

/// Where the conversation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No connection yet.
    Connecting,
    /// Lines go both ways.
    Talking,
    /// We sent `bye` or our input ended: our write side is shut (or closing); what the
    /// server still sends is shown until it closes.
    Leaving,
    /// Over; `on_end` has been called.
    Ended,
}

/// The chat itself: one per connection attempt chain, shared by the protocol (what
/// arrives), the console channel (what is typed) and the timers.
pub struct Conversation {
    me: Weak<Conversation>,
    raw: bool,
    linger: Option<Duration>,
    view: Rc<dyn ChatView>,
    scheduler: Rc<dyn Scheduler>,
    phase: Cell<Phase>,
    transport: RefCell<Option<TransportRef>>,
    /// An end decided before the connection closes (line too long, Ctrl-C), reported
    /// instead of the close reason the transport gives.
    decided: RefCell<Option<Ending>>,
    bye_timer: RefCell<Option<DelayedCall>>,
    on_end: RefCell<Option<EndCallback>>,
}

impl std::fmt::Debug for Conversation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conversation")
            .field("raw", &self.raw)
            .field("phase", &self.phase.get())
            .finish()
    }
}

impl Conversation {
    /// A conversation that shows things on `view`, runs its timer on `scheduler`, and
    /// calls `on_end` once, when it is over.
    pub fn new(
        options: ChatOptions,
        view: Rc<dyn ChatView>,
        scheduler: Rc<dyn Scheduler>,
        on_end: impl FnOnce(Ending) + 'static,
    ) -> Rc<Conversation> {
        Rc::new_cyclic(|me| Conversation {
            me: me.clone(),
            raw: options.raw,
            linger: options.linger,
            view,
            scheduler,
            phase: Cell::new(Phase::Connecting),
            transport: RefCell::new(None),
            decided: RefCell::new(None),
            bye_timer: RefCell::new(None),
            on_end: RefCell::new(Some(Box::new(on_end))),
        })
    }

    /// The protocol for the connection: lines delimited by `\n` or `\r\n` of at most
    /// [`MAX_LINE`] bytes, or raw chunks with `raw`.
    pub fn protocol(&self) -> Box<dyn Protocol> {
        let handler = ClientLines {
            conversation: self.me.upgrade(),
        };
        Box::new(
            LineReceiver::new(handler)
                .with_delimiter(Delimiter::newline())
                .with_max_length(MAX_LINE),
        )
    }

    /// True once the conversation is over.
    pub fn is_over(&self) -> bool {
        self.phase.get() == Phase::Ended
    }

    fn current_transport(&self) -> Option<TransportRef> {
        self.transport.borrow().clone()
    }

    fn connected(&self, transport: &TransportRef) {
        if self.phase.get() != Phase::Connecting {
            return;
        }
        *self.transport.borrow_mut() = Some(transport.clone());
        self.phase.set(Phase::Talking);
        let me = self.me.clone();
        self.view.start_input(Box::new(move |event| {
            if let Some(conversation) = me.upgrade() {
                conversation.typed(event);
            }
        }));
    }

    /// A message from the server: a line, or in raw mode whatever one read brought.
    fn received(&self, message: &[u8]) {
        if self.phase.get() == Phase::Ended {
            return;
        }
        self.view
            .show(&format!("Server: {}", escape_peer_text(message)));
    }

    /// The server has finished sending (its FIN): what it sent without a final newline
    /// is still shown, then the talk is over and we close too.
    fn server_finished(&self, tail: &[u8], transport: &TransportRef) {
        let tail = tail.strip_suffix(b"\r").unwrap_or(tail);
        if !tail.is_empty() {
            self.received(tail);
        }
        transport.lose_connection();
    }

    fn line_too_long(&self, transport: &TransportRef) {
        self.decide(Ending::LineTooLong(MAX_LINE));
        // A hostile server may keep sending: drop the connection rather than flush.
        transport.abort_connection();
    }

    /// Records the end to report, unless one was decided already.
    fn decide(&self, ending: Ending) {
        let mut decided = self.decided.borrow_mut();
        if decided.is_none() {
            *decided = Some(ending);
        }
    }

    /// What the operator did at the console (or what piped input brought).
    pub fn typed(&self, event: ConsoleEvent) {
        match event {
            ConsoleEvent::Line(line) | ConsoleEvent::Typed { line, .. } => self.send_typed(&line),
            ConsoleEvent::Eof => {
                if self.phase.get() == Phase::Talking {
                    self.leave(false);
                }
            }
            ConsoleEvent::Interrupted => self.interrupt(),
        }
    }

    /// Sends a typed line: trailing blanks dropped, leading ones kept (indentation is
    /// part of what was typed); a blank line sends nothing.
    fn send_typed(&self, line: &str) {
        let text = line.trim_end();
        if text.trim_start().is_empty() {
            return;
        }
        match self.phase.get() {
            Phase::Talking => {}
            Phase::Leaving => {
                self.view
                    .warn(&format!("(not sent, the conversation is ending: {text})"));
                return;
            }
            Phase::Connecting | Phase::Ended => return,
        }
        let Some(transport) = self.current_transport() else {
            return;
        };
        if self.raw {
            transport.write(text.as_bytes());
        } else {
            transport.write_sequence(&[text.as_bytes(), LINE_END]);
        }
        if text.trim_start() == "bye" {
            self.leave(true);
        }
    }

    /// Stops sending: after `bye` (`said_bye`) or at the end of input. The server is
    /// told by EOF (a half-close), and what it still sends is shown until it closes. In
    /// raw mode `bye` closes the connection outright, as the tutorial's client does.
    fn leave(&self, said_bye: bool) {
        let Some(transport) = self.current_transport() else {
            return;
        };
        self.phase.set(Phase::Leaving);
        if said_bye && self.raw {
            transport.lose_connection();
            return;
        }
        // Over TLS there is no half-close (S-14): close_notify would end the stream
        // both ways, so nothing is sent and the server's replies and close are awaited
        // as over TCP.
        if transport.tls().is_none() {
            transport.lose_write_connection();
        }
        let limit = if said_bye {
            Some(self.linger.unwrap_or(BYE_GRACE))
        } else {
            self.linger
        };
        if let Some(limit) = limit {
            let me = self.me.clone();
            let timer = self.scheduler.schedule(
                limit,
                Box::new(move || {
                    if let Some(conversation) = me.upgrade()
                        && let Some(transport) = conversation.current_transport()
                    {
                        conversation.decide(Ending::GaveUp(limit));
                        transport.abort_connection();
                    }
                }),
            );
            *self.bye_timer.borrow_mut() = Some(timer);
        }
    }

    /// Ctrl-C: close at once, and end now rather than when the close completes.
    fn interrupt(&self) {
        if self.phase.get() == Phase::Ended {
            return;
        }
        self.decide(Ending::Interrupted);
        if let Some(transport) = self.current_transport() {
            transport.abort_connection();
        }
        self.end(Ending::Interrupted);
    }

    /// The connection ended; `reason` is the transport's.
    fn lost(&self, reason: &CloseReason) {
        self.transport.borrow_mut().take();
        let timer = self.bye_timer.borrow_mut().take();
        if let Some(timer) = timer {
            let _ = timer.cancel();
        }
        let decided = self.decided.borrow_mut().take();
        self.end(decided.unwrap_or_else(|| ending_from(reason)));
    }

    /// The connection could not be made.
    pub fn connect_failed(&self, reason: String) {
        self.end(Ending::ConnectFailed(reason));
    }

    fn end(&self, ending: Ending) {
        if self.phase.replace(Phase::Ended) == Phase::Ended {
            return;
        }
        let on_end = self.on_end.borrow_mut().take();
        if let Some(on_end) = on_end {
            on_end(ending);
        }
    }
}

/// The connection's line handler: hands everything to the conversation.
struct ClientLines {
    conversation: Option<Rc<Conversation>>,
}

impl LineHandler for ClientLines {
    fn connection_made(&mut self, lines: &mut LineControl<'_>) -> ProtocolResult {
        if let Some(conversation) = &self.conversation {
            if conversation.raw {
                lines.set_raw_mode();
            }
            conversation.connected(lines.transport());
        }
        Ok(())
    }

    fn line_received(&mut self, line: &[u8], _lines: &mut LineControl<'_>) -> ProtocolResult {
        if let Some(conversation) = &self.conversation {
            conversation.received(line);
        }
        Ok(())
    }

    fn raw_data_received(&mut self, data: &[u8], _lines: &mut LineControl<'_>) -> ProtocolResult {
        if let Some(conversation) = &self.conversation {
            conversation.received(data);
        }
        Ok(())
    }

    fn line_length_exceeded(
        &mut self,
        _data: &[u8],
        lines: &mut LineControl<'_>,
    ) -> ProtocolResult {
        match &self.conversation {
            Some(conversation) => conversation.line_too_long(lines.transport()),
            None => lines.transport().abort_connection(),
        }
        Ok(())
    }

    fn connection_lost(&mut self, reason: &CloseReason) {
        if let Some(conversation) = self.conversation.take() {
            conversation.lost(reason);
        }
    }

    /// The server's end of file is heard as such, so that an unterminated last line
    /// can still be shown.
    fn wants_half_close(&self) -> bool {
        true
    }

    fn read_connection_lost(&mut self, lines: &mut LineControl<'_>) -> ProtocolResult {
        let tail = lines.clear_line_buffer();
        match &self.conversation {
            Some(conversation) => conversation.server_finished(&tail, lines.transport()),
            None => lines.transport().lose_connection(),
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Connecting

/// Says why an attempt on `address` failed, without repeating the OS text twice.
fn describe_failure(address: SocketAddr, error: &ConnectError, timeout: Duration) -> String {
    format!("{address}: {}", describe_failure_words(error, timeout))
}

/// A failed attempt in words, without its address.
fn describe_failure_words(error: &ConnectError, timeout: Duration) -> String {
    match error {
        ConnectError::Refused(_) => "connection refused".to_owned(),
        ConnectError::TimedOut => format!("timed out after {}", crate::duration::format(timeout)),
        other => other.to_string(),
    }
}

/// Every address tried and what became of it, for the message when none connected.
fn describe_attempts(attempts: &[Attempt], timeout: Duration) -> String {
    let described: Vec<String> = attempts
        .iter()
        .map(|attempt| match &attempt.outcome {
            AttemptOutcome::Failed(error) => describe_failure(attempt.addr, error, timeout),
            AttemptOutcome::Pending | AttemptOutcome::Stopped | AttemptOutcome::Connected => {
                format!("{}: no answer", attempt.addr)
            }
        })
        .collect();
    described.join("; ")
}

/// Why the connect failed, naming every address tried.
fn describe_endpoint_error(error: &EndpointError, timeout: Duration) -> String {
    let tried = describe_attempts(&error.attempts, timeout);
    match &error.kind {
        EndpointErrorKind::DnsLookup(words) => {
            format!("cannot resolve '{}': {words}", error.host)
        }
        EndpointErrorKind::TimedOut { after, .. } if tried.is_empty() => {
            format!("timed out after {}", crate::duration::format(*after))
        }
        EndpointErrorKind::TimedOut { after, .. } => format!(
            "timed out after {} ({tried})",
            crate::duration::format(*after)
        ),
        _ if !tried.is_empty() => tried,
        _ => error.to_string(),
    }
}

/// Connects the conversation to `host` and `port` through the reactor's hostname
/// endpoint: the name is looked up on a worker thread (an IP literal needs no lookup),
/// the addresses race with Happy Eyeballs, and `timeout` bounds the whole connect,
/// lookup included, so a resolver that hangs cannot hold the client.
fn dial(
    endpoint: HostnameEndpoint,
    conversation: &Rc<Conversation>,
    timeout: Duration,
    tls: Option<TlsRoute>,
) {
    let options = EndpointOptions {
        attempt_timeout: Some(timeout),
        resolve_timeout: timeout,
        deadline: Some(timeout),
        ..EndpointOptions::default()
    };
    let endpoint = endpoint.with_options(options);
    let start = move |factory| {
        let connecting = match factory {
            TalkFactory::Plain(factory) => endpoint.start_plain(factory),
            TalkFactory::Checked(checked) => endpoint.start_checked(checked),
        };
        let place = format!("{} port {}", endpoint.host(), endpoint.port());
        let deferred = connecting.deferred();
        deferred.add_both(move |outcome| {
            if let Some(attempts) = crate::commands::attempts::tried(&outcome) {
                // -v: each address tried, in the words of the failure message.
                crate::commands::attempts::log_attempts(&place, attempts, |error| {
                    describe_failure_words(error, timeout)
                });
            }
            if let Ok(connection) = &outcome {
                log::info!("connected to {}", connection.peer);
            }
            outcome.into()
        });
        deferred
    };
    connect(
        conversation,
        tls,
        start,
        move |failure| match failure.downcast_ref::<EndpointError>() {
            Some(error) => describe_endpoint_error(error, timeout),
            None => failure.to_string(),
        },
    );
}

/// Connects the conversation to a UNIX socket, over TLS with `tls` (the same layer
/// and the same trust decision as over TCP).
fn dial_unix(endpoint: UnixEndpoint, conversation: &Rc<Conversation>, tls: Option<TlsRoute>) {
    let start = move |factory| match factory {
        TalkFactory::Plain(factory) => endpoint.connect(factory),
        TalkFactory::Checked(checked) => endpoint.connect_checked(checked),
    };
    connect(conversation, tls, start, Failure::to_string);
}

/// What a connect starts with: the conversation's factory, plain or under the TLS
/// layer that checks the server.
enum TalkFactory {
    Plain(Rc<dyn Factory>),
    Checked(Rc<dyn CheckedFactory>),
}

/// The one connect path of `dial` and `dial_unix`: builds the conversation's factory
/// (under TLS with `tls`) and hands it to `start`. When the connect fails, a TLS
/// refusal goes to the trust decision and any other failure, in the words of
/// `describe`, ends the conversation. A TLS configuration that cannot be built ends
/// the conversation before anything is started.
fn connect(
    conversation: &Rc<Conversation>,
    tls: Option<TlsRoute>,
    start: impl FnOnce(TalkFactory) -> Deferred<Connection>,
    describe: impl FnOnce(&Failure) -> String + 'static,
) {
    let factory = Rc::new(TalkClientFactory {
        conversation: conversation.clone(),
        tls: tls.is_some(),
    });
    let (factory, refused) = match tls.map(|route| route.checked(factory.clone())) {
        None => (TalkFactory::Plain(factory), None),
        Some(Ok((checked, refused))) => (TalkFactory::Checked(checked), Some(refused)),
        Some(Err(reason)) => return conversation.connect_failed(reason),
    };
    let conversation = conversation.clone();
    let _ = start(factory).then(move |outcome| {
        if let Err(failure) = outcome {
            if let Some(refused) = &refused
                && let Some(tls_error) = tls_refusal(&failure)
            {
                if !conversation.is_over() {
                    refused(tls_error);
                }
                return Step::Value(());
            }
            let reason = describe(&failure);
            log::info!("{reason}");
            if !conversation.is_over() {
                conversation.connect_failed(reason);
            }
        }
        Step::Value(())
    });
}

/// The TLS side of a connect: the configuration, the name to verify (and send as
/// SNI), and what to do when the server is refused (the trust decision).
struct TlsRoute {
    reactor: Reactor,
    config: TlsClientConfig,
    server_name: String,
    refused: Refused,
}

/// What a refused TLS server is handed to: the trust decision.
type Refused = Rc<dyn Fn(&TlsError)>;

impl TlsRoute {
    /// The factory that puts the TLS layer under `inner` and passes the endpoint's
    /// check once the server is verified, and the refusal handler; or why not, in words.
    fn checked(self, inner: Rc<dyn Factory>) -> Result<(Rc<dyn CheckedFactory>, Refused), String> {
        crate::reactor::tls::checked_client_factory(
            &self.reactor,
            &self.config,
            &self.server_name,
            inner,
        )
        .map(|checked| (checked, self.refused))
        .map_err(|error| format!("TLS: {error}"))
    }
}

/// The TLS refusal a failed connect ended with, over TCP or a UNIX socket: the trust
/// decision's to handle (ask, or say why and how to pin).
fn tls_refusal(failure: &Failure) -> Option<&TlsError> {
    let check = match (
        failure.downcast_ref::<EndpointError>(),
        failure.downcast_ref::<UnixCheckError>(),
    ) {
        (Some(error), _) => match &error.kind {
            EndpointErrorKind::Check { failure, .. } => failure,
            _ => return None,
        },
        (None, Some(error)) => &error.failure,
        (None, None) => return None,
    };
    match check.downcast_ref::<CloseReason>() {
        Some(CloseReason::Tls(error)) => Some(error),
        _ => None,
    }
}

/// Where a TLS connect goes.
#[derive(Debug, Clone)]
enum TlsTarget {
    /// A host name or address and a port, through the hostname endpoint.
    Host {
        /// As typed.
        host: String,
        /// The port.
        port: u16,
    },
    /// A UNIX socket.
    Unix(UnixEndpoint),
}

/// The factory of the winning connection: the conversation's protocol.
struct TalkClientFactory {
    conversation: Rc<Conversation>,
    /// Over TLS the conversation starts once the server is verified.
    tls: bool,
}

impl Factory for TalkClientFactory {
    fn build_protocol(&self, _addr: Address) -> Option<Box<dyn Protocol>> {
        if self.conversation.is_over() {
            return None;
        }
        let protocol = self.conversation.protocol();
        if self.tls {
            return Some(Box::new(AfterHandshake {
                inner: protocol,
                started: false,
            }));
        }
        Some(protocol)
    }
}

/// The conversation's protocol over TLS: it hears of the connection only once the
/// handshake verified the server, so that nothing is read from the console (nor a
/// prompt shown) for a server that is then refused, and a refused connection leaves
/// the conversation free to try again after the person trusts the certificate.
struct AfterHandshake {
    inner: Box<dyn Protocol>,
    started: bool,
}

impl Protocol for AfterHandshake {
    fn connection_made(&mut self, _transport: &TransportRef) -> ProtocolResult {
        Ok(())
    }

    fn handshake_completed(&mut self, transport: &TransportRef) -> ProtocolResult {
        self.started = true;
        self.inner.connection_made(transport)?;
        self.inner.handshake_completed(transport)
    }

    fn data_received(&mut self, transport: &TransportRef, data: &[u8]) -> ProtocolResult {
        self.inner.data_received(transport, data)
    }

    fn connection_lost(&mut self, reason: &CloseReason) {
        // Before the handshake, the endpoint's failure tells the story.
        if self.started {
            self.inner.connection_lost(reason);
        }
    }

    fn wants_half_close(&self) -> bool {
        self.inner.wants_half_close()
    }

    fn read_connection_lost(&mut self, transport: &TransportRef) -> ProtocolResult {
        self.inner.read_connection_lost(transport)
    }

    fn write_connection_lost(&mut self, transport: &TransportRef) -> ProtocolResult {
        self.inner.write_connection_lost(transport)
    }
}

/// Connects over TLS, and after a refusal decides with [`Trust`]: refuse in words, or
/// ask the person at the terminal (on a thread) and, on yes, remember the certificate
/// and connect again pinned to it.
struct TlsDialer {
    reactor: Reactor,
    trust: RefCell<Trust>,
    target: TlsTarget,
    /// The name to verify and send.
    server_name: String,
    timeout: Duration,
    conversation: Rc<Conversation>,
    view: Rc<ConsoleView>,
    me: Weak<TlsDialer>,
}

impl TlsDialer {
    fn dial(&self) {
        let config = match self.trust.borrow().config() {
            Ok(config) => config,
            Err(reason) => return self.conversation.connect_failed(reason),
        };
        // Held by the connect's callback until it fires: nothing else keeps the
        // dialer alive.
        let Some(dialer) = self.me.upgrade() else {
            return;
        };
        let route = TlsRoute {
            reactor: self.reactor.clone(),
            config,
            server_name: self.server_name.clone(),
            refused: Rc::new(move |error: &TlsError| dialer.refused(error)),
        };
        match &self.target {
            TlsTarget::Host { host, port } => {
                let endpoint = HostnameEndpoint::new(&self.reactor, host.clone(), *port);
                dial(endpoint, &self.conversation, self.timeout, Some(route));
            }
            TlsTarget::Unix(endpoint) => {
                dial_unix(endpoint.clone(), &self.conversation, Some(route));
            }
        }
    }

    fn refused(&self, error: &TlsError) {
        let verdict = self.trust.borrow().judge(error, trust::at_terminal());
        match verdict {
            Verdict::Refuse { warning, reason } => {
                if let Some(warning) = warning {
                    for line in warning.lines() {
                        self.view.warn(line);
                    }
                }
                self.conversation.connect_failed(reason);
            }
            Verdict::Ask(fingerprint) => {
                let Some(dialer) = self.me.upgrade() else {
                    return;
                };
                let answered = self.reactor.channel(move |_: &Reactor, yes: bool| {
                    dialer.answered(fingerprint, yes);
                });
                let key = self.trust.borrow().key().to_string();
                // The terminal is read on its own thread: the reactor never blocks.
                std::thread::spawn(move || answered.send(trust::ask(&key, fingerprint)));
            }
        }
    }

    fn answered(&self, fingerprint: Fingerprint, yes: bool) {
        if !yes {
            let key = self.trust.borrow().key().to_string();
            return self
                .conversation
                .connect_failed(format!("TLS: the certificate of {key} was not trusted"));
        }
        let remembered = self.trust.borrow_mut().remember(fingerprint);
        match remembered {
            Ok(note) => {
                self.view.warn(&note);
                self.dial();
            }
            Err(reason) => self.conversation.connect_failed(reason),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The command

/// The console as the conversation sees it: nothing until the connection is up, then
/// the prompt (or plain lines from a pipe).
struct ConsoleView {
    reactor: Reactor,
    console: RefCell<Option<Console>>,
}

impl ConsoleView {
    fn is_interactive(&self) -> bool {
        self.console
            .borrow()
            .as_ref()
            .is_some_and(Console::is_interactive)
    }

    /// The line the operator was typing, not sent.
    fn unsent(&self) -> Option<String> {
        self.console.borrow().as_ref().and_then(Console::unsent)
    }

    /// Puts the terminal back; printing is direct from then on.
    fn restore(&self) {
        if let Some(console) = self.console.borrow().as_ref() {
            console.restore();
        }
    }
}

impl ChatView for ConsoleView {
    fn start_input(&self, mut deliver: Box<dyn FnMut(ConsoleEvent)>) {
        let sender = self
            .reactor
            .channel(move |_reactor: &Reactor, event: ConsoleEvent| deliver(event));
        match Console::start(Prompt::new(PROMPT), sender.clone()) {
            Ok(console) => *self.console.borrow_mut() = Some(console),
            Err(error) => {
                log::error!("cannot read the console: {error}");
                sender.send(ConsoleEvent::Eof);
            }
        }
    }

    fn show(&self, line: &str) {
        match self.console.borrow().as_ref() {
            Some(console) => console.print(line),
            None => print_line(line, false),
        }
    }

    fn warn(&self, line: &str) {
        match self.console.borrow().as_ref() {
            Some(console) => console.eprint(line),
            None => print_line(line, true),
        }
    }
}

/// Prints one line straight to stdout or stderr; stdout's write errors are the
/// scaffold's to report.
fn print_line(line: &str, to_stderr: bool) {
    if to_stderr {
        let _ = writeln!(io::stderr().lock(), "{line}");
    } else {
        let _ = scaffold::print_line(line);
    }
}

/// What `twistctl talk-client` was asked to do (built by `src/cli.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The server: a host (name or IP literal) and a port, 1-65535, or a UNIX socket.
    pub target: Destination,
    /// Give up connecting after this long.
    pub timeout: Duration,
    /// The classic tutorial's wire format: no line delimiters.
    pub raw: bool,
    /// `--linger`: how long to wait for the server to close after `bye` or the end of
    /// input (see [`ChatOptions`]).
    pub linger: Option<Duration>,
    /// `--tls`: how the server's certificate is checked; `None`: plain TCP.
    pub tls: Option<TlsVerify>,
    /// `--sni`: the name to verify the server as and send, instead of the host as
    /// typed (see [`Destination::tls_server_name`]).
    pub sni: Option<String>,
}

/// Runs `twistctl talk-client`.
pub fn run(config: Config) -> ExitStatus {
    scaffold::run(Box::new(ClientCommand {
        config,
        parts: None,
        outcome: Rc::new(RefCell::new(None)),
    }))
}

/// The command: the conversation over one connection, with the console.
struct ClientCommand {
    config: Config,
    parts: Option<(Rc<ConsoleView>, Rc<Conversation>)>,
    outcome: Rc<RefCell<Option<Ending>>>,
}

impl Command for ClientCommand {
    fn start(&mut self, reactor: &Reactor) -> Result<(), CommandError> {
        let view = Rc::new(ConsoleView {
            reactor: reactor.clone(),
            console: RefCell::new(None),
        });
        let on_end = {
            let reactor = reactor.clone();
            let view = view.clone();
            let outcome = self.outcome.clone();
            move |ending: Ending| {
                // An end caused by the reactor's own shutdown (a signal) is not the story.
                if !reactor.running() {
                    return;
                }
                let settle = view.is_interactive() && ending != Ending::Interrupted;
                *outcome.borrow_mut() = Some(ending);
                if settle {
                    let stopper = reactor.clone();
                    reactor.call_later(PRINT_SETTLE, move || {
                        let _ = stopper.stop();
                    });
                } else {
                    let _ = reactor.stop();
                }
            }
        };
        let scheduler: Rc<dyn Scheduler> = Rc::new(reactor.clone());
        let options = ChatOptions {
            raw: self.config.raw,
            linger: self.config.linger,
        };
        let conversation = Conversation::new(options, view.clone(), scheduler, on_end);
        let (starter, timeout) = (conversation.clone(), self.config.timeout);
        match (&self.config.target, &self.config.tls) {
            (Destination::Unix(address), None) => {
                let endpoint =
                    UnixEndpoint::new(reactor, address.clone()).with_timeout(Some(timeout));
                reactor.call_when_running(move || dial_unix(endpoint, &starter, None));
            }
            (Destination::Tcp(target), None) => {
                let endpoint =
                    HostnameEndpoint::new(reactor, target.host.text.clone(), target.port);
                reactor.call_when_running(move || {
                    dial(endpoint, &starter, timeout, None);
                });
            }
            (destination, Some(verify)) => {
                if *verify == TlsVerify::Insecure {
                    print_line(
                        "* --insecure: the server's certificate is not verified; anyone on \
                         the path could read and change this chat",
                        true,
                    );
                }
                let server_name = destination.tls_server_name(self.config.sni.as_deref());
                let (trust, target) = match destination {
                    Destination::Tcp(target) => (
                        Trust::new(verify.clone(), &target.host.text, target.port)
                            .map_err(CommandError::failure)?,
                        TlsTarget::Host {
                            host: target.host.text.clone(),
                            port: target.port,
                        },
                    ),
                    // No host and port to remember a certificate by: pin it instead.
                    Destination::Unix(address) => (
                        Trust::for_socket(verify.clone(), address.to_string()),
                        TlsTarget::Unix(
                            UnixEndpoint::new(reactor, address.clone()).with_timeout(Some(timeout)),
                        ),
                    ),
                };
                let dialer = Rc::new_cyclic(|me| TlsDialer {
                    reactor: reactor.clone(),
                    trust: RefCell::new(trust),
                    target,
                    server_name,
                    timeout,
                    conversation: starter,
                    view: view.clone(),
                    me: me.clone(),
                });
                reactor.call_when_running(move || dialer.dial());
            }
        }
        self.parts = Some((view, conversation));
        Ok(())
    }

    fn finish(self: Box<Self>, stopped: StopReason) -> ExitStatus {
        // Every exit path: the terminal first, then the last words.
        if let Some((view, _)) = &self.parts {
            view.restore();
        }
        // An end the conversation reached comes first, even if a signal arrived while
        // the console was settling.
        let ending = self.outcome.borrow_mut().take();
        // A half-typed line is given back rather than lost with the connection.
        if let Some((view, _)) = &self.parts
            && let Some(unsent) = view.unsent()
        {
            print_line(&format!("* not sent: {unsent}"), true);
        }
        match (ending, stopped) {
            (Some(ending), _) => {
                if let Some((text, to_stderr)) = ending.farewell() {
                    print_line(&text, to_stderr);
                }
                ending.status()
            }
            (None, StopReason::Signal(signal)) => ExitStatus::Signal(signal),
            (None, _) if scaffold::stdout_gone() => ExitStatus::Failure,
            (None, _) => {
                scaffold::eprint_error("talk-client stopped without an outcome");
                ExitStatus::Failure
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reactor::testing::{ProtocolDriver, StringTransport};
    use crate::reactor::{FakeClock, Transport, UnixAddress};
    use std::io;
    use std::os::linux::net::SocketAddrExt;

    /// Records what the conversation shows, instead of a console.
    #[derive(Default)]
    struct Screen {
        shown: RefCell<Vec<String>>,
        warned: RefCell<Vec<String>>,
        input_started: Cell<bool>,
    }

    impl ChatView for Screen {
        fn start_input(&self, _deliver: Box<dyn FnMut(ConsoleEvent)>) {
            self.input_started.set(true);
        }
        fn show(&self, line: &str) {
            self.shown.borrow_mut().push(line.to_string());
        }
        fn warn(&self, line: &str) {
            self.warned.borrow_mut().push(line.to_string());
        }
    }

    impl Screen {
        fn take_shown(&self) -> Vec<String> {
            std::mem::take(&mut *self.shown.borrow_mut())
        }
    }

    struct Chat {
        conversation: Rc<Conversation>,
        screen: Rc<Screen>,
        clock: FakeClock,
        endings: Rc<RefCell<Vec<Ending>>>,
        driver: ProtocolDriver<dyn Protocol>,
    }

    impl Chat {
        fn new(raw: bool) -> Chat {
            Chat::lingering(raw, None)
        }

        fn lingering(raw: bool, linger: Option<Duration>) -> Chat {
            let screen = Rc::new(Screen::default());
            let clock = FakeClock::new();
            let endings = Rc::new(RefCell::new(Vec::new()));
            let recorded = endings.clone();
            let view: Rc<dyn ChatView> = screen.clone();
            let scheduler: Rc<dyn Scheduler> = Rc::new(clock.clone());
            let options = ChatOptions { raw, linger };
            let conversation = Conversation::new(options, view, scheduler, move |ending| {
                recorded.borrow_mut().push(ending);
            });
            let driver = ProtocolDriver::from_box(
                conversation.protocol(),
                StringTransport::with_default_addresses(),
            );
            Chat {
                conversation,
                screen,
                clock,
                endings,
                driver,
            }
        }

        fn connected(raw: bool) -> Chat {
            let mut chat = Chat::new(raw);
            chat.driver.connect().expect("connection_made succeeds");
            chat
        }

        fn type_line(&self, line: &str) {
            self.conversation
                .typed(ConsoleEvent::Line(line.to_string()));
        }

        fn feed(&mut self, data: &[u8]) {
            self.driver.feed(data).expect("data_received succeeds");
        }

        fn transport(&self) -> &Rc<StringTransport> {
            self.driver.transport()
        }

        fn endings(&self) -> Vec<Ending> {
            self.endings.borrow().clone()
        }
    }

    #[test]
    fn p03_the_console_starts_only_once_the_connection_is_made() {
        let mut chat = Chat::new(false);
        assert!(!chat.screen.input_started.get());
        chat.driver.connect().expect("connection_made succeeds");
        assert!(chat.screen.input_started.get());
    }

    #[test]
    fn l02_server_lines_are_shown_with_a_prefix_however_they_are_chunked() {
        let stream: &[u8] = b"hello\r\nworld\n\nlast\r\n";
        let expected = ["Server: hello", "Server: world", "Server: ", "Server: last"];
        for size in [1, 2, 3, 7, stream.len()] {
            let mut chat = Chat::connected(false);
            for chunk in stream.chunks(size) {
                chat.feed(chunk);
            }
            assert_eq!(chat.screen.take_shown(), expected, "chunks of {size}");
        }
    }

    #[test]
    fn l02_an_unfinished_line_waits_for_its_newline() {
        let mut chat = Chat::connected(false);
        chat.feed(b"half");
        assert!(chat.screen.take_shown().is_empty());
        chat.feed(b" done\n");
        assert_eq!(chat.screen.take_shown(), ["Server: half done"]);
    }

    #[test]
    fn hostile_server_text_is_escaped_and_holds_no_escape_byte() {
        let mut chat = Chat::connected(false);
        chat.feed(b"\x1b]0;PWNED\x07\x1b[2J\xff C:\\dir\x9b\n");
        let shown = chat.screen.take_shown();
        assert_eq!(
            shown,
            ["Server: \\x1b]0;PWNED\\x07\\x1b[2J\\xff C:\\\\dir\\x9b"]
        );
        assert!(
            shown
                .iter()
                .all(|l| !l.contains('\x1b') && !l.contains('\x07'))
        );
    }

    #[test]
    fn l04_typed_lines_keep_leading_blanks_are_sent_with_crlf_and_empty_ones_are_not_sent() {
        let chat = Chat::connected(false);
        chat.type_line("  hello there \t");
        chat.type_line("");
        chat.type_line("   ");
        chat.conversation.typed(ConsoleEvent::Typed {
            line: "\tsecond".to_string(),
            prompt: 0,
        });
        assert_eq!(chat.transport().written(), b"  hello there\r\n\tsecond\r\n");
        assert_eq!(chat.transport().write_calls(), 2, "one write per line");
    }

    #[test]
    fn x11_bye_is_sent_then_the_write_side_is_half_closed() {
        let chat = Chat::connected(false);
        chat.type_line("bye");
        let transport = chat.transport();
        assert_eq!(transport.written(), b"bye\r\n");
        assert!(transport.write_closed(), "the server sees EOF");
        assert!(!transport.is_disconnecting(), "reading goes on");
        assert!(chat.endings().is_empty());
    }

    #[test]
    fn x11_after_bye_the_client_gives_up_with_124_when_the_server_does_not_close() {
        let mut chat = Chat::connected(false);
        chat.type_line("bye");
        chat.clock.advance(BYE_GRACE - Duration::from_millis(1));
        assert!(!chat.transport().is_disconnecting());
        chat.clock.advance(Duration::from_millis(1));
        assert!(chat.transport().aborted(), "closed after the grace");
        chat.driver.close();
        assert_eq!(chat.endings(), [Ending::GaveUp(BYE_GRACE)]);
        assert_eq!(chat.endings()[0].status().code(), 124);
        assert_eq!(
            chat.endings()[0].farewell(),
            Some((
                "* the server had not closed after 2s; giving up".to_string(),
                true
            ))
        );
    }

    #[test]
    fn linger_sets_the_limit_after_bye_and_after_the_end_of_input() {
        let linger = Duration::from_millis(500);
        let mut chat = Chat::lingering(false, Some(linger));
        chat.driver.connect().unwrap();
        chat.type_line("bye");
        chat.clock.advance(linger);
        assert!(chat.transport().aborted());
        chat.driver.close();
        assert_eq!(chat.endings(), [Ending::GaveUp(linger)]);

        let mut chat = Chat::lingering(false, Some(Duration::from_secs(10)));
        chat.driver.connect().unwrap();
        chat.type_line("question");
        chat.conversation.typed(ConsoleEvent::Eof);
        chat.clock.advance(Duration::from_secs(9));
        chat.feed(b"answer\n");
        assert!(!chat.transport().is_disconnecting());
        chat.clock.advance(Duration::from_secs(1));
        assert!(chat.transport().aborted());
        chat.driver.close();
        assert_eq!(chat.endings(), [Ending::GaveUp(Duration::from_secs(10))]);
        assert_eq!(chat.screen.take_shown(), ["Server: answer"]);
    }

    fn server_half_closes(chat: &mut Chat) {
        let transport = chat.driver.transport_ref().clone();
        chat.driver
            .protocol_mut()
            .read_connection_lost(&transport)
            .expect("read_connection_lost");
    }

    #[test]
    fn an_unterminated_last_line_is_shown_before_the_end() {
        let mut chat = Chat::connected(false);
        assert!(chat.driver.protocol().wants_half_close());
        chat.feed(b"one\nfinal \x07words\r");
        server_half_closes(&mut chat);
        assert_eq!(
            chat.screen.take_shown(),
            ["Server: one", "Server: final \\x07words"]
        );
        assert!(chat.transport().lost_connection(), "we close too");
        chat.driver.close();
        assert_eq!(chat.endings(), [Ending::Closed]);
    }

    #[test]
    fn the_server_closing_with_nothing_pending_shows_nothing_more() {
        let mut chat = Chat::connected(false);
        chat.feed(b"one\n");
        server_half_closes(&mut chat);
        assert_eq!(chat.screen.take_shown(), ["Server: one"]);
        assert!(chat.transport().lost_connection());
    }

    #[test]
    fn p05_the_server_closing_after_bye_ends_cleanly_and_cancels_the_grace_timer() {
        let mut chat = Chat::connected(false);
        chat.type_line("bye");
        chat.feed(b"see you\n");
        chat.driver.lose(CloseReason::Done);
        assert_eq!(chat.screen.take_shown(), ["Server: see you"]);
        assert_eq!(chat.endings(), [Ending::Closed]);
        assert!(
            chat.clock.delayed_calls().is_empty(),
            "grace timer cancelled"
        );
        assert_eq!(Ending::Closed.status(), ExitStatus::Success);
    }

    #[test]
    fn x12_the_end_of_input_half_closes_and_replies_are_still_shown() {
        let mut chat = Chat::connected(false);
        chat.type_line("hello");
        chat.conversation.typed(ConsoleEvent::Eof);
        assert!(chat.transport().write_closed());
        assert!(
            chat.clock.delayed_calls().is_empty(),
            "no deadline: a script waits for every reply"
        );
        chat.feed(b"late reply\n");
        assert_eq!(chat.screen.take_shown(), ["Server: late reply"]);
        assert!(chat.endings().is_empty());
        chat.driver.lose(CloseReason::Done);
        assert_eq!(chat.endings(), [Ending::Closed]);
    }

    #[test]
    fn s14_over_tls_the_end_of_input_sends_no_close_notify_and_waits_as_over_tcp() {
        let mut chat = Chat::connected(false);
        chat.transport().complete_handshake();
        chat.type_line("hello");
        chat.conversation.typed(ConsoleEvent::Eof);
        // No half-close over TLS (no close_notify), and no close: without --linger the
        // replies and the server's close are awaited for as long as they take, as over TCP.
        chat.clock.advance(Duration::from_secs(3600));
        assert!(!chat.transport().write_closed());
        assert!(!chat.transport().is_disconnecting());
        chat.feed(b"a reply\n");
        assert_eq!(chat.screen.take_shown(), ["Server: a reply"]);
        chat.driver.lose(CloseReason::Done);
        assert_eq!(chat.endings(), [Ending::Closed]);

        // With --linger, the TCP rule: wait up to that long for the server's close.
        let mut chat = Chat::lingering(false, Some(Duration::from_secs(10)));
        chat.driver.connect().unwrap();
        chat.transport().complete_handshake();
        chat.conversation.typed(ConsoleEvent::Eof);
        assert!(!chat.transport().write_closed());
        chat.clock.advance(Duration::from_secs(9));
        assert!(!chat.transport().is_disconnecting());
        chat.clock.advance(Duration::from_secs(1));
        assert!(chat.transport().aborted());
        chat.driver.close();
        assert_eq!(chat.endings(), [Ending::GaveUp(Duration::from_secs(10))]);
    }

    #[test]
    fn x03_lines_typed_after_bye_are_not_sent_and_the_operator_is_told() {
        let chat = Chat::connected(false);
        chat.type_line("bye");
        chat.type_line("too late");
        chat.conversation.typed(ConsoleEvent::Eof);
        assert_eq!(chat.transport().written(), b"bye\r\n");
        assert_eq!(
            *chat.screen.warned.borrow(),
            ["(not sent, the conversation is ending: too late)"]
        );
    }

    #[test]
    fn a_line_containing_bye_is_an_ordinary_line() {
        let chat = Chat::connected(false);
        chat.type_line("goodbye");
        chat.type_line("bye now");
        assert!(!chat.transport().write_closed());
        assert_eq!(chat.transport().written(), b"goodbye\r\nbye now\r\n");
    }

    #[test]
    fn raw_mode_sends_lines_without_a_newline_and_shows_each_read_as_one_message() {
        let mut chat = Chat::connected(true);
        chat.type_line(" hi ");
        assert_eq!(chat.transport().written(), b" hi");
        chat.feed(b"hello");
        chat.feed(b"two\nlines");
        assert_eq!(
            chat.screen.take_shown(),
            ["Server: hello", "Server: two\\x0alines"]
        );
    }

    #[test]
    fn raw_mode_bye_closes_the_connection_as_the_tutorial_client_does() {
        let mut chat = Chat::connected(true);
        chat.type_line("bye");
        assert_eq!(chat.transport().written(), b"bye");
        assert!(
            chat.transport().lost_connection(),
            "a full close, not a half-close"
        );
        assert!(!chat.transport().write_closed());
        chat.driver.close();
        assert_eq!(chat.endings(), [Ending::Closed]);
    }

    #[test]
    fn raw_mode_has_no_line_limit_since_nothing_is_buffered() {
        let mut chat = Chat::connected(true);
        chat.feed(&vec![b'x'; MAX_LINE + 10]);
        assert!(!chat.transport().is_disconnecting());
        assert_eq!(chat.screen.take_shown().len(), 1);
    }

    #[test]
    fn l07_a_line_of_exactly_max_line_is_shown_and_a_longer_one_disconnects() {
        let mut chat = Chat::connected(false);
        let mut line = vec![b'a'; MAX_LINE];
        line.extend_from_slice(b"\r\n");
        chat.feed(&line);
        assert_eq!(chat.screen.take_shown().len(), 1);
        assert!(!chat.transport().is_disconnecting());

        let mut long = vec![b'b'; MAX_LINE + 1];
        long.push(b'\n');
        chat.feed(&long);
        assert!(
            chat.screen.take_shown().is_empty(),
            "nothing of it is shown"
        );
        assert!(chat.transport().aborted());
        chat.driver.close();
        assert_eq!(chat.endings(), [Ending::LineTooLong(MAX_LINE)]);
        assert_eq!(chat.endings()[0].status(), ExitStatus::Failure);
    }

    #[test]
    fn l08_an_endless_line_disconnects_before_its_newline_arrives() {
        let mut chat = Chat::connected(false);
        // A maximum-length line whose "\r\n" is still on its way is fine...
        chat.feed(&vec![b'z'; MAX_LINE + 1]);
        assert!(!chat.transport().is_disconnecting());
        // ...one byte more cannot be a line of MAX_LINE any longer.
        chat.feed(b"z");
        assert!(chat.transport().aborted());
        chat.driver.close();
        assert_eq!(chat.endings(), [Ending::LineTooLong(MAX_LINE)]);
    }

    #[test]
    fn x10_a_reset_is_reported_as_a_broken_connection_with_failure_status() {
        let mut chat = Chat::connected(false);
        chat.feed(b"partial li");
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        chat.driver.lose(CloseReason::Reset(Rc::new(reset)));
        let endings = chat.endings();
        assert_eq!(
            endings,
            [Ending::Broken("connection reset by peer".to_string())]
        );
        assert_eq!(endings[0].status(), ExitStatus::Failure);
        assert!(
            chat.screen.take_shown().is_empty(),
            "the partial line is dropped"
        );
    }

    #[test]
    fn ctrl_c_aborts_and_ends_at_once_with_status_130() {
        let mut chat = Chat::connected(false);
        chat.type_line("typed");
        chat.conversation.typed(ConsoleEvent::Interrupted);
        assert!(chat.transport().aborted());
        assert_eq!(chat.endings(), [Ending::Interrupted]);
        chat.driver.close();
        assert_eq!(chat.endings(), [Ending::Interrupted], "ends exactly once");
        assert_eq!(Ending::Interrupted.status().code(), 130);
        assert_eq!(Ending::Interrupted.farewell(), None);
    }

    #[test]
    fn p04_nothing_is_shown_or_sent_after_the_end() {
        let mut chat = Chat::connected(false);
        chat.driver.lose(CloseReason::Done);
        chat.type_line("hello");
        chat.conversation.received(b"ghost");
        assert!(chat.screen.take_shown().is_empty());
        assert!(chat.transport().written().is_empty());
        assert_eq!(chat.endings(), [Ending::Closed]);
    }

    #[test]
    fn farewells_say_what_happened_on_the_documented_stream() {
        assert_eq!(
            Ending::Closed.farewell(),
            Some(("Connection lost - goodbye!".to_string(), false))
        );
        let (text, to_stderr) = Ending::ConnectFailed("127.0.0.1:1: connection refused".into())
            .farewell()
            .expect("a message");
        assert_eq!(
            text,
            "Connection failed - goodbye! (127.0.0.1:1: connection refused)"
        );
        assert!(to_stderr);
        let (text, _) = Ending::LineTooLong(65536).farewell().expect("a message");
        assert!(text.contains("longer than 65536 bytes"), "{text}");
        assert_eq!(
            Ending::ConnectFailed(String::new()).status(),
            ExitStatus::Failure
        );
    }

    /// Runs a real reactor until the conversation connects or ends; returns the endings
    /// and whether it connected.
    fn dial(addresses: Vec<SocketAddr>, timeout: Duration) -> (Vec<Ending>, bool) {
        talk_over(move |reactor, conversation| {
            let endpoint =
                HostnameEndpoint::new(reactor, "server.test", 1).with_addresses(addresses);
            super::dial(endpoint, conversation, timeout, None);
        })
    }

    /// Runs a real reactor, with `start` connecting the conversation once it runs,
    /// until the conversation connects or ends; returns the endings and whether it
    /// connected.
    fn talk_over(start: impl FnOnce(&Reactor, &Rc<Conversation>) + 'static) -> (Vec<Ending>, bool) {
        struct StopOnConnect(Reactor, Rc<Cell<bool>>);
        impl ChatView for StopOnConnect {
            fn start_input(&self, _deliver: Box<dyn FnMut(ConsoleEvent)>) {
                self.1.set(true);
                let _ = self.0.stop();
            }
            fn show(&self, _line: &str) {}
            fn warn(&self, _line: &str) {}
        }
        let reactor = Reactor::new().expect("a reactor");
        let connected = Rc::new(Cell::new(false));
        let view: Rc<dyn ChatView> = Rc::new(StopOnConnect(reactor.clone(), connected.clone()));
        let endings = Rc::new(RefCell::new(Vec::new()));
        let recorded = endings.clone();
        let stopper = reactor.clone();
        let conversation = Conversation::new(
            ChatOptions::default(),
            view,
            Rc::new(reactor.clone()),
            move |ending| {
                recorded.borrow_mut().push(ending);
                let _ = stopper.stop();
            },
        );
        let starter = reactor.clone();
        reactor.call_when_running(move || start(&starter, &conversation));
        // A bound on the test: no attempt on loopback takes this long.
        let guard = reactor.clone();
        reactor.call_later(Duration::from_secs(10), move || {
            let _ = guard.stop();
        });
        reactor.run().expect("the reactor runs");
        let endings = endings.borrow().clone();
        (endings, connected.get())
    }

    fn closed_port() -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("an address")
    }

    #[test]
    fn the_addresses_are_tried_until_one_connects() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let open = listener.local_addr().expect("an address");
        let (endings, connected) = dial(vec![closed_port(), open], Duration::from_secs(5));
        assert!(connected, "{endings:?}");
        assert!(
            !endings
                .iter()
                .any(|e| matches!(e, Ending::ConnectFailed(_))),
            "{endings:?}"
        );
    }

    #[test]
    fn when_every_address_refuses_each_one_tried_is_reported() {
        let first = closed_port();
        let last = closed_port();
        let (endings, connected) = dial(vec![first, last], Duration::from_secs(5));
        assert!(!connected);
        assert_eq!(
            endings,
            [Ending::ConnectFailed(format!(
                "{first}: connection refused; {last}: connection refused"
            ))]
        );
    }

    #[test]
    fn the_timeout_bounds_the_whole_connect_and_names_what_got_no_answer() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let open = listener.local_addr().expect("an address");
        let (endings, connected) = dial(vec![open], Duration::ZERO);
        assert!(!connected);
        assert_eq!(
            endings,
            [Ending::ConnectFailed(format!(
                "timed out after 0s ({open}: no answer)"
            ))]
        );
    }

    /// A TLS route whose factory cannot be built: its server name is none.
    fn unbuildable_route(reactor: &Reactor) -> TlsRoute {
        let options = crate::reactor::tls::ClientOptions {
            verify: crate::reactor::tls::Verify::Off,
            ..Default::default()
        };
        TlsRoute {
            reactor: reactor.clone(),
            config: TlsClientConfig::new(&options).expect("a client configuration"),
            server_name: "a..b".to_string(),
            refused: Rc::new(|error: &TlsError| panic!("nothing connected to refuse: {error}")),
        }
    }

    #[test]
    fn a_tls_route_that_cannot_be_built_ends_the_talk_before_any_connect() {
        let failed = [Ending::ConnectFailed(
            "TLS: invalid TLS server name \"a..b\"".to_string(),
        )];
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        tcp.set_nonblocking(true).expect("non-blocking");
        let open = tcp.local_addr().expect("an address");
        let (endings, connected) = talk_over(move |reactor, conversation| {
            let endpoint =
                HostnameEndpoint::new(reactor, "server.test", 1).with_addresses(vec![open]);
            let route = unbuildable_route(reactor);
            super::dial(endpoint, conversation, Duration::from_secs(5), Some(route));
        });
        assert!(!connected);
        assert_eq!(endings, failed);
        // A connect would wait in the backlog even after the reactor stopped.
        let accepted = tcp.accept().map(|_| ());
        assert_eq!(
            accepted.map_err(|e| e.kind()),
            Err(io::ErrorKind::WouldBlock)
        );

        let name = format!("twistctl-talk-unbuildable-{}", std::process::id());
        let address = std::os::unix::net::SocketAddr::from_abstract_name(&name).expect("a name");
        let unix = std::os::unix::net::UnixListener::bind_addr(&address).expect("bind");
        unix.set_nonblocking(true).expect("non-blocking");
        let socket = UnixAddress::Abstract(name.into_bytes().into_boxed_slice());
        let (endings, connected) = talk_over(move |reactor, conversation| {
            let endpoint = UnixEndpoint::new(reactor, socket);
            dial_unix(endpoint, conversation, Some(unbuildable_route(reactor)));
        });
        assert!(!connected);
        assert_eq!(endings, failed);
        let accepted = unix.accept().map(|_| ());
        assert_eq!(
            accepted.map_err(|e| e.kind()),
            Err(io::ErrorKind::WouldBlock)
        );
    }
}
