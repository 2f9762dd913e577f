//! Plain HTTP requests answered from the `--htdocs` directory through
//! tower-http's `ServeDir`, which handles MIME types, ranges, conditional
//! requests, `index.html` for directories and path traversal.

use std::path::Path;

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tower::ServiceExt;
use tower_http::services::ServeDir;

use crate::response::{self, Body};

/// The static file service, or 404 for everything when there is no htdocs.
#[derive(Debug, Clone)]
pub(crate) struct StaticFiles {
    serve_dir: Option<ServeDir>,
}

impl StaticFiles {
    pub(crate) fn new(htdocs: Option<&Path>) -> StaticFiles {
        StaticFiles {
            serve_dir: htdocs.map(ServeDir::new),
        }
    }

    /// Answers `request` with a file, a redirect, or an error status.
    pub(crate) async fn serve(&self, request: Request<Incoming>) -> Response<Body> {
        let Some(serve_dir) = &self.serve_dir else {
            return response::text(StatusCode::NOT_FOUND, "not found");
        };
        match serve_dir.clone().oneshot(request).await {
            Ok(response) => {
                let mut response = response.map(|body| body.boxed_unsync());
                if response.status() == StatusCode::NOT_FOUND {
                    response = response::text(StatusCode::NOT_FOUND, "not found");
                }
                response
            }
            Err(never) => match never {},
        }
    }
}
