//! Host tests against in-process plugins: the same C table and checks as a
//! loaded library, without a build step. Loading real files is covered by the
//! end-to-end tests in `tests/tests/jsonrpc*.rs`.

use std::ffi::CStr;

use serde_json::{Value, json};

use super::*;
use crate::client::ClientInfo;
use crate::error::{INVALID_PARAMS, RpcError, parse_params};

struct Counter {
    config: Option<String>,
}

#[derive(serde::Deserialize)]
struct FailParams {
    code: i32,
}

impl Plugin for Counter {
    type Session = u64;
    const NAME: &'static CStr = c"counter";
    const METHODS: &'static [&'static CStr] = &[c"count", c"config", c"fail", c"boom"];

    fn init(config: Option<&str>) -> Result<Counter, String> {
        if config == Some("refuse") {
            return Err("refused as asked".to_owned());
        }
        Ok(Counter {
            config: config.map(str::to_owned),
        })
    }

    fn open_session(&self, _client: &ClientInfo) -> Result<u64, String> {
        Ok(0)
    }

    fn call(&self, session: &mut u64, method: &str, params: Value) -> Result<Value, RpcError> {
        match method {
            "count" => {
                *session += 1;
                Ok(json!(*session))
            }
            "config" => Ok(json!(self.config)),
            "fail" => {
                let params: FailParams = parse_params(params)?;
                Err(RpcError::new(params.code, "failed as asked"))
            }
            "boom" => panic!("boom as asked"),
            _ => Err(RpcError::new(-32601, "unknown")),
        }
    }
}

fn counter(config: Option<&str>) -> Arc<LoadedPlugin> {
    let library = PluginLibrary::in_process::<Counter>().expect("a Rust table is valid");
    assert_eq!(library.name(), "counter");
    assert_eq!(library.methods(), ["count", "config", "fail", "boom"]);
    Arc::new(library.init(config).expect("init succeeds"))
}

#[test]
fn sessions_keep_their_own_state() {
    let plugin = counter(None);
    let mut first = plugin.open_session(&ClientInfo::default()).expect("opens");
    let mut second = plugin.open_session(&ClientInfo::default()).expect("opens");
    assert_eq!(first.call("count", "null").expect("counts").get(), "1");
    assert_eq!(first.call("count", "null").expect("counts").get(), "2");
    assert_eq!(second.call("count", "{}").expect("counts").get(), "1");
}

#[test]
fn config_reaches_init_and_init_errors_name_the_plugin() {
    let mut session = counter(Some("a=b"))
        .open_session(&ClientInfo::default())
        .expect("opens");
    assert_eq!(
        session.call("config", "null").expect("answers").get(),
        r#""a=b""#
    );
    let mut session = counter(None)
        .open_session(&ClientInfo::default())
        .expect("opens");
    assert_eq!(
        session.call("config", "null").expect("answers").get(),
        "null"
    );

    let library = PluginLibrary::in_process::<Counter>().expect("valid");
    let error = library.init(Some("refuse")).expect_err("init refuses");
    let text = error.to_string();
    assert!(
        text.contains("counter") && text.contains("refused as asked"),
        "{text}"
    );
}

#[test]
fn errors_and_panics_come_back_as_values() {
    let plugin = counter(None);
    let mut session = plugin.open_session(&ClientInfo::default()).expect("opens");
    match session.call("fail", r#"{"code": 42}"#) {
        Err(CallError::Rpc(error)) => assert_eq!(error, RpcError::new(42, "failed as asked")),
        other => panic!("expected an RPC error, got {other:?}"),
    }
    match session.call("fail", r#"{"code": "x"}"#) {
        Err(CallError::Rpc(error)) => assert_eq!(error.code, INVALID_PARAMS),
        other => panic!("expected invalid params, got {other:?}"),
    }
    match session.call("boom", "null") {
        Err(CallError::Failed { status, message }) => {
            assert_eq!(status, crate::ffi::STATUS_FAILED);
            assert!(message.contains("boom as asked"), "{message}");
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    // The session survives its panic.
    assert_eq!(session.call("count", "null").expect("counts").get(), "1");
    assert!(matches!(
        session.call("count", "nu\0ll"),
        Err(CallError::Argument(_))
    ));
}

/// A table whose functions are those of `Counter`, to break one rule at a time.
fn counter_table() -> Box<TableStorage> {
    Box::new(TableStorage::new::<Counter>())
}

fn check_table(table: &PluginTable) -> Result<(String, Vec<String>, Functions), LoadError> {
    // SAFETY: `table` is a reference to a whole PluginTable whose strings are static.
    unsafe { read_table(Path::new("test.so"), table) }
}

#[test]
fn a_version_mismatch_is_refused_before_anything_else_is_read() {
    let storage = counter_table();
    let table = PluginTable {
        abi_version: ABI_VERSION + 1,
        // A broken pointer that must never be read.
        name: ptr::dangling(),
        methods: ptr::dangling(),
        ..*storage.table()
    };
    match check_table(&table) {
        Err(error @ LoadError::AbiVersion { found, .. }) => {
            assert_eq!(found, ABI_VERSION + 1);
            let text = error.to_string();
            assert!(
                text.contains("test.so") && text.contains("version"),
                "{text}"
            );
        }
        other => panic!("expected a version error, got {other:?}"),
    }
    // SAFETY: NULL is allowed and refused.
    let null = unsafe { read_table(Path::new("test.so"), ptr::null()) };
    assert!(matches!(null, Err(LoadError::InvalidTable { .. })));
}

#[test]
fn null_functions_and_bad_method_lists_are_refused() {
    let storage = counter_table();
    let no_call = PluginTable {
        call: None,
        ..*storage.table()
    };
    let error = check_table(&no_call).expect_err("call is required");
    assert!(error.to_string().contains("call is NULL"), "{error}");

    let empty: [*const c_char; 1] = [ptr::null()];
    let no_methods = PluginTable {
        methods: empty.as_ptr(),
        ..*storage.table()
    };
    let error = check_table(&no_methods).expect_err("methods are required");
    assert!(error.to_string().contains("no methods"), "{error}");

    for (names, rule) in [
        (vec![c"a", c"a"], "twice"),
        (vec![c"rpc.discover"], "reserves"),
        (vec![c""], "empty"),
        (vec![c"new\nline"], "control"),
    ] {
        let pointers: Vec<*const c_char> = names
            .iter()
            .map(|name| name.as_ptr())
            .chain(std::iter::once(ptr::null()))
            .collect();
        let table = PluginTable {
            methods: pointers.as_ptr(),
            ..*storage.table()
        };
        let error = check_table(&table).expect_err("the name breaks a rule");
        assert!(error.to_string().contains(rule), "{error}");
    }
}

#[test]
fn opening_a_missing_or_non_library_file_names_it() {
    let dir = std::env::temp_dir().join(format!("rpc-abi-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("creates a temporary directory");
    let missing = dir.join("libmissing.so");
    let error = PluginLibrary::open(&missing).expect_err("no such file");
    assert!(matches!(error, LoadError::Open { .. }));
    assert!(error.to_string().contains("libmissing.so"), "{error}");

    let text_file = dir.join("libtext.so");
    std::fs::write(&text_file, "not an ELF file").expect("writes");
    let error = PluginLibrary::open(&text_file).expect_err("not a library");
    assert!(error.to_string().contains("libtext.so"), "{error}");
    std::fs::remove_dir_all(&dir).expect("cleans up");
}
