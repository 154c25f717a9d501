//! The benchmark workloads of `../shared/bench/WORKLOADS.md`, on twistctl's reactor.
//!
//! ```sh
//! cargo build --release --example bench
//! target/release/examples/bench WORKLOAD [--flag VALUE ...]
//! ```
//!
//! WORKLOAD is one of `timers`, `connect`, `echo`, `lines`, `idle`, `tls-connect`,
//! `tls-echo` (the TLS ones in `bench/tls.rs`), with the same flags,
//! defaults, JSON line, self-checks and exit statuses as the reference
//! (`twisted_bench.py`, on Twisted). Everything runs on one reactor in one thread and
//! uses only the reactor's public API, the one the subcommands use: `call_later`,
//! `listen_tcp_with`, `connect_tcp`, protocols, factories and transports.
//!
//! The workload functions return their JSON line instead of printing it, so that the
//! smoke test (`tests/bench_smoke.rs`) can run each of them with tiny counts.

use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::rc::{Rc, Weak};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use serde_json::Value;

use twistctl::protocols::{LineControl, LineHandler, LineReceiver};
use twistctl::reactor::tcp::{
    ClientFactory, Connector, DEFAULT_CONNECT_TIMEOUT, ListenOptions, ListeningPort,
};
use twistctl::reactor::{
    Address, CloseReason, ConnectError, Factory, Producer, Protocol, ProtocolResult, Reactor,
    TransportRef,
};

#[path = "bench/tls.rs"]
mod tls;

pub use tls::{TlsConnectArgs, TlsEchoArgs, TlsFiles};

const IMPL: &str = "twistctl";
const BACKLOG: i32 = 1024;
const HELLO: &[u8] = b"hello\r\n";

// ---------------------------------------------------------------------------------------
// Command line

/// The command line: one workload and its flags.
#[derive(Debug, Parser)]
#[command(
    name = "bench",
    about = "twistctl's reactor on the benchmark workloads of WORKLOADS.md"
)]
pub struct Cli {
    /// The workload to run.
    #[command(subcommand)]
    pub workload: Workload,
}

/// The five workloads, with their flags.
#[derive(Debug, Clone, Subcommand)]
pub enum Workload {
    /// Schedule N timers with callLater, cancel a share, run until the rest fired.
    Timers(TimersArgs),
    /// M connections, C at a time: the server writes a hello and closes.
    Connect(ConnectArgs),
    /// K connections echo B bytes in total through the server, within a window.
    Echo(EchoArgs),
    /// N lines through a LineReceiver, written in batches by a producer.
    Lines(LinesArgs),
    /// K idle connection pairs: memory per pair, then close from the server side.
    Idle(IdleArgs),
    /// `connect` over TLS 1.3 with the contract's fixed parameters.
    TlsConnect(TlsConnectArgs),
    /// `echo` over TLS 1.3 with the contract's fixed parameters.
    TlsEcho(TlsEchoArgs),
}

/// `--timeout`, common to every workload.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Watchdog in seconds; on expiry print the JSON line and exit with status 3.
    #[arg(long, default_value_t = 120)]
    pub timeout: u32,
}

impl Default for Common {
    fn default() -> Self {
        Common { timeout: 120 }
    }
}

/// Flags of `timers`.
#[derive(Debug, Clone, Args)]
pub struct TimersArgs {
    /// Number of timers.
    #[arg(long, default_value_t = 1_000_000)]
    pub count: i64,
    /// Delays are 0 .. S-1 milliseconds.
    #[arg(long, default_value_t = 200)]
    pub spread_ms: i64,
    /// Share of the timers cancelled before the reactor runs.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub cancel_ratio: f64,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
}

/// Flags of `connect`.
#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// Number of connections.
    #[arg(long, default_value_t = 20_000)]
    pub count: i64,
    /// Connections in flight at a time.
    #[arg(long, default_value_t = 100)]
    pub concurrency: i64,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
}

/// Flags of `echo`.
#[derive(Debug, Clone, Args)]
pub struct EchoArgs {
    /// Number of connections.
    #[arg(long, default_value_t = 1)]
    pub connections: i64,
    /// Bytes echoed in total, over all connections.
    #[arg(long, default_value_t = 2 * 1024 * 1024 * 1024)]
    pub bytes: i64,
    /// Bytes per write.
    #[arg(long, default_value_t = 65536)]
    pub chunk: i64,
    /// Bytes a client may have sent and not yet received back.
    #[arg(long, default_value_t = 1024 * 1024)]
    pub window: i64,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
}

/// Flags of `lines`.
#[derive(Debug, Clone, Args)]
pub struct LinesArgs {
    /// Number of lines.
    #[arg(long, default_value_t = 1_000_000)]
    pub count: i64,
    /// Bytes per line, without the delimiter.
    #[arg(long, default_value_t = 32)]
    pub line_bytes: i64,
    /// Lines per write.
    #[arg(long, default_value_t = 8192)]
    pub batch_lines: i64,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
}

/// Flags of `idle`.
#[derive(Debug, Clone, Args)]
pub struct IdleArgs {
    /// Number of connection pairs.
    #[arg(long, default_value_t = 9_000)]
    pub connections: i64,
    /// Connections started and not yet made on both sides, at most.
    #[arg(long, default_value_t = 100)]
    pub pending: i64,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
}

impl Workload {
    /// The workload's name, as on the command line and in the JSON line.
    pub fn name(&self) -> &'static str {
        match self {
            Workload::Timers(_) => "timers",
            Workload::Connect(_) => "connect",
            Workload::Echo(_) => "echo",
            Workload::Lines(_) => "lines",
            Workload::Idle(_) => "idle",
            Workload::TlsConnect(_) => "tls-connect",
            Workload::TlsEcho(_) => "tls-echo",
        }
    }

    /// The watchdog's bound in seconds.
    pub fn timeout(&self) -> u32 {
        match self {
            Workload::Timers(a) => a.common.timeout,
            Workload::Connect(a) => a.common.timeout,
            Workload::Echo(a) => a.common.timeout,
            Workload::Lines(a) => a.common.timeout,
            Workload::Idle(a) => a.common.timeout,
            Workload::TlsConnect(a) => a.common.timeout,
            Workload::TlsEcho(a) => a.common.timeout,
        }
    }

    /// The `params` object: every flag but `--timeout`, in the reference's order.
    pub fn params(&self) -> Obj {
        let mut p = Obj::default();
        match self {
            Workload::Timers(a) => {
                p.put("count", a.count);
                p.put("spread_ms", a.spread_ms);
                p.put("cancel_ratio", a.cancel_ratio);
            }
            Workload::Connect(a) => {
                p.put("count", a.count);
                p.put("concurrency", a.concurrency);
            }
            Workload::Echo(a) => {
                p.put("connections", a.connections);
                p.put("bytes", a.bytes);
                p.put("chunk", a.chunk);
                p.put("window", a.window);
            }
            Workload::Lines(a) => {
                p.put("count", a.count);
                p.put("line_bytes", a.line_bytes);
                p.put("batch_lines", a.batch_lines);
            }
            Workload::Idle(a) => {
                p.put("connections", a.connections);
                p.put("pending", a.pending);
            }
            // The file flags are left out, as the contract says.
            Workload::TlsConnect(a) => {
                p.put("count", a.count);
                p.put("concurrency", a.concurrency);
            }
            Workload::TlsEcho(a) => {
                p.put("connections", a.connections);
                p.put("bytes", a.bytes);
                p.put("chunk", a.chunk);
                p.put("window", a.window);
            }
        }
        p
    }

    /// Runs the workload and returns its JSON line and check.
    pub fn run(&self) -> Outcome {
        let ctx = Ctx {
            workload: self.name(),
            params: self.params().render(),
        };
        match self {
            Workload::Timers(a) => run_timers(&ctx, a),
            Workload::Connect(a) => run_connect(&ctx, a),
            Workload::Echo(a) => run_echo(&ctx, a),
            Workload::Lines(a) => run_lines(&ctx, a),
            Workload::Idle(a) => run_idle(&ctx, a),
            Workload::TlsConnect(a) => tls::run_tls_connect(&ctx, a),
            Workload::TlsEcho(a) => tls::run_tls_echo(&ctx, a),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Output

/// A JSON object whose keys keep the order they were put in, as the contract's line
/// requires (serde_json's own map sorts them). Values are rendered with serde_json.
#[derive(Debug, Default, Clone)]
pub struct Obj(Vec<(&'static str, String)>);

impl Obj {
    /// Appends `key` with a scalar value.
    pub fn put(&mut self, key: &'static str, value: impl Into<Value>) {
        let value: Value = value.into();
        let rendered = serde_json::to_string(&value).unwrap_or_else(|_| "null".to_string());
        self.0.push((key, rendered));
    }

    /// Appends `key` with already rendered JSON.
    fn put_raw(&mut self, key: &'static str, rendered: String) {
        self.0.push((key, rendered));
    }

    /// `{"key": value, ...}` with the separators of Python's `json.dumps`.
    pub fn render(&self) -> String {
        let mut out = String::from("{");
        for (i, (key, value)) in self.0.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            let _ = write!(out, "\"{key}\": {value}");
        }
        out.push('}');
        out
    }
}

/// What a workload run produced: its JSON line (without the newline) and whether its
/// own check passed.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The one line the run prints on stdout.
    pub line: String,
    /// True when `check` is `"ok"`.
    pub ok: bool,
}

/// The workload's name and rendered params, which every line carries.
struct Ctx {
    workload: &'static str,
    params: String,
}

/// `x` rounded to `digits` decimals, as Python's `round` does for the reference.
fn round_to(x: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (x * scale).round() / scale
}

fn rate(ops: f64, seconds: Option<f64>, digits: i32) -> Value {
    match seconds {
        Some(s) if s > 0.0 => Value::from(round_to(ops / s, digits)),
        _ => Value::Null,
    }
}

/// The contract's line: common keys, then the workload's own, then `cpu_total_s`.
fn emit(ctx: &Ctx, watch: Option<&Stopwatch>, ops: u64, check: &str, extra: Obj) -> Outcome {
    let wall = watch.and_then(|w| w.wall);
    let cpu = watch.and_then(|w| w.cpu);
    let mut o = Obj::default();
    o.put("impl", IMPL);
    o.put("workload", ctx.workload);
    o.put_raw("params", ctx.params.clone());
    o.put("wall_s", round_to(wall.unwrap_or(0.0), 6));
    o.put("cpu_s", round_to(cpu.unwrap_or(0.0), 6));
    o.put("ops", ops);
    o.put_raw("ops_per_s", rate(ops as f64, wall, 1).to_string());
    o.put_raw("ops_per_cpu_s", rate(ops as f64, cpu, 1).to_string());
    o.put("peak_rss_kb", peak_rss_kb());
    o.put("check", check);
    o.0.extend(extra.0);
    o.put("cpu_total_s", round_to(cpu_now(), 6));
    Outcome {
        line: o.render(),
        ok: check == "ok",
    }
}

/// The line of a run that could not start or went wrong before it was measured.
fn fail(ctx: &Ctx, message: &str) -> Outcome {
    emit(ctx, None, 0, &format!("fail: {message}"), Obj::default())
}

// ---------------------------------------------------------------------------------------
// Measurement

/// User plus system CPU seconds of the whole process so far.
fn cpu_now() -> f64 {
    let ru = rusage();
    let secs = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    secs(ru.ru_utime) + secs(ru.ru_stime)
}

/// Peak resident set size of the process, in KiB.
fn peak_rss_kb() -> i64 {
    rusage().ru_maxrss
}

fn rusage() -> libc::rusage {
    // SAFETY: getrusage only writes into the struct we hand it; a zeroed rusage is a
    // valid value of that plain C struct.
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    }
}

/// VmRSS of the process in kB, from /proc/self/status.
fn vmrss_kb() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Wall and CPU time over the measured interval.
struct Stopwatch {
    w0: Instant,
    c0: f64,
    wall: Option<f64>,
    cpu: Option<f64>,
}

impl Stopwatch {
    fn start() -> Stopwatch {
        Stopwatch {
            w0: Instant::now(),
            c0: cpu_now(),
            wall: None,
            cpu: None,
        }
    }

    fn stop(&mut self) {
        self.wall = Some(self.w0.elapsed().as_secs_f64());
        self.cpu = Some(cpu_now() - self.c0);
    }
}

/// `127.0.0.1:0`: the kernel picks the port.
fn loopback_any() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

fn listen(reactor: &Reactor, factory: Rc<dyn Factory>) -> Result<ListeningPort, String> {
    let options = ListenOptions {
        backlog: BACKLOG,
        ..ListenOptions::default()
    };
    reactor
        .listen_tcp_with(loopback_any(), factory, options)
        .map_err(|e| e.to_string())
}

fn stop(reactor: &Reactor) {
    // A second stop (or one during shutdown) is refused; the first one is what counts.
    let _ = reactor.stop();
}

// ---------------------------------------------------------------------------------------
// timers

/// The contract's LCG delays in milliseconds: seed 42, step first.
pub fn lcg_delays_ms(n: usize, spread_ms: u64) -> Vec<u64> {
    let mut x: u64 = 42;
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) % spread_ms
        })
        .collect()
}

/// Integer percent, rounded half up: comparing against the float `R·100` would cancel
/// 91% at R=0.9.
pub fn cancel_threshold(ratio: f64) -> i64 {
    (ratio * 100.0 + 0.5).floor() as i64
}

fn is_cancelled(i: u64, threshold: i64) -> bool {
    ((i * 7919) % 100) < threshold as u64
}

struct TimerState {
    fired: Cell<u64>,
    expected: u64,
    reactor: Reactor,
}

fn run_timers(ctx: &Ctx, a: &TimersArgs) -> Outcome {
    let threshold = cancel_threshold(a.cancel_ratio);
    if a.count < 1 || a.spread_ms < 1 || !(0..=100).contains(&threshold) {
        return fail(ctx, "bad parameters");
    }
    let n = a.count as u64;
    let reactor = match Reactor::new() {
        Ok(r) => r,
        Err(e) => return fail(ctx, &e.to_string()),
    };
    let delays_ms = lcg_delays_ms(n as usize, a.spread_ms as u64);
    let delay_ms_sum: u64 = delays_ms.iter().sum();
    let delays: Vec<Duration> = delays_ms
        .iter()
        .map(|&d| Duration::from_millis(d))
        .collect();
    drop(delays_ms);
    let expected_cancel = (0..n).filter(|&i| is_cancelled(i, threshold)).count() as u64;
    let state = Rc::new(TimerState {
        fired: Cell::new(0),
        expected: n - expected_cancel,
        reactor: reactor.clone(),
    });

    let mut watch = Stopwatch::start();
    let mut calls = Vec::with_capacity(delays.len());
    for &delay in &delays {
        let st = state.clone();
        calls.push(reactor.call_later(delay, move || {
            let fired = st.fired.get() + 1;
            st.fired.set(fired);
            if fired == st.expected {
                stop(&st.reactor);
            }
        }));
    }
    let mut cancelled = 0u64;
    for (i, call) in calls.iter().enumerate() {
        if is_cancelled(i as u64, threshold) {
            let _ = call.cancel();
            cancelled += 1;
        }
    }
    if state.expected == 0 {
        let r = reactor.clone();
        reactor.call_when_running(move || stop(&r));
    }
    let run = reactor.run();
    watch.stop();
    drop(calls);
    if let Err(e) = run {
        return fail(ctx, &format!("the reactor failed: {e}"));
    }

    let fired = state.fired.get();
    let ok = fired == state.expected && cancelled == expected_cancel;
    let check = if ok {
        "ok".to_string()
    } else {
        format!("fail: fired {fired} expected {}", state.expected)
    };
    let mut extra = Obj::default();
    extra.put("scheduled", n);
    extra.put("cancelled", cancelled);
    extra.put("fired", fired);
    extra.put("delay_ms_sum", delay_ms_sum);
    emit(ctx, Some(&watch), n, &check, extra)
}

// ---------------------------------------------------------------------------------------
// connect

/// What `connect` and `tls-connect` count.
#[derive(Default)]
struct ConnectCounts {
    server_made: Cell<u64>,
    started: Cell<u64>,
    completed: Cell<u64>,
    bad: Cell<u64>,
    /// TLS only: connections that ended without the peer's close_notify.
    unclean: Cell<u64>,
    failed: Cell<u64>,
}

struct HelloServer {
    counts: Rc<ConnectCounts>,
}

impl Protocol for HelloServer {
    fn connection_made(&mut self, transport: &TransportRef) -> ProtocolResult {
        bump(&self.counts.server_made);
        transport.write(HELLO);
        transport.lose_connection();
        Ok(())
    }

    fn data_received(&mut self, _: &TransportRef, _: &[u8]) -> ProtocolResult {
        Ok(())
    }
}

struct HelloServerFactory {
    counts: Rc<ConnectCounts>,
}

impl Factory for HelloServerFactory {
    fn build_protocol(&self, _: Address) -> Option<Box<dyn Protocol>> {
        Some(Box::new(HelloServer {
            counts: self.counts.clone(),
        }))
    }
}

/// The client side of `connect`: its factory, and the state its protocols share.
struct ConnectClients {
    me: Weak<ConnectClients>,
    reactor: Reactor,
    port: SocketAddr,
    total: u64,
    counts: Rc<ConnectCounts>,
}

impl ConnectClients {
    fn start_one(&self) {
        bump(&self.counts.started);
        if let Some(me) = self.me.upgrade() {
            self.reactor
                .connect_tcp(self.port, me, Some(DEFAULT_CONNECT_TIMEOUT));
        }
    }
}

struct HelloClient {
    clients: Rc<ConnectClients>,
    buf: Vec<u8>,
}

impl Protocol for HelloClient {
    fn data_received(&mut self, _: &TransportRef, data: &[u8]) -> ProtocolResult {
        self.buf.extend_from_slice(data);
        Ok(())
    }

    fn connection_lost(&mut self, _: &CloseReason) {
        let c = &self.clients;
        if self.buf != HELLO {
            bump(&c.counts.bad);
        }
        bump(&c.counts.completed);
        if c.counts.started.get() < c.total {
            c.start_one();
        } else if c.counts.completed.get() == c.total {
            stop(&c.reactor);
        }
    }
}

impl Factory for ConnectClients {
    fn build_protocol(&self, _: Address) -> Option<Box<dyn Protocol>> {
        let clients = self.me.upgrade()?;
        Some(Box::new(HelloClient {
            clients,
            buf: Vec::new(),
        }))
    }
}

impl ClientFactory for ConnectClients {
    fn client_connection_failed(&self, _: &Connector, reason: &ConnectError) {
        log::warn!("connect failed: {reason}");
        bump(&self.counts.failed);
        bump(&self.counts.completed);
        if self.counts.completed.get() == self.total {
            stop(&self.reactor);
        } else if self.counts.started.get() < self.total {
            self.start_one();
        }
    }
}

fn bump(counter: &Cell<u64>) {
    counter.set(counter.get() + 1);
}

fn run_connect(ctx: &Ctx, a: &ConnectArgs) -> Outcome {
    if a.count < 1 || a.concurrency < 1 {
        return fail(ctx, "bad parameters");
    }
    let (m, c) = (a.count as u64, a.concurrency as u64);
    let reactor = match Reactor::new() {
        Ok(r) => r,
        Err(e) => return fail(ctx, &e.to_string()),
    };
    let counts = Rc::new(ConnectCounts::default());
    let server = Rc::new(HelloServerFactory {
        counts: counts.clone(),
    });
    let port = match listen(&reactor, server) {
        Ok(p) => p,
        Err(e) => return fail(ctx, &e),
    };
    let clients = Rc::new_cyclic(|me| ConnectClients {
        me: me.clone(),
        reactor: reactor.clone(),
        port: port.host(),
        total: m,
        counts: counts.clone(),
    });

    let mut watch = Stopwatch::start();
    for _ in 0..c.min(m) {
        clients.start_one();
    }
    let run = reactor.run();
    watch.stop();
    if let Err(e) = run {
        return fail(ctx, &format!("the reactor failed: {e}"));
    }

    let ok = counts.completed.get() == m
        && counts.server_made.get() == m
        && counts.bad.get() == 0
        && counts.failed.get() == 0;
    let check = if ok {
        "ok".to_string()
    } else {
        format!(
            "fail: completed {} server_made {} bad {} failed {}",
            counts.completed.get(),
            counts.server_made.get(),
            counts.bad.get(),
            counts.failed.get()
        )
    };
    let mut extra = Obj::default();
    extra.put("completed", counts.completed.get());
    extra.put("server_accepted", counts.server_made.get());
    extra.put_raw("conns_per_s", rate(m as f64, watch.wall, 1).to_string());
    emit(ctx, Some(&watch), m, &check, extra)
}

// ---------------------------------------------------------------------------------------
// echo

struct Echo;

impl Protocol for Echo {
    fn data_received(&mut self, transport: &TransportRef, data: &[u8]) -> ProtocolResult {
        transport.write(data);
        Ok(())
    }
}

struct EchoFactory;

impl Factory for EchoFactory {
    fn build_protocol(&self, _: Address) -> Option<Box<dyn Protocol>> {
        Some(Box::new(Echo))
    }
}

/// The client side of `echo`: its factory, and the state its protocols share.
struct EchoClients {
    me: Weak<EchoClients>,
    reactor: Reactor,
    k: u64,
    per: u64,
    extra: u64,
    chunk: u64,
    window: u64,
    /// Written shared, not copied (`write_shared`), as Twisted's `write` keeps the bytes.
    payload: Rc<[u8]>,
    next: Cell<u64>,
    made: Cell<u64>,
    done: Cell<u64>,
    echoed: Cell<u64>,
    failed: Cell<u64>,
}

impl EchoClients {
    /// The clients of K connections moving `total` bytes in all.
    fn new(reactor: &Reactor, k: u64, total: u64, chunk: u64, window: u64) -> Rc<EchoClients> {
        Rc::new_cyclic(|me| EchoClients {
            me: me.clone(),
            reactor: reactor.clone(),
            k,
            per: total / k,
            extra: total % k,
            chunk,
            window,
            payload: Rc::from(vec![0xA5; chunk as usize]),
            next: Cell::new(0),
            made: Cell::new(0),
            done: Cell::new(0),
            echoed: Cell::new(0),
            failed: Cell::new(0),
        })
    }
}

struct EchoClient {
    clients: Rc<EchoClients>,
    target: u64,
    sent: u64,
    recvd: u64,
    finished: bool,
}

impl EchoClient {
    /// Writes chunks while the window allows.
    fn pump(&mut self, transport: &TransportRef) {
        let c = &self.clients;
        while self.sent < self.target {
            let n = c.chunk.min(self.target - self.sent);
            if self.sent + n - self.recvd > c.window {
                break;
            }
            if n as usize == c.payload.len() {
                transport.write_shared(&c.payload);
            } else {
                transport.write(&c.payload[..n as usize]);
            }
            self.sent += n;
        }
    }
}

impl Protocol for EchoClient {
    fn connection_made(&mut self, transport: &TransportRef) -> ProtocolResult {
        bump(&self.clients.made);
        self.pump(transport);
        Ok(())
    }

    fn data_received(&mut self, transport: &TransportRef, data: &[u8]) -> ProtocolResult {
        self.recvd += data.len() as u64;
        let c = self.clients.clone();
        if self.recvd > self.target {
            bump(&c.failed);
            stop(&c.reactor);
            return Ok(());
        }
        if self.recvd == self.target {
            if !self.finished {
                self.finished = true;
                bump(&c.done);
                c.echoed.set(c.echoed.get() + self.recvd);
                if c.done.get() == c.k {
                    stop(&c.reactor);
                }
            }
        } else {
            self.pump(transport);
        }
        Ok(())
    }
}

impl Factory for EchoClients {
    fn build_protocol(&self, _: Address) -> Option<Box<dyn Protocol>> {
        let clients = self.me.upgrade()?;
        let i = self.next.get();
        self.next.set(i + 1);
        let target = self.per + u64::from(i < self.extra);
        Some(Box::new(EchoClient {
            clients,
            target,
            sent: 0,
            recvd: 0,
            finished: false,
        }))
    }
}

impl ClientFactory for EchoClients {
    fn client_connection_failed(&self, _: &Connector, reason: &ConnectError) {
        log::warn!("connect failed: {reason}");
        bump(&self.failed);
        stop(&self.reactor);
    }
}

fn run_echo(ctx: &Ctx, a: &EchoArgs) -> Outcome {
    if a.connections < 1 || a.bytes < a.connections || a.chunk < 1 || a.window < a.chunk {
        return fail(ctx, "bad parameters");
    }
    let (k, total) = (a.connections as u64, a.bytes as u64);
    let reactor = match Reactor::new() {
        Ok(r) => r,
        Err(e) => return fail(ctx, &e.to_string()),
    };
    let port = match listen(&reactor, Rc::new(EchoFactory)) {
        Ok(p) => p,
        Err(e) => return fail(ctx, &e),
    };
    let clients = EchoClients::new(&reactor, k, total, a.chunk as u64, a.window as u64);

    let mut watch = Stopwatch::start();
    for _ in 0..k {
        reactor.connect_tcp(port.host(), clients.clone(), Some(DEFAULT_CONNECT_TIMEOUT));
    }
    let run = reactor.run();
    watch.stop();
    if let Err(e) = run {
        return fail(ctx, &format!("the reactor failed: {e}"));
    }

    let (done, echoed, failed) = (
        clients.done.get(),
        clients.echoed.get(),
        clients.failed.get(),
    );
    let ok = done == k && echoed == total && failed == 0;
    let check = if ok {
        "ok".to_string()
    } else {
        format!(
            "fail: made {} done {done} echoed {echoed} failed {failed}",
            clients.made.get()
        )
    };
    let mut extra = Obj::default();
    extra.put("bytes_echoed", echoed);
    extra.put_raw("bytes_per_s", rate(total as f64, watch.wall, 1).to_string());
    extra.put_raw(
        "mb_per_s",
        rate(total as f64 / 1e6, watch.wall, 2).to_string(),
    );
    extra.put(
        "notes",
        "the client writes each full chunk of its payload with write_shared: the transport \
         keeps a reference to the payload until it is sent instead of copying it, as \
         Twisted's write keeps the bytes object",
    );
    emit(ctx, Some(&watch), total, &check, extra)
}

// ---------------------------------------------------------------------------------------
// lines

/// What the `lines` server and client report.
#[derive(Default)]
struct LineCounts {
    lines: Cell<u64>,
    badlen: Cell<u64>,
    reply: RefCell<Vec<u8>>,
    failed: Cell<u64>,
}

/// The server's line handler: counts lines and their lengths; answers after the last.
struct CountLines {
    counts: Rc<LineCounts>,
    n: u64,
    line_bytes: usize,
}

impl LineHandler for CountLines {
    fn line_received(&mut self, line: &[u8], ctl: &mut LineControl<'_>) -> ProtocolResult {
        let lines = self.counts.lines.get() + 1;
        self.counts.lines.set(lines);
        if line.len() != self.line_bytes {
            bump(&self.counts.badlen);
        }
        if lines == self.n {
            ctl.transport()
                .write(format!("ok {}\r\n", self.n).as_bytes());
        }
        Ok(())
    }
}

struct CountLinesFactory {
    counts: Rc<LineCounts>,
    n: u64,
    line_bytes: usize,
}

impl Factory for CountLinesFactory {
    fn build_protocol(&self, _: Address) -> Option<Box<dyn Protocol>> {
        let handler = CountLines {
            counts: self.counts.clone(),
            n: self.n,
            line_bytes: self.line_bytes,
        };
        let max_length = (self.line_bytes + 2).max(16384);
        Some(Box::new(
            LineReceiver::new(handler).with_max_length(max_length),
        ))
    }
}

/// Writes the lines in batches. The reactor's transport drives push producers only
/// (Twisted's streaming producers): it pauses one when its buffer passes the 64 KiB
/// high-water mark and resumes it once the buffer has drained below half of that. So
/// this producer writes batches until it is paused. A default batch (8192 lines of 34
/// bytes) passes the mark by itself, so each resume writes one batch, as Twisted's
/// pull producer does when the buffer has drained.
struct BatchProducer {
    transport: TransportRef,
    line: Rc<Vec<u8>>,
    full_batch: Rc<[u8]>,
    batch: u64,
    left: Cell<u64>,
    paused: Cell<bool>,
}

impl BatchProducer {
    /// Writes the next batch; false when there is none left.
    fn write_batch(&self) -> bool {
        let left = self.left.get();
        if left == 0 {
            return false;
        }
        if left >= self.batch {
            self.left.set(left - self.batch);
            self.transport.write_shared(&self.full_batch);
        } else {
            self.left.set(0);
            self.transport.write(&self.line.repeat(left as usize));
        }
        if self.left.get() == 0 {
            self.transport.unregister_producer();
        }
        true
    }
}

impl Producer for BatchProducer {
    fn pause_producing(&self) {
        self.paused.set(true);
    }

    fn resume_producing(&self) {
        self.paused.set(false);
        // `write` calls `pause_producing` from inside once the buffer is full enough.
        while !self.paused.get() && self.write_batch() {}
    }

    fn stop_producing(&self) {
        self.left.set(0);
    }
}

struct Sender {
    reactor: Reactor,
    counts: Rc<LineCounts>,
    line: Rc<Vec<u8>>,
    full_batch: Rc<[u8]>,
    n: u64,
    batch: u64,
}

impl Protocol for Sender {
    fn connection_made(&mut self, transport: &TransportRef) -> ProtocolResult {
        let producer = Rc::new(BatchProducer {
            transport: transport.clone(),
            line: self.line.clone(),
            full_batch: self.full_batch.clone(),
            batch: self.batch,
            left: Cell::new(self.n),
            paused: Cell::new(false),
        });
        transport.register_producer(producer.clone());
        // Start producing; the transport pauses and resumes from here on.
        producer.resume_producing();
        Ok(())
    }

    fn data_received(&mut self, _: &TransportRef, data: &[u8]) -> ProtocolResult {
        let mut reply = self.counts.reply.borrow_mut();
        reply.extend_from_slice(data);
        if reply.ends_with(b"\r\n") {
            stop(&self.reactor);
        }
        Ok(())
    }
}

struct SenderFactory {
    reactor: Reactor,
    counts: Rc<LineCounts>,
    line: Rc<Vec<u8>>,
    full_batch: Rc<[u8]>,
    n: u64,
    batch: u64,
}

impl Factory for SenderFactory {
    fn build_protocol(&self, _: Address) -> Option<Box<dyn Protocol>> {
        Some(Box::new(Sender {
            reactor: self.reactor.clone(),
            counts: self.counts.clone(),
            line: self.line.clone(),
            full_batch: self.full_batch.clone(),
            n: self.n,
            batch: self.batch,
        }))
    }
}

impl ClientFactory for SenderFactory {
    fn client_connection_failed(&self, _: &Connector, reason: &ConnectError) {
        log::warn!("connect failed: {reason}");
        bump(&self.counts.failed);
        stop(&self.reactor);
    }
}

fn run_lines(ctx: &Ctx, a: &LinesArgs) -> Outcome {
    if a.count < 1 || a.line_bytes < 0 || a.batch_lines < 1 {
        return fail(ctx, "bad parameters");
    }
    let (n, l, batch) = (a.count as u64, a.line_bytes as usize, a.batch_lines as u64);
    let reactor = match Reactor::new() {
        Ok(r) => r,
        Err(e) => return fail(ctx, &e.to_string()),
    };
    let mut line = vec![b'x'; l];
    line.extend_from_slice(b"\r\n");
    let full_batch: Rc<[u8]> = Rc::from(line.repeat(batch as usize));
    let line = Rc::new(line);
    let reply = format!("ok {n}\r\n").into_bytes();
    let counts = Rc::new(LineCounts::default());
    let server = Rc::new(CountLinesFactory {
        counts: counts.clone(),
        n,
        line_bytes: l,
    });
    let port = match listen(&reactor, server) {
        Ok(p) => p,
        Err(e) => return fail(ctx, &e),
    };
    let client = Rc::new(SenderFactory {
        reactor: reactor.clone(),
        counts: counts.clone(),
        line,
        full_batch,
        n,
        batch,
    });

    let mut watch = Stopwatch::start();
    reactor.connect_tcp(port.host(), client, Some(DEFAULT_CONNECT_TIMEOUT));
    let run = reactor.run();
    watch.stop();
    if let Err(e) = run {
        return fail(ctx, &format!("the reactor failed: {e}"));
    }

    let (lines, badlen) = (counts.lines.get(), counts.badlen.get());
    let got = counts.reply.borrow().clone();
    let ok = lines == n && badlen == 0 && got == reply && counts.failed.get() == 0;
    let check = if ok {
        "ok".to_string()
    } else {
        format!(
            "fail: lines {lines} badlen {badlen} reply {:?}",
            String::from_utf8_lossy(&got)
        )
    };
    let mut extra = Obj::default();
    extra.put("lines_counted", lines);
    extra.put("bytes_sent", n * (l as u64 + 2));
    extra.put_raw("lines_per_s", rate(n as f64, watch.wall, 1).to_string());
    extra.put(
        "notes",
        "the batch writer is a push producer (the transport has no pull producers): it \
         writes batches until paused, and is resumed once the buffer drains below 32 KiB; \
         one default batch passes the 64 KiB high-water mark, so each resume writes one; \
         a full batch is written with write_shared (the transport keeps a reference to it \
         instead of copying it, as Twisted's write keeps the bytes object)",
    );
    emit(ctx, Some(&watch), n, &check, extra)
}

// ---------------------------------------------------------------------------------------
// idle

/// Raises the soft open-file limit to `want` (the hard one too where allowed); settles
/// for the hard limit otherwise, and fails when that is below `need`.
fn raise_nofile(want: u64, need: u64) -> Result<u64, String> {
    // SAFETY: getrlimit and setrlimit read and write plain C structs we own.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err("getrlimit(RLIMIT_NOFILE) failed".to_string());
        }
        let (soft, hard) = (lim.rlim_cur, lim.rlim_max);
        if soft >= want {
            return Ok(soft);
        }
        let new_hard = if hard == libc::RLIM_INFINITY {
            hard
        } else {
            hard.max(want)
        };
        let raised = libc::rlimit {
            rlim_cur: want,
            rlim_max: new_hard,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
            return Ok(want);
        }
        let best = if hard == libc::RLIM_INFINITY {
            want
        } else {
            want.min(hard)
        };
        let mut soft = soft;
        if best > soft {
            let settled = libc::rlimit {
                rlim_cur: best,
                rlim_max: hard,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &settled) == 0 {
                soft = best;
            }
        }
        if soft < need {
            return Err(format!(
                "RLIMIT_NOFILE is {soft} (hard {hard}); {} connections need at least {need}",
                need.saturating_sub(32) / 2
            ));
        }
        Ok(soft)
    }
}

/// The shared state of `idle`: both factories, and the counters.
struct IdleState {
    clients: Rc<IdleClients>,
    reactor: Reactor,
    port: Cell<Option<SocketAddr>>,
    k: u64,
    pending: u64,
    started: Cell<u64>,
    cmade: Cell<u64>,
    smade: Cell<u64>,
    clost: Cell<u64>,
    slost: Cell<u64>,
    failed: Cell<u64>,
    servers: RefCell<Vec<TransportRef>>,
    watch: RefCell<Option<Stopwatch>>,
    rss_after: Cell<Option<i64>>,
}

impl IdleState {
    fn both(&self) -> u64 {
        self.cmade.get().min(self.smade.get())
    }

    fn progress(&self) {
        let Some(port) = self.port.get() else {
            return;
        };
        while self.started.get() < self.k && self.started.get() - self.both() < self.pending {
            bump(&self.started);
            self.reactor
                .connect_tcp(port, self.clients.clone(), Some(DEFAULT_CONNECT_TIMEOUT));
        }
        if self.both() == self.k && self.rss_after.get().is_none() {
            if let Some(watch) = self.watch.borrow_mut().as_mut() {
                watch.stop();
            }
            self.rss_after.set(Some(vmrss_kb().unwrap_or(0)));
            // Close from the server side.
            let servers = std::mem::take(&mut *self.servers.borrow_mut());
            for transport in &servers {
                transport.lose_connection();
            }
        }
    }

    fn lost(&self) {
        if self.clost.get() == self.k && self.slost.get() == self.k {
            stop(&self.reactor);
        }
    }
}

struct IdleServer(Rc<IdleState>);

impl Protocol for IdleServer {
    fn connection_made(&mut self, transport: &TransportRef) -> ProtocolResult {
        bump(&self.0.smade);
        self.0.servers.borrow_mut().push(transport.clone());
        self.0.progress();
        Ok(())
    }

    fn data_received(&mut self, _: &TransportRef, _: &[u8]) -> ProtocolResult {
        Ok(())
    }

    fn connection_lost(&mut self, _: &CloseReason) {
        bump(&self.0.slost);
        self.0.lost();
    }
}

struct IdleClient(Rc<IdleState>);

impl Protocol for IdleClient {
    fn connection_made(&mut self, _: &TransportRef) -> ProtocolResult {
        bump(&self.0.cmade);
        self.0.progress();
        Ok(())
    }

    fn data_received(&mut self, _: &TransportRef, _: &[u8]) -> ProtocolResult {
        Ok(())
    }

    fn connection_lost(&mut self, _: &CloseReason) {
        bump(&self.0.clost);
        self.0.lost();
    }
}

struct IdleServers(Rc<IdleState>);

impl Factory for IdleServers {
    fn build_protocol(&self, _: Address) -> Option<Box<dyn Protocol>> {
        Some(Box::new(IdleServer(self.0.clone())))
    }
}

/// The one client factory of every connection; it reaches the state it belongs to
/// through a `Weak`, so that the two make no cycle.
struct IdleClients(Weak<IdleState>);

impl Factory for IdleClients {
    fn build_protocol(&self, _: Address) -> Option<Box<dyn Protocol>> {
        Some(Box::new(IdleClient(self.0.upgrade()?)))
    }
}

impl ClientFactory for IdleClients {
    fn client_connection_failed(&self, _: &Connector, reason: &ConnectError) {
        log::warn!("connect failed: {reason}");
        if let Some(state) = self.0.upgrade() {
            bump(&state.failed);
            stop(&state.reactor);
        }
    }
}

fn run_idle(ctx: &Ctx, a: &IdleArgs) -> Outcome {
    if a.connections < 1 || a.pending < 1 {
        return fail(ctx, "bad parameters");
    }
    let (k, pending) = (a.connections as u64, a.pending as u64);
    let nofile = match raise_nofile((4 * k).max(1024), 2 * k + 32) {
        Ok(n) => n,
        Err(e) => return fail(ctx, &e),
    };
    let reactor = match Reactor::new() {
        Ok(r) => r,
        Err(e) => return fail(ctx, &e.to_string()),
    };
    let state = Rc::new_cyclic(|me| IdleState {
        clients: Rc::new(IdleClients(me.clone())),
        reactor: reactor.clone(),
        port: Cell::new(None),
        k,
        pending,
        started: Cell::new(0),
        cmade: Cell::new(0),
        smade: Cell::new(0),
        clost: Cell::new(0),
        slost: Cell::new(0),
        failed: Cell::new(0),
        servers: RefCell::new(Vec::new()),
        watch: RefCell::new(None),
        rss_after: Cell::new(None),
    });

    let Some(rss_before) = vmrss_kb() else {
        return fail(ctx, "no VmRSS in /proc/self/status");
    };
    let port = match listen(&reactor, Rc::new(IdleServers(state.clone()))) {
        Ok(p) => p,
        Err(e) => return fail(ctx, &e),
    };
    state.port.set(Some(port.host()));
    *state.watch.borrow_mut() = Some(Stopwatch::start());
    let st = state.clone();
    reactor.call_when_running(move || st.progress());
    let run = reactor.run();
    let watch = state.watch.borrow_mut().take();
    let close_s = watch
        .as_ref()
        .map(|w| w.w0.elapsed().as_secs_f64() - w.wall.unwrap_or(0.0))
        .unwrap_or(0.0);
    if let Err(e) = run {
        return fail(ctx, &format!("the reactor failed: {e}"));
    }

    let rss_after = state.rss_after.get();
    let ok = rss_after.is_some()
        && state.cmade.get() == k
        && state.smade.get() == k
        && state.clost.get() == k
        && state.slost.get() == k
        && state.failed.get() == 0;
    let check = if ok {
        "ok".to_string()
    } else {
        format!(
            "fail: started {} cmade {} smade {} clost {} slost {} failed {}",
            state.started.get(),
            state.cmade.get(),
            state.smade.get(),
            state.clost.get(),
            state.slost.get(),
            state.failed.get()
        )
    };
    let delta_kb = rss_after.unwrap_or(0) - rss_before;
    let mut extra = Obj::default();
    extra.put("rss_before_kb", rss_before);
    extra.put_raw(
        "rss_after_kb",
        rss_after.map_or(Value::Null, Value::from).to_string(),
    );
    extra.put(
        "rss_per_conn_bytes",
        round_to(delta_kb as f64 * 1024.0 / k as f64, 1),
    );
    extra.put("nofile_limit", nofile);
    extra.put("close_s", round_to(close_s, 6));
    emit(ctx, watch.as_ref(), k, &check, extra)
}

// ---------------------------------------------------------------------------------------
// The watchdog and logged errors

/// The timeout line, rendered before the run, up to its two late figures.
static TIMEOUT_LINE: OnceLock<(String, String, String)> = OnceLock::new();

/// A fixed-size buffer that `write!` fills without allocating: the watchdog's signal
/// handler must not touch the allocator.
struct StackBuf {
    buf: [u8; 4096],
    len: usize,
}

impl std::fmt::Write for StackBuf {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        if end > self.buf.len() {
            return Err(std::fmt::Error);
        }
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

extern "C" fn on_alarm(_: libc::c_int) {
    let Some((head, middle, tail)) = TIMEOUT_LINE.get() else {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(3) }
    };
    let mut out = StackBuf {
        buf: [0; 4096],
        len: 0,
    };
    let cpu = (cpu_now() * 1e6).round() / 1e6;
    let _ = writeln!(out, "{head}{}{middle}{cpu:?}{tail}", peak_rss_kb());
    // SAFETY: write and _exit are async-signal-safe; the buffer outlives the call.
    unsafe {
        libc::write(1, out.buf.as_ptr().cast(), out.len);
        libc::_exit(3);
    }
}

/// Arms SIGALRM: after `seconds` the run prints its timeout line and exits with 3.
fn arm_watchdog(workload: &Workload) {
    let seconds = workload.timeout();
    let ctx = Ctx {
        workload: workload.name(),
        params: workload.params().render(),
    };
    let mut o = Obj::default();
    o.put("impl", IMPL);
    o.put("workload", ctx.workload);
    o.put_raw("params", ctx.params);
    o.put("wall_s", 0.0);
    o.put("cpu_s", 0.0);
    o.put("ops", 0);
    o.put_raw("ops_per_s", "null".to_string());
    o.put_raw("ops_per_cpu_s", "null".to_string());
    o.put_raw("peak_rss_kb", "@".to_string());
    o.put("check", format!("timeout after {seconds}s"));
    o.put_raw("cpu_total_s", "@".to_string());
    let rendered = o.render();
    let mut parts = rendered.splitn(3, '@');
    let head = parts.next().unwrap_or_default().to_string();
    let middle = parts.next().unwrap_or_default().to_string();
    let tail = parts.next().unwrap_or_default().to_string();
    let _ = TIMEOUT_LINE.set((head, middle, tail));
    // SAFETY: installs a handler that only calls async-signal-safe functions (getrusage,
    // write, _exit) and formats into a stack buffer.
    unsafe {
        libc::signal(
            libc::SIGALRM,
            on_alarm as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
        libc::alarm(seconds);
    }
}

fn disarm_watchdog() {
    // SAFETY: cancelling a pending alarm has no preconditions.
    unsafe {
        libc::alarm(0);
    }
}

/// Turns an error the reactor logs (an `Err` escaping a callback) into a failed run
/// with status 4, as the reference does with Twisted's logged errors; warnings go to
/// stderr.
struct FailOnError {
    workload: &'static str,
    params: String,
}

impl log::Log for FailOnError {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Warn
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        eprintln!("{}: {}", record.level(), record.args());
        if record.level() == log::Level::Error {
            let ctx = Ctx {
                workload: self.workload,
                params: self.params.clone(),
            };
            let outcome = fail(
                &ctx,
                &format!("error logged by the reactor: {}", record.args()),
            );
            println!("{}", outcome.line);
            std::process::exit(4);
        }
    }

    fn flush(&self) {}
}

#[allow(dead_code)]
fn main() {
    let cli = Cli::parse();
    let workload = cli.workload;
    let logger = FailOnError {
        workload: workload.name(),
        params: workload.params().render(),
    };
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(log::LevelFilter::Warn);
    }
    arm_watchdog(&workload);
    let outcome = workload.run();
    disarm_watchdog();
    println!("{}", outcome.line);
    std::process::exit(if outcome.ok { 0 } else { 1 });
}
