//! Name lookups, off the reactor thread (E-02, E-03).
//!
//! `getaddrinfo` blocks, so it runs on the reactor's worker threads
//! ([`Reactor::defer_to_thread`]) and its answer comes back to the loop as a Deferred.
//! Lookups of the same name that overlap share one call (`db 5432,6432` asks once), a
//! lookup that takes longer than the timeout is given up (its late answer is dropped),
//! and IP literals never come here at all.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, ToSocketAddrs};
use std::rc::Rc;
use std::time::Duration;

use crate::reactor::{DelayedCall, Reactor, Step};

/// Which address families may be used (`-4`, `-6`, or neither).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Family {
    /// IPv4 and IPv6.
    #[default]
    Any,
    /// IPv4 only.
    V4,
    /// IPv6 only.
    V6,
}

impl Family {
    /// Whether an address of this kind may be used.
    pub fn allows(self, ip: IpAddr) -> bool {
        match self {
            Family::Any => true,
            Family::V4 => ip.is_ipv4(),
            Family::V6 => ip.is_ipv6(),
        }
    }
}

/// Why a name gave no usable address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolveError {
    /// The resolver said no; its own words (e.g. "Name or service not known").
    Failed(String),
    /// No answer within the timeout.
    NoAnswer(Duration),
    /// Addresses were found, but none of the family `-4`/`-6` allows.
    NoAddressOfFamily(Family),
}

impl std::error::Error for ResolveError {}

impl fmt::Display for ResolveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResolveError::Failed(words) => f.write_str(words),
            ResolveError::NoAnswer(after) => write!(
                f,
                "no answer from the resolver within {}",
                crate::duration::format(*after)
            ),
            ResolveError::NoAddressOfFamily(Family::V6) => {
                f.write_str("it has no IPv6 address (-6 was given)")
            }
            ResolveError::NoAddressOfFamily(_) => {
                f.write_str("it has no IPv4 address (-4 was given)")
            }
        }
    }
}

/// What a waiter is handed.
pub type Resolution = Result<Vec<IpAddr>, ResolveError>;

type Waiter = Box<dyn FnOnce(Resolution)>;

struct Lookup {
    id: u64,
    waiters: Vec<Waiter>,
    timer: Option<DelayedCall>,
}

struct ResolverInner {
    reactor: Reactor,
    timeout: Duration,
    family: Family,
    lookups: RefCell<HashMap<String, Lookup>>,
    next_id: Cell<u64>,
}

/// Resolves names on worker threads, sharing overlapping lookups of one name.
#[derive(Clone)]
pub struct Resolver {
    inner: Rc<ResolverInner>,
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolver")
            .field("in_flight", &self.inner.lookups.borrow().len())
            .finish()
    }
}

impl Resolver {
    /// A resolver that gives up on a lookup after `timeout` and keeps only addresses
    /// of `family`.
    pub fn new(reactor: &Reactor, timeout: Duration, family: Family) -> Resolver {
        Resolver {
            inner: Rc::new(ResolverInner {
                reactor: reactor.clone(),
                timeout,
                family,
                lookups: RefCell::new(HashMap::new()),
                next_id: Cell::new(0),
            }),
        }
    }

    /// The family this resolver keeps.
    pub fn family(&self) -> Family {
        self.inner.family
    }

    /// Looks `name` up and calls `done` with its addresses, in the resolver's order,
    /// from the reactor loop (never from inside this call, unless the worker threads
    /// cannot be started at all).
    pub fn resolve(&self, name: &str, done: impl FnOnce(Resolution) + 'static) {
        let id = {
            let mut lookups = self.inner.lookups.borrow_mut();
            if let Some(lookup) = lookups.get_mut(name) {
                lookup.waiters.push(Box::new(done));
                return;
            }
            let id = self.inner.next_id.get();
            self.inner.next_id.set(id + 1);
            lookups.insert(
                name.to_string(),
                Lookup {
                    id,
                    waiters: vec![Box::new(done)],
                    timer: None,
                },
            );
            id
        };
        let resolver = self.clone();
        let key = name.to_string();
        let timer = self.inner.reactor.call_later(self.inner.timeout, move || {
            let timeout = resolver.inner.timeout;
            resolver.complete(&key, id, Err(ResolveError::NoAnswer(timeout)));
        });
        if let Some(lookup) = self.inner.lookups.borrow_mut().get_mut(name) {
            lookup.timer = Some(timer);
        }
        let query = name.to_string();
        let lookup = self
            .inner
            .reactor
            .defer_to_thread(move || lookup_blocking(&query));
        let resolver = self.clone();
        let key = name.to_string();
        lookup.add_both(move |result| {
            let resolution = match result {
                Ok(addrs) => resolver.keep_family(addrs),
                Err(failure) => Err(ResolveError::Failed(resolver_words(
                    &failure.error_message(),
                ))),
            };
            resolver.complete(&key, id, resolution);
            Step::Value(Vec::new())
        });
    }

    fn keep_family(&self, addrs: Vec<IpAddr>) -> Resolution {
        if addrs.is_empty() {
            return Err(ResolveError::Failed("no addresses".into()));
        }
        let family = self.inner.family;
        let kept: Vec<IpAddr> = addrs.into_iter().filter(|a| family.allows(*a)).collect();
        if kept.is_empty() {
            return Err(ResolveError::NoAddressOfFamily(family));
        }
        Ok(kept)
    }

    /// Hands a lookup's result to its waiters, unless that lookup was already answered
    /// (by its timeout, or the other way round).
    fn complete(&self, name: &str, id: u64, resolution: Resolution) {
        let lookup = {
            let mut lookups = self.inner.lookups.borrow_mut();
            match lookups.get(name) {
                Some(lookup) if lookup.id == id => lookups.remove(name),
                _ => None,
            }
        };
        let Some(lookup) = lookup else {
            return;
        };
        if let Some(timer) = lookup.timer {
            let _ = timer.cancel();
        }
        for waiter in lookup.waiters {
            waiter(resolution.clone());
        }
    }
}

/// The blocking lookup, on a worker thread. Port 0: the port is the caller's business.
fn lookup_blocking(name: &str) -> std::io::Result<Vec<IpAddr>> {
    Ok((name, 0u16).to_socket_addrs()?.map(|a| a.ip()).collect())
}

/// The resolver's own words, without the prefix Rust's standard library adds.
fn resolver_words(message: &str) -> String {
    message
        .strip_prefix("failed to lookup address information: ")
        .unwrap_or(message)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_lookups(names: &[&str], family: Family) -> Vec<(String, Resolution)> {
        let reactor = Reactor::new().unwrap();
        let resolver = Resolver::new(&reactor, Duration::from_secs(10), family);
        let results: Rc<RefCell<Vec<(String, Resolution)>>> = Rc::default();
        let expected = names.len();
        for name in names {
            let (results, r, key) = (results.clone(), reactor.clone(), name.to_string());
            resolver.resolve(name, move |resolution| {
                results.borrow_mut().push((key, resolution));
                if results.borrow().len() == expected {
                    let _ = r.stop();
                }
            });
        }
        let r = reactor.clone();
        reactor.call_later(Duration::from_secs(10), move || {
            let _ = r.stop();
        });
        reactor.run().unwrap();
        results.take()
    }

    #[test]
    fn e02_overlapping_lookups_of_one_name_share_one_answer() {
        let results = run_lookups(&["localhost", "localhost"], Family::Any);
        assert_eq!(results.len(), 2);
        assert_eq!(results[0].1, results[1].1);
        let addrs = results[0].1.clone().unwrap();
        assert!(addrs.iter().all(|a| a.is_loopback()), "{addrs:?}");
    }

    #[test]
    fn e03_an_unknown_name_fails_with_the_resolvers_words() {
        let results = run_lookups(&["nosuch.invalid"], Family::Any);
        match &results[0].1 {
            Err(ResolveError::Failed(words)) => {
                assert!(!words.is_empty());
                assert!(!words.starts_with("failed to lookup"), "{words}");
            }
            other => panic!("expected a resolver failure, got {other:?}"),
        }
    }

    #[test]
    fn e03_the_family_filter_keeps_only_allowed_addresses() {
        let results = run_lookups(&["127.0.0.1"], Family::V6);
        assert_eq!(
            results[0].1,
            Err(ResolveError::NoAddressOfFamily(Family::V6))
        );
        let results = run_lookups(&["127.0.0.1"], Family::V4);
        assert_eq!(results[0].1, Ok(vec!["127.0.0.1".parse().unwrap()]));
    }

    #[test]
    fn resolver_words_drop_the_std_prefix() {
        assert_eq!(
            resolver_words("failed to lookup address information: Name or service not known"),
            "Name or service not known"
        );
        assert_eq!(resolver_words("other"), "other");
    }
}
