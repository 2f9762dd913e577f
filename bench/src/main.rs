//! `wsgate-bench`: runs every scenario against every system in one run and
//! prints the markdown table (`all`), or runs the baseline server
//! (`baseline-server`, started by `all` itself).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use bench::report::{self, Labels, Results};
use bench::scenario;
use bench::system::{Binaries, Kind, System};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(version)]
/// Benchmarks wsgate relay and direct against a no-gateway baseline and nginx.
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
        /// Run only these scenarios (repeatable) [default: all].
        #[arg(long = "only", value_enum, value_name = "SCENARIO")]
        only: Vec<Scenario>,
        /// Messages per second the fan-out sender sends [default: 1000; smoke: 200].
        #[arg(long, value_name = "N")]
        fanout_rate: Option<u32>,
    },
    /// The baseline server: WebSocket echo (/echo) and chat (/chat) with no gateway.
    BaselineServer {
        /// TCP address; prints `listening on http://ADDR` when ready.
        #[arg(long, value_name = "ADDR", conflicts_with = "unix")]
        listen: Option<SocketAddr>,
        /// UNIX socket path (for nginx).
        #[arg(long, value_name = "PATH")]
        unix: Option<PathBuf>,
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
    /// Idle connections and their memory.
    Idle,
    /// Chat fan-out.
    Fanout,
}

impl Scenario {
    /// Every scenario, in the order a run does them.
    const ALL: [Scenario; 6] = [
        Scenario::RoundTrips,
        Scenario::Pipelined,
        Scenario::Large,
        Scenario::Churn,
        Scenario::Idle,
        Scenario::Fanout,
    ];

    /// The name in progress lines.
    fn name(self) -> &'static str {
        match self {
            Scenario::RoundTrips => "echo round trips",
            Scenario::Pipelined => "echo pipelined",
            Scenario::Large => "echo 64 KiB",
            Scenario::Churn => "churn",
            Scenario::Idle => "idle connections",
            Scenario::Fanout => "chat fan-out",
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
    let runtime = tokio::runtime::Runtime::new()?;
    match args.command {
        Command::BaselineServer { listen, unix } => runtime.block_on(async {
            if let Some(path) = unix {
                return bench::baseline::serve_unix(&path).await;
            }
            let listener =
                tokio::net::TcpListener::bind(listen.unwrap_or(([127, 0, 0, 1], 0).into())).await?;
            println!("listening on http://{}", listener.local_addr()?);
            bench::baseline::serve_tcp(listener).await
        }),
        Command::All {
            smoke,
            bin_dir,
            no_nginx,
            only,
            fanout_rate,
        } => {
            let bench = std::env::current_exe()?;
            let dir = match bin_dir {
                Some(dir) => dir,
                None => bench
                    .parent()
                    .context("the executable has a directory")?
                    .to_owned(),
            };
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
            let kinds: &[Kind] = if no_nginx {
                &[Kind::Baseline, Kind::Relay, Kind::Direct]
            } else {
                &[Kind::Baseline, Kind::Relay, Kind::Direct, Kind::Nginx]
            };
            runtime.block_on(run_all(&Binaries { dir, bench }, kinds, &settings))
        }
    }
}

async fn run_all(binaries: &Binaries, kinds: &[Kind], settings: &Settings) -> anyhow::Result<()> {
    let mut systems = Vec::new();
    for kind in kinds {
        match System::start(*kind, binaries).await? {
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
        idle: format!("idle, {} conns", s.idle_connections),
        fanout: format!(
            "chat fan-out, {} receivers, {} msg/s",
            s.fanout_receivers, s.fanout_rate
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
    println!("{}", report::table(&rows, &labels));
    let errors: u64 = results.iter().map(Results::errors).sum();
    if errors > 0 {
        anyhow::bail!("THE RUN HAD {errors} ERRORS: the figures above are not valid");
    }
    Ok(())
}

/// Runs `scenario` against `system` and stores its figures in `results`.
async fn run_scenario(
    scenario: Scenario,
    system: &System,
    s: &Settings,
    results: &mut Results,
) -> anyhow::Result<()> {
    let (url, addr) = (system.url("echo"), system.addr);
    match scenario {
        Scenario::RoundTrips => {
            results.round_trips =
                scenario::echo_round_trips(&url, addr, s.connections, 64, s.duration).await?;
        }
        Scenario::Pipelined => {
            results.pipelined =
                scenario::echo_pipelined(&url, addr, s.connections, 16, 64, s.duration).await?;
        }
        Scenario::Large => {
            results.large =
                scenario::echo_pipelined(&url, addr, s.large_connections, 4, 64 * 1024, s.duration)
                    .await?;
        }
        Scenario::Churn => results.churn = scenario::churn(&url, addr, 8, s.duration).await?,
        Scenario::Idle => results.idle = scenario::idle(system, s.idle_connections).await?,
        Scenario::Fanout => {
            results.fanout = scenario::fanout(
                &system.url("chat"),
                addr,
                s.fanout_receivers,
                s.fanout_rate,
                s.duration,
            )
            .await?;
        }
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
