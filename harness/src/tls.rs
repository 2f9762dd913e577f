//! TLS for the tests: a throw-away certificate authority made with rcgen
//! ([`TestCa`]), the certificates it issues ([`PemPair`]), a rustls client
//! configuration that trusts it, and [`ClientStream`], the plain-or-TLS
//! stream under a [`Client`](crate::Client).
//!
//! Nothing here is secret or lasts: every CA is made for one test, and
//! every file is written into a directory the test owns.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::{EVENT_DEADLINE, wait};

/// The server name the harness's server certificates are issued for and its clients ask for.
pub const SERVER_NAME: &str = "localhost";

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct PemPair {
    /// The certificate (PEM).
    pub cert: String,
    /// The private key (PEM, PKCS#8).
    pub key: String,
}

impl PemPair {
    /// Writes the pair to `cert_path` and `key_path`.
    pub fn write(&self, cert_path: &Path, key_path: &Path) -> anyhow::Result<()> {
        std::fs::write(cert_path, &self.cert)
            .with_context(|| format!("writing {}", cert_path.display()))?;
        std::fs::write(key_path, &self.key)
            .with_context(|| format!("writing {}", key_path.display()))?;
        Ok(())
    }
}

/// A certificate authority for one test.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

impl TestCa {
    /// A new CA named `name` (its certificate's common name).
    pub fn new(name: &str) -> anyhow::Result<TestCa> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key)?;
        Ok(TestCa {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA's certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A server certificate for `localhost` and `127.0.0.1`, valid now.
    pub fn server_pair(&self) -> anyhow::Result<PemPair> {
        self.issue(ServerOrClient::Server, false)
    }

    /// A server certificate for `localhost` whose validity ended in 2001.
    pub fn expired_server_pair(&self) -> anyhow::Result<PemPair> {
        self.issue(ServerOrClient::Server, true)
    }

    /// A client certificate with the common name `common_name`.
    pub fn client_pair(&self, common_name: &str) -> anyhow::Result<PemPair> {
        self.issue(ServerOrClient::Client(common_name), false)
    }

    fn issue(&self, kind: ServerOrClient<'_>, expired: bool) -> anyhow::Result<PemPair> {
        let key = KeyPair::generate()?;
        let mut params = match kind {
            ServerOrClient::Server => {
                let mut params =
                    CertificateParams::new(vec![SERVER_NAME.to_owned(), "127.0.0.1".to_owned()])?;
                params
                    .distinguished_name
                    .push(DnType::CommonName, SERVER_NAME);
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
                params
            }
            ServerOrClient::Client(common_name) => {
                let mut params = CertificateParams::new(Vec::<String>::new())?;
                params
                    .distinguished_name
                    .push(DnType::CommonName, common_name);
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
                params
            }
        };
        if expired {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(PemPair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }

    /// A client configuration that trusts this CA only, offers ALPN
    /// `http/1.1`, and presents `client` as its certificate if given.
    pub fn client_config(&self, client: Option<&PemPair>) -> anyhow::Result<Arc<ClientConfig>> {
        client_config_trusting(self.cert_pem.as_bytes(), client)
    }
}

enum ServerOrClient<'a> {
    Server,
    Client(&'a str),
}

/// A rustls client configuration trusting the CAs of `ca_pem` (ring provider,
/// TLS 1.2 and 1.3, ALPN `http/1.1`), presenting `client` if given.
pub fn client_config_trusting(
    ca_pem: &[u8],
    client: Option<&PemPair>,
) -> anyhow::Result<Arc<ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert?)?;
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some(pair) => {
            let chain = CertificateDer::pem_slice_iter(pair.cert.as_bytes())
                .collect::<Result<Vec<_>, _>>()?;
            let key = PrivateKeyDer::from_pem_slice(pair.key.as_bytes())?;
            builder.with_client_auth_cert(chain, key)?
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Connects to `addr` and completes a TLS handshake asking for `server_name`,
/// within [`EVENT_DEADLINE`].
pub async fn connect(
    addr: SocketAddr,
    server_name: &str,
    config: Arc<ClientConfig>,
) -> anyhow::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(server_name.to_owned())?;
    let what = format!("the TLS handshake with {addr}");
    wait::within(
        &what,
        EVENT_DEADLINE,
        TlsConnector::from(config).connect(name, tcp),
    )
    .await?
    .with_context(|| what.clone())
}

/// A directory holding a server certificate and key, as a gateway reads them.
#[derive(Debug)]
pub struct CertificateFiles {
    dir: tempfile::TempDir,
}

impl CertificateFiles {
    /// A new directory with `pair` in `cert.pem` and `key.pem`.
    pub fn new(pair: &PemPair) -> anyhow::Result<CertificateFiles> {
        let files = CertificateFiles {
            dir: tempfile::tempdir()?,
        };
        pair.write(&files.cert_path(), &files.key_path())?;
        Ok(files)
    }

    /// The certificate file.
    pub fn cert_path(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    /// The key file.
    pub fn key_path(&self) -> PathBuf {
        self.dir.path().join("key.pem")
    }

    /// A path in the same directory, for other files of the test.
    pub fn path(&self, file_name: &str) -> PathBuf {
        self.dir.path().join(file_name)
    }
}

/// The stream under a test client: plain TCP, or TLS over TCP.
#[derive(Debug)]
pub enum ClientStream {
    /// `ws://`.
    Plain(TcpStream),
    /// `wss://`.
    Tls(Box<TlsStream<TcpStream>>),
}

impl ClientStream {
    /// The TCP stream under it.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            ClientStream::Plain(tcp) => tcp,
            ClientStream::Tls(tls) => tls.get_ref().0,
        }
    }

    /// The TCP stream under it, giving up any TLS session without a close_notify.
    pub fn into_tcp(self) -> TcpStream {
        match self {
            ClientStream::Plain(tcp) => tcp,
            ClientStream::Tls(tls) => tls.into_inner().0,
        }
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            ClientStream::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            ClientStream::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            ClientStream::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            ClientStream::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}
