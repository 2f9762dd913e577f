//! Finding the file a `-L` argument names.
//!
//! `-L authrpc.so` must work as written although cargo names the file
//! `libauthrpc.so`: a name without a `/` is tried as given, with the `lib`
//! prefix, and with the `.so` suffix, first in the current directory, then in
//! the directory of the executable, then in the plugin directory. A name with a
//! `/` is a path and is used as it is. Loading the file is `rpc_abi::host`'s job.

use std::path::{Path, PathBuf};

/// The plugin directory when the operator names none (`--plugin-dir`, `WSGATE_PLUGIN_DIR`).
pub const DEFAULT_PLUGIN_DIR: &str = "/usr/local/lib/wsgate/plugins";

/// Where [`find_plugin`] looks, in order, after the current directory.
#[derive(Debug, Clone, Default)]
pub struct SearchPath {
    /// The directory of the running executable, if known.
    pub exe_dir: Option<PathBuf>,
    /// The plugin directory.
    pub plugin_dir: Option<PathBuf>,
}

/// The file names `name` may stand for, in the order they are tried.
pub fn candidate_names(name: &str) -> Vec<String> {
    let mut names = vec![name.to_owned()];
    if !name.starts_with("lib") {
        names.push(format!("lib{name}"));
    }
    if !name.ends_with(".so") {
        names.push(format!("{name}.so"));
        if !name.starts_with("lib") {
            names.push(format!("lib{name}.so"));
        }
    }
    names
}

/// The directories and names to try for `name`, in order: the file that exists
/// first wins. A name holding a `/` is only tried as the path it is.
pub fn candidate_paths(name: &str, search: &SearchPath) -> Vec<PathBuf> {
    if name.contains('/') {
        return vec![PathBuf::from(name)];
    }
    let dirs = [
        Some(Path::new(".")),
        search.exe_dir.as_deref(),
        search.plugin_dir.as_deref(),
    ];
    let names = candidate_names(name);
    dirs.into_iter()
        .flatten()
        .flat_map(|dir| names.iter().map(move |file| dir.join(file)))
        .collect()
}

/// The first candidate of `name` that is a file; `Err` lists every path tried.
pub fn find_plugin(name: &str, search: &SearchPath) -> Result<PathBuf, Vec<PathBuf>> {
    let candidates = candidate_paths(name, search);
    match candidates.iter().find(|path| path.is_file()) {
        Some(path) => Ok(path.clone()),
        None => Err(candidates),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, expected: &[&str]) {
        assert_eq!(candidate_names(name), expected, "names for {name:?}");
    }

    #[test]
    fn names_gain_the_lib_prefix_and_so_suffix_cargo_uses() {
        check("authrpc.so", &["authrpc.so", "libauthrpc.so"]);
        check(
            "authrpc",
            &["authrpc", "libauthrpc", "authrpc.so", "libauthrpc.so"],
        );
        check("libauthrpc.so", &["libauthrpc.so"]);
        check("libauthrpc", &["libauthrpc", "libauthrpc.so"]);
    }

    #[test]
    fn paths_are_used_as_given_and_names_searched_in_order() {
        let search = SearchPath {
            exe_dir: Some(PathBuf::from("/opt/bin")),
            plugin_dir: Some(PathBuf::from("/plugins")),
        };
        assert_eq!(
            candidate_paths("./x.so", &search),
            [PathBuf::from("./x.so")]
        );
        let paths = candidate_paths("x.so", &search);
        assert_eq!(
            paths,
            [
                "./x.so",
                "./libx.so",
                "/opt/bin/x.so",
                "/opt/bin/libx.so",
                "/plugins/x.so",
                "/plugins/libx.so"
            ]
            .map(PathBuf::from)
        );
    }

    #[test]
    fn the_first_existing_file_wins_and_a_miss_lists_the_tries() {
        let exe_dir = tempfile::tempdir().expect("temporary directory");
        let plugin_dir = tempfile::tempdir().expect("temporary directory");
        std::fs::write(exe_dir.path().join("libfound_here.so"), "").expect("writes");
        std::fs::write(plugin_dir.path().join("libfound_here.so"), "").expect("writes");
        let search = SearchPath {
            exe_dir: Some(exe_dir.path().to_owned()),
            plugin_dir: Some(plugin_dir.path().to_owned()),
        };
        assert_eq!(
            find_plugin("found_here.so", &search),
            Ok(exe_dir.path().join("libfound_here.so"))
        );
        let tried = find_plugin("not_there_at_all.so", &search).expect_err("missing");
        assert_eq!(tried.len(), 6);
    }
}
