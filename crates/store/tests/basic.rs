mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{cfg, fill, master_and_slave, open, rec, segments};
use sofamq_store::{Fault, FlushMode, NewRecord, RawAppend, Store, StoreError};

#[test]
fn records_round_trip_all_fields() {
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path());
    let r = NewRecord {
        topic: "orders".into(),
        queue_id: 7,
        flags: 0xdead_beef,
        tag: "TagA".into(),
        born_ts_ms: 123_456,
        properties: vec![("a".into(), "1".into()), ("UNIQ_KEY".into(), "x-y".into())],
        body: Bytes::from_static(b"payload bytes"),
    };
    let a = s.append_blocking(vec![r.clone(), r.clone()]).unwrap();
    assert_eq!(a.len(), 2);
    assert_eq!(a[0].log_offset, 0);
    assert_eq!(a[1].log_offset, u64::from(a[0].size));
    assert_eq!((a[0].queue_offset, a[1].queue_offset), (0, 1));
    for (i, app) in a.iter().enumerate() {
        let got = s.read_at(app.log_offset).unwrap();
        assert_eq!(got.log_offset, app.log_offset);
        assert_eq!(got.size, app.size);
        assert_eq!(got.queue_offset, i as u64);
        assert_eq!(got.store_ts_ms, app.store_ts_ms);
        assert_eq!(got.epoch, 0);
        assert_eq!(got.topic, r.topic);
        assert_eq!(got.queue_id, r.queue_id);
        assert_eq!(got.flags, r.flags);
        assert_eq!(got.tag, r.tag);
        assert_eq!(got.born_ts_ms, r.born_ts_ms);
        assert_eq!(got.properties, r.properties);
        assert_eq!(got.body, r.body);
    }
    assert_eq!(s.log_end_offset(), a[1].log_offset + u64::from(a[1].size));
    assert_eq!(s.durable_offset(), s.log_end_offset());
    // A non-boundary offset is refused, never misread.
    assert!(s.read_at(1).is_err());
    assert!(s.read_at(s.log_end_offset()).is_err());
}

#[test]
fn read_queue_respects_count_bytes_and_queues() {
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path());
    for i in 0..20 {
        s.append_blocking(vec![rec("t", i % 2, &format!("m{i:03}"))])
            .unwrap();
    }
    assert_eq!(s.queue_offsets("t", 0), (0, 10));
    assert_eq!(s.queue_offsets("t", 1), (0, 10));
    assert_eq!(s.queue_offsets("nope", 0), (0, 0));
    assert_eq!(s.queues(), vec![("t".into(), 0), ("t".into(), 1)]);
    let all = s.read_queue("t", 1, 0, 100, usize::MAX).unwrap();
    assert_eq!(all.len(), 10);
    for (i, r) in all.iter().enumerate() {
        assert_eq!(r.queue_offset, i as u64);
        assert_eq!(r.body, format!("m{:03}", 2 * i + 1));
    }
    let three = s.read_queue("t", 0, 4, 3, usize::MAX).unwrap();
    assert_eq!(
        three.iter().map(|r| r.queue_offset).collect::<Vec<_>>(),
        [4, 5, 6]
    );
    let one_size = all[0].size as usize;
    let by_bytes = s.read_queue("t", 0, 0, 100, one_size * 2 + 1).unwrap();
    assert_eq!(by_bytes.len(), 2);
    // At least one record even when it is bigger than max_bytes.
    assert_eq!(s.read_queue("t", 0, 0, 100, 1).unwrap().len(), 1);
    assert!(
        s.read_queue("t", 0, 10, 100, usize::MAX)
            .unwrap()
            .is_empty()
    );
    let entries = s.read_queue_entries("t", 0, 0, 100).unwrap();
    assert_eq!(entries.len(), 10);
    assert_eq!(entries[0].tag_hash, sofamq_store::tag_hash("tag-0"));
}

#[test]
fn replication_limit_bounds_readers() {
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path());
    let offs = fill(&s, "t", 0, 5, "x");
    s.set_replication_limit(Some(offs[2]));
    assert_eq!(s.readable_offset(), offs[2]);
    assert_eq!(s.read_queue("t", 0, 0, 100, usize::MAX).unwrap().len(), 2);
    assert_eq!(s.queue_offsets("t", 0), (0, 2));
    s.set_replication_limit(None);
    assert_eq!(s.readable_offset(), s.durable_offset());
    assert_eq!(s.queue_offsets("t", 0), (0, 5));
}

/// A master's limit is checkpointed: reopened, it reads no further than its slaves had acked
/// (the simulator found a restarted master delivering a tail its slave never held), while
/// its own state replay still reads every durable record.
#[test]
fn the_replication_limit_survives_a_reopen() {
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path());
    let offs = fill(&s, "t", 0, 5, "x");
    s.set_replication_limit(Some(offs[2]));
    s.flush_queues().unwrap();
    drop(s);
    let s = open(d.path());
    assert_eq!(s.readable_offset(), offs[2]);
    assert_eq!(s.read_queue("t", 0, 0, 100, usize::MAX).unwrap().len(), 2);
    assert_eq!(
        s.read_queue_durable("t", 0, 0, 100, usize::MAX)
            .unwrap()
            .len(),
        5
    );
    // Without a limit (a slave, a single copy), the whole durable log is readable again.
    s.set_replication_limit(None);
    s.flush_queues().unwrap();
    drop(s);
    let s = open(d.path());
    assert_eq!(s.readable_offset(), s.durable_offset());
    assert_eq!(s.read_queue("t", 0, 0, 100, usize::MAX).unwrap().len(), 5);
}

#[test]
fn invalid_records_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let mut c = cfg(d.path());
    c.max_record_size = 1000;
    let s = Store::open(c).unwrap();
    let mut big = rec("t", 0, "x");
    big.body = Bytes::from(vec![0u8; 2000]);
    assert!(matches!(
        s.append_blocking(vec![rec("t", 0, "ok"), big]),
        Err(StoreError::InvalidRecord(_))
    ));
    assert!(matches!(
        s.append_blocking(vec![rec("", 0, "x")]),
        Err(StoreError::InvalidRecord(_))
    ));
    // Nothing of the refused batch was written.
    assert_eq!(s.log_end_offset(), 0);
}

#[test]
fn segments_roll_and_reopen_reads_everything() {
    let d = tempfile::tempdir().unwrap();
    let mut offs = Vec::new();
    {
        let s = open(d.path());
        for chunk in 0..20 {
            let batch: Vec<_> = (0..10)
                .map(|i| rec("roll", i % 3, &format!("{chunk}-{i}-{}", "p".repeat(200))))
                .collect();
            offs.extend(
                s.append_blocking(batch)
                    .unwrap()
                    .iter()
                    .map(|a| a.log_offset),
            );
        }
    }
    let segs = segments(d.path());
    assert!(
        segs.len() > 5,
        "expected several segments, got {}",
        segs.len()
    );
    let mut prev_end = 0;
    for p in &segs {
        let name: u64 = p.file_name().unwrap().to_str().unwrap().parse().unwrap();
        assert_eq!(name, prev_end, "segments are contiguous and named by start");
        let len = std::fs::metadata(p).unwrap().len();
        assert!(len <= 8 * 1024);
        prev_end += len;
    }
    let s = open(d.path());
    assert!(s.fenced().is_none());
    assert_eq!(s.log_end_offset(), prev_end);
    let all: Vec<_> = s.scan(0).collect::<Result<_, _>>().unwrap();
    assert_eq!(all.len(), 200);
    assert_eq!(all.iter().map(|r| r.log_offset).collect::<Vec<_>>(), offs);
    for q in 0..3 {
        let rs = s.read_queue("roll", q, 0, 1000, usize::MAX).unwrap();
        assert_eq!(rs.len(), all.iter().filter(|r| r.queue_id == q).count());
    }
    // Appends continue with the right queue offsets.
    let a = s.append_blocking(vec![rec("roll", 0, "after")]).unwrap();
    assert_eq!(a[0].log_offset, prev_end);
    assert_eq!(a[0].queue_offset, 80);
}

#[test]
fn large_record_gets_its_own_segment() {
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path());
    fill(&s, "t", 0, 3, "small");
    let mut big = rec("t", 0, "big");
    big.body = Bytes::from(vec![7u8; 20_000]);
    let a = s.append_blocking(vec![big.clone()]).unwrap();
    fill(&s, "t", 0, 3, "after");
    drop(s);
    let s = open(d.path());
    assert_eq!(s.read_at(a[0].log_offset).unwrap().body, big.body);
    assert_eq!(s.scan(0).count(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_batches_concurrent_appends() {
    let d = tempfile::tempdir().unwrap();
    let mut c = cfg(d.path());
    c.segment_size = 64 * 1024 * 1024;
    let s = Store::open(c).unwrap();
    let before = s.stats();
    let mut tasks = Vec::new();
    for t in 0..64u32 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                let r = rec("gc", t % 4, &format!("{t}-{i}"));
                s.append(vec![r]).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let st = s.stats();
    let fsyncs = st.fsyncs - before.fsyncs;
    assert_eq!(st.records - before.records, 3200);
    assert!(
        fsyncs < 3200 / 4,
        "64 concurrent appenders x 50 caused {fsyncs} fsyncs"
    );
    // Queue offsets are dense per queue.
    for q in 0..4 {
        assert_eq!(s.queue_offsets("gc", q), (0, 800));
        let rs = s.read_queue("gc", q, 0, 1000, usize::MAX).unwrap();
        assert!(rs.windows(2).all(|w| w[0].log_offset < w[1].log_offset));
    }
}

#[test]
fn async_flush_mode_acks_and_syncs_in_background() {
    let d = tempfile::tempdir().unwrap();
    let mut c = cfg(d.path());
    c.flush = FlushMode::Async {
        interval: Duration::from_millis(10),
    };
    let s = Store::open(c).unwrap();
    fill(&s, "a", 0, 20, "x");
    let end = s.log_end_offset();
    let t = std::time::Instant::now();
    while s.durable_offset() < end {
        assert!(t.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(s);
    let s = open(d.path());
    assert_eq!(s.log_end_offset(), end);
    assert_eq!(s.queue_offsets("a", 0), (0, 20));
}

#[test]
fn epochs_are_durable_monotonic_and_stamped() {
    let d = tempfile::tempdir().unwrap();
    {
        let s = open(d.path());
        assert_eq!(s.current_epoch(), 0);
        fill(&s, "e", 0, 2, "zero");
        s.begin_epoch(3).unwrap();
        let a = fill(&s, "e", 0, 2, "three");
        assert_eq!(s.read_at(a[0]).unwrap().epoch, 3);
        assert!(matches!(
            s.begin_epoch(3),
            Err(StoreError::EpochNotIncreasing { .. })
        ));
        s.begin_epoch(5).unwrap();
    }
    let s = open(d.path());
    let h = s.epoch_history();
    assert_eq!(h.len(), 2);
    assert_eq!(h[0].epoch, 3);
    assert_eq!(h[1].epoch, 5);
    assert_eq!(h[1].start_offset, s.log_end_offset());
    assert_eq!(s.current_epoch(), 5);
    let a = fill(&s, "e", 0, 1, "five");
    assert_eq!(s.read_at(a[0]).unwrap().epoch, 5);
    // A cut at or below an epoch's start drops that epoch: at 5's start only 5, at 3's
    // start both.
    s.truncate(h[1].start_offset).unwrap();
    assert_eq!(s.current_epoch(), 3);
    assert_eq!(s.epoch_history(), h[..1]);
    s.truncate(h[0].start_offset).unwrap();
    assert_eq!(s.current_epoch(), 0);
    assert!(s.epoch_history().is_empty());
    s.truncate(0).unwrap();
    assert_eq!(s.current_epoch(), 0);
}

/// A log that follows a master refuses local appends submitted after `follow` (nothing
/// written) and still takes replicated records; an append submitted before it is written;
/// `begin_epoch` (a promotion) ends it. Without the refusal, a send admitted while the
/// broker was master and slow to reach the store landed in the copy of another master's log
/// (the chaos scenario master-pause: "raw append at 188488 but log end is 189308").
#[test]
fn a_following_log_takes_replicated_records_only() {
    let pair = master_and_slave();
    let (master, slave) = (&pair.master, &pair.slave);
    fill(master, "r", 0, 6, "m");
    slave.begin_epoch(1).unwrap();
    let before = slave.submit_append(vec![rec("r", 0, "before")]).unwrap();
    slave.follow();
    let after = slave.submit_append(vec![rec("r", 0, "after")]).unwrap();
    assert!(before.blocking_recv().unwrap().is_ok());
    assert!(matches!(
        after.blocking_recv().unwrap(),
        Err(StoreError::Following)
    ));
    assert!(matches!(
        slave.append_blocking(vec![rec("r", 0, "x")]),
        Err(StoreError::Following)
    ));
    // The follower cuts its own record and copies the master's.
    slave.truncate(0).unwrap();
    let chunk = master.read_raw(0, 1 << 20).unwrap();
    assert_eq!(
        slave.append_raw(0, &chunk).unwrap(),
        master.durable_offset()
    );
    assert_eq!(slave.log_end_offset(), master.log_end_offset());
    // Promoted: local appends again.
    slave.begin_epoch(2).unwrap();
    assert!(slave.append_blocking(vec![rec("r", 0, "new")]).is_ok());
}

/// A write carries the epoch its master admitted it in: once the log moved on (the master
/// stepped down and was elected again, or began to copy another master's epoch), the write
/// is refused and nothing is stored.
#[tokio::test]
async fn an_append_admitted_in_one_epoch_is_refused_in_another() {
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path());
    s.begin_epoch(3).unwrap();
    let a = s
        .append_in_epoch(3, vec![rec("r", 0, "in 3")])
        .await
        .unwrap();
    assert_eq!(a.len(), 1);
    let end = s.log_end_offset();
    s.begin_epoch(5).unwrap();
    match s.append_in_epoch(3, vec![rec("r", 0, "late")]).await {
        Err(StoreError::EpochChanged {
            admitted: 3,
            current: 5,
        }) => {}
        other => panic!("expected EpochChanged, got {other:?}"),
    }
    assert_eq!(s.log_end_offset(), end, "nothing written");
    // The same epoch, and a plain append, still go.
    s.append_in_epoch(5, vec![rec("r", 0, "in 5")])
        .await
        .unwrap();
    s.append(vec![rec("r", 0, "any")]).await.unwrap();
    let bodies: Vec<_> = s.scan(0).map(|r| r.unwrap().body).collect();
    assert_eq!(
        bodies,
        [Bytes::from("in 3"), Bytes::from("in 5"), Bytes::from("any")]
    );
}

/// A follower cut to where it began an epoch of its own (promoted there, demoted before it
/// wrote) drops that epoch, and takes its master's records of a lower epoch from there.
#[test]
fn a_cut_drops_an_epoch_begun_at_the_cut() {
    let pair = master_and_slave();
    let (master, slave) = (&pair.master, &pair.slave);
    fill(master, "r", 0, 4, "a");
    let head = master.read_raw(0, 1 << 20).unwrap();
    slave.append_raw(0, &head).unwrap();
    let end = slave.log_end_offset();
    // The slave was elected in epoch 2 at `end` and wrote nothing; the old master wrote on
    // in epoch 1 and was elected again in epoch 3.
    slave.begin_epoch(2).unwrap();
    fill(master, "r", 0, 3, "b");
    master.begin_epoch(3).unwrap();
    fill(master, "r", 0, 2, "c");
    let tail = master.read_raw(end, 1 << 20).unwrap();
    assert!(matches!(
        slave.append_raw(end, &tail),
        Err(StoreError::Corrupt { .. })
    ));
    slave.truncate(end).unwrap();
    assert_eq!(slave.current_epoch(), 1);
    assert_eq!(
        slave.append_raw(end, &tail).unwrap(),
        master.durable_offset()
    );
    assert_eq!(slave.epoch_history(), master.epoch_history());
    let m: Vec<_> = master.scan(0).map(Result::unwrap).collect();
    let s: Vec<_> = slave.scan(0).map(Result::unwrap).collect();
    assert_eq!(m, s);
}

#[test]
fn raw_replication_copies_a_log_exactly() {
    let pair = master_and_slave();
    let (master, slave) = (&pair.master, &pair.slave);
    for i in 0..40 {
        master
            .append_blocking(vec![rec("r", i % 2, &format!("{i}{}", "z".repeat(300)))])
            .unwrap();
    }
    master.begin_epoch(2).unwrap();
    fill(master, "r", 0, 10, "e2");
    let mut pos = 0;
    while pos < master.durable_offset() {
        let chunk = master.read_raw(pos, 3000).unwrap();
        assert!(!chunk.is_empty());
        let durable = slave.append_raw(pos, &chunk).unwrap();
        pos += chunk.len() as u64;
        assert_eq!(durable, pos);
    }
    assert!(master.read_raw(pos, 3000).unwrap().is_empty());
    assert_eq!(slave.log_end_offset(), master.log_end_offset());
    let m: Vec<_> = master.scan(0).map(Result::unwrap).collect();
    let s: Vec<_> = slave.scan(0).map(Result::unwrap).collect();
    assert_eq!(m, s);
    assert_eq!(slave.queue_offsets("r", 0), master.queue_offsets("r", 0));
    assert_eq!(slave.epoch_history(), master.epoch_history());
    // Wrong start offset and damaged bytes are refused.
    let chunk = master.read_raw(0, 1000).unwrap();
    assert!(matches!(
        slave.append_raw(0, &chunk),
        Err(StoreError::OffsetMismatch { .. })
    ));
    let mut bad = master.read_raw(0, 1000).unwrap();
    bad[100] ^= 1;
    assert!(matches!(
        slave.append_raw(pos, &bad),
        Err(StoreError::Corrupt { .. })
    ));
    assert!(slave.fenced().is_none());
    // Raw from a non-boundary offset is refused.
    assert!(master.read_raw(5, 1000).is_err());
}

/// Replication sends records without a frame-level checksum over them (the records carry
/// their own): the slave must refuse any single flipped bit anywhere in a chunk, and store
/// nothing of it. Also: `read_written_into` returns whole records below the written end,
/// reuses its buffer, and refuses a non-boundary start.
#[test]
fn raw_append_refuses_every_flipped_bit() {
    let pair = master_and_slave();
    let (master, slave) = (&pair.master, &pair.slave);
    fill(master, "r", 0, 3, "abc");
    fill(master, "q", 1, 1, "def");
    let chunk = master.read_raw(0, 1 << 20).unwrap();
    assert_eq!(chunk.len() as u64, master.durable_offset());
    let mut buf = vec![7u8; 5];
    let n = master.read_written_into(0, 1 << 20, &mut buf, 5).unwrap();
    assert_eq!(&buf[5..5 + n], &chunk[..]);
    assert_eq!(&buf[..5], &[7u8; 5]);
    let n2 = master.read_written_into(0, 10, &mut buf, 5).unwrap();
    assert!(n2 > 0 && n2 < n, "at least one whole record: {n2}");
    assert_eq!(
        master
            .read_written_into(n as u64, 1 << 20, &mut buf, 5)
            .unwrap(),
        0
    );
    assert!(master.read_written_into(3, 1 << 20, &mut buf, 5).is_err());

    for bit in 0..chunk.len() * 8 {
        let mut bad = chunk.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        let r = slave.append_raw(0, &bad);
        assert!(r.is_err(), "flipped bit {bit} accepted");
        assert_eq!(slave.log_end_offset(), 0);
    }
    assert!(slave.fenced().is_none());
    assert_eq!(slave.append_raw(0, &chunk).unwrap(), chunk.len() as u64);
    let m: Vec<_> = master.scan(0).map(Result::unwrap).collect();
    let s: Vec<_> = slave.scan(0).map(Result::unwrap).collect();
    assert_eq!(m, s);
}

#[tokio::test]
async fn scan_from_the_middle_and_async_append() {
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path());
    let mut offs = Vec::new();
    for i in 0..30 {
        let a = s
            .append(vec![rec("s", 0, &format!("{i}{}", "q".repeat(500)))])
            .await
            .unwrap();
        offs.push(a[0].log_offset);
    }
    let tail: Vec<_> = s.scan(offs[10]).map(Result::unwrap).collect();
    assert_eq!(tail.len(), 20);
    assert_eq!(tail[0].log_offset, offs[10]);
    assert_eq!(tail[19].body, format!("29{}", "q".repeat(500)));
}

/// A slave's lone replicated append, the writer idle, is written, fdatasynced and
/// completed on the caller's thread: it comes back done (no hand-off to the writer thread
/// to wait on), durable, with its consume-queue entries. In async-flush mode it is always
/// queued (the writer thread alone decides when to sync there).
#[test]
fn a_lone_replicated_append_is_committed_on_the_callers_thread() {
    let pair = master_and_slave();
    let (master, slave) = (&pair.master, &pair.slave);
    fill(master, "r", 0, 3, "m");
    let chunk = master.read_raw(0, 1 << 20).unwrap();
    let fsyncs = slave.stats().fsyncs;
    match slave
        .append_raw_here(0, Bytes::from(chunk.clone()))
        .unwrap()
    {
        RawAppend::Done(durable) => assert_eq!(durable, chunk.len() as u64),
        RawAppend::Queued(_) => panic!("queued although the writer was idle"),
    }
    assert_eq!(slave.durable_offset(), chunk.len() as u64);
    assert_eq!(slave.stats().fsyncs, fsyncs + 1);
    assert_eq!(slave.queue_offsets("r", 0), (0, 3));
    assert_eq!(&slave.read_at(0).unwrap().body[..], b"m-0");

    let d = tempfile::tempdir().unwrap();
    let mut c = cfg(d.path());
    c.flush = FlushMode::Async {
        interval: Duration::from_millis(5),
    };
    let lazy = Store::open(c).unwrap();
    let r = lazy.append_raw_here(0, Bytes::from(chunk.clone())).unwrap();
    assert!(matches!(r, RawAppend::Queued(_)), "{r:?}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(r.wait()).unwrap();
    assert_eq!(lazy.log_end_offset(), chunk.len() as u64);
}

/// A replicated run above `inline_sync_max_bytes` is written on the caller's thread but
/// fdatasynced by the sync thread: it comes back queued and already written, so the
/// caller may write the next frames meanwhile; a run within the limit is still committed
/// on the caller's thread.
#[test]
fn a_large_replicated_run_is_synced_by_the_sync_thread() {
    let pair = master_and_slave();
    let master = &pair.master;
    fill(master, "r", 0, 4, "m");
    let all = master.read_raw(0, 1 << 20).unwrap();
    let first = master.read_raw(0, 1).unwrap();
    let d = tempfile::tempdir().unwrap();
    let mut c = cfg(d.path());
    c.inline_sync_max_bytes = first.len();
    let slave = Store::open(c).unwrap();
    let r = slave
        .append_raw_here(0, Bytes::from(first.clone()))
        .unwrap();
    assert!(
        matches!(r, RawAppend::Done(n) if n == first.len() as u64),
        "{r:?}"
    );
    let rest = Bytes::copy_from_slice(&all[first.len()..]);
    let r = slave.append_raw_here(first.len() as u64, rest).unwrap();
    assert!(matches!(r, RawAppend::Queued(_)), "{r:?}");
    assert_eq!(
        slave.written_offset(),
        all.len() as u64,
        "written before the wait"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    assert_eq!(rt.block_on(r.wait()).unwrap(), all.len() as u64);
    assert_eq!(slave.durable_offset(), all.len() as u64);
    assert_eq!(slave.queue_offsets("r", 0), (0, 4));
}

/// The writer busy (its thread inside a slow fdatasync of an earlier append): a
/// replicated append does not wait for the writer on the caller's thread but is queued
/// behind it, and the two land in log order.
#[test]
fn a_replicated_append_finding_the_writer_busy_is_queued_behind_it() {
    let pair = master_and_slave();
    let (master, slave) = (&pair.master, &pair.slave);
    let offsets = fill(master, "r", 0, 4, "m");
    let all = master.read_raw(0, 1 << 20).unwrap();
    let cut = offsets[2] as usize;
    slave.inject_fault(Fault::SlowNextSync(400));
    let first = {
        let (s, bytes) = (slave.clone(), all[..cut].to_vec());
        std::thread::spawn(move || s.append_raw(0, &bytes))
    };
    let t0 = std::time::Instant::now();
    while slave.written_offset() < cut as u64 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "first append never written"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(
        slave.durable_offset() < cut as u64,
        "the slow fdatasync already ended"
    );
    let r = slave
        .append_raw_here(cut as u64, Bytes::copy_from_slice(&all[cut..]))
        .unwrap();
    assert!(matches!(r, RawAppend::Queued(_)), "{r:?}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    assert_eq!(rt.block_on(r.wait()).unwrap(), all.len() as u64);
    assert_eq!(first.join().unwrap().unwrap(), cut as u64);
    assert_eq!(slave.queue_offsets("r", 0), (0, 4));
    for (i, off) in offsets.iter().enumerate() {
        assert_eq!(
            slave.read_at(*off).unwrap().body,
            format!("m-{i}").into_bytes()
        );
    }
}
