//! What `sofamq broker` (servers.rs) and `sofamq standalone` share when starting
//! brokers: the `--flush` and `--topic` parsers and creating the `--topic`s whenever a
//! broker becomes master. Both import it; neither imports the other.

use anyhow::Context;
use sofamq_broker::repl::Role;
use sofamq_broker::topics::TopicType;
use sofamq_broker::{Broker, FlushMode};

/// Parses `--flush`: `sync` (fsync before the ack) or `async`.
pub fn parse_flush(s: &str) -> Result<FlushMode, String> {
    match s {
        "sync" => Ok(FlushMode::Sync),
        "async" => Ok(FlushMode::Async),
        _ => Err(format!("flush mode must be sync or async, not {s:?}")),
    }
}

/// Parses `NAME[:QUEUES[:TYPE]]`.
pub fn parse_topic(spec: &str) -> anyhow::Result<(String, u32, TopicType)> {
    let mut parts = spec.split(':');
    let name = parts.next().unwrap_or_default().to_string();
    let queues = match parts.next() {
        Some(q) => q
            .parse()
            .with_context(|| format!("queue count in {spec:?}"))?,
        None => 0,
    };
    let ty = match parts.next() {
        Some(t) => TopicType::parse(t).with_context(|| format!("topic type in {spec:?}"))?,
        None => TopicType::Normal,
    };
    anyhow::ensure!(
        parts.next().is_none(),
        "topic spec {spec:?} has too many ':' parts"
    );
    Ok((name, queues, ty))
}

/// Creates `topics` each time this broker becomes master (idempotent: an existing topic
/// with the same settings is left alone).
pub async fn create_when_master(broker: Broker, topics: Vec<(String, u32, TopicType)>) {
    let mut role = broker.repl().role_watch();
    loop {
        if *role.borrow_and_update() == Role::Master {
            for (t, q, ty) in &topics {
                // The lease may lag the role by one heartbeat: retry briefly.
                for _ in 0..50 {
                    match broker.create_topic(t, *q, *ty).await {
                        Ok(_) => break,
                        Err(e) => {
                            tracing::debug!(topic = %t, error = %e, "topic not created yet");
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        }
                    }
                }
            }
        }
        if role.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_specs() {
        assert_eq!(
            parse_topic("t").unwrap(),
            ("t".into(), 0, TopicType::Normal)
        );
        assert_eq!(
            parse_topic("t:4:fifo").unwrap(),
            ("t".into(), 4, TopicType::Fifo)
        );
        assert!(parse_topic("t:x").is_err());
        assert!(parse_topic("t:1:NOPE").is_err());
    }
}
