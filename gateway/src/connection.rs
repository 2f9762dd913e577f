//! One TCP connection served by hyper: HTTP/1.1 requests until the client
//! leaves, an upgrade takes the connection over, or the gateway stops.
//!
//! Each request is dispatched here: a WebSocket upgrade to `upgrade`, a plain
//! GET on a backend's name to `426`, anything else to the static files.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::handshake;
use crate::refusal::Refusal;
use crate::response::Body;
use crate::route;
use crate::server::Shared;
use crate::upgrade;

/// Time a client has to send a complete request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves HTTP on `tcp` until it closes; on shutdown, finishes the request in
/// progress and closes (upgraded connections live on in their relay task).
pub(crate) async fn serve(tcp: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let shutdown = shared.shutdown.clone();
    let service = service_fn(move |request| {
        let shared = Arc::clone(&shared);
        async move { Ok::<_, Infallible>(dispatch(request, peer, &shared).await) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(tcp), service)
        .with_upgrades();
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%peer, "HTTP connection ended: {error}");
    }
}

async fn dispatch(
    request: Request<Incoming>,
    peer: SocketAddr,
    shared: &Arc<Shared>,
) -> Response<Body> {
    if handshake::is_websocket_upgrade(request.headers()) {
        return upgrade::handle(request, peer, shared).await;
    }
    if let Some(name) = backend_name(request.uri().path(), shared) {
        let refusal = Refusal::UpgradeRequired(name);
        refusal.log();
        return refusal.to_response();
    }
    shared.static_files.serve(request).await
}

/// The name, if `path` names a backend's socket.
fn backend_name(path: &str, shared: &Shared) -> Option<String> {
    let name = route::parse_name(path).ok()?;
    route::resolve(&shared.config.docroot, &name, &[]).ok()?;
    Some(name)
}
