//! `conntest --watch` end to end: the built binary against loopback listeners, read
//! line by line while it runs; signals from outside. Each test is bounded in time.

mod common;

use std::io::{BufRead, BufReader, Lines};
use std::net::TcpListener;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use common::{TWISTCTL, loopback_listener};

/// A running watch whose stdout is read on a thread, so every read has a deadline.
struct Watching {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Watching {
    fn start(args: &[&str]) -> Watching {
        // A loaded test machine may take longer than a short interval to connect on
        // loopback: a generous timeout keeps a slow probe from counting as down.
        let mut child = Command::new(TWISTCTL)
            .arg("conntest")
            .arg("--watch")
            .args(["--timeout", "5s"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("twistctl runs");
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let lines: Lines<BufReader<ChildStdout>> = BufReader::new(stdout).lines();
            for line in lines.map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Watching { child, lines: rx }
    }

    /// The next line, within 10 s.
    fn line(&self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(10))
            .expect("a line within 10 s")
    }

    /// Lines until one contains `wanted` (that one included), within 10 s.
    fn until(&self, wanted: &str) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no line with {wanted:?} within 10 s; saw {seen:#?}"));
            let found = line.contains(wanted);
            seen.push(line);
            if found {
                return seen;
            }
        }
    }

    fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).expect("signal sent");
    }

    /// Every remaining line and the exit code, within 10 s.
    fn finish(mut self) -> (Vec<String>, i32) {
        let mut rest = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(10)) {
            rest.push(line);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("waitable") {
                return (rest, status.code().expect("exited, not killed"));
            }
            assert!(Instant::now() < deadline, "the watch did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `time=` figure of a probe line, in milliseconds.
fn time_ms(line: &str) -> f64 {
    let at = line.find("time=").expect("a time") + 5;
    let rest = &line[at..];
    rest[..rest.find(" ms").expect("ms")]
        .parse()
        .expect("a number")
}

#[test]
fn watch_counts_probes_and_prints_a_ping_summary() {
    let (listener, port) = loopback_listener();
    let target = format!("127.0.0.1:{port}");
    let watch = Watching::start(&["--interval", "20ms", "--count", "5", &target]);
    let (lines, code) = watch.finish();
    drop(listener);
    assert_eq!(code, 0, "{lines:#?}");
    let probes: Vec<&String> = lines.iter().filter(|l| l.contains(", seq=")).collect();
    assert_eq!(probes.len(), 5, "{lines:#?}");
    for (i, line) in probes.iter().enumerate() {
        assert!(
            line.starts_with(&format!(
                "127.0.0.1 port {port}: open, seq={}, time=",
                i + 1
            )),
            "{line}"
        );
    }
    let times: Vec<f64> = probes.iter().map(|l| time_ms(l)).collect();
    let min = times.iter().copied().fold(f64::INFINITY, f64::min);
    let max = times.iter().copied().fold(0.0, f64::max);
    let summary = &lines[lines.len() - 4..];
    assert_eq!(summary[0], format!("--- 127.0.0.1 port {port} ---"));
    assert_eq!(
        summary[1],
        "5 probes, 5 open, 0 failed (0.0% failed), 0 skipped"
    );
    assert!(
        summary[2].starts_with(&format!("time min/avg/max/mdev = {min:.3}/"))
            && summary[2].contains(&format!("/{max:.3}/")),
        "{summary:#?} vs {times:?}"
    );
    assert_eq!(summary[3], "longest down: none; now up");
}

#[test]
fn a_listener_that_goes_away_and_comes_back_gives_down_and_up_lines() {
    let (listener, port) = loopback_listener();
    let target = format!("127.0.0.1:{port}");
    let watch = Watching::start(&["--interval", "20ms", &target]);
    watch.until(", seq=3,");
    drop(listener);
    let went_away = Instant::now();
    watch.until(" is down (refused) since ");
    // The gap under test: real time with nobody listening.
    std::thread::sleep(Duration::from_millis(400));
    let back = TcpListener::bind(("127.0.0.1", port)).expect("the port is free again");
    let gap = went_away.elapsed();
    let up = watch.until(" is up again after ");
    let line = up.last().expect("the up line");
    let seconds: f64 = line
        .rsplit("after ")
        .next()
        .and_then(|s| s.strip_suffix(" s"))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a time in {line}"));
    let measured = Duration::from_secs_f64(seconds);
    let difference = measured.abs_diff(gap);
    assert!(
        difference <= Duration::from_millis(50),
        "down {measured:?} vs the real gap {gap:?}"
    );
    watch.signal(Signal::SIGINT);
    let (rest, code) = watch.finish();
    drop(back);
    assert_eq!(code, 0, "Ctrl-C ends a watch normally: {rest:#?}");
    let longest = rest
        .iter()
        .find(|l| l.starts_with("longest down: "))
        .unwrap_or_else(|| panic!("a summary: {rest:#?}"));
    assert!(
        longest.starts_with(&format!("longest down: {seconds:.3} s, from ")),
        "{longest} vs {seconds}"
    );
    assert!(longest.ends_with("; now up"), "{longest}");
}

#[test]
fn sigterm_prints_the_summary_and_exits_143_and_a_never_up_target_fails() {
    let (listener, port) = loopback_listener();
    let up = format!("127.0.0.1:{port}");
    drop(listener);
    let watch = Watching::start(&["--interval", "20ms", &up]);
    watch.until(", seq=2");
    watch.signal(Signal::SIGTERM);
    let (rest, code) = watch.finish();
    assert_eq!(code, 143);
    assert!(
        rest.iter().any(|l| l.contains("0 open")),
        "the summary after SIGTERM: {rest:#?}"
    );

    let watch = Watching::start(&["--interval", "20ms", &up]);
    watch.until(", seq=2");
    watch.signal(Signal::SIGINT);
    let (rest, code) = watch.finish();
    assert_eq!(code, 1, "a target that never answered: {rest:#?}");
}

#[test]
fn sigquit_prints_the_summary_so_far_without_stopping() {
    let (listener, port) = loopback_listener();
    let target = format!("127.0.0.1:{port}");
    let watch = Watching::start(&["--interval", "20ms", &target]);
    watch.until(", seq=3,");
    watch.signal(Signal::SIGQUIT);
    let interim = watch.until("longest down:");
    assert!(interim.iter().any(|l| l.starts_with("--- 127.0.0.1 port ")));
    // Still probing afterwards.
    let after = watch.until(", seq=");
    assert!(after.last().is_some_and(|l| l.contains("open")));
    watch.signal(Signal::SIGINT);
    let (_, code) = watch.finish();
    drop(listener);
    assert_eq!(code, 0);
}

#[test]
fn json_lines_arrive_one_by_one_and_two_targets_are_watched_at_once() {
    let (a, port_a) = loopback_listener();
    let (b, port_b) = loopback_listener();
    drop(b);
    let targets = [format!("127.0.0.1:{port_a}"), format!("127.0.0.1:{port_b}")];
    let watch = Watching::start(&[
        "--json",
        "--interval",
        "30ms",
        "--count",
        "3",
        &targets[0],
        &targets[1],
    ]);
    // Each probe object can be read while the watch is still running.
    let first: serde_json::Value = serde_json::from_str(&watch.line()).expect("JSON");
    assert_eq!(first["seq"], 1);
    let (rest, code) = watch.finish();
    drop(a);
    assert_eq!(code, 1, "one of the two never answered");
    let objects: Vec<serde_json::Value> = rest
        .iter()
        .map(|l| serde_json::from_str(l).expect("every line is JSON"))
        .collect();
    let probes = objects
        .iter()
        .filter(|o| o.get("summary").is_none())
        .count();
    assert_eq!(probes + 1, 6, "3 probes of each target");
    let summaries: Vec<&serde_json::Value> =
        objects.iter().filter(|o| o["summary"] == true).collect();
    assert_eq!(summaries.len(), 2);
    assert_eq!(summaries[0]["port"], port_a);
    assert_eq!(summaries[0]["ok"], 3);
    assert_eq!(summaries[1]["port"], port_b);
    assert_eq!(summaries[1]["failed"], 3);
    assert_eq!(summaries[1]["state"], "down");
    for o in objects.iter().filter(|o| o.get("summary").is_none()) {
        let stamp = o["timestamp"].as_str().expect("a timestamp");
        assert!(stamp.parse::<jiff::Timestamp>().is_ok(), "{stamp}");
    }
}

#[test]
fn watch_refuses_options_it_cannot_honour() {
    for args in [
        &["--watch", "--wait", "5s", "127.0.0.1:1"][..],
        &["--watch", "--any", "127.0.0.1:1"][..],
        &["--count", "3", "127.0.0.1:1"][..],
        &["--watch", "--count", "0", "127.0.0.1:1"][..],
        &["--watch", "127.0.0.1:1", "--", "true"][..],
    ] {
        let output = Command::new(TWISTCTL)
            .arg("conntest")
            .args(args)
            .output()
            .expect("runs");
        assert_eq!(output.status.code(), Some(2), "{args:?}");
    }
}
