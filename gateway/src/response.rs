//! The one response body type of the gateway, and the short plain-text
//! responses that refusals use. Static files bring their own body (`static_files`).

use std::io;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};

/// Every response body: a static file stream, a line of text, or nothing.
pub(crate) type Body = UnsyncBoxBody<Bytes, io::Error>;

/// A body with no bytes (`101` responses).
pub(crate) fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A `text/plain` response whose body is `line` and a newline.
pub(crate) fn text(status: StatusCode, line: &str) -> Response<Body> {
    let body = Full::new(Bytes::from(format!("{line}\n")))
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
