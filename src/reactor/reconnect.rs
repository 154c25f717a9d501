//! [`ReconnectingClientFactory`]: a client factory that connects again after a failed
//! attempt or a lost connection, waiting longer before each retry (spec P-24..P-27).
//!
//! It wraps the factory that does the work and passes every callback on to it, so the
//! wrapped factory still hears of each failure and loss; the retry is decided after
//! its callback returns, which lets that callback call [`ReconnectingClientFactory::stop_trying`]
//! or [`ReconnectingClientFactory::reset_delay`] first.
//!
//! ```no_run
//! use std::rc::Rc;
//! use twistctl::reactor::reconnect::ReconnectingClientFactory;
//! use twistctl::reactor::tcp::ClientFactory;
//! use twistctl::reactor::{Address, Factory, Protocol, Reactor};
//!
//! struct Client;
//! impl Factory for Client {
//!     fn build_protocol(&self, _peer: Address) -> Option<Box<dyn Protocol>> {
//!         None // a real client returns its protocol
//!     }
//! }
//! impl ClientFactory for Client {}
//!
//! let reactor = Reactor::new()?;
//! let factory = Rc::new(ReconnectingClientFactory::new(Rc::new(reactor.clone()), Client));
//! reactor.connect_tcp("127.0.0.1:8000".parse()?, factory.clone(), None);
//! reactor.run()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::cell::RefCell;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::rc::Rc;
use std::time::Duration;

use super::address::Address;
use super::protocol::{CloseReason, ConnectError, Factory, Protocol};
use super::tcp::{ClientFactory, Connector};
use super::time::{DelayedCall, Scheduler};

/// How retries are spaced and bounded (P-25, P-26). The defaults are Twisted's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// The wait before the first retry, and after [`ReconnectingClientFactory::reset_delay`].
    pub initial_delay: Duration,
    /// Each wait is the previous one times this.
    pub factor: f64,
    /// No wait (before jitter) is longer than this.
    pub max_delay: Duration,
    /// With a non-zero value each wait is drawn from a normal distribution centred on
    /// the computed wait, with standard deviation `wait × jitter`, so that many clients
    /// cut off together do not all come back at the same instant.
    pub jitter: f64,
    /// How many consecutive retries before giving up; `None` retries for ever.
    pub max_retries: Option<u32>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial_delay: Duration::from_secs(1),
            factor: std::f64::consts::E,
            max_delay: Duration::from_secs(3600),
            jitter: 0.119_626_564_72,
            max_retries: None,
        }
    }
}

struct RetryState {
    /// The wait the next retry uses, before jitter.
    delay: Duration,
    /// Consecutive retries so far.
    retries: u32,
    continue_trying: bool,
    /// The pending retry.
    call: Option<DelayedCall>,
    /// The connector to retry with, or to stop. Held only while an attempt or a retry
    /// is under way: the connector holds this factory, so keeping it longer would tie
    /// the two together for good.
    connector: Option<Connector>,
    rng: Rng,
}

/// A client factory that reconnects after each failure or loss, with growing waits,
/// until [`stop_trying`](Self::stop_trying) or the retry limit (Twisted's
/// `ReconnectingClientFactory`, P-24..P-27).
///
/// Each attempt is a separate use of the wrapped factory: like Twisted's connector, the
/// factory is stopped after a failure or loss and started again by the retry (P-01).
pub struct ReconnectingClientFactory<F> {
    inner: F,
    scheduler: Rc<dyn Scheduler>,
    policy: RetryPolicy,
    reset_on_connect: bool,
    state: Rc<RefCell<RetryState>>,
}

impl<F: ClientFactory> ReconnectingClientFactory<F> {
    /// Wraps `inner` with the default policy; retries are scheduled on `scheduler`
    /// (normally the reactor).
    pub fn new(scheduler: Rc<dyn Scheduler>, inner: F) -> Self {
        Self::with_policy(scheduler, inner, RetryPolicy::default())
    }

    /// Wraps `inner` with `policy`.
    pub fn with_policy(scheduler: Rc<dyn Scheduler>, inner: F, policy: RetryPolicy) -> Self {
        ReconnectingClientFactory {
            inner,
            scheduler,
            policy,
            reset_on_connect: false,
            state: Rc::new(RefCell::new(RetryState {
                delay: policy.initial_delay,
                retries: 0,
                continue_trying: true,
                call: None,
                connector: None,
                rng: Rng::seeded(),
            })),
        }
    }

    /// Calls [`reset_delay`](Self::reset_delay) whenever a connection is made, which is
    /// where Twisted's users call `resetDelay()`; without it the retry count runs on
    /// across successful connections.
    pub fn reset_on_connect(mut self) -> Self {
        self.reset_on_connect = true;
        self
    }

    /// The wrapped factory.
    pub fn inner(&self) -> &F {
        &self.inner
    }

    /// The policy in force.
    pub fn policy(&self) -> RetryPolicy {
        self.policy
    }

    /// The wait the next retry will use, before jitter.
    pub fn current_delay(&self) -> Duration {
        self.state.borrow().delay
    }

    /// Consecutive retries so far.
    pub fn retries(&self) -> u32 {
        self.state.borrow().retries
    }

    /// False once [`stop_trying`](Self::stop_trying) was called (until a reset).
    pub fn is_trying(&self) -> bool {
        self.state.borrow().continue_trying
    }

    /// Back to the initial wait with no retries counted, and trying again if stopped
    /// (P-26; Twisted's `resetDelay`). Call it when a connection succeeds.
    pub fn reset_delay(&self) {
        let mut state = self.state.borrow_mut();
        state.delay = self.policy.initial_delay;
        state.retries = 0;
        state.continue_trying = true;
    }

    /// Stops for good: cancels a pending retry, stops an attempt in progress (whose
    /// failure then schedules nothing), and keeps a later loss from retrying (P-27).
    pub fn stop_trying(&self) {
        let (call, connector) = {
            let mut state = self.state.borrow_mut();
            state.continue_trying = false;
            (state.call.take(), state.connector.take())
        };
        if let Some(call) = call {
            let _ = call.cancel();
        }
        if let Some(connector) = connector {
            // Not connecting (connected, or waiting for a retry): nothing to stop.
            let _ = connector.stop_connecting();
        }
    }

    /// P-24: schedules `connector.connect()` after the current wait, then grows it.
    fn retry(&self, connector: &Connector) {
        let wait = {
            let mut state = self.state.borrow_mut();
            if !state.continue_trying {
                state.connector = None;
                return;
            }
            state.retries += 1;
            if let Some(max) = self.policy.max_retries
                && state.retries > max
            {
                log::info!(
                    "giving up on {} after {max} retries",
                    connector.destination()
                );
                state.connector = None;
                return;
            }
            let base = state.delay;
            let wait = if self.policy.jitter > 0.0 {
                jittered(base, self.policy.jitter, &mut state.rng)
            } else {
                base
            };
            state.delay = grown(base, self.policy.factor, self.policy.max_delay);
            state.connector = Some(connector.clone());
            wait
        };
        log::debug!("reconnecting to {} in {wait:?}", connector.destination());
        let state = Rc::downgrade(&self.state);
        let call = self.scheduler.schedule(
            wait,
            Box::new(move || {
                let Some(state) = state.upgrade() else {
                    return;
                };
                let connector = {
                    let mut state = state.borrow_mut();
                    state.call = None;
                    state.connector.clone()
                };
                if let Some(connector) = connector
                    && let Err(error) = connector.connect()
                {
                    // The wrapped factory reconnected by itself meanwhile.
                    log::debug!("retry not needed: {error}");
                }
            }),
        );
        let replaced = self.state.borrow_mut().call.replace(call);
        if let Some(old) = replaced {
            let _ = old.cancel();
        }
    }
}

/// `base × factor`, capped at `max`; a factor that makes no sense (negative, NaN, or an
/// overflowing result) gives `max`.
fn grown(base: Duration, factor: f64, max: Duration) -> Duration {
    Duration::try_from_secs_f64(base.as_secs_f64() * factor)
        .unwrap_or(max)
        .min(max)
}

/// A wait drawn from a normal distribution centred on `base` with standard deviation
/// `base × jitter`, never negative.
fn jittered(base: Duration, jitter: f64, rng: &mut Rng) -> Duration {
    let seconds = base.as_secs_f64() * (1.0 + jitter * rng.standard_normal());
    Duration::try_from_secs_f64(seconds.max(0.0)).unwrap_or(base)
}

/// A small xorshift64* generator: jitter needs spread, not cryptographic quality.
struct Rng(u64);

impl Rng {
    /// Seeded from the standard library's per-process random hash keys.
    fn seeded() -> Rng {
        Rng::from_seed(RandomState::new().hash_one(0x5eed_u64))
    }

    fn from_seed(seed: u64) -> Rng {
        // Zero is xorshift's one fixed point.
        Rng(if seed == 0 {
            0x9e37_79b9_7f4a_7c15
        } else {
            seed
        })
    }

    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        let bits = x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11;
        bits as f64 / (1u64 << 53) as f64
    }

    /// Standard normal, by the Box–Muller transform.
    fn standard_normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform(); // in (0, 1]: ln is finite
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

impl<F: ClientFactory> Factory for ReconnectingClientFactory<F> {
    fn build_protocol(&self, addr: Address) -> Option<Box<dyn Protocol>> {
        let protocol = self.inner.build_protocol(addr);
        // Connected: no attempt left to stop.
        self.state.borrow_mut().connector = None;
        if protocol.is_some() && self.reset_on_connect {
            self.reset_delay();
        }
        protocol
    }

    fn start_factory(&self) {
        self.inner.start_factory();
    }

    fn stop_factory(&self) {
        self.inner.stop_factory();
    }
}

impl<F: ClientFactory> ClientFactory for ReconnectingClientFactory<F> {
    fn started_connecting(&self, connector: &Connector) {
        self.state.borrow_mut().connector = Some(connector.clone());
        self.inner.started_connecting(connector);
    }

    fn client_connection_failed(&self, connector: &Connector, reason: &ConnectError) {
        self.inner.client_connection_failed(connector, reason);
        if !connector.is_connecting() {
            self.retry(connector);
        }
    }

    fn client_connection_lost(&self, connector: &Connector, reason: &CloseReason) {
        self.inner.client_connection_lost(connector, reason);
        if !connector.is_connecting() {
            self.retry(connector);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reactor::{Reactor, TransportRef};
    use std::cell::Cell;
    use std::net::SocketAddr;
    use std::rc::Weak;

    type Log = Rc<RefCell<Vec<String>>>;
    type Slot = Rc<RefCell<Weak<ReconnectingClientFactory<Probe>>>>;
    type Hook = Box<dyn Fn(&Rc<ReconnectingClientFactory<Probe>>, usize)>;

    /// The wrapped factory: logs, and runs hooks with the number of attempts so far.
    struct Probe {
        log: Log,
        attempts: Cell<usize>,
        wrapper: Slot,
        on_end: Hook,
        on_started: Hook,
        on_build: Hook,
    }

    impl Probe {
        fn push(&self, event: String) {
            self.log.borrow_mut().push(event);
        }

        fn wrapper(&self) -> Rc<ReconnectingClientFactory<Probe>> {
            self.wrapper.borrow().upgrade().expect("wrapper")
        }
    }

    struct Quiet;
    impl Protocol for Quiet {
        fn data_received(
            &mut self,
            _t: &TransportRef,
            _data: &[u8],
        ) -> crate::reactor::ProtocolResult {
            Ok(())
        }
    }

    impl Factory for Probe {
        fn build_protocol(&self, _addr: Address) -> Option<Box<dyn Protocol>> {
            self.push("build".into());
            (self.on_build)(&self.wrapper(), self.attempts.get());
            Some(Box::new(Quiet))
        }
        fn start_factory(&self) {
            self.push("start".into());
        }
        fn stop_factory(&self) {
            self.push("stop".into());
        }
    }

    impl ClientFactory for Probe {
        fn started_connecting(&self, _connector: &Connector) {
            self.attempts.set(self.attempts.get() + 1);
            self.push("started".into());
            (self.on_started)(&self.wrapper(), self.attempts.get());
        }
        fn client_connection_failed(&self, _connector: &Connector, reason: &ConnectError) {
            let wrapper = self.wrapper();
            self.push(format!(
                "failed({}) delay={}ms retries={}",
                match reason {
                    ConnectError::Refused(_) => "Refused",
                    ConnectError::UserAborted => "UserAborted",
                    _ => "other",
                },
                wrapper.current_delay().as_millis(),
                wrapper.retries()
            ));
            (self.on_end)(&wrapper, self.attempts.get());
        }
        fn client_connection_lost(&self, _connector: &Connector, _reason: &CloseReason) {
            let wrapper = self.wrapper();
            self.push(format!(
                "lost delay={}ms retries={}",
                wrapper.current_delay().as_millis(),
                wrapper.retries()
            ));
            (self.on_end)(&wrapper, self.attempts.get());
        }
    }

    fn policy(max_retries: Option<u32>) -> RetryPolicy {
        RetryPolicy {
            initial_delay: Duration::from_millis(20),
            factor: 2.0,
            max_delay: Duration::from_millis(60),
            jitter: 0.0,
            max_retries,
        }
    }

    /// A port that refuses connections while the socket lives (bound, not listening).
    fn refusing_port() -> (socket2::Socket, SocketAddr) {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket
            .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        let address = socket.local_addr().unwrap().as_socket().unwrap();
        (socket, address)
    }

    /// A server whose connections close at once.
    struct Closer;
    impl Protocol for Closer {
        fn connection_made(&mut self, t: &TransportRef) -> crate::reactor::ProtocolResult {
            t.lose_connection();
            Ok(())
        }
        fn data_received(
            &mut self,
            _t: &TransportRef,
            _d: &[u8],
        ) -> crate::reactor::ProtocolResult {
            Ok(())
        }
    }
    struct CloserFactory;
    impl Factory for CloserFactory {
        fn build_protocol(&self, _addr: Address) -> Option<Box<dyn Protocol>> {
            Some(Box::new(Closer))
        }
    }

    fn make(
        reactor: &Reactor,
        policy: RetryPolicy,
        on_started: Hook,
        on_end: Hook,
    ) -> (Rc<ReconnectingClientFactory<Probe>>, Log) {
        make_with(reactor, policy, on_started, no_hook(), on_end, false)
    }

    fn make_with(
        reactor: &Reactor,
        policy: RetryPolicy,
        on_started: Hook,
        on_build: Hook,
        on_end: Hook,
        reset_on_connect: bool,
    ) -> (Rc<ReconnectingClientFactory<Probe>>, Log) {
        let log: Log = Rc::new(RefCell::new(Vec::new()));
        let slot: Slot = Rc::new(RefCell::new(Weak::new()));
        let probe = Probe {
            log: log.clone(),
            attempts: Cell::new(0),
            wrapper: slot.clone(),
            on_end,
            on_started,
            on_build,
        };
        let mut wrapper =
            ReconnectingClientFactory::with_policy(Rc::new(reactor.clone()), probe, policy);
        if reset_on_connect {
            wrapper = wrapper.reset_on_connect();
        }
        let wrapper = Rc::new(wrapper);
        *slot.borrow_mut() = Rc::downgrade(&wrapper);
        (wrapper, log)
    }

    /// Runs until stopped; fails if a 5 s watchdog had to stop it.
    fn run(reactor: &Reactor) {
        let fired = Rc::new(Cell::new(false));
        let (flag, r) = (fired.clone(), reactor.clone());
        let dog = reactor.call_later(Duration::from_secs(5), move || {
            flag.set(true);
            r.stop()
        });
        reactor.run().unwrap();
        let _ = dog.cancel();
        assert!(!fired.get(), "watchdog: the test did not finish within 5 s");
    }

    /// Stops the reactor `after` from now: long enough for a wrongly scheduled retry
    /// (the longest wait in these tests is 60 ms) to show up.
    fn stop_after(reactor: &Reactor, after: Duration) {
        let r = reactor.clone();
        reactor.call_later(after, move || r.stop());
    }

    fn seq(expected: &[&str]) -> Vec<String> {
        expected.iter().map(|s| s.to_string()).collect()
    }

    fn assert_log(log: &Log, expected: &[String]) {
        assert_eq!(*log.borrow(), expected);
    }

    /// The log of one connection attempt per outcome: the wrapped factory starts, the
    /// attempt starts, a protocol is built if it connected (the outcome is then a loss),
    /// the outcome, and the factory stops.
    fn attempts(outcomes: &[&str]) -> Vec<String> {
        let mut log = Vec::new();
        for outcome in outcomes {
            log.extend(["start", "started"]);
            if outcome.starts_with("lost") {
                log.push("build");
            }
            log.extend([outcome, "stop"]);
        }
        seq(&log)
    }

    /// Connects `wrapper` to `address` and runs the reactor until a test hook stops it.
    fn connect_and_run(
        reactor: &Reactor,
        address: SocketAddr,
        wrapper: &Rc<ReconnectingClientFactory<Probe>>,
    ) {
        reactor.connect_tcp(address, wrapper.clone(), None);
        run(reactor);
    }

    /// The logged events that start with `prefix`, in order.
    fn entries_starting(log: &Log, prefix: &str) -> Vec<String> {
        log.borrow()
            .iter()
            .filter(|e| e.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// An end-of-attempt hook that stops the reactor 200 ms after attempt `last` ended,
    /// long enough for a wrongly scheduled further attempt to show up in the log.
    fn stop_after_attempt(reactor: &Reactor, last: usize) -> Hook {
        let r = reactor.clone();
        Box::new(move |_, n| {
            if n == last {
                stop_after(&r, Duration::from_millis(200));
            }
        })
    }

    /// A hook for the callbacks a test does not care about.
    fn no_hook() -> Hook {
        Box::new(|_, _| {})
    }

    /// A listening port on the loopback whose connections the server closes at once.
    fn closing_server(reactor: &Reactor) -> crate::reactor::tcp::ListeningPort {
        reactor
            .listen_tcp("127.0.0.1:0".parse().unwrap(), Rc::new(CloserFactory))
            .unwrap()
    }

    #[test]
    fn p24_p25_p26_retries_with_growing_capped_waits_then_gives_up() {
        let reactor = Reactor::new().unwrap();
        let (_refusing, refused) = refusing_port();
        let times: Rc<RefCell<Vec<(usize, Duration)>>> = Rc::new(RefCell::new(Vec::new()));
        let (t1, t2, r1, r2) = (
            times.clone(),
            times.clone(),
            reactor.clone(),
            reactor.clone(),
        );
        let (wrapper, log) = make(
            &reactor,
            policy(Some(4)),
            Box::new(move |_, n| t1.borrow_mut().push((n, r1.seconds()))),
            Box::new(move |_, n| {
                t2.borrow_mut().push((n, r2.seconds()));
                if n == 5 {
                    stop_after(&r2, Duration::from_millis(200));
                }
            }),
        );
        connect_and_run(&reactor, refused, &wrapper);
        assert_log(
            &log,
            &attempts(&[
                "failed(Refused) delay=20ms retries=0",
                "failed(Refused) delay=40ms retries=1",
                "failed(Refused) delay=60ms retries=2",
                "failed(Refused) delay=60ms retries=3",
                "failed(Refused) delay=60ms retries=4",
            ]),
        );
        // Each retry waited at least its delay after the failure before it.
        let times = times.borrow();
        let expected = [20, 40, 60, 60];
        for (k, wait) in expected.iter().enumerate() {
            let failed = times
                .iter()
                .filter(|(n, _)| *n == k + 1)
                .map(|(_, t)| *t)
                .nth(1)
                .expect("failure time");
            let next_start = times
                .iter()
                .find(|(n, _)| *n == k + 2)
                .map(|(_, t)| *t)
                .expect("next start");
            let waited = next_start - failed;
            assert!(
                waited >= Duration::from_millis(*wait) && waited < Duration::from_secs(2),
                "retry {} waited {waited:?}",
                k + 1
            );
        }
        assert_eq!(wrapper.retries(), 5);
    }

    #[test]
    fn p24_retries_after_a_lost_connection() {
        let reactor = Reactor::new().unwrap();
        let port = closing_server(&reactor);
        let (wrapper, log) = make(
            &reactor,
            policy(Some(2)),
            no_hook(),
            stop_after_attempt(&reactor, 3),
        );
        connect_and_run(&reactor, port.host(), &wrapper);
        // Retries count on across successful connections without a reset: the third
        // loss is the third retry, beyond the limit of two.
        assert_log(
            &log,
            &attempts(&[
                "lost delay=20ms retries=0",
                "lost delay=40ms retries=1",
                "lost delay=60ms retries=2",
            ]),
        );
    }

    #[test]
    fn p26_reset_delay_restores_the_initial_wait_and_count() {
        let reactor = Reactor::new().unwrap();
        let (_refusing, refused) = refusing_port();
        let r = reactor.clone();
        let mut long = policy(Some(2));
        long.max_delay = Duration::from_secs(1);
        let (wrapper, log) = make(
            &reactor,
            long,
            no_hook(),
            Box::new(move |w, n| {
                if n == 2 {
                    w.reset_delay();
                }
                if n == 4 {
                    stop_after(&r, Duration::from_millis(300));
                }
            }),
        );
        connect_and_run(&reactor, refused, &wrapper);
        let failures = entries_starting(&log, "failed");
        assert_eq!(
            failures,
            seq(&[
                "failed(Refused) delay=20ms retries=0",
                "failed(Refused) delay=40ms retries=1",
                // reset at the second failure: its retry waited 20 ms and counted 1
                "failed(Refused) delay=40ms retries=1",
                "failed(Refused) delay=80ms retries=2",
            ])
        );
    }

    #[test]
    fn p26_reset_on_connect_keeps_reconnecting() {
        let reactor = Reactor::new().unwrap();
        let port = closing_server(&reactor);
        let r = reactor.clone();
        let (wrapper, log) = make_with(
            &reactor,
            policy(Some(1)),
            no_hook(),
            no_hook(),
            Box::new(move |w, n| {
                if n == 4 {
                    w.stop_trying();
                    stop_after(&r, Duration::ZERO);
                }
            }),
            true,
        );
        connect_and_run(&reactor, port.host(), &wrapper);
        let losses = entries_starting(&log, "lost");
        // With a limit of one retry, only the resets let it go on.
        assert_eq!(losses, seq(&["lost delay=20ms retries=0"; 4]));
        assert!(!wrapper.is_trying());
    }

    #[test]
    fn p27_stop_trying_cancels_a_pending_retry() {
        let reactor = Reactor::new().unwrap();
        let (_refusing, refused) = refusing_port();
        let r = reactor.clone();
        let (wrapper, log) = make(
            &reactor,
            policy(None),
            no_hook(),
            Box::new(move |w, _| {
                // Next iteration: the wrapper has scheduled its 20 ms retry by then.
                let (r2, w) = (r.clone(), w.clone());
                r.call_later(Duration::ZERO, move || {
                    let pending = w.state.borrow().call.clone().expect("a retry is pending");
                    w.stop_trying();
                    assert!(!pending.active(), "the retry was cancelled");
                    stop_after(&r2, Duration::from_millis(200));
                });
            }),
        );
        connect_and_run(&reactor, refused, &wrapper);
        assert_log(&log, &attempts(&["failed(Refused) delay=20ms retries=0"]));
        assert!(!wrapper.is_trying());
        assert!(wrapper.state.borrow().call.is_none());
        assert!(wrapper.state.borrow().connector.is_none());
    }

    #[test]
    fn p27_stop_trying_stops_an_attempt_in_progress() {
        let reactor = Reactor::new().unwrap();
        let (_refusing, refused) = refusing_port();
        let r = reactor.clone();
        let (wrapper, log) = make(
            &reactor,
            policy(None),
            Box::new(move |w, _| {
                w.stop_trying();
                stop_after(&r, Duration::from_millis(200));
            }),
            no_hook(),
        );
        connect_and_run(&reactor, refused, &wrapper);
        assert_log(
            &log,
            &attempts(&["failed(UserAborted) delay=20ms retries=0"]),
        );
        assert_eq!(wrapper.retries(), 0, "the failure scheduled nothing");
    }

    #[test]
    fn p27_stop_trying_prevents_a_retry_after_a_later_loss() {
        let reactor = Reactor::new().unwrap();
        let port = closing_server(&reactor);
        let (wrapper, log) = make_with(
            &reactor,
            policy(None),
            no_hook(),
            // Connected, not yet lost: no attempt to stop, but no retry later either.
            Box::new(|w, _| w.stop_trying()),
            stop_after_attempt(&reactor, 1),
            false,
        );
        connect_and_run(&reactor, port.host(), &wrapper);
        assert_log(&log, &attempts(&["lost delay=20ms retries=0"]));
        assert_eq!(wrapper.retries(), 0);
    }

    #[test]
    fn p25_jitter_draws_from_a_normal_distribution_around_the_wait() {
        let mut rng = Rng::from_seed(42);
        let base = Duration::from_secs(10);
        let samples: Vec<f64> = (0..20_000)
            .map(|_| jittered(base, 0.1, &mut rng).as_secs_f64())
            .collect();
        let n = samples.len() as f64;
        let mean = samples.iter().sum::<f64>() / n;
        let sd = (samples.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
        assert!((mean - 10.0).abs() < 0.05, "mean {mean}");
        assert!((sd - 1.0).abs() < 0.05, "standard deviation {sd}");
        // Never negative, however wide the jitter.
        assert!((0..1000).all(|_| jittered(base, 5.0, &mut rng) >= Duration::ZERO));
    }

    #[test]
    fn p25_defaults_and_growth_are_twisteds() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.initial_delay, Duration::from_secs(1));
        assert!((policy.factor - std::f64::consts::E).abs() < 1e-12);
        assert_eq!(policy.max_delay, Duration::from_secs(3600));
        assert!((policy.jitter - 0.119_626_564_72).abs() < 1e-12);
        assert_eq!(policy.max_retries, None);
        let max = Duration::from_secs(3600);
        let mut delay = policy.initial_delay;
        let mut waits = Vec::new();
        for _ in 0..12 {
            waits.push(delay);
            delay = grown(delay, policy.factor, max);
        }
        assert_eq!(waits[0], Duration::from_secs(1), "first retry after 1 s");
        assert!((waits[1].as_secs_f64() - std::f64::consts::E).abs() < 1e-6);
        assert_eq!(*waits.last().unwrap(), max, "capped");
        // Nonsense factors do not panic.
        assert_eq!(grown(delay, f64::NAN, max), max);
        assert_eq!(grown(delay, -1.0, max), max);
        assert_eq!(grown(delay, f64::INFINITY, max), max);
    }
}
