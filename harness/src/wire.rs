//! The harness's own byte-level reading and writing of link records, written
//! from docs/link-protocol.md and independent of the `link` crate's codec, so
//! that a bug shared by the gateway's encoder and decoder cannot hide from the
//! fake backends built on it. Records are still returned as `link::Record`
//! values, which are plain data, so tests compare them directly.

use anyhow::{Context, bail};
use bytes::Bytes;
use link::fanout::{Fanout, FanoutMessage};
use link::{CloseInfo, Record};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// Largest payload the harness reads: the gateway's default maximum message size.
const MAX_PAYLOAD: usize = 16 * 1024 * 1024;

/// One record as the wire carries it: `kind`, then a 32-bit big-endian
/// length, then the payload.
pub fn record_bytes(kind: u8, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("test payloads fit in 32 bits");
    let mut bytes = vec![kind];
    bytes.extend_from_slice(&len.to_be_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

/// The bytes of `record`, byte by byte as docs/link-protocol.md lays them out.
pub fn encode(record: &Record) -> Vec<u8> {
    match record {
        Record::Open(payload) => record_bytes(0x01, payload),
        Record::Accept(payload) => record_bytes(0x02, payload),
        Record::Reject(payload) => record_bytes(0x03, payload),
        Record::Handoff(payload) => record_bytes(0x04, payload),
        Record::Request(payload) => record_bytes(0x05, payload),
        Record::Response(payload) => record_bytes(0x06, payload),
        Record::Text(text) => record_bytes(0x10, text.as_bytes()),
        Record::Binary(payload) => record_bytes(0x11, payload),
        Record::Close(None) => record_bytes(0x12, &[]),
        Record::Close(Some(info)) => {
            let mut payload = info.code.to_be_bytes().to_vec();
            payload.extend_from_slice(info.reason.as_bytes());
            record_bytes(0x12, &payload)
        }
        Record::Ping(payload) => record_bytes(0x13, payload),
        Record::Pong(payload) => record_bytes(0x14, payload),
        Record::Fanout(fanout) => {
            let (kind, payload): (u8, Vec<u8>) = match &fanout.message {
                FanoutMessage::Text(text) => (0x10, text.as_bytes().to_vec()),
                FanoutMessage::Binary(payload) => (0x11, payload.to_vec()),
                FanoutMessage::Close(None) => (0x12, Vec::new()),
                FanoutMessage::Close(Some(info)) => {
                    let mut payload = info.code.to_be_bytes().to_vec();
                    payload.extend_from_slice(info.reason.as_bytes());
                    (0x12, payload)
                }
            };
            let mut bytes = vec![kind];
            let count = u32::try_from(fanout.recipients().len()).expect("at most 65536");
            bytes.extend_from_slice(&count.to_be_bytes());
            for id in fanout.recipients() {
                bytes.extend_from_slice(&id.to_be_bytes());
            }
            bytes.extend_from_slice(&payload);
            record_bytes(0x20, &bytes)
        }
    }
}

/// Reads one raw record: its kind byte and payload; `None` at a clean end of
/// the link (between records).
pub async fn read_raw(
    stream: &mut (impl AsyncRead + Unpin),
) -> anyhow::Result<Option<(u8, Vec<u8>)>> {
    let mut header = [0u8; 5];
    match stream.read_exact(&mut header).await {
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(error) => return Err(error.into()),
    }
    let len = usize::try_from(u32::from_be_bytes([
        header[1], header[2], header[3], header[4],
    ]))?;
    if len > MAX_PAYLOAD {
        bail!("record of {len} bytes is over the harness's limit");
    }
    let mut payload = vec![0u8; len];
    stream
        .read_exact(&mut payload)
        .await
        .context("the link ended inside a record")?;
    Ok(Some((header[0], payload)))
}

/// Reads one record and decodes it by hand; `None` at a clean end of the link.
pub async fn read_record(stream: &mut (impl AsyncRead + Unpin)) -> anyhow::Result<Option<Record>> {
    let Some((kind, payload)) = read_raw(stream).await? else {
        return Ok(None);
    };
    let payload = Bytes::from(payload);
    Ok(Some(match kind {
        0x01 => Record::Open(payload),
        0x02 => Record::Accept(payload),
        0x03 => Record::Reject(payload),
        0x04 => Record::Handoff(payload),
        0x05 => Record::Request(payload),
        0x06 => Record::Response(payload),
        0x10 => Record::Text(Utf8Bytes::try_from(payload).context("TEXT is not UTF-8")?),
        0x11 => Record::Binary(payload),
        0x12 => Record::Close(close_payload(&payload)?),
        0x13 => Record::Ping(payload),
        0x14 => Record::Pong(payload),
        0x20 => Record::Fanout(fanout_payload(&payload)?),
        other => bail!("unknown record kind 0x{other:02x}"),
    }))
}

/// A CLOSE payload: empty, or a big-endian code and a UTF-8 reason.
fn close_payload(payload: &[u8]) -> anyhow::Result<Option<CloseInfo>> {
    Ok(match payload {
        [] => None,
        [hi, lo, reason @ ..] => Some(CloseInfo {
            code: u16::from_be_bytes([*hi, *lo]),
            reason: std::str::from_utf8(reason)
                .context("close reason is not UTF-8")?
                .to_owned(),
        }),
        [_] => bail!("CLOSE payload of one byte"),
    })
}

/// A FANOUT payload: the message kind, a big-endian count, that many
/// big-endian u64 ids, then the message's payload.
fn fanout_payload(payload: &[u8]) -> anyhow::Result<Fanout> {
    let (&kind, rest) = payload.split_first().context("empty FANOUT")?;
    let (count, rest) = rest
        .split_first_chunk::<4>()
        .context("FANOUT shorter than its count")?;
    let count = usize::try_from(u32::from_be_bytes(*count))?;
    let ids_len = count.checked_mul(8).context("FANOUT count overflows")?;
    if rest.len() < ids_len {
        bail!("FANOUT shorter than its {count} ids");
    }
    let (ids, body) = rest.split_at(ids_len);
    let ids: Vec<u64> = ids
        .chunks_exact(8)
        .map(|id| u64::from_be_bytes(id.try_into().expect("chunks of 8")))
        .collect();
    let message = match kind {
        0x10 => FanoutMessage::Text(
            Utf8Bytes::try_from(Bytes::copy_from_slice(body))
                .context("FANOUT TEXT is not UTF-8")?,
        ),
        0x11 => FanoutMessage::Binary(Bytes::copy_from_slice(body)),
        0x12 => FanoutMessage::Close(close_payload(body)?),
        other => bail!("FANOUT of message kind 0x{other:02x}"),
    };
    Ok(Fanout::new(message, &ids)?)
}

/// A REQUEST or RESPONSE payload split by hand: the JSON head (parsed) and the body.
pub fn split_head(payload: &[u8]) -> anyhow::Result<(serde_json::Value, Vec<u8>)> {
    let (length, rest) = payload
        .split_first_chunk::<4>()
        .context("payload shorter than its head length")?;
    let head_len = usize::try_from(u32::from_be_bytes(*length))?;
    if head_len > rest.len() {
        bail!("head length {head_len} exceeds the payload");
    }
    let (head, body) = rest.split_at(head_len);
    Ok((serde_json::from_slice(head)?, body.to_vec()))
}

/// A REQUEST or RESPONSE payload built by hand: the head's length (u32
/// big-endian), the JSON head, the body.
pub fn join_head(head: &serde_json::Value, body: &[u8]) -> Vec<u8> {
    let head = serde_json::to_vec(head).expect("a JSON value serialises");
    let mut payload = u32::try_from(head.len())
        .expect("test heads fit in 32 bits")
        .to_be_bytes()
        .to_vec();
    payload.extend_from_slice(&head);
    payload.extend_from_slice(body);
    payload
}

/// Writes `record` by hand.
pub async fn write_record(
    stream: &mut (impl AsyncWrite + Unpin),
    record: &Record,
) -> anyhow::Result<()> {
    stream.write_all(&encode(record)).await?;
    Ok(())
}
