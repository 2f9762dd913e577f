//! The backend side of wsgate, and the link protocol it shares with the gateway.
//!
//! - [`link`]: the wire format between the gateway and a backend (records, OPEN metadata).
//! - [`socket_file`]: binding `<docroot>/<name>`, replacing stale files, removal on exit.
//! - [`session`]: one client as a `Stream` + `Sink` of WebSocket messages.
//! - [`serve`]: the accept loop with the client limit and graceful shutdown.
//! - [`chat`]: a chat room with ouistiti's commands and presence lines (`websocket_chat`).
//! - [`jsonrpc`]: JSON-RPC 2.0 over a session, answered by plugins (`websocket_jsonrpc`).
//! - [`launch`]: the ouistiti command-line flags and process start-up shared by all servers.
//!
//! The servers themselves (`websocket_echo`, ...) are the binaries in `src/bin/`
//! and use nothing but this API. The gateway depends on this crate for [`link`]
//! only; nothing here depends on the gateway.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod chat;
pub mod direct;
pub mod jsonrpc;
pub mod launch;
pub mod link;
pub mod serve;
pub mod session;
pub mod socket_file;

pub use direct::DirectOptions;
pub use launch::{CommonArgs, LaunchError, init_tracing, launch};
pub use serve::{Listener, ServeOptions, serve};
pub use session::{Connection, Incoming, Session, SessionError};
pub use socket_file::{BindError, SocketFile};
pub use tokio_tungstenite::tungstenite::Message;
pub use tokio_tungstenite::tungstenite::protocol::CloseFrame;
pub use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
