//! Connection policies any protocol or factory can use (Twisted's
//! `twisted.protocols.policies` is the model): an idle timeout ([`IdleTimeout`], Twisted's
//! `TimeoutMixin`, and the [`TimeoutFactory`] wrapper, Twisted's `TimeoutFactory`),
//! connection limits in total and per peer ([`LimitFactory`], Twisted's
//! `LimitTotalConnectionsFactory` and `LimitConnectionsByPeer`), a bounded outgoing queue
//! whose overflow is a "too slow" outcome ([`OutgoingQueue`]), and closing with a grace
//! period after which the connection is reset ([`close_with_grace`]).
//!
//! Everything runs on a [`Scheduler`] (the reactor, or a `FakeClock` in tests), so the
//! timing is testable without sleeping.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::IpAddr;
use std::rc::{Rc, Weak};
use std::time::Duration;

use crate::reactor::tcp::HIGH_WATER_MARK;
use crate::reactor::{
    Address, CloseReason, DelayedCall, Factory, Producer, Protocol, ProtocolResult, Scheduler,
    Transport, TransportRef,
};

// ---------------------------------------------------------------------------------------
// Closing with a grace period

/// Closes `transport` in an orderly way (everything buffered is sent first) and resets
/// it if it is still open `grace` later: a peer that does not read cannot keep a
/// closing connection, or a shutdown, waiting. Returns the timer; cancelling it (e.g.
/// in `connection_lost`) is tidy but not needed, since aborting a closed transport
/// does nothing, and the timer does not keep the transport alive.
pub fn close_with_grace(
    transport: &TransportRef,
    scheduler: &dyn Scheduler,
    grace: Duration,
) -> DelayedCall {
    transport.lose_connection();
    let weak: Weak<dyn Transport> = Rc::downgrade(transport);
    scheduler.schedule(
        grace,
        Box::new(move || {
            if let Some(transport) = weak.upgrade() {
                transport.abort_connection();
            }
        }),
    )
}

// ---------------------------------------------------------------------------------------
// Idle timeout

struct IdleInner {
    scheduler: Rc<dyn Scheduler>,
    period: Cell<Option<Duration>>,
    last_heard: Cell<Duration>,
    timer: RefCell<Option<DelayedCall>>,
    on_timeout: Rc<dyn Fn()>,
}

/// Calls `on_timeout` once when nothing was heard for a period (Twisted's
/// `TimeoutMixin`: `setTimeout`, `resetTimeout`, `timeoutConnection`).
///
/// [`IdleTimeout::reset`] on traffic only records the time: the timer, when it fires
/// early, re-arms itself for the remainder, so a busy connection costs no timer work
/// per chunk received.
#[derive(Clone)]
pub struct IdleTimeout {
    inner: Rc<IdleInner>,
}

impl fmt::Debug for IdleTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdleTimeout")
            .field("period", &self.inner.period.get())
            .field("idle", &self.idle())
            .finish()
    }
}

impl IdleTimeout {
    /// An idle timeout of `period` (`None`: none, until [`IdleTimeout::set_timeout`])
    /// starting now.
    pub fn new(
        scheduler: Rc<dyn Scheduler>,
        period: Option<Duration>,
        on_timeout: impl Fn() + 'static,
    ) -> IdleTimeout {
        let timeout = IdleTimeout {
            inner: Rc::new(IdleInner {
                last_heard: Cell::new(scheduler.seconds()),
                scheduler,
                period: Cell::new(None),
                timer: RefCell::new(None),
                on_timeout: Rc::new(on_timeout),
            }),
        };
        timeout.set_timeout(period);
        timeout
    }

    /// Something was heard: the period starts again from now.
    pub fn reset(&self) {
        self.inner.last_heard.set(self.inner.scheduler.seconds());
    }

    /// Changes the period (`None` stops the timeout) and restarts it from now; returns
    /// the previous period.
    pub fn set_timeout(&self, period: Option<Duration>) -> Option<Duration> {
        let previous = self.inner.period.replace(period);
        if let Some(timer) = self.inner.timer.borrow_mut().take() {
            let _ = timer.cancel();
        }
        self.reset();
        if let Some(period) = period {
            IdleInner::arm(&self.inner, period);
        }
        previous
    }

    /// Stops the timeout for good (e.g. in `connection_lost`).
    pub fn cancel(&self) {
        self.set_timeout(None);
    }

    /// How long since something was last heard.
    pub fn idle(&self) -> Duration {
        self.inner
            .scheduler
            .seconds()
            .saturating_sub(self.inner.last_heard.get())
    }

    /// The period, if the timeout is running.
    pub fn period(&self) -> Option<Duration> {
        self.inner.period.get()
    }
}

impl IdleInner {
    fn arm(this: &Rc<IdleInner>, delay: Duration) {
        let weak = Rc::downgrade(this);
        let timer = this.scheduler.schedule(
            delay,
            Box::new(move || {
                if let Some(inner) = weak.upgrade() {
                    IdleInner::check(&inner);
                }
            }),
        );
        *this.timer.borrow_mut() = Some(timer);
    }

    fn check(this: &Rc<IdleInner>) {
        this.timer.borrow_mut().take();
        let Some(period) = this.period.get() else {
            return;
        };
        let idle = this
            .scheduler
            .seconds()
            .saturating_sub(this.last_heard.get());
        if idle < period {
            IdleInner::arm(this, period - idle);
            return;
        }
        // Fired: the timeout stays off until set again (as Twisted's does).
        this.period.set(None);
        let on_timeout = this.on_timeout.clone();
        on_timeout();
    }
}

/// A factory whose connections are closed after `period` without anything received
/// (Twisted's `TimeoutFactory`): orderly, then reset if the peer does not take what
/// was buffered within `grace`.
pub struct TimeoutFactory {
    inner: Rc<dyn Factory>,
    scheduler: Rc<dyn Scheduler>,
    period: Duration,
    grace: Duration,
}

impl TimeoutFactory {
    /// Wraps `inner`: its protocols time out after `period` idle, closing with `grace`.
    pub fn new(
        inner: Rc<dyn Factory>,
        scheduler: Rc<dyn Scheduler>,
        period: Duration,
        grace: Duration,
    ) -> TimeoutFactory {
        TimeoutFactory {
            inner,
            scheduler,
            period,
            grace,
        }
    }
}

impl Factory for TimeoutFactory {
    fn build_protocol(&self, addr: Address) -> Option<Box<dyn Protocol>> {
        let inner = self.inner.build_protocol(addr)?;
        Some(Box::new(TimeoutProtocol {
            inner,
            scheduler: self.scheduler.clone(),
            period: self.period,
            grace: self.grace,
            idle: None,
            closing: Rc::new(RefCell::new(None)),
        }))
    }

    fn start_factory(&self) {
        self.inner.start_factory();
    }

    fn stop_factory(&self) {
        self.inner.stop_factory();
    }
}

/// A protocol of a [`TimeoutFactory`].
struct TimeoutProtocol {
    inner: Box<dyn Protocol>,
    scheduler: Rc<dyn Scheduler>,
    period: Duration,
    grace: Duration,
    idle: Option<IdleTimeout>,
    closing: Rc<RefCell<Option<DelayedCall>>>,
}

impl Protocol for TimeoutProtocol {
    fn connection_made(&mut self, transport: &TransportRef) -> ProtocolResult {
        let weak: Weak<dyn Transport> = Rc::downgrade(transport);
        let (scheduler, grace, closing) =
            (self.scheduler.clone(), self.grace, self.closing.clone());
        self.idle = Some(IdleTimeout::new(
            self.scheduler.clone(),
            Some(self.period),
            move || {
                if let Some(transport) = weak.upgrade() {
                    let timer = close_with_grace(&transport, &*scheduler, grace);
                    *closing.borrow_mut() = Some(timer);
                }
            },
        ));
        self.inner.connection_made(transport)
    }

    fn handshake_completed(&mut self, transport: &TransportRef) -> ProtocolResult {
        self.inner.handshake_completed(transport)
    }

    fn data_received(&mut self, transport: &TransportRef, data: &[u8]) -> ProtocolResult {
        if let Some(idle) = &self.idle {
            idle.reset();
        }
        self.inner.data_received(transport, data)
    }

    fn connection_lost(&mut self, reason: &CloseReason) {
        if let Some(idle) = self.idle.take() {
            idle.cancel();
        }
        if let Some(timer) = self.closing.borrow_mut().take() {
            let _ = timer.cancel();
        }
        self.inner.connection_lost(reason);
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

// ---------------------------------------------------------------------------------------
// Connection limits

/// How many connections a [`LimitFactory`] lets in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConnectionLimits {
    /// At most this many at once in total (`None`: no limit).
    pub total: Option<usize>,
    /// At most this many at once from one peer IP address (`None`: no limit). UNIX
    /// peers are not counted per peer: they have no address of their own.
    pub per_peer: Option<usize>,
}

/// Which limit refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// [`ConnectionLimits::total`] connections were open.
    Total(usize),
    /// [`ConnectionLimits::per_peer`] connections from this peer were open.
    PerPeer(usize),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Total(n) => write!(f, "{n} connections are open, the most allowed"),
            Refusal::PerPeer(n) => write!(f, "{n} connections from this address are open"),
        }
    }
}

/// What a refused connection gets: `None` closes it at once; a protocol can tell the
/// peer why first (and must close the connection itself).
pub type RefusedProtocol = Rc<dyn Fn(&Address, Refusal) -> Option<Box<dyn Protocol>>>;

#[derive(Default)]
struct Counts {
    total: usize,
    per_peer: HashMap<IpAddr, usize>,
}

impl Counts {
    fn release(&mut self, peer: Option<IpAddr>) {
        self.total = self.total.saturating_sub(1);
        if let Some(ip) = peer
            && let Some(count) = self.per_peer.get_mut(&ip)
        {
            *count -= 1;
            if *count == 0 {
                self.per_peer.remove(&ip);
            }
        }
    }
}

/// A factory that lets at most so many connections in, in total and per peer.
pub struct LimitFactory {
    inner: Rc<dyn Factory>,
    limits: ConnectionLimits,
    counts: Rc<RefCell<Counts>>,
    refused: Option<RefusedProtocol>,
}

impl LimitFactory {
    /// Wraps `inner`; refused connections are closed at once.
    pub fn new(inner: Rc<dyn Factory>, limits: ConnectionLimits) -> LimitFactory {
        LimitFactory {
            inner,
            limits,
            counts: Rc::default(),
            refused: None,
        }
    }

    /// Refused connections get the protocol `refused` builds (e.g. one that writes
    /// "server full" and closes) instead of being closed at once. Such connections do
    /// not count against the limits.
    pub fn with_refusal(mut self, refused: RefusedProtocol) -> LimitFactory {
        self.refused = Some(refused);
        self
    }

    /// Connections open now through this factory.
    pub fn open_connections(&self) -> usize {
        self.counts.borrow().total
    }

    /// Connections open now from `ip`.
    pub fn open_from(&self, ip: IpAddr) -> usize {
        self.counts.borrow().per_peer.get(&ip).copied().unwrap_or(0)
    }

    fn refusal(&self, peer: Option<IpAddr>) -> Option<Refusal> {
        let counts = self.counts.borrow();
        if let Some(max) = self.limits.total
            && counts.total >= max
        {
            return Some(Refusal::Total(max));
        }
        if let (Some(max), Some(ip)) = (self.limits.per_peer, peer)
            && counts.per_peer.get(&ip).copied().unwrap_or(0) >= max
        {
            return Some(Refusal::PerPeer(max));
        }
        None
    }
}

/// The per-peer key: the IP address, IPv4-mapped IPv6 counted as IPv4.
fn peer_ip(addr: &Address) -> Option<IpAddr> {
    addr.as_inet().map(|a| a.ip().to_canonical())
}

impl Factory for LimitFactory {
    fn build_protocol(&self, addr: Address) -> Option<Box<dyn Protocol>> {
        let peer = peer_ip(&addr);
        if let Some(refusal) = self.refusal(peer) {
            log::info!("refusing {addr}: {refusal}");
            return self
                .refused
                .as_ref()
                .and_then(|build| build(&addr, refusal));
        }
        let inner = self.inner.build_protocol(addr)?;
        {
            let mut counts = self.counts.borrow_mut();
            counts.total += 1;
            if let Some(ip) = peer {
                *counts.per_peer.entry(ip).or_insert(0) += 1;
            }
        }
        Some(Box::new(Counted {
            inner,
            counts: self.counts.clone(),
            peer,
            counted: true,
        }))
    }

    fn start_factory(&self) {
        self.inner.start_factory();
    }

    fn stop_factory(&self) {
        self.inner.stop_factory();
    }
}

/// A protocol of a [`LimitFactory`]: gives its place back when the connection ends
/// (or when it is dropped without ever having been told, e.g. a connection that
/// failed to start).
struct Counted {
    inner: Box<dyn Protocol>,
    counts: Rc<RefCell<Counts>>,
    peer: Option<IpAddr>,
    counted: bool,
}

impl Counted {
    fn release(&mut self) {
        if std::mem::replace(&mut self.counted, false) {
            self.counts.borrow_mut().release(self.peer);
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.release();
    }
}

impl Protocol for Counted {
    fn connection_made(&mut self, transport: &TransportRef) -> ProtocolResult {
        self.inner.connection_made(transport)
    }

    fn handshake_completed(&mut self, transport: &TransportRef) -> ProtocolResult {
        self.inner.handshake_completed(transport)
    }

    fn data_received(&mut self, transport: &TransportRef, data: &[u8]) -> ProtocolResult {
        self.inner.data_received(transport, data)
    }

    fn connection_lost(&mut self, reason: &CloseReason) {
        // The place is free before the protocol hears of the end, so a client that
        // reconnects from connection_lost gets in.
        self.release();
        self.inner.connection_lost(reason);
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

// ---------------------------------------------------------------------------------------
// Bounded outgoing queue

/// A write an [`OutgoingQueue`] refused: the peer reads too slowly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the peer does not read: more than {limit} bytes would wait to be sent")]
pub struct TooSlow {
    /// The queue's limit.
    pub limit: usize,
}

struct QueueInner {
    /// Weak: the queue usually belongs to the connection's protocol, which the
    /// transport owns.
    transport: Weak<dyn Transport>,
    limit: usize,
    /// The transport asked us to pause and has not resumed us yet.
    blocked: Cell<bool>,
    queue: RefCell<VecDeque<Vec<u8>>>,
    queued: Cell<usize>,
}

/// What a connection writes, bounded: while the transport's buffer is above its
/// high-water mark writes wait here, and a write that would make more than
/// `limit` bytes wait (counting one high-water mark for what the transport holds) is
/// refused with [`TooSlow`] — the caller then usually aborts the connection. So a peer
/// that does not read costs at most `limit` bytes, however much is written to it.
///
/// The queue registers itself as the transport's producer.
#[derive(Clone)]
pub struct OutgoingQueue {
    inner: Rc<QueueInner>,
}

impl fmt::Debug for OutgoingQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutgoingQueue")
            .field("limit", &self.inner.limit)
            .field("queued", &self.inner.queued.get())
            .field("blocked", &self.inner.blocked.get())
            .finish()
    }
}

impl OutgoingQueue {
    /// A queue of at most `limit` bytes in front of `transport`.
    pub fn attach(transport: &TransportRef, limit: usize) -> OutgoingQueue {
        let queue = OutgoingQueue {
            inner: Rc::new(QueueInner {
                transport: Rc::downgrade(transport),
                limit,
                blocked: Cell::new(false),
                queue: RefCell::new(VecDeque::new()),
                queued: Cell::new(0),
            }),
        };
        transport.register_producer(Rc::new(QueueProducer {
            queue: Rc::downgrade(&queue.inner),
        }));
        queue
    }

    /// Writes `chunks` as one message: straight to the transport while it keeps up,
    /// else into the queue; refused (nothing written) if that would pass the limit.
    pub fn write(&self, chunks: &[&[u8]]) -> Result<(), TooSlow> {
        let inner = &self.inner;
        let Some(transport) = inner.transport.upgrade() else {
            // The connection is gone: what is written to it is discarded.
            return Ok(());
        };
        if !inner.blocked.get() && inner.queue.borrow().is_empty() {
            transport.write_sequence(chunks);
            return Ok(());
        }
        let size: usize = chunks.iter().map(|c| c.len()).sum();
        if inner.queued.get() + size + HIGH_WATER_MARK > inner.limit {
            return Err(TooSlow { limit: inner.limit });
        }
        inner.queue.borrow_mut().push_back(chunks.concat());
        inner.queued.set(inner.queued.get() + size);
        Ok(())
    }

    /// Bytes waiting here (not counting the transport's own buffer).
    pub fn queued(&self) -> usize {
        self.inner.queued.get()
    }

    /// True while the transport has asked for a pause.
    pub fn is_blocked(&self) -> bool {
        self.inner.blocked.get()
    }

    /// Hands everything queued to the transport (before closing: the queue is
    /// bounded, so this is cheap, and the transport's close flushes it).
    pub fn flush_to_transport(&self) {
        let queue = std::mem::take(&mut *self.inner.queue.borrow_mut());
        self.inner.queued.set(0);
        if let Some(transport) = self.inner.transport.upgrade() {
            for bytes in &queue {
                transport.write(bytes);
            }
        }
    }

    /// Drops everything queued (before an abort).
    pub fn clear(&self) {
        self.inner.queue.borrow_mut().clear();
        self.inner.queued.set(0);
    }
}

/// The producer the transport pauses and resumes.
struct QueueProducer {
    queue: Weak<QueueInner>,
}

impl Producer for QueueProducer {
    fn pause_producing(&self) {
        if let Some(queue) = self.queue.upgrade() {
            queue.blocked.set(true);
        }
    }

    fn resume_producing(&self) {
        let Some(queue) = self.queue.upgrade() else {
            return;
        };
        queue.blocked.set(false);
        let Some(transport) = queue.transport.upgrade() else {
            return;
        };
        // Writing may pause us again (synchronously): stop there.
        while !queue.blocked.get() {
            let Some(bytes) = queue.queue.borrow_mut().pop_front() else {
                break;
            };
            queue.queued.set(queue.queued.get() - bytes.len());
            transport.write(&bytes);
        }
    }

    fn stop_producing(&self) {
        if let Some(queue) = self.queue.upgrade() {
            queue.queue.borrow_mut().clear();
            queue.queued.set(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reactor::FakeClock;
    use crate::reactor::testing::{ProtocolDriver, StringTransport};

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn idle_timeout_fires_once_after_the_period_without_traffic() {
        let clock = Rc::new(FakeClock::new());
        let fired = Rc::new(Cell::new(0));
        let f = fired.clone();
        let idle = IdleTimeout::new(clock.clone(), Some(secs(10)), move || f.set(f.get() + 1));
        clock.advance(secs(9));
        assert_eq!(fired.get(), 0);
        idle.reset();
        clock.advance(secs(9));
        assert_eq!(fired.get(), 0, "traffic at 9 s moved the deadline to 19 s");
        assert_eq!(idle.idle(), secs(9));
        clock.advance(secs(1));
        assert_eq!(fired.get(), 1);
        clock.advance(secs(100));
        assert_eq!(fired.get(), 1, "once, then off until set again");
        assert_eq!(idle.period(), None);
    }

    #[test]
    fn idle_timeout_reset_costs_no_timer_and_cancel_stops_it() {
        let clock = Rc::new(FakeClock::new());
        let fired = Rc::new(Cell::new(false));
        let f = fired.clone();
        let idle = IdleTimeout::new(clock.clone(), Some(secs(5)), move || f.set(true));
        for _ in 0..100 {
            idle.reset();
        }
        assert_eq!(clock.delayed_calls().len(), 1);
        assert_eq!(idle.set_timeout(Some(secs(2))), Some(secs(5)));
        assert_eq!(clock.delayed_calls().len(), 1);
        idle.cancel();
        assert!(clock.delayed_calls().is_empty());
        clock.advance(secs(10));
        assert!(!fired.get());
        let none = IdleTimeout::new(clock.clone(), None, || panic!("no period"));
        clock.advance(secs(10));
        assert_eq!(none.period(), None);
    }

    #[test]
    fn close_with_grace_closes_now_and_resets_a_peer_that_takes_nothing() {
        let clock = FakeClock::new();
        let transport = StringTransport::with_default_addresses();
        let t = transport.transport_ref();
        let timer = close_with_grace(&t, &clock, secs(5));
        assert!(transport.lost_connection());
        assert!(!transport.aborted());
        clock.advance(secs(5));
        assert!(transport.aborted());
        assert!(!timer.active());
    }

    /// A protocol that records what it sees.
    struct Echo(Rc<RefCell<Vec<String>>>);

    impl Protocol for Echo {
        fn connection_made(&mut self, _: &TransportRef) -> ProtocolResult {
            self.0.borrow_mut().push("made".into());
            Ok(())
        }
        fn data_received(&mut self, t: &TransportRef, data: &[u8]) -> ProtocolResult {
            t.write(data);
            Ok(())
        }
        fn handshake_completed(&mut self, _: &TransportRef) -> ProtocolResult {
            self.0.borrow_mut().push("handshake".into());
            Ok(())
        }
        fn connection_lost(&mut self, _: &CloseReason) {
            self.0.borrow_mut().push("lost".into());
        }
    }

    struct EchoFactory(Rc<RefCell<Vec<String>>>);

    impl Factory for EchoFactory {
        fn build_protocol(&self, _: Address) -> Option<Box<dyn Protocol>> {
            Some(Box::new(Echo(self.0.clone())))
        }
    }

    fn peer(text: &str) -> Address {
        Address::Tcp(text.parse().unwrap())
    }

    #[test]
    fn timeout_factory_closes_an_idle_connection_and_traffic_keeps_it_open() {
        let clock = Rc::new(FakeClock::new());
        let log: Rc<RefCell<Vec<String>>> = Rc::default();
        let factory = TimeoutFactory::new(
            Rc::new(EchoFactory(log.clone())),
            clock.clone(),
            secs(10),
            secs(5),
        );
        let protocol = factory.build_protocol(peer("127.0.0.1:5000")).unwrap();
        let mut driver =
            ProtocolDriver::from_box(protocol, StringTransport::with_default_addresses());
        driver.connect().unwrap();
        clock.advance(secs(8));
        driver.feed(b"ping").unwrap();
        clock.advance(secs(8));
        assert!(!driver.transport().lost_connection(), "heard from at 8 s");
        clock.advance(secs(2));
        assert!(driver.transport().lost_connection(), "idle for 10 s");
        assert!(!driver.transport().aborted());
        clock.advance(secs(5));
        assert!(
            driver.transport().aborted(),
            "took nothing within the grace"
        );
        driver.lose(CloseReason::Aborted);
        assert_eq!(*log.borrow(), ["made", "lost"]);
        assert!(clock.delayed_calls().is_empty());
    }

    #[test]
    fn the_policies_pass_handshake_completed_to_the_protocol_they_wrap() {
        let clock = Rc::new(FakeClock::new());
        let log: Rc<RefCell<Vec<String>>> = Rc::default();
        let timed: Rc<dyn Factory> = Rc::new(TimeoutFactory::new(
            Rc::new(EchoFactory(log.clone())),
            clock,
            secs(10),
            secs(5),
        ));
        let limited = LimitFactory::new(timed, ConnectionLimits::default());
        let protocol = limited.build_protocol(peer("127.0.0.1:5000")).unwrap();
        let mut driver =
            ProtocolDriver::from_box(protocol, StringTransport::with_default_addresses());
        driver.connect().unwrap();
        let transport = driver.transport().transport_ref();
        driver
            .protocol_mut()
            .handshake_completed(&transport)
            .unwrap();
        assert_eq!(*log.borrow(), ["made", "handshake"]);
    }

    #[test]
    fn limit_factory_counts_in_total_and_per_peer_and_frees_places_on_close() {
        let log: Rc<RefCell<Vec<String>>> = Rc::default();
        let refusals: Rc<RefCell<Vec<Refusal>>> = Rc::default();
        let r = refusals.clone();
        let factory = LimitFactory::new(
            Rc::new(EchoFactory(log.clone())),
            ConnectionLimits {
                total: Some(3),
                per_peer: Some(2),
            },
        )
        .with_refusal(Rc::new(move |_, refusal| {
            r.borrow_mut().push(refusal);
            None
        }));
        let a1 = factory.build_protocol(peer("10.0.0.1:1")).unwrap();
        let a2 = factory.build_protocol(peer("[::ffff:10.0.0.1]:2")).unwrap();
        assert!(factory.build_protocol(peer("10.0.0.1:3")).is_none());
        assert_eq!(factory.open_from("10.0.0.1".parse().unwrap()), 2);
        let b1 = factory.build_protocol(peer("10.0.0.2:1")).unwrap();
        assert!(factory.build_protocol(peer("10.0.0.3:1")).is_none());
        assert_eq!(*refusals.borrow(), [Refusal::PerPeer(2), Refusal::Total(3)]);
        assert_eq!(factory.open_connections(), 3);

        // A connection that ends frees its place before its protocol hears of it.
        let mut d1 = ProtocolDriver::from_box(a1, StringTransport::with_default_addresses());
        d1.connect().unwrap();
        d1.lose(CloseReason::Done);
        assert_eq!(factory.open_connections(), 2);
        drop(d1);
        assert_eq!(factory.open_connections(), 2, "counted once");
        // One dropped without ever being told also frees its place.
        drop(a2);
        assert_eq!(factory.open_from("10.0.0.1".parse().unwrap()), 0);
        assert!(factory.build_protocol(peer("10.0.0.1:4")).is_some());
        drop(b1);
    }

    #[test]
    fn outgoing_queue_writes_through_queues_while_paused_and_refuses_past_its_limit() {
        let transport = StringTransport::with_default_addresses();
        let t = transport.transport_ref();
        let limit = HIGH_WATER_MARK + 10;
        let queue = OutgoingQueue::attach(&t, limit);
        queue.write(&[b"hello", b"\r\n"]).unwrap();
        assert_eq!(transport.take_written(), b"hello\r\n");
        let producer = transport.producer().expect("the queue is the producer");
        producer.pause_producing();
        queue.write(&[b"12345"]).unwrap();
        queue.write(&[b"6789", b"0"]).unwrap();
        assert_eq!(queue.queued(), 10);
        assert!(transport.written().is_empty());
        assert_eq!(queue.write(&[b"x"]), Err(TooSlow { limit }));
        assert_eq!(queue.queued(), 10, "a refused write is not kept");
        producer.resume_producing();
        assert_eq!(transport.take_written(), b"1234567890");
        assert_eq!(queue.queued(), 0);
        queue.write(&[b"again"]).unwrap();
        assert_eq!(transport.take_written(), b"again");
    }

    #[test]
    fn outgoing_queue_flush_and_clear() {
        let transport = StringTransport::with_default_addresses();
        let t = transport.transport_ref();
        let queue = OutgoingQueue::attach(&t, 1024 * 1024);
        transport.producer().unwrap().pause_producing();
        queue.write(&[b"a"]).unwrap();
        queue.write(&[b"b"]).unwrap();
        queue.flush_to_transport();
        assert_eq!(transport.take_written(), b"ab");
        queue.write(&[b"c"]).unwrap();
        queue.clear();
        assert_eq!(queue.queued(), 0);
        assert!(transport.written().is_empty());
    }
}
