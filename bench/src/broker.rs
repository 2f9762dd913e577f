//! The broker's fan-out next to the chat's: one docroot with
//! `websocket_broker --dialect channels` on `broker` and `websocket_chat` on
//! `chat`, one gateway (relay or direct) in front, and the same load on both:
//! `receivers` clients, one sender at `rate` messages per second. On the
//! broker the receivers join channel `fan` and the sender broadcasts to it;
//! the chat's figure is `scenario::fanout`'s. Every message carries its
//! sequence number and send time; a gap or a reordering counts the rest of
//! that receiver's messages as lost.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use futures_util::{SinkExt, StreamExt};
use harness::Backend;
use harness::child::{ChildGuard, Logging};
use harness::gateway::start_announcing;
use hdrhistogram::Histogram;
use tokio_tungstenite::tungstenite::Message;

use crate::scenario::{
    self, CpuPerOp, Latency, Rate, Target, Ws, connect, histogram, join_counting,
};

/// A gateway with the broker and the chat behind it.
#[derive(Debug)]
pub struct BrokerSystem {
    /// Where clients connect.
    pub addr: std::net::SocketAddr,
    _gateway: ChildGuard,
    _backends: Vec<Backend>,
    _dir: tempfile::TempDir,
}

impl BrokerSystem {
    /// Starts the broker, the chat and `wsgate` (with `--direct '*'` if
    /// `direct`) from the binaries in `dir`, for up to `max_clients` clients.
    pub async fn start(
        dir: &Path,
        direct: bool,
        max_clients: usize,
    ) -> anyhow::Result<BrokerSystem> {
        let temp = tempfile::tempdir()?;
        let docroot = temp.path().join("sockets");
        let max = max_clients.to_string();
        let mut backends = Vec::new();
        for (program, name, args) in [
            (
                "websocket_broker",
                "broker",
                &["--dialect", "channels", "--queue", "4096"][..],
            ),
            ("websocket_chat", "chat", &["--queue", "4096"][..]),
        ] {
            let mut command = Command::new(dir.join(program));
            command
                .arg("-R")
                .arg(&docroot)
                .args(["-n", name, "-m", &max])
                .args(args);
            backends.push(
                Backend::start_command_with(program, command, &docroot.join(name), Logging::Quiet)
                    .await?,
            );
        }
        let mut command = crate::system::gateway_command(dir, &docroot, &max);
        if direct {
            command.args(["--direct", "*"]);
        }
        let (gateway, addr) = start_announcing("wsgate", command, Logging::Quiet).await?;
        Ok(BrokerSystem {
            addr,
            _gateway: gateway,
            _backends: backends,
            _dir: temp,
        })
    }

    /// The plain `ws://` target of `name`.
    pub fn target(&self, name: &str) -> Target {
        Target {
            url: format!("ws://{}/{name}", self.addr),
            addr: self.addr,
            tls: None,
        }
    }
}

/// The chat's fan-out and then the broker's, on `system`, with the same load.
pub async fn chat_and_broker_fanout(
    system: &BrokerSystem,
    receivers: usize,
    rate: u32,
    duration: Duration,
) -> anyhow::Result<(Rate, Rate)> {
    let chat = scenario::fanout(&system.target("chat"), receivers, rate, duration).await?;
    let broker = fanout(&system.target("broker"), receivers, rate, duration).await?;
    Ok((chat, broker))
}

fn broadcast(content: &str) -> Message {
    Message::text(format!(
        r#"{{"command":"broadcast","args":{{"channel":"fan","content":"{content}"}}}}"#
    ))
}

/// `receivers` members of channel `fan`, one sender broadcasting to it at
/// `rate` messages per second for `duration`: deliveries per second,
/// delivery latency, and lost messages (counted in `errors`).
pub async fn fanout(
    target: &Target,
    receivers: usize,
    rate: u32,
    duration: Duration,
) -> anyhow::Result<Rate> {
    let base = Instant::now();
    let n_messages = (f64::from(rate) * duration.as_secs_f64()) as u64;
    let ready = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..receivers {
        let mut ws = connect(target, None).await?;
        ws.send(Message::text(
            r#"{"command":"join","args":{"channel":"fan"}}"#,
        ))
        .await?;
        tasks.push(tokio::spawn(receive(
            ws,
            Arc::clone(&ready),
            base,
            n_messages,
        )));
    }
    let mut sender = connect(target, None).await?;
    // Everyone is in the channel once everyone has seen a marker.
    let wait_start = Instant::now();
    while ready.load(Ordering::Relaxed) < receivers {
        if wait_start.elapsed() > Duration::from_secs(30) {
            bail!(
                "only {} of {receivers} receivers joined",
                ready.load(Ordering::Relaxed)
            );
        }
        sender.send(broadcast("ready?")).await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    let start = Instant::now();
    for seq in 0..n_messages {
        ticks.tick().await;
        let sent = base.elapsed().as_nanos() as u64;
        sender.send(broadcast(&format!("{seq} {sent}"))).await?;
    }
    let (latencies, delivered) = join_counting(tasks).await?;
    let send_time = start.elapsed();
    let _ = sender.close(None).await;
    let expected = n_messages * receivers as u64;
    Ok(Rate {
        per_second: delivered as f64 / send_time.as_secs_f64(),
        mb_per_second: 0.0,
        latency: Latency::of(&latencies),
        errors: expected - delivered.min(expected),
        count: delivered,
        cpu: CpuPerOp::default(),
    })
}

/// One receiver: counts the markers until the first, then checks and times
/// every `"<seq> <sent>"` in order.
async fn receive(
    mut ws: Ws,
    ready: Arc<AtomicUsize>,
    base: Instant,
    n_messages: u64,
) -> (Histogram<u64>, u64) {
    let mut latencies = histogram();
    let mut joined = false;
    let mut next_seq = 0u64;
    while next_seq < n_messages {
        let message = match tokio::time::timeout(Duration::from_secs(60), ws.next()).await {
            Ok(Some(Ok(message))) => message,
            _ => break,
        };
        let Message::Text(text) = message else {
            continue;
        };
        let content = text.as_str().trim_matches('"');
        if content == "ready?" {
            if !joined {
                joined = true;
                ready.fetch_add(1, Ordering::Relaxed);
            }
            continue;
        }
        let parsed = content
            .split_once(' ')
            .and_then(|(seq, sent)| Some((seq.parse::<u64>().ok()?, sent.parse::<u64>().ok()?)));
        match parsed {
            Some((seq, sent)) if seq == next_seq => {
                next_seq += 1;
                let now = base.elapsed().as_nanos() as u64;
                let _ = latencies.record(now.saturating_sub(sent) / 1000);
            }
            // Out of order, a gap or garbage: stop counting; the rest is lost.
            _ => break,
        }
    }
    (latencies, next_seq)
}
