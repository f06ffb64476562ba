//! Which consumer clients of each group were heard from lately (a receive or a
//! heartbeat naming the group): in memory only, bounded, for operators ("consumers
//! online" in `ListGroups` and the console). Not consumer state: nothing depends on it.

use std::collections::HashMap;
use std::time::Duration;

use crate::clock::Instant;

use parking_lot::Mutex;

/// A client not heard from for this long is no longer listed.
pub const ONLINE_TTL: Duration = Duration::from_secs(60);
/// Most (group, client) pairs kept; past it, new clients are not recorded until old ones expire.
const MAX_ENTRIES: usize = 10_000;
/// Longest group name or client id recorded (longer ones are not recorded).
const MAX_LEN: usize = 255;

/// Last time each client of each group was heard from.
#[derive(Debug, Default)]
pub struct Online {
    map: Mutex<HashMap<String, HashMap<String, Instant>>>,
}

impl Online {
    /// Records that `client` of `group` was heard from now.
    pub fn seen(&self, group: &str, client: &str) {
        self.seen_at(group, client, Instant::now());
    }

    fn seen_at(&self, group: &str, client: &str, now: Instant) {
        if group.is_empty() || client.is_empty() || group.len() > MAX_LEN || client.len() > MAX_LEN
        {
            return;
        }
        let mut m = self.map.lock();
        if let Some(g) = m.get_mut(group)
            && let Some(t) = g.get_mut(client)
        {
            *t = now;
            return;
        }
        let mut total: usize = m.values().map(HashMap::len).sum();
        if total >= MAX_ENTRIES {
            for g in m.values_mut() {
                g.retain(|_, t| now.saturating_duration_since(*t) < ONLINE_TTL);
            }
            m.retain(|_, g| !g.is_empty());
            total = m.values().map(HashMap::len).sum();
            if total >= MAX_ENTRIES {
                return;
            }
        }
        m.entry(group.to_string())
            .or_default()
            .insert(client.to_string(), now);
    }

    /// The clients of `group` heard from within [`ONLINE_TTL`], with how long ago (ms).
    pub fn clients(&self, group: &str) -> Vec<(String, u64)> {
        let now = Instant::now();
        let m = self.map.lock();
        let mut v: Vec<(String, u64)> = m
            .get(group)
            .into_iter()
            .flatten()
            .filter_map(|(c, t)| {
                let age = now.saturating_duration_since(*t);
                (age < ONLINE_TTL).then(|| (c.clone(), age.as_millis() as u64))
            })
            .collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_recent_clients_and_forgets_old_ones() {
        let o = Online::default();
        let now = Instant::now();
        o.seen_at("g", "c1", now);
        o.seen("g", "c2");
        o.seen("", "c3");
        o.seen("g", &"x".repeat(300));
        let ids: Vec<String> = o.clients("g").into_iter().map(|(c, _)| c).collect();
        assert_eq!(ids, ["c1", "c2"]);
        assert!(o.clients("other").is_empty());
        if let Some(old) = now.checked_sub(ONLINE_TTL + Duration::from_secs(1)) {
            o.seen_at("g", "c1", old);
            let ids: Vec<String> = o.clients("g").into_iter().map(|(c, _)| c).collect();
            assert_eq!(ids, ["c2"]);
        }
    }

    #[test]
    fn bounded() {
        let o = Online::default();
        for i in 0..MAX_ENTRIES + 50 {
            o.seen("g", &format!("c{i}"));
        }
        assert_eq!(o.clients("g").len(), MAX_ENTRIES);
    }
}
