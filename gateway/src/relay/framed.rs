//! The framed relay: each whole client message becomes one TEXT or BINARY
//! record on the link and each record one message to the client; closes cross
//! as CLOSE records with their code and reason.
//!
//! One poll function moves both directions in the client's one task
//! ([`Relay::poll_relay`]), reading each socket into a buffer, turning every
//! whole frame or record in it into the other side's form directly in that
//! side's output buffer (the client's frames are unmasked in place,
//! `link::frames::FrameReader`), and writing each output with one syscall per
//! burst. Nothing is allocated per message, and there is no second task, no
//! split halves and no WebSocket library between the sockets: the per-message
//! cost is a header parse and one copy of the payload (BENCHMARKS.md).
//!
//! Backpressure: a side whose output holds [`OUTPUT_HIGH_WATER`] bytes stops
//! the reading of the other side (and the client's own output, which holds
//! the pongs to its pings, stops the reading of the client too), so a client
//! that does not read stops the gateway reading its backend's link, and a
//! backend that does not read stops the gateway reading that client, and no
//! one else. Idle, a client holds no
//! buffer at all: each one is dropped when empty and nothing is ready.
//!
//! A backend's PING record becomes a ping to the client, and the client's
//! pong with that payload a PONG record back (a backend measuring a round
//! trip); every other ping and pong stays between the gateway and the client.
//!
//! A client seated on a carrier (`crate::carrier`, the backend's ACCEPT said
//! so) gets its messages and its close from its inbox instead of its own
//! link, which then carries only PINGs; the end of that link is not the end
//! of the client, whose inbox brings its CLOSE (or `1011` if the carrier
//! ends first).

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use link::LinkStream;
use link::deflate::MessageDeflater;
use link::keepalive::{IdleTimer, PingTicker};
use link::message::{close_frame_for_client, close_info};
use link::record::{HEADER_LEN, decode_header, encode_header};
use link::websocket::{
    OUTPUT_HIGH_WATER, ReadAhead, client_reader, consume, poll_write_out, provision,
    provision_burst, read_to_end_dropping, release_all, reserve_for,
};
use link::{CloseInfo, DeflateParams, LinkError, Record, RecordCodec, RecordKind};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_util::codec::{Decoder, Encoder};
use tokio_util::io::poll_read_buf;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tracing::Instrument;

use crate::backend::FramedLink;
use crate::carrier::{Drained, InboxEnd, Seat};
use crate::client_stream::ClientStream;
use crate::link_pool::LinkReuse;
use crate::metrics::ClientMetrics;

use super::wakeups::{Source, Task};
use super::{ClientGone, Ending, LinkFailure, RelaySettings};
use link::fanout::FanoutMessage;
use link::frames::{
    FrameError, FrameReader, Inbound, Parsed, put_frame, put_message, put_prepared,
};

/// Relays between the upgraded client connection (`stream`, with the bytes
/// hyper read past the handshake in `pending`) and the accepted `link`
/// until one side closes or `shutdown` fires, then completes the close
/// handshakes on both sides. With `reuse` (the backend offered
/// `reuse_framed`), a link on which each side sent and received one CLOSE
/// goes back to the pool for the next client. `span` (the client's) is
/// entered to log, not on every poll of the data path.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run<S: ClientStream>(
    stream: S,
    pending: Bytes,
    deflate: Option<DeflateParams>,
    link: FramedLink,
    seat: Option<Seat>,
    reuse: Option<LinkReuse<'_>>,
    settings: &RelaySettings,
    shutdown: &CancellationToken,
    metrics: &ClientMetrics,
    span: &tracing::Span,
) {
    let mut relay = Relay::new(stream, pending, deflate, link, seat, settings);
    let ending = {
        let mut cancelled = std::pin::pin!(shutdown.cancelled());
        poll_fn(|cx| relay.poll_relay(cx, cancelled.as_mut(), metrics)).await
    };
    span.in_scope(|| ending.log());
    metrics.ended(&ending);
    relay
        .close(&ending, settings, reuse)
        .instrument(span.clone())
        .await;
}

/// The client's side: its connection, what was read from it and not yet
/// relayed, and the frames waiting to be written to it.
struct ClientSide<S> {
    io: ReadAhead<S>,
    /// Whether the client's socket woke the task (`wakeups`).
    wake: Source,
    input: BytesMut,
    output: BytesMut,
    frames: FrameReader,
    deflater: Option<MessageDeflater>,
}

/// The backend's side: the link, its unread records and the records waiting for it.
struct LinkSide {
    io: LinkStream,
    /// Whether the link woke the task (`wakeups`).
    wake: Source,
    input: BytesMut,
    output: BytesMut,
    codec: RecordCodec,
}

/// One client's relay.
struct Relay<S> {
    client: ClientSide<S>,
    link: LinkSide,
    idle: IdleTimer,
    pings: PingTicker,
    /// Whether the idle timer, the ping ticker or the shutdown woke the
    /// task: they are polled with this source's waker, and asked again only
    /// once it woke (`wakeups`), not on every pass.
    alarms: Source,
    /// The task the sources' wakers wake.
    task: Task,
    /// The payload of the backend's last PING, until the client's pong to it.
    asked: Option<Bytes>,
    /// The client's place on its backend's carrier, if it is carried.
    seat: Option<Seat>,
    /// A carried client's own link ended: it is no longer read or written.
    link_ended: bool,
}

impl<S: ClientStream> Relay<S> {
    fn new(
        stream: S,
        pending: Bytes,
        deflate: Option<DeflateParams>,
        link: FramedLink,
        seat: Option<Seat>,
        settings: &RelaySettings,
    ) -> Relay<S> {
        let (io, input) = client_reader(stream, &pending, deflate, settings.max_message_size);
        let parts = link.into_parts();
        Relay {
            client: ClientSide {
                io,
                wake: Source::new(S::EXACT_READ_WAKEUPS),
                input,
                output: BytesMut::new(),
                frames: FrameReader::new(settings.max_message_size),
                deflater: deflate.map(MessageDeflater::new),
            },
            link: LinkSide {
                io: parts.io,
                wake: Source::new(true),
                // Records the backend sent right behind its ACCEPT are already here.
                input: parts.read_buf,
                output: BytesMut::new(),
                codec: parts.codec,
            },
            idle: IdleTimer::new(settings.idle_timeout),
            pings: PingTicker::new(settings.ping_interval),
            alarms: Source::new(true),
            task: Task::default(),
            asked: None,
            seat,
            link_ended: false,
        }
    }

    /// Moves messages both ways until one side ends the relay.
    /// `shutdown` is the gateway's shutdown, polled with the alarms.
    fn poll_relay(
        &mut self,
        cx: &mut Context<'_>,
        mut shutdown: Pin<&mut WaitForCancellationFuture<'_>>,
        metrics: &ClientMetrics,
    ) -> Poll<Ending> {
        self.task
            .register(cx, [&self.client.wake, &self.link.wake, &self.alarms]);
        loop {
            if self.alarms.may_read() {
                let mut alarm = self.alarms.context();
                if shutdown.as_mut().poll(&mut alarm).is_ready() {
                    return Poll::Ready(Ending::Shutdown);
                }
                if self.idle.poll_expired(&mut alarm).is_ready() {
                    return Poll::Ready(Ending::Idle);
                }
                while self.pings.poll_tick(&mut alarm).is_ready() {
                    put_frame(&mut self.client.output, OpCode::Control(Control::Ping), &[]);
                }
                // All three wait, holding this source's waker.
                self.alarms.found_nothing();
            }
            let upstream = match self.upstream(metrics) {
                Ok(step) => step,
                Err(ending) => return Poll::Ready(ending),
            };
            let downstream = match self.downstream(metrics) {
                Ok(step) => step,
                Err(ending) => return Poll::Ready(ending),
            };
            let carried = match self.carried(cx, metrics) {
                Ok(step) => step,
                Err(ending) => return Poll::Ready(ending),
            };
            if self.link_ended {
                // What a carried client still sends has no one to go to.
                self.link.output.clear();
            } else if let Poll::Ready(Err(error)) =
                poll_write_out(&mut self.link.io, &mut self.link.output, cx)
            {
                if self.seat.is_none() {
                    return Poll::Ready(Ending::BackendGone(LinkFailure::Write(error.into())));
                }
                self.link_ended = true;
            }
            if let Poll::Ready(Err(error)) =
                poll_write_out(&mut self.client.io, &mut self.client.output, cx)
            {
                return Poll::Ready(Ending::ClientGone(ClientGone::Write(error)));
            }
            // Go round again only when a direction stopped at a full output
            // that has drained since. A direction that read ends its pass
            // at a read that waits (a wake-up is due), so another pass
            // would only ask every source again for nothing.
            let again = |step: Step, full: bool| match step {
                Step::Full => !full,
                Step::Waiting => false,
            };
            if again(upstream, upstream_full(&self.client, &self.link))
                || again(downstream, downstream_full(&self.client))
                || again(carried, downstream_full(&self.client))
            {
                continue;
            }
            self.release_idle_buffers();
            return Poll::Pending;
        }
    }

    /// Reads the client and turns its whole frames into records in the
    /// link's output, until that output is full or the client has nothing more now.
    fn upstream(&mut self, metrics: &ClientMetrics) -> Result<Step, Ending> {
        let client = &mut self.client;
        let link = &mut self.link;
        // Found empty, and not woken since: all it sent was parsed then.
        if !client.wake.may_read() {
            return Ok(Step::Waiting);
        }
        let mut tally = metrics.to_backend.tally();
        loop {
            // A burst's frames are read at increasing offsets and the input
            // consumed once, whatever ends the burst.
            let mut at = 0;
            let burst = loop {
                // Its pongs wait in the client's own output: a client that
                // pings and never reads is not read either.
                if upstream_full(client, link) {
                    break Burst::Stop(Ok(Step::Full));
                }
                let (inbound, used) = match client.frames.read(&mut client.input[at..]) {
                    Ok(Parsed::Frame(inbound, used)) => (inbound, used),
                    Ok(Parsed::Need(need)) => break Burst::Need(need),
                    Err(error) => break Burst::Stop(Err(client_failed(error))),
                };
                match inbound {
                    Inbound::Text(text) => {
                        put_record(&mut link.output, RecordKind::Text, text.as_bytes());
                        tally.count(text.len());
                    }
                    Inbound::Binary(payload) => {
                        put_record(&mut link.output, RecordKind::Binary, payload);
                        tally.count(payload.len());
                    }
                    // A ping is answered here; it does not cross the link.
                    Inbound::Ping(payload) => {
                        put_frame(&mut client.output, OpCode::Control(Control::Pong), payload);
                    }
                    Inbound::Pong(payload) => {
                        if self.asked.as_deref() == Some(payload) {
                            self.asked = None;
                            put_record(&mut link.output, RecordKind::Pong, payload);
                        }
                    }
                    Inbound::Close(frame) => {
                        // The reply echoes the client's code, as tungstenite's did.
                        put_prepared(&mut client.output, Frame::close(frame.clone()));
                        at += used;
                        break Burst::Stop(Err(Ending::ClientClosed(frame)));
                    }
                    Inbound::Fragment => {}
                }
                at += used;
                client.frames.finish();
            };
            consume(&mut client.input, at);
            let need = match burst {
                Burst::Need(need) => need,
                Burst::Stop(step) => return step,
            };
            // Woken by the socket: its readiness came, no need to ask first.
            let ready: ReadReady<S> = if client.wake.marked() {
                |_, _| Poll::Ready(Ok(()))
            } else {
                S::poll_read_ready
            };
            let mut cx = client.wake.context();
            match client
                .io
                .poll_read_burst(&mut cx, &mut client.input, need, ready)
            {
                Poll::Pending => {
                    client.wake.found_nothing();
                    return Ok(Step::Waiting);
                }
                Poll::Ready(Ok(0)) => return Err(Ending::ClientGone(ClientGone::Vanished)),
                Poll::Ready(Ok(_)) => {
                    // Heard per read, not per message: one clock read for a burst.
                    self.idle.heard();
                    provision_burst(&mut link.output);
                }
                Poll::Ready(Err(error)) => return Err(client_read_error(error)),
            }
        }
    }

    /// Reads the link and turns its whole records into frames in the
    /// client's output, until that output is full or the link has nothing more now.
    fn downstream(&mut self, metrics: &ClientMetrics) -> Result<Step, Ending> {
        // Found empty, and not woken since: all it sent was parsed then.
        if self.link_ended || !self.link.wake.may_read() {
            return Ok(Step::Waiting);
        }
        let carried = self.seat.is_some();
        let client = &mut self.client;
        let link = &mut self.link;
        let mut tally = metrics.to_client.tally();
        let gone = |error: LinkError| Ending::BackendGone(LinkFailure::Read(error));
        // A carried client's messages come from its inbox, in the carrier's order.
        let not_here = |kind: &'static str| Ending::BackendGone(LinkFailure::Unexpected(kind));
        loop {
            // A burst's records are read at increasing offsets and the input
            // consumed once, whatever ends the burst.
            let mut at = 0;
            let burst = loop {
                if downstream_full(client) {
                    break Burst::Stop(Ok(Step::Full));
                }
                let input = &link.input[at..];
                let Some(&header) = input.first_chunk::<HEADER_LEN>() else {
                    break Burst::Need(HEADER_LEN - input.len());
                };
                let (kind, len) = match decode_header(header, link.codec.max_payload()) {
                    Ok(header) => header,
                    Err(error) => break Burst::Stop(Err(gone(error))),
                };
                let total = HEADER_LEN + len;
                if input.len() < total {
                    break Burst::Need(total - input.len());
                }
                let payload = &input[HEADER_LEN..total];
                match kind {
                    RecordKind::Text | RecordKind::Binary if carried => {
                        break Burst::Stop(Err(not_here(kind.name())));
                    }
                    RecordKind::Text => {
                        let Ok(text) = std::str::from_utf8(payload) else {
                            break Burst::Stop(Err(gone(LinkError::InvalidUtf8)));
                        };
                        put_text(&mut client.output, &mut client.deflater, text);
                        tally.count(len);
                    }
                    RecordKind::Binary => {
                        put_binary(&mut client.output, &mut client.deflater, payload);
                        tally.count(len);
                    }
                    _ => {
                        // Rare records go through the codec, which checks them.
                        consume(&mut link.input, at);
                        at = 0;
                        let record = match link.codec.decode(&mut link.input) {
                            Ok(record) => record.expect("the whole record is buffered"),
                            Err(error) => break Burst::Stop(Err(gone(error))),
                        };
                        match record {
                            Record::Ping(payload) => {
                                put_frame(
                                    &mut client.output,
                                    OpCode::Control(Control::Ping),
                                    &payload,
                                );
                                self.asked = Some(payload);
                            }
                            Record::Close(_) if carried => {
                                break Burst::Stop(Err(not_here("CLOSE")));
                            }
                            Record::Close(info) => {
                                break Burst::Stop(Err(Ending::BackendClosed(
                                    info.map(close_frame_for_client),
                                )));
                            }
                            other => {
                                break Burst::Stop(Err(Ending::BackendGone(
                                    LinkFailure::Unexpected(other.name()),
                                )));
                            }
                        }
                        continue;
                    }
                }
                at += total;
            };
            consume(&mut link.input, at);
            let need = match burst {
                Burst::Need(need) => need,
                Burst::Stop(step) => return step,
            };
            // No buffer is taken to find the link empty (its readiness came
            // if it woke the task).
            let mut cx = link.wake.context();
            if link.input.is_empty()
                && !link.wake.marked()
                && link.io.poll_read_ready(&mut cx).is_pending()
            {
                link.wake.found_nothing();
                return Ok(Step::Waiting);
            }
            reserve_for(&mut link.input, need);
            match poll_read_buf(Pin::new(&mut link.io), &mut cx, &mut link.input) {
                Poll::Pending => {
                    link.wake.found_nothing();
                    return Ok(Step::Waiting);
                }
                Poll::Ready(Ok(0) | Err(_)) if carried => {
                    // Its CLOSE comes from the carrier.
                    self.link_ended = true;
                    return Ok(Step::Waiting);
                }
                Poll::Ready(Ok(0)) => {
                    return Err(Ending::BackendGone(if link.input.is_empty() {
                        LinkFailure::Eof
                    } else {
                        LinkFailure::Read(LinkError::Truncated)
                    }));
                }
                Poll::Ready(Ok(_)) => provision_burst(&mut client.output),
                Poll::Ready(Err(error)) => return Err(gone(error.into())),
            }
        }
    }

    /// A carried client: moves what its inbox holds into its output, until
    /// that output is full or the inbox is empty; its end ends the relay.
    fn carried(&mut self, cx: &mut Context<'_>, metrics: &ClientMetrics) -> Result<Step, Ending> {
        let Some(seat) = &self.seat else {
            return Ok(Step::Waiting);
        };
        let client = &mut self.client;
        if downstream_full(client) {
            // A client that takes nothing is closed without waiting for its output.
            if seat.evicted(cx) {
                return Err(Ending::TooSlow);
            }
            return Ok(Step::Full);
        }
        let mut tally = metrics.to_client.tally();
        let deflater = &mut client.deflater;
        let drained = seat.drain(cx, &mut client.output, &mut tally, |output, message| {
            // Only a client with compression gets messages one by one.
            match message {
                FanoutMessage::Text(text) => put_text(output, deflater, text),
                FanoutMessage::Binary(payload) => put_binary(output, deflater, payload),
                FanoutMessage::Close(_) => {}
            }
            output.len() < OUTPUT_HIGH_WATER
        });
        match drained {
            Drained::Ended(InboxEnd::Closed(info)) => {
                Err(Ending::BackendClosed(info.map(close_frame_for_client)))
            }
            Drained::Ended(InboxEnd::CarrierGone) => {
                Err(Ending::BackendGone(LinkFailure::CarrierEnded))
            }
            Drained::Ended(InboxEnd::TooSlow) => Err(Ending::TooSlow),
            Drained::Stopped => Ok(Step::Full),
            Drained::Empty if downstream_full(client) => Ok(Step::Full),
            Drained::Empty => Ok(Step::Waiting),
        }
    }

    /// Gives back every buffer that holds nothing, so an idle client costs none.
    fn release_idle_buffers(&mut self) {
        release_all([
            &mut self.client.input,
            &mut self.client.output,
            &mut self.link.input,
            &mut self.link.output,
        ]);
    }

    /// Finishes both close handshakes for `ending`, at once, each within the
    /// close timeout; with `reuse`, a link left clean goes to its pool.
    async fn close(
        mut self,
        ending: &Ending,
        settings: &RelaySettings,
        reuse: Option<LinkReuse<'_>>,
    ) {
        let timeout = settings.close_timeout;
        // Ends after which the link may serve another client: not a broken
        // link, not a carried client, not the gateway's shutdown.
        let reusable = reuse.is_some()
            && self.seat.is_none()
            && matches!(
                ending,
                Ending::ClientClosed(_)
                    | Ending::ClientGone(_)
                    | Ending::ClientFailed { .. }
                    | Ending::Idle
                    | Ending::BackendClosed(_)
            );
        let Relay { client, link, .. } = &mut self;
        // The backend learns how the client left, unless it is the one that left.
        let close_record = match ending {
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
            Ending::TooSlow => Some(Record::Close(Some(CloseInfo {
                code: u16::from(CloseCode::Policy),
                reason: super::TOO_SLOW_REASON.to_owned(),
            }))),
            // A link kept for reuse answers the backend's CLOSE with one.
            Ending::BackendClosed(_) if reusable => Some(Record::Close(None)),
            Ending::BackendClosed(_) | Ending::BackendGone(_) => None,
        };
        // Half-close the link, then read it to its end: closing a UNIX socket with
        // unread data in it would reset the backend's side instead of ending it.
        // A link kept for reuse instead reads on to the backend's CLOSE (if it
        // has not come yet) and is clean if nothing follows it.
        let close_link = async {
            if let Some(record) = close_record {
                let _ = link.codec.encode(record, &mut link.output);
            }
            if poll_fn(|cx| poll_write_out(&mut link.io, &mut link.output, cx))
                .await
                .is_err()
            {
                return false;
            }
            if reusable {
                let closed =
                    matches!(ending, Ending::BackendClosed(_)) || read_to_backend_close(link).await;
                if closed && link.input.is_empty() {
                    return true;
                }
            }
            let _ = link.io.shutdown().await;
            read_to_end_dropping(&mut link.io, &mut link.input).await;
            false
        };
        let close_client = async {
            let handshake = async {
                if let Some(frame) = ending.close_for_client() {
                    put_prepared(&mut client.output, Frame::close(frame));
                }
                if poll_fn(|cx| poll_write_out(&mut client.io, &mut client.output, cx))
                    .await
                    .is_err()
                {
                    return;
                }
                // The gateway started the close: read (and drop) what the client
                // still sends until its reply.
                match ending {
                    Ending::ClientClosed(_) | Ending::ClientGone(_) => return,
                    Ending::ClientFailed { .. } => {
                        // Its frames cannot be read on (a protocol error, a
                        // compressed message that failed), but it may still be
                        // sending the rest of what failed: end the gateway's
                        // side, then drop its bytes until it closes, so that
                        // closing with bytes unread does not reset the
                        // connection before the client has read its close.
                        let _ = client.io.shutdown().await;
                        read_to_end_dropping(client.io.get_mut(), &mut client.input).await;
                        return;
                    }
                    _ => {}
                }
                loop {
                    match client.frames.read(&mut client.input) {
                        Ok(Parsed::Frame(Inbound::Close(_), _)) | Err(_) => return,
                        Ok(Parsed::Frame(_, used)) => {
                            client.input.advance(used);
                            client.frames.finish();
                        }
                        Ok(Parsed::Need(need)) => {
                            reserve_for(&mut client.input, need);
                            match poll_fn(|cx| client.io.poll_read_into(cx, &mut client.input))
                                .await
                            {
                                Ok(1..) => {}
                                Ok(0) | Err(_) => return,
                            }
                        }
                    }
                }
            };
            if tokio::time::timeout(timeout, handshake).await.is_err() {
                tracing::debug!("client did not finish the close handshake in time");
            }
            // A TLS client gets its close_notify, a plain one its FIN.
            let _ = tokio::time::timeout(timeout, client.io.shutdown()).await;
        };
        // Both closes at once, each bounded: a stuck backend cannot delay the client's.
        let close_link = async {
            tokio::time::timeout(timeout, close_link)
                .await
                .unwrap_or(false)
        };
        let (clean, ()) = tokio::join!(close_link, close_client);
        if clean && let Some(reuse) = reuse {
            reuse.keep(self.link.io);
            // Logged once the link is back for the next client (tests wait on it).
            tracing::debug!("link kept for the next client");
        }
    }
}

/// Reads `link` up to the backend's CLOSE, dropping what the backend sent
/// before it had the gateway's: false if the link ends, breaks or carries
/// anything else first.
async fn read_to_backend_close(link: &mut LinkSide) -> bool {
    loop {
        match link.codec.decode(&mut link.input) {
            Ok(Some(Record::Close(_))) => return true,
            Ok(Some(Record::Text(_) | Record::Binary(_) | Record::Ping(_))) => continue,
            Ok(Some(_)) | Err(_) => return false,
            Ok(None) => {}
        }
        reserve_for(&mut link.input, HEADER_LEN);
        match poll_fn(|cx| poll_read_buf(Pin::new(&mut link.io), cx, &mut link.input)).await {
            Ok(1..) => {}
            Ok(0) | Err(_) => return false,
        }
    }
}

/// Reading the client must wait for an output to drain: the link's, or its
/// own (the pongs to its pings).
fn upstream_full<S>(client: &ClientSide<S>, link: &LinkSide) -> bool {
    link.output.len() >= OUTPUT_HIGH_WATER || client.output.len() >= OUTPUT_HIGH_WATER
}

/// Reading the link must wait for the client's output to drain.
fn downstream_full<S>(client: &ClientSide<S>) -> bool {
    client.output.len() >= OUTPUT_HIGH_WATER
}

/// How a burst of one direction's input ended: wanting more bytes (at
/// least this many), or with the direction's step for this pass.
enum Burst {
    Need(usize),
    Stop(Result<Step, Ending>),
}

/// How far one direction got in one pass.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// It stopped because the other side's output is full.
    Full,
    /// Its read is waiting (a wake-up is due when data comes), or its
    /// source is gone.
    Waiting,
}

/// A text message for the client into its `output`: one frame, compressed
/// if permessage-deflate was agreed (`deflater`).
fn put_text(output: &mut BytesMut, deflater: &mut Option<MessageDeflater>, text: &str) {
    match deflater.as_mut() {
        None => put_frame(output, OpCode::Data(Data::Text), text.as_bytes()),
        Some(deflater) => put_message(
            output,
            deflater.compress(Message::Text(Utf8Bytes::from(text))),
        ),
    }
}

/// A binary message for the client into its `output`: one frame,
/// compressed if permessage-deflate was agreed (`deflater`).
fn put_binary(output: &mut BytesMut, deflater: &mut Option<MessageDeflater>, payload: &[u8]) {
    match deflater.as_mut() {
        None => put_frame(output, OpCode::Data(Data::Binary), payload),
        Some(deflater) => put_message(
            output,
            deflater.compress(Message::Binary(Bytes::copy_from_slice(payload))),
        ),
    }
}

/// Appends one record of `kind` carrying `payload` (within the limit, checked by the reader).
fn put_record(out: &mut BytesMut, kind: RecordKind, payload: &[u8]) {
    provision(out);
    out.reserve(HEADER_LEN + payload.len());
    let len = u32::try_from(payload.len()).expect("messages are bounded far below 4 GiB");
    out.extend_from_slice(&encode_header(kind, len));
    out.extend_from_slice(payload);
}

/// How a read step asks a client's socket whether it has anything.
type ReadReady<S> = fn(&S, &mut Context<'_>) -> Poll<io::Result<()>>;

/// The ending for frames the client got wrong.
fn client_failed(error: FrameError) -> Ending {
    let (code, reason) = error.close();
    Ending::ClientFailed {
        code,
        reason,
        error: Box::new(error),
    }
}

/// The ending for a failed read of the client: a compressed message that
/// broke a limit gets its close code (`link::close_for_read_error`, the
/// table a direct client uses too), anything else means the client is gone.
fn client_read_error(error: io::Error) -> Ending {
    match link::close_for_read_error(&error) {
        Some((code, reason)) => Ending::ClientFailed {
            code,
            reason,
            error: Box::new(error),
        },
        None => Ending::ClientGone(ClientGone::Read(error)),
    }
}
