//! The backend library of wsgate: what every backend process needs to serve
//! clients that the gateway sends it, whatever the server does with them.
//!
//! - [`socket_file`]: binding `<docroot>/<name>`, replacing stale files, removal on exit.
//! - [`session`]: one client as a `Stream` + `Sink` of WebSocket messages,
//!   relayed over the link or (direct mode) on the client's own socket.
//! - [`carrier`]: fan-out, one message for many relayed clients of one
//!   gateway as one FANOUT record on its carrier link ([`Carrier`]).
//! - `direct`: the client's socket taken over in direct mode, kept alive and
//!   timed out as the gateway would.
//! - [`request`]: plain HTTP requests forwarded by the gateway (`--http`),
//!   answered by the server's [`RequestHandler`] beside its session handler.
//! - [`serve`]: the accept loop with the client limit and graceful shutdown.
//! - [`launch`]: the ouistiti command-line flags and process start-up.
//! - [`metrics`]: the backend's [`Metrics`] (sessions, messages, refusals and
//!   the server's own counters), served on `--metrics-listen`.
//!
//! A server (`servers`) uses this API and never sees a link record; the wire
//! format is the `link` crate's, and logging and signals are `lifecycle`'s.

pub mod carrier;
pub mod direct;
pub mod launch;
pub mod metrics;
pub mod request;
pub mod serve;
pub mod session;
pub mod socket_file;

pub use carrier::{Carrier, CarrierSendError};
pub use direct::DirectOptions;
pub use launch::{CommonArgs, LaunchError, launch};
pub use lifecycle::{LogFormat, init_tracing, token_cancelled_on_signal};
pub use link::{AcceptReply, CarrierTerms, LinkMode, OpenMeta, RejectReply};
pub use metrics::Metrics;
pub use request::{Request, RequestHandler, Response};
pub use serve::{Admission, Listener, ServeOptions, serve};
pub use session::{Connection, Incoming, Session, SessionError};
pub use socket_file::{BindError, SocketFile};
pub use tokio_tungstenite::tungstenite::Message;
pub use tokio_tungstenite::tungstenite::protocol::CloseFrame;
pub use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
