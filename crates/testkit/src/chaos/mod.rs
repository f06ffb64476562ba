//! Fault injection against a real cluster, with a history checker.
//!
//! * [`cluster`]: the processes (namesrv, master + slave, optional controllers) behind
//!   fault-injecting proxies, and the failover strategy.
//! * [`workload`]: producers with per-producer sequence numbers, live consumers, the final
//!   audit drain.
//! * [`history`]: what was observed. [`checker`]: lost / unexpected / aborted / duplicated /
//!   out-of-order / divergence, and the table.
//! * [`rng`]: the seeded random numbers that make a run replayable.
//! * [`scenarios`]: the fault schedules and the run driver.
//! * [`external`]: the workload and checker against a cluster that already runs elsewhere
//!   (`sofamq chaos --against`, used by `scripts/multihost.sh`).

pub mod checker;
pub mod cluster;
pub mod external;
pub mod history;
pub mod rng;
pub mod scenarios;
pub mod workload;

pub use checker::{Report, check, table};
pub use cluster::{ChaosCluster, ClusterOptions, Failover};
pub use scenarios::{CI_SET, Outcome, SCENARIOS, ScenarioOptions, run};
