//! The broker's routing core: which clients are connected, the name each one
//! holds (a token, an id, a user), the groups (channels, broadcast groups)
//! each one is in, the names an operator registered, and the pending answers
//! of request/answer dialects; and delivering a message into the bounded
//! outbox of every client it reaches.
//!
//! [`Core`] is the interface the dialects use, so that a backplane spanning
//! several broker processes can implement it later; [`LocalCore`] is the
//! in-process implementation. Parsing and formatting are the dialects' job
//! (`broker::tokens`, `broker::channels`, ...); they hold no state of their own.
//!
//! Delivery follows the chat's rules (`chat::room`): a message goes into every
//! outbox it reaches at once or into none. When one of them is full the
//! sender waits outside the lock ([`deliver`]) while that client still reads;
//! a client whose outbox is full and whose socket has taken nothing for the
//! stall timeout does not read, and is evicted: it leaves the core at once and
//! its session closes it with 1008. So a slow client never makes another one
//! lose a message, and it never holds more than its outbox's bound.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::num::NonZeroUsize;
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::chat::outbox::{Admission, Outbox, OutboxLimits};

/// A client's number, unique for as long as the broker runs (Achex's `sID`).
pub type ClientId = u64;

/// The bounds of a [`LocalCore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoreLimits {
    /// Messages that may wait for one client.
    pub queue_capacity: NonZeroUsize,
    /// Payload bytes that may wait for one client.
    pub queue_bytes: NonZeroUsize,
    /// How long a client with a full queue may take nothing from its socket
    /// before it is evicted as not reading.
    pub stall_timeout: Duration,
    /// Longest name (token, id) in bytes.
    pub max_name_len: usize,
    /// Longest group (channel) name in bytes.
    pub max_group_len: usize,
    /// Groups one client may be in at once.
    pub max_groups_per_client: usize,
    /// Names an operator may register (preloaded or through the HTTP API).
    pub max_registered: usize,
    /// Pending answers (acks) of one client remembered at once, answered or
    /// not, each until its time to live ends.
    pub max_pending_per_client: usize,
}

impl Default for CoreLimits {
    fn default() -> CoreLimits {
        CoreLimits {
            queue_capacity: NonZeroUsize::new(256).expect("256 is not zero"),
            queue_bytes: NonZeroUsize::new(1 << 20).expect("1 MiB is not zero"),
            stall_timeout: Duration::from_secs(2),
            max_name_len: 128,
            max_group_len: 128,
            max_groups_per_client: 64,
            max_registered: 100_000,
            max_pending_per_client: 256,
        }
    }
}

/// Why the core refused an operation; each is a reply to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    /// The name or group is empty, too long, or holds a control character.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// "name" or "group".
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// Another live client holds this name and it may not be taken over.
    #[error("{0:?} is taken by another client")]
    Taken(String),
    /// The client is in as many groups as it may be.
    #[error("in too many groups (at most {0})")]
    TooManyGroups(usize),
    /// The operator's list of names is full.
    #[error("too many registered names (at most {0})")]
    TooManyRegistered(usize),
    /// The client waits for as many answers as it may.
    #[error("too many messages waiting for an answer (at most {0})")]
    TooManyPending(usize),
    /// Another client waits for an answer under the same key.
    #[error("ack {0:?} is in use by another client")]
    KeyInUse(String),
    /// The client is no longer connected (it was evicted).
    #[error("client is gone")]
    Gone,
}

/// How a client takes a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Several clients may hold the name at once (tokens, Achex users).
    Shared,
    /// Nobody else may hold it: [`CoreError::Taken`] if someone does.
    Exclusive,
    /// Whoever held it loses it to this client (wsmsgbroker's original behaviour).
    TakeOver,
}

/// Who a message goes to; a client that several targets reach gets it once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// One client.
    Client(ClientId),
    /// Every client holding exactly this name.
    Name(&'a str),
    /// Every client whose name starts with this prefix.
    NamePrefix(&'a str),
    /// Every member of this group.
    Group(&'a str),
    /// Every client holding this name, or in the group of that name.
    NameOrGroup(&'a str),
}

/// What became of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// It went into this many outboxes (possibly none).
    Delivered(usize),
    /// An outbox it reaches is full; nothing was delivered. Wait for
    /// [`Core::changed`], and until `until` at most when it is set.
    Wait {
        /// When the full outbox's client counts as not reading, if its writer is blocked.
        until: Option<Instant>,
    },
}

/// A pending answer that [`Core::take_answer`] resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The first answer: it goes to this client.
    To(ClientId),
    /// Someone answered already; this later answer is dropped.
    AlreadyAnswered,
    /// No such key, it expired, or the answering client never received it.
    Unknown,
}

/// One connected client, as [`Core::clients`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    /// Its number.
    pub id: ClientId,
    /// Its name, if it has one.
    pub name: Option<String>,
    /// Its address, as the gateway saw it.
    pub peer: String,
    /// The groups it is in.
    pub groups: Vec<String>,
}

/// A client's place in the core, as its session holds it.
#[derive(Debug)]
pub struct Connected {
    /// Its number.
    pub id: ClientId,
    /// What its session writes to its socket.
    pub outbox: Arc<Outbox>,
    /// Cancelled when the core evicts it for not reading.
    pub evicted: CancellationToken,
}

/// The routing state the dialects share. Every method is one short
/// operation that never waits; [`deliver`] adds the waiting for a full outbox.
pub trait Core: Send + Sync + std::fmt::Debug {
    /// The bounds this core enforces.
    fn limits(&self) -> CoreLimits;
    /// Adds a client with no name and no group.
    fn connect(&self, peer: &str) -> Connected;
    /// Removes a client with its name, groups and pending answers.
    fn disconnect(&self, client: ClientId);
    /// Gives `client` the name `name` (dropping any name it had). With
    /// [`Claim::TakeOver`], returns the client that lost the name.
    fn claim_name(
        &self,
        client: ClientId,
        name: &str,
        claim: Claim,
    ) -> Result<Option<ClientId>, CoreError>;
    /// Takes away the name of `client`, returning it.
    fn release_name(&self, client: ClientId) -> Option<String>;
    /// The name of `client`.
    fn name_of(&self, client: ClientId) -> Option<String>;
    /// Adds `client` to `group`; `false` if it was in it already.
    fn join(&self, client: ClientId, group: &str) -> Result<bool, CoreError>;
    /// Takes `client` out of `group`; `false` if it was not in it.
    fn leave(&self, client: ClientId, group: &str) -> bool;
    /// Puts `message` into the outbox of every client the targets reach,
    /// evicting on the way those that do not read.
    fn try_deliver(&self, targets: &[Target<'_>], message: &Message) -> Delivery;
    /// Notified whenever an outbox that a sender waits for drains.
    fn changed(&self) -> &Notify;
    /// Every connected client.
    fn clients(&self) -> Vec<ClientInfo>;
    /// Replaces the operator's registered names.
    fn set_registered(&self, names: BTreeSet<String>) -> Result<(), CoreError>;
    /// Registers one name; `false` if it was registered already.
    fn register(&self, name: &str) -> Result<bool, CoreError>;
    /// Unregisters one name; `false` if it was not registered.
    fn unregister(&self, name: &str) -> bool;
    /// Whether `name` is registered.
    fn is_registered(&self, name: &str) -> bool;
    /// Every registered name, in order.
    fn registered(&self) -> Vec<String>;
    /// Remembers that an answer under `key` goes back to `asker`, that only
    /// the `answerers` may give it, and for `ttl` at most.
    fn expect_answer(
        &self,
        key: &str,
        asker: ClientId,
        answerers: &[ClientId],
        ttl: Duration,
    ) -> Result<(), CoreError>;
    /// Resolves an answer under `key` from `answerer`: the first one wins.
    fn take_answer(&self, key: &str, answerer: ClientId) -> Answer;
    /// The clients that `targets` reach now, without delivering anything.
    fn resolve(&self, targets: &[Target<'_>]) -> Vec<ClientId>;
}

/// Delivers `message` to every client the `targets` reach, waiting while an
/// outbox it reaches is full and its client reads. Returns how many got it.
pub async fn deliver(core: &dyn Core, targets: &[Target<'_>], message: &Message) -> usize {
    loop {
        let mut changed = pin!(core.changed().notified());
        // Registered before trying, so a change in between is not missed.
        changed.as_mut().enable();
        match core.try_deliver(targets, message) {
            Delivery::Delivered(n_delivered) => return n_delivered,
            Delivery::Wait { until: None } => changed.await,
            Delivery::Wait { until: Some(until) } => {
                tokio::select! {
                    () = changed => {}
                    () = tokio::time::sleep_until(until) => {}
                }
            }
        }
    }
}

/// Checks a name or group name: not empty, at most `max_len` bytes, no
/// control characters.
pub fn validate_label(what: &'static str, label: &str, max_len: usize) -> Result<(), CoreError> {
    let reason = if label.is_empty() {
        "it is empty".to_owned()
    } else if label.len() > max_len {
        format!("longer than {max_len} bytes")
    } else if label.chars().any(char::is_control) {
        "it holds a control character".to_owned()
    } else {
        return Ok(());
    };
    Err(CoreError::Invalid { what, reason })
}

/// The in-process [`Core`]: maps under one `std` mutex, held for one operation.
#[derive(Debug)]
pub struct LocalCore {
    limits: CoreLimits,
    state: Mutex<State>,
    changed: Arc<Notify>,
}

#[derive(Debug, Default)]
struct State {
    next_id: ClientId,
    clients: HashMap<ClientId, ClientEntry>,
    /// Name → the clients holding it; ordered for prefix matches.
    names: BTreeMap<String, BTreeSet<ClientId>>,
    groups: HashMap<String, BTreeSet<ClientId>>,
    registered: BTreeSet<String>,
    pending: HashMap<String, Pending>,
}

#[derive(Debug)]
struct ClientEntry {
    name: Option<String>,
    groups: BTreeSet<String>,
    peer: String,
    outbox: Arc<Outbox>,
    evicted: CancellationToken,
    n_pending: usize,
}

#[derive(Debug)]
struct Pending {
    asker: ClientId,
    answerers: Vec<ClientId>,
    expires: Instant,
    answered: bool,
}

impl LocalCore {
    /// An empty core.
    pub fn new(limits: CoreLimits) -> LocalCore {
        LocalCore::with_first_id(limits, 0)
    }

    /// An empty core whose first client is number `first_id` (instances
    /// sharing their clients through Redis number theirs apart:
    /// `shared::first_client_id`).
    pub fn with_first_id(limits: CoreLimits, first_id: ClientId) -> LocalCore {
        LocalCore {
            limits,
            state: Mutex::new(State {
                next_id: first_id,
                ..State::default()
            }),
            changed: Arc::new(Notify::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every operation leaves the maps consistent before anything can panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    fn remove_client(&mut self, client: ClientId) -> Option<ClientEntry> {
        let entry = self.clients.remove(&client)?;
        if let Some(name) = &entry.name {
            self.unindex_name(name, client);
        }
        for group in &entry.groups {
            if let Some(members) = self.groups.get_mut(group) {
                members.remove(&client);
                if members.is_empty() {
                    self.groups.remove(group);
                }
            }
        }
        self.pending.retain(|_, pending| pending.asker != client);
        entry.outbox.close();
        Some(entry)
    }

    fn unindex_name(&mut self, name: &str, client: ClientId) {
        if let Some(holders) = self.names.get_mut(name) {
            holders.remove(&client);
            if holders.is_empty() {
                self.names.remove(name);
            }
        }
    }

    fn resolve(&self, targets: &[Target<'_>]) -> BTreeSet<ClientId> {
        let mut reached = BTreeSet::new();
        for target in targets {
            match *target {
                Target::Client(client) => {
                    if self.clients.contains_key(&client) {
                        reached.insert(client);
                    }
                }
                Target::Name(name) => reached.extend(self.names.get(name).into_iter().flatten()),
                Target::NamePrefix(prefix) => {
                    for (name, holders) in self.names.range::<str, _>((
                        std::ops::Bound::Included(prefix),
                        std::ops::Bound::Unbounded,
                    )) {
                        if !name.starts_with(prefix) {
                            break;
                        }
                        reached.extend(holders);
                    }
                }
                Target::Group(group) => {
                    reached.extend(self.groups.get(group).into_iter().flatten())
                }
                Target::NameOrGroup(label) => {
                    reached.extend(self.names.get(label).into_iter().flatten());
                    reached.extend(self.groups.get(label).into_iter().flatten());
                }
            }
        }
        reached
    }

    fn sweep_pending(&mut self, now: Instant) {
        let clients = &mut self.clients;
        self.pending.retain(|_, pending| {
            let keep = pending.expires > now;
            if !keep && let Some(entry) = clients.get_mut(&pending.asker) {
                entry.n_pending = entry.n_pending.saturating_sub(1);
            }
            keep
        });
    }
}

impl Core for LocalCore {
    fn limits(&self) -> CoreLimits {
        self.limits
    }

    fn connect(&self, peer: &str) -> Connected {
        let limits = OutboxLimits {
            messages: self.limits.queue_capacity,
            bytes: self.limits.queue_bytes,
            stall_timeout: self.limits.stall_timeout,
        };
        let outbox = Arc::new(Outbox::new(limits, Arc::clone(&self.changed)));
        let evicted = CancellationToken::new();
        let mut state = self.lock();
        let id = state.next_id;
        state.next_id += 1;
        state.clients.insert(
            id,
            ClientEntry {
                name: None,
                groups: BTreeSet::new(),
                peer: peer.to_owned(),
                outbox: Arc::clone(&outbox),
                evicted: evicted.clone(),
                n_pending: 0,
            },
        );
        Connected {
            id,
            outbox,
            evicted,
        }
    }

    fn disconnect(&self, client: ClientId) {
        let removed = self.lock().remove_client(client);
        if removed.is_some() {
            // A sender waiting for this client's outbox need not wait any more.
            self.changed.notify_waiters();
        }
    }

    fn claim_name(
        &self,
        client: ClientId,
        name: &str,
        claim: Claim,
    ) -> Result<Option<ClientId>, CoreError> {
        validate_label("name", name, self.limits.max_name_len)?;
        let mut state = self.lock();
        if !state.clients.contains_key(&client) {
            return Err(CoreError::Gone);
        }
        let others: Vec<ClientId> = state
            .names
            .get(name)
            .into_iter()
            .flatten()
            .copied()
            .filter(|&holder| holder != client)
            .collect();
        let mut displaced = None;
        match claim {
            Claim::Shared => {}
            Claim::Exclusive if !others.is_empty() => {
                return Err(CoreError::Taken(name.to_owned()));
            }
            Claim::Exclusive => {}
            Claim::TakeOver => {
                for &other in &others {
                    state.unindex_name(name, other);
                    if let Some(entry) = state.clients.get_mut(&other) {
                        entry.name = None;
                    }
                }
                displaced = others.first().copied();
            }
        }
        let old = state
            .clients
            .get_mut(&client)
            .and_then(|entry| entry.name.replace(name.to_owned()));
        if let Some(old) = old {
            state.unindex_name(&old, client);
        }
        state
            .names
            .entry(name.to_owned())
            .or_default()
            .insert(client);
        Ok(displaced)
    }

    fn release_name(&self, client: ClientId) -> Option<String> {
        let mut state = self.lock();
        let name = state.clients.get_mut(&client)?.name.take()?;
        state.unindex_name(&name, client);
        Some(name)
    }

    fn name_of(&self, client: ClientId) -> Option<String> {
        self.lock().clients.get(&client)?.name.clone()
    }

    fn join(&self, client: ClientId, group: &str) -> Result<bool, CoreError> {
        validate_label("group", group, self.limits.max_group_len)?;
        let mut state = self.lock();
        let entry = state.clients.get_mut(&client).ok_or(CoreError::Gone)?;
        if entry.groups.contains(group) {
            return Ok(false);
        }
        if entry.groups.len() >= self.limits.max_groups_per_client {
            return Err(CoreError::TooManyGroups(self.limits.max_groups_per_client));
        }
        entry.groups.insert(group.to_owned());
        state
            .groups
            .entry(group.to_owned())
            .or_default()
            .insert(client);
        Ok(true)
    }

    fn leave(&self, client: ClientId, group: &str) -> bool {
        let mut state = self.lock();
        let Some(entry) = state.clients.get_mut(&client) else {
            return false;
        };
        if !entry.groups.remove(group) {
            return false;
        }
        if let Some(members) = state.groups.get_mut(group) {
            members.remove(&client);
            if members.is_empty() {
                state.groups.remove(group);
            }
        }
        true
    }

    fn try_deliver(&self, targets: &[Target<'_>], message: &Message) -> Delivery {
        let now = Instant::now();
        let mut state = self.lock();
        let reached = state.resolve(targets);
        let mut wait: Option<Option<Instant>> = None;
        let mut stalled = Vec::new();
        for &client in &reached {
            let Some(entry) = state.clients.get(&client) else {
                continue;
            };
            match entry.outbox.admit(message.len(), now) {
                Admission::Fits => {}
                Admission::Stalled => stalled.push(client),
                Admission::Full { stalled_at } => {
                    wait = Some(match (wait.flatten(), stalled_at) {
                        (Some(earlier), Some(at)) => Some(earlier.min(at)),
                        (earlier, at) => earlier.or(at),
                    });
                }
            }
        }
        for &client in &stalled {
            if let Some(entry) = state.remove_client(client) {
                debug!(client, "evicted: its queue is full and it does not read");
                entry.evicted.cancel();
            }
        }
        if !stalled.is_empty() {
            self.changed.notify_waiters();
        }
        if let Some(until) = wait {
            return Delivery::Wait { until };
        }
        let mut n_delivered = 0;
        for client in reached {
            if let Some(entry) = state.clients.get(&client) {
                entry.outbox.push(message.clone());
                n_delivered += 1;
            }
        }
        Delivery::Delivered(n_delivered)
    }

    fn changed(&self) -> &Notify {
        &self.changed
    }

    fn clients(&self) -> Vec<ClientInfo> {
        let state = self.lock();
        let mut clients: Vec<ClientInfo> = state
            .clients
            .iter()
            .map(|(&id, entry)| ClientInfo {
                id,
                name: entry.name.clone(),
                peer: entry.peer.clone(),
                groups: entry.groups.iter().cloned().collect(),
            })
            .collect();
        clients.sort_by_key(|client| client.id);
        clients
    }

    fn set_registered(&self, names: BTreeSet<String>) -> Result<(), CoreError> {
        if names.len() > self.limits.max_registered {
            return Err(CoreError::TooManyRegistered(self.limits.max_registered));
        }
        for name in &names {
            validate_label("name", name, self.limits.max_name_len)?;
        }
        self.lock().registered = names;
        Ok(())
    }

    fn register(&self, name: &str) -> Result<bool, CoreError> {
        validate_label("name", name, self.limits.max_name_len)?;
        let mut state = self.lock();
        if state.registered.contains(name) {
            return Ok(false);
        }
        if state.registered.len() >= self.limits.max_registered {
            return Err(CoreError::TooManyRegistered(self.limits.max_registered));
        }
        Ok(state.registered.insert(name.to_owned()))
    }

    fn unregister(&self, name: &str) -> bool {
        self.lock().registered.remove(name)
    }

    fn is_registered(&self, name: &str) -> bool {
        self.lock().registered.contains(name)
    }

    fn registered(&self) -> Vec<String> {
        self.lock().registered.iter().cloned().collect()
    }

    fn expect_answer(
        &self,
        key: &str,
        asker: ClientId,
        answerers: &[ClientId],
        ttl: Duration,
    ) -> Result<(), CoreError> {
        validate_label("ack", key, self.limits.max_name_len)?;
        let now = Instant::now();
        let mut state = self.lock();
        state.sweep_pending(now);
        if let Some(pending) = state.pending.get(key)
            && pending.asker != asker
        {
            return Err(CoreError::KeyInUse(key.to_owned()));
        }
        // A key the asker reuses replaces its own entry; every other one
        // counts until it expires, answered or not, so the map stays bounded.
        let replaces_own = state.pending.contains_key(key);
        let entry = state.clients.get_mut(&asker).ok_or(CoreError::Gone)?;
        if !replaces_own && entry.n_pending >= self.limits.max_pending_per_client {
            return Err(CoreError::TooManyPending(
                self.limits.max_pending_per_client,
            ));
        }
        if !replaces_own {
            entry.n_pending += 1;
        }
        state.pending.insert(
            key.to_owned(),
            Pending {
                asker,
                answerers: answerers.to_vec(),
                expires: now + ttl,
                answered: false,
            },
        );
        Ok(())
    }

    fn take_answer(&self, key: &str, answerer: ClientId) -> Answer {
        let now = Instant::now();
        let mut state = self.lock();
        let Some(pending) = state.pending.get_mut(key) else {
            return Answer::Unknown;
        };
        if pending.expires <= now || !pending.answerers.contains(&answerer) {
            return Answer::Unknown;
        }
        if pending.answered {
            return Answer::AlreadyAnswered;
        }
        // Kept until it expires, so that later answers are known as late.
        pending.answered = true;
        Answer::To(pending.asker)
    }

    fn resolve(&self, targets: &[Target<'_>]) -> Vec<ClientId> {
        self.lock().resolve(targets).into_iter().collect()
    }
}

#[cfg(test)]
mod tests;
