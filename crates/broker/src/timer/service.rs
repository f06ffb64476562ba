//! The broker's side of timers: firing due timers (as master) and recalling one, and
//! the loop that drives the index and the firing. Above [`super`], which knows no broker.

use tokio_util::sync::CancellationToken;

use super::*;
use crate::broker::Broker;
use crate::repl::Role;

impl Broker {
    /// Delivers the timers in `due` (claimed): one append of their messages and the op
    /// record that marks them done.
    async fn fire(&self, due: Vec<(u64, u64)>) -> Result<(), BrokerError> {
        let timers = self.timers();
        let mut records = Vec::with_capacity(due.len() + 1);
        let mut fired = Vec::with_capacity(due.len());
        let mut dropped = Vec::new();
        for (d, q) in &due {
            let rec = self
                .store()
                .read_queue(TIMER_TOPIC, Q_TIMERS, *q, 1, usize::MAX)?
                .into_iter()
                .next();
            let Some(rec) = rec else {
                dropped.push((*q, *d, String::new()));
                continue;
            };
            let Some((rd, topic)) = timer_of(&rec) else {
                dropped.push((*q, *d, String::new()));
                continue;
            };
            if rd != *d || rec.queue_offset != *q {
                dropped.push((*q, *d, topic.to_string()));
                continue;
            }
            let topic = topic.to_string();
            match self.topics().get(&topic) {
                Some(t) => {
                    let queue = self.cursor().next(t.queue_count);
                    records.push(released(rec, &topic, queue));
                    fired.push((*q, *d, topic));
                }
                None => {
                    tracing::warn!(%topic, queue_offset = q, "timer's topic is gone: dropped");
                    dropped.push((*q, *d, topic));
                }
            }
        }
        let n_fired = fired.len();
        let n_dropped = dropped.len();
        if !fired.is_empty() {
            records.push(op_record(&Op {
                k: Done::Fired,
                e: fired,
            })?);
        }
        if !dropped.is_empty() {
            records.push(op_record(&Op {
                k: Done::Dropped,
                e: dropped,
            })?);
        }
        let admitted = self.repl().writable()?;
        let appended = self.store().append(records).await?;
        let now = now_ms().max(0) as u64;
        for (d, _) in &due {
            timers
                .lateness
                .observe(Duration::from_millis(now.saturating_sub(*d)));
        }
        timers.fired.fetch_add(n_fired as u64, Ordering::Relaxed);
        timers
            .dropped
            .fetch_add(n_dropped as u64, Ordering::Relaxed);
        if let Some(end) = appended.last().map(|a| a.log_offset + u64::from(a.size)) {
            // Consumers see the messages once the slaves hold them.
            let _ = self.repl().wait_replicated(admitted, end).await;
            self.repl().refresh_limit();
        }
        self.consumers().wake();
        timers.wake();
        Ok(())
    }

    /// Cancels a pending timer (RecallMessage); returns its message id.
    pub async fn recall(&self, topic: &str, recall_handle: &str) -> Result<String, BrokerError> {
        let h = crate::handles::RecallHandle::decode(recall_handle)
            .ok_or_else(|| BrokerError::BadRequest("recall handle is malformed".into()))?;
        if h.broker != self.config().broker_name {
            return Err(BrokerError::BadRequest(format!(
                "recall handle belongs to broker '{}', this is '{}'",
                h.broker,
                self.config().broker_name
            )));
        }
        if h.topic != topic {
            return Err(BrokerError::BadRequest(format!(
                "recall handle is for topic '{}', not '{topic}'",
                h.topic
            )));
        }
        let admitted = self.repl().admit()?;
        let rec = self
            .store()
            .read_queue(TIMER_TOPIC, Q_TIMERS, h.queue_offset, 1, usize::MAX)?
            .into_iter()
            .next();
        let matches = rec.as_ref().is_some_and(|r| {
            timer_of(r).is_some_and(|(d, t)| d == h.due_ms && t == h.topic)
                && r.property(keys::MSG_ID) == Some(h.message_id.as_str())
        });
        if !matches {
            return Err(BrokerError::BadRequest(
                "recall handle names no timer message stored here".into(),
            ));
        }
        let timers = self.timers();
        {
            let mut st = timers.state.lock();
            let already = match st.claimed.get(&h.queue_offset) {
                Some(k) => Some(*k),
                None => {
                    let indexed = st
                        .index
                        .as_ref()
                        .is_some_and(|i| h.queue_offset < i.cp.next_timer);
                    let in_window = st
                        .window
                        .as_ref()
                        .map(|w| w.pending.contains_key(&h.queue_offset));
                    match (indexed, in_window) {
                        (false, _) | (true, Some(true)) => None,
                        _ => {
                            let idx = st.index.as_ref().ok_or_else(|| {
                                BrokerError::Internal("timer index closed".into())
                            })?;
                            let b = idx.bucket_of(h.due_ms);
                            let done = idx
                                .done_of(b)
                                .map_err(|e| BrokerError::Internal(format!("timer index: {e}")))?;
                            // A bucket whose files were removed is entirely done; a
                            // removed bucket only ever held delivered or recalled timers.
                            match done.get(&h.queue_offset) {
                                Some(k) => Some(*k),
                                None if !idx.buckets().contains(&b) => Some(Done::Fired),
                                None => None,
                            }
                        }
                    }
                }
            };
            match already {
                Some(Done::Recalled) => return Ok(h.message_id),
                Some(_) => {
                    return Err(BrokerError::PreconditionFailed(format!(
                        "message {} was already delivered; a recall must come before its delivery time",
                        h.message_id
                    )));
                }
                None => {
                    st.claimed.insert(h.queue_offset, Done::Recalled);
                }
            }
        }
        let op = op_record(&Op {
            k: Done::Recalled,
            e: vec![(h.queue_offset, h.due_ms, h.topic.clone())],
        })?;
        let result = async {
            let a = self.store().append(vec![op]).await?;
            let end = a
                .last()
                .map(|a| a.log_offset + u64::from(a.size))
                .unwrap_or(0);
            self.repl().wait_replicated(admitted, end).await
        }
        .await;
        match result {
            Ok(()) => {
                timers.recalled.fetch_add(1, Ordering::Relaxed);
                timers.wake();
                Ok(h.message_id)
            }
            Err(e) => {
                timers.state.lock().claimed.remove(&h.queue_offset);
                Err(e)
            }
        }
    }
}

/// The timer loop of one broker: indexes on every role, delivers as master. Ends with
/// `token`.
pub async fn run(broker: Broker, token: CancellationToken) {
    let timers: Arc<Timers> = broker.timers_arc();
    let mut role = broker.repl().role_watch();
    let poll = Duration::from_millis(timers.cfg.poll_interval_ms.max(1));
    let cp_every = Duration::from_millis(timers.cfg.checkpoint_interval_ms.max(1));
    let mut last_cp = crate::clock::Instant::now();
    loop {
        let master = *role.borrow() == Role::Master && broker.writable().is_ok();
        timers.set_firing(master);
        let t = timers.clone();
        let store = broker.store().clone();
        let now = now_ms().max(0) as u64;
        let step = tokio::task::spawn_blocking(move || -> Result<(), BrokerError> {
            t.index_step(&store)?;
            if master {
                t.load_window(now)?;
            }
            Ok(())
        })
        .await;
        match step {
            Ok(Ok(())) => {}
            Ok(Err(e)) if matches!(e, BrokerError::Internal(_)) => {
                timers.fail(&e);
                return;
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "timer index step"),
            Err(e) => tracing::warn!(error = %e, "timer index task"),
        }
        if master {
            loop {
                let due = timers.take_due(now_ms().max(0) as u64);
                if due.is_empty() {
                    break;
                }
                let full = due.len() == timers.cfg.max_fire_batch;
                if let Err(e) = broker.fire(due.clone()).await {
                    tracing::warn!(error = %e, n = due.len(), "timer delivery failed; will retry");
                    timers.unclaim(&due);
                    break;
                }
                if !full {
                    break;
                }
            }
        }
        if last_cp.elapsed() >= cp_every {
            let t = timers.clone();
            match tokio::task::spawn_blocking(move || t.checkpoint()).await {
                Ok(Err(e)) => {
                    timers.fail(&e);
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "timer checkpoint task"),
                Ok(Ok(())) => {}
            }
            last_cp = crate::clock::Instant::now();
        }
        let mut wait = poll;
        if master && let Some(d) = timers.next_due() {
            let now = now_ms().max(0) as u64;
            wait = wait.min(Duration::from_millis(d.saturating_sub(now)));
        }
        tokio::select! {
            biased;
            () = token.cancelled() => break,
            _ = role.changed() => {}
            () = timers.wake.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
    let t = timers.clone();
    let _ = tokio::task::spawn_blocking(move || t.checkpoint()).await;
}
