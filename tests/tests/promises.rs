//! Promises of the README and the docs that no other suite checks: the idle
//! timeout in both modes, the shutdown timeout, a link version the backend
//! does not speak, the backends' start-up rules, and several listeners.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use harness::child::ChildGuard;
use harness::hostile_backend::record_bytes;
use harness::http::{self, HandshakeRequest};
use harness::{
    Backend, CloseCode, EVENT_DEADLINE, EXIT_DEADLINE, Gateway, Message, Mode, STARTUP_DEADLINE,
    bin_path, both_modes, wait,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

both_modes!(a_silent_client_is_closed_with_1001_after_the_idle_timeout);

async fn a_silent_client_is_closed_with_1001_after_the_idle_timeout(
    mode: Mode,
) -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let _echo = Backend::start("websocket_echo", docroot.path(), "echo", &[]).await?;
    let args = mode.with_args(&["--ping-interval", "0", "--idle-timeout", "1"]);
    let gateway = Gateway::start(docroot.path(), &args).await?;
    let mut client = gateway.connect("/echo").await?;
    let message = Message::text("then silence");
    assert_eq!(client.round_trip(message.clone()).await?, message);
    // Under the 120 s default: only the flag can end it this soon.
    wait::within(
        "the idle close",
        Duration::from_secs(8),
        client.expect_close_with(CloseCode::Away, "idle timeout"),
    )
    .await?
}

#[tokio::test]
async fn shutdown_gives_up_on_clients_that_never_close_after_its_timeout() -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let _echo = Backend::start("websocket_echo", docroot.path(), "echo", &[]).await?;
    let mut gateway = Gateway::start(docroot.path(), &["--shutdown-timeout", "1"]).await?;
    // A client that upgrades and then never reads, so never answers the close.
    let mut deaf = TcpStream::connect(gateway.addr()).await?;
    let request = HandshakeRequest::new("/echo").render(&gateway.addr().to_string());
    deaf.write_all(request.as_bytes()).await?;
    let response = http::read_response(&mut deaf).await?;
    assert_eq!(response.status, 101, "{response}");
    gateway.sigterm()?;
    // Under the 5 s default: the flag bounds the wait.
    let status = gateway.wait_exit(Duration::from_secs(4)).await?;
    assert_eq!(status.code(), Some(0), "{status}");
    drop(deaf);
    Ok(())
}

#[tokio::test]
async fn a_backend_refuses_a_link_version_it_does_not_speak_with_501() -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let echo = Backend::start("websocket_echo", docroot.path(), "echo", &[]).await?;
    let mut link = UnixStream::connect(echo.socket_path()).await?;
    let open = br#"{"version":99,"mode":"framed","id":1,"name":"echo","path":"/echo","peer":"127.0.0.1:1"}"#;
    link.write_all(&record_bytes(0x01, open)).await?;
    let mut answer = Vec::new();
    wait::within("the REJECT", EVENT_DEADLINE, link.read_to_end(&mut answer)).await??;
    assert_eq!(answer.first(), Some(&0x03), "a REJECT record: {answer:?}");
    let reply: serde_json::Value = serde_json::from_slice(answer.get(5..).unwrap_or_default())?;
    assert_eq!(reply["status"], 501, "{reply}");
    assert!(
        reply["reason"].as_str().unwrap_or_default().contains("99"),
        "{reply}"
    );
    Ok(())
}

#[tokio::test]
async fn a_backend_creates_its_docroot_and_refuses_a_name_already_served() -> anyhow::Result<()> {
    let parent = tempfile::tempdir()?;
    let docroot = parent.path().join("not/yet/there");
    let _first = Backend::start("websocket_echo", &docroot, "echo", &[]).await?;
    let output = tokio::process::Command::new(bin_path("websocket_echo")?)
        .arg("-R")
        .arg(&docroot)
        .args(["-n", "echo"])
        .output();
    let output = wait::within("the second echo to give up", EXIT_DEADLINE, output).await??;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("another server is already listening"),
        "{stderr}"
    );
    Ok(())
}

#[tokio::test]
async fn every_listen_address_serves_ipv4_and_ipv6() -> anyhow::Result<()> {
    // The loopback of both families is part of this machine kind.
    std::net::TcpListener::bind("[::1]:0")
        .map_err(|error| anyhow::anyhow!("this test needs an IPv6 loopback (::1): {error}"))?;
    let second = "[::1]:0";
    let docroot = tempfile::tempdir()?;
    let _echo = Backend::start("websocket_echo", docroot.path(), "echo", &[]).await?;
    let mut command = Command::new(bin_path("wsgate")?);
    command
        .args(["--listen", "127.0.0.1:0", "--listen", second, "-R"])
        .arg(docroot.path())
        .stdout(Stdio::piped());
    let mut gateway = ChildGuard::spawn("wsgate (two listeners)", command)?;
    let stdout = gateway.child_mut().stdout.take().expect("stdout is piped");
    let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = sender.send(line);
        }
    });
    let mut addrs: Vec<SocketAddr> = Vec::new();
    while addrs.len() < 2 {
        let line = wait::within("a listening line", STARTUP_DEADLINE, receiver.recv())
            .await?
            .ok_or_else(|| anyhow::anyhow!("stdout closed: {}", gateway.stderr_text()))?;
        if let Some(addr) = line.strip_prefix("listening on http://") {
            addrs.push(addr.trim().parse()?);
        }
    }
    assert!(addrs[0].is_ipv4());
    assert!(addrs[1].is_ipv6());
    for addr in addrs {
        let mut client = harness::Client::connect(addr, "/echo", &[]).await?;
        let message = Message::text(format!("via {addr}"));
        assert_eq!(client.round_trip(message.clone()).await?, message);
    }
    Ok(())
}

/// `websocket_jsonrpc -L testrpc <extra>` on `rpc` behind a gateway, and a client of it.
async fn testrpc_client(
    extra: &[&str],
) -> anyhow::Result<(tempfile::TempDir, Backend, Gateway, harness::Client)> {
    let docroot = tempfile::tempdir()?;
    let testrpc = harness::binaries::plugin_path("testrpc")?
        .display()
        .to_string();
    let args: Vec<&str> = ["-L", testrpc.as_str()]
        .into_iter()
        .chain(extra.iter().copied())
        .collect();
    let rpc = Backend::start("websocket_jsonrpc", docroot.path(), "rpc", &args).await?;
    let gateway = Gateway::start(docroot.path(), &[]).await?;
    let client = gateway.connect("/rpc").await?;
    Ok((docroot, rpc, gateway, client))
}

#[tokio::test]
async fn a_plugin_that_refuses_the_session_closes_its_client_with_1011() -> anyhow::Result<()> {
    let (_docroot, _rpc, _gateway, mut client) = testrpc_client(&["-C", "refuse-sessions"]).await?;
    client
        .expect_close_with(CloseCode::Error, "plugin session failed")
        .await
}

#[tokio::test]
async fn a_reserved_code_from_a_plugin_becomes_32603_with_its_message_in_data() -> anyhow::Result<()>
{
    let (_docroot, _rpc, _gateway, mut client) = testrpc_client(&[]).await?;
    let request =
        r#"{"jsonrpc":"2.0","id":1,"method":"fail","params":{"code":-32601,"message":"mine"}}"#;
    let reply = client.round_trip(Message::text(request)).await?;
    let Message::Text(reply) = reply else {
        anyhow::bail!("expected a text reply, got {reply:?}");
    };
    let reply: serde_json::Value = serde_json::from_str(&reply)?;
    assert_eq!(reply["error"]["code"], -32603, "{reply}");
    assert!(
        reply["error"]["data"].to_string().contains("mine"),
        "{reply}"
    );
    Ok(())
}

/// The real user id of process `pid`.
fn uid_of(pid: u32) -> anyhow::Result<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let uid = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().next())
        .ok_or_else(|| anyhow::anyhow!("no Uid line"))?;
    Ok(uid.parse()?)
}

#[tokio::test]
async fn u_switches_user_as_root_and_is_ignored_with_a_warning_otherwise() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!(
            "this test needs root, as CI runs it: it starts backends as root and as nobody"
        );
    }
    let nobody =
        nix::unistd::User::from_name("nobody")?.ok_or_else(|| anyhow::anyhow!("no user nobody"))?;
    let docroot = tempfile::tempdir()?;
    // Traversable and writable for nobody, as a real docroot is for the -u user.
    std::fs::set_permissions(
        docroot.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )?;
    // Started as root with -u nobody: it runs as nobody once the socket is bound.
    let as_root = Backend::start(
        "websocket_echo",
        docroot.path(),
        "dropped",
        &["-u", "nobody"],
    )
    .await?;
    assert_eq!(uid_of(as_root.pid())?, nobody.uid.as_raw());
    // Started as nobody (setpriv) with -u root: it cannot switch, says so, runs on.
    let mut command = Command::new("setpriv");
    command
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
        .arg(bin_path("websocket_echo")?)
        .arg("-R")
        .arg(docroot.path())
        .args(["-n", "kept", "-u", "root"]);
    let as_nobody = Backend::start_command(
        "websocket_echo as nobody",
        command,
        &docroot.path().join("kept"),
    )
    .await?;
    assert_eq!(uid_of(as_nobody.pid())?, nobody.uid.as_raw());
    assert!(
        as_nobody.stderr_text().contains("-u ignored"),
        "{}",
        as_nobody.stderr_text()
    );
    let gateway = Gateway::start(docroot.path(), &[]).await?;
    for name in ["/dropped", "/kept"] {
        let mut client = gateway.connect(name).await?;
        let message = Message::text(name);
        assert_eq!(client.round_trip(message.clone()).await?, message);
    }
    Ok(())
}

#[tokio::test]
async fn open_in_direct_mode_carries_the_mode_the_limits_and_a_fresh_id() -> anyhow::Result<()> {
    use harness::hostile_backend::{ACCEPT, HostileBackend, Script};
    let docroot = tempfile::tempdir()?;
    let backend =
        HostileBackend::start(&docroot.path().join("fast"), Script::write(ACCEPT.to_vec()))?;
    let gateway = Gateway::start(
        docroot.path(),
        &[
            "--direct",
            "*",
            "--max-message-size",
            "4096",
            "--ping-interval",
            "7",
            "--idle-timeout",
            "70",
        ],
    )
    .await?;
    let _first = gateway.connect("/fast").await?;
    let _second = gateway.connect("/fast").await?;
    let opens = wait::until("two OPEN records", EVENT_DEADLINE, || {
        let opens: Vec<serde_json::Value> = (0..2)
            .filter_map(|link_idx| backend.received(link_idx).first().cloned())
            .filter_map(|(kind, payload)| (kind == 0x01).then_some(payload))
            .filter_map(|payload| serde_json::from_slice(&payload).ok())
            .collect();
        async move { Ok((opens.len() == 2).then_some(opens)) }
    })
    .await?;
    for open in &opens {
        assert_eq!(open["mode"], "direct", "{open}");
        assert_eq!(
            open["limits"],
            serde_json::json!({"max_message_size": 4096, "ping_interval": 7, "idle_timeout": 70}),
            "{open}"
        );
        assert_eq!(
            open["headers"]["host"],
            gateway.addr().to_string(),
            "{open}"
        );
    }
    assert_ne!(opens[0]["id"], opens[1]["id"], "ids are unique");
    // The HANDOFF followed each ACCEPT.
    wait::until("both HANDOFFs", EVENT_DEADLINE, || {
        let handed = (0..2).all(|link_idx| {
            backend
                .received(link_idx)
                .iter()
                .any(|(kind, _)| *kind == 0x04)
        });
        async move { Ok(handed.then_some(())) }
    })
    .await
}

/// Processes whose command line holds `needle`, by pid.
fn pids_with_argument(needle: &str) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(needle))
        })
        .collect()
}

#[tokio::test]
async fn d_detaches_and_the_daemon_serves_until_sigterm() -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let docroot_arg = docroot.path().display().to_string();
    // The parent returns once the daemon is on its own.
    let output = tokio::process::Command::new(bin_path("websocket_echo")?)
        .args(["-D", "-R", &docroot_arg, "-n", "daemon"])
        .output();
    let output = wait::within("the parent of the daemon to exit", EXIT_DEADLINE, output).await??;
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let socket = docroot.path().join("daemon");
    wait::until("the daemon's socket", STARTUP_DEADLINE, || {
        let ready = std::os::unix::net::UnixStream::connect(&socket).is_ok();
        async move { Ok(ready.then_some(())) }
    })
    .await?;
    let daemons = pids_with_argument(&docroot_arg);
    assert_eq!(daemons.len(), 1, "one daemon: {daemons:?}");
    let daemon = nix::unistd::Pid::from_raw(daemons[0]);
    // Detached: not our child, and in a session of its own.
    assert_ne!(
        nix::unistd::getsid(Some(daemon))?,
        nix::unistd::getsid(None)?
    );
    let gateway = Gateway::start(docroot.path(), &[]).await?;
    let mut client = gateway.connect("/daemon").await?;
    let message = Message::text("from a daemon");
    assert_eq!(client.round_trip(message.clone()).await?, message);
    drop(client);
    nix::sys::signal::kill(daemon, nix::sys::signal::Signal::SIGTERM)?;
    // Exited: gone, or a zombie waiting for whoever adopted it to reap it.
    // (The gateway's command line names the docroot too, so this follows the pid.)
    let exited = || {
        std::fs::read_to_string(format!("/proc/{daemon}/stat")).map_or(true, |stat| {
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
    };
    wait::until(
        "the daemon to remove its socket and exit",
        EXIT_DEADLINE,
        || {
            let gone = !socket.exists() && exited();
            async move { Ok(gone.then_some(())) }
        },
    )
    .await
}
