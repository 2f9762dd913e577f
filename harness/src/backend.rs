//! A backend process under test, ready once its socket file accepts a connection.
//!
//! The readiness probe connects and closes before sending OPEN, which every
//! backend tolerates (the link protocol allows a link to end before OPEN).

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use nix::sys::signal::Signal;

use crate::child::{ChildGuard, Logging};
use crate::{STARTUP_DEADLINE, binaries, wait};

/// A running backend; dropping it kills and reaps the process.
#[derive(Debug)]
pub struct Backend {
    process: ChildGuard,
    socket_path: PathBuf,
}

impl Backend {
    /// Starts the workspace binary `program` as `program -R <docroot> -n <name> <extra_args>`
    /// and waits until `<docroot>/<name>` accepts a connection.
    pub async fn start(
        program: &str,
        docroot: &Path,
        name: &str,
        extra_args: &[&str],
    ) -> anyhow::Result<Backend> {
        Backend::start_with(program, docroot, name, extra_args, Logging::Debug).await
    }

    /// [`Backend::start`] with the given [`Logging`] (benchmarks run it quiet).
    pub async fn start_with(
        program: &str,
        docroot: &Path,
        name: &str,
        extra_args: &[&str],
        logging: Logging,
    ) -> anyhow::Result<Backend> {
        let mut command = Command::new(binaries::bin_path(program)?);
        command
            .arg("-R")
            .arg(docroot)
            .arg("-n")
            .arg(name)
            .args(extra_args);
        let label = format!("{program} ({name})");
        Backend::start_command_with(&label, command, &docroot.join(name), logging).await
    }

    /// Starts any `command` (a backend in another language, say) that will
    /// listen on `socket_path`, and waits until that socket accepts a connection.
    pub async fn start_command(
        label: &str,
        command: Command,
        socket_path: &Path,
    ) -> anyhow::Result<Backend> {
        Backend::start_command_with(label, command, socket_path, Logging::Debug).await
    }

    /// [`Backend::start_command`] with the given [`Logging`].
    pub async fn start_command_with(
        label: &str,
        mut command: Command,
        socket_path: &Path,
        logging: Logging,
    ) -> anyhow::Result<Backend> {
        command.stdout(Stdio::null());
        let mut backend = Backend {
            process: ChildGuard::spawn_with(label, command, logging)?,
            socket_path: socket_path.to_owned(),
        };
        let what = format!("{label} to accept on {}", socket_path.display());
        wait::until(&what, STARTUP_DEADLINE, || {
            let ready = backend
                .process
                .check_running()
                .map(|()| UnixStream::connect(socket_path).is_ok().then_some(()));
            async move { ready }
        })
        .await?;
        Ok(backend)
    }

    /// The socket file the backend listens on.
    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// An error carrying the backend's stderr if it has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        self.process.check_running()
    }

    /// Kills the backend with SIGKILL (a crash: the socket file stays) and reaps it.
    pub fn kill(&mut self) -> anyhow::Result<ExitStatus> {
        self.process.kill_and_reap()
    }

    /// Sends SIGTERM, the polite stop that removes the socket file.
    pub fn sigterm(&mut self) -> anyhow::Result<()> {
        self.process.signal(Signal::SIGTERM)
    }

    /// Waits for the backend to exit, at most `deadline`.
    pub async fn wait_exit(&mut self, deadline: std::time::Duration) -> anyhow::Result<ExitStatus> {
        self.process.wait_exit(deadline).await
    }

    /// What the backend wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        self.process.stderr_text()
    }
}
