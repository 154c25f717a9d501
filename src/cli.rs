//! The command line: clap definitions, the single source of `--help` (and of the
//! completions and man pages generated from it).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::commands::conntest::expect::{Escaped, Pattern};
use crate::commands::services::{SERVICES_PATH, ServiceDb};
use crate::commands::talk::server::{Mode, ServerConfig};
use crate::commands::talk::trust::TlsVerify;
use crate::commands::target::{self, Family, Host, parse_bind};
use crate::commands::{self, completions, conntest, talk, timer_demo};
use crate::duration::{parse as parse_duration, parse_nonzero as parse_nonzero_duration};
use crate::reactor::endpoints::description::{self, ServerDescription};
use crate::reactor::tls::Fingerprint;

/// twistctl: network tools on a Twisted-style reactor.
#[derive(Debug, Parser)]
#[command(
    name = "twistctl",
    version,
    about = "Network tools on a Twisted-style reactor: timers, port checks, line chat",
    long_about = "twistctl is one binary with four tools, all running on one hand-rolled, \
                  Twisted-style event loop: a callLater timer tour, a port-reachability checker \
                  for people and shell scripts, and a line-chat server and client.",
    propagate_version = true
)]
pub struct Cli {
    /// More log output on stderr: -v info, -vv debug, -vvv trace (RUST_LOG also works).
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    /// No log output (each subcommand's help says what else -q does there).
    #[arg(short = 'q', long = "quiet", global = true, conflicts_with = "verbose")]
    pub quiet: bool,

    /// The tool to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The classic callLater tour: print the time at 1, 2 and 3 s, stop at 5 s.
    #[command(
        long_about = "The classic callLater tour: prints the time at the given moments after \
                      start (1s, 2s and 3s by default), then stops the reactor (at 5s by default). \
                      With --every, prints on a LoopingCall instead: at once, then every interval, \
                      --count times, or until --stop-after without --count.",
        after_long_help = concat!("EXAMPLES:
    twistctl timer-demo
    twistctl timer-demo --at 250ms 1.5s --stop-after 2s --precise
    twistctl timer-demo --every 1s --count 5 --utc
    twistctl timer-demo --every 500ms --stop-after 3s

", "EXIT STATUS:
    0    the reactor stopped normally
    1    stdout could not be written (a closed pipe is not an error)
    2    usage error (e.g. a bad duration)
    130  interrupted by SIGINT (Ctrl-C)
    143  terminated by SIGTERM")
    )]
    TimerDemo(TimerDemoArgs),

    /// Is this port reachable? Exit status tells scripts what happened.
    #[command(
        long_about = "Checks whether TCP ports accept connections, and optionally whether the \
                      service behind them answers. A target is up when the TCP handshake \
                      completes (the connection is then closed at once without sending \
                      anything), and, with a check, when the check on the connection passes: \
                      --tls (the TLS handshake and the certificate), --starttls PROTO, \
                      --send/--expect (a banner or a reply). Every address a name resolves to \
                      is tried, IPv6 and IPv4 interleaved (Happy Eyeballs). All targets are \
                      checked concurrently; --wait, --any, --json and -- CMD work with every \
                      check.\n\n\
                      Statuses (--json): open, refused, timeout, unreachable, unresolved, \
                      error, cancelled; and for the checks: tls-error (the handshake failed), \
                      cert-invalid (expired, not yet valid, unknown issuer, name mismatch, bad \
                      signature), cert-expiring (--cert-days), starttls-refused, mismatch \
                      (--expect); with --closed: closed (passed) and still-open.",
        after_long_help = concat!("EXAMPLES:
    twistctl conntest db 5432 && ./migrate
    twistctl conntest db 5432 6379
    twistctl conntest --wait 30s db:5432 cache:6379 -- ./migrate
    twistctl conntest --wait 5s db:5432 -- pg_dump db > backup.sql
    twistctl conntest --open --json 127.0.0.1 1-1024
    twistctl conntest --any --wait 1m replica1:5432 replica2:5432
    twistctl conntest --watch --count 10 example.com:443
    twistctl conntest --watch --changes --timestamps db:5432 cache:6379 >> uptime.log
    twistctl conntest --tls --cert-days 14 example.com:443
    twistctl conntest --tls --alpn h2,http/1.1 --json example.com:443 | jq .cert_not_after
    twistctl conntest --expect '^SSH-2\\.0' git.example.com:22
    twistctl conntest --closed --wait 30s 127.0.0.1:8080 && ./start-new-server
    twistctl conntest --send 'PING\\r\\n' --expect '^\\+PONG' --quit 'QUIT\\r\\n' cache:6379
    twistctl conntest --nagios --tls --cert-warn-days 30 --cert-days 7 --warning 500ms \\
        --critical 1s example.com:443

", "EXIT STATUS:
    0    every target is up (with --any: at least one) and its check passed
    1    refused, unreachable or reset; a --closed target still open; or stdout could
         not be written
    2    usage error (a bad target, port, option, pattern or CA file)
    3    a name does not exist, or the resolver failed (its own time-out included)
    4    connected, but the check on the connection failed (tls-error, cert-invalid,
         cert-expiring, starttls-refused, mismatch)
    124  timed out (an attempt's or a lookup's --timeout, nothing received for --expect
         within --timeout, or the --wait deadline)
    126  CMD could not be run; 127: CMD was not found
    130  interrupted by SIGINT (Ctrl-C)
    143  terminated by SIGTERM
    With several targets: the status of the first failed target in argument order.
    With -- CMD: the status of CMD once it has run.
    With --watch: 0 when every target answered at least once, else 1 (also after
    Ctrl-C, which is the normal way to end a watch); 143 after SIGTERM; 2 usage.
    With --nagios (the Monitoring Plugins guidelines), instead: 0 OK, 1 WARNING
    (above --warning, or the certificate expires in fewer than --cert-warn-days),
    2 CRITICAL (any failure, or above --critical or --cert-days), 3 UNKNOWN (an
    unresolved name, a usage error, or a status line that could not be written).
    Several targets: the worst state.")
    )]
    Conntest(Box<ConntestArgs>),

    /// Line chat, server side: talk with every connected client from this console.
    #[command(
        long_about = "Line chat, server side: talk with every connected client from this \
                      console. Clients are numbered from 1 (a TLS client once its handshake \
                      completed: one that fails it takes no number, one that has not \
                      completed it after 10s is dropped); their lines print as \
                      'Client 1: hello', with control characters, bidirectional controls \
                      and invisible characters escaped (\\x1b, \\u{202e}). The first line of \
                      output is 'Listening on ADDRESS:PORT'.\n\n\
                      The prompt names where a typed line goes: 'to 3> ' (the client that \
                      spoke last, or the only one), '> ' when that is nobody. The recipient \
                      is fixed when the prompt is drawn: others speaking meanwhile change \
                      the next prompt, not this line; if client 3 has left by Enter the \
                      line is not sent ('* not sent: client 3 has left'); at '> ' it goes \
                      to the only client, if there is exactly one. Enter on an empty line \
                      draws a fresh prompt. Typed lines keep their leading blanks. Ctrl-C \
                      clears a half-typed line; on an empty prompt it stops the server \
                      (130), as SIGINT does.\n\n\
                      Commands: /to N text, /all text, /who, /kick N, /quit, /help; //text \
                      sends /text; a line 'bye' closes the client it is sent to. /kick \
                      tells the client '* disconnected by the operator', --idle-timeout \
                      '* disconnected: idle for DUR'.\n\n\
                      A client that ends its input (half-closes) is shown as '* client 3 \
                      finished sending' and stays connected for the answer, listed as \
                      half-closed by /who, until 'bye', /kick, --idle-timeout or /quit \
                      closes it; a last line without a newline is shown first.\n\n\
                      When stdin is not a terminal there is no prompt: its lines are typed \
                      lines, each going to the client that spoke last (or the only one) \
                      and echoed on stdout as the prompt would have shown it ('to 3> \
                      text', 'to all> text'), and its end means /quit.",
        after_long_help = concat!("EXAMPLES:
    twistctl talk-server 8000
    twistctl talk-server --bind localhost 0 --echo --idle-timeout 5m
    twistctl talk-server --tls 8443
    twistctl talk-server --tls --cert chain.pem --key key.pem 8443
    twistctl talk-server --listen tcp:8000 --listen unix:/run/talk.sock
    twistctl talk-server --tls 8443 --listen unix:/run/talk.sock:tls=1

", "EXIT STATUS:
    0    /quit, Ctrl-D or end of input
    1    runtime failure (e.g. the port could not be bound, or stdout could not be
         written)
    2    usage error
    130  interrupted by SIGINT (Ctrl-C)
    143  terminated by SIGTERM")
    )]
    TalkServer(TalkServerArgs),

    /// Line chat, client side: talk with the operator of a talk-server.
    #[command(
        long_about = "Line chat, client side: talk with the operator of a talk-server (or any \
                      line server). Typed lines are sent, keeping their leading blanks; \
                      lines from the server print as 'Server: text', with control \
                      characters, bidirectional controls and invisible characters escaped, \
                      above the 'Client: ' prompt. A last line from the server without a \
                      newline is shown before the end.\n\n\
                      Typing 'bye' sends it and half-closes; the client ends when the server \
                      closes, or gives up after --linger (2s by default) with status 124 \
                      ('* the server had not closed after 2s; giving up'). When stdin is not \
                      a terminal its lines are sent as typed, and its end half-closes while \
                      replies are still printed until the server closes (with no time \
                      limit unless --linger is given), so a script loses no reply.\n\n\
                      Ctrl-C clears a half-typed line, and on an empty prompt closes at once \
                      (130). A half-typed line when the connection ends is printed back on \
                      stderr ('* not sent: TEXT').",
        after_long_help = concat!("EXAMPLES:
    twistctl talk-client localhost 8000
    twistctl talk-client '[::1]:8000'
    printf 'hello\\nbye\\n' | twistctl talk-client localhost 8000
    printf 'what time is it?\\n' | twistctl talk-client --linger 1m localhost 8000
    twistctl talk-client --tls chat.example 8443
    twistctl talk-client --tls --fingerprint SHA256:AB:CD:... 192.0.2.7 8443
    twistctl talk-client --tls --ca ca.pem localhost 8443
    twistctl talk-client unix:/run/talk.sock
    twistctl talk-client --tls --fingerprint SHA256:AB:CD:... unix:/run/talk.sock

", "EXIT STATUS:
    0    the conversation ended (bye, end of input, or the server closed)
    1    the connection could not be made, or it broke (a reset, or a line over
         64 KiB from the server), or stdout could not be written; with --tls, the
         server's certificate was refused (expired, unknown issuer, name mismatch,
         not the pinned one, changed since it was trusted, or not trusted)
    2    usage error
    124  the server had not closed within the --linger limit (2s after bye)
    130  interrupted by SIGINT (Ctrl-C)
    143  terminated by SIGTERM")
    )]
    TalkClient(TalkClientArgs),

    /// Print a shell completion script to stdout.
    #[command(after_long_help = "EXAMPLES:
    source <(twistctl completions bash)
    twistctl completions zsh > ~/.zfunc/_twistctl
    twistctl completions fish > ~/.config/fish/completions/twistctl.fish

EXIT STATUS:
    0    the script was printed
    1    it could not be written
    2    usage error (an unknown shell)")]
    Completions(CompletionsArgs),
}

/// Options of `twistctl completions`.
#[derive(Debug, Clone, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Options of `twistctl timer-demo`.
#[derive(Debug, Clone, Args)]
pub struct TimerDemoArgs {
    /// Moments after start at which to print the time.
    #[arg(long, value_name = "DUR", num_args = 1.., value_parser = parse_duration,
          default_values = ["1s", "2s", "3s"])]
    pub at: Vec<Duration>,

    /// When to stop the reactor.
    #[arg(long, value_name = "DUR", value_parser = parse_duration, default_value = "5s")]
    pub stop_after: Duration,

    /// Print on a LoopingCall every DUR instead (the first print is at once).
    #[arg(long, value_name = "DUR", value_parser = parse_nonzero_duration)]
    pub every: Option<Duration>,

    /// With --every: how many times to print before stopping (without it: until
    /// --stop-after).
    #[arg(long, value_name = "N", requires = "every",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,

    /// Print UTC instead of local time.
    #[arg(long)]
    pub utc: bool,

    /// Print milliseconds and how late each call fired.
    #[arg(long)]
    pub precise: bool,
}

/// Options of `twistctl conntest`.
#[derive(Debug, Clone, Args)]
pub struct ConntestArgs {
    /// The targets.
    #[arg(
        value_name = "TARGET",
        required = true,
        help = "HOST PORTS, HOST PORT PORT... (digits only, as nc takes them), or one or more \
                HOST:PORTS ([::1]:PORTS for IPv6). PORTS is a port, a list (80,443), a range \
                (8000-8100), a service name (ssh), or a mix; or a UNIX socket: unix:PATH or \
                unix:@NAME (abstract)"
    )]
    pub targets: Vec<String>,

    /// Give up on one connection attempt, or one name lookup, after DUR (default 10s;
    /// with --watch, the --interval).
    #[arg(long, value_name = "DUR", value_parser = parse_nonzero_duration,
          allow_hyphen_values = true)]
    pub timeout: Option<Duration>,

    /// Retry down targets every --interval until all are up, or until DUR has passed
    /// since the start (then exit 124). Interrupted (Ctrl-C, SIGTERM), it lists the
    /// targets still down on stderr.
    #[arg(long, value_name = "DUR", value_parser = parse_duration, allow_hyphen_values = true,
          group = "repeat")]
    pub wait: Option<Duration>,

    /// With --wait: time between retries of a down target (default 500ms). With
    /// --watch: time between the starts of two probes of a target (default 1s).
    #[arg(long, value_name = "DUR", value_parser = parse_nonzero_duration,
          requires = "repeat", allow_hyphen_values = true)]
    pub interval: Option<Duration>,

    /// Probe every target again and again on a fixed grid (--interval), a line per
    /// probe, and print loss and latency statistics at the end (Ctrl-C, SIGTERM or
    /// --count); Ctrl-\ or Enter prints them so far. A TCP ping.
    #[arg(long, group = "repeat", conflicts_with_all = ["any", "open", "command"])]
    pub watch: bool,

    /// With --watch: stop after N probes of each target.
    #[arg(long, value_name = "N", requires = "watch", value_parser = parse_count,
          allow_hyphen_values = true)]
    pub count: Option<usize>,

    /// With --watch: start each probe line with the local time (12:00:03.412).
    #[arg(long, requires = "watch")]
    pub timestamps: bool,

    /// With --watch: print only the lines that say a target went down or came back
    /// (and the summary), for logs that run for days.
    #[arg(long, requires = "watch")]
    pub changes: bool,

    /// Succeed as soon as any one target is up; the others are cancelled (wait for one
    /// of these replicas). Only the winner is printed (-v shows the rest); if none is
    /// up, every failure is.
    #[arg(long)]
    pub any: bool,

    /// Print only targets that connected (scan mode); the exit status is unchanged.
    #[arg(long)]
    pub open: bool,

    /// One JSON object per target per line on stdout: host, port, addr, status, error,
    /// elapsed_ms; with the checks, where they apply: tls_version, cipher, alpn,
    /// cert_subject, cert_issuer, cert_sans, cert_not_before, cert_not_after (RFC 3339),
    /// cert_days_left, cert_sha256, banner.
    #[arg(long)]
    pub json: bool,

    /// Print and exit as a check command of Nagios, Icinga, Naemon, Sensu or Checkmk
    /// (the Monitoring Plugins guidelines): one line `CONNTEST OK - 127.0.0.1 port 443
    /// open in 0.41 ms, certificate expires in 61 days|time=0.000410s;0.5;1;0;
    /// cert_days=61;30;7;;`; with several targets a summary line, then one line per
    /// target, the worst state winning. Exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN,
    /// usage errors included. States: open (and closed with --closed) is OK unless a
    /// threshold says otherwise; refused, timeout, unreachable, error, tls-error,
    /// cert-invalid, cert-expiring, starttls-refused, mismatch and still-open are
    /// CRITICAL; an unresolved name is UNKNOWN (nothing was checked). Not with --json,
    /// --watch, --wait, --any, --open, -q or -- CMD.
    #[arg(long, help_heading = "Monitoring",
          conflicts_with_all = ["json", "watch", "wait", "any", "open", "command"])]
    pub nagios: bool,

    /// With --nagios: WARNING when the response time (from the start to the verdict:
    /// lookup, connect and every check on the connection) is above DUR.
    #[arg(long, value_name = "DUR", requires = "nagios", value_parser = parse_duration,
          allow_hyphen_values = true, help_heading = "Monitoring")]
    pub warning: Option<Duration>,

    /// With --nagios: CRITICAL when the response time is above DUR.
    #[arg(long, value_name = "DUR", requires = "nagios", value_parser = parse_duration,
          allow_hyphen_values = true, help_heading = "Monitoring")]
    pub critical: Option<Duration>,

    /// With --nagios and --tls: WARNING when the certificate expires in fewer than N
    /// days (--cert-days N is the CRITICAL threshold).
    #[arg(long, value_name = "N", requires_all = ["nagios", "tls_mode"],
          value_parser = parse_days, help_heading = "Monitoring")]
    pub cert_warn_days: Option<i64>,

    /// At most N connection attempts in flight (never more than the open-file limit
    /// allows).
    #[arg(long, value_name = "N", default_value = "512", value_parser = parse_count,
          allow_hyphen_values = true)]
    pub concurrency: usize,

    /// After connecting, a TLS handshake: the server's certificate must verify (system
    /// trust store, or --ca) for the host as typed (or --sni). Reports version, cipher,
    /// ALPN and the certificate; closes with close_notify.
    #[arg(long, group = "tls_mode", help_heading = "Checks")]
    pub tls: bool,

    /// Upgrade a plain-text session to TLS first, then check as --tls: smtp (EHLO,
    /// STARTTLS), imap (a001 STARTTLS), pop3 (STLS), ftp (AUTH TLS) or postgres
    /// (SSLRequest). A server that refuses fails with what it answered.
    #[arg(long, value_name = "PROTO", group = "tls_mode", value_parser = parse_dialect,
          help_heading = "Checks")]
    pub starttls: Option<conntest::starttls::Dialect>,

    /// The TLS server name to send and verify (default: the host as typed; none is sent
    /// for an IP address). A UNIX socket has no host name: there it is needed, unless
    /// --insecure is given.
    #[arg(
        long,
        value_name = "NAME",
        requires = "tls_mode",
        help_heading = "Checks"
    )]
    pub sni: Option<String>,

    /// Trust the CA certificates of this PEM file instead of the system's.
    #[arg(
        long,
        value_name = "FILE",
        requires = "tls_mode",
        conflicts_with = "insecure",
        help_heading = "Checks"
    )]
    pub ca: Option<std::path::PathBuf>,

    /// Do not verify the certificate (its details are still reported; --cert-days
    /// still applies).
    #[arg(long, requires = "tls_mode", help_heading = "Checks")]
    pub insecure: bool,

    /// Offer these ALPN protocols (h2,http/1.1); the chosen one is reported.
    #[arg(
        long,
        value_name = "LIST",
        requires = "tls_mode",
        value_delimiter = ',',
        help_heading = "Checks"
    )]
    pub alpn: Vec<String>,

    /// Fail (cert-expiring, exit 4) when the certificate expires in fewer than N days
    /// (default: only an expired one fails). With --nagios: the critical threshold.
    #[arg(long, value_name = "N", requires = "tls_mode", value_parser = parse_days,
          help_heading = "Checks")]
    pub cert_days: Option<i64>,

    /// Send STR once connected (after the TLS handshake with --tls). Escapes: \r \n
    /// \t \\ \xHH; nothing is appended.
    #[arg(long, value_name = "STR", value_parser = Escaped::parse, allow_hyphen_values = true,
          help_heading = "Checks")]
    pub send: Option<Escaped>,

    /// The reply (UTF-8, invalid bytes replaced) must match REGEX within --timeout;
    /// without --send, waits for the server's banner. No match by close, --max-bytes or
    /// --timeout: mismatch (exit 4); nothing at all by --timeout: 124.
    #[arg(long, value_name = "REGEX", value_parser = Pattern::parse, allow_hyphen_values = true,
          help_heading = "Checks")]
    pub expect: Option<Pattern>,

    /// With --expect: read at most N bytes of the reply [default: 65536].
    #[arg(long, value_name = "N", requires = "expect", value_parser = parse_count,
          help_heading = "Checks")]
    pub max_bytes: Option<usize>,

    /// Send STR before closing (QUIT\r\n), escapes as for --send.
    #[arg(long, value_name = "STR", value_parser = Escaped::parse, allow_hyphen_values = true,
          help_heading = "Checks")]
    pub quit: Option<Escaped>,

    /// Invert the check: a target passes when nothing accepts (refused, unreachable,
    /// timed out) and fails when it is still open (status still-open, exit 1). With
    /// --wait: wait until every target is closed (124 if one is still open at the
    /// deadline).
    #[arg(long, conflicts_with_all = ["watch", "tls_mode", "send", "expect", "open"],
          help_heading = "Checks")]
    pub closed: bool,

    /// Use IPv4 addresses only.
    #[arg(short = '4', conflicts_with = "ipv6")]
    pub ipv4: bool,

    /// Use IPv6 addresses only.
    #[arg(short = '6')]
    pub ipv6: bool,

    /// Once every target (with --any: one) is up, run CMD in place of twistctl (exec):
    /// its exit status is the result. Not run otherwise. With CMD, stdout is CMD's
    /// alone: twistctl prints everything (--json included) on stderr.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Options of `twistctl talk-server`.
#[derive(Debug, Clone, Args)]
pub struct TalkServerArgs {
    /// The port to listen on (0: the kernel chooses a free port) [default: 8000].
    #[arg(value_name = "PORT", value_parser = parse_listen_port, conflicts_with = "port_option")]
    pub port: Option<u16>,

    /// The port to listen on, as an option (the same as PORT).
    #[arg(long = "port", id = "port_option", value_name = "PORT",
          value_parser = parse_listen_port, allow_hyphen_values = true)]
    pub port_option: Option<u16>,

    /// The address to listen on: an IP address (127.0.0.1, ::1 or [::1]) or a name
    /// (localhost: every address it resolves to). Default: every IPv4 and IPv6 address.
    #[arg(long, value_name = "ADDR", value_parser = parse_bind)]
    pub bind: Option<Host>,

    /// At most N clients at once (1 or more); the next one is told the server is full.
    #[arg(long, value_name = "N", default_value = "1024", value_parser = parse_count,
          allow_hyphen_values = true)]
    pub max_clients: usize,

    /// Longest line accepted from a client, in bytes (1 or more).
    #[arg(long, value_name = "BYTES", default_value = "65536", value_parser = parse_count,
          allow_hyphen_values = true)]
    pub max_line: usize,

    /// Close clients that send nothing for DUR (0: never).
    #[arg(long, value_name = "DUR", value_parser = parse_duration, allow_hyphen_values = true)]
    pub idle_timeout: Option<Duration>,

    /// No console (stdin is ignored): send every received line back to its sender, until
    /// SIGINT or SIGTERM. A client's end of input closes it once everything it sent (a
    /// last line without a newline too) has been echoed. A client that does not read is
    /// not read from either.
    #[arg(long)]
    pub echo: bool,

    /// The classic tutorial's wire format: no line delimiters.
    #[arg(long)]
    pub raw: bool,

    /// Serve TLS. Without --cert/--key: a self-signed ECDSA P-256 certificate, made on
    /// first use and kept (key mode 0600) in $XDG_STATE_HOME/twistctl
    /// (~/.local/state/twistctl), so its fingerprint, printed at start
    /// (`TLS certificate SHA256:...`), stays the same across restarts.
    #[arg(long)]
    pub tls: bool,

    /// The PEM certificate chain to present (leaf first) with --tls, and on ssl: and
    /// unix:...:tls=1 descriptions without their own; needs --key.
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,

    /// The PEM private key of --cert.
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,

    /// Keep the self-signed certificate (of --tls, ssl: and unix:...:tls=1) in DIR
    /// instead.
    #[arg(long, value_name = "DIR", conflicts_with = "cert")]
    pub cert_dir: Option<PathBuf>,

    /// Listen where the endpoint description DESC says, too; repeat it to listen on
    /// several at once: tcp:8000, tcp:8000:interface=127.0.0.1,
    /// unix:/run/talk.sock[:mode=660], unix:@talk (abstract), ssl:8443,
    /// ssl:8443:privateKey=KEY:certKey=CERT, unix:/run/talk.sock:tls=1 (TLS over the
    /// socket). ssl: and tls=1 without their own files serve the certificate of --tls
    /// (--cert/--key, or the kept self-signed one). PORT, --port, --bind and --tls add
    /// one listener more (--tls makes that one TLS, not the descriptions); with only
    /// --listen there is none. A socket file left by a server that is gone is reused;
    /// one a server still accepts on is refused.
    #[arg(long, value_name = "DESC", value_parser = parse_listen)]
    pub listen: Vec<ServerDescription>,
}

/// A server endpoint description (`--listen`).
fn parse_listen(text: &str) -> Result<ServerDescription, String> {
    description::parse_server(text).map_err(|error| error.to_string())
}

/// Options of `twistctl talk-client`.
#[derive(Debug, Clone, Args)]
pub struct TalkClientArgs {
    /// The server.
    #[arg(
        value_name = "TARGET",
        help = "The server, written as for conntest, one port: HOST PORT, HOST:PORT, \
                [::1]:PORT, or a service name for the port (localhost http); a UNIX \
                socket: unix:PATH or unix:@NAME (abstract); TLS: tls:HOST:PORT \
                [default: localhost 8000]"
    )]
    pub target: Vec<String>,

    /// Give up connecting after DUR.
    #[arg(long, value_name = "DUR", value_parser = parse_nonzero_duration, default_value = "30s",
          allow_hyphen_values = true)]
    pub timeout: Duration,

    /// Once this side has stopped sending (bye, or the end of input), wait at most DUR
    /// for the server to close, then give up with status 124. Default: 2s after bye, no
    /// limit after the end of input.
    #[arg(long, value_name = "DUR", value_parser = parse_duration, allow_hyphen_values = true)]
    pub linger: Option<Duration>,

    /// The classic tutorial's wire format: no line delimiters.
    #[arg(long)]
    pub raw: bool,

    /// Speak TLS. The server's certificate is verified with the system's trust store
    /// (or --ca, --fingerprint, --insecure). One no authority vouches for can be
    /// trusted on first use, at a terminal: it is remembered in
    /// $XDG_CONFIG_HOME/twistctl/known_hosts (~/.config/twistctl) and a later
    /// different one is refused. Over TLS there is no half-close: at the end of piped
    /// input nothing is sent and the server's close is awaited (see --linger).
    #[arg(long)]
    pub tls: bool,

    /// With --tls: trust the CA certificates of this PEM file instead of the system's.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,

    /// With --tls: accept only the server certificate with this SHA-256 fingerprint
    /// (as talk-server prints it: SHA256:AB:CD:...); chain and name are not checked.
    #[arg(long, value_name = "SHA256:..", conflicts_with = "ca",
          value_parser = parse_fingerprint)]
    pub fingerprint: Option<Fingerprint>,

    /// With --tls: do not verify the server at all (said on stderr). Anyone on the path
    /// could read and change the chat.
    #[arg(long, conflicts_with_all = ["ca", "fingerprint"])]
    pub insecure: bool,

    /// With --tls: the name to verify the server's certificate for and send as SNI
    /// (default: the host as typed). Over a UNIX socket, which has no host name, it is
    /// needed unless --fingerprint or --insecure is given.
    #[arg(long, value_name = "NAME")]
    pub sni: Option<String>,
}

/// A SHA-256 fingerprint: 32 hex pairs, with or without colons and `SHA256:`.
fn parse_fingerprint(text: &str) -> Result<Fingerprint, String> {
    Fingerprint::parse(text).map_err(|error| error.to_string())
}

/// A count or size: 1 or more. Zero and negative numbers are refused with a message
/// that says so (not clap's "unexpected argument '-8'").
fn parse_count(text: &str) -> Result<usize, String> {
    if text.starts_with('-') {
        return Err(format!("'{text}' is negative; give a number of 1 or more"));
    }
    match text.parse::<usize>() {
        Ok(0) => Err(format!("'{text}' is zero; give a number of 1 or more")),
        Ok(count) => Ok(count),
        Err(_) => Err(format!("'{text}' is not a number (give 1 or more)")),
    }
}

/// talk-server's port: 1-65535, or 0 for a port the kernel chooses.
fn parse_listen_port(text: &str) -> Result<u16, String> {
    target::parse_port(text, true)
}

/// What `-q` does in each subcommand: a global flag has one help text, so each
/// subcommand gets its own `-q` with the same id (clap then does not copy the global
/// one in) and its own words.
const QUIET_HELP: [(&str, &str); 5] = [
    (
        "timer-demo",
        "No log output, warnings included; the tour's own lines still print",
    ),
    (
        "conntest",
        "Print no results and no log output: only the exit status tells (usage errors \
         still print)",
    ),
    (
        "talk-server",
        "No log output; the chat, its notices and the listening line still print",
    ),
    (
        "talk-client",
        "No log output; the conversation and its notices still print",
    ),
    ("completions", "No log output; the script still prints"),
];

/// The command line as clap sees it: the derived definitions plus each subcommand's
/// own `-q` help. `--help`, the completions and the man pages all come from here.
pub fn command() -> clap::Command {
    let mut command = Cli::command();
    for (name, help) in QUIET_HELP {
        command = command.mut_subcommand(name, |sub| {
            sub.arg(
                clap::Arg::new("quiet")
                    .short('q')
                    .long("quiet")
                    .action(clap::ArgAction::SetTrue)
                    .conflicts_with("verbose")
                    .help(help),
            )
        });
    }
    command
}

/// A usage error found after clap's own checks: printed and exited like clap's (status
/// 2), with the subcommand's usage line.
fn usage_error(subcommand: &str, message: impl std::fmt::Display) -> clap::Error {
    let mut command = command();
    command.build();
    let kind = clap::error::ErrorKind::ValueValidation;
    match command.find_subcommand_mut(subcommand) {
        Some(sub) => sub.error(kind, message),
        None => command.error(kind, message),
    }
}

/// Reports a command line that did not parse, as [`parse`] returned it, and gives the
/// exit status: clap's (2 for a usage error, 0 for `--help` and `--version`), except
/// that a conntest command line with `--nagios` is a monitoring plugin's: a usage
/// error prints `CONNTEST UNKNOWN - ...` on stdout (clap's full message still goes to
/// stderr) and exits 3.
pub fn report_error(error: &clap::Error, args: &[std::ffi::OsString]) -> i32 {
    use clap::error::ErrorKind;
    let _ = error.print();
    let informational = matches!(
        error.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    );
    if informational || !asks_for_nagios(args) {
        return error.exit_code();
    }
    let rendered = error.render().to_string();
    let message = rendered.trim_start_matches("error: ");
    conntest::nagios::report_unknown(message).code()
}

/// Whether `--nagios` follows the `conntest` subcommand (before any `--` that starts
/// a CMD): looked for in the raw arguments, since a usage error means clap gave none.
fn asks_for_nagios(args: &[std::ffi::OsString]) -> bool {
    let mut rest = args
        .iter()
        .skip(1)
        .skip_while(|arg| arg.as_os_str() != "conntest");
    rest.next().is_some()
        && rest
            .take_while(|arg| arg.as_os_str() != "--")
            .any(|arg| arg.as_os_str() == "--nagios")
}

/// Parses the command line into the global flags (`-v` count, `-q`) and the chosen
/// subcommand's configuration. A negative number where a port goes gets a message
/// about ports, not clap's "unexpected argument '-8'".
pub fn parse<I, T>(args: I) -> Result<(u8, bool, commands::Config), clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
    let cli = command()
        .try_get_matches_from(&args)
        .and_then(|matches| Cli::from_arg_matches(&matches))
        .map_err(|error| explain_negative_port(error, &args))?;
    let (verbose, quiet) = (cli.verbose, cli.quiet);
    cli.into_config().map(|config| (verbose, quiet, config))
}

/// Positional arguments are hosts and ports, and options take their values with
/// `allow_hyphen_values`: an unknown argument that is a negative number is a port.
fn explain_negative_port(error: clap::Error, args: &[std::ffi::OsString]) -> clap::Error {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if error.kind() != ErrorKind::UnknownArgument {
        return error;
    }
    let Some(ContextValue::String(arg)) = error.get(ContextKind::InvalidArg) else {
        return error;
    };
    let negative = arg.strip_prefix('-').is_some_and(|rest| {
        !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit() || b == b',')
    });
    if !negative {
        return error;
    }
    let command = command();
    let subcommand = args.iter().skip(1).find_map(|arg| {
        let arg = arg.to_str()?;
        command
            .find_subcommand(arg)
            .map(|sub| sub.get_name().to_string())
    });
    let message = format!("invalid port '{arg}': ports are 1-65535");
    match subcommand {
        Some(name) => usage_error(&name, message),
        None => error,
    }
}

impl Cli {
    /// The chosen subcommand as plain configuration: every check the command line can
    /// make is made here, so a command never sees a bad value (or a clap type).
    pub fn into_config(self) -> Result<commands::Config, clap::Error> {
        let quiet = self.quiet;
        Ok(match self.command {
            Command::TimerDemo(args) => commands::Config::TimerDemo(timer_demo::Config {
                plan: timer_demo::TourPlan {
                    at: args.at,
                    stop_after: args.stop_after,
                    every: args.every.map(|every| (every, args.count)),
                    precise: args.precise,
                },
                utc: args.utc,
            }),
            Command::Conntest(args) => commands::Config::Conntest(conntest_config(*args, quiet)?),
            Command::TalkServer(args) => commands::Config::TalkServer(talk_server_config(args)?),
            Command::TalkClient(args) => commands::Config::TalkClient({
                let (target, described_tls) = talk_client_target(&args.target)?;
                let tls_wanted = args.tls || described_tls.is_some();
                let ca = args.ca.clone().or(described_tls.flatten());
                if !tls_wanted
                    && (args.ca.is_some()
                        || args.fingerprint.is_some()
                        || args.insecure
                        || args.sni.is_some())
                {
                    return Err(usage_error(
                        "talk-client",
                        "--ca, --fingerprint, --insecure and --sni need --tls (or a \
                         tls:HOST:PORT target)",
                    ));
                }
                if tls_wanted {
                    target::check_tls_name(
                        target.unix(),
                        args.sni.as_deref(),
                        args.fingerprint.is_none() && !args.insecure,
                        "or pin it with --fingerprint SHA256:...",
                    )
                    .map_err(|error| usage_error("talk-client", error))?;
                }
                if let Some(name) = &args.sni
                    && let Err(error) = crate::reactor::tls::server_name(name)
                {
                    return Err(usage_error("talk-client", format!("--sni: {error}")));
                }
                talk::client::Config {
                    target,
                    timeout: args.timeout,
                    raw: args.raw,
                    linger: args.linger,
                    sni: args.sni,
                    tls: tls_wanted.then_some({
                        if let Some(fingerprint) = args.fingerprint {
                            TlsVerify::Pinned(fingerprint)
                        } else if args.insecure {
                            TlsVerify::Insecure
                        } else if let Some(ca) = ca {
                            TlsVerify::Ca(ca)
                        } else {
                            TlsVerify::System
                        }
                    }),
                }
            }),
            Command::Completions(args) => {
                commands::Config::Completions(completions::Config { shell: args.shell })
            }
        })
    }
}

/// talk-server's plain configuration. The short options make one listener (8000 on
/// every address by default); `--listen` adds more, and alone makes the only ones.
fn talk_server_config(args: TalkServerArgs) -> Result<talk::talk_server::Config, clap::Error> {
    let port = args.port.or(args.port_option);
    let short_given = port.is_some() || args.bind.is_some() || args.tls;
    let short_form =
        (short_given || args.listen.is_empty()).then(|| talk::talk_server::ShortForm {
            bind: args.bind,
            port: port.unwrap_or(8000),
            tls: args.tls,
        });
    let certificate = match (args.cert, args.key) {
        (Some(cert), Some(key)) => talk::talk_server::TlsSource::Files { cert, key },
        _ => talk::talk_server::TlsSource::Kept(args.cert_dir.clone()),
    };
    let config = talk::talk_server::Config {
        short_form,
        server: ServerConfig {
            mode: if args.echo { Mode::Echo } else { Mode::Console },
            raw: args.raw,
            max_clients: args.max_clients,
            max_line: args.max_line,
            // Zero means no idle timeout, as for ssh's ServerAliveInterval.
            idle_timeout: args.idle_timeout.filter(|idle| !idle.is_zero()),
        },
        certificate,
        listen: args.listen,
    };
    let certificate_given = !matches!(config.certificate, talk::talk_server::TlsSource::Kept(None));
    if certificate_given && !config.uses_certificate() {
        let given = if args.cert_dir.is_some() {
            "--cert-dir"
        } else {
            "--cert and --key"
        };
        return Err(usage_error(
            "talk-server",
            format!(
                "{given} would not be used: give --tls, or --listen ssl:PORT or \
                 unix:PATH:tls=1 without privateKey=/certKey="
            ),
        ));
    }
    Ok(config)
}

/// talk-client's one target (localhost 8000 when none is given), and the CA file of
/// a `tls:HOST:PORT[:trustRoots=FILE]` description (which means `--tls`).
fn talk_client_target(
    args: &[String],
) -> Result<(target::Destination, Option<Option<PathBuf>>), clap::Error> {
    let defaults = ["localhost".to_string(), "8000".to_string()];
    let args = if args.is_empty() { &defaults[..] } else { args };
    let services = ServiceDb::at(SERVICES_PATH);
    if let [one] = args
        && one.starts_with("tls:")
    {
        let described =
            description::parse_client(one).map_err(|error| usage_error("talk-client", error))?;
        let description::ClientDescription::Tls {
            host,
            port,
            trust_roots,
            ..
        } = described
        else {
            unreachable!("a tls: description parses as TLS");
        };
        let pair = [host, port.to_string()];
        let destination = target::parse_destination(&pair, Family::Any, &services)
            .map_err(|error| usage_error("talk-client", error))?;
        return Ok((destination, Some(trust_roots)));
    }
    let destination = target::parse_destination(args, Family::Any, &services)
        .map_err(|error| usage_error("talk-client", error))?;
    Ok((destination, None))
}

fn conntest_config(args: ConntestArgs, quiet: bool) -> Result<conntest::Config, clap::Error> {
    let family = match (args.ipv4, args.ipv6) {
        (true, _) => Family::V4,
        (_, true) => Family::V6,
        _ => Family::Any,
    };
    let services = ServiceDb::at(SERVICES_PATH);
    let targets = target::parse_destinations(&args.targets, family, &services)
        .map(target::with_unix)
        .map_err(|error| usage_error("conntest", error))?;
    if args.tls || args.starttls.is_some() {
        for target in &targets {
            target::check_tls_name(
                target.unix(),
                args.sni.as_deref(),
                !args.insecure,
                "or --insecure (the certificate is still reported)",
            )
            .map_err(|error| usage_error("conntest", error))?;
        }
    }
    let default_interval = if args.watch {
        Duration::from_secs(1)
    } else {
        Duration::from_millis(500)
    };
    let interval = args.interval.unwrap_or(default_interval);
    // A watch probes once per interval, so by default a probe may take all of it.
    let default_timeout = if args.watch {
        interval
    } else {
        Duration::from_secs(10)
    };
    let timeout = args.timeout.unwrap_or(default_timeout);
    if args.nagios && quiet {
        return Err(usage_error(
            "conntest",
            "--nagios cannot be used with -q: the status line is what it prints",
        ));
    }
    Ok(conntest::Config {
        targets,
        family,
        timeout,
        wait: args.wait,
        interval,
        watch: args.watch.then_some(conntest::WatchConfig {
            count: args.count.map(|n| n as u64),
            timestamps: args.timestamps,
            changes_only: args.changes,
        }),
        any: args.any,
        open: args.open,
        json: args.json,
        concurrency: args.concurrency,
        command: args.command,
        quiet,
        closed: args.closed,
        nagios: args.nagios.then_some(conntest::nagios::Thresholds {
            warning: args.warning,
            critical: args.critical,
            cert_warn_days: args.cert_warn_days,
            cert_crit_days: args.cert_days,
        }),
        probe: Box::new(conntest::probe::ProbeConfig {
            tls: (args.tls || args.starttls.is_some()).then_some(conntest::probe::TlsOptions {
                sni: args.sni,
                ca: args.ca,
                insecure: args.insecure,
                alpn: args.alpn,
                cert_days: args.cert_days,
            }),
            starttls: args.starttls,
            send: args.send.map(|send| send.0),
            expect: args.expect,
            max_bytes: args
                .max_bytes
                .unwrap_or(conntest::expect::DEFAULT_MAX_BYTES),
            quit: args.quit.map(|quit| quit.0),
        }),
    })
}

/// `--starttls`: one of the dialects conntest knows.
fn parse_dialect(value: &str) -> Result<conntest::starttls::Dialect, String> {
    value
        .parse()
        .map_err(|error: conntest::starttls::UnknownDialect| error.to_string())
}

/// `--cert-days`: a whole number of days, 0 or more.
fn parse_days(value: &str) -> Result<i64, String> {
    value
        .parse::<u32>()
        .map(i64::from)
        .map_err(|_| format!("'{value}' is not a number of days (0 or more)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_definitions_are_consistent() {
        command().debug_assert();
    }

    #[test]
    fn nagios_is_looked_for_after_conntest_and_before_a_command() {
        let args = |list: &[&str]| -> Vec<std::ffi::OsString> {
            list.iter().map(|a| (*a).into()).collect()
        };
        assert!(asks_for_nagios(&args(&[
            "twistctl", "conntest", "--nagios", "h:1"
        ])));
        assert!(asks_for_nagios(&args(&[
            "twistctl", "-v", "conntest", "h:1", "--nagios"
        ])));
        assert!(!asks_for_nagios(&args(&["twistctl", "conntest", "h:1"])));
        assert!(!asks_for_nagios(&args(&[
            "twistctl", "conntest", "h:1", "--", "x", "--nagios"
        ])));
        assert!(!asks_for_nagios(&args(&[
            "twistctl", "--nagios", "conntest", "h:1"
        ])));
        assert!(!asks_for_nagios(&args(&[
            "twistctl",
            "talk-client",
            "--nagios"
        ])));
    }
}
