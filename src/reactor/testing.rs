//! Test doubles for protocols: [`StringTransport`], a [`Transport`] that records what a
//! protocol does instead of touching a socket (Twisted's `StringTransport`), and
//! [`ProtocolDriver`], which plays the reactor's part by calling a protocol's methods in
//! the order the reactor would (P-03, P-04).
//!
//! Nothing here needs a reactor or a clock: a test feeds bytes, then inspects what was
//! written and whether the protocol asked to close, pause or half-close.

use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;

use super::address::Address;
use super::failure::Failure;
use super::protocol::{CloseReason, Producer, Protocol, ProtocolResult, Transport, TransportRef};
use super::tls::TlsSession;

/// A fake transport that records writes and every state change a protocol asks for.
///
/// It models what the protocol can observe, not the socket: `written` is everything the
/// protocol wrote while writing was allowed. As on a real transport, writes after
/// `abort_connection` or `lose_write_connection` are discarded, while writes
/// after `lose_connection` are kept, because a real transport still flushes them.
pub struct StringTransport {
    peer: Address,
    host: Address,
    state: RefCell<State>,
}

#[derive(Default)]
struct State {
    written: Vec<u8>,
    write_calls: usize,
    disconnecting: bool,
    aborted: bool,
    write_closed: bool,
    paused: bool,
    producer: Option<Rc<dyn Producer>>,
    /// What [`Transport::tls`] reports: a connection that speaks TLS.
    tls: Option<Rc<TlsSession>>,
    /// A TLS connection whose handshake has not completed ([`Transport::is_tls`]).
    handshaking: bool,
}

impl StringTransport {
    /// A transport whose `peer()` and `host()` report these addresses (TCP or UNIX).
    pub fn new(peer: impl Into<Address>, host: impl Into<Address>) -> Rc<StringTransport> {
        Rc::new(StringTransport {
            peer: peer.into(),
            host: host.into(),
            state: RefCell::new(State::default()),
        })
    }

    /// A transport with Twisted's test addresses (peer 192.168.1.1:54321, host
    /// 10.0.0.1:12345), for tests that do not care about addresses.
    pub fn with_default_addresses() -> Rc<StringTransport> {
        StringTransport::new(
            SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 168, 1, 1)), 54321),
            SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 12345),
        )
    }

    /// The same transport as the handle protocols receive.
    pub fn transport_ref(self: &Rc<Self>) -> TransportRef {
        self.clone()
    }

    /// Everything recorded so far, in write order.
    pub fn written(&self) -> Vec<u8> {
        self.state.borrow().written.clone()
    }

    /// Everything recorded so far; the record is emptied, so the next call returns only
    /// what was written after this one.
    pub fn take_written(&self) -> Vec<u8> {
        std::mem::take(&mut self.state.borrow_mut().written)
    }

    /// How many `write`/`write_sequence` calls recorded data. A `write_sequence` counts
    /// once, because the reactor's transport buffers it as one write (X-02, L-04).
    pub fn write_calls(&self) -> usize {
        self.state.borrow().write_calls
    }

    /// True once `abort_connection` was called.
    pub fn aborted(&self) -> bool {
        self.state.borrow().aborted
    }

    /// True once `lose_connection` (not `abort_connection`) was the first close asked for.
    pub fn lost_connection(&self) -> bool {
        let state = self.state.borrow();
        state.disconnecting && !state.aborted
    }

    /// True once `lose_write_connection` was called.
    pub fn write_closed(&self) -> bool {
        self.state.borrow().write_closed
    }

    /// True while reading is paused (`pause_producing` without a later
    /// `resume_producing`).
    pub fn paused(&self) -> bool {
        self.state.borrow().paused
    }

    /// The registered producer, if any.
    pub fn producer(&self) -> Option<Rc<dyn Producer>> {
        self.state.borrow().producer.clone()
    }

    /// Clears the closing flags and the record, so one transport can serve a test that
    /// reconnects a protocol (a TLS session set stays).
    pub fn reset(&self) {
        let mut state = self.state.borrow_mut();
        let (tls, handshaking) = (state.tls.take(), state.handshaking);
        *state = State::default();
        (state.tls, state.handshaking) = (tls, handshaking);
    }

    /// Makes the transport a TLS connection whose handshake completed: it speaks TLS
    /// ([`Transport::is_tls`]) and reports a TLS 1.3 session from [`Transport::tls`].
    /// (The protocol is not told: a test calls its `handshake_completed` itself.)
    pub fn complete_handshake(&self) {
        let mut state = self.state.borrow_mut();
        state.tls = Some(Rc::new(TlsSession {
            version: "TLSv1.3".to_string(),
            cipher: "TLS_AES_128_GCM_SHA256".to_string(),
            group: Some("x25519".to_string()),
            alpn: None,
            peer_chain: Vec::new(),
            sni: None,
        }));
        state.handshaking = false;
    }

    /// Makes the transport speak TLS ([`Transport::is_tls`]) with its handshake still
    /// running ([`Transport::tls`] is `None` until [`StringTransport::complete_handshake`]).
    pub fn set_handshaking(&self) {
        self.state.borrow_mut().handshaking = true;
    }

    fn record(&self, chunks: &[&[u8]]) {
        let mut state = self.state.borrow_mut();
        if state.aborted || state.write_closed {
            return;
        }
        let total: usize = chunks.iter().map(|c| c.len()).sum();
        if total == 0 {
            return;
        }
        for chunk in chunks {
            state.written.extend_from_slice(chunk);
        }
        state.write_calls += 1;
    }
}

impl Transport for StringTransport {
    fn write(&self, data: &[u8]) {
        self.record(&[data]);
    }

    fn write_sequence(&self, chunks: &[&[u8]]) {
        self.record(chunks);
    }

    fn tls(&self) -> Option<Rc<TlsSession>> {
        self.state.borrow().tls.clone()
    }

    fn is_tls(&self) -> bool {
        let state = self.state.borrow();
        state.handshaking || state.tls.is_some()
    }

    fn lose_connection(&self) {
        self.state.borrow_mut().disconnecting = true;
    }

    fn abort_connection(&self) {
        let mut state = self.state.borrow_mut();
        state.disconnecting = true;
        state.aborted = true;
    }

    fn lose_write_connection(&self) {
        self.state.borrow_mut().write_closed = true;
    }

    fn is_disconnecting(&self) -> bool {
        self.state.borrow().disconnecting
    }

    fn peer(&self) -> Address {
        self.peer.clone()
    }

    fn host(&self) -> Address {
        self.host.clone()
    }

    fn pause_producing(&self) {
        self.state.borrow_mut().paused = true;
    }

    fn resume_producing(&self) {
        self.state.borrow_mut().paused = false;
    }

    fn register_producer(&self, producer: Rc<dyn Producer>) {
        self.state.borrow_mut().producer = Some(producer);
    }

    fn unregister_producer(&self) {
        // Dropped outside the borrow: a producer's destructor may touch this transport.
        let old = self.state.borrow_mut().producer.take();
        drop(old);
    }
}

/// Drives a protocol over a [`StringTransport`] the way the reactor would: one
/// `connection_made`, data only while the connection is open, and exactly one
/// `connection_lost`, last (P-03, P-04, X-16).
///
/// An `Err` from a callback is returned to the test and, as in the reactor (P-22), the
/// connection is then closed: the transport is told to lose the connection and
/// [`ProtocolDriver::close`] passes that error to `connection_lost`.
pub struct ProtocolDriver<P: Protocol + ?Sized> {
    protocol: Box<P>,
    transport: Rc<StringTransport>,
    transport_ref: TransportRef,
    made: bool,
    lost: bool,
    failure: Option<Failure>,
}

impl<P: Protocol> ProtocolDriver<P> {
    /// A driver for `protocol` over a transport with default addresses. Call
    /// [`ProtocolDriver::connect`] to start the connection.
    pub fn new(protocol: P) -> ProtocolDriver<P> {
        ProtocolDriver::from_box(
            Box::new(protocol),
            StringTransport::with_default_addresses(),
        )
    }
}

impl<P: Protocol + ?Sized> ProtocolDriver<P> {
    /// A driver for an already boxed protocol (such as a factory's `Box<dyn Protocol>`)
    /// over the given transport.
    pub fn from_box(protocol: Box<P>, transport: Rc<StringTransport>) -> ProtocolDriver<P> {
        let transport_ref = transport.transport_ref();
        ProtocolDriver {
            protocol,
            transport,
            transport_ref,
            made: false,
            lost: false,
            failure: None,
        }
    }

    /// Calls `connection_made` (P-03). A second call does nothing.
    pub fn connect(&mut self) -> ProtocolResult {
        if self.made || self.lost {
            return Ok(());
        }
        self.made = true;
        let result = self.protocol.connection_made(&self.transport_ref);
        self.check(result)
    }

    /// Delivers one chunk through `data_received`, connecting first if needed. Like the
    /// reactor, it delivers nothing once the connection is closing or closed: the
    /// chunk is then dropped and `Ok` returned.
    pub fn feed(&mut self, data: &[u8]) -> ProtocolResult {
        if !self.made {
            self.connect()?;
        }
        if self.lost || self.transport.is_disconnecting() || data.is_empty() {
            return Ok(());
        }
        let result = self.protocol.data_received(&self.transport_ref, data);
        self.check(result)
    }

    /// Feeds each chunk in turn, stopping at the first error.
    pub fn feed_chunks<'a>(
        &mut self,
        chunks: impl IntoIterator<Item = &'a [u8]>,
    ) -> ProtocolResult {
        for chunk in chunks {
            self.feed(chunk)?;
        }
        Ok(())
    }

    /// Ends the connection with this reason: `connection_lost` runs once; later calls,
    /// and any other call after it, do nothing (P-04).
    pub fn lose(&mut self, reason: CloseReason) {
        if self.lost {
            return;
        }
        self.lost = true;
        self.protocol.connection_lost(&reason);
    }

    /// Ends the connection with the reason the reactor would give now: the error a
    /// callback returned (P-22), `Aborted` after `abort_connection`, else `Done`.
    pub fn close(&mut self) {
        let reason = match self.failure.take() {
            Some(failure) => CloseReason::Protocol(failure),
            None if self.transport.aborted() => CloseReason::Aborted,
            None => CloseReason::Done,
        };
        self.lose(reason);
    }

    /// True once `connection_lost` has run.
    pub fn is_lost(&self) -> bool {
        self.lost
    }

    /// The protocol, for inspecting its state.
    pub fn protocol(&self) -> &P {
        &self.protocol
    }

    /// The protocol, for calling it directly (bypassing the driver's rules).
    pub fn protocol_mut(&mut self) -> &mut P {
        &mut self.protocol
    }

    /// The fake transport the protocol writes to.
    pub fn transport(&self) -> &Rc<StringTransport> {
        &self.transport
    }

    /// The transport as the protocol sees it.
    pub fn transport_ref(&self) -> &TransportRef {
        &self.transport_ref
    }

    fn check(&mut self, result: ProtocolResult) -> ProtocolResult {
        if let Err(failure) = &result {
            if self.failure.is_none() {
                self.failure = Some(failure.clone());
            }
            self.transport.lose_connection();
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn x03_writes_after_lose_write_connection_are_discarded() {
        let t = StringTransport::with_default_addresses();
        t.write(b"one");
        t.lose_write_connection();
        t.write(b"two");
        assert_eq!(t.written(), b"one");
        assert!(t.write_closed());
        assert!(!t.is_disconnecting());
    }

    #[test]
    fn x05_writes_after_lose_connection_are_kept() {
        let t = StringTransport::with_default_addresses();
        t.write(b"one");
        t.lose_connection();
        t.write(b"two");
        assert_eq!(t.written(), b"onetwo");
        assert!(t.lost_connection());
        assert!(!t.aborted());
    }

    #[test]
    fn x07_disconnecting_is_true_at_once_and_repeat_calls_are_harmless() {
        let t = StringTransport::with_default_addresses();
        assert!(!t.is_disconnecting());
        t.lose_connection();
        assert!(t.is_disconnecting());
        t.lose_connection();
        assert!(t.is_disconnecting());
    }

    #[test]
    fn x09_writes_after_abort_are_discarded_and_abort_twice_is_harmless() {
        let t = StringTransport::with_default_addresses();
        t.write(b"before");
        t.abort_connection();
        t.abort_connection();
        t.lose_connection();
        t.write(b"after");
        assert_eq!(t.written(), b"before");
        assert!(t.aborted());
        assert!(t.is_disconnecting());
        assert!(!t.lost_connection());
    }

    #[test]
    fn x02_write_sequence_is_one_write_and_empty_writes_are_nothing() {
        let t = StringTransport::with_default_addresses();
        t.write(b"");
        t.write_sequence(&[b"ab", b"cd"]);
        assert_eq!(t.write_calls(), 1);
        assert_eq!(t.take_written(), b"abcd");
        assert!(t.written().is_empty());
        t.write(b"e");
        assert_eq!(t.written(), b"e");
        assert_eq!(t.write_calls(), 2);
    }

    #[test]
    fn x15_peer_and_host_are_reported() {
        let peer: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let host: SocketAddr = "[::1]:5000".parse().unwrap();
        let t = StringTransport::new(peer, host);
        assert_eq!(t.peer(), Address::Tcp(peer));
        assert_eq!(t.host(), Address::Tcp(host));
    }

    struct CountingProducer(Cell<u32>);
    impl Producer for CountingProducer {
        fn pause_producing(&self) {
            self.0.set(self.0.get() + 1);
        }
        fn resume_producing(&self) {}
        fn stop_producing(&self) {}
    }

    #[test]
    fn x18_x19_pause_state_and_producer_registration_are_recorded() {
        let t = StringTransport::with_default_addresses();
        t.pause_producing();
        assert!(t.paused());
        t.resume_producing();
        assert!(!t.paused());
        let producer = Rc::new(CountingProducer(Cell::new(0)));
        t.register_producer(producer.clone());
        let registered = t.producer().unwrap();
        registered.pause_producing();
        assert_eq!(producer.0.get(), 1);
        t.unregister_producer();
        assert!(t.producer().is_none());
        t.reset();
        assert!(!t.paused() && !t.is_disconnecting() && t.written().is_empty());
    }

    /// Records its callbacks; echoes data; fails on "boom".
    #[derive(Default)]
    struct Echo {
        events: Vec<String>,
    }
    impl Protocol for Echo {
        fn connection_made(&mut self, _t: &TransportRef) -> ProtocolResult {
            self.events.push("made".into());
            Ok(())
        }
        fn data_received(&mut self, t: &TransportRef, data: &[u8]) -> ProtocolResult {
            if data == b"boom" {
                return Err(Failure::msg("boom"));
            }
            self.events
                .push(format!("data {}", String::from_utf8_lossy(data)));
            t.write(data);
            if data == b"bye" {
                t.lose_connection();
            }
            Ok(())
        }
        fn connection_lost(&mut self, reason: &CloseReason) {
            self.events.push(format!("lost {reason}"));
        }
    }

    #[test]
    fn p04_driver_calls_made_first_data_then_lost_once_and_nothing_after_close() {
        let mut d = ProtocolDriver::new(Echo::default());
        d.feed(b"hi").unwrap();
        d.feed(b"bye").unwrap();
        d.feed(b"ignored").unwrap();
        d.close();
        d.close();
        d.feed(b"late").unwrap();
        assert_eq!(
            d.protocol().events,
            [
                "made",
                "data hi",
                "data bye",
                "lost connection closed cleanly"
            ]
        );
        assert_eq!(d.transport().written(), b"hibye");
        assert!(d.is_lost());
    }

    #[test]
    fn p22_driver_closes_with_the_callback_error_as_reason() {
        let mut d: ProtocolDriver<dyn Protocol> = ProtocolDriver::from_box(
            Box::new(Echo::default()),
            StringTransport::with_default_addresses(),
        );
        d.connect().unwrap();
        let err = d.feed(b"boom").unwrap_err();
        assert_eq!(err.error_message(), "boom");
        assert!(d.transport().is_disconnecting());
        d.close();
        assert!(d.is_lost());
    }

    #[test]
    fn x08_driver_reports_aborted_after_abort() {
        let mut d = ProtocolDriver::new(Echo::default());
        d.connect().unwrap();
        d.transport().abort_connection();
        d.close();
        assert_eq!(
            d.protocol().events.last().unwrap(),
            "lost connection aborted"
        );
    }
}
