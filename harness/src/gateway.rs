//! The `wsgate` process under test, ready once it printed its address.
//!
//! The gateway prints exactly one line `listening on http://<addr>` to stdout
//! per listener when it is ready; a thread reads stdout for the whole life of
//! the process so the gateway never writes into a full or closed pipe.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::Context;
use nix::sys::signal::Signal;
use tokio::sync::mpsc;

use crate::child::{ChildGuard, Logging};
use crate::client::Client;
use crate::http::{self, HandshakeRequest, HttpResponse};
use crate::{STARTUP_DEADLINE, binaries, wait};

/// The line prefix that announces a listener.
const LISTENING_PREFIX: &str = "listening on http://";

/// A running gateway on an ephemeral loopback port; dropping it kills and reaps it.
#[derive(Debug)]
pub struct Gateway {
    process: ChildGuard,
    addr: SocketAddr,
}

impl Gateway {
    /// Starts `wsgate --listen 127.0.0.1:0 -R <docroot> <extra_args>` and waits
    /// for its `listening on` line.
    pub async fn start(docroot: &Path, extra_args: &[&str]) -> anyhow::Result<Gateway> {
        Gateway::start_with(docroot, extra_args, Logging::Debug).await
    }

    /// [`Gateway::start`] with the given [`Logging`] (benchmarks run it quiet).
    pub async fn start_with(
        docroot: &Path,
        extra_args: &[&str],
        logging: Logging,
    ) -> anyhow::Result<Gateway> {
        let mut command = Command::new(binaries::bin_path("wsgate")?);
        command
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("-R")
            .arg(docroot)
            .args(extra_args);
        let (process, addr) = start_announcing("wsgate", command, logging).await?;
        Ok(Gateway { process, addr })
    }

    /// The address the gateway listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://<addr><path>`; `path` starts with `/`.
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// `http://<addr><path>`; `path` starts with `/`.
    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Sends SIGTERM: the gateway should close every client with 1001 and exit 0.
    pub fn sigterm(&mut self) -> anyhow::Result<()> {
        self.process.signal(Signal::SIGTERM)
    }

    /// Sends any signal.
    pub fn signal(&mut self, signal: Signal) -> anyhow::Result<()> {
        self.process.signal(signal)
    }

    /// Waits for the gateway to exit, at most `deadline`, and returns its status.
    pub async fn wait_exit(&mut self, deadline: Duration) -> anyhow::Result<ExitStatus> {
        self.process.wait_exit(deadline).await
    }

    /// An error carrying the gateway's stderr if it has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        self.process.check_running()
    }

    /// What the gateway wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        self.process.stderr_text()
    }

    /// Opens a WebSocket to `path`; an HTTP refusal is an error with its status and body.
    pub async fn connect(&self, path: &str) -> anyhow::Result<Client> {
        Client::connect(self.addr, path, &[]).await
    }

    /// Opens a WebSocket to `path` with extra request headers.
    pub async fn connect_with_headers(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Client> {
        Client::connect(self.addr, path, headers).await
    }

    /// Sends `request` as it is and reads the response.
    pub async fn request(&self, request: impl AsRef<[u8]>) -> anyhow::Result<HttpResponse> {
        http::request(self.addr, request.as_ref()).await
    }

    /// Sends a WebSocket handshake built by `handshake` (with this gateway as Host).
    pub async fn handshake(&self, handshake: &HandshakeRequest) -> anyhow::Result<HttpResponse> {
        self.request(handshake.render(&self.addr.to_string())).await
    }

    /// A plain `GET path` (no upgrade), closing the connection after the response.
    pub async fn get(&self, path: &str) -> anyhow::Result<HttpResponse> {
        self.request(format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        ))
        .await
    }
}

/// Starts `command`, a server that prints `listening on http://<addr>` on
/// stdout once it is ready (wsgate, the benchmark's baseline server), and
/// returns it with the first address it printed.
///
/// A thread reads stdout for the whole life of the process, so the server
/// never writes into a full or closed pipe.
pub async fn start_announcing(
    label: &str,
    mut command: Command,
    logging: Logging,
) -> anyhow::Result<(ChildGuard, SocketAddr)> {
    command.stdout(Stdio::piped());
    let mut process = ChildGuard::spawn_with(label, command, logging)?;
    let stdout = process
        .child_mut()
        .stdout
        .take()
        .context("stdout is piped")?;
    let (line_sender, mut line_receiver) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // The receiver may be gone once the address is known; keep draining.
            let _ = line_sender.send(line);
        }
    });
    let what = format!("the `listening on` line of {label}");
    let line = wait::within(&what, STARTUP_DEADLINE, async {
        while let Some(line) = line_receiver.recv().await {
            if let Some(addr) = line.strip_prefix(LISTENING_PREFIX) {
                return Some(addr.trim().to_owned());
            }
        }
        None
    })
    .await;
    let addr = match line {
        Ok(Some(addr)) => addr,
        Ok(None) => anyhow::bail!(
            "{label} closed its stdout without printing `{LISTENING_PREFIX}<addr>`; its stderr:\n{}",
            process.stderr_text()
        ),
        Err(error) => anyhow::bail!("{error}; the stderr of {label}:\n{}", process.stderr_text()),
    };
    let addr = addr
        .trim_end_matches('/')
        .parse()
        .with_context(|| format!("parsing the address {addr:?} of {label}"))?;
    Ok((process, addr))
}
