//! Printing results: the classic lines, or one JSON object per target, always in the
//! order the targets were given although checks finish in any order; or, with
//! `--nagios`, the monitoring plugin's lines once every result is in.
//!
//! A result is held back until every target before it has one, then printed at once
//! with those that were waiting for it, so a scan's output streams and stays ordered.
//! A closed stream (`twistctl conntest ... | head -1`) ends printing to that stream
//! quietly; it is never a panic and never changes the exit status.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::time::Duration;

use super::nagios::{self, Thresholds};
use super::outcome::{Outcome, Status};
use super::probe::Findings;
use super::targets::Target;
use crate::reactor::endpoints::Attempt;

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputOptions {
    /// `--json`: one object per target on stdout.
    pub json: bool,
    /// `--open`: only targets that connected.
    pub open_only: bool,
    /// `-q`: nothing at all.
    pub quiet: bool,
    /// Exactly one target: the classic lines without the host.
    pub single: bool,
    /// `--any`: the human output names the winner only (the other targets are not
    /// failures); what else happened is logged at `-v`. Without a winner, every
    /// failure prints as usual, at the end.
    pub any: bool,
    /// `--nagios`, with its thresholds: the plugin's lines on stdout, at the end.
    pub nagios: Option<Thresholds>,
}

/// One target's final result.
#[derive(Debug, Clone)]
pub struct Report {
    /// What was checked.
    pub target: Target,
    /// What was found.
    pub outcome: Outcome,
    /// From the start of the run until the result was known.
    pub elapsed: Duration,
}

/// The classic line for a report and whether it goes to stdout, or `None` when the
/// report prints nothing (cancelled).
pub fn human_line(report: &Report, single: bool) -> Option<(bool, String)> {
    let port = report.target.port;
    let place = if single && report.target.unix().is_none() {
        format!("port {port}")
    } else {
        report.target.place()
    };
    match report.outcome.status {
        Status::Open => Some((
            true,
            format!("Connected to {place}{}", details(&report.outcome.found)),
        )),
        Status::Cancelled => None,
        Status::Closed => {
            let reason = report
                .outcome
                .reason
                .as_deref()
                .unwrap_or("nothing accepts");
            Some((
                true,
                format!("Closed: {} ({reason})", report.target.place()),
            ))
        }
        Status::StillOpen => {
            let reason = report.outcome.reason.as_deref().unwrap_or("still open");
            Some((false, reason.to_string()))
        }
        _ => {
            let reason = report.outcome.reason.as_deref().unwrap_or("failed");
            Some((false, format!("Error connecting to {place}: {reason}")))
        }
    }
}

/// What the check on an open connection found, for the human line:
/// ` (TLS 1.3, TLS_AES_256_GCM_SHA384, h2; certificate for example.com, expires
/// 2027-02-01, 61 days left)`, or ` ("SSH-2.0-OpenSSH_9.6")`; empty when nothing was
/// checked.
fn details(found: &Findings) -> String {
    let mut parts = Vec::new();
    if let Some(tls) = &found.tls {
        let mut session = vec![tls.version.replace("TLSv", "TLS "), tls.cipher.clone()];
        session.extend(tls.alpn.clone());
        let mut text = session.join(", ");
        if let Some(cert) = &found.cert {
            let _ = write!(
                text,
                "; certificate for {}, expires {}, {} days left",
                cert.name(),
                cert.expiry_date(),
                cert.days_left
            );
        }
        parts.push(text);
    }
    if let Some(banner) = &found.banner {
        parts.push(format!("\"{banner}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join("; "))
    }
}

/// What `--nagios` reports of a target: its state before thresholds, its words, the
/// response time (from the start of the run to the result) and the certificate's days.
pub fn nagios_result(report: &Report) -> nagios::TargetResult {
    let target = &report.target;
    let outcome = &report.outcome;
    let found = &outcome.found;
    let key = match target.unix() {
        Some(_) => target.host.text.clone(),
        None if target.host.text.contains(':') => {
            format!("[{}]:{}", target.host.text, target.port)
        }
        None => format!("{}:{}", target.host.text, target.port),
    };
    let open = outcome.status == Status::Open;
    let text = match outcome.status {
        Status::Open => {
            let ms = report.elapsed.as_secs_f64() * 1000.0;
            let mut text = format!("open in {ms:.2} ms");
            if let Some(cert) = &found.cert {
                let _ = write!(text, ", certificate expires in {} days", cert.days_left);
            }
            if let Some(banner) = &found.banner {
                let _ = write!(text, ", reply \"{banner}\"");
            }
            text
        }
        Status::Closed => match &outcome.reason {
            Some(reason) => format!("closed ({reason})"),
            None => "closed".to_string(),
        },
        Status::StillOpen => "still open".to_string(),
        status => match &outcome.reason {
            Some(reason) => format!("{}: {reason}", status.as_str()),
            None => status.as_str().to_string(),
        },
    };
    nagios::TargetResult {
        label: target.place(),
        key,
        base: nagios::state_of(outcome.status),
        text,
        time: open.then_some(report.elapsed),
        cert_days_left: found.cert.as_ref().map(|cert| cert.days_left),
    }
}

/// One `--json` line; the fields serialise in this order (those of the checks only
/// where they apply).
#[derive(serde::Serialize)]
struct JsonReport<'a> {
    host: &'a str,
    /// `null` for a UNIX socket.
    port: Option<u16>,
    addr: Option<String>,
    status: &'static str,
    error: Option<&'a str>,
    elapsed_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_version: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cipher: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    alpn: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cert_subject: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cert_issuer: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cert_sans: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cert_not_before: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cert_not_after: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cert_days_left: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cert_sha256: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    banner: Option<&'a str>,
}

/// The `--json` line for a report.
pub fn json_line(report: &Report) -> String {
    let micros = u64::try_from(report.elapsed.as_micros()).unwrap_or(u64::MAX);
    let found = &report.outcome.found;
    let cert = found.cert.as_ref();
    let line = JsonReport {
        host: &report.target.host.text,
        port: report.target.unix().is_none().then_some(report.target.port),
        addr: report.outcome.addr.map(|a| a.to_string()),
        status: report.outcome.status.as_str(),
        error: report.outcome.reason.as_deref(),
        elapsed_ms: micros as f64 / 1000.0,
        tls_version: found.tls.as_ref().map(|t| t.version.as_str()),
        cipher: found.tls.as_ref().map(|t| t.cipher.as_str()),
        alpn: found.tls.as_ref().and_then(|t| t.alpn.as_deref()),
        cert_subject: cert.map(|c| c.subject.as_str()),
        cert_issuer: cert.map(|c| c.issuer.as_str()),
        cert_sans: cert.map(|c| c.sans.as_slice()),
        cert_not_before: cert.map(|c| rfc3339(c.not_before)),
        cert_not_after: cert.map(|c| rfc3339(c.not_after)),
        cert_days_left: cert.map(|c| c.days_left),
        cert_sha256: cert.map(|c| c.sha256.as_str()),
        banner: found.banner.as_deref(),
    };
    // Serialising plain strings and numbers cannot fail; an empty object is the
    // harmless answer if it ever did.
    serde_json::to_string(&line).unwrap_or_else(|_| "{}".to_string())
}

/// `2027-02-01T00:00:00Z`.
fn rfc3339(at: jiff::Timestamp) -> String {
    at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// `-v`: every address tried for a target, in conntest's words for a failure.
pub fn log_attempts(target: &Target, attempts: &[Attempt], timeout: Duration) {
    // Without -v, not even the place is worded (a watch checks this on every probe).
    if !log::log_enabled!(log::Level::Info) {
        return;
    }
    let place = format!("{} port {}", target.host.text, target.port);
    crate::commands::attempts::log_attempts(&place, attempts, |error| {
        Outcome::connect_failed(None, error, timeout)
            .reason
            .unwrap_or_else(|| "cancelled".to_string())
    });
}

/// Buffers results and prints them in target order.
pub struct Printer<O: Write, E: Write> {
    options: OutputOptions,
    out: Option<O>,
    err: Option<E>,
    waiting: Vec<Option<Report>>,
    next: usize,
    /// `--any`: lines held back until it is known whether a target won, each with the
    /// stream its failure goes to (`None`: a target cancelled because another won).
    held: Vec<(Option<bool>, String)>,
    won: bool,
    /// `--nagios`: every target's result, in target order, until the end.
    plugin: Vec<nagios::TargetResult>,
    /// `--nagios`: the state the plugin's lines gave, once printed.
    plugin_state: Option<nagios::State>,
}

impl<O: Write, E: Write> std::fmt::Debug for Printer<O, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Printer")
            .field("options", &self.options)
            .field("next", &self.next)
            .finish()
    }
}

impl<O: Write, E: Write> Printer<O, E> {
    /// A printer for `targets` results, writing to `out` and `err`.
    pub fn new(options: OutputOptions, targets: usize, out: O, err: E) -> Printer<O, E> {
        Printer {
            options,
            out: Some(out),
            err: Some(err),
            waiting: (0..targets).map(|_| None).collect(),
            next: 0,
            held: Vec::new(),
            won: false,
            plugin: Vec::new(),
            plugin_state: None,
        }
    }

    /// Records the result of target `index` and prints every result now in order.
    pub fn record(&mut self, index: usize, report: Report) {
        if let Some(slot) = self.waiting.get_mut(index) {
            *slot = Some(report);
        }
        let mut out = String::new();
        let mut err = String::new();
        while let Some(Some(report)) = self.waiting.get_mut(self.next).map(Option::take) {
            self.next += 1;
            self.format(&report, &mut out, &mut err);
        }
        write_or_close(&mut self.out, &out);
        write_or_close(&mut self.err, &err);
    }

    fn format(&mut self, report: &Report, out: &mut String, err: &mut String) {
        let options = self.options;
        if options.nagios.is_some() {
            self.plugin.push(nagios_result(report));
            return;
        }
        if options.quiet || (options.open_only && report.outcome.status != Status::Open) {
            return;
        }
        if options.any && !options.json {
            if report.outcome.status.passed() {
                self.won = true;
            } else {
                let place = report.target.place();
                self.held.push(match human_line(report, false) {
                    Some((to_stdout, line)) => (Some(to_stdout), line),
                    None => (None, format!("Not needed: {place} (another target was up)")),
                });
                return;
            }
        }
        if options.json {
            let _ = writeln!(out, "{}", json_line(report));
        } else if let Some((to_stdout, line)) = human_line(report, options.single) {
            let _ = writeln!(if to_stdout { out } else { err }, "{line}");
        }
    }

    /// Every result is in: with `--any`, the held lines are logged (`-v`) when a
    /// target won, and printed as failures when none did.
    pub fn finish(&mut self) {
        if let Some(thresholds) = self.options.nagios {
            let (state, lines) = nagios::render(&self.plugin, &thresholds);
            self.plugin_state = Some(state);
            let text: String = lines.into_iter().map(|line| line + "\n").collect();
            write_or_close(&mut self.out, &text);
            return;
        }
        let held = std::mem::take(&mut self.held);
        if self.won {
            for (_, line) in held {
                log::info!("{line}");
            }
            return;
        }
        // Nobody won: every failure prints where it would have without --any (a
        // `--closed` target's "is still open" as much as an "Error connecting").
        let (mut out, mut err) = (String::new(), String::new());
        for (stream, line) in held {
            if let Some(to_stdout) = stream {
                let _ = writeln!(if to_stdout { &mut out } else { &mut err }, "{line}");
            }
        }
        write_or_close(&mut self.out, &out);
        write_or_close(&mut self.err, &err);
    }

    /// Under `--nagios`, once [`Printer::finish`] has run: the state whose exit code
    /// the run ends with.
    pub fn plugin_state(&self) -> Option<nagios::State> {
        self.plugin_state
    }

    /// The writers back (for tests).
    pub fn into_writers(self) -> (Option<O>, Option<E>) {
        (self.out, self.err)
    }
}

/// Writes `text` and flushes; on any error (a closed pipe above all) stops using the
/// stream for good.
fn write_or_close<W: Write>(stream: &mut Option<W>, text: &str) {
    if text.is_empty() {
        return;
    }
    let Some(writer) = stream.as_mut() else {
        return;
    };
    let result = writer
        .write_all(text.as_bytes())
        .and_then(|()| writer.flush());
    if let Err(error) = result {
        if error.kind() != io::ErrorKind::BrokenPipe {
            log::debug!("output stream failed, no more output to it: {error}");
        }
        *stream = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::conntest::targets::{Host, HostKind};
    use std::rc::Rc;

    fn report(host: &str, port: u16, outcome: Outcome) -> Report {
        Report {
            target: Target {
                host: Rc::new(Host {
                    text: host.to_string(),
                    kind: HostKind::Name(host.to_string()),
                }),
                port,
            },
            outcome,
            elapsed: Duration::from_micros(1500),
        }
    }

    fn refused(port: u16) -> Outcome {
        let addr = format!("127.0.0.1:{port}").parse().unwrap();
        Outcome::new(
            Status::Refused,
            Some(addr),
            Some("Connection refused".into()),
        )
    }

    fn open(port: u16) -> Outcome {
        Outcome::open(format!("127.0.0.1:{port}").parse().unwrap())
    }

    fn options() -> OutputOptions {
        OutputOptions {
            json: false,
            open_only: false,
            quiet: false,
            single: false,
            any: false,
            nagios: None,
        }
    }

    fn print(options: OutputOptions, order: &[usize], reports: Vec<Report>) -> (String, String) {
        let mut printer = Printer::new(options, reports.len(), Vec::new(), Vec::new());
        let mut reports: Vec<Option<Report>> = reports.into_iter().map(Some).collect();
        for &index in order {
            printer.record(index, reports[index].take().unwrap());
        }
        let (out, err) = printer.into_writers();
        (
            String::from_utf8(out.unwrap()).unwrap(),
            String::from_utf8(err.unwrap()).unwrap(),
        )
    }

    #[test]
    fn one_target_prints_the_classic_lines() {
        let single = OutputOptions {
            single: true,
            ..options()
        };
        let (out, err) = print(single, &[0], vec![report("db", 80, open(80))]);
        assert_eq!((out.as_str(), err.as_str()), ("Connected to port 80\n", ""));
        let (out, err) = print(single, &[0], vec![report("db", 80, refused(80))]);
        assert_eq!(
            (out.as_str(), err.as_str()),
            ("", "Error connecting to port 80: Connection refused\n")
        );
    }

    #[test]
    fn several_targets_print_in_argument_order_whatever_the_completion_order() {
        let reports = vec![
            report("db", 5432, open(5432)),
            report("db", 1, refused(1)),
            report("cache", 6379, open(6379)),
            report("cache", 2, refused(2)),
        ];
        let (out, err) = print(options(), &[3, 2, 1, 0], reports);
        assert_eq!(
            out,
            "Connected to db port 5432\nConnected to cache port 6379\n"
        );
        assert_eq!(
            err,
            "Error connecting to db port 1: Connection refused\n\
             Error connecting to cache port 2: Connection refused\n"
        );
    }

    #[test]
    fn results_are_held_back_only_until_the_ones_before_them_are_known() {
        let mut printer = Printer::new(options(), 3, Vec::new(), Vec::new());
        printer.record(1, report("h", 2, open(2)));
        printer.record(0, report("h", 1, open(1)));
        let (out, _) = printer.into_writers();
        assert_eq!(
            String::from_utf8(out.unwrap()).unwrap(),
            "Connected to h port 1\nConnected to h port 2\n"
        );
    }

    #[test]
    fn open_filters_out_everything_but_open_targets_also_in_json() {
        let reports = || vec![report("h", 1, refused(1)), report("h", 2, open(2))];
        let open_only = OutputOptions {
            open_only: true,
            ..options()
        };
        let (out, err) = print(open_only, &[0, 1], reports());
        assert_eq!(
            (out.as_str(), err.as_str()),
            ("Connected to h port 2\n", "")
        );
        let json = OutputOptions {
            json: true,
            ..open_only
        };
        let (out, _) = print(json, &[0, 1], reports());
        assert_eq!(out.lines().count(), 1);
        assert!(out.contains("\"port\":2"), "{out}");
    }

    #[test]
    fn json_lines_carry_every_field() {
        let reports = vec![
            report("h", 1, refused(1)),
            report("h", 2, open(2)),
            report("h", 3, Outcome::cancelled(None)),
        ];
        let json = OutputOptions {
            json: true,
            ..options()
        };
        let (out, err) = print(json, &[0, 1, 2], reports);
        assert_eq!(err, "");
        let lines: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        assert!(
            out.starts_with("{\"host\":\"h\",\"port\":1,\"addr\":"),
            "{out}"
        );
        assert_eq!(lines[0]["host"], "h");
        assert_eq!(lines[0]["port"], 1);
        assert_eq!(lines[0]["addr"], "127.0.0.1:1");
        assert_eq!(lines[0]["status"], "refused");
        assert_eq!(lines[0]["error"], "Connection refused");
        assert_eq!(lines[0]["elapsed_ms"], 1.5);
        assert_eq!(lines[1]["status"], "open");
        assert!(lines[1]["error"].is_null());
        assert_eq!(lines[2]["status"], "cancelled");
        assert!(lines[2]["addr"].is_null());
    }

    #[test]
    fn quiet_prints_nothing_and_cancelled_targets_print_no_human_line() {
        let quiet = OutputOptions {
            quiet: true,
            ..options()
        };
        let (out, err) = print(quiet, &[0], vec![report("h", 1, refused(1))]);
        assert_eq!((out.as_str(), err.as_str()), ("", ""));
        let (out, err) = print(
            options(),
            &[0],
            vec![report("h", 1, Outcome::cancelled(None))],
        );
        assert_eq!((out.as_str(), err.as_str()), ("", ""));
    }

    #[test]
    fn any_prints_the_winner_only_and_the_failures_when_nobody_won() {
        let any = OutputOptions {
            any: true,
            ..options()
        };
        let mut printer = Printer::new(any, 3, Vec::new(), Vec::new());
        printer.record(0, report("a", 1, refused(1)));
        printer.record(1, report("b", 2, open(2)));
        printer.record(2, report("c", 3, Outcome::cancelled(None)));
        printer.finish();
        let (out, err) = printer.into_writers();
        assert_eq!(
            String::from_utf8(out.unwrap()).unwrap(),
            "Connected to b port 2\n"
        );
        assert_eq!(String::from_utf8(err.unwrap()).unwrap(), "");

        let mut printer = Printer::new(any, 2, Vec::new(), Vec::new());
        printer.record(0, report("a", 1, refused(1)));
        printer.record(1, report("b", 2, refused(2)));
        printer.finish();
        let (_, err) = printer.into_writers();
        assert_eq!(
            String::from_utf8(err.unwrap()).unwrap(),
            "Error connecting to a port 1: Connection refused\n\
             Error connecting to b port 2: Connection refused\n"
        );
    }

    #[test]
    fn nagios_prints_the_plugin_lines_at_the_end_in_target_order() {
        let nagios = OutputOptions {
            nagios: Some(Thresholds::default()),
            ..options()
        };
        let mut printer = Printer::new(nagios, 2, Vec::new(), Vec::new());
        printer.record(1, report("h", 2, refused(2)));
        printer.record(0, report("h", 1, open(1)));
        assert_eq!(printer.plugin_state(), None);
        printer.finish();
        assert_eq!(printer.plugin_state(), Some(nagios::State::Critical));
        let (out, err) = printer.into_writers();
        assert_eq!(
            String::from_utf8(out.unwrap()).unwrap(),
            "CONNTEST CRITICAL - 2 targets, 1 critical, 1 ok|'time h:1'=0.001500s;;;0;\n\
             h port 1: OK - open in 1.50 ms\n\
             h port 2: CRITICAL - refused: Connection refused\n"
        );
        assert_eq!(String::from_utf8(err.unwrap()).unwrap(), "");
    }

    use crate::commands::test_support::ClosedPipe;

    #[test]
    fn a_closed_pipe_ends_output_to_that_stream_quietly() {
        let mut printer = Printer::new(options(), 2, ClosedPipe, Vec::new());
        printer.record(0, report("h", 1, open(1)));
        printer.record(1, report("h", 2, refused(2)));
        let (out, err) = printer.into_writers();
        assert!(out.is_none());
        assert_eq!(
            String::from_utf8(err.unwrap()).unwrap(),
            "Error connecting to h port 2: Connection refused\n"
        );
    }
}
