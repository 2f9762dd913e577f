//! The authorizer client against a small hyper server on loopback: each
//! status maps to its verdict, a silent server is a timeout, a closed port
//! is unavailable, and the token list loads from a URL the same way.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use backend::OpenMeta;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::{Authorizer, Verdict};
use crate::broker::token_list;

/// What the server saw: the peer header and the body.
type Seen = Arc<Mutex<Vec<(String, String)>>>;

/// Serves `answer(body)` as the status (and `{"ok":true}` as the body) until dropped.
async fn serve(answer: fn(&str) -> u16) -> (SocketAddr, Seen, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("loopback binds");
    let addr = listener.local_addr().expect("bound address");
    let seen: Seen = Arc::default();
    let recorded = Arc::clone(&seen);
    let server = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let recorded = Arc::clone(&recorded);
            tokio::spawn(async move {
                let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let recorded = Arc::clone(&recorded);
                    async move {
                        let peer = request
                            .headers()
                            .get("x-wsgate-peer")
                            .and_then(|value| value.to_str().ok())
                            .unwrap_or_default()
                            .to_owned();
                        let body = request
                            .into_body()
                            .collect()
                            .await
                            .map(|body| body.to_bytes())
                            .unwrap_or_default();
                        let body = String::from_utf8_lossy(&body).into_owned();
                        let status = answer(&body);
                        recorded
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push((peer, body));
                        if status == 0 {
                            // Never answer: the client's timeout must end the wait.
                            std::future::pending::<()>().await;
                        }
                        let response = hyper::Response::builder()
                            .status(status)
                            .body(Full::new(Bytes::from_static(br#"{"ok":true}"#)))
                            .unwrap_or_default();
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, seen, server)
}

fn meta() -> OpenMeta {
    serde_json::from_value(serde_json::json!({
        "version": 1, "mode": "framed", "id": 1, "name": "broker",
        "path": "/broker", "query": "user=é", "peer": "127.0.0.1:5555",
    }))
    .expect("a valid OPEN")
}

#[tokio::test]
async fn statuses_map_to_verdicts_and_the_request_says_who_asks() {
    let (addr, seen, server) = serve(|body| match body {
        "ok" => 200,
        "deny" => 403,
        "down" => 503,
        "teapot" => 418,
        _ => 0,
    })
    .await;
    let authorizer = Authorizer::new(
        &format!("http://{addr}/check"),
        Duration::from_millis(500),
        2,
    )
    .expect("a valid URL");
    for (body, verdict) in [
        ("ok", Verdict::Allowed),
        ("deny", Verdict::Denied(403)),
        ("teapot", Verdict::Denied(418)),
        (
            "down",
            Verdict::Unavailable("authorizer answered 503".to_owned()),
        ),
        (
            "silent",
            Verdict::Unavailable("no answer within 500ms".to_owned()),
        ),
    ] {
        assert_eq!(authorizer.check(body, &meta()).await, verdict, "{body}");
    }
    let seen = seen.lock().unwrap_or_else(PoisonError::into_inner).clone();
    assert_eq!(seen[0], ("127.0.0.1:5555".to_owned(), "ok".to_owned()));
    server.abort();
}

#[tokio::test]
async fn a_closed_port_is_unavailable_and_bad_urls_are_refused() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("loopback binds")
        .port();
    let authorizer = Authorizer::new(
        &format!("http://127.0.0.1:{port}/"),
        Duration::from_secs(2),
        1,
    )
    .expect("a valid URL");
    assert!(matches!(
        authorizer.check("{}", &meta()).await,
        Verdict::Unavailable(_)
    ));
    for bad in ["https://example.com/", "/relative", "not a url", "ftp://x/"] {
        assert!(
            Authorizer::new(bad, Duration::from_secs(1), 1).is_err(),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn the_token_list_loads_from_a_url() {
    let (addr, _seen, server) = serve(|_| 200).await;
    let tokens = token_list::load(&format!("http://{addr}/tokens"))
        .await
        .expect("the list loads");
    assert_eq!(tokens.into_iter().collect::<Vec<_>>(), ["ok"]);
    server.abort();
}
