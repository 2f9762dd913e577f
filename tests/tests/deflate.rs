//! permessage-deflate (RFC 7692) end to end, relayed, direct and over TLS:
//! the `101` answers an offer, compressed messages cross both ways, the
//! backend sees plain messages, `--no-deflate` declines, a small message
//! that inflates past the limit is closed with 1009 in bounded memory, and
//! misplaced RSV1 bits are 1002.
//!
//! The client here writes and parses its frames by hand and compresses with
//! flate2 directly, so nothing of `link::deflate` checks itself.

use anyhow::{Context, bail, ensure};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use harness::http::{self, HandshakeRequest, HttpResponse};
use harness::tls::{self as wss, ClientStream};
use harness::{Backend, EVENT_DEADLINE, Gateway, Mode, wait};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const OPCODE_TEXT: u8 = 1;
const OPCODE_BINARY: u8 = 2;
const OPCODE_CLOSE: u8 = 8;
const RSV1: u8 = 0x40;
const FIN: u8 = 0x80;

/// A client that speaks WebSocket frames byte by byte.
struct RawClient {
    stream: ClientStream,
    buffer: Vec<u8>,
    response: HttpResponse,
}

/// One frame from the server: its first byte and its payload.
struct ServerFrame {
    first: u8,
    payload: Vec<u8>,
}

impl RawClient {
    /// Upgrades to `path` on the gateway (TLS in [`Mode::Tls`]) with the
    /// given `Sec-WebSocket-Extensions`, and expects a `101`.
    async fn connect(
        gateway: &Gateway,
        mode: Mode,
        path: &str,
        extensions: Option<&str>,
    ) -> anyhow::Result<RawClient> {
        let (mut stream, host) = if mode == Mode::Tls {
            let addr = gateway.tls_addr().context("a TLS listener")?;
            let config = gateway.tls_client_config().context("the test CA")?;
            let tls = wss::connect(addr, wss::SERVER_NAME, config).await?;
            (
                ClientStream::Tls(Box::new(tls)),
                format!("{}:{}", wss::SERVER_NAME, addr.port()),
            )
        } else {
            let tcp = TcpStream::connect(gateway.addr()).await?;
            tcp.set_nodelay(true)?;
            (ClientStream::Plain(tcp), gateway.addr().to_string())
        };
        let mut request = HandshakeRequest::new(path);
        if let Some(extensions) = extensions {
            request = request.header("Sec-WebSocket-Extensions", extensions);
        }
        stream.write_all(request.render(&host).as_bytes()).await?;
        let response = wait::within(
            "the handshake's response",
            EVENT_DEADLINE,
            http::read_response_from(&mut stream),
        )
        .await??;
        if response.status != 101 {
            bail!("handshake refused: {response}");
        }
        Ok(RawClient {
            stream,
            buffer: Vec::new(),
            response,
        })
    }

    /// Sends one frame, masked as a client must.
    async fn send_frame(&mut self, first: u8, payload: &[u8]) -> anyhow::Result<()> {
        let mask = [0x5au8, 0x13, 0xc7, 0x02];
        let mut frame = vec![first];
        match payload.len() {
            len if len < 126 => frame.push(0x80 | len as u8),
            len if len <= 0xffff => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(
            payload
                .iter()
                .enumerate()
                .map(|(idx, byte)| byte ^ mask[idx % 4]),
        );
        self.stream.write_all(&frame).await?;
        Ok(())
    }

    /// Sends `data` compressed, split into `n_fragments` frames (RSV1 on the first only).
    async fn send_compressed(
        &mut self,
        opcode: u8,
        data: &[u8],
        n_fragments: usize,
    ) -> anyhow::Result<()> {
        let compressed = deflate(data);
        let piece = compressed.len().div_ceil(n_fragments).max(1);
        let pieces: Vec<&[u8]> = compressed.chunks(piece).collect();
        for (idx, piece) in pieces.iter().enumerate() {
            let opcode = if idx == 0 { opcode | RSV1 } else { 0 };
            let fin = if idx + 1 == pieces.len() { FIN } else { 0 };
            self.send_frame(fin | opcode, piece).await?;
        }
        Ok(())
    }

    /// The next frame from the server (which never masks).
    async fn recv_frame(&mut self) -> anyhow::Result<ServerFrame> {
        wait::within("a frame from the gateway", EVENT_DEADLINE, async {
            loop {
                if let Some((frame, used)) = parse_server_frame(&self.buffer)? {
                    self.buffer.drain(..used);
                    return Ok(frame);
                }
                if self.stream.read_buf(&mut self.buffer).await? == 0 {
                    bail!("the connection ended");
                }
            }
        })
        .await?
    }

    /// The next data message: its opcode, whether it came compressed, and its payload.
    async fn recv_message(&mut self) -> anyhow::Result<(u8, bool, Vec<u8>)> {
        let first = self.recv_frame().await?;
        let opcode = first.first & 0x0f;
        if opcode >= 8 {
            bail!("expected a data frame, got opcode {opcode}");
        }
        let compressed = first.first & RSV1 != 0;
        let mut payload = first.payload;
        let mut fin = first.first & FIN != 0;
        while !fin {
            let next = self.recv_frame().await?;
            if next.first & RSV1 != 0 {
                bail!("RSV1 on a continuation frame");
            }
            payload.extend_from_slice(&next.payload);
            fin = next.first & FIN != 0;
        }
        if compressed {
            payload = inflate(&payload)?;
        }
        Ok((opcode, compressed, payload))
    }

    /// Reads frames until a close frame and returns its code.
    async fn expect_close_code(&mut self) -> anyhow::Result<u16> {
        loop {
            let frame = self.recv_frame().await?;
            if frame.first & 0x0f == OPCODE_CLOSE {
                let code = frame
                    .payload
                    .first_chunk::<2>()
                    .map(|code| u16::from_be_bytes(*code))
                    .context("a close code")?;
                return Ok(code);
            }
        }
    }
}

/// A whole unmasked frame at the front of `buffer`, and its length.
fn parse_server_frame(buffer: &[u8]) -> anyhow::Result<Option<(ServerFrame, usize)>> {
    if buffer.len() < 2 {
        return Ok(None);
    }
    if buffer[1] & 0x80 != 0 {
        bail!("the server masked a frame");
    }
    let (len, start) = match buffer[1] & 0x7f {
        126 if buffer.len() >= 4 => (usize::from(u16::from_be_bytes([buffer[2], buffer[3]])), 4),
        127 if buffer.len() >= 10 => {
            let mut len = [0u8; 8];
            len.copy_from_slice(&buffer[2..10]);
            (usize::try_from(u64::from_be_bytes(len))?, 10)
        }
        126 | 127 => return Ok(None),
        short => (usize::from(short), 2),
    };
    if buffer.len() < start + len {
        return Ok(None);
    }
    let frame = ServerFrame {
        first: buffer[0],
        payload: buffer[start..start + len].to_vec(),
    };
    Ok(Some((frame, start + len)))
}

/// Raw deflate with a sync flush, its final 00 00 ff ff removed (RFC 7692 §7.2.1).
fn deflate(data: &[u8]) -> Vec<u8> {
    let mut compress = Compress::new(Compression::best(), false);
    let mut output = Vec::with_capacity(data.len() / 2 + 1024);
    let mut consumed = 0;
    loop {
        output.reserve(64 * 1024);
        let before = compress.total_in();
        compress
            .compress_vec(&data[consumed..], &mut output, FlushCompress::Sync)
            .expect("deflate works");
        consumed += usize::try_from(compress.total_in() - before).expect("fits");
        if consumed == data.len() && output.len() < output.capacity() {
            break;
        }
    }
    assert!(output.ends_with(&[0, 0, 0xff, 0xff]));
    output.truncate(output.len() - 4);
    output
}

/// Inflates a compressed message's payload (trailer appended).
fn inflate(payload: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut input = payload.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut decompress = Decompress::new(false);
    let mut output = Vec::with_capacity(payload.len() * 8 + 1024);
    loop {
        let before = decompress.total_in();
        decompress.decompress_vec(
            &input[usize::try_from(decompress.total_in())?..],
            &mut output,
            FlushDecompress::Sync,
        )?;
        if decompress.total_in() as usize == input.len() && output.len() < output.capacity() {
            return Ok(output);
        }
        if decompress.total_in() == before && output.len() < output.capacity() {
            bail!("the gateway's compressed message does not inflate");
        }
        output.reserve(output.capacity());
    }
}

/// A JSON chat line, compressible like the real thing.
fn chat_line(n: usize) -> String {
    format!(
        r#"{{"type":"message","room":"lobby","from":"user{n}","text":"hello everyone, this is message number {n} of the compression test","ts":1764500000{n:03}}}"#
    )
}

async fn start_echo(
    mode: Mode,
    extra: &[&str],
) -> anyhow::Result<(tempfile::TempDir, Backend, Gateway)> {
    let docroot = tempfile::tempdir()?;
    let echo = Backend::start("websocket_echo", docroot.path(), "echo", &[]).await?;
    let gateway = Gateway::start(docroot.path(), &mode.with_args(extra)).await?;
    Ok((docroot, echo, gateway))
}

const BROWSER_OFFER: &str = "permessage-deflate; client_max_window_bits";

async fn compressed_messages_cross_both_ways(mode: Mode) -> anyhow::Result<()> {
    let (_docroot, _echo, gateway) = start_echo(mode, &[]).await?;
    let mut client = RawClient::connect(&gateway, mode, "/echo", Some(BROWSER_OFFER)).await?;
    assert_eq!(
        client.response.header("sec-websocket-extensions"),
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
    );
    // Compressed text in one frame and in three; the echo comes back compressed.
    let line = chat_line(1);
    for n_fragments in [1, 3] {
        client
            .send_compressed(OPCODE_TEXT, line.as_bytes(), n_fragments)
            .await?;
        let (opcode, compressed, payload) = client.recv_message().await?;
        assert_eq!((opcode, compressed), (OPCODE_TEXT, true));
        assert_eq!(payload, line.as_bytes());
    }
    // Plain from the client is fine too; the answer is compressed all the same.
    let binary: Vec<u8> = chat_line(2).into_bytes().repeat(100);
    client.send_frame(FIN | OPCODE_BINARY, &binary).await?;
    let (opcode, compressed, payload) = client.recv_message().await?;
    assert_eq!((opcode, compressed), (OPCODE_BINARY, true));
    assert_eq!(payload, binary);
    // A large compressed message crosses in pieces of the gateway's choosing.
    let large = chat_line(3).repeat(20_000);
    client
        .send_compressed(OPCODE_TEXT, large.as_bytes(), 4)
        .await?;
    let (_, compressed, payload) = client.recv_message().await?;
    assert!(compressed);
    assert_eq!(payload, large.as_bytes());
    // Even a short message comes back compressed.
    client.send_compressed(OPCODE_TEXT, b"hi", 1).await?;
    assert_eq!(
        client.recv_message().await?,
        (OPCODE_TEXT, true, b"hi".to_vec())
    );
    client
        .send_frame(FIN | OPCODE_CLOSE, &1000u16.to_be_bytes())
        .await?;
    assert_eq!(client.expect_close_code().await?, 1000);
    Ok(())
}

async fn a_message_inflating_past_the_limit_is_1009_in_bounded_memory(
    mode: Mode,
) -> anyhow::Result<()> {
    let (_docroot, echo, gateway) = start_echo(mode, &["--max-message-size", "1048576"]).await?;
    // Whoever holds the client's socket inflates: the gateway, or the backend.
    let pid = if mode == Mode::Direct {
        echo.pid()
    } else {
        gateway.pid()
    };
    let mut client = RawClient::connect(&gateway, mode, "/echo", Some(BROWSER_OFFER)).await?;
    client.send_compressed(OPCODE_TEXT, b"warm up", 1).await?;
    client.recv_message().await?;
    let peak_before = peak_memory(pid)?;
    // 256 MiB of zeros compress to about 256 KiB.
    let bomb = deflate(&vec![0u8; 256 << 20]);
    assert!(bomb.len() < 512 * 1024, "{} bytes", bomb.len());
    client.send_frame(FIN | RSV1 | OPCODE_BINARY, &bomb).await?;
    assert_eq!(client.expect_close_code().await?, 1009);
    let grown = peak_memory(pid)?.saturating_sub(peak_before);
    assert!(
        grown < 16 << 20,
        "peak memory grew by {grown} bytes inflating a 1 MiB-limited message"
    );
    // Others are not affected.
    let mut other = RawClient::connect(&gateway, mode, "/echo", Some(BROWSER_OFFER)).await?;
    other.send_compressed(OPCODE_TEXT, b"still here", 1).await?;
    assert_eq!(other.recv_message().await?.2, b"still here");
    Ok(())
}

async fn misplaced_rsv1_bits_are_1002(mode: Mode) -> anyhow::Result<()> {
    let (_docroot, _echo, gateway) = start_echo(mode, &[]).await?;
    // A ping with RSV1.
    let mut client = RawClient::connect(&gateway, mode, "/echo", Some(BROWSER_OFFER)).await?;
    client.send_frame(FIN | RSV1 | 9, b"").await?;
    assert_eq!(client.expect_close_code().await?, 1002);
    // A continuation frame with RSV1.
    let mut client = RawClient::connect(&gateway, mode, "/echo", Some(BROWSER_OFFER)).await?;
    let compressed = deflate(chat_line(4).as_bytes());
    let (first, rest) = compressed.split_at(compressed.len() / 2);
    client.send_frame(RSV1 | OPCODE_TEXT, first).await?;
    client.send_frame(FIN | RSV1, rest).await?;
    assert_eq!(client.expect_close_code().await?, 1002);
    // RSV1 without the extension agreed.
    let mut client = RawClient::connect(&gateway, mode, "/echo", None).await?;
    assert_eq!(client.response.header("sec-websocket-extensions"), None);
    client
        .send_frame(FIN | RSV1 | OPCODE_TEXT, &deflate(b"hello"))
        .await?;
    assert_eq!(client.expect_close_code().await?, 1002);
    Ok(())
}

harness::all_modes!(
    compressed_messages_cross_both_ways,
    a_message_inflating_past_the_limit_is_1009_in_bounded_memory,
    misplaced_rsv1_bits_are_1002
);

/// A client with compression that the chat reaches through the gateway's
/// carrier link (fan-out, docs/link-protocol.md) gets each broadcast
/// compressed by its relay, in order, like any relayed client.
#[tokio::test]
async fn a_carried_client_gets_the_chats_broadcasts_compressed() -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let chat = Backend::start("websocket_chat", docroot.path(), "chat", &[]).await?;
    let gateway = Gateway::start_with_metrics(docroot.path(), &[]).await?;
    // The first client makes the chat ask for a carrier; later ones are seated on it.
    let mut sender = gateway.connect("/chat").await?;
    wait::until("the gateway's carrier link", EVENT_DEADLINE, || async {
        let open = gateway
            .scrape()
            .await?
            .value("wsgate_carrier_links_open", &[])?;
        Ok((open == 1.0).then_some(()))
    })
    .await?;
    let mut client =
        RawClient::connect(&gateway, Mode::Relay, "/chat", Some(BROWSER_OFFER)).await?;
    ensure!(
        client
            .response
            .header("sec-websocket-extensions")
            .is_some_and(|value| value.starts_with("permessage-deflate")),
        "compression agreed"
    );
    // The chat has seated it once a line from it reaches the sender.
    client.send_compressed(OPCODE_TEXT, b"ready", 1).await?;
    sender.expect_text("ready").await?;
    ensure!(
        chat.stderr_text().contains("carried=true"),
        "the compressed client is carried:\n{}",
        chat.stderr_text()
    );
    for n in 0..5 {
        let line = chat_line(n);
        sender.send(harness::Message::text(line.clone())).await?;
        assert_eq!(
            client.recv_message().await?,
            (OPCODE_TEXT, true, line.into_bytes()),
            "broadcast {n}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn no_deflate_declines_every_offer() -> anyhow::Result<()> {
    let (_docroot, _echo, gateway) = start_echo(Mode::Relay, &["--no-deflate"]).await?;
    let client = RawClient::connect(&gateway, Mode::Relay, "/echo", Some(BROWSER_OFFER)).await?;
    assert_eq!(client.response.header("sec-websocket-extensions"), None);
    // Per name: `echo` declines, `other` still negotiates.
    let docroot = tempfile::tempdir()?;
    let _echo = Backend::start("websocket_echo", docroot.path(), "echo", &[]).await?;
    let _other = Backend::start("websocket_echo", docroot.path(), "other", &[]).await?;
    let gateway = Gateway::start(docroot.path(), &["--no-deflate-for", "ec*"]).await?;
    let declined = RawClient::connect(&gateway, Mode::Relay, "/echo", Some(BROWSER_OFFER)).await?;
    assert_eq!(declined.response.header("sec-websocket-extensions"), None);
    let mut agreed =
        RawClient::connect(&gateway, Mode::Relay, "/other", Some(BROWSER_OFFER)).await?;
    assert!(
        agreed
            .response
            .header("sec-websocket-extensions")
            .is_some_and(|value| value.starts_with("permessage-deflate"))
    );
    agreed
        .send_compressed(OPCODE_TEXT, chat_line(5).as_bytes(), 1)
        .await?;
    assert_eq!(agreed.recv_message().await?.2, chat_line(5).as_bytes());
    Ok(())
}

#[tokio::test]
async fn a_malformed_or_unacceptable_offer_is_declined_not_refused() -> anyhow::Result<()> {
    let (_docroot, _echo, gateway) = start_echo(Mode::Relay, &[]).await?;
    for offer in [
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; bogus",
        "permessage-deflate;;",
    ] {
        let client = RawClient::connect(&gateway, Mode::Relay, "/echo", Some(offer)).await?;
        assert_eq!(
            client.response.header("sec-websocket-extensions"),
            None,
            "{offer}"
        );
    }
    let client = RawClient::connect(
        &gateway,
        Mode::Relay,
        "/echo",
        Some("permessage-deflate; bogus, permessage-deflate; server_max_window_bits=10"),
    )
    .await?;
    assert_eq!(
        client.response.header("sec-websocket-extensions"),
        Some(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10"
        )
    );
    Ok(())
}

/// The peak resident memory (VmHWM) of process `pid`, in bytes.
fn peak_memory(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmHWM in /proc/<pid>/status")?;
    Ok(kib * 1024)
}
