//! The syntax of `websocket_chat -w`: ouistiti's chat commands (a text
//! message that starts with a command word and one space), and the lines
//! that relay a client's text to the others, naming its sender.
//!
//! Parsing only splits a message into its parts; whether a name is valid is
//! `name`'s business and what a command does is `room`'s. A text that is not
//! a command (including a command word without its space) is an ordinary
//! chat message, which goes out as [`public_line`] or, through `WSPrivate`,
//! [`private_line`].
//!
//! The chat's own lines start with one of [`SERVER_WORDS`] as their first word
//! (up to the first space). A relayed line never does: its first word is the
//! sender's name followed by `:` (names cannot contain `:` or spaces),
//! [`UNNAMED`] followed by `:`, or [`PRIVATE_MARK`]. So no client can make
//! its text pass for the chat's, or for another client's.

/// A chat command sent by a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command<'a> {
    /// `WSHello <name>`: take (or change) a name.
    Hello {
        /// The name asked for, not yet validated.
        name: &'a str,
    },
    /// `WSPrivate <name> <message>`: send `message` to one named client only.
    Private {
        /// The recipient's name.
        name: &'a str,
        /// What the recipient gets, verbatim.
        message: &'a str,
    },
    /// `WSPrivate` without a message: the sender gets the usage line.
    PrivateUsage,
    /// `WSWhois <name>`: ask for a named client's IP address.
    Whois {
        /// The name asked about.
        name: &'a str,
    },
}

/// The prefix of `WSHello`, with its space.
const HELLO: &str = "WSHello ";
/// The prefix of `WSPrivate`, with its space.
const PRIVATE: &str = "WSPrivate ";
/// The prefix of `WSWhois`, with its space.
const WHOIS: &str = "WSWhois ";

/// The line a client gets for a `WSPrivate` without a message.
pub const PRIVATE_USAGE: &str = "usage: WSPrivate <name> <message>";

/// The first words of the chat's own lines. Clients' text never starts with one.
pub const SERVER_WORDS: [&str; 6] = [
    "WSWelcome",
    "WSUsers",
    "WSJoin",
    "WSLeave",
    "WSIs",
    "WSError",
];

/// Stands for the sender in a line from a client without a name; it is not a
/// valid name, so no client can be called that.
pub const UNNAMED: &str = "(unnamed)";

/// The first word of a line carrying a private message.
pub const PRIVATE_MARK: &str = "(private)";

/// The line the others get for chat `text` from a client called `sender`
/// (`None`: it has no name yet): `<sender>: <text>`.
pub fn public_line(sender: Option<&str>, text: &str) -> String {
    format!("{}: {text}", sender.unwrap_or(UNNAMED))
}

/// The line the recipient of `WSPrivate <name> <text>` from a client called
/// `sender` gets: `(private) <sender>: <text>`.
pub fn private_line(sender: Option<&str>, text: &str) -> String {
    format!("{PRIVATE_MARK} {}: {text}", sender.unwrap_or(UNNAMED))
}

impl<'a> Command<'a> {
    /// Reads `text` as a command; `None` means it is an ordinary message.
    ///
    /// The argument is everything after the prefix's single space, so
    /// `WSHello  bob` asks for the name `" bob"` (and is refused by validation).
    pub fn parse(text: &'a str) -> Option<Command<'a>> {
        if let Some(name) = text.strip_prefix(HELLO) {
            return Some(Command::Hello { name });
        }
        if let Some(rest) = text.strip_prefix(PRIVATE) {
            return Some(match rest.split_once(' ') {
                Some((name, message)) if !message.is_empty() => Command::Private { name, message },
                _ => Command::PrivateUsage,
            });
        }
        if let Some(name) = text.strip_prefix(WHOIS) {
            return Some(Command::Whois { name });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: Option<Command<'_>>) {
        assert_eq!(Command::parse(text), expected, "parsing {text:?}");
    }

    #[test]
    fn commands_need_their_exact_prefix_and_one_space() {
        check("WSHello bob", Some(Command::Hello { name: "bob" }));
        check("WSHello ", Some(Command::Hello { name: "" }));
        check("WSHello  bob", Some(Command::Hello { name: " bob" }));
        check(
            "WSHello bob smith",
            Some(Command::Hello { name: "bob smith" }),
        );
        check("WSWhois alice", Some(Command::Whois { name: "alice" }));
        check("WSWhois ", Some(Command::Whois { name: "" }));
        // Not commands: ordinary messages.
        check("WSHello", None);
        check("WSHellobob", None);
        check("wshello bob", None);
        check(" WSHello bob", None);
        check("WSHello\tbob", None);
        check("WSWhois", None);
        check("WSPrivate", None);
        check("hello WSHello bob", None);
        check("", None);
    }

    /// The first word of `line`, as a client reads it (up to the first space).
    fn first_word(line: &str) -> &str {
        line.split(' ').next().unwrap_or(line)
    }

    #[test]
    fn relayed_lines_name_their_sender_and_never_start_like_the_chats() {
        let texts = [
            "hello",
            "WSWelcome mallory",
            "WSJoin ghost",
            "WSLeave alice",
            "WSUsers ghost",
            "WSIs alice 6.6.6.6",
            "WSError kicked",
            "WSJoin",
            "bob: hello",
            "bob (private): hello",
            "(private) bob: hello",
            "(unnamed): hello",
            "",
            " ",
        ];
        // Valid names, some spelled like the chat's words.
        let senders = [Some("mallory"), Some("WSJoin"), Some("WSWelcome"), None];
        for sender in senders {
            let name = sender.unwrap_or(UNNAMED);
            for text in texts {
                let public = public_line(sender, text);
                assert_eq!(public, format!("{name}: {text}"));
                assert_eq!(first_word(&public), format!("{name}:"));
                let private = private_line(sender, text);
                assert_eq!(private, format!("(private) {name}: {text}"));
                assert_eq!(first_word(&private), PRIVATE_MARK);
                for line in [&public, &private] {
                    assert!(
                        !SERVER_WORDS.contains(&first_word(line)),
                        "{line:?} passes for the chat's"
                    );
                }
            }
        }
    }

    #[test]
    fn the_markers_are_not_valid_names() {
        assert!(crate::chat::validate_name(UNNAMED).is_err());
        assert!(crate::chat::validate_name(PRIVATE_MARK).is_err());
    }

    #[test]
    fn private_splits_at_the_first_space_after_the_name() {
        check(
            "WSPrivate bob hi there",
            Some(Command::Private {
                name: "bob",
                message: "hi there",
            }),
        );
        check(
            "WSPrivate bob  two spaces",
            Some(Command::Private {
                name: "bob",
                message: " two spaces",
            }),
        );
        check(
            "WSPrivate  hi",
            Some(Command::Private {
                name: "",
                message: "hi",
            }),
        );
        check("WSPrivate bob", Some(Command::PrivateUsage));
        check("WSPrivate bob ", Some(Command::PrivateUsage));
        check("WSPrivate ", Some(Command::PrivateUsage));
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn a_command_is_exactly_its_text(
            prefix in prop_oneof![Just(""), Just(HELLO), Just(PRIVATE), Just(WHOIS), Just("WS")],
            rest in ".{0,40}",
        ) {
            let text = format!("{prefix}{rest}");
            match Command::parse(&text) {
                Some(Command::Hello { name }) => prop_assert_eq!(format!("{HELLO}{name}"), text),
                Some(Command::Whois { name }) => prop_assert_eq!(format!("{WHOIS}{name}"), text),
                Some(Command::Private { name, message }) => {
                    prop_assert!(!name.contains(' '));
                    prop_assert!(!message.is_empty());
                    prop_assert_eq!(format!("{PRIVATE}{name} {message}"), text);
                }
                Some(Command::PrivateUsage) => prop_assert!(text.starts_with(PRIVATE)),
                None => {
                    prop_assert!(!text.starts_with(HELLO));
                    prop_assert!(!text.starts_with(PRIVATE));
                    prop_assert!(!text.starts_with(WHOIS));
                }
            }
        }
    }
}
