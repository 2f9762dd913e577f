//! Fuzzes the reader of a connection's first request head
//! (`gateway::first_request`, through `gateway::fuzz_api`), which decides
//! before hyper whether a connection starts with a WebSocket upgrade.
//!
//! The first input byte is how many bytes each read brings (at least one);
//! the rest is what the client sends. Checked: no panic; the outcome is the
//! same whether the bytes come in those reads or in one (the same kind, and
//! for an upgrade the same head and request); what is kept is a prefix of
//! what was sent and within the head limit; an upgrade's head ends with an
//! empty line and asks for `Upgrade: websocket`.

#![no_main]

use gateway::fuzz_api::{FirstRequest, HeadReader};
use libfuzzer_sys::fuzz_target;

/// The head limit here: small, so that it is reached.
const MAX_HEAD: usize = 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&per_read, sent)) = data.split_first() else {
        return;
    };
    let in_pieces = read_all(sent, usize::from(per_read).max(1));
    let at_once = read_all(sent, MAX_HEAD);
    for first in [&in_pieces, &at_once] {
        match first {
            FirstRequest::Upgrade {
                request,
                read,
                head_len,
            } => {
                assert!(*head_len <= read.len() && read.len() <= MAX_HEAD);
                assert!(sent.starts_with(read));
                let head = &read[..*head_len];
                assert!(
                    head.ends_with(b"\n\n") || head.ends_with(b"\n\r\n"),
                    "{head:?}"
                );
                let upgrade =
                    request
                        .headers()
                        .get_all(http::header::UPGRADE)
                        .iter()
                        .any(|value| {
                            value
                                .as_bytes()
                                .to_ascii_lowercase()
                                .windows(9)
                                .any(|w| w == b"websocket")
                        });
                assert!(upgrade, "{request:?}");
            }
            FirstRequest::Other(read) => {
                assert!(read.len() <= MAX_HEAD);
                assert!(sent.starts_with(read));
            }
            FirstRequest::Gone => panic!("no read failed"),
        }
    }
    match (&in_pieces, &at_once) {
        (
            FirstRequest::Upgrade {
                request: one,
                read: one_read,
                head_len: one_len,
            },
            FirstRequest::Upgrade {
                request: other,
                read: other_read,
                head_len: other_len,
            },
        ) => {
            assert_eq!(one_len, other_len);
            assert_eq!(one_read[..*one_len], other_read[..*other_len]);
            assert_eq!(one.method(), other.method());
            assert_eq!(one.uri(), other.uri());
            assert_eq!(one.version(), other.version());
            assert_eq!(one.headers(), other.headers());
        }
        (FirstRequest::Other(_), FirstRequest::Other(_)) => {}
        (one, other) => panic!("in pieces {one:?}, at once {other:?}"),
    }
});

/// What `gateway::first_request::read` makes of `sent` arriving `per_read`
/// bytes at a time, as far as the head limit.
fn read_all(sent: &[u8], per_read: usize) -> FirstRequest {
    let mut head = HeadReader::new(MAX_HEAD);
    let mut rest = sent;
    loop {
        let room = head.room();
        if room == 0 || rest.is_empty() {
            return head.give_up();
        }
        let n = per_read.min(room).min(rest.len());
        head.read.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        if let Some(first) = head.step() {
            return first;
        }
    }
}
