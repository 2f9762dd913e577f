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

/// Initial read buffer of a link during the handshake (OPEN to ACCEPT); it
/// grows only for larger records.
pub const LINK_READ_BUFFER: usize = 512;

/// The most bytes one read takes from a busy link, or from a relayed client
/// in the gateway. A buffer this size exists only while data flows: the
/// readers drop it whenever a read finds nothing and nothing is held, so an
/// idle client or link holds no read buffer (see `gateway::relay::read_ahead`
/// and `backend::session`).
pub const READ_CHUNK: usize = 16 * 1024;

/// Bytes of outgoing frames gathered before tungstenite writes them: the
/// messages fed between two flushes go out in one write (a larger message
/// is written at once). The buffer is allocated only when something is sent.
pub const WRITE_BUFFER: usize = 8 * 1024;

/// Bytes of outgoing frames that may wait for a slow client before a send
/// fails, at least: the bound beyond one whole message.
const WRITE_BUFFER_LIMIT: usize = 256 * 1024;

/// Room for frame headers on top of the largest message.
const FRAME_OVERHEAD: usize = 64 * 1024;

/// The configuration of a server-role WebSocket to a client: messages and
/// frames up to `max_message_size` (more is `1009`), messages fed between
/// two flushes gathered into one write (up to [`WRITE_BUFFER`]), and outgoing frames held for a slow client are
/// bounded by whichever is larger of 256 KiB and one whole message.
pub fn client_config(max_message_size: usize, read_buffer_size: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(read_buffer_size)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(
            WRITE_BUFFER_LIMIT.max(max_message_size.saturating_add(FRAME_OVERHEAD)),
        )
        .max_message_size(Some(max_message_size))
        .max_frame_size(Some(max_message_size))
}
