//! The group simulation's checks: log matching while a seed runs, recovery once healed, and
//! safety on the recovered logs.

use super::*;

/// A record as log matching compares it: (topic, producer message id or empty).
pub(super) type RecordKey = (String, String);

/// How often (ms) each broker's new records are checked ([`match_new_records`]).
pub(super) const MATCH_EVERY_MS: u64 = 10;

/// Log matching, checked while the seed runs: within one epoch only one master writes, so
/// every record any log ever holds at (epoch, offset) is the same record. Reads broker
/// `id`'s records from `from` (or from the log end, if it was cut below); returns where to
/// read from next time. A record written and cut between two reads is not seen.
pub(super) fn match_new_records(
    l: &Ledger,
    id: u64,
    store: &sofamq_store::Store,
    from: u64,
) -> u64 {
    let mut next = from.min(store.log_end_offset());
    for r in store.scan(next) {
        let Ok(r) = r else { break };
        next = r.log_offset + u64::from(r.size);
        let what = (
            r.topic.clone(),
            r.properties
                .iter()
                .find(|(k, _)| k == sofamq_broker::validate::keys::MSG_ID)
                .map(|(_, v)| v.clone())
                .unwrap_or_default(),
        );
        let mut seen = l.matching.borrow_mut();
        match seen.entry((r.epoch, r.log_offset)) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert((what, id));
            }
            std::collections::hash_map::Entry::Occupied(o) => {
                let (first, by) = o.get();
                if *first != what {
                    l.j.violate(format!(
                        "log matching: b{id} holds {what:?} at offset {} in epoch {}, where b{by} held {first:?}",
                        r.log_offset, r.epoch
                    ));
                }
            }
        }
    }
    next
}

pub(super) fn epoch_at(h: &[EpochEntry], offset: u64) -> u64 {
    let i = h.partition_point(|e| e.start_offset <= offset);
    if i == 0 { 0 } else { h[i - 1].epoch }
}

/// Simulated milliseconds (inside a host).
pub(super) fn sim_ms() -> u64 {
    u64::try_from(turmoil::sim_elapsed().unwrap_or_default().as_millis()).unwrap_or(u64::MAX)
}

/// The group recovers once everything has healed: sends are acked until the producer
/// stops, and every broker is back in the in-sync set before the final crash.
pub(super) fn check_recovered(l: &Ledger) {
    let last = l.last_ack_ms.get();
    if last + RECOVERY_ACK_GAP_MS < PRODUCER_STOP {
        l.j.violate(format!(
            "no send acked after {last} ms (faults healed at {FAULTS_END} ms, the producer \
             stopped at {PRODUCER_STOP} ms)"
        ));
    }
    match l.settled_view.borrow().as_ref() {
        Some(g) if g.insync.len() as u64 == l.brokers => {}
        g => l.j.violate(format!(
            "group not whole {} ms after the heal: {g:?}",
            FINAL_CRASH - FAULTS_END
        )),
    }
}

pub(super) fn check(l: &Ledger) {
    check_recovered(l);
    let rec = l.recovered.borrow();
    let view = l.ctl.view.borrow().clone();
    let acked = l.acked.borrow();
    for (e, bs) in l.ack_epochs.borrow().iter() {
        if bs.len() > 1 {
            l.j.violate(format!("two brokers acked in epoch {e}: {bs:?}"));
        }
    }
    let Some(g): Option<GroupState> = view else {
        l.j.violate("no committed view at the end".into());
        return;
    };
    let Some(m) = g.master else {
        l.j.violate("no master at the end".into());
        return;
    };
    let Some(mlog) = rec.get(&m) else {
        l.j.violate(format!("final master b{m} never recovered"));
        return;
    };
    // id -> (first offset, copies).
    let at = |r: &Recovered| -> HashMap<u64, (u64, u64)> {
        let mut by_id: HashMap<u64, (u64, u64)> = HashMap::new();
        for x in &r.recs {
            by_id.entry(x.id).or_insert((x.offset, 0)).1 += 1;
        }
        by_id
    };
    let m_at = at(mlog);
    let mut lost = Vec::new();
    for id in acked.keys() {
        match m_at.get(id) {
            Some(&(_, 1)) => {}
            Some(&(_, n)) => {
                l.j.violate(format!("acked id {id} is {n} times on master b{m}"))
            }
            None => lost.push(*id),
        }
    }
    if !lost.is_empty() {
        let first: Vec<String> = lost
            .iter()
            .take(10)
            .map(|id| {
                let a = acked[id];
                format!("{id} (acked by b{} in epoch {})", a.broker, a.epoch)
            })
            .collect();
        l.j.violate(format!(
            "{} acked ids missing from the final master b{m}: {}",
            lost.len(),
            first.join(", ")
        ));
    }
    for s in g.insync.iter().filter(|s| **s != m) {
        let Some(slog) = rec.get(s) else {
            l.j.violate(format!("in-sync b{s} never recovered"));
            continue;
        };
        let s_at = at(slog);
        let missing: Vec<u64> = acked
            .keys()
            .filter(|id| s_at.get(id).map(|p| p.0) != m_at.get(id).map(|p| p.0))
            .copied()
            .collect();
        if !missing.is_empty() {
            l.j.violate(format!(
                "{} acked ids not at the master's offset on in-sync b{s}: {:?}",
                missing.len(),
                &missing[..missing.len().min(10)]
            ));
        }
    }
    let sent = l.sent.borrow();
    for (id, r) in rec.iter() {
        let mut seen = HashSet::new();
        for x in &r.recs {
            if !seen.insert(x.id) {
                l.j.violate(format!("b{id}: id {} stored twice", x.id));
                break;
            }
            if !x.body_ok {
                l.j.violate(format!(
                    "b{id}: id {} at {} has a wrong body",
                    x.id, x.offset
                ));
            }
            if !sent.contains(&x.id) {
                l.j.violate(format!("b{id}: id {} was never sent", x.id));
            }
        }
        for w in r.hist.windows(2) {
            if w[1].epoch <= w[0].epoch || w[1].start_offset < w[0].start_offset {
                l.j.violate(format!("b{id}: epoch history not increasing: {:?}", r.hist));
                break;
            }
        }
        if let Some(x) = r
            .recs
            .iter()
            .find(|x| epoch_at(&r.hist, x.offset) != x.epoch)
        {
            l.j.violate(format!(
                "b{id}: record at {} has epoch {} but the history says {}",
                x.offset,
                x.epoch,
                epoch_at(&r.hist, x.offset)
            ));
        }
    }
    let all: Vec<(&u64, &Recovered)> = rec.iter().collect();
    for (i, (a, ra)) in all.iter().enumerate() {
        let a_at: HashMap<u64, (u64, u64)> = ra
            .recs
            .iter()
            .map(|x| (x.offset, (x.id, x.epoch)))
            .collect();
        for (b, rb) in all.iter().skip(i + 1) {
            if let Some(x) = rb
                .recs
                .iter()
                .find(|x| a_at.get(&x.offset).is_some_and(|r| *r != (x.id, x.epoch)))
            {
                l.j.violate(format!(
                    "b{a} and b{b} disagree at offset {}: (id, epoch) {:?} vs {:?}",
                    x.offset,
                    a_at.get(&x.offset),
                    (x.id, x.epoch)
                ));
            }
        }
    }
}

/// Whether, at `t`, a slave of the controller's current master holds durably more than the
/// master has synced (both offsets read within the last 2 ms).
pub(super) fn slave_ahead(l: &Ledger, t: u64) -> bool {
    let Some(master) = l.ctl.view.borrow().as_ref().and_then(|g| g.master) else {
        return false;
    };
    let durable = l.durable.borrow();
    let fresh = |id: &u64| {
        durable
            .get(id)
            .filter(|(_, at)| t.saturating_sub(*at) <= 2)
            .map(|(d, _)| *d)
    };
    let Some(m) = fresh(&master) else {
        return false;
    };
    (0..l.brokers)
        .filter(|id| *id != master)
        .any(|id| fresh(&id).is_some_and(|d| d > m))
}
