//! Random truncation of the last segment at any byte: reopening yields exactly the whole
//! records before the cut.

mod common;

use std::fs;

use common::{cfg, copy_dir, rec};
use proptest::prelude::*;
use sofamq_store::Store;

/// Builds a template log once: returns its dir and the records' (offset, end) in the last
/// segment's coordinates.
fn template() -> (tempfile::TempDir, Vec<(u64, u64)>) {
    let d = tempfile::tempdir().unwrap();
    let mut c = cfg(d.path());
    c.segment_size = 1 << 20;
    let s = Store::open(c).unwrap();
    let mut v = Vec::new();
    for i in 0..40 {
        let a = s
            .append_blocking(vec![rec(
                "p",
                i % 3,
                &"b".repeat(10 + (i as usize * 37) % 300),
            )])
            .unwrap();
        v.push((a[0].log_offset, a[0].log_offset + u64::from(a[0].size)));
    }
    drop(s);
    (d, v)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn truncated_segment_reopens_to_whole_record_prefix(cut_frac in 0.0f64..=1.0, keep_ck in any::<bool>()) {
        let (tpl, recs) = template();
        let total = recs.last().unwrap().1;
        let cut = (total as f64 * cut_frac) as u64;
        let d = tempfile::tempdir().unwrap();
        copy_dir(tpl.path(), d.path());
        // Cutting below the checkpointed durable offset is (correctly) fencing corruption; a
        // crash can only tear bytes past it, so model that by dropping the checkpoint.
        if !keep_ck || cut < total {
            fs::remove_file(d.path().join("checkpoint")).unwrap();
        }
        let seg = d.path().join("commitlog").join(format!("{:020}", 0));
        fs::OpenOptions::new().write(true).open(&seg).unwrap().set_len(cut).unwrap();
        let s = Store::open(cfg(d.path())).unwrap();
        prop_assert!(s.fenced().is_none());
        let expect: Vec<u64> = recs.iter().filter(|r| r.1 <= cut).map(|r| r.0).collect();
        let got: Vec<u64> = s.scan(0).map(|r| r.unwrap().log_offset).collect();
        prop_assert_eq!(&got, &expect);
        let end = recs.iter().filter(|r| r.1 <= cut).map(|r| r.1).max().unwrap_or(0);
        prop_assert_eq!(s.log_end_offset(), end);
        let n_q0 = expect.len().div_ceil(3) as u64;
        prop_assert_eq!(s.queue_offsets("p", 0), (0, n_q0));
        // Closed, the segment holds exactly the records (a running store may also hold the
        // zeros it writes ahead).
        drop(s);
        prop_assert_eq!(fs::metadata(&seg).unwrap().len(), end);
    }

    #[test]
    fn cut_below_checkpoint_is_fenced_not_silently_dropped(cut_frac in 0.0f64..0.99) {
        let (tpl, recs) = template();
        let total = recs.last().unwrap().1;
        let cut = (total as f64 * cut_frac) as u64;
        let d = tempfile::tempdir().unwrap();
        copy_dir(tpl.path(), d.path());
        let seg = d.path().join("commitlog").join(format!("{:020}", 0));
        fs::OpenOptions::new().write(true).open(&seg).unwrap().set_len(cut).unwrap();
        let s = Store::open(cfg(d.path())).unwrap();
        prop_assert!(s.fenced().is_some());
    }
}
