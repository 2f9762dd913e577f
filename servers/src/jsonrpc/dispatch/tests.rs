//! The dispatcher fed JSON text directly, with an in-process plugin behind
//! the real C table: framing, ids, batches, notifications and error codes.

use std::ffi::CStr;

use rpc_abi::host::PluginLibrary;
use rpc_abi::{Plugin, RpcError};
use serde_json::{Value, json};

use super::*;

struct Probe;

impl Plugin for Probe {
    type Session = u64;
    const NAME: &'static CStr = c"probe";
    const METHODS: &'static [&'static CStr] = &[c"echo", c"count", c"panic", c"fail"];

    fn init(_config: Option<&str>) -> Result<Probe, String> {
        Ok(Probe)
    }

    fn open_session(&self, _client: &rpc_abi::ClientInfo) -> Result<u64, String> {
        Ok(0)
    }

    fn call(&self, session: &mut u64, method: &str, params: Value) -> Result<Value, RpcError> {
        match method {
            "echo" => Ok(params),
            "count" => {
                *session += 1;
                Ok(json!(*session))
            }
            "panic" => panic!("probe panics as asked"),
            _ => {
                let code = params.get("code").and_then(Value::as_i64).unwrap_or(1);
                Err(RpcError::new(
                    i32::try_from(code).unwrap_or(1),
                    "failed as asked",
                ))
            }
        }
    }
}

fn dispatcher() -> Dispatcher {
    let library = PluginLibrary::in_process::<Probe>().expect("valid table");
    let plugin = Arc::new(library.init(None).expect("init"));
    let plugin_set = PluginSet::from_plugins(vec![plugin]);
    Dispatcher::open(&plugin_set, &rpc_abi::ClientInfo::default()).expect("opens")
}

async fn check(dispatcher: &Dispatcher, request: &str, expected: Option<Value>) {
    let reply = dispatcher.handle_text(request).await;
    let reply: Option<Value> =
        reply.map(|text| serde_json::from_str(&text).expect("replies are JSON"));
    assert_eq!(reply, expected, "reply to {request}");
}

fn error(id: Value, code: i64) -> impl Fn(Value) -> bool {
    move |reply: Value| {
        reply["id"] == id && reply["error"]["code"] == json!(code) && reply["jsonrpc"] == "2.0"
    }
}

async fn check_error(dispatcher: &Dispatcher, request: &str, id: Value, code: i64) {
    let reply = dispatcher
        .handle_text(request)
        .await
        .expect("an error reply");
    let reply: Value = serde_json::from_str(&reply).expect("JSON");
    assert!(
        error(id, code)(reply.clone()),
        "reply to {request}: {reply}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn results_carry_the_clients_own_id() {
    let dispatcher = dispatcher();
    for id in [
        json!(1),
        json!(-7),
        json!(1.5),
        json!("abc"),
        json!(null),
        json!(18446744073709551615u64),
    ] {
        let request =
            json!({"jsonrpc": "2.0", "id": id, "method": "echo", "params": {"a": [1]}}).to_string();
        check(
            &dispatcher,
            &request,
            Some(json!({"jsonrpc": "2.0", "result": {"a": [1]}, "id": id})),
        )
        .await;
    }
    check(
        &dispatcher,
        r#"{"jsonrpc":"2.0","id":2,"method":"echo","params":[1,"x"]}"#,
        Some(json!({"jsonrpc": "2.0", "result": [1, "x"], "id": 2})),
    )
    .await;
    check(
        &dispatcher,
        r#"{"jsonrpc":"2.0","id":3,"method":"echo"}"#,
        Some(json!({"jsonrpc": "2.0", "result": null, "id": 3})),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn protocol_errors_have_their_standard_codes() {
    let dispatcher = dispatcher();
    check_error(&dispatcher, "{not json", json!(null), -32700).await;
    check_error(&dispatcher, "", json!(null), -32700).await;
    check_error(&dispatcher, "[]", json!(null), -32600).await;
    let huge_batch = format!("[{}]", vec!["1"; MAX_BATCH + 1].join(","));
    check_error(&dispatcher, &huge_batch, json!(null), -32600).await;
    check_error(&dispatcher, "42", json!(null), -32600).await;
    check_error(
        &dispatcher,
        r#"{"jsonrpc":"1.0","id":1,"method":"echo"}"#,
        json!(1),
        -32600,
    )
    .await;
    check_error(
        &dispatcher,
        r#"{"jsonrpc":"2.0","id":1,"method":5}"#,
        json!(1),
        -32600,
    )
    .await;
    check_error(
        &dispatcher,
        r#"{"jsonrpc":"2.0","id":1,"method":"echo","params":5}"#,
        json!(1),
        -32600,
    )
    .await;
    check_error(
        &dispatcher,
        r#"{"jsonrpc":"2.0","id":[1],"method":"echo"}"#,
        json!(null),
        -32600,
    )
    .await;
    check_error(
        &dispatcher,
        r#"{"jsonrpc":"2.0","id":"x","method":"nope"}"#,
        json!("x"),
        -32601,
    )
    .await;
    check_error(
        &dispatcher,
        r#"{"jsonrpc":"2.0","id":1,"method":"fail","params":{"code":-32602}}"#,
        json!(1),
        -32602,
    )
    .await;
    check_error(
        &dispatcher,
        r#"{"jsonrpc":"2.0","id":1,"method":"fail","params":{"code":7}}"#,
        json!(1),
        7,
    )
    .await;
    // Codes of the protocol layer are not the plugin's to use.
    check_error(
        &dispatcher,
        r#"{"jsonrpc":"2.0","id":1,"method":"fail","params":{"code":-32700}}"#,
        json!(1),
        -32603,
    )
    .await;
    check_error(
        &dispatcher,
        r#"{"jsonrpc":"2.0","id":1,"method":"fail","params":{"code":-32601}}"#,
        json!(1),
        -32603,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_panic_answers_that_call_only() {
    let dispatcher = dispatcher();
    check_error(
        &dispatcher,
        r#"{"jsonrpc":"2.0","id":1,"method":"panic"}"#,
        json!(1),
        -32603,
    )
    .await;
    check(
        &dispatcher,
        r#"{"jsonrpc":"2.0","id":2,"method":"count"}"#,
        Some(json!({"jsonrpc": "2.0", "result": 1, "id": 2})),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn notifications_run_but_get_no_reply() {
    let dispatcher = dispatcher();
    check(&dispatcher, r#"{"jsonrpc":"2.0","method":"count"}"#, None).await;
    check(&dispatcher, r#"{"jsonrpc":"2.0","method":"nope"}"#, None).await;
    check(
        &dispatcher,
        r#"[{"jsonrpc":"2.0","method":"count"},{"jsonrpc":"2.0","method":"panic"}]"#,
        None,
    )
    .await;
    check(
        &dispatcher,
        r#"{"jsonrpc":"2.0","id":9,"method":"count"}"#,
        Some(json!({"jsonrpc": "2.0", "result": 3, "id": 9})),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn batches_answer_each_request_in_order() {
    let dispatcher = dispatcher();
    let reply = dispatcher
        .handle_text(
            r#"[{"jsonrpc":"2.0","id":1,"method":"count"},
                {"jsonrpc":"2.0","method":"count"},
                {"jsonrpc":"2.0","id":"b","method":"nope"},
                1,
                {"jsonrpc":"2.0","id":3,"method":"count"}]"#,
        )
        .await
        .expect("a batch reply");
    let reply: Value = serde_json::from_str(&reply).expect("JSON");
    let replies = reply.as_array().expect("an array");
    assert_eq!(replies.len(), 4, "{reply}");
    assert_eq!(replies[0], json!({"jsonrpc": "2.0", "result": 1, "id": 1}));
    assert!(error(json!("b"), -32601)(replies[1].clone()), "{reply}");
    assert!(error(json!(null), -32600)(replies[2].clone()), "{reply}");
    assert_eq!(replies[3], json!({"jsonrpc": "2.0", "result": 3, "id": 3}));
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_are_separate() {
    let first = dispatcher();
    let second = dispatcher();
    let count = r#"{"jsonrpc":"2.0","id":1,"method":"count"}"#;
    check(
        &first,
        count,
        Some(json!({"jsonrpc": "2.0", "result": 1, "id": 1})),
    )
    .await;
    check(
        &first,
        count,
        Some(json!({"jsonrpc": "2.0", "result": 2, "id": 1})),
    )
    .await;
    check(
        &second,
        count,
        Some(json!({"jsonrpc": "2.0", "result": 1, "id": 1})),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn batches_are_bounded_at_100_requests() {
    let dispatcher = dispatcher();
    let batch = |n_requests: usize| {
        let requests: Vec<Value> = (0..n_requests)
            .map(|id| json!({"jsonrpc": "2.0", "id": id, "method": "count"}))
            .collect();
        Value::from(requests).to_string()
    };
    check_error(&dispatcher, &batch(101), json!(null), -32600).await;
    let reply = dispatcher
        .handle_text(&batch(100))
        .await
        .expect("a batch reply");
    let reply: Value = serde_json::from_str(&reply).expect("JSON");
    assert_eq!(reply.as_array().map(Vec::len), Some(100), "{reply}");
    assert_eq!(
        reply[99],
        json!({"jsonrpc": "2.0", "result": 100, "id": 99}),
        "the refused batch ran nothing"
    );
}
