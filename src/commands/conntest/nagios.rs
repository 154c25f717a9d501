//! `--nagios`: results as a check command of Nagios, Icinga, Naemon, Sensu or Checkmk
//! reads them, by the Monitoring Plugins guidelines: one status line
//! `CONNTEST OK - text|perfdata`, further lines for several targets, and the exit status
//! 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.
//!
//! Pure formatting: the caller passes what each target's check found.
//!
//! How a status becomes a state ([`state_of`]): a target that passed (open, or closed
//! under `--closed`) is OK unless a threshold says otherwise; every failure to connect
//! or of the check on the connection (refused, timeout, unreachable, error,
//! tls-error, cert-invalid, cert-expiring, starttls-refused, mismatch, still-open) is
//! CRITICAL; a name that does not resolve is UNKNOWN, as `check_tcp` has it: the
//! check could not find what to check, which says nothing about the service.

use std::fmt::Write as _;
use std::time::Duration;

use super::outcome::Status;
use crate::commands::scaffold;
use crate::exit::ExitStatus;

/// A service state of the Monitoring Plugins guidelines; the order is "worse".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum State {
    /// Everything as wanted (exit 0).
    Ok,
    /// Above a warning threshold (exit 1).
    Warning,
    /// Failed, or above a critical threshold (exit 2).
    Critical,
    /// The check itself could not run (exit 3).
    Unknown,
}

impl State {
    /// The word the status line starts with.
    pub fn word(self) -> &'static str {
        match self {
            State::Ok => "OK",
            State::Warning => "WARNING",
            State::Critical => "CRITICAL",
            State::Unknown => "UNKNOWN",
        }
    }

    /// The exit status the guidelines give this state.
    pub fn exit_code(self) -> i32 {
        match self {
            State::Ok => 0,
            State::Warning => 1,
            State::Critical => 2,
            State::Unknown => 3,
        }
    }

    /// This state as the command's exit status: OK is plain success, so the shared
    /// rules for success (a failed write turns it into a failure) apply to it.
    pub fn exit_status(self) -> ExitStatus {
        match self {
            State::Ok => ExitStatus::Success,
            other => ExitStatus::Code(other.exit_code()),
        }
    }
}

/// Prints the `CONNTEST UNKNOWN - MESSAGE` line of a check that could not run (a usage
/// error, an unreadable file) on the policed stdout, and gives the UNKNOWN status.
pub fn report_unknown(message: &str) -> ExitStatus {
    let _ = scaffold::print_line(&unknown_line(message));
    State::Unknown.exit_status()
}

/// The thresholds given on the command line; `None` where none was given.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Thresholds {
    /// `--warning DUR`: a response time above it is a warning.
    pub warning: Option<Duration>,
    /// `--critical DUR`: a response time above it is critical.
    pub critical: Option<Duration>,
    /// `--cert-warn-days N`: a certificate expiring in fewer days is a warning.
    pub cert_warn_days: Option<i64>,
    /// `--cert-days N`: a certificate expiring in fewer days is critical.
    pub cert_crit_days: Option<i64>,
}

/// The state a target's status stands for, before any threshold (see the module
/// documentation).
pub fn state_of(status: Status) -> State {
    match status {
        Status::Open | Status::Closed => State::Ok,
        Status::Unresolved | Status::Cancelled => State::Unknown,
        Status::Refused
        | Status::Timeout
        | Status::Unreachable
        | Status::Error
        | Status::TlsError
        | Status::CertInvalid
        | Status::CertExpiring
        | Status::StarttlsRefused
        | Status::Mismatch
        | Status::StillOpen => State::Critical,
    }
}

/// What one target's check found.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetResult {
    /// How the target is named in text (`127.0.0.1 port 443`).
    pub label: String,
    /// A short name for performance data labels (`127.0.0.1:443`).
    pub key: String,
    /// The state the check's status stands for ([`state_of`]); the thresholds can
    /// only make an OK result worse.
    pub base: State,
    /// What happened, in words (`open in 0.41 ms`, `refused`).
    pub text: String,
    /// The response time, when the target answered.
    pub time: Option<Duration>,
    /// Days until the leaf certificate expires, with TLS.
    pub cert_days_left: Option<i64>,
}

impl TargetResult {
    /// The state this result has under these thresholds.
    pub fn state(&self, thresholds: &Thresholds) -> State {
        if self.base != State::Ok {
            return self.base;
        }
        let mut state = State::Ok;
        if let Some(time) = self.time {
            if thresholds.critical.is_some_and(|limit| time > limit) {
                state = state.max(State::Critical);
            } else if thresholds.warning.is_some_and(|limit| time > limit) {
                state = state.max(State::Warning);
            }
        }
        if let Some(days) = self.cert_days_left {
            if thresholds.cert_crit_days.is_some_and(|limit| days < limit) {
                state = state.max(State::Critical);
            } else if thresholds.cert_warn_days.is_some_and(|limit| days < limit) {
                state = state.max(State::Warning);
            }
        }
        state
    }
}

/// The plugin output for these results: the lines to print and the state whose exit
/// code to use (the worst of all targets).
pub fn render(results: &[TargetResult], thresholds: &Thresholds) -> (State, Vec<String>) {
    let states: Vec<State> = results.iter().map(|r| r.state(thresholds)).collect();
    let worst = states.iter().copied().max().unwrap_or(State::Unknown);
    let several = results.len() > 1;
    let perfdata = results
        .iter()
        .map(|r| perfdata(r, thresholds, several))
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let summary = match results {
        [] => "no targets".to_owned(),
        [one] => one.text_with_label(),
        _ => {
            let count = |s: State| states.iter().filter(|&&x| x == s).count();
            let mut text = format!("{} targets", results.len());
            for state in [State::Unknown, State::Critical, State::Warning, State::Ok] {
                let n = count(state);
                if n > 0 {
                    let _ = write!(text, ", {n} {}", state.word().to_lowercase());
                }
            }
            text
        }
    };
    let mut lines = vec![format!(
        "CONNTEST {} - {}{}",
        worst.word(),
        plugin_text(&summary),
        if perfdata.is_empty() {
            String::new()
        } else {
            format!("|{perfdata}")
        }
    )];
    if several {
        for (result, state) in results.iter().zip(&states) {
            lines.push(plugin_text(&format!(
                "{}: {} - {}",
                result.label,
                state.word(),
                result.text
            )));
        }
    }
    (worst, lines)
}

/// Text as a monitoring system reads it: `|` starts the performance data, so one in a
/// label or a server's reply is written `\x7c`, as other peer text is escaped.
fn plugin_text(text: &str) -> String {
    text.replace('|', "\\x7c")
}

/// The line for a command line that could not be used (a usage error under
/// `--nagios`): UNKNOWN, exit 3.
pub fn unknown_line(message: &str) -> String {
    // The first paragraph, on one line: clap lists missing arguments below its
    // sentence, and a monitoring system shows only the first line.
    let first: Vec<&str> = message
        .lines()
        .map(str::trim)
        .take_while(|line| !line.is_empty())
        .collect();
    format!("CONNTEST UNKNOWN - {}", plugin_text(&first.join(" ")))
}

impl TargetResult {
    fn text_with_label(&self) -> String {
        format!("{} {}", self.label, self.text)
    }
}

/// `time=0.000410s;0.5;1;0; cert_days=61;30;7;;` for one target; labels carry the
/// target's key when there are several (and are quoted, as the guidelines require for
/// labels with spaces or colons).
fn perfdata(result: &TargetResult, thresholds: &Thresholds, several: bool) -> String {
    let label = |name: &str| {
        if several {
            format!("'{name} {}'", result.key.replace('\'', ""))
        } else {
            name.to_owned()
        }
    };
    let seconds = |d: Option<Duration>| d.map(|d| trim(d.as_secs_f64())).unwrap_or_default();
    let days = |d: Option<i64>| d.map(|d| d.to_string()).unwrap_or_default();
    let mut out = Vec::new();
    if let Some(time) = result.time {
        out.push(format!(
            "{}={:.6}s;{};{};0;",
            label("time"),
            time.as_secs_f64(),
            seconds(thresholds.warning),
            seconds(thresholds.critical)
        ));
    }
    if let Some(left) = result.cert_days_left {
        out.push(format!(
            "{}={left};{};{};;",
            label("cert_days"),
            days(thresholds.cert_warn_days),
            days(thresholds.cert_crit_days)
        ));
    }
    out.join(" ")
}

/// A number of seconds without trailing zeros: `0.5`, `1`, `0.025`.
fn trim(seconds: f64) -> String {
    let text = format!("{seconds:.6}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(ms: f64, cert_days: Option<i64>) -> TargetResult {
        TargetResult {
            label: "127.0.0.1 port 443".into(),
            key: "127.0.0.1:443".into(),
            base: State::Ok,
            text: format!("open in {ms} ms"),
            time: Some(Duration::from_secs_f64(ms / 1000.0)),
            cert_days_left: cert_days,
        }
    }

    #[test]
    fn one_target_one_line_with_perfdata() {
        let thresholds = Thresholds {
            warning: Some(Duration::from_millis(500)),
            critical: Some(Duration::from_secs(1)),
            cert_warn_days: Some(30),
            cert_crit_days: Some(7),
        };
        let mut result = open(0.41, Some(61));
        result.text = "open in 0.41 ms, certificate expires in 61 days".into();
        let (state, lines) = render(&[result], &thresholds);
        assert_eq!(state, State::Ok);
        assert_eq!(
            lines,
            vec![
                "CONNTEST OK - 127.0.0.1 port 443 open in 0.41 ms, certificate expires in 61 days|time=0.000410s;0.5;1;0; cert_days=61;30;7;;"
            ]
        );
    }

    #[test]
    fn thresholds_left_out_leave_their_perfdata_fields_empty() {
        let (state, lines) = render(&[open(2.5, None)], &Thresholds::default());
        assert_eq!(state, State::Ok);
        assert!(lines[0].ends_with("|time=0.002500s;;;0;"), "{}", lines[0]);
    }

    #[test]
    fn response_time_thresholds() {
        let thresholds = Thresholds {
            warning: Some(Duration::from_millis(1)),
            critical: Some(Duration::from_millis(10)),
            ..Thresholds::default()
        };
        assert_eq!(open(0.5, None).state(&thresholds), State::Ok);
        assert_eq!(open(5.0, None).state(&thresholds), State::Warning);
        assert_eq!(open(50.0, None).state(&thresholds), State::Critical);
    }

    #[test]
    fn certificate_day_thresholds() {
        let thresholds = Thresholds {
            cert_warn_days: Some(30),
            cert_crit_days: Some(7),
            ..Thresholds::default()
        };
        assert_eq!(open(1.0, Some(30)).state(&thresholds), State::Ok);
        assert_eq!(open(1.0, Some(29)).state(&thresholds), State::Warning);
        assert_eq!(open(1.0, Some(6)).state(&thresholds), State::Critical);
        assert_eq!(open(1.0, Some(-3)).state(&thresholds), State::Critical);
    }

    #[test]
    fn a_failed_check_is_critical_with_exit_2() {
        let refused = TargetResult {
            base: State::Critical,
            text: "refused".into(),
            time: None,
            ..open(0.0, None)
        };
        let (state, lines) = render(&[refused], &Thresholds::default());
        assert_eq!((state, state.exit_code()), (State::Critical, 2));
        assert_eq!(
            lines,
            vec!["CONNTEST CRITICAL - 127.0.0.1 port 443 refused"]
        );
    }

    #[test]
    fn several_targets_worst_wins_summary_then_a_line_each() {
        let thresholds = Thresholds {
            warning: Some(Duration::from_millis(1)),
            ..Thresholds::default()
        };
        let slow = TargetResult {
            label: "db port 5432".into(),
            key: "db:5432".into(),
            ..open(3.0, None)
        };
        let (state, lines) = render(&[open(0.2, None), slow], &thresholds);
        assert_eq!((state, state.exit_code()), (State::Warning, 1));
        assert_eq!(
            lines[0],
            "CONNTEST WARNING - 2 targets, 1 warning, 1 ok|'time 127.0.0.1:443'=0.000200s;0.001;;0; 'time db:5432'=0.003000s;0.001;;0;"
        );
        assert_eq!(lines[1], "127.0.0.1 port 443: OK - open in 0.2 ms");
        assert_eq!(lines[2], "db port 5432: WARNING - open in 3 ms");
    }

    #[test]
    fn each_status_has_its_state() {
        assert_eq!(state_of(Status::Open), State::Ok);
        assert_eq!(state_of(Status::Closed), State::Ok);
        for status in [
            Status::Refused,
            Status::Timeout,
            Status::Unreachable,
            Status::Error,
            Status::TlsError,
            Status::CertInvalid,
            Status::CertExpiring,
            Status::StarttlsRefused,
            Status::Mismatch,
            Status::StillOpen,
        ] {
            assert_eq!(state_of(status), State::Critical, "{status:?}");
        }
        assert_eq!(state_of(Status::Unresolved), State::Unknown);
    }

    #[test]
    fn a_failed_target_stays_failed_whatever_the_thresholds() {
        let unresolved = TargetResult {
            base: State::Unknown,
            time: None,
            ..open(0.0, None)
        };
        let (state, _) = render(&[open(0.1, None), unresolved], &Thresholds::default());
        assert_eq!((state, state.exit_code()), (State::Unknown, 3));
    }

    #[test]
    fn a_bar_in_the_text_cannot_start_the_performance_data() {
        let mut result = open(1.0, None);
        result.text = "mismatch: got \"a|b\"".into();
        result.base = State::Critical;
        result.time = None;
        let (_, lines) = render(&[result], &Thresholds::default());
        assert_eq!(
            lines,
            vec!["CONNTEST CRITICAL - 127.0.0.1 port 443 mismatch: got \"a\\x7cb\""]
        );
        assert_eq!(
            unknown_line("invalid value 'x' for '--warning <DUR>'\n\nmore"),
            "CONNTEST UNKNOWN - invalid value 'x' for '--warning <DUR>'"
        );
        assert_eq!(
            unknown_line(
                "the following required arguments were not provided:\n  <TARGET>...\n\nUsage: ..."
            ),
            "CONNTEST UNKNOWN - the following required arguments were not provided: <TARGET>..."
        );
    }

    #[test]
    fn states_order_and_codes() {
        assert!(State::Ok < State::Warning && State::Warning < State::Critical);
        assert!(State::Critical < State::Unknown);
        assert_eq!(State::Unknown.exit_code(), 3);
        // OK is plain success, so a failed write can still turn it into a failure.
        assert_eq!(State::Ok.exit_status(), ExitStatus::Success);
        assert_eq!(State::Ok.exit_status().or_failure(), ExitStatus::Failure);
        assert_eq!(State::Critical.exit_status(), ExitStatus::Code(2));
    }
}
