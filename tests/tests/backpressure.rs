//! End-to-end backpressure in relay mode: a client that sends without ever
//! reading its echoes stalls only its own backend link. The gateway does not
//! buffer what the client will not read, and other clients are unaffected.

use std::path::Path;

use anyhow::Context;
use harness::http::{self, HandshakeRequest};
use std::net::SocketAddr;

use harness::{Backend, EVENT_DEADLINE, Gateway, Message, wait};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Size of each message the stalled client sends.
const MESSAGE_SIZE: usize = 1 << 20;
/// Messages it tries to send: far more than every buffer on the way can hold.
const N_MESSAGES: usize = 256;
/// The most the gateway's resident memory may grow while the client stalls.
const MAX_RSS_GROWTH: u64 = 48 << 20;

/// VmRSS of process `pid`, in bytes.
fn resident_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .context("VmRSS in /proc/<pid>/status")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kib * 1024)
}

/// The send queue (`tx`) and receive queue (`rx`) of the IPv4 TCP socket
/// whose local address is `local` and peer is `peer`, from /proc/net/tcp.
fn tcp_queues(local: SocketAddr, peer: SocketAddr) -> anyhow::Result<Option<(u64, u64)>> {
    let hex = |addr: SocketAddr| -> anyhow::Result<String> {
        let SocketAddr::V4(v4) = addr else {
            anyhow::bail!("{addr} is not IPv4");
        };
        // /proc/net/tcp prints the address as a little-endian u32, then the port.
        Ok(format!(
            "{:08X}:{:04X}",
            u32::from_le_bytes(v4.ip().octets()),
            v4.port()
        ))
    };
    let (local, peer) = (hex(local)?, hex(peer)?);
    let table = std::fs::read_to_string("/proc/net/tcp")?;
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(1) == Some(&local.as_str()) && fields.get(2) == Some(&peer.as_str()) {
            let queues = fields.get(4).context("tx_queue:rx_queue")?;
            let (tx, rx) = queues.split_once(':').context("tx:rx")?;
            return Ok(Some((
                u64::from_str_radix(tx, 16)?,
                u64::from_str_radix(rx, 16)?,
            )));
        }
    }
    Ok(None)
}

/// A masked binary frame of `payload_len` zero bytes with a zero mask key,
/// which leaves the payload as it is.
fn binary_frame(payload_len: usize) -> Vec<u8> {
    let mut frame = vec![0x82, 0x80 | 127];
    frame.extend_from_slice(&(payload_len as u64).to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0, 0]);
    frame.resize(frame.len() + payload_len, 0);
    frame
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_stalls_only_its_own_link() -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let _echo = Backend::start("websocket_echo", docroot.path(), "echo", &[]).await?;
    let gateway = Gateway::start(docroot.path(), &[]).await?;
    let mut other = gateway.connect("/echo").await?;
    other.round_trip(Message::text("warm up")).await?;
    let rss_before = resident_bytes(gateway.pid())?;

    // The stalled client: a raw connection that completes the handshake,
    // then only writes.
    let mut stalled = TcpStream::connect(gateway.addr()).await?;
    let client_addr = stalled.local_addr()?;
    let request = HandshakeRequest::new("/echo").render(&gateway.addr().to_string());
    stalled.write_all(request.as_bytes()).await?;
    let response = http::read_response(&mut stalled).await?;
    anyhow::ensure!(response.status == 101, "{response}");
    let frame = binary_frame(MESSAGE_SIZE);
    let flood = tokio::spawn(async move {
        for _ in 0..N_MESSAGES {
            stalled.write_all(&frame).await?;
        }
        anyhow::Ok(stalled)
    });

    // Meanwhile another client of the same backend keeps its round trips.
    for round in 0..50 {
        let message = Message::text(format!("round {round}"));
        assert_eq!(other.round_trip(message.clone()).await?, message);
    }
    // The fact to wait for: the gateway has stopped reading the stalled
    // client. Its side of the connection holds unread bytes while the client's
    // side holds unsent ones: both kernel buffers are full. A gateway that
    // buffered without bound would keep draining its side and never get here.
    let gateway_addr = gateway.addr();
    wait::until(
        "the gateway to stop reading the stalled client",
        EVENT_DEADLINE,
        || {
            let queues = tcp_queues(client_addr, gateway_addr)
                .and_then(|client| Ok((client, tcp_queues(gateway_addr, client_addr)?)));
            async move {
                match queues? {
                    (Some((client_tx, _)), Some((_, gateway_rx))) => {
                        Ok((client_tx > 0 && gateway_rx > 0).then_some(()))
                    }
                    _ => Ok(None),
                }
            }
        },
    )
    .await?;
    let growth = resident_bytes(gateway.pid())?.saturating_sub(rss_before);
    assert!(
        growth < MAX_RSS_GROWTH,
        "the gateway grew by {growth} bytes while a client would not read"
    );
    assert!(
        !flood.is_finished(),
        "all {N_MESSAGES} MiB were accepted although nobody read the echoes"
    );
    flood.abort();
    Ok(())
}
