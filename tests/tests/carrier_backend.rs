//! The backend library's side of fan-out (docs/link-protocol.md, *Fan-out*),
//! with the test playing the gateway on hand-made links to the real
//! `websocket_chat` and `websocket_echo`: a carrier OPEN is accepted (or
//! refused where fan-out is off), carried clients get every message as
//! FANOUT records on the carrier in the room's order, one record for all
//! carried recipients of a broadcast, and a carrier's end ends its sessions.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use harness::{Backend, wait, wire};
use link::fanout::{Fanout, FanoutMessage};
use link::{CloseInfo, Record};
use tokio::net::UnixStream;

/// How long any one record from the backend may take.
const EVENT_DEADLINE: Duration = Duration::from_secs(10);

/// A random carrier key, as a gateway makes one.
fn random_key() -> u64 {
    RandomState::new().hash_one(std::process::id())
}

/// Connects to the backend's socket and sends OPEN with `meta` (JSON).
async fn open_link(socket: &Path, meta: serde_json::Value) -> anyhow::Result<UnixStream> {
    let mut link = UnixStream::connect(socket).await?;
    let payload = serde_json::to_vec(&meta)?;
    wire::write_record(&mut link, &Record::Open(payload.into())).await?;
    Ok(link)
}

fn client_open(id: u64, carrier: Option<u64>) -> serde_json::Value {
    let mut meta = serde_json::json!({
        "version": 1, "mode": "framed", "id": id, "name": "chat",
        "path": "/chat", "peer": "127.0.0.1:4000",
    });
    if let Some(key) = carrier {
        meta["carrier"] = key.into();
    }
    meta
}

fn carrier_open(key: u64) -> serde_json::Value {
    serde_json::json!({
        "version": 1, "mode": "carrier", "id": key, "name": "chat", "path": "", "peer": "",
    })
}

async fn next_record(link: &mut UnixStream) -> anyhow::Result<Option<Record>> {
    wait::within(
        "a record from the backend",
        EVENT_DEADLINE,
        wire::read_record(link),
    )
    .await?
}

/// Reads ACCEPT and returns its JSON (`{}` for an empty one).
async fn expect_accept(link: &mut UnixStream) -> anyhow::Result<serde_json::Value> {
    match next_record(link).await? {
        Some(Record::Accept(payload)) if payload.is_empty() => Ok(serde_json::json!({})),
        Some(Record::Accept(payload)) => Ok(serde_json::from_slice(&payload)?),
        other => bail!("expected ACCEPT, got {other:?}"),
    }
}

/// Reads REJECT and returns its status.
async fn expect_reject(link: &mut UnixStream) -> anyhow::Result<u64> {
    match next_record(link).await? {
        Some(Record::Reject(payload)) => {
            let reply: serde_json::Value = serde_json::from_slice(&payload)?;
            reply["status"].as_u64().context("REJECT has a status")
        }
        other => bail!("expected REJECT, got {other:?}"),
    }
}

/// Opens a carrier with `key` and checks it is accepted.
async fn open_carrier(backend: &Backend, key: u64) -> anyhow::Result<UnixStream> {
    let mut carrier = open_link(backend.socket_path(), carrier_open(key)).await?;
    let accept = expect_accept(&mut carrier).await?;
    ensure!(accept == serde_json::json!({}), "empty ACCEPT: {accept}");
    Ok(carrier)
}

/// Opens client `id` on `carrier` and checks its ACCEPT carries the chat's terms.
async fn open_carried(backend: &Backend, id: u64, carrier: u64) -> anyhow::Result<UnixStream> {
    let mut link = open_link(backend.socket_path(), client_open(id, Some(carrier))).await?;
    let accept = expect_accept(&mut link).await?;
    assert_eq!(
        accept["carrier"],
        serde_json::json!({"queue_bytes": 1_048_576, "stall_ms": 2000}),
        "carried: {accept}"
    );
    Ok(link)
}

/// Opens client `id` without a carrier key; ACCEPT asks for a carrier.
async fn open_relayed(backend: &Backend, id: u64) -> anyhow::Result<UnixStream> {
    let mut link = open_link(backend.socket_path(), client_open(id, None)).await?;
    let accept = expect_accept(&mut link).await?;
    assert_eq!(accept["carrier_wanted"], true, "{accept}");
    assert!(accept.get("carrier").is_none(), "{accept}");
    Ok(link)
}

async fn send_text(link: &mut UnixStream, text: &str) -> anyhow::Result<()> {
    wire::write_record(link, &Record::Text(text.into())).await
}

/// Reads the next FANOUT from the carrier: its text and its recipients, sorted.
async fn expect_fanout_text(carrier: &mut UnixStream) -> anyhow::Result<(String, Vec<u64>)> {
    let fanout = expect_fanout(carrier).await?;
    let FanoutMessage::Text(text) = &fanout.message else {
        bail!("expected a text FANOUT, got {fanout:?}");
    };
    Ok((text.as_str().to_owned(), recipients(&fanout)))
}

async fn expect_fanout(carrier: &mut UnixStream) -> anyhow::Result<Fanout> {
    match next_record(carrier).await? {
        Some(Record::Fanout(fanout)) => Ok(fanout),
        other => bail!("expected FANOUT, got {other:?}"),
    }
}

fn recipients(fanout: &Fanout) -> Vec<u64> {
    let mut ids: Vec<u64> = fanout.recipients().collect();
    ids.sort_unstable();
    ids
}

fn fanout_text(text: &str, ids: &[u64]) -> (String, Vec<u64>) {
    (text.to_owned(), ids.to_vec())
}

async fn expect_text(link: &mut UnixStream, expected: &str) -> anyhow::Result<()> {
    match next_record(link).await? {
        Some(Record::Text(text)) if text.as_str() == expected => Ok(()),
        other => bail!("expected TEXT {expected:?}, got {other:?}"),
    }
}

/// Everything for carried clients comes on the carrier, in the room's
/// order: their own replies for them alone, a broadcast as one FANOUT for
/// all of them; a client without a carrier gets TEXT on its own link.
#[tokio::test]
async fn carried_clients_get_everything_on_the_carrier_in_order() -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let chat =
        Backend::start_with_metrics("websocket_chat", docroot.path(), "chat", &["-w"]).await?;
    let key = random_key();
    let mut carrier = open_carrier(&chat, key).await?;
    let mut alice = open_carried(&chat, 11, key).await?;
    send_text(&mut alice, "WSHello alice").await?;
    assert_eq!(
        expect_fanout_text(&mut carrier).await?,
        fanout_text("WSWelcome alice", &[11])
    );
    assert_eq!(
        expect_fanout_text(&mut carrier).await?,
        fanout_text("WSUsers", &[11])
    );
    let mut bob = open_carried(&chat, 12, key).await?;
    send_text(&mut bob, "WSHello bob").await?;
    assert_eq!(
        expect_fanout_text(&mut carrier).await?,
        fanout_text("WSWelcome bob", &[12])
    );
    assert_eq!(
        expect_fanout_text(&mut carrier).await?,
        fanout_text("WSUsers alice", &[12])
    );
    assert_eq!(
        expect_fanout_text(&mut carrier).await?,
        fanout_text("WSJoin bob", &[11])
    );
    // Carol has no carrier: her lines come on her own link.
    let mut carol = open_relayed(&chat, 13).await?;
    send_text(&mut carol, "WSHello carol").await?;
    expect_text(&mut carol, "WSWelcome carol").await?;
    expect_text(&mut carol, "WSUsers alice bob").await?;
    assert_eq!(
        expect_fanout_text(&mut carrier).await?,
        fanout_text("WSJoin carol", &[11, 12]),
        "one record for both carried clients"
    );
    // A broadcast, then a private line from the same sender: in that order.
    send_text(&mut carol, "one").await?;
    send_text(&mut carol, "WSPrivate alice psst").await?;
    assert_eq!(
        expect_fanout_text(&mut carrier).await?,
        fanout_text("carol: one", &[11, 12])
    );
    assert_eq!(
        expect_fanout_text(&mut carrier).await?,
        fanout_text("(private) carol: psst", &[11])
    );
    // A carried client's broadcast: the other carried one on the carrier,
    // the relayed one on her link; a reply to it on the carrier.
    send_text(&mut bob, "two").await?;
    send_text(&mut bob, "WSWhois carol").await?;
    expect_text(&mut carol, "bob: two").await?;
    assert_eq!(
        expect_fanout_text(&mut carrier).await?,
        fanout_text("bob: two", &[11])
    );
    assert_eq!(
        expect_fanout_text(&mut carrier).await?,
        fanout_text("WSIs carol 127.0.0.1", &[12])
    );
    let scrape = chat.scrape().await?;
    assert_eq!(scrape.value("wsgate_backend_carriers_open", &[])?, 1.0);
    // Alice leaves (her client closed): the others hear it, and since her
    // session sent no close, the carrier brings her one (1011), after
    // which her own link ends.
    wire::write_record(
        &mut alice,
        &Record::Close(Some(CloseInfo {
            code: 1000,
            reason: String::new(),
        })),
    )
    .await?;
    expect_text(&mut carol, "WSLeave alice").await?;
    assert_eq!(
        expect_fanout_text(&mut carrier).await?,
        fanout_text("WSLeave alice", &[12])
    );
    let close = expect_fanout(&mut carrier).await?;
    assert_eq!(
        close.message,
        FanoutMessage::Close(Some(CloseInfo {
            code: 1011,
            reason: String::new()
        }))
    );
    assert_eq!(recipients(&close), [11]);
    ensure!(
        next_record(&mut alice).await?.is_none(),
        "alice's own link ends"
    );
    // Nothing ever came on bob's own link: when he leaves, its first record
    // is its end.
    wire::write_record(&mut bob, &Record::Close(None)).await?;
    let bob_link = next_record(&mut bob).await?;
    ensure!(
        bob_link.is_none(),
        "nothing on a carried client's own link: {bob_link:?}"
    );
    Ok(())
}

/// At shutdown each carried client gets its 1001 on the carrier, and then
/// the backend closes the carrier.
#[tokio::test]
async fn shutdown_closes_carried_clients_on_the_carrier_then_the_carrier() -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let mut chat = Backend::start("websocket_chat", docroot.path(), "chat", &["-w"]).await?;
    let key = random_key();
    let mut carrier = open_carrier(&chat, key).await?;
    let mut alice = open_carried(&chat, 21, key).await?;
    send_text(&mut alice, "WSHello alice").await?;
    assert_eq!(
        expect_fanout_text(&mut carrier).await?,
        fanout_text("WSWelcome alice", &[21])
    );
    assert_eq!(
        expect_fanout_text(&mut carrier).await?,
        fanout_text("WSUsers", &[21])
    );
    chat.sigterm()?;
    let close = expect_fanout(&mut carrier).await?;
    assert_eq!(
        close.message,
        FanoutMessage::Close(Some(CloseInfo {
            code: 1001,
            reason: "server shutting down".to_owned()
        }))
    );
    assert_eq!(recipients(&close), [21]);
    ensure!(
        next_record(&mut carrier).await?.is_none(),
        "the carrier ends after its clients"
    );
    let status = chat.wait_exit(EVENT_DEADLINE).await?;
    ensure!(status.success(), "exit status {status}");
    Ok(())
}

/// When the gateway closes a carrier (or writes on it, which it never
/// does), its clients' sessions end and the key is forgotten.
#[tokio::test]
async fn closing_the_carrier_ends_the_sessions_it_carries() -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let chat = Backend::start("websocket_chat", docroot.path(), "chat", &["-w"]).await?;
    let key = random_key();
    let mut carrier = open_carrier(&chat, key).await?;
    let mut alice = open_carried(&chat, 31, key).await?;
    send_text(&mut alice, "WSHello alice").await?;
    assert_eq!(
        expect_fanout_text(&mut carrier).await?,
        fanout_text("WSWelcome alice", &[31])
    );
    let mut carol = open_relayed(&chat, 32).await?;
    send_text(&mut carol, "WSHello carol").await?;
    expect_text(&mut carol, "WSWelcome carol").await?;
    expect_text(&mut carol, "WSUsers alice").await?;
    drop(carrier);
    ensure!(
        next_record(&mut alice).await?.is_none(),
        "alice's session ends with her carrier"
    );
    expect_text(&mut carol, "WSLeave alice").await?;
    // The key is no longer open: a client naming it is not carried.
    let mut dave = open_link(chat.socket_path(), client_open(33, Some(key))).await?;
    let accept = expect_accept(&mut dave).await?;
    assert_eq!(accept["carrier_wanted"], true, "{accept}");
    assert!(accept.get("carrier").is_none(), "{accept}");

    // A carrier the gateway writes on is closed by the backend.
    let key = random_key().wrapping_add(1);
    let mut carrier = open_carrier(&chat, key).await?;
    let mut erin = open_carried(&chat, 34, key).await?;
    wire::write_record(&mut carrier, &Record::Text("no".into())).await?;
    // Closed with our record unread: an end or a reset.
    match next_record(&mut carrier).await {
        Ok(None) => {}
        Err(error)
            if error
                .downcast_ref::<std::io::Error>()
                .is_some_and(|error| error.kind() == std::io::ErrorKind::ConnectionReset) => {}
        other => bail!("the backend closes a carrier the gateway wrote on: {other:?}"),
    }
    ensure!(
        next_record(&mut erin).await?.is_none(),
        "erin's session ends with her carrier"
    );
    Ok(())
}

/// A second carrier with a key in use is refused with 409; at most 64
/// carriers are open at once (the next gets 503), and carriers take no
/// client or pending-link slot.
#[tokio::test]
async fn carriers_are_bounded_and_keys_unique() -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let chat = Backend::start(
        "websocket_chat",
        docroot.path(),
        "chat",
        &["-m", "2", "--max-pending", "2"],
    )
    .await?;
    let key = random_key();
    let mut carriers = Vec::new();
    for offset in 0..64u64 {
        carriers.push(open_carrier(&chat, key.wrapping_add(offset)).await?);
    }
    let mut same_key = open_link(chat.socket_path(), carrier_open(key)).await?;
    assert_eq!(expect_reject(&mut same_key).await?, 409);
    let mut one_too_many = open_link(chat.socket_path(), carrier_open(key.wrapping_sub(1))).await?;
    assert_eq!(expect_reject(&mut one_too_many).await?, 503);
    // The one client slot is still free, and no carrier is wanted now.
    let mut client = open_link(chat.socket_path(), client_open(1, Some(key))).await?;
    let accept = expect_accept(&mut client).await?;
    assert!(accept.get("carrier").is_some(), "{accept}");
    let mut other = open_link(chat.socket_path(), client_open(2, None)).await?;
    let accept = expect_accept(&mut other).await?;
    assert!(accept.get("carrier_wanted").is_none(), "{accept}");
    Ok(())
}

/// A server that does not fan out refuses a carrier with 501 and never
/// asks for one: `websocket_echo`, and `websocket_chat --no-fanout`.
#[tokio::test]
async fn servers_without_fanout_refuse_carriers_with_501() -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let echo = Backend::start("websocket_echo", docroot.path(), "echo", &[]).await?;
    let chat = Backend::start("websocket_chat", docroot.path(), "chat", &["--no-fanout"]).await?;
    for backend in [&echo, &chat] {
        let key = random_key();
        let mut carrier = open_link(backend.socket_path(), carrier_open(key)).await?;
        assert_eq!(expect_reject(&mut carrier).await?, 501);
        for carrier in [None, Some(key)] {
            let mut client = open_link(backend.socket_path(), client_open(5, carrier)).await?;
            let accept = expect_accept(&mut client).await?;
            assert!(accept.get("carrier").is_none(), "{accept}");
            assert!(accept.get("carrier_wanted").is_none(), "{accept}");
        }
    }
    Ok(())
}

/// A carrier the gateway does not read fills up and then makes the sender
/// wait: nothing is lost or reordered, and a message larger than the
/// carrier's queue still goes through.
#[tokio::test]
async fn a_full_carrier_makes_the_sender_wait_and_loses_nothing() -> anyhow::Result<()> {
    const N_MESSAGES: usize = 64;
    const LEN: usize = 100 * 1024;
    let docroot = tempfile::tempdir()?;
    let chat = Backend::start("websocket_chat", docroot.path(), "chat", &[]).await?;
    let key = random_key();
    let mut carrier = open_carrier(&chat, key).await?;
    let mut alice = open_carried(&chat, 41, key).await?;
    let mut bob = open_relayed(&chat, 42).await?;
    // Each session joins the room after its ACCEPT, in no set order: wait
    // until both have, or Alice's first message could reach no one.
    wait::until("Alice and Bob in the room", EVENT_DEADLINE, || async {
        let joined = chat.stderr_text().matches("joined the room").count();
        Ok((joined >= 2).then_some(()))
    })
    .await?;
    wire::write_record(&mut alice, &Record::Binary(vec![0xfe].into())).await?;
    assert_eq!(
        next_record(&mut bob).await?,
        Some(Record::Binary(vec![0xfe].into()))
    );
    wire::write_record(&mut bob, &Record::Binary(vec![0xff].into())).await?;
    let first = expect_fanout(&mut carrier).await?;
    assert_eq!(first.message, FanoutMessage::Binary(vec![0xff].into()));
    // 6.4 MB, far more than the carrier's queue and the sockets hold, and
    // one message of 2 MiB, more than the whole queue.
    let writer = tokio::spawn(async move {
        for index in 0..N_MESSAGES {
            let payload = vec![index as u8; LEN];
            wire::write_record(&mut bob, &Record::Binary(payload.into())).await?;
        }
        wire::write_record(&mut bob, &Record::Binary(vec![0xaa; 2 << 20].into())).await?;
        anyhow::Ok(bob)
    });
    for index in 0..N_MESSAGES {
        let fanout = expect_fanout(&mut carrier).await?;
        assert_eq!(recipients(&fanout), [41]);
        assert_eq!(
            fanout.message,
            FanoutMessage::Binary(vec![index as u8; LEN].into()),
            "message {index} in order"
        );
    }
    let large = expect_fanout(&mut carrier).await?;
    assert_eq!(
        large.message,
        FanoutMessage::Binary(vec![0xaa; 2 << 20].into())
    );
    wait::within("the sender's writes", EVENT_DEADLINE, writer).await???;
    Ok(())
}
