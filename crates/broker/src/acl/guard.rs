//! What each client RPC needs from the ACL, and how a refusal is answered.
//! The check itself is one call, [`super::Acl::check`], made at the top of
//! every `MessagingService` method; the tables here keep that call uniform.

use std::collections::BTreeSet;
use std::pin::Pin;

use sofamq_proto::v2::*;
use tokio_stream::Stream;

use super::{Action, Kind};

/// One permission a request needs: `action` on the `kind` resource named.
pub type Need = (Kind, String, Action);

/// The permissions a request needs beyond valid credentials.
pub trait Needs {
    /// Every permission, in no particular order; empty when valid
    /// credentials suffice.
    fn needs(&self) -> Vec<Need>;
}

fn name(r: Option<&Resource>) -> String {
    r.map(|r| r.name.clone()).unwrap_or_default()
}

fn mq_topic(mq: Option<&MessageQueue>) -> String {
    name(mq.and_then(|m| m.topic.as_ref()))
}

fn sub(topic: String, group: String) -> Vec<Need> {
    vec![
        (Kind::Topic, topic, Action::Sub),
        (Kind::Group, group, Action::Sub),
    ]
}

macro_rules! credentials_only {
    ($($t:ty),* $(,)?) => {$(
        impl Needs for $t {
            fn needs(&self) -> Vec<Need> {
                Vec::new()
            }
        }
    )*};
}

credentials_only!(
    QueryRouteRequest,
    HeartbeatRequest,
    NotifyClientTerminationRequest,
    tonic::Streaming<TelemetryCommand>,
);

impl Needs for SendMessageRequest {
    fn needs(&self) -> Vec<Need> {
        let topics: BTreeSet<String> = self
            .messages
            .iter()
            .map(|m| name(m.topic.as_ref()))
            .collect();
        topics
            .into_iter()
            .map(|t| (Kind::Topic, t, Action::Pub))
            .collect()
    }
}

impl Needs for EndTransactionRequest {
    fn needs(&self) -> Vec<Need> {
        vec![(Kind::Topic, name(self.topic.as_ref()), Action::Pub)]
    }
}

impl Needs for RecallMessageRequest {
    fn needs(&self) -> Vec<Need> {
        vec![(Kind::Topic, name(self.topic.as_ref()), Action::Pub)]
    }
}

impl Needs for QueryAssignmentRequest {
    fn needs(&self) -> Vec<Need> {
        sub(name(self.topic.as_ref()), name(self.group.as_ref()))
    }
}

impl Needs for ReceiveMessageRequest {
    fn needs(&self) -> Vec<Need> {
        sub(
            mq_topic(self.message_queue.as_ref()),
            name(self.group.as_ref()),
        )
    }
}

impl Needs for PullMessageRequest {
    fn needs(&self) -> Vec<Need> {
        sub(
            mq_topic(self.message_queue.as_ref()),
            name(self.group.as_ref()),
        )
    }
}

impl Needs for UpdateOffsetRequest {
    fn needs(&self) -> Vec<Need> {
        sub(
            mq_topic(self.message_queue.as_ref()),
            name(self.group.as_ref()),
        )
    }
}

impl Needs for GetOffsetRequest {
    fn needs(&self) -> Vec<Need> {
        sub(
            mq_topic(self.message_queue.as_ref()),
            name(self.group.as_ref()),
        )
    }
}

impl Needs for QueryOffsetRequest {
    fn needs(&self) -> Vec<Need> {
        vec![(
            Kind::Topic,
            mq_topic(self.message_queue.as_ref()),
            Action::Sub,
        )]
    }
}

impl Needs for AckMessageRequest {
    fn needs(&self) -> Vec<Need> {
        sub(name(self.topic.as_ref()), name(self.group.as_ref()))
    }
}

impl Needs for ChangeInvisibleDurationRequest {
    fn needs(&self) -> Vec<Need> {
        sub(name(self.topic.as_ref()), name(self.group.as_ref()))
    }
}

impl Needs for ForwardMessageToDeadLetterQueueRequest {
    fn needs(&self) -> Vec<Need> {
        sub(name(self.topic.as_ref()), name(self.group.as_ref()))
    }
}

/// A response carrying only a refusal status.
pub trait Denied {
    /// The response with `status` and nothing else.
    fn denied(status: Status) -> Self;
}

macro_rules! denied_by_status_field {
    ($($t:ty),* $(,)?) => {$(
        impl Denied for $t {
            #[allow(clippy::needless_update)] // some responses carry only a status
            fn denied(status: Status) -> Self {
                Self { status: Some(status), ..Default::default() }
            }
        }
    )*};
}

denied_by_status_field!(
    QueryRouteResponse,
    HeartbeatResponse,
    SendMessageResponse,
    QueryAssignmentResponse,
    AckMessageResponse,
    ForwardMessageToDeadLetterQueueResponse,
    UpdateOffsetResponse,
    GetOffsetResponse,
    QueryOffsetResponse,
    EndTransactionResponse,
    RecallMessageResponse,
    NotifyClientTerminationResponse,
    ChangeInvisibleDurationResponse,
    TelemetryCommand,
);

impl Denied for ReceiveMessageResponse {
    fn denied(status: Status) -> Self {
        Self {
            content: Some(receive_message_response::Content::Status(status)),
        }
    }
}

impl Denied for PullMessageResponse {
    fn denied(status: Status) -> Self {
        Self {
            content: Some(pull_message_response::Content::Status(status)),
        }
    }
}

/// Server-streaming responses: one item with the status.
impl<T: Denied + Send + 'static> Denied
    for Pin<Box<dyn Stream<Item = Result<T, tonic::Status>> + Send + 'static>>
{
    fn denied(status: Status) -> Self {
        Box::pin(tokio_stream::once(Ok(T::denied(status))))
    }
}
