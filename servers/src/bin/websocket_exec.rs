//! `websocket_exec`: runs a program for each client, websocketd-style; the
//! client's messages are the program's stdin, its stdout the client's
//! messages (`docs/exec.md`).

use std::ffi::OsString;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use backend::{CommonArgs, ServeOptions};
use clap::Parser;
use servers::exec::{
    self, DEFAULT_GRACE, DEFAULT_MAX_LINE, DEFAULT_MAX_PROGRAMS, DEFAULT_STDIN_TIMEOUT,
    ExecOptions, ProgramSpec,
};

/// Program runner for wsgate: each client gets its own process of PROGRAM.
///
/// Each text message from the client is one line on the program's stdin;
/// each line the program writes to stdout is one text message to the client
/// (--binary: bytes both ways, as binary messages). The program's stderr goes
/// to this server's log, prefixed with the client's id. Its environment is
/// CGI-like (REMOTE_ADDR, QUERY_STRING, HTTP_*, HTTPS, WSGATE_IDENTITY, ...)
/// plus the --passenv variables, and nothing else. It exits 0: the client is
/// closed with 1000; it fails: 1011. The client leaves: stdin is closed, then
/// SIGTERM and SIGKILL follow --grace seconds apart. -m bounds the programs
/// running at once [default for this server: 256]; the next client gets 1013.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// Pass bytes through as binary messages, with no line splitting (both ways).
    #[arg(long = "binary")]
    binary: bool,
    /// Variables of this server's own environment to pass to the program
    /// (comma-separated; PATH is not passed unless named here).
    #[arg(long = "passenv", value_name = "NAME,...", value_delimiter = ',', value_parser = parse_variable_name)]
    passenv: Vec<String>,
    /// Seconds a program gets to exit after EOF on stdin, and again after SIGTERM, before SIGKILL (fractions allowed).
    #[arg(long = "grace", value_name = "SECS", default_value_t = DEFAULT_GRACE.as_secs_f64(), value_parser = parse_grace)]
    grace: f64,
    /// Longest line the program may write in text mode, in bytes; a longer one closes the client with 1011.
    #[arg(long = "max-line", value_name = "BYTES", default_value_t = DEFAULT_MAX_LINE as u64, value_parser = clap::value_parser!(u64).range(1..=(64 << 20)))]
    max_line: u64,
    /// How long a client message may wait for the program to take it into
    /// its stdin; past it the client is closed with 1011 and the program ended.
    #[arg(long = "stdin-timeout", value_name = "SECS", default_value_t = DEFAULT_STDIN_TIMEOUT.as_secs_f64(), value_parser = parse_grace)]
    stdin_timeout: f64,
    /// The program to run for each client and its arguments (after `--`).
    #[arg(
        value_name = "PROGRAM",
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    command: Vec<OsString>,
}

fn parse_variable_name(text: &str) -> Result<String, String> {
    let is_name = !text.is_empty()
        && text
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_');
    if is_name {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "{text:?} is not a variable name (letters, digits, _)"
        ))
    }
}

fn parse_grace(text: &str) -> Result<f64, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if seconds > 0.0 && seconds <= 3600.0 {
        Ok(seconds)
    } else {
        Err(format!("{text:?} is not between 0 and 3600 seconds"))
    }
}

fn main() -> ExitCode {
    let mut args = Args::parse();
    backend::init_tracing(args.common.log_format);
    let Some((program, program_args)) = args.command.split_first() else {
        eprintln!(
            "websocket_exec: no program given (websocket_exec [OPTIONS] -- PROGRAM [ARGS]...)"
        );
        return ExitCode::FAILURE;
    };
    let path = match exec::resolve_program(program, std::env::var_os("PATH").as_deref()) {
        Ok(path) => path,
        Err(error) => {
            eprintln!("websocket_exec: {error}");
            return ExitCode::FAILURE;
        }
    };
    let passed_env = args
        .passenv
        .iter()
        .filter_map(|name| Some((OsString::from(name), std::env::var_os(name)?)))
        .collect();
    let grace = Duration::from_secs_f64(args.grace);
    let options = Arc::new(ExecOptions {
        program: ProgramSpec {
            path,
            args: program_args.to_vec(),
            passed_env,
        },
        binary: args.binary,
        grace,
        // At most 64 MiB, as the flag's parser checked.
        max_line: usize::try_from(args.max_line).unwrap_or(DEFAULT_MAX_LINE),
        stdin_timeout: Duration::from_secs_f64(args.stdin_timeout),
    });
    // Each client is a process with three pipes: the default bound is this
    // server's own, not the descriptor-derived one of the other backends.
    args.common.max_clients.get_or_insert(DEFAULT_MAX_PROGRAMS);
    let serve_options = ServeOptions {
        // Closing a client and ending its program take at most two graces,
        // and the stderr logger one more.
        shutdown_timeout: grace * 3 + Duration::from_secs(1),
        ..ServeOptions::default()
    };
    let setup =
        || Ok(move |session, shutdown| exec::run_session(session, shutdown, Arc::clone(&options)));
    match backend::launch(&args.common, "websocket_exec", serve_options, setup) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("websocket_exec: {error}");
            ExitCode::FAILURE
        }
    }
}
