//! The authorizer (`--authorizer URL`, or per name glob in the TOML file):
//! what it is asked, each of its answers as the client sees it (200 with and
//! without a body, 401, 403, 500, a redirect, a body that is not JSON, a
//! timeout, a refused connection), the identity of a 200 in OPEN, and a slow
//! authorizer that holds up no one else and is let go when its client leaves.
//!
//! The authorizer is the harness's [`Authorizer`], a hyper server in the test
//! process; backends are [`FakeBackend`]s (to read OPEN) or the real
//! `websocket_echo`. Relayed, in direct mode and on TLS.

use std::sync::{Arc, Mutex};

use anyhow::Context;
use harness::authorizer::refusing_url;
use harness::tls::ClientStream;
use harness::{
    AcceptReply, Authorizer, AuthorizerReply, Backend, Client, EVENT_DEADLINE, FakeBackend,
    FakeBehaviour, Gateway, HandshakeRequest, HttpResponse, LinkEvent, Message, Mode, OpenMeta,
    Record, all_modes, wait,
};
use tokio::io::AsyncWriteExt;

/// A handshake for `path`, over TLS in [`Mode::Tls`], and its response.
async fn handshake(gateway: &Gateway, mode: Mode, path: &str) -> anyhow::Result<HttpResponse> {
    gateway
        .handshake_in(mode, &HandshakeRequest::new(path))
        .await
}

/// The answer named by the question's `answer` query parameter:
/// `200`, `200-identity` (200 with a JSON body), `200-garbage`, a status, or `hang`.
fn answer_from_query(question: &serde_json::Value) -> AuthorizerReply {
    match question["query"]["answer"].as_str().unwrap_or("200") {
        "hang" => AuthorizerReply::Hang,
        "200-identity" => {
            AuthorizerReply::Answer(200, r#"{"user":"alice","roles":["admin"]}"#.to_owned())
        }
        "200-garbage" => AuthorizerReply::Answer(200, "<html>yes</html>".to_owned()),
        status => AuthorizerReply::Answer(status.parse().unwrap_or(500), String::new()),
    }
}

async fn the_authorizer_is_asked_and_its_200_lets_the_client_in(mode: Mode) -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let _echo = Backend::start("websocket_echo", docroot.path(), "echo", &[]).await?;
    let mut authorizer = Authorizer::start(answer_from_query).await?;
    let url = authorizer.url();
    let args = mode.with_args(&["--authorizer", &url]);
    let gateway = Gateway::start(docroot.path(), &args).await?;
    let headers = [("Cookie", "sid=42")];
    let mut client = match mode {
        Mode::Tls => {
            let config = gateway.tls_client_config().context("certificate")?;
            gateway
                .connect_tls("/echo?token=a%20b&answer=200", &headers, config)
                .await?
        }
        Mode::Relay | Mode::Direct => {
            gateway
                .connect_with_headers("/echo?token=a%20b&answer=200", &headers)
                .await?
        }
    };
    assert_eq!(
        client.round_trip(Message::text("in")).await?,
        Message::text("in")
    );
    let question = authorizer.next_question().await?;
    assert_eq!(question["command"], "connect");
    assert_eq!(question["name"], "echo");
    assert_eq!(question["path"], "/echo");
    assert_eq!(
        question["query"],
        serde_json::json!({"token": "a b", "answer": "200"})
    );
    assert!(
        question["peer"]
            .as_str()
            .is_some_and(|peer| peer.starts_with("127.0.0.1:")),
        "{question}"
    );
    let headers: Vec<(String, String)> = serde_json::from_value(question["headers"].clone())?;
    assert!(
        headers.contains(&("cookie".to_owned(), "sid=42".to_owned())),
        "{headers:?}"
    );
    assert_eq!(
        question.get("tls").is_some(),
        mode == Mode::Tls,
        "{question}"
    );
    Ok(())
}

async fn the_identity_of_a_200_reaches_the_backend_in_open(mode: Mode) -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let mut backend = FakeBackend::start(
        &docroot.path().join("chat"),
        FakeBehaviour::Echo(AcceptReply::default()),
    )?;
    let authorizer = Authorizer::start(answer_from_query).await?;
    let url = authorizer.url();
    let args = mode.with_args(&["--authorizer", &url]);
    let gateway = Gateway::start(docroot.path(), &args).await?;

    let response = handshake(&gateway, mode, "/chat?answer=200-identity").await?;
    assert_eq!(response.status, 101, "{response}");
    let open = backend.expect_open().await?;
    assert_eq!(
        open.identity,
        Some(serde_json::json!({"user": "alice", "roles": ["admin"]}))
    );
    let response = handshake(&gateway, mode, "/chat?answer=200").await?;
    assert_eq!(response.status, 101, "{response}");
    // Skip what the first link carried after its OPEN (HANDOFF, CLOSE, its end).
    let open = loop {
        if let LinkEvent::Received {
            link_idx: 1,
            record: Record::Open(payload),
        } = backend.next_event().await?
        {
            break OpenMeta::from_payload(&payload)?;
        }
    };
    assert_eq!(
        open.identity, None,
        "a 200 without a body gives no identity"
    );
    Ok(())
}

async fn each_refusal_of_the_authorizer_reaches_the_client(mode: Mode) -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let backend = FakeBackend::start(
        &docroot.path().join("chat"),
        FakeBehaviour::Echo(AcceptReply::default()),
    )?;
    let authorizer = Authorizer::start(answer_from_query).await?;
    let url = authorizer.url();
    let args = mode.with_args(&["--authorizer", &url]);
    let gateway = Gateway::start(docroot.path(), &args).await?;
    // (authorizer's answer, the client's status)
    for (answer, status) in [
        ("403", 403),
        ("401", 401),
        ("404", 404),
        ("429", 429),
        ("500", 503),
        ("502", 503),
        ("302", 403),
        ("204", 403),
        ("200-garbage", 503),
    ] {
        let response = handshake(&gateway, mode, &format!("/chat?answer={answer}")).await?;
        assert_eq!(response.status, status, "authorizer {answer}: {response}");
        assert!(
            !response.body_text().trim().is_empty(),
            "{answer}: no reason"
        );
    }
    assert_eq!(backend.n_links(), 0, "a refused client reached the backend");
    Ok(())
}

async fn a_silent_or_absent_authorizer_gives_503(mode: Mode) -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let backend = FakeBackend::start(
        &docroot.path().join("chat"),
        FakeBehaviour::Echo(AcceptReply::default()),
    )?;
    let authorizer = Authorizer::start(answer_from_query).await?;
    let url = authorizer.url();
    let args = mode.with_args(&["--authorizer", &url, "--authorizer-timeout", "1"]);
    let gateway = Gateway::start(docroot.path(), &args).await?;
    let response = handshake(&gateway, mode, "/chat?answer=hang").await?;
    assert_eq!(response.status, 503, "{response}");
    assert!(
        response.body_text().contains("no answer within 1s"),
        "{response}"
    );
    // The gateway dropped its request when it gave up.
    wait::until("the held request to be dropped", EVENT_DEADLINE, || {
        let n_waiting = authorizer.n_waiting();
        async move { Ok((n_waiting == 0).then_some(())) }
    })
    .await?;

    let refusing = refusing_url().await?;
    let args = mode.with_args(&["--authorizer", &refusing]);
    let gateway = Gateway::start(docroot.path(), &args).await?;
    let response = handshake(&gateway, mode, "/chat").await?;
    assert_eq!(response.status, 503, "{response}");
    assert!(
        response.body_text().contains("cannot reach it"),
        "{response}"
    );
    assert_eq!(backend.n_links(), 0);
    Ok(())
}

async fn a_slow_authorizer_holds_up_no_one_else(mode: Mode) -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let _echo = Backend::start("websocket_echo", docroot.path(), "echo", &[]).await?;
    let _slow = FakeBackend::start(
        &docroot.path().join("slow"),
        FakeBehaviour::Echo(AcceptReply::default()),
    )?;
    let names_asked = Arc::new(Mutex::new(Vec::new()));
    let names_for_authorizer = Arc::clone(&names_asked);
    let authorizer = Authorizer::start(move |question| {
        let name = question["name"].as_str().unwrap_or_default().to_owned();
        names_for_authorizer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(name);
        AuthorizerReply::Hang
    })
    .await?;
    // Only `slow` has an authorizer (per name glob, from the file), with a
    // timeout far beyond the test's deadlines.
    let config_path = docroot.path().join("wsgate.toml");
    std::fs::write(
        &config_path,
        format!(
            "authorizer_timeout = 600\n[[authorizer]]\nnames = [\"slow\"]\nurl = \"{}\"\n",
            authorizer.url()
        ),
    )?;
    let config_arg = config_path.to_string_lossy().into_owned();
    let args = mode.with_args(&["--config", &config_arg, "--max-connections-per-ip", "0"]);
    let gateway = Gateway::start(docroot.path(), &args).await?;

    const N_SLOW: usize = 8;
    let mut slow_clients = Vec::new();
    for _ in 0..N_SLOW {
        let (addr, mut stream) = match mode {
            Mode::Tls => {
                let addr = gateway.tls_addr().context("a TLS listener")?;
                let config = gateway
                    .tls_client_config()
                    .context("a harness certificate")?;
                let tls = harness::tls::connect(addr, harness::tls::SERVER_NAME, config).await?;
                (addr, ClientStream::Tls(Box::new(tls)))
            }
            Mode::Relay | Mode::Direct => {
                let addr = gateway.addr();
                (
                    addr,
                    ClientStream::Plain(tokio::net::TcpStream::connect(addr).await?),
                )
            }
        };
        let request = HandshakeRequest::new("/slow").render(&addr.to_string());
        stream.write_all(request.as_bytes()).await?;
        slow_clients.push(stream);
    }
    wait::until(
        "every slow client at the authorizer",
        EVENT_DEADLINE,
        || {
            let n_waiting = authorizer.n_waiting();
            async move { Ok((n_waiting == N_SLOW).then_some(())) }
        },
    )
    .await?;

    // Meanwhile clients of a name without an authorizer come and go.
    for idx in 0..5 {
        let mut client: Client = gateway.connect("/echo").await?;
        let text = format!("message {idx}");
        assert_eq!(
            client.round_trip(Message::text(text.clone())).await?,
            Message::text(text)
        );
    }
    assert_eq!(
        authorizer.n_waiting(),
        N_SLOW,
        "the slow ones are still waiting"
    );
    let asked = names_asked
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    assert_eq!(asked, vec!["slow"; N_SLOW], "echo has no authorizer");

    // Clients that leave take their authorizer calls with them.
    drop(slow_clients);
    wait::until(
        "the slow clients' calls to be cancelled",
        EVENT_DEADLINE,
        || {
            let n_waiting = authorizer.n_waiting();
            async move { Ok((n_waiting == 0).then_some(())) }
        },
    )
    .await?;
    Ok(())
}

all_modes!(
    the_authorizer_is_asked_and_its_200_lets_the_client_in,
    the_identity_of_a_200_reaches_the_backend_in_open,
    each_refusal_of_the_authorizer_reaches_the_client,
    a_silent_or_absent_authorizer_gives_503,
    a_slow_authorizer_holds_up_no_one_else,
);
