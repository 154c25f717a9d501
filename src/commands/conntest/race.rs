//! Happy Eyeballs (RFC 8305): connect to one of several addresses of a host, racing
//! them so that an address that never answers costs 250 ms, not a whole timeout.
//!
//! The addresses are tried in [`interleave`]d order (families alternating, starting
//! with the family of the first address the resolver gave). The next attempt starts
//! [`CONNECTION_ATTEMPT_DELAY`] after the previous one unless one has connected, and at
//! once when an attempt fails. The first connection wins; every other attempt is
//! stopped. A connection that wins is closed at once without a byte sent: the
//! connector's factory builds no protocol, so the socket is simply closed (FIN).
//!
//! The race takes its address list as input, so a test can hand it any list.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use super::gate::{Gate, Permit};
use crate::reactor::tcp::{ClientFactory, Connector};
use crate::reactor::{Address, CloseReason, ConnectError, DelayedCall, Factory, Protocol, Reactor};

/// RFC 8305's recommended "Connection Attempt Delay".
pub const CONNECTION_ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// How the race runs its attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaceSettings {
    /// Each attempt's own timeout (`None`: the kernel's).
    pub attempt_timeout: Option<Duration>,
    /// Time between starting one attempt and the next.
    pub attempt_delay: Duration,
}

impl RaceSettings {
    /// The RFC's delay with the given per-attempt timeout.
    pub fn with_timeout(attempt_timeout: Duration) -> RaceSettings {
        RaceSettings {
            attempt_timeout: Some(attempt_timeout),
            attempt_delay: CONNECTION_ATTEMPT_DELAY,
        }
    }
}

/// How a race ended.
#[derive(Debug, Clone)]
pub enum RaceOutcome {
    /// The handshake with this address completed (and the connection was closed).
    Connected(SocketAddr),
    /// Every address failed; this is the last failure, with its address.
    Failed {
        /// The address of the attempt that failed last (`None` only for an empty list).
        addr: Option<SocketAddr>,
        /// Why it failed.
        error: ConnectError,
    },
    /// [`Race::cancel`] stopped it.
    Cancelled {
        /// The address tried last, if any attempt had started.
        last_tried: Option<SocketAddr>,
    },
}

/// The order to try addresses in: duplicates removed, families alternating, starting
/// with the family of the first address (RFC 8305 section 4).
pub fn interleave(addrs: &[SocketAddr]) -> Vec<SocketAddr> {
    if addrs.len() < 2 {
        // The common case (an IP literal): nothing to reorder.
        return addrs.to_vec();
    }
    let mut unique: Vec<SocketAddr> = Vec::with_capacity(addrs.len());
    for addr in addrs {
        if !unique.contains(addr) {
            unique.push(*addr);
        }
    }
    let Some(first) = unique.first() else {
        return unique;
    };
    let first_is_v6 = first.is_ipv6();
    let (mut preferred, mut other): (VecDeque<SocketAddr>, VecDeque<SocketAddr>) =
        unique.iter().partition(|a| a.is_ipv6() == first_is_v6);
    let mut order = Vec::with_capacity(unique.len());
    loop {
        match (preferred.pop_front(), other.pop_front()) {
            (None, None) => return order,
            (a, b) => order.extend(a.into_iter().chain(b)),
        }
    }
}

type DoneCallback = Box<dyn FnOnce(RaceOutcome)>;

struct RaceState {
    pending: VecDeque<SocketAddr>,
    in_flight: Vec<Connector>,
    /// An attempt has asked the gate for a slot and not got it yet.
    waiting_for_slot: bool,
    next_attempt: Option<DelayedCall>,
    last_tried: Option<SocketAddr>,
    last_failure: Option<(SocketAddr, ConnectError)>,
    on_done: Option<DoneCallback>,
}

struct RaceInner {
    reactor: Reactor,
    gate: Gate,
    settings: RaceSettings,
    state: RefCell<RaceState>,
}

/// A race in progress. Dropping the handle does not stop it; [`Race::cancel`] does.
#[derive(Clone)]
pub struct Race {
    inner: Rc<RaceInner>,
}

impl std::fmt::Debug for Race {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.inner.state.borrow();
        f.debug_struct("Race")
            .field("pending", &state.pending)
            .field("in_flight", &state.in_flight.len())
            .field("done", &state.on_done.is_none())
            .finish()
    }
}

impl Race {
    /// Starts racing `addrs` (in [`interleave`]d order), each attempt holding a slot of
    /// `gate`. `on_done` is called exactly once, from the reactor loop or (for an empty
    /// list) from inside this call.
    pub fn start(
        reactor: &Reactor,
        gate: &Gate,
        addrs: &[SocketAddr],
        settings: RaceSettings,
        on_done: impl FnOnce(RaceOutcome) + 'static,
    ) -> Race {
        let race = Race {
            inner: Rc::new(RaceInner {
                reactor: reactor.clone(),
                gate: gate.clone(),
                settings,
                state: RefCell::new(RaceState {
                    pending: interleave(addrs).into(),
                    in_flight: Vec::new(),
                    waiting_for_slot: false,
                    next_attempt: None,
                    last_tried: None,
                    last_failure: None,
                    on_done: Some(Box::new(on_done)),
                }),
            }),
        };
        if addrs.is_empty() {
            let error = ConnectError::Dns("no addresses to connect to".into());
            race.finish(RaceOutcome::Failed { addr: None, error });
        } else {
            race.launch_next();
        }
        race
    }

    /// Stops every attempt; the outcome is [`RaceOutcome::Cancelled`]. Nothing happens
    /// if the race has ended.
    pub fn cancel(&self) {
        let last_tried = self.inner.state.borrow().last_tried;
        self.finish(RaceOutcome::Cancelled { last_tried });
    }

    /// The address of the attempt started last, if any has started.
    pub fn last_tried(&self) -> Option<SocketAddr> {
        self.inner.state.borrow().last_tried
    }

    /// True once the outcome has been delivered.
    pub fn is_done(&self) -> bool {
        self.inner.state.borrow().on_done.is_none()
    }

    /// Asks for a slot for the next address, unless one is already asked for.
    fn launch_next(&self) {
        let timer = {
            let mut state = self.inner.state.borrow_mut();
            if state.on_done.is_none() || state.waiting_for_slot || state.pending.is_empty() {
                return;
            }
            state.waiting_for_slot = true;
            state.next_attempt.take()
        };
        if let Some(timer) = timer {
            let _ = timer.cancel();
        }
        let race = self.clone();
        self.inner
            .gate
            .acquire(move |permit| race.begin_attempt(permit));
    }

    fn begin_attempt(&self, permit: Permit) {
        let addr = {
            let mut state = self.inner.state.borrow_mut();
            state.waiting_for_slot = false;
            if state.on_done.is_none() {
                None
            } else {
                state.pending.pop_front()
            }
        };
        let Some(addr) = addr else {
            drop(permit);
            return;
        };
        let factory = Rc::new(AttemptFactory {
            race: self.clone(),
            permit: RefCell::new(Some(permit)),
            peer: Cell::new(None),
        });
        let connector =
            self.inner
                .reactor
                .connect_tcp(addr, factory, self.inner.settings.attempt_timeout);
        let mut state = self.inner.state.borrow_mut();
        state.last_tried = Some(addr);
        state.in_flight.push(connector);
        if !state.pending.is_empty() {
            let race = self.clone();
            state.next_attempt = Some(self.inner.reactor.call_later(
                self.inner.settings.attempt_delay,
                move || {
                    race.inner.state.borrow_mut().next_attempt = None;
                    race.launch_next();
                },
            ));
        }
    }

    /// One attempt ended: `Ok` with the peer when the handshake completed.
    fn attempt_ended(&self, connector: &Connector, result: Result<SocketAddr, ConnectError>) {
        let addr = (connector.destination().as_inet()).expect("a race makes TCP connections only");
        let (outcome, launch) = {
            let mut state = self.inner.state.borrow_mut();
            state.in_flight.retain(|c| c != connector);
            if state.on_done.is_none() {
                return;
            }
            match result {
                Ok(peer) => (Some(RaceOutcome::Connected(peer)), false),
                Err(error) => {
                    state.last_failure = Some((addr, error.clone()));
                    if !state.pending.is_empty() {
                        (None, true)
                    } else if state.in_flight.is_empty() && !state.waiting_for_slot {
                        let addr = Some(addr);
                        (Some(RaceOutcome::Failed { addr, error }), false)
                    } else {
                        (None, false)
                    }
                }
            }
        };
        if launch {
            self.launch_next();
        }
        if let Some(outcome) = outcome {
            self.finish(outcome);
        }
    }

    fn finish(&self, outcome: RaceOutcome) {
        let (on_done, others, timer) = {
            let mut state = self.inner.state.borrow_mut();
            let Some(on_done) = state.on_done.take() else {
                return;
            };
            state.pending.clear();
            let others = std::mem::take(&mut state.in_flight);
            (on_done, others, state.next_attempt.take())
        };
        if let Some(timer) = timer {
            let _ = timer.cancel();
        }
        for connector in others {
            // Reports UserAborted to its factory, which then gives its slot back.
            let _ = connector.stop_connecting();
        }
        on_done(outcome);
    }
}

/// The factory of one attempt: it only learns how the attempt went.
struct AttemptFactory {
    race: Race,
    permit: RefCell<Option<Permit>>,
    /// Set when the handshake completed.
    peer: Cell<Option<SocketAddr>>,
}

impl AttemptFactory {
    /// The socket is closed by now (the connector closes it before telling us), so its
    /// slot can go to the next attempt.
    fn release(&self) {
        let permit = self.permit.borrow_mut().take();
        drop(permit);
    }
}

impl Factory for AttemptFactory {
    fn build_protocol(&self, addr: Address) -> Option<Box<dyn Protocol>> {
        // No protocol: the connector closes the fresh connection at once, cleanly.
        self.peer.set(addr.as_inet());
        None
    }
}

impl ClientFactory for AttemptFactory {
    fn client_connection_failed(&self, connector: &Connector, reason: &ConnectError) {
        self.race.attempt_ended(connector, Err(reason.clone()));
        self.release();
    }

    fn client_connection_lost(&self, connector: &Connector, reason: &CloseReason) {
        let result = match self.peer.get() {
            Some(peer) => Ok(peer),
            None => Err(ConnectError::Other(Rc::new(std::io::Error::other(
                reason.to_string(),
            )))),
        };
        self.race.attempt_ended(connector, result);
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn a(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn interleave_alternates_families_starting_with_the_first() {
        let v6 = [a("[::1]:1"), a("[::2]:1"), a("[::3]:1")];
        let v4 = [a("127.0.0.1:1"), a("127.0.0.2:1")];
        assert_eq!(
            interleave(&[v6[0], v6[1], v6[2], v4[0], v4[1]]),
            vec![v6[0], v4[0], v6[1], v4[1], v6[2]]
        );
        assert_eq!(
            interleave(&[v4[0], v6[0], v6[1], v4[1]]),
            vec![v4[0], v6[0], v4[1], v6[1]]
        );
        assert_eq!(interleave(&[v4[0], v4[0], v4[1]]), vec![v4[0], v4[1]]);
        assert_eq!(interleave(&[]), Vec::<SocketAddr>::new());
    }

    /// A port that refuses: bound once, then closed.
    fn closed_port() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    }

    struct Run {
        outcome: Option<RaceOutcome>,
        elapsed: Duration,
    }

    /// Runs one race on a fresh reactor and stops when it is done (or after 5 s).
    fn run_race(addrs: &[SocketAddr], slots: usize, cancel_at_once: bool) -> Run {
        let reactor = Reactor::new().unwrap();
        let gate = Gate::new(slots);
        let result: Rc<RefCell<Option<(RaceOutcome, Duration)>>> = Rc::default();
        let (r, out) = (reactor.clone(), result.clone());
        let race = Race::start(
            &reactor,
            &gate,
            addrs,
            RaceSettings::with_timeout(Duration::from_secs(5)),
            move |outcome| {
                *out.borrow_mut() = Some((outcome, r.seconds()));
                let _ = r.stop();
            },
        );
        if cancel_at_once {
            race.cancel();
        }
        let r = reactor.clone();
        reactor.call_later(Duration::from_secs(5), move || {
            let _ = r.stop();
        });
        if !race.is_done() {
            reactor.run().unwrap();
        }
        assert_eq!(gate.free(), slots, "every slot was given back");
        let (outcome, elapsed) = result.borrow_mut().take().unzip();
        Run {
            outcome,
            elapsed: elapsed.unwrap_or_default(),
        }
    }

    #[test]
    fn a_failed_attempt_starts_the_next_at_once_and_the_first_success_wins() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let open = listener.local_addr().unwrap();
        let refused = [closed_port(), closed_port(), closed_port()];
        let run = run_race(&[refused[0], refused[1], refused[2], open], 1, false);
        match run.outcome {
            Some(RaceOutcome::Connected(addr)) => assert_eq!(addr, open),
            other => panic!("expected a connection, got {other:?}"),
        }
        // Three refusals, each followed at once by the next attempt: far below 3 x 250 ms.
        assert!(
            run.elapsed < Duration::from_millis(200),
            "{:?}",
            run.elapsed
        );
        // The connection was closed without a byte: the accepted socket reads EOF.
        let (mut accepted, _) = listener.accept().unwrap();
        let mut buffer = [0u8; 8];
        accepted
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        assert_eq!(std::io::Read::read(&mut accepted, &mut buffer).unwrap(), 0);
    }

    #[test]
    fn when_every_address_fails_the_last_failure_is_reported() {
        let refused = [closed_port(), closed_port()];
        let run = run_race(&refused, 4, false);
        match run.outcome {
            Some(RaceOutcome::Failed {
                addr: Some(addr),
                error: ConnectError::Refused(_),
            }) => assert!(refused.contains(&addr)),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn an_empty_address_list_fails_at_once() {
        let run = run_race(&[], 1, false);
        assert!(matches!(
            run.outcome,
            Some(RaceOutcome::Failed { addr: None, .. })
        ));
    }

    #[test]
    fn cancel_stops_the_attempts_and_reports_cancelled() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let open = listener.local_addr().unwrap();
        let run = run_race(&[open], 1, true);
        match run.outcome {
            Some(RaceOutcome::Cancelled { last_tried }) => assert_eq!(last_tried, Some(open)),
            other => panic!("expected cancelled, got {other:?}"),
        }
    }
}
