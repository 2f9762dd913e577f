//! Connecting to a backend's socket and, in framed mode, the OPEN →
//! ACCEPT/REJECT exchange, all before the client gets its `101`.
//!
//! The relay that follows is `relay`'s job; this module hands it a link that
//! the backend has accepted.

use std::io;
use std::path::Path;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use servers::link::{AcceptReply, OpenMeta, Record, RecordCodec, RejectReply};
use tokio::net::UnixStream;
use tokio_util::codec::Framed;

use crate::refusal::Refusal;

/// Initial read buffer of a link; it grows only for larger records.
pub(crate) const LINK_READ_BUFFER: usize = 512;

/// A framed link whose backend answered ACCEPT.
pub(crate) type FramedLink = Framed<UnixStream, RecordCodec>;

/// Connects to `socket_path`, sends `open` and waits for the backend's answer,
/// all within `accept_timeout`.
///
/// The chosen subprotocol must be one of those offered in `open`.
pub(crate) async fn open_framed(
    socket_path: &Path,
    open: &OpenMeta,
    max_payload: usize,
    accept_timeout: Duration,
) -> Result<(FramedLink, AcceptReply), Refusal> {
    let name = &open.name;
    let exchange = async {
        let stream = connect(socket_path, name).await?;
        let mut link =
            Framed::with_capacity(stream, RecordCodec::new(max_payload), LINK_READ_BUFFER);
        let failed = |cause: String| Refusal::BackendFailed {
            name: name.clone(),
            cause,
        };
        link.send(Record::Open(open.to_payload()))
            .await
            .map_err(|error| failed(format!("writing OPEN: {error}")))?;
        match link.next().await {
            Some(Ok(Record::Accept(payload))) => {
                let reply = AcceptReply::from_payload(&payload)
                    .map_err(|error| failed(error.to_string()))?;
                if let Some(protocol) = &reply.protocol
                    && !open.protocols.contains(protocol)
                {
                    return Err(failed(format!(
                        "it chose subprotocol {protocol:?}, which the client did not offer"
                    )));
                }
                Ok((link, reply))
            }
            Some(Ok(Record::Reject(payload))) => {
                let reply = RejectReply::from_payload(&payload)
                    .map_err(|error| failed(error.to_string()))?;
                match StatusCode::from_u16(reply.status) {
                    Ok(status) if (400..=599).contains(&reply.status) => {
                        Err(Refusal::BackendRejected {
                            name: name.clone(),
                            status,
                            reason: reply.reason,
                        })
                    }
                    _ => Err(failed(format!(
                        "REJECT status {} is not between 400 and 599",
                        reply.status
                    ))),
                }
            }
            Some(Ok(other)) => Err(failed(format!(
                "expected ACCEPT or REJECT, got {}",
                other.name()
            ))),
            Some(Err(error)) => Err(failed(error.to_string())),
            None => Err(failed(
                "it closed the link instead of answering OPEN".to_owned(),
            )),
        }
    };
    tokio::time::timeout(accept_timeout, exchange)
        .await
        .map_err(|_| Refusal::BackendTimeout(name.clone()))?
}

/// Connects to a raw-mode backend (no OPEN, no ACCEPT) within `accept_timeout`.
pub(crate) async fn open_raw(
    socket_path: &Path,
    name: &str,
    accept_timeout: Duration,
) -> Result<UnixStream, Refusal> {
    tokio::time::timeout(accept_timeout, connect(socket_path, name))
        .await
        .map_err(|_| Refusal::BackendTimeout(name.to_owned()))?
}

async fn connect(socket_path: &Path, name: &str) -> Result<UnixStream, Refusal> {
    UnixStream::connect(socket_path)
        .await
        .map_err(|cause| match cause.kind() {
            // The socket vanished between resolving and connecting.
            io::ErrorKind::NotFound => Refusal::NoBackend {
                name: name.to_owned(),
                cause: crate::route::RouteError::NotFound,
            },
            _ => Refusal::BackendUnavailable {
                name: name.to_owned(),
                cause,
            },
        })
}
