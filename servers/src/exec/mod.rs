//! `websocket_exec`: any program that reads stdin and writes stdout becomes
//! a WebSocket service, one process per client, as websocketd does it
//! (`docs/exec.md`).
//!
//! - [`environment`]: the CGI-like environment built from OPEN.
//! - [`program`]: finding, spawning, ending and reaping the program, logging its stderr.
//! - [`session`]: one client's messages to and from its program, and how it ends.
//!
//! The client limit (`-m`, 1013 beyond) is the backend library's, which holds
//! a client's slot until [`session::run_session`] returns, and that is only
//! after its program has been reaped: `-m` bounds the programs running at once.

pub mod environment;
pub mod program;
pub mod session;

use std::time::Duration;

pub use program::{ProgramError, ProgramSpec, resolve_program};
pub use session::run_session;

/// Default of `--grace`.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(2);

/// Default of `--max-line`: the longest line a program may write in text
/// mode, in bytes (the link's default limit on a message as well).
pub const DEFAULT_MAX_LINE: usize = 1 << 20;

/// Default of `--stdin-timeout`: how long a client message may wait for the
/// program to take it into its stdin pipe.
pub const DEFAULT_STDIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Default of `-m` for `websocket_exec`: programs running at once.
pub const DEFAULT_MAX_PROGRAMS: u32 = 256;

/// How every client's program is run.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    /// The program and what it gets from the backend's environment.
    pub program: ProgramSpec,
    /// Bytes pass through as binary messages with no line splitting
    /// (`--binary`); otherwise lines are text messages.
    pub binary: bool,
    /// How long a program gets after EOF on stdin, and then after SIGTERM,
    /// before the next step (`--grace`).
    pub grace: Duration,
    /// The longest line the program may write in text mode (`--max-line`).
    pub max_line: usize,
    /// How long a client message may wait for room in the program's stdin
    /// pipe before the session ends with 1011 (`--stdin-timeout`).
    pub stdin_timeout: Duration,
}
