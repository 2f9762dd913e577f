//! The gateway on `--tls-listen`: static files, refusals and every kind of
//! backend over TLS, OPEN's `tls` field, direct mode relayed for TLS
//! clients, certificates reloaded on SIGHUP (new pair taken, bad pairs
//! refused, open clients untouched), handshakes that never finish or are
//! not TLS at all, TLS 1.1 refused, and mutual TLS.
//!
//! Every certificate is made here with the harness's rcgen CA.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use harness::tls::{CertificateFiles, PemPair, TestCa};
use harness::{
    Backend, EVENT_DEADLINE, FakeBackend, FakeBehaviour, Gateway, LinkEvent, Message, Mode,
    OpenMeta, Record, wait,
};
use link::{LinkMode, TlsInfo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The log line of a refused reload.
const RELOAD_REFUSED: &str = "TLS certificate not reloaded";
/// The log line of a reload.
const RELOADED: &str = "TLS certificate reloaded";

fn path_str(path: &Path) -> anyhow::Result<&str> {
    path.to_str().context("temporary paths are UTF-8")
}

/// A gateway on `docroot` with a TLS listener serving `files`, plus `extra` flags.
async fn start_tls_gateway(
    docroot: &Path,
    files: &CertificateFiles,
    extra: &[&str],
) -> anyhow::Result<Gateway> {
    let cert = files.cert_path();
    let key = files.key_path();
    let mut args = vec![
        "--tls-listen",
        "127.0.0.1:0",
        "--tls-cert",
        path_str(&cert)?,
        "--tls-key",
        path_str(&key)?,
    ];
    args.extend_from_slice(extra);
    Gateway::start(docroot, &args).await
}

/// The next OPEN on any of `backend`'s links, skipping the other events.
async fn next_open(backend: &mut FakeBackend) -> anyhow::Result<OpenMeta> {
    loop {
        if let LinkEvent::Received {
            record: Record::Open(payload),
            ..
        } = backend.next_event().await?
        {
            return Ok(OpenMeta::from_payload(&payload)?);
        }
    }
}

/// Waits until the gateway's log holds `line` `n` times.
async fn wait_for_log(gateway: &Gateway, line: &str, n: usize) -> anyhow::Result<()> {
    wait::until(&format!("{n} log line(s) {line:?}"), EVENT_DEADLINE, || {
        let count = gateway.stderr_text().matches(line).count();
        async move { Ok((count >= n).then_some(())) }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_files_and_refusals_are_the_same_over_https() -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let htdocs = tempfile::tempdir()?;
    std::fs::write(htdocs.path().join("index.html"), "<p>hello over TLS</p>")?;
    let _echo = Backend::start("websocket_echo", docroot.path(), "echo", &[]).await?;
    let gateway = Gateway::start(
        docroot.path(),
        &Mode::Tls.with_args(&["--htdocs", path_str(htdocs.path())?]),
    )
    .await?;
    let addr = gateway.tls_addr().context("a TLS listener")?;
    let config = gateway
        .tls_client_config()
        .context("a harness certificate")?;
    let get =
        |path: &str| format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let index = harness::http::request_tls(addr, config.clone(), get("/").as_bytes()).await?;
    assert_eq!(index.status, 200);
    assert_eq!(index.body_text(), "<p>hello over TLS</p>");
    // (request, status): the same statuses as on a plain listener.
    let upgrade = |path: &str| harness::HandshakeRequest::new(path).render("localhost");
    let cases = [
        (get("/echo"), 426),
        (get("/missing.html"), 404),
        (upgrade("/nobody"), 404),
        (upgrade("/../etc"), 400),
    ];
    for (request, status) in cases {
        let response = harness::http::request_tls(addr, config.clone(), request.as_bytes()).await?;
        assert_eq!(response.status, status, "{request:?}");
    }
    // And WebSockets, of course.
    let mut client = gateway.connect("/echo").await?;
    assert_eq!(
        client.round_trip(Message::text("secure")).await?,
        Message::text("secure")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_tells_the_backend_about_tls_and_sni() -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let mut backend = FakeBackend::start(
        &docroot.path().join("meta"),
        FakeBehaviour::Echo(harness::AcceptReply::default()),
    )?;
    let gateway = Gateway::start(docroot.path(), Mode::Tls.gateway_args()).await?;
    let mut secure = gateway.connect("/meta").await?;
    let meta = next_open(&mut backend).await?;
    assert_eq!(
        meta.tls,
        Some(TlsInfo {
            sni: Some("localhost".to_owned()),
            client_subject: None,
        })
    );
    assert_eq!(
        secure.round_trip(Message::text("x")).await?,
        Message::text("x")
    );
    // The same gateway's plain listener says nothing about TLS.
    let _plain = harness::Client::connect(gateway.addr(), "/meta", &[]).await?;
    let meta = next_open(&mut backend).await?;
    assert_eq!(meta.tls, None);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_names_are_relayed_for_tls_clients_with_one_log_line() -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let mut backend = FakeBackend::start(
        &docroot.path().join("fast"),
        FakeBehaviour::Echo(harness::AcceptReply::default()),
    )?;
    let gateway = Gateway::start(docroot.path(), &Mode::Tls.with_args(&["--direct", "*"])).await?;
    for text in ["one", "two"] {
        let mut client = gateway.connect("/fast").await?;
        let meta = next_open(&mut backend).await?;
        assert_eq!(meta.mode, LinkMode::Framed, "a TLS client is relayed");
        assert_eq!(meta.limits, None);
        assert_eq!(
            client.round_trip(Message::text(text)).await?,
            Message::text(text)
        );
    }
    let log = gateway.stderr_text();
    assert_eq!(
        log.matches("direct mode needs kTLS").count(),
        1,
        "one log line per name:\n{log}"
    );
    // A plain client of the same name is still handed over.
    let _plain = harness::Client::connect(gateway.addr(), "/fast", &[]).await?;
    assert_eq!(next_open(&mut backend).await?.mode, LinkMode::Direct);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_backends_work_over_tls() -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let listener = tokio::net::UnixListener::bind(docroot.path().join("legacy"))?;
    let gateway =
        Gateway::start(docroot.path(), &Mode::Tls.with_args(&["--raw", "legacy"])).await?;
    let mut client = gateway.connect("/legacy").await?;
    let (mut link, _) = wait::within("the raw link", EVENT_DEADLINE, listener.accept()).await??;
    client.send(Message::text("to the backend")).await?;
    let mut bytes = vec![0; "to the backend".len()];
    wait::within("the raw bytes", EVENT_DEADLINE, link.read_exact(&mut bytes)).await??;
    assert_eq!(bytes, b"to the backend");
    link.write_all(b"to the client\0").await?;
    assert_eq!(client.recv().await?, Message::text("to the client"));
    Ok(())
}

/// A CA, a gateway with a TLS listener serving one of its pairs, and the files.
struct ReloadFixture {
    _docroot: tempfile::TempDir,
    _echo: Backend,
    ca: TestCa,
    files: CertificateFiles,
    gateway: Gateway,
}

impl ReloadFixture {
    async fn start() -> anyhow::Result<ReloadFixture> {
        let docroot = tempfile::tempdir()?;
        let echo = Backend::start("websocket_echo", docroot.path(), "echo", &[]).await?;
        let ca = TestCa::new("first CA")?;
        let files = CertificateFiles::new(&ca.server_pair()?)?;
        let gateway = start_tls_gateway(docroot.path(), &files, &[]).await?;
        Ok(ReloadFixture {
            _docroot: docroot,
            _echo: echo,
            ca,
            files,
            gateway,
        })
    }

    /// A new echo client trusting `ca`.
    async fn connect(&self, ca: &TestCa) -> anyhow::Result<harness::Client> {
        self.gateway
            .connect_tls("/echo", &[], ca.client_config(None)?)
            .await
    }

    fn write(&self, pair: &PemPair) -> anyhow::Result<()> {
        pair.write(&self.files.cert_path(), &self.files.key_path())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_takes_a_new_pair_and_open_clients_carry_on() -> anyhow::Result<()> {
    let mut fixture = ReloadFixture::start().await?;
    let mut open_client = fixture.connect(&fixture.ca).await?;
    open_client.expect_echo("before").await?;

    let second_ca = TestCa::new("second CA")?;
    fixture.write(&second_ca.server_pair()?)?;
    fixture.gateway.signal(nix::sys::signal::Signal::SIGHUP)?;
    wait_for_log(&fixture.gateway, RELOADED, 1).await?;

    let mut new_client = fixture.connect(&second_ca).await?;
    new_client.expect_echo("new pair").await?;
    ensure!(
        fixture.connect(&fixture.ca).await.is_err(),
        "a new handshake still got the old certificate"
    );
    open_client.expect_echo("after").await?;
    fixture.gateway.check_running()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_refuses_a_bad_pair_and_keeps_the_old_one() -> anyhow::Result<()> {
    let mut fixture = ReloadFixture::start().await?;
    let mut open_client = fixture.connect(&fixture.ca).await?;
    let other_ca = TestCa::new("other CA")?;
    let good = fixture.ca.server_pair()?;
    let other = other_ca.server_pair()?;
    let expired = other_ca.expired_server_pair()?;
    let mismatched = PemPair {
        cert: other.cert.clone(),
        key: good.key.clone(),
    };
    let not_pem = PemPair {
        cert: "not PEM at all\n".to_owned(),
        key: good.key.clone(),
    };
    // (what is wrong, the pair written, or none for a missing key file, what the log line names)
    let cases = [
        ("a missing key file", None, "cannot read private key"),
        (
            "a key of another certificate",
            Some(&mismatched),
            "does not fit certificate",
        ),
        ("an expired certificate", Some(&expired), "is not valid now"),
        (
            "a certificate file without a certificate",
            Some(&not_pem),
            "no certificate in",
        ),
    ];
    for (n_refused, (what, bad_pair, reason)) in cases.into_iter().enumerate() {
        match bad_pair {
            Some(pair) => fixture.write(pair)?,
            None => std::fs::remove_file(fixture.files.key_path())?,
        }
        fixture.gateway.signal(nix::sys::signal::Signal::SIGHUP)?;
        wait_for_log(&fixture.gateway, RELOAD_REFUSED, n_refused + 1).await?;
        let log = fixture.gateway.stderr_text();
        let line = log
            .lines()
            .filter(|line| line.contains(RELOAD_REFUSED))
            .nth(n_refused)
            .context("the refusal line")?;
        ensure!(
            line.contains(reason),
            "{what}: the log line {line:?} lacks {reason:?}"
        );
        // The old pair still serves new clients, and the open one carries on.
        let mut client = fixture
            .connect(&fixture.ca)
            .await
            .with_context(|| format!("connecting after {what}"))?;
        client.expect_echo(what).await?;
        open_client.expect_echo(what).await?;
        fixture.write(&good)?;
    }
    ensure!(
        !fixture.gateway.stderr_text().contains(RELOADED),
        "no bad pair was taken"
    );
    fixture.gateway.check_running()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_handshakes_time_out_without_touching_other_clients() -> anyhow::Result<()> {
    const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);
    let docroot = tempfile::tempdir()?;
    let _echo = Backend::start("websocket_echo", docroot.path(), "echo", &[]).await?;
    let gateway = Gateway::start(
        docroot.path(),
        &Mode::Tls.with_args(&["--tls-handshake-timeout", "1", "--tls-max-handshakes", "2"]),
    )
    .await?;
    let tls_addr = gateway.tls_addr().context("a TLS listener")?;
    let opened = Instant::now();
    // Two connections that never say a word hold every handshake slot.
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(TcpStream::connect(tls_addr).await?);
    }
    // Meanwhile the plain listener serves as usual.
    let mut plain = harness::Client::connect(gateway.addr(), "/echo", &[]).await?;
    plain.expect_echo("unaffected").await?;
    // The gateway drops them after the handshake timeout.
    for stream in &mut silent {
        let mut buffer = [0; 16];
        let n_read = wait::within(
            "the gateway to drop a silent connection",
            EVENT_DEADLINE,
            stream.read(&mut buffer),
        )
        .await?
        .unwrap_or(0);
        ensure!(n_read == 0, "a silent connection got {n_read} bytes");
    }
    ensure!(
        opened.elapsed() >= HANDSHAKE_TIMEOUT,
        "dropped before the timeout"
    );
    // Then TLS clients get in again.
    let mut secure = gateway.connect("/echo").await?;
    secure.expect_echo("after the silence").await?;
    ensure!(
        gateway.stderr_text().contains("no TLS handshake within"),
        "the timeout is logged"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_on_the_tls_port_and_tls_on_the_plain_port_end_at_once() -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let _echo = Backend::start("websocket_echo", docroot.path(), "echo", &[]).await?;
    // A handshake timeout far beyond the test's deadline: only a quick refusal passes.
    let gateway = Gateway::start(
        docroot.path(),
        &Mode::Tls.with_args(&["--tls-handshake-timeout", "600", "--header-timeout", "600"]),
    )
    .await?;
    let tls_addr = gateway.tls_addr().context("a TLS listener")?;
    let mut bystander = gateway.connect("/echo").await?;

    // Plain HTTP on the TLS port: the handshake fails at the first bytes.
    let mut stream = TcpStream::connect(tls_addr).await?;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await?;
    let mut reply = Vec::new();
    wait::within(
        "the TLS port to end a plain HTTP request",
        EVENT_DEADLINE,
        stream.read_to_end(&mut reply),
    )
    .await??;
    ensure!(
        !reply.starts_with(b"HTTP/"),
        "the TLS port answered in plain HTTP: {:?}",
        String::from_utf8_lossy(&reply)
    );

    // TLS on the plain port: hyper answers 400 to the ClientHello and closes.
    let config = gateway
        .tls_client_config()
        .context("a harness certificate")?;
    let handshake = harness::tls::connect(gateway.addr(), "localhost", config).await;
    ensure!(
        handshake.is_err(),
        "a TLS handshake succeeded on the plain port"
    );

    bystander.expect_echo("unaffected").await?;
    Ok(())
}

/// A TLS 1.1 ClientHello with no `supported_versions` extension, as an
/// old client sends it: legacy version 3.2 in the record and the hello.
fn tls_1_1_client_hello() -> Vec<u8> {
    let mut hello = vec![0x03, 0x02]; // client_version TLS 1.1
    hello.extend([0x5a; 32]); // random
    hello.push(0); // no session id
    hello.extend([0x00, 0x04, 0xc0, 0x2b, 0xc0, 0x2f]); // two ECDHE-AES128-GCM suites
    hello.extend([0x01, 0x00]); // null compression
    // Extensions: signature_algorithms with ecdsa_secp256r1_sha256 only.
    hello.extend([0x00, 0x08, 0x00, 0x0d, 0x00, 0x04, 0x00, 0x02, 0x04, 0x03]);
    let mut handshake = vec![0x01, 0x00];
    handshake.extend((hello.len() as u16).to_be_bytes());
    handshake.extend(hello);
    let mut record = vec![0x16, 0x03, 0x02];
    record.extend((handshake.len() as u16).to_be_bytes());
    record.extend(handshake);
    record
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_1_1_client_gets_a_protocol_version_alert() -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let gateway = Gateway::start(docroot.path(), Mode::Tls.gateway_args()).await?;
    let mut stream = TcpStream::connect(gateway.tls_addr().context("a TLS listener")?).await?;
    stream.write_all(&tls_1_1_client_hello()).await?;
    let mut reply = Vec::new();
    wait::within(
        "the gateway to refuse TLS 1.1",
        EVENT_DEADLINE,
        stream.read_to_end(&mut reply),
    )
    .await??;
    // One alert record: content type 21, level fatal (2), protocol_version (70).
    match reply.as_slice() {
        [0x15, 0x03, _, 0x00, 0x02, 0x02, 70, ..] => Ok(()),
        other => bail!("expected a protocol_version alert, got {other:02x?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_only_the_cas_clients_and_tells_their_subject() -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let mut backend = FakeBackend::start(
        &docroot.path().join("members"),
        FakeBehaviour::Echo(harness::AcceptReply::default()),
    )?;
    let server_ca = TestCa::new("server CA")?;
    let files = CertificateFiles::new(&server_ca.server_pair()?)?;
    let client_ca = TestCa::new("client CA")?;
    let client_ca_path = files.path("clients.pem");
    std::fs::write(&client_ca_path, client_ca.cert_pem())?;
    let gateway = start_tls_gateway(
        docroot.path(),
        &files,
        &["--tls-client-ca", path_str(&client_ca_path)?],
    )
    .await?;

    let alice = client_ca.client_pair("alice")?;
    let mut member = gateway
        .connect_tls("/members", &[], server_ca.client_config(Some(&alice))?)
        .await?;
    let meta = next_open(&mut backend).await?;
    assert_eq!(
        meta.tls,
        Some(TlsInfo {
            sni: Some("localhost".to_owned()),
            client_subject: Some("CN=alice".to_owned()),
        })
    );
    member.expect_echo("welcome").await?;

    // No certificate, or one from another CA: no WebSocket (with TLS 1.3 the
    // refusal may come as an alert after the client's side of the handshake).
    let stranger = TestCa::new("stranger CA")?.client_pair("mallory")?;
    for (who, config) in [
        ("no certificate", server_ca.client_config(None)?),
        ("another CA", server_ca.client_config(Some(&stranger))?),
    ] {
        let refused = gateway.connect_tls("/members", &[], config).await;
        ensure!(refused.is_err(), "a client with {who} got in");
    }
    member.expect_echo("still here").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pair_that_does_not_load_stops_start_up_with_status_2() -> anyhow::Result<()> {
    let docroot = tempfile::tempdir()?;
    let ca = TestCa::new("start-up CA")?;
    let good = ca.server_pair()?;
    let files = CertificateFiles::new(&good)?;
    let other_key = files.path("other-key.pem");
    std::fs::write(&other_key, ca.server_pair()?.key)?;
    let expired_cert = files.path("expired.pem");
    let expired_key = files.path("expired-key.pem");
    ca.expired_server_pair()?
        .write(&expired_cert, &expired_key)?;
    let cert = files.cert_path();
    let key = files.key_path();
    let missing = files.path("missing.pem");
    // (cert, key, extra flags, what the message names)
    let cases = [
        (&missing, &key, &[][..], "cannot read certificate"),
        (&cert, &other_key, &[][..], "does not fit certificate"),
        (&expired_cert, &expired_key, &[][..], "is not valid now"),
        (
            &cert,
            &key,
            &["--tls-client-ca", path_str(&missing)?][..],
            "loading the client CA",
        ),
    ];
    for (cert, key, extra, expected) in cases {
        let output = tokio::process::Command::new(harness::bin_path("wsgate")?)
            .args(["--tls-listen", "127.0.0.1:0", "-R"])
            .arg(docroot.path())
            .arg("--tls-cert")
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .args(extra)
            .output();
        let output = wait::within(
            "wsgate to refuse its TLS files",
            harness::EXIT_DEADLINE,
            output,
        )
        .await??;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{expected}: {stderr}");
        assert!(stderr.contains(expected), "{expected}: {stderr}");
    }
    Ok(())
}
