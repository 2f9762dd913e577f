//! One client's outbox: what the room has queued for a client and its session
//! has not taken yet, bounded in messages and in bytes.
//!
//! The room puts messages in under its lock and never waits here; the
//! client's session takes them out in batches ([`Outbox::next_batch`]) and
//! writes them to the client, saying when its socket takes no more
//! ([`Outbox::writer_blocked`]) and when it took something again
//! ([`Outbox::writer_progressed`]). Before a client's message goes in, the
//! room asks every outbox it would reach whether it fits ([`Outbox::admit`]):
//! a full outbox makes the sender wait (it is woken through `room_changed`
//! when the outbox drains or its writer blocks) as long as its client reads;
//! a full outbox whose client's socket has taken nothing for the stall
//! timeout belongs to a client that does not read, and the room evicts it.
//! Deciding who goes in, and when, is `room`'s business.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::num::NonZeroUsize;
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Poll;
use std::time::Duration;

use futures_util::{Sink, SinkExt};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// How much may wait in one outbox before its client's senders must wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxLimits {
    /// Messages that may wait.
    pub messages: NonZeroUsize,
    /// Payload bytes that may wait; a single larger message still goes into an empty outbox.
    pub bytes: NonZeroUsize,
    /// How long a full outbox's writer may wait for its client's socket to
    /// take anything before the client counts as not reading.
    pub stall_timeout: Duration,
}

/// Whether a message fits into an outbox now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// It fits.
    Fits,
    /// The outbox is full, but its client reads: wait for `room_changed`,
    /// and if the writer is blocked on the socket, until `stalled_at` at most.
    Full {
        /// When the client will count as not reading if its socket takes
        /// nothing until then; `None` while its writer is not blocked.
        stalled_at: Option<Instant>,
    },
    /// The outbox is full and its client's socket has taken nothing for the
    /// stall timeout: the client does not read.
    Stalled,
}

/// The messages waiting for one client.
#[derive(Debug)]
pub struct Outbox {
    limits: OutboxLimits,
    state: Mutex<OutboxState>,
    /// Wakes the session's writer: a message arrived or the outbox closed.
    arrived: Notify,
    /// Wakes the room's waiting senders; shared by every outbox of a room.
    room_changed: Arc<Notify>,
}

#[derive(Debug, Default)]
struct OutboxState {
    messages: VecDeque<Message>,
    /// Sum of the payload lengths of `messages`.
    n_bytes: usize,
    /// The client has left the room; nothing more goes in.
    closed: bool,
    /// Since when the session's writer waits for the client's socket to take
    /// more; `None` while it is not waiting.
    writer_blocked_since: Option<Instant>,
    /// A sender found this outbox full and waits for it to change.
    sender_waiting: bool,
}

impl Outbox {
    /// An empty, open outbox that wakes `room_changed` for waiting senders.
    pub fn new(limits: OutboxLimits, room_changed: Arc<Notify>) -> Outbox {
        Outbox {
            limits,
            state: Mutex::new(OutboxState::default()),
            arrived: Notify::new(),
            room_changed,
        }
    }

    /// Whether a message of `len` bytes fits at `now`. It fits while fewer
    /// than the limit of messages wait and, with it, no more than the limit of
    /// bytes (or nothing waits at all). [`Admission::Full`] also records
    /// that a sender now waits for this outbox to change.
    pub fn admit(&self, len: usize, now: Instant) -> Admission {
        let mut state = self.lock();
        let fits = state.messages.len() < self.limits.messages.get()
            && (state.messages.is_empty()
                || state.n_bytes.saturating_add(len) <= self.limits.bytes.get());
        if fits || state.closed {
            return Admission::Fits;
        }
        let stalled_at = state
            .writer_blocked_since
            .map(|since| since + self.limits.stall_timeout);
        match stalled_at {
            Some(stalled_at) if stalled_at <= now => Admission::Stalled,
            stalled_at => {
                state.sender_waiting = true;
                Admission::Full { stalled_at }
            }
        }
    }

    /// Queues `message`, whether it fits or not: the room calls this only
    /// after [`Outbox::admit`], or for its own few lines of an operation.
    /// Nothing goes into a closed outbox.
    pub fn push(&self, message: Message) {
        {
            let mut state = self.lock();
            if state.closed {
                return;
            }
            state.n_bytes += message.len();
            state.messages.push_back(message);
        }
        self.arrived.notify_one();
    }

    /// Marks the client as gone: nothing more goes in, and the writer's
    /// [`Outbox::next_batch`] ends once the outbox is empty.
    pub fn close(&self) {
        let sender_waiting = {
            let mut state = self.lock();
            state.closed = true;
            std::mem::take(&mut state.sender_waiting)
        };
        self.arrived.notify_one();
        if sender_waiting {
            self.room_changed.notify_waiters();
        }
    }

    /// Waits for messages and moves up to `max` of them into `batch`;
    /// `false` once the outbox is closed and empty.
    pub async fn next_batch(&self, batch: &mut VecDeque<Message>, max: usize) -> bool {
        // The writer's socket writes run outside tokio's budget; this is where
        // a writer that always finds messages waiting lets its task yield.
        tokio::task::consume_budget().await;
        loop {
            {
                let mut state = self.lock();
                if !state.messages.is_empty() {
                    let n_taken = state.messages.len().min(max);
                    let taken: Vec<Message> = state.messages.drain(..n_taken).collect();
                    state.n_bytes -= taken.iter().map(Message::len).sum::<usize>();
                    batch.extend(taken);
                    self.wake_senders(state);
                    return true;
                }
                if state.closed {
                    return false;
                }
            }
            // A message pushed since the check left a permit: no wake-up is lost.
            self.arrived.notified().await;
        }
    }

    /// Takes everything that waits, at once.
    pub fn take_all(&self) -> Vec<Message> {
        let mut state = self.lock();
        let taken: Vec<Message> = state.messages.drain(..).collect();
        state.n_bytes = 0;
        self.wake_senders(state);
        taken
    }

    /// The session's writer waits for the client's socket to take more,
    /// since `now` unless it already did.
    pub fn writer_blocked(&self, now: Instant) {
        let mut state = self.lock();
        if state.writer_blocked_since.is_none() {
            state.writer_blocked_since = Some(now);
            // A waiting sender now knows until when to wait at most.
            self.wake_senders(state);
        }
    }

    /// The client's socket took a message (or a flush): the client reads.
    pub fn writer_progressed(&self) {
        self.lock().writer_blocked_since = None;
    }

    /// Writes this outbox to `sink` until it is closed and empty (`Ok`) or
    /// the sink fails: whatever is queued already goes out in one batch
    /// (through `batch`, at most `max` messages) with one flush. What sits in
    /// `batch` when the future is dropped was taken but not written.
    pub async fn drain_into<S>(
        &self,
        sink: &mut S,
        batch: &mut VecDeque<Message>,
        max: usize,
    ) -> Result<(), S::Error>
    where
        S: Sink<Message> + Unpin,
    {
        while self.next_batch(batch, max).await {
            while let Some(message) = batch.pop_front() {
                self.write_through(sink.feed(message)).await?;
            }
            self.write_through(sink.flush()).await?;
        }
        Ok(())
    }

    /// Runs one write to the client's socket (a message or a flush), telling
    /// this outbox when it has to wait for the socket and when the socket
    /// took it: that is how the room (or the broker) tells a client that does
    /// not read from one that reads, if more slowly than someone talks.
    ///
    /// `write` runs outside tokio's cooperative budget, so that it is pending
    /// only when the socket is full, never because this task has done much work.
    pub async fn write_through<F: Future>(&self, write: F) -> F::Output {
        let mut write = pin!(tokio::task::unconstrained(write));
        let mut blocked = false;
        let output = poll_fn(|cx| match write.as_mut().poll(cx) {
            Poll::Ready(output) => Poll::Ready(output),
            Poll::Pending => {
                if !blocked {
                    blocked = true;
                    self.writer_blocked(Instant::now());
                }
                Poll::Pending
            }
        })
        .await;
        if blocked {
            self.writer_progressed();
        }
        output
    }

    /// The number of messages and of payload bytes waiting.
    pub fn n_waiting(&self) -> (usize, usize) {
        let state = self.lock();
        (state.messages.len(), state.n_bytes)
    }

    /// Wakes the room's waiting senders if one waits for this outbox.
    fn wake_senders(&self, mut state: MutexGuard<'_, OutboxState>) {
        let sender_waiting = std::mem::take(&mut state.sender_waiting);
        drop(state);
        if sender_waiting {
            self.room_changed.notify_waiters();
        }
    }

    fn lock(&self) -> MutexGuard<'_, OutboxState> {
        // Every update leaves the state consistent before anything can panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
