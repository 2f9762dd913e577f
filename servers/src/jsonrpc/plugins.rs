//! The plugins of one `websocket_jsonrpc` process: pairing each `-L` with its
//! `-C`, finding and loading the files, and refusing a method name that two
//! plugins declare.
//!
//! Everything here happens once, at startup, and every failure is a
//! [`SetupError`] that names the file and the cause. Calling the plugins is
//! [`super::dispatch`]'s job.

use std::path::PathBuf;
use std::sync::Arc;

use rpc_abi::host::{LoadError, LoadedPlugin, PluginLibrary};
use tracing::info;

use super::lookup::{SearchPath, find_plugin};

/// One `-L` and the `-C` that follows it, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginSpec {
    /// The `-L` argument: a path or a name to look up.
    pub name: String,
    /// The `-C` argument, passed to the plugin's `init`.
    pub config: Option<String>,
}

/// Why `websocket_jsonrpc` cannot start.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// No `-L` was given.
    #[error("no plugin given: name one or more with -L <plugin>")]
    NoPlugin,
    /// A `-C` came before any `-L`.
    #[error("-C {config:?} comes before any -L: each -C configures the -L right before it")]
    ConfigWithoutPlugin {
        /// The `-C` argument.
        config: String,
    },
    /// Two `-C` follow one `-L`.
    #[error("plugin {plugin:?} is given two -C configurations; each -L takes at most one")]
    TwoConfigs {
        /// The `-L` argument.
        plugin: String,
    },
    /// The `-L` name matches no file.
    #[error("plugin {name:?} not found; tried {}", display_paths(tried))]
    NotFound {
        /// The `-L` argument.
        name: String,
        /// Every path tried, in order.
        tried: Vec<PathBuf>,
    },
    /// The file is not a usable plugin, or its `init` failed.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Two plugins declare the same method.
    #[error(
        "method {method:?} is declared by both plugin {first} ({}) and plugin {second} ({})",
        first_path.display(),
        second_path.display()
    )]
    MethodClash {
        /// The method name.
        method: String,
        /// The plugin loaded first.
        first: String,
        /// Its file.
        first_path: PathBuf,
        /// The plugin that declared it again.
        second: String,
        /// Its file.
        second_path: PathBuf,
    },
}

fn display_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|path| path.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Pairs `-L` and `-C` arguments by their position on the command line (as
/// clap's `indices_of` reports it): a `-C` configures the `-L` right before it.
pub fn pair_configs(
    plugins: &[(usize, String)],
    configs: &[(usize, String)],
) -> Result<Vec<PluginSpec>, SetupError> {
    if plugins.is_empty() {
        return Err(SetupError::NoPlugin);
    }
    let mut specs: Vec<(usize, PluginSpec)> = plugins
        .iter()
        .map(|(index, name)| {
            (
                *index,
                PluginSpec {
                    name: name.clone(),
                    config: None,
                },
            )
        })
        .collect();
    specs.sort_by_key(|(index, _)| *index);
    for (config_index, config) in configs {
        let owner = specs
            .iter_mut()
            .rev()
            .find(|(plugin_index, _)| plugin_index < config_index);
        match owner {
            None => {
                return Err(SetupError::ConfigWithoutPlugin {
                    config: config.clone(),
                });
            }
            Some((_, spec)) if spec.config.is_some() => {
                return Err(SetupError::TwoConfigs {
                    plugin: spec.name.clone(),
                });
            }
            Some((_, spec)) => spec.config = Some(config.clone()),
        }
    }
    Ok(specs.into_iter().map(|(_, spec)| spec).collect())
}

/// One method: its name, kept for the life of the process because jsonrpsee
/// registers methods under `&'static str`, and the plugin that answers it.
#[derive(Debug, Clone, Copy)]
pub struct MethodEntry {
    /// The method name.
    pub name: &'static str,
    /// Index of its plugin in [`PluginSet::plugins`].
    pub plugin_idx: usize,
}

/// The loaded, initialised plugins and the method table built from them.
#[derive(Debug)]
pub struct PluginSet {
    plugins: Vec<Arc<LoadedPlugin>>,
    methods: Vec<MethodEntry>,
}

impl PluginSet {
    /// Finds, loads and initialises each plugin in order, then checks that no
    /// method is declared twice. A plugin whose file is missing stops the
    /// startup before any later plugin is initialised.
    pub fn load(specs: &[PluginSpec], search: &SearchPath) -> Result<PluginSet, SetupError> {
        let mut libraries = Vec::with_capacity(specs.len());
        for spec in specs {
            let path = find_plugin(&spec.name, search).map_err(|tried| SetupError::NotFound {
                name: spec.name.clone(),
                tried,
            })?;
            libraries.push((PluginLibrary::open(&path)?, spec.config.as_deref()));
        }
        // Clashes are found before any plugin's init runs (init may create files).
        for (library_idx, (library, _)) in libraries.iter().enumerate() {
            for (earlier, _) in &libraries[..library_idx] {
                if let Some(method) = library
                    .methods()
                    .iter()
                    .find(|method| earlier.methods().contains(method))
                {
                    return Err(SetupError::MethodClash {
                        method: method.clone(),
                        first: earlier.name().to_owned(),
                        first_path: earlier.path().to_owned(),
                        second: library.name().to_owned(),
                        second_path: library.path().to_owned(),
                    });
                }
            }
        }
        let mut plugins = Vec::with_capacity(libraries.len());
        for (library, config) in libraries {
            plugins.push(Arc::new(library.init(config)?));
        }
        Ok(PluginSet::from_plugins(plugins))
    }

    /// A set of plugins initialised by the caller (tests use in-process ones).
    /// Method names must not clash; a later duplicate is ignored.
    pub fn from_plugins(plugins: Vec<Arc<LoadedPlugin>>) -> PluginSet {
        let mut methods: Vec<MethodEntry> = Vec::new();
        for (plugin_idx, plugin) in plugins.iter().enumerate() {
            info!(
                plugin = plugin.name(),
                path = %plugin.path().display(),
                methods = ?plugin.methods(),
                "plugin loaded"
            );
            for method in plugin.methods() {
                if methods.iter().any(|entry| entry.name == method) {
                    continue;
                }
                // Leaked once per method at startup: jsonrpsee wants `&'static str`.
                let name: &'static str = Box::leak(method.clone().into_boxed_str());
                methods.push(MethodEntry { name, plugin_idx });
            }
        }
        PluginSet { plugins, methods }
    }

    /// The plugins, in `-L` order.
    pub fn plugins(&self) -> &[Arc<LoadedPlugin>] {
        &self.plugins
    }

    /// Every method with its plugin.
    pub fn methods(&self) -> &[MethodEntry] {
        &self.methods
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, config: Option<&str>) -> PluginSpec {
        PluginSpec {
            name: name.to_owned(),
            config: config.map(str::to_owned),
        }
    }

    fn owned(args: &[(usize, &str)]) -> Vec<(usize, String)> {
        args.iter()
            .map(|(index, text)| (*index, (*text).to_owned()))
            .collect()
    }

    #[test]
    fn each_config_goes_to_the_plugin_before_it() {
        let specs = pair_configs(
            &owned(&[(1, "a.so"), (5, "b.so"), (3, "c.so")]),
            &owned(&[(2, "for a"), (6, "for b")]),
        )
        .expect("pairs");
        assert_eq!(
            specs,
            [
                spec("a.so", Some("for a")),
                spec("c.so", None),
                spec("b.so", Some("for b"))
            ]
        );
    }

    #[test]
    fn stray_and_double_configs_and_no_plugin_are_errors() {
        assert!(matches!(
            pair_configs(&owned(&[(3, "a.so")]), &owned(&[(1, "x")])),
            Err(SetupError::ConfigWithoutPlugin { .. })
        ));
        assert!(matches!(
            pair_configs(&owned(&[(1, "a.so")]), &owned(&[(2, "x"), (4, "y")])),
            Err(SetupError::TwoConfigs { .. })
        ));
        assert!(matches!(pair_configs(&[], &[]), Err(SetupError::NoPlugin)));
    }

    #[test]
    fn a_missing_plugin_names_every_path_tried() {
        let error = PluginSet::load(
            &[spec("surely_missing_plugin.so", None)],
            &SearchPath::default(),
        )
        .expect_err("missing");
        let text = error.to_string();
        assert!(
            text.contains("surely_missing_plugin.so")
                && text.contains("libsurely_missing_plugin.so"),
            "{text}"
        );
    }
}
