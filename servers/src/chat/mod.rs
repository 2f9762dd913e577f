//! The library half of `websocket_chat`: a room where every message goes to
//! every other client, with ouistiti's commands (`-w`) and presence lines.
//!
//! - `command`: the syntax of `WSHello`, `WSPrivate` and `WSWhois`, and of
//!   the lines that relay a client's text with its sender's name (`-w`).
//! - `name`: which names are valid, and the `bob`, `bob1`, ... rule for taken ones.
//! - `room`: who is connected under which name, and delivering to bounded
//!   outboxes: a sender waits for room, a client that does not read is evicted.
//! - `outbox`: one client's queue, bounded in messages and bytes, and since
//!   when its writer has been waiting for the client's socket.
//! - [`run_session`] (here): one client's task, reading its messages into the
//!   room and writing its outbox to its socket (a client the gateway
//!   carries gets everything through its carrier instead, `room`).
//!
//! The protocol, including the differences from ouistiti, is `docs/chat.md`.

pub mod command;
pub mod name;
pub mod outbox;
pub mod room;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

pub use command::Command;
pub use name::{MAX_NAME_LEN, NameError, unique_name, validate_name};
pub use outbox::{Admission, Outbox, OutboxLimits};
pub use room::{
    ClientId, DEFAULT_QUEUE_BYTES, DEFAULT_QUEUE_CAPACITY, DEFAULT_STALL_TIMEOUT, Handling, Member,
    Room, RoomOptions,
};

use backend::{Session, SessionError};

/// How long a closing client gets to take its close frame (and whatever was
/// queued in the socket before it). A client too slow to read the close within
/// this time is simply dropped.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(30);

/// The close reason of a client whose queue overflowed.
pub const TOO_SLOW_REASON: &str = "too slow: message queue full";

/// Why a client's session ended.
#[derive(Debug)]
enum Ending {
    /// The server is shutting down: close with 1001.
    Shutdown,
    /// The room dropped the client for a full queue: close with 1008.
    Evicted,
    /// The gateway closed a carried client with 1008 for a full queue (the
    /// room leaves that to the gateway): counted and logged as an eviction.
    EvictedByGateway,
    /// The client closed, or its link ended (or its carrier did: the
    /// gateway closes the carrier's clients with 1011).
    ClientGone,
    /// Reading from the client failed.
    ReadFailed(SessionError),
    /// Writing to the client failed.
    WriteFailed(SessionError),
}

/// Serves one client in `room` until it leaves, the room evicts it, or
/// `shutdown` is cancelled.
///
/// At shutdown the client still gets what was queued for it, then a close
/// with 1001; an evicted client gets only what its socket already holds, then
/// a close with 1008. Either close waits at most [`CLOSE_TIMEOUT`].
///
/// One task does both directions: reading never waits for writing, so a
/// client whose socket is slow still gets its own messages to the others,
/// while its outbox fills up until the room evicts it. Its own messages wait
/// while an outbox they reach is full (`Member::handle`); its writer goes on
/// meanwhile, so waiting for its own outbox ends too.
pub async fn run_session(session: Session, shutdown: CancellationToken, room: Arc<Room>) {
    let carrier = session.carrier();
    let (member, outbox) = room.join_carried(&session.meta().peer, carrier.clone());
    debug!(
        client = member.id(),
        carried = carrier.is_some(),
        "joined the room"
    );
    let carrier_closed = async {
        match &carrier {
            Some((carrier, _)) => carrier.closed().await,
            None => std::future::pending().await,
        }
    };
    let evictions = session.metrics().slow_client_evictions();
    let (mut sink, mut stream) = session.split();
    // Taken from the outbox, not yet written: still the client's at shutdown.
    let mut batch = VecDeque::with_capacity(WRITE_BATCH);
    let ending = tokio::select! {
        biased;
        _ = shutdown.cancelled() => Ending::Shutdown,
        _ = member.evicted().cancelled() => Ending::Evicted,
        () = carrier_closed => Ending::ClientGone,
        ending = read_client(&mut stream, &member, carrier.is_some()) => ending,
        ending = write_outbox(&mut sink, &outbox, &mut batch) => ending,
    };
    // Leave first, so the others hear `WSLeave` without waiting for our close.
    member.leave().await;
    drop(member);
    let (code, reason, pending) = match ending {
        Ending::Shutdown => {
            // Leaving closed the outbox: this is all that was queued.
            let mut pending: Vec<Message> = batch.drain(..).collect();
            pending.extend(outbox.take_all());
            (CloseCode::Away, "server shutting down", pending)
        }
        Ending::Evicted => {
            evictions.inc();
            let (n_messages, n_bytes) = outbox.n_waiting();
            warn!(
                queue_capacity = room.options().queue_capacity.get(),
                queue_bytes = room.options().queue_bytes.get(),
                n_messages,
                n_bytes,
                "message queue full; closing with 1008"
            );
            (CloseCode::Policy, TOO_SLOW_REASON, Vec::new())
        }
        Ending::EvictedByGateway => {
            evictions.inc();
            return warn!(
                carried = true,
                "message queue full; closing with 1008 (the gateway closed this carried client)"
            );
        }
        Ending::ClientGone => return,
        Ending::ReadFailed(error) => return warn!(%error, "cannot read from client"),
        Ending::WriteFailed(error) => return warn!(%error, "cannot write to client"),
    };
    drop(outbox);
    send_then_close(&mut sink, pending, code, reason, &shutdown).await;
}

/// Sends `pending` and then a close with `code` and `reason` (cut to the
/// 123 bytes a close frame holds), within [`CLOSE_TIMEOUT`]. Unless the close
/// is for the shutdown itself (1001), a shutdown stops the wait, so a client
/// slow to take its close never holds the server up. The broker's sessions
/// close the same way.
pub async fn send_then_close<S>(
    sink: &mut S,
    pending: Vec<Message>,
    code: CloseCode,
    reason: &str,
    shutdown: &CancellationToken,
) where
    S: Sink<Message, Error = SessionError> + Unpin,
{
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let close = Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from(&reason[..end]),
    }));
    let send_all = async {
        for message in pending {
            sink.feed(message).await?;
        }
        sink.send(close).await
    };
    tokio::select! {
        sent = tokio::time::timeout(CLOSE_TIMEOUT, send_all) => match sent {
            Ok(Ok(())) => {}
            Ok(Err(error)) => debug!(%error, "cannot send close"),
            Err(_) => debug!("close not taken within {CLOSE_TIMEOUT:?}; dropping the client"),
        },
        // An evicted client still waiting for its close must not hold up shutdown.
        _ = shutdown.cancelled(), if code != CloseCode::Away => {}
    }
}

/// Hands every data message of the client to the room, in order. A
/// `carried` client's close with 1008 and [`TOO_SLOW_REASON`] is the
/// gateway evicting it.
async fn read_client<S>(stream: &mut S, member: &Member, carried: bool) -> Ending
where
    S: Stream<Item = Result<Message, SessionError>> + Unpin,
{
    loop {
        match stream.next().await {
            Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => {
                debug!(len = message.len(), "from client");
                member.handle(message).await;
            }
            Some(Ok(Message::Close(Some(frame))))
                if carried
                    && frame.code == CloseCode::Policy
                    && frame.reason.as_str() == TOO_SLOW_REASON =>
            {
                return Ending::EvictedByGateway;
            }
            Some(Ok(Message::Close(_))) | None => return Ending::ClientGone,
            // Sessions yield no other kind; nothing to do with one anyway.
            Some(Ok(_)) => {}
            Some(Err(error)) => return Ending::ReadFailed(error),
        }
    }
}

/// The most messages written to a client before its socket is flushed.
const WRITE_BATCH: usize = 64;

/// Writes the client's outbox to its socket (`Outbox::drain_into`).
async fn write_outbox<S>(sink: &mut S, outbox: &Outbox, batch: &mut VecDeque<Message>) -> Ending
where
    S: Sink<Message, Error = SessionError> + Unpin,
{
    // The room closes the outbox only when the client leaves it, which the
    // session sees first; here that can only be an eviction.
    match outbox.drain_into(sink, batch, WRITE_BATCH).await {
        Ok(()) => Ending::Evicted,
        Err(error) => Ending::WriteFailed(error),
    }
}
