//! Starting a backend process the ouistiti way: the common flags
//! (`-R -n -u -m -D`, and the link deadlines), raising the descriptor limit,
//! binding the socket file under a hidden name, dropping privileges,
//! daemonizing, running the server's set-up, publishing the socket under its
//! name, and running [`crate::serve()`] until SIGTERM or SIGINT, with the
//! metrics on `--metrics-listen` when given.
//!
//! Each server's `main` parses its own flags (flattening [`CommonArgs`]) and
//! calls [`launch`]; what the server does with a session stays in its handler.

use std::ffi::CString;
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nix::unistd::{Uid, User};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use lifecycle::{LogFormat, metrics_endpoint, token_cancelled_on_signal};

use crate::serve::{
    DEFAULT_HANDOFF_TIMEOUT, DEFAULT_MAX_PENDING_LINKS, DEFAULT_OPEN_TIMEOUT, Listener,
    ServeOptions, serve,
};
use crate::session::Session;
use crate::socket_file::{BindError, SocketFile};

/// The flags every wsgate backend shares with ouistiti's websocket servers.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Directory holding the WebSocket sockets (the gateway's docroot); created if missing.
    #[arg(
        short = 'R',
        long = "root",
        value_name = "DIR",
        default_value = "/var/run/websocket"
    )]
    pub docroot: PathBuf,
    /// Name of the socket under the docroot, which is the name clients ask for [default: the program name].
    #[arg(short = 'n', long = "name", value_name = "NAME")]
    pub name: Option<String>,
    /// When started as root, run as this user after binding the socket.
    #[arg(short = 'u', long = "user", value_name = "USER")]
    pub user: Option<String>,
    /// Clients served at once; the next one gets close code 1013 [default: the
    /// descriptor limit (soft RLIMIT_NOFILE, which start-up raises to the hard
    /// limit) minus 64 for the process itself and 2 for each --max-pending link,
    /// so 192 fewer than the limit with the defaults, and 64 more for carrier
    /// links in a server that fans out (websocket_chat); 1024 is taken as the
    /// limit if it cannot be read].
    #[arg(short = 'm', long = "max-clients", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_clients: Option<u32>,
    /// Links from the gateway not yet sessions (waiting for OPEN or HANDOFF) held
    /// at once; further links wait in the socket's backlog.
    #[arg(long = "max-pending", value_name = "N", default_value_t = DEFAULT_MAX_PENDING_LINKS as u32, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_pending_links: u32,
    /// Seconds a new link may take to send OPEN before it is closed (fractions
    /// allowed); also how long a direct-mode link offered for reuse waits for
    /// its next client's OPEN.
    #[arg(long = "open-timeout", value_name = "SECS", default_value_t = DEFAULT_OPEN_TIMEOUT.as_secs_f64(), value_parser = parse_seconds)]
    pub open_timeout: f64,
    /// Seconds the gateway may take after OPEN to read ACCEPT and, in direct mode,
    /// to hand the client's socket over (HANDOFF) before the link is closed.
    #[arg(long = "handoff-timeout", value_name = "SECS", default_value_t = DEFAULT_HANDOFF_TIMEOUT.as_secs_f64(), value_parser = parse_seconds)]
    pub handoff_timeout: f64,
    /// Detach from the terminal and run in the background (logs are then discarded).
    #[arg(short = 'D', long = "daemon")]
    pub daemonize: bool,
    /// Log lines on stderr as `text` or `json` (one object per line, for a
    /// log collector).
    #[arg(long = "log-format", value_name = "FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Serve this backend's metrics on `ip:port`: `GET /metrics` in the
    /// Prometheus text format (docs/metrics.md). Prints `metrics on
    /// http://<addr>/metrics` once bound. Keep it on loopback [default: none].
    #[arg(long = "metrics-listen", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// Runtime threads. 1 runs every client on one thread and saves the
    /// wake-ups between threads (cheapest per client and per message; caps
    /// the server at one CPU) [default: the number of CPUs].
    #[arg(long = "threads", value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: Option<u16>,
}

impl CommonArgs {
    /// The socket name: `-n`, or else `program`'s own name.
    pub fn name_or(&self, program: &str) -> String {
        self.name.clone().unwrap_or_else(|| program.to_owned())
    }

    /// `options` with the limits and deadlines of these flags; `nofile` is
    /// the descriptor limit in force, which `-m`'s default is computed from.
    pub fn apply_to(&self, mut options: ServeOptions, nofile: Option<u64>) -> ServeOptions {
        let max_pending_links = self.max_pending_links as usize;
        options.max_pending_links = max_pending_links;
        options.max_clients = match self.max_clients {
            Some(max_clients) => max_clients as usize,
            None => {
                // A server that fans out may hold a carrier link per gateway process.
                let carriers = if options.fanout.is_some() {
                    crate::carrier::MAX_CARRIERS
                } else {
                    0
                };
                default_max_clients(nofile, max_pending_links)
                    .saturating_sub(carriers)
                    .max(1)
            }
        };
        options.open_timeout = Duration::from_secs_f64(self.open_timeout);
        options.handoff_timeout = Duration::from_secs_f64(self.handoff_timeout);
        options
    }
}

/// Descriptors kept for the process itself: standard streams, the runtime's
/// epoll and wakers, the listening socket, what the server's set-up opens
/// (plugins, databases, logs).
pub const PROCESS_FD_RESERVE: u64 = 64;

/// The limit assumed when `RLIMIT_NOFILE` cannot be read.
const FALLBACK_NOFILE: u64 = 1024;

/// `-m`'s default: each client holds one descriptor (its link, or its own
/// socket in direct mode); each pending link at most two (link and handed-over
/// socket); the process keeps [`PROCESS_FD_RESERVE`]. What remains of the
/// descriptor limit is for clients, at least one.
pub fn default_max_clients(nofile: Option<u64>, max_pending_links: usize) -> usize {
    let nofile = nofile.unwrap_or(FALLBACK_NOFILE);
    let reserve = PROCESS_FD_RESERVE.saturating_add(2 * max_pending_links as u64);
    let max_clients = nofile.saturating_sub(reserve).max(1);
    usize::try_from(max_clients)
        .unwrap_or(usize::MAX)
        .min(tokio::sync::Semaphore::MAX_PERMITS)
}

fn parse_seconds(text: &str) -> Result<f64, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if seconds > 0.0 && Duration::try_from_secs_f64(seconds).is_ok() {
        Ok(seconds)
    } else {
        Err(format!("{text:?} is not a positive number of seconds"))
    }
}

/// Why a backend could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// `-u` names no user of this system.
    #[error("user {0:?} does not exist")]
    UnknownUser(String),
    /// Looking up or switching to the `-u` user failed.
    #[error("cannot switch to user {user:?}: {source}")]
    Privileges {
        /// The user.
        user: String,
        /// The cause.
        #[source]
        source: nix::Error,
    },
    /// The socket could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// Detaching from the terminal failed.
    #[error("cannot daemonize: {0}")]
    Daemonize(#[source] nix::Error),
    /// The server's own setup failed (loading plugins, say).
    #[error(transparent)]
    Setup(Box<dyn std::error::Error + Send + Sync>),
    /// The `--metrics-listen` address cannot be bound.
    #[error("cannot bind the metrics address {addr}: {source}")]
    Metrics {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The runtime or the listening socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Runs a backend: raises the descriptor limit, binds a hidden socket file
/// next to `<docroot>/<name>`, drops privileges, daemonizes if asked, runs
/// `setup` (as the final user) to build the handler, and only then renames the
/// socket to `<docroot>/<name>`, so the gateway never routes a client to a
/// server whose set-up fails. Then serves until SIGTERM or SIGINT and removes
/// the socket file.
pub fn launch<S, H, F>(
    common: &CommonArgs,
    program: &str,
    options: ServeOptions,
    setup: S,
) -> Result<(), LaunchError>
where
    S: FnOnce() -> Result<H, LaunchError>,
    H: Fn(Session, CancellationToken) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let nofile = lifecycle::raise_nofile_limit();
    let options = common.apply_to(options, nofile);
    let user = match &common.user {
        None => None,
        Some(name) => Some(
            User::from_name(name)
                .map_err(|source| LaunchError::Privileges {
                    user: name.clone(),
                    source,
                })?
                .ok_or_else(|| LaunchError::UnknownUser(name.clone()))?,
        ),
    };
    let name = common.name_or(program);
    // Bound as the starting user (a low port may need root), and announced
    // while stdout is still the caller's (before daemonizing).
    let metrics_listener = common
        .metrics_listen
        .map(|addr| bind_metrics(addr).map_err(|source| LaunchError::Metrics { addr, source }))
        .transpose()?;
    let mut socket_file = SocketFile::bind_hidden(&common.docroot, &name)?;
    let saved_root = match &user {
        Some(user) => drop_privileges(&socket_file, user)?,
        None => None,
    };
    if common.daemonize {
        // Forking is only safe before the runtime starts its threads.
        nix::unistd::daemon(false, false).map_err(LaunchError::Daemonize)?;
    }
    let handler = match setup() {
        Ok(handler) => handler,
        Err(error) => {
            as_saved_root(saved_root.as_ref(), || drop(socket_file))?;
            return Err(error);
        }
    };
    as_saved_root(saved_root.as_ref(), || socket_file.publish())??;
    if let Some(saved_root) = saved_root {
        saved_root.give_up()?;
    }
    info!(
        max_clients = options.max_clients,
        max_pending_links = options.max_pending_links,
        open_timeout = ?options.open_timeout,
        handoff_timeout = ?options.handoff_timeout,
        "serving"
    );
    let threads = common
        .threads
        .map_or_else(lifecycle::default_threads, usize::from);
    let runtime = lifecycle::runtime(threads)?;
    runtime.block_on(async {
        let listener = Listener::new(&mut socket_file)?;
        let shutdown = token_cancelled_on_signal()?;
        if let Some(metrics_listener) = metrics_listener {
            let metrics_listener = tokio::net::TcpListener::from_std(metrics_listener)?;
            tokio::spawn(metrics_endpoint::serve(
                metrics_listener,
                Arc::new(options.metrics.clone()),
                shutdown.clone(),
            ));
        }
        serve(listener, options, shutdown, handler).await
    })?;
    drop(socket_file);
    Ok(())
}

/// Binds the metrics listener and prints its announcement on stdout.
fn bind_metrics(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let line = metrics_endpoint::announcement(listener.local_addr()?);
    // A closed stdout only loses the announcement.
    let _ = writeln!(std::io::stdout(), "{line}");
    Ok(listener)
}

/// The `-u` user's ids are in force, except the saved set-user-id, still
/// root, so that renaming or removing the hidden socket works in a docroot
/// only root may write to. [`SavedRoot::give_up`] drops it for good.
#[derive(Debug)]
struct SavedRoot {
    user: User,
}

impl SavedRoot {
    fn error(&self, source: nix::Error) -> LaunchError {
        LaunchError::Privileges {
            user: self.user.name.clone(),
            source,
        }
    }

    /// Runs `operation` with root as the effective user, then switches back.
    fn as_root<T>(&self, operation: impl FnOnce() -> T) -> Result<T, LaunchError> {
        nix::unistd::seteuid(Uid::from_raw(0)).map_err(|error| self.error(error))?;
        let value = operation();
        nix::unistd::seteuid(self.user.uid).map_err(|error| self.error(error))?;
        Ok(value)
    }

    /// Every user id becomes the user's; root cannot be regained.
    fn give_up(self) -> Result<(), LaunchError> {
        let uid = self.user.uid;
        nix::unistd::setresuid(uid, uid, uid).map_err(|error| self.error(error))?;
        info!(user = %self.user.name, uid = uid.as_raw(), "dropped privileges");
        Ok(())
    }
}

fn as_saved_root<T>(
    saved_root: Option<&SavedRoot>,
    operation: impl FnOnce() -> T,
) -> Result<T, LaunchError> {
    match saved_root {
        Some(saved_root) => saved_root.as_root(operation),
        None => Ok(operation()),
    }
}

/// Switches to `user` (groups, gid, real and effective uid), keeping root as
/// the saved uid until the socket is published; see [`SavedRoot`]. `None`
/// when not started as root: then `-u` is ignored.
fn drop_privileges(
    socket_file: &SocketFile,
    user: &User,
) -> Result<Option<SavedRoot>, LaunchError> {
    let privileges = |source| LaunchError::Privileges {
        user: user.name.clone(),
        source,
    };
    if !Uid::effective().is_root() {
        if user.uid != Uid::effective() {
            warn!(user = %user.name, "not started as root; -u ignored, running as the current user");
        }
        return Ok(None);
    }
    socket_file.chown(user.uid, user.gid).map_err(|error| {
        privileges(nix::Error::from_raw(
            error.raw_os_error().unwrap_or(nix::libc::EIO),
        ))
    })?;
    let c_name = CString::new(user.name.as_bytes()).map_err(|_| privileges(nix::Error::EINVAL))?;
    nix::unistd::initgroups(&c_name, user.gid).map_err(privileges)?;
    nix::unistd::setgid(user.gid).map_err(privileges)?;
    nix::unistd::setresuid(user.uid, user.uid, Uid::from_raw(0)).map_err(privileges)?;
    Ok(Some(SavedRoot { user: user.clone() }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_max_clients_is_the_descriptor_limit_less_the_reserve() {
        let check = |nofile: Option<u64>, max_pending: usize, expected: usize| {
            assert_eq!(
                default_max_clients(nofile, max_pending),
                expected,
                "{nofile:?} {max_pending}"
            );
        };
        check(Some(1024), 64, 1024 - 64 - 128);
        check(Some(20_000), 64, 20_000 - 192);
        check(Some(1_048_576), 64, 1_048_576 - 192);
        check(Some(300), 4, 300 - 64 - 8);
        check(None, 64, 1024 - 192);
        check(Some(100), 64, 1);
    }

    #[test]
    fn setup_runs_before_the_socket_has_its_name() {
        let docroot = tempfile::tempdir().expect("tempdir");
        let socket_path = docroot.path().join("server");
        let common = CommonArgs {
            docroot: docroot.path().to_owned(),
            name: Some("server".to_owned()),
            user: None,
            max_clients: None,
            max_pending_links: 4,
            open_timeout: 1.0,
            handoff_timeout: 1.0,
            daemonize: false,
            log_format: LogFormat::Text,
            metrics_listen: None,
            threads: None,
        };
        let mut seen_at_setup = None;
        let result = launch(&common, "server", ServeOptions::default(), || {
            seen_at_setup = Some(socket_path.exists());
            Err::<fn(Session, CancellationToken) -> std::future::Ready<()>, _>(LaunchError::Setup(
                "set-up failed as asked".into(),
            ))
        });
        assert!(matches!(result, Err(LaunchError::Setup(_))), "{result:?}");
        assert_eq!(
            seen_at_setup,
            Some(false),
            "no socket under its name during set-up"
        );
        assert!(!socket_path.exists());
        let leftovers: Vec<_> = std::fs::read_dir(docroot.path())
            .expect("read docroot")
            .collect();
        assert!(leftovers.is_empty(), "hidden socket removed: {leftovers:?}");
    }
}
