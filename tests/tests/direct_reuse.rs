//! Direct mode's link reuse (docs/link-protocol.md, *Link reuse*): a backend
//! offers its link for the next client in ACCEPT, the gateway keeps it idle
//! and sends the next OPEN on it. Clients must not notice: each still gets
//! its own socket handed over, a refusal still reaches its client as the
//! backend's status, a backend that dies with idle links open is `502` and
//! then served again once restarted, and the gateway ends up holding no
//! descriptor once the idle links expire. A backend that also offers
//! `open_handoff` (websocket_echo) gets the next clients' OPEN and socket
//! at once (OPEN_HANDOFF), unless a client asks for a subprotocol.

use std::path::Path;

use anyhow::{Context, ensure};
use harness::http::HandshakeRequest;
use harness::{Backend, EVENT_DEADLINE, Gateway, Message, Mode, wait};

/// What the backend logs when an OPEN, or an OPEN_HANDOFF, arrives on a
/// link it offered for reuse.
const REUSED: &str = "on a reused link";

/// What the backend logs for a client handed over with its OPEN.
const OPEN_HANDOFF: &str = "OPEN_HANDOFF on a reused link";

fn n_descriptors(pid: u32) -> anyhow::Result<usize> {
    let dir = Path::new("/proc").join(pid.to_string()).join("fd");
    Ok(std::fs::read_dir(&dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .count())
}

/// Waits until the gateway holds at most `limit` descriptors.
async fn gateway_back_to(gateway: &Gateway, limit: usize) -> anyhow::Result<usize> {
    let pid = gateway.pid();
    wait::until(
        &format!("the gateway back at {limit} descriptors"),
        EVENT_DEADLINE,
        || async move {
            let now = n_descriptors(pid)?;
            Ok((now <= limit).then_some(now))
        },
    )
    .await
}

/// Waits until the gateway logged at least `n` hand-overs: each client's
/// link is then back in its pool, ready for the next client (the client
/// itself may be served by the backend before that).
async fn handed_over_at_least(gateway: &Gateway, n: usize) -> anyhow::Result<usize> {
    wait::until(
        &format!("{n} clients handed over"),
        EVENT_DEADLINE,
        || async {
            let seen = gateway.stderr_text().matches("client handed over").count();
            Ok((seen >= n).then_some(seen))
        },
    )
    .await
}

/// Waits until `backend` logged at least `n` OPENs on reused links.
async fn reused_at_least(backend: &Backend, n: usize) -> anyhow::Result<usize> {
    wait::until(
        &format!("{n} OPENs on reused links"),
        EVENT_DEADLINE,
        || async {
            let seen = backend.stderr_text().matches(REUSED).count();
            Ok((seen >= n).then_some(seen))
        },
    )
    .await
}

/// `websocket_echo` and a gateway that serves it in direct mode. The gateway
/// keeps an idle link for half the backend's wait: 2 s here, long enough
/// for the next client even on a starved machine.
async fn start_echo_and_direct_gateway() -> anyhow::Result<(tempfile::TempDir, Backend, Gateway)> {
    let docroot = tempfile::tempdir()?;
    let echo = Backend::start(
        "websocket_echo",
        docroot.path(),
        "echo",
        &["--open-timeout", "4"],
    )
    .await?;
    let gateway = Gateway::start(docroot.path(), Mode::Direct.gateway_args()).await?;
    Ok((docroot, echo, gateway))
}

#[tokio::test]
async fn consecutive_direct_clients_reuse_one_link_which_expires() -> anyhow::Result<()> {
    let (_docroot, echo, gateway) = start_echo_and_direct_gateway().await?;
    // The gateway's own descriptors once its listener and runtime exist, with
    // no client and no link.
    let before = n_descriptors(gateway.pid())?;
    let mut clients = Vec::new();
    for client_idx in 0..5 {
        let mut client = gateway.connect("/echo").await?;
        let message = Message::text(format!("client {client_idx}"));
        assert_eq!(client.round_trip(message.clone()).await?, message);
        clients.push(client);
        handed_over_at_least(&gateway, client_idx + 1).await?;
    }
    // Each client after the first came over the link of the one before,
    // with its OPEN: the echo offers OPEN_HANDOFF and checks no client.
    reused_at_least(&echo, 4).await?;
    assert_eq!(echo.stderr_text().matches(OPEN_HANDOFF).count(), 4);
    // Every client has its own socket, the links carry nothing more.
    for client in &mut clients {
        let message = Message::binary(vec![1, 2, 3]);
        assert_eq!(client.round_trip(message.clone()).await?, message);
    }
    // The idle link expires and is closed: nothing is left per client or per link.
    gateway_back_to(&gateway, before).await?;
    // After expiry a new link is connected, and works.
    let mut late = gateway.connect("/echo").await?;
    assert_eq!(
        late.round_trip(Message::text("late")).await?,
        Message::text("late")
    );
    Ok(())
}

#[tokio::test]
async fn a_refusal_on_a_reused_link_reaches_its_client() -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let (broker, _list) =
        Backend::start_token_list_broker(docroot.path(), r#"{"abc1": true, "abc2": true}"#).await?;
    let gateway = Gateway::start(docroot.path(), Mode::Direct.gateway_args()).await?;
    let mut first = gateway.connect("/broker?RegisterToken=abc1").await?;
    first.send(Message::text("Echo:ready")).await?;
    assert_eq!(first.recv().await?, Message::text("Echo:ready"));
    handed_over_at_least(&gateway, 1).await?;
    // The next OPEN goes on the first client's link; the broker refuses it there.
    let response = gateway.handshake(&HandshakeRequest::new("/broker")).await?;
    ensure!(response.status == 403, "{response}");
    ensure!(
        response
            .body_text()
            .contains("a registered token is required"),
        "{response}"
    );
    reused_at_least(&broker, 1).await?;
    // A refused client costs the link; the next client gets a new one and is served.
    let mut second = gateway.connect("/broker?RegisterToken=abc2").await?;
    second.send(Message::text("Echo:again")).await?;
    assert_eq!(second.recv().await?, Message::text("Echo:again"));
    Ok(())
}

#[tokio::test]
async fn a_backend_that_dies_with_idle_links_is_502_then_served_again() -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let mut echo = Backend::start("websocket_echo", docroot.path(), "echo", &[]).await?;
    let gateway = Gateway::start(docroot.path(), Mode::Direct.gateway_args()).await?;
    let before = n_descriptors(gateway.pid())?;
    // Clients at once: several links, each offered for reuse and kept idle.
    let (first, second, third) = tokio::try_join!(
        gateway.connect("/echo"),
        gateway.connect("/echo"),
        gateway.connect("/echo"),
    )?;
    let mut clients = [first, second, third];
    for client in &mut clients {
        assert_eq!(
            client.round_trip(Message::text("hi")).await?,
            Message::text("hi")
        );
    }
    // SIGKILL: the socket file stays, nobody listens on it, the idle links end.
    echo.kill()?;
    let response = gateway.handshake(&HandshakeRequest::new("/echo")).await?;
    ensure!(response.status == 502, "{response}");
    // The dead backend's links are all closed.
    gateway_back_to(&gateway, before).await?;
    // A new backend on the same name: served at once, over new links.
    std::fs::remove_file(docroot.path().join("echo"))?;
    let _echo = Backend::start("websocket_echo", docroot.path(), "echo", &[]).await?;
    for _ in 0..3 {
        let mut client = gateway.connect("/echo").await?;
        assert_eq!(
            client.round_trip(Message::text("again")).await?,
            Message::text("again")
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_client_asking_for_a_subprotocol_is_asked_about_not_handed_over_unasked()
-> anyhow::Result<()> {
    let (_docroot, echo, gateway) = start_echo_and_direct_gateway().await?;
    let mut first = gateway.connect("/echo").await?;
    assert_eq!(
        first.round_trip(Message::text("first")).await?,
        Message::text("first")
    );
    handed_over_at_least(&gateway, 1).await?;
    // The backend may choose a subprotocol: only its ACCEPT can say which,
    // so this client's OPEN goes on the idle link as a plain OPEN.
    let response = gateway
        .handshake(&HandshakeRequest::new("/echo").header("Sec-WebSocket-Protocol", "chat"))
        .await?;
    ensure!(response.status == 101, "got {}", response.status);
    reused_at_least(&echo, 1).await?;
    assert_eq!(
        echo.stderr_text().matches("OPEN on a reused link").count(),
        1
    );
    assert_eq!(echo.stderr_text().matches(OPEN_HANDOFF).count(), 0);
    Ok(())
}
