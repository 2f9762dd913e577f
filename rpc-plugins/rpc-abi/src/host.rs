//! The host side of the C ABI: loading a plugin library, checking it, and
//! calling into it.
//!
//! [`PluginLibrary::open`] loads a file and reads its table, checking the ABI
//! version before it reads anything else; [`PluginLibrary::init`] turns it into
//! a [`LoadedPlugin`], which opens one [`PluginSession`] per client. Dropping
//! them calls `session_close` and `release` in the order the ABI demands
//! (sessions hold the plugin alive; the plugin holds the library loaded).
//!
//! Every reply is checked here: a result must be valid JSON and an error a
//! JSON-RPC error object, or the call ends in a [`CallError`]. What the client
//! then sees is `servers::jsonrpc`'s decision.
//!
//! This is one of the two modules of the crate allowed `unsafe` (the other is
//! [`crate::export`]).
#![allow(unsafe_code)]

use std::ffi::{CStr, CString, c_char, c_void};
use std::path::{Path, PathBuf};
use std::ptr;
use std::sync::Arc;

use serde_json::value::RawValue;

use crate::client::ClientInfo;
use crate::error::RpcError;
use crate::export::TableStorage;
use crate::ffi::{
    ABI_VERSION, CallFn, ENTRY_SYMBOL, EntryFn, FreeStringFn, InitFn, PluginTable, ReleaseFn,
    STATUS_ERROR, STATUS_OK, SessionCloseFn, SessionOpenFn,
};
use crate::plugin::Plugin;

/// Most methods one plugin may declare; a longer list means a broken table.
const MAX_METHODS: usize = 4096;

/// Longest method name, in bytes.
const MAX_METHOD_NAME: usize = 255;

/// Why a plugin could not be loaded or initialised. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The dynamic loader refused the file: missing, unreadable, not a shared
    /// object, or one of its own dependencies is missing.
    #[error("cannot load plugin {}: {source}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// The loader's message.
        #[source]
        source: libloading::Error,
    },
    /// The library does not export the entry symbol.
    #[error("{} is not a wsgate JSON-RPC plugin: it does not export `{ENTRY_SYMBOL}` ({source})", path.display())]
    MissingSymbol {
        /// The file.
        path: PathBuf,
        /// The loader's message.
        #[source]
        source: libloading::Error,
    },
    /// The plugin was built for another version of the ABI.
    #[error(
        "plugin {} was built for plugin ABI version {found}, but this server speaks version {ABI_VERSION}; rebuild it against this wsgate_rpc.h",
        path.display()
    )]
    AbiVersion {
        /// The file.
        path: PathBuf,
        /// The version in its table.
        found: u32,
    },
    /// The table breaks a rule of the ABI (a NULL pointer, a bad method name...).
    #[error("plugin {} has an invalid table: {reason}", path.display())]
    InvalidTable {
        /// The file.
        path: PathBuf,
        /// Which rule.
        reason: String,
    },
    /// The plugin's `init` failed.
    #[error("plugin {name} ({}) failed to initialise: {message}", path.display())]
    Init {
        /// The plugin's name.
        name: String,
        /// The file.
        path: PathBuf,
        /// What the plugin said.
        message: String,
    },
}

/// A plugin could not open a session for a new client.
#[derive(Debug, thiserror::Error)]
#[error("plugin {plugin} cannot open a session: {message}")]
pub struct SessionOpenError {
    /// The plugin's name.
    pub plugin: String,
    /// What the plugin said.
    pub message: String,
}

/// Why a call produced no usable reply.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The method answered with a well-formed JSON-RPC error object.
    #[error(transparent)]
    Rpc(RpcError),
    /// The method claimed success but its result is not valid JSON.
    #[error("the plugin returned malformed JSON as its result: {0}")]
    MalformedResult(#[source] serde_json::Error),
    /// The method claimed an error but did not return a `{code, message}` object.
    #[error("the plugin returned a malformed error object: {0}")]
    MalformedError(#[source] serde_json::Error),
    /// The reply was not UTF-8, or there was none where one was required.
    #[error("the plugin returned {0}")]
    BadReply(&'static str),
    /// The plugin failed (a Rust plugin panicked, or a C plugin returned another status).
    #[error("the plugin failed (status {status}): {message}")]
    Failed {
        /// The status it returned.
        status: i32,
        /// Its message, if it gave one.
        message: String,
    },
    /// The method name or params could not be passed as C strings.
    #[error("cannot pass {0} to the plugin: it contains a NUL byte")]
    Argument(&'static str),
}

/// The plugin's functions, checked non-NULL once at load.
#[derive(Debug, Clone, Copy)]
struct Functions {
    init: InitFn,
    session_open: SessionOpenFn,
    session_close: SessionCloseFn,
    call: CallFn,
    free_string: FreeStringFn,
    release: ReleaseFn,
}

/// Keeps the code of a plugin in memory.
#[derive(Debug)]
enum Code {
    /// A library loaded with `dlopen`; unloaded on drop.
    Library(#[allow(dead_code)] libloading::Library),
    /// A Rust plugin linked into this program; its table lives in the box.
    InProcess(#[allow(dead_code)] Box<TableStorage>),
}

/// A plugin library whose table has been read and checked, not yet initialised.
#[derive(Debug)]
pub struct PluginLibrary {
    path: PathBuf,
    name: String,
    methods: Vec<String>,
    functions: Functions,
    /// Dropped last: the functions above point into it.
    _code: Code,
}

impl PluginLibrary {
    /// Loads the shared library at `path` (with `RTLD_NOW`, so a missing
    /// dependency fails here rather than at the first call), finds its entry
    /// symbol, and checks the table: the ABI version first, then every pointer
    /// and method name. No plugin function has run when this returns.
    pub fn open(path: &Path) -> Result<PluginLibrary, LoadError> {
        use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
        // SAFETY: loading runs the library's initialisers. Loading a plugin is
        // the operator's explicit request (-L), and the plugin ABI forbids
        // initialisers with effects beyond the library itself.
        let library =
            unsafe { Library::open(Some(path), RTLD_NOW | RTLD_LOCAL) }.map_err(|source| {
                LoadError::Open {
                    path: path.to_owned(),
                    source,
                }
            })?;
        let library = libloading::Library::from(library);
        let symbol_name = format!("{ENTRY_SYMBOL}\0");
        // SAFETY: the ABI declares the entry symbol as `const wsgate_rpc_plugin_t *(void)`,
        // which is the type we read it as.
        let entry: EntryFn = match unsafe { library.get::<EntryFn>(symbol_name.as_bytes()) } {
            Ok(symbol) => *symbol,
            Err(source) => {
                return Err(LoadError::MissingSymbol {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        // SAFETY: the entry function takes nothing and, per the ABI, only returns
        // a pointer to its static table. It is the one call made before the version check.
        let table = unsafe { entry() };
        // SAFETY: `table` is what the library's entry returned; `read_table` checks
        // it for NULL, alignment and version before it reads further.
        let (name, methods, functions) = unsafe { read_table(path, table) }?;
        Ok(PluginLibrary {
            path: path.to_owned(),
            name,
            methods,
            functions,
            _code: Code::Library(library),
        })
    }

    /// The plugin `P`, linked into this program, behind the same C table and
    /// checks as a loaded library. For tests and for embedding plugins.
    pub fn in_process<P: Plugin>() -> Result<PluginLibrary, LoadError> {
        let storage = Box::new(TableStorage::new::<P>());
        let path = PathBuf::from(format!("<in-process {}>", P::NAME.to_string_lossy()));
        // SAFETY: the table was just built by `export` from `P`'s trampolines and
        // static names, and it lives in `storage`, which the library keeps.
        let (name, methods, functions) = unsafe { read_table(&path, storage.table()) }?;
        Ok(PluginLibrary {
            path,
            name,
            methods,
            functions,
            _code: Code::InProcess(storage),
        })
    }

    /// The file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The name the plugin gives itself.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The methods it declares, in its order.
    pub fn methods(&self) -> &[String] {
        &self.methods
    }

    /// Calls the plugin's `init` with `config` (the `-C` string, if any).
    pub fn init(self, config: Option<&str>) -> Result<LoadedPlugin, LoadError> {
        let init_error = |message: String| LoadError::Init {
            name: self.name.clone(),
            path: self.path.clone(),
            message,
        };
        let config = config
            .map(CString::new)
            .transpose()
            .map_err(|_| init_error("the configuration string contains a NUL byte".to_owned()))?;
        let config_ptr = config
            .as_ref()
            .map_or(ptr::null(), |config| config.as_ptr());
        let mut state: *mut c_void = ptr::null_mut();
        let mut error: *mut c_char = ptr::null_mut();
        // SAFETY: the version and pointers were checked at load; `config_ptr` is
        // NULL or a NUL-terminated string that outlives the call; `state` and
        // `error` are valid for writes.
        let status = unsafe { (self.functions.init)(config_ptr, &mut state, &mut error) };
        // SAFETY: `error` is NULL or a string from this plugin, given back once.
        let message = unsafe { take_string(self.functions.free_string, error) };
        if status != STATUS_OK {
            let message = match message {
                Some(Ok(message)) if !message.is_empty() => message,
                Some(Err(_)) => "(message not UTF-8)".to_owned(),
                _ => format!("init returned status {status}"),
            };
            return Err(init_error(message));
        }
        Ok(LoadedPlugin {
            state: PluginState(state),
            library: self,
        })
    }
}

/// Reads and checks a table: version, then pointers, then names.
///
/// # Safety
/// `table` is NULL or points to memory readable for at least a `u32`; if its
/// version is [`ABI_VERSION`], it points to a `PluginTable` that follows the
/// ABI's rules (static strings, functions that live as long as the code).
unsafe fn read_table(
    path: &Path,
    table: *const PluginTable,
) -> Result<(String, Vec<String>, Functions), LoadError> {
    let invalid = |reason: String| LoadError::InvalidTable {
        path: path.to_owned(),
        reason,
    };
    if table.is_null() {
        return Err(invalid("the entry function returned NULL".to_owned()));
    }
    if !table.is_aligned() {
        return Err(invalid("the table is not aligned".to_owned()));
    }
    // SAFETY: not NULL and aligned; the ABI keeps `abi_version` first in every
    // version, so these bytes are the version whatever the rest looks like.
    let found = unsafe { ptr::addr_of!((*table).abi_version).read() };
    if found != ABI_VERSION {
        return Err(LoadError::AbiVersion {
            path: path.to_owned(),
            found,
        });
    }
    // SAFETY: the version matches, so the caller guarantees a whole PluginTable.
    let table = unsafe { &*table };
    let functions = Functions {
        init: table
            .init
            .ok_or_else(|| invalid("init is NULL".to_owned()))?,
        session_open: table
            .session_open
            .ok_or_else(|| invalid("session_open is NULL".to_owned()))?,
        session_close: table
            .session_close
            .ok_or_else(|| invalid("session_close is NULL".to_owned()))?,
        call: table
            .call
            .ok_or_else(|| invalid("call is NULL".to_owned()))?,
        free_string: table
            .free_string
            .ok_or_else(|| invalid("free_string is NULL".to_owned()))?,
        release: table
            .release
            .ok_or_else(|| invalid("release is NULL".to_owned()))?,
    };
    if table.name.is_null() {
        return Err(invalid("name is NULL".to_owned()));
    }
    // SAFETY: not NULL; the ABI makes it a static NUL-terminated string.
    let name = unsafe { CStr::from_ptr(table.name) }
        .to_str()
        .map_err(|_| invalid("name is not UTF-8".to_owned()))?
        .to_owned();
    if table.methods.is_null() {
        return Err(invalid("methods is NULL".to_owned()));
    }
    let mut methods: Vec<String> = Vec::new();
    for method_idx in 0..=MAX_METHODS {
        // SAFETY: the ABI makes `methods` a NULL-terminated array; we stop at
        // the NULL and never read past MAX_METHODS + 1 entries.
        let entry = unsafe { table.methods.add(method_idx).read() };
        if entry.is_null() {
            break;
        }
        if method_idx == MAX_METHODS {
            return Err(invalid(format!("more than {MAX_METHODS} methods")));
        }
        // SAFETY: not NULL; the ABI makes it a static NUL-terminated string.
        let method = unsafe { CStr::from_ptr(entry) }
            .to_str()
            .map_err(|_| invalid(format!("method #{method_idx} is not UTF-8")))?;
        check_method_name(method).map_err(|why| invalid(format!("method {method:?} {why}")))?;
        if methods.iter().any(|known| known == method) {
            return Err(invalid(format!("method {method:?} is declared twice")));
        }
        methods.push(method.to_owned());
    }
    if methods.is_empty() {
        return Err(invalid("it declares no methods".to_owned()));
    }
    Ok((name, methods, functions))
}

/// The rules of the ABI for a method name; `Err` says which one is broken.
fn check_method_name(method: &str) -> Result<(), &'static str> {
    if method.is_empty() {
        Err("is empty")
    } else if method.len() > MAX_METHOD_NAME {
        Err("is longer than 255 bytes")
    } else if method.starts_with("rpc.") {
        Err("starts with `rpc.`, which JSON-RPC reserves")
    } else if method.chars().any(char::is_control) {
        Err("contains a control character")
    } else {
        Ok(())
    }
}

/// Copies a plugin's string and gives it back to the plugin. `None` for NULL.
///
/// # Safety
/// `text` is NULL or a NUL-terminated string allocated by the plugin whose
/// `free_string` this is, not yet freed; it is freed here.
unsafe fn take_string(
    free_string: FreeStringFn,
    text: *mut c_char,
) -> Option<Result<String, std::str::Utf8Error>> {
    if text.is_null() {
        return None;
    }
    // SAFETY: not NULL; the caller guarantees a live NUL-terminated string.
    let copy = unsafe { CStr::from_ptr(text) }.to_str().map(str::to_owned);
    // SAFETY: the string came from this plugin and is given back exactly once.
    unsafe { free_string(text) };
    Some(copy)
}

/// A pointer owned by a plugin: its state or a session's.
#[derive(Debug)]
struct PluginState(*mut c_void);

// SAFETY: the ABI requires plugin and session state to be usable from any
// thread (no thread affinity): the host may call a plugin from any thread.
unsafe impl Send for PluginState {}
// SAFETY: the ABI requires a plugin's state to tolerate concurrent calls for
// different sessions. Session states are only reached through `&mut PluginSession`.
unsafe impl Sync for PluginState {}

/// An initialised plugin. Share it in an `Arc`; dropping the last one calls
/// `release` and then unloads the library.
#[derive(Debug)]
pub struct LoadedPlugin {
    state: PluginState,
    library: PluginLibrary,
}

impl LoadedPlugin {
    /// The file it was loaded from.
    pub fn path(&self) -> &Path {
        self.library.path()
    }

    /// The name the plugin gives itself.
    pub fn name(&self) -> &str {
        self.library.name()
    }

    /// The methods it declares.
    pub fn methods(&self) -> &[String] {
        self.library.methods()
    }

    /// Opens the session of a new `client`. Blocks as long as the plugin does.
    pub fn open_session(
        self: &Arc<LoadedPlugin>,
        client: &ClientInfo,
    ) -> Result<PluginSession, SessionOpenError> {
        let client = serde_json::to_string(client)
            .ok()
            .and_then(|json| CString::new(json).ok())
            .ok_or_else(|| SessionOpenError {
                plugin: self.name().to_owned(),
                message: "cannot pass the client's metadata as a C string".to_owned(),
            })?;
        let functions = self.library.functions;
        let mut session: *mut c_void = ptr::null_mut();
        let mut error: *mut c_char = ptr::null_mut();
        // SAFETY: the plugin is initialised and not released (we hold it);
        // `client` outlives the call; `session` and `error` are valid for writes.
        let status = unsafe {
            (functions.session_open)(self.state.0, client.as_ptr(), &mut session, &mut error)
        };
        // SAFETY: `error` is NULL or a string from this plugin, given back once.
        let message = unsafe { take_string(functions.free_string, error) };
        if status != STATUS_OK {
            return Err(SessionOpenError {
                plugin: self.name().to_owned(),
                message: match message {
                    Some(Ok(message)) if !message.is_empty() => message,
                    _ => format!("session_open returned status {status}"),
                },
            });
        }
        Ok(PluginSession {
            state: PluginState(session),
            plugin: Arc::clone(self),
        })
    }
}

impl Drop for LoadedPlugin {
    fn drop(&mut self) {
        // SAFETY: every session holds an Arc of this plugin, so none is open;
        // the state came from `init` and is released exactly once, here.
        unsafe { (self.library.functions.release)(self.state.0) };
    }
}

/// One client's session with one plugin. Dropping it calls `session_close`.
#[derive(Debug)]
pub struct PluginSession {
    state: PluginState,
    plugin: Arc<LoadedPlugin>,
}

impl PluginSession {
    /// The plugin this session belongs to.
    pub fn plugin(&self) -> &Arc<LoadedPlugin> {
        &self.plugin
    }

    /// Calls `method` with `params` (JSON text; `null` when the request had
    /// none) and returns the checked result. Blocks as long as the plugin does.
    pub fn call(&mut self, method: &str, params: &str) -> Result<Box<RawValue>, CallError> {
        let method = CString::new(method).map_err(|_| CallError::Argument("the method name"))?;
        let params = CString::new(params).map_err(|_| CallError::Argument("the params"))?;
        let functions = self.plugin.library.functions;
        let mut out: *mut c_char = ptr::null_mut();
        // SAFETY: plugin and session are live (we hold both); `&mut self` keeps
        // calls of this session from overlapping; the strings outlive the call
        // and `out` is valid for a write.
        let status = unsafe {
            (functions.call)(
                self.plugin.state.0,
                self.state.0,
                method.as_ptr(),
                params.as_ptr(),
                &mut out,
            )
        };
        // SAFETY: `out` is NULL or a string from this plugin, given back once.
        let reply = unsafe { take_string(functions.free_string, out) };
        match (status, reply) {
            (STATUS_OK | STATUS_ERROR, None) => Err(CallError::BadReply("no output")),
            (STATUS_OK | STATUS_ERROR, Some(Err(_))) => {
                Err(CallError::BadReply("output that is not UTF-8"))
            }
            (STATUS_OK, Some(Ok(text))) => {
                RawValue::from_string(text).map_err(CallError::MalformedResult)
            }
            (STATUS_ERROR, Some(Ok(text))) => match serde_json::from_str::<RpcError>(&text) {
                Ok(error) => Err(CallError::Rpc(error)),
                Err(error) => Err(CallError::MalformedError(error)),
            },
            (status, reply) => Err(CallError::Failed {
                status,
                message: match reply {
                    Some(Ok(message)) => message,
                    _ => String::new(),
                },
            }),
        }
    }
}

impl Drop for PluginSession {
    fn drop(&mut self) {
        // SAFETY: the session came from `session_open` of this plugin, which we
        // keep alive; it is closed exactly once, after its last call (calls take `&mut self`).
        unsafe { (self.plugin.library.functions.session_close)(self.plugin.state.0, self.state.0) };
    }
}

#[cfg(test)]
mod tests;
