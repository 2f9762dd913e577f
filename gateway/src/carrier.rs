//! Carrier links (`docs/link-protocol.md`, *Fan-out*): one link per backend
//! socket on which the backend sends FANOUT records, each one message for
//! many of this gateway's clients, read once here and queued for each.
//!
//! - [`Carriers`]: the carrier of each socket path, opened in the background
//!   when a backend's ACCEPT says `carrier_wanted`, and refused or failed
//!   ones not asked again for [`RETRY_AFTER`].
//! - [`Carrier`]: the seated clients of one carrier and the task that reads
//!   it, delivering each FANOUT to their inboxes in the carrier's order.
//! - [`Seat`]: one client's place on a carrier, taken before its OPEN goes out
//!   (the backend may send FANOUTs for it right after its ACCEPT, which can
//!   reach this gateway before the ACCEPT does); the relay drains its inbox
//!   into the client's output ([`Seat::drain`]) and leaves on drop.
//!
//! The inbox of a client without permessage-deflate holds WebSocket frames,
//! written by the carrier's reader as it delivers, which the relay takes
//! whole (swapping buffers when its output is empty): per delivery, one copy
//! of the payload and no reference count shared between threads. A client
//! with compression gets the messages, which its relay compresses.
//!
//! Flow control: an inbox holds at most the client's `queue_bytes` (ACCEPT's
//! terms; a single larger message into an empty inbox). A FANOUT that does
//! not fit stops the carrier's reader until the relay drains that inbox, for
//! as long as the relay keeps draining it; an inbox that stays full with
//! nothing drained for the terms' `stall_ms` belongs to a client that does
//! not read, which is closed with `1008` (`InboxEnd::TooSlow`), and the
//! carrier reads on. The relay drains only while the client's own output is
//! below its high-water mark, so "nothing drained" means "its socket took
//! nothing".

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Waker};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::StreamExt;
use link::fanout::{Fanout, FanoutMessage};
use link::frames::put_frame;
use link::websocket::{provision_small, release};
use link::{
    CarrierTerms, ClientLimits, CloseInfo, LINK_VERSION, LinkError, LinkMode, OpenMeta, Record,
};
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_util::sync::CancellationToken;

use crate::backend::{self, FramedLink};
use crate::metrics::Tally;
use crate::route::BySocket;

/// How long after a refused or failed carrier the gateway asks no new one.
pub(crate) const RETRY_AFTER: Duration = Duration::from_secs(10);

/// What one queued message counts against an inbox's bound beyond its
/// payload (a frame header and bookkeeping), so empty messages count too.
const MESSAGE_OVERHEAD: usize = 16;

/// The most message slots an empty inbox keeps.
const IDLE_QUEUE_CAPACITY: usize = 8;

/// A seated client's terms until its ACCEPT brings the backend's.
const PROVISIONAL_TERMS: CarrierTerms = CarrierTerms {
    queue_bytes: 1 << 20,
    stall_ms: 2_000,
};

/// The carriers of this gateway process, by backend socket path.
#[derive(Debug, Default)]
pub(crate) struct Carriers {
    slots: Mutex<BySocket<Slot>>,
}

#[derive(Debug)]
enum Slot {
    /// Connecting, or waiting for the backend's ACCEPT.
    Opening,
    /// Open; its reader runs.
    Open(Arc<Carrier>),
    /// Refused or failed at this time: not asked again before [`RETRY_AFTER`].
    Refused(Instant),
}

/// What opening a carrier needs from the gateway's configuration.
#[derive(Debug, Clone)]
pub(crate) struct OpenSettings {
    /// The largest message payload a FANOUT may carry.
    pub(crate) max_message_size: usize,
    /// The deadline for the backend's answer to the carrier's OPEN.
    pub(crate) accept_timeout: Duration,
}

impl Carriers {
    /// The open carrier to `socket_path`, if there is one.
    pub(crate) fn current(&self, socket_path: &Path) -> Option<Arc<Carrier>> {
        match lock(&self.slots).get(socket_path.as_os_str()) {
            Some(Slot::Open(carrier)) => Some(Arc::clone(carrier)),
            _ => None,
        }
    }

    /// Opens a carrier to `socket_path` (backend `name`) in the background,
    /// unless one is open or opening, or one was refused within [`RETRY_AFTER`].
    /// It lives until it ends or `shutdown` fires.
    pub(crate) fn want(
        self: &Arc<Self>,
        socket_path: &Path,
        name: &str,
        settings: OpenSettings,
        shutdown: &CancellationToken,
        open_gauge: Gauge,
    ) {
        {
            let mut slots = lock(&self.slots);
            match slots.get(socket_path.as_os_str()) {
                Some(Slot::Opening | Slot::Open(_)) => return,
                Some(Slot::Refused(at)) if at.elapsed() < RETRY_AFTER => return,
                _ => {}
            }
            slots.insert(socket_path.as_os_str().to_owned(), Slot::Opening);
        }
        let carriers = Arc::clone(self);
        let socket_path = socket_path.to_owned();
        let name = name.to_owned();
        let shutdown = shutdown.clone();
        // Not tracked: a carrier outlives a drain's clients and ends with the process.
        tokio::spawn(async move {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = carriers.open_and_run(&socket_path, &name, settings, &open_gauge) => {}
            }
            carriers.forget(&socket_path);
        });
    }

    /// Opens the carrier, then reads it until it ends.
    async fn open_and_run(
        &self,
        socket_path: &Path,
        name: &str,
        settings: OpenSettings,
        open_gauge: &Gauge,
    ) {
        let key = match random_key() {
            Ok(key) => key,
            Err(error) => {
                tracing::warn!(name, %error, "no random key for a carrier link");
                return self.refused(socket_path);
            }
        };
        let open = OpenMeta {
            version: LINK_VERSION,
            mode: LinkMode::Carrier,
            id: key,
            name: name.to_owned(),
            path: String::new(),
            query: String::new(),
            protocols: Vec::new(),
            peer: String::new(),
            headers: Default::default(),
            // The largest message a FANOUT may carry here: a backend that
            // knows it refuses a larger one instead of ending the carrier.
            limits: Some(ClientLimits {
                max_message_size: settings.max_message_size,
                ping_interval: 0,
                idle_timeout: 0,
            }),
            tls: None,
            identity: None,
            deflate: None,
            carrier: None,
        };
        let link = match backend::open_framed(
            socket_path,
            &open,
            settings.max_message_size,
            settings.accept_timeout,
            None,
        )
        .await
        {
            Ok((link, ..)) => link,
            Err(refusal) => {
                tracing::info!(name, "no carrier link: {refusal}");
                return self.refused(socket_path);
            }
        };
        let carrier = Arc::new(Carrier::new(key));
        lock(&self.slots).insert(
            socket_path.as_os_str().to_owned(),
            Slot::Open(Arc::clone(&carrier)),
        );
        tracing::debug!(name, key, "carrier link open");
        open_gauge.inc();
        let ended = carrier.read(link).await;
        open_gauge.dec();
        carrier.end();
        match ended {
            Ok(()) => tracing::debug!(name, key, "carrier link ended"),
            Err(error) => tracing::warn!(
                name,
                key,
                error = &error as &dyn std::error::Error,
                "carrier link failed; its clients get 1011"
            ),
        }
        // A later `carrier_wanted` opens a new one.
        let mut slots = lock(&self.slots);
        if matches!(slots.get(socket_path.as_os_str()), Some(Slot::Open(open)) if Arc::ptr_eq(open, &carrier))
        {
            slots.remove(socket_path.as_os_str());
        }
    }

    fn refused(&self, socket_path: &Path) {
        lock(&self.slots).insert(
            socket_path.as_os_str().to_owned(),
            Slot::Refused(Instant::now()),
        );
    }

    /// After the task: an `Opening` slot left by a shutdown goes away.
    fn forget(&self, socket_path: &Path) {
        let mut slots = lock(&self.slots);
        if matches!(slots.get(socket_path.as_os_str()), Some(Slot::Opening)) {
            slots.remove(socket_path.as_os_str());
        }
    }
}

/// A random 64-bit key for a carrier link, unique among the gateways of one backend.
fn random_key() -> Result<u64, getrandom::Error> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes)?;
    Ok(u64::from_ne_bytes(bytes))
}

/// Why a carrier link stopped being read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CarrierError {
    /// Reading or decoding a record failed.
    #[error("reading the carrier link")]
    Read(#[from] LinkError),
    /// The backend sent a record other than FANOUT.
    #[error("unexpected {0} record on a carrier link")]
    Unexpected(&'static str),
}

/// One open carrier link: its key and the clients seated on it.
#[derive(Debug)]
pub(crate) struct Carrier {
    key: u64,
    seated: Mutex<Seated>,
    /// Wakes the reader waiting for room in an inbox.
    room: Notify,
}

#[derive(Debug, Default)]
struct Seated {
    /// By client id. foldhash rather than SipHash: every delivery looks its
    /// client up here, and SipHash was a tenth of a delivery's instructions
    /// (the ids are the gateway's own; a backend naming others only misses).
    inboxes: HashMap<u64, Arc<Inbox>, foldhash::fast::RandomState>,
    /// The carrier ended: no one is seated any more.
    ended: bool,
}

impl Carrier {
    fn new(key: u64) -> Carrier {
        Carrier {
            key,
            seated: Mutex::new(Seated::default()),
            room: Notify::new(),
        }
    }

    /// Seats client `id` with provisional terms, or `None` if the carrier
    /// ended. `framed`: the client takes frames as they are (no compression).
    pub(crate) fn seat(self: &Arc<Self>, id: u64, framed: bool) -> Option<Seat> {
        let inbox = Arc::new(Inbox::new(PROVISIONAL_TERMS, framed));
        let mut seated = lock(&self.seated);
        if seated.ended {
            return None;
        }
        seated.inboxes.insert(id, Arc::clone(&inbox));
        Some(Seat {
            carrier: Arc::clone(self),
            id,
            inbox,
        })
    }

    /// Reads FANOUT records and delivers them until the link ends or fails.
    async fn read(&self, mut link: FramedLink) -> Result<(), CarrierError> {
        while let Some(record) = link.next().await {
            match record? {
                Record::Fanout(fanout) => self.deliver(&fanout).await,
                other => return Err(CarrierError::Unexpected(other.name())),
            }
        }
        Ok(())
    }

    /// Puts `fanout`'s message into each recipient's inbox, in order,
    /// waiting for a full one as long as its client takes something.
    async fn deliver(&self, fanout: &Fanout) {
        let mut recipients = fanout.recipients();
        loop {
            // Under one lock for the whole record, until an inbox is full.
            let full = {
                let seated = lock(&self.seated);
                recipients.by_ref().find_map(|id| {
                    let inbox = seated.inboxes.get(&id)?;
                    match inbox.offer(&fanout.message) {
                        Offer::Delivered | Offer::Gone => None,
                        Offer::Full { drains } => Some((Arc::clone(inbox), drains)),
                    }
                })
            };
            let Some((inbox, drains)) = full else {
                return;
            };
            self.wait_for_room(&inbox, drains, &fanout.message).await;
        }
    }

    /// Waits until `inbox` takes `message`, or evicts its client after its
    /// stall time with nothing drained.
    async fn wait_for_room(&self, inbox: &Inbox, mut drains: u64, message: &FanoutMessage) {
        let mut since = Instant::now();
        loop {
            let stall = inbox.stall();
            let notified = self.room.notified();
            match inbox.offer(message) {
                Offer::Delivered | Offer::Gone => return,
                Offer::Full { drains: now } if now != drains => {
                    // The client took something: it reads, wait on.
                    drains = now;
                    since = Instant::now();
                }
                Offer::Full { .. } if since.elapsed() >= stall => {
                    inbox.evict();
                    return;
                }
                Offer::Full { .. } => {}
            }
            let _ = tokio::time::timeout_at(since + stall, notified).await;
        }
    }

    /// The carrier ended: each seated client without its CLOSE gets `1011`
    /// after what is queued for it, and no one can be seated any more.
    fn end(&self) {
        let inboxes = {
            let mut seated = lock(&self.seated);
            seated.ended = true;
            std::mem::take(&mut seated.inboxes)
        };
        for inbox in inboxes.values() {
            inbox.finish(InboxEnd::CarrierGone);
        }
    }
}

/// A client's place on a carrier; it leaves when dropped.
#[derive(Debug)]
pub(crate) struct Seat {
    carrier: Arc<Carrier>,
    id: u64,
    inbox: Arc<Inbox>,
}

/// How a seated client's messages end, after everything queued before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum InboxEnd {
    /// A FANOUT CLOSE named the client.
    Closed(Option<CloseInfo>),
    /// The carrier ended first: the client gets `1011`.
    CarrierGone,
    /// Its inbox stayed full, nothing taken, for the stall time: `1008`.
    TooSlow,
}

/// What [`Seat::drain`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Drained {
    /// The inbox is empty (a wake-up is due when something arrives).
    Empty,
    /// `deliver` asked to stop; more is queued.
    Stopped,
    /// Everything was delivered, and then the client's end.
    Ended(InboxEnd),
}

impl Seat {
    /// The key of the carrier this client sits on.
    pub(crate) fn key(&self) -> u64 {
        self.carrier.key
    }

    /// Applies the backend's terms from its ACCEPT; `false` if the carrier
    /// has ended meanwhile.
    pub(crate) fn accept_terms(&self, terms: CarrierTerms) -> bool {
        self.inbox.set_terms(terms);
        !lock(&self.carrier.seated).ended
    }

    /// Moves what is queued into `output`, oldest first: the frames of a
    /// client without compression all at once, messages one by one through
    /// `deliver` until it returns `false`; then the end, if one is due.
    /// Counts the messages in `tally`. Registers the task for a wake-up when
    /// more arrives.
    pub(crate) fn drain(
        &self,
        cx: &mut Context<'_>,
        output: &mut BytesMut,
        tally: &mut Tally<'_>,
        deliver: impl FnMut(&mut BytesMut, &FanoutMessage) -> bool,
    ) -> Drained {
        let (drained, room) = self.inbox.drain(cx.waker(), output, tally, deliver);
        if room {
            self.carrier.room.notify_one();
        }
        drained
    }

    /// Whether the carrier gave up on this client (`1008`), which ends it
    /// at once, whatever is queued; registers the task for a wake-up when
    /// that happens. For a relay whose client output is full and so does not
    /// [`Seat::drain`].
    pub(crate) fn evicted(&self, cx: &mut Context<'_>) -> bool {
        let mut state = lock(&self.inbox.state);
        state.register(cx.waker());
        state.end == Some(InboxEnd::TooSlow)
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        let mut seated = lock(&self.carrier.seated);
        if seated
            .inboxes
            .get(&self.id)
            .is_some_and(|inbox| Arc::ptr_eq(inbox, &self.inbox))
        {
            seated.inboxes.remove(&self.id);
        }
        drop(seated);
        // A reader waiting for this inbox moves on.
        self.inbox.finish(InboxEnd::CarrierGone);
        self.carrier.room.notify_one();
    }
}

/// What the carrier queued for one client and the relay has not taken yet.
#[derive(Debug)]
struct Inbox {
    state: Mutex<InboxState>,
}

#[derive(Debug)]
struct InboxState {
    /// A client without compression: its messages as frames, ready to write.
    frames: Option<BytesMut>,
    /// A client with compression: its messages, which its relay compresses.
    queue: VecDeque<FanoutMessage>,
    /// What is queued, in `frames` or `queue`, counted as its payload bytes
    /// plus [`MESSAGE_OVERHEAD`] for each message (so empty ones count too).
    bytes: usize,
    /// Messages in `frames` and their payload bytes, for the relay's count.
    n_framed: u64,
    framed_payload: u64,
    terms: CarrierTerms,
    end: Option<InboxEnd>,
    /// The relay's task, to wake when something arrives.
    waker: Option<Waker>,
    /// The reader found this inbox full and waits for room.
    reader_waiting: bool,
    /// How many times the relay took something: the reader's sign of life.
    drains: u64,
}

/// What [`Inbox::offer`] did with a message.
enum Offer {
    Delivered,
    /// Nothing more goes in until the relay drains it (`drains` so far).
    Full {
        drains: u64,
    },
    /// The client is ending; the message is dropped.
    Gone,
}

impl Inbox {
    fn new(terms: CarrierTerms, framed: bool) -> Inbox {
        Inbox {
            state: Mutex::new(InboxState {
                frames: framed.then(BytesMut::new),
                queue: VecDeque::new(),
                bytes: 0,
                n_framed: 0,
                framed_payload: 0,
                terms,
                end: None,
                waker: None,
                reader_waiting: false,
                drains: 0,
            }),
        }
    }

    fn set_terms(&self, terms: CarrierTerms) {
        lock(&self.state).terms = terms;
    }

    fn stall(&self) -> Duration {
        Duration::from_millis(lock(&self.state).terms.stall_ms)
    }

    fn offer(&self, message: &FanoutMessage) -> Offer {
        let mut state = lock(&self.state);
        if state.end.is_some() {
            return Offer::Gone;
        }
        match message {
            FanoutMessage::Close(info) => state.end = Some(InboxEnd::Closed(info.clone())),
            FanoutMessage::Text(_) | FanoutMessage::Binary(_) => {
                let len = message.payload_len() + MESSAGE_OVERHEAD;
                if state.bytes != 0 && state.bytes + len > state.terms.queue_bytes {
                    state.reader_waiting = true;
                    return Offer::Full {
                        drains: state.drains,
                    };
                }
                state.bytes += len;
                let state = &mut *state;
                if let Some(frames) = &mut state.frames {
                    // Not from nothing: every client of a fan-out would
                    // allocate and reallocate for each message.
                    provision_small(frames);
                }
                match (&mut state.frames, message) {
                    (Some(frames), FanoutMessage::Text(text)) => {
                        put_frame(frames, OpCode::Data(Data::Text), text.as_bytes());
                        state.n_framed += 1;
                        state.framed_payload += text.len() as u64;
                    }
                    (Some(frames), FanoutMessage::Binary(payload)) => {
                        put_frame(frames, OpCode::Data(Data::Binary), payload);
                        state.n_framed += 1;
                        state.framed_payload += payload.len() as u64;
                    }
                    _ => state.queue.push_back(message.clone()),
                }
            }
        }
        wake_relay(state);
        Offer::Delivered
    }

    /// Ends the client after what is queued, unless it has an end already.
    fn finish(&self, end: InboxEnd) {
        let mut state = lock(&self.state);
        if state.end.is_none() {
            state.end = Some(end);
        }
        wake_relay(state);
    }

    /// The client does not read: drop its queue and end it with `1008` now.
    fn evict(&self) {
        let mut state = lock(&self.state);
        state.queue.clear();
        if let Some(frames) = &mut state.frames {
            frames.clear();
        }
        state.bytes = 0;
        state.n_framed = 0;
        state.framed_payload = 0;
        state.end = Some(InboxEnd::TooSlow);
        wake_relay(state);
    }

    /// [`Seat::drain`]; also says whether the reader waits for room here.
    fn drain(
        &self,
        waker: &Waker,
        output: &mut BytesMut,
        tally: &mut Tally<'_>,
        mut deliver: impl FnMut(&mut BytesMut, &FanoutMessage) -> bool,
    ) -> (Drained, bool) {
        let mut guard = lock(&self.state);
        let state = &mut *guard;
        state.register(waker);
        let mut took = false;
        let mut stopped = false;
        if let Some(frames) = &mut state.frames
            && !frames.is_empty()
        {
            if output.is_empty() {
                std::mem::swap(output, frames);
            } else {
                output.extend_from_slice(frames);
                frames.clear();
            }
            // An idle client keeps no buffer.
            release(frames);
            tally.count_many(state.n_framed, state.framed_payload);
            state.n_framed = 0;
            state.framed_payload = 0;
            state.bytes = 0;
            took = true;
        }
        while let Some(message) = state.queue.pop_front() {
            state.bytes -= message.payload_len() + MESSAGE_OVERHEAD;
            tally.count(message.payload_len());
            took = true;
            if !deliver(output, &message) {
                stopped = true;
                break;
            }
        }
        let mut room = false;
        if took {
            state.drains += 1;
            room = std::mem::take(&mut state.reader_waiting);
        }
        let drained = if stopped && !state.queue.is_empty() {
            Drained::Stopped
        } else if let (true, Some(end)) = (state.queue.is_empty(), state.end.clone()) {
            Drained::Ended(end)
        } else {
            if state.queue.is_empty() && state.queue.capacity() > IDLE_QUEUE_CAPACITY {
                // An idle client keeps no room for a past burst.
                state.queue = VecDeque::new();
            }
            Drained::Empty
        };
        (drained, room)
    }
}

impl InboxState {
    /// Remembers the relay's task for the next wake-up.
    fn register(&mut self, waker: &Waker) {
        if !self
            .waker
            .as_ref()
            .is_some_and(|known| known.will_wake(waker))
        {
            self.waker = Some(waker.clone());
        }
    }
}

/// Releases `state` and wakes the relay's task, if it waits, outside the lock.
fn wake_relay(mut state: MutexGuard<'_, InboxState>) {
    let waker = state.waker.take();
    drop(state);
    if let Some(waker) = waker {
        waker.wake();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
