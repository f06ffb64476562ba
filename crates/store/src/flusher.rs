//! The flusher thread: periodically writes consume-queue tails to their files, fsyncs them and
//! then writes the checkpoint.

use std::io;
use std::sync::atomic::Ordering;

use crate::checkpoint::{self, Checkpoint};
use crate::error::{is_no_space, write_error};
use crate::log::{Shared, lock};

/// Flushes every consume queue and writes a checkpoint if anything moved.
///
/// The durable offset is read before anything is flushed, and the writer only publishes it after
/// the fdatasync that covers it, so the checkpoint never claims more than was synced. Likewise
/// `dispatched` is only published after the entries are in the queues' tails, so once the tails
/// are flushed every entry below it is on disk.
pub(crate) fn flush_once(sh: &Shared) -> io::Result<()> {
    let mut ck = lock(&sh.ckpt);
    let durable = sh.durable.load(Ordering::Acquire);
    let cq_flushed = sh.dispatched.load(Ordering::Acquire);
    let queues = sh.cqs.all();
    for q in &queues {
        q.flush(sh.cqs.root())?;
    }
    let next = Checkpoint {
        durable,
        cq_flushed,
        queue_count: queues.len() as u64,
        replicated: sh.repl_limit.load(Ordering::Acquire),
    };
    if next != *ck {
        // Replaced atomically: a failed write leaves the previous checkpoint, which is valid.
        checkpoint::store(&*sh.cfg.fs, &sh.cfg.dir, &next).map_err(write_error)?;
        *ck = next;
    }
    Ok(())
}

/// The thread body: flush every `cq_flush_interval` until asked to stop, then once more.
pub(crate) fn run(sh: &Shared) {
    let interval = sh.cfg.cq_flush_interval;
    let mut disk_full = false;
    loop {
        let stop = {
            let g = lock(&sh.flusher_stop);
            let (g, _) = sh
                .flusher_cv
                .wait_timeout_while(g, interval, |stop| !*stop)
                .unwrap_or_else(|p| p.into_inner());
            *g
        };
        if !sh.is_fenced() {
            match flush_once(sh) {
                Ok(()) => disk_full = false,
                // Nothing flushed is claimed: the tails stay buffered and the old checkpoint
                // stands (recovery rebuilds queues from it), so the next round tries again.
                Err(e) if is_no_space(&e) => {
                    if !std::mem::replace(&mut disk_full, true) {
                        tracing::warn!(error = %e, "consume queue flush: disk full, retrying every interval");
                    }
                }
                Err(e) => sh.fence(format!("consume queue / checkpoint flush failed: {e}")),
            }
        }
        if stop {
            return;
        }
    }
}
