//! TLS termination for the `--tls-listen` listeners: the rustls server
//! configuration (TLS 1.2 and 1.3 only, ALPN `http/1.1`, the `ring`
//! provider, optional client certificates), the handshake of each accepted
//! connection under a deadline and a bound on handshakes in progress, and
//! the new [`Tls`] a reload (SIGHUP) builds from the files read again.
//!
//! After the handshake the connection is an ordinary client for
//! `connection`: hyper, the upgrade and the relay run the same over
//! [`TlsStream`] as over a `TcpStream`. What the handshake learnt (SNI, the
//! client certificate's subject) reaches the backend in OPEN's `tls`.
//! Direct mode needs the bare TCP socket, so a TLS client is always relayed
//! (`upgrade` decides that).

mod certificate;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use link::TlsInfo;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
pub(crate) use tokio_rustls::server::TlsStream;

use crate::config::{Config, TlsSettings};
pub use certificate::CertificateError;
use certificate::ServerCertificate;

/// The one ALPN protocol the gateway speaks.
const ALPN_HTTP_1_1: &[u8] = b"http/1.1";

/// Why TLS cannot be set up at start-up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate or key does not load.
    #[error("loading the TLS certificate")]
    Certificate(#[source] Box<CertificateError>),
    /// The client CA file does not load (the error names it).
    #[error("loading the client CA")]
    ClientCa(#[source] Box<CertificateError>),
    /// The client CA file holds no certificate usable as a trust anchor.
    #[error("the client CA {} cannot verify client certificates", path.display())]
    ClientVerifier {
        /// The `--tls-client-ca` file.
        path: PathBuf,
        /// rustls's reason.
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    /// rustls refused the protocol versions (cannot happen with the ring provider).
    #[error("building the TLS configuration")]
    Config(#[source] rustls::Error),
}

/// How a client's TLS handshake failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandshakeError {
    /// No handshake slot, or no finished handshake, within the deadline.
    #[error("no TLS handshake within {0:?}")]
    Timeout(Duration),
    /// The client sent something that is not an acceptable TLS handshake
    /// (plain HTTP, TLS 1.1, no common cipher, a refused client certificate...).
    #[error("TLS handshake failed")]
    Failed(#[source] io::Error),
}

/// The TLS side of the gateway, shared by every TLS listener.
#[derive(Debug)]
pub struct Tls {
    server_config: Arc<ServerConfig>,
    /// One permit per handshake in progress: `--tls-max-handshakes`.
    handshakes: Arc<Semaphore>,
    max_handshakes: usize,
    handshake_timeout: Duration,
}

impl Tls {
    /// Loads the certificate, key and client CA of `config`; `None` without
    /// TLS listeners. An error here stops start-up.
    pub fn from_config(config: &Config) -> Result<Option<Tls>, TlsError> {
        config.tls.as_ref().map(Tls::new).transpose()
    }

    fn new(settings: &TlsSettings) -> Result<Tls, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certificate = Arc::new(
            ServerCertificate::load(&settings.cert, &settings.key, &provider)
                .map_err(|error| TlsError::Certificate(Box::new(error)))?,
        );
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(TlsError::Config)?;
        let builder = match &settings.client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => builder.with_client_cert_verifier(client_verifier(path, &provider)?),
        };
        let mut server_config = builder.with_cert_resolver(certificate);
        server_config.alpn_protocols = vec![ALPN_HTTP_1_1.to_vec()];
        Ok(Tls {
            server_config: Arc::new(server_config),
            handshakes: Arc::new(Semaphore::new(settings.max_handshakes)),
            max_handshakes: settings.max_handshakes,
            handshake_timeout: settings.handshake_timeout,
        })
    }

    /// The TLS side after a reload (SIGHUP): the certificate, key and client
    /// CA of `settings` read again, for new connections; connections that
    /// started with `self` keep it. Handshakes keep sharing this one's slots
    /// unless their number changed (then those in progress finish under
    /// their timeout on the old ones). A pair that does not load is an error,
    /// and `self` stays in use.
    pub(crate) fn reloaded(&self, settings: &TlsSettings) -> Result<Tls, TlsError> {
        let mut tls = Tls::new(settings)?;
        if tls.max_handshakes == self.max_handshakes {
            tls.handshakes = Arc::clone(&self.handshakes);
        }
        Ok(tls)
    }

    /// Runs the server side of the handshake on `tcp`: waits for a handshake
    /// slot, then for the client, both within the handshake timeout.
    pub(crate) async fn handshake(
        &self,
        tcp: TcpStream,
    ) -> Result<(TlsStream<TcpStream>, TlsInfo), HandshakeError> {
        let handshake = async {
            // The semaphore is never closed.
            let _slot = self.handshakes.acquire().await;
            TlsAcceptor::from(Arc::clone(&self.server_config))
                .accept(tcp)
                .await
        };
        let stream = tokio::time::timeout(self.handshake_timeout, handshake)
            .await
            .map_err(|_| HandshakeError::Timeout(self.handshake_timeout))?
            .map_err(HandshakeError::Failed)?;
        let (_, connection) = stream.get_ref();
        let info = TlsInfo {
            sni: connection.server_name().map(str::to_owned),
            client_subject: connection
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(certificate::subject),
        };
        Ok((stream, info))
    }
}

/// The verifier that requires a client certificate signed by a CA of `path`.
fn client_verifier(
    path: &std::path::Path,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let mut roots = RootCertStore::empty();
    let cas = certificate::read_certificates(path)
        .map_err(|error| TlsError::ClientCa(Box::new(error)))?;
    for ca in cas {
        // A certificate rustls cannot use as an anchor is skipped; none left is an error below.
        let _ = roots.add(ca);
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider))
        .build()
        .map_err(|source| TlsError::ClientVerifier {
            path: path.to_owned(),
            source,
        })
}
