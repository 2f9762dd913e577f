//! Waiting on a fact under a deadline.
//!
//! The deadline is only an upper bound: [`until`] returns as soon as the fact
//! holds, checking it again after a short, growing pause. Tests never sleep
//! for a fixed time instead.

use std::future::Future;
use std::time::Duration;

use anyhow::bail;
use tokio::time::Instant;

/// First pause between two checks; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(2);

/// Longest pause between two checks.
const MAX_BACKOFF: Duration = Duration::from_millis(100);

/// Calls `check` until it returns `Ok(Some(value))`, and returns that value.
///
/// `Ok(None)` means "not yet"; an `Err` ends the wait at once (the fact can no
/// longer become true, e.g. the process died). After `deadline` the error says
/// what was awaited (`what`) and the last state `check` saw.
pub async fn until<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let end = Instant::now() + deadline;
    let mut backoff = FIRST_BACKOFF;
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if Instant::now() >= end {
            bail!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(backoff.min(end.saturating_duration_since(Instant::now()))).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Awaits `future` for at most `deadline`; the error names `what` was awaited.
pub async fn within<T>(
    what: &str,
    deadline: Duration,
    future: impl Future<Output = T>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(deadline, future).await {
        Ok(value) => Ok(value),
        Err(_) => bail!("timed out after {deadline:?} waiting for {what}"),
    }
}
