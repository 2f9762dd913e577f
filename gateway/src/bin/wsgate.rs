//! `wsgate`: parses flags, sets up logging, loads the TLS certificate, binds
//! the listeners, starts the supervised backends and runs [`gateway::serve`]
//! until SIGTERM or SIGINT. `--check-config FILE` only checks.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let mut args = gateway::Args::parse();
    if let Some(file) = args.check_config.take() {
        return check_config(file, args);
    }
    lifecycle::init_tracing();
    lifecycle::raise_nofile_limit();
    let source = gateway::ConfigSource::new(args);
    let config = match source.load() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("wsgate: {}", error_chain(&error));
            return ExitCode::from(2);
        }
    };
    let tls = match gateway::Tls::from_config(&config) {
        Ok(tls) => tls,
        Err(error) => {
            eprintln!("wsgate: {}", error_chain(&error));
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("wsgate: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config, tls, source)) {
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

async fn run(
    config: gateway::Config,
    tls: Option<gateway::Tls>,
    source: gateway::ConfigSource,
) -> anyhow::Result<()> {
    // Signals are handled before anyone learns the address and could send one
    // (`bind_all` catches SIGHUP).
    let shutdown = lifecycle::token_cancelled_on_signal()?;
    let listeners = gateway::bind_all(&config).await?;
    // The backends accept before the gateway says it listens.
    let supervisor = gateway::Supervisor::start(&config, &shutdown).await?;
    for url in listeners.urls()? {
        println!("listening on {url}");
    }
    gateway::serve(listeners, tls, config, source, supervisor, shutdown).await?;
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
