//! Starting a backend process the ouistiti way: the common flags
//! (`-R -n -u -m -D`), binding the socket file, dropping privileges,
//! daemonizing, and running [`crate::serve()`] until SIGTERM or SIGINT.
//!
//! Each server's `main` parses its own flags (flattening [`CommonArgs`]) and
//! calls [`launch`]; what the server does with a session stays in its handler.

use std::ffi::CString;
use std::future::Future;
use std::path::PathBuf;

use nix::unistd::{Uid, User};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use lifecycle::token_cancelled_on_signal;

use crate::serve::{Listener, ServeOptions, serve};
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
    /// Clients served at once; the next one gets close code 1013.
    #[arg(
        short = 'm',
        long = "max-clients",
        value_name = "N",
        default_value_t = 50
    )]
    pub max_clients: usize,
    /// Detach from the terminal and run in the background (logs are then discarded).
    #[arg(short = 'D', long = "daemon")]
    pub daemonize: bool,
}

impl CommonArgs {
    /// The socket name: `-n`, or else `program`'s own name.
    pub fn name_or(&self, program: &str) -> String {
        self.name.clone().unwrap_or_else(|| program.to_owned())
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
    /// The runtime or the listening socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Runs a backend: binds `<docroot>/<name>`, drops privileges, daemonizes if
/// asked, runs `setup` (as the final user) to build the handler, then serves
/// until SIGTERM or SIGINT and removes the socket file.
pub fn launch<S, H, F>(
    common: &CommonArgs,
    program: &str,
    mut options: ServeOptions,
    setup: S,
) -> Result<(), LaunchError>
where
    S: FnOnce() -> Result<H, LaunchError>,
    H: Fn(Session, CancellationToken) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
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
    let mut socket_file = SocketFile::bind(&common.docroot, &name)?;
    if let Some(user) = &user {
        drop_privileges(&socket_file, user)?;
    }
    if common.daemonize {
        // Forking is only safe before the runtime starts its threads.
        nix::unistd::daemon(false, false).map_err(LaunchError::Daemonize)?;
    }
    let handler = setup()?;
    options.max_clients = common.max_clients;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let listener = Listener::new(&mut socket_file)?;
        let shutdown = token_cancelled_on_signal()?;
        serve(listener, options, shutdown, handler).await
    })?;
    drop(socket_file);
    Ok(())
}

fn drop_privileges(socket_file: &SocketFile, user: &User) -> Result<(), LaunchError> {
    let privileges = |source| LaunchError::Privileges {
        user: user.name.clone(),
        source,
    };
    if !Uid::effective().is_root() {
        if user.uid != Uid::effective() {
            warn!(user = %user.name, "not started as root; -u ignored, running as the current user");
        }
        return Ok(());
    }
    socket_file.chown(user.uid, user.gid).map_err(|error| {
        privileges(nix::Error::from_raw(
            error.raw_os_error().unwrap_or(nix::libc::EIO),
        ))
    })?;
    let c_name = CString::new(user.name.as_bytes()).map_err(|_| privileges(nix::Error::EINVAL))?;
    nix::unistd::initgroups(&c_name, user.gid).map_err(privileges)?;
    nix::unistd::setgid(user.gid).map_err(privileges)?;
    nix::unistd::setuid(user.uid).map_err(privileges)?;
    info!(user = %user.name, uid = user.uid.as_raw(), "dropped privileges");
    Ok(())
}
