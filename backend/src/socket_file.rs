//! The backend's listening socket file under the docroot: bind, stale-file
//! replacement, publication, and removal on exit.
//!
//! Binding happens before the process daemonizes or drops privileges, so it is
//! synchronous; [`crate::Listener`] takes the bound socket into tokio afterwards.
//! [`SocketFile::bind_hidden`] binds under a hidden name (`.<pid>.sock`, which
//! the gateway never routes to) and [`SocketFile::publish`] renames it to
//! its name once the server is ready, so the name only ever exists for a
//! server that can serve.

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
    /// `<docroot>/<name>`, where the file is once published.
    path: PathBuf,
    /// Where the file is now: the hidden name until published, then `path`.
    bound_path: PathBuf,
    identity: (u64, u64),
}

impl SocketFile {
    /// Binds `<docroot>/<name>`, creating the docroot (and subdirectories of a
    /// name like `a/b`) if missing. A stale socket file, one nobody accepts on,
    /// is replaced; a live one is [`BindError::AlreadyServing`].
    ///
    /// The socket accepts at once; [`SocketFile::bind_hidden`] and
    /// [`SocketFile::publish`] split the two for a server with set-up to do.
    pub fn bind(docroot: &Path, name: &str) -> Result<SocketFile, BindError> {
        let mut socket_file = SocketFile::bind_hidden(docroot, name)?;
        socket_file.publish()?;
        Ok(socket_file)
    }

    /// Binds and listens on a hidden name next to `<docroot>/<name>`
    /// (`.<pid>.sock`: the gateway refuses hidden names, so no client reaches
    /// it), after the same checks as [`SocketFile::bind`]: a live server on
    /// `<name>` is [`BindError::AlreadyServing`] now, before any set-up runs.
    /// [`SocketFile::publish`] makes it reachable.
    pub fn bind_hidden(docroot: &Path, name: &str) -> Result<SocketFile, BindError> {
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
        check_not_live(&path)?;
        let bound_path = parent.join(format!(".{}.sock", std::process::id()));
        if bound_path.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(BindError::PathTooLong(bound_path));
        }
        let io_error = |source| BindError::Io {
            path: bound_path.clone(),
            source,
        };
        // Left behind by an earlier process with our pid that was killed.
        match std::fs::remove_file(&bound_path) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(io_error(error)),
        }
        let listener = UnixListener::bind(&bound_path).map_err(io_error)?;
        let metadata = std::fs::symlink_metadata(&bound_path).map_err(io_error)?;
        let socket_file = SocketFile {
            listener: Some(listener),
            identity: (metadata.dev(), metadata.ino()),
            bound_path: bound_path.clone(),
            path,
        };
        // The docroot's permissions decide who may connect, as for ouistiti's
        // sockets: anyone who can reach the file may (README, "Running it for real").
        std::fs::set_permissions(&bound_path, std::fs::Permissions::from_mode(0o666))
            .map_err(io_error)?;
        if let Some(listener) = &socket_file.listener {
            listener.set_nonblocking(true).map_err(io_error)?;
        }
        Ok(socket_file)
    }

    /// Makes the socket reachable under its name: rename(2) from the hidden
    /// name, atomic, so a client finds either no socket or a ready one. A
    /// stale file under the name is replaced; a live one (a server that
    /// started since [`SocketFile::bind_hidden`]) is [`BindError::AlreadyServing`].
    /// Publishing twice is a no-op.
    pub fn publish(&mut self) -> Result<(), BindError> {
        if self.bound_path == self.path {
            return Ok(());
        }
        check_not_live(&self.path)?;
        std::fs::rename(&self.bound_path, &self.path).map_err(|source| BindError::Io {
            path: self.path.clone(),
            source,
        })?;
        self.bound_path = self.path.clone();
        info!(path = %self.path.display(), "listening");
        Ok(())
    }

    /// The absolute path of the socket file once published: `<docroot>/<name>`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the socket file is now: its hidden name until published.
    pub fn bound_path(&self) -> &Path {
        &self.bound_path
    }

    /// Gives the socket file to `user`'s uid and gid, before dropping privileges to it.
    pub fn chown(&self, uid: nix::unistd::Uid, gid: nix::unistd::Gid) -> io::Result<()> {
        nix::unistd::chown(&self.bound_path, Some(uid), Some(gid)).map_err(io::Error::from)
    }

    /// Takes the listening socket out, for [`crate::Listener::new`]; the file stays owned.
    pub(crate) fn take_listener(&mut self) -> Option<UnixListener> {
        self.listener.take()
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let path = &self.bound_path;
        let ours = std::fs::symlink_metadata(path)
            .map(|m| (m.dev(), m.ino()) == self.identity)
            .unwrap_or(false);
        if !ours {
            return;
        }
        match std::fs::remove_file(path) {
            Ok(()) => info!(path = %path.display(), "removed socket file"),
            Err(error) => warn!(path = %path.display(), %error, "cannot remove socket file"),
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

/// Fails if `path` is a socket some server accepts on, or not a socket at all.
/// A stale socket is left for [`SocketFile::publish`]'s rename to replace.
fn check_not_live(path: &Path) -> Result<(), BindError> {
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
            Ok(())
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
    fn hidden_socket_appears_under_its_name_only_when_published() {
        let docroot = tempfile::tempdir().expect("tempdir");
        let path = docroot.path().join("echo");
        let mut hidden = SocketFile::bind_hidden(docroot.path(), "echo").expect("bind hidden");
        assert!(!path.exists(), "not reachable before publish");
        let bound_path = hidden.bound_path().to_owned();
        let hidden_name = bound_path.file_name().expect("file name").to_string_lossy();
        assert!(hidden_name.starts_with('.'), "{hidden_name}");
        assert_eq!(bound_path.parent(), path.parent());
        hidden.publish().expect("publish");
        assert!(!bound_path.exists(), "renamed, not copied");
        assert!(UnixStream::connect(&path).is_ok(), "accepts under its name");
        let late = SocketFile::bind_hidden(docroot.path(), "echo");
        assert!(
            matches!(late, Err(BindError::AlreadyServing(_))),
            "{late:?}"
        );
        drop(hidden);
        assert!(!path.exists(), "removed on drop");
    }

    #[test]
    fn unpublished_socket_is_removed_on_drop_and_a_live_name_wins() {
        let docroot = tempfile::tempdir().expect("tempdir");
        let hidden = SocketFile::bind_hidden(docroot.path(), "echo").expect("bind hidden");
        let bound_path = hidden.bound_path().to_owned();
        drop(hidden);
        assert!(!bound_path.exists(), "hidden file removed on drop");

        let mut hidden = SocketFile::bind_hidden(docroot.path(), "echo").expect("bind hidden");
        let bound_path = hidden.bound_path().to_owned();
        // Another server takes the name while this one sets up.
        let other_dir = tempfile::tempdir().expect("tempdir");
        let mut other = SocketFile::bind(other_dir.path(), "echo").expect("other bind");
        let other_listener = other.take_listener().expect("listener");
        std::fs::rename(other.path(), docroot.path().join("echo")).expect("move other");
        std::mem::forget(other);
        let result = hidden.publish();
        assert!(
            matches!(result, Err(BindError::AlreadyServing(_))),
            "{result:?}"
        );
        drop(hidden);
        assert!(!bound_path.exists(), "hidden file removed on drop");
        assert!(docroot.path().join("echo").exists(), "the live one stays");
        drop(other_listener);
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
