//! Messages through the gateway to `websocket_echo` and back: every kind and
//! size of message comes back intact and as one message, and concurrent
//! clients each get their own data.

use futures_util::future::try_join_all;
use harness::client::describe;
use harness::{Backend, CloseCode, Gateway, Message, Mode, all_modes};
use tempfile::TempDir;
use tokio_tungstenite::tungstenite::protocol::frame::coding::Data;

all_modes!(
    echo_returns_each_message_with_its_kind_and_bytes,
    echo_returns_one_mebibyte_messages_intact,
    fragmented_message_is_echoed_as_one_message,
    hundred_concurrent_clients_each_get_their_own_data,
    single_threaded_gateway_and_echo_serve_concurrent_clients,
    client_close_is_answered_with_its_code,
    pipelined_burst_is_echoed_whole_and_in_order,
);

/// A docroot with `websocket_echo` on `echo` (given `backend_args`) and a gateway on it.
async fn start_echo(
    mode: Mode,
    backend_args: &[&str],
) -> anyhow::Result<(TempDir, Backend, Gateway)> {
    let docroot = tempfile::tempdir()?;
    let backend = Backend::start("websocket_echo", docroot.path(), "echo", backend_args).await?;
    let gateway = Gateway::start(docroot.path(), mode.gateway_args()).await?;
    Ok((docroot, backend, gateway))
}

async fn echo_returns_each_message_with_its_kind_and_bytes(mode: Mode) -> anyhow::Result<()> {
    let (_docroot, _echo, gateway) = start_echo(mode, &[]).await?;
    let mut client = gateway.connect("/echo").await?;
    let messages = [
        Message::text("hello"),
        Message::text("ünïcødé ✓ 🦀"),
        Message::binary(vec![0u8, 159, 255, 0, 10, 13]),
        Message::text(""),
        Message::binary(Vec::new()),
        Message::text("{\"looks\":\"like json\"}"),
    ];
    for message in messages {
        let echoed = client.round_trip(message.clone()).await?;
        assert_eq!(
            echoed,
            message,
            "echo of {} came back as {}",
            describe(&message),
            describe(&echoed)
        );
    }
    Ok(())
}

async fn echo_returns_one_mebibyte_messages_intact(mode: Mode) -> anyhow::Result<()> {
    let (_docroot, _echo, gateway) = start_echo(mode, &[]).await?;
    let mut client = gateway.connect("/echo").await?;
    let binary: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    let text: String = (0..1 << 20)
        .map(|i: u32| char::from(b'a' + (i % 26) as u8))
        .collect();
    for message in [Message::binary(binary), Message::text(text)] {
        let echoed = client.round_trip(message.clone()).await?;
        assert!(
            echoed == message,
            "1 MiB {} came back as {}",
            describe(&message),
            describe(&echoed)
        );
    }
    Ok(())
}

async fn fragmented_message_is_echoed_as_one_message(mode: Mode) -> anyhow::Result<()> {
    let (_docroot, _echo, gateway) = start_echo(mode, &[]).await?;
    let mut client = gateway.connect("/echo").await?;
    // (first frame's opcode, fragments, the whole message expected back)
    let cases: [(Data, &[&[u8]], Message); 3] = [
        (
            Data::Text,
            &[b"frag", b"men", b"ted"],
            Message::text("fragmented"),
        ),
        (
            Data::Binary,
            &[&[0, 1], &[], &[2, 255]],
            Message::binary(vec![0, 1, 2, 255]),
        ),
        // A character split across two frames is valid once reassembled.
        (Data::Text, &[b"caf\xc3", b"\xa9"], Message::text("café")),
    ];
    for (opcode, fragments, expected) in cases {
        let last_idx = fragments.len() - 1;
        for (fragment_idx, fragment) in fragments.iter().enumerate() {
            let opcode = if fragment_idx == 0 {
                opcode
            } else {
                Data::Continue
            };
            client
                .send_frame(opcode, fragment.to_vec(), fragment_idx == last_idx)
                .await?;
        }
        assert_eq!(client.recv().await?, expected, "fragments {fragments:?}");
    }
    Ok(())
}

async fn hundred_concurrent_clients_each_get_their_own_data(mode: Mode) -> anyhow::Result<()> {
    // The echo serves 50 clients by default; make room for all of them.
    let (_docroot, _echo, gateway) = start_echo(mode, &["-m", "200"]).await?;
    each_of_hundred_clients_gets_its_own_data(&gateway).await
}

/// `--threads 1` on both sides: the gateway and the echo each run every
/// client on one thread (tokio's current-thread runtime), and still serve
/// a hundred clients at once.
async fn single_threaded_gateway_and_echo_serve_concurrent_clients(
    mode: Mode,
) -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let _echo = Backend::start(
        "websocket_echo",
        docroot.path(),
        "echo",
        &["-m", "200", "--threads", "1"],
    )
    .await?;
    let gateway = Gateway::start(docroot.path(), &mode.with_args(&["--threads", "1"])).await?;
    each_of_hundred_clients_gets_its_own_data(&gateway).await
}

/// A hundred clients of `/echo` at once, each sending five messages of its
/// own and getting each back.
async fn each_of_hundred_clients_gets_its_own_data(gateway: &Gateway) -> anyhow::Result<()> {
    const N_CLIENTS: usize = 100;
    const N_MESSAGES: usize = 5;
    let clients = try_join_all((0..N_CLIENTS).map(|_| gateway.connect("/echo"))).await?;
    let sessions = clients
        .into_iter()
        .enumerate()
        .map(|(client_idx, mut client)| async move {
            for message_idx in 0..N_MESSAGES {
                let message = if message_idx % 2 == 0 {
                    Message::text(format!("client {client_idx} message {message_idx}"))
                } else {
                    Message::binary(vec![client_idx as u8; message_idx * 100 + client_idx])
                };
                let echoed = client.round_trip(message.clone()).await?;
                anyhow::ensure!(
                    echoed == message,
                    "client {client_idx} sent {} and got {}",
                    describe(&message),
                    describe(&echoed)
                );
            }
            anyhow::Ok(client)
        });
    let clients = try_join_all(sessions.map(tokio::spawn))
        .await?
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?;
    assert_eq!(clients.len(), N_CLIENTS);
    Ok(())
}

async fn client_close_is_answered_with_its_code(mode: Mode) -> anyhow::Result<()> {
    let (_docroot, _echo, gateway) = start_echo(mode, &[]).await?;
    let mut client = gateway.connect("/echo").await?;
    assert_eq!(
        client.round_trip(Message::text("before close")).await?,
        Message::text("before close")
    );
    let reply = client.close(CloseCode::Normal, "done").await?;
    // The close handshake answers with the same code and reason.
    let reply = reply.map(|frame| (frame.code, frame.reason.as_str().to_owned()));
    assert_eq!(reply, Some((CloseCode::Normal, "done".to_owned())));
    // The echo is still there for the next client.
    let mut next = gateway.connect("/echo").await?;
    assert_eq!(
        next.round_trip(Message::text("still there")).await?,
        Message::text("still there")
    );
    Ok(())
}

/// Many messages sent at once: the session batches its replies (deferring
/// flushes while the next message is readable), and every echo still comes
/// back, whole and in order; the close handshake after them is unchanged.
async fn pipelined_burst_is_echoed_whole_and_in_order(mode: Mode) -> anyhow::Result<()> {
    const N_MESSAGES: usize = 500;
    let (_docroot, _echo, gateway) = start_echo(mode, &[]).await?;
    let mut client = gateway.connect("/echo").await?;
    let message = |idx: usize| {
        if idx.is_multiple_of(2) {
            Message::text(format!("message {idx}"))
        } else {
            Message::binary(idx.to_be_bytes().to_vec())
        }
    };
    for idx in 0..N_MESSAGES {
        client.send(message(idx)).await?;
    }
    for idx in 0..N_MESSAGES {
        let echoed = client.recv().await?;
        assert_eq!(echoed, message(idx), "echo {idx}");
    }
    let reply = client.close(CloseCode::Normal, "burst done").await?;
    let reply = reply.map(|frame| (frame.code, frame.reason.as_str().to_owned()));
    assert_eq!(reply, Some((CloseCode::Normal, "burst done".to_owned())));
    Ok(())
}
