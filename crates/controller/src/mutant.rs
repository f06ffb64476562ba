//! Deliberately broken builds, to prove that the chaos checks catch each class of fault
//! (`scripts/chaos/mutants.sh`). Compiled in only with the `mutants` feature, which no release
//! or test build enables; then `SOFAMQ_MUTANT=<name>` turns one defect on:
//!
//! * `elect-fenced`: a fenced (damaged or failed-disk) broker counts as eligible, and a fenced
//!   master is not replaced.

/// Whether the defect `name` is on in this process.
#[cfg(feature = "mutants")]
pub fn active(name: &str) -> bool {
    static ON: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ON.get_or_init(|| std::env::var("SOFAMQ_MUTANT").unwrap_or_default()) == name
}

/// Whether the defect `name` is on in this process: never, without the `mutants` feature.
#[cfg(not(feature = "mutants"))]
#[inline(always)]
pub fn active(_name: &str) -> bool {
    false
}
