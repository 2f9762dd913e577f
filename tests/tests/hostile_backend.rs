//! A backend that breaks the link protocol, byte by byte (its encoder is the
//! harness's own, not the `link` crate's): before ACCEPT every violation is a
//! `502` for the client, after ACCEPT a close `1011`, and other clients of
//! the gateway never notice.

use harness::hostile_backend::{ACCEPT, HostileBackend, Script, record_bytes};
use harness::{CloseCode, Gateway, HandshakeRequest, Message};

/// The violations after ACCEPT, each as the bytes that follow it, and whether
/// the backend hangs up after writing them.
fn after_accept() -> Vec<(&'static str, Vec<u8>, bool)> {
    let mut cases = vec![
        ("unknown record kind", record_bytes(0x7f, b"??"), false),
        (
            "record over the maximum size",
            {
                // The header announces 2048 bytes; the gateway runs with 1024.
                let mut bytes = vec![0x11];
                bytes.extend_from_slice(&2048u32.to_be_bytes());
                bytes
            },
            false,
        ),
        (
            "TEXT that is not UTF-8",
            record_bytes(0x10, &[0xc3, 0x28]),
            false,
        ),
        ("CLOSE of one byte", record_bytes(0x12, &[0x03]), false),
        (
            "CLOSE reason that is not UTF-8",
            record_bytes(0x12, &[0x03, 0xe8, 0xff]),
            false,
        ),
        ("OPEN from the backend", record_bytes(0x01, b"{}"), false),
        ("a second ACCEPT", ACCEPT.to_vec(), false),
        (
            "record cut short by the end of the link",
            record_bytes(0x10, b"hello")[..7].to_vec(),
            true,
        ),
        ("end of the link without CLOSE", Vec::new(), true),
    ];
    for (_, bytes, _) in &mut cases {
        let mut with_accept = ACCEPT.to_vec();
        with_accept.append(bytes);
        *bytes = with_accept;
    }
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn violations_after_accept_close_the_client_with_1011() -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let cases = after_accept();
    let mut backends = Vec::new();
    for (case_idx, (_, bytes, hang_up)) in cases.iter().enumerate() {
        let script = if *hang_up {
            Script::write_and_hang_up(bytes.clone())
        } else {
            Script::write(bytes.clone())
        };
        backends.push(HostileBackend::start(
            &docroot.path().join(format!("bad{case_idx}")),
            script,
        )?);
    }
    let _good = harness::FakeBackend::start(
        &docroot.path().join("good"),
        harness::FakeBehaviour::Echo(harness::AcceptReply::default()),
    )?;
    let gateway = Gateway::start(docroot.path(), &["--max-message-size", "1024"]).await?;
    let mut bystander = gateway.connect("/good").await?;
    for (case_idx, (what, _, _)) in cases.iter().enumerate() {
        let mut client = gateway.connect(&format!("/bad{case_idx}")).await?;
        let frame = client.expect_close().await?;
        let frame = frame.unwrap_or_else(|| panic!("{what}: a close frame with a code"));
        assert_eq!(frame.code, CloseCode::Error, "{what}: {frame:?}");
        assert_eq!(frame.reason.as_str(), "backend failed", "{what}");
        // The OPEN reached the backend and was well formed.
        let received = backends[case_idx].received(0);
        assert_eq!(
            received.first().map(|(kind, _)| *kind),
            Some(0x01),
            "{what}"
        );
    }
    let message = Message::text("still here");
    assert_eq!(bystander.round_trip(message.clone()).await?, message);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn violations_before_accept_are_a_502() -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let cases: Vec<(&str, Script)> = vec![
        (
            "TEXT before ACCEPT",
            Script::write(record_bytes(0x10, b"early")),
        ),
        (
            "unknown kind instead of an answer",
            Script::write(record_bytes(0x7f, b"")),
        ),
        (
            "ACCEPT that is not JSON",
            Script::write(record_bytes(0x02, b"{nope")),
        ),
        (
            "REJECT that is not JSON",
            Script::write(record_bytes(0x03, b"403")),
        ),
        (
            "REJECT with a status outside 400-599",
            Script::write(record_bytes(
                0x03,
                br#"{"status":302,"reason":"elsewhere"}"#,
            )),
        ),
        (
            "ACCEPT choosing a subprotocol nobody offered",
            Script::write(record_bytes(0x02, br#"{"protocol":"mine"}"#)),
        ),
        (
            "hang-up instead of an answer",
            Script::write_and_hang_up(Vec::new()),
        ),
        (
            "answer cut short",
            Script::write_and_hang_up(record_bytes(0x02, br#"{"headers":{}}"#)[..6].to_vec()),
        ),
    ];
    let mut backends = Vec::new();
    for (case_idx, (_, script)) in cases.iter().enumerate() {
        backends.push(HostileBackend::start(
            &docroot.path().join(format!("bad{case_idx}")),
            script.clone(),
        )?);
    }
    let gateway = Gateway::start(docroot.path(), &[]).await?;
    for (case_idx, (what, _)) in cases.iter().enumerate() {
        let response = gateway
            .handshake(&HandshakeRequest::new(&format!("/bad{case_idx}")))
            .await?;
        assert_eq!(response.status, 502, "{what}: {response}");
        assert!(
            response
                .body_text()
                .contains(&format!("backend \"bad{case_idx}\" failed")),
            "{what}: {response}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_after_accept_in_direct_mode_fails_the_hand_over_with_1011() -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let mut bytes = ACCEPT.to_vec();
    bytes.extend(record_bytes(0x10, b"too early"));
    let backend = HostileBackend::start(&docroot.path().join("eager"), Script::write(bytes))?;
    let gateway = Gateway::start(docroot.path(), &["--direct", "*"]).await?;
    let mut client = gateway.connect("/eager").await?;
    let frame = client
        .expect_close()
        .await?
        .expect("a close frame with a code");
    assert_eq!(frame.code, CloseCode::Error);
    assert_eq!(frame.reason.as_str(), "backend hand-over failed");
    // The OPEN asked for direct mode; no HANDOFF followed the bad ACCEPT.
    let received = backend.received(0);
    let (kind, open) = received.first().expect("the OPEN arrived");
    assert_eq!(*kind, 0x01);
    let open: serde_json::Value = serde_json::from_slice(open)?;
    assert_eq!(open["mode"], "direct");
    assert!(received.iter().all(|(kind, _)| *kind != 0x04), "no HANDOFF");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_vanishes_gets_its_link_an_empty_or_1001_close() -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let backend = HostileBackend::start(
        &docroot.path().join("quiet"),
        Script::write(ACCEPT.to_vec()),
    )?;
    let gateway = Gateway::start(docroot.path(), &[]).await?;
    let client = gateway.connect("/quiet").await?;
    // Gone without a close frame: the TCP connection just ends.
    drop(client.into_tcp());
    let received = harness::wait::until(
        "the CLOSE record on the link",
        harness::EVENT_DEADLINE,
        || {
            let received = backend.received(0);
            async move {
                Ok(received
                    .iter()
                    .any(|(kind, _)| *kind == 0x12)
                    .then_some(received))
            }
        },
    )
    .await?;
    let (_, payload) = received
        .iter()
        .find(|(kind, _)| *kind == 0x12)
        .expect("found above");
    // docs/link-protocol.md: empty, or 1001 (1006 never goes on the wire).
    assert!(
        payload.is_empty() || payload.starts_with(&1001u16.to_be_bytes()),
        "CLOSE payload {payload:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_greeting_written_with_the_accept_reaches_the_client_at_once() -> anyhow::Result<()> {
    // ACCEPT and a TEXT in one write: the gateway has both in its buffer when
    // it sends the 101, and the backend then writes nothing more.
    let docroot = tempfile::tempdir()?;
    let mut bytes = ACCEPT.to_vec();
    bytes.extend(record_bytes(0x10, b"welcome"));
    bytes.extend(record_bytes(0x11, &[0, 1, 2]));
    let _backend = HostileBackend::start(&docroot.path().join("greeter"), Script::write(bytes))?;
    let gateway = Gateway::start(docroot.path(), &[]).await?;
    let mut client = gateway.connect("/greeter").await?;
    assert_eq!(client.recv().await?, Message::text("welcome"));
    assert_eq!(client.recv().await?, Message::binary(vec![0u8, 1, 2]));
    Ok(())
}

/// A backend that offers its link for the next client (`reuse_framed`) but
/// never answers the gateway's CLOSE: the client still gets its close
/// reply, the link is not kept (it is dropped after the close timeout), and
/// the next client gets a link of its own.
#[tokio::test]
async fn a_backend_that_offers_reuse_but_never_answers_the_close_loses_its_link()
-> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let offer = br#"{"reuse_ms":60000,"reuse_framed":true}"#;
    let backend = HostileBackend::start(
        &docroot.path().join("mute"),
        Script::write(record_bytes(0x02, offer)),
    )?;
    let gateway = Gateway::start(docroot.path(), &["--shutdown-timeout", "1"]).await?;
    let mut first = gateway.connect("/mute").await?;
    let reply = first.close(CloseCode::Normal, "bye").await?;
    assert_eq!(reply.map(|frame| frame.code), Some(CloseCode::Normal));
    // The gateway told the backend, which said nothing back.
    harness::wait::until(
        "the CLOSE record on the link",
        harness::EVENT_DEADLINE,
        || {
            let closed = backend.received(0).iter().any(|(kind, _)| *kind == 0x12);
            async move { Ok(closed.then_some(())) }
        },
    )
    .await?;
    let mut second = gateway.connect("/mute").await?;
    second.close(CloseCode::Normal, "").await?;
    assert_eq!(
        backend.n_links(),
        2,
        "the second client got a link of its own"
    );
    assert_eq!(
        backend.received(1).first().map(|(kind, _)| *kind),
        Some(0x01),
        "it starts with its OPEN"
    );
    assert!(
        !gateway
            .stderr_text()
            .contains("link kept for the next client"),
        "no link was kept"
    );
    Ok(())
}
