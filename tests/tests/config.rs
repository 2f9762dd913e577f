//! Settings that change the gateway's behaviour on the wire: the TOML file
//! given with `--config` (flags override it) and keepalive pings.

use harness::{Backend, CloseCode, Gateway, HandshakeRequest, Message, Mode, both_modes};

#[tokio::test]
async fn config_file_settings_apply_and_flags_override_them() -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let _echo = Backend::start("websocket_echo", docroot.path(), "echo", &[]).await?;
    let _secret = Backend::start("websocket_echo", docroot.path(), "secret", &[]).await?;
    let config_path = docroot.path().join("wsgate.toml");
    std::fs::write(
        &config_path,
        "max_message_size = 1024\ndeny = [\"secret*\"]\n",
    )?;
    let config_arg = config_path.display().to_string();

    let from_file = Gateway::start(docroot.path(), &["--config", &config_arg]).await?;
    let response = from_file
        .handshake(&HandshakeRequest::new("/secret"))
        .await?;
    assert_eq!(response.status, 403, "deny from the file: {response}");
    let mut client = from_file.connect("/echo").await?;
    client.send(Message::binary(vec![0u8; 2048])).await?;
    client.expect_close_code(CloseCode::Size).await?;

    let overridden = Gateway::start(
        docroot.path(),
        &["--config", &config_arg, "--max-message-size", "4096"],
    )
    .await?;
    let mut client = overridden.connect("/echo").await?;
    let message = Message::binary(vec![1u8; 2048]);
    assert_eq!(client.round_trip(message.clone()).await?, message);
    Ok(())
}

// In direct mode the backend pings, with the interval the gateway passed in OPEN.
both_modes!(idle_client_gets_keepalive_pings);

async fn idle_client_gets_keepalive_pings(mode: Mode) -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let _echo = Backend::start("websocket_echo", docroot.path(), "echo", &[]).await?;
    let gateway =
        Gateway::start(docroot.path(), &mode.with_args(&["--ping-interval", "1"])).await?;
    let mut client = gateway.connect("/echo").await?;
    match client.recv_any().await? {
        Message::Ping(_) => {}
        other => panic!("expected a ping, got {other:?}"),
    }
    // tungstenite answered the ping; the session is unaffected.
    assert_eq!(
        client.round_trip(Message::text("after ping")).await?,
        Message::text("after ping")
    );
    Ok(())
}
