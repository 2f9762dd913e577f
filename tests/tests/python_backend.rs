//! The Python example backend (`docs/examples/echo_backend.py`) run with
//! `python3` behind the real gateway, relayed and in direct mode: proof that
//! the link protocol, and taking over a handed-over socket, are small enough
//! for a page of another language.

use std::process::Command;

use futures_util::future::try_join_all;
use harness::binaries::repo_root;
use harness::client::describe;
use harness::{Backend, CloseCode, EXIT_DEADLINE, Gateway, Message, Mode, both_modes};
use tokio_tungstenite::tungstenite::protocol::frame::coding::Data;

/// Starts the example on `<docroot>/pyecho`. python3 is required: a machine
/// without it fails here, as CI installs it.
async fn start_python_echo(docroot: &std::path::Path) -> anyhow::Result<Backend> {
    let script = repo_root().join("docs/examples/echo_backend.py");
    anyhow::ensure!(script.is_file(), "{} is missing", script.display());
    let socket_path = docroot.join("pyecho");
    let mut command = Command::new("python3");
    command.arg(&script).arg(&socket_path);
    Backend::start_command("echo_backend.py", command, &socket_path).await
}

both_modes!(
    python_example_backend_echoes_through_the_gateway,
    python_example_backend_answers_an_http_request,
    python_example_backend_serves_clients_concurrently_and_stops_on_sigterm,
);

async fn python_example_backend_answers_an_http_request(mode: Mode) -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let _python = start_python_echo(docroot.path()).await?;
    let gateway = Gateway::start(docroot.path(), &mode.with_args(&["--http", "pyecho"])).await?;
    let body = "{\"channel\": \"news\", \"content\": \"hello\"}";
    let request = format!(
        "POST /pyecho/broadcast?x=1 HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        gateway.addr(),
        body.len()
    );
    let response = gateway.request(request).await?;
    assert_eq!(response.status, 200, "{response}");
    assert_eq!(response.header("content-type"), Some("application/json"));
    let description: serde_json::Value = serde_json::from_slice(&response.body)?;
    assert_eq!(description["method"], "POST");
    assert_eq!(description["path"], "/pyecho/broadcast");
    assert_eq!(description["query"], "x=1");
    assert_eq!(description["tls"], false);
    assert_eq!(description["body"], body);
    // The same backend still serves WebSocket clients.
    let mut client = gateway.connect("/pyecho").await?;
    assert_eq!(
        client.round_trip(Message::text("ws")).await?,
        Message::text("ws")
    );
    Ok(())
}

async fn python_example_backend_echoes_through_the_gateway(mode: Mode) -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let _python = start_python_echo(docroot.path()).await?;
    let gateway = Gateway::start(docroot.path(), mode.gateway_args()).await?;
    let mut client = gateway.connect("/pyecho").await?;
    let messages = [
        Message::text("hello from rust"),
        Message::text("ünïcødé ✓"),
        Message::binary(vec![0u8, 1, 2, 253, 254, 255]),
        Message::text(""),
        Message::binary(Vec::new()),
        Message::binary(
            (0..1 << 20)
                .map(|i: u32| (i % 253) as u8)
                .collect::<Vec<u8>>(),
        ),
    ];
    for message in messages {
        let echoed = client.round_trip(message.clone()).await?;
        assert!(
            echoed == message,
            "sent {}, got {}",
            describe(&message),
            describe(&echoed)
        );
    }
    client.send_frame(Data::Text, "py", false).await?;
    client.send_frame(Data::Continue, "thon", true).await?;
    assert_eq!(client.recv().await?, Message::text("python"));
    let reply = client.close(CloseCode::Normal, "bye").await?;
    assert_eq!(reply.map(|frame| frame.code), Some(CloseCode::Normal));
    Ok(())
}

async fn python_example_backend_serves_clients_concurrently_and_stops_on_sigterm(
    mode: Mode,
) -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let mut python = start_python_echo(docroot.path()).await?;
    let gateway = Gateway::start(docroot.path(), mode.gateway_args()).await?;
    let clients = try_join_all((0..10).map(|_| gateway.connect("/pyecho"))).await?;
    try_join_all(
        clients
            .into_iter()
            .enumerate()
            .map(|(client_idx, mut client)| async move {
                let message = Message::text(format!("client {client_idx}"));
                let echoed = client.round_trip(message.clone()).await?;
                anyhow::ensure!(echoed == message, "client {client_idx} got {echoed:?}");
                anyhow::Ok(())
            }),
    )
    .await?;
    python.sigterm()?;
    python.wait_exit(EXIT_DEADLINE).await?;
    assert!(
        !python.socket_path().exists(),
        "the example removes its socket file on SIGTERM"
    );
    Ok(())
}
