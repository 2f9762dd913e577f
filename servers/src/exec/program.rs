//! One program started for one client: finding it at start-up, spawning it
//! in a process group of its own with piped stdin, stdout and stderr and
//! exactly the environment it is given, logging its stderr, ending it
//! (stdin closed, SIGTERM, SIGKILL) and always reaping it.
//!
//! What flows through the pipes is `session`'s business.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};
use tracing::{debug, info, warn};

use super::environment::Environment;

/// The longest stderr line logged whole; the rest of a longer line is cut off.
pub const MAX_STDERR_LINE: usize = 4096;

/// What to run for each client, as given on the command line.
#[derive(Debug, Clone)]
pub struct ProgramSpec {
    /// The program, resolved to a path at start-up.
    pub path: PathBuf,
    /// Its arguments (after `argv[0]`).
    pub args: Vec<OsString>,
    /// The variables of the backend's own environment named by `--passenv`
    /// that were set, with their values.
    pub passed_env: Vec<(OsString, OsString)>,
}

/// Why the program cannot be run at all.
#[derive(Debug, thiserror::Error)]
pub enum ProgramError {
    /// No executable file of that name exists where it was looked for.
    #[error("program {0:?} not found (give a path, or a name on the backend's PATH)")]
    NotFound(OsString),
    /// The file exists but is a directory or has no execute permission.
    #[error("{0:?} is not an executable file")]
    NotExecutable(PathBuf),
}

/// Finds `program` the way a shell would: a name with a `/` is a path, any
/// other name is looked up in `search_path` (the backend's `PATH`). The
/// result is an executable file, checked once here so that a typo fails at
/// start-up instead of for every client.
pub fn resolve_program(
    program: &OsStr,
    search_path: Option<&OsStr>,
) -> Result<PathBuf, ProgramError> {
    let is_executable = |path: &Path| {
        std::fs::metadata(path)
            .map(|metadata| metadata.is_file() && metadata.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if program.is_empty() {
        return Err(ProgramError::NotFound(program.to_owned()));
    }
    if program.as_encoded_bytes().contains(&b'/') {
        let path = PathBuf::from(program);
        if !path.exists() {
            return Err(ProgramError::NotFound(program.to_owned()));
        }
        if !is_executable(&path) {
            return Err(ProgramError::NotExecutable(path));
        }
        return Ok(path);
    }
    let search_path = search_path.unwrap_or_else(|| OsStr::new("/usr/local/bin:/usr/bin:/bin"));
    std::env::split_paths(search_path)
        .filter(|directory| !directory.as_os_str().is_empty())
        .map(|directory| directory.join(program))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| ProgramError::NotFound(program.to_owned()))
}

/// A running program and its pipes, taken apart so each can be driven on its own.
#[derive(Debug)]
pub struct Program {
    child: Child,
    /// The process id, which is also its process group id; `None` once reaped.
    pid: Option<Pid>,
}

/// The three pipes of a [`Program`].
#[derive(Debug)]
pub struct Pipes {
    /// The program's standard input.
    pub stdin: ChildStdin,
    /// The program's standard output.
    pub stdout: ChildStdout,
    /// The program's standard error.
    pub stderr: ChildStderr,
}

impl Program {
    /// Starts `spec` with exactly `environment`, in the backend's working
    /// directory, as the leader of a new process group (so that ending it
    /// also ends what it started). If this value is dropped before the
    /// program was reaped, tokio kills it and reaps it in the background.
    pub fn spawn(spec: &ProgramSpec, environment: Environment) -> io::Result<(Program, Pipes)> {
        let mut command = Command::new(&spec.path);
        command
            .args(&spec.args)
            .env_clear()
            .envs(environment)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = command.spawn()?;
        let pid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .map(Pid::from_raw);
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(io::Error::other("the program's pipes were not created"));
        };
        let program = Program { child, pid };
        Ok((
            program,
            Pipes {
                stdin,
                stdout,
                stderr,
            },
        ))
    }

    /// Waits for the program to exit and reaps it.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        let status = self.child.wait().await;
        if status.is_ok() {
            self.pid = None;
        }
        status
    }

    /// Ends the program, whose stdin the caller has already closed: when
    /// `wait_for_eof` it first gets `grace` to exit on its own; then SIGTERM
    /// to its process group and `grace` more; then SIGKILL. Returns once the
    /// program is reaped, so it never stays a zombie.
    pub async fn terminate(
        &mut self,
        grace: Duration,
        wait_for_eof: bool,
    ) -> io::Result<ExitStatus> {
        if wait_for_eof {
            if let Ok(status) = tokio::time::timeout(grace, self.wait()).await {
                return status;
            }
            debug!(
                ?grace,
                "program still running after EOF on stdin; sending SIGTERM"
            );
        }
        self.signal_group(Signal::SIGTERM);
        if let Ok(status) = tokio::time::timeout(grace, self.wait()).await {
            return status;
        }
        warn!(?grace, "program ignored SIGTERM; sending SIGKILL");
        self.signal_group(Signal::SIGKILL);
        // SIGKILL cannot be ignored, so this wait ends.
        self.wait().await
    }

    /// Sends `signal` to the program's process group, if it has not been reaped
    /// (its id cannot have been reused before that).
    fn signal_group(&self, signal: Signal) {
        let Some(pid) = self.pid else { return };
        if let Err(error) = killpg(pid, signal) {
            // ESRCH: the group is gone already; the wait that follows reaps the leader.
            debug!(%error, ?signal, "cannot signal the program's process group");
        }
    }
}

/// How an exit reads in a log line or a close reason: `exited with status 3`,
/// `killed by SIGSEGV`.
pub fn describe_exit(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exited with status {code}");
    }
    match status.signal() {
        Some(number) => match Signal::try_from(number) {
            Ok(signal) => format!("killed by {signal}"),
            Err(_) => format!("killed by signal {number}"),
        },
        None => format!("ended ({status})"),
    }
}

/// Logs every line the program writes to stderr, prefixed with the client's
/// id, until the pipe closes. Reading never stops early, so a chatty program
/// cannot block on a full stderr pipe; lines over [`MAX_STDERR_LINE`] bytes
/// are cut, and bytes that are not UTF-8 are logged as U+FFFD.
pub async fn log_stderr(stderr: ChildStderr, client_id: u64) {
    let mut reader = BufReader::with_capacity(MAX_STDERR_LINE, stderr);
    let mut line = Vec::with_capacity(128);
    let mut n_cut = 0usize;
    loop {
        let buffer = match reader.fill_buf().await {
            Ok(buffer) => buffer,
            Err(error) => {
                debug!(%error, "cannot read the program's stderr");
                break;
            }
        };
        if buffer.is_empty() {
            break;
        }
        let newline = buffer.iter().position(|&byte| byte == b'\n');
        let chunk = match newline {
            Some(end) => buffer.get(..end).unwrap_or(buffer),
            None => buffer,
        };
        let room = MAX_STDERR_LINE.saturating_sub(line.len());
        line.extend_from_slice(chunk.get(..room.min(chunk.len())).unwrap_or(chunk));
        n_cut = n_cut.saturating_add(chunk.len().saturating_sub(room));
        let consumed = chunk.len() + usize::from(newline.is_some());
        reader.consume(consumed);
        if newline.is_some() {
            log_line(client_id, &line, n_cut);
            line.clear();
            n_cut = 0;
        }
    }
    if !line.is_empty() {
        log_line(client_id, &line, n_cut);
    }
}

fn log_line(client_id: u64, line: &[u8], n_cut: usize) {
    let line = String::from_utf8_lossy(line);
    let line = line.trim_end_matches('\r');
    if n_cut == 0 {
        info!("client {client_id} stderr: {line}");
    } else {
        info!("client {client_id} stderr: {line} [{n_cut} more bytes cut]");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_found_by_path_or_on_the_search_path() {
        let sh = resolve_program(
            OsStr::new("sh"),
            Some(OsStr::new("/nonexistent:/bin:/usr/bin")),
        )
        .expect("sh is on /bin or /usr/bin");
        assert!(sh.ends_with("sh"), "{sh:?}");
        assert!(matches!(
            resolve_program(OsStr::new("no-such-program-here"), Some(OsStr::new("/bin"))),
            Err(ProgramError::NotFound(_))
        ));
        assert!(matches!(
            resolve_program(OsStr::new("/etc/hostname-does-not-exist"), None),
            Err(ProgramError::NotFound(_))
        ));
        assert!(matches!(
            resolve_program(OsStr::new("/etc"), None),
            Err(ProgramError::NotExecutable(_))
        ));
        assert!(matches!(
            resolve_program(OsStr::new(""), None),
            Err(ProgramError::NotFound(_))
        ));
    }

    #[test]
    fn exits_are_described_with_their_status_or_signal() {
        assert_eq!(
            describe_exit(ExitStatus::from_raw(3 << 8)),
            "exited with status 3"
        );
        assert_eq!(describe_exit(ExitStatus::from_raw(9)), "killed by SIGKILL");
    }
}
