//! The cancellation token that a stop signal (SIGTERM or SIGINT) triggers.
//!
//! What stopping means (no new connections, `1001` to every client) is
//! `server`'s and `relay`'s job; this module only turns signals into the token.

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// A token cancelled on the first SIGTERM or SIGINT. Must be called inside a
/// tokio runtime; fails only if the signal handlers cannot be installed.
pub fn token_cancelled_on_signal() -> std::io::Result<CancellationToken> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        };
        tracing::info!("{name} received, shutting down");
        cancel.cancel();
    });
    Ok(token)
}
