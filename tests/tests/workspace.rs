//! The invariants of ARCHITECTURE.md that no compiler checks, checked here
//! against the workspace itself: which crate may depend on which, that the
//! gateway's dependency tree holds nothing of the backends, which modules may
//! use `unsafe` (and that every block says why it is sound), `//!` docs on
//! every module, no fixed sleeps in tests, and no unused dependencies.
//!
//! Each check reads the source tree or `cargo metadata`; none runs a binary.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use serde_json::Value;

/// The workspace root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits inside the workspace")
        .to_owned()
}

/// The target triple this test was built for, which `cargo metadata` filters
/// on so that it needs no package of another platform (it runs offline).
fn host_triple() -> anyhow::Result<String> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let output = Command::new(rustc)
        .arg("-vV")
        .output()
        .context("running rustc -vV")?;
    let text = String::from_utf8(output.stdout)?;
    text.lines()
        .find_map(|line| line.strip_prefix("host: "))
        .map(str::to_owned)
        .context("rustc -vV names no host")
}

/// `cargo metadata` of the whole workspace, with the resolved dependency graph.
fn metadata() -> anyhow::Result<Value> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked", "--offline"])
        .args(["--filter-platform", &host_triple()?])
        .current_dir(root())
        .output()
        .context("running cargo metadata")?;
    if !output.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(serde_json::from_slice(&output.stdout)?)
}

/// The workspace's own packages: name → (manifest directory, package JSON).
fn workspace_packages(metadata: &Value) -> anyhow::Result<BTreeMap<String, (PathBuf, Value)>> {
    let members: BTreeSet<&str> = metadata["workspace_members"]
        .as_array()
        .context("workspace_members")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let mut packages = BTreeMap::new();
    for package in metadata["packages"].as_array().context("packages")? {
        let id = package["id"].as_str().context("package id")?;
        if !members.contains(id) {
            continue;
        }
        let name = package["name"].as_str().context("package name")?.to_owned();
        let manifest = PathBuf::from(package["manifest_path"].as_str().context("manifest")?);
        let dir = manifest.parent().context("manifest directory")?.to_owned();
        packages.insert(name, (dir, package.clone()));
    }
    Ok(packages)
}

/// Which workspace crates each workspace crate may depend on, in any kind
/// (normal, dev or build). The arrows of ARCHITECTURE.md's code map.
const ALLOWED_EDGES: &[(&str, &[&str])] = &[
    ("link", &[]),
    ("lifecycle", &[]),
    ("gateway", &["link", "lifecycle"]),
    ("backend", &["link", "lifecycle"]),
    ("servers", &["backend", "rpc-abi"]),
    ("rpc-abi", &[]),
    ("authrpc", &["rpc-abi"]),
    ("sqlrpc", &["rpc-abi"]),
    ("testrpc", &["rpc-abi"]),
    ("harness", &["link"]),
    ("tests", &["harness", "link"]),
    ("bench", &["harness"]),
];

#[test]
fn crates_depend_only_along_the_allowed_edges() -> anyhow::Result<()> {
    let metadata = metadata()?;
    let packages = workspace_packages(&metadata)?;
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED_EDGES.iter().copied().collect();
    let mut problems = Vec::new();
    for (name, (_, package)) in &packages {
        let Some(allowed_deps) = allowed.get(name.as_str()) else {
            problems.push(format!(
                "{name} is not in ALLOWED_EDGES: add it, and to ARCHITECTURE.md"
            ));
            continue;
        };
        for dependency in package["dependencies"].as_array().context("dependencies")? {
            let dep_name = dependency["name"].as_str().context("dependency name")?;
            if packages.contains_key(dep_name) && !allowed_deps.contains(&dep_name) {
                problems.push(format!("{name} depends on {dep_name}"));
            }
        }
    }
    assert!(problems.is_empty(), "forbidden edges: {problems:#?}");
    Ok(())
}

#[test]
fn the_gateway_links_nothing_of_the_backends() -> anyhow::Result<()> {
    let metadata = metadata()?;
    let nodes = metadata["resolve"]["nodes"]
        .as_array()
        .context("resolve nodes")?;
    let id_to_name: BTreeMap<&str, &str> = metadata["packages"]
        .as_array()
        .context("packages")?
        .iter()
        .filter_map(|package| Some((package["id"].as_str()?, package["name"].as_str()?)))
        .collect();
    // Normal (not dev, not build) edges of the resolved graph.
    let mut normal_deps: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for node in nodes {
        let id = node["id"].as_str().context("node id")?;
        let deps = normal_deps.entry(id).or_default();
        for dep in node["deps"].as_array().context("node deps")? {
            let is_normal = dep["dep_kinds"]
                .as_array()
                .is_some_and(|kinds| kinds.iter().any(|kind| kind["kind"].is_null()));
            if is_normal {
                deps.push(dep["pkg"].as_str().context("dep pkg")?);
            }
        }
    }
    let gateway_id = id_to_name
        .iter()
        .find(|(_, name)| **name == "gateway")
        .map(|(id, _)| *id)
        .context("the gateway package")?;
    let mut seen = BTreeSet::new();
    let mut stack = vec![gateway_id];
    while let Some(id) = stack.pop() {
        if seen.insert(id) {
            stack.extend(normal_deps.get(id).into_iter().flatten().copied());
        }
    }
    let tree: BTreeSet<&str> = seen
        .iter()
        .filter_map(|id| id_to_name.get(id))
        .copied()
        .collect();
    let forbidden = [
        "backend",
        "servers",
        "rpc-abi",
        "jsonrpsee",
        "libloading",
        "rusqlite",
        "argon2",
        "harness",
    ];
    let found: Vec<&str> = forbidden
        .into_iter()
        .filter(|name| tree.contains(name))
        .collect();
    assert!(found.is_empty(), "the gateway's tree holds {found:?}");
    assert!(tree.contains("link"), "the gateway uses the link crate");
    Ok(())
}

/// Every Rust file of the workspace, relative to the root, but `target/`.
fn rust_files() -> anyhow::Result<Vec<PathBuf>> {
    fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> anyhow::Result<()> {
        for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let entry = entry?;
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if entry.file_type()?.is_dir() {
                // Build directories (cargo tags them with CACHEDIR.TAG, whatever
                // their name) hold generated code, not the project's.
                let skipped =
                    name.starts_with('.') || name == "fuzz" || path.join("CACHEDIR.TAG").exists();
                if !skipped {
                    walk(&path, files)?;
                }
            } else if name.ends_with(".rs") {
                files.push(path);
            }
        }
        Ok(())
    }
    let root = root();
    let mut files = Vec::new();
    walk(&root, &mut files)?;
    Ok(files
        .into_iter()
        .map(|path| path.strip_prefix(&root).map(Path::to_owned))
        .collect::<Result<_, _>>()?)
}

fn read(relative: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(root().join(relative))
        .with_context(|| format!("reading {}", relative.display()))
}

/// The modules that may allow `unsafe_code` (ARCHITECTURE.md).
const UNSAFE_MODULES: &[&str] = &[
    "link/src/fd_pass.rs",
    "link/src/link_stream.rs",
    "rpc-plugins/rpc-abi/src/export.rs",
    "rpc-plugins/rpc-abi/src/host.rs",
];

#[test]
fn unsafe_code_lives_only_in_the_listed_modules_with_safety_comments() -> anyhow::Result<()> {
    let mut problems = Vec::new();
    let mut allowing = BTreeSet::new();
    for file in rust_files()? {
        let text = read(&file)?;
        let shown = file.display().to_string();
        // Spelt in two halves so that this file does not match itself.
        if text.contains(concat!("allow(", "unsafe_code)")) {
            allowing.insert(shown.clone());
        }
        let lines: Vec<&str> = text.lines().collect();
        for (line_idx, line) in lines.iter().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            // Spelt in two halves so that this file does not match itself.
            let opens_block = code.contains(concat!("unsafe", " {"))
                || code.trim_start().starts_with(concat!("unsafe", " impl"));
            if !opens_block {
                continue;
            }
            // The SAFETY comment is on the same line, or in the comment lines
            // just above the statement the block belongs to.
            let mut documented = line.contains("SAFETY:");
            let mut above = line_idx;
            while !documented && above > 0 {
                above -= 1;
                let previous = lines[above].trim();
                let is_comment = previous.starts_with("//");
                let ends_statement = previous.is_empty()
                    || previous.ends_with(';')
                    || previous.ends_with('{')
                    || previous.ends_with('}');
                if !is_comment && ends_statement {
                    break;
                }
                documented = is_comment && previous.contains("SAFETY:");
            }
            if !documented {
                problems.push(format!(
                    "{shown}:{}: unsafe without a SAFETY comment",
                    line_idx + 1
                ));
            }
        }
    }
    let expected: BTreeSet<String> = UNSAFE_MODULES
        .iter()
        .map(|path| (*path).to_owned())
        .collect();
    assert_eq!(allowing, expected, "modules that allow unsafe code");
    assert!(problems.is_empty(), "{problems:#?}");
    Ok(())
}

#[test]
fn every_module_starts_with_its_doc_comment() -> anyhow::Result<()> {
    let mut undocumented = Vec::new();
    for file in rust_files()? {
        let text = read(&file)?;
        if !text.trim_start().starts_with("//!") {
            undocumented.push(file.display().to_string());
        }
    }
    assert!(
        undocumented.is_empty(),
        "files without a //! module doc: {undocumented:#?}"
    );
    Ok(())
}

/// The one place a test may pause: the back-off between two checks of a fact.
const SLEEP_ALLOWED: &[&str] = &["harness/src/wait.rs"];

#[test]
fn tests_wait_on_facts_never_on_fixed_sleeps() -> anyhow::Result<()> {
    let mut sleepers = Vec::new();
    for file in rust_files()? {
        let shown = file.display().to_string();
        if SLEEP_ALLOWED.contains(&shown.as_str()) {
            continue;
        }
        let text = read(&file)?;
        let is_test_file = shown.starts_with("tests/")
            || shown.starts_with("harness/")
            || shown.contains("/tests/")
            || shown.ends_with("/tests.rs");
        // In other files only the unit tests count: what follows `#[cfg(test)]`.
        let test_code = if is_test_file {
            text.as_str()
        } else {
            match text.find("#[cfg(test)]") {
                Some(start) => &text[start..],
                None => continue,
            }
        };
        for (line_idx, line) in test_code.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            // Spelt in two halves so that this file does not match itself.
            if code.contains(concat!("sleep", "(")) || code.contains(concat!("sleep_ms", "(")) {
                sleepers.push(format!(
                    "{shown} (test code line {}): {}",
                    line_idx + 1,
                    line.trim()
                ));
            }
        }
    }
    assert!(sleepers.is_empty(), "fixed sleeps in tests: {sleepers:#?}");
    Ok(())
}

#[test]
fn every_declared_dependency_is_used() -> anyhow::Result<()> {
    let metadata = metadata()?;
    let files = rust_files()?;
    let package_dirs = files_dirs(&metadata)?;
    let mut unused = Vec::new();
    for (name, (dir, package)) in workspace_packages(&metadata)? {
        let relative_dir = dir.strip_prefix(root())?.to_owned();
        let mut sources = String::new();
        for file in &files {
            // This package's files, not those of a package nested inside it.
            if owning_package_dir(file, &package_dirs) == relative_dir {
                sources.push_str(&read(file)?);
                sources.push('\n');
            }
        }
        for dependency in package["dependencies"].as_array().context("dependencies")? {
            let dep_name = dependency["rename"]
                .as_str()
                .or_else(|| dependency["name"].as_str())
                .context("dependency name")?;
            let ident = dep_name.replace('-', "_");
            let used = [
                format!("{ident}::"),
                format!("use {ident}"),
                format!("{ident}!"),
            ]
            .iter()
            .any(|pattern| sources.contains(pattern.as_str()));
            if !used {
                unused.push(format!("{name} declares {dep_name} but never uses it"));
            }
        }
    }
    assert!(unused.is_empty(), "{unused:#?}");
    Ok(())
}

/// The manifest directories of every workspace package, relative to the root.
fn files_dirs(metadata: &Value) -> anyhow::Result<Vec<PathBuf>> {
    let root = root();
    workspace_packages(metadata)?
        .into_values()
        .map(|(dir, _)| Ok(dir.strip_prefix(&root)?.to_owned()))
        .collect()
}

/// The package directory a file belongs to: the deepest one that holds it.
fn owning_package_dir(file: &Path, package_dirs: &[PathBuf]) -> PathBuf {
    package_dirs
        .iter()
        .filter(|dir| file.starts_with(dir))
        .max_by_key(|dir| dir.components().count())
        .cloned()
        .unwrap_or_default()
}
