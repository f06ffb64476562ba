//! Election rules as pure functions: no I/O, no clock, so a simulator can reuse them.
//!
//! The leader calls [`decide`] for every group every `check_interval_ms` with the committed
//! [`GroupState`], what it has heard from the group's brokers ([`BrokerSeen`]) and the
//! current instant; it proposes the returned [`Command`] through Raft.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::time::Instant;

use crate::command::Command;
use crate::types::{GroupState, Heartbeat};

/// What the leader last heard from one broker (in memory, leader only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerSeen {
    /// Last heartbeat received.
    pub last_seen: Instant,
    /// First heartbeat of the current incarnation.
    pub first_seen: Instant,
    /// The broker's current incarnation.
    pub incarnation: u64,
    /// When this leader saw the incarnation change (a restart), if it did.
    pub restarted_at: Option<Instant>,
    /// Reported durable log end.
    pub log_end: u64,
    /// Reported store epoch.
    pub store_epoch: u64,
    /// Reported preference to be the first master.
    pub prefer_master: bool,
    /// Reported acting-master epoch.
    pub acting_master_epoch: Option<u64>,
    /// The replication address this broker last failed to connect to (refused), if its
    /// latest attempt was refused.
    pub master_refused: Option<String>,
    /// Why its commit log is fenced, if it is.
    pub fenced: Option<String>,
}

impl BrokerSeen {
    /// The entry for a first heartbeat.
    pub fn new(hb: &Heartbeat, now: Instant) -> Self {
        Self {
            last_seen: now,
            first_seen: now,
            incarnation: hb.incarnation,
            restarted_at: None,
            log_end: hb.log_end,
            store_epoch: hb.store_epoch,
            prefer_master: hb.prefer_master,
            acting_master_epoch: hb.acting_master_epoch,
            master_refused: hb.master_refused.clone(),
            fenced: hb.fenced.clone(),
        }
    }

    /// Folds a later heartbeat in (a new incarnation marks a restart).
    pub fn update(&mut self, hb: &Heartbeat, now: Instant) {
        if hb.incarnation != self.incarnation {
            self.incarnation = hb.incarnation;
            self.restarted_at = Some(now);
            self.first_seen = now;
        }
        self.last_seen = now;
        self.log_end = hb.log_end;
        self.store_epoch = hb.store_epoch;
        self.prefer_master = hb.prefer_master;
        self.acting_master_epoch = hb.acting_master_epoch;
        self.master_refused = hb.master_refused.clone();
        self.fenced.clone_from(&hb.fenced);
    }
}

/// The inputs of one decision besides the group and its brokers.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// Now.
    pub now: Instant,
    /// When this node became leader (every broker counts as seen then).
    pub leader_since: Instant,
    /// When this leader first saw the group's current `master_epoch` committed (at least
    /// `leader_since`): a restart is one seen after this.
    pub epoch_since: Instant,
    /// A master silent for this long is replaced.
    pub master_timeout: Duration,
    /// A master silent for this long is replaced when a live in-sync replica reports its
    /// replication address refusing connections. Longer than the lease (the master's lease
    /// starts before the heartbeat this leader last received, so it has run out by then),
    /// at most `master_timeout`.
    pub refused_timeout: Duration,
}

impl Clock {
    fn alive(&self, seen: Option<&BrokerSeen>) -> bool {
        self.silent_for(seen) < self.master_timeout
    }

    /// Alive and able to write: only such a broker may be elected.
    fn eligible(&self, seen: Option<&BrokerSeen>) -> bool {
        self.alive(seen)
            && (seen.is_none_or(|s| s.fenced.is_none()) || crate::mutant::active("elect-fenced"))
    }

    fn silent_for(&self, seen: Option<&BrokerSeen>) -> Duration {
        let last = seen.map_or(self.leader_since, |s| s.last_seen.max(self.leader_since));
        self.now.saturating_duration_since(last)
    }

    fn waited_as_leader(&self) -> bool {
        self.now.saturating_duration_since(self.leader_since) >= self.master_timeout
    }
}

/// Why `group` has no master and none can be elected, naming each in-sync replica and what
/// keeps it out (silent, or fenced with the reason it reported); `None` when the group has a
/// master, never had one, or an eligible replica is there to be elected.
pub fn unavailable(
    group: &GroupState,
    seen: &BTreeMap<u64, BrokerSeen>,
    clock: &Clock,
) -> Option<String> {
    if group.master.is_some() || group.master_epoch == 0 {
        return None;
    }
    if group.insync.iter().any(|id| clock.eligible(seen.get(id))) {
        return None;
    }
    let why: Vec<String> = group
        .insync
        .iter()
        .map(|id| {
            let s = seen.get(id);
            match s.and_then(|s| s.fenced.as_deref()) {
                Some(f) if clock.alive(s) => format!("broker {id} is fenced: {f}"),
                _ => format!(
                    "broker {id} is silent for {} ms",
                    clock.silent_for(s).as_millis()
                ),
            }
        })
        .collect();
    Some(format!(
        "no master: no in-sync replica can be elected without losing acked messages ({})",
        why.join("; ")
    ))
}

/// What to propose for `group`, if anything.
pub fn decide(
    group: &GroupState,
    seen: &BTreeMap<u64, BrokerSeen>,
    clock: &Clock,
) -> Option<Command> {
    let never_had_master =
        group.master.is_none() && group.master_epoch == 0 && group.insync.is_empty();
    if never_had_master {
        return first_election(group, seen, clock);
    }
    // Without liveness history, wait a full master timeout before judging anyone.
    if !clock.waited_as_leader() {
        return None;
    }
    match group.master {
        Some(m) => failover(group, m, seen, clock),
        None => {
            let candidates: Vec<u64> = group
                .insync
                .iter()
                .copied()
                .filter(|id| clock.eligible(seen.get(id)))
                .collect();
            let best = best_by_log(&candidates, seen)?;
            Some(elect(group, best, group.insync.clone(), seen, clock))
        }
    }
}

/// The first master of a group: a live `prefer_master` broker at once, else after a master
/// timeout since the first registration the live broker with the most complete store.
fn first_election(
    group: &GroupState,
    seen: &BTreeMap<u64, BrokerSeen>,
    clock: &Clock,
) -> Option<Command> {
    let alive: Vec<(u64, &BrokerSeen)> = group
        .brokers
        .keys()
        .filter_map(|id| seen.get(id).map(|s| (*id, s)))
        .filter(|(_, s)| clock.eligible(Some(s)))
        .collect();
    let rank = |(id, s): &(u64, &BrokerSeen)| (s.store_epoch, s.log_end, std::cmp::Reverse(*id));
    let preferred = alive
        .iter()
        .filter(|(_, s)| s.prefer_master)
        .max_by_key(|x| rank(x));
    let chosen = match preferred {
        Some((id, _)) => *id,
        None => {
            let first = alive.iter().map(|(_, s)| s.first_seen).min()?;
            let waited = clock.now.saturating_duration_since(first) >= clock.master_timeout;
            if !waited || !clock.waited_as_leader() {
                return None;
            }
            alive.iter().max_by_key(|x| rank(x))?.0
        }
    };
    Some(elect(group, chosen, BTreeSet::from([chosen]), seen, clock))
}

/// The master failed (silent, restarted, fenced, or no longer acting in its epoch): elect another
/// in-sync replica, or leave the group without master when none is eligible.
fn failover(
    group: &GroupState,
    m: u64,
    seen: &BTreeMap<u64, BrokerSeen>,
    clock: &Clock,
) -> Option<Command> {
    let ms = seen.get(&m);
    // Silent for the master timeout, or past its lease while a live in-sync replica finds
    // its replication port refusing connections (the process is gone: no need to wait out
    // the rest of the timeout, which is there for masters that are merely slow).
    let refused = group.brokers.get(&m).is_some_and(|a| {
        group.insync.iter().any(|id| {
            *id != m
                && seen.get(id).is_some_and(|s| {
                    clock.alive(Some(s)) && s.master_refused.as_deref() == Some(a.repl.as_str())
                })
        })
    });
    let silent = !clock.alive(ms)
        || (refused && clock.silent_for(ms) >= clock.refused_timeout.min(clock.master_timeout));
    let restarted = !silent
        && ms.is_some_and(|s| {
            s.restarted_at.is_some_and(|t| t > clock.epoch_since)
                || (s.acting_master_epoch != Some(group.master_epoch)
                    && s.store_epoch >= group.master_epoch
                    && clock.now.saturating_duration_since(clock.epoch_since)
                        >= clock.master_timeout)
        });
    // A fenced master refuses every write: replaced at once. Safe without waiting out its
    // lease: a fenced log stores nothing more, and what it stored before is acked only once
    // every in-sync replica holds it, so the replica elected here has it too.
    let fenced =
        !silent && ms.is_some_and(|s| s.fenced.is_some()) && !crate::mutant::active("elect-fenced");
    if !silent && !restarted && !fenced {
        return None;
    }
    let mut candidates: Vec<u64> = group
        .insync
        .iter()
        .copied()
        .filter(|id| *id != m && clock.eligible(seen.get(id)))
        .collect();
    if candidates.is_empty() && restarted && !fenced && group.insync.contains(&m) {
        candidates.push(m);
    }
    match best_by_log(&candidates, seen) {
        Some(best) if best == m => Some(elect(group, m, group.insync.clone(), seen, clock)),
        Some(best) => {
            let mut insync = group.insync.clone();
            insync.remove(&m);
            Some(elect(group, best, insync, seen, clock))
        }
        // No unclean election: keep the in-sync set, drop the master, wait for a member.
        None => Some(Command::Elect {
            group: group.group.clone(),
            expect_epoch: group.master_epoch,
            master: None,
            epoch: group.master_epoch,
            insync: group.insync.clone(),
        }),
    }
}

/// Highest log end, then lowest id.
fn best_by_log(candidates: &[u64], seen: &BTreeMap<u64, BrokerSeen>) -> Option<u64> {
    candidates.iter().copied().max_by_key(|id| {
        (
            seen.get(id).map_or(0, |s| s.log_end),
            std::cmp::Reverse(*id),
        )
    })
}

/// An `Elect` of `master` with epoch `max(master_epoch, every live store epoch) + 1`.
fn elect(
    group: &GroupState,
    master: u64,
    mut insync: BTreeSet<u64>,
    seen: &BTreeMap<u64, BrokerSeen>,
    clock: &Clock,
) -> Command {
    insync.insert(master);
    let store_max = seen
        .iter()
        .filter(|(id, s)| group.brokers.contains_key(id) && clock.alive(Some(s)))
        .map(|(_, s)| s.store_epoch)
        .max()
        .unwrap_or(0);
    Command::Elect {
        group: group.group.clone(),
        expect_epoch: group.master_epoch,
        master: Some(master),
        epoch: group.master_epoch.max(store_max) + 1,
        insync,
    }
}
