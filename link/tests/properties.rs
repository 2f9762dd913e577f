//! Properties of the record codec over arbitrary input: every record round
//! trips, any byte stream decodes to records or one error without panicking,
//! and no stream makes the decoder take more than the limit it was given.

use bytes::{Bytes, BytesMut};
use link::{CloseInfo, LinkError, Record, RecordCodec};
use proptest::prelude::*;
use tokio_util::codec::{Decoder, Encoder};

const LIMIT: usize = 4096;

fn record() -> impl Strategy<Value = Record> {
    let bytes = || proptest::collection::vec(any::<u8>(), 0..256).prop_map(Bytes::from);
    prop_oneof![
        bytes().prop_map(Record::Open),
        bytes().prop_map(Record::Accept),
        bytes().prop_map(Record::Reject),
        bytes().prop_map(Record::Handoff),
        ".{0,64}".prop_map(|text: String| Record::Text(text.into())),
        bytes().prop_map(Record::Binary),
        Just(Record::Close(None)),
        proptest::collection::vec(any::<u8>(), 0..=125).prop_map(|b| Record::Ping(b.into())),
        proptest::collection::vec(any::<u8>(), 0..=125).prop_map(|b| Record::Pong(b.into())),
        (any::<u16>(), ".{0,40}")
            .prop_map(|(code, reason)| { Record::Close(Some(CloseInfo { code, reason })) }),
    ]
}

proptest! {
    #[test]
    fn every_record_round_trips(records in proptest::collection::vec(record(), 0..8)) {
        let mut codec = RecordCodec::new(LIMIT);
        let mut buffer = BytesMut::new();
        for record in &records {
            codec.encode(record.clone(), &mut buffer).expect("fits the limit");
        }
        let mut decoded = Vec::new();
        while let Some(record) = codec.decode(&mut buffer).expect("decodes") {
            decoded.push(record);
        }
        prop_assert!(buffer.is_empty());
        prop_assert_eq!(decoded, records);
    }

    #[test]
    fn any_byte_stream_decodes_or_fails_cleanly(
        stream in proptest::collection::vec(any::<u8>(), 0..2048),
        chunk in 1usize..64,
    ) {
        let mut codec = RecordCodec::new(LIMIT);
        let mut buffer = BytesMut::new();
        'feed: for piece in stream.chunks(chunk) {
            buffer.extend_from_slice(piece);
            loop {
                match codec.decode(&mut buffer) {
                    Ok(Some(_)) => continue,
                    Ok(None) => break,
                    Err(LinkError::TooLong { len, max }) => {
                        prop_assert!(len > max as u64);
                        break 'feed;
                    }
                    Err(_) => break 'feed,
                }
            }
            // Waiting for the rest of a record never reserves past the limit.
            prop_assert!(buffer.capacity() <= LIMIT + 5 + stream.len());
        }
    }
}
