//! Line framing: [`LineReceiver`] splits a byte stream into lines and hands each one to a
//! [`LineHandler`] (Twisted's `LineReceiver`, spec L-01..L-15).
//!
//! The user writes a [`LineHandler`]; [`LineReceiver::new`] wraps it into a
//! [`Protocol`] that a factory returns. Inside every callback a [`LineControl`] sends
//! lines, switches between line and raw mode, clears the buffer and pauses delivery. A
//! [`LineHandle`] does the same from outside a callback (a timer, the console thread's
//! `call_from_thread`), e.g. to resume a paused receiver or broadcast a line.
//!
//! # Framing rules
//!
//! - Defaults: delimiter `\r\n`, `max_length` 16384 (L-01). [`Delimiter::newline`] accepts
//!   `\n` or `\r\n` (one `\r` before the `\n` is stripped) and sends `\r\n`.
//! - Any chunking of the same stream gives the same calls with the same bytes, including
//!   for over-long lines (L-02). The delimiter is searched for only in bytes not yet
//!   searched, and the buffer is compacted lazily, so a stream costs O(its length) however
//!   it is chunked and however long its lines are.
//! - **\[ours\]** Over-long lines. A line is too long when its delimiter has not arrived
//!   within `max_length + allowance` bytes, where the allowance is the delimiter's length
//!   (plus one in newline mode, for the optional `\r`): exactly `max_length` is fine,
//!   longer is rejected (L-07), and a maximum-length line whose delimiter is still
//!   arriving is not (L-08). The rejected data given to
//!   [`LineHandler::line_length_exceeded`] is always the first `max_length + allowance`
//!   bytes of the line, and the rest of that line, through its delimiter, is skipped.
//!   Twisted instead passes "the line, its delimiter and everything buffered after it",
//!   or "the whole buffered tail", which depends on how the bytes were chunked; what we
//!   pass is exactly what Twisted passes when bytes arrive one at a time. The default
//!   handler loses the connection, so the difference shows only in handlers that keep
//!   the connection open: they see the next line intact instead of the middle of the
//!   rejected one. Calling [`LineControl::clear_line_buffer`] from
//!   `line_length_exceeded` stops the skipping and returns everything after the
//!   rejected part (the rest of the over-long line included), so the two together are
//!   Twisted's whole-buffer argument and the buffer is then empty.
//! - Nothing is delivered once the transport is disconnecting (L-06, X-16), while paused
//!   (L-13), or after `connection_lost`.
//!
//! # Re-entrancy (L-12) and mode switches (L-10)
//!
//! Twisted lets `lineReceived` call `dataReceived` again; the new bytes are appended and
//! handled by the outer loop. In Rust the reactor owns the protocol and calls
//! `data_received(&mut self, ..)`, so a handler cannot re-enter it. The remaining ways in
//! — [`LineControl::set_line_mode`] with extra bytes, and a [`LineHandle`] resuming or
//! pausing from inside a callback — only queue bytes or flip flags, which the one running
//! loop picks up after the current callback, in order. Mode switches are likewise
//! recorded and applied by that loop, so no number of switches in one chunk grows the
//! stack.
//!
//! # LineOnlyReceiver (L-14)
//!
//! Not provided as a separate type: a handler that never calls
//! [`LineControl::set_raw_mode`] is a line-only receiver, and it is already linear, which
//! was the point of Twisted's faster variant. Twisted's LineOnlyReceiver also rejects
//! over-long lines by a different, chunking-dependent rule (tail over `max_length`, and
//! the rest of the chunk abandoned); a second rule would break the chunking guarantee
//! above for no user-visible gain.

use std::cell::{Cell, Ref, RefCell, RefMut};
use std::fmt;
use std::ops::Range;
use std::rc::{Rc, Weak};

use super::byte_scan::ByteScan;
use crate::reactor::{CloseReason, Failure, Producer, Protocol, ProtocolResult, TransportRef};

/// Twisted's `MAX_LENGTH`: the longest line accepted by default, in bytes (L-01).
pub const DEFAULT_MAX_LENGTH: usize = 16384;

/// Above this capacity an emptied buffer gives its memory back, so one burst of long
/// lines does not pin megabytes for the rest of a connection.
const RETAINED_CAPACITY: usize = 64 * 1024;

/// Errors of the line protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// A delimiter must have at least one byte, or no line would ever end.
    #[error("a line delimiter cannot be empty")]
    EmptyDelimiter,
    /// Raw mode was entered but the handler kept the default `raw_data_received`
    /// (Twisted raises NotImplementedError, L-15); the connection is closed with this.
    #[error("raw data received, but the line handler does not implement raw_data_received")]
    RawDataNotHandled,
}

/// How lines end: the bytes searched for when receiving, and those appended by
/// `send_line`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delimiter {
    receive: Rc<[u8]>,
    send: Rc<[u8]>,
    strip_cr: bool,
}

impl Delimiter {
    /// `\r\n` both ways: Twisted's default (L-01).
    pub fn crlf() -> Delimiter {
        Delimiter::same(b"\r\n")
    }

    /// `\n` both ways; a `\r` before it stays part of the line (L-03).
    pub fn lf() -> Delimiter {
        Delimiter::same(b"\n")
    }

    /// Lines end at `\n`, and one `\r` right before it is stripped, so both `nc` (`\n`)
    /// and telnet (`\r\n`) peers work; lines are sent with `\r\n`, which both accept.
    /// `max_length` counts the line without the stripped `\r`.
    pub fn newline() -> Delimiter {
        Delimiter {
            receive: Rc::from(&b"\n"[..]),
            send: Rc::from(&b"\r\n"[..]),
            strip_cr: true,
        }
    }

    /// Any non-empty byte string, used both ways.
    pub fn new(bytes: &[u8]) -> Result<Delimiter, LineError> {
        if bytes.is_empty() {
            return Err(LineError::EmptyDelimiter);
        }
        Ok(Delimiter::same(bytes))
    }

    /// The same delimiter, but sending `send` after each line instead.
    pub fn sending(mut self, send: &[u8]) -> Delimiter {
        self.send = Rc::from(send);
        self
    }

    /// The bytes that end a received line.
    pub fn receive_bytes(&self) -> &[u8] {
        &self.receive
    }

    /// The bytes `send_line` appends.
    pub fn send_bytes(&self) -> &[u8] {
        &self.send
    }

    /// True in [`Delimiter::newline`] mode.
    pub fn strips_cr(&self) -> bool {
        self.strip_cr
    }

    fn same(bytes: &[u8]) -> Delimiter {
        Delimiter {
            receive: Rc::from(bytes),
            send: Rc::from(bytes),
            strip_cr: false,
        }
    }

    /// Bytes beyond `max_length` an unterminated line may hold before it is certainly
    /// too long: room for the delimiter, and for the `\r` in newline mode (L-08).
    fn allowance(&self) -> usize {
        self.receive.len() + usize::from(self.strip_cr)
    }
}

impl Default for Delimiter {
    fn default() -> Delimiter {
        Delimiter::crlf()
    }
}

/// What a line protocol implements. Every callback gets a [`LineControl`] to act on the
/// connection; an `Err` closes the connection and becomes `connection_lost`'s reason
/// (P-22).
pub trait LineHandler: 'static {
    /// The connection is up (P-03).
    fn connection_made(&mut self, lines: &mut LineControl<'_>) -> ProtocolResult {
        let _ = lines;
        Ok(())
    }

    /// One complete line, delimiter removed (L-02, L-03). Required: a line protocol that
    /// ignores lines has no use (L-15).
    fn line_received(&mut self, line: &[u8], lines: &mut LineControl<'_>) -> ProtocolResult;

    /// Bytes received in raw mode (L-09). The default fails with
    /// [`LineError::RawDataNotHandled`], as there is no sensible thing to do (L-15).
    fn raw_data_received(&mut self, data: &[u8], lines: &mut LineControl<'_>) -> ProtocolResult {
        let _ = (data, lines);
        Err(Failure::new(LineError::RawDataNotHandled))
    }

    /// A line is longer than `max_length`; `data` is its first `max_length + allowance`
    /// bytes (see the module notes). The default loses the connection (L-07).
    fn line_length_exceeded(&mut self, data: &[u8], lines: &mut LineControl<'_>) -> ProtocolResult {
        let _ = data;
        lines.transport().lose_connection();
        Ok(())
    }

    /// The connection ended; called once, last (P-04).
    fn connection_lost(&mut self, reason: &CloseReason) {
        let _ = reason;
    }

    /// Whether the handler wants half-close events (X-12). Read once, when the
    /// [`LineReceiver`] is made.
    fn wants_half_close(&self) -> bool {
        false
    }

    /// The peer shut down its write side (X-12); a trailing unterminated line is not
    /// delivered.
    fn read_connection_lost(&mut self, lines: &mut LineControl<'_>) -> ProtocolResult {
        let _ = lines;
        Ok(())
    }

    /// Our write side has been shut down (X-11).
    fn write_connection_lost(&mut self, lines: &mut LineControl<'_>) -> ProtocolResult {
        let _ = lines;
        Ok(())
    }
}

/// The receiver as seen from inside a [`LineHandler`] callback.
///
/// Requests made here (mode switches, extra bytes, clearing) take effect when the
/// callback returns, before anything else is delivered.
pub struct LineControl<'a> {
    core: &'a Core,
    transport: &'a TransportRef,
    /// Unprocessed bytes after the item being delivered.
    rest: &'a [u8],
    /// The data handed to `raw_data_received`, so that giving a tail of it back through
    /// `set_line_mode` can be recorded as an offset instead of copied.
    raw_data: &'a [u8],
    raw: bool,
    mode_set: bool,
    cleared: bool,
    rewind: Option<usize>,
    extra: Vec<u8>,
}

/// What a callback asked for, applied by the delivery loop after it returns.
struct Outcome {
    raw: bool,
    mode_set: bool,
    cleared: bool,
    rewind: Option<usize>,
    extra: Vec<u8>,
}

impl Outcome {
    /// True when the callback asked for nothing that changes the framing: the next line
    /// comes from the same bytes, in the same mode. (A rewind or extra bytes come only
    /// with a mode switch.)
    fn is_plain(&self) -> bool {
        !self.mode_set && !self.cleared
    }
}

impl<'a> LineControl<'a> {
    fn new(
        core: &'a Core,
        transport: &'a TransportRef,
        rest: &'a [u8],
        raw_data: &'a [u8],
        raw: bool,
    ) -> LineControl<'a> {
        LineControl {
            core,
            transport,
            rest,
            raw_data,
            raw,
            mode_set: false,
            cleared: false,
            rewind: None,
            extra: Vec::new(),
        }
    }

    fn finish(self) -> Outcome {
        Outcome {
            raw: self.raw,
            mode_set: self.mode_set,
            cleared: self.cleared,
            rewind: self.rewind,
            extra: self.extra,
        }
    }

    /// The connection's transport.
    pub fn transport(&self) -> &TransportRef {
        self.transport
    }

    /// Writes `line` followed by the delimiter, as one write (L-04).
    pub fn send_line(&self, line: &[u8]) {
        self.core.send_line(self.transport, line);
    }

    /// Sends the rest of the buffer and all later data to `raw_data_received`, undelimited
    /// (L-09).
    pub fn set_raw_mode(&mut self) {
        self.raw = true;
        self.mode_set = true;
    }

    /// Back to line mode; `extra` is parsed as line data after what is already buffered
    /// and before anything received later (L-09). Giving back a tail of the data passed
    /// to `raw_data_received` costs nothing: it is not copied.
    pub fn set_line_mode(&mut self, extra: &[u8]) {
        self.raw = false;
        self.mode_set = true;
        if extra.is_empty() {
            return;
        }
        if self.rewind.is_none() && self.extra.is_empty() && is_tail_of(extra, self.raw_data) {
            self.rewind = Some(self.raw_data.len() - extra.len());
        } else {
            self.extra.extend_from_slice(extra);
        }
    }

    /// True in raw mode (as last requested in this callback).
    pub fn is_raw_mode(&self) -> bool {
        self.raw
    }

    /// Returns the unprocessed buffered bytes and discards them: nothing more of what was
    /// received so far is delivered (L-11). Also ends the skipping of an over-long line.
    pub fn clear_line_buffer(&mut self) -> Vec<u8> {
        let mut out = self.rest.to_vec();
        if let Some(offset) = self.rewind.take() {
            out.extend_from_slice(&self.raw_data[offset..]);
        }
        out.append(&mut self.extra);
        self.rest = &[];
        self.cleared = true;
        out
    }

    /// Stops delivery (bytes stay buffered) and reading, until a resume (L-13).
    pub fn pause_producing(&self) {
        self.core.pause(self.transport);
    }

    /// Undoes `pause_producing`: delivery goes on once this callback returns (L-13).
    pub fn resume_producing(&self) {
        if self.core.stopped.get() || self.core.closed.get() {
            return;
        }
        self.core.paused.set(false);
        self.transport.resume_producing();
    }

    /// Stops delivery for good and loses the connection (L-13).
    pub fn stop_producing(&self) {
        self.core.stop(self.transport);
    }

    /// True while delivery is paused.
    pub fn is_paused(&self) -> bool {
        self.core.paused.get()
    }

    /// The longest line accepted.
    pub fn max_length(&self) -> usize {
        self.core.max_length.get()
    }

    /// Changes the longest line accepted, from the next line on.
    pub fn set_max_length(&self, max_length: usize) {
        self.core.max_length.set(max_length);
    }

    /// A handle on this receiver for use outside callbacks.
    pub fn handle(&self) -> LineHandle {
        LineHandle {
            target: self.core.me.clone(),
        }
    }
}

/// True when `part` is a non-empty tail of `whole`, by address: only then can it be
/// given back as an offset into the buffer instead of a copy.
fn is_tail_of(part: &[u8], whole: &[u8]) -> bool {
    let whole_start = whole.as_ptr() as usize;
    let part_start = part.as_ptr() as usize;
    !part.is_empty()
        && part.len() <= whole.len()
        && part_start >= whole_start
        && part_start + part.len() == whole_start + whole.len()
}

/// The first occurrence of `delimiter` in `haystack`. Found by its last byte with
/// `memchr`, the bytes before it compared in place: for the one- and two-byte delimiters
/// of line protocols that costs a fraction of a substring search's set-up per line.
fn find_delimiter(haystack: &[u8], delimiter: &[u8]) -> Option<usize> {
    let (&last, head) = delimiter.split_last()?;
    let mut from = head.len();
    while from < haystack.len() {
        let end = from + memchr::memchr(last, &haystack[from..])?;
        let start = end - head.len();
        // Byte by byte: a slice comparison would call `memcmp` for one or two bytes.
        if haystack[start..end].iter().zip(head).all(|(a, b)| a == b) {
            return Some(start);
        }
        from = end + 1;
    }
    None
}

/// Successive searches for a delimiter in one slice, each starting after the last line.
/// Finds what [`find_delimiter`] finds, but scans each byte once for all the lines of a
/// read instead of setting up a search per line.
struct DelimiterScan<'a> {
    haystack: &'a [u8],
    head: &'a [u8],
    last: ByteScan<'a>,
}

impl<'a> DelimiterScan<'a> {
    fn new(haystack: &'a [u8], delimiter: &'a [u8]) -> DelimiterScan<'a> {
        let (&last, head) = delimiter.split_last().unwrap_or((&0, &[])); // unreachable: a delimiter is never empty
        DelimiterScan {
            haystack,
            head,
            last: ByteScan::new(haystack, last),
        }
    }

    /// Where the first delimiter that starts at or after `from` starts.
    fn find_from(&mut self, from: usize) -> Option<usize> {
        let mut end_from = from + self.head.len();
        loop {
            let end = self.last.find_from(end_from)?;
            let start = end - self.head.len();
            // Byte by byte: a slice comparison would call `memcmp` for one or two bytes.
            if self.haystack[start..end]
                .iter()
                .zip(self.head)
                .all(|(a, b)| a == b)
            {
                return Some(start);
            }
            end_from = end + 1;
        }
    }
}

/// A cheap, clonable handle on a [`LineReceiver`] for code outside its callbacks. It does
/// not keep the receiver alive: once the reactor drops the protocol every method does
/// nothing. It is also a [`Producer`], like Twisted's LineReceiver, so it can be
/// registered with another transport for flow control.
#[derive(Clone)]
pub struct LineHandle {
    target: Weak<dyn Target>,
}

impl LineHandle {
    /// Stops delivery and reading until `resume_producing` (L-13).
    pub fn pause_producing(&self) {
        if let Some(target) = self.target.upgrade() {
            let core = target.core();
            if let Some(transport) = core.current_transport() {
                core.pause(&transport);
            } else {
                core.paused.set(true);
            }
        }
    }

    /// Delivers the buffered lines now, then resumes reading unless a callback paused
    /// again (L-13). Inside a callback of the same receiver it only lifts the pause; the
    /// running delivery goes on after that callback (L-12). An error from a callback
    /// closes the connection and becomes `connection_lost`'s reason, as in the reactor.
    pub fn resume_producing(&self) {
        let Some(target) = self.target.upgrade() else {
            return;
        };
        let core = target.core();
        if core.stopped.get() || core.closed.get() {
            return;
        }
        core.paused.set(false);
        let Some(transport) = core.current_transport() else {
            return;
        };
        if let Err(failure) = target.deliver(&transport) {
            log::warn!("line protocol failed while resuming: {failure}");
            core.failure.borrow_mut().get_or_insert(failure);
            transport.lose_connection();
            return;
        }
        if !core.paused.get() {
            transport.resume_producing();
        }
    }

    /// Stops delivery for good and loses the connection (L-13).
    pub fn stop_producing(&self) {
        if let Some(target) = self.target.upgrade() {
            let core = target.core();
            match core.current_transport() {
                Some(transport) => core.stop(&transport),
                None => {
                    core.paused.set(true);
                    core.stopped.set(true);
                }
            }
        }
    }

    /// Writes `line` and the delimiter (L-04). Returns false, writing nothing, when the
    /// connection is not (or no longer) up.
    pub fn send_line(&self, line: &[u8]) -> bool {
        let Some(target) = self.target.upgrade() else {
            return false;
        };
        let core = target.core();
        match core.current_transport() {
            Some(transport) => {
                core.send_line(&transport, line);
                true
            }
            None => false,
        }
    }

    /// The transport, from `connection_made` until `connection_lost`.
    pub fn transport(&self) -> Option<TransportRef> {
        self.target.upgrade()?.core().current_transport()
    }

    /// True between `connection_made` and `connection_lost`.
    pub fn is_connected(&self) -> bool {
        self.transport().is_some()
    }

    /// True while delivery is paused.
    pub fn is_paused(&self) -> bool {
        self.target
            .upgrade()
            .is_some_and(|target| target.core().paused.get())
    }
}

impl Producer for LineHandle {
    fn pause_producing(&self) {
        LineHandle::pause_producing(self);
    }

    fn resume_producing(&self) {
        LineHandle::resume_producing(self);
    }

    fn stop_producing(&self) {
        LineHandle::stop_producing(self);
    }
}

impl fmt::Debug for LineHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LineHandle")
            .field("connected", &self.is_connected())
            .field("paused", &self.is_paused())
            .finish()
    }
}

/// The type-erased side of a receiver that a [`LineHandle`] reaches.
trait Target {
    fn core(&self) -> &Core;
    /// Runs the delivery loop unless it is already running.
    fn deliver(&self, transport: &TransportRef) -> ProtocolResult;
}

/// State shared by the receiver, its callbacks' controls and its handles. Flags are
/// `Cell`s so that no borrow is ever held while handler code runs.
struct Core {
    me: Weak<dyn Target>,
    transport: RefCell<Option<TransportRef>>,
    send_delimiter: RefCell<Rc<[u8]>>,
    max_length: Cell<usize>,
    paused: Cell<bool>,
    stopped: Cell<bool>,
    closed: Cell<bool>,
    /// An error raised during a handle-driven delivery, reported by `connection_lost`.
    failure: RefCell<Option<Failure>>,
    /// Bytes that arrived while the framing state was out for delivery; the loop takes
    /// them before its next step.
    incoming: RefCell<Vec<u8>>,
}

impl Core {
    fn current_transport(&self) -> Option<TransportRef> {
        if self.closed.get() {
            return None;
        }
        self.transport.borrow().clone()
    }

    fn send_line(&self, transport: &TransportRef, line: &[u8]) {
        let delimiter = self.send_delimiter.borrow().clone();
        transport.write_sequence(&[line, &delimiter]);
    }

    fn pause(&self, transport: &TransportRef) {
        if self.closed.get() {
            return;
        }
        self.paused.set(true);
        transport.pause_producing();
    }

    fn stop(&self, transport: &TransportRef) {
        if self.closed.get() {
            return;
        }
        self.paused.set(true);
        self.stopped.set(true);
        transport.lose_connection();
    }

    /// False once delivery must stop: paused, closed, or the transport is closing (L-06,
    /// L-13). Asked before every item.
    fn may_deliver(&self, transport: &TransportRef) -> bool {
        !self.paused.get() && !self.closed.get() && !transport.is_disconnecting()
    }

    fn take_incoming(&self, buf: &mut Vec<u8>) {
        let mut incoming = self.incoming.borrow_mut();
        if !incoming.is_empty() {
            buf.extend_from_slice(&incoming);
            incoming.clear();
        }
    }
}

/// The next thing the framing has to deliver; ranges index the buffer.
enum Event {
    Idle,
    Line(Range<usize>),
    Exceeded(Range<usize>),
    Raw(Range<usize>),
}

/// The framing buffer and scan state.
///
/// `buf[pos..]` is unprocessed. In line mode no delimiter starts in `buf[pos..scan]`, so
/// a search resumes at `scan`: each byte is searched about once. While `skipping`, the
/// bytes from `pos` on belong to an over-long line; at most `delimiter - 1` of them are
/// kept, in case they begin its delimiter.
struct Framing {
    buf: Vec<u8>,
    pos: usize,
    scan: usize,
    skipping: bool,
    raw: bool,
    /// Shared with the delimiter it came from, and with a scan under way (which the
    /// framing state is changed beside).
    delimiter: Rc<[u8]>,
    strip_cr: bool,
    allowance: usize,
    #[cfg(test)]
    searched: usize,
}

impl Framing {
    fn new(delimiter: &Delimiter) -> Framing {
        Framing {
            buf: Vec::new(),
            pos: 0,
            scan: 0,
            skipping: false,
            raw: false,
            delimiter: delimiter.receive.clone(),
            strip_cr: delimiter.strip_cr,
            allowance: delimiter.allowance(),
            #[cfg(test)]
            searched: 0,
        }
    }

    /// The first delimiter starting at or after `from`, as an index into `buf`.
    fn find(&mut self, from: usize) -> Option<usize> {
        let found = find_delimiter(&self.buf[from..], &self.delimiter);
        self.count_searched(self.buf.len() - from, found);
        found.map(|at| from + at)
    }

    /// Test bookkeeping: how much of a `haystack_len` haystack a search examined.
    #[cfg_attr(not(test), allow(unused_variables))]
    fn count_searched(&mut self, haystack_len: usize, found: Option<usize>) {
        #[cfg(test)]
        {
            self.searched += match found {
                Some(at) => (at + self.delimiter.len()).min(haystack_len),
                None => haystack_len,
            };
        }
    }

    /// Where the line that starts at `start` and whose delimiter starts at `at` ends: at
    /// the delimiter, or before one `\r` in newline mode.
    fn line_end(&self, bytes: &[u8], start: usize, at: usize) -> usize {
        if self.strip_cr && at > start && bytes[at - 1] == b'\r' {
            at - 1
        } else {
            at
        }
    }

    /// Buffers `data`, searched without finding a delimiter, after the unterminated line
    /// held so far. True when that line has grown long enough to be rejected (L-08),
    /// which [`Body::run`] then does.
    fn hold(&mut self, data: &[u8], max_length: usize) -> bool {
        self.buf.extend_from_slice(data);
        let len = self.buf.len();
        self.scan = self.pos.max(len.saturating_sub(self.delimiter.len() - 1));
        len - self.pos >= max_length.saturating_add(self.allowance)
    }

    /// True when every delimiter the buffer could still hold would end in bytes not yet
    /// received: all but its last `delimiter - 1` bytes have been searched.
    fn searched_to_end(&self) -> bool {
        self.buf.len() - self.scan < self.delimiter.len()
    }

    /// Where the first delimiter in `data` ends (an index into `data`), counting one that
    /// starts in the bytes buffered before it. Only when [`Framing::searched_to_end`].
    fn tail_end(&mut self, data: &[u8]) -> Option<usize> {
        let dlen = self.delimiter.len();
        let len = self.buf.len();
        // No delimiter starts before `scan`; one starting in the last bytes of the buffer
        // ends in `data`.
        for start in self.scan..len {
            let held = len - start;
            let (head, tail) = self.delimiter.split_at(held);
            if self.buf[start..] == *head && data.starts_with(tail) {
                return Some(tail.len());
            }
        }
        let found = find_delimiter(data, &self.delimiter);
        self.count_searched(data.len(), found);
        found.map(|at| at + dlen)
    }

    /// Advances past the next deliverable item. Consumption is committed before the
    /// callback runs, so that the callback sees only what follows the item.
    fn next_event(&mut self, max_length: usize) -> Event {
        let len = self.buf.len();
        if self.raw {
            if self.pos >= len {
                return Event::Idle;
            }
            let range = self.pos..len;
            self.pos = len;
            self.scan = len;
            return Event::Raw(range);
        }
        let dlen = self.delimiter.len();
        loop {
            if self.pos >= len {
                return Event::Idle;
            }
            if self.skipping {
                match self.find(self.scan) {
                    Some(at) => {
                        self.pos = at + dlen;
                        self.scan = self.pos;
                        self.skipping = false;
                        continue;
                    }
                    None => {
                        self.pos = len - (dlen - 1).min(len - self.pos);
                        self.scan = self.pos;
                        return Event::Idle;
                    }
                }
            }
            let start = self.pos;
            let limit = max_length.saturating_add(self.allowance);
            return match self.find(self.scan) {
                Some(at) => {
                    let end = self.line_end(&self.buf, start, at);
                    self.pos = at + dlen;
                    self.scan = self.pos;
                    if end - start <= max_length {
                        Event::Line(start..end)
                    } else {
                        // A line over max_length has no delimiter within `limit` bytes,
                        // so `start + limit <= at + dlen`: the cut is inside the buffer.
                        Event::Exceeded(start..start + limit)
                    }
                }
                None if len - start >= limit => {
                    self.pos = len - (dlen - 1).min(len - start);
                    self.scan = self.pos;
                    self.skipping = true;
                    Event::Exceeded(start..start + limit)
                }
                None => {
                    self.scan = self.pos.max(len.saturating_sub(dlen - 1));
                    Event::Idle
                }
            };
        }
    }

    /// The unprocessed bytes a callback may clear (none of a line being skipped).
    fn rest_start(&self) -> usize {
        if self.skipping {
            self.buf.len()
        } else {
            self.pos
        }
    }

    fn apply(&mut self, outcome: Outcome, raw_start: usize) {
        let len = self.buf.len();
        if outcome.cleared {
            self.pos = len;
            self.scan = len;
            self.skipping = false;
        }
        if outcome.mode_set {
            if self.skipping {
                self.pos = len;
                self.skipping = false;
            }
            if self.raw && !outcome.raw {
                self.scan = self.pos;
            }
            self.raw = outcome.raw;
        }
        if let Some(offset) = outcome.rewind {
            self.pos = raw_start + offset;
            self.scan = self.pos;
        }
        if !outcome.extra.is_empty() {
            self.buf.extend_from_slice(&outcome.extra);
        }
        // Dropping kept bytes of a skipped line can move `pos` past `scan`.
        self.scan = self.scan.max(self.pos);
    }

    /// Drops consumed bytes, moving the remainder only when it is at most as long as
    /// what was consumed, so every byte is moved a bounded number of times.
    fn compact(&mut self) {
        let len = self.buf.len();
        if self.pos >= len {
            self.buf.clear();
            if self.buf.capacity() > RETAINED_CAPACITY {
                self.buf.shrink_to(RETAINED_CAPACITY);
            }
            self.pos = 0;
            self.scan = 0;
        } else if self.pos > 0 && self.pos >= len / 2 {
            self.buf.drain(..self.pos);
            self.scan -= self.pos;
            self.pos = 0;
        }
    }
}

/// The part taken out of the receiver while handler code runs.
struct Body<H> {
    framing: Framing,
    handler: H,
}

impl<H: LineHandler> Body<H> {
    /// The delivery loop: one item per turn until nothing is deliverable, delivery is
    /// paused or the connection is closing (L-06, L-13), or a callback fails.
    fn run(&mut self, core: &Core, transport: &TransportRef) -> ProtocolResult {
        let Body { framing, handler } = self;
        loop {
            core.take_incoming(&mut framing.buf);
            if !core.may_deliver(transport) {
                return Ok(());
            }
            let event = framing.next_event(core.max_length.get());
            let rest = &framing.buf[framing.rest_start()..];
            let (result, outcome, raw_start) = match event {
                Event::Idle => return Ok(()),
                Event::Line(range) => {
                    let mut ctl = LineControl::new(core, transport, rest, &[], false);
                    let result = handler.line_received(&framing.buf[range], &mut ctl);
                    (result, ctl.finish(), 0)
                }
                Event::Exceeded(range) => {
                    // What a clear may take starts right after the rejected part: the
                    // rest of the over-long line too, so that clearing here gets
                    // Twisted's whole buffer (L-07, L-08) instead of skipping it.
                    let rest = &framing.buf[range.end..];
                    let mut ctl = LineControl::new(core, transport, rest, &[], false);
                    let result = handler.line_length_exceeded(&framing.buf[range], &mut ctl);
                    (result, ctl.finish(), 0)
                }
                Event::Raw(range) => {
                    let start = range.start;
                    let data = &framing.buf[range];
                    let mut ctl = LineControl::new(core, transport, rest, data, true);
                    let result = handler.raw_data_received(data, &mut ctl);
                    (result, ctl.finish(), start)
                }
            };
            framing.apply(outcome, raw_start);
            result?;
        }
    }

    /// Frames newly received `data` straight from the caller's buffer: each complete line
    /// is handed to the handler as a slice of `data` (a line begun in an earlier read as
    /// a slice of the framing buffer, where its start waited), and only what is left when
    /// this stops is copied into the framing buffer: an unterminated tail, or everything
    /// after a callback that asked for more than the next line (a mode switch, a clear, a
    /// pause, a close, an error). The framing buffer then holds what it would hold had all
    /// of `data` been appended first, and [`Body::run`] carries on from there: it alone
    /// handles raw mode, over-long lines and the rest, so both paths deliver the same.
    fn receive(&mut self, core: &Core, transport: &TransportRef, data: &[u8]) -> ProtocolResult {
        let Body { framing, handler } = self;
        let direct = !framing.raw
            && !framing.skipping
            && framing.searched_to_end()
            && core.incoming.borrow().is_empty()
            && core.may_deliver(transport);
        if !direct {
            framing.buf.extend_from_slice(data);
            return self.run(core, transport);
        }
        let dlen = framing.delimiter.len();
        let mut data = data;
        if framing.pos < framing.buf.len() {
            // The rest of a line begun in an earlier read.
            let Some(end) = framing.tail_end(data) else {
                return match framing.hold(data, core.max_length.get()) {
                    true => self.run(core, transport),
                    false => Ok(()),
                };
            };
            framing.buf.extend_from_slice(&data[..end]);
            data = &data[end..];
            let start = framing.pos;
            let at = framing.buf.len() - dlen;
            let line_end = framing.line_end(&framing.buf, start, at);
            if line_end - start > core.max_length.get() {
                framing.scan = at;
                framing.buf.extend_from_slice(data);
                return self.run(core, transport);
            }
            let mut ctl = LineControl::new(core, transport, data, &[], false);
            let result = handler.line_received(&framing.buf[start..line_end], &mut ctl);
            let outcome = ctl.finish();
            framing.buf.clear();
            framing.pos = 0;
            framing.scan = 0;
            if result.is_err() || !outcome.is_plain() || !core.may_deliver(transport) {
                framing.buf.extend_from_slice(data);
                framing.apply(outcome, 0);
                result?;
                return self.run(core, transport);
            }
        }
        // Nothing is buffered: lines come straight from `data`, their ends found by one
        // scan that moves forward through it.
        let mut pos = 0;
        let delimiter = framing.delimiter.clone();
        let mut scan = DelimiterScan::new(data, &delimiter);
        while let Some(at) = scan.find_from(pos) {
            framing.count_searched(data.len() - pos, Some(at - pos));
            let line_end = framing.line_end(data, pos, at);
            if line_end - pos > core.max_length.get() {
                framing.buf.extend_from_slice(&data[pos..]);
                framing.scan = at - pos;
                return self.run(core, transport);
            }
            let next = at + dlen;
            let mut ctl = LineControl::new(core, transport, &data[next..], &[], false);
            let result = handler.line_received(&data[pos..line_end], &mut ctl);
            let outcome = ctl.finish();
            pos = next;
            if result.is_err() || !outcome.is_plain() || !core.may_deliver(transport) {
                framing.buf.extend_from_slice(&data[pos..]);
                framing.apply(outcome, 0);
                result?;
                return self.run(core, transport);
            }
        }
        framing.count_searched(data.len() - pos, None);
        match framing.hold(&data[pos..], core.max_length.get()) {
            true => self.run(core, transport),
            false => Ok(()),
        }
    }

    /// Runs a callback that is not a delivery (connection made, half-close).
    fn call(
        &mut self,
        core: &Core,
        transport: &TransportRef,
        f: impl FnOnce(&mut H, &mut LineControl<'_>) -> ProtocolResult,
    ) -> ProtocolResult {
        let Body { framing, handler } = self;
        core.take_incoming(&mut framing.buf);
        let rest = &framing.buf[framing.rest_start()..];
        let mut ctl = LineControl::new(core, transport, rest, &[], framing.raw);
        let result = f(handler, &mut ctl);
        framing.apply(ctl.finish(), 0);
        result
    }
}

struct Inner<H> {
    core: Core,
    /// `None` while handler code runs: that is how re-entry is detected.
    body: RefCell<Option<Body<H>>>,
}

impl<H: LineHandler> Inner<H> {
    fn take_body(&self) -> Option<Body<H>> {
        self.body.try_borrow_mut().ok()?.take()
    }

    fn put_body(&self, body: Body<H>) {
        match self.body.try_borrow_mut() {
            Ok(mut slot) => *slot = Some(body),
            // Unreachable: only this type borrows the slot, and never across a call.
            Err(_) => crate::reactor::swallowed_call(format_args!(
                "line receiver state busy; handler dropped"
            )),
        }
    }

    fn with_body(
        &self,
        transport: &TransportRef,
        f: impl FnOnce(&mut Body<H>, &Core, &TransportRef) -> ProtocolResult,
    ) -> ProtocolResult {
        let Some(mut body) = self.take_body() else {
            return Ok(());
        };
        let result = f(&mut body, &self.core, transport);
        body.framing.compact();
        self.put_body(body);
        result
    }

    /// Runs a non-delivery callback, then delivers whatever it made deliverable (extra
    /// bytes from `set_line_mode`, a switch to raw mode).
    fn callback(
        &self,
        transport: &TransportRef,
        f: impl FnOnce(&mut H, &mut LineControl<'_>) -> ProtocolResult,
    ) -> ProtocolResult {
        self.with_body(transport, |body, core, transport| {
            body.call(core, transport, f)
        })?;
        Target::deliver(self, transport)
    }
}

impl<H: LineHandler> Target for Inner<H> {
    fn core(&self) -> &Core {
        &self.core
    }

    fn deliver(&self, transport: &TransportRef) -> ProtocolResult {
        self.with_body(transport, |body, core, transport| body.run(core, transport))
    }
}

/// Line framing around a [`LineHandler`]: a [`Protocol`] to return from a factory.
///
/// ```
/// use twistctl::protocols::line::{LineControl, LineHandler, LineReceiver};
/// use twistctl::reactor::ProtocolResult;
///
/// struct Echo;
/// impl LineHandler for Echo {
///     fn line_received(&mut self, line: &[u8], lines: &mut LineControl<'_>) -> ProtocolResult {
///         lines.send_line(line);
///         Ok(())
///     }
/// }
/// let protocol = LineReceiver::new(Echo).with_max_length(1024);
/// # let _ = protocol;
/// ```
pub struct LineReceiver<H: LineHandler> {
    inner: Rc<Inner<H>>,
    half_close: bool,
}

impl<H: LineHandler> LineReceiver<H> {
    /// Wraps `handler` with the defaults: delimiter `\r\n`, `max_length` 16384 (L-01).
    pub fn new(handler: H) -> LineReceiver<H> {
        let delimiter = Delimiter::default();
        let half_close = handler.wants_half_close();
        let inner = Rc::new_cyclic(|me: &Weak<Inner<H>>| {
            let me: Weak<dyn Target> = me.clone();
            Inner {
                core: Core {
                    me,
                    transport: RefCell::new(None),
                    send_delimiter: RefCell::new(delimiter.send.clone()),
                    max_length: Cell::new(DEFAULT_MAX_LENGTH),
                    paused: Cell::new(false),
                    stopped: Cell::new(false),
                    closed: Cell::new(false),
                    failure: RefCell::new(None),
                    incoming: RefCell::new(Vec::new()),
                },
                body: RefCell::new(Some(Body {
                    framing: Framing::new(&delimiter),
                    handler,
                })),
            }
        });
        LineReceiver { inner, half_close }
    }

    /// Uses `delimiter` instead of `\r\n`. Meant for setting up, before any data
    /// arrives: bytes already buffered are not searched again for the new delimiter.
    pub fn with_delimiter(self, delimiter: Delimiter) -> LineReceiver<H> {
        *self.inner.core.send_delimiter.borrow_mut() = delimiter.send.clone();
        if let Ok(mut slot) = self.inner.body.try_borrow_mut()
            && let Some(body) = slot.as_mut()
        {
            let mut buffered = std::mem::take(&mut body.framing.buf);
            buffered.drain(..body.framing.pos);
            body.framing = Framing::new(&delimiter);
            body.framing.buf = buffered;
        }
        self
    }

    /// Accepts lines of up to `max_length` bytes instead of 16384 (L-01).
    pub fn with_max_length(self, max_length: usize) -> LineReceiver<H> {
        self.inner.core.max_length.set(max_length);
        self
    }

    /// The longest line accepted now.
    pub fn max_length(&self) -> usize {
        self.inner.core.max_length.get()
    }

    /// A handle for use outside callbacks (resume, send a line).
    pub fn handle(&self) -> LineHandle {
        LineHandle {
            target: self.inner.core.me.clone(),
        }
    }

    /// The handler, for inspection; `None` while one of its callbacks runs.
    pub fn handler(&self) -> Option<Ref<'_, H>> {
        let body = self.inner.body.try_borrow().ok()?;
        Ref::filter_map(body, |body| body.as_ref().map(|body| &body.handler)).ok()
    }

    /// The handler, mutably; `None` while one of its callbacks runs.
    pub fn handler_mut(&self) -> Option<RefMut<'_, H>> {
        let body = self.inner.body.try_borrow_mut().ok()?;
        RefMut::filter_map(body, |body| body.as_mut().map(|body| &mut body.handler)).ok()
    }

    /// How many received bytes are buffered, not yet delivered.
    pub fn buffered_len(&self) -> usize {
        let incoming = self.inner.core.incoming.borrow().len();
        let framed = self.inner.body.try_borrow().map_or(0, |body| {
            body.as_ref()
                .map_or(0, |body| body.framing.buf.len() - body.framing.pos)
        });
        incoming + framed
    }

    /// Bytes handed to the delimiter search so far (up to each match), for the
    /// linear-scan tests.
    #[cfg(test)]
    fn searched(&self) -> usize {
        self.inner
            .body
            .borrow()
            .as_ref()
            .map_or(0, |body| body.framing.searched)
    }
}

impl<H: LineHandler> Protocol for LineReceiver<H> {
    fn connection_made(&mut self, transport: &TransportRef) -> ProtocolResult {
        *self.inner.core.transport.borrow_mut() = Some(transport.clone());
        self.inner
            .callback(transport, |handler, lines| handler.connection_made(lines))
    }

    fn data_received(&mut self, transport: &TransportRef, data: &[u8]) -> ProtocolResult {
        let core = &self.inner.core;
        if core.closed.get() || data.is_empty() {
            return Ok(());
        }
        if core.transport.borrow().is_none() {
            *core.transport.borrow_mut() = Some(transport.clone());
        }
        let Some(mut body) = self.inner.take_body() else {
            // A callback of this receiver is running: its loop takes the bytes next.
            core.incoming.borrow_mut().extend_from_slice(data);
            return Ok(());
        };
        let result = body.receive(core, transport, data);
        body.framing.compact();
        self.inner.put_body(body);
        result
    }

    fn connection_lost(&mut self, reason: &CloseReason) {
        let core = &self.inner.core;
        if core.closed.replace(true) {
            return;
        }
        let transport = core.transport.borrow_mut().take();
        drop(transport);
        let failure = core.failure.borrow_mut().take();
        let replaced;
        let reason = match failure {
            Some(failure) => {
                replaced = CloseReason::Protocol(failure);
                &replaced
            }
            None => reason,
        };
        if let Some(mut body) = self.inner.take_body() {
            body.handler.connection_lost(reason);
            self.inner.put_body(body);
        }
    }

    fn wants_half_close(&self) -> bool {
        self.half_close
    }

    fn read_connection_lost(&mut self, transport: &TransportRef) -> ProtocolResult {
        self.inner.callback(transport, |handler, lines| {
            handler.read_connection_lost(lines)
        })
    }

    fn write_connection_lost(&mut self, transport: &TransportRef) -> ProtocolResult {
        self.inner.callback(transport, |handler, lines| {
            handler.write_connection_lost(lines)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reactor::testing::ProtocolDriver;
    use crate::reactor::{MessageError, Transport};
    use proptest::prelude::*;

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Ev {
        Made,
        Line(Vec<u8>),
        Raw(Vec<u8>),
        Exceeded(Vec<u8>),
        Lost(String),
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Kind {
        Made,
        Line,
        Raw,
        Exceeded,
    }

    type Log = Rc<RefCell<Vec<Ev>>>;
    type Script = Box<dyn FnMut(Kind, &[u8], &mut LineControl<'_>) -> ProtocolResult>;

    /// Records every callback, then runs an optional script on it.
    struct Rec {
        log: Log,
        script: Option<Script>,
        close_on_exceeded: bool,
    }

    impl Rec {
        fn new() -> (Rec, Log) {
            let log = Log::default();
            let rec = Rec {
                log: log.clone(),
                script: None,
                close_on_exceeded: true,
            };
            (rec, log)
        }

        fn script(
            mut self,
            f: impl FnMut(Kind, &[u8], &mut LineControl<'_>) -> ProtocolResult + 'static,
        ) -> Rec {
            self.script = Some(Box::new(f));
            self
        }

        fn keep_open(mut self) -> Rec {
            self.close_on_exceeded = false;
            self
        }

        fn event(
            &mut self,
            kind: Kind,
            data: &[u8],
            lines: &mut LineControl<'_>,
        ) -> ProtocolResult {
            let ev = match kind {
                Kind::Made => Ev::Made,
                Kind::Line => Ev::Line(data.to_vec()),
                Kind::Raw => Ev::Raw(data.to_vec()),
                Kind::Exceeded => Ev::Exceeded(data.to_vec()),
            };
            self.log.borrow_mut().push(ev);
            if let Some(script) = self.script.as_mut() {
                script(kind, data, lines)?;
            }
            if kind == Kind::Exceeded && self.close_on_exceeded {
                lines.transport().lose_connection();
            }
            Ok(())
        }
    }

    impl LineHandler for Rec {
        fn connection_made(&mut self, lines: &mut LineControl<'_>) -> ProtocolResult {
            self.event(Kind::Made, &[], lines)
        }
        fn line_received(&mut self, line: &[u8], lines: &mut LineControl<'_>) -> ProtocolResult {
            self.event(Kind::Line, line, lines)
        }
        fn raw_data_received(
            &mut self,
            data: &[u8],
            lines: &mut LineControl<'_>,
        ) -> ProtocolResult {
            self.event(Kind::Raw, data, lines)
        }
        fn line_length_exceeded(
            &mut self,
            data: &[u8],
            lines: &mut LineControl<'_>,
        ) -> ProtocolResult {
            self.event(Kind::Exceeded, data, lines)
        }
        fn connection_lost(&mut self, reason: &CloseReason) {
            self.log.borrow_mut().push(Ev::Lost(reason.to_string()));
        }
    }

    type Driver = ProtocolDriver<LineReceiver<Rec>>;

    fn drive(receiver: LineReceiver<Rec>) -> Driver {
        let mut driver = ProtocolDriver::new(receiver);
        driver.connect().unwrap();
        driver
    }

    fn line(bytes: &[u8]) -> Ev {
        Ev::Line(bytes.to_vec())
    }

    fn made_and(events: &[Ev]) -> Vec<Ev> {
        let mut all = vec![Ev::Made];
        all.extend_from_slice(events);
        all
    }

    fn lines_of(log: &Log) -> Vec<Vec<u8>> {
        log.borrow()
            .iter()
            .filter_map(|ev| match ev {
                Ev::Line(line) => Some(line.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn l01_defaults_are_crlf_and_16384_per_instance() {
        let (rec, log) = Rec::new();
        let receiver = LineReceiver::new(rec);
        assert_eq!(receiver.max_length(), DEFAULT_MAX_LENGTH);
        assert_eq!(DEFAULT_MAX_LENGTH, 16384);
        let mut d = drive(receiver);
        let mut stream = b"a\nb\r\n".to_vec();
        stream.extend(vec![b'x'; 16384]);
        stream.extend_from_slice(b"\r\n");
        d.feed(&stream).unwrap();
        assert_eq!(lines_of(&log), [b"a\nb".to_vec(), vec![b'x'; 16384]]);

        // Another instance with other settings does not change the first.
        let (other, other_log) = Rec::new();
        let mut d2 = drive(
            LineReceiver::new(other)
                .with_delimiter(Delimiter::lf())
                .with_max_length(3),
        );
        d2.feed(b"ab\n").unwrap();
        assert_eq!(lines_of(&other_log), [b"ab".to_vec()]);
        assert_eq!(d.protocol().max_length(), 16384);
        d.feed(b"c\n\r\n").unwrap();
        assert_eq!(lines_of(&log).last().unwrap(), b"c\n");
    }

    fn events_for_chunks(delimiter: &Delimiter, max: usize, chunks: &[&[u8]]) -> Vec<Ev> {
        let (rec, log) = Rec::new();
        let mut d = drive(
            LineReceiver::new(rec.keep_open())
                .with_delimiter(delimiter.clone())
                .with_max_length(max),
        );
        for chunk in chunks {
            d.feed(chunk).unwrap();
        }
        log.take()
    }

    #[test]
    fn l02_any_chunking_gives_same_lines() {
        let stream: &[u8] = b"one\r\ntwo\r\n\r\nthree\rfour\nfive\r\nsix";
        let whole = events_for_chunks(&Delimiter::crlf(), 100, &[stream]);
        assert_eq!(
            whole,
            made_and(&[
                line(b"one"),
                line(b"two"),
                line(b""),
                line(b"three\rfour\nfive")
            ])
        );
        let bytewise: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(events_for_chunks(&Delimiter::crlf(), 100, &bytewise), whole);
        for cut in 0..=stream.len() {
            let (a, b) = stream.split_at(cut);
            assert_eq!(
                events_for_chunks(&Delimiter::crlf(), 100, &[a, b]),
                whole,
                "cut {cut}"
            );
        }
    }

    #[test]
    fn l02_multibyte_delimiter_split_across_chunks() {
        let delimiter = Delimiter::new(b"<=>").unwrap();
        let whole = events_for_chunks(&delimiter, 100, &[b"a<=>b<<=>=<=>"]);
        assert_eq!(whole, made_and(&[line(b"a"), line(b"b<"), line(b"=")]));
        let split = events_for_chunks(&delimiter, 100, &[b"a<", b"=", b">b<<", b"=>=<=", b">"]);
        assert_eq!(split, whole);
    }

    /// Lines are handed over straight from the received chunk; a line begun in one read
    /// waits in the buffer, and its delimiter may be split between reads.
    #[test]
    fn l02_delimiter_split_across_reads_between_lines_read_directly() {
        let crlf = Delimiter::crlf();
        let events = events_for_chunks(&crlf, 100, &[b"a\r\nb\r", b"\nc\r\nd", b"\r\n"]);
        assert_eq!(
            events,
            made_and(&[line(b"a"), line(b"b"), line(b"c"), line(b"d")])
        );
        // A three-byte delimiter over three reads, the line before it in a fourth.
        let delimiter = Delimiter::new(b"<=>").unwrap();
        let events = events_for_chunks(&delimiter, 100, &[b"x<=>y", b"y<", b"=", b">z<=><", b"=>"]);
        assert_eq!(
            events,
            made_and(&[line(b"x"), line(b"yy"), line(b"z"), line(b"")])
        );
        // Half a delimiter that turns out not to be one stays part of the line.
        let events = events_for_chunks(&crlf, 100, &[b"a\r", b"b\r\n"]);
        assert_eq!(events, made_and(&[line(b"a\rb")]));
        // Newline mode: the stripped `\r` ends one read, the `\n` begins the next.
        let events = events_for_chunks(&Delimiter::newline(), 100, &[b"a\nb\r", b"\nc\n"]);
        assert_eq!(events, made_and(&[line(b"a"), line(b"b"), line(b"c")]));
    }

    /// Exactly `max_length` is accepted and one more byte is not, whether the line comes
    /// whole in one read or is put together from several (L-07).
    #[test]
    fn l07_line_of_exactly_max_length_in_one_read_and_across_reads() {
        let crlf = Delimiter::crlf();
        let whole = events_for_chunks(&crlf, 5, &[b"12345\r\n123456\r\nok\r\n"]);
        assert_eq!(
            whole,
            made_and(&[
                line(b"12345"),
                Ev::Exceeded(b"123456\r".to_vec()),
                line(b"ok")
            ])
        );
        let split = events_for_chunks(&crlf, 5, &[b"12", b"345\r", b"\n1234", b"56\r\nok\r\n"]);
        assert_eq!(split, whole);
        // Newline mode counts the line without its stripped `\r`.
        let newline = events_for_chunks(&Delimiter::newline(), 3, &[b"ab", b"c\r\nabcd\n"]);
        assert_eq!(
            newline,
            made_and(&[line(b"abc"), Ev::Exceeded(b"abcd\n".to_vec())])
        );
    }

    /// A switch to raw mode in the middle of a read sends the rest of that read to
    /// `raw_data_received`, also when the switching line was put together from two reads.
    #[test]
    fn l09_raw_mode_mid_read_after_lines_read_directly() {
        for chunks in [
            &[&b"a\r\nraw\r\nb\r\nc"[..], b"d"][..],
            &[b"a\r\nr", b"aw\r\nb\r\nc", b"d"],
            &[b"a\r\nraw\r", b"\nb\r\nc", b"d"],
        ] {
            let (rec, log) = Rec::new();
            let rec = rec.script(|kind, data, lines| {
                if kind == Kind::Line && data == b"raw" {
                    lines.set_raw_mode();
                }
                Ok(())
            });
            let mut d = drive(LineReceiver::new(rec));
            for chunk in chunks {
                d.feed(chunk).unwrap();
            }
            let mut events = log.take();
            // Raw data comes per read; join it to compare the bytes.
            let raw: Vec<u8> = events
                .iter()
                .filter_map(|ev| match ev {
                    Ev::Raw(data) => Some(data.clone()),
                    _ => None,
                })
                .flatten()
                .collect();
            events.retain(|ev| !matches!(ev, Ev::Raw(_)));
            assert_eq!(events, made_and(&[line(b"a"), line(b"raw")]), "{chunks:?}");
            assert_eq!(raw, b"b\r\ncd", "{chunks:?}");
        }
    }

    /// What a callback asks for in the middle of a read applies to the rest of that read
    /// in order: extra bytes from `set_line_mode` come after it, a pause holds it, a clear
    /// takes it, also when the line was put together from two reads.
    #[test]
    fn l09_l11_l13_requests_mid_read_apply_to_the_rest_of_the_read() {
        for first in [&b"x\r\ny\r\n"[..], b"x"] {
            let (rec, log) = Rec::new();
            let rec = rec.script(|kind, data, lines| {
                if kind == Kind::Line && data == b"x" {
                    lines.set_line_mode(b"extra\r\n");
                }
                Ok(())
            });
            let mut d = drive(LineReceiver::new(rec));
            d.feed(first).unwrap();
            if first == b"x" {
                d.feed(b"\r\ny\r\n").unwrap();
            }
            assert_eq!(
                lines_of(&log),
                [b"x".to_vec(), b"y".to_vec(), b"extra".to_vec()]
            );
        }

        let (rec, log) = Rec::new();
        let rec = rec.script(|kind, data, lines| {
            if kind == Kind::Line && data == b"pause" {
                lines.pause_producing();
            }
            Ok(())
        });
        let receiver = LineReceiver::new(rec);
        let handle = receiver.handle();
        let mut d = drive(receiver);
        d.feed(b"a\r\npau").unwrap();
        d.feed(b"se\r\nb\r\nc").unwrap();
        assert_eq!(lines_of(&log), [b"a".to_vec(), b"pause".to_vec()]);
        assert_eq!(d.protocol().buffered_len(), 4);
        handle.resume_producing();
        d.feed(b"\r\n").unwrap();
        let all: Vec<Vec<u8>> = [&b"a"[..], b"pause", b"b", b"c"]
            .map(|s| s.to_vec())
            .to_vec();
        assert_eq!(lines_of(&log), all);

        let cleared = Rc::new(RefCell::new(Vec::new()));
        let keep = cleared.clone();
        let (rec, log) = Rec::new();
        let rec = rec.script(move |kind, data, lines| {
            if kind == Kind::Line && data == b"abc" {
                *keep.borrow_mut() = lines.clear_line_buffer();
            }
            Ok(())
        });
        let mut d = drive(LineReceiver::new(rec));
        d.feed(b"ab").unwrap();
        d.feed(b"c\r\nrest\r\nmore").unwrap();
        assert_eq!(*cleared.borrow(), b"rest\r\nmore");
        assert_eq!(d.protocol().buffered_len(), 0);
        d.feed(b"z\r\n").unwrap();
        assert_eq!(lines_of(&log), [b"abc".to_vec(), b"z".to_vec()]);
    }

    #[test]
    fn l03_empty_lines_and_raw_bytes_are_kept_as_they_are() {
        let stream: &[u8] = b"\r\n\r\n \xff\x00\t \r\nx\n\r\n";
        let events = events_for_chunks(&Delimiter::crlf(), 100, &[stream]);
        assert_eq!(
            events,
            made_and(&[line(b""), line(b""), line(b" \xff\x00\t "), line(b"x\n")])
        );
    }

    #[test]
    fn l04_send_line_writes_line_and_delimiter_as_one_write() {
        let (rec, _log) = Rec::new();
        let rec = rec.script(|kind, data, lines| {
            if kind == Kind::Line {
                lines.send_line(data);
            }
            Ok(())
        });
        let mut d = drive(LineReceiver::new(rec));
        d.feed(b"hello\r\n").unwrap();
        assert_eq!(d.transport().take_written(), b"hello\r\n");
        assert_eq!(d.transport().write_calls(), 1);

        let (rec, _log) = Rec::new();
        let rec = rec.script(|kind, data, lines| {
            if kind == Kind::Line {
                lines.send_line(data);
            }
            Ok(())
        });
        let mut d = drive(LineReceiver::new(rec).with_delimiter(Delimiter::newline()));
        d.feed(b"hi\n").unwrap();
        assert_eq!(d.transport().written(), b"hi\r\n");

        let (rec, _log) = Rec::new();
        let receiver = LineReceiver::new(rec).with_delimiter(Delimiter::lf().sending(b"\r\n"));
        let handle = receiver.handle();
        assert!(!handle.send_line(b"early"));
        let d = drive(receiver);
        assert!(handle.send_line(b"x"));
        assert_eq!(d.transport().written(), b"x\r\n");
    }

    #[test]
    fn l05_lines_before_an_offending_one_are_delivered_first() {
        let events = events_for_chunks(&Delimiter::crlf(), 3, &[b"ab\r\ncd\r\ntoolong\r\nef\r\n"]);
        assert_eq!(
            events,
            made_and(&[
                line(b"ab"),
                line(b"cd"),
                Ev::Exceeded(b"toolo".to_vec()),
                line(b"ef")
            ])
        );
    }

    #[test]
    fn l06_no_more_lines_once_disconnecting() {
        let (rec, log) = Rec::new();
        let rec = rec.script(|kind, data, lines| {
            if kind == Kind::Line && data == b"quit" {
                lines.transport().lose_connection();
            }
            Ok(())
        });
        let mut d = drive(LineReceiver::new(rec));
        d.feed(b"a\r\nquit\r\nb\r\nc\r\n").unwrap();
        assert_eq!(lines_of(&log), [b"a".to_vec(), b"quit".to_vec()]);
        // Even if bytes still reach the protocol, nothing is delivered (X-16).
        let transport = d.transport_ref().clone();
        d.protocol_mut()
            .data_received(&transport, b"d\r\n")
            .unwrap();
        assert_eq!(lines_of(&log).len(), 2);
        d.close();
        assert_eq!(
            log.borrow().last().unwrap(),
            &Ev::Lost("connection closed cleanly".into())
        );
    }

    #[test]
    fn l07_line_over_max_length_calls_exceeded_and_default_loses_connection() {
        struct Plain(Log);
        impl LineHandler for Plain {
            fn line_received(&mut self, line: &[u8], _: &mut LineControl<'_>) -> ProtocolResult {
                self.0.borrow_mut().push(Ev::Line(line.to_vec()));
                Ok(())
            }
        }
        // Exactly max_length is fine.
        let log = Log::default();
        let mut d = ProtocolDriver::new(LineReceiver::new(Plain(log.clone())).with_max_length(5));
        d.feed(b"12345\r\n123456\r\nnext\r\n").unwrap();
        assert_eq!(*log.borrow(), [line(b"12345")]);
        assert!(d.transport().lost_connection());

        // The data is the line's first max_length + delimiter bytes, in any chunking.
        let whole = events_for_chunks(&Delimiter::crlf(), 5, &[b"123456\r\nnext\r\n"]);
        assert_eq!(
            whole,
            made_and(&[Ev::Exceeded(b"123456\r".to_vec()), line(b"next")])
        );
        let chunked = events_for_chunks(&Delimiter::crlf(), 5, &[b"123456", b"\r", b"\nnext\r\n"]);
        assert_eq!(chunked, whole);
        let long = events_for_chunks(&Delimiter::crlf(), 5, &[b"123456789\r\nnext\r\n"]);
        assert_eq!(
            long,
            made_and(&[Ev::Exceeded(b"1234567".to_vec()), line(b"next")])
        );
    }

    #[test]
    fn l07_clear_in_exceeded_gives_twisteds_restart() {
        let (rec, log) = Rec::new();
        let rec = rec.keep_open().script(|kind, _, lines| {
            if kind == Kind::Exceeded {
                let rest = lines.clear_line_buffer();
                lines.send_line(&rest);
            }
            Ok(())
        });
        let mut d = drive(LineReceiver::new(rec).with_max_length(3));
        d.feed(b"abcdefgh").unwrap();
        // The rest of the over-long line is parsed afresh instead of skipped.
        d.feed(b"ij\r\nk\r\n").unwrap();
        assert_eq!(
            log.take(),
            made_and(&[Ev::Exceeded(b"abcde".to_vec()), line(b"ij"), line(b"k")])
        );
    }

    /// L-07/L-08: a handler that takes what `line_length_exceeded` gets plus the rest of
    /// the buffer (`clear_line_buffer`) gets exactly Twisted's argument, the whole
    /// buffer, and the buffer is then empty: nothing after it is delivered.
    #[test]
    fn l07_l08_clearing_in_exceeded_gets_twisteds_whole_buffer() {
        fn twisted_argument(max: usize, chunks: &[&[u8]]) -> (Vec<Vec<u8>>, Vec<Ev>) {
            let whole: Rc<RefCell<Vec<Vec<u8>>>> = Rc::default();
            let w = whole.clone();
            let (rec, log) = Rec::new();
            let rec = rec.keep_open().script(move |kind, data, lines| {
                if kind == Kind::Exceeded {
                    let rest = lines.clear_line_buffer();
                    w.borrow_mut().push([data, &rest[..]].concat());
                }
                Ok(())
            });
            let mut d = drive(LineReceiver::new(rec).with_max_length(max));
            for chunk in chunks {
                d.feed(chunk).unwrap();
            }
            let whole = whole.borrow().clone();
            (whole, log.take())
        }
        // L-07, one chunk: the line, its delimiter and everything after it.
        let (whole, events) = twisted_argument(5, &[b"123456789\r\nnext\r\n"]);
        assert_eq!(whole, [b"123456789\r\nnext\r\n".to_vec()]);
        assert!(
            !events.contains(&line(b"next")),
            "the buffer was emptied: {events:?}"
        );
        // L-08: an unterminated tail, whole, once it reaches max + delimiter.
        let (whole, _) = twisted_argument(5, &[b"123456", b"78"]);
        assert_eq!(whole, [b"12345678".to_vec()]);
        let (whole, _) = twisted_argument(5, &[b"123456"]);
        assert!(whole.is_empty(), "not yet at max + delimiter");
        // After the whole buffer went, a new line is parsed afresh.
        let (whole, events) = twisted_argument(5, &[b"1234567890", b"ok\r\n"]);
        assert_eq!(whole, [b"1234567890".to_vec()]);
        assert_eq!(events.last(), Some(&line(b"ok")), "{events:?}");
    }

    #[test]
    fn l08_unterminated_tail_is_rejected_only_at_max_plus_delimiter() {
        let (rec, log) = Rec::new();
        let mut d = drive(LineReceiver::new(rec).with_max_length(5));
        d.feed(b"12345\r").unwrap();
        assert_eq!(log.borrow().len(), 1);
        d.feed(b"\n").unwrap();
        assert_eq!(log.borrow().last().unwrap(), &line(b"12345"));
        d.feed(b"123456").unwrap();
        assert_eq!(log.borrow().len(), 2);
        d.feed(b"7").unwrap();
        assert_eq!(
            log.borrow().last().unwrap(),
            &Ev::Exceeded(b"1234567".to_vec())
        );
        assert!(d.transport().lost_connection());
    }

    #[test]
    fn l08_skipped_line_keeps_memory_bounded() {
        let (rec, log) = Rec::new();
        let mut d = drive(LineReceiver::new(rec.keep_open()).with_max_length(10));
        let chunk = vec![b'x'; 4096];
        for _ in 0..256 {
            d.feed(&chunk).unwrap();
            assert!(d.protocol().buffered_len() <= 1);
        }
        d.feed(b"\r\nafter\r\n").unwrap();
        assert_eq!(
            log.take(),
            made_and(&[Ev::Exceeded(vec![b'x'; 12]), line(b"after")])
        );
    }

    #[test]
    fn l08_ten_megabyte_line_is_searched_once() {
        let (rec, log) = Rec::new();
        let mut d = drive(LineReceiver::new(rec).with_max_length(20 << 20));
        let chunk = vec![b'y'; 64 * 1024];
        let chunks = 160; // 10 MiB
        for _ in 0..chunks {
            d.feed(&chunk).unwrap();
        }
        d.feed(b"\r\n").unwrap();
        let total = chunks * chunk.len() + 2;
        // Each chunk re-examines at most the one byte that could start "\r\n".
        let searched = d.protocol().searched();
        assert!(searched <= total + chunks, "searched {searched} of {total}");
        let lines = lines_of(&log);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].len(), total - 2);
        assert_eq!(d.protocol().buffered_len(), 0);
    }

    #[test]
    fn l02_many_short_lines_are_searched_once() {
        let (rec, log) = Rec::new();
        let mut d = drive(LineReceiver::new(rec));
        let stream: Vec<u8> = b"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n".repeat(10_000);
        for chunk in stream.chunks(1000) {
            d.feed(chunk).unwrap();
        }
        assert_eq!(lines_of(&log).len(), 10_000);
        let searched = d.protocol().searched();
        assert!(
            searched <= stream.len() + stream.len() / 1000,
            "searched {searched}"
        );
    }

    #[test]
    fn l09_raw_mode_gets_the_rest_and_line_mode_parses_extra_first() {
        let (rec, log) = Rec::new();
        let rec = rec.script(|kind, data, lines| {
            match kind {
                Kind::Line if data == b"raw" => lines.set_raw_mode(),
                Kind::Raw if data.ends_with(b"END") => lines.set_line_mode(b"extra\r\n"),
                _ => {}
            }
            Ok(())
        });
        let mut d = drive(LineReceiver::new(rec));
        d.feed(b"a\r\nraw\r\nb\r\nc").unwrap();
        d.feed(b"d\r\nEND").unwrap();
        d.feed(b"after\r\n").unwrap();
        assert_eq!(
            log.take(),
            made_and(&[
                line(b"a"),
                line(b"raw"),
                Ev::Raw(b"b\r\nc".to_vec()),
                Ev::Raw(b"d\r\nEND".to_vec()),
                line(b"extra"),
                line(b"after"),
            ])
        );
    }

    #[test]
    fn l09_giving_back_part_of_the_raw_data() {
        // The raw handler keeps 3 bytes and returns the rest to line mode, once by
        // handing back its tail (no copy) and once by a copy of other bytes.
        let (rec, log) = Rec::new();
        let rec = rec.script(|kind, data, lines| {
            match kind {
                Kind::Line if data == b"raw" => lines.set_raw_mode(),
                Kind::Raw if data.starts_with(b"TAIL") => lines.set_line_mode(&data[4..]),
                Kind::Raw => lines.set_line_mode(b"copy\r\n"),
                _ => {}
            }
            Ok(())
        });
        let mut d = drive(LineReceiver::new(rec));
        d.feed(b"raw\r\nTAILx\r\nraw\r\nzz").unwrap();
        d.feed(b"y\r\n").unwrap();
        assert_eq!(
            log.take(),
            made_and(&[
                line(b"raw"),
                Ev::Raw(b"TAILx\r\nraw\r\nzz".to_vec()),
                line(b"x"),
                line(b"raw"),
                Ev::Raw(b"zz".to_vec()),
                line(b"copy"),
                line(b"y"),
            ])
        );
    }

    #[test]
    fn l10_many_mode_switches_in_one_chunk_do_not_grow_the_stack() {
        const SWITCHES: usize = 100_000;
        /// Goes raw after each line and hands all raw data but its first byte back.
        #[derive(Default)]
        struct Switcher {
            lines: usize,
            raws: usize,
        }
        impl LineHandler for Switcher {
            fn line_received(
                &mut self,
                line: &[u8],
                lines: &mut LineControl<'_>,
            ) -> ProtocolResult {
                assert_eq!(line, b"L");
                self.lines += 1;
                lines.set_raw_mode();
                Ok(())
            }
            fn raw_data_received(
                &mut self,
                data: &[u8],
                lines: &mut LineControl<'_>,
            ) -> ProtocolResult {
                assert_eq!(data.first(), Some(&b'R'));
                self.raws += 1;
                lines.set_line_mode(&data[1..]);
                Ok(())
            }
        }
        // A small stack: recursion per switch would overflow it long before the end.
        let worker = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(|| {
                let mut d = ProtocolDriver::new(LineReceiver::new(Switcher::default()));
                d.feed(&b"L\r\nR".repeat(SWITCHES)).unwrap();
                let receiver = d.protocol();
                let handler = receiver.handler().unwrap();
                (handler.lines, handler.raws, receiver.searched())
            })
            .unwrap();
        let (lines, raws, searched) = worker.join().unwrap();
        assert_eq!(lines, SWITCHES);
        assert_eq!(raws, SWITCHES);
        // Handing back the tail of the raw data is not a copy, and is searched once.
        assert!(searched <= 4 * SWITCHES, "searched {searched}");
    }

    #[test]
    fn l11_clear_line_buffer_returns_the_rest_and_drops_it() {
        let cleared = Rc::new(RefCell::new(Vec::new()));
        let keep = cleared.clone();
        let (rec, log) = Rec::new();
        let rec = rec.script(move |kind, data, lines| {
            if kind == Kind::Line && data == b"a" {
                *keep.borrow_mut() = lines.clear_line_buffer();
            }
            Ok(())
        });
        let mut d = drive(LineReceiver::new(rec));
        d.feed(b"a\r\nb\r\nc\r\npart").unwrap();
        assert_eq!(*cleared.borrow(), b"b\r\nc\r\npart");
        assert_eq!(lines_of(&log), [b"a".to_vec()]);
        assert_eq!(d.protocol().buffered_len(), 0);
        d.feed(b"d\r\n").unwrap();
        assert_eq!(lines_of(&log), [b"a".to_vec(), b"d".to_vec()]);
    }

    #[test]
    fn l12_bytes_fed_while_paused_come_out_in_order_after_resume() {
        let (rec, log) = Rec::new();
        let rec = rec.script(|kind, data, lines| {
            if kind == Kind::Line && data == b"pause" {
                lines.pause_producing();
            }
            Ok(())
        });
        let receiver = LineReceiver::new(rec);
        let handle = receiver.handle();
        let mut d = drive(receiver);
        d.feed(b"a\r\npause\r\nb\r\nc").unwrap();
        assert!(d.transport().paused());
        assert!(handle.is_paused());
        // The reactor would not read now; bytes that arrive anyway are queued behind.
        d.feed(b"\r\nd\r\ne").unwrap();
        assert_eq!(lines_of(&log), [b"a".to_vec(), b"pause".to_vec()]);
        handle.resume_producing();
        assert!(!d.transport().paused());
        d.feed(b"\r\n").unwrap();
        let expected: Vec<Vec<u8>> = ["a", "pause", "b", "c", "d", "e"]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
        assert_eq!(lines_of(&log), expected);
    }

    #[test]
    fn l12_resume_from_inside_a_callback_continues_the_running_loop_in_order() {
        let (rec, log) = Rec::new();
        let slot: Rc<RefCell<Option<LineHandle>>> = Rc::default();
        let inner_slot = slot.clone();
        let rec = rec.script(move |kind, data, lines| {
            if kind == Kind::Made {
                *inner_slot.borrow_mut() = Some(lines.handle());
            }
            if kind == Kind::Line && data == b"p" {
                lines.pause_producing();
                // Re-entrant: the receiver is mid-delivery, so this only lifts the pause.
                if let Some(handle) = inner_slot.borrow().as_ref() {
                    handle.resume_producing();
                }
            }
            Ok(())
        });
        let mut d = drive(LineReceiver::new(rec));
        d.feed(b"1\r\np\r\n2\r\n3\r\n").unwrap();
        let expected: Vec<Vec<u8>> = [&b"1"[..], b"p", b"2", b"3"].map(|s| s.to_vec()).to_vec();
        assert_eq!(lines_of(&log), expected);
        assert!(!d.transport().paused());
        drop(slot.take());
    }

    #[test]
    fn l13_pause_in_connection_made_and_resume_delivers_then_continues() {
        let (rec, log) = Rec::new();
        let rec = rec.script(|kind, _, lines| {
            if kind == Kind::Made {
                lines.pause_producing();
            }
            Ok(())
        });
        let receiver = LineReceiver::new(rec);
        let handle = receiver.handle();
        let mut d = drive(receiver);
        assert!(d.transport().paused());
        d.feed(b"x\r\ny\r\n").unwrap();
        assert_eq!(lines_of(&log), Vec::<Vec<u8>>::new());
        assert_eq!(d.protocol().buffered_len(), 6);
        handle.resume_producing();
        assert_eq!(lines_of(&log), [b"x".to_vec(), b"y".to_vec()]);
        assert!(!d.transport().paused());
        d.feed(b"z\r\n").unwrap();
        assert_eq!(lines_of(&log).len(), 3);
    }

    #[test]
    fn l13_pause_again_during_resume_keeps_reading_paused() {
        let (rec, log) = Rec::new();
        let rec = rec.script(|kind, data, lines| {
            if kind == Kind::Line && data.starts_with(b"p") {
                lines.pause_producing();
            }
            Ok(())
        });
        let receiver = LineReceiver::new(rec);
        let handle = receiver.handle();
        let mut d = drive(receiver);
        d.feed(b"p1\r\na\r\np2\r\nb\r\n").unwrap();
        assert_eq!(lines_of(&log).len(), 1);
        handle.resume_producing();
        assert_eq!(lines_of(&log).len(), 3);
        assert!(d.transport().paused());
        handle.resume_producing();
        assert_eq!(lines_of(&log).len(), 4);
        assert!(!d.transport().paused());
    }

    #[test]
    fn l13_stop_producing_stops_for_good_and_loses_the_connection() {
        let (rec, log) = Rec::new();
        let receiver = LineReceiver::new(rec);
        let handle = receiver.handle();
        let mut d = drive(receiver);
        d.feed(b"a\r\n").unwrap();
        Producer::stop_producing(&handle);
        assert!(d.transport().lost_connection());
        let transport = d.transport_ref().clone();
        d.protocol_mut()
            .data_received(&transport, b"b\r\n")
            .unwrap();
        handle.resume_producing();
        assert_eq!(lines_of(&log), [b"a".to_vec()]);
    }

    #[test]
    fn l13_handle_is_a_producer_for_another_transport() {
        let (rec, log) = Rec::new();
        let receiver = LineReceiver::new(rec);
        let handle = receiver.handle();
        let mut d = drive(receiver);
        let other = crate::reactor::testing::StringTransport::with_default_addresses();
        other.register_producer(Rc::new(handle));
        other.producer().unwrap().pause_producing();
        d.feed(b"a\r\n").unwrap();
        assert!(lines_of(&log).is_empty());
        other.producer().unwrap().resume_producing();
        assert_eq!(lines_of(&log), [b"a".to_vec()]);
    }

    #[test]
    fn l15_line_received_is_required_and_raw_data_has_no_default() {
        struct OnlyLines;
        impl LineHandler for OnlyLines {
            fn line_received(&mut self, _: &[u8], lines: &mut LineControl<'_>) -> ProtocolResult {
                lines.set_raw_mode();
                Ok(())
            }
        }
        let mut d = ProtocolDriver::new(LineReceiver::new(OnlyLines));
        let err = d.feed(b"go raw\r\nbytes").unwrap_err();
        assert_eq!(
            err.downcast_ref::<LineError>(),
            Some(&LineError::RawDataNotHandled)
        );
        assert!(d.transport().is_disconnecting());
    }

    #[test]
    fn p22_error_from_line_received_stops_delivery_and_is_returned() {
        let (rec, log) = Rec::new();
        let rec = rec.script(|kind, data, _| {
            if kind == Kind::Line && data == b"bad" {
                return Err(Failure::msg("bad line"));
            }
            Ok(())
        });
        let mut d = drive(LineReceiver::new(rec));
        let err = d.feed(b"ok\r\nbad\r\nnever\r\n").unwrap_err();
        assert!(err.check::<MessageError>());
        assert_eq!(lines_of(&log), [b"ok".to_vec(), b"bad".to_vec()]);
        d.close();
        assert_eq!(
            log.borrow().last().unwrap(),
            &Ev::Lost("protocol error: bad line".into())
        );
    }

    #[test]
    fn p22_error_during_a_handle_resume_becomes_the_close_reason() {
        let (rec, log) = Rec::new();
        let rec = rec.script(|kind, data, lines| {
            match (kind, data) {
                (Kind::Line, b"pause") => lines.pause_producing(),
                (Kind::Line, b"bad") => return Err(Failure::msg("bad after resume")),
                _ => {}
            }
            Ok(())
        });
        let receiver = LineReceiver::new(rec);
        let handle = receiver.handle();
        let mut d = drive(receiver);
        d.feed(b"pause\r\nbad\r\n").unwrap();
        handle.resume_producing();
        assert!(d.transport().is_disconnecting());
        // The reactor reports an orderly close; the receiver substitutes the error.
        d.lose(CloseReason::Done);
        assert_eq!(
            log.borrow().last().unwrap(),
            &Ev::Lost("protocol error: bad after resume".into())
        );
        assert!(!handle.is_connected());
        assert!(!handle.send_line(b"late"));
    }

    #[test]
    fn p04_connection_lost_once_and_handle_dies_with_the_protocol() {
        let (rec, log) = Rec::new();
        let receiver = LineReceiver::new(rec);
        let handle = receiver.handle();
        let mut d = drive(receiver);
        assert!(handle.is_connected());
        d.protocol_mut().connection_lost(&CloseReason::Aborted);
        d.protocol_mut().connection_lost(&CloseReason::Done);
        assert_eq!(
            log.take(),
            made_and(&[Ev::Lost("connection aborted".into())])
        );
        drop(d);
        assert!(!handle.is_connected());
        handle.resume_producing();
        handle.pause_producing();
        assert!(!handle.is_paused());
    }

    #[test]
    fn x12_half_close_events_reach_the_handler() {
        struct Half(Log);
        impl LineHandler for Half {
            fn line_received(&mut self, line: &[u8], _: &mut LineControl<'_>) -> ProtocolResult {
                self.0.borrow_mut().push(Ev::Line(line.to_vec()));
                Ok(())
            }
            fn wants_half_close(&self) -> bool {
                true
            }
            fn read_connection_lost(&mut self, lines: &mut LineControl<'_>) -> ProtocolResult {
                lines.send_line(b"bye");
                // Queued bytes are still parsed and delivered.
                lines.set_line_mode(b"last\r\n");
                Ok(())
            }
        }
        let log = Log::default();
        let mut d = ProtocolDriver::new(LineReceiver::new(Half(log.clone())));
        assert!(d.protocol().wants_half_close());
        d.feed(b"a\r\ntail").unwrap();
        let transport = d.transport_ref().clone();
        d.protocol_mut().read_connection_lost(&transport).unwrap();
        assert_eq!(d.transport().written(), b"bye\r\n");
        assert_eq!(*log.borrow(), [line(b"a"), line(b"taillast")]);
    }

    #[test]
    fn newline_mode_accepts_lf_and_crlf_and_strips_one_cr() {
        let events = events_for_chunks(&Delimiter::newline(), 100, &[b"a\r\nb\n\r\n\r\r\nc\rd\n"]);
        assert_eq!(
            events,
            made_and(&[
                line(b"a"),
                line(b"b"),
                line(b""),
                line(b"\r"),
                line(b"c\rd")
            ])
        );
    }

    #[test]
    fn newline_mode_counts_max_length_without_the_cr() {
        let events = events_for_chunks(&Delimiter::newline(), 3, &[b"abc\r\nabc\nabcd\nxy\n"]);
        assert_eq!(
            events,
            made_and(&[
                line(b"abc"),
                line(b"abc"),
                Ev::Exceeded(b"abcd\n".to_vec()),
                line(b"xy")
            ])
        );
        let chunked = events_for_chunks(
            &Delimiter::newline(),
            3,
            &[b"abc\r", b"\nabc\nabcd", b"\nxy\n"],
        );
        assert_eq!(chunked, events);
    }

    #[test]
    fn delimiter_must_not_be_empty() {
        assert_eq!(Delimiter::new(b""), Err(LineError::EmptyDelimiter));
        let d = Delimiter::new(b"::").unwrap();
        assert_eq!(d.receive_bytes(), b"::");
        assert_eq!(d.send_bytes(), b"::");
        assert!(!d.strips_cr());
        assert_eq!(Delimiter::default(), Delimiter::crlf());
    }

    #[test]
    fn with_delimiter_keeps_only_unprocessed_bytes() {
        let (rec, log) = Rec::new();
        let mut receiver = LineReceiver::new(rec).with_max_length(100);
        let t = crate::reactor::testing::StringTransport::with_default_addresses();
        let transport = t.transport_ref();
        receiver.connection_made(&transport).unwrap();
        // Little is consumed, so the buffer is not compacted yet.
        receiver.data_received(&transport, b"a\r\nbbbbb;c").unwrap();
        assert_eq!(receiver.buffered_len(), 7);
        let mut receiver = receiver.with_delimiter(Delimiter::new(b";").unwrap());
        receiver.data_received(&transport, b";").unwrap();
        assert_eq!(
            log.take(),
            made_and(&[line(b"a"), line(b"bbbbb"), line(b"c")])
        );
    }

    #[test]
    fn handler_is_reachable_between_callbacks() {
        let (rec, _log) = Rec::new();
        let d = drive(LineReceiver::new(rec).with_max_length(7));
        assert!(d.protocol().handler().is_some());
        d.protocol().handler_mut().unwrap().close_on_exceeded = false;
        assert!(!d.protocol().handler().unwrap().close_on_exceeded);
    }

    // ---- properties -------------------------------------------------------------

    /// The framing rule, stated directly on the whole stream (quadratic, obviously right).
    fn reference(stream: &[u8], delimiter: &Delimiter, max: usize, keep_open: bool) -> Vec<Ev> {
        let delim = delimiter.receive_bytes();
        let limit = max + delimiter.allowance();
        let mut events = vec![Ev::Made];
        let mut i = 0;
        while i < stream.len() {
            let found = (i..stream.len()).find(|&k| stream[k..].starts_with(delim));
            match found {
                Some(at) => {
                    let mut end = at;
                    if delimiter.strips_cr() && end > i && stream[end - 1] == b'\r' {
                        end -= 1;
                    }
                    if end - i <= max {
                        events.push(Ev::Line(stream[i..end].to_vec()));
                    } else {
                        events.push(Ev::Exceeded(stream[i..i + limit].to_vec()));
                        if !keep_open {
                            break;
                        }
                    }
                    i = at + delim.len();
                }
                None => {
                    if stream.len() - i >= limit {
                        events.push(Ev::Exceeded(stream[i..i + limit].to_vec()));
                    }
                    break;
                }
            }
        }
        events
    }

    fn split<'a>(stream: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
        points.sort_unstable();
        let mut chunks = Vec::new();
        let mut last = 0;
        for point in points.into_iter().chain([stream.len()]) {
            chunks.push(&stream[last..point]);
            last = point;
        }
        chunks
    }

    fn delimiters() -> impl Strategy<Value = Delimiter> {
        prop_oneof![
            Just(Delimiter::crlf()),
            Just(Delimiter::lf()),
            Just(Delimiter::newline()),
            Just(Delimiter::new(b"aba").unwrap()),
            Just(Delimiter::new(b"\r\n\r\n").unwrap()),
        ]
    }

    fn streams() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            prop_oneof![Just(b'a'), Just(b'b'), Just(b'\r'), Just(b'\n'), Just(b'x')],
            0..200,
        )
    }

    fn run_chunks(delimiter: &Delimiter, max: usize, keep_open: bool, chunks: &[&[u8]]) -> Vec<Ev> {
        let (rec, log) = Rec::new();
        let rec = if keep_open { rec.keep_open() } else { rec };
        let mut d = drive(
            LineReceiver::new(rec)
                .with_delimiter(delimiter.clone())
                .with_max_length(max),
        );
        for chunk in chunks {
            d.feed(chunk).unwrap();
        }
        log.take()
    }

    proptest! {
        #[test]
        fn l02_prop_any_chunking_gives_same_lines_and_same_exceeded_calls(
            stream in streams(),
            cuts in proptest::collection::vec(any::<usize>(), 0..20),
            delimiter in delimiters(),
            max in 0usize..12,
            keep_open in any::<bool>(),
        ) {
            let whole = run_chunks(&delimiter, max, keep_open, &[&stream]);
            prop_assert_eq!(&whole, &reference(&stream, &delimiter, max, keep_open));
            let chunked = run_chunks(&delimiter, max, keep_open, &split(&stream, &cuts));
            prop_assert_eq!(&chunked, &whole);
            let bytewise: Vec<&[u8]> = stream.chunks(1).collect();
            prop_assert_eq!(&run_chunks(&delimiter, max, keep_open, &bytewise), &whole);
        }

        #[test]
        fn l09_prop_mode_switches_give_same_result_for_any_chunking(
            stream in streams(),
            cuts in proptest::collection::vec(any::<usize>(), 0..20),
            delimiter in delimiters(),
            raw_len in 0usize..6,
        ) {
            // A line starting with 'b' switches to raw mode for the next `raw_len` bytes.
            let run = |chunks: &[&[u8]]| {
                let remaining = Rc::new(Cell::new(0usize));
                let (rec, log) = Rec::new();
                let rec = rec.keep_open().script(move |kind, data, lines| {
                    match kind {
                        Kind::Line if data.first() == Some(&b'b') && raw_len > 0 => {
                            remaining.set(raw_len);
                            lines.set_raw_mode();
                        }
                        Kind::Raw => {
                            let take = remaining.get().min(data.len());
                            remaining.set(remaining.get() - take);
                            if remaining.get() == 0 {
                                lines.set_line_mode(&data[take..]);
                            }
                        }
                        _ => {}
                    }
                    Ok(())
                });
                let mut d = drive(LineReceiver::new(rec).with_delimiter(delimiter.clone()).with_max_length(8));
                for chunk in chunks {
                    d.feed(chunk).unwrap();
                }
                // Raw events carry whole deliveries; keep only the bytes consumed raw,
                // merged, so that chunk boundaries inside raw data do not show.
                let mut merged: Vec<Ev> = Vec::new();
                let mut owed = 0usize;
                for ev in log.take() {
                    match ev {
                        Ev::Line(l) if l.first() == Some(&b'b') && raw_len > 0 => {
                            owed = raw_len;
                            merged.push(Ev::Line(l));
                        }
                        Ev::Raw(data) => {
                            let take = owed.min(data.len());
                            owed -= take;
                            match merged.last_mut() {
                                Some(Ev::Raw(prev)) => prev.extend_from_slice(&data[..take]),
                                _ => merged.push(Ev::Raw(data[..take].to_vec())),
                            }
                        }
                        other => merged.push(other),
                    }
                }
                merged
            };
            let whole = run(&[&stream]);
            prop_assert_eq!(&run(&split(&stream, &cuts)), &whole);
            let bytewise: Vec<&[u8]> = stream.chunks(1).collect();
            prop_assert_eq!(&run(&bytewise), &whole);
        }
    }
}
