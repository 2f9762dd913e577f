//! The chat room: who is connected, under which name, and delivering each
//! message to the right queues.
//!
//! Every client has a bounded queue ([`RoomOptions::queue_capacity`]) that its
//! own session task drains into its socket (`chat::run_session`). The room
//! only ever `try_send`s into those queues, under a `std` mutex held for one
//! operation and never across an await, so no client can slow down the room or
//! another client: a client whose queue is full is removed at once (its name
//! freed, `WSLeave` sent) and its [`Member::evicted`] token is cancelled, and
//! its session task then closes it with 1008. Each message is built once and
//! cloned per recipient; a [`Message`] holds `Bytes`, so a clone is a reference
//! count, not a copy of the payload.
//!
//! Ordering: every delivery happens under the lock, so each queue receives
//! messages in the order the room handled them, and a session handles its
//! client's messages one at a time, in the order received.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::command::{Command, PRIVATE_USAGE};
use super::name::{unique_name, validate_name};

/// The default number of messages waiting for one client before it is
/// disconnected as too slow.
pub const DEFAULT_QUEUE_CAPACITY: usize = 256;

/// A client's number within one room, for as long as the process runs.
pub type ClientId = u64;

/// How a [`Room`] behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomOptions {
    /// Whether ouistiti's commands (`WSHello`, `WSPrivate`, `WSWhois`) are
    /// understood (`-w`); without them every message is ordinary chat.
    pub commands: bool,
    /// Messages that may wait for one client; one more disconnects it.
    pub queue_capacity: NonZeroUsize,
}

impl Default for RoomOptions {
    fn default() -> RoomOptions {
        RoomOptions {
            commands: false,
            queue_capacity: NonZeroUsize::new(DEFAULT_QUEUE_CAPACITY)
                .expect("the default capacity is not zero"),
        }
    }
}

/// The clients of one `websocket_chat` process.
#[derive(Debug)]
pub struct Room {
    options: RoomOptions,
    state: Mutex<RoomState>,
}

#[derive(Debug, Default)]
struct RoomState {
    next_id: ClientId,
    clients: HashMap<ClientId, ClientEntry>,
    /// Taken names; sorted, so `WSUsers` lists them in a stable order.
    names: BTreeMap<String, ClientId>,
    /// Clients whose queue overflowed during the current operation.
    overflowed: Vec<ClientId>,
}

#[derive(Debug)]
struct ClientEntry {
    name: Option<String>,
    /// The client's IP address, for `WSWhois`.
    address: String,
    queue: mpsc::Sender<Message>,
    evicted: CancellationToken,
}

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

    /// Handles a message from this client: a command (with `-w`) or chat for the others.
    pub fn handle(&self, message: Message) {
        self.room.handle_message(self.id, message);
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.room.leave(self.id);
    }
}

impl Room {
    /// An empty room.
    pub fn new(options: RoomOptions) -> Room {
        Room {
            options,
            state: Mutex::new(RoomState::default()),
        }
    }

    /// The room's options.
    pub fn options(&self) -> RoomOptions {
        self.options
    }

    /// Adds an unnamed client whose address (`ip:port`, from OPEN) is `peer`.
    /// Returns its membership and the queue its session must drain.
    pub fn join(self: &Arc<Room>, peer: &str) -> (Member, mpsc::Receiver<Message>) {
        let (sender, receiver) = mpsc::channel(self.options.queue_capacity.get());
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
                    queue: sender,
                    evicted: evicted.clone(),
                },
            );
            id
        };
        let member = Member {
            room: Arc::clone(self),
            id,
            evicted,
        };
        (member, receiver)
    }

    /// Number of clients in the room.
    pub fn n_clients(&self) -> usize {
        self.lock().clients.len()
    }

    /// Handles one message from client `from`.
    pub fn handle_message(&self, from: ClientId, message: Message) {
        let mut state = self.lock();
        let command = match &message {
            Message::Text(text) if self.options.commands => Command::parse(text.as_str()),
            Message::Text(_) | Message::Binary(_) => None,
            // Sessions only yield data and close messages; nothing else is chat.
            Message::Close(_) | Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {
                return;
            }
        };
        match command {
            None => state.broadcast(from, &message),
            Some(Command::Hello { name }) => state.hello(from, name),
            Some(Command::Private { name, message }) => state.private(from, name, message),
            Some(Command::PrivateUsage) => {
                state.send_to(from, error_line(PRIVATE_USAGE));
            }
            Some(Command::Whois { name }) => state.whois(from, name),
        }
        state.evict_overflowed();
    }

    /// Removes client `id`, freeing its name; the others get `WSLeave` if it had one.
    pub fn leave(&self, id: ClientId) {
        let mut state = self.lock();
        state.remove(id);
        state.evict_overflowed();
    }

    fn lock(&self) -> MutexGuard<'_, RoomState> {
        // A panic elsewhere cannot leave the maps inconsistent in a way that
        // matters more than stopping the whole chat, so carry on.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl RoomState {
    /// Queues `message` for client `to`; a full queue marks it for eviction.
    fn send_to(&mut self, to: ClientId, message: Message) {
        let Some(entry) = self.clients.get(&to) else {
            return;
        };
        match entry.queue.try_send(message) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.overflowed.push(to),
            // The session has ended and is about to leave.
            Err(TrySendError::Closed(_)) => {}
        }
    }

    /// Queues `message` for every client but `from`.
    fn broadcast(&mut self, from: ClientId, message: &Message) {
        let recipients: Vec<ClientId> = self
            .clients
            .keys()
            .copied()
            .filter(|&id| id != from)
            .collect();
        debug!(
            n_recipients = recipients.len(),
            len = message.len(),
            "broadcast"
        );
        for id in recipients {
            self.send_to(id, message.clone());
        }
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

    fn private(&mut self, from: ClientId, name: &str, text: &str) {
        match self.names.get(name) {
            Some(&to) => self.send_to(to, Message::text(text)),
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
    fn remove(&mut self, id: ClientId) -> Option<ClientEntry> {
        let entry = self.clients.remove(&id)?;
        if let Some(name) = &entry.name {
            self.names.remove(name);
            self.broadcast(id, &Message::text(format!("WSLeave {name}")));
        }
        Some(entry)
    }

    /// Removes every client whose queue overflowed, cancelling its token so
    /// its session closes it. Announcing a removal may overflow more queues;
    /// those go too, so this ends with no overflowed client in the room.
    fn evict_overflowed(&mut self) {
        while let Some(id) = self.overflowed.pop() {
            if let Some(entry) = self.remove(id) {
                debug!(client = id, name = ?entry.name, "queue full; evicted");
                entry.evicted.cancel();
            }
        }
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
