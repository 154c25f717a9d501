//! Reactor tests' recording fixtures, shared by the TCP and UNIX socket tests: a
//! protocol ([`Rec`]) and a factory ([`Fac`]) that log every lifecycle event into one
//! [`Log`] as `tag:event`, so tests compare whole sequences; a watchdog-bounded [`run`];
//! and the small helpers around them. Nothing here knows the socket kind.
#![allow(dead_code)]

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use twistctl::reactor::tcp::{ClientFactory, Connector};
use twistctl::reactor::{
    Address, CloseReason, ConnectError, Factory, Protocol, ProtocolResult, Reactor, TransportRef,
};

pub type Log = Rc<RefCell<Vec<String>>>;

pub fn new_log() -> Log {
    Rc::new(RefCell::new(Vec::new()))
}

pub fn push(log: &Log, event: impl Into<String>) {
    log.borrow_mut().push(event.into());
}

pub fn events(log: &Log) -> Vec<String> {
    log.borrow().clone()
}

/// `expected` as owned strings, for comparing with a log.
pub fn seq(expected: &[&str]) -> Vec<String> {
    expected.iter().map(|s| s.to_string()).collect()
}

pub const WATCHDOG: Duration = Duration::from_secs(5);

/// Runs the reactor until the test stops it; fails if the watchdog had to.
pub fn run(reactor: &Reactor) {
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

pub fn stop(reactor: &Reactor) {
    reactor.stop().expect("the reactor was running");
}

/// Stops the reactor on the `n`th call: for tests that wait for events on both sides.
pub fn countdown(reactor: &Reactor, n: usize) -> Rc<dyn Fn()> {
    let left = Rc::new(Cell::new(n));
    let r = reactor.clone();
    Rc::new(move || {
        left.set(left.get() - 1);
        if left.get() == 0 {
            stop(&r);
        }
    })
}

pub fn reason(reason: &CloseReason) -> String {
    match reason {
        CloseReason::Done => "Done".into(),
        CloseReason::Lost(_) => "Lost".into(),
        CloseReason::Reset(_) => "Reset".into(),
        CloseReason::Aborted => "Aborted".into(),
        CloseReason::Protocol(failure) => format!("Protocol({})", failure.error_message()),
        CloseReason::Tls(error) => format!("Tls({error})"),
    }
}

pub fn connect_error(error: &ConnectError) -> String {
    match error {
        ConnectError::Refused(_) => "Refused".into(),
        ConnectError::TimedOut => "TimedOut".into(),
        ConnectError::KernelTimedOut(_) => "KernelTimedOut".into(),
        ConnectError::Unreachable(_) => "Unreachable".into(),
        ConnectError::Dns(_) => "Dns".into(),
        ConnectError::UserAborted => "UserAborted".into(),
        ConnectError::Bind(_) => "Bind".into(),
        ConnectError::Other(e) => format!("Other({e})"),
    }
}

/// `len` bytes of a pattern whose every position is checkable.
pub fn pattern(start: usize, len: usize) -> Vec<u8> {
    (start..start + len).map(|i| (i % 251) as u8).collect()
}

pub type MadeHook = Box<dyn FnMut(&TransportRef) -> ProtocolResult>;
pub type DataHook = Box<dyn FnMut(&TransportRef, &[u8]) -> ProtocolResult>;
pub type LostHook = Box<dyn FnMut(&CloseReason)>;
pub type BuildFn = Box<dyn Fn(Address) -> Option<Box<dyn Protocol>>>;
pub type FailedHook = Box<dyn Fn(&Connector, &ConnectError)>;
pub type ClientLostHook = Box<dyn Fn(&Connector, &CloseReason)>;

/// A protocol that logs its events as `tag:event`, keeps what it received, and runs
/// optional hooks. A run of `data_received` calls is logged once, as `tag:data`, because
/// chunk boundaries are not a contract.
pub struct Rec {
    tag: &'static str,
    log: Log,
    received: Rc<RefCell<Vec<u8>>>,
    in_data: bool,
    half_close: bool,
    on_made: Option<MadeHook>,
    on_data: Option<DataHook>,
    on_lost: Option<LostHook>,
    on_read_lost: Option<MadeHook>,
    on_write_lost: Option<MadeHook>,
}

impl Rec {
    pub fn new(tag: &'static str, log: &Log) -> Rec {
        Rec {
            tag,
            log: log.clone(),
            received: Rc::new(RefCell::new(Vec::new())),
            in_data: false,
            half_close: false,
            on_made: None,
            on_data: None,
            on_lost: None,
            on_read_lost: None,
            on_write_lost: None,
        }
    }

    pub fn into_received(mut self, received: &Rc<RefCell<Vec<u8>>>) -> Rec {
        self.received = received.clone();
        self
    }

    pub fn made(mut self, f: impl FnMut(&TransportRef) -> ProtocolResult + 'static) -> Rec {
        self.on_made = Some(Box::new(f));
        self
    }

    pub fn data(mut self, f: impl FnMut(&TransportRef, &[u8]) -> ProtocolResult + 'static) -> Rec {
        self.on_data = Some(Box::new(f));
        self
    }

    pub fn lost(mut self, f: impl FnMut(&CloseReason) + 'static) -> Rec {
        self.on_lost = Some(Box::new(f));
        self
    }

    pub fn half_close(mut self, f: impl FnMut(&TransportRef) -> ProtocolResult + 'static) -> Rec {
        self.half_close = true;
        self.on_read_lost = Some(Box::new(f));
        self
    }

    /// Opts into half-close and runs `f` when our write side has been shut down.
    pub fn write_lost(mut self, f: impl FnMut(&TransportRef) -> ProtocolResult + 'static) -> Rec {
        self.half_close = true;
        self.on_write_lost = Some(Box::new(f));
        self
    }

    pub fn event(&mut self, what: &str) {
        self.in_data = false;
        push(&self.log, format!("{}:{what}", self.tag));
    }
}

impl Protocol for Rec {
    fn connection_made(&mut self, transport: &TransportRef) -> ProtocolResult {
        self.event("made");
        match &mut self.on_made {
            Some(f) => f(transport),
            None => Ok(()),
        }
    }

    fn data_received(&mut self, transport: &TransportRef, data: &[u8]) -> ProtocolResult {
        if !self.in_data {
            push(&self.log, format!("{}:data", self.tag));
            self.in_data = true;
        }
        self.received.borrow_mut().extend_from_slice(data);
        match &mut self.on_data {
            Some(f) => f(transport, data),
            None => Ok(()),
        }
    }

    fn connection_lost(&mut self, why: &CloseReason) {
        self.event(&format!("lost({})", reason(why)));
        if let Some(f) = &mut self.on_lost {
            f(why);
        }
    }

    fn wants_half_close(&self) -> bool {
        self.half_close
    }

    fn read_connection_lost(&mut self, transport: &TransportRef) -> ProtocolResult {
        self.event("read_lost");
        match &mut self.on_read_lost {
            Some(f) => f(transport),
            None => Ok(()),
        }
    }

    fn write_connection_lost(&mut self, transport: &TransportRef) -> ProtocolResult {
        self.event("write_lost");
        match &mut self.on_write_lost {
            Some(f) => f(transport),
            None => Ok(()),
        }
    }
}

/// A factory, usable for listening and for connecting, that logs as `tag:event`.
pub struct Fac {
    tag: &'static str,
    log: Log,
    build: BuildFn,
    on_started: Box<dyn Fn(&Connector)>,
    on_failed: FailedHook,
    on_lost: ClientLostHook,
}

impl Fac {
    pub fn new(
        tag: &'static str,
        log: &Log,
        build: impl Fn(Address) -> Option<Box<dyn Protocol>> + 'static,
    ) -> Fac {
        Fac {
            tag,
            log: log.clone(),
            build: Box::new(build),
            on_started: Box::new(|_| {}),
            on_failed: Box::new(|_, _| {}),
            on_lost: Box::new(|_, _| {}),
        }
    }

    pub fn started(mut self, f: impl Fn(&Connector) + 'static) -> Fac {
        self.on_started = Box::new(f);
        self
    }

    pub fn failed(mut self, f: impl Fn(&Connector, &ConnectError) + 'static) -> Fac {
        self.on_failed = Box::new(f);
        self
    }

    pub fn lost(mut self, f: impl Fn(&Connector, &CloseReason) + 'static) -> Fac {
        self.on_lost = Box::new(f);
        self
    }

    pub fn rc(self) -> Rc<Fac> {
        Rc::new(self)
    }

    pub fn push(&self, what: &str) {
        push(&self.log, format!("{}:{what}", self.tag));
    }
}

impl Factory for Fac {
    fn build_protocol(&self, addr: Address) -> Option<Box<dyn Protocol>> {
        let protocol = (self.build)(addr);
        self.push(if protocol.is_some() {
            "build"
        } else {
            "build(None)"
        });
        protocol
    }

    fn start_factory(&self) {
        self.push("start");
    }

    fn stop_factory(&self) {
        self.push("stop");
    }
}

impl ClientFactory for Fac {
    fn started_connecting(&self, connector: &Connector) {
        self.push(&format!(
            "started(connecting={})",
            connector.is_connecting()
        ));
        (self.on_started)(connector);
    }

    fn client_connection_failed(&self, connector: &Connector, why: &ConnectError) {
        self.push(&format!("failed({})", connect_error(why)));
        (self.on_failed)(connector, why);
    }

    fn client_connection_lost(&self, connector: &Connector, why: &CloseReason) {
        self.push(&format!("client_lost({})", reason(why)));
        (self.on_lost)(connector, why);
    }
}

/// A place one callback fills for the test, or for another callback, to read later.
pub type Shared<T> = Rc<RefCell<Option<T>>>;

pub fn shared<T>() -> Shared<T> {
    Rc::new(RefCell::new(None))
}

/// A shared slot for a transport handed from one callback to another.
pub type Slot = Shared<TransportRef>;

pub fn slot() -> Slot {
    shared()
}

/// Where a `Rec` keeps the bytes it received, for the test to inspect after the run.
pub type Bytes = Rc<RefCell<Vec<u8>>>;

pub fn bytes() -> Bytes {
    Rc::new(RefCell::new(Vec::new()))
}

/// A factory logging as `factory_tag` that builds a `Rec` logging as `protocol_tag`,
/// shaped by `shape` (hooks, a received-bytes buffer) for each connection.
pub fn recording(
    factory_tag: &'static str,
    protocol_tag: &'static str,
    log: &Log,
    shape: impl Fn(Rec) -> Rec + 'static,
) -> Fac {
    let l = log.clone();
    Fac::new(factory_tag, log, move |_| {
        Some(Box::new(shape(Rec::new(protocol_tag, &l))))
    })
}

/// The server side of a test: factory `srvf`, protocols `srv`.
pub fn server(log: &Log, shape: impl Fn(Rec) -> Rec + 'static) -> Fac {
    recording("srvf", "srv", log, shape)
}

/// The client side of a test: factory `cf`, protocols `cli`.
pub fn client(log: &Log, shape: impl Fn(Rec) -> Rec + 'static) -> Fac {
    recording("cf", "cli", log, shape)
}

/// For `Fac::lost`: stops the reactor once the client connection has ended.
pub fn stop_on_client_lost(reactor: &Reactor) -> impl Fn(&Connector, &CloseReason) + use<> {
    let r = reactor.clone();
    move |_, _| stop(&r)
}

/// For `Rec::lost`: stops the reactor once this connection has ended.
pub fn stop_on_lost(reactor: &Reactor) -> impl FnMut(&CloseReason) + use<> {
    let r = reactor.clone();
    move |_| stop(&r)
}

/// Stops the reactor after `delay`: from inside a callback, so the callback's own
/// consequences (and any event that should not happen) get the chance to show up first.
pub fn stop_after(reactor: &Reactor, delay: Duration) {
    let r = reactor.clone();
    reactor.call_later(delay, move || stop(&r));
}
