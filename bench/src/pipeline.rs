//! The fast load generator of the echo scenarios: after a tungstenite
//! handshake, each client writes prebuilt masked frames and parses the echoes
//! itself, so a server that answers a million messages a second is not held
//! back by its client.
//!
//! Every connection keeps `in_flight` messages outstanding: each read is
//! parsed whole, every echo is checked against what was sent (its sequence
//! number and its bytes, in order), and as many new frames as echoes came
//! back go out together in one write. Latency is the time from the write
//! that carried a message to the read that brought its echo back.
//!
//! The pipelined chat fan-out's receivers parse their frames the same way
//! and publish how far each has got ([`FanoutProgress`]), which is the
//! window its sender keeps full.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

use harness::tls::ClientStream;

/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 64 * 1024;

/// How long a client waits for the next echo before it calls it lost.
const ECHO_DEADLINE: Duration = Duration::from_secs(10);

/// The masking key of every frame (any key is valid; a fixed one lets the frames be prebuilt).
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// One client's frames: a masked template whose sequence number is patched
/// in per message, and the payload its echo must carry.
struct Frames {
    /// The whole masked frame of sequence number 0.
    template: Vec<u8>,
    /// Where the payload starts in `template`.
    payload_at: usize,
    /// The unmasked payload of sequence number 0.
    payload: Vec<u8>,
}

impl Frames {
    /// Binary frames of `size` bytes (at least 16): the connection number,
    /// the sequence number, then a filler byte of this connection.
    fn new(connection: usize, size: usize) -> Frames {
        let size = size.max(16);
        let mut payload = Vec::with_capacity(size);
        payload.extend_from_slice(&(connection as u64).to_be_bytes());
        payload.extend_from_slice(&0u64.to_be_bytes());
        payload.resize(size, (connection % 251) as u8);
        let mut template = vec![0x82];
        match size {
            0..=125 => template.push(0x80 | size as u8),
            126..=0xffff => {
                template.push(0x80 | 126);
                template.extend_from_slice(&(size as u16).to_be_bytes());
            }
            _ => {
                template.push(0x80 | 127);
                template.extend_from_slice(&(size as u64).to_be_bytes());
            }
        }
        template.extend_from_slice(&MASK);
        let payload_at = template.len();
        template.extend(
            payload
                .iter()
                .enumerate()
                .map(|(idx, byte)| byte ^ MASK[idx % 4]),
        );
        Frames {
            template,
            payload_at,
            payload,
        }
    }

    /// Appends the frame of `seq` to `out`.
    fn push(&self, seq: u64, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&self.template);
        let seq_at = start + self.payload_at + 8;
        for (idx, byte) in seq.to_be_bytes().into_iter().enumerate() {
            // Payload offsets 8..16: the mask index is (8 + idx) % 4 = idx % 4.
            out[seq_at + idx] = byte ^ MASK[idx % 4];
        }
    }

    /// True if `got` is the payload of `seq`.
    fn matches(&self, seq: u64, got: &[u8]) -> bool {
        got.len() == self.payload.len()
            && got[..8] == self.payload[..8]
            && got[8..16] == seq.to_be_bytes()
            && got[16..] == self.payload[16..]
    }
}

/// One server frame at the start of `buf`: its first byte, and where its
/// payload starts and ends; `None` until the whole frame is there.
fn parse_frame(buf: &[u8]) -> anyhow::Result<Option<(u8, usize, usize)>> {
    let [first, second, ..] = *buf else {
        return Ok(None);
    };
    if second & 0x80 != 0 {
        bail!("masked frame from the server");
    }
    let (header_len, len) = match second & 0x7f {
        126 => match buf.get(2..4) {
            Some(bytes) => (4, u64::from(u16::from_be_bytes([bytes[0], bytes[1]]))),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(bytes) => (10, u64::from_be_bytes(bytes.try_into().expect("8 bytes"))),
            None => return Ok(None),
        },
        len => (2, u64::from(len)),
    };
    let len = usize::try_from(len).context("frame length")?;
    if len > 64 * 1024 * 1024 {
        bail!("frame of {len} bytes");
    }
    let end = header_len + len;
    Ok((buf.len() >= end).then_some((first, header_len, end)))
}

/// What one connection did.
pub struct Outcome {
    /// Echoes received and checked, in order.
    pub received: u64,
    /// Time from the write of each message to the read of its echo, µs.
    pub latencies: Histogram<u64>,
}

/// Keeps `in_flight` messages of `size` bytes outstanding on `stream` (an
/// upgraded WebSocket client connection) until `end`, then waits for the
/// last echoes and closes. Any wrong, missing or late echo is an error.
pub async fn run_connection(
    mut stream: ClientStream,
    connection: usize,
    in_flight: usize,
    size: usize,
    end: Instant,
    mut latencies: Histogram<u64>,
) -> anyhow::Result<Outcome> {
    let frames = Frames::new(connection, size);
    let mut out = Vec::with_capacity(frames.template.len() * in_flight);
    let mut buf = Vec::with_capacity(READ_CHUNK);
    // When each outstanding message was written.
    let mut sent_at: VecDeque<Instant> = VecDeque::with_capacity(in_flight);
    let (mut next_seq, mut received) = (0u64, 0u64);
    let mut to_send = in_flight;
    loop {
        if to_send > 0 && Instant::now() < end {
            out.clear();
            for _ in 0..to_send {
                frames.push(next_seq, &mut out);
                next_seq += 1;
            }
            stream.write_all(&out).await.context("writing")?;
            let now = Instant::now();
            sent_at.extend(std::iter::repeat_n(now, to_send));
        }
        to_send = 0;
        if sent_at.is_empty() {
            break;
        }
        // Read at least one more whole frame.
        let mut parsed = 0;
        loop {
            let n_read = tokio::time::timeout(ECHO_DEADLINE, read_more(&mut stream, &mut buf))
                .await
                .context("no echo within the deadline")??;
            if n_read == 0 {
                bail!("connection closed with {} echoes missing", sent_at.len());
            }
            let now = Instant::now();
            while let Some((first, payload_at, end)) = parse_frame(&buf[parsed..])? {
                if first != 0x82 {
                    bail!("unexpected frame 0x{first:02x}");
                }
                let payload = &buf[parsed + payload_at..parsed + end];
                if !frames.matches(received, payload) {
                    bail!("echo {received} does not match");
                }
                let written = sent_at.pop_front().context("an echo nobody asked for")?;
                let _ = latencies.record(now.duration_since(written).as_micros() as u64);
                received += 1;
                to_send += 1;
                parsed += end;
            }
            if to_send > 0 {
                break;
            }
        }
        buf.drain(..parsed);
    }
    // A close frame with code 1000, then whatever comes until the server closes.
    let close_payload = 1000u16.to_be_bytes();
    let mut close = vec![0x88, 0x80 | 2];
    close.extend_from_slice(&MASK);
    close.extend(
        close_payload
            .iter()
            .enumerate()
            .map(|(idx, byte)| byte ^ MASK[idx]),
    );
    stream.write_all(&close).await.context("writing close")?;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while matches!(read_more(&mut stream, &mut buf).await, Ok(n) if n > 0) {
            buf.clear();
        }
    })
    .await;
    Ok(Outcome {
        received,
        latencies,
    })
}

/// Where the chat fan-out's receivers stand, shared with its sender.
pub struct FanoutProgress {
    /// Sequence numbers each receiver has received, in order.
    pub received: Vec<AtomicU64>,
    /// Woken whenever a receiver advanced.
    pub advanced: Notify,
}

impl FanoutProgress {
    /// Progress of `receivers` receivers, none received yet.
    pub fn new(receivers: usize) -> FanoutProgress {
        FanoutProgress {
            received: (0..receivers).map(|_| AtomicU64::new(0)).collect(),
            advanced: Notify::new(),
        }
    }

    /// What the slowest receiver has received.
    pub fn slowest(&self) -> u64 {
        self.received
            .iter()
            .map(|received| received.load(Ordering::Acquire))
            .min()
            .unwrap_or(0)
    }
}

/// One chat receiver of the pipelined fan-out on `stream` (upgraded, in the
/// room): the first text message means it joined (`joined` is told), then it
/// checks that binary messages `[seq: u64][sent: u64 ns since base]` come in
/// order, records their latency and publishes its progress, until the text
/// message `end`. Anything out of order is an error.
pub async fn run_fanout_receiver(
    mut stream: ClientStream,
    receiver: usize,
    progress: Arc<FanoutProgress>,
    joined: Arc<AtomicUsize>,
    base: Instant,
    mut latencies: Histogram<u64>,
) -> anyhow::Result<Outcome> {
    let mut buf = Vec::with_capacity(READ_CHUNK);
    let mut has_joined = false;
    let mut received = 0u64;
    loop {
        let n_read = tokio::time::timeout(ECHO_DEADLINE, read_more(&mut stream, &mut buf))
            .await
            .context("no message within the deadline")??;
        if n_read == 0 {
            bail!("connection closed after {received} messages");
        }
        let now = base.elapsed().as_nanos() as u64;
        let mut parsed = 0;
        let mut ended = false;
        while let Some((first, payload_at, end)) = parse_frame(&buf[parsed..])? {
            let payload = &buf[parsed + payload_at..parsed + end];
            match first {
                0x81 if !has_joined => {
                    has_joined = true;
                    joined.fetch_add(1, Ordering::Release);
                }
                0x81 if payload == b"end" => ended = true,
                0x81 => {}
                0x82 if payload.len() == 16 => {
                    let seq = u64::from_be_bytes(payload[..8].try_into().expect("8 bytes"));
                    let sent = u64::from_be_bytes(payload[8..].try_into().expect("8 bytes"));
                    if seq != received {
                        bail!("receiver {receiver}: message {seq} where {received} was due");
                    }
                    received += 1;
                    let _ = latencies.record(now.saturating_sub(sent) / 1000);
                }
                other => bail!("unexpected frame 0x{other:02x}"),
            }
            parsed += end;
        }
        buf.drain(..parsed);
        progress.received[receiver].store(received, Ordering::Release);
        progress.advanced.notify_one();
        if ended {
            return Ok(Outcome {
                received,
                latencies,
            });
        }
    }
}

/// Reads into the spare room of `buf` (growing it for a large frame).
async fn read_more(stream: &mut ClientStream, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    if buf.capacity() - buf.len() < READ_CHUNK / 2 {
        buf.reserve(READ_CHUNK);
    }
    stream.read_buf(buf).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unmask(frame: &[u8], payload_at: usize) -> Vec<u8> {
        frame[payload_at..]
            .iter()
            .enumerate()
            .map(|(idx, byte)| byte ^ MASK[idx % 4])
            .collect()
    }

    #[test]
    fn prebuilt_frames_carry_their_sequence_number() {
        for size in [16, 64, 200, 70_000] {
            let frames = Frames::new(3, size);
            let mut out = Vec::new();
            frames.push(41, &mut out);
            let payload = unmask(&out, frames.payload_at);
            assert!(frames.matches(41, &payload), "size {size}");
            assert!(!frames.matches(42, &payload), "size {size}");
        }
    }

    #[test]
    fn server_frames_parse_once_whole() {
        let mut frame = vec![0x82, 126, 0x01, 0x00];
        frame.resize(4 + 256, 7);
        assert_eq!(parse_frame(&frame[..3]).expect("valid"), None);
        assert_eq!(parse_frame(&frame[..100]).expect("valid"), None);
        assert_eq!(parse_frame(&frame).expect("valid"), Some((0x82, 4, 260)));
        assert!(parse_frame(&[0x82, 0x85]).is_err(), "masked");
    }
}
