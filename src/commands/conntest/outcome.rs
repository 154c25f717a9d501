//! What a check found, in the terms the output and the exit status use.
//!
//! Reasons are the OS's own words ("Connection refused", "No route to host"), the way
//! the classic tutorial prints them, plus what was tried when that helps
//! ("Connection timed out after 10s", "could not resolve host 'db': ...").

use std::net::SocketAddr;
use std::time::Duration;

use crate::exit::ExitStatus;
use crate::reactor::ConnectError;
use crate::reactor::endpoints::ResolveError;

pub use super::probe::Findings;

/// The status of a target, as `--json` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The handshake completed.
    Open,
    /// The host answered with a reset (ECONNREFUSED).
    Refused,
    /// No answer within the timeout (ours, or the kernel's).
    Timeout,
    /// No route to the host or network.
    Unreachable,
    /// The name gave no address.
    Unresolved,
    /// Any other failure (a reset, a local error).
    Error,
    /// Stopped because another target was up (`--any`).
    Cancelled,
    /// Connected, but the TLS handshake failed.
    TlsError,
    /// Connected, but the certificate failed verification.
    CertInvalid,
    /// Connected, but the certificate expires sooner than `--cert-days`.
    CertExpiring,
    /// Connected, but the server refused the STARTTLS upgrade.
    StarttlsRefused,
    /// Connected, but the reply did not match `--expect`.
    Mismatch,
    /// `--closed`: nothing accepts (the check passed).
    Closed,
    /// `--closed`: it still accepts connections.
    StillOpen,
}

impl Status {
    /// The name used in `--json`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Open => "open",
            Status::Refused => "refused",
            Status::Timeout => "timeout",
            Status::Unreachable => "unreachable",
            Status::Unresolved => "unresolved",
            Status::Error => "error",
            Status::Cancelled => "cancelled",
            Status::TlsError => "tls-error",
            Status::CertInvalid => "cert-invalid",
            Status::CertExpiring => "cert-expiring",
            Status::StarttlsRefused => "starttls-refused",
            Status::Mismatch => "mismatch",
            Status::Closed => "closed",
            Status::StillOpen => "still-open",
        }
    }

    /// True when the target passed: open, or closed under `--closed`.
    pub fn passed(self) -> bool {
        matches!(self, Status::Open | Status::Closed)
    }

    /// True for a failure of the check on an established connection (exit status 4).
    pub fn is_check_failure(self) -> bool {
        matches!(
            self,
            Status::TlsError
                | Status::CertInvalid
                | Status::CertExpiring
                | Status::StarttlsRefused
                | Status::Mismatch
        )
    }
}

/// What one target ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// What happened (under `--wait`: what the last attempt saw).
    pub status: Status,
    /// The address that answered or was last tried.
    pub addr: Option<SocketAddr>,
    /// Why it is not open, in words; `None` when open or cancelled.
    pub reason: Option<String>,
    /// The `--wait` deadline passed with the target still down: exit status 124
    /// whatever the last attempt saw.
    pub gave_up_waiting: bool,
    /// What the check on the connection found (TLS details, the banner).
    pub found: Findings,
}

/// The exit status of a connection whose check failed.
pub const CHECK_FAILED: ExitStatus = ExitStatus::Code(4);

impl Outcome {
    /// One attempt's outcome: nothing found (yet), not given up waiting.
    pub fn new(status: Status, addr: Option<SocketAddr>, reason: Option<String>) -> Outcome {
        Outcome {
            status,
            addr,
            reason,
            gave_up_waiting: false,
            found: Findings::default(),
        }
    }

    /// The target is up.
    pub fn open(addr: SocketAddr) -> Outcome {
        Outcome::new(Status::Open, Some(addr), None)
    }

    /// The UNIX socket accepted (and its check passed).
    pub fn open_unix() -> Outcome {
        Outcome::new(Status::Open, None, None)
    }

    /// Checking stopped because another target was up.
    pub fn cancelled(addr: Option<SocketAddr>) -> Outcome {
        Outcome::new(Status::Cancelled, addr, None)
    }

    /// A connection attempt failed; `timeout` is the attempt timeout, for the message.
    pub fn connect_failed(
        addr: Option<SocketAddr>,
        error: &ConnectError,
        timeout: Duration,
    ) -> Outcome {
        let (status, reason) = match error {
            ConnectError::Refused(e) => (Status::Refused, os_words(e)),
            ConnectError::TimedOut => (
                Status::Timeout,
                format!(
                    "Connection timed out after {}",
                    crate::duration::format(timeout)
                ),
            ),
            ConnectError::KernelTimedOut(e) => (Status::Timeout, os_words(e)),
            ConnectError::Unreachable(e) => (Status::Unreachable, os_words(e)),
            ConnectError::Dns(message) => (Status::Unresolved, message.clone()),
            ConnectError::UserAborted => return Outcome::cancelled(addr),
            ConnectError::Bind(e) | ConnectError::Other(e) => (Status::Error, os_words(e)),
        };
        Outcome::new(status, addr, Some(reason))
    }

    /// The host name gave no address. A lookup that twistctl's own `--timeout` cut
    /// off is a time-out (124), not an unknown name (3); the resolver's own time-out
    /// (its words in [`ResolveError::Failed`]) stays a resolution failure.
    pub fn unresolved(host: &str, error: &ResolveError) -> Outcome {
        let (status, reason) = match error {
            ResolveError::NoAnswer(after) => (
                Status::Timeout,
                format!(
                    "lookup of '{host}' timed out after {}",
                    crate::duration::format(*after)
                ),
            ),
            _ => (
                Status::Unresolved,
                format!("could not resolve host '{host}': {error}"),
            ),
        };
        Outcome::new(status, None, Some(reason))
    }

    /// The `--wait` deadline passed with the target down; `last` is what its last
    /// finished attempt saw, if any attempt finished, and `trying` the address an
    /// unfinished attempt was trying.
    pub fn gave_up(last: Option<Outcome>, trying: Option<SocketAddr>, waited: Duration) -> Outcome {
        let waited = crate::duration::format(waited);
        match last {
            Some(last) if last.status == Status::StillOpen => Outcome {
                reason: last
                    .reason
                    .map(|reason| format!("{reason} after waiting {waited}")),
                gave_up_waiting: true,
                ..last
            },
            Some(last) => Outcome {
                reason: Some(match last.reason {
                    Some(reason) => format!("{reason} (still down after waiting {waited})"),
                    None => format!("still down after waiting {waited}"),
                }),
                gave_up_waiting: true,
                ..last
            },
            None => Outcome {
                gave_up_waiting: true,
                ..Outcome::new(
                    Status::Timeout,
                    trying,
                    Some(format!("No answer within the --wait time of {waited}")),
                )
            },
        }
    }

    /// `--closed` turns the outcome around: nothing accepting (refused, unreachable,
    /// timed out, no such socket) passes as closed; a connection that opened fails as
    /// still open. A name that does not resolve stays what it is.
    pub fn inverted(self, place: &str) -> Outcome {
        match self.status {
            Status::Open => Outcome {
                status: Status::StillOpen,
                reason: Some(format!("{place} is still open")),
                ..self
            },
            Status::Refused | Status::Unreachable | Status::Timeout | Status::Error => Outcome {
                status: Status::Closed,
                ..self
            },
            _ => self,
        }
    }

    /// This target's exit status.
    pub fn exit_status(&self) -> ExitStatus {
        if self.gave_up_waiting {
            return ExitStatus::TimedOut;
        }
        match self.status {
            Status::Open | Status::Closed => ExitStatus::Success,
            Status::StillOpen => ExitStatus::Failure,
            Status::Refused | Status::Unreachable | Status::Error | Status::Cancelled => {
                ExitStatus::Failure
            }
            Status::Unresolved => ExitStatus::Unresolved,
            Status::Timeout => ExitStatus::TimedOut,
            status if status.is_check_failure() => CHECK_FAILED,
            _ => ExitStatus::Failure,
        }
    }
}

pub use crate::commands::scaffold::os_words;

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::rc::Rc;

    fn addr() -> Option<SocketAddr> {
        Some("127.0.0.1:80".parse().unwrap())
    }

    #[test]
    fn os_errors_read_like_the_os_says_them() {
        let refused = io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert_eq!(os_words(&refused), "Connection refused");
        // Asked again (now from the cache), and for another number: each its own words.
        assert_eq!(os_words(&refused), "Connection refused");
        let unreachable = io::Error::from_raw_os_error(libc::EHOSTUNREACH);
        assert_eq!(os_words(&unreachable), "No route to host");
        assert_eq!(os_words(&io::Error::other("plain")), "plain");
    }

    #[test]
    fn each_connect_error_maps_to_its_status_reason_and_exit_code() {
        let ten = Duration::from_secs(10);
        let os = |n| Rc::new(io::Error::from_raw_os_error(n));
        let cases = [
            (
                ConnectError::Refused(os(libc::ECONNREFUSED)),
                Status::Refused,
                "Connection refused",
                1,
            ),
            (
                ConnectError::TimedOut,
                Status::Timeout,
                "Connection timed out after 10s",
                124,
            ),
            (
                ConnectError::KernelTimedOut(os(libc::ETIMEDOUT)),
                Status::Timeout,
                "Connection timed out",
                124,
            ),
            (
                ConnectError::Unreachable(os(libc::EHOSTUNREACH)),
                Status::Unreachable,
                "No route to host",
                1,
            ),
            (
                ConnectError::Other(os(libc::ECONNRESET)),
                Status::Error,
                "Connection reset by peer",
                1,
            ),
        ];
        for (error, status, reason, code) in cases {
            let outcome = Outcome::connect_failed(addr(), &error, ten);
            assert_eq!(outcome.status, status, "{error}");
            assert_eq!(outcome.reason.as_deref(), Some(reason));
            assert_eq!(outcome.exit_status().code(), code, "{error}");
        }
        let aborted = Outcome::connect_failed(addr(), &ConnectError::UserAborted, ten);
        assert_eq!(aborted.status, Status::Cancelled);
    }

    #[test]
    fn unresolved_names_say_which_host_and_exit_3() {
        let outcome = Outcome::unresolved(
            "nosuch.invalid",
            &ResolveError::Failed("Name or service not known".into()),
        );
        assert_eq!(
            outcome.reason.as_deref(),
            Some("could not resolve host 'nosuch.invalid': Name or service not known")
        );
        assert_eq!(outcome.exit_status(), ExitStatus::Unresolved);
    }

    #[test]
    fn a_lookup_cut_off_by_the_timeout_is_a_timeout_with_status_124() {
        let outcome = Outcome::unresolved("db", &ResolveError::NoAnswer(Duration::from_secs(10)));
        assert_eq!(outcome.status, Status::Timeout);
        assert_eq!(
            outcome.reason.as_deref(),
            Some("lookup of 'db' timed out after 10s")
        );
        assert_eq!(outcome.exit_status(), ExitStatus::TimedOut);
    }

    #[test]
    fn giving_up_waiting_keeps_the_last_status_and_exits_124() {
        let refused = Outcome::connect_failed(
            addr(),
            &ConnectError::Refused(Rc::new(io::Error::from_raw_os_error(libc::ECONNREFUSED))),
            Duration::from_secs(1),
        );
        let gave_up = Outcome::gave_up(Some(refused), None, Duration::from_secs(5));
        assert_eq!(gave_up.status, Status::Refused);
        assert_eq!(
            gave_up.reason.as_deref(),
            Some("Connection refused (still down after waiting 5s)")
        );
        assert_eq!(gave_up.exit_status(), ExitStatus::TimedOut);
        let nothing = Outcome::gave_up(None, addr(), Duration::from_millis(1500));
        assert_eq!(nothing.status, Status::Timeout);
        assert_eq!(nothing.addr, addr());
        assert_eq!(nothing.exit_status(), ExitStatus::TimedOut);
        assert!(nothing.reason.unwrap().contains("1.5s"));
    }
}
