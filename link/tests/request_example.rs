//! The REQUEST/RESPONSE example of docs/link-protocol.md, byte for byte: the
//! heads shown are what `RequestHead` and `ResponseHead` write, and the
//! record and head-length bytes shown are what the codec writes for them.

use bytes::BytesMut;
use link::{LINK_VERSION, Record, RecordCodec, RequestHead, ResponseHead};
use tokio_util::codec::{Decoder, Encoder};

const DOC: &str = include_str!("../../docs/link-protocol.md");

/// The example block of the "## HTTP requests" section: the hex bytes of
/// each arrow line (before its comment), and the JSON lines, in order.
fn example() -> (Vec<Vec<u8>>, Vec<String>) {
    let section = DOC
        .split("## HTTP requests")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("docs/link-protocol.md has an HTTP requests section");
    let block = section
        .split("Example:")
        .nth(1)
        .and_then(|rest| rest.split("```text").nth(1))
        .and_then(|rest| rest.split("```").next())
        .expect("the example is a text block");
    let mut hex_lines = Vec::new();
    let mut json_lines = Vec::new();
    for line in block.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('{') {
            json_lines.push(trimmed.to_owned());
        } else if let Some(arrow) = line.chars().next().filter(|c| *c == '→' || *c == '←') {
            let bytes = line[arrow.len_utf8()..]
                .split_whitespace()
                .map_while(|token| {
                    u8::from_str_radix(token, 16)
                        .ok()
                        .filter(|_| token.len() == 2)
                })
                .collect();
            hex_lines.push(bytes);
        }
    }
    (hex_lines, json_lines)
}

fn encode(record: Record) -> Vec<u8> {
    let mut buffer = BytesMut::new();
    RecordCodec::new(1024)
        .encode(record, &mut buffer)
        .expect("encodes");
    buffer.to_vec()
}

#[test]
fn the_request_and_response_examples_are_what_the_codec_writes() {
    let (hex, json) = example();
    assert_eq!(hex.len(), 6, "header, head length and body of each record");
    assert_eq!(json.len(), 2, "one head each");
    let request_head = RequestHead {
        version: LINK_VERSION,
        id: 8,
        name: "api".into(),
        method: "POST".into(),
        path: "/api/publish".into(),
        query: "x=1".into(),
        peer: "127.0.0.1:50314".into(),
        headers: vec![
            ("host".into(), "127.0.0.1:8080".into()),
            ("content-length".into(), "2".into()),
        ],
        tls: None,
    };
    assert_eq!(serde_json::to_string(&request_head).expect("JSON"), json[0]);
    let request_bytes = encode(Record::Request(request_head.to_payload(&hex[2])));
    let shown: Vec<u8> = [&hex[0][..], &hex[1], json[0].as_bytes(), &hex[2]].concat();
    assert_eq!(request_bytes, shown);
    assert_eq!(hex[2], b"hi");

    let response_head = ResponseHead {
        status: 202,
        headers: vec![("content-type".into(), "text/plain".into())],
    };
    assert_eq!(
        serde_json::to_string(&response_head).expect("JSON"),
        json[1]
    );
    let shown: Vec<u8> = [&hex[3][..], &hex[4], json[1].as_bytes(), &hex[5]].concat();
    assert_eq!(
        encode(Record::Response(response_head.to_payload(b"ok\n"))),
        shown
    );

    // And back: the bytes decode to the same heads and bodies.
    let mut buffer = BytesMut::from(&shown[..]);
    let Some(Record::Response(payload)) =
        RecordCodec::new(1024).decode(&mut buffer).expect("decodes")
    else {
        panic!("a RESPONSE record");
    };
    let (head, body) = ResponseHead::from_payload(payload).expect("parses");
    assert_eq!(head, response_head);
    assert_eq!(&body[..], b"ok\n");
}
