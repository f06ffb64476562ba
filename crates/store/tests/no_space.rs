//! A full disk (ENOSPC from a write) refuses the batch with `StoreError::NoSpace`, leaves the
//! log writable and uncorrupted, and appends succeed again once space returns. Here with an
//! injected short write; `testkit/tests/disk_faults.rs` does it on a real, small ext4.

mod common;

use std::path::Path;

use common::{check_queues_match_log, last_segment, rec};
use sofamq_store::{Fault, Store, StoreError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_write_on_a_full_disk_is_given_back_and_the_log_stays_writable() {
    let d = tempfile::tempdir().unwrap();
    let s = common::open(d.path());
    s.append(vec![rec("t", 0, "a"), rec("t", 1, "b")])
        .await
        .unwrap();
    let end = s.log_end_offset();
    s.inject_fault(Fault::NextWriteNoSpace);
    let err = s
        .append(vec![rec("t", 0, "lost-1"), rec("t", 1, "lost-2")])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NoSpace(_)), "{err}");
    assert!(err.to_string().contains("no space"), "{err}");
    assert_eq!(s.fenced(), None, "a full disk does not fence the log");
    assert_eq!(s.stats().no_space, 1);
    assert_eq!(s.log_end_offset(), end);
    // The half record that reached the file is cut.
    assert_eq!(fs_len(&last_segment(d.path())), end);
    // The refused records' queue offsets are given back to the next ones.
    let c = s.append(vec![rec("t", 0, "c")]).await.unwrap();
    assert_eq!(c[0].queue_offset, 1);
    assert_eq!(c[0].log_offset, end);
    let bodies = |s: &Store, q| -> Vec<String> {
        s.read_queue("t", q, 0, 100, usize::MAX)
            .unwrap()
            .iter()
            .map(|r| String::from_utf8_lossy(&r.body).into_owned())
            .collect()
    };
    assert_eq!(bodies(&s, 0), ["a", "c"]);
    assert_eq!(bodies(&s, 1), ["b"]);
    check_queues_match_log(&s);
    drop(s);
    let s = common::open(d.path());
    assert_eq!(s.fenced(), None);
    assert_eq!(bodies(&s, 0), ["a", "c"]);
    assert_eq!(bodies(&s, 1), ["b"]);
    check_queues_match_log(&s);
}

/// ENOSPC from fdatasync is not a full disk to retry: the write-back of bytes already in the
/// page cache failed, and the kernel may have dropped them (a later fsync would "succeed"). It
/// fences the log like any fsync failure, and the append is never acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enospc_from_fdatasync_fences_the_log_and_acks_nothing() {
    let d = tempfile::tempdir().unwrap();
    let s = common::open(d.path());
    s.append(vec![rec("t", 0, "a")]).await.unwrap();
    s.inject_fault(Fault::NextSyncNoSpace);
    let err = s.append(vec![rec("t", 0, "unsynced")]).await.unwrap_err();
    assert!(
        !matches!(err, StoreError::NoSpace(_)),
        "an fsync failure must not read as 'definitely not stored': {err}"
    );
    let reason = s.fenced().expect("an fsync ENOSPC fences the log");
    assert!(reason.contains("No space left"), "{reason}");
    assert_eq!(s.stats().no_space, 0);
    let err = s.append(vec![rec("t", 0, "after")]).await.unwrap_err();
    assert!(matches!(err, StoreError::Fenced(_)), "{err}");
}

fn fs_len(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().len()
}
