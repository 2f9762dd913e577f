//! `wsgate-bench redis-fanout`: what `--redis` costs a fan-out. One
//! `websocket_chat` behind one gateway, against two `websocket_chat --redis`
//! instances (docroots of their own, a gateway each) sharing one
//! `redis-server`, with the same load: `receivers` clients (spread over the
//! two instances in the second case), one sender on the first instance at
//! `rate` messages per second (`scenario::fanout_split`). The receivers on
//! the second instance get every message through Redis; their latency
//! against the single instance's is what Redis adds.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use harness::Backend;
use harness::child::{ChildGuard, Logging};
use harness::gateway::start_announcing;
use harness::redis::RedisServer;

use crate::scenario::{self, Rate, Target};

/// One chat instance behind its own gateway.
#[derive(Debug)]
struct ChatInstance {
    addr: std::net::SocketAddr,
    _gateway: ChildGuard,
    _chat: Backend,
    _dir: tempfile::TempDir,
}

impl ChatInstance {
    async fn start(
        dir: &Path,
        redis: Option<&str>,
        max_clients: usize,
    ) -> anyhow::Result<ChatInstance> {
        let temp = tempfile::tempdir()?;
        let docroot = temp.path().join("sockets");
        let max = max_clients.to_string();
        let mut command = Command::new(dir.join("websocket_chat"));
        command
            .arg("-R")
            .arg(&docroot)
            .args(["-n", "chat", "-m", &max, "--queue", "4096"]);
        if let Some(url) = redis {
            command.args(["--redis", url, "--redis-namespace", "bench:chat"]);
        }
        let chat = Backend::start_command_with(
            "websocket_chat",
            command,
            &docroot.join("chat"),
            Logging::Quiet,
        )
        .await?;
        let command = crate::system::gateway_command(dir, &docroot, &max);
        let (gateway, addr) = start_announcing("wsgate", command, Logging::Quiet).await?;
        Ok(ChatInstance {
            addr,
            _gateway: gateway,
            _chat: chat,
            _dir: temp,
        })
    }

    fn target(&self) -> Target {
        Target {
            url: format!("ws://{}/chat", self.addr),
            addr: self.addr,
            tls: None,
        }
    }
}

/// The figures of one run.
#[derive(Debug, Clone)]
pub struct RedisFanout {
    /// One instance, no Redis.
    pub single: Rate,
    /// Two instances through Redis, all receivers.
    pub shared: Rate,
    /// Receivers on the sender's instance.
    pub shared_local: Rate,
    /// Receivers on the other instance (every message through Redis).
    pub shared_remote: Rate,
}

/// Runs both systems one after the other with the binaries in `dir`.
pub async fn redis_fanout(
    dir: &Path,
    receivers: usize,
    rate: u32,
    duration: Duration,
) -> anyhow::Result<RedisFanout> {
    let single = {
        let instance = ChatInstance::start(dir, None, receivers + 100).await?;
        eprintln!("one instance, no Redis: fan-out to {receivers}");
        scenario::fanout(&instance.target(), receivers, rate, duration).await?
    };
    let redis = RedisServer::start().await?;
    let url = redis.url();
    let one = ChatInstance::start(dir, Some(&url), receivers + 100).await?;
    let two = ChatInstance::start(dir, Some(&url), receivers + 100).await?;
    eprintln!("two instances through Redis: fan-out to {receivers}");
    let targets = [one.target(), two.target()];
    let (shared, per_instance) =
        scenario::fanout_split(&targets[0], &targets, receivers, rate, duration).await?;
    let mut per_instance = per_instance.into_iter();
    let shared_local = per_instance.next().unwrap_or_default();
    let shared_remote = per_instance.next().unwrap_or_default();
    Ok(RedisFanout {
        single,
        shared,
        shared_local,
        shared_remote,
    })
}
