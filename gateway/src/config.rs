//! The gateway's settings: the command line ([`Args`], clap derive), the same
//! settings as a TOML file (`--config FILE`), and the validated [`Config`].
//!
//! A flag given on the command line overrides the file's value; a list flag
//! given once or more replaces the file's whole list. Validation (globs, origins,
//! limits) happens here, so a bad setting stops the gateway at start-up with a
//! message that names it. Using the settings is everyone else's job.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::access::{DirectGlobError, GlobError, NamePolicy, OriginError, OriginPolicy};
use crate::authorizer::{AuthorizerConfigError, AuthorizerRules};
use crate::deflate::DeflateNames;
use crate::forward::{HttpGlobError, HttpNames};
use crate::supervisor::{BackendConfigError, BackendSpec, BackendTable, backend_specs};

/// Default listen address.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), 8080);
/// Default directory of the backends' UNIX sockets.
pub const DEFAULT_DOCROOT: &str = "/var/run/websocket";
/// Default largest WebSocket message (and link record payload): 16 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = link::DEFAULT_MAX_PAYLOAD;
/// Default largest number of WebSocket clients at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default seconds between pings to a client.
pub const DEFAULT_PING_INTERVAL: u64 = 30;
/// Default seconds of silence after which a client is closed.
pub const DEFAULT_IDLE_TIMEOUT: u64 = 120;
/// Default seconds a backend has to answer OPEN.
pub const DEFAULT_ACCEPT_TIMEOUT: u64 = 5;
/// Default seconds that graceful shutdown (and each close handshake) may take.
pub const DEFAULT_SHUTDOWN_TIMEOUT: u64 = 5;

/// Default seconds a client has to send a complete request head.
pub const DEFAULT_HEADER_TIMEOUT: u64 = 10;
/// Default largest request line or header line, in bytes (nginx's
/// `large_client_header_buffers` buffer size).
pub const DEFAULT_MAX_HEADER_SIZE: usize = 8 * 1024;
/// Default largest request head (request line and every header), in bytes
/// (nginx's four large header buffers of 8 KiB).
pub const DEFAULT_MAX_REQUEST_HEADER_SIZE: usize = 32 * 1024;
/// Default largest number of connections from one IP address that have not
/// upgraded (plain HTTP, or a handshake in progress).
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 256;
/// Default seconds a client has, from its TCP connection, to finish the TLS handshake.
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: u64 = 10;
/// Default largest number of TLS handshakes in progress at once.
pub const DEFAULT_TLS_MAX_HANDSHAKES: usize = 256;

/// Default largest request body forwarded to a backend: 1 MiB.
pub const DEFAULT_MAX_REQUEST_BODY: usize = 1024 * 1024;
/// Default seconds the authorizer has to answer.
pub const DEFAULT_AUTHORIZER_TIMEOUT: u64 = 2;

/// The largest `--workers`: each worker is a process with its own runtime.
pub const MAX_WORKERS: usize = 256;
/// The largest `--threads`: runtime threads of one gateway process.
pub const MAX_THREADS: usize = 1024;

/// hyper reads a request head into a buffer of at least this many bytes.
const MIN_REQUEST_HEADER_SIZE: usize = 8192;

/// The largest `--max-message-size`: a link record length is 32 bits.
const MAX_MESSAGE_SIZE_LIMIT: usize = u32::MAX as usize;

/// The `wsgate` command line. Every flag except `--config` and
/// `--check-config` has a key of the same name in snake_case in the TOML
/// file; flags override the file. Supervised backends (`[[backend]]`) exist
/// only in the file.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Parser)]
#[command(
    name = "wsgate",
    version,
    about = "WebSocket gateway: serves HTTP and static files, and relays each WebSocket client to the backend listening on <docroot>/<name>",
    after_help = "Every flag but --config and --check-config can also be set in the TOML file \
                  given with --config, under the flag's name in snake_case (e.g. \
                  max_message_size = 1048576, listen = [\"127.0.0.1:8080\"]). Flags override the \
                  file; a repeatable flag given on the command line replaces the file's list. \
                  Relative paths in the file are relative to the file's directory. The file's \
                  [[backend]] tables are backends the gateway starts and supervises. SIGHUP \
                  reads the file again and applies it to new clients (listen, tls_listen and \
                  docroot need a restart). See docs/configuration.md for a full example."
)]
pub struct Args {
    /// Read settings from this TOML file first; flags override its values.
    /// SIGHUP reads it again (docs/configuration.md, "Reload").
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Check this TOML file (with the other flags applied), as `nginx -t`
    /// does: settings, globs, certificates, backend commands and users.
    /// Prints `wsgate: configuration FILE is ok` and exits 0, or prints the
    /// reason on stderr and exits 2. Nothing is started.
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    pub check_config: Option<PathBuf>,

    /// Address to listen on, `ip:port`; repeat for several. Port 0 picks a free
    /// port; each listener prints `listening on http://<addr>` on stdout once it
    /// accepts. [default: 127.0.0.1:8080, unless --tls-listen is given]
    #[arg(long, value_name = "ADDR", value_parser = parse_listen)]
    pub listen: Vec<SocketAddr>,

    /// Address to listen on with TLS (https:// and wss://), `ip:port`; repeat
    /// for several. Each prints `listening on https://<addr>`. Needs --tls-cert
    /// and --tls-key. [default: none]
    #[arg(long, value_name = "ADDR", value_parser = parse_listen)]
    pub tls_listen: Vec<SocketAddr>,

    /// The server's certificate chain, PEM, leaf first. Re-read on SIGHUP.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// The certificate's private key, PEM (PKCS#8, RSA or EC). Re-read on SIGHUP.
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// Require a client certificate signed by a CA of this PEM file (mutual
    /// TLS); the certificate's subject is passed to the backend in OPEN.
    /// [default: no client certificate asked]
    #[arg(long, value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,

    /// Seconds a client has, from its TCP connection, to finish the TLS
    /// handshake (waiting for a handshake slot included). [default: 10]
    #[arg(long, value_name = "SECS")]
    pub tls_handshake_timeout: Option<u64>,

    /// Largest number of TLS handshakes in progress at once; more connections
    /// wait for a slot within their handshake timeout. [default: 256]
    #[arg(long, value_name = "N")]
    pub tls_max_handshakes: Option<usize>,

    /// Directory of the backends' UNIX sockets: `ws://host/<name>` is relayed to
    /// `<docroot>/<name>`. [default: /var/run/websocket]
    #[arg(short = 'R', long, value_name = "DIR")]
    pub docroot: Option<PathBuf>,

    /// Directory of static files for plain HTTP requests (`/` serves index.html).
    /// Without it, every plain request that is not a socket name gets 404.
    #[arg(long, value_name = "DIR")]
    pub htdocs: Option<PathBuf>,

    /// Glob of names that may be reached (repeatable; `*` also matches `/`).
    /// A name must match an allow glob and no deny glob, else 403. [default: *]
    #[arg(long, value_name = "GLOB")]
    pub allow: Vec<String>,

    /// Glob of names that may never be reached (repeatable). [default: none]
    #[arg(long, value_name = "GLOB")]
    pub deny: Vec<String>,

    /// Glob of names relayed in raw mode, for backends written for ouistiti:
    /// no OPEN record, bare payload bytes both ways (repeatable). [default: none]
    #[arg(long, value_name = "GLOB")]
    pub raw: Vec<String>,

    /// Glob of names served in direct mode (repeatable; `*` for every name,
    /// like ouistiti's options="direct"): after the 101 the client's socket is
    /// handed to the backend and the gateway leaves the data path. Must not
    /// overlap the raw globs. [default: none]
    #[arg(long, value_name = "GLOB")]
    pub direct: Vec<String>,

    /// In raw mode, end each client message sent to the backend with a NUL byte.
    #[arg(long)]
    pub raw_nul: bool,

    /// Never negotiate permessage-deflate (RFC 7692). By default a client
    /// that offers it gets its messages compressed, relayed or direct.
    #[arg(long)]
    pub no_deflate: bool,

    /// Glob of names that never negotiate permessage-deflate (repeatable).
    /// [default: none]
    #[arg(long, value_name = "GLOB")]
    pub no_deflate_for: Vec<String>,

    /// Glob of names that also take plain HTTP requests (repeatable): a
    /// request for `/<name>` or a path below it that is not an upgrade goes
    /// to the backend as one REQUEST record and is answered with its
    /// RESPONSE. Other names keep answering 426. Must not overlap the raw
    /// globs. [default: none]
    #[arg(long, value_name = "GLOB")]
    pub http: Vec<String>,

    /// Largest request body forwarded to a backend, in bytes; a larger one
    /// gets 413. [default: 1048576]
    #[arg(long, value_name = "BYTES")]
    pub max_request_body: Option<usize>,

    /// URL (http://) of an authorizer asked before every WebSocket client is
    /// connected to its backend: it gets a JSON POST describing the upgrade;
    /// 200 lets the client in (its JSON body reaches the backend in OPEN's
    /// `identity`), 4xx is that status to the client, 5xx, a timeout or no
    /// answer 503, anything else 403 (docs/configuration.md). In
    /// the TOML file, `authorizer` may instead list URLs per name glob.
    /// [default: none]
    #[arg(long, value_name = "URL")]
    pub authorizer: Option<String>,

    /// Seconds the authorizer has to answer (waiting for a request slot
    /// included); then the client gets 503. [default: 2]
    #[arg(long, value_name = "SECS")]
    pub authorizer_timeout: Option<u64>,

    /// Largest WebSocket message, and largest link record payload, in bytes;
    /// a client sending more is closed with 1009. [default: 16777216]
    #[arg(long, value_name = "BYTES")]
    pub max_message_size: Option<usize>,

    /// Largest number of WebSocket clients at once; the next upgrade gets 503.
    /// [default: 10000]
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,

    /// Origin allowed to upgrade, `scheme://host[:port]` (repeatable); `*` allows
    /// any. Without this flag an Origin must name the same host[:port] as the
    /// Host header. Requests without Origin (non-browser clients) are always
    /// accepted. [default: same host]
    #[arg(long, value_name = "ORIGIN")]
    pub origin: Vec<String>,

    /// Seconds between pings sent to each client; 0 disables pings. [default: 30]
    #[arg(long, value_name = "SECS")]
    pub ping_interval: Option<u64>,

    /// Seconds without any frame from a client (pongs count) before it is closed
    /// with 1001 "idle timeout"; 0 disables. Must exceed --ping-interval. [default: 120]
    #[arg(long, value_name = "SECS")]
    pub idle_timeout: Option<u64>,

    /// Seconds a backend has to answer OPEN with ACCEPT or REJECT (and to accept
    /// the connection) before the client gets 504. [default: 5]
    #[arg(long, value_name = "SECS")]
    pub accept_timeout: Option<u64>,

    /// Seconds to wait on shutdown for clients to finish their close handshakes;
    /// also bounds each close handshake. [default: 5]
    #[arg(long, value_name = "SECS")]
    pub shutdown_timeout: Option<u64>,

    /// Seconds a client has to send a complete request head once it connected
    /// (or after its previous response); then the connection is closed.
    /// [default: 10]
    #[arg(long, value_name = "SECS")]
    pub header_timeout: Option<u64>,

    /// Largest request line or header line, in bytes; a request with a longer
    /// one gets 431. [default: 8192]
    #[arg(long, value_name = "BYTES")]
    pub max_header_size: Option<usize>,

    /// Largest request head (request line and all headers), in bytes, at
    /// least 8192; a longer head gets 431. [default: 32768]
    #[arg(long, value_name = "BYTES")]
    pub max_request_header_size: Option<usize>,

    /// Largest number of connections from one IP address that have not
    /// upgraded to WebSocket (plain HTTP, handshakes in progress); more are
    /// closed at once. Upgraded clients do not count. 0: no limit. [default: 256]
    #[arg(long, value_name = "N")]
    pub max_connections_per_ip: Option<usize>,

    /// Host name this gateway serves (repeatable; the Host header without its
    /// port, compared case-insensitively). Any other Host gets 421, which stops
    /// DNS rebinding. Recommended in production. [default: any host]
    #[arg(long, value_name = "NAME")]
    pub allowed_host: Vec<String>,

    /// Number of gateway processes sharing the listening ports (SO_REUSEPORT,
    /// each with its own accept loop and its own --max-connections). Above 1,
    /// this process supervises the workers: it forwards SIGTERM, SIGINT,
    /// SIGHUP and SIGUSR2 to them and restarts one that dies. [default: 1]
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,

    /// Runtime threads of each gateway process. 1 runs everything on one
    /// thread and saves the wake-ups between threads (fastest per connection
    /// and per message; use --workers for more cores). [default: the number
    /// of CPUs divided by --workers, at least 1]
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,

    /// Log lines on stderr as `text` or `json` (one object per line).
    /// [default: text]
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<lifecycle::LogFormat>,
    /// Address to serve metrics on, `ip:port`: `GET /metrics` in the
    /// Prometheus text format (docs/metrics.md), on a listener of its own,
    /// never on the public ones. Prints `metrics on http://<addr>/metrics`.
    /// Keep it on loopback or a private network. [default: none]
    #[arg(long, value_name = "ADDR", value_parser = parse_listen)]
    pub metrics_listen: Option<SocketAddr>,
}

/// The TOML file: the same keys as the flags, all optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<Vec<String>>,
    tls_listen: Option<Vec<String>>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
    tls_handshake_timeout: Option<u64>,
    tls_max_handshakes: Option<usize>,
    docroot: Option<PathBuf>,
    htdocs: Option<PathBuf>,
    allow: Option<Vec<String>>,
    deny: Option<Vec<String>>,
    raw: Option<Vec<String>>,
    direct: Option<Vec<String>>,
    raw_nul: Option<bool>,
    no_deflate: Option<bool>,
    no_deflate_for: Option<Vec<String>>,
    http: Option<Vec<String>>,
    max_request_body: Option<usize>,
    authorizer: Option<AuthorizerSetting>,
    authorizer_timeout: Option<u64>,
    max_message_size: Option<usize>,
    max_connections: Option<usize>,
    origin: Option<Vec<String>>,
    ping_interval: Option<u64>,
    idle_timeout: Option<u64>,
    accept_timeout: Option<u64>,
    shutdown_timeout: Option<u64>,
    header_timeout: Option<u64>,
    max_header_size: Option<usize>,
    max_request_header_size: Option<usize>,
    max_connections_per_ip: Option<usize>,
    allowed_host: Option<Vec<String>>,
    /// `[[backend]]` tables: the backends the gateway starts and supervises.
    backend: Option<Vec<BackendTable>>,
    workers: Option<usize>,
    threads: Option<usize>,
    log_format: Option<String>,
    metrics_listen: Option<String>,
}

/// The file's `authorizer`: one URL for every name, or URLs per name glob.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
enum AuthorizerSetting {
    /// `authorizer = "http://..."`: every name.
    Everyone(String),
    /// `[[authorizer]]` tables, `names` globs and a `url`; the first
    /// table whose globs match a name applies, and a name that matches
    /// none has no authorizer.
    PerName(Vec<AuthorizerEntry>),
}

/// One `[[authorizer]]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthorizerEntry {
    names: Vec<String>,
    url: String,
}

impl FileConfig {
    fn read(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        FileConfig::parse(&text, path)
    }

    fn parse(text: &str, path: &Path) -> Result<FileConfig, ConfigError> {
        let mut file: FileConfig = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })?;
        // Relative paths in the file are relative to the file, not to wherever wsgate runs.
        let base = path.parent().unwrap_or(Path::new(""));
        let paths = [
            &mut file.docroot,
            &mut file.htdocs,
            &mut file.tls_cert,
            &mut file.tls_key,
            &mut file.tls_client_ca,
        ];
        for dir in paths.into_iter().flatten() {
            if dir.is_relative() {
                *dir = base.join(&*dir);
            }
        }
        for backend in file.backend.iter_mut().flatten() {
            backend.anchor(base);
        }
        Ok(file)
    }
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The `--config` file cannot be read.
    #[error("cannot read configuration file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The `--config` file is not valid TOML or has an unknown key or a wrong type.
    #[error("invalid configuration file {}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's complaint, with line and column.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// A `listen` address in the file is not `ip:port`.
    #[error("invalid listen address {0:?}: {LISTEN_FORM}")]
    Listen(String),
    /// An allow, deny or raw glob does not compile.
    #[error(transparent)]
    Glob(#[from] GlobError),
    /// A direct glob does not compile or overlaps a raw glob.
    #[error(transparent)]
    Direct(#[from] DirectGlobError),
    /// An http glob does not compile or overlaps a raw glob.
    #[error(transparent)]
    Http(#[from] HttpGlobError),
    /// An authorizer URL or glob cannot be used.
    #[error(transparent)]
    Authorizer(#[from] AuthorizerConfigError),
    /// An `origin` is malformed.
    #[error(transparent)]
    Origin(#[from] OriginError),
    /// A `[[backend]]` table cannot be used.
    #[error(transparent)]
    Backend(#[from] BackendConfigError),
    /// A number is out of its range.
    #[error("{setting} must be {expected}, got {value}")]
    OutOfRange {
        /// The setting's flag name.
        setting: &'static str,
        /// The allowed range, in words.
        expected: String,
        /// The configured value.
        value: u64,
    },
    /// `--htdocs` is missing or not a directory.
    #[error("htdocs {} is not a directory", path.display())]
    Htdocs {
        /// The configured directory.
        path: PathBuf,
        /// Why it cannot be used.
        #[source]
        source: std::io::Error,
    },
    /// An `allowed_host` is empty or holds characters a host name cannot.
    #[error("invalid allowed host {0:?}: expected a host name or IP address without port")]
    AllowedHost(String),
    /// TLS listeners without a certificate and key, or TLS files without a TLS listener.
    #[error("{0}")]
    TlsIncomplete(&'static str),
    /// `log_format` is neither `text` nor `json`.
    #[error(transparent)]
    LogFormat(#[from] lifecycle::UnknownLogFormat),
    /// `idle_timeout` would cut off clients that only answer pings.
    #[error("idle-timeout ({idle}s) must be longer than ping-interval ({ping}s), or one of them 0")]
    IdleBeforePing {
        /// The idle timeout in seconds.
        idle: u64,
        /// The ping interval in seconds.
        ping: u64,
    },
}

/// The validated settings [`crate::serve`] runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Addresses to listen on (the binary binds them; `serve` takes the listeners).
    pub listen: Vec<SocketAddr>,
    /// Addresses to listen on with TLS; empty without TLS.
    pub tls_listen: Vec<SocketAddr>,
    /// The TLS files and limits; `Some` exactly when `tls_listen` is not empty.
    pub(crate) tls: Option<TlsSettings>,
    /// Directory of the backends' UNIX sockets.
    pub(crate) docroot: PathBuf,
    /// Directory of static files; `None` answers plain requests with 404.
    pub(crate) htdocs: Option<PathBuf>,
    /// The allow, deny and raw globs on names.
    pub(crate) names: NamePolicy,
    /// Raw mode: end each client message with a NUL byte towards the backend.
    pub(crate) raw_nul: bool,
    /// Which names negotiate permessage-deflate.
    pub(crate) deflate: DeflateNames,
    /// Names that also take plain HTTP requests.
    pub(crate) http: HttpNames,
    /// Largest request body forwarded to a backend.
    pub(crate) max_request_body: usize,
    /// Which authorizer, if any, is asked about each name's clients.
    pub(crate) authorizers: AuthorizerRules,
    /// Time the authorizer has to answer.
    pub(crate) authorizer_timeout: Duration,
    /// Largest WebSocket message and link record payload, in bytes.
    pub(crate) max_message_size: usize,
    /// Largest number of WebSocket clients at once.
    pub(crate) max_connections: usize,
    /// Which `Origin` headers may upgrade.
    pub(crate) origins: OriginPolicy,
    /// Time between pings to a client; `None` sends none.
    pub(crate) ping_interval: Option<Duration>,
    /// Silence after which a client is closed; `None` never closes an idle client.
    pub(crate) idle_timeout: Option<Duration>,
    /// Time a backend has to accept the connection and answer OPEN.
    pub(crate) accept_timeout: Duration,
    /// Time graceful shutdown, and each close handshake, may take.
    pub(crate) shutdown_timeout: Duration,
    /// Time a client has to send a complete request head.
    pub(crate) header_timeout: Duration,
    /// Largest request line or header line.
    pub(crate) max_header_size: usize,
    /// Largest request head.
    pub(crate) max_request_header_size: usize,
    /// Connections from one IP address before they upgrade; `None`: no limit.
    pub(crate) max_connections_per_ip: Option<usize>,
    /// Host names served (lower case); empty: any.
    pub(crate) allowed_hosts: Vec<String>,
    /// The supervised backends, in the file's order.
    pub(crate) backends: Vec<BackendSpec>,
    /// Gateway processes sharing the listeners; 1: this process serves alone.
    pub workers: usize,
    /// Runtime threads of each gateway process.
    pub threads: usize,
    /// How log lines are written.
    pub log_format: lifecycle::LogFormat,
    /// Address of the metrics listener; `None`: no metrics served.
    pub metrics_listen: Option<SocketAddr>,
}

/// Where the TLS certificate and keys are, and the handshake limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TlsSettings {
    /// The certificate chain, PEM, leaf first.
    pub(crate) cert: PathBuf,
    /// Its private key, PEM.
    pub(crate) key: PathBuf,
    /// CAs a client certificate must be signed by; `None`: none is asked.
    pub(crate) client_ca: Option<PathBuf>,
    /// Time from the TCP connection to the end of the TLS handshake.
    pub(crate) handshake_timeout: Duration,
    /// TLS handshakes in progress at once.
    pub(crate) max_handshakes: usize,
}

impl Default for Config {
    /// The configuration of `wsgate` without flags.
    fn default() -> Config {
        Config::from_file_and_args(FileConfig::default(), Args::default())
            .expect("the defaults are valid")
    }
}

impl Config {
    /// Builds the configuration from the command line, reading `--config` first if given.
    pub fn from_args(args: Args) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => FileConfig::read(path)?,
            None => FileConfig::default(),
        };
        Config::from_file_and_args(file, args)
    }

    /// Builds the configuration from the text of a TOML file (as if read from
    /// `path`, which anchors relative paths) and the flags that override it.
    pub fn from_toml(text: &str, path: &Path, args: Args) -> Result<Config, ConfigError> {
        Config::from_file_and_args(FileConfig::parse(text, path)?, args)
    }

    fn from_file_and_args(file: FileConfig, args: Args) -> Result<Config, ConfigError> {
        let addrs = |flags: Vec<SocketAddr>, from_file: Option<Vec<String>>| {
            if !flags.is_empty() {
                return Ok(flags);
            }
            from_file
                .unwrap_or_default()
                .iter()
                .map(|addr| addr.parse().map_err(|_| ConfigError::Listen(addr.clone())))
                .collect::<Result<Vec<SocketAddr>, _>>()
        };
        let tls_listen = addrs(args.tls_listen, file.tls_listen)?;
        let mut listen = addrs(args.listen, file.listen)?;
        if listen.is_empty() && tls_listen.is_empty() {
            listen.push(DEFAULT_LISTEN);
        }
        let tls = tls_settings(
            &tls_listen,
            args.tls_cert.or(file.tls_cert),
            args.tls_key.or(file.tls_key),
            args.tls_client_ca.or(file.tls_client_ca),
            args.tls_handshake_timeout
                .or(file.tls_handshake_timeout)
                .unwrap_or(DEFAULT_TLS_HANDSHAKE_TIMEOUT),
            args.tls_max_handshakes
                .or(file.tls_max_handshakes)
                .unwrap_or(DEFAULT_TLS_MAX_HANDSHAKES),
        )?;
        let list = |flags: Vec<String>, from_file: Option<Vec<String>>, default: &[&str]| {
            if !flags.is_empty() {
                flags
            } else {
                from_file.unwrap_or_else(|| default.iter().map(|s| (*s).to_owned()).collect())
            }
        };
        let allow = list(args.allow, file.allow, &["*"]);
        let deny = list(args.deny, file.deny, &[]);
        let raw = list(args.raw, file.raw, &[]);
        let direct = list(args.direct, file.direct, &[]);
        let origin = list(args.origin, file.origin, &[]);
        let http = HttpNames::new(&list(args.http, file.http, &[]), &raw)?;
        let max_request_body = args
            .max_request_body
            .or(file.max_request_body)
            .unwrap_or(DEFAULT_MAX_REQUEST_BODY);
        check_range(
            "max-request-body",
            max_request_body as u64,
            0,
            MAX_MESSAGE_SIZE_LIMIT as u64 / 2,
        )?;
        let authorizer_rules = match (args.authorizer, file.authorizer) {
            (Some(url), _) | (None, Some(AuthorizerSetting::Everyone(url))) => {
                vec![(vec!["*".to_owned()], url)]
            }
            (None, Some(AuthorizerSetting::PerName(entries))) => entries
                .into_iter()
                .map(|entry| (entry.names, entry.url))
                .collect(),
            (None, None) => Vec::new(),
        };
        let authorizers = AuthorizerRules::new(authorizer_rules)?;
        let authorizer_timeout = args
            .authorizer_timeout
            .or(file.authorizer_timeout)
            .unwrap_or(DEFAULT_AUTHORIZER_TIMEOUT);
        check_range(
            "authorizer-timeout",
            authorizer_timeout,
            1,
            u64::from(u32::MAX),
        )?;

        let max_message_size = args
            .max_message_size
            .or(file.max_message_size)
            .unwrap_or(DEFAULT_MAX_MESSAGE_SIZE);
        check_range(
            "max-message-size",
            max_message_size as u64,
            1,
            MAX_MESSAGE_SIZE_LIMIT as u64,
        )?;
        let max_connections = args
            .max_connections
            .or(file.max_connections)
            .unwrap_or(DEFAULT_MAX_CONNECTIONS);
        check_range(
            "max-connections",
            max_connections as u64,
            1,
            tokio::sync::Semaphore::MAX_PERMITS as u64,
        )?;
        let ping = args
            .ping_interval
            .or(file.ping_interval)
            .unwrap_or(DEFAULT_PING_INTERVAL);
        let idle = args
            .idle_timeout
            .or(file.idle_timeout)
            .unwrap_or(DEFAULT_IDLE_TIMEOUT);
        if ping != 0 && idle != 0 && idle <= ping {
            return Err(ConfigError::IdleBeforePing { idle, ping });
        }
        let accept = args
            .accept_timeout
            .or(file.accept_timeout)
            .unwrap_or(DEFAULT_ACCEPT_TIMEOUT);
        check_range("accept-timeout", accept, 1, u64::from(u32::MAX))?;
        let shutdown = args
            .shutdown_timeout
            .or(file.shutdown_timeout)
            .unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT);
        for (setting, value) in [
            ("ping-interval", ping),
            ("idle-timeout", idle),
            ("shutdown-timeout", shutdown),
        ] {
            check_range(setting, value, 0, u64::from(u32::MAX))?;
        }

        let header_timeout = args
            .header_timeout
            .or(file.header_timeout)
            .unwrap_or(DEFAULT_HEADER_TIMEOUT);
        check_range("header-timeout", header_timeout, 1, u64::from(u32::MAX))?;
        let max_request_header_size = args
            .max_request_header_size
            .or(file.max_request_header_size)
            .unwrap_or(DEFAULT_MAX_REQUEST_HEADER_SIZE);
        check_range(
            "max-request-header-size",
            max_request_header_size as u64,
            MIN_REQUEST_HEADER_SIZE as u64,
            MAX_MESSAGE_SIZE_LIMIT as u64,
        )?;
        let max_header_size = args
            .max_header_size
            .or(file.max_header_size)
            .unwrap_or(DEFAULT_MAX_HEADER_SIZE);
        check_range(
            "max-header-size",
            max_header_size as u64,
            1,
            max_request_header_size as u64,
        )?;
        let max_connections_per_ip = args
            .max_connections_per_ip
            .or(file.max_connections_per_ip)
            .unwrap_or(DEFAULT_MAX_CONNECTIONS_PER_IP);
        let allowed_hosts = list(args.allowed_host, file.allowed_host, &[])
            .into_iter()
            .map(|host| {
                let valid = !host.is_empty()
                    && host
                        .bytes()
                        .all(|byte| byte.is_ascii_alphanumeric() || b"-.:[]_".contains(&byte));
                if valid {
                    Ok(host.to_ascii_lowercase())
                } else {
                    Err(ConfigError::AllowedHost(host))
                }
            })
            .collect::<Result<Vec<_>, _>>()?;

        let docroot = args
            .docroot
            .or(file.docroot)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DOCROOT));
        let backends = backend_specs(file.backend.unwrap_or_default(), &docroot)?;
        let workers = args.workers.or(file.workers).unwrap_or(1);
        check_range("workers", workers as u64, 1, MAX_WORKERS as u64)?;
        let threads = args
            .threads
            .or(file.threads)
            .unwrap_or_else(|| default_threads(workers));
        check_range("threads", threads as u64, 1, MAX_THREADS as u64)?;
        let log_format = match (args.log_format, file.log_format) {
            (Some(format), _) => format,
            (None, Some(text)) => text.parse()?,
            (None, None) => lifecycle::LogFormat::Text,
        };

        let metrics_listen = match (args.metrics_listen, file.metrics_listen) {
            (Some(addr), _) => Some(addr),
            (None, Some(addr)) => Some(addr.parse().map_err(|_| ConfigError::Listen(addr))?),
            (None, None) => None,
        };
        let seconds = |secs: u64| (secs != 0).then(|| Duration::from_secs(secs));
        Ok(Config {
            listen,
            tls_listen,
            tls,
            docroot,
            htdocs: args.htdocs.or(file.htdocs),
            names: NamePolicy::new(&allow, &deny, &raw)?.with_direct(&direct)?,
            raw_nul: args.raw_nul || file.raw_nul.unwrap_or(false),
            deflate: DeflateNames::new(
                args.no_deflate || file.no_deflate.unwrap_or(false),
                &list(args.no_deflate_for, file.no_deflate_for, &[]),
            )?,
            http,
            max_request_body,
            authorizers,
            authorizer_timeout: Duration::from_secs(authorizer_timeout),
            max_message_size,
            max_connections,
            origins: OriginPolicy::from_list(&origin)?,
            ping_interval: seconds(ping),
            idle_timeout: seconds(idle),
            accept_timeout: Duration::from_secs(accept),
            shutdown_timeout: Duration::from_secs(shutdown),
            header_timeout: Duration::from_secs(header_timeout),
            max_header_size,
            max_request_header_size,
            max_connections_per_ip: (max_connections_per_ip != 0).then_some(max_connections_per_ip),
            allowed_hosts,
            backends,
            workers,
            threads,
            log_format,
            metrics_listen,
        })
    }

    /// The configuration a reload (SIGHUP) switches to: `args` with its
    /// `--config` file read again, except for the settings that need a
    /// restart (the listen addresses and the docroot), which keep their
    /// `running` values. Returns it with the keys of those settings that the
    /// file or flags would have changed.
    pub(crate) fn reload(
        args: &Args,
        running: &Config,
    ) -> Result<(Config, Vec<&'static str>), ConfigError> {
        let mut file = match &args.config {
            Some(path) => FileConfig::read(path)?,
            None => FileConfig::default(),
        };
        let wanted = Config::from_file_and_args(file.clone(), args.clone())?;
        let needs_restart: Vec<&'static str> = [
            ("listen", wanted.listen != running.listen),
            ("tls_listen", wanted.tls_listen != running.tls_listen),
            ("docroot", wanted.docroot != running.docroot),
            ("workers", wanted.workers != running.workers),
            ("threads", wanted.threads != running.threads),
            ("log_format", wanted.log_format != running.log_format),
            (
                "metrics_listen",
                wanted.metrics_listen != running.metrics_listen,
            ),
        ]
        .into_iter()
        .filter_map(|(key, changed)| changed.then_some(key))
        .collect();
        if needs_restart.is_empty() {
            return Ok((wanted, needs_restart));
        }
        // The running values, given as flags, win over the file's.
        file.listen = None;
        file.tls_listen = None;
        file.docroot = None;
        file.workers = None;
        file.threads = None;
        file.log_format = None;
        file.metrics_listen = None;
        let pinned = Args {
            listen: running.listen.clone(),
            tls_listen: running.tls_listen.clone(),
            docroot: Some(running.docroot.clone()),
            workers: Some(running.workers),
            threads: Some(running.threads),
            log_format: Some(running.log_format),
            metrics_listen: running.metrics_listen,
            ..args.clone()
        };
        Ok((Config::from_file_and_args(file, pinned)?, needs_restart))
    }

    /// Checks what must exist before serving: `--htdocs`, when given, must
    /// be a directory, and each backend's command must be an executable and
    /// its user one the gateway may switch to. (The docroot may appear
    /// later, when the first backend creates it.)
    pub fn check_paths(&self) -> Result<(), ConfigError> {
        for backend in &self.backends {
            backend.check_host()?;
        }
        let Some(htdocs) = &self.htdocs else {
            return Ok(());
        };
        match std::fs::metadata(htdocs) {
            Ok(metadata) if metadata.is_dir() => Ok(()),
            Ok(_) => Err(ConfigError::Htdocs {
                path: htdocs.clone(),
                source: std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
            }),
            Err(source) => Err(ConfigError::Htdocs {
                path: htdocs.clone(),
                source,
            }),
        }
    }
}

/// Checks that TLS listeners come with a certificate and key, and TLS files with a listener.
fn tls_settings(
    tls_listen: &[SocketAddr],
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
    handshake_timeout: u64,
    max_handshakes: usize,
) -> Result<Option<TlsSettings>, ConfigError> {
    check_range(
        "tls-handshake-timeout",
        handshake_timeout,
        1,
        u64::from(u32::MAX),
    )?;
    check_range(
        "tls-max-handshakes",
        max_handshakes as u64,
        1,
        tokio::sync::Semaphore::MAX_PERMITS as u64,
    )?;
    if tls_listen.is_empty() {
        if cert.is_some() || key.is_some() || client_ca.is_some() {
            return Err(ConfigError::TlsIncomplete(
                "tls-cert, tls-key and tls-client-ca need a tls-listen address",
            ));
        }
        return Ok(None);
    }
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(TlsSettings {
            cert,
            key,
            client_ca,
            handshake_timeout: Duration::from_secs(handshake_timeout),
            max_handshakes,
        })),
        _ => Err(ConfigError::TlsIncomplete(
            "tls-listen needs both tls-cert and tls-key",
        )),
    }
}

/// What a listen address looks like, for the error when one does not.
const LISTEN_FORM: &str = "expected ip:port, such as 127.0.0.1:8080, 0.0.0.0:8080 or [::1]:8080 (host names are not resolved)";

/// Parses `--listen`, naming the expected form when the value is not `ip:port`.
fn parse_listen(value: &str) -> Result<SocketAddr, String> {
    value.parse().map_err(|_| LISTEN_FORM.to_owned())
}

/// `--threads` when not given: the CPUs shared out over the `workers`
/// processes, so that N workers run about as many threads as there are CPUs.
fn default_threads(workers: usize) -> usize {
    lifecycle::default_threads().div_ceil(workers.max(1)).max(1)
}

fn check_range(setting: &'static str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::OutOfRange {
            setting,
            expected: format!("between {min} and {max}"),
            value,
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    /// The example file of docs/configuration.md, which sets every key.
    fn documented_example() -> String {
        let doc = include_str!("../../docs/configuration.md");
        let start = doc
            .find("```toml\n")
            .expect("docs/configuration.md has a ```toml block");
        let rest = &doc[start + "```toml\n".len()..];
        let end = rest.find("```").expect("the toml block is closed");
        rest[..end].to_owned()
    }

    fn parse_args(args: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("wsgate").chain(args.iter().copied()))
            .expect("test flags parse")
    }

    #[test]
    fn documented_example_file_equals_the_same_flags() {
        let from_file = Config::from_toml(
            &documented_example(),
            Path::new("/etc/wsgate/wsgate.toml"),
            Args::default(),
        )
        .expect("the documented example is valid");
        let from_flags = Config::from_args(parse_args(&[
            "--listen",
            "127.0.0.1:8080",
            "--listen",
            "[::1]:8080",
            "-R",
            "/var/run/websocket",
            "--htdocs",
            "/srv/www",
            "--allow",
            "*",
            "--deny",
            "private*",
            "--deny",
            "admin/*",
            "--raw",
            "legacy-*",
            "--direct",
            "fast/*",
            "--raw-nul",
            "--no-deflate-for",
            "legacy-*",
            "--http",
            "api",
            "--http",
            "feeds/*",
            "--max-request-body",
            "65536",
            "--authorizer",
            "http://127.0.0.1:9000/authorize",
            "--authorizer-timeout",
            "3",
            "--max-message-size",
            "1048576",
            "--max-connections",
            "5000",
            "--origin",
            "https://example.com",
            "--origin",
            "http://localhost:8080",
            "--ping-interval",
            "20",
            "--idle-timeout",
            "60",
            "--accept-timeout",
            "3",
            "--shutdown-timeout",
            "10",
            "--header-timeout",
            "15",
            "--max-header-size",
            "4096",
            "--max-request-header-size",
            "16384",
            "--max-connections-per-ip",
            "32",
            "--allowed-host",
            "example.com",
            "--allowed-host",
            "localhost",
            "--tls-listen",
            "0.0.0.0:8443",
            "--tls-cert",
            "/etc/wsgate/cert.pem",
            "--tls-key",
            "/etc/wsgate/key.pem",
            "--tls-client-ca",
            "/etc/wsgate/clients-ca.pem",
            "--tls-handshake-timeout",
            "5",
            "--tls-max-handshakes",
            "128",
            "--workers",
            "4",
            "--threads",
            "2",
            "--log-format",
            "json",
            "--metrics-listen",
            "127.0.0.1:9090",
        ]))
        .expect("the flags are valid");
        assert_eq!(from_file, from_flags);
    }

    #[test]
    fn documented_backend_example_is_valid_and_spells_out_the_defaults() {
        let doc = include_str!("../../docs/configuration.md");
        let start = doc
            .find("```toml\ndocroot")
            .expect("docs/configuration.md has a [[backend]] example");
        let rest = &doc[start + "```toml\n".len()..];
        let text = &rest[..rest.find("```").expect("the toml block is closed")];
        let config = Config::from_toml(text, Path::new("/etc/wsgate/wsgate.toml"), Args::default())
            .expect("the documented backends are valid");
        let [chat, echo] = config.backends.as_slice() else {
            panic!("two backends: {:?}", config.backends);
        };
        assert_eq!(chat.name, "chat");
        assert_eq!(chat.socket_path, Path::new("/var/run/websocket/chat"));
        assert_eq!(chat.command, Path::new("/usr/local/bin/websocket_chat"));
        assert_eq!(chat.args, ["-R", "/var/run/websocket", "-n", "chat", "-w"]);
        assert_eq!(chat.env["RUST_LOG"], "info");
        assert_eq!(chat.user.as_deref(), Some("www-data"));
        assert_eq!(
            echo.command,
            Path::new("websocket_echo"),
            "a bare name stays for PATH"
        );
        assert_eq!(echo.user, None);
        // The values the chat spells out are the defaults the echo gets.
        assert_eq!(
            (echo.ready_timeout, echo.stop_timeout, echo.restart),
            (chat.ready_timeout, chat.stop_timeout, chat.restart)
        );
    }

    #[test]
    fn defaults_apply_without_flags_or_file() {
        let config = Config::from_args(parse_args(&[])).expect("defaults are valid");
        assert_eq!(config, Config::default());
        assert_eq!(config.listen, [DEFAULT_LISTEN]);
        assert_eq!(config.docroot, Path::new(DEFAULT_DOCROOT));
        assert_eq!(config.htdocs, None);
        assert!(config.names.is_allowed("anything/at/all"));
        assert!(!config.names.is_raw("anything"));
        assert_eq!(config.max_message_size, 16 * 1024 * 1024);
        assert_eq!(config.origins, OriginPolicy::SameHost);
        assert_eq!(config.ping_interval, Some(Duration::from_secs(30)));
        assert_eq!(config.idle_timeout, Some(Duration::from_secs(120)));
        assert_eq!(config.accept_timeout, Duration::from_secs(5));
        assert_eq!(config.shutdown_timeout, Duration::from_secs(5));
        assert!(config.tls_listen.is_empty());
        assert_eq!(config.tls, None);
    }

    #[test]
    fn tls_listen_alone_replaces_the_default_plain_listener() {
        let config = Config::from_args(parse_args(&[
            "--tls-listen",
            "127.0.0.1:8443",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
        ]))
        .expect("valid");
        assert!(config.listen.is_empty());
        let tls = config.tls.expect("TLS is configured");
        assert_eq!(tls.handshake_timeout, Duration::from_secs(10));
        assert_eq!(tls.max_handshakes, 256);
        assert_eq!(tls.client_ca, None);
    }

    #[test]
    fn flags_override_the_file_and_lists_are_replaced_whole() {
        let text = r#"
            listen = ["127.0.0.1:9000"]
            docroot = "sockets"
            allow = ["chat", "echo"]
            deny = ["echo"]
            ping_interval = 10
            idle_timeout = 0
        "#;
        let args = parse_args(&[
            "--allow",
            "rpc",
            "--ping-interval",
            "0",
            "--listen",
            "0.0.0.0:0",
        ]);
        let config =
            Config::from_toml(text, Path::new("/etc/wsgate/gate.toml"), args).expect("valid");
        assert_eq!(
            config.listen,
            ["0.0.0.0:0".parse::<SocketAddr>().expect("addr")]
        );
        assert_eq!(config.docroot, Path::new("/etc/wsgate/sockets"));
        assert!(config.names.is_allowed("rpc"));
        assert!(!config.names.is_allowed("chat"), "only rpc is allowed");
        assert_eq!(config.ping_interval, None);
        assert_eq!(config.idle_timeout, None);
    }

    #[test]
    fn authorizers_apply_per_name_glob_in_the_file_and_to_every_name_from_the_flag() {
        let text = r#"
            [[authorizer]]
            names = ["chat", "rooms/*"]
            url = "http://127.0.0.1:9000/chat"

            [[authorizer]]
            names = ["*"]
            url = "http://127.0.0.1:9001/any"
        "#;
        let config = Config::from_toml(text, Path::new("/w.toml"), Args::default()).expect("valid");
        let url = |name| config.authorizers.url_for(name).map(ToString::to_string);
        assert_eq!(url("chat").as_deref(), Some("http://127.0.0.1:9000/chat"));
        assert_eq!(
            url("rooms/a").as_deref(),
            Some("http://127.0.0.1:9000/chat")
        );
        assert_eq!(url("echo").as_deref(), Some("http://127.0.0.1:9001/any"));
        let config = Config::from_toml(
            "authorizer = [{ names = ['secure/*'], url = 'http://127.0.0.1:9000/' }]",
            Path::new("/w.toml"),
            Args::default(),
        )
        .expect("valid");
        assert!(config.authorizers.url_for("echo").is_none());
        assert!(config.authorizers.url_for("secure/x").is_some());
        let flag = parse_args(&["--authorizer", "http://127.0.0.1:1/"]);
        let config = Config::from_toml(text, Path::new("/w.toml"), flag).expect("valid");
        assert_eq!(
            config.authorizers.url_for("chat").map(ToString::to_string),
            Some("http://127.0.0.1:1/".to_owned()),
            "the flag replaces the file's list"
        );
        assert_eq!(Config::default().authorizer_timeout, Duration::from_secs(2));
        assert_eq!(Config::default().max_request_body, 1024 * 1024);
        assert!(Config::default().authorizers.url_for("chat").is_none());
    }

    fn check_error(text: &str, args: &[&str], expected: &str) {
        let error = Config::from_toml(text, Path::new("/w.toml"), parse_args(args))
            .expect_err("the configuration is invalid");
        let mut message = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            message.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        assert!(
            message.contains(expected),
            "error {message:?} should contain {expected:?}"
        );
    }

    #[test]
    fn threads_default_to_the_cpus_shared_out_over_the_workers() {
        let cpus = lifecycle::default_threads();
        let config = Config::from_args(parse_args(&[])).expect("defaults are valid");
        assert_eq!((config.workers, config.threads), (1, cpus));
        let config = Config::from_args(parse_args(&["--workers", "3"])).expect("valid");
        assert_eq!(config.threads, cpus.div_ceil(3));
        let config = Config::from_args(parse_args(&["--workers", "256"])).expect("valid");
        assert_eq!(config.threads, 1, "at least one thread per worker");
        let config =
            Config::from_args(parse_args(&["--workers", "2", "--threads", "3"])).expect("valid");
        assert_eq!(config.threads, 3, "a given number wins");
    }

    #[test]
    fn invalid_settings_are_refused_with_a_message_naming_them() {
        // (file, flags, expected part of the message)
        let cases: &[(&str, &[&str], &str)] = &[
            ("", &["--deny", "a[b"], "\"a[b\""),
            ("raw = ['x{']", &[], "\"x{\""),
            ("raw = ['legacy-*']", &["--direct", "*"], "overlap"),
            ("listen = ['localhost']", &[], "\"localhost\""),
            (
                "metrics_listen = 'localhost:9090'",
                &[],
                "\"localhost:9090\"",
            ),
            ("bogus_key = 1", &[], "bogus_key"),
            ("max_message_size = 'big'", &[], "max_message_size"),
            ("", &["--max-message-size", "0"], "max-message-size"),
            ("", &["--max-connections", "0"], "max-connections"),
            ("", &["--accept-timeout", "0"], "accept-timeout"),
            ("", &["--threads", "0"], "threads"),
            ("threads = 2000", &[], "threads"),
            (
                "",
                &["--ping-interval", "60", "--idle-timeout", "30"],
                "idle-timeout (30s)",
            ),
            ("", &["--origin", "example.com"], "\"example.com\""),
            ("", &["--tls-listen", "127.0.0.1:0"], "tls-cert and tls-key"),
            ("raw = ['legacy-*']", &["--http", "legacy-api"], "overlap"),
            ("", &["--http", "a[b"], "\"a[b\""),
            ("", &["--authorizer", "https://auth.example/"], "http://"),
            ("", &["--authorizer", "not a url"], "\"not a url\""),
            ("", &["--authorizer-timeout", "0"], "authorizer-timeout"),
            (
                "[[authorizer]]\nnames = ['x']\nurl = 'http://a/'\nbogus = 1",
                &[],
                "authorizer",
            ),
            ("tls_cert = 'c.pem'", &[], "need a tls-listen"),
            (
                "tls_listen = ['127.0.0.1:0']\ntls_cert = 'c'\ntls_key = 'k'",
                &["--tls-max-handshakes", "0"],
                "tls-max-handshakes",
            ),
        ];
        for (text, args, expected) in cases {
            check_error(text, args, expected);
        }
    }
}
