//! Upgrades the gateway must refuse, each with its own HTTP status and a
//! one-line reason, and the valid ones it must accept: bad handshakes (400),
//! wrong versions and plain GETs (426), denied names and Origins (403), the
//! connection limit (503), a backend that never answers (504) and a backend's
//! own REJECT (its status).
//!
//! Requests are written byte for byte with [`HandshakeRequest`]; the backends
//! are in-process [`FakeBackend`]s, so each test can also check which links
//! the gateway opened.

use anyhow::Context;
use harness::http::SAMPLE_ACCEPT;
use harness::{
    AcceptReply, Backend, CloseCode, EVENT_DEADLINE, FakeBackend, FakeBehaviour, Gateway,
    HandshakeRequest, HttpResponse, LinkEvent, Message, RejectReply, wait,
};
use tempfile::TempDir;

fn echo_behaviour() -> FakeBehaviour {
    FakeBehaviour::Echo(AcceptReply::default())
}

/// A docroot with a fake echo backend on each of `names`.
fn docroot_with(names: &[&str]) -> anyhow::Result<(TempDir, Vec<FakeBackend>)> {
    let docroot = tempfile::tempdir()?;
    let backends = names
        .iter()
        .map(|name| FakeBackend::start(&docroot.path().join(name), echo_behaviour()))
        .collect::<anyhow::Result<_>>()?;
    Ok((docroot, backends))
}

/// Proves that the refused requests before it reached no backend: a valid
/// handshake to `path` then makes the backend's first and only link, and the
/// gateway connects in request order, so an earlier stray link would have
/// been accepted first.
async fn expect_only_the_sentinel_link(
    gateway: &Gateway,
    backend: &FakeBackend,
    path: &str,
) -> anyhow::Result<()> {
    let response = gateway.handshake(&HandshakeRequest::new(path)).await?;
    assert_eq!(response.status, 101, "sentinel {path}: {response}");
    wait::until("the sentinel's link", EVENT_DEADLINE, || {
        let n_links = backend.n_links();
        async move { Ok((n_links >= 1).then_some(())) }
    })
    .await?;
    assert_eq!(backend.n_links(), 1, "a refused request reached {path}");
    Ok(())
}

/// Checks that `response` is a refusal with `status` and a non-empty reason.
fn check_refusal(what: &str, response: &HttpResponse, status: u16) {
    assert_eq!(response.status, status, "{what}: got {response}");
    assert!(
        !response.body_text().trim().is_empty(),
        "{what}: the {status} response has no reason in its body"
    );
}

#[tokio::test]
async fn valid_handshake_gets_101_with_the_rfc_accept_key() -> anyhow::Result<()> {
    let (docroot, mut backends) = docroot_with(&["echo"])?;
    let gateway = Gateway::start(docroot.path(), &[]).await?;
    let response = gateway.handshake(&HandshakeRequest::new("/echo")).await?;
    assert_eq!(response.status, 101, "{response}");
    assert_eq!(response.header("sec-websocket-accept"), Some(SAMPLE_ACCEPT));
    assert!(
        response
            .header("upgrade")
            .is_some_and(|value| value.eq_ignore_ascii_case("websocket")),
        "{:?}",
        response.headers
    );
    // The backend had accepted before the 101 was written.
    backends[0].expect_open().await?;
    Ok(())
}

#[tokio::test]
async fn bad_handshakes_are_refused_with_400() -> anyhow::Result<()> {
    let (docroot, backends) = docroot_with(&["echo"])?;
    let gateway = Gateway::start(docroot.path(), &[]).await?;
    let valid = HandshakeRequest::new("/echo");
    let cases = [
        (
            "no Sec-WebSocket-Key",
            valid.clone().without("Sec-WebSocket-Key"),
        ),
        (
            "a key that is not 16 bytes of base64",
            valid.clone().header("Sec-WebSocket-Key", "c2hvcnQ="),
        ),
        (
            "a key that is not base64",
            valid
                .clone()
                .header("Sec-WebSocket-Key", "not base64 at all!!!!!!"),
        ),
        ("method POST", valid.clone().method("POST")),
        // Host is mandatory in HTTP/1.1 and in RFC 6455's handshake.
        ("no Host header", valid.clone().without_host()),
    ];
    for (what, request) in cases {
        let response = gateway.handshake(&request).await?;
        check_refusal(what, &response, 400);
    }
    expect_only_the_sentinel_link(&gateway, &backends[0], "/echo").await
}

#[tokio::test]
async fn wrong_websocket_version_is_refused_with_426_naming_version_13() -> anyhow::Result<()> {
    let (docroot, backends) = docroot_with(&["echo"])?;
    let gateway = Gateway::start(docroot.path(), &[]).await?;
    for version in ["8", "12", "14"] {
        let request = HandshakeRequest::new("/echo").header("Sec-WebSocket-Version", version);
        let response = gateway.handshake(&request).await?;
        let what = format!("Sec-WebSocket-Version: {version}");
        check_refusal(&what, &response, 426);
        // RFC 6455 section 4.2.2: the refusal names the versions the server speaks.
        assert_eq!(
            response.header("sec-websocket-version"),
            Some("13"),
            "{what}: {:?}",
            response.headers
        );
    }
    expect_only_the_sentinel_link(&gateway, &backends[0], "/echo").await
}

#[tokio::test]
async fn plain_get_on_a_socket_name_is_refused_with_426() -> anyhow::Result<()> {
    let (docroot, backends) = docroot_with(&["echo", "group/item"])?;
    let gateway = Gateway::start(docroot.path(), &[]).await?;
    for path in ["/echo", "/group/item"] {
        let response = gateway.get(path).await?;
        check_refusal(&format!("GET {path}"), &response, 426);
    }
    expect_only_the_sentinel_link(&gateway, &backends[0], "/echo").await?;
    expect_only_the_sentinel_link(&gateway, &backends[1], "/group/item").await
}

#[tokio::test]
async fn names_outside_allow_or_inside_deny_are_refused_with_403() -> anyhow::Result<()> {
    let (docroot, backends) = docroot_with(&["echo", "secret", "secret-too", "other"])?;
    let gateway = Gateway::start(
        docroot.path(),
        &["--allow", "echo", "--allow", "secret*", "--deny", "secret*"],
    )
    .await?;
    // (path, expected status)
    let cases = [
        ("/secret", 403),
        ("/secret-too", 403),
        ("/other", 403),
        ("/echo", 101),
    ];
    for (path, status) in cases {
        let response = gateway.handshake(&HandshakeRequest::new(path)).await?;
        if status == 101 {
            assert_eq!(response.status, 101, "{path}: {response}");
        } else {
            check_refusal(path, &response, status);
        }
    }
    let n_links: Vec<usize> = backends.iter().map(FakeBackend::n_links).collect();
    assert_eq!(
        n_links,
        [1, 0, 0, 0],
        "links per backend (echo, secret, secret-too, other)"
    );
    Ok(())
}

#[tokio::test]
async fn origin_policy_refuses_foreign_origins_with_403() -> anyhow::Result<()> {
    let (docroot, _backends) = docroot_with(&["echo"])?;
    let default_policy = Gateway::start(docroot.path(), &[]).await?;
    let listed = Gateway::start(docroot.path(), &["--origin", "http://trusted.example"]).await?;
    let anything = Gateway::start(docroot.path(), &["--origin", "*"]).await?;
    let same_host = format!("http://{}", default_policy.addr());
    // (gateway, what, Origin header or None, expected status)
    let cases: [(&Gateway, &str, Option<&str>, u16); 8] = [
        (&default_policy, "no Origin", None, 101),
        (&default_policy, "same-host Origin", Some(&same_host), 101),
        (
            &default_policy,
            "foreign Origin",
            Some("http://evil.example"),
            403,
        ),
        (&default_policy, "Origin null", Some("null"), 403),
        (
            &listed,
            "listed Origin",
            Some("http://trusted.example"),
            101,
        ),
        (&listed, "unlisted Origin", Some("http://evil.example"), 403),
        (
            &anything,
            "any Origin with *",
            Some("http://evil.example"),
            101,
        ),
        (&anything, "no Origin with *", None, 101),
    ];
    for (gateway, what, origin, status) in cases {
        let mut request = HandshakeRequest::new("/echo");
        if let Some(origin) = origin {
            request = request.header("Origin", origin);
        }
        let response = gateway.handshake(&request).await?;
        if status == 101 {
            assert_eq!(response.status, 101, "{what}: {response}");
        } else {
            check_refusal(what, &response, status);
        }
    }
    Ok(())
}

#[tokio::test]
async fn clients_over_the_connection_limit_are_refused_with_503() -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let _echo = Backend::start("websocket_echo", docroot.path(), "echo", &[]).await?;
    let gateway = Gateway::start(docroot.path(), &["--max-connections", "1"]).await?;
    let mut first = gateway.connect("/echo").await?;
    assert_eq!(
        first.round_trip(Message::text("first")).await?,
        Message::text("first")
    );
    let response = gateway.handshake(&HandshakeRequest::new("/echo")).await?;
    check_refusal("second client with --max-connections 1", &response, 503);
    // The first client is unaffected, and its slot is free again once it left.
    assert_eq!(
        first.round_trip(Message::text("still here")).await?,
        Message::text("still here")
    );
    first.close(CloseCode::Normal, "bye").await?;
    let mut next = wait::until(
        "the slot of the first client to be free",
        EVENT_DEADLINE,
        || {
            let connecting = gateway.connect("/echo");
            async move { Ok(connecting.await.ok()) }
        },
    )
    .await?;
    assert_eq!(
        next.round_trip(Message::text("next")).await?,
        Message::text("next")
    );
    Ok(())
}

#[tokio::test]
async fn backend_that_never_answers_open_gets_the_client_a_504() -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let mut silent = FakeBackend::start(&docroot.path().join("hung"), FakeBehaviour::Silent)?;
    let gateway = Gateway::start(docroot.path(), &["--accept-timeout", "1"]).await?;
    // Within 3 s, under the 5 s default: the flag, not the default, ends the wait.
    let response = wait::within(
        "the 504 of a 1 s accept timeout",
        std::time::Duration::from_secs(3),
        gateway.handshake(&HandshakeRequest::new("/hung")),
    )
    .await??;
    check_refusal("backend silent after OPEN", &response, 504);
    let meta = silent
        .expect_open()
        .await
        .context("the gateway sent OPEN")?;
    assert_eq!(meta.name, "hung");
    // The gateway gave up on the link too.
    match silent.next_record_or_end().await? {
        LinkEvent::Closed { .. } => {}
        other => panic!("expected the gateway to close the link after the 504, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn backend_reject_reaches_the_client_with_its_status_and_reason() -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let cases = [
        ("private", 401, "authenticate first"),
        ("busy", 429, "too many requests, slow down"),
        ("closed", 503, "down for maintenance"),
        ("legal", 451, "unavailable for legal reasons"),
    ];
    let mut backends = cases
        .iter()
        .map(|(name, status, reason)| {
            let reply = RejectReply {
                status: *status,
                reason: (*reason).to_owned(),
            };
            FakeBackend::start(&docroot.path().join(name), FakeBehaviour::Reject(reply))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let gateway = Gateway::start(docroot.path(), &[]).await?;
    for ((name, status, reason), backend) in cases.iter().zip(&mut backends) {
        let response = gateway
            .handshake(&HandshakeRequest::new(&format!("/{name}")))
            .await?;
        assert_eq!(response.status, *status, "/{name}: {response}");
        assert!(
            response.body_text().contains(reason),
            "/{name}: the body {:?} does not carry the backend's reason {reason:?}",
            response.body_text()
        );
        backend.expect_open().await?;
    }
    Ok(())
}
