//! A `redis-server` of a test's own: a free loopback port, no persistence
//! (`--save '' --appendonly no`), its working directory a temporary one,
//! ready once it answers `PING`. It can be killed and started again on the
//! same port, empty, as a restarted Redis without persistence comes back.
//!
//! Tests that need it and cannot find it report themselves ignored outside CI
//! ([`RedisServer::missing`]); in CI (`CI=true`, or `WSGATE_REQUIRE_REDIS=1`)
//! they fail instead ([`RedisServer::required`]), so a missing install never
//! passes for a green run.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, bail, ensure};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::child::ChildGuard;
use crate::{STARTUP_DEADLINE, wait};

/// The program started.
pub const REDIS_SERVER: &str = "redis-server";

/// A running `redis-server`; dropping it kills and reaps the process and
/// removes its directory.
#[derive(Debug)]
pub struct RedisServer {
    process: Option<ChildGuard>,
    port: u16,
    dir: TempDir,
}

impl RedisServer {
    /// Why the tests that need Redis cannot run here, if they cannot.
    pub fn missing() -> Option<String> {
        let found = std::env::var_os("PATH").is_some_and(|path| {
            std::env::split_paths(&path).any(|dir| dir.join(REDIS_SERVER).is_file())
        });
        (!found).then(|| format!("{REDIS_SERVER} not installed (apt-get install redis-server)"))
    }

    /// Whether a missing `redis-server` fails the tests instead of ignoring them.
    pub fn required() -> bool {
        let set = |name: &str| {
            std::env::var(name)
                .is_ok_and(|value| value == "1" || value.eq_ignore_ascii_case("true"))
        };
        set("CI") || set("WSGATE_REQUIRE_REDIS")
    }

    /// Starts `redis-server` on a free loopback port and waits until it answers `PING`.
    pub async fn start() -> anyhow::Result<RedisServer> {
        if let Some(why) = RedisServer::missing() {
            bail!("cannot start Redis: {why}");
        }
        let dir = tempfile::Builder::new().prefix("wsgate-redis-").tempdir()?;
        // The port is free now; redis-server binds it a moment later (a
        // clash there shows as an exit, reported by the readiness wait).
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port();
        let mut server = RedisServer {
            process: None,
            port,
            dir,
        };
        server.spawn().await?;
        Ok(server)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let mut command = Command::new(REDIS_SERVER);
        command
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--logfile", ""])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null());
        let label = format!("{REDIS_SERVER} (port {})", self.port);
        let mut process = ChildGuard::spawn(&label, command)?;
        let address = self.address();
        wait::until(&format!("{label} to answer PING"), STARTUP_DEADLINE, || {
            let running = process.check_running();
            async move {
                running?;
                Ok(ping(address).await.ok())
            }
        })
        .await?;
        self.process = Some(process);
        Ok(())
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The address it listens on.
    pub fn address(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Its working directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills it with SIGKILL (every connection drops, every key is gone) and reaps it.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut process) = self.process.take() {
            process.kill_and_reap()?;
        }
        Ok(())
    }

    /// Starts it again, empty, on the same port, and waits until it answers `PING`.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill()?;
        self.spawn().await
    }

    /// Sends `PING` and checks for `+PONG`.
    pub async fn ping(&self) -> anyhow::Result<()> {
        ping(self.address()).await
    }

    /// Runs one command whose reply is a single line (a status, an integer
    /// or an error, e.g. `EVAL` of a script returning a number) and returns
    /// that line without its type byte; an error reply is an error.
    pub async fn command(&self, arguments: &[&str]) -> anyhow::Result<String> {
        let mut request = format!("*{}\r\n", arguments.len());
        for argument in arguments {
            request.push_str(&format!("${}\r\n{argument}\r\n", argument.len()));
        }
        let mut stream = TcpStream::connect(self.address()).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut reply = Vec::new();
        let mut byte = [0u8; 1];
        while !reply.ends_with(b"\r\n") {
            ensure!(reply.len() < 4096, "Redis's reply line is too long");
            stream.read_exact(&mut byte).await?;
            reply.push(byte[0]);
        }
        let line = String::from_utf8_lossy(&reply[1..reply.len() - 2]).into_owned();
        match reply[0] {
            b'+' | b':' => Ok(line),
            b'-' => bail!("Redis refused {:?}: {line}", arguments.first()),
            other => bail!(
                "Redis answered with a reply of type {:?}, not one line",
                other as char
            ),
        }
    }
}

async fn ping(address: SocketAddr) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect(address)
        .await
        .with_context(|| format!("connecting to Redis at {address}"))?;
    stream.write_all(b"*1\r\n$4\r\nPING\r\n").await?;
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).await?;
    if &reply != b"+PONG\r\n" {
        bail!(
            "Redis answered PING with {:?}",
            String::from_utf8_lossy(&reply)
        );
    }
    Ok(())
}
