//! The broker's side of transactions: EndTransaction, check-backs and default outcomes,
//! and the loop that tails the half queues and checks back as master. Above [`super`],
//! which knows no broker.

use tokio_util::sync::CancellationToken;

use super::*;
use crate::broker::Broker;
use crate::repl::Role;

impl Broker {
    /// EndTransaction from a producer.
    pub async fn end_transaction(&self, req: &EndTransactionRequest) -> Result<(), BrokerError> {
        let end = end_of(req.resolution)?;
        let by = match TransactionSource::try_from(req.source) {
            Ok(TransactionSource::SourceServerCheck) => By::Check,
            _ => By::Client,
        };
        let id = TransactionId::decode(&req.transaction_id).ok_or_else(|| {
            BrokerError::InvalidTransactionId(format!(
                "{:?} is not a transaction id of this cluster",
                req.transaction_id
            ))
        })?;
        if id.broker != self.config().broker_name {
            return Err(BrokerError::InvalidTransactionId(format!(
                "transaction of broker '{}', this is '{}'",
                id.broker,
                self.config().broker_name
            )));
        }
        if id.message_id != req.message_id {
            return Err(BrokerError::InvalidTransactionId(format!(
                "transaction id is for message {}, not {}",
                id.message_id, req.message_id
            )));
        }
        let topic = req.topic.as_ref().map(|t| t.name.as_str()).unwrap_or("");
        self.finish_half(id.queue_offset, &id.message_id, Some(topic), end, by)
            .await
    }

    /// Commits or rolls back the half message at queue offset `q`.
    /// The half message stored at queue offset `q` of `%SYS%HALF`, if any.
    fn read_half(&self, q: u64) -> Result<Option<sofamq_store::Record>, BrokerError> {
        Ok(self
            .store()
            .read_queue(HALF_TOPIC, Q_HALF, q, 1, usize::MAX)?
            .into_iter()
            .next())
    }

    async fn finish_half(
        &self,
        q: u64,
        message_id: &str,
        topic: Option<&str>,
        end: End,
        by: By,
    ) -> Result<(), BrokerError> {
        let admitted = self.repl().admit()?;
        let rec = self
            .read_half(q)?
            .filter(|r| r.property(keys::MSG_ID) == Some(message_id))
            .ok_or_else(|| {
                BrokerError::InvalidTransactionId(format!(
                    "no half message {message_id} is stored here"
                ))
            })?;
        let real = rec
            .property(keys::REAL_TOPIC)
            .unwrap_or_default()
            .to_string();
        if let Some(t) = topic
            && t != real
        {
            return Err(BrokerError::InvalidTransactionId(format!(
                "half message {message_id} is for topic '{real}', not '{t}'"
            )));
        }
        let txns = self.txns();
        {
            let mut st = txns.state.lock();
            let prior = match st.claimed.get(&q) {
                Some(e) => Some(*e),
                None if st.open.contains_key(&q) || q >= st.next_half => None,
                None => Some(*st.recent.get(&q).ok_or_else(|| {
                    BrokerError::PreconditionFailed(format!(
                        "transaction of message {message_id} ended long ago; its outcome is no longer kept"
                    ))
                })?),
            };
            match prior {
                Some(p) if p == end => return Ok(()),
                Some(p) => {
                    return Err(BrokerError::PreconditionFailed(format!(
                        "transaction of message {message_id} already ended with {p:?}"
                    )));
                }
                None => {
                    st.claimed.insert(q, end);
                }
            }
        }
        let mut records = Vec::with_capacity(2);
        if end == End::Commit {
            let Some(t) = self.topics().get(&real) else {
                txns.state.lock().claimed.remove(&q);
                return Err(BrokerError::TopicNotFound(format!(
                    "'{real}' no longer exists; roll the transaction back"
                )));
            };
            let queue = self.cursor().next(t.queue_count);
            records.push(crate::timer::released(rec, &real, queue));
        }
        records.push(NewRecord {
            topic: HALF_TOPIC.to_string(),
            queue_id: Q_OPS,
            flags: FLAG_META,
            tag: String::new(),
            born_ts_ms: now_ms(),
            properties: Vec::new(),
            body: Bytes::from(
                serde_json::to_vec(&Op { q, r: end, by })
                    .map_err(|e| BrokerError::Internal(e.to_string()))?,
            ),
        });
        let result = async {
            let a = self.store().append(records).await?;
            let last = a
                .last()
                .map(|a| a.log_offset + u64::from(a.size))
                .unwrap_or(0);
            self.repl().wait_replicated(admitted, last).await
        }
        .await;
        match result {
            Ok(()) => {
                self.repl().refresh_limit();
                txns.count(end, by);
                self.consumers().wake();
                txns.wake();
                tracing::debug!(message_id, ?end, ?by, "transaction ended");
                Ok(())
            }
            Err(e) => {
                txns.state.lock().claimed.remove(&q);
                Err(e)
            }
        }
    }

    /// Sends due check-backs and applies the default outcome to exhausted ones.
    async fn check_open(&self) {
        let txns = self.txns();
        let (ask, expire) = txns.due_checks(now_ms());
        for (q, topic) in ask {
            let Ok(Some(rec)) = self.read_half(q) else {
                continue;
            };
            let message_id = rec.property(keys::MSG_ID).unwrap_or_default().to_string();
            let tid = TransactionId {
                broker: self.config().broker_name.clone(),
                queue_offset: q,
                message_id,
            }
            .encode();
            let mut message = crate::consume::wire::to_wire(
                &rec,
                crate::topics::TopicType::Transaction,
                &self.config().broker_name,
                &crate::consume::wire::Delivery {
                    attempt: 1,
                    ..Default::default()
                },
            );
            if let Some(t) = message.topic.as_mut() {
                t.name = topic.clone();
            }
            let cmd = TelemetryCommand {
                status: None,
                command: Some(Command::RecoverOrphanedTransactionCommand(
                    RecoverOrphanedTransactionCommand {
                        message: Some(message),
                        transaction_id: tid,
                    },
                )),
            };
            if txns.producers.send_to_one(&topic, cmd) {
                txns.counters.checks_sent.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%topic, queue_offset = q, "transaction check-back sent");
            } else {
                txns.counters
                    .checks_unanswerable
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%topic, queue_offset = q, "transaction check due, no live producer of the topic");
            }
        }
        for q in expire {
            let end = match txns.cfg.default_outcome {
                Outcome::Commit => End::Commit,
                Outcome::Rollback => End::Rollback,
            };
            let Ok(Some(rec)) = self.read_half(q) else {
                continue;
            };
            let id = rec.property(keys::MSG_ID).unwrap_or_default().to_string();
            match self.finish_half(q, &id, None, end, By::Timeout).await {
                Ok(()) => tracing::warn!(
                    message_id = %id,
                    outcome = ?end,
                    checks = txns.cfg.max_checks,
                    "transaction unresolved after every check-back: default outcome applied"
                ),
                Err(e) => {
                    tracing::warn!(message_id = %id, error = %e, "default transaction outcome failed")
                }
            }
        }
    }
}

/// The transaction loop of one broker: tails the half queues on every role, checks back
/// as master. Ends with `token`.
pub async fn run(broker: Broker, token: CancellationToken) {
    let txns: Arc<Txns> = broker.txns_arc();
    let tick = Duration::from_millis(txns.cfg.tick_ms.max(10));
    let mut last_cp = crate::clock::Instant::now();
    loop {
        let t = txns.clone();
        let store = broker.store().clone();
        match tokio::task::spawn_blocking(move || t.index_step(&store)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "transaction index step"),
            Err(e) => tracing::warn!(error = %e, "transaction index task"),
        }
        if broker.repl().role() == Role::Master && broker.writable().is_ok() {
            broker.check_open().await;
        }
        if last_cp.elapsed() >= Duration::from_secs(1) {
            let t = txns.clone();
            if let Ok(Err(e)) = tokio::task::spawn_blocking(move || t.checkpoint()).await {
                tracing::warn!(error = %e, "transaction checkpoint");
            }
            last_cp = crate::clock::Instant::now();
        }
        tokio::select! {
            biased;
            () = token.cancelled() => break,
            () = txns.wake.notified() => {}
            () = tokio::time::sleep(tick) => {}
        }
    }
    let t = txns.clone();
    let _ = tokio::task::spawn_blocking(move || t.checkpoint()).await;
}
