//! Fuzzes the gateway's permessage-deflate negotiation (`gateway::deflate`,
//! through `gateway::fuzz_api`): the `Sec-WebSocket-Extensions` parser and
//! the choice of an offer.
//!
//! The input is one or more header values, one per line. Checked: no panic;
//! an agreement's response header parses back as exactly one
//! permessage-deflate extension with both no-context-takeover parameters and
//! at most a `server_max_window_bits` of 8 to 15, which is the window the
//! agreement compresses with; and a header that does not parse agrees nothing.

#![no_main]

use gateway::fuzz_api::{negotiate_deflate, parse_extensions};
use http::HeaderMap;
use http::header::{HeaderValue, SEC_WEBSOCKET_EXTENSIONS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut headers = HeaderMap::new();
    let mut all_parse = true;
    for line in data.split(|byte| *byte == b'\n') {
        let Ok(value) = HeaderValue::from_bytes(line) else {
            continue;
        };
        if let Ok(text) = value.to_str() {
            all_parse &= parse_extensions(text).is_some();
        } else {
            all_parse = false;
        }
        headers.append(SEC_WEBSOCKET_EXTENSIONS, value);
    }
    let Some((params, response)) = negotiate_deflate(&headers) else {
        return;
    };
    assert!(all_parse, "agreed on a header that does not parse");
    assert!(params.is_valid());
    assert!(params.server_no_context_takeover && params.client_no_context_takeover);
    let offers = parse_extensions(&response).expect("the response parses");
    assert_eq!(offers.len(), 1, "{response}");
    let offer = &offers[0];
    assert_eq!(offer.name, "permessage-deflate");
    let mut window = None;
    for (name, value) in &offer.params {
        match (name.as_str(), value) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => {}
            ("server_max_window_bits", Some(bits)) => {
                window = Some(bits.parse::<u8>().expect("digits"))
            }
            other => panic!("unexpected response parameter {other:?}"),
        }
    }
    assert_eq!(window.unwrap_or(15), params.server_max_window_bits);
});
