//! The controller host of the group simulation ([`crate::groupsim`]): one node standing in for
//! the Raft group, serving the controller's real wire protocol (`sofamq_controller::rpc`
//! frames, the Hello negotiation, `Heartbeat` and `AlterInSync` requests) to the brokers' real
//! `ControllerClient`. It runs the controller's real election rule (`logic::decide`) and real
//! state transition (`SmData::apply_command`); every applied command is persisted through the
//! host's simulated disk (synced, then renamed into place) before any reply depends on it, so
//! a crash keeps what was acknowledged. Liveness is memory only: after a restart the node is a
//! new "leader" (`leader_since` = start) and the logic waits a master timeout before electing.
//!
//! Why a stand-in and not the real node (`sofamq_controller::node`, openraft): the real node's
//! Raft timers and storage run on OS threads and the real file system, which turmoil does not
//! drive; the stand-in keeps what decides safety (the rule, the state machine, durability
//! before reply) and replaces only the replication of the controller's own log.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Write;
use std::rc::Rc;
use std::time::Duration;

use tokio::time::Instant;

use sofamq_controller::logic::{self, BrokerSeen, Clock};
use sofamq_controller::rpc::{
    FrameError, FrameLimits, MIN_VERSION, Request, Response, negotiate, read_frame, write_frame,
};
use sofamq_controller::sm::SmData;
use sofamq_controller::{
    AlterInSync, Command, CommandReply, ControllerError, GroupState, Heartbeat, HeartbeatReply,
};
use turmoil::fs::shim::std::fs::{self as sfs, File};

use crate::journal::Journal;

const STATE: &str = "/controller/state.json";
const STATE_TMP: &str = "/controller/state.json.tmp";

/// The controller's timings (ms of simulated time).
#[derive(Debug, Clone, Copy)]
pub struct CtlTiming {
    /// Lease granted with each heartbeat reply.
    pub lease: u64,
    /// Silence after which a master is replaced (and a restarted node's wait).
    pub master_timeout: u64,
    /// Silence after which a master its slaves report refused is replaced.
    pub refused_timeout: u64,
}

/// What the harness and the controller share.
pub struct CtlShared {
    /// The seed's journal.
    pub j: Rc<Journal>,
    /// The committed view (what the controller last persisted).
    pub view: RefCell<Option<GroupState>>,
    /// Broken variant: on failover, elect the live broker with the shortest log, in sync or
    /// not (the real rule decides *when*; this overrides *whom*).
    pub elect_out_of_sync: bool,
    /// Timings.
    pub timing: CtlTiming,
    /// Clock drift: the rate of the controller's clock against simulated time (1.0: exact).
    pub rate: f64,
    /// Clock drift of each broker (by id): a broker whose clock runs at rate `r` measures the
    /// lease it is granted as lasting `lease / r` of simulated time, so that is what it gets.
    pub broker_rates: Vec<f64>,
}

/// A clock that runs at `rate` times simulated time from `base` (drift).
#[derive(Debug, Clone, Copy)]
struct Drifting {
    base: Instant,
    rate: f64,
}

impl Drifting {
    /// Now, on this host's drifting clock, which the controller's rules read.
    fn now(&self) -> Instant {
        self.base + Instant::now().duration_since(self.base).mul_f64(self.rate)
    }
}

struct Ctl {
    sh: Rc<CtlShared>,
    clock: Drifting,
    sm: SmData,
    seen: BTreeMap<u64, BrokerSeen>,
    leader_since: Instant,
    epoch_seen: Option<(u64, Instant)>,
}

impl Ctl {
    fn group(&self, name: &str) -> Option<&GroupState> {
        self.sm.groups.get(name)
    }

    /// Applies `cmd` with the real state machine, persists, then publishes.
    fn propose(&mut self, cmd: &Command, why: &str) -> Result<GroupState, ControllerError> {
        let mut next = self.sm.clone();
        let g = match next.apply_command(cmd) {
            CommandReply::Applied(g) => g,
            CommandReply::Refused(r) => return Err(ControllerError::Refused(r)),
            CommandReply::None => return Err(ControllerError::Refused("nothing applied".into())),
        };
        if let Err(e) = persist(&next.groups) {
            self.sh
                .j
                .error(&format!("controller: persist failed ({why}): {e}"));
            return Err(ControllerError::Unavailable(format!("not committed: {e}")));
        }
        let old = self.group(&g.group).cloned();
        if old.as_ref().map(|o| (o.master, o.master_epoch, &o.insync))
            != Some((g.master, g.master_epoch, &g.insync))
        {
            self.sh.j.log(&format!(
                "controller: commit ({why}): master={:?} epoch={} insync={:?}",
                g.master, g.master_epoch, g.insync
            ));
        }
        self.sm = next;
        *self.sh.view.borrow_mut() = Some(g.clone());
        Ok(g)
    }

    fn heartbeat(&mut self, hb: &Heartbeat) -> Result<HeartbeatReply, ControllerError> {
        let now = self.clock.now();
        match self.seen.get_mut(&hb.broker_id) {
            Some(s) => s.update(hb, now),
            None => {
                self.seen.insert(hb.broker_id, BrokerSeen::new(hb, now));
            }
        }
        let registered = self
            .group(&hb.group)
            .is_some_and(|g| g.brokers.get(&hb.broker_id) == Some(&hb.addrs));
        if !registered {
            let cmd = Command::Register {
                group: hb.group.clone(),
                broker_id: hb.broker_id,
                addrs: hb.addrs.clone(),
                store_epoch: hb.store_epoch,
            };
            self.propose(&cmd, "register")?;
        }
        match self.group(&hb.group) {
            Some(g) => Ok(HeartbeatReply {
                view: g.clone(),
                lease_ms: self.lease_for(hb.broker_id),
            }),
            None => Err(ControllerError::Unavailable("group not yet applied".into())),
        }
    }

    /// The lease as broker `id`'s drifting clock measures it, in simulated time.
    fn lease_for(&self, id: u64) -> u64 {
        let rate = usize::try_from(id)
            .ok()
            .and_then(|i| self.sh.broker_rates.get(i))
            .copied()
            .unwrap_or(1.0);
        (self.sh.timing.lease as f64 / rate).round() as u64
    }

    fn tick(&mut self) {
        let groups: Vec<GroupState> = self.sm.groups.values().cloned().collect();
        for g in groups {
            let now = self.clock.now();
            let since = match self.epoch_seen {
                Some((e, t)) if e == g.master_epoch => t,
                _ => {
                    self.epoch_seen = Some((g.master_epoch, now));
                    now
                }
            };
            let clock = Clock {
                now,
                leader_since: self.leader_since,
                epoch_since: since.max(self.leader_since),
                master_timeout: Duration::from_millis(self.sh.timing.master_timeout),
                refused_timeout: Duration::from_millis(self.sh.timing.refused_timeout),
            };
            let Some(mut cmd) = logic::decide(&g, &self.seen, &clock) else {
                continue;
            };
            if self.sh.elect_out_of_sync {
                self.make_unclean(&g, &mut cmd, &clock);
            }
            if let Err(e) = self.propose(&cmd, "election") {
                self.sh
                    .j
                    .error(&format!("controller: election refused: {e}"));
            }
        }
    }

    /// The broken variant: a failover elects the live broker other than the old master with
    /// the shortest log, in sync or not.
    fn make_unclean(&self, g: &GroupState, cmd: &mut Command, clock: &Clock) {
        let Command::Elect {
            master: Some(m),
            insync,
            ..
        } = cmd
        else {
            return;
        };
        let worst = self
            .seen
            .iter()
            .filter(|(id, s)| {
                Some(**id) != g.master
                    && g.brokers.contains_key(id)
                    && clock.now.saturating_duration_since(s.last_seen) < clock.master_timeout
            })
            .min_by_key(|(id, s)| (s.log_end, **id))
            .map(|(id, _)| *id);
        if let Some(w) = worst
            && g.master.is_some()
        {
            *m = w;
            insync.insert(w);
        }
    }

    fn handle(&mut self, req: Request) -> Response {
        match req {
            Request::Heartbeat(hb) => Response::Heartbeat(self.heartbeat(&hb)),
            Request::AlterInSync(a) => Response::AlterInSync(self.alter(a)),
            _ => Response::Error(ControllerError::Refused(
                "the simulated controller serves brokers only".into(),
            )),
        }
    }

    fn alter(&mut self, a: AlterInSync) -> Result<GroupState, ControllerError> {
        self.propose(&Command::AlterInSync(a), "alter-insync")
    }
}

fn persist(groups: &BTreeMap<String, GroupState>) -> std::io::Result<()> {
    let body = serde_json::to_vec(groups).map_err(std::io::Error::other)?;
    sfs::create_dir_all("/controller")?;
    let mut f = File::create(STATE_TMP)?;
    f.write_all(&body)?;
    f.sync_all()?;
    sfs::rename(STATE_TMP, STATE)?;
    sfs::sync_dir("/controller")
}

fn load() -> SmData {
    let groups = sfs::read(STATE)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    SmData {
        groups,
        ..SmData::default()
    }
}

/// Runs the controller host: loads the committed state, elects every 100 ms, serves `port`.
pub async fn run(sh: Rc<CtlShared>, port: u16) -> turmoil::Result {
    let sm = load();
    for g in sm.groups.values() {
        sh.j.log(&format!(
            "controller: start: master={:?} epoch={} insync={:?}",
            g.master, g.master_epoch, g.insync
        ));
        *sh.view.borrow_mut() = Some(g.clone());
    }
    let clock = Drifting {
        base: Instant::now(),
        rate: sh.rate,
    };
    let ctl = Rc::new(RefCell::new(Ctl {
        sh,
        clock,
        sm,
        seen: BTreeMap::new(),
        leader_since: clock.now(),
        epoch_seen: None,
    }));
    let ticker = ctl.clone();
    tokio::task::spawn_local(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            ticker.borrow_mut().tick();
        }
    });
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", port)).await?;
    loop {
        let (s, _) = listener.accept().await?;
        tokio::task::spawn_local(connection(s, ctl.clone()));
    }
}

/// One connection, as the real server (`sofamq_controller::server`) serves it: version 1
/// until a first `Hello` negotiates, one reply per request, an error reply ends it.
async fn connection(mut s: turmoil::net::TcpStream, ctl: Rc<RefCell<Ctl>>) {
    let limits = FrameLimits::new(1 << 20, Duration::from_secs(2));
    let mut version = MIN_VERSION;
    let mut first = true;
    loop {
        let req =
            read_frame::<_, Request>(&mut s, limits, Some(Duration::from_secs(30)), version).await;
        let mut next = version;
        let resp = match req {
            Ok(Request::Hello { min, max }) if first => {
                match negotiate(limits.versions, (min, max)) {
                    Ok(v) => {
                        next = v;
                        Response::Hello { version: v }
                    }
                    Err(why) => Response::Error(ControllerError::Transport(why)),
                }
            }
            Ok(req) => ctl.borrow_mut().handle(req),
            Err(FrameError::Decode(e)) => {
                Response::Error(ControllerError::Transport(e.to_string()))
            }
            Err(_) => return,
        };
        let fatal = matches!(resp, Response::Error(_));
        if write_frame(&mut s, &resp, limits, version).await.is_err() || fatal {
            return;
        }
        first = false;
        version = next;
    }
}
