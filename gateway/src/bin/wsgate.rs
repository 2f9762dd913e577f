//! `wsgate`: parses flags, sets up logging, loads the TLS certificate, binds
//! the listeners (or takes those passed with `LISTEN_FDS`), starts the
//! supervised backends and runs [`gateway::serve`] until SIGTERM or SIGINT
//! (or SIGUSR2, which drains); with `--workers N`, starts the backends and
//! supervises N such processes instead ([`gateway::run_workers`]), which
//! leave the backends to it. `--check-config FILE` only checks.

use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let mut args = gateway::Args::parse();
    if let Some(file) = args.check_config.take() {
        return check_config(file, args);
    }
    // Before any thread starts: reading LISTEN_FDS edits the environment.
    let inherited = match gateway::take_inherited_sockets() {
        Ok(inherited) => inherited,
        Err(error) => {
            eprintln!("wsgate: {}", error_chain(&error));
            return ExitCode::from(2);
        }
    };
    let worker = match gateway::become_worker() {
        Ok(worker) => worker,
        Err(error) => {
            eprintln!("wsgate: worker: {error}");
            return ExitCode::FAILURE;
        }
    };
    let source = gateway::ConfigSource::new(args);
    let config = match source.load() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("wsgate: {}", error_chain(&error));
            return ExitCode::from(2);
        }
    };
    lifecycle::init_tracing(config.log_format);
    lifecycle::raise_nofile_limit();
    let tls = match gateway::Tls::from_config(&config) {
        Ok(tls) => tls,
        Err(error) => {
            eprintln!("wsgate: {}", error_chain(&error));
            return ExitCode::from(2);
        }
    };
    if inherited.as_ref().is_some_and(|sockets| sockets.has_tls()) && tls.is_none() {
        eprintln!(
            "wsgate: an inherited socket is named https (LISTEN_FDNAMES) but the configuration has no TLS: set tls_listen, tls_cert and tls_key"
        );
        return ExitCode::from(2);
    }
    if worker.is_some() && inherited.is_none() {
        eprintln!("wsgate: a worker needs the sockets of its supervisor (LISTEN_FDS)");
        return ExitCode::FAILURE;
    }
    // The supervisor of workers serves no client: one thread is plenty.
    let threads = match worker {
        None if config.workers > 1 => 1,
        _ => config.threads,
    };
    let runtime = match lifecycle::runtime(threads) {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("wsgate: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = match worker {
        Some(index) => {
            tracing::info!(worker = index, pid = std::process::id(), "worker started");
            let gateway = Gateway {
                inherited,
                announce: false,
                supervise: false,
            };
            runtime.block_on(gateway.run(config, tls, source))
        }
        None if config.workers > 1 => runtime.block_on(run_workers(config, inherited)),
        None => {
            let gateway = Gateway {
                inherited,
                announce: true,
                supervise: true,
            };
            runtime.block_on(gateway.run(config, tls, source))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("wsgate: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// `--check-config FILE`: everything start-up checks, without starting.
fn check_config(file: std::path::PathBuf, mut args: gateway::Args) -> ExitCode {
    args.config = Some(file.clone());
    let checked = gateway::ConfigSource::new(args)
        .load()
        .map_err(|error| error_chain(&error))
        .and_then(|config| gateway::Tls::from_config(&config).map_err(|error| error_chain(&error)));
    match checked {
        Ok(_) => {
            println!("wsgate: configuration {} is ok", file.display());
            ExitCode::SUCCESS
        }
        Err(reason) => {
            eprintln!(
                "wsgate: configuration {} is invalid: {reason}",
                file.display()
            );
            ExitCode::from(2)
        }
    }
}

/// How one gateway process runs.
struct Gateway {
    /// The sockets of `LISTEN_FDS`, served instead of binding.
    inherited: Option<gateway::InheritedSockets>,
    /// Print the `listening on` lines.
    announce: bool,
    /// Run the `[[backend]]` tables (not in a worker: its supervisor does).
    supervise: bool,
}

impl Gateway {
    async fn run(
        self,
        config: gateway::Config,
        tls: Option<gateway::Tls>,
        source: gateway::ConfigSource,
    ) -> anyhow::Result<()> {
        // Signals are handled before anyone learns the address and could send one
        // (`bind_all` and `inherited` catch SIGHUP and SIGUSR2).
        let shutdown = lifecycle::token_cancelled_on_signal()?;
        let listeners = match self.inherited {
            Some(sockets) => gateway::Listeners::inherited(sockets)?,
            None => gateway::bind_all(&config).await?,
        };
        // The backends accept before the gateway says it listens.
        let supervisor = if self.supervise {
            gateway::Supervisor::start(&config, &shutdown).await?
        } else {
            gateway::Supervisor::none()
        };
        if self.announce {
            if let Some(line) = listeners.metrics_announcement()? {
                println!("{line}");
            }
            for url in listeners.urls()? {
                println!("listening on {url}");
            }
        }
        gateway::serve(listeners, tls, config, source, supervisor, shutdown).await?;
        tracing::info!("stopped");
        Ok(())
    }
}

/// `--workers N`: the backends first, then the workers until they stop,
/// then the backends are stopped. (A reload reaches the workers; a change
/// to the `[[backend]]` tables needs a restart in this mode.)
async fn run_workers(
    config: gateway::Config,
    inherited: Option<gateway::InheritedSockets>,
) -> anyhow::Result<()> {
    let supervisor = gateway::Supervisor::start(&config, &CancellationToken::new()).await?;
    let args = std::env::args_os().skip(1).collect();
    let result = gateway::run_workers(&config, inherited, args).await;
    supervisor.stop().await;
    Ok(result?)
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    message
}
