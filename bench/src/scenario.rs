//! The load scenarios. Each connects real WebSocket clients (tokio-tungstenite,
//! over tokio-rustls for a wss [`Target`]) to a URL, checks every payload it
//! gets back, and counts errors; a figure from a run with errors is reported
//! as such, never silently. The CPU time of the processes around a scenario
//! is the driver's business (`wsgate-bench`), from each scenario's count.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use harness::tls::ClientStream;
use hdrhistogram::Histogram;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::TcpSocket;
use tokio::sync::Barrier;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{WebSocketStream, client_async};

use crate::pipeline;
use crate::system::System;
use crate::tls::SERVER_NAME;

pub(crate) type Ws = WebSocketStream<ClientStream>;

/// Where a scenario's clients connect: `ws://` or, with `tls`, `wss://`.
#[derive(Debug, Clone)]
pub struct Target {
    /// The WebSocket URL (its host is the address, not the TLS server name).
    pub url: String,
    /// The TCP address.
    pub addr: SocketAddr,
    /// The client configuration of a wss target.
    pub tls: Option<Arc<ClientConfig>>,
}

/// Latency percentiles, in microseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Latency {
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
}

impl Latency {
    pub(crate) fn of(histogram: &Histogram<u64>) -> Latency {
        Latency {
            p50: histogram.value_at_quantile(0.5),
            p99: histogram.value_at_quantile(0.99),
            p999: histogram.value_at_quantile(0.999),
        }
    }
}

/// What a throughput scenario measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rate {
    /// Operations (round trips, messages, handshakes, deliveries) per second.
    pub per_second: f64,
    /// Payload megabytes per second (one direction).
    pub mb_per_second: f64,
    /// Latency, where the scenario measures it.
    pub latency: Latency,
    /// Mismatched payloads, failed connections, lost messages.
    pub errors: u64,
    /// Operations completed, what `per_second` counts.
    pub count: u64,
    /// CPU time per operation of each process, filled in by the driver.
    pub cpu: CpuPerOp,
}

/// CPU time per operation, in microseconds, over the whole scenario
/// (connecting its clients included).
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuPerOp {
    /// The gateway or nginx (master and workers); `None` without one.
    pub front: Option<f64>,
    /// The server processes: the baseline server, or the backends.
    pub server: f64,
    /// The load generator itself.
    pub generator: f64,
}

pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Waits for every client task and merges their latencies and counts.
pub(crate) async fn join_counting(
    tasks: Vec<JoinHandle<(Histogram<u64>, u64)>>,
) -> anyhow::Result<(Histogram<u64>, u64)> {
    let mut latencies = histogram();
    let mut total = 0;
    for task in tasks {
        let (histogram, n) = task.await?;
        latencies.add(&histogram).context("merging histograms")?;
        total += n;
    }
    Ok((latencies, total))
}

pub(crate) async fn connect(target: &Target, source: Option<IpAddr>) -> anyhow::Result<Ws> {
    let socket = TcpSocket::new_v4()?;
    if let Some(source) = source {
        socket.bind(SocketAddr::new(source, 0))?;
    }
    let tcp = socket.connect(target.addr).await?;
    tcp.set_nodelay(true)?;
    let stream = match &target.tls {
        None => ClientStream::Plain(tcp),
        Some(config) => {
            let name = ServerName::try_from(SERVER_NAME)?;
            let tls = TlsConnector::from(Arc::clone(config))
                .connect(name, tcp)
                .await
                .context("TLS handshake")?;
            ClientStream::Tls(Box::new(tls))
        }
    };
    let (ws, _) = client_async(target.url.as_str(), stream)
        .await
        .context("handshake")?;
    Ok(ws)
}

/// A payload of `size` bytes that names its connection and sequence number.
fn payload(connection: usize, seq: u64, size: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(size.max(16));
    bytes.extend_from_slice(&(connection as u64).to_be_bytes());
    bytes.extend_from_slice(&seq.to_be_bytes());
    bytes.resize(size.max(16), (seq % 251) as u8);
    bytes
}

/// `connections` clients, each with one `size`-byte message in flight, for
/// `duration`: round trips per second and their latency.
pub async fn echo_round_trips(
    target: &Target,
    connections: usize,
    size: usize,
    duration: Duration,
) -> anyhow::Result<Rate> {
    echo_pipelined(target, connections, 1, size, duration).await
}

/// `connections` clients, each keeping `in_flight` messages of `size` bytes
/// outstanding, for `duration`; every echo is checked in order. The clients
/// write prebuilt frames and parse the echoes themselves (`pipeline`), so
/// they are not what limits the rate.
pub async fn echo_pipelined(
    target: &Target,
    connections: usize,
    in_flight: usize,
    size: usize,
    duration: Duration,
) -> anyhow::Result<Rate> {
    let barrier = Arc::new(Barrier::new(connections));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for connection in 0..connections {
        let (target, barrier, errors) = (target.clone(), Arc::clone(&barrier), Arc::clone(&errors));
        tasks.push(tokio::spawn(async move {
            let ws = connect(&target, None).await;
            barrier.wait().await;
            let Ok(ws) = ws else {
                errors.fetch_add(1, Ordering::Relaxed);
                return (histogram(), 0u64);
            };
            let end = Instant::now() + duration;
            let outcome = pipeline::run_connection(
                ws.into_inner(),
                connection,
                in_flight,
                size,
                end,
                histogram(),
            )
            .await;
            match outcome {
                Ok(outcome) => (outcome.latencies, outcome.received),
                Err(error) => {
                    eprintln!("connection {connection}: {error:#}");
                    errors.fetch_add(1, Ordering::Relaxed);
                    (histogram(), 0)
                }
            }
        }));
    }
    let (latencies, total) = join_counting(tasks).await?;
    let per_second = total as f64 / duration.as_secs_f64();
    Ok(Rate {
        per_second,
        mb_per_second: per_second * size as f64 / 1e6,
        latency: Latency::of(&latencies),
        errors: errors.load(Ordering::Relaxed),
        count: total,
        cpu: CpuPerOp::default(),
    })
}

/// `workers` clients in a loop: connect, handshake, one echo, close.
pub async fn churn(target: &Target, workers: usize, duration: Duration) -> anyhow::Result<Rate> {
    connect_loop(target, workers, duration, true).await
}

/// `workers` clients in a loop: connect, (TLS handshake,) WebSocket upgrade,
/// close handshake; no message. Over wss, every TLS handshake is a full one.
pub async fn handshakes(
    target: &Target,
    workers: usize,
    duration: Duration,
) -> anyhow::Result<Rate> {
    connect_loop(target, workers, duration, false).await
}

/// The loop of [`churn`] and [`handshakes`]: with `echo`, one message each.
async fn connect_loop(
    target: &Target,
    workers: usize,
    duration: Duration,
    echo: bool,
) -> anyhow::Result<Rate> {
    let errors = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + duration;
    let mut tasks = Vec::new();
    for worker in 0..workers {
        let (target, errors) = (target.clone(), Arc::clone(&errors));
        tasks.push(tokio::spawn(async move {
            let mut latencies = histogram();
            let mut n = 0u64;
            // Spread over source addresses so closed connections' TIME_WAIT does not exhaust ports.
            let source = IpAddr::V4(Ipv4Addr::new(127, 0, 1, 1 + (worker % 200) as u8));
            while Instant::now() < end {
                let start = Instant::now();
                let outcome: anyhow::Result<()> = async {
                    let mut ws = connect(&target, Some(source)).await?;
                    if echo {
                        let sent = payload(worker, n, 64);
                        ws.send(Message::binary(sent.clone())).await?;
                        match ws.next().await {
                            Some(Ok(Message::Binary(got))) if got[..] == sent[..] => {}
                            other => bail!("unexpected {other:?}"),
                        }
                    }
                    ws.close(None).await?;
                    while let Some(Ok(_)) = ws.next().await {}
                    Ok(())
                }
                .await;
                if outcome.is_err() {
                    errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let _ = latencies.record(start.elapsed().as_micros() as u64);
                n += 1;
            }
            (latencies, n)
        }));
    }
    let (latencies, total) = join_counting(tasks).await?;
    Ok(Rate {
        per_second: total as f64 / duration.as_secs_f64(),
        mb_per_second: 0.0,
        latency: Latency::of(&latencies),
        errors: errors.load(Ordering::Relaxed),
        count: total,
        cpu: CpuPerOp::default(),
    })
}

/// What holding many idle connections cost.
#[derive(Debug, Clone, Copy, Default)]
pub struct IdleCost {
    /// Connections held.
    pub connections: usize,
    /// RSS growth of the front process (gateway or nginx) per connection, bytes.
    pub front_per_connection: f64,
    /// RSS growth of the echo server per connection, bytes.
    pub echo_per_connection: f64,
    /// Connections that failed to open, or sampled ones that did not answer.
    pub errors: u64,
}

/// Opens `connections` idle clients (from several 127.0.0.x source
/// addresses), measures the memory growth, then checks that a sample answers.
pub async fn idle(system: &System, connections: usize) -> anyhow::Result<IdleCost> {
    const WARM_UP: usize = 100;
    let target = system.target("echo");
    let mut held: Vec<Ws> = Vec::with_capacity(connections + WARM_UP);
    let mut errors = 0u64;
    let open = |start: usize, n: usize| {
        let target = target.clone();
        async move {
            let mut opened = Vec::with_capacity(n);
            let mut failed = 0u64;
            for idx in start..start + n {
                let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (idx % 8) as u8));
                match connect(&target, Some(source)).await {
                    Ok(ws) => opened.push(ws),
                    Err(_) => failed += 1,
                }
            }
            (opened, failed)
        }
    };
    let (warm, failed) = open(0, WARM_UP).await;
    held.extend(warm);
    errors += failed;
    settle().await;
    let (front_before, echo_before) = (system.front_rss()?, system.echo_rss()?);
    let (opened, failed) = open(WARM_UP, connections).await;
    let n_opened = opened.len();
    held.extend(opened);
    errors += failed;
    settle().await;
    let (front_after, echo_after) = (system.front_rss()?, system.echo_rss()?);
    // Every 1 in (connections / 100) answers an echo.
    let step = (held.len() / 100).max(1);
    for (idx, ws) in held.iter_mut().enumerate().step_by(step) {
        let sent = payload(idx, 0, 64);
        let ok = ws.send(Message::binary(sent.clone())).await.is_ok()
            && matches!(ws.next().await, Some(Ok(Message::Binary(got))) if got[..] == sent[..]);
        if !ok {
            errors += 1;
        }
    }
    drop(held);
    let per =
        |before: u64, after: u64| after.saturating_sub(before) as f64 / n_opened.max(1) as f64;
    Ok(IdleCost {
        connections: n_opened,
        front_per_connection: per(front_before, front_after),
        echo_per_connection: per(echo_before, echo_after),
        errors,
    })
}

/// Lets the servers finish handing over and allocating before memory is read.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// `receivers` clients on the chat, one sender at `rate` messages per second
/// for `duration`: deliveries per second, delivery latency, and lost messages
/// (counted in `errors`).
pub async fn fanout(
    target: &Target,
    receivers: usize,
    rate: u32,
    duration: Duration,
) -> anyhow::Result<Rate> {
    let (overall, _) = fanout_split(
        target,
        std::slice::from_ref(target),
        receivers,
        rate,
        duration,
    )
    .await?;
    Ok(overall)
}

/// [`fanout`] with the sender on `sender_target` and the receivers spread
/// round-robin over `receiver_targets` (instances of one chat sharing their
/// clients, say): the overall figures, and those of each receiver target.
pub async fn fanout_split(
    sender_target: &Target,
    receiver_targets: &[Target],
    receivers: usize,
    rate: u32,
    duration: Duration,
) -> anyhow::Result<(Rate, Vec<Rate>)> {
    let base = Instant::now();
    let n_messages = (f64::from(rate) * duration.as_secs_f64()) as u64;
    let ready = Arc::new(AtomicUsize::new(0));
    let mut tasks: Vec<Vec<_>> = receiver_targets.iter().map(|_| Vec::new()).collect();
    for receiver in 0..receivers {
        let target_idx = receiver % receiver_targets.len().max(1);
        let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (receiver % 8) as u8));
        let ws = connect(&receiver_targets[target_idx], Some(source)).await?;
        let ready = Arc::clone(&ready);
        tasks[target_idx].push(tokio::spawn(receive_fanout(ws, ready, base, n_messages)));
    }
    let mut sender = connect(sender_target, None).await?;
    // Everyone is in the room once everyone has seen a marker.
    let wait_start = Instant::now();
    while ready.load(Ordering::Relaxed) < receivers {
        if wait_start.elapsed() > Duration::from_secs(30) {
            bail!(
                "only {} of {receivers} receivers joined",
                ready.load(Ordering::Relaxed)
            );
        }
        sender.send(Message::text("ready?")).await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    let start = Instant::now();
    for seq in 0..n_messages {
        ticks.tick().await;
        let mut bytes = seq.to_be_bytes().to_vec();
        bytes.extend_from_slice(&(base.elapsed().as_nanos() as u64).to_be_bytes());
        sender.send(Message::binary(bytes)).await?;
    }
    let mut all_latencies = histogram();
    let mut all_delivered = 0;
    let mut per_target = Vec::new();
    let mut n_receivers_of = Vec::new();
    for target_tasks in tasks {
        n_receivers_of.push(target_tasks.len() as u64);
        per_target.push(join_counting(target_tasks).await?);
    }
    // Until the last delivery, not the last send: queues may drain later.
    let send_time = start.elapsed();
    let _ = sender.close(None).await;
    let rate_of = |latencies: &Histogram<u64>, delivered: u64, n_receivers: u64| {
        let expected = n_messages * n_receivers;
        Rate {
            per_second: delivered as f64 / send_time.as_secs_f64(),
            mb_per_second: 0.0,
            latency: Latency::of(latencies),
            errors: expected - delivered.min(expected),
            count: delivered,
            cpu: CpuPerOp::default(),
        }
    };
    let mut rates = Vec::new();
    for ((latencies, delivered), n_receivers) in per_target.iter().zip(&n_receivers_of) {
        let _ = all_latencies.add(latencies);
        all_delivered += delivered;
        rates.push(rate_of(latencies, *delivered, *n_receivers));
    }
    let overall = rate_of(&all_latencies, all_delivered, receivers as u64);
    Ok((overall, rates))
}

/// `receivers` clients on the chat and one sender that keeps `in_flight`
/// messages outstanding towards the slowest receiver, for `duration`:
/// deliveries per second and their latency; a message lost or out of order
/// is an error.
pub async fn fanout_pipelined(
    target: &Target,
    receivers: usize,
    in_flight: u64,
    duration: Duration,
) -> anyhow::Result<Rate> {
    let base = Instant::now();
    let progress = Arc::new(pipeline::FanoutProgress::new(receivers));
    let joined = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for receiver in 0..receivers {
        let ws = connect(target, None).await?;
        let (progress, joined) = (Arc::clone(&progress), Arc::clone(&joined));
        tasks.push(tokio::spawn(async move {
            let outcome = pipeline::run_fanout_receiver(
                ws.into_inner(),
                receiver,
                progress,
                joined,
                base,
                histogram(),
            )
            .await;
            match outcome {
                Ok(outcome) => (outcome.latencies, outcome.received),
                Err(error) => {
                    eprintln!("fan-out receiver {receiver}: {error:#}");
                    (histogram(), 0)
                }
            }
        }));
    }
    let mut sender = connect(target, None).await?;
    let wait_start = Instant::now();
    while joined.load(Ordering::Acquire) < receivers {
        if wait_start.elapsed() > Duration::from_secs(30) {
            bail!(
                "only {} of {receivers} receivers joined",
                joined.load(Ordering::Acquire)
            );
        }
        sender.send(Message::text("ready?")).await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let start = Instant::now();
    let end = start + duration;
    let mut n_sent = 0u64;
    while Instant::now() < end {
        let advanced = progress.advanced.notified();
        let slowest = progress.slowest();
        if n_sent >= slowest + in_flight {
            if tokio::time::timeout(Duration::from_secs(10), advanced)
                .await
                .is_err()
            {
                bail!("the slowest receiver is stuck at {slowest} of {n_sent}");
            }
            continue;
        }
        while n_sent < slowest + in_flight {
            let mut bytes = n_sent.to_be_bytes().to_vec();
            bytes.extend_from_slice(&(base.elapsed().as_nanos() as u64).to_be_bytes());
            sender.feed(Message::binary(bytes)).await?;
            n_sent += 1;
        }
        sender.flush().await?;
    }
    sender.send(Message::text("end")).await?;
    let mut latencies = histogram();
    let mut delivered = 0;
    let mut errors = 0;
    for task in tasks {
        let (histogram, received) = task.await?;
        latencies.add(&histogram).context("merging histograms")?;
        delivered += received;
        errors += n_sent - received.min(n_sent);
    }
    let elapsed = start.elapsed();
    let _ = sender.close(None).await;
    Ok(Rate {
        per_second: delivered as f64 / elapsed.as_secs_f64(),
        mb_per_second: 0.0,
        latency: Latency::of(&latencies),
        errors,
        count: delivered,
        cpu: CpuPerOp::default(),
    })
}

async fn receive_fanout(
    mut ws: Ws,
    ready: Arc<AtomicUsize>,
    base: Instant,
    n_messages: u64,
) -> (Histogram<u64>, u64) {
    let mut latencies = histogram();
    let mut joined = false;
    let mut next_seq = 0u64;
    let deadline = Duration::from_secs(60);
    while next_seq < n_messages {
        let message = match tokio::time::timeout(deadline, ws.next()).await {
            Ok(Some(Ok(message))) => message,
            _ => break,
        };
        match message {
            Message::Text(_) if !joined => {
                joined = true;
                ready.fetch_add(1, Ordering::Relaxed);
            }
            Message::Binary(bytes) if bytes.len() == 16 => {
                let seq = u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes"));
                let sent = u64::from_be_bytes(bytes[8..].try_into().expect("8 bytes"));
                if seq != next_seq {
                    // Out of order or a gap: stop counting; the rest is lost.
                    break;
                }
                next_seq += 1;
                let now = base.elapsed().as_nanos() as u64;
                let _ = latencies.record(now.saturating_sub(sent) / 1000);
            }
            _ => {}
        }
    }
    (latencies, next_seq)
}
