//! `websocket_chat` through the gateway, in relay and direct mode: broadcast
//! to everyone but the sender in per-sender order, ouistiti's `-w` commands
//! with our presence lines, names freed on disconnect, the `-m` limit, a
//! stalled reader dropped with 1008 while everyone else gets every message,
//! and one client's burst reaching every fast reader without evicting any.
//!
//! A client's `101` does not mean it is in the room yet (direct mode hands
//! the socket over a moment later), so [`connect_joined`] waits until every
//! client has received a message; nothing here waits for a fixed time.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use futures_util::StreamExt;
use futures_util::future::try_join_all;
use harness::client::describe;
use harness::{
    Backend, Client, CloseCode, EVENT_DEADLINE, EXIT_DEADLINE, Gateway, Message, Mode, bin_path,
    both_modes, tls_mode, wait,
};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

both_modes!(
    chat_message_reaches_everyone_but_sender_in_order,
    hello_gives_unique_names_and_announces_them,
    invalid_names_are_refused_and_the_old_name_kept,
    private_message_reaches_only_its_recipient,
    whois_answers_the_client_address_or_undefined,
    names_are_freed_when_their_client_leaves,
    client_over_the_limit_is_closed_with_1013,
    stalled_reader_is_closed_with_1008_while_others_get_everything,
    burst_of_300_tiny_messages_reaches_every_fast_reader,
    burst_of_5000_small_messages_reaches_every_fast_reader,
    reader_that_never_reads_is_closed_with_1008_during_a_burst,
    without_w_commands_are_ordinary_messages,
    with_w_lines_from_clients_name_their_sender_and_never_pass_for_the_chats,
    sigterm_closes_every_client_with_1001,
);

// The bursts are written, and the stalled readers read at last, as raw
// frames on the bare TCP socket, which a TLS client does not have; every
// other test also runs over wss.
tls_mode!(
    chat_message_reaches_everyone_but_sender_in_order,
    hello_gives_unique_names_and_announces_them,
    invalid_names_are_refused_and_the_old_name_kept,
    private_message_reaches_only_its_recipient,
    whois_answers_the_client_address_or_undefined,
    names_are_freed_when_their_client_leaves,
    client_over_the_limit_is_closed_with_1013,
    without_w_commands_are_ordinary_messages,
    with_w_lines_from_clients_name_their_sender_and_never_pass_for_the_chats,
    sigterm_closes_every_client_with_1001,
);

/// A docroot with `websocket_chat` on `chat` (given `backend_args`) and a gateway on it.
async fn start_chat(
    mode: Mode,
    backend_args: &[&str],
) -> anyhow::Result<(TempDir, Backend, Gateway)> {
    let docroot = tempfile::tempdir()?;
    let backend = Backend::start("websocket_chat", docroot.path(), "chat", backend_args).await?;
    let gateway = Gateway::start(docroot.path(), mode.gateway_args()).await?;
    Ok((docroot, backend, gateway))
}

/// Like [`start_chat`], but the chat's runtime has one worker thread
/// (`TOKIO_WORKER_THREADS=1`): nothing runs beside the session that is
/// reading a client's burst, the harshest schedule for the others' queues.
async fn start_chat_on_one_thread(
    mode: Mode,
    backend_args: &[&str],
) -> anyhow::Result<(TempDir, Backend, Gateway)> {
    let docroot = tempfile::tempdir()?;
    let mut command = std::process::Command::new(bin_path("websocket_chat")?);
    command
        .arg("-R")
        .arg(docroot.path())
        .args(["-n", "chat"])
        .args(backend_args)
        .env("TOKIO_WORKER_THREADS", "1");
    let socket_path = docroot.path().join("chat");
    let backend =
        Backend::start_command("websocket_chat (chat, one thread)", command, &socket_path).await?;
    let gateway = Gateway::start(docroot.path(), mode.gateway_args()).await?;
    Ok((docroot, backend, gateway))
}

/// Connects `n_clients` clients and returns once every one of them is in the room.
///
/// A `101` does not prove that: in direct mode the chat's session for a
/// client starts only when the gateway has handed the socket over, which may
/// be a moment later. What proves it is a message: the chat handled it, so its
/// sender is in, and whoever receives it was in. So the first client sends
/// `sync <n>` until every other one has received one, each given a short
/// while per round, and then `sync done`, which they read up to; nothing else
/// is pending for anyone after that. (With `-w` they arrive as
/// `(unnamed): sync <n>`, the beacon having no name.)
async fn connect_joined(gateway: &Gateway, n_clients: usize) -> anyhow::Result<Vec<Client>> {
    /// How long a client gets to show it received a round's `sync` before the next round.
    const SYNC_ROUND: Duration = Duration::from_millis(200);
    let mut clients = Vec::with_capacity(n_clients);
    for _ in 0..n_clients {
        clients.push(gateway.connect("/chat").await?);
    }
    let Some((beacon, others)) = clients.split_first_mut() else {
        return Ok(clients);
    };
    let mut in_room = vec![false; others.len()];
    let deadline = tokio::time::Instant::now() + EVENT_DEADLINE;
    let mut n_rounds = 0;
    while !in_room.iter().all(|&in_room| in_room) {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "timed out after {EVENT_DEADLINE:?} waiting for every client to be in the room"
        );
        n_rounds += 1;
        beacon
            .send(Message::text(format!("sync {n_rounds}")))
            .await?;
        for (other, in_room) in others.iter_mut().zip(in_room.iter_mut()) {
            if *in_room {
                continue;
            }
            if let Ok(message) = tokio::time::timeout(SYNC_ROUND, other.recv()).await {
                let message = message?;
                ensure!(
                    is_sync(&message),
                    "expected a sync, got {}",
                    describe(&message)
                );
                *in_room = true;
            }
        }
    }
    beacon.send(Message::text("sync done")).await?;
    for other in others.iter_mut() {
        loop {
            let message = other.recv().await?;
            if sync_text(&message) == Some("sync done") {
                break;
            }
            ensure!(
                is_sync(&message),
                "expected a sync, got {}",
                describe(&message)
            );
        }
    }
    Ok(clients)
}

fn is_sync(message: &Message) -> bool {
    sync_text(message).is_some_and(|text| text.starts_with("sync "))
}

/// The text of a message from the unnamed beacon of [`connect_joined`],
/// without the `(unnamed): ` that `-w` puts before it.
fn sync_text(message: &Message) -> Option<&str> {
    let Message::Text(text) = message else {
        return None;
    };
    let text = text.as_str();
    Some(text.strip_prefix("(unnamed): ").unwrap_or(text))
}

/// Reads the next message and checks that it is the text `expected`.
async fn expect_text(client: &mut Client, expected: &str) -> anyhow::Result<()> {
    let message = client.recv().await?;
    ensure!(
        message == Message::text(expected),
        "expected {expected:?}, got {}",
        describe(&message)
    );
    Ok(())
}

/// Sends `text` and checks the replies, in order.
async fn command(client: &mut Client, text: &str, replies: &[&str]) -> anyhow::Result<()> {
    client.send(Message::text(text)).await?;
    for reply in replies {
        expect_text(client, reply)
            .await
            .with_context(|| format!("reply to {text:?}"))?;
    }
    Ok(())
}

/// The message number `message_idx` of client `client_idx`: even ones are text, odd ones binary.
fn chat_message(client_idx: usize, message_idx: usize) -> Message {
    if message_idx.is_multiple_of(2) {
        Message::text(format!("client {client_idx} message {message_idx}"))
    } else {
        let mut payload = vec![client_idx as u8, message_idx as u8];
        payload.extend(std::iter::repeat_n(0xa5, client_idx * 100 + message_idx));
        Message::binary(payload)
    }
}

/// Who sent `message` and its number, read back from [`chat_message`]'s format.
fn chat_message_origin(message: &Message) -> Option<(usize, usize)> {
    match message {
        Message::Text(text) => {
            let rest = text.as_str().strip_prefix("client ")?;
            let (client_idx, message_idx) = rest.split_once(" message ")?;
            Some((client_idx.parse().ok()?, message_idx.parse().ok()?))
        }
        Message::Binary(payload) => Some((
            usize::from(*payload.first()?),
            usize::from(*payload.get(1)?),
        )),
        _ => None,
    }
}

async fn chat_message_reaches_everyone_but_sender_in_order(mode: Mode) -> anyhow::Result<()> {
    const N_CLIENTS: usize = 10;
    const N_MESSAGES: usize = 6;
    let (_docroot, _chat, gateway) = start_chat(mode, &[]).await?;
    let clients = connect_joined(&gateway, N_CLIENTS).await?;
    let sessions = clients
        .into_iter()
        .enumerate()
        .map(|(client_idx, mut client)| async move {
            for message_idx in 0..N_MESSAGES {
                client.send(chat_message(client_idx, message_idx)).await?;
            }
            let mut next_from = [0usize; N_CLIENTS];
            for _ in 0..(N_CLIENTS - 1) * N_MESSAGES {
                let message = client.recv().await?;
                let origin = chat_message_origin(&message);
                let Some((sender_idx, message_idx)) = origin
                    .filter(|&(sender_idx, _)| sender_idx < N_CLIENTS && sender_idx != client_idx)
                else {
                    bail!("client {client_idx} got {}", describe(&message));
                };
                ensure!(
                    message_idx == next_from[sender_idx]
                        && message == chat_message(sender_idx, message_idx),
                    "client {client_idx} got {} from client {sender_idx}, expected its message {}",
                    describe(&message),
                    next_from[sender_idx]
                );
                next_from[sender_idx] += 1;
            }
            anyhow::Ok(client)
        });
    let mut clients = try_join_all(sessions.map(tokio::spawn))
        .await?
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?;
    // Nothing else is queued: the next message everyone gets is this one.
    let (first, others) = clients.split_first_mut().context("there are clients")?;
    first.send(Message::text("end")).await?;
    for other in others.iter_mut() {
        expect_text(other, "end").await?;
    }
    others[0].send(Message::text("end too")).await?;
    expect_text(first, "end too").await?;
    Ok(())
}

async fn hello_gives_unique_names_and_announces_them(mode: Mode) -> anyhow::Result<()> {
    let (_docroot, _chat, gateway) = start_chat(mode, &["-w"]).await?;
    let mut clients = connect_joined(&gateway, 4).await?;
    let [bob, bob1, bob2, unnamed] = clients.as_mut_slice() else {
        bail!("four clients");
    };
    command(bob, "WSHello bob", &["WSWelcome bob", "WSUsers"]).await?;
    for other in [&mut *bob1, &mut *bob2, &mut *unnamed] {
        expect_text(other, "WSJoin bob").await?;
    }
    command(bob1, "WSHello bob", &["WSWelcome bob1", "WSUsers bob"]).await?;
    for other in [&mut *bob, &mut *bob2, &mut *unnamed] {
        expect_text(other, "WSJoin bob1").await?;
    }
    command(bob2, "WSHello bob", &["WSWelcome bob2", "WSUsers bob bob1"]).await?;
    for other in [&mut *bob, &mut *bob1, &mut *unnamed] {
        expect_text(other, "WSJoin bob2").await?;
    }
    // A rename frees the old name, and the others hear both sides of it.
    command(bob2, "WSHello zed", &["WSWelcome zed", "WSUsers bob bob1"]).await?;
    for other in [&mut *bob, &mut *bob1, &mut *unnamed] {
        expect_text(other, "WSLeave bob2").await?;
        expect_text(other, "WSJoin zed").await?;
    }
    command(
        unnamed,
        "WSHello bob",
        &["WSWelcome bob2", "WSUsers bob bob1 zed"],
    )
    .await?;
    Ok(())
}

async fn invalid_names_are_refused_and_the_old_name_kept(mode: Mode) -> anyhow::Result<()> {
    let (_docroot, _chat, gateway) = start_chat(mode, &["-w"]).await?;
    let mut clients = connect_joined(&gateway, 2).await?;
    let [client, other] = clients.as_mut_slice() else {
        bail!("two clients");
    };
    command(client, "WSHello carol", &["WSWelcome carol", "WSUsers"]).await?;
    expect_text(other, "WSJoin carol").await?;
    let too_long = format!("WSHello {}", "x".repeat(33));
    let cases = [
        ("WSHello ", "WSError invalid name: empty"),
        (
            too_long.as_str(),
            "WSError invalid name: longer than 32 characters",
        ),
        (
            "WSHello two words",
            "WSError invalid name: character ' ' not allowed (only A-Z a-z 0-9 _ . -)",
        ),
        (
            "WSHello zoé",
            "WSError invalid name: character 'é' not allowed (only A-Z a-z 0-9 _ . -)",
        ),
    ];
    for (line, error) in cases {
        command(client, line, &[error]).await?;
    }
    // A 32-character name is fine, and nobody heard of the refusals.
    let longest = "y".repeat(32);
    command(
        client,
        &format!("WSHello {longest}"),
        &[&format!("WSWelcome {longest}"), "WSUsers"],
    )
    .await?;
    expect_text(other, "WSLeave carol").await?;
    expect_text(other, &format!("WSJoin {longest}")).await?;
    Ok(())
}

async fn private_message_reaches_only_its_recipient(mode: Mode) -> anyhow::Result<()> {
    let (_docroot, _chat, gateway) = start_chat(mode, &["-w"]).await?;
    let mut clients = connect_joined(&gateway, 3).await?;
    let [bob, sender, bystander] = clients.as_mut_slice() else {
        bail!("three clients");
    };
    command(bob, "WSHello bob", &["WSWelcome bob", "WSUsers"]).await?;
    expect_text(sender, "WSJoin bob").await?;
    expect_text(bystander, "WSJoin bob").await?;
    command(sender, "WSPrivate bob psst, a secret", &[]).await?;
    expect_text(bob, "(private) (unnamed): psst, a secret").await?;
    command(
        sender,
        "WSPrivate nobody hello",
        &["WSError unknown name nobody"],
    )
    .await?;
    command(
        sender,
        "WSPrivate bob",
        &["WSError usage: WSPrivate <name> <message>"],
    )
    .await?;
    // Neither the bystander nor bob got anything else: the next message each
    // gets is this broadcast.
    sender.send(Message::text("public")).await?;
    expect_text(bob, "(unnamed): public").await?;
    expect_text(bystander, "(unnamed): public").await?;
    Ok(())
}

async fn whois_answers_the_client_address_or_undefined(mode: Mode) -> anyhow::Result<()> {
    let (_docroot, _chat, gateway) = start_chat(mode, &["-w"]).await?;
    let mut clients = connect_joined(&gateway, 2).await?;
    let [alice, asker] = clients.as_mut_slice() else {
        bail!("two clients");
    };
    command(alice, "WSHello alice", &["WSWelcome alice", "WSUsers"]).await?;
    expect_text(asker, "WSJoin alice").await?;
    command(asker, "WSWhois alice", &["WSIs alice 127.0.0.1"]).await?;
    command(asker, "WSWhois nobody", &["WSIs nobody undefined"]).await?;
    Ok(())
}

async fn names_are_freed_when_their_client_leaves(mode: Mode) -> anyhow::Result<()> {
    let (_docroot, _chat, gateway) = start_chat(mode, &["-w"]).await?;
    let mut clients = connect_joined(&gateway, 3).await?;
    let mut watcher = clients.pop().context("three clients")?;
    let mut dan = clients.pop().context("three clients")?;
    let mut bob = clients.pop().context("three clients")?;
    command(&mut bob, "WSHello bob", &["WSWelcome bob", "WSUsers"]).await?;
    expect_text(&mut dan, "WSJoin bob").await?;
    expect_text(&mut watcher, "WSJoin bob").await?;
    command(&mut dan, "WSHello dan", &["WSWelcome dan", "WSUsers bob"]).await?;
    expect_text(&mut bob, "WSJoin dan").await?;
    expect_text(&mut watcher, "WSJoin dan").await?;

    // A clean close.
    let reply = bob.close(CloseCode::Normal, "bye").await?;
    ensure!(reply.map(|frame| frame.code) == Some(CloseCode::Normal));
    expect_text(&mut watcher, "WSLeave bob").await?;
    expect_text(&mut dan, "WSLeave bob").await?;
    // A client that just vanishes.
    drop(dan);
    expect_text(&mut watcher, "WSLeave dan").await?;

    command(&mut watcher, "WSWhois bob", &["WSIs bob undefined"]).await?;
    let mut newcomer = gateway.connect("/chat").await?;
    command(&mut newcomer, "WSHello bob", &["WSWelcome bob", "WSUsers"]).await?;
    expect_text(&mut watcher, "WSJoin bob").await?;
    command(
        &mut watcher,
        "WSHello dan",
        &["WSWelcome dan", "WSUsers bob"],
    )
    .await?;
    Ok(())
}

async fn client_over_the_limit_is_closed_with_1013(mode: Mode) -> anyhow::Result<()> {
    let (_docroot, _chat, gateway) = start_chat(mode, &["-w", "-m", "2"]).await?;
    let mut clients = connect_joined(&gateway, 2).await?;
    let mut third = gateway.connect("/chat").await?;
    third.expect_close_code(CloseCode::Again).await?;
    // The two inside are unaffected.
    clients[0].send(Message::text("still here")).await?;
    expect_text(&mut clients[1], "(unnamed): still here").await?;
    // Once one leaves, its slot is free again (as soon as the chat has seen it go).
    let leaving = clients.pop().context("two clients")?;
    drop(leaving);
    let mut newcomer = wait::until("a free slot after a client left", EVENT_DEADLINE, || {
        let gateway = &gateway;
        async move {
            let mut client = gateway.connect("/chat").await?;
            client.send(Message::text("WSWhois nobody")).await?;
            match client.recv().await? {
                Message::Close(Some(frame)) if frame.code == CloseCode::Again => Ok(None),
                message if message == Message::text("WSIs nobody undefined") => Ok(Some(client)),
                other => bail!("expected WSIs or a 1013 close, got {}", describe(&other)),
            }
        }
    })
    .await?;
    newcomer.send(Message::text("hello again")).await?;
    expect_text(&mut clients[0], "(unnamed): hello again").await?;
    Ok(())
}

/// Size of each message in the stalled-reader test: large, so the socket
/// buffers in front of the stalled reader (a few MiB) fill after a few dozen.
const STALL_MESSAGE_LEN: usize = 64 * 1024;

/// The binary message number `message_idx` of the stalled-reader test.
fn stall_message(message_idx: usize) -> Message {
    let mut payload = vec![(message_idx % 251) as u8; STALL_MESSAGE_LEN];
    payload[..8].copy_from_slice(&(message_idx as u64).to_be_bytes());
    Message::binary(payload)
}

async fn stalled_reader_is_closed_with_1008_while_others_get_everything(
    mode: Mode,
) -> anyhow::Result<()> {
    const N_RECEIVERS: usize = 50;
    /// A receiver may lag this many messages behind the sender (well under the queue).
    const MAX_LAG: usize = 8;
    /// Messages sent after the eviction, which the receivers must get as well.
    const N_AFTER_EVICTION: usize = 20;
    /// If the stalled reader is not evicted after this many messages, the test fails.
    const MAX_MESSAGES: usize = 1500;
    // The default queue (1 MiB, 16 of these messages): with the socket
    // buffers in front of the stalled reader, it is full after about a hundred
    // messages; the sender then waits for it (at most the stall timeout,
    // 2 s) until it is evicted.
    let (_docroot, chat, gateway) = start_chat(mode, &["-w", "-m", "60"]).await?;
    let mut clients = connect_joined(&gateway, N_RECEIVERS + 2).await?;
    let mut staller = clients.pop().context("the staller")?;
    let mut sender = clients.pop().context("the sender")?;
    // Nothing else is said before the sender starts, so nothing reaches the
    // staller after its welcome and its socket holds no half-read message
    // when it stops reading.
    command(
        &mut staller,
        "WSHello staller",
        &["WSWelcome staller", "WSUsers"],
    )
    .await?;
    expect_text(&mut sender, "WSJoin staller").await?;
    for receiver in &mut clients {
        expect_text(receiver, "WSJoin staller").await?;
    }
    let staller_tcp = staller.into_tcp();

    let progress: Arc<Vec<AtomicUsize>> =
        Arc::new((0..N_RECEIVERS).map(|_| AtomicUsize::new(0)).collect());
    let progressed = Arc::new(Notify::new());
    let leave_seen = Arc::new(AtomicBool::new(false));
    let receivers = clients
        .into_iter()
        .enumerate()
        .map(|(receiver_idx, mut receiver)| {
            let progress = Arc::clone(&progress);
            let progressed = Arc::clone(&progressed);
            let leave_seen = Arc::clone(&leave_seen);
            async move {
                let mut n_received = 0;
                let mut saw_leave = false;
                loop {
                    let message = receiver.recv().await?;
                    // The sender has no name: with `-w` its text names it `(unnamed)`.
                    if message == Message::text("(unnamed): end") {
                        break;
                    }
                    if message == Message::text("WSLeave staller") && !saw_leave {
                        saw_leave = true;
                        leave_seen.store(true, Ordering::SeqCst);
                        progressed.notify_waiters();
                        continue;
                    }
                    ensure!(
                        message == stall_message(n_received),
                        "receiver {receiver_idx} got {}, expected message {n_received}",
                        describe(&message)
                    );
                    n_received += 1;
                    progress[receiver_idx].store(n_received, Ordering::SeqCst);
                    progressed.notify_waiters();
                }
                ensure!(
                    saw_leave,
                    "receiver {receiver_idx} never saw WSLeave staller"
                );
                anyhow::Ok((n_received, receiver))
            }
        });
    let receivers = tokio::spawn(try_join_all(receivers.map(tokio::spawn)));

    let mut evicted_after = None;
    let mut n_sent = 0;
    while evicted_after.is_none_or(|evicted_after| n_sent < evicted_after + N_AFTER_EVICTION) {
        ensure!(
            n_sent < MAX_MESSAGES,
            "the stalled reader was not evicted after {MAX_MESSAGES} messages of {STALL_MESSAGE_LEN} bytes"
        );
        // Pace the sender so that only the staller falls behind.
        loop {
            let notified = progressed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let slowest = progress
                .iter()
                .map(|count| count.load(Ordering::SeqCst))
                .min()
                .unwrap_or(0);
            if slowest + MAX_LAG >= n_sent {
                break;
            }
            wait::within("the receivers to catch up", EVENT_DEADLINE, notified).await?;
        }
        if evicted_after.is_none() && leave_seen.load(Ordering::SeqCst) {
            evicted_after = Some(n_sent);
        }
        sender.send(stall_message(n_sent)).await?;
        n_sent += 1;
    }
    sender.send(Message::text("end")).await?;
    let receivers = wait::within("the receivers to finish", EVENT_DEADLINE, receivers)
        .await???
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?;
    for (receiver_idx, (n_received, _)) in receivers.iter().enumerate() {
        ensure!(
            *n_received == n_sent,
            "receiver {receiver_idx} got {n_received} of {n_sent} messages"
        );
    }
    ensure!(
        chat.stderr_text()
            .contains("message queue full; closing with 1008"),
        "the chat logged no eviction:\n{}",
        chat.stderr_text()
    );

    // The staller reads at last: what was already on its way, then the close.
    let config = WebSocketConfig::default()
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(64 << 20));
    let mut staller =
        WebSocketStream::from_raw_socket(staller_tcp, Role::Client, Some(config)).await;
    let mut n_late = 0;
    let close = loop {
        let next = wait::within("the staller's close", EVENT_DEADLINE, staller.next()).await?;
        match next {
            Some(Ok(Message::Binary(_))) => n_late += 1,
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(other)) => bail!("the staller got {}", describe(&other)),
            Some(Err(error)) => return Err(error).context("reading as the staller"),
            None => bail!("the staller's connection ended without a close"),
        }
    };
    let close = close.context("the staller's close has a code")?;
    ensure!(
        close.code == CloseCode::Policy && close.reason.as_str() == "too slow: message queue full",
        "the staller was closed with {} {:?}",
        close.code,
        close.reason.as_str()
    );
    ensure!(
        n_late < n_sent,
        "the staller got {n_late} messages, all of {n_sent}"
    );
    Ok(())
}

/// The text message number `message_idx` of a burst: its number, then
/// padding up to `len` bytes (at least 6).
fn burst_message(message_idx: usize, len: usize) -> Message {
    let mut text = format!("{message_idx:06}");
    text.extend(std::iter::repeat_n('m', len.saturating_sub(text.len())));
    Message::text(text)
}

/// Spawns a reader that takes `n_messages` burst messages of `len` bytes,
/// in order, then `end`, and returns its client.
fn spawn_burst_reader(
    reader_idx: usize,
    mut reader: Client,
    n_messages: usize,
    len: usize,
) -> tokio::task::JoinHandle<anyhow::Result<Client>> {
    tokio::spawn(async move {
        for message_idx in 0..n_messages {
            let message = reader.recv().await?;
            ensure!(
                message == burst_message(message_idx, len),
                "reader {reader_idx} got {}, expected message {message_idx}",
                describe(&message)
            );
        }
        expect_text(&mut reader, "end")
            .await
            .with_context(|| format!("reader {reader_idx} after the burst"))?;
        Ok(reader)
    })
}

/// A client's text frame carrying `message`, masked with a fixed key, encoded
/// here rather than by the WebSocket library the chat uses.
fn masked_text_frame(message: &Message) -> anyhow::Result<Vec<u8>> {
    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    let Message::Text(text) = message else {
        bail!("only text frames are encoded here");
    };
    let payload = text.as_bytes();
    let mut frame = vec![0x81];
    match u16::try_from(payload.len()) {
        Ok(len) if len < 126 => frame.push(0x80 | len as u8),
        Ok(len) => {
            frame.push(0x80 | 126);
            frame.extend(len.to_be_bytes());
        }
        Err(_) => bail!("a burst message is shorter than 64 KiB"),
    }
    frame.extend(MASK);
    frame.extend(
        payload
            .iter()
            .zip(MASK.iter().cycle())
            .map(|(byte, mask)| byte ^ mask),
    );
    Ok(frame)
}

/// One client sends `n_messages` text messages of `len` bytes as fast as it
/// can while three others read as fast as they
/// can: each reader gets every message, in order, and nobody is closed.
async fn burst_reaches_every_fast_reader(
    mode: Mode,
    n_messages: usize,
    len: usize,
) -> anyhow::Result<()> {
    const N_READERS: usize = 3;
    let (_docroot, chat, gateway) = start_chat_on_one_thread(mode, &[]).await?;
    let mut clients = connect_joined(&gateway, N_READERS + 1).await?;
    let sender = clients.pop().context("the sender")?;
    let readers: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(reader_idx, reader)| spawn_burst_reader(reader_idx, reader, n_messages, len))
        .collect();
    // The burst is written while the chat is stopped, until the socket
    // buffers in front of it are full or it is all written: the chat then
    // finds it waiting and reads it in large gulps, as from a fast client on
    // a fast machine.
    let mut burst = Vec::new();
    for message_idx in 0..n_messages {
        burst.extend(masked_text_frame(&burst_message(message_idx, len))?);
    }
    burst.extend(masked_text_frame(&Message::text("end"))?);
    let mut sender = sender.into_tcp();
    let chat_pid = Pid::from_raw(i32::try_from(chat.pid())?);
    signal::kill(chat_pid, Signal::SIGSTOP)?;
    let mut n_written = 0;
    while n_written < burst.len() {
        match sender.try_write(&burst[n_written..]) {
            Ok(n) => n_written += n,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(error) => {
                signal::kill(chat_pid, Signal::SIGCONT)?;
                return Err(error).context("writing the burst");
            }
        }
    }
    signal::kill(chat_pid, Signal::SIGCONT)?;
    wait::within(
        "the rest of the burst to be written",
        EVENT_DEADLINE,
        sender.write_all(&burst[n_written..]),
    )
    .await??;
    let mut sender = WebSocketStream::from_raw_socket(sender, Role::Client, None).await;
    let mut readers = try_join_all(readers)
        .await?
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?;
    ensure!(
        !chat.stderr_text().contains("closing with 1008"),
        "the chat evicted someone:\n{}",
        chat.stderr_text()
    );
    // Everyone is still connected, both ways.
    readers[0].send(Message::text("still here")).await?;
    let message = wait::within("the sender to hear back", EVENT_DEADLINE, sender.next())
        .await?
        .context("the sender's connection ended")??;
    ensure!(
        message == Message::text("still here"),
        "the sender got {}",
        describe(&message)
    );
    for reader in &mut readers[1..] {
        expect_text(reader, "still here").await?;
    }
    Ok(())
}

async fn burst_of_300_tiny_messages_reaches_every_fast_reader(mode: Mode) -> anyhow::Result<()> {
    burst_reaches_every_fast_reader(mode, 300, 10).await
}

async fn burst_of_5000_small_messages_reaches_every_fast_reader(mode: Mode) -> anyhow::Result<()> {
    burst_reaches_every_fast_reader(mode, 5000, 100).await
}

/// A sender that does not pace itself, three fast readers and one that never
/// reads: the latter is closed with 1008 once its socket and queue are full,
/// and the others get every message, including those sent after it was gone.
async fn reader_that_never_reads_is_closed_with_1008_during_a_burst(
    mode: Mode,
) -> anyhow::Result<()> {
    const N_READERS: usize = 3;
    /// Messages sent after a reader saw the staller leave.
    const N_AFTER_EVICTION: usize = 50;
    /// If the staller is not evicted after this many messages, the test fails.
    const MAX_MESSAGES: usize = 1500;
    let (_docroot, _chat, gateway) = start_chat(mode, &["-w"]).await?;
    let mut clients = connect_joined(&gateway, N_READERS + 2).await?;
    let mut staller = clients.pop().context("the staller")?;
    let mut sender = clients.pop().context("the sender")?;
    command(
        &mut staller,
        "WSHello staller",
        &["WSWelcome staller", "WSUsers"],
    )
    .await?;
    expect_text(&mut sender, "WSJoin staller").await?;
    for reader in &mut clients {
        expect_text(reader, "WSJoin staller").await?;
    }
    let staller_tcp = staller.into_tcp();

    let leave_seen = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(reader_idx, mut reader)| {
            let leave_seen = Arc::clone(&leave_seen);
            tokio::spawn(async move {
                let mut n_received = 0;
                let mut saw_leave = false;
                loop {
                    let message = reader.recv().await?;
                    // The sender has no name: with `-w` its text names it `(unnamed)`.
                    if message == Message::text("(unnamed): end") {
                        break;
                    }
                    if message == Message::text("WSLeave staller") && !saw_leave {
                        saw_leave = true;
                        leave_seen.store(true, Ordering::SeqCst);
                        continue;
                    }
                    ensure!(
                        message == stall_message(n_received),
                        "reader {reader_idx} got {}, expected message {n_received}",
                        describe(&message)
                    );
                    n_received += 1;
                }
                ensure!(saw_leave, "reader {reader_idx} never saw WSLeave staller");
                anyhow::Ok(n_received)
            })
        })
        .collect();

    // No pacing: the sender goes as fast as the chat takes its messages.
    let mut n_sent = 0;
    while !leave_seen.load(Ordering::SeqCst) {
        ensure!(
            n_sent < MAX_MESSAGES,
            "the reader that never reads was not evicted after {MAX_MESSAGES} messages of {STALL_MESSAGE_LEN} bytes"
        );
        sender.send(stall_message(n_sent)).await?;
        n_sent += 1;
    }
    for _ in 0..N_AFTER_EVICTION {
        sender.send(stall_message(n_sent)).await?;
        n_sent += 1;
    }
    sender.send(Message::text("end")).await?;
    for (reader_idx, reader) in readers.into_iter().enumerate() {
        let n_received = wait::within("a reader to finish", EVENT_DEADLINE, reader).await???;
        ensure!(
            n_received == n_sent,
            "reader {reader_idx} got {n_received} of {n_sent} messages"
        );
    }

    let config = WebSocketConfig::default()
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(64 << 20));
    let mut staller =
        WebSocketStream::from_raw_socket(staller_tcp, Role::Client, Some(config)).await;
    let close = loop {
        let next = wait::within("the staller's close", EVENT_DEADLINE, staller.next()).await?;
        match next {
            Some(Ok(Message::Binary(_))) => {}
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(other)) => bail!("the staller got {}", describe(&other)),
            Some(Err(error)) => return Err(error).context("reading as the staller"),
            None => bail!("the staller's connection ended without a close"),
        }
    };
    let close = close.context("the staller's close has a code")?;
    ensure!(
        close.code == CloseCode::Policy && close.reason.as_str() == "too slow: message queue full",
        "the staller was closed with {} {:?}",
        close.code,
        close.reason.as_str()
    );
    Ok(())
}

async fn with_w_lines_from_clients_name_their_sender_and_never_pass_for_the_chats(
    mode: Mode,
) -> anyhow::Result<()> {
    let (_docroot, _chat, gateway) = start_chat(mode, &["-w"]).await?;
    let mut clients = connect_joined(&gateway, 3).await?;
    let [mallory, alice, watcher] = clients.as_mut_slice() else {
        bail!("three clients");
    };
    command(
        mallory,
        "WSHello mallory",
        &["WSWelcome mallory", "WSUsers"],
    )
    .await?;
    expect_text(alice, "WSJoin mallory").await?;
    expect_text(watcher, "WSJoin mallory").await?;
    command(
        alice,
        "WSHello alice",
        &["WSWelcome alice", "WSUsers mallory"],
    )
    .await?;
    expect_text(mallory, "WSJoin alice").await?;
    expect_text(watcher, "WSJoin alice").await?;
    // Each forgery reaches the others as what it is: a line from mallory.
    let forgeries = [
        "WSWelcome mallory",
        "WSJoin ghost",
        "WSLeave alice",
        "WSUsers ghost",
        "WSIs alice 6.6.6.6",
        "WSError you were kicked",
        "WSJoin",
        "bob: hello",
        "(private) bob: psst",
        "(unnamed): hi",
    ];
    for forgery in forgeries {
        mallory.send(Message::text(forgery)).await?;
    }
    for receiver in [&mut *alice, &mut *watcher] {
        for forgery in forgeries {
            expect_text(receiver, &format!("mallory: {forgery}")).await?;
        }
    }
    // Privately too, and an unnamed client is named as such.
    command(mallory, "WSPrivate alice WSWelcome mallory", &[]).await?;
    expect_text(alice, "(private) mallory: WSWelcome mallory").await?;
    command(watcher, "WSPrivate alice bob: hello", &[]).await?;
    expect_text(alice, "(private) (unnamed): bob: hello").await?;
    watcher.send(Message::text("WSJoin ghost")).await?;
    expect_text(alice, "(unnamed): WSJoin ghost").await?;
    expect_text(mallory, "(unnamed): WSJoin ghost").await?;
    // Binary messages are not lines: they still go out as they came.
    mallory
        .send(Message::binary(b"WSJoin ghost".to_vec()))
        .await?;
    for receiver in [&mut *alice, &mut *watcher] {
        let message = receiver.recv().await?;
        ensure!(
            message == Message::binary(b"WSJoin ghost".to_vec()),
            "expected the binary message, got {}",
            describe(&message)
        );
    }
    Ok(())
}

async fn without_w_commands_are_ordinary_messages(mode: Mode) -> anyhow::Result<()> {
    let (_docroot, _chat, gateway) = start_chat(mode, &[]).await?;
    let mut clients = connect_joined(&gateway, 3).await?;
    let lines = [
        "WSHello bob",
        "WSPrivate bob hi",
        "WSPrivate bob",
        "WSWhois bob",
        "WSHello ",
    ];
    for line in lines {
        clients[0].send(Message::text(line)).await?;
    }
    for receiver in &mut clients[1..] {
        for line in lines {
            expect_text(receiver, line).await?;
        }
    }
    // The sender got none of its own lines, nor any reply.
    clients[1].send(Message::text("done")).await?;
    expect_text(&mut clients[0], "done").await?;
    Ok(())
}

async fn sigterm_closes_every_client_with_1001(mode: Mode) -> anyhow::Result<()> {
    let (docroot, mut chat, gateway) = start_chat(mode, &["-w"]).await?;
    let mut clients = connect_joined(&gateway, 3).await?;
    command(
        &mut clients[0],
        "WSHello ann",
        &["WSWelcome ann", "WSUsers"],
    )
    .await?;
    chat.sigterm()?;
    for client in &mut clients[1..] {
        // A client may hear `WSLeave ann` first if ann's session ended before its own.
        match client.recv().await? {
            message if message == Message::text("WSJoin ann") => {}
            other => bail!("expected WSJoin ann, got {}", describe(&other)),
        }
        loop {
            match client.recv().await? {
                Message::Close(Some(frame)) if frame.code == CloseCode::Away => break,
                message if message == Message::text("WSLeave ann") => continue,
                other => bail!("expected a 1001 close, got {}", describe(&other)),
            }
        }
    }
    clients[0].expect_close_code(CloseCode::Away).await?;
    let status = chat.wait_exit(EXIT_DEADLINE).await?;
    ensure!(status.success(), "websocket_chat exited with {status}");
    ensure!(
        !docroot.path().join("chat").exists(),
        "the socket file is left behind"
    );
    Ok(())
}
