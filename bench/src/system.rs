//! The systems under test, each started as separate processes on loopback
//! and a temporary directory: the baseline server, wsgate relaying to
//! `websocket_echo`/`websocket_chat`, wsgate handing clients over (direct), and
//! nginx proxying to the baseline server on a UNIX socket when nginx exists.
//!
//! Every start waits on readiness (an address printed, a socket that
//! accepts), with a deadline; dropping a [`System`] kills its processes.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::os::unix::process::CommandExt;

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// How long a process may take to become ready.
const READY_DEADLINE: Duration = Duration::from_secs(20);

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

/// A child process killed and reaped on drop.
#[derive(Debug)]
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        // The whole process group: nginx's workers die with their master.
        if let Ok(pid) = i32::try_from(self.0.id()) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = self.0.wait();
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
    processes: Vec<Process>,
    _dir: tempfile::TempDir,
}

impl System {
    /// Starts `kind`; `None` when it cannot run here (nginx not installed).
    pub fn start(kind: Kind, binaries: &Binaries) -> anyhow::Result<Option<System>> {
        let dir = tempfile::tempdir()?;
        let docroot = dir.path().join("sockets");
        let mut processes = Vec::new();
        let (addr, front_pid, echo_pid) = match kind {
            Kind::Baseline => {
                let (process, addr) = start_printing_addr(Command::new(&binaries.bench).args([
                    "baseline-server",
                    "--listen",
                    "127.0.0.1:0",
                ]))?;
                let pid = process.0.id();
                processes.push(process);
                (addr, None, pid)
            }
            Kind::Relay | Kind::Direct => {
                let max = MAX_CLIENTS.to_string();
                let echo = spawn(
                    Command::new(binaries.dir.join("websocket_echo"))
                        .arg("-R")
                        .arg(&docroot)
                        .args(["-n", "echo", "-m", &max]),
                )?;
                let echo_pid = echo.0.id();
                processes.push(echo);
                processes.push(spawn(
                    Command::new(binaries.dir.join("websocket_chat"))
                        .arg("-R")
                        .arg(&docroot)
                        .args(["-n", "chat", "-m", &max, "--queue", "4096"]),
                )?);
                wait_socket(&docroot.join("echo"))?;
                wait_socket(&docroot.join("chat"))?;
                let mut command = Command::new(binaries.dir.join("wsgate"));
                command
                    .args(["--listen", "127.0.0.1:0", "--max-connections", &max])
                    .args(["--ping-interval", "0", "--idle-timeout", "0"])
                    .arg("-R")
                    .arg(&docroot);
                if kind == Kind::Direct {
                    command.args(["--direct", "*"]);
                }
                let (gateway, addr) = start_printing_addr(&mut command)?;
                let pid = gateway.0.id();
                processes.push(gateway);
                (addr, Some(pid), echo_pid)
            }
            Kind::Nginx => {
                let Some(nginx) = find_nginx() else {
                    return Ok(None);
                };
                std::fs::create_dir_all(&docroot)?;
                let socket = docroot.join("baseline.sock");
                let backend = spawn(
                    Command::new(&binaries.bench)
                        .args(["baseline-server", "--unix"])
                        .arg(&socket),
                )?;
                let echo_pid = backend.0.id();
                processes.push(backend);
                wait_socket(&socket)?;
                let port = std::net::TcpListener::bind("127.0.0.1:0")?
                    .local_addr()?
                    .port();
                let conf = dir.path().join("nginx.conf");
                std::fs::write(&conf, nginx_conf(port, &socket, dir.path()))?;
                let master = spawn(
                    Command::new(nginx)
                        .arg("-p")
                        .arg(dir.path())
                        .arg("-c")
                        .arg(&conf)
                        .args(["-e", "stderr"]),
                )?;
                let pid = master.0.id();
                processes.push(master);
                let addr = SocketAddr::from(([127, 0, 0, 1], port));
                wait_tcp(addr)?;
                (addr, Some(pid), echo_pid)
            }
        };
        Ok(Some(System {
            kind,
            addr,
            front_pid,
            echo_pid,
            processes,
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
            if let Some(status) = process.0.try_wait()? {
                bail!("{} exited: {status}", self.kind.label());
            }
        }
        Ok(())
    }
}

/// Starts `command` in its own process group, with no stdin or stderr and,
/// unless the caller piped it, no stdout: nothing it leaves behind can hold
/// the caller's pipes open.
fn spawn(command: &mut Command) -> anyhow::Result<Process> {
    spawn_with_stdout(command, Stdio::null())
}

fn spawn_with_stdout(command: &mut Command, stdout: Stdio) -> anyhow::Result<Process> {
    let child = command
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {command:?}"))?;
    Ok(Process(child))
}

/// Starts a process that prints `listening on http://ADDR` when ready.
fn start_printing_addr(command: &mut Command) -> anyhow::Result<(Process, SocketAddr)> {
    let mut process = spawn_with_stdout(command, Stdio::piped())?;
    let stdout = process.0.stdout.take().context("stdout is piped")?;
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("listening on http://") {
                let _ = sender.send(addr.trim().to_owned());
            }
        }
    });
    let addr = receiver
        .recv_timeout(READY_DEADLINE)
        .with_context(|| format!("{command:?} did not print its address"))?;
    Ok((process, addr.parse()?))
}

fn wait_socket(path: &Path) -> anyhow::Result<()> {
    let start = Instant::now();
    while std::os::unix::net::UnixStream::connect(path).is_err() {
        if start.elapsed() > READY_DEADLINE {
            bail!("{} does not accept connections", path.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn wait_tcp(addr: SocketAddr) -> anyhow::Result<()> {
    let start = Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        if start.elapsed() > READY_DEADLINE {
            bail!("nothing answers on {addr}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
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
