//! One tiny run of each benchmark workload of `examples/bench.rs`: the JSON line has the
//! contract's keys in the contract's order, and the run's own check passes. Nothing here
//! measures speed.

#[allow(dead_code)]
#[path = "../examples/bench.rs"]
mod bench;
mod common;

use bench::{
    Common, ConnectArgs, EchoArgs, IdleArgs, LinesArgs, Outcome, TimersArgs, TlsConnectArgs,
    TlsEchoArgs, TlsFiles, Workload, cancel_threshold, lcg_delays_ms,
};
use serde_json::Value;
use std::sync::OnceLock;

/// A test CA and a `localhost` leaf signed by it (ECDSA P-256, as the benchmark's own
/// files), written once to a temporary folder: the smoke runs need no files from
/// outside the repository.
fn test_files() -> TlsFiles {
    static FILES: OnceLock<TlsFiles> = OnceLock::new();
    FILES
        .get_or_init(|| {
            let dir = std::env::temp_dir().join(format!("bench-smoke-{}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("a temporary folder");
            let ca = common::pki::TestCa::new("bench smoke CA");
            let (cert, key) = ca
                .sign(rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params"))
                .write(&dir, "server");
            TlsFiles {
                ca: ca.write(&dir),
                cert,
                key,
            }
        })
        .clone()
}

const COMMON_HEAD: [&str; 10] = [
    "impl",
    "workload",
    "params",
    "wall_s",
    "cpu_s",
    "ops",
    "ops_per_s",
    "ops_per_cpu_s",
    "peak_rss_kb",
    "check",
];

/// Parses the line and checks that its top-level keys are exactly `COMMON_HEAD`, then
/// `extra`, then `cpu_total_s`, in that order.
fn parse_in_order(outcome: &Outcome, extra: &[&str]) -> Value {
    let value: Value = serde_json::from_str(&outcome.line).expect("the line is JSON");
    let object = value.as_object().expect("the line is an object");
    let expected: Vec<&str> = COMMON_HEAD
        .iter()
        .chain(extra)
        .chain(&["cpu_total_s"])
        .copied()
        .collect();
    assert_eq!(object.len(), expected.len(), "keys of {}", outcome.line);
    let mut last = 0;
    for key in &expected {
        assert!(
            object.contains_key(*key),
            "{key} missing in {}",
            outcome.line
        );
        let at = outcome
            .line
            .find(&format!("\"{key}\": "))
            .expect("key rendered");
        assert!(at >= last, "{key} out of order in {}", outcome.line);
        last = at;
    }
    assert!(!outcome.line.contains('\n'), "one line");
    value
}

fn assert_ok(outcome: &Outcome, value: &Value, workload: &str) {
    assert_eq!(value["impl"], "twistctl");
    assert_eq!(value["workload"], workload);
    assert_eq!(value["check"], "ok", "{}", outcome.line);
    assert!(outcome.ok);
}

/// Runs the workload on its own thread, failing the test instead of hanging it if the
/// run does not end.
fn run(workload: Workload) -> Outcome {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(workload.run());
    });
    rx.recv_timeout(std::time::Duration::from_secs(30))
        .expect("the workload ended within 30 s")
}

fn common() -> Common {
    Common { timeout: 30 }
}

#[test]
fn lcg_matches_the_contracts_test_vector() {
    assert_eq!(lcg_delays_ms(5, 200), vec![134, 26, 138, 103, 94]);
    assert_eq!(
        lcg_delays_ms(1_000_000, 200).iter().sum::<u64>(),
        99_476_915
    );
    // 0.9 * 100 is 90.00000000000001 as a float: the threshold must still be 90.
    assert_eq!(cancel_threshold(0.9), 90);
    assert_eq!(cancel_threshold(0.0), 0);
}

#[test]
fn timers_smoke() {
    for ratio in [0.0, 0.9, 1.0] {
        let workload = Workload::Timers(TimersArgs {
            count: 2000,
            spread_ms: 3,
            cancel_ratio: ratio,
            common: common(),
        });
        let outcome = run(workload);
        let v = parse_in_order(
            &outcome,
            &["scheduled", "cancelled", "fired", "delay_ms_sum"],
        );
        assert_ok(&outcome, &v, "timers");
        let cancelled = (0..2000u64)
            .filter(|i| (i * 7919) % 100 < cancel_threshold(ratio) as u64)
            .count() as u64;
        assert_eq!(v["cancelled"], cancelled);
        assert_eq!(v["fired"], 2000 - cancelled);
        assert_eq!(v["ops"], 2000);
        assert_eq!(v["params"]["cancel_ratio"], ratio);
    }
}

#[test]
fn timers_rejects_bad_parameters() {
    let outcome = run(Workload::Timers(TimersArgs {
        count: 0,
        spread_ms: 200,
        cancel_ratio: 0.0,
        common: common(),
    }));
    let v = parse_in_order(&outcome, &[]);
    assert_eq!(v["check"], "fail: bad parameters");
    assert!(!outcome.ok);
}

#[test]
fn connect_smoke() {
    let outcome = run(Workload::Connect(ConnectArgs {
        count: 60,
        concurrency: 7,
        common: common(),
    }));
    let v = parse_in_order(&outcome, &["completed", "server_accepted", "conns_per_s"]);
    assert_ok(&outcome, &v, "connect");
    assert_eq!(v["completed"], 60);
    assert_eq!(v["server_accepted"], 60);
}

#[test]
fn echo_smoke() {
    for connections in [1, 3] {
        // Not a multiple of the connection count or of the chunk: uneven targets and a
        // short last chunk.
        let bytes = 1_000_003;
        let outcome = run(Workload::Echo(EchoArgs {
            connections,
            bytes,
            chunk: 65536,
            window: 262144,
            common: common(),
        }));
        let v = parse_in_order(
            &outcome,
            &["bytes_echoed", "bytes_per_s", "mb_per_s", "notes"],
        );
        assert_ok(&outcome, &v, "echo");
        assert_eq!(v["bytes_echoed"], bytes);
        assert_eq!(v["ops"], bytes);
    }
}

#[test]
fn lines_smoke() {
    // Batches below the transport's 64 KiB high-water mark, and above it (which pauses
    // the producer after every batch).
    for batch_lines in [1000, 4000] {
        let outcome = run(Workload::Lines(LinesArgs {
            count: 20_005,
            line_bytes: 32,
            batch_lines,
            common: common(),
        }));
        let v = parse_in_order(
            &outcome,
            &["lines_counted", "bytes_sent", "lines_per_s", "notes"],
        );
        assert_ok(&outcome, &v, "lines");
        assert_eq!(v["lines_counted"], 20_005);
        assert_eq!(v["bytes_sent"], 20_005 * 34);
    }
}

#[test]
fn idle_smoke() {
    let outcome = run(Workload::Idle(IdleArgs {
        connections: 40,
        pending: 7,
        common: common(),
    }));
    let v = parse_in_order(
        &outcome,
        &[
            "rss_before_kb",
            "rss_after_kb",
            "rss_per_conn_bytes",
            "nofile_limit",
            "close_s",
        ],
    );
    assert_ok(&outcome, &v, "idle");
    assert_eq!(v["ops"], 40);
}

#[test]
fn tls_connect_smoke() {
    let outcome = run(Workload::TlsConnect(TlsConnectArgs {
        count: 30,
        concurrency: 7,
        files: test_files(),
        common: common(),
    }));
    let v = parse_in_order(
        &outcome,
        &[
            "completed",
            "server_accepted",
            "tls_version",
            "cipher",
            "group",
            "handshakes_per_s",
        ],
    );
    assert_ok(&outcome, &v, "tls-connect");
    assert_eq!(v["completed"], 30);
    assert_eq!(v["tls_version"], "TLSv1.3");
    assert_eq!(v["cipher"], "TLS_AES_128_GCM_SHA256");
    assert_eq!(v["group"], "x25519");
    // The file flags are not params.
    assert_eq!(v["params"].as_object().map(|p| p.len()), Some(2));
}

#[test]
fn tls_connect_fails_its_check_with_the_wrong_ca() {
    let files = test_files();
    let outcome = run(Workload::TlsConnect(TlsConnectArgs {
        count: 3,
        concurrency: 3,
        files: TlsFiles {
            ca: files.cert.clone(),
            ..files
        },
        common: common(),
    }));
    assert!(!outcome.ok);
    let v: Value = serde_json::from_str(&outcome.line).expect("JSON");
    let check = v["check"].as_str().expect("check");
    assert!(check.starts_with("fail: handshake failed: "), "{check}");
    assert!(check.contains("issuer is unknown"), "{check}");
}

#[test]
fn tls_echo_smoke() {
    for connections in [1, 3] {
        let bytes = 1_000_003;
        let outcome = run(Workload::TlsEcho(TlsEchoArgs {
            connections,
            bytes,
            chunk: 65536,
            window: 262144,
            files: test_files(),
            common: common(),
        }));
        let v = parse_in_order(
            &outcome,
            &[
                "bytes_echoed",
                "bytes_per_s",
                "mb_per_s",
                "tls_version",
                "cipher",
                "group",
            ],
        );
        assert_ok(&outcome, &v, "tls-echo");
        assert_eq!(v["bytes_echoed"], bytes);
        assert_eq!(v["cipher"], "TLS_AES_128_GCM_SHA256");
    }
}
