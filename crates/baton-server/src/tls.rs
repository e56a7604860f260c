//! TLS for the accept loop: the operator's certificate chain and private key (PEM files) turned
//! into a [`TlsAcceptor`] on rustls with the ring provider (no aws-lc, no OpenSSL).
//!
//! The provider is passed explicitly, so the server never depends on (or sets) a process-wide
//! default. Only HTTP/1.1 is offered (ALPN `http/1.1`), as the plain listener serves.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

/// Where the server's certificate chain and private key are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM file with the server's certificate first, then any intermediates.
    pub cert: PathBuf,
    /// PEM file with the certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// The certificate or key cannot be used: missing or unreadable file, no PEM block of the right
/// kind, or a key that does not match the certificate. `baton server` exits with a usage error
/// on it, before listening.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSetupError {
    message: String,
}

impl fmt::Display for TlsSetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TlsSetupError {}

fn setup_error(message: String) -> TlsSetupError {
    TlsSetupError { message }
}

/// Reads the files and builds the acceptor.
pub fn load_acceptor(files: &TlsFiles) -> Result<TlsAcceptor, TlsSetupError> {
    let certs = read_certs(&files.cert)?;
    let key = read_key(&files.key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| setup_error(format!("cannot set up TLS: {error}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|error| {
            setup_error(format!(
                "TLS certificate {} and key {} cannot be used together: {error}",
                files.cert.display(),
                files.key.display()
            ))
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn read_file(path: &Path, what: &str) -> Result<Vec<u8>, TlsSetupError> {
    std::fs::read(path).map_err(|error| {
        setup_error(format!(
            "cannot read TLS {what} {}: {error}",
            path.display()
        ))
    })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let pem = read_file(path, "certificate")?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| {
            setup_error(format!(
                "TLS certificate {} is not valid PEM: {error}",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(setup_error(format!(
            "TLS certificate {} holds no CERTIFICATE block",
            path.display()
        )));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsSetupError> {
    let pem = read_file(path, "key")?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|error| {
        setup_error(format!(
            "TLS key {} holds no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {error}",
            path.display()
        ))
    })
}
