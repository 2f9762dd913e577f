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
mod wakeups;

use std::io;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use link::close_for_client_error;
use link::deflate::MessageDeflater;
use link::websocket::{RELAY_READ_BUFFER, ReadAhead, client_config};
use link::{DeflateParams, LinkError};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;

use crate::client_stream::ClientStream;
use crate::config::Config;
use crate::metrics::ClientMetrics;
use raw::RawSplitError;

/// A client's WebSocket on its connection (TCP or TLS), read in large chunks.
pub(crate) type ClientWs<S> = WebSocketStream<ReadAhead<S>>;
/// The client's read half.
pub(crate) type ClientReader<S> = SplitStream<ClientWs<S>>;
/// The client's write half.
pub(crate) type ClientWriter<S> = SplitSink<ClientWs<S>, Message>;

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

    /// The WebSocket configuration of every relayed client.
    fn websocket_config(&self) -> WebSocketConfig {
        client_config(self.max_message_size, RELAY_READ_BUFFER)
    }
}

/// Wraps the upgraded connection (and the bytes hyper read past the
/// handshake) into a server-role WebSocket, which inflates the client's
/// compressed messages if permessage-deflate was agreed.
pub(crate) async fn client_websocket<S: ClientStream>(
    stream: S,
    pending: Bytes,
    settings: &RelaySettings,
    deflate: Option<DeflateParams>,
) -> ClientWs<S> {
    let config = Some(settings.websocket_config());
    if let Some(params) = deflate {
        // The pending bytes are frames too: they go through the inflater.
        let stream = ReadAhead::inflating(stream, &pending, params, settings.max_message_size);
        return WebSocketStream::from_raw_socket(stream, Role::Server, config).await;
    }
    let stream = ReadAhead::new(stream);
    if pending.is_empty() {
        WebSocketStream::from_raw_socket(stream, Role::Server, config).await
    } else {
        WebSocketStream::from_partially_read(stream, pending.to_vec(), Role::Server, config).await
    }
}

/// `message` as it goes to the client: compressed if permessage-deflate was
/// agreed (and it is worth it), else unchanged.
fn compressed(deflater: &mut Option<MessageDeflater>, message: Message) -> Message {
    match deflater {
        Some(deflater) => deflater.compress(message),
        None => message,
    }
}

/// How a client left without a close handshake.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientGone {
    /// The connection ended without a close frame.
    #[error("connection closed without a close frame")]
    Vanished,
    /// Reading the client failed in a way that needs no close code (a reset).
    #[error("reading the client")]
    Read(#[source] io::Error),
    /// Writing a message or a ping to the client failed.
    #[error("writing to the client")]
    Write(#[source] io::Error),
}

/// How the link to the backend failed during a relay.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LinkFailure {
    /// Writing a record (or raw bytes) to the backend failed.
    #[error("writing the link")]
    Write(#[source] LinkError),
    /// Reading or decoding a record failed.
    #[error("reading the link")]
    Read(#[source] LinkError),
    /// The backend sent a record that has no place after ACCEPT.
    #[error("unexpected {0} record")]
    Unexpected(&'static str),
    /// The link ended without a CLOSE record.
    #[error("the link closed without a CLOSE")]
    Eof,
    /// The carrier link of a carried client ended before its CLOSE.
    #[error("the carrier link ended without the client's CLOSE")]
    CarrierEnded,
    /// Reading a raw backend failed.
    #[error("reading the raw link")]
    RawRead(#[source] io::Error),
    /// Writing to a raw backend failed.
    #[error("writing the raw link")]
    RawWrite(#[source] io::Error),
    /// A raw backend's message broke a limit.
    #[error(transparent)]
    RawMessage(#[from] RawSplitError),
}

/// How a relay ended, which decides the close handshake that follows.
#[derive(Debug)]
pub(crate) enum Ending {
    /// The client sent a close frame (the reply is queued).
    ClientClosed(Option<CloseFrame>),
    /// The client's connection ended or failed without a close frame.
    ClientGone(ClientGone),
    /// The client broke the protocol: it gets `code`, and so does the backend.
    ClientFailed {
        /// The close code for the client.
        code: CloseCode,
        /// The close reason for the client.
        reason: &'static str,
        /// The error, for the log.
        error: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Nothing came from the client for the idle timeout.
    Idle,
    /// The backend closed the client with this frame.
    BackendClosed(Option<CloseFrame>),
    /// The link ended or broke without a close: the client gets `1011`.
    BackendGone(LinkFailure),
    /// The gateway is shutting down: the client gets `1001`.
    Shutdown,
    /// A carried client's inbox stayed full while its socket took nothing
    /// for the backend's stall time: the client gets `1008`.
    TooSlow,
}

/// The close reason of a carried client that does not read (`1008`), as the chat's.
pub(crate) const TOO_SLOW_REASON: &str = "too slow: message queue full";

impl Ending {
    /// The close frame the gateway sends the client, when it starts the close.
    pub(super) fn close_for_client(&self) -> Option<Option<CloseFrame>> {
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
            Ending::TooSlow => frame(CloseCode::Policy, TOO_SLOW_REASON),
        }
    }

    /// Logs how the client's relay ended, once, with the cause as a field.
    pub(super) fn log(&self) {
        let code = |frame: &Option<CloseFrame>| frame.as_ref().map(|f| u16::from(f.code));
        match self {
            Ending::ClientClosed(frame) => tracing::debug!(code = ?code(frame), "client closed"),
            Ending::ClientGone(gone) => {
                tracing::debug!(error = gone as &dyn std::error::Error, "client gone")
            }
            Ending::ClientFailed { code, error, .. } => tracing::info!(
                code = u16::from(*code),
                error = &**error as &dyn std::error::Error,
                "client failed"
            ),
            Ending::Idle => tracing::info!("client idle, closing"),
            Ending::BackendClosed(frame) => tracing::debug!(code = ?code(frame), "backend closed"),
            Ending::BackendGone(failure) => tracing::warn!(
                error = failure as &dyn std::error::Error,
                "backend link failed"
            ),
            Ending::Shutdown => tracing::debug!("closing for shutdown"),
            Ending::TooSlow => {
                tracing::info!("message queue full and the client reads nothing; closing with 1008")
            }
        }
    }
}

/// Runs both directions of a relay until the first of them, or shutdown,
/// ends it; logs, counts and returns how. The other direction is dropped mid-step,
/// which is safe: reads lose nothing, and a half-sent message stays buffered
/// for the close handshake to flush.
async fn first_ending(
    upstream: impl Future<Output = Ending>,
    downstream: impl Future<Output = Ending>,
    shutdown: &CancellationToken,
    metrics: &ClientMetrics,
) -> Ending {
    let ending = tokio::select! {
        ending = upstream => ending,
        ending = downstream => ending,
        () = shutdown.cancelled() => Ending::Shutdown,
    };
    ending.log();
    metrics.ended(&ending);
    ending
}

/// The ending for an error reading the client: the close code is the one a
/// direct-mode backend would send (`link::close_for_client_error`).
fn client_error(error: tungstenite::Error) -> Ending {
    match close_for_client_error(&error) {
        Some((code, reason)) => Ending::ClientFailed {
            code,
            reason,
            error: Box::new(error),
        },
        None => Ending::ClientGone(ClientGone::Read(io::Error::other(error))),
    }
}

/// Finishes the client's side of the close handshake for `ending`, within
/// `timeout`, then shuts the transport down (a TLS client gets its
/// `close_notify`, a plain one the FIN it would get anyway), within `timeout`.
///
/// If the gateway starts the close, it sends its frame and then reads (and
/// drops) whatever the client still sends until its close reply or the end of
/// the connection. If the client started it, the queued reply is flushed.
async fn close_client<S: ClientStream>(
    ending: &Ending,
    mut writer: ClientWriter<S>,
    mut reader: ClientReader<S>,
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
    if let Ok(websocket) = writer.reunite(reader) {
        let mut stream = websocket.into_inner();
        let _ = tokio::time::timeout(timeout, stream.shutdown()).await;
    }
}
