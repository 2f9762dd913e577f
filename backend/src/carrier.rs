//! Fan-out over carrier links (`docs/link-protocol.md`, *Fan-out*): one
//! message for many relayed clients of one gateway crosses the link once, as
//! a FANOUT record on that gateway's carrier link.
//!
//! A server opts in with [`crate::ServeOptions::fanout`]. Then `serve` takes
//! a link whose OPEN says `"mode": "carrier"`, registers it under its key in
//! a [`CarrierRegistry`] (at most [`MAX_CARRIERS`]; more get REJECT `503`),
//! answers ACCEPT and runs it ([`run_carrier`]) without a client or
//! pending-link slot. A framed client whose OPEN names a registered key is
//! *carried*: its `Session` sends its text, binary and close messages as
//! FANOUT records for its id on the carrier's queue ([`CarriedLink`]), and
//! only its pings on its own link; its incoming messages still come on its
//! own link. A server sending one message to many clients groups them by
//! [`Carrier`] (`Session::carrier`) and sends one record per carrier.
//!
//! Each carrier has one queue of encoded records, bounded in bytes
//! ([`CARRIER_QUEUE_BYTES`], counting what is queued and what its writer
//! has taken but not written yet; a single larger record still goes into an
//! empty queue); its writer writes everything queued with one `write` per
//! burst. A carried session's flush is done once its messages are in the
//! queue (it does not wait for the gateway to read them); its `poll_ready`
//! waits while the queue has no room for the message it holds back. A
//! gateway that takes nothing from a carrier for
//! [`MIN_CARRIER_WRITE_TIMEOUT`] (or four times `stall_ms`) while records
//! wait is taken for hung: the carrier is closed. When the carrier ends (the gateway closed it, sent anything on
//! it, or a write failed) it leaves the registry, drops what it held, and
//! every later send on it fails, so its sessions end. A carried session
//! dropped without having sent a close sends FANOUT CLOSE `1011`, since the
//! gateway waits for the carrier's CLOSE of each carried client.

use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use link::LinkStream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::codec::Encoder;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use link::fanout::{FANOUT_HEAD_LEN, Fanout, FanoutMessage, MAX_RECIPIENTS, put_fanout};
use link::message::close_info;
use link::record::HEADER_LEN;
use link::{CarrierTerms, Record, RecordCodec, RecordKind};

use crate::metrics::Metrics;

/// The most carrier links one `serve` holds at once (one per gateway
/// process, so this is plenty); the next carrier OPEN gets REJECT `503`.
pub const MAX_CARRIERS: usize = 64;

/// Bytes of encoded FANOUT records one carrier holds before senders wait:
/// queued, or taken by its writer and not yet written. A single larger
/// record still goes into an empty queue.
pub const CARRIER_QUEUE_BYTES: usize = 1 << 20;

/// The least time a carrier's socket may take nothing while records wait
/// before the carrier is closed as hung; it is at least four times the
/// terms' `stall_ms`, since the gateway may wait that long for a recipient
/// before it closes it and reads on.
pub const MIN_CARRIER_WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// What a carrier's writer keeps of its buffer while idle; a bigger one,
/// left by a burst, is dropped.
const IDLE_BUFFER: usize = 64 << 10;

/// The close a carried session gets when it is dropped without sending one:
/// what a relayed client gets when its link ends without CLOSE.
const DROPPED_CLOSE_CODE: u16 = 1011;

/// Why a message did not go on a carrier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CarrierSendError {
    /// The queue has no room for it now; wait ([`Carrier::room`]) and try again.
    #[error("carrier queue full")]
    Full,
    /// The carrier has ended: its clients are gone (the gateway closes them with `1011`).
    #[error("carrier link closed")]
    Closed,
    /// The message is longer than a record may be.
    #[error("message of {len} bytes is longer than a link record may be ({max})")]
    TooLarge {
        /// The message's payload length.
        len: usize,
        /// The largest payload a record may have.
        max: usize,
    },
    /// Only text, binary and close messages travel on a carrier.
    #[error("only text, binary and close messages travel on a carrier")]
    NotSendable,
    /// A send needs at least one recipient.
    #[error("no recipients")]
    NoRecipients,
}

/// A carrier link of one gateway: a handle to send one message to many of
/// its clients (those whose `Session::carrier` names it). Cheap to clone;
/// clones are equal and hash alike, so a server can group recipients by
/// carrier.
#[derive(Clone)]
pub struct Carrier {
    shared: Arc<Shared>,
}

struct Shared {
    /// The key the gateway gave it (its OPEN's `id`).
    key: u64,
    /// The largest message payload a record may carry.
    max_payload: usize,
    /// [`CARRIER_QUEUE_BYTES`], smaller in tests.
    queue_limit: usize,
    state: Mutex<State>,
    /// Wakes the writer: records were queued, or a carried session ended.
    arrived: Notify,
    /// Cancelled when the carrier ends.
    ended: CancellationToken,
    metrics: Metrics,
}

struct State {
    /// Encoded FANOUT records not yet taken by the writer.
    queue: BytesMut,
    /// Bytes queued or taken by the writer and not yet written.
    n_bytes: usize,
    /// The carrier has ended; nothing more goes in.
    closed: bool,
    /// Carried sessions alive: at shutdown the writer waits for them.
    n_sessions: usize,
    /// Senders waiting for room (each woken once per change).
    waiters: Vec<Waker>,
    /// Encodes the CLOSE records, with their checks.
    codec: RecordCodec,
}

impl fmt::Debug for Carrier {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Carrier")
            .field("key", &self.shared.key)
            .finish_non_exhaustive()
    }
}

impl PartialEq for Carrier {
    fn eq(&self, other: &Carrier) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

impl Eq for Carrier {}

impl Hash for Carrier {
    fn hash<H: Hasher>(&self, state: &mut H) {
        std::ptr::hash(Arc::as_ptr(&self.shared), state);
    }
}

/// The encoded length of a FANOUT record of a message with `payload_len`
/// bytes for `n_recipients`, split at [`MAX_RECIPIENTS`] as [`Carrier::try_send`] does.
pub fn fanout_len(payload_len: usize, n_recipients: usize) -> usize {
    let n_records = n_recipients.div_ceil(MAX_RECIPIENTS).max(1);
    n_records
        .saturating_mul(HEADER_LEN + FANOUT_HEAD_LEN + payload_len)
        .saturating_add(8 * n_recipients)
}

/// The payload length of `message` as a record carries it.
fn payload_len(message: &Message) -> Result<usize, CarrierSendError> {
    match message {
        Message::Text(_) | Message::Binary(_) => Ok(message.len()),
        Message::Close(None) => Ok(0),
        Message::Close(Some(frame)) => Ok(2 + close_info(frame).reason.len()),
        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {
            Err(CarrierSendError::NotSendable)
        }
    }
}

impl Carrier {
    fn new(key: u64, max_payload: usize, queue_limit: usize, metrics: Metrics) -> Carrier {
        Carrier {
            shared: Arc::new(Shared {
                key,
                max_payload,
                queue_limit,
                state: Mutex::new(State {
                    queue: BytesMut::new(),
                    n_bytes: 0,
                    closed: false,
                    n_sessions: 0,
                    waiters: Vec::new(),
                    codec: RecordCodec::new(max_payload),
                }),
                arrived: Notify::new(),
                ended: CancellationToken::new(),
                metrics,
            }),
        }
    }

    /// The key the gateway gave this carrier.
    pub fn key(&self) -> u64 {
        self.shared.key
    }

    /// Whether the carrier has ended (every send fails).
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Resolves once the carrier has ended: its clients are gone (the
    /// gateway closes each with `1011`), so a server can end their sessions.
    pub async fn closed(&self) {
        self.shared.ended.cancelled().await;
    }

    /// Whether a message of `payload_len` bytes for `n_recipients` would go
    /// in now; also true once the carrier has ended (a send then fails at
    /// once rather than waiting).
    pub fn has_room(&self, payload_len: usize, n_recipients: usize) -> bool {
        let state = self.lock();
        state.closed || self.fits(&state, fanout_len(payload_len, n_recipients))
    }

    /// Queues `message` for `recipients` (client ids, OPEN's `id`) if the
    /// queue has room for it: one FANOUT record per [`MAX_RECIPIENTS`]. All
    /// of it goes in or nothing.
    pub fn try_send(&self, message: &Message, recipients: &[u64]) -> Result<(), CarrierSendError> {
        self.send_checked(message, recipients, true)
    }

    /// Queues `message` for `recipients` whether the queue has room or not,
    /// for a server that checked [`Carrier::has_room`] under a lock of its
    /// own (so that a message goes to every recipient or none) and then
    /// sends, under that lock, the message and the few lines of its own
    /// that the same operation makes. Other errors are as [`Carrier::try_send`]'s.
    pub fn send_unchecked(
        &self,
        message: &Message,
        recipients: &[u64],
    ) -> Result<(), CarrierSendError> {
        self.send_checked(message, recipients, false)
    }

    /// Waits until a message of `payload_len` bytes for `n_recipients`
    /// fits ([`Carrier::has_room`]).
    pub async fn room(&self, payload_len: usize, n_recipients: usize) {
        let len = fanout_len(payload_len, n_recipients);
        std::future::poll_fn(|cx| self.poll_room(cx, len)).await;
    }

    /// Queues `message` for `recipients`, waiting while the queue is full.
    pub async fn send(
        &self,
        message: &Message,
        recipients: &[u64],
    ) -> Result<(), CarrierSendError> {
        loop {
            match self.try_send(message, recipients) {
                Err(CarrierSendError::Full) => {
                    self.room(payload_len(message)?, recipients.len()).await;
                }
                sent => return sent,
            }
        }
    }

    /// Ready once `len` encoded bytes fit or the carrier has ended.
    fn poll_room(&self, cx: &mut Context<'_>, len: usize) -> Poll<()> {
        let mut state = self.lock();
        if state.closed || self.fits(&state, len) {
            return Poll::Ready(());
        }
        if !state
            .waiters
            .iter()
            .any(|waker| waker.will_wake(cx.waker()))
        {
            state.waiters.push(cx.waker().clone());
        }
        Poll::Pending
    }

    fn fits(&self, state: &State, len: usize) -> bool {
        state.n_bytes == 0 || state.n_bytes.saturating_add(len) <= self.shared.queue_limit
    }

    fn send_checked(
        &self,
        message: &Message,
        recipients: &[u64],
        bounded: bool,
    ) -> Result<(), CarrierSendError> {
        let payload_len = payload_len(message)?;
        if payload_len > self.shared.max_payload {
            return Err(CarrierSendError::TooLarge {
                len: payload_len,
                max: self.shared.max_payload,
            });
        }
        if recipients.is_empty() {
            return Err(CarrierSendError::NoRecipients);
        }
        let mut guard = self.lock();
        if guard.closed {
            return Err(CarrierSendError::Closed);
        }
        if bounded && !self.fits(&guard, fanout_len(payload_len, recipients.len())) {
            return Err(CarrierSendError::Full);
        }
        let state = &mut *guard;
        let before = state.queue.len();
        // The writer waits only after finding the queue empty.
        let was_empty = before == 0;
        for group in recipients.chunks(MAX_RECIPIENTS) {
            let encoded = match message {
                Message::Text(text) => {
                    put_fanout(&mut state.queue, RecordKind::Text, text.as_bytes(), group)
                }
                Message::Binary(payload) => {
                    put_fanout(&mut state.queue, RecordKind::Binary, payload, group)
                }
                Message::Close(frame) => {
                    Fanout::new(FanoutMessage::Close(frame.as_ref().map(close_info)), group)
                        .and_then(|fanout| {
                            state.codec.encode(Record::Fanout(fanout), &mut state.queue)
                        })
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {
                    unreachable!("payload_len refused it")
                }
            };
            if let Err(error) = encoded {
                // Checked above; nothing half-written stays queued anyway.
                warn!(%error, "cannot encode a FANOUT record");
                state.queue.truncate(before);
                return Err(CarrierSendError::TooLarge {
                    len: payload_len,
                    max: self.shared.max_payload,
                });
            }
        }
        state.n_bytes += state.queue.len() - before;
        if let Message::Text(_) | Message::Binary(_) = message {
            self.shared
                .metrics
                .sent_to_many(recipients.len(), payload_len);
        }
        drop(guard);
        if was_empty {
            self.shared.arrived.notify_one();
        }
        Ok(())
    }

    /// Moves what is queued into `out` (empty) for the writer.
    fn take_queued(&self, out: &mut BytesMut) {
        let mut state = self.lock();
        if !state.queue.is_empty() {
            std::mem::swap(out, &mut state.queue);
        }
    }

    /// The writer wrote `n` bytes: they no longer count; waiting senders try again.
    fn written(&self, n: usize) {
        let waiters = {
            let mut state = self.lock();
            state.n_bytes = state.n_bytes.saturating_sub(n);
            std::mem::take(&mut state.waiters)
        };
        for waker in waiters {
            waker.wake();
        }
    }

    /// Ends the carrier: nothing more goes in, what it held is dropped, and
    /// every waiting sender wakes to find it closed.
    fn close(&self) {
        let waiters = {
            let mut state = self.lock();
            state.closed = true;
            state.queue = BytesMut::new();
            state.n_bytes = 0;
            std::mem::take(&mut state.waiters)
        };
        self.shared.ended.cancel();
        for waker in waiters {
            waker.wake();
        }
    }

    fn n_sessions(&self) -> usize {
        self.lock().n_sessions
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update leaves the state consistent before anything can panic.
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// The carriers of one `serve`, by key.
#[derive(Debug)]
pub(crate) struct CarrierRegistry {
    carriers: Mutex<HashMap<u64, Carrier>>,
    /// What ACCEPT promises the gateway for each carried client.
    terms: CarrierTerms,
    max_payload: usize,
    metrics: Metrics,
}

/// Why a carrier OPEN is refused: the REJECT it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CarrierRefusal {
    /// [`MAX_CARRIERS`] are open: `503`.
    Full,
    /// A carrier with that key is open: `409`.
    KeyInUse,
}

impl CarrierRefusal {
    pub(crate) fn status(self) -> u16 {
        match self {
            CarrierRefusal::Full => 503,
            CarrierRefusal::KeyInUse => 409,
        }
    }

    pub(crate) fn reason(self) -> &'static str {
        match self {
            CarrierRefusal::Full => "too many carrier links",
            CarrierRefusal::KeyInUse => "a carrier link with this key is open",
        }
    }
}

impl CarrierRegistry {
    pub(crate) fn new(
        terms: CarrierTerms,
        max_payload: usize,
        metrics: Metrics,
    ) -> CarrierRegistry {
        CarrierRegistry {
            carriers: Mutex::new(HashMap::new()),
            terms,
            max_payload,
            metrics,
        }
    }

    /// The terms a carried client's ACCEPT gives the gateway.
    pub(crate) fn terms(&self) -> CarrierTerms {
        self.terms
    }

    /// How long a carrier's socket may take nothing while records wait.
    fn write_timeout(&self) -> Duration {
        MIN_CARRIER_WRITE_TIMEOUT.max(Duration::from_millis(self.terms.stall_ms.saturating_mul(4)))
    }

    /// Registers a new carrier under `key`, whose gateway reads messages of
    /// at most `gateway_max` bytes in a FANOUT (its OPEN's `limits`): a
    /// larger one is refused as [`CarrierSendError::TooLarge`] rather than
    /// sent and ending the carrier with all its clients.
    pub(crate) fn open(
        &self,
        key: u64,
        gateway_max: Option<usize>,
    ) -> Result<Carrier, CarrierRefusal> {
        let mut carriers = self.lock();
        if carriers.contains_key(&key) {
            return Err(CarrierRefusal::KeyInUse);
        }
        if carriers.len() >= MAX_CARRIERS {
            return Err(CarrierRefusal::Full);
        }
        let max_payload = gateway_max.map_or(self.max_payload, |max| max.min(self.max_payload));
        let carrier = Carrier::new(key, max_payload, CARRIER_QUEUE_BYTES, self.metrics.clone());
        carriers.insert(key, carrier.clone());
        Ok(carrier)
    }

    /// Whether another carrier could be opened now (ACCEPT's `carrier_wanted`).
    pub(crate) fn has_room(&self) -> bool {
        self.lock().len() < MAX_CARRIERS
    }

    /// Client `id` on the carrier registered under `key`, if it is open.
    pub(crate) fn attach(&self, key: u64, id: u64) -> Option<CarriedLink> {
        let carrier = self.lock().get(&key)?.clone();
        CarriedLink::attach(carrier, id)
    }

    /// Takes `carrier` out of the registry and ends it (its link failed
    /// before it ran).
    pub(crate) fn forget(&self, carrier: &Carrier) {
        carrier.close();
        self.remove(carrier);
    }

    fn remove(&self, carrier: &Carrier) {
        let mut carriers = self.lock();
        if carriers.get(&carrier.key()) == Some(carrier) {
            carriers.remove(&carrier.key());
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Carrier>> {
        self.carriers.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One carried client's side of its carrier: what its `Session` sends
/// through. Holds at most one message the queue had no room for.
#[derive(Debug)]
pub(crate) struct CarriedLink {
    carrier: Carrier,
    id: u64,
    /// A message accepted by `start_send` that did not fit yet.
    pending: Option<Message>,
    /// A close went into the queue: no `1011` on drop.
    close_sent: bool,
}

impl CarriedLink {
    fn attach(carrier: Carrier, id: u64) -> Option<CarriedLink> {
        {
            let mut state = carrier.lock();
            if state.closed {
                return None;
            }
            state.n_sessions += 1;
        }
        Some(CarriedLink {
            carrier,
            id,
            pending: None,
            close_sent: false,
        })
    }

    pub(crate) fn carrier(&self) -> &Carrier {
        &self.carrier
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Ready once the message held back (if any) is queued.
    pub(crate) fn poll_ready(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), CarrierSendError>> {
        let Some(message) = self.pending.take() else {
            return Poll::Ready(Ok(()));
        };
        loop {
            match self.carrier.try_send(&message, &[self.id]) {
                Ok(()) => return Poll::Ready(Ok(())),
                Err(CarrierSendError::Full) => {
                    let len = fanout_len(payload_len(&message).unwrap_or(0), 1);
                    if self.carrier.poll_room(cx, len).is_pending() {
                        self.pending = Some(message);
                        return Poll::Pending;
                    }
                }
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
    }

    /// Queues `message` (text, binary or close), or holds it until
    /// [`CarriedLink::poll_ready`] finds room.
    pub(crate) fn start_send(&mut self, message: Message) -> Result<(), CarrierSendError> {
        if self.pending.is_some() {
            // Sink's contract: poll_ready first. Keep the order anyway.
            let pending = self.pending.take().expect("checked");
            self.carrier.send_unchecked(&pending, &[self.id])?;
        }
        let is_close = message.is_close();
        match self.carrier.try_send(&message, &[self.id]) {
            Ok(()) => {}
            Err(CarrierSendError::Full) => self.pending = Some(message),
            Err(error) => return Err(error),
        }
        if is_close {
            self.close_sent = true;
        }
        Ok(())
    }
}

impl Drop for CarriedLink {
    fn drop(&mut self) {
        if !self.close_sent {
            let close =
                Message::Close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                    code: DROPPED_CLOSE_CODE.into(),
                    reason: "".into(),
                }));
            // A held-back message still goes first, and the close always
            // goes (the gateway waits for it); both are small and one per session.
            let pending = self.pending.take();
            for message in pending.iter().chain([&close]) {
                if let Err(error) = self.carrier.send_unchecked(message, &[self.id]) {
                    debug!(%error, id = self.id, "carried session ended; no close sent");
                    break;
                }
            }
        }
        let n_sessions = {
            let mut state = self.carrier.lock();
            state.n_sessions -= 1;
            state.n_sessions
        };
        if n_sessions == 0 {
            // At shutdown the writer ends once its last session has.
            self.carrier.shared.arrived.notify_one();
        }
    }
}

/// Why a carrier ended.
#[derive(Debug)]
enum CarrierEnd {
    /// The gateway closed it.
    Closed,
    /// The gateway sent something on it, which it never does.
    Unexpected,
    /// Reading or writing failed.
    Failed(io::Error),
    /// Shutdown, and no carried session is left.
    Shutdown,
    /// The gateway took nothing for this long while records waited.
    Stalled(Duration),
}

/// Runs carrier `carrier` on `stream` (after its ACCEPT) until the gateway
/// closes it, it fails, or, after `shutdown`, its last carried session has
/// ended and everything queued is written. Then it leaves `registry`.
pub(crate) async fn run_carrier(
    carrier: Carrier,
    stream: LinkStream,
    registry: Arc<CarrierRegistry>,
    shutdown: CancellationToken,
) {
    let _open = carrier.shared.metrics.carrier_opened();
    info!(key = carrier.key(), "carrier link opened");
    let write_timeout = registry.write_timeout();
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut out = BytesMut::new();
    let mut probe = [0u8; 1];
    let read_end = |read: io::Result<usize>| match read {
        Ok(0) => CarrierEnd::Closed,
        Ok(_) => CarrierEnd::Unexpected,
        Err(error) => CarrierEnd::Failed(error),
    };
    let end = loop {
        if out.is_empty() {
            if out.capacity() > IDLE_BUFFER {
                out = BytesMut::new();
            }
            carrier.take_queued(&mut out);
        }
        if out.is_empty() {
            if shutdown.is_cancelled() && carrier.n_sessions() == 0 {
                break CarrierEnd::Shutdown;
            }
            tokio::select! {
                read = reader.read(&mut probe) => break read_end(read),
                () = carrier.shared.arrived.notified() => {}
                () = shutdown.cancelled(), if !shutdown.is_cancelled() => {}
            }
            continue;
        }
        tokio::select! {
            biased;
            read = reader.read(&mut probe) => break read_end(read),
            written = tokio::time::timeout(write_timeout, writer.write(&out)) => match written {
                Ok(Ok(0)) => break CarrierEnd::Failed(io::ErrorKind::WriteZero.into()),
                Ok(Ok(n)) => {
                    out.advance(n);
                    carrier.written(n);
                }
                Ok(Err(error)) => break CarrierEnd::Failed(error),
                Err(_) => break CarrierEnd::Stalled(write_timeout),
            },
        }
    };
    carrier.close();
    registry.remove(&carrier);
    match end {
        CarrierEnd::Closed => info!(key = carrier.key(), "carrier link closed by the gateway"),
        CarrierEnd::Shutdown => {
            let _ = writer.shutdown().await;
            info!(key = carrier.key(), "carrier link closed at shutdown");
        }
        CarrierEnd::Unexpected => {
            warn!(
                key = carrier.key(),
                "the gateway sent data on a carrier link; closed"
            )
        }
        CarrierEnd::Failed(error) => warn!(key = carrier.key(), %error, "carrier link failed"),
        CarrierEnd::Stalled(timeout) => warn!(
            key = carrier.key(),
            "the gateway took nothing from its carrier link for {timeout:?}; closed"
        ),
    }
}

/// Decodes the FANOUT records in `bytes` with the link codec (for tests).
#[cfg(test)]
pub(crate) fn decode_all(bytes: &[u8]) -> Vec<Fanout> {
    use tokio_util::codec::Decoder;
    let mut buffer = BytesMut::from(bytes);
    let mut codec = RecordCodec::new(link::DEFAULT_MAX_PAYLOAD);
    let mut fanouts = Vec::new();
    while let Some(record) = codec.decode(&mut buffer).expect("valid records") {
        match record {
            Record::Fanout(fanout) => fanouts.push(fanout),
            other => panic!("not a FANOUT: {other:?}"),
        }
    }
    assert!(buffer.is_empty(), "whole records");
    fanouts
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use super::*;

    fn carrier(queue_limit: usize) -> Carrier {
        Carrier::new(7, 1000, queue_limit, Metrics::new())
    }

    /// Everything queued, taken as the writer takes it, and written.
    fn drain(carrier: &Carrier) -> Vec<Fanout> {
        let mut out = BytesMut::new();
        carrier.take_queued(&mut out);
        carrier.written(out.len());
        decode_all(&out)
    }

    fn text_of(fanout: &Fanout) -> &str {
        match &fanout.message {
            FanoutMessage::Text(text) => text.as_str(),
            other => panic!("not text: {other:?}"),
        }
    }

    #[test]
    fn the_queue_is_bounded_in_bytes_but_takes_one_large_record_when_empty() {
        let record = fanout_len(10, 2);
        assert_eq!(record, HEADER_LEN + FANOUT_HEAD_LEN + 16 + 10);
        let carrier = carrier(2 * record);
        let message = Message::text("0123456789");
        carrier.try_send(&message, &[1, 2]).expect("fits");
        carrier.try_send(&message, &[1, 2]).expect("fits exactly");
        assert_eq!(
            carrier.try_send(&message, &[1, 2]),
            Err(CarrierSendError::Full)
        );
        assert!(!carrier.has_room(10, 2));
        // What the writer took still counts until it is written.
        let mut out = BytesMut::new();
        carrier.take_queued(&mut out);
        assert_eq!(
            carrier.try_send(&message, &[1, 2]),
            Err(CarrierSendError::Full)
        );
        carrier.written(record);
        carrier.try_send(&message, &[1, 2]).expect("room again");
        carrier.written(out.len() - record);
        carrier.written(record);
        // Larger than the whole queue, into an empty queue.
        let large = Message::binary(vec![0u8; 200]);
        carrier
            .try_send(&large, &[3])
            .expect("an empty queue takes it");
        assert_eq!(
            carrier.try_send(&message, &[1]),
            Err(CarrierSendError::Full)
        );
        // The caller's own lines go in regardless.
        carrier.send_unchecked(&message, &[1]).expect("unchecked");
    }

    #[test]
    fn records_come_out_in_order_with_their_recipients() {
        let carrier = carrier(CARRIER_QUEUE_BYTES);
        carrier
            .try_send(&Message::text("a"), &[1, 2, 3])
            .expect("queued");
        carrier
            .try_send(&Message::binary(vec![9u8]), &[2])
            .expect("queued");
        let close = Message::Close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: 1001.into(),
            reason: "bye".into(),
        }));
        carrier.try_send(&close, &[3]).expect("queued");
        let fanouts = drain(&carrier);
        assert_eq!(fanouts.len(), 3);
        assert_eq!(text_of(&fanouts[0]), "a");
        assert_eq!(fanouts[0].recipients().collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(fanouts[1].message, FanoutMessage::Binary(vec![9u8].into()));
        assert_eq!(
            fanouts[2].message,
            FanoutMessage::Close(Some(link::CloseInfo {
                code: 1001,
                reason: "bye".to_owned()
            }))
        );
        assert_eq!(fanouts[2].recipients().collect::<Vec<_>>(), [3]);
    }

    #[test]
    fn a_message_over_the_gateways_limit_is_refused_not_sent() {
        let terms = CarrierTerms {
            queue_bytes: 1 << 20,
            stall_ms: 2000,
        };
        let registry = CarrierRegistry::new(terms, 1000, Metrics::new());
        // The gateway said (OPEN's `limits`) it reads messages of 100 bytes at most.
        let carrier = registry.open(1, Some(100)).expect("registered");
        assert_eq!(
            carrier.try_send(&Message::binary(vec![0; 101]), &[1]),
            Err(CarrierSendError::TooLarge { len: 101, max: 100 })
        );
        carrier
            .try_send(&Message::binary(vec![0; 100]), &[1])
            .expect("at the limit");
        assert_eq!(drain(&carrier).len(), 1, "only the one within the limit");
        // Without `limits`, the backend's own limit.
        let carrier = registry.open(2, None).expect("registered");
        assert_eq!(
            carrier.try_send(&Message::binary(vec![0; 1001]), &[1]),
            Err(CarrierSendError::TooLarge {
                len: 1001,
                max: 1000
            })
        );
    }

    #[test]
    fn large_groups_are_split_at_the_recipient_limit() {
        let carrier = carrier(CARRIER_QUEUE_BYTES);
        let recipients: Vec<u64> = (0..MAX_RECIPIENTS as u64 + 5).collect();
        carrier
            .try_send(&Message::text("hi"), &recipients)
            .expect("queued");
        let fanouts = drain(&carrier);
        assert_eq!(fanouts.len(), 2);
        assert_eq!(fanouts[0].recipients().len(), MAX_RECIPIENTS);
        let all: Vec<u64> = fanouts.iter().flat_map(Fanout::recipients).collect();
        assert_eq!(all, recipients);
    }

    #[test]
    fn bad_sends_are_refused_and_a_closed_carrier_takes_nothing() {
        let carrier = carrier(CARRIER_QUEUE_BYTES);
        assert_eq!(
            carrier.try_send(&Message::Ping(vec![].into()), &[1]),
            Err(CarrierSendError::NotSendable)
        );
        assert_eq!(
            carrier.try_send(&Message::text("x"), &[]),
            Err(CarrierSendError::NoRecipients)
        );
        assert_eq!(
            carrier.try_send(&Message::binary(vec![0u8; 1001]), &[1]),
            Err(CarrierSendError::TooLarge {
                len: 1001,
                max: 1000
            })
        );
        carrier.try_send(&Message::text("x"), &[1]).expect("queued");
        carrier.close();
        assert!(carrier.is_closed());
        assert!(
            carrier.has_room(1 << 30, 1),
            "nobody waits for a closed carrier"
        );
        assert_eq!(
            carrier.try_send(&Message::text("x"), &[1]),
            Err(CarrierSendError::Closed)
        );
        assert!(drain(&carrier).is_empty(), "what it held is dropped");
    }

    #[test]
    fn a_carried_session_holds_one_message_back_and_closes_with_1011_when_dropped() {
        let message = Message::text("0123456789");
        let carrier = carrier(fanout_len(10, 1));
        let mut link = CarriedLink::attach(carrier.clone(), 5).expect("open");
        let mut cx = Context::from_waker(Waker::noop());
        link.start_send(message.clone()).expect("queued");
        link.start_send(Message::text("second")).expect("queued");
        assert!(link.poll_ready(&mut cx).is_pending(), "held back");
        assert_eq!(text_of(&drain(&carrier)[0]), "0123456789");
        assert!(link.poll_ready(&mut cx).is_ready());
        assert_eq!(carrier.n_sessions(), 1);
        drop(link);
        assert_eq!(carrier.n_sessions(), 0);
        let fanouts = drain(&carrier);
        assert_eq!(text_of(&fanouts[0]), "second");
        assert_eq!(
            fanouts[1].message,
            FanoutMessage::Close(Some(link::CloseInfo {
                code: 1011,
                reason: String::new()
            }))
        );
        // A session that sent its close gets no other.
        let mut link = CarriedLink::attach(carrier.clone(), 6).expect("open");
        link.start_send(Message::Close(None)).expect("queued");
        drop(link);
        let fanouts = drain(&carrier);
        assert_eq!(fanouts.len(), 1);
        assert_eq!(fanouts[0].message, FanoutMessage::Close(None));
        carrier.close();
        assert!(CarriedLink::attach(carrier, 8).is_none(), "closed");
    }
}
