//! The authorizer: an HTTP webhook the gateway asks, before it connects a
//! WebSocket client to its backend, whether the client may come in
//! (`--authorizer URL`, or per name glob in the TOML file).
//!
//! The gateway POSTs one JSON object describing the upgrade (`command`
//! `"connect"`, name, path, query as an object, headers, client address,
//! TLS). `200` lets the client go on, and the JSON body of that `200`, if
//! any, reaches the backend as OPEN's `identity`; `4xx` is that status to the
//! client; anything else, a timeout or no answer is `503`. Each call runs in
//! the client's own connection task, under `--authorizer-timeout` and a
//! bound on calls in flight, and is dropped with the client's request, so a
//! slow or dead authorizer stalls no one else. The HTTP client is
//! hyper-util's; what the webhook decides is none of the gateway's business.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use globset::{Glob, GlobSet, GlobSetBuilder};
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use link::TlsInfo;
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::refusal::Refusal;

/// Largest body of an authorizer's `200` (the identity passed to the backend).
pub(crate) const MAX_IDENTITY_SIZE: usize = 64 * 1024;

/// Authorizer calls in flight at once, over all authorizers; a client
/// waits for a slot within its `--authorizer-timeout`.
pub(crate) const MAX_AUTHORIZER_CALLS: usize = 256;

/// Idle connections kept open to each authorizer.
const MAX_IDLE_CONNECTIONS: usize = 32;

/// An authorizer setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthorizerConfigError {
    /// The URL does not parse, or is not `http://host[:port]/path`.
    #[error(
        "invalid authorizer URL {url:?}: expected http://host[:port]/path (https is not supported; run the authorizer on loopback or a private network)"
    )]
    Url {
        /// The URL as written.
        url: String,
    },
    /// A glob of an `[[authorizer]]` table does not compile.
    #[error("invalid authorizer glob {glob:?}")]
    Glob {
        /// The glob as written.
        glob: String,
        /// Why globset refused it.
        #[source]
        source: globset::Error,
    },
}

/// One authorizer and the names it decides for.
#[derive(Debug, Clone)]
struct AuthorizerRule {
    globs: Vec<String>,
    set: GlobSet,
    url: Uri,
}

/// Which authorizer, if any, decides for each name: the first rule whose
/// globs match. Empty: no authorizer at all.
#[derive(Debug, Clone, Default)]
pub(crate) struct AuthorizerRules(Vec<AuthorizerRule>);

impl PartialEq for AuthorizerRules {
    fn eq(&self, other: &AuthorizerRules) -> bool {
        self.0.len() == other.0.len()
            && self
                .0
                .iter()
                .zip(&other.0)
                .all(|(ours, theirs)| ours.globs == theirs.globs && ours.url == theirs.url)
    }
}

impl Eq for AuthorizerRules {}

impl AuthorizerRules {
    /// Compiles `(globs, url)` pairs, in order of precedence.
    pub(crate) fn new(
        rules: Vec<(Vec<String>, String)>,
    ) -> Result<AuthorizerRules, AuthorizerConfigError> {
        rules
            .into_iter()
            .map(|(globs, url)| {
                let mut builder = GlobSetBuilder::new();
                for glob in &globs {
                    let compiled =
                        Glob::new(glob).map_err(|source| AuthorizerConfigError::Glob {
                            glob: glob.clone(),
                            source,
                        })?;
                    builder.add(compiled);
                }
                let set = builder
                    .build()
                    .map_err(|source| AuthorizerConfigError::Glob {
                        glob: globs.join(" "),
                        source,
                    })?;
                Ok(AuthorizerRule {
                    globs,
                    set,
                    url: parse_url(&url)?,
                })
            })
            .collect::<Result<_, _>>()
            .map(AuthorizerRules)
    }

    /// The authorizer that decides for `name`, if any.
    pub(crate) fn url_for(&self, name: &str) -> Option<&Uri> {
        self.0
            .iter()
            .find(|rule| rule.set.is_match(name))
            .map(|rule| &rule.url)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn parse_url(url: &str) -> Result<Uri, AuthorizerConfigError> {
    let invalid = || AuthorizerConfigError::Url {
        url: url.to_owned(),
    };
    let uri: Uri = url.parse().map_err(|_| invalid())?;
    if uri.scheme() != Some(&http::uri::Scheme::HTTP) || uri.authority().is_none() {
        return Err(invalid());
    }
    Ok(uri)
}

/// Why an authorizer gave no usable answer; each is `503` to the client.
#[derive(Debug, thiserror::Error)]
pub enum AuthorizerError {
    /// No answer (slot, connection, status and body) within `--authorizer-timeout`.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Connecting or sending failed (refused, reset, DNS).
    #[error("cannot reach it")]
    Unreachable(#[source] hyper_util::client::legacy::Error),
    /// It answered with a status that means "down" (5xx) or nothing useful.
    #[error("it answered {0}")]
    Status(StatusCode),
    /// Reading the body of its `200` failed or exceeded the limit.
    #[error("reading its answer")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The body of its `200` is not JSON.
    #[error("its 200 body is not JSON")]
    NotJson(#[source] serde_json::Error),
}

/// What the authorizer is told about an upgrade.
#[derive(Debug, Serialize)]
pub(crate) struct ConnectQuestion<'a> {
    /// Always `"connect"`, as wsify's webhook expects.
    command: &'static str,
    /// The backend name the client asks for.
    name: &'a str,
    /// The request path without the query.
    path: &'a str,
    /// The query as an object; a repeated key keeps its first value.
    query: serde_json::Map<String, serde_json::Value>,
    /// Every request header as `[name, value]`, names in lower case.
    headers: Vec<(String, String)>,
    /// The client's address, `ip:port`.
    peer: String,
    /// OPEN's `tls`, present for a client on TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    tls: Option<&'a TlsInfo>,
}

impl<'a> ConnectQuestion<'a> {
    /// The question about a client of `name` with this request.
    pub(crate) fn new(
        name: &'a str,
        uri: &'a Uri,
        headers: &HeaderMap,
        peer: SocketAddr,
        tls: Option<&'a TlsInfo>,
    ) -> ConnectQuestion<'a> {
        let mut query = serde_json::Map::new();
        for (key, value) in form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes()) {
            query
                .entry(key.into_owned())
                .or_insert_with(|| serde_json::Value::String(value.into_owned()));
        }
        ConnectQuestion {
            command: "connect",
            name,
            path: uri.path(),
            query,
            headers: header_pairs(headers),
            peer: peer.to_string(),
            tls,
        }
    }
}

/// `headers` as `(name, value)` pairs in order, values decoded lossily.
pub(crate) fn header_pairs(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// The HTTP client that asks the authorizers, shared by every connection.
pub(crate) struct Authorizer {
    rules: AuthorizerRules,
    timeout: Duration,
    client: Client<HttpConnector, Full<Bytes>>,
    slots: Arc<Semaphore>,
}

impl Authorizer {
    /// The client for `rules`, or `None` when no name has an authorizer.
    pub(crate) fn new(rules: &AuthorizerRules, timeout: Duration) -> Option<Authorizer> {
        if rules.is_empty() {
            return None;
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(MAX_IDLE_CONNECTIONS)
            .build(connector);
        Some(Authorizer {
            rules: rules.clone(),
            timeout,
            client,
            slots: Arc::new(Semaphore::new(MAX_AUTHORIZER_CALLS)),
        })
    }

    /// The authorizer that decides for `name`, if any.
    pub(crate) fn url_for(&self, name: &str) -> Option<&Uri> {
        self.rules.url_for(name)
    }

    /// Asks the authorizer at `url` about the client described by
    /// `question`: `Ok(identity)` to let it in, or the refusal it gets.
    pub(crate) async fn authorize(
        &self,
        url: &Uri,
        question: &ConnectQuestion<'_>,
    ) -> Result<Option<serde_json::Value>, Refusal> {
        let name = question.name;
        let failed = |cause| Refusal::AuthorizerFailed {
            name: name.to_owned(),
            cause,
        };
        let answer = tokio::time::timeout(self.timeout, self.ask(url, question))
            .await
            .map_err(|_| failed(AuthorizerError::Timeout(self.timeout)))?;
        match answer {
            Ok(Answer::Identity(identity)) => {
                tracing::debug!(
                    has_identity = identity.is_some(),
                    "authorizer let the client in"
                );
                Ok(identity)
            }
            Ok(Answer::Refused(status)) => Err(Refusal::AuthorizerRefused {
                name: name.to_owned(),
                status,
            }),
            Err(cause) => Err(failed(cause)),
        }
    }

    async fn ask(
        &self,
        url: &Uri,
        question: &ConnectQuestion<'_>,
    ) -> Result<Answer, AuthorizerError> {
        let _slot = self
            .slots
            .acquire()
            .await
            .expect("the authorizer semaphore is never closed");
        let body = serde_json::to_vec(question).expect("a ConnectQuestion always serialises");
        let mut request = Request::new(Full::new(Bytes::from(body)));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = url.clone();
        request
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let response = self
            .client
            .request(request)
            .await
            .map_err(AuthorizerError::Unreachable)?;
        let status = response.status();
        if status.is_client_error() {
            return Ok(Answer::Refused(status));
        }
        if status != StatusCode::OK {
            if status.is_server_error() {
                return Err(AuthorizerError::Status(status));
            }
            // Neither 200 nor 4xx nor 5xx: not authorized (wsify's rule).
            return Ok(Answer::Refused(StatusCode::FORBIDDEN));
        }
        let body = Limited::new(response.into_body(), MAX_IDENTITY_SIZE)
            .collect()
            .await
            .map_err(AuthorizerError::Body)?
            .to_bytes();
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Answer::Identity(None));
        }
        let identity = serde_json::from_slice(&body).map_err(AuthorizerError::NotJson)?;
        Ok(Answer::Identity(Some(identity)))
    }
}

/// What an authorizer decided.
enum Answer {
    /// `200`, with the identity its body gave, if any.
    Identity(Option<serde_json::Value>),
    /// Not authorized: the status the client gets (a 4xx).
    Refused(StatusCode),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_http_urls_with_a_host_are_accepted() {
        assert!(parse_url("http://127.0.0.1:9000/authorize").is_ok());
        assert!(parse_url("http://auth.internal/").is_ok());
        for bad in ["https://auth/", "/authorize", "auth:9000", "", "http:///x"] {
            assert!(parse_url(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_question_has_the_query_as_an_object_and_every_header() {
        let uri: Uri = "/chat?token=a%20b&room=1&room=2&flag".parse().expect("uri");
        let mut headers = HeaderMap::new();
        headers.insert("cookie", HeaderValue::from_static("sid=1"));
        headers.append("x-many", HeaderValue::from_static("a"));
        headers.append("x-many", HeaderValue::from_static("b"));
        let peer: SocketAddr = "127.0.0.1:5000".parse().expect("addr");
        let question = ConnectQuestion::new("chat", &uri, &headers, peer, None);
        let json = serde_json::to_value(&question).expect("serialises");
        assert_eq!(
            json,
            serde_json::json!({
                "command": "connect",
                "name": "chat",
                "path": "/chat",
                "query": {"token": "a b", "room": "1", "flag": ""},
                "headers": [["cookie", "sid=1"], ["x-many", "a"], ["x-many", "b"]],
                "peer": "127.0.0.1:5000",
            })
        );
    }
}
