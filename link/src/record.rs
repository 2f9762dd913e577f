//! Records on the link: `[kind: u8][length: u32 big-endian][payload: length bytes]`.
//!
//! The codec never allocates more than the configured maximum for one record and
//! rejects a longer length before reading its payload. What a payload means
//! (JSON for OPEN/ACCEPT/REJECT, a close code for CLOSE) is decoded here too, so
//! both sides share one definition; connecting and relaying are the callers' jobs.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::codec::{Decoder, Encoder};

use crate::fanout::{Fanout, MAX_FANOUT_OVERHEAD};

/// Bytes before the payload: one kind byte and a 32-bit length.
pub const HEADER_LEN: usize = 5;

/// The kind byte of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    /// Gateway to backend, first record: JSON [`crate::OpenMeta`].
    Open = 0x01,
    /// Backend to gateway: the client may be upgraded; JSON [`crate::AcceptReply`] or empty.
    Accept = 0x02,
    /// Backend to gateway: refuse the client; JSON [`crate::RejectReply`].
    Reject = 0x03,
    /// Direct mode: carries the client's socket (SCM_RIGHTS on its first byte,
    /// see [`crate::fd_pass`]) and the bytes the gateway read past the handshake.
    Handoff = 0x04,
    /// Gateway to backend, first and only record of a request link: one plain
    /// HTTP request, a JSON [`crate::RequestHead`] and the body (see [`crate::meta::split_head`]).
    Request = 0x05,
    /// Backend to gateway, the answer to REQUEST: a JSON [`crate::ResponseHead`] and the body.
    Response = 0x06,
    /// Direct mode, gateway to backend, on a reused link whose backend offered
    /// it (ACCEPT's `open_handoff`): a client's OPEN and its socket at once, no
    /// ACCEPT asked ([`crate::fd_pass::send_open_handoff`]).
    OpenHandoff = 0x07,
    /// One whole text message; the payload is UTF-8.
    Text = 0x10,
    /// One whole binary message.
    Binary = 0x11,
    /// A close: empty, or a 16-bit big-endian code followed by a UTF-8 reason.
    Close = 0x12,
    /// Backend to gateway: send the client a WebSocket ping with this payload
    /// (at most [`MAX_CONTROL_PAYLOAD`] bytes).
    Ping = 0x13,
    /// Gateway to backend: the client's pong to the last PING the backend
    /// asked for, with its payload.
    Pong = 0x14,
    /// Backend to gateway, on a carrier link only: one message for many of the
    /// gateway's clients ([`crate::fanout`]).
    Fanout = 0x20,
}

/// The most payload a WebSocket control frame, and so a PING or PONG record, carries.
pub const MAX_CONTROL_PAYLOAD: usize = 125;

impl RecordKind {
    /// The record's name as the protocol document writes it, e.g. `TEXT`.
    pub fn name(self) -> &'static str {
        match self {
            RecordKind::Open => "OPEN",
            RecordKind::Accept => "ACCEPT",
            RecordKind::Reject => "REJECT",
            RecordKind::Handoff => "HANDOFF",
            RecordKind::Request => "REQUEST",
            RecordKind::Response => "RESPONSE",
            RecordKind::OpenHandoff => "OPEN_HANDOFF",
            RecordKind::Text => "TEXT",
            RecordKind::Binary => "BINARY",
            RecordKind::Close => "CLOSE",
            RecordKind::Ping => "PING",
            RecordKind::Pong => "PONG",
            RecordKind::Fanout => "FANOUT",
        }
    }

    /// The kind of a kind byte, if this version knows it.
    pub fn from_byte(byte: u8) -> Option<RecordKind> {
        Some(match byte {
            0x01 => RecordKind::Open,
            0x02 => RecordKind::Accept,
            0x03 => RecordKind::Reject,
            0x04 => RecordKind::Handoff,
            0x05 => RecordKind::Request,
            0x06 => RecordKind::Response,
            0x07 => RecordKind::OpenHandoff,
            0x10 => RecordKind::Text,
            0x11 => RecordKind::Binary,
            0x12 => RecordKind::Close,
            0x13 => RecordKind::Ping,
            0x14 => RecordKind::Pong,
            0x20 => RecordKind::Fanout,
            _ => return None,
        })
    }
}

/// One decoded record. Payloads are shared `Bytes`, so relaying a message copies nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// JSON metadata of a new client (gateway to backend).
    Open(Bytes),
    /// JSON reply accepting the client; empty means "accept with defaults".
    Accept(Bytes),
    /// JSON reply refusing the client.
    Reject(Bytes),
    /// Direct-mode hand-over: the bytes the gateway read past the handshake.
    Handoff(Bytes),
    /// A plain HTTP request for the backend: head length, JSON head, body.
    Request(Bytes),
    /// The backend's HTTP response: head length, JSON head, body.
    Response(Bytes),
    /// A text message, checked to be UTF-8 once, by the codec.
    Text(Utf8Bytes),
    /// A binary message.
    Binary(Bytes),
    /// A close with an optional code and reason.
    Close(Option<CloseInfo>),
    /// A ping the backend asks the gateway to send the client.
    Ping(Bytes),
    /// The client's pong to the backend's last PING.
    Pong(Bytes),
    /// One message for many clients of a carrier link's gateway.
    Fanout(Fanout),
}

/// The code and reason of a CLOSE record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseInfo {
    /// A WebSocket close code (RFC 6455 section 7.4).
    pub code: u16,
    /// A UTF-8 reason, at most 123 bytes so it fits a close frame.
    pub reason: String,
}

/// Why a record could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The peer announced a payload longer than this side accepts.
    #[error("record of {len} bytes exceeds the limit of {max} bytes")]
    TooLong {
        /// The announced payload length.
        len: u64,
        /// The configured maximum.
        max: usize,
    },
    /// The kind byte is not one this version knows.
    #[error("unknown record kind 0x{0:02x}")]
    UnknownKind(u8),
    /// A TEXT record or a close reason is not UTF-8.
    #[error("text record is not valid UTF-8")]
    InvalidUtf8,
    /// A CLOSE record of one byte, which cannot hold a code.
    #[error("close record of 1 byte has no room for a code")]
    BadClose,
    /// The link ended in the middle of a record.
    #[error("link closed in the middle of a record")]
    Truncated,
    /// The OPEN, ACCEPT or REJECT JSON did not parse.
    #[error("malformed {kind} record: {source}")]
    BadJson {
        /// Which record.
        kind: &'static str,
        /// The parser's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// A record arrived where the protocol does not allow it.
    #[error("unexpected {0} record")]
    Unexpected(&'static str),
    /// A REQUEST or RESPONSE payload whose head length does not fit the payload.
    #[error("malformed {kind} record: {reason}")]
    Malformed {
        /// Which record.
        kind: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A HANDOFF record arrived without a descriptor.
    #[error("HANDOFF record carried no descriptor")]
    NoDescriptor,
    /// The kernel cut the descriptors of a HANDOFF short (MSG_CTRUNC).
    #[error("descriptors were truncated in transit")]
    DescriptorsTruncated,
    /// The socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The header of a record: its kind byte and 32-bit big-endian payload length.
pub fn encode_header(kind: RecordKind, len: u32) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[0] = kind as u8;
    header[1..].copy_from_slice(&len.to_be_bytes());
    header
}

/// Reads a record header: the kind, and the payload length checked against
/// `max_payload` (for a FANOUT, against `max_payload` plus its recipients,
/// [`crate::fanout::MAX_FANOUT_OVERHEAD`]).
pub fn decode_header(
    header: [u8; HEADER_LEN],
    max_payload: usize,
) -> Result<(RecordKind, usize), LinkError> {
    let [kind_byte, len @ ..] = header;
    // Not `ok_or`: the error (which has a destructor) would be built and
    // dropped for every record read.
    let Some(kind) = RecordKind::from_byte(kind_byte) else {
        return Err(LinkError::UnknownKind(kind_byte));
    };
    let len = u32::from_be_bytes(len);
    let max = match kind {
        RecordKind::Fanout => max_payload.saturating_add(MAX_FANOUT_OVERHEAD),
        _ => max_payload,
    };
    let len = usize::try_from(len)
        .ok()
        .filter(|len| *len <= max)
        .ok_or_else(|| LinkError::TooLong {
            len: u64::from(len),
            max,
        })?;
    Ok((kind, len))
}

impl Record {
    /// The kind byte this record is written with.
    pub fn kind(&self) -> RecordKind {
        match self {
            Record::Open(_) => RecordKind::Open,
            Record::Accept(_) => RecordKind::Accept,
            Record::Reject(_) => RecordKind::Reject,
            Record::Handoff(_) => RecordKind::Handoff,
            Record::Request(_) => RecordKind::Request,
            Record::Response(_) => RecordKind::Response,
            Record::Text(_) => RecordKind::Text,
            Record::Binary(_) => RecordKind::Binary,
            Record::Close(_) => RecordKind::Close,
            Record::Ping(_) => RecordKind::Ping,
            Record::Pong(_) => RecordKind::Pong,
            Record::Fanout(_) => RecordKind::Fanout,
        }
    }

    /// A short upper-case name for logs and errors (its kind's).
    pub fn name(&self) -> &'static str {
        self.kind().name()
    }

    fn payload_len(&self) -> usize {
        match self {
            Record::Open(b)
            | Record::Accept(b)
            | Record::Reject(b)
            | Record::Handoff(b)
            | Record::Request(b)
            | Record::Response(b)
            | Record::Binary(b)
            | Record::Ping(b)
            | Record::Pong(b) => b.len(),
            Record::Text(text) => text.len(),
            Record::Close(None) => 0,
            Record::Close(Some(info)) => 2 + info.reason.len(),
            Record::Fanout(fanout) => fanout.payload_len(),
        }
    }
}

/// Encodes and decodes [`Record`]s, refusing payloads over `max_payload` bytes.
#[derive(Debug, Clone)]
pub struct RecordCodec {
    max_payload: usize,
}

impl RecordCodec {
    /// A codec whose reader refuses (and whose writer will not produce) payloads over `max_payload`.
    pub fn new(max_payload: usize) -> RecordCodec {
        RecordCodec { max_payload }
    }

    /// The largest payload this codec reads or writes.
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }
}

impl Default for RecordCodec {
    fn default() -> RecordCodec {
        RecordCodec::new(crate::DEFAULT_MAX_PAYLOAD)
    }
}

impl Decoder for RecordCodec {
    type Item = Record;
    type Error = LinkError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Record>, LinkError> {
        let Some(&header) = src.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let (kind, len) = decode_header(header, self.max_payload)?;
        if kind == RecordKind::OpenHandoff {
            // Its descriptor came with its first byte and a plain read dropped it.
            return Err(LinkError::Unexpected(
                "OPEN_HANDOFF where no descriptor can be received",
            ));
        }
        let Some(total) = HEADER_LEN.checked_add(len) else {
            return Err(LinkError::TooLong {
                len: len as u64,
                max: self.max_payload,
            });
        };
        if src.len() < total {
            // Reserve only what this record still needs, never more than the limit.
            src.reserve(total - src.len());
            return Ok(None);
        }
        src.advance(HEADER_LEN);
        let payload = src.split_to(len).freeze();
        let record = match kind {
            RecordKind::Open => Record::Open(payload),
            RecordKind::Accept => Record::Accept(payload),
            RecordKind::Reject => Record::Reject(payload),
            RecordKind::Handoff => Record::Handoff(payload),
            RecordKind::Request => Record::Request(payload),
            RecordKind::Response => Record::Response(payload),
            RecordKind::OpenHandoff => unreachable!("refused above"),
            RecordKind::Text => {
                Record::Text(Utf8Bytes::try_from(payload).map_err(|_| LinkError::InvalidUtf8)?)
            }
            RecordKind::Binary => Record::Binary(payload),
            RecordKind::Close => Record::Close(decode_close(&payload)?),
            RecordKind::Ping => Record::Ping(control_payload("PING", payload)?),
            RecordKind::Pong => Record::Pong(control_payload("PONG", payload)?),
            RecordKind::Fanout => Record::Fanout(Fanout::decode(payload, self.max_payload)?),
        };
        Ok(Some(record))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Record>, LinkError> {
        match self.decode(src)? {
            Some(record) => Ok(Some(record)),
            None if src.is_empty() => Ok(None),
            None => Err(LinkError::Truncated),
        }
    }
}

/// A PING or PONG payload, which must fit a control frame.
fn control_payload(kind: &'static str, payload: Bytes) -> Result<Bytes, LinkError> {
    if payload.len() > MAX_CONTROL_PAYLOAD {
        return Err(LinkError::Malformed {
            kind,
            reason: "payload over 125 bytes",
        });
    }
    Ok(payload)
}

pub(crate) fn decode_close(payload: &[u8]) -> Result<Option<CloseInfo>, LinkError> {
    match payload {
        [] => Ok(None),
        [_] => Err(LinkError::BadClose),
        [hi, lo, reason @ ..] => {
            let reason = std::str::from_utf8(reason).map_err(|_| LinkError::InvalidUtf8)?;
            Ok(Some(CloseInfo {
                code: u16::from_be_bytes([*hi, *lo]),
                reason: reason.to_owned(),
            }))
        }
    }
}

impl Encoder<Record> for RecordCodec {
    type Error = LinkError;

    fn encode(&mut self, record: Record, dst: &mut BytesMut) -> Result<(), LinkError> {
        let len = record.payload_len();
        let max = match &record {
            Record::Fanout(_) => self.max_payload.saturating_add(MAX_FANOUT_OVERHEAD),
            _ => self.max_payload,
        };
        let too_long = LinkError::TooLong {
            len: len as u64,
            max,
        };
        if len > max {
            return Err(too_long);
        }
        if let Record::Fanout(fanout) = &record
            && fanout.message.payload_len() > self.max_payload
        {
            return Err(LinkError::TooLong {
                len: fanout.message.payload_len() as u64,
                max: self.max_payload,
            });
        }
        if let Record::Ping(payload) | Record::Pong(payload) = &record
            && payload.len() > MAX_CONTROL_PAYLOAD
        {
            return Err(LinkError::Malformed {
                kind: record.name(),
                reason: "payload over 125 bytes",
            });
        }
        let len32 = u32::try_from(len).map_err(|_| too_long)?;
        dst.reserve(HEADER_LEN + len);
        dst.extend_from_slice(&encode_header(record.kind(), len32));
        match record {
            Record::Open(b)
            | Record::Accept(b)
            | Record::Reject(b)
            | Record::Handoff(b)
            | Record::Request(b)
            | Record::Response(b)
            | Record::Binary(b)
            | Record::Ping(b)
            | Record::Pong(b) => dst.extend_from_slice(&b),
            Record::Text(text) => dst.extend_from_slice(text.as_bytes()),
            Record::Close(None) => {}
            Record::Close(Some(info)) => {
                dst.put_u16(info.code);
                dst.extend_from_slice(info.reason.as_bytes());
            }
            Record::Fanout(fanout) => fanout.put_payload(dst),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
