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
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use backend::Session;
use backend::{CloseCode, Message};
pub use dispatch::Dispatcher;
pub use lookup::{DEFAULT_PLUGIN_DIR, SearchPath};
pub use plugins::{PluginSet, PluginSpec, SetupError, pair_configs};

/// Serves one client: opens its plugin sessions, answers each text (or UTF-8
/// binary) message in order, and closes the plugin sessions when the client
/// is gone. A plugin that cannot open a session closes the client with 1011.
pub async fn run_session(
    mut session: Session,
    shutdown: CancellationToken,
    plugin_set: Arc<PluginSet>,
) {
    let dispatcher = match dispatch::open_dispatcher(plugin_set).await {
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
    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => {
                if let Err(error) = session.close(CloseCode::Away, "server shutting down").await {
                    debug!(%error, "cannot send close");
                }
                break;
            }
            message = session.next() => message,
        };
        let reply = match message {
            Some(Ok(Message::Text(text))) => dispatcher.handle_text(text.as_str()).await,
            Some(Ok(Message::Binary(data))) => match std::str::from_utf8(&data) {
                Ok(text) => dispatcher.handle_text(text).await,
                Err(_) => Some(Dispatcher::parse_error()),
            },
            Some(Ok(_)) | None => break,
            Some(Err(error)) => {
                warn!(%error, "link failed");
                break;
            }
        };
        if let Some(reply) = reply {
            debug!(len = reply.len(), "replying");
            if let Err(error) = session.send(Message::text(reply)).await {
                warn!(%error, "cannot reply");
                break;
            }
        }
    }
    // Closing plugin sessions may block (a database connection closes).
    if let Err(error) = tokio::task::spawn_blocking(move || drop(dispatcher)).await {
        warn!(%error, "closing the plugin sessions panicked");
    }
}
