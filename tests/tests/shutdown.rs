//! Graceful shutdown of the gateway: on SIGTERM or SIGINT every client gets
//! close 1001, every backend link is closed, and the process exits 0 within a
//! bounded time, leaving the backends running.

use harness::{
    AcceptReply, Backend, CloseCode, EXIT_DEADLINE, FakeBackend, FakeBehaviour, Gateway, LinkEvent,
    Message, Record,
};
use nix::sys::signal::Signal;

#[tokio::test]
async fn stop_signal_closes_every_client_with_1001_and_exits_zero() -> anyhow::Result<()> {
    for signal in [Signal::SIGTERM, Signal::SIGINT] {
        let docroot = tempfile::tempdir()?;
        let mut echo = Backend::start("websocket_echo", docroot.path(), "echo", &[]).await?;
        let mut recorder = FakeBackend::start(
            &docroot.path().join("recorder"),
            FakeBehaviour::Echo(AcceptReply::default()),
        )?;
        let mut gateway = Gateway::start(docroot.path(), &[]).await?;
        let mut clients = vec![
            gateway.connect("/echo").await?,
            gateway.connect("/echo").await?,
            gateway.connect("/recorder").await?,
        ];
        for (client_idx, client) in clients.iter_mut().enumerate() {
            let message = Message::text(format!("client {client_idx}"));
            assert_eq!(client.round_trip(message.clone()).await?, message);
        }

        gateway.signal(signal)?;

        for client in &mut clients {
            let frame = client
                .expect_close()
                .await
                .map_err(|error| error.context(signal))?
                .unwrap_or_else(|| panic!("{signal}: a close frame with a code"));
            assert_eq!(frame.code, CloseCode::Away, "{signal}");
            assert_eq!(frame.reason.as_str(), "gateway shutting down", "{signal}");
        }
        let status = gateway.wait_exit(EXIT_DEADLINE).await?;
        assert_eq!(status.code(), Some(0), "{signal}: exit status {status}");
        // The recorder's link: its client's messages, then CLOSE 1001 with
        // the gateway's reason (docs/link-protocol.md), then the link ends.
        recorder.expect_open().await?;
        loop {
            match recorder.next_record_or_end().await? {
                LinkEvent::Received {
                    record: Record::Text(_),
                    ..
                } => continue,
                LinkEvent::Received {
                    record: Record::Close(Some(info)),
                    ..
                } => {
                    assert_eq!(info.code, 1001, "{signal}");
                    assert_eq!(info.reason, "gateway shutting down", "{signal}");
                    break;
                }
                other => panic!("{signal}: expected CLOSE 1001, got {other:?}"),
            }
        }
        match recorder.next_record_or_end().await? {
            LinkEvent::Closed { .. } => {}
            other => panic!("{signal}: expected the link to end after CLOSE, got {other:?}"),
        }
        // Backends are separate processes and outlive the gateway.
        echo.check_running()?;
    }
    Ok(())
}

#[tokio::test]
async fn idle_gateway_exits_zero_on_sigterm() -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let mut gateway = Gateway::start(docroot.path(), &[]).await?;
    gateway.sigterm()?;
    let status = gateway.wait_exit(EXIT_DEADLINE).await?;
    assert_eq!(status.code(), Some(0), "exit status {status}");
    Ok(())
}
