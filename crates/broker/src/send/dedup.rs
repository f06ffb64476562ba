//! Stages 3 and 5, idempotent sends: ids repeated within one request, the window
//! ([`crate::repl::dedup`]) asked about the rest under one lock, and the receipts of
//! copies that another request stored or is storing.

use std::collections::hash_map::Entry;
use std::time::Duration;

use sofamq_proto::v2::Message;
use sofamq_store::NewRecord;

use super::batch::{Batch, Dup};
use crate::broker::Broker;
use crate::error::BrokerError;
use crate::repl::dedup::{Dedup, HashKeyed, Key, Lookup};

/// Ids already seen in this request. Only a request of several messages can repeat one.
pub(super) struct Repeats {
    /// Key hash → index in `accepted` of the first message with that key (the full key is
    /// compared on a hit).
    seen: HashKeyed<usize>,
    several: bool,
}

impl Repeats {
    pub fn new(n: usize) -> Self {
        let mut seen = HashKeyed::default();
        if n > 1 {
            seen.reserve(n);
        }
        Self {
            seen,
            several: n > 1,
        }
    }

    /// The slot of an earlier message of this request with `key`; `None` when there is
    /// none, and `key` is then noted as the next one `accepted` takes.
    pub fn earlier(&mut self, accepted: &[(usize, NewRecord, Key)], key: &Key) -> Option<usize> {
        if !self.several {
            return None;
        }
        match self.seen.entry(key.hash()) {
            // A hash collision with another id is not a repeat.
            Entry::Occupied(o) => accepted
                .get(*o.get())
                .and_then(|(first, _, first_key)| (first_key == key).then_some(*first)),
            Entry::Vacant(v) => {
                v.insert(accepted.len());
                None
            }
        }
    }
}

/// The records to append and the ids this request claimed for them, by slot.
pub(super) struct Claimed {
    pub records: Vec<NewRecord>,
    pub keys: Vec<(usize, Key)>,
}

/// Asks the window about every accepted id under one lock: a stored or in-flight id
/// becomes a [`Dup`], a new one is claimed and its record goes to the append.
pub(super) fn claim(dedup: &Dedup, batch: &mut Batch) -> Claimed {
    let accepted = std::mem::take(&mut batch.accepted);
    let looked = dedup.lookup_all(accepted.iter().map(|(_, _, key)| key));
    let mut claimed = Claimed {
        records: Vec::with_capacity(accepted.len()),
        keys: Vec::with_capacity(accepted.len()),
    };
    for ((slot, record, key), lookup) in accepted.into_iter().zip(looked) {
        match lookup {
            Lookup::Stored(r) => batch.dups.push((slot, Dup::Stored(r))),
            Lookup::InFlight(rx) => batch.dups.push((slot, Dup::InFlight(rx))),
            Lookup::Claimed => {
                claimed.records.push(record);
                claimed.keys.push((slot, key));
            }
        }
    }
    claimed
}

/// Whether none of `messages` is held by this broker: no id of theirs is stored or in
/// flight in the window, under the topic given or under the reserved topic a timer or half
/// message is stored on. A message without an id counts as held (nothing can be said).
pub(super) fn none_held(dedup: &Dedup, messages: &[Message]) -> bool {
    let mut keys = Vec::with_capacity(messages.len() * 3);
    for m in messages {
        let topic = m
            .topic
            .as_ref()
            .map(|t| t.name.as_str())
            .unwrap_or_default();
        let id = m
            .system_properties
            .as_ref()
            .map(|s| s.message_id.as_str())
            .unwrap_or_default();
        if id.is_empty() {
            return false;
        }
        for t in [topic, crate::timer::TIMER_TOPIC, crate::txn::HALF_TOPIC] {
            keys.push(dedup.key(t, id));
        }
    }
    !dedup.holds_any(&keys)
}

/// Answers every copy with its original's receipt: at once when stored, after waiting
/// (at most the persist and ack timeouts) when another request is storing it. Repeats
/// within the request are answered after replication, as their first is.
pub(super) async fn receipts_of_copies(broker: &Broker, batch: &mut Batch) {
    for (slot, dup) in std::mem::take(&mut batch.dups) {
        let receipt = match dup {
            Dup::SameRequest(first) => {
                batch.same_request.push((slot, first));
                continue;
            }
            Dup::Stored(r) => Some(r),
            Dup::InFlight(rx) => {
                let wait = Duration::from_millis(broker.config().limits.persist_timeout_ms)
                    + broker.repl().config().ack_timeout();
                Dedup::wait(rx, wait).await
            }
        };
        match receipt {
            Some(r) => {
                tracing::debug!(message_id = %batch.entries[slot].message_id, "duplicate send: original receipt");
                batch.stored(slot, r.queue_offset, r.end);
            }
            None => {
                batch.entries[slot].status = Some(
                    // The other copy may be stored: "may be stored", not HA_NOT_AVAILABLE.
                    BrokerError::SlavePersistence(
                        "a concurrent send of the same message id was not acked (it may be \
                         stored); retry"
                            .into(),
                    )
                    .status(),
                );
            }
        }
    }
}
