//! Client sessions: the settings a server pushes to a client on its Telemetry
//! stream, and the stream itself.
//!
//! The official RocketMQ 5 clients open `Telemetry` to every endpoint they use
//! and write their `Settings`; they wait for a `{status OK, settings}` reply on
//! the same stream and expect it to stay open. Both the name server and the
//! broker serve this, so the logic is public here.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use serde::Deserialize;
use sofamq_proto::v2::{
    ClientType, CustomizedBackoff, ExponentialBackoff, Metric, Publishing, RetryPolicy, Settings,
    Subscription, TelemetryCommand, retry_policy, settings::PubSub, telemetry_command::Command,
};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_stream::Stream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tracing::{debug, trace};

use crate::status;

/// Upper bound on [`SessionOptions::consumer_backoff_ms`] entries.
pub const MAX_CUSTOM_BACKOFF_STEPS: usize = 64;

/// Inbound commands handled per poll before yielding to the runtime.
const MAX_COMMANDS_PER_POLL: usize = 32;

/// What the server tells clients about retries and limits.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionOptions {
    /// Producer send attempts (first try included).
    pub producer_max_attempts: i32,
    /// Producer exponential backoff: first delay.
    pub backoff_initial_ms: u64,
    /// Producer exponential backoff: largest delay.
    pub backoff_max_ms: u64,
    /// Producer exponential backoff: growth factor.
    pub backoff_multiplier: f32,
    /// Largest message body a producer may send, in bytes (a client that is
    /// told 0 refuses every send).
    pub max_body_size: i32,
    /// Whether producers check the topic's message type before sending.
    pub validate_message_type: bool,
    /// Consumer delivery attempts before dead-lettering (first included).
    pub consumer_max_attempts: i32,
    /// Consumer redelivery delays, one per attempt (the last repeats).
    pub consumer_backoff_ms: Vec<u64>,
    /// Messages per receive call.
    pub receive_batch_size: i32,
    /// Long polling timeout for receive calls.
    pub long_polling_timeout_ms: u64,
    /// Whether consumer groups are FIFO (unknown to the name server: false).
    pub fifo: bool,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self {
            producer_max_attempts: 3,
            backoff_initial_ms: 10,
            backoff_max_ms: 1_000,
            backoff_multiplier: 2.0,
            max_body_size: 4 * 1024 * 1024,
            validate_message_type: true,
            consumer_max_attempts: 17,
            // RocketMQ's classic retry levels.
            consumer_backoff_ms: vec![
                1_000, 5_000, 10_000, 30_000, 60_000, 120_000, 180_000, 240_000, 300_000, 360_000,
                420_000, 480_000, 540_000, 600_000, 1_200_000, 1_800_000, 3_600_000, 7_200_000,
            ],
            receive_batch_size: 32,
            long_polling_timeout_ms: 30_000,
            fifo: false,
        }
    }
}

impl SessionOptions {
    /// Checks that the values are usable.
    pub fn validate(&self) -> Result<(), &'static str> {
        if self.producer_max_attempts < 1 || self.consumer_max_attempts < 1 {
            return Err("max attempts must be >= 1");
        }
        if self.backoff_initial_ms == 0 || self.backoff_max_ms < self.backoff_initial_ms {
            return Err("backoff needs 0 < initial <= max");
        }
        if !(self.backoff_multiplier.is_finite() && self.backoff_multiplier >= 1.0) {
            return Err("backoff multiplier must be a finite number >= 1");
        }
        if self.max_body_size < 1 {
            return Err("max_body_size must be >= 1");
        }
        if self.consumer_backoff_ms.is_empty()
            || self.consumer_backoff_ms.len() > MAX_CUSTOM_BACKOFF_STEPS
        {
            return Err("consumer_backoff_ms needs 1..=64 entries");
        }
        if self.receive_batch_size < 1 || self.long_polling_timeout_ms == 0 {
            return Err("receive_batch_size and long_polling_timeout_ms must be > 0");
        }
        Ok(())
    }

    fn producer_backoff(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.producer_max_attempts,
            strategy: Some(retry_policy::Strategy::ExponentialBackoff(
                ExponentialBackoff {
                    initial: Some(duration(self.backoff_initial_ms)),
                    max: Some(duration(self.backoff_max_ms)),
                    multiplier: self.backoff_multiplier,
                },
            )),
        }
    }

    fn consumer_backoff(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.consumer_max_attempts,
            strategy: Some(retry_policy::Strategy::CustomizedBackoff(
                CustomizedBackoff {
                    next: self
                        .consumer_backoff_ms
                        .iter()
                        .take(MAX_CUSTOM_BACKOFF_STEPS)
                        .map(|ms| duration(*ms))
                        .collect(),
                },
            )),
        }
    }
}

fn duration(ms: u64) -> prost_types::Duration {
    let d = Duration::from_millis(ms);
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

fn is_producer(client: &Settings) -> bool {
    match &client.pub_sub {
        Some(PubSub::Publishing(_)) => true,
        Some(PubSub::Subscription(_)) => false,
        None => client.client_type == Some(ClientType::Producer as i32),
    }
}

/// The settings a server answers to a client's `Settings`.
///
/// Copies the client's type, access point, request timeout and user agent;
/// producers get an exponential backoff policy and publishing limits,
/// consumers a customized backoff policy and subscription parameters.
pub fn server_settings(client: &Settings, opts: &SessionOptions) -> Settings {
    let (backoff_policy, pub_sub) = if is_producer(client) {
        let topics = match &client.pub_sub {
            Some(PubSub::Publishing(p)) => p.topics.clone(),
            _ => Vec::new(),
        };
        (
            opts.producer_backoff(),
            PubSub::Publishing(Publishing {
                topics,
                max_body_size: opts.max_body_size,
                validate_message_type: opts.validate_message_type,
            }),
        )
    } else {
        let (group, subscriptions) = match &client.pub_sub {
            Some(PubSub::Subscription(s)) => (s.group.clone(), s.subscriptions.clone()),
            _ => (None, Vec::new()),
        };
        (
            opts.consumer_backoff(),
            PubSub::Subscription(Subscription {
                group,
                subscriptions,
                fifo: Some(opts.fifo),
                receive_batch_size: Some(opts.receive_batch_size),
                long_polling_timeout: Some(duration(opts.long_polling_timeout_ms)),
                lite_subscription_quota: None,
                max_lite_topic_size: None,
            }),
        )
    };
    Settings {
        client_type: client.client_type,
        access_point: client.access_point.clone(),
        backoff_policy: Some(backoff_policy),
        request_timeout: client.request_timeout,
        pub_sub: Some(pub_sub),
        user_agent: client.user_agent.clone(),
        metric: Some(Metric {
            on: false,
            endpoints: None,
        }),
        client_properties: Default::default(),
    }
}

/// Computes the reply settings from the client's settings.
pub type SettingsResponder = Arc<dyn Fn(&Settings) -> Settings + Send + Sync>;

/// The server side of a Telemetry stream.
///
/// Answers every inbound `settings` command with `{status OK, settings}`,
/// ignores other commands, forwards server-initiated commands (if a channel
/// was attached) and ends when the client closes its side, the inbound stream
/// fails, or the shutdown token (if any) is cancelled.
pub struct TelemetryStream<S> {
    inbound: S,
    respond: SettingsResponder,
    server_commands: Option<mpsc::Receiver<TelemetryCommand>>,
    shutdown: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    _permit: Option<OwnedSemaphorePermit>,
    _guard: Option<Box<dyn Send + Sync>>,
    done: bool,
}

impl<S> std::fmt::Debug for TelemetryStream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelemetryStream")
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

/// Serves one Telemetry stream with [`server_settings`] and `opts`.
pub fn telemetry_stream<S>(inbound: S, opts: SessionOptions) -> TelemetryStream<S>
where
    S: Stream<Item = Result<TelemetryCommand, tonic::Status>> + Unpin,
{
    TelemetryStream {
        inbound,
        respond: Arc::new(move |client| server_settings(client, &opts)),
        server_commands: None,
        shutdown: None,
        _permit: None,
        _guard: None,
        done: false,
    }
}

impl<S> TelemetryStream<S> {
    /// Replaces how reply settings are computed (e.g. a broker that knows a
    /// group is FIFO).
    pub fn with_responder(mut self, respond: SettingsResponder) -> Self {
        self.respond = respond;
        self
    }

    /// Also sends the commands received on `rx` (e.g. transaction checks).
    pub fn with_server_commands(mut self, rx: mpsc::Receiver<TelemetryCommand>) -> Self {
        self.server_commands = Some(rx);
        self
    }

    /// Ends the stream when `token` is cancelled (server shutdown).
    pub fn with_shutdown(mut self, token: CancellationToken) -> Self {
        self.shutdown = Some(Box::pin(token.cancelled_owned()));
        self
    }

    /// Holds `permit` for as long as the stream lives (bounds concurrency).
    pub fn with_permit(mut self, permit: OwnedSemaphorePermit) -> Self {
        self._permit = Some(permit);
        self
    }

    /// Holds `guard` for as long as the stream lives (e.g. a registration that its drop
    /// removes).
    pub fn with_guard(mut self, guard: Box<dyn Send + Sync>) -> Self {
        self._guard = Some(guard);
        self
    }

    fn reply(&self, client: &Settings) -> TelemetryCommand {
        TelemetryCommand {
            status: Some(status::ok()),
            command: Some(Command::Settings((self.respond)(client))),
        }
    }
}

impl<S> Stream for TelemetryStream<S>
where
    S: Stream<Item = Result<TelemetryCommand, tonic::Status>> + Unpin,
{
    type Item = Result<TelemetryCommand, tonic::Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(shutdown) = this.shutdown.as_mut()
            && shutdown.as_mut().poll(cx).is_ready()
        {
            debug!("telemetry stream closed by shutdown");
            this.done = true;
            return Poll::Ready(None);
        }
        let mut budget_spent = true;
        for _ in 0..MAX_COMMANDS_PER_POLL {
            match Pin::new(&mut this.inbound).poll_next(cx) {
                Poll::Ready(Some(Ok(cmd))) => match &cmd.command {
                    Some(Command::Settings(client)) => {
                        trace!(client_type = ?client.client_type, "telemetry settings");
                        return Poll::Ready(Some(Ok(this.reply(client))));
                    }
                    _ => trace!("telemetry command ignored"),
                },
                Poll::Ready(Some(Err(status))) => {
                    debug!(%status, "telemetry inbound failed");
                    this.done = true;
                    return Poll::Ready(None);
                }
                Poll::Ready(None) => {
                    trace!("telemetry stream closed by client");
                    this.done = true;
                    return Poll::Ready(None);
                }
                Poll::Pending => {
                    budget_spent = false;
                    break;
                }
            }
        }
        if let Some(rx) = this.server_commands.as_mut() {
            match rx.poll_recv(cx) {
                Poll::Ready(Some(cmd)) => return Poll::Ready(Some(Ok(cmd))),
                Poll::Ready(None) => this.server_commands = None,
                Poll::Pending => {}
            }
        }
        if budget_spent {
            // More inbound commands may be ready: come back after yielding.
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;

    fn cmd(settings: Settings) -> Result<TelemetryCommand, tonic::Status> {
        Ok(TelemetryCommand {
            status: None,
            command: Some(Command::Settings(settings)),
        })
    }

    #[test]
    fn producer_by_client_type_without_pub_sub() {
        let client = Settings {
            client_type: Some(ClientType::Producer as i32),
            ..Settings::default()
        };
        let s = server_settings(&client, &SessionOptions::default());
        assert!(matches!(s.pub_sub, Some(PubSub::Publishing(ref p)) if p.max_body_size > 0));
        assert!(matches!(
            s.backoff_policy.and_then(|p| p.strategy),
            Some(retry_policy::Strategy::ExponentialBackoff(_))
        ));
    }

    #[test]
    fn consumer_gets_subscription_and_custom_backoff() {
        let client = Settings {
            client_type: Some(ClientType::PushConsumer as i32),
            ..Settings::default()
        };
        let s = server_settings(&client, &SessionOptions::default());
        let Some(PubSub::Subscription(sub)) = s.pub_sub else {
            panic!("no subscription");
        };
        assert_eq!(sub.receive_batch_size, Some(32));
        let policy = s.backoff_policy.unwrap();
        assert_eq!(policy.max_attempts, 17);
        assert!(matches!(
            policy.strategy,
            Some(retry_policy::Strategy::CustomizedBackoff(ref c)) if c.next.len() == 18
        ));
    }

    #[test]
    fn options_validate() {
        assert!(SessionOptions::default().validate().is_ok());
        let bad = SessionOptions {
            max_body_size: 0,
            ..SessionOptions::default()
        };
        assert!(bad.validate().is_err());
        let bad = SessionOptions {
            backoff_multiplier: f32::NAN,
            ..SessionOptions::default()
        };
        assert!(bad.validate().is_err());
    }

    #[tokio::test]
    async fn stream_answers_settings_forwards_server_commands_and_ends() {
        let inbound = tokio_stream::iter(vec![
            Ok(TelemetryCommand::default()),
            cmd(Settings::default()),
        ]);
        let (tx, rx) = mpsc::channel(1);
        let token = CancellationToken::new();
        let mut stream = telemetry_stream(
            inbound.chain(tokio_stream::pending()),
            SessionOptions::default(),
        )
        .with_server_commands(rx)
        .with_shutdown(token.clone());
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!(first.status.unwrap().code, 20000);
        tx.send(TelemetryCommand::default()).await.unwrap();
        let pushed = stream.next().await.unwrap().unwrap();
        assert!(pushed.command.is_none());
        token.cancel();
        assert!(stream.next().await.is_none());
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn stream_ends_on_inbound_error() {
        let inbound = tokio_stream::iter(vec![Err(tonic::Status::cancelled("gone"))]);
        let mut stream = telemetry_stream(inbound, SessionOptions::default());
        assert!(stream.next().await.is_none());
    }
}
