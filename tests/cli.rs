//! The command-line surface shared by every subcommand: help, version, exit statuses
//! and logging flags.
use std::time::Duration;

use assert_cmd::Command;

mod common;

fn twistctl() -> Command {
    let mut command = Command::cargo_bin("twistctl").expect("the twistctl binary is built");
    command
        .timeout(Duration::from_secs(20))
        .env_remove("RUST_LOG");
    command
}

const SUBCOMMANDS: [&str; 5] = [
    "timer-demo",
    "conntest",
    "talk-server",
    "talk-client",
    "completions",
];

#[test]
fn version_prints_the_package_version() {
    let output = twistctl().arg("--version").output().unwrap();
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        stdout.trim(),
        format!("twistctl {}", env!("CARGO_PKG_VERSION"))
    );
}

/// `twistctl ARGS... --help` on stdout; the command must succeed.
fn help_text(args: &[&str]) -> String {
    let output = twistctl().args(args).arg("--help").output().unwrap();
    assert!(output.status.success(), "{args:?} --help failed");
    String::from_utf8(output.stdout).unwrap()
}

/// The part of `help` between `heading` and the next section heading (or the end).
fn section<'a>(help: &'a str, heading: &str) -> &'a str {
    let Some((_, rest)) = help.split_once(heading) else {
        panic!("no {heading} in:\n{help}");
    };
    let end = ["EXAMPLES:", "EXIT STATUS:"]
        .iter()
        .filter_map(|next| rest.find(next))
        .min()
        .unwrap_or(rest.len());
    &rest[..end]
}

#[test]
fn every_subcommand_help_has_examples_and_documents_its_exit_status() {
    for sub in SUBCOMMANDS {
        let help = help_text(&[sub]);
        // The usage line names `twistctl SUB` anyway: look in the examples alone.
        let examples = section(&help, "EXAMPLES:");
        assert!(
            examples.contains(&format!("twistctl {sub}")),
            "{sub} examples invoke twistctl {sub}:\n{help}"
        );
        let statuses = section(&help, "EXIT STATUS:");
        assert!(
            statuses.contains("    0 "),
            "{sub} documents status 0:\n{help}"
        );
        assert!(
            statuses.contains("    2 "),
            "{sub} documents status 2:\n{help}"
        );
        if sub != "completions" {
            assert!(statuses.contains("130"), "{sub} documents SIGINT:\n{help}");
        }
    }
}

#[test]
fn conntest_help_documents_its_own_exit_codes() {
    let help = help_text(&["conntest"]);
    let statuses = section(&help, "EXIT STATUS:");
    for code in ["    1 ", "    3 ", "    124 ", "    143 "] {
        assert!(statuses.contains(code), "missing {code:?} in:\n{help}");
    }
}

#[test]
fn an_unknown_subcommand_is_a_usage_error() {
    let output = twistctl().arg("frobnicate").output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("frobnicate"));
}

/// A tour whose --at moment comes after the stop: worth a warning.
const WARNED_TOUR: [&str; 5] = ["timer-demo", "--at", "50ms", "--stop-after", "10ms"];

#[test]
fn warnings_go_to_stderr_and_quiet_silences_them() {
    let output = twistctl().args(WARNED_TOUR).output().unwrap();
    assert!(output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(
        stderr, "twistctl: warning: --at 50ms is not before --stop-after 10ms; it will not print\n",
        "a warning reads as a message, without timestamp or module path"
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        !stdout.contains("--at"),
        "logs never mix into stdout: {stdout}"
    );

    let quiet = twistctl().args(WARNED_TOUR).arg("-q").output().unwrap();
    assert!(quiet.status.success());
    assert!(
        quiet.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&quiet.stderr)
    );
    assert_eq!(
        quiet.stdout, output.stdout,
        "-q leaves the tour's own output alone"
    );
}

#[test]
fn verbose_adds_log_lines_on_stderr_only() {
    let args = ["timer-demo", "--at", "10ms", "--stop-after", "20ms"];
    let plain = twistctl().args(args).output().unwrap();
    assert!(plain.stderr.is_empty(), "no log line at the default level");

    let verbose = twistctl().args(args).arg("-v").output().unwrap();
    let stderr = String::from_utf8(verbose.stderr).unwrap();
    assert!(
        stderr.contains("twistctl: tour: 1 moment(s), stop after 20ms"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("[debug"),
        "-v is info, not debug: {stderr}"
    );
    assert_eq!(verbose.stdout.len(), plain.stdout.len(), "stdout unchanged");

    let debug = twistctl().args(args).arg("-vv").output().unwrap();
    assert!(
        String::from_utf8(debug.stderr)
            .unwrap()
            .contains("[debug twistctl::")
    );
}

#[test]
fn rust_log_still_works() {
    let output = twistctl()
        .args(["timer-demo", "--at", "10ms", "--stop-after", "20ms"])
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    assert!(
        String::from_utf8(output.stderr)
            .unwrap()
            .contains("[debug ")
    );
}

#[test]
fn completions_print_a_script_for_each_shell() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let output = twistctl().args(["completions", shell]).output().unwrap();
        assert!(output.status.success(), "{shell}");
        let script = String::from_utf8(output.stdout).unwrap();
        assert!(
            script.contains("conntest"),
            "{shell} script completes subcommands"
        );
    }
    let bad = twistctl().args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("tcsh"));
}

/// Runs `twistctl ARGS` with stdout on /dev/full (every write fails with ENOSPC) and
/// stdin empty; returns the status and stderr.
fn to_full_disk(args: &[&str]) -> (Option<i32>, String) {
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full exists");
    let mut command = std::process::Command::new(common::TWISTCTL);
    command
        .args(args)
        .env_remove("RUST_LOG")
        .stdout(full)
        .stdin(std::process::Stdio::null());
    let output = common::output_within(command, Duration::from_secs(20));
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

const FULL_DISK: &str = "twistctl: cannot write output: No space left on device\n";

#[test]
fn a_failed_write_to_stdout_is_reported_and_exits_1_in_every_subcommand() {
    let (_conntest_listener, port) = common::loopback_listener();
    let port = port.to_string();
    let (listener, talk_port) = common::loopback_listener();
    let talk_port = talk_port.to_string();
    // talk-client's server greets and closes: the greeting is the write that fails.
    let server = std::thread::spawn(move || {
        use std::io::Write;
        let (mut stream, _) = listener.accept().unwrap();
        let _ = stream.write_all(b"hello\n");
    });
    let cases: [&[&str]; 5] = [
        &["timer-demo", "--at", "10ms", "--stop-after", "20ms"],
        &["conntest", "127.0.0.1", &port],
        &["completions", "bash"],
        &["talk-client", "127.0.0.1", &talk_port],
        &["talk-server", "--port", "0", "--bind", "127.0.0.1"],
    ];
    for args in cases {
        let (code, stderr) = to_full_disk(args);
        assert_eq!(code, Some(1), "{args:?}: {stderr}");
        assert!(stderr.ends_with(FULL_DISK), "{args:?}: {stderr}");
        assert_eq!(stderr.matches("cannot write").count(), 1, "{args:?}: once");
    }
    server.join().unwrap();
}

#[test]
fn a_write_error_never_hides_a_worse_conntest_status() {
    let (code, stderr) = to_full_disk(&["conntest", "nosuch.invalid", "80"]);
    assert_eq!(code, Some(3), "the unresolved name decides: {stderr}");
    let (code, stderr) = to_full_disk(&["conntest", "-q", "127.0.0.1", "1"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        !stderr.contains("cannot write"),
        "-q wrote nothing: {stderr}"
    );
}

#[test]
fn conntest_nagios_that_cannot_write_its_status_line_is_unknown() {
    // An open port would be OK (0); a monitor that got no line must see UNKNOWN (3).
    let (_listener, port) = common::loopback_listener();
    let (code, stderr) = to_full_disk(&["conntest", "--nagios", "127.0.0.1", &port.to_string()]);
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.ends_with(FULL_DISK), "{stderr}");
}

#[test]
fn a_closed_pipe_is_silent_and_keeps_the_status() {
    use std::process::Stdio;
    let (_a, first) = common::loopback_listener();
    let (_b, second) = common::loopback_listener();
    let mut child = std::process::Command::new(common::TWISTCTL)
        .args(["conntest", "127.0.0.1", &format!("{first},{second}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The reader is gone before anything is written: every write meets EPIPE.
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&output.stderr), "");
}

/// `twistctl ARGS` with empty stdin: status, stdout, stderr.
fn run_with_no_input(args: &[&str]) -> (Option<i32>, String, String) {
    let output = twistctl().args(args).write_stdin("").output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn bad_targets_numbers_and_durations_are_usage_errors_naming_the_bad_part() {
    let cases: [(&[&str], &str); 17] = [
        (
            &["conntest", "db", "-8"],
            "invalid port '-8': ports are 1-65535",
        ),
        (
            &["talk-client", "localhost", "-8"],
            "invalid port '-8': ports are 1-65535",
        ),
        (
            &["talk-server", "-8"],
            "invalid port '-8': ports are 1-65535",
        ),
        (&["talk-server", "--port", "-8"], "ports are 1-65535"),
        (&["conntest", "db", "0"], "port 0"),
        (&["talk-client", "localhost", "0"], "port 0"),
        (&["conntest", ":80"], "missing host in ':80'"),
        (&["talk-client", ":80"], "missing host in ':80'"),
        (&["conntest", "db]:80"], "stray ']' in 'db]:80'"),
        (&["conntest", "[::1:80"], "missing ']'"),
        (&["conntest", "--timeout", "0", "db", "80"], "'0' is zero"),
        (
            &["talk-client", "--timeout", "0", "db", "80"],
            "'0' is zero",
        ),
        (&["talk-server", "--max-line", "0"], "'0' is zero"),
        (&["talk-server", "--max-clients", "0"], "'0' is zero"),
        (&["talk-server", "--max-clients", "-3"], "'-3' is negative"),
        (&["timer-demo", "--stop-after", "5x"], "unknown unit 'x'"),
        (&["talk-client", "localhost", "80,81"], "exactly one"),
    ];
    for (args, expected) in cases {
        let (code, stdout, stderr) = run_with_no_input(args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("unexpected argument"),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("month"), "{args:?}: {stderr}");
        assert!(stdout.is_empty(), "{args:?}: {stdout}");
    }
}

#[test]
fn talk_client_takes_a_target_as_conntest_does() {
    use std::io::Write;
    let (listener, port) = common::loopback_listener();
    let port = port.to_string();
    let server = std::thread::spawn(move || {
        for _ in 0..2 {
            let (mut stream, _) = listener.accept().unwrap();
            let _ = stream.write_all(b"welcome\n");
        }
    });
    for target in [
        vec!["127.0.0.1", port.as_str()],
        vec![&format!("127.0.0.1:{port}")],
    ] {
        let mut args = vec!["talk-client"];
        args.extend(target.iter().map(|s| &**s));
        let (code, stdout, stderr) = run_with_no_input(&args);
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
        assert!(stdout.contains("Server: welcome"), "{args:?}: {stdout}");
    }
    server.join().unwrap();
}

#[test]
fn talk_server_takes_its_port_positionally_and_binds_every_address_of_a_name() {
    let (code, stdout, stderr) = run_with_no_input(&["talk-server", "--bind", "localhost", "0"]);
    assert_eq!(code, Some(0), "{stderr}");
    let listening: Vec<&str> = stdout
        .lines()
        .filter(|line| line.starts_with("Listening on "))
        .collect();
    assert!(!listening.is_empty(), "{stdout}");
    let ports: Vec<&str> = listening
        .iter()
        .map(|line| line.rsplit(':').next().unwrap())
        .collect();
    assert!(
        ports.iter().all(|p| *p == ports[0] && *p != "0"),
        "{stdout}"
    );
    for bind in ["127.0.0.1", "[::1]", "::1"] {
        let (code, stdout, stderr) = run_with_no_input(&["talk-server", "--bind", bind, "0"]);
        // A machine without IPv6 cannot bind ::1: that is a runtime failure, not usage.
        assert_ne!(code, Some(2), "{bind}: {stderr}");
        if code == Some(0) {
            let shown = bind.trim_start_matches('[').trim_end_matches(']');
            assert!(stdout.contains(shown), "{bind}: {stdout}");
        }
    }
}

#[test]
fn each_subcommand_describes_its_own_quiet_flag() {
    let mut seen = Vec::new();
    for sub in SUBCOMMANDS {
        let help = help_text(&[sub]);
        let quiet = help
            .split("--quiet")
            .nth(1)
            .and_then(|rest| rest.split("\n  -").next())
            .unwrap_or_else(|| panic!("{sub} lists -q:\n{help}"))
            .to_string();
        for other in SUBCOMMANDS.iter().filter(|other| **other != sub) {
            assert!(
                !quiet.contains(other),
                "{sub}'s -q speaks of {other}: {quiet}"
            );
        }
        assert!(
            !seen.contains(&quiet),
            "{sub}'s -q help is its own: {quiet}"
        );
        seen.push(quiet);
    }
}

#[test]
fn talk_client_takes_a_service_name_for_the_port() {
    // Port 80 on loopback is not listening here: what matters is that "http" is
    // read as port 80, not refused as a usage error.
    let (code, _, stderr) =
        run_with_no_input(&["talk-client", "--timeout", "2s", "127.0.0.1", "http"]);
    assert_ne!(code, Some(2), "{stderr}");
    if code != Some(0) {
        assert!(stderr.contains("127.0.0.1:80"), "{stderr}");
    }
}
