//! `testrpc`: a plugin for the tests of `websocket_jsonrpc`, not for production.
//!
//! Methods: `echo` (returns its params), `count` (calls of `count` in this
//! session: per-session state), `client` (the session's `ClientInfo`), `config` (the `-C` string or null), `panic`
//! (panics: the host must answer `-32603` and keep going), `fail {code,
//! message?}` (returns that error object, reserved codes included, so the
//! host's code mapping can be tested). With `-C refuse` it fails to start;
//! with `-C refuse-sessions` it starts but refuses every session.
//!
//! Plugin-wide, for tests of what the host runs when: `hold` blocks until
//! the gate is opened (at most [`HOLD_LIMIT`], so a broken test cannot hang the
//! process), `gate {open}` opens or closes it, `tick` counts a plugin-wide
//! tick, and `stats` returns `{holding, ticks, closed}` (calls in `hold` now,
//! `tick` calls so far, sessions closed so far).

use std::ffi::CStr;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rpc_abi::{ClientInfo, Plugin, RpcError, parse_params};
use serde::Deserialize;
use serde_json::{Value, json};

/// Longest a `hold` call waits for the gate.
const HOLD_LIMIT: Duration = Duration::from_secs(30);

/// The plugin state: the configuration string and the gate of `hold`.
struct TestRpc {
    config: Option<String>,
    gate: Mutex<Gate>,
    gate_changed: Condvar,
}

/// What `stats` reports, shared by every session.
#[derive(Default)]
struct Gate {
    open: bool,
    n_holding: u64,
    n_ticks: u64,
    n_closed: u64,
}

/// Per-session state: the number of `count` calls and who the client is.
struct Session {
    n_counts: u64,
    client: ClientInfo,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GateParams {
    open: bool,
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
    const METHODS: &'static [&'static CStr] = &[
        c"echo", c"count", c"client", c"config", c"panic", c"fail", c"hold", c"gate", c"tick",
        c"stats",
    ];

    fn init(config: Option<&str>) -> Result<TestRpc, String> {
        if config == Some("refuse") {
            return Err("configured to refuse to start".to_owned());
        }
        Ok(TestRpc {
            config: config.map(str::to_owned),
            gate: Mutex::new(Gate::default()),
            gate_changed: Condvar::new(),
        })
    }

    fn open_session(&self, client: &ClientInfo) -> Result<Session, String> {
        if self.config.as_deref() == Some("refuse-sessions") {
            return Err("sessions refused as configured".to_owned());
        }
        Ok(Session {
            n_counts: 0,
            client: client.clone(),
        })
    }

    fn close_session(&self, _session: Session) {
        self.gate().n_closed += 1;
    }

    fn call(&self, session: &mut Session, method: &str, params: Value) -> Result<Value, RpcError> {
        match method {
            "hold" => {
                let mut gate = self.gate();
                gate.n_holding += 1;
                let (mut gate, _) = self
                    .gate_changed
                    .wait_timeout_while(gate, HOLD_LIMIT, |gate| !gate.open)
                    .unwrap_or_else(PoisonError::into_inner);
                gate.n_holding -= 1;
                Ok(json!(gate.open))
            }
            "gate" => {
                let params: GateParams = parse_params(params)?;
                self.gate().open = params.open;
                self.gate_changed.notify_all();
                Ok(Value::Null)
            }
            "tick" => {
                self.gate().n_ticks += 1;
                Ok(Value::Null)
            }
            "stats" => {
                let gate = self.gate();
                Ok(
                    json!({"holding": gate.n_holding, "ticks": gate.n_ticks, "closed": gate.n_closed}),
                )
            }
            "echo" => Ok(params),
            "count" => {
                session.n_counts += 1;
                Ok(json!(session.n_counts))
            }
            "config" => Ok(json!(self.config)),
            "client" => Ok(json!(session.client)),
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

impl TestRpc {
    /// The gate; a panic elsewhere leaves its counters usable.
    fn gate(&self) -> MutexGuard<'_, Gate> {
        self.gate.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

rpc_abi::export_plugin!(TestRpc);
