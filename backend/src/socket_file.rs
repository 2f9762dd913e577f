//! The backend's listening socket file under the docroot: bind, stale-file
//! replacement, and removal on exit.
//!
//! Binding happens before the process daemonizes or drops privileges, so it is
//! synchronous; [`crate::Listener`] takes the bound socket into tokio afterwards.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use tracing::{info, warn};

/// Why a backend could not bind its socket.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The name is empty, has `/` at either end, or a `.`, `..` or hidden segment.
    #[error("invalid socket name {0:?}: use letters, digits, '-', '_' and '/' between segments")]
    InvalidName(String),
    /// The socket path does not fit in `sun_path`.
    #[error("socket path {0} is too long for a UNIX socket ({MAX_SOCKET_PATH} bytes at most)")]
    PathTooLong(PathBuf),
    /// The docroot could not be created.
    #[error("cannot create docroot {path}: {source}")]
    Docroot {
        /// The docroot.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Another server is accepting on the socket already.
    #[error("another server is already listening on {0}")]
    AlreadyServing(PathBuf),
    /// Something that is not a socket stands where the socket should go.
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    /// bind(2) or a file operation failed.
    #[error("cannot bind {path}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Longest socket path Linux accepts: `sun_path` is 108 bytes including the NUL.
pub const MAX_SOCKET_PATH: usize = 107;

/// A bound, listening socket file that is removed again when dropped, if it is
/// still the file this process created.
#[derive(Debug)]
pub struct SocketFile {
    listener: Option<UnixListener>,
    path: PathBuf,
    identity: (u64, u64),
}

impl SocketFile {
    /// Binds `<docroot>/<name>`, creating the docroot (and subdirectories of a
    /// name like `a/b`) if missing. A stale socket file, one nobody accepts on,
    /// is replaced; a live one is [`BindError::AlreadyServing`].
    pub fn bind(docroot: &Path, name: &str) -> Result<SocketFile, BindError> {
        check_name(name)?;
        let docroot = std::path::absolute(docroot).map_err(|source| BindError::Docroot {
            path: docroot.to_owned(),
            source,
        })?;
        let path = docroot.join(name);
        if path.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(BindError::PathTooLong(path));
        }
        let parent = path.parent().unwrap_or(&docroot);
        std::fs::create_dir_all(parent).map_err(|source| BindError::Docroot {
            path: parent.to_owned(),
            source,
        })?;
        remove_if_stale(&path)?;
        let io_error = |source| BindError::Io {
            path: path.clone(),
            source,
        };
        let listener = UnixListener::bind(&path).map_err(io_error)?;
        // The docroot's permissions decide who may connect, as for ouistiti's sockets.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))
            .map_err(io_error)?;
        listener.set_nonblocking(true).map_err(io_error)?;
        let metadata = std::fs::symlink_metadata(&path).map_err(io_error)?;
        info!(path = %path.display(), "listening");
        Ok(SocketFile {
            listener: Some(listener),
            identity: (metadata.dev(), metadata.ino()),
            path,
        })
    }

    /// The absolute path of the socket file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Gives the socket file to `user`'s uid and gid, before dropping privileges to it.
    pub fn chown(&self, uid: nix::unistd::Uid, gid: nix::unistd::Gid) -> io::Result<()> {
        nix::unistd::chown(&self.path, Some(uid), Some(gid)).map_err(io::Error::from)
    }

    /// Takes the listening socket out, for [`crate::Listener::new`]; the file stays owned.
    pub(crate) fn take_listener(&mut self) -> Option<UnixListener> {
        self.listener.take()
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .map(|m| (m.dev(), m.ino()) == self.identity)
            .unwrap_or(false);
        if !ours {
            return;
        }
        match std::fs::remove_file(&self.path) {
            Ok(()) => info!(path = %self.path.display(), "removed socket file"),
            Err(error) => warn!(path = %self.path.display(), %error, "cannot remove socket file"),
        }
    }
}

fn check_name(name: &str) -> Result<(), BindError> {
    let valid_segment = |segment: &str| {
        !segment.is_empty()
            && !segment.starts_with('.')
            && segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'+' | b'@'))
    };
    if name.split('/').all(valid_segment) {
        Ok(())
    } else {
        Err(BindError::InvalidName(name.to_owned()))
    }
}

fn remove_if_stale(path: &Path) -> Result<(), BindError> {
    let metadata = match std::fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(BindError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    if !metadata.file_type().is_socket() {
        return Err(BindError::NotASocket(path.to_owned()));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(BindError::AlreadyServing(path.to_owned())),
        Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => {
            warn!(path = %path.display(), "replacing stale socket file");
            std::fs::remove_file(path).map_err(|source| BindError::Io {
                path: path.to_owned(),
                source,
            })
        }
        Err(source) => Err(BindError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for good in ["echo", "chat", "a/b", "websocket_jsonrpc", "x.y"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in [
            "", "/x", "x/", "a//b", "..", "a/../b", ".hidden", "a b", "x\0y",
        ] {
            assert!(
                matches!(check_name(bad), Err(BindError::InvalidName(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn stale_socket_is_replaced_and_live_one_refused() {
        let docroot = tempfile::tempdir().expect("tempdir");
        let mut first = SocketFile::bind(docroot.path(), "echo").expect("first bind");
        let live = SocketFile::bind(docroot.path(), "echo");
        assert!(
            matches!(live, Err(BindError::AlreadyServing(_))),
            "{live:?}"
        );
        // Leave a stale file behind: close the listener but keep the path.
        let path = first.path().to_owned();
        drop(first.take_listener());
        std::mem::forget(first);
        let second = SocketFile::bind(docroot.path(), "echo").expect("stale file is replaced");
        assert_eq!(second.path(), path);
        drop(second);
        assert!(!path.exists(), "socket file removed on drop");
    }

    #[test]
    fn regular_file_is_not_replaced() {
        let docroot = tempfile::tempdir().expect("tempdir");
        std::fs::write(docroot.path().join("echo"), b"data").expect("write");
        let result = SocketFile::bind(docroot.path(), "echo");
        assert!(
            matches!(result, Err(BindError::NotASocket(_))),
            "{result:?}"
        );
    }
}
