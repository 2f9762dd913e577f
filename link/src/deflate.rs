//! permessage-deflate (RFC 7692) for a server-role WebSocket, the same in the
//! gateway's relay and in a backend's direct session: [`DeflateParams`] (what
//! the handshake agreed, carried in OPEN), [`MessageDeflater`] (compresses
//! outgoing messages) and [`FrameInflater`] (turns the client's compressed
//! frames into plain ones under tungstenite, in `websocket::ReadAhead`).
//!
//! tungstenite 0.30 has no extension support: it refuses any frame with RSV1.
//! So the client's byte stream is rewritten before tungstenite parses it: a
//! compressed message's frames are unmasked, inflated in bounded chunks and
//! handed on as plain frames (masked with a zero key), while every other frame
//! passes through untouched, so tungstenite still enforces every other rule
//! (an RSV1 bit on a control or continuation frame reaches it and is `1002`).
//! Outgoing messages are compressed here and sent as whole frames with RSV1
//! set (`Message::Frame`).
//!
//! Memory: with `server_no_context_takeover` the compressor is shared by all
//! clients of a thread and reset after each message; with
//! `client_no_context_takeover` a client holds an inflater only while one of
//! its messages is being inflated, then returns it to a per-thread pool. An
//! idle client holds no deflate state beyond a few bytes of parameters.
//! Negotiating is the gateway's job; nothing here reads headers.

use std::cell::RefCell;
use std::io;

use bytes::{Buf, BufMut, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

use crate::frames::parse_header;

/// Smallest LZ77 window RFC 7692 allows a peer to ask for.
pub const MIN_WINDOW_BITS: u8 = 8;
/// Largest LZ77 window, and the default when a peer asks for none.
pub const MAX_WINDOW_BITS: u8 = 15;

/// Compression level of outgoing messages: zlib's fastest. On the JSON chat
/// workload of BENCHMARKS.md it keeps most of the ratio of the default level
/// for a fraction of the CPU.
const COMPRESSION_LEVEL: u32 = 1;

/// Most inflated bytes handed on per plain frame: bounds the memory of one
/// step whatever the compression ratio of the input.
const INFLATE_CHUNK: usize = 16 * 1024;

/// The empty stored block every compressed message's end lacks (RFC 7692 §7.2.1).
const MESSAGE_TRAILER: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Inflaters kept per thread for the next message of any client.
const INFLATER_POOL: usize = 8;

/// What the handshake agreed for permessage-deflate (OPEN's `deflate`), in
/// RFC 7692's parameter names. The server is always this side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeflateParams {
    /// The server resets its compressor after every message.
    #[serde(default)]
    pub server_no_context_takeover: bool,
    /// The client resets its compressor after every message, so the server
    /// need not keep an inflater between messages.
    #[serde(default)]
    pub client_no_context_takeover: bool,
    /// The server's LZ77 window, 8 to 15 bits.
    #[serde(default = "max_window_bits")]
    pub server_max_window_bits: u8,
    /// The client's LZ77 window, 8 to 15 bits.
    #[serde(default = "max_window_bits")]
    pub client_max_window_bits: u8,
}

fn max_window_bits() -> u8 {
    MAX_WINDOW_BITS
}

impl DeflateParams {
    /// Whether both windows are within RFC 7692's 8 to 15 bits.
    pub fn is_valid(&self) -> bool {
        let range = MIN_WINDOW_BITS..=MAX_WINDOW_BITS;
        range.contains(&self.server_max_window_bits) && range.contains(&self.client_max_window_bits)
    }
}

/// Why a client's compressed message was refused.
#[derive(Debug, thiserror::Error)]
pub enum DeflateError {
    /// The message inflates (or its compressed form grows) past the maximum
    /// message size; the client gets `1009`.
    #[error("compressed message inflates past {max_message_size} bytes")]
    TooBig {
        /// The limit it crossed.
        max_message_size: usize,
    },
    /// The compressed data is not valid deflate; the client gets `1007`.
    #[error("invalid compressed data")]
    Corrupt,
}

impl DeflateError {
    /// The error as an I/O error, which is how it reaches tungstenite's reader.
    fn into_io(self) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, self)
    }
}

/// The [`DeflateError`] inside an I/O error, if it is one.
pub fn deflate_error(error: &io::Error) -> Option<&DeflateError> {
    error.get_ref()?.downcast_ref::<DeflateError>()
}

thread_local! {
    /// Shared compressors, one per window size (index `bits - 8`), used by
    /// every client with `server_no_context_takeover` on this thread.
    static COMPRESSORS: RefCell<[Option<Box<Compress>>; 8]> = RefCell::default();
    /// Inflaters between two messages of clients with `client_no_context_takeover`.
    static INFLATERS: RefCell<Vec<Decompress>> = const { RefCell::new(Vec::new()) };
}

/// A compressor for `window_bits`: zlib cannot make raw deflate with a
/// 256-byte window, so 8 bits compress at level 0 (stored blocks, which
/// refer to no earlier byte and so fit any window).
fn new_compressor(window_bits: u8) -> Box<Compress> {
    let window_bits = window_bits.clamp(MIN_WINDOW_BITS, MAX_WINDOW_BITS);
    let level = if window_bits == MIN_WINDOW_BITS {
        Compression::none()
    } else {
        Compression::new(COMPRESSION_LEVEL)
    };
    Box::new(Compress::new_with_window_bits(
        level,
        false,
        window_bits.max(MIN_WINDOW_BITS + 1),
    ))
}

/// Compresses `input` with a sync flush and strips the trailer RFC 7692
/// leaves off; `None` if the compressor fails.
fn compress_message(compress: &mut Compress, input: &[u8]) -> Option<Vec<u8>> {
    let mut output = Vec::with_capacity(input.len() / 2 + 64);
    let mut consumed = 0usize;
    loop {
        if output.capacity() - output.len() < 64 {
            output.reserve(output.len().max(64));
        }
        let before = compress.total_in();
        let rest = input.get(consumed..)?;
        compress
            .compress_vec(rest, &mut output, FlushCompress::Sync)
            .ok()?;
        consumed += usize::try_from(compress.total_in() - before).ok()?;
        // The flush is complete once the compressor returns with room to spare.
        if consumed >= input.len() && output.len() < output.capacity() {
            break;
        }
    }
    if output.ends_with(&MESSAGE_TRAILER) {
        output.truncate(output.len() - MESSAGE_TRAILER.len());
    }
    Some(output)
}

/// Bytes of `len` bytes of data as deflate stored blocks.
fn stored_len(len: usize) -> usize {
    len + 5 * len.div_ceil(STORED_BLOCK_MAX).max(1)
}

/// The most data one stored block holds.
const STORED_BLOCK_MAX: usize = 0xffff;

/// `data` as deflate stored blocks (RFC 1951 section 3.2.4), none final:
/// each a zero header byte (the stream is at a byte boundary), LEN and NLEN
/// little-endian, then the bytes as they are.
fn stored_blocks(data: &[u8]) -> Vec<u8> {
    let mut output = Vec::with_capacity(stored_len(data.len()));
    for chunk in data.chunks(STORED_BLOCK_MAX) {
        let len = u16::try_from(chunk.len()).expect("a chunk holds at most 65535 bytes");
        output.push(0);
        output.extend_from_slice(&len.to_le_bytes());
        output.extend_from_slice(&(!len).to_le_bytes());
        output.extend_from_slice(chunk);
    }
    output
}

/// Compresses a client's outgoing messages as agreed.
#[derive(Debug)]
pub struct MessageDeflater {
    params: DeflateParams,
    /// This client's own compressor when the server keeps its context; with
    /// `server_no_context_takeover` the thread's shared one is used.
    context: Option<Box<Compress>>,
}

impl MessageDeflater {
    /// Compresses as `params` say; allocates nothing until a message is sent.
    pub fn new(params: DeflateParams) -> MessageDeflater {
        MessageDeflater {
            params,
            context: None,
        }
    }

    /// `message` as it goes on the wire: a text or binary message becomes
    /// one compressed frame (RSV1 set); anything else is returned as it is.
    ///
    /// Every data message is compressed, even where that saves nothing:
    /// RFC 7692 allows uncompressed messages on a compressed connection, but
    /// the conformance driver (kosoku) errors on them, and data that does not
    /// shrink goes as stored blocks, 5 bytes more per 64 KiB.
    /// Only if the compressor fails does a message go out plain.
    pub fn compress(&mut self, message: Message) -> Message {
        let (opcode, payload) = match &message {
            Message::Text(text) => (Data::Text, text.as_bytes()),
            Message::Binary(data) => (Data::Binary, &data[..]),
            _ => return message,
        };
        let compressed = if self.params.server_no_context_takeover {
            let slot = usize::from(
                self.params
                    .server_max_window_bits
                    .clamp(MIN_WINDOW_BITS, MAX_WINDOW_BITS)
                    - MIN_WINDOW_BITS,
            );
            COMPRESSORS.with(|compressors| {
                let mut compressors = compressors.borrow_mut();
                let compress = compressors[slot]
                    .get_or_insert_with(|| new_compressor(self.params.server_max_window_bits));
                let compressed = compress_message(compress, payload);
                compress.reset();
                compressed
            })
        } else {
            // The client's inflater keeps our context, so every message must
            // go through the same compressor, however small.
            let compress = self
                .context
                .get_or_insert_with(|| new_compressor(self.params.server_max_window_bits));
            let compressed = compress_message(compress, payload);
            if compressed.is_none() {
                // A fresh stream refers to nothing the client's context lacks.
                compress.reset();
            }
            compressed
        };
        let compressed = match compressed {
            // Level 1 codes incompressible data with fixed Huffman codes, up
            // to an eighth larger; stored blocks cost 5 bytes per 64 KiB. A
            // client keeping no context of ours can take either.
            Some(compressed)
                if self.params.server_no_context_takeover
                    && !payload.is_empty()
                    && compressed.len() > stored_len(payload.len()) =>
            {
                Some(stored_blocks(payload))
            }
            other => other,
        };
        match compressed {
            Some(compressed) => {
                let mut frame = Frame::message(compressed, OpCode::Data(opcode), true);
                frame.header_mut().rsv1 = true;
                Message::Frame(frame)
            }
            None => message,
        }
    }
}

/// Where the client's byte stream is, frame-wise.
#[derive(Debug, Clone, Copy)]
enum FrameState {
    /// Next comes a frame header.
    Header,
    /// Inside a frame that passes through untouched: this many payload bytes left.
    Pass { remaining: u64 },
    /// Inside a compressed message's frame.
    Inflate {
        /// Payload bytes not yet unmasked (and still to come from the socket).
        to_unmask: u64,
        /// Unmasked payload bytes at the front of the input, not yet inflated.
        unmasked: usize,
        mask: [u8; 4],
        /// Position in `mask` of the next byte to unmask.
        mask_pos: usize,
        /// This is the message's last frame.
        fin: bool,
    },
    /// The message's payload is all in; the trailer's bytes from this index
    /// on are still to be inflated.
    Trailer { fed: usize },
}

/// The message in progress on the client's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InMessage {
    None,
    /// A fragmented uncompressed message: its continuations pass through.
    Plain,
    /// A compressed message.
    Compressed {
        opcode: u8,
        /// A plain frame of it was handed on (the next ones are continuations).
        started: bool,
        /// Inflated bytes so far.
        inflated: usize,
        /// Compressed payload bytes announced so far.
        compressed: u64,
        /// The deflate stream ended (a BFINAL block): the rest is ignored.
        ended: bool,
    },
}

/// Rewrites a client's frames for tungstenite: compressed messages come out
/// inflated, as plain frames; everything else passes through.
#[derive(Debug)]
pub struct FrameInflater {
    params: DeflateParams,
    max_message_size: usize,
    state: FrameState,
    message: InMessage,
    /// This client's inflater: while a message is inflated, or for good when
    /// the client keeps its context.
    inflater: Option<Decompress>,
}

/// What one step over the input did.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Output was produced or input consumed; step again.
    Progress,
    /// More input is needed.
    NeedInput,
}

impl FrameInflater {
    /// Inflates a client's messages as `params` say, refusing any that
    /// inflates past `max_message_size`.
    pub fn new(params: DeflateParams, max_message_size: usize) -> FrameInflater {
        FrameInflater {
            params,
            max_message_size,
            state: FrameState::Header,
            message: InMessage::None,
            inflater: None,
        }
    }

    /// Whether nothing is in progress (no partial frame, no message being inflated).
    pub fn is_idle(&self) -> bool {
        matches!(self.state, FrameState::Header) && self.message == InMessage::None
    }

    /// Takes what it can from the front of `input` and appends plain frames
    /// to `output` (at most about [`INFLATE_CHUNK`] bytes per step).
    pub fn step(&mut self, input: &mut BytesMut, output: &mut BytesMut) -> io::Result<Step> {
        match self.state {
            FrameState::Header => self.header(input, output),
            FrameState::Pass { remaining } => {
                if input.is_empty() {
                    return Ok(Step::NeedInput);
                }
                let n = usize::try_from(remaining)
                    .unwrap_or(usize::MAX)
                    .min(input.len());
                output.extend_from_slice(&input[..n]);
                input.advance(n);
                let remaining = remaining - n as u64;
                self.state = if remaining == 0 {
                    FrameState::Header
                } else {
                    FrameState::Pass { remaining }
                };
                Ok(Step::Progress)
            }
            FrameState::Inflate {
                to_unmask,
                unmasked,
                mask,
                mask_pos,
                fin,
            } => self.inflate_payload(input, output, to_unmask, unmasked, mask, mask_pos, fin),
            FrameState::Trailer { fed } => self.inflate_trailer(output, fed),
        }
    }

    /// Reads one frame header and decides what becomes of its frame.
    fn header(&mut self, input: &mut BytesMut, output: &mut BytesMut) -> io::Result<Step> {
        let Some(header) = parse_header(input) else {
            return Ok(Step::NeedInput);
        };
        let is_compressed_start = header.rsv1
            && !header.rsv2
            && !header.rsv3
            && header.masked
            && matches!(header.opcode, 1 | 2)
            && self.message == InMessage::None;
        let is_compressed_continuation = header.opcode == 0
            && !header.rsv1
            && !header.rsv2
            && !header.rsv3
            && header.masked
            && matches!(self.message, InMessage::Compressed { .. });
        if !(is_compressed_start || is_compressed_continuation) {
            // Passes through as it came; tungstenite judges it (an RSV1 on a
            // control or continuation frame, an interleaved data frame…).
            if header.opcode < 8 && !header.rsv1 && !header.rsv2 && !header.rsv3 {
                self.message = match (header.opcode, header.fin) {
                    (1 | 2, false) => InMessage::Plain,
                    (0, true) if self.message == InMessage::Plain => InMessage::None,
                    _ => self.message,
                };
            }
            output.extend_from_slice(&input[..header.len]);
            input.advance(header.len);
            self.state = if header.payload_len == 0 {
                FrameState::Header
            } else {
                FrameState::Pass {
                    remaining: header.payload_len,
                }
            };
            return Ok(Step::Progress);
        }
        if is_compressed_start {
            self.message = InMessage::Compressed {
                opcode: header.opcode,
                started: false,
                inflated: 0,
                compressed: 0,
                ended: false,
            };
            if self.inflater.is_none() {
                self.inflater = Some(
                    INFLATERS
                        .with(|pool| pool.borrow_mut().pop())
                        .unwrap_or_else(|| Decompress::new(false)),
                );
            }
        }
        if let InMessage::Compressed { compressed, .. } = &mut self.message {
            *compressed = compressed.saturating_add(header.payload_len);
            // Deflate never grows data by more than a few bytes per 16 KiB block.
            let bound = self.max_message_size as u64 + self.max_message_size as u64 / 256 + 1024;
            if *compressed > bound {
                return Err(DeflateError::TooBig {
                    max_message_size: self.max_message_size,
                }
                .into_io());
            }
        }
        input.advance(header.len);
        self.state = FrameState::Inflate {
            to_unmask: header.payload_len,
            unmasked: 0,
            mask: header.mask,
            mask_pos: 0,
            fin: header.fin,
        };
        Ok(Step::Progress)
    }

    #[allow(clippy::too_many_arguments)]
    fn inflate_payload(
        &mut self,
        input: &mut BytesMut,
        output: &mut BytesMut,
        mut to_unmask: u64,
        mut unmasked: usize,
        mask: [u8; 4],
        mut mask_pos: usize,
        fin: bool,
    ) -> io::Result<Step> {
        // Unmask what arrived of this frame.
        let n_new = usize::try_from(to_unmask)
            .unwrap_or(usize::MAX)
            .min(input.len() - unmasked);
        for byte in &mut input[unmasked..unmasked + n_new] {
            *byte ^= mask[mask_pos];
            mask_pos = (mask_pos + 1) & 3;
        }
        unmasked += n_new;
        to_unmask -= n_new as u64;
        if unmasked == 0 && to_unmask == 0 {
            self.state = if fin {
                FrameState::Trailer { fed: 0 }
            } else {
                FrameState::Header
            };
            return Ok(Step::Progress);
        }
        if unmasked == 0 {
            self.state = FrameState::Inflate {
                to_unmask,
                unmasked,
                mask,
                mask_pos,
                fin,
            };
            return Ok(Step::NeedInput);
        }
        let (consumed, _) = self.inflate(&input[..unmasked], output, false)?;
        input.advance(consumed);
        unmasked -= consumed;
        self.state = FrameState::Inflate {
            to_unmask,
            unmasked,
            mask,
            mask_pos,
            fin,
        };
        Ok(Step::Progress)
    }

    /// Inflates the message's trailer and hands on its last frame.
    fn inflate_trailer(&mut self, output: &mut BytesMut, fed: usize) -> io::Result<Step> {
        let (consumed, filled) = self.inflate(&MESSAGE_TRAILER[fed..], output, true)?;
        let fed = fed + consumed;
        if fed < MESSAGE_TRAILER.len() || filled {
            // More output may be pending inside the inflater.
            self.state = FrameState::Trailer { fed };
            return Ok(Step::Progress);
        }
        // Everything is out: the final, empty frame ends the message.
        self.emit(output, &[], true);
        self.finish_message();
        Ok(Step::Progress)
    }

    /// Feeds `input` to the inflater and hands the output on as one plain
    /// frame (not final). Returns the bytes consumed and whether the output
    /// chunk was filled (more may be pending).
    fn inflate(
        &mut self,
        input: &[u8],
        output: &mut BytesMut,
        flush: bool,
    ) -> io::Result<(usize, bool)> {
        let InMessage::Compressed {
            inflated, ended, ..
        } = self.message
        else {
            return Ok((input.len(), false));
        };
        if ended {
            // Bytes after a final deflate block inflate to nothing.
            return Ok((input.len(), false));
        }
        let Some(inflater) = self.inflater.as_mut() else {
            return Ok((input.len(), false));
        };
        // Not zeroed: the inflater writes into the spare capacity.
        let mut chunk = Vec::with_capacity(INFLATE_CHUNK);
        let before_in = inflater.total_in();
        let before_out = inflater.total_out();
        let status = inflater
            .decompress_vec(
                input,
                &mut chunk,
                if flush {
                    FlushDecompress::Sync
                } else {
                    FlushDecompress::None
                },
            )
            .map_err(|_| DeflateError::Corrupt.into_io())?;
        let consumed = usize::try_from(inflater.total_in() - before_in).unwrap_or(input.len());
        let produced = usize::try_from(inflater.total_out() - before_out).unwrap_or(0);
        let inflated = inflated.saturating_add(produced);
        if inflated > self.max_message_size {
            return Err(DeflateError::TooBig {
                max_message_size: self.max_message_size,
            }
            .into_io());
        }
        if let InMessage::Compressed {
            inflated: total,
            ended,
            ..
        } = &mut self.message
        {
            *total = inflated;
            *ended = status == Status::StreamEnd;
        }
        if produced > 0 {
            self.emit(output, &chunk, false);
        } else if consumed == 0 && !input.is_empty() && status == Status::BufError {
            // No progress with input and room to spare: the data is broken.
            return Err(DeflateError::Corrupt.into_io());
        }
        Ok((consumed, chunk.len() == chunk.capacity()))
    }

    /// Appends a plain frame of the message in progress to `output`, masked
    /// with a zero key (a client's frames must be masked).
    fn emit(&mut self, output: &mut BytesMut, payload: &[u8], fin: bool) {
        let InMessage::Compressed {
            opcode, started, ..
        } = &mut self.message
        else {
            return;
        };
        let opcode = if *started { 0 } else { *opcode };
        *started = true;
        output.reserve(payload.len() + 14);
        output.put_u8(if fin { 0x80 } else { 0 } | opcode);
        let len = payload.len();
        if len < 126 {
            output.put_u8(0x80 | len as u8);
        } else if let Ok(len) = u16::try_from(len) {
            output.put_u8(0x80 | 126);
            output.put_u16(len);
        } else {
            output.put_u8(0x80 | 127);
            output.put_u64(len as u64);
        }
        output.put_slice(&[0, 0, 0, 0]);
        output.put_slice(payload);
    }

    /// Ends the compressed message: the inflater is reset, and kept only if
    /// the client keeps its context.
    fn finish_message(&mut self) {
        let ended = matches!(self.message, InMessage::Compressed { ended: true, .. });
        self.message = InMessage::None;
        self.state = FrameState::Header;
        if self.params.client_no_context_takeover {
            if let Some(mut inflater) = self.inflater.take() {
                inflater.reset(false);
                INFLATERS.with(|pool| {
                    let mut pool = pool.borrow_mut();
                    if pool.len() < INFLATER_POOL {
                        pool.push(inflater);
                    }
                });
            }
        } else if ended && let Some(inflater) = self.inflater.as_mut() {
            // After a final block the client starts a new stream.
            inflater.reset(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_CONTEXT: DeflateParams = DeflateParams {
        server_no_context_takeover: true,
        client_no_context_takeover: true,
        server_max_window_bits: 15,
        client_max_window_bits: 15,
    };

    use crate::frames::client_frame;

    /// Raw deflate of `data` with a sync flush, trailer stripped.
    fn deflate(data: &[u8]) -> Vec<u8> {
        let mut compress = Compress::new(Compression::default(), false);
        compress_message(&mut compress, data).expect("compresses")
    }

    /// Runs `input` through an inflater fed in pieces of `piece` bytes and
    /// returns the plain frames' (opcode, fin, payload) or the error.
    fn rewrite(
        params: DeflateParams,
        max: usize,
        input: &[u8],
        piece: usize,
    ) -> io::Result<Vec<(u8, bool, Vec<u8>)>> {
        let mut inflater = FrameInflater::new(params, max);
        let mut buffer = BytesMut::new();
        let mut output = BytesMut::new();
        for chunk in input.chunks(piece.max(1)) {
            buffer.extend_from_slice(chunk);
            while inflater.step(&mut buffer, &mut output)? == Step::Progress {}
        }
        let mut frames = Vec::new();
        let mut rest = &output[..];
        while let Some(header) = parse_header(rest) {
            let end = header.len + header.payload_len as usize;
            let payload: Vec<u8> = rest[header.len..end]
                .iter()
                .enumerate()
                .map(|(idx, byte)| byte ^ header.mask[idx % 4])
                .collect();
            frames.push((
                header.opcode | (u8::from(header.rsv1) << 6),
                header.fin,
                payload,
            ));
            rest = &rest[end..];
        }
        assert!(rest.is_empty(), "output ends on a frame boundary");
        Ok(frames)
    }

    fn joined(frames: &[(u8, bool, Vec<u8>)]) -> Vec<u8> {
        frames
            .iter()
            .flat_map(|(_, _, payload)| payload.clone())
            .collect()
    }

    #[test]
    fn a_compressed_message_comes_out_plain_whatever_the_read_sizes() {
        let text = "hello hello hello hello hello, deflate!".repeat(50);
        let compressed = deflate(text.as_bytes());
        let input = client_frame(0x80 | 0x40 | 1, &compressed, [1, 2, 3, 4]);
        for piece in [1, 3, 7, 64, input.len()] {
            let frames = rewrite(NO_CONTEXT, 1 << 20, &input, piece).expect("valid");
            assert_eq!(joined(&frames), text.as_bytes(), "piece {piece}");
            assert_eq!(frames[0].0, 1, "first frame is text");
            assert!(frames[1..].iter().all(|frame| frame.0 == 0));
            assert!(frames.last().expect("frames").1, "last frame is final");
            assert!(frames[..frames.len() - 1].iter().all(|frame| !frame.1));
        }
    }

    #[test]
    fn fragmented_compressed_messages_and_control_frames_interleave() {
        let data: Vec<u8> = (0..5000u32).map(|n| (n % 251) as u8).collect();
        let compressed = deflate(&data);
        let (a, b) = compressed.split_at(compressed.len() / 2);
        let mut input = client_frame(0x40 | 2, a, [9, 8, 7, 6]);
        input.extend(client_frame(0x80 | 9, b"ping", [1, 1, 1, 1]));
        input.extend(client_frame(0x80, b, [5, 5, 5, 5]));
        input.extend(client_frame(0x81, b"plain", [0, 1, 0, 1]));
        let frames = rewrite(NO_CONTEXT, 1 << 20, &input, 5).expect("valid");
        let ping = frames.iter().position(|f| f.0 == 9).expect("ping passes");
        assert_eq!(frames[ping].2, b"ping");
        let message: Vec<u8> = frames
            .iter()
            .filter(|f| f.0 != 9 && f.2 != b"plain")
            .flat_map(|f| f.2.clone())
            .collect();
        assert_eq!(message, data);
        assert_eq!(frames.last().expect("frames").2, b"plain");
    }

    #[test]
    fn rsv1_on_control_and_continuation_frames_reaches_tungstenite() {
        let input = client_frame(0x80 | 0x40 | 9, b"", [0; 4]);
        let frames = rewrite(NO_CONTEXT, 1024, &input, 64).expect("passes through");
        assert_eq!(frames[0].0, 0x40 | 9, "RSV1 kept for tungstenite to refuse");
        let mut input = client_frame(1, b"a", [0; 4]);
        input.extend(client_frame(0x80 | 0x40, b"b", [0; 4]));
        let frames = rewrite(NO_CONTEXT, 1024, &input, 64).expect("passes through");
        assert_eq!(frames[1].0, 0x40);
    }

    #[test]
    fn a_deflate_bomb_fails_with_too_big_before_inflating_it_all() {
        let bomb = deflate(&vec![0u8; 64 << 20]);
        assert!(bomb.len() < 128 * 1024, "64 MiB of zeros compress well");
        let input = client_frame(0x80 | 0x40 | 2, &bomb, [0; 4]);
        let error = rewrite(NO_CONTEXT, 1 << 20, &input, 4096).expect_err("too big");
        assert!(matches!(
            deflate_error(&error),
            Some(DeflateError::TooBig { .. })
        ));
    }

    #[test]
    fn corrupt_data_is_refused() {
        let input = client_frame(0x80 | 0x40 | 2, &[0xff; 64], [0; 4]);
        let error = rewrite(NO_CONTEXT, 1 << 20, &input, 64).expect_err("corrupt");
        assert!(matches!(deflate_error(&error), Some(DeflateError::Corrupt)));
    }

    #[test]
    fn outgoing_messages_round_trip_for_every_window() {
        let text = r#"{"type":"message","from":"alice","text":"hello, world"}"#.repeat(20);
        for bits in MIN_WINDOW_BITS..=MAX_WINDOW_BITS {
            for no_context in [true, false] {
                let params = DeflateParams {
                    server_no_context_takeover: no_context,
                    server_max_window_bits: bits,
                    ..NO_CONTEXT
                };
                let mut deflater = MessageDeflater::new(params);
                let mut decompress = Decompress::new_with_window_bits(false, bits.max(9));
                for _ in 0..3 {
                    let message = deflater.compress(Message::text(text.clone()));
                    let Message::Frame(frame) = message else {
                        panic!("compressible text is compressed");
                    };
                    assert!(frame.header().rsv1);
                    let mut input = frame.into_payload().to_vec();
                    input.extend_from_slice(&MESSAGE_TRAILER);
                    let mut out = Vec::with_capacity(text.len() + 64);
                    decompress
                        .decompress_vec(&input, &mut out, FlushDecompress::Sync)
                        .expect("inflates");
                    assert_eq!(out, text.as_bytes(), "bits {bits}");
                    if no_context {
                        decompress.reset(false);
                    }
                }
            }
        }
    }

    #[test]
    fn every_data_message_is_compressed_and_control_messages_are_not() {
        let mut deflater = MessageDeflater::new(NO_CONTEXT);
        // xorshift noise does not compress: stored blocks carry it.
        let mut state = 0x2545_f491_u32;
        let noise: Vec<u8> = (0..256)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                state as u8
            })
            .collect();
        let long_noise = noise.repeat(300);
        for message in [
            Message::text("hi"),
            Message::binary(noise),
            Message::binary(long_noise),
        ] {
            let Message::Frame(frame) = deflater.compress(message.clone()) else {
                panic!("{message:?} is compressed");
            };
            assert!(frame.header().rsv1);
            assert!(frame.payload().len() <= stored_len(message.len()));
            let mut input = frame.payload().to_vec();
            input.extend_from_slice(&MESSAGE_TRAILER);
            let mut out = Vec::with_capacity(message.len() + 64);
            Decompress::new(false)
                .decompress_vec(&input, &mut out, FlushDecompress::Sync)
                .expect("inflates");
            assert_eq!(out, message.into_data());
        }
        let ping = Message::Ping(bytes::Bytes::from_static(
            b"keepalive keepalive keepalive keepalive",
        ));
        assert_eq!(deflater.compress(ping.clone()), ping);
    }
}
