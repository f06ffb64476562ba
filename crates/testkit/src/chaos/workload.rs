//! The workload: producers with unique ids sending sequence-numbered messages at a bounded rate
//! (recording each send as ok, failed or unknown), consumers of one group receiving and acking
//! concurrently (recording every delivery), and a final drain by a fresh audit group that reads
//! every queue from the start until idle.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sofamq_client::{
    ConsumerConfig, FailureKind, Message, Producer, ProducerConfig, ReceivedMessage, SendError,
    SimpleConsumer, TransactionResolution,
};
use tokio::task::JoinHandle;

use super::history::{
    PROP_PRODUCER, PROP_SEQ, ReadRecord, SendKind, SendOutcome, SendRecord, TxnIntent,
};
use super::rng::Rng;

/// Workload shape.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    /// NameServer address (client access point).
    pub namesrv: String,
    /// Topic to send to.
    pub topic: String,
    /// Consumer group of the live consumers.
    pub group: String,
    /// Producers (each its own SDK Producer, one send in flight).
    pub producers: u32,
    /// Sends per second per producer.
    pub rate: u32,
    /// Live consumers (0: none during the run; the audit drain still reads everything).
    pub consumers: u32,
    /// Body padding bytes.
    pub body_bytes: usize,
    /// Per-attempt request timeout of the producers.
    pub request_timeout: Duration,
    /// Attempts per send.
    pub max_attempts: u32,
    /// Timer producers (each sends DELAY messages to `timer_topic`).
    pub timer_producers: u32,
    /// The DELAY topic of the timer producers.
    pub timer_topic: String,
    /// Timer sends per second per timer producer.
    pub timer_rate: u32,
    /// Each timer's delay is drawn from this range, ms.
    pub timer_delay_ms: (u64, u64),
    /// Transactional producers (half messages to `txn_topic`; intents by seq, see
    /// [`TxnIntent::of`]).
    pub txn_producers: u32,
    /// The TRANSACTION topic of the transactional producers.
    pub txn_topic: String,
    /// Half messages per second per transactional producer.
    pub txn_rate: u32,
    /// The "local transaction" between a half message's ack and its commit / rollback, ms.
    pub txn_local_ms: (u64, u64),
    /// After the producers stop, the drain keeps reading at least this long (the broker's
    /// check-backs and default outcome need time to end the open transactions).
    pub txn_settle: Duration,
}

impl WorkloadConfig {
    /// Defaults: 4 producers at 40 msg/s each, 2 consumers.
    pub fn new(namesrv: &str, topic: &str) -> Self {
        Self {
            namesrv: namesrv.to_string(),
            topic: topic.to_string(),
            group: "chaos-live".into(),
            producers: 4,
            rate: 40,
            consumers: 2,
            body_bytes: 100,
            request_timeout: Duration::from_secs(2),
            max_attempts: 3,
            timer_producers: 0,
            timer_topic: String::new(),
            timer_rate: 20,
            timer_delay_ms: (500, 8000),
            txn_producers: 0,
            txn_topic: String::new(),
            txn_rate: 10,
            txn_local_ms: (0, 1500),
            txn_settle: Duration::ZERO,
        }
    }

    /// Every topic the consumers subscribe to.
    fn topics(&self) -> Vec<String> {
        let mut t = vec![self.topic.clone()];
        if self.timer_producers > 0 {
            t.push(self.timer_topic.clone());
        }
        if self.txn_producers > 0 {
            t.push(self.txn_topic.clone());
        }
        t
    }
}

/// What one producer of the workload sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Normal,
    Timer,
    Txn,
}

#[derive(Default)]
struct Shared {
    sends: Mutex<Vec<SendRecord>>,
    reads: Mutex<Vec<ReadRecord>>,
    acked: AtomicU64,
    delivered: AtomicU64,
    /// Check-backs answered by the transactional producers' checkers.
    checks: AtomicU64,
    /// Transactional producers kept alive after they stop sending (their checkers answer
    /// the broker's check-backs until the drain ends).
    parked: Mutex<Vec<Producer>>,
}

/// A running workload.
pub struct Workload {
    cfg: WorkloadConfig,
    shared: Arc<Shared>,
    stop_producers: Arc<AtomicBool>,
    stop_consumers: Arc<AtomicBool>,
    producers: Vec<JoinHandle<()>>,
    consumers: Vec<JoinHandle<()>>,
}

/// What a consumer read of `m`, at `queue` (the queue id, or a number that also names the
/// broker group), at `now` (epoch ms).
pub(crate) fn read_record(m: &ReceivedMessage, queue: i32, audit: bool, now: i64) -> ReadRecord {
    ReadRecord {
        producer: m.properties.get(PROP_PRODUCER).and_then(|v| v.parse().ok()),
        seq: m.properties.get(PROP_SEQ).and_then(|v| v.parse().ok()),
        msg_id: m.message_id.clone(),
        queue,
        offset: m.queue_offset,
        audit,
        recv_ms: now,
        store_ms: m.store_timestamp_ms,
    }
}

/// Failed (definitely not stored) when the SDK says no attempt may have stored it: every
/// attempt was refused before the append (HA_NOT_AVAILABLE, validation...) or never sent.
/// Anything else (a timeout, a lost connection, a persistence timeout) may be stored.
/// The checker then counts a "failed" message that shows up as aborted, so this contract
/// between broker codes, SDK and checker is itself under test.
pub fn classify(e: &SendError) -> SendOutcome {
    if !e.maybe_stored || e.kind == FailureKind::Invalid {
        SendOutcome::Failed {
            code: e.code,
            message: e.message.clone(),
        }
    } else {
        SendOutcome::Unknown {
            message: format!("{}: {}", e.kind, e.message),
        }
    }
}

impl Workload {
    /// Starts producers and live consumers.
    pub async fn start(cfg: WorkloadConfig) -> anyhow::Result<Workload> {
        let shared = Arc::new(Shared::default());
        let stop_producers = Arc::new(AtomicBool::new(false));
        let stop_consumers = Arc::new(AtomicBool::new(false));
        let mut w = Workload {
            cfg: cfg.clone(),
            shared,
            stop_producers,
            stop_consumers,
            producers: Vec::new(),
            consumers: Vec::new(),
        };
        for c in 0..cfg.consumers {
            w.spawn_consumer(&cfg.group, c, false).await?;
        }
        let roles = std::iter::repeat_n(Role::Normal, cfg.producers as usize)
            .chain(std::iter::repeat_n(
                Role::Timer,
                cfg.timer_producers as usize,
            ))
            .chain(std::iter::repeat_n(Role::Txn, cfg.txn_producers as usize));
        for (p, role) in (1u32..).zip(roles) {
            w.spawn_producer(p, role).await?;
        }
        Ok(w)
    }

    async fn spawn_producer(&mut self, p: u32, role: Role) -> anyhow::Result<()> {
        let cfg = &self.cfg;
        let mut pc = ProducerConfig::new([cfg.namesrv.clone()])
            .with_client_id(format!("chaos-producer-{p}"))
            .with_request_timeout(cfg.request_timeout)
            .with_max_attempts(cfg.max_attempts)
            .with_retry_backoff(Duration::from_millis(100), Duration::from_secs(1), 2.0);
        if role == Role::Txn {
            let shared = self.shared.clone();
            pc = pc.with_transaction_checker(move |m: &ReceivedMessage| {
                shared.checks.fetch_add(1, Ordering::Relaxed);
                let seq = m.properties.get(PROP_SEQ).and_then(|v| v.parse().ok());
                match seq.map(TxnIntent::of) {
                    Some(TxnIntent::Commit | TxnIntent::CheckCommit) => {
                        TransactionResolution::Commit
                    }
                    Some(TxnIntent::Rollback) => TransactionResolution::Rollback,
                    Some(TxnIntent::Abandon) | None => TransactionResolution::Unknown,
                }
            });
        }
        let producer = Producer::start(pc).await?;
        let shared = self.shared.clone();
        let stop = self.stop_producers.clone();
        let (topic, rate) = match role {
            Role::Normal => (cfg.topic.clone(), cfg.rate),
            Role::Timer => (cfg.timer_topic.clone(), cfg.timer_rate),
            Role::Txn => (cfg.txn_topic.clone(), cfg.txn_rate),
        };
        let (delay, local) = (cfg.timer_delay_ms, cfg.txn_local_ms);
        let pad = "x".repeat(cfg.body_bytes);
        let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
        self.producers.push(tokio::spawn(async move {
            let mut rng = Rng::new(u64::from(p) * 7919);
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut seq = 0u64;
            let mut ends = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                seq += 1;
                let mut b = Message::builder(topic.as_str(), format!("p{p}-s{seq}-{pad}"))
                    .key(format!("p{p}-s{seq}"))
                    .property(PROP_PRODUCER, p.to_string())
                    .property(PROP_SEQ, seq.to_string());
                let mut kind = SendKind::Normal;
                if role == Role::Timer {
                    let due = std::time::SystemTime::now() + rng.ms(delay.0, delay.1);
                    // The wire carries milliseconds: judge against what the broker sees.
                    let due_ms = epoch_ms(due);
                    b = b.delivery_timestamp(
                        std::time::UNIX_EPOCH + Duration::from_millis(due_ms as u64),
                    );
                    kind = SendKind::Timer { due_ms };
                }
                let msg = b.build();
                let (msg_id, outcome, txn) = match role {
                    Role::Txn => {
                        let intent = TxnIntent::of(seq);
                        kind = SendKind::Txn {
                            intent,
                            ended: false,
                        };
                        match producer.send_half(msg).await {
                            Ok(t) => (
                                t.message_id().to_string(),
                                ok_outcome(&shared, t.receipt()),
                                Some((t, intent)),
                            ),
                            Err(e) => (e.message_id.clone(), classify(&e), None),
                        }
                    }
                    _ => match producer.send(msg).await {
                        Ok(r) => (r.message_id.clone(), ok_outcome(&shared, &r), None),
                        Err(e) => (e.message_id.clone(), classify(&e), None),
                    },
                };
                let idx = {
                    let mut sends = lock(&shared.sends);
                    sends.push(SendRecord {
                        producer: p,
                        seq,
                        msg_id,
                        outcome,
                        kind,
                    });
                    sends.len() - 1
                };
                // The producer's own end, after its "local transaction" (not for the
                // intents the check-back decides).
                if let Some((t, intent)) = txn
                    && matches!(intent, TxnIntent::Commit | TxnIntent::Rollback)
                {
                    let wait = rng.ms(local.0, local.1);
                    let shared = shared.clone();
                    ends.push(tokio::spawn(async move {
                        tokio::time::sleep(wait).await;
                        let r = if intent == TxnIntent::Commit {
                            t.commit().await
                        } else {
                            t.rollback().await
                        };
                        if r.is_ok()
                            && let Some(SendKind::Txn { ended, .. }) =
                                lock(&shared.sends).get_mut(idx).map(|s| &mut s.kind)
                        {
                            *ended = true;
                        }
                    }));
                }
            }
            for e in ends {
                let _ = tokio::time::timeout(Duration::from_secs(30), e).await;
            }
            if role == Role::Txn {
                lock(&shared.parked).push(producer);
            } else {
                producer.shutdown().await;
            }
        }));
        Ok(())
    }

    async fn spawn_consumer(&mut self, group: &str, n: u32, audit: bool) -> anyhow::Result<()> {
        let mut cc = ConsumerConfig::new([self.cfg.namesrv.clone()], group)
            .with_long_polling_timeout(Duration::from_millis(500))
            .with_request_timeout(Duration::from_secs(3));
        cc.client_id = format!("chaos-{group}-{n}");
        // The route lookup may fail while the cluster is faulty: retry for a while.
        let deadline = Instant::now() + Duration::from_secs(30);
        let consumer = loop {
            let subs = self
                .cfg
                .topics()
                .into_iter()
                .map(|t| (t, "*".to_string()))
                .collect();
            match SimpleConsumer::start(cc.clone(), subs).await {
                Ok(c) => break c,
                Err(e) if Instant::now() > deadline => return Err(e.into()),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        let shared = self.shared.clone();
        let stop = self.stop_consumers.clone();
        self.consumers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let msgs = match consumer.receive(32, Duration::from_secs(10)).await {
                    Ok(m) => m,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                if msgs.is_empty() {
                    continue;
                }
                {
                    let now = epoch_ms(std::time::SystemTime::now());
                    let mut reads = lock(&shared.reads);
                    for m in &msgs {
                        reads.push(read_record(m, m.queue_id, audit, now));
                    }
                }
                shared
                    .delivered
                    .fetch_add(msgs.len() as u64, Ordering::Relaxed);
                // An ack lost to a fault only means a redelivery later.
                let _ = consumer.ack_all(&msgs).await;
            }
        }));
        Ok(())
    }

    /// Sends acked so far.
    pub fn acked(&self) -> u64 {
        self.shared.acked.load(Ordering::Relaxed)
    }

    /// Deliveries so far.
    pub fn delivered(&self) -> u64 {
        self.shared.delivered.load(Ordering::Relaxed)
    }

    /// Waits (up to `max`) until `n` more sends have been acked; false on timeout.
    pub async fn wait_acked(&self, n: u64, max: Duration) -> bool {
        let target = self.acked() + n;
        let deadline = Instant::now() + max;
        while self.acked() < target {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Stops the producers and waits for their last sends to finish.
    pub async fn stop_producers(&mut self) {
        self.stop_producers.store(true, Ordering::Relaxed);
        for t in self.producers.drain(..) {
            let _ = t.await;
        }
    }

    async fn stop_consumers(&mut self) {
        self.stop_consumers.store(true, Ordering::Relaxed);
        for t in self.consumers.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        self.stop_consumers.store(false, Ordering::Relaxed);
    }

    /// Stops the live consumers, then reads every queue from the start with a fresh audit
    /// group until every acked message has been read by it and nothing new arrived for
    /// `idle`, or nothing new arrived for `give_up`, or `max` passed.
    pub async fn drain(
        &mut self,
        idle: Duration,
        give_up: Duration,
        max: Duration,
    ) -> anyhow::Result<()> {
        self.stop_consumers().await;
        // What must be read: acked sends, but a half message only once its commit was acked.
        let (acked, last_due): (HashSet<(u32, u64)>, i64) = {
            let sends = lock(&self.shared.sends);
            let acked = sends
                .iter()
                .filter(|s| matches!(s.outcome, SendOutcome::Ok { .. }))
                .filter(|s| match s.kind {
                    SendKind::Txn { intent, ended } => ended && intent == TxnIntent::Commit,
                    _ => true,
                })
                .map(|s| (s.producer, s.seq))
                .collect();
            let last_due = sends
                .iter()
                .filter_map(|s| match s.kind {
                    SendKind::Timer { due_ms } => Some(due_ms),
                    _ => None,
                })
                .max()
                .unwrap_or(0);
            (acked, last_due)
        };
        // Not done before the last timer is due and the open transactions had their time.
        let until_due = Duration::from_millis(
            (last_due - epoch_ms(std::time::SystemTime::now())).max(0) as u64,
        );
        let not_before = Instant::now() + until_due.max(self.cfg.txn_settle);
        let group = format!("chaos-audit-{}", std::process::id());
        for n in 0..2 {
            self.spawn_consumer(&group, n, true).await?;
        }
        let start = Instant::now();
        let mut last = self.delivered();
        let mut last_change = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let d = self.delivered();
            if d != last {
                last = d;
                last_change = Instant::now();
            }
            let quiet = last_change.elapsed();
            let all_read = {
                let reads = lock(&self.shared.reads);
                let seen: HashSet<(u32, u64)> = reads
                    .iter()
                    .filter(|r| r.audit)
                    .filter_map(|r| Some((r.producer?, r.seq?)))
                    .collect();
                acked.iter().all(|k| seen.contains(k))
            };
            let settled = Instant::now() >= not_before;
            if (settled && ((all_read && quiet >= idle) || quiet >= give_up))
                || start.elapsed() >= max + until_due.max(self.cfg.txn_settle)
            {
                break;
            }
        }
        self.stop_consumers().await;
        let parked = std::mem::take(&mut *lock(&self.shared.parked));
        for p in parked {
            p.shutdown().await;
        }
        Ok(())
    }

    /// Check-backs the transactional producers' checkers answered so far.
    pub fn checks(&self) -> u64 {
        self.shared.checks.load(Ordering::Relaxed)
    }

    /// The recorded sends and reads (call after [`Workload::drain`]).
    pub fn take(&self) -> (Vec<SendRecord>, Vec<ReadRecord>) {
        (
            std::mem::take(&mut *lock(&self.shared.sends)),
            std::mem::take(&mut *lock(&self.shared.reads)),
        )
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        self.stop_producers.store(true, Ordering::Relaxed);
        self.stop_consumers.store(true, Ordering::Relaxed);
        for t in self.producers.iter().chain(&self.consumers) {
            t.abort();
        }
    }
}

fn ok_outcome(shared: &Shared, r: &sofamq_client::SendReceipt) -> SendOutcome {
    shared.acked.fetch_add(1, Ordering::Relaxed);
    SendOutcome::Ok {
        queue_offset: r.queue_offset,
        broker: r.broker.clone(),
    }
}

fn epoch_ms(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
