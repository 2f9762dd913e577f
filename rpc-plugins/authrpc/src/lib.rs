//! `authrpc`: users and groups in SQLite, for `websocket_jsonrpc -L authrpc.so -C users.db`.
//!
//! Configuration (`-C`): `PATH[?OPTION&OPTION...]`, the path of the database
//! file, created with its schema on first use, and optionally the failure
//! budget: `user_failures=N` (free failures per user name, default 5),
//! `address_failures=N` (per client address, default 20), `lock_s=N` (the
//! first lock, default 1) and `max_lock_s=N` (the longest, default 300). The first time, a `root` group, a `users` group and a
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
//! A session is bound to the account it logged in to (`store::Account`: an id
//! that is never reused and a generation that grows with each password
//! change), and every call that needs a login reads that account again: once
//! the user is removed (even if the name is created again) or its password is
//! changed, the session is logged out (`1001`). A session that changes its own
//! password stays logged in.
//!
//! Password checks are budgeted per user name and per client address
//! ([`throttle`]): after 5 failures for one name, or 20 from one address, each
//! further failure locks that name or address for 1 s, 2 s, 4 s... up to 5
//! minutes; 15 quiet minutes forget them. A locked attempt is answered at once
//! with `1007` and `data: {"retry_after_ms": N}`, without checking the
//! password. An unknown user costs the same Argon2 check as a wrong password.
//! At most one hash per core runs at once, 19 MiB each ([`password`]).
//!
//! Errors (authrpc's codes are 1001..=1999; sqlrpc's are 2001..=2999):
//! `1001` not logged in (or no longer: the account was removed or its
//! password changed), `1002` permission denied, `1003` wrong user or password,
//! `1004` no such user, `1005` user exists, `1006` new and confirm differ,
//! `1007` too many failed attempts (try again after `retry_after_ms`),
//! `-32602` bad params or names, `-32603` database trouble (logged on stderr,
//! never sent). Password hashing (Argon2id) is in [`password`], SQL in [`store`].

mod password;
mod store;
mod throttle;

use std::ffi::CStr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rpc_abi::{ClientInfo, Plugin, RpcError, parse_params};
use rusqlite::Connection;
use serde::Deserialize;
use serde_json::{Value, json};

use password::{Hasher, UNMATCHABLE_HASH};
use store::{Account, DEFAULT_GROUP, ROOT_GROUP, StoredUser, UserInfo};
use throttle::{Locked, Policy, Throttle};

/// Environment variable with the initial root password.
const ROOT_PASSWORD_VAR: &str = "WSGATE_ROOT_PASSWORD";

/// Longest user or group name.
const MAX_NAME: usize = 32;
/// Longest password, so hashing cannot be made arbitrarily slow.
const MAX_PASSWORD: usize = 1024;
/// Longest home directory.
const MAX_HOME: usize = 4096;

const NOT_LOGGED_IN: i32 = 1001;
const PERMISSION_DENIED: i32 = 1002;
const AUTH_FAILED: i32 = 1003;
const NO_SUCH_USER: i32 = 1004;
const USER_EXISTS: i32 = 1005;
const CONFIRM_MISMATCH: i32 = 1006;
const TOO_MANY_ATTEMPTS: i32 = 1007;

/// Where the plugin reads the time; tests pass a clock they move themselves.
type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// The plugin: the database path, checked and initialised at startup, and
/// what every session shares: the hashing bound and the failure budgets.
struct AuthRpc {
    db_path: PathBuf,
    hasher: Hasher,
    throttle: Throttle,
    clock: Clock,
}

/// One client: its database connection, its address (the key of its failure
/// budget) and the account it logged in to.
struct Session {
    connection: Connection,
    address: String,
    account: Option<Account>,
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
        AuthRpc::open(config, root_password, Arc::new(Instant::now))
    }

    fn open_session(&self, client: &ClientInfo) -> Result<Session, String> {
        let connection = store::open(&self.db_path)
            .map_err(|error| format!("cannot open {}: {error}", self.db_path.display()))?;
        // The port changes with every connection; the budget is per address.
        let address = match client.peer_ip() {
            Some(ip) => ip.to_string(),
            None => client.peer.clone(),
        };
        Ok(Session {
            connection,
            address,
            account: None,
        })
    }

    fn call(&self, session: &mut Session, method: &str, params: Value) -> Result<Value, RpcError> {
        match method {
            "auth" => self.auth(session, parse_params(params)?),
            "whoami" => {
                let NoParams {} = parse_params(params)?;
                Ok(match logged_in(session) {
                    Ok(me) => json!(me.info),
                    Err(_) => Value::Null,
                })
            }
            "logout" => {
                let NoParams {} = parse_params(params)?;
                session.account = None;
                Ok(Value::Null)
            }
            "passwd" => self.passwd(session, parse_params(params)?),
            "adduser" => self.adduser(session, parse_params(params)?),
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
    /// Opens and, on first use, initialises the database named by `config`
    /// (with the budget options it gives); root's first password is
    /// `root_password` or a random one printed on stderr. The failure budgets
    /// read the time from `clock`.
    fn open(
        config: Option<&str>,
        root_password: Option<String>,
        clock: Clock,
    ) -> Result<AuthRpc, String> {
        let (db_path, user_policy, address_policy) = parse_config(config.unwrap_or_default())?;
        let throttle = Throttle::new(user_policy, address_policy, throttle::MAX_KEYS);
        let mut connection = store::open(&db_path)
            .map_err(|error| format!("cannot open {}: {error}", db_path.display()))?;
        let hasher = Hasher::per_core();
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
            hasher.hash_password(&password)
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
        Ok(AuthRpc {
            db_path,
            hasher,
            throttle,
            clock,
        })
    }
}

/// Splits `PATH?opt&opt` into the database path and the two budget policies.
fn parse_config(config: &str) -> Result<(PathBuf, Policy, Policy), String> {
    let (path, options) = config.rsplit_once('?').unwrap_or((config, ""));
    if path.is_empty() {
        return Err(
            "-C must give the path of the user database (created if missing): \
             PATH[?user_failures=N][&address_failures=N][&lock_s=N][&max_lock_s=N]"
                .to_owned(),
        );
    }
    let (mut user, mut address) = (Policy::USER, Policy::ADDRESS);
    for option in options.split('&').filter(|option| !option.is_empty()) {
        let (name, value) = option.split_once('=').unwrap_or((option, ""));
        let number: u32 = value
            .parse()
            .map_err(|_| format!("option {option:?}: the value must be a whole number"))?;
        let seconds = Duration::from_secs(u64::from(number));
        match name {
            "user_failures" => user.free_failures = number,
            "address_failures" => address.free_failures = number,
            "lock_s" => (user.first_lock, address.first_lock) = (seconds, seconds),
            "max_lock_s" => (user.max_lock, address.max_lock) = (seconds, seconds),
            _ => {
                return Err(format!(
                    "unknown option {option:?}: authrpc knows user_failures, address_failures, lock_s and max_lock_s"
                ));
            }
        }
    }
    for policy in [&mut user, &mut address] {
        policy.max_lock = policy.max_lock.max(policy.first_lock);
    }
    Ok((PathBuf::from(path), user, address))
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

/// The session's account, read again from the database. A session whose
/// account was removed or got a new password is logged out here.
fn logged_in(session: &mut Session) -> Result<StoredUser, RpcError> {
    let Some(account) = session.account else {
        return Err(RpcError::new(NOT_LOGGED_IN, "not logged in"));
    };
    match store::find_account(&session.connection, account).map_err(db_error)? {
        Some(me) => Ok(me),
        None => {
            session.account = None;
            Err(RpcError::new(
                NOT_LOGGED_IN,
                "logged out: the user was removed or its password changed",
            ))
        }
    }
}

fn require_root(session: &mut Session) -> Result<StoredUser, RpcError> {
    let me = logged_in(session)?;
    if me.info.group != ROOT_GROUP {
        return Err(RpcError::new(
            PERMISSION_DENIED,
            "only a member of the root group may do this",
        ));
    }
    Ok(me)
}

/// The answer to an attempt the budget refused.
fn locked_error(locked: Locked) -> RpcError {
    let retry_after_ms = u64::try_from(locked.retry_after.as_millis()).unwrap_or(u64::MAX);
    RpcError::new(
        TOO_MANY_ATTEMPTS,
        "too many failed attempts; try again later",
    )
    .with_data(json!({"retry_after_ms": retry_after_ms}))
}

impl AuthRpc {
    /// Checks `password` for the user `name` under the failure budget: the
    /// user if it matches, [`AUTH_FAILED`] if not (an unknown or impossible
    /// name costs the same check), [`TOO_MANY_ATTEMPTS`] without a check.
    fn verify_login(
        &self,
        session: &Session,
        name: &str,
        password: &str,
    ) -> Result<StoredUser, RpcError> {
        let valid_name = check_name("user", name).is_ok();
        let budget_key = valid_name.then_some(name);
        self.throttle
            .admit(budget_key, &session.address, (self.clock)())
            .map_err(locked_error)?;
        let found = if valid_name && password.len() <= MAX_PASSWORD {
            store::find_user(&session.connection, name).map_err(db_error)?
        } else {
            None
        };
        let hash = found.as_ref().map_or(UNMATCHABLE_HASH, |user| &user.hash);
        let matches = self.hasher.verify_password(password, hash);
        match found {
            Some(user) if matches => {
                self.throttle.succeeded(name, &session.address);
                Ok(user)
            }
            _ => Err(RpcError::new(AUTH_FAILED, "wrong user or password")),
        }
    }

    fn auth(&self, session: &mut Session, params: AuthParams) -> Result<Value, RpcError> {
        session.account = None;
        let user = self.verify_login(session, &params.user, &params.passwd)?;
        session.account = Some(user.account);
        Ok(json!(user.info))
    }

    fn passwd(&self, session: &mut Session, params: PasswdParams) -> Result<Value, RpcError> {
        let me = logged_in(session)?;
        check_name("user", &params.user)?;
        if params.new != params.confirm {
            return Err(RpcError::new(
                CONFIRM_MISMATCH,
                "the new password and its confirmation differ",
            ));
        }
        check_password(&params.new)?;
        let is_root = me.info.group == ROOT_GROUP;
        if me.info.user != params.user && !is_root {
            return Err(RpcError::new(
                PERMISSION_DENIED,
                "only root may change another user's password",
            ));
        }
        if store::find_user(&session.connection, &params.user)
            .map_err(db_error)?
            .is_none()
        {
            return Err(RpcError::new(
                NO_SUCH_USER,
                format!("no user {:?}", params.user),
            ));
        }
        match &params.old {
            Some(old) => match self.verify_login(session, &params.user, old) {
                Ok(_) => {}
                Err(error) if error.code == AUTH_FAILED => {
                    return Err(RpcError::new(AUTH_FAILED, "the old password is wrong"));
                }
                Err(error) => return Err(error),
            },
            None if is_root => {}
            None => return Err(RpcError::invalid_params("old is required")),
        }
        let hash = self.hasher.hash_password(&params.new).map_err(hash_error)?;
        let Some(account) =
            store::set_password(&session.connection, &params.user, &hash).map_err(db_error)?
        else {
            return Err(RpcError::new(
                NO_SUCH_USER,
                format!("no user {:?}", params.user),
            ));
        };
        // Other sessions of this user are logged out; this one follows its new password.
        if account.id == me.account.id {
            session.account = Some(account);
        }
        Ok(json!({"user": params.user}))
    }

    fn adduser(&self, session: &mut Session, params: AddUserParams) -> Result<Value, RpcError> {
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
        let hash = self
            .hasher
            .hash_password(&params.passwd)
            .map_err(hash_error)?;
        if !store::add_user(&mut session.connection, &info, &hash).map_err(db_error)? {
            return Err(RpcError::new(
                USER_EXISTS,
                format!("user {:?} exists already", info.user),
            ));
        }
        Ok(json!(info))
    }
}

fn rmuser(session: &mut Session, params: UserParams) -> Result<Value, RpcError> {
    let me = require_root(session)?;
    check_name("user", &params.user)?;
    if me.info.user == params.user {
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
