//! The methods called through the `Plugin` trait on a temporary database.

use std::sync::{Mutex, PoisonError};

use super::*;

const ROOT_PASSWORD: &str = "root-secret";

/// A clock that only moves when the test moves it.
#[derive(Clone)]
struct TestClock(Arc<Mutex<Instant>>);

impl TestClock {
    fn new() -> TestClock {
        TestClock(Arc::new(Mutex::new(Instant::now())))
    }

    fn advance(&self, by: Duration) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) += by;
    }

    fn clock(&self) -> Clock {
        let now = Arc::clone(&self.0);
        Arc::new(move || *now.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

fn open_with_clock(dir: &tempfile::TempDir, clock: &TestClock) -> AuthRpc {
    let path = dir.path().join("users.db");
    let path = path.to_str().expect("temporary paths are UTF-8");
    AuthRpc::open(Some(path), Some(ROOT_PASSWORD.to_owned()), clock.clock()).expect("opens")
}

fn plugin(dir: &tempfile::TempDir) -> AuthRpc {
    open_with_clock(dir, &TestClock::new())
}

/// A session of a client at `peer`.
fn session_from(plugin: &AuthRpc, peer: &str) -> Session {
    let client = ClientInfo {
        peer: peer.to_owned(),
        ..ClientInfo::default()
    };
    plugin.open_session(&client).expect("opens")
}

fn call(
    plugin: &AuthRpc,
    session: &mut Session,
    method: &str,
    params: Value,
) -> Result<Value, RpcError> {
    plugin.call(session, method, params)
}

fn code(result: Result<Value, RpcError>) -> i32 {
    result.expect_err("an error").code
}

fn root_session(plugin: &AuthRpc) -> Session {
    let mut session = plugin.open_session(&ClientInfo::default()).expect("opens");
    call(
        plugin,
        &mut session,
        "auth",
        json!({"user": "root", "passwd": ROOT_PASSWORD}),
    )
    .expect("root logs in");
    session
}

#[test]
fn root_logs_in_with_the_operators_password_only() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let plugin = plugin(&dir);
    let mut session = plugin.open_session(&ClientInfo::default()).expect("opens");
    assert_eq!(
        call(&plugin, &mut session, "whoami", Value::Null),
        Ok(Value::Null)
    );
    assert_eq!(
        code(call(
            &plugin,
            &mut session,
            "auth",
            json!({"user": "root", "passwd": "wrong"})
        )),
        AUTH_FAILED
    );
    assert_eq!(
        code(call(
            &plugin,
            &mut session,
            "auth",
            json!({"user": "nobody", "passwd": "x"})
        )),
        AUTH_FAILED
    );
    let info = call(
        &plugin,
        &mut session,
        "auth",
        json!({"user": "root", "passwd": ROOT_PASSWORD}),
    )
    .expect("logs in");
    assert_eq!(
        info,
        json!({"user": "root", "group": "root", "home": "/root"})
    );
    assert_eq!(call(&plugin, &mut session, "whoami", json!({})), Ok(info));
    // Opening again keeps the existing users and password.
    drop(plugin);
    let plugin = AuthRpc::open(
        Some(dir.path().join("users.db").to_str().expect("UTF-8")),
        Some("another".to_owned()),
        Arc::new(Instant::now),
    )
    .expect("reopens");
    let mut session = plugin.open_session(&ClientInfo::default()).expect("opens");
    call(
        &plugin,
        &mut session,
        "auth",
        json!({"user": "root", "passwd": ROOT_PASSWORD}),
    )
    .expect("same password");
}

#[test]
fn root_adds_and_removes_users_and_others_may_not() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let plugin = plugin(&dir);
    let mut root = root_session(&plugin);
    let added = call(
        &plugin,
        &mut root,
        "adduser",
        json!({"user": "alice", "passwd": "a1"}),
    )
    .expect("adds");
    assert_eq!(
        added,
        json!({"user": "alice", "group": "users", "home": "/home/alice"})
    );
    assert_eq!(
        code(call(
            &plugin,
            &mut root,
            "adduser",
            json!({"user": "alice", "passwd": "x"})
        )),
        USER_EXISTS
    );

    let mut alice = plugin.open_session(&ClientInfo::default()).expect("opens");
    assert_eq!(
        code(call(
            &plugin,
            &mut alice,
            "adduser",
            json!({"user": "bob", "passwd": "b"})
        )),
        NOT_LOGGED_IN
    );
    call(
        &plugin,
        &mut alice,
        "auth",
        json!({"user": "alice", "passwd": "a1"}),
    )
    .expect("alice logs in");
    assert_eq!(
        code(call(
            &plugin,
            &mut alice,
            "adduser",
            json!({"user": "bob", "passwd": "b"})
        )),
        PERMISSION_DENIED
    );
    assert_eq!(
        code(call(&plugin, &mut alice, "rmuser", json!({"user": "root"}))),
        PERMISSION_DENIED
    );

    assert_eq!(
        code(call(&plugin, &mut root, "rmuser", json!({"user": "root"}))),
        PERMISSION_DENIED
    );
    assert_eq!(
        call(&plugin, &mut root, "rmuser", json!({"user": "alice"})),
        Ok(json!({"user": "alice"}))
    );
    assert_eq!(
        code(call(&plugin, &mut root, "rmuser", json!({"user": "alice"}))),
        NO_SUCH_USER
    );
    // Alice's session notices that her user is gone.
    assert_eq!(
        call(&plugin, &mut alice, "whoami", Value::Null),
        Ok(Value::Null)
    );
}

#[test]
fn passwords_change_with_the_old_one_or_as_root() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let plugin = plugin(&dir);
    let mut root = root_session(&plugin);
    call(
        &plugin,
        &mut root,
        "adduser",
        json!({"user": "bob", "passwd": "b1", "group": "staff", "home": "/srv/bob"}),
    )
    .expect("adds");
    let mut bob = plugin.open_session(&ClientInfo::default()).expect("opens");
    call(
        &plugin,
        &mut bob,
        "auth",
        json!({"user": "bob", "passwd": "b1"}),
    )
    .expect("logs in");
    let change = |old: Option<&str>, new: &str, confirm: &str| {
        let mut params = json!({"user": "bob", "new": new, "confirm": confirm});
        if let Some(old) = old {
            params["old"] = json!(old);
        }
        params
    };
    assert_eq!(
        code(call(&plugin, &mut bob, "passwd", change(None, "b2", "b2"))),
        INVALID_PARAMS_CODE
    );
    assert_eq!(
        code(call(
            &plugin,
            &mut bob,
            "passwd",
            change(Some("nope"), "b2", "b2")
        )),
        AUTH_FAILED
    );
    assert_eq!(
        code(call(
            &plugin,
            &mut bob,
            "passwd",
            change(Some("b1"), "b2", "b3")
        )),
        CONFIRM_MISMATCH
    );
    assert_eq!(
        code(call(
            &plugin,
            &mut bob,
            "passwd",
            change(Some("b1"), "", "")
        )),
        INVALID_PARAMS_CODE
    );
    call(&plugin, &mut bob, "passwd", change(Some("b1"), "b2", "b2")).expect("changes");
    let root_change = json!({"user": "root", "new": "r", "confirm": "r"});
    assert_eq!(
        code(call(&plugin, &mut bob, "passwd", root_change)),
        PERMISSION_DENIED
    );
    call(&plugin, &mut root, "passwd", change(None, "b3", "b3"))
        .expect("root needs no old password");
    let mut again = plugin.open_session(&ClientInfo::default()).expect("opens");
    assert_eq!(
        code(call(
            &plugin,
            &mut again,
            "auth",
            json!({"user": "bob", "passwd": "b2"})
        )),
        AUTH_FAILED
    );
    let info = call(
        &plugin,
        &mut again,
        "auth",
        json!({"user": "bob", "passwd": "b3"}),
    )
    .expect("new password");
    assert_eq!(
        info,
        json!({"user": "bob", "group": "staff", "home": "/srv/bob"})
    );
}

#[test]
fn hostile_names_are_refused_or_harmless() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let plugin = plugin(&dir);
    let mut root = root_session(&plugin);
    for name in [
        "root' --",
        "x'; DROP TABLE users; --",
        "a\"b",
        "",
        "../etc",
        "-rf",
        &"a".repeat(33),
    ] {
        assert_eq!(
            code(call(
                &plugin,
                &mut root,
                "adduser",
                json!({"user": name, "passwd": "p"})
            )),
            INVALID_PARAMS_CODE,
            "{name:?}"
        );
        let mut session = plugin.open_session(&ClientInfo::default()).expect("opens");
        assert_eq!(
            code(call(
                &plugin,
                &mut session,
                "auth",
                json!({"user": name, "passwd": ROOT_PASSWORD})
            )),
            AUTH_FAILED
        );
    }
    let home = json!({"user": "eve", "passwd": "p", "home": "relative"});
    assert_eq!(
        code(call(&plugin, &mut root, "adduser", home)),
        INVALID_PARAMS_CODE
    );
    let extra = json!({"user": "eve", "passwd": "p", "admin": true});
    assert_eq!(
        code(call(&plugin, &mut root, "adduser", extra)),
        INVALID_PARAMS_CODE
    );
    // The root account still works: nothing was dropped or altered.
    root_session(&plugin);
}

const INVALID_PARAMS_CODE: i32 = rpc_abi::error::INVALID_PARAMS;

fn auth(
    plugin: &AuthRpc,
    session: &mut Session,
    user: &str,
    passwd: &str,
) -> Result<Value, RpcError> {
    call(
        plugin,
        session,
        "auth",
        json!({"user": user, "passwd": passwd}),
    )
}

#[test]
fn a_guesser_is_locked_out_even_with_the_right_password_until_the_lock_ends() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let clock = TestClock::new();
    let plugin = open_with_clock(&dir, &clock);
    let mut guesser = session_from(&plugin, "203.0.113.5:40000");
    // The free failures, then the one that sets the first lock (1 s).
    for guess in 0..=Policy::USER.free_failures {
        let wrong = format!("guess {guess}");
        assert_eq!(
            code(auth(&plugin, &mut guesser, "root", &wrong)),
            AUTH_FAILED
        );
    }
    let n_checks = plugin.hasher.n_runs();
    let locked = auth(&plugin, &mut guesser, "root", ROOT_PASSWORD).expect_err("locked");
    assert_eq!(locked.code, TOO_MANY_ATTEMPTS);
    assert_eq!(locked.data, Some(json!({"retry_after_ms": 1000})));
    assert_eq!(
        plugin.hasher.n_runs(),
        n_checks,
        "a locked attempt costs no hash"
    );
    // The lock is the user's, whatever the address.
    let mut elsewhere = session_from(&plugin, "198.51.100.7:50000");
    assert_eq!(
        code(auth(&plugin, &mut elsewhere, "root", ROOT_PASSWORD)),
        TOO_MANY_ATTEMPTS
    );
    clock.advance(Duration::from_millis(999));
    assert_eq!(
        code(auth(&plugin, &mut guesser, "root", ROOT_PASSWORD)),
        TOO_MANY_ATTEMPTS
    );
    clock.advance(Duration::from_millis(1));
    // One more wrong guess doubles the lock.
    assert_eq!(
        code(auth(&plugin, &mut guesser, "root", "again")),
        AUTH_FAILED
    );
    let locked = auth(&plugin, &mut guesser, "root", ROOT_PASSWORD).expect_err("locked");
    assert_eq!(locked.data, Some(json!({"retry_after_ms": 2000})));
    clock.advance(Duration::from_secs(2));
    auth(&plugin, &mut guesser, "root", ROOT_PASSWORD).expect("the lock ran out");
    // Success forgot root's failures: the next wrong one is free again.
    assert_eq!(code(auth(&plugin, &mut guesser, "root", "x")), AUTH_FAILED);
    auth(&plugin, &mut guesser, "root", ROOT_PASSWORD).expect("not locked");
}

#[test]
fn an_address_is_locked_out_whatever_names_it_tries() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let plugin = plugin(&dir);
    let mut guesser = session_from(&plugin, "203.0.113.5:40000");
    for guess in 0..=Policy::ADDRESS.free_failures {
        // New names each time (no user budget is spent), some impossible ones.
        let user = if guess % 2 == 0 {
            format!("user{guess}")
        } else {
            format!("bad name {guess}")
        };
        assert_eq!(code(auth(&plugin, &mut guesser, &user, "x")), AUTH_FAILED);
    }
    // Another connection from the same address (another port) is locked too.
    let mut same_address = session_from(&plugin, "203.0.113.5:40001");
    assert_eq!(
        code(auth(&plugin, &mut same_address, "root", ROOT_PASSWORD)),
        TOO_MANY_ATTEMPTS
    );
    let mut other_address = session_from(&plugin, "[2001:db8::5]:40000");
    auth(&plugin, &mut other_address, "root", ROOT_PASSWORD).expect("not locked");
}

#[test]
fn an_unknown_user_costs_the_same_check_as_a_wrong_password() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let plugin = plugin(&dir);
    let mut session = session_from(&plugin, "203.0.113.5:40000");
    for (user, passwd) in [
        ("root", "wrong"),
        ("nobody", "wrong"),
        ("bad name", "wrong"),
        ("root", &"x".repeat(MAX_PASSWORD + 1)),
    ] {
        let n_checks = plugin.hasher.n_runs();
        assert_eq!(code(auth(&plugin, &mut session, user, passwd)), AUTH_FAILED);
        assert_eq!(
            plugin.hasher.n_runs(),
            n_checks + 1,
            "{user:?}: one Argon2 check"
        );
    }
    let root_hash = store::find_user(&session.connection, "root")
        .expect("reads")
        .expect("root exists")
        .hash;
    let params = |phc: &str| phc.split('$').take(4).collect::<Vec<_>>().join("$");
    assert_eq!(
        params(UNMATCHABLE_HASH),
        params(&root_hash),
        "same Argon2 cost"
    );
    assert_eq!(
        plugin.hasher.limit(),
        std::thread::available_parallelism().map_or(1, usize::from)
    );
}

#[test]
fn a_session_is_bound_to_its_account_not_to_a_name() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let plugin = plugin(&dir);
    let mut root = root_session(&plugin);
    call(
        &plugin,
        &mut root,
        "adduser",
        json!({"user": "bob", "passwd": "b1"}),
    )
    .expect("adds");
    let mut bob = plugin.open_session(&ClientInfo::default()).expect("opens");
    auth(&plugin, &mut bob, "bob", "b1").expect("bob logs in");
    call(&plugin, &mut root, "rmuser", json!({"user": "bob"})).expect("removes");
    let new_bob = json!({"user": "bob", "passwd": "b2", "group": "root"});
    call(&plugin, &mut root, "adduser", new_bob).expect("adds a new bob, in root");
    let adduser = json!({"user": "mallory", "passwd": "m"});
    assert_eq!(
        code(call(&plugin, &mut bob, "adduser", adduser)),
        NOT_LOGGED_IN
    );
    assert_eq!(
        call(&plugin, &mut bob, "whoami", Value::Null),
        Ok(Value::Null)
    );
    auth(&plugin, &mut bob, "bob", "b2").expect("the new bob logs in");
    assert_eq!(
        call(&plugin, &mut bob, "whoami", Value::Null).expect("answers")["group"],
        "root"
    );
}

#[test]
fn a_password_change_ends_the_other_sessions_of_that_user() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let plugin = plugin(&dir);
    let mut root = root_session(&plugin);
    let alice = json!({"user": "alice", "passwd": "a1", "group": "root"});
    call(&plugin, &mut root, "adduser", alice).expect("adds");
    let mut first = plugin.open_session(&ClientInfo::default()).expect("opens");
    let mut second = plugin.open_session(&ClientInfo::default()).expect("opens");
    auth(&plugin, &mut first, "alice", "a1").expect("logs in");
    auth(&plugin, &mut second, "alice", "a1").expect("logs in");
    let change = json!({"user": "alice", "old": "a1", "new": "a2", "confirm": "a2"});
    call(&plugin, &mut first, "passwd", change).expect("changes her own");
    assert_eq!(
        call(&plugin, &mut first, "whoami", json!({})).expect("answers")["user"],
        "alice",
        "the session that changed it stays logged in"
    );
    let adduser = json!({"user": "x", "passwd": "x"});
    assert_eq!(
        code(call(&plugin, &mut second, "adduser", adduser)),
        NOT_LOGGED_IN
    );
    // Root resets her password: her remaining session is logged out too.
    let reset = json!({"user": "alice", "new": "a3", "confirm": "a3"});
    call(&plugin, &mut root, "passwd", reset).expect("root resets");
    assert_eq!(
        call(&plugin, &mut first, "whoami", json!({})),
        Ok(Value::Null)
    );
}

#[test]
fn a_database_of_the_first_schema_is_migrated_and_ids_are_not_reused() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("users.db");
    let hash = Hasher::with_limit(1)
        .hash_password("old-pass")
        .expect("hashes");
    {
        let connection = Connection::open(&path).expect("creates");
        connection
            .execute_batch(
                "CREATE TABLE groups (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
                 CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,
                     group_id INTEGER NOT NULL REFERENCES groups(id),
                     passwd TEXT NOT NULL, home TEXT NOT NULL);
                 INSERT INTO groups (name) VALUES ('root'), ('users');",
            )
            .expect("the first schema");
        connection
            .execute(
                "INSERT INTO users (name, group_id, passwd, home) VALUES ('root', 1, ?1, '/root'), ('old', 2, ?1, '/home/old')",
                [&hash],
            )
            .expect("users");
    }
    let plugin = AuthRpc::open(
        Some(path.to_str().expect("UTF-8")),
        None,
        Arc::new(Instant::now),
    )
    .expect("opens and migrates");
    let mut root = plugin.open_session(&ClientInfo::default()).expect("opens");
    auth(&plugin, &mut root, "root", "old-pass").expect("root keeps its password");
    let version: i64 = root
        .connection
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .expect("reads");
    assert_eq!(version, 1);
    let id_of = |session: &Session, name: &str| {
        store::find_user(&session.connection, name)
            .expect("reads")
            .expect("exists")
            .account
            .id
    };
    assert_eq!(id_of(&root, "old"), 2);
    // Removing the user with the largest id and adding one gives a new id.
    call(&plugin, &mut root, "rmuser", json!({"user": "old"})).expect("removes");
    call(
        &plugin,
        &mut root,
        "adduser",
        json!({"user": "old", "passwd": "p"}),
    )
    .expect("adds");
    assert_eq!(id_of(&root, "old"), 3);
}

#[test]
fn the_budget_is_configured_after_the_path() {
    let check = |config: &str, expected: Result<(&str, Policy, Policy), &str>| {
        let parsed = parse_config(config);
        match expected {
            Ok((path, user, address)) => {
                assert_eq!(
                    parsed,
                    Ok((PathBuf::from(path), user, address)),
                    "{config:?}"
                );
            }
            Err(needle) => {
                let error = parsed.expect_err(config);
                assert!(error.contains(needle), "{config:?}: {error}");
            }
        }
    };
    check("users.db", Ok(("users.db", Policy::USER, Policy::ADDRESS)));
    let user = Policy {
        free_failures: 2,
        first_lock: Duration::from_secs(600),
        max_lock: Duration::from_secs(600),
        ..Policy::USER
    };
    let address = Policy {
        free_failures: 7,
        first_lock: Duration::from_secs(600),
        max_lock: Duration::from_secs(600),
        ..Policy::ADDRESS
    };
    check(
        "/a?b/users.db?user_failures=2&address_failures=7&lock_s=600",
        Ok(("/a?b/users.db", user, address)),
    );
    check("", Err("-C must give the path"));
    check("?lock_s=1", Err("-C must give the path"));
    check("users.db?lock_s=-1", Err("whole number"));
    check("users.db?write=1", Err("unknown option"));
}
