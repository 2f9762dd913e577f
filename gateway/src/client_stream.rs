//! The client's transport, over which hyper, the upgrade and the relay run:
//! a plain `TcpStream` or a TLS stream over one ([`ClientStream`]).
//!
//! Everything above it is generic over the transport, so a plain client pays
//! nothing for TLS being possible. Only direct mode needs to know which it
//! is: it hands over a bare TCP socket, which a TLS client does not have.

use std::io;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::tls::TlsStream;

/// A client connection the gateway can serve.
pub(crate) trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The bare TCP socket for direct mode's hand-over, or the stream back
    /// when there is none to hand over (TLS).
    fn into_tcp(self) -> Result<TcpStream, Self>
    where
        Self: Sized;

    /// Pending (with the task's waker registered) when a read would surely
    /// find nothing; ready when it may find something. The relay asks this
    /// before it takes a buffer to read into, so a wake-up meant for the
    /// other side costs no buffer.
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// Whether only reads register the socket's read interest, so a read
    /// found pending is followed by a wake-up of the waker it was given
    /// (the relay then asks the socket only when that waker woke it).
    const EXACT_READ_WAKEUPS: bool;
}

impl ClientStream for TcpStream {
    const EXACT_READ_WAKEUPS: bool = true;

    fn into_tcp(self) -> Result<TcpStream, Self> {
        Ok(self)
    }

    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        TcpStream::poll_read_ready(self, cx)
    }
}

impl ClientStream for TlsStream<TcpStream> {
    // A write may read (a TLS record to answer), registering the read
    // interest with the writer's waker.
    const EXACT_READ_WAKEUPS: bool = false;

    fn into_tcp(self) -> Result<TcpStream, Self> {
        // The TCP socket carries TLS records that only this process can decrypt.
        Err(self)
    }

    fn poll_read_ready(&self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Decrypted bytes may wait in the TLS state with the socket empty:
        // only a read can tell.
        Poll::Ready(Ok(()))
    }
}
