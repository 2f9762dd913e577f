//! The methods called through the `Plugin` trait on a temporary database.

use super::*;

fn setup(options: &str) -> (tempfile::TempDir, SqlRpc, Connection) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("data.db");
    let connection = Connection::open(&path).expect("creates");
    connection
        .execute_batch(
            "CREATE TABLE people (name TEXT NOT NULL, age INTEGER, photo BLOB);
             INSERT INTO people VALUES ('ann', 31, x'00ff'), ('bob', NULL, NULL), ('cy', 5, NULL);
             CREATE TABLE \"odd \"\"name\" (k TEXT PRIMARY KEY, v) WITHOUT ROWID;",
        )
        .expect("fills");
    let config = format!("{}{options}", path.display());
    let plugin = SqlRpc::init(Some(&config)).expect("init");
    let session = plugin
        .open_session(&rpc_abi::ClientInfo::default())
        .expect("opens");
    (dir, plugin, session)
}

fn code(result: Result<Value, RpcError>) -> i32 {
    result.expect_err("an error").code
}

#[test]
fn config_options_are_parsed_and_unknown_ones_refused() {
    assert_eq!(
        parse_config("a.db"),
        Ok((PathBuf::from("a.db"), Access::ReadOnly))
    );
    assert_eq!(
        parse_config("a.db?write=1"),
        Ok((PathBuf::from("a.db"), Access::Write))
    );
    assert_eq!(
        parse_config("a.db?exec=1&write=1"),
        Ok((PathBuf::from("a.db"), Access::Exec))
    );
    assert!(parse_config("a.db?drop=1").is_err());
    assert!(parse_config("").is_err());
}

#[test]
fn list_view_and_get_read_the_tables() {
    let (_dir, plugin, mut session) = setup("");
    assert_eq!(
        plugin.call(&mut session, "list", Value::Null),
        Ok(json!(["odd \"name", "people"]))
    );
    let page = plugin
        .call(
            &mut session,
            "view",
            json!({"table": "people", "offset": 1, "limit": 1}),
        )
        .expect("views");
    assert_eq!(page["columns"], json!(["rowid", "name", "age", "photo"]));
    assert_eq!(page["rows"], json!([[2, "bob", null, null]]));
    assert_eq!(page["total"], json!(3));
    let odd = plugin
        .call(&mut session, "view", json!({"table": "odd \"name"}))
        .expect("views");
    assert_eq!(odd["columns"], json!(["k", "v"]));
    let row = plugin
        .call(&mut session, "get", json!({"table": "people", "rowid": 1}))
        .expect("gets");
    assert_eq!(row["row"], json!([1, "ann", 31, {"blob": "00ff"}]));
    assert_eq!(
        code(plugin.call(&mut session, "get", json!({"table": "people", "rowid": 9}))),
        NO_SUCH_ROW
    );
}

#[test]
fn read_only_refuses_insert_and_exec() {
    let (_dir, plugin, mut session) = setup("");
    let insert = json!({"table": "people", "values": {"name": "dan"}});
    assert_eq!(code(plugin.call(&mut session, "insert", insert)), DISABLED);
    assert_eq!(
        code(plugin.call(&mut session, "exec", json!({"query": "DELETE FROM people"}))),
        DISABLED
    );
}

#[test]
fn insert_checks_names_and_binds_values() {
    let (_dir, plugin, mut session) = setup("?write=1");
    let inserted = plugin
        .call(
            &mut session,
            "insert",
            json!({"table": "people", "values": {"name": "x'); DROP TABLE people; --", "age": 2}}),
        )
        .expect("inserts");
    assert_eq!(inserted, json!({"rowid": 4}));
    let row = plugin
        .call(&mut session, "get", json!({"table": "people", "rowid": 4}))
        .expect("gets");
    assert_eq!(row["row"][1], json!("x'); DROP TABLE people; --"));
    for bad in [
        json!({"table": "people; DROP TABLE people", "values": {"name": "a"}}),
        json!({"table": "people", "values": {"name) VALUES ('a'); --": "a"}}),
        json!({"table": "people", "values": {"name": [1]}}),
        json!({"table": "people", "values": {}}),
        json!({"table": "people", "values": {"age": 1}}),
    ] {
        assert_eq!(
            code(plugin.call(&mut session, "insert", bad.clone())),
            -32602,
            "{bad}"
        );
    }
    assert_eq!(
        code(plugin.call(
            &mut session,
            "view",
            json!({"table": "people\" UNION SELECT 1 --"})
        )),
        -32602
    );
    assert_eq!(
        code(plugin.call(&mut session, "exec", json!({"query": "SELECT 1"}))),
        DISABLED
    );
}

#[test]
fn exec_runs_one_statement_when_enabled() {
    let (_dir, plugin, mut session) = setup("?exec=1");
    let result = plugin
        .call(
            &mut session,
            "exec",
            json!({"query": "SELECT name FROM people WHERE age > 10"}),
        )
        .expect("queries");
    assert_eq!(result, json!({"columns": ["name"], "rows": [["ann"]]}));
    let result = plugin
        .call(
            &mut session,
            "exec",
            json!({"query": "UPDATE people SET age = 1"}),
        )
        .expect("updates");
    assert_eq!(result, json!({"changes": 3}));
    assert_eq!(
        code(plugin.call(&mut session, "exec", json!({"query": "SELEC 1"}))),
        QUERY_FAILED
    );
    assert_eq!(
        code(plugin.call(
            &mut session,
            "exec",
            json!({"query": "SELECT 1; DROP TABLE people"})
        )),
        QUERY_FAILED
    );
    assert_eq!(
        plugin
            .call(&mut session, "list", Value::Null)
            .expect("lists")
            .as_array()
            .map(Vec::len),
        Some(2)
    );
}
