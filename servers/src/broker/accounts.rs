//! Achex's ids and passwords, in the SQLite file given with `-C`: a user id
//! belongs to the first password it is claimed with; a service id must have
//! been created by the operator (`--add-service NAME`, the password on
//! standard input). Passwords are hashed with Argon2id and the parameters
//! authrpc uses (19 MiB, 2 passes, 1 lane), at most one hash per core at
//! once, and at most [`MAX_WAITING`] logins waiting for a hash: past that a
//! login is refused as busy, so a flood of logins cannot queue without bound.

use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::Semaphore;

/// Memory per hash, as authrpc (`rpc-plugins/authrpc/src/password.rs`).
const MEMORY_KIB: u32 = 19 * 1024;
const PASSES: u32 = 2;
const LANES: u32 = 1;

/// The longest password accepted, in bytes.
pub const MAX_PASSWORD_LEN: usize = 256;

/// The most logins waiting for a hashing slot.
pub const MAX_WAITING: usize = 64;

/// A hash that matches no password, verified when an id is unknown so that
/// a wrong id costs as much time as a wrong password.
const UNMATCHABLE_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$YWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWE";

/// What kind of account an id is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A user (`setID`): claimed by its first password.
    User,
    /// A service (`serviceID`): created by the operator.
    Service,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::User => "user",
            Kind::Service => "service",
        }
    }
}

/// Why a login or an account change failed.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// Wrong password, unknown service, or the id is of the other kind.
    #[error("wrong id or password")]
    Refused,
    /// The password is empty or too long.
    #[error("the password must be 1 to {MAX_PASSWORD_LEN} bytes")]
    BadPassword,
    /// Too many logins wait for a hashing slot.
    #[error("too many logins at once; try again")]
    Busy,
    /// The database failed.
    #[error("account database: {0}")]
    Database(#[from] rusqlite::Error),
    /// Hashing failed.
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

/// The account store.
#[derive(Debug)]
pub struct Accounts {
    connection: Arc<Mutex<Connection>>,
    hashing: Arc<Semaphore>,
    n_waiting: Arc<AtomicUsize>,
}

fn argon2() -> Argon2<'static> {
    let params = Params::new(MEMORY_KIB, PASSES, LANES, None)
        .expect("the constant parameters are within Argon2's limits");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

fn hash_password(password: &str) -> Result<String, AccountError> {
    let mut salt_bytes = [0u8; 16];
    getrandom::fill(&mut salt_bytes).map_err(|error| AccountError::Hash(error.to_string()))?;
    let salt = SaltString::encode_b64(&salt_bytes)
        .map_err(|error| AccountError::Hash(error.to_string()))?;
    argon2()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|error| AccountError::Hash(error.to_string()))
}

fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .is_ok_and(|hash| argon2().verify_password(password.as_bytes(), &hash).is_ok())
}

impl Accounts {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Accounts, AccountError> {
        let connection = Connection::open(path)?;
        connection.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE IF NOT EXISTS achex_accounts (
                 id TEXT PRIMARY KEY NOT NULL,
                 kind TEXT NOT NULL CHECK (kind IN ('user', 'service')),
                 hash TEXT NOT NULL
             );",
        )?;
        let n_cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
        Ok(Accounts {
            connection: Arc::new(Mutex::new(connection)),
            hashing: Arc::new(Semaphore::new(n_cores)),
            n_waiting: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Creates or replaces the service `id` with `password` (the operator's command).
    pub fn set_service(&self, id: &str, password: &str) -> Result<(), AccountError> {
        check_password(password)?;
        let hash = hash_password(password)?;
        let connection = self
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        connection.execute(
            "INSERT INTO achex_accounts (id, kind, hash) VALUES (?1, 'service', ?2)
             ON CONFLICT (id) DO UPDATE SET kind = 'service', hash = excluded.hash",
            params![id, hash],
        )?;
        Ok(())
    }

    /// Logs `id` in as `kind` with `password`; an unknown user id is claimed.
    pub async fn login(&self, id: &str, password: &str, kind: Kind) -> Result<(), AccountError> {
        check_password(password)?;
        if self.n_waiting.fetch_add(1, Ordering::SeqCst) >= MAX_WAITING {
            self.n_waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(AccountError::Busy);
        }
        let slot = self.hashing.clone().acquire_owned().await;
        self.n_waiting.fetch_sub(1, Ordering::SeqCst);
        let Ok(slot) = slot else {
            return Err(AccountError::Busy);
        };
        let connection = Arc::clone(&self.connection);
        let id = id.to_owned();
        let password = password.to_owned();
        let outcome = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            login_blocking(&connection, &id, &password, kind)
        })
        .await;
        match outcome {
            Ok(result) => result,
            Err(error) => Err(AccountError::Hash(error.to_string())),
        }
    }
}

fn check_password(password: &str) -> Result<(), AccountError> {
    if password.is_empty() || password.len() > MAX_PASSWORD_LEN {
        return Err(AccountError::BadPassword);
    }
    Ok(())
}

fn stored(
    connection: &Mutex<Connection>,
    id: &str,
) -> Result<Option<(String, String)>, AccountError> {
    let connection = connection.lock().unwrap_or_else(PoisonError::into_inner);
    Ok(connection
        .query_row(
            "SELECT kind, hash FROM achex_accounts WHERE id = ?1",
            params![id],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?)
}

fn login_blocking(
    connection: &Mutex<Connection>,
    id: &str,
    password: &str,
    kind: Kind,
) -> Result<(), AccountError> {
    let (stored_kind, hash) = match stored(connection, id)? {
        Some(found) => found,
        None if kind == Kind::User => {
            let hash = hash_password(password)?;
            let inserted = {
                let connection = connection.lock().unwrap_or_else(PoisonError::into_inner);
                connection.execute(
                    "INSERT OR IGNORE INTO achex_accounts (id, kind, hash) VALUES (?1, 'user', ?2)",
                    params![id, hash],
                )?
            };
            if inserted == 1 {
                return Ok(());
            }
            // Someone claimed it meanwhile: their password decides.
            stored(connection, id)?.ok_or(AccountError::Refused)?
        }
        None => {
            verify_password(password, UNMATCHABLE_HASH);
            return Err(AccountError::Refused);
        }
    };
    let matches = verify_password(password, &hash);
    if matches && stored_kind == kind.as_str() {
        Ok(())
    } else {
        Err(AccountError::Refused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_user_id_belongs_to_its_first_password() -> Result<(), AccountError> {
        let dir = tempfile::tempdir().map_err(|error| AccountError::Hash(error.to_string()))?;
        let accounts = Accounts::open(&dir.path().join("achex.db"))?;
        accounts.login("alex", "first", Kind::User).await?;
        accounts.login("alex", "first", Kind::User).await?;
        assert!(matches!(
            accounts.login("alex", "second", Kind::User).await,
            Err(AccountError::Refused)
        ));
        // A user id is not a service, and an unknown service is not created.
        assert!(matches!(
            accounts.login("alex", "first", Kind::Service).await,
            Err(AccountError::Refused)
        ));
        assert!(matches!(
            accounts.login("svc", "pw", Kind::Service).await,
            Err(AccountError::Refused)
        ));
        accounts.set_service("svc", "pw")?;
        accounts.login("svc", "pw", Kind::Service).await?;
        assert!(matches!(
            accounts.login("x", "", Kind::User).await,
            Err(AccountError::BadPassword)
        ));
        // The hash, not the password, is stored.
        let connection = Connection::open(dir.path().join("achex.db"))?;
        let hash: String = connection.query_row(
            "SELECT hash FROM achex_accounts WHERE id = 'alex'",
            [],
            |row| row.get(0),
        )?;
        assert!(hash.starts_with("$argon2id$") && !hash.contains("first"));
        Ok(())
    }
}
