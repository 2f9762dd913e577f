//! The metrics endpoints (`--metrics-listen`) of the gateway and of a
//! backend, scraped while clients come and go: connections open go up and
//! down, messages and bytes are counted each way, close codes, upgrades by
//! status (101, 404, 403, 503), the OPEN→ACCEPT histogram, the backend's
//! sessions and refused links, in relay, direct and TLS mode; authorizer
//! answers and requests forwarded with `--http`; links to backends opened
//! afresh or reused, and the idle ones. And the
//! metrics are served on their own listener only, never on the public one.
//!
//! Counters change a moment after what a client sees (a relay ends after
//! its close handshake), so every check waits for the expected value under
//! a deadline; nothing waits for a fixed time.

use std::net::SocketAddr;

use anyhow::{Context, ensure};
use harness::http::HandshakeRequest;
use harness::metrics::{Scrape, scrape};
use harness::{
    Authorizer, AuthorizerReply, Backend, CloseCode, EVENT_DEADLINE, Gateway, Message, Mode,
    both_modes, tls_mode, wait,
};
use tempfile::TempDir;

both_modes!(
    gateway_and_backend_count_a_client_from_connect_to_close,
    a_client_over_the_backend_limit_is_counted_on_both_sides,
);
tls_mode!(gateway_and_backend_count_a_client_from_connect_to_close);

/// Waits until the samples `name` with `labels` at `addr` add up to `expected`.
async fn expect_sum(
    addr: SocketAddr,
    name: &str,
    labels: &[(&str, &str)],
    expected: f64,
) -> anyhow::Result<Scrape> {
    let what = format!("{name} {labels:?} to be {expected} at {addr}");
    let found = wait::until(&what, EVENT_DEADLINE, || async move {
        let scraped = scrape(addr).await?;
        Ok((scraped.sum(name, labels) == expected).then_some(scraped))
    })
    .await;
    match found {
        Ok(scraped) => Ok(scraped),
        Err(error) => {
            let last = scrape(addr).await.map(|scraped| scraped.text);
            Err(error.context(format!("the last scrape: {last:#?}")))
        }
    }
}

/// The gateway's `mode` and `tls` labels for a client in `mode`.
fn client_labels(mode: Mode) -> (&'static str, &'static str) {
    match mode {
        Mode::Relay => ("relay", "false"),
        Mode::Direct => ("direct", "false"),
        Mode::Tls => ("relay", "true"),
    }
}

async fn gateway_and_backend_count_a_client_from_connect_to_close(
    mode: Mode,
) -> anyhow::Result<()> {
    let docroot = TempDir::new()?;
    let echo = Backend::start_with_metrics("websocket_echo", docroot.path(), "echo", &[]).await?;
    let gateway = Gateway::start_with_metrics(docroot.path(), mode.gateway_args()).await?;
    let gateway_metrics = gateway.metrics_addr().context("gateway metrics")?;
    let echo_metrics = echo.metrics_addr().context("echo metrics")?;
    let (mode_label, tls_label) = client_labels(mode);
    let labels = [("name", "echo"), ("mode", mode_label), ("tls", tls_label)];
    let session_mode = if mode == Mode::Direct {
        "direct"
    } else {
        "relay"
    };

    let before = gateway.scrape().await?;
    ensure!(
        before.content_type.starts_with("text/plain; version=0.0.4"),
        "content type {:?}",
        before.content_type
    );
    ensure!(before.sum("wsgate_connections_open", &[]) == 0.0);
    ensure!(before.value("process_open_fds", &[])? > 0.0);
    ensure!(before.value("process_max_fds", &[])? >= before.value("process_open_fds", &[])?);
    let echo_before = echo.scrape().await?;
    ensure!(echo_before.sum("wsgate_backend_sessions_open", &[]) == 0.0);
    ensure!(echo_before.value("process_open_fds", &[])? > 0.0);

    let mut client = gateway.connect("/echo").await?;
    for text in ["one", "two", "three"] {
        let echoed = client.round_trip(Message::text(text)).await?;
        ensure!(echoed == Message::text(text), "echo of {text}: {echoed:?}");
    }
    // The backend sees the session and its messages whatever the mode.
    expect_sum(
        echo_metrics,
        "wsgate_backend_messages_received_total",
        &[],
        3.0,
    )
    .await?;
    expect_sum(echo_metrics, "wsgate_backend_messages_sent_total", &[], 3.0).await?;
    expect_sum(
        echo_metrics,
        "wsgate_backend_message_received_bytes_total",
        &[],
        11.0,
    )
    .await?;
    expect_sum(
        echo_metrics,
        "wsgate_backend_sessions_open",
        &[("mode", session_mode)],
        1.0,
    )
    .await?;
    expect_sum(
        echo_metrics,
        "wsgate_backend_sessions_total",
        &[("mode", session_mode)],
        1.0,
    )
    .await?;

    expect_sum(
        gateway_metrics,
        "wsgate_upgrades_total",
        &[("status", "101")],
        1.0,
    )
    .await?;
    expect_sum(gateway_metrics, "wsgate_connections_total", &labels, 1.0).await?;
    expect_sum(
        gateway_metrics,
        "wsgate_backend_accept_seconds_count",
        &[("name", "echo")],
        1.0,
    )
    .await?;
    let relayed = mode != Mode::Direct;
    let (n_open, n_messages, n_bytes) = if relayed {
        (1.0, 3.0, 11.0)
    } else {
        (0.0, 0.0, 0.0)
    };
    expect_sum(gateway_metrics, "wsgate_connections_open", &labels, n_open).await?;
    for direction in ["to_backend", "to_client"] {
        let traffic = [("name", "echo"), ("direction", direction)];
        expect_sum(
            gateway_metrics,
            "wsgate_messages_total",
            &traffic,
            n_messages,
        )
        .await?;
        expect_sum(
            gateway_metrics,
            "wsgate_message_bytes_total",
            &traffic,
            n_bytes,
        )
        .await?;
    }
    if mode == Mode::Tls {
        expect_sum(
            gateway_metrics,
            "wsgate_tls_handshakes_total",
            &[("outcome", "ok")],
            1.0,
        )
        .await?;
    }

    let reply = client.close(CloseCode::Normal, "bye").await?;
    ensure!(
        reply.as_ref().map(|frame| frame.code) == Some(CloseCode::Normal),
        "close reply {reply:?}"
    );
    expect_sum(echo_metrics, "wsgate_backend_sessions_open", &[], 0.0).await?;
    expect_sum(gateway_metrics, "wsgate_connections_open", &[], 0.0).await?;
    if relayed {
        for direction in ["from_client", "to_client"] {
            let close = [("direction", direction), ("code", "1000")];
            expect_sum(gateway_metrics, "wsgate_close_codes_total", &close, 1.0).await?;
        }
    }

    // No socket for the name: 404, counted by status.
    let response = gateway.handshake(&HandshakeRequest::new("/nope")).await?;
    ensure!(response.status == 404, "{response}");
    expect_sum(
        gateway_metrics,
        "wsgate_upgrades_total",
        &[("status", "404")],
        1.0,
    )
    .await?;
    let after = gateway.scrape().await?;
    ensure!(
        !after.text.contains("name=\"nope\""),
        "a name without a socket has no series:\n{}",
        after.text
    );
    Ok(())
}

async fn a_client_over_the_backend_limit_is_counted_on_both_sides(
    mode: Mode,
) -> anyhow::Result<()> {
    let docroot = TempDir::new()?;
    let echo =
        Backend::start_with_metrics("websocket_echo", docroot.path(), "echo", &["-m", "1"]).await?;
    let gateway = Gateway::start_with_metrics(docroot.path(), mode.gateway_args()).await?;
    let echo_metrics = echo.metrics_addr().context("echo metrics")?;
    let gateway_metrics = gateway.metrics_addr().context("gateway metrics")?;
    let mut first = gateway.connect("/echo").await?;
    first.round_trip(Message::text("in")).await?;
    let mut second = gateway.connect("/echo").await?;
    second.expect_close_code(CloseCode::Again).await?;
    expect_sum(
        echo_metrics,
        "wsgate_backend_links_refused_total",
        &[("reason", "client_limit")],
        1.0,
    )
    .await?;
    expect_sum(echo_metrics, "wsgate_backend_sessions_total", &[], 1.0).await?;
    if mode == Mode::Relay {
        // The backend's CLOSE reached the client through the relay.
        let close = [("direction", "to_client"), ("code", "1013")];
        expect_sum(gateway_metrics, "wsgate_close_codes_total", &close, 1.0).await?;
        expect_sum(gateway_metrics, "wsgate_connections_open", &[], 1.0).await?;
    }
    // Both clients got their 101: the refusal came after.
    expect_sum(
        gateway_metrics,
        "wsgate_upgrades_total",
        &[("status", "101")],
        2.0,
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_on_their_own_listener_only() -> anyhow::Result<()> {
    let docroot = TempDir::new()?;
    let _echo = Backend::start("websocket_echo", docroot.path(), "echo", &[]).await?;
    let _secret = Backend::start("websocket_echo", docroot.path(), "secret", &[]).await?;
    let gateway = Gateway::start_with_metrics(docroot.path(), &["--deny", "secret"]).await?;
    let metrics_addr = gateway.metrics_addr().context("metrics address")?;
    ensure!(metrics_addr != gateway.addr());

    // The public listener knows nothing of /metrics.
    let public = gateway.get("/metrics").await?;
    ensure!(public.status == 404, "{public}");
    ensure!(!public.body_text().contains("wsgate_"), "{public}");

    // The metrics listener serves /metrics and nothing else.
    let request = |head: &str| {
        format!("{head} HTTP/1.1\r\nHost: {metrics_addr}\r\nConnection: close\r\n\r\n")
    };
    let other = harness::http::request(metrics_addr, request("GET /echo").as_bytes()).await?;
    ensure!(other.status == 404, "{other}");
    let post = harness::http::request(metrics_addr, request("POST /metrics").as_bytes()).await?;
    ensure!(post.status == 405, "{post}");
    let head_size = "x".repeat(16 * 1024);
    let huge =
        format!("GET /metrics HTTP/1.1\r\nHost: {metrics_addr}\r\nX-Big: {head_size}\r\n\r\n");
    let huge = harness::http::request(metrics_addr, huge.as_bytes()).await?;
    ensure!(huge.status == 431, "{huge}");

    // A denied name is refused with 403 and gets no series of its own.
    let denied = gateway.handshake(&HandshakeRequest::new("/secret")).await?;
    ensure!(denied.status == 403, "{denied}");
    let scraped = expect_sum(
        metrics_addr,
        "wsgate_upgrades_total",
        &[("status", "403")],
        1.0,
    )
    .await?;
    ensure!(!scraped.text.contains("\"secret\""), "{}", scraped.text);

    // Without the flag there is no metrics listener at all.
    let plain = Gateway::start(docroot.path(), &[]).await?;
    ensure!(plain.metrics_addr().is_none());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_serves_its_eviction_counter_from_the_start() -> anyhow::Result<()> {
    let docroot = TempDir::new()?;
    let chat = Backend::start_with_metrics("websocket_chat", docroot.path(), "chat", &[]).await?;
    let scraped = chat.scrape().await?;
    ensure!(
        scraped.value("wsgate_backend_slow_client_evictions_total", &[])? == 0.0,
        "{}",
        scraped.text
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorizer_answers_and_forwarded_requests_are_counted() -> anyhow::Result<()> {
    let docroot = TempDir::new()?;
    let _echo = Backend::start("websocket_echo", docroot.path(), "echo", &[]).await?;
    let authorizer =
        Authorizer::start(
            |question| match question["query"]["answer"].as_str().unwrap_or("200") {
                "200" => AuthorizerReply::ok(),
                "401" => AuthorizerReply::Answer(401, String::new()),
                _ => AuthorizerReply::Answer(500, String::new()),
            },
        )
        .await?;
    let url = authorizer.url();
    let gateway =
        Gateway::start_with_metrics(docroot.path(), &["--authorizer", &url, "--http", "echo"])
            .await?;
    let metrics_addr = gateway.metrics_addr().context("metrics address")?;
    for (answer, status) in [("200", 101), ("401", 401), ("500", 503)] {
        let path = format!("/echo?answer={answer}");
        let response = gateway.handshake(&HandshakeRequest::new(&path)).await?;
        ensure!(response.status == status, "{answer}: {response}");
    }
    for (outcome, count) in [("allowed", 1.0), ("refused", 1.0), ("failed", 1.0)] {
        let outcome = [("outcome", outcome)];
        expect_sum(
            metrics_addr,
            "wsgate_authorizer_answers_total",
            &outcome,
            count,
        )
        .await?;
    }
    expect_sum(metrics_addr, "wsgate_authorizer_seconds_count", &[], 3.0).await?;
    expect_sum(
        metrics_addr,
        "wsgate_upgrades_total",
        &[("status", "503")],
        1.0,
    )
    .await?;

    // A plain request for an --http name: the echo server has no request
    // handler, so the backend answers 404 itself.
    let response = gateway.get("/echo/anything").await?;
    ensure!(response.status == 404, "{response}");
    let labels = [("name", "echo"), ("status", "404")];
    expect_sum(metrics_addr, "wsgate_http_requests_total", &labels, 1.0).await?;
    Ok(())
}

/// Link reuse is visible: consecutive relayed clients of one backend go on
/// one link (the first connected, the others reused), which is idle between
/// them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_links_are_counted_and_idle_ones_shown() -> anyhow::Result<()> {
    let docroot = TempDir::new()?;
    // The gateway keeps an idle link for half the backend's 4 s.
    let _echo = Backend::start(
        "websocket_echo",
        docroot.path(),
        "echo",
        &["--open-timeout", "4"],
    )
    .await?;
    let gateway = Gateway::start_with_metrics(docroot.path(), &[]).await?;
    let metrics_addr = gateway.metrics_addr().context("metrics address")?;
    let opens = "wsgate_backend_link_opens_total";
    let idle = "wsgate_backend_links_idle";
    ensure!(scrape(metrics_addr).await?.value(idle, &[])? == 0.0);
    for client_idx in 0..3 {
        let mut client = gateway.connect("/echo").await?;
        client.expect_echo("hello").await?;
        client.close(CloseCode::Normal, "").await?;
        // Back in the pool before the next client comes.
        expect_sum(metrics_addr, idle, &[], 1.0).await?;
        let reused = f64::from(client_idx);
        expect_sum(metrics_addr, opens, &[("link", "reused")], reused).await?;
    }
    let scraped = expect_sum(metrics_addr, opens, &[("link", "new")], 1.0).await?;
    ensure!(
        scraped.value(opens, &[("link", "reused")])? == 2.0,
        "{}",
        scraped.text
    );
    Ok(())
}
