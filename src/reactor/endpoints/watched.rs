//! The protocol an endpoint gives the connection it made: the caller's protocol, with
//! the connect under way told when the connection starts and when it ends. One wrapper
//! for the hostname endpoint's winner and a UNIX endpoint's connection; what each
//! connect makes of those moments (fire its Deferred, wait for a check, fail) is its
//! [`Watch`].

use std::rc::Rc;

use crate::reactor::{CloseReason, Protocol, ProtocolResult, TransportRef};

/// A connect under way, waiting on its connection's protocol.
pub(crate) trait Watch {
    /// The connection is made; the caller's `connection_made` runs next.
    fn making(self: &Rc<Self>, transport: &TransportRef);

    /// The caller's `connection_made` returned `result`. True while the connect still
    /// wants to hear how the connection ends.
    fn made(self: &Rc<Self>, transport: &TransportRef, result: &ProtocolResult) -> bool;

    /// The connection ended (after the caller's protocol heard it).
    fn lost(self: &Rc<Self>, reason: &CloseReason);
}

/// The caller's protocol, reporting its start and end to the connect that waits on it.
pub(crate) struct Watched<W: Watch> {
    inner: Box<dyn Protocol>,
    /// Until the connect has heard all it wants.
    watch: Option<Rc<W>>,
}

impl<W: Watch> Watched<W> {
    /// `inner`, watched by `watch`.
    pub(crate) fn new(inner: Box<dyn Protocol>, watch: Rc<W>) -> Watched<W> {
        Watched {
            inner,
            watch: Some(watch),
        }
    }
}

impl<W: Watch + 'static> Protocol for Watched<W> {
    fn connection_made(&mut self, transport: &TransportRef) -> ProtocolResult {
        if let Some(watch) = &self.watch {
            watch.making(transport);
        }
        let result = self.inner.connection_made(transport);
        if let Some(watch) = self.watch.take()
            && watch.made(transport, &result)
        {
            self.watch = Some(watch);
        }
        result
    }

    fn data_received(&mut self, transport: &TransportRef, data: &[u8]) -> ProtocolResult {
        self.inner.data_received(transport, data)
    }

    // A TLS layer started under the connection later (S-12, STARTTLS) reports its
    // handshake to this, the transport's protocol: the caller's protocol must hear it.
    fn handshake_completed(&mut self, transport: &TransportRef) -> ProtocolResult {
        self.inner.handshake_completed(transport)
    }

    fn connection_lost(&mut self, reason: &CloseReason) {
        // The protocol hears first: a check may give its verdict as its own orderly
        // close completes (so that what it wrote last is sent before the caller acts
        // on the verdict).
        self.inner.connection_lost(reason);
        if let Some(watch) = self.watch.take() {
            watch.lost(reason);
        }
    }

    fn wants_half_close(&self) -> bool {
        self.inner.wants_half_close()
    }

    fn read_connection_lost(&mut self, transport: &TransportRef) -> ProtocolResult {
        self.inner.read_connection_lost(transport)
    }

    fn write_connection_lost(&mut self, transport: &TransportRef) -> ProtocolResult {
        self.inner.write_connection_lost(transport)
    }
}
