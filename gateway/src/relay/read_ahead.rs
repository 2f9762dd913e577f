//! Reading in large chunks while data flows and holding nothing while idle:
//! [`ReadAhead`] for the client's connection (under tungstenite, whose own
//! read buffer stays small), [`LinkReader`] for the records from the backend.
//!
//! Both read up to [`READ_CHUNK`] bytes per syscall, so a pipelining client
//! or a backend answering one costs one read per burst, not one per 1 KiB,
//! and both free that buffer when a read finds nothing and no partial data
//! is held: an idle relayed client costs no read buffer here.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use futures_util::Stream;
use link::websocket::READ_CHUNK;
use link::{LinkError, Record, RecordCodec};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::unix::OwnedReadHalf;
use tokio_util::codec::Decoder;
use tokio_util::io::poll_read_buf;

/// A stream whose reads take up to [`READ_CHUNK`] bytes from the socket at
/// once and hand them out in the (smaller) pieces the reader asks for.
/// Writes pass through.
#[derive(Debug)]
pub(crate) struct ReadAhead<S> {
    inner: S,
    /// Read from `inner`, not yet handed out; no capacity while idle.
    buffer: BytesMut,
}

impl<S> ReadAhead<S> {
    pub(crate) fn new(inner: S) -> ReadAhead<S> {
        ReadAhead {
            inner,
            buffer: BytesMut::new(),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.buffer.is_empty() {
            if out.remaining() >= READ_CHUNK {
                // As large a read as ours: no need to go through the buffer.
                return Pin::new(&mut this.inner).poll_read(cx, out);
            }
            this.buffer.reserve(READ_CHUNK);
            match poll_read_buf(Pin::new(&mut this.inner), cx, &mut this.buffer) {
                Poll::Pending => {
                    // Nothing to read: an idle connection holds no buffer.
                    this.buffer = BytesMut::new();
                    return Poll::Pending;
                }
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                // The end of the stream: `out` stays empty.
                Poll::Ready(Ok(0)) => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(_)) => {}
            }
        }
        let n = out.remaining().min(this.buffer.len());
        out.put_slice(&this.buffer[..n]);
        this.buffer.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, bytes)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

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
