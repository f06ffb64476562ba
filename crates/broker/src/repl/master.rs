//! Master side: accept slaves on the replication port, answer their epoch handshake, stream
//! raw log bytes (`read_raw` → socket, never re-encoded) and take their acks.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use bytes::BytesMut;
use sofamq_controller::network::{Acceptor, AsyncStream};
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::config::Role;
use super::frame::{self, FrameError, Msg};
use super::secure::{ReplStream, Security};
use super::tap::SessionTap;
use super::{ReplError, Replication};

/// Accepts slaves until `token` is cancelled. Sessions are refused while this broker is a
/// slave (a slave binds the port so that it can serve it once promoted).
pub async fn serve(
    repl: Arc<Replication>,
    mut listener: Box<dyn Acceptor>,
    token: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(repl.cfg.max_slaves.max(1)));
    let security = match Security::from_config(&repl.cfg) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            tracing::error!(error = %e, "replication port not served: bad TLS/secret settings");
            return;
        }
    };
    loop {
        let (sock, peer, fd): (Box<dyn AsyncStream>, String, _) = tokio::select! {
            biased;
            () = token.cancelled() => return,
            r = listener.accept_with_fd() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "replication accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "too many slaves connected; refusing");
            let mut sock = sock;
            let _ = frame::write_frame(
                &mut sock,
                frame::MIN_VERSION,
                repl.store.current_epoch(),
                &Msg::Reject {
                    reason: "too many slaves".into(),
                },
            )
            .await;
            continue;
        };
        let repl = repl.clone();
        let token = token.clone();
        let security = security.clone();
        tokio::spawn(async move {
            let _permit = permit;
            // The direct path writes raw frames: plain TCP only.
            let fd = fd.filter(|_| security.plain());
            match session(&repl, &security, sock, fd, peer.clone(), token).await {
                Ok(()) => tracing::info!(%peer, "replication session ended"),
                Err(e) => tracing::warn!(%peer, error = %e, "replication session ended"),
            }
        });
    }
}

async fn session(
    repl: &Arc<Replication>,
    security: &Security,
    sock: Box<dyn AsyncStream>,
    fd: Option<OwnedFd>,
    peer: String,
    token: CancellationToken,
) -> Result<(), ReplError> {
    let max = repl.cfg.frame_limit();
    let hs = repl.cfg.handshake_timeout();
    // TLS and the secret's challenge come before any frame is read.
    let (mut sock, authenticated) =
        tokio::time::timeout(hs, security.accept(sock, &repl.broker_name))
            .await
            .map_err(|_| ReplError::Timeout("TLS handshake / authentication"))??;
    let mut rbuf = BytesMut::with_capacity(64 * 1024);
    let hello = tokio::time::timeout(hs, frame::read_frame(&mut sock, &mut rbuf, max))
        .await
        .map_err(|_| ReplError::Timeout("hello"))??;
    let Msg::Hello {
        broker_name,
        broker_id,
        log_end,
        versions,
        ..
    } = hello.msg
    else {
        return Err(ReplError::Protocol("expected Hello".into()));
    };
    let epoch = repl.store.current_epoch();
    let version = repl
        .cfg
        .protocol_versions()
        .and_then(|mine| frame::negotiate(mine, versions));
    let refuse = if let Err(why) = &version {
        Some(why.clone())
    } else if authenticated.is_some_and(|id| id != broker_id) {
        Some(format!(
            "Hello from broker id {broker_id}, authenticated as {authenticated:?}"
        ))
    } else if repl.role() != Role::Master {
        Some(super::REJECT_NOT_MASTER.to_string())
    } else if broker_name != repl.broker_name {
        Some(format!(
            "broker group {broker_name:?} does not match {:?}",
            repl.broker_name
        ))
    } else if hello.epoch > epoch {
        Some(format!(
            "slave knows epoch {} above this master's {epoch}: this master is stale",
            hello.epoch
        ))
    } else {
        None
    };
    if let Some(reason) = refuse {
        let _ = frame::write_frame(
            &mut sock,
            frame::MIN_VERSION,
            epoch,
            &Msg::Reject {
                reason: reason.clone(),
            },
        )
        .await;
        return Err(ReplError::Protocol(reason));
    }
    let version = version.unwrap_or(frame::MIN_VERSION);
    // The end the slave may keep of this epoch: what is WRITTEN here (see `stream`), so a
    // slave that reconnects holding bytes not yet durable here does not cut them needlessly.
    let written = repl.store.written_offset();
    frame::write_frame(
        &mut sock,
        frame::MIN_VERSION,
        epoch,
        &Msg::HelloReply {
            version,
            written,
            history: repl.store.epoch_history(),
        },
    )
    .await?;
    let follow = tokio::time::timeout(hs, frame::read_frame(&mut sock, &mut rbuf, max))
        .await
        .map_err(|_| ReplError::Timeout("follow"))??;
    let from = match follow.msg {
        Msg::Follow { from }
            if follow.epoch == epoch && follow.version == version && from <= written =>
        {
            from
        }
        other => {
            return Err(ReplError::Protocol(format!(
                "bad Follow (epoch {} vs {epoch}, version {} vs {version}): {other:?}",
                follow.epoch, follow.version
            )));
        }
    };
    let name = format!("{broker_name}/{broker_id}@{peer}");
    tracing::info!(slave = %name, from, slave_log_end = log_end, written, epoch, version, "slave following");
    let id = repl.tracker.register(
        name.clone(),
        broker_id,
        from,
        repl.store.durable_offset(),
        version,
    );
    let (rd, wr) = tokio::io::split(sock);
    let stop = token.child_token();
    // The writer's direct path to this slave (see `tap`), removed before the socket closes.
    let tap = Arc::new(SessionTap::new(fd, epoch, version, max, from));
    let guard = repl.taps.add(tap.clone());
    let sender = tokio::spawn(stream(repl.clone(), wr, tap, epoch, version, stop.clone()));
    let r = acks(repl, rd, rbuf, id, from, (epoch, version), &stop).await;
    stop.cancel();
    drop(guard);
    repl.tracker.remove(id);
    repl.refresh_limit();
    let streamed = sender.await;
    // The stream's failure ends the acks quietly (it cancels them): report it, so a session
    // that cannot stream (a slave asking from a place that is not a record here) says why.
    match (r, streamed) {
        (Ok(()), Ok(Err(e))) => Err(e),
        (r, _) => r,
    }
}

/// Streams the log to the slave from the session's position (`tap`): whole records, up to
/// one frame at a time, as soon as they are WRITTEN here (`pwrite` done), not only once this
/// master's fdatasync covers them, so the master's and the slave's fsyncs of a batch overlap
/// instead of running back to back. Records are read straight into the reused frame buffer
/// behind the frame header. On plain TCP the store's writer sends what it writes itself
/// while this task is idle and caught up (`tap`); this task sends the rest, and heartbeats.
///
/// Why sending not-yet-durable bytes is safe. A client is acked only when this master's own
/// fsync covers its record AND the required slaves acked (their fsync) covering it
/// (`send/append.rs` resolves after the local fsync, then `send/replicate.rs` waits); nothing
/// here changes that. What changes: a slave may durably hold bytes this master loses in a
/// machine crash before its fsync. Those bytes were never acked to anyone, and:
/// * a master that restarts begins a new epoch at its recovered end (manual mode on every
///   start; under a controller only through a promotion), so its history ends the old epoch
///   where its log now ends, and a slave that follows it cuts its longer tail of that epoch
///   back by the epoch rule (`epoch::divergence`, Kafka's leader-epoch truncation);
/// * under a controller only in-sync replicas are elected; one that holds extra never-acked
///   bytes may keep them (a retried send finds them via the dedup window), and the old
///   master, when it follows, takes them over from it;
/// * consumers read only below `min(master durable, replicated)` (`refresh_limit`), and the
///   in-sync checks compare slave acks with the master's DURABLE offset, so extra bytes on a
///   slave never make a record readable or acked early.
async fn stream(
    repl: Arc<Replication>,
    mut wr: WriteHalf<ReplStream>,
    tap: Arc<SessionTap>,
    epoch: u64,
    version: u8,
    stop: CancellationToken,
) -> Result<(), ReplError> {
    let max = repl.cfg.frame_limit();
    let heartbeat = repl.cfg.heartbeat();
    // Frame header + start, then the records; grows to the largest frame, never shrinks.
    let mut out: Vec<u8> = vec![0u8; frame::DATA_PREFIX];
    let mut small = BytesMut::with_capacity(64);
    let mut rest: Vec<u8> = Vec::new();
    let mut beat = false;
    let r: Result<(), ReplError> = async {
        loop {
            crate::pause::at(repl.identity, crate::pause::Point::MasterStream).await;
            // Arm the wake-up before looking, so a write in between is not missed.
            let appended = repl.appended.notified();
            tokio::pin!(appended);
            appended.as_mut().enable();
            if repl.role() != Role::Master || repl.store.current_epoch() != epoch {
                return Err(ReplError::Protocol("no longer master of this epoch".into()));
            }
            // Claim the socket from the writer's direct path (`tap`): first the rest of a
            // frame it sent in part, then whatever it has not sent.
            let pos = {
                let mut st = tap.lock();
                st.busy = true;
                std::mem::swap(&mut rest, &mut st.pending);
                st.pos
            };
            let n = if rest.is_empty() {
                repl.store
                    .read_written_into(pos, max, &mut out, frame::DATA_PREFIX)?
            } else {
                0
            };
            let sent = if !rest.is_empty() {
                Some(&rest[..])
            } else if n > 0 {
                frame::data_prefix(version, epoch, pos, n, &mut out);
                Some(&out[..frame::DATA_PREFIX + n])
            } else if beat {
                beat = false;
                small.clear();
                let durable = repl.store.durable_offset();
                frame::encode(version, epoch, &Msg::Heartbeat { durable }, &mut small);
                Some(&small[..])
            } else {
                None
            };
            if let Some(bytes) = sent {
                tokio::select! {
                    biased;
                    r = wr.write_all(bytes) => r?,
                    () = stop.cancelled() => return Ok(()),
                }
                rest.clear();
                if n > 0 {
                    repl.taps.streamed();
                }
                let mut st = tap.lock();
                st.pos += n as u64;
                st.busy = false;
                continue;
            }
            tap.lock().busy = false;
            tokio::select! {
                biased;
                () = &mut appended => {}
                () = tokio::time::sleep(heartbeat) => beat = true,
                () = stop.cancelled() => return Ok(()),
            }
        }
    }
    .await;
    stop.cancel();
    r
}

/// Takes the slave's acks: each must be for this epoch and the session's version, never
/// beyond this master's log end, never backwards.
async fn acks(
    repl: &Arc<Replication>,
    mut rd: ReadHalf<ReplStream>,
    mut rbuf: BytesMut,
    id: u64,
    from: u64,
    (epoch, version): (u64, u8),
    stop: &CancellationToken,
) -> Result<(), ReplError> {
    let max = repl.cfg.frame_limit();
    let idle = repl.cfg.max_lag().max(repl.cfg.heartbeat() * 4);
    let mut last = from;
    // Async flush acks a send once the master wrote it (README, `flush`); a slave's part of
    // that promise is what it received, not what its own interval has fsynced yet. Sync
    // flush waits for the slave's fdatasync, as the master waits for its own. Acks carry
    // the received offset from protocol version 3 on; before, only the durable one.
    let async_flush = matches!(
        repl.store.flush_mode(),
        sofamq_store::FlushMode::Async { .. }
    );
    let on_receipt = async_flush && version >= 3;
    if async_flush && !on_receipt {
        tracing::warn!(
            version,
            "flush = async, but this slave session speaks replication protocol {version}: \
             sends wait for the slave's interval fdatasync; set replication.protocol_max = 3 \
             on every broker of the group to ack what the slave received"
        );
    }
    loop {
        let f = tokio::select! {
            biased;
            () = stop.cancelled() => return Ok(()),
            r = tokio::time::timeout(idle, frame::read_frame(&mut rd, &mut rbuf, max)) => {
                r.map_err(|_| ReplError::Timeout("ack"))?
            }
        };
        let f = match f {
            Ok(f) => f,
            Err(FrameError::Closed) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        if f.version != version && !matches!(f.msg, Msg::Reject { .. }) {
            return Err(ReplError::Protocol(format!(
                "frame of version {} in a session of version {version}",
                f.version
            )));
        }
        match f.msg {
            Msg::Ack { durable, received } => {
                crate::pause::at(repl.identity, crate::pause::Point::MasterAck).await;
                // Slaves get written bytes before they are durable here, so an ack may run
                // ahead of this master's durable offset, never beyond what it wrote.
                let end = repl.store.written_offset();
                if f.epoch != epoch {
                    return Err(ReplError::Protocol(format!(
                        "ack for epoch {} on a master of epoch {epoch}",
                        f.epoch
                    )));
                }
                if durable > end {
                    return Err(ReplError::Protocol(format!(
                        "ack of {durable} beyond this master's log end {end}"
                    )));
                }
                if durable < last {
                    return Err(ReplError::Protocol(format!(
                        "ack went backwards from {last} to {durable}"
                    )));
                }
                // Version 3: what the slave holds, durable or not, lies between its durable
                // offset and what this master streamed.
                if let Some(r) = received
                    && (r < durable || r > end)
                {
                    return Err(ReplError::Protocol(format!(
                        "ack says {r} received, outside {durable}..={end}"
                    )));
                }
                last = durable;
                let acked = match received {
                    Some(r) if on_receipt => r,
                    _ => durable,
                };
                repl.tracker.ack(id, acked, repl.store.durable_offset());
                repl.refresh_limit();
            }
            Msg::Reject { reason } => return Err(ReplError::Protocol(format!("slave: {reason}"))),
            other => {
                return Err(ReplError::Protocol(format!(
                    "unexpected frame from slave: {other:?}"
                )));
            }
        }
    }
}
