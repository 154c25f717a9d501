//! The reactor: a Twisted-style event loop on `mio`.
pub mod failure;
pub mod protocol;
pub mod testing;
pub mod time;

pub use failure::{Failure, MessageError};
pub use protocol::{
    CloseReason, ConnectError, Factory, Producer, Protocol, ProtocolResult, Transport, TransportRef,
};
pub use time::{
    CallResult, Clock, DelayedCall, DelayedCallError, FakeClock, ManualClock, MonotonicClock,
    Scheduler,
};
