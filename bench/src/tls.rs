//! TLS for the wss systems: one certificate per run (ECDSA P-256, issued by
//! a throw-away CA that rcgen makes through `harness::tls`), written into a
//! temporary directory that wsgate, nginx and the baseline server all read,
//! and the rustls configurations of the load generator and of the baseline.
//!
//! Every side is pinned to TLS 1.3, TLS_AES_128_GCM_SHA256 and X25519, so
//! each system negotiates the same handshake and cipher: nginx by its
//! configuration (`system`), the baseline by [`baseline_server_config`], and
//! wsgate, whose suites cannot be chosen without a product change, by the
//! client offering nothing else. The client never resumes a session: every
//! connection pays a full handshake.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use harness::tls::{CertificateFiles, TestCa};
use rustls::crypto::CryptoProvider;
use rustls::crypto::ring::{cipher_suite, default_provider, kx_group};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

pub use harness::tls::SERVER_NAME;

/// The cipher suite every system negotiates, as the report names it.
pub const CIPHER_SUITE: &str = "TLS_AES_128_GCM_SHA256";

/// The certificate files of a run and a client configuration trusting them.
#[derive(Debug)]
pub struct TlsFiles {
    files: CertificateFiles,
    /// The load generator's configuration: trusts the run's CA only.
    pub client_config: Arc<ClientConfig>,
}

impl TlsFiles {
    /// A new CA and a server certificate for `localhost` and `127.0.0.1`.
    pub fn generate() -> anyhow::Result<TlsFiles> {
        let ca = TestCa::new("wsgate-bench CA")?;
        Ok(TlsFiles {
            files: CertificateFiles::new(&ca.server_pair()?)?,
            client_config: client_config(ca.cert_pem().as_bytes())?,
        })
    }

    /// The server certificate, PEM.
    pub fn cert_path(&self) -> PathBuf {
        self.files.cert_path()
    }

    /// Its private key, PEM (PKCS#8).
    pub fn key_path(&self) -> PathBuf {
        self.files.key_path()
    }
}

/// The ring provider with one cipher suite and one key exchange group.
fn pinned_provider() -> Arc<CryptoProvider> {
    let mut provider = default_provider();
    provider.cipher_suites = vec![cipher_suite::TLS13_AES_128_GCM_SHA256];
    provider.kx_groups = vec![kx_group::X25519];
    Arc::new(provider)
}

/// TLS 1.3 with the pinned suite, trusting the CAs of `ca_pem`, ALPN
/// `http/1.1`, session resumption off.
fn client_config(ca_pem: &[u8]) -> anyhow::Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert?)?;
    }
    let mut config = ClientConfig::builder_with_provider(pinned_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// The baseline server's configuration: the same pins as the client.
pub fn baseline_server_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<ServerConfig>> {
    let chain = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()?;
    let key =
        PrivateKeyDer::from_pem_file(key).with_context(|| format!("reading {}", key.display()))?;
    let mut config = ServerConfig::builder_with_provider(pinned_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
