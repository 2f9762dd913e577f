//! Table-driven tests of the record codec: round trips, truncation, limits.

use bytes::{BufMut, Bytes, BytesMut};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::codec::{Decoder, Encoder};

use super::{CloseInfo, LinkError, Record, RecordCodec};

fn encode(record: Record) -> BytesMut {
    let mut buf = BytesMut::new();
    RecordCodec::new(1024)
        .encode(record, &mut buf)
        .expect("test records fit the limit");
    buf
}

fn check_round_trip(record: Record, expected_bytes: &[u8]) {
    let mut buf = encode(record.clone());
    assert_eq!(&buf[..], expected_bytes, "encoding of {record:?}");
    let decoded = RecordCodec::new(1024).decode(&mut buf).expect("decodes");
    assert_eq!(decoded, Some(record));
    assert!(buf.is_empty());
}

#[test]
fn records_round_trip_byte_for_byte() {
    check_round_trip(
        Record::Text(Utf8Bytes::from_static("hi")),
        b"\x10\0\0\0\x02hi",
    );
    check_round_trip(
        Record::Binary(Bytes::from_static(&[0, 255])),
        b"\x11\0\0\0\x02\x00\xff",
    );
    check_round_trip(Record::Binary(Bytes::new()), b"\x11\0\0\0\0");
    check_round_trip(Record::Accept(Bytes::new()), b"\x02\0\0\0\0");
    check_round_trip(Record::Close(None), b"\x12\0\0\0\0");
    check_round_trip(
        Record::Close(Some(CloseInfo {
            code: 1000,
            reason: "bye".into(),
        })),
        b"\x12\0\0\0\x05\x03\xe8bye",
    );
    check_round_trip(Record::Open(Bytes::from_static(b"{}")), b"\x01\0\0\0\x02{}");
    check_round_trip(
        Record::Reject(Bytes::from_static(b"{}")),
        b"\x03\0\0\0\x02{}",
    );
    check_round_trip(Record::Ping(Bytes::from_static(b"t1")), b"\x13\0\0\0\x02t1");
    check_round_trip(Record::Pong(Bytes::new()), b"\x14\0\0\0\0");
}

#[test]
fn partial_records_wait_for_more_bytes() {
    let whole = encode(Record::Text(Utf8Bytes::from_static("hello")));
    for cut in 0..whole.len() {
        let mut codec = RecordCodec::new(1024);
        let mut buf = BytesMut::from(&whole[..cut]);
        assert_eq!(
            codec.decode(&mut buf).expect("no error yet"),
            None,
            "cut at {cut}"
        );
        buf.extend_from_slice(&whole[cut..]);
        assert_eq!(
            codec.decode(&mut buf).expect("decodes"),
            Some(Record::Text(Utf8Bytes::from_static("hello")))
        );
    }
}

#[test]
fn truncated_record_at_eof_is_an_error() {
    let whole = encode(Record::Binary(Bytes::from_static(b"abc")));
    for cut in 1..whole.len() {
        let mut buf = BytesMut::from(&whole[..cut]);
        let result = RecordCodec::new(1024).decode_eof(&mut buf);
        assert!(
            matches!(result, Err(LinkError::Truncated)),
            "cut at {cut}: {result:?}"
        );
    }
    let mut empty = BytesMut::new();
    assert!(matches!(
        RecordCodec::new(1024).decode_eof(&mut empty),
        Ok(None)
    ));
}

#[test]
fn oversize_length_is_refused_before_the_payload_arrives() {
    let mut buf = BytesMut::new();
    buf.put_u8(0x11);
    buf.put_u32(1025);
    let result = RecordCodec::new(1024).decode(&mut buf);
    assert!(
        matches!(
            result,
            Err(LinkError::TooLong {
                len: 1025,
                max: 1024
            })
        ),
        "{result:?}"
    );
    assert!(
        buf.capacity() < 1024,
        "no buffer was reserved for the refused record"
    );

    let mut huge = BytesMut::new();
    huge.put_u8(0x10);
    huge.put_u32(u32::MAX);
    assert!(matches!(
        RecordCodec::new(1024).decode(&mut huge),
        Err(LinkError::TooLong { .. })
    ));
}

#[test]
fn oversize_record_is_not_written() {
    let mut buf = BytesMut::new();
    let result = RecordCodec::new(4).encode(Record::Binary(Bytes::from_static(b"12345")), &mut buf);
    assert!(matches!(result, Err(LinkError::TooLong { len: 5, max: 4 })));
    assert!(buf.is_empty());
}

#[test]
fn malformed_records_are_errors() {
    let check = |bytes: &[u8], expected: fn(&LinkError) -> bool| {
        let mut buf = BytesMut::from(bytes);
        let result = RecordCodec::new(1024).decode(&mut buf);
        match result {
            Err(error) => assert!(expected(&error), "{bytes:?}: {error:?}"),
            Ok(record) => panic!("{bytes:?} decoded as {record:?}"),
        }
    };
    check(b"\x7f\0\0\0\0", |e| {
        matches!(e, LinkError::UnknownKind(0x7f))
    });
    check(b"\x10\0\0\0\x02\xc3\x28", |e| {
        matches!(e, LinkError::InvalidUtf8)
    });
    check(b"\x12\0\0\0\x01\x03", |e| matches!(e, LinkError::BadClose));
    check(b"\x12\0\0\0\x03\x03\xe8\xff", |e| {
        matches!(e, LinkError::InvalidUtf8)
    });
    // A control frame holds at most 125 bytes.
    let mut long_ping = b"\x13\0\0\0\x7e".to_vec();
    long_ping.extend_from_slice(&[b'p'; 126]);
    check(&long_ping, |e| {
        matches!(e, LinkError::Malformed { kind: "PING", .. })
    });
    let mut buf = BytesMut::new();
    let result = RecordCodec::new(1024).encode(Record::Pong(Bytes::from(vec![0; 126])), &mut buf);
    assert!(matches!(
        result,
        Err(LinkError::Malformed { kind: "PONG", .. })
    ));
    assert!(buf.is_empty());
}

#[test]
fn several_records_in_one_buffer_decode_in_order() {
    let mut buf = encode(Record::Text(Utf8Bytes::from_static("a")));
    buf.extend_from_slice(&encode(Record::Binary(Bytes::from_static(b"b"))));
    buf.extend_from_slice(&encode(Record::Close(None)));
    let mut codec = RecordCodec::new(1024);
    let mut records = Vec::new();
    while let Some(record) = codec.decode(&mut buf).expect("decodes") {
        records.push(record);
    }
    assert_eq!(
        records,
        vec![
            Record::Text(Utf8Bytes::from_static("a")),
            Record::Binary(Bytes::from_static(b"b")),
            Record::Close(None)
        ]
    );
}

mod fanout {
    use super::*;
    use crate::fanout::{Fanout, FanoutMessage, MAX_RECIPIENTS};

    fn fanout_record(kind: u8, ids: &[u64], payload: &[u8]) -> BytesMut {
        let mut body = BytesMut::new();
        body.put_u8(kind);
        body.put_u32(u32::try_from(ids.len()).expect("test counts are small"));
        for id in ids {
            body.put_u64(*id);
        }
        body.extend_from_slice(payload);
        let mut record = BytesMut::new();
        record.put_u8(0x20);
        record.put_u32(u32::try_from(body.len()).expect("small"));
        record.extend_from_slice(&body);
        record
    }

    fn decode(mut bytes: BytesMut, max: usize) -> Result<Option<Record>, LinkError> {
        RecordCodec::new(max).decode(&mut bytes)
    }

    #[test]
    fn every_message_kind_round_trips_with_its_recipients() {
        for message in [
            FanoutMessage::Text(Utf8Bytes::from_static("hello")),
            FanoutMessage::Binary(Bytes::from_static(&[0, 1, 255])),
            FanoutMessage::Binary(Bytes::new()),
            FanoutMessage::Close(None),
            FanoutMessage::Close(Some(CloseInfo {
                code: 1008,
                reason: "too slow".into(),
            })),
        ] {
            let fanout = Fanout::new(message, &[1, u64::MAX, 7]).expect("three recipients");
            let record = Record::Fanout(fanout.clone());
            let mut bytes = encode(record.clone());
            let decoded = RecordCodec::new(1024).decode(&mut bytes).expect("decodes");
            assert_eq!(decoded, Some(record));
            assert!(bytes.is_empty());
            assert_eq!(fanout.recipients().collect::<Vec<_>>(), [1, u64::MAX, 7]);
        }
    }

    #[test]
    fn the_message_is_bounded_by_the_limit_and_the_recipients_beside_it() {
        let ids: Vec<u64> = (0..200).collect();
        // 200 recipients (1600 bytes) beside a message at the limit: fine.
        let at_limit = fanout_record(0x11, &ids, &[7; 64]);
        assert!(matches!(decode(at_limit, 64), Ok(Some(Record::Fanout(_)))));
        // A message one byte over the limit: refused, whatever the recipients.
        let over = fanout_record(0x11, &ids, &[7; 65]);
        assert!(matches!(
            decode(over, 64),
            Err(LinkError::TooLong { len: 65, .. })
        ));
        // A length beyond message limit plus the most recipients: refused from the header.
        let mut header = BytesMut::new();
        header.put_u8(0x20);
        header.put_u32(u32::try_from(64 + 5 + 8 * MAX_RECIPIENTS + 1).expect("fits"));
        assert!(matches!(decode(header, 64), Err(LinkError::TooLong { .. })));
    }

    #[test]
    fn malformed_fanouts_are_refused() {
        let cases: [(&str, BytesMut); 6] = [
            ("no recipients", fanout_record(0x10, &[], b"x")),
            ("kind PING", fanout_record(0x13, &[1], b"x")),
            ("kind OPEN", fanout_record(0x01, &[1], b"{}")),
            ("text not UTF-8", fanout_record(0x10, &[1], &[0xff])),
            ("close of one byte", fanout_record(0x12, &[1], &[3])),
            ("shorter than its head", {
                let mut record = BytesMut::new();
                record.put_u8(0x20);
                record.put_u32(3);
                record.extend_from_slice(&[0x10, 0, 0]);
                record
            }),
        ];
        for (what, bytes) in cases {
            assert!(decode(bytes, 1024).is_err(), "{what} must be refused");
        }
        // A count larger than the recipients the record holds.
        let mut short = fanout_record(0x10, &[1], b"");
        short[6..10].copy_from_slice(&2u32.to_be_bytes());
        assert!(decode(short, 1024).is_err(), "count beyond the record");
        assert!(Fanout::new(FanoutMessage::Close(None), &[]).is_err());
    }
}
