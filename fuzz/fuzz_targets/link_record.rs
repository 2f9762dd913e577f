//! Fuzzes the link's `RecordCodec` on arbitrary bytes (docs/link-protocol.md).
//!
//! The first input byte sets how many bytes arrive at a time; the rest is the
//! link. Checked: decoding never panics; reading in chunks yields the same
//! records and the same first error as reading everything at once; every
//! decoded record re-encodes to exactly the bytes it came from and decodes
//! back to itself.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use link::{Record, RecordCodec};
use tokio_util::codec::{Decoder, Encoder};

/// Small, so that the length limit is within the fuzzer's reach.
const MAX_PAYLOAD: usize = 1024;

/// What reading a link gave: its records, then how it ended.
#[derive(Debug, PartialEq)]
struct Reading {
    records: Vec<Record>,
    /// The error's text, or `None` when the link ended cleanly.
    error: Option<String>,
}

fuzz_target!(|data: &[u8]| {
    let Some((&chunk_byte, link_bytes)) = data.split_first() else {
        return;
    };
    let at_once = read_at_once(link_bytes);
    let chunked = read_in_chunks(link_bytes, usize::from(chunk_byte) + 1);
    assert_eq!(at_once, chunked, "chunked reading differs");
});

/// Decodes the whole link from one buffer, checking each record's round trip.
fn read_at_once(link_bytes: &[u8]) -> Reading {
    let mut codec = RecordCodec::new(MAX_PAYLOAD);
    let mut src = BytesMut::from(link_bytes);
    let mut records = Vec::new();
    loop {
        let before = src.clone();
        match codec.decode_eof(&mut src) {
            Ok(Some(record)) => {
                let consumed = &before[..before.len() - src.len()];
                check_round_trip(&mut codec, &record, consumed);
                records.push(record);
            }
            Ok(None) => {
                assert!(src.is_empty(), "a clean end leaves no bytes");
                return Reading {
                    records,
                    error: None,
                };
            }
            Err(error) => {
                return Reading {
                    records,
                    error: Some(error.to_string()),
                };
            }
        }
    }
}

/// Decodes the link as it would arrive from a socket, `chunk_len` bytes at a time.
fn read_in_chunks(link_bytes: &[u8], chunk_len: usize) -> Reading {
    let mut codec = RecordCodec::new(MAX_PAYLOAD);
    let mut src = BytesMut::new();
    let mut records = Vec::new();
    let mut chunks = link_bytes.chunks(chunk_len);
    loop {
        match codec.decode(&mut src) {
            Ok(Some(record)) => records.push(record),
            Ok(None) => match chunks.next() {
                Some(chunk) => src.extend_from_slice(chunk),
                None => break,
            },
            Err(error) => {
                return Reading {
                    records,
                    error: Some(error.to_string()),
                };
            }
        }
    }
    // The link ended: what is left must be nothing or a truncated record.
    let error = match codec.decode_eof(&mut src) {
        Ok(None) => None,
        Ok(Some(record)) => panic!("decode_eof found {record:?} that decode did not"),
        Err(error) => Some(error.to_string()),
    };
    Reading { records, error }
}

fn check_round_trip(codec: &mut RecordCodec, record: &Record, consumed: &[u8]) {
    let mut encoded = BytesMut::new();
    codec
        .encode(record.clone(), &mut encoded)
        .expect("a decoded record re-encodes");
    assert_eq!(&encoded[..], consumed, "re-encoding {record:?}");
    let decoded = codec
        .decode(&mut encoded)
        .expect("re-encoded bytes decode")
        .expect("re-encoded bytes hold a whole record");
    assert_eq!(&decoded, record);
    assert!(encoded.is_empty(), "one record, nothing after it");
}
