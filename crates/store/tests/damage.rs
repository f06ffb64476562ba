//! Damage on one replica: a flipped byte below the durable offset fences the log with the
//! damaged offset (found on open or on a read); `cut_damage` keeps the damaged bytes aside,
//! cuts the log there and lifts the fence, and fetching the range again from a healthy copy
//! gives back a log identical to it, consume queues included.

mod common;

use std::os::unix::fs::FileExt;
use std::path::Path;

use common::{check_queues_match_log, copy_dir, fill};
use sofamq_store::{Store, StoreError};

/// A healthy store of three queues over several small segments, and a copy of its directory.
fn healthy_pair(root: &Path) -> (Store, std::path::PathBuf) {
    let m = root.join("master");
    let s = common::open(&m);
    for q in 0..3 {
        fill(&s, "t", q, 100, &format!("q{q}"));
    }
    s.flush_queues().unwrap();
    drop(s);
    let copy = root.join("replica");
    copy_dir(&m, &copy);
    (common::open(&m), copy)
}

fn segments(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir.join("commitlog"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

/// Flips one byte `at` bytes into segment file `seg`.
fn flip(seg: &Path, at: u64) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(seg)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0x40;
    f.write_all_at(&b, at).unwrap();
    f.sync_all().unwrap();
}

/// Offset (in the log) of the record holding byte `pos` of the log, scanning the master.
fn record_holding(m: &Store, pos: u64) -> u64 {
    m.scan(0)
        .map(|r| r.unwrap())
        .find(|r| r.log_offset + u64::from(r.size) > pos)
        .unwrap()
        .log_offset
}

/// What a slave does after the cut: fetch from its log end until it has the master's.
fn refetch(m: &Store, s: &Store) {
    while s.log_end_offset() < m.log_end_offset() {
        let bytes = m.read_raw(s.log_end_offset(), 64 * 1024).unwrap();
        assert!(!bytes.is_empty());
        s.append_raw(s.log_end_offset(), &bytes).unwrap();
    }
}

fn same_log(m: &Store, s: &Store) {
    let a = m.read_raw(0, usize::MAX).unwrap();
    let b = s.read_raw(0, usize::MAX).unwrap();
    assert_eq!(a.len(), b.len());
    assert!(a == b, "the repaired log differs from the healthy copy");
    for q in 0..3 {
        assert_eq!(m.queue_offsets("t", q), s.queue_offsets("t", q));
    }
    check_queues_match_log(s);
}

#[test]
fn damage_in_the_active_segment_is_found_on_open_cut_and_fetched_again() {
    let d = tempfile::tempdir().unwrap();
    let (m, copy) = healthy_pair(d.path());
    let segs = segments(&copy);
    let last = segs.last().unwrap();
    let start: u64 = last.file_name().unwrap().to_str().unwrap().parse().unwrap();
    let len = std::fs::metadata(last).unwrap().len();
    let pos = start + len / 3;
    flip(last, len / 3);
    let bad = record_holding(&m, pos);

    let s = common::open(&copy);
    let reason = s
        .fenced()
        .expect("a flipped byte below the durable offset fences");
    assert!(reason.contains("corrupt record"), "{reason}");
    assert_eq!(s.damaged_from(), Some(bad));
    assert_eq!(s.log_end_offset(), bad, "nothing past the damage is served");
    let err = s.append_raw(bad, b"x").unwrap_err();
    assert!(matches!(err, StoreError::Fenced(_)), "{err}");

    let cut = s.cut_damage().unwrap().expect("a damaged log is cut");
    assert_eq!(cut.at, bad);
    assert_eq!(cut.old_end, m.log_end_offset());
    // The damaged bytes are kept for the operator, not destroyed.
    let kept: u64 = std::fs::read_dir(&cut.kept_in)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert_eq!(kept, cut.old_end - cut.at);
    assert_eq!(s.fenced(), None);
    assert_eq!(s.damaged_from(), None);
    assert_eq!(s.log_end_offset(), bad);
    assert_eq!(s.cut_damage().unwrap(), None, "nothing left to cut");

    refetch(&m, &s);
    same_log(&m, &s);
    // And it stays repaired across a restart.
    drop(s);
    let s = common::open(&copy);
    assert_eq!(s.fenced(), None);
    same_log(&m, &s);
}

#[test]
fn damage_in_a_sealed_segment_is_found_on_read_cut_and_fetched_again() {
    let d = tempfile::tempdir().unwrap();
    let (m, copy) = healthy_pair(d.path());
    let segs = segments(&copy);
    assert!(segs.len() >= 3, "the test needs sealed segments");
    let first_len = std::fs::metadata(&segs[0]).unwrap().len();
    flip(&segs[0], first_len / 2);
    let bad = record_holding(&m, first_len / 2);

    // Recovery scans from the checkpoint on: the sealed segment is not read at open.
    let s = common::open(&copy);
    assert_eq!(s.fenced(), None);
    let bad_rec = m.read_at(bad).unwrap();
    let err = s
        .read_queue("t", bad_rec.queue_id, bad_rec.queue_offset, 1, usize::MAX)
        .unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert!(s.fenced().is_some(), "a CRC failure on read fences");
    assert_eq!(s.damaged_from(), Some(bad));

    let cut = s.cut_damage().unwrap().unwrap();
    assert_eq!((cut.at, cut.old_end), (bad, m.log_end_offset()));
    refetch(&m, &s);
    same_log(&m, &s);
}

#[test]
fn an_io_fence_is_not_damage_and_is_not_cut() {
    let d = tempfile::tempdir().unwrap();
    let s = common::open(d.path());
    fill(&s, "t", 0, 5, "a");
    s.inject_fault(sofamq_store::Fault::NextSync);
    let _ = s.append_blocking(vec![common::rec("t", 0, "b")]);
    assert!(s.fenced().is_some());
    assert_eq!(s.damaged_from(), None);
    assert_eq!(s.cut_damage().unwrap(), None);
    assert!(s.fenced().is_some(), "an fsync failure stays fenced");
}

/// Start offset of segment file `seg`.
fn seg_start(seg: &Path) -> u64 {
    seg.file_name().unwrap().to_str().unwrap().parse().unwrap()
}

/// Opens the damaged `copy`: it must be fenced with the damage at `expect`, serve nothing
/// from there on, and after the cut and a fetch from `m` be identical to it (also after a
/// restart).
fn opens_damaged_then_repairs(m: &Store, copy: &Path, expect: u64, what: &str) {
    let s = common::open(copy);
    let reason = s.fenced().unwrap_or_else(|| panic!("{what}: not fenced"));
    assert_eq!(s.damaged_from(), Some(expect), "{what}: {reason}");
    assert!(
        s.log_end_offset() <= expect,
        "{what}: serves past the damage"
    );
    let cut = s.cut_damage().unwrap().expect("a damaged log is cut");
    assert_eq!(cut.at, expect, "{what}");
    assert_eq!(s.fenced(), None, "{what}");
    assert_eq!(s.log_end_offset(), expect, "{what}");
    refetch(m, &s);
    same_log(m, &s);
    drop(s);
    let s = common::open(copy);
    assert_eq!(s.fenced(), None, "{what}: fenced again after a restart");
    same_log(m, &s);
}

#[test]
fn a_truncated_sealed_segment_is_found_on_open_cut_and_fetched_again() {
    let d = tempfile::tempdir().unwrap();
    let (m, copy) = healthy_pair(d.path());
    let segs = segments(&copy);
    assert!(segs.len() >= 4, "the test needs sealed segments");
    let seg = &segs[1];
    let len = std::fs::metadata(seg).unwrap().len();
    let keep = len / 2 + 3; // mid-record, most likely
    std::fs::OpenOptions::new()
        .write(true)
        .open(seg)
        .unwrap()
        .set_len(keep)
        .unwrap();
    let bad = record_holding(&m, seg_start(seg) + keep);
    opens_damaged_then_repairs(&m, &copy, bad, "truncated sealed segment");
}

#[test]
fn a_removed_sealed_segment_in_the_middle_is_found_on_open_cut_and_fetched_again() {
    let d = tempfile::tempdir().unwrap();
    let (m, copy) = healthy_pair(d.path());
    let segs = segments(&copy);
    assert!(segs.len() >= 4);
    std::fs::remove_file(&segs[2]).unwrap();
    opens_damaged_then_repairs(&m, &copy, seg_start(&segs[2]), "removed middle segment");
}

#[test]
fn a_removed_first_segment_is_found_on_open_and_the_whole_log_fetched_again() {
    let d = tempfile::tempdir().unwrap();
    let (m, copy) = healthy_pair(d.path());
    let segs = segments(&copy);
    std::fs::remove_file(&segs[0]).unwrap();
    opens_damaged_then_repairs(&m, &copy, 0, "removed first segment");
}

#[test]
fn a_truncated_or_removed_active_segment_below_the_checkpoint_is_found_on_open() {
    let d = tempfile::tempdir().unwrap();
    let (m, copy) = healthy_pair(d.path());
    let pristine = d.path().join("pristine");
    copy_dir(&copy, &pristine);
    let segs = segments(&copy);
    let last = segs.last().unwrap();
    let len = std::fs::metadata(last).unwrap().len();
    assert!(len > 64);
    std::fs::OpenOptions::new()
        .write(true)
        .open(last)
        .unwrap()
        .set_len(len / 3)
        .unwrap();
    let bad = record_holding(&m, seg_start(last) + len / 3);
    opens_damaged_then_repairs(&m, &copy, bad, "truncated active segment");

    // The same replica, the active segment gone altogether.
    std::fs::remove_dir_all(&copy).unwrap();
    copy_dir(&pristine, &copy);
    std::fs::remove_file(segments(&copy).last().unwrap()).unwrap();
    opens_damaged_then_repairs(&m, &copy, seg_start(last), "removed active segment");
}

/// A master whose log was written in epochs 1..=4, each a run of records, and a copy.
fn epoch_pair(root: &Path) -> (Store, std::path::PathBuf) {
    let m = root.join("master");
    let s = common::open(&m);
    for e in 1..=4u64 {
        s.begin_epoch(e).unwrap();
        for q in 0..3 {
            fill(&s, "t", q, 30, &format!("e{e}q{q}"));
        }
    }
    s.flush_queues().unwrap();
    drop(s);
    let copy = root.join("replica");
    copy_dir(&m, &copy);
    (common::open(&m), copy)
}

#[test]
fn a_corrupt_epoch_entry_fences_from_the_last_good_epoch_and_is_fetched_again() {
    let d = tempfile::tempdir().unwrap();
    let (m, copy) = epoch_pair(d.path());
    let hist = m.epoch_history();
    assert_eq!(hist.len(), 4);
    // Entry 2 (epoch 3) is bad: which epoch wrote the records from epoch 2's start on is no
    // longer known, so they are fetched again from there.
    let path = copy.join("epochs");
    let mut b = std::fs::read(&path).unwrap();
    b[2 * 20 + 9] ^= 0x10;
    std::fs::write(&path, &b).unwrap();
    let s = common::open(&copy);
    let reason = s.fenced().expect("a corrupt epoch entry fences");
    assert!(reason.contains("epoch history entry 2"), "{reason}");
    assert_eq!(s.damaged_from(), Some(hist[1].start_offset), "{reason}");
    drop(s);
    opens_damaged_then_repairs(&m, &copy, hist[1].start_offset, "corrupt epoch entry");
    let s = common::open(&copy);
    assert_eq!(
        s.epoch_history(),
        hist,
        "the history is rebuilt from the records"
    );
    // The file holds exactly the good entries: no bad bytes left to be read back later.
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 4 * 20);
}

#[test]
fn a_corrupt_first_epoch_entry_fetches_the_whole_log_again() {
    let d = tempfile::tempdir().unwrap();
    let (m, copy) = epoch_pair(d.path());
    let path = copy.join("epochs");
    let mut b = std::fs::read(&path).unwrap();
    b[3] ^= 0x01;
    std::fs::write(&path, &b).unwrap();
    opens_damaged_then_repairs(&m, &copy, 0, "corrupt first epoch entry");
    assert_eq!(common::open(&copy).epoch_history(), m.epoch_history());
}

#[test]
fn a_damaged_or_missing_checkpoint_costs_a_full_scan_and_nothing_else() {
    let d = tempfile::tempdir().unwrap();
    let (m, copy) = healthy_pair(d.path());
    let pristine = d.path().join("pristine");
    copy_dir(&copy, &pristine);
    for what in ["flipped", "zeroed", "removed", "truncated"] {
        std::fs::remove_dir_all(&copy).unwrap();
        copy_dir(&pristine, &copy);
        let ck = copy.join("checkpoint");
        let mut b = std::fs::read(&ck).unwrap();
        match what {
            "flipped" => {
                b[10] ^= 0x20;
                std::fs::write(&ck, &b).unwrap();
            }
            "zeroed" => std::fs::write(&ck, vec![0u8; b.len()]).unwrap(),
            "removed" => std::fs::remove_file(&ck).unwrap(),
            _ => std::fs::write(&ck, &b[..b.len() / 2]).unwrap(),
        }
        let s = common::open(&copy);
        assert_eq!(s.fenced(), None, "{what} checkpoint");
        same_log(&m, &s);
        drop(s);
        // A fresh checkpoint is written and trusted again.
        let s = common::open(&copy);
        same_log(&m, &s);
    }
}

/// A byte that rots in a sealed segment of an open store (recovery will not read it again,
/// nobody consumes it) is found by the background scrub: the log is fenced at that record,
/// as a damaged read would fence it, and `cut_damage` can cut there.
#[test]
fn the_scrub_finds_a_flip_in_a_sealed_segment_of_an_open_store() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("s");
    let mut c = common::cfg(&dir);
    c.scrub_bytes_per_sec = 64 * 1024 * 1024;
    c.scrub_pause = std::time::Duration::from_millis(200);
    let s = Store::open(c).unwrap();
    for q in 0..3 {
        fill(&s, "t", q, 100, &format!("q{q}"));
    }
    let segs = segments(&dir);
    assert!(segs.len() > 2, "several segments: {segs:?}");
    // Clean passes first: nothing is fenced by reading a healthy log.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    // (Two passes, and together they read at least the whole log: the first may have begun
    // while the log was still being filled, on a loaded machine.)
    while s.stats().scrub_passes < 2 || s.stats().scrub_bytes < s.durable_offset() {
        assert!(
            std::time::Instant::now() < deadline,
            "no scrub pass over the whole log: {:?}",
            s.stats()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(s.fenced(), None);
    assert_eq!(s.stats().scrub_damage, 0);
    assert!(s.stats().scrub_bytes >= s.durable_offset());
    // Rot a byte in the middle of the first (sealed) segment.
    let at = 3000;
    let victim = record_holding(&s, at);
    flip(&segs[0], at);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while s.fenced().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the scrub never found the flip"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let reason = s.fenced().unwrap();
    assert!(reason.contains("found by the scrub"), "{reason}");
    assert_eq!(s.damaged_from(), Some(victim), "{reason}");
    assert_eq!(s.stats().scrub_damage, 1);
    assert!(matches!(
        s.append_blocking(vec![common::rec("t", 0, "x")]),
        Err(StoreError::Fenced(_))
    ));
    let cut = s.cut_damage().unwrap().expect("damage to cut");
    assert_eq!(cut.at, victim);
    assert_eq!(s.fenced(), None);
    assert_eq!(s.log_end_offset(), victim);
}

/// With the scrub off, the same rot goes unnoticed while nothing reads it: the scrub is
/// what finds it.
#[test]
fn without_the_scrub_the_rot_stays_hidden() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("s");
    let mut c = common::cfg(&dir);
    c.scrub_bytes_per_sec = 0;
    let s = Store::open(c).unwrap();
    for q in 0..3 {
        fill(&s, "t", q, 100, &format!("q{q}"));
    }
    flip(&segments(&dir)[0], 3000);
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(s.fenced(), None);
    assert_eq!(s.stats().scrub_passes, 0);
}

/// An epoch's entry is durable before its first record, so records of an epoch the
/// history lacks mean the history lost entries: a removed file refetches the whole log,
/// a lost (or unreadable) last entry refetches from the last known epoch's start.
#[test]
fn a_removed_epoch_file_or_a_lost_last_entry_is_damage() {
    let d = tempfile::tempdir().unwrap();
    let (m, copy) = epoch_pair(d.path());
    let hist = m.epoch_history();
    let pristine = d.path().join("pristine");
    copy_dir(&copy, &pristine);
    let path = copy.join("epochs");

    std::fs::remove_file(&path).unwrap();
    let s = common::open(&copy);
    let reason = s.fenced().expect("a removed epoch file fences");
    assert!(reason.contains("epoch history lacks epoch 4"), "{reason}");
    drop(s);
    opens_damaged_then_repairs(&m, &copy, 0, "removed epoch file");
    assert_eq!(common::open(&copy).epoch_history(), hist);

    for what in ["lost", "flipped"] {
        std::fs::remove_dir_all(&copy).unwrap();
        copy_dir(&pristine, &copy);
        let mut b = std::fs::read(&path).unwrap();
        match what {
            "lost" => b.truncate(3 * 20),
            _ => b[3 * 20 + 5] ^= 0x08,
        }
        std::fs::write(&path, &b).unwrap();
        opens_damaged_then_repairs(&m, &copy, hist[2].start_offset, what);
        assert_eq!(common::open(&copy).epoch_history(), hist, "{what}");
    }
}

fn queue_file(dir: &Path, topic: &str, queue: u32) -> std::path::PathBuf {
    dir.join("consumequeue").join(topic).join(queue.to_string())
}

/// Two entries of a consume queue swapped in the middle (both point at real records, the
/// tail that recovery checks is right): the scrub finds that they do not match the log,
/// marks the queues for rebuilding, and the next open rebuilds them from the log.
#[test]
fn the_scrub_finds_a_damaged_queue_entry_and_the_next_open_rebuilds_the_queues() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("s");
    let fast = || {
        let mut c = common::cfg(&dir);
        c.scrub_bytes_per_sec = 64 * 1024 * 1024;
        c.scrub_pause = std::time::Duration::from_millis(200);
        c
    };
    let s = Store::open(fast()).unwrap();
    fill(&s, "t", 0, 50, "x");
    s.flush_queues().unwrap();
    let cq = queue_file(&dir, "t", 0);
    let mut b = std::fs::read(&cq).unwrap();
    assert_eq!(b.len(), 50 * 20);
    let tenth: Vec<u8> = b[200..220].to_vec();
    b.copy_within(220..240, 200);
    b[220..240].copy_from_slice(&tenth);
    std::fs::write(&cq, &b).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while s.queues_damaged().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the scrub never found it"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let why = s.queues_damaged().unwrap();
    assert!(
        why.contains("found by the scrub") && why.contains("t/0"),
        "{why}"
    );
    assert_eq!(
        s.fenced(),
        None,
        "a queue is derived data: the log stays writable"
    );
    assert!(dir.join("rebuild-queues").exists());
    drop(s);
    let s = Store::open(fast()).unwrap();
    assert!(
        !dir.join("rebuild-queues").exists(),
        "marker removed after the rebuild"
    );
    let recs = s.read_queue("t", 0, 0, 100, usize::MAX).unwrap();
    assert_eq!(recs.len(), 50);
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(&r.body[..], format!("x-{i}").as_bytes());
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(s.queues_damaged(), None);
}

/// The same damage found by a consumer's read (the scrub off): the read fails rather than
/// deliver the wrong record, and the queues are marked for rebuilding.
#[test]
fn a_read_through_a_damaged_queue_entry_marks_the_queues_for_rebuilding() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("s");
    let mut c = common::cfg(&dir);
    c.scrub_bytes_per_sec = 0;
    let s = Store::open(c.clone()).unwrap();
    fill(&s, "t", 0, 50, "x");
    s.flush_queues().unwrap();
    let cq = queue_file(&dir, "t", 0);
    let mut b = std::fs::read(&cq).unwrap();
    let tenth: Vec<u8> = b[200..220].to_vec();
    b.copy_within(220..240, 200);
    b[220..240].copy_from_slice(&tenth);
    std::fs::write(&cq, &b).unwrap();
    assert!(s.read_queue("t", 0, 10, 1, usize::MAX).is_err());
    assert!(s.queues_damaged().is_some());
    drop(s);
    let s = Store::open(c).unwrap();
    assert_eq!(s.read_queue("t", 0, 0, 100, usize::MAX).unwrap().len(), 50);
}
