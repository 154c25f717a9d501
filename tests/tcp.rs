//! The TCP layer against spec items P-01..P-23, P-28 and X-01..X-19, on real sockets on
//! loopback (127.0.0.1, and ::1 where the machine has it).
//!
//! Each test records lifecycle events into a shared log and compares whole sequences, so
//! an event out of order, missing or doubled fails the test. Every run is bounded by a
//! watchdog timer that stops the reactor and fails the test after 5 s.

use std::cell::{Cell, RefCell};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::rc::Rc;
use std::time::Duration;

use twistctl::reactor::tcp::{
    Connector, DEFAULT_CONNECT_TIMEOUT, HIGH_WATER_MARK, ListeningPort, WRITE_BUFFER_LIMIT,
};
use twistctl::reactor::{
    Address, CloseReason, ConnectError, Failure, Producer, ProtocolResult, Reactor, Step,
    TransportRef,
};

mod common;

use common::lifecycle::*;

// ---------------------------------------------------------------------------------------
// Fixtures

fn v4() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// `[::1]:0` if this machine can bind it; otherwise says why and returns `None`.
fn v6() -> Option<SocketAddr> {
    let address: SocketAddr = "[::1]:0".parse().unwrap();
    match StdListener::bind(address) {
        Ok(_) => Some(address),
        Err(error) => {
            eprintln!("skipping the IPv6 part: cannot bind [::1]:0: {error}");
            None
        }
    }
}

/// A local port nobody listens on, kept that way while the socket lives: it is bound, so
/// no one else can take it, but not listening, so connects to it are refused.
fn refusing_port() -> (socket2::Socket, SocketAddr) {
    refusing_port_on(v4())
}

/// [`refusing_port`] on the IPv4 address of `address` (its port is ignored).
fn refusing_port_on(address: SocketAddr) -> (socket2::Socket, SocketAddr) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::new(address.ip(), 0).into())
        .unwrap();
    let address = socket.local_addr().unwrap().as_socket().unwrap();
    (socket, address)
}

/// Connects to `refused` and checks that the attempt fails with `Refused` (P-15) and
/// leaves no registry entry behind.
fn assert_connect_refused(refused: SocketAddr) {
    let reactor = Reactor::new().unwrap();
    let got: Shared<ConnectError> = shared();
    let (g, r) = (got.clone(), reactor.clone());
    let factory = Fac::new("cf", &new_log(), |_| panic!("no protocol is built"))
        .failed(move |_, why| {
            *g.borrow_mut() = Some(why.clone());
            stop(&r);
        })
        .rc();
    connect(&reactor, refused, factory);
    run(&reactor);
    match got.borrow().as_ref() {
        Some(ConnectError::Refused(e)) => {
            assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused)
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    assert_eq!(reactor.io_source_count(), 0, "the attempt's socket is gone");
}

fn listen(reactor: &Reactor, address: SocketAddr, factory: Rc<Fac>) -> ListeningPort {
    reactor.listen_tcp(address, factory).expect("listening")
}

fn connect(reactor: &Reactor, address: SocketAddr, factory: Rc<Fac>) -> Connector {
    reactor.connect_tcp(address, factory, Some(Duration::from_secs(4)))
}

/// Listens on 127.0.0.1 with `server`, connects `client` to it, and runs until the test
/// stops the reactor.
fn converse(reactor: &Reactor, server: Fac, client: Fac) -> ListeningPort {
    let port = listen(reactor, v4(), server.rc());
    connect(reactor, port.host(), client.rc());
    run(reactor);
    port
}

/// Listens on 127.0.0.1 with `server` and connects a plain blocking socket to it: a peer
/// the test drives by hand.
fn dial(reactor: &Reactor, server: Fac) -> StdStream {
    let port = listen(reactor, v4(), server.rc());
    StdStream::connect(port.host()).unwrap()
}

/// Closes `peer` with SO_LINGER 0, so that the other side sees a reset.
fn reset(peer: StdStream) {
    socket2::SockRef::from(&peer)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(peer);
}

/// `prefix`, `middle` and `suffix` joined, as owned strings.
fn framed(prefix: &[&str], middle: &[&str], suffix: &[String]) -> Vec<String> {
    let mut all = seq(prefix);
    all.extend(seq(middle));
    all.extend(suffix.iter().cloned());
    all
}

/// The whole log of a `server` factory that accepted one connection: `middle` between
/// `connection_made` and `connection_lost(why)`.
fn server_life(middle: &[&str], why: &str) -> Vec<String> {
    framed(
        &["srvf:start", "srvf:build", "srv:made"],
        middle,
        &[format!("srv:lost({why})"), "srvf:stop".into()],
    )
}

/// The whole log of a `client` factory whose one connection succeeded: `middle` between
/// `connection_made` and `connection_lost(why)`.
fn client_life(middle: &[&str], why: &str) -> Vec<String> {
    framed(
        &[
            "cf:start",
            "cf:started(connecting=true)",
            "cf:build",
            "cli:made",
        ],
        middle,
        &[
            format!("cli:lost({why})"),
            format!("cf:client_lost({why})"),
            "cf:stop".into(),
        ],
    )
}

/// The log of a `client` factory whose one attempt failed with `why` (`events` in between).
fn client_failure(events: &[&str], why: &str) -> Vec<String> {
    framed(
        &["cf:start", "cf:started(connecting=true)"],
        events,
        &[format!("cf:failed({why})"), "cf:stop".into()],
    )
}

// ---------------------------------------------------------------------------------------
// P — server side

/// Stops `port` from a callback, logging when `stop_listening` returns and when its
/// Deferred fires, and stops the reactor once it has fired.
fn stop_listening_and_log(port: &ListeningPort, log: &Log, reactor: &Reactor) {
    let (l, r) = (log.clone(), reactor.clone());
    port.stop_listening().add_both(move |result| {
        push(&l, format!("stop_listening fired ok={}", result.is_ok()));
        stop(&r);
        Step::Value(())
    });
    push(log, "stop_listening returned");
}

#[test]
fn p07_server_lifecycle_order() {
    let reactor = Reactor::new().unwrap();
    let log = new_log();
    let received = bytes();
    let port_slot: Shared<ListeningPort> = shared();
    let (l, rcv, r, ps) = (
        log.clone(),
        received.clone(),
        reactor.clone(),
        port_slot.clone(),
    );
    let factory = server(&log, move |p| {
        let (l, r, ps) = (l.clone(), r.clone(), ps.clone());
        p.into_received(&rcv).lost(move |_| {
            // P-09: the port closes later, then the factory stops, then this fires.
            let port = ps.borrow().clone().expect("port");
            stop_listening_and_log(&port, &l, &r);
        })
    });
    let port = listen(&reactor, v4(), factory.rc());
    push(&log, "listen_tcp returned");
    *port_slot.borrow_mut() = Some(port.clone());
    let mut client = StdStream::connect(port.host()).unwrap();
    client.write_all(b"hello").unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    assert_eq!(events(&log), seq(&["srvf:start", "listen_tcp returned"]));
    run(&reactor);
    assert_eq!(
        events(&log),
        seq(&[
            "srvf:start",
            "listen_tcp returned",
            "srvf:build",
            "srv:made",
            "srv:data",
            "srv:lost(Done)",
            "stop_listening returned",
            "srvf:stop",
            "stop_listening fired ok=true",
        ])
    );
    assert_eq!(&*received.borrow(), b"hello");
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "the client saw an orderly close");
}

/// Shapes protocols that count their connections in `made` (shared between sides if
/// the counter is) and stop the reactor at the `n`th.
fn stop_at_nth_made(
    made: &Rc<Cell<usize>>,
    n: usize,
    reactor: &Reactor,
) -> impl Fn(Rec) -> Rec + use<> {
    let (m, r) = (made.clone(), reactor.clone());
    move |p| {
        let (m, r) = (m.clone(), r.clone());
        p.made(move |_| {
            m.set(m.get() + 1);
            if m.get() == n {
                stop(&r);
            }
            Ok(())
        })
    }
}

#[test]
fn p07_a_burst_of_connections_is_all_accepted() {
    const N: usize = 150;
    let reactor = Reactor::new().unwrap();
    let made = Rc::new(Cell::new(0));
    let port = listen(
        &reactor,
        v4(),
        server(&new_log(), stop_at_nth_made(&made, N, &reactor)).rc(),
    );
    // All queued before the loop runs: one readiness edge for the lot.
    let clients: Vec<StdStream> = (0..N)
        .map(|_| StdStream::connect(port.host()).unwrap())
        .collect();
    run(&reactor);
    assert_eq!(made.get(), N);
    drop(clients);
}

#[test]
fn p06_listen_failure_leaves_factory_untouched() {
    let reactor = Reactor::new().unwrap();
    let log = new_log();
    let taken = StdListener::bind(v4()).unwrap();
    let address = taken.local_addr().unwrap();
    let factory = Fac::new("f", &log, |_| None).rc();
    let error = reactor.listen_tcp(address, factory).unwrap_err();
    assert_eq!(error.address, Address::Tcp(address));
    assert_eq!(error.source.kind(), std::io::ErrorKind::AddrInUse);
    assert!(
        events(&log).is_empty(),
        "no start_factory: {:?}",
        events(&log)
    );
    assert_eq!(reactor.io_source_count(), 0);
}

#[test]
fn p08_server_build_protocol_none_closes_cleanly() {
    let reactor = Reactor::new().unwrap();
    let server_log = new_log();
    let log = new_log();
    let r = reactor.clone();
    let client = client(&log, |p| p).lost(move |_, _| {
        // Give a wrongly built server protocol the chance to show up in the log.
        stop_after(&r, Duration::from_millis(50));
    });
    converse(&reactor, Fac::new("srvf", &server_log, |_| None), client);
    assert_eq!(
        events(&server_log),
        seq(&["srvf:start", "srvf:build(None)", "srvf:stop"])
    );
    assert_eq!(events(&log), client_life(&[], "Done"));
}

#[test]
fn p09_stop_listening_fires_keeps_connections_and_port_rebinds() {
    let reactor = Reactor::new().unwrap();
    let log = new_log();
    let port_slot: Shared<ListeningPort> = shared();
    let (l, ps) = (log.clone(), port_slot.clone());
    let server = server(&log, move |p| {
        let (ps, l) = (ps.clone(), l.clone());
        p.made(move |t| {
            let port = ps.borrow().clone().expect("port");
            let (l, address, t) = (l.clone(), port.host(), t.clone());
            port.stop_listening().add_both(move |_| {
                push(&l, "stopped");
                // P-09: once fired, the same port number can be bound again.
                let again = StdListener::bind(address);
                push(&l, format!("rebind ok={}", again.is_ok()));
                // The accepted connection stays open and usable.
                push(&l, format!("still open: {}", !t.is_disconnecting()));
                t.write(b"still here");
                t.lose_connection();
                Step::Value(())
            });
            Ok(())
        })
        .data(|_, _| Ok(()))
    });
    let port = listen(&reactor, v4(), server.rc());
    *port_slot.borrow_mut() = Some(port.clone());
    let received = bytes();
    let rcv = received.clone();
    let client = client(&log, move |p| p.into_received(&rcv)).lost(stop_on_client_lost(&reactor));
    connect(&reactor, port.host(), client.rc());
    run(&reactor);
    let log = events(&log);
    let server_side: Vec<String> = log
        .iter()
        .filter(|e| !e.starts_with("c"))
        .cloned()
        .collect();
    assert_eq!(
        server_side,
        seq(&[
            "srvf:start",
            "srvf:build",
            "srv:made",
            "srvf:stop",
            "stopped",
            "rebind ok=true",
            "still open: true",
            "srv:lost(Done)",
        ])
    );
    assert!(log.contains(&"cf:client_lost(Done)".to_string()), "{log:?}");
    assert_eq!(&*received.borrow(), b"still here");
}

#[test]
fn p10_port_zero_reports_the_chosen_port() {
    let reactor = Reactor::new().unwrap();
    let log = new_log();
    let port = listen(&reactor, v4(), Fac::new("f", &log, |_| None).rc());
    assert_ne!(port.host().port(), 0);
    assert_eq!(port.host().ip(), v4().ip());
    // The port really listens there.
    assert!(StdStream::connect(port.host()).is_ok());
}

// ---------------------------------------------------------------------------------------
// P — factory start/stop

#[test]
fn p01_factory_start_stop_counted_across_two_ports() {
    let reactor = Reactor::new().unwrap();
    let log = new_log();
    let factory = Fac::new("f", &log, |_| None).rc();
    let one = listen(&reactor, v4(), factory.clone());
    let two = listen(&reactor, v4(), factory);
    push(&log, "listening twice");
    let (l, r, two2) = (log.clone(), reactor.clone(), two.clone());
    reactor.call_when_running(move || {
        let l2 = l.clone();
        one.stop_listening().add_both(move |_| {
            push(&l2, "one stopped");
            let (l3, r3) = (l2.clone(), r.clone());
            two2.stop_listening().add_both(move |_| {
                push(&l3, "two stopped");
                stop(&r3);
                Step::Value(())
            });
            Step::Value(())
        });
    });
    run(&reactor);
    assert_eq!(
        events(&log),
        seq(&[
            "f:start",
            "listening twice",
            "one stopped",
            "f:stop",
            "two stopped"
        ])
    );
    drop(two);
}

#[test]
fn p01_factory_start_stop_counted_across_port_and_connector() {
    let reactor = Reactor::new().unwrap();
    let log = new_log();
    let (_refusing, refused) = refusing_port();
    let port_slot: Shared<ListeningPort> = shared();
    let (l, r, ps) = (log.clone(), reactor.clone(), port_slot.clone());
    let factory = Fac::new("f", &log, |_| None)
        .failed(move |_, _| {
            // The port still uses the factory: no stop here.
            let (l, r) = (l.clone(), r.clone());
            let port = ps.borrow().clone().expect("port");
            r.clone().call_later(Duration::ZERO, move || {
                port.stop_listening().add_both(move |_| {
                    push(&l, "port stopped");
                    stop(&r);
                    Step::Value(())
                });
            });
        })
        .rc();
    let port = listen(&reactor, v4(), factory.clone());
    *port_slot.borrow_mut() = Some(port);
    push(&log, "listening");
    connect(&reactor, refused, factory);
    push(&log, "connecting");
    run(&reactor);
    assert_eq!(
        events(&log),
        seq(&[
            "f:start",
            "listening",
            "f:started(connecting=true)",
            "connecting",
            "f:failed(Refused)",
            "f:stop",
            "port stopped",
        ])
    );
}

// ---------------------------------------------------------------------------------------
// P — client side

/// A server whose protocols write back what they receive and then close.
fn echo_once(log: &Log) -> Fac {
    server(log, |p| {
        p.data(|t, data| {
            t.write(data);
            t.lose_connection();
            Ok(())
        })
    })
}

/// Writes `message` from `connection_made`.
fn sending(message: &'static [u8]) -> impl FnMut(&TransportRef) -> ProtocolResult + use<> {
    move |t| {
        t.write(message);
        Ok(())
    }
}

#[test]
fn p11_p12_p14_client_lifecycle_order() {
    let reactor = Reactor::new().unwrap();
    let server_log = new_log();
    let port = listen(&reactor, v4(), echo_once(&server_log).rc());
    let log = new_log();
    let received = bytes();
    let returned: Shared<Connector> = shared();
    let rcv = received.clone();
    let (ret1, ret2, r) = (returned.clone(), returned.clone(), reactor.clone());
    let client = client(&log, move |p| p.into_received(&rcv).made(sending(b"ping")))
        .started(move |c| {
            // P-16: not yet returned, but the same connector is passed everywhere.
            assert!(ret1.borrow().is_none());
            assert!(!c.is_connected());
        })
        .lost(move |c, _| {
            assert!(
                ret2.borrow().as_ref() == Some(c),
                "P-16: the same connector"
            );
            assert!(!c.is_connected() && !c.is_connecting());
            stop(&r);
        });
    let connector = connect(&reactor, port.host(), client.rc());
    push(&log, "connect_tcp returned");
    assert!(connector.is_connecting());
    assert_eq!(connector.destination(), Address::Tcp(port.host()));
    *returned.borrow_mut() = Some(connector.clone());
    // P-11: nothing else happens synchronously.
    let synchronous = seq(&[
        "cf:start",
        "cf:started(connecting=true)",
        "connect_tcp returned",
    ]);
    assert_eq!(events(&log), synchronous);
    run(&reactor);
    let mut expected = client_life(&["cli:data"], "Done");
    expected.insert(2, "connect_tcp returned".into()); // after started_connecting
    assert_eq!(events(&log), expected);
    assert_eq!(&*received.borrow(), b"ping");
    assert_eq!(events(&server_log), server_life(&["srv:data"], "Done"));
}

#[test]
fn p13_client_failure_order() {
    let reactor = Reactor::new().unwrap();
    let log = new_log();
    let (_refusing, refused) = refusing_port();
    let returned: Shared<Connector> = shared();
    let (ret, r) = (returned.clone(), reactor.clone());
    let factory = Fac::new("cf", &log, |_| panic!("P-13: no protocol is built"))
        .failed(move |c, why| {
            assert!(ret.borrow().as_ref() == Some(c), "P-16: the same connector");
            assert!(matches!(why, ConnectError::Refused(_)));
            assert!(!c.is_connecting());
            stop_after(&r, Duration::ZERO);
        })
        .rc();
    let connector = connect(&reactor, refused, factory);
    push(&log, "connect_tcp returned");
    *returned.borrow_mut() = Some(connector.clone());
    run(&reactor);
    assert_eq!(
        events(&log),
        client_failure(&["connect_tcp returned"], "Refused")
    );
    assert_eq!(connector.destination(), Address::Tcp(refused));
    assert_eq!(reactor.io_source_count(), 0, "the attempt's socket is gone");
}

/// An address of this host off loopback (Linux: a local /32 route in
/// `/proc/net/fib_trie`), if it has one: the connector treats it as it treats a remote
/// destination (no second `connect()`; the first poll event tells how the connect went),
/// though the kernel answers it locally.
fn off_loopback() -> Option<SocketAddr> {
    let trie = std::fs::read_to_string("/proc/net/fib_trie").ok()?;
    let mut last = None;
    for line in trie.lines() {
        let line = line.trim();
        if let Some(ip) = line.strip_prefix("|-- ") {
            last = ip.parse::<std::net::Ipv4Addr>().ok();
        } else if line == "/32 host LOCAL"
            && let Some(ip) = last
            && !ip.is_loopback()
        {
            return Some(SocketAddr::from((ip, 0)));
        }
    }
    eprintln!("skipped: this host has no IPv4 address off loopback");
    None
}

#[test]
fn p12_a_connect_off_loopback_completes_from_its_poll_event() {
    let Some(address) = off_loopback() else {
        return;
    };
    let reactor = Reactor::new().unwrap();
    let server_log = new_log();
    let port = listen(&reactor, address, echo_once(&server_log).rc());
    let log = new_log();
    let received = bytes();
    let peer: Shared<Address> = shared();
    let (rcv, pr, r) = (received.clone(), peer.clone(), reactor.clone());
    let client = client(&log, move |p| {
        let pr = pr.clone();
        p.into_received(&rcv).made(move |t| {
            *pr.borrow_mut() = Some(t.peer());
            t.write(b"ping");
            Ok(())
        })
    })
    .lost(move |_, _| stop(&r));
    connect(&reactor, port.host(), client.rc());
    run(&reactor);
    assert_eq!(events(&log), client_life(&["cli:data"], "Done"));
    assert_eq!(&*received.borrow(), b"ping");
    assert_eq!(peer.borrow().clone(), Some(Address::Tcp(port.host())));
    assert_eq!(events(&server_log), server_life(&["srv:data"], "Done"));
}

#[test]
fn p15_a_refused_connect_off_loopback_is_connect_error_refused() {
    let Some(address) = off_loopback() else {
        return;
    };
    let (_refusing, refused) = refusing_port_on(address);
    assert_connect_refused(refused);
}

/// A listener that completes no more handshakes: backlog 0, never accepting, its queue
/// filled by a connection made first; the kernel then drops new SYNs.
fn black_hole() -> (socket2::Socket, Vec<StdStream>, socket2::Socket, SocketAddr) {
    let listener =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    listener.bind(&v4().into()).unwrap();
    listener.listen(0).unwrap();
    let address = listener.local_addr().unwrap().as_socket().unwrap();
    let filler = StdStream::connect_timeout(&address, Duration::from_secs(2)).unwrap();
    // A second one whose SYN is already being dropped, to be sure the queue is full.
    let extra = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    extra.set_nonblocking(true).unwrap();
    let _ = extra.connect(&address.into());
    (listener, vec![filler], extra, address)
}

#[test]
fn x14_connect_timeout_fails_with_timed_out_not_before_the_timeout() {
    let reactor = Reactor::new().unwrap();
    let log = new_log();
    let hole = black_hole();
    let started_at = reactor.seconds();
    let failed_at = Rc::new(Cell::new(None));
    let (f, r) = (failed_at.clone(), reactor.clone());
    let factory = Fac::new("cf", &log, |_| panic!("no connection expected"))
        .failed(move |_, _| {
            f.set(Some(r.seconds()));
            stop(&r);
        })
        .rc();
    reactor.connect_tcp(hole.3, factory, Some(Duration::from_millis(300)));
    run(&reactor);
    assert_eq!(events(&log), client_failure(&[], "TimedOut"));
    let elapsed = failed_at.get().expect("failed") - started_at;
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(4), "{elapsed:?}");
    assert_eq!(
        reactor.io_source_count(),
        0,
        "the attempt's socket is closed"
    );
}

#[test]
fn p21_x14_timeout_none_sets_no_timer_and_default_is_30s() {
    assert_eq!(DEFAULT_CONNECT_TIMEOUT, Duration::from_secs(30));
    let reactor = Reactor::new().unwrap();
    let log = new_log();
    let hole = black_hole();
    let factory = Fac::new("cf", &log, |_| None).rc();
    let none = reactor.connect_tcp(hole.3, factory.clone(), None);
    assert!(reactor.delayed_calls().is_empty(), "timeout None: no timer");
    let start = reactor.seconds();
    let timed = reactor.connect_tcp(hole.3, factory, Some(DEFAULT_CONNECT_TIMEOUT));
    let calls = reactor.delayed_calls();
    assert_eq!(calls.len(), 1);
    // P-21: measured from connect_tcp.
    let due = calls[0].time() - start;
    assert!(
        due >= DEFAULT_CONNECT_TIMEOUT && due < DEFAULT_CONNECT_TIMEOUT + Duration::from_secs(1)
    );
    // Stopping the attempts cancels the timer and reports UserAborted.
    none.stop_connecting().unwrap();
    timed.stop_connecting().unwrap();
    assert!(!calls[0].active());
    assert_eq!(
        events(&log),
        seq(&[
            "cf:start",
            "cf:started(connecting=true)",
            "cf:started(connecting=true)",
            "cf:failed(UserAborted)",
            "cf:failed(UserAborted)",
            "cf:stop",
        ])
    );
}

#[test]
fn p15_refused_connect_is_connect_error_refused() {
    let (_refusing, refused) = refusing_port();
    assert_connect_refused(refused);
}

/// Calls `again` for the first ended attempt and stops the reactor on the next turn
/// after the second: for tests that connect twice.
fn twice<F: Fn(&Connector) + 'static>(reactor: &Reactor, again: F) -> impl Fn(&Connector) + use<F> {
    let (attempts, r) = (Cell::new(0), reactor.clone());
    move |c| {
        attempts.set(attempts.get() + 1);
        if attempts.get() < 2 {
            again(c);
        } else {
            stop_after(&r, Duration::ZERO);
        }
    }
}

#[test]
fn p17_connect_again_from_client_connection_failed() {
    let reactor = Reactor::new().unwrap();
    let log = new_log();
    let (_refusing, refused) = refusing_port();
    let (l, l2) = (log.clone(), log.clone());
    let again = twice(&reactor, move |c| {
        push(&l, format!("reconnect ok={}", c.connect().is_ok()));
    });
    let factory = Fac::new("cf", &log, |_| None)
        .started(move |c| {
            // P-17: connect() while connecting is an error.
            push(
                &l2,
                format!("connect while connecting: {}", c.connect().is_err()),
            );
        })
        .failed(move |c, _| again(c))
        .rc();
    connect(&reactor, refused, factory);
    run(&reactor);
    assert_eq!(
        events(&log),
        seq(&[
            "cf:start",
            "cf:started(connecting=true)",
            "connect while connecting: true",
            "cf:failed(Refused)",
            "cf:started(connecting=true)",
            "connect while connecting: true",
            "reconnect ok=true",
            "cf:failed(Refused)",
            "cf:stop",
        ])
    );
}

#[test]
fn p17_connect_again_from_client_connection_lost() {
    let reactor = Reactor::new().unwrap();
    let server = server(&new_log(), |p| {
        p.made(|t| {
            t.lose_connection();
            Ok(())
        })
    });
    let log = new_log();
    let l = log.clone();
    let again = twice(&reactor, move |c| {
        push(&l, format!("reconnect ok={}", c.connect().is_ok()));
    });
    let client = client(&log, |p| p).lost(move |c, _| again(c));
    converse(&reactor, server, client);
    let connection = [
        "cf:build",
        "cli:made",
        "cli:lost(Done)",
        "cf:client_lost(Done)",
    ];
    let expected = [
        &["cf:start", "cf:started(connecting=true)"][..],
        &connection,
        &["cf:started(connecting=true)", "reconnect ok=true"],
        &connection,
        &["cf:stop"],
    ]
    .concat();
    assert_eq!(events(&log), seq(&expected));
}

#[test]
fn p17_connect_later_starts_the_factory_again() {
    let reactor = Reactor::new().unwrap();
    let log = new_log();
    let (_refusing, refused) = refusing_port();
    let r = reactor.clone();
    let again = twice(&reactor, move |c| {
        // Not from inside the callback: the factory stops in between.
        let c = c.clone();
        r.call_later(Duration::from_millis(10), move || c.connect());
    });
    let factory = Fac::new("cf", &log, |_| None)
        .failed(move |c, _| again(c))
        .rc();
    connect(&reactor, refused, factory);
    run(&reactor);
    let mut expected = client_failure(&[], "Refused");
    expected.extend(client_failure(&[], "Refused"));
    assert_eq!(events(&log), expected);
}

#[test]
fn p18_stop_connecting_inside_started_connecting() {
    let reactor = Reactor::new().unwrap();
    let server_log = new_log();
    let port = listen(&reactor, v4(), Fac::new("srvf", &server_log, |_| None).rc());
    let log = new_log();
    let l = log.clone();
    let factory = Fac::new("cf", &log, |_| panic!("no connection expected"))
        .started(move |c| {
            let result = c.stop_connecting();
            push(
                &l,
                format!("stop_connecting returned ok={}", result.is_ok()),
            );
            push(
                &l,
                format!("again is error: {}", c.stop_connecting().is_err()),
            );
        })
        .rc();
    let connector = connect(&reactor, port.host(), factory);
    push(&log, "connect_tcp returned");
    assert!(!connector.is_connecting());
    // Nothing may follow: give a stray attempt time to show up.
    stop_after(&reactor, Duration::from_millis(100));
    run(&reactor);
    let mut expected = client_failure(&[], "UserAborted");
    expected.extend(seq(&[
        "stop_connecting returned ok=true",
        "again is error: true",
        "connect_tcp returned",
    ]));
    assert_eq!(events(&log), expected);
    // The server may have seen the SYN, but no protocol was built on the client side.
    assert!(
        !events(&server_log).contains(&"srvf:build".to_string()),
        "{:?}",
        events(&server_log)
    );
}

#[test]
fn p19_disconnect_while_connecting_and_while_connected() {
    let reactor = Reactor::new().unwrap();
    let server = server(&new_log(), |p| p);
    let log = new_log();
    let connector_slot: Shared<Connector> = shared();
    let cs = connector_slot.clone();
    let client = client(&log, move |p| {
        let cs = cs.clone();
        p.made(move |_| {
            // While connected: disconnect() is lose_connection().
            cs.borrow().as_ref().expect("connector").disconnect();
            Ok(())
        })
    })
    .failed(|c, _| {
        // Reconnect after the disconnect() while connecting.
        assert!(c.connect().is_ok());
    })
    .lost(stop_on_client_lost(&reactor));
    let port = listen(&reactor, v4(), server.rc());
    let connector = connect(&reactor, port.host(), client.rc());
    connector.disconnect(); // while connecting = stop_connecting
    *connector_slot.borrow_mut() = Some(connector.clone());
    run(&reactor);
    let mut expected = seq(&[
        "cf:start",
        "cf:started(connecting=true)",
        "cf:failed(UserAborted)",
    ]);
    // The second attempt, in the same factory run: no second cf:start.
    expected.extend(client_life(&[], "Done").split_off(1));
    assert_eq!(events(&log), expected);
    connector.disconnect(); // disconnected: nothing
    assert!(!connector.is_connecting());
    assert_eq!(events(&log), expected, "nothing happens");
}

#[test]
fn p20_client_build_protocol_none_closes_cleanly() {
    let reactor = Reactor::new().unwrap();
    let server_log = new_log();
    let r = reactor.clone();
    let server = server(&server_log, move |p| p.lost(stop_on_lost(&r)));
    let log = new_log();
    converse(&reactor, server, Fac::new("cf", &log, |_| None));
    assert_eq!(
        events(&log),
        seq(&[
            "cf:start",
            "cf:started(connecting=true)",
            "cf:build(None)",
            "cf:client_lost(Done)",
            "cf:stop",
        ])
    );
    assert_eq!(events(&server_log), server_life(&[], "Done"));
}

// ---------------------------------------------------------------------------------------
// P — errors in protocol callbacks

#[test]
fn p22_data_received_error_closes_with_protocol_reason() {
    let reactor = Reactor::new().unwrap();
    let server_log = new_log();
    let server_received = bytes();
    let srcv = server_received.clone();
    let done = countdown(&reactor, 2);
    let d = done.clone();
    let server = server(&server_log, move |p| {
        let d = d.clone();
        p.into_received(&srcv)
            .made(sending(b"trigger"))
            .lost(move |_| d())
    });
    let log = new_log();
    let failures: Rc<RefCell<Vec<Failure>>> = Rc::new(RefCell::new(Vec::new()));
    let (f1, f2) = (failures.clone(), failures.clone());
    let client = client(&log, move |p| {
        let f1 = f1.clone();
        p.data(|t, _| {
            // Written before the error: still flushed (an orderly close).
            t.write(b"last words");
            Err(Failure::msg("bad input"))
        })
        .lost(move |why| {
            if let CloseReason::Protocol(f) = why {
                f1.borrow_mut().push(f.clone());
            }
        })
    })
    .lost(move |_, why| {
        if let CloseReason::Protocol(f) = why {
            f2.borrow_mut().push(f.clone());
        }
        done();
    });
    converse(&reactor, server, client);
    assert_eq!(
        events(&log),
        client_life(&["cli:data"], "Protocol(bad input)")
    );
    let failures = failures.borrow();
    assert_eq!(failures.len(), 2);
    assert!(
        Rc::ptr_eq(failures[0].error(), failures[1].error()),
        "client_connection_lost gets the same failure"
    );
    // The peer sees an orderly close, after the bytes written before the error.
    assert_eq!(events(&server_log), server_life(&["srv:data"], "Done"));
    assert_eq!(&*server_received.borrow(), b"last words");
}

#[test]
fn p22_protocol_error_stays_the_reason_when_the_peer_then_resets() {
    let reactor = Reactor::new().unwrap();
    let log = new_log();
    let peer: Shared<StdStream> = shared();
    let (p, r) = (peer.clone(), reactor.clone());
    let server = server(&log, move |proto| {
        let p = p.clone();
        proto
            .data(move |t, _| {
                t.write(b"unsendable");
                // The peer resets before the orderly close can flush.
                reset(p.borrow_mut().take().expect("peer"));
                Err(Failure::msg("bad request"))
            })
            .lost(stop_on_lost(&r))
    });
    let mut client = dial(&reactor, server);
    client.write_all(b"request").unwrap();
    *peer.borrow_mut() = Some(client);
    run(&reactor);
    assert_eq!(
        events(&log),
        server_life(&["srv:data"], "Protocol(bad request)")
    );
}

/// A server whose protocols do nothing but call `done` when their connection ends.
fn server_calling_on_lost(log: &Log, done: Rc<dyn Fn()>) -> Fac {
    server(log, move |p| {
        let d = done.clone();
        p.lost(move |_| d())
    })
}

#[test]
fn p22_client_connection_made_error_closes_with_protocol_reason() {
    let reactor = Reactor::new().unwrap();
    let server_log = new_log();
    let done = countdown(&reactor, 2);
    let server = server_calling_on_lost(&server_log, done.clone());
    let log = new_log();
    let client =
        client(&log, |p| p.made(|_| Err(Failure::msg("no thanks")))).lost(move |_, _| done());
    converse(&reactor, server, client);
    assert_eq!(events(&log), client_life(&[], "Protocol(no thanks)"));
    assert_eq!(events(&server_log), server_life(&[], "Done"));
}

#[test]
fn p23_server_connection_made_error_closes_with_protocol_reason() {
    let reactor = Reactor::new().unwrap();
    let server_log = new_log();
    let done = countdown(&reactor, 2);
    let d = done.clone();
    let server = server(&server_log, move |p| {
        let d = d.clone();
        p.made(|t| {
            t.write(b"sorry");
            Err(Failure::msg("refusing service"))
        })
        .lost(move |_| d())
    });
    let log = new_log();
    let received = bytes();
    let rcv = received.clone();
    let client = client(&log, move |p| p.into_received(&rcv)).lost(move |_, _| done());
    converse(&reactor, server, client);
    assert_eq!(
        events(&server_log),
        server_life(&[], "Protocol(refusing service)")
    );
    assert_eq!(events(&log), client_life(&["cli:data"], "Done"));
    assert_eq!(&*received.borrow(), b"sorry");
}

// ---------------------------------------------------------------------------------------
// P-28 — shutdown

#[test]
fn p28_shutdown_loses_connections_and_closes_ports() {
    let reactor = Reactor::new().unwrap();
    let log = new_log();
    let made = Rc::new(Cell::new(0));
    let server = server(&log, stop_at_nth_made(&made, 2, &reactor));
    let client = client(&log, stop_at_nth_made(&made, 2, &reactor));
    converse(&reactor, server, client);
    let log = events(&log);
    let of = |prefix: &str| -> Vec<String> {
        log.iter()
            .filter(|e| e.starts_with(prefix))
            .cloned()
            .collect()
    };
    // Whether the port or the connection goes first is not specified.
    assert_eq!(of("srv:"), seq(&["srv:made", "srv:lost(Lost)"]));
    assert_eq!(of("srvf:"), seq(&["srvf:start", "srvf:build", "srvf:stop"]));
    assert_eq!(of("c"), client_life(&[], "Lost"));
    assert_eq!(reactor.io_source_count(), 0, "every socket closed: {log:?}");
}

// ---------------------------------------------------------------------------------------
// X — writing

/// Listens with `server` and connects a non-blocking plain socket to it, handed to the
/// server's callbacks through `peer`: for tests that look at what reached the peer
/// while the reactor runs.
fn dial_nonblocking(reactor: &Reactor, server: Fac, peer: &Shared<StdStream>) {
    let client = dial(reactor, server);
    client.set_nonblocking(true).unwrap();
    *peer.borrow_mut() = Some(client);
}

#[test]
fn x01_x02_write_is_buffered_and_sent_later_in_order() {
    let reactor = Reactor::new().unwrap();
    let log = new_log();
    let peer: Shared<StdStream> = shared();
    let (l, p, r) = (log.clone(), peer.clone(), reactor.clone());
    let server = server(&log, move |proto| {
        let (p, l) = (p.clone(), l.clone());
        proto
            .made(move |t| {
                t.write(b"");
                t.write(b"one ");
                t.write_sequence(&[b"two ", b"", b"three"]);
                // X-01: nothing reached the peer yet.
                let mut peer = p.borrow_mut();
                let peer = peer.as_mut().expect("peer");
                let mut buffer = [0u8; 64];
                let early = peer.read(&mut buffer);
                let would_block = matches!(
                    &early,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
                );
                push(&l, format!("nothing sent synchronously: {would_block}"));
                t.lose_connection();
                Ok(())
            })
            .lost(stop_on_lost(&r))
    });
    dial_nonblocking(&reactor, server, &peer);
    run(&reactor);
    assert_eq!(
        events(&log),
        server_life(&["nothing sent synchronously: true"], "Done")
    );
    let mut client = peer.borrow_mut().take().unwrap();
    client.set_nonblocking(false).unwrap();
    let mut got = Vec::new();
    client.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"one two three");
}

#[test]
fn x04_a_flush_sends_a_bounded_amount_per_pass() {
    const TOTAL: usize = 1024 * 1024;
    let reactor = Reactor::new().unwrap();
    let log = new_log();
    let peer: Shared<StdStream> = shared();
    let reader: Shared<std::thread::JoinHandle<Vec<u8>>> = shared();
    let (l, p, rd, r) = (log.clone(), peer.clone(), reader.clone(), reactor.clone());
    let done = countdown(&reactor, 2);
    let server = server(&new_log(), move |proto| {
        let (l, p, rd, r) = (l.clone(), p.clone(), rd.clone(), r.clone());
        let (d1, d2) = (done.clone(), done.clone());
        let made = move |t: &TransportRef| {
            t.write(&pattern(0, TOTAL));
            t.lose_connection();
            let (l, p, rd, d1) = (l.clone(), p.clone(), rd.clone(), d1.clone());
            // Runs in the next iteration, right after its first flush pass.
            r.call_later(Duration::ZERO, move || {
                let mut stream = p.borrow_mut().take().expect("peer");
                let mut first = Vec::new();
                let mut buffer = vec![0u8; 64 * 1024];
                loop {
                    match stream.read(&mut buffer) {
                        Ok(0) => break,
                        Ok(n) => first.extend_from_slice(&buffer[..n]),
                        Err(_) => break, // WouldBlock: all there is for now
                    }
                }
                push(&l, format!("after one pass: {} KiB", first.len() / 1024));
                stream.set_nonblocking(false).unwrap();
                *rd.borrow_mut() = Some(std::thread::spawn(move || {
                    let mut rest = Vec::new();
                    let _ = stream.read_to_end(&mut rest);
                    first.extend_from_slice(&rest);
                    first
                }));
                d1();
            });
            Ok(())
        };
        proto.made(made).lost(move |_| d2())
    });
    dial_nonblocking(&reactor, server, &peer);
    run(&reactor);
    assert_eq!(events(&log), seq(&["after one pass: 128 KiB"]));
    let handle = reader.borrow_mut().take().expect("reader");
    let all = handle.join().unwrap();
    assert!(all == pattern(0, TOTAL), "all bytes, in order");
}

/// Writes that arrive while earlier bytes are partly sent, copied (`write`) and shared
/// (`write_shared`) in turn, reach the peer complete and in order.
#[test]
fn x01_x04_writes_between_partial_sends_arrive_in_order() {
    const CHUNK: usize = 256 * 1024;
    const CHUNKS: usize = 8;
    /// Writes chunk `k` and schedules the next one for the next iteration, after a flush
    /// pass; loses the connection after the last.
    fn write_from(reactor: Reactor, transport: TransportRef, k: usize) {
        let chunk = pattern(k * CHUNK, CHUNK);
        if k % 2 == 1 {
            transport.write_shared(&Rc::from(chunk));
        } else {
            transport.write(&chunk);
        }
        if k + 1 == CHUNKS {
            transport.lose_connection();
            return;
        }
        let r = reactor.clone();
        reactor.call_later(Duration::ZERO, move || write_from(r, transport, k + 1));
    }
    let reactor = Reactor::new().unwrap();
    let peer: Shared<StdStream> = shared();
    let reader: Shared<std::thread::JoinHandle<Vec<u8>>> = shared();
    let (p, rd, r) = (peer.clone(), reader.clone(), reactor.clone());
    let server = server(&new_log(), move |proto| {
        let (p, rd, r, r2) = (p.clone(), rd.clone(), r.clone(), r.clone());
        proto
            .made(move |t| {
                let mut stream = p.borrow_mut().take().expect("peer");
                stream.set_nonblocking(false).unwrap();
                *rd.borrow_mut() = Some(std::thread::spawn(move || {
                    let mut all = Vec::new();
                    let _ = stream.read_to_end(&mut all);
                    all
                }));
                write_from(r.clone(), t.clone(), 0);
                Ok(())
            })
            .lost(stop_on_lost(&r2))
    });
    dial_nonblocking(&reactor, server, &peer);
    run(&reactor);
    let handle = reader.borrow_mut().take().expect("reader");
    let all = handle.join().unwrap();
    assert_eq!(all.len(), CHUNK * CHUNKS);
    assert!(all == pattern(0, CHUNK * CHUNKS), "all bytes, in order");
}

#[test]
fn x05_lose_connection_delivers_buffered_data() {
    const BIG: usize = 10 * 1024 * 1024;
    let reactor = Reactor::new().unwrap();
    let server_log = new_log();
    let sl = server_log.clone();
    let server = server(&server_log, move |p| {
        let l = sl.clone();
        p.made(move |t| {
            t.write(&pattern(0, BIG));
            push(
                &l,
                format!("disconnecting before: {}", t.is_disconnecting()),
            );
            t.lose_connection();
            // X-07: at once, and a second call is a no-op.
            push(&l, format!("disconnecting after: {}", t.is_disconnecting()));
            t.lose_connection();
            // X-05: written after lose_connection but before the flush: still sent.
            t.write(&pattern(BIG, 10));
            push(&l, "lose_connection returned");
            Ok(())
        })
    });
    let log = new_log();
    let received = bytes();
    let biggest = Rc::new(Cell::new(0));
    let (rcv, b) = (received.clone(), biggest.clone());
    let client = client(&log, move |p| {
        let b = b.clone();
        p.into_received(&rcv).data(move |_, data| {
            b.set(b.get().max(data.len()));
            Ok(())
        })
    })
    .lost(stop_on_client_lost(&reactor));
    converse(&reactor, server, client);
    assert_eq!(
        events(&server_log),
        server_life(
            &[
                "disconnecting before: false",
                "disconnecting after: true",
                "lose_connection returned",
            ],
            "Done"
        )
    );
    assert_eq!(events(&log), client_life(&["cli:data"], "Done"));
    let received = received.borrow();
    assert_eq!(received.len(), BIG + 10);
    assert!(
        *received == pattern(0, BIG + 10),
        "bytes in order, none lost"
    );
    // X-17: each read is a bounded chunk.
    assert!(biggest.get() <= 64 * 1024, "chunk of {}", biggest.get());
}

/// A server that greets from `connection_made` and stays open still hears its peer: its
/// socket joins the poll once the greeting is flushed (X-02), and a reply that arrives
/// after that flush is read.
#[test]
fn x02_a_greeting_server_reads_the_reply() {
    let reactor = Reactor::new().unwrap();
    let server_log = new_log();
    let heard = bytes();
    let h = heard.clone();
    let server = server(&server_log, move |p| {
        let h = h.clone();
        p.made(sending(b"hello")).data(move |t, data| {
            h.borrow_mut().extend_from_slice(data);
            if h.borrow().ends_with(b"\n") {
                t.lose_connection();
            }
            Ok(())
        })
    });
    let log = new_log();
    let received = bytes();
    let rcv = received.clone();
    let client = client(&log, move |p| {
        let rcv = rcv.clone();
        p.data(move |t, data| {
            rcv.borrow_mut().extend_from_slice(data);
            if rcv.borrow().as_slice() == b"hello" {
                t.write(b"hello back\n");
            }
            Ok(())
        })
    })
    .lost(stop_on_client_lost(&reactor));
    converse(&reactor, server, client);
    assert_eq!(received.borrow().as_slice(), b"hello");
    assert_eq!(heard.borrow().as_slice(), b"hello back\n");
    assert_eq!(events(&server_log), server_life(&["srv:data"], "Done"));
    assert_eq!(events(&log), client_life(&["cli:data"], "Done"));
}

#[test]
fn x08_x09_abort_drops_buffered_data_and_peer_sees_reset() {
    let reactor = Reactor::new().unwrap();
    let server_log = new_log();
    let sl = server_log.clone();
    let server = server(&server_log, move |p| {
        let l = sl.clone();
        p.data(move |t, _| {
            t.write(&pattern(0, 10 * 1024 * 1024));
            t.abort_connection();
            push(&l, format!("disconnecting: {}", t.is_disconnecting()));
            // X-09: harmless repeats; later writes never sent.
            t.abort_connection();
            t.lose_connection();
            t.write(b"never");
            push(&l, "abort returned");
            Ok(())
        })
    });
    let log = new_log();
    let received = bytes();
    let peer_reason = Rc::new(RefCell::new(String::new()));
    let (rcv, pr, r) = (received.clone(), peer_reason.clone(), reactor.clone());
    let client =
        client(&log, move |p| p.into_received(&rcv).made(sending(b"go"))).lost(move |_, why| {
            *pr.borrow_mut() = reason(why);
            stop(&r)
        });
    converse(&reactor, server, client);
    assert_eq!(
        events(&server_log),
        server_life(
            &["srv:data", "disconnecting: true", "abort returned"],
            "Aborted"
        )
    );
    let peer_reason = peer_reason.borrow().clone();
    assert!(
        peer_reason == "Reset" || peer_reason == "Lost",
        "the peer sees a reset, not {peer_reason}"
    );
    assert!(
        received.borrow().is_empty(),
        "buffered data was dropped, {} bytes arrived",
        received.borrow().len()
    );
}

#[test]
fn x10_peer_reset_reaches_connection_lost_as_reset() {
    let reactor = Reactor::new().unwrap();
    let log = new_log();
    let peer: Shared<StdStream> = shared();
    let got: Shared<CloseReason> = shared();
    let (p, r, g) = (peer.clone(), reactor.clone(), got.clone());
    let server = server(&log, move |proto| {
        let (p, r, g) = (p.clone(), r.clone(), g.clone());
        proto
            .made(move |_| {
                // The peer closes with SO_LINGER 0: a reset.
                reset(p.borrow_mut().take().expect("peer"));
                Ok(())
            })
            .lost(move |why| {
                *g.borrow_mut() = Some(why.clone());
                stop(&r)
            })
    });
    *peer.borrow_mut() = Some(dial(&reactor, server));
    run(&reactor);
    assert_eq!(events(&log), server_life(&[], "Reset"));
    match got.borrow().as_ref() {
        Some(CloseReason::Reset(e)) => {
            assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset)
        }
        other => panic!("expected Reset, got {other:?}"),
    }
}

#[test]
fn x11_x12_half_close_delivers_eof_and_reading_continues_both_ways() {
    let reactor = Reactor::new().unwrap();
    let server_log = new_log();
    let server_received = bytes();
    let srcv = server_received.clone();
    let server = server(&server_log, move |p| {
        p.into_received(&srcv)
            .data(|t, data| {
                // Reading and writing go on after the peer's half-close.
                t.write(&data.to_ascii_uppercase());
                Ok(())
            })
            .half_close(|t| {
                t.write(b"|bye");
                t.lose_connection();
                Ok(())
            })
    });
    let log = new_log();
    let received = bytes();
    let (l, rcv) = (log.clone(), received.clone());
    let client = client(&log, move |p| {
        let l = l.clone();
        p.into_received(&rcv)
            .made(move |t| {
                t.write(b"abc");
                t.lose_write_connection();
                // X-03: discarded after the half-close.
                t.write(b"discarded");
                push(&l, format!("disconnecting: {}", t.is_disconnecting()));
                Ok(())
            })
            .half_close(|_| Ok(()))
    })
    .lost(stop_on_client_lost(&reactor));
    converse(&reactor, server, client);
    assert_eq!(
        events(&log),
        client_life(
            &[
                "disconnecting: false",
                "cli:write_lost",
                "cli:data",
                "cli:read_lost",
            ],
            "Done"
        )
    );
    assert_eq!(&*received.borrow(), b"ABC|bye");
    assert_eq!(
        events(&server_log),
        server_life(&["srv:data", "srv:read_lost"], "Done")
    );
    assert_eq!(&*server_received.borrow(), b"abc");
}

#[test]
fn x11_lose_write_connection_without_half_close_opt_in() {
    let reactor = Reactor::new().unwrap();
    let server_log = new_log();
    let server_received = bytes();
    let srcv = server_received.clone();
    let server = server(&server_log, move |p| p.into_received(&srcv));
    let log = new_log();
    let client = client(&log, |p| {
        p.made(|t| {
            t.write(b"abc");
            t.lose_write_connection();
            Ok(())
        })
    })
    .lost(stop_on_client_lost(&reactor));
    converse(&reactor, server, client);
    // No write_connection_lost for a protocol that did not opt in; the server, not
    // half-close aware either, closes on EOF and the client then sees the close.
    assert_eq!(events(&log), client_life(&[], "Done"));
    assert_eq!(events(&server_log), server_life(&["srv:data"], "Done"));
    assert_eq!(&*server_received.borrow(), b"abc");
}

/// Dials `server` with a plain socket that writes `request` and then half-closes.
fn dial_and_send_eof(reactor: &Reactor, server: Fac, request: &[u8]) -> StdStream {
    let mut peer = dial(reactor, server);
    peer.write_all(request).unwrap();
    peer.shutdown(Shutdown::Write).unwrap();
    peer
}

#[test]
fn x12_peer_eof_without_half_close_is_done() {
    let reactor = Reactor::new().unwrap();
    let log = new_log();
    let r = reactor.clone();
    let server = server(&log, move |p| p.lost(stop_on_lost(&r)));
    let _peer = dial_and_send_eof(&reactor, server, b"x");
    run(&reactor);
    assert_eq!(events(&log), server_life(&["srv:data"], "Done"));
}

#[test]
fn x12_peer_half_close_still_gets_the_reply_before_done() {
    let reactor = Reactor::new().unwrap();
    let log = new_log();
    let r = reactor.clone();
    let server = server(&log, move |p| {
        p.data(|t, data| {
            // Buffered; the peer's EOF is read in the same pass.
            t.write(&data.to_ascii_uppercase());
            Ok(())
        })
        .lost(stop_on_lost(&r))
    });
    let mut peer = dial_and_send_eof(&reactor, server, b"request");
    run(&reactor);
    assert_eq!(events(&log), server_life(&["srv:data"], "Done"));
    let mut reply = Vec::new();
    peer.read_to_end(&mut reply).unwrap();
    assert_eq!(reply, b"REQUEST");
}

/// A read stops short at an urgent mark with bytes behind it. When the peer's FIN had
/// already been reported, that short read must not be taken for the end of the stream:
/// the bytes after the mark still arrive, then the EOF. (The urgent byte itself is out
/// of band: without SO_OOBINLINE it is not part of the stream.)
#[test]
fn x12_bytes_after_an_urgent_mark_arrive_before_the_eof() {
    let reactor = Reactor::new().unwrap();
    let log = new_log();
    let received = Rc::new(RefCell::new(Vec::new()));
    let (r, into) = (reactor.clone(), received.clone());
    let server = server(&log, move |p| p.into_received(&into).lost(stop_on_lost(&r)));
    let mut peer = dial(&reactor, server);
    peer.set_nodelay(true).unwrap();
    peer.write_all(b"before").unwrap();
    socket2::SockRef::from(&peer)
        .send_out_of_band(b"!")
        .unwrap();
    peer.write_all(b"after").unwrap();
    peer.shutdown(Shutdown::Write).unwrap();
    run(&reactor);
    assert_eq!(String::from_utf8_lossy(&received.borrow()), "beforeafter");
    assert_eq!(events(&log).last().map(String::as_str), Some("srvf:stop"));
    assert!(
        events(&log).contains(&"srv:lost(Done)".to_string()),
        "{:?}",
        events(&log)
    );
}

#[test]
fn x13_read_connection_lost_error_closes_completely() {
    let reactor = Reactor::new().unwrap();
    let log = new_log();
    let r = reactor.clone();
    let server = server(&log, move |p| {
        p.half_close(|_| Err(Failure::msg("cannot cope")))
            .lost(stop_on_lost(&r))
    });
    let mut peer = dial_and_send_eof(&reactor, server, b"");
    run(&reactor);
    assert_eq!(
        events(&log),
        server_life(&["srv:read_lost"], "Protocol(cannot cope)")
    );
    let mut rest = Vec::new();
    peer.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "closed completely: the peer sees EOF");
}

#[test]
fn x13_write_connection_lost_error_closes_completely() {
    let reactor = Reactor::new().unwrap();
    let server_log = new_log();
    let server_received = bytes();
    let srcv = server_received.clone();
    let done = countdown(&reactor, 2);
    let d = done.clone();
    let server = server(&server_log, move |p| {
        let d = d.clone();
        p.into_received(&srcv).lost(move |_| d())
    });
    let log = new_log();
    let client = client(&log, |p| {
        p.made(|t| {
            t.write(b"abc");
            t.lose_write_connection();
            Ok(())
        })
        .write_lost(|_| Err(Failure::msg("cannot cope")))
    })
    .lost(move |_, _| done());
    converse(&reactor, server, client);
    assert_eq!(
        events(&log),
        client_life(&["cli:write_lost"], "Protocol(cannot cope)")
    );
    assert_eq!(&*server_received.borrow(), b"abc");
}

#[test]
fn x13_lose_write_connection_after_the_peer_closed_is_quiet() {
    let reactor = Reactor::new().unwrap();
    let server_log = new_log();
    let server = server(&server_log, |p| {
        p.made(|t| {
            t.lose_connection();
            Ok(())
        })
    });
    let log = new_log();
    let client = client(&log, |p| {
        p.half_close(|t| {
            // The peer has closed; shutting down our side too is no error.
            t.lose_write_connection();
            t.lose_write_connection();
            Ok(())
        })
    })
    .lost(stop_on_client_lost(&reactor));
    converse(&reactor, server, client);
    assert_eq!(
        events(&log),
        client_life(&["cli:read_lost", "cli:write_lost"], "Done")
    );
}

#[test]
fn x03_writes_after_the_connection_is_lost_are_discarded() {
    let reactor = Reactor::new().unwrap();
    let log = new_log();
    let kept: Shared<TransportRef> = Rc::default();
    let (k, r) = (kept.clone(), reactor.clone());
    let server = server(&log, move |p| {
        let (k, k2, r) = (k.clone(), k.clone(), r.clone());
        p.made(move |t| {
            *k.borrow_mut() = Some(t.clone());
            Ok(())
        })
        .lost(move |_| {
            let transport = k2.borrow().clone().expect("kept at connection_made");
            let sources = r.io_source_count();
            transport.write(b"late");
            transport.write_sequence(&[b"later", b"still"]);
            assert_eq!(
                r.io_source_count(),
                sources,
                "a late write registers nothing"
            );
            stop(&r);
        })
    });
    let mut peer = dial_and_send_eof(&reactor, server, b"x");
    run(&reactor);
    assert_eq!(events(&log), server_life(&["srv:data"], "Done"));
    let mut after = Vec::new();
    peer.read_to_end(&mut after).unwrap();
    assert!(
        after.is_empty(),
        "nothing is sent after the close: {after:?}"
    );
}

// ---------------------------------------------------------------------------------------
// X — addresses

/// One side's view of the connection: (side, peer, host).
type View = (&'static str, SocketAddr, SocketAddr);

/// Shapes a protocol to record its transport's addresses under `side` as it connects,
/// and notes the address its factory's `build_protocol` was given.
fn record_addresses(
    log: &Log,
    factory_tag: &'static str,
    side: &'static str,
    seen: &Rc<RefCell<Vec<View>>>,
    built_for: &Rc<RefCell<Vec<SocketAddr>>>,
    close: bool,
) -> Fac {
    let (l, s, b) = (log.clone(), seen.clone(), built_for.clone());
    Fac::new(factory_tag, log, move |addr| {
        b.borrow_mut().push(addr.as_inet().expect("a TCP address"));
        let s = s.clone();
        Some(Box::new(Rec::new(side, &l).made(move |t| {
            let inet = |a: Address| a.as_inet().expect("a TCP address");
            s.borrow_mut().push((side, inet(t.peer()), inet(t.host())));
            if close {
                t.lose_connection();
            }
            Ok(())
        })))
    })
}

fn check_addresses(address: SocketAddr) {
    let reactor = Reactor::new().unwrap();
    let log = new_log();
    let seen: Rc<RefCell<Vec<View>>> = Rc::new(RefCell::new(Vec::new()));
    let built_for: Rc<RefCell<Vec<SocketAddr>>> = Rc::new(RefCell::new(Vec::new()));
    let server = record_addresses(&log, "srvf", "srv", &seen, &built_for, true);
    let port = listen(&reactor, address, server.rc());
    let client = record_addresses(&log, "cf", "cli", &seen, &built_for, false)
        .lost(stop_on_client_lost(&reactor));
    connect(&reactor, port.host(), client.rc());
    run(&reactor);
    let listening = port.host();
    assert_eq!(listening.ip(), address.ip());
    assert_ne!(listening.port(), 0, "P-10");
    let seen = seen.borrow();
    assert_eq!(seen.len(), 2, "{:?}", events(&log));
    // The server made its protocol first or second: find each side by its tag.
    let side = |tag: &str| {
        let view = seen.iter().find(|(side, _, _)| *side == tag);
        view.map(|&(_, peer, host)| (peer, host))
    };
    let (server_peer, server_host) = side("srv").expect("server side");
    let (client_peer, client_host) = side("cli").expect("client side");
    assert_eq!(
        server_host, listening,
        "server host = the accepted socket's address"
    );
    assert_eq!(
        client_peer, listening,
        "client peer = the address connected to"
    );
    assert_eq!(
        server_peer, client_host,
        "server peer = the client's address"
    );
    assert_eq!(client_host.ip(), address.ip());
    assert_ne!(client_host.port(), 0);
    // build_protocol gets the peer's address on both sides.
    let built_for = built_for.borrow();
    assert!(built_for.contains(&client_host) && built_for.contains(&listening));
}

#[test]
fn x15_p10_peer_and_host_addresses_ipv4() {
    check_addresses(v4());
}

#[test]
fn x15_p10_peer_and_host_addresses_ipv6() {
    if let Some(address) = v6() {
        check_addresses(address);
    }
}

// ---------------------------------------------------------------------------------------
// X — reading

/// A peer that writes `len` bytes from its own thread and then waits for EOF.
fn spawn_writer(address: SocketAddr, len: usize) -> std::thread::JoinHandle<usize> {
    let stream = StdStream::connect(address).unwrap();
    std::thread::spawn(move || {
        let mut stream = stream;
        let mut sent = 0;
        let data = pattern(0, 64 * 1024);
        while sent < len {
            match stream.write(&data[..data.len().min(len - sent)]) {
                Ok(n) => sent += n,
                Err(_) => break, // closed on us: expected in these tests
            }
        }
        let mut sink = Vec::new();
        let _ = stream.read_to_end(&mut sink);
        sent
    })
}

fn no_data_after_closing(abort: bool) {
    let reactor = Reactor::new().unwrap();
    let log = new_log();
    let (l, r) = (log.clone(), reactor.clone());
    let calls = Rc::new(Cell::new(0));
    let c = calls.clone();
    let server = server(&log, move |p| {
        let (c, l) = (c.clone(), l.clone());
        p.data(move |t, _| {
            c.set(c.get() + 1);
            if abort {
                t.abort_connection();
            } else {
                t.lose_connection();
            }
            push(&l, "closed inside data_received");
            Ok(())
        })
        .lost(stop_on_lost(&r))
    });
    let port = listen(&reactor, v4(), server.rc());
    // Plenty of input queued: more than one read's worth.
    let writer = spawn_writer(port.host(), 4 * 1024 * 1024);
    run(&reactor);
    let expected_reason = if abort { "Aborted" } else { "Done" };
    assert_eq!(
        events(&log),
        server_life(
            // X-06, X-08: the close call returned before connection_lost ran.
            &["srv:data", "closed inside data_received"],
            expected_reason
        )
    );
    assert_eq!(calls.get(), 1, "X-16: no data_received after closing");
    writer.join().unwrap();
}

#[test]
fn x06_x16_close_inside_data_received_is_reported_later_and_stops_delivery() {
    no_data_after_closing(false);
}

#[test]
fn x08_x16_abort_inside_data_received_is_reported_later_and_stops_delivery() {
    no_data_after_closing(true);
}

// ---------------------------------------------------------------------------------------
// X — flow control

/// Shapes a client protocol that writes one byte and then pauses reading from
/// `connection_made`, handing its transport to the test through `transport` and keeping
/// what it receives in `received`.
fn paused_client(transport: &Slot, received: &Bytes) -> impl Fn(Rec) -> Rec + use<> {
    let (t_slot, rcv) = (transport.clone(), received.clone());
    move |p| {
        let t_slot = t_slot.clone();
        p.into_received(&rcv).made(move |t| {
            // The server writes once it has this byte: the pause is in place by then.
            t.write(b"x");
            // Pausing inside connection_made is honoured.
            t.pause_producing();
            *t_slot.borrow_mut() = Some(t.clone());
            Ok(())
        })
    }
}

#[test]
fn x18_pause_producing_stops_reading_until_resume() {
    let reactor = Reactor::new().unwrap();
    let log = new_log();
    let client_transport = slot();
    let (l, ct) = (log.clone(), client_transport.clone());
    let server = server(&new_log(), move |p| {
        let (l, ct) = (l.clone(), ct.clone());
        p.data(|t, _| {
            // The client is paused by now: it wrote before pausing.
            t.write(b"sent while the peer is paused");
            t.lose_connection();
            Ok(())
        })
        .lost(move |_| {
            // Everything is in the client's socket by now (FIN included).
            push(&l, "srv lost");
            let t = ct.borrow().clone().expect("client transport");
            push(&l, "resume");
            t.resume_producing();
        })
    });
    let received = bytes();
    let client = client(&log, paused_client(&client_transport, &received))
        .lost(stop_on_client_lost(&reactor));
    converse(&reactor, server, client);
    assert_eq!(
        events(&log),
        client_life(&["srv lost", "resume", "cli:data"], "Done")
    );
    assert_eq!(&*received.borrow(), b"sent while the peer is paused");
}
/// Writes 16 KiB chunks while not paused; stops for good 1 MiB after it
/// it has been stalled (paused with the peer not reading).
struct Streamer {
    transport: TransportRef,
    reactor: Reactor,
    log: Log,
    paused: Cell<bool>,
    written: Cell<usize>,
    first_pause_at: Cell<Option<usize>>,
    pauses: Cell<usize>,
    resumes: Cell<usize>,
    stall_timer: RefCell<Option<twistctl::reactor::DelayedCall>>,
    /// Set once stalled: the total to write before finishing.
    finish_at: Cell<Option<usize>>,
    peer: Slot,
    this: RefCell<std::rc::Weak<Streamer>>,
}

const CHUNK: usize = 16 * 1024;

impl Streamer {
    /// A streamer writing to `transport`, registered with it and started; `peer` is the
    /// other end's transport, whose reading it resumes once it has stalled.
    fn start(transport: &TransportRef, reactor: &Reactor, log: &Log, peer: &Slot) -> Rc<Streamer> {
        let streamer = Rc::new(Streamer {
            transport: transport.clone(),
            reactor: reactor.clone(),
            log: log.clone(),
            paused: Cell::new(false),
            written: Cell::new(0),
            first_pause_at: Cell::new(None),
            pauses: Cell::new(0),
            resumes: Cell::new(0),
            stall_timer: RefCell::new(None),
            finish_at: Cell::new(None),
            peer: peer.clone(),
            this: RefCell::new(std::rc::Weak::new()),
        });
        *streamer.this.borrow_mut() = Rc::downgrade(&streamer);
        transport.register_producer(streamer.clone());
        streamer.produce();
        streamer
    }

    fn produce(&self) {
        while !self.paused.get() {
            if let Some(end) = self.finish_at.get()
                && self.written.get() >= end
            {
                push(&self.log, "producer done");
                self.transport.unregister_producer();
                self.transport.lose_connection();
                return;
            }
            let start = self.written.get();
            self.written.set(start + CHUNK);
            self.transport.write(&pattern(start, CHUNK));
        }
    }
}

impl Producer for Streamer {
    fn pause_producing(&self) {
        self.paused.set(true);
        self.pauses.set(self.pauses.get() + 1);
        if self.first_pause_at.get().is_none() {
            self.first_pause_at.set(Some(self.written.get()));
        }
        if self.finish_at.get().is_some() {
            return;
        }
        // Paused for 200 ms with the peer not reading: stalled. Let the peer read.
        let this = self.this.borrow().clone();
        let timer = self
            .reactor
            .call_later(Duration::from_millis(200), move || {
                let Some(this) = this.upgrade() else { return };
                if this.paused.get() && this.finish_at.get().is_none() {
                    push(&this.log, "stalled while paused");
                    this.finish_at.set(Some(this.written.get() + 1024 * 1024));
                    let peer = this.peer.borrow().clone().expect("peer");
                    peer.resume_producing();
                }
            });
        if let Some(old) = self.stall_timer.borrow_mut().replace(timer) {
            let _ = old.cancel();
        }
    }

    fn resume_producing(&self) {
        self.resumes.set(self.resumes.get() + 1);
        if let Some(timer) = self.stall_timer.borrow_mut().take() {
            let _ = timer.cancel();
        }
        if self.finish_at.get().is_some() {
            let logged = self.log.borrow().iter().any(|e| e == "resumed after stall");
            if !logged {
                push(&self.log, "resumed after stall");
            }
        }
        self.paused.set(false);
        self.produce();
    }

    fn stop_producing(&self) {
        push(&self.log, "stop_producing");
    }
}

#[test]
fn x19_producer_paused_above_high_water_mark_and_resumed_when_drained() {
    let reactor = Reactor::new().unwrap();
    let log = new_log();
    let peer = slot();
    let streamer: Shared<Rc<Streamer>> = shared();
    let (l, p, s, r) = (log.clone(), peer.clone(), streamer.clone(), reactor.clone());
    let server = server(&new_log(), move |proto| {
        let (l, p, s, r) = (l.clone(), p.clone(), s.clone(), r.clone());
        let l2 = l.clone();
        proto
            .data(move |t, _| {
                // The peer has paused by now: it wrote before pausing.
                if s.borrow().is_none() {
                    *s.borrow_mut() = Some(Streamer::start(t, &r, &l, &p));
                }
                Ok(())
            })
            .lost(move |why| push(&l2, format!("srv lost({})", reason(why))))
    });
    let received = bytes();
    let (l, paused) = (log.clone(), paused_client(&peer, &received));
    // A peer that does not read, until the producer has stalled.
    let client = client(&new_log(), move |p| {
        let l = l.clone();
        paused(p).lost(move |why| push(&l, format!("cli lost({})", reason(why))))
    })
    .lost(stop_on_client_lost(&reactor));
    converse(&reactor, server, client);
    assert_eq!(
        events(&log),
        seq(&[
            "stalled while paused",
            "resumed after stall",
            "producer done",
            "srv lost(Done)",
            "cli lost(Done)",
        ])
    );
    let streamer = streamer.borrow().clone().expect("streamer");
    // Paused by the write that first took the buffer above the mark, not before.
    let first = streamer.first_pause_at.get().expect("paused");
    assert!(
        first > HIGH_WATER_MARK && first <= HIGH_WATER_MARK + CHUNK,
        "{first}"
    );
    assert!(streamer.resumes.get() >= 1);
    assert_eq!(
        streamer.pauses.get(),
        streamer.resumes.get(),
        "resumed after each pause"
    );
    let total = streamer.written.get();
    let received = received.borrow();
    assert_eq!(received.len(), total);
    assert!(*received == pattern(0, total), "bytes in order, none lost");
}

/// A producer that only logs what it is told.
struct Quiet(Log);

impl Producer for Quiet {
    fn pause_producing(&self) {
        push(&self.0, "pause");
    }
    fn resume_producing(&self) {
        push(&self.0, "resume");
    }
    fn stop_producing(&self) {
        push(&self.0, "stop_producing");
    }
}

#[test]
fn x19_producer_is_stopped_when_the_connection_ends() {
    let reactor = Reactor::new().unwrap();
    let log = new_log();
    let kept = slot();
    let (l, k, r) = (log.clone(), kept.clone(), reactor.clone());
    let server = Fac::new("srvf", &new_log(), move |_| {
        let (l, l2, k, k2, r) = (l.clone(), l.clone(), k.clone(), k.clone(), r.clone());
        Some(Box::new(
            Rec::new("srv", &l)
                .made(move |t| {
                    t.register_producer(Rc::new(Quiet(l2.clone())));
                    *k.borrow_mut() = Some(t.clone());
                    t.lose_connection();
                    Ok(())
                })
                .lost(move |_| {
                    // Registering on a closed transport stops the producer at once.
                    let t = k2.borrow().clone().expect("transport");
                    t.register_producer(Rc::new(Quiet(l.clone())));
                    stop(&r);
                }),
        ))
    });
    let _peer = dial(&reactor, server);
    run(&reactor);
    assert_eq!(
        events(&log),
        seq(&[
            "srv:made",
            "stop_producing",
            "srv:lost(Done)",
            "stop_producing"
        ])
    );
}

#[test]
fn x19_write_buffer_limit_aborts_a_peer_that_never_reads() {
    const STEP: usize = 1024 * 1024;
    let reactor = Reactor::new().unwrap();
    let log = new_log();
    let written_at_abort = Rc::new(Cell::new(0usize));
    let server_reason: Shared<CloseReason> = shared();
    let (l, w, sr) = (log.clone(), written_at_abort.clone(), server_reason.clone());
    let r = reactor.clone();
    let server = server(&new_log(), move |p| {
        let (l, w, sr, r) = (l.clone(), w.clone(), sr.clone(), r.clone());
        let l2 = l.clone();
        p.made(move |t| {
            fn feed(t: TransportRef, r: Reactor, w: Rc<Cell<usize>>, l: Log, sent: usize) {
                let chunk = vec![7u8; STEP];
                t.write(&chunk);
                let sent = sent + STEP;
                if t.is_disconnecting() {
                    w.set(sent);
                    push(&l, "aborted by the cap");
                    return;
                }
                assert!(sent <= 2 * WRITE_BUFFER_LIMIT, "the buffer kept growing");
                let r2 = r.clone();
                r.call_later(Duration::ZERO, move || feed(t, r2, w, l, sent));
            }
            feed(t.clone(), r.clone(), w.clone(), l.clone(), 0);
            Ok(())
        })
        .lost(move |why| {
            push(&l2, format!("srv lost({})", reason(why)));
            *sr.borrow_mut() = Some(why.clone());
        })
    });
    let l = log.clone();
    let client = client(&new_log(), move |p| {
        let l = l.clone();
        p.made(|t| {
            t.pause_producing();
            Ok(())
        })
        .lost(move |why| push(&l, format!("cli lost({})", reason(why))))
    })
    .lost(stop_on_client_lost(&reactor));
    converse(&reactor, server, client);
    let log = events(&log);
    assert_eq!(
        log[..2],
        seq(&["aborted by the cap", "srv lost(Lost)"]),
        "{log:?}"
    );
    assert!(
        log[2] == "cli lost(Reset)" || log[2] == "cli lost(Lost)",
        "{log:?}"
    );
    let sent = written_at_abort.get();
    assert!(
        sent > WRITE_BUFFER_LIMIT,
        "aborted only past the cap: {sent}"
    );
    match server_reason.borrow().as_ref() {
        Some(CloseReason::Lost(Some(e))) => {
            assert!(e.to_string().contains("write buffer limit"), "{e}")
        }
        other => panic!("expected Lost with the cap's error, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// Accept errors (EMFILE), in a child process with a low descriptor limit

const EMFILE_CHILD: &str = "TWISTCTL_TCP_EMFILE_CHILD";

/// Runs only as the child of `accept_emfile_pauses_and_recovers` (which sets the
/// environment variable and lowers the descriptor limit); in a normal run it returns.
#[test]
fn accept_emfile_child_process() {
    if std::env::var_os(EMFILE_CHILD).is_none() {
        return;
    }
    let reactor = Reactor::new().unwrap();
    let log = new_log();
    let made_at: Rc<RefCell<Vec<Duration>>> = Rc::new(RefCell::new(Vec::new()));
    let (m, r) = (made_at.clone(), reactor.clone());
    let server = server(&log, move |p| {
        let (m, r) = (m.clone(), r.clone());
        p.made(move |_| {
            m.borrow_mut().push(r.seconds());
            if m.borrow().len() == 3 {
                stop(&r);
            }
            Ok(())
        })
    });
    let port = listen(&reactor, v4(), server.rc());
    let clients: Vec<StdStream> = (0..3)
        .map(|_| StdStream::connect(port.host()).unwrap())
        .collect();
    // Use up every descriptor left, so that accept fails with EMFILE.
    let mut hogs = Vec::new();
    loop {
        match std::fs::File::open("/dev/null") {
            Ok(file) => hogs.push(file),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(24), "EMFILE: {e}");
                break;
            }
        }
    }
    let hogs = Rc::new(RefCell::new(hogs));
    let h = hogs.clone();
    let freed_at = Rc::new(Cell::new(Duration::ZERO));
    let (f, r) = (freed_at.clone(), reactor.clone());
    reactor.call_later(Duration::from_millis(350), move || {
        h.borrow_mut().clear();
        f.set(r.seconds());
    });
    run(&reactor);
    let made_at = made_at.borrow();
    assert_eq!(made_at.len(), 3, "{:?}", events(&log));
    assert!(freed_at.get() > Duration::ZERO);
    for at in made_at.iter() {
        assert!(
            *at >= freed_at.get(),
            "accepted only once descriptors were free"
        );
    }
    drop(clients);
    println!("EMFILE-CHILD-OK");
}

#[test]
fn accept_emfile_pauses_and_recovers() {
    let exe = std::env::current_exe().unwrap();
    let output = std::process::Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -n 64 && exec "$0" "$@""#)
        .arg(&exe)
        .args([
            "accept_emfile_child_process",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(EMFILE_CHILD, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("EMFILE-CHILD-OK"),
        "child failed: {}\n{stdout}\n{stderr}",
        output.status
    );
}
