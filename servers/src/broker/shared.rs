//! The broker across instances (`websocket_broker --redis`, `crate::backplane`).
//!
//! Each instance keeps its own clients in its `LocalCore`; what must span
//! instances is mirrored in Redis under the broker's namespace:
//!
//! - the sorted set `labels` (all scores 0, ordered as bytes) holds one
//!   member per fact: `n␟<name>␟<instance>␟<client>` for a name (token, id,
//!   user), `g␟<group>␟<instance>␟<client>` for a group membership,
//!   `c␟<client>␟<instance>` for a connected client (␟ is U+001F, which no
//!   name or group may hold). An exact name, a name prefix (`group/`) or a
//!   group is one lexicographic range, so claims and counts are range reads;
//! - `client:<id>` is the set of one client's members, and
//!   `instance:<id>:clients` the set of an instance's clients, so that a
//!   disconnect, and the reaping of a dead instance, remove exactly theirs;
//! - `ack:<key>` is a pending answer (asker, answerers, answered), expiring
//!   with `--ack-ttl`, so the first answer wins across instances.
//!
//! Client numbers are unique across instances: each instance starts its
//! numbers at a random multiple of 2^32 below 2^53 (`first_client_id`), so
//! Achex's `sID` stays a safe JSON number.
//!
//! A delivery goes into the local outboxes first, then (unless every target
//! is a local client) to every other instance on `<ns>:all` as JSON
//! `{"targets": [...], "text": ...}`; each resolves the targets against its
//! own clients and delivers as a local sender would (waiting while a reading
//! client's outbox is full, evicting one that does not read). How many
//! clients a delivery reached counts the other instances' clients from the
//! `labels` ranges. Exclusive names (tokens, wsmsgbroker ids) are claimed by
//! one Lua script that checks the live holders, so two instances never give
//! one name to two clients.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use redis::Value;
use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, info, warn};

use super::Broker;
use super::core::{Answer, Claim, ClientId, ClientInfo, CoreError, Target, deliver};
use crate::backplane::{Backplane, Incoming, Peer, script};

/// The separator inside a `labels` member.
const SEP: char = '\u{1f}';

/// The most members one range read returns (a bound on what Redis hands back).
const MAX_RANGE: usize = 10_000;

/// The most targets one delivery from another instance may carry.
const MAX_TARGETS: usize = 128;

/// The first client number of an instance: a random multiple of 2^32 below 2^53.
pub fn first_client_id() -> ClientId {
    let mut bytes = [0u8; 4];
    getrandom::fill(&mut bytes).expect("the system's random source works");
    // 21 random bits above 32 bits of counter: at most 2^53 - 1.
    u64::from(u32::from_le_bytes(bytes) & 0x1f_ffff) << 32
}

/// Adds members for one client. KEYS: labels, the client's set, the
/// instance's clients. ARGV: client, members...
const ADD: &str = r"
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], 0, ARGV[i])
  redis.call('SADD', KEYS[2], ARGV[i])
end
redis.call('SADD', KEYS[3], ARGV[1])
return 1
";

/// Removes one member of one client. KEYS: labels, the client's set. ARGV: member.
const REMOVE: &str = r"
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('SREM', KEYS[2], ARGV[1])
return 1
";

/// Removes a client and all its members. KEYS: labels, the client's set,
/// the instance's clients. ARGV: client.
const DROP_CLIENT: &str = r"
for _, member in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  redis.call('ZREM', KEYS[1], member)
end
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[3], ARGV[1])
return 1
";

/// Gives a client a name: fails with 'taken' if `exclusive` and a live
/// client of another instance (or another client) holds it, unless
/// `takeover`, which removes those holders. KEYS: instances, labels, the
/// client's set, the instance's clients. ARGV: low, high (the name's range),
/// instance, client, exclusive (0/1), takeover (0/1), the new member, the
/// old member or '', the namespace. Returns {'ok', displaced clients...} or {'taken'}.
const CLAIM: &str = r"
local me_instance, me_client = ARGV[3], ARGV[4]
local displaced = {}
if ARGV[5] == '1' then
  local holders = redis.call('ZRANGEBYLEX', KEYS[2], ARGV[1], ARGV[2], 'LIMIT', 0, 64)
  for _, member in ipairs(holders) do
    local _, _, instance, client = string.find(member, '^n\31.*\31([^\31]+)\31([^\31]+)$')
    if instance and not (instance == me_instance and client == me_client) then
      if alive(instance) then
        if ARGV[6] ~= '1' then return {'taken'} end
        displaced[#displaced + 1] = client
      end
      redis.call('ZREM', KEYS[2], member)
      redis.call('SREM', ARGV[9] .. ':client:' .. client, member)
    end
  end
end
if ARGV[8] ~= '' then
  redis.call('ZREM', KEYS[2], ARGV[8])
  redis.call('SREM', KEYS[3], ARGV[8])
end
redis.call('ZADD', KEYS[2], 0, ARGV[7])
redis.call('SADD', KEYS[3], ARGV[7])
redis.call('SADD', KEYS[4], me_client)
local reply = {'ok'}
for _, client in ipairs(displaced) do reply[#reply + 1] = client end
return reply
";

/// The live clients of other instances in some ranges. KEYS: instances,
/// labels. ARGV: this instance, most per range, then (low, high) pairs.
/// Returns their client numbers (as strings), without duplicates.
const RESOLVE: &str = r"
local seen = {}
local reply = {}
local live = {}
local limit = tonumber(ARGV[2])
for i = 3, #ARGV, 2 do
  for _, member in ipairs(redis.call('ZRANGEBYLEX', KEYS[2], ARGV[i], ARGV[i + 1], 'LIMIT', 0, limit)) do
    local instance, client
    if string.sub(member, 1, 1) == 'c' then
      _, _, client, instance = string.find(member, '^c\31([^\31]+)\31([^\31]+)$')
    else
      _, _, instance, client = string.find(member, '\31([^\31]+)\31([^\31]+)$')
    end
    if instance and instance ~= ARGV[1] and not seen[client] then
      if live[instance] == nil then live[instance] = alive(instance) end
      if live[instance] then
        seen[client] = true
        reply[#reply + 1] = client
      end
    end
  end
end
return reply
";

/// The Lua function `drop_clients(labels, clients, namespace)` that
/// [`REAP`] and [`SYNC`] start with: removes every client in the set
/// `clients` (one instance's), their members from `labels`, their own sets
/// and `clients` itself; returns how many clients there were.
const DROP_CLIENTS: &str = r"
local function drop_clients(labels, clients, namespace)
  local ids = redis.call('SMEMBERS', clients)
  for _, client in ipairs(ids) do
    local key = namespace .. ':client:' .. client
    for _, member in ipairs(redis.call('SMEMBERS', key)) do
      redis.call('ZREM', labels, member)
    end
    redis.call('DEL', key)
  end
  redis.call('DEL', clients)
  return #ids
end
";

/// Removes a dead instance's clients, once. KEYS: instances, labels, the
/// dead instance's clients. ARGV: dead instance, namespace. Returns how many.
const REAP: &str = r"
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
return drop_clients(KEYS[2], KEYS[3], ARGV[2])
";

/// Writes one instance's clients back (after an outage, or when Redis lost
/// them): drops its clients that are gone, re-adds every member of the
/// others. KEYS: instances, labels, the instance's clients. ARGV: instance,
/// expiry in ms, namespace, then for each client: id, number of members, members...
const SYNC: &str = r"
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
local wanted = {}
local i = 4
while i <= #ARGV do
  local client, n = ARGV[i], tonumber(ARGV[i + 1])
  wanted[client] = {}
  for j = 1, n do wanted[client][j] = ARGV[i + 1 + j] end
  i = i + 2 + n
end
drop_clients(KEYS[2], KEYS[3], ARGV[3])
for client, members in pairs(wanted) do
  local key = ARGV[3] .. ':client:' .. client
  for _, member in ipairs(members) do
    redis.call('ZADD', KEYS[2], 0, member)
    redis.call('SADD', key, member)
  end
  redis.call('SADD', KEYS[3], client)
end
return 1
";

/// Remembers a pending answer. KEYS: the ack. ARGV: asker, answerers
/// (space-separated, with spaces around), ttl in ms. Returns 'ok' or 'in use'.
const EXPECT: &str = r"
local asker = redis.call('HGET', KEYS[1], 'asker')
if asker and asker ~= ARGV[1] then return 'in use' end
redis.call('HSET', KEYS[1], 'asker', ARGV[1], 'answerers', ARGV[2], 'answered', '0')
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 'ok'
";

/// Resolves an answer: the first one from an answerer wins. KEYS: the ack.
/// ARGV: the answerer. Returns the asker, 'answered' or 'unknown'.
const TAKE: &str = r"
local fields = redis.call('HMGET', KEYS[1], 'asker', 'answerers', 'answered')
if not fields[1] then return 'unknown' end
if not string.find(fields[2], ' ' .. ARGV[1] .. ' ', 1, true) then return 'unknown' end
if fields[3] == '1' then return 'answered' end
redis.call('HSET', KEYS[1], 'answered', '1')
return fields[1]
";

/// A target as it travels between instances.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum WireTarget {
    Client(ClientId),
    Name(String),
    NamePrefix(String),
    Group(String),
    NameOrGroup(String),
}

/// What one instance publishes for the others.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Event {
    /// Deliver `text` to the local clients the targets reach.
    Deliver {
        targets: Vec<WireTarget>,
        text: String,
    },
    /// These clients lost their name to a take-over elsewhere.
    Displaced { clients: Vec<ClientId> },
}

fn wire(target: &Target<'_>) -> WireTarget {
    match *target {
        Target::Client(id) => WireTarget::Client(id),
        Target::Name(name) => WireTarget::Name(name.to_owned()),
        Target::NamePrefix(prefix) => WireTarget::NamePrefix(prefix.to_owned()),
        Target::Group(group) => WireTarget::Group(group.to_owned()),
        Target::NameOrGroup(label) => WireTarget::NameOrGroup(label.to_owned()),
    }
}

fn unwire(target: &WireTarget) -> Target<'_> {
    match target {
        WireTarget::Client(id) => Target::Client(*id),
        WireTarget::Name(name) => Target::Name(name),
        WireTarget::NamePrefix(prefix) => Target::NamePrefix(prefix),
        WireTarget::Group(group) => Target::Group(group),
        WireTarget::NameOrGroup(label) => Target::NameOrGroup(label),
    }
}

fn name_member(name: &str, instance: &str, client: ClientId) -> String {
    format!("n{SEP}{name}{SEP}{instance}{SEP}{client}")
}

fn group_member(group: &str, instance: &str, client: ClientId) -> String {
    format!("g{SEP}{group}{SEP}{instance}{SEP}{client}")
}

fn client_member(client: ClientId, instance: &str) -> String {
    format!("c{SEP}{client}{SEP}{instance}")
}

/// The lexicographic ranges (inclusive low and high) a target covers.
fn ranges(target: &Target<'_>) -> Vec<(Vec<u8>, Vec<u8>)> {
    // 0xff never occurs in UTF-8, so `x` + 0xff is above every string starting with `x`.
    let range = |prefix: String| {
        let low = format!("[{prefix}").into_bytes();
        let mut high = low.clone();
        high.push(0xff);
        (low, high)
    };
    match *target {
        Target::Client(id) => vec![range(format!("c{SEP}{id}{SEP}"))],
        Target::Name(name) => vec![range(format!("n{SEP}{name}{SEP}"))],
        Target::NamePrefix(prefix) => vec![range(format!("n{SEP}{prefix}"))],
        Target::Group(group) => vec![range(format!("g{SEP}{group}{SEP}"))],
        Target::NameOrGroup(label) => vec![
            range(format!("n{SEP}{label}{SEP}")),
            range(format!("g{SEP}{label}{SEP}")),
        ],
    }
}

/// The broker's keys in Redis.
struct Keys<'a> {
    backplane: &'a Backplane,
}

impl Keys<'_> {
    fn labels(&self) -> String {
        self.backplane.key("labels")
    }
    fn client(&self, client: ClientId) -> String {
        self.backplane.key(&format!("client:{client}"))
    }
    fn instance_clients(&self, instance: &str) -> String {
        self.backplane.key(&format!("instance:{instance}:clients"))
    }
    fn ack(&self, key: &str) -> String {
        self.backplane.key(&format!("ack:{key}"))
    }
}

/// The answer to give when Redis fails during a claim.
fn unavailable() -> CoreError {
    CoreError::Invalid {
        what: "request",
        reason: "the broker cannot reach its other instances now; try again later".to_owned(),
    }
}

impl Broker {
    /// The backplane, if this broker shares its clients (`--redis`) and Redis is up.
    fn shared(&self) -> Option<&Arc<Backplane>> {
        self.backplane.get()
    }

    /// Delivers `message` to every client the targets reach on any
    /// instance; returns how many got it (the other instances' clients as
    /// Redis lists them).
    pub async fn deliver(&self, targets: &[Target<'_>], message: &Message) -> usize {
        let n_local = deliver(self.core.as_ref(), targets, message).await;
        let Some(backplane) = self.shared() else {
            return n_local;
        };
        let core = self.core.as_ref();
        let all_local = targets.iter().all(|target| match target {
            Target::Client(id) => !core.resolve(&[Target::Client(*id)]).is_empty(),
            _ => false,
        });
        if all_local || !backplane.is_up() {
            return n_local;
        }
        let Message::Text(text) = message else {
            return n_local;
        };
        let n_remote = self.resolve_remote(backplane, targets).await.len();
        if n_remote == 0 {
            return n_local;
        }
        let event = Event::Deliver {
            targets: targets.iter().map(wire).collect(),
            text: text.as_str().to_owned(),
        };
        let body = serde_json::to_vec(&event).expect("an event serializes");
        backplane.publish(&backplane.all_channel(), &body).await;
        n_local + n_remote
    }

    /// The clients of other instances the targets reach, per Redis.
    pub async fn resolve_remote(
        &self,
        backplane: &Backplane,
        targets: &[Target<'_>],
    ) -> Vec<ClientId> {
        if !backplane.is_up() {
            return Vec::new();
        }
        let keys = Keys { backplane };
        let resolve = script(RESOLVE, true);
        let mut invocation = resolve.prepare_invoke();
        invocation
            .key(backplane.instances_key())
            .key(keys.labels())
            .arg(backplane.instance())
            .arg(MAX_RANGE);
        for target in targets {
            for (low, high) in ranges(target) {
                invocation.arg(low).arg(high);
            }
        }
        let resolved: Option<Vec<String>> = backplane.invoke(&invocation).await;
        resolved
            .unwrap_or_default()
            .iter()
            .filter_map(|id| id.parse().ok())
            .take(MAX_RANGE)
            .collect()
    }

    /// Every client `targets` reach, here and on the other instances.
    pub async fn resolve_everywhere(&self, targets: &[Target<'_>]) -> Vec<ClientId> {
        let mut reached: BTreeSet<ClientId> = self.core.resolve(targets).into_iter().collect();
        if let Some(backplane) = self.shared() {
            reached.extend(self.resolve_remote(backplane, targets).await);
        }
        reached.into_iter().collect()
    }

    /// Records a newly connected client in Redis.
    pub async fn shared_connect(&self, client: ClientId) {
        let Some(backplane) = self.shared().filter(|backplane| backplane.is_up()) else {
            return;
        };
        Broker::add_member(
            backplane,
            client,
            &client_member(client, backplane.instance()),
        )
        .await;
    }

    /// Removes a client that left from Redis.
    pub async fn shared_disconnect(&self, client: ClientId) {
        let Some(backplane) = self.shared().filter(|backplane| backplane.is_up()) else {
            return;
        };
        let keys = Keys { backplane };
        backplane
            .invoke::<i64>(
                script(DROP_CLIENT, false)
                    .key(keys.labels())
                    .key(keys.client(client))
                    .key(keys.instance_clients(backplane.instance()))
                    .arg(client),
            )
            .await;
    }

    /// [`Core::claim_name`] across instances: an exclusive claim fails if a
    /// live client of any instance holds the name; a take-over takes it
    /// from them. Returns the client that lost the name, if any.
    pub async fn claim_name(
        &self,
        client: ClientId,
        name: &str,
        claim: Claim,
    ) -> Result<Option<ClientId>, CoreError> {
        let core = self.core.as_ref();
        let Some(backplane) = self.shared() else {
            return core.claim_name(client, name, claim);
        };
        super::core::validate_label("name", name, core.limits().max_name_len)?;
        // The local holders first: a local conflict needs no round trip.
        if claim == Claim::Exclusive
            && core
                .resolve(&[Target::Name(name)])
                .iter()
                .any(|&holder| holder != client)
        {
            return Err(CoreError::Taken(name.to_owned()));
        }
        if !backplane.is_up() {
            if claim == Claim::Shared {
                return core.claim_name(client, name, claim);
            }
            return Err(unavailable());
        }
        let keys = Keys { backplane };
        let old = core
            .name_of(client)
            .map(|old| name_member(&old, backplane.instance(), client))
            .unwrap_or_default();
        let (low, high) = ranges(&Target::Name(name)).remove(0);
        let claimed: Option<Vec<String>> = backplane
            .invoke(
                script(CLAIM, true)
                    .key(backplane.instances_key())
                    .key(keys.labels())
                    .key(keys.client(client))
                    .key(keys.instance_clients(backplane.instance()))
                    .arg(low)
                    .arg(high)
                    .arg(backplane.instance())
                    .arg(client)
                    .arg(u8::from(claim != Claim::Shared))
                    .arg(u8::from(claim == Claim::TakeOver))
                    .arg(name_member(name, backplane.instance(), client))
                    .arg(old)
                    .arg(&backplane.options().namespace),
            )
            .await;
        let Some(reply) = claimed else {
            return Err(unavailable());
        };
        match reply.first().map(String::as_str) {
            Some("ok") => {}
            Some("taken") => return Err(CoreError::Taken(name.to_owned())),
            _ => return Err(unavailable()),
        }
        let displaced_remote: Vec<ClientId> = reply
            .iter()
            .skip(1)
            .filter_map(|id| id.parse().ok())
            .collect();
        let displaced_local = match core.claim_name(client, name, claim) {
            Ok(displaced) => displaced,
            Err(error) => {
                // Gone meanwhile: its session's disconnect cleans Redis up.
                return Err(error);
            }
        };
        if !displaced_remote.is_empty() {
            let event = Event::Displaced {
                clients: displaced_remote.clone(),
            };
            let body = serde_json::to_vec(&event).expect("an event serializes");
            backplane.publish(&backplane.all_channel(), &body).await;
        }
        Ok(displaced_local.or_else(|| displaced_remote.first().copied()))
    }

    /// [`Core::release_name`], and the name's member in Redis.
    pub async fn release_name(&self, client: ClientId) -> Option<String> {
        let name = self.core.release_name(client)?;
        if let Some(backplane) = self.shared().filter(|backplane| backplane.is_up()) {
            Broker::remove_member(
                backplane,
                client,
                &name_member(&name, backplane.instance(), client),
            )
            .await;
        }
        Some(name)
    }

    /// [`Core::join`], and the membership in Redis.
    pub async fn join(&self, client: ClientId, group: &str) -> Result<bool, CoreError> {
        let joined = self.core.join(client, group)?;
        if joined && let Some(backplane) = self.shared().filter(|backplane| backplane.is_up()) {
            Broker::add_member(
                backplane,
                client,
                &group_member(group, backplane.instance(), client),
            )
            .await;
        }
        Ok(joined)
    }

    /// [`Core::leave`], and the membership in Redis.
    pub async fn leave(&self, client: ClientId, group: &str) -> bool {
        let left = self.core.leave(client, group);
        if left && let Some(backplane) = self.shared().filter(|backplane| backplane.is_up()) {
            Broker::remove_member(
                backplane,
                client,
                &group_member(group, backplane.instance(), client),
            )
            .await;
        }
        left
    }

    /// Adds one member of a local client (connected, a name, a group) to Redis.
    async fn add_member(backplane: &Backplane, client: ClientId, member: &str) {
        let keys = Keys { backplane };
        backplane
            .invoke::<i64>(
                script(ADD, false)
                    .key(keys.labels())
                    .key(keys.client(client))
                    .key(keys.instance_clients(backplane.instance()))
                    .arg(client)
                    .arg(member),
            )
            .await;
    }

    /// Removes one member of a local client from Redis.
    async fn remove_member(backplane: &Backplane, client: ClientId, member: &str) {
        let keys = Keys { backplane };
        backplane
            .invoke::<i64>(
                script(REMOVE, false)
                    .key(keys.labels())
                    .key(keys.client(client))
                    .arg(member),
            )
            .await;
    }

    /// [`Core::expect_answer`] across instances (the pending answer lives in Redis).
    pub async fn expect_answer(
        &self,
        key: &str,
        asker: ClientId,
        answerers: &[ClientId],
        ttl: Duration,
    ) -> Result<(), CoreError> {
        let Some(backplane) = self.shared() else {
            return self.core.expect_answer(key, asker, answerers, ttl);
        };
        super::core::validate_label("ack", key, self.core.limits().max_name_len)?;
        if !backplane.is_up() {
            return Err(unavailable());
        }
        let answerers: String = answerers
            .iter()
            .map(|id| format!(" {id}"))
            .collect::<String>()
            + " ";
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let expected: Option<String> = backplane
            .invoke(
                script(EXPECT, false)
                    .key(Keys { backplane }.ack(key))
                    .arg(asker)
                    .arg(answerers)
                    .arg(ttl_ms),
            )
            .await;
        match expected.as_deref() {
            Some("ok") => Ok(()),
            Some(_) => Err(CoreError::KeyInUse(key.to_owned())),
            None => Err(unavailable()),
        }
    }

    /// [`Core::take_answer`] across instances: the first answer wins.
    pub async fn take_answer(&self, key: &str, answerer: ClientId) -> Answer {
        let Some(backplane) = self.shared() else {
            return self.core.take_answer(key, answerer);
        };
        if !backplane.is_up() || key.len() > self.core.limits().max_name_len {
            return Answer::Unknown;
        }
        let taken: Option<String> = backplane
            .invoke(
                script(TAKE, false)
                    .key(Keys { backplane }.ack(key))
                    .arg(answerer),
            )
            .await;
        match taken.as_deref() {
            Some("answered") => Answer::AlreadyAnswered,
            Some(asker) => asker.parse().map_or(Answer::Unknown, Answer::To),
            None => Answer::Unknown,
        }
    }

    /// The members of one local client, as `SYNC` takes them.
    fn members_of(backplane: &Backplane, client: &ClientInfo) -> Vec<String> {
        let instance = backplane.instance();
        let mut members = vec![client_member(client.id, instance)];
        if let Some(name) = &client.name {
            members.push(name_member(name, instance, client.id));
        }
        members.extend(
            client
                .groups
                .iter()
                .map(|group| group_member(group, instance, client.id)),
        );
        members
    }
}

impl Peer for Broker {
    async fn on_message(&self, message: Incoming<'_>) {
        let event: Event = match serde_json::from_slice(message.body) {
            Ok(event) => event,
            Err(error) => {
                warn!(origin = %message.origin, %error, "malformed broker event from another instance; dropped");
                return;
            }
        };
        match event {
            Event::Deliver { targets, text } => {
                if targets.len() > MAX_TARGETS
                    || text.len() > self.options.max_message.saturating_mul(2)
                {
                    warn!(origin = %message.origin, "oversized delivery from another instance; dropped");
                    return;
                }
                let targets: Vec<Target<'_>> = targets.iter().map(unwire).collect();
                let n_delivered = deliver(self.core.as_ref(), &targets, &Message::text(text)).await;
                debug!(n_delivered, origin = %message.origin, "delivered from another instance");
            }
            Event::Displaced { clients } => {
                for client in clients.into_iter().take(MAX_TARGETS) {
                    if self.core.release_name(client).is_some() {
                        debug!(client, "lost its name to a take-over on another instance");
                    }
                }
            }
        }
    }

    async fn resync(&self) -> bool {
        let Some(backplane) = self.shared() else {
            return true;
        };
        let clients = self.core.clients();
        let expiry_ms = u64::try_from(backplane.options().expiry.as_millis()).unwrap_or(u64::MAX);
        let keys = Keys { backplane };
        let sync = script(&format!("{DROP_CLIENTS}{SYNC}"), true);
        let mut invocation = sync.prepare_invoke();
        invocation
            .key(backplane.instances_key())
            .key(keys.labels())
            .key(keys.instance_clients(backplane.instance()))
            .arg(backplane.instance())
            .arg(expiry_ms)
            .arg(&backplane.options().namespace);
        for client in &clients {
            let members = Broker::members_of(backplane, client);
            invocation.arg(client.id).arg(members.len());
            for member in members {
                invocation.arg(member);
            }
        }
        let synced: Option<i64> = backplane.invoke(&invocation).await;
        if synced.is_some() {
            info!(n_clients = clients.len(), "clients written back to Redis");
        }
        synced.is_some()
    }

    async fn reap(&self, dead: &str) {
        let Some(backplane) = self.shared() else {
            return;
        };
        let keys = Keys { backplane };
        let reaped: Option<Value> = backplane
            .invoke(
                script(&format!("{DROP_CLIENTS}{REAP}"), false)
                    .key(backplane.instances_key())
                    .key(keys.labels())
                    .key(keys.instance_clients(dead))
                    .arg(dead)
                    .arg(&backplane.options().namespace),
            )
            .await;
        if let Some(Value::Int(n_clients)) = reaped
            && n_clients > 0
        {
            info!(instance = %dead, n_clients, "an instance stopped beating; its clients are gone");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_numbers_stay_safe_json_numbers() {
        for _ in 0..100 {
            let first = first_client_id();
            assert_eq!(first % (1 << 32), 0);
            assert!(first + u64::from(u32::MAX) < 1 << 53);
        }
    }

    #[test]
    fn ranges_cover_exact_names_prefixes_and_groups() {
        let member = name_member("group/item1", "inst", 5);
        let in_range = |target: Target<'_>| {
            ranges(&target).iter().any(|(low, high)| {
                // `[` marks an inclusive bound in ZRANGEBYLEX.
                member.as_bytes() >= &low[1..] && member.as_bytes() <= &high[1..]
            })
        };
        assert!(in_range(Target::Name("group/item1")));
        assert!(in_range(Target::NamePrefix("group/")));
        assert!(in_range(Target::NameOrGroup("group/item1")));
        assert!(!in_range(Target::Name("group/item")));
        assert!(!in_range(Target::Name("group/item10")));
        assert!(!in_range(Target::Group("group/item1")));
        let group = group_member("news", "inst", 5);
        let (low, high) = ranges(&Target::Group("news")).remove(0);
        assert!(group.as_bytes() >= &low[1..] && group.as_bytes() <= &high[1..]);
    }

    #[test]
    fn events_between_instances_round_trip() {
        let event = Event::Deliver {
            targets: vec![
                wire(&Target::NamePrefix("group/")),
                wire(&Target::Client(9)),
            ],
            text: "hi".to_owned(),
        };
        let body = serde_json::to_vec(&event).expect("serializes");
        let Ok(Event::Deliver { targets, text }) = serde_json::from_slice::<Event>(&body) else {
            panic!("a delivery decodes");
        };
        assert_eq!(text, "hi");
        assert_eq!(unwire(&targets[0]), Target::NamePrefix("group/"));
        assert_eq!(unwire(&targets[1]), Target::Client(9));
        assert!(serde_json::from_slice::<Event>(b"{\"deliver\": 1}").is_err());
    }
}
