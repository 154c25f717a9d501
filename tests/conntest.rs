//! `twistctl conntest` end to end: the built binary against loopback listeners on ports
//! the kernel picks, plus the Happy Eyeballs race driven through the endpoint with
//! conntest's gate.
//!
//! A port that "never answers" is a listener with `listen(0)` that never accepts and
//! whose one queue slot is taken: the kernel then drops further SYNs, so a connect to it
//! hangs until the client's own timeout (a recipe that needs no root and no firewall).

mod common;

use std::cell::RefCell;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Stdio;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use assert_cmd::Command;
use socket2::{Domain, Socket, Type};

use twistctl::commands::conntest::gate::Gate;
use twistctl::reactor::endpoints::{EndpointOptions, HostnameEndpoint};
use twistctl::reactor::{Address, Factory, Protocol, ProtocolResult, Reactor, Step, TransportRef};

use common::{TWISTCTL, loopback_listener};

/// Every command gets a hard limit, so a hang fails the test instead of the run.
fn conntest(args: &[&str]) -> Command {
    let mut command = Command::new(TWISTCTL);
    command
        .arg("conntest")
        .args(args)
        .timeout(Duration::from_secs(10));
    command
}

struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(args: &[&str]) -> Output {
    let output = conntest(args).output().expect("twistctl runs");
    Output {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A port that refuses for as long as the returned socket lives: bound (so nobody else
/// gets it) but not listening, so a SYN to it is answered with a reset.
fn refusing_port() -> (Socket, u16) {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())
        .unwrap();
    let port = socket.local_addr().unwrap().as_socket().unwrap().port();
    (socket, port)
}

/// A listener whose accept queue is full: connects to it hang in SYN-SENT.
struct Silent {
    addr: SocketAddr,
    _listener: Socket,
    _fillers: Vec<TcpStream>,
}

fn silent_listener(ip: IpAddr) -> Silent {
    let domain = Domain::for_address(SocketAddr::new(ip, 0));
    let listener = Socket::new(domain, Type::STREAM, None).unwrap();
    if ip.is_ipv6() {
        listener.set_only_v6(true).unwrap();
    }
    listener.bind(&SocketAddr::new(ip, 0).into()).unwrap();
    listener.listen(0).unwrap();
    let addr = listener.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(100)) {
            Ok(stream) => fillers.push(stream),
            // The queue is full: SYNs are dropped from now on.
            Err(_) => {
                return Silent {
                    addr,
                    _listener: listener,
                    _fillers: fillers,
                };
            }
        }
    }
    panic!("the accept queue of {addr} never filled up");
}

fn ipv6_loopback() -> Option<TcpListener> {
    match TcpListener::bind("[::1]:0") {
        Ok(listener) => Some(listener),
        Err(error) => {
            println!("skipped: this machine has no IPv6 loopback ({error})");
            None
        }
    }
}

#[test]
fn an_open_port_prints_the_classic_line_and_exits_0() {
    let (_listener, port) = loopback_listener();
    let out = run(&["127.0.0.1", &port.to_string()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, format!("Connected to port {port}\n"));
    assert_eq!(out.stderr, "");
}

#[test]
fn a_closed_port_prints_the_os_reason_and_exits_1() {
    let (_socket, port) = refusing_port();
    let out = run(&["127.0.0.1", &port.to_string()]);
    assert_eq!(out.code, 1);
    assert_eq!(out.stdout, "");
    assert_eq!(
        out.stderr,
        format!("Error connecting to port {port}: Connection refused\n")
    );
}

#[test]
fn several_targets_print_one_line_each_in_argument_order() {
    let (_a, open_a) = loopback_listener();
    let (_b, open_b) = loopback_listener();
    let (_c, closed_c) = refusing_port();
    let (_d, closed_d) = refusing_port();
    let args = [
        format!("127.0.0.1:{closed_c}"),
        format!("127.0.0.1:{open_b}"),
        format!("localhost:{closed_d}"),
        format!("127.0.0.1:{open_a}"),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run(&args);
    // The first failed target in argument order decides: refused.
    assert_eq!(out.code, 1);
    assert_eq!(
        out.stdout,
        format!("Connected to 127.0.0.1 port {open_b}\nConnected to 127.0.0.1 port {open_a}\n")
    );
    assert_eq!(
        out.stderr,
        format!(
            "Error connecting to 127.0.0.1 port {closed_c}: Connection refused\n\
             Error connecting to localhost port {closed_d}: Connection refused\n"
        )
    );
}

#[test]
fn output_follows_argument_order_even_when_completion_order_differs() {
    let silent = silent_listener(Ipv4Addr::LOCALHOST.into());
    let (_open, open) = loopback_listener();
    let out = run(&[
        "--json",
        "--timeout",
        "300ms",
        &format!("127.0.0.1:{}", silent.addr.port()),
        &format!("127.0.0.1:{open}"),
    ]);
    assert_eq!(out.code, 124);
    let lines: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{}", out.stdout);
    assert_eq!(lines[0]["status"], "timeout");
    assert_eq!(lines[0]["error"], "Connection timed out after 300ms");
    assert_eq!(lines[1]["status"], "open");
    // The second finished first, yet was printed second.
    assert!(lines[1]["elapsed_ms"].as_f64() < lines[0]["elapsed_ms"].as_f64());
}

/// Ten consecutive ports, all held by this test: listeners at the given offsets, bound
/// but silent sockets (refusing) at the others, so no other test can take one.
fn port_block(open_offsets: &[u16]) -> (u16, Vec<TcpListener>, Vec<Socket>) {
    'search: for _ in 0..200 {
        let (first, base) = loopback_listener();
        if base > 65535 - 10 {
            continue;
        }
        let (mut listeners, mut refusers) = (vec![first], Vec::new());
        for offset in 1..10u16 {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, base + offset));
            if open_offsets.contains(&offset) {
                match TcpListener::bind(addr) {
                    Ok(l) => listeners.push(l),
                    Err(_) => continue 'search,
                }
            } else {
                let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
                // As std's listeners do: a port whose earlier connections linger in
                // TIME_WAIT (a busy machine has thousands) can still be held.
                socket.set_reuse_address(true).unwrap();
                if socket.bind(&addr.into()).is_err() {
                    continue 'search;
                }
                refusers.push(socket);
            }
        }
        return (base, listeners, refusers);
    }
    panic!("found no block of ten free ports");
}

#[test]
fn a_range_scan_reports_exactly_the_open_ports_with_open_and_json() {
    let open_offsets = [0u16, 4, 7];
    let (base, _listeners, _refusers) = port_block(&open_offsets);
    let spec = format!("{base}-{}", base + 9);
    let expected: Vec<u16> = open_offsets.iter().map(|o| base + o).collect();

    let out = run(&["--open", "127.0.0.1", &spec]);
    assert_eq!(out.code, 1, "closed ports still decide the exit status");
    let reported: Vec<String> = out.stdout.lines().map(str::to_string).collect();
    let wanted: Vec<String> = expected
        .iter()
        .map(|p| format!("Connected to 127.0.0.1 port {p}"))
        .collect();
    assert_eq!(reported, wanted);
    assert_eq!(out.stderr, "");

    let out = run(&["--json", "127.0.0.1", &spec]);
    let lines: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 10);
    for (i, line) in lines.iter().enumerate() {
        let port = base + i as u16;
        assert_eq!(line["port"], port);
        assert_eq!(line["host"], "127.0.0.1");
        assert_eq!(line["addr"], format!("127.0.0.1:{port}"));
        let status = if expected.contains(&port) {
            "open"
        } else {
            "refused"
        };
        assert_eq!(line["status"], status, "port {port}");
    }

    let out = run(&["--json", "--open", "127.0.0.1", &spec]);
    let ports: Vec<u64> = out
        .stdout
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["port"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(
        ports,
        expected.iter().map(|&p| u64::from(p)).collect::<Vec<_>>()
    );

    // One attempt at a time gives the same answer.
    let out = run(&["--open", "--concurrency", "1", "127.0.0.1", &spec]);
    let reported: Vec<String> = out.stdout.lines().map(str::to_string).collect();
    assert_eq!(reported, wanted);
}

#[test]
fn ipv6_literals_work_bracketed_and_in_the_classic_form() {
    let Some(listener) = ipv6_loopback() else {
        return;
    };
    let port = listener.local_addr().unwrap().port();
    let out = run(&[&format!("[::1]:{port}")]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, format!("Connected to port {port}\n"));
    let out = run(&["--json", "::1", &port.to_string()]);
    assert_eq!(out.code, 0);
    let line: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(line["addr"], format!("[::1]:{port}"));
    assert_eq!(line["host"], "::1");
}

#[test]
fn an_unresolvable_name_exits_3_and_names_the_host() {
    let out = run(&["nosuch.invalid", "80"]);
    assert_eq!(out.code, 3);
    assert!(
        out.stderr
            .starts_with("Error connecting to port 80: could not resolve host 'nosuch.invalid': "),
        "{}",
        out.stderr
    );
}

#[test]
fn a_port_that_never_answers_times_out_with_124_on_time() {
    let silent = silent_listener(Ipv4Addr::LOCALHOST.into());
    let started = Instant::now();
    let out = run(&[
        "--timeout",
        "500ms",
        "127.0.0.1",
        &silent.addr.port().to_string(),
    ]);
    let took = started.elapsed();
    assert_eq!(out.code, 124, "{}", out.stderr);
    assert_eq!(
        out.stderr,
        format!(
            "Error connecting to port {}: Connection timed out after 500ms\n",
            silent.addr.port()
        )
    );
    assert!(took >= Duration::from_millis(500), "{took:?}");
    assert!(took < Duration::from_millis(1000), "{took:?}");
}

#[test]
fn wait_succeeds_once_a_listener_appears() {
    // Learn a free port, free it, and open it again one second after the start.
    let port = loopback_listener().1;
    let started = Instant::now();
    let mut child = std::process::Command::new(TWISTCTL)
        .args([
            "conntest",
            "--wait",
            "8s",
            "--interval",
            "100ms",
            &format!("127.0.0.1:{port}"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let _late = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let (done, finished) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = done.send(line);
    });
    let line = finished
        .recv_timeout(Duration::from_secs(5))
        .expect("conntest noticed the listener");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert_eq!(line, format!("Connected to port {port}\n"));
    // Noticed within about one interval of the listener's arrival.
    assert!(
        started.elapsed() < Duration::from_millis(1800),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn wait_gives_up_at_its_deadline_with_124_and_the_last_reason() {
    let (_socket, port) = refusing_port();
    let started = Instant::now();
    let out = run(&[
        "--wait",
        "400ms",
        "--interval",
        "100ms",
        "127.0.0.1",
        &port.to_string(),
    ]);
    let took = started.elapsed();
    assert_eq!(out.code, 124);
    assert_eq!(
        out.stderr,
        format!(
            "Error connecting to port {port}: Connection refused (still down after waiting 400ms)\n"
        )
    );
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_millis(1000), "{took:?}");
}

#[test]
fn any_succeeds_with_one_up_target_and_cancels_the_rest() {
    let silent = silent_listener(Ipv4Addr::LOCALHOST.into());
    let (_open, open) = loopback_listener();
    let hanging = format!("127.0.0.1:{}", silent.addr.port());
    let up = format!("127.0.0.1:{open}");
    let started = Instant::now();
    let out = run(&["--any", "--timeout", "5s", &hanging, &up]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(out.stdout, format!("Connected to 127.0.0.1 port {open}\n"));
    assert_eq!(out.stderr, "", "cancelled targets are not reported");

    let out = run(&["--any", "--json", "--timeout", "5s", &hanging, &up]);
    let statuses: Vec<String> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["status"].to_string())
        .collect();
    assert_eq!(statuses, vec!["\"cancelled\"", "\"open\""]);

    // None up: the first failure in argument order decides.
    let (_socket, closed) = refusing_port();
    let out = run(&["--any", "127.0.0.1", &closed.to_string()]);
    assert_eq!(out.code, 1);
}

#[test]
fn the_command_runs_only_on_success_and_its_status_is_the_result() {
    // Checks `port`, then runs a command that says it ran and exits 7.
    let check_then_run = |port: u16| {
        run(&[
            "127.0.0.1",
            &port.to_string(),
            "--",
            "sh",
            "-c",
            "echo RAN; exit 7",
        ])
    };
    let (_listener, open) = loopback_listener();
    let out = check_then_run(open);
    assert_eq!(out.code, 7);
    assert_eq!(out.stdout, "RAN\n");

    let (_socket, closed) = refusing_port();
    let out = check_then_run(closed);
    assert_eq!(out.code, 1);
    assert!(!out.stdout.contains("RAN"));

    let out = run(&[
        "127.0.0.1",
        &open.to_string(),
        "--",
        "/nonexistent/twistctl-cmd",
    ]);
    assert_eq!(out.code, 127);
    assert!(
        out.stderr.contains("'/nonexistent/twistctl-cmd'"),
        "{}",
        out.stderr
    );
}

#[test]
fn with_a_command_stdout_is_the_commands_alone_and_results_go_to_stderr() {
    let (_listener, open) = loopback_listener();
    let port = open.to_string();
    for extra in [&[][..], &["--json"][..]] {
        let mut args = vec!["--wait", "5s"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["127.0.0.1", &port, "--", "printf", "backup-data"]);
        let out = run(&args);
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert_eq!(
            out.stdout, "backup-data",
            "{extra:?}: only CMD's output on stdout"
        );
        let said = if extra.is_empty() {
            format!("Connected to port {open}")
        } else {
            "\"status\":\"open\"".to_string()
        };
        assert!(out.stderr.contains(&said), "{extra:?}: {}", out.stderr);
    }
}

#[test]
fn quiet_prints_nothing_but_keeps_the_exit_status() {
    let (_socket, closed) = refusing_port();
    let out = run(&["-q", "127.0.0.1", &closed.to_string()]);
    assert_eq!(
        (out.code, out.stdout.as_str(), out.stderr.as_str()),
        (1, "", "")
    );
}

#[test]
fn every_usage_error_exits_2_and_names_the_bad_part() {
    let cases: &[(&[&str], &str)] = &[
        (&["127.0.0.1", "0"], "'0'"),
        (&["127.0.0.1", "70000"], "70000"),
        (&["127.0.0.1", "abc"], "'abc'"),
        (&["127.0.0.1", ""], "empty port list"),
        (&["127.0.0.1:"], "'127.0.0.1:'"),
        (&["127.0.0.1", "80,,443"], "'80,,443'"),
        (&["127.0.0.1", "80,"], "'80,'"),
        (&["127.0.0.1", "8100-8000"], "'8100-8000'"),
        (&["db"], "missing port in 'db'"),
        (&["db:5432", "cache"], "missing port in 'cache'"),
        (&["--timeout", "soon", "127.0.0.1", "80"], "'soon'"),
        (&["--timeout", "0", "127.0.0.1", "80"], "'0'"),
        (&["--wait", "forever", "127.0.0.1", "80"], "'forever'"),
        (
            &["--wait", "1s", "--interval", "x", "127.0.0.1", "80"],
            "'x'",
        ),
        (&["-6", "127.0.0.1", "80"], "127.0.0.1 is an IPv4 address"),
        (&["-4", "[::1]:80"], "::1 is an IPv6 address"),
    ];
    for (args, needle) in cases {
        let out = run(args);
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(needle), "{args:?}: {}", out.stderr);
        assert_eq!(out.stdout, "", "{args:?}");
    }
}

/// The address that won (or the failure) and when.
type RaceResult = (Result<SocketAddr, String>, Duration);

#[test]
fn happy_eyeballs_connects_through_the_second_address_within_400ms() {
    // First address: never answers (IPv6 loopback, or a second IPv4 loopback address
    // where there is no IPv6). Second: open.
    let silent_ip: IpAddr = match ipv6_loopback() {
        Some(_) => "::1".parse().unwrap(),
        None => "127.0.0.2".parse().unwrap(),
    };
    let silent = silent_listener(silent_ip);
    let (_open, open) = loopback_listener();
    let open_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, open));

    let reactor = Reactor::new().unwrap();
    let gate = Gate::new(16);
    let result: Rc<RefCell<Option<RaceResult>>> = Rc::default();
    let (r, out) = (reactor.clone(), result.clone());
    let started = reactor.seconds();
    let options = EndpointOptions {
        attempt_timeout: Some(Duration::from_secs(5)),
        ..EndpointOptions::default()
    };
    let _ = HostnameEndpoint::new(&reactor, "dual.test", open)
        .with_options(options)
        .with_addresses(vec![silent.addr, open_addr])
        .with_limiter(Rc::new(gate.clone()))
        .connect(Rc::new(CloseAtOnce))
        .then(move |outcome| {
            let peer = outcome
                .map(|connection| connection.peer.as_inet().unwrap())
                .map_err(|failure| failure.to_string());
            *out.borrow_mut() = Some((peer, r.seconds() - started));
            let _ = r.stop();
            Step::Value(())
        });
    let r = reactor.clone();
    reactor.call_later(Duration::from_secs(5), move || {
        let _ = r.stop();
    });
    reactor.run().unwrap();
    let (outcome, took) = result.borrow_mut().take().expect("the race ended");
    assert_eq!(outcome, Ok(open_addr));
    assert!(took >= Duration::from_millis(250), "{took:?}");
    assert!(took < Duration::from_millis(400), "{took:?}");
    assert_eq!(gate.free(), 16, "the losing attempt gave its slot back");
}

/// Closes each connection as soon as it is made, as conntest's open check does.
struct CloseAtOnce;

impl Factory for CloseAtOnce {
    fn build_protocol(&self, _addr: Address) -> Option<Box<dyn Protocol>> {
        Some(Box::new(CloseAtOnce))
    }
}

impl Protocol for CloseAtOnce {
    fn connection_made(&mut self, transport: &TransportRef) -> ProtocolResult {
        transport.lose_connection();
        Ok(())
    }

    fn data_received(&mut self, _: &TransportRef, _: &[u8]) -> ProtocolResult {
        Ok(())
    }
}

/// Waits until `pid` catches `signal` (its handler is installed), reading
/// /proc/PID/status; false if that never happens within two seconds.
fn wait_for_handler(pid: u32, signal: i32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let caught = status
            .lines()
            .find_map(|l| l.strip_prefix("SigCgt:"))
            .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
            .unwrap_or(0);
        if caught & (1 << (signal - 1)) != 0 {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

fn interrupted_status(signal: i32) -> Option<i32> {
    let silent = silent_listener(Ipv4Addr::LOCALHOST.into());
    let mut child = std::process::Command::new(TWISTCTL)
        .args(["conntest", "--timeout", "5s", &silent.addr.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(wait_for_handler(child.id(), signal), "no signal handler");
    let started = Instant::now();
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: kill only sends a signal to our own child.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    let status = child.wait().unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    status.code()
}

#[test]
fn sigint_and_sigterm_stop_the_check_with_130_and_143() {
    assert_eq!(interrupted_status(libc::SIGINT), Some(130));
    assert_eq!(interrupted_status(libc::SIGTERM), Some(143));
}

#[test]
fn a_closed_stdout_pipe_ends_output_quietly_without_a_panic() {
    let mut child = std::process::Command::new(TWISTCTL)
        .args(["conntest", "--json", "127.0.0.1", "1-3000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert!(line.contains("\"port\":1,"), "{line}");
    drop(stdout);
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        matches!(output.status.code(), Some(0 | 1)),
        "{:?}",
        output.status
    );
}

#[test]
fn nc_style_host_port_port_checks_each_port_of_the_host() {
    let (_a, first) = loopback_listener();
    let (_b, second) = loopback_listener();
    let out = run(&["127.0.0.1", &first.to_string(), &second.to_string()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.stdout,
        format!("Connected to 127.0.0.1 port {first}\nConnected to 127.0.0.1 port {second}\n")
    );
    let out = run(&["127.0.0.1", &first.to_string(), "ssh"]);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains(&format!("write 127.0.0.1 {first},ssh")),
        "{}",
        out.stderr
    );
}

#[test]
fn any_prints_only_the_winner_and_verbose_lists_the_rest() {
    let (_socket, closed) = refusing_port();
    let (_open, open) = loopback_listener();
    let down = format!("127.0.0.1:{closed}");
    let up = format!("127.0.0.1:{open}");
    let out = run(&["--any", &down, &up]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, format!("Connected to 127.0.0.1 port {open}\n"));
    assert_eq!(out.stderr, "", "the refused target is not a failure here");

    let out = run(&["-v", "--any", &down, &up]);
    assert_eq!(out.code, 0);
    assert!(
        out.stderr.contains(&format!(
            "twistctl: Error connecting to 127.0.0.1 port {closed}: Connection refused"
        )),
        "{}",
        out.stderr
    );

    // Nobody up: every failure prints, as without --any.
    let out = run(&["--any", &down, &down]);
    assert_eq!(out.code, 1);
    assert_eq!(out.stderr.lines().count(), 2, "{}", out.stderr);
}

#[test]
fn verbose_shows_each_attempt_with_its_address_outcome_and_time() {
    let (_socket, closed) = refusing_port();
    let out = run(&["-v", "127.0.0.1", &closed.to_string()]);
    assert_eq!(out.code, 1);
    let attempt = out
        .stderr
        .lines()
        .find(|line| line.contains(&format!("trying 127.0.0.1:{closed} at +")))
        .unwrap_or_else(|| panic!("no attempt line: {}", out.stderr));
    assert!(attempt.starts_with("twistctl: "), "{attempt}");
    assert!(attempt.contains(": Connection refused after "), "{attempt}");
    let named = run(&["-v", "localhost", &closed.to_string()]);
    assert!(
        named.stderr.contains("twistctl: localhost resolved to "),
        "the addresses a name resolved to: {}",
        named.stderr
    );
    let plain = run(&["127.0.0.1", &closed.to_string()]);
    assert_eq!(
        plain.stderr,
        format!("Error connecting to port {closed}: Connection refused\n"),
        "nothing extra at the default level"
    );
}

/// Starts `conntest --wait 30s` on a refusing port, lets it try once, sends `signal`;
/// returns the status and stderr.
fn interrupt_waiting(signal: i32) -> (Option<i32>, String) {
    let (_socket, closed) = refusing_port();
    let mut child = std::process::Command::new(TWISTCTL)
        .args([
            "-v",
            "conntest",
            "--wait",
            "30s",
            "127.0.0.1",
            &closed.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    // The first attempt's log line: the target has been seen down once.
    while !seen.contains("Connection refused") {
        let mut line = String::new();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "{seen}");
        seen.push_str(&line);
    }
    assert!(wait_for_handler(child.id(), signal), "no signal handler");
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: kill only sends a signal to our own child.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let status = child.wait().unwrap();
    (status.code(), rest.replace(&closed.to_string(), "PORT"))
}

#[test]
fn an_interrupted_wait_lists_the_targets_still_down_then_exits_130_or_143() {
    for (signal, code) in [(libc::SIGINT, 130), (libc::SIGTERM, 143)] {
        let (status, stderr) = interrupt_waiting(signal);
        assert_eq!(status, Some(code), "{stderr}");
        assert!(
            stderr.contains("Still down: 127.0.0.1 port PORT: Connection refused"),
            "{stderr}"
        );
    }
}

/// Runs `twistctl conntest ARGS` where name lookups go to a DNS server that never
/// answers: in a new user, mount and network namespace, /etc/resolv.conf names
/// 127.0.0.1, where a bound UDP socket takes queries and nobody replies. `None` (with the
/// reason printed) where the machine cannot make such namespaces.
/// `resolver_seconds` is the resolver's own time-out (resolv.conf's `timeout:`).
fn conntest_with_a_silent_resolver(resolver_seconds: u32, args: &[&str]) -> Option<Output> {
    let dir = std::env::temp_dir().join(format!("twistctl-silent-dns-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let resolv = dir.join("resolv.conf");
    std::fs::write(
        &resolv,
        format!("nameserver 127.0.0.1\noptions timeout:{resolver_seconds} attempts:1\n"),
    )
    .unwrap();
    // python3 binds the blackhole and execs twistctl, which inherits the socket: it
    // stays bound, unread, for exactly as long as twistctl runs.
    let script = format!(
        "ip link set lo up && mount --bind {resolv} /etc/resolv.conf && exec python3 -c '\
         import os, socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); \
         s.bind((\"127.0.0.1\", 53)); os.set_inheritable(s.fileno(), True); \
         os.execv(sys.argv[1], sys.argv[1:])' \"$0\" conntest \"$@\"",
        resolv = resolv.display()
    );
    let probe = std::process::Command::new("unshare")
        .args([
            "-rmn",
            "sh",
            "-c",
            "ip link set lo up && command -v python3",
        ])
        .output();
    match probe {
        Ok(out) if out.status.success() => {}
        _ => {
            eprintln!("skipped: needs unshare -rmn (user namespaces), ip and python3");
            return None;
        }
    }
    let output = Command::new("unshare")
        .args(["-rmn", "sh", "-c", &script, TWISTCTL])
        .args(args)
        .timeout(Duration::from_secs(10))
        .output()
        .expect("unshare runs");
    let _ = std::fs::remove_dir_all(&dir);
    Some(Output {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

#[test]
fn a_lookup_cut_off_by_the_timeout_exits_124_and_says_so() {
    let started = Instant::now();
    let Some(out) =
        conntest_with_a_silent_resolver(30, &["--timeout", "500ms", "db.example", "5432"])
    else {
        return;
    };
    assert_eq!(out.code, 124, "{}", out.stderr);
    assert_eq!(
        out.stderr,
        "Error connecting to port 5432: lookup of 'db.example' timed out after 500ms\n"
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    // The resolver's own time-out (1s, before ours) is a resolution failure: 3.
    let Some(out) = conntest_with_a_silent_resolver(1, &["--timeout", "8s", "db.example", "5432"])
    else {
        return;
    };
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(
        out.stderr.contains("could not resolve host 'db.example'"),
        "{}",
        out.stderr
    );
}
