//! Finds the workspace's binaries for the tests to run.
//!
//! Binaries of other packages get no `CARGO_BIN_EXE_*` variable in this crate,
//! so they are looked up in the target directory this test binary was built in
//! (`target/<profile>/deps/<test>` → `target/<profile>/`), or in `WSGATE_BIN_DIR`
//! when set. A missing binary is an error naming the build command, never a skip.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// The environment variable that overrides where binaries are looked up.
pub const BIN_DIR_VAR: &str = "WSGATE_BIN_DIR";

/// The command that builds every binary the tests run.
pub const BUILD_COMMAND: &str = "cargo build --workspace";

/// The directory holding the workspace's binaries.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os(BIN_DIR_VAR) {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe().context("locating the running test binary")?;
    let deps = exe
        .parent()
        .with_context(|| format!("{} has no parent directory", exe.display()))?;
    // Test binaries live in `<profile>/deps`; the others one level up.
    let profile_dir = if deps.file_name().is_some_and(|name| name == "deps") {
        deps.parent().unwrap_or(deps)
    } else {
        deps
    };
    Ok(profile_dir.to_owned())
}

/// The path of the binary `name`, which must exist.
pub fn bin_path(name: &str) -> anyhow::Result<PathBuf> {
    let dir = bin_dir()?;
    let path = dir.join(name);
    if !is_executable(&path) {
        bail!(
            "binary {name:?} not found in {}: build it first with `{BUILD_COMMAND}` \
             (or point {BIN_DIR_VAR} at the directory holding it)",
            dir.display()
        );
    }
    Ok(path)
}

/// The path of the plugin `name` (`lib<name>.so`), which must have been built.
pub fn plugin_path(name: &str) -> anyhow::Result<PathBuf> {
    let path = bin_dir()?.join(format!("lib{name}.so"));
    if !path.is_file() {
        bail!(
            "plugin {} not found: build it first with `{BUILD_COMMAND}`",
            path.display()
        );
    }
    Ok(path)
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .is_ok_and(|metadata| metadata.is_file() && metadata.permissions().mode() & 0o111 != 0)
}

/// The repository root (the workspace directory), for files such as `docs/examples/`.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits inside the workspace")
        .to_owned()
}
