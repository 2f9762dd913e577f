//! `wsgate`: parses flags, sets up logging, loads the TLS certificate, binds
//! the listeners and runs [`gateway::serve`] until SIGTERM or SIGINT.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = gateway::Args::parse();
    lifecycle::init_tracing();
    lifecycle::raise_nofile_limit();
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
    match runtime.block_on(run(config, tls)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("wsgate: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: gateway::Config, tls: Option<gateway::Tls>) -> anyhow::Result<()> {
    // Signals are handled before anyone learns the address and could send one
    // (`bind_all` catches SIGHUP).
    let shutdown = lifecycle::token_cancelled_on_signal()?;
    let listeners = gateway::bind_all(&config).await?;
    if let Some(line) = listeners.metrics_announcement()? {
        println!("{line}");
    }
    for url in listeners.urls()? {
        println!("listening on {url}");
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
