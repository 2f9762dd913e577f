//! The harness of the end-to-end tests (`tests`) and the benchmark (`bench`):
//! runs the real `wsgate` and backend binaries on temporary docroots and
//! ephemeral ports, waits until they are ready, and talks to them as clients do.
//!
//! - [`authorizer`]: [`Authorizer`], a hyper server that answers the gateway's
//!   authorizer requests as a test decides, and records them.
//! - [`browser`]: [`browser::Browser`], headless chromium over WebDriver for the page tests.
//! - [`binaries`]: finds the built binaries in the target directory (or `WSGATE_BIN_DIR`).
//! - [`child`]: the process guard every child shares (own process group, stderr to a file,
//!   kill and reap on drop), with test or benchmark [`child::Logging`].
//! - [`backend`]: [`Backend`], a backend process that is ready once its socket accepts.
//! - [`gateway`]: [`Gateway`], the `wsgate` process, ready once it printed `listening on`
//!   (and [`gateway::start_announcing`] for any server that announces itself so).
//! - [`client`]: [`Client`], a WebSocket client whose every read has a deadline.
//! - [`http`]: raw HTTP/1.1 requests with exact control over headers, for refusals.
//! - [`metrics`]: scraping a `--metrics-listen` endpoint and reading its samples.
//! - [`fake_backend`]: [`FakeBackend`], an in-process framed backend that records its links.
//! - [`hostile_backend`]: [`hostile_backend::HostileBackend`], a backend that breaks the link
//!   protocol on purpose, with a byte-level encoder of its own.
//!
//! Nothing of the product depends on this crate.
//! - [`redis`]: [`redis::RedisServer`], a `redis-server` of a test's own on a free loopback port,
//!   killed and restarted on the same port at will.
//! - [`mode`]: [`Mode`], relay, direct or TLS, and [`all_modes!`] to run a suite in each.
//! - [`processes`]: the children of a process through `/proc` (a gateway's supervised backends
//!   and workers, `websocket_exec`'s programs), with their state.
//! - [`tls`]: a test CA (rcgen), client configurations trusting it, the plain-or-TLS client stream.
//! - [`trials`]: [`trials::run_trials`], the libtest-mimic runner of the tests that report themselves ignored.
//! - [`wait`]: waiting on a fact under a deadline, the only way these tests wait.
//! - [`wire`]: link records read and written byte by byte, independent of the `link` codec.
//!
//! Every wait has a deadline that is only an upper bound: nothing here sleeps
//! for a fixed time and hopes. Each child's stderr goes to a file that is printed
//! when its guard is dropped, so the log of a failing test shows in its output
//! (libtest captures it for passing tests).
#![warn(missing_docs)]

pub mod authorizer;
pub mod backend;
pub mod binaries;
pub mod browser;
pub mod child;
pub mod client;
pub mod fake_backend;
pub mod gateway;
pub mod hostile_backend;
pub mod http;
pub mod metrics;
pub mod mode;
pub mod processes;
pub mod redis;
pub mod tls;
pub mod trials;
pub mod wait;
pub mod wire;

use std::time::Duration;

pub use authorizer::{Authorizer, AuthorizerReply};
pub use backend::Backend;
pub use binaries::bin_path;
pub use client::Client;
pub use fake_backend::{FakeBackend, FakeBehaviour, LinkEvent};
pub use gateway::Gateway;
pub use http::{HandshakeRequest, HttpResponse};
pub use link::{AcceptReply, OpenMeta, Record, RejectReply};
pub use mode::Mode;
pub use tokio_tungstenite::tungstenite::Message;
pub use tokio_tungstenite::tungstenite::protocol::CloseFrame;
pub use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// Upper bound for a process to become ready (socket accepts, address printed).
/// Generous because the machine may be busy compiling.
pub const STARTUP_DEADLINE: Duration = Duration::from_secs(20);

/// Upper bound for one expected event: a message, a close, a status line.
pub const EVENT_DEADLINE: Duration = Duration::from_secs(10);

/// Upper bound for a process to exit after it was asked to.
pub const EXIT_DEADLINE: Duration = Duration::from_secs(10);
