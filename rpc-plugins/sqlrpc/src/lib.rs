//! `sqlrpc`: browse an SQLite database over JSON-RPC, for `www/websql.html`.
//!
//! Configuration (`-C`): `PATH[?OPTION&OPTION...]`. Without options the
//! database must exist and is opened read-only. `write=1` allows `insert`
//! (the file is created if missing); `exec=1` also allows `exec`, which runs
//! any one SQL statement the client sends, so enable it only for trusted clients.
//!
//! Methods:
//!
//! - `list {}` → `["table", ...]`: tables and views, `sqlite_*` excluded.
//! - `view {table, offset?, limit?}` → `{table, columns, rows, offset, limit, total}`:
//!   rows as arrays in column order, `rowid` first when the table has one;
//!   `limit` defaults to 100 and is at most 1000.
//! - `get {table, rowid}` → `{columns, row}`.
//! - `insert {table, values: {column: value}}` → `{rowid}` (with `write=1`).
//! - `exec {query}` → `{columns, rows}` for a query, `{changes}` otherwise (with `exec=1`).
//!
//! Table and column names are checked against the schema before they are
//! quoted into SQL; values always travel as parameters. BLOBs come back as
//! `{"blob": "<hex>"}`. Errors (sqlrpc's codes are 2001..=2999; authrpc's
//! are 1001..=1999): `2001` the client's `exec` query failed (SQLite's message),
//! `2002` disabled by the configuration, `2004` no such row, `-32602` unknown table or column or bad value, `-32603` database
//! trouble (logged on stderr; only `exec` returns SQLite's message, about the
//! client's own query).

use std::ffi::CStr;
use std::fmt::Write as _;
use std::path::PathBuf;

use rpc_abi::{Plugin, RpcError, parse_params};
use rusqlite::types::{Value as SqlValue, ValueRef};
use rusqlite::{Connection, OpenFlags, params_from_iter};
use serde::Deserialize;
use serde_json::{Map, Value, json};

/// Rows `view` returns when the client names no limit.
const DEFAULT_LIMIT: u64 = 100;
/// Most rows `view` or `exec` returns at once.
const MAX_LIMIT: u64 = 1000;

const QUERY_FAILED: i32 = 2001;
const DISABLED: i32 = 2002;
const NO_SUCH_ROW: i32 = 2004;

/// What the operator allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Access {
    #[default]
    ReadOnly,
    Write,
    Exec,
}

struct SqlRpc {
    db_path: PathBuf,
    access: Access,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoParams {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ViewParams {
    table: String,
    offset: Option<u64>,
    limit: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetParams {
    table: String,
    rowid: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InsertParams {
    table: String,
    values: Map<String, Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecParams {
    query: String,
}

/// Splits `PATH?opt&opt` into the path and the access it grants.
fn parse_config(config: &str) -> Result<(PathBuf, Access), String> {
    let (path, options) = match config.rsplit_once('?') {
        Some((path, options)) => (path, options),
        None => (config, ""),
    };
    if path.is_empty() {
        return Err("-C must give the database path: PATH[?write=1][&exec=1]".to_owned());
    }
    let mut access = Access::ReadOnly;
    for option in options.split('&').filter(|option| !option.is_empty()) {
        match option {
            "write=1" => access = access.max(Access::Write),
            "exec=1" => access = Access::Exec,
            "write=0" | "exec=0" => {}
            other => {
                return Err(format!(
                    "unknown option {other:?}: sqlrpc knows write=1 and exec=1"
                ));
            }
        }
    }
    Ok((PathBuf::from(path), access))
}

impl PartialOrd for Access {
    fn partial_cmp(&self, other: &Access) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Access {
    fn cmp(&self, other: &Access) -> std::cmp::Ordering {
        (*self as u8).cmp(&(*other as u8))
    }
}

impl SqlRpc {
    fn connect(&self) -> Result<Connection, String> {
        let flags = match self.access {
            Access::ReadOnly => OpenFlags::SQLITE_OPEN_READ_ONLY,
            Access::Write | Access::Exec => {
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE
            }
        } | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let connection = Connection::open_with_flags(&self.db_path, flags)
            .map_err(|error| format!("cannot open {}: {error}", self.db_path.display()))?;
        connection
            .busy_timeout(std::time::Duration::from_secs(5))
            .map_err(|error| format!("cannot configure {}: {error}", self.db_path.display()))?;
        Ok(connection)
    }
}

impl Plugin for SqlRpc {
    type Session = Connection;
    const NAME: &'static CStr = c"sqlrpc";
    const METHODS: &'static [&'static CStr] = &[c"list", c"view", c"get", c"insert", c"exec"];

    fn init(config: Option<&str>) -> Result<SqlRpc, String> {
        let (db_path, access) = parse_config(config.unwrap_or_default())?;
        let plugin = SqlRpc { db_path, access };
        // Fail at startup, not at the first client, if the file cannot be opened.
        let connection = plugin.connect()?;
        table_names(&connection).map_err(|error| {
            format!(
                "cannot read the schema of {}: {error}",
                plugin.db_path.display()
            )
        })?;
        Ok(plugin)
    }

    fn open_session(&self, _client: &rpc_abi::ClientInfo) -> Result<Connection, String> {
        self.connect()
    }

    fn call(
        &self,
        connection: &mut Connection,
        method: &str,
        params: Value,
    ) -> Result<Value, RpcError> {
        match method {
            "list" => {
                let NoParams {} = parse_params(params)?;
                Ok(json!(table_names(connection).map_err(db_error)?))
            }
            "view" => view(connection, parse_params(params)?),
            "get" => get(connection, parse_params(params)?),
            "insert" => {
                if self.access == Access::ReadOnly {
                    return Err(RpcError::new(
                        DISABLED,
                        "insert is disabled: the database is read-only (-C PATH?write=1)",
                    ));
                }
                insert(connection, parse_params(params)?)
            }
            "exec" => {
                if self.access != Access::Exec {
                    return Err(RpcError::new(
                        DISABLED,
                        "exec is disabled (-C PATH?exec=1 enables it)",
                    ));
                }
                exec(connection, parse_params(params)?)
            }
            other => Err(RpcError::internal(format!(
                "sqlrpc has no method {other:?}"
            ))),
        }
    }
}

rpc_abi::export_plugin!(SqlRpc);

fn db_error(error: rusqlite::Error) -> RpcError {
    eprintln!("sqlrpc: database error: {error}");
    RpcError::internal("database error")
}

/// Tables and views, in name order.
fn table_names(connection: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut statement = connection.prepare(
        "SELECT name FROM sqlite_schema WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name",
    )?;
    statement.query_map([], |row| row.get(0))?.collect()
}

/// `table`, checked against the schema, as a quoted identifier.
fn checked_table(connection: &Connection, table: &str) -> Result<String, RpcError> {
    if table_names(connection)
        .map_err(db_error)?
        .iter()
        .any(|name| name == table)
    {
        Ok(quote_identifier(table))
    } else {
        Err(RpcError::invalid_params(format!("no table {table:?}")))
    }
}

fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn column_names(connection: &Connection, table: &str) -> rusqlite::Result<Vec<String>> {
    let mut statement = connection.prepare("SELECT name FROM pragma_table_info(?1)")?;
    statement.query_map([table], |row| row.get(0))?.collect()
}

fn to_json(value: ValueRef<'_>) -> Value {
    match value {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(integer) => json!(integer),
        ValueRef::Real(real) => json!(real),
        ValueRef::Text(text) => json!(String::from_utf8_lossy(text)),
        ValueRef::Blob(bytes) => {
            let mut hex = String::with_capacity(bytes.len() * 2);
            for byte in bytes {
                let _ = write!(hex, "{byte:02x}");
            }
            json!({"blob": hex})
        }
    }
}

fn to_sql(column: &str, value: &Value) -> Result<SqlValue, RpcError> {
    Ok(match value {
        Value::Null => SqlValue::Null,
        Value::Bool(flag) => SqlValue::Integer(i64::from(*flag)),
        Value::Number(number) => match (number.as_i64(), number.as_f64()) {
            (Some(integer), _) => SqlValue::Integer(integer),
            (None, Some(real)) => SqlValue::Real(real),
            (None, None) => {
                return Err(RpcError::invalid_params(format!(
                    "{column}: number out of range"
                )));
            }
        },
        Value::String(text) => SqlValue::Text(text.clone()),
        Value::Array(_) | Value::Object(_) => {
            return Err(RpcError::invalid_params(format!(
                "{column}: a value must be null, a boolean, a number or a string"
            )));
        }
    })
}

/// Runs `sql` with `params` and collects at most `max_rows` rows.
fn query_rows(
    connection: &Connection,
    sql: &str,
    params: &[SqlValue],
    max_rows: u64,
) -> rusqlite::Result<(Vec<String>, Vec<Vec<Value>>)> {
    let mut statement = connection.prepare(sql)?;
    let columns: Vec<String> = statement
        .column_names()
        .into_iter()
        .map(str::to_owned)
        .collect();
    let mut rows = statement.query(params_from_iter(params))?;
    let mut collected = Vec::new();
    while let Some(row) = rows.next()? {
        if collected.len() as u64 >= max_rows {
            break;
        }
        let mut values = Vec::with_capacity(columns.len());
        for column_idx in 0..columns.len() {
            values.push(to_json(row.get_ref(column_idx)?));
        }
        collected.push(values);
    }
    Ok((columns, collected))
}

/// `SELECT rowid, * ...`, or `SELECT * ...` for a table without rowid.
fn select_with_rowid(
    connection: &Connection,
    rest: &str,
    params: &[SqlValue],
    max_rows: u64,
) -> rusqlite::Result<(Vec<String>, Vec<Vec<Value>>)> {
    query_rows(
        connection,
        &format!("SELECT rowid, * {rest}"),
        params,
        max_rows,
    )
    .or_else(|_| query_rows(connection, &format!("SELECT * {rest}"), params, max_rows))
}

fn view(connection: &Connection, params: ViewParams) -> Result<Value, RpcError> {
    let table = checked_table(connection, &params.table)?;
    let offset = params.offset.unwrap_or(0);
    let limit = params.limit.unwrap_or(DEFAULT_LIMIT).min(MAX_LIMIT);
    let offset_sql =
        i64::try_from(offset).map_err(|_| RpcError::invalid_params("offset is too large"))?;
    let limit_sql =
        i64::try_from(limit).map_err(|_| RpcError::invalid_params("limit is too large"))?;
    let total: i64 = connection
        .query_row(&format!("SELECT count(*) FROM {table}"), [], |row| {
            row.get(0)
        })
        .map_err(db_error)?;
    let (columns, rows) = select_with_rowid(
        connection,
        &format!("FROM {table} LIMIT ?1 OFFSET ?2"),
        &[SqlValue::Integer(limit_sql), SqlValue::Integer(offset_sql)],
        limit,
    )
    .map_err(db_error)?;
    Ok(
        json!({"table": params.table, "columns": columns, "rows": rows, "offset": offset, "limit": limit, "total": total}),
    )
}

fn get(connection: &Connection, params: GetParams) -> Result<Value, RpcError> {
    let table = checked_table(connection, &params.table)?;
    let (columns, rows) = query_rows(
        connection,
        &format!("SELECT rowid, * FROM {table} WHERE rowid = ?1"),
        &[SqlValue::Integer(params.rowid)],
        1,
    )
    .map_err(|_| RpcError::invalid_params(format!("table {:?} has no rowid", params.table)))?;
    match rows.into_iter().next() {
        Some(row) => Ok(json!({"columns": columns, "row": row})),
        None => Err(RpcError::new(
            NO_SUCH_ROW,
            format!("no row {} in {:?}", params.rowid, params.table),
        )),
    }
}

fn insert(connection: &Connection, params: InsertParams) -> Result<Value, RpcError> {
    let table = checked_table(connection, &params.table)?;
    let known = column_names(connection, &params.table).map_err(db_error)?;
    if params.values.is_empty() {
        return Err(RpcError::invalid_params(
            "values must name at least one column",
        ));
    }
    let mut columns = Vec::with_capacity(params.values.len());
    let mut values = Vec::with_capacity(params.values.len());
    for (column, value) in &params.values {
        if !known.contains(column) {
            return Err(RpcError::invalid_params(format!(
                "table {:?} has no column {column:?}",
                params.table
            )));
        }
        columns.push(quote_identifier(column));
        values.push(to_sql(column, value)?);
    }
    let placeholders: Vec<String> = (1..=values.len()).map(|idx| format!("?{idx}")).collect();
    let sql = format!(
        "INSERT INTO {table} ({}) VALUES ({})",
        columns.join(", "),
        placeholders.join(", ")
    );
    match connection.execute(&sql, params_from_iter(&values)) {
        Ok(_) => Ok(json!({"rowid": connection.last_insert_rowid()})),
        Err(rusqlite::Error::SqliteFailure(error, _))
            if error.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            Err(RpcError::invalid_params(
                "the row breaks a constraint of the table",
            ))
        }
        Err(error) => Err(db_error(error)),
    }
}

fn exec(connection: &Connection, params: ExecParams) -> Result<Value, RpcError> {
    let user_error =
        |error: rusqlite::Error| RpcError::new(QUERY_FAILED, format!("query failed: {error}"));
    let statement = connection.prepare(&params.query).map_err(user_error)?;
    if statement.column_count() > 0 {
        drop(statement);
        let (columns, rows) =
            query_rows(connection, &params.query, &[], MAX_LIMIT).map_err(user_error)?;
        return Ok(json!({"columns": columns, "rows": rows}));
    }
    drop(statement);
    let changes = connection.execute(&params.query, []).map_err(user_error)?;
    Ok(json!({"changes": changes}))
}

#[cfg(test)]
mod tests;
