//! The process life cycle that the gateway and every backend share: logging
//! set-up, the tokio runtime with its number of threads (`--threads`), the
//! descriptor limit raised to its hard limit, the stop signals
//! turned into a cancellation token, and the back-off of an accept loop that
//! ran out of descriptors; [`metrics_endpoint`], the `--metrics-listen`
//! listener that serves a process's metrics; and [`metrics_registry`], what
//! each process does alike with its own registry.
//!
//! What stopping means (closing clients with `1001`, removing socket files)
//! and what an accept loop serves are the callers' business.

use std::io;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// The tokio runtime of a process with `threads` threads (`--threads N`).
/// One thread is a current-thread runtime: every task runs on the thread
/// that calls `block_on`, so no wake-up ever crosses threads (no `futex`,
/// no context switch between them); more is tokio's work-stealing runtime
/// with that many workers. Blocking work (`spawn_blocking`) has its own
/// pool either way.
pub fn runtime(threads: usize) -> io::Result<tokio::runtime::Runtime> {
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(threads);
        builder
    };
    builder.enable_all().build()
}

/// The default number of runtime threads: one per CPU the process may use.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// How log lines are written: `text` for people, `json` for a log collector
/// (one JSON object per line: `timestamp`, `level`, `fields` with `message`,
/// `target`, and `spans` with each enclosing span's fields).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// tracing-subscriber's human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// A `--log-format` value that is neither `text` nor `json`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown log format {0:?}: expected text or json")]
pub struct UnknownLogFormat(pub String);

impl std::str::FromStr for LogFormat {
    type Err = UnknownLogFormat;

    fn from_str(text: &str) -> Result<LogFormat, UnknownLogFormat> {
        match text {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(UnknownLogFormat(other.to_owned())),
        }
    }
}

impl std::fmt::Display for LogFormat {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}
pub mod metrics_endpoint;
pub mod metrics_registry;

/// Sets up logging to stderr once per process, filtered by `RUST_LOG`
/// (default `info`), in `format`; text is in colour only on a terminal.
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(io::IsTerminal::is_terminal(&io::stderr()))
            .init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(false)
            .with_span_list(true)
            .init(),
    }
}

/// Raises this process's soft limit on open descriptors (`RLIMIT_NOFILE`) to
/// its hard limit, as nginx's `worker_rlimit_nofile` lets one do, and returns
/// the soft limit now in force (`None` if it cannot even be read). The result
/// is logged at info level.
///
/// Every client costs a descriptor, and the usual soft limit of 1024 is far
/// below what a gateway or a backend can serve. The hard limit is left alone:
/// raising it needs privileges and is the operator's decision (`ulimit -Hn`,
/// systemd's `LimitNOFILE=`). A failure to raise leaves the limit as it was,
/// which is logged and returned, never fatal.
pub fn raise_nofile_limit() -> Option<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(error) => {
            tracing::warn!(%error, "cannot read the descriptor limit");
            return None;
        }
    };
    if soft >= hard {
        tracing::info!(nofile = soft, "descriptor limit");
        return Some(soft);
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => {
            tracing::info!(
                nofile = hard,
                was = soft,
                "raised the descriptor limit to its hard limit"
            );
            Some(hard)
        }
        Err(error) => {
            tracing::warn!(%error, nofile = soft, hard, "cannot raise the descriptor limit");
            Some(soft)
        }
    }
}

/// A token cancelled on the first SIGTERM or SIGINT. Must be called inside a
/// tokio runtime; fails only if the signal handlers cannot be installed.
pub fn token_cancelled_on_signal() -> io::Result<CancellationToken> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let signal = tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        };
        tracing::info!(signal, "shutting down");
        cancel.cancel();
    });
    Ok(token)
}

/// True for accept errors that a later accept may not hit: out of
/// descriptors or memory, or a connection aborted before it was taken.
pub fn is_transient_accept_error(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(
            nix::libc::EMFILE
                | nix::libc::ENFILE
                | nix::libc::ENOBUFS
                | nix::libc::ENOMEM
                | nix::libc::ECONNABORTED
        )
    )
}

/// The pause after a failed accept: 10 ms, doubling up to 1 s, back to 10 ms
/// after an accept succeeds. The waiting connection stays in the backlog.
#[derive(Debug)]
pub struct AcceptBackoff {
    next: Duration,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);

    /// A back-off at its first step.
    pub fn new() -> AcceptBackoff {
        AcceptBackoff { next: Self::FIRST }
    }

    /// An accept succeeded: the next failure waits the first step again.
    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    /// Waits after a failed accept, longer each time in a row.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(Self::MAX);
    }
}

impl Default for AcceptBackoff {
    fn default() -> AcceptBackoff {
        AcceptBackoff::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn backoff_doubles_up_to_a_second_and_resets() {
        let mut backoff = AcceptBackoff::new();
        let mut waits = Vec::new();
        for _ in 0..9 {
            let started = tokio::time::Instant::now();
            backoff.wait().await;
            waits.push(started.elapsed().as_millis());
        }
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        backoff.reset();
        let started = tokio::time::Instant::now();
        backoff.wait().await;
        assert_eq!(started.elapsed().as_millis(), 10);
    }

    #[test]
    fn nofile_limit_is_raised_to_the_hard_limit() {
        use nix::sys::resource::{Resource, getrlimit, setrlimit};
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
        // Lower the soft limit (always allowed), as a shell's `ulimit -Sn` would.
        let lowered = hard.min(256) - 1;
        setrlimit(Resource::RLIMIT_NOFILE, lowered, hard).expect("lower the soft limit");
        assert_eq!(raise_nofile_limit(), Some(hard));
        assert_eq!(
            getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit"),
            (hard, hard)
        );
        // Already at the hard limit: nothing changes.
        assert_eq!(raise_nofile_limit(), Some(hard));
    }

    #[test]
    fn log_formats_parse_and_print_back() {
        for (text, format) in [("text", LogFormat::Text), ("json", LogFormat::Json)] {
            assert_eq!(text.parse::<LogFormat>(), Ok(format));
            assert_eq!(format.to_string(), text);
        }
        assert_eq!(
            "yaml".parse::<LogFormat>(),
            Err(UnknownLogFormat("yaml".to_owned()))
        );
    }

    #[test]
    fn descriptor_exhaustion_is_transient_and_a_bad_socket_is_not() {
        assert!(is_transient_accept_error(&io::Error::from_raw_os_error(
            nix::libc::EMFILE
        )));
        assert!(!is_transient_accept_error(&io::Error::from_raw_os_error(
            nix::libc::EBADF
        )));
    }
}
