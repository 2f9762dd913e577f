//! The `--metrics-listen` endpoint that the gateway and every backend serve
//! on a listener of its own: `GET /metrics` answers with the text that the
//! caller's `render` makes (the Prometheus text format), anything else gets
//! `404` (`405` for another method on `/metrics`).
//!
//! Every input is bounded: at most [`MAX_METRICS_CONNECTIONS`] connections
//! at once (more are closed at once), a request head within
//! [`HEADER_TIMEOUT`] and 8 KiB, no request body read. The registry and what
//! it holds are the caller's; this module only serves it, and
//! [`descriptor_usage`] gives the two descriptor figures both callers report.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::AcceptBackoff;

/// The one path served.
pub const METRICS_PATH: &str = "/metrics";

/// Scrapers connected at once; one more is closed as soon as it is accepted.
pub const MAX_METRICS_CONNECTIONS: usize = 16;

/// Time a scraper has to send a whole request head (also the longest a
/// kept-alive connection may sit idle between two scrapes).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest request head; hyper answers `431` beyond (its smallest buffer).
const MAX_HEAD_SIZE: usize = 8192;

/// What the endpoint serves: the text of one scrape and its content type.
pub trait Render: Send + Sync + 'static {
    /// The exposition text at this moment.
    fn render(&self) -> String;
    /// Its `Content-Type`.
    fn content_type(&self) -> &'static str;
}

/// Binds `addr` for [`serve`] (before the process announces itself).
pub async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|error| {
        io::Error::new(
            error.kind(),
            format!("binding the metrics address {addr}: {error}"),
        )
    })
}

/// The line a process prints on stdout once its metrics listener is bound
/// to `addr`: `metrics on http://<addr>/metrics`.
pub fn announcement(addr: SocketAddr) -> String {
    format!("metrics on http://{addr}{METRICS_PATH}")
}

/// Serves `render` on `listener` until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, render: Arc<dyn Render>, shutdown: CancellationToken) {
    let slots = Arc::new(Semaphore::new(MAX_METRICS_CONNECTIONS));
    let mut backoff = AcceptBackoff::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => return,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "metrics: accept failed");
                backoff.wait().await;
                continue;
            }
        };
        backoff.reset();
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::info!(%peer, "metrics: too many scrapers connected; closed");
            continue;
        };
        let render = Arc::clone(&render);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let render = Arc::clone(&render);
                async move { Ok::<_, Infallible>(answer(&request, render.as_ref())) }
            });
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_HEAD_SIZE);
            let connection = builder.serve_connection(TokioIo::new(tcp), service);
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = result {
                tracing::debug!(%peer, "metrics connection ended: {error}");
            }
            drop(slot);
        });
    }
}

/// The response to one request: the metrics, or why not.
fn answer(request: &Request<Incoming>, render: &dyn Render) -> Response<Full<Bytes>> {
    if request.uri().path() != METRICS_PATH {
        return text(
            StatusCode::NOT_FOUND,
            "not found: the metrics are at /metrics\n",
        );
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "only GET /metrics\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let mut response = Response::new(Full::new(Bytes::from(render.render())));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static(render.content_type()),
    );
    response
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Descriptors this process has open (the entries of `/proc/self/fd`) and
/// its soft `RLIMIT_NOFILE`, each `None` when it cannot be read.
pub fn descriptor_usage() -> (Option<u64>, Option<u64>) {
    use nix::sys::resource::{Resource, getrlimit};
    let open = std::fs::read_dir("/proc/self/fd").ok().map(|entries| {
        // The directory's own descriptor is among the entries while it is read.
        (entries.count() as u64).saturating_sub(1)
    });
    let limit = getrlimit(Resource::RLIMIT_NOFILE)
        .ok()
        .map(|(soft, _)| soft);
    (open, limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_are_counted_and_the_limit_read() {
        let (open, limit) = descriptor_usage();
        let open = open.expect("/proc/self/fd is readable");
        let limit = limit.expect("RLIMIT_NOFILE is readable");
        // Standard streams at least, and the test harness's own.
        assert!(open >= 3, "{open}");
        assert!(limit >= open, "{limit} < {open}");
    }
}
