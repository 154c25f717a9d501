//! One talk-server connection as the chat sees it: framing (lines, or raw chunks), what
//! is sent to it, its half-close, and closing it with a reason the peer is told. The
//! connection policies come from [`crate::protocols::policies`]: the idle timeout
//! ([`IdleTimeout`]), the bounded outgoing queue ([`OutgoingQueue`]) and closing with a
//! grace period ([`close_with_grace`]); the server's factory adds the connection limit.
//! What the chat does with a message is the server's business ([`ClientEvents`]).
//!
//! # Outgoing data and slow readers
//!
//! The connection's transport asks its registered producer to pause when more than
//! [`HIGH_WATER_MARK`](crate::reactor::tcp::HIGH_WATER_MARK) bytes wait to be sent, and
//! to resume once they drain. What a pause means depends on the mode:
//!
//! - [`Flow::Echo`]: everything sent is an echo of something received, so the line
//!   receiver itself is the producer: the client's own reading is paused. A client that
//!   never reads then costs about one high-water mark plus one read chunk, and nobody
//!   else waits.
//! - [`Flow::Queue`]: the operator's lines must not make the server hold unbounded
//!   memory, and the client may still be chatting, so reading goes on. Lines sent while
//!   paused wait in an [`OutgoingQueue`]; past [`OUTGOING_LIMIT`] the client is
//!   disconnected as `too slow`.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::net::SocketAddr;
use std::rc::{Rc, Weak};
use std::time::Duration;

use crate::protocols::line::{Delimiter, LineControl, LineHandle, LineHandler, LineReceiver};
use crate::protocols::policies::{IdleTimeout, OutgoingQueue, close_with_grace};
use crate::reactor::{
    Address, CloseReason, DelayedCall, Protocol, ProtocolResult, Scheduler, TransportRef,
};

/// The most a client may have waiting to be sent in [`Flow::Queue`] mode (1 MiB).
pub const OUTGOING_LIMIT: usize = 1024 * 1024;

/// How long a closing connection may take to flush before it is reset: a peer that
/// does not read must not keep a closed client (or the server's shutdown) waiting.
pub const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// How long a TLS client may take to complete its handshake. Until then it is not part
/// of the chat (no number, not in `/who`, nothing the operator could `/kick`), so one
/// that never finishes must not hold a place of `--max-clients` for ever.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How the connection's outgoing side copes with a peer that reads slowly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Pause reading from the peer until its outgoing buffer drains (`--echo`).
    Echo,
    /// Queue outgoing lines, up to [`OUTGOING_LIMIT`], then disconnect (console mode).
    Queue,
}

/// Settings shared by every connection of a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientSettings {
    /// No delimiters: each chunk received is one message, lines are sent bare.
    pub raw: bool,
    /// The longest line accepted, without its delimiter.
    pub max_line: usize,
    /// Close clients that send nothing for this long.
    pub idle_timeout: Option<Duration>,
    /// What to do when the peer reads slowly.
    pub flow: Flow,
}

/// Why a client's connection ended, as the disconnect line shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disconnect {
    /// `bye`, from the client or from the operator.
    Bye,
    /// The peer closed the connection.
    ClosedByPeer,
    /// The peer reset the connection.
    Reset,
    /// A line over `--max-line`.
    LineTooLong,
    /// The outgoing queue passed [`OUTGOING_LIMIT`].
    TooSlow,
    /// Nothing received for `--idle-timeout`.
    IdleTimeout,
    /// `/kick`.
    Kicked,
    /// The server is shutting down.
    Shutdown,
    /// Anything else, described.
    Other(String),
}

impl Disconnect {
    /// The reason for a connection that ended without one of ours: how the peer or the
    /// network ended it.
    pub fn from_close(reason: &CloseReason) -> Disconnect {
        match reason {
            CloseReason::Done => Disconnect::ClosedByPeer,
            CloseReason::Reset(_) => Disconnect::Reset,
            CloseReason::Lost(Some(error))
                if error.kind() == std::io::ErrorKind::ConnectionReset =>
            {
                Disconnect::Reset
            }
            // A TLS stream cut without close_notify (S-09): the layer's words say so.
            CloseReason::Lost(Some(error)) if error.kind() == std::io::ErrorKind::UnexpectedEof => {
                Disconnect::Other(error.to_string())
            }
            other => Disconnect::Other(other.to_string()),
        }
    }
}

impl fmt::Display for Disconnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Disconnect::Bye => "bye",
            Disconnect::ClosedByPeer => "closed by peer",
            Disconnect::Reset => "connection reset",
            Disconnect::LineTooLong => "line too long",
            Disconnect::TooSlow => "too slow",
            Disconnect::IdleTimeout => "idle timeout",
            Disconnect::Kicked => "kicked",
            Disconnect::Shutdown => "server shutting down",
            Disconnect::Other(text) => text,
        })
    }
}

/// What a connection tells the chat. Implemented by the server.
pub trait ClientEvents {
    /// The connection is up and ready to send.
    fn connected(&self, client: &Rc<Client>);
    /// A line (delimiter removed), or in raw mode one received chunk.
    fn received(&self, client: &Rc<Client>, message: &[u8]);
    /// The peer has finished sending (it half-closed, in console mode): nothing more
    /// will arrive, but the connection stays open for what is sent to it.
    fn finished_sending(&self, client: &Rc<Client>);
    /// The connection has ended; called once, last.
    fn disconnected(&self, client: &Rc<Client>, reason: Disconnect);
}

/// One connected client as the server sees it: send to it, close it, ask how idle it is.
pub struct Client {
    me: Weak<Client>,
    peer: Address,
    id: Cell<u64>,
    settings: ClientSettings,
    events: Weak<dyn ClientEvents>,
    scheduler: Rc<dyn Scheduler>,
    transport: RefCell<Option<TransportRef>>,
    /// What is sent to the client, bounded ([`Flow::Queue`] only).
    outgoing: RefCell<Option<OutgoingQueue>>,
    /// Our reason for closing, once we have decided to close.
    reason: RefCell<Option<Disconnect>>,
    /// When the client was last heard from; closes it after `--idle-timeout`.
    idle: RefCell<Option<IdleTimeout>>,
    grace_timer: RefCell<Option<DelayedCall>>,
    /// Drops a TLS client that has not completed its handshake in time.
    handshake_timer: RefCell<Option<DelayedCall>>,
    ended: Cell<bool>,
    /// The chat was told of the client (over TLS: once the handshake completed).
    announced: Cell<bool>,
    /// The peer half-closed: it sends no more, but still reads.
    half_closed: Cell<bool>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("id", &self.id.get())
            .field("peer", &self.peer)
            .finish()
    }
}

/// An address as people write it: an IPv4 peer on a dual-stack socket arrives as
/// `[::ffff:127.0.0.1]:53422` and is shown as `127.0.0.1:53422`.
pub fn plain_address(address: Address) -> Address {
    match address {
        Address::Tcp(a) => Address::Tcp(SocketAddr::new(a.ip().to_canonical(), a.port())),
        unix => unix,
    }
}

impl Client {
    /// A client for a connection from `peer`, and the protocol to hand to the reactor.
    pub fn new_protocol(
        peer: Address,
        settings: ClientSettings,
        events: Weak<dyn ClientEvents>,
        scheduler: Rc<dyn Scheduler>,
    ) -> (Rc<Client>, Box<dyn Protocol>) {
        let client = Rc::new_cyclic(|me| Client {
            me: me.clone(),
            peer: plain_address(peer),
            id: Cell::new(0),
            settings,
            events,
            scheduler,
            transport: RefCell::new(None),
            outgoing: RefCell::new(None),
            reason: RefCell::new(None),
            idle: RefCell::new(None),
            grace_timer: RefCell::new(None),
            handshake_timer: RefCell::new(None),
            ended: Cell::new(false),
            announced: Cell::new(false),
            half_closed: Cell::new(false),
        });
        let receiver = LineReceiver::new(ClientHandler {
            client: client.clone(),
        })
        .with_delimiter(Delimiter::newline())
        .with_max_length(settings.max_line);
        let protocol = ClientProtocol {
            client: client.clone(),
            receiver,
        };
        (client, Box::new(protocol))
    }

    /// The client's number (0 until the server has registered it).
    pub fn id(&self) -> u64 {
        self.id.get()
    }

    /// Sets the client's number; the server does this once, on connect.
    pub fn set_id(&self, id: u64) {
        self.id.set(id);
    }

    /// The peer's address, IPv4-mapped addresses shown as IPv4.
    pub fn peer(&self) -> &Address {
        &self.peer
    }

    /// Where the client came from, for the line that announces it: its address, or for
    /// a UNIX client the socket it reached and the process at the other end
    /// (`unix:/run/talk.sock (pid 4242, uid 1000)`).
    pub fn origin(&self) -> String {
        let transport = self.transport.borrow();
        match (&self.peer, transport.as_ref()) {
            (Address::Unix(_), Some(transport)) => {
                let host = transport.host();
                match transport.peer_credentials() {
                    Some(who) => format!("{host} (pid {}, uid {})", who.pid, who.uid),
                    None => host.to_string(),
                }
            }
            (peer, _) => peer.to_string(),
        }
    }

    /// The transport the client talks over, for `/who`: `tcp`, `tls TLSv1.3` (`tls`
    /// while the handshake runs) or `unix`.
    pub fn transport_name(&self) -> String {
        let transport = self.transport.borrow();
        let unix = matches!(self.peer, Address::Unix(_));
        match transport.as_ref() {
            Some(t) if t.is_tls() => match t.tls() {
                Some(session) => format!("tls {}", session.version),
                None => "tls".to_string(),
            },
            _ if unix => "unix".to_string(),
            _ => "tcp".to_string(),
        }
    }

    /// How long since the client last sent anything.
    pub fn idle(&self) -> Duration {
        self.idle
            .borrow()
            .as_ref()
            .map_or(Duration::ZERO, IdleTimeout::idle)
    }

    /// True once the server decided to close this client, or the connection ended.
    pub fn is_closing(&self) -> bool {
        self.ended.get() || self.reason.borrow().is_some()
    }

    /// True once the peer has finished sending (half-closed its side).
    pub fn is_half_closed(&self) -> bool {
        self.half_closed.get()
    }

    /// Bytes waiting in the outgoing queue (not counting the transport's buffer).
    pub fn queued(&self) -> usize {
        self.outgoing
            .borrow()
            .as_ref()
            .map_or(0, OutgoingQueue::queued)
    }

    /// Sends `text` with the line delimiter (bare in raw mode). In [`Flow::Queue`] mode
    /// a client whose queue would pass [`OUTGOING_LIMIT`] is disconnected as `too slow`
    /// instead; the return value tells whether the text was accepted.
    pub fn send_line(&self, text: &[u8]) -> bool {
        if self.is_closing() {
            return false;
        }
        let Some(transport) = self.transport() else {
            return false;
        };
        let delimiter: &[u8] = if self.settings.raw { b"" } else { b"\r\n" };
        let outgoing = self.outgoing.borrow().clone();
        let Some(outgoing) = outgoing else {
            transport.write_sequence(&[text, delimiter]);
            return true;
        };
        match outgoing.write(&[text, delimiter]) {
            Ok(()) => true,
            Err(too_slow) => {
                log::info!("client {} ({}): {too_slow}", self.id(), self.peer);
                self.abort(Disconnect::TooSlow);
                false
            }
        }
    }

    /// Closes after sending everything queued; `reason` is what the disconnect line
    /// will say. A peer that does not take the data within [`CLOSE_GRACE`] is reset.
    pub fn close(&self, reason: Disconnect) {
        self.close_telling(None, reason);
    }

    /// Closes as [`Client::close`] does, sending `notice` as the last line (in line
    /// mode only: in raw mode it would run into what was sent before), so that the peer
    /// learns why.
    pub fn close_telling(&self, notice: Option<&str>, reason: Disconnect) {
        if !self.set_reason(reason) {
            return;
        }
        let Some(transport) = self.transport() else {
            return;
        };
        // The queue is bounded, so handing all of it to the transport now is cheap,
        // and the transport's close flushes it.
        if let Some(outgoing) = self.outgoing.borrow().as_ref() {
            outgoing.flush_to_transport();
        }
        if let Some(notice) = notice.filter(|_| !self.settings.raw) {
            transport.write_sequence(&[notice.as_bytes(), b"\r\n"]);
        }
        let timer = close_with_grace(&transport, &*self.scheduler, CLOSE_GRACE);
        self.grace_timer.borrow_mut().replace(timer);
    }

    /// Sends `error: <message>` at once (ahead of anything queued) and closes.
    pub fn fail(&self, message: &str, reason: Disconnect) {
        if self.is_closing() {
            return;
        }
        if let Some(transport) = self.transport() {
            let delimiter: &[u8] = if self.settings.raw { b"" } else { b"\r\n" };
            transport.write_sequence(&[b"error: ", message.as_bytes(), delimiter]);
        }
        self.close(reason);
    }

    /// Closes at once with a reset, dropping whatever waits to be sent.
    pub fn abort(&self, reason: Disconnect) {
        if !self.set_reason(reason) {
            return;
        }
        if let Some(outgoing) = self.outgoing.borrow().as_ref() {
            outgoing.clear();
        }
        if let Some(transport) = self.transport() {
            transport.abort_connection();
        }
    }

    /// Records our reason for closing; false if one was already recorded or the
    /// connection has ended.
    fn set_reason(&self, reason: Disconnect) -> bool {
        if self.ended.get() {
            return false;
        }
        let mut slot = self.reason.borrow_mut();
        if slot.is_some() {
            return false;
        }
        *slot = Some(reason);
        true
    }

    fn transport(&self) -> Option<TransportRef> {
        self.transport.borrow().clone()
    }

    fn attach(self: &Rc<Self>, transport: &TransportRef, lines: LineHandle) {
        *self.transport.borrow_mut() = Some(transport.clone());
        match self.settings.flow {
            Flow::Queue => {
                let outgoing = OutgoingQueue::attach(transport, OUTGOING_LIMIT);
                *self.outgoing.borrow_mut() = Some(outgoing);
            }
            // Echoes wait for the client to read them: its own reading pauses meanwhile.
            Flow::Echo => transport.register_producer(Rc::new(lines)),
        }
        // The timer must not keep the client alive.
        let client = self.me.clone();
        let idle = IdleTimeout::new(
            self.scheduler.clone(),
            self.settings.idle_timeout,
            move || {
                if let Some(client) = client.upgrade() {
                    client.idled_out();
                }
            },
        );
        *self.idle.borrow_mut() = Some(idle);
    }

    /// Tells the chat the client is here, once: at connect, or over TLS once the
    /// handshake completed, so that a peer that fails the handshake (a plain-text
    /// client, one that refuses the certificate) never takes a number or a line.
    fn announce(self: &Rc<Self>) {
        if let Some(timer) = self.handshake_timer.borrow_mut().take() {
            let _ = timer.cancel();
        }
        if self.announced.replace(true) || self.ended.get() {
            return;
        }
        if let Some(events) = self.events.upgrade() {
            events.connected(self);
        }
    }

    /// A TLS client: announced once its handshake completes, dropped if that takes
    /// longer than [`HANDSHAKE_TIMEOUT`].
    fn await_handshake(&self) {
        let client = self.me.clone();
        let timer = self.scheduler.schedule(
            HANDSHAKE_TIMEOUT,
            Box::new(move || {
                if let Some(client) = client.upgrade() {
                    let why = format!(
                        "no handshake within {}",
                        crate::duration::format(HANDSHAKE_TIMEOUT)
                    );
                    client.abort(Disconnect::Other(why));
                }
            }),
        );
        *self.handshake_timer.borrow_mut() = Some(timer);
    }

    fn heard(&self) {
        if let Some(idle) = self.idle.borrow().as_ref() {
            idle.reset();
        }
    }

    /// Nothing heard for `--idle-timeout`: the client is told, then closed.
    fn idled_out(&self) {
        let Some(timeout) = self.settings.idle_timeout else {
            return;
        };
        if self.is_closing() {
            return;
        }
        let notice = format!(
            "* disconnected: idle for {}",
            crate::duration::format(timeout)
        );
        self.close_telling(Some(&notice), Disconnect::IdleTimeout);
    }

    /// The peer half-closed: what it sent without a final newline is still a line
    /// (it is shown, not lost), and the connection stays open for writing.
    fn read_ended(self: &Rc<Self>, tail: &[u8]) {
        if self.is_closing() {
            return;
        }
        let events = self.events.upgrade();
        let tail = tail.strip_suffix(b"\r").unwrap_or(tail);
        if !tail.is_empty()
            && let Some(events) = &events
        {
            events.received(self, tail);
        }
        if self.is_closing() {
            return; // the tail was "bye"
        }
        self.half_closed.set(true);
        if let Some(events) = events {
            events.finished_sending(self);
        }
    }

    fn ended(self: &Rc<Self>, reason: &CloseReason) {
        if self.ended.replace(true) {
            return;
        }
        if let Some(idle) = self.idle.borrow_mut().take() {
            idle.cancel();
        }
        if let Some(timer) = self.grace_timer.borrow_mut().take() {
            let _ = timer.cancel();
        }
        if let Some(timer) = self.handshake_timer.borrow_mut().take() {
            let _ = timer.cancel();
        }
        self.transport.borrow_mut().take();
        if let Some(outgoing) = self.outgoing.borrow_mut().take() {
            outgoing.clear();
        }
        let ours = self.reason.borrow_mut().take();
        if !self.announced.get() {
            // Never part of the chat: a handshake that failed, was cut short or took
            // too long.
            let why = ours.map_or_else(|| reason.to_string(), |ours| ours.to_string());
            log::info!(
                "TLS connection from {} ended before the handshake completed: {why}",
                self.peer
            );
            return;
        }
        let reason = ours.unwrap_or_else(|| Disconnect::from_close(reason));
        if let Some(events) = self.events.upgrade() {
            events.disconnected(self, reason);
        }
    }
}

/// The line handler: hands messages to the server, and over-long lines to `fail`.
struct ClientHandler {
    client: Rc<Client>,
}

impl LineHandler for ClientHandler {
    fn connection_made(&mut self, lines: &mut LineControl<'_>) -> ProtocolResult {
        if self.client.settings.raw {
            lines.set_raw_mode();
        }
        let transport = lines.transport();
        self.client.attach(transport, lines.handle());
        // Over TLS the client is announced by `handshake_completed`.
        if !transport.is_tls() || transport.tls().is_some() {
            self.client.announce();
        } else {
            self.client.await_handshake();
        }
        Ok(())
    }

    fn line_received(&mut self, line: &[u8], _lines: &mut LineControl<'_>) -> ProtocolResult {
        if let Some(events) = self.client.events.upgrade() {
            events.received(&self.client, line);
        }
        Ok(())
    }

    fn raw_data_received(&mut self, data: &[u8], _lines: &mut LineControl<'_>) -> ProtocolResult {
        if let Some(events) = self.client.events.upgrade() {
            events.received(&self.client, data);
        }
        Ok(())
    }

    fn line_length_exceeded(
        &mut self,
        _data: &[u8],
        _lines: &mut LineControl<'_>,
    ) -> ProtocolResult {
        self.client.fail("line too long", Disconnect::LineTooLong);
        Ok(())
    }

    fn connection_lost(&mut self, reason: &CloseReason) {
        self.client.ended(reason);
    }

    /// A client's end of input is "finished sending", not "gone": in console mode the
    /// operator may still answer it; in `--echo` mode its last, unterminated line is
    /// echoed before the server closes.
    fn wants_half_close(&self) -> bool {
        true
    }

    fn read_connection_lost(&mut self, lines: &mut LineControl<'_>) -> ProtocolResult {
        let tail = lines.clear_line_buffer();
        self.client.read_ended(&tail);
        Ok(())
    }
}

/// The protocol the reactor drives: line framing, plus noting every chunk received for
/// the idle timer (a partial line is activity too).
struct ClientProtocol {
    client: Rc<Client>,
    receiver: LineReceiver<ClientHandler>,
}

impl Protocol for ClientProtocol {
    fn connection_made(&mut self, transport: &TransportRef) -> ProtocolResult {
        self.receiver.connection_made(transport)
    }

    fn handshake_completed(&mut self, _transport: &TransportRef) -> ProtocolResult {
        self.client.announce();
        Ok(())
    }

    fn data_received(&mut self, transport: &TransportRef, data: &[u8]) -> ProtocolResult {
        self.client.heard();
        self.receiver.data_received(transport, data)
    }

    fn connection_lost(&mut self, reason: &CloseReason) {
        self.receiver.connection_lost(reason);
        // Also when the line receiver has already been told (it ignores a second call).
        self.client.ended(reason);
    }

    fn wants_half_close(&self) -> bool {
        self.receiver.wants_half_close()
    }

    fn read_connection_lost(&mut self, transport: &TransportRef) -> ProtocolResult {
        self.receiver.read_connection_lost(transport)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::rc::Rc;

    #[test]
    fn ipv4_mapped_addresses_are_shown_as_ipv4() {
        let mapped: SocketAddr = "[::ffff:10.1.2.3]:4000".parse().unwrap();
        assert_eq!(plain_address(mapped.into()).to_string(), "10.1.2.3:4000");
        let v6: SocketAddr = "[2001:db8::1]:4000".parse().unwrap();
        assert_eq!(plain_address(v6.into()), Address::Tcp(v6));
    }

    #[test]
    fn p05_close_reasons_map_to_the_documented_words() {
        let reset = || Rc::new(io::Error::from(io::ErrorKind::ConnectionReset));
        assert_eq!(
            Disconnect::from_close(&CloseReason::Done),
            Disconnect::ClosedByPeer
        );
        assert_eq!(
            Disconnect::from_close(&CloseReason::Reset(reset())),
            Disconnect::Reset
        );
        assert_eq!(
            Disconnect::from_close(&CloseReason::Lost(Some(reset()))),
            Disconnect::Reset
        );
        assert_eq!(
            Disconnect::from_close(&CloseReason::Lost(None)).to_string(),
            "connection lost"
        );
        let truncated = std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the peer closed the connection without a TLS close_notify (truncated)",
        );
        assert_eq!(
            Disconnect::from_close(&CloseReason::Lost(Some(Rc::new(truncated)))).to_string(),
            "the peer closed the connection without a TLS close_notify (truncated)"
        );
        let words: Vec<String> = [
            Disconnect::Bye,
            Disconnect::ClosedByPeer,
            Disconnect::Reset,
            Disconnect::LineTooLong,
            Disconnect::TooSlow,
            Disconnect::IdleTimeout,
            Disconnect::Kicked,
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        assert_eq!(
            words,
            [
                "bye",
                "closed by peer",
                "connection reset",
                "line too long",
                "too slow",
                "idle timeout",
                "kicked"
            ]
        );
    }
}
