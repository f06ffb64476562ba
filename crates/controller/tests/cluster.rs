//! An in-process 3-node controller cluster on 127.0.0.1 with fake brokers heartbeating.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sofamq_controller::network::{CallError, Channel, TcpConnector};
use sofamq_controller::rpc::{FrameLimits, Request, Response};
use sofamq_controller::{
    AlterInSync, BrokerAddrs, Controller, ControllerClient, ControllerConfig, ControllerError,
    GroupState, Heartbeat, RunError, serve,
};
use sofamq_server::Shutdown;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const MASTER_TIMEOUT_MS: u64 = 1500;

struct Node {
    ctl: Controller,
    token: Shutdown,
    server: JoinHandle<std::io::Result<()>>,
}

fn free_ports(n: usize) -> Vec<u16> {
    let ls: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    ls.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

fn config(id: u64, peers: &BTreeMap<u64, String>, dir: &Path) -> ControllerConfig {
    let mut c = ControllerConfig::new(id, peers.clone(), dir.join(format!("n{id}")));
    c.master_timeout_ms = MASTER_TIMEOUT_MS;
    c.lease_ms = 1000;
    c.check_interval_ms = 100;
    c.raft_heartbeat_ms = 100;
    c.election_timeout_min_ms = 400;
    c.election_timeout_max_ms = 800;
    c.rpc_timeout_ms = 500;
    c
}

async fn start(id: u64, peers: &BTreeMap<u64, String>, dir: &Path) -> Node {
    start_cfg(config(id, peers, dir)).await
}

async fn start_cfg(cfg: ControllerConfig) -> Node {
    let (id, peers) = (cfg.node_id, cfg.peers.clone());
    let token = Shutdown::new();
    let mut listener = None;
    for _ in 0..50 {
        match tokio::net::TcpListener::bind(&peers[&id]).await {
            Ok(l) => {
                listener = Some(l);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let listener = listener.expect("bind controller port");
    let ctl = Controller::start(cfg, token.clone()).await.unwrap();
    let server = tokio::spawn(serve(listener, ctl.clone(), token.clone()));
    Node { ctl, token, server }
}

async fn stop(node: Node) {
    node.token.trigger();
    node.server.await.unwrap().unwrap();
    node.ctl.stopped().await;
}

/// A fake broker: heartbeats every 100 ms unless paused, acts on the view it gets.
struct FakeBroker {
    id: u64,
    paused: Arc<AtomicBool>,
    state: Arc<Mutex<BrokerState>>,
}

#[derive(Default, Clone)]
struct BrokerState {
    view: Option<GroupState>,
    acting: Option<u64>,
    store_epoch: u64,
    ever_master: bool,
    replies: u64,
}

impl FakeBroker {
    fn spawn(id: u64, prefer: bool, addrs: Vec<String>, stop: CancellationToken) -> Self {
        let paused = Arc::new(AtomicBool::new(false));
        let state = Arc::new(Mutex::new(BrokerState::default()));
        let (p, st) = (paused.clone(), state.clone());
        tokio::spawn(async move {
            let client = ControllerClient::new(addrs, Duration::from_secs(2));
            while !stop.is_cancelled() {
                if !p.load(Ordering::SeqCst) {
                    let (acting, store_epoch) = {
                        let s = st.lock();
                        (s.acting, s.store_epoch)
                    };
                    let hb = Heartbeat {
                        group: "broker-a".into(),
                        broker_id: id,
                        incarnation: 42 + id,
                        addrs: BrokerAddrs {
                            grpc: format!("g{id}"),
                            repl: format!("r{id}"),
                        },
                        store_epoch,
                        log_end: 100,
                        prefer_master: prefer,
                        acting_master_epoch: acting,
                        master_refused: None,
                        fenced: None,
                    };
                    if let Ok(r) = client.heartbeat(&hb).await {
                        let mut s = st.lock();
                        if r.view.master == Some(id) {
                            s.acting = Some(r.view.master_epoch);
                            s.store_epoch = r.view.master_epoch;
                            s.ever_master = true;
                        } else {
                            s.acting = None;
                            s.store_epoch = s.store_epoch.max(r.view.master_epoch);
                        }
                        s.view = Some(r.view);
                        s.replies += 1;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Self { id, paused, state }
    }

    fn view(&self) -> Option<GroupState> {
        self.state.lock().view.clone()
    }
}

async fn wait_for<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_node_failover_leader_loss_and_restart() {
    tokio::time::timeout(Duration::from_secs(90), scenario())
        .await
        .expect("scenario timed out");
}

async fn scenario() {
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(3);
    let peers: BTreeMap<u64, String> = (1..=3)
        .map(|i| (i, format!("127.0.0.1:{}", ports[i as usize - 1])))
        .collect();
    let addrs: Vec<String> = peers.values().cloned().collect();
    let mut nodes: BTreeMap<u64, Node> = BTreeMap::new();
    for id in 1..=3 {
        nodes.insert(id, start(id, &peers, dir.path()).await);
    }
    let brokers_stop = CancellationToken::new();
    let b0 = FakeBroker::spawn(0, true, addrs.clone(), brokers_stop.clone());
    let b1 = FakeBroker::spawn(1, false, addrs.clone(), brokers_stop.clone());
    let b2 = FakeBroker::spawn(2, false, addrs.clone(), brokers_stop.clone());

    // The preferred broker becomes the first master.
    let v = wait_for("first master", Duration::from_secs(15), || {
        b0.view()
            .filter(|v| v.master == Some(0) && v.brokers.len() == 3)
    })
    .await;
    assert_eq!(v.insync, BTreeSet::from([0]));
    let e1 = v.master_epoch;

    // A follower answers NotLeader with the leader's address; the client follows it.
    let st = ControllerClient::new(addrs.clone(), Duration::from_secs(3))
        .status()
        .await
        .unwrap();
    let (leader_id, leader_addr) = (st.leader.unwrap(), st.leader_addr.clone().unwrap());
    assert_eq!(leader_addr, peers[&leader_id]);
    let follower = peers.keys().copied().find(|id| *id != leader_id).unwrap();
    let limits = FrameLimits::new(1 << 20, Duration::from_secs(2));
    let mut ch = Channel::new(peers[&follower].clone(), Arc::new(TcpConnector), limits);
    let hb = b1_heartbeat();
    match ch.call(&Request::Heartbeat(hb.clone())).await.unwrap() {
        Response::Heartbeat(Err(ControllerError::NotLeader {
            leader_addr: Some(a),
        })) => assert_eq!(a, leader_addr),
        other => panic!("expected NotLeader, got {other:?}"),
    }
    let via_follower =
        ControllerClient::new(vec![peers[&follower].clone()], Duration::from_secs(3));
    let r = via_follower.heartbeat(&hb).await.unwrap();
    assert_eq!(r.view.master, Some(0));

    // The master adds broker 1 to the in-sync set; a stale master is refused.
    let client = ControllerClient::new(addrs.clone(), Duration::from_secs(3));
    let g = client
        .alter_insync(&AlterInSync {
            group: "broker-a".into(),
            master: 0,
            master_epoch: e1,
            insync: BTreeSet::from([0, 1]),
        })
        .await
        .unwrap();
    assert_eq!(g.insync, BTreeSet::from([0, 1]));
    let stale = client
        .alter_insync(&AlterInSync {
            group: "broker-a".into(),
            master: 0,
            master_epoch: e1 - 1,
            insync: BTreeSet::from([0]),
        })
        .await;
    assert!(
        matches!(stale, Err(ControllerError::Refused(_))),
        "{stale:?}"
    );

    // The master goes silent: the in-sync slave takes over with epoch + 1.
    b0.paused.store(true, Ordering::SeqCst);
    let t = Instant::now();
    let v = wait_for(
        "failover to broker 1",
        Duration::from_millis(MASTER_TIMEOUT_MS + 2500),
        || b1.view().filter(|v| v.master == Some(1)),
    )
    .await;
    let took = t.elapsed();
    assert!(
        took <= Duration::from_millis(MASTER_TIMEOUT_MS + 1500),
        "failover took {took:?}"
    );
    assert_eq!(v.master_epoch, e1 + 1);
    assert_eq!(v.insync, BTreeSet::from([1]));
    let e2 = v.master_epoch;
    assert!(!b2.state.lock().ever_master, "broker 2 was never in sync");

    // Stop the Raft leader node: a new leader answers and the state survived.
    let st = client.status().await.unwrap();
    let leader = st.leader.expect("a leader");
    tracing_free_log(&format!("stopping leader {leader}"));
    stop_node(&mut nodes, leader).await;
    let hb_client = ControllerClient::new(addrs.clone(), Duration::from_secs(5));
    let mut new_leader = None;
    for _ in 0..100 {
        if let Ok(st) = hb_client.status().await
            && st.leader.is_some_and(|l| l != leader)
        {
            new_leader = st.leader;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let new_leader = new_leader.expect("a new leader was elected");
    tracing_free_log(&format!("new leader {new_leader}"));
    let before = b1.state.lock().replies;
    let v = wait_for(
        "heartbeats answered by the new leader",
        Duration::from_secs(10),
        || {
            let s = b1.state.lock();
            (s.replies >= before + 3).then(|| s.view.clone()).flatten()
        },
    )
    .await;
    assert_eq!((v.master, v.master_epoch), (Some(1), e2));
    assert_eq!(v.insync, BTreeSet::from([1]));
    // The new leader waits out its master timeout and keeps the live master.
    tokio::time::sleep(Duration::from_millis(MASTER_TIMEOUT_MS + 1000)).await;
    let v = b1.view().unwrap();
    assert_eq!(
        (v.master, v.master_epoch),
        (Some(1), e2),
        "no spurious election by the new leader"
    );
    assert!(!b2.state.lock().ever_master);

    // Restart the stopped node from its data dir: it rejoins with the same state.
    nodes.insert(leader, start(leader, &peers, dir.path()).await);
    let restarted = nodes[&leader].ctl.clone();
    let g = wait_for("restarted node catches up", Duration::from_secs(10), || {
        restarted
            .group("broker-a")
            .filter(|g| g.master == Some(1) && g.master_epoch == e2)
    })
    .await;
    assert_eq!(g.brokers.len(), 3);
    let _ = b0.id;

    brokers_stop.cancel();
    for (_, n) in std::mem::take(&mut nodes) {
        stop(n).await;
    }
}

async fn stop_node(nodes: &mut BTreeMap<u64, Node>, id: u64) {
    if let Some(n) = nodes.remove(&id) {
        stop(n).await;
    }
}

fn b1_heartbeat() -> Heartbeat {
    Heartbeat {
        group: "broker-a".into(),
        broker_id: 1,
        incarnation: 43,
        addrs: BrokerAddrs {
            grpc: "g1".into(),
            repl: "r1".into(),
        },
        store_epoch: 1,
        log_end: 100,
        prefer_master: false,
        acting_master_epoch: None,
        master_refused: None,
        fenced: None,
    }
}

fn tracing_free_log(msg: &str) {
    eprintln!("[cluster test] {msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_voter_state_survives_restart() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let dir = tempfile::tempdir().unwrap();
        let port = free_ports(1)[0];
        let peers = BTreeMap::from([(1u64, format!("127.0.0.1:{port}"))]);
        let addrs = vec![peers[&1].clone()];
        let node = start(1, &peers, dir.path()).await;
        let client = ControllerClient::new(addrs.clone(), Duration::from_secs(3));
        let hb = Heartbeat {
            group: "g".into(),
            broker_id: 5,
            incarnation: 1,
            addrs: BrokerAddrs {
                grpc: "x".into(),
                repl: "y".into(),
            },
            store_epoch: 0,
            log_end: 0,
            prefer_master: true,
            acting_master_epoch: None,
            master_refused: None,
            fenced: None,
        };
        let v = wait_for_async(|| client.heartbeat(&hb)).await;
        assert!(v.view.brokers.contains_key(&5));
        assert_eq!(v.lease_ms, 1000);
        let elected = loop {
            let r = client.heartbeat(&hb).await.unwrap();
            if r.view.master == Some(5) {
                break r.view;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        // Hostile frames close the connection and nothing else.
        let mut raw = tokio::net::TcpStream::connect(&peers[&1]).await.unwrap();
        raw.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(3), raw.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0, "oversized frame: connection closed");
        let mut raw = tokio::net::TcpStream::connect(&peers[&1]).await.unwrap();
        raw.write_all(&5u32.to_be_bytes()).await.unwrap();
        raw.write_all(b"nope!").await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(3), raw.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 4, "garbage answered with an error frame");
        assert!(client.status().await.is_ok(), "server still serving");
        stop(node).await;
        let node = start(1, &peers, dir.path()).await;
        let g = wait_for("replayed state", Duration::from_secs(10), || {
            node.ctl.group("g")
        })
        .await;
        assert_eq!(g, elected);
        // Snapshot + purge, then restart: the state comes back from the snapshot.
        let purged = node.ctl.compact().await.unwrap();
        assert!(purged.is_some());
        stop(node).await;
        let node = start(1, &peers, dir.path()).await;
        assert_eq!(
            node.ctl.group("g"),
            Some(elected.clone()),
            "loaded from the snapshot at once"
        );
        let r = client.heartbeat(&hb).await.unwrap();
        assert_eq!(r.view, elected);
        stop(node).await;
    })
    .await
    .expect("timed out");
}

async fn wait_for_async<T, F, Fut>(mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ControllerError>>,
{
    for _ in 0..50 {
        if let Ok(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("never succeeded");
}

fn group_hb(group: &str) -> Heartbeat {
    Heartbeat {
        group: group.into(),
        broker_id: 5,
        incarnation: 1,
        addrs: BrokerAddrs {
            grpc: format!("{group}-g"),
            repl: format!("{group}-r"),
        },
        store_epoch: 0,
        log_end: 0,
        prefer_master: true,
        acting_master_epoch: None,
        master_refused: None,
        fenced: None,
    }
}

/// Heartbeats for `group`'s only broker (id 5) until the controller makes it master.
async fn elect_group(client: &ControllerClient, group: &str) {
    let hb = group_hb(group);
    loop {
        if let Ok(r) = client.heartbeat(&hb).await
            && r.view.master == Some(5)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Three controller nodes in `dir` with six committed groups (`g0`..`g5`, each with a
/// master) that every node applied: the peers, the nodes, a client, and the groups.
async fn trio_with_groups(
    dir: &Path,
) -> (
    BTreeMap<u64, String>,
    BTreeMap<u64, Node>,
    ControllerClient,
    Vec<GroupState>,
) {
    let ports = free_ports(3);
    let peers: BTreeMap<u64, String> = (1..=3u64)
        .map(|id| (id, format!("127.0.0.1:{}", ports[id as usize - 1])))
        .collect();
    let mut nodes = BTreeMap::new();
    for id in 1..=3 {
        nodes.insert(id, start(id, &peers, dir).await);
    }
    let client = ControllerClient::new(peers.values().cloned().collect(), Duration::from_secs(3));
    for g in 0..6 {
        elect_group(&client, &format!("g{g}")).await;
    }
    let groups = wait_for(
        "every node applied the groups",
        Duration::from_secs(10),
        || {
            let all: Vec<_> = nodes.values().map(|n| n.ctl.status().groups).collect();
            (all.iter().all(|g| g.len() == 6 && *g == all[0])).then(|| all[0].clone())
        },
    )
    .await;
    (peers, nodes, client, groups)
}

fn leader_of(nodes: &BTreeMap<u64, Node>) -> Option<u64> {
    nodes
        .values()
        .map(|n| n.ctl.status())
        .find(|s| s.leader == Some(s.node))
        .map(|s| s.node)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_raft_log_catches_up_from_the_leader_before_it_votes() {
    tokio::time::timeout(Duration::from_secs(90), async {
        let dir = tempfile::tempdir().unwrap();
        let (peers, mut nodes, _client, groups) = trio_with_groups(dir.path()).await;
        for id in [1, 2, 3] {
            stop_node(&mut nodes, id).await;
        }
        // A flipped byte in a record of node 3's log, with good records after it.
        let log = dir.path().join("n3").join("log");
        let at = flip_in_record(&log, 2);

        // Node 3 comes back with node 2: node 2 needs node 3's vote to lead, and node 3,
        // which may have lost entries it acknowledged, refuses to give it.
        nodes.insert(3, start(3, &peers, dir.path()).await);
        let why = nodes[&3].ctl.status().catching_up.expect("catching up");
        assert!(
            why.contains(&format!("damaged at byte {}", at - 19)),
            "{why}"
        );
        assert!(dir.path().join("n3").join("catching-up").exists());
        assert!(
            std::fs::read_dir(dir.path().join("n3").join("damaged"))
                .unwrap()
                .next()
                .is_some(),
            "a copy of the damaged log is kept"
        );
        nodes.insert(2, start(2, &peers, dir.path()).await);
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(
            leader_of(&nodes),
            None,
            "a leader was elected with the vote of a node that lost its log"
        );
        // Node 1 returns: a leader is elected without node 3, which then fetches the log,
        // holds the same state, and votes again.
        nodes.insert(1, start(1, &peers, dir.path()).await);
        wait_for("node 3 caught up", Duration::from_secs(20), || {
            let s = nodes[&3].ctl.status();
            (s.catching_up.is_none() && s.groups == groups).then_some(())
        })
        .await;
        assert!(!dir.path().join("n3").join("catching-up").exists());
        let leader = wait_for("a leader", Duration::from_secs(10), || leader_of(&nodes)).await;
        assert_ne!(leader, 3, "node 3 stood for election while catching up");
        let other = [1, 2].into_iter().find(|i| *i != leader).unwrap();
        stop_node(&mut nodes, leader).await;
        // The two left can only elect with node 3's vote.
        let next = wait_for(
            "a leader after the first one stopped",
            Duration::from_secs(20),
            || leader_of(&nodes),
        )
        .await;
        assert!(next == other || next == 3, "{next}");
        assert_eq!(nodes[&next].ctl.status().groups, groups);
        for (_, n) in std::mem::take(&mut nodes) {
            stop(n).await;
        }
    })
    .await
    .expect("timed out");
}

/// Flips a byte 20 bytes into record `k` (from 0) of the Raft log at `log` (one record per
/// line), which must hold more than 6 records: the byte's offset.
fn flip_in_record(log: &Path, k: usize) -> usize {
    let mut bytes = std::fs::read(log).unwrap();
    let ends: Vec<usize> = bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .map(|(i, _)| i)
        .collect();
    assert!(ends.len() > 6, "the log holds the changes");
    let at = ends[k - 1] + 20;
    bytes[at] ^= 0x01;
    std::fs::write(log, &bytes).unwrap();
    at
}

/// A leader restarting with its vote committed for itself takes up leadership at once, with
/// no election (openraft's startup). If its log was damaged meanwhile, it would lead without
/// entries it had committed and overwrite them on the followers. Catching up, it must come
/// back as a follower instead: the others elect a leader that holds the log, and it fetches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_log_was_damaged_comes_back_as_a_follower() {
    tokio::time::timeout(Duration::from_secs(90), async {
        let dir = tempfile::tempdir().unwrap();
        let (peers, mut nodes, client, groups) = trio_with_groups(dir.path()).await;
        let leader = wait_for("a leader", Duration::from_secs(10), || leader_of(&nodes)).await;
        stop_node(&mut nodes, leader).await;
        flip_in_record(&dir.path().join(format!("n{leader}")).join("log"), 2);
        // Back before the followers' election timeout: they still follow its term.
        nodes.insert(leader, start(leader, &peers, dir.path()).await);
        assert!(nodes[&leader].ctl.status().catching_up.is_some());
        let next = wait_for("a new leader", Duration::from_secs(20), || {
            leader_of(&nodes).filter(|l| *l != leader)
        })
        .await;
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until {
            let s = nodes[&leader].ctl.status();
            assert_ne!(s.leader, Some(leader), "the damaged node leads");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The new leader may have moved the groups on (their brokers stopped heartbeating):
        // the old leader must hold the same state as the new one, every group in it.
        let names = |g: &[GroupState]| g.iter().map(|g| g.group.clone()).collect::<Vec<_>>();
        wait_for("the old leader caught up", Duration::from_secs(20), || {
            let s = nodes[&leader].ctl.status();
            (s.catching_up.is_none() && s.groups == nodes[&next].ctl.status().groups).then_some(())
        })
        .await;
        for n in nodes.values() {
            assert_eq!(
                names(&n.ctl.status().groups),
                names(&groups),
                "committed state lost"
            );
        }
        assert_eq!(leader_of(&nodes), Some(next));
        elect_group(&client, "g-after").await;
        for (_, n) in std::mem::take(&mut nodes) {
            stop(n).await;
        }
    })
    .await
    .expect("timed out");
}

/// The same damage on a follower while the leader keeps running: the leader remembers how
/// far the follower's log matched, and the restarted follower's log is now shorter. The
/// leader must probe again from the start (openraft's `loosen-follower-log-revert`), not
/// crash, and the follower must catch up and vote again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_whose_log_was_cut_catches_up_while_the_leader_runs() {
    tokio::time::timeout(Duration::from_secs(90), async {
        let dir = tempfile::tempdir().unwrap();
        let (peers, mut nodes, client, groups) = trio_with_groups(dir.path()).await;
        let leader = wait_for("a leader", Duration::from_secs(10), || leader_of(&nodes)).await;
        let f = [1, 2, 3].into_iter().find(|i| *i != leader).unwrap();
        stop_node(&mut nodes, f).await;
        // Cut the follower's log at a damaged record in its first half.
        let log = dir.path().join(format!("n{f}")).join("log");
        flip_in_record(&log, 2);
        nodes.insert(f, start(f, &peers, dir.path()).await);
        assert!(nodes[&f].ctl.status().catching_up.is_some());
        wait_for("the follower caught up", Duration::from_secs(20), || {
            let s = nodes[&f].ctl.status();
            (s.catching_up.is_none() && s.groups == groups).then_some(())
        })
        .await;
        // The leader is still leading and still commits.
        assert_eq!(leader_of(&nodes), Some(leader));
        elect_group(&client, "g-after").await;
        wait_for(
            "the follower applied the new commit",
            Duration::from_secs(10),
            || {
                nodes[&f]
                    .ctl
                    .status()
                    .groups
                    .iter()
                    .any(|g| g.group == "g-after")
                    .then_some(())
            },
        )
        .await;
        for (_, n) in std::mem::take(&mut nodes) {
            stop(n).await;
        }
    })
    .await
    .expect("timed out");
}

/// A master whose log is fenced may not drop its slaves from the in-sync set (it stopped
/// streaming to them, so they stopped acking): that would leave only the fenced master
/// eligible, a group without any master. The controller refuses the shrink and elects the
/// slave instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_master_cannot_shrink_the_in_sync_set() {
    tokio::time::timeout(Duration::from_secs(30), async {
        let dir = tempfile::tempdir().unwrap();
        let port = free_ports(1)[0];
        let peers = BTreeMap::from([(1u64, format!("127.0.0.1:{port}"))]);
        let node = start(1, &peers, dir.path()).await;
        let client = ControllerClient::new(vec![peers[&1].clone()], Duration::from_secs(3));
        let hb = |id: u64, prefer: bool| Heartbeat {
            group: "g".into(),
            broker_id: id,
            incarnation: 1,
            addrs: BrokerAddrs {
                grpc: format!("g{id}"),
                repl: format!("r{id}"),
            },
            store_epoch: 0,
            log_end: 0,
            prefer_master: prefer,
            acting_master_epoch: None,
            master_refused: None,
            fenced: None,
        };
        let v = loop {
            let _ = client.heartbeat(&hb(1, false)).await;
            if let Ok(r) = client.heartbeat(&hb(0, true)).await
                && r.view.master == Some(0)
            {
                break r.view;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let epoch = v.master_epoch;
        let g = client
            .alter_insync(&AlterInSync {
                group: "g".into(),
                master: 0,
                master_epoch: epoch,
                insync: BTreeSet::from([0, 1]),
            })
            .await
            .unwrap();
        assert_eq!(g.insync, BTreeSet::from([0, 1]));
        // The master's fsync failed: it says so, then tries to drop its slave.
        let mut fenced = hb(0, true);
        fenced.store_epoch = epoch;
        fenced.acting_master_epoch = Some(epoch);
        fenced.fenced = Some("commit log write/fsync failed: Input/output error".into());
        client.heartbeat(&fenced).await.unwrap();
        let shrink = client
            .alter_insync(&AlterInSync {
                group: "g".into(),
                master: 0,
                master_epoch: epoch,
                insync: BTreeSet::from([0]),
            })
            .await;
        assert!(
            matches!(&shrink, Err(ControllerError::Refused(why)) if why.contains("fenced")),
            "{shrink:?}"
        );
        // The slave, still in sync, replaces it.
        let mut slave = hb(1, false);
        slave.store_epoch = epoch;
        let v = loop {
            let _ = client.heartbeat(&fenced).await;
            let r = client.heartbeat(&slave).await.unwrap();
            if r.view.master == Some(1) {
                break r.view;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(v.master_epoch > epoch);
        stop(node).await;
    })
    .await
    .expect("timed out");
}

/// A rolling upgrade of the controller trio: nodes offering version 2 (the next release)
/// and one offering only 1 form one Raft group and elect masters; every connection speaks
/// the highest version both ends offer; a dialer with no version in common is refused with
/// the reason; a server from before negotiation (it cannot decode a Hello) is spoken to in
/// version 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_protocol_versions_form_one_group() {
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(3);
    let peers: BTreeMap<u64, String> = (1..=3)
        .map(|i| (i, format!("127.0.0.1:{}", ports[i as usize - 1])))
        .collect();
    let addrs: Vec<String> = peers.values().cloned().collect();
    let mut nodes = Vec::new();
    for (id, max) in [(1, 2), (2, 2), (3, 1)] {
        let mut c = config(id, &peers, dir.path());
        c.protocol_max = Some(max);
        nodes.push(start_cfg(c).await);
    }
    let stop_brokers = CancellationToken::new();
    let b0 = FakeBroker::spawn(0, true, addrs.clone(), stop_brokers.clone());
    wait_for(
        "a master through a mixed trio",
        Duration::from_secs(20),
        || b0.view().filter(|v| v.master == Some(0)),
    )
    .await;
    let both = FrameLimits {
        versions: (1, 2),
        ..FrameLimits::new(1 << 20, Duration::from_secs(2))
    };
    for (node, expect) in [(1, 2), (3, 1)] {
        let mut ch = Channel::new(peers[&node].clone(), Arc::new(TcpConnector), both);
        assert!(matches!(
            ch.call(&Request::Status).await.unwrap(),
            Response::Status(_)
        ));
        assert_eq!(ch.version(), Some(expect), "node {node}");
    }
    let only_2 = FrameLimits {
        versions: (2, 2),
        ..both
    };
    let mut ch = Channel::new(peers[&3].clone(), Arc::new(TcpConnector), only_2);
    match ch.call(&Request::Status).await {
        Err(CallError::Refused { reason, .. }) => {
            assert!(
                reason.contains("no common controller protocol version"),
                "{reason}"
            )
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    stop_brokers.cancel();
    for n in nodes {
        stop(n).await;
    }

    // A server before negotiation: it answers a Hello with its decode error and hangs up,
    // then serves version 1 frames (no checksum).
    let legacy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = legacy.local_addr().unwrap().to_string();
    let server = tokio::spawn(async move {
        let limits = FrameLimits::new(1 << 20, Duration::from_secs(2));
        let (mut s, _) = legacy.accept().await.unwrap();
        let mut len = [0u8; 4];
        s.read_exact(&mut len).await.unwrap();
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut body).await.unwrap();
        let err = Response::Error(ControllerError::Transport(
            "decode: unknown variant `Hello`, expected one of `AppendEntries`".into(),
        ));
        sofamq_controller::rpc::write_frame(&mut s, &err, limits, 1)
            .await
            .unwrap();
        drop(s);
        let (mut s, _) = legacy.accept().await.unwrap();
        let req: Request = sofamq_controller::rpc::read_frame(&mut s, limits, None, 1)
            .await
            .unwrap();
        assert!(matches!(req, Request::Status), "{req:?}");
        let ok = Response::AlterInSync(Err(ControllerError::Unavailable("legacy".into())));
        sofamq_controller::rpc::write_frame(&mut s, &ok, limits, 1)
            .await
            .unwrap();
    });
    let mut ch = Channel::new(addr, Arc::new(TcpConnector), both);
    assert!(matches!(
        ch.call(&Request::Status).await.unwrap(),
        Response::AlterInSync(Err(ControllerError::Unavailable(_)))
    ));
    assert_eq!(ch.version(), Some(1));
    server.await.unwrap();
}

/// `run(listener, config, shutdown)` starts the node and answers on the listener until the
/// shutdown trips, then returns with the port closed; a node that cannot start is an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_until_shutdown_and_reports_a_node_that_cannot_start() {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_ports(1)[0]);
    let peers: BTreeMap<u64, String> = [(1, addr.clone())].into();
    let listener = tokio::net::TcpListener::bind(&addr).await.unwrap();
    let shutdown = Shutdown::new();
    let task = tokio::spawn(sofamq_controller::run(
        listener,
        config(1, &peers, dir.path()),
        shutdown.clone(),
    ));
    let client = ControllerClient::new(vec![addr.clone()], Duration::from_secs(1));
    wait_for_async(|| client.status()).await;
    assert!(!task.is_finished());
    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("run returns after the shutdown")
        .unwrap()
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(&addr).await.is_err(),
        "the port is closed once run returned"
    );

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut bad = config(1, &peers, dir.path());
    bad.lease_ms = bad.master_timeout_ms;
    let e = sofamq_controller::run(listener, bad, Shutdown::new())
        .await
        .unwrap_err();
    assert!(matches!(e, RunError::Start(_)), "{e}");
}
