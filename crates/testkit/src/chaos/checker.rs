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
//! * **timer early**: a timer message delivered (stored into its topic, or received) before
//!   its due time. **timer late**: fired more than the history's bound after it was due. A
//!   timer never read is lost like any acked message.
//! * **uncommitted delivered**: a half message read although it was rolled back or never
//!   committed (its producer meant rollback, or left it to the check-back that answers
//!   "unknown" until the broker's default rollback). A half message whose producer's own
//!   commit was acked must be read: otherwise it is lost (and counted as committed lost).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::history::{History, LogDigest, SendKind, SendOutcome};

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
    /// Fault rounds the scenario ran.
    #[serde(default)]
    pub rounds: u32,
    /// Timer sends acked.
    #[serde(default)]
    pub timers: u64,
    /// Timers delivered before their due time.
    #[serde(default)]
    pub timer_early: u64,
    /// Timers fired later than the bound after their due time.
    #[serde(default)]
    pub timer_late: u64,
    /// The latest a timer fired after its due time (store timestamp minus due), ms.
    #[serde(default)]
    pub timer_late_max_ms: i64,
    /// Half messages acked.
    #[serde(default)]
    pub txn_half: u64,
    /// Half messages whose producer's own commit was acked.
    #[serde(default)]
    pub txn_committed: u64,
    /// Half messages read by consumers.
    #[serde(default)]
    pub txn_visible: u64,
    /// Committed (acked commit) half messages never read (also in lost).
    #[serde(default)]
    pub txn_committed_lost: u64,
    /// Rolled-back or never-committed half messages read.
    #[serde(default)]
    pub txn_uncommitted_delivered: u64,
    /// Check-backs the producers' checkers answered.
    #[serde(default)]
    pub txn_checks: u64,
    /// Sends that failed or ended unknown, by reason (most frequent first).
    #[serde(default)]
    pub reasons: Vec<(String, u64)>,
    /// A few examples of each anomaly, for the log.
    pub examples: Vec<String>,
    /// A check of the fault phase that failed (e.g. a damaged replica that never repaired
    /// itself, a fenced log that did not say why): the run fails.
    #[serde(default)]
    pub fault_error: Option<String>,
    /// How long each repair took, ms: from the damaged replica's restart to in sync
    /// (`bit-flip`, `segment-loss`, `power-loss`) or from the failed disk to a new master
    /// (`eio`).
    #[serde(default)]
    pub repair_ms: Vec<u64>,
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
            && self.timer_early == 0
            && self.timer_late == 0
            && self.txn_uncommitted_delivered == 0
            && self.fault_error.is_none()
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
    let mut kinds: HashMap<(u32, u64), &SendKind> = HashMap::new();
    for s in &h.sends {
        sent.insert((s.producer, s.seq), &s.outcome);
        kinds.insert((s.producer, s.seq), &s.kind);
    }
    r.txn_checks = h.txn_checks;
    r.reasons = reasons(h);
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

    special(&mut r, h, &sent, &kinds, &places);
    // Only what must be visible can be lost: a half message only once its commit was acked.
    let sent: HashMap<(u32, u64), &SendOutcome> = sent
        .into_iter()
        .filter(|(k, _)| match kinds.get(k) {
            Some(SendKind::Txn { intent, ended }) => {
                *ended && *intent == super::history::TxnIntent::Commit
            }
            _ => true,
        })
        .collect();
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
        // Timers are stored in due order, not send order.
        if matches!(kinds.get(&(p, seq)), Some(SendKind::Timer { .. })) {
            continue;
        }
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

/// Failed and unknown sends by outcome and reason (ids and numbers folded, so one cause is
/// one line).
fn reasons(h: &History) -> Vec<(String, u64)> {
    let mut by: HashMap<String, u64> = HashMap::new();
    for s in &h.sends {
        let (what, msg) = match &s.outcome {
            SendOutcome::Ok { .. } => continue,
            SendOutcome::Failed { message, .. } => ("failed", message),
            SendOutcome::Unknown { message } => ("unknown", message),
        };
        let mut folded = String::new();
        for c in msg.chars().take(120) {
            if c.is_ascii_digit() {
                if !folded.ends_with('N') {
                    folded.push('N');
                }
            } else {
                folded.push(c);
            }
        }
        *by.entry(format!("{what}: {folded}")).or_default() += 1;
    }
    let mut v: Vec<_> = by.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v
}

/// The timer and transaction checks.
fn special(
    r: &mut Report,
    h: &History,
    sent: &HashMap<(u32, u64), &SendOutcome>,
    kinds: &HashMap<(u32, u64), &SendKind>,
    places: &HashMap<(u32, u64), BTreeSet<(i32, i64)>>,
) {
    let acked = |k: &(u32, u64)| matches!(sent.get(k), Some(SendOutcome::Ok { .. }));
    // Earliest store / receive time of each message read.
    let mut first: HashMap<(u32, u64), (i64, i64)> = HashMap::new();
    for d in &h.reads {
        if let (Some(p), Some(seq)) = (d.producer, d.seq) {
            let e = first.entry((p, seq)).or_insert((i64::MAX, i64::MAX));
            e.0 = e.0.min(d.store_ms);
            e.1 = e.1.min(d.recv_ms);
        }
    }
    let (mut n_early, mut n_late, mut n_unc, mut n_clost) = (0, 0, 0, 0);
    let mut keys: Vec<_> = kinds.keys().copied().collect();
    keys.sort_unstable();
    for k in keys {
        let (p, seq) = k;
        let read = places.contains_key(&k);
        match kinds[&k] {
            SendKind::Normal => {}
            SendKind::Timer { due_ms } => {
                if acked(&k) {
                    r.timers += 1;
                }
                let Some(&(stored, received)) = first.get(&k) else {
                    continue;
                };
                if stored < *due_ms || received < *due_ms {
                    r.timer_early += 1;
                    example(
                        r,
                        &mut n_early,
                        format!(
                            "timer early: producer {p} seq {seq} due {due_ms}, stored {stored}, received {received}"
                        ),
                    );
                }
                let late = stored - due_ms;
                r.timer_late_max_ms = r.timer_late_max_ms.max(late);
                if h.timer_late_bound_ms > 0 && late > h.timer_late_bound_ms {
                    r.timer_late += 1;
                    example(
                        r,
                        &mut n_late,
                        format!("timer late: producer {p} seq {seq} fired {late} ms after due"),
                    );
                }
            }
            SendKind::Txn { intent, ended } => {
                if acked(&k) {
                    r.txn_half += 1;
                }
                let committed = *ended && *intent == super::history::TxnIntent::Commit;
                if committed {
                    r.txn_committed += 1;
                }
                if read {
                    r.txn_visible += 1;
                    if !intent.may_commit() {
                        r.txn_uncommitted_delivered += 1;
                        example(
                            r,
                            &mut n_unc,
                            format!(
                                "uncommitted delivered: producer {p} seq {seq} ({intent:?}, own end acked: {ended})"
                            ),
                        );
                    }
                } else if committed && acked(&k) {
                    r.txn_committed_lost += 1;
                    example(
                        r,
                        &mut n_clost,
                        format!("committed lost: producer {p} seq {seq} commit acked, never read"),
                    );
                }
            }
        }
    }
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

/// The timer and transaction figures of a report (empty when it had neither).
pub fn special_row(r: &Report) -> String {
    let mut s = String::new();
    if r.timers > 0 {
        let _ = write!(
            s,
            "{:<20} timers {} early {} late {} (latest {} ms after due)",
            r.scenario, r.timers, r.timer_early, r.timer_late, r.timer_late_max_ms
        );
    }
    if r.txn_half > 0 {
        if !s.is_empty() {
            s.push('\n');
        }
        let _ = write!(
            s,
            "{:<20} half {} committed {} visible {} committed-lost {} uncommitted-delivered {} check-backs {}",
            r.scenario,
            r.txn_half,
            r.txn_committed,
            r.txn_visible,
            r.txn_committed_lost,
            r.txn_uncommitted_delivered,
            r.txn_checks
        );
    }
    if r.rounds > 0 {
        if !s.is_empty() {
            s.push('\n');
        }
        let _ = write!(s, "{:<20} fault rounds {}", r.scenario, r.rounds);
    }
    if !r.repair_ms.is_empty() {
        let mut v = r.repair_ms.clone();
        v.sort_unstable();
        let _ = write!(
            s,
            "\n{:<20} repairs {} took median {:.1} s max {:.1} s",
            r.scenario,
            v.len(),
            v[v.len() / 2] as f64 / 1000.0,
            v[v.len() - 1] as f64 / 1000.0
        );
    }
    if let Some(e) = &r.fault_error {
        let _ = write!(s, "\n{:<20} FAULT PHASE FAILED: {e}", r.scenario);
    }
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
    use super::super::history::{ReadRecord, SendRecord, TxnIntent};
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
            kind: SendKind::Normal,
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
            recv_ms: 0,
            store_ms: 0,
        }
    }

    fn history(sends: Vec<SendRecord>, reads: Vec<ReadRecord>) -> History {
        History {
            sends,
            reads,
            audited: false,
            log_pairs: Vec::new(),
            ..History::default()
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

    fn timer(p: u32, seq: u64, due_ms: i64) -> SendRecord {
        SendRecord {
            kind: SendKind::Timer { due_ms },
            ..ok(p, seq)
        }
    }

    fn txn(p: u32, seq: u64, ended: bool) -> SendRecord {
        SendRecord {
            kind: SendKind::Txn {
                intent: TxnIntent::of(seq),
                ended,
            },
            ..ok(p, seq)
        }
    }

    fn read_at(p: u32, seq: u64, offset: i64, store_ms: i64, recv_ms: i64) -> ReadRecord {
        ReadRecord {
            store_ms,
            recv_ms,
            ..read(p, seq, 0, offset)
        }
    }

    #[test]
    fn timers_early_late_and_lost() {
        let mut h = history(
            vec![
                timer(1, 1, 1_000),
                timer(1, 2, 1_000),
                timer(1, 3, 1_000),
                timer(1, 4, 1_000),
            ],
            vec![
                // On time (fired 5 ms late), then stored early, then received early.
                read_at(1, 1, 0, 1_005, 1_010),
                read_at(1, 2, 1, 999, 1_010),
                read_at(1, 3, 2, 1_001, 990),
            ],
        );
        h.timer_late_bound_ms = 100;
        let r = check("timers", &h);
        assert_eq!((r.timers, r.timer_early, r.timer_late), (4, 2, 0));
        assert_eq!(r.lost(), 1, "seq 4 never read");
        assert!(!r.pass());
        // Fired 5 s after due with a 1 s bound: late.
        let mut h = history(
            vec![timer(1, 1, 1_000)],
            vec![read_at(1, 1, 0, 6_000, 6_001)],
        );
        h.timer_late_bound_ms = 1_000;
        let r = check("late", &h);
        assert_eq!((r.timer_late, r.timer_late_max_ms), (1, 5_000));
        assert!(!r.pass());
        h.timer_late_bound_ms = 10_000;
        assert!(check("late", &h).pass());
    }

    #[test]
    fn timers_stored_in_due_order_are_not_out_of_order() {
        let h = history(
            vec![timer(1, 1, 2_000), timer(1, 2, 1_000)],
            vec![
                read_at(1, 2, 0, 1_000, 1_000),
                read_at(1, 1, 1, 2_000, 2_000),
            ],
        );
        let r = check("due order", &h);
        assert_eq!(r.out_of_order, 0);
        assert!(r.pass(), "{r:?}");
    }

    #[test]
    fn transactions_uncommitted_delivered_and_committed_lost() {
        // Seq 4 commit (acked), 5 rollback, 6 check-back commit, 7 abandoned, 8 commit whose
        // own end failed (the check-back decides: may or may not be read).
        let sends = vec![
            txn(1, 4, true),
            txn(1, 5, true),
            txn(1, 6, false),
            txn(1, 7, false),
            txn(1, 8, false),
        ];
        let clean = history(sends.clone(), vec![read(1, 4, 0, 0), read(1, 6, 0, 1)]);
        let r = check("txn", &clean);
        assert!(r.pass(), "{r:?}");
        assert_eq!((r.txn_half, r.txn_committed, r.txn_visible), (5, 1, 2));
        // The rolled-back and the abandoned one delivered; the committed one missing.
        let bad = history(sends, vec![read(1, 5, 0, 0), read(1, 7, 0, 1)]);
        let r = check("txn", &bad);
        assert_eq!(r.txn_uncommitted_delivered, 2);
        assert_eq!((r.txn_committed_lost, r.lost()), (1, 1));
        assert!(!r.pass());
    }

    #[test]
    fn failure_reasons_fold_numbers() {
        let h = history(
            vec![unknown(1, 1), unknown(1, 2), failed(1, 3), ok(1, 4)],
            vec![read(1, 4, 0, 0)],
        );
        let r = check("reasons", &h);
        assert_eq!(
            r.reasons,
            vec![
                ("unknown: timeout".to_string(), 2),
                ("failed: bad".to_string(), 1)
            ]
        );
    }

    #[test]
    fn table_has_one_row_per_report() {
        let r = check("x", &history(vec![ok(1, 1)], vec![read(1, 1, 0, 0)]));
        let t = table(&[r.clone(), r]);
        assert_eq!(t.lines().count(), 3);
        assert!(t.lines().nth(1).unwrap().ends_with("PASS"));
    }
}
