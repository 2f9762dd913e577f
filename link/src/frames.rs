//! The server's side of the WebSocket protocol without I/O, for the
//! gateway's framed relay and a backend's direct client alike: [`FrameReader`] turns the bytes a client sent into whole messages,
//! pings, pongs and its close, in place in the read buffer; [`put_frame`]
//! writes a server frame. Headers are read and written here, straight from
//! and into the buffers (tungstenite's `FrameHeader` goes through
//! `io::Read`/`io::Write` and cost a fifth of the relay's user-space
//! instructions per message); the rules around them (RFC 6455 sections 5
//! and 7) are here too.
//!
//! A message that fits in one frame is handed out as a slice of the read
//! buffer, unmasked in place: relaying it costs one copy, into the link's
//! output. Only a fragmented message is gathered, into a buffer bounded by
//! the largest message.

use bytes::{BufMut, BytesMut};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};

/// The most payload a control frame carries (RFC 6455 section 5.5).
const MAX_CONTROL_PAYLOAD: u64 = 125;

/// Why a client's frames were refused, and the close code it gets for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The frames broke RFC 6455: `1002`.
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// A frame or a message over the limit: `1009`.
    #[error("message over {0} bytes")]
    TooBig(usize),
    /// A text message or close reason that is not UTF-8: `1007`.
    #[error("text is not UTF-8")]
    Utf8,
}

impl FrameError {
    /// The close code and reason the client gets.
    pub fn close(self) -> (CloseCode, &'static str) {
        match self {
            FrameError::Protocol(_) => (CloseCode::Protocol, "protocol error"),
            FrameError::TooBig(_) => (CloseCode::Size, "message too big"),
            FrameError::Utf8 => (CloseCode::Invalid, "text message is not UTF-8"),
        }
    }
}

/// What one frame from the client meant.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound<'a> {
    /// A whole text message.
    Text(&'a str),
    /// A whole binary message.
    Binary(&'a [u8]),
    /// A ping with its payload.
    Ping(&'a [u8]),
    /// A pong with its payload.
    Pong(&'a [u8]),
    /// The client's close frame (already checked: an allowed code, a UTF-8 reason).
    Close(Option<CloseFrame>),
    /// A frame of a fragmented message that is not its last.
    Fragment,
}

/// The outcome of [`FrameReader::read`].
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// One frame, which took this many bytes from the front of the input.
    Frame(Inbound<'a>, usize),
    /// No whole frame yet: at least this many more bytes are needed.
    Need(usize),
}

/// A fragmented message being gathered.
#[derive(Debug)]
struct Partial {
    text: bool,
    payload: BytesMut,
}

/// Reads a client's frames, checking them as a server must.
#[derive(Debug)]
pub struct FrameReader {
    max_message_size: usize,
    partial: Option<Partial>,
    /// The last fragmented message handed out whole, until the next read or [`Self::finish`].
    complete: Option<BytesMut>,
}

impl FrameReader {
    /// Messages (and so frames) up to `max_message_size` bytes.
    pub fn new(max_message_size: usize) -> FrameReader {
        FrameReader {
            max_message_size,
            partial: None,
            complete: None,
        }
    }

    /// Whether a fragmented message is being gathered (its buffer is held).
    #[cfg(test)]
    pub(crate) fn is_mid_message(&self) -> bool {
        self.partial.is_some()
    }

    /// Reads the frame at the front of `input`, unmasking its payload in
    /// place. The caller moves past the length returned once it is done
    /// with the slice (the relay reads a burst's frames at increasing
    /// offsets and consumes the buffer once). Linear in the frame's length;
    /// after an error the reader must not be used again.
    pub fn read<'a>(&'a mut self, input: &'a mut [u8]) -> Result<Parsed<'a>, FrameError> {
        // The frame nearly every message is: one whole text or binary frame
        // with a short length, outside a fragmented message. Its checks are
        // the general path's, made on the two header bytes at once.
        if let [
            first @ (0x81 | 0x82),
            second @ 0x80..=0xfd,
            m0,
            m1,
            m2,
            m3,
            ..,
        ] = *input
            && self.partial.is_none()
            && self.complete.is_none()
        {
            let length = usize::from(second & 0x7f);
            if length > self.max_message_size {
                return Err(FrameError::TooBig(self.max_message_size));
            }
            let total = 6 + length;
            if input.len() < total {
                return Ok(Parsed::Need(total - input.len()));
            }
            let payload = &mut input[6..total];
            unmask(payload, [m0, m1, m2, m3]);
            return Ok(Parsed::Frame(whole(first == 0x81, payload)?, total));
        }
        self.complete = None;
        let Some(header) = parse_header(input) else {
            // At most 14 header bytes; ask for the largest header's worth.
            return Ok(Parsed::Need(14usize.saturating_sub(input.len()).max(1)));
        };
        let opcode = header.opcode;
        let is_control = opcode & 0x08 != 0;
        if !matches!(opcode, 0x0..=0x2 | 0x8..=0xa) {
            return Err(FrameError::Protocol("reserved opcode"));
        }
        if header.rsv1 || header.rsv2 || header.rsv3 {
            return Err(FrameError::Protocol("reserved bits set"));
        }
        if !header.masked {
            return Err(FrameError::Protocol("unmasked client frame"));
        }
        let length = header.payload_len;
        if is_control && (length > MAX_CONTROL_PAYLOAD || !header.fin) {
            return Err(FrameError::Protocol(
                "oversized or fragmented control frame",
            ));
        }
        let gathered = self
            .partial
            .as_ref()
            .map_or(0, |partial| partial.payload.len());
        if length > (self.max_message_size - gathered) as u64 {
            return Err(FrameError::TooBig(self.max_message_size));
        }
        let header_len = header.len;
        let length = length as usize;
        let total = header_len + length;
        if input.len() < total {
            return Ok(Parsed::Need(total - input.len()));
        }
        let payload = &mut input[header_len..total];
        unmask(payload, header.mask);
        let payload = &input[header_len..total];
        let inbound = match opcode {
            0x8 => Inbound::Close(close_frame(payload)?),
            0x9 => Inbound::Ping(payload),
            0xa => Inbound::Pong(payload),
            data => {
                let start = match data {
                    0x1 => Some(true),
                    0x2 => Some(false),
                    _ => None,
                };
                match (start, header.fin, self.partial.take()) {
                    (Some(text), true, None) => whole(text, payload)?,
                    (Some(text), false, None) => {
                        let mut gathered = BytesMut::with_capacity(length.max(64));
                        gathered.extend_from_slice(payload);
                        self.partial = Some(Partial {
                            text,
                            payload: gathered,
                        });
                        Inbound::Fragment
                    }
                    (None, is_final, Some(mut partial)) => {
                        partial.payload.extend_from_slice(payload);
                        if !is_final {
                            self.partial = Some(partial);
                            Inbound::Fragment
                        } else {
                            let text = partial.text;
                            let gathered = self.complete.insert(partial.payload);
                            whole(text, gathered)?
                        }
                    }
                    (Some(_), _, Some(_)) => {
                        return Err(FrameError::Protocol("new message inside a fragmented one"));
                    }
                    (None, _, None) => {
                        return Err(FrameError::Protocol("continuation with no message"));
                    }
                }
            }
        };
        Ok(Parsed::Frame(inbound, total))
    }

    /// Drops the buffer of a fragmented message handed out whole, so an idle
    /// client holds none; the next [`Self::read`] would drop it too.
    pub fn finish(&mut self) {
        self.complete = None;
    }
}

/// A whole message's payload, checked.
fn whole(text: bool, payload: &[u8]) -> Result<Inbound<'_>, FrameError> {
    if text {
        let text = std::str::from_utf8(payload).map_err(|_| FrameError::Utf8)?;
        Ok(Inbound::Text(text))
    } else {
        Ok(Inbound::Binary(payload))
    }
}

/// A close frame's payload: nothing, or a code that may be sent and a UTF-8 reason.
fn close_frame(payload: &[u8]) -> Result<Option<CloseFrame>, FrameError> {
    match payload {
        [] => Ok(None),
        [_] => Err(FrameError::Protocol("close frame of one byte")),
        [hi, lo, reason @ ..] => {
            let code = CloseCode::from(u16::from_be_bytes([*hi, *lo]));
            if !crate::message::is_sendable(code) {
                return Err(FrameError::Protocol("close code not allowed"));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| FrameError::Utf8)?;
            Ok(Some(CloseFrame {
                code,
                reason: reason.into(),
            }))
        }
    }
}

/// XORs `payload` with the client's 4-byte mask: 16 bytes a step (one
/// vector register), then the tail of under 16 a byte at a time (16 being
/// a multiple of 4, the mask starts over at the tail).
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let (blocks, rest) = payload.as_chunks_mut::<16>();
    let mask4 = u128::from(u32::from_ne_bytes(mask));
    let mask16 = mask4 | mask4 << 32 | mask4 << 64 | mask4 << 96;
    for block in blocks {
        *block = (u128::from_ne_bytes(*block) ^ mask16).to_ne_bytes();
    }
    for (index, byte) in rest.iter_mut().enumerate() {
        *byte ^= mask[index % 4];
    }
}

/// A client frame's header (RFC 6455 section 5.2), as read by [`parse_header`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct FrameHeader {
    pub(crate) fin: bool,
    pub(crate) rsv1: bool,
    pub(crate) rsv2: bool,
    pub(crate) rsv3: bool,
    pub(crate) opcode: u8,
    pub(crate) masked: bool,
    pub(crate) mask: [u8; 4],
    pub(crate) payload_len: u64,
    /// Bytes of the header itself.
    pub(crate) len: usize,
}

/// The frame header at the front of `input`, or `None` if it is not all there.
pub(crate) fn parse_header(input: &[u8]) -> Option<FrameHeader> {
    let (&first, rest) = input.split_first()?;
    let (&second, rest) = rest.split_first()?;
    let masked = second & 0x80 != 0;
    let (payload_len, rest, mut len) = match second & 0x7f {
        126 => {
            let bytes = rest.first_chunk::<2>()?;
            (u64::from(u16::from_be_bytes(*bytes)), &rest[2..], 4)
        }
        127 => {
            let bytes = rest.first_chunk::<8>()?;
            (u64::from_be_bytes(*bytes), &rest[8..], 10)
        }
        short => (u64::from(short), rest, 2),
    };
    let mask = if masked {
        len += 4;
        *rest.first_chunk::<4>()?
    } else {
        [0; 4]
    };
    Some(FrameHeader {
        fin: first & 0x80 != 0,
        rsv1: first & 0x40 != 0,
        rsv2: first & 0x20 != 0,
        rsv3: first & 0x10 != 0,
        opcode: first & 0x0f,
        masked,
        mask,
        payload_len,
        len,
    })
}

/// Appends one unmasked server frame (FIN set) of `opcode` carrying `payload` to `out`.
pub fn put_frame(out: &mut BytesMut, opcode: OpCode, payload: &[u8]) {
    crate::websocket::provision(out);
    let first = 0x80 | u8::from(opcode);
    let len = payload.len();
    if len <= 125 {
        // A fixed-size header: stored, not copied by a call.
        out.reserve(2 + len);
        out.extend_from_slice(&[first, len as u8]);
        out.extend_from_slice(payload);
        return;
    }
    // The shortest length encoding (RFC 6455 section 5.2), as tungstenite writes it.
    let mut header = [0u8; 10];
    let header_len = match len {
        126..=0xffff => {
            header[..2].copy_from_slice(&[first, 126]);
            header[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            4
        }
        _ => {
            header[..2].copy_from_slice(&[first, 127]);
            header[2..].copy_from_slice(&(len as u64).to_be_bytes());
            10
        }
    };
    out.reserve(header_len + len);
    out.put_slice(&header[..header_len]);
    out.put_slice(payload);
}

/// Appends `message` as one server frame: a text, binary, ping, pong or
/// close message as its frame, a prepared frame (a compressed message) as it is.
pub fn put_message(out: &mut BytesMut, message: Message) {
    match message {
        Message::Text(text) => put_frame(out, OpCode::Data(Data::Text), text.as_bytes()),
        Message::Binary(payload) => put_frame(out, OpCode::Data(Data::Binary), &payload),
        Message::Ping(payload) => put_frame(out, OpCode::Control(Control::Ping), &payload),
        Message::Pong(payload) => put_frame(out, OpCode::Control(Control::Pong), &payload),
        Message::Close(frame) => put_prepared(out, Frame::close(frame)),
        Message::Frame(frame) => put_prepared(out, frame),
    }
}

/// Appends a whole prepared frame (a compressed message, a close) to `out`.
pub fn put_prepared(out: &mut BytesMut, frame: Frame) {
    crate::websocket::provision(out);
    out.reserve(frame.len());
    frame
        .format(&mut out.writer())
        .expect("writing to memory cannot fail");
}

/// A client's masked frame, built by hand: `first` is its FIN, RSV and
/// opcode byte (the unit tests of this module and of `deflate`).
#[cfg(test)]
pub(crate) fn client_frame(first: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut frame = vec![first];
    match payload.len() {
        len if len < 126 => frame.push(0x80 | len as u8),
        len if len <= 0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    let payload_at = frame.len();
    frame.extend_from_slice(payload);
    unmask(&mut frame[payload_at..], mask);
    frame
}

#[cfg(test)]
mod tests;
