//! twistctl: a Twisted-style reactor on `mio`, and the network tools built on it.
//!
//! - [`reactor`]: the event loop, timers, Deferreds, protocols, TCP.
//! - [`protocols`]: reusable protocols on the reactor (line framing).
//! - [`commands`]: the subcommands; [`cli`]: their command line.
//! - [`duration`]: durations as people write and read them, for every layer.
#![warn(missing_docs)]
pub mod cli;
pub mod commands;
pub mod duration;
pub mod exit;
pub mod logging;
pub mod protocols;
pub mod reactor;

/// Parses the command line, starts logging, runs the subcommand; returns the exit status.
pub fn main_with_args<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
    let (verbose, quiet, config) = match cli::parse(args.iter()) {
        Ok(parsed) => parsed,
        // --help and --version are not errors; clap knows which is which.
        Err(error) => return cli::report_error(&error, &args),
    };
    logging::init(verbose, quiet);
    commands::run(config).code()
}

/// The README's Rust examples, compiled and run as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
