//! The talk-server operator's slash commands: what a typed line means.
//!
//! Parsing is separate from acting on it, so every spelling is tested without a server.

/// What the operator asked for with one typed line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OperatorCommand {
    /// An empty (or all-blank) line: nothing is sent.
    Nothing,
    /// Text for the default client (the one that spoke last, or the only one).
    Say(String),
    /// `/to N text`.
    To(u64, String),
    /// `/all text`.
    All(String),
    /// `/who`.
    Who,
    /// `/kick N`.
    Kick(u64),
    /// `/quit`.
    Quit,
    /// `/help`.
    Help,
}

/// A typed line that looks like a command but is not a valid one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// `/frob`.
    #[error("unknown command /{0}; /help lists the commands (//text sends /text)")]
    Unknown(String),
    /// A known command with missing or bad arguments; carries its usage.
    #[error("usage: {0}")]
    Usage(&'static str),
}

/// The help text `/help` prints, one line each.
pub const HELP: &[&str] = &[
    "text        send to the client the prompt names (to 3>), or with the prompt",
    "            '> ' to the only client",
    "/to N text  send to client N",
    "/all text   send to every client",
    "/who        list the clients: number, address, transport, idle time",
    "/kick N     disconnect client N",
    "/quit       close every client and exit (also Ctrl-D)",
    "/help       this list",
    "//text      send \"/text\" literally",
    "A line \"bye\" closes the client it is sent to.",
];

/// Interprets one typed line. Plain text keeps its leading whitespace (indentation is
/// part of what was typed) and loses its trailing whitespace; commands are recognised
/// after leading blanks, and their text is trimmed (`/to 2   hi  ` sends `hi`).
pub fn parse(line: &str) -> Result<OperatorCommand, CommandError> {
    let text = line.trim_end();
    let trimmed = text.trim_start();
    if trimmed.is_empty() {
        return Ok(OperatorCommand::Nothing);
    }
    if let Some(literal) = trimmed.strip_prefix("//") {
        return Ok(OperatorCommand::Say(format!("/{literal}")));
    }
    let Some(command) = trimmed.strip_prefix('/') else {
        return Ok(OperatorCommand::Say(text.to_string()));
    };
    let (name, rest) = split_word(command);
    match name {
        "to" => {
            let (number, text) = split_word(rest);
            let number = client_number(number).ok_or(CommandError::Usage("/to N text"))?;
            if text.is_empty() {
                return Err(CommandError::Usage("/to N text"));
            }
            Ok(OperatorCommand::To(number, text.to_string()))
        }
        "all" if !rest.is_empty() => Ok(OperatorCommand::All(rest.to_string())),
        "all" => Err(CommandError::Usage("/all text")),
        "kick" => match split_word(rest) {
            (number, "") => client_number(number)
                .map(OperatorCommand::Kick)
                .ok_or(CommandError::Usage("/kick N")),
            _ => Err(CommandError::Usage("/kick N")),
        },
        "who" if rest.is_empty() => Ok(OperatorCommand::Who),
        "who" => Err(CommandError::Usage("/who")),
        "quit" if rest.is_empty() => Ok(OperatorCommand::Quit),
        "quit" => Err(CommandError::Usage("/quit")),
        "help" => Ok(OperatorCommand::Help),
        other => Err(CommandError::Unknown(other.to_string())),
    }
}

/// The first word and the rest, both trimmed.
fn split_word(text: &str) -> (&str, &str) {
    let text = text.trim_start();
    match text.find(char::is_whitespace) {
        Some(at) => (&text[..at], text[at..].trim()),
        None => (text, ""),
    }
}

/// A client number: digits only, at least 1.
fn client_number(word: &str) -> Option<u64> {
    if word.is_empty() || !word.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    word.parse().ok().filter(|&n| n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use OperatorCommand::*;

    fn say(text: &str) -> OperatorCommand {
        Say(text.to_string())
    }

    #[test]
    fn plain_lines_keep_leading_whitespace_and_blank_lines_send_nothing() {
        assert_eq!(parse("  hello there \t"), Ok(say("  hello there")));
        assert_eq!(parse("\tfn main() {}"), Ok(say("\tfn main() {}")));
        assert_eq!(parse(""), Ok(Nothing));
        assert_eq!(parse(" \t "), Ok(Nothing));
    }

    #[test]
    fn double_slash_sends_a_literal_slash() {
        assert_eq!(parse("//to 1 x"), Ok(say("/to 1 x")));
        assert_eq!(parse("//"), Ok(say("/")));
    }

    #[test]
    fn to_takes_a_number_and_text() {
        assert_eq!(parse("/to 2 hi there "), Ok(To(2, "hi there".to_string())));
        assert_eq!(parse("/to  12\thi"), Ok(To(12, "hi".to_string())));
        assert_eq!(parse("/to 2"), Err(CommandError::Usage("/to N text")));
        assert_eq!(parse("/to x hi"), Err(CommandError::Usage("/to N text")));
        assert_eq!(parse("/to 0 hi"), Err(CommandError::Usage("/to N text")));
        assert_eq!(parse("/to -1 hi"), Err(CommandError::Usage("/to N text")));
        assert_eq!(parse("/to"), Err(CommandError::Usage("/to N text")));
    }

    #[test]
    fn all_needs_text() {
        assert_eq!(parse("/all good night"), Ok(All("good night".to_string())));
        assert_eq!(parse("/all   "), Err(CommandError::Usage("/all text")));
    }

    #[test]
    fn kick_takes_exactly_one_number() {
        assert_eq!(parse("/kick 3"), Ok(Kick(3)));
        assert_eq!(parse("/kick"), Err(CommandError::Usage("/kick N")));
        assert_eq!(parse("/kick 3 4"), Err(CommandError::Usage("/kick N")));
        assert_eq!(parse("/kick three"), Err(CommandError::Usage("/kick N")));
    }

    #[test]
    fn who_quit_and_help() {
        assert_eq!(parse("/who"), Ok(Who));
        assert_eq!(parse(" /quit "), Ok(Quit));
        assert_eq!(parse("/help"), Ok(Help));
        assert_eq!(parse("/quit now"), Err(CommandError::Usage("/quit")));
        assert_eq!(parse("/who is there"), Err(CommandError::Usage("/who")));
    }

    #[test]
    fn unknown_commands_are_named_in_the_error() {
        let error = parse("/frob 1").unwrap_err();
        assert_eq!(error, CommandError::Unknown("frob".to_string()));
        assert!(error.to_string().contains("/frob"), "{error}");
        assert!(error.to_string().contains("//text"), "{error}");
    }

    #[test]
    fn huge_client_numbers_are_rejected_not_wrapped() {
        assert_eq!(
            parse("/kick 99999999999999999999999"),
            Err(CommandError::Usage("/kick N"))
        );
    }
}
