//! `mqtts://`: TLS toward the broker with rustls (ring provider), server
//! verification against a CA file (or the system bundle), and an optional
//! client certificate.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::connection::{Connector, Transport};

/// The CA bundle of Debian and Raspberry Pi OS, used when no CA file is
/// configured.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Why TLS cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{what} {path}: {reason}")]
    File {
        /// Which file (`broker.ca_file`, ...).
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The host is not a valid TLS server name.
    #[error("`{0}` is not a valid TLS server name")]
    ServerName(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// TLS settings of the upstream connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// CA certificates (PEM) to verify the broker; default: the system
    /// bundle.
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM), for brokers that require one.
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub key_file: Option<PathBuf>,
}

fn file_error(what: &'static str, path: &Path, reason: impl ToString) -> TlsError {
    TlsError::File { what, path: path.to_owned(), reason: reason.to_string() }
}

fn certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(what, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(what, path, e))?;
    if certs.is_empty() {
        return Err(file_error(what, path, "no certificate in the file"));
    }
    Ok(certs)
}

/// A TLS client certificate chain and its key, loaded from PEM files.
#[derive(Clone)]
pub struct ClientCert {
    /// The certificate file, for logs.
    pub name: String,
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
}

impl ClientCert {
    /// Loads a certificate chain and its private key.
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Self, TlsError> {
        let chain = certs("cert_file", cert_file)?;
        let key = PrivateKeyDer::from_pem_file(key_file)
            .map_err(|e| file_error("key_file", key_file, e))?;
        Ok(Self { name: cert_file.display().to_string(), chain, key: Arc::new(key) })
    }
}

impl PartialEq for ClientCert {
    fn eq(&self, other: &Self) -> bool {
        self.chain == other.chain
    }
}

impl Eq for ClientCert {}

impl std::fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClientCert({})", self.name)
    }
}

/// TLS over TCP to one broker.
pub struct TlsConnector {
    addr: String,
    sources: Arc<super::connection::SourceAddresses>,
    name: ServerName<'static>,
    inner: tokio_rustls::TlsConnector,
    roots: Arc<rustls::RootCertStore>,
}

impl TlsConnector {
    /// Makes the connections from these local addresses, in turn.
    pub fn with_sources(mut self, sources: Arc<super::connection::SourceAddresses>) -> Self {
        self.sources = sources;
        self
    }

    /// A connector to `host:port`.
    pub fn new(host: &str, port: u16, settings: &TlsSettings) -> Result<Self, TlsError> {
        let ca = settings.ca_file.clone().unwrap_or_else(|| PathBuf::from(SYSTEM_CA_BUNDLE));
        let mut roots = rustls::RootCertStore::empty();
        for cert in certs("broker.ca_file", &ca)? {
            roots.add(cert).map_err(|e| file_error("broker.ca_file", &ca, e))?;
        }
        let roots = Arc::new(roots);
        let config = match (&settings.cert_file, &settings.key_file) {
            (Some(cert), Some(key)) => {
                let chain = certs("broker.cert_file", cert)?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| file_error("broker.key_file", key, e))?;
                Self::builder(&roots)?.with_client_auth_cert(chain, key)?
            }
            (None, None) => Self::builder(&roots)?.with_no_client_auth(),
            (Some(cert), None) => {
                return Err(file_error("broker.cert_file", cert, "needs broker.key_file too"))
            }
            (None, Some(key)) => {
                return Err(file_error("broker.key_file", key, "needs broker.cert_file too"))
            }
        };
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(bare.to_owned())
            .map_err(|_| TlsError::ServerName(bare.to_owned()))?;
        Ok(Self {
            sources: Arc::default(),
            addr: format!("{host}:{port}"),
            name,
            inner: tokio_rustls::TlsConnector::from(Arc::new(config)),
            roots,
        })
    }

    fn builder(
        roots: &Arc<rustls::RootCertStore>,
    ) -> Result<
        rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>,
        TlsError,
    > {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Ok(rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots.clone()))
    }
}

impl Connector for TlsConnector {
    fn connect<'a>(
        &'a self,
        cert: Option<&'a ClientCert>,
    ) -> Pin<Box<dyn Future<Output = io::Result<Transport>> + Send + 'a>> {
        Box::pin(async move {
            let connector = match cert {
                None => self.inner.clone(),
                Some(c) => {
                    let config = Self::builder(&self.roots)
                        .and_then(|b| {
                            Ok(b.with_client_auth_cert(c.chain.clone(), c.key.clone_key())?)
                        })
                        .map_err(|e| io::Error::other(e.to_string()))?;
                    tokio_rustls::TlsConnector::from(Arc::new(config))
                }
            };
            let tcp = self.sources.connect(&self.addr).await?;
            tcp.set_nodelay(true)?;
            // The handshake runs here; the driver then moves the records
            // itself over the same stream.
            let tls = connector.connect(self.name.clone(), tcp).await?;
            let (tcp, session) = tls.into_inner();
            Ok(Transport { tcp, tls: Some(session) })
        })
    }

    fn describe(&self) -> String {
        format!("mqtts://{}", self.addr)
    }
}
