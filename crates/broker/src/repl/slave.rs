//! Slave side: connect to the master's replication port, state our epoch history and log
//! end, truncate (durably) whatever tail the master does not have, then append the raw bytes
//! it streams (group commit + fdatasync) and ack `(epoch, durable offset)`. Reconnects with a
//! bounded backoff and resumes from wherever the log ends.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use sofamq_store::{RawAppend, StoreError};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::epoch::{divergence, last_epoch, must_truncate};
use super::frame::{self, Frame, Msg};
use super::secure::Security;
use super::{ReplError, Replication};
use crate::mutant::{self, Mutant};

/// Runs [`follow`] on a thread of its own, with a single-threaded runtime: the slave's
/// socket, its reader and its appends live there, and a replicated run finding the store's
/// writer idle is written and fdatasynced on that thread ([`Store::append_raw_here`]), so
/// the ack waits on no hand-off to the writer thread and back, and no worker of the
/// broker's runtime is held by a slave's fdatasync. The returned task ends when the thread
/// does; dropping it (with the broker's runtime) ends the thread too.
///
/// [`Store::append_raw_here`]: sofamq_store::Store::append_raw_here
pub(crate) fn follow_on_own_thread(
    repl: Arc<Replication>,
    master: String,
    token: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let (alive_tx, alive_rx) = tokio::sync::oneshot::channel::<()>();
    let fallback = (repl.clone(), master.clone(), token.clone());
    let broker_rt = tokio::runtime::Handle::current();
    let spawned = std::thread::Builder::new()
        .name("sofamq-repl-follow".into())
        .spawn(move || {
            // Either way the session loop is polled on this thread, so its appends may
            // block here.
            let until_gone = async move {
                tokio::select! {
                    () = follow(repl, master, token, true) => {}
                    // The broker's runtime is gone (its task holding `alive_tx` dropped).
                    _ = alive_rx => {}
                }
            };
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(until_gone),
                Err(e) => {
                    // Still follow, the broker's runtime driving the socket.
                    tracing::warn!(error = %e, "no runtime of its own for the follower thread");
                    broker_rt.block_on(until_gone);
                }
            }
            let _ = done_tx.send(());
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no follower thread: following on the broker's runtime");
        let (repl, master, token) = fallback;
        return tokio::spawn(follow(repl, master, token, false));
    }
    tokio::spawn(async move {
        let _alive = alive_tx;
        let _ = done_rx.await;
    })
}

/// Follows `master` until `token` is cancelled. `own_thread`: this runs on a thread that
/// may block in an append (see [`follow_on_own_thread`]).
pub async fn follow(
    repl: Arc<Replication>,
    master: String,
    token: CancellationToken,
    own_thread: bool,
) {
    let base = Duration::from_millis(repl.cfg.reconnect_backoff_ms.max(1));
    let mut delay = base;
    let security = match Security::from_config(&repl.cfg) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(%master, error = %e, "not following: bad replication TLS/secret settings");
            return;
        }
    };
    loop {
        let began = crate::clock::Instant::now();
        let r = tokio::select! {
            biased;
            () = token.cancelled() => return,
            r = session(&repl, &security, &master, &token, own_thread) => r,
        };
        // A session that lasted ended a healthy stretch: reconnect on the base delay (the
        // master may be gone, and the controller hears of a refused port from us).
        if began.elapsed() >= base * 16 {
            delay = base;
        }
        match r {
            Ok(()) => delay = base,
            // The broker we were told to follow has not taken the master role yet (the
            // controller's view reaches it a moment after us): try again soon, without
            // backing off, or the group waits for our next attempt to have an in-sync slave.
            Err(ReplError::Protocol(p))
                if p.strip_prefix("master: ") == Some(super::REJECT_NOT_MASTER) =>
            {
                tracing::debug!(%master, "master not promoted yet");
                tokio::select! {
                    biased;
                    () = token.cancelled() => return,
                    () = tokio::time::sleep(base) => {}
                }
                continue;
            }
            Err(e) => {
                tracing::warn!(%master, error = %e, "replication from master interrupted");
                // A log fenced by damage is cut and fetched again on the next session.
                if let ReplError::Store(_) = e
                    && repl.store.fenced().is_some()
                    && repl.store.damaged_from().is_none()
                {
                    tracing::error!("commit log fenced: this slave stops replicating");
                    return;
                }
            }
        }
        tokio::select! {
            biased;
            () = token.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(base * 16);
    }
}

async fn session(
    repl: &Arc<Replication>,
    security: &Security,
    master: &str,
    token: &CancellationToken,
    own_thread: bool,
) -> Result<(), ReplError> {
    let hs = repl.cfg.handshake_timeout();
    let max = repl.cfg.frame_limit();
    let connector = repl.connector();
    let sock = match tokio::time::timeout(hs, connector.connect(master)).await {
        Err(_) => return Err(ReplError::Timeout("connect")),
        Ok(Err(e)) => {
            repl.note_connect(master, e.kind() == std::io::ErrorKind::ConnectionRefused);
            return Err(e.into());
        }
        Ok(Ok(s)) => {
            repl.note_connect(master, false);
            s
        }
    };
    // TLS and the answer to the master's challenge come before any frame.
    let mut sock = tokio::time::timeout(
        hs,
        security.connect(sock, master, &repl.broker_name, repl.identity),
    )
    .await
    .map_err(|_| ReplError::Timeout("TLS handshake / authentication"))??;
    let store = &repl.store;
    let my_hist = store.epoch_history();
    // A damaged log claims only what precedes the damage.
    let my_end = store
        .damaged_from()
        .unwrap_or_else(|| store.log_end_offset());
    let known = repl
        .seen_epoch
        .load(Ordering::Acquire)
        .max(store.current_epoch());
    let mine = repl.cfg.protocol_versions().map_err(ReplError::Protocol)?;
    frame::write_frame(
        &mut sock,
        frame::MIN_VERSION,
        known,
        &Msg::Hello {
            broker_name: repl.broker_name.clone(),
            broker_id: repl.identity,
            log_end: my_end,
            history: my_hist.clone(),
            versions: mine,
        },
    )
    .await?;
    let mut rbuf = BytesMut::with_capacity(256 * 1024);
    let reply = tokio::time::timeout(hs, frame::read_frame(&mut sock, &mut rbuf, max))
        .await
        .map_err(|_| ReplError::Timeout("hello reply"))??;
    let epoch = reply.epoch;
    let (version, m_written, m_hist) = match reply.msg {
        Msg::HelloReply {
            version,
            written,
            history,
        } => (version, written, history),
        Msg::Reject { reason } => return Err(ReplError::Protocol(format!("master: {reason}"))),
        other => {
            return Err(ReplError::Protocol(format!(
                "expected HelloReply: {other:?}"
            )));
        }
    };
    if !(mine.0..=mine.1).contains(&version) {
        return Err(ReplError::Protocol(format!(
            "master chose replication protocol version {version}, this broker speaks {}..={}",
            mine.0, mine.1
        )));
    }
    if epoch < known || last_epoch(&m_hist) > epoch {
        return Err(ReplError::Protocol(format!(
            "master epoch {epoch} is behind the epoch {known} this slave knows: not following a stale master"
        )));
    }
    // A live master of an epoch at least ours holds every acked byte: cut the damaged log
    // where the damage begins (the bytes are kept aside) and fetch the rest again from it.
    let (my_hist, my_end) = if store.damaged_from().is_some() {
        let s = store.clone();
        let done = store.blocking(move || s.cut_damage()).await??;
        if let Some(c) = done {
            tracing::warn!(
                %master,
                from = c.at,
                to = c.old_end,
                kept_in = %c.kept_in.display(),
                "damaged log cut: fetching the range again from the master"
            );
            repl.begin_repair(c.at, c.old_end);
        }
        (store.epoch_history(), store.log_end_offset())
    } else {
        (my_hist, my_end)
    };
    let mut cut = divergence(&my_hist, my_end, &m_hist, m_written);
    if mutant::active(Mutant::SkipRejoinTruncation) {
        // The broken variant: keep the tail the master does not have and follow from this
        // log's end (a master refuses that until it has written that far).
        cut = my_end;
    }
    if must_truncate(&my_hist, my_end, cut) {
        tracing::warn!(
            from = cut,
            to = my_end,
            master_epoch = epoch,
            "truncating the tail the master does not have"
        );
        let s = store.clone();
        store.blocking(move || s.truncate(cut)).await??;
    }
    repl.seen_epoch.fetch_max(epoch, Ordering::AcqRel);
    frame::write_frame(&mut sock, version, epoch, &Msg::Follow { from: cut }).await?;
    // First ack right away: a slave that is already caught up joins the in-sync set at once.
    let durable = store.durable_offset().min(cut);
    frame::write_frame(
        &mut sock,
        version,
        epoch,
        &Msg::Ack {
            durable,
            received: Some(cut.max(durable)),
        },
    )
    .await?;
    tracing::info!(%master, from = cut, epoch, version, master_written = m_written, "following master");

    let mut acked = Acked(durable, cut.max(durable));
    let (mut rd, mut wr) = tokio::io::split(sock);
    let (tx, mut rx) = mpsc::channel::<Frame>(repl.cfg.slave_queue_frames.max(1));
    let idle = repl.cfg.heartbeat() * 4 + Duration::from_millis(200);
    let stop = token.child_token();
    let reader_stop = stop.clone();
    let reader = tokio::spawn(async move {
        let r: Result<(), ReplError> = async {
            loop {
                let f = tokio::select! {
                    biased;
                    () = reader_stop.cancelled() => return Ok(()),
                    r = tokio::time::timeout(idle, frame::read_frame(&mut rd, &mut rbuf, max)) => {
                        r.map_err(|_| ReplError::Timeout("master silent"))??
                    }
                };
                if let Msg::Reject { reason } = &f.msg {
                    return Err(ReplError::Protocol(format!("master: {reason}")));
                }
                if f.epoch != epoch || f.version != version {
                    return Err(ReplError::Protocol(format!(
                        "frame of epoch {} version {} in a session of epoch {epoch} version {version}",
                        f.epoch, f.version
                    )));
                }
                if tx.send(f).await.is_err() {
                    return Ok(());
                }
            }
        }
        .await;
        reader_stop.cancel();
        r
    });

    let coalesce = max.max(1 << 20);
    let mut next = cut;
    // Runs handed to the store's sync thread, oldest first: the next frames are written
    // while they are fdatasynced, and each completion is acked on its own.
    let mut syncing: VecDeque<oneshot::Receiver<Result<u64, StoreError>>> = VecDeque::new();
    let max_syncing = repl.cfg.slave_queue_frames.max(1);
    let r: Result<(), ReplError> = async {
        loop {
            let first = tokio::select! {
                biased;
                () = stop.cancelled() => return Ok(()),
                r = oldest_synced(&mut syncing) => {
                    r?;
                    acked.send(&mut wr, store, (version, epoch), false).await?;
                    let _ = repl.repairing();
                    continue;
                }
                f = rx.recv() => match f { Some(f) => f, None => return Ok(()) },
            };
            crate::pause::at(repl.identity, crate::pause::Point::SlaveAppend).await;
            // Take every frame already queued: contiguous data goes into one append (one
            // fsync); heartbeats just ask for an ack.
            let mut frames = vec![first];
            while let Ok(f) = rx.try_recv() {
                frames.push(f);
                if frames.len() >= 256 {
                    break;
                }
            }
            // Contiguous runs of data, each appended with one call (one group commit).
            let mut runs: Vec<(u64, usize, Vec<Bytes>)> = Vec::new();
            let mut beat = false;
            for f in frames {
                match f.msg {
                    Msg::Data { start, bytes } => {
                        if start != next {
                            return Err(ReplError::Protocol(format!(
                                "data at {start}, expected {next}"
                            )));
                        }
                        next += bytes.len() as u64;
                        match runs.last_mut() {
                            Some((_, len, parts)) if *len + bytes.len() <= coalesce => {
                                *len += bytes.len();
                                parts.push(bytes);
                            }
                            _ => runs.push((start, bytes.len(), vec![bytes])),
                        }
                    }
                    Msg::Heartbeat { .. } => beat = true,
                    other => {
                        return Err(ReplError::Protocol(format!(
                            "unexpected frame from master: {other:?}"
                        )));
                    }
                }
            }
            for (start, len, mut parts) in runs {
                let bytes = if parts.len() == 1 {
                    parts.pop().unwrap_or_default()
                } else {
                    let mut b = BytesMut::with_capacity(len);
                    for p in &parts {
                        b.extend_from_slice(p);
                    }
                    b.freeze()
                };
                if let Some(rx) = append_run(store, start, bytes, own_thread).await? {
                    syncing.push_back(rx);
                }
            }
            while syncing.len() > max_syncing {
                oldest_synced(&mut syncing).await?;
            }
            // A heartbeat always gets an ack (the master times out a silent slave).
            acked.send(&mut wr, store, (version, epoch), beat).await?;
            // Ends (and logs) a repair once the log is whole again.
            let _ = repl.repairing();
        }
    }
    .await;
    stop.cancel();
    let rr = reader.await;
    r?;
    match rr {
        Ok(r) => r,
        Err(e) => Err(ReplError::Protocol(format!("reader task: {e}"))),
    }
}

/// The durable and received offsets this slave last acked.
struct Acked(u64, u64);

impl Acked {
    /// Acks the store's durable and received offsets when they say something new to the
    /// master (the received one only from version 3, whose Acks carry it), or when `force`d.
    async fn send<W: tokio::io::AsyncWrite + Unpin>(
        &mut self,
        wr: &mut W,
        store: &sofamq_store::Store,
        (version, epoch): (u8, u64),
        force: bool,
    ) -> Result<(), ReplError> {
        let durable = store.durable_offset();
        let received = store.log_end_offset().max(durable);
        let news = durable > self.0 || (version >= 3 && received > self.1);
        if !news && !force {
            return Ok(());
        }
        frame::write_frame(
            wr,
            version,
            epoch,
            &Msg::Ack {
                durable,
                received: Some(received),
            },
        )
        .await?;
        *self = Acked(durable, received);
        Ok(())
    }
}

/// Waits for the oldest run handed to the sync thread (forever when there is none).
/// Cancel-safe: a run leaves the queue only once its answer is taken.
async fn oldest_synced(
    q: &mut VecDeque<oneshot::Receiver<Result<u64, StoreError>>>,
) -> Result<u64, StoreError> {
    let Some(rx) = q.front_mut() else {
        return std::future::pending().await;
    };
    let r = rx.await.map_err(|_| StoreError::Closed);
    q.pop_front();
    r?
}

/// Appends one contiguous run of replicated records: on this thread when it may block
/// (`own_thread`) and the store's writer is idle, queued to the writer otherwise (under
/// load, group-committed with whatever else waits). On this thread, a run the writer handed
/// to its sync thread is returned still syncing; every other run is durable on return.
async fn append_run(
    store: &sofamq_store::Store,
    start: u64,
    bytes: Bytes,
    own_thread: bool,
) -> Result<Option<oneshot::Receiver<Result<u64, StoreError>>>, StoreError> {
    if own_thread {
        return match store.append_raw_here(start, bytes)? {
            RawAppend::Done(_) => Ok(None),
            RawAppend::Queued(rx) => Ok(Some(rx)),
        };
    }
    store.append_raw_async(start, bytes).await.map(|_| None)
}
