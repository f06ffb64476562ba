//! Deterministic simulation (turmoil, with its file-system shim) of SofaMQ's real code on
//! simulated disks and a simulated network, each seed drawing its faults:
//!
//! * [`storesim`]: the real store (`sofamq_store::Store`) through crashes, torn writes, EIO
//!   and a full disk;
//! * [`replsim`]: the real master and slave replication over real stores, through crashes,
//!   partitions and a power cut;
//! * [`groupsim`]: the real broker group with failover: real brokers (send path, store,
//!   replication, dedup, controller-follow loop) and the controller's real election rule and
//!   state machine ([`standin`]), producers retrying with the same message ids, through
//!   broker and controller crashes, power loss, full and one-way partitions, held links,
//!   slow disks, stalls and clock drift;
//! * [`consumesim`]: consumers of real brokers through a failover and a power cut.
//!
//! [`disk`] puts the store's I/O seam on turmoil's per-host disk; [`host`] runs a real
//! broker on a turmoil host; [`links`] sets link faults and crashes hosts without a word on
//! the network; [`wall`] gives each host its wall clock, skewed where a seed says;
//! [`journal`] keeps a seed's trace and violations; [`replay`] reruns a seed in
//! another process to compare outcomes. Each simulation proves, with its own broken
//! variants, that its checks catch what they are there for.

pub mod consumesim;
pub mod disk;
pub mod groupsim;
pub mod host;
pub mod journal;
pub mod links;
pub mod replay;
pub mod replsim;
pub mod standin;
pub mod storesim;
pub mod wall;
