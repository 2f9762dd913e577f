//! Unit tests of the client frame reader: the RFC 6455 rules a server checks.

use super::*;

/// A client frame: `first` is FIN/RSV/opcode, the payload masked with a fixed mask.
fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    super::client_frame(first, payload, [0x37, 0xfa, 0x21, 0x3d])
}

/// Everything `bytes` means, frame by frame, as owned values.
fn read_all(reader: &mut FrameReader, bytes: &[u8]) -> Result<Vec<String>, FrameError> {
    let mut input = BytesMut::from(bytes);
    let mut seen = Vec::new();
    loop {
        let (described, n) = match reader.read(&mut input)? {
            Parsed::Need(_) => return Ok(seen),
            Parsed::Frame(inbound, n) => (
                match inbound {
                    Inbound::Text(t) => format!("text {t}"),
                    Inbound::Binary(b) => format!("binary {}", b.len()),
                    Inbound::Ping(p) => format!("ping {}", p.len()),
                    Inbound::Pong(p) => format!("pong {}", p.len()),
                    Inbound::Close(frame) => format!("close {frame:?}"),
                    Inbound::Fragment => "fragment".to_owned(),
                },
                n,
            ),
        };
        seen.push(described);
        bytes::Buf::advance(&mut input, n);
    }
}

#[test]
fn whole_messages_are_unmasked_in_place() {
    let mut reader = FrameReader::new(1 << 20);
    let long = vec![7u8; 70_000];
    let mut bytes = client_frame(0x81, "héllo, wörld!".as_bytes());
    bytes.extend(client_frame(0x82, &long));
    bytes.extend(client_frame(0x82, &[1, 2, 3, 4, 5, 6, 7, 8, 9]));
    let seen = read_all(&mut reader, &bytes).expect("valid frames");
    assert_eq!(seen, ["text héllo, wörld!", "binary 70000", "binary 9"]);
}

#[test]
fn a_partial_frame_asks_for_what_is_missing() {
    let mut reader = FrameReader::new(1 << 20);
    let frame = client_frame(0x82, &[9u8; 300]);
    for cut in 0..frame.len() {
        let mut input = BytesMut::from(&frame[..cut]);
        match reader.read(&mut input).expect("a valid prefix") {
            Parsed::Need(n) => assert!(n >= 1 && cut + n <= frame.len(), "cut {cut}: need {n}"),
            other => panic!("cut {cut}: {other:?}"),
        }
    }
}

#[test]
fn fragments_are_gathered_and_controls_may_come_between() {
    let mut reader = FrameReader::new(1 << 20);
    let mut bytes = client_frame(0x01, b"hel");
    bytes.extend(client_frame(0x89, b"p"));
    bytes.extend(client_frame(0x00, b"lo "));
    bytes.extend(client_frame(0x80, "wörld".as_bytes()));
    let seen = read_all(&mut reader, &bytes).expect("valid frames");
    assert_eq!(seen, ["fragment", "ping 1", "fragment", "text hello wörld"]);
    assert!(!reader.is_mid_message());
}

#[test]
fn broken_frames_get_their_close_codes() {
    let cases: Vec<(Vec<u8>, FrameError)> = vec![
        (
            client_frame(0x83, b""),
            FrameError::Protocol("reserved opcode"),
        ),
        (
            client_frame(0xc1, b"x"),
            FrameError::Protocol("reserved bits set"),
        ),
        (
            vec![0x81, 0x01, b'x'],
            FrameError::Protocol("unmasked client frame"),
        ),
        (
            client_frame(0x09, b""),
            FrameError::Protocol("oversized or fragmented control frame"),
        ),
        (
            client_frame(0x89, &[0; 126]),
            FrameError::Protocol("oversized or fragmented control frame"),
        ),
        (
            client_frame(0x80, b"x"),
            FrameError::Protocol("continuation with no message"),
        ),
        (
            [client_frame(0x01, b"a"), client_frame(0x81, b"b")].concat(),
            FrameError::Protocol("new message inside a fragmented one"),
        ),
        (client_frame(0x81, &[0xff, 0xfe]), FrameError::Utf8),
        (
            [client_frame(0x01, &[0xce]), client_frame(0x80, &[0xff])].concat(),
            FrameError::Utf8,
        ),
        (
            client_frame(0x88, &[3]),
            FrameError::Protocol("close frame of one byte"),
        ),
        (
            client_frame(0x88, &1005u16.to_be_bytes()),
            FrameError::Protocol("close code not allowed"),
        ),
        (
            client_frame(0x88, &999u16.to_be_bytes()),
            FrameError::Protocol("close code not allowed"),
        ),
        (
            client_frame(0x88, &2000u16.to_be_bytes()),
            FrameError::Protocol("close code not allowed"),
        ),
        (client_frame(0x88, &[0x03, 0xe8, 0xff]), FrameError::Utf8),
    ];
    for (bytes, expected) in cases {
        let mut reader = FrameReader::new(1 << 20);
        assert_eq!(read_all(&mut reader, &bytes), Err(expected), "{bytes:02x?}");
    }
}

#[test]
fn messages_over_the_limit_are_refused_before_their_payload_arrives() {
    let mut reader = FrameReader::new(100);
    let frame = client_frame(0x82, &[0; 101]);
    let mut header_only = BytesMut::from(&frame[..8]);
    assert_eq!(reader.read(&mut header_only), Err(FrameError::TooBig(100)));

    // Fragments count together.
    let mut reader = FrameReader::new(100);
    let bytes = [client_frame(0x02, &[0; 60]), client_frame(0x80, &[0; 41])].concat();
    assert_eq!(read_all(&mut reader, &bytes), Err(FrameError::TooBig(100)));
    let mut reader = FrameReader::new(100);
    let bytes = [client_frame(0x02, &[0; 60]), client_frame(0x80, &[0; 40])].concat();
    assert_eq!(
        read_all(&mut reader, &bytes).expect("valid frames"),
        ["fragment", "binary 100"]
    );
}

#[test]
fn a_short_frame_is_checked_as_any_other() {
    // One whole frame of up to 125 bytes takes a path of its own: the same
    // limit, the same UTF-8 check, the same count of missing bytes.
    let mut reader = FrameReader::new(10);
    let frame = client_frame(0x82, &[0; 11]);
    assert_eq!(
        reader.read(&mut BytesMut::from(&frame[..6])),
        Err(FrameError::TooBig(10))
    );
    let mut reader = FrameReader::new(10);
    let frame = client_frame(0x81, "wörld".as_bytes());
    for cut in 0..frame.len() {
        let expected = if cut < 6 { 14 - cut } else { frame.len() - cut };
        let mut input = BytesMut::from(&frame[..cut]);
        assert_eq!(
            reader.read(&mut input),
            Ok(Parsed::Need(expected)),
            "cut {cut}"
        );
    }
    assert_eq!(
        read_all(&mut reader, &frame).expect("a valid frame"),
        ["text wörld"]
    );
    let mut reader = FrameReader::new(10);
    let bytes = [client_frame(0x82, &[]), client_frame(0x81, &[0xc3])].concat();
    assert_eq!(read_all(&mut reader, &bytes), Err(FrameError::Utf8));
}

#[test]
fn allowed_closes_pass_with_their_reason() {
    let mut reader = FrameReader::new(100);
    let payload = [&4001u16.to_be_bytes()[..], "bye".as_bytes()].concat();
    let seen = read_all(
        &mut reader,
        &[client_frame(0x88, &payload), client_frame(0x88, b"")].concat(),
    )
    .expect("valid frames");
    assert_eq!(seen.len(), 2);
    assert!(
        seen[0].contains("4001") && seen[0].contains("bye"),
        "{seen:?}"
    );
    assert_eq!(seen[1], "close None");
}

#[test]
fn unmasking_matches_the_byte_by_byte_rule_at_every_length() {
    let mask = [0x81, 0x02, 0xf3, 0x44];
    for len in 0..70 {
        let original: Vec<u8> = (0..len as u8).collect();
        let mut fast = original.clone();
        unmask(&mut fast, mask);
        let slow: Vec<u8> = original
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        assert_eq!(fast, slow, "length {len}");
    }
}

#[test]
fn server_frames_are_unmasked_with_the_shortest_length() {
    for (len, header) in [(5usize, 2usize), (126, 4), (65_536, 10)] {
        let mut out = BytesMut::new();
        put_frame(&mut out, OpCode::Data(Data::Binary), &vec![0xab; len]);
        assert_eq!(out.len(), header + len);
        assert_eq!(out[0], 0x82);
        assert_eq!(out[1] & 0x80, 0, "server frames are not masked");
    }
}
