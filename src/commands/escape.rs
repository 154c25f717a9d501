//! Showing text from the network safely: no byte from a peer reaches the terminal raw.
//!
//! Valid UTF-8 text passes through, except: C0 controls other than tab, and DEL, become
//! `\x1b`-style escapes; C1 controls (U+0080..U+009F) become `\u{9b}`; each byte of
//! invalid UTF-8 becomes `\xff`; and a backslash becomes `\\`, so that the escaping is
//! unambiguous. No escape sequence from a peer can then move the cursor, change colours
//! or retitle the terminal.
//!
//! Characters that reorder or hide text are escaped the same way (`\u{202e}`): every
//! Bidi_Control character, which could make the operator read a line in another order
//! than it was sent (Trojan Source), and the format characters and fillers that show
//! nothing at all, which could hide text or make two different lines look the same.
//! What emoji and scripts need passes through: ZWJ and ZWNJ (U+200D, U+200C), variation
//! selectors and tag characters.

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
        c if is_bidi_control(c) || is_invisible(c) => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
        _ => out.push(c),
    }
}

/// The Bidi_Control characters of Unicode's PropList: marks, embeddings, overrides and
/// isolates, which change the order in which text is displayed.
pub fn is_bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
    )
}

/// Characters that show nothing and join nothing: zero-width space, word joiner and the
/// invisible operators, the deprecated format characters, the byte order mark, the
/// Mongolian vowel separator, the Hangul fillers and the musical symbol format controls.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{200b}'
            | '\u{2060}'..='\u{2064}'
            | '\u{206a}'..='\u{206f}'
            | '\u{feff}'
            | '\u{180e}'
            | '\u{115f}'
            | '\u{1160}'
            | '\u{3164}'
            | '\u{ffa0}'
            | '\u{1d173}'..='\u{1d17a}'
    )
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

    #[test]
    fn bidi_controls_and_invisible_characters_are_escaped() {
        assert_eq!(
            escape_peer_text("access\u{202e}\u{2066}nimda\u{2069}".as_bytes()),
            "access\\u{202e}\\u{2066}nimda\\u{2069}"
        );
        for c in [
            '\u{061c}',
            '\u{200e}',
            '\u{200f}',
            '\u{202a}',
            '\u{202b}',
            '\u{202c}',
            '\u{202d}',
            '\u{202e}',
            '\u{2066}',
            '\u{2067}',
            '\u{2068}',
            '\u{2069}',
            '\u{200b}',
            '\u{2060}',
            '\u{2064}',
            '\u{206a}',
            '\u{206f}',
            '\u{feff}',
            '\u{180e}',
            '\u{115f}',
            '\u{1160}',
            '\u{3164}',
            '\u{ffa0}',
            '\u{1d173}',
            '\u{1d17a}',
        ] {
            let shown = escape_peer_text(c.to_string().as_bytes());
            assert_eq!(shown, format!("\\u{{{:x}}}", c as u32));
        }
    }

    #[test]
    fn joiners_variation_selectors_and_tags_pass_through() {
        let family = "\u{1f468}\u{200d}\u{1f469}\u{200d}\u{1f467}";
        let heart = "\u{2764}\u{fe0f}";
        let flag = "\u{1f3f4}\u{e0067}\u{e0062}\u{e0073}\u{e0063}\u{e0074}\u{e007f}";
        let persian = "\u{645}\u{6cc}\u{200c}\u{62e}\u{648}\u{627}\u{647}\u{645}";
        for text in [family, heart, flag, persian] {
            assert_eq!(escape_peer_text(text.as_bytes()), text);
        }
    }

    proptest! {
        /// Whatever a peer sends, the output holds no control character but tab.
        #[test]
        fn no_control_character_survives(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let shown = escape_peer_text(&bytes);
            prop_assert!(shown.chars().all(|c| c == '\t' || !c.is_control()));
        }

        /// Whatever a peer sends, no Bidi_Control character survives, however it is
        /// mixed with other text.
        #[test]
        fn no_bidi_control_character_survives(
            text in proptest::collection::vec(
                prop_oneof![
                    any::<char>(),
                    proptest::sample::select(vec![
                        '\u{061c}', '\u{200e}', '\u{200f}', '\u{202a}', '\u{202b}', '\u{202c}',
                        '\u{202d}', '\u{202e}', '\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}',
                    ]),
                ],
                0..64,
            ),
            junk in proptest::collection::vec(any::<u8>(), 0..16),
        ) {
            let mut bytes = text.iter().collect::<String>().into_bytes();
            bytes.extend_from_slice(&junk);
            let shown = escape_peer_text(&bytes);
            prop_assert!(!shown.chars().any(is_bidi_control), "{shown:?}");
        }
    }
}
