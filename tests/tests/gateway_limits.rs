//! The gateway's bounds on hostile clients and careless backends: request
//! head sizes, upgrades that declare a body, floods of subprotocols, the Host
//! allowlist, connections per address, the header deadline, descriptors
//! running out, and what a backend's ACCEPT or REJECT may carry.

use std::collections::BTreeMap;
use std::process::Command;

use harness::child::Logging;
use harness::gateway::start_announcing;
use harness::{
    AcceptReply, EVENT_DEADLINE, EXIT_DEADLINE, FakeBackend, FakeBehaviour, Gateway,
    HandshakeRequest, RejectReply, bin_path, wait,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// A gateway with an echoing fake backend on `echo`, started with `args`.
async fn gateway_with_echo(
    docroot: &std::path::Path,
    args: &[&str],
) -> anyhow::Result<(Gateway, FakeBackend)> {
    let backend = FakeBackend::start(
        &docroot.join("echo"),
        FakeBehaviour::Echo(AcceptReply::default()),
    )?;
    Ok((Gateway::start(docroot, args).await?, backend))
}

#[tokio::test]
async fn an_upgrade_that_declares_a_body_is_refused_with_400() -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let (gateway, _echo) = gateway_with_echo(docroot.path(), &[]).await?;
    for (name, value) in [("Transfer-Encoding", "chunked"), ("Content-Length", "5")] {
        let response = gateway
            .handshake(&HandshakeRequest::new("/echo").header(name, value))
            .await?;
        assert_eq!(response.status, 400, "{name}: {value}: {response}");
        assert!(response.body_text().contains("no body"), "{response}");
    }
    let response = gateway
        .handshake(&HandshakeRequest::new("/echo").header("Content-Length", "0"))
        .await?;
    assert_eq!(response.status, 101, "an empty body is no body: {response}");
    Ok(())
}

#[tokio::test]
async fn a_flood_of_subprotocols_is_refused_with_400() -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let (gateway, _echo) = gateway_with_echo(docroot.path(), &[]).await?;
    let offered: Vec<String> = (0..40).map(|idx| format!("p{idx}")).collect();
    let response = gateway
        .handshake(
            &HandshakeRequest::new("/echo").header("Sec-WebSocket-Protocol", &offered.join(",")),
        )
        .await?;
    assert_eq!(response.status, 400, "{response}");
    assert!(
        response.body_text().contains("too many subprotocols"),
        "{response}"
    );
    Ok(())
}

#[tokio::test]
async fn oversized_request_heads_get_431() -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let (gateway, _echo) = gateway_with_echo(docroot.path(), &[]).await?;
    // One header line over the 8 KiB default, inside the 32 KiB head.
    let cookie = format!("a={}", "x".repeat(9 * 1024));
    let response = gateway
        .handshake(&HandshakeRequest::new("/echo").header("Cookie", &cookie))
        .await?;
    assert_eq!(response.status, 431, "{response}");
    // A head over the 32 KiB default, which hyper refuses before any handler.
    let mut request = HandshakeRequest::new("/echo");
    for header_idx in 0..10 {
        request = request.header(&format!("X-Filler-{header_idx}"), &"y".repeat(4000));
    }
    let response = gateway.handshake(&request).await?;
    assert_eq!(response.status, 431, "{response}");
    // The limits are flags.
    let roomy = Gateway::start(
        docroot.path(),
        &[
            "--max-header-size",
            "16384",
            "--max-request-header-size",
            "65536",
        ],
    )
    .await?;
    let response = roomy
        .handshake(&HandshakeRequest::new("/echo").header("Cookie", &cookie))
        .await?;
    assert_eq!(response.status, 101, "{response}");
    Ok(())
}

#[tokio::test]
async fn hosts_outside_the_allowlist_get_421() -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let htdocs = tempfile::tempdir()?;
    std::fs::write(htdocs.path().join("index.html"), "hello")?;
    let htdocs_arg = htdocs.path().display().to_string();
    let (gateway, _echo) = gateway_with_echo(
        docroot.path(),
        &["--allowed-host", "localhost", "--htdocs", &htdocs_arg],
    )
    .await?;
    let port = gateway.addr().port();
    let rebinding = format!("evil.example:{port}");
    let response = gateway
        .handshake(&HandshakeRequest::new("/echo").header("Host", &rebinding))
        .await?;
    assert_eq!(response.status, 421, "{response}");
    let page = gateway
        .request(format!(
            "GET / HTTP/1.1\r\nHost: {rebinding}\r\nConnection: close\r\n\r\n"
        ))
        .await?;
    assert_eq!(page.status, 421, "static files too: {page}");
    let allowed = format!("LocalHost:{port}");
    let response = gateway
        .handshake(&HandshakeRequest::new("/echo").header("Host", &allowed))
        .await?;
    assert_eq!(response.status, 101, "{response}");
    let page = gateway
        .request(format!(
            "GET / HTTP/1.1\r\nHost: {allowed}\r\nConnection: close\r\n\r\n"
        ))
        .await?;
    assert_eq!(page.status, 200, "{page}");
    Ok(())
}

#[tokio::test]
async fn bad_paths_and_addresses_stop_start_up_with_status_2() -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let missing = docroot.path().join("no-such-htdocs");
    let file = docroot.path().join("a-file");
    std::fs::write(&file, "not a directory")?;
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--htdocs".into(), missing.display().to_string()],
            "is not a directory",
        ),
        (
            vec!["--htdocs".into(), file.display().to_string()],
            "is not a directory",
        ),
        (vec!["--listen".into(), "8080".into()], "expected ip:port"),
        (
            vec!["--listen".into(), "localhost:8080".into()],
            "host names are not resolved",
        ),
    ];
    for (args, expected) in cases {
        let output = tokio::process::Command::new(bin_path("wsgate")?)
            .args(["--listen", "127.0.0.1:0", "-R"])
            .arg(docroot.path())
            .args(&args)
            .output();
        let output =
            wait::within("wsgate to refuse its arguments", EXIT_DEADLINE, output).await??;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    Ok(())
}

/// Reads from `stream` until it ends; an error if it stays open past the deadline.
async fn expect_closed(stream: &mut TcpStream, what: &str) -> anyhow::Result<()> {
    let mut buffer = [0u8; 1024];
    wait::within(what, EVENT_DEADLINE, async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await
}

#[tokio::test]
async fn connections_over_the_per_address_limit_are_closed() -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let (gateway, _echo) =
        gateway_with_echo(docroot.path(), &["--max-connections-per-ip", "2"]).await?;
    let first = TcpStream::connect(gateway.addr()).await?;
    let _second = TcpStream::connect(gateway.addr()).await?;
    let mut third = TcpStream::connect(gateway.addr()).await?;
    expect_closed(
        &mut third,
        "the third connection from one address to be closed",
    )
    .await?;
    // Once one leaves, the address has room again.
    drop(first);
    wait::until("room for a handshake again", EVENT_DEADLINE, || async {
        let response = gateway.handshake(&HandshakeRequest::new("/echo")).await;
        Ok(response.ok().filter(|response| response.status == 101))
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_client_that_sends_no_request_is_closed_after_the_header_timeout() -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let (gateway, _echo) = gateway_with_echo(docroot.path(), &["--header-timeout", "1"]).await?;
    let mut silent = TcpStream::connect(gateway.addr()).await?;
    expect_closed(&mut silent, "a silent connection to be closed").await?;
    let mut slow = TcpStream::connect(gateway.addr()).await?;
    slow.write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\n").await?;
    expect_closed(&mut slow, "a half-sent request head to be closed").await
}

#[tokio::test]
async fn idle_connections_make_room_when_descriptors_run_out() -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let _echo = FakeBackend::start(
        &docroot.path().join("echo"),
        FakeBehaviour::Echo(AcceptReply::default()),
    )?;
    // 64 descriptors in all; idle connections may stay for ten minutes and
    // one address may open any number, so only shedding can make room.
    let mut command = Command::new("prlimit");
    command
        .arg("--nofile=64:64")
        .arg("--")
        .arg(bin_path("wsgate")?)
        .args(["--listen", "127.0.0.1:0", "-R"])
        .arg(docroot.path())
        .args(["--header-timeout", "600", "--max-connections-per-ip", "0"]);
    let (mut gateway, addr) =
        start_announcing("wsgate (64 descriptors)", command, Logging::Debug).await?;
    let mut idle = Vec::new();
    for _ in 0..100 {
        idle.push(TcpStream::connect(addr).await?);
    }
    let mut client = harness::Client::connect(addr, "/echo", &[]).await?;
    let message = harness::Message::text("still served");
    assert_eq!(client.round_trip(message.clone()).await?, message);
    gateway.check_running()?;
    assert!(
        gateway.stderr_text().contains("n_shed"),
        "the gateway says it shed connections:\n{}",
        gateway.stderr_text()
    );
    drop(idle);
    Ok(())
}

#[tokio::test]
async fn an_accept_with_too_many_headers_is_a_502() -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let headers: BTreeMap<String, String> = (0..40)
        .map(|idx| (format!("x-extra-{idx}"), "1".to_owned()))
        .collect();
    let _chatty = FakeBackend::start(
        &docroot.path().join("chatty"),
        FakeBehaviour::Echo(AcceptReply {
            headers,
            ..AcceptReply::default()
        }),
    )?;
    let gateway = Gateway::start(docroot.path(), &[]).await?;
    let response = gateway.handshake(&HandshakeRequest::new("/chatty")).await?;
    assert_eq!(response.status, 502, "{response}");
    assert!(response.body_text().contains("40 headers"), "{response}");
    Ok(())
}

/// A backend's smaller message limit in ACCEPT is the client's limit; a
/// larger one does not raise the gateway's.
#[tokio::test]
async fn an_accept_may_lower_the_message_limit() -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let _strict = FakeBackend::start(
        &docroot.path().join("strict"),
        FakeBehaviour::Echo(AcceptReply {
            max_message_size: Some(100),
            ..AcceptReply::default()
        }),
    )?;
    let _lax = FakeBackend::start(
        &docroot.path().join("lax"),
        FakeBehaviour::Echo(AcceptReply {
            max_message_size: Some(1 << 20),
            ..AcceptReply::default()
        }),
    )?;
    let gateway = Gateway::start(docroot.path(), &["--max-message-size", "1000"]).await?;
    let mut strict = gateway.connect("/strict").await?;
    let fits = Message::text("x".repeat(100));
    assert_eq!(strict.round_trip(fits.clone()).await?, fits);
    strict.send(Message::text("x".repeat(101))).await?;
    strict.expect_close_code(CloseCode::Size).await?;
    let mut lax = gateway.connect("/lax").await?;
    let fits = Message::text("x".repeat(1000));
    assert_eq!(lax.round_trip(fits.clone()).await?, fits);
    lax.send(Message::text("x".repeat(1001))).await?;
    lax.expect_close_code(CloseCode::Size).await?;
    Ok(())
}

#[tokio::test]
async fn a_long_reject_reason_is_cut() -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let _rejecting = FakeBackend::start(
        &docroot.path().join("no"),
        FakeBehaviour::Reject(RejectReply {
            status: 403,
            reason: "é".repeat(2000),
        }),
    )?;
    let gateway = Gateway::start(docroot.path(), &[]).await?;
    let response = gateway.handshake(&HandshakeRequest::new("/no")).await?;
    assert_eq!(response.status, 403, "{response}");
    let body = response.body_text();
    let reason = body.trim_end();
    assert_eq!(
        reason.len(),
        512,
        "cut to 512 bytes on a character boundary"
    );
    assert!(reason.chars().all(|c| c == 'é'));
    Ok(())
}
