//! Deliberately broken builds, to prove that the chaos checks catch each class of storage
//! fault (`scripts/chaos/mutants.sh`). Compiled in only with the `mutants` feature, which no
//! release or test build enables; then `SOFAMQ_MUTANT=<name>` turns one defect on:
//!
//! * `skip-fdatasync`: commit-log fdatasyncs are skipped and reported done (power loss).
//! * `skip-crc`: a record's CRC is not compared when it is read or recovered (bit flips).
//! * `ignore-segment-loss`: recovery does not check that segments are contiguous and reach
//!   the checkpoint (a truncated or removed segment).
//! * `fsync-error-ok`: a failed fdatasync is taken as done and the log is not fenced (EIO,
//!   as in apache/rocketmq #2706).
//! * `fence-on-enospc`: a full disk fences the log instead of giving the batch back (ENOSPC:
//!   the log never recovers once space returns).
//! * `wall-clock-dedup` (in the broker's idempotency window): a rebuild after promotion
//!   skips the ids whose store timestamps look older than the window on this node's wall
//!   clock (a clock jumped forward forgets them: a retried send is stored twice).

/// Whether the defect `name` is on in this process.
#[cfg(feature = "mutants")]
pub fn active(name: &str) -> bool {
    static ON: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let on = ON.get_or_init(|| {
        let m = std::env::var("SOFAMQ_MUTANT").unwrap_or_default();
        if !m.is_empty() {
            tracing::warn!(mutant = %m, "this is a deliberately broken build");
        }
        m
    });
    on == name
}

/// Whether the defect `name` is on in this process: never, without the `mutants` feature.
#[cfg(not(feature = "mutants"))]
#[inline(always)]
pub fn active(_name: &str) -> bool {
    false
}
