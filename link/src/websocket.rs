//! The WebSocket configuration of a client and the buffer sizes of a client
//! and a link, for the gateway's relay and a backend's direct session alike.
//!
//! Most clients idle, so buffers start small and grow only for the messages
//! that actually come; BENCHMARKS.md has the measurements behind each size.

use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// WebSocket read buffer of a relayed client, and the most one read takes
/// from its socket. With 1 KiB a relayed idle client costs the gateway about
/// 7 KiB (4 KiB gives 64 KiB messages fewer reads, at 3 KiB more per client).
/// tungstenite grows it to hold larger frames.
pub const RELAY_READ_BUFFER: usize = 1024;

/// WebSocket read buffer of a client handed over in direct mode. 16 KiB keeps
/// large messages as fast as tungstenite's 128 KiB default at a fraction of
/// its memory per idle client.
pub const DIRECT_READ_BUFFER: usize = 16 * 1024;

/// Initial read buffer of a link, on either side; it grows only for larger records.
pub const LINK_READ_BUFFER: usize = 512;

/// Bytes of outgoing frames that may wait for a slow client before a send
/// fails, at least: the bound beyond one whole message.
const WRITE_BUFFER_LIMIT: usize = 256 * 1024;

/// Room for frame headers on top of the largest message.
const FRAME_OVERHEAD: usize = 64 * 1024;

/// The configuration of a server-role WebSocket to a client: messages and
/// frames up to `max_message_size` (more is `1009`), writes go out at once
/// (no write buffering), and outgoing frames held for a slow client are
/// bounded by whichever is larger of 256 KiB and one whole message.
pub fn client_config(max_message_size: usize, read_buffer_size: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(read_buffer_size)
        .write_buffer_size(0)
        .max_write_buffer_size(
            WRITE_BUFFER_LIMIT.max(max_message_size.saturating_add(FRAME_OVERHEAD)),
        )
        .max_message_size(Some(max_message_size))
        .max_frame_size(Some(max_message_size))
}
