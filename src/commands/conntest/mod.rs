//! `twistctl conntest`: is this port reachable? An answer a shell script can trust.
//!
//! The pieces, one job each:
//! - [`targets`] (with [`services`]): the command line's targets, strictly parsed;
//! - [`resolve`]: name lookups on worker threads, never on the reactor thread;
//! - [`race`]: Happy Eyeballs over one host's addresses;
//! - [`gate`] and [`fdlimit`]: how many attempts may be in flight;
//! - [`check`]: one target checked once; [`session`]: all of them, with `--wait` and
//!   `--any`;
//! - [`outcome`] and [`output`]: what was found, printed in target order.
//!
//! Everything runs on one reactor; the only blocking calls (name lookups) run on its
//! worker threads, and IP literals never touch them.

pub mod check;
pub mod expect;
pub mod fdlimit;
pub mod gate;
pub mod nagios;
pub mod outcome;
pub mod output;
pub mod race;
pub mod resolve;
pub mod services;
pub mod session;
pub mod starttls;
pub mod targets;
pub mod watch;

use std::io::{self, Write};
use std::rc::Rc;

use crate::cli::ConntestArgs;
use crate::exit::ExitStatus;
use crate::reactor::{Reactor, StopReason};

use check::CheckContext;
use gate::Gate;
use output::{OutputOptions, Printer};
use resolve::Resolver;
use services::{SERVICES_PATH, ServiceDb};
use session::{Session, SessionOptions};
use targets::{Family, parse_targets};

/// Runs `twistctl conntest` and returns its exit status. `quiet` is the global `-q`:
/// no results are printed (usage errors still are).
pub fn run(args: &ConntestArgs, quiet: bool) -> ExitStatus {
    let family = match (args.ipv4, args.ipv6) {
        (true, _) => Family::V4,
        (_, true) => Family::V6,
        _ => Family::Any,
    };
    let services = ServiceDb::at(SERVICES_PATH);
    let targets = match parse_targets(&args.targets, family, &services) {
        Ok(targets) => targets,
        Err(error) => {
            let _ = writeln!(
                io::stderr().lock(),
                "error: {error}\n\nFor more information, try '--help'."
            );
            return ExitStatus::Usage;
        }
    };
    let soft_limit = fdlimit::raise_nofile_limit();
    let requested = usize::try_from(args.concurrency).unwrap_or(usize::MAX);
    let cap = fdlimit::attempt_cap(requested, soft_limit);
    log::debug!(
        "{} targets, at most {cap} attempts in flight",
        targets.len()
    );

    let reactor = match Reactor::new() {
        Ok(reactor) => reactor,
        Err(error) => {
            let _ = writeln!(io::stderr().lock(), "twistctl: {error}");
            return ExitStatus::Failure;
        }
    };
    reactor.handle_signals();
    let ctx = Rc::new(CheckContext {
        reactor: reactor.clone(),
        gate: Gate::new(cap),
        resolver: Resolver::new(&reactor, args.timeout, family),
        timeout: args.timeout,
    });
    let output = OutputOptions {
        json: args.json,
        open_only: args.open,
        quiet,
        single: targets.len() == 1,
    };
    let printer = Printer::new(
        output,
        targets.len(),
        io::stdout().lock(),
        io::stderr().lock(),
    );
    let options = SessionOptions {
        wait: args.wait,
        interval: args.interval,
        any: args.any,
    };
    let session = Session::start(ctx, targets, options, printer);
    match reactor.run() {
        Ok(StopReason::Signal(signal)) => return ExitStatus::Signal(signal),
        Ok(StopReason::Stopped | StopReason::Crashed) => {}
        Err(error) => {
            let _ = writeln!(io::stderr().lock(), "twistctl: {error}");
            return ExitStatus::Failure;
        }
    }
    let status = session.exit_status();
    match args.command.split_first() {
        Some((program, rest)) if status == ExitStatus::Success => exec(program, rest),
        _ => status,
    }
}

/// Replaces this process with `program` (the `-- CMD` of a successful check), as
/// `exec "$@"` does in a wrapper script: the command keeps the process id (PID 1 in a
/// container stays the real server), gets signals directly, and its exit status (or
/// the signal that killed it) is what the caller sees. Returns only if the exec
/// failed: 127 when the program was not found, 126 when it could not be run.
fn exec(program: &str, args: &[String]) -> ExitStatus {
    use std::os::unix::process::CommandExt;
    let _ = io::stdout().lock().flush();
    let error = std::process::Command::new(program).args(args).exec();
    let _ = writeln!(
        io::stderr().lock(),
        "twistctl: could not run '{program}': {}",
        outcome::os_words(&error)
    );
    if error.kind() == io::ErrorKind::NotFound {
        ExitStatus::Code(127)
    } else {
        ExitStatus::Code(126)
    }
}
