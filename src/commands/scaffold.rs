//! The one frame every subcommand runs in: it makes the reactor, installs the signal
//! handlers, maps how the reactor stopped to the exit status, prints runtime errors
//! with one prefix (`twistctl: ...`), and applies one policy to stdout:
//!
//! - a closed pipe (`twistctl ... | head -1`) is a normal end: nothing is printed and
//!   the exit status is not changed;
//! - any other write error (a full disk, `> /dev/full`) is reported once, as
//!   `twistctl: cannot write output: No space left on device`, and the command fails
//!   with status 1, unless it already ended with a worse status.
//!
//! Commands write to stdout only through [`stdout`] (or [`print_line`]), so that every
//! write is seen by the policy.

use std::cell::RefCell;
use std::fmt;
use std::io::{self, Write};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::exit::ExitStatus;
use crate::reactor::{Reactor, StopReason};

/// A command as the scaffold runs it: wired into the reactor before it runs, asked for
/// its exit status after.
pub trait Command {
    /// Wires the command into `reactor` (protocols, timers, the console). An error
    /// here is printed with the common prefix and ends the command at once.
    fn start(&mut self, reactor: &Reactor) -> Result<(), CommandError>;

    /// The exit status once the reactor has stopped; the default is 128 + n for a
    /// signal and success for any other stop.
    fn finish(self: Box<Self>, stopped: StopReason) -> ExitStatus {
        status_for(stopped)
    }

    /// Whether a failed write to stdout stops the reactor at once (the default):
    /// output is what most commands are for. conntest finishes its checks instead, so
    /// that a worse status still wins.
    fn stops_on_output_error(&self) -> bool {
        true
    }
}

/// An error that ends a command before or instead of its normal end.
#[derive(Debug)]
pub struct CommandError {
    /// What went wrong, naming the value involved; printed after `twistctl: `.
    pub message: String,
    /// The exit status it calls for.
    pub status: ExitStatus,
}

impl CommandError {
    /// A runtime failure: exit status 1.
    pub fn failure(message: impl Into<String>) -> CommandError {
        CommandError {
            message: message.into(),
            status: ExitStatus::Failure,
        }
    }
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// The exit status for how the reactor stopped: 128 + n for a signal, else success.
pub fn status_for(stopped: StopReason) -> ExitStatus {
    match stopped {
        StopReason::Signal(signal) => ExitStatus::Signal(signal),
        StopReason::Stopped | StopReason::Crashed => ExitStatus::Success,
    }
}

/// Runs `command` on a new reactor and returns the exit status, with the stdout
/// policy applied.
pub fn run(mut command: Box<dyn Command>) -> ExitStatus {
    let reactor = match Reactor::new() {
        Ok(reactor) => reactor,
        Err(error) => {
            eprint_error(&format!("cannot start the reactor: {error}"));
            return finish_output(ExitStatus::Failure);
        }
    };
    reactor.handle_signals();
    if command.stops_on_output_error() {
        let stopper = reactor.clone();
        ON_OUTPUT_ERROR.with(|hook| {
            *hook.borrow_mut() = Some(Box::new(move || {
                // Fails only when a stop is already under way.
                let _ = stopper.stop();
            }));
        });
    }
    let status = match command.start(&reactor) {
        Err(error) => {
            eprint_error(&error.message);
            error.status
        }
        Ok(()) => match reactor.run() {
            Ok(stopped) => command.finish(stopped),
            Err(error) => {
                eprint_error(&error.to_string());
                ExitStatus::Failure
            }
        },
    };
    ON_OUTPUT_ERROR.with(|hook| hook.borrow_mut().take());
    finish_output(status)
}

/// Applies the stdout policy to a command's `status` (also for commands that need no
/// reactor): flushes stdout, and if a write failed other than on a closed pipe, says
/// so and turns success into failure.
pub fn finish_output(status: ExitStatus) -> ExitStatus {
    let _ = stdout().flush();
    let failed = WRITE_ERROR
        .lock()
        .map(|error| error.as_ref().map(os_words))
        .unwrap_or(None);
    match failed {
        Some(words) => {
            eprint_error(&format!("cannot write output: {words}"));
            status.or_failure()
        }
        None => status,
    }
}

/// Prints `twistctl: MESSAGE` on stderr: the one prefix of runtime errors.
pub fn eprint_error(message: &str) {
    let _ = writeln!(io::stderr().lock(), "twistctl: {message}");
}

/// Stdout as commands write to it: each write goes straight to the process's stdout
/// and a failure is recorded for the policy (the caller sees the error too, and
/// usually stops writing).
#[derive(Debug, Default, Clone, Copy)]
pub struct Stdout;

/// The policed stdout.
pub fn stdout() -> Stdout {
    Stdout
}

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        record(io::stdout().lock().write(buf))
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        record(io::stdout().lock().write_all(buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        record(io::stdout().lock().flush())
    }
}

/// Writes one line to the policed stdout and flushes it, so that a reader sees it at
/// once; `Err` tells the caller to stop (the error is already recorded).
pub fn print_line(line: &str) -> io::Result<()> {
    let mut out = stdout();
    out.write_all(format!("{line}\n").as_bytes())
        .and_then(|()| out.flush())
}

/// True once stdout has failed or been closed: there is no point writing more.
pub fn stdout_gone() -> bool {
    PIPE_CLOSED.load(Ordering::Relaxed) || WRITE_ERROR.lock().is_ok_and(|e| e.is_some())
}

static PIPE_CLOSED: AtomicBool = AtomicBool::new(false);
static WRITE_ERROR: Mutex<Option<io::Error>> = Mutex::new(None);

thread_local! {
    /// Stops the running command's reactor (set by [`run`], on the reactor thread).
    static ON_OUTPUT_ERROR: RefCell<Option<Box<dyn Fn()>>> = const { RefCell::new(None) };
}

fn record<T>(result: io::Result<T>) -> io::Result<T> {
    if let Err(error) = &result {
        if error.kind() == io::ErrorKind::BrokenPipe {
            PIPE_CLOSED.store(true, Ordering::Relaxed);
        } else if let Ok(mut first) = WRITE_ERROR.lock()
            && first.is_none()
        {
            *first = Some(match error.raw_os_error() {
                Some(code) => io::Error::from_raw_os_error(code),
                None => io::Error::new(error.kind(), error.to_string()),
            });
            ON_OUTPUT_ERROR.with(|hook| {
                if let Some(stop) = hook.borrow().as_ref() {
                    stop();
                }
            });
        }
    }
    result
}

/// An OS error's message without the " (os error 111)" that Rust appends.
pub fn os_words(error: &io::Error) -> String {
    let Some(code) = error.raw_os_error() else {
        return words_of(error);
    };
    // A scan meets the same few error numbers thousands of times, and an error number's
    // words never change within a run, so each is looked up once.
    thread_local! {
        static WORDS: RefCell<std::collections::HashMap<i32, String>> =
            RefCell::default();
    }
    WORDS.with(|words| {
        words
            .borrow_mut()
            .entry(code)
            .or_insert_with(|| words_of(error))
            .clone()
    })
}

fn words_of(error: &io::Error) -> String {
    let mut text = error.to_string();
    if let Some(at) = text.rfind(" (os error ")
        && text.ends_with(')')
    {
        text.truncate(at);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_words_drop_the_error_number() {
        let error = io::Error::from_raw_os_error(libc::ENOSPC);
        assert_eq!(os_words(&error), "No space left on device");
    }

    #[test]
    fn signals_map_to_their_status_and_other_stops_to_success() {
        use crate::reactor::Signal;
        assert_eq!(
            status_for(StopReason::Signal(Signal::Terminate)).code(),
            143
        );
        assert_eq!(status_for(StopReason::Stopped), ExitStatus::Success);
    }
}
