//! The [`Plugin`] trait: what a Rust plugin implements, in safe Rust.
//!
//! [`crate::export_plugin!`] turns an implementation into the C table; the
//! trampolines in [`crate::export`] own every raw pointer and catch every panic.

use std::ffi::CStr;

use serde_json::Value;

use crate::client::ClientInfo;
use crate::error::RpcError;

/// A `websocket_jsonrpc` plugin written in Rust.
///
/// One value of the type exists per loaded library (made by [`Plugin::init`]
/// and shared by every session, hence `Sync`); one [`Plugin::Session`] exists
/// per WebSocket client. The host never calls a session from two threads at
/// once, but successive calls may come from different threads, hence `Send`.
pub trait Plugin: Send + Sync + Sized + 'static {
    /// The per-client state (who is logged in, an open database connection...).
    type Session: Send + 'static;

    /// The plugin's name, for logs and error messages.
    const NAME: &'static CStr;

    /// The methods this plugin answers. They share one namespace with every
    /// other loaded plugin's; the host refuses to start on a clash.
    const METHODS: &'static [&'static CStr];

    /// Reads `config` (the `-C` string, if any) and gets ready. An error stops
    /// the host at startup with this message.
    fn init(config: Option<&str>) -> Result<Self, String>;

    /// A client connected; `client` says who (its address...). An error
    /// closes that client's WebSocket (1011).
    fn open_session(&self, client: &ClientInfo) -> Result<Self::Session, String>;

    /// The client is gone. The default drops the session.
    fn close_session(&self, session: Self::Session) {
        drop(session);
    }

    /// One method call. `method` is one of [`Plugin::METHODS`]; `params` is
    /// the request's params, `Value::Null` when it had none.
    ///
    /// A panic here answers this call with `-32603` and leaves the session open.
    fn call(
        &self,
        session: &mut Self::Session,
        method: &str,
        params: Value,
    ) -> Result<Value, RpcError>;
}
