//! The syntax of ouistiti's chat commands, enabled with `websocket_chat -w`:
//! a text message that starts with a command word and one space.
//!
//! Parsing only splits a message into its parts; whether a name is valid is
//! `name`'s business and what a command does is `room`'s. A text that is not
//! a command (including a command word without its space) is an ordinary
//! chat message.

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
