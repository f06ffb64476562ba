mod common;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use common::{check_queues_match_log, fill, last_segment, open, rec, segments};
use sofamq_store::{Fault, Store, StoreError};

fn append_bytes(path: &Path, bytes: &[u8]) {
    let mut f = OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(bytes).unwrap();
}

fn flip_byte(path: &Path, at: u64) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0x40;
    f.write_all_at(&b, at).unwrap();
}

#[test]
fn torn_half_record_in_tail_is_cut_and_writes_continue() {
    let d = tempfile::tempdir().unwrap();
    let (offs, end) = {
        let s = open(d.path());
        let offs = fill(&s, "t", 0, 10, "rec");
        (offs, s.log_end_offset())
    };
    // An unsynced torn write: the first part of a record past the durable end.
    let seg = last_segment(d.path());
    let seg_start: u64 = seg.file_name().unwrap().to_str().unwrap().parse().unwrap();
    let whole = {
        let s = open(d.path());
        let r = s.read_at(offs[9]).unwrap();
        let f = fs::File::open(&seg).unwrap();
        let mut b = vec![0u8; r.size as usize];
        f.read_exact_at(&mut b, offs[9] - seg_start).unwrap();
        b
    };
    append_bytes(&seg, &whole[..whole.len() / 2]);
    let s = open(d.path());
    assert!(s.fenced().is_none());
    assert_eq!(s.log_end_offset(), end);
    // The half record is gone: past the end, the file holds at most the zeros written ahead.
    let left = fs::read(&seg).unwrap();
    assert!(left.len() as u64 >= end - seg_start);
    assert!(left[(end - seg_start) as usize..].iter().all(|b| *b == 0));
    let a = s.append_blocking(vec![rec("t", 0, "next")]).unwrap();
    assert_eq!((a[0].log_offset, a[0].queue_offset), (end, 10));
    check_queues_match_log(&s);
}

#[test]
fn bad_crc_past_stale_checkpoint_is_a_torn_tail() {
    let d = tempfile::tempdir().unwrap();
    let offs = {
        let s = open(d.path());
        let mut offs = fill(&s, "t", 0, 5, "a");
        s.flush_queues().unwrap();
        fs::copy(d.path().join("checkpoint"), d.path().join("ck.old")).unwrap();
        offs.extend(fill(&s, "t", 1, 5, "b"));
        offs
    };
    // Crash before the checkpoint moved on: restore the old one, tear record 7.
    fs::rename(d.path().join("ck.old"), d.path().join("checkpoint")).unwrap();
    let seg = last_segment(d.path());
    let seg_start: u64 = seg.file_name().unwrap().to_str().unwrap().parse().unwrap();
    assert!(offs[7] >= seg_start, "record 7 must be in the last segment");
    flip_byte(&seg, offs[7] - seg_start + 80);
    let s = open(d.path());
    assert!(s.fenced().is_none(), "{:?}", s.fenced());
    assert_eq!(s.log_end_offset(), offs[7]);
    assert_eq!(s.queue_offsets("t", 0), (0, 5));
    assert_eq!(s.queue_offsets("t", 1), (0, 2));
    check_queues_match_log(&s);
    let a = s.append_blocking(vec![rec("t", 1, "again")]).unwrap();
    assert_eq!((a[0].log_offset, a[0].queue_offset), (offs[7], 2));
}

#[test]
fn corruption_below_durable_checkpoint_fences() {
    let d = tempfile::tempdir().unwrap();
    let (offs, end) = {
        let s = open(d.path());
        let offs = fill(&s, "t", 0, 6, "m");
        (offs, s.log_end_offset())
    };
    let seg = last_segment(d.path());
    let seg_start: u64 = seg.file_name().unwrap().to_str().unwrap().parse().unwrap();
    let len_before = fs::metadata(&seg).unwrap().len();
    flip_byte(&seg, offs[3] - seg_start + 75);
    for _ in 0..2 {
        let s = open(d.path());
        let reason = s.fenced().expect("must be fenced");
        assert!(reason.contains("corrupt"), "{reason}");
        assert_eq!(s.log_end_offset(), offs[3]);
        for o in &offs[..3] {
            assert!(s.read_at(*o).is_ok(), "good prefix stays readable");
        }
        assert!(matches!(
            s.append_blocking(vec![rec("t", 0, "x")]),
            Err(StoreError::Fenced(_))
        ));
        assert!(matches!(s.truncate(0), Err(StoreError::Fenced(_))));
        // Nothing was cut: the evidence is kept.
        assert_eq!(fs::metadata(&seg).unwrap().len(), len_before);
    }
    let _ = end;
}

#[test]
fn corruption_in_a_non_last_segment_fences_even_without_checkpoint() {
    let d = tempfile::tempdir().unwrap();
    {
        let s = open(d.path());
        for i in 0..60 {
            s.append_blocking(vec![rec("t", 0, &format!("{i}{}", "w".repeat(300)))])
                .unwrap();
        }
    }
    assert!(segments(d.path()).len() >= 3);
    fs::remove_file(d.path().join("checkpoint")).unwrap();
    flip_byte(&segments(d.path())[1], 100);
    let s = open(d.path());
    assert!(s.fenced().is_some());
    assert!(matches!(
        s.append_blocking(vec![rec("t", 0, "x")]),
        Err(StoreError::Fenced(_))
    ));
}

#[test]
fn truncate_is_durable_and_appends_continue() {
    let d = tempfile::tempdir().unwrap();
    let cut;
    {
        let s = open(d.path());
        let mut offs = Vec::new();
        for i in 0..80 {
            let a = s
                .append_blocking(vec![rec("t", i % 2, &format!("{i}{}", "v".repeat(250)))])
                .unwrap();
            offs.push(a[0].log_offset);
        }
        assert!(segments(d.path()).len() >= 3);
        cut = offs[21];
        assert!(matches!(
            s.truncate(cut + 1),
            Err(StoreError::NotRecordBoundary(_)) | Err(StoreError::Corrupt { .. })
        ));
        assert!(s.truncate(s.log_end_offset() + 1).is_err());
        s.truncate(cut).unwrap();
        assert_eq!(s.log_end_offset(), cut);
        assert_eq!(s.durable_offset(), cut);
        assert!(s.read_at(offs[22]).is_err());
        assert_eq!(s.queue_offsets("t", 0), (0, 11));
        assert_eq!(s.queue_offsets("t", 1), (0, 10));
        let a = s.append_blocking(vec![rec("t", 1, "new")]).unwrap();
        assert_eq!((a[0].log_offset, a[0].queue_offset), (cut, 10));
        check_queues_match_log(&s);
    }
    let s = open(d.path());
    assert!(s.fenced().is_none());
    let all: Vec<_> = s.scan(0).map(Result::unwrap).collect();
    assert_eq!(all.len(), 22);
    assert_eq!(all[21].body, "new");
    check_queues_match_log(&s);
    // Closed, no file holds bytes past the end (the zeros written ahead of the writer are
    // cut at close).
    let end = s.log_end_offset();
    drop(s);
    let total: u64 = segments(d.path())
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .sum();
    assert_eq!(total, end);
}

#[test]
fn truncate_then_crash_without_checkpoint_does_not_resurrect_tail() {
    let d = tempfile::tempdir().unwrap();
    let cut = {
        let s = open(d.path());
        let offs = fill(&s, "t", 0, 10, "x");
        s.truncate(offs[4]).unwrap();
        offs[4]
    };
    fs::remove_file(d.path().join("checkpoint")).unwrap();
    fs::remove_dir_all(d.path().join("consumequeue")).unwrap();
    let s = open(d.path());
    assert_eq!(s.log_end_offset(), cut);
    assert_eq!(s.queue_offsets("t", 0), (0, 4));
}

fn many_queues(d: &Path) -> Store {
    let s = open(d);
    for i in 0..60u32 {
        s.append_blocking(vec![rec(
            if i % 5 == 0 { "x.y/z" } else { "t" },
            i % 4,
            &format!("{i}"),
        )])
        .unwrap();
    }
    s
}

#[test]
fn consume_queues_rebuilt_when_deleted() {
    let d = tempfile::tempdir().unwrap();
    drop(many_queues(d.path()));
    fs::remove_dir_all(d.path().join("consumequeue")).unwrap();
    let s = open(d.path());
    check_queues_match_log(&s);
    assert_eq!(s.queues().len(), 8);
}

#[test]
fn consume_queue_rebuilt_when_one_file_deleted() {
    let d = tempfile::tempdir().unwrap();
    drop(many_queues(d.path()));
    fs::remove_file(d.path().join("consumequeue/t/1")).unwrap();
    let s = open(d.path());
    check_queues_match_log(&s);
}

#[test]
fn consume_queue_rebuilt_when_entries_corrupt_or_lost() {
    let d = tempfile::tempdir().unwrap();
    drop(many_queues(d.path()));
    // Garbage in the last entry of one queue.
    let p = d.path().join("consumequeue/t/2");
    let len = fs::metadata(&p).unwrap().len();
    flip_byte(&p, len - 15);
    let s = open(d.path());
    check_queues_match_log(&s);
    drop(s);
    // Lost entries in the middle of the flushed range (file shortened).
    let p = d.path().join("consumequeue/t/3");
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(40).unwrap();
    drop(f);
    let s = open(d.path());
    check_queues_match_log(&s);
    drop(s);
    // A partial trailing entry.
    append_bytes(&d.path().join("consumequeue/t/0"), &[1, 2, 3]);
    let s = open(d.path());
    check_queues_match_log(&s);
}

#[test]
fn consume_queue_redispatched_from_stale_checkpoint() {
    let d = tempfile::tempdir().unwrap();
    {
        let s = open(d.path());
        fill(&s, "t", 0, 10, "a");
        s.flush_queues().unwrap();
        fs::copy(d.path().join("checkpoint"), d.path().join("ck.old")).unwrap();
        fill(&s, "t", 0, 10, "b");
        fill(&s, "u", 0, 3, "b");
    }
    fs::rename(d.path().join("ck.old"), d.path().join("checkpoint")).unwrap();
    // The CQ files lost everything after the old checkpoint (never flushed).
    let p = d.path().join("consumequeue/t/0");
    OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(200)
        .unwrap();
    fs::remove_dir_all(d.path().join("consumequeue/u")).unwrap();
    let s = open(d.path());
    assert_eq!(s.queue_offsets("t", 0), (0, 20));
    assert_eq!(s.queue_offsets("u", 0), (0, 3));
    check_queues_match_log(&s);
}

#[test]
fn fsync_failure_fences_and_fails_waiters() {
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path());
    let good = fill(&s, "t", 0, 3, "ok");
    s.inject_fault(Fault::NextSync);
    let err = s.append_blocking(vec![rec("t", 0, "doomed")]).unwrap_err();
    assert!(matches!(err, StoreError::Io(_)), "{err:?}");
    let reason = s.fenced().expect("fenced after fsync error");
    assert!(reason.contains("fsync"), "{reason}");
    assert!(matches!(
        s.append_blocking(vec![rec("t", 0, "later")]),
        Err(StoreError::Fenced(_))
    ));
    assert!(matches!(s.begin_epoch(9), Err(StoreError::Fenced(_))));
    for o in good {
        assert!(s.read_at(o).is_ok());
    }
    // Reopening (a restart) recovers normally.
    drop(s);
    let s = open(d.path());
    assert!(s.fenced().is_none());
    s.append_blocking(vec![rec("t", 0, "after restart")])
        .unwrap();
    check_queues_match_log(&s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_failure_fences_every_pending_waiter() {
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path());
    s.append(vec![rec("t", 0, "a"), rec("t", 0, "b")])
        .await
        .unwrap();
    s.inject_fault(Fault::NextWrite);
    let mut tasks = Vec::new();
    for i in 0..16 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.append(vec![rec("t", 0, &format!("{i}"))]).await
        }));
    }
    let mut failed = 0;
    for t in tasks {
        if t.await.unwrap().is_err() {
            failed += 1;
        }
    }
    assert_eq!(failed, 16, "no append may succeed after the failed write");
    assert!(s.fenced().is_some());
    assert_eq!(s.stats().records, 2);
}

/// An fsync failure under concurrent load (batches in the sync stage) fences the
/// log: nothing is acknowledged after the failure, every later append is refused,
/// and everything acknowledged before it reads back after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsync_failure_under_load_acks_nothing_after_it() {
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path());
    let mut tasks = Vec::new();
    for t in 0..32 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..200 {
                match s.append(vec![rec("t", t % 4, &format!("{t}-{i}"))]).await {
                    Ok(a) => acked.push((a[0].log_offset, format!("{t}-{i}"))),
                    Err(_) => break,
                }
            }
            acked
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    s.inject_fault(Fault::NextSync);
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    assert!(s.fenced().is_some(), "the fsync failure fenced the log");
    assert!(matches!(
        s.append(vec![rec("t", 0, "later")]).await,
        Err(StoreError::Fenced(_))
    ));
    assert!(acked.len() < 32 * 200, "the failure stopped the appenders");
    let durable = s.durable_offset();
    for (off, _) in &acked {
        assert!(
            *off < durable,
            "acked record at {off} beyond the durable offset {durable}"
        );
    }
    drop(s);
    let s = open(d.path());
    for (off, body) in &acked {
        let r = s.read_at(*off).unwrap();
        assert_eq!(&r.body[..], body.as_bytes());
    }
    check_queues_match_log(&s);
}
