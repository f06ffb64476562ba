//! Messages (lookup, browse, where a message is) and dead letters.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, Query, State};
use serde::Deserialize;
use serde_json::{Value, json};
use sofamq_proto::admin::{
    DeadLetterProgressRequest, GetMessageRequest, ListGroupsRequest, ListTopicsRequest,
    ReadQueueRequest, ReplicationStatusRequest, ResendDeadLettersRequest, StoredMessage,
};

use super::auth::Caller;
use super::brokers::{ok, why};
use super::{ApiError, ApiResult, Console};

/// Body bytes sent to the page per message (hex-encoded); the rest is cut and flagged.
const MAX_BODY: usize = 64 * 1024;
/// Most messages one browse answers.
const MAX_BROWSE: u32 = 200;
/// The dead-letter topic prefix (`%DLQ%<group>`), as the broker names them.
const DLQ_PREFIX: &str = "%DLQ%";

fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

fn message(group: &str, m: &StoredMessage) -> Value {
    let cut = m.body.len() > MAX_BODY;
    json!({
        "broker": group, "topic": m.topic, "queue_id": m.queue_id, "queue_offset": m.queue_offset,
        "log_offset": m.log_offset, "message_id": m.message_id, "tag": m.tag,
        "born_ms": m.born_timestamp_ms, "stored_ms": m.store_timestamp_ms, "epoch": m.epoch,
        "properties": m.properties, "body_hex": hex(&m.body[..m.body.len().min(MAX_BODY)]),
        "body_len": m.body.len(), "body_truncated": cut,
    })
}

#[derive(Deserialize)]
pub(crate) struct Lookup {
    #[serde(default)]
    topic: String,
    #[serde(default)]
    id: String,
    #[serde(default)]
    key: String,
}

/// `GET /console/api/messages?topic=&id=|key=`: a bounded lookup on every master.
pub(crate) async fn lookup(
    State(c): State<Arc<Console>>,
    Extension(who): Extension<Caller>,
    Query(q): Query<Lookup>,
) -> ApiResult {
    if q.id.is_empty() == q.key.is_empty() {
        return Err(ApiError::bad("give a message id or a key"));
    }
    if !q.key.is_empty() && q.topic.is_empty() {
        return Err(ApiError::bad("a lookup by key needs the topic"));
    }
    let mut found = Vec::new();
    let mut errors = Vec::new();
    let mut truncated = false;
    for (group, addr) in c.masters() {
        let r = async {
            let r = c
                .admin(&addr, who.creds.as_ref())
                .map_err(|e| e.1)?
                .get_message(GetMessageRequest {
                    topic: q.topic.clone(),
                    message_id: q.id.clone(),
                    key: q.key.clone(),
                    max_scan: 0,
                    max_results: 16,
                })
                .await
                .map_err(|e| why(&e))?
                .into_inner();
            ok(r.status.clone())?;
            Ok::<_, String>(r)
        }
        .await;
        match r {
            Ok(r) => {
                truncated |= r.truncated;
                found.extend(r.messages.iter().map(|m| message(&group, m)));
            }
            Err(e) => errors.push(json!({"broker": group, "error": e})),
        }
    }
    Ok(Json(
        json!({"messages": found, "errors": errors, "scan_truncated": truncated}),
    ))
}

#[derive(Deserialize)]
pub(crate) struct Browse {
    broker: String,
    topic: String,
    queue: u32,
    offset: Option<u64>,
    time_ms: Option<i64>,
    count: Option<u32>,
}

/// `GET /console/api/queue?broker=&topic=&queue=&offset=|time_ms=&count=`: messages of one
/// queue from an offset, or from the first message stored at or after a time.
pub(crate) async fn browse(
    State(c): State<Arc<Console>>,
    Extension(who): Extension<Caller>,
    Query(q): Query<Browse>,
) -> ApiResult {
    let addr = c.master_of(&q.broker)?;
    let admin = c.admin(&addr, who.creds.as_ref())?;
    let read = |offset: u64, n: u32| {
        let mut a = admin.clone();
        let topic = q.topic.clone();
        let queue = q.queue;
        async move {
            let r = a
                .read_queue(ReadQueueRequest {
                    topic,
                    queue_id: queue,
                    offset,
                    max_count: n,
                })
                .await
                .map_err(|e| ApiError::upstream(why(&e)))?
                .into_inner();
            ok(r.status).map_err(ApiError::upstream)?;
            Ok::<_, ApiError>(r.messages)
        }
    };
    let offset = match (q.offset, q.time_ms) {
        (Some(o), _) => o,
        (None, Some(t)) => {
            // Bisect over the queue's offsets by store time.
            let topics = admin
                .clone()
                .list_topics(ListTopicsRequest {})
                .await
                .map_err(|e| ApiError::upstream(why(&e)))?
                .into_inner();
            let qs = topics
                .topics
                .iter()
                .find(|x| x.spec.as_ref().is_some_and(|s| s.name == q.topic))
                .and_then(|x| x.queues.iter().find(|s| s.queue_id == q.queue))
                .ok_or_else(|| ApiError::bad("no such topic or queue"))?;
            let (mut lo, mut hi) = (qs.min_offset, qs.max_offset);
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                let m = read(mid, 1).await?;
                match m.first() {
                    Some(m) if m.store_timestamp_ms < t => lo = mid + 1,
                    Some(_) => hi = mid,
                    None => break,
                }
            }
            lo
        }
        (None, None) => 0,
    };
    let n = q.count.unwrap_or(20).clamp(1, MAX_BROWSE);
    let msgs = read(offset, n).await?;
    Ok(Json(json!({
        "offset": offset,
        "messages": msgs.iter().map(|m| message(&q.broker, m)).collect::<Vec<_>>(),
    })))
}

#[derive(Deserialize)]
pub(crate) struct Where {
    broker: String,
    topic: String,
    queue: u32,
    offset: u64,
    log_offset: u64,
}

/// `GET /console/api/location`: where a stored message is: durable on the master,
/// acked by which replicas, and per consumer group delivered or acked.
pub(crate) async fn location(
    State(c): State<Arc<Console>>,
    Extension(who): Extension<Caller>,
    Query(w): Query<Where>,
) -> ApiResult {
    let addr = c.master_of(&w.broker)?;
    let mut admin = c.admin(&addr, who.creds.as_ref())?;
    let r = admin
        .replication_status(ReplicationStatusRequest {})
        .await
        .map_err(|e| ApiError::upstream(why(&e)))?
        .into_inner();
    let replicas: Vec<Value> = r
        .slaves
        .iter()
        .map(|s| json!({"name": s.name, "has_it": s.acked_offset > w.log_offset, "in_sync": s.in_sync}))
        .collect();
    let g = admin
        .list_groups(ListGroupsRequest::default())
        .await
        .map_err(|e| ApiError::upstream(why(&e)))?
        .into_inner();
    let mut groups = Vec::new();
    for cg in &g.groups {
        for qs in cg
            .queues
            .iter()
            .filter(|x| x.topic == w.topic && x.queue_id == w.queue)
        {
            let state = if w.offset < qs.committed_offset {
                "acked"
            } else if w.offset < qs.scan_offset {
                "delivered, not acked"
            } else {
                "not delivered yet"
            };
            groups.push(json!({"group": cg.group, "state": state}));
        }
    }
    Ok(Json(json!({
        "broker": w.broker, "master": addr,
        "durable": r.durable_offset > w.log_offset,
        "readable": r.readable_offset > w.log_offset,
        "replicas": replicas, "groups": groups,
    })))
}

/// `GET /console/api/dlq`: the dead-letter topics of every master and their newest
/// messages (at most 100 each).
pub(crate) async fn dead_letters(
    State(c): State<Arc<Console>>,
    Extension(who): Extension<Caller>,
) -> ApiResult {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (group, addr) in c.masters() {
        let r = async {
            let mut a = c.admin(&addr, who.creds.as_ref()).map_err(|e| e.1)?;
            let t = a.list_topics(ListTopicsRequest {}).await.map_err(|e| why(&e))?.into_inner();
            ok(t.status)?;
            let mut v = Vec::new();
            for t in t.topics {
                let Some(spec) = t.spec else { continue };
                let Some(cg) = spec.name.strip_prefix(DLQ_PREFIX) else { continue };
                let p = a
                    .dead_letter_progress(DeadLetterProgressRequest { group: cg.to_string() })
                    .await
                    .map_err(|e| why(&e))?
                    .into_inner();
                ok(p.status)?;
                for qs in &t.queues {
                    let from = qs.max_offset.saturating_sub(100).max(qs.min_offset);
                    let r = a
                        .read_queue(ReadQueueRequest { topic: spec.name.clone(), queue_id: qs.queue_id, offset: from, max_count: 100 })
                        .await
                        .map_err(|e| why(&e))?
                        .into_inner();
                    ok(r.status)?;
                    v.push(json!({
                        "broker": group, "group": cg, "topic": spec.name, "queue_id": qs.queue_id,
                        "count": qs.max_offset.saturating_sub(qs.min_offset),
                        "resent_below": p.resent_below,
                        "messages": r.messages.iter().map(|m| {
                            let mut v = message(&group, m);
                            v["resent"] = json!(m.queue_offset < p.resent_below || p.chosen.contains(&m.queue_offset));
                            v
                        }).collect::<Vec<_>>(),
                    }));
                }
            }
            Ok::<_, String>(v)
        }
        .await;
        match r {
            Ok(v) => out.extend(v),
            Err(e) => errors.push(json!({"broker": group, "error": e})),
        }
    }
    Ok(Json(json!({"dlq": out, "errors": errors})))
}

#[derive(Deserialize)]
pub(crate) struct Resend {
    group: String,
    #[serde(default)]
    topic: String,
    #[serde(default)]
    max: u64,
    /// With `offsets`: the broker group whose dead-letter queue they are in.
    #[serde(default)]
    broker: String,
    /// Chosen dead letters (offsets of the dead-letter queue on `broker`).
    #[serde(default)]
    offsets: Vec<u64>,
}

/// `POST /console/api/dlq/resend`: moves the group's dead letters back to their topics,
/// oldest first (`max` of them; 0: all), on every master; or, with `offsets`, just the
/// chosen ones on `broker`'s master.
pub(crate) async fn resend(
    State(c): State<Arc<Console>>,
    Extension(who): Extension<Caller>,
    Json(r): Json<Resend>,
) -> ApiResult {
    let targets = if r.offsets.is_empty() {
        c.masters()
    } else {
        vec![(r.broker.clone(), c.master_of(&r.broker)?)]
    };
    let mut results = Vec::new();
    for (bg, addr) in targets {
        let x = async {
            let x = c
                .admin(&addr, who.creds.as_ref())
                .map_err(|e| e.1)?
                .resend_dead_letters(ResendDeadLettersRequest {
                    group: r.group.clone(),
                    topic: r.topic.clone(),
                    max: r.max,
                    offsets: r.offsets.clone(),
                })
                .await
                .map_err(|e| why(&e))?
                .into_inner();
            ok(x.status).map(|()| (x.resent, x.skipped))
        }
        .await;
        tracing::info!(group = %r.group, broker = %bg, user = ?who.user, chosen = r.offsets.len(), ok = x.is_ok(), "console: resend dead letters");
        results.push(match x {
            Ok((n, skipped)) => json!({
                "broker": bg, "resent": n,
                "skipped": skipped.iter().map(|s| json!({"offset": s.offset, "reason": s.reason})).collect::<Vec<_>>(),
            }),
            Err(e) => json!({"broker": bg, "error": e}),
        });
    }
    Ok(Json(json!({ "results": results })))
}
