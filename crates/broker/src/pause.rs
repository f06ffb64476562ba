//! Points where the simulator (`crates/sim`) may hold a task of the broker, as an OS does
//! to a thread it deschedules or to a process it stops (SIGSTOP): the task's next step runs
//! later, after other tasks of the same broker (a step-down, a truncation) have run. Two
//! are on the send path; one holds the controller-follow loop, so a stopped process neither
//! heartbeats nor steps down until it resumes; three hold replication (a master's push to a
//! slave, the master's count of a slave's ack, a slave's append of what it received), so a
//! stopped process neither streams, counts acks nor follows. Without a hold, every step of
//! a send between two of its own awaits runs at one instant of simulated time, and
//! interleavings that a real paused process shows are never tried. Compiled in only with
//! the `sim-mutants` feature, which only the simulator enables; without it [`at`] returns
//! at once and folds away.
//!
//! A hook is set for the current thread only: turmoil runs all the hosts of one seed on one
//! thread, so seeds running in parallel on other threads are not affected.

use std::time::Duration;

/// Where a task may be held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Point {
    /// Admitted (master, lease, replicas in sync) and its records prepared and claimed in
    /// the dedup window, not yet handed to the store.
    BeforeAppend,
    /// Its records durable on this broker, not yet waiting for the in-sync slaves.
    BeforeReplicate,
    /// Not a send: the top of each round of the controller-follow loop (heartbeat, lease,
    /// step-down), which a stopped process does not run either.
    Control,
    /// Not a send: the top of each round of a master's push stream to one slave.
    MasterStream,
    /// Not a send: a slave's ack received by the master, before the master counts it.
    MasterAck,
    /// Not a send: frames received by a slave from its master, before it appends and acks
    /// them.
    SlaveAppend,
}

impl Point {
    /// Whether this point is on a send's path (the others hold a broker's own loops).
    pub fn is_send(self) -> bool {
        matches!(self, Point::BeforeAppend | Point::BeforeReplicate)
    }
}

/// Asked at each point with the broker's id: how long to hold the request there (`None`:
/// go on). Asked again after each hold, so a hold can be extended (a stall that began
/// while the request was held).
#[cfg(feature = "sim-mutants")]
pub type Hook = std::rc::Rc<dyn Fn(u64, Point) -> Option<Duration>>;

#[cfg(feature = "sim-mutants")]
thread_local! {
    static HOOK: std::cell::RefCell<Option<Hook>> = const { std::cell::RefCell::new(None) };
}

/// Installs `hook` for this thread (`None`: no holds).
#[cfg(feature = "sim-mutants")]
pub fn set(hook: Option<Hook>) {
    HOOK.with(|h| *h.borrow_mut() = hook);
}

#[cfg(feature = "sim-mutants")]
fn hold(broker_id: u64, p: Point) -> Option<Duration> {
    HOOK.with(|h| h.borrow().as_ref().and_then(|f| f(broker_id, p)))
}

/// Without the `sim-mutants` feature there is no hook: never a hold.
#[cfg(not(feature = "sim-mutants"))]
#[inline(always)]
fn hold(_broker_id: u64, _p: Point) -> Option<Duration> {
    None
}

/// Holds the request at `p` for as long as this thread's hook says (simulated time).
pub(crate) async fn at(broker_id: u64, p: Point) {
    while let Some(d) = hold(broker_id, p) {
        tokio::time::sleep(d).await;
    }
}

#[cfg(all(test, feature = "sim-mutants"))]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    #[tokio::test]
    async fn a_hook_holds_until_it_says_go_on() {
        let asked = Rc::new(Cell::new(0u32));
        let a = asked.clone();
        set(Some(Rc::new(move |id, p| {
            assert_eq!((id, p), (7, Point::BeforeAppend));
            a.set(a.get() + 1);
            (a.get() <= 2).then_some(Duration::from_millis(20))
        })));
        let t0 = std::time::Instant::now();
        at(7, Point::BeforeAppend).await;
        assert_eq!(asked.get(), 3);
        assert!(
            t0.elapsed() >= Duration::from_millis(40),
            "{:?}",
            t0.elapsed()
        );
        set(None);
        at(7, Point::BeforeAppend).await;
        assert_eq!(asked.get(), 3, "no hook, no question");
    }
}
