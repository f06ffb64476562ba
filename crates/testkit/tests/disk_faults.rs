//! Storage faults on a real filesystem: a small ext4 on a loop device ([`LoopDisk`]).

use std::time::Duration;

use bytes::Bytes;
use sofamq_store::{NewRecord, Store, StoreConfig, StoreError};
use sofamq_testkit::disk::LoopDisk;

fn rec(queue_id: u32, body: &str) -> NewRecord {
    NewRecord {
        topic: "t".into(),
        queue_id,
        flags: 0,
        tag: String::new(),
        born_ts_ms: 1_700_000_000_000,
        properties: Vec::new(),
        body: Bytes::copy_from_slice(body.as_bytes()),
    }
}

/// Every acked record reads back through its queue, and each queue is dense in the log.
fn check(s: &Store, acked: &[(u32, u64, String)]) {
    for (q, off, body) in acked {
        let r = s.read_queue("t", *q, *off, 1, usize::MAX).unwrap();
        assert_eq!(r.len(), 1, "acked record {q}/{off} missing");
        assert_eq!(&r[0].body[..], body.as_bytes(), "record {q}/{off}");
    }
    let mut next = [0u64; 4];
    for r in s.scan(0) {
        let r = r.unwrap();
        assert_eq!(
            r.queue_offset, next[r.queue_id as usize],
            "dense queue offsets"
        );
        next[r.queue_id as usize] += 1;
    }
    for (q, n) in next.iter().enumerate() {
        assert_eq!(s.queue_offsets("t", q as u32), (0, *n), "queue {q}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_full_disk_refuses_appends_without_fencing_and_recovers_when_space_returns() {
    if let Some(why) = LoopDisk::unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    let fs = LoopDisk::new(32).unwrap();
    let dir = fs.path().join("store");
    let mut cfg = StoreConfig::new(&dir);
    cfg.segment_size = 1 << 20;
    cfg.cq_flush_interval = Duration::from_millis(20);
    let s = Store::open(cfg.clone()).unwrap();
    fs.fill(3 << 20).unwrap();
    let body = "x".repeat(16 * 1024);
    let mut acked = Vec::new();
    let mut refused = 0;
    // Concurrent appenders until the disk is full (bounded: 3 MiB of room, 16 KiB records).
    for round in 0..200 {
        let mut tasks = Vec::new();
        for q in 0..4u32 {
            let s = s.clone();
            let body = format!("{round}-{q}-{body}");
            tasks.push(tokio::spawn(async move {
                (q, s.append(vec![rec(q, &body)]).await, body)
            }));
        }
        for t in tasks {
            match t.await.unwrap() {
                (q, Ok(a), body) => acked.push((q, a[0].queue_offset, body)),
                (_, Err(StoreError::NoSpace(_)), _) => refused += 1,
                (_, Err(e), _) => panic!("unexpected error on a full disk: {e}"),
            }
        }
        if refused >= 8 {
            break;
        }
    }
    assert!(
        refused >= 8,
        "the disk never filled ({} acked)",
        acked.len()
    );
    assert_eq!(s.fenced(), None, "a full disk must not fence the log");
    assert!(s.stats().no_space >= 1);
    // Reads of what was acked keep working while the disk is full.
    check(&s, &acked);
    // Space returns: appends succeed again without a restart.
    fs.free().unwrap();
    let mut again = None;
    for _ in 0..100 {
        match s.append(vec![rec(0, "after")]).await {
            Ok(a) => {
                again = Some(a);
                break;
            }
            Err(StoreError::NoSpace(_)) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => panic!("{e}"),
        }
    }
    let a = again.expect("appends resume once space returns");
    acked.push((0, a[0].queue_offset, "after".into()));
    check(&s, &acked);
    drop(s);
    // A restart finds a clean log: not fenced, every acked record there, queues consistent.
    let s = Store::open(cfg).unwrap();
    assert_eq!(s.fenced(), None);
    check(&s, &acked);
    drop(s);
    drop(fs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_write_back_failure_under_fdatasync_fences_the_log_and_loses_nothing_acked() {
    if let Some(why) = LoopDisk::unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    let fs = LoopDisk::thin(32).unwrap();
    let dir = fs.path().join("store");
    let mut cfg = StoreConfig::new(&dir);
    cfg.segment_size = 4 << 20;
    let s = Store::open(cfg.clone()).unwrap();
    let body = "y".repeat(16 * 1024);
    let mut acked = Vec::new();
    for i in 0..20u64 {
        let b = format!("{i}-{body}");
        let a = s.append(vec![rec(0, &b)]).await.unwrap();
        acked.push((0, a[0].queue_offset, b));
    }
    // The volume under the filesystem runs out of room: write-back fails underneath ext4.
    fs.starve().unwrap();
    let mut failed = None;
    for i in 0..200u64 {
        match s.append(vec![rec(1, &format!("lost-{i}-{body}"))]).await {
            Ok(a) => acked.push((1, a[0].queue_offset, format!("lost-{i}-{body}"))),
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    let err = failed.expect("no append failed on a starved volume");
    let reason = s.fenced().expect("an I/O error fences the log");
    // EIO when ext4's journal write fails first; ENOSPC, passed up by the loop device, when
    // the data write-back does. Either way fdatasync failed, and that fences.
    assert!(
        reason.contains("(os error 5)") || reason.contains("(os error 28)"),
        "the fence says why: {reason} (append got: {err})"
    );
    // Fenced for good: a later append is refused, even with room again.
    fs.feed().unwrap();
    let again = s.append(vec![rec(0, "after")]).await.unwrap_err();
    assert!(matches!(again, StoreError::Fenced(_)), "{again}");
    drop(s);
    // The operator's repair, then a restart: every acked record is there.
    fs.repair().unwrap();
    let s = Store::open(cfg).unwrap();
    for (q, off, body) in &acked {
        let r = s.read_queue("t", *q, *off, 1, usize::MAX).unwrap();
        assert_eq!(
            r.len(),
            1,
            "acked record {q}/{off} missing after the repair"
        );
        assert_eq!(&r[0].body[..], body.as_bytes());
    }
    drop(s);
    drop(fs);
}
