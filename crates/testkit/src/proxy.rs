//! A fault-injecting TCP proxy: listens on 127.0.0.1:0 and forwards every connection to one
//! target. The link's mode is switched at run time:
//!
//! * [`LinkMode::Pass`]: forward bytes both ways (the heal state).
//! * [`LinkMode::Drop`]: blackhole: accept and read, but discard everything both ways (the
//!   peers see a silent network; a later heal resumes a stream with a hole in it).
//! * [`LinkMode::Stall`]: stop forwarding (bytes wait in the kernel buffers; a heal delivers them).
//! * [`LinkMode::Cut`]: close every open connection and close new ones at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What a link does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkMode {
    /// Forward (healthy).
    Pass,
    /// Accept and read, forward nothing.
    Drop,
    /// Forward nothing, read nothing; bytes wait.
    Stall,
    /// Close open connections, close new ones.
    Cut,
}

#[derive(Debug, Clone, Copy)]
struct State {
    mode: LinkMode,
    /// Bumped on every cut: connections opened before it close.
    cuts: u64,
}

/// A running proxy. Dropping it stops accepting and closes every connection.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    target: SocketAddr,
    state: watch::Sender<State>,
    accepted: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// Starts a proxy on 127.0.0.1 (a free port) forwarding to `target`. Needs a tokio runtime.
    pub async fn start(target: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (state, rx) = watch::channel(State {
            mode: LinkMode::Pass,
            cuts: 0,
        });
        let accepted = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(accept_loop(listener, target, rx, accepted.clone()));
        Ok(Proxy {
            addr,
            target,
            state,
            accepted,
            task,
        })
    }

    /// The address clients dial.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address it forwards to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// The current mode.
    pub fn mode(&self) -> LinkMode {
        self.state.borrow().mode
    }

    /// Switches the link to `mode` (a `Cut` also closes every open connection).
    pub fn set(&self, mode: LinkMode) {
        self.state.send_modify(|s| {
            if mode == LinkMode::Cut {
                s.cuts += 1;
            }
            s.mode = mode;
        });
    }

    /// Back to [`LinkMode::Pass`].
    pub fn heal(&self) {
        self.set(LinkMode::Pass);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Close every connection, then stop accepting.
        self.set(LinkMode::Cut);
        self.task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    state: watch::Receiver<State>,
    accepted: Arc<AtomicU64>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        accepted.fetch_add(1, Ordering::Relaxed);
        let st = *state.borrow();
        if st.mode == LinkMode::Cut {
            drop(client);
            continue;
        }
        let _ = client.set_nodelay(true);
        tokio::spawn(connection(client, target, state.clone(), st.cuts));
    }
}

/// One proxied connection: dial the target (unless blackholed) and pump both directions until
/// either side closes or the link is cut.
async fn connection(
    client: TcpStream,
    target: SocketAddr,
    mut state: watch::Receiver<State>,
    cuts: u64,
) {
    // A blackholed or stalled link does not even reach the target until healed or cut.
    loop {
        let s = *state.borrow_and_update();
        if s.cuts != cuts || s.mode == LinkMode::Cut {
            return;
        }
        if s.mode == LinkMode::Pass {
            break;
        }
        if state.changed().await.is_err() {
            return;
        }
    }
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = tokio::spawn(pump(cr, sw, state.clone(), cuts));
    let down = tokio::spawn(pump(sr, cw, state, cuts));
    // When either direction ends, end the other (closing both sockets).
    let (a, b) = (up.abort_handle(), down.abort_handle());
    tokio::select! {
        _ = up => b.abort(),
        _ = down => a.abort(),
    }
}

fn cut(s: &State, cuts: u64) -> bool {
    s.cuts != cuts || s.mode == LinkMode::Cut
}

/// Copies `from` to `to` under the link's mode; returns when either side closes or on a cut.
async fn pump<R, W>(mut from: R, mut to: W, mut state: watch::Receiver<State>, cuts: u64)
where
    R: AsyncReadExt + Unpin,
    W: AsyncWriteExt + Unpin,
{
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // Stalled: read nothing until the mode changes.
        loop {
            let s = *state.borrow_and_update();
            if cut(&s, cuts) {
                return;
            }
            if s.mode != LinkMode::Stall {
                break;
            }
            if state.changed().await.is_err() {
                return;
            }
        }
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            r = state.changed() => {
                if r.is_err() {
                    return;
                }
                continue;
            }
        };
        // Bytes read while stalling wait here until the link heals, drops or is cut.
        loop {
            let s = *state.borrow_and_update();
            if cut(&s, cuts) {
                return;
            }
            match s.mode {
                LinkMode::Pass => {
                    let w = tokio::select! {
                        w = to.write_all(&buf[..n]) => w,
                        _ = wait_cut(&mut state, cuts) => return,
                    };
                    if w.is_err() {
                        return;
                    }
                    break;
                }
                LinkMode::Drop => break,
                LinkMode::Stall | LinkMode::Cut => {
                    if state.changed().await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

async fn wait_cut(state: &mut watch::Receiver<State>, cuts: u64) {
    loop {
        if state.changed().await.is_err() {
            return;
        }
        if cut(&state.borrow_and_update(), cuts) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut b = [0u8; 1024];
                    while let Ok(n) = s.read(&mut b).await {
                        if n == 0 || s.write_all(&b[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        a
    }

    async fn roundtrip(s: &mut TcpStream, msg: &[u8], wait: Duration) -> Option<Vec<u8>> {
        s.write_all(msg).await.ok()?;
        let mut b = vec![0u8; msg.len()];
        match tokio::time::timeout(wait, s.read_exact(&mut b)).await {
            Ok(Ok(_)) => Some(b),
            _ => None,
        }
    }

    #[tokio::test]
    async fn pass_stall_drop_cut_heal() {
        let target = echo_server().await;
        let p = Proxy::start(target).await.unwrap();
        let short = Duration::from_millis(200);
        let mut s = TcpStream::connect(p.addr()).await.unwrap();
        assert_eq!(
            roundtrip(&mut s, b"hello", short).await.as_deref(),
            Some(&b"hello"[..])
        );

        // Stall: nothing comes back; after heal the held bytes arrive.
        p.set(LinkMode::Stall);
        assert_eq!(roundtrip(&mut s, b"abc", short).await, None);
        p.heal();
        let mut b = [0u8; 3];
        tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&b, b"abc");

        // Drop: bytes vanish, the connection stays open.
        p.set(LinkMode::Drop);
        assert_eq!(roundtrip(&mut s, b"lost", short).await, None);
        p.heal();
        assert_eq!(
            roundtrip(&mut s, b"next", Duration::from_secs(2))
                .await
                .as_deref(),
            Some(&b"next"[..])
        );

        // Cut: the open connection closes; new ones close at once.
        p.set(LinkMode::Cut);
        let mut b = [0u8; 1];
        let r = tokio::time::timeout(Duration::from_secs(2), s.read(&mut b)).await;
        assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "{r:?}");
        let mut s2 = TcpStream::connect(p.addr()).await.unwrap();
        let r = tokio::time::timeout(Duration::from_secs(2), s2.read(&mut b)).await;
        assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "{r:?}");

        p.heal();
        let mut s3 = TcpStream::connect(p.addr()).await.unwrap();
        assert_eq!(
            roundtrip(&mut s3, b"back", Duration::from_secs(2))
                .await
                .as_deref(),
            Some(&b"back"[..])
        );
    }
}
