//! The C view of a plugin: the table its entry symbol returns, the ABI
//! version, and the status codes. Mirrors `rpc-plugins/include/wsgate_rpc.h`
//! field for field; `docs/plugin-abi.md` says who owns each pointer.
//!
//! Only types live here. Reading a table is [`crate::host`]'s job, and
//! building one for a Rust plugin is [`crate::export`]'s.

use std::ffi::{c_char, c_void};

/// The ABI version this crate speaks. A host refuses a table whose
/// [`PluginTable::abi_version`] differs, before it reads any other field.
///
/// Version 2 added the `client` argument of [`SessionOpenFn`].
pub const ABI_VERSION: u32 = 2;

/// The one symbol a plugin library exports: `const wsgate_rpc_plugin_t *wsgate_rpc_plugin(void)`.
pub const ENTRY_SYMBOL: &str = "wsgate_rpc_plugin";

/// The call succeeded; `*out` holds the result, any JSON value.
pub const STATUS_OK: i32 = 0;
/// The method failed; `*out` holds a JSON-RPC error object `{"code", "message", "data"?}`.
pub const STATUS_ERROR: i32 = 1;
/// The plugin itself failed (a Rust panic, say); `*out` is NULL or a plain-text message for the log.
pub const STATUS_FAILED: i32 = 2;

/// The signature of the entry symbol [`ENTRY_SYMBOL`].
pub type EntryFn = unsafe extern "C" fn() -> *const PluginTable;

/// `init(config, &plugin, &error)`: called once, before any session.
pub type InitFn = unsafe extern "C" fn(
    config: *const c_char,
    plugin: *mut *mut c_void,
    error: *mut *mut c_char,
) -> i32;

/// `session_open(plugin, client, &session, &error)`: called when a client
/// connects; `client` is a JSON object (see [`crate::ClientInfo`]).
pub type SessionOpenFn = unsafe extern "C" fn(
    plugin: *mut c_void,
    client: *const c_char,
    session: *mut *mut c_void,
    error: *mut *mut c_char,
) -> i32;

/// `session_close(plugin, session)`: called once for each opened session, when its client is gone.
pub type SessionCloseFn = unsafe extern "C" fn(plugin: *mut c_void, session: *mut c_void);

/// `call(plugin, session, method, params, &out)`: one JSON-RPC method call.
pub type CallFn = unsafe extern "C" fn(
    plugin: *mut c_void,
    session: *mut c_void,
    method: *const c_char,
    params: *const c_char,
    out: *mut *mut c_char,
) -> i32;

/// `free_string(s)`: frees a string the plugin handed out through `out` or `error`.
pub type FreeStringFn = unsafe extern "C" fn(string: *mut c_char);

/// `release(plugin)`: called once, after every session was closed.
pub type ReleaseFn = unsafe extern "C" fn(plugin: *mut c_void);

/// `wsgate_rpc_plugin_t`, version [`ABI_VERSION`].
///
/// `abi_version` is the first field in every version of the ABI, so a host can
/// read it from any table and refuse a mismatch without touching the rest.
/// Function pointers are `Option`s so that a NULL from a C plugin is a load
/// error rather than a crash.
#[repr(C)]
#[derive(Debug)]
pub struct PluginTable {
    /// Must equal [`ABI_VERSION`].
    pub abi_version: u32,
    /// The plugin's name, NUL-terminated UTF-8, static.
    pub name: *const c_char,
    /// The method names: a NULL-terminated array of NUL-terminated UTF-8 strings, static.
    pub methods: *const *const c_char,
    /// See [`InitFn`].
    pub init: Option<InitFn>,
    /// See [`SessionOpenFn`].
    pub session_open: Option<SessionOpenFn>,
    /// See [`SessionCloseFn`].
    pub session_close: Option<SessionCloseFn>,
    /// See [`CallFn`].
    pub call: Option<CallFn>,
    /// See [`FreeStringFn`].
    pub free_string: Option<FreeStringFn>,
    /// See [`ReleaseFn`].
    pub release: Option<ReleaseFn>,
}
