//! Messages between one WebSocket client and its backend until either side
//! closes: [`framed`] for the link protocol, [`raw`] for ouistiti's raw mode.
//!
//! Both directions run concurrently in the client's one task, each with
//! bounded buffers: a client that does not read stops the gateway reading its
//! backend link, and a backend that does not read stops the gateway reading
//! that client, and no one else. This module holds what both modes share: the
//! WebSocket settings, keepalive and idle tracking, how the relay ends, and the
//! close handshake that follows.

pub(crate) mod framed;
pub(crate) mod raw;

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use servers::link::close_for_client_error;
use tokio::net::TcpStream;
use tokio::time::{Instant, Interval, MissedTickBehavior, Sleep};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// WebSocket read buffer per client, and the most one read takes from the
/// socket. Small because most clients idle: with 1 KiB a relayed idle client
/// costs the gateway about 7 KiB (4 KiB gives 64 KiB messages fewer reads, at
/// 3 KiB more per client). tungstenite grows it to hold larger frames.
const WS_READ_BUFFER: usize = 1024;

/// Bytes of outgoing frames tungstenite may hold before a send waits for the
/// socket: the backpressure bound towards a slow client, beyond one message.
const WS_WRITE_BUFFER_LIMIT: usize = 256 * 1024;

/// Messages forwarded in one batch before the gateway flushes.
const MAX_BATCH: usize = 64;

/// A client's WebSocket on its TCP connection.
pub(crate) type ClientWs = WebSocketStream<TcpStream>;
/// The client's read half.
pub(crate) type ClientReader = SplitStream<ClientWs>;
/// The client's write half.
pub(crate) type ClientWriter = SplitSink<ClientWs, Message>;

/// The per-client settings a relay runs with.
#[derive(Debug, Clone)]
pub(crate) struct RelaySettings {
    /// Largest message from the client.
    pub max_message_size: usize,
    /// Time between pings to the client.
    pub ping_interval: Option<Duration>,
    /// Silence after which the client is closed.
    pub idle_timeout: Option<Duration>,
    /// Bound on each close handshake.
    pub close_timeout: Duration,
    /// Raw mode: end each client message with NUL.
    pub raw_nul: bool,
}

impl RelaySettings {
    pub(crate) fn from_config(config: &Config) -> RelaySettings {
        RelaySettings {
            max_message_size: config.max_message_size,
            ping_interval: config.ping_interval,
            idle_timeout: config.idle_timeout,
            close_timeout: config.shutdown_timeout,
            raw_nul: config.raw_nul,
        }
    }

    /// The WebSocket configuration of every client.
    fn websocket_config(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .read_buffer_size(WS_READ_BUFFER)
            .write_buffer_size(0)
            .max_write_buffer_size(WS_WRITE_BUFFER_LIMIT.max(self.max_message_size + 64))
            .max_message_size(Some(self.max_message_size))
            .max_frame_size(Some(self.max_message_size))
    }
}

/// Wraps the upgraded TCP connection (and the bytes hyper read past the
/// handshake) into a server-role WebSocket.
pub(crate) async fn client_websocket(
    tcp: TcpStream,
    pending: Bytes,
    settings: &RelaySettings,
) -> ClientWs {
    let config = Some(settings.websocket_config());
    if pending.is_empty() {
        WebSocketStream::from_raw_socket(tcp, Role::Server, config).await
    } else {
        WebSocketStream::from_partially_read(tcp, pending.to_vec(), Role::Server, config).await
    }
}

/// How a relay ended, which decides the close handshake that follows.
#[derive(Debug)]
pub(crate) enum Ending {
    /// The client sent a close frame (tungstenite has queued the reply).
    ClientClosed(Option<CloseFrame>),
    /// The client's connection ended or failed without a close frame.
    ClientGone(String),
    /// The client broke the protocol: it gets `code`, and so does the backend.
    ClientFailed {
        /// The close code for the client.
        code: CloseCode,
        /// The close reason for the client.
        reason: &'static str,
        /// The error, for the log.
        detail: String,
    },
    /// Nothing came from the client for the idle timeout.
    Idle,
    /// The backend closed the client with this frame.
    BackendClosed(Option<CloseFrame>),
    /// The link ended or broke without a close: the client gets `1011`.
    BackendGone(String),
    /// The gateway is shutting down: the client gets `1001`.
    Shutdown,
}

impl Ending {
    /// The close frame the gateway sends the client, when it starts the close.
    fn close_for_client(&self) -> Option<Option<CloseFrame>> {
        let frame = |code, reason: &'static str| {
            Some(Some(CloseFrame {
                code,
                reason: Utf8Bytes::from_static(reason),
            }))
        };
        match self {
            Ending::ClientClosed(_) | Ending::ClientGone(_) => None,
            Ending::ClientFailed { code, reason, .. } => frame(*code, reason),
            Ending::Idle => frame(CloseCode::Away, "idle timeout"),
            Ending::BackendClosed(frame) => Some(frame.clone()),
            Ending::BackendGone(_) => frame(CloseCode::Error, "backend failed"),
            Ending::Shutdown => frame(CloseCode::Away, "gateway shutting down"),
        }
    }

    /// Logs how the client's relay ended, once.
    fn log(&self) {
        match self {
            Ending::ClientClosed(frame) => {
                tracing::debug!(code = ?frame.as_ref().map(|f| u16::from(f.code)), "client closed")
            }
            Ending::ClientGone(detail) => tracing::debug!("client gone: {detail}"),
            Ending::ClientFailed { code, detail, .. } => {
                tracing::info!(code = u16::from(*code), "client failed: {detail}")
            }
            Ending::Idle => tracing::info!("client idle, closing"),
            Ending::BackendClosed(frame) => {
                tracing::debug!(code = ?frame.as_ref().map(|f| u16::from(f.code)), "backend closed")
            }
            Ending::BackendGone(detail) => tracing::warn!("backend link failed: {detail}"),
            Ending::Shutdown => tracing::debug!("closing for shutdown"),
        }
    }
}

/// Runs both directions of a relay until the first of them, or shutdown,
/// ends it; logs and returns how. The other direction is dropped mid-step,
/// which is safe: reads lose nothing, and a half-sent message stays buffered
/// for the close handshake to flush.
async fn first_ending(
    upstream: impl Future<Output = Ending>,
    downstream: impl Future<Output = Ending>,
    shutdown: &CancellationToken,
) -> Ending {
    let ending = tokio::select! {
        ending = upstream => ending,
        ending = downstream => ending,
        () = shutdown.cancelled() => Ending::Shutdown,
    };
    ending.log();
    ending
}

/// The ending for an error reading the client: the close code is the one a
/// direct-mode backend would send (`servers::link::close_for_client_error`).
fn client_error(error: tungstenite::Error) -> Ending {
    match close_for_client_error(&error) {
        Some((code, reason)) => Ending::ClientFailed {
            code,
            reason,
            detail: error.to_string(),
        },
        None => Ending::ClientGone(error.to_string()),
    }
}

/// When the client was last heard from, and the timer that checks it.
///
/// One timer per client, re-armed only when it fires, so a busy client costs
/// a clock read per message rather than a timer per message.
struct IdleTimer {
    idle_timeout: Option<Duration>,
    last_heard: Instant,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl IdleTimer {
    fn new(idle_timeout: Option<Duration>) -> IdleTimer {
        let now = Instant::now();
        IdleTimer {
            idle_timeout,
            last_heard: now,
            sleep: idle_timeout.map(|timeout| Box::pin(tokio::time::sleep_until(now + timeout))),
        }
    }

    fn heard(&mut self) {
        if self.idle_timeout.is_some() {
            self.last_heard = Instant::now();
        }
    }

    /// Resolves once the client has been silent for the idle timeout; never without one.
    async fn expired(&mut self) {
        let (Some(timeout), Some(sleep)) = (self.idle_timeout, self.sleep.as_mut()) else {
            return std::future::pending().await;
        };
        loop {
            sleep.as_mut().await;
            let deadline = self.last_heard + timeout;
            if Instant::now() >= deadline {
                return;
            }
            sleep.as_mut().reset(deadline);
        }
    }
}

/// The keepalive ping ticker; never ticks without a ping interval.
struct PingTicker(Option<Interval>);

impl PingTicker {
    fn new(ping_interval: Option<Duration>) -> PingTicker {
        PingTicker(ping_interval.map(|period| {
            let mut interval = tokio::time::interval_at(Instant::now() + period, period);
            interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
            interval
        }))
    }

    async fn tick(&mut self) {
        match &mut self.0 {
            Some(interval) => {
                interval.tick().await;
            }
            None => std::future::pending().await,
        }
    }
}

/// Finishes the client's side of the close handshake for `ending`, within `timeout`.
///
/// If the gateway starts the close, it sends its frame and then reads (and
/// drops) whatever the client still sends until its close reply or the end of
/// the connection. If the client started it, the queued reply is flushed.
async fn close_client(
    ending: &Ending,
    writer: &mut ClientWriter,
    reader: &mut ClientReader,
    timeout: Duration,
) {
    let handshake = async {
        match ending.close_for_client() {
            None => {
                // The reply to the client's close (if any) is queued; flush it.
                let _ = writer.close().await;
            }
            Some(frame) => {
                if writer.send(Message::Close(frame)).await.is_err() {
                    return;
                }
                while let Some(Ok(message)) = reader.next().await {
                    if message.is_close() {
                        break;
                    }
                }
            }
        }
    };
    if tokio::time::timeout(timeout, handshake).await.is_err() {
        tracing::debug!("client did not finish the close handshake in time");
    }
}
