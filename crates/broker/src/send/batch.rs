//! What one send request carries from stage to stage.

use sofamq_proto::v2::SendResultEntry;
use sofamq_store::NewRecord;

use crate::repl::dedup::{Key, Pending, Receipt};

/// A message stored on a reserved queue instead of its topic.
pub(super) enum Special {
    /// A DELAY message due later.
    Timer { topic: String, due_ms: u64 },
    /// A transactional half message.
    Half,
}

/// A message whose id this broker has seen: answered with the original receipt.
pub(super) enum Dup {
    /// In the window already.
    Stored(Receipt),
    /// Another request is storing it now.
    InFlight(Pending),
    /// An earlier message of the same request (this slot) has the same id.
    SameRequest(usize),
}

/// One request's messages on their way through the stages, by slot (the message's index
/// in the request).
pub(super) struct Batch {
    /// One answer per message, in request order; a status is set once it is known.
    pub entries: Vec<SendResultEntry>,
    /// Messages that passed validation, each the first of its id in this request: slot,
    /// record, window key.
    pub accepted: Vec<(usize, NewRecord, Key)>,
    /// Timer and half messages, by slot (empty when the request has none): they get a
    /// recall handle / transaction id.
    pub special: Vec<Option<Special>>,
    /// Messages answered with another copy's receipt.
    pub dups: Vec<(usize, Dup)>,
    /// Repeats within the request: (slot, the first slot with its id), answered as the
    /// first is.
    pub same_request: Vec<(usize, usize)>,
    /// Slots stored on this master's disk (or by an earlier copy): acked once the in-sync
    /// slaves cover `need`.
    pub stored: Vec<usize>,
    /// The log offset replication must reach before `stored` is acked.
    pub need: u64,
}

impl Batch {
    /// An empty batch for `n` messages.
    pub fn new(n: usize) -> Self {
        Self {
            entries: Vec::with_capacity(n),
            accepted: Vec::with_capacity(n),
            special: Vec::new(),
            dups: Vec::new(),
            same_request: Vec::new(),
            stored: Vec::with_capacity(n),
            need: 0,
        }
    }

    /// Notes `slot` as stored up to log offset `end`, at `queue_offset`.
    pub fn stored(&mut self, slot: usize, queue_offset: u64, end: u64) {
        self.entries[slot].offset = queue_offset as i64;
        self.need = self.need.max(end);
        self.stored.push(slot);
    }
}
