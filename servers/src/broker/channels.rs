//! The `channels` dialect (wsify): JSON commands
//! `{"command": "join"|"leave"|"broadcast", "args": {"channel": ..., "content": ...}}`.
//! A broadcast sends the JSON of its `content` to every member of the
//! channel, the sender too if it is one. With `--authorizer URL` every
//! message is first POSTed to the webhook (`super::authorizer`). Plus
//! `POST /<name>/broadcast` for servers.
//!
//! Parsing and formatting only; channels are the core's groups.

use serde::Deserialize;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::authorizer::Verdict;
use super::core::{Target, validate_label};
use super::http::{HttpRequest, HttpResponse};
use super::{Broker, ClientContext, Closing, Flow};

/// A client's message, as wsify defines it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Command {
    /// `join`, `leave` or `broadcast`.
    pub command: String,
    /// The command's arguments.
    #[serde(default)]
    pub args: Args,
}

/// The arguments of a [`Command`].
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Args {
    /// The channel.
    pub channel: Option<String>,
    /// What a broadcast carries (any JSON).
    pub content: Option<Value>,
}

/// The body of `POST /<name>/broadcast`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Publish {
    /// The channel.
    pub channel: String,
    /// What its members get (any JSON).
    pub content: Value,
}

/// What a command asks for, checked.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Join the channel.
    Join(String),
    /// Leave the channel.
    Leave(String),
    /// Send the content's JSON to the channel's members.
    Broadcast {
        /// The channel.
        channel: String,
        /// The text they get.
        content: String,
    },
}

/// Parses and checks one message; the error is the reply's text.
pub fn parse(text: &str, max_channel_len: usize) -> Result<Request, String> {
    let command: Command =
        serde_json::from_str(text).map_err(|error| format!("malformed message: {error}"))?;
    let channel = command
        .args
        .channel
        .ok_or_else(|| format!("{:?} needs args.channel", command.command))?;
    validate_label("group", &channel, max_channel_len).map_err(|error| error.to_string())?;
    match command.command.as_str() {
        "join" => Ok(Request::Join(channel)),
        "leave" => Ok(Request::Leave(channel)),
        "broadcast" => {
            let content = command.args.content.ok_or("broadcast needs args.content")?;
            Ok(Request::Broadcast {
                channel,
                content: content.to_string(),
            })
        }
        other => Err(format!(
            "unknown command {other:?} (expected join, leave or broadcast)"
        )),
    }
}

/// Queues an error reply `{"error": ...}` for the client.
pub async fn reply_error(context: &ClientContext<'_>, error: &str) {
    context
        .reply_text(json!({ "error": error }).to_string())
        .await;
}

/// Handles one text message of a client.
pub async fn on_text(context: &ClientContext<'_>, text: &str) -> Flow {
    let request = match parse(text, context.core().limits().max_group_len) {
        Ok(request) => request,
        Err(error) => {
            reply_error(context, &error).await;
            return Ok(());
        }
    };
    if let Some(authorizer) = &context.broker.authorizer {
        match authorizer.check(text, context.meta).await {
            Verdict::Allowed => {}
            Verdict::Denied(status) => {
                reply_error(
                    context,
                    &format!("not authorized (authorizer answered {status})"),
                )
                .await;
                return Ok(());
            }
            Verdict::Unavailable(why) => {
                return Err(Closing::new(
                    CloseCode::Again,
                    format!("authorizer unavailable ({why}); reconnect later"),
                ));
            }
        }
    }
    match request {
        Request::Join(channel) => {
            if let Err(error) = context.broker.join(context.client, &channel).await {
                reply_error(context, &error.to_string()).await;
            }
        }
        Request::Leave(channel) => {
            if !context.broker.leave(context.client, &channel).await {
                reply_error(context, &format!("not in channel {channel:?}")).await;
            }
        }
        Request::Broadcast { channel, content } => {
            context
                .send(&[Target::Group(&channel)], &Message::text(content))
                .await;
        }
    }
    Ok(())
}

/// `POST /<name>/broadcast` with `{"channel": ..., "content": ...}`: `201`
/// as wsify answers, with `{"delivered": N}`. The bearer token is checked by
/// the caller ([`super::http::handle`]).
pub async fn http_api(broker: &Broker, request: &HttpRequest) -> HttpResponse {
    if request.path != "/broadcast" {
        return HttpResponse::error(404, "the channels API is POST /<name>/broadcast");
    }
    if request.method != "POST" {
        return HttpResponse::error(405, "use POST");
    }
    let is_json = request
        .headers
        .get("content-type")
        .and_then(|value| value.split(';').next())
        .is_some_and(|value| value.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return HttpResponse::error(415, "the body must be application/json");
    }
    let publish: Publish = match serde_json::from_slice(&request.body) {
        Ok(publish) => publish,
        Err(error) => return HttpResponse::error(400, &format!("malformed body: {error}")),
    };
    let core = broker.core.as_ref();
    if let Err(error) = validate_label("group", &publish.channel, core.limits().max_group_len) {
        return HttpResponse::error(400, &error.to_string());
    }
    let message = Message::text(publish.content.to_string());
    let n_delivered = broker
        .deliver(&[Target::Group(&publish.channel)], &message)
        .await;
    HttpResponse::json(201, &json!({ "delivered": n_delivered }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: Result<Request, &str>) {
        let parsed = parse(text, 16).map_err(|error| {
            // Only the start of serde's message is stable enough to compare.
            error.split(':').next().unwrap_or_default().to_owned()
        });
        assert_eq!(parsed, expected.map_err(str::to_owned), "{text:?}");
    }

    #[test]
    fn commands_parse_and_bad_ones_say_why() {
        check(
            r#"{"command":"join","args":{"channel":"hello"}}"#,
            Ok(Request::Join("hello".to_owned())),
        );
        check(
            r#"{"command":"leave","args":{"channel":"hello"}}"#,
            Ok(Request::Leave("hello".to_owned())),
        );
        check(
            r#"{"command":"broadcast","args":{"channel":"hello","content":{"a":[1,"x"]}}}"#,
            Ok(Request::Broadcast {
                channel: "hello".to_owned(),
                content: r#"{"a":[1,"x"]}"#.to_owned(),
            }),
        );
        check("not json", Err("malformed message"));
        check(r#"{"command":"join"}"#, Err(r#""join" needs args.channel"#));
        check(
            r#"{"command":"broadcast","args":{"channel":"c"}}"#,
            Err("broadcast needs args.content"),
        );
        check(
            r#"{"command":"shout","args":{"channel":"c"}}"#,
            Err(r#"unknown command "shout" (expected join, leave or broadcast)"#),
        );
        check(
            r#"{"command":"join","args":{"channel":"a-channel-name-too-long"}}"#,
            Err("invalid group"),
        );
    }
}
