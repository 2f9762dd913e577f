//! Fuzzes the server's reader of a client's frames (`link::frames::FrameReader`,
//! what the gateway's relay and a backend's direct client run on every byte
//! a client sends).
//!
//! The first byte picks how many bytes arrive at a time; the rest is the
//! client's byte stream. Checked: no panic; every frame handed out took at
//! least its 6-byte header from the input and no more than the input held;
//! a message handed out is within the limit; when
//! the reader asks for more it asks for at least one byte, and asking never
//! loops (each round either consumes or reads more).

#![no_main]

use bytes::{Buf, BytesMut};
use link::frames::{FrameReader, Inbound, Parsed};
use libfuzzer_sys::fuzz_target;

const LIMIT: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((&first, stream)) = data.split_first() else {
        return;
    };
    let piece = usize::from(first) + 1;
    let mut reader = FrameReader::new(LIMIT);
    let mut input = BytesMut::new();
    let mut chunks = stream.chunks(piece);
    loop {
        let before = input.len();
        match reader.read(&mut input) {
            Err(_) => return,
            Ok(Parsed::Frame(inbound, used)) => {
                assert!(used >= 6 && used <= before, "took {used} of {before}");
                match inbound {
                    Inbound::Text(text) => {
                        assert!(text.len() <= LIMIT);
                    }
                    Inbound::Binary(payload) => assert!(payload.len() <= LIMIT),
                    Inbound::Ping(payload) | Inbound::Pong(payload) => assert!(payload.len() <= 125),
                    Inbound::Close(_) | Inbound::Fragment => {}
                }
                input.advance(used);
                reader.finish();
            }
            Ok(Parsed::Need(need)) => {
                assert!(need >= 1);
                match chunks.next() {
                    Some(chunk) => input.extend_from_slice(chunk),
                    None => return,
                }
            }
        }
    }
});
