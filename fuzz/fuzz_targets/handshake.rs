//! Fuzzes the gateway's RFC 6455 request validation (`gateway::handshake`,
//! through `gateway::fuzz_api`) and the `101` response built from its result.
//!
//! The input reads like an HTTP/1.1 request head: a request line
//! (`METHOD TARGET VERSION`), then one `Name: value` header per line. Lines
//! that do not make a valid method, target or header are skipped, as hyper
//! would have refused them before the gateway saw the request. Checked: no
//! panic, a refusal is 400 or 426, and an accepted request holds what the
//! rest of the gateway relies on. The request's headers are then offered as
//! a backend's ACCEPT headers, which must not override the handshake's own.

#![no_main]

use std::collections::BTreeMap;

use gateway::fuzz_api::{switching_protocols_headers, validate_handshake};
use http::header::{HeaderName, HeaderValue};
use http::{Method, Request, Version};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(request) = build_request(data) else {
        return;
    };
    let upgrade = match validate_handshake(&request) {
        Ok(upgrade) => upgrade,
        Err(status) => {
            assert!(status == 400 || status == 426, "refused with {status}");
            return;
        }
    };
    assert_eq!(request.method(), Method::GET);
    assert!(request.version() >= Version::HTTP_11);
    assert!(!upgrade.host.is_empty() && upgrade.host.trim() == upgrade.host);
    let key = upgrade.key.as_bytes();
    assert_eq!(
        key.len(),
        24,
        "16 bytes of padded base64: {:?}",
        upgrade.key
    );
    for (idx, protocol) in upgrade.protocols.iter().enumerate() {
        assert!(!protocol.is_empty());
        assert!(protocol.bytes().all(is_token_byte), "{protocol:?}");
        assert!(!upgrade.protocols[..idx].contains(protocol), "duplicate");
    }
    for name in upgrade.forwarded_headers.keys() {
        assert_eq!(name.to_ascii_lowercase(), *name);
    }

    let extra: BTreeMap<String, String> = request
        .headers()
        .iter()
        .filter_map(|(name, value)| {
            Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
        })
        .collect();
    let protocol = upgrade.protocols.first().map(String::as_str);
    let headers = switching_protocols_headers(&upgrade.key, protocol, &extra);
    let only = |name: &str| -> Vec<&HeaderValue> { headers.get_all(name).iter().collect() };
    assert_eq!(only("upgrade"), ["websocket"]);
    assert_eq!(only("connection"), ["Upgrade"]);
    assert_eq!(only("sec-websocket-accept").len(), 1);
    match protocol {
        Some(protocol) => assert_eq!(only("sec-websocket-protocol"), [protocol]),
        None => assert!(only("sec-websocket-protocol").is_empty()),
    }
    for (name, _) in &headers {
        let name = name.as_str();
        assert!(name != "content-length" && name != "transfer-encoding");
        assert!(
            !name.starts_with("sec-websocket-")
                || name == "sec-websocket-accept"
                || name == "sec-websocket-protocol",
            "backend set {name}"
        );
    }
});

/// A request from the input's lines, or `None` when the request line is unusable.
fn build_request(data: &[u8]) -> Option<Request<()>> {
    let mut lines = data
        .split(|byte| *byte == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line));
    let mut request_line = lines.next()?.split(|byte| *byte == b' ');
    let method = Method::from_bytes(request_line.next()?).ok()?;
    let target = http::Uri::try_from(request_line.next().unwrap_or(b"/")).ok()?;
    let version = match request_line.next() {
        Some(b"HTTP/1.0") => Version::HTTP_10,
        Some(b"HTTP/0.9") => Version::HTTP_09,
        Some(b"HTTP/2") => Version::HTTP_2,
        _ => Version::HTTP_11,
    };
    let mut builder = Request::builder()
        .method(method)
        .uri(target)
        .version(version);
    let headers = builder.headers_mut()?;
    for line in lines {
        let Some(colon) = line.iter().position(|byte| *byte == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii_start());
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            headers.append(name, value);
        }
    }
    builder.body(()).ok()
}

/// RFC 7230 `tchar`.
fn is_token_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}
