//! `twistctl conntest`: is this port reachable? An answer a shell script can trust.
//!
//! The pieces, one job each:
//! - [`targets`] (with [`services`]): the command line's targets, strictly parsed;
//! - [`gate`] and [`fdlimit`]: how many attempts may be in flight;
//! - [`check`]: one target checked once, through the reactor's hostname endpoint
//!   (name lookups on worker threads, Happy Eyeballs); [`session`]: all of them, with
//!   `--wait` and `--any`;
//! - [`outcome`] and [`output`]: what was found, printed in target order (or, with
//!   `--nagios`, as a monitoring plugin's lines, [`nagios`]).
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
pub mod probe;
pub mod session;
pub mod starttls;
pub mod watch;

// The target grammar and the services database are shared with talk-client.
pub use crate::commands::services;
pub use crate::commands::target as targets;

use std::io::{self, Write};
use std::rc::Rc;
use std::time::Duration;

use super::scaffold::{self, Command, CommandError};
use crate::exit::ExitStatus;
use crate::reactor::endpoints::Resolver;
use crate::reactor::{Reactor, Signal, StopReason};

use check::CheckContext;
use gate::Gate;
use output::{OutputOptions, Printer};
use session::{Session, SessionOptions};
use targets::{Family, Target};
use watch::probe::CheckProber;
use watch::{Watch, WatchOptions, WatchTarget};

/// What `twistctl conntest` was asked to do, already checked: the command line
/// (`src/cli.rs`) builds it, tests can too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The targets, in the order given; never empty.
    pub targets: Vec<Target>,
    /// `-4` / `-6`.
    pub family: Family,
    /// One connection attempt's (and one name lookup's) timeout; above zero.
    pub timeout: Duration,
    /// `--wait`: retry down targets until this long after the start.
    pub wait: Option<Duration>,
    /// `--interval`: time between retries of one target; above zero.
    pub interval: Duration,
    /// `--any`: done as soon as one target is up.
    pub any: bool,
    /// `--open`: print only targets that connected.
    pub open: bool,
    /// `--json`: one object per target.
    pub json: bool,
    /// `--concurrency`: at most this many attempts in flight; at least 1.
    pub concurrency: usize,
    /// `-- CMD`: what to exec once the check passed (empty: nothing).
    pub command: Vec<String>,
    /// `-q`: print no results.
    pub quiet: bool,
    /// `--watch`: probe again and again (then `interval` is the probe interval).
    pub watch: Option<WatchConfig>,
    /// `--closed`: a target passes when nothing accepts.
    pub closed: bool,
    /// What is checked on each connection (`--tls`, `--send`, `--expect`, ...).
    pub probe: Box<probe::ProbeConfig>,
    /// `--nagios`, with its thresholds: monitoring-plugin output and exit status.
    pub nagios: Option<nagios::Thresholds>,
}

/// What `--watch` adds to a [`Config`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchConfig {
    /// `--count`: stop after this many probes per target.
    pub count: Option<u64>,
    /// `--timestamps`: prefix probe lines with the local time.
    pub timestamps: bool,
    /// `--changes`: print only the state-change lines and the summary.
    pub changes_only: bool,
}

/// Runs `twistctl conntest` and returns its exit status.
pub fn run(config: Config) -> ExitStatus {
    scaffold::run(Box::new(Conntest {
        config,
        session: None,
        watch: None,
    }))
}

/// The command: every target checked on one reactor, then `-- CMD` if all passed.
struct Conntest {
    config: Config,
    session: Option<Session<Box<dyn Write>, io::Stderr>>,
    watch: Option<Watch>,
}

impl Command for Conntest {
    fn start(&mut self, reactor: &Reactor) -> Result<(), CommandError> {
        let config = &self.config;
        let soft_limit = fdlimit::raise_nofile_limit();
        let cap = fdlimit::attempt_cap(config.concurrency, soft_limit);
        log::debug!(
            "{} targets, at most {cap} attempts in flight",
            config.targets.len()
        );
        let probe = probe::Prepared::new((*config.probe).clone()).map_err(|error| {
            let message = error.to_string();
            if config.nagios.is_some() {
                // A monitoring system reads stdout and the status: UNKNOWN, 3.
                let status = nagios::report_unknown(&message);
                return CommandError { message, status };
            }
            CommandError {
                message,
                status: ExitStatus::Usage,
            }
        })?;
        let probe = (!probe.is_plain()).then(|| Rc::new(probe));
        let ctx = Rc::new(CheckContext {
            reactor: reactor.clone(),
            gate: Gate::new(cap),
            resolver: Resolver::new(reactor, config.timeout, config.family),
            timeout: config.timeout,
            probe,
            closed: config.closed,
        });
        if let Some(watch) = &config.watch {
            self.watch = Some(start_watch(reactor, ctx, config, watch));
            return Ok(());
        }
        let output = OutputOptions {
            json: config.json,
            open_only: config.open,
            quiet: config.quiet,
            single: config.targets.len() == 1,
            any: config.any,
            nagios: config.nagios,
        };
        // With `-- CMD`, stdout is CMD's alone: everything twistctl says goes to stderr,
        // so `conntest db:5432 -- pg_dump > backup.sql` gets only the dump.
        let out: Box<dyn Write> = if config.command.is_empty() {
            Box::new(scaffold::stdout())
        } else {
            Box::new(io::stderr())
        };
        let printer = Printer::new(output, config.targets.len(), out, io::stderr());
        let options = SessionOptions {
            wait: config.wait,
            interval: config.interval,
            any: config.any,
        };
        self.session = Some(Session::start(
            ctx,
            config.targets.clone(),
            options,
            printer,
        ));
        Ok(())
    }

    fn finish(self: Box<Self>, stopped: StopReason) -> ExitStatus {
        if let Some(watch) = &self.watch {
            watch.stop();
            watch.print_summary();
            // Ctrl-C is how a watch normally ends (as with ping); SIGTERM is not.
            return match stopped {
                StopReason::Signal(signal @ Signal::Terminate) => ExitStatus::Signal(signal),
                _ if watch.every_target_answered() => ExitStatus::Success,
                _ => ExitStatus::Failure,
            };
        }
        if let StopReason::Signal(signal) = stopped {
            // An interrupted --wait says what it was still waiting for.
            if let Some(session) = &self.session
                && self.config.wait.is_some()
                && !self.config.quiet
            {
                let mut err = io::stderr().lock();
                for (target, last) in session.still_down() {
                    let reason = last
                        .and_then(|outcome| outcome.reason)
                        .unwrap_or_else(|| "no answer yet".to_string());
                    let _ = writeln!(err, "Still down: {}: {reason}", target.place());
                }
            }
            return ExitStatus::Signal(signal);
        }
        let status = self
            .session
            .as_ref()
            .map_or(ExitStatus::Failure, Session::exit_status);
        if self.config.nagios.is_some() && scaffold::stdout_gone() {
            // A monitor that got no status line must not read the exit code as OK,
            // WARNING or CRITICAL: the plugin guidelines' UNKNOWN.
            return nagios::State::Unknown.exit_status();
        }
        match self.config.command.split_first() {
            // A failed write is a failure too: CMD runs only after a clean check.
            Some((program, rest)) if status == ExitStatus::Success && !scaffold::stdout_gone() => {
                exec(program, rest)
            }
            _ => status,
        }
    }

    fn stops_on_output_error(&self) -> bool {
        false
    }
}

/// Starts `--watch`: a probe grid over every target, printing to stdout, stopping the
/// reactor after `--count` probes per target or when stdout is gone.
fn start_watch(
    reactor: &Reactor,
    ctx: Rc<CheckContext>,
    config: &Config,
    settings: &WatchConfig,
) -> Watch {
    let targets = config
        .targets
        .iter()
        .map(|t| WatchTarget {
            label: t.place(),
            host: t.host.text.clone(),
            port: t.unix().is_none().then_some(t.port),
        })
        .collect();
    let options = WatchOptions {
        interval: config.interval,
        count: settings.count,
        timeout: config.timeout,
        timestamps: settings.timestamps,
        changes_only: settings.changes_only,
        json: config.json,
    };
    let stopper = reactor.clone();
    let watch = Watch::start(
        Rc::new(reactor.clone()),
        Box::new(CheckProber::new(ctx, config.targets.clone())),
        targets,
        options,
        Box::new(scaffold::stdout()),
        jiff::tz::TimeZone::system(),
        move || {
            // Fails only when a stop is already under way.
            let _ = stopper.stop();
        },
    );
    let interim = watch.clone();
    watch::probe::summary_on_request(reactor, move || interim.print_summary());
    watch
}

/// Replaces this process with `program` (the `-- CMD` of a successful check), as
/// `exec "$@"` does in a wrapper script: the command keeps the process id (PID 1 in a
/// container stays the real server), gets signals directly, and its exit status (or
/// the signal that killed it) is what the caller sees. Returns only if the exec
/// failed: 127 when the program was not found, 126 when it could not be run.
fn exec(program: &str, args: &[String]) -> ExitStatus {
    use std::os::unix::process::CommandExt;
    let _ = scaffold::stdout().flush();
    let error = std::process::Command::new(program).args(args).exec();
    scaffold::eprint_error(&format!(
        "could not run '{program}': {}",
        scaffold::os_words(&error)
    ));
    if error.kind() == io::ErrorKind::NotFound {
        ExitStatus::Code(127)
    } else {
        ExitStatus::Code(126)
    }
}
