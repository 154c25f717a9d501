//! The operator's console for the talk commands, read on its own thread so the reactor
//! never waits for a person to type.
//!
//! Interactive only when stdin *and* stdout are terminals: then rustyline shows the
//! prompt, and incoming messages are printed above it with rustyline's external printer,
//! so a half-typed line is never garbled. Otherwise stdin is read as plain lines (a pipe
//! or a file: scripts), with no prompt and no escape sequences. Either way each line
//! reaches the reactor through a [`Sender`] (the reactor's call-from-thread queue).
//!
//! The terminal mode is saved at start and restored by [`Console::restore`] (also on
//! drop), because the process may end while rustyline holds the terminal in raw mode
//! on the console thread.
//!
//! The prompt is a [`Prompt`] the reactor thread may change at any time; it takes
//! effect when the next prompt is drawn, and each line comes back with the tag of the
//! prompt it was typed at, so that a line goes where its prompt said. Ctrl-C clears a
//! half-typed line, as shells do, and only on an empty line ends the input. The line
//! being typed is tracked, so that it can be given back ([`Console::unsent`]) when the
//! talk ends under the operator's fingers.

use std::cell::{Cell, RefCell};
use std::io::{self, BufRead, IsTerminal, Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, mpsc};
use std::thread;
use std::time::Duration;

use rustyline::ExternalPrinter;
use rustyline::error::ReadlineError;

use crate::reactor::Sender;

/// What the console thread hands to the reactor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleEvent {
    /// A line of piped input (no prompt was drawn), without its newline.
    Line(String),
    /// A line typed at a prompt; `prompt` is the tag that prompt carried when it was
    /// drawn (see [`Prompt::set`]).
    Typed {
        /// The line, without its newline.
        line: String,
        /// The tag of the prompt it was typed at.
        prompt: u64,
    },
    /// End of input: Ctrl-D on an empty line, or the end of the pipe or file.
    Eof,
    /// Ctrl-C at an empty prompt (the terminal sends no SIGINT while rustyline reads;
    /// on a half-typed line Ctrl-C only clears it).
    Interrupted,
}

impl ConsoleEvent {
    /// The text of a line, typed or piped.
    pub fn line(&self) -> Option<&str> {
        match self {
            ConsoleEvent::Line(line) | ConsoleEvent::Typed { line, .. } => Some(line),
            ConsoleEvent::Eof | ConsoleEvent::Interrupted => None,
        }
    }
}

/// The prompt the console draws before each line: a text, and a tag that comes back
/// with the line typed at it. Set from the reactor thread; a prompt already drawn stays
/// as it is (rustyline cannot change it under the operator's typing), the next one
/// shows the change.
#[derive(Debug, Clone)]
pub struct Prompt {
    shared: Arc<(Mutex<PromptState>, Condvar)>,
    /// The owner acknowledges each typed line ([`Prompt::handled`]); the console draws
    /// the next prompt once it has, so that the prompt shows the line's effect.
    waits: bool,
}

#[derive(Debug)]
struct PromptState {
    text: String,
    tag: u64,
    /// Typed lines the owner has handled.
    handled: u64,
}

/// The longest the console waits for a typed line to be handled before it draws the
/// next prompt anyway: a busy reactor must not freeze the keyboard.
const PROMPT_WAIT: Duration = Duration::from_millis(250);

impl Prompt {
    /// A prompt that always shows `text`, with tag 0.
    pub fn new(text: &str) -> Prompt {
        Prompt::build(text, false)
    }

    /// A prompt that its owner changes, and that acknowledges each typed line with
    /// [`Prompt::handled`]: the next prompt is drawn after that (or after a short
    /// wait), so it shows where the next line will go.
    pub fn routed(text: &str) -> Prompt {
        Prompt::build(text, true)
    }

    fn build(text: &str, waits: bool) -> Prompt {
        let state = PromptState {
            text: text.to_string(),
            tag: 0,
            handled: 0,
        };
        Prompt {
            shared: Arc::new((Mutex::new(state), Condvar::new())),
            waits,
        }
    }

    fn state(&self) -> MutexGuard<'_, PromptState> {
        self.shared.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Shows `text` from the next prompt on; lines typed at it carry `tag`.
    pub fn set(&self, text: &str, tag: u64) {
        let mut state = self.state();
        text.clone_into(&mut state.text);
        state.tag = tag;
    }

    /// One more typed line has been acted on.
    pub fn handled(&self) {
        self.state().handled += 1;
        self.shared.1.notify_all();
    }

    /// The text and tag to draw now.
    pub fn current(&self) -> (String, u64) {
        let state = self.state();
        (state.text.clone(), state.tag)
    }

    /// Waits (briefly) until `typed` lines have been handled.
    fn wait_handled(&self, typed: u64) {
        if !self.waits {
            return;
        }
        let guard = self.state();
        let _ = self
            .shared
            .1
            .wait_timeout_while(guard, PROMPT_WAIT, |state| state.handled < typed);
    }
}

/// The line being typed, as rustyline last showed it; shared with the reactor thread.
type Typing = Arc<Mutex<String>>;

/// rustyline's helper: it asks for a hint after every edit, which is where the line
/// being typed is recorded. It completes, highlights and validates nothing.
struct Tracker {
    typing: Typing,
}

impl rustyline::hint::Hinter for Tracker {
    type Hint = String;

    fn hint(&self, line: &str, _pos: usize, _ctx: &rustyline::Context<'_>) -> Option<String> {
        let mut typing = self.typing.lock().unwrap_or_else(|e| e.into_inner());
        line.clone_into(&mut typing);
        None
    }
}

impl rustyline::completion::Completer for Tracker {
    type Candidate = String;
}
impl rustyline::highlight::Highlighter for Tracker {}
impl rustyline::validate::Validator for Tracker {}
impl rustyline::Helper for Tracker {}

/// Longest line read from piped input; a longer one arrives in pieces of this size, so
/// a file without newlines cannot make the console hold unbounded memory.
const MAX_PIPED_LINE: u64 = 1024 * 1024;

type Printer = Box<dyn ExternalPrinter + Send>;

/// Lines waiting for the printing thread. rustyline's printer takes one message at a time
/// and waits while the console thread is busy; the reactor must never wait for it, so a
/// thread of its own feeds the printer from this queue, and a full queue drops lines
/// (counted, and reported once the console catches up) rather than block or grow.
const PRINT_QUEUE: usize = 1024;

/// How long `restore` lets queued lines reach the terminal before putting it back.
const PRINT_DRAIN: Duration = Duration::from_millis(250);

/// The reactor's side of the printing thread.
struct Printing {
    lines: mpsc::SyncSender<String>,
    dropped: Arc<AtomicUsize>,
    finished: mpsc::Receiver<()>,
}

impl Printing {
    fn start(mut printer: Printer) -> io::Result<Printing> {
        let (lines, queue) = mpsc::sync_channel::<String>(PRINT_QUEUE);
        let (done, finished) = mpsc::channel();
        let dropped = Arc::new(AtomicUsize::new(0));
        let lost = dropped.clone();
        thread::Builder::new()
            .name("twistctl-printer".to_string())
            .spawn(move || {
                for line in queue {
                    if let Err(error) = printer.print(line) {
                        log::debug!("external printer failed: {error}");
                    }
                    let skipped = lost.swap(0, Ordering::Relaxed);
                    if skipped > 0 {
                        let notice = format!(
                            "* {skipped} line(s) not shown: the console could not keep up\n"
                        );
                        let _ = printer.print(notice);
                    }
                }
                let _ = done.send(());
            })?;
        Ok(Printing {
            lines,
            dropped,
            finished,
        })
    }

    /// Queues one line; never waits.
    fn print(&self, line: &str) -> bool {
        // Always end with a newline: between two reads the printer writes as it is.
        match self.lines.try_send(format!("{line}\n")) {
            Ok(()) => true,
            Err(mpsc::TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(mpsc::TrySendError::Disconnected(_)) => false,
        }
    }

    /// Closes the queue and waits, briefly, for what is in it to be printed.
    fn finish(self) {
        drop(self.lines);
        let _ = self.finished.recv_timeout(PRINT_DRAIN);
    }
}

/// The console: a reading thread plus the means to print around its prompt.
pub struct Console {
    printer: RefCell<Option<Printing>>,
    typing: Typing,
    saved_terminal: Option<nix::sys::termios::Termios>,
    restored: Cell<bool>,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("interactive", &self.is_interactive())
            .finish()
    }
}

/// True when the console should be interactive: stdin and stdout both terminals, and a
/// terminal rustyline can drive (`TERM=dumb` cannot).
pub fn wants_interactive() -> bool {
    let dumb = matches!(
        std::env::var("TERM").as_deref(),
        Ok("dumb") | Ok("cons25") | Ok("emacs")
    );
    io::stdin().is_terminal() && io::stdout().is_terminal() && !dumb
}

impl Console {
    /// Starts the console thread; its lines go to `events`. Interactive with `prompt`
    /// when [`wants_interactive`], plain lines otherwise.
    pub fn start(prompt: Prompt, events: Sender<ConsoleEvent>) -> io::Result<Console> {
        let typing = Typing::default();
        if wants_interactive() {
            // Saved before rustyline touches the terminal, to put it back on any exit.
            let saved_terminal = nix::sys::termios::tcgetattr(io::stdin()).ok();
            match start_interactive(prompt, events.clone(), typing.clone()) {
                Ok(printer) => {
                    return Ok(Console {
                        printer: RefCell::new(Some(Printing::start(printer)?)),
                        typing,
                        saved_terminal,
                        restored: Cell::new(false),
                    });
                }
                Err(error) => {
                    log::info!("no interactive console ({error}); reading plain lines");
                }
            }
        }
        start_plain(events)?;
        Ok(Console {
            printer: RefCell::new(None),
            typing,
            saved_terminal: None,
            restored: Cell::new(true),
        })
    }

    /// True when rustyline drives the terminal (prompt shown, printing above it).
    pub fn is_interactive(&self) -> bool {
        self.printer.borrow().is_some()
    }

    /// The line the operator has half typed (not yet sent with Enter), if any: to be
    /// given back when the talk ends before it could be sent.
    pub fn unsent(&self) -> Option<String> {
        let typing = self.typing.lock().unwrap_or_else(|e| e.into_inner());
        (!typing.trim().is_empty()).then(|| typing.clone())
    }

    /// Prints one line on stdout (above the prompt when interactive). A closed stdout
    /// is ignored: the conversation goes on without a reader.
    pub fn print(&self, line: &str) {
        if self.print_above_prompt(line) {
            return;
        }
        // Through the scaffold's stdout, which reports a failed write.
        let _ = crate::commands::scaffold::print_line(line);
    }

    /// Prints one line on stderr, or above the prompt when interactive (where stderr
    /// would garble the line being typed).
    pub fn eprint(&self, line: &str) {
        if self.print_above_prompt(line) {
            return;
        }
        let mut out = io::stderr().lock();
        let _ = writeln!(out, "{line}");
    }

    fn print_above_prompt(&self, line: &str) -> bool {
        self.printer
            .borrow()
            .as_ref()
            .is_some_and(|printing| printing.print(line))
    }

    /// Puts the terminal back as it was (cooked mode, bracketed paste and synchronized
    /// output off, the prompt line cleared) and prints directly from then on.
    /// Idempotent.
    pub fn restore(&self) {
        if self.restored.replace(true) {
            return;
        }
        let printing = self.printer.borrow_mut().take();
        if let Some(printing) = printing {
            printing.finish();
        }
        if let Some(saved) = &self.saved_terminal
            && let Err(error) =
                nix::sys::termios::tcsetattr(io::stdin(), nix::sys::termios::SetArg::TCSANOW, saved)
        {
            log::debug!("could not restore the terminal: {error}");
        }
        // The console thread may be in the middle of a redraw, which rustyline wraps in
        // synchronized output (`?2026`): end it, or the terminal may hold back what the
        // shell prints after us. Terminals ignore modes they do not know.
        let mut out = io::stdout().lock();
        let _ = out
            .write_all(b"\x1b[?2026l\x1b[?2004l\r\x1b[K")
            .and_then(|()| out.flush());
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        self.restore();
    }
}

/// Starts rustyline on its own thread and returns its external printer.
fn start_interactive(
    prompt: Prompt,
    events: Sender<ConsoleEvent>,
    typing: Typing,
) -> io::Result<Printer> {
    let (printer_tx, printer_rx) = mpsc::channel::<io::Result<Printer>>();
    thread::Builder::new()
        .name("twistctl-console".to_string())
        .spawn(move || {
            // The editor lives on this thread; only its printer crosses to the reactor.
            let mut editor =
                match rustyline::Editor::<Tracker, rustyline::history::DefaultHistory>::new() {
                    Ok(editor) => editor,
                    Err(error) => {
                        let _ = printer_tx.send(Err(io::Error::other(error)));
                        return;
                    }
                };
            editor.set_helper(Some(Tracker {
                typing: typing.clone(),
            }));
            match editor.create_external_printer() {
                Ok(printer) => {
                    let _ = printer_tx.send(Ok(Box::new(printer)));
                }
                Err(error) => {
                    let _ = printer_tx.send(Err(io::Error::other(error)));
                    return;
                }
            }
            let mut typed_lines = 0;
            loop {
                prompt.wait_handled(typed_lines);
                // The recipient is fixed here, when the prompt is drawn.
                let (text, tag) = prompt.current();
                let read = editor.readline(&text);
                let typed = std::mem::take(&mut *typing.lock().unwrap_or_else(|e| e.into_inner()));
                match read {
                    Ok(line) => {
                        if !line.trim().is_empty() {
                            let _ = editor.add_history_entry(line.as_str());
                        }
                        typed_lines += 1;
                        events.send(ConsoleEvent::Typed { line, prompt: tag });
                    }
                    // Ctrl-C on a half-typed line drops the line, as shells do: the next
                    // prompt is drawn below it.
                    Err(ReadlineError::Interrupted) if !typed.is_empty() => {}
                    Err(ReadlineError::Interrupted) => {
                        events.send(ConsoleEvent::Interrupted);
                        return;
                    }
                    Err(ReadlineError::Eof) => {
                        events.send(ConsoleEvent::Eof);
                        return;
                    }
                    Err(error) => {
                        log::error!("cannot read the console: {error}");
                        events.send(ConsoleEvent::Eof);
                        return;
                    }
                }
            }
        })?;
    printer_rx
        .recv()
        .map_err(|_| io::Error::other("the console thread ended at start"))?
}

/// Reads stdin as plain lines on its own thread.
fn start_plain(events: Sender<ConsoleEvent>) -> io::Result<()> {
    thread::Builder::new()
        .name("twistctl-stdin".to_string())
        .spawn(move || {
            let stdin = io::stdin();
            let mut input = stdin.lock();
            read_lines(&mut input, |event| events.send(event));
        })?;
    Ok(())
}

/// Splits `input` into [`ConsoleEvent::Line`]s (`\n` or `\r\n`, invalid UTF-8 replaced)
/// and ends with [`ConsoleEvent::Eof`].
fn read_lines(input: &mut impl BufRead, mut emit: impl FnMut(ConsoleEvent)) {
    let mut line = Vec::new();
    loop {
        line.clear();
        match input
            .by_ref()
            .take(MAX_PIPED_LINE)
            .read_until(b'\n', &mut line)
        {
            Ok(0) => break,
            Ok(_) => {
                if line.last() == Some(&b'\n') {
                    line.pop();
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                }
                emit(ConsoleEvent::Line(
                    String::from_utf8_lossy(&line).into_owned(),
                ));
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => {
                log::error!("cannot read standard input: {error}");
                break;
            }
        }
    }
    emit(ConsoleEvent::Eof);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events_of(input: &[u8]) -> Vec<ConsoleEvent> {
        let mut events = Vec::new();
        read_lines(&mut io::Cursor::new(input.to_vec()), |e| events.push(e));
        events
    }

    fn line(text: &str) -> ConsoleEvent {
        ConsoleEvent::Line(text.to_string())
    }

    #[test]
    fn piped_input_gives_lines_then_eof() {
        assert_eq!(
            events_of(b"hello\r\nworld\nlast"),
            [
                line("hello"),
                line("world"),
                line("last"),
                ConsoleEvent::Eof
            ]
        );
        assert_eq!(events_of(b""), [ConsoleEvent::Eof]);
        assert_eq!(events_of(b"\n"), [line(""), ConsoleEvent::Eof]);
    }

    #[test]
    fn invalid_utf8_in_piped_input_is_replaced_not_fatal() {
        assert_eq!(
            events_of(b"caf\xe9\nok\n"),
            [line("caf\u{fffd}"), line("ok"), ConsoleEvent::Eof]
        );
    }

    #[test]
    fn an_endless_line_arrives_in_bounded_pieces() {
        let big = vec![b'x'; (MAX_PIPED_LINE as usize) * 2 + 10];
        let events = events_of(&big);
        assert_eq!(events.len(), 4);
        let lengths: Vec<usize> = events
            .iter()
            .filter_map(|e| match e {
                ConsoleEvent::Line(l) => Some(l.len()),
                _ => None,
            })
            .collect();
        assert_eq!(
            lengths,
            [MAX_PIPED_LINE as usize, MAX_PIPED_LINE as usize, 10]
        );
    }

    /// A printer that waits for the test to let each message through, like rustyline's
    /// while its console thread is busy.
    struct SlowPrinter {
        go: mpsc::Receiver<()>,
        shown: Arc<std::sync::Mutex<Vec<String>>>,
    }

    impl ExternalPrinter for SlowPrinter {
        fn print(&mut self, msg: String) -> rustyline::Result<()> {
            let _ = self.go.recv();
            self.shown.lock().unwrap().push(msg);
            Ok(())
        }
    }

    #[test]
    fn printing_never_waits_for_a_slow_console_and_counts_what_it_drops() {
        let (go, gate) = mpsc::channel();
        let shown = Arc::new(std::sync::Mutex::new(Vec::new()));
        let printing = Printing::start(Box::new(SlowPrinter {
            go: gate,
            shown: shown.clone(),
        }))
        .unwrap();
        let total = PRINT_QUEUE + 100;
        // Every print returns at once although the printer is stuck on the first one.
        for n in 0..total {
            assert!(printing.print(&format!("line {n}")));
        }
        drop(go); // let the printer through
        printing.finish();
        let shown = shown.lock().unwrap();
        let lines = shown.iter().filter(|m| m.starts_with("line ")).count();
        let notices: Vec<&String> = shown.iter().filter(|m| m.starts_with("* ")).collect();
        assert_eq!(notices.len(), 1, "one notice for one stall");
        let notice = notices[0];
        let dropped: usize = notice
            .strip_prefix("* ")
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("a count in the notice: {notice:?}"));
        assert_eq!(lines + dropped, total);
        assert!(
            dropped >= 99,
            "the queue holds {PRINT_QUEUE}: {dropped} dropped"
        );
        assert!(shown.iter().all(|m| m.ends_with('\n')));
    }
}
