//! The `achex` dialect: JSON objects. `{"setID": id, "passwd": pw}` logs a
//! user in (an id belongs to its first password, `super::accounts`),
//! `{"serviceID": id, "passwd": pw, "idtag": name?}` a service (under its
//! `idtag` if given); `{"cmd": "register_broadcast", "bid": name}` joins a
//! broadcast group and `unregister_broadcast` leaves it. Once logged in,
//! `{"to": name, ...}` reaches every session of that user or service and
//! every member of the broadcast group of that name, `{"toS": sid, ...}` one
//! session; the broker sets `"FROM"` (the sender's id) and `"sID"` (its
//! session number) in every delivered object, over whatever the sender put
//! there. `ping` or `latency` (bare or as a JSON string) sends the client a
//! WebSocket ping, and its pong is answered with `{"ltcy": "N ms"}`, the
//! measured round trip ([`on_pong`]).

use std::sync::OnceLock;

use bytes::Bytes;
use serde_json::{Map, Value, json};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::accounts::Kind;
use super::core::{Claim, ClientId, Target, validate_label};
use super::{ClientContext, Flow};

/// A client's message, parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// `ping` or `latency`.
    Latency,
    /// `setID` or `serviceID` with `passwd`.
    Login {
        /// The account id.
        id: String,
        /// The password.
        password: String,
        /// User or service.
        kind: Kind,
        /// The name to be reached under (a service's `idtag`, else `id`).
        name: String,
    },
    /// `cmd: register_broadcast`.
    Join(String),
    /// `cmd: unregister_broadcast`.
    Leave(String),
    /// `to`: to a user, service or broadcast group.
    To(String, Map<String, Value>),
    /// `toS`: to one session.
    ToSession(ClientId, Map<String, Value>),
}

/// Parses one message; the error is the reply's text.
pub fn parse(text: &str) -> Result<Request, String> {
    let trimmed = text.trim();
    if matches!(trimmed, "ping" | "latency" | "\"ping\"" | "\"latency\"") {
        return Ok(Request::Latency);
    }
    let object: Map<String, Value> =
        serde_json::from_str(text).map_err(|error| format!("malformed message: {error}"))?;
    let string = |key: &str| match object.get(key) {
        Some(Value::String(value)) => Ok(Some(value.clone())),
        None => Ok(None),
        Some(_) => Err(format!("{key:?} must be a string")),
    };
    if let Some(id) = string("setID")? {
        let password = string("passwd")?.ok_or("setID needs \"passwd\"")?;
        return Ok(Request::Login {
            name: id.clone(),
            id,
            password,
            kind: Kind::User,
        });
    }
    if let Some(id) = string("serviceID")? {
        let password = string("passwd")?.ok_or("serviceID needs \"passwd\"")?;
        let name = string("idtag")?.unwrap_or_else(|| id.clone());
        return Ok(Request::Login {
            id,
            password,
            kind: Kind::Service,
            name,
        });
    }
    if let Some(cmd) = string("cmd")? {
        let bid = string("bid")?.ok_or_else(|| format!("{cmd:?} needs \"bid\""))?;
        return match cmd.as_str() {
            "register_broadcast" => Ok(Request::Join(bid)),
            "unregister_broadcast" => Ok(Request::Leave(bid)),
            other => Err(format!(
                "unknown cmd {other:?} (expected register_broadcast or unregister_broadcast)"
            )),
        };
    }
    if let Some(to) = string("to")? {
        return Ok(Request::To(to, object));
    }
    // The original's own example writes "tos"; both spellings are read.
    let session = object.get("toS").or_else(|| object.get("tos"));
    if let Some(session) = session {
        let session = match session {
            Value::Number(number) => number.as_u64(),
            Value::String(text) => text.parse().ok(),
            _ => None,
        }
        .ok_or("\"toS\" must be a session number")?;
        return Ok(Request::ToSession(session, object));
    }
    Err("unknown message (expected setID, serviceID, cmd, to, toS, ping or latency)".to_owned())
}

/// The object delivered for `object` from `from` (session `sid`): `FROM` and `sID` are the broker's.
pub fn stamp(mut object: Map<String, Value>, from: &str, sid: ClientId) -> String {
    object.insert("FROM".to_owned(), Value::String(from.to_owned()));
    object.insert("sID".to_owned(), Value::from(sid));
    Value::Object(object).to_string()
}

/// Queues an error reply `{"error": ...}` for the client.
pub async fn reply_error(context: &ClientContext<'_>, error: &str) {
    context
        .reply_text(json!({ "error": error }).to_string())
        .await;
}

/// The start of a latency ping's payload; the send time follows.
const PROBE_TAG: &[u8; 4] = b"ltcy";

/// The instant latency pings count from, the same for every client.
fn probe_epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// A latency ping's payload: the tag and the microseconds since [`probe_epoch`].
fn latency_probe() -> Bytes {
    let sent = u64::try_from(probe_epoch().elapsed().as_micros()).unwrap_or(u64::MAX);
    let mut payload = Vec::with_capacity(12);
    payload.extend_from_slice(PROBE_TAG);
    payload.extend_from_slice(&sent.to_be_bytes());
    Bytes::from(payload)
}

/// The client's pong to a latency ping: `{"ltcy": "N ms"}`, the round trip
/// since the ping was sent. The session yields only the pong to the last
/// ping sent, so a client cannot forge one; anything else is ignored.
pub async fn on_pong(context: &ClientContext<'_>, payload: &[u8]) {
    let Some(sent) = payload
        .strip_prefix(PROBE_TAG)
        .and_then(|rest| <[u8; 8]>::try_from(rest).ok())
        .map(u64::from_be_bytes)
    else {
        return;
    };
    let now = u64::try_from(probe_epoch().elapsed().as_micros()).unwrap_or(u64::MAX);
    let millis = now.saturating_sub(sent) / 1000;
    context
        .reply_text(json!({ "ltcy": format!("{millis} ms") }).to_string())
        .await;
}

/// Handles one text message of a client.
pub async fn on_text(context: &ClientContext<'_>, text: &str) -> Flow {
    let request = match parse(text) {
        Ok(request) => request,
        Err(error) => {
            reply_error(context, &error).await;
            return Ok(());
        }
    };
    let core = context.core();
    let name = core.name_of(context.client);
    match (request, name) {
        (Request::Latency, _) => context.reply(Message::Ping(latency_probe())).await,
        (
            Request::Login {
                id,
                password,
                kind,
                name,
            },
            _,
        ) => {
            let max_len = core.limits().max_name_len;
            if let Err(error) = validate_label("name", &id, max_len)
                .and_then(|()| validate_label("name", &name, max_len))
            {
                reply_error(context, &error.to_string()).await;
                return Ok(());
            }
            let Some(accounts) = &context.broker.accounts else {
                reply_error(context, "this broker has no account database").await;
                return Ok(());
            };
            match accounts.login(&id, &password, kind).await {
                Ok(()) => match context
                    .broker
                    .claim_name(context.client, &name, Claim::Shared)
                    .await
                {
                    Ok(_) => {
                        context
                            .reply_text(
                                json!({"auth": "ok", "ID": name, "sID": context.client})
                                    .to_string(),
                            )
                            .await;
                    }
                    Err(error) => reply_error(context, &error.to_string()).await,
                },
                Err(error) => {
                    context
                        .reply_text(
                            json!({"auth": "failed", "error": error.to_string()}).to_string(),
                        )
                        .await;
                }
            }
        }
        (_, None) => reply_error(context, "log in first (setID and passwd)").await,
        (Request::Join(group), Some(_)) => {
            match context.broker.join(context.client, &group).await {
                Ok(_) => {
                    context
                        .reply_text(
                            json!({"cmd": "register_broadcast", "bid": group, "ok": true})
                                .to_string(),
                        )
                        .await;
                }
                Err(error) => reply_error(context, &error.to_string()).await,
            }
        }
        (Request::Leave(group), Some(_)) => {
            if context.broker.leave(context.client, &group).await {
                context
                    .reply_text(
                        json!({"cmd": "unregister_broadcast", "bid": group, "ok": true})
                            .to_string(),
                    )
                    .await;
            } else {
                reply_error(context, &format!("not in broadcast group {group:?}")).await;
            }
        }
        (Request::To(to, object), Some(from)) => {
            let delivered = Message::text(stamp(object, &from, context.client));
            if context.send(&[Target::NameOrGroup(&to)], &delivered).await == 0 {
                reply_error(context, &format!("nobody is connected as {to:?}")).await;
            }
        }
        (Request::ToSession(session, object), Some(from)) => {
            let delivered = Message::text(stamp(object, &from, context.client));
            if context.send(&[Target::Client(session)], &delivered).await == 0 {
                reply_error(context, &format!("no session {session}")).await;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_parse_into_requests() -> Result<(), String> {
        assert_eq!(parse("ping")?, Request::Latency);
        assert_eq!(parse("\"latency\"")?, Request::Latency);
        assert_eq!(
            parse(r#"{"setID":"alex","passwd":"pw"}"#)?,
            Request::Login {
                id: "alex".to_owned(),
                password: "pw".to_owned(),
                kind: Kind::User,
                name: "alex".to_owned()
            }
        );
        assert_eq!(
            parse(r#"{"serviceID":"svc","passwd":"pw","idtag":"svc-2"}"#)?,
            Request::Login {
                id: "svc".to_owned(),
                password: "pw".to_owned(),
                kind: Kind::Service,
                name: "svc-2".to_owned()
            }
        );
        assert_eq!(
            parse(r#"{"cmd":"register_broadcast","bid":"room"}"#)?,
            Request::Join("room".to_owned())
        );
        assert!(matches!(parse(r#"{"to":"bob","msg":"hi"}"#)?, Request::To(to, _) if to == "bob"));
        assert!(matches!(
            parse(r#"{"toS":"343","msg":"hi"}"#)?,
            Request::ToSession(343, _)
        ));
        assert!(matches!(
            parse(r#"{"tos":343,"msg":"hi"}"#)?,
            Request::ToSession(343, _)
        ));
        assert!(parse(r#"{"toS":"x"}"#).is_err());
        assert!(parse(r#"{"msg":"hi"}"#).is_err());
        assert!(parse(r#"{"setID":"alex"}"#).is_err());
        Ok(())
    }

    #[test]
    fn from_and_sid_are_the_brokers() -> Result<(), String> {
        let Request::To(_, object) = parse(r#"{"to":"bob","FROM":"root","sID":0,"msg":"hi"}"#)?
        else {
            return Err("not a to".to_owned());
        };
        let stamped: Value =
            serde_json::from_str(&stamp(object, "alex", 7)).map_err(|e| e.to_string())?;
        assert_eq!(
            stamped,
            json!({"to": "bob", "FROM": "alex", "sID": 7, "msg": "hi"})
        );
        Ok(())
    }
}
