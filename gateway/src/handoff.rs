//! Direct mode: after the `101`, hand the client's TCP socket and the bytes
//! already read past the handshake to the backend in one HANDOFF record
//! (SCM_RIGHTS through `link::fd_pass`), then forget the client.
//!
//! From then on the backend speaks WebSocket on the socket itself; the
//! gateway holds no descriptor, no task and no connection slot for it. When
//! the backend offered to reuse the link (ACCEPT's `reuse_ms`), the link goes
//! to the `link_pool` for the next client instead of being closed.

use std::os::fd::AsFd;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use link::fd_pass;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::backend::FramedLink;
use crate::link_pool::LinkPool;
use crate::relay::{self, RelaySettings};

/// Where a link the backend offered for reuse goes after the HANDOFF.
pub(crate) struct LinkReuse<'a> {
    pub(crate) pool: &'a LinkPool,
    pub(crate) socket_path: &'a Path,
    /// How long the backend waits for the next OPEN (ACCEPT's `reuse_ms`).
    pub(crate) backend_wait: Duration,
}

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
                    reuse
                        .pool
                        .put(reuse.socket_path, stream, reuse.backend_wait);
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
    let mut client = relay::client_websocket(tcp, pending, settings, None).await;
    let frame = CloseFrame {
        code: CloseCode::Error,
        reason: "backend hand-over failed".into(),
    };
    let _ = tokio::time::timeout(settings.close_timeout, client.close(Some(frame))).await;
}
