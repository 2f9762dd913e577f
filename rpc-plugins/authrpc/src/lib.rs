//! `authrpc`: users and groups in SQLite, for `websocket_jsonrpc -L authrpc.so -C users.db`.
//!
//! Configuration (`-C`): the path of the database file, created with its
//! schema on first use. The first time, a `root` group, a `users` group and a
//! `root` user are created; root's password is `WSGATE_ROOT_PASSWORD` from the
//! environment if set and non-empty, otherwise a random one printed once on
//! stderr. There is no fixed, well-known password.
//!
//! Methods (each session starts logged out; see `docs/plugin-abi.md` and
//! `www/webauth.html`):
//!
//! - `auth {user, passwd}` → `{user, group, home}`; the session is now that user.
//! - `whoami {}` → `{user, group, home}` or `null`; `logout {}` → `null`.
//! - `passwd {user, old?, new, confirm}` → `{user}`: a user changes their own
//!   password giving `old`; a root session changes anyone's and may omit `old`.
//! - `adduser {user, passwd, group?, home?}` → `{user, group, home}`: root
//!   sessions only (group defaults to `users`, home to `/home/<user>`).
//! - `rmuser {user}` → `{user}`: root sessions only, never the session's own user.
//!
//! Errors: `1` not logged in, `2` permission denied, `3` wrong user or
//! password, `4` no such user, `5` user exists, `6` new and confirm differ,
//! `-32602` bad params or names, `-32603` database trouble (logged on stderr,
//! never sent). Password checks and hashing (Argon2id) are in [`password`],
//! SQL in [`store`].

mod password;
mod store;

use std::ffi::CStr;
use std::path::PathBuf;
use std::sync::OnceLock;

use rpc_abi::{Plugin, RpcError, parse_params};
use rusqlite::Connection;
use serde::Deserialize;
use serde_json::{Value, json};

use store::{DEFAULT_GROUP, ROOT_GROUP, UserInfo};

/// Environment variable with the initial root password.
const ROOT_PASSWORD_VAR: &str = "WSGATE_ROOT_PASSWORD";

/// Longest user or group name.
const MAX_NAME: usize = 32;
/// Longest password, so hashing cannot be made arbitrarily slow.
const MAX_PASSWORD: usize = 1024;
/// Longest home directory.
const MAX_HOME: usize = 4096;

const NOT_LOGGED_IN: i32 = 1;
const PERMISSION_DENIED: i32 = 2;
const AUTH_FAILED: i32 = 3;
const NO_SUCH_USER: i32 = 4;
const USER_EXISTS: i32 = 5;
const CONFIRM_MISMATCH: i32 = 6;

/// The plugin: the database path, checked and initialised at startup.
struct AuthRpc {
    db_path: PathBuf,
}

/// One client: its database connection and who it logged in as.
struct Session {
    connection: Connection,
    user: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthParams {
    user: String,
    passwd: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PasswdParams {
    user: String,
    old: Option<String>,
    new: String,
    confirm: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddUserParams {
    user: String,
    passwd: String,
    group: Option<String>,
    home: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserParams {
    user: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoParams {}

impl Plugin for AuthRpc {
    type Session = Session;
    const NAME: &'static CStr = c"authrpc";
    const METHODS: &'static [&'static CStr] = &[
        c"auth", c"whoami", c"logout", c"passwd", c"adduser", c"rmuser",
    ];

    fn init(config: Option<&str>) -> Result<AuthRpc, String> {
        let root_password = std::env::var(ROOT_PASSWORD_VAR)
            .ok()
            .filter(|password| !password.is_empty());
        AuthRpc::open(config, root_password)
    }

    fn open_session(&self, _client: &rpc_abi::ClientInfo) -> Result<Session, String> {
        let connection = store::open(&self.db_path)
            .map_err(|error| format!("cannot open {}: {error}", self.db_path.display()))?;
        Ok(Session {
            connection,
            user: None,
        })
    }

    fn call(&self, session: &mut Session, method: &str, params: Value) -> Result<Value, RpcError> {
        match method {
            "auth" => auth(session, parse_params(params)?),
            "whoami" => {
                let NoParams {} = parse_params(params)?;
                Ok(match logged_in(session) {
                    Ok(info) => json!(info),
                    Err(_) => Value::Null,
                })
            }
            "logout" => {
                let NoParams {} = parse_params(params)?;
                session.user = None;
                Ok(Value::Null)
            }
            "passwd" => passwd(session, parse_params(params)?),
            "adduser" => adduser(session, parse_params(params)?),
            "rmuser" => rmuser(session, parse_params(params)?),
            other => Err(RpcError::new(
                -32601,
                format!("authrpc has no method {other:?}"),
            )),
        }
    }
}

rpc_abi::export_plugin!(AuthRpc);

impl AuthRpc {
    /// Opens and, on first use, initialises the database named by `config`;
    /// root's first password is `root_password` or a random one printed on stderr.
    fn open(config: Option<&str>, root_password: Option<String>) -> Result<AuthRpc, String> {
        let db_path = match config {
            Some(path) if !path.is_empty() => PathBuf::from(path),
            _ => {
                return Err(
                    "-C must give the path of the user database (created if missing)".to_owned(),
                );
            }
        };
        let mut connection = store::open(&db_path)
            .map_err(|error| format!("cannot open {}: {error}", db_path.display()))?;
        let mut generated = None;
        let created = store::initialise(&mut connection, || {
            let password = match root_password {
                Some(password) => password,
                None => {
                    let password = password::generate_password()?;
                    generated = Some(password.clone());
                    password
                }
            };
            password::hash_password(&password)
        })
        .map_err(|error| format!("cannot initialise {}: {error}", db_path.display()))?;
        if created {
            match generated {
                Some(password) => eprintln!(
                    "authrpc: created {} with user root, password {password} (shown only this once)",
                    db_path.display()
                ),
                None => eprintln!(
                    "authrpc: created {} with user root, password from {ROOT_PASSWORD_VAR}",
                    db_path.display()
                ),
            }
        }
        Ok(AuthRpc { db_path })
    }
}

/// A database failure: logged here, a bare `-32603` for the client.
fn db_error(error: rusqlite::Error) -> RpcError {
    eprintln!("authrpc: database error: {error}");
    RpcError::internal("database error")
}

fn hash_error(error: password::PasswordError) -> RpcError {
    eprintln!("authrpc: {error}");
    RpcError::internal("cannot hash the password")
}

/// A PHC string that matches no password, so an unknown user costs as much
/// time as a wrong password and the two cannot be told apart.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        password::hash_password("dummy password for unknown users").unwrap_or_default()
    })
}

fn check_name(what: &str, name: &str) -> Result<(), RpcError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with(['-', '.'])
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"._-".contains(&byte));
    if valid {
        Ok(())
    } else {
        Err(RpcError::invalid_params(format!(
            "{what} must be 1 to {MAX_NAME} letters, digits, '.', '_' or '-', not starting with '.' or '-'"
        )))
    }
}

fn check_password(password: &str) -> Result<(), RpcError> {
    if password.is_empty() || password.len() > MAX_PASSWORD {
        return Err(RpcError::invalid_params(format!(
            "a password must be 1 to {MAX_PASSWORD} bytes long"
        )));
    }
    Ok(())
}

/// The session's user, read again from the database (it may have been removed).
fn logged_in(session: &Session) -> Result<UserInfo, RpcError> {
    let Some(name) = &session.user else {
        return Err(RpcError::new(NOT_LOGGED_IN, "not logged in"));
    };
    match store::find_user(&session.connection, name).map_err(db_error)? {
        Some((info, _)) => Ok(info),
        None => Err(RpcError::new(
            NOT_LOGGED_IN,
            "the logged-in user no longer exists",
        )),
    }
}

fn require_root(session: &Session) -> Result<UserInfo, RpcError> {
    let info = logged_in(session)?;
    if info.group != ROOT_GROUP {
        return Err(RpcError::new(
            PERMISSION_DENIED,
            "only a member of the root group may do this",
        ));
    }
    Ok(info)
}

fn auth(session: &mut Session, params: AuthParams) -> Result<Value, RpcError> {
    let found = if check_name("user", &params.user).is_ok() && params.passwd.len() <= MAX_PASSWORD {
        store::find_user(&session.connection, &params.user).map_err(db_error)?
    } else {
        None
    };
    let (info, hash) = match found {
        Some((info, hash)) => (Some(info), hash),
        None => (None, dummy_hash().to_owned()),
    };
    let matches = password::verify_password(&params.passwd, &hash);
    match info {
        Some(info) if matches => {
            session.user = Some(info.user.clone());
            Ok(json!(info))
        }
        _ => {
            session.user = None;
            Err(RpcError::new(AUTH_FAILED, "wrong user or password"))
        }
    }
}

fn passwd(session: &mut Session, params: PasswdParams) -> Result<Value, RpcError> {
    let me = logged_in(session)?;
    check_name("user", &params.user)?;
    if params.new != params.confirm {
        return Err(RpcError::new(
            CONFIRM_MISMATCH,
            "the new password and its confirmation differ",
        ));
    }
    check_password(&params.new)?;
    let is_root = me.group == ROOT_GROUP;
    if me.user != params.user && !is_root {
        return Err(RpcError::new(
            PERMISSION_DENIED,
            "only root may change another user's password",
        ));
    }
    let Some((_, stored)) =
        store::find_user(&session.connection, &params.user).map_err(db_error)?
    else {
        return Err(RpcError::new(
            NO_SUCH_USER,
            format!("no user {:?}", params.user),
        ));
    };
    match &params.old {
        Some(old) => {
            if !password::verify_password(old, &stored) {
                return Err(RpcError::new(AUTH_FAILED, "the old password is wrong"));
            }
        }
        None if is_root => {}
        None => return Err(RpcError::invalid_params("old is required")),
    }
    let hash = password::hash_password(&params.new).map_err(hash_error)?;
    if !store::set_password(&session.connection, &params.user, &hash).map_err(db_error)? {
        return Err(RpcError::new(
            NO_SUCH_USER,
            format!("no user {:?}", params.user),
        ));
    }
    Ok(json!({"user": params.user}))
}

fn adduser(session: &mut Session, params: AddUserParams) -> Result<Value, RpcError> {
    require_root(session)?;
    check_name("user", &params.user)?;
    check_password(&params.passwd)?;
    let group = params.group.unwrap_or_else(|| DEFAULT_GROUP.to_owned());
    check_name("group", &group)?;
    let home = params
        .home
        .unwrap_or_else(|| format!("/home/{}", params.user));
    if !home.starts_with('/') || home.len() > MAX_HOME || home.chars().any(char::is_control) {
        return Err(RpcError::invalid_params(format!(
            "home must be an absolute path of at most {MAX_HOME} bytes"
        )));
    }
    let info = UserInfo {
        user: params.user,
        group,
        home,
    };
    let hash = password::hash_password(&params.passwd).map_err(hash_error)?;
    if !store::add_user(&mut session.connection, &info, &hash).map_err(db_error)? {
        return Err(RpcError::new(
            USER_EXISTS,
            format!("user {:?} exists already", info.user),
        ));
    }
    Ok(json!(info))
}

fn rmuser(session: &mut Session, params: UserParams) -> Result<Value, RpcError> {
    let me = require_root(session)?;
    check_name("user", &params.user)?;
    if me.user == params.user {
        return Err(RpcError::new(
            PERMISSION_DENIED,
            "a session cannot remove its own user",
        ));
    }
    if !store::remove_user(&session.connection, &params.user).map_err(db_error)? {
        return Err(RpcError::new(
            NO_SUCH_USER,
            format!("no user {:?}", params.user),
        ));
    }
    Ok(json!({"user": params.user}))
}

#[cfg(test)]
mod tests;
