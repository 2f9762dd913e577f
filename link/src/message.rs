//! WebSocket messages ⇄ link records: a text or binary message is one TEXT
//! or BINARY record, a close frame one CLOSE record. A client's pings and
//! pongs do not cross the link (whoever holds the client's socket answers
//! them); the one exception is a backend's own ping (PING record) and the
//! client's pong to it (PONG record), which the relay and the session map
//! themselves.

use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::{CloseInfo, LinkError, Record};

/// Longest close reason: a close frame's payload is at most 125 bytes, two of them the code.
pub const MAX_CLOSE_REASON: usize = 123;

/// The record that carries `message` across the link, or `None` for pings,
/// pongs and raw frames. A close reason is cut to [`MAX_CLOSE_REASON`].
pub fn message_to_record(message: Message) -> Option<Record> {
    match message {
        Message::Text(text) => Some(Record::Text(text)),
        Message::Binary(data) => Some(Record::Binary(data)),
        Message::Close(frame) => Some(Record::Close(frame.as_ref().map(close_info))),
        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => None,
    }
}

/// The message a data or CLOSE record carries; any other record is
/// [`LinkError::Unexpected`]. Close codes pass unchanged.
pub fn record_to_message(record: Record) -> Result<Message, LinkError> {
    Ok(match record {
        Record::Text(text) => Message::Text(text),
        Record::Binary(payload) => Message::Binary(payload),
        Record::Close(info) => Message::Close(info.map(|info| CloseFrame {
            code: CloseCode::from(info.code),
            reason: Utf8Bytes::from(info.reason),
        })),
        Record::Pong(payload) => Message::Pong(payload),
        other => return Err(LinkError::Unexpected(other.name())),
    })
}

/// The CLOSE record body of a close frame, its reason cut to [`MAX_CLOSE_REASON`].
pub fn close_info(frame: &CloseFrame) -> CloseInfo {
    CloseInfo {
        code: u16::from(frame.code),
        reason: truncate_reason(&frame.reason).to_owned(),
    }
}

/// A backend's CLOSE record as the frame a client gets: codes that may not
/// be sent on the wire become `1011`, and the reason is cut to fit the frame.
pub fn close_frame_for_client(info: CloseInfo) -> CloseFrame {
    let code = CloseCode::from(info.code);
    CloseFrame {
        code: if is_sendable(code) {
            code
        } else {
            CloseCode::Error
        },
        reason: Utf8Bytes::from(truncate_reason(&info.reason)),
    }
}

/// RFC 6455 section 7.4: 1005, 1006 and 1015 never go on the wire, and
/// codes below 1000 or in unassigned ranges are invalid.
pub fn is_sendable(code: CloseCode) -> bool {
    matches!(u16::from(code), 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// `reason` cut to at most [`MAX_CLOSE_REASON`] bytes on a character boundary.
pub fn truncate_reason(reason: &str) -> &str {
    let mut end = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reasons_are_cut_on_character_boundaries() {
        let long = "é".repeat(100);
        let cut = truncate_reason(&long);
        assert_eq!(cut.len(), 122);
        assert_eq!(truncate_reason("bye"), "bye");
    }

    #[test]
    fn messages_map_to_records_and_back() {
        let messages = [
            Message::text("hi"),
            Message::binary(vec![0u8, 255]),
            Message::Close(None),
            Message::Close(Some(CloseFrame {
                code: CloseCode::Away,
                reason: "bye".into(),
            })),
        ];
        for message in messages {
            let record = message_to_record(message.clone()).expect("data and close cross the link");
            assert_eq!(record_to_message(record).expect("maps back"), message);
        }
        assert_eq!(message_to_record(Message::Ping(bytes::Bytes::new())), None);
        assert!(matches!(
            record_to_message(Record::Accept(bytes::Bytes::new())),
            Err(LinkError::Unexpected("ACCEPT"))
        ));
    }

    #[test]
    fn unsendable_backend_codes_reach_the_client_as_1011() {
        let check = |code: u16, expected: u16| {
            let frame = close_frame_for_client(CloseInfo {
                code,
                reason: String::new(),
            });
            assert_eq!(u16::from(frame.code), expected, "code {code}");
        };
        for (code, expected) in [
            (1000, 1000),
            (1001, 1001),
            (1004, 1011),
            (1005, 1011),
            (1006, 1011),
            (1008, 1008),
            (1015, 1011),
            (999, 1011),
            (2999, 1011),
            (3000, 3000),
            (4999, 4999),
            (5000, 1011),
        ] {
            check(code, expected);
        }
    }

    #[test]
    fn long_backend_reasons_are_cut_for_the_client() {
        let frame = close_frame_for_client(CloseInfo {
            code: 1000,
            reason: "x".repeat(300),
        });
        assert_eq!(frame.reason.len(), MAX_CLOSE_REASON);
    }
}
