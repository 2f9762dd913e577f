//! A backend that breaks the link protocol on purpose, with the harness's own
//! byte-level encoder ([`crate::wire`]): nothing here uses the `link` crate's
//! codec, so a bug shared by the gateway's encoder and decoder cannot hide
//! from these tests.
//!
//! Each link gets the same [`Script`]: read the OPEN record (header parsed by
//! hand), then write the scripted bytes, then either hang up or keep the link
//! open and read until the gateway closes it. What the gateway sent is kept
//! as raw `(kind, payload)` pairs for the test to inspect.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context;
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;

use crate::wire;

pub use crate::wire::record_bytes;

/// An empty ACCEPT record: `02 00 00 00 00`.
pub const ACCEPT: [u8; 5] = [0x02, 0, 0, 0, 0];

/// What the backend does after it has read OPEN.
#[derive(Debug, Clone)]
pub struct Script {
    /// Bytes written at once after OPEN (ACCEPT and whatever follows it).
    pub write: Vec<u8>,
    /// Close the link right after writing, instead of reading it to its end.
    pub hang_up: bool,
}

impl Script {
    /// Writes `write` and keeps the link open until the gateway closes it.
    pub fn write(write: Vec<u8>) -> Script {
        Script {
            write,
            hang_up: false,
        }
    }

    /// Writes `write` and closes the link.
    pub fn write_and_hang_up(write: Vec<u8>) -> Script {
        Script {
            write,
            hang_up: true,
        }
    }
}

/// What the gateway sent on one link, record by record.
pub type Received = Vec<(u8, Vec<u8>)>;

/// A running hostile backend; dropping it stops accepting and removes the socket.
#[derive(Debug)]
pub struct HostileBackend {
    socket_path: PathBuf,
    links: Arc<Mutex<Vec<Received>>>,
    accept_task: JoinHandle<()>,
}

impl HostileBackend {
    /// Listens on `socket_path` and plays `script` on every link.
    pub fn start(socket_path: &Path, script: Script) -> anyhow::Result<HostileBackend> {
        if let Some(dir) = socket_path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let listener = UnixListener::bind(socket_path)
            .with_context(|| format!("binding {}", socket_path.display()))?;
        let links: Arc<Mutex<Vec<Received>>> = Arc::default();
        let links_for_task = Arc::clone(&links);
        let accept_task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let link_idx = {
                    let mut links = links_for_task
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    links.push(Vec::new());
                    links.len() - 1
                };
                let links = Arc::clone(&links_for_task);
                let script = script.clone();
                tokio::spawn(async move {
                    let _ = play(stream, &script, &links, link_idx).await;
                });
            }
        });
        Ok(HostileBackend {
            socket_path: socket_path.to_owned(),
            links,
            accept_task,
        })
    }

    /// The records the gateway sent on link `link_idx` so far (0 is the first link).
    pub fn received(&self, link_idx: usize) -> Received {
        let links = self.links.lock().unwrap_or_else(PoisonError::into_inner);
        links.get(link_idx).cloned().unwrap_or_default()
    }

    /// Links accepted so far.
    pub fn n_links(&self) -> usize {
        self.links
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl Drop for HostileBackend {
    fn drop(&mut self) {
        self.accept_task.abort();
        let _ = std::fs::remove_file(&self.socket_path);
    }
}

async fn play(
    mut stream: UnixStream,
    script: &Script,
    links: &Mutex<Vec<Received>>,
    link_idx: usize,
) -> anyhow::Result<()> {
    let record_received = |record: (u8, Vec<u8>)| {
        let mut links = links.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(link) = links.get_mut(link_idx) {
            link.push(record);
        }
    };
    // Readiness probes connect and leave before OPEN.
    let Some(open) = wire::read_raw(&mut stream).await? else {
        return Ok(());
    };
    record_received(open);
    stream.write_all(&script.write).await?;
    if script.hang_up {
        return Ok(());
    }
    while let Some(record) = wire::read_raw(&mut stream).await? {
        record_received(record);
    }
    Ok(())
}
