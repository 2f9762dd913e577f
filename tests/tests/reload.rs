//! Live reload (SIGHUP reads `--config` again) and `--check-config`: a new
//! deny glob refuses new clients while an open one keeps talking, new
//! limits apply to new clients, an invalid file changes nothing and the log
//! says why, settings that need a restart are named and keep their values,
//! and `wsgate --check-config FILE` exits 0 or 2 with the reason.
//! (The certificate reload over TLS is in `tls.rs`.)

use std::path::Path;
use std::process::Output;

use anyhow::{Context, ensure};
use harness::tls::{CertificateFiles, TestCa};
use harness::{Backend, CloseCode, EVENT_DEADLINE, Gateway, HandshakeRequest, Message, wait};
use nix::sys::signal::Signal;

/// The log line of a refused reload.
const NOT_RELOADED: &str = "configuration not reloaded, the running one stays";
/// The log line of a reload.
const RELOADED: &str = "configuration reloaded";

fn path_str(path: &Path) -> anyhow::Result<&str> {
    path.to_str().context("temporary paths are UTF-8")
}

async fn status_of(gateway: &Gateway, path: &str) -> anyhow::Result<u16> {
    Ok(gateway
        .handshake(&HandshakeRequest::new(path))
        .await?
        .status)
}

#[tokio::test]
async fn a_new_deny_glob_refuses_new_clients_and_open_ones_keep_talking() -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let _echo = Backend::start("websocket_echo", docroot.path(), "echo", &[]).await?;
    let _secret = Backend::start("websocket_echo", docroot.path(), "secret", &[]).await?;
    let config = docroot.path().join("wsgate.toml");
    std::fs::write(&config, "deny = []\n")?;
    let mut gateway = Gateway::start(docroot.path(), &["--config", path_str(&config)?]).await?;
    let mut open_client = gateway.connect("/secret").await?;
    open_client.expect_echo("before").await?;

    std::fs::write(&config, "deny = [\"secret*\"]\nmax_message_size = 1024\n")?;
    gateway.signal(Signal::SIGHUP)?;
    gateway.wait_for_log(RELOADED, 1).await?;

    assert_eq!(status_of(&gateway, "/secret").await?, 403, "denied now");
    // The open client keeps its configuration: still talking, old limit.
    open_client.expect_echo("after").await?;
    let big = Message::binary(vec![7u8; 2048]);
    assert_eq!(open_client.round_trip(big.clone()).await?, big);
    // A new client gets the new limit.
    let mut new_client = gateway.connect("/echo").await?;
    new_client.send(big).await?;
    new_client.expect_close_code(CloseCode::Size).await?;

    // And back: the glob goes, /secret opens again.
    std::fs::write(&config, "deny = []\n")?;
    gateway.signal(Signal::SIGHUP)?;
    gateway.wait_for_log(RELOADED, 2).await?;
    let mut again = gateway.connect("/secret").await?;
    again.expect_echo("allowed again").await?;
    gateway.check_running()?;
    Ok(())
}

#[tokio::test]
async fn an_invalid_file_keeps_the_running_configuration_and_the_log_says_why() -> anyhow::Result<()>
{
    let docroot = tempfile::tempdir()?;
    let _echo = Backend::start("websocket_echo", docroot.path(), "echo", &[]).await?;
    let _secret = Backend::start("websocket_echo", docroot.path(), "secret", &[]).await?;
    let config = docroot.path().join("wsgate.toml");
    let running = "deny = [\"secret\"]\n";
    std::fs::write(&config, running)?;
    let mut gateway = Gateway::start(docroot.path(), &["--config", path_str(&config)?]).await?;
    let mut open_client = gateway.connect("/echo").await?;

    // (file, what the refusal line must say)
    let cases = [
        ("deny = [\n", "invalid configuration file"),
        ("deny = [\"a[b\"]\n", "\"a[b\""),
        ("raw = [\"legacy-*\"]\ndirect = [\"*\"]\n", "overlap"),
        ("bogus = 1\n", "bogus"),
        ("htdocs = \"/nonexistent/www\"\n", "htdocs /nonexistent/www"),
        (
            "[[backend]]\nname = \"b\"\ncommand = \"/nonexistent/prog\"\n",
            "backend \"b\": command /nonexistent/prog cannot be used",
        ),
    ];
    for (n_refused, (text, reason)) in cases.into_iter().enumerate() {
        std::fs::write(&config, text)?;
        gateway.signal(Signal::SIGHUP)?;
        gateway.wait_for_log(NOT_RELOADED, n_refused + 1).await?;
        let log = gateway.stderr_text();
        let line = log
            .lines()
            .filter(|line| line.contains(NOT_RELOADED))
            .nth(n_refused)
            .context("the refusal line")?;
        ensure!(
            line.contains(reason),
            "{text:?}: the line {line:?} lacks {reason:?}"
        );
        // The running configuration stays: /secret denied, /echo served.
        assert_eq!(status_of(&gateway, "/secret").await?, 403, "{text:?}");
        let mut client = gateway.connect("/echo").await?;
        client.expect_echo(text).await?;
        open_client.expect_echo(text).await?;
    }
    ensure!(
        !gateway.stderr_text().contains(RELOADED),
        "no invalid file was taken"
    );
    gateway.check_running()?;
    Ok(())
}

#[tokio::test]
async fn settings_that_need_a_restart_are_named_and_keep_their_values() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let first = dir.path().join("first");
    let second = dir.path().join("second");
    let _echo = Backend::start("websocket_echo", &first, "echo", &[]).await?;
    let config = dir.path().join("wsgate.toml");
    std::fs::write(&config, format!("docroot = {:?}\n", path_str(&first)?))?;
    let mut gateway = Gateway::start_with_config(&config, &[]).await?;

    std::fs::write(
        &config,
        format!("docroot = {:?}\ndeny = [\"echo\"]\n", path_str(&second)?),
    )?;
    gateway.signal(Signal::SIGHUP)?;
    gateway.wait_for_log(RELOADED, 1).await?;
    let log = gateway.stderr_text();
    ensure!(
        log.contains("docroot changed, but it needs a restart: the running value stays"),
        "no restart notice in:\n{log}"
    );
    // The rest of the file applied; the docroot did not move.
    assert_eq!(status_of(&gateway, "/echo").await?, 403);
    std::fs::write(&config, format!("docroot = {:?}\n", path_str(&second)?))?;
    gateway.signal(Signal::SIGHUP)?;
    gateway.wait_for_log(RELOADED, 2).await?;
    let mut client = gateway.connect("/echo").await?;
    client.expect_echo("still the first docroot").await?;
    gateway.check_running()?;
    Ok(())
}

/// Runs `wsgate --check-config <file>` and returns its output.
async fn check_config(file: &Path) -> anyhow::Result<Output> {
    let mut command = tokio::process::Command::new(harness::bin_path("wsgate")?);
    command.arg("--check-config").arg(file).kill_on_drop(true);
    wait::within("wsgate --check-config", EVENT_DEADLINE, command.output())
        .await?
        .context("running wsgate --check-config")
}

#[tokio::test]
async fn check_config_exits_0_for_a_good_file_and_2_with_the_reason_for_a_bad_one()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = TestCa::new("check-config CA")?;
    let files = CertificateFiles::new(&ca.server_pair()?)?;
    let echo = harness::bin_path("websocket_echo")?;
    let good = format!(
        "docroot = \"sockets\"\n\
         tls_listen = [\"127.0.0.1:0\"]\n\
         tls_cert = {:?}\n\
         tls_key = {:?}\n\
         [[backend]]\n\
         name = \"echo\"\n\
         command = {:?}\n\
         args = [\"-R\", \"{{docroot}}\", \"-n\", \"{{name}}\"]\n",
        path_str(&files.cert_path())?,
        path_str(&files.key_path())?,
        path_str(&echo)?,
    );
    let file = dir.path().join("wsgate.toml");
    std::fs::write(&file, &good)?;
    let output = check_config(&file).await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        stdout.trim(),
        format!("wsgate: configuration {} is ok", file.display())
    );
    ensure!(
        !dir.path().join("sockets").exists(),
        "checking starts nothing"
    );

    let missing_key = good.replace(path_str(&files.key_path())?, "/nonexistent/key.pem");
    let no_command = good.replace(path_str(&echo)?, "no-such-backend-program");
    // (file, what stderr must say)
    let cases = [
        ("listen = [\n".to_owned(), "invalid configuration file"),
        ("deny = [\"a[b\"]\n".to_owned(), "\"a[b\""),
        ("raw = [\"x*\"]\ndirect = [\"*\"]\n".to_owned(), "overlap"),
        (missing_key, "cannot read private key /nonexistent/key.pem"),
        (
            no_command,
            "command no-such-backend-program is not found in PATH",
        ),
        (
            "[[backend]]\nname = \"a\"\ncommand = \"sh\"\nuser = \"no-such-user-here\"\n"
                .to_owned(),
            "backend \"a\": no user \"no-such-user-here\"",
        ),
        (
            "[[backend]]\nname = \"../up\"\ncommand = \"sh\"\n".to_owned(),
            "backend name \"../up\" is not a valid socket name",
        ),
    ];
    for (text, reason) in cases {
        std::fs::write(&file, &text)?;
        let output = check_config(&file).await?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{text:?}: {stderr}");
        ensure!(
            stderr.contains(&format!("configuration {} is invalid", file.display()))
                && stderr.contains(reason),
            "{text:?}: stderr {stderr:?} lacks {reason:?}"
        );
        ensure!(output.stdout.is_empty(), "{text:?}: nothing on stdout");
    }
    Ok(())
}
