//! The backends' limits on what the gateway (or anyone who can reach their
//! sockets) makes them hold: links that never send OPEN or never hand a
//! direct client over are closed at a deadline and bounded while they wait;
//! `-m` defaults to what the descriptor limit allows, which start-up raises
//! to the hard limit (the gateway's too); and a server whose set-up fails
//! never makes its socket appear under its name.

use std::collections::HashSet;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail, ensure};
use harness::binaries::bin_path;
use harness::child::Logging;
use harness::{Backend, EVENT_DEADLINE, EXIT_DEADLINE, Gateway, Message, gateway, wait};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

/// An OPEN record for `mode`, encoded here byte by byte (kind, u32 BE length, JSON).
fn open_record(mode: &str, id: u64) -> Vec<u8> {
    let json = format!(
        r#"{{"version":1,"mode":"{mode}","id":{id},"name":"echo","path":"/echo","peer":"127.0.0.1:1"}}"#
    );
    let mut record = vec![0x01];
    record.extend_from_slice(&u32::try_from(json.len()).expect("short").to_be_bytes());
    record.extend_from_slice(json.as_bytes());
    record
}

/// Whether the backend has closed `link`: EOF (or a reset) on a non-blocking read.
/// Whatever the backend sent first (an ACCEPT) is read and skipped.
fn closed_by_peer(link: &mut UnixStream) -> anyhow::Result<bool> {
    let mut buf = [0u8; 256];
    loop {
        match link.read(&mut buf) {
            Ok(0) => return Ok(true),
            Ok(_) => continue,
            Err(error) if error.kind() == ErrorKind::WouldBlock => return Ok(false),
            Err(error) if error.kind() == ErrorKind::ConnectionReset => return Ok(true),
            Err(error) => return Err(error.into()),
        }
    }
}

/// How many links process `pid` has accepted on its listening UNIX sockets
/// and holds: its descriptors that are the server side of a connection to
/// the path one of its listeners is bound to (`/proc/net/unix` lists both
/// by inode; connections still in a listen queue are there too, but in no
/// process's descriptor table). Unlike a count of all its descriptors, this
/// does not move when the server sets up something else (a runtime's
/// descriptors may come after its socket accepts).
fn n_links_held(pid: u32) -> anyhow::Result<usize> {
    let mut held = HashSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        // A descriptor closed while the directory is read is simply gone.
        if let Ok(target) = std::fs::read_link(entry?.path()) {
            held.insert(target.to_string_lossy().into_owned());
        }
    }
    let table = std::fs::read_to_string("/proc/net/unix")?;
    // Num RefCount Protocol Flags Type St Inode Path; St 01 listens, 03 is connected.
    let sockets: Vec<(&str, String, &str)> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.len() == 8).then(|| (fields[5], format!("socket:[{}]", fields[6]), fields[7]))
        })
        .collect();
    let listening: HashSet<&str> = sockets
        .iter()
        .filter(|(state, inode, _)| *state == "01" && held.contains(inode))
        .map(|&(_, _, path)| path)
        .collect();
    Ok(sockets
        .iter()
        .filter(|(state, inode, path)| {
            *state == "03" && listening.contains(path) && held.contains(inode)
        })
        .count())
}

/// The soft and hard `Max open files` of process `pid`.
fn nofile_limits(pid: u32) -> anyhow::Result<(u64, u64)> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))?;
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .context("no `Max open files` line")?;
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|word| word.parse().ok())
        .collect();
    match numbers[..] {
        [soft, hard] => Ok((soft, hard)),
        _ => bail!("cannot read {line:?}"),
    }
}

/// Sends a text through a new client of `/echo` and expects it back.
async fn echo_works(gateway: &Gateway) -> anyhow::Result<()> {
    let mut client = gateway.connect("/echo").await?;
    let reply = client.round_trip(Message::text("still serving")).await?;
    ensure!(reply == Message::text("still serving"), "got {reply:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_link_that_never_hands_over_is_closed_and_frees_its_slot() -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let args = ["-m", "2", "--handoff-timeout", "0.2"];
    let echo = Backend::start("websocket_echo", docroot.path(), "echo", &args).await?;
    // Two links take both slots: OPEN for direct mode, then never HANDOFF.
    let mut links = Vec::new();
    for id in 0..2 {
        let mut link = UnixStream::connect(echo.socket_path())?;
        link.write_all(&open_record("direct", id))?;
        link.set_nonblocking(true)?;
        links.push(link);
    }
    wait::until(
        "the backend to close both links that never sent HANDOFF",
        EVENT_DEADLINE,
        || {
            let all_closed = links
                .iter_mut()
                .map(closed_by_peer)
                .collect::<anyhow::Result<Vec<bool>>>()
                .map(|closed| closed.iter().all(|&closed| closed).then_some(()));
            async move { all_closed }
        },
    )
    .await?;
    let gateway = Gateway::start(docroot.path(), &["--direct", "*"]).await?;
    echo_works(&gateway).await?;
    echo_works(&gateway).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_that_never_send_open_are_bounded_and_closed() -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let args = ["--max-pending", "2", "--open-timeout", "0.2"];
    let echo = Backend::start("websocket_echo", docroot.path(), "echo", &args).await?;
    let mut links = (0..6)
        .map(|_| {
            let link = UnixStream::connect(echo.socket_path())?;
            link.set_nonblocking(true)?;
            Ok(link)
        })
        .collect::<anyhow::Result<Vec<UnixStream>>>()?;
    let mut max_held = 0;
    wait::until(
        "the backend to close all six silent links",
        EVENT_DEADLINE,
        || {
            let state = n_links_held(echo.pid()).and_then(|n_held| {
                max_held = max_held.max(n_held);
                let closed = links
                    .iter_mut()
                    .map(closed_by_peer)
                    .collect::<anyhow::Result<Vec<bool>>>()?;
                Ok(closed.iter().all(|&closed| closed).then_some(()))
            });
            async move { state }
        },
    )
    .await?;
    ensure!(
        max_held <= 2,
        "the backend held {max_held} links waiting for OPEN at once; --max-pending is 2"
    );
    let gateway = Gateway::start(docroot.path(), &[]).await?;
    echo_works(&gateway).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_fifty_clients_are_served_by_default() -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let echo = Backend::start("websocket_echo", docroot.path(), "echo", &[]).await?;
    let gateway = Gateway::start(docroot.path(), &[]).await?;
    let mut clients = Vec::new();
    for client_idx in 0..60 {
        let mut client = gateway.connect("/echo").await?;
        let text = format!("client {client_idx}");
        let reply = client
            .round_trip(Message::text(text.clone()))
            .await
            .with_context(|| format!("client {client_idx}"))?;
        ensure!(
            reply == Message::text(text),
            "client {client_idx} got {reply:?}"
        );
        clients.push(client);
    }
    let (soft, _) = nofile_limits(echo.pid())?;
    let expected = format!("max_clients={}", soft.saturating_sub(192).max(1));
    ensure!(
        echo.stderr_text().contains(&expected),
        "the log says {expected}:\n{}",
        echo.stderr_text()
    );
    Ok(())
}

/// `sh -c 'ulimit -Sn 256; exec "$0" "$@"' program args…`: `program` starts
/// with a soft descriptor limit of 256 under an unchanged hard limit.
fn with_low_soft_nofile(program: &Path) -> Command {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(r#"ulimit -Sn 256 && exec "$0" "$@""#)
        .arg(program);
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_and_gateway_raise_their_descriptor_limit_to_the_hard_one() -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let (_, hard) = nofile_limits(std::process::id())?;
    ensure!(
        hard > 256,
        "this test needs a hard descriptor limit above 256, not {hard}"
    );

    let mut command = with_low_soft_nofile(&bin_path("websocket_echo")?);
    command.arg("-R").arg(docroot.path()).arg("-n").arg("echo");
    let socket_path = docroot.path().join("echo");
    let echo = Backend::start_command("websocket_echo (low limit)", command, &socket_path).await?;
    assert_eq!(nofile_limits(echo.pid())?, (hard, hard));

    let mut command = with_low_soft_nofile(&bin_path("wsgate")?);
    command
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("-R")
        .arg(docroot.path());
    let (gateway, _addr) =
        gateway::start_announcing("wsgate (low limit)", command, Logging::Debug).await?;
    assert_eq!(nofile_limits(gateway.pid())?, (hard, hard));
    let log = gateway.stderr_text();
    ensure!(
        log.contains("raised the descriptor limit") && log.contains(&format!("nofile={hard}")),
        "the gateway logs its limit:\n{log}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsonrpc_whose_plugin_fails_never_shows_its_socket() -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let testrpc = harness::binaries::plugin_path("testrpc")?;
    // Every name created in the docroot, in order, whatever the timing.
    let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
    inotify.add_watch(
        docroot.path(),
        AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO,
    )?;
    let mut command = tokio::process::Command::new(bin_path("websocket_jsonrpc")?);
    command
        .arg("-R")
        .arg(docroot.path())
        .arg("-n")
        .arg("rpc")
        .arg("-L")
        .arg(&testrpc)
        .arg("-C")
        .arg("refuse")
        .env("NO_COLOR", "1")
        .kill_on_drop(true);
    let output =
        wait::within("websocket_jsonrpc to exit", EXIT_DEADLINE, command.output()).await??;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.code() == Some(1),
        "{}: {stderr}",
        output.status
    );
    ensure!(stderr.contains("refuse to start"), "{stderr}");
    let created = match inotify.read_events() {
        Ok(events) => events
            .into_iter()
            .filter_map(|event| event.name)
            .collect::<Vec<_>>(),
        Err(nix::errno::Errno::EAGAIN) => Vec::new(),
        Err(error) => return Err(error.into()),
    };
    ensure!(
        !created.iter().any(|name| name == "rpc"),
        "the socket appeared under its name before set-up failed; created: {created:?}"
    );
    let left: Vec<_> = std::fs::read_dir(docroot.path())?.collect();
    ensure!(left.is_empty(), "nothing left in the docroot: {left:?}");
    Ok(())
}
