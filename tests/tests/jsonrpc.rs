//! `websocket_jsonrpc` through the gateway: the JSON-RPC framing (batches,
//! notifications, ids, standard errors), the `testrpc`, `authrpc`, `sqlrpc`
//! and C `hello` plugins, per-session state, startup failures, and injection
//! attempts in every string parameter.
//!
//! The plugins are the cdylibs `cargo build --workspace` leaves next to the
//! binaries (`target/<profile>/lib<name>.so`); the C plugin is compiled here
//! with `gcc` from `rpc-plugins/examples/hello.c`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail, ensure};
use harness::binaries::{bin_path, plugin_path, repo_root};
use harness::{Backend, Client, EXIT_DEADLINE, Gateway, Message, Mode, all_modes};
use serde_json::{Value, json};
use tempfile::TempDir;

const ROOT_PASSWORD: &str = "test-root-password";

/// Starts `websocket_jsonrpc -R <docroot> -n <name> <args>` with `envs`.
async fn start_jsonrpc(
    docroot: &Path,
    name: &str,
    args: &[&str],
    envs: &[(&str, &str)],
) -> anyhow::Result<Backend> {
    let mut command = Command::new(bin_path("websocket_jsonrpc")?);
    command
        .arg("-R")
        .arg(docroot)
        .arg("-n")
        .arg(name)
        .args(args);
    for (key, value) in envs {
        command.env(key, value);
    }
    Backend::start_command(
        &format!("websocket_jsonrpc ({name})"),
        command,
        &docroot.join(name),
    )
    .await
}

/// Runs `websocket_jsonrpc` with arguments that must make it fail at startup;
/// returns its stderr.
async fn startup_failure(args: &[&str]) -> anyhow::Result<String> {
    let docroot = tempfile::tempdir()?;
    let mut command = tokio::process::Command::new(bin_path("websocket_jsonrpc")?);
    command
        .arg("-R")
        .arg(docroot.path())
        .arg("-n")
        .arg("rpc")
        .args(args)
        .env("NO_COLOR", "1")
        .kill_on_drop(true);
    let output = tokio::time::timeout(EXIT_DEADLINE, command.output())
        .await
        .context("websocket_jsonrpc did not exit")??;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    ensure!(
        !output.status.success(),
        "expected a failure, got {}: {stderr}",
        output.status
    );
    ensure!(
        !docroot.path().join("rpc").exists(),
        "the socket file stays behind"
    );
    Ok(stderr)
}

/// A JSON-RPC client over one WebSocket.
struct Rpc {
    client: Client,
    next_id: u64,
}

impl Rpc {
    async fn connect(gateway: &Gateway, path: &str) -> anyhow::Result<Rpc> {
        Ok(Rpc {
            client: gateway.connect(path).await?,
            next_id: 1,
        })
    }

    /// Sends `text` and parses the reply.
    async fn raw(&mut self, text: &str) -> anyhow::Result<Value> {
        self.client.send(Message::text(text)).await?;
        match self.client.recv().await? {
            Message::Text(reply) => {
                serde_json::from_str(reply.as_str()).with_context(|| format!("reply {reply}"))
            }
            other => bail!("expected a text reply to {text}, got {other:?}"),
        }
    }

    /// Calls `method` and returns the whole response, checking its envelope.
    async fn response(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let request = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let response = self.raw(&request.to_string()).await?;
        ensure!(
            response["jsonrpc"] == "2.0" && response["id"] == id,
            "bad envelope: {response}"
        );
        Ok(response)
    }

    /// The result of `method`, or an error quoting the error object.
    async fn call(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        let response = self.response(method, params).await?;
        match response.get("result") {
            Some(result) => Ok(result.clone()),
            None => bail!("{method} failed: {response}"),
        }
    }

    /// The error code of `method`, which must fail.
    async fn error_code(&mut self, method: &str, params: Value) -> anyhow::Result<i64> {
        let response = self.response(method, params).await?;
        response["error"]["code"]
            .as_i64()
            .with_context(|| format!("{method} should have failed: {response}"))
    }
}

/// A docroot with `websocket_jsonrpc` serving `args` on `name`, and a gateway.
async fn start(
    mode: Mode,
    name: &str,
    args: &[&str],
) -> anyhow::Result<(TempDir, Backend, Gateway)> {
    let docroot = tempfile::tempdir()?;
    let backend = start_jsonrpc(
        docroot.path(),
        name,
        args,
        &[("WSGATE_ROOT_PASSWORD", ROOT_PASSWORD)],
    )
    .await?;
    let gateway = Gateway::start(docroot.path(), mode.gateway_args()).await?;
    Ok((docroot, backend, gateway))
}

all_modes!(
    framing_errors_have_the_standard_codes,
    batches_answer_in_order_and_notifications_get_no_reply,
    a_panicking_method_fails_that_call_only,
    a_client_leaving_mid_batch_cancels_the_rest_of_it,
    authrpc_methods_and_their_errors,
    sessions_have_their_own_login_state,
    a_session_loses_its_rights_with_its_account,
    password_guesses_are_locked_out,
    injection_attempts_are_refused_or_harmless,
    sqlrpc_lists_views_and_pages_through_a_table,
    a_plugin_written_in_c_answers_through_the_header,
);

fn path_str(path: &Path) -> anyhow::Result<&str> {
    path.to_str().context("temporary paths are UTF-8")
}

async fn framing_errors_have_the_standard_codes(mode: Mode) -> anyhow::Result<()> {
    let testrpc = plugin_path("testrpc")?;
    let (_docroot, _backend, gateway) = start(mode, "rpc", &["-L", path_str(&testrpc)?]).await?;
    let mut rpc = Rpc::connect(&gateway, "/rpc").await?;
    for (request, id, code) in [
        ("{\"jsonrpc\": \"2.0\", \"method\": ", json!(null), -32700),
        ("[]", json!(null), -32600),
        ("\"just a string\"", json!(null), -32600),
        (
            r#"{"jsonrpc":"1.0","id":1,"method":"echo"}"#,
            json!(1),
            -32600,
        ),
        (
            r#"{"jsonrpc":"2.0","id":"s","method":"nope"}"#,
            json!("s"),
            -32601,
        ),
        (
            r#"{"jsonrpc":"2.0","id":2,"method":"fail","params":{"code":"x"}}"#,
            json!(2),
            -32602,
        ),
        (
            r#"{"jsonrpc":"2.0","id":3,"method":"fail","params":{"code":-32601}}"#,
            json!(3),
            -32603,
        ),
        (
            r#"{"jsonrpc":"2.0","id":4,"method":"fail","params":{"code":-32000}}"#,
            json!(4),
            -32000,
        ),
    ] {
        let reply = rpc.raw(request).await?;
        assert_eq!(reply["id"], id, "reply to {request}: {reply}");
        assert_eq!(reply["error"]["code"], code, "reply to {request}: {reply}");
    }
    let reply = rpc
        .raw(r#"{"jsonrpc":"2.0","id":-5,"method":"echo","params":{"x":[1,"ü"]}}"#)
        .await?;
    assert_eq!(
        reply,
        json!({"jsonrpc": "2.0", "result": {"x": [1, "ü"]}, "id": -5})
    );
    Ok(())
}

async fn batches_answer_in_order_and_notifications_get_no_reply(mode: Mode) -> anyhow::Result<()> {
    let testrpc = plugin_path("testrpc")?;
    let (_docroot, _backend, gateway) = start(mode, "rpc", &["-L", path_str(&testrpc)?]).await?;
    let mut rpc = Rpc::connect(&gateway, "/rpc").await?;
    // A notification runs (it counts) but gets no reply: the next reply is the request's.
    rpc.client
        .send(Message::text(r#"{"jsonrpc":"2.0","method":"count"}"#))
        .await?;
    rpc.client
        .send(Message::text(
            r#"[{"jsonrpc":"2.0","method":"count"},{"jsonrpc":"2.0","method":"nope"}]"#,
        ))
        .await?;
    assert_eq!(rpc.call("count", json!(null)).await?, json!(3));
    let reply = rpc
        .raw(
            r#"[{"jsonrpc":"2.0","id":1,"method":"count"},
                {"jsonrpc":"2.0","method":"count"},
                {"jsonrpc":"2.0","id":2,"method":"nope"},
                {"jsonrpc":"2.0","id":3,"method":"echo","params":["a"]},
                7]"#,
        )
        .await?;
    let replies = reply.as_array().context("a batch reply is an array")?;
    assert_eq!(replies.len(), 4, "{reply}");
    assert_eq!(replies[0], json!({"jsonrpc": "2.0", "result": 4, "id": 1}));
    assert_eq!(replies[1]["error"]["code"], -32601, "{reply}");
    assert_eq!(
        replies[2],
        json!({"jsonrpc": "2.0", "result": ["a"], "id": 3})
    );
    assert_eq!(replies[3]["error"]["code"], -32600, "{reply}");
    assert_eq!(replies[3]["id"], json!(null), "{reply}");
    Ok(())
}

async fn a_panicking_method_fails_that_call_only(mode: Mode) -> anyhow::Result<()> {
    let testrpc = plugin_path("testrpc")?;
    let (_docroot, mut backend, gateway) = start(
        mode,
        "rpc",
        &["-L", path_str(&testrpc)?, "-C", "the config"],
    )
    .await?;
    let mut first = Rpc::connect(&gateway, "/rpc").await?;
    let mut second = Rpc::connect(&gateway, "/rpc").await?;
    assert_eq!(first.call("count", json!(null)).await?, json!(1));
    let client = first.call("client", json!(null)).await?;
    assert_eq!(client["path"], "/rpc", "{client}");
    ensure!(
        client["peer"]
            .as_str()
            .is_some_and(|peer| peer.starts_with("127.0.0.1:")),
        "session_open got no client address: {client}"
    );
    let response = first.response("panic", json!(null)).await?;
    assert_eq!(response["error"]["code"], -32603, "{response}");
    assert!(
        !response.to_string().contains("panicking as asked"),
        "panic text leaked: {response}"
    );
    assert_eq!(first.call("count", json!(null)).await?, json!(2));
    assert_eq!(second.call("count", json!(null)).await?, json!(1));
    assert_eq!(
        second.call("config", json!(null)).await?,
        json!("the config")
    );
    backend.check_running()?;
    Ok(())
}

/// `testrpc`'s plugin-wide `stats`: `(holding, ticks, closed)`.
async fn stats(rpc: &mut Rpc) -> anyhow::Result<(u64, u64, u64)> {
    let stats = rpc.call("stats", json!({})).await?;
    let field = |name: &str| {
        stats[name]
            .as_u64()
            .with_context(|| format!("stats.{name}: {stats}"))
    };
    Ok((field("holding")?, field("ticks")?, field("closed")?))
}

async fn a_client_leaving_mid_batch_cancels_the_rest_of_it(mode: Mode) -> anyhow::Result<()> {
    let testrpc = plugin_path("testrpc")?;
    let (_docroot, backend, gateway) = start(mode, "rpc", &["-L", path_str(&testrpc)?]).await?;
    let mut leaving = Rpc::connect(&gateway, "/rpc").await?;
    let mut watcher = Rpc::connect(&gateway, "/rpc").await?;
    let mut batch = vec![json!({"jsonrpc": "2.0", "id": 0, "method": "hold"})];
    batch.extend((1..50).map(|id| json!({"jsonrpc": "2.0", "id": id, "method": "tick"})));
    leaving
        .client
        .send(Message::text(Value::from(batch).to_string()))
        .await?;
    let deadline = harness::EVENT_DEADLINE;
    let start_holding = std::time::Instant::now();
    while stats(&mut watcher).await?.0 == 0 {
        ensure!(
            start_holding.elapsed() < deadline,
            "the batch's first call never started"
        );
        tokio::task::yield_now().await;
    }
    // The client vanishes while the first call of its batch runs.
    drop(leaving.client.into_tcp());
    harness::wait::until("the server to notice the client left", deadline, || {
        let noticed = backend
            .stderr_text()
            .contains("its remaining requests are cancelled");
        async move { Ok(noticed.then_some(())) }
    })
    .await?;
    watcher.call("gate", json!({"open": true})).await?;
    let start_closing = std::time::Instant::now();
    let (_, ticks, _) = loop {
        let stats = stats(&mut watcher).await?;
        if stats.2 == 1 {
            break stats;
        }
        ensure!(
            start_closing.elapsed() < deadline,
            "the left client's plugin session was never closed: {stats:?}"
        );
        tokio::task::yield_now().await;
    };
    assert_eq!(ticks, 0, "requests of a departed client's batch ran");
    Ok(())
}

async fn authrpc_methods_and_their_errors(mode: Mode) -> anyhow::Result<()> {
    let authrpc = plugin_path("authrpc")?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("users.db");
    let (_docroot, _backend, gateway) =
        start(mode, "auth", &["-L", "authrpc.so", "-C", path_str(&db)?]).await?;
    assert!(authrpc.is_file());
    let mut root = Rpc::connect(&gateway, "/auth").await?;
    assert_eq!(root.call("whoami", json!({})).await?, json!(null));
    assert_eq!(
        root.error_code("adduser", json!({"user": "a", "passwd": "b"}))
            .await?,
        1001
    );
    assert_eq!(
        root.error_code("auth", json!({"user": "root", "passwd": "wrong"}))
            .await?,
        1003
    );
    assert_eq!(
        root.error_code("auth", json!({"user": "root"})).await?,
        -32602
    );
    let me = root
        .call("auth", json!({"user": "root", "passwd": ROOT_PASSWORD}))
        .await?;
    assert_eq!(
        me,
        json!({"user": "root", "group": "root", "home": "/root"})
    );

    let alice = json!({"user": "alice", "passwd": "alice-1", "home": "/srv/alice"});
    assert_eq!(
        root.call("adduser", alice.clone()).await?,
        json!({"user": "alice", "group": "users", "home": "/srv/alice"})
    );
    assert_eq!(root.error_code("adduser", alice).await?, 1005);
    assert_eq!(
        root.error_code("adduser", json!({"user": "bad name", "passwd": "x"}))
            .await?,
        -32602
    );

    let mut user = Rpc::connect(&gateway, "/auth").await?;
    user.call("auth", json!({"user": "alice", "passwd": "alice-1"}))
        .await?;
    assert_eq!(user.call("whoami", json!(null)).await?["user"], "alice");
    assert_eq!(
        user.error_code("adduser", json!({"user": "bob", "passwd": "b"}))
            .await?,
        1002
    );
    assert_eq!(
        user.error_code("rmuser", json!({"user": "root"})).await?,
        1002
    );
    let change = json!({"user": "alice", "old": "alice-1", "new": "alice-2", "confirm": "alice-3"});
    assert_eq!(user.error_code("passwd", change).await?, 1006);
    let change = json!({"user": "alice", "old": "nope", "new": "alice-2", "confirm": "alice-2"});
    assert_eq!(user.error_code("passwd", change).await?, 1003);
    let change = json!({"user": "alice", "old": "alice-1", "new": "alice-2", "confirm": "alice-2"});
    assert_eq!(user.call("passwd", change).await?, json!({"user": "alice"}));
    let change = json!({"user": "root", "new": "x", "confirm": "x"});
    assert_eq!(user.error_code("passwd", change).await?, 1002);
    // Root may reset a password without the old one.
    let reset = json!({"user": "alice", "new": "alice-3", "confirm": "alice-3"});
    root.call("passwd", reset).await?;
    assert_eq!(
        user.error_code("auth", json!({"user": "alice", "passwd": "alice-2"}))
            .await?,
        1003
    );
    user.call("auth", json!({"user": "alice", "passwd": "alice-3"}))
        .await?;
    assert_eq!(
        root.error_code("rmuser", json!({"user": "root"})).await?,
        1002
    );
    assert_eq!(
        root.call("rmuser", json!({"user": "alice"})).await?,
        json!({"user": "alice"})
    );
    assert_eq!(
        root.error_code("rmuser", json!({"user": "alice"})).await?,
        1004
    );
    assert_eq!(user.call("whoami", json!({})).await?, json!(null));
    root.call("logout", json!({})).await?;
    assert_eq!(root.error_code("rmuser", json!({"user": "x"})).await?, 1001);
    Ok(())
}

async fn sessions_have_their_own_login_state(mode: Mode) -> anyhow::Result<()> {
    plugin_path("authrpc")?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("users.db");
    let (_docroot, _backend, gateway) =
        start(mode, "auth", &["-L", "authrpc", "-C", path_str(&db)?]).await?;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(Rpc::connect(&gateway, "/auth").await?);
    }
    let (first, rest) = clients.split_first_mut().context("four clients")?;
    first
        .call("auth", json!({"user": "root", "passwd": ROOT_PASSWORD}))
        .await?;
    let calls = rest.iter_mut().map(|rpc| async move {
        let whoami = rpc.call("whoami", json!(null)).await?;
        let denied = rpc
            .error_code("adduser", json!({"user": "x", "passwd": "y"}))
            .await?;
        anyhow::Ok((whoami, denied))
    });
    for (whoami, denied) in futures_util::future::try_join_all(calls).await? {
        assert_eq!(whoami, json!(null));
        assert_eq!(denied, 1001);
    }
    assert_eq!(first.call("whoami", json!(null)).await?["user"], "root");
    Ok(())
}

async fn a_session_loses_its_rights_with_its_account(mode: Mode) -> anyhow::Result<()> {
    plugin_path("authrpc")?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("users.db");
    let (_docroot, _backend, gateway) =
        start(mode, "auth", &["-L", "authrpc", "-C", path_str(&db)?]).await?;
    let mut root = Rpc::connect(&gateway, "/auth").await?;
    root.call("auth", json!({"user": "root", "passwd": ROOT_PASSWORD}))
        .await?;
    root.call("adduser", json!({"user": "bob", "passwd": "bob-1"}))
        .await?;
    let mut bob = Rpc::connect(&gateway, "/auth").await?;
    bob.call("auth", json!({"user": "bob", "passwd": "bob-1"}))
        .await?;
    // Root removes bob and creates another bob, in group root.
    root.call("rmuser", json!({"user": "bob"})).await?;
    root.call(
        "adduser",
        json!({"user": "bob", "passwd": "bob-2", "group": "root"}),
    )
    .await?;
    assert_eq!(
        bob.error_code("adduser", json!({"user": "mallory", "passwd": "m"}))
            .await?,
        1001
    );
    assert_eq!(bob.call("whoami", json!({})).await?, json!(null));
    // A password change logs out the user's other sessions.
    let mut bob_again = Rpc::connect(&gateway, "/auth").await?;
    bob_again
        .call("auth", json!({"user": "bob", "passwd": "bob-2"}))
        .await?;
    root.call(
        "passwd",
        json!({"user": "bob", "new": "bob-3", "confirm": "bob-3"}),
    )
    .await?;
    assert_eq!(
        bob_again
            .error_code("rmuser", json!({"user": "root"}))
            .await?,
        1001
    );
    Ok(())
}

async fn password_guesses_are_locked_out(mode: Mode) -> anyhow::Result<()> {
    plugin_path("authrpc")?;
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("users.db");
    // The default budget (5 free failures), with a first lock of an hour
    // instead of a second, so the outcome does not depend on how fast this
    // machine hashes.
    let config = format!("{}?lock_s=3600", path_str(&db)?);
    let (_docroot, _backend, gateway) =
        start(mode, "auth", &["-L", "authrpc", "-C", &config]).await?;
    let mut guesser = Rpc::connect(&gateway, "/auth").await?;
    // One batch of 99 wrong guesses and then the right password, as an attacker sends them.
    let mut batch: Vec<Value> = (0..99)
        .map(|id| {
            json!({"jsonrpc": "2.0", "id": id, "method": "auth",
                   "params": {"user": "root", "passwd": format!("guess {id}")}})
        })
        .collect();
    batch.push(json!({"jsonrpc": "2.0", "id": 99, "method": "auth",
                      "params": {"user": "root", "passwd": ROOT_PASSWORD}}));
    let reply = guesser.raw(&Value::from(batch).to_string()).await?;
    let replies = reply.as_array().context("a batch reply")?;
    let codes: Vec<i64> = replies
        .iter()
        .map(|reply| reply["error"]["code"].as_i64().unwrap_or(0))
        .collect();
    assert_eq!(codes.len(), 100, "{reply}");
    // 5 free failures and the one that sets the first lock; the rest are
    // refused unchecked, the right password included.
    assert_eq!(codes[..6], [1003; 6], "{reply}");
    assert!(codes[6..].iter().all(|code| *code == 1007), "{reply}");
    let retry_after = replies[99]["error"]["data"]["retry_after_ms"].as_u64();
    assert!(
        retry_after.is_some_and(|ms| ms > 0 && ms <= 3_600_000),
        "{}",
        replies[99]
    );
    Ok(())
}

#[tokio::test]
async fn the_root_password_is_printed_once_when_not_given() -> anyhow::Result<()> {
    plugin_path("authrpc")?;
    let docroot = tempfile::tempdir()?;
    let db = docroot.path().join("users.db");
    let db = path_str(&db)?.to_owned();
    let args = ["-L", "authrpc.so", "-C", db.as_str()];
    let backend = start_jsonrpc(docroot.path(), "auth", &args, &[]).await?;
    let password = harness::wait::until(
        "the root password on stderr",
        harness::STARTUP_DEADLINE,
        || {
            let text = backend.stderr_text();
            async move {
                Ok(text.lines().find_map(|line| {
                    line.split_once("with user root, password ")?
                        .1
                        .split_whitespace()
                        .next()
                        .map(str::to_owned)
                }))
            }
        },
    )
    .await?;
    assert!(password.len() >= 16, "{password}");
    let gateway = Gateway::start(docroot.path(), &[]).await?;
    let mut rpc = Rpc::connect(&gateway, "/auth").await?;
    rpc.call("auth", json!({"user": "root", "passwd": password}))
        .await?;
    drop(rpc);
    drop(backend);
    // A second start on the same database prints nothing and keeps the password.
    let backend = start_jsonrpc(docroot.path(), "auth", &args, &[]).await?;
    let mut rpc = Rpc::connect(&gateway, "/auth").await?;
    rpc.call("auth", json!({"user": "root", "passwd": password}))
        .await?;
    assert!(
        !backend.stderr_text().contains("password"),
        "{}",
        backend.stderr_text()
    );
    Ok(())
}

async fn injection_attempts_are_refused_or_harmless(mode: Mode) -> anyhow::Result<()> {
    plugin_path("authrpc")?;
    plugin_path("sqlrpc")?;
    let dir = tempfile::tempdir()?;
    let users = dir.path().join("users.db");
    let data = dir.path().join("data.db");
    let data_config = format!("{}?write=1", path_str(&data)?);
    // Create the data table with exec, then serve it with write=1 only.
    {
        let exec_config = format!("{}?exec=1", path_str(&data)?);
        let (_docroot, _backend, gateway) =
            start(mode, "sql", &["-L", "sqlrpc.so", "-C", &exec_config]).await?;
        let mut sql = Rpc::connect(&gateway, "/sql").await?;
        sql.call(
            "exec",
            json!({"query": "CREATE TABLE notes (title TEXT, body TEXT)"}),
        )
        .await?;
    }
    // A first lock of an hour, so root's guesses below lock it for the whole test.
    let users_config = format!("{}?lock_s=3600", path_str(&users)?);
    let args = [
        "-L",
        "authrpc.so",
        "-C",
        &users_config,
        "-L",
        "sqlrpc.so",
        "-C",
        &data_config,
    ];
    let (_docroot, _backend, gateway) = start(mode, "rpc", &args).await?;
    let mut rpc = Rpc::connect(&gateway, "/rpc").await?;
    // Root logs in before the guesses below lock its name out for a while.
    let mut admin = Rpc::connect(&gateway, "/rpc").await?;
    admin
        .call("auth", json!({"user": "root", "passwd": ROOT_PASSWORD}))
        .await?;
    let attacks = [
        "' OR '1'='1",
        "root' --",
        "root\"; DROP TABLE users; --",
        "x'); DELETE FROM users; --",
        "notes; DROP TABLE notes",
        "notes\" UNION SELECT name, passwd FROM users --",
        "\u{0}root",
    ];
    for (attack_idx, attack) in attacks.into_iter().enumerate() {
        assert_eq!(
            rpc.error_code("auth", json!({"user": attack, "passwd": ROOT_PASSWORD}))
                .await?,
            1003,
            "{attack:?}"
        );
        // Root's sixth failure locks its name: the seventh is 1007.
        let expected = if attack_idx < 6 { 1003 } else { 1007 };
        assert_eq!(
            rpc.error_code("auth", json!({"user": "root", "passwd": attack}))
                .await?,
            expected,
            "{attack:?}"
        );
        assert_eq!(
            rpc.error_code("view", json!({"table": attack})).await?,
            -32602,
            "{attack:?}"
        );
        assert_eq!(
            rpc.error_code("get", json!({"table": attack, "rowid": 1}))
                .await?,
            -32602,
            "{attack:?}"
        );
        let values = json!({"table": "notes", "values": {attack: "x"}});
        assert_eq!(
            rpc.error_code("insert", values).await?,
            -32602,
            "{attack:?}"
        );
        let values = json!({"table": "notes", "values": {"title": attack, "body": attack}});
        let rowid = rpc.call("insert", values).await?["rowid"].clone();
        let row = rpc
            .call("get", json!({"table": "notes", "rowid": rowid}))
            .await?;
        assert_eq!(row["row"][1], attack, "{row}");
    }
    for attack in attacks {
        let params = json!({"user": attack, "passwd": "p"});
        assert_eq!(
            admin.error_code("adduser", params).await?,
            -32602,
            "{attack:?}"
        );
        let params = json!({"user": "newbie", "passwd": "p", "group": attack});
        assert_eq!(
            admin.error_code("adduser", params).await?,
            -32602,
            "{attack:?}"
        );
        assert_eq!(
            admin.error_code("rmuser", json!({"user": attack})).await?,
            -32602,
            "{attack:?}"
        );
        let params = json!({"user": attack, "new": "p", "confirm": "p"});
        assert_eq!(
            admin.error_code("passwd", params).await?,
            -32602,
            "{attack:?}"
        );
    }
    assert_eq!(rpc.call("list", json!({})).await?, json!(["notes"]));
    let page = rpc
        .call("view", json!({"table": "notes", "limit": 1000}))
        .await?;
    assert_eq!(page["total"], attacks.len(), "{page}");
    assert_eq!(
        rpc.error_code("exec", json!({"query": "DROP TABLE notes"}))
            .await?,
        2002
    );
    Ok(())
}

async fn sqlrpc_lists_views_and_pages_through_a_table(mode: Mode) -> anyhow::Result<()> {
    plugin_path("sqlrpc")?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data.db");
    let exec_config = format!("{}?exec=1", path_str(&data)?);
    let (_docroot, _backend, gateway) =
        start(mode, "sql", &["-L", "sqlrpc.so", "-C", &exec_config]).await?;
    let mut sql = Rpc::connect(&gateway, "/sql").await?;
    sql.call(
        "exec",
        json!({"query": "CREATE TABLE n (v INTEGER, label TEXT)"}),
    )
    .await?;
    sql.call(
        "exec",
        json!({"query": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 250) INSERT INTO n SELECT x, 'n' || x FROM c"}),
    )
    .await?;
    assert_eq!(sql.call("list", json!(null)).await?, json!(["n"]));
    let page = sql.call("view", json!({"table": "n"})).await?;
    assert_eq!(page["columns"], json!(["rowid", "v", "label"]));
    assert_eq!(page["rows"].as_array().map(Vec::len), Some(100));
    assert_eq!(page["total"], 250);
    let page = sql
        .call("view", json!({"table": "n", "offset": 240, "limit": 20}))
        .await?;
    assert_eq!(page["rows"].as_array().map(Vec::len), Some(10));
    assert_eq!(page["rows"][0], json!([241, 241, "n241"]));
    let row = sql.call("get", json!({"table": "n", "rowid": 7})).await?;
    assert_eq!(row["row"], json!([7, 7, "n7"]));
    assert_eq!(
        sql.error_code("get", json!({"table": "n", "rowid": 999}))
            .await?,
        2004
    );
    let result = sql
        .call(
            "exec",
            json!({"query": "SELECT count(*) AS c FROM n WHERE v > 200"}),
        )
        .await?;
    assert_eq!(result, json!({"columns": ["c"], "rows": [[50]]}));
    assert_eq!(
        sql.error_code("exec", json!({"query": "SELECT * FROM missing"}))
            .await?,
        2001
    );
    drop(sql);
    drop(gateway);
    // Served read-only, the same database refuses writes.
    let (_docroot, _backend, gateway) =
        start(mode, "sql", &["-L", "sqlrpc.so", "-C", path_str(&data)?]).await?;
    let mut sql = Rpc::connect(&gateway, "/sql").await?;
    assert_eq!(
        sql.error_code("insert", json!({"table": "n", "values": {"v": 1}}))
            .await?,
        2002
    );
    assert_eq!(
        sql.error_code("exec", json!({"query": "DELETE FROM n"}))
            .await?,
        2002
    );
    assert_eq!(
        sql.call("view", json!({"table": "n", "limit": 1})).await?["total"],
        250
    );
    Ok(())
}

/// Compiles `rpc-plugins/examples/hello.c` with `defines` into `dir/libhello.so`.
fn build_hello(dir: &Path, defines: &[&str]) -> anyhow::Result<PathBuf> {
    let root = repo_root();
    let output = dir.join("libhello.so");
    let status = Command::new("gcc")
        .args(["-shared", "-fPIC", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(root.join("rpc-plugins/include"))
        .args(defines)
        .arg("-o")
        .arg(&output)
        .arg(root.join("rpc-plugins/examples/hello.c"))
        .status()
        .context("running gcc")?;
    ensure!(status.success(), "gcc failed on hello.c: {status}");
    Ok(output)
}

async fn a_plugin_written_in_c_answers_through_the_header(mode: Mode) -> anyhow::Result<()> {
    let build_dir = tempfile::tempdir()?;
    let hello = build_hello(build_dir.path(), &[])?;
    let (_docroot, mut backend, gateway) = start(
        mode,
        "hello",
        &["-L", path_str(&hello)?, "-C", "from \"C\" test"],
    )
    .await?;
    let mut first = Rpc::connect(&gateway, "/hello").await?;
    let mut second = Rpc::connect(&gateway, "/hello").await?;
    let greeting = first.call("hello", json!({})).await?;
    assert_eq!(
        greeting,
        json!({"greeting": "hello from C", "calls": 1, "config": "from \"C\" test"})
    );
    assert_eq!(first.call("hello", json!([])).await?["calls"], 2);
    assert_eq!(second.call("hello", json!(null)).await?["calls"], 1);
    let response = first.response("fail", json!(null)).await?;
    assert_eq!(
        response["error"],
        json!({"code": 9001, "message": "failure from C"})
    );
    let client = first.call("client", json!(null)).await?;
    assert_eq!(client["path"], "/hello", "{client}");
    ensure!(
        client["peer"]
            .as_str()
            .is_some_and(|peer| peer.starts_with("127.0.0.1:")),
        "session_open got no client address: {client}"
    );
    assert_eq!(first.error_code("malformed", json!(null)).await?, -32603);
    assert_eq!(first.error_code("broken", json!(null)).await?, -32603);
    assert_eq!(first.call("hello", json!({})).await?["calls"], 3);
    backend.check_running()?;
    Ok(())
}

#[tokio::test]
async fn startup_failures_name_the_file_and_the_cause() -> anyhow::Result<()> {
    let build_dir = tempfile::tempdir()?;
    let stderr = startup_failure(&["-L", "no_such_plugin.so"]).await?;
    assert!(
        stderr.contains("no_such_plugin.so") && stderr.contains("not found"),
        "{stderr}"
    );

    let no_entry_dir = build_dir.path().join("no_entry");
    std::fs::create_dir(&no_entry_dir)?;
    let no_entry = build_hello(&no_entry_dir, &["-DHELLO_NO_ENTRY"])?;
    let stderr = startup_failure(&["-L", path_str(&no_entry)?]).await?;
    assert!(
        stderr.contains(path_str(&no_entry)?) && stderr.contains("wsgate_rpc_plugin"),
        "{stderr}"
    );

    let old_dir = build_dir.path().join("old_abi");
    std::fs::create_dir(&old_dir)?;
    let old_abi = build_hello(&old_dir, &["-DHELLO_ABI_VERSION=99"])?;
    let stderr = startup_failure(&["-L", path_str(&old_abi)?]).await?;
    assert!(
        stderr.contains(path_str(&old_abi)?) && stderr.contains("version 99"),
        "{stderr}"
    );

    let not_a_library = build_dir.path().join("libtext.so");
    std::fs::write(&not_a_library, "not a shared object")?;
    let stderr = startup_failure(&["-L", path_str(&not_a_library)?]).await?;
    assert!(stderr.contains(path_str(&not_a_library)?), "{stderr}");

    let testrpc = plugin_path("testrpc")?;
    let testrpc = path_str(&testrpc)?;
    let stderr = startup_failure(&["-L", testrpc, "-L", "testrpc.so"]).await?;
    assert!(stderr.contains("declared by both"), "{stderr}");
    let stderr = startup_failure(&["-L", testrpc, "-C", "refuse"]).await?;
    assert!(stderr.contains("refuse to start"), "{stderr}");
    let stderr = startup_failure(&["-C", "stray", "-L", testrpc]).await?;
    assert!(stderr.contains("before any -L"), "{stderr}");
    let stderr = startup_failure(&["-L", "authrpc.so"]).await?;
    assert!(
        stderr.contains("authrpc") && stderr.contains("-C"),
        "{stderr}"
    );
    Ok(())
}
