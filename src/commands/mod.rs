//! The subcommands: each is a protocol and/or factory wired into the reactor, plus its
//! output.

pub mod conntest;

use crate::cli::{Cli, Command};
use crate::exit::ExitStatus;

/// Runs the chosen subcommand and returns its exit status.
pub fn run(cli: Cli) -> ExitStatus {
    match cli.command {
        Command::Conntest(args) => conntest::run(&args, cli.quiet),
        Command::TimerDemo(_) | Command::TalkServer(_) | Command::TalkClient(_) => {
            eprintln!("twistctl: this subcommand is not available in this build yet");
            ExitStatus::Failure
        }
    }
}
