//! Exit statuses: decided here, in one place, from typed outcomes (never from message
//! text).

use crate::reactor::Signal;

/// How a subcommand ended, as the process exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// 0: success.
    Success,
    /// 1: a runtime failure (conntest: refused, unreachable or reset).
    Failure,
    /// 2: a usage error.
    Usage,
    /// 3: conntest could not resolve a name.
    Unresolved,
    /// 124: conntest timed out.
    TimedOut,
    /// 128 + n: stopped by a signal (130 SIGINT, 143 SIGTERM).
    Signal(Signal),
    /// Another status, e.g. that of a command conntest ran.
    Code(i32),
}

impl ExitStatus {
    /// The numeric status for `std::process::exit`.
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Success => 0,
            ExitStatus::Failure => 1,
            ExitStatus::Usage => 2,
            ExitStatus::Unresolved => 3,
            ExitStatus::TimedOut => 124,
            ExitStatus::Signal(signal) => signal.exit_code(),
            ExitStatus::Code(code) => code,
        }
    }

    /// This status after a failure that is not worse than any failure: success becomes
    /// [`ExitStatus::Failure`], any other status stays (a write error never hides a
    /// timeout or a signal).
    pub fn or_failure(self) -> ExitStatus {
        match self {
            ExitStatus::Success => ExitStatus::Failure,
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_match_the_documented_codes() {
        assert_eq!(ExitStatus::Success.code(), 0);
        assert_eq!(ExitStatus::Failure.code(), 1);
        assert_eq!(ExitStatus::Usage.code(), 2);
        assert_eq!(ExitStatus::Unresolved.code(), 3);
        assert_eq!(ExitStatus::TimedOut.code(), 124);
        assert_eq!(ExitStatus::Signal(Signal::Interrupt).code(), 130);
        assert_eq!(ExitStatus::Signal(Signal::Terminate).code(), 143);
    }

    #[test]
    fn a_later_failure_replaces_only_success() {
        assert_eq!(ExitStatus::Success.or_failure(), ExitStatus::Failure);
        assert_eq!(ExitStatus::Code(2).or_failure(), ExitStatus::Code(2));
        assert_eq!(ExitStatus::TimedOut.or_failure(), ExitStatus::TimedOut);
        assert_eq!(ExitStatus::Unresolved.or_failure(), ExitStatus::Unresolved);
    }
}
