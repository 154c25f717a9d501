//! `-v`: every address a connect tried, when it started, how it ended and how long it
//! took, one log line each. Shared by the commands that connect to a name (conntest,
//! talk-client), each giving its own words for a failure.

use crate::reactor::endpoints::{Attempt, AttemptOutcome, Connection, EndpointError};
use crate::reactor::{ConnectError, Outcome};

/// The attempts a finished hostname connect made: its connection's, or its failure's
/// (none when the failure is not the endpoint's).
pub fn tried(outcome: &Outcome<Connection>) -> Option<&[Attempt]> {
    match outcome {
        Ok(connection) => Some(&connection.attempts),
        Err(failure) => failure
            .downcast_ref::<EndpointError>()
            .map(|error| &error.attempts[..]),
    }
}

/// Logs `attempts` at the info level (shown with `-v`) under `place`
/// (`db port 5432`); `failure` words a failed attempt.
pub fn log_attempts(place: &str, attempts: &[Attempt], failure: impl Fn(&ConnectError) -> String) {
    if !log::log_enabled!(log::Level::Info) {
        return;
    }
    if attempts.is_empty() {
        log::info!("{place}: no address was tried");
    }
    for attempt in attempts {
        let how = match &attempt.outcome {
            AttemptOutcome::Pending => "still pending".to_string(),
            AttemptOutcome::Connected => "connected".to_string(),
            AttemptOutcome::Failed(error) => failure(error),
            AttemptOutcome::Stopped => "stopped (the race was decided)".to_string(),
        };
        let took = attempt
            .took
            .map(|took| format!(" after {}", crate::duration::format(took)))
            .unwrap_or_default();
        log::info!(
            "{place}: trying {} at +{}: {how}{took}",
            attempt.addr,
            crate::duration::format(attempt.started)
        );
    }
}
