//! The raw relay, for backends written for the original ouistiti: no records,
//! the payload bytes of each client message as they are (optionally followed
//! by NUL), and from the backend, NUL-terminated messages or one message per read.
//!
//! Raw mode has no close codes and no metadata; `docs/link-protocol.md` lists
//! what it cannot do.

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use link::LinkStream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::io::{ReadHalf, WriteHalf};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;

use link::deflate::MessageDeflater;
use link::keepalive::{IdleTimer, PingTicker};

use crate::client_stream::ClientStream;
use crate::metrics::{ClientMetrics, Traffic};

use super::{
    ClientGone, ClientReader, ClientWriter, ClientWs, Ending, LinkFailure, RelaySettings,
    client_error, close_client, compressed, first_ending,
};

/// Bytes read from a raw backend at a time.
const RAW_READ_CHUNK: usize = 4096;

/// Relays between `client` and the raw backend on `link` until one side
/// closes or `shutdown` fires.
pub(crate) async fn run<S: ClientStream>(
    client: ClientWs<S>,
    link: LinkStream,
    settings: &RelaySettings,
    deflater: Option<MessageDeflater>,
    shutdown: &CancellationToken,
    metrics: &ClientMetrics,
) {
    let (mut link_reader, mut link_writer) = tokio::io::split(link);
    let (mut client_writer, mut client_reader) = client.split();
    let ending = {
        let upstream = client_to_backend(
            &mut client_reader,
            &mut link_writer,
            settings,
            &metrics.to_backend,
        );
        let downstream = backend_to_client(
            &mut link_reader,
            &mut client_writer,
            settings,
            &metrics.to_client,
            deflater,
        );
        first_ending(upstream, downstream, shutdown, metrics).await
    };
    // Raw mode has no CLOSE: the backend sees the link end.
    let _ = link_writer.shutdown().await;
    close_client(
        &ending,
        client_writer,
        client_reader,
        settings.close_timeout,
    )
    .await;
}

async fn client_to_backend<S: ClientStream>(
    client_reader: &mut ClientReader<S>,
    link_writer: &mut WriteHalf<LinkStream>,
    settings: &RelaySettings,
    traffic: &Traffic,
) -> Ending {
    let mut idle = IdleTimer::new(settings.idle_timeout);
    loop {
        let next = tokio::select! {
            next = client_reader.next() => next,
            () = idle.expired() => return Ending::Idle,
        };
        idle.heard();
        let payload = match next {
            Some(Ok(Message::Text(text))) => Bytes::from(text),
            Some(Ok(Message::Binary(data))) => data,
            Some(Ok(Message::Close(frame))) => return Ending::ClientClosed(frame),
            Some(Ok(_)) => continue,
            Some(Err(error)) => return client_error(error),
            None => return Ending::ClientGone(ClientGone::Vanished),
        };
        let written = if settings.raw_nul {
            let mut terminated = BytesMut::with_capacity(payload.len() + 1);
            terminated.extend_from_slice(&payload);
            terminated.extend_from_slice(&[0]);
            link_writer.write_all(&terminated).await
        } else {
            link_writer.write_all(&payload).await
        };
        if let Err(error) = written {
            return Ending::BackendGone(LinkFailure::RawWrite(error));
        }
        traffic.count(payload.len());
    }
}

async fn backend_to_client<S: ClientStream>(
    link_reader: &mut ReadHalf<LinkStream>,
    client_writer: &mut ClientWriter<S>,
    settings: &RelaySettings,
    traffic: &Traffic,
    mut deflater: Option<MessageDeflater>,
) -> Ending {
    let mut pings = PingTicker::new(settings.ping_interval);
    let mut splitter = RawSplitter::new(settings.max_message_size);
    let mut buffer = BytesMut::new();
    loop {
        buffer.reserve(RAW_READ_CHUNK);
        let n_read = tokio::select! {
            read = link_reader.read_buf(&mut buffer) => match read {
                Ok(n_read) => n_read,
                Err(error) => return Ending::BackendGone(LinkFailure::RawRead(error)),
            },
            () = pings.tick() => {
                if let Err(error) = client_writer.send(Message::Ping(Bytes::new())).await {
                    return Ending::ClientGone(ClientGone::Write(std::io::Error::other(error)));
                }
                continue;
            }
        };
        if n_read == 0 {
            // The backend's way of closing; raw mode has nothing more to say.
            return Ending::BackendClosed(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: Utf8Bytes::from_static("backend closed"),
            }));
        }
        let messages = match splitter.push(buffer.split()) {
            Ok(messages) => messages,
            Err(error) => return Ending::BackendGone(error.into()),
        };
        let mut tally = traffic.tally();
        for payload in messages {
            tally.count(payload.len());
            // Cloning `Bytes` only counts a reference.
            let message = match Utf8Bytes::try_from(payload.clone()) {
                Ok(text) => Message::Text(text),
                Err(_) => Message::Binary(payload),
            };
            if let Err(error) = client_writer.feed(compressed(&mut deflater, message)).await {
                return Ending::ClientGone(ClientGone::Write(std::io::Error::other(error)));
            }
        }
        if let Err(error) = client_writer.flush().await {
            return Ending::ClientGone(ClientGone::Write(std::io::Error::other(error)));
        }
    }
}

/// A raw backend's message broke a limit.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum RawSplitError {
    /// More than the maximum message size arrived without a NUL.
    #[error("raw backend sent {len} bytes without a NUL, over the message limit of {max}")]
    TooLong {
        /// Bytes held so far.
        len: usize,
        /// The maximum message size.
        max: usize,
    },
}

/// Cuts a raw backend's byte stream into messages.
///
/// Until the backend has sent a NUL, every read is one message. Once it has,
/// the backend is taken to end its messages with NUL, and bytes are held
/// until their NUL (up to the maximum message size).
///
/// Each byte is searched for NUL once: a search resumes where the previous
/// one stopped, so a long message costs time linear in its length.
struct RawSplitter {
    nul_terminated: bool,
    pending: BytesMut,
    /// Bytes at the start of `pending` known to hold no NUL.
    searched: usize,
    max_message_size: usize,
    /// Bytes examined for NUL so far, to check that the work stays linear.
    #[cfg(test)]
    n_examined: usize,
}

impl RawSplitter {
    fn new(max_message_size: usize) -> RawSplitter {
        RawSplitter {
            nul_terminated: false,
            pending: BytesMut::new(),
            searched: 0,
            max_message_size,
            #[cfg(test)]
            n_examined: 0,
        }
    }

    /// The messages completed by one read of `chunk`.
    fn push(&mut self, chunk: BytesMut) -> Result<Vec<Bytes>, RawSplitError> {
        if self.pending.is_empty() {
            self.pending = chunk;
        } else {
            self.pending.extend_from_slice(&chunk);
        }
        let mut messages = Vec::new();
        loop {
            let unsearched = &self.pending[self.searched..];
            let found = memchr::memchr(0, unsearched);
            #[cfg(test)]
            {
                self.n_examined += found.map_or(unsearched.len(), |idx| idx + 1);
            }
            let Some(offset) = found else {
                self.searched = self.pending.len();
                break;
            };
            self.nul_terminated = true;
            let message = self.pending.split_to(self.searched + offset).freeze();
            self.pending.advance(1);
            self.searched = 0;
            messages.push(message);
        }
        if !self.nul_terminated && !self.pending.is_empty() {
            messages.push(self.pending.split().freeze());
            self.searched = 0;
        }
        if self.pending.len() > self.max_message_size {
            return Err(RawSplitError::TooLong {
                len: self.pending.len(),
                max: self.max_message_size,
            });
        }
        Ok(messages)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(splitter: &mut RawSplitter, bytes: &[u8]) -> Vec<Bytes> {
        splitter
            .push(BytesMut::from(bytes))
            .expect("within the limit")
    }

    #[test]
    fn reads_are_messages_until_a_nul_shows_up() {
        let mut splitter = RawSplitter::new(1024);
        assert_eq!(
            push(&mut splitter, b"hello"),
            [Bytes::from_static(b"hello")]
        );
        assert_eq!(
            push(&mut splitter, b"first\0second\0thi"),
            [Bytes::from_static(b"first"), Bytes::from_static(b"second")]
        );
        // From now on a message waits for its NUL.
        assert!(push(&mut splitter, b"rd").is_empty());
        assert_eq!(push(&mut splitter, b"\0"), [Bytes::from_static(b"third")]);
        assert_eq!(push(&mut splitter, b"\0"), [Bytes::new()]);
    }

    #[test]
    fn each_byte_is_searched_once() {
        let mut splitter = RawSplitter::new(16 * 1024 * 1024);
        push(&mut splitter, b"\0");
        let chunk = vec![b'x'; 4096];
        for _ in 0..256 {
            assert!(push(&mut splitter, &chunk).is_empty());
        }
        assert_eq!(
            push(&mut splitter, b"\0"),
            [Bytes::from(vec![b'x'; 256 * 4096])]
        );
        // One byte for the first NUL, 1 MiB once, one for the last NUL.
        assert_eq!(splitter.n_examined, 1 + 256 * 4096 + 1);
    }

    #[test]
    fn a_message_without_its_nul_is_bounded() {
        let mut splitter = RawSplitter::new(4);
        push(&mut splitter, b"a\0");
        assert_eq!(
            splitter.push(BytesMut::from(&b"12345"[..])),
            Err(RawSplitError::TooLong { len: 5, max: 4 })
        );
    }
}
