//! The first request of a connection, which the gateway reads itself before
//! hyper (an upgrade is answered without it), and what comes after it on the
//! same connection: frames sent with the head, a request after a refused
//! upgrade, an upgrade after a plain request. Bare TCP, so that each byte
//! the client sends and when is in the test's hands.

use anyhow::{Context, bail};
use harness::{Backend, Gateway, HandshakeRequest, Mode, both_modes};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A masked client text frame carrying `text` (at most 125 bytes).
fn text_frame(text: &str) -> Vec<u8> {
    let mask = [0x11, 0x22, 0x33, 0x44];
    let mut frame = vec![0x81, 0x80 | u8::try_from(text.len()).expect("a short text")];
    frame.extend_from_slice(&mask);
    frame.extend(
        text.bytes()
            .enumerate()
            .map(|(idx, byte)| byte ^ mask[idx % 4]),
    );
    frame
}

/// The unmasked server text frame carrying `text` (at most 125 bytes).
fn server_text_frame(text: &str) -> Vec<u8> {
    let mut frame = vec![0x81, u8::try_from(text.len()).expect("a short text")];
    frame.extend_from_slice(text.as_bytes());
    frame
}

/// Reads one response head from `stream`: its status, and the bytes that
/// came after the head in the same reads.
async fn read_head(stream: &mut TcpStream) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut read = Vec::new();
    let end = loop {
        if let Some(end) = read.windows(4).position(|window| window == b"\r\n\r\n") {
            break end;
        }
        if stream.read_buf(&mut read).await? == 0 {
            bail!(
                "closed before a response head: {:?}",
                String::from_utf8_lossy(&read)
            );
        }
    };
    let head = String::from_utf8_lossy(&read[..end]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("no status in {head:?}"))?;
    Ok((status, read.split_off(end + 4)))
}

/// Reads from `stream`, after `already` (bytes read with the head), until it
/// has `expected`'s length, and checks it is `expected`.
async fn expect_bytes(
    stream: &mut TcpStream,
    mut already: Vec<u8>,
    expected: &[u8],
) -> anyhow::Result<()> {
    while already.len() < expected.len() {
        if stream.read_buf(&mut already).await? == 0 {
            bail!("closed after {already:?}, expecting {expected:?}");
        }
    }
    assert_eq!(already, expected);
    Ok(())
}

async fn start_echo(mode: Mode) -> anyhow::Result<(tempfile::TempDir, Backend, Gateway)> {
    let docroot = tempfile::tempdir()?;
    let htdocs = docroot.path().join("htdocs");
    std::fs::create_dir(&htdocs)?;
    std::fs::write(htdocs.join("index.html"), "<p>hello</p>\n")?;
    let echo = Backend::start("websocket_echo", docroot.path(), "echo", &[]).await?;
    let htdocs_arg = htdocs.to_string_lossy().into_owned();
    let gateway =
        Gateway::start(docroot.path(), &mode.with_args(&["--htdocs", &htdocs_arg])).await?;
    Ok((docroot, echo, gateway))
}

fn upgrade_request(addr: SocketAddr, path: &str) -> Vec<u8> {
    HandshakeRequest::new(path)
        .render(&addr.to_string())
        .into_bytes()
}

async fn frames_sent_with_the_request_head_reach_the_backend(mode: Mode) -> anyhow::Result<()> {
    let (_docroot, _echo, gateway) = start_echo(mode).await?;
    let mut stream = TcpStream::connect(gateway.addr()).await?;
    // Head and two frames in one write: the gateway reads them together.
    let mut bytes = upgrade_request(gateway.addr(), "/echo");
    bytes.extend(text_frame("first"));
    bytes.extend(text_frame("second"));
    stream.write_all(&bytes).await?;
    let (status, after) = read_head(&mut stream).await?;
    assert_eq!(status, 101);
    let mut expected = server_text_frame("first");
    expected.extend(server_text_frame("second"));
    expect_bytes(&mut stream, after, &expected).await
}

async fn a_refused_first_upgrade_leaves_the_connection_to_http(mode: Mode) -> anyhow::Result<()> {
    let (_docroot, _echo, gateway) = start_echo(mode).await?;
    let mut stream = TcpStream::connect(gateway.addr()).await?;
    // No such backend: refused with 404, and the connection stays open.
    stream
        .write_all(&upgrade_request(gateway.addr(), "/nobody"))
        .await?;
    let response = harness::http::read_response(&mut stream).await?;
    assert_eq!(response.status, 404, "{response}");
    // The next request on it is an upgrade that hyper reads.
    stream
        .write_all(&upgrade_request(gateway.addr(), "/echo"))
        .await?;
    let (status, after) = read_head(&mut stream).await?;
    assert_eq!(status, 101);
    stream.write_all(&text_frame("after a 404")).await?;
    expect_bytes(&mut stream, after, &server_text_frame("after a 404")).await
}

async fn an_upgrade_after_a_plain_request_is_relayed(mode: Mode) -> anyhow::Result<()> {
    let (_docroot, _echo, gateway) = start_echo(mode).await?;
    let mut stream = TcpStream::connect(gateway.addr()).await?;
    // A page, then the page's WebSocket on the same connection, the
    // upgrade's frame sent with its head: hyper reads both requests.
    let page = format!(
        "GET /index.html HTTP/1.1\r\nHost: {}\r\n\r\n",
        gateway.addr()
    );
    stream.write_all(page.as_bytes()).await?;
    let response = harness::http::read_response(&mut stream).await?;
    assert_eq!(response.status, 200, "{response}");
    assert_eq!(response.body_text(), "<p>hello</p>\n");
    let mut bytes = upgrade_request(gateway.addr(), "/echo");
    bytes.extend(text_frame("after a page"));
    stream.write_all(&bytes).await?;
    let (status, after) = read_head(&mut stream).await?;
    assert_eq!(status, 101);
    expect_bytes(&mut stream, after, &server_text_frame("after a page")).await
}

async fn a_head_sent_a_byte_at_a_time_is_upgraded(mode: Mode) -> anyhow::Result<()> {
    let (_docroot, _echo, gateway) = start_echo(mode).await?;
    let mut stream = TcpStream::connect(gateway.addr()).await?;
    stream.set_nodelay(true)?;
    for byte in upgrade_request(gateway.addr(), "/echo") {
        stream.write_all(&[byte]).await?;
    }
    let (status, after) = read_head(&mut stream).await?;
    assert_eq!(status, 101);
    stream.write_all(&text_frame("slowly")).await?;
    expect_bytes(&mut stream, after, &server_text_frame("slowly")).await
}

both_modes!(
    frames_sent_with_the_request_head_reach_the_backend,
    a_refused_first_upgrade_leaves_the_connection_to_http,
    an_upgrade_after_a_plain_request_is_relayed,
    a_head_sent_a_byte_at_a_time_is_upgraded,
);
