//! `websocket_broker --redis` across instances: two broker processes of the
//! same dialect on docroots of their own, each behind its own gateway (the
//! first relaying its clients, the second in direct mode),
//! sharing one `redis-server` of the test's own. Every dialect addresses the
//! other instance's clients (tokens and prefixes, channels, wsmsgbroker ids
//! with send and answer, Achex `to` and `toS`), exclusive names are unique
//! across instances, the first answer wins across instances, a SIGKILLed
//! instance's clients are gone within the expiry, and a Redis restart is
//! survived.
//!
//! Own harness (libtest-mimic), as `redis_chat.rs`: without `redis-server`
//! each test is reported ignored outside CI and fails in CI.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use harness::redis::RedisServer;
use harness::trials::{NamedTest, run_trials};
use harness::{Backend, Client, EVENT_DEADLINE, Gateway, Message};
use libtest_mimic::Arguments;
use serde_json::{Value, json};
use tempfile::TempDir;

/// One broker instance behind a gateway of its own.
struct Instance {
    _docroot: TempDir,
    broker: Backend,
    gateway: Gateway,
}

impl Instance {
    /// An instance whose gateway relays its clients.
    async fn start(redis: &RedisServer, args: &[&str]) -> anyhow::Result<Instance> {
        Instance::start_behind(redis, args, &[]).await
    }

    /// An instance whose gateway hands its clients' sockets over (direct
    /// mode), so every test crosses a relayed and a direct instance.
    async fn start_direct(redis: &RedisServer, args: &[&str]) -> anyhow::Result<Instance> {
        Instance::start_behind(redis, args, &["--direct", "*"]).await
    }

    async fn start_behind(
        redis: &RedisServer,
        args: &[&str],
        gateway_args: &[&str],
    ) -> anyhow::Result<Instance> {
        let docroot = tempfile::tempdir()?;
        let url = redis.url();
        let mut all_args = vec![
            "--redis",
            &url,
            "--redis-namespace",
            "test:broker",
            "--redis-expiry",
            "3",
        ];
        all_args.extend_from_slice(args);
        let broker =
            Backend::start("websocket_broker", docroot.path(), "broker", &all_args).await?;
        let gateway = Gateway::start(docroot.path(), gateway_args).await?;
        Ok(Instance {
            _docroot: docroot,
            broker,
            gateway,
        })
    }

    async fn connect(&self, query: &str) -> anyhow::Result<Client> {
        self.gateway.connect(&format!("/broker{query}")).await
    }
}

async fn send(client: &mut Client, text: &str) -> anyhow::Result<()> {
    client.send(Message::text(text)).await
}

async fn send_json(client: &mut Client, value: Value) -> anyhow::Result<()> {
    client.send(Message::text(value.to_string())).await
}

async fn recv_json(client: &mut Client) -> anyhow::Result<Value> {
    let text = client.recv_text().await?;
    serde_json::from_str(&text).with_context(|| format!("not JSON: {text:?}"))
}

async fn expect_json(client: &mut Client, expected: Value) -> anyhow::Result<()> {
    let value = recv_json(client).await?;
    ensure!(value == expected, "expected {expected}, got {value}");
    Ok(())
}

/// A tokens client that holds `token` (registered through the query), proven by an echo.
async fn token_client(instance: &Instance, token: &str) -> anyhow::Result<Client> {
    let mut client = instance.connect(&format!("?RegisterToken={token}")).await?;
    send(&mut client, "Echo:ready").await?;
    client.expect_text("Echo:ready").await?;
    Ok(client)
}

async fn tokens_and_prefixes_reach_the_other_instance() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let one = Instance::start(&redis, &["--dialect", "tokens"]).await?;
    let two = Instance::start_direct(&redis, &["--dialect", "tokens"]).await?;
    let mut abc1 = token_client(&one, "abc1").await?;
    let mut item1 = token_client(&two, "group/item1").await?;
    let mut item2 = token_client(&one, "group/item2").await?;

    send(&mut abc1, "group/|to the group").await?;
    item1.expect_text("to the group").await?;
    item2.expect_text("to the group").await?;
    send(&mut item1, "abc1,group/item2|from two").await?;
    abc1.expect_text("from two").await?;
    item2.expect_text("from two").await?;
    // `abc` is not a prefix receiver; nobody anywhere holds it.
    send(&mut item1, "abc|nobody").await?;
    item1
        .expect_text("Error:no connected client matches the receivers")
        .await?;

    // A token is one client's, across instances.
    let mut thief = two.connect("").await?;
    send(&mut thief, "RegisterToken:abc1").await?;
    thief
        .expect_text("Error:\"abc1\" is taken by another client")
        .await?;
    // Freed when its holder leaves.
    drop(abc1);
    let deadline = tokio::time::Instant::now() + EVENT_DEADLINE;
    loop {
        send(&mut thief, "RegisterToken:abc1").await?;
        let reply = thief.recv_text().await?;
        if reply == "RegisteredToken:abc1" {
            break;
        }
        ensure!(reply.contains("is taken"), "unexpected {reply:?}");
        ensure!(
            tokio::time::Instant::now() < deadline,
            "abc1 not freed in time"
        );
    }
    send(&mut item2, "abc1|to the new holder").await?;
    thief.expect_text("to the new holder").await?;
    Ok(())
}

async fn channels_reach_members_on_both_instances() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let one = Instance::start(&redis, &["--dialect", "channels"]).await?;
    let two = Instance::start_direct(&redis, &["--dialect", "channels"]).await?;
    let mut members = Vec::new();
    for instance in [&one, &two, &two] {
        let mut client = instance.connect("").await?;
        send_json(
            &mut client,
            json!({"command": "join", "args": {"channel": "news"}}),
        )
        .await?;
        // A refused message after the join proves the join was handled.
        send(&mut client, "not json").await?;
        let reply = recv_json(&mut client).await?;
        ensure!(reply["error"].is_string(), "{reply}");
        members.push(client);
    }
    let mut outsider = one.connect("").await?;
    send_json(
        &mut outsider,
        json!({"command": "broadcast", "args": {"channel": "news", "content": {"n": 1}}}),
    )
    .await?;
    for member in &mut members {
        expect_json(member, json!({"n": 1})).await?;
    }
    let (first, rest) = members.split_first_mut().context("three members")?;
    send_json(
        &mut rest[0],
        json!({"command": "leave", "args": {"channel": "news"}}),
    )
    .await?;
    // Its error reply proves the leave was handled.
    send(&mut rest[0], "not json").await?;
    let reply = recv_json(&mut rest[0]).await?;
    ensure!(reply["error"].is_string(), "{reply}");
    send_json(
        &mut rest[1],
        json!({"command": "broadcast", "args": {"channel": "news", "content": "two"}}),
    )
    .await?;
    expect_json(first, json!("two")).await?;
    expect_json(&mut rest[1], json!("two")).await?;
    // The one that left got nothing: its next message is its own error reply.
    send(&mut rest[0], "not json").await?;
    let reply = recv_json(&mut rest[0]).await?;
    ensure!(reply["error"].is_string(), "{reply}");
    Ok(())
}

async fn register(client: &mut Client, id: &str) -> anyhow::Result<()> {
    send_json(client, json!({"action": "register", "id": id})).await?;
    expect_json(client, json!({"action": "registered", "id": id})).await
}

async fn wsmsgbroker_ids_sends_and_first_answer_cross_instances() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let one = Instance::start(&redis, &["--dialect", "wsmsgbroker"]).await?;
    let two = Instance::start_direct(&redis, &["--dialect", "wsmsgbroker"]).await?;
    let mut alice = one.connect("").await?;
    register(&mut alice, "alice").await?;
    let mut carol = one.connect("").await?;
    register(&mut carol, "carol").await?;
    let mut bob = two.connect("").await?;
    register(&mut bob, "bob").await?;
    // Ids are unique across instances.
    let mut mallory = two.connect("").await?;
    send_json(&mut mallory, json!({"action": "register", "id": "alice"})).await?;
    expect_json(
        &mut mallory,
        json!({"action": "error", "message": "\"alice\" is taken by another client"}),
    )
    .await?;

    // Send and answer across instances; `from` is the broker's.
    send_json(
        &mut alice,
        json!({"action": "send", "dest": "bob", "message": "question", "ack": "k1", "from": "x"}),
    )
    .await?;
    expect_json(
        &mut bob,
        json!({"action": "message", "message": "question", "from": "alice", "ack": "k1"}),
    )
    .await?;
    send_json(
        &mut bob,
        json!({"action": "answer", "ack": "k1", "message": "answer"}),
    )
    .await?;
    expect_json(
        &mut alice,
        json!({"action": "answer", "ack": "k1", "message": "answer", "from": "bob"}),
    )
    .await?;

    // To two receivers on two instances: the first answer wins.
    send_json(
        &mut alice,
        json!({"action": "send", "dest": ["bob", "carol"], "message": "who?", "ack": "k2"}),
    )
    .await?;
    expect_json(
        &mut bob,
        json!({"action": "message", "message": "who?", "from": "alice", "ack": "k2"}),
    )
    .await?;
    expect_json(
        &mut carol,
        json!({"action": "message", "message": "who?", "from": "alice", "ack": "k2"}),
    )
    .await?;
    send_json(
        &mut bob,
        json!({"action": "answer", "ack": "k2", "message": "bob"}),
    )
    .await?;
    expect_json(
        &mut alice,
        json!({"action": "answer", "ack": "k2", "message": "bob", "from": "bob"}),
    )
    .await?;
    send_json(
        &mut carol,
        json!({"action": "answer", "ack": "k2", "message": "carol"}),
    )
    .await?;
    // Carol's answer was dropped: alice's next message is her own error reply.
    // (Carol's answer was handled before her next message, which proves it came first.)
    send_json(&mut carol, json!({"action": "fly"})).await?;
    let reply = recv_json(&mut carol).await?;
    ensure!(reply["action"] == "error", "{reply}");
    send_json(&mut alice, json!({"action": "fly"})).await?;
    let reply = recv_json(&mut alice).await?;
    ensure!(
        reply["action"] == "error",
        "expected alice's error reply, got {reply}"
    );
    // A receiver that is nowhere is reported.
    send_json(
        &mut bob,
        json!({"action": "send", "dest": ["alice", "nobody"], "message": 1}),
    )
    .await?;
    expect_json(
        &mut alice,
        json!({"action": "message", "message": 1, "from": "bob"}),
    )
    .await?;
    expect_json(
        &mut bob,
        json!({"action": "error", "message": "not registered: nobody"}),
    )
    .await?;
    Ok(())
}

async fn achex_login(
    instance: &Instance,
    id: &str,
    password: &str,
) -> anyhow::Result<(Client, u64)> {
    let mut client = instance.connect("").await?;
    send_json(&mut client, json!({"setID": id, "passwd": password})).await?;
    let reply = recv_json(&mut client).await?;
    ensure!(reply["auth"] == "ok", "login of {id}: {reply}");
    let sid = reply["sID"].as_u64().context("sID is a number")?;
    Ok((client, sid))
}

async fn achex_to_and_to_session_cross_instances() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let accounts = tempfile::tempdir()?;
    let accounts = accounts.path().join("achex.db");
    let accounts = accounts.to_str().context("temp path is UTF-8")?.to_owned();
    let args = ["--dialect", "achex", "-C", accounts.as_str()];
    let one = Instance::start(&redis, &args).await?;
    let two = Instance::start_direct(&redis, &args).await?;
    let (mut alex1, alex1_sid) = achex_login(&one, "alex", "pw-alex").await?;
    let (mut alex2, alex2_sid) = achex_login(&two, "alex", "pw-alex").await?;
    let (mut bob, bob_sid) = achex_login(&two, "bob", "pw-bob").await?;
    ensure!(
        alex1_sid != alex2_sid && alex2_sid != bob_sid && alex1_sid != bob_sid,
        "session ids clash: {alex1_sid} {alex2_sid} {bob_sid}"
    );
    ensure!(
        alex1_sid < 1 << 53,
        "sID {alex1_sid} is not a safe JSON number"
    );

    send_json(
        &mut bob,
        json!({"to": "alex", "msg": "hello", "FROM": "root"}),
    )
    .await?;
    let stamped = json!({"to": "alex", "msg": "hello", "FROM": "bob", "sID": bob_sid});
    expect_json(&mut alex1, stamped.clone()).await?;
    expect_json(&mut alex2, stamped).await?;
    send_json(&mut bob, json!({"toS": alex1_sid, "msg": "only you"})).await?;
    expect_json(
        &mut alex1,
        json!({"toS": alex1_sid, "msg": "only you", "FROM": "bob", "sID": bob_sid}),
    )
    .await?;
    send_json(
        &mut alex1,
        json!({"cmd": "register_broadcast", "bid": "room"}),
    )
    .await?;
    expect_json(
        &mut alex1,
        json!({"cmd": "register_broadcast", "bid": "room", "ok": true}),
    )
    .await?;
    send_json(&mut bob, json!({"to": "room", "msg": "to the group"})).await?;
    expect_json(
        &mut alex1,
        json!({"to": "room", "msg": "to the group", "FROM": "bob", "sID": bob_sid}),
    )
    .await?;
    send_json(&mut bob, json!({"toS": 7, "msg": "x"})).await?;
    expect_json(&mut bob, json!({"error": "no session 7"})).await?;
    // Alex2 got only the message to every session of alex.
    send(&mut alex2, "ping").await?;
    let reply = recv_json(&mut alex2).await?;
    ensure!(reply["ltcy"].is_string(), "{reply}");
    Ok(())
}

async fn killed_instance_clients_are_gone_within_the_expiry() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let one = Instance::start(&redis, &["--dialect", "tokens"]).await?;
    let mut two = Instance::start_direct(&redis, &["--dialect", "tokens"]).await?;
    let mut here = token_client(&one, "here").await?;
    let mut other_here = token_client(&one, "other").await?;
    let _there = token_client(&two, "there").await?;
    send(&mut here, "there|hello").await?;
    two.broker.kill()?;
    let killed_at = tokio::time::Instant::now();
    // The others lose nothing meanwhile.
    for n in 0..100 {
        send(&mut here, &format!("other|{n}")).await?;
    }
    for n in 0..100 {
        other_here.expect_text(&n.to_string()).await?;
    }
    // `there` is free again once the killed instance is reaped.
    loop {
        send(&mut here, "RegisterToken:there").await?;
        let reply = here.recv_text().await?;
        if reply == "RegisteredToken:there" {
            break;
        }
        ensure!(reply.contains("is taken"), "unexpected {reply:?}");
        ensure!(
            killed_at.elapsed() < Duration::from_secs(8),
            "the killed instance's token still held after {:?}",
            killed_at.elapsed()
        );
    }
    ensure!(killed_at.elapsed() < Duration::from_secs(8));
    Ok(())
}

async fn redis_restart_is_survived_by_the_broker() -> anyhow::Result<()> {
    let mut redis = RedisServer::start().await?;
    let one = Instance::start(&redis, &["--dialect", "tokens"]).await?;
    let two = Instance::start_direct(&redis, &["--dialect", "tokens"]).await?;
    let mut a = token_client(&one, "a").await?;
    let mut b = token_client(&two, "b").await?;
    let mut a2 = token_client(&one, "a2").await?;

    redis.kill()?;
    // Local delivery goes on.
    send(&mut a, "a2|local").await?;
    a2.expect_text("local").await?;
    redis.restart().await?;
    // Delivery across instances resumes, and the tokens were written back.
    let deadline = tokio::time::Instant::now() + EVENT_DEADLINE * 2;
    let mut n_sent = 0;
    loop {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "nothing crossed instances after the restart"
        );
        n_sent += 1;
        send(&mut a, &format!("b|after {n_sent}")).await?;
        // The sender hears `Error:` while b is unknown; a poll with a bound, not a sleep.
        let Ok(reply) = tokio::time::timeout(Duration::from_millis(300), b.recv()).await else {
            continue;
        };
        let Message::Text(text) = reply? else {
            bail!("expected text");
        };
        ensure!(text.as_str().starts_with("after "), "{text:?}");
        break;
    }
    let mut thief = one.connect("").await?;
    send(&mut thief, "RegisterToken:b").await?;
    thief
        .expect_text("Error:\"b\" is taken by another client")
        .await?;
    Ok(())
}

fn tests() -> Vec<NamedTest> {
    vec![
        ("tokens_and_prefixes_reach_the_other_instance", || {
            Box::pin(tokens_and_prefixes_reach_the_other_instance())
        }),
        ("channels_reach_members_on_both_instances", || {
            Box::pin(channels_reach_members_on_both_instances())
        }),
        (
            "wsmsgbroker_ids_sends_and_first_answer_cross_instances",
            || Box::pin(wsmsgbroker_ids_sends_and_first_answer_cross_instances()),
        ),
        ("achex_to_and_to_session_cross_instances", || {
            Box::pin(achex_to_and_to_session_cross_instances())
        }),
        ("killed_instance_clients_are_gone_within_the_expiry", || {
            Box::pin(killed_instance_clients_are_gone_within_the_expiry())
        }),
        ("redis_restart_is_survived_by_the_broker", || {
            Box::pin(redis_restart_is_survived_by_the_broker())
        }),
    ]
}

fn main() -> ExitCode {
    let missing = RedisServer::missing().filter(|_| !RedisServer::required());
    run_trials(&Arguments::from_args(), tests(), missing)
}
