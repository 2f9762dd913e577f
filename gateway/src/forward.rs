//! Plain HTTP requests to backends (`--http GLOB`): a request that is not an
//! upgrade, for such a name or a path below it (`/name/...`), goes to the
//! backend as one REQUEST record on a link of its own, and the backend's
//! RESPONSE record is the answer.
//!
//! The same rules as for upgrades apply first (allow/deny, the Origin when
//! the request carries one, TLS as on any listener); then the body is read,
//! at most `--max-request-body` bytes (`413` beyond) within
//! `--header-timeout` (`408`); the backend has `--accept-timeout` to
//! connect and answer (`504`); a socket that refuses is `502`, as is a
//! RESPONSE that breaks the protocol. Direct-mode names are served the same
//! way: no descriptor passing for HTTP. Names that match no http glob never
//! reach this module and keep their `426`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use globset::{Glob, GlobSet, GlobSetBuilder};
use http::header::{CONTENT_LENGTH, HOST, HeaderName, HeaderValue, ORIGIN};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use link::{LINK_VERSION, LinkError, Record, RecordCodec, RequestHead, ResponseHead, TlsInfo};
use tokio_util::codec::Framed;
use tracing::Instrument;

use crate::backend;
use crate::refusal::Refusal;
use crate::response::Body;
use crate::route::{self, Target};
use crate::server::Shared;

/// Most headers a backend's RESPONSE may carry; more is `502`.
pub(crate) const MAX_RESPONSE_HEADERS: usize = 64;

/// Longest name plus value of one header of a RESPONSE; longer is `502`.
pub(crate) const MAX_RESPONSE_HEADER_SIZE: usize = 8192;

/// Headers that describe one hop, never forwarded either way
/// (RFC 9110 section 7.6.1), and `Content-Length`, which the gateway sets.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// An http glob that does not compile, or one that overlaps a raw glob.
#[derive(Debug, thiserror::Error)]
pub enum HttpGlobError {
    /// A glob does not compile.
    #[error("invalid http glob {glob:?}")]
    Glob {
        /// The glob as written.
        glob: String,
        /// Why globset refused it.
        #[source]
        source: globset::Error,
    },
    /// Raw-mode backends speak no records, so cannot take REQUEST.
    #[error(
        "raw glob {raw:?} and http glob {http:?} overlap: raw-mode backends cannot take HTTP requests"
    )]
    RawOverlap {
        /// The raw glob.
        raw: String,
        /// The http glob.
        http: String,
    },
}

/// The names that take plain HTTP requests (`--http GLOB`).
#[derive(Debug, Clone)]
pub(crate) struct HttpNames {
    globs: Vec<String>,
    set: GlobSet,
}

impl PartialEq for HttpNames {
    fn eq(&self, other: &HttpNames) -> bool {
        self.globs == other.globs
    }
}

impl Eq for HttpNames {}

impl Default for HttpNames {
    fn default() -> HttpNames {
        HttpNames {
            globs: Vec::new(),
            set: GlobSet::empty(),
        }
    }
}

impl HttpNames {
    /// Compiles the http globs and refuses any that overlaps a raw glob (as
    /// text: a glob of one list matching a glob of the other).
    pub(crate) fn new(http: &[String], raw: &[String]) -> Result<HttpNames, HttpGlobError> {
        let compile = |globs: &[String]| {
            let mut builder = GlobSetBuilder::new();
            for glob in globs {
                let compiled = Glob::new(glob).map_err(|source| HttpGlobError::Glob {
                    glob: glob.clone(),
                    source,
                })?;
                builder.add(compiled);
            }
            builder.build().map_err(|source| HttpGlobError::Glob {
                glob: globs.join(" "),
                source,
            })
        };
        let set = compile(http)?;
        let raw_set = compile(raw)?;
        for raw_glob in raw {
            for http_glob in http {
                if set.is_match(raw_glob) || raw_set.is_match(http_glob) {
                    return Err(HttpGlobError::RawOverlap {
                        raw: raw_glob.clone(),
                        http: http_glob.clone(),
                    });
                }
            }
        }
        Ok(HttpNames {
            globs: http.to_vec(),
            set,
        })
    }

    fn matches(&self, name: &str) -> bool {
        self.set.is_match(name)
    }
}

/// The backend a plain request for `path` goes to: the first prefix of
/// `path`, segment by segment, that matches an http glob, is not a raw
/// name, and is a socket under the docroot. `None`: not an HTTP request
/// for a backend (the caller goes on as before).
pub(crate) fn http_target(path: &str, shared: &Shared) -> Option<Target> {
    let config = &shared.config;
    if config.http.globs.is_empty() {
        return None;
    }
    let mut end = 0;
    // Each prefix `/a`, `/a/b`, ... up to the whole path; a socket has no
    // children, so at most one prefix can be a socket.
    while end < path.len() {
        let next = path[end + 1..]
            .find('/')
            .map_or(path.len(), |slash| end + 1 + slash);
        end = next;
        let Ok(name) = route::parse_name(&path[..end]) else {
            return None;
        };
        if name.len() > route::MAX_SOCKET_PATH {
            return None;
        }
        if !config.http.matches(&name) || config.names.is_raw(&name) {
            continue;
        }
        if let Ok(target) = route::resolve(&config.docroot, &name, &[])
            && target.protocol.is_none()
        {
            return Some(target);
        }
    }
    None
}

/// Forwards `request` to the backend of `target` and answers with its
/// response, or with a refusal.
pub(crate) async fn handle(
    request: Request<Incoming>,
    target: Target,
    peer: SocketAddr,
    shared: &Arc<Shared>,
    tls: Option<&TlsInfo>,
) -> Response<Body> {
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!("request", id, %peer, name = %target.name);
    let forwarded = forward(request, id, &target, peer, shared, tls)
        .instrument(span.clone())
        .await;
    let status = match &forwarded {
        Ok(response) => response.status(),
        Err(refusal) => refusal.status(),
    };
    let allowed = shared.config.names.is_allowed(&target.name);
    shared
        .metrics
        .http_request(&target.name, allowed, status.as_u16());
    match forwarded {
        Ok(response) => response,
        Err(refusal) => {
            span.in_scope(|| refusal.log());
            refusal.to_response()
        }
    }
}

async fn forward(
    request: Request<Incoming>,
    id: u64,
    target: &Target,
    peer: SocketAddr,
    shared: &Shared,
    tls: Option<&TlsInfo>,
) -> Result<Response<Body>, Refusal> {
    let config = &shared.config;
    let name = &target.name;
    if !config.names.is_allowed(name) {
        return Err(Refusal::Denied(name.clone()));
    }
    check_origin(request.headers(), shared)?;
    let declared_len = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared_len.is_some_and(|len| len > config.max_request_body as u64) {
        return Err(Refusal::BodyTooLarge(config.max_request_body));
    }
    let (parts, body) = request.into_parts();
    let head = RequestHead {
        version: LINK_VERSION,
        id,
        name: name.clone(),
        method: parts.method.as_str().to_owned(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().unwrap_or_default().to_owned(),
        peer: peer.to_string(),
        headers: forwarded_headers(&parts.headers),
        tls: tls.cloned(),
    };
    let body = read_body(body, config.max_request_body, config.header_timeout).await?;
    let payload = head.to_payload(&body);
    drop(body);
    let max_payload = config.max_message_size.max(payload.len());
    let exchange = async {
        let stream = backend::connect(&target.socket_path, name).await?;
        let mut link = Framed::new(stream, RecordCodec::new(max_payload));
        let failed = |cause| Refusal::BadResponse {
            name: name.clone(),
            cause,
        };
        link.send(Record::Request(payload))
            .await
            .map_err(|error| failed(ResponseFailure::WriteRequest(error)))?;
        match link.next().await {
            Some(Ok(Record::Response(payload))) => ResponseHead::from_payload(payload)
                .map_err(|error| failed(ResponseFailure::Bad(error))),
            Some(Ok(other)) => Err(failed(ResponseFailure::UnexpectedRecord(other.name()))),
            Some(Err(error)) => Err(failed(ResponseFailure::Read(error))),
            None => Err(failed(ResponseFailure::ClosedBeforeResponse)),
        }
    };
    let (head, body) = tokio::time::timeout(config.accept_timeout, exchange)
        .await
        .map_err(|_| Refusal::BackendTimeout(name.clone()))??;
    let response = to_response(head, body).map_err(|cause| Refusal::BadResponse {
        name: name.clone(),
        cause,
    })?;
    tracing::info!(
        method = %parts.method,
        status = response.status().as_u16(),
        "forwarded"
    );
    Ok(response)
}

/// An Origin, when the request carries one, must be one the upgrade rule
/// allows; a repeated Origin is refused.
fn check_origin(headers: &HeaderMap, shared: &Shared) -> Result<(), Refusal> {
    let mut origins = headers.get_all(ORIGIN).iter();
    let Some(origin) = origins.next() else {
        return Ok(());
    };
    let origin_text = String::from_utf8_lossy(origin.as_bytes()).into_owned();
    if origins.next().is_some() {
        return Err(Refusal::OriginDenied(origin_text));
    }
    let host = headers.get(HOST).and_then(|host| host.to_str().ok());
    match origin.to_str() {
        Ok(origin) if shared.config.origins.allows(Some(origin), host) => Ok(()),
        _ => Err(Refusal::OriginDenied(origin_text)),
    }
}

/// Every request header but the hop-by-hop ones, names in lower case.
fn forwarded_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(name, _)| !HOP_BY_HOP.contains(&name.as_str()))
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// The whole body, at most `max` bytes, within `deadline`.
async fn read_body(
    body: Incoming,
    max: usize,
    deadline: std::time::Duration,
) -> Result<Bytes, Refusal> {
    let collected = tokio::time::timeout(deadline, Limited::new(body, max).collect())
        .await
        .map_err(|_| Refusal::BodyTimeout(deadline))?;
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<LengthLimitError>() => Err(Refusal::BodyTooLarge(max)),
        Err(error) => Err(Refusal::BadBody(error)),
    }
}

/// How a backend's answer to REQUEST broke the protocol (`502`).
#[derive(Debug, thiserror::Error)]
pub enum ResponseFailure {
    /// The REQUEST record could not be written.
    #[error("writing REQUEST")]
    WriteRequest(#[source] LinkError),
    /// The answer could not be read.
    #[error("reading the answer to REQUEST")]
    Read(#[source] LinkError),
    /// The RESPONSE payload is malformed.
    #[error("bad RESPONSE")]
    Bad(#[source] LinkError),
    /// The backend answered with another record.
    #[error("expected RESPONSE, got {0}")]
    UnexpectedRecord(&'static str),
    /// The backend closed the link without answering.
    #[error("it closed the link instead of answering REQUEST")]
    ClosedBeforeResponse,
    /// The status is outside 200–599.
    #[error("RESPONSE status {0} is not between 200 and 599")]
    Status(u16),
    /// More headers than the gateway passes on.
    #[error("RESPONSE has {0} headers, more than {MAX_RESPONSE_HEADERS}")]
    TooManyHeaders(usize),
    /// A header longer than the gateway passes on.
    #[error("RESPONSE has a header of {0} bytes, more than {MAX_RESPONSE_HEADER_SIZE}")]
    HeaderTooLong(usize),
}

/// The client's response: the backend's status, its valid end-to-end
/// headers (invalid and hop-by-hop ones dropped with a warning) and its body.
fn to_response(head: ResponseHead, body: Bytes) -> Result<Response<Body>, ResponseFailure> {
    let status = StatusCode::from_u16(head.status)
        .ok()
        .filter(|_| (200..=599).contains(&head.status))
        .ok_or(ResponseFailure::Status(head.status))?;
    if head.headers.len() > MAX_RESPONSE_HEADERS {
        return Err(ResponseFailure::TooManyHeaders(head.headers.len()));
    }
    if let Some(longest) = head
        .headers
        .iter()
        .map(|(name, value)| name.len() + value.len())
        .max()
        .filter(|len| *len > MAX_RESPONSE_HEADER_SIZE)
    {
        return Err(ResponseFailure::HeaderTooLong(longest));
    }
    let mut response = Response::new(
        Full::new(body)
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    let headers = response.headers_mut();
    for (name, value) in head.headers {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) else {
            tracing::warn!(header = %name, "backend sent an invalid response header; dropped");
            continue;
        };
        if HOP_BY_HOP.contains(&name.as_str()) || name == CONTENT_LENGTH {
            tracing::debug!(header = %name, "hop-by-hop response header dropped");
            continue;
        }
        headers.append(name, value);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(status: u16, headers: &[(&str, &str)]) -> ResponseHead {
        ResponseHead {
            status,
            headers: headers
                .iter()
                .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn a_response_keeps_end_to_end_headers_only() {
        let response = to_response(
            head(
                201,
                &[
                    ("Content-Type", "application/json"),
                    ("set-cookie", "a=1"),
                    ("set-cookie", "b=2"),
                    ("connection", "close"),
                    ("transfer-encoding", "chunked"),
                    ("content-length", "999"),
                    ("bad name", "x"),
                    ("x-bad-value", "a\nb"),
                ],
            ),
            Bytes::from_static(b"{}"),
        )
        .expect("valid");
        assert_eq!(response.status(), StatusCode::CREATED);
        let names: Vec<_> = response
            .headers()
            .keys()
            .map(|name| name.as_str())
            .collect();
        assert_eq!(names, ["content-type", "set-cookie"]);
        assert_eq!(response.headers().get_all("set-cookie").iter().count(), 2);
    }

    #[test]
    fn a_response_outside_the_limits_is_a_failure() {
        for status in [0, 101, 199, 600, 1000] {
            let error = to_response(head(status, &[]), Bytes::new()).expect_err("bad status");
            assert!(matches!(error, ResponseFailure::Status(_)), "{status}");
        }
        let many: Vec<(String, String)> = (0..=MAX_RESPONSE_HEADERS)
            .map(|idx| (format!("x-{idx}"), "v".to_owned()))
            .collect();
        let error = to_response(
            ResponseHead {
                status: 200,
                headers: many,
            },
            Bytes::new(),
        )
        .expect_err("too many");
        assert!(matches!(error, ResponseFailure::TooManyHeaders(_)));
        let long = "v".repeat(MAX_RESPONSE_HEADER_SIZE);
        let error =
            to_response(head(200, &[("x-long", &long)]), Bytes::new()).expect_err("too long");
        assert!(matches!(error, ResponseFailure::HeaderTooLong(_)));
    }

    #[test]
    fn http_globs_must_not_overlap_raw_globs() {
        let strings = |globs: &[&str]| {
            globs
                .iter()
                .map(|glob| (*glob).to_owned())
                .collect::<Vec<_>>()
        };
        assert!(HttpNames::new(&strings(&["api", "feeds/*"]), &strings(&["legacy-*"])).is_ok());
        for (http, raw) in [("*", "legacy-*"), ("legacy-api", "legacy-*"), ("x", "x")] {
            let error = HttpNames::new(&strings(&[http]), &strings(&[raw])).expect_err("overlap");
            assert!(
                matches!(error, HttpGlobError::RawOverlap { .. }),
                "{http} {raw}"
            );
        }
    }

    #[test]
    fn hop_by_hop_request_headers_stay_here() {
        let mut headers = HeaderMap::new();
        headers.insert("connection", HeaderValue::from_static("keep-alive"));
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        headers.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        headers.insert("x-token", HeaderValue::from_static("t"));
        assert_eq!(
            forwarded_headers(&headers),
            [
                ("content-type".to_owned(), "text/plain".to_owned()),
                ("x-token".to_owned(), "t".to_owned())
            ]
        );
    }
}
