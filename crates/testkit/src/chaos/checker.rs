//! The checker: a pure function from a [`History`] to a [`Report`] counting lost, unexpected,
//! aborted, duplicated, out-of-order and divergent records.
//!
//! * **lost**: acked (`Ok`) sends never read (by the audit group that re-reads every queue
//!   from the start after the run, when the history has one), split per producer into *prefix* (before the
//!   producer's first acked-and-read seq), *suffix* (after its last one) and *middle*; a producer
//!   with nothing read counts all its losses as suffix.
//! * **unexpected**: read, never sent (no send record, or not one of our messages).
//! * **aborted**: read although its send definitely failed.
//! * **duplicated**: one (producer, seq) stored at two or more distinct (queue, offset) places;
//!   redelivery of the same offset is at-least-once, not a duplicate.
//! * **out of order**: per producer and queue, in queue-offset order, a seq lower than the one
//!   before it (reported; concurrent sends and retries may legitimately reorder).
//! * **divergence**: records below the common end of two logs of one group that differ (or
//!   exist in only one of them).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::history::{History, LogDigest, SendOutcome};

/// The checker's verdict over one run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Sends acked.
    pub ok: u64,
    /// Sends definitely rejected.
    pub failed: u64,
    /// Sends with an unknown outcome.
    pub unknown: u64,
    /// Distinct messages read.
    pub read: u64,
    /// Deliveries (redeliveries included).
    pub deliveries: u64,
    /// Unknown-outcome sends that were read after all.
    pub recovered: u64,
    /// Lost before the first read message of their producer.
    pub lost_prefix: u64,
    /// Lost between read messages.
    pub lost_middle: u64,
    /// Lost after the last read message of their producer.
    pub lost_suffix: u64,
    /// Read, never sent.
    pub unexpected: u64,
    /// Read although the send failed.
    pub aborted: u64,
    /// Stored at more than one offset (extra copies).
    pub duplicated: u64,
    /// Order inversions per producer and queue.
    pub out_of_order: u64,
    /// Differing records in the common prefix of master and slave logs.
    pub divergence: u64,
    /// A few examples of each anomaly, for the log.
    pub examples: Vec<String>,
}

impl Report {
    /// Total lost.
    pub fn lost(&self) -> u64 {
        self.lost_prefix + self.lost_middle + self.lost_suffix
    }

    /// Lost, unexpected, aborted, duplicated and divergence are all zero (and something was
    /// acked and read, so the run proved something).
    pub fn pass(&self) -> bool {
        self.lost() == 0
            && self.unexpected == 0
            && self.aborted == 0
            && self.duplicated == 0
            && self.divergence == 0
            && self.ok > 0
    }
}

const MAX_EXAMPLES: usize = 5;

fn example(r: &mut Report, counter: &mut usize, text: String) {
    if *counter < MAX_EXAMPLES {
        r.examples.push(text);
    }
    *counter += 1;
}

/// Judges a history.
pub fn check(scenario: &str, h: &History) -> Report {
    let mut r = Report {
        scenario: scenario.to_string(),
        ..Report::default()
    };
    // The last outcome of each (producer, seq) wins (there is one send per seq).
    let mut sent: HashMap<(u32, u64), &SendOutcome> = HashMap::new();
    for s in &h.sends {
        sent.insert((s.producer, s.seq), &s.outcome);
    }
    for o in sent.values() {
        match o {
            SendOutcome::Ok { .. } => r.ok += 1,
            SendOutcome::Failed { .. } => r.failed += 1,
            SendOutcome::Unknown { .. } => r.unknown += 1,
        }
    }

    // Distinct places each message was read at.
    let mut places: HashMap<(u32, u64), BTreeSet<(i32, i64)>> = HashMap::new();
    let (mut n_unexp, mut n_abort, mut n_dup, mut n_ooo) = (0, 0, 0, 0);
    for d in &h.reads {
        r.deliveries += 1;
        let (Some(p), Some(seq)) = (d.producer, d.seq) else {
            r.unexpected += 1;
            example(
                &mut r,
                &mut n_unexp,
                format!("unexpected: message {} is not ours", d.msg_id),
            );
            continue;
        };
        places
            .entry((p, seq))
            .or_default()
            .insert((d.queue, d.offset));
    }
    for (&(p, seq), at) in &places {
        r.read += 1;
        match sent.get(&(p, seq)) {
            None => {
                r.unexpected += 1;
                example(
                    &mut r,
                    &mut n_unexp,
                    format!("unexpected: producer {p} seq {seq} read, never sent"),
                );
            }
            Some(SendOutcome::Failed { code, .. }) => {
                r.aborted += 1;
                example(
                    &mut r,
                    &mut n_abort,
                    format!("aborted: producer {p} seq {seq} read, send failed ({code:?})"),
                );
            }
            Some(SendOutcome::Unknown { .. }) => r.recovered += 1,
            Some(SendOutcome::Ok { .. }) => {}
        }
        if at.len() > 1 {
            r.duplicated += at.len() as u64 - 1;
            example(
                &mut r,
                &mut n_dup,
                format!("duplicated: producer {p} seq {seq} at {at:?}"),
            );
        }
    }

    if h.audited {
        let mut audited: HashMap<(u32, u64), BTreeSet<(i32, i64)>> = HashMap::new();
        for d in h.reads.iter().filter(|d| d.audit) {
            if let (Some(p), Some(seq)) = (d.producer, d.seq) {
                audited
                    .entry((p, seq))
                    .or_default()
                    .insert((d.queue, d.offset));
            }
        }
        lost(&mut r, &sent, &audited);
    } else {
        lost(&mut r, &sent, &places);
    }

    // Order: per (producer, queue), seqs by queue offset.
    let mut by_queue: BTreeMap<(u32, i32), BTreeMap<i64, u64>> = BTreeMap::new();
    for (&(p, seq), at) in &places {
        for &(q, off) in at {
            by_queue.entry((p, q)).or_default().insert(off, seq);
        }
    }
    for ((p, q), offs) in &by_queue {
        let mut prev: Option<(i64, u64)> = None;
        for (&off, &seq) in offs {
            if let Some((poff, pseq)) = prev
                && seq < pseq
            {
                r.out_of_order += 1;
                example(
                    &mut r,
                    &mut n_ooo,
                    format!(
                        "out of order: producer {p} queue {q}: seq {pseq}@{poff} then seq {seq}@{off}"
                    ),
                );
            }
            prev = Some((off, seq));
        }
    }

    for (a, b) in &h.log_pairs {
        let (n, first) = divergence(a, b);
        r.divergence += n;
        if let Some(off) = first {
            r.examples.push(format!(
                "divergence: {} and {} differ in {n} record(s) from log offset {off} (common end {})",
                a.name,
                b.name,
                a.end.min(b.end)
            ));
        }
    }
    r
}

fn lost(
    r: &mut Report,
    sent: &HashMap<(u32, u64), &SendOutcome>,
    places: &HashMap<(u32, u64), BTreeSet<(i32, i64)>>,
) {
    let mut acked: BTreeMap<u32, Vec<(u64, bool)>> = BTreeMap::new();
    for (&(p, seq), o) in sent {
        if matches!(o, SendOutcome::Ok { .. }) {
            acked
                .entry(p)
                .or_default()
                .push((seq, places.contains_key(&(p, seq))));
        }
    }
    let mut n = 0;
    for (p, mut seqs) in acked {
        seqs.sort_unstable();
        let first = seqs.iter().find(|(_, read)| *read).map(|(s, _)| *s);
        let last = seqs.iter().rev().find(|(_, read)| *read).map(|(s, _)| *s);
        for (seq, read) in seqs {
            if read {
                continue;
            }
            match (first, last) {
                (Some(f), _) if seq < f => r.lost_prefix += 1,
                (_, Some(l)) if seq < l => r.lost_middle += 1,
                _ => r.lost_suffix += 1,
            }
            example(
                r,
                &mut n,
                format!("lost: producer {p} seq {seq} acked, never read"),
            );
        }
    }
}

/// Records below the common end that differ between two logs, and the first such offset.
pub fn divergence(a: &LogDigest, b: &LogDigest) -> (u64, Option<u64>) {
    let end = a.end.min(b.end);
    let am: BTreeMap<u64, u64> = a.records.iter().copied().filter(|r| r.0 < end).collect();
    let bm: BTreeMap<u64, u64> = b.records.iter().copied().filter(|r| r.0 < end).collect();
    let mut n = 0;
    let mut first = None;
    for off in am.keys().chain(bm.keys()).collect::<BTreeSet<_>>() {
        if am.get(off) != bm.get(off) {
            n += 1;
            first = first.or(Some(*off));
        }
    }
    (n, first)
}

/// The table header.
pub const HEADER: &str = "scenario              ok  failed unknown    read  lost(p/m/s)     unexp aborted dup  ooo  diverg  result";

/// One table row.
pub fn row(r: &Report) -> String {
    let mut s = String::new();
    let lost = format!(
        "{}({}/{}/{})",
        r.lost(),
        r.lost_prefix,
        r.lost_middle,
        r.lost_suffix
    );
    let _ = write!(
        s,
        "{:<20} {:>5} {:>7} {:>7} {:>7}  {:<15} {:>5} {:>7} {:>4} {:>4} {:>7}  {}",
        r.scenario,
        r.ok,
        r.failed,
        r.unknown,
        r.read,
        lost,
        r.unexpected,
        r.aborted,
        r.duplicated,
        r.out_of_order,
        r.divergence,
        if r.pass() { "PASS" } else { "FAIL" }
    );
    s
}

/// Header plus one row per report.
pub fn table(reports: &[Report]) -> String {
    let mut s = String::from(HEADER);
    for r in reports {
        s.push('\n');
        s.push_str(&row(r));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::super::history::{ReadRecord, SendRecord};
    use super::*;

    fn ok(p: u32, seq: u64) -> SendRecord {
        SendRecord {
            producer: p,
            seq,
            msg_id: format!("m{p}-{seq}"),
            outcome: SendOutcome::Ok {
                queue_offset: 0,
                broker: "b".into(),
            },
        }
    }

    fn failed(p: u32, seq: u64) -> SendRecord {
        SendRecord {
            outcome: SendOutcome::Failed {
                code: Some(40001),
                message: "bad".into(),
            },
            ..ok(p, seq)
        }
    }

    fn unknown(p: u32, seq: u64) -> SendRecord {
        SendRecord {
            outcome: SendOutcome::Unknown {
                message: "timeout".into(),
            },
            ..ok(p, seq)
        }
    }

    fn read(p: u32, seq: u64, queue: i32, offset: i64) -> ReadRecord {
        ReadRecord {
            producer: Some(p),
            seq: Some(seq),
            msg_id: format!("m{p}-{seq}"),
            queue,
            offset,
            audit: false,
        }
    }

    fn history(sends: Vec<SendRecord>, reads: Vec<ReadRecord>) -> History {
        History {
            sends,
            reads,
            audited: false,
            log_pairs: Vec::new(),
        }
    }

    #[test]
    fn clean_history_passes_and_redelivery_is_not_a_duplicate() {
        let h = history(
            vec![ok(1, 1), ok(1, 2), unknown(1, 3), failed(1, 4)],
            vec![
                read(1, 1, 0, 0),
                read(1, 1, 0, 0),
                read(1, 2, 0, 1),
                read(1, 3, 1, 0),
            ],
        );
        let r = check("clean", &h);
        assert!(r.pass(), "{r:?}");
        assert_eq!((r.ok, r.failed, r.unknown), (2, 1, 1));
        assert_eq!((r.read, r.deliveries, r.recovered), (3, 4, 1));
        assert_eq!(r.duplicated, 0);
    }

    #[test]
    fn lost_is_split_into_prefix_middle_suffix() {
        let sends = (1..=7).map(|s| ok(1, s)).collect();
        // Read 3 and 5 only: 1, 2 prefix; 4 middle; 6, 7 suffix.
        let h = history(sends, vec![read(1, 3, 0, 0), read(1, 5, 0, 1)]);
        let r = check("lost", &h);
        assert_eq!((r.lost_prefix, r.lost_middle, r.lost_suffix), (2, 1, 2));
        assert!(!r.pass());
        // Nothing read at all: every loss is suffix.
        let r = check("lost", &history(vec![ok(2, 1), ok(2, 2)], vec![]));
        assert_eq!((r.lost_prefix, r.lost_middle, r.lost_suffix), (0, 0, 2));
    }

    #[test]
    fn with_an_audit_lost_means_missing_from_the_final_log() {
        // Delivered live before a failover, then gone from the log: lost.
        let mut audit = read(1, 1, 0, 0);
        audit.audit = true;
        let mut h = history(vec![ok(1, 1), ok(1, 2)], vec![read(1, 2, 0, 1), audit]);
        h.audited = true;
        let r = check("audit", &h);
        assert_eq!(r.lost(), 1);
        assert_eq!(r.read, 2);
    }

    #[test]
    fn unexpected_reads_are_counted() {
        let mut foreign = read(9, 9, 0, 5);
        foreign.producer = None;
        let h = history(
            vec![ok(1, 1)],
            vec![read(1, 1, 0, 0), read(1, 2, 0, 1), foreign],
        );
        let r = check("unexpected", &h);
        assert_eq!(r.unexpected, 2);
        assert!(!r.pass());
    }

    #[test]
    fn aborted_reads_are_counted() {
        let h = history(
            vec![ok(1, 1), failed(1, 2)],
            vec![read(1, 1, 0, 0), read(1, 2, 0, 1)],
        );
        let r = check("aborted", &h);
        assert_eq!(r.aborted, 1);
        assert!(!r.pass());
    }

    #[test]
    fn duplicates_count_distinct_offsets() {
        let h = history(
            vec![ok(1, 1)],
            vec![
                read(1, 1, 0, 0),
                read(1, 1, 0, 0),
                read(1, 1, 0, 7),
                read(1, 1, 2, 3),
            ],
        );
        let r = check("dup", &h);
        assert_eq!(r.duplicated, 2);
        assert!(!r.pass());
    }

    #[test]
    fn out_of_order_is_reported_but_not_fatal() {
        let h = history(
            vec![ok(1, 1), ok(1, 2), ok(1, 3)],
            vec![read(1, 2, 0, 0), read(1, 1, 0, 1), read(1, 3, 0, 2)],
        );
        let r = check("ooo", &h);
        assert_eq!(r.out_of_order, 1);
        assert!(r.pass());
    }

    #[test]
    fn divergence_counts_differing_records_below_the_common_end() {
        let a = LogDigest {
            name: "a0".into(),
            records: vec![(0, 1), (10, 2), (20, 3), (30, 4)],
            end: 40,
        };
        let same_prefix = LogDigest {
            name: "a1".into(),
            records: vec![(0, 1), (10, 2)],
            end: 20,
        };
        assert_eq!(divergence(&a, &same_prefix), (0, None));
        let diverged = LogDigest {
            name: "a1".into(),
            records: vec![(0, 1), (10, 9), (20, 3), (25, 5)],
            end: 40,
        };
        assert_eq!(divergence(&a, &diverged), (3, Some(10)));
        let mut h = history(vec![ok(1, 1)], vec![read(1, 1, 0, 0)]);
        h.log_pairs.push((a, diverged));
        let r = check("div", &h);
        assert_eq!(r.divergence, 3);
        assert!(!r.pass());
    }

    #[test]
    fn table_has_one_row_per_report() {
        let r = check("x", &history(vec![ok(1, 1)], vec![read(1, 1, 0, 0)]));
        let t = table(&[r.clone(), r]);
        assert_eq!(t.lines().count(), 3);
        assert!(t.lines().nth(1).unwrap().ends_with("PASS"));
    }
}
