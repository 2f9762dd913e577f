//! `wsgate-bench`: runs every scenario against every system in one run and
//! prints the markdown tables, plain and wss (`all`), or runs the baseline
//! server (`baseline-server`, started by `all` itself).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use bench::report::{self, Labels, Results};
use bench::scenario;
use bench::scenario::Rate;
use bench::system::{Binaries, Kind, System};
use bench::tls::TlsFiles;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(version)]
/// Benchmarks wsgate relay and direct, plain and over TLS, against a no-gateway baseline and nginx.
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Every scenario against every system, alternating; prints a markdown table.
    All {
        /// A short run that only proves everything works (seconds, not minutes).
        #[arg(long)]
        smoke: bool,
        /// Directory of wsgate, websocket_echo and websocket_chat [default: this executable's].
        #[arg(long, value_name = "DIR")]
        bin_dir: Option<PathBuf>,
        /// Leave nginx out even when it is installed.
        #[arg(long)]
        no_nginx: bool,
        /// Leave the wss systems out.
        #[arg(long, conflicts_with = "no_plain")]
        no_tls: bool,
        /// Leave the plain ws systems out (only the wss ones).
        #[arg(long)]
        no_plain: bool,
        /// Run only these scenarios (repeatable) [default: all].
        #[arg(long = "only", value_enum, value_name = "SCENARIO")]
        only: Vec<Scenario>,
        /// Messages per second the fan-out sender sends [default: 1000; smoke: 200].
        #[arg(long, value_name = "N")]
        fanout_rate: Option<u32>,
        /// Runtime threads of every server written with tokio: the baseline
        /// server, wsgate and its backends get `--threads N` (nginx runs one
        /// single-threaded worker per CPU either way) [default: each
        /// program's default, one per CPU].
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
        threads: Option<u16>,
    },
    /// websocket_exec (relay, direct) against websocketd on the same program (bench/src/exec.rs).
    Exec(bench::exec::ExecArgs),
    /// permessage-deflate on a JSON chat workload, relay and direct: bytes on
    /// the wire, CPU per message, idle memory (bench/src/deflate.rs).
    Deflate(bench::deflate::DeflateArgs),
    /// websocket_broker's channel fan-out next to the chat's fan-out, behind wsgate relay and
    /// direct; prints a markdown table.
    BrokerFanout(FanoutArgs),
    /// Idle relayed clients on one port through `wsgate --workers`, with each
    /// process's descriptors and memory (bench/src/hold.rs).
    Hold(bench::hold::HoldArgs),
    /// One load-generator process of `hold` (started by `hold` itself).
    HoldClients(bench::hold::HoldClientsArgs),
    /// The chat's fan-out over two instances sharing one Redis (websocket_chat --redis), against
    /// one instance without it; prints a markdown table.
    RedisFanout(FanoutArgs),
    /// The baseline server: WebSocket echo (/echo) and chat (/chat) with no gateway.
    BaselineServer {
        /// TCP address; prints `listening on http://ADDR` when ready.
        #[arg(long, value_name = "ADDR", conflicts_with = "unix")]
        listen: Option<SocketAddr>,
        /// UNIX socket path (for nginx).
        #[arg(long, value_name = "PATH")]
        unix: Option<PathBuf>,
        /// Serve wss on --listen with this certificate (PEM); needs --tls-key.
        #[arg(long, value_name = "FILE", requires = "tls_key", requires = "listen")]
        tls_cert: Option<PathBuf>,
        /// The certificate's private key (PEM).
        #[arg(long, value_name = "FILE", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Runtime threads: 1 is tokio's current-thread runtime, more its
        /// work-stealing one [default: one per CPU, as `#[tokio::main]`].
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
        threads: Option<u16>,
    },
}

/// The scenarios, for `--only`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Scenario {
    /// Echo, 64 B, one in flight.
    RoundTrips,
    /// Echo, 64 B, 16 in flight.
    Pipelined,
    /// Echo, 64 KiB.
    Large,
    /// Connect, echo, close.
    Churn,
    /// Connect, (TLS,) upgrade, close: the handshake rate.
    Handshakes,
    /// Idle connections and their memory.
    Idle,
    /// Chat fan-out at a fixed rate.
    Fanout,
    /// Chat fan-out, 16 in flight.
    FanoutPipelined,
}

impl Scenario {
    /// Every scenario, in the order a run does them.
    const ALL: [Scenario; 8] = [
        Scenario::RoundTrips,
        Scenario::Pipelined,
        Scenario::Large,
        Scenario::Churn,
        Scenario::Handshakes,
        Scenario::Idle,
        Scenario::Fanout,
        Scenario::FanoutPipelined,
    ];

    /// The name in progress lines.
    fn name(self) -> &'static str {
        match self {
            Scenario::RoundTrips => "echo round trips",
            Scenario::Pipelined => "echo pipelined",
            Scenario::Large => "echo 64 KiB",
            Scenario::Churn => "churn",
            Scenario::Handshakes => "handshakes",
            Scenario::Idle => "idle connections",
            Scenario::Fanout => "chat fan-out",
            Scenario::FanoutPipelined => "chat fan-out pipelined",
        }
    }
}

/// How much of each scenario a run does.
struct Settings {
    duration: Duration,
    connections: usize,
    large_connections: usize,
    idle_connections: usize,
    fanout_receivers: usize,
    fanout_rate: u32,
    /// Empty: every scenario.
    only: Vec<Scenario>,
}

impl Settings {
    fn runs(&self, scenario: Scenario) -> bool {
        self.only.is_empty() || self.only.contains(&scenario)
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = match &args.command {
        Command::BaselineServer {
            threads: Some(1), ..
        } => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        Command::BaselineServer {
            threads: Some(threads),
            ..
        } => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(usize::from(*threads))
            .enable_all()
            .build()?,
        _ => tokio::runtime::Runtime::new()?,
    };
    match args.command {
        Command::Exec(exec_args) => runtime.block_on(bench::exec::run(exec_args)),
        Command::Hold(hold_args) => runtime.block_on(bench::hold::run(hold_args)),
        Command::HoldClients(clients_args) => runtime.block_on(bench::hold::clients(clients_args)),
        Command::Deflate(deflate_args) => runtime.block_on(bench::deflate::run(deflate_args)),
        Command::BaselineServer {
            listen,
            unix,
            tls_cert,
            tls_key,
            threads: _,
        } => runtime.block_on(async {
            if let Some(path) = unix {
                return bench::baseline::serve_unix(&path).await;
            }
            let tls = match (tls_cert, tls_key) {
                (Some(cert), Some(key)) => Some(bench::tls::baseline_server_config(&cert, &key)?),
                _ => None,
            };
            let listener =
                tokio::net::TcpListener::bind(listen.unwrap_or(([127, 0, 0, 1], 0).into())).await?;
            let scheme = if tls.is_some() { "https" } else { "http" };
            println!("listening on {scheme}://{}", listener.local_addr()?);
            bench::baseline::serve_tcp(listener, tls).await
        }),
        Command::BrokerFanout(args) => {
            let dir = bin_dir_or_own(args.bin_dir.clone())?;
            let load = FanoutLoad::new(&args, 1);
            runtime.block_on(broker_fanout(
                &dir,
                load.receivers,
                load.rate,
                load.duration,
            ))
        }
        Command::RedisFanout(args) => {
            let dir = bin_dir_or_own(args.bin_dir.clone())?;
            // Receivers are spread over two instances: at least one on each.
            let load = FanoutLoad::new(&args, 2);
            runtime.block_on(redis_fanout(&dir, load.receivers, load.rate, load.duration))
        }
        Command::All {
            smoke,
            bin_dir,
            no_nginx,
            no_tls,
            no_plain,
            only,
            fanout_rate,
            threads,
        } => {
            let bench = std::env::current_exe()?;
            let dir = bin_dir_or_own(bin_dir)?;
            let mut settings = if smoke {
                Settings {
                    duration: Duration::from_millis(300),
                    connections: 10,
                    large_connections: 2,
                    idle_connections: 50,
                    fanout_receivers: 20,
                    fanout_rate: 200,
                    only: Vec::new(),
                }
            } else {
                Settings {
                    duration: Duration::from_secs(5),
                    connections: 100,
                    large_connections: 10,
                    idle_connections: 9_000,
                    fanout_receivers: 1_000,
                    fanout_rate: 1_000,
                    only: Vec::new(),
                }
            };
            if let Some(rate) = fanout_rate {
                settings.fanout_rate = rate.max(1);
            }
            settings.only = only;
            // Each group's baseline first: the ratios of its table refer to it.
            let plain = [Kind::Baseline, Kind::Relay, Kind::Direct, Kind::Nginx];
            let tls = [Kind::BaselineTls, Kind::RelayTls, Kind::NginxTls];
            let kinds: Vec<Kind> = plain
                .into_iter()
                .filter(|_| !no_plain)
                .chain(tls.into_iter().filter(|_| !no_tls))
                .filter(|kind| !(no_nginx && matches!(kind, Kind::Nginx | Kind::NginxTls)))
                .collect();
            runtime.block_on(run_all(
                &Binaries {
                    dir,
                    bench,
                    threads,
                },
                &kinds,
                &settings,
            ))
        }
    }
}

/// `--bin-dir`, or the directory of this executable (where cargo put the
/// binaries it built with it).
fn bin_dir_or_own(bin_dir: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match bin_dir {
        Some(dir) => Ok(dir),
        None => Ok(std::env::current_exe()?
            .parent()
            .context("the executable has a directory")?
            .to_owned()),
    }
}

/// The flags of the standalone fan-out commands (`broker-fanout`, `redis-fanout`).
#[derive(Debug, clap::Args)]
struct FanoutArgs {
    /// A short run that only proves everything works.
    #[arg(long)]
    smoke: bool,
    /// Directory of wsgate and the backends the command runs [default: this executable's].
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
    /// Receivers [default: 1000; smoke: 20].
    #[arg(long, value_name = "N")]
    receivers: Option<usize>,
    /// Messages per second the sender sends [default: 1000; smoke: 200].
    #[arg(long, value_name = "N")]
    rate: Option<u32>,
}

/// The load of the standalone fan-out commands.
struct FanoutLoad {
    duration: Duration,
    receivers: usize,
    rate: u32,
}

impl FanoutLoad {
    /// The given receivers and rate or the defaults (1,000 receivers at
    /// 1,000 messages/s for 5 s; smoke: 20 at 200 for 300 ms), with at
    /// least `min_receivers` receivers and one message per second.
    fn new(args: &FanoutArgs, min_receivers: usize) -> FanoutLoad {
        let (duration, default_receivers, default_rate) = if args.smoke {
            (Duration::from_millis(300), 20, 200)
        } else {
            (Duration::from_secs(5), 1_000, 1_000)
        };
        FanoutLoad {
            duration,
            receivers: args
                .receivers
                .unwrap_or(default_receivers)
                .max(min_receivers),
            rate: args.rate.unwrap_or(default_rate).max(1),
        }
    }
}

async fn run_all(binaries: &Binaries, kinds: &[Kind], settings: &Settings) -> anyhow::Result<()> {
    let tls = TlsFiles::generate()?;
    let mut systems = Vec::new();
    for kind in kinds {
        match System::start(*kind, binaries, &tls).await? {
            Some(system) => systems.push(system),
            None => eprintln!("{}: not installed, left out", kind.label()),
        }
    }
    let mut results: Vec<Results> = vec![Results::default(); systems.len()];
    let s = settings;
    let labels = Labels {
        round_trips: format!("echo 64 B, {} conns, 1 in flight", s.connections),
        pipelined: format!("echo 64 B, {} conns, 16 in flight", s.connections),
        large: format!("echo 64 KiB, {} conns, 4 in flight", s.large_connections),
        churn: "churn (connect, echo, close), 8 workers".to_owned(),
        handshakes: "handshakes (connect, upgrade, close), 8 workers".to_owned(),
        idle: format!("idle, {} conns", s.idle_connections),
        fanout: format!(
            "chat fan-out, {} receivers, {} msg/s",
            s.fanout_receivers, s.fanout_rate
        ),
        fanout_pipelined: format!(
            "chat fan-out, 1 sender, {} receivers, 16 in flight",
            s.connections
        ),
    };
    // Scenario by scenario, every system in turn, so slow drifts of the
    // machine spread over all of them.
    for scenario in Scenario::ALL {
        if !s.runs(scenario) {
            continue;
        }
        for (system, results) in systems.iter().zip(results.iter_mut()) {
            eprintln!("{}: {}", system.kind.label(), scenario.name());
            run_scenario(scenario, system, s, results).await?;
        }
    }
    for system in &mut systems {
        system.check_running()?;
    }
    let kinds: Vec<Kind> = systems.iter().map(|system| system.kind).collect();
    let rows: Vec<(Kind, Results)> = kinds.into_iter().zip(results.iter().cloned()).collect();
    println!("{}", machine());
    match binaries.threads {
        Some(threads) => println!(
            "Runtime threads of the baseline, wsgate and its backends: {threads} (`--threads {threads}`)\n"
        ),
        None => println!(
            "Runtime threads of the baseline, wsgate and its backends: each program's default (one per CPU)\n"
        ),
    }
    let (tls_rows, plain_rows): (Vec<_>, Vec<_>) =
        rows.into_iter().partition(|(kind, _)| kind.is_tls());
    if !plain_rows.is_empty() {
        println!("{}", report::table(&plain_rows, &labels));
    }
    if !tls_rows.is_empty() {
        println!(
            "Over TLS 1.3, {}, X25519, ECDSA P-256 certificate, no session resumption:\n",
            bench::tls::CIPHER_SUITE
        );
        println!("{}", report::table(&tls_rows, &labels));
    }
    let errors: u64 = results.iter().map(Results::errors).sum();
    if errors > 0 {
        anyhow::bail!("THE RUN HAD {errors} ERRORS: the figures above are not valid");
    }
    Ok(())
}

/// Runs `scenario` against `system` and stores its figures in `results`,
/// with the CPU time each process spent per operation.
async fn run_scenario(
    scenario: Scenario,
    system: &System,
    s: &Settings,
    results: &mut Results,
) -> anyhow::Result<()> {
    let target = system.target("echo");
    let before = system.cpu_sample()?;
    let rate: &mut Rate = match scenario {
        Scenario::RoundTrips => {
            results.round_trips =
                scenario::echo_round_trips(&target, s.connections, 64, s.duration).await?;
            &mut results.round_trips
        }
        Scenario::Pipelined => {
            results.pipelined =
                scenario::echo_pipelined(&target, s.connections, 16, 64, s.duration).await?;
            &mut results.pipelined
        }
        Scenario::Large => {
            results.large =
                scenario::echo_pipelined(&target, s.large_connections, 4, 64 * 1024, s.duration)
                    .await?;
            &mut results.large
        }
        Scenario::Churn => {
            results.churn = scenario::churn(&target, 8, s.duration).await?;
            &mut results.churn
        }
        Scenario::Handshakes => {
            results.handshakes = scenario::handshakes(&target, 8, s.duration).await?;
            &mut results.handshakes
        }
        Scenario::Idle => {
            results.idle = scenario::idle(system, s.idle_connections).await?;
            return Ok(());
        }
        Scenario::Fanout => {
            results.fanout = scenario::fanout(
                &system.target("chat"),
                s.fanout_receivers,
                s.fanout_rate,
                s.duration,
            )
            .await?;
            &mut results.fanout
        }
        Scenario::FanoutPipelined => {
            results.fanout_pipelined =
                scenario::fanout_pipelined(&system.target("chat"), s.connections, 16, s.duration)
                    .await?;
            &mut results.fanout_pipelined
        }
    };
    rate.cpu = before.per_op(&system.cpu_sample()?, rate.count);
    Ok(())
}

/// The chat's and the broker's fan-out behind relay and direct, as one table.
async fn broker_fanout(
    dir: &std::path::Path,
    receivers: usize,
    rate: u32,
    duration: Duration,
) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    let mut errors = 0;
    for (label, direct) in [("wsgate relay", false), ("wsgate direct", true)] {
        let system = bench::broker::BrokerSystem::start(dir, direct, receivers + 100).await?;
        eprintln!("{label}: chat and broker fan-out");
        let (chat, broker) =
            bench::broker::chat_and_broker_fanout(&system, receivers, rate, duration).await?;
        errors += chat.errors + broker.errors;
        rows.push(format!(
            "| {label} | {:.0} | {:.1} ms | {} | {:.0} | {:.1} ms | {} | {:.2}× |",
            chat.per_second,
            chat.latency.p99 as f64 / 1000.0,
            chat.errors,
            broker.per_second,
            broker.latency.p99 as f64 / 1000.0,
            broker.errors,
            broker.per_second / chat.per_second.max(f64::MIN_POSITIVE),
        ));
    }
    println!("{}", machine());
    println!("Fan-out, {receivers} receivers, {rate} msg/s for {duration:?}:\n");
    println!(
        "| system | chat deliveries/s | chat p99 | chat lost | broker (channels) deliveries/s | broker p99 | broker lost | broker / chat |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
    if errors > 0 {
        anyhow::bail!("THE RUN LOST {errors} MESSAGES: the figures above are not valid");
    }
    Ok(())
}

async fn redis_fanout(
    dir: &std::path::Path,
    receivers: usize,
    rate: u32,
    duration: Duration,
) -> anyhow::Result<()> {
    let run = bench::redis::redis_fanout(dir, receivers, rate, duration).await?;
    let ms = |micros: u64| micros as f64 / 1000.0;
    println!("{}", machine());
    println!("Chat fan-out, {receivers} receivers, {rate} msg/s for {duration:?}:\n");
    println!("| system | receivers | deliveries/s | p50 | p99 | lost |");
    println!("|---|---|---|---|---|---|");
    let rows = [
        ("one instance, no Redis", receivers.to_string(), &run.single),
        (
            "two instances + Redis, all",
            receivers.to_string(),
            &run.shared,
        ),
        (
            "… on the sender's instance",
            receivers.div_ceil(2).to_string(),
            &run.shared_local,
        ),
        (
            "… on the other instance (via Redis)",
            (receivers / 2).to_string(),
            &run.shared_remote,
        ),
    ];
    for (label, n, rate) in rows {
        println!(
            "| {label} | {n} | {:.0} | {:.2} ms | {:.2} ms | {} |",
            rate.per_second,
            ms(rate.latency.p50),
            ms(rate.latency.p99),
            rate.errors
        );
    }
    println!(
        "\nExtra latency through Redis (other instance vs one instance): p50 {:+.2} ms, p99 {:+.2} ms",
        ms(run.shared_remote.latency.p50) - ms(run.single.latency.p50),
        ms(run.shared_remote.latency.p99) - ms(run.single.latency.p99),
    );
    let errors = run.single.errors + run.shared.errors;
    if errors > 0 {
        anyhow::bail!("THE RUN LOST {errors} MESSAGES: the figures above are not valid");
    }
    Ok(())
}

/// CPU model, cores and kernel, for the report.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("model name"))
                .map(|model| model.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("Machine: {cpu}, {cores} cores, Linux {}", kernel.trim())
}
