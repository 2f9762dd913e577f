//! One WebSocket upgrade request, from the handshake to the spawned relay.
//!
//! Order of events: validate the handshake, check the Origin, turn the path
//! into a name, check it against the allow/deny globs, find its socket, ask
//! the name's authorizer if it has one, take a connection slot, connect to
//! the backend and (framed mode) wait for ACCEPT, and only then answer `101`
//! and spawn the relay. Every failure on the way is
//! a [`Refusal`] with its own status. A direct client that asked for no
//! subprotocol, whose backend has an idle link that offered `open_handoff`,
//! gets its `101` without the backend being asked (OPEN_HANDOFF, `handoff`).
//!
//! A TLS client of a name served in direct mode is relayed instead: its TCP
//! socket carries TLS records that only the gateway can decrypt, and this
//! kernel offers no kTLS to hand the session over with (`docs/tls.md`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use link::deflate::MessageDeflater;
use link::websocket::ReadAhead;
use link::{ClientLimits, DeflateParams, LINK_VERSION, LinkMode, OpenMeta, TlsInfo};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tracing::Instrument;

use crate::authorizer::ConnectQuestion;
use crate::backend::{self, BackendFailure, LinkOrigin};
use crate::carrier::{OpenSettings, Seat};
use crate::client_stream::ClientStream;
use crate::deflate;
use crate::handoff::{self, OpenHandoff};
use crate::handshake::{self, UpgradeRequest};
use crate::link_pool::{HandoffLink, LinkReuse, ReuseOffer};
use crate::metrics::{ClientMetrics, ClientMode};
use crate::refusal::Refusal;
use crate::relay::{self, RelaySettings};
use crate::response::Body;
use crate::route::{self, RouteError, Target};
use crate::server::{ClientSlot, Shared};

/// The backend's side of an accepted client, ready to relay.
enum Link {
    /// Relayed; with its seat on the backend's carrier if its ACCEPT chose
    /// one, or else what the backend offered for the link after the client's
    /// CLOSEs (`reuse_framed`).
    Framed(backend::FramedLink, Option<Seat>, Option<ReuseOffer>),
    Raw(link::LinkStream),
    /// Accepted in direct mode: the client's socket goes over this link,
    /// which the backend keeps for another client if it offered to.
    Direct(backend::FramedLink, Option<ReuseOffer>),
    /// Direct mode without asking: OPEN and socket go in one OPEN_HANDOFF
    /// on this idle link, whose backend offered it.
    OpenHandoff(Box<OpenMeta>, HandoffLink),
}

impl Link {
    fn mode(&self) -> ClientMode {
        match self {
            Link::Framed(..) => ClientMode::Relay,
            Link::Raw(_) => ClientMode::Raw,
            Link::Direct(..) | Link::OpenHandoff(..) => ClientMode::Direct,
        }
    }
}

/// Answers an upgrade request that hyper read: `101` with the relay
/// spawned (it starts once hyper hands the connection over), or a refusal.
/// The stream hyper serves is `S` read ahead by `connection`.
pub(crate) async fn handle<S: ClientStream>(
    mut request: Request<Incoming>,
    peer: SocketAddr,
    shared: &Arc<Shared>,
    tls: Option<&TlsInfo>,
) -> Response<Body> {
    let on_upgrade = hyper::upgrade::on(&mut request);
    match decide(&request, peer, shared, tls).await {
        Ok((switching, switch)) => {
            switch.spawn::<S>(Arrival::FromHyper(on_upgrade));
            switching.response()
        }
        Err(refusal) => refusal,
    }
}

/// Decides an upgrade request: the `101` and what relays the client once
/// it is sent, or the refusal's response.
pub(crate) async fn decide<B>(
    request: &Request<B>,
    peer: SocketAddr,
    shared: &Arc<Shared>,
    tls: Option<&TlsInfo>,
) -> Result<(SwitchingProtocols, Switch), Response<Body>> {
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!("client", id, %peer, name = tracing::field::Empty);
    let accepted = accept(request, id, peer, shared, tls)
        .instrument(span.clone())
        .await;
    match accepted {
        Ok(Accepted {
            upgrade,
            target,
            link,
            protocol,
            extra_headers,
            max_message_size,
            deflate,
            permit,
        }) => {
            let switching = SwitchingProtocols {
                key: upgrade.key,
                protocol,
                extensions: deflate.as_ref().map(|agreement| agreement.response.clone()),
                extra_headers,
            };
            shared.metrics.upgrade(101);
            let metrics = shared
                .metrics
                .client(&target.name, link.mode(), tls.is_some());
            let switch = Switch {
                socket_path: target.socket_path,
                link,
                max_message_size,
                deflate: deflate.map(|agreement| agreement.params),
                shared: Arc::clone(shared),
                metrics,
                span,
                permit,
            };
            Ok((switching, switch))
        }
        Err(refusal) => {
            span.in_scope(|| refusal.log());
            shared.metrics.upgrade(refusal.status().as_u16());
            Err(refusal.to_response())
        }
    }
}

/// An accepted client between its `101` and its relay: everything the relay
/// needs but the client's stream.
pub(crate) struct Switch {
    socket_path: std::path::PathBuf,
    link: Link,
    max_message_size: usize,
    deflate: Option<DeflateParams>,
    shared: Arc<Shared>,
    metrics: ClientMetrics,
    /// The client's span; the framed relay enters it only to log (entering
    /// it on every poll would cost the data path).
    span: tracing::Span,
    /// The client's connection slot, held until its relay ends.
    permit: ClientSlot,
}

/// How an accepted client's stream reaches its relay.
pub(crate) enum Arrival<S> {
    /// Read without hyper: the `101`'s head is still to be written, within
    /// `timeout`; `pending` is what the client sent after its request head.
    Unanswered {
        stream: S,
        pending: Bytes,
        head: Vec<u8>,
        timeout: std::time::Duration,
    },
    /// Read by hyper, which writes the `101` and then hands the connection over.
    FromHyper(OnUpgrade),
}

// The client's relay is one async block around `relay_upgraded`, which
// takes the `Switch`'s parts, not the `Switch`: every copy of state between
// them is kept in every idle client's task.
impl Switch {
    /// Spawns the client's task: its stream as it `arrival`es, then its
    /// relay (a client hyper upgraded, whose connection task is hyper's).
    pub(crate) fn spawn<S: ClientStream>(self, arrival: Arrival<S>) {
        let tracker = self.shared.tracker.clone();
        tracker.spawn(self.run(arrival));
    }

    /// The client's stream as it `arrival`es, then its relay, in the
    /// caller's task: a connection upgraded without hyper goes on in its
    /// own task, which saves spawning another per client.
    // Not an `async fn`: its state would keep the whole `Switch` beside the
    // parts moved out of it (5,600 B per idle relayed client against
    // 5,216 B measured); the block captures only the fields it names.
    #[allow(clippy::manual_async_fn)]
    pub(crate) fn run<S: ClientStream>(
        self,
        arrival: Arrival<S>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        async move {
            let Some((stream, pending)) = arrive(arrival, &self.span).await else {
                return;
            };
            relay_upgraded(
                stream,
                pending,
                &self.socket_path,
                self.link,
                self.max_message_size,
                self.deflate,
                &self.shared,
                &self.metrics,
                &self.span,
            )
            .await;
            // Named, so that the block takes the slot along: a block
            // captures only the fields it uses.
            drop(self.permit);
        }
    }
}

/// The client's stream and what it sent past its handshake, once its `101`
/// is out; `None`, logged in the client's `span`, if the client left first.
async fn arrive<S: ClientStream>(arrival: Arrival<S>, span: &tracing::Span) -> Option<(S, Bytes)> {
    match arrival {
        Arrival::Unanswered {
            mut stream,
            pending,
            head,
            timeout,
        } => match tokio::time::timeout(timeout, write_head(&mut stream, head)).await {
            Ok(Ok(())) => Some((stream, pending)),
            Ok(Err(error)) => {
                span.in_scope(|| tracing::info!("client left during the upgrade: {error}"));
                None
            }
            Err(_) => {
                span.in_scope(|| tracing::info!("client took no 101 in {timeout:?}; closed"));
                None
            }
        },
        Arrival::FromHyper(on_upgrade) => {
            let upgraded = match on_upgrade.await {
                Ok(upgraded) => upgraded,
                Err(error) => {
                    span.in_scope(|| tracing::info!("client left during the upgrade: {error}"));
                    return None;
                }
            };
            let Ok(parts) = upgraded.downcast::<TokioIo<ReadAhead<S>>>() else {
                span.in_scope(|| {
                    tracing::error!("upgraded connection is not the accepted stream; closing")
                });
                return None;
            };
            // hyper's buffer holds what it read through the read-ahead,
            // which holds what came after.
            let (stream, read_ahead) = parts.io.into_inner().into_parts();
            let pending = if read_ahead.is_empty() {
                parts.read_buf
            } else {
                let mut pending = BytesMut::from(parts.read_buf);
                pending.extend_from_slice(&read_ahead);
                pending.freeze()
            };
            Some((stream, pending))
        }
    }
}

/// Writes `head` to `stream` and flushes it (a TLS stream buffers).
async fn write_head<S: ClientStream>(stream: &mut S, head: Vec<u8>) -> std::io::Result<()> {
    stream.write_all(&head).await?;
    stream.flush().await
}

/// The `101` of an accepted client, not yet written: a response for hyper
/// to send, or the bytes of its head for a connection read without hyper.
pub(crate) struct SwitchingProtocols {
    /// The client's `Sec-WebSocket-Key`.
    key: String,
    /// The subprotocol answered, if any.
    protocol: Option<String>,
    /// The agreed extensions (`deflate::negotiate`), if any.
    extensions: Option<http::HeaderValue>,
    /// The backend's extra response headers.
    extra_headers: BTreeMap<String, String>,
}

impl SwitchingProtocols {
    /// The `101` as a response (`handshake::switching_protocols`).
    pub(crate) fn response(&self) -> Response<Body> {
        handshake::switching_protocols(
            &self.key,
            self.protocol.as_deref(),
            self.extensions.as_ref(),
            &self.extra_headers,
        )
    }

    /// The `101`'s head as [`response_head`] writes [`Self::response`],
    /// written directly when the backend added no headers (whose checks
    /// the response makes): no header map built and taken apart per client.
    pub(crate) fn head(&self) -> Vec<u8> {
        if !self.extra_headers.is_empty() {
            return response_head(&self.response());
        }
        let accept = derive_accept_key(self.key.as_bytes());
        let mut head = Vec::with_capacity(256);
        head.extend_from_slice(
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
              sec-websocket-accept: ",
        );
        head.extend_from_slice(accept.as_bytes());
        head.extend_from_slice(b"\r\n");
        // As the response: a subprotocol that is no header value is left out.
        if let Some(protocol) = &self.protocol
            && http::HeaderValue::from_str(protocol).is_ok()
        {
            head.extend_from_slice(b"sec-websocket-protocol: ");
            head.extend_from_slice(protocol.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        if let Some(extensions) = &self.extensions {
            head.extend_from_slice(b"sec-websocket-extensions: ");
            head.extend_from_slice(extensions.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        head.extend_from_slice(b"\r\n");
        head
    }
}

/// The head of `response` as HTTP/1.1 puts it on the wire (status line,
/// header lines, empty line). Only for a body-less response (`101`).
pub(crate) fn response_head(response: &Response<Body>) -> Vec<u8> {
    let status = response.status();
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    for (name, value) in response.headers() {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// Everything an accepted upgrade needs for its `101` and its relay.
struct Accepted {
    upgrade: UpgradeRequest,
    target: Target,
    link: Link,
    /// The subprotocol answered to the client.
    protocol: Option<String>,
    /// The backend's extra response headers.
    extra_headers: BTreeMap<String, String>,
    /// The largest message the client may send: the gateway's, or the
    /// backend's when it asked for less in ACCEPT.
    max_message_size: usize,
    /// permessage-deflate, if agreed.
    deflate: Option<deflate::Agreement>,
    /// The client's connection slot, held until its relay ends.
    permit: ClientSlot,
}

async fn accept<B>(
    request: &Request<B>,
    id: u64,
    peer: SocketAddr,
    shared: &Shared,
    tls: Option<&TlsInfo>,
) -> Result<Accepted, Refusal> {
    let upgrade = handshake::validate(request)?;
    let config = &shared.config;
    if !config
        .origins
        .allows(upgrade.origin.as_deref(), Some(&upgrade.host))
    {
        return Err(Refusal::OriginDenied(
            upgrade.origin.clone().unwrap_or_default(),
        ));
    }
    let path = request.uri().path();
    let name = route::parse_name(path).map_err(Refusal::BadPath)?;
    tracing::Span::current().record("name", name.as_str());
    if !config.names.is_allowed(&name) {
        return Err(Refusal::Denied(name));
    }
    let target = resolve(&config.docroot, &name, &upgrade.protocols)?;
    if target.name != name && !config.names.is_allowed(&target.name) {
        return Err(Refusal::Denied(target.name));
    }
    // Before a connection slot is taken: a slow authorizer holds no slot.
    let identity = match &shared.authorizer {
        Some(authorizer) => match authorizer.url_for(&target.name) {
            Some(url) => {
                let question =
                    ConnectQuestion::new(&target.name, request.uri(), request.headers(), peer, tls);
                let started = Instant::now();
                let answer = authorizer.authorize(url, &question).await;
                shared
                    .metrics
                    .authorizer_answered(&answer, started.elapsed());
                answer?
            }
            None => None,
        },
        None => None,
    };
    let permit = shared
        .clients
        .try_acquire(config.max_connections)
        .ok_or(Refusal::ConnectionLimit(config.max_connections))?;
    let deflate = if config.deflate.is_enabled(&target.name) {
        deflate::negotiate(request.headers())
    } else {
        None
    };

    let is_direct =
        config.names.is_direct(&target.name) && !relay_tls_client(&target.name, tls, shared);
    if config.names.is_raw(&target.name) {
        if is_direct {
            // The configuration check rules this out for literal globs; refuse the rest.
            return Err(Refusal::RawAndDirect(target.name));
        }
        let stream =
            backend::open_raw(&target.socket_path, &target.name, config.accept_timeout).await?;
        return Ok(Accepted {
            upgrade,
            protocol: target.protocol.clone(),
            target,
            link: Link::Raw(stream),
            extra_headers: BTreeMap::new(),
            max_message_size: config.max_message_size,
            deflate,
            permit,
        });
    }
    // Seated before the OPEN goes out: the backend may send FANOUTs for this
    // client as soon as it accepts, and they may arrive before its ACCEPT.
    let seat = if is_direct {
        None
    } else {
        shared
            .carriers
            .current(&target.socket_path)
            .and_then(|carrier| carrier.seat(id, deflate.is_none()))
    };
    let open = OpenMeta {
        version: LINK_VERSION,
        mode: if is_direct {
            LinkMode::Direct
        } else {
            LinkMode::Framed
        },
        id,
        name: target.name.clone(),
        path: path.to_owned(),
        query: request.uri().query().unwrap_or_default().to_owned(),
        protocols: upgrade.protocols.clone(),
        peer: peer_text(peer),
        headers: upgrade.forwarded_headers.clone(),
        // A direct backend keeps the client as the relay would have.
        limits: is_direct.then(|| ClientLimits {
            max_message_size: config.max_message_size,
            ping_interval: config.ping_interval.map_or(0, |every| every.as_secs()),
            idle_timeout: config.idle_timeout.map_or(0, |after| after.as_secs()),
        }),
        tls: tls.cloned(),
        identity,
        // A relayed backend never sees compression; a direct one does it itself.
        deflate: if is_direct {
            deflate.as_ref().map(|agreement| agreement.params)
        } else {
            None
        },
        carrier: seat.as_ref().map(Seat::key),
    };
    // A backend that offered OPEN_HANDOFF takes a direct client without
    // being asked, when there is nothing for it to choose: the `101` goes
    // out now, with no subprotocol but the directory's and no extra headers.
    if is_direct
        && upgrade.protocols.is_empty()
        && let Some(idle) = shared.link_pool.take_for_handoff(&target.socket_path)
    {
        shared.metrics.backend_link_opened(LinkOrigin::Reused);
        return Ok(Accepted {
            upgrade,
            protocol: target.protocol.clone(),
            target,
            link: Link::OpenHandoff(Box::new(open), idle),
            extra_headers: BTreeMap::new(),
            max_message_size: config.max_message_size,
            deflate,
            permit,
        });
    }
    let started = Instant::now();
    let (link, reply, origin) = backend::open_framed(
        &target.socket_path,
        &open,
        config.max_message_size,
        config.accept_timeout,
        Some(&shared.link_pool),
    )
    .await?;
    shared
        .metrics
        .backend_accepted(&target.name, started.elapsed());
    shared.metrics.backend_link_opened(origin);
    let seat = match (reply.carrier, seat) {
        (Some(terms), Some(seat)) if seat.accept_terms(terms) => Some(seat),
        (Some(_), seat) => {
            return Err(Refusal::BackendFailed {
                name: target.name.clone(),
                cause: if seat.is_some() {
                    BackendFailure::CarrierEnded
                } else {
                    BackendFailure::CarrierNotOffered
                },
            });
        }
        (None, _) => None,
    };
    if reply.carrier_wanted && !is_direct && seat.is_none() {
        shared.carriers.want(
            &target.socket_path,
            &target.name,
            OpenSettings {
                max_message_size: config.max_message_size,
                accept_timeout: config.accept_timeout,
            },
            &shared.shutdown,
            shared.metrics.carrier_links(),
        );
    }
    // A relayed client's link comes back after its CLOSEs only if the
    // backend said so, and never for a carried client (its CLOSE comes on
    // the carrier).
    let offer = ReuseOffer::from_reply(&reply)
        .filter(|_| is_direct || (reply.reuse_framed && seat.is_none()));
    // The backend's choice wins; a directory's subprotocol is the default.
    Ok(Accepted {
        upgrade,
        protocol: reply.protocol.or_else(|| target.protocol.clone()),
        target,
        link: if is_direct {
            Link::Direct(link, offer)
        } else {
            Link::Framed(link, seat, offer)
        },
        extra_headers: reply.headers,
        max_message_size: reply
            .max_message_size
            .map_or(config.max_message_size, |max| {
                max.min(config.max_message_size)
            }),
        deflate,
        permit,
    })
}

/// Whether a client of `name`, served in direct mode, must be relayed
/// because it came over TLS; logs that once per name.
fn relay_tls_client(name: &str, tls: Option<&TlsInfo>, shared: &Shared) -> bool {
    if tls.is_none() {
        return false;
    }
    let mut logged = shared
        .direct_over_tls
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if logged.insert(name.to_owned()) {
        tracing::info!(
            name,
            "direct mode needs kTLS, which this gateway does not do: TLS clients of this name are relayed"
        );
    }
    true
}

/// Resolves `name` to a socket, mapping file-system answers to refusals.
fn resolve(docroot: &std::path::Path, name: &str, protocols: &[String]) -> Result<Target, Refusal> {
    route::resolve(docroot, name, protocols).map_err(|cause| match cause {
        RouteError::NotFound | RouteError::NotSocket | RouteError::NoProtocolMatch => {
            Refusal::NoBackend {
                name: name.to_owned(),
                cause,
            }
        }
        other => Refusal::BadPath(other),
    })
}

/// Relays the client on `stream`, which sent `pending` past its handshake,
/// in its `span` (the framed relay enters it only to log). The parts of a
/// `Switch` come one by one, the link by value and the rest by reference:
/// taking the `Switch` whole would store it twice in the client's task.
#[allow(clippy::too_many_arguments)]
async fn relay_upgraded<S: ClientStream>(
    stream: S,
    pending: Bytes,
    socket_path: &std::path::Path,
    link: Link,
    max_message_size: usize,
    deflate: Option<DeflateParams>,
    shared: &Shared,
    metrics: &ClientMetrics,
    span: &tracing::Span,
) {
    span.in_scope(|| tracing::debug!(socket = %socket_path.display(), "relaying"));
    let settings = &RelaySettings {
        max_message_size,
        ..shared.settings.clone()
    };
    // Where a link its backend offered for reuse goes once this client is done with it.
    let reuse = |offer| LinkReuse {
        pool: &shared.link_pool,
        socket_path,
        offer,
    };
    match link {
        Link::Framed(link, seat, offer) => {
            relay::framed::run(
                stream,
                pending,
                deflate,
                link,
                seat,
                offer.map(reuse),
                settings,
                &shared.shutdown,
                metrics,
                span,
            )
            .await;
        }
        Link::Raw(link) => {
            let client = relay::client_websocket(stream, pending, settings, deflate).await;
            let deflater = deflate.map(MessageDeflater::new);
            relay::raw::run(client, link, settings, deflater, &shared.shutdown, metrics)
                .instrument(span.clone())
                .await;
        }
        Link::Direct(link, offer) => {
            let Some(tcp) = direct_tcp(stream, span) else {
                return;
            };
            handoff::hand_over(tcp, pending, link, settings, offer.map(reuse))
                .instrument(span.clone())
                .await;
        }
        Link::OpenHandoff(open, idle) => {
            let Some(tcp) = direct_tcp(stream, span) else {
                return;
            };
            let handoff = OpenHandoff {
                open: &open,
                stream: idle.stream,
                reuse: reuse(idle.offer),
                max_payload: shared.config.max_message_size,
                accept_timeout: shared.config.accept_timeout,
            };
            handoff::hand_over_with_open(tcp, pending, handoff, settings)
                .instrument(span.clone())
                .await;
        }
    }
}

/// `peer` as its `Display` writes it (`ip:port`, `[ip]:port`), for the
/// OPEN every client's backend gets: an IPv4 address is written with
/// `itoa`, a tenth of what the formatting machinery costs per client.
fn peer_text(peer: SocketAddr) -> String {
    match peer {
        SocketAddr::V4(v4) => {
            let mut text = String::with_capacity("255.255.255.255:65535".len());
            let mut digits = itoa::Buffer::new();
            for (index, octet) in v4.ip().octets().into_iter().enumerate() {
                if index > 0 {
                    text.push('.');
                }
                text.push_str(digits.format(octet));
            }
            text.push(':');
            text.push_str(digits.format(v4.port()));
            text
        }
        SocketAddr::V6(_) => peer.to_string(),
    }
}

/// The TCP socket of a client served in direct mode. `accept` never chooses
/// direct mode for a TLS client; if it ever did, the client is closed.
fn direct_tcp<S: ClientStream>(stream: S, span: &tracing::Span) -> Option<tokio::net::TcpStream> {
    let tcp = stream.into_tcp().ok();
    if tcp.is_none() {
        span.in_scope(|| tracing::error!("direct mode chosen for a TLS client; closing"));
    }
    tcp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_101_head_written_directly_is_the_responses() {
        let extensions =
            http::HeaderValue::from_static("permessage-deflate; server_no_context_takeover");
        for (protocol, extensions) in [
            (None, None),
            (Some("chat"), None),
            (Some("bad\nvalue"), None),
            (None, Some(extensions.clone())),
            (Some("chat"), Some(extensions.clone())),
        ] {
            let switching = SwitchingProtocols {
                key: "dGhlIHNhbXBsZSBub25jZQ==".to_owned(),
                protocol: protocol.map(str::to_owned),
                extensions,
                extra_headers: BTreeMap::new(),
            };
            assert_eq!(
                String::from_utf8(switching.head()).expect("ASCII"),
                String::from_utf8(response_head(&switching.response())).expect("ASCII"),
            );
        }
    }

    #[test]
    fn a_peer_is_written_as_its_display_writes_it() {
        for peer in [
            "0.0.0.0:0",
            "127.0.0.1:8080",
            "10.20.30.40:5",
            "255.255.255.255:65535",
            "[::1]:443",
            "[2001:db8::7]:65535",
        ] {
            let peer: SocketAddr = peer.parse().expect("an address");
            assert_eq!(peer_text(peer), peer.to_string());
        }
    }
}
