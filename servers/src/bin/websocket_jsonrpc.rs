//! `websocket_jsonrpc`: JSON-RPC 2.0 over WebSocket, with the methods of the
//! plugins given with `-L` (each configured by the `-C` that follows it).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use backend::{CommonArgs, LaunchError, ServeOptions};
use clap::{CommandFactory, FromArgMatches, Parser};
use servers::jsonrpc::{self, DEFAULT_PLUGIN_DIR, PluginSet, SearchPath};

/// JSON-RPC server for wsgate: each WebSocket message is a JSON-RPC 2.0
/// request or batch, answered by the methods of the loaded plugins.
///
/// Plugins: `-L NAME` loads a plugin library. A NAME with a `/` is a path;
/// otherwise NAME, libNAME, NAME.so and libNAME.so are tried in the current
/// directory, then the directory of this executable, then --plugin-dir. Each
/// `-C CONFIG` configures the `-L` right before it:
/// `-L authrpc.so -C users.db -L sqlrpc.so -C data.db?exec=1`.
/// Two plugins declaring the same method is a startup error.
///
/// Shipped plugins: authrpc (`-C users.db`, created on first use; root's first
/// password is WSGATE_ROOT_PASSWORD or a random one printed once on stderr) and
/// sqlrpc (`-C data.db[?write=1][&exec=1]`, read-only by default). The plugin
/// ABI and the methods are documented in docs/plugin-abi.md.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// Load a plugin (repeatable; see above for how NAME is found).
    #[arg(short = 'L', long = "plugin", value_name = "NAME", required = true)]
    plugins: Vec<String>,
    /// Configuration string for the plugin of the preceding -L (its meaning is the plugin's).
    #[arg(
        short = 'C',
        long = "config",
        value_name = "CONFIG",
        allow_hyphen_values = true
    )]
    configs: Vec<String>,
    /// Directory searched for plugins after the current and the executable's directory.
    #[arg(long = "plugin-dir", value_name = "DIR", env = "WSGATE_PLUGIN_DIR", default_value = DEFAULT_PLUGIN_DIR)]
    plugin_dir: PathBuf,
}

fn main() -> ExitCode {
    let matches = Args::command().get_matches();
    let args = match Args::from_arg_matches(&matches) {
        Ok(args) => args,
        Err(error) => error.exit(),
    };
    let indexed = |id: &str, values: &[String]| -> Vec<(usize, String)> {
        matches
            .indices_of(id)
            .map(|indices| indices.zip(values.iter().cloned()).collect())
            .unwrap_or_default()
    };
    let plugins = indexed("plugins", &args.plugins);
    let configs = indexed("configs", &args.configs);
    backend::init_tracing(args.common.log_format);
    let search = SearchPath {
        exe_dir: std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(PathBuf::from)),
        plugin_dir: Some(args.plugin_dir.clone()),
    };
    let setup = || {
        let specs = jsonrpc::pair_configs(&plugins, &configs)
            .map_err(|error| LaunchError::Setup(Box::new(error)))?;
        let plugin_set = PluginSet::load(&specs, &search)
            .map_err(|error| LaunchError::Setup(Box::new(error)))?;
        let plugin_set = Arc::new(plugin_set);
        Ok(move |session, shutdown| {
            jsonrpc::run_session(session, shutdown, Arc::clone(&plugin_set))
        })
    };
    match backend::launch(
        &args.common,
        "websocket_jsonrpc",
        ServeOptions::default(),
        setup,
    ) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("websocket_jsonrpc: {error}");
            ExitCode::FAILURE
        }
    }
}
