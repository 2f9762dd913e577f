//! Fuzzes the chat command parser (`servers::chat::Command::parse`, the
//! syntax of `docs/chat.md`) on arbitrary UTF-8 text.
//!
//! Checked: parsing never panics, and each result puts the text back
//! together: a command is exactly its prefix, one space and its parts, and
//! an ordinary message starts with no command prefix.

#![no_main]

use libfuzzer_sys::fuzz_target;
use servers::chat::Command;

fuzz_target!(|text: &str| {
    match Command::parse(text) {
        Some(Command::Hello { name }) => assert_eq!(format!("WSHello {name}"), text),
        Some(Command::Whois { name }) => assert_eq!(format!("WSWhois {name}"), text),
        Some(Command::Private { name, message }) => {
            assert!(!name.contains(' '), "the name ends at the first space");
            assert!(!message.is_empty(), "a private message is never empty");
            assert_eq!(format!("WSPrivate {name} {message}"), text);
        }
        Some(Command::PrivateUsage) => {
            let rest = text
                .strip_prefix("WSPrivate ")
                .expect("usage needs the prefix");
            assert!(
                rest.split_once(' ')
                    .is_none_or(|(_, message)| message.is_empty()),
                "{text:?} holds a message"
            );
        }
        None => {
            for prefix in ["WSHello ", "WSPrivate ", "WSWhois "] {
                assert!(!text.starts_with(prefix), "{text:?} is a command");
            }
        }
    }
});
