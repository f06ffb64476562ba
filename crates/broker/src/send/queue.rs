//! Queue choice: a message group always maps to the same queue (FIFO order); other
//! messages go round robin; timer and half messages go to queue 0 of their reserved topic.

use std::hash::Hasher;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::topics::TopicConfig;

/// Round-robin cursor for queue selection of non-FIFO messages.
#[derive(Default)]
pub struct QueueCursor(AtomicU64);

impl QueueCursor {
    pub(crate) fn next(&self, queue_count: u32) -> u32 {
        (self.0.fetch_add(1, Ordering::Relaxed) % u64::from(queue_count.max(1))) as u32
    }
}

/// The queue of a message of `topic`: 0 for one stored on a reserved queue (`special`),
/// its group's queue for a FIFO message, else the next in round robin.
pub(super) fn choose(
    cursor: &QueueCursor,
    special: bool,
    group: &Option<String>,
    topic: &TopicConfig,
) -> u32 {
    match (special, group) {
        (true, _) => 0,
        (false, Some(g)) => group_queue(g, topic.queue_count),
        (false, None) => cursor.next(topic.queue_count),
    }
}

/// Stable FNV-1a 64 hash so one message group always maps to the same queue.
fn group_queue(group: &str, queue_count: u32) -> u32 {
    // `write` the bytes: `str::hash` would append a 0xff byte and move every group.
    let mut h = fnv::FnvHasher::default();
    h.write(group.as_bytes());
    (h.finish() % u64::from(queue_count.max(1))) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_hash_is_stable_and_in_range() {
        for n in 1..20 {
            let q = group_queue("order-42", n);
            assert!(q < n);
            assert_eq!(q, group_queue("order-42", n));
        }
        // A message group keeps its queue across broker versions (FIFO order).
        assert_eq!(group_queue("order-42", 8), 4);
        assert_eq!(
            group_queue("order-42", 7),
            (0x7d1d_eb86_a056_62d4_u64 % 7) as u32
        );
        assert_eq!(group_queue("group-1", 16), 6);
        assert_eq!(group_queue("订单-7", 8), 0);
    }
}
