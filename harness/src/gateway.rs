//! The `wsgate` process under test, ready once it printed its address.
//!
//! The gateway prints exactly one line `listening on http://<addr>` to stdout
//! per listener when it is ready (`listening on https://<addr>` for a TLS
//! listener); a thread reads stdout for the whole life of the process so the
//! gateway never writes into a full or closed pipe.
//!
//! With `--metrics-listen` it first prints `metrics on http://<addr>/metrics`;
//! [`Gateway::start_with_metrics`] gives it an ephemeral metrics port and
//! waits until that endpoint answers too ([`Gateway::scrape`]).
//!
//! A gateway started with `--tls-listen` but no `--tls-cert` (as
//! [`Mode::Tls`](crate::Mode::Tls) does) gets a certificate from a fresh
//! [`TestCa`], and its [`Gateway::connect`] goes over TLS (`wss://`).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use nix::sys::signal::Signal;
use tokio::sync::mpsc;

use crate::child::{ChildGuard, Logging};
use crate::client::Client;
use crate::http::{self, HandshakeRequest, HttpResponse};
use crate::metrics::{self, Scrape};
use crate::mode::Mode;
use crate::tls::{CertificateFiles, TestCa};
use crate::{EVENT_DEADLINE, STARTUP_DEADLINE, binaries, wait};

/// The line prefix that announces a listener.
const LISTENING_PREFIX: &str = "listening on http://";
/// The line prefix that announces a TLS listener.
const LISTENING_TLS_PREFIX: &str = "listening on https://";

/// A running gateway on an ephemeral loopback port; dropping it kills and reaps it.
#[derive(Debug)]
pub struct Gateway {
    process: ChildGuard,
    addr: SocketAddr,
    tls: Option<GatewayTls>,
    metrics_addr: Option<SocketAddr>,
}

/// The TLS listener of a gateway, and what the harness's clients trust.
#[derive(Debug)]
struct GatewayTls {
    addr: SocketAddr,
    /// With a harness-made certificate: the configuration trusting its CA,
    /// which [`Gateway::connect`] uses.
    client_config: Option<Arc<rustls::ClientConfig>>,
    /// The harness-made certificate's files, removed with the gateway.
    _files: Option<CertificateFiles>,
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
            .arg(docroot);
        Gateway::launch(command, extra_args, logging).await
    }

    /// Starts `wsgate --listen 127.0.0.1:0 --config <config> <extra_args>`
    /// and waits for its `listening on` line: the docroot, and the backends
    /// the gateway supervises, come from the file. The gateway announces
    /// itself only once every supervised backend accepts.
    pub async fn start_with_config(config: &Path, extra_args: &[&str]) -> anyhow::Result<Gateway> {
        let mut command = Command::new(binaries::bin_path("wsgate")?);
        command
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--config")
            .arg(config);
        Gateway::launch(command, extra_args, Logging::Debug).await
    }

    async fn launch(
        mut command: Command,
        extra_args: &[&str],
        logging: Logging,
    ) -> anyhow::Result<Gateway> {
        command.args(extra_args);
        let wants_tls = extra_args.contains(&"--tls-listen");
        let mut made = None;
        if wants_tls && !extra_args.contains(&"--tls-cert") {
            let ca = TestCa::new("wsgate test CA")?;
            let files = CertificateFiles::new(&ca.server_pair()?)?;
            command
                .arg("--tls-cert")
                .arg(files.cert_path())
                .arg("--tls-key")
                .arg(files.key_path());
            made = Some((ca.client_config(None)?, files));
        }
        let announced = announce("wsgate", command, logging, wants_tls).await?;
        let (process, addr) = (announced.process, announced.addr);
        let tls = announced.tls_addr.map(|addr| {
            let (client_config, files) = made.unzip();
            GatewayTls {
                addr,
                client_config,
                _files: files,
            }
        });
        Ok(Gateway {
            process,
            addr,
            tls,
            metrics_addr: announced.metrics_addr,
        })
    }

    /// [`Gateway::start`] with `--metrics-listen 127.0.0.1:0`; ready once
    /// the metrics endpoint answers as well.
    pub async fn start_with_metrics(
        docroot: &Path,
        extra_args: &[&str],
    ) -> anyhow::Result<Gateway> {
        let args: Vec<&str> = ["--metrics-listen", "127.0.0.1:0"]
            .into_iter()
            .chain(extra_args.iter().copied())
            .collect();
        let gateway = Gateway::start(docroot, &args).await?;
        let addr = gateway
            .metrics_addr
            .context("wsgate printed no `metrics on` line before its `listening on` lines")?;
        metrics::wait_until_served("wsgate", addr).await?;
        Ok(gateway)
    }

    /// The metrics listener's address, if the gateway has one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Scrapes the gateway's metrics endpoint.
    pub async fn scrape(&self) -> anyhow::Result<Scrape> {
        let addr = self
            .metrics_addr
            .context("the gateway was started without --metrics-listen")?;
        metrics::scrape(addr).await
    }

    /// The address of the first TLS listener, if the gateway has one.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls.as_ref().map(|tls| tls.addr)
    }

    /// The client configuration trusting the harness-made certificate, if
    /// the harness made the gateway's certificate.
    pub fn tls_client_config(&self) -> Option<Arc<rustls::ClientConfig>> {
        self.tls.as_ref()?.client_config.clone()
    }

    /// Opens a WebSocket over TLS to `path` on the first TLS listener,
    /// trusting what `config` trusts. An error if there is no TLS listener.
    pub async fn connect_tls(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        config: Arc<rustls::ClientConfig>,
    ) -> anyhow::Result<Client> {
        let addr = self
            .tls_addr()
            .context("the gateway was started without --tls-listen")?;
        Client::connect_tls(addr, path, headers, config).await
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

    /// Waits until the gateway's log holds `text` at least `n` times.
    pub async fn wait_for_log(&self, text: &str, n: usize) -> anyhow::Result<()> {
        wait::until(
            &format!("{n} time(s) {text:?} in the gateway's log"),
            EVENT_DEADLINE,
            || {
                let count = self.stderr_text().matches(text).count();
                async move { Ok((count >= n).then_some(())) }
            },
        )
        .await
    }

    /// Opens a WebSocket to `path`; an HTTP refusal is an error with its
    /// status and body. Over TLS when the harness made the gateway's certificate.
    pub async fn connect(&self, path: &str) -> anyhow::Result<Client> {
        self.connect_with_headers(path, &[]).await
    }

    /// Opens a WebSocket to `path` with extra request headers (over TLS as
    /// [`Gateway::connect`]).
    pub async fn connect_with_headers(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Client> {
        match &self.tls {
            Some(GatewayTls {
                addr,
                client_config: Some(config),
                ..
            }) => Client::connect_tls(*addr, path, headers, Arc::clone(config)).await,
            _ => Client::connect(self.addr, path, headers).await,
        }
    }

    /// Sends `request` as it is and reads the response.
    pub async fn request(&self, request: impl AsRef<[u8]>) -> anyhow::Result<HttpResponse> {
        http::request(self.addr, request.as_ref()).await
    }

    /// Sends `request` as it is over the listener `mode` tests (TLS in
    /// [`Mode::Tls`], trusting the harness certificate) and reads the response.
    pub async fn request_in(
        &self,
        mode: Mode,
        request: impl AsRef<[u8]>,
    ) -> anyhow::Result<HttpResponse> {
        match mode {
            Mode::Tls => {
                let addr = self.tls_addr().context("a TLS listener")?;
                let config = self.tls_client_config().context("a harness certificate")?;
                http::request_tls(addr, config, request.as_ref()).await
            }
            Mode::Relay | Mode::Direct => self.request(request).await,
        }
    }

    /// Sends a WebSocket handshake built by `handshake` (with this gateway as Host).
    pub async fn handshake(&self, handshake: &HandshakeRequest) -> anyhow::Result<HttpResponse> {
        self.request(handshake.render(&self.addr.to_string())).await
    }

    /// Sends `handshake` as [`Gateway::request_in`] does: over TLS in
    /// [`Mode::Tls`] (with the TLS listener as Host), in the clear otherwise.
    pub async fn handshake_in(
        &self,
        mode: Mode,
        handshake: &HandshakeRequest,
    ) -> anyhow::Result<HttpResponse> {
        let host = match mode {
            Mode::Tls => self.tls_addr().context("a TLS listener")?,
            Mode::Relay | Mode::Direct => self.addr,
        };
        self.request_in(mode, handshake.render(&host.to_string()))
            .await
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
    command: Command,
    logging: Logging,
) -> anyhow::Result<(ChildGuard, SocketAddr)> {
    let announced = announce(label, command, logging, false).await?;
    Ok((announced.process, announced.addr))
}

/// What a server printed on stdout before it was ready.
struct Announced {
    process: ChildGuard,
    addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
    /// From a `metrics on http://<addr>/metrics` line printed before the
    /// `listening on` lines.
    metrics_addr: Option<SocketAddr>,
}

/// Starts `command` and waits for its first `listening on http://` line and,
/// if `wants_tls`, its first `listening on https://` line.
async fn announce(
    label: &str,
    mut command: Command,
    logging: Logging,
    wants_tls: bool,
) -> anyhow::Result<Announced> {
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
    let lines = wait::within(&what, STARTUP_DEADLINE, async {
        let (mut plain, mut tls, mut metrics) = (None, None, None);
        while let Some(line) = line_receiver.recv().await {
            if let Some(addr) = metrics::parse_announcement(&line) {
                metrics.get_or_insert(addr);
            } else if let Some(addr) = line.strip_prefix(LISTENING_PREFIX) {
                plain.get_or_insert_with(|| addr.trim().to_owned());
            } else if let Some(addr) = line.strip_prefix(LISTENING_TLS_PREFIX) {
                tls.get_or_insert_with(|| addr.trim().to_owned());
            }
            if let Some(plain) = &plain
                && (!wants_tls || tls.is_some())
            {
                return Some((plain.clone(), tls, metrics));
            }
        }
        None
    })
    .await;
    let (addr, tls_addr, metrics_addr) = match lines {
        Ok(Some(addrs)) => addrs,
        Ok(None) => anyhow::bail!(
            "{label} closed its stdout without printing `{LISTENING_PREFIX}<addr>`; its stderr:\n{}",
            process.stderr_text()
        ),
        Err(error) => anyhow::bail!("{error}; the stderr of {label}:\n{}", process.stderr_text()),
    };
    let parse = |addr: &str| -> anyhow::Result<SocketAddr> {
        addr.trim_end_matches('/')
            .parse()
            .with_context(|| format!("parsing the address {addr:?} of {label}"))
    };
    let addr = parse(&addr)?;
    let tls_addr = tls_addr.as_deref().map(parse).transpose()?;
    Ok(Announced {
        process,
        addr,
        tls_addr,
        metrics_addr: metrics_addr.transpose()?,
    })
}
