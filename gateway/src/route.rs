//! Turns a request path into a backend name, and a name into the UNIX socket
//! under the docroot that serves it.
//!
//! [`parse_name`] is pure: it percent-decodes the path and rejects `..`, `.`,
//! empty and hidden segments, control bytes and invalid UTF-8. [`resolve`]
//! asks the file system: one `lstat` per segment of the name below the
//! docroot (one for a plain name). When none of them is a symbolic link the
//! socket lies inside the docroot by construction (no segment is `.` or
//! `..`); only a name that meets a symbolic link pays for `realpath` of the
//! docroot and of the candidate, whose result must lie inside the real
//! docroot. Those calls on a local docroot are short, so the connection's
//! task makes them inline rather than paying a blocking-pool hand-off per
//! upgrade. It rejects socket paths too long for `sun_path` and anything whose real path
//! lies outside the real docroot, and applies ouistiti's rule that a directory
//! name picks its socket by the client's subprotocol. Globs and Origin are
//! `access`'s job; connecting is `backend`'s.

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use percent_encoding::percent_decode_str;

/// The longest socket path `connect` accepts on Linux: `sun_path` is 108 bytes
/// including the terminating NUL.
pub const MAX_SOCKET_PATH: usize = 107;

/// Why a path does not lead to a backend socket.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The path does not start with `/` (an absolute-form or `*` request target).
    #[error("path does not start with /")]
    NotAbsolute,
    /// The decoded path is not UTF-8.
    #[error("path is not valid UTF-8")]
    NotUtf8,
    /// The decoded path holds NUL or another control character.
    #[error("path contains a control character")]
    ControlCharacter,
    /// `//`, a trailing `/`, or the bare `/`.
    #[error("path has an empty segment")]
    EmptySegment,
    /// A `.` or `..` segment.
    #[error("path has a . or .. segment")]
    DotSegment,
    /// A segment starting with `.`.
    #[error("path has a hidden segment")]
    HiddenSegment,
    /// `<docroot>/<name>` does not fit in `sun_path`.
    #[error("socket path is longer than {MAX_SOCKET_PATH} bytes")]
    TooLong,
    /// The real path (symlinks resolved) lies outside the docroot.
    #[error("path leads outside the docroot")]
    OutsideDocroot,
    /// Nothing at that path (or the docroot itself is missing).
    #[error("no socket at this path")]
    NotFound,
    /// Something that is neither a socket nor a directory.
    #[error("not a socket")]
    NotSocket,
    /// A directory in which no offered subprotocol names a socket.
    #[error("no socket for any offered subprotocol")]
    NoProtocolMatch,
}

/// A map keyed by backend socket path, hashed as the path's bytes with
/// foldhash: `Path`'s own `Hash` splits the path into components (a
/// tenth of a direct connection's look-ups), and the keys are the
/// resolved paths of existing sockets, not strings a client chooses.
pub(crate) type BySocket<V> =
    std::collections::HashMap<std::ffi::OsString, V, foldhash::fast::RandomState>;

/// Where a name leads: the socket to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The socket's name under the docroot: the request name, or
    /// `<name>/<protocol>` when the directory rule chose the socket.
    pub name: String,
    /// `<docroot>/<name>`, as configured (not canonicalized).
    pub socket_path: PathBuf,
    /// The subprotocol the directory rule chose, which the `101` must carry.
    pub protocol: Option<String>,
}

/// Percent-decodes a request path (without its query) and returns the backend
/// name: the path after its leading `/`, which may hold `/` for nested names.
pub fn parse_name(path: &str) -> Result<String, RouteError> {
    let rest = path.strip_prefix('/').ok_or(RouteError::NotAbsolute)?;
    let decoded: Vec<u8> = percent_decode_str(rest).collect();
    if decoded.iter().any(|byte| byte.is_ascii_control()) {
        return Err(RouteError::ControlCharacter);
    }
    let name = String::from_utf8(decoded).map_err(|_| RouteError::NotUtf8)?;
    for segment in name.split('/') {
        check_segment(segment)?;
    }
    Ok(name)
}

/// Checks one path segment (or one subprotocol used as a file name): not empty,
/// not `.` or `..`, not hidden, no `/`, no control character.
pub fn check_segment(segment: &str) -> Result<(), RouteError> {
    match segment {
        "" => Err(RouteError::EmptySegment),
        "." | ".." => Err(RouteError::DotSegment),
        _ if segment.starts_with('.') => Err(RouteError::HiddenSegment),
        _ if segment.contains('/') => Err(RouteError::EmptySegment),
        _ if segment.chars().any(char::is_control) => Err(RouteError::ControlCharacter),
        _ => Ok(()),
    }
}

/// `<docroot>/<name>`, refused if it would not fit in `sun_path`.
pub fn socket_path(docroot: &Path, name: &str) -> Result<PathBuf, RouteError> {
    let path = docroot.join(name);
    if path.as_os_str().as_bytes().len() > MAX_SOCKET_PATH {
        return Err(RouteError::TooLong);
    }
    Ok(path)
}

/// Finds the socket serving `name` (already checked by [`parse_name`]).
///
/// A socket is the target. A directory picks, among the `offered`
/// subprotocols in order, the first `p` for which `<docroot>/<name>/<p>` is a
/// socket. Every candidate's real path must lie inside the real docroot.
/// It makes a few short system calls per candidate (see the module docs).
pub fn resolve(docroot: &Path, name: &str, offered: &[String]) -> Result<Target, RouteError> {
    let path = socket_path(docroot, name)?;
    match inspect(docroot, name, &path)? {
        Kind::Socket => Ok(Target {
            name: name.to_owned(),
            socket_path: path,
            protocol: None,
        }),
        Kind::Directory => {
            for protocol in offered {
                if check_segment(protocol).is_err() {
                    continue;
                }
                let name = format!("{name}/{protocol}");
                let Ok(path) = socket_path(docroot, &name) else {
                    continue;
                };
                if let Ok(Kind::Socket) = inspect(docroot, &name, &path) {
                    return Ok(Target {
                        name,
                        socket_path: path,
                        protocol: Some(protocol.clone()),
                    });
                }
            }
            Err(RouteError::NoProtocolMatch)
        }
        Kind::Other => Err(RouteError::NotSocket),
    }
}

enum Kind {
    Socket,
    Directory,
    Other,
}

/// What `path` (`<docroot>/<name>`) is, once it is known to lie inside the
/// docroot.
///
/// `lstat` of each segment's path below the docroot: directories on the way
/// and a last segment that is no symbolic link cannot lead outside, since no
/// segment is `.` or `..`. A symbolic link anywhere sends the candidate to
/// [`inspect_real`].
fn inspect(docroot: &Path, name: &str, path: &Path) -> Result<Kind, RouteError> {
    let mut prefix = docroot.to_path_buf();
    let mut segments = name.split('/').peekable();
    while let Some(segment) = segments.next() {
        prefix.push(segment);
        let file_type = std::fs::symlink_metadata(&prefix)
            .map_err(not_found)?
            .file_type();
        if file_type.is_symlink() {
            return inspect_real(docroot, path);
        }
        if segments.peek().is_some() {
            if !file_type.is_dir() {
                return Err(RouteError::NotFound);
            }
            continue;
        }
        return Ok(kind_of(file_type));
    }
    Err(RouteError::NotFound)
}

/// What `path` is, when its real path (symbolic links resolved) lies inside
/// the real docroot.
fn inspect_real(docroot: &Path, path: &Path) -> Result<Kind, RouteError> {
    let real_docroot = std::fs::canonicalize(docroot).map_err(not_found)?;
    let real = std::fs::canonicalize(path).map_err(not_found)?;
    if !real.starts_with(&real_docroot) {
        return Err(RouteError::OutsideDocroot);
    }
    Ok(kind_of(
        std::fs::metadata(&real).map_err(not_found)?.file_type(),
    ))
}

fn kind_of(file_type: std::fs::FileType) -> Kind {
    if file_type.is_socket() {
        Kind::Socket
    } else if file_type.is_dir() {
        Kind::Directory
    } else {
        Kind::Other
    }
}

/// Missing, not a directory on the way, or unreadable: all "no socket here".
fn not_found(_: io::Error) -> RouteError {
    RouteError::NotFound
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;

    use super::*;

    fn check(path: &str, expected: Result<&str, RouteError>) {
        assert_eq!(
            parse_name(path).as_deref().map_err(Clone::clone),
            expected,
            "parse_name({path:?})"
        );
    }

    #[test]
    fn paths_become_names_or_are_refused() {
        let long = format!("/{}", "n".repeat(300));
        let cases: &[(&str, Result<&str, RouteError>)] = &[
            ("/chat", Ok("chat")),
            ("/a/b", Ok("a/b")),
            ("/group/item", Ok("group/item")),
            ("/with%20space", Ok("with space")),
            ("/caf%C3%A9", Ok("café")),
            ("/a%2Fb", Ok("a/b")),
            ("/x.y", Ok("x.y")),
            ("/x..y", Ok("x..y")),
            (long.as_str(), Ok(&long[1..])), // Too long only once joined to the docroot.
            ("/", Err(RouteError::EmptySegment)),
            ("//x", Err(RouteError::EmptySegment)),
            ("/x/", Err(RouteError::EmptySegment)),
            ("/a//b", Err(RouteError::EmptySegment)),
            ("/../x", Err(RouteError::DotSegment)),
            ("/%2e%2e/x", Err(RouteError::DotSegment)),
            ("/%2E%2E/x", Err(RouteError::DotSegment)),
            ("/%2e%2e%2fx", Err(RouteError::DotSegment)),
            ("/a/../../x", Err(RouteError::DotSegment)),
            ("/a/%2e%2e/%2e%2e/x", Err(RouteError::DotSegment)),
            ("/./x", Err(RouteError::DotSegment)),
            ("/x/.", Err(RouteError::DotSegment)),
            ("/.hidden", Err(RouteError::HiddenSegment)),
            ("/%2ehidden", Err(RouteError::HiddenSegment)),
            ("/a/.git/x", Err(RouteError::HiddenSegment)),
            ("/x%00y", Err(RouteError::ControlCharacter)),
            ("/x%00", Err(RouteError::ControlCharacter)),
            ("/x%0ay", Err(RouteError::ControlCharacter)),
            ("/x%7f", Err(RouteError::ControlCharacter)),
            ("/x%ff", Err(RouteError::NotUtf8)),
            ("/x%C3", Err(RouteError::NotUtf8)),
            ("x", Err(RouteError::NotAbsolute)),
            ("*", Err(RouteError::NotAbsolute)),
        ];
        for (path, expected) in cases {
            check(path, expected.clone());
        }
    }

    #[test]
    fn socket_paths_must_fit_sun_path() {
        let docroot = Path::new("/run/ws");
        let fits = "n".repeat(MAX_SOCKET_PATH - "/run/ws/".len());
        assert!(socket_path(docroot, &fits).is_ok());
        let too_long = format!("{fits}n");
        assert_eq!(socket_path(docroot, &too_long), Err(RouteError::TooLong));
        assert_eq!(
            resolve(docroot, &"n".repeat(300), &[]),
            Err(RouteError::TooLong)
        );
    }

    /// A docroot `root/` inside `outer/`, with sockets `root/echo`,
    /// `root/group/item`, `root/service/{chat,rpc}`, `outer/x`, a regular file
    /// `root/file`, and symlinks `root/link` → `outer/x`, `root/relative-link`
    /// → `../x`, `root/inner-link` → `echo`, the directories `root/out-dir` →
    /// `outer` and `root/alias` → `group`, `root/service/escape` → `outer/x`,
    /// and `outer/root-link` → `root` (a docroot reached through a link).
    struct Layout {
        outer: tempfile::TempDir,
        _listeners: Vec<UnixListener>,
    }

    impl Layout {
        fn create() -> Layout {
            let outer = tempfile::tempdir().expect("tempdir");
            let root = outer.path().join("root");
            std::fs::create_dir_all(root.join("group")).expect("mkdir");
            std::fs::create_dir_all(root.join("service")).expect("mkdir");
            let listeners = [
                "root/echo",
                "root/group/item",
                "root/service/chat",
                "root/service/rpc",
                "x",
            ]
            .iter()
            .map(|path| UnixListener::bind(outer.path().join(path)).expect("bind"))
            .collect();
            std::fs::write(root.join("file"), "not a socket").expect("write");
            std::os::unix::fs::symlink(outer.path().join("x"), root.join("link")).expect("symlink");
            std::os::unix::fs::symlink("../x", root.join("relative-link")).expect("symlink");
            std::os::unix::fs::symlink("echo", root.join("inner-link")).expect("symlink");
            std::os::unix::fs::symlink(outer.path(), root.join("out-dir")).expect("symlink");
            std::os::unix::fs::symlink("group", root.join("alias")).expect("symlink");
            std::os::unix::fs::symlink(outer.path().join("x"), root.join("service/escape"))
                .expect("symlink");
            std::os::unix::fs::symlink(&root, outer.path().join("root-link")).expect("symlink");
            Layout {
                outer,
                _listeners: listeners,
            }
        }

        fn docroot(&self) -> PathBuf {
            self.outer.path().join("root")
        }
    }

    /// The target name and subprotocol a resolution should give.
    type Expected = Result<(&'static str, Option<&'static str>), RouteError>;

    fn check_resolve(
        layout: &Layout,
        name: &str,
        offered: &[&str],
        expected: Result<(&str, Option<&str>), RouteError>,
    ) {
        let offered: Vec<String> = offered.iter().map(|p| (*p).to_owned()).collect();
        let docroot = layout.docroot();
        let got = resolve(&docroot, name, &offered);
        let expected = expected.map(|(name, protocol)| Target {
            name: name.to_owned(),
            socket_path: docroot.join(name),
            protocol: protocol.map(str::to_owned),
        });
        assert_eq!(got, expected, "resolve({name:?}, {offered:?})");
    }

    #[test]
    fn names_resolve_to_sockets_inside_the_docroot_only() {
        let layout = Layout::create();
        // (name, offered subprotocols, expected target name and protocol)
        let cases: &[(&str, &[&str], Expected)] = &[
            ("echo", &[], Ok(("echo", None))),
            ("echo", &["chat"], Ok(("echo", None))),
            ("group/item", &[], Ok(("group/item", None))),
            ("inner-link", &[], Ok(("inner-link", None))),
            ("missing", &[], Err(RouteError::NotFound)),
            ("group/missing", &[], Err(RouteError::NotFound)),
            ("echo/below-a-socket", &[], Err(RouteError::NotFound)),
            ("file", &[], Err(RouteError::NotSocket)),
            ("link", &[], Err(RouteError::OutsideDocroot)),
            ("relative-link", &[], Err(RouteError::OutsideDocroot)),
            ("service", &["chat"], Ok(("service/chat", Some("chat")))),
            ("service", &["rpc"], Ok(("service/rpc", Some("rpc")))),
            (
                "service",
                &["nope", "rpc", "chat"],
                Ok(("service/rpc", Some("rpc"))),
            ),
            (
                "service",
                &["..", "../echo", ".hidden", "chat"],
                Ok(("service/chat", Some("chat"))),
            ),
            ("service", &[], Err(RouteError::NoProtocolMatch)),
            ("service", &["nope"], Err(RouteError::NoProtocolMatch)),
            ("group", &["item"], Ok(("group/item", Some("item")))),
            // Directories reached through symbolic links: inside is fine.
            ("alias/item", &[], Ok(("alias/item", None))),
            ("alias", &["item"], Ok(("alias/item", Some("item")))),
            ("out-dir/x", &[], Err(RouteError::OutsideDocroot)),
            ("out-dir/root/echo", &[], Ok(("out-dir/root/echo", None))),
            ("out-dir", &["x"], Err(RouteError::OutsideDocroot)),
            ("file/below-a-file", &[], Err(RouteError::NotFound)),
            ("service", &["escape"], Err(RouteError::NoProtocolMatch)),
            (
                "service",
                &["escape", "rpc"],
                Ok(("service/rpc", Some("rpc"))),
            ),
        ];
        for (name, offered, expected) in cases {
            check_resolve(&layout, name, offered, expected.clone());
        }
    }

    #[test]
    fn a_docroot_reached_through_a_link_keeps_its_rules() {
        let layout = Layout::create();
        let docroot = layout.outer.path().join("root-link");
        let echo = resolve(&docroot, "echo", &[]).expect("echo");
        assert_eq!(echo.socket_path, docroot.join("echo"));
        assert_eq!(
            resolve(&docroot, "link", &[]),
            Err(RouteError::OutsideDocroot)
        );
        assert_eq!(
            resolve(&docroot, "inner-link", &[]).map(|target| target.name),
            Ok("inner-link".to_owned())
        );
    }

    #[test]
    fn a_missing_docroot_finds_nothing() {
        let outer = tempfile::tempdir().expect("tempdir");
        assert_eq!(
            resolve(&outer.path().join("absent"), "echo", &[]),
            Err(RouteError::NotFound)
        );
    }
}

#[cfg(test)]
mod properties {
    use std::path::Component;

    use proptest::prelude::*;

    use super::*;

    /// Paths built from the pieces that traversal attempts are made of.
    fn hostile_path() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("/".to_owned()),
            Just(".".to_owned()),
            Just("..".to_owned()),
            Just("%2e".to_owned()),
            Just("%2E".to_owned()),
            Just("%2f".to_owned()),
            Just("%00".to_owned()),
            Just("%1f".to_owned()),
            Just("%ff".to_owned()),
            Just("%".to_owned()),
            "[a-z]{1,4}",
            "[\\x00-\\x7f]{1,3}",
        ];
        proptest::collection::vec(piece, 0..12).prop_map(|pieces| pieces.concat())
    }

    proptest! {
        #[test]
        fn no_accepted_name_ever_leaves_the_docroot(path in hostile_path()) {
            let path = format!("/{path}");
            if let Ok(name) = parse_name(&path) {
                prop_assert!(!name.is_empty());
                for segment in name.split('/') {
                    prop_assert!(!segment.is_empty(), "{path} -> {name}");
                    prop_assert!(!segment.starts_with('.'), "{path} -> {name}");
                    prop_assert!(!segment.chars().any(char::is_control), "{path} -> {name}");
                }
                let docroot = Path::new("/srv/docroot");
                if let Ok(socket) = socket_path(docroot, &name) {
                    let below = socket.strip_prefix(docroot).expect("joined under the docroot");
                    prop_assert!(
                        below.components().all(|c| matches!(c, Component::Normal(_))),
                        "{path} -> {}", socket.display()
                    );
                }
            }
        }
    }
}
