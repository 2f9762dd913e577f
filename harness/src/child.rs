//! The guard around every child process a test or a benchmark starts.
//!
//! The child runs in a process group of its own and its stderr goes to a
//! temporary file. Dropping the guard kills the group if the child still runs
//! (so a master takes its workers along), and the groups of its children
//! (a gateway's supervised backends run in groups of their own), reaps the child, and for a test
//! prints its stderr to the test's output, which libtest shows only when the
//! test fails. Readiness is the business of [`crate::Backend`] and [`crate::Gateway`].

use std::fs::File;
use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::Context;
use std::os::unix::process::CommandExt;

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tempfile::NamedTempFile;

use crate::{processes, wait};

/// How much a child logs, and whether its log is printed when it is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logging {
    /// Tests: `RUST_LOG=debug` unless set, the log printed when the guard drops.
    Debug,
    /// Benchmarks: `RUST_LOG=warn` unless set, so logging costs nothing per
    /// message; the log is kept in its file but not printed.
    Quiet,
}

/// A running child process with its stderr captured to a file.
#[derive(Debug)]
pub struct ChildGuard {
    label: String,
    child: Child,
    stderr_log: NamedTempFile,
    exit_status: Option<ExitStatus>,
    logging: Logging,
}

impl ChildGuard {
    /// Starts `command` with stderr to a fresh log file. `label` names the
    /// process in errors and in the printed log. Stdin is closed; stdout is
    /// left as the caller configured it.
    pub fn spawn(label: &str, command: Command) -> anyhow::Result<ChildGuard> {
        ChildGuard::spawn_with(label, command, Logging::Debug)
    }

    /// [`ChildGuard::spawn`] with the given [`Logging`].
    pub fn spawn_with(
        label: &str,
        mut command: Command,
        logging: Logging,
    ) -> anyhow::Result<ChildGuard> {
        let stderr_log = tempfile::Builder::new()
            .prefix("wsgate-test-")
            .suffix(".log")
            .tempfile()
            .context("creating a log file for the child's stderr")?;
        let stderr = stderr_log.as_file().try_clone()?;
        if std::env::var_os("RUST_LOG").is_none() {
            let level = match logging {
                Logging::Debug => "debug",
                Logging::Quiet => "warn",
            };
            command.env("RUST_LOG", level);
        }
        // Plain logs in the file: tracing-subscriber colours by default.
        command.env("NO_COLOR", "1");
        command
            .stdin(Stdio::null())
            .stderr(Stdio::from(stderr))
            .process_group(0);
        let child = command
            .spawn()
            .with_context(|| format!("starting {label}: {command:?}"))?;
        Ok(ChildGuard {
            label: label.to_owned(),
            child,
            stderr_log,
            exit_status: None,
            logging,
        })
    }

    /// The label given at spawn.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The underlying child, e.g. to take its stdout.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// What the child wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        let mut text = String::new();
        match File::open(self.stderr_log.path()) {
            Ok(mut file) => {
                if let Err(error) = file.read_to_string(&mut text) {
                    text.push_str(&format!("<cannot read the log: {error}>"));
                }
            }
            Err(error) => text = format!("<cannot open the log: {error}>"),
        }
        text
    }

    /// Sends `signal` to the child. An error if it has been reaped already.
    pub fn signal(&mut self, signal: Signal) -> anyhow::Result<()> {
        if let Some(status) = self.exit_status {
            anyhow::bail!("{} has exited already ({status})", self.label);
        }
        let pid = i32::try_from(self.child.id()).context("pid fits in pid_t")?;
        kill(Pid::from_raw(pid), signal)
            .with_context(|| format!("sending {signal} to {}", self.label))
    }

    /// The exit status if the child has exited (and reaps it), `None` while it runs.
    pub fn try_exit_status(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        if self.exit_status.is_none() {
            self.exit_status = self
                .child
                .try_wait()
                .with_context(|| format!("checking whether {} exited", self.label))?;
        }
        Ok(self.exit_status)
    }

    /// An error carrying the child's stderr if it has exited; `Ok` while it runs.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        match self.try_exit_status()? {
            None => Ok(()),
            Some(status) => anyhow::bail!(
                "{} exited unexpectedly ({status}); its stderr:\n{}",
                self.label,
                self.stderr_text()
            ),
        }
    }

    /// Waits for the child to exit, at most `deadline`, and returns its status.
    pub async fn wait_exit(&mut self, deadline: Duration) -> anyhow::Result<ExitStatus> {
        let what = format!("{} to exit", self.label);
        wait::until(&what, deadline, || {
            let status = self.try_exit_status();
            async move { status }
        })
        .await
    }

    /// Kills the child and its process group with SIGKILL, then the
    /// process groups its children lead, and reaps it.
    pub fn kill_and_reap(&mut self) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.try_exit_status()? {
            return Ok(status);
        }
        let pid = i32::try_from(self.child.id()).context("pid fits in pid_t")?;
        let children = processes::children(self.child.id());
        killpg(Pid::from_raw(pid), Signal::SIGKILL)
            .with_context(|| format!("killing {}", self.label))?;
        for child in children {
            if child.pgid == child.pid
                && let Ok(group) = i32::try_from(child.pgid)
            {
                // It may be gone already.
                let _ = killpg(Pid::from_raw(group), Signal::SIGKILL);
            }
        }
        let status = self
            .child
            .wait()
            .with_context(|| format!("reaping {}", self.label))?;
        self.exit_status = Some(status);
        Ok(status)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Err(error) = self.kill_and_reap() {
            eprintln!("cannot stop {}: {error:#}", self.label);
        }
        if self.logging == Logging::Quiet {
            return;
        }
        // Captured by libtest: shown only when the test fails.
        eprintln!(
            "----- stderr of {} (pid {}) -----\n{}----- end of {} -----",
            self.label,
            self.child.id(),
            self.stderr_text(),
            self.label
        );
    }
}
