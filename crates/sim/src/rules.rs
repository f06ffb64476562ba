//! The broker's real, pure replication rules, so the simulation runs exactly the code the
//! broker runs:
//! - `decide`: what a broker does with the controller's committed view;
//! - `epoch::divergence`: the leader-epoch truncation rule.

pub use sofamq_broker::repl::Role;
pub use sofamq_broker::repl::{decide, epoch};
