//! The `[[backend]]` tables of the configuration file, checked and turned
//! into [`BackendSpec`]s, and the checks that need the host: the command is
//! an executable file, the user exists, and the gateway may switch to it.
//!
//! Parsing and the pure checks (name, duplicates, ranges, NUL bytes) run
//! with the rest of `config`; the host checks run at start-up, on every
//! reload and in `--check-config`. Running the processes is `supervisor`'s job.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::route;

/// Most `[[backend]]` tables one file may hold.
pub(crate) const MAX_BACKENDS: usize = 256;
/// Most arguments or environment entries of one backend.
const MAX_ARGS: usize = 1024;
/// Default seconds a backend has, from its start, to accept on its socket.
pub(crate) const DEFAULT_READY_TIMEOUT: u64 = 10;
/// Default seconds between SIGTERM and SIGKILL when a backend is stopped.
pub(crate) const DEFAULT_STOP_TIMEOUT: u64 = 5;
/// Default first pause before a backend that exited is started again.
pub(crate) const DEFAULT_RESTART_DELAY_MS: u64 = 100;
/// Default longest pause between two starts of a backend that keeps exiting.
pub(crate) const DEFAULT_RESTART_MAX_DELAY_MS: u64 = 30_000;
/// Default seconds a backend must stay up for its pause to start over at the first one.
pub(crate) const DEFAULT_STABLE_AFTER: u64 = 10;

/// The placeholder in `args` and `env` values replaced by the docroot.
const DOCROOT_PLACEHOLDER: &str = "{docroot}";
/// The placeholder in `args` and `env` values replaced by the backend's name.
const NAME_PLACEHOLDER: &str = "{name}";

/// One `[[backend]]` table as written in the file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BackendTable {
    name: String,
    command: PathBuf,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    user: Option<String>,
    ready_timeout: Option<u64>,
    stop_timeout: Option<u64>,
    restart_delay_ms: Option<u64>,
    restart_max_delay_ms: Option<u64>,
    stable_after: Option<u64>,
}

impl BackendTable {
    /// A command with a `/` that is relative is relative to the file's
    /// directory `base`, as every path of the file; a bare name is looked up
    /// in `PATH` when the backend starts.
    pub(crate) fn anchor(&mut self, base: &Path) {
        let has_slash = self.command.as_os_str().as_bytes().contains(&b'/');
        if has_slash && self.command.is_relative() {
            self.command = base.join(&self.command);
        }
    }
}

/// A supervised backend, validated: what to run and how to restart it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BackendSpec {
    /// Its name: it serves `ws://host/<name>`.
    pub(crate) name: String,
    /// `<docroot>/<name>`, where it must accept to be ready.
    pub(crate) socket_path: PathBuf,
    /// The program: a path, or a bare name looked up in `PATH`.
    pub(crate) command: PathBuf,
    /// Its arguments, placeholders replaced.
    pub(crate) args: Vec<OsString>,
    /// Variables added to the gateway's environment, placeholders replaced.
    pub(crate) env: BTreeMap<String, OsString>,
    /// The user it runs as; `None`: the gateway's own.
    pub(crate) user: Option<String>,
    /// Time from its start to its socket accepting.
    pub(crate) ready_timeout: Duration,
    /// Time between SIGTERM and SIGKILL.
    pub(crate) stop_timeout: Duration,
    /// The back-off between restarts.
    pub(crate) restart: RestartPolicy,
}

/// The pause before each restart: `first`, doubling up to `max`, back to
/// `first` once a run lasted `stable_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RestartPolicy {
    pub(crate) first: Duration,
    pub(crate) max: Duration,
    pub(crate) stable_after: Duration,
}

impl RestartPolicy {
    /// The pause after a run that lasted `uptime`, given the pause used last
    /// time (`None` before the first restart); returns the pause to wait now.
    pub(crate) fn next_delay(&self, previous: Option<Duration>, uptime: Duration) -> Duration {
        match previous {
            Some(previous) if uptime < self.stable_after => (previous * 2).min(self.max),
            _ => self.first,
        }
    }
}

/// Why a `[[backend]]` table cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BackendConfigError {
    /// More tables than [`MAX_BACKENDS`].
    #[error("{0} [[backend]] tables, at most {MAX_BACKENDS} are allowed")]
    TooMany(usize),
    /// The name is not one a client could reach.
    #[error("backend name {name:?} is not a valid socket name: {reason}")]
    Name {
        /// The name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Two tables with the same name.
    #[error("backend {0:?} is configured twice")]
    Duplicate(String),
    /// An empty command, a NUL byte, or an environment variable name that cannot be one.
    #[error("backend {name:?}: {what}")]
    Invalid {
        /// The backend.
        name: String,
        /// What is wrong.
        what: String,
    },
    /// A number is out of its range.
    #[error("backend {name:?}: {setting} must be between {min} and {max}, got {value}")]
    OutOfRange {
        /// The backend.
        name: String,
        /// The key.
        setting: &'static str,
        /// Smallest allowed value.
        min: u64,
        /// Largest allowed value.
        max: u64,
        /// The configured value.
        value: u64,
    },
    /// The command is not an executable file (or not found in `PATH`).
    #[error("backend {name:?}: command {} {reason}", command.display())]
    Command {
        /// The backend.
        name: String,
        /// The command as configured.
        command: PathBuf,
        /// What the file system said.
        reason: String,
    },
    /// The user does not exist, or cannot be looked up.
    #[error("backend {name:?}: no user {user:?}")]
    NoUser {
        /// The backend.
        name: String,
        /// The configured user.
        user: String,
    },
    /// Another user than the gateway's needs the gateway to run as root.
    #[error("backend {name:?}: running it as user {user:?} needs the gateway to run as root")]
    NeedsRoot {
        /// The backend.
        name: String,
        /// The configured user.
        user: String,
    },
}

/// Turns the file's tables into specs for backends under `docroot`.
pub(crate) fn backend_specs(
    tables: Vec<BackendTable>,
    docroot: &Path,
) -> Result<Vec<BackendSpec>, BackendConfigError> {
    if tables.len() > MAX_BACKENDS {
        return Err(BackendConfigError::TooMany(tables.len()));
    }
    let mut seen = BTreeSet::new();
    let mut specs = Vec::with_capacity(tables.len());
    for table in tables {
        if !seen.insert(table.name.clone()) {
            return Err(BackendConfigError::Duplicate(table.name));
        }
        specs.push(backend_spec(table, docroot)?);
    }
    Ok(specs)
}

fn backend_spec(table: BackendTable, docroot: &Path) -> Result<BackendSpec, BackendConfigError> {
    let name = table.name;
    let bad_name = |reason: String| BackendConfigError::Name {
        name: name.clone(),
        reason,
    };
    // The name is what a request path decodes to, so it obeys the same rules.
    for segment in name.split('/') {
        route::check_segment(segment).map_err(|error| bad_name(error.to_string()))?;
    }
    if name.contains('%') {
        return Err(bad_name(
            "`%` would be percent-decoded in a request path".to_owned(),
        ));
    }
    let socket_path =
        route::socket_path(docroot, &name).map_err(|error| bad_name(error.to_string()))?;
    let invalid = |what: String| BackendConfigError::Invalid {
        name: name.clone(),
        what,
    };
    if table.command.as_os_str().is_empty() {
        return Err(invalid("the command is empty".to_owned()));
    }
    if table.command.as_os_str().as_bytes().contains(&0) {
        return Err(invalid("the command holds a NUL byte".to_owned()));
    }
    if table.args.len() > MAX_ARGS || table.env.len() > MAX_ARGS {
        return Err(invalid(format!(
            "at most {MAX_ARGS} arguments and {MAX_ARGS} environment variables"
        )));
    }
    let substitute = |value: &str, what: &str| -> Result<OsString, BackendConfigError> {
        if value.contains('\0') {
            return Err(invalid(format!("{what} holds a NUL byte")));
        }
        let mut value = value.replace(NAME_PLACEHOLDER, &name);
        if value.contains(DOCROOT_PLACEHOLDER) {
            let docroot = docroot.to_str().ok_or_else(|| {
                invalid(format!(
                    "{what} uses {DOCROOT_PLACEHOLDER}, but the docroot is not UTF-8"
                ))
            })?;
            value = value.replace(DOCROOT_PLACEHOLDER, docroot);
        }
        Ok(OsString::from(value))
    };
    let args = table
        .args
        .iter()
        .map(|arg| substitute(arg, "an argument"))
        .collect::<Result<Vec<_>, _>>()?;
    let mut env = BTreeMap::new();
    for (key, value) in &table.env {
        if key.is_empty() || key.contains(['=', '\0']) {
            return Err(invalid(format!(
                "environment variable name {key:?} is empty or holds `=` or NUL"
            )));
        }
        env.insert(key.clone(), substitute(value, "an environment value")?);
    }
    if let Some(user) = &table.user
        && (user.is_empty() || user.contains('\0'))
    {
        return Err(invalid(format!("user {user:?} is not a user name")));
    }
    let range = |setting, value: Option<u64>, default, min, max| {
        let value = value.unwrap_or(default);
        if (min..=max).contains(&value) {
            Ok(value)
        } else {
            Err(BackendConfigError::OutOfRange {
                name: name.clone(),
                setting,
                min,
                max,
                value,
            })
        }
    };
    const DAY: u64 = 24 * 60 * 60;
    let ready_timeout = range(
        "ready_timeout",
        table.ready_timeout,
        DEFAULT_READY_TIMEOUT,
        1,
        DAY,
    )?;
    let stop_timeout = range(
        "stop_timeout",
        table.stop_timeout,
        DEFAULT_STOP_TIMEOUT,
        1,
        DAY,
    )?;
    let first = range(
        "restart_delay_ms",
        table.restart_delay_ms,
        DEFAULT_RESTART_DELAY_MS,
        1,
        DAY * 1000,
    )?;
    let max = range(
        "restart_max_delay_ms",
        table.restart_max_delay_ms,
        DEFAULT_RESTART_MAX_DELAY_MS.max(first),
        first,
        DAY * 1000,
    )?;
    let stable_after = range(
        "stable_after",
        table.stable_after,
        DEFAULT_STABLE_AFTER,
        1,
        DAY,
    )?;
    Ok(BackendSpec {
        socket_path,
        command: table.command,
        args,
        env,
        user: table.user,
        ready_timeout: Duration::from_secs(ready_timeout),
        stop_timeout: Duration::from_secs(stop_timeout),
        restart: RestartPolicy {
            first: Duration::from_millis(first),
            max: Duration::from_millis(max),
            stable_after: Duration::from_secs(stable_after),
        },
        name,
    })
}

/// The user a backend runs as: its uid and primary gid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RunAs {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

impl BackendSpec {
    /// The checks that ask the host: the command resolves to an executable
    /// file, and the user exists and may be switched to. Returns the program
    /// to run and the user to run it as.
    pub(crate) fn check_host(&self) -> Result<(PathBuf, Option<RunAs>), BackendConfigError> {
        let program = self.resolve_command()?;
        let run_as = match &self.user {
            None => None,
            Some(user) => Some(self.resolve_user(user, nix::unistd::geteuid().as_raw())?),
        };
        Ok((program, run_as))
    }

    /// The program: a command with a `/` as it is, a bare name from the
    /// `PATH` the backend gets (its own `env` entry, else the gateway's).
    fn resolve_command(&self) -> Result<PathBuf, BackendConfigError> {
        let not_usable = |reason: String| BackendConfigError::Command {
            name: self.name.clone(),
            command: self.command.clone(),
            reason,
        };
        if self.command.as_os_str().as_bytes().contains(&b'/') {
            return match std::fs::metadata(&self.command) {
                Ok(metadata) if is_executable_file(&metadata) => Ok(self.command.clone()),
                Ok(_) => Err(not_usable("is not an executable file".to_owned())),
                Err(error) => Err(not_usable(format!("cannot be used: {error}"))),
            };
        }
        let path = match self.env.get("PATH") {
            Some(path) => Some(path.clone()),
            None => std::env::var_os("PATH"),
        }
        .unwrap_or_default();
        std::env::split_paths(&path)
            .map(|dir| dir.join(&self.command))
            .find(|candidate| {
                std::fs::metadata(candidate).is_ok_and(|metadata| is_executable_file(&metadata))
            })
            .ok_or_else(|| not_usable("is not found in PATH".to_owned()))
    }

    /// Looks `user` up; a user other than the effective one needs root (`euid` 0).
    fn resolve_user(&self, user: &str, euid: u32) -> Result<RunAs, BackendConfigError> {
        let no_user = || BackendConfigError::NoUser {
            name: self.name.clone(),
            user: user.to_owned(),
        };
        let entry = nix::unistd::User::from_name(user)
            .map_err(|_| no_user())?
            .ok_or_else(no_user)?;
        check_switch(&self.name, user, entry.uid.as_raw(), euid)?;
        Ok(RunAs {
            uid: entry.uid.as_raw(),
            gid: entry.gid.as_raw(),
        })
    }
}

/// Only root may start a process as another user.
fn check_switch(name: &str, user: &str, uid: u32, euid: u32) -> Result<(), BackendConfigError> {
    if euid == 0 || uid == euid {
        Ok(())
    } else {
        Err(BackendConfigError::NeedsRoot {
            name: name.to_owned(),
            user: user.to_owned(),
        })
    }
}

fn is_executable_file(metadata: &std::fs::Metadata) -> bool {
    metadata.is_file() && metadata.permissions().mode() & 0o111 != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> BackendTable {
        toml::from_str(text).expect("the test table parses")
    }

    fn spec(text: &str) -> Result<BackendSpec, BackendConfigError> {
        backend_spec(table(text), Path::new("/run/ws"))
    }

    #[test]
    fn placeholders_and_defaults_fill_a_minimal_table() {
        let spec = spec(
            "name = 'chat'\ncommand = 'websocket_chat'\nargs = ['-R', '{docroot}', '-n', '{name}', '-w']\nenv = { LABEL = '{name}@{docroot}' }",
        )
        .expect("valid");
        assert_eq!(spec.socket_path, Path::new("/run/ws/chat"));
        assert_eq!(spec.args, ["-R", "/run/ws", "-n", "chat", "-w"]);
        assert_eq!(spec.env["LABEL"], "chat@/run/ws");
        assert_eq!(spec.ready_timeout, Duration::from_secs(10));
        assert_eq!(spec.stop_timeout, Duration::from_secs(5));
        assert_eq!(
            spec.restart,
            RestartPolicy {
                first: Duration::from_millis(100),
                max: Duration::from_secs(30),
                stable_after: Duration::from_secs(10),
            }
        );
    }

    #[test]
    fn bad_tables_are_refused_naming_the_backend_and_the_problem() {
        // (table, expected part of the message)
        let cases = [
            ("name = '../x'\ncommand = 'x'", "\"../x\""),
            ("name = '.hidden'\ncommand = 'x'", "hidden"),
            ("name = 'a%2fb'\ncommand = 'x'", "percent"),
            ("name = 'ok'\ncommand = ''", "command is empty"),
            ("name = 'ok'\ncommand = 'x'\nargs = [\"a\\u0000b\"]", "NUL"),
            (
                "name = 'ok'\ncommand = 'x'\nenv = { 'A=B' = '1' }",
                "\"A=B\"",
            ),
            (
                "name = 'ok'\ncommand = 'x'\nready_timeout = 0",
                "ready_timeout",
            ),
            (
                "name = 'ok'\ncommand = 'x'\nrestart_delay_ms = 500\nrestart_max_delay_ms = 100",
                "restart_max_delay_ms",
            ),
            ("name = 'ok'\ncommand = 'x'\nuser = ''", "user"),
        ];
        for (text, expected) in cases {
            let error = spec(text).expect_err(text).to_string();
            assert!(
                error.contains(expected),
                "{text}: {error:?} lacks {expected:?}"
            );
        }
        let long = format!("name = '{}'\ncommand = 'x'", "n".repeat(120));
        assert!(
            spec(&long)
                .expect_err("too long")
                .to_string()
                .contains("longer than")
        );
        let twice = vec![
            table("name = 'a'\ncommand = 'x'"),
            table("name = 'a'\ncommand = 'y'"),
        ];
        assert!(matches!(
            backend_specs(twice, Path::new("/run/ws")),
            Err(BackendConfigError::Duplicate(name)) if name == "a"
        ));
        assert!(
            toml::from_str::<BackendTable>("name = 'a'\ncommand = 'x'\nbogus = 1").is_err(),
            "unknown keys are refused"
        );
    }

    #[test]
    fn back_off_doubles_up_to_its_limit_and_starts_over_after_a_stable_run() {
        let policy = RestartPolicy {
            first: Duration::from_millis(100),
            max: Duration::from_millis(1000),
            stable_after: Duration::from_secs(10),
        };
        let short = Duration::from_millis(5);
        let mut delays = Vec::new();
        let mut previous = None;
        for _ in 0..6 {
            let delay = policy.next_delay(previous, short);
            delays.push(delay.as_millis());
            previous = Some(delay);
        }
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(
            policy.next_delay(previous, Duration::from_secs(10)),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn only_root_switches_to_another_user() {
        assert!(check_switch("b", "nobody", 65534, 0).is_ok());
        assert!(check_switch("b", "me", 1000, 1000).is_ok());
        let error = check_switch("b", "nobody", 65534, 1000).expect_err("not root");
        assert_eq!(
            error.to_string(),
            "backend \"b\": running it as user \"nobody\" needs the gateway to run as root"
        );
    }

    #[test]
    fn commands_are_found_in_path_or_refused_with_the_reason() {
        let found =
            spec("name = 'a'\ncommand = 'sh'\nenv = { PATH = '/nonexistent:/bin:/usr/bin' }")
                .expect("valid")
                .check_host()
                .expect("sh is in /bin or /usr/bin");
        assert!(found.0.ends_with("sh"), "{:?}", found.0);
        for (text, expected) in [
            (
                "name = 'a'\ncommand = 'no-such-program-here'",
                "not found in PATH",
            ),
            (
                "name = 'a'\ncommand = '/nonexistent/prog'",
                "cannot be used",
            ),
            (
                "name = 'a'\ncommand = '/etc/passwd'",
                "not an executable file",
            ),
            (
                "name = 'a'\ncommand = 'sh'\nuser = 'no-such-user-here'",
                "no user",
            ),
        ] {
            let error = spec(text)
                .expect("valid")
                .check_host()
                .expect_err(text)
                .to_string();
            assert!(
                error.contains(expected),
                "{text}: {error:?} lacks {expected:?}"
            );
        }
    }
}
