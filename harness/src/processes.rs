//! Other processes seen through `/proc`: the children of a process (the
//! backends a gateway supervises, its `--workers`, the programs of
//! `websocket_exec`), their state, command lines and users.
//!
//! [`crate::child::ChildGuard`] uses [`children`] to take a gateway's
//! supervised backends along when it kills the gateway (each runs in a
//! process group of its own); tests use it to find a process to kill or to
//! count a process's children and zombies.

use std::path::Path;

use anyhow::Context;

/// A process as `/proc` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    /// Its id.
    pub pid: u32,
    /// Its process group.
    pub pgid: u32,
    /// Its state letter (`R`, `S`, `Z` for a zombie, ...).
    pub state: char,
    /// Its arguments, the program first.
    pub args: Vec<String>,
}

impl ProcessInfo {
    /// Whether it exited and its parent has not reaped it yet.
    pub fn is_zombie(&self) -> bool {
        self.state == 'Z'
    }

    /// The file name of its program (`websocket_echo`), or "".
    pub fn program(&self) -> &str {
        self.args
            .first()
            .and_then(|program| Path::new(program).file_name())
            .and_then(|name| name.to_str())
            .unwrap_or_default()
    }

    /// Its real user id (`/proc/<pid>/status`).
    pub fn uid(&self) -> anyhow::Result<u32> {
        self.status_line("Uid")?
            .split_whitespace()
            .next()
            .and_then(|uid| uid.parse().ok())
            .with_context(|| format!("no uid for process {}", self.pid))
    }

    /// Its supplementary group ids (`/proc/<pid>/status`).
    pub fn groups(&self) -> anyhow::Result<Vec<u32>> {
        self.status_line("Groups")?
            .split_whitespace()
            .map(|gid| gid.parse().context("a group id"))
            .collect()
    }

    /// The value of the `key:` line of `/proc/<pid>/status`.
    fn status_line(&self, key: &str) -> anyhow::Result<String> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .with_context(|| format!("reading the status of process {}", self.pid))?;
        status
            .lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
            .map(str::to_owned)
            .with_context(|| format!("no {key} line for process {}", self.pid))
    }
}

/// The children of `parent`, zombies included (processes that are reaped
/// meanwhile are skipped; none if `/proc` cannot be read).
pub fn children(parent: u32) -> Vec<ProcessInfo> {
    try_children(parent).unwrap_or_default()
}

/// [`children`], failing if `/proc` cannot be read (for a test that counts
/// children and must not count none by mistake).
pub fn try_children(parent: u32) -> anyhow::Result<Vec<ProcessInfo>> {
    let entries = std::fs::read_dir("/proc").context("reading /proc")?;
    Ok(entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let (state, ppid, pgid) = state_parent_and_group(pid)?;
            (ppid == parent).then(|| ProcessInfo {
                pid,
                pgid,
                state,
                args: arguments(pid),
            })
        })
        .collect())
}

/// The state, parent and process group of `pid`, from `/proc/<pid>/stat`.
fn state_parent_and_group(pid: u32) -> Option<(char, u32, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid pgrp ...`; comm may hold spaces and parentheses.
    let after_comm = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = after_comm.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgid = fields.next()?.parse().ok()?;
    Some((state, ppid, pgid))
}

fn arguments(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|bytes| {
            bytes
                .split(|&byte| byte == 0)
                .filter(|arg| !arg.is_empty())
                .map(|arg| String::from_utf8_lossy(arg).into_owned())
                .collect()
        })
        .unwrap_or_default()
}
