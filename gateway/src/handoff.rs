//! Direct mode: after the `101`, hand the client's TCP socket and the bytes
//! already read past the handshake to the backend in one HANDOFF record
//! (SCM_RIGHTS through `link::fd_pass`), then forget the client.
//!
//! From then on the backend speaks WebSocket on the socket itself; the
//! gateway holds no descriptor, no task and no connection slot for it. When
//! the backend offered to reuse the link (ACCEPT's `reuse_ms`), the link goes
//! to the `link_pool` for the next client instead of being closed.
//!
//! On such a link, when the backend also offered `open_handoff`, the next
//! client goes over without asking: its OPEN and its socket in one
//! OPEN_HANDOFF record ([`hand_over_with_open`]), after a `101` the gateway
//! wrote without waiting for an ACCEPT.

use std::os::fd::AsFd;
use std::time::Duration;

use bytes::Bytes;
use link::LinkStream;
use link::OpenMeta;
use link::fd_pass;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::backend::{self, FramedLink};
use crate::link_pool::{LinkReuse, ReuseOffer};
use crate::relay::{self, RelaySettings};

/// Hands `tcp` and `pending` over on `link`, then gives the link to `reuse`
/// or closes it. If the hand-over fails, the client (who already has its
/// `101`) is closed with `1011` and the reason is logged.
pub(crate) async fn hand_over(
    tcp: TcpStream,
    pending: Bytes,
    link: FramedLink,
    settings: &RelaySettings,
    reuse: Option<LinkReuse<'_>>,
) {
    let parts = link.into_parts();
    let failure = if parts.read_buf.is_empty() {
        let mut stream = parts.io;
        match fd_pass::send_handoff(&mut stream, tcp.as_fd(), &pending).await {
            Ok(()) => {
                // Our copy of the client's socket closes here, before the link may be reused.
                drop(tcp);
                let kept = reuse.is_some();
                if let Some(reuse) = reuse {
                    reuse.keep(stream);
                }
                // Logged once the link is back for the next client (tests wait on it).
                tracing::debug!(n_pending = pending.len(), kept, "client handed over");
                return;
            }
            Err(error) => format!("sending HANDOFF: {error}"),
        }
    } else {
        // The backend may send nothing between ACCEPT and HANDOFF.
        "the backend sent data after ACCEPT in direct mode".to_owned()
    };
    tracing::warn!("direct hand-over failed: {failure}; closing the client with 1011");
    close_with_1011(tcp, pending, settings).await;
}

/// Where an OPEN_HANDOFF goes, and what to do if it cannot go there.
pub(crate) struct OpenHandoff<'a> {
    /// The client's OPEN (direct mode).
    pub(crate) open: &'a OpenMeta,
    /// The idle link taken for it.
    pub(crate) stream: LinkStream,
    /// Where the link goes back to, with its offer.
    pub(crate) reuse: LinkReuse<'a>,
    /// For asking afresh if the link fails: the largest record from the
    /// backend and how long it may take to answer.
    pub(crate) max_payload: usize,
    pub(crate) accept_timeout: Duration,
}

/// Hands `tcp` (which has its `101`) and `pending` over with one OPEN_HANDOFF
/// on an idle link whose backend offered it, then puts the link back. If the
/// link fails (the backend closed it at that moment: stopped, restarted), the
/// client is handed over the usual way on a new link (OPEN, ACCEPT,
/// HANDOFF); if that fails too, it is closed with `1011`.
pub(crate) async fn hand_over_with_open(
    tcp: TcpStream,
    pending: Bytes,
    handoff: OpenHandoff<'_>,
    settings: &RelaySettings,
) {
    let OpenHandoff {
        open,
        mut stream,
        reuse,
        max_payload,
        accept_timeout,
    } = handoff;
    let sent =
        fd_pass::send_open_handoff(&mut stream, tcp.as_fd(), &open.to_payload(), &pending).await;
    match sent {
        Ok(()) => {
            drop(tcp);
            reuse.keep(stream);
            tracing::debug!(
                n_pending = pending.len(),
                "client handed over with its OPEN"
            );
        }
        Err(error) => {
            tracing::debug!(%error, "idle link failed for OPEN_HANDOFF; asking afresh");
            drop(stream);
            let LinkReuse {
                pool, socket_path, ..
            } = reuse;
            match backend::open_framed(socket_path, open, max_payload, accept_timeout, None).await {
                Ok((link, reply, _)) => {
                    let reuse = ReuseOffer::from_reply(&reply).map(|offer| LinkReuse {
                        pool,
                        socket_path,
                        offer,
                    });
                    hand_over(tcp, pending, link, settings, reuse).await;
                }
                Err(refusal) => {
                    tracing::warn!(
                        "direct hand-over failed: {}; closing the client with 1011",
                        crate::refusal::error_chain(&refusal)
                    );
                    close_with_1011(tcp, pending, settings).await;
                }
            }
        }
    }
}

/// Closes a client that has its `101` but no backend with `1011`.
async fn close_with_1011(tcp: TcpStream, pending: Bytes, settings: &RelaySettings) {
    let mut client = relay::client_websocket(tcp, pending, settings, None).await;
    let frame = CloseFrame {
        code: CloseCode::Error,
        reason: "backend hand-over failed".into(),
    };
    let _ = tokio::time::timeout(settings.close_timeout, client.close(Some(frame))).await;
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use futures_util::{SinkExt, StreamExt};
    use link::LinkListener;
    use link::{AcceptReply, LINK_VERSION, LinkMode, Record, RecordCodec};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio_util::codec::Framed;

    use super::*;
    use crate::config::Config;
    use crate::link_pool::LinkPool;

    fn direct_open(id: u64) -> OpenMeta {
        OpenMeta {
            version: LINK_VERSION,
            mode: LinkMode::Direct,
            id,
            name: "echo".to_owned(),
            path: "/echo".to_owned(),
            query: String::new(),
            protocols: Vec::new(),
            peer: "127.0.0.1:1".to_owned(),
            headers: BTreeMap::new(),
            limits: None,
            tls: None,
            identity: None,
            deflate: None,
            carrier: None,
        }
    }

    /// The idle link's backend end is gone when the OPEN_HANDOFF goes out:
    /// the client is handed over the usual way on a new link (OPEN, ACCEPT,
    /// HANDOFF), with its pending bytes, and that link goes to the pool.
    #[tokio::test]
    async fn a_failed_open_handoff_asks_afresh_on_a_new_link() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket_path = dir.path().join("echo");
        let listener = LinkListener::from_std(
            std::os::unix::net::UnixListener::bind(&socket_path).expect("bind"),
        )
        .expect("listener");
        let (idle, backend_end) = LinkStream::pair().expect("pair");
        drop(backend_end);
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut client = tokio::net::TcpStream::connect(tcp.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (client_at_gateway, _) = tcp.accept().await.expect("accept");
        let backend = tokio::spawn(async move {
            let stream = listener.accept().await.expect("a new link");
            let mut framed = Framed::new(stream, RecordCodec::default());
            let Some(Ok(Record::Open(open))) = framed.next().await else {
                panic!("expected OPEN");
            };
            let reply = AcceptReply {
                reuse_ms: Some(3000),
                open_handoff: true,
                ..AcceptReply::default()
            };
            framed
                .send(Record::Accept(reply.to_payload()))
                .await
                .expect("ACCEPT");
            // The gateway sends nothing between OPEN and HANDOFF.
            let mut stream = framed.into_inner();
            let (socket, pending) = fd_pass::recv_handoff(&mut stream, 1024)
                .await
                .expect("HANDOFF");
            let open = OpenMeta::from_payload(&open).expect("OPEN");
            (open, socket, pending, stream)
        });
        let pool = LinkPool::default();
        let open = direct_open(7);
        let handoff = OpenHandoff {
            open: &open,
            stream: idle,
            reuse: LinkReuse {
                pool: &pool,
                socket_path: &socket_path,
                offer: ReuseOffer {
                    backend_wait: Duration::from_secs(3),
                    open_handoff: true,
                },
            },
            max_payload: 1 << 20,
            accept_timeout: Duration::from_secs(5),
        };
        let settings = RelaySettings::from_config(&Config::default());
        hand_over_with_open(
            client_at_gateway,
            Bytes::from_static(b"frame"),
            handoff,
            &settings,
        )
        .await;
        // The backend keeps its end of the new link open, as it offered.
        let (received_open, socket, pending, _link) = backend.await.expect("backend");
        assert_eq!(received_open, open);
        assert_eq!(&pending[..], b"frame");
        let socket = std::net::TcpStream::from(socket);
        socket.set_nonblocking(true).expect("nonblocking");
        let mut socket = tokio::net::TcpStream::from_std(socket).expect("tokio");
        socket.write_all(b"hi").await.expect("write");
        let mut buf = [0u8; 2];
        client.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"hi");
        let kept = pool
            .take_for_handoff(&socket_path)
            .expect("the new link, kept");
        assert_eq!(kept.offer.backend_wait, Duration::from_secs(3));
    }
}
