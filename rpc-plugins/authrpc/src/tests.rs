//! The methods called through the `Plugin` trait on a temporary database.

use super::*;

const ROOT_PASSWORD: &str = "root-secret";

fn plugin(dir: &tempfile::TempDir) -> AuthRpc {
    let path = dir.path().join("users.db");
    let path = path.to_str().expect("temporary paths are UTF-8");
    AuthRpc::open(Some(path), Some(ROOT_PASSWORD.to_owned())).expect("opens")
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
    let mut session = plugin
        .open_session(&rpc_abi::ClientInfo::default())
        .expect("opens");
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
    let mut session = plugin
        .open_session(&rpc_abi::ClientInfo::default())
        .expect("opens");
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
    )
    .expect("reopens");
    let mut session = plugin
        .open_session(&rpc_abi::ClientInfo::default())
        .expect("opens");
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

    let mut alice = plugin
        .open_session(&rpc_abi::ClientInfo::default())
        .expect("opens");
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
    let mut bob = plugin
        .open_session(&rpc_abi::ClientInfo::default())
        .expect("opens");
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
    let mut again = plugin
        .open_session(&rpc_abi::ClientInfo::default())
        .expect("opens");
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
        let mut session = plugin
            .open_session(&rpc_abi::ClientInfo::default())
            .expect("opens");
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
