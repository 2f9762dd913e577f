//! The client's transport, over which hyper, the upgrade and the relay run:
//! a plain `TcpStream` or a TLS stream over one ([`ClientStream`]).
//!
//! Everything above it is generic over the transport, so a plain client pays
//! nothing for TLS being possible. Only direct mode needs to know which it
//! is: it hands over a bare TCP socket, which a TLS client does not have.

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
}

impl ClientStream for TcpStream {
    fn into_tcp(self) -> Result<TcpStream, Self> {
        Ok(self)
    }
}

impl ClientStream for TlsStream<TcpStream> {
    fn into_tcp(self) -> Result<TcpStream, Self> {
        // The TCP socket carries TLS records that only this process can decrypt.
        Err(self)
    }
}
