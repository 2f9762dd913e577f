//! The channels dialect's per-message webhook (`--authorizer URL`, wsify's
//! authorizer): each message is POSTed as JSON before it is acted on. `200`
//! allows it, `5xx` (or no answer within the timeout) means the authorizer
//! is down and the client should reconnect later, anything else denies that
//! one message.
//!
//! The request carries the client's address and query in `X-Wsgate-Peer` and
//! `X-Wsgate-Query`, so the webhook knows who asks. At most `max_concurrent`
//! requests are in flight; a message waiting for a slot counts against the
//! same timeout. Plain `http://` only: the authorizer is a local service.

use std::sync::Arc;
use std::time::Duration;

use backend::OpenMeta;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Semaphore;

/// The default time an authorizer has to answer.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// The default number of authorizer requests in flight at once.
pub const DEFAULT_MAX_CONCURRENT: usize = 64;

/// What the authorizer said about one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// `200`: act on the message.
    Allowed,
    /// Any other status below 500: refuse this message.
    Denied(u16),
    /// `5xx`, a timeout or no connection: close the client with 1013.
    Unavailable(String),
}

/// Why `--authorizer` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthorizerError {
    /// Not an absolute `http://` URL.
    #[error("the authorizer URL {0:?} must be an absolute http:// URL")]
    BadUrl(String),
}

/// The webhook client.
#[derive(Debug, Clone)]
pub struct Authorizer {
    url: Uri,
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
    slots: Arc<Semaphore>,
}

impl Authorizer {
    /// A client for the webhook at `url`.
    pub fn new(
        url: &str,
        timeout: Duration,
        max_concurrent: usize,
    ) -> Result<Authorizer, AuthorizerError> {
        let bad_url = || AuthorizerError::BadUrl(url.to_owned());
        let uri: Uri = url.parse().map_err(|_| bad_url())?;
        if uri.scheme_str() != Some("http") || uri.authority().is_none() {
            return Err(bad_url());
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Authorizer {
            url: uri,
            client,
            timeout,
            slots: Arc::new(Semaphore::new(max_concurrent.max(1))),
        })
    }

    /// Asks about the message `body` of the client described by `meta`.
    pub async fn check(&self, body: &str, meta: &OpenMeta) -> Verdict {
        match tokio::time::timeout(self.timeout, self.ask(body, meta)).await {
            Ok(verdict) => verdict,
            Err(_) => Verdict::Unavailable(format!("no answer within {:?}", self.timeout)),
        }
    }

    async fn ask(&self, body: &str, meta: &OpenMeta) -> Verdict {
        let Ok(_slot) = self.slots.acquire().await else {
            return Verdict::Unavailable("shutting down".to_owned());
        };
        let request = hyper::Request::post(self.url.clone())
            .header("content-type", "application/json")
            .header("x-wsgate-peer", header_value(&meta.peer))
            .header("x-wsgate-query", header_value(&meta.query))
            .body(Full::new(Bytes::copy_from_slice(body.as_bytes())));
        let request = match request {
            Ok(request) => request,
            Err(error) => {
                return Verdict::Unavailable(format!("cannot build the request: {error}"));
            }
        };
        let response = match self.client.request(request).await {
            Ok(response) => response,
            Err(error) => return Verdict::Unavailable(format!("request failed: {error}")),
        };
        let status = response.status().as_u16();
        // Read (and drop) the body so the connection can be reused; a body
        // that does not arrive within the timeout ends with it.
        let _ = response.into_body().collect().await;
        match status {
            200 => Verdict::Allowed,
            500..=599 => Verdict::Unavailable(format!("authorizer answered {status}")),
            _ => Verdict::Denied(status),
        }
    }
}

/// `text` as a header value: control characters and non-ASCII are percent-encoded.
fn header_value(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::CONTROLS).to_string()
}

#[cfg(test)]
mod tests;
