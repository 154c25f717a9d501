//! The I/O side of the loop: a registry of event sources keyed by `mio` tokens.
//!
//! A token packs a slot index and the slot's generation (as calloop does), so an event
//! that arrives for a source already removed, whose slot has been reused, is recognised
//! as stale and dropped instead of reaching the slot's new owner.

use std::io;
use std::rc::Rc;

use super::Reactor;

/// What a readiness event says about a source. Edge-triggered: act until `WouldBlock`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Readiness {
    /// Bytes (or a connection) can be read.
    pub readable: bool,
    /// Bytes can be written, or a pending connect has completed.
    pub writable: bool,
    /// The peer shut down its write side (EOF ahead).
    pub read_closed: bool,
    /// Our write side is closed (the peer went away).
    pub write_closed: bool,
    /// The socket has an error pending.
    pub error: bool,
    /// Urgent (out-of-band) data is pending: a read may stop short at its mark with
    /// more bytes behind it. Reported only to sources registered for it (Linux).
    pub priority: bool,
}

impl Readiness {
    fn from_event(event: &mio::event::Event) -> Readiness {
        Readiness {
            readable: event.is_readable(),
            writable: event.is_writable(),
            read_closed: event.is_read_closed(),
            write_closed: event.is_write_closed(),
            error: event.is_error(),
            priority: event.is_priority(),
        }
    }
}

/// A source's code: told when the source is ready, and when the reactor shuts down.
///
/// Transports and listening ports implement this; user code normally implements
/// `Protocol` and `Factory` instead.
pub trait IoHandler {
    /// The source is ready. Called on the reactor thread with no reactor borrow held.
    fn ready(&self, reactor: &Reactor, readiness: Readiness);

    /// The reactor is shutting down: close and report the loss (R-10, P-28).
    fn shutdown(&self, reactor: &Reactor);
}

/// The registry entry of one source: its slot and generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IoKey {
    index: u32,
    generation: u32,
}

impl IoKey {
    /// A key no registration ever has (generations stop short of `u32::MAX`): what a
    /// source holds while it is not registered, so that it needs no `Option`.
    pub(crate) const NONE: IoKey = IoKey {
        index: u32::MAX,
        generation: u32::MAX,
    };

    pub(crate) fn token(self) -> mio::Token {
        mio::Token(((self.generation as usize) << 32) | self.index as usize)
    }

    fn from_token(token: mio::Token) -> IoKey {
        IoKey {
            index: (token.0 & 0xffff_ffff) as u32,
            generation: (token.0 >> 32) as u32,
        }
    }
}

/// Tokens the reactor keeps for itself; no slot ever produces them because generations
/// stop short of `u32::MAX`.
pub(crate) const WAKER_TOKEN: mio::Token = mio::Token(usize::MAX);
pub(crate) const SIGNAL_TOKEN: mio::Token = mio::Token(usize::MAX - 1);

/// What the registry needs of the reactor's connections, the sources it keeps as their
/// own type (see [`Handler`]). The stream transport implements it; the registry knows
/// nothing else about it.
pub(crate) trait Connection {
    /// The connection's socket is ready.
    fn ready(self: &Rc<Self>, readiness: Readiness);

    /// The reactor is shutting down: the connection ends (R-10, P-28).
    fn shutdown(self: &Rc<Self>);

    /// The registry is dropped with the connection still in it: break the reference
    /// cycle between the connection and a protocol that keeps its transport.
    fn release(&self);
}

/// What a source is registered with: its handler.
///
/// Connections (`C`, the reactor's one connection type) are kept as their own type
/// rather than as `dyn IoHandler`, so that a connection can be found again from its key
/// alone ([`IoRegistry::connection`]): a transport called through `&self` (every
/// `Transport` method) reaches its own `Rc` through the registry instead of through a
/// pointer to itself, and a connector reaches its connection through the connection's
/// key. Idle connections are counted in the thousands, and each saves that pointer. The
/// loop dispatches to a connection directly with the `Rc` it took from the slot, so an
/// event costs one registry lookup and no virtual call.
pub(crate) enum Handler<C> {
    /// An open connection.
    Connection(Rc<C>),
    /// Any other source: listening ports, connect attempts, user handlers.
    Dyn(Rc<dyn IoHandler>),
}

impl<C> Clone for Handler<C> {
    fn clone(&self) -> Self {
        match self {
            Handler::Connection(connection) => Handler::Connection(connection.clone()),
            Handler::Dyn(handler) => Handler::Dyn(handler.clone()),
        }
    }
}

impl<C: Connection> Handler<C> {
    /// Tells the handler what its source is ready for.
    pub(crate) fn ready(&self, reactor: &Reactor, readiness: Readiness) {
        match self {
            Handler::Connection(connection) => connection.ready(readiness),
            Handler::Dyn(handler) => handler.ready(reactor, readiness),
        }
    }

    /// The reactor is shutting down: the source must close.
    pub(crate) fn shutdown(&self, reactor: &Reactor) {
        match self {
            Handler::Connection(connection) => connection.shutdown(),
            Handler::Dyn(handler) => handler.shutdown(reactor),
        }
    }
}

/// One registry slot. 16 bytes (tag, generation, one thin pointer), since a server
/// keeps one per open connection: a `dyn` handle would be two pointers, so the few
/// other handlers (ports, connect attempts) are boxed once more instead.
enum Slot<C> {
    Free {
        generation: u32,
    },
    Connection {
        generation: u32,
        connection: Rc<C>,
    },
    Dyn {
        generation: u32,
        handler: Box<Rc<dyn IoHandler>>,
    },
}

#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<Slot<u8>>() == 16);

impl<C> Slot<C> {
    fn generation(&self) -> u32 {
        match self {
            Slot::Free { generation }
            | Slot::Connection { generation, .. }
            | Slot::Dyn { generation, .. } => *generation,
        }
    }

    fn used(generation: u32, handler: Handler<C>) -> Slot<C> {
        match handler {
            Handler::Connection(connection) => Slot::Connection {
                generation,
                connection,
            },
            Handler::Dyn(handler) => Slot::Dyn {
                generation,
                handler: Box::new(handler),
            },
        }
    }

    /// The handler, if the slot is in use by the registration of `generation`.
    fn handler(&self, generation: u32) -> Option<Handler<C>> {
        match self {
            Slot::Connection {
                generation: g,
                connection,
            } if *g == generation => Some(Handler::Connection(connection.clone())),
            Slot::Dyn {
                generation: g,
                handler,
            } if *g == generation => Some(Handler::Dyn(Rc::clone(handler))),
            _ => None,
        }
    }
}

/// Slots of registered handlers, reused through a free list.
pub(crate) struct IoRegistry<C: Connection> {
    slots: Vec<Slot<C>>,
    free: Vec<u32>,
    live: usize,
}

impl<C: Connection> Default for IoRegistry<C> {
    fn default() -> Self {
        IoRegistry {
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
        }
    }
}

impl<C: Connection> IoRegistry<C> {
    pub(crate) fn insert(&mut self, handler: Handler<C>) -> io::Result<IoKey> {
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                let index = u32::try_from(self.slots.len())
                    .map_err(|_| io::Error::other("too many registered I/O sources"))?;
                self.slots.push(Slot::Free { generation: 0 });
                index
            }
        };
        let slot = &mut self.slots[index as usize];
        let generation = slot.generation();
        *slot = Slot::used(generation, handler);
        self.live += 1;
        Ok(IoKey { index, generation })
    }

    /// Frees the slot of `key`; false if it was not (or no longer) registered.
    pub(crate) fn remove(&mut self, key: IoKey) -> bool {
        let Some(slot) = self.slots.get_mut(key.index as usize) else {
            return false;
        };
        if matches!(slot, Slot::Free { .. }) || slot.generation() != key.generation {
            return false;
        }
        // Skip u32::MAX so that no slot token can equal a reserved token.
        let generation = (key.generation + 1) % (u32::MAX - 1);
        *slot = Slot::Free { generation };
        self.free.push(key.index);
        self.live -= 1;
        true
    }

    /// Puts `handler` in the slot of `key`; false if `key` is stale.
    pub(crate) fn replace(&mut self, key: IoKey, handler: Handler<C>) -> bool {
        match self.slots.get_mut(key.index as usize) {
            Some(slot)
                if !matches!(slot, Slot::Free { .. }) && slot.generation() == key.generation =>
            {
                *slot = Slot::used(key.generation, handler);
                true
            }
            _ => false,
        }
    }

    /// The handler behind a token, unless the token is stale.
    pub(crate) fn get(&self, token: mio::Token) -> Option<Handler<C>> {
        let key = IoKey::from_token(token);
        self.slots.get(key.index as usize)?.handler(key.generation)
    }

    /// The connection registered under `key`, unless `key` is stale or holds something
    /// else.
    pub(crate) fn connection(&self, key: IoKey) -> Option<Rc<C>> {
        match self.slots.get(key.index as usize)? {
            Slot::Connection {
                generation,
                connection,
            } if *generation == key.generation => Some(connection.clone()),
            _ => None,
        }
    }

    pub(crate) fn handlers(&self) -> Vec<Handler<C>> {
        self.slots
            .iter()
            .filter_map(|slot| slot.handler(slot.generation()))
            .collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.live
    }

    /// Every open connection, for tests that look inside one.
    #[cfg(test)]
    pub(crate) fn connections(&self) -> Vec<Rc<C>> {
        self.slots
            .iter()
            .filter_map(|slot| match slot {
                Slot::Connection { connection, .. } => Some(connection.clone()),
                _ => None,
            })
            .collect()
    }
}

impl<C: Connection> Drop for IoRegistry<C> {
    /// Breaks the one reference cycle the registry's entries can hold: a connection
    /// owns its protocol, and the protocol may keep the connection's transport (which is
    /// the connection). Closing the connection breaks it, and a reactor that shuts down
    /// closes every connection (P-28); a reactor dropped without that (never run, or
    /// crashed) would otherwise keep each connection, its protocol and its socket
    /// forever.
    fn drop(&mut self) {
        for slot in &self.slots {
            if let Slot::Connection { connection, .. } = slot {
                connection.release();
            }
        }
    }
}

pub(crate) fn readiness(event: &mio::event::Event) -> (mio::Token, Readiness) {
    (event.token(), Readiness::from_event(event))
}
