//! Accepting connections for a tonic server from a listener we bound ourselves.
//!
//! tonic applies its `tcp_nodelay` setting only to sockets it accepts itself;
//! with `serve_with_incoming*` the accepted streams keep Nagle's algorithm on,
//! and small responses written back to back then wait for the peer's delayed
//! ACK (~40 ms on Linux). Every server here accepts through [`incoming`].

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::{Stream, StreamExt, wrappers::TcpListenerStream};
use tonic::transport::server::Connected;

/// The listener's connections, each with `TCP_NODELAY` set.
pub fn incoming(listener: TcpListener) -> impl Stream<Item = std::io::Result<TcpStream>> {
    TcpListenerStream::new(listener).map(|conn| {
        let stream = conn?;
        stream.set_nodelay(true)?;
        Ok(stream)
    })
}

/// The listener's connections (`TCP_NODELAY` set), at most `max_per_ip` open
/// at once from one client IP address: beyond it a new connection is closed
/// at once, before any byte is read, so one host cannot exhaust the server's
/// sockets and memory.
pub fn incoming_limited(
    listener: TcpListener,
    max_per_ip: usize,
) -> impl Stream<Item = std::io::Result<Limited<TcpStream>>> {
    let open: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
    incoming(listener).filter_map(move |conn| {
        let stream = match conn {
            Ok(s) => s,
            Err(e) => return Some(Err(e)),
        };
        let ip = match stream.peer_addr() {
            Ok(a) => a.ip(),
            Err(e) => return Some(Err(e)),
        };
        let mut table = open.lock().unwrap_or_else(|p| p.into_inner());
        let n = table.entry(ip).or_insert(0);
        if *n >= max_per_ip {
            tracing::warn!(%ip, max_per_ip, "connection refused: too many from this address");
            return None;
        }
        *n += 1;
        drop(table);
        Some(Ok(Guarded::new(
            stream,
            Slot {
                ip,
                open: open.clone(),
            },
        )))
    })
}

/// Frees its address's connection slot when dropped.
#[derive(Debug)]
pub struct Slot {
    ip: IpAddr,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut table = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = table.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                table.remove(&self.ip);
            }
        }
    }
}

/// A connection holding one of its address's slots (see [`incoming_limited`]).
pub type Limited<T> = Guarded<T, Slot>;

impl<T> Limited<T> {
    /// The client address this connection counts against.
    pub fn ip(&self) -> IpAddr {
        self.guard.ip
    }
}

/// An accepted connection carrying a guard whose `Drop` does the
/// bookkeeping (a freed per-IP slot, a closed-connections count) when the
/// connection goes away. The I/O is forwarded untouched.
#[derive(Debug)]
pub struct Guarded<T, G> {
    io: T,
    guard: G,
}

impl<T, G> Guarded<T, G> {
    /// Wraps `io`; `guard` is dropped with it.
    pub fn new(io: T, guard: G) -> Self {
        Self { io, guard }
    }
}

impl<T: Connected, G> Connected for Guarded<T, G> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<T: AsyncRead + Unpin, G: Unpin> AsyncRead for Guarded<T, G> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin, G: Unpin> AsyncWrite for Guarded<T, G> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn connections_beyond_the_per_ip_limit_are_closed() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut accepted = Box::pin(incoming_limited(listener, 2));
        let c1 = TcpStream::connect(addr).await.unwrap();
        let _c2 = TcpStream::connect(addr).await.unwrap();
        let mut c3 = TcpStream::connect(addr).await.unwrap();
        let a1 = accepted.next().await.unwrap().unwrap();
        let _a2 = accepted.next().await.unwrap().unwrap();
        // The third is closed by the server: the client reads EOF.
        let poll = tokio::time::timeout(std::time::Duration::from_millis(200), accepted.next());
        assert!(poll.await.is_err(), "third connection must not be yielded");
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), c3.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0);
        // Closing one frees a slot.
        drop(a1);
        drop(c1);
        let _c4 = TcpStream::connect(addr).await.unwrap();
        let a4 = tokio::time::timeout(std::time::Duration::from_secs(5), accepted.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(a4.ip().is_loopback());
    }
}
