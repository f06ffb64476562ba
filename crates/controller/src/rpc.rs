//! The controller's wire protocol: length-prefixed JSON frames over a byte stream.
//!
//! A frame is a `u32` big-endian length followed by that many bytes of JSON. Frames above
//! the configured maximum are refused before anything is allocated, and every read and
//! write runs under a timeout, so a peer can neither exhaust memory nor hang a task.

use std::time::Duration;

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::raft::TypeConfig;
use crate::types::{
    AlterInSync, ControllerError, ControllerStatus, GroupState, Heartbeat, HeartbeatReply,
};

/// A request to a controller node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// Raft log replication / heartbeat.
    AppendEntries(Box<AppendEntriesRequest<TypeConfig>>),
    /// Raft vote.
    Vote(VoteRequest<u64>),
    /// Raft snapshot chunk.
    InstallSnapshot(Box<InstallSnapshotRequest<TypeConfig>>),
    /// Broker heartbeat (leader only).
    Heartbeat(Heartbeat),
    /// Master's in-sync change (leader only).
    AlterInSync(AlterInSync),
    /// Status (any node).
    Status,
}

/// A controller node's answer, one per [`Request`] variant.
#[derive(Debug, Serialize, Deserialize)]
pub enum Response {
    /// Answer to [`Request::AppendEntries`].
    AppendEntries(Result<AppendEntriesResponse<u64>, RaftError<u64>>),
    /// Answer to [`Request::Vote`].
    Vote(Result<VoteResponse<u64>, RaftError<u64>>),
    /// Answer to [`Request::InstallSnapshot`].
    InstallSnapshot(Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>),
    /// Answer to [`Request::Heartbeat`].
    Heartbeat(Result<HeartbeatReply, ControllerError>),
    /// Answer to [`Request::AlterInSync`].
    AlterInSync(Result<GroupState, ControllerError>),
    /// Answer to [`Request::Status`].
    Status(Box<ControllerStatus>),
    /// The request could not be decoded or handled.
    Error(ControllerError),
}

/// Frame-level failures.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer closed the stream cleanly between frames.
    #[error("connection closed")]
    Closed,
    /// The frame is larger than allowed.
    #[error("frame of {len} bytes exceeds the {max} byte limit")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// A read or write took longer than the timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// I/O failure.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The payload is not the expected JSON.
    #[error("decode: {0}")]
    Decode(#[from] serde_json::Error),
}

impl From<FrameError> for ControllerError {
    fn from(e: FrameError) -> Self {
        ControllerError::Transport(e.to_string())
    }
}

/// Limits applied to every frame.
#[derive(Debug, Clone, Copy)]
pub struct FrameLimits {
    /// Largest frame accepted or sent.
    pub max_bytes: usize,
    /// Timeout of each frame read or write.
    pub timeout: Duration,
}

async fn timed<T>(
    t: Duration,
    f: impl Future<Output = std::io::Result<T>>,
) -> Result<T, FrameError> {
    match tokio::time::timeout(t, f).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(FrameError::Timeout(t)),
    }
}

/// Writes one frame.
pub async fn write_frame<W, T>(w: &mut W, msg: &T, limits: FrameLimits) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin + ?Sized,
    T: Serialize,
{
    let body = serde_json::to_vec(msg)?;
    if body.len() > limits.max_bytes {
        return Err(FrameError::TooLarge {
            len: body.len(),
            max: limits.max_bytes,
        });
    }
    let len = u32::try_from(body.len()).map_err(|_| FrameError::TooLarge {
        len: body.len(),
        max: limits.max_bytes,
    })?;
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(&body);
    timed(limits.timeout, async {
        w.write_all(&buf).await?;
        w.flush().await
    })
    .await
}

/// Reads one frame. With `idle`, waiting for the first byte is bounded by `idle` instead of
/// the frame timeout (servers wait long for the next request, not for its rest).
pub async fn read_frame<R, T>(
    r: &mut R,
    limits: FrameLimits,
    idle: Option<Duration>,
) -> Result<T, FrameError>
where
    R: AsyncRead + Unpin + ?Sized,
    T: DeserializeOwned,
{
    let mut len = [0u8; 4];
    let first = idle.unwrap_or(limits.timeout);
    let n = timed(first, r.read(&mut len)).await?;
    if n == 0 {
        return Err(FrameError::Closed);
    }
    if n < 4 {
        timed(limits.timeout, r.read_exact(&mut len[n..])).await?;
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > limits.max_bytes {
        return Err(FrameError::TooLarge {
            len,
            max: limits.max_bytes,
        });
    }
    let mut body = vec![0u8; len];
    timed(limits.timeout, r.read_exact(&mut body)).await?;
    Ok(serde_json::from_slice(&body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> FrameLimits {
        FrameLimits {
            max_bytes: 1024,
            timeout: Duration::from_millis(200),
        }
    }

    #[tokio::test]
    async fn roundtrip_and_limits() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        write_frame(&mut a, &Request::Status, limits())
            .await
            .unwrap();
        let r: Request = read_frame(&mut b, limits(), None).await.unwrap();
        assert!(matches!(r, Request::Status));
        // Oversized announced length is refused without reading the body.
        a.write_all(&(1u32 << 30).to_be_bytes()).await.unwrap();
        let e = read_frame::<_, Request>(&mut b, limits(), None)
            .await
            .unwrap_err();
        assert!(matches!(e, FrameError::TooLarge { .. }));
        // Garbage JSON is an error, not a panic.
        a.write_all(&3u32.to_be_bytes()).await.unwrap();
        a.write_all(b"{{{").await.unwrap();
        assert!(matches!(
            read_frame::<_, Request>(&mut b, limits(), None).await,
            Err(FrameError::Decode(_))
        ));
        // A stalled peer times out.
        a.write_all(&10u32.to_be_bytes()).await.unwrap();
        assert!(matches!(
            read_frame::<_, Request>(&mut b, limits(), None).await,
            Err(FrameError::Timeout(_))
        ));
        drop(a);
        let (_a2, mut b2) = tokio::io::duplex(64);
        drop(_a2);
        assert!(matches!(
            read_frame::<_, Request>(&mut b2, limits(), None).await,
            Err(FrameError::Closed)
        ));
    }
}
