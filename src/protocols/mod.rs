//! Reusable protocols built on the reactor's [`Protocol`](crate::reactor::Protocol) trait.
pub mod line;

pub use line::{Delimiter, LineControl, LineError, LineHandle, LineHandler, LineReceiver};
