//! Raw mode (`--raw GLOB`), for backends written for the original ouistiti: no
//! OPEN and no ACCEPT, the client's payload bytes as they are (plus a NUL with
//! `--raw-nul`), and from the backend one text message per NUL-terminated
//! piece, or per read when there is no NUL.
//!
//! The raw backends are written here, on tokio's `UnixListener`, and record
//! every byte they receive.

use std::path::Path;

use anyhow::Context;
use harness::{Backend, CloseCode, EVENT_DEADLINE, Gateway, Message, wait};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

/// What a [`RawBackend`] writes back.
#[derive(Debug, Clone, Copy)]
enum RawReplies {
    /// Every read is written back as it is; a read of `hang up` closes the link
    /// and a read of `two in one` is answered with `first\0second\0` in one write.
    Echo,
    /// Client messages must end with NUL; each one is answered `ack:<message>\0`.
    AckNulTerminated,
}

/// A raw backend in the test process, recording what it receives.
struct RawBackend {
    received: mpsc::UnboundedReceiver<Vec<u8>>,
    task: JoinHandle<()>,
}

impl RawBackend {
    fn start(socket_path: &Path, replies: RawReplies) -> anyhow::Result<RawBackend> {
        let listener = UnixListener::bind(socket_path)
            .with_context(|| format!("binding {}", socket_path.display()))?;
        let (sender, received) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut links = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                links.spawn(serve_raw_link(stream, replies, sender.clone()));
            }
        });
        Ok(RawBackend { received, task })
    }

    /// Collects received bytes until there are `n_bytes` of them.
    async fn expect_bytes(&mut self, n_bytes: usize) -> anyhow::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        while bytes.len() < n_bytes {
            let chunk = wait::within(
                &format!("{n_bytes} bytes at the raw backend (got {bytes:?})"),
                EVENT_DEADLINE,
                self.received.recv(),
            )
            .await?
            .context("the raw backend stopped")?;
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    }
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_raw_link(
    mut stream: UnixStream,
    replies: RawReplies,
    received: mpsc::UnboundedSender<Vec<u8>>,
) -> std::io::Result<()> {
    let mut pending = Vec::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n_read = stream.read(&mut buffer).await?;
        if n_read == 0 {
            return Ok(());
        }
        let chunk = &buffer[..n_read];
        let _ = received.send(chunk.to_vec());
        match replies {
            RawReplies::Echo if chunk == b"hang up" => return Ok(()),
            RawReplies::Echo if chunk == b"two in one" => {
                stream.write_all(b"first\0second\0").await?;
            }
            RawReplies::Echo => stream.write_all(chunk).await?,
            RawReplies::AckNulTerminated => {
                pending.extend_from_slice(chunk);
                while let Some(nul_idx) = pending.iter().position(|b| *b == 0) {
                    let message: Vec<u8> = pending.drain(..=nul_idx).collect();
                    let mut reply = b"ack:".to_vec();
                    reply.extend_from_slice(&message);
                    stream.write_all(&reply).await?;
                }
            }
        }
    }
}

#[tokio::test]
async fn raw_backend_gets_bare_payloads_and_its_reads_come_back_as_text() -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let mut raw = RawBackend::start(&docroot.path().join("raw-echo"), RawReplies::Echo)?;
    let _framed = Backend::start("websocket_echo", docroot.path(), "echo", &[]).await?;
    let gateway = Gateway::start(docroot.path(), &["--raw", "raw-*"]).await?;
    let mut client = gateway.connect("/raw-echo").await?;
    // No OPEN record: the first bytes on the link are the client's payload.
    for text in ["hello", "second message", "ünïcødé"] {
        assert_eq!(
            client.round_trip(Message::text(text)).await?,
            Message::text(text)
        );
        assert_eq!(raw.expect_bytes(text.len()).await?, text.as_bytes());
    }
    // A NUL from the backend ends a message, even in one write.
    client.send(Message::text("two in one")).await?;
    assert_eq!(client.recv().await?, Message::text("first"));
    assert_eq!(client.recv().await?, Message::text("second"));
    raw.expect_bytes("two in one".len()).await?;
    // Names outside the raw globs still speak the framed protocol.
    let mut framed_client = gateway.connect("/echo").await?;
    assert_eq!(
        framed_client.round_trip(Message::text("framed")).await?,
        Message::text("framed")
    );
    Ok(())
}

#[tokio::test]
async fn raw_nul_ends_each_client_message_with_a_nul_byte() -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let mut raw = RawBackend::start(
        &docroot.path().join("jsonrpc"),
        RawReplies::AckNulTerminated,
    )?;
    let gateway = Gateway::start(docroot.path(), &["--raw", "jsonrpc", "--raw-nul"]).await?;
    let mut client = gateway.connect("/jsonrpc").await?;
    for text in ["one", r#"{"jsonrpc":"2.0","method":"ping","id":1}"#] {
        assert_eq!(
            client.round_trip(Message::text(text)).await?,
            Message::text(format!("ack:{text}"))
        );
        let mut expected = text.as_bytes().to_vec();
        expected.push(0);
        assert_eq!(raw.expect_bytes(expected.len()).await?, expected);
    }
    Ok(())
}

#[tokio::test]
async fn raw_backend_closing_its_link_closes_the_client() -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let _raw = RawBackend::start(&docroot.path().join("raw-echo"), RawReplies::Echo)?;
    let gateway = Gateway::start(docroot.path(), &["--raw", "raw-*"]).await?;
    let mut client = gateway.connect("/raw-echo").await?;
    client.send(Message::text("hang up")).await?;
    // Raw mode has no close codes: the end of the link is a normal close.
    client
        .expect_close_with(CloseCode::Normal, "backend closed")
        .await?;
    Ok(())
}

#[tokio::test]
async fn raw_mode_passes_binary_as_bytes_and_sends_what_is_not_utf8_as_binary() -> anyhow::Result<()>
{
    let docroot = tempfile::tempdir()?;
    let mut raw = RawBackend::start(&docroot.path().join("raw-echo"), RawReplies::Echo)?;
    let gateway = Gateway::start(docroot.path(), &["--raw", "raw-*"]).await?;
    let mut client = gateway.connect("/raw-echo").await?;
    // A binary client message reaches the backend as its bytes; the backend's
    // read of them is not UTF-8, so it comes back as a binary message.
    let not_utf8 = vec![0xff, 0xfe, 0x80];
    assert_eq!(
        client.round_trip(Message::binary(not_utf8.clone())).await?,
        Message::binary(not_utf8.clone())
    );
    assert_eq!(raw.expect_bytes(not_utf8.len()).await?, not_utf8);
    // Binary bytes that happen to be UTF-8 come back as text: raw mode has
    // no message kinds, and the gateway's rule is "UTF-8 is text".
    assert_eq!(
        client
            .round_trip(Message::binary(b"plain".to_vec()))
            .await?,
        Message::text("plain")
    );
    raw.expect_bytes("plain".len()).await?;
    Ok(())
}
