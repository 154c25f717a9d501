//! Showing text from the network safely: no byte from a peer reaches the terminal raw.
//!
//! Valid UTF-8 text passes through, except: C0 controls other than tab, and DEL, become
//! `\x1b`-style escapes; C1 controls (U+0080..U+009F) become `\u{9b}`; each byte of
//! invalid UTF-8 becomes `\xff`; and a backslash becomes `\\`, so that the escaping is
//! unambiguous. No escape sequence from a peer can then move the cursor, change colours
//! or retitle the terminal.

use std::fmt::Write;

/// Escapes `bytes` from a peer for display, by the rules above.
pub fn escape_peer_text(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            push_char(&mut out, c);
        }
        for byte in chunk.invalid() {
            let _ = write!(out, "\\x{byte:02x}");
        }
    }
    out
}

fn push_char(out: &mut String, c: char) {
    match c {
        '\\' => out.push_str("\\\\"),
        '\t' => out.push('\t'),
        '\0'..='\x1f' | '\x7f' => {
            let _ = write!(out, "\\x{:02x}", c as u32);
        }
        '\u{80}'..='\u{9f}' => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
        _ => out.push(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn plain_text_and_tabs_pass_through() {
        assert_eq!(escape_peer_text(b"hello\tworld"), "hello\tworld");
        assert_eq!(
            escape_peer_text("grüße, 世界 🌍".as_bytes()),
            "grüße, 世界 🌍"
        );
    }

    #[test]
    fn controls_invalid_bytes_and_backslashes_are_escaped() {
        assert_eq!(escape_peer_text(b"\x1b[2J"), "\\x1b[2J");
        assert_eq!(escape_peer_text(b"a\x7fb\x00"), "a\\x7fb\\x00");
        assert_eq!(escape_peer_text(b"\r\n"), "\\x0d\\x0a");
        assert_eq!(escape_peer_text("\u{9b}31m".as_bytes()), "\\u{9b}31m");
        assert_eq!(escape_peer_text(b"\xff\xfeok"), "\\xff\\xfeok");
        assert_eq!(escape_peer_text(b"C:\\x1b"), "C:\\\\x1b");
    }

    proptest! {
        /// Whatever a peer sends, the output holds no control character but tab.
        #[test]
        fn no_control_character_survives(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let shown = escape_peer_text(&bytes);
            prop_assert!(shown.chars().all(|c| c == '\t' || !c.is_control()));
        }
    }
}
