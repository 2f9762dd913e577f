//! The plugin side of the C ABI: `extern "C"` trampolines that turn a
//! [`Plugin`] implementation into a [`PluginTable`], and the
//! [`export_plugin!`](crate::export_plugin) macro that exports it.
//!
//! This is one of the two modules of the crate allowed `unsafe` (the other is
//! [`crate::host`]). Every trampoline catches panics: unwinding out of an
//! `extern "C"` function would abort the host, so a panic becomes an error
//! status and, for `call`, a `-32603` reply to that one call.
#![allow(unsafe_code)]

use std::any::Any;
use std::ffi::{CStr, CString, c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr;
use std::sync::OnceLock;

use serde_json::Value;

use crate::client::ClientInfo;
use crate::error::RpcError;
use crate::ffi::{ABI_VERSION, PluginTable, STATUS_ERROR, STATUS_FAILED, STATUS_OK};
use crate::plugin::Plugin;

/// Exports `$plugin` (a type implementing [`Plugin`]) as this library's
/// `wsgate_rpc_plugin` entry symbol. Use it once, at the root of a `cdylib`:
///
/// ```
/// use std::ffi::CStr;
/// use rpc_abi::{Plugin, RpcError};
/// use rpc_abi::serde_json::{Value, json};
///
/// struct Hello;
///
/// impl Plugin for Hello {
///     type Session = u64;
///     const NAME: &'static CStr = c"hello";
///     const METHODS: &'static [&'static CStr] = &[c"hello"];
///     fn init(_config: Option<&str>) -> Result<Hello, String> {
///         Ok(Hello)
///     }
///     fn open_session(&self, _client: &rpc_abi::ClientInfo) -> Result<u64, String> {
///         Ok(0)
///     }
///     fn call(&self, calls: &mut u64, _method: &str, _params: Value) -> Result<Value, RpcError> {
///         *calls += 1;
///         Ok(json!({"calls": *calls}))
///     }
/// }
///
/// rpc_abi::export_plugin!(Hello);
/// ```
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        const _: () = {
            static WSGATE_RPC_TABLE: $crate::export::ExportedTable =
                $crate::export::ExportedTable::new();

            /// The plugin's entry symbol: returns its static table.
            #[allow(unsafe_code)]
            #[unsafe(no_mangle)]
            pub extern "C" fn wsgate_rpc_plugin() -> *const $crate::ffi::PluginTable {
                WSGATE_RPC_TABLE.get::<$plugin>()
            }
        };
    };
}

/// The table of one exported plugin, built on first request and kept for the
/// life of the library. Only [`export_plugin!`](crate::export_plugin) should need this.
#[derive(Debug)]
pub struct ExportedTable {
    cell: OnceLock<TableStorage>,
}

impl ExportedTable {
    /// An empty cell, for a `static`.
    pub const fn new() -> ExportedTable {
        ExportedTable {
            cell: OnceLock::new(),
        }
    }

    /// The table of `P`, built on the first call. NULL if building it panicked.
    pub fn get<P: Plugin>(&self) -> *const PluginTable {
        match catch_unwind(|| ptr::from_ref(&self.cell.get_or_init(TableStorage::new::<P>).table)) {
            Ok(table) => table,
            Err(_) => ptr::null(),
        }
    }
}

impl Default for ExportedTable {
    fn default() -> ExportedTable {
        ExportedTable::new()
    }
}

/// A table together with the method-name array it points into.
#[derive(Debug)]
pub(crate) struct TableStorage {
    table: PluginTable,
    /// The array `table.methods` points to; boxed, so moving the storage keeps it in place.
    _methods: Box<[*const c_char]>,
}

// SAFETY: every pointer in a TableStorage points to immutable data that lives as
// long as the storage: the `&'static CStr`s of `Plugin::NAME` and
// `Plugin::METHODS`, and the `_methods` box it owns. Nothing writes through them.
unsafe impl Send for TableStorage {}
// SAFETY: as above; shared access only ever reads.
unsafe impl Sync for TableStorage {}

impl TableStorage {
    pub(crate) fn new<P: Plugin>() -> TableStorage {
        let methods: Box<[*const c_char]> = P::METHODS
            .iter()
            .map(|name| name.as_ptr())
            .chain(std::iter::once(ptr::null()))
            .collect();
        TableStorage {
            table: PluginTable {
                abi_version: ABI_VERSION,
                name: P::NAME.as_ptr(),
                methods: methods.as_ptr(),
                init: Some(init::<P>),
                session_open: Some(session_open::<P>),
                session_close: Some(session_close::<P>),
                call: Some(call::<P>),
                free_string: Some(free_string),
                release: Some(release::<P>),
            },
            _methods: methods,
        }
    }

    pub(crate) fn table(&self) -> &PluginTable {
        &self.table
    }
}

/// What a panic said, for the log.
fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// A string the host will hand back to [`free_string`]. Interior NULs (which
/// no JSON text holds) are replaced so the conversion cannot fail.
fn into_c_string(text: String) -> *mut c_char {
    let text = if text.contains('\0') {
        text.replace('\0', "\u{FFFD}")
    } else {
        text
    };
    CString::new(text)
        .unwrap_or_else(|_| CString::from(c"string with NUL"))
        .into_raw()
}

/// Stores `text` in `*out` when the host gave a place for it.
///
/// # Safety
/// `out` is NULL or valid for one pointer-sized write.
unsafe fn write_out(out: *mut *mut c_char, text: String) {
    if !out.is_null() {
        // SAFETY: the caller guarantees `out` is valid for writes; it is not NULL.
        unsafe { out.write(into_c_string(text)) };
    }
}

/// Reads a host string; `None` for NULL.
///
/// # Safety
/// `text` is NULL or a NUL-terminated string that stays valid during the call.
unsafe fn read_str<'a>(text: *const c_char) -> Result<Option<&'a str>, String> {
    if text.is_null() {
        return Ok(None);
    }
    // SAFETY: the caller guarantees a NUL-terminated string valid for 'a.
    let text = unsafe { CStr::from_ptr(text) };
    text.to_str()
        .map(Some)
        .map_err(|_| "string is not UTF-8".to_owned())
}

unsafe extern "C" fn init<P: Plugin>(
    config: *const c_char,
    plugin: *mut *mut c_void,
    error: *mut *mut c_char,
) -> i32 {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the ABI passes NULL or a NUL-terminated string valid during init.
        let config = unsafe { read_str(config) }.map_err(|why| format!("config: {why}"))?;
        P::init(config)
    }));
    let message = match outcome {
        Ok(Ok(state)) => {
            if plugin.is_null() {
                return STATUS_FAILED;
            }
            // SAFETY: `plugin` is not NULL and, per the ABI, valid for one write.
            unsafe { plugin.write(Box::into_raw(Box::new(state)).cast::<c_void>()) };
            return STATUS_OK;
        }
        Ok(Err(message)) => message,
        Err(payload) => format!("init panicked: {}", panic_message(&*payload)),
    };
    // SAFETY: the ABI passes NULL or a pointer valid for one write.
    unsafe { write_out(error, message) };
    STATUS_FAILED
}

unsafe extern "C" fn session_open<P: Plugin>(
    plugin: *mut c_void,
    client: *const c_char,
    session: *mut *mut c_void,
    error: *mut *mut c_char,
) -> i32 {
    // SAFETY: `plugin` is the pointer our `init` produced from a `Box<P>`; the
    // host keeps it alive until `release` and only reads it through `&P`.
    let plugin = unsafe { &*plugin.cast_const().cast::<P>() };
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the ABI passes a NUL-terminated string valid during session_open.
        let client = match unsafe { read_str(client) } {
            Ok(Some(text)) => serde_json::from_str::<ClientInfo>(text)
                .map_err(|error| format!("client: {error}"))?,
            Ok(None) => ClientInfo::default(),
            Err(why) => return Err(format!("client: {why}")),
        };
        plugin.open_session(&client)
    }));
    let message = match outcome {
        Ok(Ok(state)) => {
            if session.is_null() {
                return STATUS_FAILED;
            }
            // SAFETY: `session` is not NULL and, per the ABI, valid for one write.
            unsafe { session.write(Box::into_raw(Box::new(state)).cast::<c_void>()) };
            return STATUS_OK;
        }
        Ok(Err(message)) => message,
        Err(payload) => format!("session_open panicked: {}", panic_message(&*payload)),
    };
    // SAFETY: the ABI passes NULL or a pointer valid for one write.
    unsafe { write_out(error, message) };
    STATUS_FAILED
}

unsafe extern "C" fn session_close<P: Plugin>(plugin: *mut c_void, session: *mut c_void) {
    // SAFETY: as in `session_open`, `plugin` is our live `Box<P>`.
    let plugin = unsafe { &*plugin.cast_const().cast::<P>() };
    // SAFETY: `session` came from our `session_open` (a `Box<P::Session>`), and the
    // ABI closes each session exactly once, after its last call.
    let session = unsafe { Box::from_raw(session.cast::<P::Session>()) };
    // A panic while closing loses nothing the host could act on.
    let _ = catch_unwind(AssertUnwindSafe(|| plugin.close_session(*session)));
}

unsafe extern "C" fn call<P: Plugin>(
    plugin: *mut c_void,
    session: *mut c_void,
    method: *const c_char,
    params: *const c_char,
    out: *mut *mut c_char,
) -> i32 {
    // SAFETY: as in `session_open`, `plugin` is our live `Box<P>`.
    let plugin = unsafe { &*plugin.cast_const().cast::<P>() };
    // SAFETY: `session` came from our `session_open` and is still open; the ABI
    // never runs two calls of one session at once, so this is the only reference.
    let session = unsafe { &mut *session.cast::<P::Session>() };
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the ABI passes NUL-terminated strings valid during the call.
        let method = unsafe { read_str(method) }
            .ok()
            .flatten()
            .unwrap_or_default();
        // SAFETY: as above.
        let params = match unsafe { read_str(params) } {
            Ok(None) => Value::Null,
            Ok(Some(text)) => serde_json::from_str(text)
                .map_err(|error| RpcError::invalid_params(format!("params: {error}")))?,
            Err(why) => return Err(RpcError::invalid_params(format!("params: {why}"))),
        };
        plugin.call(session, method, params)
    }));
    let (status, text) = match outcome {
        Ok(Ok(result)) => match serde_json::to_string(&result) {
            Ok(text) => (STATUS_OK, text),
            Err(error) => (
                STATUS_FAILED,
                format!("cannot serialize the result: {error}"),
            ),
        },
        Ok(Err(error)) => match serde_json::to_string(&error) {
            Ok(text) => (STATUS_ERROR, text),
            Err(error) => (
                STATUS_FAILED,
                format!("cannot serialize the error: {error}"),
            ),
        },
        Err(payload) => (
            STATUS_FAILED,
            format!("panicked: {}", panic_message(&*payload)),
        ),
    };
    // SAFETY: the ABI passes a pointer valid for one write (NULL is tolerated).
    unsafe { write_out(out, text) };
    status
}

unsafe extern "C" fn free_string(string: *mut c_char) {
    if !string.is_null() {
        // SAFETY: every string we hand out comes from `CString::into_raw`, and
        // the ABI gives each one back exactly once.
        drop(unsafe { CString::from_raw(string) });
    }
}

unsafe extern "C" fn release<P: Plugin>(plugin: *mut c_void) {
    // SAFETY: `plugin` came from our `init` (a `Box<P>`); the ABI releases it
    // once, after every session was closed, and never uses it again.
    let plugin = unsafe { Box::from_raw(plugin.cast::<P>()) };
    let _ = catch_unwind(AssertUnwindSafe(|| drop(plugin)));
}
