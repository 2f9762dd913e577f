//! The `tokens` dialect (websockets_pro): a client holds a token, given in
//! the query (`?RegisterToken=abc1`) or by `RegisterToken:abc1`; a message
//! `receivers|text` goes to every client whose token a receiver matches
//! (`abc1` exactly, `group/` every token starting with it); `Echo:text`
//! comes back to the sender. Plus its form-encoded HTTP management API.
//!
//! Parsing and formatting only; tokens live in the core (as client names,
//! and the operator's registered tokens as the core's registered names).

use std::collections::BTreeMap;

use backend::{OpenMeta, RejectReply};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::core::{Claim, Target, validate_label};
use super::http::{HttpRequest, HttpResponse};
use super::{Broker, ClientContext, Closing, Flow};

/// The token a client without one is listed with (it has no name in the core).
pub const UNREGISTERED: &str = "unregistered";

/// The most receivers one message may list.
pub const MAX_RECEIVERS: usize = 64;

/// The prefix of every error reply.
pub const ERROR_PREFIX: &str = "Error:";

/// A client's message, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    /// `receivers|text`.
    Send {
        /// The receivers, each a token or a prefix ending in `/`.
        receivers: Vec<&'a str>,
        /// What they get.
        text: &'a str,
    },
    /// `RegisterToken:token`.
    Register(&'a str),
    /// `Echo:text`: the whole message comes back.
    Echo,
}

/// Parses one message; the error is the reply's text.
pub fn parse(text: &str) -> Result<Request<'_>, String> {
    if let Some((receivers, body)) = text.split_once('|') {
        let receivers: Vec<&str> = receivers.split(',').collect();
        if receivers.len() > MAX_RECEIVERS {
            return Err(format!("more than {MAX_RECEIVERS} receivers"));
        }
        if receivers.iter().any(|receiver| receiver.is_empty()) {
            return Err("empty receiver in the list".to_owned());
        }
        return Ok(Request::Send {
            receivers,
            text: body,
        });
    }
    if let Some(token) = text.strip_prefix("RegisterToken:") {
        return Ok(Request::Register(token));
    }
    if text.starts_with("Echo:") {
        return Ok(Request::Echo);
    }
    Err(
        "unknown service message (expected receivers|text, RegisterToken:token or Echo:text)"
            .to_owned(),
    )
}

/// Checks a token: a core name without `,`, `|`, a trailing `/`, and not `unregistered`.
pub fn validate_token(token: &str, max_len: usize) -> Result<(), String> {
    validate_label("name", token, max_len).map_err(|error| error.to_string())?;
    if token.contains([',', '|']) {
        return Err("a token may not hold ',' or '|'".to_owned());
    }
    if token.ends_with('/') {
        return Err("a token may not end with '/' (that is a group receiver)".to_owned());
    }
    if token == UNREGISTERED {
        return Err(format!("{UNREGISTERED:?} is not a token"));
    }
    Ok(())
}

/// The target one receiver stands for.
fn receiver_target(receiver: &str) -> Target<'_> {
    if receiver.ends_with('/') {
        Target::NamePrefix(receiver)
    } else {
        Target::Name(receiver)
    }
}

/// Queues an error reply for the client.
pub async fn reply_error(context: &ClientContext<'_>, error: &str) {
    context.reply_text(format!("{ERROR_PREFIX}{error}")).await;
}

/// The query's `RegisterToken`, if any.
fn query_token(query: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == "RegisterToken")
        .map(|(_, value)| value.into_owned())
}

/// Before the handshake completes: without `--allow-unregistered`, a client
/// must bring a registered token in its query, or its handshake gets `403`
/// (a client that passes and then loses the race for its token is still
/// closed with 1008 by [`on_connect`]).
pub fn admit(broker: &Broker, meta: &OpenMeta) -> Result<(), RejectReply> {
    if broker.options.allow_unregistered {
        return Ok(());
    }
    let refuse = |reason: String| RejectReply {
        status: 403,
        reason,
    };
    match query_token(&meta.query) {
        None => Err(refuse(
            "a registered token is required (?RegisterToken=...)".to_owned(),
        )),
        Some(token) if !broker.core.is_registered(&token) => {
            Err(refuse(format!("token {token:?} is not registered")))
        }
        Some(_) => Ok(()),
    }
}

/// Takes the token of the query's `RegisterToken`, if any; without one the
/// client is `unregistered`, which only `--allow-unregistered` permits.
pub async fn on_connect(context: &ClientContext<'_>) -> Flow {
    match query_token(&context.meta.query) {
        Some(token) => register(context, &token)
            .await
            .map_err(|error| Closing::new(CloseCode::Policy, error)),
        None if context.broker.options.allow_unregistered => Ok(()),
        None => Err(Closing::new(
            CloseCode::Policy,
            "a registered token is required (?RegisterToken=...)",
        )),
    }
}

/// Gives the client `token`, if it is valid, registered when it must be, and not held by another.
async fn register(context: &ClientContext<'_>, token: &str) -> Result<(), String> {
    let max_len = context.core().limits().max_name_len;
    validate_token(token, max_len)?;
    if !context.broker.options.allow_unregistered && !context.core().is_registered(token) {
        return Err(format!("token {token:?} is not registered"));
    }
    context
        .broker
        .claim_name(context.client, token, Claim::Exclusive)
        .await
        .map_err(|error| error.to_string())?;
    Ok(())
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
    let registered = context.core().name_of(context.client).is_some();
    match request {
        Request::Register(token) => match register(context, token).await {
            Ok(()) => context.reply_text(format!("RegisteredToken:{token}")).await,
            Err(error) => reply_error(context, &error).await,
        },
        _ if !registered => {
            reply_error(context, "register a token first (RegisterToken:token)").await;
        }
        Request::Echo => context.reply_text(text).await,
        Request::Send { receivers, text } => {
            let targets: Vec<Target<'_>> = receivers.iter().map(|r| receiver_target(r)).collect();
            let n_reached = context.send(&targets, &Message::text(text)).await;
            if n_reached == 0 {
                reply_error(context, "no connected client matches the receivers").await;
            }
        }
    }
    Ok(())
}

/// The form API at the broker's name (POST, `application/x-www-form-urlencoded`):
/// `method=broadcast&message=receivers|text`, `get_clients`,
/// `registerToken`/`unregisterToken` with `message=token`, `registeredTokenList`.
/// The bearer token is checked by the caller ([`super::http::handle`]).
pub async fn http_api(broker: &Broker, request: &HttpRequest) -> HttpResponse {
    if request.method != "POST" {
        return HttpResponse::error(405, "use POST with a form-encoded body");
    }
    if !request.path.is_empty() && request.path != "/" {
        return HttpResponse::error(404, "the tokens API is at the broker's name itself");
    }
    let form: BTreeMap<String, String> = form_urlencoded::parse(&request.body)
        .map(|(key, value)| (key.into_owned(), value.into_owned()))
        .collect();
    let Some(method) = form.get("method") else {
        return HttpResponse::error(400, "missing method");
    };
    let message = form.get("message").map(String::as_str);
    let core = broker.core.as_ref();
    let max_len = core.limits().max_name_len;
    match (method.as_str(), message) {
        ("broadcast", Some(message)) => match parse(message) {
            Ok(Request::Send { receivers, text }) => {
                let targets: Vec<Target<'_>> =
                    receivers.iter().map(|r| receiver_target(r)).collect();
                let n_delivered = broker.deliver(&targets, &Message::text(text)).await;
                HttpResponse::json(200, &json!({"ok": true, "delivered": n_delivered}))
            }
            Ok(_) => HttpResponse::error(400, "broadcast needs message=receivers|text"),
            Err(error) => HttpResponse::error(400, &error),
        },
        ("get_clients", _) => {
            let clients: Vec<_> = core
                .clients()
                .into_iter()
                .map(|client| {
                    json!({
                        "token": client.name.unwrap_or_else(|| UNREGISTERED.to_owned()),
                        "peer": client.peer,
                    })
                })
                .collect();
            HttpResponse::json(200, &json!({"clients": clients}))
        }
        ("registerToken", Some(token)) => match validate_token(token, max_len) {
            Err(error) => HttpResponse::error(400, &error),
            Ok(()) => match core.register(token) {
                Ok(added) => HttpResponse::json(200, &json!({"ok": true, "added": added})),
                Err(error) => HttpResponse::error(409, &error.to_string()),
            },
        },
        ("unregisterToken", Some(token)) => {
            let removed = core.unregister(token);
            HttpResponse::json(200, &json!({"ok": true, "removed": removed}))
        }
        ("registeredTokenList", _) => {
            let tokens: serde_json::Map<String, serde_json::Value> = core
                .registered()
                .into_iter()
                .map(|token| (token, serde_json::Value::Bool(true)))
                .collect();
            HttpResponse::json(200, &serde_json::Value::Object(tokens))
        }
        ("broadcast" | "registerToken" | "unregisterToken", None) => {
            HttpResponse::error(400, &format!("{method} needs a message"))
        }
        _ => HttpResponse::error(400, &format!("unknown method {method:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: Result<Request<'_>, &str>) {
        assert_eq!(parse(text), expected.map_err(str::to_owned), "{text:?}");
    }

    #[test]
    fn messages_parse_into_requests() {
        check(
            "abc1,group/,abc3|Hello",
            Ok(Request::Send {
                receivers: vec!["abc1", "group/", "abc3"],
                text: "Hello",
            }),
        );
        check(
            "abc1|a|b",
            Ok(Request::Send {
                receivers: vec!["abc1"],
                text: "a|b",
            }),
        );
        check("RegisterToken:abc1", Ok(Request::Register("abc1")));
        check("Echo:hi", Ok(Request::Echo));
        check("abc1,,x|hi", Err("empty receiver in the list"));
        check(
            "hello",
            Err(
                "unknown service message (expected receivers|text, RegisterToken:token or Echo:text)",
            ),
        );
    }

    #[test]
    fn tokens_are_checked() {
        assert!(validate_token("group/item1", 128).is_ok());
        for bad in ["", "a,b", "a|b", "group/", "unregistered", "a\nb"] {
            assert!(validate_token(bad, 128).is_err(), "{bad:?}");
        }
        assert!(validate_token(&"x".repeat(129), 128).is_err());
    }

    #[test]
    fn a_receiver_ending_in_a_slash_is_a_prefix() {
        assert_eq!(receiver_target("group/"), Target::NamePrefix("group/"));
        assert_eq!(receiver_target("abc"), Target::Name("abc"));
    }
}
