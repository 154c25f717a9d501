//! Listening ports, TCP or UNIX: accepting (with a back-off when the process runs out of
//! descriptors), starting a connection for each accepted socket, and removing a UNIX
//! port's socket file when it stops (U-03). Binding is the socket kind's own (`tcp/`,
//! `unix/`).

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::rc::{Rc, Weak};
use std::time::Duration;

use mio::Interest;
use mio::unix::SourceFd;
use socket2::Socket;

use super::transport::{LostNotice, Registration, StreamTransport};
use super::{factory_do_start, factory_do_stop};
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

/// The socket file a UNIX port created: removed when the port stops, unless it is no
/// longer the same file (U-03).
#[derive(Debug)]
pub(crate) struct SocketFile {
    /// Where it is.
    pub(crate) path: PathBuf,
    /// Its device and inode when it was made.
    pub(crate) identity: (u64, u64),
}

impl SocketFile {
    /// The file at `path`, as it is now.
    pub(crate) fn at(path: PathBuf) -> io::Result<SocketFile> {
        let meta = std::fs::symlink_metadata(&path)?;
        Ok(SocketFile {
            path,
            identity: (meta.dev(), meta.ino()),
        })
    }

    /// Removes the file if it is still the one this port made.
    fn remove(&self) {
        match std::fs::symlink_metadata(&self.path) {
            Ok(meta) if (meta.dev(), meta.ino()) == self.identity => {
                if let Err(error) = std::fs::remove_file(&self.path) {
                    log::warn!("could not remove {}: {error}", self.path.display());
                }
            }
            Ok(_) => log::debug!(
                "{} is no longer our socket; left alone",
                self.path.display()
            ),
            Err(error) => log::debug!("{}: {error}", self.path.display()),
        }
    }
}

/// A listening socket and what it accepts for. `tcp::ListeningPort` and
/// `unix::UnixPort` are handles on one.
pub(crate) struct PortInner {
    reactor: WeakReactor,
    listener: RefCell<Option<Socket>>,
    key: Cell<Option<IoKey>>,
    factory: Rc<dyn Factory>,
    address: Address,
    /// The UNIX socket file to remove when the port stops.
    file: Option<SocketFile>,
    accept_paused: Cell<bool>,
    /// The next pause after an accept failure (see [`ACCEPT_BACKOFF`]).
    accept_backoff: Cell<Duration>,
    /// The timer that ends the current pause.
    accept_retry: RefCell<Option<DelayedCall>>,
    stopped: Cell<bool>,
    this: Weak<PortInner>,
}

impl PortInner {
    /// Registers a bound and listening `socket` (non-blocking) and starts the factory
    /// (P-06). `file` is the UNIX socket file to remove when the port stops.
    pub(crate) fn open(
        reactor: &Reactor,
        socket: Socket,
        address: Address,
        factory: Rc<dyn Factory>,
        file: Option<SocketFile>,
    ) -> io::Result<Rc<PortInner>> {
        let inner = Rc::new_cyclic(|this| PortInner {
            reactor: reactor.downgrade(),
            listener: RefCell::new(None),
            key: Cell::new(None),
            factory: factory.clone(),
            address,
            file,
            accept_paused: Cell::new(false),
            accept_backoff: Cell::new(ACCEPT_BACKOFF),
            accept_retry: RefCell::new(None),
            stopped: Cell::new(false),
            this: this.clone(),
        });
        let fd = socket.as_raw_fd();
        let key = match reactor.register_io(&mut SourceFd(&fd), Interest::READABLE, inner.clone()) {
            Ok(key) => key,
            Err(error) => {
                // Nobody else will: the file this port made goes with it.
                if let Some(file) = &inner.file {
                    file.remove();
                }
                return Err(error);
            }
        };
        inner.key.set(Some(key));
        *inner.listener.borrow_mut() = Some(socket);
        factory_do_start(reactor, &factory);
        Ok(inner)
    }

    /// The listening address (P-10, X-15, U-06).
    pub(crate) fn address(&self) -> &Address {
        &self.address
    }

    /// Stops accepting. The socket closes later, then the factory's `stop_factory` runs
    /// if this was its last user, then the returned Deferred fires (P-09, U-03).
    pub(crate) fn stop_listening(self: &Rc<Self>) -> Deferred<()> {
        let done = Deferred::new();
        let Some(reactor) = self.reactor.upgrade() else {
            let _ = done.callback(());
            return done;
        };
        let inner = self.clone();
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
        let listener = self.listener.borrow_mut().take();
        if let Some(listener) = listener {
            if let (Some(reactor), Some(key)) = (&reactor, self.key.take())
                && let Err(error) = reactor.deregister_io(&mut SourceFd(&listener.as_raw_fd()), key)
            {
                log::debug!("deregistering port {}: {error}", self.address);
            }
            drop(listener);
            // U-03: after the close, so that nothing can connect to a file that is gone.
            if let Some(file) = &self.file {
                file.remove();
            }
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
                Some(listener) => accept(listener),
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
    fn serve(&self, reactor: &Reactor, stream: Socket, peer: Address) {
        let Some(protocol) = self.factory.build_protocol(peer.clone()) else {
            drop(stream); // P-08: the client sees a connect, then an orderly close.
            return;
        };
        let connection = StreamTransport::new(reactor, stream, peer.clone(), protocol);
        let notice = LostNotice::Port(self.this.clone());
        if let Err(error) = connection.start(reactor, Registration::New, Some(notice)) {
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

/// Accepts one connection: a non-blocking, close-on-exec socket and its peer's address.
fn accept(listener: &Socket) -> io::Result<(Socket, Address)> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let (socket, peer) = listener.accept4(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)?;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let (socket, peer) = {
        let (socket, peer) = listener.accept()?;
        socket.set_nonblocking(true)?;
        (socket, peer)
    };
    Ok((socket, Address::from_sockaddr(&peer)))
}
