//! `websocket_echo`: sends every message back to its sender, text as text and binary as binary.

use std::process::ExitCode;

use backend::{CloseCode, CommonArgs, Message, ServeOptions, Session};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Echo server for wsgate: every message goes back to its sender.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    backend::init_tracing(args.common.log_format);
    match backend::launch(
        &args.common,
        "websocket_echo",
        ServeOptions::default(),
        || Ok(echo),
    ) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("websocket_echo: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Echoes until the client closes or shutdown. Each reply is sent with
/// `send`: the session defers its flush while the next message is already
/// there, so a pipelining client gets its echoes in one write.
async fn echo(mut session: Session, shutdown: CancellationToken) {
    /// Messages handled between two looks at the shutdown token while the
    /// client keeps the session busy (it is watched whenever the session waits).
    const SHUTDOWN_CHECK_INTERVAL: u32 = 32;
    // One wait for shutdown for the whole session, not one per message.
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);
    let mut n_handled = 0u32;
    loop {
        n_handled = n_handled.wrapping_add(1);
        let shut_down =
            n_handled.is_multiple_of(SHUTDOWN_CHECK_INTERVAL) && shutdown.is_cancelled();
        let message = if shut_down {
            None
        } else {
            tokio::select! {
                biased;
                message = session.next() => Some(message),
                _ = &mut cancelled => None,
            }
        };
        let Some(message) = message else {
            if let Err(error) = session.close(CloseCode::Away, "server shutting down").await {
                debug!(%error, "cannot send close");
            }
            return;
        };
        match message {
            Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => {
                if let Err(error) = session.send(message).await {
                    return warn!(%error, "cannot echo");
                }
            }
            Some(Ok(_)) | None => return,
            Some(Err(error)) => return warn!(%error, "link failed"),
        }
    }
}
