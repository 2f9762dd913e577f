//! The pages of www/ in a real browser (headless chromium over WebDriver),
//! through the real gateway and backends: what a user sees is what is checked,
//! over http and over https (the page then derives `wss://` from its location).
//!
//! This test binary has its own harness (libtest-mimic) so that, when chromium
//! is not installed, each test is reported as ignored with the reason, never
//! as passed; `WSGATE_REQUIRE_BROWSER=1` (set by `.ci/run`) runs them anyway,
//! so that they fail.

use std::path::Path;
use std::process::ExitCode;

use harness::trials::{NamedTest, run_trials};
use libtest_mimic::Arguments;

use harness::binaries::repo_root;
use harness::browser::Browser;
use harness::{Backend, Gateway, Mode};

/// A gateway serving www/ on `docroot`.
async fn gateway_with_pages(docroot: &Path) -> anyhow::Result<Gateway> {
    let htdocs = repo_root().join("www");
    let htdocs = htdocs.to_str().expect("the repository path is UTF-8");
    Gateway::start(docroot, &["--htdocs", htdocs]).await
}

async fn echo_page_echoes_and_shows_the_close_code() -> anyhow::Result<()> {
    let browser = Browser::start().await?;
    let docroot = tempfile::tempdir()?;
    let _echo = Backend::start("websocket_echo", docroot.path(), "echo", &[]).await?;
    let gateway = gateway_with_pages(docroot.path()).await?;
    let page = browser.page().await?;
    page.open(&gateway.http_url("/echo.html")).await?;
    page.wait_for_text("#status", "open").await?;
    page.fill("#message", "hello from chromium").await?;
    page.click("#send").await?;
    page.wait_for_text("#log", "echo: hello from chromium")
        .await?;
    page.click("#disconnect").await?;
    page.wait_for_text("#status", "closed 1000").await?;
    page.wait_for_text("#log", "closed with code 1000").await?;
    page.close().await
}

async fn echo_page_over_https_uses_wss() -> anyhow::Result<()> {
    let browser = Browser::start().await?;
    let docroot = tempfile::tempdir()?;
    let _echo = Backend::start("websocket_echo", docroot.path(), "echo", &[]).await?;
    let htdocs = repo_root().join("www");
    let htdocs = htdocs.to_str().expect("the repository path is UTF-8");
    let gateway =
        Gateway::start(docroot.path(), &Mode::Tls.with_args(&["--htdocs", htdocs])).await?;
    let tls_addr = gateway
        .tls_addr()
        .ok_or_else(|| anyhow::anyhow!("the gateway has a TLS listener"))?;
    let page = browser.page().await?;
    page.open(&format!("https://{tls_addr}/echo.html")).await?;
    page.wait_for_text("#status", "open").await?;
    page.fill("#message", "hello over wss").await?;
    page.click("#send").await?;
    // The TLS port speaks nothing but TLS, so the echo came over wss://.
    page.wait_for_text("#log", "echo: hello over wss").await?;
    page.close().await
}

async fn two_webchat_pages_talk_in_public_and_in_private() -> anyhow::Result<()> {
    let browser = Browser::start().await?;
    let docroot = tempfile::tempdir()?;
    let _chat = Backend::start("websocket_chat", docroot.path(), "chat", &["-w"]).await?;
    let gateway = gateway_with_pages(docroot.path()).await?;
    let alice = browser.page().await?;
    let bob = browser.page().await?;
    for (page, name) in [(&alice, "alice"), (&bob, "bob")] {
        page.open(&gateway.http_url("/webchat.html")).await?;
        page.wait_for_text("#status", "connected").await?;
        page.fill("#name", name).await?;
        page.click("#hello").await?;
        page.wait_for_text("#me", name).await?;
    }
    // Presence: each sees the other (alice from bob's WSUsers, bob from WSJoin).
    alice.wait_for_text("#users", "bob").await?;
    bob.wait_for_text("#users", "alice").await?;
    alice.wait_for_text("#log", "bob joined").await?;

    // Public.
    alice.fill("#message", "hello everyone").await?;
    alice.click("#send").await?;
    bob.wait_for_text("#log", "alice: hello everyone").await?;

    // Private, to the name picked in the list.
    bob.click("#users li[data-name=\"alice\"]").await?;
    bob.fill("#message", "just for you").await?;
    bob.click("#send").await?;
    alice
        .wait_for_text("#log", "bob (private): just for you")
        .await?;
    bob.wait_for_text("#log", "to alice (private): just for you")
        .await?;

    // Whois shows the address the gateway saw.
    bob.click("#whois").await?;
    bob.wait_for_text("#log", "alice is at 127.0.0.1").await?;

    // Alice leaves: bob sees it and the list empties.
    alice.close().await?;
    bob.wait_for_text("#log", "alice left").await?;
    assert!(!bob.text("#users").await?.contains("alice"));
    bob.close().await
}

async fn two_broker_pages_reach_each_other_by_token_and_by_channel() -> anyhow::Result<()> {
    let browser = Browser::start().await?;
    let docroot = tempfile::tempdir()?;
    let _tokens = Backend::start(
        "websocket_broker",
        docroot.path(),
        "tokens",
        &["--dialect", "tokens"],
    )
    .await?;
    let _channels = Backend::start(
        "websocket_broker",
        docroot.path(),
        "channels",
        &["--dialect", "channels"],
    )
    .await?;
    let gateway = gateway_with_pages(docroot.path()).await?;
    let alice = browser.page().await?;
    let bob = browser.page().await?;
    for (page, token) in [(&alice, "group/alice"), (&bob, "bob")] {
        page.open(&gateway.http_url("/broker.html")).await?;
        page.wait_for_text("#channels-status", "open").await?;
        page.fill("#token", token).await?;
        page.click("#tokens-connect").await?;
        page.wait_for_text("#tokens-status", "open").await?;
        // A message to itself proves the broker holds its token.
        page.fill("#receivers", token).await?;
        page.fill("#tokens-message", &format!("{token} is here"))
            .await?;
        page.click("#tokens-send").await?;
        page.wait_for_text("#tokens-log", &format!("received: {token} is here"))
            .await?;
    }
    // A receiver ending in "/" reaches every token under it.
    bob.fill("#receivers", "group/").await?;
    bob.fill("#tokens-message", "hi group").await?;
    bob.click("#tokens-send").await?;
    alice
        .wait_for_text("#tokens-log", "received: hi group")
        .await?;

    // Channels: each joins the lobby and sees its own broadcast come back.
    for page in [&bob, &alice] {
        page.click("#join").await?;
        page.fill("#content", "ready").await?;
        page.click("#broadcast").await?;
        page.wait_for_text("#channels-log", "received: ready")
            .await?;
    }
    alice.fill("#content", "hello lobby").await?;
    alice.click("#broadcast").await?;
    bob.wait_for_text("#channels-log", "received: hello lobby")
        .await?;
    alice.close().await?;
    bob.close().await
}

async fn webauth_and_websql_pages_log_in_add_a_user_and_list_a_table() -> anyhow::Result<()> {
    const ROOT_PASSWORD: &str = "browser-root-password";
    let browser = Browser::start().await?;
    let docroot = tempfile::tempdir()?;
    let data = tempfile::tempdir()?;
    let users_db = data.path().join("users.db");
    let sql_db = data.path().join("data.db");
    let mut auth_command = std::process::Command::new(harness::bin_path("websocket_jsonrpc")?);
    auth_command
        .args(["-R", docroot.path().to_str().expect("UTF-8 temp path")])
        .args(["-n", "auth", "-L", "authrpc.so", "-C"])
        .arg(&users_db)
        .env("WSGATE_ROOT_PASSWORD", ROOT_PASSWORD);
    let _auth = Backend::start_command(
        "websocket_jsonrpc (auth)",
        auth_command,
        &docroot.path().join("auth"),
    )
    .await?;
    let sql_config = format!("{}?write=1&exec=1", sql_db.display());
    let _sql = Backend::start(
        "websocket_jsonrpc",
        docroot.path(),
        "sql",
        &["-L", "sqlrpc.so", "-C", &sql_config],
    )
    .await?;
    let gateway = gateway_with_pages(docroot.path()).await?;
    let page = browser.page().await?;

    page.open(&gateway.http_url("/webauth.html")).await?;
    page.fill("#login-user", "root").await?;
    page.fill("#login-passwd", ROOT_PASSWORD).await?;
    page.click("#login-button").await?;
    page.wait_for_text("#whoami", "root").await?;
    page.fill("#adduser-user", "carol").await?;
    page.fill("#adduser-passwd", "carol-password").await?;
    page.click("#adduser-button").await?;
    page.wait_for_text("#log", "carol").await?;
    page.click("#logout-button").await?;
    page.wait_for_text("#whoami", "nobody").await?;
    page.fill("#login-user", "carol").await?;
    page.fill("#login-passwd", "carol-password").await?;
    page.click("#login-button").await?;
    page.wait_for_text("#whoami", "carol").await?;

    // websql: create a table with a query, then list and view it.
    page.open(&gateway.http_url("/websql.html")).await?;
    page.wait_for_text("#message", "table").await?;
    page.fill("#query", "CREATE TABLE fruits (name TEXT, colour TEXT)")
        .await?;
    page.click("#exec-button").await?;
    page.fill(
        "#query",
        "INSERT INTO fruits VALUES ('lemon', 'yellow'), ('plum', 'purple')",
    )
    .await?;
    page.click("#exec-button").await?;
    page.click("#list-button").await?;
    page.wait_for_text("#tables", "fruits").await?;
    page.click("#tables button").await?;
    page.wait_for_text("#view", "lemon").await?;
    page.wait_for_text("#view", "purple").await?;
    page.close().await
}

async fn exec_page_counts_and_calculates() -> anyhow::Result<()> {
    let browser = Browser::start().await?;
    let docroot = tempfile::tempdir()?;
    let examples = repo_root().join("docs/examples/exec");
    let path = |file: &str| examples.join(file).to_string_lossy().into_owned();
    // The interpreter itself: programs get no PATH to find a shim's target with.
    let output = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()?;
    let python = String::from_utf8(output.stdout)?.trim().to_owned();
    let counter_args = ["--", &path("counter.sh"), "3", "0"];
    let _counter =
        Backend::start("websocket_exec", docroot.path(), "counter", &counter_args).await?;
    let calc_args = ["--", &python, &path("calc.py")];
    let _calc = Backend::start("websocket_exec", docroot.path(), "calc", &calc_args).await?;
    let gateway = gateway_with_pages(docroot.path()).await?;
    let page = browser.page().await?;
    page.open(&gateway.http_url("/exec.html")).await?;
    page.wait_for_text("#calc-status", "open").await?;
    page.wait_for_text("#calc-log", "calculator ready").await?;
    page.fill("#calc-input", "(1 + 2) * 3").await?;
    page.click("#calc-send").await?;
    page.wait_for_text("#calc-log", "= 9").await?;
    page.click("#counter-start").await?;
    let counted = page
        .wait_for_text("#counter-log", "closed with code 1000")
        .await?;
    anyhow::ensure!(counted.starts_with("1\n2\n3\n"), "counter log: {counted:?}");
    page.close().await
}

/// Chromium offers permessage-deflate on every connection; the gateway
/// agrees relayed and direct, and long messages cross compressed both ways.
async fn echo_page_negotiates_permessage_deflate() -> anyhow::Result<()> {
    let browser = Browser::start().await?;
    let docroot = tempfile::tempdir()?;
    let _echo = Backend::start("websocket_echo", docroot.path(), "echo", &[]).await?;
    let htdocs = repo_root().join("www");
    let htdocs = htdocs.to_str().expect("the repository path is UTF-8");
    let long = "a message long enough to be compressed, ".repeat(4);
    for mode in [Mode::Relay, Mode::Direct] {
        let gateway =
            Gateway::start(docroot.path(), &mode.with_args(&["--htdocs", htdocs])).await?;
        let page = browser.page().await?;
        page.open(&gateway.http_url("/echo.html")).await?;
        page.wait_for_text("#status", "open").await?;
        page.wait_for_text(
            "#log",
            "connected (permessage-deflate; server_no_context_takeover; client_no_context_takeover)",
        )
        .await?;
        page.fill("#message", &long).await?;
        page.click("#send").await?;
        page.wait_for_text("#log", &format!("echo: {}", long.trim_end()))
            .await?;
        page.close().await?;
    }
    Ok(())
}

/// Every browser test, by name.
fn tests() -> Vec<NamedTest> {
    vec![
        ("echo_page_echoes_and_shows_the_close_code", || {
            Box::pin(echo_page_echoes_and_shows_the_close_code())
        }),
        ("echo_page_over_https_uses_wss", || {
            Box::pin(echo_page_over_https_uses_wss())
        }),
        ("echo_page_negotiates_permessage_deflate", || {
            Box::pin(echo_page_negotiates_permessage_deflate())
        }),
        ("two_webchat_pages_talk_in_public_and_in_private", || {
            Box::pin(two_webchat_pages_talk_in_public_and_in_private())
        }),
        ("exec_page_counts_and_calculates", || {
            Box::pin(exec_page_counts_and_calculates())
        }),
        (
            "two_broker_pages_reach_each_other_by_token_and_by_channel",
            || Box::pin(two_broker_pages_reach_each_other_by_token_and_by_channel()),
        ),
        (
            "webauth_and_websql_pages_log_in_add_a_user_and_list_a_table",
            || Box::pin(webauth_and_websql_pages_log_in_add_a_user_and_list_a_table()),
        ),
    ]
}

fn main() -> ExitCode {
    let mut arguments = Arguments::from_args();
    // One browser at a time: each test runs chromedriver and several
    // chromiums, and two such sets at once on 2 cores only race each other.
    arguments.test_threads.get_or_insert(1);
    let missing = Browser::missing().filter(|_| !Browser::required());
    run_trials(
        &arguments,
        tests(),
        missing.map(|why| format!("browser tests: {why}")),
    )
}
