//! Logging to stderr through `env_logger`, set by `-v`/`-q` or `RUST_LOG`.
//!
//! Messages are for people: `twistctl: warning: ...` at the default level, and at
//! `-v` plain `twistctl: ...` lines saying what is being done (addresses resolved,
//! each attempt, its outcome and time). No timestamps and no module paths, except at
//! `-vv` and up, where the reactor's debug lines say where they come from.

use std::io::Write;

use log::{Level, LevelFilter};

/// The log level the flags ask for: warnings by default, `-v` info, `-vv` debug,
/// `-vvv` trace, `-q` nothing.
pub fn level(verbose: u8, quiet: bool) -> LevelFilter {
    if quiet {
        return LevelFilter::Off;
    }
    match verbose {
        0 => LevelFilter::Warn,
        1 => LevelFilter::Info,
        2 => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    }
}

/// Starts logging to stderr. `RUST_LOG`, when set, takes precedence over the flags.
/// rustyline's own logging stays at warnings: its debug output can stall the prompt.
pub fn init(verbose: u8, quiet: bool) {
    let mut builder = env_logger::Builder::new();
    builder
        .filter_level(level(verbose, quiet))
        .filter_module("rustyline", LevelFilter::Warn)
        .target(env_logger::Target::Stderr)
        .format(|out, record| match record.level() {
            Level::Error => writeln!(out, "twistctl: {}", record.args()),
            Level::Warn => writeln!(out, "twistctl: warning: {}", record.args()),
            Level::Info => writeln!(out, "twistctl: {}", record.args()),
            level => writeln!(
                out,
                "twistctl: [{} {}] {}",
                level.as_str().to_lowercase(),
                record.module_path().unwrap_or("?"),
                record.args()
            ),
        });
    if let Ok(spec) = std::env::var("RUST_LOG") {
        builder.parse_filters(&spec);
    }
    // A second initialisation (tests calling `run` twice) keeps the first logger.
    let _ = builder.try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_map_to_levels() {
        assert_eq!(level(0, false), LevelFilter::Warn);
        assert_eq!(level(1, false), LevelFilter::Info);
        assert_eq!(level(2, false), LevelFilter::Debug);
        assert_eq!(level(5, false), LevelFilter::Trace);
        assert_eq!(level(0, true), LevelFilter::Off);
    }
}
