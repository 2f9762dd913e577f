//! Other processes seen through `/proc`: the children of a process (the
//! backends a gateway supervises), their command lines and users.
//!
//! [`crate::child::ChildGuard`] uses [`children`] to take a gateway's
//! supervised backends along when it kills the gateway (each runs in a
//! process group of its own); tests use it to find a backend to kill.

use std::path::Path;

use anyhow::Context;

/// A process as `/proc` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    /// Its id.
    pub pid: u32,
    /// Its process group.
    pub pgid: u32,
    /// Its arguments, the program first.
    pub args: Vec<String>,
}

impl ProcessInfo {
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

/// The living children of `parent` (processes that exit meanwhile are skipped).
pub fn children(parent: u32) -> Vec<ProcessInfo> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let (ppid, pgid) = parent_and_group(pid)?;
            (ppid == parent).then(|| ProcessInfo {
                pid,
                pgid,
                args: arguments(pid),
            })
        })
        .collect()
}

/// The parent and process group of `pid`, from `/proc/<pid>/stat`.
fn parent_and_group(pid: u32) -> Option<(u32, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid pgrp ...`; comm may hold spaces and parentheses.
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_comm.split_whitespace().skip(1);
    let ppid = fields.next()?.parse().ok()?;
    let pgid = fields.next()?.parse().ok()?;
    Some((ppid, pgid))
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
