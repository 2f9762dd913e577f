//! RFC 6455 section 4.2: recognising an upgrade request, validating it, and
//! building the `101 Switching Protocols` response.
//!
//! Which backend the request reaches, and whether it may, is decided elsewhere
//! (`route`, `access`, `backend`); this module only reads and writes headers.

use std::collections::{BTreeMap, HashSet};

use data_encoding::BASE64;
use http::header::{
    CONNECTION, HOST, HeaderMap, HeaderName, HeaderValue, ORIGIN, SEC_WEBSOCKET_ACCEPT,
    SEC_WEBSOCKET_EXTENSIONS, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL, SEC_WEBSOCKET_VERSION,
    UPGRADE,
};
use http::{Method, Request, Response, StatusCode, Version};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::refusal::Refusal;
use crate::response::{self, Body};

/// Most subprotocols a client may offer; more is a bad handshake. Browsers
/// offer what a page lists, a handful at most.
pub(crate) const MAX_OFFERED_PROTOCOLS: usize = 32;

/// Longest subprotocol name a client may offer.
pub(crate) const MAX_PROTOCOL_LEN: usize = 128;

/// Request headers copied into the OPEN record for the backend.
const FORWARDED_HEADERS: [HeaderName; 7] = [
    HOST,
    ORIGIN,
    http::header::USER_AGENT,
    http::header::COOKIE,
    http::header::AUTHORIZATION,
    http::header::ACCEPT_LANGUAGE,
    HeaderName::from_static("x-forwarded-for"),
];

/// A validated upgrade request: what the rest of the gateway needs from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeRequest {
    /// `Sec-WebSocket-Key`, checked to be 16 bytes of base64.
    pub key: String,
    /// The offered subprotocols, in order, without duplicates.
    pub protocols: Vec<String>,
    /// The `Origin` header, if any.
    pub origin: Option<String>,
    /// The `Host` header.
    pub host: String,
    /// The headers the backend sees in OPEN, names in lower case.
    pub forwarded_headers: BTreeMap<String, String>,
}

/// True when the request asks to switch to WebSocket (`Upgrade: websocket`).
///
/// Such a request is then validated in full; anything else is plain HTTP.
pub fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    has_token(headers, &UPGRADE, "websocket")
}

/// Checks an upgrade request against RFC 6455 section 4.2.1.
pub fn validate<B>(request: &Request<B>) -> Result<UpgradeRequest, Refusal> {
    if request.method() != Method::GET {
        return Err(Refusal::BadHandshake("method must be GET"));
    }
    if request.version() < Version::HTTP_11 {
        return Err(Refusal::BadHandshake("HTTP/1.1 or later required"));
    }
    let headers = request.headers();
    let seen = Seen::gather(headers);
    let host = seen
        .host
        .value()
        .ok_or(Refusal::BadHandshake("missing or repeated Host header"))?;
    if !seen.connection_upgrade {
        return Err(Refusal::BadHandshake("Connection header lacks upgrade"));
    }
    let key = seen
        .key
        .value()
        .ok_or(Refusal::BadHandshake("missing Sec-WebSocket-Key"))?;
    match BASE64.decode(key.as_bytes()) {
        Ok(nonce) if nonce.len() == 16 => {}
        _ => {
            return Err(Refusal::BadHandshake(
                "Sec-WebSocket-Key is not 16 bytes of base64",
            ));
        }
    }
    match seen.version.value() {
        Some("13") => {}
        Some(other) => return Err(Refusal::UnsupportedVersion(other.to_owned())),
        None => return Err(Refusal::UnsupportedVersion(String::new())),
    }
    // RFC 6455 section 4.1: the opening handshake is a GET without a body;
    // a declared body would be read as WebSocket frames after the 101.
    if seen.body {
        return Err(Refusal::BadHandshake("an upgrade request has no body"));
    }
    let origin = match seen.origin.count {
        0 => None,
        1 => Some(
            seen.origin
                .value()
                .ok_or(Refusal::BadHandshake("Origin is not visible ASCII"))?
                .to_owned(),
        ),
        _ => return Err(Refusal::BadHandshake("repeated Origin header")),
    };
    let protocols = if seen.protocols {
        offered_protocols(headers)?
    } else {
        Vec::new()
    };
    Ok(UpgradeRequest {
        key: key.to_owned(),
        protocols,
        origin,
        host: host.to_owned(),
        forwarded_headers: seen.forwarded,
    })
}

/// What [`validate`] needs from the headers, gathered in one pass over
/// them (a look-up per header name was a tenth of a connection's work).
#[derive(Debug, Default)]
struct Seen<'a> {
    host: Once<'a>,
    key: Once<'a>,
    version: Once<'a>,
    origin: Once<'a>,
    /// `Connection` holds the `upgrade` token.
    connection_upgrade: bool,
    /// A `Transfer-Encoding`, or a `Content-Length` other than `0`.
    body: bool,
    /// Any `Sec-WebSocket-Protocol`.
    protocols: bool,
    /// The headers the backend sees in OPEN: each name's values that are
    /// visible ASCII, joined with `, ` in order.
    forwarded: BTreeMap<String, String>,
}

/// A header that must appear once: its first value and how many it has.
#[derive(Debug, Default)]
struct Once<'a> {
    first: Option<&'a HeaderValue>,
    count: usize,
}

impl<'a> Once<'a> {
    fn add(&mut self, value: &'a HeaderValue) {
        self.first.get_or_insert(value);
        self.count += 1;
    }

    /// The one value, as visible ASCII, trimmed and not empty.
    fn value(&self) -> Option<&'a str> {
        if self.count != 1 {
            return None;
        }
        let value = self.first?.to_str().ok()?.trim();
        (!value.is_empty()).then_some(value)
    }
}

impl<'a> Seen<'a> {
    fn gather(headers: &'a HeaderMap) -> Seen<'a> {
        let mut seen = Seen::default();
        for (name, value) in headers {
            if *name == HOST {
                seen.host.add(value);
            } else if *name == SEC_WEBSOCKET_KEY {
                seen.key.add(value);
            } else if *name == SEC_WEBSOCKET_VERSION {
                seen.version.add(value);
            } else if *name == ORIGIN {
                seen.origin.add(value);
            } else if *name == CONNECTION {
                seen.connection_upgrade |= value_has_token(value, "upgrade");
            } else if *name == http::header::TRANSFER_ENCODING {
                seen.body = true;
            } else if *name == http::header::CONTENT_LENGTH {
                seen.body |= value.as_bytes() != b"0";
            } else if *name == SEC_WEBSOCKET_PROTOCOL {
                seen.protocols = true;
            }
            if FORWARDED_HEADERS.contains(name)
                && let Ok(value) = value.to_str()
            {
                match seen.forwarded.get_mut(name.as_str()) {
                    Some(joined) => {
                        joined.push_str(", ");
                        joined.push_str(value);
                    }
                    None => {
                        seen.forwarded
                            .insert(name.as_str().to_owned(), value.to_owned());
                    }
                }
            }
        }
        seen
    }
}

/// The `101` response: accept key, the chosen subprotocol if any, the agreed
/// extensions if any (`deflate::negotiate`), and the backend's extra headers
/// (those that are valid and not the handshake's own).
pub fn switching_protocols(
    key: &str,
    protocol: Option<&str>,
    extensions: Option<&HeaderValue>,
    extra_headers: &BTreeMap<String, String>,
) -> Response<Body> {
    let mut response = Response::new(response::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    for (name, value) in extra_headers {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) else {
            tracing::warn!(header = %name, "backend sent an invalid response header; dropped");
            continue;
        };
        if is_handshake_header(&name) {
            tracing::warn!(header = %name, "backend may not set a handshake header; dropped");
            continue;
        }
        headers.append(name, value);
    }
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    let accept = derive_accept_key(key.as_bytes());
    headers.insert(
        SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).expect("base64 is a valid header value"),
    );
    if let Some(protocol) = protocol
        && let Ok(value) = HeaderValue::from_str(protocol)
    {
        headers.insert(SEC_WEBSOCKET_PROTOCOL, value);
    }
    if let Some(extensions) = extensions {
        headers.insert(SEC_WEBSOCKET_EXTENSIONS, extensions.clone());
    }
    response
}

fn is_handshake_header(name: &HeaderName) -> bool {
    name == UPGRADE
        || name == CONNECTION
        || name.as_str().starts_with("sec-websocket-")
        || name == http::header::CONTENT_LENGTH
        || name == http::header::TRANSFER_ENCODING
}

/// Whether a comma-separated header holds `token`, case-insensitively.
fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .any(|value| value_has_token(value, token))
}

/// Whether one comma-separated header value holds `token`, case-insensitively.
fn value_has_token(value: &HeaderValue, token: &str) -> bool {
    value.to_str().is_ok_and(|value| {
        value
            .split(',')
            .any(|item| item.trim().eq_ignore_ascii_case(token))
    })
}

/// The offered subprotocols: comma-separated tokens over all the header's
/// lines, in order, each once. At most [`MAX_OFFERED_PROTOCOLS`] of at most
/// [`MAX_PROTOCOL_LEN`] bytes: the work is linear in the header and stops at
/// the first token over a limit.
fn offered_protocols(headers: &HeaderMap) -> Result<Vec<String>, Refusal> {
    let mut protocols: Vec<String> = Vec::new();
    let mut seen: HashSet<&str> = HashSet::new();
    for value in headers.get_all(SEC_WEBSOCKET_PROTOCOL) {
        let value = value
            .to_str()
            .map_err(|_| Refusal::BadHandshake("Sec-WebSocket-Protocol is not ASCII"))?;
        for item in value
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
        {
            if item.len() > MAX_PROTOCOL_LEN {
                return Err(Refusal::BadHandshake("an offered subprotocol is too long"));
            }
            if !item.bytes().all(is_token_byte) {
                return Err(Refusal::BadHandshake(
                    "Sec-WebSocket-Protocol holds a value that is not a token",
                ));
            }
            if seen.insert(item) {
                if protocols.len() == MAX_OFFERED_PROTOCOLS {
                    return Err(Refusal::BadHandshake("too many subprotocols offered"));
                }
                protocols.push(item.to_owned());
            }
        }
    }
    Ok(protocols)
}

/// RFC 7230 `tchar`.
fn is_token_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(edit: impl FnOnce(&mut http::request::Builder)) -> Request<()> {
        let mut builder = Request::builder()
            .method("GET")
            .uri("/echo")
            .header("Host", "example.com")
            .header("Upgrade", "websocket")
            .header("Connection", "keep-alive, Upgrade")
            .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
            .header("Sec-WebSocket-Version", "13");
        edit(&mut builder);
        builder.body(()).expect("valid request")
    }

    #[test]
    fn a_valid_request_is_accepted_with_the_rfc_example_key() {
        let parts = request(|_| {});
        assert!(is_websocket_upgrade(parts.headers()));
        let upgrade = validate(&parts).expect("valid");
        assert_eq!(upgrade.host, "example.com");
        let response = switching_protocols(&upgrade.key, None, None, &BTreeMap::new());
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        // RFC 6455 section 1.3's worked example.
        assert_eq!(
            response.headers()[SEC_WEBSOCKET_ACCEPT],
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert!(response.headers().get(SEC_WEBSOCKET_PROTOCOL).is_none());
    }

    #[test]
    fn forwarded_headers_are_joined_in_order_and_the_rest_left_out() {
        let parts = request(|builder| {
            let headers = builder.headers_mut().expect("builder is fine");
            headers.append("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
            headers.append("cookie", HeaderValue::from_static("a=1"));
            headers.append("x-forwarded-for", HeaderValue::from_static("10.0.0.2"));
            headers.append(
                "cookie",
                HeaderValue::from_bytes(b"b=\xff").expect("opaque"),
            );
            headers.append("cookie", HeaderValue::from_static("c=3"));
            headers.append("x-other", HeaderValue::from_static("no"));
            headers.append("content-length", HeaderValue::from_static("0"));
        });
        let upgrade = validate(&parts).expect("a zero Content-Length declares no body");
        let forwarded: Vec<(&str, &str)> = upgrade
            .forwarded_headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        assert_eq!(
            forwarded,
            [
                ("cookie", "a=1, c=3"),
                ("host", "example.com"),
                ("x-forwarded-for", "10.0.0.1, 10.0.0.2"),
            ],
            "a value that is not visible ASCII is left out"
        );
    }

    #[test]
    fn protocols_are_split_trimmed_and_deduplicated() {
        let parts = request(|builder| {
            let headers = builder.headers_mut().expect("builder is fine");
            headers.append(
                SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static("chat, rpc"),
            );
            headers.append(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static("chat,,x"));
        });
        assert_eq!(
            validate(&parts).expect("valid").protocols,
            ["chat", "rpc", "x"]
        );
    }

    #[test]
    fn limits_allow_what_browsers_send() {
        let parts = request(|builder| {
            let headers = builder.headers_mut().expect("builder is fine");
            let offered: Vec<String> = (0..MAX_OFFERED_PROTOCOLS)
                .map(|protocol_idx| format!("p{protocol_idx}"))
                .collect();
            headers.insert(
                SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_str(&offered.join(",")).expect("ascii"),
            );
            headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        });
        let upgrade = validate(&parts).expect("32 protocols and an empty body are fine");
        assert_eq!(upgrade.protocols.len(), MAX_OFFERED_PROTOCOLS);
    }

    #[test]
    fn a_repeated_protocol_counts_once() {
        // 95,000 tokens once took seconds to de-duplicate; repeats of one are one.
        let parts = request(|builder| {
            let offered = vec!["chat"; 95_000].join(",");
            builder.headers_mut().expect("builder is fine").insert(
                SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_str(&offered).expect("ascii"),
            );
        });
        assert_eq!(validate(&parts).expect("valid").protocols, ["chat"]);
    }

    #[test]
    fn invalid_requests_are_refused_with_their_status() {
        let cases: Vec<(&str, Request<()>, u16)> = vec![
            (
                "POST",
                request(|b| {
                    *b = std::mem::take(b).method("POST");
                }),
                400,
            ),
            (
                "short key",
                request(|b| {
                    b.headers_mut()
                        .expect("ok")
                        .insert(SEC_WEBSOCKET_KEY, HeaderValue::from_static("c2hvcnQ="));
                }),
                400,
            ),
            (
                "no key",
                request(|b| {
                    b.headers_mut().expect("ok").remove(SEC_WEBSOCKET_KEY);
                }),
                400,
            ),
            (
                "no connection upgrade",
                request(|b| {
                    b.headers_mut()
                        .expect("ok")
                        .insert(CONNECTION, HeaderValue::from_static("keep-alive"));
                }),
                400,
            ),
            (
                "version 8",
                request(|b| {
                    b.headers_mut()
                        .expect("ok")
                        .insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("8"));
                }),
                426,
            ),
            (
                "chunked body",
                request(|b| {
                    b.headers_mut().expect("ok").insert(
                        http::header::TRANSFER_ENCODING,
                        HeaderValue::from_static("chunked"),
                    );
                }),
                400,
            ),
            (
                "content-length body",
                request(|b| {
                    b.headers_mut()
                        .expect("ok")
                        .insert(http::header::CONTENT_LENGTH, HeaderValue::from_static("5"));
                }),
                400,
            ),
            (
                "33 subprotocols",
                request(|b| {
                    let offered: Vec<String> = (0..=MAX_OFFERED_PROTOCOLS)
                        .map(|protocol_idx| format!("p{protocol_idx}"))
                        .collect();
                    b.headers_mut().expect("ok").insert(
                        SEC_WEBSOCKET_PROTOCOL,
                        HeaderValue::from_str(&offered.join(", ")).expect("ascii"),
                    );
                }),
                400,
            ),
            (
                "over-long subprotocol",
                request(|b| {
                    b.headers_mut().expect("ok").insert(
                        SEC_WEBSOCKET_PROTOCOL,
                        HeaderValue::from_str(&"p".repeat(MAX_PROTOCOL_LEN + 1)).expect("ascii"),
                    );
                }),
                400,
            ),
            (
                "bad protocol token",
                request(|b| {
                    b.headers_mut()
                        .expect("ok")
                        .insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static("a b"));
                }),
                400,
            ),
        ];
        for (what, parts, status) in cases {
            let refusal = validate(&parts).expect_err(what);
            assert_eq!(refusal.status().as_u16(), status, "{what}");
        }
    }

    #[test]
    fn backend_headers_cannot_override_the_handshake() {
        let extra = BTreeMap::from([
            ("x-backend".to_owned(), "yes".to_owned()),
            ("sec-websocket-accept".to_owned(), "forged".to_owned()),
            ("bad header".to_owned(), "x".to_owned()),
        ]);
        let extensions = HeaderValue::from_static("permessage-deflate; server_no_context_takeover");
        let extra = BTreeMap::from_iter(
            extra
                .into_iter()
                .chain([("sec-websocket-extensions".to_owned(), "forged".to_owned())]),
        );
        let response = switching_protocols(
            "dGhlIHNhbXBsZSBub25jZQ==",
            Some("chat"),
            Some(&extensions),
            &extra,
        );
        assert_eq!(response.headers()[SEC_WEBSOCKET_EXTENSIONS], extensions);
        assert_eq!(response.headers()["x-backend"], "yes");
        assert_eq!(
            response.headers()[SEC_WEBSOCKET_ACCEPT],
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert_eq!(response.headers()[SEC_WEBSOCKET_PROTOCOL], "chat");
    }
}
