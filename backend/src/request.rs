//! Plain HTTP requests that the gateway forwards to a backend (`wsgate --http
//! GLOB`): [`Request`] and [`Response`], and the [`RequestHandler`] a server
//! gives [`crate::ServeOptions`] beside its session handler, so one process
//! and one socket serve both its WebSocket clients and its HTTP API.
//!
//! On the link a request is one REQUEST record and its answer one RESPONSE
//! record (`docs/link-protocol.md`); `serve` reads the first record of each
//! link and sends a REQUEST here. A backend without a request handler
//! answers every request `404` with a line saying so. Reading the records is
//! `session`'s job; deciding what to answer is the server's.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::SinkExt;
use link::LinkStream;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use link::{LINK_VERSION, LinkError, Record, RecordCodec, RequestHead, ResponseHead, TlsInfo};

/// One plain HTTP request from a client, as the gateway forwarded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The gateway's id of this request, for correlating logs.
    pub id: u64,
    /// The backend name the request was routed to (this socket's name).
    pub name: String,
    /// The method, e.g. `GET` or `POST`.
    pub method: String,
    /// The path as the client sent it, e.g. `/api/publish`: the name and anything below it.
    pub path: String,
    /// The query string without `?`, empty when there is none.
    pub query: String,
    /// The request headers but the hop-by-hop ones, in order, names in lower case.
    pub headers: Vec<(String, String)>,
    /// The client's address as the gateway saw it (`ip:port`).
    pub peer: String,
    /// Present when the client reached the gateway over TLS.
    pub tls: Option<TlsInfo>,
    /// The body, at most the gateway's `--max-request-body` bytes.
    pub body: Bytes,
}

impl Request {
    fn from_head(head: RequestHead, body: Bytes) -> Request {
        Request {
            id: head.id,
            name: head.name,
            method: head.method,
            path: head.path,
            query: head.query,
            headers: head.headers,
            peer: head.peer,
            tls: head.tls,
            body,
        }
    }

    /// The first value of header `name` (compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(header, _)| header.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// The path below the backend's name: `/publish` for `/api/publish` on
    /// `api`, `/` for `/api` itself.
    pub fn subpath(&self) -> &str {
        let below = self
            .path
            .strip_prefix('/')
            .and_then(|path| path.strip_prefix(self.name.as_str()))
            .filter(|below| below.is_empty() || below.starts_with('/'))
            .unwrap_or(&self.path);
        if below.is_empty() { "/" } else { below }
    }
}

/// A backend's answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The HTTP status, 200 to 599 (the gateway answers `502` for any other).
    pub status: u16,
    /// Response headers in order. The gateway drops hop-by-hop headers and
    /// sets `Content-Length` itself.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Bytes,
}

impl Response {
    /// A response with `status`, no headers and an empty body.
    pub fn new(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// A `application/json` response whose body is `value`.
    pub fn json<T: serde::Serialize + ?Sized>(status: u16, value: &T) -> Response {
        match serde_json::to_vec(value) {
            Ok(body) => Response::new(status)
                .with_header("content-type", "application/json")
                .with_body(body),
            Err(error) => Response::text(500, &format!("cannot serialise the response: {error}")),
        }
    }

    /// A `text/plain` response whose body is `text` and a newline.
    pub fn text(status: u16, text: &str) -> Response {
        Response::new(status)
            .with_header("content-type", "text/plain; charset=utf-8")
            .with_body(format!("{text}\n"))
    }

    /// This response with one more header.
    pub fn with_header(mut self, name: &str, value: &str) -> Response {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// This response with `body`.
    pub fn with_body(mut self, body: impl Into<Bytes>) -> Response {
        self.body = body.into();
        self
    }

    fn into_record(self) -> Record {
        let head = ResponseHead {
            status: self.status,
            headers: self.headers,
        };
        Record::Response(head.to_payload(&self.body))
    }
}

type BoxedHandler = dyn Fn(Request) -> Pin<Box<dyn Future<Output = Response> + Send>> + Send + Sync;

/// The server's answer to plain HTTP requests: an async function from
/// [`Request`] to [`Response`], shared by every request.
#[derive(Clone)]
pub struct RequestHandler(Arc<BoxedHandler>);

impl RequestHandler {
    /// Wraps `handler`, e.g. `RequestHandler::new(|request| async move { Response::text(200, "ok") })`.
    pub fn new<H, F>(handler: H) -> RequestHandler
    where
        H: Fn(Request) -> F + Send + Sync + 'static,
        F: Future<Output = Response> + Send + 'static,
    {
        RequestHandler(Arc::new(move |request| Box::pin(handler(request))))
    }
}

impl fmt::Debug for RequestHandler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RequestHandler")
    }
}

/// A link whose first record was a REQUEST, not yet answered.
#[derive(Debug)]
pub(crate) struct PendingRequest {
    /// The link protocol version of the gateway that sent it.
    version: u32,
    pub(crate) request: Request,
    pub(crate) framed: Framed<LinkStream, RecordCodec>,
}

impl PendingRequest {
    /// Parses a REQUEST record's payload; the link then carries only the answer.
    pub(crate) fn new(
        payload: Bytes,
        framed: Framed<LinkStream, RecordCodec>,
    ) -> Result<PendingRequest, LinkError> {
        let (head, body) = RequestHead::from_payload(payload)?;
        Ok(PendingRequest {
            version: head.version,
            request: Request::from_head(head, body),
            framed,
        })
    }
}

/// Runs `handler` on the request (`404` without one, `501` for a link
/// protocol version this library does not speak) within `timeout`
/// (`503` after it, or at shutdown), and writes its RESPONSE within
/// `write_timeout`. A response too large for the link becomes a `500`.
pub(crate) async fn answer(
    pending: PendingRequest,
    handler: Option<&RequestHandler>,
    timeout: Duration,
    write_timeout: Duration,
    shutdown: &CancellationToken,
) {
    let PendingRequest {
        version,
        request,
        mut framed,
    } = pending;
    let method = request.method.clone();
    let path = request.path.clone();
    let response = match handler {
        _ if version != LINK_VERSION => Response::text(
            501,
            &format!("link protocol version {version} (this backend speaks {LINK_VERSION})"),
        ),
        None => Response::text(
            404,
            &format!(
                "backend {:?} answers no HTTP requests, only WebSocket clients",
                request.name
            ),
        ),
        Some(handler) => tokio::select! {
            answered = tokio::time::timeout(timeout, (handler.0)(request)) => match answered {
                Ok(response) => response,
                Err(_) => {
                    warn!(%method, %path, "request handler did not answer within {timeout:?}");
                    Response::text(503, "the backend did not answer in time")
                }
            },
            () = shutdown.cancelled() => Response::text(503, "the backend is shutting down"),
        },
    };
    let status = response.status;
    let body_len = response.body.len();
    let written = tokio::time::timeout(write_timeout, async {
        match framed.send(response.into_record()).await {
            Err(LinkError::TooLong { len, max }) => {
                warn!(
                    len,
                    max, "response does not fit in a link record; answering 500"
                );
                framed.write_buffer_mut().clear();
                let too_large = Response::text(
                    500,
                    &format!("the backend's response of {len} bytes exceeds its limit of {max}"),
                );
                framed.send(too_large.into_record()).await
            }
            other => other,
        }
    })
    .await;
    match written {
        Ok(Ok(())) => info!(%method, %path, status, body_len, "request answered"),
        Ok(Err(error)) => debug!(%error, "cannot write the response"),
        Err(_) => debug!("response not taken within {write_timeout:?}"),
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::serve::{Listener, ServeOptions, serve};
    use crate::socket_file::SocketFile;

    /// Writes a REQUEST record by hand (as docs/link-protocol.md lays it out)
    /// and reads the RESPONSE: its head as JSON and its body.
    async fn exchange(
        socket: &std::path::Path,
        head: &str,
        body: &[u8],
    ) -> (serde_json::Value, Vec<u8>) {
        let mut link = LinkStream::connect(socket).await.expect("connect");
        let mut payload = (head.len() as u32).to_be_bytes().to_vec();
        payload.extend_from_slice(head.as_bytes());
        payload.extend_from_slice(body);
        let mut record = vec![0x05];
        record.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        record.extend_from_slice(&payload);
        link.write_all(&record).await.expect("write REQUEST");
        let mut answer = Vec::new();
        link.read_to_end(&mut answer).await.expect("read RESPONSE");
        assert_eq!(answer[0], 0x06, "a RESPONSE record");
        let len = u32::from_be_bytes(answer[1..5].try_into().expect("4 bytes")) as usize;
        assert_eq!(answer.len(), 5 + len, "one record, then the link closes");
        let head_len = u32::from_be_bytes(answer[5..9].try_into().expect("4 bytes")) as usize;
        let head = serde_json::from_slice(&answer[9..9 + head_len]).expect("JSON head");
        (head, answer[9 + head_len..].to_vec())
    }

    const HEAD: &str = r#"{"version":1,"id":9,"name":"api","method":"POST","path":"/api/echo","query":"q=1","peer":"127.0.0.1:7","headers":[["content-type","application/octet-stream"]]}"#;

    #[tokio::test]
    async fn a_request_reaches_the_handler_and_its_response_the_link() {
        let docroot = tempfile::tempdir().expect("tempdir");
        let mut socket_file = SocketFile::bind(docroot.path(), "api").expect("bind");
        let listener = Listener::new(&mut socket_file).expect("listener");
        let options = ServeOptions {
            request_handler: Some(RequestHandler::new(|request: Request| async move {
                Response::new(201)
                    .with_header("x-subpath", request.subpath())
                    .with_header("x-query", &request.query)
                    .with_header("x-type", request.header("Content-Type").unwrap_or("none"))
                    .with_body(request.body)
            })),
            ..ServeOptions::default()
        };
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(listener, options, shutdown.clone(), |_, _| async {}));
        let body = [0u8, 1, 255, b'x'];
        let (head, answer) = exchange(socket_file.path(), HEAD, &body).await;
        assert_eq!(head["status"], 201);
        assert_eq!(
            head["headers"],
            serde_json::json!([
                ["x-subpath", "/echo"],
                ["x-query", "q=1"],
                ["x-type", "application/octet-stream"]
            ])
        );
        assert_eq!(answer, body);
        shutdown.cancel();
        server.await.expect("serve task").expect("serve");
    }

    #[tokio::test]
    async fn without_a_handler_every_request_gets_404() {
        let docroot = tempfile::tempdir().expect("tempdir");
        let mut socket_file = SocketFile::bind(docroot.path(), "ws").expect("bind");
        let listener = Listener::new(&mut socket_file).expect("listener");
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(
            listener,
            ServeOptions::default(),
            shutdown.clone(),
            |_, _| async {},
        ));
        let (head, answer) = exchange(socket_file.path(), HEAD, b"").await;
        assert_eq!(head["status"], 404);
        let text = String::from_utf8(answer).expect("text");
        assert!(text.contains("answers no HTTP requests"), "{text}");
        let newer = HEAD.replace(r#""version":1"#, r#""version":2"#);
        let (head, _) = exchange(socket_file.path(), &newer, b"").await;
        assert_eq!(head["status"], 501);
        shutdown.cancel();
        server.await.expect("serve task").expect("serve");
    }

    fn request(name: &str, path: &str) -> Request {
        Request {
            id: 1,
            name: name.to_owned(),
            method: "GET".to_owned(),
            path: path.to_owned(),
            query: String::new(),
            headers: vec![("content-type".to_owned(), "text/plain".to_owned())],
            peer: "127.0.0.1:1".to_owned(),
            tls: None,
            body: Bytes::new(),
        }
    }

    #[test]
    fn subpath_is_what_follows_the_name() {
        for (name, path, subpath) in [
            ("api", "/api", "/"),
            ("api", "/api/", "/"),
            ("api", "/api/publish", "/publish"),
            ("group/item", "/group/item/x/y", "/x/y"),
        ] {
            assert_eq!(request(name, path).subpath(), subpath, "{path}");
        }
        assert_eq!(
            request("api", "/api").header("Content-Type"),
            Some("text/plain")
        );
    }

    #[test]
    fn constructors_set_type_and_body() {
        let json = Response::json(201, &serde_json::json!({"ok": true}));
        assert_eq!(json.status, 201);
        assert_eq!(
            json.headers,
            [("content-type".to_owned(), "application/json".to_owned())]
        );
        assert_eq!(&json.body[..], br#"{"ok":true}"#);
        let text = Response::text(404, "no");
        assert_eq!(&text.body[..], b"no\n");
    }
}
