//! What only direct mode promises: the gateway hands the client's socket to
//! the backend and steps out. Bytes pipelined behind the handshake survive
//! the hand-over, the gateway keeps no descriptor, and the client outlives
//! the gateway but not its backend. (The message suites run in both modes
//! through `both_modes!`.)

use std::path::Path;

use anyhow::{Context, bail};
use harness::http::HandshakeRequest;
use harness::{
    Backend, CloseCode, EVENT_DEADLINE, EXIT_DEADLINE, Gateway, Message, Mode, bin_path, wait,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn start_direct_echo() -> anyhow::Result<(tempfile::TempDir, Backend, Gateway)> {
    let docroot = tempfile::tempdir()?;
    let echo = Backend::start("websocket_echo", docroot.path(), "echo", &["-m", "100"]).await?;
    let gateway = Gateway::start(docroot.path(), Mode::Direct.gateway_args()).await?;
    Ok((docroot, echo, gateway))
}

/// A masked client text frame, as RFC 6455 requires of clients.
fn masked_text_frame(text: &str) -> Vec<u8> {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let payload = text.as_bytes();
    assert!(payload.len() < 126, "a short frame is enough here");
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

#[tokio::test]
async fn first_message_pipelined_behind_the_handshake_is_echoed() -> anyhow::Result<()> {
    let (_docroot, _echo, gateway) = start_direct_echo().await?;
    let mut request = HandshakeRequest::new("/echo")
        .render(&gateway.addr().to_string())
        .into_bytes();
    request.extend_from_slice(&masked_text_frame("pipelined"));
    let mut tcp = TcpStream::connect(gateway.addr()).await?;
    // One write: the frame sits in the gateway's HTTP read buffer at hand-over.
    tcp.write_all(&request).await?;
    let expected_frame = [&[0x81u8, 9][..], b"pipelined"].concat();
    let received = wait::within("the 101 and the echo", EVENT_DEADLINE, async {
        let mut received = Vec::new();
        loop {
            if let Some(head_end) = find(&received, b"\r\n\r\n") {
                let rest = &received[head_end + 4..];
                if rest.len() >= expected_frame.len() {
                    return Ok::<_, anyhow::Error>(received);
                }
            }
            if tcp.read_buf(&mut received).await? == 0 {
                bail!(
                    "connection closed; got {:?}",
                    String::from_utf8_lossy(&received)
                );
            }
        }
    })
    .await??;
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    let head_end = find(&received, b"\r\n\r\n").context("head")? + 4;
    assert_eq!(&received[head_end..], &expected_frame[..]);
    Ok(())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

fn n_descriptors(pid: u32) -> anyhow::Result<usize> {
    let dir = Path::new("/proc").join(pid.to_string()).join("fd");
    Ok(std::fs::read_dir(&dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .count())
}

#[tokio::test]
async fn gateway_holds_no_descriptor_for_handed_over_clients() -> anyhow::Result<()> {
    const N_CLIENTS: usize = 20;
    let (_docroot, _echo, gateway) = start_direct_echo().await?;
    // One client first, so every lazily created descriptor of the gateway exists.
    let mut warm_up = gateway.connect("/echo").await?;
    warm_up.round_trip(Message::text("warm up")).await?;
    warm_up.close(CloseCode::Normal, "done").await?;
    let before = n_descriptors(gateway.pid())?;
    let mut clients = Vec::new();
    for client_idx in 0..N_CLIENTS {
        let mut client = gateway.connect("/echo").await?;
        let message = Message::text(format!("client {client_idx}"));
        assert_eq!(client.round_trip(message.clone()).await?, message);
        clients.push(client);
    }
    // The gateway drops its copy right after the hand-over: wait for that fact.
    let pid = gateway.pid();
    wait::until(
        &format!("the gateway back at {before} descriptors"),
        EVENT_DEADLINE,
        || async move {
            let now = n_descriptors(pid)?;
            Ok((now <= before).then_some(now))
        },
    )
    .await?;
    for client in &mut clients {
        assert_eq!(
            client.round_trip(Message::text("still here")).await?,
            Message::text("still here")
        );
    }
    Ok(())
}

#[tokio::test]
async fn direct_clients_outlive_a_gateway_restart_and_its_sigterm() -> anyhow::Result<()> {
    let (docroot, _echo, mut gateway) = start_direct_echo().await?;
    let mut first = gateway.connect("/echo").await?;
    first.round_trip(Message::text("before")).await?;
    // SIGTERM: the gateway exits 0 and has nothing to close for this client.
    gateway.sigterm()?;
    let status = gateway.wait_exit(EXIT_DEADLINE).await?;
    assert_eq!(status.code(), Some(0), "{status}");
    assert_eq!(
        first.round_trip(Message::text("after sigterm")).await?,
        Message::text("after sigterm")
    );
    // A new gateway, then SIGKILL of it: the first client does not notice either.
    let restarted = Gateway::start(docroot.path(), Mode::Direct.gateway_args()).await?;
    let mut second = restarted.connect("/echo").await?;
    second.round_trip(Message::text("second")).await?;
    drop(restarted);
    for client in [&mut first, &mut second] {
        assert_eq!(
            client.round_trip(Message::text("after kill")).await?,
            Message::text("after kill")
        );
    }
    Ok(())
}

#[tokio::test]
async fn backend_death_after_hand_over_closes_its_clients() -> anyhow::Result<()> {
    let (_docroot, mut echo, gateway) = start_direct_echo().await?;
    let mut client = gateway.connect("/echo").await?;
    client.round_trip(Message::text("hello")).await?;
    echo.kill()?;
    // The backend held the only descriptor: the client's connection ends,
    // and with nobody left to write one, without a close frame.
    loop {
        match client.recv_any().await {
            Ok(Message::Close(frame)) => {
                anyhow::bail!("a killed backend cannot send a close frame, got {frame:?}")
            }
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            Ok(other) => anyhow::bail!("unexpected {other:?}"),
            Err(error) if format!("{error:#}").contains("timed out") => return Err(error),
            // Reset or ended without a close frame: the connection is gone.
            Err(_) => break,
        }
    }
    Ok(())
}

#[tokio::test]
async fn raw_and_direct_for_the_same_names_is_a_startup_error() -> anyhow::Result<()> {
    let output = std::process::Command::new(bin_path("wsgate")?)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--raw",
            "legacy-*",
            "--direct",
            "*",
        ])
        .output()?;
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("legacy-*") && stderr.contains("direct"),
        "{stderr}"
    );
    Ok(())
}
