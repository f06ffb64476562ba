//! Following the controller: heartbeat the controller leader, hold the master lease, and
//! act on the committed view it returns — promote with the controller's epoch, demote and
//! follow the new master, or step down — and report in-sync set changes while master.
//!
//! Safety rests on three rules: a master acks only while it holds a lease that started
//! before the heartbeat that granted it (so it ends before the controller can elect anyone
//! else); a slave never follows a master below the highest epoch it has seen; and the set of
//! slaves a master waits for is the union of its own in-sync set and the controller's
//! committed one until the controller commits a change.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::clock::Instant;

use sofamq_controller::{AlterInSync, BrokerAddrs, ControllerClient, GroupState, Heartbeat};
use tokio_util::sync::CancellationToken;

use crate::broker::Broker;
use crate::repl::Role;
use crate::repl::decide::{Action, Local, decide};

/// Runs until `token` is cancelled, reaching the controllers over TCP.
pub async fn run(broker: Broker, addrs: BrokerAddrs, token: CancellationToken) {
    let cfg = broker.repl().config();
    let client = ControllerClient::new(cfg.controller.clone(), cfg.controller_timeout());
    run_with(broker, addrs, client, token).await;
}

/// [`run`] with the controller client given: one built with
/// [`ControllerClient::with_connector`] reaches the controllers over any transport (the
/// simulator's network).
pub async fn run_with(
    broker: Broker,
    addrs: BrokerAddrs,
    client: ControllerClient,
    token: CancellationToken,
) {
    let repl = broker.repl().clone();
    let cfg = repl.config().clone();
    let me = repl.identity();
    let group = broker.config().broker_name.clone();
    let incarnation: u64 = crate::clock::random();
    let prefer_master = cfg.start_role(me) == Role::Master;
    let beat = cfg.controller_heartbeat();
    let check = beat.min(Duration::from_millis(100));
    let mut view: Option<GroupState> = None;
    let mut last_beat: Option<Instant> = None;
    let mut last_refused: Option<String> = None;
    // The epoch this broker last acted as master in, and since when.
    let mut master_term: Option<(u64, Instant)> = None;
    tracing::info!(controller = ?cfg.controller, broker_id = me, "following the controller");
    loop {
        crate::pause::at(me, crate::pause::Point::Control).await;
        // In-sync changes go out as soon as they are seen, heartbeats on their period.
        // A fenced master proposes no in-sync change: it acks nothing more, and its slaves
        // (which stop acking once it stops streaming) must stay eligible to replace it.
        if let Some(v) = view.as_ref()
            && repl.role() == Role::Master
            && v.master == Some(me)
            && v.master_epoch == broker.store().current_epoch()
            && broker.store().fenced().is_none()
        {
            let mut want: BTreeSet<u64> = repl.tracker().insync_ids();
            want.insert(me);
            // A new master gives the committed in-sync slaves up to `max_lag` to connect
            // (they learn of it a moment after it does), as it gives a connected slave
            // that falls behind: no shrink before that, so the sends of its first
            // moments wait for them rather than fail.
            if master_term.is_none_or(|(e, _)| e != v.master_epoch) {
                master_term = Some((v.master_epoch, Instant::now()));
            }
            if master_term.is_some_and(|(_, t)| t.elapsed() < cfg.max_lag()) {
                want.extend(v.insync.iter().copied());
            }
            if want != v.insync {
                let req = AlterInSync {
                    group: group.clone(),
                    master: me,
                    master_epoch: v.master_epoch,
                    insync: want.clone(),
                };
                match client.alter_insync(&req).await {
                    Ok(g) => {
                        tracing::info!(insync = ?g.insync, epoch = g.insync_epoch, "in-sync set committed");
                        apply(&broker, &g, None).await;
                        view = Some(g);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, want = ?want, "in-sync change not committed")
                    }
                }
            }
        }
        // While the master we follow refuses connections, beat on every check: the
        // controller may elect as soon as that master's lease has run out.
        let refused = repl.master_refused();
        let period = if refused.is_some() { check } else { beat };
        if last_beat.is_none_or(|t| t.elapsed() >= period) || refused != last_refused {
            let sent = Instant::now();
            last_beat = Some(sent);
            last_refused.clone_from(&refused);
            let store = broker.store();
            let hb = Heartbeat {
                group: group.clone(),
                broker_id: me,
                incarnation,
                addrs: addrs.clone(),
                store_epoch: store.current_epoch(),
                log_end: store.durable_offset(),
                prefer_master,
                acting_master_epoch: (repl.role() == Role::Master).then(|| store.current_epoch()),
                master_refused: refused,
                // A replica fetching a damaged range again is not whole: never elected.
                fenced: store.fenced().or_else(|| repl.repairing()),
            };
            match client.heartbeat(&hb).await {
                Ok(reply) => {
                    let lease = sent + Duration::from_millis(reply.lease_ms);
                    apply(&broker, &reply.view, Some(lease)).await;
                    view = Some(reply.view);
                }
                Err(e) => tracing::debug!(error = %e, "controller heartbeat failed"),
            }
        }
        tokio::select! {
            biased;
            () = token.cancelled() => break,
            () = tokio::time::sleep(check) => {}
        }
    }
}

/// Acts on a committed view; `lease` is the lease end a heartbeat reply grants.
async fn apply(broker: &Broker, view: &GroupState, lease: Option<Instant>) {
    let repl = broker.repl();
    repl.seen_epoch
        .fetch_max(view.master_epoch, Ordering::AcqRel);
    let following = repl.master_addr();
    let local = Local {
        me: repl.identity(),
        role: repl.role(),
        epoch: broker.store().current_epoch(),
        following: following.as_deref(),
    };
    match decide(local, view) {
        Action::Hold { required } => {
            repl.tracker().set_required(required);
            if let Some(t) = lease {
                repl.renew_lease(t);
            }
        }
        Action::Promote { epoch, required } => {
            if repl.role() == Role::Master {
                repl.step_down().await;
            }
            match broker.promote(Some(epoch)).await {
                Ok(e) => {
                    // Wait for the committed in-sync slaves from the first write on.
                    repl.tracker().set_required(required);
                    if let Some(t) = lease {
                        repl.renew_lease(t);
                    }
                    tracing::warn!(epoch = e, "elected master by the controller");
                }
                Err(e) => tracing::error!(error = %e, "promotion ordered by the controller failed"),
            }
        }
        Action::Follow(addr) => {
            repl.drop_lease();
            tracing::warn!(master = ?view.master, epoch = view.master_epoch, %addr, "following the controller's master");
            if let Err(e) = repl.demote(addr).await {
                tracing::error!(error = %e, "demotion ordered by the controller failed");
            }
        }
        Action::StepDown => repl.step_down().await,
        Action::Idle => repl.drop_lease(),
    }
}
