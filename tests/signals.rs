//! with signal handling opted in, SIGTERM and SIGINT stop the reactor in an orderly
//! way and `run()` reports the signal.
//!
//! Signal handlers are process-wide, so the reactor runs in a child process: this test
//! binary re-executes itself with `CHILD_ENV` set, and the same test then plays the child,
//! which prints "ready" once the handlers are in place and exits with the stop reason's
//! exit code.

use std::cell::RefCell;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use twistctl::reactor::{Deferred, Phase, Reactor, StopReason, SystemEvent};

const CHILD_ENV: &str = "TWISTCTL_R23_CHILD";
const TEST_NAME: &str = "r23_sigterm_and_sigint_stop_run_with_their_exit_codes";
const BOUND: Duration = Duration::from_secs(10);

#[test]
fn r23_sigterm_and_sigint_stop_run_with_their_exit_codes() {
    if let Ok(mode) = std::env::var(CHILD_ENV) {
        child(&mode);
    }
    assert_eq!(parent("plain", &[("TERM", "ready")]), 143);
    assert_eq!(parent("plain", &[("INT", "ready")]), 130);
    // A second signal while the shutdown waits on a Deferred is ignored: the first one
    // stays the reason, and the process is not killed by it.
    assert_eq!(
        parent("second", &[("TERM", "ready"), ("INT", "stopping")]),
        143
    );
}

/// Runs a child in `mode`; for each (signal, line) waits for the child to print `line`
/// and then sends it `signal`. Returns the child's exit code.
fn parent(mode: &str, script: &[(&str, &str)]) -> i32 {
    let exe = std::env::current_exe().expect("current_exe");
    let mut child = Command::new(exe)
        .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, mode)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the child");
    let stdout = child.stdout.take().expect("piped stdout");
    let (lines_tx, lines) = mpsc::channel::<Option<String>>();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(Some(line)).is_err() {
                return;
            }
        }
        let _ = lines_tx.send(None);
    });
    let pid = child.id().to_string();
    for (signal, wanted) in script {
        wait_for(&mut child, &lines, Some(wanted));
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }
    // End of output means the child has exited (or is about to).
    wait_for(&mut child, &lines, None);
    let status = child.wait().expect("wait for the child");
    status
        .code()
        .unwrap_or_else(|| panic!("the child was killed: {status:?}"))
}

/// Reads lines until one equals `wanted` (or, with `None`, until end of output), within
/// the time bound; kills the child and fails otherwise.
fn wait_for(child: &mut Child, lines: &mpsc::Receiver<Option<String>>, wanted: Option<&str>) {
    loop {
        match lines.recv_timeout(BOUND) {
            // libtest may print "test <name> ... " on the same line before ours.
            Ok(Some(line)) if wanted.is_some_and(|w| line.trim_end().ends_with(w)) => return,
            Ok(Some(_)) => {}
            Ok(None) if wanted.is_none() => return,
            Ok(None) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the child did not print {wanted:?} within {BOUND:?}");
            }
        }
    }
}

thread_local! {
    static HELD: RefCell<Option<Deferred<()>>> = const { RefCell::new(None) };
}

/// The child: runs a reactor with signals opted in and exits with the signal's code.
fn child(mode: &str) -> ! {
    let reactor = Reactor::new().expect("reactor");
    reactor.handle_signals();
    // Bounded: a signal that never arrives ends the child with code 1.
    let r = reactor.clone();
    reactor.call_later(BOUND, move || r.crash());
    reactor.call_when_running(|| say("ready"));
    if mode == "second" {
        let held = Deferred::<()>::new();
        HELD.with(|h| *h.borrow_mut() = Some(held.clone()));
        reactor.add_system_event_trigger(Phase::Before, SystemEvent::Shutdown, move || {
            say("stopping");
            held
        });
        // Set by the same signal delivery that writes the reactor's self-pipe: once it
        // is set, the reactor's next poll sees the second signal.
        let arrived = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register(signal_hook::consts::SIGINT, arrived.clone())
            .expect("register flag");
        watch(&reactor, arrived);
    }
    let code = match reactor.run() {
        Ok(StopReason::Signal(signal)) => signal.exit_code(),
        other => {
            eprintln!("child: run() ended with {other:?}");
            1
        }
    };
    std::process::exit(code)
}

/// Fires the held shutdown Deferred one iteration after the second signal arrived.
fn watch(reactor: &Reactor, arrived: Arc<AtomicBool>) {
    let r = reactor.clone();
    reactor.call_later(Duration::from_millis(1), move || {
        if arrived.load(Ordering::SeqCst) {
            r.call_later(Duration::from_millis(1), || {
                if let Some(held) = HELD.with(|h| h.borrow_mut().take()) {
                    let _ = held.callback(());
                }
            });
        } else {
            watch(&r, arrived);
        }
    });
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
