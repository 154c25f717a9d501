//! `--send` and `--expect`: what to write after connecting, and how the bytes that
//! come back are judged. Pure logic; the probe protocol feeds it.
//!
//! The verdict comes as soon as it is known: a match passes; reaching `--max-bytes`
//! or the peer closing without a match is a mismatch; when the time is up it is a
//! mismatch if anything arrived and a timeout if nothing did.

use std::fmt;

/// The default of `--max-bytes`: how much is read at most while looking for a match.
pub const DEFAULT_MAX_BYTES: usize = 64 * 1024;

/// A `--send`/`--quit` string with an escape it does not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EscapeError {
    /// The whole string as given.
    pub value: String,
    /// What is wrong, naming the escape.
    pub problem: String,
}

impl fmt::Display for EscapeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid value '{}': {} (escapes are \\r, \\n, \\t, \\\\ and \\xHH)",
            self.value, self.problem
        )
    }
}

impl std::error::Error for EscapeError {}

/// The bytes of a `--send` (or `--quit`) string, parsed once, where the command line
/// is read ([`Escaped::parse`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Escaped(pub Vec<u8>);

impl Escaped {
    /// The bytes `value` stands for (see [`parse_escapes`]), or why not, in words.
    pub fn parse(value: &str) -> Result<Escaped, String> {
        parse_escapes(value)
            .map(Escaped)
            .map_err(|error| error.to_string())
    }
}

/// An `--expect` pattern, compiled once, where the command line is read
/// ([`Pattern::parse`]). Two patterns are equal when they are written alike.
#[derive(Debug, Clone)]
pub struct Pattern(regex::Regex);

impl Pattern {
    /// `value` compiled, or why not, in words.
    pub fn parse(value: &str) -> Result<Pattern, String> {
        regex::Regex::new(value)
            .map(Pattern)
            .map_err(|error| format!("bad regular expression: {error}"))
    }

    /// True when the pattern matches somewhere in `text`.
    pub fn is_match(&self, text: &str) -> bool {
        self.0.is_match(text)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Pattern) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl Eq for Pattern {}

impl fmt::Display for Pattern {
    /// As written.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_str())
    }
}

/// The bytes a `--send` (or `--quit`) string stands for: `\r`, `\n`, `\t`, `\\` and
/// `\xHH` are replaced, everything else is sent as written, and nothing is appended.
pub fn parse_escapes(value: &str) -> Result<Vec<u8>, EscapeError> {
    let fail = |problem: String| EscapeError {
        value: value.to_owned(),
        problem,
    };
    let mut out = Vec::with_capacity(value.len());
    let mut rest = value;
    while let Some(at) = rest.find('\\') {
        out.extend_from_slice(&rest.as_bytes()[..at]);
        let after = &rest[at + 1..];
        let mut chars = after.chars();
        let consumed = match chars.next() {
            Some('r') => {
                out.push(b'\r');
                1
            }
            Some('n') => {
                out.push(b'\n');
                1
            }
            Some('t') => {
                out.push(b'\t');
                1
            }
            Some('\\') => {
                out.push(b'\\');
                1
            }
            Some('x') => {
                let hex = after
                    .get(1..3)
                    .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
                let Some(hex) = hex else {
                    let shown: String = after.chars().take(3).collect();
                    return Err(fail(format!(
                        "'\\{shown}' is not \\x followed by two hex digits"
                    )));
                };
                out.push(u8::from_str_radix(hex, 16).map_err(|e| fail(e.to_string()))?);
                3
            }
            Some(other) => return Err(fail(format!("unknown escape '\\{other}'"))),
            None => return Err(fail("a lone '\\' at the end".to_owned())),
        };
        rest = &after[consumed..];
    }
    out.extend_from_slice(rest.as_bytes());
    Ok(out)
}

/// How a `--expect` check ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The pattern matched what arrived.
    Match {
        /// Everything received, decoded (UTF-8 with replacement).
        got: String,
    },
    /// It did not, and will not: the peer closed, `--max-bytes` was reached, or the
    /// time ran out after something arrived.
    Mismatch {
        /// Everything received, decoded.
        got: String,
        /// Why the reading stopped.
        why: MismatchCause,
    },
    /// The time ran out before a single byte arrived.
    Timeout,
}

/// Why a mismatch was declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MismatchCause {
    /// The peer closed the connection.
    Closed,
    /// `--max-bytes` were read without a match.
    TooMuch,
    /// The time ran out.
    TimedOut,
}

/// Reads a reply and judges it against a pattern.
pub struct Expectation<M: Fn(&str) -> bool> {
    matches: M,
    max_bytes: usize,
    received: Vec<u8>,
    /// How much had arrived at the last try of the pattern.
    tried_at: usize,
}

impl<M: Fn(&str) -> bool> Expectation<M> {
    /// An expectation that passes when `matches` accepts what arrived, reading at most
    /// `max_bytes`.
    pub fn new(matches: M, max_bytes: usize) -> Expectation<M> {
        Expectation {
            matches,
            max_bytes: max_bytes.max(1),
            received: Vec::new(),
            tried_at: 0,
        }
    }

    /// Bytes arrived. Returns the verdict when it is known.
    pub fn received(&mut self, data: &[u8]) -> Option<Verdict> {
        let room = self.max_bytes - self.received.len();
        self.received
            .extend_from_slice(&data[..data.len().min(room)]);
        let full = self.received.len() >= self.max_bytes;
        // Trying the pattern on every tiny read would cost O(n²) against a peer that
        // drips a byte at a time; trying it again only once the text has grown by an
        // eighth (or on the last read) keeps the total work linear.
        let grown = self.received.len() - self.tried_at;
        if !full && self.tried_at >= 1024 && grown < self.tried_at / 8 {
            return None;
        }
        self.tried_at = self.received.len();
        let got = self.text();
        if (self.matches)(&got) {
            Some(Verdict::Match { got })
        } else if full {
            Some(Verdict::Mismatch {
                got,
                why: MismatchCause::TooMuch,
            })
        } else {
            None
        }
    }

    /// The peer closed before a verdict.
    pub fn closed(&mut self) -> Verdict {
        self.final_verdict(MismatchCause::Closed)
    }

    /// The time ran out before a verdict.
    pub fn timed_out(&mut self) -> Verdict {
        if self.received.is_empty() {
            Verdict::Timeout
        } else {
            self.final_verdict(MismatchCause::TimedOut)
        }
    }

    fn final_verdict(&mut self, why: MismatchCause) -> Verdict {
        // Bytes not yet tried (skipped above) get their try now.
        let got = self.text();
        if self.tried_at < self.received.len() && (self.matches)(&got) {
            return Verdict::Match { got };
        }
        Verdict::Mismatch { got, why }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.received).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn escapes_are_replaced_and_nothing_is_appended() {
        assert_eq!(parse_escapes(r"PING\r\n").unwrap(), b"PING\r\n".to_vec());
        assert_eq!(parse_escapes(r"a\tb\\c").unwrap(), b"a\tb\\c".to_vec());
        assert_eq!(parse_escapes(r"\x00\xfF!").unwrap(), vec![0, 0xff, b'!']);
        assert_eq!(parse_escapes("héllo").unwrap(), "héllo".as_bytes().to_vec());
        assert_eq!(parse_escapes("").unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn send_and_expect_values_are_parsed_once_into_what_the_probe_uses() {
        assert_eq!(
            Escaped::parse("QUIT\\r\\n"),
            Ok(Escaped(b"QUIT\r\n".to_vec()))
        );
        let error = Escaped::parse("\\q").unwrap_err();
        assert!(error.contains("unknown escape '\\q'"), "{error}");
        let pattern = Pattern::parse("^\\+PONG").expect("a pattern");
        assert!(pattern.is_match("+PONG\r\n") && !pattern.is_match("-ERR"));
        assert_eq!(pattern.to_string(), "^\\+PONG");
        assert_eq!(pattern, Pattern::parse("^\\+PONG").expect("a pattern"));
        assert_ne!(pattern, Pattern::parse("^\\+PONG$").expect("a pattern"));
        let error = Pattern::parse("(").unwrap_err();
        assert!(error.starts_with("bad regular expression: "), "{error}");
    }

    #[test]
    fn bad_escapes_name_the_escape_and_the_value() {
        let error = parse_escapes(r"GET \q").unwrap_err().to_string();
        assert!(
            error.contains(r"'GET \q'") && error.contains(r"unknown escape '\q'"),
            "{error}"
        );
        let error = parse_escapes(r"\x4").unwrap_err().to_string();
        assert!(error.contains(r"'\x4'"), "{error}");
        let error = parse_escapes(r"\xzz").unwrap_err().to_string();
        assert!(error.contains("two hex digits"), "{error}");
        let error = parse_escapes("end\\").unwrap_err().to_string();
        assert!(error.contains("lone"), "{error}");
        // A multi-byte character right after \x is reported, not sliced through.
        assert!(parse_escapes("\\xé1").is_err());
    }

    fn starts_with(prefix: &'static str) -> impl Fn(&str) -> bool {
        move |text: &str| text.starts_with(prefix)
    }

    #[test]
    fn a_banner_matches_as_soon_as_it_arrives() {
        let mut e = Expectation::new(starts_with("SSH-2.0"), DEFAULT_MAX_BYTES);
        assert_eq!(e.received(b"SSH-"), None);
        assert_eq!(
            e.received(b"2.0-OpenSSH\r\n"),
            Some(Verdict::Match {
                got: "SSH-2.0-OpenSSH\r\n".into()
            })
        );
    }

    #[test]
    fn reaching_max_bytes_is_a_mismatch_keeping_only_max_bytes() {
        let mut e = Expectation::new(starts_with("OK"), 8);
        assert_eq!(
            e.received(b"220 mail ESMTP"),
            Some(Verdict::Mismatch {
                got: "220 mail".into(),
                why: MismatchCause::TooMuch
            })
        );
    }

    #[test]
    fn close_without_match_is_a_mismatch() {
        let mut e = Expectation::new(starts_with("+PONG"), DEFAULT_MAX_BYTES);
        assert_eq!(e.received(b"-ERR"), None);
        assert_eq!(
            e.closed(),
            Verdict::Mismatch {
                got: "-ERR".into(),
                why: MismatchCause::Closed
            }
        );
    }

    #[test]
    fn timeout_is_a_timeout_only_when_nothing_came() {
        let mut silent = Expectation::new(starts_with("x"), DEFAULT_MAX_BYTES);
        assert_eq!(silent.timed_out(), Verdict::Timeout);
        let mut some = Expectation::new(starts_with("x"), DEFAULT_MAX_BYTES);
        some.received(b"y");
        assert!(matches!(
            some.timed_out(),
            Verdict::Mismatch {
                why: MismatchCause::TimedOut,
                ..
            }
        ));
    }

    #[test]
    fn invalid_utf8_is_decoded_with_replacement() {
        let mut e = Expectation::new(|t: &str| t.contains("\u{fffd}ok"), DEFAULT_MAX_BYTES);
        assert!(matches!(e.received(b"\xffok"), Some(Verdict::Match { .. })));
    }

    #[test]
    fn a_dripping_peer_costs_linear_work_and_still_matches_at_the_end() {
        let tries = Cell::new(0usize);
        let mut e = Expectation::new(
            |t: &str| {
                tries.set(tries.get() + 1);
                t.ends_with("END")
            },
            DEFAULT_MAX_BYTES,
        );
        let mut verdict = None;
        for _ in 0..20_000 {
            verdict = e.received(b"a");
            assert_eq!(verdict, None);
        }
        for byte in b"END" {
            verdict = e.received(&[*byte]);
        }
        // 20,003 reads, but the pattern ran far fewer times than that.
        assert!(tries.get() < 1100, "{} tries", tries.get());
        // The match may be found on the last reads or at close, never lost.
        let verdict = verdict.unwrap_or_else(|| e.closed());
        assert!(matches!(verdict, Verdict::Match { .. }), "{verdict:?}");
    }
}
