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
use link::LinkStream;
use link::websocket::LINK_READ_BUFFER;
use link::{AcceptReply, LinkError, OpenMeta, Record, RecordCodec, RejectReply};
use tokio_util::codec::Framed;

use crate::link_pool::LinkPool;
use crate::refusal::Refusal;

/// Most response headers a backend's ACCEPT may add to the `101`.
pub(crate) const MAX_ACCEPT_HEADERS: usize = 32;

/// Longest name plus value of one header an ACCEPT adds.
pub(crate) const MAX_ACCEPT_HEADER_SIZE: usize = 4096;

/// Longest REJECT reason passed to the client; a longer one is cut.
pub(crate) const MAX_REJECT_REASON: usize = 512;

/// How a backend broke the link protocol before accepting a client (`502`).
#[derive(Debug, thiserror::Error)]
pub(crate) enum BackendFailure {
    /// The OPEN record could not be written.
    #[error("writing OPEN")]
    WriteOpen(#[source] LinkError),
    /// The answer to OPEN could not be read or decoded.
    #[error("reading the answer to OPEN")]
    ReadAnswer(#[source] LinkError),
    /// The ACCEPT or REJECT body is not valid.
    #[error("bad answer to OPEN")]
    BadAnswer(#[source] LinkError),
    /// ACCEPT chose a subprotocol the client did not offer.
    #[error("it chose subprotocol {0:?}, which the client did not offer")]
    UnofferedProtocol(String),
    /// ACCEPT asked for more response headers than the gateway passes on.
    #[error("ACCEPT adds {0} headers, more than {MAX_ACCEPT_HEADERS}")]
    TooManyHeaders(usize),
    /// ACCEPT asked for a response header longer than the gateway passes on.
    #[error("ACCEPT adds a header of {0} bytes, more than {MAX_ACCEPT_HEADER_SIZE}")]
    HeaderTooLong(usize),
    /// REJECT carried a status outside 400–599.
    #[error("REJECT status {0} is not between 400 and 599")]
    RejectStatus(u16),
    /// The backend answered OPEN with another record than ACCEPT or REJECT.
    #[error("expected ACCEPT or REJECT, got {0}")]
    UnexpectedRecord(&'static str),
    /// The backend closed the link without answering.
    #[error("it closed the link instead of answering OPEN")]
    ClosedBeforeAnswer,
    /// ACCEPT put the client on a carrier, but OPEN offered none.
    #[error("ACCEPT names a carrier, but OPEN offered none")]
    CarrierNotOffered,
    /// ACCEPT put the client on a carrier that ended meanwhile.
    #[error("ACCEPT names a carrier link that has ended")]
    CarrierEnded,
}

/// A framed link whose backend answered ACCEPT.
pub(crate) type FramedLink = Framed<LinkStream, RecordCodec>;

/// Where the link that took an OPEN came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinkOrigin {
    /// Connected for this OPEN.
    Connected,
    /// An idle link the backend had offered for reuse.
    Reused,
}

impl LinkOrigin {
    /// The `link` label of `wsgate_backend_link_opens_total`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            LinkOrigin::Connected => "new",
            LinkOrigin::Reused => "reused",
        }
    }
}

/// Connects to `socket_path`, sends `open` and waits for the backend's answer,
/// all within `accept_timeout`.
///
/// With `pool`, an idle link the backend offered for reuse is tried
/// first; if it turns out closed before any answer (the backend's wait ran
/// out, or it stopped), the OPEN goes on a fresh connection instead, so the
/// client never notices.
///
/// The chosen subprotocol must be one of those offered in `open`.
pub(crate) async fn open_framed(
    socket_path: &Path,
    open: &OpenMeta,
    max_payload: usize,
    accept_timeout: Duration,
    pool: Option<&LinkPool>,
) -> Result<(FramedLink, AcceptReply, LinkOrigin), Refusal> {
    let name = &open.name;
    let refusal = |answer: Answer| match answer {
        Answer::Rejected { status, reason } => Refusal::BackendRejected {
            name: name.clone(),
            status,
            reason,
        },
        Answer::Failed(cause) => Refusal::BackendFailed {
            name: name.clone(),
            cause,
        },
    };
    let exchange = async {
        if let Some(stream) = pool.and_then(|pool| pool.take(socket_path)) {
            match exchange(stream, open, max_payload).await {
                Ok((link, reply)) => return Ok((link, reply, LinkOrigin::Reused)),
                Err(Answer::Failed(cause)) if cause.is_link_gone() => {
                    tracing::debug!(
                        error = &cause as &dyn std::error::Error,
                        "idle link ended before answering; connecting afresh"
                    );
                }
                Err(answer) => return Err(refusal(answer)),
            }
        }
        let stream = connect(socket_path, name).await?;
        let (link, reply) = exchange(stream, open, max_payload).await.map_err(refusal)?;
        Ok((link, reply, LinkOrigin::Connected))
    };
    tokio::time::timeout(accept_timeout, exchange)
        .await
        .map_err(|_| Refusal::BackendTimeout(name.clone()))?
}

/// What a backend answered other than an acceptable ACCEPT.
enum Answer {
    /// REJECT with a valid status.
    Rejected { status: StatusCode, reason: String },
    /// No answer, or not a valid one.
    Failed(BackendFailure),
}

/// Sends `open` on `stream` and reads the backend's answer.
async fn exchange(
    stream: LinkStream,
    open: &OpenMeta,
    max_payload: usize,
) -> Result<(FramedLink, AcceptReply), Answer> {
    let mut link = Framed::with_capacity(stream, RecordCodec::new(max_payload), LINK_READ_BUFFER);
    let failed = Answer::Failed;
    link.send(Record::Open(open.to_payload()))
        .await
        .map_err(|error| failed(BackendFailure::WriteOpen(error)))?;
    match link.next().await {
        Some(Ok(Record::Accept(payload))) => {
            let reply = AcceptReply::from_payload(&payload)
                .map_err(|error| failed(BackendFailure::BadAnswer(error)))?;
            if let Some(protocol) = &reply.protocol
                && !open.protocols.contains(protocol)
            {
                return Err(failed(BackendFailure::UnofferedProtocol(protocol.clone())));
            }
            if reply.headers.len() > MAX_ACCEPT_HEADERS {
                return Err(failed(BackendFailure::TooManyHeaders(reply.headers.len())));
            }
            if let Some(longest) = reply
                .headers
                .iter()
                .map(|(name, value)| name.len() + value.len())
                .max()
                .filter(|len| *len > MAX_ACCEPT_HEADER_SIZE)
            {
                return Err(failed(BackendFailure::HeaderTooLong(longest)));
            }
            Ok((link, reply))
        }
        Some(Ok(Record::Reject(payload))) => {
            let reply = RejectReply::from_payload(&payload)
                .map_err(|error| failed(BackendFailure::BadAnswer(error)))?;
            match StatusCode::from_u16(reply.status) {
                Ok(status) if (400..=599).contains(&reply.status) => Err(Answer::Rejected {
                    status,
                    reason: truncate(reply.reason, MAX_REJECT_REASON),
                }),
                _ => Err(failed(BackendFailure::RejectStatus(reply.status))),
            }
        }
        Some(Ok(other)) => Err(failed(BackendFailure::UnexpectedRecord(other.name()))),
        Some(Err(error)) => Err(failed(BackendFailure::ReadAnswer(error))),
        None => Err(failed(BackendFailure::ClosedBeforeAnswer)),
    }
}

impl BackendFailure {
    /// Whether the link ended (or broke) before any answer: for an idle link
    /// taken from the pool, the backend closed it, and a fresh one may work.
    fn is_link_gone(&self) -> bool {
        matches!(
            self,
            BackendFailure::WriteOpen(LinkError::Io(_))
                | BackendFailure::ReadAnswer(LinkError::Io(_))
                | BackendFailure::ClosedBeforeAnswer
        )
    }
}

/// `text` cut to at most `max` bytes on a character boundary.
fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// Connects to a raw-mode backend (no OPEN, no ACCEPT) within `accept_timeout`.
pub(crate) async fn open_raw(
    socket_path: &Path,
    name: &str,
    accept_timeout: Duration,
) -> Result<LinkStream, Refusal> {
    tokio::time::timeout(accept_timeout, connect(socket_path, name))
        .await
        .map_err(|_| Refusal::BackendTimeout(name.to_owned()))?
}

/// Connects to a backend's socket: a missing socket is `404`, any other
/// failure `502` (a full backlog too: the backend is not keeping up).
pub(crate) async fn connect(socket_path: &Path, name: &str) -> Result<LinkStream, Refusal> {
    LinkStream::connect(socket_path)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connecting_finds_listeners_and_tells_missing_from_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("echo");
        let listener = tokio::net::UnixListener::bind(&path).expect("bind");
        let mut stream = LinkStream::connect(&path).await.expect("connect");
        let (mut accepted, _) = listener.accept().await.expect("accept");
        tokio::io::AsyncWriteExt::write_all(&mut stream, b"hi")
            .await
            .expect("write");
        let mut got = [0; 2];
        tokio::io::AsyncReadExt::read_exact(&mut accepted, &mut got)
            .await
            .expect("read");
        assert_eq!(&got, b"hi");

        let missing = connect(&dir.path().join("absent"), "absent").await;
        assert!(
            matches!(missing, Err(Refusal::NoBackend { .. })),
            "{missing:?}"
        );
        drop(listener);
        let refused = connect(&path, "echo").await;
        assert!(
            matches!(refused, Err(Refusal::BackendUnavailable { .. })),
            "{refused:?}"
        );
    }

    #[test]
    fn reasons_are_cut_on_a_character_boundary() {
        assert_eq!(truncate("é".repeat(300), 511).len(), 510);
        assert_eq!(truncate("short".to_owned(), 512), "short");
    }
}
