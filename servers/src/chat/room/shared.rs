//! The room across instances (`websocket_chat --redis`, `crate::backplane`).
//!
//! In Redis, under the chat's namespace: the hash `names` (name → `<instance>
//! <client> <address>`), which makes names unique across instances and
//! answers `WSWhois`, `WSUsers` and `WSPrivate` for clients of other
//! instances, and per instance the set `instance:<id>:names` of the names it
//! holds, so that the first live instance to find it dead frees them. Each
//! claim is one Lua script, so two instances never hand out the same name.
//!
//! A public message (with its sender's name in front, as locally) and the
//! presence lines go to the other instances on `<ns>:all` once the local
//! clients have them; a private message to a client of another instance
//! goes to that instance's own channel. What arrives is delivered like a
//! local sender's message: into every local outbox at once, waiting while a
//! reading client's outbox is full, evicting one that does not read.
//!
//! While Redis is away, local clients keep chatting among themselves;
//! `WSHello` is refused (a name could not be made unique) and names of
//! other instances are unknown. What is lost is `docs/scaling.md`.

use std::sync::Arc;

use redis::Value;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, info, warn};

use super::super::command::{Command, public_line};
use super::super::name::{MAX_NAME_LEN, validate_name};
use super::{Attempt, ClientId, Handling, Member, Room, error_line};
use crate::backplane::{Backplane, Incoming, Peer, script};

/// The most names a `WSUsers` line lists when they come from Redis.
pub const MAX_LISTED_NAMES: usize = 10_000;

/// The error a client gets for what needs Redis while it is away.
pub const UNAVAILABLE: &str =
    "unavailable: the chat cannot reach its other instances now; try again later";

/// Claims the first free name of `requested`, `requested1`, ... for one
/// client, freeing the name it had, and lists the live names.
/// KEYS: instances, names, this instance's names. ARGV: owner prefix
/// (`<instance> <client> `), address, requested, old name or '', longest
/// name, most names listed. Returns {name, other names...} or false.
const CLAIM: &str = r"
local me = ARGV[1]
local function free(name)
  local owner = redis.call('HGET', KEYS[2], name)
  if not owner then return true end
  if string.sub(owner, 1, #me) == me then return true end
  local id = string.match(owner, '^(%S+) ')
  return id == nil or not alive(id)
end
if ARGV[4] ~= '' then
  local owner = redis.call('HGET', KEYS[2], ARGV[4])
  if owner and string.sub(owner, 1, #me) == me then
    redis.call('HDEL', KEYS[2], ARGV[4])
    redis.call('SREM', KEYS[3], ARGV[4])
  end
end
local requested = ARGV[3]
local maxlen = tonumber(ARGV[5])
local name = false
if free(requested) then
  name = requested
else
  for n = 1, 1000000 do
    local digits = tostring(n)
    local candidate = string.sub(requested, 1, math.min(#requested, maxlen - #digits)) .. digits
    if free(candidate) then
      name = candidate
      break
    end
  end
end
if not name then return false end
redis.call('HSET', KEYS[2], name, me .. ARGV[2])
redis.call('SADD', KEYS[3], name)
local reply = {name}
local limit = tonumber(ARGV[6])
local live = {}
local entries = redis.call('HGETALL', KEYS[2])
for i = 1, #entries, 2 do
  if #reply > limit then break end
  local id = string.match(entries[i + 1], '^(%S+) ')
  if id then
    if live[id] == nil then live[id] = alive(id) end
    if live[id] and entries[i] ~= name then reply[#reply + 1] = entries[i] end
  end
end
return reply
";

/// Frees a name if this client holds it. KEYS: names, this instance's names.
/// ARGV: owner prefix, name.
const RELEASE: &str = r"
local owner = redis.call('HGET', KEYS[1], ARGV[2])
if owner and string.sub(owner, 1, #ARGV[1]) == ARGV[1] then
  redis.call('HDEL', KEYS[1], ARGV[2])
  redis.call('SREM', KEYS[2], ARGV[2])
  return 1
end
return 0
";

/// Who holds a name, if a live instance does. KEYS: instances, names. ARGV: name.
const LOOKUP: &str = r"
local owner = redis.call('HGET', KEYS[2], ARGV[1])
if not owner then return false end
local id = string.match(owner, '^(%S+) ')
if id and alive(id) then return owner end
return false
";

/// Makes this instance's names in Redis exactly the local ones (after an
/// outage, or when Redis lost them). KEYS: instances, names, this
/// instance's names, its tombstone. ARGV: instance, expiry in ms, then
/// (owner, name) pairs. Returns {names another live instance took
/// meanwhile, names added, names dropped}; names added are listed only if
/// this instance had been reaped (the others heard `WSLeave` for them), not
/// when Redis merely lost them (the others still know them).
const SYNC: &str = r"
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
local reaped = redis.call('DEL', KEYS[4]) == 1
local mine = ARGV[1] .. ' '
local wanted = {}
for i = 3, #ARGV, 2 do wanted[ARGV[i + 1]] = ARGV[i] end
local removed = {}
for _, name in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  if wanted[name] == nil then
    local owner = redis.call('HGET', KEYS[2], name)
    if owner and string.sub(owner, 1, #mine) == mine then
      redis.call('HDEL', KEYS[2], name)
      removed[#removed + 1] = name
    end
    redis.call('SREM', KEYS[3], name)
  end
end
local conflicts = {}
local added = {}
for i = 3, #ARGV, 2 do
  local value = ARGV[i]
  local name = ARGV[i + 1]
  local owner = redis.call('HGET', KEYS[2], name)
  local ours = owner and string.sub(owner, 1, #mine) == mine
  local id = owner and string.match(owner, '^(%S+) ')
  if owner and not ours and id and alive(id) then
    conflicts[#conflicts + 1] = name
  else
    if not ours and reaped then added[#added + 1] = name end
    redis.call('HSET', KEYS[2], name, value)
    redis.call('SADD', KEYS[3], name)
  end
end
return {conflicts, added, removed}
";

/// Frees the names of a dead instance, once, and leaves its tombstone (for
/// an hour), in case it was only cut off. KEYS: instances, names, the dead
/// instance's names, its tombstone. ARGV: the dead instance. Returns the names freed.
const REAP: &str = r"
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return {} end
redis.call('SET', KEYS[4], '1', 'PX', 3600000)
local prefix = ARGV[1] .. ' '
local gone = {}
for _, name in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  local owner = redis.call('HGET', KEYS[2], name)
  if owner and string.sub(owner, 1, #prefix) == prefix then
    redis.call('HDEL', KEYS[2], name)
    gone[#gone + 1] = name
  end
end
redis.call('DEL', KEYS[3])
return gone
";

/// The keys of the chat in Redis.
struct Keys {
    instances: String,
    names: String,
    mine: String,
    tombstone: String,
}

impl Keys {
    fn of(backplane: &Backplane) -> Keys {
        Keys {
            instances: backplane.instances_key(),
            names: backplane.key("names"),
            mine: names_of_instance(backplane, backplane.instance()),
            tombstone: tombstone_of(backplane, backplane.instance()),
        }
    }
}

fn tombstone_of(backplane: &Backplane, instance: &str) -> String {
    backplane.key(&format!("instance:{instance}:reaped"))
}

fn names_of_instance(backplane: &Backplane, instance: &str) -> String {
    backplane.key(&format!("instance:{instance}:names"))
}

/// `<instance> <client> `, the start of every name this client holds.
fn owner_prefix(backplane: &Backplane, client: ClientId) -> String {
    format!("{} {client} ", backplane.instance())
}

/// The names in a reply from Redis: strings that are valid names, at most `limit`.
fn names_in(values: Vec<Value>, limit: usize) -> Vec<String> {
    values
        .into_iter()
        .filter_map(|value| redis::from_redis_value::<String>(value).ok())
        .filter(|name| validate_name(name).is_ok())
        .take(limit)
        .collect()
}

/// A holder of a name, as `LOOKUP` returns it.
struct Owner {
    instance: String,
    client: ClientId,
    address: String,
}

fn parse_owner(owner: &str) -> Option<Owner> {
    let mut parts = owner.splitn(3, ' ');
    let instance = parts.next()?.to_owned();
    let client = parts.next()?.parse().ok()?;
    let address = parts.next()?.to_owned();
    (instance.len() <= 64 && address.len() <= 64).then_some(Owner {
        instance,
        client,
        address,
    })
}

/// What one instance sends another: a line for every client, or for one.
enum Body<'a> {
    /// For every client (chat, presence lines).
    All(Message),
    /// A private line for one client of the receiving instance.
    Private(ClientId, &'a str),
}

fn encode_all(message: &Message) -> Option<Vec<u8>> {
    let (kind, payload): (u8, &[u8]) = match message {
        Message::Text(text) => (b't', text.as_bytes()),
        Message::Binary(bytes) => (b'b', bytes),
        _ => return None,
    };
    let mut body = Vec::with_capacity(1 + payload.len());
    body.push(kind);
    body.extend_from_slice(payload);
    Some(body)
}

fn decode(body: &[u8]) -> Option<Body<'_>> {
    let (&kind, rest) = body.split_first()?;
    match kind {
        b't' => Some(Body::All(Message::text(std::str::from_utf8(rest).ok()?))),
        b'b' => Some(Body::All(Message::binary(rest.to_vec()))),
        b'p' => {
            let newline = rest.iter().position(|&byte| byte == b'\n')?;
            let client = std::str::from_utf8(&rest[..newline]).ok()?.parse().ok()?;
            let line = std::str::from_utf8(&rest[newline + 1..]).ok()?;
            Some(Body::Private(client, line))
        }
        _ => None,
    }
}

impl Member {
    /// [`Member::handle`] with other instances: commands that need the
    /// shared names go through Redis, everything else is handled locally
    /// and then published.
    pub(super) async fn handle_shared(&self, backplane: &Arc<Backplane>, message: Message) {
        let room = &self.room;
        let command = match &message {
            Message::Text(text) if room.options.commands => Command::parse(text.as_str()),
            _ => None,
        };
        match command {
            Some(Command::Hello { name }) => room.hello_shared(backplane, self.id, name).await,
            Some(Command::Private {
                name,
                message: text,
            }) if !room.is_local_name(name) => {
                room.private_shared(backplane, self.id, name, text).await;
            }
            Some(Command::Whois { name }) if !room.is_local_name(name) => {
                room.whois_shared(backplane, self.id, name).await;
            }
            Some(_) => self.handle_local(&message).await,
            None => {
                // Only this member's own `WSHello` renames it, and that waits
                // for this message, so the name now is the name it goes out with.
                let remote = match &message {
                    Message::Text(text) if room.options.commands => {
                        let name = room.lock().name_of(self.id).map(str::to_owned);
                        Message::text(public_line(name.as_deref(), text.as_str()))
                    }
                    _ => message.clone(),
                };
                self.handle_local(&message).await;
                if room.lock().clients.contains_key(&self.id)
                    && let Some(body) = encode_all(&remote)
                {
                    backplane.publish(&backplane.all_channel(), &body).await;
                }
            }
        }
    }

    /// Leaves the room now, and with `--redis` frees the name in Redis and
    /// tells the other instances; dropping the member afterwards does nothing.
    pub async fn leave(&self) {
        let name = self.room.leave(self.id);
        if let (Some(name), Some(backplane)) = (name, self.room.backplane.get()) {
            if !backplane.is_up() {
                // Announced to the other instances when Redis is back.
                let mut state = self.room.lock();
                if state.left_while_down.len() < MAX_LISTED_NAMES {
                    state.left_while_down.push(name);
                }
                return;
            }
            release(backplane, self.id, &name).await;
            announce_remote(backplane, &format!("WSLeave {name}")).await;
        }
    }
}

async fn release(backplane: &Backplane, client: ClientId, name: &str) {
    if !backplane.is_up() {
        // The resync after the outage drops it.
        return;
    }
    let keys = Keys::of(backplane);
    backplane
        .invoke::<i64>(
            script(RELEASE, false)
                .key(&keys.names)
                .key(&keys.mine)
                .arg(owner_prefix(backplane, client))
                .arg(name),
        )
        .await;
}

/// Sends a presence line to the clients of the other instances.
async fn announce_remote(backplane: &Backplane, line: &str) {
    if let Some(body) = encode_all(&Message::text(line)) {
        backplane.publish(&backplane.all_channel(), &body).await;
    }
}

impl Room {
    fn is_local_name(&self, name: &str) -> bool {
        self.lock().names.contains_key(name)
    }

    /// Queues one of the room's own lines for `client`, without waiting.
    fn reply(&self, client: ClientId, message: Message) {
        self.lock().send_to(client, message);
    }

    /// `WSHello` across instances: the name is claimed in Redis, the replies
    /// and presence lines are the same as in one process.
    async fn hello_shared(&self, backplane: &Backplane, from: ClientId, requested: &str) {
        if let Err(error) = validate_name(requested) {
            self.reply(from, error_line(&format!("invalid name: {error}")));
            return;
        }
        if !backplane.is_up() {
            self.reply(from, error_line(UNAVAILABLE));
            return;
        }
        let (old, address) = {
            let state = self.lock();
            let Some(entry) = state.clients.get(&from) else {
                return;
            };
            (entry.name.clone(), entry.address.clone())
        };
        // A name Redis hands out may still be held here by another client:
        // the others reaped this instance (it missed its heartbeats, e.g. on
        // a starved machine) and its names vanished from Redis until its
        // next beat writes them back. Then the claim is undone, this
        // instance's names are written back now, and the claim is tried once more.
        let mut names = Vec::new();
        for attempt in 0..2 {
            names = match self
                .claim(backplane, from, &address, requested, old.as_deref())
                .await
            {
                Ok(names) => names,
                Err(error) => {
                    backplane.failed(&error);
                    self.reply(from, error_line(UNAVAILABLE));
                    return;
                }
            };
            let Some(name) = names.first() else {
                self.reply(from, error_line("no free name left for that one"));
                return;
            };
            let held_here = {
                let state = self.lock();
                state.names.get(name).is_some_and(|&holder| holder != from)
            };
            if !held_here {
                break;
            }
            warn!(%name, "Redis handed out a name a local client holds: this instance was taken for dead; writing its names back");
            release(backplane, from, name).await;
            backplane.request_resync();
            if attempt == 1 || !self.resync().await {
                self.reply(from, error_line(UNAVAILABLE));
                return;
            }
        }
        let name = names.remove(0);
        names.sort_unstable();
        names.dedup();
        let applied = {
            let mut state = self.lock();
            match state.clients.get_mut(&from) {
                None => None,
                Some(entry) => {
                    let old_local = entry.name.replace(name.clone());
                    if let Some(old_local) = &old_local {
                        state.names.remove(old_local);
                    }
                    state.names.insert(name.clone(), from);
                    debug!(%name, ?old_local, "named (shared)");
                    state.send_to(from, Message::text(format!("WSWelcome {name}")));
                    let users = if names.is_empty() {
                        "WSUsers".to_owned()
                    } else {
                        format!("WSUsers {}", names.join(" "))
                    };
                    state.send_to(from, Message::text(users));
                    if old_local.as_deref() != Some(name.as_str()) {
                        if let Some(old_local) = &old_local {
                            state.broadcast(from, &Message::text(format!("WSLeave {old_local}")));
                        }
                        state.broadcast(from, &Message::text(format!("WSJoin {name}")));
                    }
                    Some(old_local)
                }
            }
        };
        match applied {
            // The client left while Redis answered.
            None => release(backplane, from, &name).await,
            Some(old_local) if old_local.as_deref() != Some(name.as_str()) => {
                if let Some(old_local) = old_local {
                    announce_remote(backplane, &format!("WSLeave {old_local}")).await;
                }
                announce_remote(backplane, &format!("WSJoin {name}")).await;
            }
            Some(_) => {}
        }
    }

    /// Runs [`CLAIM`] for client `from`: the name it got first, then the
    /// other live names; empty when no name was free.
    async fn claim(
        &self,
        backplane: &Backplane,
        from: ClientId,
        address: &str,
        requested: &str,
        old: Option<&str>,
    ) -> redis::RedisResult<Vec<String>> {
        let keys = Keys::of(backplane);
        let claimed: Option<Vec<Value>> = script(CLAIM, true)
            .key(&keys.instances)
            .key(&keys.names)
            .key(&keys.mine)
            .arg(owner_prefix(backplane, from))
            .arg(address)
            .arg(requested)
            .arg(old.unwrap_or(""))
            .arg(MAX_NAME_LEN)
            .arg(MAX_LISTED_NAMES)
            .invoke_async(&mut backplane.connection())
            .await?;
        Ok(claimed.map_or_else(Vec::new, |values| names_in(values, MAX_LISTED_NAMES + 1)))
    }

    /// Who holds `name` on a live instance, per Redis.
    async fn lookup(&self, backplane: &Backplane, name: &str) -> redis::RedisResult<Option<Owner>> {
        let keys = Keys::of(backplane);
        let owner: Option<String> = script(LOOKUP, true)
            .key(&keys.instances)
            .key(&keys.names)
            .arg(name)
            .invoke_async(&mut backplane.connection())
            .await?;
        Ok(owner.as_deref().and_then(parse_owner))
    }

    async fn private_shared(&self, backplane: &Backplane, from: ClientId, name: &str, text: &str) {
        if !backplane.is_up() {
            self.reply(from, error_line(UNAVAILABLE));
            return;
        }
        match self.lookup(backplane, name).await {
            Ok(Some(owner)) if owner.instance != backplane.instance() => {
                let sender = self.lock().name_of(from).map(str::to_owned);
                let line = super::super::command::private_line(sender.as_deref(), text);
                let body = format!("p{}\n{line}", owner.client);
                backplane
                    .publish(
                        &backplane.instance_channel(&owner.instance),
                        body.as_bytes(),
                    )
                    .await;
            }
            Ok(_) => self.reply(from, error_line(&format!("unknown name {name}"))),
            Err(error) => {
                backplane.failed(&error);
                self.reply(from, error_line(UNAVAILABLE));
            }
        }
    }

    async fn whois_shared(&self, backplane: &Backplane, from: ClientId, name: &str) {
        let address = if backplane.is_up() {
            match self.lookup(backplane, name).await {
                Ok(owner) => owner.map(|owner| owner.address),
                Err(error) => {
                    backplane.failed(&error);
                    None
                }
            }
        } else {
            None
        };
        let address = address.as_deref().unwrap_or("undefined");
        self.reply(from, Message::text(format!("WSIs {name} {address}")));
    }

    /// Delivers a message from another instance to every local client
    /// (`to: None`) or to one, waiting as a local sender would.
    async fn deliver_remote(&self, to: Option<ClientId>, message: &Message) {
        self.until_done(|| self.try_deliver_remote(to, message))
            .await;
    }

    fn try_deliver_remote(&self, to: Option<ClientId>, message: &Message) -> Attempt {
        let mut state = self.lock();
        let wait = state.make_room(message.len(), Instant::now(), |id| {
            to.is_none_or(|to| to == id)
        });
        state.evict_overflowed();
        if let Some(wait) = wait {
            return wait;
        }
        match to {
            Some(to) => state.send_to(to, message.clone()),
            None => {
                state.deliver(message, state.clients.keys().copied());
            }
        }
        (Handling::Done, None)
    }

    /// Every local named client, as `SYNC` takes them.
    fn local_names(&self, backplane: &Backplane) -> Vec<(String, String)> {
        let state = self.lock();
        state
            .names
            .iter()
            .filter_map(|(name, &id)| {
                let entry = state.clients.get(&id)?;
                let owner = format!("{}{}", owner_prefix(backplane, id), entry.address);
                Some((owner, name.clone()))
            })
            .collect()
    }

    /// A name another instance took while this one was cut off: the local
    /// client loses it and is told to pick again.
    fn drop_conflicting_name(&self, name: &str) {
        let mut state = self.lock();
        let Some(id) = state.names.remove(name) else {
            return;
        };
        if let Some(entry) = state.clients.get_mut(&id) {
            entry.name = None;
        }
        state.send_to(
            id,
            error_line(&format!(
                "another instance's client took the name {name} while this one was cut off; send WSHello again"
            )),
        );
        state.broadcast(id, &Message::text(format!("WSLeave {name}")));
    }
}

fn nested_names(value: Option<Value>) -> Vec<String> {
    match value {
        Some(Value::Array(values)) => names_in(values, usize::MAX),
        _ => Vec::new(),
    }
}

impl Peer for Room {
    async fn on_message(&self, message: Incoming<'_>) {
        match decode(message.body) {
            Some(Body::All(line)) if !message.direct => self.deliver_remote(None, &line).await,
            Some(Body::Private(client, line)) if message.direct => {
                self.deliver_remote(Some(client), &Message::text(line))
                    .await;
            }
            _ => {
                warn!(origin = %message.origin, "malformed chat message from another instance; dropped")
            }
        }
    }

    async fn resync(&self) -> bool {
        let Some(backplane) = self.backplane.get() else {
            return true;
        };
        let keys = Keys::of(backplane);
        let local = self.local_names(backplane);
        let expiry_ms = u64::try_from(backplane.options().expiry.as_millis()).unwrap_or(u64::MAX);
        let sync = script(SYNC, true);
        let mut invocation = sync.prepare_invoke();
        invocation
            .key(&keys.instances)
            .key(&keys.names)
            .key(&keys.mine)
            .key(&keys.tombstone)
            .arg(backplane.instance())
            .arg(expiry_ms);
        for (owner, name) in &local {
            invocation.arg(owner).arg(name);
        }
        let synced: Option<Vec<Value>> = backplane.invoke(&invocation).await;
        let Some(parts) = synced else {
            return false;
        };
        let mut parts = parts.into_iter();
        let conflicts = nested_names(parts.next());
        let added = nested_names(parts.next());
        let mut removed = nested_names(parts.next());
        {
            let mut state = self.lock();
            let left = std::mem::take(&mut state.left_while_down);
            removed.extend(
                left.into_iter()
                    .filter(|name| !state.names.contains_key(name)),
            );
        }
        removed.sort_unstable();
        removed.dedup();
        info!(
            n_names = local.len(),
            n_conflicts = conflicts.len(),
            "names written back to Redis"
        );
        for name in &conflicts {
            self.drop_conflicting_name(name);
        }
        for name in removed {
            announce_remote(backplane, &format!("WSLeave {name}")).await;
        }
        for name in added {
            announce_remote(backplane, &format!("WSJoin {name}")).await;
        }
        true
    }

    async fn reap(&self, dead: &str) {
        let Some(backplane) = self.backplane.get() else {
            return;
        };
        let keys = Keys::of(backplane);
        let reaped: Option<Vec<Value>> = backplane
            .invoke(
                script(REAP, false)
                    .key(&keys.instances)
                    .key(&keys.names)
                    .key(names_of_instance(backplane, dead))
                    .key(tombstone_of(backplane, dead))
                    .arg(dead),
            )
            .await;
        let Some(reaped) = reaped else {
            return;
        };
        let gone = names_in(reaped, usize::MAX);
        if !gone.is_empty() {
            info!(instance = %dead, n_names = gone.len(), "an instance stopped beating; its names are free");
        }
        for name in gone {
            let line = Message::text(format!("WSLeave {name}"));
            self.deliver_remote(None, &line).await;
            announce_remote(backplane, &format!("WSLeave {name}")).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_between_instances_round_trip_and_bad_ones_are_refused() {
        let text = Message::text("alice: hi");
        let Some(Body::All(decoded)) = encode_all(&text).as_deref().and_then(decode) else {
            panic!("a text line decodes");
        };
        assert_eq!(decoded, text);
        let binary = Message::binary(vec![0u8, 159, 255]);
        let Some(Body::All(decoded)) = encode_all(&binary).as_deref().and_then(decode) else {
            panic!("a binary message decodes");
        };
        assert_eq!(decoded, binary);
        assert!(matches!(
            decode(b"p42\n(private) alice: psst"),
            Some(Body::Private(42, "(private) alice: psst"))
        ));
        for bad in [
            &b""[..],
            b"x",
            b"t\xff",
            b"p\nline",
            b"pnot-a-number\nline",
            b"p42",
        ] {
            assert!(decode(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn owners_from_redis_are_parsed_and_bounded() {
        let owner = parse_owner("0123abcd 7 127.0.0.1").expect("a valid owner");
        assert_eq!(
            (
                owner.instance.as_str(),
                owner.client,
                owner.address.as_str()
            ),
            ("0123abcd", 7, "127.0.0.1")
        );
        assert!(parse_owner("0123abcd x 127.0.0.1").is_none());
        assert!(parse_owner("0123abcd 7").is_none());
        assert!(parse_owner(&format!("{} 7 ::1", "i".repeat(65))).is_none());
    }

    #[test]
    fn names_from_redis_must_be_valid_and_are_bounded() {
        let values = vec![
            Value::BulkString(b"bob".to_vec()),
            Value::BulkString(b"not valid".to_vec()),
            Value::Nil,
            Value::BulkString(b"alice".to_vec()),
            Value::BulkString(b"carol".to_vec()),
        ];
        assert_eq!(names_in(values, 2), ["bob", "alice"]);
    }
}
