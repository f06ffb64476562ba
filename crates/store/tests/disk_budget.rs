//! `max_disk_bytes`: appends past the budget fail with `DiskFull`, write nothing and do not
//! fence the log; reads keep working; reserved `%SYS%` records are exempt.

mod common;

use sofamq_store::{Store, StoreError};

#[test]
fn appends_past_the_budget_fail_without_fencing() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::cfg(dir.path());
    cfg.max_disk_bytes = Some(2_000);
    let store = Store::open(cfg).unwrap();
    let mut stored = 0;
    let err = loop {
        match store.append_blocking(vec![common::rec("t", 0, &format!("m{stored}"))]) {
            Ok(_) => stored += 1,
            Err(e) => break e,
        }
        assert!(stored < 1_000, "the budget never refused an append");
    };
    assert!(
        matches!(err, StoreError::DiskFull { budget: 2_000, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("disk full"), "{err}");
    let end = store.log_end_offset();
    assert!(end <= 2_000);
    assert_eq!(store.fenced(), None);
    // Nothing was written by the refused append; everything stored reads back.
    assert_eq!(store.scan(0).count(), stored);
    assert_eq!(store.queue_offsets("t", 0).1, stored as u64);
    // Reserved records still go in (consumer state, metadata).
    store
        .append_blocking(vec![common::rec("%SYS%CONSUMER", 0, "ack")])
        .unwrap();
    assert!(store.log_end_offset() > end);
    assert!(matches!(
        store.append_blocking(vec![common::rec("t", 0, "again")]),
        Err(StoreError::DiskFull { .. })
    ));
}
