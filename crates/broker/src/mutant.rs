//! Deliberately broken variants of the broker, switched on per simulation seed to prove that
//! the simulator (`crates/sim`) catches each class of defect. Compiled in only with the
//! `sim-mutants` feature, which only the simulator enables; without it [`active`] is a
//! constant `false` and every branch on it folds away.
//!
//! A variant is on for the current thread only: turmoil runs all the hosts of one seed on one
//! thread, so seeds running in parallel on other threads are not affected.

/// The broker's known broken variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mutant {
    /// A master that rejoins as a slave keeps the tail its new master does not have,
    /// instead of cutting its log back to where the two agree.
    SkipRejoinTruncation,
    /// Consumers are served records the in-sync slaves do not hold yet, above the
    /// replicated offset.
    DeliverAboveReplicated,
    /// A master that steps down does not stop its log taking the sends it admitted as
    /// master (neither `Store::follow` nor the admitted epoch on the append): one that
    /// reaches the store after the step-down lands in the log it now fills from the new
    /// master, or in a later epoch of its own.
    AppendAfterStepDown,
    /// A promoted master's dedup window ages the ids it rebuilds from the log by their
    /// store timestamps against its own wall clock (the same defect as the chaos suite's
    /// `wall-clock-dedup` build): a clock stepped forward forgets ids a retry still needs.
    WallClockDedup,
}

#[cfg(feature = "sim-mutants")]
thread_local! {
    static ON: std::cell::RefCell<Vec<Mutant>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Whether variant `m` is on for this thread.
#[cfg(feature = "sim-mutants")]
pub fn active(m: Mutant) -> bool {
    ON.with(|on| on.borrow().contains(&m))
}

/// Whether variant `m` is on for this thread: never, without the `sim-mutants` feature.
#[cfg(not(feature = "sim-mutants"))]
#[inline(always)]
pub fn active(_m: Mutant) -> bool {
    false
}

/// Turns exactly the variants `on` on for this thread (empty: the correct broker).
#[cfg(feature = "sim-mutants")]
pub fn set(on: &[Mutant]) {
    ON.with(|cell| *cell.borrow_mut() = on.to_vec());
}
