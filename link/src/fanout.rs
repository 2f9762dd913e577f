//! The FANOUT record of a carrier link: one message for many clients of one
//! gateway, so a broadcast crosses the link once and the gateway reads it once.
//!
//! Payload layout (`docs/link-protocol.md`, *Fan-out*):
//! `[kind: u8][count: u32 big-endian][count × client id: u64 big-endian][message payload]`,
//! where `kind` is TEXT, BINARY or CLOSE and the message payload is exactly
//! that record's payload. The message is bounded like any record's payload
//! (the codec's maximum), the recipients by [`MAX_RECIPIENTS`].

use bytes::{BufMut, Bytes, BytesMut};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::record::{CloseInfo, HEADER_LEN, LinkError, RecordKind, decode_close, encode_header};

/// The most clients one FANOUT record names; a sender splits a larger group.
pub const MAX_RECIPIENTS: usize = 65_536;

/// Bytes of a FANOUT payload before its recipients: the message kind and the count.
pub const FANOUT_HEAD_LEN: usize = 5;

/// The most bytes a FANOUT payload holds beyond its message's payload.
pub const MAX_FANOUT_OVERHEAD: usize = FANOUT_HEAD_LEN + 8 * MAX_RECIPIENTS;

/// The message a FANOUT record carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FanoutMessage {
    /// A text message, checked to be UTF-8 by the codec.
    Text(Utf8Bytes),
    /// A binary message.
    Binary(Bytes),
    /// A close with an optional code and reason: the end of each recipient's session.
    Close(Option<CloseInfo>),
}

impl FanoutMessage {
    /// The record kind the message is written as.
    pub fn kind(&self) -> RecordKind {
        match self {
            FanoutMessage::Text(_) => RecordKind::Text,
            FanoutMessage::Binary(_) => RecordKind::Binary,
            FanoutMessage::Close(_) => RecordKind::Close,
        }
    }

    /// The length of the message's payload as its own record would carry it.
    pub fn payload_len(&self) -> usize {
        match self {
            FanoutMessage::Text(text) => text.len(),
            FanoutMessage::Binary(payload) => payload.len(),
            FanoutMessage::Close(None) => 0,
            FanoutMessage::Close(Some(info)) => 2 + info.reason.len(),
        }
    }
}

/// A decoded FANOUT record: a message and the ids of the clients it goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fanout {
    /// What each recipient gets.
    pub message: FanoutMessage,
    /// The recipients' ids, 8 big-endian bytes each (at least one).
    recipients: Bytes,
}

impl Fanout {
    /// A FANOUT of `message` for `recipients`, which must be 1 to [`MAX_RECIPIENTS`].
    pub fn new(message: FanoutMessage, recipients: &[u64]) -> Result<Fanout, LinkError> {
        check_count(recipients.len())?;
        let mut ids = BytesMut::with_capacity(8 * recipients.len());
        for id in recipients {
            ids.put_u64(*id);
        }
        Ok(Fanout {
            message,
            recipients: ids.freeze(),
        })
    }

    /// The recipients, in the order the record names them.
    pub fn recipients(&self) -> impl ExactSizeIterator<Item = u64> + '_ {
        self.recipients
            .chunks_exact(8)
            .map(|id| u64::from_be_bytes(id.try_into().expect("chunks of 8")))
    }

    /// The length of the record's payload.
    pub(crate) fn payload_len(&self) -> usize {
        FANOUT_HEAD_LEN + self.recipients.len() + self.message.payload_len()
    }

    /// Appends the record's payload (not its header) to `dst`.
    pub(crate) fn put_payload(&self, dst: &mut BytesMut) {
        dst.put_u8(self.message.kind() as u8);
        let count = u32::try_from(self.recipients.len() / 8).expect("at most MAX_RECIPIENTS");
        dst.put_u32(count);
        dst.extend_from_slice(&self.recipients);
        match &self.message {
            FanoutMessage::Text(text) => dst.extend_from_slice(text.as_bytes()),
            FanoutMessage::Binary(payload) => dst.extend_from_slice(payload),
            FanoutMessage::Close(None) => {}
            FanoutMessage::Close(Some(info)) => {
                dst.put_u16(info.code);
                dst.extend_from_slice(info.reason.as_bytes());
            }
        }
    }

    /// Decodes a FANOUT payload whose message may be at most `max_message` bytes.
    pub(crate) fn decode(mut payload: Bytes, max_message: usize) -> Result<Fanout, LinkError> {
        let malformed = |reason| LinkError::Malformed {
            kind: "FANOUT",
            reason,
        };
        let Some(&[kind, c0, c1, c2, c3]) = payload.first_chunk::<FANOUT_HEAD_LEN>() else {
            return Err(malformed("shorter than its head"));
        };
        let count = u32::from_be_bytes([c0, c1, c2, c3]) as usize;
        check_count(count)?;
        let ids_end = FANOUT_HEAD_LEN + 8 * count;
        if payload.len() < ids_end {
            return Err(malformed("shorter than its recipients"));
        }
        let recipients = payload.slice(FANOUT_HEAD_LEN..ids_end);
        let body = payload.split_off(ids_end);
        if body.len() > max_message {
            return Err(LinkError::TooLong {
                len: body.len() as u64,
                max: max_message,
            });
        }
        let message = match RecordKind::from_byte(kind) {
            Some(RecordKind::Text) => {
                FanoutMessage::Text(Utf8Bytes::try_from(body).map_err(|_| LinkError::InvalidUtf8)?)
            }
            Some(RecordKind::Binary) => FanoutMessage::Binary(body),
            Some(RecordKind::Close) => FanoutMessage::Close(decode_close(&body)?),
            _ => return Err(malformed("message kind is not TEXT, BINARY or CLOSE")),
        };
        Ok(Fanout {
            message,
            recipients,
        })
    }
}

/// Appends a whole FANOUT record of a `kind` message with `payload` for
/// `recipients` to `dst`, without building a [`Fanout`] first (a sender's hot
/// path). `kind` is TEXT or BINARY; the caller checked a TEXT payload is
/// UTF-8 and the payload is within the reader's limit.
pub fn put_fanout(
    dst: &mut BytesMut,
    kind: RecordKind,
    payload: &[u8],
    recipients: &[u64],
) -> Result<(), LinkError> {
    if !matches!(kind, RecordKind::Text | RecordKind::Binary) {
        return Err(LinkError::Malformed {
            kind: "FANOUT",
            reason: "message kind is not TEXT or BINARY",
        });
    }
    check_count(recipients.len())?;
    let len = FANOUT_HEAD_LEN + 8 * recipients.len() + payload.len();
    let len32 = u32::try_from(len).map_err(|_| LinkError::TooLong {
        len: len as u64,
        max: u32::MAX as usize,
    })?;
    dst.reserve(HEADER_LEN + len);
    dst.extend_from_slice(&encode_header(RecordKind::Fanout, len32));
    dst.put_u8(kind as u8);
    dst.put_u32(recipients.len() as u32);
    for id in recipients {
        dst.put_u64(*id);
    }
    dst.extend_from_slice(payload);
    Ok(())
}

fn check_count(count: usize) -> Result<(), LinkError> {
    if count == 0 || count > MAX_RECIPIENTS {
        return Err(LinkError::Malformed {
            kind: "FANOUT",
            reason: "recipient count is not 1 to 65536",
        });
    }
    Ok(())
}
