//! `/metrics` and `/health` of one broker, rendered at scrape time.

use crate::clock::Instant;
use std::sync::atomic::Ordering;

use sofamq_proto::v2::Code;
use sofamq_server::http::Observable;
use sofamq_server::metrics::{Text, labels};

use crate::broker::Broker;
use crate::consume::dlq::DLQ_PREFIX;
use crate::repl::Role;

/// Most per-queue consumer series rendered (group totals are always rendered).
const MAX_CONSUMER_SERIES: usize = 20_000;

/// A broker as its HTTP endpoint sees it.
pub struct Observed(pub Broker);

impl Observable for Observed {
    fn metrics(&self) -> String {
        render(&self.0)
    }

    fn health(&self) -> (bool, String) {
        health(&self.0)
    }
}

/// The `/health` answer: healthy unless the commit log is fenced.
pub fn health(b: &Broker) -> (bool, String) {
    let repl = b.repl();
    let s = b.store();
    let fenced = s.fenced();
    let snap = repl.tracker().snapshot();
    let role = repl.role();
    let min = repl.tracker().min_insync();
    let in_sync = match role {
        Role::Master => snap.in_sync + 1 >= min,
        Role::Slave => true,
    };
    let v = serde_json::json!({
        "status": if fenced.is_some() { "fenced" } else { "ok" },
        "broker": b.config().broker_name,
        "broker_id": repl.identity(),
        "role": role.as_str(),
        "epoch": s.current_epoch(),
        "fenced_reason": fenced,
        "in_sync": in_sync,
        "in_sync_slaves": if role == Role::Master { snap.in_sync } else { 0 },
        "min_insync_replicas": min,
    });
    (fenced.is_none(), v.to_string())
}

/// The Prometheus document of one broker.
pub fn render(b: &Broker) -> String {
    let cfg = b.config();
    let repl = b.repl();
    let store = b.store();
    let m = b.metrics();
    // The configured id: stable across role changes, so series survive a failover (the
    // role is its own label).
    let id = repl.identity().to_string();
    let base = labels(&[("broker", &cfg.broker_name), ("broker_id", &id)]);
    let with = |extra: &[(&str, &str)]| {
        let mut v: Vec<(&str, &str)> = vec![("broker", &cfg.broker_name), ("broker_id", &id)];
        v.extend_from_slice(extra);
        labels(&v)
    };
    let mut t = Text::new();

    t.single(
        "sofamq_broker_info",
        "gauge",
        "Constant 1; the labels name the broker, its cluster and role.",
        &with(&[("cluster", &cfg.cluster), ("role", repl.role().as_str())]),
        1.0,
    );
    t.single(
        "sofamq_broker_epoch",
        "gauge",
        "Current epoch of the commit log.",
        &base,
        store.current_epoch() as f64,
    );
    t.single(
        "sofamq_broker_fenced",
        "gauge",
        "1 when the commit log is fenced (writes refused).",
        &base,
        f64::from(u8::from(store.fenced().is_some())),
    );
    t.single(
        "sofamq_store_queues_damaged",
        "gauge",
        "1 when a consume queue was found not to match the commit log (every queue is rebuilt from the log at the next start).",
        &base,
        f64::from(u8::from(store.queues_damaged().is_some())),
    );

    // Traffic per topic.
    let mut topics: Vec<(String, std::sync::Arc<super::TopicCounters>)> = m
        .topics
        .read()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    topics.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, help, f) in [
        (
            "sofamq_messages_in_total",
            "Messages stored by sends, per topic.",
            0,
        ),
        (
            "sofamq_bytes_in_total",
            "Body bytes stored by sends, per topic.",
            1,
        ),
        (
            "sofamq_messages_out_total",
            "Messages delivered to consumers, per topic.",
            2,
        ),
        (
            "sofamq_bytes_out_total",
            "Body bytes delivered to consumers, per topic.",
            3,
        ),
    ] {
        t.family(name, "counter", help);
        for (topic, c) in &topics {
            let v = match f {
                0 => &c.msgs_in,
                1 => &c.bytes_in,
                2 => &c.msgs_out,
                _ => &c.bytes_out,
            };
            t.sample(
                name,
                &with(&[("topic", topic)]),
                v.load(Ordering::Relaxed) as f64,
            );
        }
    }

    t.family(
        "sofamq_send_latency_seconds",
        "histogram",
        "SendMessage handling time on the broker (validation, group commit, replication).",
    );
    m.send_latency
        .render(&mut t, "sofamq_send_latency_seconds", &base);

    t.family(
        "sofamq_rejected_requests_total",
        "counter",
        "Sends refused (whole requests or single messages), per RocketMQ status code.",
    );
    let rejected: Vec<(i32, u64)> = m.rejected.lock().iter().map(|(k, v)| (*k, *v)).collect();
    for (code, n) in rejected {
        let c = code.to_string();
        let name = Code::try_from(code).map_or("UNKNOWN", |c| c.as_str_name());
        t.sample(
            "sofamq_rejected_requests_total",
            &with(&[("code", &c), ("code_name", name)]),
            n as f64,
        );
    }

    t.single(
        "sofamq_connections_open",
        "gauge",
        "Open client gRPC connections.",
        &base,
        m.conns.open() as f64,
    );
    t.single(
        "sofamq_connections_accepted_total",
        "counter",
        "Client gRPC connections accepted since start.",
        &base,
        m.conns.accepted() as f64,
    );

    // Store.
    let st = store.stats();
    let fs = store.fsync_stats();
    for (name, help, v) in [
        (
            "sofamq_store_batches_total",
            "Group-commit batches written.",
            st.batches,
        ),
        (
            "sofamq_store_records_total",
            "Records appended to the commit log.",
            st.records,
        ),
        (
            "sofamq_store_bytes_total",
            "Bytes written to the commit log.",
            st.bytes,
        ),
        (
            "sofamq_store_no_space_total",
            "Batches refused because a commit-log write found the disk full (ENOSPC); the log stays writable.",
            st.no_space,
        ),
        (
            "sofamq_store_scrub_passes_total",
            "Background scrub passes completed over the whole durable commit log.",
            st.scrub_passes,
        ),
        (
            "sofamq_store_scrub_bytes_total",
            "Commit-log bytes the background scrub read and verified (CRC).",
            st.scrub_bytes,
        ),
        (
            "sofamq_store_scrub_damage_total",
            "Damaged records the background scrub found (each fences the log until the range is fetched again).",
            st.scrub_damage,
        ),
        (
            "sofamq_store_synced_bytes_total",
            "Bytes made durable by fdatasync (per-fsync batch size = rate of this / rate of sofamq_store_fsync_seconds_count).",
            fs.synced_bytes,
        ),
    ] {
        t.single(name, "counter", help, &base, v as f64);
    }
    t.family(
        "sofamq_store_fsync_seconds",
        "histogram",
        "fdatasync latency of commit-log segments.",
    );
    let bounds: Vec<f64> = sofamq_store::FSYNC_BUCKETS_US
        .iter()
        .map(|us| *us as f64 / 1e6)
        .collect();
    t.histogram(
        "sofamq_store_fsync_seconds",
        &base,
        &bounds,
        &fs.buckets,
        fs.sum_nanos as f64 / 1e9,
    );
    let durable = store.durable_offset();
    for (name, help, v) in [
        (
            "sofamq_store_log_end_offset",
            "Bytes written to the commit log.",
            store.log_end_offset(),
        ),
        (
            "sofamq_store_durable_offset",
            "Bytes covered by a completed fdatasync.",
            durable,
        ),
    ] {
        t.single(name, "gauge", help, &base, v as f64);
    }

    // Replication (master side: one series per connected slave).
    t.single(
        "sofamq_replication_in_sync_slaves",
        "gauge",
        "Slaves in the in-sync set (masters).",
        &base,
        if repl.role() == Role::Master {
            repl.tracker().snapshot().in_sync as f64
        } else {
            0.0
        },
    );
    t.single(
        "sofamq_replication_min_insync_replicas",
        "gauge",
        "Copies (master included) that must be durable before a send is acked.",
        &base,
        repl.tracker().min_insync() as f64,
    );
    t.family(
        "sofamq_replication_frames_sent_total",
        "counter",
        "Data frames sent to slaves: by the commit log's writer right after its write (path=direct, plain TCP, a slave caught up) or by the session's stream task (path=stream).",
    );
    let (direct, streamed) = repl.taps.sent();
    for (path, n) in [("direct", direct), ("stream", streamed)] {
        t.sample(
            "sofamq_replication_frames_sent_total",
            &with(&[("path", path)]),
            n as f64,
        );
    }
    let slaves = if repl.role() == Role::Master {
        repl.tracker().slaves()
    } else {
        Vec::new()
    };
    let now = Instant::now();
    t.family(
        "sofamq_replication_lag_bytes",
        "gauge",
        "Bytes durable on the master and not yet acked by the slave.",
    );
    for s in &slaves {
        t.sample(
            "sofamq_replication_lag_bytes",
            &with(&[("slave", &s.name)]),
            durable.saturating_sub(s.acked) as f64,
        );
    }
    t.family(
        "sofamq_replication_lag_seconds",
        "gauge",
        "How old the master state the slave has caught up to is (0 when it holds everything durable).",
    );
    for s in &slaves {
        let secs = if s.acked >= durable {
            0.0
        } else {
            now.saturating_duration_since(s.reached).as_secs_f64()
        };
        t.sample(
            "sofamq_replication_lag_seconds",
            &with(&[("slave", &s.name)]),
            secs,
        );
    }
    t.family(
        "sofamq_replication_in_sync",
        "gauge",
        "1 when the slave is in the in-sync set.",
    );
    for s in &slaves {
        t.sample(
            "sofamq_replication_in_sync",
            &with(&[("slave", &s.name)]),
            f64::from(u8::from(s.in_sync)),
        );
    }

    // Consumer groups.
    let groups = b.group_states(None);
    t.family(
        "sofamq_consumer_group_lag",
        "gauge",
        "Messages not yet finished by the group, all its queues.",
    );
    for g in &groups {
        t.sample(
            "sofamq_consumer_group_lag",
            &with(&[("group", &g.group)]),
            g.lag as f64,
        );
    }
    t.family(
        "sofamq_consumer_lag",
        "gauge",
        "Messages not yet finished by the group, per topic and queue.",
    );
    let mut n = 0;
    'outer: for g in &groups {
        for q in &g.queues {
            if n >= MAX_CONSUMER_SERIES {
                break 'outer;
            }
            n += 1;
            let qid = q.queue_id.to_string();
            t.sample(
                "sofamq_consumer_lag",
                &with(&[("group", &g.group), ("topic", &q.topic), ("queue", &qid)]),
                q.lag as f64,
            );
        }
    }
    t.family(
        "sofamq_consumer_inflight",
        "gauge",
        "Messages delivered to the group and not yet acked.",
    );
    for g in &groups {
        let inflight: u64 = g.queues.iter().map(|q| u64::from(q.inflight)).sum();
        t.sample(
            "sofamq_consumer_inflight",
            &with(&[("group", &g.group)]),
            inflight as f64,
        );
    }

    // Dead letters: messages stored in each group's DLQ topic.
    let mut dlq: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    for (topic, q) in store.queues() {
        if let Some(group) = topic.strip_prefix(DLQ_PREFIX) {
            let (min, max) = store.queue_offsets(&topic, q);
            *dlq.entry(group.to_string()).or_default() += max.saturating_sub(min);
        }
    }
    t.family(
        "sofamq_dlq_messages",
        "gauge",
        "Messages stored in the group's dead-letter queue (resent ones included).",
    );
    for (group, n) in dlq {
        t.sample("sofamq_dlq_messages", &with(&[("group", &group)]), n as f64);
    }

    // Timer and transactional messages.
    let timers = b.timers();
    t.family(
        "sofamq_timers_pending",
        "gauge",
        "DELAY messages stored and neither delivered nor recalled, per topic.",
    );
    for (topic, n) in timers.stats().per_topic {
        t.sample(
            "sofamq_timers_pending",
            &with(&[("topic", &topic)]),
            n as f64,
        );
    }
    let (fired, recalled, dropped) = timers.counters();
    t.family(
        "sofamq_timers_total",
        "counter",
        "Timers that left the pending set on this broker, by outcome.",
    );
    for (kind, n) in [
        ("delivered", fired),
        ("recalled", recalled),
        ("dropped", dropped),
    ] {
        t.sample("sofamq_timers_total", &with(&[("outcome", kind)]), n as f64);
    }
    t.family(
        "sofamq_timer_lateness_seconds",
        "histogram",
        "Delivery of a timer message minus its due time (delivery = the append to its topic).",
    );
    timers
        .lateness()
        .render(&mut t, "sofamq_timer_lateness_seconds", &base);
    let txns = b.txns();
    t.family(
        "sofamq_transactions_open",
        "gauge",
        "Half messages neither committed nor rolled back, per topic.",
    );
    for (topic, (n, _)) in txns.stats() {
        t.sample(
            "sofamq_transactions_open",
            &with(&[("topic", &topic)]),
            n as f64,
        );
    }
    t.single(
        "sofamq_transaction_checks_total",
        "counter",
        "Check-back commands sent to producers.",
        &base,
        txns.counters.checks_sent.load(Ordering::Relaxed) as f64,
    );
    t.single(
        "sofamq_transaction_checks_unanswerable_total",
        "counter",
        "Check-backs due while no producer of the topic was connected.",
        &base,
        txns.counters.checks_unanswerable.load(Ordering::Relaxed) as f64,
    );
    t.family(
        "sofamq_transactions_ended_total",
        "counter",
        "Transactions ended on this broker, by outcome and by who ended them.",
    );
    for (i, outcome) in ["commit", "rollback"].iter().enumerate() {
        for (j, by) in ["client", "check", "timeout"].iter().enumerate() {
            t.sample(
                "sofamq_transactions_ended_total",
                &with(&[("outcome", outcome), ("by", by)]),
                txns.counters.outcomes[i][j].load(Ordering::Relaxed) as f64,
            );
        }
    }
    t.finish()
}
