//! The broker's HTTP APIs over a small request type of its own: the bearer
//! token every API call must carry (`--api-token-file`), the body limit, and
//! dispatch to the dialect's API (`tokens::http_api`, `channels::http_api`).
//!
//! The gateway's HTTP-to-backend requests reach [`handle`] through the
//! backend library's request handler; this module does not know the link.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use backend::{Request, RequestHandler, Response};
use subtle::ConstantTimeEq;

use super::{Broker, Dialect, channels, tokens};

/// The largest request body the APIs take (bodies carry one message and a little more).
pub fn max_body(broker: &Broker) -> usize {
    broker.options.max_message.saturating_add(4096)
}

/// One HTTP request to the broker's name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpRequest {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path below the backend's name: empty or `/` for the name itself, `/broadcast`, ...
    pub path: String,
    /// The query string without `?`.
    pub query: String,
    /// The request headers, names in lower case.
    pub headers: BTreeMap<String, String>,
    /// The body.
    pub body: Vec<u8>,
}

/// The answer to an [`HttpRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The `Content-Type`, empty when there is no body.
    pub content_type: &'static str,
    /// The body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// A JSON answer.
    pub fn json(status: u16, value: &serde_json::Value) -> HttpResponse {
        HttpResponse {
            status,
            content_type: "application/json",
            body: value.to_string().into_bytes(),
        }
    }

    /// A JSON error answer `{"error": message}`.
    pub fn error(status: u16, message: &str) -> HttpResponse {
        HttpResponse::json(status, &serde_json::json!({ "error": message }))
    }

    /// An answer without a body.
    pub fn empty(status: u16) -> HttpResponse {
        HttpResponse {
            status,
            content_type: "",
            body: Vec::new(),
        }
    }
}

impl From<Request> for HttpRequest {
    /// The gateway's request as the APIs see it: the path below the name, one
    /// value per header name (the last one the client sent).
    fn from(request: Request) -> HttpRequest {
        HttpRequest {
            path: request.subpath().to_owned(),
            method: request.method,
            query: request.query,
            headers: request.headers.into_iter().collect(),
            body: request.body.to_vec(),
        }
    }
}

impl From<HttpResponse> for Response {
    fn from(answer: HttpResponse) -> Response {
        let response = Response::new(answer.status).with_body(answer.body);
        if answer.content_type.is_empty() {
            response
        } else {
            response.with_header("content-type", answer.content_type)
        }
    }
}

/// The backend library's request handler for the broker that `setup` puts
/// in `broker` (the handler exists before the broker: `launch` takes it
/// with the options, then runs the set-up that builds the broker).
pub fn request_handler(broker: Arc<OnceLock<Arc<Broker>>>) -> RequestHandler {
    RequestHandler::new(move |request: Request| {
        let broker = broker.get().cloned();
        async move {
            match broker {
                Some(broker) => handle(&broker, &HttpRequest::from(request)).await.into(),
                None => Response::text(503, "the broker is still starting"),
            }
        }
    })
}

/// The secret the API's callers present as `Authorization: Bearer <token>`.
#[derive(Clone)]
pub struct ApiToken(String);

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("ApiToken(..)")
    }
}

/// Why `--api-token-file` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ApiTokenError {
    /// The file cannot be read.
    #[error("cannot read the API token file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The token is shorter than [`MIN_API_TOKEN_LEN`] or holds whitespace inside.
    #[error("the API token in {0} must be at least 16 characters without whitespace")]
    Weak(String),
}

/// The shortest API token accepted.
pub const MIN_API_TOKEN_LEN: usize = 16;

impl ApiToken {
    /// The token in `text`, without surrounding whitespace.
    pub fn parse(text: &str, origin: &str) -> Result<ApiToken, ApiTokenError> {
        let token = text.trim();
        if token.len() < MIN_API_TOKEN_LEN || token.contains(char::is_whitespace) {
            return Err(ApiTokenError::Weak(origin.to_owned()));
        }
        Ok(ApiToken(token.to_owned()))
    }

    /// Reads the token from `path` (at most 4 KiB).
    pub fn from_file(path: &Path) -> Result<ApiToken, ApiTokenError> {
        let read_error = |source| ApiTokenError::Read {
            path: path.display().to_string(),
            source,
        };
        let text = std::fs::read_to_string(path).map_err(read_error)?;
        if text.len() > 4096 {
            return Err(ApiTokenError::Weak(path.display().to_string()));
        }
        ApiToken::parse(&text, &path.display().to_string())
    }

    /// Whether `presented` is this token, in time independent of where they differ.
    fn matches(&self, presented: &str) -> bool {
        self.0.as_bytes().ct_eq(presented.as_bytes()).into()
    }
}

/// Checks `Authorization: Bearer <token>`: `403` when the API is disabled
/// (no token configured), `401` when the header is missing or wrong.
pub fn check_bearer(
    request: &HttpRequest,
    api_token: Option<&ApiToken>,
) -> Result<(), HttpResponse> {
    let Some(api_token) = api_token else {
        return Err(HttpResponse::error(
            403,
            "the HTTP API is disabled: start the broker with --api-token-file",
        ));
    };
    let presented = request.headers.get("authorization").and_then(|value| {
        let (scheme, token) = value.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    });
    match presented {
        Some(token) if api_token.matches(token) => Ok(()),
        Some(_) => Err(HttpResponse::error(401, "wrong bearer token")),
        None => Err(HttpResponse::error(
            401,
            "missing Authorization: Bearer <token>",
        )),
    }
}

/// Answers one API request: the bearer check, the body limit, then the dialect's API.
pub async fn handle(broker: &Broker, request: &HttpRequest) -> HttpResponse {
    if let Err(refusal) = check_bearer(request, broker.api_token.as_ref()) {
        return refusal;
    }
    if request.body.len() > max_body(broker) {
        return HttpResponse::error(413, "request body too large");
    }
    match broker.options.dialect {
        Dialect::Tokens => tokens::http_api(broker, request).await,
        Dialect::Channels => channels::http_api(broker, request).await,
        Dialect::Wsmsgbroker | Dialect::Achex => {
            HttpResponse::error(404, "this dialect has no HTTP API")
        }
    }
}

#[cfg(test)]
mod tests;
