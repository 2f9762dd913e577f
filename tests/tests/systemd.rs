//! What systemd gives the gateway and the backends: listening sockets by
//! socket activation (`LISTEN_FDS`, `LISTEN_FDNAMES`, descriptors from 3),
//! and `--log-format json` for the journal or a log collector.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::OwnedFd;
use std::process::Command;

use command_fds::{CommandFdExt, FdMapping};
use harness::child::{ChildGuard, Logging};
use harness::{Backend, Client, EXIT_DEADLINE, Gateway, Message};
use tempfile::TempDir;

/// `wsgate -R <docroot> <args>` with `socket` as descriptor 3 and the
/// socket activation variables `env`.
fn activated_gateway(
    docroot: &std::path::Path,
    socket: OwnedFd,
    env: &[(&str, &str)],
    args: &[&str],
) -> anyhow::Result<Command> {
    let mut command = Command::new(harness::bin_path("wsgate")?);
    command
        .arg("-R")
        .arg(docroot)
        .args(args)
        .env_remove("LISTEN_PID");
    for (name, value) in env {
        command.env(name, value);
    }
    command.fd_mappings(vec![FdMapping {
        parent_fd: socket,
        child_fd: 3,
    }])?;
    Ok(command)
}

/// An echo backend and `wsgate` serving a loopback socket passed to it as
/// systemd passes one ([`activated_gateway`]); dropped gateway first.
struct ActivatedEcho {
    gateway: ChildGuard,
    /// The passed socket's address, which the gateway announced.
    addr: SocketAddr,
    _echo: Backend,
    _docroot: TempDir,
}

/// Starts an [`ActivatedEcho`] with the socket activation variables `env`
/// and `args`, once the gateway announced the passed socket's address.
async fn start_activated_echo(
    env: &[(&str, &str)],
    args: &[&str],
) -> anyhow::Result<ActivatedEcho> {
    let docroot = tempfile::tempdir()?;
    let echo = Backend::start("websocket_echo", docroot.path(), "echo", &[]).await?;
    let socket = TcpListener::bind("127.0.0.1:0")?;
    let addr = socket.local_addr()?;
    let command = activated_gateway(docroot.path(), socket.into(), env, args)?;
    let (gateway, announced) =
        harness::gateway::start_announcing("wsgate", command, Logging::Debug).await?;
    assert_eq!(announced, addr);
    Ok(ActivatedEcho {
        gateway,
        addr,
        _echo: echo,
        _docroot: docroot,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_serves_the_socket_systemd_passed() -> anyhow::Result<()> {
    let mut activated = start_activated_echo(
        &[("LISTEN_FDS", "1"), ("LISTEN_FDNAMES", "http")],
        // The configured address is not bound: the passed socket replaces it.
        &["--listen", "127.0.0.1:1"],
    )
    .await?;
    let mut client = Client::connect(activated.addr, "/echo", &[]).await?;
    let message = Message::text("activated");
    assert_eq!(client.round_trip(message.clone()).await?, message);
    activated
        .gateway
        .signal(nix::sys::signal::Signal::SIGTERM)?;
    let status = activated.gateway.wait_exit(EXIT_DEADLINE).await?;
    assert_eq!(status.code(), Some(0), "exit status {status}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_share_the_socket_systemd_passed() -> anyhow::Result<()> {
    let activated = start_activated_echo(&[("LISTEN_FDS", "1")], &["--workers", "2"]).await?;
    for client_idx in 0..8 {
        let mut client = Client::connect(activated.addr, "/echo", &[]).await?;
        let message = Message::binary(vec![client_idx; 5]);
        assert_eq!(client.round_trip(message.clone()).await?, message);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_meant_for_another_process_are_ignored() -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let socket = TcpListener::bind("127.0.0.1:0")?;
    let passed = socket.local_addr()?;
    // LISTEN_PID names another process (pid 1): the gateway binds its own address.
    let command = activated_gateway(
        docroot.path(),
        socket.into(),
        &[("LISTEN_FDS", "1"), ("LISTEN_PID", "1")],
        &["--listen", "127.0.0.1:0"],
    )?;
    let (_gateway, announced) =
        harness::gateway::start_announcing("wsgate", command, Logging::Debug).await?;
    assert_ne!(announced, passed);
    Ok(())
}

#[tokio::test]
async fn unusable_inherited_descriptors_stop_the_gateway_with_status_2() -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let not_a_socket = tempfile::tempfile()?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let cases: [(OwnedFd, &str, &str); 2] = [
        (not_a_socket.into(), "", "not a listening TCP socket"),
        (listener.into(), "https", "has no TLS"),
    ];
    for (fd, name, expected) in cases {
        let mut command = activated_gateway(
            docroot.path(),
            fd,
            &[("LISTEN_FDS", "1"), ("LISTEN_FDNAMES", name)],
            &[],
        )?;
        let output = command.output()?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{expected}: {stderr}");
        assert!(stderr.contains(expected), "{expected}: {stderr}");
    }
    Ok(())
}

/// Every line of `log` is a JSON object with a level and a message.
fn assert_json_lines(label: &str, log: &str) -> anyhow::Result<()> {
    assert!(!log.trim().is_empty(), "{label} logged nothing");
    for line in log.lines() {
        let value: serde_json::Value = serde_json::from_str(line)
            .map_err(|error| anyhow::anyhow!("{label}: {error} in line {line:?}"))?;
        assert!(value["level"].is_string(), "{label}: no level in {line}");
        assert!(
            value["timestamp"].is_string(),
            "{label}: no timestamp in {line}"
        );
        assert!(value["fields"].is_object(), "{label}: no fields in {line}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line() -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let mut echo = Backend::start(
        "websocket_echo",
        docroot.path(),
        "echo",
        &["--log-format", "json"],
    )
    .await?;
    let mut gateway = Gateway::start(docroot.path(), &["--log-format", "json"]).await?;
    let mut client = gateway.connect("/echo").await?;
    let message = Message::text("logged");
    assert_eq!(client.round_trip(message.clone()).await?, message);
    gateway.sigterm()?;
    gateway.wait_exit(EXIT_DEADLINE).await?;
    echo.sigterm()?;
    echo.wait_exit(EXIT_DEADLINE).await?;
    let gateway_log = gateway.stderr_text();
    assert_json_lines("wsgate", &gateway_log)?;
    // The client's span is carried in each line about it.
    assert!(gateway_log.contains(r#""spans":[{"#), "{gateway_log}");
    assert_json_lines("websocket_echo", &echo.stderr_text())?;
    Ok(())
}

#[tokio::test]
async fn an_unknown_log_format_is_refused() -> anyhow::Result<()> {
    let output = Command::new(harness::bin_path("wsgate")?)
        .args(["--log-format", "yaml"])
        .output()?;
    assert_eq!(output.status.code(), Some(2));
    let output = Command::new(harness::bin_path("websocket_echo")?)
        .args(["--log-format", "yaml"])
        .output()?;
    assert_eq!(output.status.code(), Some(2));
    Ok(())
}
