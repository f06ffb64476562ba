//! The safety checks, run on the receipts the producer got and on what each broker
//! recovered from disk after a final crash and restart:
//! 1. every acked id is in the final master's durable log, and in the slave's (caught up);
//! 2. no two distinct brokers acked in the same epoch;
//! 3. each history's epochs strictly increase, its starts never decrease, and every record
//!    carries the epoch its history assigns to its offset;
//! 4. the two logs agree on their common prefix (and hold no id twice).

use std::collections::{BTreeMap, BTreeSet, HashSet};

use sofamq_controller::GroupState;
use sofamq_store::EpochEntry;

use crate::shared::{Ack, Durable};

fn epoch_at(h: &[EpochEntry], offset: u64) -> u64 {
    let i = h.partition_point(|e| e.start_offset <= offset);
    if i == 0 { 0 } else { h[i - 1].epoch }
}

/// Every violation found (empty when all checks pass).
pub fn check(
    acks: &[Ack],
    view: Option<&GroupState>,
    logs: &BTreeMap<u64, Durable>,
) -> Vec<String> {
    let mut v = Vec::new();
    // (2) one acking broker per epoch; the receipt names the broker that was asked.
    let mut by_epoch: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    for a in acks {
        by_epoch.entry(a.epoch).or_default().insert(a.broker);
        if a.broker != a.host {
            v.push(format!(
                "ack {} names b{} but came from b{}",
                a.id, a.broker, a.host
            ));
        }
    }
    for (e, bs) in &by_epoch {
        if bs.len() > 1 {
            v.push(format!("two masters acked in epoch {e}: {bs:?}"));
        }
    }
    // (1) durability of every receipt.
    match view.and_then(|g| g.master) {
        None => v.push("no master at the end".into()),
        Some(m) => {
            for (id, d) in logs {
                let ids: HashSet<u64> = d.recs.iter().map(|r| r.id).collect();
                let lost: Vec<u64> = acks
                    .iter()
                    .filter(|a| !ids.contains(&a.id))
                    .map(|a| a.id)
                    .collect();
                if !lost.is_empty() {
                    let who = if *id == m {
                        "final master"
                    } else {
                        "caught-up slave"
                    };
                    v.push(format!(
                        "{} acked ids missing from {who} b{id}: {:?}",
                        lost.len(),
                        &lost[..lost.len().min(10)]
                    ));
                }
            }
            if !logs.contains_key(&m) {
                v.push(format!("final master b{m} never recovered"));
            }
        }
    }
    // (3) histories.
    for (id, d) in logs {
        for w in d.hist.windows(2) {
            if w[1].epoch <= w[0].epoch || w[1].start_offset < w[0].start_offset {
                v.push(format!("b{id}: history not increasing: {:?}", d.hist));
                break;
            }
        }
        if let Some((off, r)) = d
            .recs
            .iter()
            .enumerate()
            .find(|(o, r)| epoch_at(&d.hist, *o as u64) != r.epoch)
        {
            v.push(format!(
                "b{id}: record {off} has epoch {} but history says {}",
                r.epoch,
                epoch_at(&d.hist, off as u64)
            ));
        }
        let mut seen = HashSet::new();
        if let Some(r) = d.recs.iter().find(|r| !seen.insert(r.id)) {
            v.push(format!("b{id}: id {} stored twice", r.id));
        }
    }
    // (4) common prefix.
    let all: Vec<(&u64, &Durable)> = logs.iter().collect();
    for (i, (a, da)) in all.iter().enumerate() {
        for (b, db) in all.iter().skip(i + 1) {
            if let Some(off) = da.recs.iter().zip(db.recs.iter()).position(|(x, y)| x != y) {
                v.push(format!(
                    "b{a} and b{b} differ at offset {off}: {:?} vs {:?}",
                    da.recs[off], db.recs[off]
                ));
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::Rec;

    fn ack(id: u64, epoch: u64, broker: u64) -> Ack {
        Ack {
            id,
            epoch,
            broker,
            host: broker,
            at_ms: 0,
        }
    }

    fn durable(recs: &[(u64, u64)], hist: &[(u64, u64)]) -> Durable {
        Durable {
            recs: recs.iter().map(|&(epoch, id)| Rec { epoch, id }).collect(),
            hist: hist
                .iter()
                .map(|&(epoch, start_offset)| EpochEntry {
                    epoch,
                    start_offset,
                })
                .collect(),
            at_ms: 0,
        }
    }

    fn view(master: u64) -> GroupState {
        GroupState {
            master: Some(master),
            ..GroupState::default()
        }
    }

    fn good() -> BTreeMap<u64, Durable> {
        let d = durable(&[(1, 10), (1, 11), (2, 12)], &[(1, 0), (2, 2)]);
        BTreeMap::from([(0, d.clone()), (1, d)])
    }

    #[test]
    fn a_consistent_run_passes() {
        let acks = [ack(10, 1, 0), ack(12, 2, 1)];
        assert_eq!(check(&acks, Some(&view(1)), &good()), Vec::<String>::new());
    }

    #[test]
    fn each_check_bites() {
        let v = check(&[ack(99, 1, 0)], Some(&view(1)), &good());
        assert!(
            v.iter().any(|s| s.contains("missing from final master")),
            "{v:?}"
        );

        let v = check(&[ack(10, 1, 0), ack(11, 1, 1)], Some(&view(1)), &good());
        assert!(
            v.iter().any(|s| s.contains("two masters acked in epoch 1")),
            "{v:?}"
        );

        let mut logs = good();
        logs.insert(1, durable(&[(2, 10)], &[(2, 0), (1, 0)]));
        let v = check(&[], Some(&view(0)), &logs);
        assert!(
            v.iter().any(|s| s.contains("history not increasing")),
            "{v:?}"
        );
        assert!(v.iter().any(|s| s.contains("differ at offset 0")), "{v:?}");

        let v = check(&[], None, &good());
        assert!(v.iter().any(|s| s.contains("no master")), "{v:?}");
    }
}
