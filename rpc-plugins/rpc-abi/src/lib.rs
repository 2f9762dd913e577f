//! The plugin ABI of `websocket_jsonrpc`: what a plugin library exports, how a
//! Rust plugin exports it without writing `unsafe`, and how the host loads it.
//!
//! - [`ffi`]: the versioned C table (`wsgate_rpc_plugin_t` in
//!   `rpc-plugins/include/wsgate_rpc.h`), its version and status codes. Plain
//!   data; the contract behind every pointer is in `docs/plugin-abi.md`.
//! - [`error`]: [`RpcError`], the JSON-RPC error object a method returns, and
//!   [`parse_params`], which turns `params` into a typed struct or `-32602`.
//! - [`plugin`]: the [`Plugin`] trait a Rust plugin implements.
//! - [`client`]: [`ClientInfo`], who a session is for (the client's address...).
//! - [`export`]: the `extern "C"` trampolines behind [`export_plugin!`]; every
//!   one catches panics, so a panicking method becomes an error reply.
//! - [`host`]: loading a library, checking its ABI version before anything
//!   else, and calling it ([`host::PluginLibrary`], [`host::LoadedPlugin`],
//!   [`host::PluginSession`]).
//!
//! JSON-RPC framing (ids, batches, notifications) is not here: the host gives
//! a plugin one method call at a time and `servers::jsonrpc` does the rest.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod client;
pub mod error;
pub mod export;
pub mod ffi;
pub mod host;
pub mod plugin;

pub use client::ClientInfo;
pub use error::{RpcError, parse_params};
pub use plugin::Plugin;
pub use serde_json;
