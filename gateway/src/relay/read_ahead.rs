//! The records from the backend, read in large chunks while data flows and
//! with no buffer while idle ([`LinkReader`]); the client's side of the same
//! idea is `link::websocket::ReadAhead`, under the client's WebSocket.
//!
//! A read takes up to [`READ_CHUNK`] bytes, so a backend answering a
//! pipelining client costs one read per burst, and the buffer is freed when
//! a read finds nothing and no partial record is held: an idle relayed
//! client costs no link read buffer.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::BytesMut;
use futures_util::Stream;
use link::websocket::READ_CHUNK;
use link::{LinkError, Record, RecordCodec};
use tokio::net::unix::OwnedReadHalf;
use tokio_util::codec::Decoder;
use tokio_util::io::poll_read_buf;

/// The records of a link, read [`READ_CHUNK`] bytes at a time (a record
/// larger than that is read whole into a buffer the codec sized for it,
/// bounded by the codec's maximum payload).
#[derive(Debug)]
pub(crate) struct LinkReader {
    half: OwnedReadHalf,
    codec: RecordCodec,
    buffer: BytesMut,
    /// The link ended (or failed): nothing more comes.
    done: bool,
}

impl LinkReader {
    /// Reads records from `half`, starting with the bytes already read into `buffer`.
    pub(crate) fn new(half: OwnedReadHalf, codec: RecordCodec, buffer: BytesMut) -> LinkReader {
        LinkReader {
            half,
            codec,
            buffer,
            done: false,
        }
    }
}

impl Stream for LinkReader {
    type Item = Result<Record, LinkError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match this.codec.decode(&mut this.buffer) {
                Ok(Some(record)) => return Poll::Ready(Some(Ok(record))),
                Ok(None) => {}
                Err(error) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(error)));
                }
            }
            if this.buffer.capacity() - this.buffer.len() < READ_CHUNK / 4 {
                this.buffer.reserve(READ_CHUNK);
            }
            let read = poll_read_buf(Pin::new(&mut this.half), cx, &mut this.buffer);
            if read.is_pending() && this.buffer.is_empty() {
                // Nothing held and nothing to read: an idle link holds no buffer.
                this.buffer = BytesMut::new();
            }
            match ready!(read) {
                Ok(0) => {
                    this.done = true;
                    return Poll::Ready(if this.buffer.is_empty() {
                        None
                    } else {
                        Some(Err(LinkError::Truncated))
                    });
                }
                Ok(_) => {}
                Err(error) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(error.into())));
                }
            }
        }
    }
}
