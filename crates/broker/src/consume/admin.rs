//! Consumer-group views for the admin API: progress and lag per queue.

use std::collections::BTreeMap;

use sofamq_proto::admin::{ConsumerClient, ConsumerGroupState, GroupQueueState};

use crate::broker::Broker;

impl Broker {
    /// Every consumer group (or just `only`), with per-queue progress and lag.
    pub fn group_states(&self, only: Option<&str>) -> Vec<ConsumerGroupState> {
        let mut by_group: BTreeMap<String, ConsumerGroupState> = BTreeMap::new();
        for (group, topic, gt) in self.consumers().snapshot() {
            if group.starts_with(crate::topics::SYSTEM_PREFIX) || only.is_some_and(|g| g != group) {
                continue;
            }
            let queue_count = self
                .topics()
                .get(&topic)
                .map(|t| t.queue_count)
                .unwrap_or(0);
            let st = by_group
                .entry(group.clone())
                .or_insert_with(|| ConsumerGroupState {
                    group: group.clone(),
                    ..Default::default()
                });
            st.topics.push(topic.clone());
            let ids: std::collections::BTreeSet<u32> =
                (0..queue_count).chain(gt.queues.keys().copied()).collect();
            for q in ids {
                let max = self.store().queue_offsets(&topic, q).1;
                let (committed, scan, inflight) = gt
                    .queues
                    .get(&q)
                    .map(|s| (s.committed(), s.scan, s.inflight.len() as u32))
                    .unwrap_or((0, 0, 0));
                let lag = max.saturating_sub(committed);
                st.lag += lag;
                st.queues.push(GroupQueueState {
                    topic: topic.clone(),
                    queue_id: q,
                    committed_offset: committed,
                    scan_offset: scan,
                    max_offset: max,
                    lag,
                    inflight,
                });
            }
        }
        let online = self.consumers().online();
        by_group
            .into_values()
            .map(|mut g| {
                g.consumers = online
                    .clients(&g.group)
                    .into_iter()
                    .map(|(client_id, last_seen_ms_ago)| ConsumerClient {
                        client_id,
                        last_seen_ms_ago,
                    })
                    .collect();
                g
            })
            .collect()
    }
}
