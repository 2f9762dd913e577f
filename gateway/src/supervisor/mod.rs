//! Supervised backends: the `[[backend]]` tables of the configuration file
//! run as child processes of the gateway ([`Supervisor`]).
//!
//! Each backend is ready when its socket `<docroot>/<name>` accepts a
//! connection; [`Supervisor::start`] returns once every one is, so the
//! gateway accepts no client before its backends can take it. A backend
//! that exits is started again after a pause that doubles from
//! `restart_delay_ms` up to `restart_max_delay_ms` and starts over once a
//! run lasted `stable_after`; one that does not accept within
//! `ready_timeout` is stopped and counts as a failed run. Its relayed
//! clients see the link end and get `1011`, as with any backend that dies.
//!
//! Each child runs in a process group of its own (a Ctrl-C on the gateway's
//! terminal reaches the gateway alone, which stops its clients first), with
//! the gateway's environment plus the table's `env`, stdin closed, and its
//! stdout and stderr logged line by line (`output`). Stopping sends SIGTERM
//! and, after `stop_timeout`, SIGKILL to its process group. A reload
//! ([`Supervisor::apply`]) starts added backends, stops removed ones, and
//! restarts those whose table changed, the new process only once the old
//! one is gone (both would claim the same socket).
//!
//! The gateway only spawns commands: it knows nothing of what a backend is.

mod output;
mod spec;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::net::UnixStream;
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::Config;
pub use spec::BackendConfigError;
pub(crate) use spec::{BackendSpec, BackendTable, backend_specs};

/// How long a stopped backend's output may still be read once it exited
/// (a grandchild may hold the pipes open).
const OUTPUT_DRAIN: Duration = Duration::from_secs(1);

/// First pause between two readiness probes; it doubles up to [`MAX_PROBE_PAUSE`].
const FIRST_PROBE_PAUSE: Duration = Duration::from_millis(5);
/// Longest pause between two readiness probes.
const MAX_PROBE_PAUSE: Duration = Duration::from_millis(100);

/// Why the backends could not all be started.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// The command or user cannot be used (checked again at each start).
    #[error(transparent)]
    Host(#[from] BackendConfigError),
    /// The process could not be started.
    #[error("cannot start backend {name:?} ({})", command.display())]
    Spawn {
        /// The backend.
        name: String,
        /// The program.
        command: PathBuf,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// The backend exited before its socket accepted.
    #[error("backend {name:?} exited ({status}) before it accepted on {}; its output is in the log above", socket.display())]
    Exited {
        /// The backend.
        name: String,
        /// Its socket.
        socket: PathBuf,
        /// How it ended.
        status: ExitStatus,
    },
    /// The socket did not accept within the backend's `ready_timeout`.
    #[error("backend {name:?} did not accept on {} within {timeout:?}", socket.display())]
    NotReady {
        /// The backend.
        name: String,
        /// Its socket.
        socket: PathBuf,
        /// Its `ready_timeout`.
        timeout: Duration,
    },
    /// A stop signal arrived while the backends were starting.
    #[error("stopped while the backends were starting")]
    Interrupted,
}

/// The running supervised backends.
#[derive(Debug)]
pub struct Supervisor {
    state: Mutex<State>,
    /// Every backend's supervising task.
    tracker: TaskTracker,
}

#[derive(Debug, Default)]
struct State {
    running: BTreeMap<String, Supervised>,
    /// Set by [`Supervisor::stop`]: no backend starts any more.
    stopping: bool,
}

/// One backend's supervising task.
#[derive(Debug)]
struct Supervised {
    spec: BackendSpec,
    /// Cancelled to stop the backend for good.
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// Where a backend's first run reports whether it became ready.
type ReadySender = oneshot::Sender<Result<(), SupervisorError>>;

impl Supervisor {
    /// Supervises nothing, and a reload starts nothing: a worker of
    /// `--workers`, whose supervising process runs the backends.
    pub fn none() -> Supervisor {
        Supervisor {
            state: Mutex::new(State {
                running: BTreeMap::new(),
                stopping: true,
            }),
            tracker: TaskTracker::new(),
        }
    }

    /// Starts every backend of `config` and returns once each one's socket
    /// accepts. On an error (naming the backend), or when `shutdown` is
    /// cancelled first, the backends started so far are stopped again.
    pub async fn start(
        config: &Config,
        shutdown: &CancellationToken,
    ) -> Result<Supervisor, SupervisorError> {
        let supervisor = Supervisor {
            state: Mutex::new(State::default()),
            tracker: TaskTracker::new(),
        };
        let mut readiness = FuturesUnordered::new();
        {
            let mut state = supervisor.lock();
            for spec in &config.backends {
                let (ready, is_ready) = oneshot::channel();
                supervisor.launch(&mut state, spec.clone(), None, Some(ready));
                let name = spec.name.clone();
                readiness.push(async move { (name, is_ready.await) });
            }
        }
        let all_ready = async {
            while let Some((name, outcome)) = readiness.next().await {
                match outcome {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => return Err(error),
                    // The task ends without reporting only when it is stopped.
                    Err(_) => {
                        tracing::warn!(name, "backend stopped while starting");
                        return Err(SupervisorError::Interrupted);
                    }
                }
            }
            Ok(())
        };
        let outcome = tokio::select! {
            outcome = all_ready => outcome,
            () = shutdown.cancelled() => Err(SupervisorError::Interrupted),
        };
        match outcome {
            Ok(()) => {
                if !config.backends.is_empty() {
                    tracing::info!(n_backends = config.backends.len(), "backends ready");
                }
                Ok(supervisor)
            }
            Err(error) => {
                supervisor.stop().await;
                Err(error)
            }
        }
    }

    /// Makes the running backends those of `specs`: starts the new ones,
    /// stops those no longer there, and restarts those whose table changed.
    /// Returns at once; the processes start and stop in the background.
    pub(crate) fn apply(&self, specs: &[BackendSpec]) {
        let mut state = self.lock();
        if state.stopping {
            return;
        }
        let wanted: BTreeMap<&str, &BackendSpec> = specs
            .iter()
            .map(|spec| (spec.name.as_str(), spec))
            .collect();
        let removed: Vec<String> = state
            .running
            .keys()
            .filter(|name| !wanted.contains_key(name.as_str()))
            .cloned()
            .collect();
        for name in removed {
            if let Some(supervised) = state.running.remove(&name) {
                tracing::info!(name, "backend removed from the configuration: stopping it");
                supervised.stop.cancel();
            }
        }
        for spec in specs {
            let previous = match state.running.remove(&spec.name) {
                Some(supervised) if supervised.spec == *spec => {
                    state.running.insert(spec.name.clone(), supervised);
                    continue;
                }
                Some(supervised) => {
                    tracing::info!(name = spec.name, "backend's table changed: restarting it");
                    supervised.stop.cancel();
                    Some(supervised.task)
                }
                None => {
                    tracing::info!(name = spec.name, "backend added: starting it");
                    None
                }
            };
            self.launch(&mut state, spec.clone(), previous, None);
        }
    }

    /// Stops every backend (SIGTERM, SIGKILL after its stop timeout) and
    /// returns once all of them are reaped. No backend starts afterwards.
    pub async fn stop(&self) {
        {
            let mut state = self.lock();
            state.stopping = true;
            for supervised in state.running.values() {
                supervised.stop.cancel();
            }
        }
        self.tracker.close();
        self.tracker.wait().await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Spawns the task supervising `spec`, once `previous` (the task of the
    /// same name it replaces) has finished.
    fn launch(
        &self,
        state: &mut State,
        spec: BackendSpec,
        previous: Option<JoinHandle<()>>,
        ready: Option<ReadySender>,
    ) {
        let stop = CancellationToken::new();
        let span = tracing::info_span!("backend", name = %spec.name);
        let task = self
            .tracker
            .spawn(supervise(spec.clone(), stop.clone(), previous, ready).instrument(span));
        state
            .running
            .insert(spec.name.clone(), Supervised { spec, stop, task });
    }
}

/// How one run of a backend ended.
enum RunEnd {
    /// It exited, failed to start or never became ready: start it again.
    Failed,
    /// It was asked to stop, and did.
    Stopped,
}

/// Runs `spec` again and again until `stop` is cancelled.
async fn supervise(
    spec: BackendSpec,
    stop: CancellationToken,
    previous: Option<JoinHandle<()>>,
    mut ready: Option<ReadySender>,
) {
    if let Some(previous) = previous {
        // It ends within its stop timeout; its panic is already logged.
        let _ = previous.await;
    }
    let mut last_pause = None;
    while !stop.is_cancelled() {
        let started = Instant::now();
        if let RunEnd::Stopped = run_once(&spec, &stop, &mut ready).await {
            return;
        }
        let pause = spec.restart.next_delay(last_pause, started.elapsed());
        last_pause = Some(pause);
        tracing::info!(?pause, "restarting the backend after a pause");
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// Starts the backend once and watches it until it exits or is stopped.
/// The first run of a backend tells `ready` whether it became ready.
async fn run_once(
    spec: &BackendSpec,
    stop: &CancellationToken,
    ready: &mut Option<ReadySender>,
) -> RunEnd {
    let report = |ready: &mut Option<ReadySender>, outcome: Result<(), SupervisorError>| {
        if let Err(error) = &outcome {
            tracing::error!(error = error as &dyn std::error::Error, "backend not ready");
        }
        if let Some(ready) = ready.take() {
            let _ = ready.send(outcome);
        }
    };
    let (mut child, program) = match spawn(spec) {
        Ok(spawned) => spawned,
        Err(error) => {
            report(ready, Err(error));
            return RunEnd::Failed;
        }
    };
    let pid = child.id().unwrap_or_default();
    let span = tracing::info_span!("run", pid);
    let mut outputs = Vec::with_capacity(2);
    if let Some(stdout) = child.stdout.take() {
        outputs.push(tokio::spawn(
            output::log_lines(stdout, "stdout").instrument(span.clone()),
        ));
    }
    if let Some(stderr) = child.stderr.take() {
        outputs.push(tokio::spawn(
            output::log_lines(stderr, "stderr").instrument(span.clone()),
        ));
    }
    let end = async {
        tracing::info!(program = %program.display(), "backend started");
        let became_ready = tokio::select! {
            accepted = wait_until_accepting(spec) => accepted,
            status = child.wait() => {
                let error = match status {
                    Ok(status) => SupervisorError::Exited {
                        name: spec.name.clone(),
                        socket: spec.socket_path.clone(),
                        status,
                    },
                    Err(source) => SupervisorError::Spawn {
                        name: spec.name.clone(),
                        command: program.clone(),
                        source,
                    },
                };
                report(ready, Err(error));
                return RunEnd::Failed;
            }
            () = stop.cancelled() => {
                terminate(&mut child, spec.stop_timeout).await;
                return RunEnd::Stopped;
            }
        };
        if let Err(error) = became_ready {
            report(ready, Err(error));
            terminate(&mut child, spec.stop_timeout).await;
            return RunEnd::Failed;
        }
        tracing::info!(socket = %spec.socket_path.display(), "backend ready");
        report(ready, Ok(()));
        tokio::select! {
            status = child.wait() => {
                match status {
                    Ok(status) => tracing::warn!(%status, "backend exited"),
                    Err(error) => tracing::error!(%error, "cannot wait for the backend"),
                }
                RunEnd::Failed
            }
            () = stop.cancelled() => {
                terminate(&mut child, spec.stop_timeout).await;
                RunEnd::Stopped
            }
        }
    }
    .instrument(span.clone())
    .await;
    for output in outputs {
        let abort = output.abort_handle();
        if tokio::time::timeout(OUTPUT_DRAIN, output).await.is_err() {
            abort.abort();
        }
    }
    end
}

/// Starts the backend's process; returns it and the program it runs.
fn spawn(spec: &BackendSpec) -> Result<(Child, PathBuf), SupervisorError> {
    let (program, run_as) = spec.check_host()?;
    let mut command = Command::new(&program);
    command
        .args(&spec.args)
        .envs(&spec.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        // A safety net: a gateway that unwinds does not leave the child behind.
        .kill_on_drop(true);
    if let Some(run_as) = run_as {
        // std clears the supplementary groups when it switches the user.
        command.uid(run_as.uid).gid(run_as.gid);
    }
    let child = command.spawn().map_err(|source| SupervisorError::Spawn {
        name: spec.name.clone(),
        command: program.clone(),
        source,
    })?;
    Ok((child, program))
}

/// Waits until the backend's socket accepts a connection, probing with
/// growing pauses, at most its `ready_timeout`. The probe closes before
/// OPEN, which the link protocol allows.
async fn wait_until_accepting(spec: &BackendSpec) -> Result<(), SupervisorError> {
    let probing = async {
        let mut pause = FIRST_PROBE_PAUSE;
        loop {
            if UnixStream::connect(&spec.socket_path).await.is_ok() {
                return;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_PROBE_PAUSE);
        }
    };
    tokio::time::timeout(spec.ready_timeout, probing)
        .await
        .map_err(|_| SupervisorError::NotReady {
            name: spec.name.clone(),
            socket: spec.socket_path.clone(),
            timeout: spec.ready_timeout,
        })
}

/// Stops the child: SIGTERM, then SIGKILL to its process group after `grace`.
async fn terminate(child: &mut Child, grace: Duration) {
    let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) else {
        // Reaped already.
        return;
    };
    let pid = Pid::from_raw(pid);
    if let Err(error) = kill(pid, Signal::SIGTERM) {
        tracing::warn!(%error, "cannot send SIGTERM to the backend");
    }
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(Ok(status)) => tracing::info!(%status, "backend stopped"),
        Ok(Err(error)) => tracing::error!(%error, "cannot wait for the backend"),
        Err(_) => {
            tracing::warn!(?grace, "backend still running after SIGTERM: killing it");
            if let Err(error) = killpg(pid, Signal::SIGKILL) {
                tracing::warn!(%error, "cannot kill the backend's process group");
            }
            match child.wait().await {
                Ok(status) => tracing::info!(%status, "backend killed"),
                Err(error) => tracing::error!(%error, "cannot reap the backend"),
            }
        }
    }
}
