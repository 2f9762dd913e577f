//! The Redis backplane that `websocket_chat --redis` and `websocket_broker
//! --redis` share: one connection for commands (redis-rs's
//! `ConnectionManager`, which reconnects by itself), one pub/sub connection
//! of its own that this module reconnects with back-off and resubscribes,
//! and the instance's heartbeat.
//!
//! Every instance has a random id and two channels: `<ns>:all`, which every
//! instance of the namespace reads, and `<ns>:instance:<id>`, its own. A
//! published payload is the sender's instance id, a newline, and a body that
//! the chat or the broker (the [`Peer`]) defines; what an instance
//! publishes on `<ns>:all` it has already handled locally, so it skips its
//! own. Every payload read from Redis is bounded ([`RedisOptions::max_payload`]).
//!
//! Liveness: every instance adds itself to the sorted set `<ns>:instances`
//! with a deadline (Redis's own clock plus [`RedisOptions::expiry`]) every
//! third of the expiry. An instance past its deadline is dead: the first
//! instance whose heartbeat finds it removes it ([`Peer::reap`]), so its
//! clients vanish from the shared state within the expiry plus a heartbeat.
//! When the heartbeat finds its own entry missing (Redis restarted, or this
//! instance was cut off longer than the expiry and reaped), or the pub/sub
//! connection comes back, the instance writes its own state back
//! ([`Peer::resync`]).
//!
//! While Redis is away, [`Backplane::is_up`] is false: nothing is published
//! (those messages reach only the local clients), and each peer decides what
//! it refuses meanwhile. What is lost or delayed is `docs/scaling.md`.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSub};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// How long one Redis command or connection attempt may take.
pub const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// The default time after which a silent instance counts as dead.
pub const DEFAULT_EXPIRY: Duration = Duration::from_secs(10);

/// The longest wait between two attempts to reach Redis again.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The first wait after Redis went away.
const MIN_BACKOFF: Duration = Duration::from_millis(100);

/// The payload bytes that may wait to be published at once; a sender
/// whose message would exceed them waits (a larger message waits for all of them).
const PUBLISH_BUDGET: usize = 8 << 20;

/// The most messages published in one pipeline.
const PUBLISH_BATCH: usize = 64;

/// A message waiting to be published, holding its share of the budget.
type Outgoing = (String, Vec<u8>, OwnedSemaphorePermit);

/// The most dead instances one heartbeat cleans up after.
const MAX_REAPED_PER_BEAT: usize = 16;

/// How an instance reaches the others.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// `redis://host:port/db` (or `rediss://`, `redis+unix://`).
    pub url: String,
    /// The prefix of every key and channel; instances that share it share
    /// their clients.
    pub namespace: String,
    /// How long an instance may miss heartbeats before the others drop its
    /// clients (it beats every third of this).
    pub expiry: Duration,
    /// The largest payload read from Redis; a larger one is dropped with a warning.
    pub max_payload: usize,
}

/// Why the backplane could not start.
#[derive(Debug, thiserror::Error)]
pub enum BackplaneError {
    /// The URL does not parse.
    #[error("invalid --redis URL: {0}")]
    Url(#[source] redis::RedisError),
    /// Redis did not answer at start-up.
    #[error("cannot reach Redis at {url}: {source}")]
    Unreachable {
        /// The URL, without its password.
        url: String,
        /// The cause.
        #[source]
        source: redis::RedisError,
    },
    /// The expiry is too short to beat three times within it.
    #[error("--redis-expiry must be at least 1 second")]
    Expiry,
}

impl BackplaneError {
    /// [`BackplaneError::Unreachable`] for `url`, without its password.
    fn unreachable(url: &str, source: impl Into<redis::RedisError>) -> BackplaneError {
        BackplaneError::Unreachable {
            url: redacted(url),
            source: source.into(),
        }
    }
}

/// What an instance does with the backplane's events; the chat's room and
/// the broker implement it.
pub trait Peer: Send + Sync + 'static {
    /// A payload from another instance, already bounded in size.
    fn on_message(&self, message: Incoming<'_>) -> impl Future<Output = ()> + Send;
    /// Redis lost this instance's state, or was away: write it back;
    /// `false` if Redis failed meanwhile (it is tried again).
    fn resync(&self) -> impl Future<Output = bool> + Send;
    /// Instance `dead` stopped beating; this instance won the right to clean
    /// up after it (no other instance is called for the same one).
    fn reap(&self, dead: &str) -> impl Future<Output = ()> + Send;
}

/// A payload read from Redis.
#[derive(Debug, Clone, Copy)]
pub struct Incoming<'a> {
    /// The instance that published it.
    pub origin: &'a str,
    /// Whether it came on this instance's own channel (rather than `<ns>:all`).
    pub direct: bool,
    /// What the peer put after the origin line.
    pub body: &'a [u8],
}

/// One instance's connection to the others.
pub struct Backplane {
    manager: ConnectionManager,
    client: redis::Client,
    instance: String,
    options: RedisOptions,
    up: AtomicBool,
    /// Set by the first failure of an outage, so it is logged once.
    outage_logged: AtomicBool,
    /// A resync failed; the heartbeat tries again.
    needs_resync: AtomicBool,
    /// Messages to publish, in order, for the publisher task of [`Backplane::run`].
    outgoing: mpsc::UnboundedSender<Outgoing>,
    /// Its receiving end, until `run` takes it.
    outgoing_receiver: Mutex<Option<mpsc::UnboundedReceiver<Outgoing>>>,
    /// Bounds the bytes in `outgoing` (the channel itself is bounded by it).
    publish_budget: Arc<Semaphore>,
}

impl std::fmt::Debug for Backplane {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Backplane")
            .field("instance", &self.instance)
            .field("namespace", &self.options.namespace)
            .field("up", &self.is_up())
            .finish_non_exhaustive()
    }
}

/// Registers this instance (or renews its deadline) and lists dead ones.
/// KEYS: instances. ARGV: instance id, expiry in ms, most dead to list.
/// Returns {1 if the entry was new, dead ids...}.
const HEARTBEAT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local added = redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
local reply = {added}
for _, id in ipairs(dead) do reply[#reply + 1] = id end
return reply
";

/// The Lua prelude of scripts that need Redis's clock and liveness:
/// `now` in ms, and `alive(id)`, whether instance `id` beats (KEYS[1] is
/// the instances set in every script that uses it).
pub const LUA_PRELUDE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function alive(id)
  local deadline = redis.call('ZSCORE', KEYS[1], id)
  return deadline ~= false and deadline ~= nil and tonumber(deadline) > now
end
";

/// A script of the chat's or the broker's, behind [`LUA_PRELUDE`] if it
/// uses `now` or `alive`.
pub fn script(body: &str, needs_prelude: bool) -> redis::Script {
    if needs_prelude {
        redis::Script::new(&format!("{LUA_PRELUDE}{body}"))
    } else {
        redis::Script::new(body)
    }
}

impl Backplane {
    /// Connects to Redis (failing if it does not answer within [`REDIS_TIMEOUT`])
    /// and registers a fresh instance id. Must run inside the tokio runtime
    /// that [`Backplane::run`] drives afterwards.
    pub async fn connect(options: RedisOptions) -> Result<Arc<Backplane>, BackplaneError> {
        if options.expiry < Duration::from_secs(1) {
            return Err(BackplaneError::Expiry);
        }
        let client = redis::Client::open(options.url.as_str()).map_err(BackplaneError::Url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_max_delay(MAX_BACKOFF)
            .set_number_of_retries(2);
        let manager = ConnectionManager::new_with_config(client.clone(), config)
            .await
            .map_err(|source| BackplaneError::unreachable(&options.url, source))?;
        let (outgoing, outgoing_receiver) = mpsc::unbounded_channel();
        let mut id = [0u8; 8];
        getrandom::fill(&mut id).expect("the system's random source works");
        let instance: String = id.iter().map(|byte| format!("{byte:02x}")).collect();
        let backplane = Arc::new(Backplane {
            manager,
            client,
            instance,
            options,
            up: AtomicBool::new(false),
            outage_logged: AtomicBool::new(false),
            needs_resync: AtomicBool::new(false),
            outgoing,
            outgoing_receiver: Mutex::new(Some(outgoing_receiver)),
            publish_budget: Arc::new(Semaphore::new(PUBLISH_BUDGET)),
        });
        backplane
            .heartbeat()
            .await
            .map_err(|source| BackplaneError::unreachable(&backplane.options.url, source))?;
        info!(instance = %backplane.instance, namespace = %backplane.options.namespace, "joined the Redis backplane");
        Ok(backplane)
    }

    /// This instance's id.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The options it was started with.
    pub fn options(&self) -> &RedisOptions {
        &self.options
    }

    /// Whether the pub/sub connection is up (messages published now reach
    /// the other instances).
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Asks for the peer's state to be written back to Redis at the next
    /// heartbeat (a peer that found its own state missing calls this, and
    /// may also write it back at once with [`Peer::resync`]).
    pub fn request_resync(&self) {
        self.needs_resync.store(true, Ordering::Release);
    }

    /// `<namespace>:<suffix>`.
    pub fn key(&self, suffix: &str) -> String {
        format!("{}:{suffix}", self.options.namespace)
    }

    /// The channel every instance reads.
    pub fn all_channel(&self) -> String {
        self.key("all")
    }

    /// The channel only instance `instance` reads.
    pub fn instance_channel(&self, instance: &str) -> String {
        self.key(&format!("instance:{instance}"))
    }

    /// The sorted set of live instances and their deadlines.
    pub fn instances_key(&self) -> String {
        self.key("instances")
    }

    /// A clone of the command connection.
    pub fn connection(&self) -> ConnectionManager {
        self.manager.clone()
    }

    /// Queues `body` for publishing on `channel`, in order with everything
    /// this instance publishes, unless Redis is away (then the other
    /// instances miss it: `docs/scaling.md`). Waits while [`PUBLISH_BUDGET`]
    /// bytes already wait; the publisher task sends them in pipelines, so a
    /// sender does not wait for Redis's round trip. Failures are logged once per outage.
    pub async fn publish(&self, channel: &str, body: &[u8]) {
        if !self.is_up() {
            return;
        }
        let mut payload = Vec::with_capacity(self.instance.len() + 1 + body.len());
        payload.extend_from_slice(self.instance.as_bytes());
        payload.push(b'\n');
        payload.extend_from_slice(body);
        // The entry costs its channel name and some bookkeeping too.
        let cost = payload.len() + channel.len() + 64;
        let share = u32::try_from(cost.min(PUBLISH_BUDGET)).unwrap_or(u32::MAX);
        let Ok(permit) = Arc::clone(&self.publish_budget)
            .acquire_many_owned(share)
            .await
        else {
            return;
        };
        // Fails only once the publisher is gone, at the end of the process.
        let _ = self.outgoing.send((channel.to_owned(), payload, permit));
    }

    /// Publishes what [`Backplane::publish`] queued, a pipeline at a time;
    /// while Redis is away it is dropped.
    async fn publish_loop(&self) {
        let Some(mut receiver) = self
            .outgoing_receiver
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        else {
            return;
        };
        let mut batch = Vec::with_capacity(PUBLISH_BATCH);
        while receiver.recv_many(&mut batch, PUBLISH_BATCH).await > 0 {
            if self.is_up() {
                let mut pipeline = redis::pipe();
                for (channel, payload, _) in &batch {
                    pipeline.cmd("PUBLISH").arg(channel).arg(payload).ignore();
                }
                let published: redis::RedisResult<()> =
                    pipeline.query_async(&mut self.connection()).await;
                if let Err(error) = published {
                    self.failed(&error);
                }
            }
            // Their permits return to the budget here.
            batch.clear();
        }
    }

    /// Runs a script on the command connection; a failure is logged
    /// ([`Backplane::failed`]) and comes back as `None`.
    pub async fn invoke<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Option<T> {
        match invocation.invoke_async(&mut self.connection()).await {
            Ok(reply) => Some(reply),
            Err(error) => {
                self.failed(&error);
                None
            }
        }
    }

    /// Logs a failed command, once per outage.
    pub fn failed(&self, error: &redis::RedisError) {
        if !self.outage_logged.swap(true, Ordering::AcqRel) {
            warn!(%error, "Redis command failed; other instances miss this instance's messages until it is back");
        } else {
            debug!(%error, "Redis command failed");
        }
    }

    /// Renews this instance's deadline; `Ok(true)` if its entry was missing.
    async fn heartbeat(&self) -> redis::RedisResult<(bool, Vec<String>)> {
        let expiry_ms = u64::try_from(self.options.expiry.as_millis()).unwrap_or(u64::MAX);
        let mut connection = self.connection();
        let reply: Vec<redis::Value> = redis::Script::new(HEARTBEAT)
            .key(self.instances_key())
            .arg(&self.instance)
            .arg(expiry_ms)
            .arg(MAX_REAPED_PER_BEAT)
            .invoke_async(&mut connection)
            .await?;
        let mut reply = reply.into_iter();
        let added = matches!(reply.next(), Some(redis::Value::Int(1)));
        let dead = reply
            .filter_map(|value| redis::from_redis_value::<String>(value).ok())
            .filter(|id| *id != self.instance && id.len() <= 64)
            .take(MAX_REAPED_PER_BEAT)
            .collect();
        Ok((added, dead))
    }

    /// Keeps the instance on the backplane until `shutdown`: reads the
    /// pub/sub channels (reconnecting with back-off and resubscribing when
    /// Redis goes away) and beats. Runs on the runtime [`Backplane::connect`] ran in.
    /// `subscribed` is the pub/sub connection [`Backplane::subscribe`] made
    /// at start-up, if any.
    pub async fn run<P: Peer>(
        self: Arc<Self>,
        peer: Arc<P>,
        subscribed: Option<PubSub>,
        shutdown: CancellationToken,
    ) {
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = self.subscribe_loop(peer.as_ref(), subscribed) => {}
            () = self.heartbeat_loop(peer.as_ref()) => {}
            () = self.publish_loop() => {}
        }
    }

    /// Opens a pub/sub connection reading `<ns>:all` and this instance's
    /// channel, within [`REDIS_TIMEOUT`].
    pub async fn subscribe(&self) -> redis::RedisResult<PubSub> {
        let all = self.all_channel();
        let mine = self.instance_channel(&self.instance);
        let subscribed = tokio::time::timeout(REDIS_TIMEOUT, async {
            let mut pubsub = self.client.get_async_pubsub().await?;
            pubsub.subscribe(&[all.as_str(), mine.as_str()]).await?;
            Ok::<_, redis::RedisError>(pubsub)
        })
        .await;
        match subscribed {
            Ok(subscribed) => subscribed,
            Err(_) => Err(redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "subscribing timed out",
            ))),
        }
    }

    async fn heartbeat_loop<P: Peer>(&self, peer: &P) {
        let mut ticker = tokio::time::interval(self.options.expiry / 3);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            match self.heartbeat().await {
                Ok((added, dead)) => {
                    if added && self.is_up() {
                        info!("this instance's entry was missing in Redis; writing its state back");
                        self.needs_resync.store(true, Ordering::Release);
                    }
                    if self.is_up() && self.needs_resync.load(Ordering::Acquire) {
                        self.resync(peer).await;
                    }
                    for id in dead {
                        debug!(dead = %id, "an instance stopped beating");
                        peer.reap(&id).await;
                    }
                }
                Err(error) => self.failed(&error),
            }
        }
    }

    /// Writes the peer's state back, trying a few times at once (the command
    /// connection reconnects on its first failure), then leaving it to the heartbeat.
    async fn resync<P: Peer>(&self, peer: &P) {
        let mut backoff = MIN_BACKOFF;
        for _ in 0..4 {
            if peer.resync().await {
                self.needs_resync.store(false, Ordering::Release);
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
        self.needs_resync.store(true, Ordering::Release);
    }

    async fn subscribe_loop<P: Peer>(&self, peer: &P, mut subscribed: Option<PubSub>) {
        let mut backoff = MIN_BACKOFF;
        let mine = self.instance_channel(&self.instance);
        loop {
            let pubsub = match subscribed.take() {
                Some(pubsub) => pubsub,
                None => match self.subscribe().await {
                    Ok(pubsub) => pubsub,
                    Err(error) => {
                        self.failed(&error);
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                },
            };
            backoff = MIN_BACKOFF;
            let was_down = self.outage_logged.swap(false, Ordering::AcqRel);
            self.up.store(true, Ordering::Release);
            if was_down {
                info!("Redis is back; resubscribed, writing this instance's state back");
            } else {
                debug!("subscribed to the Redis backplane");
            }
            // Whatever this instance did while cut off must reach the shared state.
            self.resync(peer).await;
            let mut stream = pubsub.into_on_message();
            while let Some(message) = stream.next().await {
                let payload = message.get_payload_bytes();
                if payload.len() > self.options.max_payload {
                    warn!(
                        len = payload.len(),
                        limit = self.options.max_payload,
                        "payload from Redis too large; dropped"
                    );
                    continue;
                }
                let Some(newline) = payload.iter().position(|&byte| byte == b'\n') else {
                    warn!("payload from Redis without an origin; dropped");
                    continue;
                };
                let Ok(origin) = std::str::from_utf8(&payload[..newline]) else {
                    warn!("payload from Redis with a bad origin; dropped");
                    continue;
                };
                let direct = message.get_channel_name() == mine;
                if !direct && origin == self.instance {
                    continue;
                }
                let incoming = Incoming {
                    origin,
                    direct,
                    body: &payload[newline + 1..],
                };
                peer.on_message(incoming).await;
            }
            self.up.store(false, Ordering::Release);
            if !self.outage_logged.swap(true, Ordering::AcqRel) {
                warn!(
                    "lost the Redis pub/sub connection; serving local clients only until it is back"
                );
            }
        }
    }
}

/// `url` without its password, for messages.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://…@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// Starts the backplane on a thread of its own with a runtime of its own,
/// before the server's runtime exists (`backend::launch` runs set-up first):
/// connects (an error stops start-up), then hands the backplane to `attach`
/// and keeps it running for `peer`. The thread ends with the process.
pub fn start<P, A>(options: RedisOptions, attach: A) -> Result<Arc<Backplane>, BackplaneError>
where
    P: Peer,
    A: FnOnce(Arc<Backplane>) -> Arc<P>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| BackplaneError::unreachable(&options.url, error))?;
    let (backplane, subscribed) = runtime.block_on(async {
        let backplane = Backplane::connect(options).await?;
        // Subscribed before the socket is published, so no client's message
        // from another instance is missed for want of a subscription.
        let subscribed = backplane
            .subscribe()
            .await
            .map_err(|source| BackplaneError::unreachable(&backplane.options.url, source))?;
        Ok::<_, BackplaneError>((backplane, subscribed))
    })?;
    let peer = attach(Arc::clone(&backplane));
    let running = Arc::clone(&backplane);
    let spawned = std::thread::Builder::new()
        .name("redis-backplane".to_owned())
        .spawn(move || {
            runtime.block_on(running.run(peer, Some(subscribed), CancellationToken::new()));
        });
    if let Err(error) = spawned {
        return Err(BackplaneError::unreachable(&backplane.options.url, error));
    }
    Ok(backplane)
}

/// The `--redis` flags of `websocket_chat` and `websocket_broker`.
#[derive(Debug, Clone, clap::Args)]
pub struct RedisArgs {
    /// Share clients with the other instances that use this Redis (redis://host:port/db); see
    /// docs/scaling.md. Start-up fails if Redis does not answer.
    #[arg(long = "redis", value_name = "URL")]
    pub url: Option<String>,
    /// The prefix of this instance's keys and channels in Redis; instances with the same prefix
    /// share their clients [default: wsgate:<chat|broker>:<name>].
    #[arg(long = "redis-namespace", value_name = "PREFIX", requires = "url")]
    pub namespace: Option<String>,
    /// Seconds an instance may miss heartbeats (sent every third of this) before the others drop
    /// its clients.
    #[arg(long = "redis-expiry", value_name = "SECONDS", default_value_t = DEFAULT_EXPIRY.as_secs(), requires = "url")]
    pub expiry: u64,
}

/// What a payload may hold beside one client message: ids, names, JSON framing.
const PAYLOAD_OVERHEAD: usize = 64 * 1024;

impl RedisArgs {
    /// The backplane's options, if `--redis` was given: the namespace
    /// defaults to `wsgate:<kind>:<name>`, and payloads read from Redis are
    /// bounded by the largest client message plus some framing.
    pub fn options(&self, name: &str, kind: &str, max_message: usize) -> Option<RedisOptions> {
        let url = self.url.clone()?;
        Some(RedisOptions {
            url,
            namespace: self
                .namespace
                .clone()
                .unwrap_or_else(|| format!("wsgate:{kind}:{name}")),
            expiry: Duration::from_secs(self.expiry),
            max_payload: max_message.saturating_add(PAYLOAD_OVERHEAD),
        })
    }
}
