//! The accept loops, the state every connection shares, the connection limit,
//! and graceful shutdown: [`serve`].
//!
//! Shutdown: the token stops the accept loops, tells hyper to finish each
//! plain HTTP connection, and makes every relay close its client with `1001`
//! and its link with CLOSE. [`serve`] returns once all of them are done, or
//! after the shutdown timeout at the latest.
//!
//! A TLS listener's connections first go through `tls`'s handshake in their
//! own task (counted per address like any connection that has not upgraded);
//! SIGHUP, caught from [`bind_all`] on, reloads the certificate.

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lifecycle::AcceptBackoff;
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::authorizer::Authorizer;
use crate::config::Config;
use crate::connection;
use crate::http_connections::{HttpConnection, HttpConnections};
use crate::metrics::Metrics;
use crate::relay::RelaySettings;
use crate::static_files::StaticFiles;
use crate::tls::Tls;

/// Idle connections closed at once when accepting runs out of descriptors.
const SHED_BATCH: usize = 64;

/// Extra time, beyond the shutdown timeout, for relays to finish closing.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// What every connection and relay of one gateway shares.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) settings: RelaySettings,
    /// One permit per WebSocket client: `--max-connections`.
    pub(crate) clients: Arc<Semaphore>,
    /// Connection ids, unique within this process.
    pub(crate) next_id: AtomicU64,
    /// Every connection and relay task, so shutdown can wait for them.
    pub(crate) tracker: TaskTracker,
    pub(crate) shutdown: CancellationToken,
    pub(crate) static_files: StaticFiles,
    /// Connections that have not upgraded: per-address limit and shedding.
    pub(crate) http_connections: Arc<HttpConnections>,
    /// Names served in direct mode that a TLS client reached (relayed
    /// instead), so that is logged once per name.
    pub(crate) direct_over_tls: Mutex<HashSet<String>>,
    /// The authorizer client, when some name has an authorizer.
    pub(crate) authorizer: Option<Authorizer>,
    /// This gateway's metrics (served on `--metrics-listen`).
    pub(crate) metrics: Arc<Metrics>,
}

/// The bound listeners, plain and TLS, and SIGHUP, caught from binding on
/// (it reloads the TLS certificate; without TLS it is logged and ignored).
#[derive(Debug)]
pub struct Listeners {
    plain: Vec<TcpListener>,
    tls: Vec<TcpListener>,
    /// The `--metrics-listen` listener.
    metrics: Option<TcpListener>,
    hangups: Signal,
}

impl Listeners {
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
/// then closes every client and returns.
/// `tls` is [`Tls::from_config`] of the same `config`; the TLS listeners
/// need it.
pub async fn serve(
    listeners: Listeners,
    tls: Option<Tls>,
    config: Config,
    shutdown: CancellationToken,
) -> io::Result<()> {
    if !config.docroot.is_dir() {
        tracing::warn!(
            docroot = %config.docroot.display(),
            "the docroot does not exist (yet): every WebSocket request gets 404 until a backend creates it"
        );
    }
    let shared = Arc::new(Shared {
        settings: RelaySettings::from_config(&config),
        clients: Arc::new(Semaphore::new(config.max_connections)),
        next_id: AtomicU64::new(1),
        tracker: TaskTracker::new(),
        shutdown: shutdown.clone(),
        static_files: StaticFiles::new(config.htdocs.as_deref()),
        http_connections: Arc::new(HttpConnections::new(config.max_connections_per_ip)),
        direct_over_tls: Mutex::new(HashSet::new()),
        authorizer: Authorizer::new(&config.authorizers, config.authorizer_timeout),
        metrics: Arc::new(Metrics::new()),
        config,
    });
    let tls = tls.map(Arc::new);
    if !listeners.tls.is_empty() && tls.is_none() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "TLS listeners without a TLS configuration",
        ));
    }
    for listener in listeners.plain {
        let shared_for_loop = Arc::clone(&shared);
        shared
            .tracker
            .spawn(accept_loop(listener, shared_for_loop, None));
    }
    for listener in listeners.tls {
        let shared_for_loop = Arc::clone(&shared);
        shared
            .tracker
            .spawn(accept_loop(listener, shared_for_loop, tls.clone()));
    }
    if let Some(listener) = listeners.metrics {
        shared.tracker.spawn(lifecycle::metrics_endpoint::serve(
            listener,
            Arc::clone(&shared.metrics) as _,
            shutdown.clone(),
        ));
    }
    shared
        .tracker
        .spawn(reload_on_hangup(listeners.hangups, tls, shutdown.clone()));
    shutdown.cancelled().await;
    shared.tracker.close();
    let limit = shared.config.shutdown_timeout + SHUTDOWN_GRACE;
    if tokio::time::timeout(limit, shared.tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            n_tasks = shared.tracker.len(),
            "connections still open after the shutdown timeout; leaving them"
        );
    }
    Ok(())
}

/// SIGHUP reloads the TLS certificate, until shutdown.
async fn reload_on_hangup(mut hangups: Signal, tls: Option<Arc<Tls>>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            received = hangups.recv() => if received.is_none() { return },
            () = shutdown.cancelled() => return,
        }
        match &tls {
            Some(tls) => tls.reload(),
            None => tracing::info!("SIGHUP: no TLS certificate to reload"),
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, tls: Option<Arc<Tls>>) {
    let mut backoff = AcceptBackoff::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shared.shutdown.cancelled() => return,
        };
        match accepted {
            Ok((tcp, peer)) => {
                backoff.reset();
                let Some(registered) = shared.http_connections.register(peer.ip()) else {
                    // Dropping the stream closes it: this address holds its share.
                    tracing::info!(%peer, "too many connections from this address; closed");
                    continue;
                };
                // WebSocket messages are small and interactive: no Nagle delay.
                let _ = tcp.set_nodelay(true);
                let shared_for_connection = Arc::clone(&shared);
                match &tls {
                    None => shared.tracker.spawn(connection::serve(
                        tcp,
                        peer,
                        shared_for_connection,
                        registered,
                        None,
                    )),
                    Some(tls) => shared.tracker.spawn(serve_tls(
                        tcp,
                        peer,
                        shared_for_connection,
                        registered,
                        Arc::clone(tls),
                    )),
                };
            }
            Err(error) => {
                // EMFILE, ENFILE, ENOBUFS...: the connection waits in the backlog.
                // Out of descriptors, idle connections that have not upgraded
                // make room, so upgraded clients and new ones still get in.
                let n_shed = if lifecycle::is_transient_accept_error(&error) {
                    shared.http_connections.shed_idle(SHED_BATCH)
                } else {
                    0
                };
                tracing::warn!(%error, n_shed, "accept failed");
                backoff.wait().await;
            }
        }
    }
}

/// The TLS handshake of one connection, then HTTP over it. The handshake
/// ends early when the gateway sheds the connection or shuts down.
async fn serve_tls(
    tcp: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    registered: HttpConnection,
    tls: Arc<Tls>,
) {
    let handshake = tokio::select! {
        handshake = tls.handshake(tcp) => handshake,
        () = registered.shed_token().cancelled() => return,
        () = shared.shutdown.cancelled() => return,
    };
    shared.metrics.tls_handshake(&handshake);
    match handshake {
        Ok((stream, info)) => connection::serve(stream, peer, shared, registered, Some(info)).await,
        Err(error) => tracing::info!(
            %peer,
            error = &error as &dyn std::error::Error,
            "TLS handshake failed"
        ),
    }
}

/// Binds every address of `config.listen` and `config.tls_listen`, in
/// order, and `config.metrics_listen`, and catches SIGHUP from now on.
pub async fn bind_all(config: &Config) -> io::Result<Listeners> {
    let metrics = match config.metrics_listen {
        Some(addr) => Some(lifecycle::metrics_endpoint::bind(addr).await?),
        None => None,
    };
    Ok(Listeners {
        plain: bind(&config.listen).await?,
        tls: bind(&config.tls_listen).await?,
        metrics,
        hangups: signal(SignalKind::hangup())?,
    })
}

async fn bind(addrs: &[SocketAddr]) -> io::Result<Vec<TcpListener>> {
    let mut listeners = Vec::with_capacity(addrs.len());
    for addr in addrs {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|error| io::Error::new(error.kind(), format!("binding {addr}: {error}")))?;
        listeners.push(listener);
    }
    Ok(listeners)
}
