//! `websocket_broker`: a message broker that speaks the protocol of one of
//! four known brokers (`--dialect tokens|channels|wsmsgbroker|achex`) over
//! one routing core (`servers::broker`, `docs/broker.md`).

use std::io::Read;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use backend::{Admission, CommonArgs, LaunchError, RejectReply, ServeOptions};
use clap::{ArgAction, Parser};
use servers::backplane::{self, RedisArgs};
use servers::broker::accounts::Accounts;
use servers::broker::authorizer::{self, Authorizer};
use servers::broker::http::ApiToken;
use servers::broker::{
    self, Broker, BrokerOptions, Core, CoreLimits, DEFAULT_MAX_MESSAGE, Dialect, LocalCore,
    token_list,
};
use tracing::{error, info};

/// Message broker for wsgate, speaking the protocol of websockets_pro (tokens), wsify
/// (channels), wsmsgbroker or Achex. The protocols are described in docs/broker.md.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// The protocol this instance speaks.
    #[arg(long = "dialect", value_name = "NAME", value_enum)]
    dialect: Dialect,
    /// Largest message a client may send, in bytes; a larger one closes it with 1009.
    #[arg(long = "max-message", value_name = "BYTES", default_value_t = DEFAULT_MAX_MESSAGE)]
    max_message: usize,
    /// Longest token, id or channel name, in bytes.
    #[arg(long = "max-name", value_name = "BYTES", default_value_t = 128)]
    max_name: usize,
    /// Channels or broadcast groups one client may be in at once.
    #[arg(long = "max-groups", value_name = "N", default_value_t = 64)]
    max_groups: usize,
    /// Messages that may wait for one client. A sender waits while a receiver's queue is full; a
    /// client whose queue is full and who reads nothing for --stall-timeout is closed with 1008.
    #[arg(long = "queue", value_name = "N", default_value_t = NonZeroUsize::new(256).expect("256 is not zero"))]
    queue_capacity: NonZeroUsize,
    /// Payload bytes that may wait for one client (default 1 MiB), with the same effect as --queue.
    #[arg(long = "queue-bytes", value_name = "BYTES", default_value_t = NonZeroUsize::new(1 << 20).expect("1 MiB is not zero"))]
    queue_bytes: NonZeroUsize,
    /// Seconds a client with a full queue may read nothing before it is closed with 1008.
    #[arg(long = "stall-timeout", value_name = "SECONDS", default_value_t = 2)]
    stall_timeout: u64,
    /// File holding the bearer token the HTTP API requires; without it the API answers 403.
    #[arg(long = "api-token-file", value_name = "FILE")]
    api_token_file: Option<PathBuf>,
    /// tokens: whether a client may connect without a token (as "unregistered") and register any
    /// token; with false a client must bring a registered token (--tokens, the API).
    #[arg(long = "allow-unregistered", value_name = "BOOL", default_value_t = true, action = ArgAction::Set)]
    allow_unregistered: bool,
    /// tokens: the registered tokens, a JSON object file or http:// URL ({"abc1": true}); re-read on SIGHUP.
    #[arg(long = "tokens", value_name = "FILE|URL")]
    tokens: Option<String>,
    /// channels: POST every message to this http:// webhook first (200 allows it, 5xx closes the
    /// client with 1013, anything else refuses the message).
    #[arg(long = "authorizer", value_name = "URL")]
    authorizer: Option<String>,
    /// channels: seconds the authorizer has to answer; no answer counts as 5xx.
    #[arg(long = "authorizer-timeout", value_name = "SECONDS", default_value_t = authorizer::DEFAULT_TIMEOUT.as_secs())]
    authorizer_timeout: u64,
    /// channels: authorizer requests in flight at once.
    #[arg(long = "authorizer-max-concurrent", value_name = "N", default_value_t = authorizer::DEFAULT_MAX_CONCURRENT)]
    authorizer_max_concurrent: usize,
    /// wsmsgbroker: registering an id that a live client holds takes it over (the original's
    /// behaviour) instead of being refused.
    #[arg(long = "takeover")]
    takeover: bool,
    /// wsmsgbroker: seconds an ack waits for its answer.
    #[arg(long = "ack-ttl", value_name = "SECONDS", default_value_t = 60)]
    ack_ttl: u64,
    /// achex: the SQLite file of ids and password hashes (created if missing).
    #[arg(short = 'C', long = "accounts", value_name = "FILE")]
    accounts: Option<PathBuf>,
    /// achex: create or reset the service NAME with the password read from standard input, then exit.
    #[arg(long = "add-service", value_name = "NAME", requires = "accounts")]
    add_service: Option<String>,
    #[command(flatten)]
    redis: RedisArgs,
}

/// A flag given for a dialect that does not use it.
fn check_flags(args: &Args) -> Result<(), String> {
    let for_dialect = [
        ("--tokens", args.tokens.is_some(), Dialect::Tokens),
        (
            "--allow-unregistered false",
            !args.allow_unregistered,
            Dialect::Tokens,
        ),
        ("--authorizer", args.authorizer.is_some(), Dialect::Channels),
        ("--takeover", args.takeover, Dialect::Wsmsgbroker),
        ("-C", args.accounts.is_some(), Dialect::Achex),
    ];
    for (flag, given, dialect) in for_dialect {
        if given && dialect != args.dialect {
            let dialect = format!("{:?}", args.dialect).to_lowercase();
            return Err(format!("{flag} does not apply to --dialect {dialect}"));
        }
    }
    if args.api_token_file.is_some() && !matches!(args.dialect, Dialect::Tokens | Dialect::Channels)
    {
        return Err(
            "--api-token-file: only the tokens and channels dialects have an HTTP API".to_owned(),
        );
    }
    if args.dialect == Dialect::Achex && args.accounts.is_none() {
        return Err("--dialect achex needs -C FILE, the account database".to_owned());
    }
    if args.max_message == 0
        || args.max_name == 0
        || args.authorizer_timeout == 0
        || args.ack_ttl == 0
    {
        return Err(
            "--max-message, --max-name, --authorizer-timeout and --ack-ttl must be positive"
                .to_owned(),
        );
    }
    Ok(())
}

fn setup_error(error: impl std::fmt::Display) -> LaunchError {
    LaunchError::Setup(error.to_string().into())
}

/// Loads the --tokens list now, and again on every SIGHUP on a thread of its own.
fn load_tokens(source: String, core: Arc<LocalCore>) -> Result<(), LaunchError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let tokens = runtime
        .block_on(token_list::load(&source))
        .map_err(setup_error)?;
    let n_tokens = tokens.len();
    core.set_registered(tokens).map_err(setup_error)?;
    info!(n_tokens, %source, "registered tokens loaded");
    // Registered before the socket is published, so a SIGHUP never kills the broker.
    let mut hangups = runtime.block_on(async {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
    })?;
    std::thread::Builder::new()
        .name("token-reload".to_owned())
        .spawn(move || {
            runtime.block_on(async {
                while hangups.recv().await.is_some() {
                    match token_list::load(&source).await {
                        Ok(tokens) => {
                            let n_tokens = tokens.len();
                            match core.set_registered(tokens) {
                                Ok(()) => info!(n_tokens, "registered tokens reloaded"),
                                Err(error) => {
                                    error!(%error, "token list refused; keeping the old one")
                                }
                            }
                        }
                        Err(error) => {
                            error!(%error, "token list not reloaded; keeping the old one")
                        }
                    }
                }
            });
        })?;
    Ok(())
}

fn add_service(accounts: &Accounts, name: &str) -> Result<(), String> {
    let mut password = String::new();
    std::io::stdin()
        .take(4096)
        .read_to_string(&mut password)
        .map_err(|error| format!("cannot read the password from standard input: {error}"))?;
    let password = password.trim_end_matches(['\n', '\r']);
    accounts
        .set_service(name, password)
        .map_err(|error| error.to_string())
}

fn main() -> ExitCode {
    let args = Args::parse();
    backend::init_tracing(args.common.log_format);
    if let Err(message) = check_flags(&args) {
        eprintln!("websocket_broker: {message}");
        return ExitCode::FAILURE;
    }
    if let (Some(name), Some(path)) = (&args.add_service, &args.accounts) {
        let added = Accounts::open(path)
            .map_err(|error| error.to_string())
            .and_then(|accounts| add_service(&accounts, name));
        return match added {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => {
                eprintln!("websocket_broker: {message}");
                ExitCode::FAILURE
            }
        };
    }
    let limits = CoreLimits {
        queue_capacity: args.queue_capacity,
        queue_bytes: args.queue_bytes,
        stall_timeout: Duration::from_secs(args.stall_timeout),
        max_name_len: args.max_name,
        max_group_len: args.max_name,
        max_groups_per_client: args.max_groups,
        ..CoreLimits::default()
    };
    let options = BrokerOptions {
        dialect: args.dialect,
        max_message: args.max_message,
        allow_unregistered: args.allow_unregistered,
        takeover: args.takeover,
        ack_ttl: Duration::from_secs(args.ack_ttl),
    };
    let published = Arc::new(OnceLock::new());
    let serve_options = ServeOptions {
        request_handler: Some(broker::http::request_handler(Arc::clone(&published))),
        admission: (args.dialect == Dialect::Tokens && !args.allow_unregistered).then(|| {
            let published = Arc::clone(&published);
            Admission::new(move |meta| match published.get() {
                Some(broker) => broker::tokens::admit(broker, meta),
                None => Err(RejectReply {
                    status: 503,
                    reason: "the broker is still starting".to_owned(),
                }),
            })
        }),
        // The gateway (or, in direct mode, the library) closes a client with
        // 1009 before it has sent more than this: never buffered whole here.
        max_message_size: Some(args.max_message),
        ..ServeOptions::default()
    };
    let redis = args.redis.options(
        &args.common.name_or("websocket_broker"),
        "broker",
        args.max_message,
    );
    // Served from the start, at 0; `broker::run_session` counts into it.
    serve_options.metrics.slow_client_evictions();
    let setup = || {
        let core = Arc::new(match &redis {
            // Client numbers must not clash with another instance's.
            Some(_) => LocalCore::with_first_id(limits, broker::shared::first_client_id()),
            None => LocalCore::new(limits),
        });
        if let Some(source) = args.tokens.clone() {
            load_tokens(source, Arc::clone(&core))?;
        }
        let authorizer = match &args.authorizer {
            Some(url) => Some(
                Authorizer::new(
                    url,
                    Duration::from_secs(args.authorizer_timeout),
                    args.authorizer_max_concurrent,
                )
                .map_err(setup_error)?,
            ),
            None => None,
        };
        let accounts = match &args.accounts {
            Some(path) => Some(Accounts::open(path).map_err(setup_error)?),
            None => None,
        };
        let api_token = match &args.api_token_file {
            Some(path) => Some(ApiToken::from_file(path).map_err(setup_error)?),
            None => None,
        };
        let core: Arc<dyn Core> = core;
        let broker = Arc::new(Broker {
            core,
            options,
            authorizer,
            accounts,
            api_token,
            backplane: OnceLock::new(),
        });
        if let Some(redis) = redis {
            backplane::start(redis, |backplane| {
                let _ = broker.backplane.set(backplane);
                Arc::clone(&broker)
            })
            .map_err(setup_error)?;
        }
        // Set once, before the socket is published: the handler never sees it empty.
        let _ = published.set(Arc::clone(&broker));
        Ok(move |session, shutdown| broker::run_session(session, shutdown, Arc::clone(&broker)))
    };
    match backend::launch(&args.common, "websocket_broker", serve_options, setup) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("websocket_broker: {error}");
            ExitCode::FAILURE
        }
    }
}
