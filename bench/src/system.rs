//! The systems under test, each started as separate processes on loopback
//! and a temporary directory: the baseline server, wsgate relaying to
//! `websocket_echo`/`websocket_chat`, wsgate handing clients over (direct), and
//! nginx proxying to the baseline server on a UNIX socket when nginx exists;
//! and the same over TLS (wss): the baseline terminating TLS itself, wsgate
//! relaying from `--tls-listen`, and nginx terminating TLS, all with the
//! certificate of [`crate::tls::TlsFiles`].
//!
//! A system also knows its processes' pids, for their memory and CPU time
//! (`/proc/<pid>/status` and `/proc/<pid>/stat`).
//!
//! Every start waits on readiness (an address printed, a socket that
//! accepts), with a deadline; dropping a [`System`] kills its processes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use harness::child::{ChildGuard, Logging};
use harness::gateway::start_announcing;
use harness::{Backend, STARTUP_DEADLINE, wait};
use rustls::ClientConfig;

use crate::scenario::{CpuPerOp, Target};
use crate::tls::{CIPHER_SUITE, TlsFiles};

/// Descriptors and clients every server may hold: the idle scenario's ceiling.
pub const MAX_CLIENTS: usize = 20_000;

/// Which system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// tokio-tungstenite serving WebSocket itself: no gateway.
    Baseline,
    /// wsgate relaying to the backends over the link protocol.
    Relay,
    /// wsgate handing each client's socket to the backend.
    Direct,
    /// nginx proxying WebSocket to the baseline server on a UNIX socket.
    Nginx,
    /// The baseline server terminating TLS itself (tokio-rustls): no gateway.
    BaselineTls,
    /// wsgate relaying, its clients on `--tls-listen`.
    RelayTls,
    /// nginx terminating TLS, proxying to the baseline server on a UNIX socket.
    NginxTls,
}

impl Kind {
    /// The column name in the report.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Baseline => "baseline (no gateway)",
            Kind::Relay => "wsgate relay",
            Kind::Direct => "wsgate direct",
            Kind::Nginx => "nginx → UNIX socket",
            Kind::BaselineTls => "baseline (wss, no gateway)",
            Kind::RelayTls => "wsgate relay (wss)",
            Kind::NginxTls => "nginx TLS → UNIX socket",
        }
    }

    /// True for the systems clients reach with wss.
    pub fn is_tls(self) -> bool {
        matches!(self, Kind::BaselineTls | Kind::RelayTls | Kind::NginxTls)
    }

    /// True for nginx, whose work is done by the master's children.
    fn is_nginx(self) -> bool {
        matches!(self, Kind::Nginx | Kind::NginxTls)
    }
}

/// CPU time each side of a system has used since it started.
#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    /// The gateway or nginx, if the system has one.
    pub front: Option<Duration>,
    /// The servers behind it (or the baseline server).
    pub server: Duration,
    /// The load generator.
    pub generator: Duration,
}

impl CpuSample {
    /// The CPU time per operation, in microseconds, from `self` to `later`
    /// over `count` operations.
    pub fn per_op(&self, later: &CpuSample, count: u64) -> CpuPerOp {
        let per = |before: Duration, after: Duration| {
            after.saturating_sub(before).as_secs_f64() * 1e6 / count.max(1) as f64
        };
        CpuPerOp {
            front: self.front.zip(later.front).map(|(a, b)| per(a, b)),
            server: per(self.server, later.server),
            generator: per(self.generator, later.generator),
        }
    }
}

/// Where the binaries are.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// Directory of `wsgate`, `websocket_echo`, `websocket_chat`.
    pub dir: PathBuf,
    /// The `wsgate-bench` executable, which runs the baseline server.
    pub bench: PathBuf,
    /// Runtime threads of every server written with tokio (the baseline,
    /// wsgate and its backends), given to each as `--threads`; `None`: each
    /// program's default (one per CPU).
    pub threads: Option<u16>,
}

impl Binaries {
    /// `--threads N` when a number of threads was chosen, else nothing.
    fn threads_args(&self) -> Vec<String> {
        match self.threads {
            Some(threads) => vec!["--threads".to_owned(), threads.to_string()],
            None => Vec::new(),
        }
    }
}

/// A running system.
#[derive(Debug)]
pub struct System {
    /// Which one.
    pub kind: Kind,
    /// Its HTTP address.
    pub addr: SocketAddr,
    /// The process in front (wsgate or the nginx master), if any.
    pub front_pid: Option<u32>,
    /// The echo server's process.
    pub echo_pid: u32,
    /// Every process behind the front: the baseline server, or the backends.
    pub server_pids: Vec<u32>,
    /// The client configuration of a wss system.
    pub tls: Option<Arc<ClientConfig>>,
    processes: Vec<ChildGuard>,
    backends: Vec<Backend>,
    _dir: tempfile::TempDir,
}

impl System {
    /// Starts `kind`; `None` when it cannot run here (nginx not installed).
    /// Every process logs only warnings, so logging costs nothing per message.
    /// The TLS kinds serve the certificate of `tls`.
    pub async fn start(
        kind: Kind,
        binaries: &Binaries,
        tls: &TlsFiles,
    ) -> anyhow::Result<Option<System>> {
        let dir = tempfile::tempdir()?;
        let docroot = dir.path().join("sockets");
        let mut processes = Vec::new();
        let mut backends = Vec::new();
        let max = MAX_CLIENTS.to_string();
        let (addr, front_pid, echo_pid) = match kind {
            Kind::Baseline => {
                let mut command = Command::new(&binaries.bench);
                command.args(["baseline-server", "--listen", "127.0.0.1:0"]);
                command.args(binaries.threads_args());
                let (process, addr) =
                    start_announcing("baseline server", command, Logging::Quiet).await?;
                let pid = process.pid();
                processes.push(process);
                (addr, None, pid)
            }
            Kind::BaselineTls => {
                let addr = free_port_addr()?;
                let mut command = Command::new(&binaries.bench);
                command
                    .args(["baseline-server", "--listen", &addr.to_string()])
                    .args(binaries.threads_args())
                    .arg("--tls-cert")
                    .arg(tls.cert_path())
                    .arg("--tls-key")
                    .arg(tls.key_path())
                    // Its `listening on` line is not read: readiness is a socket that accepts.
                    .stdout(std::process::Stdio::null());
                let mut process =
                    ChildGuard::spawn_with("baseline server (wss)", command, Logging::Quiet)?;
                wait_accepting(&mut process, "the wss baseline server", addr).await?;
                let pid = process.pid();
                processes.push(process);
                (addr, None, pid)
            }
            Kind::Relay | Kind::Direct | Kind::RelayTls => {
                let threads = binaries.threads_args();
                let echo_args: Vec<&str> = threads.iter().map(String::as_str).collect();
                let echo = start_backend(
                    &binaries.dir,
                    &docroot,
                    "websocket_echo",
                    "echo",
                    &echo_args,
                )
                .await?;
                let echo_pid = echo.pid();
                backends.push(echo);
                let mut chat_args = vec!["--queue", "4096"];
                chat_args.extend(threads.iter().map(String::as_str));
                let chat = start_backend(
                    &binaries.dir,
                    &docroot,
                    "websocket_chat",
                    "chat",
                    &chat_args,
                )
                .await?;
                backends.push(chat);
                let mut command = gateway_command(&binaries.dir, &docroot, &max);
                command.args(&threads);
                if kind == Kind::Direct {
                    command.args(["--direct", "*"]);
                }
                let tls_addr = if kind == Kind::RelayTls {
                    let tls_addr = free_port_addr()?;
                    command
                        .args(["--tls-listen", &tls_addr.to_string()])
                        .arg("--tls-cert")
                        .arg(tls.cert_path())
                        .arg("--tls-key")
                        .arg(tls.key_path());
                    Some(tls_addr)
                } else {
                    None
                };
                // wsgate prints its addresses once every listener is bound.
                let (gateway, addr) = start_announcing("wsgate", command, Logging::Quiet).await?;
                let pid = gateway.pid();
                processes.push(gateway);
                (tls_addr.unwrap_or(addr), Some(pid), echo_pid)
            }
            Kind::Nginx | Kind::NginxTls => {
                let Some(nginx) = find_nginx() else {
                    return Ok(None);
                };
                std::fs::create_dir_all(&docroot)?;
                let socket = docroot.join("baseline.sock");
                let mut command = Command::new(&binaries.bench);
                command.args(["baseline-server", "--unix"]).arg(&socket);
                command.args(binaries.threads_args());
                let backend = Backend::start_command_with(
                    "baseline server",
                    command,
                    &socket,
                    Logging::Quiet,
                )
                .await?;
                let echo_pid = backend.pid();
                backends.push(backend);
                let port = free_port_addr()?.port();
                let conf = dir.path().join("nginx.conf");
                let nginx_tls = (kind == Kind::NginxTls).then_some(tls);
                std::fs::write(&conf, nginx_conf(port, &socket, dir.path(), nginx_tls))?;
                let mut command = Command::new(nginx);
                command
                    .arg("-p")
                    .arg(dir.path())
                    .arg("-c")
                    .arg(&conf)
                    .args(["-e", "stderr"]);
                let mut master = ChildGuard::spawn_with("nginx", command, Logging::Quiet)?;
                let addr = SocketAddr::from(([127, 0, 0, 1], port));
                wait_accepting(&mut master, "nginx", addr).await?;
                let pid = master.pid();
                processes.push(master);
                (addr, Some(pid), echo_pid)
            }
        };
        let server_pids = processes
            .iter()
            .map(ChildGuard::pid)
            .filter(|pid| Some(*pid) != front_pid)
            .chain(backends.iter().map(Backend::pid))
            .collect();
        Ok(Some(System {
            kind,
            addr,
            front_pid,
            echo_pid,
            server_pids,
            tls: kind.is_tls().then(|| Arc::clone(&tls.client_config)),
            processes,
            backends,
            _dir: dir,
        }))
    }

    /// The WebSocket URL of `name` on this system.
    pub fn url(&self, name: &str) -> String {
        let scheme = if self.tls.is_some() { "wss" } else { "ws" };
        format!("{scheme}://{}/{name}", self.addr)
    }

    /// Where clients of `name` connect, and how.
    pub fn target(&self, name: &str) -> Target {
        Target {
            url: self.url(name),
            addr: self.addr,
            tls: self.tls.clone(),
        }
    }

    /// CPU time used so far by the front (nginx: master and workers), by
    /// the processes behind it, and by this load generator.
    pub fn cpu_sample(&self) -> anyhow::Result<CpuSample> {
        let front = match self.front_pid {
            None => None,
            Some(pid) => {
                let mut total = cpu_time(pid)?;
                if self.kind.is_nginx() {
                    for worker in children(pid) {
                        total += cpu_time(worker)?;
                    }
                }
                Some(total)
            }
        };
        let mut server = Duration::ZERO;
        for pid in &self.server_pids {
            server += cpu_time(*pid)?;
        }
        Ok(CpuSample {
            front,
            server,
            generator: cpu_time(std::process::id())?,
        })
    }

    /// Resident memory of the front process (nginx: master and workers), bytes.
    pub fn front_rss(&self) -> anyhow::Result<u64> {
        let Some(pid) = self.front_pid else {
            return Ok(0);
        };
        let mut total = rss(pid)?;
        if self.kind.is_nginx() {
            for worker in children(pid) {
                total += rss(worker)?;
            }
        }
        Ok(total)
    }

    /// Resident memory of the echo server, bytes.
    pub fn echo_rss(&self) -> anyhow::Result<u64> {
        rss(self.echo_pid)
    }

    /// True while every process still runs.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        for process in &mut self.processes {
            if let Some(status) = process.try_exit_status()? {
                bail!("{} exited: {status}", self.kind.label());
            }
        }
        for backend in &mut self.backends {
            backend.check_running()?;
        }
        Ok(())
    }
}

/// `<dir>/wsgate` as every benchmark runs it over `docroot`: on an
/// ephemeral loopback port (printed when ready), at most `max` clients, no
/// pings and no idle timeout, and no limit per address (every
/// load-generator connection comes from 127.0.0.1).
pub fn gateway_command(dir: &Path, docroot: &Path, max: &str) -> Command {
    let mut command = Command::new(dir.join("wsgate"));
    command
        .args(["--listen", "127.0.0.1:0", "--max-connections", max])
        .args(["--ping-interval", "0", "--idle-timeout", "0"])
        .args(["--max-connections-per-ip", "0"])
        .arg("-R")
        .arg(docroot);
    command
}

/// Starts `<dir>/<program> -R <docroot> -n <name> -m MAX_CLIENTS <extra_args>`,
/// ready once its socket accepts.
async fn start_backend(
    dir: &Path,
    docroot: &Path,
    program: &str,
    name: &str,
    extra_args: &[&str],
) -> anyhow::Result<Backend> {
    let mut command = Command::new(dir.join(program));
    command
        .arg("-R")
        .arg(docroot)
        .args(["-n", name, "-m", &MAX_CLIENTS.to_string()])
        .args(extra_args);
    Backend::start_command_with(program, command, &docroot.join(name), Logging::Quiet).await
}

/// A loopback address with a port that was free a moment ago, for servers
/// that do not print the address they bound.
fn free_port_addr() -> anyhow::Result<SocketAddr> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    Ok(SocketAddr::from(([127, 0, 0, 1], port)))
}

/// Waits until `addr` accepts TCP connections while `process` runs.
async fn wait_accepting(
    process: &mut ChildGuard,
    what: &str,
    addr: SocketAddr,
) -> anyhow::Result<()> {
    wait::until(&format!("{what} to answer"), STARTUP_DEADLINE, || {
        let ready = process
            .check_running()
            .map(|()| std::net::TcpStream::connect(addr).is_ok().then_some(()));
        async move { ready }
    })
    .await
}

fn find_nginx() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|path| path.is_file())
}

/// nginx with as many workers as wsgate has threads, proxying every path to
/// the baseline server's UNIX socket with the upgrade headers passed on;
/// with `tls`, terminating TLS 1.3 with the bench's certificate, the same
/// single cipher suite and key exchange group as every other wss system, and
/// no session resumption.
fn nginx_conf(port: u16, socket: &Path, prefix: &Path, tls: Option<&TlsFiles>) -> String {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    // As root, nginx's workers would otherwise run as nobody and could not
    // reach the socket in our private temporary directory.
    let user = if nix::unistd::geteuid().is_root() {
        "user root;\n"
    } else {
        ""
    };
    let (ssl, tls_settings) = match tls {
        None => ("", String::new()),
        Some(tls) => (
            " ssl",
            format!(
                "    ssl_certificate {};\n    ssl_certificate_key {};\n    ssl_protocols TLSv1.3;\n\
                 ssl_conf_command Ciphersuites {CIPHER_SUITE};\n    ssl_ecdh_curve X25519;\n\
                 ssl_session_tickets off;\n    ssl_session_cache off;\n",
                tls.cert_path().display(),
                tls.key_path().display(),
            ),
        ),
    };
    format!(
        "daemon off;\n{user}worker_processes {threads};\nworker_rlimit_nofile {MAX_CLIENTS};\npid {prefix}/nginx.pid;\n\
         error_log stderr crit;\nevents {{ worker_connections {MAX_CLIENTS}; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {prefix}/body;\n  proxy_temp_path {prefix}/proxy;\n\
         fastcgi_temp_path {prefix}/fastcgi;\n  uwsgi_temp_path {prefix}/uwsgi;\n  scgi_temp_path {prefix}/scgi;\n\
         upstream backend {{ server unix:{socket}; }}\n\
         server {{\n    listen 127.0.0.1:{port}{ssl};\n{tls_settings}    location / {{\n      proxy_pass http://backend;\n\
         proxy_http_version 1.1;\n      proxy_set_header Upgrade $http_upgrade;\n      proxy_set_header Connection \"upgrade\";\n\
         proxy_set_header Host $host;\n      proxy_read_timeout 3600s;\n      proxy_buffering off;\n    }}\n  }}\n}}\n",
        prefix = prefix.display(),
        socket = socket.display(),
    )
}

/// User and system CPU time of `pid` (every thread, living or ended), from
/// `/proc/<pid>/stat`.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    /// Linux reports these times in USER_HZ ticks, 100 a second on every
    /// architecture this runs on.
    const TICKS_PER_SECOND: u64 = 100;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command: state is field 3, utime 14, stime 15.
    let (_, rest) = stat.rsplit_once(')').context("no command in stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> anyhow::Result<u64> {
        Ok(fields.get(n - 3).context("short stat")?.parse::<u64>()?)
    };
    let ticks = field(14)? + field(15)?;
    Ok(Duration::from_millis(ticks * 1000 / TICKS_PER_SECOND))
}

/// VmRSS of `pid`, in bytes.
pub fn rss(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .context("no VmRSS")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kib * 1024)
}

fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|candidate| {
            std::fs::read_to_string(format!("/proc/{candidate}/stat")).is_ok_and(|stat| {
                // Fields after the parenthesised command: state, then ppid.
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                    == Some(pid)
            })
        })
        .collect()
}
