//! The accept loop every backend shares: [`Listener`] takes links from the
//! socket file, [`serve`] reads each OPEN, enforces the client limit and runs
//! the server's handler for each session until shutdown.
//!
//! Every wait on the gateway has a deadline: OPEN within `open_timeout`;
//! ACCEPT written and (direct mode) HANDOFF received within
//! `handoff_timeout`, as are the CLOSEs of a framed link kept for reuse. Links that have not become sessions yet are bounded by
//! `max_pending_links`: past it the loop stops accepting, so further links
//! wait in the kernel's backlog and hold no descriptor of this process.
//!
//! Links are reused: ACCEPT offers the gateway the link for another
//! client (`reuse_ms`, the open timeout) while at least half the pending-link
//! slots are free. In direct mode, after the HANDOFF the session runs
//! in a task of its own and the link's task, still holding its pending-link
//! slot, waits for the next OPEN as long as a new link would; an idle link
//! is closed at shutdown. In framed mode (`reuse_framed`, not for a carried
//! client) the session runs in the link's task, holding no pending-link
//! slot; when it is dropped its link comes back, the CLOSEs are completed
//! (`EndedLink::finish`) and the link, with a pending-link slot again if at
//! least half are free, waits for the next OPEN the same way.
//!
//! A link whose first record is a REQUEST (a plain HTTP request, `wsgate
//! --http`) goes to [`ServeOptions::request_handler`] instead, within
//! `request_timeout`; it holds its pending-link slot, not a client slot.
//!
//! With [`ServeOptions::fanout`], a link whose OPEN says `"mode":
//! "carrier"` is a gateway's carrier link (`crate::carrier`): it is
//! registered and run in its own task, holding neither a pending-link nor a
//! client slot (at most `carrier::MAX_CARRIERS` of them), and a framed
//! client whose OPEN names it is carried. Without it, a carrier OPEN gets
//! REJECT `501`.
//!
//! What a session does with its messages is the handler's business.

use std::fmt;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use link::LinkListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, field, info, info_span, warn};

use lifecycle::{AcceptBackoff, is_transient_accept_error};
use link::{AcceptReply, CarrierTerms, DEFAULT_MAX_PAYLOAD, LinkMode, OpenMeta, RejectReply};

use crate::carrier::{self, CarrierRegistry};
use crate::direct::DirectOptions;
use crate::metrics::{Metrics, Refused};
use crate::request::{self, RequestHandler};
use crate::session::{
    Connection, EndedLink, HandedOver, LinkStart, NextLink, Session, SessionError,
};
use crate::socket_file::SocketFile;

/// A backend's listening socket, in tokio.
#[derive(Debug)]
pub struct Listener {
    inner: LinkListener,
    max_payload: usize,
    direct_options: DirectOptions,
    /// Given to every session; [`serve`] sets it to its options' metrics.
    metrics: Metrics,
}

impl Listener {
    /// Takes the socket of `socket_file` into the current tokio runtime. The
    /// file itself stays with `socket_file`, which removes it when dropped.
    pub fn new(socket_file: &mut SocketFile) -> io::Result<Listener> {
        let std_listener = socket_file
            .take_listener()
            .ok_or_else(|| io::Error::other("the socket file's listener was taken already"))?;
        Ok(Listener {
            inner: LinkListener::from_std(std_listener)?,
            max_payload: DEFAULT_MAX_PAYLOAD,
            direct_options: DirectOptions::default(),
            metrics: Metrics::new(),
        })
    }

    /// Sets the largest message this backend accepts from the gateway.
    pub fn with_max_payload(mut self, max_payload: usize) -> Listener {
        self.max_payload = max_payload;
        self.direct_options.max_message_size = max_payload;
        self
    }

    /// Sets the keepalive of clients handed over in direct mode (the gateway
    /// keeps relayed clients alive itself).
    pub fn with_direct_options(mut self, direct_options: DirectOptions) -> Listener {
        self.direct_options = direct_options;
        self
    }

    /// Waits for the next link from the gateway. Running out of descriptors
    /// is waited out rather than returned, so a burst of clients cannot stop the server.
    pub async fn accept(&self) -> io::Result<Connection> {
        let mut backoff = AcceptBackoff::new();
        loop {
            match self.inner.accept().await {
                Ok(stream) => {
                    return Ok(Connection::new(
                        stream,
                        self.max_payload,
                        self.direct_options,
                        self.metrics.clone(),
                    ));
                }
                Err(error) if is_transient_accept_error(&error) => {
                    warn!(%error, "accept failed; retrying");
                    backoff.wait().await;
                }
                Err(error) => return Err(error),
            }
        }
    }
}

/// Default of [`ServeOptions::open_timeout`]: the gateway sends OPEN as soon
/// as it has connected, so a link silent this long is not the gateway's.
pub const DEFAULT_OPEN_TIMEOUT: Duration = Duration::from_secs(3);

/// Default of [`ServeOptions::handoff_timeout`]: the gateway sends HANDOFF
/// right after writing its `101`.
pub const DEFAULT_HANDOFF_TIMEOUT: Duration = Duration::from_secs(5);

/// Default of [`ServeOptions::request_timeout`]: the gateway's default accept timeout.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Default of [`ServeOptions::max_pending_links`].
pub const DEFAULT_MAX_PENDING_LINKS: usize = 64;

/// How [`serve`] treats clients.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Clients served at once; the next one is accepted and closed with 1013.
    pub max_clients: usize,
    /// How long a new link may take to send OPEN; a link still silent then is closed.
    pub open_timeout: Duration,
    /// How long, after OPEN, the gateway may take to read ACCEPT and, in
    /// direct mode, to send HANDOFF (and to take a 1013 close when the
    /// server is full). Past it the link is closed and the slot freed.
    pub handoff_timeout: Duration,
    /// Links accepted but not yet sessions (waiting for OPEN or HANDOFF, or
    /// being closed with 1013) held at once; each holds one or two
    /// descriptors. Past it no link is accepted until one of them resolves.
    pub max_pending_links: usize,
    /// Subprotocols this server speaks, by preference: the first one the
    /// client offers is chosen in ACCEPT. Empty: choose none.
    pub subprotocols: Vec<String>,
    /// How long sessions get to finish after shutdown was asked for.
    pub shutdown_timeout: Duration,
    /// Answers plain HTTP requests (REQUEST records); `None` answers each `404`.
    pub request_handler: Option<RequestHandler>,
    /// How long the request handler may take; then the request gets `503`.
    pub request_timeout: Duration,
    /// Decides from OPEN, before ACCEPT, whether a client may connect at all;
    /// a refusal is the client's HTTP status. `None` admits everyone.
    pub admission: Option<Admission>,
    /// The largest message a client may send this server, when it is smaller
    /// than the gateway's `--max-message-size`: sent in ACCEPT, so a client
    /// that sends more is closed with `1009` before the message is read
    /// whole. `None` takes the gateway's.
    pub max_message_size: Option<usize>,
    /// This backend's metrics: what [`serve`] and every session count, and
    /// where the server registers its own counters. Served by `launch` on
    /// `--metrics-listen`.
    pub metrics: Metrics,
    /// Fan-out: take gateways' carrier links and carry their framed clients
    /// on them under these terms (ACCEPT's `carrier`), so that a message the
    /// server sends to many clients of one gateway crosses the link once
    /// ([`crate::Carrier`]). `None` (the default): carrier links get REJECT
    /// `501` and every client has its own link.
    pub fanout: Option<CarrierTerms>,
}

type AdmissionCheck = dyn Fn(&OpenMeta) -> Result<(), RejectReply> + Send + Sync;

/// A server's check of a new client's OPEN before it is accepted: `Err`
/// answers the client's handshake with the reply's status and reason
/// instead of a `101` (e.g. `403` for a missing credential), so a client
/// the server would refuse never gets a WebSocket just to be closed.
#[derive(Clone)]
pub struct Admission(Arc<AdmissionCheck>);

impl Admission {
    /// Wraps `check`, which must be quick: it runs in the accept path.
    pub fn new(
        check: impl Fn(&OpenMeta) -> Result<(), RejectReply> + Send + Sync + 'static,
    ) -> Admission {
        Admission(Arc::new(check))
    }
}

impl fmt::Debug for Admission {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("Admission")
    }
}

impl Default for ServeOptions {
    fn default() -> ServeOptions {
        ServeOptions {
            max_clients: 50,
            open_timeout: DEFAULT_OPEN_TIMEOUT,
            handoff_timeout: DEFAULT_HANDOFF_TIMEOUT,
            max_pending_links: DEFAULT_MAX_PENDING_LINKS,
            subprotocols: Vec::new(),
            shutdown_timeout: Duration::from_secs(5),
            request_handler: None,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            admission: None,
            max_message_size: None,
            metrics: Metrics::new(),
            fanout: None,
        }
    }
}

/// Serves clients until `shutdown` is cancelled, running `handler` once per
/// session. The handler gets a token cancelled at shutdown, and should then
/// close its session with 1001.
///
/// Returns when every handler has finished or `shutdown_timeout` has passed.
pub async fn serve<H, F>(
    mut listener: Listener,
    options: ServeOptions,
    shutdown: CancellationToken,
    handler: H,
) -> io::Result<()>
where
    H: Fn(Session, CancellationToken) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    listener.metrics = options.metrics.clone();
    let carriers = options.fanout.map(|terms| {
        Arc::new(CarrierRegistry::new(
            terms,
            listener.max_payload,
            options.metrics.clone(),
        ))
    });
    let tracker = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(options.max_clients));
    let pending_links = Arc::new(Semaphore::new(options.max_pending_links.max(1)));
    let options = Arc::new(options);
    let result = loop {
        let pending_permit = tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            permit = pending_links.clone().acquire_owned() => {
                permit.expect("the pending-links semaphore is never closed")
            }
        };
        let connection = tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(connection) => connection,
                Err(error) => break Err(error),
            },
        };
        let link = PendingLink {
            connection,
            pending_permit,
            options: options.clone(),
            carriers: carriers.clone(),
            slots: slots.clone(),
            pending_links: pending_links.clone(),
            shutdown: shutdown.child_token(),
            tracker: tracker.clone(),
        };
        tracker.spawn(run_link(link, handler.clone()));
    };
    info!(
        n_sessions = tracker.len(),
        "stopped accepting; waiting for sessions"
    );
    tracker.close();
    if tokio::time::timeout(options.shutdown_timeout, tracker.wait())
        .await
        .is_err()
    {
        warn!(
            n_sessions = tracker.len(),
            "sessions still running at the shutdown deadline"
        );
    }
    result
}

/// A link that has not become a session yet, with its pending-link slot
/// and what its sessions need.
struct PendingLink {
    connection: Connection,
    pending_permit: OwnedSemaphorePermit,
    options: Arc<ServeOptions>,
    /// With fan-out: the carrier links open.
    carriers: Option<Arc<CarrierRegistry>>,
    slots: Arc<Semaphore>,
    /// Every pending-link slot: idle reused links may hold at most half of them.
    pending_links: Arc<Semaphore>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

/// Serves the clients of one link: usually one, then the link ends. A
/// direct-mode link that comes back after its HANDOFF (offered for reuse in
/// ACCEPT) waits here for the next OPEN, while the session it carried runs
/// in a task of its own; the link keeps its pending-link slot meanwhile.
async fn run_link<H, F>(link: PendingLink, handler: H)
where
    H: Fn(Session, CancellationToken) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let PendingLink {
        mut connection,
        mut pending_permit,
        options,
        carriers,
        slots,
        pending_links,
        shutdown,
        tracker,
    } = link;
    let mut reused = false;
    loop {
        let span = info_span!("session", id = field::Empty, peer = field::Empty);
        let opened = open_client(
            connection,
            reused,
            &options,
            carriers.as_ref(),
            &slots,
            &pending_links,
            &shutdown,
        )
        .instrument(span.clone())
        .await;
        let client = match opened {
            None => return,
            Some(Opened::Client(client)) => *client,
            Some(Opened::Carrier(carrier, stream)) => {
                // A carrier holds no pending-link or client slot.
                drop(pending_permit);
                let registry = carriers.expect("a carrier is opened only with fan-out on");
                return carrier::run_carrier(carrier, stream, registry, shutdown)
                    .instrument(span)
                    .await;
            }
        };
        let AcceptedClient {
            session,
            permit,
            mode,
            next_link,
        } = client;
        let serve_session = {
            let (options, shutdown, handler) = (options.clone(), shutdown.clone(), handler.clone());
            async move { run_session(session, permit, mode, &options, shutdown, handler).await }
        }
        .instrument(span.clone());
        connection = match next_link {
            NextLink::None => {
                drop(pending_permit);
                return serve_session.await;
            }
            NextLink::Now(next) => {
                // Boxed: the task's own future is then a pointer, which
                // spawning and finishing the task copy several times over.
                tracker.spawn(Box::pin(serve_session));
                next
            }
            NextLink::AfterClose(ended) => {
                // The session holds a client slot, not a pending-link slot;
                // the link takes one again when it comes back.
                drop(pending_permit);
                serve_session.await;
                let Some(next) = take_back(ended, &options, &shutdown).instrument(span).await
                else {
                    return;
                };
                // As when it was offered.
                if !room_for_idle_link(&pending_links, &options) {
                    debug!("pending-link slots short; link closed");
                    return;
                }
                let Ok(permit) = pending_links.clone().try_acquire_owned() else {
                    return;
                };
                pending_permit = permit;
                next
            }
        };
        reused = true;
    }
}

/// Whether a link may be kept idle for another client. Idle links hold
/// pending-link slots: only while at least half of them are free, so idle
/// links (several gateways may each keep some) never keep new links waiting
/// in the backlog.
fn room_for_idle_link(pending_links: &Semaphore, options: &ServeOptions) -> bool {
    pending_links.available_permits() * 2 >= options.max_pending_links
}

/// The link of a framed session offered for reuse, once the session is
/// over: its CLOSEs completed within the handoff timeout, ready for the
/// next OPEN; `None` when it cannot be reused (logged) or at shutdown.
async fn take_back(
    ended: tokio::sync::oneshot::Receiver<EndedLink>,
    options: &ServeOptions,
    shutdown: &CancellationToken,
) -> Option<Connection> {
    // Sent when the session is dropped, which may be after its handler
    // returned (a server that split it may still hold a half).
    let ended = ended.await.ok()?;
    if shutdown.is_cancelled() {
        return None;
    }
    match tokio::time::timeout(options.handoff_timeout, ended.finish()).await {
        Ok(Ok(next)) => {
            debug!("link kept for the next client");
            Some(next)
        }
        Ok(Err(why)) => {
            debug!("link not reused: {why}");
            None
        }
        Err(_) => {
            debug!(
                "link not reused: the CLOSEs did not complete within {:?}",
                options.handoff_timeout
            );
            None
        }
    }
}

/// What a link's OPEN became.
enum Opened {
    /// A client.
    Client(Box<AcceptedClient>),
    /// A gateway's carrier link, accepted and registered.
    Carrier(carrier::Carrier, link::LinkStream),
}

/// A client accepted on a link, not yet counted against the client limit.
struct AcceptedClient {
    session: Session,
    /// Its client slot, or why there is none (the limit is reached).
    permit: Result<OwnedSemaphorePermit, tokio::sync::TryAcquireError>,
    mode: LinkMode,
    /// What becomes of the link: free for another client after the HANDOFF,
    /// or once the session is over, or nothing.
    next_link: NextLink,
}

/// Reads the link's first record and answers it: a REQUEST is answered
/// here, an OPEN refused by the server's admission check gets REJECT, any
/// other OPEN gets ACCEPT; with fan-out, a carrier OPEN is registered and
/// accepted. `None` when nothing came of it (logged).
async fn open_client(
    connection: Connection,
    reused: bool,
    options: &ServeOptions,
    carriers: Option<&Arc<CarrierRegistry>>,
    slots: &Arc<Semaphore>,
    pending_links: &Semaphore,
    shutdown: &CancellationToken,
) -> Option<Opened> {
    let opened = tokio::select! {
        opened = tokio::time::timeout(options.open_timeout, connection.open_or_request()) => opened,
        // An idle reused link holds nothing the gateway waits for: close it.
        () = shutdown.cancelled(), if reused => {
            debug!("shutdown: idle link closed");
            return None;
        }
    };
    let incoming = match opened {
        // The gateway keeps an idle link for half this time; a reused link
        // that runs out is one the gateway no longer needed.
        Err(_) if reused => {
            debug!("idle link not used; closed");
            return None;
        }
        Err(_) => {
            warn!(
                "no OPEN within {:?}; dropping the link",
                options.open_timeout
            );
            return None;
        }
        Ok(Err(SessionError::ClosedBeforeOpen)) => {
            debug!("link closed before OPEN");
            return None;
        }
        Ok(Err(error)) => {
            warn!(%error, "cannot open session");
            return None;
        }
        Ok(Ok(LinkStart::Client(incoming))) => incoming,
        Ok(Ok(LinkStart::HandedOver(handed))) => {
            return take_handed_over(*handed, options, slots);
        }
        Ok(Ok(LinkStart::Carrier(incoming))) => {
            tracing::Span::current().record("id", incoming.meta().id);
            return open_carrier(incoming, options, carriers).await;
        }
        Ok(Ok(LinkStart::Request(pending))) => {
            tracing::Span::current().record("id", pending.request.id);
            tracing::Span::current().record("peer", pending.request.peer.as_str());
            request::answer(
                pending,
                options.request_handler.as_ref(),
                options.request_timeout,
                options.handoff_timeout,
                shutdown,
            )
            .await;
            return None;
        }
    };
    let mode = incoming.meta().mode;
    let span = tracing::Span::current();
    span.record("id", incoming.meta().id);
    span.record("peer", incoming.meta().peer.as_str());
    if reused {
        debug!("OPEN on a reused link");
    }
    if let Some(Err(refusal)) = options
        .admission
        .as_ref()
        .map(|check| (check.0)(incoming.meta()))
    {
        info!(status = refusal.status, reason = %refusal.reason, "client refused before ACCEPT");
        options.metrics.link_refused(Refused::Admission);
        let rejected =
            tokio::time::timeout(options.handoff_timeout, incoming.reject(refusal)).await;
        if let Ok(Err(error)) = rejected {
            debug!(%error, "cannot send REJECT");
        }
        return None;
    }
    let protocol = options
        .subprotocols
        .iter()
        .find(|ours| incoming.meta().protocols.contains(ours))
        .cloned();
    let offer_reuse = room_for_idle_link(pending_links, options);
    let mut reply = AcceptReply {
        protocol,
        max_message_size: options.max_message_size,
        // The gateway may send the next client's OPEN on this link, within
        // the open timeout: after the HANDOFF (direct mode), or after the
        // client's CLOSEs (framed mode, with `reuse_framed`).
        reuse_ms: offer_reuse
            .then(|| u64::try_from(options.open_timeout.as_millis()).unwrap_or(u64::MAX)),
        // ... or hand the next clients over without asking, when nothing
        // here would refuse one before its `101`.
        open_handoff: offer_reuse && options.admission.is_none(),
        // Framed mode: the link comes back after the client's CLOSEs
        // (dropped again below for a carried client).
        reuse_framed: offer_reuse,
        ..AcceptReply::default()
    };
    let permit = slots.clone().try_acquire_owned();
    // Fan-out: a framed client with a slot goes on the carrier its OPEN
    // names if that is open here; otherwise the gateway hears that we would
    // like one (while there is room for it).
    let mut carried = None;
    if let Some(registry) = carriers
        && mode == LinkMode::Framed
        && permit.is_ok()
    {
        carried = incoming
            .meta()
            .carrier
            .and_then(|key| registry.attach(key, incoming.meta().id));
        if carried.is_some() {
            reply.carrier = Some(registry.terms());
        } else {
            reply.carrier_wanted = registry.has_room();
        }
    }
    let accepted = tokio::time::timeout(
        options.handoff_timeout,
        incoming.accept_keeping_link(reply, carried),
    )
    .await;
    match accepted {
        Err(_) => {
            warn!(
                ?mode,
                "gateway did not complete the session within {:?}; dropping the link",
                options.handoff_timeout
            );
            None
        }
        Ok(Err(error)) => {
            warn!(%error, "cannot accept session");
            None
        }
        Ok(Ok((session, next_link))) => Some(Opened::Client(Box::new(AcceptedClient {
            session,
            permit,
            mode,
            next_link,
        }))),
    }
}

/// Takes a client the gateway handed over with OPEN_HANDOFF, as if it had
/// answered an empty ACCEPT; the link stays open for the next client. Only
/// offered when the server has no admission check: a gateway that sends one
/// to a server with a check anyway is not obeyed (link and client closed).
fn take_handed_over(
    handed: HandedOver,
    options: &ServeOptions,
    slots: &Arc<Semaphore>,
) -> Option<Opened> {
    let span = tracing::Span::current();
    span.record("id", handed.meta().id);
    span.record("peer", handed.meta().peer.as_str());
    if options.admission.is_some() {
        warn!("OPEN_HANDOFF to a server that checks each client before ACCEPT; dropping it");
        return None;
    }
    debug!("OPEN_HANDOFF on a reused link");
    match handed.into_session(options.max_message_size) {
        Ok((session, next_link)) => Some(Opened::Client(Box::new(AcceptedClient {
            session,
            permit: slots.clone().try_acquire_owned(),
            mode: LinkMode::Direct,
            next_link: NextLink::Now(next_link),
        }))),
        Err(error) => {
            warn!(%error, "cannot take the handed-over client");
            None
        }
    }
}

/// Answers a carrier OPEN: REJECT `501` without fan-out, `503` when
/// `carrier::MAX_CARRIERS` are open, `409` for a key in use; otherwise
/// the carrier is registered and gets ACCEPT.
async fn open_carrier(
    incoming: crate::session::Incoming,
    options: &ServeOptions,
    carriers: Option<&Arc<CarrierRegistry>>,
) -> Option<Opened> {
    let Some(registry) = carriers else {
        let error = incoming.reject_unsupported_mode().await;
        warn!(%error, "carrier link refused");
        return None;
    };
    let key = incoming.meta().id;
    // The gateway's largest FANOUT message, when its OPEN says (`limits`).
    let gateway_max = incoming.meta().limits.map(|limits| limits.max_message_size);
    let carrier = match registry.open(key, gateway_max) {
        Ok(carrier) => carrier,
        Err(refusal) => {
            warn!(
                status = refusal.status(),
                reason = refusal.reason(),
                "carrier link refused"
            );
            let reply = RejectReply {
                status: refusal.status(),
                reason: refusal.reason().to_owned(),
            };
            let rejected =
                tokio::time::timeout(options.handoff_timeout, incoming.reject(reply)).await;
            if let Ok(Err(error)) = rejected {
                debug!(%error, "cannot send REJECT");
            }
            return None;
        }
    };
    match tokio::time::timeout(options.handoff_timeout, incoming.accept_carrier()).await {
        Ok(Ok(stream)) => Some(Opened::Carrier(carrier, stream)),
        Ok(Err(error)) => {
            warn!(%error, "cannot accept carrier link");
            registry.forget(&carrier);
            None
        }
        Err(_) => {
            warn!(
                "gateway did not take the carrier's ACCEPT within {:?}",
                options.handoff_timeout
            );
            registry.forget(&carrier);
            None
        }
    }
}

/// Runs `handler` on `session` if it has a client slot; otherwise closes it with 1013.
async fn run_session<H, F>(
    mut session: Session,
    permit: Result<OwnedSemaphorePermit, tokio::sync::TryAcquireError>,
    mode: LinkMode,
    options: &ServeOptions,
    shutdown: CancellationToken,
    handler: H,
) where
    H: Fn(Session, CancellationToken) -> F,
    F: Future<Output = ()>,
{
    let Ok(permit) = permit else {
        warn!(
            max_clients = options.max_clients,
            "client limit reached; closing with 1013"
        );
        options.metrics.link_refused(Refused::ClientLimit);
        let close = session.close(CloseCode::Again, "too many clients, try again later");
        match tokio::time::timeout(options.handoff_timeout, close).await {
            Err(_) => debug!("close not taken in time"),
            Ok(Err(error)) => debug!(%error, "cannot send close"),
            Ok(Ok(())) => {}
        }
        return;
    };
    info!(name = %session.meta().name, "session opened");
    let _open = options.metrics.session_opened(mode);
    handler(session, shutdown).await;
    // The slot is free before the line that says so: a test (or an operator)
    // that waits for the line can count on the slot.
    drop(permit);
    info!("session ended");
}
