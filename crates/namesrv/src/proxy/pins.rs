//! Which broker group each recent message id was sent to, so that a client's retry of a
//! send goes to the same group: only that group's idempotence window can answer it with the
//! stored copy, and a copy in another group would be a duplicate. Official clients retry a
//! send whose answer they did not get (a timeout, a proxy error) and the proxy would
//! otherwise pick the next group round-robin. Bounded in entries and age.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Message id → broker group, for `ttl`, at most `max` ids.
#[derive(Debug)]
pub struct SendPins {
    inner: parking_lot::Mutex<Pins>,
    max: usize,
    ttl: Duration,
}

#[derive(Debug, Default)]
struct Pins {
    groups: HashMap<String, (String, Instant)>,
    /// Insertion order, for eviction by age and count.
    order: VecDeque<(String, Instant)>,
}

impl SendPins {
    /// Remembers up to `max` ids for `ttl` each.
    pub fn new(max: usize, ttl: Duration) -> Self {
        Self {
            inner: parking_lot::Mutex::new(Pins::default()),
            max,
            ttl,
        }
    }

    /// The group the first of `ids` that is remembered went to.
    pub fn group<'a>(
        &self,
        ids: impl IntoIterator<Item = &'a str>,
        now: Instant,
    ) -> Option<String> {
        let p = self.inner.lock();
        ids.into_iter().find_map(|id| {
            p.groups
                .get(id)
                .filter(|(_, at)| now.saturating_duration_since(*at) <= self.ttl)
                .map(|(g, _)| g.clone())
        })
    }

    /// Remembers that `ids` went to `group`.
    pub fn remember<'a>(&self, ids: impl IntoIterator<Item = &'a str>, group: &str, now: Instant) {
        if self.max == 0 {
            return;
        }
        let mut p = self.inner.lock();
        for id in ids {
            p.groups.insert(id.to_string(), (group.to_string(), now));
            p.order.push_back((id.to_string(), now));
        }
        while let Some((id, at)) = p.order.front().cloned() {
            if p.order.len() <= self.max && now.saturating_duration_since(at) <= self.ttl {
                break;
            }
            p.order.pop_front();
            // A newer entry of the same id stays.
            if p.groups.get(&id).is_some_and(|(_, t)| *t == at) {
                p.groups.remove(&id);
            }
        }
    }

    /// Ids remembered now.
    pub fn len(&self) -> usize {
        self.inner.lock().groups.len()
    }

    /// Whether none is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_by_id_within_age_and_count() {
        let pins = SendPins::new(2, Duration::from_secs(10));
        let t0 = Instant::now();
        pins.remember(["a"], "g1", t0);
        pins.remember(["b", "c"], "g2", t0);
        // Three ids over a bound of two: the oldest goes.
        assert_eq!(pins.group(["a"], t0), None);
        assert_eq!(pins.group(["x", "c"], t0).as_deref(), Some("g2"));
        assert_eq!(pins.len(), 2);
        // Too old.
        assert_eq!(pins.group(["b"], t0 + Duration::from_secs(11)), None);
        // A later send of the same id moves it (and the old order entry does not drop it).
        let t1 = t0 + Duration::from_secs(1);
        pins.remember(["b"], "g3", t1);
        pins.remember(["d"], "g1", t1);
        assert_eq!(pins.group(["b"], t1).as_deref(), Some("g3"));
        assert!(SendPins::new(0, Duration::from_secs(1)).is_empty());
    }
}
