//! The accept loops, the state every connection shares, the connection limit,
//! and graceful shutdown: [`serve`].
//!
//! Shutdown: the token stops the accept loops, tells hyper to finish each
//! plain HTTP connection, and makes every relay close its client with `1001`
//! and its link with CLOSE. [`serve`] returns once all of them are done, or
//! after the shutdown timeout at the latest.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use lifecycle::AcceptBackoff;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::connection;
use crate::http_connections::HttpConnections;
use crate::relay::RelaySettings;
use crate::static_files::StaticFiles;

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
}

/// Serves HTTP and WebSocket on `listeners` until `shutdown` is cancelled,
/// then closes every client and returns.
pub async fn serve(
    listeners: Vec<TcpListener>,
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
        config,
    });
    for listener in listeners {
        let shared_for_loop = Arc::clone(&shared);
        shared.tracker.spawn(accept_loop(listener, shared_for_loop));
    }
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

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
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
                shared.tracker.spawn(connection::serve(
                    tcp,
                    peer,
                    shared_for_connection,
                    registered,
                ));
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

/// Binds every address of `listen`, in order.
pub async fn bind_all(listen: &[SocketAddr]) -> io::Result<Vec<TcpListener>> {
    let mut listeners = Vec::with_capacity(listen.len());
    for addr in listen {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|error| io::Error::new(error.kind(), format!("binding {addr}: {error}")))?;
        listeners.push(listener);
    }
    Ok(listeners)
}
