//! Election rules (pure functions).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::time::Instant;

use sofamq_controller::logic::{BrokerSeen, Clock, decide};
use sofamq_controller::{BrokerAddrs, Command, GroupState, Heartbeat};

const MT: Duration = Duration::from_millis(3000);
const RT: Duration = Duration::from_millis(2200);

fn addrs(id: u64) -> BrokerAddrs {
    BrokerAddrs {
        grpc: format!("g{id}"),
        repl: format!("r{id}"),
    }
}

fn group(master: Option<u64>, epoch: u64, insync: &[u64], brokers: &[u64]) -> GroupState {
    GroupState {
        group: "a".into(),
        master,
        master_epoch: epoch,
        insync: insync.iter().copied().collect(),
        insync_epoch: 1,
        brokers: brokers.iter().map(|i| (*i, addrs(*i))).collect(),
    }
}

fn hb(id: u64, log_end: u64, store_epoch: u64, prefer: bool, acting: Option<u64>) -> Heartbeat {
    Heartbeat {
        group: "a".into(),
        broker_id: id,
        incarnation: 7,
        addrs: addrs(id),
        store_epoch,
        log_end,
        prefer_master: prefer,
        acting_master_epoch: acting,
        master_refused: None,
        fenced: None,
    }
}

fn seen_at(h: &Heartbeat, at: Instant) -> BrokerSeen {
    BrokerSeen::new(h, at)
}

/// A clock where the leader has led long enough (t0 is leadership start).
fn clock(t0: Instant, now_ms: u64) -> Clock {
    Clock {
        now: t0 + Duration::from_millis(now_ms),
        leader_since: t0,
        epoch_since: t0,
        master_timeout: MT,
        refused_timeout: RT,
    }
}

fn elected(cmd: Option<Command>) -> (Option<u64>, u64, BTreeSet<u64>) {
    match cmd {
        Some(Command::Elect {
            master,
            epoch,
            insync,
            ..
        }) => (master, epoch, insync),
        other => panic!("expected an election, got {other:?}"),
    }
}

#[test]
fn first_master_is_the_preferred_one_at_once() {
    let t0 = Instant::now();
    let g = group(None, 0, &[], &[0, 1]);
    let seen = BTreeMap::from([
        (0, seen_at(&hb(0, 10, 0, true, None), t0)),
        (1, seen_at(&hb(1, 50, 0, false, None), t0)),
    ]);
    let (m, e, insync) = elected(decide(&g, &seen, &clock(t0, 10)));
    assert_eq!((m, e, insync), (Some(0), 1, BTreeSet::from([0])));
}

#[test]
fn first_master_without_preference_waits_then_takes_the_most_complete() {
    let t0 = Instant::now();
    let g = group(None, 0, &[], &[0, 1]);
    let mut seen = BTreeMap::from([
        (0, seen_at(&hb(0, 10, 2, false, None), t0)),
        (1, seen_at(&hb(1, 50, 2, false, None), t0)),
    ]);
    assert_eq!(
        decide(&g, &seen, &clock(t0, 1000)),
        None,
        "waits master_timeout after first registration"
    );
    let now = t0 + MT + Duration::from_millis(100);
    for s in seen.values_mut() {
        s.last_seen = now;
    }
    let (m, e, _) = elected(decide(&g, &seen, &clock(t0, 3100)));
    assert_eq!(m, Some(1), "highest (store_epoch, log_end)");
    assert_eq!(e, 3, "epoch = max(store epochs) + 1");
}

#[test]
fn live_master_is_left_alone() {
    let t0 = Instant::now();
    let g = group(Some(0), 4, &[0, 1], &[0, 1]);
    let now = t0 + Duration::from_millis(5000);
    let seen = BTreeMap::from([
        (0, seen_at(&hb(0, 10, 4, false, Some(4)), now)),
        (1, seen_at(&hb(1, 10, 4, false, None), now)),
    ]);
    assert_eq!(decide(&g, &seen, &clock(t0, 5000)), None);
}

#[test]
fn silent_master_is_replaced_by_insync_slave_with_higher_epoch() {
    let t0 = Instant::now();
    let g = group(Some(0), 4, &[0, 1], &[0, 1, 2]);
    let now = t0 + Duration::from_millis(8000);
    let seen = BTreeMap::from([
        (
            0,
            seen_at(
                &hb(0, 10, 4, false, Some(4)),
                t0 + Duration::from_millis(4000),
            ),
        ),
        (1, seen_at(&hb(1, 9, 4, false, None), now)),
        (2, seen_at(&hb(2, 99, 4, false, None), now)),
    ]);
    let (m, e, insync) = elected(decide(&g, &seen, &clock(t0, 8000)));
    assert_eq!(
        m,
        Some(1),
        "only in-sync replicas are eligible, even with a shorter log"
    );
    assert_eq!(e, 5);
    assert_eq!(insync, BTreeSet::from([1]));
}

#[test]
fn no_unclean_election() {
    let t0 = Instant::now();
    // Master 0 and in-sync slave 1 are silent; broker 2 (not in sync) is alive.
    let g = group(Some(0), 4, &[0, 1], &[0, 1, 2]);
    let now = t0 + Duration::from_millis(8000);
    let old = t0 + Duration::from_millis(4000);
    let mut seen = BTreeMap::from([
        (0, seen_at(&hb(0, 10, 4, false, Some(4)), old)),
        (1, seen_at(&hb(1, 10, 4, false, None), old)),
        (2, seen_at(&hb(2, 99, 4, true, None), now)),
    ]);
    let cmd = decide(&g, &seen, &clock(t0, 8000));
    assert_eq!(
        cmd,
        Some(Command::Elect {
            group: "a".into(),
            expect_epoch: 4,
            master: None,
            epoch: 4,
            insync: BTreeSet::from([0, 1])
        }),
        "group left without master, in-sync set kept"
    );
    // Once committed (master None), nothing happens while only 2 is alive...
    let g2 = group(None, 4, &[0, 1], &[0, 1, 2]);
    assert_eq!(decide(&g2, &seen, &clock(t0, 8000)), None);
    // ... and an in-sync member coming back is elected.
    let later = t0 + Duration::from_millis(9000);
    seen.insert(1, seen_at(&hb(1, 10, 4, false, None), later));
    let (m, e, _) = elected(decide(&g2, &seen, &clock(t0, 9000)));
    assert_eq!((m, e), (Some(1), 5));
}

#[test]
fn restart_bumps_epoch() {
    let t0 = Instant::now();
    // Sole in-sync member (the master) restarts: a new incarnation seen after the epoch began.
    let g = group(Some(0), 4, &[0], &[0, 1]);
    let now = t0 + Duration::from_millis(5000);
    let mut s = seen_at(
        &hb(0, 10, 4, false, Some(4)),
        t0 + Duration::from_millis(3500),
    );
    let mut h = hb(0, 10, 4, false, None);
    h.incarnation = 8;
    s.update(&h, now);
    assert!(s.restarted_at.is_some());
    let seen = BTreeMap::from([(0, s), (1, seen_at(&hb(1, 10, 4, false, None), now))]);
    let (m, e, insync) = elected(decide(&g, &seen, &clock(t0, 5000)));
    assert_eq!((m, e, insync), (Some(0), 5, BTreeSet::from([0])));
}

#[test]
fn restarted_master_with_live_insync_slave_fails_over() {
    let t0 = Instant::now();
    let g = group(Some(0), 4, &[0, 1], &[0, 1]);
    let now = t0 + Duration::from_millis(5000);
    let mut s = seen_at(
        &hb(0, 10, 4, false, Some(4)),
        t0 + Duration::from_millis(3500),
    );
    let mut h = hb(0, 10, 4, false, None);
    h.incarnation = 9;
    s.update(&h, now);
    let seen = BTreeMap::from([(0, s), (1, seen_at(&hb(1, 10, 4, false, None), now))]);
    let (m, e, insync) = elected(decide(&g, &seen, &clock(t0, 5000)));
    assert_eq!((m, e, insync), (Some(1), 5, BTreeSet::from([1])));
}

#[test]
fn master_not_acting_in_its_epoch_after_restart_is_replaced() {
    // A new leader never saw the old incarnation; the master reports store epoch 4 but is
    // not acting as master of epoch 4: it restarted.
    let t0 = Instant::now();
    let g = group(Some(0), 4, &[0], &[0]);
    let now = t0 + Duration::from_millis(4000);
    let seen = BTreeMap::from([(0, seen_at(&hb(0, 10, 4, false, None), now))]);
    let (m, e, _) = elected(decide(&g, &seen, &clock(t0, 4000)));
    assert_eq!((m, e), (Some(0), 5));
    // A freshly elected master that has not begun the epoch yet (store epoch 3) is fine.
    let seen = BTreeMap::from([(0, seen_at(&hb(0, 10, 3, false, None), now))]);
    assert_eq!(decide(&g, &seen, &clock(t0, 4000)), None);
}

#[test]
fn new_leader_waits_a_master_timeout() {
    let t0 = Instant::now();
    let g = group(Some(0), 4, &[0, 1], &[0, 1]);
    // Only the slave has been heard from since leadership started.
    let seen = BTreeMap::from([(
        1,
        seen_at(&hb(1, 10, 4, false, None), t0 + Duration::from_millis(100)),
    )]);
    assert_eq!(decide(&g, &seen, &clock(t0, 200)), None);
    assert_eq!(decide(&g, &seen, &clock(t0, 2999)), None);
    // After the wait, the silent master (counted as seen at leadership start) is replaced.
    let mut seen = seen;
    if let Some(s) = seen.get_mut(&1) {
        s.last_seen = t0 + Duration::from_millis(3000);
    }
    let (m, e, _) = elected(decide(&g, &seen, &clock(t0, 3001)));
    assert_eq!((m, e), (Some(1), 5));
}

#[test]
fn highest_log_end_then_lowest_id() {
    let t0 = Instant::now();
    let g = group(Some(0), 2, &[0, 1, 2, 3], &[0, 1, 2, 3]);
    let now = t0 + Duration::from_millis(9000);
    let seen = BTreeMap::from([
        (1, seen_at(&hb(1, 50, 2, false, None), now)),
        (2, seen_at(&hb(2, 70, 2, false, None), now)),
        (3, seen_at(&hb(3, 70, 2, false, None), now)),
    ]);
    let (m, e, insync) = elected(decide(&g, &seen, &clock(t0, 9000)));
    assert_eq!((m, e), (Some(2), 3));
    assert_eq!(insync, BTreeSet::from([1, 2, 3]));
}

#[test]
fn epoch_covers_every_live_store_epoch() {
    let t0 = Instant::now();
    let g = group(Some(0), 2, &[0, 1], &[0, 1, 2]);
    let now = t0 + Duration::from_millis(9000);
    let seen = BTreeMap::from([
        (1, seen_at(&hb(1, 5, 2, false, None), now)),
        (2, seen_at(&hb(2, 5, 7, false, None), now)),
    ]);
    let (m, e, _) = elected(decide(&g, &seen, &clock(t0, 9000)));
    assert_eq!((m, e), (Some(1), 8));
}

fn refusing(id: u64, master: u64) -> Heartbeat {
    let mut h = hb(id, 10, 4, false, None);
    h.master_refused = Some(addrs(master).repl);
    h
}

#[test]
fn a_refused_master_is_replaced_once_its_lease_has_run_out() {
    let t0 = Instant::now();
    let g = group(Some(0), 4, &[0, 1], &[0, 1]);
    // The master was last heard at 5000; its in-sync slave finds its port refusing.
    let last = t0 + Duration::from_millis(5000);
    let at = |ms| t0 + Duration::from_millis(ms);
    let seen = |now| {
        BTreeMap::from([
            (0, seen_at(&hb(0, 10, 4, false, Some(4)), last)),
            (1, seen_at(&refusing(1, 0), now)),
        ])
    };
    // Within the lease (2000 ms) and the refused timeout: nobody is elected.
    assert_eq!(decide(&g, &seen(at(6900)), &clock(t0, 6900)), None);
    assert_eq!(decide(&g, &seen(at(7100)), &clock(t0, 7100)), None);
    // Past the refused timeout (2200 ms), well before the master timeout (3000 ms).
    let (m, e, _) = elected(decide(&g, &seen(at(7200)), &clock(t0, 7200)));
    assert_eq!((m, e), (Some(1), 5));
}

#[test]
fn a_refusal_needs_a_live_insync_reporter_naming_this_master() {
    let t0 = Instant::now();
    let now = t0 + Duration::from_millis(7500);
    let last = t0 + Duration::from_millis(5000);
    let master = seen_at(&hb(0, 10, 4, false, Some(4)), last);
    // Reported by a broker outside the in-sync set: not enough.
    let g = group(Some(0), 4, &[0, 1], &[0, 1, 2]);
    let seen = BTreeMap::from([
        (0, master.clone()),
        (1, seen_at(&hb(1, 10, 4, false, None), now)),
        (2, seen_at(&refusing(2, 0), now)),
    ]);
    assert_eq!(decide(&g, &seen, &clock(t0, 7500)), None);
    // Naming another address (an old master): not enough.
    let seen = BTreeMap::from([(0, master.clone()), (1, seen_at(&refusing(1, 2), now))]);
    assert_eq!(decide(&g, &seen, &clock(t0, 7500)), None);
    // A master still heartbeating is left alone whatever its slave says.
    let seen = BTreeMap::from([
        (0, seen_at(&hb(0, 10, 4, false, Some(4)), now)),
        (1, seen_at(&refusing(1, 0), now)),
    ]);
    assert_eq!(decide(&g, &seen, &clock(t0, 7500)), None);
    // Without any refusal the master timeout (3000 ms) still applies.
    let seen = BTreeMap::from([(0, master), (1, seen_at(&hb(1, 10, 4, false, None), now))]);
    assert_eq!(decide(&g, &seen, &clock(t0, 7500)), None);
    let (m, _, _) = elected(decide(&g, &seen, &clock(t0, 8000)));
    assert_eq!(m, Some(1));
}

fn fenced(mut h: Heartbeat) -> Heartbeat {
    h.fenced = Some("commit log write/fsync failed: Input/output error".into());
    h
}

#[test]
fn a_fenced_master_is_replaced_at_once_and_leaves_the_insync_set() {
    let t0 = Instant::now();
    let g = group(Some(0), 4, &[0, 1], &[0, 1]);
    let now = t0 + Duration::from_millis(5000);
    // Still heartbeating, well within its lease: replaced because it can no longer write.
    let seen = BTreeMap::from([
        (0, seen_at(&fenced(hb(0, 10, 4, false, Some(4))), now)),
        (1, seen_at(&hb(1, 10, 4, false, None), now)),
    ]);
    let (m, e, insync) = elected(decide(&g, &seen, &clock(t0, 5000)));
    assert_eq!((m, e), (Some(1), 5));
    assert_eq!(insync, BTreeSet::from([1]));
}

#[test]
fn a_fenced_replica_is_never_elected() {
    let t0 = Instant::now();
    let now = t0 + Duration::from_millis(8000);
    let old = t0 + Duration::from_millis(4000);
    // The master is gone; its only in-sync slave is fenced and has the longer log.
    let g = group(Some(0), 4, &[0, 1, 2], &[0, 1, 2]);
    let seen = BTreeMap::from([
        (0, seen_at(&hb(0, 10, 4, false, Some(4)), old)),
        (1, seen_at(&fenced(hb(1, 99, 4, false, None)), now)),
        (2, seen_at(&hb(2, 10, 4, false, None), now)),
    ]);
    let (m, _, _) = elected(decide(&g, &seen, &clock(t0, 8000)));
    assert_eq!(m, Some(2), "the healthy replica, despite its shorter log");
    // With every in-sync replica fenced the group stays without a master (unavailable,
    // not lossy), and a fenced master is not kept on even when it is the only one left.
    let seen = BTreeMap::from([
        (0, seen_at(&hb(0, 10, 4, false, Some(4)), old)),
        (1, seen_at(&fenced(hb(1, 99, 4, false, None)), now)),
    ]);
    let g = group(Some(0), 4, &[0, 1], &[0, 1]);
    let (m, _, insync) = elected(decide(&g, &seen, &clock(t0, 8000)));
    assert_eq!(m, None);
    assert_eq!(insync, BTreeSet::from([0, 1]));
    let g = group(Some(0), 4, &[0], &[0]);
    let seen = BTreeMap::from([(0, seen_at(&fenced(hb(0, 10, 4, false, Some(4))), now))]);
    let (m, _, _) = elected(decide(&g, &seen, &clock(t0, 8000)));
    assert_eq!(m, None, "a lone fenced master is dropped, not re-elected");
    // Nor is a fenced broker chosen as a group's first master.
    let g = group(None, 0, &[], &[0, 1]);
    let mut seen = BTreeMap::from([
        (0, seen_at(&fenced(hb(0, 10, 4, true, None)), t0)),
        (1, seen_at(&hb(1, 0, 0, false, None), t0)),
    ]);
    assert_eq!(decide(&g, &seen, &clock(t0, 0)), None);
    // Past a master timeout since both first registered, still heartbeating.
    for s in seen.values_mut() {
        s.last_seen = t0 + Duration::from_millis(3100);
    }
    let (m, _, _) = elected(decide(&g, &seen, &clock(t0, 3100)));
    assert_eq!(m, Some(1));
}

#[test]
fn a_group_no_replica_can_lead_says_why() {
    use sofamq_controller::logic::unavailable;
    let t0 = Instant::now();
    let now = t0 + Duration::from_millis(8000);
    let old = t0 + Duration::from_millis(1000);
    let mut damaged = hb(1, 99, 4, false, None);
    damaged.fenced = Some("corrupt record at offset 4096".into());
    // Both in-sync replicas damaged: no master, and the reason names each.
    let g = group(None, 5, &[0, 1], &[0, 1]);
    let seen = BTreeMap::from([
        (0, seen_at(&fenced(hb(0, 10, 4, false, None)), now)),
        (1, seen_at(&damaged, now)),
    ]);
    let why = unavailable(&g, &seen, &clock(t0, 8000)).expect("unavailable");
    assert!(
        why.contains("broker 0 is fenced: commit log write"),
        "{why}"
    );
    assert!(
        why.contains("broker 1 is fenced: corrupt record at offset 4096"),
        "{why}"
    );
    assert_eq!(
        decide(&g, &seen, &clock(t0, 8000)),
        None,
        "nobody is elected"
    );
    // A silent member is named as such.
    let seen = BTreeMap::from([
        (0, seen_at(&hb(0, 10, 4, false, None), old)),
        (1, seen_at(&damaged, now)),
    ]);
    let why = unavailable(&g, &seen, &clock(t0, 8000)).expect("unavailable");
    assert!(why.contains("broker 0 is silent for 7000 ms"), "{why}");
    // One healthy in-sync replica: it can be elected, so the group is not unavailable.
    let seen = BTreeMap::from([
        (0, seen_at(&hb(0, 10, 4, false, None), now)),
        (1, seen_at(&damaged, now)),
    ]);
    assert_eq!(unavailable(&g, &seen, &clock(t0, 8000)), None);
    // A group with a master, or one that never had one, is not reported.
    let g = group(Some(0), 5, &[0, 1], &[0, 1]);
    assert_eq!(unavailable(&g, &seen, &clock(t0, 8000)), None);
    let g = group(None, 0, &[], &[0, 1]);
    assert_eq!(unavailable(&g, &seen, &clock(t0, 8000)), None);
}
