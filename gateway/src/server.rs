//! The accept loops, the state every connection shares, the connection limit,
//! and graceful shutdown: [`serve`].
//!
//! Shutdown: the token stops the accept loops, tells hyper to finish each
//! plain HTTP connection, and makes every relay close its client with `1001`
//! and its link with CLOSE. [`serve`] returns once all of them are done, or
//! after the shutdown timeout at the latest.
//!
//! A TLS listener's connections first go through `tls`'s handshake in their
//! own task (counted per address like any connection that has not upgraded).
//!
//! The configuration is a [`Shared`] snapshot in an `ArcSwap` ([`Live`]):
//! SIGHUP, caught from [`bind_all`] on, makes `reload` swap in a new one.
//! Each request takes the snapshot current when it arrives, and an upgraded
//! client keeps its request's snapshot for its whole life. The supervised
//! backends are stopped after the clients are closed.
//!
//! Drain (SIGUSR2, for a new gateway taking over the port): the accept loops
//! take what is already queued and close their listeners, and the clients
//! and HTTP connections go on until they finish; those still open after the
//! shutdown timeout are shut down as above.

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use lifecycle::AcceptBackoff;
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::activation::{self, InheritedSockets};
use crate::authorizer::Authorizer;
use crate::carrier::Carriers;
use crate::config::Config;
use crate::connection;
use crate::http_connections::{HttpConnection, HttpConnections};
use crate::link_pool::{self, LinkPool};
use crate::metrics::Metrics;
use crate::relay::RelaySettings;
use crate::reload::{self, ConfigSource};
use crate::static_files::StaticFiles;
use crate::supervisor::Supervisor;
use crate::tls::Tls;

/// Idle connections closed at once when accepting runs out of descriptors.
const SHED_BATCH: usize = 64;

/// Extra time, beyond the shutdown timeout, for relays to finish closing.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// What every connection and relay of one gateway shares: one snapshot of
/// the configuration and what was built from it, plus the process-wide
/// state that every snapshot shares.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) settings: RelaySettings,
    pub(crate) static_files: StaticFiles,
    /// The authorizer client, when some name has an authorizer.
    pub(crate) authorizer: Option<Arc<Authorizer>>,
    /// The TLS side, when there are TLS listeners.
    pub(crate) tls: Option<Arc<Tls>>,
    // The rest is the same in every snapshot.
    /// The WebSocket clients open: `--max-connections`.
    pub(crate) clients: Arc<ClientSlots>,
    /// Connection ids, unique within this process.
    pub(crate) next_id: Arc<AtomicU64>,
    /// Every connection and relay task, so shutdown can wait for them.
    pub(crate) tracker: TaskTracker,
    pub(crate) shutdown: CancellationToken,
    /// Cancelled when this gateway stops accepting: at drain (SIGUSR2) or
    /// shutdown (a child of `shutdown`).
    pub(crate) draining: CancellationToken,
    /// Connections that have not upgraded: per-address limit and shedding.
    pub(crate) http_connections: Arc<HttpConnections>,
    /// Names served in direct mode that a TLS client reached (relayed
    /// instead), so that is logged once per name.
    pub(crate) direct_over_tls: Arc<Mutex<HashSet<String>>>,
    /// This gateway's metrics (served on `--metrics-listen`).
    pub(crate) metrics: Arc<Metrics>,
    /// Direct mode's idle links, offered by their backends for the next client.
    pub(crate) link_pool: Arc<LinkPool>,
    /// The carrier link of each backend socket that asked for one (fan-out).
    pub(crate) carriers: Arc<Carriers>,
}

/// The current snapshot; a reload stores a new one.
pub(crate) type Live = ArcSwap<Shared>;

impl Shared {
    /// The snapshot for `config` and `tls` that shares this one's process-wide
    /// state and, when its settings did not change, its authorizer client.
    pub(crate) fn with_config(&self, config: Config, tls: Option<Arc<Tls>>) -> Shared {
        let authorizer = match &self.authorizer {
            Some(authorizer)
                if config.authorizers == self.config.authorizers
                    && config.authorizer_timeout == self.config.authorizer_timeout =>
            {
                Some(Arc::clone(authorizer))
            }
            _ => Authorizer::new(&config.authorizers, config.authorizer_timeout).map(Arc::new),
        };
        Shared {
            settings: RelaySettings::from_config(&config),
            static_files: StaticFiles::new(config.htdocs.as_deref()),
            authorizer,
            tls,
            config,
            clients: Arc::clone(&self.clients),
            next_id: Arc::clone(&self.next_id),
            tracker: self.tracker.clone(),
            shutdown: self.shutdown.clone(),
            draining: self.draining.clone(),
            http_connections: Arc::clone(&self.http_connections),
            direct_over_tls: Arc::clone(&self.direct_over_tls),
            metrics: Arc::clone(&self.metrics),
            link_pool: Arc::clone(&self.link_pool),
            carriers: Arc::clone(&self.carriers),
        }
    }
}

/// Counts the WebSocket clients against the limit of the snapshot each
/// one arrives with, so a reload can raise or lower `--max-connections`
/// (lowered, it refuses new clients until enough have left).
#[derive(Debug, Default)]
pub(crate) struct ClientSlots {
    n_open: AtomicUsize,
}

impl ClientSlots {
    /// A slot if fewer than `max` clients are open.
    pub(crate) fn try_acquire(self: &Arc<Self>, max: usize) -> Option<ClientSlot> {
        self.n_open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n_open| {
                (n_open < max).then_some(n_open + 1)
            })
            .ok()?;
        Some(ClientSlot(Arc::clone(self)))
    }
}

/// One open WebSocket client; dropping it frees the slot.
#[derive(Debug)]
pub(crate) struct ClientSlot(Arc<ClientSlots>);

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.n_open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The bound listeners, plain and TLS, and SIGHUP and SIGUSR2, caught from
/// binding on (SIGHUP reloads the configuration; SIGUSR2 drains).
#[derive(Debug)]
pub struct Listeners {
    plain: Vec<TcpListener>,
    tls: Vec<TcpListener>,
    /// The `--metrics-listen` listener.
    metrics: Option<TcpListener>,
    hangups: Signal,
    drains: Signal,
}

impl Listeners {
    /// The sockets of systemd's socket activation or of a supervising
    /// `wsgate`, instead of binding; catches SIGHUP and SIGUSR2 from now on.
    /// Must be called inside the runtime.
    pub fn inherited(sockets: InheritedSockets) -> io::Result<Listeners> {
        let into_tokio = |listeners: Vec<std::net::TcpListener>| {
            listeners
                .into_iter()
                .map(TcpListener::from_std)
                .collect::<io::Result<Vec<_>>>()
        };
        Ok(Listeners {
            plain: into_tokio(sockets.plain)?,
            tls: into_tokio(sockets.tls)?,
            // Each worker would bind the same address: not served here.
            metrics: None,
            hangups: signal(SignalKind::hangup())?,
            drains: signal(SignalKind::user_defined2())?,
        })
    }

    /// What each listener announces, in order: `http://<addr>` for the plain
    /// ones, then `https://<addr>` for the TLS ones.
    pub fn urls(&self) -> io::Result<Vec<String>> {
        let plain = self
            .plain
            .iter()
            .map(|listener| Ok(format!("http://{}", listener.local_addr()?)));
        let tls = self
            .tls
            .iter()
            .map(|listener| Ok(format!("https://{}", listener.local_addr()?)));
        plain.chain(tls).collect()
    }

    /// The line announcing the metrics listener, `metrics on
    /// http://<addr>/metrics`, if there is one.
    pub fn metrics_announcement(&self) -> io::Result<Option<String>> {
        self.metrics
            .as_ref()
            .map(|listener| {
                listener
                    .local_addr()
                    .map(lifecycle::metrics_endpoint::announcement)
            })
            .transpose()
    }
}

/// Serves HTTP and WebSocket on `listeners` until `shutdown` is cancelled,
/// then closes every client, stops the supervised backends and returns.
/// `tls` is [`Tls::from_config`] of the same `config`; the TLS listeners
/// need it. `config` came from `source`, which SIGHUP reads again;
/// `supervisor` runs `config`'s backends ([`Supervisor::start`]).
pub async fn serve(
    listeners: Listeners,
    tls: Option<Tls>,
    config: Config,
    source: ConfigSource,
    supervisor: Supervisor,
    shutdown: CancellationToken,
) -> io::Result<()> {
    if !config.docroot.is_dir() {
        tracing::warn!(
            docroot = %config.docroot.display(),
            "the docroot does not exist (yet): every WebSocket request gets 404 until a backend creates it"
        );
    }
    if !listeners.tls.is_empty() && tls.is_none() {
        supervisor.stop().await;
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "TLS listeners without a TLS configuration",
        ));
    }
    let tracker = TaskTracker::new();
    let draining = shutdown.child_token();
    let metrics = Arc::new(Metrics::new());
    let shared = Shared {
        settings: RelaySettings::from_config(&config),
        static_files: StaticFiles::new(config.htdocs.as_deref()),
        authorizer: Authorizer::new(&config.authorizers, config.authorizer_timeout).map(Arc::new),
        tls: tls.map(Arc::new),
        clients: Arc::new(ClientSlots::default()),
        next_id: Arc::new(AtomicU64::new(1)),
        tracker: tracker.clone(),
        shutdown: shutdown.clone(),
        draining: draining.clone(),
        http_connections: Arc::new(HttpConnections::new(config.max_connections_per_ip)),
        direct_over_tls: Arc::new(Mutex::new(HashSet::new())),
        link_pool: Arc::new(LinkPool::with_gauge(metrics.backend_links_idle())),
        metrics,
        carriers: Arc::new(Carriers::default()),
        config,
    };
    // Idle links are closed when they expire, and all of them at drain.
    tracker.spawn(link_pool::sweep(
        Arc::clone(&shared.link_pool),
        draining.clone(),
    ));
    let live = Arc::new(ArcSwap::from_pointee(shared));
    for listener in listeners.plain {
        tracker.spawn(accept_loop(listener, Arc::clone(&live), false));
    }
    for listener in listeners.tls {
        tracker.spawn(accept_loop(listener, Arc::clone(&live), true));
    }
    if let Some(listener) = listeners.metrics {
        let metrics = Arc::clone(&live.load().metrics);
        tracker.spawn(lifecycle::metrics_endpoint::serve(
            listener,
            metrics as _,
            shutdown.clone(),
        ));
    }
    let supervisor = Arc::new(supervisor);
    tracker.spawn(reload::reload_on_hangup(
        listeners.hangups,
        Arc::clone(&live),
        source,
        Arc::clone(&supervisor),
        draining.clone(),
    ));
    let mut drains = listeners.drains;
    let drain = tokio::select! {
        () = shutdown.cancelled() => false,
        received = drains.recv() => received.is_some(),
    };
    draining.cancel();
    tracker.close();
    if drain {
        tracing::info!(
            n_tasks = tracker.len(),
            "SIGUSR2: no longer accepting; waiting for the clients to finish"
        );
        let shutdown_timeout = live.load().config.shutdown_timeout;
        let drained = tokio::time::timeout(shutdown_timeout, tracker.wait())
            .await
            .is_ok();
        if !drained {
            tracing::info!(
                n_tasks = tracker.len(),
                "clients still open after the shutdown timeout; closing them"
            );
        }
        shutdown.cancel();
    }
    let limit = live.load().config.shutdown_timeout + SHUTDOWN_GRACE;
    if tokio::time::timeout(limit, tracker.wait()).await.is_err() {
        tracing::warn!(
            n_tasks = tracker.len(),
            "connections still open after the shutdown timeout; leaving them"
        );
    }
    // The clients are closed: now their backends may go.
    supervisor.stop().await;
    Ok(())
}

/// Accepts connections on a plain listener, or a TLS one when `is_tls`,
/// each served with the snapshot current when it arrives, until drain or
/// shutdown.
async fn accept_loop(listener: TcpListener, live: Arc<Live>, is_tls: bool) {
    let mut backoff = AcceptBackoff::new();
    let (shutdown, draining) = {
        let shared = live.load();
        (shared.shutdown.clone(), shared.draining.clone())
    };
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = draining.cancelled() => {
                if !shutdown.is_cancelled() {
                    take_queued(&listener, &live, is_tls);
                }
                // Dropping the listener closes it: new connections go to
                // the other sockets of the port, if any.
                return;
            }
        };
        match accepted {
            Ok((tcp, peer)) => {
                backoff.reset();
                spawn_connection(tcp, peer, &live, is_tls);
            }
            Err(error) => {
                // EMFILE, ENFILE, ENOBUFS...: the connection waits in the backlog.
                // Out of descriptors, idle connections that have not upgraded
                // make room, so upgraded clients and new ones still get in.
                let n_shed = if lifecycle::is_transient_accept_error(&error) {
                    live.load().http_connections.shed_idle(SHED_BATCH)
                } else {
                    0
                };
                tracing::warn!(%error, n_shed, "accept failed");
                backoff.wait().await;
            }
        }
    }
}

/// At drain, the connections already in the listener's queue: served
/// rather than reset when the listener closes. (Between the last accept and
/// the close, the kernel may still queue one; `net.ipv4.tcp_migrate_req`
/// hands such a connection to another socket of the port.)
fn take_queued(listener: &TcpListener, live: &Arc<Live>, is_tls: bool) {
    let mut waker_context = std::task::Context::from_waker(std::task::Waker::noop());
    let mut n_taken = 0_usize;
    while let std::task::Poll::Ready(Ok((tcp, peer))) = listener.poll_accept(&mut waker_context) {
        spawn_connection(tcp, peer, live, is_tls);
        n_taken += 1;
    }
    tracing::info!(n_taken, "listener closed");
}

/// Registers one accepted connection and spawns its task, with the
/// snapshot current now.
fn spawn_connection(tcp: TcpStream, peer: SocketAddr, live: &Arc<Live>, is_tls: bool) {
    let shared = live.load_full();
    let Some(registered) = shared.http_connections.register(peer.ip()) else {
        // Dropping the stream closes it: this address holds its share.
        tracing::info!(%peer, "too many connections from this address; closed");
        return;
    };
    // WebSocket messages are small and interactive: no Nagle delay.
    let _ = tcp.set_nodelay(true);
    let live_for_connection = Arc::clone(live);
    match (is_tls, &shared.tls) {
        (false, _) => {
            shared.tracker.spawn(connection::serve(
                tcp,
                peer,
                live_for_connection,
                registered,
                None,
            ));
        }
        (true, Some(tls)) => {
            shared.tracker.spawn(serve_tls(
                tcp,
                peer,
                live_for_connection,
                registered,
                Arc::clone(tls),
            ));
        }
        // `serve` and reloads keep TLS while there are TLS listeners.
        (true, None) => {
            tracing::error!(%peer, "TLS listener without a TLS configuration; closed");
        }
    }
}

/// The TLS handshake of one connection, then HTTP over it. The handshake
/// ends early when the gateway sheds the connection or shuts down.
fn serve_tls(
    tcp: TcpStream,
    peer: SocketAddr,
    live: Arc<Live>,
    registered: HttpConnection,
    tls: Arc<Tls>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    // An upgraded client's task keeps only what its relay needs, not the
    // handshake's state beside it.
    connection::then_run(tls_handshake(tcp, peer, live, registered, tls))
}

/// The TLS handshake of one connection: the connection served over it, or
/// `None` if the handshake failed or ended early.
async fn tls_handshake(
    tcp: TcpStream,
    peer: SocketAddr,
    live: Arc<Live>,
    registered: HttpConnection,
    tls: Arc<Tls>,
) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
    let shutdown = live.load().shutdown.clone();
    let handshake = tokio::select! {
        handshake = tls.handshake(tcp) => handshake,
        () = registered.shed_token().cancelled() => return None,
        () = shutdown.cancelled() => return None,
    };
    live.load().metrics.tls_handshake(&handshake);
    match handshake {
        Ok((stream, info)) => Some(connection::serve(
            stream,
            peer,
            live,
            registered,
            Some(info),
        )),
        Err(error) => {
            tracing::info!(
                %peer,
                error = &error as &dyn std::error::Error,
                "TLS handshake failed"
            );
            None
        }
    }
}

/// Binds every address of `config.listen` and `config.tls_listen`, in
/// order, with `SO_REUSEPORT`, and `config.metrics_listen`, and catches
/// SIGHUP and SIGUSR2 from now on.
pub async fn bind_all(config: &Config) -> io::Result<Listeners> {
    let metrics = match config.metrics_listen {
        Some(addr) => Some(lifecycle::metrics_endpoint::bind(addr).await?),
        None => None,
    };
    Ok(Listeners {
        plain: bind(&config.listen)?,
        tls: bind(&config.tls_listen)?,
        metrics,
        hangups: signal(SignalKind::hangup())?,
        drains: signal(SignalKind::user_defined2())?,
    })
}

fn bind(addrs: &[SocketAddr]) -> io::Result<Vec<TcpListener>> {
    addrs
        .iter()
        .map(|addr| TcpListener::from_std(activation::bind_reuseport(*addr)?))
        .collect()
}
