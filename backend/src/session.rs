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

use link::message::{message_to_record, record_to_message, truncate_reason};
use link::websocket::LINK_READ_BUFFER;
use link::{
    AcceptReply, LINK_VERSION, LinkError, LinkMode, OpenMeta, Record, RecordCodec, RejectReply,
};

use crate::direct::{self, DirectClient, DirectOptions};
use crate::request::PendingRequest;

/// Why a session failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The link broke or carried something malformed.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// Writing to the client's own socket failed (direct mode).
    #[error("client socket: {0}")]
    Client(#[from] tokio_tungstenite::tungstenite::Error),
    /// The link ended before the gateway sent OPEN (a readiness probe does this).
    #[error("link closed before OPEN")]
    ClosedBeforeOpen,
    /// The gateway speaks a link protocol version this backend does not; the
    /// link got a REJECT with status 501 and this message as its reason.
    #[error("link protocol version {version} (this backend speaks {LINK_VERSION})")]
    UnsupportedVersion {
        /// The version in the gateway's OPEN.
        version: u32,
    },
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
    /// [`SessionError::UnsupportedVersion`].
    pub async fn open(self) -> Result<Incoming, SessionError> {
        match self.open_or_request().await? {
            LinkStart::Client(incoming) => Ok(incoming),
            LinkStart::Request(_) => Err(LinkError::Unexpected("REQUEST").into()),
        }
    }

    /// Reads the first record: OPEN as in [`Connection::open`], or a REQUEST
    /// (a plain HTTP request for this backend, answered by `serve`).
    pub(crate) async fn open_or_request(mut self) -> Result<LinkStart, SessionError> {
        let record = match self.framed.next().await {
            None => return Err(SessionError::ClosedBeforeOpen),
            Some(record) => record?,
        };
        let payload = match record {
            Record::Open(payload) => payload,
            Record::Request(payload) => {
                let pending = PendingRequest::new(payload, self.framed)?;
                return Ok(LinkStart::Request(pending));
            }
            other => return Err(LinkError::Unexpected(other.name()).into()),
        };
        let meta = OpenMeta::from_payload(&payload)?;
        let incoming = Incoming {
            meta,
            framed: self.framed,
            direct_options: self.direct_options,
        };
        if incoming.meta.version == LINK_VERSION {
            return Ok(LinkStart::Client(incoming));
        }
        let error = SessionError::UnsupportedVersion {
            version: incoming.meta.version,
        };
        incoming
            .reject(RejectReply {
                status: 501,
                reason: error.to_string(),
            })
            .await?;
        Err(error)
    }
}

/// What the first record of a link asked for.
#[derive(Debug)]
pub(crate) enum LinkStart {
    /// OPEN: a WebSocket client.
    Client(Incoming),
    /// REQUEST: one plain HTTP request.
    Request(PendingRequest),
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

impl Stream for Session {
    type Item = Result<Message, SessionError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match &mut self.transport {
            Transport::Link(framed) => match framed.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(record))) => {
                    Poll::Ready(Some(record_to_message(record).map_err(SessionError::from)))
                }
                Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error.into()))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
            Transport::Direct(client) => client.poll_next_unpin(cx).map(|item| item.map(Ok)),
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
