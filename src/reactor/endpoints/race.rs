//! Happy Eyeballs (RFC 8305, E-04..E-06): connect to one of several addresses of a
//! host, racing them so that an address that never answers costs 250 ms, not a whole
//! timeout.
//!
//! The addresses are tried in [`interleave`]d order (families alternating, starting
//! with the family of the first address the resolver gave). The next attempt starts
//! the attempt delay after the previous one unless one has connected, and at once when
//! an attempt fails. The first connection wins and is the only one that gets a
//! protocol; every other attempt is stopped, and a connection that completes after
//! the race was decided is closed without a protocol (E-05).
//!
//! The race takes its address list as input, so a test can hand it any list.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use super::{Attempt, AttemptLimiter, AttemptOutcome, ConnectingInner, EndpointErrorKind, Permit};
use crate::reactor::tcp::{ClientFactory, Connector};
use crate::reactor::{Address, CloseReason, ConnectError, DelayedCall, Factory, Protocol, Reactor};

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

/// How the race runs its attempts.
#[derive(Clone)]
pub(super) struct RaceSettings {
    /// Each attempt's own timeout (`None`: the kernel's).
    pub attempt_timeout: Option<Duration>,
    /// Time between starting one attempt and the next.
    pub attempt_delay: Duration,
    /// Hands out a slot for each attempt, if the caller caps attempts in flight.
    pub limiter: Option<Rc<dyn AttemptLimiter>>,
    /// The time attempts' start times are measured from.
    pub origin: Duration,
}

struct RaceState {
    pending: VecDeque<SocketAddr>,
    /// Attempts under way, with their index in `attempts`.
    in_flight: Vec<(Connector, usize)>,
    /// An attempt has asked the limiter for a slot and not got it yet.
    waiting_for_slot: bool,
    next_attempt: Option<DelayedCall>,
    attempts: Vec<Attempt>,
    /// The connect this race is for, told of the winner or of the last failure; taken
    /// when the race ends (which also breaks the cycle between the two).
    owner: Option<Rc<ConnectingInner>>,
}

impl RaceState {
    fn done(&self) -> bool {
        self.owner.is_none()
    }

    fn record(&mut self, index: usize, outcome: AttemptOutcome, took: Duration) {
        if let Some(attempt) = self.attempts.get_mut(index)
            && matches!(attempt.outcome, AttemptOutcome::Pending)
        {
            attempt.outcome = outcome;
            attempt.took = Some(took);
        }
    }
}

struct RaceInner {
    reactor: Reactor,
    settings: RaceSettings,
    state: RefCell<RaceState>,
}

/// A race in progress. Dropping the handle does not stop it; [`Race::cancel`] does.
#[derive(Clone)]
pub(super) struct Race {
    inner: Rc<RaceInner>,
}

impl Race {
    /// Starts racing `addrs` (in [`interleave`]d order; not empty) for `owner`, which
    /// is told of the winner (`won`) or of the last failure (`finish`), from the
    /// reactor loop, unless the race is cancelled first.
    pub fn start(
        reactor: &Reactor,
        addrs: &[SocketAddr],
        settings: RaceSettings,
        owner: Rc<ConnectingInner>,
    ) -> Race {
        let race = Race {
            inner: Rc::new(RaceInner {
                reactor: reactor.clone(),
                settings,
                state: RefCell::new(RaceState {
                    pending: interleave(addrs).into(),
                    in_flight: Vec::new(),
                    waiting_for_slot: false,
                    next_attempt: None,
                    attempts: Vec::new(),
                    owner: Some(owner),
                }),
            }),
        };
        race.launch_next();
        race
    }

    /// Stops every attempt; the owner is told nothing. Nothing happens if the race has
    /// ended.
    pub fn cancel(&self) {
        self.end();
    }

    /// Every attempt started so far, in start order, with its outcome.
    pub fn attempts(&self) -> Vec<Attempt> {
        self.inner.state.borrow().attempts.clone()
    }

    /// Moves the attempts out, for a race that has ended (what happens after is not
    /// kept).
    pub fn take_attempts(&self) -> Vec<Attempt> {
        std::mem::take(&mut self.inner.state.borrow_mut().attempts)
    }

    /// Runs `f` on the attempts so far, without copying them.
    pub fn with_attempts<R>(&self, f: impl FnOnce(&[Attempt]) -> R) -> R {
        f(&self.inner.state.borrow().attempts)
    }

    /// The addresses of the attempts under way.
    pub fn in_flight(&self) -> Vec<SocketAddr> {
        let state = self.inner.state.borrow();
        state
            .in_flight
            .iter()
            .filter_map(|(_, index)| state.attempts.get(*index).map(|a| a.addr))
            .collect()
    }

    /// Asks for a slot for the next address, unless one is already asked for.
    fn launch_next(&self) {
        let timer = {
            let mut state = self.inner.state.borrow_mut();
            if state.done() || state.waiting_for_slot || state.pending.is_empty() {
                return;
            }
            state.waiting_for_slot = true;
            state.next_attempt.take()
        };
        if let Some(timer) = timer {
            let _ = timer.cancel();
        }
        let race = self.clone();
        match &self.inner.settings.limiter {
            Some(limiter) => limiter.acquire(Box::new(move |permit| race.begin_attempt(permit))),
            None => race.begin_attempt(Box::new(())),
        }
    }

    fn begin_attempt(&self, permit: Permit) {
        // One reading of the clock for both the attempt's record and its timing.
        let now = self.inner.reactor.seconds();
        let (addr, index) = {
            let mut state = self.inner.state.borrow_mut();
            state.waiting_for_slot = false;
            let addr = if state.done() {
                None
            } else {
                state.pending.pop_front()
            };
            let Some(addr) = addr else {
                drop(state);
                drop(permit);
                return;
            };
            let started = now.saturating_sub(self.inner.settings.origin);
            state.attempts.push(Attempt {
                addr,
                started,
                took: None,
                outcome: AttemptOutcome::Pending,
            });
            (addr, state.attempts.len() - 1)
        };
        let factory = Rc::new(AttemptFactory {
            race: self.clone(),
            index,
            addr,
            started_at: now,
            permit: RefCell::new(Some(permit)),
        });
        let connector =
            self.inner
                .reactor
                .connect_tcp(addr, factory, self.inner.settings.attempt_timeout);
        let mut state = self.inner.state.borrow_mut();
        if state.done() {
            // Decided while connecting (an injected failure cannot do that, but a
            // limiter handing out slots from inside acquire can re-enter): stop it.
            drop(state);
            let _ = connector.stop_connecting();
            return;
        }
        state.in_flight.push((connector, index));
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

    /// The attempt at `index` connected: the first one wins (E-05).
    fn won(&self, index: usize, took: Duration, peer: SocketAddr) -> Option<Box<dyn Protocol>> {
        {
            let mut state = self.inner.state.borrow_mut();
            if state.done() {
                state.record(index, AttemptOutcome::Stopped, took);
                return None;
            }
            state.record(index, AttemptOutcome::Connected, took);
            state.in_flight.retain(|(_, i)| *i != index);
        }
        self.end()?.won(peer)
    }

    /// The attempt at `index` failed.
    fn failed(&self, index: usize, took: Duration, addr: SocketAddr, error: ConnectError) {
        let (all_failed, launch) = {
            let mut state = self.inner.state.borrow_mut();
            state.in_flight.retain(|(_, i)| *i != index);
            if state.done() {
                state.record(index, AttemptOutcome::Stopped, took);
                return;
            }
            state.record(index, AttemptOutcome::Failed(error.clone()), took);
            if !state.pending.is_empty() {
                // E-04 [ours]: the next attempt at once, without waiting out the delay.
                (false, true)
            } else if state.in_flight.is_empty() && !state.waiting_for_slot {
                (true, false)
            } else {
                (false, false)
            }
        };
        if launch {
            self.launch_next();
        }
        if all_failed && let Some(owner) = self.end() {
            owner.finish(Err(EndpointErrorKind::Connect { addr, error }));
        }
    }

    /// Ends the race: no attempt starts any more, every attempt in flight is stopped,
    /// and the owner is handed back for the caller to tell (or drop).
    fn end(&self) -> Option<Rc<ConnectingInner>> {
        let (owner, others, timer) = {
            let mut state = self.inner.state.borrow_mut();
            let owner = state.owner.take();
            state.pending.clear();
            let others = std::mem::take(&mut state.in_flight);
            (owner, others, state.next_attempt.take())
        };
        if let Some(timer) = timer {
            let _ = timer.cancel();
        }
        for (connector, _) in others {
            // Reports UserAborted to its factory, which records the attempt as
            // stopped and gives its slot back.
            let _ = connector.stop_connecting();
        }
        owner
    }
}

/// The factory of one attempt: it builds the caller's protocol only if it wins.
struct AttemptFactory {
    race: Race,
    index: usize,
    /// The address this attempt connects to.
    addr: SocketAddr,
    started_at: Duration,
    permit: RefCell<Option<Permit>>,
}

impl AttemptFactory {
    fn took(&self) -> Duration {
        self.race
            .inner
            .reactor
            .seconds()
            .saturating_sub(self.started_at)
    }

    /// The socket is closed by now (the connector closes it before telling us), so its
    /// slot can go to the next attempt.
    fn release(&self) {
        let permit = self.permit.borrow_mut().take();
        drop(permit);
    }
}

impl Factory for AttemptFactory {
    fn build_protocol(&self, _peer: Address) -> Option<Box<dyn Protocol>> {
        self.race.won(self.index, self.took(), self.addr)
    }
}

impl ClientFactory for AttemptFactory {
    fn client_connection_failed(&self, _connector: &Connector, reason: &ConnectError) {
        self.race
            .failed(self.index, self.took(), self.addr, reason.clone());
        self.release();
    }

    fn client_connection_lost(&self, _connector: &Connector, _reason: &CloseReason) {
        // The winner's connection ended, or a late connection was closed without a
        // protocol: either way the race had been decided.
        self.release();
    }
}

impl std::fmt::Debug for Race {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.inner.state.borrow();
        f.debug_struct("Race")
            .field("pending", &state.pending)
            .field("in_flight", &state.in_flight.len())
            .field("done", &state.done())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn e04_interleave_alternates_families_starting_with_the_first() {
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
}
