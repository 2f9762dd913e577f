//! `websocket_exec` through the gateway, in relay, direct and TLS mode: lines
//! both ways, `--binary`, the refusals, the CGI environment and nothing else,
//! stderr in the log, the exit codes (1000, 1011), the end of a program whose
//! client left (EOF, SIGTERM, SIGKILL), no zombie ever, `-m` with 1013,
//! backpressure from a client that does not read, and shutdown with 1001.
//!
//! The programs are small `sh` and Python scripts. Children of the backend
//! are found by scanning /proc; nothing here waits for a fixed time.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail, ensure};
use harness::processes::{self, ProcessInfo};
use harness::{
    Backend, CloseCode, EVENT_DEADLINE, EXIT_DEADLINE, Gateway, Message, Mode, Record, all_modes,
    bin_path, wait, wire,
};
use tempfile::TempDir;
use tokio::net::UnixStream;

all_modes!(
    each_message_is_a_line_and_each_line_a_message,
    program_exiting_0_closes_with_1000_after_its_output,
    program_failing_or_killed_closes_with_1011_and_the_reason,
    newline_in_a_message_is_refused_with_1008,
    binary_message_in_text_mode_is_refused_with_1003,
    binary_mode_passes_bytes_both_ways_unsplit,
    bad_output_closes_with_1011,
    environment_is_cgi_like_and_holds_nothing_else,
    stderr_goes_to_the_log_with_the_client_id,
    client_leaving_gives_eof_then_sigterm_then_sigkill_and_leaves_no_zombie,
    client_leaving_while_its_program_does_not_read_ends_the_program,
    program_not_reading_its_input_closes_with_1011_after_the_stdin_timeout,
    programs_beyond_m_are_refused_with_1013_until_one_ends,
    program_writing_faster_than_its_client_reads_blocks_on_its_pipe,
    sigterm_closes_clients_with_1001_and_ends_every_program,
    example_counter_counts_and_closes_with_1000,
    example_calculator_answers_each_line,
);

/// A docroot with `websocket_exec <backend_args>` on `exec` and a gateway on it.
async fn start_exec(
    mode: Mode,
    backend_args: &[&str],
) -> anyhow::Result<(TempDir, Backend, Gateway)> {
    let docroot = tempfile::tempdir()?;
    let backend = Backend::start("websocket_exec", docroot.path(), "exec", backend_args).await?;
    let gateway = Gateway::start(docroot.path(), mode.gateway_args()).await?;
    Ok((docroot, backend, gateway))
}

/// The real Python interpreter (not a shim that needs its own environment,
/// since programs get none): what `python3` on the test's PATH reports.
fn python3() -> anyhow::Result<String> {
    let output = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .context("running python3")?;
    ensure!(output.status.success(), "python3 failed: {}", output.status);
    Ok(String::from_utf8(output.stdout)?.trim().to_owned())
}

/// How many children of `parent_pid` are zombies (exited, not reaped).
fn n_zombies(parent_pid: u32) -> anyhow::Result<usize> {
    Ok(processes::try_children(parent_pid)?
        .iter()
        .filter(|child| child.is_zombie())
        .count())
}

/// Waits until `backend` has exactly `n` children, none of them a zombie, and returns them.
async fn wait_for_programs(backend: &Backend, n: usize) -> anyhow::Result<Vec<ProcessInfo>> {
    let pid = backend.pid();
    wait::until(
        &format!("{n} live programs of the backend"),
        EVENT_DEADLINE,
        || async move {
            let children = processes::try_children(pid)?;
            let all_alive = children.iter().all(|child| !child.is_zombie());
            Ok((children.len() == n && all_alive).then_some(children))
        },
    )
    .await
}

/// Waits until `path` exists (a program wrote its marker there).
async fn wait_for_file(path: &Path) -> anyhow::Result<String> {
    let what = format!("{} to be written", path.display());
    wait::until(&what, EVENT_DEADLINE, || async move {
        Ok(std::fs::read_to_string(path)
            .ok()
            .filter(|text| text.ends_with('\n')))
    })
    .await
}

/// Waits until the backend's log holds `needle`.
async fn wait_for_log(backend: &Backend, needle: &str) -> anyhow::Result<String> {
    let what = format!("{needle:?} in the backend's log");
    wait::until(&what, EVENT_DEADLINE, || async move {
        let log = backend.stderr_text();
        Ok(log.contains(needle).then_some(log))
    })
    .await
}

async fn each_message_is_a_line_and_each_line_a_message(mode: Mode) -> anyhow::Result<()> {
    let script = r#"while IFS= read -r line; do printf 'got %s\r\n' "$line"; done"#;
    let (_docroot, backend, gateway) = start_exec(mode, &["--", "sh", "-c", script]).await?;
    let mut client = gateway.connect("/exec").await?;
    for text in ["hello", "", "  spaced  out  ", "ünïcödé ✓", "tab\there"] {
        client.send(Message::text(text)).await?;
        assert_eq!(client.recv_text().await?, format!("got {text}"));
    }
    // A burst arrives whole and in order.
    for idx in 0..200 {
        client.send(Message::text(format!("line {idx}"))).await?;
    }
    for idx in 0..200 {
        assert_eq!(client.recv_text().await?, format!("got line {idx}"));
    }
    client.close(CloseCode::Normal, "").await?;
    wait_for_programs(&backend, 0).await?;
    Ok(())
}

async fn program_exiting_0_closes_with_1000_after_its_output(mode: Mode) -> anyhow::Result<()> {
    let (_docroot, backend, gateway) = start_exec(
        mode,
        &["--", "sh", "-c", "echo one; echo two; printf three"],
    )
    .await?;
    let mut client = gateway.connect("/exec").await?;
    assert_eq!(client.recv_text().await?, "one");
    assert_eq!(client.recv_text().await?, "two");
    assert_eq!(
        client.recv_text().await?,
        "three",
        "the last line needs no newline"
    );
    client.expect_close_code(CloseCode::Normal).await?;
    wait_for_programs(&backend, 0).await?;
    Ok(())
}

async fn program_failing_or_killed_closes_with_1011_and_the_reason(
    mode: Mode,
) -> anyhow::Result<()> {
    let (_docroot, backend, gateway) = start_exec(
        mode,
        &["--", "sh", "-c", r#"echo "$QUERY_STRING"; read -r how; case $how in exit) exit 3;; *) kill -9 $$;; esac"#],
    )
    .await?;
    let mut client = gateway.connect("/exec?failing").await?;
    assert_eq!(client.recv_text().await?, "failing");
    client.send(Message::text("exit")).await?;
    client
        .expect_close_with(CloseCode::Error, "program exited with status 3")
        .await?;
    wait_for_log(&backend, "program exited with status 3; closing with 1011").await?;

    let mut client = gateway.connect("/exec?killed").await?;
    assert_eq!(client.recv_text().await?, "killed");
    client.send(Message::text("kill")).await?;
    client
        .expect_close_with(CloseCode::Error, "program killed by SIGKILL")
        .await?;
    wait_for_log(&backend, "program killed by SIGKILL; closing with 1011").await?;
    wait_for_programs(&backend, 0).await?;
    Ok(())
}

async fn newline_in_a_message_is_refused_with_1008(mode: Mode) -> anyhow::Result<()> {
    let (_docroot, backend, gateway) = start_exec(mode, &["--", "cat"]).await?;
    let mut client = gateway.connect("/exec").await?;
    assert_eq!(
        client.round_trip(Message::text("fine")).await?,
        Message::text("fine")
    );
    client.send(Message::text("two\nlines")).await?;
    client
        .expect_close_with(
            CloseCode::Policy,
            "a message may not contain a newline (each message is one line)",
        )
        .await?;
    wait_for_programs(&backend, 0).await?;
    Ok(())
}

async fn binary_message_in_text_mode_is_refused_with_1003(mode: Mode) -> anyhow::Result<()> {
    let (_docroot, backend, gateway) = start_exec(mode, &["--", "cat"]).await?;
    let mut client = gateway.connect("/exec").await?;
    client.send(Message::binary(vec![1, 2, 3])).await?;
    client
        .expect_close_with(
            CloseCode::Unsupported,
            "binary messages are not accepted (the program reads lines of text)",
        )
        .await?;
    wait_for_programs(&backend, 0).await?;
    Ok(())
}

async fn binary_mode_passes_bytes_both_ways_unsplit(mode: Mode) -> anyhow::Result<()> {
    let (_docroot, backend, gateway) = start_exec(mode, &["--binary", "--", "cat"]).await?;
    let mut client = gateway.connect("/exec").await?;
    let sent: Vec<u8> = (0..=255u8).chain(b"\n\r\n\0".iter().copied()).collect();
    client.send(Message::binary(sent.clone())).await?;
    client.send(Message::text("text\nwith newline")).await?;
    let mut expected = sent;
    expected.extend_from_slice(b"text\nwith newline");
    let mut received = Vec::new();
    while received.len() < expected.len() {
        match client.recv().await? {
            Message::Binary(data) => received.extend_from_slice(&data),
            other => bail!("expected binary, got {}", harness::client::describe(&other)),
        }
    }
    assert_eq!(received, expected);
    client.close(CloseCode::Normal, "").await?;
    wait_for_programs(&backend, 0).await?;
    Ok(())
}

async fn bad_output_closes_with_1011(mode: Mode) -> anyhow::Result<()> {
    let script = r#"read -r what; case $what in long) echo 12345678901234567;; *) printf 'ok\n\377\n';; esac; cat"#;
    let (_docroot, backend, gateway) =
        start_exec(mode, &["--max-line", "16", "--", "sh", "-c", script]).await?;
    let mut client = gateway.connect("/exec").await?;
    client.send(Message::text("long")).await?;
    client
        .expect_close_with(CloseCode::Error, "the program wrote a line over 16 bytes")
        .await?;
    let mut client = gateway.connect("/exec").await?;
    client.send(Message::text("utf8")).await?;
    assert_eq!(client.recv_text().await?, "ok");
    client
        .expect_close_with(
            CloseCode::Error,
            "the program wrote a line that is not UTF-8",
        )
        .await?;
    wait_for_programs(&backend, 0).await?;
    Ok(())
}

async fn environment_is_cgi_like_and_holds_nothing_else(mode: Mode) -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let mut command = Command::new(bin_path("websocket_exec")?);
    command
        .arg("-R")
        .arg(docroot.path())
        .args([
            "-n",
            "exec",
            "--passenv",
            "EXEC_TEST_PASSED,EXEC_TEST_UNSET",
            "--",
            "env",
        ])
        .env("EXEC_TEST_PASSED", "passed value")
        .env("EXEC_TEST_SECRET", "must not leak")
        .env_remove("EXEC_TEST_UNSET");
    let _backend = Backend::start_command(
        "websocket_exec (env)",
        command,
        &docroot.path().join("exec"),
    )
    .await?;
    let gateway = Gateway::start(docroot.path(), mode.gateway_args()).await?;
    let mut client = gateway
        .connect_with_headers(
            "/exec?a=1&b=%20",
            &[("User-Agent", "exec-test/1"), ("Cookie", "k=v")],
        )
        .await?;
    let local = client.tcp().local_addr()?;
    let mut environment = BTreeMap::new();
    loop {
        match client.recv().await? {
            Message::Text(line) => {
                let (name, value) = line.split_once('=').context("NAME=value")?;
                environment.insert(name.to_owned(), value.to_owned());
            }
            Message::Close(frame) => {
                ensure!(
                    frame.is_some_and(|frame| frame.code == CloseCode::Normal),
                    "env exits 0"
                );
                break;
            }
            other => bail!("unexpected {}", harness::client::describe(&other)),
        }
    }
    let server_addr = if mode == Mode::Tls {
        gateway.tls_addr().context("TLS address")?
    } else {
        gateway.addr()
    };
    let host = if mode == Mode::Tls {
        format!("{}:{}", harness::tls::SERVER_NAME, server_addr.port())
    } else {
        server_addr.to_string()
    };
    let (server_name, server_port) = host.rsplit_once(':').context("host:port")?;
    let mut expected: BTreeMap<String, String> = [
        ("GATEWAY_INTERFACE", "websocketd-CGI/0.1"),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("REQUEST_METHOD", "GET"),
        ("REMOTE_ADDR", "127.0.0.1"),
        ("REMOTE_HOST", "127.0.0.1"),
        ("SERVER_NAME", server_name),
        ("SERVER_PORT", server_port),
        ("SCRIPT_NAME", "/exec"),
        ("PATH_INFO", ""),
        ("QUERY_STRING", "a=1&b=%20"),
        ("REQUEST_URI", "/exec?a=1&b=%20"),
        ("WSGATE_NAME", "exec"),
        ("HTTP_HOST", &host),
        ("HTTP_USER_AGENT", "exec-test/1"),
        ("HTTP_COOKIE", "k=v"),
        ("EXEC_TEST_PASSED", "passed value"),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value.to_owned()))
    .collect();
    expected.insert("REMOTE_PORT".to_owned(), local.port().to_string());
    if mode == Mode::Tls {
        expected.insert("HTTPS".to_owned(), "on".to_owned());
        expected.insert(
            "SSL_TLS_SNI".to_owned(),
            harness::tls::SERVER_NAME.to_owned(),
        );
    }
    // Values that vary from run to run: checked for presence and shape.
    let unique_id = environment.remove("UNIQUE_ID").context("UNIQUE_ID")?;
    ensure!(unique_id.parse::<u64>().is_ok(), "UNIQUE_ID {unique_id:?}");
    let software = environment
        .remove("SERVER_SOFTWARE")
        .context("SERVER_SOFTWARE")?;
    ensure!(software.starts_with("wsgate-websocket_exec/"), "{software}");
    assert_eq!(environment, expected);
    Ok(())
}

async fn stderr_goes_to_the_log_with_the_client_id(mode: Mode) -> anyhow::Result<()> {
    let script = r#"echo "warning for $UNIQUE_ID" >&2; echo "$UNIQUE_ID""#;
    let (_docroot, backend, gateway) = start_exec(mode, &["--", "sh", "-c", script]).await?;
    let mut client = gateway.connect("/exec").await?;
    let client_id = client.recv_text().await?;
    client.expect_close_code(CloseCode::Normal).await?;
    wait_for_log(
        &backend,
        &format!("client {client_id} stderr: warning for {client_id}"),
    )
    .await?;
    Ok(())
}

async fn client_leaving_gives_eof_then_sigterm_then_sigkill_and_leaves_no_zombie(
    mode: Mode,
) -> anyhow::Result<()> {
    let markers = tempfile::tempdir()?;
    let marker = |name: &str| markers.path().join(name).to_string_lossy().into_owned();
    // One program per query: `eof` exits on EOF, `term` on SIGTERM (and
    // ignores EOF), `kill` ignores both and needs SIGKILL.
    let script = r#"
import os, signal, sys
how, marker = os.environ["QUERY_STRING"], sys.argv[1]
def record(what):
    with open(marker + "." + how, "a") as out:
        out.write(what + "\n")
def on_term(number, frame):
    record("sigterm")
    if how == "term":
        sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
print("ready", flush=True)
for line in sys.stdin:
    pass
record("eof")
if how == "eof":
    sys.exit(0)
while True:
    signal.pause()
"#;
    let marker_prefix = marker("program");
    let (_docroot, backend, gateway) = start_exec(
        mode,
        &[
            "--grace",
            "0.3",
            "--",
            &python3()?,
            "-c",
            script,
            &marker_prefix,
        ],
    )
    .await?;
    for how in ["eof", "term", "kill"] {
        let mut client = gateway.connect(&format!("/exec?{how}")).await?;
        assert_eq!(client.recv_text().await?, "ready");
        wait_for_programs(&backend, 1).await?;
        if how == "kill" {
            // Vanish without a close handshake: the same as leaving.
            drop(client);
        } else {
            client.close(CloseCode::Normal, "bye").await?;
        }
        wait_for_programs(&backend, 0).await?;
        assert_eq!(n_zombies(backend.pid())?, 0);
        let record = std::fs::read_to_string(format!("{marker_prefix}.{how}")).unwrap_or_default();
        let expected = match how {
            "eof" => "eof\n",
            _ => "eof\nsigterm\n",
        };
        assert_eq!(record, expected, "what the {how} program saw");
    }
    wait_for_log(&backend, "program ignored SIGTERM; sending SIGKILL").await?;
    wait_for_log(&backend, "program killed by SIGKILL").await?;
    wait_for_file(Path::new(&format!("{marker_prefix}.kill"))).await?;
    Ok(())
}

/// A program that reads nothing, started with `extra` flags: `ready`, then sleep.
async fn start_deaf_program(
    mode: Mode,
    extra: &[&str],
) -> anyhow::Result<(TempDir, Backend, Gateway)> {
    let mut args = vec!["--grace", "0.2"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "sh", "-c", "echo ready; exec sleep 600"]);
    start_exec(mode, &args).await
}

async fn client_leaving_while_its_program_does_not_read_ends_the_program(
    mode: Mode,
) -> anyhow::Result<()> {
    // The stdin timeout is far away: only the client's leaving can end it.
    let (_docroot, backend, gateway) =
        start_deaf_program(mode, &["--stdin-timeout", "3600"]).await?;
    let mut client = gateway.connect("/exec").await?;
    assert_eq!(client.recv_text().await?, "ready");
    wait_for_programs(&backend, 1).await?;
    // More than a pipe holds: the backend waits for room in stdin, and the
    // close comes behind the message.
    client.send(Message::text("x".repeat(100 * 1024))).await?;
    client.close(CloseCode::Normal, "bye").await?;
    wait_for_programs(&backend, 0).await?;
    assert_eq!(n_zombies(backend.pid())?, 0);
    Ok(())
}

async fn program_not_reading_its_input_closes_with_1011_after_the_stdin_timeout(
    mode: Mode,
) -> anyhow::Result<()> {
    let (_docroot, backend, gateway) =
        start_deaf_program(mode, &["--stdin-timeout", "0.5"]).await?;
    let mut client = gateway.connect("/exec").await?;
    assert_eq!(client.recv_text().await?, "ready");
    for _ in 0..100 {
        client.send(Message::text("y".repeat(1024))).await?;
    }
    client
        .expect_close_with(
            CloseCode::Error,
            "the program has not read its input for 0.5 s",
        )
        .await?;
    wait_for_programs(&backend, 0).await?;
    assert_eq!(n_zombies(backend.pid())?, 0);
    wait_for_log(
        &backend,
        "the program has not read its input for 0.5 s; closing with 1011",
    )
    .await?;
    Ok(())
}

async fn programs_beyond_m_are_refused_with_1013_until_one_ends(mode: Mode) -> anyhow::Result<()> {
    let (_docroot, backend, gateway) = start_exec(mode, &["-m", "2", "--", "cat"]).await?;
    let mut first = gateway.connect("/exec").await?;
    let mut second = gateway.connect("/exec").await?;
    assert_eq!(
        first.round_trip(Message::text("1")).await?,
        Message::text("1")
    );
    assert_eq!(
        second.round_trip(Message::text("2")).await?,
        Message::text("2")
    );
    wait_for_programs(&backend, 2).await?;
    let mut third = gateway.connect("/exec").await?;
    third.expect_close_code(CloseCode::Again).await?;
    assert_eq!(
        processes::try_children(backend.pid())?.len(),
        2,
        "no program for the refused client"
    );
    first.close(CloseCode::Normal, "").await?;
    wait_for_programs(&backend, 1).await?;
    // The program ends before its session gives back the client slot; the
    // backend logs the session's end once the slot is free.
    wait_for_log(&backend, "session ended").await?;
    let mut fourth = gateway.connect("/exec").await?;
    assert_eq!(
        fourth.round_trip(Message::text("4")).await?,
        Message::text("4")
    );
    assert_eq!(
        second.round_trip(Message::text("2")).await?,
        Message::text("2")
    );
    Ok(())
}

/// One line the fast program writes: its number, then padding to a kilobyte.
fn numbered_line(idx: u64) -> String {
    format!("{idx:08} {}", "x".repeat(1015))
}

async fn program_writing_faster_than_its_client_reads_blocks_on_its_pipe(
    mode: Mode,
) -> anyhow::Result<()> {
    // Writes ~1 GiB unless something holds it back.
    let script = r#"
import sys
pad = "x" * 1015
for idx in range(1 << 20):
    sys.stdout.write("%08d %s\n" % (idx, pad))
    sys.stdout.flush()
"#;
    let (_docroot, backend, gateway) = start_exec(mode, &["--", &python3()?, "-c", script]).await?;
    let mut client = gateway.connect("/exec").await?;
    assert_eq!(client.recv_text().await?, numbered_line(0));
    // The client reads nothing more: the program must end up blocked writing
    // to its full stdout pipe, and the backend must not have buffered it all.
    let program = wait_for_programs(&backend, 1).await?.remove(0);
    let wchan_path = format!("/proc/{}/wchan", program.pid);
    wait::until(
        "the program to block writing to its pipe",
        EVENT_DEADLINE,
        || {
            let wchan = std::fs::read_to_string(&wchan_path).unwrap_or_default();
            async move { Ok(wchan.contains("pipe_write").then_some(())) }
        },
    )
    .await?;
    let status = std::fs::read_to_string(format!("/proc/{}/status", backend.pid()))?;
    let rss_kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS")?;
    ensure!(
        rss_kib < 64 * 1024,
        "backend holds {rss_kib} KiB while its client stalls"
    );
    // Everything arrives, in order, once the client reads again.
    for idx in 1..3000 {
        assert_eq!(client.recv_text().await?, numbered_line(idx));
    }
    drop(client);
    wait_for_programs(&backend, 0).await?;
    Ok(())
}

async fn sigterm_closes_clients_with_1001_and_ends_every_program(mode: Mode) -> anyhow::Result<()> {
    let (_docroot, mut backend, gateway) =
        start_exec(mode, &["--grace", "0.3", "--", "cat"]).await?;
    let mut clients = Vec::new();
    for idx in 0..3 {
        let mut client = gateway.connect("/exec").await?;
        let text = Message::text(format!("{idx}"));
        assert_eq!(client.round_trip(text.clone()).await?, text);
        clients.push(client);
    }
    wait_for_programs(&backend, 3).await?;
    let program_pids: Vec<u32> = processes::try_children(backend.pid())?
        .iter()
        .map(|child| child.pid)
        .collect();
    backend.sigterm()?;
    for client in &mut clients {
        client.expect_close_code(CloseCode::Away).await?;
    }
    let status = backend.wait_exit(EXIT_DEADLINE).await?;
    ensure!(status.success(), "backend exited with {status}");
    for pid in program_pids {
        ensure!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "program {pid} outlived the backend"
        );
    }
    Ok(())
}

/// `docs/examples/exec/<file>`, as the demo runs it.
fn example(file: &str) -> String {
    harness::binaries::repo_root()
        .join("docs/examples/exec")
        .join(file)
        .to_string_lossy()
        .into_owned()
}

async fn example_counter_counts_and_closes_with_1000(mode: Mode) -> anyhow::Result<()> {
    let counter = example("counter.sh");
    let (_docroot, backend, gateway) = start_exec(mode, &["--", &counter, "5", "0"]).await?;
    let mut client = gateway.connect("/exec").await?;
    for number in 1..=5 {
        assert_eq!(client.recv_text().await?, number.to_string());
    }
    client.expect_close_code(CloseCode::Normal).await?;
    wait_for_programs(&backend, 0).await?;
    Ok(())
}

async fn example_calculator_answers_each_line(mode: Mode) -> anyhow::Result<()> {
    let calc = example("calc.py");
    let (_docroot, backend, gateway) = start_exec(mode, &["--", &python3()?, &calc]).await?;
    let mut client = gateway.connect("/exec").await?;
    assert_eq!(
        client.recv_text().await?,
        "calculator ready for 127.0.0.1: type an expression, or quit"
    );
    for (question, answer) in [
        ("(1 + 2) * 3", "= 9"),
        ("7 / 2", "= 3.5"),
        ("2 ** 10", "= 1024"),
        ("1 / 0", "error: division by zero"),
        ("9 ** 99999", "error: number too large"),
        (
            "__import__('os')",
            "error: only numbers, + - * / // % ** and parentheses",
        ),
        ("1 +", "error: not an expression"),
    ] {
        client.send(Message::text(question)).await?;
        assert_eq!(client.recv_text().await?, answer, "{question}");
    }
    client.send(Message::text("quit")).await?;
    assert_eq!(client.recv_text().await?, "bye");
    client.expect_close_code(CloseCode::Normal).await?;
    wait_for_programs(&backend, 0).await?;
    Ok(())
}

/// OPEN's `identity` (what the gateway's authorizer said) reaches the program
/// as WSGATE_IDENTITY. Sent on a hand-made link, since whether a gateway
/// fills the field is the authorizer's business.
#[tokio::test]
async fn identity_from_open_is_wsgate_identity() -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let backend = Backend::start(
        "websocket_exec",
        docroot.path(),
        "exec",
        &["--", "sh", "-c", r#"printf '%s\n' "$WSGATE_IDENTITY""#],
    )
    .await?;
    let mut link = UnixStream::connect(backend.socket_path()).await?;
    let open = br#"{"version":1,"mode":"framed","id":5,"name":"exec","path":"/exec","peer":"127.0.0.1:4000","identity":{"user":"alice","roles":["admin"]}}"#;
    wire::write_record(&mut link, &Record::Open(open.to_vec().into())).await?;
    ensure!(
        matches!(next_record(&mut link).await?, Some(Record::Accept(_))),
        "ACCEPT first"
    );
    let Some(Record::Text(identity)) = next_record(&mut link).await? else {
        bail!("expected the identity line");
    };
    let identity: serde_json::Value = serde_json::from_str(identity.as_str())?;
    assert_eq!(
        identity,
        serde_json::json!({"user": "alice", "roles": ["admin"]})
    );
    let Some(Record::Close(Some(close))) = next_record(&mut link).await? else {
        bail!("expected a close");
    };
    assert_eq!(close.code, 1000);
    Ok(())
}

async fn next_record(link: &mut UnixStream) -> anyhow::Result<Option<Record>> {
    wait::within(
        "a record from the backend",
        EVENT_DEADLINE,
        wire::read_record(link),
    )
    .await?
}

/// A program that cannot be found stops the backend at start-up with a
/// clear message, rather than failing every client.
#[test]
fn missing_program_fails_at_start_up() -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let output = Command::new(bin_path("websocket_exec")?)
        .arg("-R")
        .arg(docroot.path())
        .args(["-n", "exec", "--", "no-such-program-for-exec"])
        .output()?;
    ensure!(!output.status.success(), "exit status {}", output.status);
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        stderr.contains("program \"no-such-program-for-exec\" not found"),
        "stderr: {stderr}"
    );
    ensure!(!docroot.path().join("exec").exists(), "no socket published");
    Ok(())
}
