//! Plain HTTP requests to backends (`--http GLOB`): a GET or POST for a
//! name, or a path below it, reaches the backend as one REQUEST record and
//! its RESPONSE comes back; a body over `--max-request-body` is 413, a
//! backend that never answers 504, a socket that refuses 502, as does a
//! RESPONSE that breaks the protocol; the allow/deny
//! globs and the Origin rule apply; a name without `--http` still answers 426.
//! Each runs relayed, with `--direct '*'` (HTTP still goes over a link) and on TLS.
//!
//! The backends are in-process [`FakeBackend`]s, so each test also sees the
//! REQUEST record the gateway wrote, and the real `websocket_echo`, whose
//! library answers requests it has no handler for with 404.

use harness::{
    AcceptReply, Backend, FakeBackend, FakeBehaviour, Gateway, HttpResponse, LinkEvent, Message,
    Mode, Record, all_modes, wire,
};

/// Writes `request` to the gateway (over TLS in [`Mode::Tls`]) and reads the response.
async fn send(gateway: &Gateway, mode: Mode, request: &[u8]) -> anyhow::Result<HttpResponse> {
    gateway.request_in(mode, request).await
}

/// The `Host` header value the gateway is reached by in `mode`.
fn host(gateway: &Gateway, mode: Mode) -> String {
    match mode {
        Mode::Tls => gateway
            .tls_addr()
            .map(|addr| addr.to_string())
            .unwrap_or_default(),
        Mode::Relay | Mode::Direct => gateway.addr().to_string(),
    }
}

/// The REQUEST the fake backend received next: its JSON head and body.
async fn expect_request(backend: &mut FakeBackend) -> anyhow::Result<(serde_json::Value, Vec<u8>)> {
    match backend.next_record_or_end().await? {
        LinkEvent::Received {
            record: Record::Request(payload),
            ..
        } => wire::split_head(&payload),
        other => anyhow::bail!("expected a REQUEST record, got {other:?}"),
    }
}

fn echo() -> FakeBehaviour {
    FakeBehaviour::Echo(AcceptReply::default())
}

async fn get_and_post_reach_the_backend_and_its_answer_comes_back(
    mode: Mode,
) -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let mut api = FakeBackend::start(&docroot.path().join("api"), echo())?;
    let gateway = Gateway::start(docroot.path(), &mode.with_args(&["--http", "api"])).await?;
    let host = host(&gateway, mode);

    let get = format!(
        "GET /api/items?x=1&y=%20 HTTP/1.1\r\nHost: {host}\r\nX-Custom: one\r\nX-Custom: two\r\nConnection: close\r\n\r\n"
    );
    let response = send(&gateway, mode, get.as_bytes()).await?;
    assert_eq!(response.status, 200, "{response}");
    assert_eq!(response.header("x-method"), Some("GET"));
    assert_eq!(response.header("x-path"), Some("/api/items"));
    assert_eq!(response.header("x-query"), Some("x=1&y=%20"));
    assert_eq!(response.header("content-length"), Some("0"));
    assert!(response.body.is_empty());
    let (head, body) = expect_request(&mut api).await?;
    assert!(body.is_empty());
    assert_eq!(head["version"], 1);
    assert_eq!(head["name"], "api");
    assert_eq!(head["method"], "GET");
    assert_eq!(head["path"], "/api/items");
    assert_eq!(head["query"], "x=1&y=%20");
    assert!(
        head["peer"]
            .as_str()
            .is_some_and(|peer| peer.starts_with("127.0.0.1:")),
        "{head}"
    );
    let headers: Vec<(String, String)> = serde_json::from_value(head["headers"].clone())?;
    let custom: Vec<&str> = headers
        .iter()
        .filter(|(name, _)| name == "x-custom")
        .map(|(_, value)| value.as_str())
        .collect();
    assert_eq!(custom, ["one", "two"], "repeated headers keep their order");
    assert!(
        headers.contains(&("host".to_owned(), host.clone())),
        "{headers:?}"
    );
    assert!(
        !headers.iter().any(|(name, _)| name == "connection"),
        "hop-by-hop headers stay in the gateway: {headers:?}"
    );
    assert_eq!(head.get("tls").is_some(), mode == Mode::Tls, "{head}");
    assert!(matches!(
        api.next_record_or_end().await?,
        LinkEvent::Closed { .. }
    ));

    // A POST with a binary body, NUL and invalid UTF-8 included, to the name itself.
    let body: Vec<u8> = [&b"{\"a\":\x00\xff}"[..], &[0u8; 1000][..]].concat();
    let mut post = format!(
        "POST /api HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    post.extend_from_slice(&body);
    let response = send(&gateway, mode, &post).await?;
    assert_eq!(response.status, 200, "{response}");
    assert_eq!(response.header("x-method"), Some("POST"));
    assert_eq!(response.header("x-path"), Some("/api"));
    assert_eq!(response.body, body, "the body crosses both ways intact");
    let (head, received) = expect_request(&mut api).await?;
    assert_eq!(head["method"], "POST");
    assert_eq!(received, body);

    // A chunked body is read whole and forwarded the same way.
    let chunked = format!(
        "POST /api/x HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    );
    let response = send(&gateway, mode, chunked.as_bytes()).await?;
    assert_eq!(response.status, 200, "{response}");
    assert_eq!(response.body, b"abcde");
    Ok(())
}

async fn a_body_over_the_limit_gets_413_and_never_reaches_the_backend(
    mode: Mode,
) -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let api = FakeBackend::start(&docroot.path().join("api"), echo())?;
    let args = mode.with_args(&["--http", "api", "--max-request-body", "16"]);
    let gateway = Gateway::start(docroot.path(), &args).await?;
    let host = host(&gateway, mode);
    let post = |body: &str| {
        format!(
            "POST /api HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let response = send(&gateway, mode, post(&"x".repeat(17)).as_bytes()).await?;
    assert_eq!(response.status, 413, "{response}");
    assert!(response.body_text().contains("16 bytes"), "{response}");
    // Without a Content-Length the limit holds as the body arrives.
    let chunked = format!(
        "POST /api HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n10\r\n{}\r\n1\r\nx\r\n0\r\n\r\n",
        "y".repeat(16)
    );
    let response = send(&gateway, mode, chunked.as_bytes()).await?;
    assert_eq!(response.status, 413, "{response}");
    assert_eq!(api.n_links(), 0, "a refused request opened a link");
    let response = send(&gateway, mode, post(&"x".repeat(16)).as_bytes()).await?;
    assert_eq!(
        response.status, 200,
        "exactly the limit is fine: {response}"
    );
    assert_eq!(response.body, "x".repeat(16).as_bytes());
    Ok(())
}

async fn a_body_that_does_not_arrive_in_time_gets_408(mode: Mode) -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let api = FakeBackend::start(&docroot.path().join("api"), echo())?;
    let args = mode.with_args(&["--http", "api", "--header-timeout", "1"]);
    let gateway = Gateway::start(docroot.path(), &args).await?;
    let host = host(&gateway, mode);
    // Ten bytes announced, two sent: the gateway stops waiting after --header-timeout.
    let partial = format!("POST /api HTTP/1.1\r\nHost: {host}\r\nContent-Length: 10\r\n\r\nab");
    let response = send(&gateway, mode, partial.as_bytes()).await?;
    assert_eq!(response.status, 408, "{response}");
    assert_eq!(api.n_links(), 0, "an incomplete request opened a link");
    Ok(())
}

async fn a_backend_that_never_answers_gets_504_and_one_that_is_gone_502(
    mode: Mode,
) -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let _silent = FakeBackend::start(&docroot.path().join("silent"), FakeBehaviour::Silent)?;
    // A socket file nobody listens on any more: connecting is refused.
    drop(std::os::unix::net::UnixListener::bind(
        docroot.path().join("gone"),
    )?);
    let args = mode.with_args(&["--http", "*", "--accept-timeout", "1"]);
    let gateway = Gateway::start(docroot.path(), &args).await?;
    let host = host(&gateway, mode);
    let get =
        |path: &str| format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let response = send(&gateway, mode, get("/silent/status").as_bytes()).await?;
    assert_eq!(response.status, 504, "{response}");
    let response = send(&gateway, mode, get("/gone").as_bytes()).await?;
    assert_eq!(response.status, 502, "{response}");
    Ok(())
}

async fn a_name_without_http_still_answers_426_and_the_rules_still_apply(
    mode: Mode,
) -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let _api = FakeBackend::start(&docroot.path().join("api"), echo())?;
    let _chat = FakeBackend::start(&docroot.path().join("chat"), echo())?;
    let _secret = FakeBackend::start(&docroot.path().join("secret"), echo())?;
    let args = mode.with_args(&["--http", "api", "--http", "secret", "--deny", "secret"]);
    let gateway = Gateway::start(docroot.path(), &args).await?;
    let host = host(&gateway, mode);
    let get = |path: &str, extra: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n")
    };
    let response = send(&gateway, mode, get("/chat", "").as_bytes()).await?;
    assert_eq!(response.status, 426, "{response}");
    assert_eq!(response.header("upgrade"), Some("websocket"));
    // Below a name without --http: not a backend request (no static files here).
    let response = send(&gateway, mode, get("/chat/x", "").as_bytes()).await?;
    assert_eq!(response.status, 404, "{response}");
    let response = send(&gateway, mode, get("/secret", "").as_bytes()).await?;
    assert_eq!(response.status, 403, "a denied name: {response}");
    let evil = get("/api", "Origin: https://evil.example\r\n");
    let response = send(&gateway, mode, evil.as_bytes()).await?;
    assert_eq!(response.status, 403, "a foreign Origin: {response}");
    let scheme = if mode == Mode::Tls { "https" } else { "http" };
    let same = get("/api", &format!("Origin: {scheme}://{host}\r\n"));
    let response = send(&gateway, mode, same.as_bytes()).await?;
    assert_eq!(response.status, 200, "the same origin: {response}");
    Ok(())
}

/// A backend that answers each REQUEST with the RESPONSE payload `payload`
/// (written by hand), on `socket_path`, until the task is aborted.
fn answering_backend(
    socket_path: &std::path::Path,
    payload: Vec<u8>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::UnixListener::bind(socket_path)?;
    Ok(tokio::spawn(async move {
        while let Ok((mut link, _)) = listener.accept().await {
            if let Ok(Some((0x05, _))) = wire::read_raw(&mut link).await {
                let _ = tokio::io::AsyncWriteExt::write_all(
                    &mut link,
                    &wire::record_bytes(0x06, &payload),
                )
                .await;
            }
        }
    }))
}

async fn a_response_that_breaks_the_protocol_gets_502(mode: Mode) -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let head = |status: u16, headers: serde_json::Value| {
        wire::join_head(
            &serde_json::json!({"status": status, "headers": headers}),
            b"body",
        )
    };
    let many: Vec<(String, String)> = (0..65)
        .map(|idx| (format!("x-{idx}"), "v".into()))
        .collect();
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "fine",
            head(
                299,
                serde_json::json!([["Connection", "close"], ["X-Ok", "1"]]),
            ),
            299,
        ),
        (
            "redirect",
            head(302, serde_json::json!([["Location", "/elsewhere"]])),
            302,
        ),
        ("out-of-range", head(600, serde_json::json!([])), 502),
        ("informational", head(101, serde_json::json!([])), 502),
        (
            "too-many-headers",
            head(200, serde_json::to_value(many)?),
            502,
        ),
        (
            "not-json",
            wire::join_head(&serde_json::json!("x"), b""),
            502,
        ),
        ("short", vec![0, 0, 0, 99, b'{'], 502),
    ];
    let mut tasks = Vec::new();
    for (name, payload, _) in &cases {
        tasks.push(answering_backend(
            &docroot.path().join(name),
            payload.clone(),
        )?);
    }
    let gateway = Gateway::start(docroot.path(), &mode.with_args(&["--http", "*"])).await?;
    let host = host(&gateway, mode);
    for (name, _, status) in &cases {
        let get = format!("GET /{name} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let response = send(&gateway, mode, get.as_bytes()).await?;
        assert_eq!(response.status, *status, "{name}: {response}");
        if *status == 299 {
            assert_eq!(response.body, b"body");
            assert_eq!(response.header("x-ok"), Some("1"));
            assert_ne!(
                response.header("connection"),
                Some("keep-alive"),
                "{response:?}"
            );
        }
    }
    for task in tasks {
        task.abort();
    }
    Ok(())
}

async fn one_backend_serves_websocket_clients_and_http_requests(mode: Mode) -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    // The real echo server has no request handler: the library answers 404.
    let _echo = Backend::start("websocket_echo", docroot.path(), "echo", &[]).await?;
    let gateway = Gateway::start(docroot.path(), &mode.with_args(&["--http", "echo"])).await?;
    let host = host(&gateway, mode);
    let get = format!("GET /echo/anything HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let response = send(&gateway, mode, get.as_bytes()).await?;
    assert_eq!(response.status, 404, "{response}");
    assert!(
        response.body_text().contains("answers no HTTP requests"),
        "{response}"
    );
    let mut client = gateway.connect("/echo").await?;
    let reply = client
        .round_trip(Message::text("still a WebSocket"))
        .await?;
    assert_eq!(reply, Message::text("still a WebSocket"));
    Ok(())
}

all_modes!(
    get_and_post_reach_the_backend_and_its_answer_comes_back,
    a_body_over_the_limit_gets_413_and_never_reaches_the_backend,
    a_backend_that_never_answers_gets_504_and_one_that_is_gone_502,
    a_name_without_http_still_answers_426_and_the_rules_still_apply,
    one_backend_serves_websocket_clients_and_http_requests,
    a_response_that_breaks_the_protocol_gets_502,
    a_body_that_does_not_arrive_in_time_gets_408,
);
