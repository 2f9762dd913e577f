//! The JSON-RPC error object a plugin method answers with, and turning
//! `params` into a typed value.
//!
//! Which codes a plugin may use, and what the host does with the others, is
//! decided by the host (`servers::jsonrpc`) and documented in `docs/plugin-abi.md`.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// JSON-RPC 2.0 "Invalid params".
pub const INVALID_PARAMS: i32 = -32602;
/// JSON-RPC 2.0 "Internal error".
pub const INTERNAL_ERROR: i32 = -32603;

/// A JSON-RPC error object: `{"code": int, "message": string, "data"?: any}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{message} (code {code})")]
pub struct RpcError {
    /// The error code; see `docs/plugin-abi.md` for the ranges a plugin may use.
    pub code: i32,
    /// A short sentence for the user.
    pub message: String,
    /// Anything else worth telling the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl RpcError {
    /// An error with `code` and `message` and no data.
    pub fn new(code: i32, message: impl Into<String>) -> RpcError {
        RpcError {
            code,
            message: message.into(),
            data: None,
        }
    }

    /// `-32602`: the params do not fit the method.
    pub fn invalid_params(message: impl Into<String>) -> RpcError {
        RpcError::new(INVALID_PARAMS, message)
    }

    /// `-32603`: the plugin could not do its job for a reason the client cannot fix.
    pub fn internal(message: impl Into<String>) -> RpcError {
        RpcError::new(INTERNAL_ERROR, message)
    }

    /// The same error carrying `data`.
    pub fn with_data(mut self, data: Value) -> RpcError {
        self.data = Some(data);
        self
    }
}

/// Deserializes `params` into `T`, or fails with `-32602` and serde's reason.
///
/// Absent params (`null`) read as an empty object, so a method whose fields
/// are all optional can be called without params. By-position params (an
/// array) fill a struct's fields in order, which serde does for free.
pub fn parse_params<T: DeserializeOwned>(params: Value) -> Result<T, RpcError> {
    let params = match params {
        Value::Null => Value::Object(serde_json::Map::new()),
        other => other,
    };
    serde_json::from_value(params).map_err(|error| RpcError::invalid_params(error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Debug, PartialEq, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Login {
        user: String,
        passwd: Option<String>,
    }

    #[test]
    fn params_by_name_by_position_and_missing() {
        let by_name: Login = parse_params(json!({"user": "a", "passwd": "b"})).expect("by name");
        let by_position: Login = parse_params(json!(["a", "b"])).expect("by position");
        assert_eq!(by_name, by_position);
        let error = parse_params::<Login>(Value::Null).expect_err("user is required");
        assert_eq!(error.code, INVALID_PARAMS);
        assert!(error.message.contains("user"), "{error}");
        let error =
            parse_params::<Login>(json!({"user": "a", "pw": 1})).expect_err("unknown field");
        assert!(error.message.contains("pw"), "{error}");
    }

    #[test]
    fn error_objects_round_trip_and_omit_empty_data() {
        let error = RpcError::new(7, "no");
        assert_eq!(
            serde_json::to_value(&error).expect("serializes"),
            json!({"code": 7, "message": "no"})
        );
        let error = error.with_data(json!([1]));
        let text = serde_json::to_string(&error).expect("serializes");
        assert_eq!(
            serde_json::from_str::<RpcError>(&text).expect("parses"),
            error
        );
    }
}
