//! UNIX domain stream sockets on the reactor (Twisted's `listenUNIX`/`connectUNIX`):
//! [`Reactor::listen_unix`] and [`Reactor::connect_unix`], with the same Protocol,
//! Factory, Transport and Connector as TCP. The connection, the accepting and the
//! connector are the shared stream code (`reactor::stream`); this module makes the
//! sockets: binding a path with its permission bits, taking over a stale socket file
//! when asked, and starting a connect.
//!
//! A path port removes its socket file when it stops or the reactor shuts down, if the
//! file is still the one it made (U-03). Linux abstract names (`@name` on command lines)
//! have no file: no mode, nothing to remove (U-04). A UNIX connection's transport tells
//! who is at the other end ([`Transport::peer_credentials`]).
//!
//! [`Transport::peer_credentials`]: crate::reactor::Transport::peer_credentials

use std::fmt;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use socket2::{Domain, Socket, Type};

use super::Reactor;
use super::address::{Address, UnixAddress};
use super::defer::Deferred;
use super::protocol::Factory;
use super::stream::{
    CannotListenError, ClientFactory, Connector, PortInner, SocketFile, StartedConnect,
};

mod endpoint;

pub use endpoint::{NoProtocol, UnixCheckError, UnixConnectError, UnixEndpoint};

/// The permission bits a socket file gets unless told otherwise: Twisted's default
/// (U-02). Anyone who can reach the directory may connect; pass a stricter mode (e.g.
/// 0o600) for a socket only its owner should use.
pub const DEFAULT_MODE: u32 = 0o666;

/// Options of a listening UNIX socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnixListenOptions {
    /// The accept queue length passed to `listen`.
    pub backlog: i32,
    /// The socket file's permission bits, set whatever the umask (U-02). Ignored for
    /// abstract names (U-04).
    pub mode: u32,
    /// Remove a socket file nobody accepts on (a connect to it is refused) before
    /// binding, as left by a server that crashed. A path that is not a socket is never
    /// removed, and a socket something accepts on is never taken over (U-02). The test
    /// is a connect, which a live server sees as a connection closed at once.
    pub remove_stale: bool,
}

impl Default for UnixListenOptions {
    fn default() -> Self {
        UnixListenOptions {
            backlog: 1024,
            mode: DEFAULT_MODE,
            remove_stale: false,
        }
    }
}

/// A listening UNIX socket (Twisted's `IListeningPort` of `listenUNIX`).
#[derive(Clone)]
pub struct UnixPort {
    inner: Rc<PortInner>,
}

impl fmt::Debug for UnixPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnixPort")
            .field("address", self.inner.address())
            .finish()
    }
}

impl UnixPort {
    /// The address it listens on: the path or abstract name it was given (U-06).
    pub fn host(&self) -> UnixAddress {
        match self.inner.address() {
            Address::Unix(address) => address.clone(),
            Address::Tcp(_) => unreachable!("a UNIX port has a UNIX address"),
        }
    }

    /// Stops accepting. The socket closes later and its file is removed (if it is still
    /// the one this port made), then the factory's `stop_factory` runs if this was its
    /// last user, then the returned Deferred fires (P-09, U-03). Connections already
    /// accepted stay open.
    pub fn stop_listening(&self) -> Deferred<()> {
        self.inner.stop_listening()
    }
}

impl Reactor {
    /// Listens on `address` with default options; see [`Reactor::listen_unix_with`].
    pub fn listen_unix(
        &self,
        address: UnixAddress,
        factory: Rc<dyn Factory>,
    ) -> Result<UnixPort, CannotListenError> {
        self.listen_unix_with(address, factory, UnixListenOptions::default())
    }

    /// Binds, sets the permission bits and listens at once (failure:
    /// `CannotListenError`, factory untouched; an existing path fails with "address in
    /// use" unless it is a stale socket and `remove_stale` is set), then starts the
    /// factory (P-06, U-02).
    pub fn listen_unix_with(
        &self,
        address: UnixAddress,
        factory: Rc<dyn Factory>,
        options: UnixListenOptions,
    ) -> Result<UnixPort, CannotListenError> {
        let fail = |source| CannotListenError {
            address: Address::Unix(address.clone()),
            source,
        };
        let (socket, file) = bind_listener(&address, options).map_err(fail)?;
        let inner = PortInner::open(self, socket, Address::Unix(address.clone()), factory, file)
            .map_err(fail)?;
        Ok(UnixPort { inner })
    }

    /// Connects to the UNIX socket at `address` (P-11): the same connector and
    /// factory calls as [`Reactor::connect_tcp`]. A path that does not exist (ENOENT),
    /// a socket nobody accepts on (refused), one without permission (EACCES) or a file
    /// that is not a socket (ENOTSOCK, where Linux itself says refused) fail the
    /// attempt through `client_connection_failed`, from the loop (U-05, P-13).
    pub fn connect_unix(
        &self,
        address: UnixAddress,
        factory: Rc<dyn ClientFactory>,
        timeout: Option<Duration>,
    ) -> Connector {
        Connector::start(self, Address::Unix(address), factory, timeout)
    }
}

/// A non-blocking UNIX stream socket.
fn new_socket() -> io::Result<Socket> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        Socket::new(Domain::UNIX, Type::STREAM.nonblocking(), None)
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
        socket.set_nonblocking(true)?;
        Ok(socket)
    }
}

/// Begins a non-blocking connect to `address`. A UNIX connect completes or fails inside
/// the call; a listener whose queue is full answers EAGAIN, which fails the attempt
/// like any other error (there is no connect in progress to wait for).
pub(crate) fn start_connect(address: &UnixAddress) -> io::Result<StartedConnect> {
    let target = address.to_sockaddr()?;
    let socket = new_socket()?;
    match socket.connect(&target) {
        Ok(()) => Ok(StartedConnect {
            socket,
            connected: true,
        }),
        Err(error) if error.raw_os_error() == Some(libc::EINPROGRESS) => Ok(StartedConnect {
            socket,
            connected: false,
        }),
        Err(error) => Err(not_a_socket(address, error)),
    }
}

/// Linux refuses a connect to a file that is not a socket (a regular file, a
/// directory) with ECONNREFUSED, as if a dead server had left it: the caller is told
/// ENOTSOCK instead ("Socket operation on non-socket"), which is what is wrong. Only
/// a refused connect to a path pays for the `stat`.
fn not_a_socket(address: &UnixAddress, error: io::Error) -> io::Error {
    if error.kind() != io::ErrorKind::ConnectionRefused {
        return error;
    }
    // `connect` follows symbolic links, so the file it refused is the target's.
    let not_socket = address
        .path()
        .and_then(|path| std::fs::metadata(path).ok())
        .is_some_and(|meta| !meta.file_type().is_socket());
    if not_socket {
        io::Error::from_raw_os_error(libc::ENOTSOCK)
    } else {
        error
    }
}

/// Binds (taking over a stale socket file if asked), sets the mode, then listens: the
/// mode is set before anyone can connect, since a connect before `listen` is refused.
fn bind_listener(
    address: &UnixAddress,
    options: UnixListenOptions,
) -> io::Result<(Socket, Option<SocketFile>)> {
    let target = address.to_sockaddr()?;
    let socket = new_socket()?;
    match socket.bind(&target) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::AddrInUse && options.remove_stale => {
            match address.path() {
                Some(path) if is_stale_socket(path) => {
                    log::info!("removing stale socket {}", path.display());
                    std::fs::remove_file(path)?;
                    socket.bind(&target)?;
                }
                _ => return Err(error),
            }
        }
        Err(error) => return Err(error),
    }
    let file = match address.path() {
        Some(path) => {
            // From here on the file is ours: remove it again if listening fails.
            let file = SocketFile::at(path.to_path_buf())?;
            let ready =
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(options.mode))
                    .and_then(|()| socket.listen(options.backlog));
            if let Err(error) = ready {
                let _ = std::fs::remove_file(path);
                return Err(error);
            }
            Some(file)
        }
        None => {
            socket.listen(options.backlog)?;
            None
        }
    };
    Ok((socket, file))
}

/// True when `path` is a socket file and a connect to it is refused: nobody accepts on
/// it. Anything else (not a socket, a live listener, a full queue, no permission) is
/// not stale.
fn is_stale_socket(path: &Path) -> bool {
    let is_socket = std::fs::symlink_metadata(path)
        .map(|meta| meta.file_type().is_socket())
        .unwrap_or(false);
    if !is_socket {
        return false;
    }
    let probe = UnixAddress::Path(path.to_path_buf());
    match start_connect(&probe) {
        Err(error) => error.kind() == io::ErrorKind::ConnectionRefused,
        Ok(_) => false,
    }
}
