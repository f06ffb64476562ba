//! `sofamq.admin.v1.BrokerAdmin`: topic management, status and raw queue reads
//! for operators and tests.

use sofamq_proto::admin::broker_admin_server::BrokerAdmin;
use sofamq_proto::admin::*;
use sofamq_proto::v2::MessageType;
use tonic::{Request, Response};

use crate::broker::Broker;
use crate::error::{BrokerError, ok_status};
use crate::topics::{TopicConfig, TopicType};
use crate::validate::keys;

type RpcResult<T> = Result<Response<T>, tonic::Status>;

/// The gRPC adapter for administration.
pub struct AdminService {
    broker: Broker,
}

impl AdminService {
    /// Wraps `broker`.
    pub fn new(broker: Broker) -> Self {
        Self { broker }
    }
}

fn topic_type(t: i32) -> Result<TopicType, BrokerError> {
    match MessageType::try_from(t).unwrap_or(MessageType::Unspecified) {
        MessageType::Unspecified | MessageType::Normal => Ok(TopicType::Normal),
        MessageType::Fifo => Ok(TopicType::Fifo),
        MessageType::Delay => Ok(TopicType::Delay),
        MessageType::Transaction => Ok(TopicType::Transaction),
        other => Err(BrokerError::BadRequest(format!(
            "topic type {} is not supported",
            other.as_str_name()
        ))),
    }
}

fn spec(cfg: &TopicConfig) -> TopicSpec {
    TopicSpec {
        name: cfg.name.clone(),
        queue_count: cfg.queue_count,
        message_type: MessageType::from(cfg.topic_type) as i32,
        perm: cfg.perm,
    }
}

#[tonic::async_trait]
impl BrokerAdmin for AdminService {
    async fn create_topic(
        &self,
        request: Request<CreateTopicRequest>,
    ) -> RpcResult<CreateTopicResponse> {
        let t = request.into_inner().topic.unwrap_or_default();
        let result = match topic_type(t.message_type) {
            Ok(ty) => self.broker.create_topic(&t.name, t.queue_count, ty).await,
            Err(e) => Err(e),
        };
        Ok(Response::new(match result {
            Ok(cfg) => CreateTopicResponse {
                status: Some(ok_status()),
                topic: Some(spec(&cfg)),
            },
            Err(e) => CreateTopicResponse {
                status: Some(e.status()),
                topic: None,
            },
        }))
    }

    async fn delete_topic(
        &self,
        request: Request<DeleteTopicRequest>,
    ) -> RpcResult<DeleteTopicResponse> {
        let name = request.into_inner().name;
        Ok(Response::new(match self.broker.delete_topic(&name).await {
            Ok(existed) => DeleteTopicResponse {
                status: Some(ok_status()),
                existed,
            },
            Err(e) => DeleteTopicResponse {
                status: Some(e.status()),
                existed: false,
            },
        }))
    }

    async fn list_topics(
        &self,
        _request: Request<ListTopicsRequest>,
    ) -> RpcResult<ListTopicsResponse> {
        let store = self.broker.store();
        let topics = self
            .broker
            .topics()
            .list()
            .iter()
            .map(|cfg| TopicState {
                spec: Some(spec(cfg)),
                queues: (0..cfg.queue_count)
                    .map(|q| {
                        let (min, max) = store.queue_offsets(&cfg.name, q);
                        QueueState {
                            queue_id: q,
                            min_offset: min,
                            max_offset: max,
                        }
                    })
                    .collect(),
            })
            .collect();
        Ok(Response::new(ListTopicsResponse {
            status: Some(ok_status()),
            topics,
        }))
    }

    async fn broker_status(
        &self,
        _request: Request<BrokerStatusRequest>,
    ) -> RpcResult<BrokerStatusResponse> {
        let c = self.broker.config();
        let s = self.broker.store();
        Ok(Response::new(BrokerStatusResponse {
            status: Some(ok_status()),
            cluster: c.cluster.clone(),
            broker_name: c.broker_name.clone(),
            broker_id: self.broker.repl().broker_id() as i64,
            role: self.broker.repl().role().as_str().into(),
            epoch: s.current_epoch(),
            log_end_offset: s.log_end_offset(),
            durable_offset: s.durable_offset(),
            readable_offset: s.readable_offset(),
            fenced_reason: s.fenced().unwrap_or_default(),
            disk_bytes: {
                let dir = c.data_dir.clone();
                tokio::task::spawn_blocking(move || crate::lookup::disk_usage(&dir, 1_000_000))
                    .await
                    .unwrap_or(0)
            },
            http_addr: self
                .broker
                .metrics()
                .http_addr()
                .map(|a| a.to_string())
                .unwrap_or_default(),
            in_sync_slaves: match self.broker.repl().role() {
                crate::repl::Role::Master => self.broker.repl().tracker().snapshot().in_sync as u32,
                crate::repl::Role::Slave => 0,
            },
            min_insync_replicas: self.broker.repl().tracker().min_insync() as u32,
        }))
    }

    async fn pending(&self, request: Request<PendingRequest>) -> RpcResult<PendingResponse> {
        let want = request.into_inner().topic;
        let timers = self.broker.timers().stats();
        let halves = self.broker.txns().stats();
        let mut by_topic: std::collections::BTreeMap<String, PendingTopic> = Default::default();
        for (t, n) in timers.per_topic {
            by_topic
                .entry(t.clone())
                .or_insert_with(|| PendingTopic {
                    topic: t,
                    ..Default::default()
                })
                .pending_timers = n;
        }
        for (t, (n, oldest)) in halves {
            let e = by_topic.entry(t.clone()).or_insert_with(|| PendingTopic {
                topic: t,
                ..Default::default()
            });
            e.open_half = n;
            e.oldest_half_ms = oldest;
        }
        Ok(Response::new(PendingResponse {
            status: Some(ok_status()),
            topics: by_topic
                .into_values()
                .filter(|p| want.is_empty() || p.topic == want)
                .collect(),
            next_due_ms: timers.next_due_ms,
        }))
    }

    async fn get_message(
        &self,
        request: Request<GetMessageRequest>,
    ) -> RpcResult<GetMessageResponse> {
        let r = request.into_inner();
        let wanted = match (r.message_id.is_empty(), r.key.is_empty()) {
            (false, true) => Ok(crate::lookup::Wanted::Id(r.message_id)),
            (true, false) => Ok(crate::lookup::Wanted::Key(r.key)),
            _ => Err(BrokerError::BadRequest(
                "give exactly one of message_id and key".into(),
            )),
        };
        let result = match wanted {
            Ok(w) => {
                let topic = (!r.topic.is_empty()).then_some(r.topic);
                self.broker
                    .lookup(topic, w, r.max_scan, r.max_results as usize)
                    .await
            }
            Err(e) => Err(e),
        };
        Ok(Response::new(match result {
            Ok(f) => GetMessageResponse {
                status: Some(ok_status()),
                messages: f
                    .records
                    .into_iter()
                    .map(crate::lookup::stored_message)
                    .collect(),
                scanned: f.scanned,
                truncated: f.truncated,
            },
            Err(e) => GetMessageResponse {
                status: Some(e.status()),
                ..Default::default()
            },
        }))
    }

    async fn list_groups(
        &self,
        request: Request<ListGroupsRequest>,
    ) -> RpcResult<ListGroupsResponse> {
        let g = request.into_inner().group;
        Ok(Response::new(ListGroupsResponse {
            status: Some(ok_status()),
            groups: self
                .broker
                .group_states((!g.is_empty()).then_some(g.as_str())),
        }))
    }

    async fn resend_dead_letters(
        &self,
        request: Request<ResendDeadLettersRequest>,
    ) -> RpcResult<ResendDeadLettersResponse> {
        let r = request.into_inner();
        if !r.offsets.is_empty() {
            if !r.topic.is_empty() || r.max != 0 {
                let e = BrokerError::BadRequest(
                    "chosen offsets resend just those: topic and max must be unset".into(),
                );
                return Ok(Response::new(ResendDeadLettersResponse {
                    status: Some(e.status()),
                    ..Default::default()
                }));
            }
            return Ok(Response::new(
                match self
                    .broker
                    .resend_chosen_dead_letters(&r.group, &r.offsets)
                    .await
                {
                    Ok((resent, skipped)) => ResendDeadLettersResponse {
                        status: Some(ok_status()),
                        resent,
                        skipped: skipped
                            .into_iter()
                            .map(|(offset, why)| ResendSkipped {
                                offset,
                                reason: why.to_string(),
                            })
                            .collect(),
                    },
                    Err(e) => ResendDeadLettersResponse {
                        status: Some(e.status()),
                        ..Default::default()
                    },
                },
            ));
        }
        let max = if r.max == 0 {
            usize::MAX
        } else {
            r.max as usize
        };
        let topic = (!r.topic.is_empty()).then_some(r.topic.as_str());
        Ok(Response::new(
            match self.broker.resend_dead_letters(&r.group, topic, max).await {
                Ok(resent) => ResendDeadLettersResponse {
                    status: Some(ok_status()),
                    resent,
                    skipped: Vec::new(),
                },
                Err(e) => ResendDeadLettersResponse {
                    status: Some(e.status()),
                    ..Default::default()
                },
            },
        ))
    }

    async fn dead_letter_progress(
        &self,
        request: Request<DeadLetterProgressRequest>,
    ) -> RpcResult<DeadLetterProgressResponse> {
        let r = request.into_inner();
        Ok(Response::new(
            match self.broker.dead_letter_progress(&r.group) {
                Ok((resent_below, chosen, end)) => DeadLetterProgressResponse {
                    status: Some(ok_status()),
                    resent_below,
                    chosen,
                    end,
                },
                Err(e) => DeadLetterProgressResponse {
                    status: Some(e.status()),
                    ..Default::default()
                },
            },
        ))
    }

    async fn read_queue(&self, request: Request<ReadQueueRequest>) -> RpcResult<ReadQueueResponse> {
        let r = request.into_inner();
        let max = r.max_count.clamp(1, 1024) as usize;
        let result = self
            .broker
            .store()
            .read_queue(&r.topic, r.queue_id, r.offset, max, 16 << 20);
        Ok(Response::new(match result {
            Ok(recs) => ReadQueueResponse {
                status: Some(ok_status()),
                messages: recs
                    .into_iter()
                    .map(|rec| {
                        let message_id = rec
                            .properties
                            .iter()
                            .find(|(k, _)| k == keys::MSG_ID)
                            .map(|(_, v)| v.clone())
                            .unwrap_or_default();
                        StoredMessage {
                            topic: rec.topic,
                            queue_id: rec.queue_id,
                            queue_offset: rec.queue_offset,
                            log_offset: rec.log_offset,
                            message_id,
                            tag: rec.tag,
                            born_timestamp_ms: rec.born_ts_ms,
                            store_timestamp_ms: rec.store_ts_ms,
                            properties: rec.properties.into_iter().collect(),
                            body: rec.body.to_vec(),
                            epoch: rec.epoch,
                        }
                    })
                    .collect(),
            },
            Err(e) => ReadQueueResponse {
                status: Some(BrokerError::from(e).status()),
                messages: Vec::new(),
            },
        }))
    }

    async fn promote(&self, request: Request<PromoteRequest>) -> RpcResult<PromoteResponse> {
        let want = request.into_inner().epoch;
        let r = if self.broker.config().replication.controlled() {
            Err(controlled_refusal())
        } else {
            self.broker.promote((want > 0).then_some(want)).await
        };
        Ok(Response::new(match r {
            Ok(epoch) => PromoteResponse {
                status: Some(ok_status()),
                epoch,
                log_end_offset: self.broker.store().log_end_offset(),
            },
            Err(e) => PromoteResponse {
                status: Some(e.status()),
                ..Default::default()
            },
        }))
    }

    async fn demote(&self, request: Request<DemoteRequest>) -> RpcResult<DemoteResponse> {
        let addr = request.into_inner().master_replication_addr;
        let r = if self.broker.config().replication.controlled() {
            Err(controlled_refusal())
        } else if addr.is_empty() {
            Err(BrokerError::BadRequest(
                "master_replication_addr is required".into(),
            ))
        } else {
            self.broker.repl().demote(addr).await
        };
        Ok(Response::new(DemoteResponse {
            status: Some(match r {
                Ok(()) => ok_status(),
                Err(e) => e.status(),
            }),
        }))
    }

    async fn replication_status(
        &self,
        _request: Request<ReplicationStatusRequest>,
    ) -> RpcResult<ReplicationStatusResponse> {
        let repl = self.broker.repl();
        let s = self.broker.store();
        let snap = repl.tracker().snapshot();
        Ok(Response::new(ReplicationStatusResponse {
            status: Some(ok_status()),
            role: repl.role().as_str().into(),
            epoch: s.current_epoch(),
            durable_offset: s.durable_offset(),
            readable_offset: s.readable_offset(),
            log_end_offset: s.log_end_offset(),
            fenced_reason: s.fenced().unwrap_or_default(),
            master_replication_addr: match repl.role() {
                crate::repl::Role::Slave => repl.master_addr().unwrap_or_default(),
                crate::repl::Role::Master => String::new(),
            },
            min_insync_replicas: repl.tracker().min_insync() as u32,
            slaves: repl
                .tracker()
                .slaves()
                .into_iter()
                .map(|x| SlaveState {
                    name: x.name,
                    acked_offset: x.acked,
                    in_sync: x.in_sync,
                    protocol_version: u32::from(x.version),
                })
                .collect(),
            in_sync_slaves: snap.in_sync as u32,
        }))
    }

    async fn put_acl_user(
        &self,
        request: Request<PutAclUserRequest>,
    ) -> RpcResult<PutAclUserResponse> {
        let user = request.into_inner().user.unwrap_or_default();
        let r = self.broker.acl_put_user(user).await;
        Ok(Response::new(PutAclUserResponse {
            status: Some(r.map_or_else(|e| e.status(), |()| ok_status())),
        }))
    }

    async fn delete_acl_user(
        &self,
        request: Request<DeleteAclUserRequest>,
    ) -> RpcResult<DeleteAclUserResponse> {
        let ak = request.into_inner().access_key;
        Ok(Response::new(
            match self.broker.acl_delete_user(&ak).await {
                Ok(existed) => DeleteAclUserResponse {
                    status: Some(ok_status()),
                    existed,
                },
                Err(e) => DeleteAclUserResponse {
                    status: Some(e.status()),
                    existed: false,
                },
            },
        ))
    }

    async fn list_acl_users(
        &self,
        _request: Request<ListAclUsersRequest>,
    ) -> RpcResult<ListAclUsersResponse> {
        Ok(Response::new(ListAclUsersResponse {
            status: Some(ok_status()),
            users: self
                .broker
                .acl()
                .users()
                .iter()
                .map(crate::acl::admin::wire_user)
                .collect(),
        }))
    }

    async fn update_acl_rules(
        &self,
        request: Request<UpdateAclRulesRequest>,
    ) -> RpcResult<UpdateAclRulesResponse> {
        let r = request.into_inner();
        Ok(Response::new(
            match self
                .broker
                .acl_update_rules(&r.access_key, &r.add, &r.remove)
                .await
            {
                Ok(u) => UpdateAclRulesResponse {
                    status: Some(ok_status()),
                    user: Some(u),
                },
                Err(e) => UpdateAclRulesResponse {
                    status: Some(e.status()),
                    user: None,
                },
            },
        ))
    }

    async fn reset_offset(
        &self,
        request: Request<ResetOffsetRequest>,
    ) -> RpcResult<ResetOffsetResponse> {
        let r = request.into_inner();
        Ok(Response::new(
            match self
                .broker
                .reset_group_offsets(&r.group, &r.topic, r.to, r.timestamp_ms)
                .await
            {
                Ok(qs) => ResetOffsetResponse {
                    status: Some(ok_status()),
                    queues: qs
                        .into_iter()
                        .map(|(queue_id, offset)| ResetQueue { queue_id, offset })
                        .collect(),
                },
                Err(e) => ResetOffsetResponse {
                    status: Some(e.status()),
                    queues: Vec::new(),
                },
            },
        ))
    }
}

/// Manual switchover is refused while a controller decides roles.
fn controlled_refusal() -> BrokerError {
    BrokerError::BadRequest(
        "roles are decided by the controller (replication.controller is set); \
         stop the master to fail over"
            .into(),
    )
}
