//! The user database: SQLite through rusqlite, the schema created on first
//! use, and the few queries the methods need, all parameterised.
//!
//! Tables: `groups(id, name)` and `users(id, name, group_id, passwd, home,
//! generation)`, where `passwd` is an Argon2id PHC string from
//! [`crate::password`]. A user's `id` is never reused (`AUTOINCREMENT`) and its
//! `generation` grows with each password change, so an [`Account`] (id and
//! generation) names one user with one password: a session bound to it loses
//! its rights when that user is removed (even if the name is created again)
//! or its password changes. Databases of the first schema (`user_version` 0,
//! ids without `AUTOINCREMENT`, no generation) are migrated on open. Errors
//! from SQLite are logged by the caller and never reach a client as text.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

/// The group whose members may manage users.
pub const ROOT_GROUP: &str = "root";
/// The first user, created with the database.
pub const ROOT_USER: &str = "root";
/// The group of a new user when `adduser` names none.
pub const DEFAULT_GROUP: &str = "users";

/// How long a connection waits for another one's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The schema version this code writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS groups (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    group_id INTEGER NOT NULL REFERENCES groups(id),
    passwd TEXT NOT NULL,
    home TEXT NOT NULL,
    generation INTEGER NOT NULL DEFAULT 0
);
";

/// From version 0 (the users table of the first release): ids become
/// `AUTOINCREMENT` (SQLite then never hands out an id at or below the largest
/// one copied over) and users get a generation.
const MIGRATE_FROM_0: &str = "
CREATE TABLE users_v1 (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    group_id INTEGER NOT NULL REFERENCES groups(id),
    passwd TEXT NOT NULL,
    home TEXT NOT NULL,
    generation INTEGER NOT NULL DEFAULT 0
);
INSERT INTO users_v1 (id, name, group_id, passwd, home)
    SELECT id, name, group_id, passwd, home FROM users;
DROP TABLE users;
ALTER TABLE users_v1 RENAME TO users;
";

/// One user account with one password: what a logged-in session is bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Account {
    /// The user's id, never reused.
    pub id: i64,
    /// Grows with each password change.
    pub generation: i64,
}

/// A user as the methods return it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UserInfo {
    /// The user name.
    pub user: String,
    /// The group name.
    pub group: String,
    /// The home directory.
    pub home: String,
}

/// Opens (creating if needed) the database at `path` with the settings every
/// connection shares.
pub fn open(path: &Path) -> rusqlite::Result<Connection> {
    let connection = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    connection.busy_timeout(BUSY_TIMEOUT)?;
    connection.pragma_update(None, "foreign_keys", "ON")?;
    Ok(connection)
}

/// Creates the schema if missing. When the database has no users yet, adds
/// the `root` and `users` groups and the `root` user with the hash
/// `make_root_hash()` returns, and says so by returning `true`.
pub fn initialise<E>(
    connection: &mut Connection,
    make_root_hash: impl FnOnce() -> Result<String, E>,
) -> Result<bool, InitError<E>> {
    connection
        .pragma_update(None, "journal_mode", "WAL")
        .map_err(InitError::Sql)?;
    let transaction = connection
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(InitError::Sql)?;
    let version: i64 = transaction
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(InitError::Sql)?;
    if version < SCHEMA_VERSION {
        let has_users: bool = transaction
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'users')",
                [],
                |row| row.get(0),
            )
            .map_err(InitError::Sql)?;
        if has_users {
            transaction
                .execute_batch(MIGRATE_FROM_0)
                .map_err(InitError::Sql)?;
        }
        transaction
            .pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(InitError::Sql)?;
    }
    transaction.execute_batch(SCHEMA).map_err(InitError::Sql)?;
    let n_users: i64 = transaction
        .query_row("SELECT count(*) FROM users", [], |row| row.get(0))
        .map_err(InitError::Sql)?;
    if n_users > 0 {
        transaction.commit().map_err(InitError::Sql)?;
        return Ok(false);
    }
    let hash = make_root_hash().map_err(InitError::Hash)?;
    for group in [ROOT_GROUP, DEFAULT_GROUP] {
        transaction
            .execute(
                "INSERT OR IGNORE INTO groups (name) VALUES (?1)",
                params![group],
            )
            .map_err(InitError::Sql)?;
    }
    transaction
        .execute(
            "INSERT INTO users (name, group_id, passwd, home)
             SELECT ?1, id, ?2, ?3 FROM groups WHERE name = ?4",
            params![ROOT_USER, hash, "/root", ROOT_GROUP],
        )
        .map_err(InitError::Sql)?;
    transaction.commit().map_err(InitError::Sql)?;
    Ok(true)
}

/// Why [`initialise`] failed.
#[derive(Debug, thiserror::Error)]
pub enum InitError<E> {
    /// SQLite failed.
    #[error("database error: {0}")]
    Sql(#[source] rusqlite::Error),
    /// The root password could not be made or hashed.
    #[error("{0}")]
    Hash(E),
}

/// A user as stored: its account, what the methods return, its password hash.
#[derive(Debug, Clone)]
pub struct StoredUser {
    /// Id and generation.
    pub account: Account,
    /// Name, group, home.
    pub info: UserInfo,
    /// The Argon2id PHC string.
    pub hash: String,
}

const SELECT_USER: &str =
    "SELECT users.id, users.generation, users.name, groups.name, users.home, users.passwd
     FROM users JOIN groups ON groups.id = users.group_id";

fn stored_user(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredUser> {
    Ok(StoredUser {
        account: Account {
            id: row.get(0)?,
            generation: row.get(1)?,
        },
        info: UserInfo {
            user: row.get(2)?,
            group: row.get(3)?,
            home: row.get(4)?,
        },
        hash: row.get(5)?,
    })
}

/// The user `name`, if it exists.
pub fn find_user(connection: &Connection, name: &str) -> rusqlite::Result<Option<StoredUser>> {
    connection
        .query_row(
            &format!("{SELECT_USER} WHERE users.name = ?1"),
            params![name],
            stored_user,
        )
        .optional()
}

/// The user of `account`, if it still exists with that generation.
pub fn find_account(
    connection: &Connection,
    account: Account,
) -> rusqlite::Result<Option<StoredUser>> {
    connection
        .query_row(
            &format!("{SELECT_USER} WHERE users.id = ?1 AND users.generation = ?2"),
            params![account.id, account.generation],
            stored_user,
        )
        .optional()
}

/// Replaces the password hash of `name` and moves it to a new generation,
/// which ends the rights of every session bound to the old one. Returns the
/// new account, or `None` if there is no such user.
pub fn set_password(
    connection: &Connection,
    name: &str,
    hash: &str,
) -> rusqlite::Result<Option<Account>> {
    connection
        .query_row(
            "UPDATE users SET passwd = ?1, generation = generation + 1 WHERE name = ?2
             RETURNING id, generation",
            params![hash, name],
            |row| {
                Ok(Account {
                    id: row.get(0)?,
                    generation: row.get(1)?,
                })
            },
        )
        .optional()
}

/// Adds a user, creating its group if needed; `false` if the name is taken.
pub fn add_user(
    connection: &mut Connection,
    info: &UserInfo,
    hash: &str,
) -> rusqlite::Result<bool> {
    let transaction =
        connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let exists: bool = transaction.query_row(
        "SELECT EXISTS (SELECT 1 FROM users WHERE name = ?1)",
        params![info.user],
        |row| row.get(0),
    )?;
    if exists {
        return Ok(false);
    }
    transaction.execute(
        "INSERT OR IGNORE INTO groups (name) VALUES (?1)",
        params![info.group],
    )?;
    transaction.execute(
        "INSERT INTO users (name, group_id, passwd, home)
         SELECT ?1, id, ?2, ?3 FROM groups WHERE name = ?4",
        params![info.user, hash, info.home, info.group],
    )?;
    transaction.commit()?;
    Ok(true)
}

/// Removes a user; `false` if there is no such user.
pub fn remove_user(connection: &Connection, name: &str) -> rusqlite::Result<bool> {
    Ok(connection.execute("DELETE FROM users WHERE name = ?1", params![name])? > 0)
}
