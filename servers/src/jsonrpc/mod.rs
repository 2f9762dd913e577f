//! The library half of `websocket_jsonrpc`: JSON-RPC 2.0 over each WebSocket
//! message, answered by plugins loaded with `-L`.
//!
//! - [`lookup`]: which file `-L authrpc.so` means (current directory, the
//!   executable's directory, the plugin directory; `lib` prefix, `.so` suffix).
//! - [`plugins`]: pairing `-L` with `-C`, loading, the method-clash check.
//! - [`dispatch`]: framing around a per-session jsonrpsee `RpcModule` whose
//!   methods call the plugins on the blocking pool.
//!
//! This module ([`run_session`]) is the handler a server passes to
//! [`backend::launch`]. The plugin ABI itself is the `rpc_abi` crate.

pub mod dispatch;
pub mod lookup;
pub mod plugins;

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use rpc_abi::ClientInfo;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use backend::Session;
use backend::{CloseCode, Message};
pub use dispatch::Dispatcher;
pub use lookup::{DEFAULT_PLUGIN_DIR, SearchPath};
pub use plugins::{PluginSet, PluginSpec, SetupError, pair_configs};

/// Serves one client: opens its plugin sessions (telling them the client's
/// address, path and query from the OPEN metadata), answers each text (or UTF-8
/// binary) message in order, and closes the plugin sessions when the client
/// is gone. A plugin that cannot open a session closes the client with 1011.
pub async fn run_session(
    mut session: Session,
    shutdown: CancellationToken,
    plugin_set: Arc<PluginSet>,
) {
    let meta = session.meta();
    let client = ClientInfo {
        peer: meta.peer.clone(),
        path: meta.path.clone(),
        query: meta.query.clone(),
    };
    let dispatcher = match dispatch::open_dispatcher(plugin_set, client).await {
        Ok(dispatcher) => dispatcher,
        Err(error) => {
            warn!(%error, "cannot open plugin sessions");
            if let Err(error) = session
                .close(CloseCode::Error, "plugin session failed")
                .await
            {
                debug!(%error, "cannot send close");
            }
            return;
        }
    };
    // A message that arrived while a call was running, answered next. Only one
    // is held: the session is not read further until it has been answered, so
    // a client that pipelined a message and then left has the message being
    // answered run to its end (at most MAX_BATCH calls); the held one is not
    // started, because answering it watches the client again.
    let mut pending: Option<Message> = None;
    loop {
        let message = match pending.take() {
            Some(message) => Some(Ok(message)),
            None => tokio::select! {
                _ = shutdown.cancelled() => {
                    close_for_shutdown(&mut session).await;
                    break;
                }
                message = session.next() => message,
            },
        };
        let text = match message {
            Some(Ok(Message::Text(text))) => Ok(text),
            Some(Ok(Message::Binary(data))) => match Utf8Bytes::try_from(data) {
                Ok(text) => Ok(text),
                Err(_) => Err(Dispatcher::parse_error()),
            },
            Some(Ok(_)) | None => break,
            Some(Err(error)) => {
                warn!(%error, "link failed");
                break;
            }
        };
        let reply = match text {
            Ok(text) => {
                match answer(&dispatcher, &text, &mut session, &mut pending, &shutdown).await {
                    Answer::Reply(reply) => reply,
                    Answer::ClientGone => {
                        info!("client left during a call; its remaining requests are cancelled");
                        break;
                    }
                    Answer::Shutdown => {
                        close_for_shutdown(&mut session).await;
                        break;
                    }
                }
            }
            Err(parse_error) => Some(parse_error),
        };
        if let Some(reply) = reply {
            debug!(len = reply.len(), "replying");
            if let Err(error) = session.send(Message::text(reply)).await {
                warn!(%error, "cannot reply");
                break;
            }
        }
    }
    // Closing plugin sessions may block (a database connection closes). A call
    // still running keeps its session open until it returns.
    if let Err(error) = tokio::task::spawn_blocking(move || drop(dispatcher)).await {
        warn!(%error, "closing the plugin sessions panicked");
    }
}

/// How answering one message ended.
enum Answer {
    /// Every request ran; the reply to send, if any.
    Reply(Option<String>),
    /// The client closed or vanished before the answer was complete.
    ClientGone,
    /// The server is shutting down.
    Shutdown,
}

/// Answers `text` while watching the client: a close, an end of stream or a
/// broken link drops the answer, so the requests of a batch that have not
/// started yet never run (the one running on a blocking thread finishes). A
/// message the client sends meanwhile is kept in `pending`.
async fn answer(
    dispatcher: &Dispatcher,
    text: &str,
    session: &mut Session,
    pending: &mut Option<Message>,
    shutdown: &CancellationToken,
) -> Answer {
    let handling = dispatcher.handle_text(text);
    tokio::pin!(handling);
    loop {
        // The client is looked at before the answer is polled, so a close that
        // is already there stops even the first request of the message.
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Answer::Shutdown,
            next = session.next(), if pending.is_none() => match next {
                Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => {
                    *pending = Some(message);
                }
                Some(Ok(_)) | None => return Answer::ClientGone,
                Some(Err(error)) => {
                    warn!(%error, "link failed");
                    return Answer::ClientGone;
                }
            },
            reply = &mut handling => return Answer::Reply(reply),
        }
    }
}

async fn close_for_shutdown(session: &mut Session) {
    if let Err(error) = session.close(CloseCode::Away, "server shutting down").await {
        debug!(%error, "cannot send close");
    }
}
