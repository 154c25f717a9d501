//! The subcommands: each is a protocol and/or factory wired into the reactor, plus its
//! output. Each receives a plain configuration value (built by `src/cli.rs`), never
//! the command line itself, and runs in the one [`scaffold`].

pub mod attempts;
pub mod completions;
pub mod conntest;
pub mod dirs;
pub mod escape;
pub mod scaffold;
pub mod services;
pub mod talk;
pub mod target;
pub mod timer_demo;

#[cfg(test)]
pub(crate) mod test_support;

use crate::exit::ExitStatus;

/// A subcommand with its configuration.
#[derive(Debug, Clone)]
pub enum Config {
    /// `twistctl timer-demo`.
    TimerDemo(timer_demo::Config),
    /// `twistctl conntest`.
    Conntest(conntest::Config),
    /// `twistctl talk-server`.
    TalkServer(talk::talk_server::Config),
    /// `twistctl talk-client`.
    TalkClient(talk::client::Config),
    /// `twistctl completions`.
    Completions(completions::Config),
}

/// Runs the chosen subcommand and returns its exit status.
pub fn run(config: Config) -> ExitStatus {
    match config {
        Config::TimerDemo(config) => timer_demo::run(config),
        Config::Conntest(config) => conntest::run(config),
        Config::Completions(config) => completions::run(config),
        Config::TalkServer(config) => talk::talk_server::run(config),
        Config::TalkClient(config) => talk::client::run(config),
    }
}
