//! A backend's view of one client: [`Incoming`] before it answers OPEN, and
//! [`Session`] after, a `Stream` and `Sink` of WebSocket [`Message`]s.
//!
//! A session behaves the same whatever carries it: the framed link, or in
//! direct mode the client's own socket (`direct`). Servers only ever see
//! whole text, binary and close messages; keepalive pings and pongs never
//! reach them (a server's own ping gets its pong back, see [`Session`]).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::net::UnixStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::codec::{Framed, FramedParts};

use link::message::{message_to_record, record_to_message, truncate_reason};
use link::websocket::{LINK_READ_BUFFER, READ_CHUNK};
use link::{
    AcceptReply, LINK_VERSION, LinkError, LinkMode, OpenMeta, Record, RecordCodec, RejectReply,
};

use crate::carrier::{CarriedLink, Carrier, CarrierSendError};
use crate::direct::{self, DirectClient, DirectOptions};
use crate::metrics::Metrics;
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
    /// The gateway opened a link in a mode this backend does not serve (a
    /// carrier link to a server that does not fan out); the link got a
    /// REJECT with status 501.
    #[error("link mode {0:?} is not served by this backend")]
    UnsupportedMode(LinkMode),
    /// A carried session's message did not go on its carrier link (it
    /// ended, or the message is too long for a record).
    #[error("carrier: {0}")]
    Carrier(#[from] CarrierSendError),
}

/// An accepted link whose OPEN has not been read yet.
#[derive(Debug)]
pub struct Connection {
    framed: Framed<UnixStream, RecordCodec>,
    direct_options: DirectOptions,
    metrics: Metrics,
}

impl Connection {
    pub(crate) fn new(
        stream: UnixStream,
        max_payload: usize,
        direct_options: DirectOptions,
        metrics: Metrics,
    ) -> Connection {
        Connection::with_codec(
            stream,
            RecordCodec::new(max_payload),
            direct_options,
            metrics,
        )
    }

    fn with_codec(
        stream: UnixStream,
        codec: RecordCodec,
        direct_options: DirectOptions,
        metrics: Metrics,
    ) -> Connection {
        let mut framed = Framed::from_parts(FramedParts::new::<Record>(stream, codec));
        // Framed starts with 8 KiB each way; most sessions idle, so start small.
        // Both buffers grow to fit the records that actually come and go.
        *framed.read_buffer_mut() = BytesMut::with_capacity(LINK_READ_BUFFER);
        *framed.write_buffer_mut() = BytesMut::new();
        Connection {
            framed,
            direct_options,
            metrics,
        }
    }

    /// Reads the OPEN record. A link that closes first is
    /// [`SessionError::ClosedBeforeOpen`]; an OPEN this backend cannot serve (a
    /// newer protocol version) is answered with REJECT here and becomes
    /// [`SessionError::UnsupportedVersion`].
    pub async fn open(self) -> Result<Incoming, SessionError> {
        match self.open_or_request().await? {
            LinkStart::Client(incoming) => Ok(incoming),
            LinkStart::Carrier(incoming) => Err(incoming.reject_unsupported_mode().await),
            LinkStart::Request(_) => Err(LinkError::Unexpected("REQUEST").into()),
        }
    }

    /// Reads the first record: OPEN as in [`Connection::open`] (a carrier
    /// OPEN is returned for `serve` to take or refuse), or a REQUEST (a plain
    /// HTTP request for this backend, answered by `serve`).
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
            metrics: self.metrics,
        };
        let error = if incoming.meta.version != LINK_VERSION {
            SessionError::UnsupportedVersion {
                version: incoming.meta.version,
            }
        } else if incoming.meta.mode == LinkMode::Carrier {
            return Ok(LinkStart::Carrier(incoming));
        } else {
            return Ok(LinkStart::Client(incoming));
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
    /// OPEN with mode `carrier`: a gateway's carrier link (`crate::carrier`).
    Carrier(Incoming),
    /// REQUEST: one plain HTTP request.
    Request(PendingRequest),
}

/// A client the gateway announced; answer with [`Incoming::accept`] or [`Incoming::reject`].
#[derive(Debug)]
pub struct Incoming {
    meta: OpenMeta,
    framed: Framed<UnixStream, RecordCodec>,
    direct_options: DirectOptions,
    metrics: Metrics,
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
    pub async fn accept(self, reply: AcceptReply) -> Result<Session, SessionError> {
        // Only `serve` can take a link back for the next client, or put a
        // client on a carrier.
        let reply = AcceptReply {
            reuse_ms: None,
            carrier: None,
            carrier_wanted: false,
            ..reply
        };
        Ok(self.accept_keeping_link(reply, None).await?.0)
    }

    /// Refuses a link in a mode this backend does not serve (a carrier link
    /// to a server that does not fan out) with REJECT `501`.
    pub(crate) async fn reject_unsupported_mode(self) -> SessionError {
        let error = SessionError::UnsupportedMode(self.meta.mode);
        let reply = RejectReply {
            status: 501,
            reason: error.to_string(),
        };
        match self.reject(reply).await {
            Ok(()) => error,
            Err(reject_error) => reject_error,
        }
    }

    /// Takes a carrier link: answers an empty ACCEPT and returns the socket,
    /// on which the gateway sends nothing more.
    pub(crate) async fn accept_carrier(mut self) -> Result<UnixStream, SessionError> {
        self.framed
            .send(Record::Accept(AcceptReply::default().to_payload()))
            .await?;
        let parts = self.framed.into_parts();
        if !parts.read_buf.is_empty() {
            return Err(LinkError::Unexpected("data after a carrier's OPEN").into());
        }
        Ok(parts.io)
    }

    /// [`Incoming::accept`]; in direct mode with `reply.reuse_ms`, also the
    /// link after the HANDOFF, whose next record starts another client.
    ///
    /// With `carried` (framed mode only, and `reply.carrier` set), the
    /// session's messages go on that carrier.
    pub(crate) async fn accept_keeping_link(
        mut self,
        mut reply: AcceptReply,
        carried: Option<CarriedLink>,
    ) -> Result<(Session, Option<Connection>), SessionError> {
        if self.meta.mode != LinkMode::Direct {
            reply.reuse_ms = None;
        }
        let carried = carried.filter(|_| self.meta.mode == LinkMode::Framed);
        if carried.is_none() {
            reply.carrier = None;
        }
        self.framed.send(Record::Accept(reply.to_payload())).await?;
        let mut next_link = None;
        let transport = match self.meta.mode {
            LinkMode::Framed => match carried {
                Some(link) => Transport::Carried(Box::new(Carried {
                    framed: self.framed,
                    link,
                })),
                None => Transport::Link(self.framed),
            },
            LinkMode::Carrier => return Err(SessionError::UnsupportedMode(LinkMode::Carrier)),
            LinkMode::Direct => {
                let parts = self.framed.into_parts();
                if !parts.read_buf.is_empty() {
                    // The gateway sends nothing between OPEN and HANDOFF.
                    return Err(LinkError::Unexpected("data before HANDOFF").into());
                }
                let mut options = match self.meta.limits {
                    Some(limits) => self.direct_options.with_limits(limits),
                    None => self.direct_options,
                };
                if let Some(max) = reply.max_message_size {
                    options.max_message_size = options.max_message_size.min(max);
                }
                let keep_link = reply.reuse_ms.is_some();
                let (client, peer, link) =
                    direct::take_over(parts.io, options, self.meta.deflate, keep_link).await?;
                if let Some(peer) = peer {
                    self.meta.peer = peer.to_string();
                }
                next_link = link.map(|stream| {
                    Connection::with_codec(
                        stream,
                        parts.codec,
                        self.direct_options,
                        self.metrics.clone(),
                    )
                });
                Transport::Direct(Box::new(client))
            }
        };
        let session = Session {
            meta: self.meta,
            transport,
            peeked: None,
            unflushed: false,
            n_deferred: 0,
            defer_flushes: true,
            metrics: self.metrics,
        };
        Ok((session, next_link))
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
///
/// Sending `Ping(payload)` (at most 125 bytes) pings the client, relayed or
/// direct; the client's answer is yielded as `Pong(payload)` when it echoes
/// the last ping sent (a server measuring a round trip). A server that sends
/// no ping never sees a `Pong`; keepalive stays the gateway's (or, direct,
/// the library's) and never reaches the server.
///
/// Replies are batched without the server asking: a flush (`send` ends with
/// one) is deferred while the client's next text or binary message is
/// already readable, so a server that answers each message with `send`
/// writes a pipelining client's replies with one write, as a server with its
/// own feed-then-flush loop would. What was deferred is written when the
/// session next has nothing to read (in `poll_next`), before it yields a
/// `Close`, an error or its end, at `close`, after
/// [`MAX_DEFERRED_FLUSHES`] deferrals in a row, and as soon as the write
/// buffer is full. A server that stops reading its session while it still
/// sends must [`Session::split`] it: the halves never defer.
///
/// A carried session ([`Session::carrier`]) sends its text, binary and
/// close messages on its gateway's carrier link; a flush there is done once
/// they are in the carrier's queue, which its own task writes.
#[derive(Debug)]
pub struct Session {
    meta: OpenMeta,
    transport: Transport,
    /// What a deferred flush read ahead, yielded before anything else.
    peeked: Option<Option<Result<Message, SessionError>>>,
    /// Messages were sent since the last flush that reached the transport.
    unflushed: bool,
    /// Flushes deferred since the last one that reached the transport.
    n_deferred: usize,
    /// False once split, or once a close was sent: every flush is a flush.
    defer_flushes: bool,
    /// The backend's metrics, which count this session's messages.
    metrics: Metrics,
}

/// Flushes deferred in a row at most, so a client that never stops sending
/// still gets its replies in batches of this many.
pub const MAX_DEFERRED_FLUSHES: usize = 64;

/// What carries a session's messages.
#[derive(Debug)]
enum Transport {
    /// Records on the link from the gateway (framed mode).
    Link(Framed<UnixStream, RecordCodec>),
    /// Framed mode on a carrier: the client's messages come on its link,
    /// ours go as FANOUT records on the gateway's carrier (pings excepted).
    Carried(Box<Carried>),
    /// The client's own socket (direct mode).
    Direct(Box<DirectClient>),
}

/// A carried session's own link and its place on the carrier.
#[derive(Debug)]
struct Carried {
    framed: Framed<UnixStream, RecordCodec>,
    link: CarriedLink,
}

impl Session {
    /// The carrier this client's messages travel on, and the client's id
    /// there (OPEN's `id`), when the gateway carries it; `None` for other
    /// sessions. A server sending one message to many clients groups the
    /// carried ones by [`Carrier`] and sends each group one record
    /// ([`Carrier::try_send`]); what it sends through the session itself
    /// goes on the same carrier, in order.
    pub fn carrier(&self) -> Option<(Carrier, u64)> {
        match &self.transport {
            Transport::Carried(carried) => {
                Some((carried.link.carrier().clone(), carried.link.id()))
            }
            Transport::Link(_) | Transport::Direct(_) => None,
        }
    }

    /// The OPEN metadata of this client.
    pub fn meta(&self) -> &OpenMeta {
        &self.meta
    }

    /// The backend's metrics, where a server counts its own events
    /// ([`Metrics::counter`]).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
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

impl Session {
    /// Splits the session into a writing and a reading half, for a server
    /// that reads and writes independently (the chat's outbox). Flushes on
    /// the halves are never deferred: the reading half may be waiting on
    /// something else while the writing half's messages must go out.
    pub fn split(mut self) -> (SplitSink<Session, Message>, SplitStream<Session>) {
        self.defer_flushes = false;
        StreamExt::split(self)
    }

    fn poll_transport_next(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Message, SessionError>>> {
        match &mut self.transport {
            Transport::Link(framed) => poll_link_next(framed, cx),
            Transport::Carried(carried) => poll_link_next(&mut carried.framed, cx),
            Transport::Direct(client) => client.poll_next_unpin(cx).map(|item| item.map(Ok)),
        }
    }

    /// Flushes the transport, clearing `unflushed` once it took everything.
    fn poll_transport_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SessionError>> {
        let flushed = match &mut self.transport {
            Transport::Link(framed) => framed.poll_flush_unpin(cx).map_err(SessionError::from),
            Transport::Carried(carried) => poll_carried_flush(carried, cx),
            Transport::Direct(client) => client.poll_flush_unpin(cx).map_err(SessionError::from),
        };
        if flushed.is_ready() {
            self.unflushed = false;
            self.n_deferred = 0;
        }
        flushed
    }
}

/// Reads the next message from the gateway's link, a whole burst of records
/// at once, holding no buffer while idle.
fn poll_link_next(
    framed: &mut Framed<UnixStream, RecordCodec>,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Message, SessionError>>> {
    let buffer = framed.read_buffer_mut();
    if buffer.capacity() - buffer.len() < LINK_READ_BUFFER {
        buffer.reserve(READ_CHUNK);
    }
    let polled = framed.poll_next_unpin(cx);
    if polled.is_pending() && framed.read_buffer().is_empty() {
        *framed.read_buffer_mut() = BytesMut::new();
    }
    polled.map(|item| {
        item.map(|record| {
            record
                .map_err(SessionError::from)
                .and_then(|record| record_to_message(record).map_err(SessionError::from))
        })
    })
}

/// A carried session's flush: the held-back message is on the carrier's
/// queue (its writer writes it as soon as it can: a flush does not wait for
/// the gateway to read it), and any ping is written on the own link.
fn poll_carried_flush(
    carried: &mut Carried,
    cx: &mut Context<'_>,
) -> Poll<Result<(), SessionError>> {
    std::task::ready!(carried.link.poll_ready(cx))?;
    carried
        .framed
        .poll_flush_unpin(cx)
        .map_err(SessionError::from)
}

/// True for an item the server answers: a text or binary message.
fn is_data(item: &Option<Result<Message, SessionError>>) -> bool {
    matches!(item, Some(Ok(Message::Text(_) | Message::Binary(_))))
}

impl Stream for Session {
    type Item = Result<Message, SessionError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let item = match this.peeked.take() {
            Some(item) => item,
            None => match this.poll_transport_next(cx) {
                Poll::Ready(item) => item,
                Poll::Pending => {
                    // Nothing more to read: what was deferred goes out now.
                    if this.unflushed
                        && let Poll::Ready(Err(error)) = this.poll_transport_flush(cx)
                    {
                        return Poll::Ready(Some(Err(error)));
                    }
                    return Poll::Pending;
                }
            },
        };
        if !is_data(&item) && this.unflushed {
            // The replies go out before the server hears of the close; a
            // failure to write them is the same client going away.
            if this.poll_transport_flush(cx).is_pending() {
                this.peeked = Some(item);
                return Poll::Pending;
            }
        }
        if let Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) = &item {
            this.metrics.received(message.len());
        }
        Poll::Ready(item)
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
            Transport::Carried(carried) => {
                std::task::ready!(carried.link.poll_ready(cx))?;
                carried
                    .framed
                    .poll_ready_unpin(cx)
                    .map_err(SessionError::from)
            }
            Transport::Direct(client) => client.poll_ready_unpin(cx).map_err(SessionError::from),
        }
    }

    fn start_send(mut self: Pin<&mut Self>, message: Message) -> Result<(), SessionError> {
        if message.is_close() {
            self.defer_flushes = false;
        }
        self.unflushed = true;
        if let Message::Text(_) | Message::Binary(_) = &message
            && !matches!(self.transport, Transport::Carried(_))
        {
            // A carrier counts what it sends itself.
            self.metrics.sent(message.len());
        }
        match &mut self.transport {
            Transport::Carried(carried) => match message {
                Message::Ping(payload) => carried
                    .framed
                    .start_send_unpin(Record::Ping(payload))
                    .map_err(SessionError::from),
                message @ (Message::Text(_) | Message::Binary(_) | Message::Close(_)) => {
                    carried.link.start_send(message).map_err(SessionError::from)
                }
                Message::Pong(_) | Message::Frame(_) => Ok(()),
            },
            Transport::Link(framed) => {
                let record = match message {
                    // The gateway pings the client for us, and returns its pong.
                    Message::Ping(payload) => Some(Record::Ping(payload)),
                    other => message_to_record(other),
                };
                match record {
                    Some(record) => framed.start_send_unpin(record).map_err(SessionError::from),
                    None => Ok(()),
                }
            }
            Transport::Direct(client) => {
                client.start_send_unpin(message).map_err(SessionError::from)
            }
        }
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), SessionError>> {
        let this = &mut *self;
        if this.defer_flushes && this.unflushed && this.n_deferred < MAX_DEFERRED_FLUSHES {
            if this.peeked.is_none()
                && let Poll::Ready(item) = this.poll_transport_next(cx)
            {
                this.peeked = Some(item);
            }
            if this.peeked.as_ref().is_some_and(is_data) {
                // The next message is here: its reply joins this batch.
                this.n_deferred += 1;
                return Poll::Ready(Ok(()));
            }
        }
        this.poll_transport_flush(cx)
    }

    fn poll_close(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), SessionError>> {
        self.defer_flushes = false;
        self.unflushed = false;
        match &mut self.transport {
            Transport::Link(framed) => framed.poll_close_unpin(cx).map_err(SessionError::from),
            Transport::Carried(carried) => {
                // The close went on the carrier; the own link ends after it.
                std::task::ready!(carried.link.poll_ready(cx))?;
                carried
                    .framed
                    .poll_close_unpin(cx)
                    .map_err(SessionError::from)
            }
            Transport::Direct(client) => client.poll_close_unpin(cx).map_err(SessionError::from),
        }
    }
}
