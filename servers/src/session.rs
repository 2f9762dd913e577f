//! A backend's view of one client: [`Incoming`] before it answers OPEN, and
//! [`Session`] after, a `Stream` and `Sink` of WebSocket [`Message`]s.
//!
//! A session behaves the same whatever carries it: the framed link, or in
//! direct mode the client's own socket (`direct`). Servers only ever see
//! whole text, binary and close messages; pings and pongs never reach them.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::net::UnixStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::codec::{Framed, FramedParts};

use crate::direct::{self, DirectClient, DirectOptions};
use crate::link::record::CloseInfo;
use crate::link::{
    AcceptReply, LINK_VERSION, LinkError, LinkMode, OpenMeta, Record, RecordCodec, RejectReply,
};

/// Initial read buffer of a link. Small, because most sessions sit idle.
const LINK_READ_BUFFER: usize = 512;

/// Why a session failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The link broke or carried something malformed.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// The link ended before the gateway sent OPEN (a readiness probe does this).
    #[error("link closed before OPEN")]
    ClosedBeforeOpen,
    /// The gateway asked for something this backend does not do; the link got a REJECT.
    #[error("unsupported request: {0}")]
    Unsupported(String),
}

/// An accepted link whose OPEN has not been read yet.
#[derive(Debug)]
pub struct Connection {
    framed: Framed<UnixStream, RecordCodec>,
    direct_options: DirectOptions,
}

impl Connection {
    pub(crate) fn new(
        stream: UnixStream,
        max_payload: usize,
        direct_options: DirectOptions,
    ) -> Connection {
        let mut framed = Framed::from_parts(FramedParts::new::<Record>(
            stream,
            RecordCodec::new(max_payload),
        ));
        // Framed starts with 8 KiB each way; most sessions idle, so start small.
        // Both buffers grow to fit the records that actually come and go.
        *framed.read_buffer_mut() = BytesMut::with_capacity(LINK_READ_BUFFER);
        *framed.write_buffer_mut() = BytesMut::new();
        Connection {
            framed,
            direct_options,
        }
    }

    /// Reads the OPEN record. A link that closes first is
    /// [`SessionError::ClosedBeforeOpen`]; an OPEN this backend cannot serve (a
    /// newer protocol version) is answered with REJECT here and becomes
    /// [`SessionError::Unsupported`].
    pub async fn open(mut self) -> Result<Incoming, SessionError> {
        let record = match self.framed.next().await {
            None => return Err(SessionError::ClosedBeforeOpen),
            Some(record) => record?,
        };
        let Record::Open(payload) = record else {
            return Err(LinkError::Unexpected(record.name()).into());
        };
        let meta = OpenMeta::from_payload(&payload)?;
        let incoming = Incoming {
            meta,
            framed: self.framed,
            direct_options: self.direct_options,
        };
        let unsupported = (incoming.meta.version != LINK_VERSION).then(|| {
            format!(
                "link protocol version {} (this backend speaks {LINK_VERSION})",
                incoming.meta.version
            )
        });
        match unsupported {
            None => Ok(incoming),
            Some(reason) => {
                incoming
                    .reject(RejectReply {
                        status: 501,
                        reason: reason.clone(),
                    })
                    .await?;
                Err(SessionError::Unsupported(reason))
            }
        }
    }
}

/// A client the gateway announced; answer with [`Incoming::accept`] or [`Incoming::reject`].
#[derive(Debug)]
pub struct Incoming {
    meta: OpenMeta,
    framed: Framed<UnixStream, RecordCodec>,
    direct_options: DirectOptions,
}

impl Incoming {
    /// Who the client is: name, path, query, offered subprotocols, address, headers.
    pub fn meta(&self) -> &OpenMeta {
        &self.meta
    }

    /// Lets the gateway complete the handshake; messages flow from now on.
    ///
    /// In direct mode this also takes over the client's socket, which the
    /// gateway hands over right after its `101`.
    pub async fn accept(mut self, reply: AcceptReply) -> Result<Session, SessionError> {
        self.framed.send(Record::Accept(reply.to_payload())).await?;
        let transport = match self.meta.mode {
            LinkMode::Framed => Transport::Link(self.framed),
            LinkMode::Direct => {
                let parts = self.framed.into_parts();
                if !parts.read_buf.is_empty() {
                    // The gateway sends nothing between OPEN and HANDOFF.
                    return Err(LinkError::Unexpected("data before HANDOFF").into());
                }
                let options = match self.meta.limits {
                    Some(limits) => self.direct_options.with_limits(limits),
                    None => self.direct_options,
                };
                let (client, peer) = direct::take_over(parts.io, options).await?;
                if let Some(peer) = peer {
                    self.meta.peer = peer.to_string();
                }
                Transport::Direct(Box::new(client))
            }
        };
        Ok(Session {
            meta: self.meta,
            transport,
        })
    }

    /// Refuses the client: the gateway answers its handshake with `reply.status`.
    pub async fn reject(mut self, reply: RejectReply) -> Result<(), SessionError> {
        self.framed.send(Record::Reject(reply.to_payload())).await?;
        Ok(())
    }
}

/// One connected client: read it as a `Stream` of messages, write it as a `Sink`.
///
/// The stream yields `Text`, `Binary` and finally `Close` (with the client's code)
/// and then ends. Sending `Close` ends the session towards the client.
#[derive(Debug)]
pub struct Session {
    meta: OpenMeta,
    transport: Transport,
}

/// What carries a session's messages.
#[derive(Debug)]
enum Transport {
    /// Records on the link from the gateway (framed mode).
    Link(Framed<UnixStream, RecordCodec>),
    /// The client's own socket (direct mode).
    Direct(Box<DirectClient>),
}

impl Session {
    /// The OPEN metadata of this client.
    pub fn meta(&self) -> &OpenMeta {
        &self.meta
    }

    /// Sends a close with `code` and `reason` and flushes it; the session is over.
    pub async fn close(&mut self, code: CloseCode, reason: &str) -> Result<(), SessionError> {
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from(truncate_reason(reason)),
        };
        self.send(Message::Close(Some(frame))).await
    }
}

/// A close reason must fit a control frame: 123 bytes, cut on a character boundary.
fn truncate_reason(reason: &str) -> &str {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

fn record_to_message(record: Record) -> Result<Message, SessionError> {
    Ok(match record {
        Record::Text(text) => Message::Text(text),
        Record::Binary(payload) => Message::Binary(payload),
        Record::Close(None) => Message::Close(None),
        Record::Close(Some(info)) => Message::Close(Some(CloseFrame {
            code: CloseCode::from(info.code),
            reason: Utf8Bytes::from(info.reason),
        })),
        other => return Err(LinkError::Unexpected(other.name()).into()),
    })
}

fn message_to_record(message: Message) -> Option<Record> {
    match message {
        Message::Text(text) => Some(Record::Text(text)),
        Message::Binary(data) => Some(Record::Binary(data)),
        Message::Close(None) => Some(Record::Close(None)),
        Message::Close(Some(frame)) => Some(Record::Close(Some(CloseInfo {
            code: u16::from(frame.code),
            reason: truncate_reason(&frame.reason).to_owned(),
        }))),
        // The gateway keeps the client alive itself; these never cross the link.
        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => None,
    }
}

impl Stream for Session {
    type Item = Result<Message, SessionError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match &mut self.transport {
            Transport::Link(framed) => match framed.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(record))) => Poll::Ready(Some(record_to_message(record))),
                Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error.into()))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
            Transport::Direct(client) => client
                .poll_next_unpin(cx)
                .map(|item| item.map(|result| result.map_err(SessionError::from))),
        }
    }
}

impl Sink<Message> for Session {
    type Error = SessionError;

    fn poll_ready(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), SessionError>> {
        match &mut self.transport {
            Transport::Link(framed) => framed.poll_ready_unpin(cx).map_err(SessionError::from),
            Transport::Direct(client) => client.poll_ready_unpin(cx).map_err(SessionError::from),
        }
    }

    fn start_send(mut self: Pin<&mut Self>, message: Message) -> Result<(), SessionError> {
        match &mut self.transport {
            Transport::Link(framed) => match message_to_record(message) {
                Some(record) => framed.start_send_unpin(record).map_err(SessionError::from),
                None => Ok(()),
            },
            Transport::Direct(client) => {
                client.start_send_unpin(message).map_err(SessionError::from)
            }
        }
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), SessionError>> {
        match &mut self.transport {
            Transport::Link(framed) => framed.poll_flush_unpin(cx).map_err(SessionError::from),
            Transport::Direct(client) => client.poll_flush_unpin(cx).map_err(SessionError::from),
        }
    }

    fn poll_close(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), SessionError>> {
        match &mut self.transport {
            Transport::Link(framed) => framed.poll_close_unpin(cx).map_err(SessionError::from),
            Transport::Direct(client) => client.poll_close_unpin(cx).map_err(SessionError::from),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reasons_are_cut_on_character_boundaries() {
        let long = "é".repeat(100);
        let cut = truncate_reason(&long);
        assert!(cut.len() <= 123);
        assert_eq!(cut.len(), 122);
        assert_eq!(truncate_reason("bye"), "bye");
    }

    #[test]
    fn messages_map_to_records_and_back() {
        let messages = [
            Message::text("hi"),
            Message::binary(vec![0u8, 255]),
            Message::Close(None),
            Message::Close(Some(CloseFrame {
                code: CloseCode::Away,
                reason: "bye".into(),
            })),
        ];
        for message in messages {
            let record = message_to_record(message.clone()).expect("data and close cross the link");
            assert_eq!(record_to_message(record).expect("maps back"), message);
        }
        assert_eq!(message_to_record(Message::Ping(bytes::Bytes::new())), None);
    }
}
