//! Securing the replication port: optional TLS (tokio-rustls) and, when
//! `replication.secret` is set, a mutual challenge-response before any frame.
//!
//! Authentication (after TLS, when on):
//!
//! ```text
//! master → slave   "SMQAUTH1" nonce_m[32]
//! slave  → master  "SMQAUTH1" len:u8 broker_name slave_id:u64be nonce_s[32]
//!                  HMAC-SHA256(secret, nonce_m || broker_name || slave_id_be)
//! master → slave   0x00 HMAC-SHA256(secret, "master" || nonce_s || nonce_m)   (accepted)
//!                  0x01                                                       (refused; closed)
//! ```
//!
//! The master checks the broker group name and the MAC (constant time) and closes the
//! connection with a logged reason on anything else, before reading a single frame; the
//! slave checks the master's MAC, so it never follows a master that does not know the
//! secret. The nonces come from the thread-local CSPRNG.

use std::sync::Arc;

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use sofamq_server::tls::{self, TlsError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::ReplError;
use super::config::ReplicationConfig;

/// The byte stream a replication session runs over (TCP, or TLS over TCP).
pub trait ReplIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> ReplIo for T {}

/// A replication connection, plain or TLS.
pub type ReplStream = Box<dyn ReplIo>;

const MAGIC: &[u8; 8] = b"SMQAUTH1";
const NONCE: usize = 32;
const MAC: usize = 32;
const ACCEPTED: u8 = 0;
const REFUSED: u8 = 1;

/// TLS and authentication settings of one broker's replication port (both sides).
#[derive(Clone, Default)]
pub struct Security {
    acceptor: Option<TlsAcceptor>,
    connector: Option<TlsConnector>,
    server_name: Option<String>,
    secret: Option<Arc<[u8]>>,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security")
            .field("tls_server", &self.acceptor.is_some())
            .field("tls_client", &self.connector.is_some())
            .field("server_name", &self.server_name)
            .field("secret", &self.secret.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl Security {
    /// Loads the certificates named in `cfg` (errors name the file and the problem).
    pub fn from_config(cfg: &ReplicationConfig) -> Result<Self, TlsError> {
        let acceptor = match (&cfg.tls_cert, &cfg.tls_key) {
            (Some(c), Some(k)) => Some(TlsAcceptor::from(tls::server_config(c, k)?)),
            (None, None) => None,
            _ => {
                return Err(TlsError::Config(
                    "replication.tls_cert and replication.tls_key must be set together".into(),
                ));
            }
        };
        let connector = match &cfg.tls_ca {
            Some(ca) => Some(TlsConnector::from(tls::client_config(ca)?)),
            None => None,
        };
        if let Some(n) = &cfg.tls_server_name {
            tls::server_name(n)?;
        }
        let secret = match &cfg.secret {
            Some(s) if s.is_empty() => {
                return Err(TlsError::Config("replication.secret is empty".into()));
            }
            Some(s) => Some(Arc::from(s.as_bytes())),
            None => None,
        };
        Ok(Self {
            acceptor,
            connector,
            server_name: cfg.tls_server_name.clone(),
            secret,
        })
    }

    /// Whether sessions run over plain TCP (no TLS), so bytes may be written to the socket
    /// directly.
    pub fn plain(&self) -> bool {
        self.acceptor.is_none()
    }

    /// Master side of a new connection: TLS (when configured), then the challenge (when a
    /// secret is set). Returns the stream and the authenticated slave id, if any.
    pub async fn accept<S>(
        &self,
        sock: S,
        broker_name: &str,
    ) -> Result<(ReplStream, Option<u64>), ReplError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut io: ReplStream = match &self.acceptor {
            Some(a) => Box::new(
                a.accept(sock)
                    .await
                    .map_err(|e| ReplError::Protocol(format!("TLS handshake failed: {e}")))?,
            ),
            None => Box::new(sock),
        };
        let id = match &self.secret {
            Some(secret) => Some(challenge(&mut io, secret, broker_name).await?),
            None => None,
        };
        Ok((io, id))
    }

    /// Slave side: TLS towards `master` (`host:port`) when configured, then the answer to
    /// the master's challenge when a secret is set.
    pub async fn connect<S>(
        &self,
        sock: S,
        master: &str,
        broker_name: &str,
        slave_id: u64,
    ) -> Result<ReplStream, ReplError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut io: ReplStream = match &self.connector {
            Some(c) => {
                let name = self
                    .server_name
                    .as_deref()
                    .unwrap_or_else(|| host_of(master));
                let name =
                    tls::server_name(name).map_err(|e| ReplError::Protocol(e.to_string()))?;
                Box::new(c.connect(name, sock).await.map_err(|e| {
                    ReplError::Protocol(format!("TLS handshake with master {master} failed: {e}"))
                })?)
            }
            None => Box::new(sock),
        };
        if let Some(secret) = &self.secret {
            answer(&mut io, secret, broker_name, slave_id).await?;
        }
        Ok(io)
    }
}

/// The host of `host:port` or `[v6]:port`.
fn host_of(addr: &str) -> &str {
    let host = match addr.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => addr,
    };
    host.trim_start_matches('[').trim_end_matches(']')
}

fn mac(secret: &[u8], parts: &[&[u8]]) -> Hmac<Sha256> {
    // HMAC takes keys of any length.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    for p in parts {
        m.update(p);
    }
    m
}

fn refused(reason: &str) -> ReplError {
    ReplError::Protocol(format!("authentication refused: {reason}"))
}

/// Master: sends the challenge, checks the answer, answers the slave's nonce.
async fn challenge(
    io: &mut ReplStream,
    secret: &[u8],
    broker_name: &str,
) -> Result<u64, ReplError> {
    let mut nonce = [0u8; NONCE];
    rand::rng().fill_bytes(&mut nonce);
    let mut hello = Vec::with_capacity(MAGIC.len() + NONCE);
    hello.extend_from_slice(MAGIC);
    hello.extend_from_slice(&nonce);
    io.write_all(&hello).await?;
    io.flush().await?;

    let mut head = [0u8; 9];
    io.read_exact(&mut head).await?;
    if &head[..8] != MAGIC {
        let _ = io.write_all(&[REFUSED]).await;
        return Err(refused(
            "the slave sent no authentication answer (is replication.secret set on it?)",
        ));
    }
    let name_len = usize::from(head[8]);
    let mut rest = vec![0u8; name_len + 8 + NONCE + MAC];
    io.read_exact(&mut rest).await?;
    let (name, rest) = rest.split_at(name_len);
    let (id, rest) = rest.split_at(8);
    let (slave_nonce, their_mac) = rest.split_at(NONCE);
    let slave_id = u64::from_be_bytes(id.try_into().unwrap_or_default());
    let ok = mac(secret, &[&nonce, name, id])
        .verify_slice(their_mac)
        .is_ok();
    let reason = if !ok {
        Some(format!(
            "slave {}/{slave_id} answered the challenge wrongly (wrong replication.secret)",
            String::from_utf8_lossy(name)
        ))
    } else if name != broker_name.as_bytes() {
        Some(format!(
            "slave of group {:?} on the port of group {broker_name:?}",
            String::from_utf8_lossy(name)
        ))
    } else {
        None
    };
    if let Some(reason) = reason {
        let _ = io.write_all(&[REFUSED]).await;
        let _ = io.flush().await;
        return Err(refused(&reason));
    }
    let proof = mac(secret, &[b"master", slave_nonce, &nonce])
        .finalize()
        .into_bytes();
    let mut reply = Vec::with_capacity(1 + MAC);
    reply.push(ACCEPTED);
    reply.extend_from_slice(&proof);
    io.write_all(&reply).await?;
    io.flush().await?;
    Ok(slave_id)
}

/// Slave: answers the master's challenge and checks the master's proof.
async fn answer(
    io: &mut ReplStream,
    secret: &[u8],
    broker_name: &str,
    slave_id: u64,
) -> Result<(), ReplError> {
    let name = broker_name.as_bytes();
    let name_len = u8::try_from(name.len())
        .map_err(|_| ReplError::Protocol("broker name longer than 255 bytes".into()))?;
    let mut head = [0u8; 8 + NONCE];
    io.read_exact(&mut head).await?;
    if &head[..8] != MAGIC {
        return Err(refused(
            "the master sent no challenge (is replication.secret set on it?)",
        ));
    }
    let nonce = &head[8..];
    let mut mine = [0u8; NONCE];
    rand::rng().fill_bytes(&mut mine);
    let id = slave_id.to_be_bytes();
    let tag = mac(secret, &[nonce, name, &id]).finalize().into_bytes();
    let mut out = Vec::with_capacity(9 + name.len() + 8 + NONCE + MAC);
    out.extend_from_slice(MAGIC);
    out.push(name_len);
    out.extend_from_slice(name);
    out.extend_from_slice(&id);
    out.extend_from_slice(&mine);
    out.extend_from_slice(&tag);
    io.write_all(&out).await?;
    io.flush().await?;

    let mut status = [0u8; 1];
    io.read_exact(&mut status).await.map_err(|e| {
        refused(&format!(
            "the master closed the connection ({e}): wrong secret?"
        ))
    })?;
    if status[0] != ACCEPTED {
        return Err(refused(
            "the master refused this slave's answer (wrong replication.secret or broker name)",
        ));
    }
    let mut proof = [0u8; MAC];
    io.read_exact(&mut proof).await?;
    mac(secret, &[b"master", &mine, nonce])
        .verify_slice(&proof)
        .map_err(|_| refused("the master does not know the secret"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    fn cfg(secret: Option<&str>) -> ReplicationConfig {
        ReplicationConfig {
            secret: secret.map(str::to_string),
            ..ReplicationConfig::default()
        }
    }

    async fn pair(
        master: &Security,
        slave: &Security,
        slave_group: &str,
    ) -> (Result<Option<u64>, String>, Result<(), String>) {
        let (a, b) = tokio::io::duplex(4096);
        let m = master.clone();
        let s = slave.clone();
        let group = slave_group.to_string();
        let (mr, sr) = tokio::join!(
            async move {
                let r = m.accept(a, "broker-a").await;
                match r {
                    Ok((mut io, id)) => {
                        // Prove the stream works after the handshake.
                        io.write_all(b"ok").await.unwrap();
                        io.flush().await.unwrap();
                        Ok(id)
                    }
                    Err(e) => Err(e.to_string()),
                }
            },
            async move {
                match s.connect(b, "localhost:1", &group, 7).await {
                    Ok(mut io) => {
                        let mut buf = [0u8; 2];
                        io.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
                        assert_eq!(&buf, b"ok");
                        Ok(())
                    }
                    Err(e) => Err(e.to_string()),
                }
            }
        );
        (mr, sr)
    }

    #[tokio::test]
    async fn the_secret_must_match_on_both_sides() {
        let good = Security::from_config(&cfg(Some("s3cret"))).unwrap();
        let bad = Security::from_config(&cfg(Some("guess"))).unwrap();
        let none = Security::from_config(&cfg(None)).unwrap();

        let (m, s) = pair(&good, &good, "broker-a").await;
        assert_eq!(m.unwrap(), Some(7));
        s.unwrap();

        let (m, s) = pair(&good, &bad, "broker-a").await;
        assert!(m.unwrap_err().contains("wrong replication.secret"));
        assert!(s.unwrap_err().contains("authentication refused"));

        // Right secret, wrong group.
        let (m, s) = pair(&good, &good, "broker-b").await;
        assert!(m.unwrap_err().contains("group"));
        assert!(s.is_err());

        // A master that does not know the secret cannot impersonate one that does.
        let (a, b) = tokio::io::duplex(4096);
        let impostor = async move {
            let mut io: ReplStream = Box::new(a);
            let _ = challenge(&mut io, b"other", "broker-a").await;
        };
        let slave = good.connect(b, "localhost:1", "broker-a", 7);
        let ((), r) = tokio::join!(impostor, slave);
        assert!(r.is_err());

        // No secret on the slave: the master refuses before reading any frame.
        let (a, mut b) = tokio::io::duplex(4096);
        let master = good.accept(a, "broker-a");
        let slave = async move {
            b.write_all(b"SQMF....not an answer....").await.unwrap();
            let mut sink = Vec::new();
            let _ = b.read_to_end(&mut sink).await;
        };
        let (r, ()) = tokio::join!(master, slave);
        assert!(
            r.err()
                .unwrap()
                .to_string()
                .contains("no authentication answer")
        );

        // Nothing set: nothing exchanged.
        let (m, s) = pair(&none, &none, "broker-a").await;
        assert_eq!(m.unwrap(), None);
        s.unwrap();
    }

    fn certs(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        let (c, k, a) = (
            dir.join("server.pem"),
            dir.join("server.key"),
            dir.join("ca.pem"),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        std::fs::write(&a, ca_cert.pem()).unwrap();
        (c, k, a)
    }

    #[tokio::test]
    async fn tls_and_secret_together() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k, a) = certs(dir.path());
        let master = Security::from_config(&ReplicationConfig {
            tls_cert: Some(c.clone()),
            tls_key: Some(k.clone()),
            secret: Some("s".into()),
            ..ReplicationConfig::default()
        })
        .unwrap();
        let slave = Security::from_config(&ReplicationConfig {
            tls_ca: Some(a.clone()),
            secret: Some("s".into()),
            ..ReplicationConfig::default()
        })
        .unwrap();
        let (m, s) = pair(&master, &slave, "broker-a").await;
        assert_eq!(m.unwrap(), Some(7));
        s.unwrap();

        // The wrong expected name fails the handshake on both sides.
        let wrong = Security::from_config(&ReplicationConfig {
            tls_ca: Some(a),
            tls_server_name: Some("other.example".into()),
            secret: Some("s".into()),
            ..ReplicationConfig::default()
        })
        .unwrap();
        let (m, s) = pair(&master, &wrong, "broker-a").await;
        assert!(m.unwrap_err().contains("TLS handshake failed"));
        assert!(s.unwrap_err().contains("TLS handshake with master"));

        // Half-configured TLS and an empty secret are refused at load.
        let half = ReplicationConfig {
            tls_cert: Some(c),
            ..ReplicationConfig::default()
        };
        assert!(Security::from_config(&half).is_err());
        assert!(Security::from_config(&cfg(Some(""))).is_err());
    }

    #[test]
    fn host_of_addresses() {
        assert_eq!(host_of("localhost:10912"), "localhost");
        assert_eq!(host_of("10.0.0.1:1"), "10.0.0.1");
        assert_eq!(host_of("[::1]:1"), "::1");
        assert_eq!(host_of("name"), "name");
    }
}
