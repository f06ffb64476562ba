//! TLS (rustls, ring provider) for the servers: the client gRPC port of the name
//! server and of brokers (`[tls] cert_path, key_path`), and the brokers' replication
//! port. Certificates and keys are PEM files; every failure names the file and what
//! is wrong with it, and is reported at start, not on the first connection.
//!
//! The gRPC servers accept through [`crate::net::incoming_limited`]; tonic applies its
//! `ServerTlsConfig` to `serve_with_incoming` streams too (the handshake runs after our
//! per-IP limit, so a slot is held during it).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// Longest a TLS handshake on a client port may take before the connection is closed.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest PEM file read (certificate chains and keys are a few KiB).
const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// The `[tls]` table: TLS on the client gRPC port when both paths are set, off when
/// neither is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain (leaf first).
    pub cert_path: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_path: Option<PathBuf>,
}

/// A TLS file or setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file cannot be read.
    #[error("cannot read TLS {what} {}: {source}", path.display())]
    Read {
        /// `certificate`, `private key` or `CA certificate`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is readable but holds no usable PEM item of the expected kind.
    #[error("invalid TLS {what} {}: {reason}", path.display())]
    Invalid {
        /// `certificate`, `private key` or `CA certificate`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The settings do not fit together (one path without the other, a key that does not
    /// match the certificate, a bad server name).
    #[error("invalid TLS configuration: {0}")]
    Config(String),
}

impl TlsConfig {
    /// TLS with this certificate chain and key.
    pub fn new(cert_path: impl Into<PathBuf>, key_path: impl Into<PathBuf>) -> Self {
        Self {
            cert_path: Some(cert_path.into()),
            key_path: Some(key_path.into()),
        }
    }

    /// Whether TLS is configured (both paths set).
    pub fn enabled(&self) -> bool {
        self.cert_path.is_some() && self.key_path.is_some()
    }

    /// Both paths, none, or an error when only one is set.
    pub fn paths(&self) -> Result<Option<(&Path, &Path)>, TlsError> {
        match (&self.cert_path, &self.key_path) {
            (Some(c), Some(k)) => Ok(Some((c, k))),
            (None, None) => Ok(None),
            (Some(_), None) => Err(TlsError::Config(
                "tls.cert_path is set but tls.key_path is not".into(),
            )),
            (None, Some(_)) => Err(TlsError::Config(
                "tls.key_path is set but tls.cert_path is not".into(),
            )),
        }
    }

    /// Loads and checks the files (PEM syntax, key matching the certificate).
    /// `Ok(None)` when TLS is off.
    pub fn validate(&self) -> Result<Option<Arc<rustls::ServerConfig>>, TlsError> {
        match self.paths()? {
            Some((c, k)) => server_config(c, k).map(Some),
            None => Ok(None),
        }
    }

    /// The tonic server TLS settings (HTTP/2 ALPN, handshake bounded by
    /// [`HANDSHAKE_TIMEOUT`]); `Ok(None)` when TLS is off.
    pub fn tonic_server(&self) -> Result<Option<tonic::transport::ServerTlsConfig>, TlsError> {
        let Some((cert, key)) = self.paths()? else {
            return Ok(None);
        };
        // Parse and match them here so that tonic never sees a bad file and the error
        // names the file.
        server_config(cert, key)?;
        let cert_pem = read(cert, "certificate")?;
        let key_pem = read(key, "private key")?;
        Ok(Some(
            tonic::transport::ServerTlsConfig::new()
                .identity(tonic::transport::Identity::from_pem(cert_pem, key_pem))
                .timeout(HANDSHAKE_TIMEOUT),
        ))
    }
}

/// TLS for a server's own connections to NameServers (a broker registering and
/// forwarding routes), e.g. `[namesrv_tls]` in the broker config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientTls {
    /// PEM CA certificate to trust; unset: the system's root certificates.
    pub ca_path: Option<PathBuf>,
    /// Name the server certificate must carry; defaults to the host dialled.
    pub server_name: Option<String>,
}

/// A lazily connecting endpoint for `addr` (`host:port`): `https` with `tls`, else `http`.
pub fn endpoint(
    addr: &str,
    tls: Option<&ClientTls>,
) -> Result<tonic::transport::Endpoint, TlsError> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let ep = tonic::transport::Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|e| TlsError::Config(format!("bad address {addr:?}: {e}")))?;
    let Some(tls) = tls else {
        return Ok(ep);
    };
    let mut t = tonic::transport::ClientTlsConfig::new();
    t = match &tls.ca_path {
        Some(p) => {
            // Checked here so that a bad file is reported by name.
            load_certs(p, "CA certificate")?;
            t.ca_certificate(tonic::transport::Certificate::from_pem(read(
                p,
                "CA certificate",
            )?))
        }
        None => t.with_native_roots(),
    };
    if let Some(n) = &tls.server_name {
        t = t.domain_name(n.clone());
    }
    ep.tls_config(t)
        .map_err(|e| TlsError::Config(format!("TLS towards {addr}: {e}")))
}

/// Adds TLS to a tonic server builder when `tls` is enabled.
pub fn apply<L>(
    builder: tonic::transport::Server<L>,
    tls: &TlsConfig,
) -> Result<tonic::transport::Server<L>, TlsError> {
    match tls.tonic_server()? {
        Some(t) => builder
            .tls_config(t)
            .map_err(|e| TlsError::Config(format!("tonic refused the TLS settings: {e}"))),
        None => Ok(builder),
    }
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    let err = |source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    };
    let len = std::fs::metadata(path).map_err(err)?.len();
    if len > MAX_PEM_BYTES {
        return Err(TlsError::Invalid {
            what,
            path: path.to_path_buf(),
            reason: format!("{len} bytes, more than the {MAX_PEM_BYTES} accepted"),
        });
    }
    std::fs::read(path).map_err(err)
}

/// Every certificate in the PEM file at `path` (at least one).
pub fn load_certs(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path, what)?;
    let invalid = |reason: String| TlsError::Invalid {
        what,
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(invalid("no CERTIFICATE block found".into()));
    }
    Ok(certs)
}

/// The private key in the PEM file at `path`.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path, "private key")?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Invalid {
        what: "private key",
        path: path.to_path_buf(),
        reason: match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "no PRIVATE KEY block (PKCS#8, RSA or EC) found".into()
            }
            e => format!("bad PEM: {e}"),
        },
    })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A rustls server configuration (no client certificates) for the chain at `cert` and
/// the key at `key`.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs = load_certs(cert, "certificate")?;
    let key_der = load_key(key)?;
    let cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| {
            TlsError::Config(format!(
                "key {} does not fit certificate {}: {e}",
                key.display(),
                cert.display()
            ))
        })?;
    Ok(Arc::new(cfg))
}

/// A rustls client configuration trusting only the CA certificate(s) in `ca`.
pub fn client_config(ca: &Path) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in load_certs(ca, "CA certificate")? {
        roots.add(c).map_err(|e| TlsError::Invalid {
            what: "CA certificate",
            path: ca.to_path_buf(),
            reason: e.to_string(),
        })?;
    }
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// `name` as the server name a certificate must carry (a DNS name or an IP address).
pub fn server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(name.to_string())
        .map_err(|e| TlsError::Config(format!("bad TLS server name {name:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
        (cert, key)
    }

    #[test]
    fn loads_a_pair_and_names_the_bad_file() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed(dir.path());
        assert!(TlsConfig::default().validate().unwrap().is_none());
        assert!(TlsConfig::new(&cert, &key).validate().unwrap().is_some());
        assert!(
            TlsConfig::new(&cert, &key)
                .tonic_server()
                .unwrap()
                .is_some()
        );
        client_config(&cert).unwrap();

        let missing = dir.path().join("missing.pem");
        let e = TlsConfig::new(&missing, &key).validate().unwrap_err();
        assert!(
            matches!(
                e,
                TlsError::Read {
                    what: "certificate",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("missing.pem"), "{e}");

        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "hello").unwrap();
        let e = TlsConfig::new(&garbage, &key).validate().unwrap_err();
        assert!(e.to_string().contains("no CERTIFICATE block"), "{e}");
        let e = TlsConfig::new(&cert, &garbage).validate().unwrap_err();
        assert!(e.to_string().contains("no PRIVATE KEY block"), "{e}");
        // The certificate given as key, and a key of another certificate.
        let e = TlsConfig::new(&cert, &cert).validate().unwrap_err();
        assert!(
            matches!(
                e,
                TlsError::Invalid {
                    what: "private key",
                    ..
                }
            ),
            "{e}"
        );
        let other = tempfile::tempdir().unwrap();
        let (_, key2) = self_signed(other.path());
        let e = TlsConfig::new(&cert, &key2).validate().unwrap_err();
        assert!(e.to_string().contains("does not fit"), "{e}");

        let half = TlsConfig {
            cert_path: Some(cert),
            key_path: None,
        };
        assert!(matches!(half.validate(), Err(TlsError::Config(_))));
        assert!(server_name("localhost").is_ok());
        assert!(server_name("127.0.0.1").is_ok());
        assert!(server_name("bad name!").is_err());
    }
}
