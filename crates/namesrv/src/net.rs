//! Accepting connections for a tonic server from a listener we bound ourselves.
//!
//! tonic applies its `tcp_nodelay` setting only to sockets it accepts itself;
//! with `serve_with_incoming*` the accepted streams keep Nagle's algorithm on,
//! and small responses written back to back then wait for the peer's delayed
//! ACK (~40 ms on Linux). Every server here accepts through [`incoming`].

use tokio::net::{TcpListener, TcpStream};
use tokio_stream::{Stream, StreamExt, wrappers::TcpListenerStream};

/// The listener's connections, each with `TCP_NODELAY` set.
pub fn incoming(listener: TcpListener) -> impl Stream<Item = std::io::Result<TcpStream>> {
    TcpListenerStream::new(listener).map(|conn| {
        let stream = conn?;
        stream.set_nodelay(true)?;
        Ok(stream)
    })
}
