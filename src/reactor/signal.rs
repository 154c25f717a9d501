//! SIGINT and SIGTERM turned into an orderly stop.
//!
//! The handler only writes to a self-pipe (signal-hook-mio), which the poll watches;
//! `stop()` then runs on the reactor thread. A self-pipe, unlike signalfd, needs no signal
//! mask in every thread, so it coexists with the console and worker threads.

use std::io;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;

use super::io::SIGNAL_TOKEN;

/// A signal that stopped the reactor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM.
    Terminate,
}

impl Signal {
    /// The signal's number (2 or 15).
    pub fn number(self) -> i32 {
        match self {
            Signal::Interrupt => SIGINT,
            Signal::Terminate => SIGTERM,
        }
    }

    /// The exit status a shell reports for a process ended by this signal: 128 + number
    /// (130 for SIGINT, 143 for SIGTERM).
    pub fn exit_code(self) -> i32 {
        128 + self.number()
    }

    fn from_number(number: i32) -> Option<Signal> {
        match number {
            SIGINT => Some(Signal::Interrupt),
            SIGTERM => Some(Signal::Terminate),
            _ => None,
        }
    }
}

/// The registered self-pipe source.
pub(crate) struct SignalSource {
    signals: Signals,
}

impl SignalSource {
    pub(crate) fn install(registry: &mio::Registry) -> io::Result<SignalSource> {
        let mut signals = Signals::new([SIGINT, SIGTERM])?;
        registry.register(&mut signals, SIGNAL_TOKEN, mio::Interest::READABLE)?;
        Ok(SignalSource { signals })
    }

    /// The signals that arrived since the last call, in order.
    pub(crate) fn drain(&mut self) -> Vec<Signal> {
        self.signals
            .pending()
            .filter_map(Signal::from_number)
            .collect()
    }

    pub(crate) fn uninstall(mut self, registry: &mio::Registry) {
        if let Err(error) = registry.deregister(&mut self.signals) {
            log::debug!("could not deregister the signal pipe: {error}");
        }
    }
}
