//! The controller host: one node standing in for the Raft group. It runs the controller's
//! real election rule (`logic::decide`) and real state transition (`SmData::apply_command`);
//! every applied command is persisted through the simulated file system (synced, then
//! renamed into place) before any reply depends on it, so a crash keeps what was
//! acknowledged. The liveness table is memory only: after a restart the node is a new
//! "leader" (`leader_since` = start) and the logic waits a master timeout before failover.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Write;
use std::rc::Rc;
use std::time::Duration;

use tokio::time::Instant;

use sofamq_controller::logic::{self, BrokerSeen, Clock};
use sofamq_controller::sm::SmData;
use sofamq_controller::{
    AlterInSync, BrokerAddrs, Command, CommandReply, GroupState, Heartbeat, HeartbeatReply,
};
use turmoil::fs::shim::std::fs::{self as sfs, File};

use crate::net::{self, Req, Resp};
use crate::shared::{World, instant};

const STATE: &str = "/state.json";
const STATE_TMP: &str = "/state.json.tmp";
/// The simulated group's name.
pub const GROUP: &str = "g";

struct Ctl {
    sh: World,
    sm: SmData,
    seen: BTreeMap<u64, BrokerSeen>,
    leader_since: Instant,
    /// The master epoch last observed and when it was first seen (as in the real node).
    epoch_seen: Option<(u64, Instant)>,
}

impl Ctl {
    fn group(&self) -> Option<&GroupState> {
        self.sm.groups.get(GROUP)
    }

    /// Applies `cmd` with the real state machine, persists, and publishes. The state only
    /// changes if the persist succeeded (else the node "crashed" before committing).
    fn propose(&mut self, cmd: &Command, why: &str) -> Result<GroupState, String> {
        let mut next = self.sm.clone();
        let g = match next.apply_command(cmd) {
            CommandReply::Applied(g) => g,
            CommandReply::Refused(r) => return Err(r),
            CommandReply::None => return Err("nothing applied".into()),
        };
        if let Err(e) = persist(&next.groups) {
            self.sh
                .log("controller", format!("persist failed ({why}): {e}"));
            return Err(format!("not committed: {e}"));
        }
        if self.group() != Some(&g) {
            self.sh.log(
                "controller",
                format!(
                    "commit ({why}): master={:?} epoch={} insync={:?}",
                    g.master, g.master_epoch, g.insync
                ),
            );
        }
        self.sm = next;
        *self.sh.view.borrow_mut() = Some(g.clone());
        Ok(g)
    }

    fn heartbeat(&mut self, hb: &Heartbeat) -> Resp {
        let now = Instant::from_std(instant());
        match self.seen.get_mut(&hb.broker_id) {
            Some(s) => {
                if s.incarnation != hb.incarnation {
                    self.sh
                        .log("controller", format!("b{} restarted", hb.broker_id));
                }
                s.update(hb, now);
            }
            None => {
                self.seen.insert(hb.broker_id, BrokerSeen::new(hb, now));
            }
        }
        let registered = self
            .group()
            .is_some_and(|g| g.brokers.get(&hb.broker_id) == Some(&hb.addrs));
        if !registered {
            let cmd = Command::Register {
                group: hb.group.clone(),
                broker_id: hb.broker_id,
                addrs: hb.addrs.clone(),
                store_epoch: hb.store_epoch,
            };
            if let Err(e) = self.propose(&cmd, "register") {
                return Resp::Refused(e);
            }
        }
        match self.group() {
            Some(g) => Resp::Heartbeat(HeartbeatReply {
                view: g.clone(),
                lease_ms: self.sh.timing.lease,
            }),
            None => Resp::Refused("group not yet applied".into()),
        }
    }

    fn alter(&mut self, a: AlterInSync) -> Resp {
        match self.propose(&Command::AlterInSync(a), "alter-insync") {
            Ok(g) => Resp::View(g),
            Err(e) => Resp::Refused(e),
        }
    }

    fn tick(&mut self) {
        let Some(g) = self.group().cloned() else {
            return;
        };
        let now = Instant::from_std(instant());
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
            refused_timeout: Duration::from_millis(self.sh.timing.refused_timeout()),
        };
        let Some(mut cmd) = logic::decide(&g, &self.seen, &clock) else {
            return;
        };
        if self.sh.knobs.unclean_election {
            self.make_unclean(&g, &mut cmd, &clock);
        }
        if let Err(e) = self.propose(&cmd, "election") {
            self.sh.log("controller", format!("election refused: {e}"));
        }
    }

    /// Broken rule (knob): turn a failover into an unclean one — the live broker other than
    /// the old master with the shortest log wins, in sync or not.
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
}

fn persist(groups: &BTreeMap<String, GroupState>) -> std::io::Result<()> {
    let body = serde_json::to_vec(groups).map_err(std::io::Error::other)?;
    let mut f = File::create(STATE_TMP)?;
    f.write_all(&body)?;
    f.sync_all()?;
    sfs::rename(STATE_TMP, STATE)?;
    sfs::sync_dir("/")
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

/// The broker addresses the simulation uses: its host name, for both ports.
pub fn addrs(host: &str) -> BrokerAddrs {
    BrokerAddrs {
        grpc: host.into(),
        repl: host.into(),
    }
}

/// Runs the controller host.
pub async fn run(sh: World) -> turmoil::Result {
    let sm = load();
    let view = sm.groups.get(GROUP).cloned();
    sh.log(
        "controller",
        format!(
            "start: {}",
            view.as_ref().map_or("no group yet".into(), |g| format!(
                "master={:?} epoch={} insync={:?}",
                g.master, g.master_epoch, g.insync
            ))
        ),
    );
    if view.is_some() {
        *sh.view.borrow_mut() = view;
    }
    let ctl = Rc::new(RefCell::new(Ctl {
        sh: sh.clone(),
        sm,
        seen: BTreeMap::new(),
        leader_since: Instant::from_std(instant()),
        epoch_seen: None,
    }));
    let ticker = ctl.clone();
    tokio::task::spawn_local(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            ticker.borrow_mut().tick();
        }
    });
    net::serve(move |req| {
        let ctl = ctl.clone();
        async move {
            let mut c = ctl.borrow_mut();
            match req {
                Req::Heartbeat(hb) => c.heartbeat(&hb),
                Req::AlterInSync(a) => c.alter(a),
                Req::GetView => match c.group() {
                    Some(g) => Resp::View(g.clone()),
                    None => Resp::Refused("no group yet".into()),
                },
                _ => Resp::Refused("not a controller request".into()),
            }
        }
    })
    .await?;
    Ok(())
}
