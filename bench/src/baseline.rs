//! The no-gateway baseline: WebSocket served straight from the socket by
//! tokio-tungstenite, echo (`/echo`) and chat (`/chat`, every message to every
//! other client), on TCP (plain, or TLS through tokio-rustls for the wss
//! baseline), or on a UNIX socket for nginx to proxy to.
//!
//! Small on purpose, and written for throughput as one would write it (4 KiB
//! reads, replies fed while more input is ready and flushed once): it is the
//! floor a gateway is measured against.

use std::path::Path;
use std::sync::{Arc, Mutex};

use futures_util::{FutureExt, SinkExt, StreamExt};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Messages that may wait for one chat client before it is dropped: the
/// same as the bench gives `websocket_chat --queue`.
const CHAT_QUEUE: usize = 4096;

/// Messages fed before a flush, at most.
const MAX_BATCH: usize = 64;

/// Bytes read from a client at a time (tungstenite's default is 128 KiB).
const READ_BUFFER: usize = 4096;

/// The chat room: a sender per client.
#[derive(Default)]
struct Room {
    next_id: u64,
    clients: Vec<(u64, mpsc::Sender<Message>)>,
}

/// Serves echo and chat on TCP `listener` until the process ends; with
/// `tls`, each connection's TLS handshake first (in its own task).
pub async fn serve_tcp(
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
) -> anyhow::Result<()> {
    let room = Arc::new(Mutex::new(Room::default()));
    let acceptor = tls.map(TlsAcceptor::from);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let room = Arc::clone(&room);
        match &acceptor {
            None => tokio::spawn(serve_one(stream, room)),
            Some(acceptor) => {
                let accepting = acceptor.accept(stream);
                tokio::spawn(async move {
                    if let Ok(stream) = accepting.await {
                        serve_one(stream, room).await;
                    }
                })
            }
        };
    }
}

/// Serves echo and chat on the UNIX socket `path` until the process ends.
pub async fn serve_unix(path: &Path) -> anyhow::Result<()> {
    let listener = UnixListener::bind(path)?;
    let room = Arc::new(Mutex::new(Room::default()));
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(serve_one(stream, Arc::clone(&room)));
    }
}

async fn serve_one<S>(stream: S, room: Arc<Mutex<Room>>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut path = String::new();
    // tungstenite's callback type fixes the error type; it is never returned here.
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, response: Response| {
        path = request.uri().path().to_owned();
        Ok(response)
    };
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);
    let Ok(ws) =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)).await
    else {
        return;
    };
    if path.ends_with("/chat") {
        chat(ws, room).await;
    } else {
        echo(ws).await;
    }
}

/// Echoes every message: each reply is fed while more messages are already
/// readable, and the batch is flushed once, as a server written for
/// throughput does.
async fn echo<S>(mut ws: tokio_tungstenite::WebSocketStream<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    while let Some(Ok(first)) = ws.next().await {
        let mut message = first;
        let mut n_batched = 0;
        loop {
            if (message.is_text() || message.is_binary()) && ws.feed(message).await.is_err() {
                return;
            }
            n_batched += 1;
            if n_batched == MAX_BATCH {
                break;
            }
            match ws.next().now_or_never() {
                Some(Some(Ok(next))) => message = next,
                Some(_) => {
                    let _ = ws.flush().await;
                    return;
                }
                None => break,
            }
        }
        if ws.flush().await.is_err() {
            return;
        }
    }
}

async fn chat<S>(ws: tokio_tungstenite::WebSocketStream<S>, room: Arc<Mutex<Room>>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (sender, mut queue) = mpsc::channel(CHAT_QUEUE);
    let id = {
        let mut room = room.lock().expect("never poisoned");
        room.next_id += 1;
        let id = room.next_id;
        room.clients.push((id, sender));
        id
    };
    let (mut sink, mut stream) = ws.split();
    loop {
        tokio::select! {
            incoming = stream.next() => match incoming {
                Some(Ok(message)) if message.is_text() || message.is_binary() => {
                    let mut room = room.lock().expect("never poisoned");
                    room.clients.retain(|(other, queue)| {
                        *other == id || queue.try_send(message.clone()).is_ok()
                    });
                }
                Some(Ok(_)) => {}
                _ => break,
            },
            outgoing = queue.recv() => match outgoing {
                Some(message) => {
                    // Everything queued goes out with one flush.
                    let mut batch = Some(message);
                    let mut n_batched = 0;
                    while let Some(message) = batch.take() {
                        if sink.feed(message).await.is_err() {
                            break;
                        }
                        n_batched += 1;
                        if n_batched < MAX_BATCH {
                            batch = queue.try_recv().ok();
                        }
                    }
                    if sink.flush().await.is_err() { break }
                }
                None => break,
            },
        }
    }
    room.lock()
        .expect("never poisoned")
        .clients
        .retain(|(other, _)| *other != id);
}
