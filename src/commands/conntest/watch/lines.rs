//! What a watch prints: a line per probe, a line per change of state, and the summary
//! per target, as text for people and as JSON objects for dashboards. Pure formatting.

use std::fmt::Write as _;
use std::time::Duration;

use jiff::tz::TimeZone;
use serde::Serialize;
use serde_json::{Value, json};

use super::stats::{Change, Moment, State, Summary};

/// How a finished probe turned out, as the watch reports it. Borrowed from the watch's
/// target and the probe's result: nothing is copied to print a line.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeReport<'a> {
    /// The target, as people read it (`127.0.0.1 port 80`, `unix:/run/db.sock`).
    pub label: &'a str,
    /// The host as typed (JSON `host`).
    pub host: &'a str,
    /// The port (JSON `port`; `None` for UNIX targets).
    pub port: Option<u16>,
    /// The probe's number, from 1 per target.
    pub seq: u64,
    /// When the probe started.
    pub started: Moment,
    /// The status word (`open`, `refused`, `timeout`, `tls-error`, ...).
    pub status: &'a str,
    /// Whether the probe passed.
    pub passed: bool,
    /// From `connect()` to the connection being established.
    pub time: Option<Duration>,
    /// From `connect()` to the end of the TLS handshake, with TLS.
    pub tls_time: Option<Duration>,
    /// For a failure: its words (`timeout after 1s`, `connection refused`).
    pub error: Option<&'a str>,
}

/// `12:00:03.412` in the given zone.
pub fn clock(at: jiff::Timestamp, tz: &TimeZone) -> String {
    at.to_zoned_datetime(tz.clone())
        .strftime("%H:%M:%S%.3f")
        .to_string()
}

/// RFC 3339 with milliseconds, in UTC (`2026-12-02T12:00:03.412Z`).
pub fn rfc3339(at: jiff::Timestamp) -> String {
    at.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// `1.5 s`-style seconds with three decimals for times down.
fn seconds(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

/// The text line of one probe; `timestamps` prefixes the local time it started.
pub fn probe_line(report: &ProbeReport, timestamps: Option<&TimeZone>) -> String {
    let mut line = String::new();
    write_probe_line(&mut line, report, timestamps);
    line
}

/// [`probe_line`], appended to `line` (a watch reuses one buffer for every line).
pub fn write_probe_line(line: &mut String, report: &ProbeReport, timestamps: Option<&TimeZone>) {
    if let Some(tz) = timestamps {
        line.push_str(&clock(report.started.wall, tz));
        line.push(' ');
    }
    line.push_str(report.label);
    line.push_str(": ");
    match (report.error, report.passed) {
        (Some(error), false) => line.push_str(error),
        _ => line.push_str(report.status),
    }
    // Writing to a String cannot fail.
    let _ = write!(line, ", seq={}", report.seq);
    if let Some(time) = report.time.filter(|_| report.passed) {
        line.push_str(", time=");
        push_millis(line, time);
        line.push_str(" ms");
        if let Some(tls) = report.tls_time {
            line.push_str(", tls=");
            push_millis(line, tls);
            line.push_str(" ms");
        }
    }
}

/// `0.112`: milliseconds with three decimals, rounded to the microsecond as the JSON
/// `time_ms` is, in integers (a float's formatting costs more than the rest of the line).
fn push_millis(line: &mut String, d: Duration) {
    let us = (d.as_nanos() + 500) / 1000;
    // Writing to a String cannot fail.
    let _ = write!(line, "{}.{:03}", us / 1000, us % 1000);
}

/// The JSON object of one probe.
pub fn probe_json(report: &ProbeReport) -> Value {
    // Serializing a plain struct cannot fail.
    serde_json::to_value(ProbeJson::of(report)).unwrap_or(Value::Null)
}

/// [`probe_json`] as its line of text, appended to `line`, without building the
/// object first (a watch writes one per probe).
pub fn write_probe_json(line: &mut String, report: &ProbeReport) {
    // Serializing a plain struct cannot fail.
    if let Ok(text) = serde_json::to_string(&ProbeJson::of(report)) {
        line.push_str(&text);
    }
}

/// A probe's JSON fields. In the order of their names, as a `serde_json` object
/// prints them, so that both ways of writing it give the same bytes.
#[derive(Serialize)]
struct ProbeJson<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    host: &'a str,
    port: Option<u16>,
    seq: u64,
    status: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    time_ms: Option<f64>,
    timestamp: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_ms: Option<f64>,
}

impl<'a> ProbeJson<'a> {
    fn of(report: &ProbeReport<'a>) -> ProbeJson<'a> {
        let time = report.time.filter(|_| report.passed);
        ProbeJson {
            error: report.error.filter(|_| !report.passed),
            host: report.host,
            port: report.port,
            seq: report.seq,
            status: report.status,
            time_ms: time.map(round3),
            timestamp: rfc3339(report.started.wall),
            tls_ms: time.and(report.tls_time).map(round3),
        }
    }
}

/// Milliseconds rounded to microseconds, the resolution measured.
fn round3(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// The line of a change of state.
pub fn change_line(label: &str, change: &Change, tz: &TimeZone) -> String {
    match change {
        Change::Down { since, reason } => {
            format!("{label} is down ({reason}) since {}", clock(since.wall, tz))
        }
        Change::Up { after } => format!("{label} is up again after {}", seconds(*after)),
    }
}

/// The summary of one target, as lines of text (ping's layout).
pub fn summary_lines(label: &str, summary: &Summary, tz: &TimeZone) -> Vec<String> {
    let mut lines = vec![
        format!("--- {label} ---"),
        format!(
            "{} probes, {} open, {} failed ({:.1}% failed), {} skipped",
            summary.probes,
            summary.ok,
            summary.failed,
            summary.failed_percent(),
            summary.skipped
        ),
    ];
    if let Some(l) = &summary.latency {
        lines.push(format!(
            "time min/avg/max/mdev = {:.3}/{:.3}/{:.3}/{:.3} ms",
            l.min_ms, l.avg_ms, l.max_ms, l.mdev_ms
        ));
    }
    let now = match &summary.state {
        State::Up => "now up",
        State::Down { .. } => "now down",
        State::Unknown => "no probe finished",
    };
    lines.push(match &summary.longest_down {
        None => format!("longest down: none; {now}"),
        Some(span) => match span.to {
            Some(to) => format!(
                "longest down: {}, from {} to {}; {now}",
                seconds(span.length),
                clock(span.from.wall, tz),
                clock(to.wall, tz)
            ),
            None => format!(
                "longest down: {}, from {} until now; {now}",
                seconds(span.length),
                clock(span.from.wall, tz)
            ),
        },
    });
    lines
}

/// The JSON summary object of one target.
pub fn summary_json(host: &str, port: Option<u16>, summary: &Summary) -> Value {
    let latency = summary.latency;
    let round = |v: f64| (v * 1e3).round() / 1e3;
    json!({
        "summary": true,
        "host": host,
        "port": port,
        "probes": summary.probes,
        "ok": summary.ok,
        "failed": summary.failed,
        "skipped": summary.skipped,
        "min_ms": latency.map(|l| round(l.min_ms)),
        "avg_ms": latency.map(|l| round(l.avg_ms)),
        "max_ms": latency.map(|l| round(l.max_ms)),
        "mdev_ms": latency.map(|l| round(l.mdev_ms)),
        "longest_down_ms": summary.longest_down.map(|s| round3(s.length)),
        "state": summary.state.as_str(),
    })
}

#[cfg(test)]
mod tests {
    use super::super::stats::TargetStats;
    use super::*;

    fn at(ms: u64) -> Moment {
        // 12:00:00.000 UTC.
        let base = jiff::Timestamp::from_second(1_796_212_800).expect("valid");
        Moment {
            offset: Duration::from_millis(ms),
            wall: base + jiff::SignedDuration::from_millis(ms as i64),
        }
    }

    fn report(seq: u64, passed: bool) -> ProbeReport<'static> {
        ProbeReport {
            label: "127.0.0.1 port 80",
            host: "127.0.0.1",
            port: Some(80),
            seq,
            started: at(3412),
            status: if passed { "open" } else { "refused" },
            passed,
            time: passed.then(|| Duration::from_micros(112)),
            tls_time: None,
            error: (!passed).then_some("refused"),
        }
    }

    #[test]
    fn probe_lines_as_tcping_prints_them() {
        assert_eq!(
            probe_line(&report(3, true), None),
            "127.0.0.1 port 80: open, seq=3, time=0.112 ms"
        );
        assert_eq!(
            probe_line(&report(4, false), None),
            "127.0.0.1 port 80: refused, seq=4"
        );
        let mut timeout = report(5, false);
        timeout.status = "timeout";
        timeout.error = Some("timeout after 1s");
        assert_eq!(
            probe_line(&timeout, None),
            "127.0.0.1 port 80: timeout after 1s, seq=5"
        );
        let mut tls = report(6, true);
        tls.tls_time = Some(Duration::from_micros(1840));
        assert_eq!(
            probe_line(&tls, Some(&TimeZone::UTC)),
            "12:00:03.412 127.0.0.1 port 80: open, seq=6, time=0.112 ms, tls=1.840 ms"
        );
    }

    #[test]
    fn times_are_rounded_to_the_microsecond_as_in_json() {
        let shown = |nanos: u64| {
            let mut ok = report(1, true);
            ok.time = Some(Duration::from_nanos(nanos));
            let line = probe_line(&ok, None);
            let json = probe_json(&ok)["time_ms"].as_f64().expect("a number");
            (line.rsplit("time=").next().map(str::to_owned), json)
        };
        assert_eq!(shown(112_499), (Some("0.112 ms".into()), 0.112));
        assert_eq!(shown(112_500), (Some("0.113 ms".into()), 0.113));
        assert_eq!(shown(0), (Some("0.000 ms".into()), 0.0));
        assert_eq!(
            shown(12_345_678_900),
            (Some("12345.679 ms".into()), 12345.679)
        );
    }

    #[test]
    fn probe_json_has_the_fields_that_apply() {
        let ok = probe_json(&report(1, true));
        assert_eq!(ok["time_ms"], json!(0.112));
        assert_eq!(ok["timestamp"], json!("2026-12-02T12:00:03.412Z"));
        assert!(ok.get("error").is_none() && ok.get("tls_ms").is_none());
        let failed = probe_json(&report(2, false));
        assert_eq!(failed["error"], json!("refused"));
        assert!(failed.get("time_ms").is_none());
    }

    #[test]
    fn a_probe_line_in_json_is_the_object_printed() {
        let mut tls = report(3, true);
        tls.tls_time = Some(Duration::from_micros(1840));
        let mut timeout = report(4, false);
        timeout.status = "timeout";
        timeout.error = Some("timeout after 1s");
        let mut unix = report(5, true);
        unix.port = None;
        for report in [report(1, true), report(2, false), tls, timeout, unix] {
            let mut line = String::new();
            write_probe_json(&mut line, &report);
            assert_eq!(line, probe_json(&report).to_string());
        }
        let mut line = String::new();
        write_probe_json(&mut line, &report(2, false));
        assert_eq!(
            line,
            r#"{"error":"refused","host":"127.0.0.1","port":80,"seq":2,"status":"refused","timestamp":"2026-12-02T12:00:03.412Z"}"#
        );
    }

    #[test]
    fn change_lines() {
        let down = Change::Down {
            since: at(3412),
            reason: "refused".into(),
        };
        assert_eq!(
            change_line("127.0.0.1 port 80", &down, &TimeZone::UTC),
            "127.0.0.1 port 80 is down (refused) since 12:00:03.412"
        );
        let up = Change::Up {
            after: Duration::from_millis(2004),
        };
        assert_eq!(
            change_line("127.0.0.1 port 80", &up, &TimeZone::UTC),
            "127.0.0.1 port 80 is up again after 2.004 s"
        );
    }

    #[test]
    fn summary_in_ping_layout_computed_from_the_stats() {
        let mut stats = TargetStats::new();
        for (i, us) in [81u64, 104, 131].iter().enumerate() {
            stats.record_ok(at(i as u64 * 1000), Duration::from_micros(*us));
        }
        stats.record_failed(at(3412), "refused");
        stats.record_ok(at(5416), Duration::from_micros(100));
        stats.record_skipped();
        let summary = stats.summary(at(6000));
        let lines = summary_lines("127.0.0.1 port 80", &summary, &TimeZone::UTC);
        assert_eq!(lines[0], "--- 127.0.0.1 port 80 ---");
        assert_eq!(
            lines[1],
            "5 probes, 4 open, 1 failed (20.0% failed), 1 skipped"
        );
        // 81, 104, 131 and 100 µs: mean 104, mean of squares 11,134.5,
        // mdev √(11,134.5 − 104²) = 17.847 µs.
        assert_eq!(
            lines[2],
            "time min/avg/max/mdev = 0.081/0.104/0.131/0.018 ms"
        );
        assert_eq!(
            lines[3],
            "longest down: 2.004 s, from 12:00:03.412 to 12:00:05.416; now up"
        );
        let object = summary_json("127.0.0.1", Some(80), &summary);
        assert_eq!(object["summary"], json!(true));
        assert_eq!(object["longest_down_ms"], json!(2004.0));
        assert_eq!(object["state"], json!("up"));
        assert_eq!(object["avg_ms"], json!(0.104));
    }

    #[test]
    fn a_target_still_down_and_one_never_up() {
        let mut stats = TargetStats::new();
        stats.record_failed(at(0), "refused");
        let summary = stats.summary(at(2500));
        let lines = summary_lines("h port 1", &summary, &TimeZone::UTC);
        assert_eq!(
            lines.len(),
            3,
            "no time line without a passing probe: {lines:?}"
        );
        assert_eq!(
            lines[2],
            "longest down: 2.500 s, from 12:00:00.000 until now; now down"
        );
        let object = summary_json("h", Some(1), &summary);
        assert_eq!(object["min_ms"], Value::Null);
        assert_eq!(object["state"], json!("down"));
    }
}
