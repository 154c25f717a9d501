//! The reactor: a Twisted-style event loop on `mio`.
pub mod defer;
pub mod failure;
pub mod looping;
pub mod protocol;
pub mod time;

pub use defer::{
    AllFailedError, AlreadyCalledError, CancelledError, ChainingError, Deferred,
    DeferredListOptions, FirstError, Outcome, Step, TimeoutError, WeakDeferred, deferred_list,
    first_success, gather_results, maybe_deferred,
};
pub use failure::{Failure, MessageError};
pub use looping::{LoopStep, LoopingCall, LoopingCallError, WeakLoopingCall, defer_later};
pub use protocol::{
    CloseReason, ConnectError, Factory, Producer, Protocol, ProtocolResult, Transport, TransportRef,
};
pub use time::{
    CallResult, Clock, DelayedCall, DelayedCallError, FakeClock, ManualClock, MonotonicClock,
    Scheduler,
};
