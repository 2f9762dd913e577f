//! A WebSocket client (tokio-tungstenite over a plain `TcpStream`, or over
//! TLS with [`Client::connect_tls`]) whose every read and write has a
//! deadline, with helpers for the closes tests expect.
//!
//! Raw frames (fragments, invalid UTF-8) go through [`Client::send_frame`];
//! tungstenite masks them as a client must. Dropping the client without a
//! close handshake is the "client vanished" case.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, bail};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Response;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::tls::{self, ClientStream};
use crate::{CloseCode, EVENT_DEADLINE, wait};

/// A connected WebSocket client.
#[derive(Debug)]
pub struct Client {
    ws: WebSocketStream<ClientStream>,
    response: Response,
    label: String,
}

impl Client {
    /// Connects to `ws://<addr><path>` with extra request `headers`. A refused
    /// handshake is an error that quotes the HTTP status and body.
    pub async fn connect(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Client> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        Client::handshake(
            ClientStream::Plain(stream),
            format!("ws://{addr}{path}"),
            headers,
        )
        .await
    }

    /// Connects to `wss://localhost:<port><path>` at `addr`: a TLS handshake
    /// with `config` asking for [`tls::SERVER_NAME`], then the WebSocket
    /// handshake with extra `headers`. A refused handshake is an error that
    /// quotes the HTTP status and body.
    pub async fn connect_tls(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
        config: Arc<rustls::ClientConfig>,
    ) -> anyhow::Result<Client> {
        let stream = tls::connect(addr, tls::SERVER_NAME, config).await?;
        Client::handshake(
            ClientStream::Tls(Box::new(stream)),
            format!("wss://{}:{}{path}", tls::SERVER_NAME, addr.port()),
            headers,
        )
        .await
    }

    async fn handshake(
        stream: ClientStream,
        url: String,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Client> {
        let mut request = url
            .as_str()
            .into_client_request()
            .with_context(|| format!("building a request for {url}"))?;
        for (name, value) in headers {
            let name: tokio_tungstenite::tungstenite::http::HeaderName = name.parse()?;
            request
                .headers_mut()
                .insert(name, HeaderValue::from_str(value)?);
        }
        // Larger than any message a test sends, so the client never refuses an echo.
        let config = WebSocketConfig::default()
            .max_message_size(Some(64 << 20))
            .max_frame_size(Some(64 << 20));
        let handshake = tokio_tungstenite::client_async_with_config(request, stream, Some(config));
        let (ws, response) = match wait::within(
            &format!("the handshake of {url}"),
            EVENT_DEADLINE,
            handshake,
        )
        .await?
        {
            Ok(connected) => connected,
            Err(WsError::Http(response)) => {
                let body = response
                    .body()
                    .as_deref()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default()
                    .into_owned();
                bail!(
                    "handshake of {url} refused: {} {body:?}",
                    response.status().as_u16()
                );
            }
            Err(error) => return Err(error).with_context(|| format!("handshake of {url}")),
        };
        Ok(Client {
            ws,
            response,
            label: url,
        })
    }

    /// The `101` response of the handshake.
    pub fn response(&self) -> &Response {
        &self.response
    }

    /// Sends one message.
    pub async fn send(&mut self, message: Message) -> anyhow::Result<()> {
        let what = format!("sending on {}", self.label);
        wait::within(&what, EVENT_DEADLINE, self.ws.send(message))
            .await?
            .with_context(|| what.clone())
    }

    /// Sends one raw data frame (masked by tungstenite): `opcode` is `Text`,
    /// `Binary` or `Continue`, `is_final` its FIN bit. Nothing checks the payload.
    pub async fn send_frame(
        &mut self,
        opcode: Data,
        payload: impl Into<Bytes>,
        is_final: bool,
    ) -> anyhow::Result<()> {
        let frame = Frame::message(payload.into(), OpCode::Data(opcode), is_final);
        self.send(Message::Frame(frame)).await
    }

    /// The next message of any kind, pings and pongs included; an error if
    /// none arrives within [`EVENT_DEADLINE`] or the connection ends.
    pub async fn recv_any(&mut self) -> anyhow::Result<Message> {
        let what = format!("a message on {}", self.label);
        match wait::within(&what, EVENT_DEADLINE, self.ws.next()).await? {
            Some(Ok(message)) => Ok(message),
            Some(Err(error)) => Err(error).with_context(|| format!("reading from {}", self.label)),
            None => bail!("{} ended without a close frame", self.label),
        }
    }

    /// The next text, binary or close message (pings and pongs are skipped;
    /// tungstenite answers pings by itself).
    pub async fn recv(&mut self) -> anyhow::Result<Message> {
        loop {
            match self.recv_any().await? {
                Message::Ping(_) | Message::Pong(_) => continue,
                message => return Ok(message),
            }
        }
    }

    /// The next message, which must be a text; its text.
    pub async fn recv_text(&mut self) -> anyhow::Result<String> {
        match self.recv().await? {
            Message::Text(text) => Ok(text.as_str().to_owned()),
            other => anyhow::bail!("expected a text message, got {}", describe(&other)),
        }
    }

    /// The next message, which must be the text `expected`.
    pub async fn expect_text(&mut self, expected: &str) -> anyhow::Result<()> {
        let text = self.recv_text().await?;
        anyhow::ensure!(text == expected, "expected {expected:?}, got {text:?}");
        Ok(())
    }

    /// Sends `message` and returns the next data message, for echo round trips.
    pub async fn round_trip(&mut self, message: Message) -> anyhow::Result<Message> {
        self.send(message).await?;
        self.recv().await
    }

    /// Sends the text `text` and expects it back (an echo backend's answer).
    pub async fn expect_echo(&mut self, text: &str) -> anyhow::Result<()> {
        let echoed = self.round_trip(Message::text(text)).await?;
        anyhow::ensure!(
            echoed == Message::text(text),
            "echo of {text:?}: {echoed:?}"
        );
        Ok(())
    }

    /// Reads until the close frame and returns it; a data message first, or an
    /// end without a close frame, is an error.
    pub async fn expect_close(&mut self) -> anyhow::Result<Option<CloseFrame>> {
        match self.recv().await? {
            Message::Close(frame) => {
                // Send the queued reply at once, as a browser does, so the
                // peer's close handshake completes instead of timing out.
                let _ = self.ws.flush().await;
                Ok(frame)
            }
            other => bail!(
                "expected a close on {}, got {}",
                self.label,
                describe(&other)
            ),
        }
    }

    /// Reads until the close frame and checks its code.
    pub async fn expect_close_code(&mut self, code: CloseCode) -> anyhow::Result<()> {
        match self.expect_close().await? {
            Some(frame) if frame.code == code => Ok(()),
            Some(frame) => bail!(
                "{} closed with {} {:?}, expected {code}",
                self.label,
                frame.code,
                frame.reason.as_str()
            ),
            None => bail!("{} closed without a code, expected {code}", self.label),
        }
    }

    /// Waits for a close frame with exactly `code` and `reason`.
    pub async fn expect_close_with(&mut self, code: CloseCode, reason: &str) -> anyhow::Result<()> {
        match self.expect_close().await? {
            Some(frame) if frame.code == code && frame.reason.as_str() == reason => Ok(()),
            Some(frame) => bail!(
                "{} closed with {} {:?}, expected {code} {reason:?}",
                self.label,
                frame.code,
                frame.reason.as_str()
            ),
            None => bail!(
                "{} closed without a code, expected {code} {reason:?}",
                self.label
            ),
        }
    }

    /// Starts the close handshake with `code` and returns the peer's close
    /// frame once the connection has ended; an end without one is an error.
    pub async fn close(
        &mut self,
        code: CloseCode,
        reason: &str,
    ) -> anyhow::Result<Option<CloseFrame>> {
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        let what = format!("closing {}", self.label);
        wait::within(&what, EVENT_DEADLINE, self.ws.close(Some(frame)))
            .await?
            .with_context(|| what.clone())?;
        let mut reply = None;
        loop {
            match wait::within(&what, EVENT_DEADLINE, self.ws.next()).await? {
                Some(Ok(Message::Close(frame))) => reply = Some(frame),
                Some(Ok(_)) => continue,
                None | Some(Err(WsError::ConnectionClosed)) => break,
                Some(Err(error)) => return Err(error).with_context(|| what.clone()),
            }
        }
        reply.with_context(|| format!("{} ended without answering the close", self.label))
    }

    /// The TCP stream under the WebSocket (and TLS), e.g. to reset it.
    pub fn tcp(&self) -> &TcpStream {
        self.ws.get_ref().tcp()
    }

    /// Gives up the WebSocket (and TLS session) for its TCP stream, without any close.
    pub fn into_tcp(self) -> TcpStream {
        self.ws.into_inner().into_tcp()
    }
}

/// A short description of `message` for error messages (large payloads elided).
pub fn describe(message: &Message) -> String {
    match message {
        Message::Text(text) if text.len() > 64 => format!("Text({} bytes)", text.len()),
        Message::Binary(data) if data.len() > 64 => format!("Binary({} bytes)", data.len()),
        other => format!("{other:?}"),
    }
}
