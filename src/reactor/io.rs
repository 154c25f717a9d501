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
}

impl Readiness {
    fn from_event(event: &mio::event::Event) -> Readiness {
        Readiness {
            readable: event.is_readable(),
            writable: event.is_writable(),
            read_closed: event.is_read_closed(),
            write_closed: event.is_write_closed(),
            error: event.is_error(),
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

struct Slot {
    generation: u32,
    handler: Option<Rc<dyn IoHandler>>,
}

/// Slots of registered handlers, reused through a free list.
#[derive(Default)]
pub(crate) struct IoRegistry {
    slots: Vec<Slot>,
    free: Vec<u32>,
    live: usize,
}

impl IoRegistry {
    pub(crate) fn insert(&mut self, handler: Rc<dyn IoHandler>) -> io::Result<IoKey> {
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                let index = u32::try_from(self.slots.len())
                    .map_err(|_| io::Error::other("too many registered I/O sources"))?;
                self.slots.push(Slot {
                    generation: 0,
                    handler: None,
                });
                index
            }
        };
        let slot = &mut self.slots[index as usize];
        slot.handler = Some(handler);
        self.live += 1;
        Ok(IoKey {
            index,
            generation: slot.generation,
        })
    }

    /// Frees the slot of `key`; false if it was not (or no longer) registered.
    pub(crate) fn remove(&mut self, key: IoKey) -> bool {
        let Some(slot) = self.slots.get_mut(key.index as usize) else {
            return false;
        };
        if slot.generation != key.generation || slot.handler.is_none() {
            return false;
        }
        slot.handler = None;
        // Skip u32::MAX so that no slot token can equal a reserved token.
        slot.generation = (slot.generation + 1) % (u32::MAX - 1);
        self.free.push(key.index);
        self.live -= 1;
        true
    }

    /// Puts `handler` in the slot of `key`; false if `key` is stale.
    pub(crate) fn replace(&mut self, key: IoKey, handler: Rc<dyn IoHandler>) -> bool {
        match self.slots.get_mut(key.index as usize) {
            Some(slot) if slot.generation == key.generation && slot.handler.is_some() => {
                slot.handler = Some(handler);
                true
            }
            _ => false,
        }
    }

    /// The handler behind a token, unless the token is stale.
    pub(crate) fn get(&self, token: mio::Token) -> Option<Rc<dyn IoHandler>> {
        let key = IoKey::from_token(token);
        let slot = self.slots.get(key.index as usize)?;
        if slot.generation != key.generation {
            return None;
        }
        slot.handler.clone()
    }

    pub(crate) fn handlers(&self) -> Vec<Rc<dyn IoHandler>> {
        self.slots
            .iter()
            .filter_map(|s| s.handler.clone())
            .collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.live
    }
}

pub(crate) fn readiness(event: &mio::event::Event) -> (mio::Token, Readiness) {
    (event.token(), Readiness::from_event(event))
}
