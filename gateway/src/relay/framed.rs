//! The framed relay: each whole client message becomes one TEXT or BINARY
//! record on the link and each record one message to the client; closes cross
//! as CLOSE records with their code and reason.
//!
//! The gateway never looks inside a payload: `Bytes` move from one side to the
//! other without a copy.
//!
//! A backend's PING record becomes a ping to the client, and the client's
//! pong with that payload a PONG record back (a backend measuring a round
//! trip); every other ping and pong stays between the gateway and the client.

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::{Bytes, BytesMut};
use futures_util::{FutureExt, SinkExt, StreamExt};
use link::deflate::MessageDeflater;
use link::keepalive::{IdleTimer, PingTicker};
use link::message::{close_frame_for_client, close_info, message_to_record};
use link::{CloseInfo, LinkError, Record, RecordCodec};
use tokio::net::unix::OwnedWriteHalf;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::codec::{Decoder, FramedWrite};
use tokio_util::sync::CancellationToken;

use crate::client_stream::ClientStream;
use crate::metrics::{ClientMetrics, Traffic};

use super::read_ahead::LinkReader;
use super::{
    ClientGone, ClientReader, ClientWriter, ClientWs, Ending, LinkFailure, MAX_BATCH,
    RelaySettings, client_error, close_client, compressed, first_ending,
};
use crate::backend::FramedLink;

type LinkWriter = FramedWrite<OwnedWriteHalf, RecordCodec>;

/// Relays between `client` and the accepted `link` until one side closes or
/// `shutdown` fires, then completes the close handshakes on both sides.
pub(crate) async fn run<S: ClientStream>(
    client: ClientWs<S>,
    link: FramedLink,
    settings: &RelaySettings,
    deflater: Option<MessageDeflater>,
    shutdown: &CancellationToken,
    metrics: &ClientMetrics,
) {
    let parts = link.into_parts();
    let mut codec = parts.codec;
    let (read_half, write_half) = parts.io.into_split();
    // Records the backend sent right behind its ACCEPT are already buffered.
    // FramedRead decodes only after its next read from the socket, which may
    // never come, so the whole ones are decoded here and relayed first.
    let mut behind_accept = parts.read_buf;
    let mut early = VecDeque::new();
    loop {
        match codec.decode(&mut behind_accept) {
            Ok(Some(record)) => early.push_back(Ok(record)),
            Ok(None) => break,
            Err(error) => {
                early.push_back(Err(error));
                behind_accept.clear();
                break;
            }
        }
    }
    // What is left is the start of a record; the next read completes it.
    let mut link_reader = LinkReader::new(read_half, codec.clone(), behind_accept);
    let mut link_writer = FramedWrite::new(write_half, codec);
    // FramedWrite starts with 8 KiB; an idle client should not pay for it.
    *link_writer.write_buffer_mut() = BytesMut::new();
    let (mut client_writer, mut client_reader) = client.split();

    // The payload of the backend's last PING, until the client's pong to it.
    let asked = Mutex::new(None);
    let ending = {
        let upstream = client_to_backend(
            &mut client_reader,
            &mut link_writer,
            &asked,
            settings,
            &metrics.to_backend,
        );
        let downstream = backend_to_client(
            early,
            &mut link_reader,
            &mut client_writer,
            &asked,
            settings,
            &metrics.to_client,
            deflater,
        );
        first_ending(upstream, downstream, shutdown, metrics).await
    };

    // The backend learns how the client left, unless it is the one that left.
    let close_record = match &ending {
        Ending::ClientClosed(frame) => Some(Record::Close(frame.as_ref().map(close_info))),
        Ending::ClientGone(_) => Some(Record::Close(None)),
        Ending::ClientFailed { code, reason, .. } => Some(Record::Close(Some(CloseInfo {
            code: u16::from(*code),
            reason: (*reason).to_owned(),
        }))),
        Ending::Idle => Some(Record::Close(Some(CloseInfo {
            code: u16::from(CloseCode::Away),
            reason: "idle timeout".to_owned(),
        }))),
        Ending::Shutdown => Some(Record::Close(Some(CloseInfo {
            code: u16::from(CloseCode::Away),
            reason: "gateway shutting down".to_owned(),
        }))),
        Ending::BackendClosed(_) | Ending::BackendGone(_) => None,
    };
    // Half-close the link, then read it to its end: closing a UNIX socket with
    // unread data in it would reset the backend's side instead of ending it.
    let close_link = async {
        if let Some(record) = close_record {
            let _ = link_writer.send(record).await;
        }
        let _ = link_writer.close().await;
        while let Some(Ok(_)) = link_reader.next().await {}
    };
    let close_client = close_client(
        &ending,
        client_writer,
        client_reader,
        settings.close_timeout,
    );
    // Both closes at once, each bounded: a stuck backend cannot delay the client's.
    let close_link = async {
        let _ = tokio::time::timeout(settings.close_timeout, close_link).await;
    };
    tokio::join!(close_link, close_client);
}

/// Client messages to the link, until the client closes, fails or idles out,
/// or the link cannot be written.
async fn client_to_backend<S: ClientStream>(
    client_reader: &mut ClientReader<S>,
    link_writer: &mut LinkWriter,
    asked: &Mutex<Option<Bytes>>,
    settings: &RelaySettings,
    traffic: &Traffic,
) -> Ending {
    let mut idle = IdleTimer::new(settings.idle_timeout);
    loop {
        let first = tokio::select! {
            next = client_reader.next() => next,
            () = idle.expired() => return Ending::Idle,
        };
        let mut next = first;
        let mut n_batched = 0;
        let mut tally = traffic.tally();
        // Feed every message that is already here, then flush once.
        loop {
            idle.heard();
            match next {
                Some(Ok(Message::Close(frame))) => {
                    if let Err(error) = link_writer.flush().await {
                        return Ending::BackendGone(LinkFailure::Write(error));
                    }
                    return Ending::ClientClosed(frame);
                }
                Some(Ok(Message::Pong(payload))) if is_asked_for(asked, &payload) => {
                    if let Err(error) = link_writer.feed(Record::Pong(payload)).await {
                        return Ending::BackendGone(LinkFailure::Write(error));
                    }
                    n_batched += 1;
                }
                Some(Ok(message)) => {
                    let len = message.len();
                    // Other pings and pongs have no record: tungstenite answers pings itself.
                    if let Some(record) = message_to_record(message) {
                        if let Err(error) = link_writer.feed(record).await {
                            return Ending::BackendGone(LinkFailure::Write(error));
                        }
                        tally.count(len);
                        n_batched += 1;
                    }
                }
                Some(Err(error)) => return client_error(error),
                None => return Ending::ClientGone(ClientGone::Vanished),
            }
            if n_batched >= MAX_BATCH {
                break;
            }
            match client_reader.next().now_or_never() {
                Some(ready) => next = ready,
                None => break,
            }
        }
        if let Err(error) = link_writer.flush().await {
            return Ending::BackendGone(LinkFailure::Write(error));
        }
    }
}

/// Link records to the client, and keepalive pings, until the backend closes
/// or fails, or the client cannot be written.
async fn backend_to_client<S: ClientStream>(
    mut early: VecDeque<Result<Record, LinkError>>,
    link_reader: &mut LinkReader,
    client_writer: &mut ClientWriter<S>,
    asked: &Mutex<Option<Bytes>>,
    settings: &RelaySettings,
    traffic: &Traffic,
    mut deflater: Option<MessageDeflater>,
) -> Ending {
    let mut pings = PingTicker::new(settings.ping_interval);
    loop {
        let first = tokio::select! {
            biased;
            next = std::future::ready(early.pop_front()), if !early.is_empty() => next,
            next = link_reader.next() => next,
            () = pings.tick() => {
                if let Err(error) = client_writer.send(Message::Ping(Bytes::new())).await {
                    return Ending::ClientGone(ClientGone::Write(error));
                }
                continue;
            }
        };
        let mut next = first;
        let mut n_batched = 0;
        let mut tally = traffic.tally();
        loop {
            let message = match next {
                Some(Ok(Record::Text(text))) => Message::Text(text),
                Some(Ok(Record::Binary(payload))) => Message::Binary(payload),
                Some(Ok(Record::Ping(payload))) => {
                    *asked
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(payload.clone());
                    Message::Ping(payload)
                }
                Some(Ok(Record::Close(info))) => {
                    if let Err(error) = client_writer.flush().await {
                        return Ending::ClientGone(ClientGone::Write(error));
                    }
                    return Ending::BackendClosed(info.map(close_frame_for_client));
                }
                Some(Ok(other)) => {
                    return Ending::BackendGone(LinkFailure::Unexpected(other.name()));
                }
                Some(Err(error)) => return Ending::BackendGone(LinkFailure::Read(error)),
                None => return Ending::BackendGone(LinkFailure::Eof),
            };
            let len = message.len();
            if let Err(error) = client_writer.feed(compressed(&mut deflater, message)).await {
                return Ending::ClientGone(ClientGone::Write(error));
            }
            tally.count(len);
            n_batched += 1;
            if n_batched >= MAX_BATCH {
                break;
            }
            if let Some(record) = early.pop_front() {
                next = Some(record);
                continue;
            }
            match link_reader.next().now_or_never() {
                Some(ready) => next = ready,
                None => break,
            }
        }
        if let Err(error) = client_writer.flush().await {
            return Ending::ClientGone(ClientGone::Write(error));
        }
    }
}

/// Whether `payload` answers the backend's last PING; if so, that PING is answered.
fn is_asked_for(asked: &Mutex<Option<Bytes>>, payload: &Bytes) -> bool {
    let mut asked = asked
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if asked.as_ref() == Some(payload) {
        *asked = None;
        return true;
    }
    false
}
