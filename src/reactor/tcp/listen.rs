//! Listening TCP ports: binding, accepting (with a back-off when the process runs out of
//! descriptors), and starting a connection for each accepted socket.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::rc::{Rc, Weak};
use std::time::Duration;

use mio::Interest;
use mio::net::{TcpListener, TcpStream};

use super::transport::{LostNotice, TcpTransport};
use super::{CannotListenError, ListenOptions, factory_do_start, factory_do_stop};
use crate::reactor::address::Address;
use crate::reactor::defer::Deferred;
use crate::reactor::io::{IoHandler, IoKey, Readiness};
use crate::reactor::protocol::Factory;
use crate::reactor::time::DelayedCall;
use crate::reactor::{Reactor, WeakReactor};

/// Connections accepted per readiness event before yielding to the connections already
/// open (Twisted accepts at most 100 per pass); the rest are accepted next iteration.
const ACCEPTS_PER_EVENT: usize = 100;

/// How long accepting pauses after the process ran out of descriptors or memory; each
/// further failure in a row doubles the pause, up to [`ACCEPT_BACKOFF_MAX`]. A connection
/// of the port closing ends the pause at once (a descriptor is free again).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The longest pause of accepting after repeated failures.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

pub(super) struct PortInner {
    reactor: WeakReactor,
    listener: RefCell<Option<TcpListener>>,
    key: Cell<Option<IoKey>>,
    factory: Rc<dyn Factory>,
    address: SocketAddr,
    accept_paused: Cell<bool>,
    /// The next pause after an accept failure (see [`ACCEPT_BACKOFF`]).
    accept_backoff: Cell<Duration>,
    /// The timer that ends the current pause.
    accept_retry: RefCell<Option<DelayedCall>>,
    stopped: Cell<bool>,
    this: Weak<PortInner>,
}

/// A listening TCP port (Twisted's `IListeningPort`).
#[derive(Clone)]
pub struct ListeningPort {
    inner: Rc<PortInner>,
}

impl fmt::Debug for ListeningPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListeningPort")
            .field("address", &self.inner.address)
            .finish()
    }
}

impl ListeningPort {
    /// Binds and listens on `address`, registers the socket, and starts the factory:
    /// [`Reactor::listen_tcp_with`].
    pub(super) fn open(
        reactor: &Reactor,
        address: SocketAddr,
        factory: Rc<dyn Factory>,
        options: ListenOptions,
    ) -> Result<ListeningPort, CannotListenError> {
        let fail = |source| CannotListenError { address, source };
        let mut listener = bind_listener(address, options).map_err(fail)?;
        let bound = listener.local_addr().map_err(fail)?;
        let inner = Rc::new_cyclic(|this| PortInner {
            reactor: reactor.downgrade(),
            listener: RefCell::new(None),
            key: Cell::new(None),
            factory: factory.clone(),
            address: bound,
            accept_paused: Cell::new(false),
            accept_backoff: Cell::new(ACCEPT_BACKOFF),
            accept_retry: RefCell::new(None),
            stopped: Cell::new(false),
            this: this.clone(),
        });
        let key = reactor
            .register_io(&mut listener, Interest::READABLE, inner.clone())
            .map_err(fail)?;
        inner.key.set(Some(key));
        *inner.listener.borrow_mut() = Some(listener);
        factory_do_start(reactor, &factory);
        Ok(ListeningPort { inner })
    }

    /// The listening address, with the port the OS chose for port 0 (P-10, X-15).
    pub fn host(&self) -> SocketAddr {
        self.inner.address
    }

    /// Stops accepting. The socket closes later, then the factory's `stop_factory` runs
    /// if this was its last user, then the returned Deferred fires (P-09). Connections
    /// already accepted stay open.
    pub fn stop_listening(&self) -> Deferred<()> {
        let done = Deferred::new();
        let Some(reactor) = self.inner.reactor.upgrade() else {
            let _ = done.callback(());
            return done;
        };
        let inner = self.inner.clone();
        let fired = done.clone();
        reactor.call_soon(Box::new(move || {
            inner.close();
            let _ = fired.callback(());
        }));
        done
    }
}

impl PortInner {
    fn close(&self) {
        if self.stopped.replace(true) {
            return;
        }
        let reactor = self.reactor.upgrade();
        if let Some(mut listener) = self.listener.borrow_mut().take()
            && let (Some(reactor), Some(key)) = (&reactor, self.key.take())
            && let Err(error) = reactor.deregister_io(&mut listener, key)
        {
            log::debug!("deregistering port {}: {error}", self.address);
        }
        if let Some(reactor) = reactor {
            factory_do_stop(&reactor, &self.factory);
        }
    }

    fn accept_all(&self, reactor: &Reactor) {
        for _ in 0..ACCEPTS_PER_EVENT {
            if self.stopped.get() || self.accept_paused.get() {
                return;
            }
            let accepted = match self.listener.borrow().as_ref() {
                Some(listener) => listener.accept(),
                None => return,
            };
            match accepted {
                Ok((stream, peer)) => {
                    self.accept_backoff.set(ACCEPT_BACKOFF);
                    self.serve(reactor, stream, peer);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    // EMFILE, ENFILE, ENOBUFS, ENOMEM...: the pending connection stays
                    // queued and would fail again at once; pause rather than spin.
                    let delay = self.accept_backoff.get();
                    if delay == ACCEPT_BACKOFF {
                        log::error!("accept on {} failed: {e}; pausing accepts", self.address);
                    } else {
                        log::debug!("accept on {} failed again: {e}", self.address);
                    }
                    self.accept_backoff
                        .set(delay.saturating_mul(2).min(ACCEPT_BACKOFF_MAX));
                    self.accept_paused.set(true);
                    let port = self.this.clone();
                    let retry = reactor.call_later(delay, move || {
                        if let Some(port) = port.upgrade() {
                            port.resume_accepting();
                        }
                    });
                    *self.accept_retry.borrow_mut() = Some(retry);
                    return;
                }
            }
        }
        // Budget spent with connections perhaps still queued: no new edge will come for
        // them, so look again next iteration.
        let port = self.this.clone();
        reactor.call_soon(Box::new(move || {
            if let Some(port) = port.upgrade()
                && let Some(reactor) = port.reactor.upgrade()
            {
                port.accept_all(&reactor);
            }
        }));
    }

    /// Ends a pause of accepting (its timer ran, or a descriptor was freed).
    fn resume_accepting(&self) {
        let retry = self.accept_retry.borrow_mut().take();
        if let Some(retry) = retry {
            let _ = retry.cancel(); // already run, when this is the timer
        }
        if self.accept_paused.replace(false)
            && let Some(reactor) = self.reactor.upgrade()
        {
            self.accept_all(&reactor);
        }
    }

    /// One of this port's connections closed its socket: if accepting is paused for
    /// want of descriptors, try again now.
    pub(super) fn connection_closed(self: Rc<Self>) {
        if self.accept_paused.get()
            && let Some(reactor) = self.reactor.upgrade()
        {
            reactor.call_soon(Box::new(move || self.resume_accepting()));
        }
    }

    /// P-07, P-08: build the protocol, or refuse the connection.
    fn serve(&self, reactor: &Reactor, stream: TcpStream, peer: SocketAddr) {
        let Some(protocol) = self.factory.build_protocol(Address::Tcp(peer)) else {
            drop(stream); // P-08: the client sees a connect, then an orderly close.
            return;
        };
        let connection = TcpTransport::new(reactor, stream, peer, protocol);
        let notice = LostNotice::Port(self.this.clone());
        if let Err(error) = connection.start(reactor, None, Some(notice)) {
            // The protocol never started, so there is nobody else to tell.
            log::error!("could not register connection from {peer}: {error}");
        }
    }
}

impl IoHandler for PortInner {
    fn ready(&self, reactor: &Reactor, _readiness: Readiness) {
        self.accept_all(reactor);
    }

    fn shutdown(&self, _reactor: &Reactor) {
        self.close(); // P-28
    }
}

fn bind_listener(address: SocketAddr, options: ListenOptions) -> io::Result<TcpListener> {
    let domain = socket2::Domain::for_address(address);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if let (SocketAddr::V6(_), Some(v6_only)) = (address, options.v6_only) {
        socket.set_only_v6(v6_only)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(options.backlog)?;
    Ok(TcpListener::from_std(socket.into()))
}
