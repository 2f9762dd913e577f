//! The `wsmsgbroker` dialect: JSON objects with an `action`. Clients send
//! `register {id}`, `unregister`, `send {dest, message, ack?}` and
//! `answer {ack, message}`; the broker sends `registered {id}`,
//! `unregistered {id}`, `message {message, from, ack?}`, `answer {message,
//! from, ack}` and, for anything it cannot do, `error {message}`.
//!
//! A `send` with an `ack` (the npm client puts a fresh uuid there when it
//! wants an answer) is remembered in the core for `--ack-ttl`: the first
//! `answer` with that `ack` from one of the receivers goes back to the
//! sender; later ones are dropped. `from` is always the id the broker
//! registered for the sender, whatever the message says.

use serde_json::{Map, Value, json};
use tokio_tungstenite::tungstenite::Message;

use super::core::{Answer, Claim, Target};
use super::{ClientContext, Flow};

/// The most receivers one `send` may list.
pub const MAX_DEST: usize = 64;

/// A client's action, parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// `register {id}`.
    Register(String),
    /// `unregister`.
    Unregister,
    /// `send {dest, message, ack?}`.
    Send {
        /// The receivers' ids.
        dest: Vec<String>,
        /// What they get (any JSON but null).
        message: Value,
        /// The key under which an answer is expected.
        ack: Option<String>,
    },
    /// `answer {ack, message}`.
    Answer {
        /// The key of the message answered.
        ack: String,
        /// The answer (any JSON but null).
        message: Value,
    },
}

/// Parses one message; the error is the reply's text.
pub fn parse(text: &str) -> Result<Action, String> {
    let mut object: Map<String, Value> =
        serde_json::from_str(text).map_err(|error| format!("malformed message: {error}"))?;
    let action = match object.remove("action") {
        Some(Value::String(action)) => action,
        _ => return Err("the message needs a string \"action\"".to_owned()),
    };
    let string = |object: &mut Map<String, Value>, key: &str| match object.remove(key) {
        Some(Value::String(value)) => Ok(Some(value)),
        None | Some(Value::Null) => Ok(None),
        Some(_) => Err(format!("{key:?} must be a string")),
    };
    let message = |object: &mut Map<String, Value>| match object.remove("message") {
        None | Some(Value::Null) => Err(format!("{action:?} needs a \"message\"")),
        Some(message) => Ok(message),
    };
    match action.as_str() {
        "register" => string(&mut object, "id")?
            .map(Action::Register)
            .ok_or_else(|| "register needs a string \"id\"".to_owned()),
        "unregister" => Ok(Action::Unregister),
        "send" => {
            let dest = match object.remove("dest") {
                Some(Value::String(id)) => vec![id],
                Some(Value::Array(ids)) if ids.len() <= MAX_DEST => ids
                    .into_iter()
                    .map(|id| match id {
                        Value::String(id) => Ok(id),
                        _ => Err("\"dest\" must hold strings".to_owned()),
                    })
                    .collect::<Result<Vec<String>, String>>()?,
                Some(Value::Array(_)) => return Err(format!("more than {MAX_DEST} in \"dest\"")),
                _ => return Err("send needs \"dest\", a string or an array of strings".to_owned()),
            };
            if dest.is_empty() {
                return Err("\"dest\" is empty".to_owned());
            }
            let message = message(&mut object)?;
            let ack = string(&mut object, "ack")?;
            Ok(Action::Send { dest, message, ack })
        }
        "answer" => {
            let ack = string(&mut object, "ack")?.ok_or("answer needs a string \"ack\"")?;
            let message = message(&mut object)?;
            Ok(Action::Answer { ack, message })
        }
        other => Err(format!(
            "unknown action {other:?} (expected register, unregister, send or answer)"
        )),
    }
}

/// Queues an error reply `{"action": "error", "message": ...}` for the client.
pub async fn reply_error(context: &ClientContext<'_>, error: &str) {
    context
        .reply_text(json!({"action": "error", "message": error}).to_string())
        .await;
}

/// Handles one text message of a client.
pub async fn on_text(context: &ClientContext<'_>, text: &str) -> Flow {
    let action = match parse(text) {
        Ok(action) => action,
        Err(error) => {
            reply_error(context, &error).await;
            return Ok(());
        }
    };
    let core = context.core();
    match action {
        Action::Register(id) => {
            let claim = if context.broker.options.takeover {
                Claim::TakeOver
            } else {
                Claim::Exclusive
            };
            match context.broker.claim_name(context.client, &id, claim).await {
                Ok(displaced) => {
                    if let Some(displaced) = displaced {
                        let notice = json!({"action": "unregistered", "id": id}).to_string();
                        context
                            .send(&[Target::Client(displaced)], &Message::text(notice))
                            .await;
                    }
                    context
                        .reply_text(json!({"action": "registered", "id": id}).to_string())
                        .await;
                }
                Err(error) => reply_error(context, &error.to_string()).await,
            }
        }
        Action::Unregister => match context.broker.release_name(context.client).await {
            Some(id) => {
                context
                    .reply_text(json!({"action": "unregistered", "id": id}).to_string())
                    .await;
            }
            None => reply_error(context, "not registered").await,
        },
        Action::Send { dest, message, ack } => {
            let Some(from) = core.name_of(context.client) else {
                reply_error(context, "register before sending").await;
                return Ok(());
            };
            let targets: Vec<Target<'_>> = dest.iter().map(|id| Target::Name(id)).collect();
            let receivers = context.broker.resolve_everywhere(&targets).await;
            let mut missing: Vec<&str> = Vec::new();
            for id in &dest {
                if context
                    .broker
                    .resolve_everywhere(&[Target::Name(id)])
                    .await
                    .is_empty()
                {
                    missing.push(id);
                }
            }
            if let Some(ack) = &ack
                && !receivers.is_empty()
            {
                let ttl = context.broker.options.ack_ttl;
                if let Err(error) = context
                    .broker
                    .expect_answer(ack, context.client, &receivers, ttl)
                    .await
                {
                    reply_error(context, &error.to_string()).await;
                    return Ok(());
                }
            }
            let mut delivered = json!({"action": "message", "message": message, "from": from});
            if let Some(ack) = ack {
                delivered["ack"] = Value::String(ack);
            }
            let targets: Vec<Target<'_>> = receivers.iter().map(|&id| Target::Client(id)).collect();
            context
                .send(&targets, &Message::text(delivered.to_string()))
                .await;
            if !missing.is_empty() {
                reply_error(context, &format!("not registered: {}", missing.join(", "))).await;
            }
        }
        Action::Answer { ack, message } => {
            match context.broker.take_answer(&ack, context.client).await {
                Answer::To(asker) => {
                    let from = core.name_of(context.client);
                    let answer =
                        json!({"action": "answer", "ack": ack, "message": message, "from": from});
                    context
                        .send(&[Target::Client(asker)], &Message::text(answer.to_string()))
                        .await;
                }
                // The first answer won; later ones are dropped, as the issue asks.
                Answer::AlreadyAnswered => {}
                Answer::Unknown => {
                    reply_error(
                        context,
                        &format!("no message with ack {ack:?} awaits your answer"),
                    )
                    .await;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: Result<Action, &str>) {
        let parsed =
            parse(text).map_err(|error| error.split(':').next().unwrap_or_default().to_owned());
        assert_eq!(parsed, expected.map_err(str::to_owned), "{text:?}");
    }

    #[test]
    fn actions_parse_as_the_npm_client_writes_them() {
        check(
            r#"{"action":"register","id":"client0"}"#,
            Ok(Action::Register("client0".to_owned())),
        );
        check(
            r#"{"action":"unregister","id":"client0"}"#,
            Ok(Action::Unregister),
        );
        check(
            r#"{"action":"send","message":"Hi there","dest":"client1","ack":"u-1"}"#,
            Ok(Action::Send {
                dest: vec!["client1".to_owned()],
                message: json!("Hi there"),
                ack: Some("u-1".to_owned()),
            }),
        );
        check(
            r#"{"action":"send","message":{"complex":"thing"},"dest":["a","b"]}"#,
            Ok(Action::Send {
                dest: vec!["a".to_owned(), "b".to_owned()],
                message: json!({"complex": "thing"}),
                ack: None,
            }),
        );
        // The npm client puts its own id in `from`; the broker ignores it.
        check(
            r#"{"action":"answer","ack":"u-1","message":"Hi","from":"someone"}"#,
            Ok(Action::Answer {
                ack: "u-1".to_owned(),
                message: json!("Hi"),
            }),
        );
    }

    #[test]
    fn bad_actions_say_why() {
        check("[]", Err("malformed message"));
        check(
            r#"{"id":"x"}"#,
            Err(r#"the message needs a string "action""#),
        );
        check(
            r#"{"action":"register"}"#,
            Err(r#"register needs a string "id""#),
        );
        check(
            r#"{"action":"send","dest":[],"message":1}"#,
            Err(r#""dest" is empty"#),
        );
        check(
            r#"{"action":"send","dest":"a"}"#,
            Err(r#""send" needs a "message""#),
        );
        check(
            r#"{"action":"answer","message":1}"#,
            Err(r#"answer needs a string "ack""#),
        );
        check(
            r#"{"action":"fly"}"#,
            Err(r#"unknown action "fly" (expected register, unregister, send or answer)"#),
        );
    }
}
