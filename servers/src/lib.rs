//! The application halves of wsgate's backend servers, over the backend
//! library's sessions:
//!
//! - [`backplane`]: the Redis connection, pub/sub and heartbeat that `--redis` instances share.
//! - [`broker`]: one routing core and the dialects of four known message brokers (`websocket_broker`).
//! - [`chat`]: a chat room with ouistiti's commands and presence lines (`websocket_chat`).
//! - [`exec`]: a program per client, its stdin and stdout as the messages (`websocket_exec`).
//! - [`jsonrpc`]: JSON-RPC 2.0 over a session, answered by plugins (`websocket_jsonrpc`).
//!
//! The servers themselves (`websocket_echo`, `websocket_chat`,
//! `websocket_exec`, `websocket_jsonrpc`, `websocket_broker`) are the binaries in `src/bin/`. Everything here uses
//! the `backend` crate's API (`launch`, `Session`) and never sees a link record.

pub mod backplane;
pub mod broker;
pub mod chat;
pub mod exec;
pub mod jsonrpc;
