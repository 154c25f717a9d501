//! The command-line surface shared by every subcommand: help, version, exit statuses
//! and logging flags.
use std::time::Duration;

use assert_cmd::Command;

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
    assert!(stderr.contains("--at 50ms"), "{stderr}");
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
    assert!(stderr.contains("INFO"), "{stderr}");
    assert!(!stderr.contains("DEBUG"), "-v is info, not debug: {stderr}");
    assert_eq!(verbose.stdout.len(), plain.stdout.len(), "stdout unchanged");

    let debug = twistctl().args(args).arg("-vv").output().unwrap();
    assert!(String::from_utf8(debug.stderr).unwrap().contains("DEBUG"));
}

#[test]
fn rust_log_still_works() {
    let output = twistctl()
        .args(["timer-demo", "--at", "10ms", "--stop-after", "20ms"])
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    assert!(String::from_utf8(output.stderr).unwrap().contains("DEBUG"));
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
