//! A backend's view of one client: [`Incoming`] before it answers OPEN, and
//! [`Session`] after, a `Stream` and `Sink` of WebSocket [`Message`]s.
//!
//! A session behaves the same whatever carries it: the framed link, or in
//! direct mode the client's own socket (`direct`). Servers only ever see
//! whole text, binary and close messages; keepalive pings and pongs never
//! reach them (a server's own ping gets its pong back, see [`Session`]).

use std::pin::Pin;
use std::task::{Context, Poll};

use std::io;
use std::os::fd::OwnedFd;

use bytes::{Bytes, BytesMut};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use link::LinkStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::codec::{Decoder, Framed, FramedParts};

use link::fd_pass::{self, RecordHead};
use link::message::{message_to_record, record_to_message, truncate_reason};
use link::record::{HEADER_LEN, decode_header};
use link::websocket::{LINK_READ_BUFFER, READ_CHUNK};
use link::{
    AcceptReply, LINK_VERSION, LinkError, LinkMode, OpenMeta, Record, RecordCodec, RecordKind,
    RejectReply,
};
use tokio::io::AsyncReadExt;

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
    framed: Framed<LinkStream, RecordCodec>,
    direct_options: DirectOptions,
    metrics: Metrics,
    /// A reused direct-mode link whose last ACCEPT offered `open_handoff`:
    /// its next record may be an OPEN_HANDOFF, whose descriptor only
    /// `recvmsg` keeps, so the first record is read that way.
    open_handoff: bool,
}

impl Connection {
    pub(crate) fn new(
        stream: LinkStream,
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
        stream: LinkStream,
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
            open_handoff: false,
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
            LinkStart::HandedOver(_) => Err(LinkError::Unexpected("OPEN_HANDOFF").into()),
        }
    }

    /// Reads the first record: OPEN as in [`Connection::open`] (a carrier
    /// OPEN is returned for `serve` to take or refuse), or a REQUEST (a plain
    /// HTTP request for this backend, answered by `serve`).
    pub(crate) async fn open_or_request(mut self) -> Result<LinkStart, SessionError> {
        if self.open_handoff && self.framed.read_buffer().is_empty() {
            // The largest OPEN_HANDOFF: an OPEN, and at most a message of
            // pending bytes (what the gateway read past the handshake).
            let max_len = self
                .framed
                .codec()
                .max_payload()
                .saturating_add(self.direct_options.max_message_size);
            let head = match fd_pass::recv_head(self.framed.get_mut(), max_len).await {
                Err(LinkError::Io(error)) if error.kind() == io::ErrorKind::UnexpectedEof => {
                    return Err(SessionError::ClosedBeforeOpen);
                }
                head => head?,
            };
            if head.kind == RecordKind::OpenHandoff {
                return Ok(LinkStart::HandedOver(Box::new(
                    self.read_open_handoff(head).await?,
                )));
            }
            if head.descriptor.is_some() {
                // Dropping it closes it.
                return Err(
                    LinkError::Unexpected("a descriptor with a record that has none").into(),
                );
            }
            // Any other record is read by the codec, as on any link.
            self.framed
                .read_buffer_mut()
                .extend_from_slice(&head.header);
        }
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
        let meta = Box::new(OpenMeta::from_payload(&payload)?);
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

    /// The rest of an OPEN_HANDOFF whose header is `head`: its OPEN, which
    /// must be a direct-mode one of this version, and the pending bytes.
    async fn read_open_handoff(mut self, head: RecordHead) -> Result<HandedOver, SessionError> {
        let Some(client) = head.descriptor else {
            return Err(LinkError::NoDescriptor.into());
        };
        let mut payload = vec![0u8; head.len];
        self.framed
            .get_mut()
            .read_exact(&mut payload)
            .await
            .map_err(|_| LinkError::Truncated)?;
        let (open, pending) = link::meta::split_head("OPEN_HANDOFF", Bytes::from(payload))?;
        let meta = Box::new(OpenMeta::from_payload(&open)?);
        if meta.version != LINK_VERSION {
            return Err(SessionError::UnsupportedVersion {
                version: meta.version,
            });
        }
        if meta.mode != LinkMode::Direct {
            return Err(LinkError::Unexpected("an OPEN_HANDOFF not in direct mode").into());
        }
        Ok(HandedOver {
            meta,
            client,
            pending,
            link: self,
        })
    }
}

/// A client the gateway handed over with OPEN_HANDOFF (docs/link-protocol.md,
/// *Hand-over without ACCEPT*): it already has its `101`, and the backend
/// takes it as if it had answered an empty ACCEPT.
#[derive(Debug)]
pub(crate) struct HandedOver {
    meta: Box<OpenMeta>,
    client: OwnedFd,
    pending: Bytes,
    /// The link, open for the next client as before.
    link: Connection,
}

impl HandedOver {
    /// Who the client is.
    pub(crate) fn meta(&self) -> &OpenMeta {
        &self.meta
    }

    /// The client's session, which reads no more than `max_message_size`
    /// (the server's, if smaller than the gateway's), and the link back for
    /// the next client.
    pub(crate) fn into_session(
        self,
        max_message_size: Option<usize>,
    ) -> Result<(Session, Connection), SessionError> {
        let HandedOver {
            meta,
            client,
            pending,
            link,
        } = self;
        let options = link
            .direct_options
            .for_client(meta.limits, max_message_size);
        let client = direct::from_descriptor(client, pending, options, meta.deflate)
            .map_err(LinkError::from)?;
        let session = Session::new(
            meta,
            Transport::Direct(Box::new(client)),
            link.metrics.clone(),
        );
        Ok((session, link))
    }
}

/// What becomes of an accepted client's link.
#[derive(Debug)]
pub(crate) enum NextLink {
    /// It ends with the session.
    None,
    /// Direct mode: it is free for the next client now, after the HANDOFF.
    Now(Connection),
    /// Framed mode with `reuse_framed`: it comes back when the session is
    /// dropped, for [`EndedLink::finish`] to complete the CLOSEs.
    AfterClose(oneshot::Receiver<EndedLink>),
}

/// Where a framed session offered for reuse sends its link when dropped.
#[derive(Debug)]
struct GiveBack {
    sender: oneshot::Sender<EndedLink>,
    direct_options: DirectOptions,
    /// The ACCEPT also offered OPEN_HANDOFF for the link's next record.
    open_handoff: bool,
}

/// A framed session's link, back from the dropped session, with how far its
/// CLOSEs got.
#[derive(Debug)]
pub(crate) struct EndedLink {
    framed: Framed<LinkStream, RecordCodec>,
    direct_options: DirectOptions,
    metrics: Metrics,
    open_handoff: bool,
    close_sent: bool,
    close_received: bool,
}

impl EndedLink {
    /// Completes the client's end on the link (docs/link-protocol.md, *Link
    /// reuse in framed mode*): answers the gateway's CLOSE if the server did
    /// not, or reads on to the gateway's CLOSE after the server's own,
    /// dropping what the gateway relayed meanwhile. The link is then a new
    /// link, unless nothing was closed (the server just left: the link ends
    /// and the gateway closes the client with `1011`, as without reuse), the
    /// link fails, or the gateway sends anything else.
    pub(crate) async fn finish(self) -> Result<Connection, &'static str> {
        let EndedLink {
            mut framed,
            direct_options,
            metrics,
            open_handoff,
            close_sent,
            close_received,
        } = self;
        if !close_sent && !close_received {
            return Err("the session ended without a close");
        }
        if close_sent {
            framed
                .flush()
                .await
                .map_err(|_| "writing to the link failed")?;
        } else {
            framed
                .send(Record::Close(None))
                .await
                .map_err(|_| "writing CLOSE failed")?;
        }
        let FramedParts {
            mut io,
            mut codec,
            read_buf: mut buffered,
            ..
        } = framed.into_parts();
        if !close_received {
            // The gateway may send the next client's OPEN (or OPEN_HANDOFF,
            // with its descriptor) right behind its CLOSE: read exactly up
            // to the CLOSE, leaving what follows in the socket.
            loop {
                match codec.decode(&mut buffered) {
                    Ok(Some(Record::Close(_))) => break,
                    Ok(Some(Record::Text(_) | Record::Binary(_) | Record::Pong(_))) => continue,
                    Ok(Some(_)) => return Err("the gateway sent another record before its CLOSE"),
                    Err(_) => return Err("the gateway sent a malformed record before its CLOSE"),
                    Ok(None) => {}
                }
                let missing = match buffered.first_chunk::<HEADER_LEN>() {
                    None => HEADER_LEN - buffered.len(),
                    Some(&header) => {
                        let (_, len) = decode_header(header, codec.max_payload())
                            .map_err(|_| "the gateway sent a malformed record before its CLOSE")?;
                        HEADER_LEN + len - buffered.len()
                    }
                };
                let start = buffered.len();
                buffered.resize(start + missing, 0);
                io.read_exact(&mut buffered[start..])
                    .await
                    .map_err(|_| "the link ended before the gateway's CLOSE")?;
            }
        }
        if !buffered.is_empty() {
            return Err("the gateway sent a record after its CLOSE");
        }
        let mut next = Connection::with_codec(io, codec, direct_options, metrics);
        next.open_handoff = open_handoff;
        Ok(next)
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
    /// OPEN_HANDOFF: a direct-mode client, already handed over.
    HandedOver(Box<HandedOver>),
}

/// A client the gateway announced; answer with [`Incoming::accept`] or [`Incoming::reject`].
#[derive(Debug)]
pub struct Incoming {
    meta: Box<OpenMeta>,
    framed: Framed<LinkStream, RecordCodec>,
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
            open_handoff: false,
            reuse_framed: false,
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
    pub(crate) async fn accept_carrier(mut self) -> Result<LinkStream, SessionError> {
        self.framed
            .send(Record::Accept(AcceptReply::default().to_payload()))
            .await?;
        let parts = self.framed.into_parts();
        if !parts.read_buf.is_empty() {
            return Err(LinkError::Unexpected("data after a carrier's OPEN").into());
        }
        Ok(parts.io)
    }

    /// [`Incoming::accept`], and the link for another client if `reply`
    /// offers it: in direct mode with `reply.reuse_ms`, the link after the
    /// HANDOFF, whose next record starts another client; in framed mode with
    /// `reply.reuse_framed` too, the link once the session is over
    /// ([`NextLink::AfterClose`]).
    ///
    /// With `carried` (framed mode only, and `reply.carrier` set), the
    /// session's messages go on that carrier.
    pub(crate) async fn accept_keeping_link(
        mut self,
        mut reply: AcceptReply,
        carried: Option<CarriedLink>,
    ) -> Result<(Session, NextLink), SessionError> {
        let carried = carried.filter(|_| self.meta.mode == LinkMode::Framed);
        if carried.is_none() {
            reply.carrier = None;
        }
        // A carried client's CLOSE goes on the carrier: its link is not reused.
        reply.reuse_framed &= self.meta.mode == LinkMode::Framed && carried.is_none();
        if self.meta.mode != LinkMode::Direct && !reply.reuse_framed {
            reply.reuse_ms = None;
        }
        if reply.reuse_ms.is_none() {
            reply.open_handoff = false;
            reply.reuse_framed = false;
        }
        self.framed.send(Record::Accept(reply.to_payload())).await?;
        let mut next_link = NextLink::None;
        let mut give_back = None;
        let transport = match self.meta.mode {
            LinkMode::Framed => match carried {
                Some(link) => Transport::Carried(Box::new(Carried {
                    framed: self.framed,
                    link,
                })),
                None => {
                    if reply.reuse_framed {
                        let (sender, receiver) = oneshot::channel();
                        give_back = Some(GiveBack {
                            sender,
                            direct_options: self.direct_options,
                            open_handoff: reply.open_handoff,
                        });
                        next_link = NextLink::AfterClose(receiver);
                    }
                    Transport::Link(self.framed)
                }
            },
            LinkMode::Carrier => return Err(SessionError::UnsupportedMode(LinkMode::Carrier)),
            LinkMode::Direct => {
                let parts = self.framed.into_parts();
                if !parts.read_buf.is_empty() {
                    // The gateway sends nothing between OPEN and HANDOFF.
                    return Err(LinkError::Unexpected("data before HANDOFF").into());
                }
                let options = self
                    .direct_options
                    .for_client(self.meta.limits, reply.max_message_size);
                let keep_link = reply.reuse_ms.is_some();
                let (client, link) =
                    direct::take_over(parts.io, options, self.meta.deflate, keep_link).await?;
                if let Some(stream) = link {
                    let mut next = Connection::with_codec(
                        stream,
                        parts.codec,
                        self.direct_options,
                        self.metrics.clone(),
                    );
                    next.open_handoff = reply.open_handoff;
                    next_link = NextLink::Now(next);
                }
                Transport::Direct(Box::new(client))
            }
        };
        let mut session = Session::new(self.meta, transport, self.metrics);
        session.give_back = give_back;
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
    meta: Box<OpenMeta>,
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
    /// Framed mode, offered for reuse: where the link goes when the session
    /// is dropped.
    give_back: Option<GiveBack>,
    /// A close went to the client (framed mode: a CLOSE record).
    close_sent: bool,
    /// The client's close came (framed mode: the gateway's CLOSE record).
    close_received: bool,
    /// The link failed, ended, or was written after the close: not reused.
    link_broken: bool,
}

/// Flushes deferred in a row at most, so a client that never stops sending
/// still gets its replies in batches of this many.
pub const MAX_DEFERRED_FLUSHES: usize = 64;

/// What carries a session's messages.
#[derive(Debug)]
enum Transport {
    /// Records on the link from the gateway (framed mode).
    Link(Framed<LinkStream, RecordCodec>),
    /// Framed mode on a carrier: the client's messages come on its link,
    /// ours go as FANOUT records on the gateway's carrier (pings excepted).
    Carried(Box<Carried>),
    /// The client's own socket (direct mode).
    Direct(Box<DirectClient>),
    /// Nothing: the link went back for another client as the session was
    /// dropped (never seen by a live session).
    Returned,
}

/// A carried session's own link and its place on the carrier.
#[derive(Debug)]
struct Carried {
    framed: Framed<LinkStream, RecordCodec>,
    link: CarriedLink,
}

impl Session {
    /// A session on `transport`, nothing read or sent yet.
    fn new(meta: Box<OpenMeta>, transport: Transport, metrics: Metrics) -> Session {
        Session {
            meta,
            transport,
            peeked: None,
            unflushed: false,
            n_deferred: 0,
            defer_flushes: true,
            metrics,
            give_back: None,
            close_sent: false,
            close_received: false,
            link_broken: false,
        }
    }

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
            Transport::Link(_) | Transport::Direct(_) | Transport::Returned => None,
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
            // Nothing follows the gateway's CLOSE for this client: on a link
            // kept for the next one, reading on would wait for that client.
            Transport::Link(_) if self.close_received => Poll::Ready(None),
            // After its own close, a session whose link is to be reused
            // reads no more: `EndedLink::finish` reads exactly up to the
            // gateway's CLOSE, which the next client's records may follow.
            Transport::Link(_) if self.close_sent && self.give_back.is_some() => Poll::Ready(None),
            Transport::Link(framed) => {
                let polled = poll_link_next(framed, cx);
                match &polled {
                    Poll::Ready(Some(Ok(Message::Close(_)))) => self.close_received = true,
                    Poll::Ready(Some(Err(_)) | None) => self.link_broken = true,
                    _ => {}
                }
                polled
            }
            Transport::Carried(carried) => poll_link_next(&mut carried.framed, cx),
            Transport::Direct(client) => client.poll_next_unpin(cx).map(|item| item.map(Ok)),
            Transport::Returned => Poll::Ready(None),
        }
    }

    /// Flushes the transport, clearing `unflushed` once it took everything.
    fn poll_transport_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SessionError>> {
        let flushed = match &mut self.transport {
            Transport::Link(framed) => {
                let flushed = framed.poll_flush_unpin(cx).map_err(SessionError::from);
                self.link_broken |= matches!(flushed, Poll::Ready(Err(_)));
                flushed
            }
            Transport::Carried(carried) => poll_carried_flush(carried, cx),
            Transport::Direct(client) => client.poll_flush_unpin(cx).map_err(SessionError::from),
            Transport::Returned => Poll::Ready(Ok(())),
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
    framed: &mut Framed<LinkStream, RecordCodec>,
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
            Transport::Returned => Poll::Ready(Ok(())),
        }
    }

    fn start_send(mut self: Pin<&mut Self>, message: Message) -> Result<(), SessionError> {
        // Nothing may follow a close on a link that is to be reused.
        self.link_broken |= self.close_sent;
        if message.is_close() {
            self.defer_flushes = false;
            self.close_sent = true;
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
            Transport::Returned => Ok(()),
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
            Transport::Returned => Poll::Ready(Ok(())),
        }
    }
}

impl Drop for Session {
    /// A framed session offered for reuse gives its link back (unless it
    /// broke); `serve` completes the CLOSEs and reads the next OPEN on it.
    fn drop(&mut self) {
        let Some(give_back) = self.give_back.take() else {
            return;
        };
        if self.link_broken || !matches!(self.transport, Transport::Link(_)) {
            return;
        }
        let Transport::Link(framed) = std::mem::replace(&mut self.transport, Transport::Returned)
        else {
            return;
        };
        // The link task may be gone (shutdown); then the link just closes.
        let _ = give_back.sender.send(EndedLink {
            framed,
            direct_options: give_back.direct_options,
            metrics: self.metrics.clone(),
            open_handoff: give_back.open_handoff,
            close_sent: self.close_sent,
            close_received: self.close_received,
        });
    }
}
