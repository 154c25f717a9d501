//! One stream connection, TCP or UNIX: the transport its protocol writes to, and the
//! I/O handler that reads its socket, flushes its writes, and ends it. Everything here
//! is the same system call on either kind of socket; where they differ (addresses,
//! peer credentials) the socket's own answer is used.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::io::{self, IoSlice, Read};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::rc::{Rc, Weak};
use std::time::Duration;

use mio::Interest;
use mio::unix::SourceFd;
use socket2::Socket;

use super::connect::Connector;
use super::listen::PortInner;
use super::{CompactAddr, HIGH_WATER_MARK, WRITE_BUFFER_LIMIT, reading_interest};
use crate::reactor::address::Address;
use crate::reactor::failure::Failure;
use crate::reactor::io::{Connection, Handler, IoKey, Readiness};
use crate::reactor::protocol::{
    CloseReason, PeerCredentials, Producer, Protocol, Transport, TransportRef,
};
use crate::reactor::tls::{self, StartTls, StartTlsError, TlsSession, TlsTransport};
use crate::reactor::{Reactor, WeakReactor};

/// Bytes read per `read` call.
const READ_CHUNK: usize = 64 * 1024;

/// Bytes sent per flush before yielding to other connections (X-04, Twisted's
/// SEND_LIMIT); the rest is sent in the next iteration.
const SEND_LIMIT: usize = 128 * 1024;

/// Reads per readiness event before yielding to other connections; the rest is read
/// in the next iteration.
const READS_PER_EVENT: usize = 16;

// ---------------------------------------------------------------------------------------
// The transport

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteSide {
    Open,
    /// `lose_write_connection` was called; shut down once the buffer is flushed.
    ShutdownRequested,
    Closed,
}

/// A connection's yes/no states, as bits of one word: every connection carries them all.
mod flag {
    /// A flush is queued for the next iteration (one per batch of writes, X-04).
    pub(super) const FLUSH_SCHEDULED: u16 = 1 << 0;
    /// The socket is registered for writability: a flush could not send everything.
    pub(super) const WRITE_INTEREST: u16 = 1 << 1;
    /// The connection is closing: `lose_connection` or `abort_connection` was called,
    /// or the peer's EOF ends it.
    pub(super) const DISCONNECTING: u16 = 1 << 2;
    /// `abort_connection` was called.
    pub(super) const ABORTED: u16 = 1 << 3;
    /// `pause_producing` stopped reading.
    pub(super) const READ_PAUSED: u16 = 1 << 4;
    /// The peer shut down its write side.
    pub(super) const READ_EOF: u16 = 1 << 5;
    /// The socket is closed; the protocol has been or is being told.
    pub(super) const CLOSED: u16 = 1 << 6;
    /// The registered producer was told to pause.
    pub(super) const PRODUCER_PAUSED: u16 = 1 << 7;
    /// A layer (TLS, S-12) runs under the protocol: the protocol's calls on this
    /// transport go to the layer, which reaches the socket through a [`Lower`](super::Lower).
    pub(super) const LAYERED: u16 = 1 << 8;
    /// The layer's protocol waits to take the protocol's place once its callback returns.
    pub(super) const LAYER_PENDING: u16 = 1 << 9;
    /// The socket holds its registry key but is not in the poll yet: it is added once
    /// `connection_made` and a flush it asked for have run (see `poll_after_start`).
    pub(super) const UNPOLLED: u16 = 1 << 10;
}

/// What only a connection that writes, has a producer, or has a close reason recorded
/// needs, and a closed one's local address. Allocated on the first such need and freed
/// once none is left (the write buffer drained, no producer, no reason), so an idle
/// connection carries one pointer for all of it: idle connections are the many, and
/// most of them never write at all.
#[derive(Default)]
struct Busy {
    /// The unsent bytes, a ring: sending takes from the front and writing adds at the
    /// back, so no byte moves within the buffer. Empty until a write: the reactor's
    /// spare buffers hand one out then, and take it back once it drains.
    out: VecDeque<u8>,
    /// Empty unless a shared buffer (`write_shared`) is waiting: then the order of the
    /// ring's bytes and the shared buffers, front first.
    queue: VecDeque<Chunk>,
    /// Unsent bytes of the shared buffers in `queue`.
    shared: usize,
    producer: Option<Rc<dyn Producer>>,
    /// The reason to report when the close completes, if not the natural one.
    reason: Option<CloseReason>,
    /// After the close, the local address the socket had (see `Transport::host`).
    host: Option<CompactAddr>,
    /// The layer over the socket (TLS after `start_tls`), which the protocol's calls on
    /// this transport go to.
    upper: Option<Rc<TlsTransport>>,
    /// The layer's protocol, until it takes the protocol's place.
    layer_protocol: Option<Box<dyn Protocol>>,
}

/// A stretch of the write queue: bytes of the ring, or a shared buffer and how much of
/// it was sent.
enum Chunk {
    Ring(usize),
    Shared(Rc<[u8]>, usize),
}

impl Busy {
    fn pending(&self) -> usize {
        self.out.len() + self.shared
    }

    /// Adds `data` to the ring, after everything queued.
    fn append(&mut self, data: &[u8]) {
        self.out.extend(data);
        if self.queue.is_empty() {
            return;
        }
        match self.queue.back_mut() {
            Some(Chunk::Ring(len)) => *len += data.len(),
            _ => self.queue.push_back(Chunk::Ring(data.len())),
        }
    }

    /// Queues `data` itself, after everything queued.
    fn append_shared(&mut self, data: &Rc<[u8]>) {
        if self.queue.is_empty() && !self.out.is_empty() {
            self.queue.push_back(Chunk::Ring(self.out.len()));
        }
        self.shared += data.len();
        self.queue.push_back(Chunk::Shared(data.clone(), 0));
    }

    /// Drops the first `n` pending bytes, which were sent.
    fn consume(&mut self, mut n: usize) {
        if self.queue.is_empty() {
            self.out.drain(..n);
            return;
        }
        while n > 0 {
            let done = match self.queue.front_mut() {
                Some(Chunk::Ring(len)) => {
                    let m = n.min(*len);
                    self.out.drain(..m);
                    *len -= m;
                    n -= m;
                    *len == 0
                }
                Some(Chunk::Shared(data, sent)) => {
                    let m = n.min(data.len() - *sent);
                    *sent += m;
                    self.shared -= m;
                    n -= m;
                    *sent == data.len()
                }
                None => return,
            };
            if done {
                self.queue.pop_front();
            }
        }
        if matches!(self.queue.front(), Some(Chunk::Ring(_))) && self.queue.len() == 1 {
            self.queue.clear(); // only ring bytes are left: the ring alone says it
        }
    }

    /// Forgets everything unsent; returns the ring's memory.
    fn clear(&mut self) -> Vec<u8> {
        self.queue.clear();
        self.shared = 0;
        Vec::from(std::mem::take(&mut self.out))
    }

    /// True when the connection would not miss this state if it were freed.
    fn is_spent(&self) -> bool {
        self.out.capacity() == 0
            && self.queue.is_empty()
            && self.producer.is_none()
            && self.reason.is_none()
            && self.host.is_none()
            && self.upper.is_none()
            && self.layer_protocol.is_none()
    }
}

/// One pass of [`StreamTransport::flush`] over the write buffer.
enum FlushStep {
    /// Nothing (left) to send.
    Empty,
    /// The per-call budget is spent with bytes left.
    BudgetSpent,
    /// The socket is closed.
    NoSocket,
    /// One `write` call's result.
    Wrote(io::Result<usize>),
}

/// One TCP connection: the transport its protocol receives (as its [`TransportRef`]),
/// and the I/O handler that reads the socket, flushes writes, and calls the protocol.
///
/// One allocation per connection, kept small because idle connections are counted in
/// the thousands: the handler and the transport are the same object, yes/no states are
/// bits, the local address is asked of the socket, and the state of writing (buffer,
/// producer) is allocated only while it is used. See BENCHMARKS.md, "idle".
pub struct StreamTransport {
    reactor: WeakReactor,
    /// `None` once closed. A `Cell`, not a `RefCell`: only [`StreamTransport::with_stream`]
    /// takes it out, for one system call, so no borrow flag is needed.
    stream: Cell<Option<Socket>>,
    /// The registry key while registered, [`IoKey::NONE`] before and after.
    key: Cell<IoKey>,
    /// Bits of [`flag`].
    flags: Cell<u16>,
    write_side: Cell<WriteSide>,
    /// The peer's address, kept: `peer()` must answer after the close too. The local
    /// address is not kept; see `host()`.
    peer: CompactAddr,
    /// A `Cell`, not a `RefCell`: only [`StreamTransport::with_busy`] takes it out, and
    /// calls no user code meanwhile.
    busy: Cell<Option<Box<Busy>>>,
    /// `None` before the connection starts (if it never does) and after
    /// `connection_lost`.
    protocol: RefCell<Option<Box<dyn Protocol>>>,
    /// Who to tell after the protocol's `connection_lost`.
    lost_notice: Cell<Option<LostNotice>>,
}

// The size the idle benchmark's figure rests on (BENCHMARKS.md, "idle"): a field added
// to every connection shows up there. Release builds only: in debug builds mio's
// sockets carry a selector id.
#[cfg(all(target_pointer_width = "64", not(debug_assertions)))]
const _: () = assert!(std::mem::size_of::<StreamTransport>() == 88);

impl fmt::Debug for StreamTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamTransport")
            .field("peer", &self.peer.get())
            .field("host", &self.own_host())
            .finish()
    }
}

impl StreamTransport {
    /// Bytes written but not yet sent.
    pub fn buffered(&self) -> usize {
        self.with_busy_if_any(|busy| busy.pending()).unwrap_or(0)
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

    /// Runs `f` on the write state, allocated first if the connection has none yet;
    /// frees it afterwards if nothing in it is needed any more. `f` must not call user
    /// code: the state is out of its cell meanwhile.
    fn with_busy<R>(&self, f: impl FnOnce(&mut Busy) -> R) -> R {
        let mut busy = self.busy.take().unwrap_or_default();
        let result = f(&mut busy);
        self.put_busy(busy);
        result
    }

    /// [`StreamTransport::with_busy`], but only if the connection has write state.
    fn with_busy_if_any<R>(&self, f: impl FnOnce(&mut Busy) -> R) -> Option<R> {
        let mut busy = self.busy.take()?;
        let result = f(&mut busy);
        self.put_busy(busy);
        Some(result)
    }

    fn put_busy(&self, busy: Box<Busy>) {
        if busy.is_spent() {
            return; // freed: an idle connection keeps no write state
        }
        let nested = self.busy.replace(Some(busy));
        debug_assert!(nested.is_none(), "write state replaced while in use");
    }

    /// Runs `f` on the socket, unless it is closed. `f` must not call user code (the
    /// socket is out of its cell meanwhile); it makes one system call.
    fn with_stream<R>(&self, f: impl FnOnce(&mut Socket) -> R) -> Option<R> {
        let mut stream = self.stream.take()?;
        let result = f(&mut stream);
        self.stream.set(Some(stream));
        Some(result)
    }

    /// Arranges a flush at the start of the next iteration, once per batch of writes
    /// and closes (one bounded pass per iteration, X-04).
    fn schedule_flush(&self) {
        if self.has(flag::FLUSH_SCHEDULED | flag::CLOSED) {
            return;
        }
        self.raise(flag::FLUSH_SCHEDULED);
        self.schedule(|this| {
            this.lower(flag::FLUSH_SCHEDULED);
            this.flush();
            if this.has(flag::UNPOLLED) {
                // Written to from `connection_made`: polled now, unless that flush
                // finished the connection (see `poll_after_start`).
                this.poll_after_start();
            }
        });
    }

    /// Hands an emptied write buffer's memory to the reactor's spares.
    fn release_buffer(&self, buffer: Vec<u8>) {
        if buffer.capacity() > 0
            && let Some(reactor) = self.reactor.upgrade()
        {
            reactor.give_buffer(buffer);
        }
    }

    /// Runs `f` on the connection from the loop, later; not at all once the connection
    /// is closed (nothing scheduled has anything left to do then).
    fn schedule(&self, f: impl FnOnce(&Rc<StreamTransport>) + 'static) {
        let Some(reactor) = self.reactor.upgrade() else {
            return;
        };
        if let Some(this) = self.this(&reactor) {
            reactor.call_soon(Box::new(move || f(&this)));
        }
    }

    /// This connection's own `Rc`, found through its registry slot, while it is
    /// registered. Every connection is registered from `start` until `close`, which is
    /// the whole time its protocol can call it, so no pointer to itself is needed.
    fn this(&self, reactor: &Reactor) -> Option<Rc<StreamTransport>> {
        let this = reactor.connection(self.key.get())?;
        std::ptr::eq(Rc::as_ptr(&this), self).then_some(this)
    }

    fn set_interest(&self, readable: bool, writable: bool) {
        let Some(reactor) = self.reactor.upgrade() else {
            return;
        };
        let key = self.key.get();
        if key == IoKey::NONE {
            return;
        }
        let interest = match (readable, writable) {
            (_, false) => reading_interest(),
            (false, true) => Interest::WRITABLE,
            (true, true) => reading_interest() | Interest::WRITABLE,
        };
        if let Some(Err(error)) = self.try_set_interest(&reactor, key, interest) {
            log::debug!("could not change interest of {}: {error}", self.peer.get());
        }
    }

    /// Changes the poll's interest in the socket, or adds the socket to the poll if it
    /// is not in it yet (see `poll_after_start`). `None` without a socket.
    fn try_set_interest(
        &self,
        reactor: &Reactor,
        key: IoKey,
        interest: Interest,
    ) -> Option<io::Result<()>> {
        let unpolled = self.has(flag::UNPOLLED);
        let result = self.with_stream(|stream| {
            let mut fd = SourceFd(&stream.as_raw_fd());
            if unpolled {
                reactor.poll_io_under(&mut fd, key, interest)
            } else {
                reactor.reregister_io(&mut fd, key, interest)
            }
        });
        if unpolled && matches!(result, Some(Ok(()))) {
            self.lower(flag::UNPOLLED);
        }
        result
    }
}

/// The transport's own behaviour, on its socket; the `Transport` methods come here
/// unless a layer runs over the socket.
impl StreamTransport {
    fn own_write(&self, data: &[u8]) {
        self.own_buffer(data.len(), |busy| {
            if busy.out.capacity() == 0
                && let Some(reactor) = self.reactor.upgrade()
            {
                busy.out = VecDeque::from(reactor.take_buffer());
            }
            busy.append(data);
        });
    }

    fn own_write_shared(&self, data: &Rc<[u8]>) {
        self.own_buffer(data.len(), |busy| busy.append_shared(data));
    }

    /// Buffers `len` bytes with `append`, unless the connection is closing or the
    /// buffer would pass its limit; pauses the producer past the high-water mark
    /// and schedules a flush.
    fn own_buffer(&self, len: usize, append: impl FnOnce(&mut Busy)) {
        if len == 0 {
            return;
        }
        if self.has(flag::CLOSED | flag::ABORTED) || self.write_side.get() != WriteSide::Open {
            return;
        }
        // `None`: over the limit, with the reason recorded.
        let buffered = self.with_busy(|busy| {
            if busy.pending() + len > WRITE_BUFFER_LIMIT {
                // An earlier cause, a protocol error waiting for its flush, stays first.
                if busy.reason.is_none() {
                    busy.reason = Some(CloseReason::Lost(Some(Rc::new(io::Error::other(
                        format!(
                            "the peer did not read: write buffer limit of {WRITE_BUFFER_LIMIT} bytes exceeded"
                        ),
                    )))));
                }
                return None;
            }
            append(busy);
            Some(
                if busy.pending() > HIGH_WATER_MARK && !self.has(flag::PRODUCER_PAUSED) {
                    if busy.producer.is_some() {
                        self.raise(flag::PRODUCER_PAUSED);
                    }
                    busy.producer.clone()
                } else {
                    None
                },
            )
        });
        let Some(producer_to_pause) = buffered else {
            log::warn!(
                "write buffer to {} would exceed {WRITE_BUFFER_LIMIT} bytes; aborting",
                self.peer.get()
            );
            self.own_abort_connection();
            return;
        };
        // Called with the write state back in place: the producer may write again.
        if let Some(producer) = producer_to_pause {
            producer.pause_producing();
        }
        self.schedule_flush();
    }

    fn own_write_sequence(&self, chunks: &[&[u8]]) {
        for chunk in chunks {
            self.own_write(chunk);
        }
    }

    fn own_lose_connection(&self) {
        if self.has(flag::DISCONNECTING | flag::CLOSED) {
            return;
        }
        self.raise(flag::DISCONNECTING);
        // The flush closes the connection once the buffer is empty.
        self.schedule_flush();
    }

    fn own_abort_connection(&self) {
        if self.has(flag::ABORTED | flag::CLOSED) {
            return;
        }
        self.raise(flag::ABORTED | flag::DISCONNECTING);
        let buffer = self.with_busy_if_any(Busy::clear);
        if let Some(buffer) = buffer {
            self.release_buffer(buffer);
        }
        // Linger 0 makes the close send a reset.
        if let Some(Err(error)) = self.with_stream(|stream| stream.set_linger(Some(Duration::ZERO)))
        {
            log::debug!("could not set SO_LINGER on {}: {error}", self.peer.get());
        }
        // The reason is Aborted, or the write cap's error recorded before (see close).
        self.schedule(|this| this.close(CloseReason::Aborted));
    }

    fn own_lose_write_connection(&self) {
        if self.has(flag::CLOSED) || self.write_side.get() != WriteSide::Open {
            return;
        }
        self.write_side.set(WriteSide::ShutdownRequested);
        self.schedule_flush();
    }

    fn own_is_disconnecting(&self) -> bool {
        self.has(flag::DISCONNECTING | flag::CLOSED)
    }

    fn own_peer(&self) -> Address {
        self.peer.get()
    }

    /// Asked of the socket while it is open, and answered from the address read just
    /// before it closed afterwards: keeping it in every connection would cost 16 bytes
    /// each, and few protocols ask. The peer's address stands in if the system cannot
    /// tell (as when the transport was made).
    fn own_host(&self) -> Address {
        let open = self
            .with_stream(|stream| stream.local_addr().ok())
            .flatten()
            .map(|address| Address::from_sockaddr(&address));
        open.or_else(|| {
            self.with_busy_if_any(|busy| busy.host.as_ref().map(CompactAddr::get))
                .flatten()
        })
        .unwrap_or_else(|| self.own_peer())
    }

    fn own_peer_credentials(&self) -> Option<PeerCredentials> {
        if !matches!(self.peer, CompactAddr::Unix(_) | CompactAddr::UnixUnnamed) {
            return None;
        }
        self.with_stream(|stream| peer_credentials(stream))
            .flatten()
    }

    fn own_pause_producing(&self) {
        self.raise(flag::READ_PAUSED);
    }

    fn own_resume_producing(&self) {
        if !self.has(flag::READ_PAUSED) {
            return;
        }
        self.lower(flag::READ_PAUSED);
        // Edge-triggered: bytes that arrived while paused raise no new event, so look now.
        self.schedule(|this| this.read_ready(AfterShortRead::ReadAgain));
    }

    fn own_register_producer(&self, producer: Rc<dyn Producer>) {
        if self.has(flag::CLOSED) {
            // Nothing will ever drain or stop it: stop it now (as Twisted does).
            producer.stop_producing();
            return;
        }
        let pause_now = self.with_busy(|busy| {
            busy.producer = Some(producer.clone());
            let pause = busy.pending() > HIGH_WATER_MARK;
            if pause {
                self.raise(flag::PRODUCER_PAUSED);
            } else {
                self.lower(flag::PRODUCER_PAUSED);
            }
            pause
        });
        if pause_now {
            producer.pause_producing();
        }
    }

    fn own_unregister_producer(&self) {
        let producer = self.with_busy_if_any(|busy| {
            self.lower(flag::PRODUCER_PAUSED);
            busy.producer.take()
        });
        // Dropped with the write state back in place: it may be the last handle on
        // user code.
        drop(producer);
    }
}

impl StreamTransport {
    /// The layer the protocol's calls go to, if one runs over the socket.
    // Inline: asked on every call the protocol makes, and a line receiver asks once per
    // line whether the connection is closing; without a layer it is one flag test.
    #[inline]
    fn upper(&self) -> Option<Rc<TlsTransport>> {
        if !self.has(flag::LAYERED) {
            return None;
        }
        self.layer()
    }

    fn layer(&self) -> Option<Rc<TlsTransport>> {
        self.with_busy_if_any(|busy| busy.upper.clone()).flatten()
    }

    /// Puts the waiting layer's protocol in the protocol's place, the protocol under it
    /// (S-12); called with the protocol slot free.
    fn install_layer(&self) {
        self.lower(flag::LAYER_PENDING);
        let Some((Some(layer), Some(protocol))) =
            self.with_busy_if_any(|busy| (busy.upper.clone(), busy.layer_protocol.take()))
        else {
            return;
        };
        let Ok(mut slot) = self.protocol.try_borrow_mut() else {
            return;
        };
        if let Some(old) = slot.take() {
            tls::adopt_protocol(&layer, old);
        }
        *slot = Some(protocol);
    }
}

/// The protocol's handle: its calls go to the layer over the socket when there is one
/// (after `start_tls`), to the socket otherwise.
impl Transport for StreamTransport {
    fn write(&self, data: &[u8]) {
        match self.upper() {
            Some(upper) => upper.write(data),
            None => self.own_write(data),
        }
    }

    fn write_shared(&self, data: &Rc<[u8]>) {
        match self.upper() {
            Some(upper) => upper.write_shared(data),
            None => self.own_write_shared(data),
        }
    }

    fn write_sequence(&self, chunks: &[&[u8]]) {
        match self.upper() {
            Some(upper) => upper.write_sequence(chunks),
            None => self.own_write_sequence(chunks),
        }
    }

    fn lose_connection(&self) {
        match self.upper() {
            Some(upper) => upper.lose_connection(),
            None => self.own_lose_connection(),
        }
    }

    fn abort_connection(&self) {
        match self.upper() {
            Some(upper) => upper.abort_connection(),
            None => self.own_abort_connection(),
        }
    }

    fn lose_write_connection(&self) {
        match self.upper() {
            Some(upper) => upper.lose_write_connection(),
            None => self.own_lose_write_connection(),
        }
    }

    fn is_disconnecting(&self) -> bool {
        match self.upper() {
            Some(upper) => upper.is_disconnecting(),
            None => self.own_is_disconnecting(),
        }
    }

    fn peer(&self) -> Address {
        self.own_peer()
    }

    fn host(&self) -> Address {
        self.own_host()
    }

    fn peer_credentials(&self) -> Option<PeerCredentials> {
        self.own_peer_credentials()
    }

    fn pause_producing(&self) {
        match self.upper() {
            Some(upper) => upper.pause_producing(),
            None => self.own_pause_producing(),
        }
    }

    fn resume_producing(&self) {
        match self.upper() {
            Some(upper) => upper.resume_producing(),
            None => self.own_resume_producing(),
        }
    }

    fn register_producer(&self, producer: Rc<dyn Producer>) {
        match self.upper() {
            Some(upper) => upper.register_producer(producer),
            None => self.own_register_producer(producer),
        }
    }

    fn unregister_producer(&self) {
        match self.upper() {
            Some(upper) => upper.unregister_producer(),
            None => self.own_unregister_producer(),
        }
    }

    fn tls(&self) -> Option<Rc<TlsSession>> {
        self.upper().and_then(|upper| upper.tls())
    }

    /// Puts a TLS layer between the socket and the protocol (S-12). Inside one of the
    /// protocol's callbacks, the layer takes the protocol once the callback returns;
    /// from then on (and for writes at once) the protocol's calls on this transport go
    /// through the layer.
    fn start_tls(&self, start: StartTls) -> Result<(), StartTlsError> {
        if self.has(flag::LAYERED) {
            return Err(StartTlsError::Unsupported);
        }
        if self.has(flag::CLOSED | flag::DISCONNECTING) || self.write_side.get() != WriteSide::Open
        {
            return Err(StartTlsError::NotConnected);
        }
        let reactor = self.reactor.upgrade().ok_or(StartTlsError::NotConnected)?;
        let this = self.this(&reactor).ok_or(StartTlsError::NotConnected)?;
        let lower: TransportRef = Rc::new(Lower(Rc::downgrade(&this)));
        let (layer, protocol) = tls::start_layer(&reactor, lower, start)?;
        self.with_busy(|busy| {
            busy.upper = Some(layer);
            busy.layer_protocol = Some(protocol);
        });
        self.raise(flag::LAYERED | flag::LAYER_PENDING);
        if self.protocol.try_borrow_mut().is_ok() {
            self.install_layer();
        }
        Ok(())
    }

    /// A TLS connection from the start: its layer is this transport's protocol, and
    /// whoever else holds this transport (an endpoint's caller) reaches the layer too.
    fn layer_over(&self, layer: Rc<TlsTransport>) -> Option<TransportRef> {
        if self.has(flag::LAYERED | flag::CLOSED) {
            return None;
        }
        let reactor = self.reactor.upgrade()?;
        let this = self.this(&reactor)?;
        self.with_busy(|busy| busy.upper = Some(layer));
        self.raise(flag::LAYERED);
        Some(Rc::new(Lower(Rc::downgrade(&this))))
    }
}

/// The socket side of a layered connection: the handle the layer over the socket (TLS
/// after `start_tls`) writes to and closes, bypassing the layer. Weak: the connection
/// owns the layer.
struct Lower(Weak<StreamTransport>);

impl Lower {
    fn with<R>(&self, f: impl FnOnce(&StreamTransport) -> R) -> Option<R> {
        self.0.upgrade().map(|connection| f(&connection))
    }
}

impl Transport for Lower {
    fn write(&self, data: &[u8]) {
        self.with(|c| c.own_write(data));
    }

    fn lose_connection(&self) {
        self.with(StreamTransport::own_lose_connection);
    }

    fn abort_connection(&self) {
        self.with(StreamTransport::own_abort_connection);
    }

    fn lose_write_connection(&self) {
        self.with(StreamTransport::own_lose_write_connection);
    }

    fn is_disconnecting(&self) -> bool {
        self.with(StreamTransport::own_is_disconnecting)
            .unwrap_or(true)
    }

    fn peer(&self) -> Address {
        self.with(StreamTransport::own_peer)
            .unwrap_or_else(tls::unknown_address)
    }

    fn host(&self) -> Address {
        self.with(StreamTransport::own_host)
            .unwrap_or_else(tls::unknown_address)
    }

    fn peer_credentials(&self) -> Option<PeerCredentials> {
        self.with(StreamTransport::own_peer_credentials).flatten()
    }

    fn pause_producing(&self) {
        self.with(StreamTransport::own_pause_producing);
    }

    fn resume_producing(&self) {
        self.with(StreamTransport::own_resume_producing);
    }

    fn register_producer(&self, producer: Rc<dyn Producer>) {
        self.with(|c| c.own_register_producer(producer));
    }

    fn unregister_producer(&self) {
        self.with(StreamTransport::own_unregister_producer);
    }
}

// ---------------------------------------------------------------------------------------
// The connection: socket events, the protocol, and the end of the connection

/// Who hears of a connection's end after its protocol: a client connection's connector
/// (P-14), or the port that accepted a server connection (its socket is free again).
/// An enum rather than a boxed closure: every connection carries one.
pub(super) enum LostNotice {
    Connector(Connector),
    Port(Weak<PortInner>),
}

impl LostNotice {
    fn send(self, reason: &CloseReason) {
        match self {
            LostNotice::Connector(connector) => connector.lost(reason),
            LostNotice::Port(port) => {
                if let Some(port) = port.upgrade() {
                    port.connection_closed();
                }
            }
        }
    }
}

/// Where a starting connection's socket stands with the reactor's registry.
pub(super) enum Registration {
    /// Not registered: an accepted socket.
    New,
    /// In the poll under this key: a connector's socket that waited to turn writable.
    Polled(IoKey),
    /// Holding this key, but not in the poll: a connector's socket that connected at once.
    Tracked(IoKey),
}

impl StreamTransport {
    /// Wraps an accepted or connected stream. The caller registers it and starts it.
    pub(super) fn new(
        reactor: &Reactor,
        stream: Socket,
        peer: Address,
        protocol: Box<dyn Protocol>,
    ) -> Rc<StreamTransport> {
        Rc::new(StreamTransport {
            reactor: reactor.downgrade(),
            stream: Cell::new(Some(stream)),
            key: Cell::new(IoKey::NONE),
            flags: Cell::new(0),
            write_side: Cell::new(WriteSide::Open),
            peer: CompactAddr::new(peer),
            busy: Cell::new(None),
            protocol: RefCell::new(Some(protocol)),
            lost_notice: Cell::new(None),
        })
    }

    /// Drops the protocol without telling it anything, for a reactor that is dropped
    /// with the connection still open (see `IoRegistry`'s `Drop`).
    fn release_protocol(&self) {
        let protocol = match self.protocol.try_borrow_mut() {
            Ok(mut slot) => slot.take(),
            Err(_) => None,
        };
        // Dropped with no borrow held: its `Drop` may call the transport.
        drop(protocol);
    }

    /// Runs `f` on the protocol, unless the connection has ended. Errors close the
    /// connection with the error as reason (P-22).
    fn with_protocol(
        self: &Rc<Self>,
        f: impl FnOnce(&mut dyn Protocol, &TransportRef) -> Result<(), Failure>,
    ) {
        let result = {
            let Ok(mut slot) = self.protocol.try_borrow_mut() else {
                crate::reactor::swallowed_call(format_args!(
                    "protocol of {} re-entered; event dropped",
                    self.peer.get()
                ));
                return;
            };
            let Some(protocol) = slot.as_mut() else {
                return;
            };
            // The protocol's handle on its transport, made for the call: keeping it
            // (an unsized `Rc`) in every connection would cost 16 bytes each.
            let transport: TransportRef = self.clone();
            f(protocol.as_mut(), &transport)
        };
        if self.has(flag::LAYER_PENDING) {
            self.install_layer();
        }
        if let Err(failure) = result {
            self.protocol_failed(failure);
        }
    }

    fn protocol_failed(&self, failure: Failure) {
        log::error!(
            "protocol error on connection with {}: {failure}",
            self.peer.get()
        );
        self.with_busy(|busy| {
            if busy.reason.is_none() {
                busy.reason = Some(CloseReason::Protocol(failure));
            }
        });
        self.own_lose_connection();
    }

    /// Registers the socket, installs the connector's hook, and calls
    /// `connection_made` (P-03, P-07, P-12).
    ///
    /// If the socket cannot be registered, nothing of the protocol has run, so it is
    /// dropped unheard (P-04: no `connection_lost` without `connection_made`), the
    /// socket is closed, and the caller reports the error. An accepted socket, and a
    /// connector's socket that connected at once, are added to the poll only after
    /// `connection_made` ([`StreamTransport::poll_after_start`]), so a failure there
    /// ends the connection with `connection_lost` instead.
    pub(super) fn start(
        self: &Rc<Self>,
        reactor: &Reactor,
        registration: Registration,
        lost_notice: Option<LostNotice>,
    ) -> io::Result<()> {
        let no_socket = || io::Error::other("connection has no socket");
        let registered = match registration {
            Registration::Polled(key) | Registration::Tracked(key) => {
                // A connector's socket has its key already: the key must be freed on
                // failure.
                self.key.set(key);
                if !reactor.replace_handler(key, Handler::Connection(self.clone())) {
                    Err(io::Error::other("the connection's registration is gone"))
                } else {
                    match registration {
                        Registration::Polled(_) => self
                            .with_stream(|stream| {
                                let mut fd = SourceFd(&stream.as_raw_fd());
                                reactor.reregister_io(&mut fd, key, reading_interest())
                            })
                            .unwrap_or_else(|| Err(no_socket()))
                            .map(|()| key),
                        // Added to the poll after `connection_made` (see below).
                        _ => Ok(key),
                    }
                }
            }
            // Added to the poll after `connection_made` (see below).
            Registration::New => reactor.track_handler(Handler::Connection(self.clone())),
        };
        let key = match registered {
            Ok(key) => key,
            Err(error) => {
                drop(self.protocol.borrow_mut().take());
                self.close(CloseReason::Lost(None));
                return Err(error);
            }
        };
        self.key.set(key);
        self.lost_notice.set(lost_notice);
        if !matches!(registration, Registration::Polled(_)) {
            self.raise(flag::UNPOLLED);
        }
        self.with_protocol(|protocol, transport| protocol.connection_made(transport));
        if self.has(flag::UNPOLLED) && !self.has(flag::FLUSH_SCHEDULED) {
            // With a flush scheduled, the flush adds it (`schedule_flush`): it runs
            // before the next poll, and may well finish the connection.
            self.poll_after_start();
        }
        // Bytes that arrived before the registration need no read scheduled here: adding
        // a socket to the poll (or changing its interest) reports the readiness it
        // already has, edge-triggered or not, and a read that finds nothing yet would
        // cost a syscall per connection.
        Ok(())
    }

    /// Adds a started socket to the poll, now that `connection_made` (and the flush of
    /// what it wrote, if anything) has run: unless the connection ended there, or is
    /// closing with nothing left to send (a port probe; a server that greets and
    /// closes), when the poll would only be told to forget it again. Should something
    /// be written after all, `set_interest` adds it then. Nothing is polled meanwhile:
    /// the flush runs before the next poll, and adding a socket to the poll reports the
    /// readiness it already has.
    fn poll_after_start(self: &Rc<Self>) {
        let closing = self.has(flag::CLOSED)
            || (self.has(flag::DISCONNECTING) && self.upper().is_none() && self.buffered() == 0);
        if closing {
            return;
        }
        let Some(reactor) = self.reactor.upgrade() else {
            return;
        };
        let interest = if self.has(flag::WRITE_INTEREST) {
            reading_interest() | Interest::WRITABLE
        } else {
            reading_interest()
        };
        let added = self.try_set_interest(&reactor, self.key.get(), interest);
        if let Some(Err(error)) = added {
            // The protocol has started: it hears of the end like of any other.
            self.close(CloseReason::Lost(Some(Rc::new(error))));
        }
    }

    /// A socket error as a close reason. After the peer's FIN, a reset only says that
    /// it did not want what we were still sending: it had closed in an orderly way.
    fn reason_from_io(&self, error: io::Error) -> CloseReason {
        match reason_from_io(error) {
            CloseReason::Reset(_) if self.has(flag::READ_EOF) => CloseReason::Done,
            reason => reason,
        }
    }

    fn may_read(&self) -> bool {
        !self.has(flag::CLOSED | flag::READ_PAUSED | flag::DISCONNECTING | flag::READ_EOF)
    }

    /// Reads until `WouldBlock`, or a budget, handing each chunk to the protocol.
    fn read_ready(self: &Rc<Self>, short_read: AfterShortRead) {
        if !self.may_read() {
            return;
        }
        let Some(reactor) = self.reactor.upgrade() else {
            return;
        };
        let mut buffer = reactor.take_read_buffer(READ_CHUNK);
        self.read_into(&mut buffer, short_read);
        reactor.give_read_buffer(buffer);
    }

    /// [`StreamTransport::read_ready`] with its buffer.
    fn read_into(self: &Rc<Self>, buffer: &mut [u8], short_read: AfterShortRead) {
        for _ in 0..READS_PER_EVENT {
            if !self.may_read() {
                return;
            }
            let Some(read) = self.with_stream(|stream| stream.read(buffer)) else {
                return;
            };
            match read {
                Ok(0) => return self.read_eof(),
                Ok(n) => {
                    self.with_protocol(|protocol, transport| {
                        protocol.data_received(transport, &buffer[..n])
                    });
                    if n < buffer.len() {
                        match short_read {
                            AfterShortRead::ReadAgain => {}
                            AfterShortRead::Drained => return,
                            AfterShortRead::AtEof if self.may_read() => {
                                return self.read_eof();
                            }
                            AfterShortRead::AtEof => return,
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.close(reason_from_io(e)),
            }
        }
        // Budget spent with data perhaps left: go on next iteration, after the others.
        self.schedule(|this| this.read_ready(AfterShortRead::ReadAgain));
    }

    /// The peer shut down its write side.
    fn read_eof(self: &Rc<Self>) {
        self.raise(flag::READ_EOF);
        let half_close = self
            .protocol
            .try_borrow()
            .map(|p| p.as_ref().is_some_and(|p| p.wants_half_close()))
            .unwrap_or(false);
        if !half_close {
            // the connection ends with Done. The peer only shut its write side and
            // still reads, so what the protocol wrote (a reply to the peer's last bytes,
            // say) is sent first, as for lose_connection.
            self.raise(flag::DISCONNECTING);
            if self.buffered() == 0 {
                return self.close(CloseReason::Done);
            }
            return self.flush();
        }
        let mut failed = None;
        self.with_protocol(|protocol, transport| {
            let result = protocol.read_connection_lost(transport);
            if let Err(failure) = &result {
                failed = Some(failure.clone());
            }
            Ok(())
        });
        if let Some(failure) = failed {
            // an error here closes the connection completely.
            log::error!("error in read_connection_lost: {failure}");
            self.close(CloseReason::Protocol(failure));
        } else if self.write_side.get() == WriteSide::Closed {
            // Both directions are now shut: nothing more can happen on this connection.
            self.close(CloseReason::Done);
        }
    }

    /// Sends what is buffered, at most [`SEND_LIMIT`] bytes per call; then
    /// finishes a requested half-close or close.
    fn flush(self: &Rc<Self>) {
        let mut budget = SEND_LIMIT;
        loop {
            if self.has(flag::CLOSED | flag::ABORTED) {
                return;
            }
            let step = self
                .with_busy_if_any(|busy| {
                    if busy.pending() == 0 {
                        return FlushStep::Empty;
                    }
                    if budget == 0 {
                        return FlushStep::BudgetSpent;
                    }
                    let Some(written) = self.with_stream(|stream| {
                        if busy.queue.is_empty() {
                            send_front(stream, &busy.out, budget)
                        } else {
                            send_queue(stream, busy, budget)
                        }
                    }) else {
                        return FlushStep::NoSocket;
                    };
                    if let Ok(n) = written {
                        budget = budget.saturating_sub(n);
                        busy.consume(n);
                        if busy.pending() == 0 {
                            // Drained: an idle connection holds no buffer; the reactor
                            // keeps the memory for the next burst of any connection.
                            self.release_buffer(busy.clear());
                        }
                    }
                    FlushStep::Wrote(written)
                })
                .unwrap_or(FlushStep::Empty);
            let result = match step {
                FlushStep::Empty => None,
                FlushStep::NoSocket => return,
                FlushStep::BudgetSpent => {
                    // More to send, and the socket may well take it: go on next
                    // iteration, after the other connections had their turn.
                    self.schedule_flush();
                    return self.maybe_resume_producer();
                }
                FlushStep::Wrote(written) => Some(written),
            };
            match result {
                Some(Ok(0)) => return self.close(CloseReason::Lost(None)),
                Some(Ok(_)) => {}
                Some(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.want_writable(true);
                    return self.maybe_resume_producer();
                }
                Some(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Some(Err(e)) => return self.close(self.reason_from_io(e)),
                None => {
                    self.want_writable(false);
                    // The producer may write again from inside its resume: send that
                    // before finishing a close or half-close, or it would be lost.
                    self.maybe_resume_producer();
                    if self.buffered() == 0 {
                        return self.finish_write_side();
                    }
                }
            }
        }
    }

    fn want_writable(&self, writable: bool) {
        if self.has(flag::WRITE_INTEREST) == writable {
            return;
        }
        if writable {
            self.raise(flag::WRITE_INTEREST);
        } else {
            self.lower(flag::WRITE_INTEREST);
        }
        self.set_interest(!self.has(flag::CLOSED), writable);
    }

    fn maybe_resume_producer(&self) {
        let producer = self.with_busy_if_any(|busy| {
            if !self.has(flag::PRODUCER_PAUSED) || busy.pending() > HIGH_WATER_MARK / 2 {
                return None;
            }
            self.lower(flag::PRODUCER_PAUSED);
            busy.producer.clone()
        });
        if let Some(producer) = producer.flatten() {
            producer.resume_producing();
        }
    }

    /// With the buffer empty: close if asked to, or shut the write side if asked to.
    fn finish_write_side(self: &Rc<Self>) {
        if self.buffered() > 0 {
            // Written meanwhile: the flush that write scheduled comes back here.
            return;
        }
        if self.has(flag::DISCONNECTING) {
            // A reason recorded earlier (a protocol error, P-22) takes precedence.
            return self.close(CloseReason::Done);
        }
        if self.write_side.get() != WriteSide::ShutdownRequested {
            return;
        }
        self.write_side.set(WriteSide::Closed);
        if let Some(Err(error)) = self.with_stream(|stream| stream.shutdown(Shutdown::Write)) {
            // The peer is already gone (X-13: quiet); the read side will tell.
            log::debug!("shutdown(write) to {}: {error}", self.peer.get());
        }
        // only a protocol that opted into half-close hears of it.
        let mut failed = None;
        self.with_protocol(|protocol, transport| {
            if protocol.wants_half_close()
                && let Err(failure) = protocol.write_connection_lost(transport)
            {
                failed = Some(failure);
            }
            Ok(())
        });
        if let Some(failure) = failed {
            log::error!("error in write_connection_lost: {failure}");
            return self.close(CloseReason::Protocol(failure));
        }
        if self.has(flag::READ_EOF) {
            self.close(CloseReason::Done);
        }
    }

    /// Ends the connection: closes the socket, then `connection_lost` exactly once, then
    /// the client connector's hook. Only ever called from the loop.
    ///
    /// `reason` is what ended it at this moment; the first cause wins over it: a
    /// protocol error (P-22) or the write cap recorded earlier, or our own abort (an
    /// error event racing with the abort must not turn it into a reset).
    fn close(self: &Rc<Self>, reason: CloseReason) {
        if self.has(flag::CLOSED) {
            return;
        }
        // After our abort the reset is wanted; after the peer's EOF nothing unread
        // can be left (and the read that would find out costs a syscall).
        let drain = !self.has(flag::ABORTED | flag::READ_EOF);
        let aborted = self.has(flag::ABORTED);
        self.raise(flag::CLOSED | flag::DISCONNECTING);
        let mut busy = self.busy.take();
        let (first, producer) = match busy.as_deref_mut() {
            Some(busy) => {
                self.release_buffer(busy.clear());
                drop(busy.layer_protocol.take());
                (busy.reason.take(), busy.producer.take())
            }
            None => (None, None),
        };
        let reason = match first {
            Some(first) => first,
            None if aborted => CloseReason::Aborted,
            None => reason,
        };
        if let Some(mut stream) = self.stream.take() {
            let key = self.key.replace(IoKey::NONE);
            let reactor = self.reactor.upgrade();
            if let Some(reactor) = &reactor
                && key != IoKey::NONE
            {
                // The socket is closed just below: that takes it out of the poll.
                reactor.forget_io(key);
            }
            if drain {
                // Into the loop's spare read buffer: a fresh zeroed one on every close
                // would cost more than the read (a port probe closes at once).
                match &reactor {
                    Some(reactor) => {
                        let mut buffer = reactor.take_read_buffer(READ_CHUNK);
                        drain_unread(&mut stream, &mut buffer[..DRAIN_CHUNK]);
                        reactor.give_read_buffer(buffer);
                    }
                    None => drain_unread(&mut stream, &mut [0u8; DRAIN_CHUNK]),
                }
            }
            // For `host()` after the close: the one system call that keeping the
            // address in every connection from the start would have cost anyway. Only
            // if someone can still ask: when the caller's reference is the last (no
            // protocol, user or layer holds the transport, and the registry's entry is
            // gone), nobody can call `host()` once this returns.
            let askable = Rc::strong_count(self) > 1 || Rc::weak_count(self) > 0;
            if askable && let Ok(host) = stream.local_addr() {
                let mut closed = busy.take().unwrap_or_default();
                closed.host = Some(CompactAddr::new(Address::from_sockaddr(&host)));
                self.put_busy(closed);
            }
            drop(stream);
        }
        if let Some(producer) = producer {
            producer.stop_producing();
        }
        let protocol = self.protocol.borrow_mut().take();
        if let Some(mut protocol) = protocol {
            protocol.connection_lost(&reason);
        }
        if let Some(notice) = self.lost_notice.take() {
            notice.send(&reason);
        }
    }
}

/// At most 64 reads of this size (256 KiB) are drained before the socket is closed anyway.
const DRAIN_CHUNK: usize = 4096;

/// Reads and discards what the peer sent that nobody will read: closing a socket with
/// unread bytes makes the kernel send a reset instead of a FIN, which would destroy data
/// still in flight to the peer.
fn drain_unread(stream: &mut Socket, sink: &mut [u8]) {
    for _ in 0..64 {
        match stream.read(sink) {
            Ok(n) if n > 0 => {}
            _ => return,
        }
    }
}

/// What a read that returned fewer bytes than asked for says about the socket, given the
/// event that prompted the reading. Each conclusion saves the read that would only have
/// confirmed it.
///
/// On Linux a stream socket's read stops short only when its receive queue is empty, at
/// the peer's FIN, or at an urgent mark (TCP) or out-of-band byte (UNIX). Bytes or a FIN
/// that arrive after the read wake the poll again, so an emptied queue needs no further
/// read; and when the event already said the peer had shut its write side, every byte
/// before the FIN was queued then, so a short read has reached the end. Urgent data and
/// errors make no such promise: then the socket is read until it says `WouldBlock`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterShortRead {
    /// Nothing is known: read again.
    ReadAgain,
    /// The queue is empty; more bytes will come with an event of their own.
    Drained,
    /// The queue is empty and the peer's FIN is next: the end of the stream.
    AtEof,
}

impl AfterShortRead {
    fn after(readiness: Readiness) -> AfterShortRead {
        if !cfg!(any(target_os = "linux", target_os = "android"))
            || readiness.error
            || readiness.priority
        {
            AfterShortRead::ReadAgain
        } else if readiness.read_closed {
            AfterShortRead::AtEof
        } else {
            AfterShortRead::Drained
        }
    }
}

/// SO_PEERCRED: who connected, as the kernel recorded it at connect time.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn peer_credentials(stream: &Socket) -> Option<PeerCredentials> {
    use nix::sys::socket::{getsockopt, sockopt};
    match getsockopt(stream, sockopt::PeerCredentials) {
        Ok(credentials) => Some(PeerCredentials {
            pid: credentials.pid(),
            uid: credentials.uid(),
            gid: credentials.gid(),
        }),
        Err(error) => {
            log::debug!("SO_PEERCRED: {error}");
            None
        }
    }
}

/// Other systems have other calls for this (getpeereid); not offered there.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn peer_credentials(_stream: &Socket) -> Option<PeerCredentials> {
    None
}

/// Flags for every send: no SIGPIPE when the peer has gone (the error says so instead).
#[cfg(any(target_os = "linux", target_os = "android"))]
const SEND_FLAGS: libc::c_int = libc::MSG_NOSIGNAL;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const SEND_FLAGS: libc::c_int = 0;

/// Most slices one send of a mixed queue hands the kernel.
const SEND_SLICES: usize = 16;

/// Sends at most `budget` bytes from the front of `out`: both parts of a ring that
/// wraps in one call.
fn send_front(stream: &Socket, out: &VecDeque<u8>, budget: usize) -> io::Result<usize> {
    let flags = SEND_FLAGS;
    let (front, back) = out.as_slices();
    if back.is_empty() || front.len() >= budget {
        return stream.send_with_flags(&front[..front.len().min(budget)], flags);
    }
    let back = &back[..back.len().min(budget - front.len())];
    stream.send_vectored_with_flags(&[IoSlice::new(front), IoSlice::new(back)], flags)
}

/// Sends at most `budget` bytes from the front of a queue of ring bytes and shared
/// buffers, in order, in one call.
fn send_queue(stream: &Socket, busy: &Busy, budget: usize) -> io::Result<usize> {
    let mut slices = [IoSlice::new(&[]); SEND_SLICES];
    let mut count = 0;
    let mut total = 0;
    let (mut front, mut back) = busy.out.as_slices();
    'queue: for chunk in &busy.queue {
        match chunk {
            Chunk::Ring(len) => {
                let mut len = *len;
                while len > 0 {
                    if front.is_empty() {
                        (front, back) = (back, &[]);
                    }
                    if total == budget || count == SEND_SLICES {
                        break 'queue;
                    }
                    let m = len.min(front.len()).min(budget - total);
                    slices[count] = IoSlice::new(&front[..m]);
                    front = &front[m..];
                    (count, total, len) = (count + 1, total + m, len - m);
                }
            }
            Chunk::Shared(data, sent) => {
                if total == budget || count == SEND_SLICES {
                    break 'queue;
                }
                let m = (data.len() - sent).min(budget - total);
                slices[count] = IoSlice::new(&data[*sent..*sent + m]);
                (count, total) = (count + 1, total + m);
            }
        }
    }
    stream.send_vectored_with_flags(&slices[..count], SEND_FLAGS)
}

fn reason_from_io(error: io::Error) -> CloseReason {
    match error.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionAborted => CloseReason::Reset(Rc::new(error)),
        _ => CloseReason::Lost(Some(Rc::new(error))),
    }
}

/// The loop's side of a connection: the registry hands each event to the connection's
/// own `Rc` (see `io::Handler`), which the protocol's calls need.
impl Connection for StreamTransport {
    /// The socket is ready for `readiness`.
    fn ready(self: &Rc<Self>, readiness: Readiness) {
        if readiness.error
            && let Some(error) = self
                .with_stream(|stream| stream.take_error().ok().flatten())
                .flatten()
        {
            return self.close(self.reason_from_io(error));
        }
        if readiness.writable {
            self.flush();
        }
        if readiness.readable || readiness.read_closed || readiness.priority {
            self.read_ready(AfterShortRead::after(readiness));
        }
    }

    /// The reactor is shutting down: the connection ends (R-10, P-28).
    fn shutdown(self: &Rc<Self>) {
        self.close(CloseReason::Lost(None));
    }

    fn release(&self) {
        self.release_protocol();
    }
}

#[cfg(test)]
mod ring_tests {
    use std::collections::VecDeque;
    use std::io::Read;

    use socket2::{Domain, Socket, Type};

    use std::rc::Rc;

    use super::{Busy, send_front, send_queue};

    /// A ring holding `0..len` (as bytes mod 251) whose front part ends at the end of its
    /// memory and whose back part starts at its beginning.
    fn wrapped(len: usize, front: usize) -> VecDeque<u8> {
        let mut out: VecDeque<u8> = VecDeque::with_capacity(len);
        let capacity = out.capacity();
        let byte = |i: usize| (i % 251) as u8;
        out.extend(std::iter::repeat_n(0, capacity - front));
        out.extend((0..front).map(byte));
        out.drain(..capacity - front);
        out.extend((front..len).map(byte));
        let (a, b) = out.as_slices();
        assert_eq!((a.len(), b.len()), (front, len - front), "the ring wraps");
        out
    }

    /// a send from a ring that wraps takes its front part, then its back
    /// part, in order, and never more than the budget.
    #[test]
    fn x01_x04_a_wrapped_ring_is_sent_in_order_within_the_budget() {
        for (len, front, budget) in [
            (100, 40, 1000), // both parts, whole
            (100, 40, 70),   // all of the front, part of the back
            (100, 40, 40),   // exactly the front
            (100, 40, 10),   // part of the front
            (100, 100, 60),  // not wrapped
        ] {
            let (tx, mut rx) = Socket::pair(Domain::UNIX, Type::STREAM, None).unwrap();
            let out = if front == len {
                (0..len).map(|i| (i % 251) as u8).collect()
            } else {
                wrapped(len, front)
            };
            let sent = send_front(&tx, &out, budget).unwrap();
            assert_eq!(sent, len.min(budget), "{len} {front} {budget}");
            drop(tx);
            let mut got = Vec::new();
            rx.read_to_end(&mut got).unwrap();
            let want: Vec<u8> = (0..sent).map(|i| (i % 251) as u8).collect();
            assert_eq!(got, want, "{len} {front} {budget}");
        }
    }

    /// The next `n` bytes of a numbered stream.
    fn numbered(next: &mut usize, n: usize) -> Vec<u8> {
        let bytes = (*next..*next + n).map(|i| (i % 251) as u8).collect();
        *next += n;
        bytes
    }

    /// copied writes and shared buffers (`write_shared`), mixed and
    /// added while earlier ones are partly sent, leave in the order written, each send
    /// within its budget, and the pending count stays exact.
    #[test]
    fn x01_x04_ring_bytes_and_shared_buffers_are_sent_in_order() {
        let (tx, mut rx) = Socket::pair(Domain::UNIX, Type::STREAM, None).unwrap();
        let mut busy = Busy::default();
        let (mut next, mut written, mut sent) = (0, Vec::new(), 0);
        let add = |busy: &mut Busy, written: &mut Vec<u8>, next: &mut usize, n, shared| {
            let data = numbered(next, n);
            written.extend_from_slice(&data);
            if shared {
                busy.append_shared(&Rc::from(data));
            } else {
                busy.append(&data);
            }
        };
        for (i, n) in [5, 7, 3, 11, 2, 13, 1, 40, 6].into_iter().enumerate() {
            add(&mut busy, &mut written, &mut next, n, i % 3 == 1);
        }
        for (round, budget) in [4, 9, 1, 6, 17, 2, 30, 3, 1000].into_iter().enumerate() {
            if round == 3 {
                // More of both kinds while the front is partly sent.
                add(&mut busy, &mut written, &mut next, 8, true);
                add(&mut busy, &mut written, &mut next, 9, false);
                add(&mut busy, &mut written, &mut next, 4, true);
            }
            let n = if busy.queue.is_empty() {
                send_front(&tx, &busy.out, budget)
            } else {
                send_queue(&tx, &busy, budget)
            }
            .unwrap();
            assert!(n <= budget && n > 0, "round {round}: {n} of {budget}");
            busy.consume(n);
            sent += n;
            assert_eq!(busy.pending(), written.len() - sent, "round {round}");
        }
        assert_eq!(busy.pending(), 0, "everything sent");
        assert!(busy.queue.is_empty() && busy.shared == 0);
        drop(tx);
        let mut got = Vec::new();
        rx.read_to_end(&mut got).unwrap();
        assert_eq!(got, written);
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr};

    use super::*;
    use crate::reactor::ProtocolResult;
    use crate::reactor::protocol::Factory;
    use crate::reactor::tcp::ClientFactory;
    use crate::reactor::time::DelayedCall;

    /// Crashes the reactor after five seconds, so that a test gone wrong fails instead
    /// of hanging.
    fn watchdog(reactor: &Reactor) -> DelayedCall {
        let r = reactor.downgrade();
        reactor.call_later(Duration::from_secs(5), move || {
            if let Some(r) = r.upgrade() {
                r.crash();
            }
        })
    }

    /// Keeps its transport (as protocols may) and records when it is dropped.
    struct Keeper {
        transport: Option<TransportRef>,
        made: Rc<Cell<usize>>,
        dropped: Rc<Cell<usize>>,
        crash: Option<WeakReactor>,
    }

    impl Protocol for Keeper {
        fn connection_made(&mut self, transport: &TransportRef) -> ProtocolResult {
            self.transport = Some(transport.clone());
            self.made.set(self.made.get() + 1);
            if self.made.get() == 2
                && let Some(reactor) = self.crash.as_ref().and_then(WeakReactor::upgrade)
            {
                reactor.crash();
            }
            Ok(())
        }

        fn data_received(&mut self, _: &TransportRef, _: &[u8]) -> ProtocolResult {
            Ok(())
        }
    }

    impl Drop for Keeper {
        fn drop(&mut self) {
            self.dropped.set(self.dropped.get() + 1);
        }
    }

    struct Keepers {
        made: Rc<Cell<usize>>,
        dropped: Rc<Cell<usize>>,
        crash: WeakReactor,
    }

    impl Factory for Keepers {
        fn build_protocol(&self, _: Address) -> Option<Box<dyn Protocol>> {
            Some(Box::new(Keeper {
                transport: None,
                made: self.made.clone(),
                dropped: self.dropped.clone(),
                crash: Some(self.crash.clone()),
            }))
        }
    }

    impl ClientFactory for Keepers {}

    /// P-28 covers a reactor that shuts down; one dropped without shutting down must
    /// still free each connection and its protocol, though the protocol holds the
    /// connection's transport and the connection holds the protocol.
    #[test]
    fn p28_a_reactor_dropped_without_shutdown_frees_connections_that_protocols_keep() {
        let reactor = Reactor::new().expect("reactor");
        let made = Rc::new(Cell::new(0));
        let dropped = Rc::new(Cell::new(0));
        let factory = Rc::new(Keepers {
            made: made.clone(),
            dropped: dropped.clone(),
            crash: reactor.downgrade(),
        });
        let port = reactor
            .listen_tcp(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), factory.clone())
            .expect("listening");
        let connector = reactor.connect_tcp(port.host(), factory.clone(), None);
        let watchdog = watchdog(&reactor);
        reactor.run().expect("the reactor ran");
        let _ = watchdog.cancel();
        assert_eq!(made.get(), 2, "both sides connected before the crash");
        assert_eq!(dropped.get(), 0);
        drop((port, connector, reactor));
        assert_eq!(dropped.get(), 2, "each protocol was freed with its reactor");
    }

    /// The concrete connection behind a protocol's handle.
    fn connection_of(reactor: &Reactor, transport: &TransportRef) -> Rc<StreamTransport> {
        let wanted = Rc::as_ptr(transport) as *const ();
        reactor
            .inner
            .io
            .borrow()
            .connections()
            .into_iter()
            .find(|c| Rc::as_ptr(c) as *const () == wanted)
            .expect("the transport is an open connection")
    }

    fn has_write_state(connection: &StreamTransport) -> bool {
        connection.with_busy_if_any(|_| ()).is_some()
    }

    struct Silent;

    impl Producer for Silent {
        fn pause_producing(&self) {}
        fn resume_producing(&self) {}
        fn stop_producing(&self) {}
    }

    /// Runs one scripted step per callback, and records what it saw.
    struct Scripted {
        reactor: WeakReactor,
        on_made: fn(&Reactor, &TransportRef, &RefCell<Vec<String>>),
        on_data: fn(&Reactor, &TransportRef, &RefCell<Vec<String>>),
        seen: Rc<RefCell<Vec<String>>>,
    }

    impl Protocol for Scripted {
        fn connection_made(&mut self, transport: &TransportRef) -> ProtocolResult {
            if let Some(reactor) = self.reactor.upgrade() {
                (self.on_made)(&reactor, transport, &self.seen);
            }
            Ok(())
        }

        fn data_received(&mut self, transport: &TransportRef, _: &[u8]) -> ProtocolResult {
            if let Some(reactor) = self.reactor.upgrade() {
                (self.on_data)(&reactor, transport, &self.seen);
            }
            Ok(())
        }
    }

    struct ScriptedFactory(Scripted);

    impl Factory for ScriptedFactory {
        fn build_protocol(&self, _: Address) -> Option<Box<dyn Protocol>> {
            let s = &self.0;
            Some(Box::new(Scripted {
                reactor: s.reactor.clone(),
                on_made: s.on_made,
                on_data: s.on_data,
                seen: s.seen.clone(),
            }))
        }
    }

    impl ClientFactory for ScriptedFactory {}

    fn note(seen: &RefCell<Vec<String>>, what: &str, connection: &StreamTransport) {
        seen.borrow_mut().push(format!(
            "{what}: state {}, buffered {}",
            has_write_state(connection),
            connection.buffered()
        ));
    }

    /// and the memory rule behind them: a connection has no write state
    /// (buffer, producer) until it writes or registers a producer, and gives it up once
    /// its bytes are sent and no producer is left; a producer alone keeps it.
    #[test]
    fn x01_x19_write_state_exists_only_while_used() {
        let reactor = Reactor::new().expect("reactor");
        let seen = Rc::new(RefCell::new(Vec::new()));
        let server = Rc::new(ScriptedFactory(Scripted {
            reactor: reactor.downgrade(),
            on_made: |reactor, transport, seen| {
                let connection = connection_of(reactor, transport);
                note(seen, "server made", &connection);
                transport.write(b"hello");
                note(seen, "server wrote", &connection);
                transport.register_producer(Rc::new(Silent));
                transport.unregister_producer();
                note(seen, "server producer gone, bytes pending", &connection);
            },
            on_data: |_, _, _| {},
            seen: seen.clone(),
        }));
        let client = Rc::new(ScriptedFactory(Scripted {
            reactor: reactor.downgrade(),
            on_made: |reactor, transport, seen| {
                let connection = connection_of(reactor, transport);
                transport.register_producer(Rc::new(Silent));
                note(seen, "client producer", &connection);
                transport.unregister_producer();
                note(seen, "client producer gone", &connection);
            },
            on_data: |reactor, transport, seen| {
                // The server's bytes arrived: its flush has sent them all.
                for connection in reactor.inner.io.borrow().connections() {
                    if !std::ptr::eq(
                        Rc::as_ptr(&connection) as *const (),
                        Rc::as_ptr(transport) as *const (),
                    ) {
                        note(seen, "server after its flush", &connection);
                    }
                }
                reactor.crash();
            },
            seen: seen.clone(),
        }));
        let port = reactor
            .listen_tcp(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), server)
            .expect("listening");
        let _connector = reactor.connect_tcp(port.host(), client, None);
        let watchdog = watchdog(&reactor);
        reactor.run().expect("the reactor ran");
        let _ = watchdog.cancel();
        let mut seen = seen.borrow().clone();
        // The two sides' callbacks interleave in either order; each side's are ordered.
        seen.sort_by_key(|line| !line.starts_with("server"));
        assert_eq!(
            seen,
            [
                "server made: state false, buffered 0",
                "server wrote: state true, buffered 5",
                "server producer gone, bytes pending: state true, buffered 5",
                "server after its flush: state false, buffered 0",
                "client producer: state true, buffered 0",
                "client producer gone: state false, buffered 0",
            ]
        );
    }

    type Addresses = Rc<RefCell<Vec<(String, Address, Address)>>>;

    /// Records its transport's host and peer when made and when lost, and hands the
    /// transport to the test. The server side closes at once; the client side stops
    /// the reactor when lost.
    struct AddressRecorder {
        side: &'static str,
        transport: Option<TransportRef>,
        seen: Addresses,
        kept: Rc<RefCell<Vec<TransportRef>>>,
        reactor: WeakReactor,
    }

    impl AddressRecorder {
        fn record(&self, event: &str) {
            if let Some(t) = &self.transport {
                let event = format!("{} {event}", self.side);
                self.seen.borrow_mut().push((event, t.host(), t.peer()));
            }
        }
    }

    impl Protocol for AddressRecorder {
        fn connection_made(&mut self, transport: &TransportRef) -> ProtocolResult {
            self.transport = Some(transport.clone());
            self.kept.borrow_mut().push(transport.clone());
            self.record("made");
            if self.side == "server" {
                transport.lose_connection();
            }
            Ok(())
        }

        fn data_received(&mut self, _: &TransportRef, _: &[u8]) -> ProtocolResult {
            Ok(())
        }

        fn connection_lost(&mut self, _: &CloseReason) {
            self.record("lost");
            if self.side == "client"
                && let Some(reactor) = self.reactor.upgrade()
            {
                reactor.crash();
            }
        }
    }

    struct AddressRecorders {
        side: &'static str,
        seen: Addresses,
        kept: Rc<RefCell<Vec<TransportRef>>>,
        reactor: WeakReactor,
    }

    impl Factory for AddressRecorders {
        fn build_protocol(&self, _: Address) -> Option<Box<dyn Protocol>> {
            Some(Box::new(AddressRecorder {
                side: self.side,
                transport: None,
                seen: self.seen.clone(),
                kept: self.kept.clone(),
                reactor: self.reactor.clone(),
            }))
        }
    }

    impl ClientFactory for AddressRecorders {}

    /// the local address is asked of the socket rather than kept, so check that
    /// `host()` (and `peer()`) give the same answer while open, in `connection_lost`,
    /// and long after the close, on both sides.
    #[test]
    fn x15_host_and_peer_stay_the_same_after_the_close() {
        let reactor = Reactor::new().expect("reactor");
        let seen: Addresses = Rc::new(RefCell::new(Vec::new()));
        let kept = Rc::new(RefCell::new(Vec::new()));
        let factory = |side| {
            Rc::new(AddressRecorders {
                side,
                seen: seen.clone(),
                kept: kept.clone(),
                reactor: reactor.downgrade(),
            })
        };
        let port = reactor
            .listen_tcp(
                SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
                factory("server"),
            )
            .expect("listening");
        let listening = port.host();
        let _connector = reactor.connect_tcp(listening, factory("client"), None);
        let watchdog = watchdog(&reactor);
        reactor.run().expect("the reactor ran");
        let _ = watchdog.cancel();
        let seen = seen.borrow();
        let find = |when| {
            seen.iter()
                .find(|(w, _, _)| *w == when)
                .map(|(_, host, peer)| (host.clone(), peer.clone()))
                .unwrap_or_else(|| panic!("no {when} in {seen:?}"))
        };
        let (server_host, server_peer) = find("server made");
        let (client_host, client_peer) = find("client made");
        assert_eq!(server_host, Address::Tcp(listening));
        assert_eq!(client_peer, Address::Tcp(listening));
        assert_eq!(server_peer, client_host);
        assert_eq!(
            find("server lost"),
            (server_host.clone(), server_peer.clone())
        );
        assert_eq!(
            find("client lost"),
            (client_host.clone(), client_peer.clone())
        );
        let kept = kept.borrow();
        assert_eq!(kept.len(), 2);
        for transport in kept.iter() {
            assert!(transport.is_disconnecting());
            let after = (transport.host(), transport.peer());
            assert!(
                after == (server_host.clone(), server_peer.clone())
                    || after == (client_host.clone(), client_peer.clone()),
                "after the close: {after:?}"
            );
        }
    }
}
