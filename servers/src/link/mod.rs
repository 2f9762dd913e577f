//! The link protocol between the gateway and a backend, shared by both sides.
//!
//! `record` owns the byte format (a type byte, a 32-bit length, a payload) and the
//! codec that enforces the maximum record size; `meta` owns the JSON bodies of the
//! OPEN, ACCEPT and REJECT records. Moving sockets between processes (direct mode)
//! is `fd_pass`, used by direct mode. `client_close` is the close code a client
//! gets when its WebSocket fails, the same whether the gateway relays it or a
//! backend holds its socket. `docs/link-protocol.md` is the normative description.

pub mod client_close;
pub mod fd_pass;
pub mod meta;
pub mod record;

pub use client_close::close_for_client_error;
pub use meta::{AcceptReply, ClientLimits, LinkMode, OpenMeta, RejectReply};
pub use record::{LinkError, Record, RecordCodec, RecordKind};

/// The link protocol version this code speaks, carried in every OPEN record.
pub const LINK_VERSION: u32 = 1;

/// Default largest payload a reader accepts: the gateway's default maximum
/// message size (16 MiB). Both sides make it configurable.
pub const DEFAULT_MAX_PAYLOAD: usize = 16 * 1024 * 1024;
