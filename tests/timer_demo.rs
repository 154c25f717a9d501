//! `twistctl timer-demo` end to end, on the built binary.
mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use assert_cmd::cargo::CommandCargoExt;

fn twistctl() -> Command {
    Command::cargo_bin("twistctl").expect("the twistctl binary is built for tests")
}

fn run(args: &[&str]) -> (i32, String, String) {
    let output = assert_cmd::Command::from_std(twistctl())
        .args(args)
        .timeout(Duration::from_secs(20))
        .output()
        .expect("twistctl runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn is_time_line(line: &str) -> bool {
    let Some(time) = line.strip_prefix("Current time is ") else {
        return false;
    };
    let parts: Vec<&str> = time.split(':').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_digit()))
}

#[test]
fn default_tour_prints_three_times_then_stops() {
    let (code, stdout, stderr) = run(&["timer-demo"]);
    assert_eq!(code, 0, "stderr: {stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 6, "{stdout}");
    assert_eq!(lines[0], "Running the reactor...");
    assert!(lines[1..4].iter().all(|l| is_time_line(l)), "{stdout}");
    assert_eq!(lines[4], "Stopping reactor");
    assert_eq!(lines[5], "Reactor stopped.");
    assert!(
        stderr.is_empty(),
        "no log line at the default level: {stderr}"
    );
}

/// Lateness as `--precise` reports it (`(on time)`, `(7ms late)`), in milliseconds.
fn lateness(line: &str) -> u64 {
    let open = line.rfind('(').expect("a lateness in parentheses");
    let text = line[open + 1..].trim_end_matches(')');
    if text == "on time" {
        return 0;
    }
    let late = text.strip_suffix(" late").expect("'... late'");
    let late = twistctl::duration::parse(late).expect("lateness is a duration");
    u64::try_from(late.as_millis()).expect("small")
}

#[test]
fn at_moments_fire_in_order_each_with_its_lateness() {
    let (code, stdout, _) = run(&[
        "timer-demo",
        "--at",
        "300ms",
        "100ms",
        "200ms",
        "--stop-after",
        "400ms",
        "--precise",
    ]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 6, "{stdout}");
    // How late a call fires depends on the machine's load, so this checks the order
    // and that each line reports its lateness; the lateness arithmetic itself is
    // tested on a fake clock in the unit tests.
    let mut previous = None;
    for line in &lines[1..4] {
        assert!(line.starts_with("Current time is "), "{line}");
        let _ = lateness(line);
        let time = line["Current time is ".len()..]
            .split(' ')
            .next()
            .expect("a time");
        if let Some(previous) = previous {
            assert!(time > previous, "{stdout}");
        }
        previous = Some(time);
    }
    assert_eq!(&lines[4..], ["Stopping reactor", "Reactor stopped."]);
}

#[test]
fn every_with_count_prints_count_times() {
    let (code, stdout, _) = run(&["timer-demo", "--every", "50ms", "--count", "4", "--utc"]);
    assert_eq!(code, 0);
    let times = stdout.lines().filter(|l| is_time_line(l)).count();
    assert_eq!(times, 4, "{stdout}");
    assert!(
        stdout.ends_with("Stopping reactor\nReactor stopped.\n"),
        "{stdout}"
    );
}

#[test]
fn a_bad_duration_is_a_usage_error_naming_the_value() {
    let (code, stdout, stderr) = run(&["timer-demo", "--at", "1s", "soonish"]);
    assert_eq!(code, 2);
    assert!(stdout.is_empty());
    assert!(stderr.contains("soonish"), "{stderr}");
    let (code, _, stderr) = run(&["timer-demo", "--stop-after=-5s"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("-5s"), "{stderr}");
}

#[test]
fn sigint_stops_cleanly_with_status_130() {
    let mut child = twistctl()
        .args(["timer-demo", "--stop-after", "30s"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("twistctl starts");
    let mut stdout = child.stdout.take().expect("piped stdout");
    // The first line is printed once the reactor runs, with its signal handlers in place.
    let mut first = [0u8; 23];
    std::io::Read::read_exact(&mut stdout, &mut first).expect("first line");
    assert_eq!(&first, b"Running the reactor...\n");
    let pid = child.id().to_string();
    let sent = Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill runs");
    assert!(sent.success());
    let status = child.wait().expect("timer-demo ends after SIGINT");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).expect("rest of output");
    assert_eq!(status.code(), Some(130), "output: {rest}");
    assert!(rest.ends_with("Reactor stopped.\n"), "{rest}");
}

#[test]
fn every_without_count_prints_until_stop_after() {
    let (code, stdout, stderr) = run(&[
        "timer-demo",
        "--every",
        "100ms",
        "--stop-after",
        "350ms",
        "--utc",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let times = stdout.lines().filter(|l| is_time_line(l)).count();
    assert_eq!(times, 4, "at 0, 100, 200 and 300 ms: {stdout}");
    assert!(
        stdout.ends_with("Stopping reactor\nReactor stopped.\n"),
        "{stdout}"
    );
}

/// timer-demo in a pty whose line discipline does (or does not) echo Ctrl-C as `^C`;
/// after Ctrl-C, the output before `Reactor stopped.` and the exit code.
fn ctrl_c_in_pty(echoctl: bool) -> (String, i32) {
    let stty = if echoctl {
        "stty echo echoctl"
    } else {
        "stty -echoctl"
    };
    let mut command = Command::new("sh");
    command.args([
        "-c",
        &format!("{stty}; exec \"$0\" timer-demo --stop-after 30s"),
        common::TWISTCTL,
    ]);
    let mut session = common::spawn_in_pty(command, 5000);
    session
        .exp_string("Running the reactor...")
        .expect("the tour starts");
    session.send_control('c').expect("type Ctrl-C");
    let (before, _) = session
        .exp_regex("Reactor stopped\\.")
        .expect("the reactor stops");
    (before, common::pty_exit_code(&mut session))
}

#[test]
fn ctrl_c_in_a_terminal_ends_its_line_before_reactor_stopped() {
    let (before, code) = ctrl_c_in_pty(true);
    assert_eq!(code, 130);
    assert!(before.contains("^C"), "the terminal echoed ^C: {before:?}");
    assert!(
        before.ends_with("^C\r\n"),
        "'Reactor stopped.' starts its own line after ^C: {before:?}"
    );
    // A terminal that does not echo ^C gets no blank line.
    let (before, code) = ctrl_c_in_pty(false);
    assert_eq!(code, 130);
    assert_eq!(before, "\r\n", "{before:?}");
}
