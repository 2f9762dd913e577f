//! `--workers N`: this process becomes a supervisor that runs N gateway
//! processes (workers) of the same binary on the same ports ([`run_workers`]).
//!
//! Each worker gets its own listening sockets, passed as descriptors 3, 4, …
//! with the `LISTEN_FDS` protocol (`activation`): bound here with
//! `SO_REUSEPORT` at the same addresses, so the kernel spreads new
//! connections over the workers' accept queues; or, under systemd socket
//! activation, a copy of the sockets systemd passed (one queue, N accept
//! loops). Each worker is a whole gateway with its own descriptor limit and
//! `--max-connections`; the supervisor serves no client.
//!
//! Signals: SIGTERM and SIGINT are forwarded as SIGTERM (each worker closes
//! its clients with 1001), SIGHUP as SIGHUP, SIGUSR2 as SIGUSR2 (each worker
//! drains); after SIGTERM, SIGINT or SIGUSR2 the supervisor waits for every
//! worker to exit, restarts none, and exits. A worker that exits on its own
//! is restarted on fresh sockets, after 100 ms doubling up to 10 s while
//! restarts keep failing within 10 s. A worker whose supervisor dies gets
//! SIGTERM from the kernel (`PR_SET_PDEATHSIG`, [`become_worker`]).

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::OwnedFd;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use command_fds::{CommandFdExt, FdMapping};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinSet;

use crate::activation::{self, InheritedSockets, PLAIN_NAME, TLS_NAME};
use crate::config::Config;

/// Set in a worker's environment to its index (0..N); a process started
/// with it serves the sockets it inherited and never supervises.
pub const WORKER_ENV: &str = "WSGATE_WORKER";
/// Set in a worker's environment to its supervisor's process id.
const SUPERVISOR_ENV: &str = "WSGATE_SUPERVISOR";

/// The first pause before restarting a worker that died.
const FIRST_RESTART_DELAY: Duration = Duration::from_millis(100);
/// The longest pause before restarting a worker.
const MAX_RESTART_DELAY: Duration = Duration::from_secs(10);
/// A worker that ran this long before dying is restarted after the first pause again.
const HEALTHY_RUN: Duration = Duration::from_secs(10);
/// Time on top of the workers' own drain and shutdown bounds before the
/// supervisor kills those still running.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Where each worker's sockets come from.
enum SocketSource {
    /// Bound here with `SO_REUSEPORT`, one fresh set per worker (start and restart).
    Bound {
        plain: Vec<SocketAddr>,
        tls: Vec<SocketAddr>,
    },
    /// Passed by systemd; every worker gets a copy of the same sockets.
    Inherited(InheritedSockets),
}

impl SocketSource {
    /// A worker's sockets, plain ones first, with their `LISTEN_FDNAMES` names.
    fn sockets(&self) -> io::Result<Vec<(TcpListener, &'static str)>> {
        let mut sockets = Vec::new();
        match self {
            SocketSource::Bound { plain, tls } => {
                for addr in plain {
                    sockets.push((activation::bind_reuseport(*addr)?, PLAIN_NAME));
                }
                for addr in tls {
                    sockets.push((activation::bind_reuseport(*addr)?, TLS_NAME));
                }
            }
            SocketSource::Inherited(inherited) => {
                for listener in &inherited.plain {
                    sockets.push((listener.try_clone()?, PLAIN_NAME));
                }
                for listener in &inherited.tls {
                    sockets.push((listener.try_clone()?, TLS_NAME));
                }
            }
        }
        Ok(sockets)
    }
}

/// One running worker.
struct Worker {
    pid: Pid,
    started: Instant,
}

/// Why the supervisor cannot run.
#[derive(Debug, thiserror::Error)]
pub enum WorkersError {
    /// A listening socket cannot be bound or copied.
    #[error("cannot prepare the workers' sockets")]
    Sockets(#[source] io::Error),
    /// The signal handlers cannot be installed.
    #[error("cannot catch signals")]
    Signals(#[source] io::Error),
    /// A worker process cannot be started.
    #[error("cannot start worker {index}")]
    Spawn {
        /// The worker's index.
        index: usize,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Runs `config.workers` workers, `wsgate` processes started with `args`
/// (this process's own arguments) and [`WORKER_ENV`], on the sockets of
/// `inherited` or on sockets bound here at `config`'s addresses, and
/// supervises them until a stop signal; prints each `listening on` line
/// once for all workers. Returns once every worker has exited.
pub async fn run_workers(
    config: &Config,
    inherited: Option<InheritedSockets>,
    args: Vec<OsString>,
) -> Result<(), WorkersError> {
    let mut terminate = signal(SignalKind::terminate()).map_err(WorkersError::Signals)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(WorkersError::Signals)?;
    let mut hangup = signal(SignalKind::hangup()).map_err(WorkersError::Signals)?;
    let mut drain = signal(SignalKind::user_defined2()).map_err(WorkersError::Signals)?;

    // The first worker's sockets fix the ports that 0 picked; later sockets
    // (other workers, restarts) bind the same addresses.
    let (source, first_sockets) = match inherited {
        Some(inherited) => {
            let source = SocketSource::Inherited(inherited);
            let sockets = source.sockets().map_err(WorkersError::Sockets)?;
            (source, sockets)
        }
        None => {
            let placeholder = SocketSource::Bound {
                plain: config.listen.clone(),
                tls: config.tls_listen.clone(),
            };
            let sockets = placeholder.sockets().map_err(WorkersError::Sockets)?;
            let mut plain = Vec::new();
            let mut tls = Vec::new();
            for (listener, name) in &sockets {
                let addr = listener.local_addr().map_err(WorkersError::Sockets)?;
                if *name == TLS_NAME {
                    tls.push(addr);
                } else {
                    plain.push(addr);
                }
            }
            (SocketSource::Bound { plain, tls }, sockets)
        }
    };
    announce(&first_sockets).map_err(WorkersError::Sockets)?;

    let mut running: HashMap<usize, Worker> = HashMap::new();
    let mut exits: JoinSet<(usize, io::Result<ExitStatus>)> = JoinSet::new();
    let mut restarts: JoinSet<usize> = JoinSet::new();
    let mut delays = vec![FIRST_RESTART_DELAY; config.workers];
    let mut first_sockets = Some(first_sockets);
    for index in 0..config.workers {
        let sockets = match first_sockets.take() {
            Some(sockets) => sockets,
            None => source.sockets().map_err(WorkersError::Sockets)?,
        };
        let worker = spawn_worker(index, sockets, &args, &mut exits)
            .map_err(|source| WorkersError::Spawn { index, source })?;
        running.insert(index, worker);
    }
    tracing::info!(n_workers = config.workers, "workers started");

    let mut stop_deadline: Option<tokio::time::Instant> = None;
    loop {
        if stop_deadline.is_some() && running.is_empty() {
            break;
        }
        let deadline = async {
            match stop_deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = terminate.recv() => stop(&running, Signal::SIGTERM, "SIGTERM", config, &mut stop_deadline),
            _ = interrupt.recv() => stop(&running, Signal::SIGTERM, "SIGINT", config, &mut stop_deadline),
            _ = drain.recv() => stop(&running, Signal::SIGUSR2, "SIGUSR2", config, &mut stop_deadline),
            _ = hangup.recv() => {
                tracing::info!("SIGHUP: forwarded to the workers");
                signal_all(&running, Signal::SIGHUP);
            }
            Some(exited) = exits.join_next() => {
                let Ok((index, status)) = exited else { continue };
                let Some(worker) = running.remove(&index) else { continue };
                if stop_deadline.is_some() {
                    tracing::info!(worker = index, status = %describe(&status), "worker stopped");
                    continue;
                }
                let delay = if worker.started.elapsed() >= HEALTHY_RUN {
                    FIRST_RESTART_DELAY
                } else {
                    delays[index]
                };
                delays[index] = (delay * 2).min(MAX_RESTART_DELAY);
                tracing::error!(
                    worker = index,
                    status = %describe(&status),
                    restart_in_ms = delay.as_millis() as u64,
                    "worker exited; restarting it"
                );
                restarts.spawn(async move {
                    tokio::time::sleep(delay).await;
                    index
                });
            }
            Some(due) = restarts.join_next() => {
                let Ok(index) = due else { continue };
                if stop_deadline.is_some() {
                    continue;
                }
                let started = source
                    .sockets()
                    .and_then(|sockets| spawn_worker(index, sockets, &args, &mut exits));
                match started {
                    Ok(worker) => {
                        tracing::info!(worker = index, pid = worker.pid.as_raw(), "worker restarted");
                        running.insert(index, worker);
                    }
                    Err(error) => {
                        let delay = delays[index];
                        delays[index] = (delay * 2).min(MAX_RESTART_DELAY);
                        tracing::error!(worker = index, %error, "cannot restart the worker; trying again");
                        restarts.spawn(async move {
                            tokio::time::sleep(delay).await;
                            index
                        });
                    }
                }
            }
            () = deadline => {
                tracing::warn!(n_workers = running.len(), "workers still running after the shutdown bound; killing them");
                signal_all(&running, Signal::SIGKILL);
                stop_deadline = Some(tokio::time::Instant::now() + STOP_GRACE);
            }
        }
    }
    tracing::info!("every worker has exited");
    Ok(())
}

/// Forwards a stop signal and bounds the time the workers have to exit:
/// a drain and then a shutdown, each within the shutdown timeout.
fn stop(
    running: &HashMap<usize, Worker>,
    signal: Signal,
    received: &'static str,
    config: &Config,
    stop_deadline: &mut Option<tokio::time::Instant>,
) {
    tracing::info!(signal = received, "stopping the workers");
    signal_all(running, signal);
    if stop_deadline.is_none() {
        *stop_deadline =
            Some(tokio::time::Instant::now() + 2 * config.shutdown_timeout + STOP_GRACE);
    }
}

fn signal_all(running: &HashMap<usize, Worker>, signal: Signal) {
    for (index, worker) in running {
        if let Err(error) = kill(worker.pid, signal) {
            tracing::warn!(worker = index, %error, ?signal, "cannot signal the worker");
        }
    }
}

fn describe(status: &io::Result<ExitStatus>) -> String {
    match status {
        Ok(status) => status.to_string(),
        Err(error) => format!("unknown ({error})"),
    }
}

/// Prints `listening on http://<addr>` (or `https://`) per socket, once.
fn announce(sockets: &[(TcpListener, &'static str)]) -> io::Result<()> {
    let mut stdout = io::stdout().lock();
    for (listener, name) in sockets {
        let scheme = if *name == TLS_NAME { "https" } else { "http" };
        writeln!(stdout, "listening on {scheme}://{}", listener.local_addr()?)?;
    }
    stdout.flush()
}

/// Starts worker `index` on `sockets` (descriptors 3, 4, … in the worker);
/// the supervisor's copies are closed once the worker has them.
fn spawn_worker(
    index: usize,
    sockets: Vec<(TcpListener, &'static str)>,
    args: &[OsString],
    exits: &mut JoinSet<(usize, io::Result<ExitStatus>)>,
) -> io::Result<Worker> {
    let names: Vec<&str> = sockets.iter().map(|(_, name)| *name).collect();
    let mappings = sockets
        .into_iter()
        .zip(3..)
        .map(|((listener, _), child_fd)| FdMapping {
            parent_fd: OwnedFd::from(listener),
            child_fd,
        })
        .collect::<Vec<_>>();
    let mut command = tokio::process::Command::new("/proc/self/exe");
    command
        .arg0("wsgate")
        .args(args)
        .env(WORKER_ENV, index.to_string())
        .env(SUPERVISOR_ENV, std::process::id().to_string())
        .env("LISTEN_FDS", names.len().to_string())
        .env("LISTEN_FDNAMES", names.join(":"))
        .env_remove("LISTEN_PID")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true);
    command
        .fd_mappings(mappings)
        .map_err(|collision| io::Error::other(collision.to_string()))?;
    let mut child = command.spawn()?;
    let pid = child
        .id()
        .and_then(|pid| i32::try_from(pid).ok())
        .map(Pid::from_raw)
        .ok_or_else(|| io::Error::other("the worker exited at once"))?;
    exits.spawn(async move { (index, child.wait().await) });
    Ok(Worker {
        pid,
        started: Instant::now(),
    })
}

/// In a worker (a process with [`WORKER_ENV`] set): asks the kernel for
/// SIGTERM when the supervisor dies, and returns the worker's index. An
/// error if the supervisor is already gone.
///
/// The kernel sends that signal when the *thread* that started the worker
/// ends: [`run_workers`] starts every worker from the future that
/// `block_on` runs on the supervisor's main thread, which lives as long as
/// the process.
pub fn become_worker() -> io::Result<Option<usize>> {
    let Some(index) = std::env::var_os(WORKER_ENV) else {
        return Ok(None);
    };
    let index = index
        .to_str()
        .and_then(|index| index.parse().ok())
        .ok_or_else(|| io::Error::other(format!("{WORKER_ENV} is not a worker index")))?;
    nix::sys::prctl::set_pdeathsig(Signal::SIGTERM)?;
    let supervisor = std::env::var(SUPERVISOR_ENV)
        .ok()
        .and_then(|pid| pid.parse::<i32>().ok());
    if supervisor != Some(nix::unistd::getppid().as_raw()) {
        return Err(io::Error::other("the supervisor is gone"));
    }
    Ok(Some(index))
}
