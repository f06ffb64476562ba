//! The workload: producers with unique ids sending sequence-numbered messages at a bounded rate
//! (recording each send as ok, failed or unknown), consumers of one group receiving and acking
//! concurrently (recording every delivery), and a final drain by a fresh audit group that reads
//! every queue from the start until idle.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sofamq_client::{
    Code, ConsumerConfig, FailureKind, Message, Producer, ProducerConfig, SendError, SimpleConsumer,
};
use tokio::task::JoinHandle;

use super::history::{PROP_PRODUCER, PROP_SEQ, ReadRecord, SendOutcome, SendRecord};

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
        }
    }
}

#[derive(Default)]
struct Shared {
    sends: Mutex<Vec<SendRecord>>,
    reads: Mutex<Vec<ReadRecord>>,
    acked: AtomicU64,
    delivered: AtomicU64,
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

/// Retryable status codes (the SDK retries them; a final one is not a definite rejection).
fn retryable(code: Option<Code>) -> bool {
    matches!(
        code,
        Some(
            Code::TooManyRequests
                | Code::MasterPersistenceTimeout
                | Code::SlavePersistenceTimeout
                | Code::InternalError
                | Code::InternalServerError
                | Code::ProxyTimeout
                | Code::RequestTimeout
                | Code::HaNotAvailable
                | Code::TopicNotFound
        )
    )
}

/// Failed only when the one attempt was rejected outright with a non-retryable code (or the
/// SDK rejected it before any attempt); anything else may have been stored.
pub fn classify(e: &SendError) -> SendOutcome {
    let definite = match e.kind {
        FailureKind::Invalid => true,
        FailureKind::Status => e.attempts <= 1 && !retryable(e.code_enum()),
        _ => false,
    };
    if definite {
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
        for p in 1..=cfg.producers {
            let pc = ProducerConfig::new([cfg.namesrv.clone()])
                .with_client_id(format!("chaos-producer-{p}"))
                .with_request_timeout(cfg.request_timeout)
                .with_max_attempts(cfg.max_attempts)
                .with_retry_backoff(Duration::from_millis(100), Duration::from_secs(1), 2.0);
            let producer = Producer::start(pc).await?;
            let shared = w.shared.clone();
            let stop = w.stop_producers.clone();
            let topic = cfg.topic.clone();
            let pad = "x".repeat(cfg.body_bytes);
            let period = Duration::from_secs_f64(1.0 / f64::from(cfg.rate.max(1)));
            w.producers.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    seq += 1;
                    let msg = Message::builder(topic.as_str(), format!("p{p}-s{seq}-{pad}"))
                        .key(format!("p{p}-s{seq}"))
                        .property(PROP_PRODUCER, p.to_string())
                        .property(PROP_SEQ, seq.to_string())
                        .build();
                    let (msg_id, outcome) = match producer.send(msg).await {
                        Ok(r) => {
                            shared.acked.fetch_add(1, Ordering::Relaxed);
                            (
                                r.message_id,
                                SendOutcome::Ok {
                                    queue_offset: r.queue_offset,
                                    broker: r.broker,
                                },
                            )
                        }
                        Err(e) => (e.message_id.clone(), classify(&e)),
                    };
                    lock(&shared.sends).push(SendRecord {
                        producer: p,
                        seq,
                        msg_id,
                        outcome,
                    });
                }
                producer.shutdown().await;
            }));
        }
        Ok(w)
    }

    async fn spawn_consumer(&mut self, group: &str, n: u32, audit: bool) -> anyhow::Result<()> {
        let mut cc = ConsumerConfig::new([self.cfg.namesrv.clone()], group)
            .with_long_polling_timeout(Duration::from_millis(500))
            .with_request_timeout(Duration::from_secs(3));
        cc.client_id = format!("chaos-{group}-{n}");
        // The route lookup may fail while the cluster is faulty: retry for a while.
        let deadline = Instant::now() + Duration::from_secs(30);
        let consumer = loop {
            match SimpleConsumer::start(cc.clone(), vec![(self.cfg.topic.clone(), "*".into())])
                .await
            {
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
                    let mut reads = lock(&shared.reads);
                    for m in &msgs {
                        reads.push(ReadRecord {
                            producer: m.properties.get(PROP_PRODUCER).and_then(|v| v.parse().ok()),
                            seq: m.properties.get(PROP_SEQ).and_then(|v| v.parse().ok()),
                            msg_id: m.message_id.clone(),
                            queue: m.queue_id,
                            offset: m.queue_offset,
                            audit,
                        });
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
        let acked: HashSet<(u32, u64)> = lock(&self.shared.sends)
            .iter()
            .filter(|s| matches!(s.outcome, SendOutcome::Ok { .. }))
            .map(|s| (s.producer, s.seq))
            .collect();
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
            if (all_read && quiet >= idle) || quiet >= give_up || start.elapsed() >= max {
                break;
            }
        }
        self.stop_consumers().await;
        Ok(())
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
