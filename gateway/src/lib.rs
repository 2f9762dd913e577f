//! The wsgate gateway: HTTP/1.1, static files, the WebSocket handshake, routing
//! a request path to a backend's UNIX socket, and relaying messages over the link.
//!
//! The `wsgate` binary (`src/bin/wsgate.rs`) only parses flags, sets up logging,
//! binds the listeners and calls [`serve`]. Everything else lives here, one
//! concept per module:
//!
//! - `config`: the command line ([`Args`]), the TOML file, and the validated [`Config`].
//! - `access`: who may reach what: the allow/deny/raw globs on names and the Origin rule.
//! - `route`: request path → backend name → socket path under the docroot.
//! - `handshake`: RFC 6455 request validation and the `101` response.
//! - `deflate`: permessage-deflate negotiation (RFC 7692) and the names it is off for.
//! - `refusal`: every way an upgrade is refused, each with exactly one HTTP status.
//! - `backend`: connecting to a backend and the OPEN → ACCEPT/REJECT exchange.
//! - `authorizer`: the webhook asked before a client is connected (`--authorizer`).
//! - `forward`: plain HTTP requests to `--http` names as REQUEST/RESPONSE records.
//! - `relay`: messages between a client and its backend until one side closes
//!   (`relay::framed` for the link protocol, `relay::raw` for ouistiti's raw mode).
//! - `handoff`: direct mode, the client's socket handed to the backend after the `101`.
//! - `link_pool`: idle links (direct and framed) that backends offered for the next client.
//! - `carrier`: fan-out's carrier links, one per backend socket that asks,
//!   whose FANOUT records are read once and queued for each client they name.
//! - `upgrade`: one upgrade request from handshake to the spawned relay.
//! - `first_request`: a connection's first request head, read before hyper; an
//!   upgrade is answered from it without hyper.
//! - `connection`: one TCP connection: an upgrade as its first request, or
//!   hyper serving it; dispatches each request.
//! - `http_connections`: connections not yet upgraded, per address, and which to shed first.
//! - `static_files`: files from `--htdocs` through tower-http's `ServeDir`.
//! - `response`: the response body type and plain-text responses.
//! - `activation`: listening sockets bound with SO_REUSEPORT, or inherited
//!   (`LISTEN_FDS`: systemd socket activation, a supervising `wsgate`).
//! - `workers`: `--workers N`, the supervisor of N gateway processes on the same sockets.
//! - `server`: the accept loops, the configuration snapshot every request takes,
//!   the connection limit, drain and graceful shutdown ([`serve`]).
//! - `reload`: SIGHUP reads the configuration again ([`ConfigSource`]) and swaps it in.
//! - `supervisor`: the `[[backend]]` processes, started, restarted and stopped ([`Supervisor`]).
//! - `metrics`: the registry served on `--metrics-listen` (`docs/metrics.md`).
//! - `tls`: TLS termination for `--tls-listen` ([`Tls`]): handshakes under a deadline
//!   and a bound, client certificates, the certificate reloaded on SIGHUP.
//! - `client_stream`: the client's transport (TCP or TLS) that everything above is generic over.
//!
//! Only what the binary needs is public; the gateway depends on the `link`
//! crate for the wire format and on `lifecycle` for logging and signals, and
//! on nothing of the backends.

mod access;
mod activation;
mod authorizer;
mod backend;
mod carrier;
mod client_stream;
mod config;
mod connection;
mod deflate;
mod first_request;
mod forward;
mod handoff;
mod handshake;
mod http_connections;
mod link_pool;
mod metrics;
mod refusal;
mod relay;
mod reload;
mod response;
mod route;
mod server;
mod static_files;
mod supervisor;
mod tls;
mod upgrade;
mod workers;

#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzz_api;

pub use activation::{ActivationError, InheritedSockets, take_inherited_sockets};
pub use authorizer::AuthorizerConfigError;
pub use config::{Args, Config, ConfigError};
pub use forward::HttpGlobError;
pub use reload::ConfigSource;
pub use server::{Listeners, bind_all, serve};
pub use supervisor::{BackendConfigError, Supervisor, SupervisorError};
pub use tls::{CertificateError, Tls, TlsError};
pub use workers::{WORKER_ENV, WorkersError, become_worker, run_workers};
