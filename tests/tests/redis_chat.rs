//! `websocket_chat --redis` across instances: two (or three) chat processes
//! on docroots of their own, each behind its own gateway (the second of
//! each test in direct mode), sharing one
//! `redis-server` of the test's own. Names are unique across them, public
//! and private messages and presence cross over, `WSWhois` and `WSUsers` see
//! everyone; a SIGKILLed instance's clients vanish from the others' presence
//! within the expiry while the others lose nothing; a Redis restarted during
//! a run is reconnected to and delivery resumes.
//!
//! This test binary has its own harness (libtest-mimic) so that without
//! `redis-server` each test is reported ignored with the reason, never as
//! passed; in CI (`CI=true`) they run anyway, and fail.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, ensure};
use harness::client::describe;
use harness::redis::RedisServer;
use harness::trials::{NamedTest, run_trials};
use harness::{Backend, Client, EVENT_DEADLINE, Gateway, Message};
use libtest_mimic::Arguments;
use tempfile::TempDir;

/// The expiry the instances run with: a killed one is gone within about
/// this plus a third of it.
const EXPIRY_SECONDS: &str = "3";

/// One chat instance behind a gateway of its own.
struct Instance {
    _docroot: TempDir,
    chat: Backend,
    gateway: Gateway,
}

impl Instance {
    async fn start(redis: &RedisServer) -> anyhow::Result<Instance> {
        Instance::start_with_expiry(redis, EXPIRY_SECONDS).await
    }

    /// An instance whose gateway hands its clients' sockets over (direct mode).
    async fn start_direct(redis: &RedisServer) -> anyhow::Result<Instance> {
        Instance::start_behind(redis, EXPIRY_SECONDS, &["--direct", "*"]).await
    }

    async fn start_with_expiry(redis: &RedisServer, expiry: &str) -> anyhow::Result<Instance> {
        Instance::start_behind(redis, expiry, &[]).await
    }

    async fn start_behind(
        redis: &RedisServer,
        expiry: &str,
        gateway_args: &[&str],
    ) -> anyhow::Result<Instance> {
        let docroot = tempfile::tempdir()?;
        let url = redis.url();
        let chat = Backend::start(
            "websocket_chat",
            docroot.path(),
            "chat",
            &[
                "-w",
                "--redis",
                &url,
                "--redis-namespace",
                "test:chat",
                "--redis-expiry",
                expiry,
            ],
        )
        .await?;
        let gateway = Gateway::start(docroot.path(), gateway_args).await?;
        Ok(Instance {
            _docroot: docroot,
            chat,
            gateway,
        })
    }

    /// A client that asked for `name` and got `WSWelcome <expected>`; its
    /// `WSUsers` line is returned. A `WSJoin` may come first: a client on
    /// another instance that named itself just before this one connected
    /// is announced through Redis, which may reach this instance after the
    /// connection (the `WSUsers` line, read from Redis, has it either way).
    async fn named(&self, name: &str, expected: &str) -> anyhow::Result<(Client, String)> {
        let mut client = self.gateway.connect("/chat").await?;
        client
            .send(Message::text(format!("WSHello {name}")))
            .await?;
        expect_text_skipping(&mut client, &format!("WSWelcome {expected}"), |text| {
            text.starts_with("WSJoin ")
        })
        .await?;
        let users = client.recv_text().await?;
        ensure!(
            users.starts_with("WSUsers"),
            "expected WSUsers, got {users:?}"
        );
        Ok((client, users))
    }
}

/// Reads until the text `expected` arrives, skipping lines for which `skip` holds.
async fn expect_text_skipping(
    client: &mut Client,
    expected: &str,
    skip: impl Fn(&str) -> bool,
) -> anyhow::Result<()> {
    loop {
        let text = client.recv_text().await?;
        if text == expected {
            return Ok(());
        }
        ensure!(skip(&text), "expected {expected:?}, got {text:?}");
    }
}

async fn names_are_unique_and_messages_and_presence_cross_instances() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let one = Instance::start(&redis).await?;
    let two = Instance::start_direct(&redis).await?;

    let (mut alice, users) = one.named("alice", "alice").await?;
    ensure!(users == "WSUsers", "{users:?}");
    // The same name on the other instance is made unique, as in one process.
    let (mut alice1, users) = two.named("alice", "alice1").await?;
    ensure!(users == "WSUsers alice", "{users:?}");
    alice.expect_text("WSJoin alice1").await?;
    let (mut bob, users) = two.named("bob", "bob").await?;
    ensure!(users == "WSUsers alice alice1", "{users:?}");
    alice.expect_text("WSJoin bob").await?;
    alice1.expect_text("WSJoin bob").await?;

    // Public messages both ways, with the sender's name in front.
    alice.send(Message::text("hello from one")).await?;
    alice1.expect_text("alice: hello from one").await?;
    bob.expect_text("alice: hello from one").await?;
    bob.send(Message::text("hello from two")).await?;
    alice1.expect_text("bob: hello from two").await?;
    alice.expect_text("bob: hello from two").await?;
    // Binary messages too, byte for byte.
    alice.send(Message::binary(vec![0u8, 159, 255])).await?;
    ensure!(bob.recv().await? == Message::binary(vec![0u8, 159, 255]));
    ensure!(alice1.recv().await? == Message::binary(vec![0u8, 159, 255]));

    // Private messages both ways reach only their recipient.
    alice
        .send(Message::text("WSPrivate bob psst from one"))
        .await?;
    bob.expect_text("(private) alice: psst from one").await?;
    bob.send(Message::text("WSPrivate alice psst from two"))
        .await?;
    alice.expect_text("(private) bob: psst from two").await?;
    alice.send(Message::text("WSPrivate nobody hi")).await?;
    alice.expect_text("WSError unknown name nobody").await?;

    // WSWhois sees the other instance's clients.
    alice.send(Message::text("WSWhois bob")).await?;
    alice.expect_text("WSIs bob 127.0.0.1").await?;
    bob.send(Message::text("WSWhois alice")).await?;
    bob.expect_text("WSIs alice 127.0.0.1").await?;
    bob.send(Message::text("WSWhois nobody")).await?;
    bob.expect_text("WSIs nobody undefined").await?;

    // Nothing else reached alice1: the private lines went to one client each.
    alice1.send(Message::text("WSWhois alice1")).await?;
    alice1.expect_text("WSIs alice1 127.0.0.1").await?;

    // A rename frees the name everywhere; leaving announces it everywhere.
    alice1.send(Message::text("WSHello carol")).await?;
    alice1.expect_text("WSWelcome carol").await?;
    alice1.expect_text("WSUsers alice bob").await?;
    alice.expect_text("WSLeave alice1").await?;
    alice.expect_text("WSJoin carol").await?;
    bob.expect_text("WSLeave alice1").await?;
    bob.expect_text("WSJoin carol").await?;
    drop(alice1);
    alice.expect_text("WSLeave carol").await?;
    bob.expect_text("WSLeave carol").await?;
    let (_alice1_again, users) = one.named("alice", "alice1").await?;
    ensure!(users == "WSUsers alice bob", "{users:?}");
    Ok(())
}

async fn killed_instance_vanishes_from_presence_and_the_others_lose_nothing() -> anyhow::Result<()>
{
    /// Messages each way after the kill.
    const N_MESSAGES: usize = 200;
    let redis = RedisServer::start().await?;
    let one = Instance::start(&redis).await?;
    let two = Instance::start_direct(&redis).await?;
    let mut three = Instance::start(&redis).await?;
    let (mut alice, _) = one.named("alice", "alice").await?;
    let (mut bob, _) = two.named("bob", "bob").await?;
    alice.expect_text("WSJoin bob").await?;
    let (_carl, users) = three.named("carl", "carl").await?;
    ensure!(users == "WSUsers alice bob", "{users:?}");
    alice.expect_text("WSJoin carl").await?;
    bob.expect_text("WSJoin carl").await?;

    three.chat.kill()?;
    let killed_at = tokio::time::Instant::now();
    // While the others have not yet noticed, they go on talking.
    for n in 0..N_MESSAGES {
        alice.send(Message::text(format!("a{n}"))).await?;
        bob.send(Message::text(format!("b{n}"))).await?;
    }
    let is_leave = |text: &str| text == "WSLeave carl";
    let mut alice_saw_leave = false;
    let mut bob_saw_leave = false;
    for n in 0..N_MESSAGES {
        loop {
            let text = alice.recv_text().await?;
            if is_leave(&text) && !alice_saw_leave {
                alice_saw_leave = true;
                continue;
            }
            ensure!(
                text == format!("bob: b{n}"),
                "alice expected b{n}, got {text:?}"
            );
            break;
        }
        loop {
            let text = bob.recv_text().await?;
            if is_leave(&text) && !bob_saw_leave {
                bob_saw_leave = true;
                continue;
            }
            ensure!(
                text == format!("alice: a{n}"),
                "bob expected a{n}, got {text:?}"
            );
            break;
        }
    }
    if !alice_saw_leave {
        alice.expect_text("WSLeave carl").await?;
    }
    if !bob_saw_leave {
        bob.expect_text("WSLeave carl").await?;
    }
    let elapsed = killed_at.elapsed();
    // The expiry (3 s) plus a heartbeat (1 s), with room for a busy machine.
    ensure!(
        elapsed < Duration::from_secs(8),
        "carl vanished only after {elapsed:?}"
    );
    alice.send(Message::text("WSWhois carl")).await?;
    alice.expect_text("WSIs carl undefined").await?;
    // Its name is free again, on any instance.
    let (_carl_again, users) = two.named("carl", "carl").await?;
    ensure!(users == "WSUsers alice bob", "{users:?}");
    alice.expect_text("WSJoin carl").await?;
    Ok(())
}

/// An instance the others took for dead (it missed its heartbeats, as a
/// starved process does) has its names freed in Redis until its next beat
/// writes them back; meanwhile Redis would hand a name one of its own
/// clients holds to another of its clients. It must not: the instance
/// writes its names back first. The reaping is done by hand here, and the
/// expiry is long so that the heartbeat does not repair it first.
async fn a_reaped_instance_never_gives_a_local_clients_name_twice() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let one = Instance::start_with_expiry(&redis, "120").await?;
    let (mut alice, _) = one.named("alice", "alice").await?;
    // What another instance's REAP does: the instance is no longer listed
    // as alive and its names are gone.
    let freed = redis
        .command(&[
            "EVAL",
            "redis.call('DEL', KEYS[1]); return redis.call('DEL', KEYS[2])",
            "2",
            "test:chat:instances",
            "test:chat:names",
        ])
        .await?;
    ensure!(freed == "1", "the names hash was not there: {freed:?}");
    let (_second, users) = one.named("alice", "alice1").await?;
    ensure!(users == "WSUsers alice", "{users:?}");
    alice.expect_text("WSJoin alice1").await?;
    // The names are back in Redis: a new instance sees both.
    let two = Instance::start_with_expiry(&redis, "120").await?;
    let (_third, users) = two.named("alice", "alice2").await?;
    ensure!(users == "WSUsers alice alice1", "{users:?}");
    Ok(())
}

async fn redis_restart_is_survived_and_delivery_resumes() -> anyhow::Result<()> {
    let mut redis = RedisServer::start().await?;
    let one = Instance::start(&redis).await?;
    let two = Instance::start_direct(&redis).await?;
    let (mut alice, _) = one.named("alice", "alice").await?;
    let (mut dave, _) = one.named("dave", "dave").await?;
    alice.expect_text("WSJoin dave").await?;
    let (mut bob, _) = two.named("bob", "bob").await?;
    alice.expect_text("WSJoin bob").await?;
    dave.expect_text("WSJoin bob").await?;

    redis.kill()?;
    // The local clients of each instance are still served...
    alice.send(Message::text("during the outage")).await?;
    dave.expect_text("alice: during the outage").await?;
    // ...but a name cannot be made unique without Redis.
    dave.send(Message::text("WSHello eve")).await?;
    let reply = dave.recv_text().await?;
    ensure!(
        reply.starts_with("WSError unavailable"),
        "expected WSError unavailable, got {reply:?}"
    );

    redis.restart().await?;
    // Delivery resumes once both instances have resubscribed: alice sends
    // until bob hears one (what was sent meanwhile is lost, as documented).
    let mut n_sent = 0;
    let deadline = tokio::time::Instant::now() + EVENT_DEADLINE * 2;
    loop {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "no message crossed instances within {:?} of the restart",
            EVENT_DEADLINE * 2
        );
        n_sent += 1;
        alice
            .send(Message::text(format!("after the restart {n_sent}")))
            .await?;
        // A poll with a bound, not a sleep: the loop ends on the first arrival.
        let Ok(message) = tokio::time::timeout(Duration::from_millis(300), bob.recv()).await else {
            continue;
        };
        let text = match message? {
            Message::Text(text) => text.as_str().to_owned(),
            other => bail!("expected text, got {}", describe(&other)),
        };
        if text.starts_with("alice: after the restart") {
            break;
        }
        ensure!(text.starts_with("WSJoin"), "bob got {text:?}");
    }
    // Dave heard every one of them, locally.
    for n in 1..=n_sent {
        expect_text_skipping(
            &mut dave,
            &format!("alice: after the restart {n}"),
            |text| text.starts_with("WSJoin") || text.starts_with("WSLeave"),
        )
        .await?;
    }
    // The names were written back: WSWhois and WSPrivate cross again, and a
    // taken name is still taken.
    alice.send(Message::text("WSWhois bob")).await?;
    alice.expect_text("WSIs bob 127.0.0.1").await?;
    bob.send(Message::text("WSPrivate alice back")).await?;
    expect_text_skipping(&mut alice, "(private) bob: back", |text| {
        text.starts_with("WSJoin") || text.starts_with("alice: after")
    })
    .await?;
    let (_bob1, users) = one.named("bob", "bob1").await?;
    ensure!(
        users.contains("bob") && users.contains("alice"),
        "{users:?}"
    );
    Ok(())
}

fn tests() -> Vec<NamedTest> {
    vec![
        (
            "names_are_unique_and_messages_and_presence_cross_instances",
            || Box::pin(names_are_unique_and_messages_and_presence_cross_instances()),
        ),
        (
            "killed_instance_vanishes_from_presence_and_the_others_lose_nothing",
            || Box::pin(killed_instance_vanishes_from_presence_and_the_others_lose_nothing()),
        ),
        (
            "a_reaped_instance_never_gives_a_local_clients_name_twice",
            || Box::pin(a_reaped_instance_never_gives_a_local_clients_name_twice()),
        ),
        ("redis_restart_is_survived_and_delivery_resumes", || {
            Box::pin(redis_restart_is_survived_and_delivery_resumes())
        }),
    ]
}

fn main() -> ExitCode {
    let missing = RedisServer::missing().filter(|_| !RedisServer::required());
    run_trials(&Arguments::from_args(), tests(), missing)
}
