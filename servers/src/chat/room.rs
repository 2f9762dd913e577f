//! The chat room: who is connected, under which name, and delivering each
//! message to the right queues.
//!
//! Every client has an [`Outbox`], bounded in messages and bytes
//! ([`RoomOptions::queue_capacity`], [`RoomOptions::queue_bytes`]), that its
//! own session task drains into its socket (`chat::run_session`). The room
//! works under a `std` mutex held for one operation and never across an
//! await. A client's message goes in only when it fits into every outbox it
//! reaches ([`Room::try_handle_message`]); when one is full, nothing is
//! delivered and the sender's session waits ([`Member::handle`], outside the
//! lock) until that outbox drains, so one client talking fast cannot push
//! anybody out. A full outbox whose client's socket has taken nothing for
//! [`RoomOptions::stall_timeout`] is the exception: that client does not
//! read, so it is removed (its name freed, `WSLeave` sent), its
//! [`Member::evicted`] token is cancelled, and its session task then closes it
//! with 1008; senders wait for it no longer than that. The room's
//! own lines (replies, presence) go in without waiting. Each message is built
//! once and cloned per recipient; a [`Message`] holds `Bytes`, so a clone is a
//! reference count, not a copy of the payload.
//!
//! Fan-out: a client that the gateway carries (`backend::Session::carrier`)
//! gets everything through its carrier instead of its outbox: a message
//! for many goes as one record per carrier naming all its carried
//! recipients, the room's own lines as a record for one. A full carrier
//! makes the sender wait as a full outbox whose client reads does; a carried
//! client is never evicted here (the gateway closes one that does not read
//! with 1008, under the terms `websocket_chat` gives it).
//!
//! Ordering: every delivery happens under the lock, a message goes to all its
//! recipients in one operation, so each outbox (and each carrier) receives
//! messages in the order the room handled them, and a session hands its
//! client's messages over one at a time, in the order received.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use backend::Carrier;

use super::command::{Command, PRIVATE_USAGE, private_line, public_line};
use super::name::{unique_name, validate_name};
use super::outbox::{Admission, Outbox, OutboxLimits};
use crate::backplane::Backplane;

mod shared;

/// The default number of messages that may wait for one client.
pub const DEFAULT_QUEUE_CAPACITY: usize = 256;

/// The default number of payload bytes that may wait for one client (1 MiB).
pub const DEFAULT_QUEUE_BYTES: usize = 1 << 20;

/// The default time a client with a full queue may leave its socket
/// untouched before it counts as not reading.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(2);

/// A client's number within one room, for as long as the process runs.
pub type ClientId = u64;

/// How a [`Room`] behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomOptions {
    /// Whether ouistiti's commands (`WSHello`, `WSPrivate`, `WSWhois`) are
    /// understood (`-w`); without them every message is ordinary chat.
    pub commands: bool,
    /// Messages that may wait for one client; a sender whose message would
    /// be one more waits (or evicts the client if it does not read).
    pub queue_capacity: NonZeroUsize,
    /// Payload bytes that may wait for one client, with the same effect.
    pub queue_bytes: NonZeroUsize,
    /// How long a client whose queue is full may leave its socket untouched
    /// (nothing written to it) before it is evicted as not reading.
    pub stall_timeout: Duration,
}

impl Default for RoomOptions {
    fn default() -> RoomOptions {
        RoomOptions {
            commands: false,
            queue_capacity: NonZeroUsize::new(DEFAULT_QUEUE_CAPACITY)
                .expect("the default capacity is not zero"),
            queue_bytes: NonZeroUsize::new(DEFAULT_QUEUE_BYTES)
                .expect("the default byte limit is not zero"),
            stall_timeout: DEFAULT_STALL_TIMEOUT,
        }
    }
}

/// The clients of one `websocket_chat` process.
#[derive(Debug)]
pub struct Room {
    options: RoomOptions,
    state: Mutex<RoomState>,
    /// Woken when an outbox a sender waits for drains, closes, or its writer
    /// blocks: the waiting senders then try again.
    changed: Arc<Notify>,
    /// With `--redis`: the other instances of the chat (`room::shared`).
    backplane: OnceLock<Arc<Backplane>>,
}

/// What became of a client's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handling {
    /// It was handled (or dropped, the client being gone).
    Done,
    /// An outbox it would reach is full; nothing happened. Try again once the
    /// room's outboxes change, or at `until` ([`Member::handle`] does).
    Wait {
        /// When a full outbox's client will count as not reading unless its
        /// socket takes something before; `None` if none is blocked.
        until: Option<Instant>,
    },
}

#[derive(Debug, Default)]
struct RoomState {
    next_id: ClientId,
    clients: HashMap<ClientId, ClientEntry>,
    /// Taken names; sorted, so `WSUsers` lists them in a stable order.
    names: BTreeMap<String, ClientId>,
    /// Clients found too slow during the current operation.
    overflowed: Vec<ClientId>,
    /// The names of evicted clients, until their sessions leave (and, with
    /// `--redis`, free them in the shared state).
    departed: HashMap<ClientId, String>,
    /// With `--redis`: names freed while Redis was away, to announce to the
    /// other instances when it is back (at most `shared::MAX_LISTED_NAMES`).
    left_while_down: Vec<String>,
}

#[derive(Debug)]
struct ClientEntry {
    name: Option<String>,
    /// The client's IP address, for `WSWhois`.
    address: String,
    outbox: Arc<Outbox>,
    evicted: CancellationToken,
    /// The carrier that carries this client and its id there; then the
    /// outbox stays empty.
    carrier: Option<(Carrier, u64)>,
}

/// A full carrier a sender waits for: until a message of `payload_len`
/// bytes for `n_recipients` fits.
#[derive(Debug)]
struct CarrierWait {
    carrier: Carrier,
    payload_len: usize,
    n_recipients: usize,
}

/// What an attempt at an operation came to: [`Handling`], and with
/// [`Handling::Wait`] possibly a full carrier to wait for as well.
type Attempt = (Handling, Option<CarrierWait>);

/// One client's place in the room; dropping it leaves the room (the name is
/// freed and the others get `WSLeave`).
#[derive(Debug)]
pub struct Member {
    room: Arc<Room>,
    id: ClientId,
    evicted: CancellationToken,
}

impl Member {
    /// This client's id in the room.
    pub fn id(&self) -> ClientId {
        self.id
    }

    /// Cancelled when the room dropped this client because its queue was
    /// full; the session should then close it with 1008.
    pub fn evicted(&self) -> &CancellationToken {
        &self.evicted
    }

    /// Handles a message from this client: a command (with `-w`) or chat for
    /// the others. Waits, without holding the room's lock, while an outbox the
    /// message would reach is full and its writer is still taking messages out.
    pub async fn handle(&self, message: Message) {
        if let Some(backplane) = self.room.backplane.get() {
            return self.handle_shared(backplane, message).await;
        }
        self.handle_local(&message).await;
    }

    /// [`Member::handle`] within this process alone.
    async fn handle_local(&self, message: &Message) {
        self.room
            .until_done(|| self.room.attempt_message(self.id, message))
            .await;
    }

    /// Handles a message from this client if every outbox it reaches has room
    /// for it now; [`Handling::Wait`] if not (nothing happened then).
    pub fn try_handle(&self, message: &Message) -> Handling {
        self.room.try_handle_message(self.id, message)
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        // `Member::leave` may have left already; then this does nothing.
        self.room.leave(self.id);
    }
}

impl Room {
    /// An empty room.
    pub fn new(options: RoomOptions) -> Room {
        Room {
            options,
            state: Mutex::new(RoomState::default()),
            changed: Arc::new(Notify::new()),
            backplane: OnceLock::new(),
        }
    }

    /// Shares this room with the other instances on `backplane` (`--redis`);
    /// only the first call counts, before any client joins.
    pub fn attach_backplane(&self, backplane: Arc<Backplane>) {
        let _ = self.backplane.set(backplane);
    }

    /// The room's options.
    pub fn options(&self) -> RoomOptions {
        self.options
    }

    /// Calls `attempt` until it is [`Handling::Done`]; after a
    /// [`Handling::Wait`], waits for a change in the room (an outbox drained,
    /// a client gone), for room in the full carrier it names, or for the
    /// deadline it names before the next attempt.
    async fn until_done(&self, mut attempt: impl FnMut() -> Attempt) {
        loop {
            let changed = self.changed.notified();
            let mut changed = std::pin::pin!(changed);
            // Registered before trying, so a change in between is not missed.
            changed.as_mut().enable();
            let (handling, carrier) = attempt();
            let until = match handling {
                Handling::Done => return,
                Handling::Wait { until } => until,
            };
            // A carrier checks for room and registers its waiter at once.
            let carrier_room = async {
                match &carrier {
                    Some(wait) => wait.carrier.room(wait.payload_len, wait.n_recipients).await,
                    None => std::future::pending().await,
                }
            };
            let deadline = async {
                match until {
                    Some(until) => tokio::time::sleep_until(until).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = changed => {}
                () = carrier_room => {}
                () = deadline => {}
            }
        }
    }

    /// Adds an unnamed client whose address (`ip:port`, from OPEN) is `peer`.
    /// Returns its membership and the outbox its session must drain.
    pub fn join(self: &Arc<Room>, peer: &str) -> (Member, Arc<Outbox>) {
        self.join_carried(peer, None)
    }

    /// [`Room::join`] for a client that `carrier` carries (with its id
    /// there, `backend::Session::carrier`): everything for it goes on the
    /// carrier, in the room's order, and its outbox stays empty.
    pub fn join_carried(
        self: &Arc<Room>,
        peer: &str,
        carrier: Option<(Carrier, u64)>,
    ) -> (Member, Arc<Outbox>) {
        let limits = OutboxLimits {
            messages: self.options.queue_capacity,
            bytes: self.options.queue_bytes,
            stall_timeout: self.options.stall_timeout,
        };
        let outbox = Arc::new(Outbox::new(limits, Arc::clone(&self.changed)));
        let evicted = CancellationToken::new();
        let id = {
            let mut state = self.lock();
            let id = state.next_id;
            state.next_id += 1;
            state.clients.insert(
                id,
                ClientEntry {
                    name: None,
                    address: peer_ip(peer),
                    outbox: Arc::clone(&outbox),
                    evicted: evicted.clone(),
                    carrier,
                },
            );
            id
        };
        let member = Member {
            room: Arc::clone(self),
            id,
            evicted,
        };
        (member, outbox)
    }

    /// Number of clients in the room.
    pub fn n_clients(&self) -> usize {
        self.lock().clients.len()
    }

    /// Handles one message from client `from` if it fits into every outbox
    /// it reaches: the others' for chat, everyone's for a command (its replies
    /// and presence lines). On the way, clients that do not read (a full
    /// outbox, nothing written to the socket for the stall timeout) are
    /// evicted. If an outbox is still full, nothing is delivered and the
    /// answer is [`Handling::Wait`].
    pub fn try_handle_message(&self, from: ClientId, message: &Message) -> Handling {
        self.attempt_message(from, message).0
    }

    /// [`Room::try_handle_message`], with the full carrier to wait for.
    fn attempt_message(&self, from: ClientId, message: &Message) -> Attempt {
        let mut state = self.lock();
        let command = match message {
            Message::Text(text) if self.options.commands => Command::parse(text.as_str()),
            Message::Text(_) | Message::Binary(_) => None,
            // Sessions only yield data and close messages; nothing else is chat.
            Message::Close(_) | Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {
                return (Handling::Done, None);
            }
        };
        let wait = state.make_room(message.len(), Instant::now(), |id| {
            command.is_some() || id != from
        });
        state.evict_overflowed();
        if !state.clients.contains_key(&from) {
            // The sender itself does not read, or has left.
            return (Handling::Done, None);
        }
        if let Some(wait) = wait {
            return wait;
        }
        match command {
            // With `-w`, the others learn who said it, and nobody can pass
            // for the chat or for another client.
            None if self.options.commands => match message {
                Message::Text(text) => {
                    let line = public_line(state.name_of(from), text.as_str());
                    state.broadcast(from, &Message::text(line));
                }
                _ => state.broadcast(from, message),
            },
            None => state.broadcast(from, message),
            Some(Command::Hello { name }) => state.hello(from, name),
            Some(Command::Private { name, message }) => state.private(from, name, message),
            Some(Command::PrivateUsage) => {
                state.send_to(from, error_line(PRIVATE_USAGE));
            }
            Some(Command::Whois { name }) => state.whois(from, name),
        }
        (Handling::Done, None)
    }

    /// Removes client `id`, freeing its name; the others get `WSLeave` if it
    /// had one. Returns the name it had, also when it had been evicted before.
    pub fn leave(&self, id: ClientId) -> Option<String> {
        let mut state = self.lock();
        match state.remove(id) {
            Some(entry) => entry.name,
            None => state.departed.remove(&id),
        }
    }

    fn lock(&self) -> MutexGuard<'_, RoomState> {
        // A panic elsewhere cannot leave the maps inconsistent in a way that
        // matters more than stopping the whole chat, so carry on.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl RoomState {
    /// Asks the outbox of every client that `reaches` whether a message of
    /// `len` bytes fits at `now`: clients that do not read are marked for
    /// eviction, and if some other outbox is full the answer is how the
    /// sender must wait. Carried clients are counted per carrier instead,
    /// and a carrier without room for them makes the sender wait for it.
    fn make_room(
        &mut self,
        len: usize,
        now: Instant,
        reaches: impl Fn(ClientId) -> bool,
    ) -> Option<Attempt> {
        let mut wait = None;
        let mut carriers: Vec<(&Carrier, usize)> = Vec::new();
        for (&id, entry) in &self.clients {
            if !reaches(id) {
                continue;
            }
            if let Some((carrier, _)) = &entry.carrier {
                match carriers.iter_mut().find(|(known, _)| *known == carrier) {
                    Some((_, n_recipients)) => *n_recipients += 1,
                    None => carriers.push((carrier, 1)),
                }
                continue;
            }
            match entry.outbox.admit(len, now) {
                Admission::Fits => {}
                Admission::Full { stalled_at } => {
                    let until = match wait {
                        Some(Handling::Wait {
                            until: Some(earlier),
                        }) => Some(stalled_at.map_or(earlier, |at| at.min(earlier))),
                        _ => stalled_at,
                    };
                    wait = Some(Handling::Wait { until });
                }
                Admission::Stalled => self.overflowed.push(id),
            }
        }
        let full_carrier = carriers
            .into_iter()
            .find(|(carrier, n_recipients)| !carrier.has_room(len, *n_recipients))
            .map(|(carrier, n_recipients)| CarrierWait {
                carrier: carrier.clone(),
                payload_len: len,
                n_recipients,
            });
        match (wait, full_carrier) {
            (None, None) => None,
            (wait, carrier) => Some((wait.unwrap_or(Handling::Wait { until: None }), carrier)),
        }
    }

    /// Queues `message` for client `to`.
    fn send_to(&mut self, to: ClientId, message: Message) {
        if let Some(entry) = self.clients.get(&to) {
            match &entry.carrier {
                Some((carrier, link_id)) => send_on_carrier(carrier, &message, &[*link_id]),
                None => entry.outbox.push(message),
            }
        }
    }

    /// Queues `message` for every client but `from`.
    fn broadcast(&mut self, from: ClientId, message: &Message) {
        let recipients = self.clients.keys().copied().filter(|&id| id != from);
        let n_recipients = self.deliver(message, recipients);
        debug!(n_recipients, len = message.len(), "broadcast");
    }

    /// Queues `message` for each of `recipients` (clients not here are
    /// skipped): into the outbox of each client not carried, and as one
    /// record per carrier for the carried ones. Returns how many it reached.
    fn deliver(&self, message: &Message, recipients: impl Iterator<Item = ClientId>) -> usize {
        let mut carried: Vec<(&Carrier, Vec<u64>)> = Vec::new();
        let mut n_reached = 0;
        for id in recipients {
            let Some(entry) = self.clients.get(&id) else {
                continue;
            };
            n_reached += 1;
            match &entry.carrier {
                Some((carrier, link_id)) => {
                    match carried.iter_mut().find(|(known, _)| *known == carrier) {
                        Some((_, link_ids)) => link_ids.push(*link_id),
                        None => carried.push((carrier, vec![*link_id])),
                    }
                }
                None => entry.outbox.push(message.clone()),
            }
        }
        for (carrier, link_ids) in carried {
            send_on_carrier(carrier, message, &link_ids);
        }
        n_reached
    }

    fn hello(&mut self, from: ClientId, requested: &str) {
        if let Err(error) = validate_name(requested) {
            self.send_to(from, error_line(&format!("invalid name: {error}")));
            return;
        }
        let Some(entry) = self.clients.get_mut(&from) else {
            return;
        };
        let old_name = entry.name.take();
        if let Some(old_name) = &old_name {
            self.names.remove(old_name);
        }
        let name = unique_name(requested, |candidate| self.names.contains_key(candidate));
        self.names.insert(name.clone(), from);
        if let Some(entry) = self.clients.get_mut(&from) {
            entry.name = Some(name.clone());
        }
        debug!(%name, ?old_name, "named");
        self.send_to(from, Message::text(format!("WSWelcome {name}")));
        let others: Vec<&str> = self
            .names
            .keys()
            .map(String::as_str)
            .filter(|&other| other != name)
            .collect();
        let users = if others.is_empty() {
            "WSUsers".to_owned()
        } else {
            format!("WSUsers {}", others.join(" "))
        };
        self.send_to(from, Message::text(users));
        if old_name.as_deref() == Some(name.as_str()) {
            return;
        }
        if let Some(old_name) = old_name {
            self.broadcast(from, &Message::text(format!("WSLeave {old_name}")));
        }
        self.broadcast(from, &Message::text(format!("WSJoin {name}")));
    }

    /// The name of client `id`, if it has one.
    fn name_of(&self, id: ClientId) -> Option<&str> {
        self.clients.get(&id)?.name.as_deref()
    }

    fn private(&mut self, from: ClientId, name: &str, text: &str) {
        match self.names.get(name) {
            Some(&to) => {
                let line = private_line(self.name_of(from), text);
                self.send_to(to, Message::text(line));
            }
            None => self.send_to(from, error_line(&format!("unknown name {name}"))),
        }
    }

    fn whois(&mut self, from: ClientId, name: &str) {
        let address = self
            .names
            .get(name)
            .and_then(|id| self.clients.get(id))
            .map_or("undefined", |entry| entry.address.as_str());
        let reply = Message::text(format!("WSIs {name} {address}"));
        self.send_to(from, reply);
    }

    /// Removes client `id`, if still here, and announces it if it had a name.
    /// Its outbox closes, so senders waiting for it go on.
    fn remove(&mut self, id: ClientId) -> Option<ClientEntry> {
        let entry = self.clients.remove(&id)?;
        entry.outbox.close();
        if let Some(name) = &entry.name {
            self.names.remove(name);
            self.broadcast(id, &Message::text(format!("WSLeave {name}")));
        }
        Some(entry)
    }

    /// Removes every client found too slow, cancelling its token so its
    /// session closes it.
    fn evict_overflowed(&mut self) {
        while let Some(id) = self.overflowed.pop() {
            if let Some(entry) = self.remove(id) {
                debug!(client = id, name = ?entry.name, "queue full, not reading; evicted");
                entry.evicted.cancel();
                if let Some(name) = entry.name {
                    self.departed.insert(id, name);
                }
            }
        }
    }
}

/// Queues `message` on `carrier` for `link_ids`; the room checked for room
/// first (`RoomState::make_room`), or it is one of the room's own lines.
fn send_on_carrier(carrier: &Carrier, message: &Message, link_ids: &[u64]) {
    if let Err(error) = carrier.send_unchecked(message, link_ids) {
        // Closed: its clients are leaving (their sessions end). Too large:
        // a line longer than a record may be, which cannot be delivered.
        warn!(%error, n_recipients = link_ids.len(), "not delivered on a carrier");
    }
}

fn error_line(text: &str) -> Message {
    Message::text(format!("WSError {text}"))
}

/// The IP address part of `peer` (`ip:port` or `[ipv6]:port`); `peer` itself
/// if it is not a socket address.
pub fn peer_ip(peer: &str) -> String {
    match peer.parse::<SocketAddr>() {
        Ok(address) => address.ip().to_string(),
        Err(_) => peer.to_owned(),
    }
}

#[cfg(test)]
mod tests;
