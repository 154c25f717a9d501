//! Outgoing connections, TCP or UNIX: the [`Connector`] that makes an attempt, times it
//! out, reports how it went to its [`ClientFactory`], and hears of the connection's end.
//! Starting the connect is the socket kind's own (`tcp/`, `unix/`).

use std::cell::Cell;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::num::NonZeroU64;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Duration;

use mio::Interest;
use mio::unix::SourceFd;
use socket2::Socket;

use super::transport::{LostNotice, Registration, StreamTransport};
use super::{
    AlreadyConnectingError, ClientFactory, CompactAddr, NotConnectingError, StartedConnect,
    factory_do_start, factory_do_stop,
};
use crate::reactor::address::Address;
use crate::reactor::io::{IoHandler, IoKey, Readiness};
use crate::reactor::protocol::{CloseReason, ConnectError, Factory, Transport};
use crate::reactor::time::DelayedCall;
use crate::reactor::{Reactor, WeakReactor};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnectorState {
    Disconnected,
    Connecting,
    Connected,
}

struct Attempt {
    /// The connecting socket; `None` while a UNIX connect waits to try again.
    stream: Option<Socket>,
    /// The registry key of the socket, or of the wait (see `Reactor::track_io`).
    key: IoKey,
    /// Whether the socket is in the poll. A connect known to have succeeded when it
    /// started is not: its completion is queued for the next iteration instead, and the
    /// connection registers the socket for reading.
    polled: bool,
    /// The attempt's timeout.
    timer: Option<DelayedCall>,
    /// The next try of a UNIX connect whose listener's queue was full.
    retry: Option<DelayedCall>,
}

/// The first wait before a UNIX connect tries again after the listener's queue was
/// full (EAGAIN: a UNIX connect never waits in the kernel); each further wait doubles,
/// up to [`QUEUE_FULL_RETRY_MAX`], until the attempt's timeout.
const QUEUE_FULL_RETRY: Duration = Duration::from_millis(1);

/// The longest wait between tries of a UNIX connect to a full queue.
const QUEUE_FULL_RETRY_MAX: Duration = Duration::from_millis(100);

/// Counts a connector's attempts. 32 bits, so that it packs with the connector's other
/// small fields; it wraps, and an attempt's events are long gone four billion attempts
/// later.
type AttemptGeneration = u32;

/// A connector's state. Kept small: every client connection keeps its connector for as
/// long as it is open (P-14 reports its end to it).
struct ConnectorInner {
    reactor: WeakReactor,
    destination: CompactAddr,
    factory: Rc<dyn ClientFactory>,
    /// The attempt's timeout, in the 8 bytes of a [`PackedTimeout`]: an
    /// `Option<Duration>` would take 16.
    timeout: PackedTimeout,
    state: Cell<ConnectorState>,
    /// Boxed: only an attempt in progress needs it. A `Cell`, not a `RefCell` (8 bytes
    /// less): it is taken out to be looked at, and no user code runs meanwhile.
    attempt: Cell<Option<Box<Attempt>>>,
    /// The registry key of the connection this connector made; stale once it closed.
    /// A key rather than a `Weak`, which would keep the closed connection's memory.
    connection: Cell<IoKey>,
    /// Attempts started so far; a timer or event of an older attempt is ignored.
    generation: Cell<AttemptGeneration>,
    /// Whether this connector counts as a user of its factory now (P-01): from the
    /// start of an attempt until the failure or loss after which nobody reconnected.
    factory_started: Cell<bool>,
}

/// An optional timeout as nanoseconds plus one, so that `None` is the zero the niche
/// of `NonZeroU64` leaves free. Timeouts beyond `u64::MAX` nanoseconds (584 years)
/// are kept as that.
#[derive(Clone, Copy)]
struct PackedTimeout(Option<NonZeroU64>);

impl PackedTimeout {
    fn new(timeout: Option<Duration>) -> PackedTimeout {
        PackedTimeout(timeout.and_then(|t| {
            let nanos = u64::try_from(t.as_nanos()).unwrap_or(u64::MAX);
            NonZeroU64::new(nanos.saturating_add(1))
        }))
    }

    fn get(self) -> Option<Duration> {
        self.0.map(|n| Duration::from_nanos(n.get() - 1))
    }
}

/// An outgoing connection's handle, passed to every `ClientFactory` callback (P-16).
#[derive(Clone)]
pub struct Connector {
    inner: Rc<ConnectorInner>,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector")
            .field("destination", &self.inner.destination.get())
            .field("state", &self.inner.state.get())
            .finish()
    }
}

impl PartialEq for Connector {
    fn eq(&self, other: &Self) -> bool {
        Rc::ptr_eq(&self.inner, &other.inner)
    }
}

// The size the idle benchmark's figure rests on (BENCHMARKS.md, "idle"): every client
// connection keeps its connector. Release builds only, like the connection's.
#[cfg(all(target_pointer_width = "64", not(debug_assertions)))]
const _: () = assert!(std::mem::size_of::<ConnectorInner>() == 72);

impl Connector {
    /// A connector for `address` that begins its first attempt at once:
    /// [`Reactor::connect_tcp`], [`Reactor::connect_unix`].
    pub(crate) fn start(
        reactor: &Reactor,
        address: Address,
        factory: Rc<dyn ClientFactory>,
        timeout: Option<Duration>,
    ) -> Connector {
        let connector = Connector {
            inner: Rc::new(ConnectorInner {
                reactor: reactor.downgrade(),
                destination: CompactAddr::new(address),
                factory,
                timeout: PackedTimeout::new(timeout),
                state: Cell::new(ConnectorState::Disconnected),
                attempt: Cell::new(None),
                connection: Cell::new(IoKey::NONE),
                generation: Cell::new(0),
                factory_started: Cell::new(false),
            }),
        };
        connector.begin();
        connector
    }

    /// The address as requested (P-16).
    pub fn destination(&self) -> Address {
        self.inner.destination.get()
    }

    /// True while an attempt is under way.
    pub fn is_connecting(&self) -> bool {
        self.inner.state.get() == ConnectorState::Connecting
    }

    /// True while a connection made by this connector is open.
    pub fn is_connected(&self) -> bool {
        self.inner.state.get() == ConnectorState::Connected
    }

    /// Starts a new attempt; valid only while disconnected, e.g. from
    /// `client_connection_failed` or `client_connection_lost` (P-17).
    pub fn connect(&self) -> Result<(), AlreadyConnectingError> {
        if self.inner.state.get() != ConnectorState::Disconnected {
            return Err(AlreadyConnectingError);
        }
        self.begin();
        Ok(())
    }

    /// Abandons the attempt under way: `client_connection_failed(UserAborted)` and the
    /// factory's stop run before this returns (P-18).
    pub fn stop_connecting(&self) -> Result<(), NotConnectingError> {
        if self.inner.state.get() != ConnectorState::Connecting {
            return Err(NotConnectingError);
        }
        self.fail(ConnectError::UserAborted);
        Ok(())
    }

    /// Stops connecting, or closes the connection, whichever applies (P-19).
    pub fn disconnect(&self) {
        match self.inner.state.get() {
            ConnectorState::Connecting => {
                let _ = self.stop_connecting();
            }
            ConnectorState::Connected => {
                if let Some(reactor) = self.inner.reactor.upgrade()
                    && let Some(connection) = reactor.connection(self.inner.connection.get())
                {
                    connection.lose_connection();
                }
            }
            ConnectorState::Disconnected => {}
        }
    }

    fn factory(&self) -> Rc<dyn Factory> {
        // Upcast to the base trait, for the usage counter shared with ports.
        let factory: Rc<dyn Factory> = self.inner.factory.clone();
        factory
    }

    /// Starts an attempt: socket, non-blocking connect, timer, `started_connecting`
    /// (P-11). Failures are reported from the loop, never from here (P-13).
    fn begin(&self) {
        let Some(reactor) = self.inner.reactor.upgrade() else {
            return;
        };
        self.inner.state.set(ConnectorState::Connecting);
        // P-11, P-17: a connect() made later than inside the failure or loss callback
        // finds the factory stopped, and starts it again (as Twisted's connector does).
        if !self.inner.factory_started.replace(true) {
            factory_do_start(&reactor, &self.factory());
        }
        let generation = self.inner.generation.get().wrapping_add(1);
        self.inner.generation.set(generation);
        self.try_connect(&reactor, generation, None, QUEUE_FULL_RETRY);
        self.inner.factory.started_connecting(self);
    }

    /// Starts the attempt's socket: registered and waiting to turn writable, or (a UNIX
    /// listener's queue was full) waiting `wait` to try again, or failed (reported
    /// later). `timer` is the attempt's timeout if a try before this one started it.
    fn try_connect(
        &self,
        reactor: &Reactor,
        generation: AttemptGeneration,
        timer: Option<DelayedCall>,
        wait: Duration,
    ) {
        // On loopback a refusal is often known before connect() returns: it is reported
        // (later, P-13) without registering a socket that is already dead.
        let started = match self.inner.destination.get() {
            Address::Tcp(address) => reactor.start_tcp_connect(address),
            Address::Unix(address) => crate::reactor::unix::start_connect(&address),
        };
        let handler = || -> Rc<dyn IoHandler> {
            Rc::new(AttemptHandler {
                connector: self.inner.clone(),
                generation,
            })
        };
        let queue_full = |e: &io::Error| {
            e.kind() == io::ErrorKind::WouldBlock
                && matches!(self.inner.destination, CompactAddr::Unix(_))
        };
        let tracked = match started {
            // Connected already (loopback TCP, UNIX): registering for writability and
            // then asking whether it worked would cost two syscalls. It completes where
            // the poll's event would have completed it, in the next poll's I/O phase,
            // never inside this call (P-12); the registry entry (not in the poll) lets a
            // shutdown before then end the attempt.
            Ok(StartedConnect {
                socket,
                connected: true,
            }) => reactor.track_io(handler()).map(|key| {
                reactor.ready_next_poll(key);
                (Some(socket), key, None, false)
            }),
            // Polled for writing, which says the connect finished (see `attempt_ready`);
            // the connection changes the interest to reading once it starts.
            Ok(StartedConnect { socket, .. }) => {
                let fd = socket.as_raw_fd();
                reactor
                    .register_io(&mut SourceFd(&fd), Interest::WRITABLE, handler())
                    .map(|key| (Some(socket), key, None, true))
            }
            // The wait is registered (without a socket) so that the reactor's shutdown
            // ends it as it ends a connecting socket's attempt; its handler also keeps
            // the connector, which the caller may have dropped.
            Err(error) if queue_full(&error) => reactor.track_io(handler()).map(|key| {
                let connector = Rc::downgrade(&self.inner);
                let retry = reactor.call_later(wait, move || {
                    if let Some(inner) = connector.upgrade() {
                        Connector { inner }.retry(generation, wait);
                    }
                });
                (None, key, Some(retry), false)
            }),
            Err(error) => Err(error),
        };
        let (stream, key, retry, polled) = match tracked {
            Ok(tracked) => tracked,
            Err(error) => {
                if let Some(timer) = timer {
                    let _ = timer.cancel();
                }
                return self.fail_later(reactor, generation, error);
            }
        };
        let timer = timer.or_else(|| self.start_timer(reactor, generation));
        self.inner.attempt.set(Some(Box::new(Attempt {
            stream,
            key,
            polled,
            timer,
            retry,
        })));
    }

    /// Runs `f` on the attempt in progress, if any. `f` must not reach this connector
    /// again: the attempt is out of its cell meanwhile.
    fn with_attempt<R>(&self, f: impl FnOnce(Option<&Attempt>) -> R) -> R {
        let attempt = self.inner.attempt.take();
        let result = f(attempt.as_deref());
        self.inner.attempt.set(attempt);
        result
    }

    /// The attempt's timeout, if it has one.
    fn start_timer(&self, reactor: &Reactor, generation: AttemptGeneration) -> Option<DelayedCall> {
        let timeout = self.inner.timeout.get()?;
        let connector = Rc::downgrade(&self.inner);
        Some(reactor.call_later(timeout, move || {
            if let Some(inner) = connector.upgrade() {
                let connector = Connector { inner };
                if connector.inner.generation.get() == generation {
                    connector.fail(ConnectError::TimedOut);
                }
            }
        }))
    }

    /// A UNIX connect whose listener's queue was full tries again.
    fn retry(&self, generation: AttemptGeneration, waited: Duration) {
        if self.inner.generation.get() != generation || !self.is_connecting() {
            return;
        }
        let Some(reactor) = self.inner.reactor.upgrade() else {
            return;
        };
        let Some(attempt) = self.inner.attempt.take() else {
            return;
        };
        reactor.forget_io(attempt.key);
        let wait = waited.saturating_mul(2).min(QUEUE_FULL_RETRY_MAX);
        self.try_connect(&reactor, generation, attempt.timer, wait);
    }

    fn fail_later(&self, reactor: &Reactor, generation: AttemptGeneration, error: io::Error) {
        let connector = self.clone();
        reactor.call_soon(Box::new(move || {
            if connector.inner.generation.get() == generation && connector.is_connecting() {
                connector.fail(ConnectError::from_io(error));
            }
        }));
    }

    /// Drops the attempt's socket and timers. The socket is closed, which also takes it
    /// out of the poll, so only its registry slot needs freeing.
    fn end_attempt(&self) {
        let Some(attempt) = self.inner.attempt.take() else {
            return;
        };
        for timer in [attempt.timer, attempt.retry].into_iter().flatten() {
            let _ = timer.cancel();
        }
        if let Some(reactor) = self.inner.reactor.upgrade() {
            reactor.forget_io(attempt.key);
        }
        drop(attempt.stream);
    }

    /// P-13: `client_connection_failed`, then the factory's stop unless it reconnected.
    fn fail(&self, reason: ConnectError) {
        self.end_attempt();
        self.inner.state.set(ConnectorState::Disconnected);
        self.inner.factory.client_connection_failed(self, &reason);
        self.stop_factory_unless_reconnected();
    }

    fn stop_factory_unless_reconnected(&self) {
        if self.inner.state.get() == ConnectorState::Disconnected
            && self.inner.factory_started.replace(false)
            && let Some(reactor) = self.inner.reactor.upgrade()
        {
            factory_do_stop(&reactor, &self.factory());
        }
    }

    /// The socket is writable (or in error): find out how the connect went.
    fn attempt_ready(&self, readiness: Readiness) {
        // A socket outside the poll is told once, when it had connected at the start.
        let known_connected =
            self.with_attempt(|a| a.is_some_and(|a| a.stream.is_some() && !a.polled));
        if known_connected {
            return self.completed();
        }
        // A TCP socket is not reported writable while its handshake is under way, and a
        // failed one is reported in error or hung up: writable alone is success.
        if readiness.writable
            && !readiness.error
            && !readiness.write_closed
            && let Some(peer) = self.peer_as_destination()
        {
            return self.connected(Address::Tcp(peer));
        }
        match self.outcome() {
            Some(Ok(peer)) => self.connected(peer),
            Some(Err(error)) => self.fail(ConnectError::from_io(error)),
            // Not connected yet and no error: a spurious wake-up; wait.
            None => {}
        }
    }

    /// How the attempt's connect went: the peer's address, the error, or `None` while
    /// it is still in progress (or there is no socket).
    fn outcome(&self) -> Option<io::Result<Address>> {
        self.with_attempt(|attempt| {
            let stream = attempt.and_then(|a| a.stream.as_ref())?;
            // The peer address first: once it is known the connect succeeded, and the
            // common case costs one syscall instead of two. Only without it does the
            // socket's pending error tell a failure from a spurious wake-up.
            Some(match stream.peer_addr() {
                Ok(peer) => Ok(Address::from_sockaddr(&peer)),
                Err(e) => match stream.take_error() {
                    Ok(Some(error)) => Err(error),
                    Ok(None) if e.kind() == io::ErrorKind::NotConnected => return None,
                    Ok(None) => Err(e),
                    Err(error) => Err(error),
                },
            })
        })
    }

    /// The destination, when it is what `getpeername` would answer for the connected
    /// socket: a TCP address with no flow label and no scope (those the kernel may
    /// rewrite). A UNIX peer is named as the listener bound itself, which may differ
    /// from the path connected to.
    fn peer_as_destination(&self) -> Option<SocketAddr> {
        match self.inner.destination.get() {
            Address::Tcp(peer)
                if matches!(peer, SocketAddr::V4(_))
                    || matches!(peer, SocketAddr::V6(v6) if v6.flowinfo() == 0 && v6.scope_id() == 0) =>
            {
                Some(peer)
            }
            _ => None,
        }
    }

    /// A connect that had succeeded when it started (see `try_connect`).
    fn completed(&self) {
        match self.peer_as_destination() {
            Some(peer) => self.connected(Address::Tcp(peer)),
            // Ask. The socket is not polled, so there is no later event to wait for: a
            // connected socket that cannot say so failed.
            None => match self.outcome() {
                Some(Ok(peer)) => self.connected(peer),
                Some(Err(error)) => self.fail(ConnectError::from_io(error)),
                None => {
                    let error = io::Error::from(io::ErrorKind::NotConnected);
                    self.fail(ConnectError::from_io(error));
                }
            },
        }
    }

    /// P-12 and P-20.
    fn connected(&self, peer: Address) {
        let Some(reactor) = self.inner.reactor.upgrade() else {
            return;
        };
        let Some(attempt) = self.inner.attempt.take() else {
            return;
        };
        // Only called for an attempt with a socket (see attempt_ready).
        let Attempt {
            stream: Some(stream),
            key,
            polled,
            timer,
            retry: _,
        } = *attempt
        else {
            return;
        };
        if let Some(timer) = timer {
            let _ = timer.cancel();
        }
        self.inner.state.set(ConnectorState::Connected);
        let Some(protocol) = self.inner.factory.build_protocol(peer.clone()) else {
            // Closing the socket takes it out of the poll.
            reactor.forget_io(key);
            drop(stream);
            self.lost(&CloseReason::Done);
            return;
        };
        let connection = StreamTransport::new(&reactor, stream, peer, protocol);
        self.inner.connection.set(key);
        let notice = LostNotice::Connector(self.clone());
        let registration = if polled {
            Registration::Polled(key)
        } else {
            Registration::Tracked(key)
        };
        if let Err(error) = connection.start(&reactor, registration, Some(notice)) {
            // No protocol method ran: to the factory the attempt failed (P-13).
            self.fail(ConnectError::Other(Rc::new(error)));
        }
    }

    /// P-14: after the protocol's `connection_lost`.
    pub(super) fn lost(&self, reason: &CloseReason) {
        self.inner.state.set(ConnectorState::Disconnected);
        self.inner.factory.client_connection_lost(self, reason);
        self.stop_factory_unless_reconnected();
    }
}

/// The registry's handler for a connect in progress. It holds the connector strongly:
/// a caller may drop the `Connector` that `connect_tcp` returned, and the attempt must
/// go on.
struct AttemptHandler {
    connector: Rc<ConnectorInner>,
    generation: AttemptGeneration,
}

impl IoHandler for AttemptHandler {
    fn ready(&self, _reactor: &Reactor, readiness: Readiness) {
        if self.connector.generation.get() == self.generation {
            let inner = self.connector.clone();
            Connector { inner }.attempt_ready(readiness);
        }
    }

    fn shutdown(&self, _reactor: &Reactor) {
        if self.connector.generation.get() == self.generation {
            let inner = self.connector.clone();
            let error = io::Error::other("the reactor is shutting down");
            Connector { inner }.fail(ConnectError::Other(Rc::new(error)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packed_timeout_keeps_every_duration_to_the_nanosecond_and_caps_the_huge() {
        assert_eq!(PackedTimeout::new(None).get(), None);
        for t in [
            Duration::ZERO,
            Duration::from_nanos(1),
            Duration::from_millis(30_000),
            Duration::new(7, 123_456_789),
        ] {
            assert_eq!(PackedTimeout::new(Some(t)).get(), Some(t));
        }
        let cap = Duration::from_nanos(u64::MAX - 1);
        assert_eq!(PackedTimeout::new(Some(Duration::MAX)).get(), Some(cap));
    }
}
