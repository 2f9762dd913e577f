//! `--workers N`: a supervisor runs N gateway processes on one port
//! (SO_REUSEPORT), announces the address once, restarts a worker that dies
//! and stops them all on SIGTERM.

use std::collections::BTreeSet;
use std::path::Path;

use harness::{
    Backend, CloseCode, EVENT_DEADLINE, EXIT_DEADLINE, Gateway, Message, processes, wait,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;

/// The process ids whose parent is `parent`, from /proc.
fn children_of(parent: u32) -> anyhow::Result<BTreeSet<u32>> {
    Ok(processes::try_children(parent)?
        .into_iter()
        .map(|child| child.pid)
        .collect())
}

/// Waits until `parent` has exactly `n` children, and returns them.
async fn wait_for_workers(gateway: &mut Gateway, n: usize) -> anyhow::Result<BTreeSet<u32>> {
    let pid = gateway.pid();
    wait::until(&format!("{n} workers"), EVENT_DEADLINE, || async move {
        let children = children_of(pid)?;
        Ok((children.len() == n).then_some(children))
    })
    .await
}

/// An echo backend and a gateway with `--workers 2`, once both workers
/// run; their process ids.
async fn start_two_workers() -> anyhow::Result<(TempDir, Backend, Gateway, BTreeSet<u32>)> {
    let docroot = tempfile::tempdir()?;
    let echo = Backend::start("websocket_echo", docroot.path(), "echo", &[]).await?;
    let mut gateway = Gateway::start(docroot.path(), &["--workers", "2"]).await?;
    let workers = wait_for_workers(&mut gateway, 2).await?;
    Ok((docroot, echo, gateway, workers))
}

/// The socket inodes of the established TCP connections whose local port is
/// `port` (the gateway's side of its clients' connections), from
/// /proc/net/tcp and tcp6.
fn client_connections(port: u16) -> anyhow::Result<BTreeSet<u64>> {
    const ESTABLISHED: &str = "01";
    let mut inodes = BTreeSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            let local_port = local
                .rsplit_once(':')
                .and_then(|(_, hex)| u16::from_str_radix(hex, 16).ok());
            if local_port == Some(port) && *state == ESTABLISHED {
                inodes.insert(inode.parse()?);
            }
        }
    }
    Ok(inodes)
}

/// How many of `connections` (socket inodes) `pid` holds.
fn n_held(pid: u32, connections: &BTreeSet<u64>) -> anyhow::Result<usize> {
    let mut n = 0;
    for entry in std::fs::read_dir(Path::new("/proc").join(pid.to_string()).join("fd"))? {
        let Ok(target) = std::fs::read_link(entry?.path()) else {
            continue;
        };
        let inode = target
            .to_str()
            .and_then(|target| target.strip_prefix("socket:["))
            .and_then(|rest| rest.strip_suffix(']'))
            .and_then(|inode| inode.parse::<u64>().ok());
        if inode.is_some_and(|inode| connections.contains(&inode)) {
            n += 1;
        }
    }
    Ok(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_share_one_port_and_each_serves_clients() -> anyhow::Result<()> {
    let (_docroot, _echo, mut gateway, workers) = start_two_workers().await?;
    let workers: Vec<u32> = workers.into_iter().collect();

    // The kernel spreads connections over the workers' sockets by their
    // source port: 32 clients all on one of two workers has odds of 2^-31.
    let mut clients = Vec::new();
    for client_idx in 0..32 {
        let mut client = gateway.connect("/echo").await?;
        let message = Message::text(format!("client {client_idx}"));
        assert_eq!(client.round_trip(message.clone()).await?, message);
        clients.push(client);
    }
    // Each client's connection is held by exactly one worker, and each
    // worker holds some.
    let connections = client_connections(gateway.addr().port())?;
    assert_eq!(connections.len(), clients.len(), "{connections:?}");
    let held: Vec<usize> = workers
        .iter()
        .map(|pid| n_held(*pid, &connections))
        .collect::<anyhow::Result<_>>()?;
    assert!(
        held.iter().all(|n| *n >= 1),
        "every worker serves clients: client connections per worker {held:?}"
    );
    assert_eq!(held.iter().sum::<usize>(), clients.len(), "{held:?}");

    // SIGTERM reaches every worker: each client is closed with 1001.
    gateway.sigterm()?;
    for client in &mut clients {
        client.expect_close_code(CloseCode::Away).await?;
    }
    let status = gateway.wait_exit(EXIT_DEADLINE).await?;
    assert_eq!(status.code(), Some(0), "supervisor's exit status {status}");
    for pid in workers {
        assert!(
            !Path::new("/proc").join(pid.to_string()).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))?.contains(") Z"),
            "worker {pid} still runs after its supervisor exited"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_dies_is_restarted_and_the_port_keeps_serving() -> anyhow::Result<()> {
    let (_docroot, _echo, mut gateway, workers) = start_two_workers().await?;
    let victim = *workers.iter().next().expect("two workers");
    kill(Pid::from_raw(i32::try_from(victim)?), Signal::SIGKILL)?;

    let pid = gateway.pid();
    let replaced = wait::until(
        "a new worker in place of the killed one",
        EVENT_DEADLINE,
        || {
            let workers = workers.clone();
            async move {
                let now = children_of(pid)?;
                Ok((now.len() == 2 && !now.contains(&victim) && now != workers).then_some(now))
            }
        },
    )
    .await?;
    assert!(!replaced.contains(&victim));
    gateway.check_running()?;
    for client_idx in 0..16 {
        let mut client = gateway.connect("/echo").await?;
        let message = Message::binary(vec![client_idx; 3]);
        assert_eq!(client.round_trip(message.clone()).await?, message);
    }
    let log = gateway.stderr_text();
    assert!(log.contains("worker exited; restarting it"), "{log}");
    assert!(log.contains("worker restarted"), "{log}");
    Ok(())
}

#[tokio::test]
async fn workers_out_of_range_is_refused_with_status_2() -> anyhow::Result<()> {
    for workers in ["0", "257"] {
        let output = std::process::Command::new(harness::bin_path("wsgate")?)
            .args(["--listen", "127.0.0.1:0", "--workers", workers])
            .output()?;
        assert_eq!(output.status.code(), Some(2), "--workers {workers}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("workers must be"),
            "--workers {workers}: {stderr}"
        );
    }
    Ok(())
}
