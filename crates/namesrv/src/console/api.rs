//! Cluster, topics and consumer groups.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, Query, State};
use serde::Deserialize;
use serde_json::{Value, json};
use sofamq_proto::admin::{
    CreateTopicRequest, DeleteTopicRequest, ListGroupsRequest, ListTopicsRequest,
    ReplicationStatusRequest, ResetOffsetRequest, TopicSpec,
};
use sofamq_proto::v2::MessageType;

use super::auth::Caller;
use super::brokers::{ok, why};
use super::{ApiError, ApiResult, Console};

/// Most topics one list answers (the page says when more exist).
const MAX_TOPICS: usize = 20_000;

/// `GET /console/api/cluster`: every group, every member's own status beside the
/// name server's registration, and the controller's view when configured.
pub(crate) async fn cluster(
    State(c): State<Arc<Console>>,
    Extension(who): Extension<Caller>,
) -> ApiResult {
    let mut groups = Vec::new();
    for g in c.groups() {
        let mut members = Vec::new();
        for m in &g.members {
            let mut row = json!({
                "broker_id": m.broker_id, "address": m.grpc_endpoint,
                "replication_address": m.replication_endpoint,
                "registered_epoch": m.epoch, "heartbeat_age_ms": m.last_heartbeat_age_ms,
            });
            match c.status(&m.grpc_endpoint, who.creds.as_ref()).await {
                Ok(s) => {
                    row["role"] = s.role.into();
                    row["epoch"] = s.epoch.into();
                    row["log_end_offset"] = s.log_end_offset.into();
                    row["durable_offset"] = s.durable_offset.into();
                    row["readable_offset"] = s.readable_offset.into();
                    row["disk_bytes"] = s.disk_bytes.into();
                    row["http_address"] = s.http_addr.into();
                    row["in_sync_slaves"] = s.in_sync_slaves.into();
                    row["min_insync_replicas"] = s.min_insync_replicas.into();
                    row["fenced_reason"] = s.fenced_reason.into();
                }
                Err(e) => row["error"] = why(&e).into(),
            }
            if row["role"] == "master" {
                let r = async {
                    c.admin(&m.grpc_endpoint, who.creds.as_ref())
                        .map_err(|e| e.1)?
                        .replication_status(ReplicationStatusRequest {})
                        .await
                        .map_err(|e| why(&e))
                }
                .await;
                if let Ok(r) = r {
                    let durable = r.into_inner();
                    row["slaves"] = durable
                        .slaves
                        .iter()
                        .map(|s| json!({"name": s.name, "acked_offset": s.acked_offset, "in_sync": s.in_sync,
                            "lag_bytes": durable.durable_offset.saturating_sub(s.acked_offset)}))
                        .collect::<Vec<_>>()
                        .into();
                }
            }
            members.push(row);
        }
        groups.push(json!({"cluster": g.cluster, "group": g.broker_name, "members": members}));
    }
    let controller = if c.config.controllers.is_empty() {
        Value::Null
    } else {
        let client = sofamq_controller::ControllerClient::new(
            c.config.controllers.clone(),
            std::time::Duration::from_secs(3),
        );
        match client.status().await {
            Ok(s) => serde_json::to_value(&s).unwrap_or(Value::Null),
            Err(e) => json!({"error": e.to_string()}),
        }
    };
    Ok(Json(json!({"groups": groups, "controller": controller})))
}

/// `GET /console/api/topics`: the topics of every master, merged by name.
pub(crate) async fn topics(
    State(c): State<Arc<Console>>,
    Extension(who): Extension<Caller>,
) -> ApiResult {
    let mut by_name: BTreeMap<String, Value> = BTreeMap::new();
    let mut errors = Vec::new();
    let masters = c.masters();
    for (group, addr) in &masters {
        let r = async {
            let r = c
                .admin(addr, who.creds.as_ref())
                .map_err(|e| e.1)?
                .list_topics(ListTopicsRequest {})
                .await
                .map_err(|e| why(&e))?
                .into_inner();
            ok(r.status)?;
            Ok::<_, String>(r.topics)
        }
        .await;
        match r {
            Ok(ts) => {
                for t in ts {
                    let Some(spec) = t.spec else { continue };
                    if by_name.len() >= MAX_TOPICS && !by_name.contains_key(&spec.name) {
                        continue;
                    }
                    let queues: Vec<Value> = t
                        .queues
                        .iter()
                        .map(|q| json!({"group": group, "queue_id": q.queue_id, "min_offset": q.min_offset, "max_offset": q.max_offset}))
                        .collect();
                    let count: u64 = t
                        .queues
                        .iter()
                        .map(|q| q.max_offset.saturating_sub(q.min_offset))
                        .sum();
                    let e = by_name.entry(spec.name.clone()).or_insert_with(|| {
                        json!({"name": spec.name, "type": MessageType::try_from(spec.message_type).map(|t| t.as_str_name()).unwrap_or("?"),
                            "perm": spec.perm, "groups": [], "queues": [], "messages": 0u64})
                    });
                    if let Some(a) = e["groups"].as_array_mut() {
                        a.push(group.clone().into());
                    }
                    if let Some(a) = e["queues"].as_array_mut() {
                        a.extend(queues);
                    }
                    e["messages"] = (e["messages"].as_u64().unwrap_or(0) + count).into();
                }
            }
            Err(e) => errors.push(json!({"group": group, "address": addr, "error": e})),
        }
    }
    Ok(Json(json!({
        "topics": by_name.into_values().collect::<Vec<_>>(),
        "masters": masters.len(),
        "errors": errors,
        "truncated_at": MAX_TOPICS,
    })))
}

#[derive(Deserialize)]
pub(crate) struct NewTopic {
    name: String,
    queues: u32,
    #[serde(default)]
    message_type: String,
}

/// `POST /console/api/topics`: creates the topic on every master.
pub(crate) async fn create_topic(
    State(c): State<Arc<Console>>,
    Extension(who): Extension<Caller>,
    Json(t): Json<NewTopic>,
) -> ApiResult {
    let ty = match t.message_type.to_ascii_uppercase().as_str() {
        "" | "NORMAL" => MessageType::Normal,
        "FIFO" => MessageType::Fifo,
        "DELAY" => MessageType::Delay,
        "TRANSACTION" => MessageType::Transaction,
        other => return Err(ApiError::bad(format!("unknown message type '{other}'"))),
    };
    let masters = c.masters();
    if masters.is_empty() {
        return Err(ApiError::upstream(
            "no broker group has a master registered",
        ));
    }
    let mut results = Vec::new();
    for (group, addr) in masters {
        let r = async {
            let r = c
                .admin(&addr, who.creds.as_ref())
                .map_err(|e| e.1)?
                .create_topic(CreateTopicRequest {
                    topic: Some(TopicSpec {
                        name: t.name.clone(),
                        queue_count: t.queues,
                        message_type: ty as i32,
                        perm: 6,
                    }),
                })
                .await
                .map_err(|e| why(&e))?
                .into_inner();
            ok(r.status)
        }
        .await;
        tracing::info!(topic = %t.name, %group, user = ?who.user, ok = r.is_ok(), "console: create topic");
        results.push(json!({"group": group, "error": r.err()}));
    }
    Ok(Json(json!({ "results": results })))
}

#[derive(Deserialize)]
pub(crate) struct Name {
    name: String,
}

/// `POST /console/api/topics/delete`: deletes the topic on every master.
pub(crate) async fn delete_topic(
    State(c): State<Arc<Console>>,
    Extension(who): Extension<Caller>,
    Json(t): Json<Name>,
) -> ApiResult {
    let mut results = Vec::new();
    for (group, addr) in c.masters() {
        let r = async {
            let r = c
                .admin(&addr, who.creds.as_ref())
                .map_err(|e| e.1)?
                .delete_topic(DeleteTopicRequest {
                    name: t.name.clone(),
                })
                .await
                .map_err(|e| why(&e))?
                .into_inner();
            ok(r.status).map(|()| r.existed)
        }
        .await;
        tracing::info!(topic = %t.name, %group, user = ?who.user, ok = r.is_ok(), "console: delete topic");
        results.push(match r {
            Ok(existed) => json!({"group": group, "existed": existed}),
            Err(e) => json!({"group": group, "error": e}),
        });
    }
    Ok(Json(json!({ "results": results })))
}

#[derive(Deserialize)]
pub(crate) struct GroupQuery {
    #[serde(default)]
    group: String,
}

/// `GET /console/api/groups[?group=G]`: consumer groups of every master, with per-queue
/// progress when one group is asked for.
pub(crate) async fn groups(
    State(c): State<Arc<Console>>,
    Extension(who): Extension<Caller>,
    Query(q): Query<GroupQuery>,
) -> ApiResult {
    let mut out: BTreeMap<String, Value> = BTreeMap::new();
    let mut errors = Vec::new();
    for (bg, addr) in c.masters() {
        let r = async {
            let r = c
                .admin(&addr, who.creds.as_ref())
                .map_err(|e| e.1)?
                .list_groups(ListGroupsRequest {
                    group: q.group.clone(),
                })
                .await
                .map_err(|e| why(&e))?
                .into_inner();
            ok(r.status)?;
            Ok::<_, String>(r.groups)
        }
        .await;
        match r {
            Ok(gs) => {
                for g in gs {
                    let e = out.entry(g.group.clone()).or_insert_with(
                        || json!({"group": g.group, "topics": [], "lag": 0u64, "queues": [], "inflight": 0u64, "consumers": []}),
                    );
                    if let Some(a) = e["consumers"].as_array_mut() {
                        a.extend(g.consumers.iter().map(|c| {
                            json!({"broker": bg, "client_id": c.client_id, "last_seen_ms_ago": c.last_seen_ms_ago})
                        }));
                    }
                    e["lag"] = (e["lag"].as_u64().unwrap_or(0) + g.lag).into();
                    let inflight: u64 = g.queues.iter().map(|x| u64::from(x.inflight)).sum();
                    e["inflight"] = (e["inflight"].as_u64().unwrap_or(0) + inflight).into();
                    if let Some(a) = e["topics"].as_array_mut() {
                        for t in g.topics {
                            if !a.iter().any(|x| x == &t) {
                                a.push(t.into());
                            }
                        }
                    }
                    if !q.group.is_empty()
                        && let Some(a) = e["queues"].as_array_mut()
                    {
                        a.extend(g.queues.iter().map(|x| json!({
                            "broker": bg, "topic": x.topic, "queue_id": x.queue_id, "committed_offset": x.committed_offset,
                            "scan_offset": x.scan_offset, "max_offset": x.max_offset, "lag": x.lag, "inflight": x.inflight,
                        })));
                    }
                }
            }
            Err(e) => errors.push(json!({"group": bg, "address": addr, "error": e})),
        }
    }
    Ok(Json(
        json!({"groups": out.into_values().collect::<Vec<_>>(), "errors": errors}),
    ))
}

#[derive(Deserialize)]
pub(crate) struct Reset {
    group: String,
    topic: String,
    /// `earliest`, `latest` or `time`.
    to: String,
    #[serde(default)]
    timestamp_ms: i64,
}

/// `POST /console/api/groups/reset`: moves the group's offsets on every master.
pub(crate) async fn reset_offset(
    State(c): State<Arc<Console>>,
    Extension(who): Extension<Caller>,
    Json(r): Json<Reset>,
) -> ApiResult {
    let to = match r.to.as_str() {
        "earliest" => 1,
        "latest" => 2,
        "time" => 3,
        _ => return Err(ApiError::bad("to: earliest, latest or time")),
    };
    let mut results = Vec::new();
    for (bg, addr) in c.masters() {
        let res = async {
            let x = c
                .admin(&addr, who.creds.as_ref())
                .map_err(|e| e.1)?
                .reset_offset(ResetOffsetRequest {
                    group: r.group.clone(),
                    topic: r.topic.clone(),
                    to,
                    timestamp_ms: r.timestamp_ms,
                })
                .await
                .map_err(|e| why(&e))?
                .into_inner();
            ok(x.status).map(|()| {
                x.queues
                    .iter()
                    .map(|q| json!({"queue_id": q.queue_id, "offset": q.offset}))
                    .collect::<Vec<_>>()
            })
        }
        .await;
        tracing::info!(group = %r.group, topic = %r.topic, to = %r.to, broker = %bg, user = ?who.user, ok = res.is_ok(), "console: reset offset");
        results.push(match res {
            Ok(q) => json!({"broker": bg, "queues": q}),
            Err(e) => json!({"broker": bg, "error": e}),
        });
    }
    Ok(Json(json!({ "results": results })))
}
