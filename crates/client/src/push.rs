//! PushConsumer: worker tasks receive messages and hand each to a listener;
//! success acks, failure nacks (change invisible duration) with an
//! exponential backoff so the broker redelivers it later with attempt + 1.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::consumer::{ConsumerConfig, SimpleConsumer};
use crate::error::ClientError;
use crate::received::ReceivedMessage;

/// What the listener decided about one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumeResult {
    /// Processed: ack it.
    Success,
    /// Not processed: redeliver it after a backoff.
    Failure,
}

/// The application's message handler (runs on a blocking thread).
pub type Listener = Arc<dyn Fn(&ReceivedMessage) -> ConsumeResult + Send + Sync>;

/// Push-consumer settings on top of [`ConsumerConfig`].
#[derive(Debug, Clone)]
pub struct PushConfig {
    /// Concurrent receive-and-process workers.
    pub concurrency: usize,
    /// Messages per receive.
    pub batch_size: u32,
    /// Invisibility of received messages (processing time budget).
    pub invisible_duration: Duration,
    /// Nack backoff: first delay.
    pub backoff_initial: Duration,
    /// Nack backoff: largest delay.
    pub backoff_max: Duration,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            concurrency: 4,
            batch_size: 16,
            invisible_duration: Duration::from_secs(30),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
        }
    }
}

/// Nack delay before delivery `attempt + 1`.
pub fn nack_backoff(cfg: &PushConfig, attempt: u32) -> Duration {
    let exp = attempt.saturating_sub(1).min(30);
    cfg.backoff_initial
        .saturating_mul(1u32 << exp.min(20))
        .min(cfg.backoff_max)
}

/// Receives in the background and calls a listener per message.
pub struct PushConsumer {
    stop: watch::Sender<bool>,
    workers: Vec<JoinHandle<()>>,
}

impl PushConsumer {
    /// Starts `push.concurrency` workers.
    pub async fn start(
        cfg: ConsumerConfig,
        subscriptions: Vec<(String, String)>,
        push: PushConfig,
        listener: Listener,
    ) -> Result<Self, ClientError> {
        if push.concurrency == 0 || push.batch_size == 0 {
            return Err(ClientError::Config(
                "concurrency and batch_size must be > 0".into(),
            ));
        }
        let consumer = SimpleConsumer::start(cfg, subscriptions).await?;
        let (stop, rx) = watch::channel(false);
        let workers = (0..push.concurrency)
            .map(|_| {
                tokio::spawn(worker(
                    consumer.clone(),
                    push.clone(),
                    listener.clone(),
                    rx.clone(),
                ))
            })
            .collect();
        Ok(Self { stop, workers })
    }

    /// Stops receiving; waits for in-progress messages to finish.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for w in self.workers {
            let _ = w.await;
        }
    }
}

async fn worker(
    c: SimpleConsumer,
    push: PushConfig,
    listener: Listener,
    mut stop: watch::Receiver<bool>,
) {
    while !*stop.borrow() {
        let got = tokio::select! {
            r = c.receive(push.batch_size, push.invisible_duration) => r,
            _ = stop.changed() => break,
        };
        let msgs = match got {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "push consumer receive failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        for mut m in msgs {
            let l = listener.clone();
            let m2 = m.clone();
            let result = tokio::task::spawn_blocking(move || l(&m2))
                .await
                .unwrap_or(ConsumeResult::Failure);
            let r = match result {
                ConsumeResult::Success => c.ack(&m).await,
                ConsumeResult::Failure => {
                    let d = nack_backoff(&push, m.delivery_attempt);
                    c.change_invisible_duration(&mut m, d).await
                }
            };
            if let Err(e) = r {
                tracing::warn!(message_id = %m.message_id, error = %e, "push consumer ack/nack failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap() {
        let c = PushConfig::default();
        assert_eq!(nack_backoff(&c, 1), Duration::from_secs(1));
        assert_eq!(nack_backoff(&c, 3), Duration::from_secs(4));
        assert_eq!(nack_backoff(&c, 100), Duration::from_secs(60));
    }
}
