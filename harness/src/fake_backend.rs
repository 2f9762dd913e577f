//! An in-process framed backend that behaves as a test asks (echo, reject,
//! never answer) and records everything that happens on its links.
//!
//! It reads and writes records with the harness's own byte-level code
//! ([`crate::wire`]), not the `link` crate's codec, so it sees the bytes the
//! gateway really sends. Its task runs on the test's runtime and is aborted
//! (with every link) when it is dropped.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, bail};
use link::{AcceptReply, OpenMeta, Record, RejectReply};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

use crate::{EVENT_DEADLINE, wait, wire};

/// How a [`FakeBackend`] answers each link.
#[derive(Debug, Clone)]
pub enum FakeBehaviour {
    /// Reads whatever comes and never answers, like a hung backend.
    Silent,
    /// Answers OPEN with REJECT carrying this reply.
    Reject(RejectReply),
    /// Answers OPEN with ACCEPT, echoes TEXT and BINARY records, and answers
    /// CLOSE with the same CLOSE (after which the gateway ends the link, or,
    /// if the ACCEPT offered `reuse_framed`, may send the next OPEN on it,
    /// which is answered as the first). Answers a REQUEST
    /// with a RESPONSE `200` whose body is the request's body and whose
    /// headers `x-method`, `x-path` and `x-query` repeat the request's.
    Echo(AcceptReply),
}

/// Something that happened on one link; `link_idx` counts links from 0 in accept order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// The gateway connected.
    Connected {
        /// Which link.
        link_idx: usize,
    },
    /// A record arrived.
    Received {
        /// Which link.
        link_idx: usize,
        /// The record as decoded.
        record: Record,
    },
    /// The gateway closed the link (EOF, or a reset).
    Closed {
        /// Which link.
        link_idx: usize,
    },
    /// The link carried something malformed.
    Failed {
        /// Which link.
        link_idx: usize,
        /// The codec's complaint.
        error: String,
    },
}

/// A framed backend listening on a socket file inside the test process.
#[derive(Debug)]
pub struct FakeBackend {
    socket_path: PathBuf,
    events: mpsc::UnboundedReceiver<LinkEvent>,
    n_links: Arc<AtomicUsize>,
    accept_task: JoinHandle<()>,
}

impl FakeBackend {
    /// Binds `socket_path` (creating its directory) and serves every link with `behaviour`.
    pub fn start(socket_path: &Path, behaviour: FakeBehaviour) -> anyhow::Result<FakeBackend> {
        if let Some(parent) = socket_path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let listener = UnixListener::bind(socket_path)
            .with_context(|| format!("binding {}", socket_path.display()))?;
        let (event_sender, events) = mpsc::unbounded_channel();
        let n_links = Arc::new(AtomicUsize::new(0));
        let accept_task = tokio::spawn(accept_links(
            listener,
            behaviour,
            event_sender,
            n_links.clone(),
        ));
        Ok(FakeBackend {
            socket_path: socket_path.to_owned(),
            events,
            n_links,
            accept_task,
        })
    }

    /// The socket file.
    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }

    /// How many links were accepted so far.
    pub fn n_links(&self) -> usize {
        self.n_links.load(Ordering::SeqCst)
    }

    /// The next event, within [`EVENT_DEADLINE`].
    pub async fn next_event(&mut self) -> anyhow::Result<LinkEvent> {
        let what = format!(
            "an event on the fake backend {}",
            self.socket_path.display()
        );
        wait::within(&what, EVENT_DEADLINE, self.events.recv())
            .await?
            .context("the fake backend's task ended")
    }

    /// The next event that is not [`LinkEvent::Connected`].
    pub async fn next_record_or_end(&mut self) -> anyhow::Result<LinkEvent> {
        loop {
            match self.next_event().await? {
                LinkEvent::Connected { .. } => continue,
                event => return Ok(event),
            }
        }
    }

    /// Skips to the next OPEN record and returns its metadata.
    pub async fn expect_open(&mut self) -> anyhow::Result<OpenMeta> {
        match self.next_record_or_end().await? {
            LinkEvent::Received {
                record: Record::Open(payload),
                ..
            } => Ok(OpenMeta::from_payload(&payload)?),
            other => bail!("expected an OPEN record, got {other:?}"),
        }
    }

    /// An event that already happened, without waiting.
    pub fn try_event(&mut self) -> Option<LinkEvent> {
        self.events.try_recv().ok()
    }
}

impl Drop for FakeBackend {
    fn drop(&mut self) {
        self.accept_task.abort();
        let _ = std::fs::remove_file(&self.socket_path);
    }
}

async fn accept_links(
    listener: UnixListener,
    behaviour: FakeBehaviour,
    events: mpsc::UnboundedSender<LinkEvent>,
    n_links: Arc<AtomicUsize>,
) {
    // Owning the link tasks here means aborting this task aborts them all.
    let mut links = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { return };
                let link_idx = n_links.fetch_add(1, Ordering::SeqCst);
                let _ = events.send(LinkEvent::Connected { link_idx });
                links.spawn(serve_link(stream, link_idx, behaviour.clone(), events.clone()));
            }
            Some(_) = links.join_next(), if !links.is_empty() => {}
        }
    }
}

/// The RESPONSE that [`FakeBehaviour::Echo`] gives a REQUEST.
fn echo_response(payload: &[u8]) -> anyhow::Result<Record> {
    let (head, body) = wire::split_head(payload)?;
    let field = |name: &str| head[name].as_str().unwrap_or_default().to_owned();
    let response = serde_json::json!({
        "status": 200,
        "headers": [
            ["content-type", "application/octet-stream"],
            ["x-method", field("method")],
            ["x-path", field("path")],
            ["x-query", field("query")],
        ],
    });
    Ok(Record::Response(wire::join_head(&response, &body).into()))
}

async fn serve_link(
    mut stream: UnixStream,
    link_idx: usize,
    behaviour: FakeBehaviour,
    events: mpsc::UnboundedSender<LinkEvent>,
) {
    let mut open_seen = false;
    loop {
        let record = match wire::read_record(&mut stream).await {
            Ok(None) => {
                let _ = events.send(LinkEvent::Closed { link_idx });
                return;
            }
            Err(error) => {
                // A reset is the gateway closing the link, not a malformed record.
                let reset = error
                    .downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionReset);
                let event = if reset {
                    LinkEvent::Closed { link_idx }
                } else {
                    LinkEvent::Failed {
                        link_idx,
                        error: format!("{error:#}"),
                    }
                };
                let _ = events.send(event);
                return;
            }
            Ok(Some(record)) => record,
        };
        let _ = events.send(LinkEvent::Received {
            link_idx,
            record: record.clone(),
        });
        let reply = match (&behaviour, record) {
            (FakeBehaviour::Silent, _) => None,
            (FakeBehaviour::Reject(reply), Record::Open(_)) if !open_seen => {
                Some(Record::Reject(reply.to_payload()))
            }
            (FakeBehaviour::Echo(reply), Record::Open(_)) if !open_seen => {
                Some(Record::Accept(reply.to_payload()))
            }
            (FakeBehaviour::Echo(_), record @ (Record::Text(_) | Record::Binary(_))) => {
                Some(record)
            }
            // Answered in kind; the gateway then ends the link, which is
            // reported as `Closed`, or keeps it for another client.
            (FakeBehaviour::Echo(accept), record @ Record::Close(_)) => {
                if accept.reuse_framed {
                    open_seen = false;
                    if let Err(error) = wire::write_record(&mut stream, &record).await {
                        let _ = events.send(LinkEvent::Failed {
                            link_idx,
                            error: format!("{error:#}"),
                        });
                        return;
                    }
                    continue;
                }
                Some(record)
            }
            (FakeBehaviour::Echo(_), Record::Request(payload)) if !open_seen => {
                match echo_response(&payload) {
                    Ok(response) => Some(response),
                    Err(error) => {
                        let _ = events.send(LinkEvent::Failed {
                            link_idx,
                            error: format!("{error:#}"),
                        });
                        return;
                    }
                }
            }
            _ => None,
        };
        open_seen = true;
        if let Some(reply) = reply
            && wire::write_record(&mut stream, &reply).await.is_err()
        {
            let _ = events.send(LinkEvent::Closed { link_idx });
            return;
        }
    }
}
