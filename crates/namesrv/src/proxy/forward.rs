//! The client RPCs in proxy mode: each finds its broker group (from the request, the
//! handle it carries, or the topic's route), then goes to that group's current master
//! through [`Proxy::hold`].

use std::hash::Hasher;
use std::time::{Duration, Instant};

use fnv::FnvHasher;

use sofamq_proto::namesrv::{PERM_READ, PERM_WRITE};
use sofamq_proto::v2::{
    AckMessageRequest, AckMessageResponse, AckMessageResultEntry, ChangeInvisibleDurationRequest,
    ChangeInvisibleDurationResponse, Code, EndTransactionRequest, EndTransactionResponse,
    Endpoints, ForwardMessageToDeadLetterQueueRequest, ForwardMessageToDeadLetterQueueResponse,
    GetOffsetRequest, GetOffsetResponse, HeartbeatRequest, HeartbeatResponse,
    NotifyClientTerminationRequest, NotifyClientTerminationResponse, PullMessageRequest,
    PullMessageResponse, QueryAssignmentRequest, QueryAssignmentResponse, QueryOffsetRequest,
    QueryOffsetResponse, RecallMessageRequest, RecallMessageResponse, ReceiveMessageRequest,
    ReceiveMessageResponse, SendMessageRequest, SendMessageResponse, Status, UpdateOffsetRequest,
    UpdateOffsetResponse, pull_message_response, receive_message_response,
};
use tokio_stream::StreamExt;
use tonic::metadata::MetadataMap;

use super::handles;
use super::{NoAnswer, Proxy, Verdict, forward_request, not_master, unreachable};
use sofamq_proto::codes::NOT_HELD_HEADER;
use sofamq_server::status::{ok, status};

/// Boxed response stream.
pub type BoxStream<T> =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<T, tonic::Status>> + Send + 'static>>;

fn no_answer_status(e: &NoAnswer) -> Status {
    status(e.code, e.message.clone())
}

/// A transport failure as a status for the client (when the hold ran out on it).
fn transport(e: &tonic::Status) -> Status {
    status(
        Code::HaNotAvailable,
        format!("proxy: broker unreachable: {}", e.message()),
    )
}

/// A broker group that serves `topic` with permission `perm` and has a live master
/// (round robin), waiting up to `deadline` for one. `Err` when no group serves the topic.
async fn group_for_topic(
    p: &Proxy,
    topic: &str,
    perm: u32,
    deadline: Instant,
) -> Result<(String, u32), Status> {
    let retry = Duration::from_millis(p.options().retry_ms);
    loop {
        let routes: Vec<_> = p
            .topic_routes(topic)
            .into_iter()
            .filter(|r| r.topic.perm & perm != 0 && r.topic.queue_count > 0)
            .collect();
        if !routes.is_empty() {
            let r = &routes[p.pick(routes.len())];
            return Ok((r.broker_name.clone(), r.topic.queue_count));
        }
        no_group_yet(p, topic, deadline, retry).await?;
    }
}

/// No group can take `topic` now: `TopicNotFound` when none knows it (nor did one
/// recently), `HaNotAvailable` when `deadline` is too near, else a pause of `retry`.
async fn no_group_yet(
    p: &Proxy,
    topic: &str,
    deadline: Instant,
    retry: Duration,
) -> Result<(), Status> {
    let known = p
        .registry()
        .groups(None, Instant::now())
        .iter()
        .any(|g| g.topics.iter().any(|t| t.name == topic));
    if !known && !p.seen_recently(topic) {
        return Err(status(
            Code::TopicNotFound,
            format!("topic '{topic}' not found"),
        ));
    }
    if Instant::now() + retry > deadline {
        return Err(status(
            Code::HaNotAvailable,
            format!("proxy: no broker group serving '{topic}' has a master now"),
        ));
    }
    tokio::time::sleep(retry).await;
    Ok(())
}

/// The broker group for a send and the topic's queue count there. With a `key` (the
/// message group of a FIFO send, else the first message id) the group is the one of
/// highest rendezvous score for it among the groups that may take a send
/// ([`Proxy::sendable`]): every name server picks the same group for the same id, so a
/// client's retry through another name server meets the first attempt's idempotence
/// window, and adding or removing a group moves only the keys it takes or held. Without a
/// key: round robin over the groups with a master. Waits up to `deadline` for a group, and
/// for `start_wait_ms` after the name server started (its registry may lack a group), but
/// never past `deadline`.
async fn group_for_send(
    p: &Proxy,
    topic: &str,
    key: Option<&str>,
    deadline: Instant,
    refused: &[String],
) -> Result<(String, u32), Status> {
    let retry = Duration::from_millis(p.options().retry_ms);
    // Just started: wait for the registry to fill (not past the client's deadline; then
    // choose from what it holds).
    let warm = p.warm_at().min(deadline);
    if Instant::now() < warm {
        tokio::time::sleep_until(warm.into()).await;
    }
    loop {
        let now = Instant::now();
        let mut groups = p.sendable(p.registry().topic_groups(topic, PERM_WRITE, now), now);
        groups.retain(|g| !refused.contains(&g.broker_name));
        let chosen = match key {
            Some(k) => groups.iter().max_by_key(|g| rendezvous(k, &g.broker_name)),
            None => {
                let live: Vec<_> = groups.iter().filter(|g| g.master).collect();
                (!live.is_empty()).then(|| live[p.pick(live.len())])
            }
        };
        if let Some(g) = chosen {
            // Keeps the topic known to `seen_recently` while its groups fail over.
            p.mark_seen(topic);
            return Ok((g.broker_name.clone(), g.queue_count));
        }
        no_group_yet(p, topic, deadline, retry).await?;
    }
}

/// The write queues of `topic` on broker `group`, from any live member's registration
/// (its master may be failing over: the send is then held for it).
fn queues_of(p: &Proxy, topic: &str, group: &str) -> Option<u32> {
    p.registry()
        .topic_groups(topic, PERM_WRITE, Instant::now())
        .into_iter()
        .find(|g| g.broker_name == group)
        .map(|g| g.queue_count)
}

/// A score of `group` for `key`: the group of highest score takes the key.
fn rendezvous(key: &str, group: &str) -> u64 {
    // FNV-1a 64 of the key; its hash, with the low byte flipped, seeds the FNV-1a 64 of the
    // group. The flip is an xor without FNV's multiply, so this is not the hash of
    // `key ++ 0xff ++ group` and needs the seeded hasher (`with_key`): scores must not change,
    // or keys would move to other broker groups on upgrade (pinned by a test).
    let mut k = FnvHasher::default();
    k.write(key.as_bytes());
    let mut g = FnvHasher::with_key(k.finish() ^ 0xff);
    g.write(group.as_bytes());
    let h = g.finish();
    // A finalizer (splitmix64's), so that near-identical names still spread.
    let mut z = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A send answer meaning "not acked, may be stored" (replication or persistence not
/// confirmed).
fn maybe_stored(status: Option<&Status>) -> bool {
    status.is_some_and(|s| {
        s.code == Code::SlavePersistenceTimeout as i32
            || s.code == Code::MasterPersistenceTimeout as i32
    })
}

/// SendMessage: to a broker group of the topic (the hash of the message group for FIFO).
///
/// A group whose writable master answers that it takes no writes (too few in-sync replicas)
/// and holds none of the request's messages (`NOT_HELD_HEADER`) cannot have them: a
/// non-FIFO request then moves to the next group of the topic instead of being held until
/// the client's deadline (an official client's retry would come back to the same group).
/// FIFO requests stay, to keep their message group's order in one broker group.
pub async fn send_message(
    p: &Proxy,
    md: MetadataMap,
    mut req: SendMessageRequest,
) -> SendMessageResponse {
    let fail = |s: Status| SendMessageResponse {
        status: Some(s),
        entries: Vec::new(),
    };
    let first = req.messages.first();
    let Some(topic) = first
        .and_then(|m| m.topic.as_ref())
        .map(|t| t.name.clone())
        .filter(|t| !t.is_empty())
    else {
        return fail(status(Code::BadRequest, "no message, or no topic"));
    };
    let key = first
        .and_then(|m| m.system_properties.as_ref())
        .and_then(|s| s.message_group.clone());
    let movable = key.is_none();
    let deadline = p.hold_deadline(&md);
    let timeout = p.forward_timeout(&md);
    let ids: Vec<String> = req
        .messages
        .iter()
        .filter_map(|m| m.system_properties.as_ref())
        .map(|s| s.message_id.clone())
        .filter(|id| !id.is_empty())
        .collect();
    // A retry of a send goes where the first attempt went (it may be stored there).
    let mut pinned = p
        .pins()
        .group(ids.iter().map(String::as_str), Instant::now())
        .and_then(|g| queues_of(p, &topic, &g).map(|q| (g, q)));
    let key = key.or_else(|| ids.first().cloned());
    // Groups that answered "not held, no writes" for this request.
    let mut refused: Vec<String> = Vec::new();
    loop {
        let (group, queues) = match pinned.take() {
            Some(g) => g,
            None => match group_for_send(p, &topic, key.as_deref(), deadline, &refused).await {
                Ok(g) => g,
                Err(s) => return fail(s),
            },
        };
        p.pins()
            .remember(ids.iter().map(String::as_str), &group, Instant::now());
        // The client chose a queue of the route it was given; keep it inside this group's.
        for m in &mut req.messages {
            if let Some(sp) = m.system_properties.as_mut()
                && (sp.queue_id < 0 || sp.queue_id as u32 >= queues)
            {
                sp.queue_id = (sp.queue_id.unsigned_abs() % queues.max(1)) as i32;
            }
        }
        let r = p
            .hold(&group, deadline, |mut c, _| {
                let r = forward_request(&md, req.clone(), timeout);
                let g = group.clone();
                async move {
                    match c.send_message(r).await {
                        Ok(resp) => {
                            let not_held = resp.metadata().get(NOT_HELD_HEADER).is_some();
                            let resp = resp.into_inner();
                            let st = resp.status.as_ref();
                            if movable && not_held && not_master(st) {
                                Verdict::Done((resp, true))
                            } else if not_master(st) || maybe_stored(st) {
                                // A send is idempotent by message id: "may be stored"
                                // answers are retried too (the group's dedup window answers
                                // a stored copy with its receipt once it is replicated),
                                // for clients that never retry.
                                let why = st.map(|s| s.message.clone());
                                Verdict::Retry((resp, false), why.unwrap_or_default())
                            } else {
                                Verdict::Done((resp, false))
                            }
                        }
                        Err(e) if unreachable(&e) => {
                            let why = e.message().to_string();
                            Verdict::Retry((fail(transport(&e)), false), why)
                        }
                        Err(e) => Verdict::Done((
                            fail(status(
                                Code::ProxyTimeout,
                                format!("proxy: SendMessage to {g}: {}", e.message()),
                            )),
                            false,
                        )),
                    }
                }
            })
            .await;
        match r {
            Ok((resp, true)) => {
                refused.push(group.clone());
                let now = Instant::now();
                let other = p
                    .sendable(p.registry().topic_groups(&topic, PERM_WRITE, now), now)
                    .iter()
                    .any(|g| !refused.contains(&g.broker_name));
                if !other || Instant::now() >= deadline {
                    return resp;
                }
                p.counters
                    .moved
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::debug!(%topic, %group, "send moved: its group takes no writes and holds none of it");
            }
            Ok((resp, false)) => return resp,
            Err(e) => return fail(no_answer_status(&e)),
        }
    }
}

/// A unary RPC to `group`'s master, held while it has none. `call` makes one try;
/// `status_of` finds the answer's status; `fail` builds an answer from a status.
macro_rules! unary {
    ($p:expr, $md:expr, $group:expr, $req:expr, $method:ident, $fail:expr) => {{
        let p: &Proxy = $p;
        let md: &MetadataMap = &$md;
        let group: String = $group;
        let req = $req;
        let deadline = p.hold_deadline(md);
        let timeout = p.forward_timeout(md);
        let fail = $fail;
        let r = p
            .hold(&group, deadline, |mut c, _| {
                let r = forward_request(md, req.clone(), timeout);
                let g = group.clone();
                async move {
                    match c.$method(r).await {
                        Ok(resp) => {
                            let resp = resp.into_inner();
                            let s: Option<&Status> = resp.status.as_ref();
                            if not_master(s) {
                                let why = s.map(|s| s.message.clone()).unwrap_or_default();
                                Verdict::Retry(resp, why)
                            } else {
                                Verdict::Done(resp)
                            }
                        }
                        Err(e) if unreachable(&e) => {
                            let why = e.message().to_string();
                            Verdict::Retry(fail(transport(&e)), why)
                        }
                        Err(e) => Verdict::Done(fail(status(
                            Code::ProxyTimeout,
                            format!("proxy: {} to {g}: {}", stringify!($method), e.message()),
                        ))),
                    }
                }
            })
            .await;
        r.unwrap_or_else(|e| fail(no_answer_status(&e)))
    }};
}

fn resource_name(r: Option<&sofamq_proto::v2::Resource>) -> String {
    r.map(|t| t.name.clone()).unwrap_or_default()
}

/// The group of a request that names no group: the first broker group of its topic.
fn first_group(p: &Proxy, topic: &str) -> Option<String> {
    p.topic_routes(topic)
        .first()
        .map(|r| r.broker_name.clone())
        .or_else(|| {
            p.registry()
                .groups(None, Instant::now())
                .into_iter()
                .find(|g| g.topics.iter().any(|t| t.name == topic))
                .map(|g| g.broker_name)
        })
}

/// AckMessage: each entry to the group its handle names (entries of several groups are
/// split into one request per group and the answers merged).
pub async fn ack_message(p: &Proxy, md: MetadataMap, req: AckMessageRequest) -> AckMessageResponse {
    let topic = resource_name(req.topic.as_ref());
    let fallback = first_group(p, &topic);
    let mut by_group: Vec<(String, Vec<_>)> = Vec::new();
    let mut results = Vec::new();
    for mut e in req.entries.clone() {
        let (g, inner) = handles::unwrap(&e.receipt_handle);
        let Some(g) = g.map(str::to_string).or_else(|| fallback.clone()) else {
            results.push(AckMessageResultEntry {
                message_id: e.message_id.clone(),
                receipt_handle: e.receipt_handle.clone(),
                status: Some(status(
                    Code::InvalidReceiptHandle,
                    "proxy: the receipt handle names no broker group",
                )),
            });
            continue;
        };
        e.receipt_handle = inner.to_string();
        match by_group.iter_mut().find(|(x, _)| *x == g) {
            Some((_, v)) => v.push(e),
            None => by_group.push((g, vec![e])),
        }
    }
    let mut overall: Option<Status> = None;
    for (group, entries) in by_group {
        let one = AckMessageRequest {
            entries,
            ..req.clone()
        };
        let fail = |s: Status| AckMessageResponse {
            status: Some(s),
            entries: Vec::new(),
        };
        let resp = unary!(p, md, group.clone(), one.clone(), ack_message, fail);
        if resp.entries.is_empty() {
            // The whole request failed: every entry gets that status.
            let s = resp
                .status
                .clone()
                .unwrap_or_else(|| status(Code::InternalError, "no status"));
            for e in &one.entries {
                results.push(AckMessageResultEntry {
                    message_id: e.message_id.clone(),
                    receipt_handle: handles::wrap(&group, &e.receipt_handle),
                    status: Some(s.clone()),
                });
            }
        } else {
            for mut e in resp.entries {
                e.receipt_handle = handles::wrap(&group, &e.receipt_handle);
                results.push(e);
            }
        }
        if overall.is_none()
            || resp
                .status
                .as_ref()
                .is_some_and(|s| s.code != Code::Ok as i32)
        {
            overall = resp.status;
        }
    }
    let all_ok = results
        .iter()
        .all(|e| e.status.as_ref().is_some_and(|s| s.code == Code::Ok as i32));
    AckMessageResponse {
        status: Some(if all_ok {
            ok()
        } else {
            overall
                .filter(|s| s.code != Code::Ok as i32)
                .or_else(|| {
                    results
                        .iter()
                        .find_map(|e| e.status.clone().filter(|s| s.code != Code::Ok as i32))
                })
                .unwrap_or_else(ok)
        }),
        entries: results,
    }
}

/// ChangeInvisibleDuration: to the group its handle names; the new handle is wrapped.
pub async fn change_invisible_duration(
    p: &Proxy,
    md: MetadataMap,
    mut req: ChangeInvisibleDurationRequest,
) -> ChangeInvisibleDurationResponse {
    let fail = |s: Status| ChangeInvisibleDurationResponse {
        status: Some(s),
        receipt_handle: String::new(),
    };
    let topic = resource_name(req.topic.as_ref());
    let (g, inner) = handles::unwrap(&req.receipt_handle);
    let Some(group) = g.map(str::to_string).or_else(|| first_group(p, &topic)) else {
        return fail(status(
            Code::InvalidReceiptHandle,
            "proxy: the receipt handle names no broker group",
        ));
    };
    req.receipt_handle = inner.to_string();
    let mut resp = unary!(p, md, group.clone(), req, change_invisible_duration, fail);
    if !resp.receipt_handle.is_empty() {
        resp.receipt_handle = handles::wrap(&group, &resp.receipt_handle);
    }
    resp
}

/// ForwardMessageToDeadLetterQueue: to the group its handle names.
pub async fn forward_to_dlq(
    p: &Proxy,
    md: MetadataMap,
    mut req: ForwardMessageToDeadLetterQueueRequest,
) -> ForwardMessageToDeadLetterQueueResponse {
    let fail = |s: Status| ForwardMessageToDeadLetterQueueResponse { status: Some(s) };
    let topic = resource_name(req.topic.as_ref());
    let (g, inner) = handles::unwrap(&req.receipt_handle);
    let Some(group) = g.map(str::to_string).or_else(|| first_group(p, &topic)) else {
        return fail(status(
            Code::InvalidReceiptHandle,
            "proxy: the receipt handle names no broker group",
        ));
    };
    req.receipt_handle = inner.to_string();
    unary!(
        p,
        md,
        group,
        req,
        forward_message_to_dead_letter_queue,
        fail
    )
}

/// EndTransaction: to the group the transaction id names.
pub async fn end_transaction(
    p: &Proxy,
    md: MetadataMap,
    req: EndTransactionRequest,
) -> EndTransactionResponse {
    let fail = |s: Status| EndTransactionResponse { status: Some(s) };
    let topic = resource_name(req.topic.as_ref());
    let Some(group) =
        handles::group_of(&req.transaction_id, "x1").or_else(|| first_group(p, &topic))
    else {
        return fail(status(
            Code::InvalidTransactionId,
            "proxy: the transaction id names no broker group",
        ));
    };
    unary!(p, md, group, req, end_transaction, fail)
}

/// RecallMessage: to the group the recall handle names.
pub async fn recall_message(
    p: &Proxy,
    md: MetadataMap,
    req: RecallMessageRequest,
) -> RecallMessageResponse {
    let fail = |s: Status| RecallMessageResponse {
        status: Some(s),
        message_id: String::new(),
    };
    let topic = resource_name(req.topic.as_ref());
    let Some(group) =
        handles::group_of(&req.recall_handle, "r1").or_else(|| first_group(p, &topic))
    else {
        return fail(status(
            Code::TopicNotFound,
            format!("no broker group serves topic '{topic}'"),
        ));
    };
    unary!(p, md, group, req, recall_message, fail)
}

fn queue_group(mq: Option<&sofamq_proto::v2::MessageQueue>) -> Option<String> {
    mq.and_then(|q| q.broker.as_ref())
        .map(|b| b.name.clone())
        .filter(|n| !n.is_empty())
}

/// UpdateOffset: to the group of the queue.
pub async fn update_offset(
    p: &Proxy,
    md: MetadataMap,
    req: UpdateOffsetRequest,
) -> UpdateOffsetResponse {
    let fail = |s: Status| UpdateOffsetResponse { status: Some(s) };
    let Some(group) = queue_group(req.message_queue.as_ref()) else {
        return fail(status(Code::BadRequest, "message queue names no broker"));
    };
    unary!(p, md, group, req, update_offset, fail)
}

/// GetOffset: to the group of the queue.
pub async fn get_offset(p: &Proxy, md: MetadataMap, req: GetOffsetRequest) -> GetOffsetResponse {
    let fail = |s: Status| GetOffsetResponse {
        status: Some(s),
        offset: 0,
    };
    let Some(group) = queue_group(req.message_queue.as_ref()) else {
        return fail(status(Code::BadRequest, "message queue names no broker"));
    };
    unary!(p, md, group, req, get_offset, fail)
}

/// QueryOffset: to the group of the queue.
pub async fn query_offset(
    p: &Proxy,
    md: MetadataMap,
    req: QueryOffsetRequest,
) -> QueryOffsetResponse {
    let fail = |s: Status| QueryOffsetResponse {
        status: Some(s),
        offset: 0,
    };
    let Some(group) = queue_group(req.message_queue.as_ref()) else {
        return fail(status(Code::BadRequest, "message queue names no broker"));
    };
    unary!(p, md, group, req, query_offset, fail)
}

/// Heartbeat: to every master (consumer groups are tracked per broker group); OK when one
/// answered OK or none is registered.
pub async fn heartbeat(p: &Proxy, md: MetadataMap, req: HeartbeatRequest) -> HeartbeatResponse {
    let masters = p.registry().masters(Instant::now());
    let timeout = p.forward_timeout(&md).min(Duration::from_secs(3));
    let mut set = tokio::task::JoinSet::new();
    for (_, addr) in masters {
        let Ok(mut c) = p.client(&addr) else { continue };
        let r = forward_request(&md, req.clone(), timeout);
        set.spawn(async move { c.heartbeat(r).await.map(|r| r.into_inner()) });
    }
    let mut last: Option<Status> = None;
    let mut any_ok = set.is_empty();
    while let Some(r) = set.join_next().await {
        match r {
            Ok(Ok(resp))
                if resp
                    .status
                    .as_ref()
                    .is_some_and(|s| s.code == Code::Ok as i32) =>
            {
                any_ok = true;
            }
            Ok(Ok(resp)) => last = resp.status,
            Ok(Err(e)) => last = Some(transport(&e)),
            Err(_) => {}
        }
    }
    HeartbeatResponse {
        status: Some(if any_ok {
            ok()
        } else {
            last.unwrap_or_else(ok)
        }),
    }
}

/// NotifyClientTermination: to every master, best effort.
pub async fn notify_client_termination(
    p: &Proxy,
    md: MetadataMap,
    req: NotifyClientTerminationRequest,
) -> NotifyClientTerminationResponse {
    let timeout = p.forward_timeout(&md).min(Duration::from_secs(3));
    let mut set = tokio::task::JoinSet::new();
    for (_, addr) in p.registry().masters(Instant::now()) {
        let Ok(mut c) = p.client(&addr) else { continue };
        let r = forward_request(&md, req.clone(), timeout);
        set.spawn(async move {
            let _ = c.notify_client_termination(r).await;
        });
    }
    while set.join_next().await.is_some() {}
    NotifyClientTerminationResponse { status: Some(ok()) }
}

/// QueryAssignment: to one broker group of the topic (a broker answers with the queues of
/// every group, from the topic's route), each queue's endpoints replaced by `endpoints`
/// (this proxy).
pub async fn query_assignment(
    p: &Proxy,
    md: MetadataMap,
    req: QueryAssignmentRequest,
    endpoints: Endpoints,
) -> QueryAssignmentResponse {
    let topic = resource_name(req.topic.as_ref());
    let fail = |s: Status| QueryAssignmentResponse {
        status: Some(s),
        assignments: Vec::new(),
    };
    let deadline = p.hold_deadline(&md);
    let group = match group_for_topic(p, &topic, PERM_READ, deadline).await {
        Ok((g, _)) => g,
        Err(s) => return fail(s),
    };
    let mut resp = unary!(p, md, group, req, query_assignment, fail);
    for a in &mut resp.assignments {
        if let Some(b) = a.message_queue.as_mut().and_then(|q| q.broker.as_mut()) {
            b.endpoints = Some(endpoints.clone());
        }
    }
    resp
}

/// ReceiveMessage: streamed from the queue's group; receipt handles wrapped. Held while the
/// group has no master (the first answer is awaited before anything is passed on, so a
/// "not master" answer is retried too).
pub async fn receive_message(
    p: &Proxy,
    md: MetadataMap,
    req: ReceiveMessageRequest,
) -> BoxStream<ReceiveMessageResponse> {
    let one = |s: Status| -> BoxStream<ReceiveMessageResponse> {
        Box::pin(tokio_stream::once(Ok(ReceiveMessageResponse {
            content: Some(receive_message_response::Content::Status(s)),
        })))
    };
    let Some(group) = queue_group(req.message_queue.as_ref()) else {
        return one(status(Code::BadRequest, "message queue names no broker"));
    };
    let deadline = p.hold_deadline(&md);
    let timeout = p.forward_timeout(&md);
    let g = group.clone();
    let r = p
        .hold(&group, deadline, |mut c, _| {
            let r = forward_request(&md, req.clone(), timeout);
            async move {
                let mut s = match c.receive_message(r).await {
                    Ok(s) => s.into_inner(),
                    Err(e) if unreachable(&e) => {
                        let why = e.message().to_string();
                        return Verdict::Retry(Err(transport(&e)), why);
                    }
                    Err(e) => return Verdict::Done(Err(status(Code::ProxyTimeout, e.message()))),
                };
                let first = s.next().await;
                match first {
                    Some(Ok(ReceiveMessageResponse {
                        content: Some(receive_message_response::Content::Status(st)),
                    })) if not_master(Some(&st)) => {
                        let why = st.message.clone();
                        Verdict::Retry(Err(st), why)
                    }
                    Some(Err(e)) if unreachable(&e) => {
                        let why = e.message().to_string();
                        Verdict::Retry(Err(transport(&e)), why)
                    }
                    first => Verdict::Done(Ok((first, s))),
                }
            }
        })
        .await;
    match r {
        Err(e) => one(no_answer_status(&e)),
        Ok(Err(s)) => one(s),
        Ok(Ok((first, rest))) => {
            let rest = tokio_stream::iter(first).chain(rest);
            Box::pin(rest.map(move |item| item.map(|r| wrap_receive(&g, r))))
        }
    }
}

fn wrap_receive(group: &str, mut r: ReceiveMessageResponse) -> ReceiveMessageResponse {
    if let Some(receive_message_response::Content::Message(m)) = r.content.as_mut()
        && let Some(sp) = m.system_properties.as_mut()
        && let Some(h) = sp.receipt_handle.as_mut()
    {
        *h = handles::wrap(group, h);
    }
    r
}

/// PullMessage: streamed from the queue's group.
pub async fn pull_message(
    p: &Proxy,
    md: MetadataMap,
    req: PullMessageRequest,
) -> BoxStream<PullMessageResponse> {
    let one = |s: Status| -> BoxStream<PullMessageResponse> {
        Box::pin(tokio_stream::once(Ok(PullMessageResponse {
            content: Some(pull_message_response::Content::Status(s)),
        })))
    };
    let Some(group) = queue_group(req.message_queue.as_ref()) else {
        return one(status(Code::BadRequest, "message queue names no broker"));
    };
    let deadline = p.hold_deadline(&md);
    let timeout = p.forward_timeout(&md);
    let r = p
        .hold(&group, deadline, |mut c, _| {
            let r = forward_request(&md, req.clone(), timeout);
            async move {
                match c.pull_message(r).await {
                    Ok(s) => Verdict::Done(Ok(s.into_inner())),
                    Err(e) if unreachable(&e) => {
                        let why = e.message().to_string();
                        Verdict::Retry(Err(transport(&e)), why)
                    }
                    Err(e) => Verdict::Done(Err(status(Code::ProxyTimeout, e.message()))),
                }
            }
        })
        .await;
    match r {
        Err(e) => one(no_answer_status(&e)),
        Ok(Err(s)) => one(s),
        Ok(Ok(s)) => Box::pin(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{Registry, RegistryLimits};
    use std::sync::Arc;

    fn proxy(start_wait_ms: u64) -> Proxy {
        let reg = Registry::new(RegistryLimits::from(&crate::NamesrvConfig::default()));
        reg.register(
            &crate::registry::tests::req("broker-a", 0, 1),
            Instant::now(),
        )
        .unwrap();
        let opts = super::super::ProxyOptions {
            start_wait_ms,
            ..Default::default()
        };
        Proxy::new(Arc::new(reg), opts).unwrap()
    }

    #[tokio::test]
    async fn a_just_started_proxy_waits_before_choosing_but_not_past_the_deadline() {
        let p = proxy(400);
        let t0 = Instant::now();
        // A short deadline: chosen at the deadline, from what the registry holds.
        let g = group_for_send(&p, "t", Some("id-1"), t0 + Duration::from_millis(100), &[]).await;
        let took = t0.elapsed();
        assert_eq!(g.unwrap().0, "broker-a");
        assert!(
            took >= Duration::from_millis(90) && took < Duration::from_millis(350),
            "{took:?}"
        );
        // A long one: chosen once the start wait is over.
        let g = group_for_send(&p, "t", Some("id-2"), t0 + Duration::from_secs(10), &[]).await;
        let took = t0.elapsed();
        assert_eq!(g.unwrap().0, "broker-a");
        assert!(took >= Duration::from_millis(390), "{took:?}");
        // Without a start wait: at once.
        let p = proxy(0);
        let t1 = Instant::now();
        group_for_send(&p, "t", Some("id-3"), t1 + Duration::from_secs(10), &[])
            .await
            .unwrap();
        assert!(t1.elapsed() < Duration::from_millis(100));
    }

    fn pick<'a>(key: &str, groups: &[&'a str]) -> &'a str {
        groups
            .iter()
            .copied()
            .max_by_key(|g| rendezvous(key, g))
            .unwrap()
    }

    #[test]
    fn rendezvous_scores_are_pinned() {
        // A key keeps its broker group across proxy versions (retries and FIFO groups).
        assert_eq!(rendezvous("order-42", "broker-a"), 0x6543_4d46_6719_3e0e);
        assert_eq!(rendezvous("order-42", "broker-b"), 0x5e01_9001_d4fe_2847);
        assert_eq!(rendezvous("k", "broker-a"), 0x9b0c_1603_1528_8a59);
    }

    #[test]
    fn rendezvous_spreads_and_moves_only_what_it_must() {
        let three = ["broker-a", "broker-b", "broker-c"];
        let keys: Vec<String> = (0..3000).map(|i| format!("id-{i}")).collect();
        let mut counts = std::collections::HashMap::new();
        for k in &keys {
            *counts.entry(pick(k, &three)).or_insert(0) += 1;
        }
        for g in three {
            let n = counts[g];
            assert!((800..1200).contains(&n), "{g}: {n} of 3000");
        }
        // The order the groups are listed in does not matter.
        let reversed = ["broker-c", "broker-b", "broker-a"];
        assert!(keys.iter().all(|k| pick(k, &three) == pick(k, &reversed)));
        // Without broker-c, only its keys move; with a fourth group, keys move only to it.
        let two = ["broker-a", "broker-b"];
        let four = ["broker-a", "broker-b", "broker-c", "broker-d"];
        for k in &keys {
            let before = pick(k, &three);
            if before != "broker-c" {
                assert_eq!(pick(k, &two), before, "{k}");
            }
            let after = pick(k, &four);
            assert!(after == before || after == "broker-d", "{k}");
        }
    }
}
