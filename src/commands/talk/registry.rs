//! The talk-server's client list: numbers from 1 (never reused, so `/to 3` can never
//! reach a newcomer who took a departed client's place), and the routing rule for a line
//! the operator types without `/to`.
//!
//! Generic over what is stored, so the rules are tested without connections.

use std::collections::BTreeMap;

/// Why a typed line without `/to` has nowhere to go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// Nobody is connected.
    #[error("no client is connected")]
    NoClients,
    /// Several clients, and the last one who spoke has gone (or nobody has spoken).
    #[error("{0} clients are connected and none of them spoke last; use /to N text")]
    Ambiguous(usize),
}

/// The connected clients, by number.
#[derive(Debug)]
pub struct Registry<C> {
    clients: BTreeMap<u64, C>,
    next: u64,
    last_spoke: Option<u64>,
}

impl<C> Default for Registry<C> {
    fn default() -> Self {
        Registry {
            clients: BTreeMap::new(),
            next: 1,
            last_spoke: None,
        }
    }
}

impl<C> Registry<C> {
    /// An empty registry; the first client gets number 1.
    pub fn new() -> Registry<C> {
        Registry::default()
    }

    /// Adds a client and returns its number.
    pub fn add(&mut self, client: C) -> u64 {
        let id = self.next;
        self.next += 1;
        self.clients.insert(id, client);
        id
    }

    /// Removes a client; `None` if the number is unknown.
    pub fn remove(&mut self, id: u64) -> Option<C> {
        self.clients.remove(&id)
    }

    /// The client with this number.
    pub fn get(&self, id: u64) -> Option<&C> {
        self.clients.get(&id)
    }

    /// How many clients are connected.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// True when nobody is connected.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// Notes that client `id` sent a line: typed lines go to it from now on.
    pub fn spoke(&mut self, id: u64) {
        if self.clients.contains_key(&id) {
            self.last_spoke = Some(id);
        }
    }

    /// Where a typed line without `/to` goes: the client that spoke last if it is still
    /// connected, else the only client.
    pub fn route(&self) -> Result<u64, RouteError> {
        self.route_among(|_| true)
    }

    /// As [`Registry::route`], counting only the clients for which `eligible` holds
    /// (not those already being closed, say).
    pub fn route_among(&self, eligible: impl Fn(&C) -> bool) -> Result<u64, RouteError> {
        let usable = |id: &u64| self.clients.get(id).is_some_and(&eligible);
        if let Some(id) = self.last_spoke.filter(usable) {
            return Ok(id);
        }
        self.only_among(eligible)
    }

    /// The one client for which `eligible` holds, if there is exactly one.
    pub fn only_among(&self, eligible: impl Fn(&C) -> bool) -> Result<u64, RouteError> {
        let mut ids = self
            .clients
            .iter()
            .filter(|(_, client)| eligible(client))
            .map(|(&id, _)| id);
        match (ids.next(), ids.next()) {
            (None, _) => Err(RouteError::NoClients),
            (Some(only), None) => Ok(only),
            (Some(_), Some(_)) => Err(RouteError::Ambiguous(2 + ids.count())),
        }
    }

    /// Every client, by increasing number.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &C)> {
        self.clients.iter().map(|(&id, client)| (id, client))
    }
}

impl<C: Clone> Registry<C> {
    /// A snapshot of every client, so that callers can act on them without holding a
    /// borrow of the registry (acting may end a connection, which edits the registry).
    pub fn snapshot(&self) -> Vec<(u64, C)> {
        self.iter().map(|(id, c)| (id, c.clone())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_numbered_from_one_and_numbers_are_never_reused() {
        let mut registry = Registry::new();
        assert_eq!(registry.add("a"), 1);
        assert_eq!(registry.add("b"), 2);
        assert_eq!(registry.remove(2), Some("b"));
        assert_eq!(registry.add("c"), 3);
        assert_eq!(registry.len(), 2);
        assert_eq!(registry.get(1), Some(&"a"));
        assert_eq!(registry.get(2), None);
        assert_eq!(registry.remove(2), None);
    }

    #[test]
    fn route_with_nobody_connected_fails() {
        let registry: Registry<()> = Registry::new();
        assert_eq!(registry.route(), Err(RouteError::NoClients));
    }

    #[test]
    fn route_goes_to_the_only_client_even_if_it_never_spoke() {
        let mut registry = Registry::new();
        let id = registry.add(());
        assert_eq!(registry.route(), Ok(id));
    }

    #[test]
    fn route_goes_to_the_client_that_spoke_last() {
        let mut registry = Registry::new();
        let one = registry.add(());
        let two = registry.add(());
        assert_eq!(registry.route(), Err(RouteError::Ambiguous(2)));
        registry.spoke(two);
        assert_eq!(registry.route(), Ok(two));
        registry.spoke(one);
        assert_eq!(registry.route(), Ok(one));
    }

    #[test]
    fn route_falls_back_to_the_only_client_when_the_last_speaker_left() {
        let mut registry = Registry::new();
        let one = registry.add(());
        let two = registry.add(());
        let three = registry.add(());
        registry.spoke(two);
        registry.remove(two);
        assert_eq!(registry.route(), Err(RouteError::Ambiguous(2)));
        registry.remove(one);
        assert_eq!(registry.route(), Ok(three));
    }

    #[test]
    fn a_departed_client_cannot_become_the_last_speaker() {
        let mut registry = Registry::new();
        let one = registry.add(());
        registry.add(());
        registry.add(());
        registry.remove(one);
        registry.spoke(one);
        assert_eq!(registry.route(), Err(RouteError::Ambiguous(2)));
    }

    #[test]
    fn route_among_skips_clients_that_are_not_eligible() {
        let mut registry = Registry::new();
        let one = registry.add(true);
        let two = registry.add(false);
        registry.spoke(two);
        assert_eq!(registry.route_among(|&open| open), Ok(one));
        let three = registry.add(true);
        assert_eq!(
            registry.route_among(|&open| open),
            Err(RouteError::Ambiguous(2))
        );
        registry.spoke(three);
        assert_eq!(registry.route_among(|&open| open), Ok(three));
        assert_eq!(registry.only_among(|&open| !open), Ok(two));
    }

    #[test]
    fn snapshot_lists_clients_in_number_order() {
        let mut registry = Registry::new();
        registry.add('x');
        registry.add('y');
        assert_eq!(registry.snapshot(), vec![(1, 'x'), (2, 'y')]);
    }
}
