//! `websocket_broker` through the gateway, relayed, direct and over TLS: each
//! dialect's rules (tokens, channels with an authorizer webhook,
//! wsmsgbroker's acks, Achex's accounts and stamped FROM/sID), the limits,
//! a client that does not read closed with 1008 while the others get
//! every message, and the tokens and channels HTTP APIs reached through the
//! gateway (`--http`) with their bearer token.
//!
//! A client proves it is in the broker by a reply (an echo, its own
//! broadcast, `registered`) before anyone sends to it: in direct mode its
//! session starts a moment after the `101`. Nothing waits for a fixed time.

use std::io::Write;
use std::process::Stdio;

use anyhow::{Context, bail, ensure};
use harness::client::describe;
use harness::{
    Authorizer, AuthorizerReply, Backend, Client, CloseCode, EVENT_DEADLINE, Gateway,
    HandshakeRequest, HttpResponse, Message, Mode, bin_path, both_modes, tls_mode, wait,
};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use serde_json::{Value, json};
use tempfile::TempDir;

both_modes!(
    tokens_http_api_through_the_gateway_needs_the_bearer_token,
    channels_http_broadcast_through_the_gateway_reaches_the_channel,
    tokens_reach_exact_tokens_and_prefix_groups,
    tokens_unregistered_client_may_only_register,
    tokens_without_allow_unregistered_need_a_registered_token_reloaded_on_sighup,
    oversized_message_closes_with_1009,
    channels_broadcast_reaches_every_member_of_the_channel,
    channels_authorizer_allows_denies_and_closes_with_1013,
    wsmsgbroker_first_answer_wins_and_from_is_the_brokers,
    wsmsgbroker_takeover_only_when_asked,
    achex_accounts_sessions_groups_and_stamped_sender,
    client_that_does_not_read_is_closed_with_1008_while_others_get_everything,
);

// The flood of the last test adds little over TLS and costs the most; every
// other test also runs over wss.
tls_mode!(
    tokens_http_api_through_the_gateway_needs_the_bearer_token,
    channels_http_broadcast_through_the_gateway_reaches_the_channel,
    tokens_reach_exact_tokens_and_prefix_groups,
    tokens_unregistered_client_may_only_register,
    tokens_without_allow_unregistered_need_a_registered_token_reloaded_on_sighup,
    oversized_message_closes_with_1009,
    channels_broadcast_reaches_every_member_of_the_channel,
    channels_authorizer_allows_denies_and_closes_with_1013,
    wsmsgbroker_first_answer_wins_and_from_is_the_brokers,
    wsmsgbroker_takeover_only_when_asked,
    achex_accounts_sessions_groups_and_stamped_sender,
);

/// A docroot with `websocket_broker` on `broker` (given `args`) and a gateway on it.
async fn start_broker(mode: Mode, args: &[&str]) -> anyhow::Result<(TempDir, Backend, Gateway)> {
    let docroot = tempfile::tempdir()?;
    start_broker_in(docroot, mode, args).await
}

async fn start_broker_in(
    docroot: TempDir,
    mode: Mode,
    args: &[&str],
) -> anyhow::Result<(TempDir, Backend, Gateway)> {
    let backend = Backend::start("websocket_broker", docroot.path(), "broker", args).await?;
    let gateway = Gateway::start(docroot.path(), mode.gateway_args()).await?;
    Ok((docroot, backend, gateway))
}

/// The bearer token the API tests give `--api-token-file`.
const API_TOKEN: &str = "test-token-0123456789abcdef";

/// A broker with an API token file, and a gateway that forwards plain HTTP for it.
async fn start_broker_with_api(
    mode: Mode,
    dialect: &str,
) -> anyhow::Result<(TempDir, Backend, Gateway)> {
    let docroot = tempfile::tempdir()?;
    let token_file = tempfile::NamedTempFile::new()?;
    std::fs::write(token_file.path(), format!("{API_TOKEN}\n"))?;
    let token_path = token_file.path().to_str().context("a UTF-8 temp path")?;
    let backend = Backend::start(
        "websocket_broker",
        docroot.path(),
        "broker",
        &["--dialect", dialect, "--api-token-file", token_path],
    )
    .await?;
    // The broker has read the file once its socket is there.
    drop(token_file);
    let gateway = Gateway::start(docroot.path(), &mode.with_args(&["--http", "broker"])).await?;
    Ok((docroot, backend, gateway))
}

/// A `POST` of `body` to `path` through the gateway (over TLS in [`Mode::Tls`]),
/// with the bearer token when `bearer` is given.
async fn post(
    gateway: &Gateway,
    mode: Mode,
    path: &str,
    content_type: &str,
    bearer: Option<&str>,
    body: &str,
) -> anyhow::Result<HttpResponse> {
    let authorization = bearer
        .map(|token| format!("Authorization: Bearer {token}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: wsgate.test\r\nConnection: close\r\n\
         Content-Type: {content_type}\r\n{authorization}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    gateway.request_in(mode, request).await
}

/// A WebSocket handshake for `path` that the broker refuses with `403` and `reason`.
async fn expect_refusal(
    gateway: &Gateway,
    mode: Mode,
    path: &str,
    reason: &str,
) -> anyhow::Result<()> {
    let response = gateway
        .handshake_in(mode, &HandshakeRequest::new(path))
        .await?;
    ensure!(response.status == 403, "{path}: {response}");
    ensure!(
        response.body_text().contains(reason),
        "{path}: expected {reason:?} in {response}"
    );
    Ok(())
}

/// The next message, which must be a JSON text.
async fn recv_json(client: &mut Client) -> anyhow::Result<Value> {
    let text = client.recv_text().await?;
    serde_json::from_str(&text).with_context(|| format!("not JSON: {text:?}"))
}

async fn send(client: &mut Client, text: &str) -> anyhow::Result<()> {
    client.send(Message::text(text)).await
}

async fn send_json(client: &mut Client, value: Value) -> anyhow::Result<()> {
    client.send(Message::text(value.to_string())).await
}

async fn expect_json(client: &mut Client, expected: Value) -> anyhow::Result<()> {
    let value = recv_json(client).await?;
    ensure!(value == expected, "expected {expected}, got {value}");
    Ok(())
}

/// A tokens client that proved, by an echo, that its session runs.
async fn tokens_client(gateway: &Gateway, token: Option<&str>) -> anyhow::Result<Client> {
    let path = match token {
        Some(token) => format!("/broker?RegisterToken={token}"),
        None => "/broker".to_owned(),
    };
    let mut client = gateway.connect(&path).await?;
    if token.is_some() {
        send(&mut client, "Echo:ready").await?;
        client.expect_text("Echo:ready").await?;
    }
    Ok(client)
}

async fn tokens_reach_exact_tokens_and_prefix_groups(mode: Mode) -> anyhow::Result<()> {
    let (_docroot, _broker, gateway) = start_broker(mode, &["--dialect", "tokens"]).await?;
    let mut sender = tokens_client(&gateway, Some("abc1")).await?;
    let mut item1 = tokens_client(&gateway, Some("group/item1")).await?;
    let mut item2 = tokens_client(&gateway, None).await?;
    send(&mut item2, "RegisterToken:group/item2").await?;
    item2.expect_text("RegisteredToken:group/item2").await?;
    let mut abc = tokens_client(&gateway, Some("abc")).await?;

    send(&mut sender, "abc1,group/|Hello").await?;
    sender.expect_text("Hello").await?;
    item1.expect_text("Hello").await?;
    item2.expect_text("Hello").await?;
    // `abc` matches only the token `abc`: its first message is the next one.
    send(&mut sender, "abc|second").await?;
    abc.expect_text("second").await?;
    // Nobody matches: an error reply, not a silent drop.
    send(&mut sender, "nobody|x").await?;
    sender
        .expect_text("Error:no connected client matches the receivers")
        .await?;
    // A token held by a live client cannot be claimed by another.
    send(&mut abc, "RegisterToken:abc1").await?;
    abc.expect_text("Error:\"abc1\" is taken by another client")
        .await?;
    send(&mut sender, "abc|third").await?;
    abc.expect_text("third").await?;
    Ok(())
}

async fn tokens_unregistered_client_may_only_register(mode: Mode) -> anyhow::Result<()> {
    let (_docroot, _broker, gateway) = start_broker(mode, &["--dialect", "tokens"]).await?;
    let mut client = tokens_client(&gateway, None).await?;
    send(&mut client, "abc1|x").await?;
    client
        .expect_text("Error:register a token first (RegisterToken:token)")
        .await?;
    send(&mut client, "Echo:x").await?;
    client
        .expect_text("Error:register a token first (RegisterToken:token)")
        .await?;
    send(&mut client, "hello").await?;
    client.expect_text("Error:unknown service message (expected receivers|text, RegisterToken:token or Echo:text)",
    )
    .await?;
    send(&mut client, "RegisterToken:a,b").await?;
    client
        .expect_text("Error:a token may not hold ',' or '|'")
        .await?;
    let long = "t".repeat(129);
    send(&mut client, &format!("RegisterToken:{long}")).await?;
    client
        .expect_text("Error:invalid name: longer than 128 bytes")
        .await?;
    client.send(Message::binary(vec![1, 2, 3])).await?;
    client
        .expect_text("Error:binary messages are not part of this protocol")
        .await?;
    send(&mut client, "RegisterToken:me").await?;
    client.expect_text("RegisteredToken:me").await?;
    send(&mut client, "Echo:now").await?;
    client.expect_text("Echo:now").await?;
    Ok(())
}

async fn tokens_without_allow_unregistered_need_a_registered_token_reloaded_on_sighup(
    mode: Mode,
) -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let (broker, list) =
        Backend::start_token_list_broker(docroot.path(), r#"{"abc1": true, "abc2": false}"#)
            .await?;
    let gateway = Gateway::start(docroot.path(), mode.gateway_args()).await?;
    // Refused in the handshake, with the broker's reason: never a WebSocket.
    expect_refusal(
        &gateway,
        mode,
        "/broker",
        "a registered token is required (?RegisterToken=...)",
    )
    .await?;
    expect_refusal(
        &gateway,
        mode,
        "/broker?RegisterToken=abc2",
        "token \"abc2\" is not registered",
    )
    .await?;
    let mut known = tokens_client(&gateway, Some("abc1")).await?;
    send(&mut known, "RegisterToken:zzz").await?;
    known
        .expect_text("Error:token \"zzz\" is not registered")
        .await?;

    std::fs::write(&list, r#"{"zzz": true, "yyy": true}"#)?;
    let pid = Pid::from_raw(i32::try_from(broker.pid())?);
    signal::kill(pid, Signal::SIGHUP)?;
    wait::until("the reload in the log", EVENT_DEADLINE, || async {
        Ok(broker
            .stderr_text()
            .contains("registered tokens reloaded")
            .then_some(()))
    })
    .await?;
    send(&mut known, "RegisterToken:zzz").await?;
    known.expect_text("RegisteredToken:zzz").await?;
    // abc1 left the list: a new client cannot bring it any more.
    expect_refusal(
        &gateway,
        mode,
        "/broker?RegisterToken=abc1",
        "token \"abc1\" is not registered",
    )
    .await?;
    // A list that does not load keeps the one in use.
    std::fs::write(&list, "not json")?;
    signal::kill(pid, Signal::SIGHUP)?;
    wait::until("the failed reload in the log", EVENT_DEADLINE, || async {
        Ok(broker
            .stderr_text()
            .contains("token list not reloaded; keeping the old one")
            .then_some(()))
    })
    .await?;
    tokens_client(&gateway, Some("yyy")).await?;
    Ok(())
}

async fn oversized_message_closes_with_1009(mode: Mode) -> anyhow::Result<()> {
    let (_docroot, _broker, gateway) =
        start_broker(mode, &["--dialect", "tokens", "--max-message", "1000"]).await?;
    let mut client = tokens_client(&gateway, Some("abc1")).await?;
    send(&mut client, &format!("abc1|{}", "x".repeat(995))).await?;
    client.expect_text(&"x".repeat(995)).await?;
    // The broker's limit travels in ACCEPT: the gateway (relayed) or the
    // library (direct) closes the client before the broker reads the message.
    send(&mut client, &format!("abc1|{}", "x".repeat(996))).await?;
    client
        .expect_close_with(CloseCode::Size, "message too big")
        .await?;
    Ok(())
}

fn channel_command(command: &str, channel: &str, content: Option<Value>) -> Value {
    match content {
        Some(content) => {
            json!({"command": command, "args": {"channel": channel, "content": content}})
        }
        None => json!({"command": command, "args": {"channel": channel}}),
    }
}

/// Joins `channel` and waits until the client's own broadcast there comes back.
async fn join_channel(client: &mut Client, channel: &str) -> anyhow::Result<()> {
    send_json(client, channel_command("join", channel, None)).await?;
    send_json(
        client,
        channel_command("broadcast", channel, Some(json!("joined"))),
    )
    .await?;
    expect_json(client, json!("joined")).await
}

const FORM: &str = "application/x-www-form-urlencoded";

async fn tokens_http_api_through_the_gateway_needs_the_bearer_token(
    mode: Mode,
) -> anyhow::Result<()> {
    let (_docroot, _broker, gateway) = start_broker_with_api(mode, "tokens").await?;
    let mut abc1 = tokens_client(&gateway, Some("abc1")).await?;
    let mut item = tokens_client(&gateway, Some("group/item1")).await?;
    let broadcast = "method=broadcast&message=abc1%2Cgroup%2F%7Cfrom+the+API";

    let anonymous = post(&gateway, mode, "/broker", FORM, None, broadcast).await?;
    ensure!(anonymous.status == 401, "{anonymous}");
    let wrong = post(
        &gateway,
        mode,
        "/broker",
        FORM,
        Some("x".repeat(20).as_str()),
        broadcast,
    )
    .await?;
    ensure!(wrong.status == 401, "{wrong}");

    let sent = post(&gateway, mode, "/broker", FORM, Some(API_TOKEN), broadcast).await?;
    ensure!(sent.status == 200, "{sent}");
    let answer: Value = serde_json::from_slice(&sent.body)?;
    ensure!(answer == json!({"ok": true, "delivered": 2}), "{answer}");
    abc1.expect_text("from the API").await?;
    item.expect_text("from the API").await?;

    let listed = post(
        &gateway,
        mode,
        "/broker",
        FORM,
        Some(API_TOKEN),
        "method=get_clients",
    )
    .await?;
    ensure!(listed.status == 200, "{listed}");
    let listed: Value = serde_json::from_slice(&listed.body)?;
    let mut tokens: Vec<&str> = listed["clients"]
        .as_array()
        .context("clients")?
        .iter()
        .filter_map(|client| client["token"].as_str())
        .collect();
    tokens.sort_unstable();
    ensure!(tokens == ["abc1", "group/item1"], "{listed}");

    let unknown = post(
        &gateway,
        mode,
        "/broker",
        FORM,
        Some(API_TOKEN),
        "method=shout",
    )
    .await?;
    ensure!(unknown.status == 400, "{unknown}");
    Ok(())
}

async fn channels_http_broadcast_through_the_gateway_reaches_the_channel(
    mode: Mode,
) -> anyhow::Result<()> {
    let (_docroot, _broker, gateway) = start_broker_with_api(mode, "channels").await?;
    let mut member = gateway.connect("/broker").await?;
    join_channel(&mut member, "news").await?;
    let body = json!({"channel": "news", "content": {"headline": "hello"}}).to_string();

    let anonymous = post(
        &gateway,
        mode,
        "/broker/broadcast",
        "application/json",
        None,
        &body,
    )
    .await?;
    ensure!(anonymous.status == 401, "{anonymous}");
    let published = post(
        &gateway,
        mode,
        "/broker/broadcast",
        "application/json",
        Some(API_TOKEN),
        &body,
    )
    .await?;
    ensure!(published.status == 201, "{published}");
    expect_json(&mut member, json!({"headline": "hello"})).await?;

    let elsewhere = post(
        &gateway,
        mode,
        "/broker/other",
        "application/json",
        Some(API_TOKEN),
        &body,
    )
    .await?;
    ensure!(elsewhere.status == 404, "{elsewhere}");
    Ok(())
}

async fn channels_broadcast_reaches_every_member_of_the_channel(mode: Mode) -> anyhow::Result<()> {
    let (_docroot, _broker, gateway) = start_broker(mode, &["--dialect", "channels"]).await?;
    let mut one = gateway.connect("/broker").await?;
    let mut two = gateway.connect("/broker").await?;
    let mut other = gateway.connect("/broker").await?;
    join_channel(&mut one, "hello").await?;
    join_channel(&mut two, "hello").await?;
    // A member gets every broadcast of its channel, the others' joins included.
    expect_json(&mut one, json!("joined")).await?;
    join_channel(&mut other, "elsewhere").await?;

    let content = json!({"text": "hi", "n": [1, 2]});
    send_json(
        &mut one,
        channel_command("broadcast", "hello", Some(content.clone())),
    )
    .await?;
    expect_json(&mut one, content.clone()).await?;
    expect_json(&mut two, content).await?;
    // `other` is not in `hello`: its next message is from its own channel.
    send_json(
        &mut two,
        channel_command("broadcast", "elsewhere", Some(json!(1))),
    )
    .await?;
    expect_json(&mut other, json!(1)).await?;
    // After leaving, `two` gets nothing more from `hello`.
    send_json(&mut two, channel_command("leave", "hello", None)).await?;
    send_json(&mut two, channel_command("leave", "hello", None)).await?;
    expect_json(&mut two, json!({"error": "not in channel \"hello\""})).await?;
    send_json(
        &mut one,
        channel_command("broadcast", "hello", Some(json!("after"))),
    )
    .await?;
    expect_json(&mut one, json!("after")).await?;
    // Malformed messages get error replies.
    for (message, error) in [
        (
            "{\"command\":\"shout\",\"args\":{\"channel\":\"c\"}}",
            "unknown command \"shout\" (expected join, leave or broadcast)",
        ),
        (
            "{\"command\":\"broadcast\",\"args\":{\"channel\":\"c\"}}",
            "broadcast needs args.content",
        ),
        (
            "{\"command\":\"join\",\"args\":{\"channel\":\"\"}}",
            "invalid group: it is empty",
        ),
    ] {
        send(&mut one, message).await?;
        expect_json(&mut one, json!({ "error": error })).await?;
    }
    send(&mut one, "not json").await?;
    let reply = recv_json(&mut one).await?;
    ensure!(
        reply["error"]
            .as_str()
            .is_some_and(|error| error.starts_with("malformed message")),
        "unexpected reply {reply}"
    );
    Ok(())
}

/// A webhook on loopback: a message holding `deny` gets 403, `down` 503, anything else 200.
async fn start_authorizer() -> anyhow::Result<Authorizer> {
    Authorizer::start(|question| {
        let text = question.to_string();
        if text.contains("deny") {
            AuthorizerReply::Answer(403, String::new())
        } else if text.contains("down") {
            AuthorizerReply::Answer(503, String::new())
        } else {
            AuthorizerReply::ok()
        }
    })
    .await
}

async fn channels_authorizer_allows_denies_and_closes_with_1013(mode: Mode) -> anyhow::Result<()> {
    let mut authorizer = start_authorizer().await?;
    let url = authorizer.url();
    let (_docroot, _broker, gateway) =
        start_broker(mode, &["--dialect", "channels", "--authorizer", &url]).await?;
    let mut client = gateway.connect("/broker").await?;
    join_channel(&mut client, "room").await?;
    let denied = channel_command("broadcast", "room", Some(json!("deny this")));
    send_json(&mut client, denied.clone()).await?;
    expect_json(
        &mut client,
        json!({"error": "not authorized (authorizer answered 403)"}),
    )
    .await?;
    // The join and the `joined` broadcast were asked about first; then the denied message, alone.
    for _ in 0..2 {
        authorizer.next_question().await?;
    }
    let (question, headers) = authorizer.next_question_and_headers().await?;
    ensure!(question == denied, "the authorizer got {question}");
    let peer = headers
        .get("x-wsgate-peer")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    ensure!(peer.starts_with("127.0.0.1:"), "peer header {peer:?}");
    ensure!(
        authorizer.try_question().is_none(),
        "the authorizer saw more than 3 requests"
    );
    send_json(
        &mut client,
        channel_command("broadcast", "room", Some(json!("down"))),
    )
    .await?;
    let frame = client.expect_close().await?.context("a close code")?;
    ensure!(
        frame.code == CloseCode::Again
            && frame.reason.as_str()
                == "authorizer unavailable (authorizer answered 503); reconnect later",
        "closed with {} {:?}",
        frame.code,
        frame.reason.as_str()
    );
    Ok(())
}

async fn wsmsgbroker_client(gateway: &Gateway, id: &str) -> anyhow::Result<Client> {
    let mut client = gateway.connect("/broker").await?;
    send_json(&mut client, json!({"action": "register", "id": id})).await?;
    expect_json(&mut client, json!({"action": "registered", "id": id})).await?;
    Ok(client)
}

async fn wsmsgbroker_first_answer_wins_and_from_is_the_brokers(mode: Mode) -> anyhow::Result<()> {
    let (_docroot, _broker, gateway) = start_broker(mode, &["--dialect", "wsmsgbroker"]).await?;
    let mut asker = wsmsgbroker_client(&gateway, "client0").await?;
    let mut one = wsmsgbroker_client(&gateway, "client1").await?;
    let mut two = wsmsgbroker_client(&gateway, "client2").await?;
    // As the npm client writes them, `from` included on an answer.
    send_json(
        &mut asker,
        json!({"action": "send", "message": "Hi there", "dest": ["client1", "client2"], "ack": "uuid-1", "from": "forged"}),
    )
    .await?;
    let delivered =
        json!({"action": "message", "message": "Hi there", "from": "client0", "ack": "uuid-1"});
    expect_json(&mut one, delivered.clone()).await?;
    expect_json(&mut two, delivered).await?;
    send_json(
        &mut two,
        json!({"action": "answer", "ack": "uuid-1", "message": "from two", "from": "client1"}),
    )
    .await?;
    // Once `two` has its reply to the next message, its answer was handled.
    send_json(
        &mut two,
        json!({"action": "answer", "ack": "never", "message": 1}),
    )
    .await?;
    expect_json(
        &mut two,
        json!({"action": "error", "message": "no message with ack \"never\" awaits your answer"}),
    )
    .await?;
    send_json(
        &mut one,
        json!({"action": "answer", "ack": "uuid-1", "message": "from one", "from": "client1"}),
    )
    .await?;
    // `one`'s late answer is dropped; its next send is what the asker gets next.
    send_json(
        &mut one,
        json!({"action": "send", "message": {"complex": "thing"}, "dest": "client0"}),
    )
    .await?;
    expect_json(
        &mut asker,
        json!({"action": "answer", "ack": "uuid-1", "message": "from two", "from": "client2"}),
    )
    .await?;
    expect_json(
        &mut asker,
        json!({"action": "message", "message": {"complex": "thing"}, "from": "client1"}),
    )
    .await?;
    // Errors are replies.
    send_json(&mut two, json!({"action": "register", "id": "client0"})).await?;
    expect_json(
        &mut two,
        json!({"action": "error", "message": "\"client0\" is taken by another client"}),
    )
    .await?;
    send_json(
        &mut two,
        json!({"action": "send", "message": 1, "dest": ["client0", "ghost"]}),
    )
    .await?;
    expect_json(
        &mut asker,
        json!({"action": "message", "message": 1, "from": "client2"}),
    )
    .await?;
    expect_json(
        &mut two,
        json!({"action": "error", "message": "not registered: ghost"}),
    )
    .await?;
    send_json(&mut two, json!({"action": "unregister", "id": "client2"})).await?;
    expect_json(&mut two, json!({"action": "unregistered", "id": "client2"})).await?;
    send_json(
        &mut two,
        json!({"action": "send", "message": 1, "dest": "client0"}),
    )
    .await?;
    expect_json(
        &mut two,
        json!({"action": "error", "message": "register before sending"}),
    )
    .await?;
    Ok(())
}

async fn wsmsgbroker_takeover_only_when_asked(mode: Mode) -> anyhow::Result<()> {
    let (_docroot, _broker, gateway) =
        start_broker(mode, &["--dialect", "wsmsgbroker", "--takeover"]).await?;
    let mut first = wsmsgbroker_client(&gateway, "same").await?;
    let mut second = wsmsgbroker_client(&gateway, "same").await?;
    expect_json(&mut first, json!({"action": "unregistered", "id": "same"})).await?;
    let mut third = wsmsgbroker_client(&gateway, "third").await?;
    send_json(
        &mut third,
        json!({"action": "send", "message": "x", "dest": "same"}),
    )
    .await?;
    expect_json(
        &mut second,
        json!({"action": "message", "message": "x", "from": "third"}),
    )
    .await?;
    Ok(())
}

/// Logs an Achex client in as `id`; returns it with its session id.
async fn achex_login(gateway: &Gateway, id: &str, password: &str) -> anyhow::Result<(Client, u64)> {
    let mut client = gateway.connect("/broker").await?;
    send_json(&mut client, json!({"setID": id, "passwd": password})).await?;
    let reply = recv_json(&mut client).await?;
    ensure!(
        reply["auth"] == "ok" && reply["ID"] == id,
        "login reply {reply}"
    );
    let sid = reply["sID"].as_u64().context("a numeric sID")?;
    Ok((client, sid))
}

async fn achex_accounts_sessions_groups_and_stamped_sender(mode: Mode) -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let accounts = docroot.path().join("achex.db");
    let accounts_arg = accounts.to_str().context("temp path is UTF-8")?.to_owned();
    // The operator creates a service; its password comes on standard input.
    let mut add = std::process::Command::new(bin_path("websocket_broker")?)
        .args([
            "--dialect",
            "achex",
            "-C",
            &accounts_arg,
            "--add-service",
            "svc",
        ])
        .stdin(Stdio::piped())
        .spawn()?;
    add.stdin
        .take()
        .context("stdin")?
        .write_all(b"service-pw\n")?;
    ensure!(add.wait()?.success(), "--add-service failed");
    let (_docroot, _broker, gateway) =
        start_broker_in(docroot, mode, &["--dialect", "achex", "-C", &accounts_arg]).await?;

    let mut stranger = gateway.connect("/broker").await?;
    send_json(&mut stranger, json!({"to": "alex", "msg": "hi"})).await?;
    expect_json(
        &mut stranger,
        json!({"error": "log in first (setID and passwd)"}),
    )
    .await?;
    // The latency is a measured round trip: a ping, whose pong (tungstenite
    // sends it by itself) is answered. A pong the broker did not ask for is
    // not: had this forged one (sent at the epoch) been taken, its `ltcy`
    // would arrive before the ping.
    let mut forged = b"ltcy".to_vec();
    forged.extend_from_slice(&0u64.to_be_bytes());
    stranger.send(Message::Pong(forged.into())).await?;
    send(&mut stranger, "ping").await?;
    match stranger.recv_any().await? {
        Message::Ping(payload) => ensure!(
            payload.len() == 12 && payload.starts_with(b"ltcy"),
            "latency ping payload {payload:?}"
        ),
        other => bail!("expected the latency ping, got {}", describe(&other)),
    }
    let latency = recv_json(&mut stranger).await?;
    ensure!(
        latency["ltcy"].as_str().is_some_and(|text| text
            .strip_suffix(" ms")
            .is_some_and(|millis| millis.parse::<u64>().is_ok())),
        "latency reply {latency}"
    );

    let (mut alex1, alex1_sid) = achex_login(&gateway, "alex", "pw-alex").await?;
    let (mut alex2, _) = achex_login(&gateway, "alex", "pw-alex").await?;
    let (mut bob, bob_sid) = achex_login(&gateway, "bob", "pw-bob").await?;
    // The id belongs to its first password.
    send_json(&mut stranger, json!({"setID": "alex", "passwd": "guess"})).await?;
    expect_json(
        &mut stranger,
        json!({"auth": "failed", "error": "wrong id or password"}),
    )
    .await?;

    // `to` reaches every session of the user; FROM and sID are the broker's.
    send_json(
        &mut bob,
        json!({"to": "alex", "msg": "hello", "FROM": "root", "sID": 0}),
    )
    .await?;
    let stamped = json!({"to": "alex", "msg": "hello", "FROM": "bob", "sID": bob_sid});
    expect_json(&mut alex1, stamped.clone()).await?;
    expect_json(&mut alex2, stamped).await?;
    // `toS` reaches one session.
    send_json(
        &mut bob,
        json!({"toS": alex1_sid.to_string(), "msg": "only you"}),
    )
    .await?;
    expect_json(
        &mut alex1,
        json!({"toS": alex1_sid.to_string(), "msg": "only you", "FROM": "bob", "sID": bob_sid}),
    )
    .await?;
    send_json(&mut bob, json!({"to": "nobody", "msg": "x"})).await?;
    expect_json(
        &mut bob,
        json!({"error": "nobody is connected as \"nobody\""}),
    )
    .await?;

    // A broadcast group: `to` with its name reaches its members.
    send_json(
        &mut alex2,
        json!({"cmd": "register_broadcast", "bid": "news"}),
    )
    .await?;
    expect_json(
        &mut alex2,
        json!({"cmd": "register_broadcast", "bid": "news", "ok": true}),
    )
    .await?;
    send_json(&mut bob, json!({"to": "news", "headline": "x"})).await?;
    expect_json(
        &mut alex2,
        json!({"to": "news", "headline": "x", "FROM": "bob", "sID": bob_sid}),
    )
    .await?;

    // A service logs in under its idtag, and only with the operator's password.
    let mut service = gateway.connect("/broker").await?;
    send_json(&mut service, json!({"serviceID": "svc", "passwd": "wrong"})).await?;
    expect_json(
        &mut service,
        json!({"auth": "failed", "error": "wrong id or password"}),
    )
    .await?;
    send_json(
        &mut service,
        json!({"serviceID": "svc", "passwd": "service-pw", "idtag": "svc-1"}),
    )
    .await?;
    let reply = recv_json(&mut service).await?;
    ensure!(
        reply["auth"] == "ok" && reply["ID"] == "svc-1",
        "service login {reply}"
    );
    send_json(&mut bob, json!({"to": "svc-1", "job": 7})).await?;
    expect_json(
        &mut service,
        json!({"to": "svc-1", "job": 7, "FROM": "bob", "sID": bob_sid}),
    )
    .await?;
    Ok(())
}

async fn client_that_does_not_read_is_closed_with_1008_while_others_get_everything(
    mode: Mode,
) -> anyhow::Result<()> {
    // The stalled client's outbox holds 64 KiB, but the socket buffers in
    // front of it (the link, the gateway, TCP) hold a few MiB: 30 MiB fill them all.
    const N_MESSAGES: usize = 500;
    let (_docroot, _broker, gateway) = start_broker(
        mode,
        &[
            "--dialect",
            "channels",
            "--queue",
            "16",
            "--queue-bytes",
            "65536",
            "--stall-timeout",
            "1",
            "--max-message",
            "100000",
        ],
    )
    .await?;
    let mut sender = gateway.connect("/broker").await?;
    let mut reader = gateway.connect("/broker").await?;
    let mut stalled = gateway.connect("/broker").await?;
    // The stalled client joins first: the reader's join is the first thing it leaves unread.
    join_channel(&mut stalled, "flood").await?;
    join_channel(&mut reader, "flood").await?;
    join_channel(&mut sender, "other").await?;
    let payload = "p".repeat(60 * 1024);
    let send_all = async {
        for message_idx in 0..N_MESSAGES {
            let content = json!(format!("{message_idx} {payload}"));
            send_json(
                &mut sender,
                channel_command("broadcast", "flood", Some(content)),
            )
            .await?;
        }
        anyhow::Ok(())
    };
    let read_all = async {
        for message_idx in 0..N_MESSAGES {
            let text = recv_json(&mut reader).await?;
            let expected = format!("{message_idx} {payload}");
            ensure!(
                text == json!(expected),
                "message {message_idx} out of order or lost"
            );
        }
        anyhow::Ok(())
    };
    tokio::try_join!(send_all, read_all)?;
    // The stalled client gets what its socket already held, then 1008.
    loop {
        match stalled.recv().await? {
            Message::Text(_) => continue,
            Message::Close(Some(frame)) => {
                ensure!(
                    frame.code == CloseCode::Policy
                        && frame.reason.as_str() == "too slow: message queue full",
                    "closed with {} {:?}",
                    frame.code,
                    frame.reason.as_str()
                );
                break;
            }
            other => bail!("unexpected {}", describe(&other)),
        }
    }
    Ok(())
}
