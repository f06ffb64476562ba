//! The wire: one request and one reply per TCP connection (turmoil's simulated TCP), each a
//! 4-byte length followed by serde_json. Every call has a deadline, so partitions and held
//! links end in an error, never a hang.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sofamq_controller::{AlterInSync, GroupState, Heartbeat, HeartbeatReply};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use turmoil::net::{TcpListener, TcpStream};

use crate::log::Rec;

/// The port every simulated server listens on.
pub const PORT: u16 = 9000;
const MAX_FRAME: usize = 1 << 20;

/// A request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Req {
    /// Broker → controller heartbeat.
    Heartbeat(Heartbeat),
    /// Master → controller in-sync change.
    AlterInSync(AlterInSync),
    /// Anyone → controller: the committed view.
    GetView,
    /// Producer → broker: store message `id`.
    Send {
        /// Unique message id.
        id: u64,
    },
    /// Slave → master: the slave's durable state; also its ack.
    Fetch {
        /// The slave's broker id.
        from: u64,
        /// Highest epoch the slave has seen.
        seen_epoch: u64,
        /// The slave's epoch history as `(epoch, start_offset)`.
        hist: Vec<(u64, u64)>,
        /// The slave's durable end.
        end: u64,
    },
}

/// A reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Resp {
    /// To a heartbeat.
    Heartbeat(HeartbeatReply),
    /// The committed view (to `GetView` and an accepted `AlterInSync`).
    View(GroupState),
    /// Not applied / not served.
    Refused(String),
    /// A send was stored and replicated as required: the receipt.
    SendOk {
        /// The epoch the acking master was in.
        epoch: u64,
        /// The acking broker's id.
        broker: u64,
    },
    /// Records for a slave.
    Fetch {
        /// The master's epoch.
        epoch: u64,
        /// The master's epoch history.
        hist: Vec<(u64, u64)>,
        /// The master's durable end.
        end: u64,
        /// Offset of the first record in `recs`.
        from: u64,
        /// Records from `from`.
        recs: Vec<Rec>,
    },
}

async fn write_frame<T: Serialize>(s: &mut TcpStream, v: &T) -> std::io::Result<()> {
    let body = serde_json::to_vec(v).map_err(std::io::Error::other)?;
    let len = u32::try_from(body.len()).map_err(std::io::Error::other)?;
    s.write_all(&len.to_le_bytes()).await?;
    s.write_all(&body).await?;
    s.flush().await
}

async fn read_frame<T: for<'de> Deserialize<'de>>(s: &mut TcpStream) -> std::io::Result<T> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::other("frame too large"));
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await?;
    serde_json::from_slice(&body).map_err(std::io::Error::other)
}

/// Calls `host` with `req`; `None` on any failure or after `deadline`.
pub async fn call(host: &str, req: &Req, deadline: Duration) -> Option<Resp> {
    let go = async {
        let mut s = TcpStream::connect((host, PORT)).await.ok()?;
        write_frame(&mut s, req).await.ok()?;
        read_frame::<Resp>(&mut s).await.ok()
    };
    tokio::time::timeout(deadline, go).await.ok().flatten()
}

/// Serves requests forever: one task per connection running `handle`.
pub async fn serve<H, F>(handle: H) -> std::io::Result<()>
where
    H: Fn(Req) -> F + Clone + 'static,
    F: Future<Output = Resp> + 'static,
{
    let listener = TcpListener::bind(("0.0.0.0", PORT)).await?;
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            continue;
        };
        let h = handle.clone();
        tokio::task::spawn_local(async move {
            let Ok(req) = read_frame::<Req>(&mut s).await else {
                return;
            };
            let resp = h(req).await;
            // The peer may be gone (partition, timeout): nothing to do about it.
            let _ = write_frame(&mut s, &resp).await;
        });
    }
}
