//! `wsgate`: parses flags, sets up logging, loads the TLS certificate, binds
//! the listeners (or takes those passed with `LISTEN_FDS`) and runs
//! [`gateway::serve`] until SIGTERM or SIGINT (or SIGUSR2, which drains);
//! with `--workers N`, supervises N such processes instead
//! ([`gateway::run_workers`]).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = gateway::Args::parse();
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
    let config = match gateway::Config::from_args(args).and_then(|config| {
        config.check_paths()?;
        Ok(config)
    }) {
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
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("wsgate: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = match worker {
        Some(index) => {
            tracing::info!(worker = index, pid = std::process::id(), "worker started");
            runtime.block_on(run(config, tls, inherited, false))
        }
        None if config.workers > 1 => {
            let args = std::env::args_os().skip(1).collect();
            runtime
                .block_on(gateway::run_workers(&config, inherited, args))
                .map_err(anyhow::Error::from)
        }
        None => runtime.block_on(run(config, tls, inherited, true)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("wsgate: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// One gateway: serves `inherited` or binds `config`'s addresses, and
/// prints the `listening on` lines if `announce`.
async fn run(
    config: gateway::Config,
    tls: Option<gateway::Tls>,
    inherited: Option<gateway::InheritedSockets>,
    announce: bool,
) -> anyhow::Result<()> {
    // Signals are handled before anyone learns the address and could send one
    // (`bind_all` and `inherited` catch SIGHUP and SIGUSR2).
    let shutdown = lifecycle::token_cancelled_on_signal()?;
    let listeners = match inherited {
        Some(sockets) => gateway::Listeners::inherited(sockets)?,
        None => gateway::bind_all(&config).await?,
    };
    if announce {
        for url in listeners.urls()? {
            println!("listening on {url}");
        }
    }
    gateway::serve(listeners, tls, config, shutdown).await?;
    tracing::info!("stopped");
    Ok(())
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
