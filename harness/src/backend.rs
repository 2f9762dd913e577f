//! A backend process under test, ready once its socket file accepts a connection.
//!
//! The readiness probe connects and closes before sending OPEN, which every
//! backend tolerates (the link protocol allows a link to end before OPEN).
//! [`Backend::start_with_metrics`] also gives it `--metrics-listen` on an
//! ephemeral port, read from its `metrics on` line, and waits for that
//! endpoint to answer. [`Backend::start_token_list_broker`] is the
//! `websocket_broker` that admits only the tokens of a list file.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use anyhow::Context;
use nix::sys::signal::Signal;
use tokio::sync::oneshot;

use crate::child::{ChildGuard, Logging};
use crate::metrics::{self, Scrape};
use crate::{STARTUP_DEADLINE, binaries, wait};

/// A running backend; dropping it kills and reaps the process.
#[derive(Debug)]
pub struct Backend {
    process: ChildGuard,
    socket_path: PathBuf,
    metrics_addr: Option<SocketAddr>,
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
        let mut command = backend_command(program, docroot, name)?;
        command.args(extra_args);
        let label = format!("{program} ({name})");
        Backend::start_command_with(&label, command, &docroot.join(name), logging).await
    }

    /// `websocket_broker` on `broker` in `docroot`, in the tokens dialect,
    /// admitting only registered tokens: those marked `true` in the JSON
    /// object `tokens`, written to `<docroot>/tokens.json` (rewrite that
    /// file and send SIGHUP to reload it). Returns the broker and the file.
    pub async fn start_token_list_broker(
        docroot: &Path,
        tokens: &str,
    ) -> anyhow::Result<(Backend, PathBuf)> {
        let list = docroot.join("tokens.json");
        std::fs::write(&list, tokens).with_context(|| format!("writing {}", list.display()))?;
        let list_arg = list.to_str().context("temp path is UTF-8")?;
        let broker = Backend::start(
            "websocket_broker",
            docroot,
            "broker",
            &[
                "--dialect",
                "tokens",
                "--allow-unregistered",
                "false",
                "--tokens",
                list_arg,
            ],
        )
        .await?;
        Ok((broker, list))
    }

    /// [`Backend::start`] with `--metrics-listen 127.0.0.1:0`: ready once its
    /// socket accepts and its metrics endpoint answers.
    pub async fn start_with_metrics(
        program: &str,
        docroot: &Path,
        name: &str,
        extra_args: &[&str],
    ) -> anyhow::Result<Backend> {
        let mut command = backend_command(program, docroot, name)?;
        command
            .arg("--metrics-listen")
            .arg("127.0.0.1:0")
            .args(extra_args)
            .stdout(Stdio::piped());
        let label = format!("{program} ({name})");
        let mut process = ChildGuard::spawn_with(&label, command, Logging::Debug)?;
        let stdout = process
            .child_mut()
            .stdout
            .take()
            .context("stdout is piped")?;
        let (addr_sender, addr_receiver) = oneshot::channel();
        // Reads stdout for the life of the process, so it never blocks on it.
        std::thread::spawn(move || {
            let mut addr_sender = Some(addr_sender);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = metrics::parse_announcement(&line)
                    && let Some(sender) = addr_sender.take()
                {
                    let _ = sender.send(addr);
                }
            }
        });
        let what = format!("the `metrics on` line of {label}");
        let addr = match wait::within(&what, STARTUP_DEADLINE, addr_receiver).await {
            Ok(Ok(addr)) => addr?,
            Ok(Err(_)) => anyhow::bail!(
                "{label} closed its stdout without printing `metrics on`; its stderr:\n{}",
                process.stderr_text()
            ),
            Err(error) => {
                anyhow::bail!("{error}; the stderr of {label}:\n{}", process.stderr_text())
            }
        };
        let mut backend = Backend {
            process,
            socket_path: docroot.join(name),
            metrics_addr: Some(addr),
        };
        backend.wait_until_accepting(&label).await?;
        metrics::wait_until_served(&label, addr).await?;
        Ok(backend)
    }

    /// Scrapes the backend's metrics endpoint.
    pub async fn scrape(&self) -> anyhow::Result<Scrape> {
        let addr = self
            .metrics_addr
            .context("the backend was started without --metrics-listen")?;
        metrics::scrape(addr).await
    }

    /// The metrics listener's address, if the backend has one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
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
            metrics_addr: None,
        };
        backend.wait_until_accepting(label).await?;
        Ok(backend)
    }

    /// Waits until the socket file accepts a connection (or the process exits).
    async fn wait_until_accepting(&mut self, label: &str) -> anyhow::Result<()> {
        let what = format!("{label} to accept on {}", self.socket_path.display());
        let socket_path = self.socket_path.clone();
        wait::until(&what, STARTUP_DEADLINE, || {
            let ready = self
                .process
                .check_running()
                .map(|()| UnixStream::connect(&socket_path).is_ok().then_some(()));
            async move { ready }
        })
        .await
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

/// `program -R <docroot> -n <name>`, the workspace binary `program`.
fn backend_command(program: &str, docroot: &Path, name: &str) -> anyhow::Result<Command> {
    let mut command = Command::new(binaries::bin_path(program)?);
    command.arg("-R").arg(docroot).arg("-n").arg(name);
    Ok(command)
}
