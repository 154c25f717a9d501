//! The hostname endpoint against spec items E-01..E-08, on real loopback sockets: open
//! listeners (127.0.0.1, port 0), ports that refuse, and "black holes" (listeners whose
//! accept queue is full, so the kernel drops new SYNs) stand in for a slow network,
//! with the address lists injected so no resolver is involved unless the test is about
//! resolution. Every run is bounded by a watchdog timer (5 s).

use std::cell::{Cell, RefCell};
use std::io::Read;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::rc::Rc;
use std::time::Duration;

use socket2::{Domain, Socket, Type};
use twistctl::reactor::endpoints::{
    AttemptLimiter, AttemptOutcome, CheckHandle, CheckedFactory, Connecting, Connection,
    EndpointError, EndpointErrorKind, EndpointOptions, Family, Grant, HostnameEndpoint, Pending,
    ResolveError,
};
use twistctl::reactor::{
    Address, ConnectError, Deferred, Factory, Failure, Protocol, ProtocolResult, Reactor, Step,
    TransportRef,
};

const WATCHDOG: Duration = Duration::from_secs(5);

/// Runs the reactor until the test stops it; fails if the watchdog had to.
fn run(reactor: &Reactor) {
    let fired = Rc::new(Cell::new(false));
    let (flag, r) = (fired.clone(), reactor.clone());
    let dog = reactor.call_later(WATCHDOG, move || {
        flag.set(true);
        r.stop()
    });
    reactor.run().expect("the reactor ran");
    let _ = dog.cancel();
    assert!(!fired.get(), "watchdog: the test did not finish within 5 s");
}

/// A listener on 127.0.0.1 that the kernel completes handshakes for.
fn listener() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

/// A port that refuses: bound once, then closed.
fn refused() -> SocketAddr {
    listener().1
}

/// A listener whose accept queue is full: connects to it hang in SYN-SENT.
struct BlackHole {
    addr: SocketAddr,
    _listener: Socket,
    _fillers: Vec<TcpStream>,
}

fn black_hole(ip: &str) -> BlackHole {
    let ip: IpAddr = ip.parse().unwrap();
    let listener = Socket::new(
        Domain::for_address(SocketAddr::new(ip, 0)),
        Type::STREAM,
        None,
    )
    .unwrap();
    if ip.is_ipv6() {
        listener.set_only_v6(true).unwrap();
    }
    listener.bind(&SocketAddr::new(ip, 0).into()).unwrap();
    listener.listen(0).unwrap();
    let addr = listener.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(100)) {
            Ok(stream) => fillers.push(stream),
            Err(_) => {
                return BlackHole {
                    addr,
                    _listener: listener,
                    _fillers: fillers,
                };
            }
        }
    }
    panic!("the accept queue of {addr} never filled up");
}

/// The machine has IPv6 loopback.
fn has_v6() -> bool {
    TcpListener::bind("[::1]:0").is_ok()
}

/// The address for a black hole in the "other" family: [::1] where there is one.
fn hole_ip() -> &'static str {
    if has_v6() { "::1" } else { "127.0.0.1" }
}

type Log = Rc<RefCell<Vec<String>>>;

type OnMade = Box<dyn FnOnce(&TransportRef)>;

type Queue = Rc<RefCell<Vec<Grant>>>;

/// A protocol that logs its start and whatever arrives.
struct Logged {
    log: Log,
    on_made: Option<OnMade>,
}

impl Protocol for Logged {
    fn connection_made(&mut self, transport: &TransportRef) -> ProtocolResult {
        self.log.borrow_mut().push("made".into());
        if let Some(f) = self.on_made.take() {
            f(transport);
        }
        Ok(())
    }

    fn data_received(&mut self, _: &TransportRef, data: &[u8]) -> ProtocolResult {
        self.log
            .borrow_mut()
            .push(format!("data {}", String::from_utf8_lossy(data)));
        Ok(())
    }
}

/// Counts the protocols it builds (E-01: one, for the winner only).
struct Counting {
    log: Log,
    built: Cell<usize>,
}

impl Counting {
    fn new(log: &Log) -> Rc<Counting> {
        Rc::new(Counting {
            log: log.clone(),
            built: Cell::new(0),
        })
    }
}

impl Factory for Counting {
    fn build_protocol(&self, addr: Address) -> Option<Box<dyn Protocol>> {
        self.built.set(self.built.get() + 1);
        self.log.borrow_mut().push(format!("build {addr}"));
        Some(Box::new(Logged {
            log: self.log.clone(),
            on_made: None,
        }))
    }
}

type Result_ = Rc<RefCell<Option<Result<Connection, Failure>>>>;

/// Stops the reactor when `deferred` fires, and keeps its outcome.
fn collect(reactor: &Reactor, deferred: &Deferred<Connection>, log: &Log) -> Result_ {
    let out: Result_ = Rc::default();
    let (o, r, log) = (out.clone(), reactor.clone(), log.clone());
    deferred.add_both(move |outcome| {
        log.borrow_mut().push("fired".into());
        *o.borrow_mut() = Some(outcome.clone());
        let _ = r.stop();
        Step::from(outcome)
    });
    out
}

fn connection(out: &Result_) -> Connection {
    match out.borrow_mut().take() {
        Some(Ok(connection)) => connection,
        Some(Err(failure)) => panic!("expected a connection, got {failure}"),
        None => panic!("the Deferred did not fire"),
    }
}

fn endpoint_error(out: &Result_) -> EndpointError {
    match out.borrow_mut().take() {
        Some(Err(failure)) => failure
            .downcast_ref::<EndpointError>()
            .unwrap_or_else(|| panic!("not an EndpointError: {failure}"))
            .clone(),
        Some(Ok(connection)) => panic!("expected a failure, got {connection:?}"),
        None => panic!("the Deferred did not fire"),
    }
}

fn options() -> EndpointOptions {
    EndpointOptions {
        attempt_timeout: Some(Duration::from_secs(4)),
        ..EndpointOptions::default()
    }
}

#[test]
fn e01_the_deferred_fires_after_connection_made_with_the_only_protocol_built() {
    let reactor = Reactor::new().unwrap();
    let log: Log = Rc::default();
    let (_server, open) = listener();
    let factory = Counting::new(&log);
    let d = HostnameEndpoint::new(&reactor, "127.0.0.1", open.port()).connect(factory.clone());
    assert_eq!(factory.built.get(), 0, "no protocol before a connection");
    let out = collect(&reactor, &d, &log);
    run(&reactor);
    let connection = connection(&out);
    assert_eq!(connection.peer, Address::Tcp(open));
    assert_eq!(connection.transport.peer(), Address::Tcp(open));
    assert_eq!(factory.built.get(), 1);
    assert_eq!(
        *log.borrow(),
        vec![format!("build {open}"), "made".into(), "fired".into()]
    );
}

#[test]
fn e02_an_ip_literal_starts_connecting_at_once_and_a_name_is_resolved_off_the_loop() {
    let reactor = Reactor::new().unwrap();
    let log: Log = Rc::default();
    let (_server, open) = listener();
    let literal = HostnameEndpoint::new(&reactor, "[127.0.0.1]", open.port())
        .start_plain(Counting::new(&log));
    // No resolver round trip: the attempt exists before the loop ever ran.
    assert_eq!(literal.last_tried(), Some(open));
    literal.cancel();

    let named = HostnameEndpoint::new(&reactor, "localhost", open.port())
        .with_options(EndpointOptions {
            family: Family::V4,
            ..options()
        })
        .start_plain(Counting::new(&log));
    // The name goes to a worker thread: nothing is tried inside this call.
    assert!(named.attempts().is_empty());
    let out = collect(&reactor, &named.deferred(), &log);
    run(&reactor);
    assert_eq!(connection(&out).peer, Address::Tcp(open));
}

#[test]
fn e03_an_unknown_name_errbacks_with_a_dns_lookup_error_naming_the_host() {
    let reactor = Reactor::new().unwrap();
    let log: Log = Rc::default();
    let d = HostnameEndpoint::new(&reactor, "nosuch.invalid", 80).connect(Counting::new(&log));
    let out = collect(&reactor, &d, &log);
    run(&reactor);
    let error = endpoint_error(&out);
    assert!(
        matches!(
            error.kind,
            EndpointErrorKind::DnsLookup(ResolveError::Failed(_))
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("nosuch.invalid"), "{error}");
    assert!(error.attempts.is_empty());

    // No address of an allowed family is a lookup error too, and it is known at once.
    let d = HostnameEndpoint::new(&reactor, "127.0.0.1", 80)
        .with_options(EndpointOptions {
            family: Family::V6,
            ..options()
        })
        .connect(Counting::new(&log));
    assert!(d.is_called());
    let out = collect(&reactor, &d, &log);
    assert!(matches!(
        endpoint_error(&out).kind,
        EndpointErrorKind::DnsLookup(ResolveError::NoAddressOfFamily(Family::V6))
    ));
}

#[test]
fn e04_a_black_hole_costs_one_attempt_delay_and_the_next_family_wins() {
    let reactor = Reactor::new().unwrap();
    let log: Log = Rc::default();
    let hole = black_hole(hole_ip());
    let (_server, open) = listener();
    let factory = Counting::new(&log);
    let d = HostnameEndpoint::new(&reactor, "example.test", open.port())
        .with_options(options())
        .with_addresses(vec![hole.addr, open])
        .connect(factory.clone());
    let out = collect(&reactor, &d, &log);
    run(&reactor);
    let connection = connection(&out);
    assert_eq!(connection.peer, Address::Tcp(open));
    assert!(connection.elapsed >= Duration::from_millis(250));
    assert!(
        connection.elapsed < Duration::from_secs(2),
        "{connection:?}"
    );
    let attempts = &connection.attempts;
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0].addr, hole.addr);
    assert!(matches!(attempts[0].outcome, AttemptOutcome::Stopped));
    assert_eq!(attempts[1].addr, open);
    assert!(attempts[1].started >= Duration::from_millis(250));
    assert!(matches!(attempts[1].outcome, AttemptOutcome::Connected));
    assert_eq!(factory.built.get(), 1);
}

#[test]
fn e04_a_failed_attempt_starts_the_next_at_once() {
    let reactor = Reactor::new().unwrap();
    let log: Log = Rc::default();
    let (_server, open) = listener();
    let addrs = vec![refused(), refused(), refused(), open];
    let d = HostnameEndpoint::new(&reactor, "example.test", open.port())
        .with_options(options())
        .with_addresses(addrs)
        .connect(Counting::new(&log));
    let out = collect(&reactor, &d, &log);
    run(&reactor);
    let connection = connection(&out);
    assert_eq!(connection.peer, Address::Tcp(open));
    // Three refusals, each followed at once by the next attempt: far below 3 x 250 ms.
    assert!(
        connection.elapsed < Duration::from_millis(200),
        "{connection:?}"
    );
    let outcomes: Vec<bool> = connection
        .attempts
        .iter()
        .map(|a| matches!(a.outcome, AttemptOutcome::Failed(ConnectError::Refused(_))))
        .collect();
    assert_eq!(outcomes, vec![true, true, true, false]);
}

#[test]
fn e05_a_connection_made_after_the_race_was_decided_gets_no_protocol_and_is_closed() {
    let reactor = Reactor::new().unwrap();
    let log: Log = Rc::default();
    let (_first, first) = listener();
    let (second_server, second) = listener();
    let factory = Counting::new(&log);
    // No delay: both attempts start at once and both handshakes complete.
    let d = HostnameEndpoint::new(&reactor, "example.test", 1)
        .with_options(EndpointOptions {
            attempt_delay: Duration::ZERO,
            ..options()
        })
        .with_addresses(vec![first, second])
        .connect(factory.clone());
    let out = collect(&reactor, &d, &log);
    run(&reactor);
    let connection = connection(&out);
    assert_eq!(factory.built.get(), 1, "only the winner builds a protocol");
    let loser = if connection.peer == Address::Tcp(first) {
        second_server
    } else {
        panic!("the first attempt should win on loopback: {connection:?}");
    };
    assert!(matches!(
        connection.attempts[1].outcome,
        AttemptOutcome::Stopped
    ));
    // If the loser's handshake completed, its socket was closed without a byte.
    loser.set_nonblocking(true).unwrap();
    if let Ok((mut accepted, _)) = loser.accept() {
        accepted.set_nonblocking(false).unwrap();
        accepted
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut buffer = [0u8; 8];
        assert_eq!(accepted.read(&mut buffer).unwrap(), 0);
    }
}

#[test]
fn e06_when_every_attempt_fails_the_last_failure_is_reported_with_every_attempt() {
    let reactor = Reactor::new().unwrap();
    let log: Log = Rc::default();
    let addrs = vec![refused(), refused()];
    let d = HostnameEndpoint::new(&reactor, "example.test", 1)
        .with_options(options())
        .with_addresses(addrs.clone())
        .connect(Counting::new(&log));
    let out = collect(&reactor, &d, &log);
    run(&reactor);
    let error = endpoint_error(&out);
    match &error.kind {
        EndpointErrorKind::Connect {
            addr,
            error: ConnectError::Refused(_),
        } => assert_eq!(*addr, addrs[1]),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let tried: Vec<SocketAddr> = error.attempts.iter().map(|a| a.addr).collect();
    assert_eq!(tried, addrs);
    assert!(
        error
            .attempts
            .iter()
            .all(|a| matches!(a.outcome, AttemptOutcome::Failed(_)) && a.took.is_some())
    );
    assert!(error.to_string().contains("example.test port 1"), "{error}");
}

#[test]
fn e07_cancel_stops_every_attempt_and_names_host_and_port() {
    let reactor = Reactor::new().unwrap();
    let log: Log = Rc::default();
    let holes = [black_hole("127.0.0.1"), black_hole("127.0.0.1")];
    let factory = Counting::new(&log);
    let connecting = HostnameEndpoint::new(&reactor, "example.test", 4321)
        .with_options(EndpointOptions {
            attempt_delay: Duration::ZERO,
            ..options()
        })
        .with_addresses(vec![holes[0].addr, holes[1].addr])
        .start_plain(factory.clone());
    let out = collect(&reactor, &connecting.deferred(), &log);
    let c = connecting.clone();
    reactor.call_later(Duration::from_millis(50), move || c.cancel());
    run(&reactor);
    let error = endpoint_error(&out);
    assert!(matches!(error.kind, EndpointErrorKind::Cancelled));
    assert_eq!(
        error.to_string(),
        "connecting to example.test port 4321 was cancelled"
    );
    assert_eq!(error.attempts.len(), 2);
    assert!(
        error
            .attempts
            .iter()
            .all(|a| matches!(a.outcome, AttemptOutcome::Stopped))
    );
    assert_eq!(
        reactor.io_source_count(),
        0,
        "every attempt's socket is closed"
    );
    assert_eq!(factory.built.get(), 0);
}

#[test]
fn e07_cancel_while_resolving_ignores_the_answer() {
    let reactor = Reactor::new().unwrap();
    let log: Log = Rc::default();
    let factory = Counting::new(&log);
    let d = HostnameEndpoint::new(&reactor, "localhost", refused().port()).connect(factory.clone());
    d.cancel();
    let out = collect(&reactor, &d, &log);
    assert!(matches!(
        endpoint_error(&out).kind,
        EndpointErrorKind::Cancelled
    ));
    // Let the lookup answer (bounded: there is no event to wait for when nothing
    // happens): nothing is tried with it.
    let r = reactor.clone();
    reactor.call_later(Duration::from_millis(300), move || r.stop());
    run(&reactor);
    assert_eq!(*log.borrow(), vec!["fired".to_string()]);
    assert_eq!(reactor.io_source_count(), 0);
}

#[test]
fn e07_cancel_after_the_connection_was_made_has_no_effect() {
    let reactor = Reactor::new().unwrap();
    let log: Log = Rc::default();
    let (_server, open) = listener();
    let d = HostnameEndpoint::new(&reactor, "127.0.0.1", open.port()).connect(Counting::new(&log));
    let (handle, l) = (d.clone(), log.clone());
    d.add_callback(move |connection| {
        handle.cancel();
        let open = !connection.transport.is_disconnecting();
        l.borrow_mut().push(format!("open after cancel: {open}"));
        Step::Value(connection)
    });
    let out = collect(&reactor, &d, &log);
    run(&reactor);
    connection(&out);
    assert_eq!(log.borrow()[2], "open after cancel: true");
}

#[test]
fn e08_the_deadline_errbacks_with_a_timeout_naming_what_was_pending() {
    let reactor = Reactor::new().unwrap();
    let log: Log = Rc::default();
    let hole = black_hole("127.0.0.1");
    // Read before the connect schedules its deadline, which counts from then.
    let started = reactor.seconds();
    let d = HostnameEndpoint::new(&reactor, "example.test", hole.addr.port())
        .with_options(EndpointOptions {
            deadline: Some(Duration::from_millis(300)),
            ..options()
        })
        .with_addresses(vec![hole.addr])
        .connect(Counting::new(&log));
    let out = collect(&reactor, &d, &log);
    run(&reactor);
    assert!(reactor.seconds() - started >= Duration::from_millis(300));
    let error = endpoint_error(&out);
    match &error.kind {
        EndpointErrorKind::TimedOut { after, pending } => {
            assert_eq!(*after, Duration::from_millis(300));
            assert_eq!(*pending, Pending::Connecting(vec![hole.addr]));
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    let text = error.to_string();
    assert!(text.contains(&hole.addr.to_string()), "{text}");
    assert_eq!(reactor.io_source_count(), 0);
}

#[test]
fn e08_each_attempt_has_its_own_timeout() {
    let reactor = Reactor::new().unwrap();
    let log: Log = Rc::default();
    let hole = black_hole("127.0.0.1");
    let d = HostnameEndpoint::new(&reactor, "example.test", 1)
        .with_options(EndpointOptions {
            attempt_timeout: Some(Duration::from_millis(200)),
            ..options()
        })
        .with_addresses(vec![hole.addr])
        .connect(Counting::new(&log));
    let out = collect(&reactor, &d, &log);
    run(&reactor);
    assert!(matches!(
        endpoint_error(&out).kind,
        EndpointErrorKind::Connect {
            error: ConnectError::TimedOut,
            ..
        }
    ));
}

/// Passes its check when the peer's first bytes start with `wanted`, fails otherwise.
struct BannerCheck {
    wanted: &'static [u8],
    check: CheckHandle,
}

impl Protocol for BannerCheck {
    fn data_received(&mut self, _: &TransportRef, data: &[u8]) -> ProtocolResult {
        if data.starts_with(self.wanted) {
            self.check.pass();
        } else {
            self.check.fail(Failure::msg(format!(
                "unexpected banner {:?}",
                String::from_utf8_lossy(data)
            )));
        }
        Ok(())
    }
}

struct BannerFactory(&'static [u8]);

impl CheckedFactory for BannerFactory {
    fn build_protocol(&self, _: Address, check: CheckHandle) -> Option<Box<dyn Protocol>> {
        Some(Box::new(BannerCheck {
            wanted: self.0,
            check,
        }))
    }
}

/// A server on the reactor that greets with `banner`.
struct Greeter(&'static [u8]);

impl Factory for Greeter {
    fn build_protocol(&self, _: Address) -> Option<Box<dyn Protocol>> {
        let banner = self.0;
        Some(Box::new(Logged {
            log: Rc::default(),
            on_made: Some(Box::new(move |t: &TransportRef| t.write(banner))),
        }))
    }
}

fn checked_against(banner: &'static [u8], wanted: &'static [u8], log: &Log) -> Result_ {
    let reactor = Reactor::new().unwrap();
    let port = reactor
        .listen_tcp("127.0.0.1:0".parse().unwrap(), Rc::new(Greeter(banner)))
        .unwrap();
    let d = HostnameEndpoint::new(&reactor, "127.0.0.1", port.host().port())
        .connect_checked(Rc::new(BannerFactory(wanted)));
    let l = log.clone();
    d.add_callback(move |connection| {
        let open = !connection.transport.is_disconnecting();
        l.borrow_mut().push(format!("open: {open}"));
        Step::Value(connection)
    });
    let out = collect(&reactor, &d, log);
    run(&reactor);
    out
}

#[test]
fn a_checked_connect_fires_only_when_the_protocol_passes_its_check() {
    let log: Log = Rc::default();
    let out = checked_against(b"SSH-2.0-test\r\n", b"SSH-2.0", &log);
    connection(&out);
    assert_eq!(*log.borrow(), vec!["open: true", "fired"]);
}

#[test]
fn a_failed_check_is_told_apart_from_a_failed_connect() {
    let log: Log = Rc::default();
    let out = checked_against(b"220 mail\r\n", b"SSH-2.0", &log);
    let error = endpoint_error(&out);
    match &error.kind {
        EndpointErrorKind::Check { failure, .. } => {
            assert!(failure.to_string().contains("220 mail"), "{failure}");
        }
        other => panic!("expected a check failure, got {other:?}"),
    }
    assert!(matches!(
        error.attempts[0].outcome,
        AttemptOutcome::Connected
    ));
}

/// A limiter with one slot, counting what it hands out.
#[derive(Default)]
struct OneSlot {
    busy: Rc<Cell<bool>>,
    queue: Queue,
}

struct Slot {
    busy: Rc<Cell<bool>>,
    queue: Queue,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.busy.set(false);
        let next = {
            let mut queue = self.queue.borrow_mut();
            (!queue.is_empty()).then(|| queue.remove(0))
        };
        if let Some(grant) = next {
            grant_slot(&self.busy, &self.queue, grant);
        }
    }
}

fn grant_slot(busy: &Rc<Cell<bool>>, queue: &Queue, grant: Grant) {
    busy.set(true);
    grant(Box::new(Slot {
        busy: busy.clone(),
        queue: queue.clone(),
    }));
}

impl AttemptLimiter for OneSlot {
    fn acquire(&self, grant: Grant) {
        if self.busy.get() {
            self.queue.borrow_mut().push(grant);
        } else {
            grant_slot(&self.busy, &self.queue, grant);
        }
    }
}

#[test]
fn a_limiter_holds_back_attempts_until_a_slot_is_free() {
    let reactor = Reactor::new().unwrap();
    let log: Log = Rc::default();
    let (_server, open) = listener();
    let limiter = Rc::new(OneSlot::default());
    let (busy, queue) = (limiter.busy.clone(), limiter.queue.clone());
    let d = HostnameEndpoint::new(&reactor, "example.test", 1)
        .with_options(options())
        .with_addresses(vec![refused(), refused(), open])
        .with_limiter(limiter)
        .connect(Counting::new(&log));
    let (b, l) = (busy.clone(), log.clone());
    d.add_callback(move |connection| {
        // The winner's socket still holds the one slot.
        l.borrow_mut().push(format!("slot held: {}", b.get()));
        Step::Value(connection)
    });
    let out = collect(&reactor, &d, &log);
    run(&reactor);
    let connection = connection(&out);
    assert_eq!(connection.peer, Address::Tcp(open));
    assert_eq!(connection.attempts.len(), 3);
    assert!(log.borrow().contains(&"slot held: true".to_string()));
    assert!(queue.borrow().is_empty());
    // The shutdown closed the winner: its slot is back.
    assert!(!busy.get());
}

#[test]
fn e09_a_tcp_description_listens_and_another_connects_to_it() {
    use twistctl::reactor::endpoints::description::Listening;
    use twistctl::reactor::endpoints::{parse_client, parse_server};
    let reactor = Reactor::new().unwrap();
    let log: Log = Rc::default();
    let server = parse_server("tcp:0:interface=127.0.0.1:backlog=8").unwrap();
    let listening = server.listen(&reactor, Rc::new(Greeter(b"hi"))).unwrap();
    let Listening::Tcp(port) = listening else {
        panic!("a TCP port: {listening:?}");
    };
    let port = port.host().port();
    let client = parse_client(&format!("tcp:127.0.0.1:{port}:timeout=2")).unwrap();
    let d = client.connect(&reactor, Counting::new(&log));
    let out = collect(&reactor, &d, &log);
    run(&reactor);
    assert_eq!(connection(&out).peer.as_inet().unwrap().port(), port);
}

/// A checked connect to a server that never sends its banner.
fn silent_check(reactor: &Reactor, open: SocketAddr, deadline: Option<Duration>) -> Connecting {
    HostnameEndpoint::new(reactor, "127.0.0.1", open.port())
        .with_options(EndpointOptions {
            deadline,
            ..options()
        })
        .start_checked(Rc::new(BannerFactory(b"SSH-2.0")))
}

#[test]
fn e08_the_deadline_also_bounds_the_check_and_names_it() {
    let reactor = Reactor::new().unwrap();
    let log: Log = Rc::default();
    let (server, open) = listener();
    let connecting = silent_check(&reactor, open, Some(Duration::from_millis(200)));
    let out = collect(&reactor, &connecting.deferred(), &log);
    run(&reactor);
    let error = endpoint_error(&out);
    match &error.kind {
        EndpointErrorKind::TimedOut { pending, .. } => {
            assert_eq!(*pending, Pending::Checking(open));
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(
        error.to_string().contains("checking the connection to"),
        "{error}"
    );
    // The unchecked connection was reset, not left open.
    let (mut accepted, _) = server.accept().unwrap();
    accepted
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut buffer = [0u8; 8];
    let read = accepted.read(&mut buffer);
    assert!(
        matches!(read, Ok(0)) || read.is_err(),
        "expected the connection closed, got {read:?}"
    );
}

#[test]
fn e07_cancel_during_the_check_closes_the_connection() {
    let reactor = Reactor::new().unwrap();
    let log: Log = Rc::default();
    let (_server, open) = listener();
    let connecting = silent_check(&reactor, open, None);
    let out = collect(&reactor, &connecting.deferred(), &log);
    let c = connecting.clone();
    reactor.call_later(Duration::from_millis(100), move || {
        assert!(matches!(c.attempts()[0].outcome, AttemptOutcome::Connected));
        c.cancel();
    });
    run(&reactor);
    assert!(matches!(
        endpoint_error(&out).kind,
        EndpointErrorKind::Cancelled
    ));
}
