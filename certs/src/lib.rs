//! Serving certificates for podvault's webhook: read from `tls.crt` / `tls.key` (as a
//! cert-manager or podvault Secret is mounted), and reloaded when the files change, without a
//! restart and without dropping connections: each new TLS handshake takes the current
//! certificate, while established connections keep theirs.
//!
//! Without cert-manager, [`builtin`] makes and renews the certificates itself.

pub mod builtin;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::crypto::ring::default_provider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, version};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Problems with the certificate files, and making or storing the built-in ones.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file holds no usable certificate or key.
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    /// TLS settings could not be built.
    #[error("TLS settings: {0}")]
    Tls(#[source] rustls::Error),
    /// rcgen could not make a key or certificate.
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// The API server refused or failed a request.
    #[error("{what}: {source}")]
    Kube {
        /// What was being done.
        what: String,
        /// The API's error.
        source: kube::Error,
    },
    /// The certificate files could not be written.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The Secret changed under us several times in a row.
    #[error("Secret {0} kept changing while it was being renewed; will retry")]
    Contended(String),
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// The certificate chain and key in PEM form, checked to belong together.
pub fn parse(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert_path: &Path,
    key_path: &Path,
) -> Result<CertifiedKey, Error> {
    let invalid = |path: &Path, message: String| Error::Invalid {
        path: path.to_path_buf(),
        message,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(cert_path, format!("not a PEM certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(invalid(cert_path, "holds no certificate".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| invalid(key_path, format!("not a PEM private key: {e}")))?;
    let provider = default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| invalid(key_path, format!("unusable private key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| {
        invalid(
            key_path,
            format!(
                "does not match the certificate in {}: {e}",
                cert_path.display()
            ),
        )
    })?;
    Ok(certified)
}

/// Loads `tls.crt` and `tls.key`.
pub fn load(cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, Error> {
    parse(&read(cert_path)?, &read(key_path)?, cert_path, key_path)
}

/// The current certificate, swapped when its files change.
#[derive(Debug)]
pub struct Reloader {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<(Arc<CertifiedKey>, blake3::Hash)>,
}

fn fingerprint(cert: &[u8], key: &[u8]) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    h.update(cert);
    h.update(b"\0");
    h.update(key);
    h.finalize()
}

impl Reloader {
    /// Loads the files once; fails if they are not a usable pair.
    pub fn new(
        cert_path: impl Into<PathBuf>,
        key_path: impl Into<PathBuf>,
    ) -> Result<Arc<Reloader>, Error> {
        let (cert_path, key_path) = (cert_path.into(), key_path.into());
        let (cert, key) = (read(&cert_path)?, read(&key_path)?);
        let certified = parse(&cert, &key, &cert_path, &key_path)?;
        Ok(Arc::new(Reloader {
            current: RwLock::new((Arc::new(certified), fingerprint(&cert, &key))),
            cert_path,
            key_path,
        }))
    }

    /// The certificate new handshakes get.
    pub fn current(&self) -> Arc<CertifiedKey> {
        match self.current.read() {
            Ok(c) => c.0.clone(),
            Err(p) => p.into_inner().0.clone(),
        }
    }

    /// Reads the files again; swaps the certificate if they changed and form a usable pair.
    /// Returns whether it changed. A bad new pair (half-written, mismatched) is an error
    /// and the old certificate stays.
    pub fn reload(&self) -> Result<bool, Error> {
        let (cert, key) = (read(&self.cert_path)?, read(&self.key_path)?);
        let print = fingerprint(&cert, &key);
        let same = match self.current.read() {
            Ok(c) => c.1 == print,
            Err(p) => p.into_inner().1 == print,
        };
        if same {
            return Ok(false);
        }
        let certified = parse(&cert, &key, &self.cert_path, &self.key_path)?;
        let mut slot = self.current.write().unwrap_or_else(|p| p.into_inner());
        *slot = (Arc::new(certified), print);
        Ok(true)
    }

    /// Checks the files every `every` until the process ends, logging each reload and
    /// each failed attempt (the old certificate keeps serving).
    pub fn watch(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match me.reload() {
                    Ok(true) => tracing::info!(
                        "serving certificate reloaded from {}",
                        me.cert_path.display()
                    ),
                    Ok(false) => {}
                    Err(e) => tracing::warn!("serving certificate not reloaded: {e}"),
                }
            }
        })
    }
}

impl ResolvesServerCert for Reloader {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// TLS 1.2 and 1.3 only, with the ring provider, HTTP/2 and HTTP/1.1 offered, and the
/// certificate from `reloader`.
pub fn server_config(reloader: Arc<Reloader>) -> Result<Arc<ServerConfig>, Error> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(default_provider()))
        .with_protocol_versions(&[&version::TLS13, &version::TLS12])
        .map_err(Error::Tls)?
        .with_no_client_auth()
        .with_cert_resolver(reloader);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
