//! `wsgate-bench exec`: `websocket_exec` behind the gateway (relay and direct)
//! against websocketd, both running the same program (`cat` by default, a
//! line echo): connections with a program started per second, round trips
//! per second through one program, and memory per connected client (every
//! server process plus the programs, as proportional set size).
//!
//! Each system is started as its own processes through the harness and
//! measured in turn; every reply is checked and every error counted, and a
//! run with errors fails. BENCHMARKS.md has a run and the command.

use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use futures_util::{SinkExt, StreamExt};
use harness::child::{ChildGuard, Logging};
use harness::{Backend, Gateway, wait};
use hdrhistogram::Histogram;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The flags of `wsgate-bench exec`.
#[derive(Debug, Clone, clap::Args)]
pub struct ExecArgs {
    /// A short run that only proves everything works (seconds, not minutes).
    #[arg(long)]
    pub smoke: bool,
    /// Seconds each rate is measured [default: 5; smoke: 0.3].
    #[arg(long, value_name = "SECS")]
    pub seconds: Option<f64>,
    /// Clients held open for the memory figure [default: 200; smoke: 10].
    #[arg(long, value_name = "N")]
    pub clients: Option<usize>,
    /// Concurrent workers connecting and closing for the connection rate.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub workers: usize,
    /// The program every system runs per client: a line echo.
    #[arg(long, value_name = "PROGRAM", default_value = "cat")]
    pub program: String,
    /// The websocketd executable; left out of the run when it is not found.
    #[arg(long, value_name = "PATH", default_value = "websocketd")]
    pub websocketd: PathBuf,
}

/// One system under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Websocketd,
    Relay,
    Direct,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Websocketd => "websocketd",
            Kind::Relay => "wsgate relay + websocket_exec",
            Kind::Direct => "wsgate direct + websocket_exec",
        }
    }
}

/// A running system: its processes (dropped last) and where clients connect.
struct System {
    kind: Kind,
    url: String,
    /// The process clients connect to (websocketd, or the gateway).
    front_pid: u32,
    /// The process whose children the programs are (websocketd, or websocket_exec).
    spawner_pid: u32,
    _gateway: Option<Gateway>,
    _backend: Option<Backend>,
    _websocketd: Option<ChildGuard>,
    _docroot: Option<tempfile::TempDir>,
}

impl System {
    async fn start(
        kind: Kind,
        args: &ExecArgs,
        max_programs: usize,
    ) -> anyhow::Result<Option<System>> {
        if kind == Kind::Websocketd {
            return start_websocketd(args).await;
        }
        let docroot = tempfile::tempdir()?;
        let max_programs = max_programs.to_string();
        let backend = Backend::start_with(
            "websocket_exec",
            docroot.path(),
            "exec",
            &["-m", &max_programs, "--", &args.program],
            Logging::Quiet,
        )
        .await?;
        let gateway_args: &[&str] = match kind {
            Kind::Direct => &["--direct", "*"],
            _ => &[],
        };
        let gateway = Gateway::start_with(docroot.path(), gateway_args, Logging::Quiet).await?;
        Ok(Some(System {
            kind,
            url: gateway.url("/exec"),
            front_pid: gateway.pid(),
            spawner_pid: backend.pid(),
            _gateway: Some(gateway),
            _backend: Some(backend),
            _websocketd: None,
            _docroot: Some(docroot),
        }))
    }

    /// PSS of the server processes and of the programs, in bytes.
    fn memory(&self) -> anyhow::Result<(u64, u64)> {
        let mut servers = pss(self.front_pid)?;
        if self.spawner_pid != self.front_pid {
            servers += pss(self.spawner_pid)?;
        }
        let mut programs = 0;
        for pid in children(self.spawner_pid) {
            // A program may exit between the scan and the read.
            programs += pss(pid).unwrap_or(0);
        }
        Ok((servers, programs))
    }

    async fn wait_for_programs(&self, n: usize) -> anyhow::Result<()> {
        let pid = self.spawner_pid;
        let what = format!("{n} programs under {}", self.kind.label());
        wait::until(&what, Duration::from_secs(30), || async move {
            Ok((children(pid).len() == n).then_some(()))
        })
        .await
    }
}

async fn start_websocketd(args: &ExecArgs) -> anyhow::Result<Option<System>> {
    let Ok(path) = which(&args.websocketd) else {
        return Ok(None);
    };
    // websocketd prints the port it was given, so give it a free one.
    let port = StdTcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut command = Command::new(path);
    command
        .arg("--address=127.0.0.1")
        .arg(format!("--port={port}"))
        .arg("--loglevel=error")
        .arg(&args.program)
        .stdout(std::process::Stdio::null());
    let mut guard = ChildGuard::spawn_with("websocketd", command, Logging::Quiet)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait::until("websocketd to accept", Duration::from_secs(20), || {
        let running = guard.check_running();
        async move {
            running?;
            Ok(TcpStream::connect(addr).await.ok().map(|_| ()))
        }
    })
    .await?;
    let pid = guard.pid();
    Ok(Some(System {
        kind: Kind::Websocketd,
        url: format!("ws://{addr}/"),
        front_pid: pid,
        spawner_pid: pid,
        _gateway: None,
        _backend: None,
        _websocketd: Some(guard),
        _docroot: None,
    }))
}

/// What one system measured.
#[derive(Debug, Default, Clone)]
struct Figures {
    connections_per_second: f64,
    round_trips_per_second: f64,
    round_trip_p50: Duration,
    round_trip_p99: Duration,
    server_bytes_per_client: f64,
    program_bytes_per_client: f64,
    errors: u64,
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// 64 bytes, one line: what each round trip sends.
const PAYLOAD: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde";

async fn connect(url: &str) -> anyhow::Result<Socket> {
    let (socket, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(url),
    )
    .await
    .context("handshake timed out")??;
    Ok(socket)
}

/// Sends `text` and checks that the same text comes back.
async fn round_trip(socket: &mut Socket, text: &str) -> anyhow::Result<()> {
    socket.send(Message::text(text)).await?;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .context("reply timed out")?
        {
            Some(Ok(Message::Text(reply))) if reply.as_str() == text => return Ok(()),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(other)) => bail!("unexpected reply {other:?}"),
            Some(Err(error)) => return Err(error.into()),
            None => bail!("connection ended"),
        }
    }
}

/// Closes with 1000 and reads until the server's close ends the connection.
async fn close(mut socket: Socket) -> anyhow::Result<()> {
    socket.close(None).await?;
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(message) = socket.next().await {
            message?;
        }
        anyhow::Ok(())
    })
    .await
    .context("close timed out")?
}

/// Workers that connect, do one round trip (so the program surely runs), and close.
async fn connection_rate(url: &str, workers: usize, duration: Duration) -> (f64, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (url, stop, done, errors) =
            (url.to_owned(), stop.clone(), done.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let attempt = async {
                    let mut socket = connect(&url).await?;
                    round_trip(&mut socket, "hello").await?;
                    close(socket).await
                };
                match attempt.await {
                    Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                    Err(error) => {
                        eprintln!("connection failed: {error:#}");
                        errors.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        if task.await.is_err() {
            errors.fetch_add(1, Ordering::Relaxed);
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    (
        done.load(Ordering::Relaxed) as f64 / elapsed,
        errors.load(Ordering::Relaxed),
    )
}

/// One client, one program, one message in flight.
async fn round_trips(url: &str, duration: Duration, figures: &mut Figures) -> anyhow::Result<()> {
    let mut socket = connect(url).await?;
    let mut histogram = Histogram::<u64>::new(3)?;
    let start = Instant::now();
    let mut count = 0u64;
    while start.elapsed() < duration {
        let sent = Instant::now();
        if let Err(error) = round_trip(&mut socket, PAYLOAD).await {
            eprintln!("round trip failed: {error:#}");
            figures.errors += 1;
            break;
        }
        histogram.record(u64::try_from(sent.elapsed().as_nanos()).unwrap_or(u64::MAX))?;
        count += 1;
    }
    figures.round_trips_per_second = count as f64 / start.elapsed().as_secs_f64();
    figures.round_trip_p50 = Duration::from_nanos(histogram.value_at_quantile(0.5));
    figures.round_trip_p99 = Duration::from_nanos(histogram.value_at_quantile(0.99));
    close(socket).await?;
    Ok(())
}

/// `clients` connected clients, each with its program running (one round
/// trip done): the memory they add, per client.
async fn memory(system: &System, clients: usize, figures: &mut Figures) -> anyhow::Result<()> {
    system.wait_for_programs(0).await?;
    let (servers_before, _) = system.memory()?;
    let mut sockets = Vec::with_capacity(clients);
    for _ in 0..clients {
        let mut socket = connect(&system.url).await?;
        round_trip(&mut socket, "hello").await?;
        sockets.push(socket);
    }
    system.wait_for_programs(clients).await?;
    let (servers_after, programs) = system.memory()?;
    figures.server_bytes_per_client =
        servers_after.saturating_sub(servers_before) as f64 / clients as f64;
    figures.program_bytes_per_client = programs as f64 / clients as f64;
    for socket in sockets {
        close(socket).await?;
    }
    system.wait_for_programs(0).await?;
    Ok(())
}

/// Runs the whole comparison and prints its markdown table.
pub async fn run(args: ExecArgs) -> anyhow::Result<()> {
    let seconds = args.seconds.unwrap_or(if args.smoke { 0.3 } else { 5.0 });
    ensure!(
        seconds > 0.0 && seconds <= 3600.0,
        "--seconds must be between 0 and 3600"
    );
    let duration = Duration::from_secs_f64(seconds);
    let clients = args
        .clients
        .unwrap_or(if args.smoke { 10 } else { 200 })
        .max(1);
    let workers = args.workers.max(1);
    let max_programs = clients + workers + 16;
    let mut rows = Vec::new();
    for kind in [Kind::Websocketd, Kind::Relay, Kind::Direct] {
        let Some(system) = System::start(kind, &args, max_programs).await? else {
            eprintln!("{}: not installed, left out", kind.label());
            continue;
        };
        let mut figures = Figures::default();
        eprintln!("{}: connections", kind.label());
        let (rate, errors) = connection_rate(&system.url, workers, duration).await;
        figures.connections_per_second = rate;
        figures.errors += errors;
        system.wait_for_programs(0).await?;
        eprintln!("{}: round trips", kind.label());
        round_trips(&system.url, duration, &mut figures).await?;
        eprintln!("{}: memory, {clients} clients", kind.label());
        memory(&system, clients, &mut figures).await?;
        rows.push((kind, figures));
    }
    println!("{}", table(&rows, &args.program, workers, clients));
    let errors: u64 = rows.iter().map(|(_, figures)| figures.errors).sum();
    if errors > 0 {
        bail!("THE RUN HAD {errors} ERRORS: the figures above are not valid");
    }
    Ok(())
}

fn table(rows: &[(Kind, Figures)], program: &str, workers: usize, clients: usize) -> String {
    let baseline = rows
        .iter()
        .find(|(kind, _)| *kind == Kind::Websocketd)
        .map(|(_, figures)| figures.clone());
    let ratio = |value: f64, base: Option<f64>| match base {
        Some(base) if base > 0.0 => format!(" ({:.2}×)", value / base),
        _ => String::new(),
    };
    let mut out = format!(
        "Program: `{program}`; ratios against websocketd.\n\n| | {} |\n|---|{}\n",
        rows.iter()
            .map(|(kind, _)| kind.label())
            .collect::<Vec<_>>()
            .join(" | "),
        "---|".repeat(rows.len())
    );
    let mut line = |label: String, cell: &dyn Fn(&Figures) -> String| {
        let cells: Vec<String> = rows.iter().map(|(_, figures)| cell(figures)).collect();
        out.push_str(&format!("| {label} | {} |\n", cells.join(" | ")));
    };
    let base = baseline.clone();
    line(
        format!(
            "connections with a program started/s ({workers} workers: connect, 1 round trip, close)"
        ),
        &|f| {
            format!(
                "{:.0}{}",
                f.connections_per_second,
                ratio(
                    f.connections_per_second,
                    base.as_ref().map(|b| b.connections_per_second)
                )
            )
        },
    );
    let base = baseline.clone();
    line(
        "round trips/s through one program (64 B, 1 in flight)".to_owned(),
        &|f| {
            format!(
                "{:.0}{}",
                f.round_trips_per_second,
                ratio(
                    f.round_trips_per_second,
                    base.as_ref().map(|b| b.round_trips_per_second)
                )
            )
        },
    );
    line("round trip p50 / p99".to_owned(), &|f| {
        format!(
            "{:.0} µs / {:.0} µs",
            f.round_trip_p50.as_secs_f64() * 1e6,
            f.round_trip_p99.as_secs_f64() * 1e6
        )
    });
    let base = baseline.clone();
    line(
        format!("memory per connected client, servers + program (PSS, {clients} clients)"),
        &|f| {
            let total = f.server_bytes_per_client + f.program_bytes_per_client;
            let base_total = base
                .as_ref()
                .map(|b| b.server_bytes_per_client + b.program_bytes_per_client);
            format!("{:.0} KiB{}", total / 1024.0, ratio(total, base_total))
        },
    );
    line("of which the servers / the program".to_owned(), &|f| {
        format!(
            "{:.0} KiB / {:.0} KiB",
            f.server_bytes_per_client / 1024.0,
            f.program_bytes_per_client / 1024.0
        )
    });
    line("errors".to_owned(), &|f| f.errors.to_string());
    out
}

/// Proportional set size of `pid` (`Pss` of /proc/PID/smaps_rollup), in bytes:
/// shared pages (the program's code, libc) count once across processes.
fn pss(pid: u32) -> anyhow::Result<u64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .with_context(|| format!("reading /proc/{pid}/smaps_rollup"))?;
    let kib: u64 = rollup
        .lines()
        .find_map(|line| line.strip_prefix("Pss:"))
        .context("no Pss")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kib * 1024)
}

/// The live children of `parent` (zombies left out).
fn children(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (_, rest) = stat.rsplit_once(')')?;
            let mut fields = rest.split_whitespace();
            let state = fields.next()?;
            let ppid: u32 = fields.next()?.parse().ok()?;
            (ppid == parent && state != "Z").then_some(pid)
        })
        .collect()
}

/// `program` as given, or found on PATH.
fn which(program: &Path) -> anyhow::Result<PathBuf> {
    if program.components().count() > 1 {
        return Ok(program.to_owned());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|directory| directory.join(program))
        .find(|candidate| candidate.is_file())
        .with_context(|| format!("{} not found on PATH", program.display()))
}
