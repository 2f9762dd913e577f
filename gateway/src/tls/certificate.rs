//! The server's certificate and key: loading a PEM pair and checking it
//! (the key matches the leaf, the leaf is valid today), and
//! [`ServerCertificate`], the resolver every handshake asks.
//!
//! A reload (SIGHUP) loads a new one into a new `Tls`; a pair that does not
//! load leaves the current one in place and the caller logs the
//! [`CertificateError`] once. Handshakes in progress and open connections
//! keep whatever pair they started with.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why a certificate and key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    /// The certificate file cannot be read or is not PEM.
    #[error("cannot read certificate {}", path.display())]
    ReadCertificate {
        /// The certificate file.
        path: PathBuf,
        /// The reader's or parser's complaint.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// The certificate file holds no certificate.
    #[error("no certificate in {}", path.display())]
    NoCertificate {
        /// The certificate file.
        path: PathBuf,
    },
    /// The key file cannot be read or holds no PEM private key.
    #[error("cannot read private key {}", path.display())]
    ReadKey {
        /// The key file.
        path: PathBuf,
        /// The reader's or parser's complaint.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// The key is of a kind rustls cannot sign with, or does not belong to the certificate.
    #[error("private key {} does not fit certificate {}", key.display(), cert.display())]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls's reason (unsupported key, or its public key differs from the leaf's).
        #[source]
        source: rustls::Error,
    },
    /// The leaf certificate is not valid X.509.
    #[error("certificate {} is not valid X.509: {reason}", path.display())]
    Malformed {
        /// The certificate file.
        path: PathBuf,
        /// The parser's complaint.
        reason: String,
    },
    /// The leaf certificate is outside its validity period.
    #[error("certificate {} is not valid now: valid from {not_before} to {not_after}", path.display())]
    NotValidNow {
        /// The certificate file.
        path: PathBuf,
        /// Start of the validity period.
        not_before: String,
        /// End of the validity period.
        not_after: String,
    },
}

/// Reads `cert` (a PEM chain, leaf first) and `key` (PEM PKCS#8, PKCS#1 RSA
/// or SEC1 EC) and checks that they belong together and that the leaf is
/// valid now.
pub(crate) fn load_pair(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, CertificateError> {
    let chain = read_certificates(cert)?;
    let private_key =
        PrivateKeyDer::from_pem_file(key).map_err(|source| CertificateError::ReadKey {
            path: key.to_owned(),
            source,
        })?;
    let leaf = chain
        .first()
        .ok_or_else(|| CertificateError::NoCertificate {
            path: cert.to_owned(),
        })?;
    check_validity(cert, leaf)?;
    let mismatch = |source| CertificateError::KeyMismatch {
        cert: cert.to_owned(),
        key: key.to_owned(),
        source,
    };
    let certified = CertifiedKey::from_der(chain, private_key, provider).map_err(mismatch)?;
    // `from_der` lets a key whose public half it cannot tell pass; refuse it too.
    certified.keys_match().map_err(mismatch)?;
    Ok(certified)
}

/// Every certificate of a PEM file, in order; none is an error.
pub(crate) fn read_certificates(
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, CertificateError> {
    let read_error = |source| CertificateError::ReadCertificate {
        path: path.to_owned(),
        source,
    };
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(read_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_error)?;
    if chain.is_empty() {
        return Err(CertificateError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(chain)
}

fn check_validity(path: &Path, leaf: &CertificateDer<'_>) -> Result<(), CertificateError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|error| {
        CertificateError::Malformed {
            path: path.to_owned(),
            reason: error.to_string(),
        }
    })?;
    let validity = parsed.validity();
    if validity.is_valid() {
        Ok(())
    } else {
        Err(CertificateError::NotValidNow {
            path: path.to_owned(),
            not_before: validity.not_before.to_string(),
            not_after: validity.not_after.to_string(),
        })
    }
}

/// The subject of a DER certificate (`CN=alice, O=Example`), if it parses.
pub(crate) fn subject(certificate: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate.as_ref()).ok()?;
    Some(parsed.subject().to_string())
}

/// The certificate every handshake of one `Tls` gets.
#[derive(Debug)]
pub(crate) struct ServerCertificate {
    pair: Arc<CertifiedKey>,
}

impl ServerCertificate {
    /// Loads and checks the pair; an error here stops start-up or a reload.
    pub(crate) fn load(
        cert: &Path,
        key: &Path,
        provider: &CryptoProvider,
    ) -> Result<ServerCertificate, CertificateError> {
        Ok(ServerCertificate {
            pair: Arc::new(load_pair(cert, key, provider)?),
        })
    }
}

impl ResolvesServerCert for ServerCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.pair))
    }
}
