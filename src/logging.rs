//! Logging to stderr through `env_logger`, set by `-v`/`-q` or `RUST_LOG`.

use log::LevelFilter;

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
        .target(env_logger::Target::Stderr);
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
