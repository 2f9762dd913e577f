//! Raw HTTP/1.1 over a `TcpStream` (or TLS: [`request_tls`]), with exact
//! control over every header byte.
//!
//! Refusal tests need requests no client library would send (a wrong
//! `Sec-WebSocket-Version`, a path with `%00`, no key at all), so requests
//! are written as bytes and responses parsed by hand: the status line, the
//! headers, and a body framed by `Content-Length`, chunked encoding, or EOF.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, bail};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{EVENT_DEADLINE, tls, wait};

/// The key of RFC 6455's example handshake, and the accept value it must produce.
pub const SAMPLE_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
/// `Sec-WebSocket-Accept` for [`SAMPLE_KEY`] (RFC 6455 section 1.3).
pub const SAMPLE_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// A parsed HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// Headers in the order received, names as sent.
    pub headers: Vec<(String, String)>,
    /// The body (empty for `101` and other 1xx responses).
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(header, _)| header.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// The body as text, lossily.
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl std::fmt::Display for HttpResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {:?}", self.status, self.body_text().trim_end())
    }
}

/// A WebSocket upgrade request whose headers a test can change one by one.
///
/// Starts as a valid RFC 6455 handshake (`Upgrade`, `Connection`, the sample
/// key, version 13); `Host` is added when rendering unless set explicitly.
#[derive(Debug, Clone)]
pub struct HandshakeRequest {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    omit_host: bool,
}

impl HandshakeRequest {
    /// A valid handshake for `path`, sent exactly as given (no normalisation or encoding).
    pub fn new(path: &str) -> HandshakeRequest {
        HandshakeRequest {
            method: "GET".to_owned(),
            path: path.to_owned(),
            headers: vec![
                ("Upgrade".to_owned(), "websocket".to_owned()),
                ("Connection".to_owned(), "Upgrade".to_owned()),
                ("Sec-WebSocket-Key".to_owned(), SAMPLE_KEY.to_owned()),
                ("Sec-WebSocket-Version".to_owned(), "13".to_owned()),
            ],
            omit_host: false,
        }
    }

    /// Replaces the method.
    pub fn method(mut self, method: &str) -> HandshakeRequest {
        method.clone_into(&mut self.method);
        self
    }

    /// Sets header `name` to `value`, replacing any value it had.
    pub fn header(mut self, name: &str, value: &str) -> HandshakeRequest {
        self = self.without(name);
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Removes header `name`.
    pub fn without(mut self, name: &str) -> HandshakeRequest {
        self.headers
            .retain(|(header, _)| !header.eq_ignore_ascii_case(name));
        self
    }

    /// Sends no Host header at all (a malformed HTTP/1.1 request).
    pub fn without_host(mut self) -> HandshakeRequest {
        self.omit_host = true;
        self.without("Host")
    }

    /// The request bytes, with `Host: <host>` first unless a Host header was
    /// set or [`HandshakeRequest::without_host`] was asked for.
    pub fn render(&self, host: &str) -> String {
        let mut request = format!("{} {} HTTP/1.1\r\n", self.method, self.path);
        let has_host = self
            .headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("host"));
        if !has_host && !self.omit_host {
            request.push_str(&format!("Host: {host}\r\n"));
        }
        for (name, value) in &self.headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        request
    }
}

/// Connects to `addr`, writes `request` and reads one response (at most [`EVENT_DEADLINE`]).
pub async fn request(addr: SocketAddr, request: &[u8]) -> anyhow::Result<HttpResponse> {
    let mut stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream
        .write_all(request)
        .await
        .context("writing the request")?;
    let what = format!(
        "the response to {:?}",
        String::from_utf8_lossy(request.split(|b| *b == b'\r').next().unwrap_or_default())
    );
    wait::within(&what, EVENT_DEADLINE, read_response(&mut stream)).await?
}

/// Reads one response from `stream`. A `101` leaves the stream just past the
/// headers (anything the server sent after them is dropped).
pub async fn read_response(stream: &mut TcpStream) -> anyhow::Result<HttpResponse> {
    read_response_from(stream).await
}

/// Connects to `addr` over TLS (trusting what `config` trusts, asking for
/// [`tls::SERVER_NAME`]), writes `request` and reads one response (at most
/// [`EVENT_DEADLINE`]).
pub async fn request_tls(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    request: &[u8],
) -> anyhow::Result<HttpResponse> {
    let mut stream = tls::connect(addr, tls::SERVER_NAME, config).await?;
    stream
        .write_all(request)
        .await
        .context("writing the request")?;
    wait::within(
        "the response over TLS",
        EVENT_DEADLINE,
        read_response_from(&mut stream),
    )
    .await?
}

/// [`read_response`] from any stream (TCP or TLS).
pub async fn read_response_from<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> anyhow::Result<HttpResponse> {
    let mut buffer = Vec::new();
    let header_end = loop {
        if let Some(end) = find(&buffer, b"\r\n\r\n") {
            break end;
        }
        let n_read = stream
            .read_buf(&mut buffer)
            .await
            .context("reading the response head")?;
        if n_read == 0 {
            bail!(
                "connection closed before a complete response head; got {:?}",
                String::from_utf8_lossy(&buffer)
            );
        }
    };
    let head = std::str::from_utf8(&buffer[..header_end]).context("response head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("malformed status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned()))
        .collect();
    let mut response = HttpResponse {
        status,
        headers,
        body: Vec::new(),
    };
    if (100..200).contains(&status) {
        return Ok(response);
    }
    let mut rest = buffer.split_off(header_end + 4);
    if let Some(length) = response.header("content-length") {
        let length: usize = length.parse().context("malformed Content-Length")?;
        while rest.len() < length {
            if stream.read_buf(&mut rest).await? == 0 {
                bail!(
                    "connection closed after {} of {length} body bytes",
                    rest.len()
                );
            }
        }
        rest.truncate(length);
        response.body = rest;
    } else if response
        .header("transfer-encoding")
        .is_some_and(|value| value.eq_ignore_ascii_case("chunked"))
    {
        response.body = read_chunked(stream, rest).await?;
    } else {
        stream.read_to_end(&mut rest).await?;
        response.body = rest;
    }
    Ok(response)
}

async fn read_chunked<S: AsyncRead + Unpin>(
    stream: &mut S,
    mut buffer: Vec<u8>,
) -> anyhow::Result<Vec<u8>> {
    let mut body = Vec::new();
    let mut position = 0;
    loop {
        let line_end = loop {
            if let Some(end) = find(&buffer[position..], b"\r\n") {
                break position + end;
            }
            if stream.read_buf(&mut buffer).await? == 0 {
                bail!("connection closed inside a chunk header");
            }
        };
        let size_text = std::str::from_utf8(&buffer[position..line_end])?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .with_context(|| format!("malformed chunk size {size_text:?}"))?;
        let data_start = line_end + 2;
        while buffer.len() < data_start + size + 2 {
            if stream.read_buf(&mut buffer).await? == 0 {
                if size == 0 {
                    return Ok(body);
                }
                bail!("connection closed inside a chunk");
            }
        }
        if size == 0 {
            return Ok(body);
        }
        body.extend_from_slice(&buffer[data_start..data_start + size]);
        position = data_start + size + 2;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}
