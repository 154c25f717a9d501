//! Helpers shared by the subcommands' unit tests.

use std::io::{self, Write};

/// A writer whose reader has gone away: every write fails with `BrokenPipe`, as
/// `twistctl ... | head -1` sees once `head` has exited.
pub(crate) struct ClosedPipe;

impl Write for ClosedPipe {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::from(io::ErrorKind::BrokenPipe))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
