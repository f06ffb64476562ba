//! Credentials and TLS for the SDK: requests are signed the RocketMQ 5 way
//! (`authorization: MQv2-HMAC-SHA1 Credential=AK, SignedHeaders=x-mq-date-time,
//! Signature=hex(HMAC-SHA1(SK, x-mq-date-time))`), and channels can use TLS.

use std::fmt;
use std::path::PathBuf;

use hmac::{Hmac, Mac};
use sha1::Sha1;

use crate::error::ClientError;

/// An access key and its secret. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The access key (the user's name).
    pub access_key: String,
    /// The secret key requests are signed with.
    pub secret_key: String,
}

impl Credentials {
    /// Credentials from an access key and its secret.
    pub fn new(access_key: impl Into<String>, secret_key: impl Into<String>) -> Self {
        Self {
            access_key: access_key.into(),
            secret_key: secret_key.into(),
        }
    }

    /// The `authorization` header value for a request whose
    /// `x-mq-date-time` header is `date_time`.
    pub fn authorization(&self, date_time: &str) -> String {
        format!(
            "MQv2-HMAC-SHA1 Credential={}, SignedHeaders=x-mq-date-time, Signature={}",
            self.access_key,
            hmac_sha1_hex(&self.secret_key, date_time.as_bytes())
        )
    }

    /// Signs `req` now: its `x-mq-date-time` and `authorization` headers (for callers that
    /// sign outside the SDK's clients, such as admin tools).
    pub fn sign<T>(&self, req: &mut tonic::Request<T>) -> Result<(), tonic::Status> {
        let date = crate::format_date_time(std::time::SystemTime::now());
        let auth = self
            .authorization(&date)
            .parse()
            .map_err(|_| tonic::Status::invalid_argument("access key is not a valid header"))?;
        if let Ok(d) = date.parse() {
            req.metadata_mut().insert("x-mq-date-time", d);
        }
        req.metadata_mut().insert("authorization", auth);
        Ok(())
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .finish()
    }
}

fn hmac_sha1_hex(secret: &str, data: &[u8]) -> String {
    match Hmac::<Sha1>::new_from_slice(secret.as_bytes()) {
        Ok(mut mac) => {
            mac.update(data);
            hex::encode(mac.finalize().into_bytes())
        }
        // HMAC accepts keys of every length; unreachable, but never panic.
        Err(_) => String::new(),
    }
}

/// TLS towards the servers (NameServers and brokers alike): trust the PEM CA
/// certificate at `ca_path`, or the system's root certificates when it is `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsOptions {
    /// PEM file with the CA (or self-signed server) certificate to trust; `None`: the
    /// operating system's trusted roots.
    pub ca_path: Option<PathBuf>,
    /// Name the server certificate must carry; defaults to the host of the address.
    pub domain: Option<String>,
}

impl TlsOptions {
    /// TLS trusting the CA certificate in `ca_path`.
    pub fn new(ca_path: impl Into<PathBuf>) -> Self {
        Self {
            ca_path: Some(ca_path.into()),
            domain: None,
        }
    }

    /// TLS trusting the operating system's root certificates.
    pub fn system_roots() -> Self {
        Self {
            ca_path: None,
            domain: None,
        }
    }

    /// Expects the servers' certificates to carry `domain` instead of the host of the
    /// address dialled (e.g. when connecting by IP address).
    pub fn with_domain(mut self, domain: impl Into<String>) -> Self {
        self.domain = Some(domain.into());
        self
    }

    /// The tonic client TLS configuration (reads and checks the CA file).
    pub(crate) fn load(&self) -> Result<tonic::transport::ClientTlsConfig, ClientError> {
        let tls = tonic::transport::ClientTlsConfig::new();
        let mut tls = match &self.ca_path {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    ClientError::Config(format!("reading TLS CA {}: {e}", path.display()))
                })?;
                if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                    return Err(ClientError::Config(format!(
                        "TLS CA {}: no PEM CERTIFICATE block found",
                        path.display()
                    )));
                }
                tls.ca_certificate(tonic::transport::Certificate::from_pem(pem))
            }
            None => tls.with_native_roots(),
        };
        if let Some(d) = &self.domain {
            tls = tls.domain_name(d.clone());
        }
        Ok(tls)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha1_of_the_date_header() {
        let c = Credentials::new("ak", "Jefe");
        // RFC 2202 test case 2.
        let h = c.authorization("what do ya want for nothing?");
        assert_eq!(
            h,
            "MQv2-HMAC-SHA1 Credential=ak, SignedHeaders=x-mq-date-time, \
             Signature=effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"
        );
        assert!(!format!("{c:?}").contains("Jefe"));
    }
}
