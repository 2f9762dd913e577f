//! Every way an upgrade request (or a plain request forwarded to a backend)
//! is refused, each with exactly one HTTP status, a one-line reason for the
//! response body, and one log line.
//!
//! Deciding *that* a request is refused is the job of `handshake`, `route`,
//! `access` and `backend`; this module only names the outcome and renders it.

use http::header::{HeaderValue, SEC_WEBSOCKET_VERSION, UPGRADE};
use http::{Response, StatusCode};

use crate::authorizer::AuthorizerError;
use crate::backend::BackendFailure;
use crate::forward::ResponseFailure;
use crate::response::{self, Body};
use crate::route::RouteError;

/// Why an upgrade (or a plain request on a socket name) was refused.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The request is not a valid RFC 6455 handshake.
    #[error("bad handshake: {0}")]
    BadHandshake(&'static str),
    /// `Sec-WebSocket-Version` is not 13; the response names version 13.
    #[error("unsupported WebSocket version {0:?}, this server speaks 13")]
    UnsupportedVersion(String),
    /// The path does not name a backend (traversal, NUL, too long, ...).
    #[error("bad path")]
    BadPath(#[source] RouteError),
    /// The name is outside the allow globs or inside a deny glob.
    #[error("name {0:?} is not allowed")]
    Denied(String),
    /// The `Origin` header is not allowed to upgrade.
    #[error("origin {0:?} is not allowed")]
    OriginDenied(String),
    /// No socket serves the name (missing, not a socket, or outside the docroot).
    #[error("no backend for {name:?}")]
    NoBackend {
        /// The requested name.
        name: String,
        /// What the file system said.
        #[source]
        cause: RouteError,
    },
    /// A plain GET reached a name that a backend serves.
    #[error("{0:?} is a WebSocket endpoint: upgrade required")]
    UpgradeRequired(String),
    /// A request line or header line is longer than `--max-header-size`.
    #[error("a request header is longer than {0} bytes")]
    HeaderTooLarge(usize),
    /// The request head is longer than `--max-request-header-size`.
    #[error("the request head is longer than {0} bytes")]
    HeadTooLarge(usize),
    /// The Host header names a host outside `--allowed-host`.
    #[error("host {0:?} is not served here")]
    HostNotServed(String),
    /// The gateway is at `--max-connections`.
    #[error("too many WebSocket clients (limit {0})")]
    ConnectionLimit(usize),
    /// Connecting to the backend's socket failed.
    #[error("backend {name:?} refused the connection")]
    BackendUnavailable {
        /// The backend name.
        name: String,
        /// The connect error.
        #[source]
        cause: std::io::Error,
    },
    /// The backend broke the link protocol before accepting.
    #[error("backend {name:?} failed")]
    BackendFailed {
        /// The backend name.
        name: String,
        /// How it broke the link protocol.
        #[source]
        cause: BackendFailure,
    },
    /// The backend did not answer OPEN within `--accept-timeout`.
    #[error("backend {0:?} did not answer in time")]
    BackendTimeout(String),
    /// The name matches both a raw and a direct glob, which the
    /// configuration check rules out for literal globs only.
    #[error("misconfigured: {0:?} matches both a raw and a direct glob")]
    RawAndDirect(String),
    /// The authorizer did not let the client in: its 4xx, or 403 for an
    /// answer that is neither 200, 4xx nor 5xx.
    #[error("the authorizer refused the client of {name:?} with {status}")]
    AuthorizerRefused {
        /// The backend name.
        name: String,
        /// The status the client gets.
        status: StatusCode,
    },
    /// The authorizer is down, slow or broken: 5xx, a timeout, no answer.
    #[error("the authorizer of {name:?} is unavailable")]
    AuthorizerFailed {
        /// The backend name.
        name: String,
        /// What went wrong.
        #[source]
        cause: AuthorizerError,
    },
    /// A forwarded request's body is over `--max-request-body`.
    #[error("the request body is larger than {0} bytes")]
    BodyTooLarge(usize),
    /// A forwarded request's body did not arrive within `--header-timeout`.
    #[error("the request body did not arrive within {0:?}")]
    BodyTimeout(std::time::Duration),
    /// A forwarded request's body could not be read.
    #[error("bad request body")]
    BadBody(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The backend's answer to a forwarded request broke the link protocol.
    #[error("backend {name:?} failed")]
    BadResponse {
        /// The backend name.
        name: String,
        /// How.
        #[source]
        cause: ResponseFailure,
    },
    /// The backend answered REJECT.
    #[error("backend {name:?} rejected the client with {status}: {reason}")]
    BackendRejected {
        /// The backend name.
        name: String,
        /// The backend's status, already checked to be 400-599.
        status: StatusCode,
        /// The backend's reason.
        reason: String,
    },
}

impl Refusal {
    /// The one HTTP status of this refusal.
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::BadHandshake(_) => StatusCode::BAD_REQUEST,
            Refusal::HeaderTooLarge(_) | Refusal::HeadTooLarge(_) => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            Refusal::HostNotServed(_) => StatusCode::MISDIRECTED_REQUEST,
            Refusal::UnsupportedVersion(_) | Refusal::UpgradeRequired(_) => {
                StatusCode::UPGRADE_REQUIRED
            }
            Refusal::BadPath(RouteError::TooLong) => StatusCode::URI_TOO_LONG,
            Refusal::BadPath(RouteError::OutsideDocroot) => StatusCode::FORBIDDEN,
            Refusal::BadPath(_) => StatusCode::BAD_REQUEST,
            Refusal::Denied(_) | Refusal::OriginDenied(_) => StatusCode::FORBIDDEN,
            Refusal::NoBackend { .. } => StatusCode::NOT_FOUND,
            Refusal::ConnectionLimit(_) => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::BackendUnavailable { .. }
            | Refusal::BackendFailed { .. }
            | Refusal::BadResponse { .. } => StatusCode::BAD_GATEWAY,
            Refusal::AuthorizerRefused { status, .. } => *status,
            Refusal::AuthorizerFailed { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Refusal::BadBody(_) => StatusCode::BAD_REQUEST,
            Refusal::BackendTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Refusal::RawAndDirect(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Refusal::BackendRejected { status, .. } => *status,
        }
    }

    /// The response the client gets: the status and this refusal's message as
    /// one line of text (a REJECT's reason alone, as the backend wrote it).
    pub fn to_response(&self) -> Response<Body> {
        let line = match self {
            Refusal::BackendRejected { reason, status, .. } if reason.is_empty() => {
                status.canonical_reason().unwrap_or("rejected").to_owned()
            }
            Refusal::BackendRejected { reason, .. } => one_line(reason),
            other => one_line(&error_chain(other)),
        };
        let mut response = response::text(self.status(), &line);
        match self {
            Refusal::UnsupportedVersion(_) => {
                response
                    .headers_mut()
                    .insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
            }
            Refusal::UpgradeRequired(_) => {
                response
                    .headers_mut()
                    .insert(UPGRADE, HeaderValue::from_static("websocket"));
            }
            _ => {}
        }
        response
    }

    /// Logs the refusal once, at a level that matches whose fault it is.
    pub fn log(&self) {
        let status = self.status().as_u16();
        let error = self as &dyn std::error::Error;
        if self.status().is_server_error() {
            tracing::warn!(status, error, "refused");
        } else {
            tracing::info!(status, error, "refused");
        }
    }
}

/// An error and its causes, joined with `: `, for the one-line response body
/// (and `reload`'s log line).
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line
}

/// Control characters (a backend's reason may hold any) become spaces.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;
    use crate::backend::BackendFailure;

    /// The body of `refusal`'s response, as text.
    async fn body(refusal: &Refusal) -> String {
        let bytes = refusal
            .to_response()
            .into_body()
            .collect()
            .await
            .expect("a text body cannot fail")
            .to_bytes();
        String::from_utf8(bytes.to_vec()).expect("the body is UTF-8")
    }

    /// One row of docs/configuration.md's refusal table: a refusal, its
    /// status, and a piece of the one-line body.
    async fn check(refusal: Refusal, status: u16, body_part: &str) {
        assert_eq!(refusal.status().as_u16(), status, "{refusal:?}");
        let response = refusal.to_response();
        assert_eq!(response.status().as_u16(), status, "{refusal:?}");
        let line = body(&refusal).await;
        assert!(line.contains(body_part), "{refusal:?}: {line:?}");
        assert_eq!(line.lines().count(), 1, "one line: {line:?}");
    }

    #[tokio::test]
    async fn every_refusal_has_its_documented_status() {
        let io = || std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let table: Vec<(Refusal, u16, &str)> = vec![
            (
                Refusal::BadHandshake("method must be GET"),
                400,
                "method must be GET",
            ),
            (Refusal::BadPath(RouteError::NotAbsolute), 400, "bad path"),
            (Refusal::BadPath(RouteError::NotUtf8), 400, "UTF-8"),
            (
                Refusal::BadPath(RouteError::ControlCharacter),
                400,
                "control",
            ),
            (
                Refusal::BadPath(RouteError::EmptySegment),
                400,
                "empty segment",
            ),
            (Refusal::BadPath(RouteError::DotSegment), 400, ". or .."),
            (Refusal::BadPath(RouteError::HiddenSegment), 400, "hidden"),
            (
                Refusal::BadPath(RouteError::TooLong),
                414,
                "longer than 107 bytes",
            ),
            (
                Refusal::BadPath(RouteError::OutsideDocroot),
                403,
                "outside the docroot",
            ),
            (
                Refusal::Denied("secret".into()),
                403,
                "\"secret\" is not allowed",
            ),
            (
                Refusal::OriginDenied("https://evil".into()),
                403,
                "https://evil",
            ),
            (
                Refusal::HostNotServed("evil.example".into()),
                421,
                "evil.example",
            ),
            (Refusal::HeaderTooLarge(8192), 431, "8192"),
            (Refusal::HeadTooLarge(32768), 431, "32768"),
            (
                Refusal::NoBackend {
                    name: "chat".into(),
                    cause: RouteError::NotFound,
                },
                404,
                "no socket at this path",
            ),
            (
                Refusal::NoBackend {
                    name: "chat".into(),
                    cause: RouteError::NotSocket,
                },
                404,
                "not a socket",
            ),
            (
                Refusal::NoBackend {
                    name: "dir".into(),
                    cause: RouteError::NoProtocolMatch,
                },
                404,
                "subprotocol",
            ),
            (
                Refusal::UpgradeRequired("chat".into()),
                426,
                "upgrade required",
            ),
            (Refusal::UnsupportedVersion("8".into()), 426, "13"),
            (Refusal::ConnectionLimit(10), 503, "limit 10"),
            (
                Refusal::BackendUnavailable {
                    name: "chat".into(),
                    cause: io(),
                },
                502,
                "refused the connection",
            ),
            (
                Refusal::BackendFailed {
                    name: "chat".into(),
                    cause: BackendFailure::ClosedBeforeAnswer,
                },
                502,
                "instead of answering OPEN",
            ),
            (
                Refusal::BackendFailed {
                    name: "chat".into(),
                    cause: BackendFailure::RejectStatus(302),
                },
                502,
                "302",
            ),
            (Refusal::BackendTimeout("chat".into()), 504, "in time"),
            (
                Refusal::AuthorizerRefused {
                    name: "chat".into(),
                    status: StatusCode::UNAUTHORIZED,
                },
                401,
                "authorizer refused",
            ),
            (
                Refusal::AuthorizerFailed {
                    name: "chat".into(),
                    cause: AuthorizerError::Status(StatusCode::INTERNAL_SERVER_ERROR),
                },
                503,
                "authorizer of \"chat\" is unavailable: it answered 500",
            ),
            (
                Refusal::AuthorizerFailed {
                    name: "chat".into(),
                    cause: AuthorizerError::Timeout(std::time::Duration::from_secs(2)),
                },
                503,
                "no answer within 2s",
            ),
            (Refusal::BodyTooLarge(1024), 413, "larger than 1024 bytes"),
            (
                Refusal::BodyTimeout(std::time::Duration::from_secs(10)),
                408,
                "did not arrive",
            ),
            (
                Refusal::BadResponse {
                    name: "api".into(),
                    cause: ResponseFailure::Status(302),
                },
                502,
                "302",
            ),
            (
                Refusal::BadResponse {
                    name: "api".into(),
                    cause: ResponseFailure::ClosedBeforeResponse,
                },
                502,
                "instead of answering REQUEST",
            ),
            (Refusal::RawAndDirect("x".into()), 500, "raw and a direct"),
            (
                Refusal::BackendRejected {
                    name: "chat".into(),
                    status: StatusCode::UNAUTHORIZED,
                    reason: "log in first".into(),
                },
                401,
                "log in first",
            ),
        ];
        for (refusal, status, body_part) in table {
            check(refusal, status, body_part).await;
        }
    }

    #[test]
    fn protocol_headers_come_with_their_statuses() {
        let version = Refusal::UnsupportedVersion("8".into()).to_response();
        assert_eq!(version.headers()[SEC_WEBSOCKET_VERSION], "13");
        let upgrade = Refusal::UpgradeRequired("chat".into()).to_response();
        assert_eq!(upgrade.headers()[UPGRADE], "websocket");
    }

    #[tokio::test]
    async fn a_reject_reason_is_the_body_as_one_line() {
        let refusal = Refusal::BackendRejected {
            name: "chat".into(),
            status: StatusCode::FORBIDDEN,
            reason: "line one\nline two\r".into(),
        };
        assert_eq!(body(&refusal).await, "line one line two \n");
        let empty = Refusal::BackendRejected {
            name: "chat".into(),
            status: StatusCode::FORBIDDEN,
            reason: String::new(),
        };
        assert_eq!(body(&empty).await, "Forbidden\n");
    }
}
