//! The first request head of a connection, read and parsed before hyper sees
//! the connection, so that a WebSocket upgrade (what almost every connection
//! to a gateway starts with) is answered without hyper's per-connection
//! machinery: no HTTP/1 state machine, no upgrade hand-over between tasks,
//! no boxed `Upgraded` to take apart again (`connection`).
//!
//! Only a complete head that asks for `Upgrade: websocket` takes that path.
//! Anything else, including a head hyper would refuse (bad syntax, too many
//! headers, too large), goes to hyper together with the bytes read so far,
//! and hyper answers it exactly as if it had read them itself. The head is
//! read under the same bounds as hyper's: at most `max_head` bytes, within
//! `timeout`.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Uri, Version};
use link::websocket::reserve_for;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::handshake;

/// Most header lines a first request may have on the fast path (hyper's
/// own limit); a request with more goes to hyper, which refuses it.
const MAX_HEADERS: usize = 100;

/// The first request on a connection, as far as it was read.
// Made once per connection and taken apart at once: boxing the request
// would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum FirstRequest {
    /// A complete head asking for a WebSocket upgrade, parsed into a request
    /// with no body; `read` holds the head's `head_len` bytes and whatever
    /// the client sent after it (its first frames, if it did not wait).
    Upgrade {
        request: Request<()>,
        read: BytesMut,
        head_len: usize,
    },
    /// Anything else, or a head hyper is to refuse: the bytes read so far.
    Other(BytesMut),
    /// The client sent nothing complete in time, or the read failed: close.
    Gone,
}

/// Reads the first request head from `stream`: up to `max_head` bytes,
/// within `timeout`, stopping as soon as the head is complete.
pub(crate) async fn read<S: AsyncRead + Unpin>(
    stream: &mut S,
    max_head: usize,
    timeout: Duration,
) -> FirstRequest {
    let mut head = HeadReader::new(max_head);
    let reading = async {
        loop {
            let room = head.room();
            if room == 0 {
                // Too large for the fast path; hyper answers 431.
                return head.give_up();
            }
            // A spare of this thread's buffers when there is one (the last
            // upgrade gave its head's back), else a new one.
            reserve_for(&mut head.read, 1);
            match (&mut *stream)
                .take(room as u64)
                .read_buf(&mut head.read)
                .await
            {
                Ok(0) => return head.give_up(),
                Ok(_) => {}
                Err(error) => {
                    tracing::debug!(%error, "connection failed before its first request");
                    return FirstRequest::Gone;
                }
            }
            if let Some(first) = head.step() {
                return first;
            }
        }
    };
    // The timer is set only if the head is not there at the first read.
    tokio::time::timeout(timeout, reading)
        .await
        .unwrap_or(FirstRequest::Gone)
}

/// The bytes of a first request head as they arrive, and what they make.
#[derive(Debug)]
pub struct HeadReader {
    /// Everything read so far.
    pub read: BytesMut,
    /// Where the last search for the head's end stopped.
    searched: usize,
    max_head: usize,
}

impl HeadReader {
    /// Nothing read yet; the head may take up to `max_head` bytes.
    pub fn new(max_head: usize) -> HeadReader {
        HeadReader {
            read: BytesMut::new(),
            searched: 0,
            max_head,
        }
    }

    /// How many more bytes the head may take.
    pub fn room(&self) -> usize {
        self.max_head.saturating_sub(self.read.len())
    }

    /// What the bytes read so far make, after a read added to `read`:
    /// `None` while the head can still be completed. Each byte is searched
    /// once for the head's end, and the head parsed once it may be complete:
    /// linear in the head however the client cuts it into reads.
    pub fn step(&mut self) -> Option<FirstRequest> {
        if self.read.starts_with(b"\r") || self.read.starts_with(b"\n") {
            // Empty lines before the request line: hyper's business.
            return Some(self.give_up());
        }
        let complete = has_empty_line(&self.read, self.searched);
        self.searched = self.read.len();
        if !complete {
            return None;
        }
        match parse(&self.read) {
            // The end was seen, so the answer is final: a head that still
            // does not parse as complete is hyper's to refuse.
            Parsed::Partial | Parsed::Other => Some(self.give_up()),
            Parsed::Upgrade(request, head_len) => Some(FirstRequest::Upgrade {
                request,
                read: std::mem::take(&mut self.read),
                head_len,
            }),
        }
    }

    /// Everything read so far, for hyper: at the end of the stream, at the
    /// head limit, or for a head the fast path does not take.
    pub fn give_up(&mut self) -> FirstRequest {
        FirstRequest::Other(std::mem::take(&mut self.read))
    }
}

/// Whether a line ending at or after `from` in `bytes` is empty: the end of
/// a head (`\r\n\r\n`, or bare `\n` line ends, which HTTP parsers accept).
fn has_empty_line(bytes: &[u8], from: usize) -> bool {
    memchr::memchr_iter(b'\n', &bytes[from..]).any(|offset| {
        let before = &bytes[..from + offset];
        before.ends_with(b"\n") || before.ends_with(b"\n\r")
    })
}

/// What the bytes read so far are.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Parsed {
    /// The head is not complete yet.
    Partial,
    /// Not a WebSocket upgrade, or not a head the fast path takes.
    Other,
    /// A complete upgrade request and the length of its head.
    Upgrade(Request<()>, usize),
}

/// Parses `bytes` as the start of an HTTP/1.x request.
fn parse(bytes: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut head = httparse::Request::new(&mut headers);
    match head.parse(bytes) {
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Err(_) => Parsed::Other,
        Ok(httparse::Status::Complete(head_len)) => match to_request(&head, bytes, head_len) {
            Some(request) if handshake::is_websocket_upgrade(request.headers()) => {
                Parsed::Upgrade(request, head_len)
            }
            _ => Parsed::Other,
        },
    }
}

/// The parsed head as an `http` request, if every part is valid there.
/// `head` was parsed from `bytes`, whose first `head_len` bytes are the
/// head: its header values become slices of one copy of them (one
/// allocation, not one per header).
fn to_request(
    head: &httparse::Request<'_, '_>,
    bytes: &[u8],
    head_len: usize,
) -> Option<Request<()>> {
    let method = Method::from_bytes(head.method?.as_bytes()).ok()?;
    let uri = Uri::try_from(head.path?).ok()?;
    let version = match head.version? {
        1 => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    let shared = Bytes::copy_from_slice(&bytes[..head_len]);
    let mut headers = HeaderMap::with_capacity(head.headers.len());
    for header in head.headers.iter() {
        // Where the value lies in the head (httparse's slices point into
        // `bytes`); a value outside it would be a parser bug: not taken.
        let start = (header.value.as_ptr() as usize).checked_sub(bytes.as_ptr() as usize)?;
        let value = shared.get(start..start + header.value.len())?;
        let value = shared.slice_ref(value);
        headers.append(
            HeaderName::from_bytes(header.name.as_bytes()).ok()?,
            HeaderValue::from_maybe_shared(value).ok()?,
        );
    }
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    Some(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPGRADE: &[u8] = b"GET /echo?x=1 HTTP/1.1\r\nHost: example.com\r\n\
        Upgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

    #[test]
    fn an_upgrade_head_is_a_request_with_its_length() {
        let mut bytes = UPGRADE.to_vec();
        bytes.extend_from_slice(b"\x81\x85frame");
        let Parsed::Upgrade(request, head_len) = parse(&bytes) else {
            panic!("not an upgrade");
        };
        assert_eq!(head_len, UPGRADE.len());
        assert_eq!(request.method(), Method::GET);
        assert_eq!(request.uri().path(), "/echo");
        assert_eq!(request.uri().query(), Some("x=1"));
        assert_eq!(request.version(), Version::HTTP_11);
        assert_eq!(request.headers()["host"], "example.com");
        assert_eq!(request.headers()["sec-websocket-version"], "13");
    }

    #[test]
    fn a_head_cut_short_is_partial_and_anything_else_goes_to_hyper() {
        for len in 0..UPGRADE.len() {
            assert!(
                matches!(parse(&UPGRADE[..len]), Parsed::Partial),
                "{len} bytes"
            );
        }
        for other in [
            &b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\n\r\n",
            b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nBad Name: 1\r\n\r\n",
            b"\x16\x03\x01\x00\xa5",
        ] {
            assert!(matches!(parse(other), Parsed::Other), "{other:?}");
        }
    }

    #[test]
    fn the_end_of_a_head_is_found_in_whatever_read_brings_it() {
        let head = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        // Searching from where any earlier read ended finds it.
        for cut in 0..head.len() {
            assert!(has_empty_line(head, cut), "cut at {cut}");
        }
        assert!(!has_empty_line(&head[..head.len() - 1], 0));
        assert!(has_empty_line(b"GET / HTTP/1.1\nHost: x\n\n", 0));
        assert!(!has_empty_line(b"GET / HTTP/1.1\r\nHost: x\r\n", 0));
    }

    #[test]
    fn more_headers_than_the_limit_go_to_hyper() {
        let mut bytes = b"GET /echo HTTP/1.1\r\nUpgrade: websocket\r\n".to_vec();
        for idx in 0..MAX_HEADERS {
            bytes.extend_from_slice(format!("x-{idx}: 1\r\n").as_bytes());
        }
        bytes.extend_from_slice(b"\r\n");
        assert!(matches!(parse(&bytes), Parsed::Other));
    }

    #[tokio::test]
    async fn the_head_is_read_in_pieces_and_a_large_one_is_left_to_hyper() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for chunk in UPGRADE.chunks(7) {
                client.write_all(chunk).await?;
            }
            client.write_all(b"after").await?;
            Ok::<_, std::io::Error>(client)
        });
        let first = read(&mut server, 8192, Duration::from_secs(60)).await;
        let FirstRequest::Upgrade {
            read: bytes,
            head_len,
            ..
        } = first
        else {
            panic!("expected an upgrade, got {first:?}");
        };
        assert_eq!(&bytes[..head_len], UPGRADE);
        let _client = writer.await.expect("writer").expect("write");

        let (mut client, mut server) = tokio::io::duplex(1024);
        tokio::io::AsyncWriteExt::write_all(&mut client, UPGRADE)
            .await
            .expect("write");
        match read(&mut server, 50, Duration::from_secs(60)).await {
            FirstRequest::Other(read) => assert_eq!(&read[..], &UPGRADE[..50]),
            other => panic!("expected the first 50 bytes for hyper, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_head_not_sent_in_time_closes_the_connection() {
        // The rest of the head never comes: the outcome does not depend on timing.
        let (mut client, mut server) = tokio::io::duplex(1024);
        tokio::io::AsyncWriteExt::write_all(&mut client, &UPGRADE[..20])
            .await
            .expect("write");
        let first = read(&mut server, 8192, Duration::from_millis(50)).await;
        assert!(matches!(first, FirstRequest::Gone), "{first:?}");
    }
}
