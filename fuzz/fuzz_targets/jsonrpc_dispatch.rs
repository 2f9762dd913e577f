//! Fuzzes `websocket_jsonrpc`'s dispatcher (`servers::jsonrpc::Dispatcher`)
//! on arbitrary message text: the JSON-RPC framing (parse errors, batches,
//! notifications, ids), jsonrpsee's routing and the plugin ABI's reply
//! checks, with an in-process plugin behind the real C table, as the
//! dispatcher's unit tests use.
//!
//! Checked: no panic, and every reply is JSON-RPC 2.0: an object with
//! `"jsonrpc":"2.0"`, an `id`, and exactly one of `result` and `error`
//! (whose `code` is an integer), or a non-empty array of such objects. Text
//! that is not JSON gets `-32700`.

#![no_main]

use std::ffi::CStr;
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use rpc_abi::host::PluginLibrary;
use rpc_abi::{ClientInfo, Plugin, RpcError};
use serde_json::{Value, json};
use servers::jsonrpc::{Dispatcher, PluginSet};

/// A plugin with a method of each outcome. It never panics: libFuzzer's
/// panic hook would abort even on a panic the trampoline catches.
struct Probe;

impl Plugin for Probe {
    type Session = u64;
    const NAME: &'static CStr = c"probe";
    const METHODS: &'static [&'static CStr] = &[c"echo", c"count", c"fail"];

    fn init(_config: Option<&str>) -> Result<Probe, String> {
        Ok(Probe)
    }

    fn open_session(&self, _client: &ClientInfo) -> Result<u64, String> {
        Ok(0)
    }

    fn call(&self, session: &mut u64, method: &str, params: Value) -> Result<Value, RpcError> {
        match method {
            "echo" => Ok(params),
            "count" => {
                *session = session.wrapping_add(1);
                Ok(json!(*session))
            }
            _ => {
                let code = params.get("code").and_then(Value::as_i64).unwrap_or(1);
                let mut error = RpcError::new(i32::try_from(code).unwrap_or(1), "failed as asked");
                error.data = params.get("data").cloned();
                Err(error)
            }
        }
    }
}

struct Fixture {
    runtime: tokio::runtime::Runtime,
    dispatcher: Dispatcher,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let library = PluginLibrary::in_process::<Probe>().expect("valid table");
        let plugin = Arc::new(library.init(None).expect("init"));
        let plugin_set = PluginSet::from_plugins(vec![plugin]);
        Fixture {
            runtime: tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime"),
            dispatcher: Dispatcher::open(&plugin_set, &ClientInfo::default()).expect("opens"),
        }
    })
}

fuzz_target!(|text: &str| {
    let fixture = fixture();
    let reply = fixture
        .runtime
        .block_on(fixture.dispatcher.handle_text(text));
    let is_json = serde_json::from_str::<Box<serde_json::value::RawValue>>(text).is_ok();
    let Some(reply) = reply else {
        assert!(is_json, "no reply to text that is not JSON");
        return;
    };
    let reply: Value = serde_json::from_str(&reply).expect("replies are JSON");
    if !is_json {
        assert_eq!(reply["error"]["code"], json!(-32700), "{reply}");
    }
    match &reply {
        Value::Array(replies) => {
            assert!(!replies.is_empty(), "an empty batch reply");
            replies.iter().for_each(check_response);
        }
        single => check_response(single),
    }
});

fn check_response(response: &Value) {
    let object = response.as_object().expect("a response is an object");
    assert_eq!(object.get("jsonrpc"), Some(&json!("2.0")), "{response}");
    let id = object.get("id").expect("a response has an id");
    assert!(
        id.is_null() || id.is_number() || id.is_string(),
        "{response}"
    );
    match (object.get("result"), object.get("error")) {
        (Some(_), None) => {}
        (None, Some(error)) => assert!(error["code"].is_i64(), "{response}"),
        _ => panic!("not exactly one of result and error: {response}"),
    }
    assert_eq!(object.len(), 3, "{response}");
}
