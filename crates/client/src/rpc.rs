//! The producer's unary RPCs other than SendMessage: `RecallMessage` and
//! `EndTransaction`, with the producer's timeouts, headers and retry rules.

use std::sync::Arc;
use std::time::Duration;

use sofamq_proto::v2::{
    self, Code, EndTransactionRequest, RecallMessageRequest, Resource, TransactionResolution,
    TransactionSource, messaging_service_client::MessagingServiceClient,
};

use crate::config::ProducerConfig;
use crate::connection::Channels;
use crate::error::RequestError;
use crate::headers::RequestHeaders;
use crate::retry::{self, AttemptError};

/// What ends a transaction: the half message and its transaction id.
#[derive(Debug, Clone)]
pub(crate) struct EndTarget<'a> {
    /// Endpoint of the broker that stored the half message.
    pub(crate) endpoint: &'a str,
    pub(crate) topic: &'a str,
    pub(crate) message_id: &'a str,
    pub(crate) transaction_id: &'a str,
}

/// Channels, headers and retry settings shared by these RPCs.
pub(crate) struct Rpc {
    channels: Arc<Channels>,
    headers: Arc<RequestHeaders>,
    config: ProducerConfig,
}

impl Rpc {
    pub(crate) fn new(
        channels: Arc<Channels>,
        headers: Arc<RequestHeaders>,
        config: ProducerConfig,
    ) -> Self {
        Self {
            channels,
            headers,
            config,
        }
    }

    pub(crate) fn config(&self) -> &ProducerConfig {
        &self.config
    }

    fn timeout(&self) -> Duration {
        self.config.request_timeout
    }

    fn request<T>(&self, body: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(body);
        req.set_timeout(self.timeout());
        self.headers.apply(&mut req);
        req
    }

    fn client(
        &self,
        addr: &str,
    ) -> Result<MessagingServiceClient<tonic::transport::Channel>, AttemptError> {
        Ok(MessagingServiceClient::new(self.channels.get(addr)?))
    }

    /// One `RecallMessage` to `addr`: the recalled message's id.
    pub(crate) async fn recall_once(
        &self,
        addr: &str,
        topic: &str,
        recall_handle: &str,
    ) -> Result<String, AttemptError> {
        let mut client = self.client(addr)?;
        let req = self.request(RecallMessageRequest {
            topic: Some(resource(topic)),
            recall_handle: recall_handle.to_string(),
        });
        let resp = answer(self.timeout(), client.recall_message(req)).await?;
        check(resp.status)?;
        Ok(resp.message_id)
    }

    /// One `EndTransaction` to the broker that stored the half message.
    async fn end_once(&self, req: EndTransactionRequest, addr: &str) -> Result<(), AttemptError> {
        let mut client = self.client(addr)?;
        let resp = answer(self.timeout(), client.end_transaction(self.request(req))).await?;
        check(resp.status)
    }

    /// Ends a transaction, retrying retryable failures (the broker answers
    /// OK again to a repeated resolution, so a retry after a lost answer is
    /// harmless) up to `max_attempts`, always at the same endpoint.
    pub(crate) async fn end_transaction(
        &self,
        target: &EndTarget<'_>,
        resolution: TransactionResolution,
        source: TransactionSource,
    ) -> Result<(), RequestError> {
        let req = EndTransactionRequest {
            topic: Some(resource(target.topic)),
            message_id: target.message_id.to_string(),
            transaction_id: target.transaction_id.to_string(),
            resolution: resolution as i32,
            source: source as i32,
            trace_context: String::new(),
        };
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let err = match self.end_once(req.clone(), target.endpoint).await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            let verdict = retry::classify(&err, false);
            if !verdict.retry || attempt >= self.config.max_attempts {
                return Err(RequestError::from_attempt(
                    "EndTransaction",
                    &err,
                    attempt,
                    Some(target.endpoint),
                ));
            }
            tracing::warn!(
                message_id = %target.message_id,
                transaction_id = %target.transaction_id,
                endpoint = %target.endpoint,
                attempt,
                error = ?err,
                "EndTransaction failed, retrying"
            );
            tokio::time::sleep(self.config.backoff(attempt, verdict.throttled)).await;
        }
    }
}

fn resource(name: &str) -> Resource {
    Resource {
        resource_namespace: String::new(),
        name: name.to_string(),
    }
}

/// The response body of a unary call bounded by `timeout`, or why there is none.
pub(crate) async fn answer<T>(
    timeout: Duration,
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, AttemptError> {
    match tokio::time::timeout(timeout, call).await {
        Err(_) => Err(AttemptError::Timeout),
        Ok(Err(status)) if status.code() == tonic::Code::DeadlineExceeded => {
            Err(AttemptError::Timeout)
        }
        Ok(Err(status)) => Err(AttemptError::Transport(format!(
            "{:?}: {}",
            status.code(),
            status.message()
        ))),
        Ok(Ok(resp)) => Ok(resp.into_inner()),
    }
}

/// The response's status as a result (a missing status is a protocol error).
fn check(status: Option<v2::Status>) -> Result<(), AttemptError> {
    match status {
        Some(s) if s.code == Code::Ok as i32 => Ok(()),
        Some(s) => Err(AttemptError::Status {
            code: s.code,
            message: s.message,
        }),
        None => Err(AttemptError::Transport(
            "protocol error: response without a status".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_become_attempt_errors() {
        assert_eq!(
            check(Some(v2::Status {
                code: Code::Ok as i32,
                message: "OK".into()
            })),
            Ok(())
        );
        assert_eq!(
            check(Some(v2::Status {
                code: Code::PreconditionFailed as i32,
                message: "already delivered".into()
            })),
            Err(AttemptError::Status {
                code: 42800,
                message: "already delivered".into()
            })
        );
        assert!(matches!(check(None), Err(AttemptError::Transport(_))));
    }
}
