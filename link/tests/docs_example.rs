//! The example exchange of docs/link-protocol.md, byte for byte: every
//! record of the example decodes to what its comment says and encodes back
//! to the same bytes, and the OPEN example is what `OpenMeta` writes.

use std::collections::BTreeMap;

use bytes::BytesMut;
use link::fanout::{Fanout, FanoutMessage, put_fanout};
use link::{
    AcceptReply, CloseInfo, LINK_VERSION, LinkMode, OpenMeta, Record, RecordCodec, RecordKind,
    RejectReply,
};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::codec::{Decoder, Encoder};

const DOC: &str = include_str!("../../docs/link-protocol.md");

/// The bytes an example line shows: its leading two-digit hex tokens, up
/// to the comment.
fn hex_bytes(line: &str) -> Vec<u8> {
    line.split_whitespace()
        .map_while(|token| {
            u8::from_str_radix(token, 16)
                .ok()
                .filter(|_| token.len() == 2)
        })
        .collect()
}

/// The lines of the example block under "## Example exchange" that start
/// with an arrow: the direction and the hex bytes before the comment.
fn example_lines() -> Vec<(char, Vec<u8>)> {
    arrow_lines("## Example exchange")
}

/// The lines that start with an arrow in the first text block after
/// `heading`: the direction and the hex bytes before the comment.
fn arrow_lines(heading: &str) -> Vec<(char, Vec<u8>)> {
    let section = DOC
        .split(heading)
        .nth(1)
        .unwrap_or_else(|| panic!("docs/link-protocol.md has {heading:?}"));
    let block = section
        .split("```text")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the example is a text block");
    block
        .lines()
        .filter_map(|line| {
            let arrow = line.chars().next().filter(|c| *c == '→' || *c == '←')?;
            Some((arrow, hex_bytes(&line[arrow.len_utf8()..])))
        })
        .collect()
}

/// The JSON of the OPEN example, on the line after the OPEN record.
fn open_json() -> String {
    let section = DOC.split("## Example exchange").nth(1).expect("example");
    section
        .lines()
        .map(str::trim)
        .find(|line| line.starts_with("{\"version\""))
        .expect("the OPEN JSON is shown")
        .to_owned()
}

fn decode_all(bytes: &[u8]) -> Vec<Record> {
    let mut buffer = BytesMut::from(bytes);
    let mut codec = RecordCodec::new(1024);
    let mut records = Vec::new();
    while let Some(record) = codec.decode(&mut buffer).expect("the example decodes") {
        records.push(record);
    }
    assert!(buffer.is_empty(), "no bytes left over");
    records
}

fn encode(record: Record) -> Vec<u8> {
    let mut buffer = BytesMut::new();
    RecordCodec::new(1024)
        .encode(record, &mut buffer)
        .expect("encodes");
    buffer.to_vec()
}

#[test]
fn the_open_example_is_what_open_meta_writes() {
    let meta = OpenMeta {
        version: LINK_VERSION,
        mode: LinkMode::Framed,
        id: 7,
        name: "echo".into(),
        path: "/echo".into(),
        query: String::new(),
        protocols: Vec::new(),
        peer: "127.0.0.1:50312".into(),
        headers: BTreeMap::new(),
        limits: None,
        tls: None,
        identity: None,
        deflate: None,
        carrier: None,
    };
    let json = open_json();
    assert_eq!(
        String::from_utf8(meta.to_payload().to_vec()).expect("UTF-8"),
        json
    );
    assert_eq!(
        OpenMeta::from_payload(json.as_bytes()).expect("parses"),
        meta
    );
    // The header shown for it: kind 0x01 and the JSON's length.
    let (arrow, header) = &example_lines()[0];
    assert_eq!(*arrow, '→');
    let mut expected = vec![0x01];
    expected.extend_from_slice(&u32::try_from(json.len()).expect("short").to_be_bytes());
    assert_eq!(header, &expected, "OPEN header for {} bytes", json.len());
}

#[test]
fn every_record_of_the_example_round_trips_byte_for_byte() {
    let lines = example_lines();
    let expected: Vec<(char, Record)> = vec![
        ('←', Record::Accept(bytes::Bytes::new())),
        ('→', Record::Text("hi".into())),
        ('←', Record::Text("hi".into())),
        (
            '→',
            Record::Binary(bytes::Bytes::from_static(&[0x00, 0xff])),
        ),
        (
            '←',
            Record::Binary(bytes::Bytes::from_static(&[0x00, 0xff])),
        ),
        (
            '→',
            Record::Close(Some(CloseInfo {
                code: 1000,
                reason: "bye".into(),
            })),
        ),
        (
            '←',
            Record::Close(Some(CloseInfo {
                code: 1000,
                reason: "bye".into(),
            })),
        ),
    ];
    // The first line is the OPEN header alone (its JSON is on the next line).
    assert_eq!(lines.len(), expected.len() + 1, "{lines:?}");
    for ((arrow, bytes), (expected_arrow, record)) in lines[1..].iter().zip(expected) {
        assert_eq!(*arrow, expected_arrow, "{bytes:02x?}");
        assert_eq!(
            decode_all(bytes),
            std::slice::from_ref(&record),
            "{bytes:02x?}"
        );
        assert_eq!(&encode(record), bytes);
    }
    assert_eq!(
        AcceptReply::from_payload(b"").expect("empty ACCEPT"),
        AcceptReply::default()
    );
}

#[test]
fn the_reject_example_has_the_length_it_shows() {
    let reply = RejectReply {
        status: 403,
        reason: "members only".into(),
    };
    let payload = reply.to_payload();
    assert_eq!(&payload[..], br#"{"status":403,"reason":"members only"}"#);
    let header = DOC
        .lines()
        .find(|line| line.contains("REJECT, 38 bytes"))
        .expect("the REJECT example is shown");
    assert_eq!(payload.len(), 38);
    assert!(
        header.contains("← 03 00 00 00 26 7b 22 73 74 61 74 75 73 22"),
        "{header}"
    );
    assert_eq!(&payload[..5], b"{\"sta");
}

/// The compressed example of "Direct mode": its OPEN is what `OpenMeta`
/// reads and writes, and its frame is RFC 7692's `Hello`.
#[test]
fn the_direct_mode_deflate_example_holds() {
    let section = DOC
        .split("**Compression.**")
        .nth(1)
        .expect("docs/link-protocol.md has the compression example");
    let json = section
        .lines()
        .map(str::trim)
        .find(|line| line.starts_with("{\"version\""))
        .expect("its OPEN is shown");
    let meta = OpenMeta::from_payload(json.as_bytes()).expect("the OPEN parses");
    assert_eq!(meta.mode, LinkMode::Direct);
    let params = meta.deflate.expect("deflate agreed");
    assert!(params.server_no_context_takeover && params.client_no_context_takeover);
    assert_eq!(
        String::from_utf8(meta.to_payload().to_vec()).expect("UTF-8"),
        json
    );
    let frame_line = section
        .lines()
        .find(|line| line.starts_with("→ c1"))
        .expect("the compressed frame is shown");
    let frame = hex_bytes(&frame_line['→'.len_utf8()..]);
    let handoff_line = section
        .lines()
        .find(|line| line.starts_with("→ 04"))
        .expect("the HANDOFF header is shown");
    assert!(handoff_line.contains(&format!("00 00 00 {:02x}", frame.len())));
    // Unmask and inflate by hand (flate2 directly, not link's inflater).
    let (mask, payload) = frame[2..].split_at(4);
    assert_eq!(frame[0], 0xc1, "FIN, RSV1, text");
    assert_eq!(usize::from(frame[1] & 0x7f), payload.len());
    let mut compressed: Vec<u8> = payload
        .iter()
        .enumerate()
        .map(|(idx, byte)| byte ^ mask[idx % 4])
        .collect();
    assert_eq!(compressed, [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]);
    compressed.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut inflated = Vec::with_capacity(64);
    flate2::Decompress::new(false)
        .decompress_vec(&compressed, &mut inflated, flate2::FlushDecompress::Sync)
        .expect("inflates");
    assert_eq!(inflated, b"Hello");
}

#[test]
fn the_fanout_example_is_what_the_codec_reads_and_writes() {
    // The last block of the Fan-out section: hex bytes up to each comment.
    let section = DOC
        .split("## Fan-out")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("docs/link-protocol.md has a Fan-out section");
    let block = section
        .rsplit("```text")
        .next()
        .and_then(|rest| rest.split("```").next())
        .expect("the FANOUT example is a text block");
    let bytes: Vec<u8> = block
        .lines()
        .flat_map(|line| hex_bytes(line.trim_start_matches('←')))
        .collect();
    let record = Record::Fanout(
        Fanout::new(FanoutMessage::Text(Utf8Bytes::from_static("hi")), &[9, 12])
            .expect("two recipients"),
    );
    assert_eq!(encode(record.clone()), bytes);
    assert_eq!(decode_all(&bytes), vec![record]);
    let mut direct = BytesMut::new();
    put_fanout(&mut direct, RecordKind::Text, b"hi", &[9, 12]).expect("writes");
    assert_eq!(direct.to_vec(), bytes);
}

/// The OPEN_HANDOFF example of *Hand-over without ACCEPT*: its header names
/// kind 0x07 and the length of what follows, and the payload splits into
/// the OPEN and the client's frame as REQUEST's does.
#[test]
fn open_handoff_example_is_header_open_and_pending_bytes() {
    let block = DOC
        .split("goes over as")
        .nth(1)
        .and_then(|rest| rest.split("```text").nth(1))
        .and_then(|rest| rest.split("```").next())
        .expect("the OPEN_HANDOFF example block");
    let bytes: Vec<u8> = block
        .lines()
        .filter_map(|line| line.strip_prefix('→'))
        .flat_map(hex_bytes)
        .collect();
    let header: [u8; 5] = bytes[..5].try_into().expect("a header");
    let (kind, len) = link::record::decode_header(header, 1024).expect("a valid header");
    assert_eq!(kind, RecordKind::OpenHandoff);
    assert_eq!(len, bytes.len() - 5);
    let (open, pending) =
        link::meta::split_head("OPEN_HANDOFF", bytes::Bytes::copy_from_slice(&bytes[5..]))
            .expect("head and body");
    assert_eq!(&open[..], b"{}");
    assert_eq!(
        &pending[..],
        [0x81, 0x82, 0x37, 0xfa, 0x21, 0x3d, 0x5f, 0x93]
    );
}

#[test]
fn the_framed_reuse_example_is_two_closes_then_the_next_open() {
    let lines = arrow_lines("## Link reuse in framed mode");
    let bye = Record::Close(Some(CloseInfo {
        code: 1000,
        reason: "bye".to_owned(),
    }));
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0], ('→', encode(bye.clone())));
    assert_eq!(lines[1], ('←', encode(bye)));
    // The next OPEN, abridged: its header and the start of the example's JSON.
    let open = encode(Record::Open(open_json().into_bytes().into()));
    let (arrow, shown) = &lines[2];
    assert_eq!(*arrow, '→');
    assert_eq!(&open[..shown.len()], &shown[..]);
}
