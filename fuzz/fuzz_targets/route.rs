//! Fuzzes the gateway's routing (`gateway::route`, through
//! `gateway::fuzz_api`): a request path to a backend name, and a name to a
//! socket under a docroot.
//!
//! The input's first line is the path; every further line is an offered
//! subprotocol. The docroot is made once per process in a temporary
//! directory, with sockets, a directory picked by subprotocol, a regular
//! file, and symlinks that lead inside and outside it. Checked: no panic;
//! an accepted name has only plain segments; an accepted socket path is
//! `<docroot>/<name>`, fits `sun_path`, and its real path is a socket inside
//! the real docroot.

#![no_main]

use std::os::unix::fs::{FileTypeExt, symlink};
use std::os::unix::net::UnixListener;
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use gateway::fuzz_api::{MAX_SOCKET_PATH, parse_name, resolve};
use libfuzzer_sys::fuzz_target;

/// The temporary tree: `outer/root` is the docroot.
struct Layout {
    /// Kept so that the sockets stay bound; the directory outlives the process.
    _listeners: Vec<UnixListener>,
    docroot: PathBuf,
    real_docroot: PathBuf,
}

fn layout() -> &'static Layout {
    static LAYOUT: OnceLock<Layout> = OnceLock::new();
    LAYOUT.get_or_init(|| {
        let outer = tempfile::Builder::new()
            .prefix("wsgate-fuzz-route-")
            .tempdir()
            .expect("temporary directory")
            .keep();
        let root = outer.join("root");
        for dir in ["group", "service", "service/deeper"] {
            std::fs::create_dir_all(root.join(dir)).expect("mkdir");
        }
        let listeners = [
            "root/echo",
            "root/chat",
            "root/group/item",
            "root/service/chat",
            "root/service/rpc",
            "root/service/deeper/x",
            "x",
            "chat",
        ]
        .iter()
        .map(|path| UnixListener::bind(outer.join(path)).expect("bind"))
        .collect();
        std::fs::write(root.join("file"), "not a socket").expect("write");
        std::fs::write(outer.join("outside-file"), "not a socket").expect("write");
        let links: [(&str, &str); 7] = [
            ("root/link", "../x"),
            ("root/inner-link", "echo"),
            ("root/dir-link", ".."),
            ("root/service/up", "../../chat"),
            ("root/service/sibling", "../echo"),
            ("root/group/loop", "loop"),
            ("root/absolute", "/tmp"),
        ];
        for (path, target) in links {
            symlink(target, outer.join(path)).expect("symlink");
        }
        let real_docroot = std::fs::canonicalize(&root).expect("canonical docroot");
        Layout {
            _listeners: listeners,
            docroot: root,
            real_docroot,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let path = lines.next().unwrap_or("");
    let offered: Vec<String> = lines.map(str::to_owned).collect();
    let Ok(name) = parse_name(path) else {
        return;
    };
    for component in Path::new(&name).components() {
        assert!(
            matches!(component, Component::Normal(segment) if !segment.to_string_lossy().starts_with('.')),
            "{path:?} gave the name {name:?}"
        );
    }
    assert!(!name.chars().any(char::is_control), "{name:?}");

    let layout = layout();
    let Ok(target) = resolve(&layout.docroot, &name, &offered) else {
        return;
    };
    assert_eq!(target.socket_path, layout.docroot.join(&target.name));
    assert!(target.socket_path.as_os_str().len() <= MAX_SOCKET_PATH);
    match &target.protocol {
        None => assert_eq!(target.name, name),
        Some(protocol) => {
            assert!(offered.contains(protocol));
            assert_eq!(target.name, format!("{name}/{protocol}"));
        }
    }
    let real = std::fs::canonicalize(&target.socket_path).expect("the target exists");
    assert!(
        real.starts_with(&layout.real_docroot),
        "{path:?} {offered:?} led to {}",
        real.display()
    );
    let file_type = std::fs::metadata(&real).expect("metadata").file_type();
    assert!(file_type.is_socket(), "{} is not a socket", real.display());
});
