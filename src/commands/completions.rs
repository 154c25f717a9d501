//! `twistctl completions SHELL`: the completion script for a shell, generated from the
//! same clap definitions as `--help`.

use std::io::{self, Write};

use clap::CommandFactory;

use crate::cli::{Cli, CompletionsArgs};
use crate::exit::ExitStatus;

/// Writes the completion script for `shell` to `out`.
pub fn generate(shell: clap_complete::Shell, out: &mut dyn Write) {
    clap_complete::generate(shell, &mut Cli::command(), "twistctl", out);
}

/// Runs `twistctl completions SHELL`.
pub fn run(args: &CompletionsArgs) -> ExitStatus {
    let mut script = Vec::new();
    generate(args.shell, &mut script);
    let mut stdout = io::stdout().lock();
    match stdout.write_all(&script).and_then(|()| stdout.flush()) {
        Ok(()) => ExitStatus::Success,
        Err(error) if error.kind() == io::ErrorKind::BrokenPipe => ExitStatus::Success,
        Err(error) => {
            eprintln!("twistctl completions: cannot write the script: {error}");
            ExitStatus::Failure
        }
    }
}
