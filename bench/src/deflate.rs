//! `wsgate-bench deflate`: what permessage-deflate costs and saves, relayed
//! and direct, on a JSON chat workload (`websocket_echo` behind wsgate):
//! bytes on the wire each way, CPU time per message of the gateway and of
//! the backend, and the memory of an idle client, each with the client
//! offering permessage-deflate and without.
//!
//! The client speaks its frames by hand and compresses with flate2 (a
//! browser's offer: `permessage-deflate; client_max_window_bits`); every echo
//! is inflated and checked, and a run with errors fails.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use harness::child::Logging;
use harness::{Backend, Gateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::system::{cpu_time, rss};

/// The flags of `wsgate-bench deflate`.
#[derive(Debug, Clone, clap::Args)]
pub struct DeflateArgs {
    /// A short run that only proves everything works.
    #[arg(long)]
    pub smoke: bool,
    /// Seconds of chat traffic per system and setting [default: 5; smoke: 0.3].
    #[arg(long, value_name = "SECS")]
    pub seconds: Option<f64>,
    /// Idle clients held for the memory figure [default: 2000; smoke: 20].
    #[arg(long, value_name = "N")]
    pub idle: Option<usize>,
}

/// The offer browsers send.
const OFFER: &str = "permessage-deflate; client_max_window_bits";
/// Messages in flight per batch.
const IN_FLIGHT: usize = 16;

/// What one system and setting measured.
struct Figures {
    messages: u64,
    bytes_up: u64,
    bytes_down: u64,
    gateway_cpu: Duration,
    backend_cpu: Duration,
    idle_gateway: f64,
    idle_backend: f64,
}

/// Runs every system and setting and prints a markdown table.
pub async fn run(args: DeflateArgs) -> anyhow::Result<()> {
    let seconds = args.seconds.unwrap_or(if args.smoke { 0.3 } else { 5.0 });
    let idle = args.idle.unwrap_or(if args.smoke { 20 } else { 2000 });
    println!(
        "| system | client offers deflate | messages | bytes up per message | bytes down per message | gateway CPU µs per message | backend CPU µs per message | idle client: gateway bytes | idle client: backend bytes |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for direct in [false, true] {
        for deflate in [false, true] {
            let figures = measure(direct, deflate, Duration::from_secs_f64(seconds), idle).await?;
            let per = |value: u64| value as f64 / figures.messages.max(1) as f64;
            let us = |cpu: Duration| cpu.as_secs_f64() * 1e6 / figures.messages.max(1) as f64;
            println!(
                "| wsgate {} | {} | {} | {:.0} | {:.0} | {:.1} | {:.1} | {:.0} | {:.0} |",
                if direct { "direct" } else { "relay" },
                if deflate { "yes" } else { "no" },
                figures.messages,
                per(figures.bytes_up),
                per(figures.bytes_down),
                us(figures.gateway_cpu),
                us(figures.backend_cpu),
                figures.idle_gateway,
                figures.idle_backend,
            );
        }
    }
    Ok(())
}

async fn measure(
    direct: bool,
    deflate: bool,
    duration: Duration,
    n_idle: usize,
) -> anyhow::Result<Figures> {
    let docroot = tempfile::tempdir()?;
    let echo = Backend::start_with(
        "websocket_echo",
        docroot.path(),
        "echo",
        &["-m", "30000"],
        Logging::Quiet,
    )
    .await?;
    let args: &[&str] = if direct {
        &["--direct", "*", "--max-connections", "30000"]
    } else {
        &["--max-connections", "30000"]
    };
    let gateway = Gateway::start_with(docroot.path(), args, Logging::Quiet).await?;
    let (gateway_pid, backend_pid) = (gateway.pid(), echo.pid());

    // Chat traffic on one pipelining connection.
    let mut client = ChatClient::connect(gateway.addr(), deflate).await?;
    client.round(0).await?;
    let (gateway_before, backend_before) = (cpu_time(gateway_pid)?, cpu_time(backend_pid)?);
    let (up_before, down_before) = (client.bytes_up, client.bytes_down);
    let started = Instant::now();
    let mut messages = 0u64;
    while started.elapsed() < duration {
        client.round(messages).await?;
        messages += IN_FLIGHT as u64;
    }
    let gateway_cpu = cpu_time(gateway_pid)?.saturating_sub(gateway_before);
    let backend_cpu = cpu_time(backend_pid)?.saturating_sub(backend_before);
    let (bytes_up, bytes_down) = (client.bytes_up - up_before, client.bytes_down - down_before);
    drop(client);

    // Idle clients, after a message each (so any lazily made state exists).
    let warm: Vec<ChatClient> = open_idle(gateway.addr(), deflate, 50).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (gateway_rss, backend_rss) = (rss(gateway_pid)?, rss(backend_pid)?);
    let held = open_idle(gateway.addr(), deflate, n_idle).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let per = |before: u64, after: u64| after.saturating_sub(before) as f64 / n_idle as f64;
    let idle_gateway = per(gateway_rss, rss(gateway_pid)?);
    let idle_backend = per(backend_rss, rss(backend_pid)?);
    drop((warm, held));
    Ok(Figures {
        messages,
        bytes_up,
        bytes_down,
        gateway_cpu,
        backend_cpu,
        idle_gateway,
        idle_backend,
    })
}

async fn open_idle(addr: SocketAddr, deflate: bool, n: usize) -> anyhow::Result<Vec<ChatClient>> {
    let mut clients = Vec::with_capacity(n);
    for idx in 0..n {
        let mut client = ChatClient::connect(addr, deflate).await?;
        client.send_and_check(&[chat_line(idx as u64)]).await?;
        clients.push(client);
    }
    Ok(clients)
}

/// A JSON chat line like a chat server relays.
fn chat_line(n: u64) -> String {
    format!(
        r#"{{"type":"message","room":"lobby","from":"user{}","text":"message {n}: are we still meeting at the usual place this afternoon?","ts":{}}}"#,
        n % 97,
        1_764_500_000_000 + n
    )
}

/// One client, compressing (when agreed) and checking every echo.
struct ChatClient {
    tcp: TcpStream,
    buffer: Vec<u8>,
    deflate: bool,
    bytes_up: u64,
    bytes_down: u64,
}

impl ChatClient {
    async fn connect(addr: SocketAddr, offer: bool) -> anyhow::Result<ChatClient> {
        let mut tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let extensions = if offer {
            format!("Sec-WebSocket-Extensions: {OFFER}\r\n")
        } else {
            String::new()
        };
        let request = format!(
            "GET /echo HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extensions}\r\n"
        );
        tcp.write_all(request.as_bytes()).await?;
        let mut buffer = Vec::new();
        let head_end = loop {
            if let Some(end) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
                break end + 4;
            }
            if tcp.read_buf(&mut buffer).await? == 0 {
                bail!("the gateway closed during the handshake");
            }
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).to_ascii_lowercase();
        ensure!(
            head.starts_with("http/1.1 101"),
            "handshake refused: {head}"
        );
        let deflate = head.contains("sec-websocket-extensions: permessage-deflate");
        ensure!(
            deflate == offer,
            "deflate agreed: {deflate}, offered: {offer}"
        );
        buffer.drain(..head_end);
        Ok(ChatClient {
            tcp,
            buffer,
            deflate,
            bytes_up: 0,
            bytes_down: 0,
        })
    }

    /// Sends [`IN_FLIGHT`] chat lines at once and checks their echoes.
    async fn round(&mut self, first: u64) -> anyhow::Result<()> {
        let lines: Vec<String> = (first..first + IN_FLIGHT as u64).map(chat_line).collect();
        self.send_and_check(&lines).await
    }

    async fn send_and_check(&mut self, lines: &[String]) -> anyhow::Result<()> {
        let mut out = Vec::new();
        for line in lines {
            let (first, payload) = if self.deflate {
                (0xc1, deflate(line.as_bytes()))
            } else {
                (0x81, line.as_bytes().to_vec())
            };
            frame(&mut out, first, &payload);
        }
        self.tcp.write_all(&out).await?;
        self.bytes_up += out.len() as u64;
        for line in lines {
            let (first, payload) = self.read_frame().await?;
            let text = if first & 0x40 != 0 {
                inflate(&payload)?
            } else {
                payload
            };
            ensure!(first & 0x0f == 1 && text == line.as_bytes(), "wrong echo");
        }
        Ok(())
    }

    async fn read_frame(&mut self) -> anyhow::Result<(u8, Vec<u8>)> {
        loop {
            if self.buffer.len() >= 2 {
                let (len, start) = match self.buffer[1] & 0x7f {
                    126 if self.buffer.len() >= 4 => (
                        usize::from(u16::from_be_bytes([self.buffer[2], self.buffer[3]])),
                        4,
                    ),
                    126 | 127 => (usize::MAX, 0),
                    short => (usize::from(short), 2),
                };
                if len != usize::MAX && self.buffer.len() >= start + len {
                    let first = self.buffer[0];
                    let payload = self.buffer[start..start + len].to_vec();
                    self.buffer.drain(..start + len);
                    self.bytes_down += (start + len) as u64;
                    return Ok((first, payload));
                }
            }
            let n_read =
                tokio::time::timeout(Duration::from_secs(10), self.tcp.read_buf(&mut self.buffer))
                    .await
                    .context("no echo within 10 s")??;
            if n_read == 0 {
                bail!("the connection ended");
            }
        }
    }
}

/// Appends a masked client frame.
fn frame(out: &mut Vec<u8>, first: u8, payload: &[u8]) {
    let mask = [0x11u8, 0x22, 0x33, 0x44];
    out.push(first);
    if payload.len() < 126 {
        out.push(0x80 | payload.len() as u8);
    } else {
        out.push(0x80 | 126);
        out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(
        payload
            .iter()
            .enumerate()
            .map(|(idx, byte)| byte ^ mask[idx % 4]),
    );
}

/// Raw deflate, sync flush, trailer removed (what a browser sends).
fn deflate(data: &[u8]) -> Vec<u8> {
    let mut compress = Compress::new(Compression::default(), false);
    let mut output = Vec::with_capacity(data.len() + 64);
    compress
        .compress_vec(data, &mut output, FlushCompress::Sync)
        .expect("a chat line compresses in one call");
    output.truncate(output.len().saturating_sub(4));
    output
}

fn inflate(payload: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut input = payload.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut output = Vec::with_capacity(4096);
    Decompress::new(false).decompress_vec(&input, &mut output, FlushDecompress::Sync)?;
    Ok(output)
}
