//! Idempotent sends: a bounded window of recent message ids → their original receipt, plus
//! the sends in flight so a concurrent duplicate waits for the first copy instead of storing a
//! second. Rebuilt from the tail of the log on start and on promotion, so it follows the log
//! (the only state path) across failover.
//!
//! Ages are monotonic: an id is kept `ttl` after it was remembered by this process (the
//! wall clock may jump; a window that forgot ids early would store a retried send twice).
//! A rebuild remembers the ids of the scanned tail as of the rebuild, whatever their store
//! timestamps say, bounded by the count cap and the scanned bytes: answering an old id with
//! its stored receipt is never wrong, forgetting a recent one would be.
//!
//! Cost per message matters here (every send passes through it). A key is built without an
//! allocation (`topic NUL message id` kept inline, [`INLINE`] bytes, which every id the SDKs
//! make fits) and hashed once with foldhash keyed by this process's random 64-bit seeds (drawn
//! from the OS-seeded generator). Message ids come from the network, so an unkeyed hash would
//! let a client aim collisions at the window; foldhash is not a cryptographic PRF as SipHash
//! is (it is "minimally DoS-resistant": collisions cannot be precomputed without the seed,
//! which nothing the broker answers reveals), and it costs a few multiplies per 16 bytes
//! where SipHash cost a few hundred instructions per key. What a flood could still do is
//! bounded: ids with equal 64-bit hashes share one slot (the window keeps one of them), the
//! window holds at most `cap` ids and the in-flight map at most the requests the send
//! budget admits, so a successful collision attack costs probe time in a bounded table, never
//! a wrong receipt. Both maps are keyed by that 64-bit hash with an identity hasher. Each
//! entry keeps the full text and every hit compares it, so a hash collision can never hand
//! out another message's receipt: a colliding id is simply not remembered (it is stored like a
//! new message), which only weakens deduplication for that id, never correctness. A request's
//! ids are looked up under one lock ([`Dedup::lookup_all`]) and completed under one
//! ([`Dedup::complete_all`]). A waiter on an in-flight send costs a oneshot channel only when
//! there is a duplicate.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::collections::hash_map::Entry as MapEntry;
use std::hash::{BuildHasherDefault, Hasher};
use std::time::Duration;

use crate::clock::Instant;

use foldhash::SharedSeed;
use foldhash::fast::FoldHasher;
use parking_lot::Mutex;
use sofamq_store::{Record, Store};
use tokio::sync::oneshot;

use crate::topics::now_ms;
use crate::validate::keys;

/// What a duplicate gets back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    /// Queue id of the stored copy.
    pub queue_id: u32,
    /// Queue offset of the stored copy.
    pub queue_offset: u64,
    /// Log offset just past the stored copy (what replication must cover).
    pub end: u64,
}

/// Outcome of a send in flight: the receipt, or `None` when it failed.
pub type Pending = oneshot::Receiver<Option<Receipt>>;

/// How a message id stands.
pub enum Lookup {
    /// Stored already.
    Stored(Receipt),
    /// Another send of it is in flight; wait on this.
    InFlight(Pending),
    /// New: this caller now owns it and must call `complete` or `abort`.
    Claimed,
}

/// Bytes of key text kept inline: `topic NUL id` of every id the SDKs make (34 hex digits
/// for RocketMQ's, 32 for ours) under a topic name of up to 35 bytes.
const INLINE: usize = 70;

/// The text of a window key, `topic NUL message id`: inline when it fits (no allocation),
/// on the heap otherwise (a long topic name or a long custom id).
#[derive(Clone)]
enum Text {
    Inline { len: u8, buf: [u8; INLINE] },
    Heap(Box<[u8]>),
}

impl Text {
    fn new(topic: &[u8], id: &[u8]) -> Self {
        let n = topic.len() + 1 + id.len();
        if n <= INLINE {
            let mut buf = [0u8; INLINE];
            buf[..topic.len()].copy_from_slice(topic);
            buf[topic.len() + 1..n].copy_from_slice(id);
            Text::Inline { len: n as u8, buf }
        } else {
            let mut v = Vec::with_capacity(n);
            v.extend_from_slice(topic);
            v.push(0);
            v.extend_from_slice(id);
            Text::Heap(v.into_boxed_slice())
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            Text::Inline { len, buf } => &buf[..usize::from(*len)],
            Text::Heap(b) => b,
        }
    }
}

impl PartialEq for Text {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Text {}

impl std::fmt::Debug for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_bytes()))
    }
}

/// The window key of a message: `topic NUL message id` and its keyed hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    hash: u64,
    text: Text,
}

impl Key {
    /// The keyed 64-bit hash (equal keys of one [`Dedup`] have equal hashes).
    pub fn hash(&self) -> u64 {
        self.hash
    }
}

/// Hasher for maps keyed by an already uniformly distributed 64-bit hash.
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used; fold anything else in so the hasher stays total.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A map keyed by a [`Key::hash`].
pub type HashKeyed<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

struct Entry {
    hash: u64,
    receipt: Receipt,
    /// When this process remembered it.
    at: Instant,
}

struct Stored {
    text: Text,
    receipt: Receipt,
}

struct InFlight {
    text: Text,
    waiters: Vec<oneshot::Sender<Option<Receipt>>>,
}

#[derive(Default)]
struct State {
    map: HashKeyed<Stored>,
    order: VecDeque<Entry>,
    pending: HashKeyed<InFlight>,
}

/// The window.
pub struct Dedup {
    cap: usize,
    ttl: Duration,
    /// The process's random hash keys (from the OS-seeded generator, not ASLR or the clock).
    seed: SharedSeed,
    per_hasher: u64,
    st: Mutex<State>,
}

impl Dedup {
    /// An empty window of at most `cap` ids, each kept at most `ttl`.
    pub fn new(cap: usize, ttl: Duration) -> Self {
        Self {
            cap: cap.max(1),
            ttl,
            seed: SharedSeed::from_u64(crate::clock::random()),
            per_hasher: crate::clock::random(),
            st: Mutex::new(State::default()),
        }
    }

    /// The window key of a message.
    pub fn key(&self, topic: &str, message_id: &str) -> Key {
        let text = Text::new(topic.as_bytes(), message_id.as_bytes());
        Key {
            hash: self.hash(text.as_bytes()),
            text,
        }
    }

    fn hash(&self, bytes: &[u8]) -> u64 {
        let mut h = FoldHasher::with_seed(self.per_hasher, &self.seed);
        h.write(bytes);
        h.finish()
    }

    /// Remembers `receipt` for `key`, then evicts by count and age.
    fn insert(&self, st: &mut State, key: Key, receipt: Receipt, at: Instant) {
        // None while this process is younger than the ttl: nothing is old enough.
        let oldest_ok = at.checked_sub(self.ttl);
        let remembered = match st.map.entry(key.hash) {
            MapEntry::Vacant(v) => {
                v.insert(Stored {
                    text: key.text,
                    receipt,
                });
                true
            }
            MapEntry::Occupied(mut o) => {
                let s = o.get_mut();
                // A different id with the same hash (a collision) is not remembered.
                if s.text == key.text {
                    s.receipt = receipt;
                    true
                } else {
                    false
                }
            }
        };
        if remembered {
            st.order.push_back(Entry {
                hash: key.hash,
                receipt,
                at,
            });
        }
        while st.order.len() > self.cap
            || st
                .order
                .front()
                .is_some_and(|e| oldest_ok.is_some_and(|o| e.at < o))
        {
            if let Some(e) = st.order.pop_front()
                && let MapEntry::Occupied(o) = st.map.entry(e.hash)
                && o.get().receipt == e.receipt
            {
                o.remove();
            }
        }
    }

    /// Looks a key up, claiming it when new.
    pub fn lookup(&self, key: &Key) -> Lookup {
        let mut st = self.st.lock();
        Self::lookup_in(&mut st, key)
    }

    /// Looks every key up under one lock, claiming the new ones: one answer per key, in
    /// order, each as [`Dedup::lookup`] would give it had the keys been looked up one by
    /// one.
    pub fn lookup_all<'a>(&self, keys: impl IntoIterator<Item = &'a Key>) -> Vec<Lookup> {
        let keys = keys.into_iter();
        let mut out = Vec::with_capacity(keys.size_hint().0);
        let mut st = self.st.lock();
        for key in keys {
            out.push(Self::lookup_in(&mut st, key));
        }
        out
    }

    /// Whether any of `keys` is stored or in flight here, without claiming any. A slot
    /// held by another id of the same hash counts as held: the answer errs towards "may
    /// be here", never towards "not here".
    pub fn holds_any<'a>(&self, keys: impl IntoIterator<Item = &'a Key>) -> bool {
        let st = self.st.lock();
        keys.into_iter()
            .any(|k| st.map.contains_key(&k.hash) || st.pending.contains_key(&k.hash))
    }

    fn lookup_in(st: &mut State, key: &Key) -> Lookup {
        if let Some(s) = st.map.get(&key.hash)
            && s.text == key.text
        {
            return Lookup::Stored(s.receipt);
        }
        match st.pending.entry(key.hash) {
            MapEntry::Occupied(mut o) => {
                let p = o.get_mut();
                if p.text == key.text {
                    let (tx, rx) = oneshot::channel();
                    p.waiters.push(tx);
                    return Lookup::InFlight(rx);
                }
                // A collision with another id in flight: this one goes untracked
                // (`complete` and `abort` compare the text and leave the other alone).
            }
            MapEntry::Vacant(v) => {
                v.insert(InFlight {
                    text: key.text.clone(),
                    waiters: Vec::new(),
                });
            }
        }
        Lookup::Claimed
    }

    /// A claimed send was stored.
    pub fn complete(&self, key: Key, receipt: Receipt) {
        self.complete_all(std::iter::once((key, receipt)));
    }

    /// Claimed sends were stored: one lock and one clock read for all of them.
    pub fn complete_all(&self, done: impl IntoIterator<Item = (Key, Receipt)>) {
        let now = Instant::now();
        let mut answer = Vec::new();
        {
            let mut st = self.st.lock();
            for (key, receipt) in done {
                if let MapEntry::Occupied(o) = st.pending.entry(key.hash)
                    && o.get().text == key.text
                {
                    let waiters = o.remove().waiters;
                    if !waiters.is_empty() {
                        answer.push((waiters, receipt));
                    }
                }
                self.insert(&mut st, key, receipt, now);
            }
        }
        for (waiters, receipt) in answer {
            for tx in waiters {
                let _ = tx.send(Some(receipt));
            }
        }
    }

    /// A claimed send failed before it was stored.
    pub fn abort(&self, key: &Key) {
        self.abort_all(std::iter::once(key));
    }

    /// Claimed sends failed before they were stored: one lock for all of them.
    pub fn abort_all<'a>(&self, keys: impl IntoIterator<Item = &'a Key>) {
        let mut removed = Vec::new();
        {
            let mut st = self.st.lock();
            for key in keys {
                if let MapEntry::Occupied(o) = st.pending.entry(key.hash)
                    && o.get().text == key.text
                {
                    removed.push(o.remove());
                }
            }
        }
        for p in removed {
            for tx in p.waiters {
                let _ = tx.send(None);
            }
        }
    }

    /// Waits for an in-flight send; `None` when it failed (or did not finish in `timeout`).
    pub async fn wait(rx: Pending, timeout: Duration) -> Option<Receipt> {
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(v)) => v,
            _ => None,
        }
    }

    /// Forgets everything (the role changed) and rebuilds from the log tail: every record
    /// from the start of the segment holding `log_end - scan_bytes` (the newest `cap` of
    /// them), each kept `ttl` from now whatever its store timestamp.
    pub fn rebuild(&self, store: &Store, scan_bytes: u64) {
        let end = store.log_end_offset();
        let want = end.saturating_sub(scan_bytes);
        let from = store.segment_start_of(want).unwrap_or(0);
        let now = Instant::now();
        // The broken build of the clock class (scripts/chaos/mutants.sh, and the group
        // simulation's variant): ages from the records' store timestamps against this
        // node's wall clock.
        let wall_clock_aged = sofamq_store::mutant::active("wall-clock-dedup")
            || crate::mutant::active(crate::mutant::Mutant::WallClockDedup);
        let wall_oldest_ok = wall_clock_aged.then(|| {
            now_ms().saturating_sub(i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX))
        });
        let mut st = self.st.lock();
        st.map.clear();
        st.order.clear();
        let mut n = 0usize;
        for r in store.scan(from) {
            let r: Record = match r {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "dedup window rebuild stopped early");
                    break;
                }
            };
            if wall_oldest_ok.is_some_and(|o| r.store_ts_ms < o) {
                continue;
            }
            if let Some((_, id)) = r.properties.iter().find(|(k, _)| k == keys::MSG_ID) {
                let receipt = Receipt {
                    queue_id: r.queue_id,
                    queue_offset: r.queue_offset,
                    end: r.next_offset(),
                };
                let key = self.key(&r.topic, id);
                self.insert(&mut st, key, receipt, now);
                n += 1;
            }
        }
        tracing::info!(
            from,
            end,
            ids = n,
            kept = st.map.len(),
            "dedup window rebuilt from the log"
        );
    }

    /// Ids remembered.
    pub fn len(&self) -> usize {
        self.st.lock().map.len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(q: u64) -> Receipt {
        Receipt {
            queue_id: 0,
            queue_offset: q,
            end: q * 10,
        }
    }

    fn k(d: &Dedup, id: &str) -> Key {
        d.key("t", id)
    }

    /// A key of `text` forced onto `hash`, to exercise collisions.
    fn forced(text: &str, hash: u64) -> Key {
        let (topic, id) = text.split_once('\0').expect("topic NUL id");
        Key {
            hash,
            text: Text::new(topic.as_bytes(), id.as_bytes()),
        }
    }

    /// `holds_any` sees stored and in-flight ids, claims nothing, and takes a slot held by
    /// another id of the same hash as held.
    #[test]
    fn holds_any_looks_without_claiming() {
        let d = Dedup::new(10, Duration::from_secs(60));
        let (a, b, c) = (k(&d, "a"), k(&d, "b"), k(&d, "c"));
        assert!(!d.holds_any([&a, &b]));
        assert!(!d.holds_any([&a]), "looking claimed nothing");
        assert!(matches!(d.lookup(&a), Lookup::Claimed));
        assert!(d.holds_any([&a]), "in flight");
        d.complete(a.clone(), r(1));
        assert!(d.holds_any([&b, &a]), "stored");
        assert!(!d.holds_any([&b, &c]));
        assert!(
            d.holds_any([&forced("t\0other", a.hash)]),
            "same hash as a stored id"
        );
    }

    #[tokio::test]
    async fn claim_complete_duplicate_and_eviction() {
        let d = Dedup::new(2, Duration::from_secs(60));
        assert!(matches!(d.lookup(&k(&d, "a")), Lookup::Claimed));
        let Lookup::InFlight(rx) = d.lookup(&k(&d, "a")) else {
            panic!("second lookup must wait for the first")
        };
        let Lookup::InFlight(rx2) = d.lookup(&k(&d, "a")) else {
            panic!("every duplicate waits")
        };
        d.complete(k(&d, "a"), r(1));
        assert_eq!(Dedup::wait(rx, Duration::from_secs(1)).await, Some(r(1)));
        assert_eq!(Dedup::wait(rx2, Duration::from_secs(1)).await, Some(r(1)));
        assert!(matches!(d.lookup(&k(&d, "a")), Lookup::Stored(x) if x == r(1)));
        // abort lets waiters know and frees the id
        assert!(matches!(d.lookup(&k(&d, "b")), Lookup::Claimed));
        let Lookup::InFlight(rx) = d.lookup(&k(&d, "b")) else {
            panic!()
        };
        d.abort(&k(&d, "b"));
        assert_eq!(Dedup::wait(rx, Duration::from_secs(1)).await, None);
        assert!(matches!(d.lookup(&k(&d, "b")), Lookup::Claimed));
        d.complete(k(&d, "b"), r(2));
        assert!(matches!(d.lookup(&k(&d, "c")), Lookup::Claimed));
        d.complete(k(&d, "c"), r(3));
        // capacity 2: "a" evicted
        assert_eq!(d.len(), 2);
        assert!(matches!(d.lookup(&k(&d, "a")), Lookup::Claimed));
    }

    #[test]
    fn topic_is_part_of_the_key() {
        let d = Dedup::new(10, Duration::from_secs(60));
        assert_eq!(d.key("t", "m").hash(), d.key("t", "m").hash());
        assert_ne!(d.key("t", "m"), d.key("u", "m"));
        assert!(matches!(d.lookup(&d.key("t", "m")), Lookup::Claimed));
        d.complete(d.key("t", "m"), r(1));
        assert!(matches!(d.lookup(&d.key("u", "m")), Lookup::Claimed));
        assert!(matches!(d.lookup(&d.key("t", "m")), Lookup::Stored(_)));
    }

    #[test]
    fn complete_all_answers_in_one_go() {
        let d = Dedup::new(10, Duration::from_secs(60));
        let keys: Vec<Key> = (0..5).map(|i| k(&d, &format!("m{i}"))).collect();
        for key in &keys {
            assert!(matches!(d.lookup(key), Lookup::Claimed));
        }
        let Lookup::InFlight(mut rx) = d.lookup(&keys[3]) else {
            panic!()
        };
        d.complete_all(keys.iter().cloned().zip((0..5).map(r)));
        assert_eq!(rx.try_recv().unwrap(), Some(r(3)));
        assert_eq!(d.len(), 5);
        for (i, key) in keys.iter().enumerate() {
            assert!(matches!(d.lookup(key), Lookup::Stored(x) if x == r(i as u64)));
        }
    }

    #[tokio::test]
    async fn eviction_by_age() {
        let d = Dedup::new(100, Duration::from_millis(30));
        assert!(matches!(d.lookup(&k(&d, "old")), Lookup::Claimed));
        d.complete(k(&d, "old"), r(1));
        assert!(matches!(d.lookup(&k(&d, "old")), Lookup::Stored(_)));
        tokio::time::sleep(Duration::from_millis(60)).await;
        // Expired entries go on the next insert.
        assert!(matches!(d.lookup(&k(&d, "new")), Lookup::Claimed));
        d.complete(k(&d, "new"), r(2));
        assert_eq!(d.len(), 1);
        assert!(matches!(d.lookup(&k(&d, "old")), Lookup::Claimed));
    }

    #[tokio::test]
    async fn waiter_times_out_when_the_claimant_never_finishes() {
        let d = Dedup::new(10, Duration::from_secs(60));
        assert!(matches!(d.lookup(&k(&d, "x")), Lookup::Claimed));
        let Lookup::InFlight(rx) = d.lookup(&k(&d, "x")) else {
            panic!()
        };
        assert_eq!(Dedup::wait(rx, Duration::from_millis(20)).await, None);
    }

    #[test]
    fn a_hash_collision_never_yields_another_ids_receipt() {
        let d = Dedup::new(10, Duration::from_secs(60));
        let a = forced("t\0a", 7);
        let b = forced("t\0b", 7);
        assert!(matches!(d.lookup(&a), Lookup::Claimed));
        // b collides with a pending a: b is stored untracked, a is not disturbed
        assert!(matches!(d.lookup(&b), Lookup::Claimed));
        d.abort(&b);
        let Lookup::InFlight(mut rx) = d.lookup(&a) else {
            panic!("a is still in flight")
        };
        d.complete(b.clone(), r(2));
        assert!(
            rx.try_recv().is_err(),
            "b's completion must not answer a's waiter"
        );
        d.complete(a.clone(), r(1));
        assert_eq!(rx.try_recv().unwrap(), Some(r(1)));
        // The slot holds b: a is not remembered, and never gets b's receipt.
        assert!(matches!(d.lookup(&b), Lookup::Stored(x) if x == r(2)));
        assert!(matches!(d.lookup(&a), Lookup::Claimed));
        assert!(matches!(d.lookup(&b), Lookup::Stored(x) if x == r(2)));
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn long_keys_go_to_the_heap_and_compare_alike() {
        let d = Dedup::new(10, Duration::from_secs(60));
        // "t" NUL id: exactly INLINE bytes, then one more.
        let fits = "x".repeat(INLINE - 2);
        let long = "x".repeat(INLINE - 1);
        assert!(matches!(d.key("t", &fits).text, Text::Inline { .. }));
        assert!(matches!(d.key("t", &long).text, Text::Heap(_)));
        assert_eq!(d.key("t", &long), d.key("t", &long));
        assert_eq!(d.key("t", &long).hash(), d.key("t", &long).hash());
        assert_ne!(d.key("t", &fits), d.key("t", &long));
        // The topic/id boundary is part of the key: "ab" NUL "c" is not "a" NUL "bc".
        assert_ne!(d.key("ab", "c"), d.key("a", "bc"));
        let max = "y".repeat(128);
        for (i, id) in [&fits, &long, &max].into_iter().enumerate() {
            assert!(matches!(d.lookup(&d.key("t", id)), Lookup::Claimed));
            d.complete(d.key("t", id), r(i as u64));
        }
        for (i, id) in [&fits, &long, &max].into_iter().enumerate() {
            assert!(matches!(d.lookup(&d.key("t", id)), Lookup::Stored(x) if x == r(i as u64)));
        }
        assert!(matches!(d.lookup(&d.key("u", &max)), Lookup::Claimed));
    }

    #[tokio::test]
    async fn lookup_all_answers_as_one_by_one() {
        let d = Dedup::new(10, Duration::from_secs(60));
        d.complete(k(&d, "c"), r(3));
        let (a, b, c) = (k(&d, "a"), k(&d, "b"), k(&d, "c"));
        let got = d.lookup_all([&a, &b, &a, &c]);
        assert_eq!(got.len(), 4);
        assert!(matches!(got[0], Lookup::Claimed));
        assert!(matches!(got[1], Lookup::Claimed));
        assert!(matches!(got[3], Lookup::Stored(x) if x == r(3)));
        let mut got = got.into_iter();
        let Some(Lookup::InFlight(rx)) = got.nth(2) else {
            panic!("the second a waits for the first")
        };
        // abort_all frees both claims and answers the waiter.
        d.abort_all([&a, &b]);
        assert_eq!(Dedup::wait(rx, Duration::from_secs(1)).await, None);
        assert!(matches!(d.lookup(&a), Lookup::Claimed));
        assert!(matches!(d.lookup(&b), Lookup::Claimed));
        assert!(d.lookup_all(std::iter::empty()).is_empty());
    }

    #[test]
    fn each_window_has_its_own_hash_keys() {
        let (d, e) = (
            Dedup::new(10, Duration::from_secs(60)),
            Dedup::new(10, Duration::from_secs(60)),
        );
        // Equal hashes for all of them under two random keys: about 2^-512.
        assert!(
            (0..8).any(|i| d.key("t", &format!("m{i}")).hash()
                != e.key("t", &format!("m{i}")).hash())
        );
    }

    #[test]
    fn re_storing_an_id_keeps_the_window_bounded() {
        let d = Dedup::new(2, Duration::from_secs(60));
        let a = k(&d, "a");
        d.complete(a.clone(), r(1));
        d.complete(a.clone(), r(2));
        assert!(matches!(d.lookup(&a), Lookup::Stored(x) if x == r(2)));
        d.complete(k(&d, "b"), r(3));
        d.complete(k(&d, "c"), r(4));
        assert_eq!(d.len(), 2);
        assert!(matches!(d.lookup(&a), Lookup::Claimed));
    }

    #[test]
    fn rebuild_finds_stored_ids() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(sofamq_store::StoreConfig::new(dir.path())).unwrap();
        let rec = |id: &str| sofamq_store::NewRecord {
            topic: "t".into(),
            properties: vec![(keys::MSG_ID.into(), id.into())],
            body: "x".into(),
            ..Default::default()
        };
        let a = store.append_blocking(vec![rec("m1"), rec("m2")]).unwrap();
        let d = Dedup::new(100, Duration::from_secs(60));
        d.rebuild(&store, 1 << 30);
        let Lookup::Stored(got) = d.lookup(&d.key("t", "m2")) else {
            panic!("m2 not found")
        };
        assert_eq!(got.queue_offset, a[1].queue_offset);
        assert_eq!(got.end, a[1].log_offset + u64::from(a[1].size));
        assert!(matches!(d.lookup(&d.key("t", "m3")), Lookup::Claimed));
    }

    /// A node whose wall clock jumped forward past the window must still know the ids of the
    /// log's tail when it rebuilds (else a retried send is stored twice): store timestamps
    /// "older" than the ttl are kept, and ages count from the rebuild on the monotonic clock.
    #[test]
    fn rebuild_keeps_ids_whose_store_time_looks_old() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(sofamq_store::StoreConfig::new(dir.path())).unwrap();
        let rec = |id: &str| sofamq_store::NewRecord {
            topic: "t".into(),
            properties: vec![(keys::MSG_ID.into(), id.into())],
            body: "x".into(),
            ..Default::default()
        };
        store.append_blocking(vec![rec("m1")]).unwrap();
        let d = Dedup::new(100, Duration::from_millis(200));
        // The record's store time is now older than the window, as after a jump forward.
        std::thread::sleep(Duration::from_millis(300));
        d.rebuild(&store, 1 << 30);
        assert!(matches!(d.lookup(&d.key("t", "m1")), Lookup::Stored(_)));
        // The window still ages out, from the rebuild on.
        std::thread::sleep(Duration::from_millis(300));
        assert!(matches!(d.lookup(&d.key("t", "m2")), Lookup::Claimed));
        d.complete(d.key("t", "m2"), r(2));
        assert!(matches!(d.lookup(&d.key("t", "m1")), Lookup::Claimed));
    }
}
