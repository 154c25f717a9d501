//! The TLS layer: a protocol on the outer (TCP or UNIX) transport that runs rustls, and
//! the transport it offers the application's protocol (Twisted's TLSMemoryBIOProtocol).
//!
//! Ciphertext from the outer transport goes into rustls; plaintext comes out to the
//! inner protocol's `data_received`. The inner protocol's writes go into rustls and the
//! records it makes go straight into the outer transport's write buffer, so that buffer
//! is the one bound and the one high-water mark of the connection (S-11), as for plain
//! TCP. Only plaintext written before the handshake completes waits here (S-01).
//!
//! Re-entrancy: no `RefCell` of the layer is borrowed while the inner protocol or the
//! outer transport runs (the outer transport may call a producer from `write`).

use std::cell::{Cell, RefCell};
use std::fmt;
use std::io::{self, Read, Write};
use std::rc::{Rc, Weak};
use std::sync::Arc;

use rustls::pki_types::CertificateDer;

use super::cert::{CertificateInfo, CertificateParseError};
use super::config::ChainRecorder;
use super::error::{TlsError, TlsFailure};
use crate::reactor::address::Address;
use crate::reactor::failure::Failure;
use crate::reactor::protocol::{CloseReason, Producer, Protocol, Transport, TransportRef};
use crate::reactor::tcp::{HIGH_WATER_MARK, WRITE_BUFFER_LIMIT};
use crate::reactor::{Reactor, WeakReactor};

/// Plaintext handed to the inner protocol per `data_received` at most.
const PLAINTEXT_CHUNK: usize = 16 * 1024;

/// What the handshake settled (S-06): available from the transport once it completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSession {
    /// `TLSv1.2` or `TLSv1.3`.
    pub version: String,
    /// The cipher suite, by its IANA name as OpenSSL prints it
    /// (`TLS_AES_128_GCM_SHA256`).
    pub cipher: String,
    /// The key exchange group (`x25519`, `secp256r1`, ...), when known.
    pub group: Option<String>,
    /// The ALPN protocol agreed on, if any.
    pub alpn: Option<Vec<u8>>,
    /// The peer's certificate chain, leaf first, as DER; empty for a peer without one
    /// (a client, usually).
    pub peer_chain: Vec<CertificateDer<'static>>,
    /// On a server: the name the client asked for by SNI.
    pub sni: Option<String>,
}

impl TlsSession {
    /// The peer's leaf certificate, parsed; `None` if the peer presented none.
    pub fn peer_certificate(&self) -> Option<Result<CertificateInfo, CertificateParseError>> {
        self.peer_chain
            .first()
            .map(|der| CertificateInfo::parse(der))
    }

    fn of(connection: &rustls::Connection) -> TlsSession {
        let version = match connection.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
            Some(other) => format!("{other:?}"),
            None => String::new(),
        };
        let cipher = connection
            .negotiated_cipher_suite()
            .map(|suite| {
                let name = suite
                    .suite()
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("{:?}", suite.suite()));
                // rustls spells TLS 1.3 suites TLS13_...; OpenSSL and the IANA TLS_...
                match name.strip_prefix("TLS13_") {
                    Some(rest) => format!("TLS_{rest}"),
                    None => name,
                }
            })
            .unwrap_or_default();
        let group = connection
            .negotiated_key_exchange_group()
            .map(|g| format!("{:?}", g.name()).to_ascii_lowercase());
        let sni = match connection {
            rustls::Connection::Server(server) => server.server_name().map(str::to_string),
            rustls::Connection::Client(_) => None,
        };
        TlsSession {
            version,
            cipher,
            group,
            alpn: connection.alpn_protocol().map(<[u8]>::to_vec),
            peer_chain: connection
                .peer_certificates()
                .map(<[_]>::to_vec)
                .unwrap_or_default(),
            sni,
        }
    }
}

/// The layer's yes/no states.
mod flag {
    /// The handshake completed.
    pub(super) const HANDSHAKEN: u16 = 1 << 0;
    /// `lose_connection` was called: close_notify once the handshake is done.
    pub(super) const CLOSING: u16 = 1 << 1;
    /// Our close_notify is queued; the outer transport is closing.
    pub(super) const CLOSE_SENT: u16 = 1 << 2;
    /// The peer's close_notify arrived (S-08).
    pub(super) const PEER_CLOSED: u16 = 1 << 3;
    /// `abort_connection` was called (S-10).
    pub(super) const ABORTED: u16 = 1 << 4;
    /// The handshake or a record failed (S-04).
    pub(super) const FAILED: u16 = 1 << 5;
    /// The inner protocol paused reading.
    pub(super) const READ_PAUSED: u16 = 1 << 6;
    /// The outer connection ended and the inner protocol was told.
    pub(super) const ENDED: u16 = 1 << 7;
    /// A delivery of held-back data is scheduled (after a resume).
    pub(super) const DELIVERY_SCHEDULED: u16 = 1 << 8;
    /// Our close_notify went out while the outer connection was still open: the end
    /// is ours (S-07). Not raised for one sent while the outer connection was already
    /// ending on its own, as when its end stops a producer that then closes (S-09).
    pub(super) const CLOSED_FIRST: u16 = 1 << 9;
}

struct State {
    connection: rustls::Connection,
    /// Plaintext written before the handshake completed (S-01).
    early: Vec<u8>,
    /// Ciphertext received while the inner protocol was paused.
    backlog: Vec<u8>,
    /// The chain a server presented, kept even when verification refuses it.
    recorder: Option<Arc<ChainRecorder>>,
}

/// The transport the inner protocol of a TLS connection sees: writes are encrypted,
/// closing sends close_notify, and [`Transport::tls`] tells what the handshake settled.
pub struct TlsTransport {
    reactor: WeakReactor,
    me: Weak<TlsTransport>,
    /// The stream transport under the layer; `None` once the connection ended.
    outer: RefCell<Option<TransportRef>>,
    state: RefCell<State>,
    protocol: RefCell<Option<Box<dyn Protocol>>>,
    flags: Cell<u16>,
    /// The first cause of the end, when it is not the outer connection's own.
    reason: RefCell<Option<CloseReason>>,
    session: RefCell<Option<Rc<TlsSession>>>,
    producer: RefCell<Option<Rc<ForwardProducer>>>,
    /// Where the inner protocol's close reason is left for a client factory.
    lost_slot: Option<Rc<RefCell<Option<CloseReason>>>>,
}

impl fmt::Debug for TlsTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsTransport")
            .field("flags", &self.flags.get())
            .finish_non_exhaustive()
    }
}

/// How a layer starts.
pub(super) enum Start {
    /// On a new connection: `connection_made` reaches the inner protocol first.
    Fresh,
    /// Under an established connection's protocol (S-12), whose outer transport is
    /// this one.
    Established(TransportRef),
}

impl TlsTransport {
    pub(super) fn new(
        reactor: &Reactor,
        connection: rustls::Connection,
        recorder: Option<Arc<ChainRecorder>>,
        protocol: Option<Box<dyn Protocol>>,
        start: Start,
        lost_slot: Option<Rc<RefCell<Option<CloseReason>>>>,
    ) -> Rc<TlsTransport> {
        let outer = match start {
            Start::Fresh => None,
            Start::Established(outer) => Some(outer),
        };
        Rc::new_cyclic(|me| TlsTransport {
            reactor: reactor.downgrade(),
            me: me.clone(),
            outer: RefCell::new(outer),
            state: RefCell::new(State {
                connection,
                early: Vec::new(),
                backlog: Vec::new(),
                recorder,
            }),
            protocol: RefCell::new(protocol),
            flags: Cell::new(0),
            reason: RefCell::new(None),
            session: RefCell::new(None),
            producer: RefCell::new(None),
            lost_slot,
        })
    }

    /// Gives an established connection's protocol to the layer (S-12).
    pub(super) fn set_protocol(&self, protocol: Box<dyn Protocol>) {
        *self.protocol.borrow_mut() = Some(protocol);
    }

    fn has(&self, flags: u16) -> bool {
        self.flags.get() & flags != 0
    }

    fn raise(&self, flags: u16) {
        self.flags.set(self.flags.get() | flags);
    }

    fn lower(&self, flags: u16) {
        self.flags.set(self.flags.get() & !flags);
    }

    fn outer(&self) -> Option<TransportRef> {
        self.outer.borrow().clone()
    }

    fn this(&self) -> Option<Rc<TlsTransport>> {
        self.me.upgrade()
    }

    fn record_reason(&self, reason: CloseReason) {
        let mut slot = self.reason.borrow_mut();
        if slot.is_none() {
            *slot = Some(reason);
        }
    }

    /// Runs `f` on the inner protocol with this transport as its handle; an error
    /// closes the connection in an orderly way with it as the reason (P-22).
    fn call_inner(
        self: &Rc<Self>,
        f: impl FnOnce(&mut dyn Protocol, &TransportRef) -> Result<(), Failure>,
    ) {
        let result = {
            let Ok(mut slot) = self.protocol.try_borrow_mut() else {
                log::error!("TLS protocol re-entered; event dropped");
                return;
            };
            let Some(protocol) = slot.as_mut() else {
                return;
            };
            let transport: TransportRef = self.clone();
            f(protocol.as_mut(), &transport)
        };
        if let Err(failure) = result {
            log::error!("protocol error on TLS connection: {failure}");
            self.record_reason(CloseReason::Protocol(failure));
            Transport::lose_connection(self.as_ref());
        }
    }

    /// Sends every record rustls has queued to the outer transport. The records pass
    /// through one of the reactor's spare buffers, so an idle connection keeps none.
    pub(super) fn flush_records(&self) {
        // Called after every read and write: most calls have nothing to send.
        if !self.state.borrow().connection.wants_write() {
            return;
        }
        let reactor = self.reactor.upgrade();
        let mut wire = reactor
            .as_ref()
            .map(Reactor::take_buffer)
            .unwrap_or_default();
        {
            let mut state = self.state.borrow_mut();
            while state.connection.wants_write() {
                if let Err(error) = state.connection.write_tls(&mut wire) {
                    log::debug!("TLS records not written: {error}");
                    break;
                }
            }
        }
        // No borrow is held here: the outer transport may call a producer.
        if !wire.is_empty()
            && let Some(outer) = self.outer()
        {
            outer.write(&wire);
        }
        if let Some(reactor) = reactor {
            reactor.give_buffer(wire);
        }
    }

    // -----------------------------------------------------------------------------------
    // Events from the outer transport

    pub(super) fn outer_made(self: &Rc<Self>, outer: &TransportRef) {
        *self.outer.borrow_mut() = Some(outer.clone());
        self.call_inner(|protocol, transport| protocol.connection_made(transport));
        self.flush_records();
    }

    /// Ciphertext arrived.
    pub(super) fn receive(self: &Rc<Self>, data: &[u8]) {
        let mut direct = data;
        if !data.is_empty() && (self.has(flag::READ_PAUSED) || !self.backlog_is_empty()) {
            self.state.borrow_mut().backlog.extend_from_slice(data);
            direct = &[];
        }
        loop {
            if self.has(flag::ENDED | flag::ABORTED | flag::FAILED | flag::PEER_CLOSED) {
                return;
            }
            if !self.deliver() {
                if !direct.is_empty() && !self.has(flag::ENDED | flag::PEER_CLOSED) {
                    self.state.borrow_mut().backlog.extend_from_slice(direct);
                }
                return;
            }
            let fed = {
                let mut state = self.state.borrow_mut();
                let state = &mut *state;
                if !state.backlog.is_empty() {
                    let mut input = &state.backlog[..];
                    let before = input.len();
                    let result = state.connection.read_tls(&mut input);
                    let used = before - input.len();
                    state.backlog.drain(..used);
                    if state.backlog.is_empty() {
                        state.backlog = Vec::new();
                    }
                    Some(result)
                } else if !direct.is_empty() {
                    // Never with an empty slice: rustls takes a read of 0 for the end.
                    Some(state.connection.read_tls(&mut direct))
                } else {
                    None
                }
            };
            match fed {
                None => return,
                Some(Ok(_)) => {}
                Some(Err(error)) => {
                    return self.fail(rustls::Error::General(error.to_string()));
                }
            }
            let processed = self.state.borrow_mut().connection.process_new_packets();
            if let Err(error) = processed {
                return self.fail(error);
            }
            self.flush_records();
            if !self.has(flag::HANDSHAKEN) && !self.state.borrow().connection.is_handshaking() {
                self.handshake_done();
            }
        }
    }

    fn backlog_is_empty(&self) -> bool {
        self.state.borrow().backlog.is_empty()
    }

    /// Hands decrypted data to the inner protocol (S-03). False when it must stop:
    /// paused, closed by the peer, or ended.
    fn deliver(self: &Rc<Self>) -> bool {
        if !self.has(flag::HANDSHAKEN) {
            return true;
        }
        // The loop's spare buffer, not a zeroed array on every delivery.
        let Some(reactor) = self.reactor.upgrade() else {
            return false;
        };
        let mut buffer = reactor.take_read_buffer(PLAINTEXT_CHUNK);
        let go_on = self.deliver_into(&mut buffer);
        reactor.give_read_buffer(buffer);
        go_on
    }

    fn deliver_into(self: &Rc<Self>, buffer: &mut [u8]) -> bool {
        loop {
            if self.has(flag::READ_PAUSED | flag::ENDED | flag::ABORTED | flag::FAILED) {
                return false;
            }
            let read = self.state.borrow_mut().connection.reader().read(buffer);
            match read {
                Ok(0) => {
                    self.peer_closed();
                    return false;
                }
                Ok(n) => {
                    self.call_inner(|protocol, transport| {
                        protocol.data_received(transport, &buffer[..n])
                    });
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return true,
                Err(error) => {
                    log::debug!("TLS read: {error}");
                    return true;
                }
            }
        }
    }

    fn handshake_done(self: &Rc<Self>) {
        self.raise(flag::HANDSHAKEN);
        let early = {
            let mut state = self.state.borrow_mut();
            *self.session.borrow_mut() = Some(Rc::new(TlsSession::of(&state.connection)));
            state.recorder = None;
            std::mem::take(&mut state.early)
        };
        if !early.is_empty() {
            self.encrypt(&early);
        }
        if let Some(producer) = self.producer.borrow().clone() {
            producer.set_held(Hold::Early, false);
        }
        self.call_inner(|protocol, transport| protocol.handshake_completed(transport));
        if self.has(flag::CLOSING) && !self.has(flag::CLOSE_SENT) {
            self.send_close();
        }
    }

    fn encrypt(&self, data: &[u8]) {
        let written = self.state.borrow_mut().connection.writer().write_all(data);
        if let Err(error) = written {
            log::debug!("TLS write: {error}");
        }
        self.flush_records();
    }

    /// The handshake or a record failed: send the alert rustls queued, close, and
    /// report why (S-04).
    fn fail(self: &Rc<Self>, error: rustls::Error) {
        self.raise(flag::FAILED);
        let presented = {
            let mut state = self.state.borrow_mut();
            state.early = Vec::new();
            let recorded = state
                .recorder
                .as_ref()
                .map(|r| r.take())
                .unwrap_or_default();
            if recorded.is_empty() {
                state
                    .connection
                    .peer_certificates()
                    .map(<[_]>::to_vec)
                    .unwrap_or_default()
            } else {
                recorded
            }
        };
        log::debug!("TLS failure: {error}");
        self.record_reason(CloseReason::Tls(TlsError {
            failure: TlsFailure::from_rustls(&error),
            presented: Rc::from(presented),
        }));
        self.flush_records();
        if let Some(outer) = self.outer() {
            outer.lose_connection();
        }
    }

    /// The peer's close_notify: answer it and close (S-08).
    fn peer_closed(self: &Rc<Self>) {
        self.raise(flag::PEER_CLOSED);
        if !self.has(flag::CLOSE_SENT) {
            self.send_close();
        }
    }

    fn send_close(&self) {
        // Asked before this close_notify starts the outer connection's end.
        if self.outer().is_some_and(|outer| !outer.is_disconnecting()) {
            self.raise(flag::CLOSED_FIRST);
        }
        self.raise(flag::CLOSE_SENT);
        self.state.borrow_mut().connection.send_close_notify();
        self.flush_records();
        if let Some(outer) = self.outer() {
            outer.lose_connection();
        }
    }

    /// The outer connection ended: tell the inner protocol why (S-07..S-10).
    pub(super) fn outer_lost(self: &Rc<Self>, outer_reason: &CloseReason) {
        if self.has(flag::ENDED) {
            return;
        }
        self.raise(flag::ENDED);
        let recorded = self.reason.borrow_mut().take();
        let reason = recorded.unwrap_or_else(|| match outer_reason {
            // S-08: the peer ended the stream with close_notify; that our answer then
            // met a closed socket (a reset, or EPIPE on a UNIX socket) changes nothing.
            CloseReason::Done | CloseReason::Reset(_) | CloseReason::Lost(_)
                if self.has(flag::PEER_CLOSED) =>
            {
                CloseReason::Done
            }
            CloseReason::Done if self.has(flag::CLOSED_FIRST) => CloseReason::Done,
            // S-09: an end of stream without close_notify is a truncation, also when
            // the inner protocol answered the end with a close of its own.
            CloseReason::Done => CloseReason::Lost(Some(Rc::new(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                if self.has(flag::HANDSHAKEN) {
                    "the peer closed the connection without a TLS close_notify (truncated)"
                } else {
                    "the peer closed the connection during the TLS handshake"
                },
            )))),
            other => other.clone(),
        });
        let protocol = self.protocol.borrow_mut().take();
        if let Some(mut protocol) = protocol {
            protocol.connection_lost(&reason);
        }
        if let Some(slot) = &self.lost_slot {
            *slot.borrow_mut() = Some(reason);
        }
        // The outer transport is kept: peer() and host() answer after the end too.
        self.producer.borrow_mut().take();
        let mut state = self.state.borrow_mut();
        state.early = Vec::new();
        state.backlog = Vec::new();
    }

    /// Delivers what was held back while paused, from the loop.
    fn schedule_delivery(&self) {
        if self.has(flag::DELIVERY_SCHEDULED | flag::ENDED) {
            return;
        }
        let (Some(reactor), Some(this)) = (self.reactor.upgrade(), self.this()) else {
            return;
        };
        self.raise(flag::DELIVERY_SCHEDULED);
        reactor.call_soon(Box::new(move || {
            this.lower(flag::DELIVERY_SCHEDULED);
            this.receive(&[]);
        }));
    }
}

impl Transport for TlsTransport {
    /// Encrypts and buffers; before the handshake completes, keeps the plaintext and
    /// sends it once it does (S-01).
    fn write(&self, data: &[u8]) {
        if data.is_empty()
            || self
                .has(flag::ENDED | flag::CLOSING | flag::ABORTED | flag::FAILED | flag::CLOSE_SENT)
        {
            return;
        }
        if self.has(flag::HANDSHAKEN) {
            return self.encrypt(data);
        }
        let held = {
            let mut state = self.state.borrow_mut();
            if state.early.len() + data.len() > WRITE_BUFFER_LIMIT {
                None
            } else {
                state.early.extend_from_slice(data);
                Some(state.early.len())
            }
        };
        match held {
            None => {
                log::warn!("TLS write buffer would exceed {WRITE_BUFFER_LIMIT} bytes; aborting");
                self.record_reason(CloseReason::Lost(Some(Rc::new(io::Error::other(
                    format!(
                        "the peer did not read: write buffer limit of {WRITE_BUFFER_LIMIT} bytes exceeded"
                    ),
                )))));
                self.abort_connection();
            }
            Some(held) if held > HIGH_WATER_MARK => {
                let producer = self.producer.borrow().clone();
                if let Some(producer) = producer {
                    producer.set_held(Hold::Early, true);
                }
            }
            Some(_) => {}
        }
    }

    /// Sends what is buffered, then close_notify, then closes the outer connection
    /// once that is flushed, without waiting for the peer's answering close_notify
    /// (which the peer may send or not; what we sent is complete either way).
    /// Before the handshake, with nothing buffered, aborts instead (S-07).
    fn lose_connection(&self) {
        if self.has(flag::CLOSING | flag::ENDED | flag::ABORTED) {
            return;
        }
        self.raise(flag::CLOSING);
        if self.has(flag::FAILED | flag::CLOSE_SENT) {
            return; // closing already
        }
        if self.has(flag::HANDSHAKEN) {
            return self.send_close();
        }
        // With data buffered, the handshake finishes, the data goes, then close_notify.
        if self.state.borrow().early.is_empty() {
            self.lower(flag::CLOSING);
            self.abort_connection();
        }
    }

    /// No close_notify: drops what is buffered and aborts the outer connection (S-10).
    fn abort_connection(&self) {
        if self.has(flag::ABORTED | flag::ENDED) {
            return;
        }
        self.raise(flag::ABORTED);
        self.state.borrow_mut().early = Vec::new();
        if let Some(outer) = self.outer() {
            outer.abort_connection();
        }
    }

    /// TLS has no half-close (S-14): close_notify ends both directions, so this is
    /// `lose_connection`.
    fn lose_write_connection(&self) {
        self.lose_connection();
    }

    fn is_disconnecting(&self) -> bool {
        self.has(flag::CLOSING | flag::CLOSE_SENT | flag::ABORTED | flag::FAILED | flag::ENDED)
            || self.outer().is_none_or(|outer| outer.is_disconnecting())
    }

    fn peer(&self) -> Address {
        match self.outer() {
            Some(outer) => outer.peer(),
            None => super::unknown_address(),
        }
    }

    fn host(&self) -> Address {
        match self.outer() {
            Some(outer) => outer.host(),
            None => super::unknown_address(),
        }
    }

    fn peer_credentials(&self) -> Option<crate::reactor::protocol::PeerCredentials> {
        self.outer().and_then(|outer| outer.peer_credentials())
    }

    /// Stops reading the outer transport, and holds back what was already decrypted.
    fn pause_producing(&self) {
        self.raise(flag::READ_PAUSED);
        if let Some(outer) = self.outer() {
            outer.pause_producing();
        }
    }

    fn resume_producing(&self) {
        if !self.has(flag::READ_PAUSED) {
            return;
        }
        self.lower(flag::READ_PAUSED);
        self.schedule_delivery();
        if let Some(outer) = self.outer() {
            outer.resume_producing();
        }
    }

    /// The producer is paused when the outer transport's buffer (ciphertext) passes its
    /// high-water mark, or the plaintext held for the handshake does (S-11).
    fn register_producer(&self, producer: Rc<dyn Producer>) {
        let forward = Rc::new(ForwardProducer {
            inner: producer,
            held: Cell::new(0),
        });
        if !self.has(flag::HANDSHAKEN) && self.state.borrow().early.len() > HIGH_WATER_MARK {
            forward.set_held(Hold::Early, true);
        }
        *self.producer.borrow_mut() = Some(forward.clone());
        match self.outer() {
            Some(outer) => outer.register_producer(forward),
            None => forward.stop_producing(),
        }
    }

    fn unregister_producer(&self) {
        let forward = self.producer.borrow_mut().take();
        if let Some(outer) = self.outer() {
            outer.unregister_producer();
        }
        drop(forward);
    }

    fn tls(&self) -> Option<Rc<TlsSession>> {
        self.session.borrow().clone()
    }

    fn is_tls(&self) -> bool {
        true
    }
}

#[derive(Clone, Copy)]
enum Hold {
    /// The outer transport's buffer is over its high-water mark.
    Outer = 1,
    /// The plaintext held for the handshake is.
    Early = 2,
}

/// The inner protocol's producer, as registered on the outer transport: paused while
/// either buffer is over its mark, resumed when neither is.
struct ForwardProducer {
    inner: Rc<dyn Producer>,
    held: Cell<u8>,
}

impl ForwardProducer {
    fn set_held(&self, why: Hold, on: bool) {
        let before = self.held.get();
        let after = if on {
            before | why as u8
        } else {
            before & !(why as u8)
        };
        self.held.set(after);
        if before == 0 && after != 0 {
            self.inner.pause_producing();
        } else if before != 0 && after == 0 {
            self.inner.resume_producing();
        }
    }
}

impl Producer for ForwardProducer {
    fn pause_producing(&self) {
        self.set_held(Hold::Outer, true);
    }

    fn resume_producing(&self) {
        self.set_held(Hold::Outer, false);
    }

    fn stop_producing(&self) {
        self.inner.stop_producing();
    }
}

/// The protocol the outer transport runs: it feeds the layer.
pub(super) struct TlsProtocol {
    pub(super) tls: Rc<TlsTransport>,
}

impl Protocol for TlsProtocol {
    fn connection_made(&mut self, transport: &TransportRef) -> Result<(), Failure> {
        let lower = transport.layer_over(self.tls.clone());
        self.tls.outer_made(lower.as_ref().unwrap_or(transport));
        Ok(())
    }

    fn data_received(&mut self, _: &TransportRef, data: &[u8]) -> Result<(), Failure> {
        self.tls.receive(data);
        Ok(())
    }

    fn connection_lost(&mut self, reason: &CloseReason) {
        self.tls.outer_lost(reason);
    }
}

impl Drop for TlsProtocol {
    /// The outer connection let go of its protocol (also without `connection_lost`,
    /// as when the reactor is dropped): free the inner protocol, which may hold the
    /// layer's transport.
    fn drop(&mut self) {
        let inner = self
            .tls
            .protocol
            .try_borrow_mut()
            .ok()
            .and_then(|mut p| p.take());
        drop(inner);
    }
}
