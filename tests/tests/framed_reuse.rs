//! Link reuse in framed mode (docs/link-protocol.md, *Link reuse in framed
//! mode*): a backend offers `reuse_framed` in ACCEPT, and once each side
//! sent and received one CLOSE for a relayed client, the gateway keeps the
//! link idle and sends the next client's OPEN on it. Clients must not
//! notice: whoever closes first, each gets its messages and its close code,
//! and a link whose client ended without a close is not reused.

use std::collections::BTreeMap;
use std::os::fd::AsFd;

use anyhow::{bail, ensure};
use futures_util::StreamExt;
use harness::{
    AcceptReply, Backend, CloseCode, EVENT_DEADLINE, FakeBackend, FakeBehaviour, Gateway,
    LinkEvent, Message, Mode, OpenMeta, Record, wait, wire,
};
use link::{LINK_VERSION, LinkMode, fd_pass};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;

/// What the backend logs when an OPEN arrives on a link it offered for reuse.
const REUSED: &str = "OPEN on a reused link";

/// What the gateway logs when a relayed client's link went back to its pool.
const KEPT: &str = "link kept for the next client";

/// Waits until `text` appears at least `n` times in what `log` returns.
async fn logged_at_least(
    what: &str,
    n: usize,
    log: impl Fn() -> String,
    text: &str,
) -> anyhow::Result<usize> {
    wait::until(&format!("{n} × {what}"), EVENT_DEADLINE, || {
        let seen = log().matches(text).count();
        async move { Ok((seen >= n).then_some(seen)) }
    })
    .await
}

/// A relaying gateway in front of `program` on `name`. The backend waits 4 s
/// for a reused link's next OPEN, so the gateway keeps it for 2 s: long
/// enough for the next client even on a starved machine.
async fn start(
    program: &str,
    name: &str,
    extra: &[&str],
) -> anyhow::Result<(tempfile::TempDir, Backend, Gateway)> {
    let docroot = tempfile::tempdir()?;
    let args: Vec<&str> = ["--open-timeout", "4"]
        .into_iter()
        .chain(extra.iter().copied())
        .collect();
    let backend = Backend::start(program, docroot.path(), name, &args).await?;
    let gateway = Gateway::start(docroot.path(), Mode::Relay.gateway_args()).await?;
    Ok((docroot, backend, gateway))
}

#[tokio::test]
async fn consecutive_relayed_clients_that_close_first_reuse_one_link() -> anyhow::Result<()> {
    let (_docroot, echo, gateway) = start("websocket_echo", "echo", &[]).await?;
    for client_idx in 0..5 {
        let mut client = gateway.connect("/echo").await?;
        for round in 0..3 {
            let message = Message::text(format!("client {client_idx} round {round}"));
            assert_eq!(client.round_trip(message.clone()).await?, message);
        }
        let reason = format!("bye {client_idx}");
        let reply = client.close(CloseCode::Normal, &reason).await?;
        let reply = reply.expect("the gateway answers the close");
        assert_eq!(reply.code, CloseCode::Normal);
        assert_eq!(reply.reason.as_str(), reason);
        // The link is back in the pool before the next client connects.
        logged_at_least("links kept", client_idx + 1, || gateway.stderr_text(), KEPT).await?;
    }
    // Every client after the first came on the link of the one before.
    logged_at_least("reused OPENs", 4, || echo.stderr_text(), REUSED).await?;
    assert_eq!(echo.stderr_text().matches(REUSED).count(), 4);
    Ok(())
}

#[tokio::test]
async fn a_backend_that_closes_first_gets_its_link_back() -> anyhow::Result<()> {
    // Each client's program writes two lines and exits: the backend closes
    // with 1000 after them.
    let (_docroot, exec, gateway) = start(
        "websocket_exec",
        "exec",
        &["--", "sh", "-c", "echo \"$QUERY_STRING\"; echo done"],
    )
    .await?;
    for client_idx in 0..3 {
        let mut client = gateway
            .connect(&format!("/exec?client{client_idx}"))
            .await?;
        assert_eq!(client.recv_text().await?, format!("client{client_idx}"));
        assert_eq!(client.recv_text().await?, "done");
        client.expect_close_code(CloseCode::Normal).await?;
        logged_at_least("links kept", client_idx + 1, || gateway.stderr_text(), KEPT).await?;
    }
    logged_at_least("reused OPENs", 2, || exec.stderr_text(), REUSED).await?;
    // And the backend completed each link's CLOSEs before taking it back.
    logged_at_least("links taken back", 3, || exec.stderr_text(), KEPT).await?;
    Ok(())
}

#[tokio::test]
async fn a_client_that_vanishes_still_frees_its_link_for_the_next() -> anyhow::Result<()> {
    let (_docroot, echo, gateway) = start("websocket_echo", "echo", &[]).await?;
    let mut first = gateway.connect("/echo").await?;
    first.expect_echo("before the reset").await?;
    // No close frame: the TCP connection just ends. The gateway still
    // tells the backend with a CLOSE, which the backend answers.
    drop(first);
    logged_at_least("links kept", 1, || gateway.stderr_text(), KEPT).await?;
    let mut second = gateway.connect("/echo").await?;
    second.expect_echo("on the same link").await?;
    logged_at_least("reused OPENs", 1, || echo.stderr_text(), REUSED).await?;
    second.close(CloseCode::Normal, "").await?;
    Ok(())
}

#[tokio::test]
async fn a_client_its_backend_closed_with_1011_frees_its_link_too() -> anyhow::Result<()> {
    // The program exits 3: the backend closes the client with 1011, a
    // CLOSE of its own, and the link serves the next client.
    let (_docroot, exec, gateway) = start(
        "websocket_exec",
        "exec",
        &["--", "sh", "-c", "read -r line; echo \"$line\"; exit 3"],
    )
    .await?;
    for (client_idx, line) in ["one", "two"].into_iter().enumerate() {
        let mut client = gateway.connect("/exec").await?;
        client.send(Message::text(line)).await?;
        assert_eq!(client.recv_text().await?, line);
        client.expect_close_code(CloseCode::Error).await?;
        logged_at_least("links kept", client_idx + 1, || gateway.stderr_text(), KEPT).await?;
    }
    let reused = logged_at_least("reused OPENs", 1, || exec.stderr_text(), REUSED).await?;
    ensure!(reused == 1, "{reused} reused OPENs, expected 1");
    Ok(())
}

#[tokio::test]
async fn on_the_wire_each_client_ends_with_two_closes_and_the_next_opens_on_the_same_link()
-> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let mut backend = FakeBackend::start(
        &docroot.path().join("echo"),
        FakeBehaviour::Echo(AcceptReply {
            reuse_ms: Some(60_000),
            reuse_framed: true,
            ..AcceptReply::default()
        }),
    )?;
    let gateway = Gateway::start(docroot.path(), Mode::Relay.gateway_args()).await?;
    for client_idx in 0..3 {
        let mut client = gateway.connect("/echo").await?;
        let text = format!("client {client_idx}");
        client.expect_echo(&text).await?;
        let reason = format!("bye {client_idx}");
        client.close(CloseCode::Normal, &reason).await?;
        logged_at_least("links kept", client_idx + 1, || gateway.stderr_text(), KEPT).await?;
        // What the backend got for this client, all on the first link.
        let mut records = Vec::new();
        while records.len() < 3 {
            match backend.next_event().await? {
                LinkEvent::Connected { link_idx } => ensure!(link_idx == 0, "link {link_idx}"),
                LinkEvent::Received { link_idx, record } => {
                    ensure!(link_idx == 0, "{record:?} on link {link_idx}");
                    records.push(record);
                }
                other => anyhow::bail!("{other:?}"),
            }
        }
        ensure!(matches!(records[0], Record::Open(_)), "{records:?}");
        ensure!(records[1] == Record::Text(text.into()), "{records:?}");
        let Record::Close(Some(close)) = &records[2] else {
            anyhow::bail!("{records:?}");
        };
        ensure!(close.code == 1000 && close.reason == reason, "{close:?}");
    }
    ensure!(backend.n_links() == 1, "{} links", backend.n_links());
    Ok(())
}

/// An OPEN for `exec` from a gateway that is this test.
fn open_for_exec(mode: LinkMode, id: u64) -> OpenMeta {
    OpenMeta {
        version: LINK_VERSION,
        mode,
        id,
        name: "exec".to_owned(),
        path: "/exec".to_owned(),
        query: String::new(),
        protocols: Vec::new(),
        peer: "127.0.0.1:1".to_owned(),
        headers: BTreeMap::new(),
        limits: None,
        tls: None,
        identity: None,
        deflate: None,
        carrier: None,
    }
}

/// The gateway may send the next client right behind its answer to the
/// backend's CLOSE, even as an OPEN_HANDOFF whose descriptor a buffered read
/// of that CLOSE would swallow: the backend reads exactly up to the CLOSE.
/// The test plays the gateway on the link, writing both at once.
#[tokio::test]
async fn a_client_sent_right_behind_the_gateways_close_keeps_its_socket() -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let _exec = Backend::start(
        "websocket_exec",
        docroot.path(),
        "exec",
        &["--open-timeout", "4", "--", "sh", "-c", "echo hi"],
    )
    .await?;
    let mut link = link::LinkStream::connect(&docroot.path().join("exec")).await?;
    let open = open_for_exec(LinkMode::Framed, 1);
    wire::write_record(&mut link, &Record::Open(open.to_payload())).await?;
    let Some(Record::Accept(accept)) = wire::read_record(&mut link).await? else {
        bail!("expected ACCEPT");
    };
    let accept = AcceptReply::from_payload(&accept)?;
    ensure!(
        accept.reuse_framed && accept.open_handoff && accept.reuse_ms.is_some(),
        "{accept:?}"
    );
    // The program's line, then the backend's CLOSE: it closes first.
    ensure!(wire::read_record(&mut link).await? == Some(Record::Text("hi".into())));
    let close = wire::read_record(&mut link).await?;
    ensure!(
        matches!(&close, Some(Record::Close(Some(info))) if info.code == 1000),
        "{close:?}"
    );
    // The next client: a TCP connection whose server end goes over the link.
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let client = TcpStream::connect(listener.local_addr()?).await?;
    let (server_end, _) = listener.accept().await?;
    let next = open_for_exec(LinkMode::Direct, 2);
    wire::write_record(&mut link, &Record::Close(None)).await?;
    fd_pass::send_open_handoff(&mut link, server_end.as_fd(), &next.to_payload(), b"").await?;
    drop(server_end);
    // It is served: its own program's line and close, on its own socket.
    let mut ws = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
    let first = wait::within("the next client's line", EVENT_DEADLINE, ws.next()).await?;
    ensure!(
        matches!(&first, Some(Ok(Message::Text(text))) if text.as_str() == "hi"),
        "{first:?}"
    );
    let closing = wait::within("the next client's close", EVENT_DEADLINE, ws.next()).await?;
    ensure!(
        matches!(&closing, Some(Ok(Message::Close(Some(frame)))) if frame.code == CloseCode::Normal),
        "{closing:?}"
    );
    Ok(())
}
