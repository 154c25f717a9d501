//! `twistctl completions SHELL`: the completion script for a shell, generated from the
//! same clap definitions as `--help` (the one command that reads them).

use std::io::Write;

use super::scaffold;
use crate::cli;
use crate::exit::ExitStatus;

/// What `twistctl completions` was asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// The shell to complete for.
    pub shell: clap_complete::Shell,
}

/// Writes the completion script for `shell` to `out`.
pub fn generate(shell: clap_complete::Shell, out: &mut dyn Write) {
    clap_complete::generate(shell, &mut cli::command(), "twistctl", out);
}

/// Runs `twistctl completions SHELL`: no reactor is needed, but stdout's policy is the
/// scaffold's, as for every command.
pub fn run(config: Config) -> ExitStatus {
    let mut script = Vec::new();
    generate(config.shell, &mut script);
    let mut out = scaffold::stdout();
    let _ = out.write_all(&script).and_then(|()| out.flush());
    scaffold::finish_output(ExitStatus::Success)
}
