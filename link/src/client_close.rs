//! The close code a WebSocket client gets when reading it fails: one table for
//! the gateway's relay and for a backend holding the client's socket in direct
//! mode, so a client sees the same code in both modes.

use tokio_tungstenite::tungstenite::Error;

use crate::deflate::{DeflateError, deflate_error};
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// The close code and reason for a client whose read failed with `error`, or
/// `None` when the connection just ended (nothing left to tell the client).
pub fn close_for_client_error(error: &Error) -> Option<(CloseCode, &'static str)> {
    match error {
        Error::Capacity(_) => Some((CloseCode::Size, "message too big")),
        Error::Utf8(_) => Some((CloseCode::Invalid, "text message is not UTF-8")),
        // A connection that just ends is a client gone, not a protocol error.
        Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => None,
        Error::Protocol(_) => Some((CloseCode::Protocol, "protocol error")),
        Error::Io(error) => close_for_read_error(error),
        _ => None,
    }
}

/// The close code and reason for a client whose socket read failed with
/// `error`: a compressed message that broke a limit or did not inflate
/// gets its code; anything else (a reset) needs none.
pub fn close_for_read_error(error: &std::io::Error) -> Option<(CloseCode, &'static str)> {
    match deflate_error(error)? {
        DeflateError::TooBig { .. } => Some((CloseCode::Size, "message too big")),
        DeflateError::Corrupt => Some((CloseCode::Invalid, "invalid compressed data")),
    }
}
