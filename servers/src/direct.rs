//! Direct mode on the backend side: after ACCEPT the gateway hands over the
//! client's own TCP socket (a HANDOFF record with SCM_RIGHTS, `link::fd_pass`)
//! and this backend speaks WebSocket on it, the gateway out of the data path.
//!
//! [`DirectClient`] makes that socket behave like a relayed session: the same
//! messages come out (`Text`, `Binary`, then one `Close` with the code the
//! gateway would have sent in relay mode), and it keeps the client alive with
//! pings and closes it after the idle timeout, as the gateway does when it
//! relays. `session` wraps it; servers never see the difference.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::time::{Instant, Interval, MissedTickBehavior, Sleep};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};

use crate::link::{ClientLimits, LinkError, close_for_client_error, fd_pass};

/// WebSocket read buffer of a direct client, and the most one read takes.
/// 16 KiB keeps large messages as fast as tungstenite's 128 KiB default (see
/// BENCHMARKS.md) at a fraction of its memory per idle client.
const READ_BUFFER: usize = 16 * 1024;

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
            max_message_size: crate::link::DEFAULT_MAX_PAYLOAD,
            ping_interval: Some(Duration::from_secs(30)),
            idle_timeout: Some(Duration::from_secs(120)),
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
/// handshake from `link`, and wraps them into a server-role WebSocket.
///
/// Returns the client and its address as the socket reports it.
pub(crate) async fn take_over(
    mut link: UnixStream,
    options: DirectOptions,
) -> Result<(DirectClient, Option<SocketAddr>), LinkError> {
    let (client_fd, pending) = fd_pass::recv_handoff(&mut link, options.max_message_size).await?;
    // The link has done its job; closing it tells the gateway it may let go.
    drop(link);
    let std_stream = std::net::TcpStream::from(client_fd);
    std_stream.set_nonblocking(true)?;
    let peer = std_stream.peer_addr().ok();
    let tcp = TcpStream::from_std(std_stream)?;
    let _ = tcp.set_nodelay(true);
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(options.max_message_size.saturating_add(64 * 1024))
        .max_message_size(Some(options.max_message_size))
        .max_frame_size(Some(options.max_message_size));
    let ws =
        WebSocketStream::from_partially_read(tcp, pending.to_vec(), Role::Server, Some(config))
            .await;
    Ok((DirectClient::new(ws, options), peer))
}

/// A WebSocket client on its own socket, behaving like a relayed session.
#[derive(Debug)]
pub(crate) struct DirectClient {
    ws: WebSocketStream<TcpStream>,
    pings: Option<Interval>,
    ping_due: bool,
    idle: Option<IdleDeadline>,
    /// The one `Close` was yielded; the stream ends now.
    closed: bool,
}

#[derive(Debug)]
struct IdleDeadline {
    timeout: Duration,
    last_heard: Instant,
    sleep: Pin<Box<Sleep>>,
}

impl DirectClient {
    fn new(ws: WebSocketStream<TcpStream>, options: DirectOptions) -> DirectClient {
        let now = Instant::now();
        DirectClient {
            ws,
            pings: options.ping_interval.map(|period| {
                let mut interval = tokio::time::interval_at(now + period, period);
                interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
                interval
            }),
            ping_due: false,
            idle: options.idle_timeout.map(|timeout| IdleDeadline {
                timeout,
                last_heard: now,
                sleep: Box::pin(tokio::time::sleep_until(now + timeout)),
            }),
            closed: false,
        }
    }

    /// Sends a ping when one is due and the socket can take it; never waits.
    fn poll_keepalive(&mut self, cx: &mut Context<'_>) {
        if let Some(pings) = &mut self.pings {
            while pings.poll_tick(cx).is_ready() {
                self.ping_due = true;
            }
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

    /// True once the client has been silent for the idle timeout.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(idle) = &mut self.idle else {
            return false;
        };
        while idle.sleep.as_mut().poll(cx).is_ready() {
            let deadline = idle.last_heard + idle.timeout;
            if Instant::now() >= deadline {
                return true;
            }
            idle.sleep.as_mut().reset(deadline);
        }
        false
    }

    fn heard(&mut self) {
        if let Some(idle) = &mut self.idle {
            idle.last_heard = Instant::now();
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

impl Stream for DirectClient {
    type Item = Result<Message, LinkError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.closed {
            return Poll::Ready(None);
        }
        this.poll_keepalive(cx);
        if this.poll_idle(cx) {
            let close = this.close_with(cx, CloseCode::Away, "idle timeout");
            return Poll::Ready(Some(Ok(close)));
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
                    return Poll::Ready(Some(Ok(close)));
                }
                Poll::Ready(None) => {
                    // Gone without a close frame: as the gateway reports it in relay mode.
                    this.closed = true;
                    return Poll::Ready(Some(Ok(Message::Close(None))));
                }
            };
            this.heard();
            match message {
                Message::Text(_) | Message::Binary(_) => return Poll::Ready(Some(Ok(message))),
                Message::Close(frame) => {
                    // tungstenite queued the reply; send it now.
                    let _ = this.ws.poll_flush_unpin(cx);
                    this.closed = true;
                    return Poll::Ready(Some(Ok(Message::Close(frame))));
                }
                // tungstenite answers pings itself.
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            }
        }
    }
}

fn ws_error(error: tungstenite::Error) -> LinkError {
    match error {
        tungstenite::Error::Io(error) => LinkError::Io(error),
        other => LinkError::Io(io::Error::other(other)),
    }
}

impl Sink<Message> for DirectClient {
    type Error = LinkError;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), LinkError>> {
        self.ws.poll_ready_unpin(cx).map_err(ws_error)
    }

    fn start_send(mut self: Pin<&mut Self>, message: Message) -> Result<(), LinkError> {
        self.ws.start_send_unpin(message).map_err(ws_error)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), LinkError>> {
        self.ws.poll_flush_unpin(cx).map_err(ws_error)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), LinkError>> {
        match self.ws.poll_close_unpin(cx) {
            // Closing a socket the client already closed is not a failure.
            Poll::Ready(Err(
                tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed,
            )) => Poll::Ready(Ok(())),
            other => other.map_err(ws_error),
        }
    }
}
