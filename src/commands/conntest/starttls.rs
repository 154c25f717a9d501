//! The plain-text exchanges that upgrade a connection to TLS (`--starttls PROTO`), as
//! pure state machines: bytes in, what to do next out. The probe that drives one on a
//! real connection sends what it is told to send and starts TLS on
//! [`Action::StartTls`].
//!
//! | dialect  | exchange |
//! |----------|----------|
//! | smtp     | `220` greeting, `EHLO`, `250` reply, `STARTTLS`, `220` (RFC 3207) |
//! | imap     | `* OK` greeting, `a001 STARTTLS`, `a001 OK` (RFC 9051) |
//! | pop3     | `+OK` greeting, `STLS`, `+OK` (RFC 2595) |
//! | ftp      | `220` greeting, `AUTH TLS`, `234` (RFC 4217) |
//! | postgres | `SSLRequest` message, the byte `S` (PostgreSQL's protocol) |
//!
//! Bytes that arrive after the server's go-ahead and before the handshake are refused:
//! accepting them would let a man in the middle inject plain text that a careless
//! client then treats as protected (the STARTTLS command injection of CVE-2011-0411).

use std::fmt;
use std::str::FromStr;

/// The longest reply (all lines of it) a dialect reads before giving up: a server
/// cannot make the probe hold more than this.
pub const MAX_REPLY: usize = 16 * 1024;

/// The name this client gives in SMTP's EHLO.
const EHLO_NAME: &str = "twistctl";

/// PostgreSQL's SSLRequest: length 8, then the request code 80877103.
const POSTGRES_SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// A protocol whose upgrade to TLS conntest knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// SMTP: EHLO, STARTTLS.
    Smtp,
    /// IMAP: a001 STARTTLS.
    Imap,
    /// POP3: STLS.
    Pop3,
    /// FTP: AUTH TLS.
    Ftp,
    /// PostgreSQL: the SSLRequest message.
    Postgres,
}

impl Dialect {
    /// Every dialect, in the order `--help` lists them.
    pub const ALL: [Dialect; 5] = [
        Dialect::Smtp,
        Dialect::Imap,
        Dialect::Pop3,
        Dialect::Ftp,
        Dialect::Postgres,
    ];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Dialect::Smtp => "smtp",
            Dialect::Imap => "imap",
            Dialect::Pop3 => "pop3",
            Dialect::Ftp => "ftp",
            Dialect::Postgres => "postgres",
        }
    }
}

impl fmt::Display for Dialect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A `--starttls` value that names no known dialect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownDialect(pub String);

impl fmt::Display for UnknownDialect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = Dialect::ALL.iter().map(|d| d.name()).collect();
        write!(
            f,
            "unknown STARTTLS protocol '{}' (known: {})",
            self.0,
            names.join(", ")
        )
    }
}

impl std::error::Error for UnknownDialect {}

impl FromStr for Dialect {
    type Err = UnknownDialect;

    fn from_str(s: &str) -> Result<Dialect, UnknownDialect> {
        Dialect::ALL
            .into_iter()
            .find(|d| d.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownDialect(s.to_owned()))
    }
}

/// What the probe does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write these bytes to the server.
    Send(Vec<u8>),
    /// The server agreed: start the TLS handshake now.
    StartTls,
    /// The server refused the upgrade (or answered something else); the text is what
    /// it said, for the user (raw: escape it before printing).
    Refused(String),
}

/// Where an exchange is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Waiting for the server's greeting.
    Greeting,
    /// SMTP only: waiting for the reply to EHLO.
    Ehlo,
    /// Waiting for the reply to the upgrade command.
    Upgrade,
    /// The server agreed; nothing more may arrive in the clear.
    Agreed,
    /// Refused or failed; nothing more to do.
    Over,
}

/// One upgrade exchange in progress.
#[derive(Debug)]
pub struct Exchange {
    dialect: Dialect,
    stage: Stage,
    buffer: Vec<u8>,
}

impl Exchange {
    /// Starts an exchange; the returned action (PostgreSQL's SSLRequest) is to be sent
    /// at once, before anything is read.
    pub fn start(dialect: Dialect) -> (Exchange, Option<Action>) {
        let (stage, first) = match dialect {
            Dialect::Postgres => (
                Stage::Upgrade,
                Some(Action::Send(POSTGRES_SSL_REQUEST.to_vec())),
            ),
            _ => (Stage::Greeting, None),
        };
        let exchange = Exchange {
            dialect,
            stage,
            buffer: Vec::new(),
        };
        (exchange, first)
    }

    /// The dialect being spoken.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Feeds bytes from the server; returns what to do, in order (empty: wait for more).
    pub fn received(&mut self, data: &[u8]) -> Vec<Action> {
        let mut actions = Vec::new();
        if matches!(self.stage, Stage::Over) {
            return actions;
        }
        if matches!(self.stage, Stage::Agreed) {
            self.stage = Stage::Over;
            actions.push(Action::Refused(
                "the server sent data in the clear after agreeing to start TLS".to_owned(),
            ));
            return actions;
        }
        self.buffer.extend_from_slice(data);
        loop {
            let reply = match self.take_reply() {
                Ok(Some(reply)) => reply,
                Ok(None) => break,
                Err(refusal) => {
                    self.stage = Stage::Over;
                    actions.push(refusal);
                    break;
                }
            };
            let done = self.on_reply(&reply, &mut actions);
            if done {
                break;
            }
        }
        actions
    }

    /// The server closed the connection before the exchange finished.
    pub fn closed(&mut self) -> Action {
        let so_far = String::from_utf8_lossy(&self.buffer).into_owned();
        self.stage = Stage::Over;
        if so_far.is_empty() {
            Action::Refused("the server closed the connection".to_owned())
        } else {
            Action::Refused(so_far)
        }
    }

    /// Handles one complete reply; true when nothing more is to be read from the buffer.
    fn on_reply(&mut self, reply: &Reply, actions: &mut Vec<Action>) -> bool {
        let refuse = |actions: &mut Vec<Action>| actions.push(Action::Refused(reply.text.clone()));
        match (self.dialect, self.stage) {
            (Dialect::Smtp, Stage::Greeting) if reply.code_is("220") => {
                self.stage = Stage::Ehlo;
                actions.push(Action::Send(format!("EHLO {EHLO_NAME}\r\n").into_bytes()));
                false
            }
            (Dialect::Smtp, Stage::Ehlo) if reply.code_is("250") => {
                self.stage = Stage::Upgrade;
                actions.push(Action::Send(b"STARTTLS\r\n".to_vec()));
                false
            }
            (Dialect::Smtp, Stage::Upgrade) if reply.code_is("220") => self.agree(actions),
            (Dialect::Imap, Stage::Greeting) if reply.text.starts_with("* OK") => {
                self.stage = Stage::Upgrade;
                actions.push(Action::Send(b"a001 STARTTLS\r\n".to_vec()));
                false
            }
            // Untagged lines (`* CAPABILITY ...`) may come before the tagged answer.
            (Dialect::Imap, Stage::Upgrade) if reply.text.starts_with("* ") => false,
            (Dialect::Imap, Stage::Upgrade) if reply.text.starts_with("a001 OK") => {
                self.agree(actions)
            }
            (Dialect::Pop3, Stage::Greeting) if reply.text.starts_with("+OK") => {
                self.stage = Stage::Upgrade;
                actions.push(Action::Send(b"STLS\r\n".to_vec()));
                false
            }
            (Dialect::Pop3, Stage::Upgrade) if reply.text.starts_with("+OK") => self.agree(actions),
            (Dialect::Ftp, Stage::Greeting) if reply.code_is("220") => {
                self.stage = Stage::Upgrade;
                actions.push(Action::Send(b"AUTH TLS\r\n".to_vec()));
                false
            }
            (Dialect::Ftp, Stage::Upgrade) if reply.code_is("234") => self.agree(actions),
            (Dialect::Postgres, Stage::Upgrade) if reply.text == "S" => self.agree(actions),
            _ => {
                self.stage = Stage::Over;
                refuse(actions);
                true
            }
        }
    }

    fn agree(&mut self, actions: &mut Vec<Action>) -> bool {
        if self.buffer.is_empty() {
            self.stage = Stage::Agreed;
            actions.push(Action::StartTls);
        } else {
            self.stage = Stage::Over;
            actions.push(Action::Refused(
                "the server sent data in the clear after agreeing to start TLS".to_owned(),
            ));
        }
        true
    }

    /// Takes one complete reply off the buffer: a line (CRLF or LF), a multi-line
    /// SMTP/FTP reply (`250-...` lines up to `250 ...`), or PostgreSQL's one byte.
    fn take_reply(&mut self) -> Result<Option<Reply>, Action> {
        if self.dialect == Dialect::Postgres {
            let Some(&byte) = self.buffer.first() else {
                return Ok(None);
            };
            self.buffer.remove(0);
            let text = match byte {
                b'S' => "S".to_owned(),
                b'N' => "N (the server does not accept TLS)".to_owned(),
                // An ErrorResponse ('E') or anything else: show what came.
                _ => {
                    let mut all = vec![byte];
                    all.append(&mut self.buffer);
                    String::from_utf8_lossy(&all).into_owned()
                }
            };
            return Ok(Some(Reply { text }));
        }
        let multi_line = matches!(self.dialect, Dialect::Smtp | Dialect::Ftp);
        let mut start = 0;
        let mut lines: Vec<String> = Vec::new();
        while let Some(end) = memchr::memchr(b'\n', &self.buffer[start..]) {
            let raw = &self.buffer[start..start + end];
            let line = String::from_utf8_lossy(raw.strip_suffix(b"\r").unwrap_or(raw)).into_owned();
            start += end + 1;
            // `250-more follows` continues a multi-line reply; `250 last` ends it.
            let continues = multi_line && line.len() >= 4 && line.as_bytes()[3] == b'-';
            lines.push(line);
            if !continues {
                self.buffer.drain(..start);
                return Ok(Some(Reply {
                    text: lines.join("\n"),
                }));
            }
        }
        if self.buffer.len() > MAX_REPLY {
            return Err(Action::Refused(format!(
                "the server's reply is longer than {MAX_REPLY} bytes"
            )));
        }
        Ok(None)
    }
}

/// One reply of the server, its lines joined with `\n`.
#[derive(Debug)]
struct Reply {
    text: String,
}

impl Reply {
    /// Whether the last line starts with this three-digit code.
    fn code_is(&self, code: &str) -> bool {
        let last = self.text.rsplit('\n').next().unwrap_or("");
        last.starts_with(code) && matches!(last.as_bytes().get(3), None | Some(b' '))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(s: &str) -> Action {
        Action::Send(s.as_bytes().to_vec())
    }

    #[test]
    fn dialect_names_parse_case_insensitively_and_errors_list_them() {
        assert_eq!("SMTP".parse::<Dialect>(), Ok(Dialect::Smtp));
        let error = "xmpp".parse::<Dialect>().unwrap_err().to_string();
        assert!(error.contains("'xmpp'"), "{error}");
        assert!(error.contains("smtp, imap, pop3, ftp, postgres"), "{error}");
    }

    #[test]
    fn smtp_greets_asks_and_upgrades() {
        let (mut x, first) = Exchange::start(Dialect::Smtp);
        assert_eq!(first, None);
        assert_eq!(
            x.received(b"220-mail.example ESMTP\r\n"),
            vec![],
            "a multi-line greeting is not complete yet"
        );
        assert_eq!(
            x.received(b"220 ready\r\n"),
            vec![send("EHLO twistctl\r\n")]
        );
        assert_eq!(
            x.received(b"250-mail.example\r\n250-PIPELINING\r\n250 STARTTLS\r\n"),
            vec![send("STARTTLS\r\n")]
        );
        assert_eq!(
            x.received(b"220 2.0.0 go ahead\r\n"),
            vec![Action::StartTls]
        );
    }

    #[test]
    fn smtp_refusal_reports_what_the_server_said() {
        let (mut x, _) = Exchange::start(Dialect::Smtp);
        x.received(b"220 hi\r\n");
        x.received(b"250 hello\r\n");
        assert_eq!(
            x.received(b"454 4.7.0 TLS not available\r\n"),
            vec![Action::Refused("454 4.7.0 TLS not available".into())]
        );
        assert_eq!(x.received(b"more"), vec![], "nothing after the end");
    }

    #[test]
    fn replies_split_across_reads_are_joined() {
        let (mut x, _) = Exchange::start(Dialect::Smtp);
        assert_eq!(x.received(b"22"), vec![]);
        assert_eq!(x.received(b"0 hi"), vec![]);
        assert_eq!(x.received(b"\n"), vec![send("EHLO twistctl\r\n")]);
    }

    #[test]
    fn smtp_code_must_be_the_whole_code() {
        let (mut x, _) = Exchange::start(Dialect::Smtp);
        assert_eq!(
            x.received(b"2200 odd\r\n"),
            vec![Action::Refused("2200 odd".into())]
        );
    }

    #[test]
    fn imap_skips_untagged_lines() {
        let (mut x, _) = Exchange::start(Dialect::Imap);
        assert_eq!(
            x.received(b"* OK IMAP4rev2 ready\r\n"),
            vec![send("a001 STARTTLS\r\n")]
        );
        assert_eq!(
            x.received(b"* CAPABILITY IMAP4rev2\r\na001 OK Begin TLS\r\n"),
            vec![Action::StartTls]
        );
    }

    #[test]
    fn imap_no_is_a_refusal() {
        let (mut x, _) = Exchange::start(Dialect::Imap);
        x.received(b"* OK hi\r\n");
        assert_eq!(
            x.received(b"a001 NO STARTTLS disabled\r\n"),
            vec![Action::Refused("a001 NO STARTTLS disabled".into())]
        );
    }

    #[test]
    fn pop3_and_ftp_upgrade() {
        let (mut pop, _) = Exchange::start(Dialect::Pop3);
        assert_eq!(pop.received(b"+OK POP3\r\n"), vec![send("STLS\r\n")]);
        assert_eq!(pop.received(b"+OK go\r\n"), vec![Action::StartTls]);

        let (mut ftp, _) = Exchange::start(Dialect::Ftp);
        assert_eq!(ftp.received(b"220 FTP\n"), vec![send("AUTH TLS\r\n")]);
        assert_eq!(ftp.received(b"234 AUTH TLS ok\r\n"), vec![Action::StartTls]);
    }

    #[test]
    fn ftp_refusal() {
        let (mut ftp, _) = Exchange::start(Dialect::Ftp);
        ftp.received(b"220 FTP\r\n");
        assert_eq!(
            ftp.received(b"502 not implemented\r\n"),
            vec![Action::Refused("502 not implemented".into())]
        );
    }

    #[test]
    fn postgres_sends_first_and_reads_one_byte() {
        let (mut x, first) = Exchange::start(Dialect::Postgres);
        assert_eq!(first, Some(Action::Send(POSTGRES_SSL_REQUEST.to_vec())));
        assert_eq!(x.received(b"S"), vec![Action::StartTls]);

        let (mut no, _) = Exchange::start(Dialect::Postgres);
        let refused = no.received(b"N");
        assert!(
            matches!(&refused[..], [Action::Refused(text)] if text.starts_with('N')),
            "{refused:?}"
        );
    }

    #[test]
    fn plain_text_after_the_go_ahead_is_refused() {
        // In the same read as the go-ahead...
        let (mut x, _) = Exchange::start(Dialect::Pop3);
        x.received(b"+OK\r\n");
        let actions = x.received(b"+OK go\r\n+OK injected\r\n");
        assert!(
            matches!(&actions[..], [Action::Refused(t)] if t.contains("in the clear")),
            "{actions:?}"
        );
        // ... or in a later one.
        let (mut y, _) = Exchange::start(Dialect::Postgres);
        assert_eq!(y.received(b"S"), vec![Action::StartTls]);
        let later = y.received(b"x");
        assert!(matches!(&later[..], [Action::Refused(t)] if t.contains("in the clear")));
    }

    #[test]
    fn an_endless_reply_is_cut_off() {
        let (mut x, _) = Exchange::start(Dialect::Smtp);
        let chunk = vec![b'a'; 4096];
        let mut refused = Vec::new();
        for _ in 0..8 {
            refused = x.received(&chunk);
            if !refused.is_empty() {
                break;
            }
        }
        assert!(
            matches!(&refused[..], [Action::Refused(t)] if t.contains("longer than")),
            "{refused:?}"
        );
    }

    #[test]
    fn a_close_mid_exchange_reports_what_came() {
        let (mut x, _) = Exchange::start(Dialect::Smtp);
        x.received(b"220 hi\r\n");
        x.received(b"250-partial");
        assert_eq!(x.closed(), Action::Refused("250-partial".into()));
        let (mut y, _) = Exchange::start(Dialect::Imap);
        assert_eq!(
            y.closed(),
            Action::Refused("the server closed the connection".into())
        );
    }
}
