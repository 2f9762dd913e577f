//! The systems under test, each started as separate processes on loopback
//! and a temporary directory: the baseline server, wsgate relaying to
//! `websocket_echo`/`websocket_chat`, wsgate handing clients over (direct), and
//! nginx proxying to the baseline server on a UNIX socket when nginx exists.
//!
//! Every start waits on readiness (an address printed, a socket that
//! accepts), with a deadline; dropping a [`System`] kills its processes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use harness::child::{ChildGuard, Logging};
use harness::gateway::start_announcing;
use harness::{Backend, STARTUP_DEADLINE, wait};

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
}

impl Kind {
    /// The column name in the report.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Baseline => "baseline (no gateway)",
            Kind::Relay => "wsgate relay",
            Kind::Direct => "wsgate direct",
            Kind::Nginx => "nginx → UNIX socket",
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
    processes: Vec<ChildGuard>,
    backends: Vec<Backend>,
    _dir: tempfile::TempDir,
}

impl System {
    /// Starts `kind`; `None` when it cannot run here (nginx not installed).
    /// Every process logs only warnings, so logging costs nothing per message.
    pub async fn start(kind: Kind, binaries: &Binaries) -> anyhow::Result<Option<System>> {
        let dir = tempfile::tempdir()?;
        let docroot = dir.path().join("sockets");
        let mut processes = Vec::new();
        let mut backends = Vec::new();
        let max = MAX_CLIENTS.to_string();
        let (addr, front_pid, echo_pid) = match kind {
            Kind::Baseline => {
                let mut command = Command::new(&binaries.bench);
                command.args(["baseline-server", "--listen", "127.0.0.1:0"]);
                let (process, addr) =
                    start_announcing("baseline server", command, Logging::Quiet).await?;
                let pid = process.pid();
                processes.push(process);
                (addr, None, pid)
            }
            Kind::Relay | Kind::Direct => {
                let echo =
                    start_backend(&binaries.dir, &docroot, "websocket_echo", "echo", &[]).await?;
                let echo_pid = echo.pid();
                backends.push(echo);
                let chat_args = ["--queue", "4096"];
                let chat = start_backend(
                    &binaries.dir,
                    &docroot,
                    "websocket_chat",
                    "chat",
                    &chat_args,
                )
                .await?;
                backends.push(chat);
                let mut command = Command::new(binaries.dir.join("wsgate"));
                command
                    .args(["--listen", "127.0.0.1:0", "--max-connections", &max])
                    .args(["--ping-interval", "0", "--idle-timeout", "0"])
                    // Every load-generator connection comes from 127.0.0.1.
                    .args(["--max-connections-per-ip", "0"])
                    .arg("-R")
                    .arg(&docroot);
                if kind == Kind::Direct {
                    command.args(["--direct", "*"]);
                }
                let (gateway, addr) = start_announcing("wsgate", command, Logging::Quiet).await?;
                let pid = gateway.pid();
                processes.push(gateway);
                (addr, Some(pid), echo_pid)
            }
            Kind::Nginx => {
                let Some(nginx) = find_nginx() else {
                    return Ok(None);
                };
                std::fs::create_dir_all(&docroot)?;
                let socket = docroot.join("baseline.sock");
                let mut command = Command::new(&binaries.bench);
                command.args(["baseline-server", "--unix"]).arg(&socket);
                let backend = Backend::start_command_with(
                    "baseline server",
                    command,
                    &socket,
                    Logging::Quiet,
                )
                .await?;
                let echo_pid = backend.pid();
                backends.push(backend);
                let port = std::net::TcpListener::bind("127.0.0.1:0")?
                    .local_addr()?
                    .port();
                let conf = dir.path().join("nginx.conf");
                std::fs::write(&conf, nginx_conf(port, &socket, dir.path()))?;
                let mut command = Command::new(nginx);
                command
                    .arg("-p")
                    .arg(dir.path())
                    .arg("-c")
                    .arg(&conf)
                    .args(["-e", "stderr"]);
                let mut master = ChildGuard::spawn_with("nginx", command, Logging::Quiet)?;
                let addr = SocketAddr::from(([127, 0, 0, 1], port));
                wait::until("nginx to answer", STARTUP_DEADLINE, || {
                    let ready = master
                        .check_running()
                        .map(|()| std::net::TcpStream::connect(addr).is_ok().then_some(()));
                    async move { ready }
                })
                .await?;
                let pid = master.pid();
                processes.push(master);
                (addr, Some(pid), echo_pid)
            }
        };
        Ok(Some(System {
            kind,
            addr,
            front_pid,
            echo_pid,
            processes,
            backends,
            _dir: dir,
        }))
    }

    /// The WebSocket URL of `name` on this system.
    pub fn url(&self, name: &str) -> String {
        format!("ws://{}/{name}", self.addr)
    }

    /// Resident memory of the front process (nginx: master and workers), bytes.
    pub fn front_rss(&self) -> anyhow::Result<u64> {
        let Some(pid) = self.front_pid else {
            return Ok(0);
        };
        let mut total = rss(pid)?;
        if self.kind == Kind::Nginx {
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

fn find_nginx() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|path| path.is_file())
}

/// nginx with as many workers as wsgate has threads, proxying every path to
/// the baseline server's UNIX socket with the upgrade headers passed on.
fn nginx_conf(port: u16, socket: &Path, prefix: &Path) -> String {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    // As root, nginx's workers would otherwise run as nobody and could not
    // reach the socket in our private temporary directory.
    let user = if nix::unistd::geteuid().is_root() {
        "user root;\n"
    } else {
        ""
    };
    format!(
        "daemon off;\n{user}worker_processes {threads};\nworker_rlimit_nofile {MAX_CLIENTS};\npid {prefix}/nginx.pid;\n\
         error_log stderr crit;\nevents {{ worker_connections {MAX_CLIENTS}; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {prefix}/body;\n  proxy_temp_path {prefix}/proxy;\n\
         fastcgi_temp_path {prefix}/fastcgi;\n  uwsgi_temp_path {prefix}/uwsgi;\n  scgi_temp_path {prefix}/scgi;\n\
         upstream backend {{ server unix:{socket}; }}\n\
         server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      proxy_pass http://backend;\n\
         proxy_http_version 1.1;\n      proxy_set_header Upgrade $http_upgrade;\n      proxy_set_header Connection \"upgrade\";\n\
         proxy_set_header Host $host;\n      proxy_read_timeout 3600s;\n      proxy_buffering off;\n    }}\n  }}\n}}\n",
        prefix = prefix.display(),
        socket = socket.display(),
    )
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
