//! Kafka's leader-epoch rule: where a slave's log stops agreeing with its master's.
//!
//! Within one epoch only one master ever wrote, so two logs hold the same bytes wherever their
//! epoch histories assign the same epoch to the same offset. The slave keeps the longest prefix
//! on which both histories agree (and that both logs hold) and truncates the rest.

use sofamq_store::EpochEntry;

/// Epoch of the record at `offset` by the history (0 before the first entry). When two entries
/// start at the same offset, the later one wins (the earlier epoch wrote nothing).
fn epoch_at(h: &[EpochEntry], offset: u64) -> u64 {
    let i = h.partition_point(|e| e.start_offset <= offset);
    if i == 0 { 0 } else { h[i - 1].epoch }
}

/// The offset the slave must truncate to (never above `slave_end`): the end of the common
/// prefix of the two logs. `slave_end` / `master_end` are where each log ends.
pub fn divergence(
    slave: &[EpochEntry],
    slave_end: u64,
    master: &[EpochEntry],
    master_end: u64,
) -> u64 {
    let limit = slave_end.min(master_end);
    // The epoch functions are step functions; they can only start to differ at a boundary of
    // one of them. Check every boundary below `limit` (and offset 0) in order.
    let mut points: Vec<u64> = std::iter::once(0)
        .chain(slave.iter().map(|e| e.start_offset))
        .chain(master.iter().map(|e| e.start_offset))
        .filter(|p| *p < limit)
        .collect();
    points.sort_unstable();
    points.dedup();
    for p in points {
        if epoch_at(slave, p) != epoch_at(master, p) {
            return p;
        }
    }
    limit
}

/// Whether a slave whose log ends at `slave_end` with `slave` history must truncate to `cut`
/// (the [`divergence`]) before it follows: when it holds bytes past the cut, and also when
/// nothing is past the cut but its history has an epoch that begins at or after it
/// (promoted there, then demoted before it wrote). Kept, that epoch would refuse the
/// master's records from the cut on, which may carry a lower epoch.
pub fn must_truncate(slave: &[EpochEntry], slave_end: u64, cut: u64) -> bool {
    cut < slave_end || slave.last().is_some_and(|e| e.start_offset >= cut)
}

/// The highest epoch in a history (0 when empty).
pub fn last_epoch(h: &[EpochEntry]) -> u64 {
    h.last().map_or(0, |e| e.epoch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(v: &[(u64, u64)]) -> Vec<EpochEntry> {
        v.iter()
            .map(|&(epoch, start_offset)| EpochEntry {
                epoch,
                start_offset,
            })
            .collect()
    }

    #[test]
    fn same_history_slave_behind_keeps_everything() {
        let m = h(&[(1, 0), (2, 500)]);
        assert_eq!(divergence(&m, 700, &m, 900), 700);
        assert_eq!(divergence(&h(&[(1, 0)]), 300, &m, 900), 300);
        assert_eq!(divergence(&[], 0, &m, 900), 0);
    }

    #[test]
    fn slave_longer_in_same_epoch_is_cut_to_master_end() {
        let m = h(&[(1, 0)]);
        assert_eq!(divergence(&m, 900, &m, 600), 600);
    }

    #[test]
    fn old_master_tail_from_a_superseded_epoch_is_cut() {
        // Old master wrote 500..800 in epoch 2 that never reached the new master, which was
        // promoted at 500 with epoch 3.
        let old = h(&[(1, 0), (2, 300)]);
        let new = h(&[(1, 0), (2, 300), (3, 500)]);
        assert_eq!(divergence(&old, 800, &new, 1200), 500);
        // ... and the new master's epoch 3 began before any epoch-2 record reached it.
        let new = h(&[(1, 0), (3, 300)]);
        assert_eq!(divergence(&old, 800, &new, 1200), 300);
    }

    #[test]
    fn empty_epochs_do_not_cause_truncation() {
        // Master began epochs 2 and 3 at the same offset (2 wrote nothing); the slave only
        // ever saw records of epoch 3.
        let m = h(&[(1, 0), (2, 100), (3, 100)]);
        let s = h(&[(1, 0), (3, 100)]);
        assert_eq!(divergence(&s, 400, &m, 400), 400);
        // A master epoch with no records yet at its end does not matter either.
        let m = h(&[(1, 0), (4, 400)]);
        assert_eq!(divergence(&h(&[(1, 0)]), 400, &m, 400), 400);
    }

    #[test]
    fn an_epoch_begun_at_the_cut_is_truncated_even_with_nothing_past_it() {
        // Seed 74 of the group simulation: this broker was promoted in epoch 2 at 21895 and
        // wrote nothing before the group lost power; the old master, elected again in
        // epoch 3, has epoch-1 records past 21895.
        let slave = h(&[(1, 0), (2, 21_895)]);
        let master = h(&[(1, 0), (3, 30_000)]);
        let cut = divergence(&slave, 21_895, &master, 30_500);
        assert_eq!(cut, 21_895);
        assert!(must_truncate(&slave, 21_895, cut));
        // Bytes past the cut are cut whatever the history says.
        assert!(must_truncate(&h(&[(1, 0)]), 700, 500));
        // A slave that agrees up to its end, its last epoch begun below it, keeps its log.
        assert!(!must_truncate(&h(&[(1, 0), (2, 300)]), 700, 700));
        assert!(!must_truncate(&[], 0, 0));
    }

    #[test]
    fn legacy_epoch_zero_prefix_agrees() {
        let m = h(&[(1, 200)]);
        assert_eq!(divergence(&[], 150, &m, 300), 150);
        assert_eq!(divergence(&h(&[(2, 200)]), 260, &m, 300), 200);
    }
}
