//! Idle links, kept per backend socket for the next client, counted in
//! `wsgate_backend_links_idle`.
//!
//! A backend that answers ACCEPT with `reuse_ms` keeps reading its link after
//! the HANDOFF (direct mode) or after the client's CLOSEs (framed mode, with
//! `reuse_framed`), for the next client's OPEN, for that long. `handoff` puts
//! such a link here once the client's socket went over it, the framed relay
//! once the CLOSEs crossed; `backend::open_framed` takes the newest one
//! instead of connecting again, for a client of either mode, which saves
//! both sides a connect, an accept and a socket per client
//! (docs/link-protocol.md, *Link reuse*, *Link reuse in framed mode*). A backend that also offered `open_handoff` may get the next
//! direct client's OPEN and socket at once on such a link, without being
//! asked ([`LinkPool::take_for_handoff`]). A link is kept for at most half
//! the backend's wait (so it is never the backend that closes a link the gateway is about to use) and at
//! most [`MAX_IDLE`]; at most [`MAX_IDLE_LINKS_PER_BACKEND`] per socket,
//! [`MAX_POOLED_BACKENDS`] sockets and [`MAX_IDLE_LINKS`] in all. A dead backend's links read as ended
//! and are dropped when taken; [`sweep`] closes expired ones every second,
//! and everything is closed when the gateway drains or stops.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use link::AcceptReply;
use link::LinkStream;
use nix::errno::Errno;
use nix::sys::socket::{MsgFlags, recv};
use prometheus_client::metrics::gauge::Gauge;
use tokio_util::sync::CancellationToken;

use crate::route::BySocket;

/// Idle links kept per backend socket; more are closed when handed back.
pub(crate) const MAX_IDLE_LINKS_PER_BACKEND: usize = 16;

/// Backend sockets with idle links at once; a link to another one is closed.
pub(crate) const MAX_POOLED_BACKENDS: usize = 256;

/// Idle links kept in all, whatever the sockets: each holds a descriptor
/// that `--max-connections` does not count.
pub(crate) const MAX_IDLE_LINKS: usize = 1024;

/// The longest a link stays idle here, whatever the backend offers.
pub(crate) const MAX_IDLE: Duration = Duration::from_secs(10);

/// How often [`sweep`] closes expired links.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Idle links by socket path (newest last).
#[derive(Debug)]
pub(crate) struct LinkPool {
    state: Mutex<PoolState>,
    /// How many links are idle here now (`wsgate_backend_links_idle`).
    n_idle: Gauge,
    /// The most links kept in all ([`MAX_IDLE_LINKS`]).
    max_idle: usize,
}

impl Default for LinkPool {
    fn default() -> LinkPool {
        LinkPool::with_gauge(Gauge::default())
    }
}

#[derive(Debug, Default)]
struct PoolState {
    idle: BySocket<Vec<IdleLink>>,
    /// Links in `idle`, all sockets together.
    n_idle: usize,
    /// Set at drain and shutdown: links handed back are closed.
    closed: bool,
}

#[derive(Debug)]
struct IdleLink {
    stream: LinkStream,
    expires: Instant,
    offer: ReuseOffer,
}

/// What a backend's ACCEPT offered for its link after the hand-over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReuseOffer {
    /// The backend's wait for the next record (`reuse_ms`).
    pub(crate) backend_wait: Duration,
    /// The next record may be an OPEN_HANDOFF (`open_handoff`).
    pub(crate) open_handoff: bool,
}

impl ReuseOffer {
    /// The offer of `reply`, if it offered its link for reuse.
    pub(crate) fn from_reply(reply: &AcceptReply) -> Option<ReuseOffer> {
        reply.reuse_ms.map(|reuse_ms| ReuseOffer {
            backend_wait: Duration::from_millis(reuse_ms),
            open_handoff: reply.open_handoff,
        })
    }
}

/// Where a link the backend offered for reuse goes once its client is done
/// with it: after the HANDOFF (direct mode), or after both CLOSEs (framed
/// mode, `reuse_framed`).
pub(crate) struct LinkReuse<'a> {
    pub(crate) pool: &'a LinkPool,
    pub(crate) socket_path: &'a Path,
    /// What the backend offered (ACCEPT's `reuse_ms` and `open_handoff`).
    pub(crate) offer: ReuseOffer,
}

impl LinkReuse<'_> {
    /// Puts `stream` back in the pool for the next client.
    pub(crate) fn keep(self, stream: LinkStream) {
        self.pool.put(self.socket_path, stream, self.offer);
    }
}

/// An idle link taken for an OPEN_HANDOFF, with what its backend offered.
#[derive(Debug)]
pub(crate) struct HandoffLink {
    pub(crate) stream: LinkStream,
    pub(crate) offer: ReuseOffer,
}

impl LinkPool {
    /// An empty pool that keeps `n_idle` at its count of idle links.
    pub(crate) fn with_gauge(n_idle: Gauge) -> LinkPool {
        LinkPool {
            state: Mutex::default(),
            n_idle,
            max_idle: MAX_IDLE_LINKS,
        }
    }

    /// The newest idle link to `socket_path` that is still open, if any.
    /// Expired links and links the backend closed are closed on the way.
    pub(crate) fn take(&self, socket_path: &Path) -> Option<LinkStream> {
        self.take_where(socket_path, false).map(|link| link.stream)
    }

    /// The newest idle link to `socket_path` that is still open and whose
    /// backend offered `open_handoff`, if any; older links are kept.
    pub(crate) fn take_for_handoff(&self, socket_path: &Path) -> Option<HandoffLink> {
        self.take_where(socket_path, true).map(|link| HandoffLink {
            stream: link.stream,
            offer: link.offer,
        })
    }

    /// The newest usable link (with `open_handoff` if `handoff`); expired
    /// and closed links met on the way are closed.
    fn take_where(&self, socket_path: &Path, handoff: bool) -> Option<IdleLink> {
        let now = Instant::now();
        let mut state = self.lock();
        let links = state.idle.get_mut(socket_path.as_os_str())?;
        let mut found = None;
        let mut removed = 0;
        let mut index = links.len();
        while index > 0 {
            index -= 1;
            let link = &links[index];
            if link.expires <= now || !is_open(&link.stream) {
                links.remove(index);
                removed += 1;
            } else if link.offer.open_handoff || !handoff {
                found = Some(links.remove(index));
                removed += 1;
                break;
            }
        }
        if links.is_empty() {
            state.idle.remove(socket_path.as_os_str());
        }
        state.n_idle -= removed;
        self.show(&state);
        found
    }

    /// Sets the gauge to the count in `state`, under its lock.
    fn show(&self, state: &PoolState) {
        self.n_idle
            .set(i64::try_from(state.n_idle).unwrap_or(i64::MAX));
    }

    /// Keeps `stream`, a link to `socket_path` whose backend waits for the
    /// next OPEN (or OPEN_HANDOFF) as `offer` says, unless the pool is full
    /// or closed.
    pub(crate) fn put(&self, socket_path: &Path, stream: LinkStream, offer: ReuseOffer) {
        let expires = Instant::now() + (offer.backend_wait / 2).min(MAX_IDLE);
        let mut state = self.lock();
        if state.closed || state.n_idle >= self.max_idle {
            return;
        }
        let n_backends = state.idle.len();
        let links = match state.idle.get_mut(socket_path.as_os_str()) {
            Some(links) => links,
            None if n_backends < MAX_POOLED_BACKENDS => state
                .idle
                .entry(socket_path.as_os_str().to_owned())
                .or_default(),
            // Dropping the stream closes it.
            None => return,
        };
        if links.len() < MAX_IDLE_LINKS_PER_BACKEND {
            links.push(IdleLink {
                stream,
                expires,
                offer,
            });
            state.n_idle += 1;
            self.show(&state);
        }
    }

    /// Closes the expired links; returns how many links are left.
    pub(crate) fn close_expired(&self) -> usize {
        let now = Instant::now();
        let mut state = self.lock();
        state.idle.retain(|_, links| {
            links.retain(|link| link.expires > now);
            !links.is_empty()
        });
        state.n_idle = state.idle.values().map(Vec::len).sum();
        self.show(&state);
        state.n_idle
    }

    /// Closes every idle link and every link handed back from now on.
    pub(crate) fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.idle.clear();
        state.n_idle = 0;
        self.show(&state);
    }

    /// Idle links held now; the gauge must say the same.
    #[cfg(test)]
    fn len(&self) -> usize {
        let n_idle: usize = self.lock().idle.values().map(Vec::len).sum();
        assert_eq!(
            self.n_idle.get(),
            i64::try_from(n_idle).expect("small"),
            "the gauge follows the pool"
        );
        n_idle
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        // A panic elsewhere cannot leave the map inconsistent: every update is one call.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Whether the backend still holds `stream` open and has sent nothing on it
/// (a backend sends nothing on an idle link). Asks the kernel, with a
/// peek that never blocks: the reactor may not have seen the end yet.
fn is_open(stream: &LinkStream) -> bool {
    let mut byte = [0u8; 1];
    let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
    matches!(
        recv(stream.as_raw_fd(), &mut byte, flags),
        Err(Errno::EAGAIN)
    )
}

/// Closes expired links every second until `draining`, then closes them all.
pub(crate) async fn sweep(pool: std::sync::Arc<LinkPool>, draining: CancellationToken) {
    let mut ticks = tokio::time::interval(SWEEP_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = draining.cancelled() => break,
            _ = ticks.tick() => {
                pool.close_expired();
            }
        }
    }
    pool.close();
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    const WAIT: Duration = Duration::from_secs(3);

    /// A backend's offer to wait `WAIT`, with or without OPEN_HANDOFF.
    fn offer(open_handoff: bool) -> ReuseOffer {
        ReuseOffer {
            backend_wait: WAIT,
            open_handoff,
        }
    }

    #[tokio::test]
    async fn takes_the_newest_open_link_and_skips_closed_ones() {
        let pool = LinkPool::default();
        let path = Path::new("/run/ws/echo");
        let (first, _first_peer) = LinkStream::pair().expect("pair");
        let (second, second_peer) = LinkStream::pair().expect("pair");
        pool.put(path, first, offer(false));
        pool.put(path, second, offer(false));
        drop(second_peer);
        // The newest is closed at the backend's end: the older one comes out.
        assert!(pool.take(path).is_some());
        assert!(pool.take(path).is_none());
        assert_eq!(pool.len(), 0);
    }

    #[tokio::test]
    async fn an_open_handoff_takes_only_a_link_that_offered_it() {
        let pool = LinkPool::default();
        let path = Path::new("/run/ws/echo");
        let (offered, _offered_peer) = LinkStream::pair().expect("pair");
        let (plain, _plain_peer) = LinkStream::pair().expect("pair");
        pool.put(path, offered, offer(true));
        pool.put(path, plain, offer(false));
        let taken = pool.take_for_handoff(path).expect("the offering link");
        assert_eq!(taken.offer, offer(true));
        assert!(
            pool.take_for_handoff(path).is_none(),
            "the plain one is not"
        );
        assert_eq!(pool.len(), 1, "and stays for an OPEN");
        assert!(pool.take(path).is_some());
    }

    #[tokio::test]
    async fn a_link_the_backend_wrote_on_is_not_taken() {
        let pool = LinkPool::default();
        let path = Path::new("/run/ws/echo");
        let (link, mut peer) = LinkStream::pair().expect("pair");
        pool.put(path, link, offer(false));
        assert_eq!(pool.len(), 1);
        peer.write_all(b"x").await.expect("write");
        assert!(pool.take(path).is_none());
        assert_eq!(pool.len(), 0);
    }

    #[tokio::test]
    async fn links_expire_at_half_the_backends_wait() {
        let pool = LinkPool::default();
        let path = Path::new("/run/ws/echo");
        let (link, _peer) = LinkStream::pair().expect("pair");
        let no_wait = ReuseOffer {
            backend_wait: Duration::ZERO,
            open_handoff: false,
        };
        pool.put(path, link, no_wait);
        assert_eq!(pool.close_expired(), 0);
        assert_eq!(pool.len(), 0);
        let (link, _peer) = LinkStream::pair().expect("pair");
        pool.put(path, link, offer(false));
        assert_eq!(pool.close_expired(), 1);
        assert_eq!(pool.len(), 1);
    }

    #[tokio::test]
    async fn the_pool_keeps_at_most_its_total_whatever_the_sockets() {
        let pool = LinkPool {
            max_idle: 3,
            ..LinkPool::default()
        };
        let mut peers = Vec::new();
        for socket in ["/run/ws/a", "/run/ws/b", "/run/ws/a", "/run/ws/b"] {
            let (link, peer) = LinkStream::pair().expect("pair");
            peers.push(peer);
            pool.put(Path::new(socket), link, offer(false));
        }
        assert_eq!(pool.len(), 3, "the fourth link was closed");
        assert!(pool.take(Path::new("/run/ws/b")).is_some());
        let (link, _peer) = LinkStream::pair().expect("pair");
        pool.put(Path::new("/run/ws/c"), link, offer(false));
        assert_eq!(pool.len(), 3, "room again after a take");
    }

    #[tokio::test]
    async fn the_pool_is_bounded_and_closes_at_drain() {
        let pool = LinkPool::default();
        let mut peers = Vec::new();
        for link_idx in 0..MAX_IDLE_LINKS_PER_BACKEND + 3 {
            let (link, peer) = LinkStream::pair().expect("pair");
            peers.push(peer);
            pool.put(Path::new("/run/ws/echo"), link, offer(false));
            let other = std::path::PathBuf::from(format!("/run/ws/n{link_idx}"));
            let (link, peer) = LinkStream::pair().expect("pair");
            peers.push(peer);
            pool.put(&other, link, offer(false));
        }
        assert_eq!(pool.len(), 2 * MAX_IDLE_LINKS_PER_BACKEND + 3);
        pool.close();
        assert_eq!(pool.len(), 0);
        let (link, _peer) = LinkStream::pair().expect("pair");
        pool.put(Path::new("/run/ws/echo"), link, offer(false));
        assert_eq!(pool.len(), 0);
    }
}
