//! The connection policies of `protocols::policies` on real loopback connections: an
//! idle timeout closing a silent peer, connection limits refusing with a message, and
//! a bounded outgoing queue giving up on a peer that does not read. Every run is
//! bounded by a watchdog timer (5 s).

use std::cell::{Cell, RefCell};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;
use std::time::Duration;

use twistctl::protocols::policies::{
    ConnectionLimits, LimitFactory, OutgoingQueue, Refusal, TimeoutFactory, TooSlow,
};
use twistctl::reactor::{
    Address, CloseReason, Factory, Protocol, ProtocolResult, Reactor, TransportRef,
};

const WATCHDOG: Duration = Duration::from_secs(5);

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

type Log = Rc<RefCell<Vec<String>>>;

/// Greets, echoes, and logs its end; stops the reactor after `stop_after` ends.
struct Greeter {
    log: Log,
    reactor: Reactor,
    ends: Rc<Cell<usize>>,
    stop_after: usize,
}

impl Protocol for Greeter {
    fn connection_made(&mut self, transport: &TransportRef) -> ProtocolResult {
        transport.write(b"hello\r\n");
        Ok(())
    }

    fn data_received(&mut self, transport: &TransportRef, data: &[u8]) -> ProtocolResult {
        transport.write(data);
        Ok(())
    }

    fn connection_lost(&mut self, reason: &CloseReason) {
        self.log.borrow_mut().push(format!("lost: {reason}"));
        self.ends.set(self.ends.get() + 1);
        if self.ends.get() == self.stop_after {
            let _ = self.reactor.stop();
        }
    }
}

struct Greeters {
    log: Log,
    reactor: Reactor,
    ends: Rc<Cell<usize>>,
    stop_after: usize,
}

impl Factory for Greeters {
    fn build_protocol(&self, _addr: Address) -> Option<Box<dyn Protocol>> {
        Some(Box::new(Greeter {
            log: self.log.clone(),
            reactor: self.reactor.clone(),
            ends: self.ends.clone(),
            stop_after: self.stop_after,
        }))
    }
}

fn greeters(reactor: &Reactor, log: &Log, stop_after: usize) -> Rc<dyn Factory> {
    Rc::new(Greeters {
        log: log.clone(),
        reactor: reactor.clone(),
        ends: Rc::default(),
        stop_after,
    })
}

fn listen(reactor: &Reactor, factory: Rc<dyn Factory>) -> SocketAddr {
    let port = reactor
        .listen_tcp("127.0.0.1:0".parse().unwrap(), factory)
        .expect("listening");
    port.host()
}

/// Reads until the server closes (bounded by a read timeout).
fn read_all(mut stream: TcpStream) -> Vec<u8> {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut all = Vec::new();
    stream.read_to_end(&mut all).expect("the server closed");
    all
}

#[test]
fn an_idle_timeout_closes_a_silent_peer_and_traffic_keeps_a_chatty_one() {
    let reactor = Reactor::new().unwrap();
    let log: Log = Rc::default();
    let scheduler = Rc::new(reactor.clone());
    let factory = Rc::new(TimeoutFactory::new(
        greeters(&reactor, &log, 1),
        scheduler,
        Duration::from_millis(300),
        Duration::from_secs(1),
    ));
    let addr = listen(&reactor, factory);
    let silent = TcpStream::connect(addr).unwrap();
    let mut chatty = TcpStream::connect(addr).unwrap();
    // The chatty peer speaks every 100 ms from its own thread until the silent one is
    // gone; then it stops, and is closed in turn only later.
    // (A peer at its own pace: its writes may fail once the test's reactor is gone.)
    let talker = std::thread::spawn(move || {
        for _ in 0..5 {
            std::thread::sleep(Duration::from_millis(100));
            if chatty.write_all(b"x").is_err() {
                break;
            }
        }
    });
    run(&reactor);
    // The silent peer was closed cleanly by the timeout; the chatty one only by the
    // shutdown that followed.
    assert_eq!(
        *log.borrow(),
        ["lost: connection closed cleanly", "lost: connection lost"]
    );
    assert_eq!(read_all(silent), b"hello\r\n");
    talker.join().unwrap();
}

/// Tells a refused peer why, then closes.
struct Full(Refusal);

impl Protocol for Full {
    fn connection_made(&mut self, transport: &TransportRef) -> ProtocolResult {
        transport.write(format!("full: {}\r\n", self.0).as_bytes());
        transport.lose_connection();
        Ok(())
    }

    fn data_received(&mut self, _: &TransportRef, _: &[u8]) -> ProtocolResult {
        Ok(())
    }
}

#[test]
fn connection_limits_refuse_with_a_message_and_free_places_on_close() {
    let reactor = Reactor::new().unwrap();
    let log: Log = Rc::default();
    let factory = Rc::new(
        LimitFactory::new(
            greeters(&reactor, &log, 2),
            ConnectionLimits {
                total: Some(1),
                per_peer: None,
            },
        )
        .with_refusal(Rc::new(|_, refusal| {
            Some(Box::new(Full(refusal)) as Box<dyn Protocol>)
        })),
    );
    let limits = factory.clone();
    let addr = listen(&reactor, factory);
    let first = TcpStream::connect(addr).unwrap();
    let client = std::thread::spawn(move || {
        let mut first = first;
        let mut hello = [0u8; 7];
        first.read_exact(&mut hello).unwrap();
        // The second is refused while the first is in.
        let refused = read_all(TcpStream::connect(addr).unwrap());
        drop(first);
        // Once the first has gone, a third gets in.
        let third = loop {
            let mut third = TcpStream::connect(addr).unwrap();
            let mut greeting = [0u8; 7];
            third.read_exact(&mut greeting).unwrap();
            if &greeting == b"hello\r\n" {
                break third;
            }
        };
        drop(third);
        refused
    });
    run(&reactor);
    let refused = client.join().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&refused),
        "full: 1 connections are open, the most allowed\r\n"
    );
    assert_eq!(limits.open_connections(), 0);
}

/// Writes 64 KiB through its bounded queue every iteration until the queue refuses;
/// then records how much it got rid of and aborts.
struct Flood {
    outcome: Outcome,
    reactor: Reactor,
}

const LIMIT: usize = 1024 * 1024;

type Outcome = Rc<RefCell<Option<(TooSlow, usize)>>>;

fn flood(queue: OutgoingQueue, transport: TransportRef, reactor: Reactor, outcome: Outcome) {
    let chunk = vec![b'x'; 64 * 1024];
    loop {
        match queue.write(&[&chunk]) {
            Ok(()) => {}
            Err(too_slow) => {
                *outcome.borrow_mut() = Some((too_slow, queue.queued()));
                queue.clear();
                transport.abort_connection();
                return;
            }
        }
        if queue.is_blocked() {
            break;
        }
    }
    let r = reactor.clone();
    reactor.call_later(Duration::ZERO, move || flood(queue, transport, r, outcome));
}

impl Protocol for Flood {
    fn connection_made(&mut self, transport: &TransportRef) -> ProtocolResult {
        let queue = OutgoingQueue::attach(transport, LIMIT);
        flood(
            queue,
            transport.clone(),
            self.reactor.clone(),
            self.outcome.clone(),
        );
        Ok(())
    }

    fn data_received(&mut self, _: &TransportRef, _: &[u8]) -> ProtocolResult {
        Ok(())
    }

    fn connection_lost(&mut self, _: &CloseReason) {
        let _ = self.reactor.stop();
    }
}

struct Floods(Outcome, Reactor);

impl Factory for Floods {
    fn build_protocol(&self, _: Address) -> Option<Box<dyn Protocol>> {
        Some(Box::new(Flood {
            outcome: self.0.clone(),
            reactor: self.1.clone(),
        }))
    }
}

#[test]
fn a_peer_that_does_not_read_is_too_slow_within_the_queue_bound() {
    let reactor = Reactor::new().unwrap();
    let outcome: Outcome = Rc::default();
    let addr = listen(&reactor, Rc::new(Floods(outcome.clone(), reactor.clone())));
    let peer = TcpStream::connect(addr).unwrap();
    run(&reactor);
    let (too_slow, queued) = outcome.borrow_mut().take().expect("refused");
    assert_eq!(too_slow, TooSlow { limit: LIMIT });
    assert!(queued <= LIMIT, "the queue held {queued} bytes");
    drop(peer);
}
