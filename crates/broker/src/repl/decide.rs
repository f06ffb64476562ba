//! What a broker does with the controller's committed view: a pure function, shared by the
//! broker (`crate::control`) and the deterministic simulator, so both run the same rule.

use std::collections::BTreeSet;

use sofamq_controller::GroupState;

use super::config::Role;

/// The broker's own state when a view arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Local<'a> {
    /// Configured broker id.
    pub me: u64,
    /// Current role.
    pub role: Role,
    /// Highest epoch of the broker's durable epoch history.
    pub epoch: u64,
    /// The replication address this broker follows now (slaves).
    pub following: Option<&'a str>,
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Stay master of this epoch: extend the lease (when the view came with one) and wait for
    /// these slaves too (the committed in-sync set, this broker excluded).
    Hold {
        /// Slaves the committed in-sync set names.
        required: BTreeSet<u64>,
    },
    /// Become master: (step down first if master of an older epoch), begin `epoch` durably,
    /// then hold as above.
    Promote {
        /// The controller's epoch for this broker.
        epoch: u64,
        /// Slaves the committed in-sync set names.
        required: BTreeSet<u64>,
    },
    /// Drop the lease and follow the master at this replication address.
    Follow(String),
    /// Drop the lease; stop acting as master; follow nobody.
    StepDown,
    /// Drop the lease and otherwise change nothing (already following the right master,
    /// or the view is behind this broker's epoch).
    Idle,
}

/// Decides on a committed view.
pub fn decide(local: Local<'_>, view: &GroupState) -> Action {
    let required = || -> BTreeSet<u64> {
        view.insync
            .iter()
            .copied()
            .filter(|i| *i != local.me)
            .collect()
    };
    match view.master {
        Some(m) if m == local.me => {
            if local.role == Role::Master && local.epoch == view.master_epoch {
                Action::Hold {
                    required: required(),
                }
            } else if local.epoch < view.master_epoch {
                Action::Promote {
                    epoch: view.master_epoch,
                    required: required(),
                }
            } else {
                // Named in an epoch this log already passed, or began before a restart:
                // never reuse an epoch; wait for the controller to move on.
                Action::Idle
            }
        }
        Some(m) => match view.brokers.get(&m) {
            Some(a) if local.role == Role::Master || local.following != Some(a.repl.as_str()) => {
                Action::Follow(a.repl.clone())
            }
            Some(_) => Action::Idle,
            None if local.role == Role::Master => Action::StepDown,
            None => Action::Idle,
        },
        None if local.role == Role::Master => Action::StepDown,
        None => Action::Idle,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sofamq_controller::BrokerAddrs;

    fn view(master: Option<u64>, epoch: u64, insync: &[u64]) -> GroupState {
        let mut g = GroupState {
            group: "g".into(),
            master,
            master_epoch: epoch,
            insync: insync.iter().copied().collect(),
            insync_epoch: 1,
            brokers: Default::default(),
        };
        for id in 0..2 {
            g.brokers.insert(
                id,
                BrokerAddrs {
                    grpc: format!("g{id}"),
                    repl: format!("r{id}"),
                },
            );
        }
        g
    }

    fn local(role: Role, epoch: u64, following: Option<&str>) -> Local<'_> {
        Local {
            me: 0,
            role,
            epoch,
            following,
        }
    }

    #[test]
    fn master_of_this_epoch_holds_and_waits_for_the_committed_set() {
        let a = decide(local(Role::Master, 5, None), &view(Some(0), 5, &[0, 1]));
        assert_eq!(
            a,
            Action::Hold {
                required: [1].into()
            }
        );
    }

    #[test]
    fn elected_slave_promotes_with_the_controllers_epoch() {
        let a = decide(local(Role::Slave, 4, Some("r1")), &view(Some(0), 6, &[0]));
        assert_eq!(
            a,
            Action::Promote {
                epoch: 6,
                required: BTreeSet::new()
            }
        );
        // A master of an older epoch promotes into the new one (after stepping down).
        let a = decide(local(Role::Master, 4, None), &view(Some(0), 6, &[0, 1]));
        assert!(matches!(a, Action::Promote { epoch: 6, .. }));
    }

    #[test]
    fn an_epoch_is_never_reused() {
        // Restarted with epoch 6 already in the log; the view still says 6: wait.
        assert_eq!(
            decide(local(Role::Slave, 6, None), &view(Some(0), 6, &[0, 1])),
            Action::Idle
        );
        // The view is behind the log: wait.
        assert_eq!(
            decide(local(Role::Master, 7, None), &view(Some(0), 6, &[0, 1])),
            Action::Idle
        );
    }

    #[test]
    fn deposed_master_follows_the_new_one() {
        assert_eq!(
            decide(local(Role::Master, 5, None), &view(Some(1), 6, &[1])),
            Action::Follow("r1".into())
        );
        assert_eq!(
            decide(local(Role::Slave, 5, Some("r1")), &view(Some(1), 6, &[1])),
            Action::Idle
        );
        assert_eq!(
            decide(local(Role::Slave, 5, Some("old")), &view(Some(1), 6, &[1])),
            Action::Follow("r1".into())
        );
    }

    #[test]
    fn no_master_means_step_down() {
        assert_eq!(
            decide(local(Role::Master, 5, None), &view(None, 5, &[0])),
            Action::StepDown
        );
        assert_eq!(
            decide(local(Role::Slave, 5, None), &view(None, 5, &[0])),
            Action::Idle
        );
    }
}
