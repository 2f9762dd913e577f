//! Backends the gateway starts and supervises (`[[backend]]` tables): ready
//! before the gateway announces itself, restarted after a crash (their
//! relayed clients get 1011), stopped after the clients on shutdown, their
//! output in the gateway's log under their name, added, changed and removed
//! by a reload, and a clear start-up error for one that never accepts.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail, ensure};
use harness::processes::{self, ProcessInfo};
use harness::{
    CloseCode, EXIT_DEADLINE, Gateway, HandshakeRequest, Message, STARTUP_DEADLINE, wait,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The TOML of one supervised workspace backend, `program -R <docroot> -n <name> extra...`.
fn table(name: &str, program: &str, extra: &[&str]) -> anyhow::Result<String> {
    table_with(name, &harness::bin_path(program)?, extra, "")
}

/// The TOML of one supervised backend running `command`, with `more` keys.
fn table_with(name: &str, command: &Path, extra: &[&str], more: &str) -> anyhow::Result<String> {
    let command = command.to_str().context("UTF-8 binary path")?;
    let mut args = vec!["-R", "{docroot}", "-n", "{name}"];
    args.extend_from_slice(extra);
    Ok(format!(
        "[[backend]]\nname = {name:?}\ncommand = {command:?}\nargs = {args:?}\n{more}\n"
    ))
}

/// Writes `wsgate.toml` with the docroot `<dir>/sockets` and `tables`; returns its path.
fn write_config(dir: &Path, tables: &[String]) -> anyhow::Result<PathBuf> {
    let docroot = dir.join("sockets");
    let mut text = format!(
        "docroot = {:?}\n",
        docroot.to_str().context("UTF-8 temp path")?
    );
    for table in tables {
        text.push_str(table);
    }
    let path = dir.join("wsgate.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// The gateway's child running `program` whose arguments name `name`.
fn backend_process(gateway: &Gateway, program: &str, name: &str) -> Option<ProcessInfo> {
    processes::children(gateway.pid())
        .into_iter()
        .find(|child| child.program() == program && child.args.iter().any(|arg| arg == name))
}

/// Waits until the gateway runs `program` for `name` in a process other than `old`.
async fn wait_for_new_process(
    gateway: &Gateway,
    program: &str,
    name: &str,
    old: Option<u32>,
) -> anyhow::Result<ProcessInfo> {
    let what = format!("a new {program} process for {name}");
    wait::until(&what, STARTUP_DEADLINE, || {
        let found = backend_process(gateway, program, name).filter(|child| Some(child.pid) != old);
        async move { Ok(found) }
    })
    .await
}

/// Waits until a WebSocket to `path` opens.
async fn connect_when_ready(gateway: &Gateway, path: &str) -> anyhow::Result<harness::Client> {
    wait::until(
        &format!("{path} to accept clients"),
        STARTUP_DEADLINE,
        || {
            let connecting = gateway.connect(path);
            async move { Ok(connecting.await.ok()) }
        },
    )
    .await
}

/// The first line of `log` holding every one of `parts`, and its index.
fn find_line(log: &str, parts: &[&str]) -> Option<(usize, String)> {
    log.lines()
        .enumerate()
        .find(|(_, line)| parts.iter().all(|part| line.contains(part)))
        .map(|(index, line)| (index, line.to_owned()))
}

#[tokio::test]
async fn backends_accept_before_the_gateway_announces_itself() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = write_config(
        dir.path(),
        &[
            table("echo", "websocket_echo", &[])?,
            table("chat", "websocket_chat", &["-w"])?,
        ],
    )?;
    let gateway = Gateway::start_with_config(&config, &[]).await?;
    // No waiting: `listening on` comes only once every backend accepts.
    let mut echo = gateway.connect("/echo").await?;
    echo.expect_echo("first").await?;
    let mut chat = gateway.connect("/chat").await?;
    chat.send(Message::text("WSHello ann")).await?;
    assert_eq!(chat.recv().await?, Message::text("WSWelcome ann"));
    let log = gateway.stderr_text();
    ensure!(
        log.contains("backends ready n_backends=2"),
        "no readiness line in:\n{log}"
    );
    Ok(())
}

#[tokio::test]
async fn backend_output_reaches_the_gateway_log_under_its_name() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = write_config(dir.path(), &[table("echo", "websocket_echo", &[])?])?;
    let gateway = Gateway::start_with_config(&config, &[]).await?;
    // websocket_echo logs `serving` on stderr once it listens.
    gateway.wait_for_log("serving", 1).await?;
    let log = gateway.stderr_text();
    let (_, line) = find_line(&log, &["serving", "stream=\"stderr\""])
        .with_context(|| format!("no output line of the backend in:\n{log}"))?;
    ensure!(
        line.contains("backend{name=echo}:run{pid="),
        "the line does not name the backend: {line}"
    );
    Ok(())
}

#[tokio::test]
async fn a_killed_backend_is_restarted_and_its_relayed_client_gets_1011() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = write_config(dir.path(), &[table("echo", "websocket_echo", &[])?])?;
    let gateway = Gateway::start_with_config(&config, &[]).await?;
    let mut client = gateway.connect("/echo").await?;
    client.expect_echo("before").await?;
    let first = backend_process(&gateway, "websocket_echo", "echo").context("the echo process")?;
    ensure!(
        first.pgid == first.pid,
        "a backend runs in a process group of its own: {first:?}"
    );

    kill(Pid::from_raw(i32::try_from(first.pid)?), Signal::SIGKILL)?;

    client
        .expect_close_with(CloseCode::Error, "backend failed")
        .await?;
    gateway
        .wait_for_log("backend exited status=signal: 9 (SIGKILL)", 1)
        .await?;
    let second = wait_for_new_process(&gateway, "websocket_echo", "echo", Some(first.pid)).await?;
    let mut again = connect_when_ready(&gateway, "/echo").await?;
    again.expect_echo("after the restart").await?;
    ensure!(
        backend_process(&gateway, "websocket_echo", "echo").map(|child| child.pid)
            == Some(second.pid),
        "one echo process, the new one"
    );
    Ok(())
}

#[tokio::test]
async fn shutdown_closes_the_clients_before_it_stops_the_backends() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = write_config(dir.path(), &[table("echo", "websocket_echo", &[])?])?;
    let mut gateway = Gateway::start_with_config(&config, &[]).await?;
    let mut client = gateway.connect("/echo").await?;
    client.expect_echo("hello").await?;
    let echo = backend_process(&gateway, "websocket_echo", "echo").context("the echo process")?;

    gateway.sigterm()?;

    client
        .expect_close_with(CloseCode::Away, "gateway shutting down")
        .await?;
    let status = gateway.wait_exit(EXIT_DEADLINE).await?;
    assert_eq!(status.code(), Some(0), "exit status {status}");
    ensure!(
        !Path::new(&format!("/proc/{}", echo.pid)).exists(),
        "the backend was stopped and reaped"
    );
    ensure!(
        !dir.path().join("sockets/echo").exists(),
        "the backend stopped politely and removed its socket"
    );
    // The backend's own lines, in the order it wrote them: its session
    // ended (the gateway's CLOSE) before SIGTERM reached it.
    let log = gateway.stderr_text();
    let (session_ended, _) = find_line(&log, &["backend{name=echo}", "session ended"])
        .with_context(|| format!("no `session ended` from the backend in:\n{log}"))?;
    let (terminated, _) = find_line(&log, &["backend{name=echo}", "shutting down"])
        .with_context(|| format!("no `shutting down` from the backend in:\n{log}"))?;
    ensure!(
        session_ended < terminated,
        "the backend got SIGTERM before its client was closed:\n{log}"
    );
    ensure!(
        log.contains("backend stopped status=exit status: 0"),
        "no stop line in:\n{log}"
    );
    Ok(())
}

#[tokio::test]
async fn reload_adds_changes_and_removes_backends() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let echo = table("echo", "websocket_echo", &[])?;
    let config = write_config(dir.path(), std::slice::from_ref(&echo))?;
    let mut gateway = Gateway::start_with_config(&config, &[]).await?;
    let mut echo_client = gateway.connect("/echo").await?;
    let response = gateway.handshake(&HandshakeRequest::new("/chat")).await?;
    assert_eq!(response.status, 404, "no chat yet: {response}");
    let first_echo = backend_process(&gateway, "websocket_echo", "echo").context("echo")?;

    // Added: chat. Unchanged: echo keeps its process and its client.
    write_config(
        dir.path(),
        &[echo.clone(), table("chat", "websocket_chat", &["-w"])?],
    )?;
    gateway.signal(Signal::SIGHUP)?;
    gateway.wait_for_log("configuration reloaded", 1).await?;
    let mut chat = connect_when_ready(&gateway, "/chat").await?;
    chat.send(Message::text("WSHello bob")).await?;
    assert_eq!(chat.recv().await?, Message::text("WSWelcome bob"));
    echo_client.expect_echo("still the same echo").await?;
    assert_eq!(
        backend_process(&gateway, "websocket_echo", "echo").map(|child| child.pid),
        Some(first_echo.pid),
        "an unchanged table keeps its process"
    );

    // Changed: echo gets another argument and a new process.
    let changed_echo = table("echo", "websocket_echo", &["-m", "50"])?;
    write_config(
        dir.path(),
        &[changed_echo, table("chat", "websocket_chat", &["-w"])?],
    )?;
    gateway.signal(Signal::SIGHUP)?;
    gateway.wait_for_log("configuration reloaded", 2).await?;
    wait_for_new_process(&gateway, "websocket_echo", "echo", Some(first_echo.pid)).await?;
    let mut new_echo = connect_when_ready(&gateway, "/echo").await?;
    new_echo.expect_echo("the new echo").await?;

    // Removed: chat stops and its name leads nowhere.
    write_config(
        dir.path(),
        &[table("echo", "websocket_echo", &["-m", "50"])?],
    )?;
    gateway.signal(Signal::SIGHUP)?;
    gateway.wait_for_log("configuration reloaded", 3).await?;
    wait::until("chat to be gone", STARTUP_DEADLINE, || {
        let gone = backend_process(&gateway, "websocket_chat", "chat").is_none();
        async move { Ok(gone.then_some(())) }
    })
    .await?;
    let response = gateway.handshake(&HandshakeRequest::new("/chat")).await?;
    assert_eq!(response.status, 404, "chat removed: {response}");
    gateway.check_running()?;
    Ok(())
}

#[tokio::test]
async fn a_backend_that_never_accepts_stops_start_up_naming_it() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let sleep = which("sleep")?;
    // A unique duration, to find a leftover process by its arguments.
    let config = write_config(
        dir.path(),
        &[format!(
            "[[backend]]\nname = \"stuck\"\ncommand = {:?}\nargs = [\"4242.5\"]\nready_timeout = 1\n",
            sleep.to_str().context("UTF-8 path")?
        )],
    )?;
    let error = match Gateway::start_with_config(&config, &[]).await {
        Ok(_) => bail!("the gateway started without its backend"),
        Err(error) => format!("{error:#}"),
    };
    ensure!(
        error.contains("backend \"stuck\" did not accept on") && error.contains("within 1s"),
        "the error does not name the backend: {error}"
    );
    ensure!(
        !any_process_with_argument("4242.5"),
        "the stuck backend was left running"
    );

    let config = write_config(
        dir.path(),
        &[format!(
            "[[backend]]\nname = \"quitter\"\ncommand = {:?}\n",
            which("false")?.to_str().context("UTF-8 path")?
        )],
    )?;
    let error = match Gateway::start_with_config(&config, &[]).await {
        Ok(_) => bail!("the gateway started without its backend"),
        Err(error) => format!("{error:#}"),
    };
    ensure!(
        error.contains("backend \"quitter\" exited (exit status: 1) before it accepted"),
        "the error does not say the backend exited: {error}"
    );
    Ok(())
}

#[tokio::test]
async fn a_backend_runs_as_its_user() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let nobody = nix::unistd::User::from_name("nobody")?.context("a user nobody")?;
    let echo = harness::bin_path("websocket_echo")?;
    let config = write_config(
        dir.path(),
        &[table_with("echo", &echo, &[], "user = \"nobody\"")?],
    )?;
    if !nix::unistd::geteuid().is_root() {
        let error = match Gateway::start_with_config(&config, &[]).await {
            Ok(_) => bail!("a gateway that is not root switched users"),
            Err(error) => format!("{error:#}"),
        };
        ensure!(
            error.contains("running it as user \"nobody\" needs the gateway to run as root"),
            "{error}"
        );
        return Ok(());
    }
    // nobody must be able to create its socket.
    let sockets = dir.path().join("sockets");
    std::fs::create_dir(&sockets)?;
    for path in [dir.path(), &sockets] {
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o777))?;
    }
    let gateway = Gateway::start_with_config(&config, &[]).await?;
    let mut client = gateway.connect("/echo").await?;
    client.expect_echo("as nobody").await?;
    let process = backend_process(&gateway, "websocket_echo", "echo").context("echo")?;
    assert_eq!(process.uid()?, nobody.uid.as_raw());
    // Root's supplementary groups are gone, not kept by the new user.
    let groups = process.groups()?;
    ensure!(
        groups.iter().all(|&gid| gid == nobody.gid.as_raw()),
        "the backend kept groups {groups:?}"
    );
    Ok(())
}

/// The absolute path of a system program.
fn which(program: &str) -> anyhow::Result<PathBuf> {
    ["/bin", "/usr/bin"]
        .iter()
        .map(|dir| Path::new(dir).join(program))
        .find(|path| path.is_file())
        .with_context(|| format!("{program} in /bin or /usr/bin"))
}

fn any_process_with_argument(argument: &str) -> bool {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|entry| {
            entry
                .file_name()
                .to_str()
                .is_some_and(|name| name.parse::<u32>().is_ok())
        })
        .any(|entry| {
            std::fs::read(entry.path().join("cmdline")).is_ok_and(|cmdline| {
                cmdline
                    .split(|&byte| byte == 0)
                    .any(|arg| arg == argument.as_bytes())
            })
        })
}
