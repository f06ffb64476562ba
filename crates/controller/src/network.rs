//! Transport: pluggable stream connector/acceptor (tokio TCP in production, a simulator's
//! streams in tests), a request/response [`Channel`] over one connection, and openraft's
//! network built on it.

use std::future::Future;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::sync::Arc;

use openraft::BasicNode;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::raft::TypeConfig;
use crate::rpc::{
    FrameError, FrameLimits, MIN_VERSION, Request, Response, read_frame, write_frame,
};
use crate::types::ControllerError;

/// A bidirectional byte stream (TCP, or a simulator's stream).
pub trait AsyncStream: AsyncRead + AsyncWrite + Send + Sync + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin> AsyncStream for T {}

/// A boxed future, for object-safe async traits.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Opens streams to addresses.
pub trait Connector: Send + Sync + 'static {
    /// Connects to `addr` (`host:port`).
    fn connect<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, io::Result<Box<dyn AsyncStream>>>;
}

/// Production connector: tokio TCP with `TCP_NODELAY`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpConnector;

impl Connector for TcpConnector {
    fn connect<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, io::Result<Box<dyn AsyncStream>>> {
        Box::pin(async move {
            let s = tokio::net::TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            Ok(Box::new(s) as Box<dyn AsyncStream>)
        })
    }
}

/// An accepted stream, its peer's description, and a duplicate of its descriptor when it is
/// an OS socket.
pub type Accepted = (Box<dyn AsyncStream>, String, Option<OwnedFd>);

/// Accepts incoming streams (what [`crate::serve_with`] consumes).
pub trait Acceptor: Send + 'static {
    /// Waits for the next connection; returns it with a peer description for logs.
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(Box<dyn AsyncStream>, String)>>;

    /// [`Acceptor::accept`], with a duplicate of the connection's descriptor when it is an
    /// OS socket (a simulator's stream has none), for writes made outside the runtime.
    fn accept_with_fd(&mut self) -> BoxFuture<'_, io::Result<Accepted>> {
        Box::pin(async move {
            let (s, peer) = self.accept().await?;
            Ok((s, peer, None))
        })
    }
}

impl Acceptor for tokio::net::TcpListener {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(Box<dyn AsyncStream>, String)>> {
        Box::pin(async move {
            let (s, peer) = tokio::net::TcpListener::accept(self).await?;
            if let Err(e) = s.set_nodelay(true) {
                tracing::debug!(error = %e, "set_nodelay failed");
            }
            Ok((Box::new(s) as Box<dyn AsyncStream>, peer.to_string()))
        })
    }

    fn accept_with_fd(&mut self) -> BoxFuture<'_, io::Result<Accepted>> {
        Box::pin(async move {
            let (s, peer) = tokio::net::TcpListener::accept(self).await?;
            if let Err(e) = s.set_nodelay(true) {
                tracing::debug!(error = %e, "set_nodelay failed");
            }
            let fd = s.as_fd().try_clone_to_owned()?;
            Ok((
                Box::new(s) as Box<dyn AsyncStream>,
                peer.to_string(),
                Some(fd),
            ))
        })
    }
}

/// One cached connection to one address, used for sequential request/response calls.
pub struct Channel {
    addr: String,
    connector: Arc<dyn Connector>,
    limits: FrameLimits,
    /// The open connection and the protocol version it speaks.
    conn: Option<(Box<dyn AsyncStream>, u8)>,
    /// The server answered a Hello as a build before negotiation does: speak version 1
    /// without one until a call fails (it may come back upgraded).
    legacy: bool,
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Could not connect.
    #[error("connect {addr}: {source}")]
    Connect {
        /// Target.
        addr: String,
        /// Cause.
        source: io::Error,
    },
    /// Connected, but the exchange failed.
    #[error("{addr}: {source}")]
    Frame {
        /// Target.
        addr: String,
        /// Cause.
        source: FrameError,
    },
    /// The server refused the connection's Hello (no common protocol version).
    #[error("{addr}: {reason}")]
    Refused {
        /// Target.
        addr: String,
        /// Its answer.
        reason: String,
    },
}

impl Channel {
    /// A channel to `addr` (connects lazily).
    pub fn new(addr: String, connector: Arc<dyn Connector>, limits: FrameLimits) -> Self {
        Self {
            addr,
            connector,
            limits,
            conn: None,
            legacy: false,
        }
    }

    /// The target address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    async fn connect(&self) -> Result<Box<dyn AsyncStream>, CallError> {
        let fut = self.connector.connect(&self.addr);
        match tokio::time::timeout(self.limits.timeout, fut).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(source)) => Err(CallError::Connect {
                addr: self.addr.clone(),
                source,
            }),
            Err(_) => Err(CallError::Connect {
                addr: self.addr.clone(),
                source: io::Error::new(io::ErrorKind::TimedOut, "connect timed out"),
            }),
        }
    }

    /// Connects and negotiates the protocol version (see [`crate::rpc`]).
    async fn open(&mut self) -> Result<(Box<dyn AsyncStream>, u8), CallError> {
        let mut conn = self.connect().await?;
        if self.legacy {
            return Ok((conn, MIN_VERSION));
        }
        let (min, max) = self.limits.versions;
        let answer = async {
            write_frame(
                &mut conn,
                &Request::Hello { min, max },
                self.limits,
                MIN_VERSION,
            )
            .await?;
            read_frame::<_, Response>(&mut conn, self.limits, None, MIN_VERSION).await
        }
        .await
        .map_err(|source| CallError::Frame {
            addr: self.addr.clone(),
            source,
        })?;
        match answer {
            Response::Hello { version } if (min..=max).contains(&version) => Ok((conn, version)),
            // A build before negotiation could not decode the Hello (and hung up).
            Response::Error(ControllerError::Transport(m)) if m.contains("unknown variant") => {
                tracing::debug!(addr = %self.addr, "controller speaks version 1 only");
                self.legacy = true;
                Ok((self.connect().await?, MIN_VERSION))
            }
            Response::Error(e) => Err(CallError::Refused {
                addr: self.addr.clone(),
                reason: e.to_string(),
            }),
            other => Err(CallError::Refused {
                addr: self.addr.clone(),
                reason: format!("unexpected answer to Hello: {other:?}"),
            }),
        }
    }

    /// Sends `req` and waits for its response. Any failure drops the connection (the
    /// next call reconnects and negotiates again).
    pub async fn call(&mut self, req: &Request) -> Result<Response, CallError> {
        let (mut conn, version) = match self.conn.take() {
            Some(c) => c,
            None => match self.open().await {
                Ok(c) => c,
                Err(e) => {
                    self.legacy = false;
                    return Err(e);
                }
            },
        };
        let res = async {
            write_frame(&mut conn, req, self.limits, version).await?;
            read_frame::<_, Response>(&mut conn, self.limits, None, version).await
        }
        .await;
        match res {
            Ok(r) => {
                self.conn = Some((conn, version));
                Ok(r)
            }
            Err(source) => {
                self.legacy = false;
                Err(CallError::Frame {
                    addr: self.addr.clone(),
                    source,
                })
            }
        }
    }

    /// The protocol version of the open connection, if one is open.
    pub fn version(&self) -> Option<u8> {
        self.conn.as_ref().map(|(_, v)| *v)
    }
}

/// openraft's network factory over [`Channel`]s.
pub struct Network {
    connector: Arc<dyn Connector>,
    limits: FrameLimits,
}

impl Network {
    /// A factory dialing with `connector`.
    pub fn new(connector: Arc<dyn Connector>, limits: FrameLimits) -> Self {
        Self { connector, limits }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> PeerClient {
        PeerClient {
            target,
            chan: Channel::new(node.addr.clone(), self.connector.clone(), self.limits),
        }
    }
}

/// openraft's client to one peer.
pub struct PeerClient {
    target: u64,
    chan: Channel,
}

type RpcErr<E = openraft::error::Infallible> = RPCError<u64, BasicNode, RaftError<u64, E>>;

impl PeerClient {
    async fn exchange<E: std::error::Error>(
        &mut self,
        req: Request,
        option: &RPCOption,
    ) -> Result<Response, RpcErr<E>> {
        let ttl = option.hard_ttl();
        match tokio::time::timeout(ttl, self.chan.call(&req)).await {
            Err(_) => Err(RPCError::Unreachable(Unreachable::new(&io::Error::new(
                io::ErrorKind::TimedOut,
                format!("rpc to {} timed out", self.chan.addr()),
            )))),
            Ok(Err(e @ CallError::Connect { .. })) => {
                Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
            Ok(Err(e)) => Err(RPCError::Network(NetworkError::new(&e))),
            Ok(Ok(r)) => Ok(r),
        }
    }

    fn unexpected<E: std::error::Error>(&self, r: &Response) -> RpcErr<E> {
        let e = io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected response {r:?}"),
        );
        RPCError::Network(NetworkError::new(&e))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RpcErr> {
        match self
            .exchange(Request::AppendEntries(Box::new(rpc)), &option)
            .await?
        {
            Response::AppendEntries(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(self.unexpected(&other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RpcErr<InstallSnapshotError>> {
        match self
            .exchange(Request::InstallSnapshot(Box::new(rpc)), &option)
            .await?
        {
            Response::InstallSnapshot(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(self.unexpected(&other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RpcErr> {
        match self.exchange(Request::Vote(rpc), &option).await? {
            Response::Vote(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(self.unexpected(&other)),
        }
    }
}
