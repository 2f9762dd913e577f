//! Fuzzes the rewrite of a client's frames under permessage-deflate
//! (`link::deflate::FrameInflater`, what `ReadAhead` runs before tungstenite).
//!
//! The first byte picks how many bytes arrive at a time and whether the
//! client keeps its compression context; the rest is the client's byte
//! stream. Checked: no panic; every step either makes progress or asks for
//! input (no loop), and a step hands on at most what it passed through or
//! one inflated chunk with its frame header (bounded memory whatever the
//! compression ratio; the 64 KiB limit itself is `link`'s unit tests' job).

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use link::DeflateParams;
use link::deflate::{FrameInflater, Step};

const LIMIT: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&first, stream)) = data.split_first() else {
        return;
    };
    let piece = usize::from(first & 0x3f) + 1;
    let params = DeflateParams {
        server_no_context_takeover: true,
        client_no_context_takeover: first & 0x40 == 0,
        server_max_window_bits: 15,
        client_max_window_bits: 15,
    };
    let mut inflater = FrameInflater::new(params, LIMIT);
    let mut input = BytesMut::new();
    for chunk in stream.chunks(piece) {
        input.extend_from_slice(chunk);
        loop {
            let mut output = BytesMut::new();
            let before = input.len();
            match inflater.step(&mut input, &mut output) {
                Ok(Step::Progress) => {
                    // What passes through, or one inflated chunk and its header.
                    assert!(
                        output.len() <= before.max(16 * 1024 + 14),
                        "one chunk per step"
                    );
                }
                Ok(Step::NeedInput) => break,
                Err(_) => return,
            }
        }
    }
});
