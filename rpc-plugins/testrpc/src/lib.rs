//! `testrpc`: a plugin for the tests of `websocket_jsonrpc`, not for production.
//!
//! Methods: `echo` (returns its params), `count` (calls of `count` in this
//! session: per-session state), `config` (the `-C` string or null), `panic`
//! (panics: the host must answer `-32603` and keep going), `fail {code,
//! message?}` (returns that error object, reserved codes included, so the
//! host's code mapping can be tested).

use std::ffi::CStr;

use rpc_abi::{Plugin, RpcError, parse_params};
use serde::Deserialize;
use serde_json::{Value, json};

/// The plugin state: only the configuration string.
struct TestRpc {
    config: Option<String>,
}

/// Per-session state: the number of `count` calls.
#[derive(Default)]
struct Session {
    n_counts: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FailParams {
    code: i32,
    message: Option<String>,
}

impl Plugin for TestRpc {
    type Session = Session;
    const NAME: &'static CStr = c"testrpc";
    const METHODS: &'static [&'static CStr] = &[c"echo", c"count", c"config", c"panic", c"fail"];

    fn init(config: Option<&str>) -> Result<TestRpc, String> {
        if config == Some("refuse") {
            return Err("configured to refuse to start".to_owned());
        }
        Ok(TestRpc {
            config: config.map(str::to_owned),
        })
    }

    fn open_session(&self) -> Result<Session, String> {
        Ok(Session::default())
    }

    fn call(&self, session: &mut Session, method: &str, params: Value) -> Result<Value, RpcError> {
        match method {
            "echo" => Ok(params),
            "count" => {
                session.n_counts += 1;
                Ok(json!(session.n_counts))
            }
            "config" => Ok(json!(self.config)),
            "panic" => panic!("testrpc: panicking as asked"),
            "fail" => {
                let params: FailParams = parse_params(params)?;
                Err(RpcError::new(
                    params.code,
                    params
                        .message
                        .unwrap_or_else(|| "failing as asked".to_owned()),
                ))
            }
            other => Err(RpcError::internal(format!("undeclared method {other:?}"))),
        }
    }
}

rpc_abi::export_plugin!(TestRpc);
