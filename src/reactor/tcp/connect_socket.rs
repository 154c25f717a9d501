//! Starting a non-blocking TCP connect, and reusing the socket of a connect that was
//! refused at once.
//!
//! A port scan is mostly refusals, and on loopback (or any address the kernel answers
//! for itself) a refusal is known before `connect()` returns: the SYN and the peer's
//! RST are both processed inside the call. Creating and closing a socket for each such
//! attempt costs the kernel more than the connect itself (measured on Linux: 20,000
//! refused ports take 0.28 s of system time with a socket each, 0.17 s reusing one).
//!
//! On Linux a TCP socket whose connect failed can connect again: a second `connect()`
//! on a socket whose attempt has ended reports the attempt's error and resets the socket
//! to unconnected, releasing its local port. That second call also replaces the usual
//! `getsockopt(SO_ERROR)`, since it tells all three outcomes apart: success (0), still
//! in progress (`EALREADY`) or failed (the error). So a refused attempt costs two
//! syscalls, and its socket is kept as the reactor's spare for the next connect of the
//! same address family. Only a socket that was never registered with the poll and never
//! connected is kept; anything unexpected from a reused socket makes a fresh one.
//!
//! The second call is made only for loopback destinations (and the unspecified address,
//! which means this host): elsewhere the answer takes a round trip, the call would only
//! ever say "in progress", and the socket goes straight to the poll, whose first event
//! tells success from failure. This host's other addresses are answered inside the call
//! too, but cannot be told apart without asking the system; they take the poll's way.
//!
//! On systems other than Linux the socket's pending error is read instead of the second
//! call, and nothing is reused.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, SockAddr, Socket, Type};

use crate::reactor::stream::StartedConnect;

/// Sockets kept for reuse, one per address family.
#[derive(Debug, Default)]
pub(crate) struct SpareSockets {
    v4: Option<Socket>,
    v6: Option<Socket>,
}

impl SpareSockets {
    fn slot(&mut self, destination: &SocketAddr) -> &mut Option<Socket> {
        match destination {
            SocketAddr::V4(_) => &mut self.v4,
            SocketAddr::V6(_) => &mut self.v6,
        }
    }

    /// How many sockets are kept.
    #[cfg(test)]
    fn len(&self) -> usize {
        usize::from(self.v4.is_some()) + usize::from(self.v6.is_some())
    }
}

/// Begins a non-blocking connect to `destination`, on a spare socket when there is one.
///
/// `Ok` is a socket that is connecting (the caller waits for it to become writable) or,
/// as its `connected` says, already connected. `Err` is a failure already known, such as
/// a refusal on loopback.
pub(crate) fn start_connect(
    spares: &mut SpareSockets,
    destination: SocketAddr,
) -> io::Result<StartedConnect> {
    let address = SockAddr::from(destination);
    if let Some(socket) = spares.slot(&destination).take() {
        match begin(spares, socket, &destination, &address) {
            // The reused socket was in a state a new connect cannot start from; a fresh
            // one does not inherit that.
            Err(error) if confused_socket(&error) => {
                log::debug!("spare socket could not connect to {destination}: {error}");
            }
            result => return result,
        }
    }
    let socket = new_socket(&destination)?;
    begin(spares, socket, &destination, &address)
}

/// The errors a connect on a socket in the wrong state gives, as opposed to an answer
/// about the destination.
fn confused_socket(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EISCONN | libc::EALREADY | libc::EINVAL | libc::ECONNABORTED | libc::EBADF)
    )
}

fn new_socket(destination: &SocketAddr) -> io::Result<Socket> {
    let domain = Domain::for_address(*destination);
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        // Non-blocking (and close-on-exec, which socket2 always sets) in the one call.
        Socket::new(domain, Type::STREAM.nonblocking(), None)
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let socket = Socket::new(domain, Type::STREAM, None)?;
        socket.set_nonblocking(true)?;
        Ok(socket)
    }
}

fn is_in_progress(error: &io::Error) -> bool {
    error.raw_os_error() == Some(libc::EINPROGRESS)
}

fn begin(
    spares: &mut SpareSockets,
    socket: Socket,
    destination: &SocketAddr,
    address: &SockAddr,
) -> io::Result<StartedConnect> {
    match socket.connect(address) {
        Ok(()) => return Ok(connected(socket)),
        Err(error) if is_in_progress(&error) => {}
        Err(error) => return Err(error),
    }
    if !answered_locally(destination) {
        return Ok(in_progress(socket));
    }
    check(spares, socket, destination, address)
}

/// Whether the kernel answers a connect to `destination` itself, inside the call.
fn answered_locally(destination: &SocketAddr) -> bool {
    let ip = destination.ip();
    let ip = match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
        v4 => v4,
    };
    ip.is_loopback() || ip.is_unspecified()
}

fn connected(socket: Socket) -> StartedConnect {
    StartedConnect {
        socket,
        connected: true,
    }
}

fn in_progress(socket: Socket) -> StartedConnect {
    StartedConnect {
        socket,
        connected: false,
    }
}

/// Linux: a second `connect()` tells how the attempt stands (see the module comment).
/// Its success is final: the caller need not wait for writability nor ask again.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn check(
    spares: &mut SpareSockets,
    socket: Socket,
    destination: &SocketAddr,
    address: &SockAddr,
) -> io::Result<StartedConnect> {
    match socket.connect(address) {
        Ok(()) => Ok(connected(socket)),
        Err(error) if error.raw_os_error() == Some(libc::EALREADY) => Ok(in_progress(socket)),
        Err(error) => {
            // The attempt ended and the call reset the socket: it can connect again.
            if error.kind() == io::ErrorKind::ConnectionRefused {
                *spares.slot(destination) = Some(socket);
            }
            Err(error)
        }
    }
}

/// Elsewhere: the socket's pending error; a failed socket is closed.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn check(
    _spares: &mut SpareSockets,
    socket: Socket,
    _destination: &SocketAddr,
    _address: &SockAddr,
) -> io::Result<StartedConnect> {
    match socket.take_error()? {
        None => Ok(in_progress(socket)),
        Some(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::os::fd::AsRawFd;

    /// A loopback port nobody listens on: bound, then closed.
    fn closed_port() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("local address")
    }

    /// Waits (bounded) until `stream`'s connect has finished, and returns its outcome.
    fn outcome(stream: &Socket) -> io::Result<()> {
        for _ in 0..1000 {
            match stream.peer_addr() {
                Ok(_) => return Ok(()),
                Err(_) => {
                    if let Some(error) = stream.take_error()? {
                        return Err(error);
                    }
                }
            }
            std::thread::yield_now();
        }
        Err(io::Error::other("connect did not finish"))
    }

    #[test]
    fn a_refused_connect_keeps_its_socket_and_the_next_connect_reuses_it() {
        let mut spares = SpareSockets::default();
        let refused = closed_port();
        let error = start_connect(&mut spares, refused).expect_err("nobody listens");
        assert_eq!(error.kind(), io::ErrorKind::ConnectionRefused);
        assert_eq!(spares.len(), 1);
        let spare_fd = spares.v4.as_ref().map(AsRawFd::as_raw_fd);

        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let open = listener.local_addr().expect("local address");
        let stream = start_connect(&mut spares, open).expect("connects").socket;
        assert_eq!(
            Some(stream.as_raw_fd()),
            spare_fd,
            "the spare socket was reused"
        );
        assert_eq!(spares.len(), 0);
        outcome(&stream).expect("handshake completes");
        let (_accepted, peer) = listener.accept().expect("accept");
        let local = stream.local_addr().expect("local address");
        assert_eq!(Some(peer), local.as_socket());
    }

    #[test]
    fn one_socket_serves_a_run_of_refusals() {
        let mut spares = SpareSockets::default();
        let refused = closed_port();
        let mut fds = Vec::new();
        for _ in 0..50 {
            let error = start_connect(&mut spares, refused).expect_err("nobody listens");
            assert_eq!(error.kind(), io::ErrorKind::ConnectionRefused);
            fds.push(spares.v4.as_ref().map(AsRawFd::as_raw_fd));
        }
        fds.dedup();
        assert_eq!(fds.len(), 1, "every attempt used the same socket: {fds:?}");
    }

    #[test]
    fn spares_are_kept_per_address_family() {
        let mut spares = SpareSockets::default();
        start_connect(&mut spares, closed_port()).expect_err("nobody listens");
        let Ok(listener) = TcpListener::bind("[::1]:0") else {
            eprintln!("skipped: this machine has no IPv6 loopback");
            return;
        };
        let open = listener.local_addr().expect("local address");
        let stream = start_connect(&mut spares, open).expect("connects").socket;
        outcome(&stream).expect("handshake completes over IPv6");
        assert!(spares.v4.is_some(), "the IPv4 spare is untouched");
    }

    #[test]
    fn a_spare_that_cannot_connect_is_replaced_by_a_fresh_socket() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let open = listener.local_addr().expect("local address");
        // A connected socket as the spare: connecting it again gives EISCONN.
        let busy = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        busy.connect(&SockAddr::from(open)).expect("connect");
        let mut spares = SpareSockets {
            v4: Some(busy),
            v6: None,
        };
        let stream = start_connect(&mut spares, open)
            .expect("a fresh socket connects")
            .socket;
        outcome(&stream).expect("handshake completes");
        let local = stream.local_addr().expect("local address");
        let local = local.as_socket().expect("an IP address");
        let peers: Vec<SocketAddr> = (0..2)
            .map(|_| listener.accept().expect("accept").1)
            .collect();
        assert!(peers.contains(&local), "{local} not among {peers:?}");
    }

    #[test]
    fn a_connected_socket_is_never_kept() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut spares = SpareSockets::default();
        let stream = start_connect(&mut spares, listener.local_addr().expect("addr"))
            .expect("connects")
            .socket;
        outcome(&stream).expect("handshake completes");
        assert_eq!(spares.len(), 0);
    }

    #[test]
    fn only_destinations_this_host_answers_itself_get_the_second_connect() {
        for local in [
            "127.0.0.1:1",
            "127.9.9.9:1",
            "0.0.0.0:1",
            "[::1]:1",
            "[::]:1",
            "[::ffff:127.0.0.1]:1",
        ] {
            let address: SocketAddr = local.parse().expect("address");
            assert!(answered_locally(&address), "{local}");
        }
        for remote in [
            "192.0.2.1:1",
            "10.0.0.1:1",
            "[2001:db8::1]:1",
            "[::ffff:192.0.2.1]:1",
        ] {
            let address: SocketAddr = remote.parse().expect("address");
            assert!(!answered_locally(&address), "{remote}");
        }
    }

    /// Linux answers a loopback connect inside the call, so the second `connect()` says
    /// it succeeded; the caller then skips the wait and the question. A socket said to be
    /// connected must be: its peer is known at once.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn a_connect_known_to_have_succeeded_is_connected() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let open = listener.local_addr().expect("local address");
        let mut spares = SpareSockets::default();
        let mut known = 0;
        for _ in 0..20 {
            let started = start_connect(&mut spares, open).expect("connects");
            if started.connected {
                known += 1;
                let peer = started
                    .socket
                    .peer_addr()
                    .expect("connected: the peer is known");
                assert_eq!(peer.as_socket(), Some(open));
            }
            let (_accepted, peer) = listener.accept().expect("accept");
            let local = started.socket.local_addr().expect("local address");
            assert_eq!(Some(peer), local.as_socket());
        }
        // The handshake can be left to a softirq thread on a loaded machine, but not
        // twenty times in a row.
        assert!(known > 0, "no loopback connect was known to have succeeded");
    }
}
