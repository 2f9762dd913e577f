//! Live reload: on SIGHUP the `--config` file is read again and what it
//! says replaces the running configuration for new requests and clients
//! (open clients keep theirs), and the supervised backends follow it.
//!
//! [`ConfigSource`] is where the configuration comes from: the command line,
//! and through `--config` the file, read at start-up and on each SIGHUP
//! (flags still override the file). A reload is all or nothing: a file that
//! does not parse or validate, a `htdocs` that is not a directory, a backend
//! command or user that cannot be used, or a certificate that does not load
//! leaves everything as it was and is logged in one line with its reason.
//! The settings that need a restart (`listen`, `tls_listen`, `docroot`;
//! `Config::reload` decides) keep their running values, each logged once
//! per reload as needing a restart.
//!
//! Building the new snapshot is `server::Shared::with_config`'s job; this
//! module reads, checks, swaps and logs.

use std::sync::Arc;

use tokio::signal::unix::Signal;
use tokio_util::sync::CancellationToken;

use crate::config::{Args, Config, ConfigError};
use crate::server::{Live, Shared};
use crate::supervisor::Supervisor;
use crate::tls::{Tls, TlsError};

/// Where the configuration comes from: the command line, and the
/// `--config` file it names, read again on every reload.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    args: Args,
}

impl ConfigSource {
    /// The configuration of `args` (with its `--config` file).
    pub fn new(args: Args) -> ConfigSource {
        ConfigSource { args }
    }

    /// Reads and validates the configuration, including what must exist on
    /// the host (`Config::check_paths`).
    pub fn load(&self) -> Result<Config, ConfigError> {
        let config = Config::from_args(self.args.clone())?;
        config.check_paths()?;
        Ok(config)
    }
}

/// Why a reload was refused.
#[derive(Debug, thiserror::Error)]
enum ReloadError {
    /// The configuration is invalid, or names what the host lacks.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The certificate, key or client CA does not load.
    #[error("TLS certificate not reloaded")]
    Tls(#[from] TlsError),
}

/// What a reload checked and built, ready to be swapped in.
struct Prepared {
    config: Config,
    tls: Option<Arc<Tls>>,
    /// Settings whose change needs a restart.
    needs_restart: Vec<&'static str>,
}

/// Reloads on every SIGHUP until shutdown.
pub(crate) async fn reload_on_hangup(
    mut hangups: Signal,
    live: Arc<Live>,
    source: ConfigSource,
    supervisor: Arc<Supervisor>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            received = hangups.recv() => if received.is_none() { return },
            () = shutdown.cancelled() => return,
        }
        let running = live.load_full();
        let args = source.args.clone();
        // Files, certificates and the user database are read off the I/O threads.
        let prepared = tokio::task::spawn_blocking(move || prepare(&args, &running)).await;
        match prepared {
            Ok(Ok(prepared)) => apply(prepared, &live, &supervisor),
            Ok(Err(error)) => tracing::error!(
                "configuration not reloaded, the running one stays: {}",
                one_line(&error)
            ),
            Err(error) => tracing::error!(%error, "configuration not reloaded: the reload failed"),
        }
    }
}

/// Reads and checks the configuration and builds what needs the files.
fn prepare(args: &Args, running: &Shared) -> Result<Prepared, ReloadError> {
    let (config, needs_restart) = Config::reload(args, &running.config)?;
    config.check_paths()?;
    let tls = match (&config.tls, &running.tls) {
        (Some(settings), Some(tls)) => Some(Arc::new(tls.reloaded(settings)?)),
        // The TLS listeners need a restart to come or go, so TLS stays as it is.
        _ => running.tls.clone(),
    };
    Ok(Prepared {
        config,
        tls,
        needs_restart,
    })
}

/// Swaps the new snapshot in and hands the backends to the supervisor.
fn apply(prepared: Prepared, live: &Live, supervisor: &Supervisor) {
    for setting in &prepared.needs_restart {
        tracing::warn!(
            setting,
            "{setting} changed, but it needs a restart: the running value stays"
        );
    }
    let running = live.load_full();
    let has_tls = prepared.tls.is_some();
    let next = running.with_config(prepared.config, prepared.tls);
    next.http_connections
        .set_max_per_ip(next.config.max_connections_per_ip);
    supervisor.apply(&next.config.backends);
    let n_backends = next.config.backends.len();
    live.store(Arc::new(next));
    if has_tls {
        tracing::info!("TLS certificate reloaded");
    }
    tracing::info!(n_backends, "configuration reloaded");
}

/// The error and its causes on one line (a TOML error spans several).
fn one_line(error: &dyn std::error::Error) -> String {
    crate::refusal::error_chain(error)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use clap::Parser;

    use super::*;

    fn write(dir: &Path, text: &str) -> Args {
        let path = dir.join("wsgate.toml");
        std::fs::write(&path, text).expect("writing the test file");
        Args::try_parse_from([
            "wsgate",
            "--config",
            path.to_str().expect("UTF-8 temp path"),
        ])
        .expect("flags parse")
    }

    #[test]
    fn restart_only_settings_keep_their_running_values_and_are_named() {
        let dir = tempfile::tempdir().expect("temp dir");
        let args = write(dir.path(), "listen = ['127.0.0.1:9000']\ndocroot = 'a'\n");
        let running = Config::from_args(args.clone()).expect("valid");
        let args = write(
            dir.path(),
            "listen = ['127.0.0.1:9001']\ndocroot = 'b'\ndeny = ['secret']\n",
        );
        let (config, needs_restart) = Config::reload(&args, &running).expect("valid");
        assert_eq!(needs_restart, ["listen", "docroot"]);
        assert_eq!(config.listen, running.listen);
        assert_eq!(config.docroot, running.docroot);
        assert!(!config.names.is_allowed("secret"), "the live part applies");

        let args = write(dir.path(), "listen = ['127.0.0.1:9000']\ndocroot = 'a'\n");
        let (config, needs_restart) = Config::reload(&args, &running).expect("valid");
        assert!(needs_restart.is_empty());
        assert_eq!(config, running);
    }

    #[test]
    fn a_toml_error_is_reported_on_one_line() {
        let dir = tempfile::tempdir().expect("temp dir");
        let args = write(dir.path(), "deny = [\n");
        let running = Config::default();
        let error = Config::reload(&args, &running).expect_err("invalid TOML");
        let line = one_line(&ReloadError::from(error));
        assert!(!line.contains('\n'), "{line:?}");
        assert!(line.starts_with("invalid configuration file"), "{line:?}");
        assert!(line.contains("line 1"), "{line:?}");
    }
}
