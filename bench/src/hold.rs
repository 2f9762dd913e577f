//! `wsgate-bench hold`: many idle relayed clients on one port, more than
//! one process's descriptor limit allows, through `wsgate --workers`.
//!
//! The gateway relays every client (two descriptors each: its TCP socket and
//! its link), so 30,000 clients need 60,000 descriptors: `--workers` spreads
//! them over several processes, each under its own limit. The backends hold
//! one descriptor per client, so the clients are spread over several
//! `websocket_echo` instances (names `hold0`, `hold1`, …), and the load
//! generator is split into `hold-clients` processes of at most
//! `--per-process` clients, each from its own 127.0.k.x source addresses (one
//! source address has only the ephemeral port range to connect from).
//! Every client does one checked echo once connected. The run prints, per
//! process, the descriptors it holds and its memory (RSS and PSS).

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use harness::child::{ChildGuard, Logging};
use harness::{Backend, Gateway};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::scenario::{Target, Ws, connect};

/// Source addresses per load-generator process (127.0.k.2 …).
const SOURCES_PER_PROCESS: usize = 8;
/// Connections a load-generator process opens at once.
const CONNECT_CONCURRENCY: usize = 64;
/// How long the clients of one process may take to connect.
const CONNECT_DEADLINE: Duration = Duration::from_secs(300);

/// The flags of `wsgate-bench hold`.
#[derive(Debug, Clone, clap::Args)]
pub struct HoldArgs {
    /// Idle clients to hold [default: 30000; smoke: 400].
    #[arg(long, value_name = "N")]
    pub clients: Option<usize>,
    /// Gateway worker processes [default: 4; smoke: 2].
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// websocket_echo instances the clients are spread over [default: 2].
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub backends: usize,
    /// Clients per load-generator process [default: 10000; smoke: 100].
    #[arg(long, value_name = "N")]
    pub per_process: Option<usize>,
    /// A short run that only proves everything works. wsgate and
    /// websocket_echo are looked up beside this executable, or in
    /// WSGATE_BIN_DIR.
    #[arg(long)]
    pub smoke: bool,
}

/// The flags of `wsgate-bench hold-clients` (started by `hold`).
#[derive(Debug, Clone, clap::Args)]
pub struct HoldClientsArgs {
    /// The gateway's address.
    #[arg(long, value_name = "ADDR")]
    pub addr: SocketAddr,
    /// Backend names `hold0` … `hold<N-1>`, taken in turn.
    #[arg(long, value_name = "N")]
    pub backends: usize,
    /// Clients to open and hold.
    #[arg(long, value_name = "N")]
    pub count: usize,
    /// This process's number: its clients connect from 127.0.<index+1>.x.
    #[arg(long, value_name = "N")]
    pub index: u8,
}

/// One process's descriptors and memory.
struct ProcessCost {
    label: String,
    fds: usize,
    rss: u64,
    pss: u64,
}

/// Runs `hold`: starts the backends, the gateway with workers, and the
/// load-generator processes, waits until every client is connected, and
/// prints the table.
pub async fn run(args: HoldArgs) -> anyhow::Result<()> {
    let (default_clients, default_workers, default_per_process) = if args.smoke {
        (400, 2, 100)
    } else {
        (30_000, 4, 10_000)
    };
    let n_clients = args.clients.unwrap_or(default_clients);
    let n_workers = args.workers.unwrap_or(default_workers).max(1);
    let per_process = args.per_process.unwrap_or(default_per_process).max(1);
    let n_backends = args.backends.max(1);
    let bench_exe = std::env::current_exe()?;

    let docroot = tempfile::tempdir()?;
    let mut backends = Vec::new();
    for backend_idx in 0..n_backends {
        let name = format!("hold{backend_idx}");
        backends.push(
            Backend::start_with("websocket_echo", docroot.path(), &name, &[], Logging::Quiet)
                .await?,
        );
    }
    let workers = n_workers.to_string();
    let gateway = Gateway::start_with(
        docroot.path(),
        &[
            "--workers",
            &workers,
            "--ping-interval",
            "0",
            "--idle-timeout",
            "0",
            "--max-connections-per-ip",
            "0",
        ],
        Logging::Quiet,
    )
    .await?;
    let addr = gateway.addr();
    eprintln!("hold: {n_clients} clients on {addr}, {n_workers} workers, {n_backends} backends");

    let started = Instant::now();
    let n_processes = n_clients.div_ceil(per_process);
    anyhow::ensure!(n_processes <= 250, "too many load-generator processes");
    let mut generators = Vec::new();
    let (ready_sender, mut ready_receiver) = mpsc::unbounded_channel();
    for process_idx in 0..n_processes {
        let count = per_process.min(n_clients - process_idx * per_process);
        let mut command = Command::new(&bench_exe);
        command
            .arg("hold-clients")
            .arg("--addr")
            .arg(addr.to_string())
            .arg("--backends")
            .arg(n_backends.to_string())
            .arg("--count")
            .arg(count.to_string())
            .arg("--index")
            .arg(process_idx.to_string())
            .stdout(Stdio::piped());
        let mut generator = ChildGuard::spawn_with(
            &format!("hold-clients {process_idx}"),
            command,
            Logging::Quiet,
        )?;
        let stdout = generator
            .child_mut()
            .stdout
            .take()
            .context("stdout is piped")?;
        let ready_sender = ready_sender.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = ready_sender.send((process_idx, line));
            }
        });
        generators.push(generator);
    }
    drop(ready_sender);
    let mut n_ready = 0;
    let mut n_connected = 0usize;
    let mut n_failed = 0usize;
    while n_ready < n_processes {
        let Some((process_idx, line)) =
            tokio::time::timeout(CONNECT_DEADLINE, ready_receiver.recv()).await?
        else {
            let logs: Vec<String> = generators.iter().map(|g| g.stderr_text()).collect();
            anyhow::bail!("a load generator exited early: {logs:?}");
        };
        let mut words = line.split_whitespace();
        if words.next() == Some("connected") {
            let connected: usize = words.next().context("count")?.parse()?;
            let failed: usize = words.nth(1).context("failed count")?.parse()?;
            eprintln!("hold: process {process_idx}: {connected} connected, {failed} failed");
            n_connected += connected;
            n_failed += failed;
            n_ready += 1;
        }
    }
    let connect_time = started.elapsed();

    let mut costs = Vec::new();
    costs.push(cost("wsgate supervisor", gateway.pid())?);
    let mut worker_pids = children(gateway.pid());
    worker_pids.sort_unstable();
    for (worker_idx, pid) in worker_pids.iter().enumerate() {
        costs.push(cost(&format!("wsgate worker {worker_idx}"), *pid)?);
    }
    for (backend_idx, backend) in backends.iter().enumerate() {
        costs.push(cost(
            &format!("websocket_echo hold{backend_idx}"),
            backend.pid(),
        )?);
    }
    for (process_idx, generator) in generators.iter().enumerate() {
        costs.push(cost(
            &format!("load generator {process_idx}"),
            generator.pid(),
        )?);
    }
    println!(
        "{}",
        table(n_connected, n_failed, addr, connect_time, &costs)
    );
    anyhow::ensure!(
        n_failed == 0 && n_connected == n_clients,
        "{n_failed} clients failed, {n_connected} of {n_clients} connected"
    );
    drop(generators);
    drop(gateway);
    Ok(())
}

/// Runs `hold-clients`: opens `count` clients (each one checked echo),
/// prints `connected N failed M`, and holds them until SIGTERM.
pub async fn clients(args: HoldClientsArgs) -> anyhow::Result<()> {
    let (sender, mut receiver) = mpsc::channel::<(usize, anyhow::Result<Ws>)>(CONNECT_CONCURRENCY);
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..CONNECT_CONCURRENCY {
        let sender = sender.clone();
        let next = std::sync::Arc::clone(&next);
        let args = args.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let client_idx = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if client_idx >= args.count {
                    return;
                }
                let result = open_client(&args, client_idx).await;
                if sender.send((client_idx, result)).await.is_err() {
                    return;
                }
            }
        }));
    }
    drop(sender);
    let mut held = Vec::with_capacity(args.count);
    let mut failed = 0usize;
    let mut first_error = None;
    while let Some((_, result)) = receiver.recv().await {
        match result {
            Ok(ws) => held.push(ws),
            Err(error) => {
                failed += 1;
                first_error.get_or_insert(error);
            }
        }
    }
    if let Some(error) = first_error {
        eprintln!("hold-clients {}: first failure: {error:#}", args.index);
    }
    println!("connected {} failed {failed}", held.len());
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    terminate.recv().await;
    drop(held);
    Ok(())
}

async fn open_client(args: &HoldClientsArgs, client_idx: usize) -> anyhow::Result<Ws> {
    let name = format!("hold{}", client_idx % args.backends);
    let target = Target {
        url: format!("ws://{}/{name}", args.addr),
        addr: args.addr,
        tls: None,
    };
    let host = 2 + (client_idx % SOURCES_PER_PROCESS) as u8;
    let source = IpAddr::V4(Ipv4Addr::new(127, 0, args.index.wrapping_add(1), host));
    let mut ws = connect(&target, Some(source)).await?;
    let payload = format!("client {} of {}", client_idx, args.index).into_bytes();
    ws.send(Message::binary(payload.clone())).await?;
    match tokio::time::timeout(Duration::from_secs(30), ws.next()).await? {
        Some(Ok(Message::Binary(echoed))) if echoed[..] == payload[..] => Ok(ws),
        other => anyhow::bail!("client {client_idx}: expected its echo, got {other:?}"),
    }
}

fn cost(label: &str, pid: u32) -> anyhow::Result<ProcessCost> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("descriptors of {label}"))?
        .count();
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let kib: u64 = rollup
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .with_context(|| format!("no {name} in smaps_rollup"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()?;
        Ok(kib * 1024)
    };
    Ok(ProcessCost {
        label: label.to_owned(),
        fds,
        rss: field("Rss:")?,
        pss: field("Pss:")?,
    })
}

fn children(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|candidate| {
            std::fs::read_to_string(Path::new("/proc").join(candidate.to_string()).join("stat"))
                .is_ok_and(|stat| {
                    stat.rsplit_once(')')
                        .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                        == Some(parent)
                })
        })
        .collect()
}

fn table(
    n_connected: usize,
    n_failed: usize,
    addr: SocketAddr,
    connect_time: Duration,
    costs: &[ProcessCost],
) -> String {
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    let mut text = format!(
        "{n_connected} idle relayed clients held on {addr} ({n_failed} failed), connected in {:.1} s\n\n\
         | process | descriptors | RSS (MiB) | PSS (MiB) |\n|---|---:|---:|---:|\n",
        connect_time.as_secs_f64()
    );
    for cost in costs {
        text.push_str(&format!(
            "| {} | {} | {:.1} | {:.1} |\n",
            cost.label,
            cost.fds,
            mib(cost.rss),
            mib(cost.pss)
        ));
    }
    text
}
