//! The master's direct path to its slaves: the store's writer, right after its `pwrite` and
//! before its fdatasync, sends the bytes it wrote to every slave whose stream is caught up,
//! from its own thread, with one non-blocking `sendmsg` on the session's socket. A send at 1
//! in flight then does not wait for the stream task to be woken (a cross-core wake-up, 30-80
//! us on a small VM) before the slave can start its own write and fdatasync.
//!
//! The stream task (`master::stream`) stays the owner of everything else: catching up, the
//! rest of a frame the socket did not take, heartbeats, and all of a TLS session (whose
//! bytes only the TLS layer can write). The two never write at once, and never out of log
//! order: both take the session's [`SessionTap`] lock to claim the socket, and the direct
//! path writes only when the stream is idle, holds nothing unsent, and has sent exactly up to
//! the bytes' start. When it cannot (or the socket takes only part of the frame) it leaves
//! the bytes to the stream task, which the writer then wakes as before.

use std::io::IoSlice;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, MutexGuard, RwLock};
use rustix::net::{SendAncillaryBuffer, SendFlags};
use sofamq_store::WriteTap;
use tokio::sync::watch;

use super::config::Role;
use super::frame::{self, DATA_PREFIX};

/// The taps of every streaming session of one broker: what the store's writer calls.
pub(crate) struct Taps {
    sessions: RwLock<Vec<Arc<SessionTap>>>,
    role: watch::Receiver<Role>,
    /// Data frames sent by the writer (whole or begun) / by the stream tasks.
    direct: AtomicU64,
    streamed: AtomicU64,
}

impl Taps {
    pub(crate) fn new(role: watch::Receiver<Role>) -> Self {
        Self {
            sessions: RwLock::new(Vec::new()),
            role,
            direct: AtomicU64::new(0),
            streamed: AtomicU64::new(0),
        }
    }

    /// Counts a Data frame a stream task sent.
    pub(crate) fn streamed(&self) {
        self.streamed.fetch_add(1, Ordering::Relaxed);
    }

    /// Data frames sent so far: (by the writer, by the stream tasks).
    pub(crate) fn sent(&self) -> (u64, u64) {
        (
            self.direct.load(Ordering::Relaxed),
            self.streamed.load(Ordering::Relaxed),
        )
    }

    /// Adds a session; it stays until the returned guard drops.
    pub(crate) fn add(self: &Arc<Self>, tap: Arc<SessionTap>) -> TapGuard {
        self.sessions.write().push(tap.clone());
        TapGuard {
            taps: self.clone(),
            tap,
        }
    }
}

impl WriteTap for Taps {
    fn written(&self, epoch: u64, start: u64, bytes: &[u8]) -> bool {
        let sessions = self.sessions.read();
        if sessions.is_empty() || *self.role.borrow() != Role::Master {
            return false;
        }
        // Every session is offered the bytes: one that could not take them must not keep
        // the others from it.
        sessions.iter().fold(true, |all, s| {
            let sent = s.send(epoch, start, bytes);
            if sent != Sent::No {
                self.direct.fetch_add(1, Ordering::Relaxed);
            }
            sent == Sent::Whole && all
        })
    }
}

/// Removes its session's tap when the session ends; after that no byte is written to the
/// session's socket from outside its task.
pub(crate) struct TapGuard {
    taps: Arc<Taps>,
    tap: Arc<SessionTap>,
}

impl Drop for TapGuard {
    fn drop(&mut self) {
        self.tap.state.lock().closed = true;
        self.taps
            .sessions
            .write()
            .retain(|t| !Arc::ptr_eq(t, &self.tap));
    }
}

/// What the direct path and the stream task of one session share.
#[derive(Debug)]
pub(crate) struct Stream {
    /// Log offset up to which bytes are sent or queued in `pending`, by either writer.
    pub pos: u64,
    /// The stream task is reading or writing: the direct path keeps off the socket.
    pub busy: bool,
    /// The rest of a frame the socket took only in part: the stream task writes it first.
    pub pending: Vec<u8>,
    closed: bool,
}

/// One session's direct path: a duplicate of its socket's descriptor (plain TCP only).
pub(crate) struct SessionTap {
    /// `None`: no direct path (TLS, or a stream that is not an OS socket); the state still
    /// tracks the stream task's position.
    fd: Option<OwnedFd>,
    epoch: u64,
    version: u8,
    max_frame: usize,
    state: Mutex<Stream>,
}

impl SessionTap {
    pub(crate) fn new(
        fd: Option<OwnedFd>,
        epoch: u64,
        version: u8,
        max_frame: usize,
        from: u64,
    ) -> Self {
        Self {
            fd,
            epoch,
            version,
            max_frame,
            state: Mutex::new(Stream {
                pos: from,
                busy: false,
                pending: Vec::new(),
                closed: false,
            }),
        }
    }

    /// The shared state, for the stream task.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Stream> {
        self.state.lock()
    }

    /// Sends `bytes` (log offset `start`, written in `epoch`) as one Data frame when the
    /// stream is idle and caught up exactly to `start`. Anything but [`Sent::Whole`] leaves
    /// the bytes, or the rest of the frame, to the stream task (which the writer then wakes).
    fn send(&self, epoch: u64, start: u64, bytes: &[u8]) -> Sent {
        let Some(fd) = &self.fd else {
            return Sent::No;
        };
        if epoch != self.epoch || DATA_PREFIX + bytes.len() > self.max_frame {
            return Sent::No;
        }
        let mut st = self.state.lock();
        if st.closed || st.busy || !st.pending.is_empty() || st.pos != start {
            return Sent::No;
        }
        let mut prefix = [0u8; DATA_PREFIX];
        frame::data_prefix(self.version, epoch, start, bytes.len(), &mut prefix);
        let sent = match rustix::net::sendmsg(
            fd,
            &[IoSlice::new(&prefix), IoSlice::new(bytes)],
            &mut SendAncillaryBuffer::default(),
            SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
        ) {
            Ok(n) => n,
            // A full socket (`EAGAIN`), or a broken one: the stream task writes the bytes
            // (and meets the error).
            Err(_) => return Sent::No,
        };
        if sent == 0 {
            return Sent::No;
        }
        st.pos = start + bytes.len() as u64;
        let total = DATA_PREFIX + bytes.len();
        if sent < total {
            if sent < DATA_PREFIX {
                st.pending.extend_from_slice(&prefix[sent..]);
                st.pending.extend_from_slice(bytes);
            } else {
                st.pending.extend_from_slice(&bytes[sent - DATA_PREFIX..]);
            }
            return Sent::Part;
        }
        Sent::Whole
    }
}

/// How much of a frame the direct path sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    /// Nothing: the stream task sends the bytes.
    No,
    /// The frame's beginning; the rest waits in [`Stream::pending`] for the stream task.
    Part,
    /// All of it.
    Whole,
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::unix::net::UnixStream;

    use bytes::BytesMut;

    use super::*;
    use crate::repl::frame::Msg;

    const MAX: usize = 1 << 20;

    fn tap(from: u64) -> (SessionTap, UnixStream) {
        let (mine, theirs) = UnixStream::pair().unwrap();
        mine.set_nonblocking(true).unwrap();
        (SessionTap::new(Some(mine.into()), 7, 2, MAX, from), theirs)
    }

    /// Every Data frame in `got`, as (start, bytes); panics on anything else.
    fn frames(got: &[u8]) -> Vec<(u64, Vec<u8>)> {
        let mut buf = BytesMut::from(got);
        let mut out = Vec::new();
        while let Some(f) = frame::decode(&mut buf, MAX).unwrap() {
            assert_eq!((f.epoch, f.version), (7, 2));
            match f.msg {
                Msg::Data { start, bytes } => out.push((start, bytes.to_vec())),
                other => panic!("{other:?}"),
            }
        }
        assert!(buf.is_empty(), "a torn frame: {} bytes left", buf.len());
        out
    }

    /// The direct path sends only what follows exactly on what was sent, in the session's
    /// epoch, within the frame limit, while the stream task is idle.
    #[test]
    fn sends_only_the_next_bytes_of_an_idle_stream() {
        let (t, mut peer) = tap(100);
        assert_eq!(t.send(7, 90, b"early"), Sent::No, "not where the stream is");
        assert_eq!(t.send(8, 100, b"other"), Sent::No, "another epoch");
        assert_eq!(t.send(7, 100, &vec![0; MAX]), Sent::No, "beyond a frame");
        t.lock().busy = true;
        assert_eq!(t.send(7, 100, b"taken"), Sent::No, "the stream task writes");
        t.lock().busy = false;
        assert_eq!(t.send(7, 100, b"hello"), Sent::Whole);
        assert_eq!(t.send(7, 105, b"world"), Sent::Whole);
        assert_eq!(t.lock().pos, 110);
        t.state.lock().closed = true;
        assert_eq!(t.send(7, 110, b"late"), Sent::No, "the session ended");
        drop(t);
        let mut got = Vec::new();
        peer.read_to_end(&mut got).unwrap();
        assert_eq!(
            frames(&got),
            vec![(100, b"hello".to_vec()), (105, b"world".to_vec())]
        );
    }

    /// A socket that takes part of a frame: the rest waits in `pending`, nothing more is
    /// sent directly until the stream task has written it, and the peer reads whole frames
    /// in log order.
    #[test]
    fn a_frame_taken_in_part_is_finished_before_anything_else() {
        let (t, mut peer) = tap(0);
        let rec: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
        let mut pos = 0u64;
        let mut sent = Vec::new();
        let part = loop {
            match t.send(7, pos, &rec) {
                Sent::Whole => {
                    sent.push(pos);
                    pos += rec.len() as u64;
                }
                other => break other,
            }
            assert!(sent.len() < 10_000, "the socket never filled");
        };
        // Linux's AF_UNIX stream socket takes the beginning of a frame it has no room for.
        assert_eq!(part, Sent::Part, "the socket took no part of the frame");
        let rest = std::mem::take(&mut t.lock().pending);
        sent.push(pos);
        pos += rec.len() as u64;
        assert!(!rest.is_empty() && rest.len() < DATA_PREFIX + rec.len());
        assert_eq!(t.lock().pos, pos, "the position counts the queued rest");
        t.lock().pending = rest.clone();
        assert_eq!(
            t.send(7, pos, &rec),
            Sent::No,
            "nothing goes out before the rest"
        );
        t.lock().pending.clear();
        // The stream task's part: drain the socket, then write the rest (here, blocking).
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            peer.read_to_end(&mut got).unwrap();
            got
        });
        let fd = t.fd.as_ref().unwrap().try_clone().unwrap();
        let mut sock = UnixStream::from(fd);
        sock.set_nonblocking(false).unwrap();
        std::io::Write::write_all(&mut sock, &rest).unwrap();
        // Then the direct path goes on where it left off.
        assert_eq!(t.send(7, pos, &rec), Sent::Whole);
        sent.push(pos);
        drop(sock);
        drop(t);
        let got = frames(&reader.join().unwrap());
        assert_eq!(got.iter().map(|f| f.0).collect::<Vec<_>>(), sent);
        assert!(got.iter().all(|f| f.1 == rec));
    }
}
