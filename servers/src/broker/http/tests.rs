//! Unit tests of the broker's HTTP APIs: the bearer check, the tokens form
//! API and channels' `POST /broadcast`, on a core with live clients.

use std::sync::Arc;

use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use super::*;
use crate::broker::core::{Claim, Connected, CoreError, CoreLimits, LocalCore};
use crate::broker::{BrokerOptions, Dialect};

const TOKEN: &str = "0123456789abcdef-secret";

fn broker(dialect: Dialect) -> Broker {
    Broker {
        core: Arc::new(LocalCore::new(CoreLimits::default())),
        backplane: std::sync::OnceLock::new(),
        options: BrokerOptions {
            dialect,
            ..BrokerOptions::default()
        },
        authorizer: None,
        accounts: None,
        api_token: Some(ApiToken::parse(TOKEN, "test").expect("the test token is long enough")),
    }
}

fn request(method: &str, path: &str, content_type: &str, body: &str) -> HttpRequest {
    HttpRequest {
        method: method.to_owned(),
        path: path.to_owned(),
        query: String::new(),
        headers: [
            ("authorization".to_owned(), format!("Bearer {TOKEN}")),
            ("content-type".to_owned(), content_type.to_owned()),
        ]
        .into(),
        body: body.as_bytes().to_vec(),
    }
}

fn form(body: &str) -> HttpRequest {
    request("POST", "", "application/x-www-form-urlencoded", body)
}

fn json_body(response: &HttpResponse) -> Value {
    serde_json::from_slice(&response.body).unwrap_or(Value::Null)
}

fn texts(connected: &Connected) -> Vec<Message> {
    connected.outbox.take_all()
}

#[test]
fn bearer_token_is_required_and_compared() {
    let token = ApiToken::parse(TOKEN, "test").ok();
    let mut anonymous = form("method=get_clients");
    anonymous.headers.remove("authorization");
    let check = |request: &HttpRequest, token: Option<&ApiToken>| {
        check_bearer(request, token)
            .err()
            .map(|response| response.status)
    };
    assert_eq!(check(&form("method=get_clients"), token.as_ref()), None);
    assert_eq!(check(&anonymous, token.as_ref()), Some(401));
    let mut wrong = form("method=get_clients");
    wrong.headers.insert(
        "authorization".to_owned(),
        "Bearer 0123456789abcdef-secreT".to_owned(),
    );
    assert_eq!(check(&wrong, token.as_ref()), Some(401));
    let mut basic = form("method=get_clients");
    basic
        .headers
        .insert("authorization".to_owned(), format!("Basic {TOKEN}"));
    assert_eq!(check(&basic, token.as_ref()), Some(401));
    let mut lower = form("method=get_clients");
    lower
        .headers
        .insert("authorization".to_owned(), format!("bearer {TOKEN}"));
    assert_eq!(check(&lower, token.as_ref()), None);
    // Without a configured token the API is off.
    assert_eq!(check(&form("method=get_clients"), None), Some(403));
    assert!(ApiToken::parse("short", "test").is_err());
    assert!(ApiToken::parse("0123456789 abcdefgh", "test").is_err());
}

#[tokio::test]
async fn tokens_form_api_broadcasts_lists_and_registers() -> Result<(), CoreError> {
    let broker = broker(Dialect::Tokens);
    let core = broker.core.as_ref();
    let a = core.connect("127.0.0.1:1");
    let b = core.connect("127.0.0.1:2");
    let c = core.connect("127.0.0.1:3");
    core.claim_name(a.id, "abc1", Claim::Exclusive)?;
    core.claim_name(b.id, "group/item1", Claim::Exclusive)?;

    let response = handle(
        &broker,
        &form("method=broadcast&message=abc1%2Cgroup%2F%7Chello"),
    )
    .await;
    assert_eq!(
        (response.status, json_body(&response)),
        (200, json!({"ok": true, "delivered": 2}))
    );
    assert_eq!(texts(&a), [Message::text("hello")]);
    assert_eq!(texts(&b), [Message::text("hello")]);
    assert!(texts(&c).is_empty());

    let response = handle(&broker, &form("method=get_clients")).await;
    assert_eq!(
        json_body(&response),
        json!({"clients": [
            {"token": "abc1", "peer": "127.0.0.1:1"},
            {"token": "group/item1", "peer": "127.0.0.1:2"},
            {"token": "unregistered", "peer": "127.0.0.1:3"},
        ]})
    );

    let response = handle(&broker, &form("method=registerToken&message=tok")).await;
    assert_eq!(json_body(&response), json!({"ok": true, "added": true}));
    let response = handle(&broker, &form("method=registeredTokenList")).await;
    assert_eq!(json_body(&response), json!({"tok": true}));
    let response = handle(&broker, &form("method=unregisterToken&message=tok")).await;
    assert_eq!(json_body(&response), json!({"ok": true, "removed": true}));
    let response = handle(&broker, &form("method=registeredTokenList")).await;
    assert_eq!(json_body(&response), json!({}));

    for (body, status) in [
        ("method=registerToken&message=a%7Cb", 400),
        ("method=registerToken", 400),
        ("method=broadcast&message=nopipe", 400),
        ("method=launch", 400),
        ("message=x", 400),
    ] {
        assert_eq!(handle(&broker, &form(body)).await.status, status, "{body}");
    }
    assert_eq!(
        handle(&broker, &request("GET", "", "", "")).await.status,
        405
    );
    let mut anonymous = form("method=get_clients");
    anonymous.headers.remove("authorization");
    assert_eq!(handle(&broker, &anonymous).await.status, 401);
    let huge = format!("method=broadcast&message=abc1%7C{}", "x".repeat(80 * 1024));
    assert_eq!(handle(&broker, &form(&huge)).await.status, 413);
    Ok(())
}

#[tokio::test]
async fn channels_broadcast_api_publishes_content_as_json() -> Result<(), CoreError> {
    let broker = broker(Dialect::Channels);
    let core = broker.core.as_ref();
    let member = core.connect("m");
    let outsider = core.connect("o");
    core.join(member.id, "hello")?;
    let publish = |body: &str| request("POST", "/broadcast", "application/json", body);

    let response = handle(
        &broker,
        &publish(r#"{"channel":"hello","content":{"n":1}}"#),
    )
    .await;
    assert_eq!(
        (response.status, json_body(&response)),
        (201, json!({"delivered": 1}))
    );
    assert_eq!(texts(&member), [Message::text(r#"{"n":1}"#)]);
    assert!(texts(&outsider).is_empty());

    let response = handle(&broker, &publish(r#"{"channel":"hello"}"#)).await;
    assert_eq!(response.status, 400);
    let response = handle(&broker, &publish(r#"{"channel":"","content":1}"#)).await;
    assert_eq!(response.status, 400);
    let response = handle(
        &broker,
        &request(
            "POST",
            "/broadcast",
            "text/plain",
            r#"{"channel":"hello","content":1}"#,
        ),
    )
    .await;
    assert_eq!(response.status, 415);
    let response = handle(
        &broker,
        &request("GET", "/broadcast", "application/json", ""),
    )
    .await;
    assert_eq!(response.status, 405);
    let response = handle(
        &broker,
        &request("POST", "/other", "application/json", "{}"),
    )
    .await;
    assert_eq!(response.status, 404);
    Ok(())
}

#[tokio::test]
async fn dialects_without_an_api_answer_404() {
    for dialect in [Dialect::Wsmsgbroker, Dialect::Achex] {
        let response = handle(&broker(dialect), &form("method=get_clients")).await;
        assert_eq!(response.status, 404);
    }
}
