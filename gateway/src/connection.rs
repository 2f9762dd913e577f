//! One client connection (TCP, or TLS once `tls` finished the handshake)
//! served by hyper: HTTP/1.1 requests until the client leaves, an upgrade
//! takes the connection over, or the gateway stops.
//!
//! Each request is dispatched here: a Host outside `--allowed-host` gets
//! `421` and an over-long header line `431` (hyper itself answers `431` to a
//! head over `--max-request-header-size`); then a WebSocket upgrade goes to
//! `upgrade`, a plain request for an `--http` name (or below it) to
//! `forward`, a plain GET on another backend's name to `426`, anything else
//! to the static files. The connection is closed early when the gateway needs its
//! descriptor back (`http_connections`). Each request is answered with the
//! configuration current when it arrives (a reload may come between two).

use bytes::{Bytes, BytesMut};
use http::header::HOST;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use link::TlsInfo;
use link::websocket::{ReadAhead, release};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::AsyncReadExt;

use crate::client_stream::ClientStream;
use crate::first_request::{self, FirstRequest};
use crate::forward;
use crate::handshake;
use crate::http_connections::HttpConnection;
use crate::refusal::Refusal;
use crate::response::Body;
use crate::route;
use crate::server::{Live, Shared};
use crate::upgrade;

/// Serves HTTP on `stream` until it closes; on shutdown, finishes the
/// request in progress and closes (an upgraded connection's relay ends on shutdown itself).
/// `registered` counts the connection until it ends or upgrades; when the
/// gateway sheds it, an idle connection is closed at once. `tls` is what the
/// TLS handshake learnt, `None` on a plain connection.
///
/// The first request head is read here (`first_request`): a WebSocket
/// upgrade is decided here without hyper, and its `101` and relay go on in
/// this task once everything else it held is freed. hyper serves everything
/// else, starting with the bytes read (a client hyper upgrades gets a task
/// of its own, `upgrade::handle`).
pub(crate) fn serve<S: ClientStream>(
    stream: S,
    peer: SocketAddr,
    live: Arc<Live>,
    registered: HttpConnection,
    tls: Option<TlsInfo>,
) -> impl Future<Output = ()> + Send + 'static {
    // The task of an upgraded client keeps only its relay's state (boxed
    // too), not the connection's arguments, its first request or hyper's
    // connection beside it.
    then_run(serve_first(stream, peer, live, registered, tls))
}

/// Runs `first` in a box freed once it is done, then what it returned, if
/// anything: a connection's task whose first part (a TLS handshake, the
/// first request) ends by handing over a long-lived future keeps only that
/// future's state, not the first part's beside it.
pub(crate) fn then_run<F>(
    first: impl Future<Output = Option<F>> + Send + 'static,
) -> impl Future<Output = ()> + Send + 'static
where
    F: Future<Output = ()> + Send + 'static,
{
    let first = Box::pin(first);
    async move {
        // Not `if let`: its scrutinee would stay in the task's state beside
        // the future it was moved to.
        let Some(then) = first.await else {
            return;
        };
        then.await;
    }
}

/// What `serve` does until the connection upgrades: the upgraded client's
/// relay to run in the connection's task, or `None` once the connection
/// is done (closed, or served by hyper to its end).
async fn serve_first<S: ClientStream>(
    mut stream: S,
    peer: SocketAddr,
    live: Arc<Live>,
    registered: HttpConnection,
    tls: Option<TlsInfo>,
) -> Option<std::pin::Pin<Box<impl Future<Output = ()> + Send + 'static>>> {
    let tls = tls.map(Arc::new);
    // Boxed: a connection hyper goes on serving should not carry the first
    // upgrade's decision (an authorizer call, an OPEN) in its state.
    let start = Box::pin(start(&mut stream, peer, &live, &registered, tls.as_deref())).await;
    match start {
        Start::Close => None,
        Start::Relay {
            switch,
            pending,
            head,
            timeout,
        } => {
            // Upgraded: no longer an HTTP connection to count or shed.
            drop(registered);
            // Boxed: the task's own future stays a pointer, which spawning
            // and finishing a task copy several times over.
            Some(Box::pin(switch.run(upgrade::Arrival::Unanswered {
                stream,
                pending,
                head,
                timeout,
            })))
        }
        Start::Http {
            read,
            first_response,
        } => {
            serve_http(
                ReadAhead::starting_with(stream, read),
                peer,
                live,
                registered,
                tls,
                first_response,
            )
            .await;
            None
        }
    }
}

/// How a connection goes on after its first request head.
// Made once per connection and taken apart at once: boxing the relay's part
// would only add an allocation.
#[allow(clippy::large_enum_variant)]
enum Start {
    /// The client left, or sent no head in time.
    Close,
    /// An upgrade decided without hyper: its relay, what the client sent
    /// after the head, the `101`'s head and how long it may take to write.
    Relay {
        switch: upgrade::Switch,
        pending: Bytes,
        head: Vec<u8>,
        timeout: std::time::Duration,
    },
    /// hyper's from here: the bytes read, and the answer to the first
    /// request if it was decided already (a refused upgrade).
    Http {
        read: BytesMut,
        first_response: Option<Response<Body>>,
    },
}

/// Reads the first request head and, if it is an upgrade, decides it.
async fn start<S: ClientStream>(
    stream: &mut S,
    peer: SocketAddr,
    live: &Live,
    registered: &HttpConnection,
    tls: Option<&TlsInfo>,
) -> Start {
    let shared = live.load_full();
    let config = &shared.config;
    let first = tokio::select! {
        first = first_request::read(
            stream,
            config.max_request_header_size,
            config.header_timeout,
        ) => first,
        () = registered.shed_token().cancelled() => {
            tracing::debug!(%peer, "idle connection closed: descriptors are short");
            return Start::Close;
        }
        // As hyper's graceful shutdown does with a connection before its
        // first request (drain lets it come).
        () = shared.shutdown.cancelled() => return Start::Close,
    };
    let (request, mut read, head_len) = match first {
        FirstRequest::Gone => return Start::Close,
        FirstRequest::Other(read) => {
            return Start::Http {
                read,
                first_response: None,
            };
        }
        FirstRequest::Upgrade {
            request,
            read,
            head_len,
        } => (request, read, head_len),
    };
    let _in_flight = registered.request();
    let decision = upgrade_first(&request, peer, &shared, tls);
    let watch_limit = head_len + config.max_request_header_size;
    let Some(decided) = unless_gone(decision, stream, &mut read, watch_limit).await else {
        // Gone while its upgrade was decided (an authorizer call, a
        // backend's ACCEPT): what was under way is dropped with it.
        tracing::debug!(%peer, "client left before its upgrade was decided");
        return Start::Close;
    };
    match decided {
        Ok((switching, switch)) => {
            // Copied out, and the head's buffer goes back to this thread's
            // spares for the next connection's head.
            let pending = Bytes::copy_from_slice(&read[head_len..]);
            read.clear();
            release(&mut read);
            Start::Relay {
                switch,
                pending,
                head: switching.head(),
                timeout: config.header_timeout,
            }
        }
        // hyper reads the request again and sends this answer, with its
        // keep-alive and body rules.
        Err(refusal) => Start::Http {
            read,
            first_response: Some(refusal),
        },
    }
}

/// Runs `work` while watching `stream`: `None` if the client leaves (end of
/// stream or an error) before `work` is done, which drops `work`. What the
/// client sends meanwhile is added to `read`, which is watched until it
/// holds `limit` bytes.
async fn unless_gone<S: ClientStream, T>(
    work: impl Future<Output = T>,
    stream: &mut S,
    read: &mut BytesMut,
    limit: usize,
) -> Option<T> {
    tokio::pin!(work);
    loop {
        let room = limit.saturating_sub(read.len());
        let mut watched = (&mut *stream).take(room as u64);
        tokio::select! {
            biased;
            done = &mut work => return Some(done),
            // `read_buf` is cancel-safe: nothing read is lost when `work` wins.
            got = watched.read_buf(read), if room > 0 => match got {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            },
        }
    }
}

/// The checks `dispatch` makes before an upgrade, then the upgrade's
/// decision, for a first request read by `first_request`.
async fn upgrade_first(
    request: &Request<()>,
    peer: SocketAddr,
    shared: &Arc<Shared>,
    tls: Option<&TlsInfo>,
) -> Result<(upgrade::SwitchingProtocols, upgrade::Switch), Response<Body>> {
    if let Err(refusal) = check_head(request, shared) {
        refusal.log();
        shared.metrics.upgrade(refusal.status().as_u16());
        return Err(refusal.to_response());
    }
    upgrade::decide(request, peer, shared, tls).await
}

/// hyper serving `stream` (the client's, read ahead by `first_request`);
/// the first request is answered with `first_response` when there is one
/// (an upgrade refused before hyper saw it).
async fn serve_http<S: ClientStream>(
    stream: ReadAhead<S>,
    peer: SocketAddr,
    live: Arc<Live>,
    registered: HttpConnection,
    tls: Option<Arc<TlsInfo>>,
    first_response: Option<Response<Body>>,
) {
    let shared = live.load_full();
    // Not at drain: hyper's graceful shutdown would close a connection the
    // listener's queue handed over before its first request, and answer an
    // upgrade in flight with `Connection: close`. Drain waits for HTTP
    // connections as for clients, up to the shutdown timeout.
    let shutdown = shared.shutdown.clone();
    let config = &shared.config;
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .max_buf_size(config.max_request_header_size);
    let registered = Arc::new(registered);
    let shed = registered.shed_token().clone();
    let first_response = Arc::new(Mutex::new(first_response));
    let service = service_fn(move |request| {
        let shared = live.load_full();
        let in_flight = registered.request();
        let tls = tls.clone();
        let decided = first_response
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        async move {
            let response = match decided {
                Some(response) => response,
                None => dispatch::<S>(request, peer, &shared, tls.as_deref()).await,
            };
            drop(in_flight);
            Ok::<_, Infallible>(response)
        }
    });
    let connection = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = shed.cancelled() => {
            tracing::debug!(%peer, "idle connection closed: descriptors are short");
            return;
        }
        () = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%peer, "HTTP connection ended: {error}");
    }
}

async fn dispatch<S: ClientStream>(
    request: Request<Incoming>,
    peer: SocketAddr,
    shared: &Arc<Shared>,
    tls: Option<&TlsInfo>,
) -> Response<Body> {
    if let Err(refusal) = check_head(&request, shared) {
        refusal.log();
        if handshake::is_websocket_upgrade(request.headers()) {
            shared.metrics.upgrade(refusal.status().as_u16());
        }
        return refusal.to_response();
    }
    if handshake::is_websocket_upgrade(request.headers()) {
        return upgrade::handle::<S>(request, peer, shared, tls).await;
    }
    if let Some(target) = forward::http_target(request.uri().path(), shared) {
        return forward::handle(request, target, peer, shared, tls).await;
    }
    if let Some(name) = backend_name(request.uri().path(), shared) {
        let refusal = Refusal::UpgradeRequired(name);
        refusal.log();
        return refusal.to_response();
    }
    shared.static_files.serve(request).await
}

/// The checks every request passes first: no header line is longer than
/// `--max-header-size`, the head is within `--max-request-header-size`, and
/// the Host is one this gateway serves.
fn check_head<B>(request: &Request<B>, shared: &Shared) -> Result<(), Refusal> {
    let config = &shared.config;
    // The request line, then each header line as `name: value`.
    let request_line = request.method().as_str().len()
        + request
            .uri()
            .path_and_query()
            .map_or(1, |pq| pq.as_str().len())
        + " HTTP/1.1".len()
        + 1;
    let header_lines = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + ": ".len() + value.len());
    let (mut head_size, mut longest_line) = (request_line, request_line);
    for line in header_lines {
        head_size += line + 2;
        longest_line = longest_line.max(line);
    }
    if longest_line > config.max_header_size {
        return Err(Refusal::HeaderTooLarge(config.max_header_size));
    }
    // hyper stops reading a head near this size; this makes the limit exact.
    if head_size > config.max_request_header_size {
        return Err(Refusal::HeadTooLarge(config.max_request_header_size));
    }
    if !config.allowed_hosts.is_empty() {
        let host = request
            .headers()
            .get(HOST)
            .and_then(|value| value.to_str().ok())
            .map(host_without_port)
            .unwrap_or_default();
        if !config
            .allowed_hosts
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(host))
        {
            return Err(Refusal::HostNotServed(host.to_owned()));
        }
    }
    Ok(())
}

/// `host[:port]` or `[v6]:port` without the port.
fn host_without_port(host: &str) -> &str {
    let host = host.trim();
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().map_or(host, |inner| {
            // Keep the brackets: an allowed IPv6 host is written `[::1]`.
            &host[..inner.len() + 2]
        });
    }
    host.rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|byte| byte.is_ascii_digit()))
        .map_or(host, |(name, _)| name)
}

/// The name, if `path` names a backend's socket.
fn backend_name(path: &str, shared: &Shared) -> Option<String> {
    let name = route::parse_name(path).ok()?;
    route::resolve(&shared.config.docroot, &name, &[]).ok()?;
    Some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_port_is_not_part_of_the_host() {
        for (header, host) in [
            ("example.com", "example.com"),
            ("example.com:8080", "example.com"),
            ("127.0.0.1:80", "127.0.0.1"),
            ("[::1]:8080", "[::1]"),
            ("[::1]", "[::1]"),
            (" Example.COM ", "Example.COM"),
        ] {
            assert_eq!(host_without_port(header), host, "{header}");
        }
    }
}
