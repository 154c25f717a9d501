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

use super::console::{Console, ConsoleEvent};
use super::server::{Mode, Next, Operator, ServerConfig, TalkServer};
use crate::cli::TalkServerArgs;
use crate::exit::ExitStatus;
use crate::reactor::tcp::{CannotListenError, ListenOptions, ListeningPort};
use crate::reactor::{Factory, Phase, Reactor, Scheduler, Signal, StopReason, SystemEvent};

/// The prompt shown when the console is interactive.
pub const PROMPT: &str = "Server: ";

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
#[derive(Default)]
struct Screen {
    console: RefCell<Option<Console>>,
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
                let mut out = io::stdout().lock();
                // A closed stdout (`| head -1`) is not a reason to stop serving.
                let _ = writeln!(out, "{line}").and_then(|()| out.flush());
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
}

impl From<&TalkServerArgs> for ServerConfig {
    fn from(args: &TalkServerArgs) -> ServerConfig {
        ServerConfig {
            mode: if args.echo { Mode::Echo } else { Mode::Console },
            raw: args.raw,
            max_clients: args.max_clients,
            max_line: args.max_line,
            idle_timeout: args.idle_timeout,
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

/// Runs `twistctl talk-server`.
pub fn run(args: &TalkServerArgs) -> ExitStatus {
    let reactor = match Reactor::new() {
        Ok(reactor) => reactor,
        Err(error) => {
            eprintln!("twistctl talk-server: cannot start the reactor: {error}");
            return ExitStatus::Failure;
        }
    };
    reactor.handle_signals();
    let config = ServerConfig::from(args);
    let screen = Rc::new(Screen::default());
    let scheduler: Rc<dyn Scheduler> = Rc::new(reactor.clone());
    let server = TalkServer::new(config, screen.clone(), scheduler);
    let port = match listen(&reactor, args.bind, args.port, server.factory()) {
        Ok(port) => port,
        Err(error) => {
            eprintln!("twistctl talk-server: {error}");
            return ExitStatus::Failure;
        }
    };
    screen.print(&format!("Listening on {}", port.host()));

    let shutting_down = server.clone();
    reactor.add_system_event_trigger(Phase::Before, SystemEvent::Shutdown, move || {
        // The port's own Deferred is not waited for: closing it cannot block.
        let _ = port.stop_listening();
        shutting_down.shut_down()
    });

    let interrupted = Rc::new(Cell::new(false));
    if config.mode == Mode::Console {
        let stopping = Cell::new(false);
        let flag = interrupted.clone();
        let events = reactor.channel(move |reactor: &Reactor, event: ConsoleEvent| {
            if stopping.get() {
                return;
            }
            let stop = match event {
                ConsoleEvent::Line(line) => server.typed_line(&line) == Next::Quit,
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
        match Console::start(PROMPT, events) {
            Ok(console) => *screen.console.borrow_mut() = Some(console),
            Err(error) => {
                eprintln!("twistctl talk-server: cannot read the console: {error}");
                return ExitStatus::Failure;
            }
        }
    }

    let outcome = reactor.run();
    screen.restore();
    match outcome {
        Ok(StopReason::Signal(signal)) => ExitStatus::Signal(signal),
        Ok(_) if interrupted.get() => ExitStatus::Signal(Signal::Interrupt),
        Ok(_) => ExitStatus::Success,
        Err(error) => {
            eprintln!("twistctl talk-server: {error}");
            ExitStatus::Failure
        }
    }
}
