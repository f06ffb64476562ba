//! The controller's wire protocol: length-prefixed JSON frames over a byte stream.
//!
//! A frame is a `u32` big-endian length followed by that many bytes of JSON; from protocol
//! version 2 on, a CRC32C of those bytes (`u32` big-endian) follows. Frames above the
//! configured maximum are refused before anything is allocated, and every read and write
//! runs under a timeout, so a peer can neither exhaust memory nor hang a task.
//!
//! Versions are negotiated per connection, so nodes and brokers of two releases work
//! together during a rolling upgrade. A connection starts in version 1; the dialing side's
//! first request is [`Request::Hello`] with the versions it speaks, and the server answers
//! [`Response::Hello`] with the highest both speak ([`negotiate`]), after which both sides
//! frame in that version. A connection whose first request is anything else stays in
//! version 1 (a build before negotiation). A server of such a build answers the Hello with
//! a decode error and closes; the dialer then reconnects without one ([`crate::network`]).
//! Version 2 exists in every release but is offered by default only by a `next-proto`
//! build, the stand-in for the next release in the mixed-version upgrade test;
//! `protocol_max` caps what a node offers.

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

/// The lowest protocol version this code speaks (and the one every connection starts in).
pub const MIN_VERSION: u8 = 1;
/// The highest protocol version this code speaks (2: frames carry a CRC32C).
pub const MAX_VERSION: u8 = 2;
/// The highest version offered when `protocol_max` is unset: 1, or 2 in a `next-proto` build.
pub const DEFAULT_MAX_VERSION: u8 = if cfg!(feature = "next-proto") { 2 } else { 1 };

/// The version a connection speaks: the highest in both ranges, or why there is none.
pub fn negotiate(mine: (u8, u8), theirs: (u8, u8)) -> Result<u8, String> {
    negotiate_versions("controller", mine, theirs)
}

/// The highest version in both (lowest, highest) ranges of a `protocol`, or why there is
/// none (shared with the brokers' replication protocol).
pub fn negotiate_versions(protocol: &str, mine: (u8, u8), theirs: (u8, u8)) -> Result<u8, String> {
    let (lo, hi) = (mine.0.max(theirs.0), mine.1.min(theirs.1));
    if lo <= hi {
        Ok(hi)
    } else {
        Err(format!(
            "no common {protocol} protocol version: this side speaks {}..={}, the peer {}..={}",
            mine.0, mine.1, theirs.0, theirs.1
        ))
    }
}

/// A request to a controller node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// First request of a connection: the versions the dialer speaks (lowest, highest).
    Hello {
        /// Lowest.
        min: u8,
        /// Highest.
        max: u8,
    },
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
    /// Answer to [`Request::Hello`]: the version the connection speaks from now on.
    Hello {
        /// The chosen version.
        version: u8,
    },
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
    /// The frame's CRC32C does not match its bytes (version 2 and later).
    #[error("frame checksum mismatch")]
    BadCrc,
}

impl From<FrameError> for ControllerError {
    fn from(e: FrameError) -> Self {
        ControllerError::Transport(e.to_string())
    }
}

/// Limits applied to every frame, and the protocol versions offered.
#[derive(Debug, Clone, Copy)]
pub struct FrameLimits {
    /// Largest frame accepted or sent.
    pub max_bytes: usize,
    /// Timeout of each frame read or write.
    pub timeout: Duration,
    /// Protocol versions offered (lowest, highest).
    pub versions: (u8, u8),
}

impl FrameLimits {
    /// Limits offering this build's default versions.
    pub fn new(max_bytes: usize, timeout: Duration) -> Self {
        Self {
            max_bytes,
            timeout,
            versions: (MIN_VERSION, DEFAULT_MAX_VERSION),
        }
    }
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

/// Writes one frame in protocol `version`.
pub async fn write_frame<W, T>(
    w: &mut W,
    msg: &T,
    limits: FrameLimits,
    version: u8,
) -> Result<(), FrameError>
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
    let mut buf = Vec::with_capacity(8 + body.len());
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(&body);
    if version >= 2 {
        buf.extend_from_slice(&crc32c::crc32c(&body).to_be_bytes());
    }
    timed(limits.timeout, async {
        w.write_all(&buf).await?;
        w.flush().await
    })
    .await
}

/// Reads one frame in protocol `version`. With `idle`, waiting for the first byte is bounded
/// by `idle` instead of the frame timeout (servers wait long for the next request, not for
/// its rest).
pub async fn read_frame<R, T>(
    r: &mut R,
    limits: FrameLimits,
    idle: Option<Duration>,
    version: u8,
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
    let trailer = if version >= 2 { 4 } else { 0 };
    let mut body = vec![0u8; len + trailer];
    timed(limits.timeout, r.read_exact(&mut body)).await?;
    if trailer > 0 {
        let mut crc = [0u8; 4];
        crc.copy_from_slice(&body[len..]);
        body.truncate(len);
        if u32::from_be_bytes(crc) != crc32c::crc32c(&body) {
            return Err(FrameError::BadCrc);
        }
    }
    Ok(serde_json::from_slice(&body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> FrameLimits {
        FrameLimits::new(1024, Duration::from_millis(200))
    }

    #[tokio::test]
    async fn roundtrip_and_limits() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        write_frame(&mut a, &Request::Status, limits(), 1)
            .await
            .unwrap();
        let r: Request = read_frame(&mut b, limits(), None, 1).await.unwrap();
        assert!(matches!(r, Request::Status));
        // Oversized announced length is refused without reading the body.
        a.write_all(&(1u32 << 30).to_be_bytes()).await.unwrap();
        let e = read_frame::<_, Request>(&mut b, limits(), None, 1)
            .await
            .unwrap_err();
        assert!(matches!(e, FrameError::TooLarge { .. }));
        // Garbage JSON is an error, not a panic.
        a.write_all(&3u32.to_be_bytes()).await.unwrap();
        a.write_all(b"{{{").await.unwrap();
        assert!(matches!(
            read_frame::<_, Request>(&mut b, limits(), None, 1).await,
            Err(FrameError::Decode(_))
        ));
        // A stalled peer times out.
        a.write_all(&10u32.to_be_bytes()).await.unwrap();
        assert!(matches!(
            read_frame::<_, Request>(&mut b, limits(), None, 1).await,
            Err(FrameError::Timeout(_))
        ));
        drop(a);
        let (_a2, mut b2) = tokio::io::duplex(64);
        drop(_a2);
        assert!(matches!(
            read_frame::<_, Request>(&mut b2, limits(), None, 1).await,
            Err(FrameError::Closed)
        ));
    }

    #[tokio::test]
    async fn version_2_frames_carry_a_checksum_that_catches_a_flipped_bit() {
        assert_eq!(negotiate((1, 1), (1, 2)), Ok(1));
        assert_eq!(negotiate((1, 2), (1, 2)), Ok(2));
        assert!(negotiate((1, 1), (2, 2)).is_err());
        let (mut a, mut b) = tokio::io::duplex(4096);
        write_frame(&mut a, &Request::Status, limits(), 2)
            .await
            .unwrap();
        let r: Request = read_frame(&mut b, limits(), None, 2).await.unwrap();
        assert!(matches!(r, Request::Status));
        // The same frame with one bit of its JSON flipped.
        let mut raw = Vec::new();
        write_frame(&mut raw, &Request::Status, limits(), 2)
            .await
            .unwrap();
        raw[5] ^= 0x20;
        a.write_all(&raw).await.unwrap();
        assert!(matches!(
            read_frame::<_, Request>(&mut b, limits(), None, 2).await,
            Err(FrameError::BadCrc)
        ));
    }
}
