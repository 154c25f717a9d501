//! `twistctl talk-server`: wires the chat ([`TalkServer`]) to a reactor, a listening
//! port, the console and the process's exit status.
//!
//! The end is always the reactor's orderly shutdown, whatever starts it (`/quit`, end
//! of input, Ctrl-C at the prompt, SIGINT, SIGTERM): a `Before Shutdown` trigger stops
//! listening and closes every client after its buffered data is sent, and the reactor
//! waits for that before it closes what is left.

use std::cell::{Cell, RefCell};
use std::io::{self, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::rc::Rc;

use std::path::PathBuf;

use super::certificate;
use super::console::{Console, ConsoleEvent, Prompt};
use super::server::{Mode, Next, Operator, ServerConfig, TalkServer};
use crate::commands::scaffold::{self, Command, CommandError};
use crate::commands::target::{Host, HostKind};
use crate::exit::ExitStatus;
use crate::reactor::endpoints::description::{Certificate, Listening, ServerDescription};
use crate::reactor::tcp::{CannotListenError, ListenOptions, ListeningPort};
use crate::reactor::tls::{self, Fingerprint, ServerIdentity, ServerOptions, TlsServerConfig};
use crate::reactor::unix::UnixPort;
use crate::reactor::{Factory, Phase, Reactor, Scheduler, Signal, StopReason, SystemEvent};

/// The prompt shown when no client would get a typed line.
pub const NOBODY_PROMPT: &str = "> ";

/// The prompt that names where a typed line goes: `to 3> `, or `> ` for nobody.
pub fn prompt_for(recipient: Option<u64>) -> String {
    match recipient {
        Some(id) => format!("to {id}> "),
        None => NOBODY_PROMPT.to_string(),
    }
}

impl Operator for Console {
    fn print(&self, line: &str) {
        Console::print(self, line);
    }

    fn eprint(&self, line: &str) {
        Console::eprint(self, line);
    }
}

/// Stdout and stderr, through the console once it has started (so that lines appear
/// above its prompt), directly before that and in `--echo` mode.
struct Screen {
    console: RefCell<Option<Console>>,
    /// The console's prompt, which names the recipient of the next line.
    prompt: Prompt,
}

impl Default for Screen {
    fn default() -> Screen {
        Screen {
            console: RefCell::new(None),
            prompt: Prompt::routed(NOBODY_PROMPT),
        }
    }
}

impl Screen {
    fn restore(&self) {
        if let Some(console) = self.console.borrow().as_ref() {
            console.restore();
        }
    }
}

impl Operator for Screen {
    fn print(&self, line: &str) {
        match self.console.borrow().as_ref() {
            Some(console) => console.print(line),
            None => {
                // A closed stdout (`| head -1`) is not a reason to stop serving; the
                // scaffold stops the server on any other write error.
                let _ = scaffold::print_line(line);
            }
        }
    }

    fn eprint(&self, line: &str) {
        match self.console.borrow().as_ref() {
            Some(console) => console.eprint(line),
            None => {
                let _ = writeln!(io::stderr().lock(), "{line}");
            }
        }
    }

    fn recipient_changed(&self, recipient: Option<u64>) {
        self.prompt
            .set(&prompt_for(recipient), recipient.unwrap_or(0));
    }
}

/// What `twistctl talk-server` was asked to do (built by `src/cli.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The short form (PORT, `--port`, `--bind`, `--tls`): one TCP listener more than
    /// the descriptions; `None` when only `--listen` was given.
    pub short_form: Option<ShortForm>,
    /// The chat's own settings.
    pub server: ServerConfig,
    /// The certificate of `--tls`, and of every TLS description without its own
    /// (`ssl:PORT`, `unix:PATH:tls=1`).
    pub certificate: TlsSource,
    /// `--listen`: where else to listen.
    pub listen: Vec<ServerDescription>,
}

/// The listener the short options describe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShortForm {
    /// `--bind`: an IP literal, or a name whose every address is listened on; `None`:
    /// every IPv4 and IPv6 address.
    pub bind: Option<Host>,
    /// The port; 0 lets the kernel choose.
    pub port: u16,
    /// `--tls`: serve TLS with [`Config::certificate`].
    pub tls: bool,
}

impl Config {
    /// True when some listener serves the configured (or kept) certificate.
    pub fn uses_certificate(&self) -> bool {
        self.short_form.as_ref().is_some_and(|short| short.tls)
            || self
                .listen
                .iter()
                .any(|d| d.certificate() == Some(&Certificate::Default))
    }
}

/// Something listening, to stop at the end.
enum Port {
    Tcp(ListeningPort),
    Unix(UnixPort),
}

impl Port {
    fn stop(&self) {
        // The ports' own Deferreds are not waited for: closing cannot block.
        let _ = match self {
            Port::Tcp(port) => port.stop_listening(),
            Port::Unix(port) => port.stop_listening(),
        };
    }
}

/// What is listening, and the lines that announce it: `Listening on ...` for each
/// port, then the fingerprint of each TLS certificate served, once.
#[derive(Default)]
struct Listeners {
    ports: Vec<Port>,
    lines: Vec<String>,
    fingerprints: Vec<String>,
}

impl Listeners {
    fn add(&mut self, port: Port, fingerprint: Option<Fingerprint>) {
        let host = match &port {
            Port::Tcp(port) => port.host().to_string(),
            Port::Unix(port) => port.host().to_string(),
        };
        let tls = if fingerprint.is_some() { " (TLS)" } else { "" };
        self.lines.push(format!("Listening on {host}{tls}"));
        if let Some(fingerprint) = fingerprint {
            let line = format!("TLS certificate SHA256:{fingerprint}");
            if !self.fingerprints.contains(&line) {
                self.fingerprints.push(line);
            }
        }
        self.ports.push(port);
    }

    /// Listens as each description says; a TLS one without its own certificate serves
    /// `default`. An error names the description.
    fn listen_described(
        &mut self,
        reactor: &Reactor,
        descriptions: &[ServerDescription],
        factory: &Rc<dyn Factory>,
        default: Option<&(TlsServerConfig, Fingerprint)>,
    ) -> Result<(), CommandError> {
        for description in descriptions {
            let failed = |error: &dyn std::fmt::Display| {
                CommandError::failure(format!("--listen {description}: {error}"))
            };
            let listening = description
                .listen_with(reactor, factory.clone(), default.map(|(config, _)| config))
                .map_err(|error| failed(&error))?;
            let fingerprint = match description.certificate() {
                None => None,
                Some(Certificate::Default) => default.map(|(_, fingerprint)| *fingerprint),
                Some(Certificate::Files { cert_key, .. }) => {
                    let chain = tls::read_certificates(cert_key).map_err(|error| failed(&error))?;
                    Some(Fingerprint::of(&chain[0]))
                }
            };
            let port = match listening {
                Listening::Tcp(port) => Port::Tcp(port),
                Listening::Unix(port) => Port::Unix(port),
            };
            self.add(port, fingerprint);
        }
        Ok(())
    }

    /// Every `Listening on` line, then the fingerprints.
    fn announce(&mut self, screen: &Screen) {
        for line in self.lines.drain(..).chain(self.fingerprints.drain(..)) {
            screen.print(&line);
        }
    }
}

/// Where talk-server's TLS certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    /// `--cert FILE --key FILE`: a PEM chain (leaf first) and its key.
    Files {
        /// The chain.
        cert: PathBuf,
        /// The key.
        key: PathBuf,
    },
    /// A self-signed certificate kept in this folder (`--cert-dir`), or in the state
    /// dir when `None`; made on first use.
    Kept(Option<PathBuf>),
}

impl TlsSource {
    /// The certificate and key: read, or loaded from (or made in) their folder.
    fn identity(&self) -> Result<ServerIdentity, CommandError> {
        match self {
            TlsSource::Files { cert, key } => ServerIdentity::from_pem_files(cert, key)
                .map_err(|error| CommandError::failure(format!("--cert/--key: {error}"))),
            TlsSource::Kept(dir) => {
                let dir = match dir {
                    Some(dir) => dir.clone(),
                    None => crate::commands::dirs::state_dir().ok_or_else(|| {
                        CommandError::failure(
                            "no folder for the TLS certificate (HOME and XDG_STATE_HOME \
                             are unset); give --cert-dir DIR or --cert and --key",
                        )
                    })?,
                };
                certificate::load_or_generate(&dir)
                    .map_err(|error| CommandError::failure(format!("TLS certificate: {error}")))
            }
        }
    }
}

/// Listens where asked; by default on `[::]` accepting IPv4 too, or on `0.0.0.0` when
/// the system has no IPv6.
pub fn listen(
    reactor: &Reactor,
    bind: Option<std::net::IpAddr>,
    port: u16,
    factory: Rc<dyn Factory>,
) -> Result<ListeningPort, CannotListenError> {
    let dual_stack = ListenOptions {
        v6_only: Some(false),
        ..ListenOptions::default()
    };
    if let Some(ip) = bind {
        return reactor.listen_tcp_with(SocketAddr::new(ip, port), factory, dual_stack);
    }
    let any_v6 = SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port);
    match reactor.listen_tcp_with(any_v6, factory.clone(), dual_stack) {
        Ok(listening) => Ok(listening),
        // In use or forbidden would be the same on IPv4; anything else means no IPv6.
        Err(error)
            if !matches!(
                error.source.kind(),
                io::ErrorKind::AddrInUse | io::ErrorKind::PermissionDenied
            ) =>
        {
            log::info!("{error}; listening on IPv4 only");
            let any_v4 = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port);
            reactor.listen_tcp_with(any_v4, factory, ListenOptions::default())
        }
        Err(error) => Err(error),
    }
}

/// The addresses `--bind` names: `[None]` (every address) without it, the literal, or
/// every address a name resolves to. The lookup runs before the reactor does, so it
/// blocks nothing.
fn bind_addresses(bind: Option<&Host>) -> Result<Vec<Option<std::net::IpAddr>>, CommandError> {
    use std::net::ToSocketAddrs;
    let Some(host) = bind else {
        return Ok(vec![None]);
    };
    match &host.kind {
        HostKind::Ip(ip) => Ok(vec![Some(*ip)]),
        HostKind::Unix(address) => Err(CommandError::failure(format!(
            "--bind '{address}' is a UNIX socket, not an address"
        ))),
        HostKind::Name(name) => {
            let mut ips: Vec<_> = (name.as_str(), 0)
                .to_socket_addrs()
                .map_err(|error| {
                    CommandError::failure(format!(
                        "cannot resolve --bind '{name}': {}",
                        scaffold::os_words(&error)
                    ))
                })?
                .map(|addr| Some(addr.ip()))
                .collect();
            ips.dedup();
            Ok(ips)
        }
    }
}

/// Runs `twistctl talk-server`.
pub fn run(config: Config) -> ExitStatus {
    scaffold::run(Box::new(ServerCommand {
        config,
        screen: Rc::new(Screen::default()),
        interrupted: Rc::new(Cell::new(false)),
        server: None,
    }))
}

/// The command: the chat on a listening port, with the console, until the operator or
/// a signal ends it.
struct ServerCommand {
    config: Config,
    screen: Rc<Screen>,
    interrupted: Rc<Cell<bool>>,
    /// Held until the end: clients reach the chat through weak references.
    server: Option<TalkServer>,
}

impl Command for ServerCommand {
    fn start(&mut self, reactor: &Reactor) -> Result<(), CommandError> {
        let config = self.config.server;
        let screen = self.screen.clone();
        let scheduler: Rc<dyn Scheduler> = Rc::new(reactor.clone());
        let server = TalkServer::new(config, screen.clone(), scheduler);
        self.server = Some(server.clone());
        // The configured (or kept) certificate, loaded once for every listener that
        // serves it.
        let certificate = if self.config.uses_certificate() {
            let identity = self.config.certificate.identity()?;
            let fingerprint = identity.fingerprint();
            let tls_config = TlsServerConfig::new(&ServerOptions {
                identities: vec![identity],
                resumption: true,
                ..ServerOptions::default()
            })
            .map_err(|error| CommandError::failure(format!("TLS certificate: {error}")))?;
            Some((tls_config, fingerprint))
        } else {
            None
        };
        let mut listeners = Listeners::default();
        if let Some(short) = &self.config.short_form {
            let (factory, fingerprint) = match (&certificate, short.tls) {
                (Some((tls_config, fingerprint)), true) => (
                    tls::server_factory(reactor, tls_config, server.factory()),
                    Some(*fingerprint),
                ),
                _ => (server.factory(), None),
            };
            let mut port_number = short.port;
            for bind in bind_addresses(short.bind.as_ref())? {
                let port = listen(reactor, bind, port_number, factory.clone())
                    .map_err(|error| CommandError::failure(error.to_string()))?;
                // With port 0 and several addresses, all share the port the kernel chose.
                port_number = port.host().port();
                listeners.add(Port::Tcp(port), fingerprint);
            }
        }
        listeners.listen_described(
            reactor,
            &self.config.listen,
            &server.factory(),
            certificate.as_ref(),
        )?;
        listeners.announce(&screen);
        let ports = std::mem::take(&mut listeners.ports);

        let shutting_down = server.clone();
        reactor.add_system_event_trigger(Phase::Before, SystemEvent::Shutdown, move || {
            for port in &ports {
                port.stop();
            }
            shutting_down.shut_down()
        });

        if config.mode == Mode::Console {
            let stopping = Cell::new(false);
            let flag = self.interrupted.clone();
            let answered = self.screen.prompt.clone();
            let events = reactor.channel(move |reactor: &Reactor, event: ConsoleEvent| {
                if stopping.get() {
                    return;
                }
                let stop = match event {
                    ConsoleEvent::Line(line) => server.typed_line(&line) == Next::Quit,
                    ConsoleEvent::Typed { line, prompt: tag } => {
                        // Tag 0 is the prompt that named nobody; clients count from 1.
                        let named = (tag != 0).then_some(tag);
                        let next = server.typed_at_prompt(&line, named);
                        answered.handled();
                        next == Next::Quit
                    }
                    ConsoleEvent::Eof => true,
                    ConsoleEvent::Interrupted => {
                        flag.set(true);
                        true
                    }
                };
                if stop {
                    stopping.set(true);
                    // Fails only when a signal already began the shutdown.
                    let _ = reactor.stop();
                }
            });
            let console = Console::start(self.screen.prompt.clone(), events).map_err(|error| {
                CommandError::failure(format!("cannot read the console: {error}"))
            })?;
            *screen.console.borrow_mut() = Some(console);
        }
        Ok(())
    }

    fn finish(self: Box<Self>, stopped: StopReason) -> ExitStatus {
        self.screen.restore();
        match stopped {
            StopReason::Signal(signal) => ExitStatus::Signal(signal),
            _ if self.interrupted.get() => ExitStatus::Signal(Signal::Interrupt),
            _ => ExitStatus::Success,
        }
    }
}
