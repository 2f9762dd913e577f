//! The library half of `websocket_broker`: one routing core and a thin
//! module per protocol ("dialect") that a known broker's clients speak.
//!
//! - [`core`]: clients, their names (tokens, ids), groups (channels), the
//!   operator's registered names and pending answers, and delivery into
//!   bounded per-client outboxes ([`Core`], [`LocalCore`]).
//! - [`tokens`] (websockets_pro), [`channels`] (wsify), [`wsmsgbroker`] and
//!   [`achex`]: each parses a client's messages and formats the broker's,
//!   and keeps no state of its own.
//! - [`http`]: the dialects' HTTP APIs over a small request type, with the
//!   bearer-token check; [`authorizer`]: channels' per-message webhook;
//!   [`accounts`]: Achex's ids and password hashes in SQLite;
//!   [`token_list`]: the tokens dialect's preloaded list (file or URL).
//! - [`run_session`] (here): one client's task, reading its messages into
//!   its dialect and writing its outbox to its socket.
//!
//! The protocols, and where they differ from the originals, are `docs/broker.md`.

pub mod accounts;
pub mod achex;
pub mod authorizer;
pub mod channels;
pub mod core;
pub mod http;
pub mod shared;
pub mod token_list;
pub mod tokens;
pub mod wsmsgbroker;

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use backend::{OpenMeta, Session, SessionError};
use futures_util::{Stream, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use self::accounts::Accounts;
use self::authorizer::Authorizer;
pub use self::core::{
    Answer, Claim, ClientId, ClientInfo, Core, CoreError, CoreLimits, LocalCore, Target, deliver,
};
use self::http::ApiToken;

/// The most messages written to a client before its socket is flushed.
const WRITE_BATCH: usize = 64;

/// The default largest message a client may send (64 KiB).
pub const DEFAULT_MAX_MESSAGE: usize = 64 * 1024;

/// The protocol one broker instance speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Dialect {
    /// websockets_pro: tokens, `receivers|text`, `RegisterToken:`, `Echo:`.
    Tokens,
    /// wsify: JSON join/leave/broadcast on channels, an authorizer webhook.
    Channels,
    /// wsmsgbroker: JSON register/send/answer with acks.
    Wsmsgbroker,
    /// Achex: setID/passwd, to/toS, FROM/sID, broadcast groups, latency.
    Achex,
}

/// What one broker instance does, beside its core.
#[derive(Debug, Clone)]
pub struct BrokerOptions {
    /// The protocol.
    pub dialect: Dialect,
    /// Largest message from a client, in bytes; a larger one closes it with 1009.
    pub max_message: usize,
    /// Tokens: a client without a token may connect (as `unregistered`) and
    /// register any token; without it a client must bring a registered token.
    pub allow_unregistered: bool,
    /// wsmsgbroker: registering a live client's id takes it over instead of failing.
    pub takeover: bool,
    /// wsmsgbroker: how long an unanswered ack is remembered.
    pub ack_ttl: Duration,
}

impl Default for BrokerOptions {
    fn default() -> BrokerOptions {
        BrokerOptions {
            dialect: Dialect::Tokens,
            max_message: DEFAULT_MAX_MESSAGE,
            allow_unregistered: true,
            takeover: false,
            ack_ttl: Duration::from_secs(60),
        }
    }
}

/// One broker: its core, its options and the services its dialect uses.
#[derive(Debug)]
pub struct Broker {
    /// The routing state.
    pub core: Arc<dyn Core>,
    /// The dialect and its options.
    pub options: BrokerOptions,
    /// Channels: the per-message webhook, if any.
    pub authorizer: Option<Authorizer>,
    /// Achex: ids and passwords.
    pub accounts: Option<Accounts>,
    /// The bearer token of the HTTP API; without one the API answers 403.
    pub api_token: Option<ApiToken>,
    /// With `--redis`: the other instances (`shared`); set once at start-up.
    pub backplane: OnceLock<Arc<crate::backplane::Backplane>>,
}

/// How a dialect ends a client's session: a close code and reason, after
/// whatever was queued for the client (its error reply, say).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closing {
    /// The close code.
    pub code: CloseCode,
    /// The close reason (cut to 123 bytes on the wire).
    pub reason: String,
}

impl Closing {
    /// A close with `code` and `reason`.
    pub fn new(code: CloseCode, reason: impl Into<String>) -> Closing {
        Closing {
            code,
            reason: reason.into(),
        }
    }
}

/// What a dialect's handler returns: go on, or close the client.
pub type Flow = Result<(), Closing>;

/// One client as its dialect sees it.
#[derive(Debug)]
pub struct ClientContext<'a> {
    /// The broker.
    pub broker: &'a Broker,
    /// The client's number.
    pub client: ClientId,
    /// The client's OPEN metadata (query, peer, headers).
    pub meta: &'a OpenMeta,
}

impl ClientContext<'_> {
    /// The routing core.
    pub fn core(&self) -> &dyn Core {
        self.broker.core.as_ref()
    }

    /// Queues `message` for this client itself.
    pub async fn reply(&self, message: Message) {
        deliver(self.core(), &[Target::Client(self.client)], &message).await;
    }

    /// Queues the text `text` for this client itself.
    pub async fn reply_text(&self, text: impl Into<String>) {
        self.reply(Message::text(text.into())).await;
    }

    /// Delivers `message` to the `targets`, on every instance; how many clients got it.
    pub async fn send(&self, targets: &[Target<'_>], message: &Message) -> usize {
        self.broker.deliver(targets, message).await
    }
}

/// Why a client's session ended.
#[derive(Debug)]
enum Ending {
    Shutdown,
    Evicted,
    Closed(Closing),
    ClientGone,
    ReadFailed(SessionError),
    WriteFailed(SessionError),
}

/// Serves one client of `broker` until it leaves, its dialect closes it, the
/// core evicts it, or `shutdown` is cancelled.
///
/// One task does both directions, as the chat's does (`chat::run_session`):
/// the client's messages are handled in order while its outbox is written
/// out. A dialect's close and a shutdown first send what was queued (its
/// error reply, say); an evicted client gets a close with 1008 at once.
pub async fn run_session(session: Session, shutdown: CancellationToken, broker: Arc<Broker>) {
    let meta = session.meta().clone();
    let connected = broker.core.connect(&meta.peer);
    debug!(client = connected.id, dialect = ?broker.options.dialect, "connected");
    broker.shared_connect(connected.id).await;
    let evictions = session.metrics().slow_client_evictions();
    let (mut sink, mut stream) = session.split();
    let context = ClientContext {
        broker: &broker,
        client: connected.id,
        meta: &meta,
    };
    // Taken from the outbox, not yet written: still the client's at a close.
    let mut batch = VecDeque::with_capacity(WRITE_BATCH);
    let ending = tokio::select! {
        biased;
        _ = shutdown.cancelled() => Ending::Shutdown,
        _ = connected.evicted.cancelled() => Ending::Evicted,
        ending = read_client(&mut stream, &context) => ending,
        written = connected.outbox.drain_into(&mut sink, &mut batch, WRITE_BATCH) => match written {
            // The core closes an outbox only when it drops the client.
            Ok(()) => Ending::Evicted,
            Err(error) => Ending::WriteFailed(error),
        },
    };
    broker.core.disconnect(connected.id);
    broker.shared_disconnect(connected.id).await;
    let (code, reason, pending) = match ending {
        Ending::Shutdown => (CloseCode::Away, "server shutting down".to_owned(), true),
        Ending::Closed(closing) => (closing.code, closing.reason, true),
        Ending::Evicted => {
            evictions.inc();
            let (n_messages, n_bytes) = connected.outbox.n_waiting();
            warn!(
                n_messages,
                n_bytes, "message queue full and not reading; closing with 1008"
            );
            (
                CloseCode::Policy,
                crate::chat::TOO_SLOW_REASON.to_owned(),
                false,
            )
        }
        Ending::ClientGone => return,
        Ending::ReadFailed(error) => return warn!(%error, "cannot read from client"),
        Ending::WriteFailed(error) => return warn!(%error, "cannot write to client"),
    };
    let mut queued: Vec<Message> = Vec::new();
    if pending {
        queued.extend(batch.drain(..));
        queued.extend(connected.outbox.take_all());
    }
    crate::chat::send_then_close(&mut sink, queued, code, &reason, &shutdown).await;
}

/// Runs the dialect's connect step, then hands it every message of the client, in order.
async fn read_client<S>(stream: &mut S, context: &ClientContext<'_>) -> Ending
where
    S: Stream<Item = Result<Message, SessionError>> + Unpin,
{
    if let Err(closing) = on_connect(context).await {
        return Ending::Closed(closing);
    }
    loop {
        let message = match stream.next().await {
            Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => message,
            Some(Ok(Message::Close(_))) | None => return Ending::ClientGone,
            // The answer to a ping this broker sent (Achex's latency).
            Some(Ok(Message::Pong(payload))) => {
                if context.broker.options.dialect == Dialect::Achex {
                    achex::on_pong(context, &payload).await;
                }
                continue;
            }
            Some(Ok(_)) => continue,
            Some(Err(error)) => return Ending::ReadFailed(error),
        };
        debug!(len = message.len(), "from client");
        if message.len() > context.broker.options.max_message {
            let reason = format!(
                "message of {} bytes; the limit is {}",
                message.len(),
                context.broker.options.max_message
            );
            return Ending::Closed(Closing::new(CloseCode::Size, reason));
        }
        let flow = match &message {
            Message::Text(text) => on_text(context, text.as_str()).await,
            _ => on_binary(context).await,
        };
        if let Err(closing) = flow {
            return Ending::Closed(closing);
        }
    }
}

async fn on_connect(context: &ClientContext<'_>) -> Flow {
    match context.broker.options.dialect {
        Dialect::Tokens => tokens::on_connect(context).await,
        Dialect::Channels | Dialect::Wsmsgbroker | Dialect::Achex => Ok(()),
    }
}

async fn on_text(context: &ClientContext<'_>, text: &str) -> Flow {
    match context.broker.options.dialect {
        Dialect::Tokens => tokens::on_text(context, text).await,
        Dialect::Channels => channels::on_text(context, text).await,
        Dialect::Wsmsgbroker => wsmsgbroker::on_text(context, text).await,
        Dialect::Achex => achex::on_text(context, text).await,
    }
}

/// Every dialect is text; a binary message gets the dialect's error reply.
async fn on_binary(context: &ClientContext<'_>) -> Flow {
    const ERROR: &str = "binary messages are not part of this protocol";
    match context.broker.options.dialect {
        Dialect::Tokens => tokens::reply_error(context, ERROR).await,
        Dialect::Channels => channels::reply_error(context, ERROR).await,
        Dialect::Wsmsgbroker => wsmsgbroker::reply_error(context, ERROR).await,
        Dialect::Achex => achex::reply_error(context, ERROR).await,
    }
    Ok(())
}
