//! The subcommands: each is a protocol and/or factory wired into the reactor, plus its
//! output.

pub mod completions;
pub mod conntest;
pub mod dirs;
pub mod talk;
pub mod timer_demo;

#[cfg(test)]
pub(crate) mod test_support;

use crate::cli::{Cli, Command};
use crate::exit::ExitStatus;

/// Runs the chosen subcommand and returns its exit status.
pub fn run(cli: Cli) -> ExitStatus {
    match cli.command {
        Command::TimerDemo(args) => timer_demo::run(&args),
        Command::Conntest(args) => conntest::run(&args, cli.quiet),
        Command::Completions(args) => completions::run(&args),
        Command::TalkServer(args) => talk::talk_server::run(&args),
        Command::TalkClient(args) => talk::client::run(&args),
    }
}
