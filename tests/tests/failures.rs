//! When something goes wrong on either side: a backend that crashes, is not
//! started, or closes; a client that vanishes, sends too much, or sends text
//! that is not UTF-8. Each failure stays with the connection it belongs to,
//! with the close code or status the issue specifies, and the gateway keeps
//! serving everyone else.

use harness::{
    AcceptReply, Backend, Client, CloseCode, FakeBackend, FakeBehaviour, Gateway, HandshakeRequest,
    LinkEvent, Message, Mode, Record, both_modes,
};
use tempfile::TempDir;
use tokio_tungstenite::tungstenite::protocol::frame::coding::Data;

/// One frame to send: opcode, payload, FIN bit.
type FrameSpec<'a> = (Data, &'a [u8], bool);

/// Sends `text` and checks that it comes back.
async fn check_echo(client: &mut Client, text: &str) -> anyhow::Result<()> {
    let echoed = client.round_trip(Message::text(text)).await?;
    anyhow::ensure!(
        echoed == Message::text(text),
        "sent {text:?}, got {echoed:?}"
    );
    Ok(())
}

// The client-facing failures behave the same when the backend holds the socket.
both_modes!(
    oversize_message_closes_with_1009_and_the_backend_keeps_serving,
    a_client_still_sending_its_oversize_message_reads_its_1009,
    invalid_utf8_text_closes_with_1007,
);

/// A docroot with `websocket_echo` on `echo` and a gateway with `gateway_args`.
async fn start_echo(gateway_args: &[&str]) -> anyhow::Result<(TempDir, Backend, Gateway)> {
    let docroot = tempfile::tempdir()?;
    let backend = Backend::start("websocket_echo", docroot.path(), "echo", &[]).await?;
    let gateway = Gateway::start(docroot.path(), gateway_args).await?;
    Ok((docroot, backend, gateway))
}

#[tokio::test]
async fn killed_backend_closes_only_its_own_clients_with_1011() -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let mut doomed = Backend::start("websocket_echo", docroot.path(), "doomed", &[]).await?;
    let _survivor = Backend::start("websocket_echo", docroot.path(), "survivor", &[]).await?;
    let gateway = Gateway::start(docroot.path(), &[]).await?;
    let mut doomed_clients = [
        gateway.connect("/doomed").await?,
        gateway.connect("/doomed").await?,
    ];
    let mut survivor_client = gateway.connect("/survivor").await?;
    for client in &mut doomed_clients {
        check_echo(client, "before the crash").await?;
    }
    check_echo(&mut survivor_client, "before the crash").await?;

    doomed.kill()?;

    for client in &mut doomed_clients {
        client.expect_close_code(CloseCode::Error).await?;
    }
    check_echo(&mut survivor_client, "after the crash").await?;
    check_echo(&mut gateway.connect("/survivor").await?, "new client").await?;
    // The crashed backend left its socket file behind, and nobody listens on it.
    let response = gateway.handshake(&HandshakeRequest::new("/doomed")).await?;
    assert_eq!(response.status, 502, "{response}");
    Ok(())
}

#[tokio::test]
async fn backend_not_started_is_refused_with_404() -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    std::fs::create_dir(docroot.path().join("group"))?;
    let gateway = Gateway::start(docroot.path(), &[]).await?;
    for path in ["/echo", "/group/item", "/nothing/here"] {
        let response = gateway.handshake(&HandshakeRequest::new(path)).await?;
        assert_eq!(response.status, 404, "{path}: {response}");
    }
    Ok(())
}

#[tokio::test]
async fn socket_file_without_a_listener_is_refused_with_502() -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    // Bind and close: the file stays, connecting to it is refused (a crashed backend).
    drop(std::os::unix::net::UnixListener::bind(
        docroot.path().join("stale"),
    )?);
    let gateway = Gateway::start(docroot.path(), &[]).await?;
    let response = gateway.handshake(&HandshakeRequest::new("/stale")).await?;
    assert_eq!(response.status, 502, "{response}");
    assert!(!response.body_text().trim().is_empty(), "no reason given");
    Ok(())
}

#[tokio::test]
async fn backend_close_code_reaches_the_client() -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    // With one client allowed, websocket_echo closes the second with 1013.
    let mut echo = Backend::start("websocket_echo", docroot.path(), "echo", &["-m", "1"]).await?;
    let gateway = Gateway::start(docroot.path(), &[]).await?;
    let mut first = gateway.connect("/echo").await?;
    check_echo(&mut first, "first").await?;
    let mut second = gateway.connect("/echo").await?;
    // The backend's reason travels with its code.
    second
        .expect_close_with(CloseCode::Again, "too many clients, try again later")
        .await?;
    // A backend stopping politely closes its sessions with 1001.
    echo.sigterm()?;
    first
        .expect_close_with(CloseCode::Away, "server shutting down")
        .await?;
    Ok(())
}

/// How a test client disappears without a close handshake.
#[derive(Debug, Clone, Copy)]
enum Vanishing {
    /// Drops the TCP connection (FIN).
    Drop,
    /// Resets it (RST, `SO_LINGER` 0).
    Reset,
}

#[tokio::test]
async fn vanished_client_closes_its_backend_link_and_the_gateway_keeps_serving()
-> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let mut backend = FakeBackend::start(
        &docroot.path().join("recorder"),
        FakeBehaviour::Echo(AcceptReply::default()),
    )?;
    let gateway = Gateway::start(docroot.path(), &[]).await?;
    for vanishing in [Vanishing::Drop, Vanishing::Reset] {
        let mut client = gateway.connect("/recorder").await?;
        check_echo(&mut client, "before vanishing").await?;
        let meta = backend.expect_open().await?;
        let link_idx = match backend.next_record_or_end().await? {
            LinkEvent::Received {
                link_idx,
                record: Record::Text(text),
            } if text == "before vanishing" => link_idx,
            other => panic!("{vanishing:?}: expected the TEXT record, got {other:?}"),
        };
        let tcp = client.into_tcp();
        if let Vanishing::Reset = vanishing {
            tcp.set_zero_linger()?;
        }
        drop(tcp);
        // The link ends, possibly after a CLOSE record that is empty or 1001
        // (1006 never goes on the wire), and nothing else crosses it.
        loop {
            match backend.next_record_or_end().await? {
                LinkEvent::Received {
                    link_idx: idx,
                    record: Record::Close(info),
                } if idx == link_idx => {
                    assert!(
                        info.as_ref().is_none_or(|info| info.code == 1001),
                        "{vanishing:?}: CLOSE {info:?}"
                    );
                    continue;
                }
                LinkEvent::Closed { link_idx: idx } if idx == link_idx => break,
                other => panic!(
                    "{vanishing:?}: expected link {link_idx} of client {} to close, got {other:?}",
                    meta.peer
                ),
            }
        }
        let mut next = gateway.connect("/recorder").await?;
        check_echo(&mut next, "after the vanishing").await?;
        next.close(CloseCode::Normal, "done").await?;
        // Drain the records of the check client before the next round.
        backend.expect_open().await?;
        while !matches!(
            backend.next_record_or_end().await?,
            LinkEvent::Closed { .. }
        ) {}
    }
    Ok(())
}

async fn oversize_message_closes_with_1009_and_the_backend_keeps_serving(
    mode: Mode,
) -> anyhow::Result<()> {
    let (_docroot, mut echo, gateway) =
        start_echo(&mode.with_args(&["--max-message-size", "1024"])).await?;
    // At the limit is fine.
    let mut client = gateway.connect("/echo").await?;
    let at_limit = Message::binary(vec![7u8; 1024]);
    assert_eq!(client.round_trip(at_limit.clone()).await?, at_limit);
    // (what, frames to send: opcode, payload, FIN)
    let cases: [(&str, Vec<FrameSpec>); 3] = [
        ("binary of 2048", vec![(Data::Binary, &[1u8; 2048], true)]),
        ("text of 2048", vec![(Data::Text, &[b'a'; 2048], true)]),
        (
            "three fragments of 512",
            vec![
                (Data::Text, &[b'a'; 512], false),
                (Data::Continue, &[b'b'; 512], false),
                (Data::Continue, &[b'c'; 512], true),
            ],
        ),
    ];
    for (what, frames) in cases {
        let mut client = gateway.connect("/echo").await?;
        for (opcode, payload, is_final) in frames {
            // The gateway may close while the frames are still going out.
            if client
                .send_frame(opcode, payload.to_vec(), is_final)
                .await
                .is_err()
            {
                break;
            }
        }
        client
            .expect_close_code(CloseCode::Size)
            .await
            .map_err(|error| error.context(what))?;
    }
    echo.check_running()?;
    check_echo(&mut gateway.connect("/echo").await?, "still serving").await?;
    // The first client was never affected.
    check_echo(&mut client, "first client").await?;
    Ok(())
}

async fn a_client_still_sending_its_oversize_message_reads_its_1009(
    mode: Mode,
) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_docroot, _echo, gateway) =
        start_echo(&mode.with_args(&["--max-message-size", "1024"])).await?;
    let mut stream = tokio::net::TcpStream::connect(gateway.addr()).await?;
    let request = HandshakeRequest::new("/echo").render(&gateway.addr().to_string());
    stream.write_all(request.as_bytes()).await?;
    let response = harness::http::read_response(&mut stream).await?;
    assert_eq!(response.status, 101, "{response}");
    // A 32 MiB binary frame, far more than the socket buffers between the
    // two hold: the side that refuses it at its header must read the rest
    // for the client to get this far, and must not reset the connection
    // before the client has read its close frame.
    const LEN: usize = 32 << 20;
    let mut header = vec![0x82, 0x80 | 127];
    header.extend_from_slice(&(LEN as u64).to_be_bytes());
    header.extend_from_slice(&[0, 0, 0, 0]);
    stream.write_all(&header).await?;
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..LEN / chunk.len() {
        stream.write_all(&chunk).await?;
    }
    let mut close = [0u8; 4];
    stream.read_exact(&mut close).await?;
    assert_eq!(close[0], 0x88, "a close frame first: {close:?}");
    assert_eq!(u16::from_be_bytes([close[2], close[3]]), 1009);
    Ok(())
}

async fn invalid_utf8_text_closes_with_1007(mode: Mode) -> anyhow::Result<()> {
    let (_docroot, _echo, gateway) = start_echo(mode.gateway_args()).await?;
    // (what, frames: opcode, payload, FIN)
    let cases: [(&str, Vec<FrameSpec>); 4] = [
        ("one frame", vec![(Data::Text, b"h\xffi", true)]),
        (
            "an overlong encoding",
            vec![(Data::Text, b"\xc0\xaf", true)],
        ),
        (
            "a message ending inside a character",
            vec![(Data::Text, b"caf\xc3", true)],
        ),
        (
            "an invalid continuation frame",
            vec![
                (Data::Text, b"valid start ", false),
                (Data::Continue, b"\xed\xa0\x80", true),
            ],
        ),
    ];
    for (what, frames) in cases {
        let mut client = gateway.connect("/echo").await?;
        for (opcode, payload, is_final) in frames {
            client
                .send_frame(opcode, payload.to_vec(), is_final)
                .await?;
        }
        client
            .expect_close_code(CloseCode::Invalid)
            .await
            .map_err(|error| error.context(what))?;
    }
    check_echo(&mut gateway.connect("/echo").await?, "valid text").await?;
    Ok(())
}
