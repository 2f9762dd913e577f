//! The link between the wsgate gateway and its backends, and the WebSocket
//! policy both sides apply to a client, so that a client sees the same
//! behaviour whether the gateway relays it or a backend holds its socket.
//!
//! The wire format (`docs/link-protocol.md` is the normative description):
//! - [`record`]: the byte format (a kind byte, a 32-bit length, a payload) and
//!   the codec that enforces the maximum record size.
//! - [`meta`]: the JSON bodies of the OPEN, ACCEPT and REJECT records, and the
//!   heads of the REQUEST and RESPONSE records (plain HTTP to a backend).
//! - [`fanout`]: the FANOUT record of a carrier link (one message, many clients).
//! - [`fd_pass`]: the HANDOFF record with the client's socket (SCM_RIGHTS), for direct mode.
//!
//! The client-facing policy both sides share:
//! - [`message`]: WebSocket messages ⇄ records, close frames ⇄ CLOSE records.
//! - [`client_close`]: the close code a client gets when its WebSocket fails.
//! - [`deflate`]: permessage-deflate (RFC 7692): the agreed parameters, outgoing
//!   compression and the inflating rewrite of a client's frames.
//! - [`keepalive`]: the ping ticker and the idle timer, with their defaults.
//! - [`websocket`]: the WebSocket configuration and buffer sizes of a client and a link.
//!
//! Nothing here decides when to give up on a peer: timeouts, retries and
//! logging are the callers' business.

pub mod client_close;
pub mod deflate;
pub mod fanout;
pub mod fd_pass;
pub mod frames;
pub mod keepalive;
pub mod link_stream;
pub mod message;
pub mod meta;
pub mod record;
pub mod websocket;

pub use client_close::{close_for_client_error, close_for_read_error};
pub use deflate::DeflateParams;
pub use link_stream::{LinkListener, LinkStream};
pub use meta::{
    AcceptReply, CarrierTerms, ClientLimits, LinkMode, OpenMeta, RejectReply, RequestHead,
    ResponseHead, TlsInfo,
};
pub use record::{CloseInfo, LinkError, MAX_CONTROL_PAYLOAD, Record, RecordCodec, RecordKind};

/// The link protocol version this code speaks, carried in every OPEN record.
pub const LINK_VERSION: u32 = 1;

/// Default largest payload a reader accepts: the gateway's default maximum
/// message size (16 MiB). Both sides make it configurable.
pub const DEFAULT_MAX_PAYLOAD: usize = 16 * 1024 * 1024;
