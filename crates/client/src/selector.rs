//! Broker selection for a send attempt.
//!
//! * Normal messages: round-robin over the topic's writable masters, skipping
//!   brokers isolated after a recent failure (unless all are isolated), and
//!   preferring a broker other than the one of the previous attempt.
//! * FIFO messages (with a message group): always the broker chosen by a
//!   stable hash of the group over the name-sorted masters, so that a group's
//!   messages stay on one broker, in order (a failover keeps the broker name).

use std::hash::Hasher;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::routes::TopicRoute;
use crate::sender::BrokerHandle;

/// Picks the broker for the next attempt; `None` if the route is empty.
pub(crate) fn select(
    route: &TopicRoute,
    group_hash: Option<u64>,
    previous: Option<&BrokerHandle>,
    now: Instant,
) -> Option<Arc<BrokerHandle>> {
    let brokers = &route.brokers;
    let n = brokers.len();
    if n == 0 {
        return None;
    }
    if let Some(h) = group_hash {
        return Some(brokers[(h % n as u64) as usize].clone());
    }
    let start = route.cursor.fetch_add(1, Ordering::Relaxed);
    let is_previous =
        |b: &BrokerHandle| previous.is_some_and(|p| p.addr == b.addr && p.name == b.name);
    let ring = (0..n).map(|i| &brokers[start.wrapping_add(i) % n]);
    ring.clone()
        .find(|b| !b.is_isolated(now) && !is_previous(b))
        .or_else(|| ring.clone().find(|b| !is_previous(b)))
        .or_else(|| ring.clone().next())
        .cloned()
}

/// Stable 64-bit FNV-1a hash of a message group (the same in every process
/// and every build).
pub(crate) fn group_hash(group: &str) -> u64 {
    // `write` the bytes: `str::hash` would append a 0xff byte and move every group.
    let mut h = fnv::FnvHasher::default();
    h.write(group.as_bytes());
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn route(names: &[&str]) -> TopicRoute {
        TopicRoute::new(
            names
                .iter()
                .enumerate()
                .map(|(i, n)| BrokerHandle::detached(n, &format!("127.0.0.1:{}", i + 1)))
                .collect(),
        )
    }

    fn pick(r: &TopicRoute, prev: Option<&BrokerHandle>) -> String {
        select(r, None, prev, Instant::now()).unwrap().name.clone()
    }

    #[test]
    fn round_robin_over_masters() {
        let r = route(&["a", "b", "c"]);
        let picks: Vec<_> = (0..6).map(|_| pick(&r, None)).collect();
        assert_eq!(picks, ["a", "b", "c", "a", "b", "c"]);
    }

    #[test]
    fn isolated_brokers_are_skipped_unless_all_are() {
        let r = route(&["a", "b", "c"]);
        let now = Instant::now();
        r.brokers[1].isolate(now, Duration::from_secs(5));
        let picks: Vec<_> = (0..6).map(|_| pick(&r, None)).collect();
        assert!(!picks.contains(&"b".to_string()), "{picks:?}");
        for b in &r.brokers {
            b.isolate(now, Duration::from_secs(5));
        }
        let picks: Vec<_> = (0..3).map(|_| pick(&r, None)).collect();
        assert_eq!(picks.len(), 3, "still picks when all are isolated");
    }

    #[test]
    fn retry_prefers_another_broker() {
        let r = route(&["a", "b"]);
        for _ in 0..4 {
            let prev = r.brokers[0].clone();
            assert_eq!(pick(&r, Some(&prev)), "b");
        }
        // Even when the other one is isolated.
        r.brokers[1].isolate(Instant::now(), Duration::from_secs(5));
        assert_eq!(pick(&r, Some(&r.brokers[0].clone())), "b");
        // A single broker is retried.
        let single = route(&["a"]);
        assert_eq!(pick(&single, Some(&single.brokers[0].clone())), "a");
    }

    #[test]
    fn fifo_groups_stick_to_one_broker() {
        let r = route(&["a", "b", "c"]);
        let now = Instant::now();
        let mut seen = std::collections::HashSet::new();
        for g in 0..30 {
            let h = group_hash(&format!("group-{g}"));
            let first = select(&r, Some(h), None, now).unwrap();
            for _ in 0..5 {
                let again = select(&r, Some(h), Some(&first), now).unwrap();
                assert_eq!(again.name, first.name);
            }
            seen.insert(first.name.clone());
        }
        assert_eq!(seen.len(), 3, "groups spread over brokers");
    }

    #[test]
    fn group_hash_is_stable() {
        assert_eq!(group_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(group_hash("a"), 0xaf63_dc4c_8601_ec8c);
        // FIFO order across client versions: a group keeps its queue.
        assert_eq!(group_hash("g"), 0xaf63_da4c_8601_e926);
        assert_eq!(group_hash("order-42"), 0x7d1d_eb86_a056_62d4);
        assert_eq!(group_hash("group-1"), 0x0119_e777_07fa_d646);
        assert_eq!(group_hash("订单-7"), 0x00ae_8c3f_7617_a280);
    }
}
