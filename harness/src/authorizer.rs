//! A test authorizer: a small hyper server on an ephemeral loopback port
//! that answers the gateway's `POST` as a test decides (a status and body,
//! or never), and records every question it was asked.
//!
//! Its task runs on the test's runtime and is aborted, with every
//! connection, when the [`Authorizer`] is dropped. [`Authorizer::n_waiting`]
//! counts the requests it is holding unanswered, so a test sees the gateway
//! give up on one (the connection closes and the request is dropped).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

use crate::{EVENT_DEADLINE, wait};

/// How the test authorizer answers one question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthorizerReply {
    /// This status and body (`Content-Type: application/json` when the body is not empty).
    Answer(u16, String),
    /// Never answers; the request is held until the gateway gives up.
    Hang,
}

impl AuthorizerReply {
    /// `200` with an empty body: authorized, no identity.
    pub fn ok() -> AuthorizerReply {
        AuthorizerReply::Answer(200, String::new())
    }
}

type Decide = dyn Fn(&serde_json::Value) -> AuthorizerReply + Send + Sync;

/// A running test authorizer; dropping it stops it.
#[derive(Debug)]
pub struct Authorizer {
    addr: SocketAddr,
    questions: mpsc::UnboundedReceiver<(serde_json::Value, hyper::HeaderMap)>,
    n_waiting: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Authorizer {
    /// Starts an authorizer on `127.0.0.1:0` that answers each question
    /// (the JSON body of the gateway's POST) with `decide(question)`.
    pub async fn start(
        decide: impl Fn(&serde_json::Value) -> AuthorizerReply + Send + Sync + 'static,
    ) -> anyhow::Result<Authorizer> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the test authorizer")?;
        let addr = listener.local_addr()?;
        let (sender, questions) = mpsc::unbounded_channel();
        let n_waiting = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(serve(
            listener,
            Arc::new(decide),
            sender,
            Arc::clone(&n_waiting),
        ));
        Ok(Authorizer {
            addr,
            questions,
            n_waiting,
            task,
        })
    }

    /// The URL to give `wsgate --authorizer`.
    pub fn url(&self) -> String {
        format!("http://{}/authorize", self.addr)
    }

    /// The next question the gateway asked, within [`EVENT_DEADLINE`].
    pub async fn next_question(&mut self) -> anyhow::Result<serde_json::Value> {
        Ok(self.next_question_and_headers().await?.0)
    }

    /// The next question and the request headers it came with, within [`EVENT_DEADLINE`].
    pub async fn next_question_and_headers(
        &mut self,
    ) -> anyhow::Result<(serde_json::Value, hyper::HeaderMap)> {
        wait::within(
            "a question to the authorizer",
            EVENT_DEADLINE,
            self.questions.recv(),
        )
        .await?
        .context("the authorizer's task ended")
    }

    /// A question already asked, without waiting.
    pub fn try_question(&mut self) -> Option<serde_json::Value> {
        self.questions.try_recv().ok().map(|(question, _)| question)
    }

    /// Requests held unanswered ([`AuthorizerReply::Hang`]) right now.
    pub fn n_waiting(&self) -> usize {
        self.n_waiting.load(Ordering::SeqCst)
    }
}

impl Drop for Authorizer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An address on which nothing listens (bound, then closed), for an
/// authorizer that refuses connections.
pub async fn refusing_url() -> anyhow::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    drop(listener);
    Ok(format!("http://{addr}/authorize"))
}

/// Counts a held request until it is dropped.
struct Waiting(Arc<AtomicUsize>);

impl Waiting {
    fn new(count: &Arc<AtomicUsize>) -> Waiting {
        count.fetch_add(1, Ordering::SeqCst);
        Waiting(Arc::clone(count))
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn serve(
    listener: TcpListener,
    decide: Arc<Decide>,
    questions: mpsc::UnboundedSender<(serde_json::Value, hyper::HeaderMap)>,
    n_waiting: Arc<AtomicUsize>,
) {
    // Owning the connection tasks here means aborting this task aborts them all.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { return };
                let decide = Arc::clone(&decide);
                let questions = questions.clone();
                let n_waiting = Arc::clone(&n_waiting);
                let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let decide = Arc::clone(&decide);
                    let questions = questions.clone();
                    let n_waiting = Arc::clone(&n_waiting);
                    async move {
                        let (parts, body) = request.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|collected| collected.to_bytes())
                            .unwrap_or_default();
                        let question = serde_json::from_slice(&body).unwrap_or_else(|_| {
                            serde_json::Value::String(String::from_utf8_lossy(&body).into_owned())
                        });
                        let reply = decide(&question);
                        let _ = questions.send((question, parts.headers));
                        let (status, body) = match reply {
                            AuthorizerReply::Answer(status, body) => (status, body),
                            AuthorizerReply::Hang => {
                                let _waiting = Waiting::new(&n_waiting);
                                std::future::pending().await
                            }
                        };
                        let mut response = hyper::Response::new(Full::new(Bytes::from(body.clone())));
                        *response.status_mut() = hyper::StatusCode::from_u16(status)
                            .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
                        if !body.is_empty() {
                            response.headers_mut().insert(
                                hyper::header::CONTENT_TYPE,
                                hyper::header::HeaderValue::from_static("application/json"),
                            );
                        }
                        Ok::<_, Infallible>(response)
                    }
                });
                connections.spawn(async move {
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}
