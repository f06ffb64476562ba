//! One consumer group's state on one topic, per queue: the scan cursor and
//! the bounded set of in-flight offsets above the consumed-up-to offset.
//!
//! Every offset below `scan` is either in `inflight` or finished (acked,
//! dead-lettered or filtered out), so the consumed-up-to offset is the
//! smallest in-flight offset, or `scan` when nothing is in flight. Memory per
//! queue is bounded by `max_inflight_per_queue`.
//!
//! The same [`GroupTopic::apply`] runs live and on replay, so the state
//! rebuilt from the log equals the state the broker had.

use std::collections::BTreeMap;

use super::records::Op;

/// A delivered, not yet finished message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inflight {
    /// Deliveries so far (1 = first).
    pub attempt: u32,
    /// Receipt generation: a receipt handle is valid only for the current one.
    pub generation: u64,
    /// When the message becomes visible again (epoch ms).
    pub visible_at_ms: i64,
    /// FIFO message-group hash (0 = none).
    pub key: u64,
}

/// One queue's state.
#[derive(Debug, Clone, Default)]
pub struct QueueState {
    /// Next queue offset never looked at.
    pub scan: u64,
    /// Delivered and not finished, by queue offset.
    pub inflight: BTreeMap<u64, Inflight>,
}

impl QueueState {
    /// Every message below this is finished.
    pub fn committed(&self) -> u64 {
        self.inflight.keys().next().copied().unwrap_or(self.scan)
    }
}

/// A group's state on one topic.
#[derive(Debug, Clone, Default)]
pub struct GroupTopic {
    /// Per queue id.
    pub queues: BTreeMap<u32, QueueState>,
    /// Next receipt generation (unique per group and topic, forever).
    pub next_generation: u64,
}

impl GroupTopic {
    /// A fresh receipt generation.
    pub fn take_generation(&mut self) -> u64 {
        self.next_generation = self.next_generation.max(1);
        let g = self.next_generation;
        self.next_generation += 1;
        g
    }

    /// Applies one change (live or on replay).
    pub fn apply(&mut self, op: &Op) {
        match *op {
            Op::Deliver {
                queue,
                offset,
                attempt,
                generation,
                visible_at_ms,
                key,
            } => {
                self.next_generation = self.next_generation.max(generation.saturating_add(1));
                let q = self.queues.entry(queue).or_default();
                q.inflight.insert(
                    offset,
                    Inflight {
                        attempt,
                        generation,
                        visible_at_ms,
                        key,
                    },
                );
                q.scan = q.scan.max(offset.saturating_add(1));
            }
            Op::Scan { queue, offset } => {
                let q = self.queues.entry(queue).or_default();
                q.scan = q.scan.max(offset);
            }
            Op::Done { queue, offset } => {
                if let Some(q) = self.queues.get_mut(&queue) {
                    q.inflight.remove(&offset);
                }
            }
            Op::Change {
                queue,
                offset,
                generation,
                visible_at_ms,
            } => {
                self.next_generation = self.next_generation.max(generation.saturating_add(1));
                if let Some(e) = self
                    .queues
                    .get_mut(&queue)
                    .and_then(|q| q.inflight.get_mut(&offset))
                {
                    e.generation = generation;
                    e.visible_at_ms = visible_at_ms;
                }
            }
            Op::Reset { queue, offset } => {
                let q = self.queues.entry(queue).or_default();
                q.inflight.clear();
                q.scan = offset;
            }
        }
    }

    /// The in-flight entry `offset` of `queue` if its generation is `generation`.
    pub fn current(&self, queue: u32, offset: u64, generation: u64) -> Option<Inflight> {
        self.queues
            .get(&queue)
            .and_then(|q| q.inflight.get(&offset))
            .filter(|e| e.generation == generation)
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_follows_the_lowest_inflight() {
        let mut g = GroupTopic::default();
        for off in 0..3 {
            let generation = g.take_generation();
            g.apply(&Op::Deliver {
                queue: 0,
                offset: off,
                attempt: 1,
                generation,
                visible_at_ms: 0,
                key: 0,
            });
        }
        assert_eq!(g.queues[&0].committed(), 0);
        g.apply(&Op::Done {
            queue: 0,
            offset: 1,
        });
        assert_eq!(g.queues[&0].committed(), 0);
        g.apply(&Op::Done {
            queue: 0,
            offset: 0,
        });
        assert_eq!(g.queues[&0].committed(), 2);
        g.apply(&Op::Scan {
            queue: 0,
            offset: 10,
        });
        g.apply(&Op::Done {
            queue: 0,
            offset: 2,
        });
        assert_eq!(g.queues[&0].committed(), 10);
        assert!(g.current(0, 2, 3).is_none());
        assert_eq!(g.next_generation, 4);
    }
}
