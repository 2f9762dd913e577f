//! Direct mode on the backend side: after ACCEPT the gateway hands over the
//! client's own TCP socket (a HANDOFF record with SCM_RIGHTS, `link::fd_pass`)
//! and this backend speaks WebSocket on it, the gateway out of the data path.
//!
//! [`DirectClient`] makes that socket behave like a relayed session: the same
//! messages come out (`Text`, `Binary`, then one `Close` with the code the
//! gateway would have sent in relay mode), and it keeps the client alive with
//! pings and closes it after the idle timeout, as the gateway does when it
//! relays. `session` wraps it; servers never see the difference.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use link::deflate::MessageDeflater;
use link::keepalive::{DEFAULT_IDLE_TIMEOUT, DEFAULT_PING_INTERVAL, IdleTimer, PingTicker};
use link::websocket::{DIRECT_READ_BUFFER, ReadAhead, client_config};
use link::{ClientLimits, DeflateParams, LinkError, close_for_client_error, fd_pass};
use tokio::net::{TcpStream, UnixStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};

/// Keepalive and limits of direct clients: the gateway's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectOptions {
    /// Largest message from a client; more is closed with 1009.
    pub max_message_size: usize,
    /// Time between pings to the client; `None` sends none.
    pub ping_interval: Option<Duration>,
    /// Silence after which the client is closed with 1001; `None` never.
    pub idle_timeout: Option<Duration>,
}

impl Default for DirectOptions {
    fn default() -> DirectOptions {
        DirectOptions {
            max_message_size: link::DEFAULT_MAX_PAYLOAD,
            ping_interval: Some(DEFAULT_PING_INTERVAL),
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
        }
    }
}

impl DirectOptions {
    /// These options under the gateway's `limits` for the client: its
    /// keepalive, and the smaller of the two maximum message sizes.
    pub fn with_limits(self, limits: ClientLimits) -> DirectOptions {
        let seconds = |secs: u64| (secs != 0).then(|| Duration::from_secs(secs));
        DirectOptions {
            max_message_size: self.max_message_size.min(limits.max_message_size),
            ping_interval: seconds(limits.ping_interval),
            idle_timeout: seconds(limits.idle_timeout),
        }
    }
}

/// Receives the client's socket and the bytes the gateway read past the
/// handshake from `link`, and wraps them into a server-role WebSocket that
/// applies the permessage-deflate the gateway agreed, if any (`deflate`
/// from OPEN): the client's compressed messages are inflated before the
/// server sees them, and what the server sends is compressed.
///
/// Returns the client, its address as the socket reports it, and, when
/// `keep_link` (this backend offered the link for reuse in ACCEPT), the link,
/// whose next record starts another client; otherwise the link is closed.
pub(crate) async fn take_over(
    mut link: UnixStream,
    options: DirectOptions,
    deflate: Option<DeflateParams>,
    keep_link: bool,
) -> Result<(DirectClient, Option<SocketAddr>, Option<UnixStream>), LinkError> {
    let (client_fd, pending) = fd_pass::recv_handoff(&mut link, options.max_message_size).await?;
    // The link has done its job for this client; closing it tells the
    // gateway it may let go, keeping it lets the gateway send the next OPEN.
    let link = keep_link.then_some(link);
    let std_stream = std::net::TcpStream::from(client_fd);
    std_stream.set_nonblocking(true)?;
    let peer = std_stream.peer_addr().ok();
    let tcp = TcpStream::from_std(std_stream)?;
    let _ = tcp.set_nodelay(true);
    let config = client_config(options.max_message_size, DIRECT_READ_BUFFER);
    let ws = match deflate {
        Some(params) => {
            // The pending bytes are frames too: they go through the inflater.
            let stream = ReadAhead::inflating(tcp, &pending, params, options.max_message_size);
            WebSocketStream::from_raw_socket(stream, Role::Server, Some(config)).await
        }
        None => {
            WebSocketStream::from_partially_read(
                ReadAhead::new(tcp),
                pending.to_vec(),
                Role::Server,
                Some(config),
            )
            .await
        }
    };
    let deflater = deflate.map(MessageDeflater::new);
    Ok((DirectClient::new(ws, options, deflater), peer, link))
}

/// A WebSocket client on its own socket, behaving like a relayed session.
#[derive(Debug)]
pub(crate) struct DirectClient {
    ws: WebSocketStream<ReadAhead<TcpStream>>,
    pings: PingTicker,
    ping_due: bool,
    idle: IdleTimer,
    /// The one `Close` was yielded; the stream ends now.
    closed: bool,
    /// The payload of the server's last ping, until the client's pong to it.
    asked: Option<Bytes>,
    /// Compresses outgoing messages when permessage-deflate was agreed.
    deflater: Option<MessageDeflater>,
}

impl DirectClient {
    fn new(
        ws: WebSocketStream<ReadAhead<TcpStream>>,
        options: DirectOptions,
        deflater: Option<MessageDeflater>,
    ) -> DirectClient {
        DirectClient {
            ws,
            pings: PingTicker::new(options.ping_interval),
            ping_due: false,
            idle: IdleTimer::new(options.idle_timeout),
            closed: false,
            asked: None,
            deflater,
        }
    }

    /// Sends a ping when one is due and the socket can take it; never waits.
    fn poll_keepalive(&mut self, cx: &mut Context<'_>) {
        while self.pings.poll_tick(cx).is_ready() {
            self.ping_due = true;
        }
        if self.ping_due {
            match self.ws.poll_ready_unpin(cx) {
                Poll::Ready(Ok(())) => {
                    self.ping_due = false;
                    if self
                        .ws
                        .start_send_unpin(Message::Ping(Bytes::new()))
                        .is_ok()
                    {
                        let _ = self.ws.poll_flush_unpin(cx);
                    }
                }
                Poll::Ready(Err(_)) => self.ping_due = false,
                Poll::Pending => {}
            }
        }
    }

    /// Sends the client a close frame if the socket takes it now, and returns
    /// the same frame as the session's last message.
    fn close_with(
        &mut self,
        cx: &mut Context<'_>,
        code: CloseCode,
        reason: &'static str,
    ) -> Message {
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        };
        if let Poll::Ready(Ok(())) = self.ws.poll_ready_unpin(cx)
            && self
                .ws
                .start_send_unpin(Message::Close(Some(frame.clone())))
                .is_ok()
        {
            let _ = self.ws.poll_flush_unpin(cx);
        }
        self.closed = true;
        Message::Close(Some(frame))
    }
}

/// Yields `Text`, `Binary` and one final `Close`, never an error: a failing
/// client becomes the `Close` with the code the gateway would have sent.
impl Stream for DirectClient {
    type Item = Message;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.closed {
            return Poll::Ready(None);
        }
        this.poll_keepalive(cx);
        if this.idle.poll_expired(cx).is_ready() {
            let close = this.close_with(cx, CloseCode::Away, "idle timeout");
            return Poll::Ready(Some(close));
        }
        loop {
            let message = match this.ws.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(message))) => message,
                Poll::Ready(Some(Err(error))) => {
                    let close = match close_for_client_error(&error) {
                        Some((code, reason)) => this.close_with(cx, code, reason),
                        None => {
                            this.closed = true;
                            Message::Close(None)
                        }
                    };
                    return Poll::Ready(Some(close));
                }
                Poll::Ready(None) => {
                    // Gone without a close frame: as the gateway reports it in relay mode.
                    this.closed = true;
                    return Poll::Ready(Some(Message::Close(None)));
                }
            };
            this.idle.heard();
            match message {
                Message::Text(_) | Message::Binary(_) => return Poll::Ready(Some(message)),
                Message::Close(frame) => {
                    // tungstenite queued the reply; send it now.
                    let _ = this.ws.poll_flush_unpin(cx);
                    this.closed = true;
                    return Poll::Ready(Some(Message::Close(frame)));
                }
                // The answer to the server's own ping, as a relayed session yields it.
                Message::Pong(payload) if this.asked.as_ref() == Some(&payload) => {
                    this.asked = None;
                    return Poll::Ready(Some(Message::Pong(payload)));
                }
                // tungstenite answers pings itself; other pongs are keepalive.
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            }
        }
    }
}

impl Sink<Message> for DirectClient {
    type Error = tungstenite::Error;

    fn poll_ready(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), tungstenite::Error>> {
        self.ws.poll_ready_unpin(cx)
    }

    fn start_send(mut self: Pin<&mut Self>, message: Message) -> Result<(), tungstenite::Error> {
        let this = &mut *self;
        if let Message::Ping(payload) = &message {
            this.asked = Some(payload.clone());
        }
        let message = match &mut this.deflater {
            Some(deflater) => deflater.compress(message),
            None => message,
        };
        this.ws.start_send_unpin(message)
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), tungstenite::Error>> {
        self.ws.poll_flush_unpin(cx)
    }

    fn poll_close(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), tungstenite::Error>> {
        match self.ws.poll_close_unpin(cx) {
            // Closing a socket the client already closed is not a failure.
            Poll::Ready(Err(
                tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed,
            )) => Poll::Ready(Ok(())),
            other => other,
        }
    }
}
