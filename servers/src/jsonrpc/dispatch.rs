//! JSON-RPC 2.0 over one WebSocket message: framing (single requests,
//! batches, notifications, the `-32700` and `-32600` answers) around a
//! per-session jsonrpsee [`RpcModule`] whose methods call the plugins.
//!
//! jsonrpsee's `raw_json_request` takes one well-formed request, so this
//! module checks each request object first and hands jsonrpsee a normalised
//! copy (`"id": 0`), then puts the client's own id (any string, number or
//! null) back into the response. Notifications are executed too, and their
//! responses dropped, as JSON-RPC 2.0 §4.1 asks.
//!
//! Plugin calls may block (SQLite, password hashing), so every method is
//! registered with `register_blocking_method` and runs on tokio's blocking
//! pool. Calls of one session run one after the other, which the plugin ABI
//! promises plugins.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use jsonrpsee::RpcModule;
use jsonrpsee::types::{ErrorCode, ErrorObjectOwned};
use rpc_abi::ClientInfo;
use rpc_abi::host::{CallError, PluginSession, SessionOpenError};
use serde_json::Value;
use serde_json::value::RawValue;
use tracing::{debug, warn};

use super::plugins::PluginSet;

/// Most requests in one batch; a larger batch is answered with one `-32600`.
///
/// A batch runs one request after another on the session's one plugin
/// session, so this bounds the work one message can queue: 100 password
/// checks of `authrpc` are a few seconds of one core. The client may cancel a
/// batch by leaving (`super::run_session`); a client that needs more requests
/// sends more messages.
pub const MAX_BATCH: usize = 100;

/// The id jsonrpsee sees; the client's own id is restored in [`finish_response`].
const INNER_ID: &str = "0";

/// The per-session context of the module: one plugin session per plugin.
#[derive(Debug)]
struct SessionContext {
    sessions: Vec<Mutex<PluginSession>>,
}

/// The JSON-RPC side of one WebSocket client: its plugin sessions and the
/// module that routes method names to them. Dropping it closes the plugin
/// sessions (once any call still running has returned).
#[derive(Debug)]
pub struct Dispatcher {
    module: RpcModule<SessionContext>,
}

impl Dispatcher {
    /// Opens one session for `client` in every plugin. Blocks as long as the
    /// plugins do: call it from a blocking thread.
    pub fn open(
        plugin_set: &PluginSet,
        client: &ClientInfo,
    ) -> Result<Dispatcher, SessionOpenError> {
        let mut sessions = Vec::with_capacity(plugin_set.plugins().len());
        for plugin in plugin_set.plugins() {
            sessions.push(Mutex::new(plugin.open_session(client)?));
        }
        let mut module = RpcModule::new(SessionContext { sessions });
        for entry in plugin_set.methods() {
            let (method, plugin_idx) = (entry.name, entry.plugin_idx);
            module
                .register_blocking_method(method, move |params, context, _| {
                    call_plugin(&context, plugin_idx, method, params.as_str())
                })
                .expect("PluginSet holds each method name once");
        }
        Ok(Dispatcher { module })
    }

    /// Answers one WebSocket text message: the response (or batch of them),
    /// or `None` when there is nothing to send (only notifications).
    pub async fn handle_text(&self, text: &str) -> Option<String> {
        let value: Box<RawValue> = match serde_json::from_str(text) {
            Ok(value) => value,
            Err(error) => {
                debug!(%error, "parse error");
                return Some(error_response(&Value::Null, ErrorCode::ParseError.into()));
            }
        };
        if value.get().trim_start().starts_with('[') {
            let Ok(batch) = serde_json::from_str::<Vec<Box<RawValue>>>(value.get()) else {
                return Some(error_response(&Value::Null, ErrorCode::ParseError.into()));
            };
            if batch.is_empty() {
                return Some(error_response(&Value::Null, invalid_request("empty batch")));
            }
            if batch.len() > MAX_BATCH {
                return Some(error_response(
                    &Value::Null,
                    invalid_request(&format!("a batch holds at most {MAX_BATCH} requests")),
                ));
            }
            let mut responses = Vec::with_capacity(batch.len());
            for request in &batch {
                if let Some(response) = self.handle_request(request).await {
                    responses.push(response);
                }
            }
            if responses.is_empty() {
                return None;
            }
            return Some(format!("[{}]", responses.join(",")));
        }
        self.handle_request(&value).await
    }

    /// The answer to a message that is not text at all (binary, not UTF-8).
    pub fn parse_error() -> String {
        error_response(&Value::Null, ErrorCode::ParseError.into())
    }

    /// One request object of a message or batch.
    async fn handle_request(&self, request: &RawValue) -> Option<String> {
        let checked = match check_request(request) {
            Ok(checked) => checked,
            Err((id, error)) => return Some(error_response(&id, error)),
        };
        let inner = format!(
            r#"{{"jsonrpc":"2.0","id":{INNER_ID},"method":{},"params":{}}}"#,
            checked.method_json, checked.params_json
        );
        let response = match self.module.raw_json_request(&inner, 1).await {
            Ok((response, _subscriptions)) => response,
            Err(error) => {
                warn!(%error, "jsonrpsee refused a checked request");
                let id = checked.id.unwrap_or(Value::Null);
                return Some(error_response(&id, invalid_request("malformed request")));
            }
        };
        let id = checked.id?;
        Some(finish_response(&response, &id))
    }
}

/// A request object that passed the checks of JSON-RPC 2.0 §4.
#[derive(Debug)]
struct CheckedRequest {
    /// `None` for a notification.
    id: Option<Value>,
    /// The method name, as JSON text.
    method_json: String,
    /// The params as JSON text (`null` when absent).
    params_json: String,
}

/// Checks one request object; the error carries the id to answer with.
fn check_request(request: &RawValue) -> Result<CheckedRequest, (Value, ErrorObjectOwned)> {
    let fields: BTreeMap<String, Box<RawValue>> = serde_json::from_str(request.get())
        .map_err(|_| (Value::Null, invalid_request("a request must be an object")))?;
    let id = match fields.get("id") {
        None => None,
        Some(raw) => match serde_json::from_str::<Value>(raw.get()) {
            Ok(id @ (Value::Null | Value::Number(_) | Value::String(_))) => Some(id),
            _ => {
                return Err((
                    Value::Null,
                    invalid_request("id must be a string, a number or null"),
                ));
            }
        },
    };
    let reply_id = id.clone().unwrap_or(Value::Null);
    let version = fields
        .get("jsonrpc")
        .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok());
    if version.as_deref() != Some("2.0") {
        return Err((reply_id, invalid_request(r#"jsonrpc must be "2.0""#)));
    }
    let method = fields
        .get("method")
        .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok());
    let Some(method) = method else {
        return Err((reply_id, invalid_request("method must be a string")));
    };
    let params_json = match fields.get("params") {
        None => "null".to_owned(),
        Some(raw) if raw.get() == "null" => "null".to_owned(),
        Some(raw) if raw.get().starts_with(['[', '{']) => raw.get().to_owned(),
        Some(_) => {
            return Err((
                reply_id,
                invalid_request("params must be an array or an object"),
            ));
        }
    };
    Ok(CheckedRequest {
        id,
        method_json: serde_json::to_string(&method).expect("a string serializes"),
        params_json,
    })
}

/// jsonrpsee's response with the client's `id` in place of [`INNER_ID`].
fn finish_response(response: &RawValue, id: &Value) -> String {
    let fields: BTreeMap<String, Box<RawValue>> = match serde_json::from_str(response.get()) {
        Ok(fields) => fields,
        Err(_) => return error_response(id, ErrorCode::InternalError.into()),
    };
    let id_json = serde_json::to_string(id).expect("a JSON value serializes");
    match (fields.get("result"), fields.get("error")) {
        (Some(result), _) => format!(
            r#"{{"jsonrpc":"2.0","result":{},"id":{id_json}}}"#,
            result.get()
        ),
        (None, Some(error)) => format!(
            r#"{{"jsonrpc":"2.0","error":{},"id":{id_json}}}"#,
            error.get()
        ),
        (None, None) => error_response(id, ErrorCode::InternalError.into()),
    }
}

/// A whole error response.
fn error_response(id: &Value, error: ErrorObjectOwned) -> String {
    serde_json::json!({"jsonrpc": "2.0", "error": error, "id": id}).to_string()
}

fn invalid_request(why: &str) -> ErrorObjectOwned {
    ErrorObjectOwned::owned(
        ErrorCode::InvalidRequest.code(),
        ErrorCode::InvalidRequest.message(),
        Some(why),
    )
}

/// Runs one method on a blocking thread: the plugin session of `plugin_idx`.
fn call_plugin(
    context: &SessionContext,
    plugin_idx: usize,
    method: &str,
    params: Option<&str>,
) -> Result<Box<RawValue>, ErrorObjectOwned> {
    let Some(session) = context.sessions.get(plugin_idx) else {
        return Err(ErrorCode::InternalError.into());
    };
    // A poisoned lock only means an earlier call of this host panicked; the
    // plugin session itself is unaffected (plugin panics never unwind into us).
    let mut session = session.lock().unwrap_or_else(PoisonError::into_inner);
    let plugin_name = session.plugin().name().to_owned();
    session
        .call(method, params.unwrap_or("null"))
        .map_err(|error| call_error_to_object(&plugin_name, method, error))
}

/// What the client sees of a failed call. The plugin's own error objects pass
/// through, except codes JSON-RPC reserves for the protocol layer; everything
/// else is `-32603` with the details in the log only.
pub fn call_error_to_object(plugin: &str, method: &str, error: CallError) -> ErrorObjectOwned {
    match error {
        CallError::Rpc(error) if plugin_may_use(error.code) => {
            ErrorObjectOwned::owned(error.code, error.message, error.data)
        }
        CallError::Rpc(error) => {
            warn!(
                plugin,
                method,
                code = error.code,
                "plugin used a reserved error code; answering -32603"
            );
            ErrorObjectOwned::owned(
                ErrorCode::InternalError.code(),
                format!(
                    "plugin {plugin} returned the reserved error code {}",
                    error.code
                ),
                Some(serde_json::json!({"plugin": plugin, "message": error.message})),
            )
        }
        other => {
            warn!(plugin, method, error = %other, "plugin call failed");
            ErrorObjectOwned::owned(
                ErrorCode::InternalError.code(),
                format!("internal error in plugin {plugin}"),
                None::<()>,
            )
        }
    }
}

/// Codes a plugin may answer with: `-32602`, `-32603`, the server-error range
/// `-32099..=-32000`, and anything outside the reserved `-32768..=-32000`.
fn plugin_may_use(code: i32) -> bool {
    !(-32768..=-32000).contains(&code)
        || (-32099..=-32000).contains(&code)
        || code == -32602
        || code == -32603
}

/// Opens a dispatcher for `client` on the blocking pool (plugins may block in `session_open`).
pub async fn open_dispatcher(
    plugin_set: Arc<PluginSet>,
    client: ClientInfo,
) -> Result<Dispatcher, SessionOpenError> {
    match tokio::task::spawn_blocking(move || Dispatcher::open(&plugin_set, &client)).await {
        Ok(result) => result,
        Err(join_error) => Err(SessionOpenError {
            plugin: "(host)".to_owned(),
            message: format!("opening the session panicked: {join_error}"),
        }),
    }
}

#[cfg(test)]
mod tests;
