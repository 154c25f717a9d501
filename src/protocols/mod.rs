//! Reusable protocols built on the reactor's [`Protocol`](crate::reactor::Protocol) trait.
mod byte_scan;
pub mod line;
pub mod policies;

pub use line::{Delimiter, LineControl, LineError, LineHandle, LineHandler, LineReceiver};
pub use policies::{
    ConnectionLimits, IdleTimeout, LimitFactory, OutgoingQueue, Refusal, TimeoutFactory, TooSlow,
    close_with_grace,
};
