//! Producer configuration.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{ClientError, SendFailure};

/// Callback invoked exactly once for every send that finally fails.
pub type AlertCallback = Arc<dyn Fn(&SendFailure) + Send + Sync>;

/// Configuration of a [`Producer`](crate::Producer).
///
/// Start from [`ProducerConfig::new`] (or `Default`) and adjust with the
/// `with_*` methods; every field is public as well.
#[derive(Clone)]
pub struct ProducerConfig {
    /// Name server / proxy addresses, `"host:port"`. Routes are asked from
    /// any of them (the last one that answered first).
    pub access_points: Vec<String>,
    /// Client id sent as `x-mq-client-id`. Generated when empty.
    pub client_id: String,
    /// Timeout of one RPC attempt (default 3 s).
    pub request_timeout: Duration,
    /// Attempts per message, including the first (default 3, at least 1).
    pub max_attempts: u32,
    /// Backoff before the first retry (default 10 ms).
    pub retry_backoff_initial: Duration,
    /// Largest backoff between attempts (default 1 s).
    pub retry_backoff_max: Duration,
    /// Backoff growth factor per attempt (default 2.0).
    pub retry_backoff_multiplier: f64,
    /// Extra factor applied to the backoff after TOO_MANY_REQUESTS (default 4.0).
    pub throttle_backoff_factor: f64,
    /// How often cached routes are refreshed in the background (default 30 s).
    pub route_refresh_interval: Duration,
    /// How long a broker is avoided after a failed attempt (default 5 s).
    pub broker_isolation: Duration,
    /// Most messages merged into one SendMessage request (default 256; the broker accepts up to
    /// `limits.max_batch_count`, 1024 by default).
    pub max_batch_messages: usize,
    /// Most encoded bytes merged into one SendMessage request (default 4 MiB).
    /// A single larger message still goes alone.
    pub max_batch_bytes: usize,
    /// How long a sender waits for more messages before sending a
    /// non-full request. Default 0: send at once; batches then form only
    /// from messages that queued while earlier requests were in flight.
    pub linger: Duration,
    /// Most SendMessage requests outstanding per broker (default 8).
    pub max_in_flight_per_broker: usize,
    /// Capacity of each broker's queue of messages waiting to be sent
    /// (default 8192). A full queue makes `send` wait (backpressure).
    pub sender_queue_capacity: usize,
    /// Called once for each send that finally fails.
    pub alert: Option<AlertCallback>,
    /// Sign every request with these credentials (servers with ACL on).
    pub credentials: Option<crate::auth::Credentials>,
    /// Connect with TLS.
    pub tls: Option<crate::auth::TlsOptions>,
    /// Answers the broker's checks of transactions left open (see
    /// [`TransactionChecker`](crate::TransactionChecker)). Without one, such
    /// checks are logged and ignored, and the broker applies its default
    /// outcome after its last check.
    pub transaction_checker: Option<crate::resolution::TransactionChecker>,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            access_points: Vec::new(),
            client_id: String::new(),
            request_timeout: Duration::from_secs(3),
            max_attempts: 3,
            retry_backoff_initial: Duration::from_millis(10),
            retry_backoff_max: Duration::from_secs(1),
            retry_backoff_multiplier: 2.0,
            throttle_backoff_factor: 4.0,
            route_refresh_interval: Duration::from_secs(30),
            broker_isolation: Duration::from_secs(5),
            max_batch_messages: 256,
            max_batch_bytes: 4 * 1024 * 1024,
            linger: Duration::ZERO,
            max_in_flight_per_broker: 8,
            sender_queue_capacity: 8192,
            alert: None,
            credentials: None,
            tls: None,
            transaction_checker: None,
        }
    }
}

impl fmt::Debug for ProducerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProducerConfig")
            .field("access_points", &self.access_points)
            .field("client_id", &self.client_id)
            .field("request_timeout", &self.request_timeout)
            .field("max_attempts", &self.max_attempts)
            .field("retry_backoff_initial", &self.retry_backoff_initial)
            .field("retry_backoff_max", &self.retry_backoff_max)
            .field("retry_backoff_multiplier", &self.retry_backoff_multiplier)
            .field("throttle_backoff_factor", &self.throttle_backoff_factor)
            .field("route_refresh_interval", &self.route_refresh_interval)
            .field("broker_isolation", &self.broker_isolation)
            .field("max_batch_messages", &self.max_batch_messages)
            .field("max_batch_bytes", &self.max_batch_bytes)
            .field("linger", &self.linger)
            .field("max_in_flight_per_broker", &self.max_in_flight_per_broker)
            .field("sender_queue_capacity", &self.sender_queue_capacity)
            .field("alert", &self.alert.as_ref().map(|_| "<callback>"))
            .field("credentials", &self.credentials)
            .field("tls", &self.tls)
            .field(
                "transaction_checker",
                &self.transaction_checker.as_ref().map(|_| "<callback>"),
            )
            .finish()
    }
}

impl ProducerConfig {
    /// A default configuration with the given access points (`"host:port"`).
    pub fn new<I, S>(access_points: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            access_points: access_points.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    /// Signs every request with `access_key` / `secret_key` (servers with ACL on).
    pub fn with_credentials(
        mut self,
        access_key: impl Into<String>,
        secret_key: impl Into<String>,
    ) -> Self {
        self.credentials = Some(crate::auth::Credentials::new(access_key, secret_key));
        self
    }

    /// Connects with TLS, trusting the PEM CA certificate at `ca_path`.
    pub fn with_tls(mut self, tls: crate::auth::TlsOptions) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Sets the client id.
    pub fn with_client_id(mut self, id: impl Into<String>) -> Self {
        self.client_id = id.into();
        self
    }

    /// Sets the per-attempt request timeout.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sets the number of attempts per message (including the first).
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// Sets the exponential retry backoff: initial delay, cap, growth factor.
    pub fn with_retry_backoff(mut self, initial: Duration, max: Duration, multiplier: f64) -> Self {
        self.retry_backoff_initial = initial;
        self.retry_backoff_max = max;
        self.retry_backoff_multiplier = multiplier;
        self
    }

    /// Sets the background route refresh interval.
    pub fn with_route_refresh_interval(mut self, interval: Duration) -> Self {
        self.route_refresh_interval = interval;
        self
    }

    /// Sets how long a broker is avoided after a failure.
    pub fn with_broker_isolation(mut self, isolation: Duration) -> Self {
        self.broker_isolation = isolation;
        self
    }

    /// Sets the coalescing limits: messages and encoded bytes per request.
    pub fn with_batch_limits(mut self, max_messages: usize, max_bytes: usize) -> Self {
        self.max_batch_messages = max_messages;
        self.max_batch_bytes = max_bytes;
        self
    }

    /// Sets the linger (how long to wait for more messages; 0 = never).
    pub fn with_linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// Sets the most outstanding requests per broker.
    pub fn with_max_in_flight_per_broker(mut self, n: usize) -> Self {
        self.max_in_flight_per_broker = n;
        self
    }

    /// Sets the alert callback, called once per finally failed send.
    pub fn with_alert<F>(mut self, alert: F) -> Self
    where
        F: Fn(&SendFailure) + Send + Sync + 'static,
    {
        self.alert = Some(Arc::new(alert));
        self
    }

    /// Sets the transaction checker: called when the broker asks about a
    /// transaction left open; its answer is sent as EndTransaction.
    pub fn with_transaction_checker<F>(mut self, checker: F) -> Self
    where
        F: Fn(&crate::received::ReceivedMessage) -> crate::resolution::TransactionResolution
            + Send
            + Sync
            + 'static,
    {
        self.transaction_checker = Some(Arc::new(checker));
        self
    }

    /// Checks the configuration.
    pub(crate) fn validate(&self) -> Result<(), ClientError> {
        if self.access_points.is_empty() {
            return Err(ClientError::Config("no access point".into()));
        }
        for ap in &self.access_points {
            crate::address::parse_host_port(ap)
                .ok_or_else(|| ClientError::Config(format!("bad access point {ap:?}")))?;
        }
        let positive = [
            ("request_timeout", self.request_timeout),
            ("route_refresh_interval", self.route_refresh_interval),
        ];
        for (name, d) in positive {
            if d.is_zero() {
                return Err(ClientError::Config(format!("{name} must be > 0")));
            }
        }
        if self.max_attempts == 0 {
            return Err(ClientError::Config("max_attempts must be >= 1".into()));
        }
        let factor_ok = |f: f64| f.is_finite() && f >= 1.0;
        if !factor_ok(self.retry_backoff_multiplier) || !factor_ok(self.throttle_backoff_factor) {
            return Err(ClientError::Config("backoff factors must be >= 1".into()));
        }
        if self.max_batch_messages == 0
            || self.max_batch_bytes == 0
            || self.max_in_flight_per_broker == 0
            || self.sender_queue_capacity == 0
        {
            return Err(ClientError::Config(
                "batch limits, in-flight limit and queue capacity must be > 0".into(),
            ));
        }
        Ok(())
    }

    /// Delay before attempt `failed_attempt + 1` (`failed_attempt` >= 1):
    /// `initial * multiplier^(failed_attempt - 1)`, times the throttle factor
    /// after TOO_MANY_REQUESTS, capped at the configured max (the throttled
    /// delay may reach `max * throttle factor`).
    pub(crate) fn backoff(&self, failed_attempt: u32, throttled: bool) -> Duration {
        let exp = failed_attempt.saturating_sub(1).min(64) as i32;
        let initial = self.retry_backoff_initial.as_nanos() as f64;
        let max = self.retry_backoff_max.as_nanos() as f64;
        let mut nanos = (initial * self.retry_backoff_multiplier.powi(exp)).min(max);
        if throttled {
            nanos *= self.throttle_backoff_factor;
        }
        // Saturating float-to-int conversion; bounded by max * factor anyway.
        Duration::from_nanos(nanos.round() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documented_values() {
        let c = ProducerConfig::default();
        assert_eq!(c.request_timeout, Duration::from_secs(3));
        assert_eq!(c.max_attempts, 3);
        assert_eq!(c.retry_backoff_initial, Duration::from_millis(10));
        assert_eq!(c.retry_backoff_max, Duration::from_secs(1));
        assert_eq!(c.retry_backoff_multiplier, 2.0);
        assert_eq!(c.route_refresh_interval, Duration::from_secs(30));
        assert_eq!(c.broker_isolation, Duration::from_secs(5));
        assert_eq!(c.max_batch_messages, 256);
        assert_eq!(c.max_batch_bytes, 4 * 1024 * 1024);
        assert_eq!(c.linger, Duration::ZERO);
        assert_eq!(c.max_in_flight_per_broker, 8);
        assert!(c.alert.is_none());
    }

    #[test]
    fn validation_rejects_unusable_configs() {
        assert!(ProducerConfig::default().validate().is_err());
        assert!(ProducerConfig::new(["nohostport"]).validate().is_err());
        assert!(
            ProducerConfig::new(["127.0.0.1:8081"])
                .with_max_attempts(0)
                .validate()
                .is_err()
        );
        assert!(
            ProducerConfig::new(["127.0.0.1:8081"])
                .with_batch_limits(0, 10)
                .validate()
                .is_err()
        );
        assert!(
            ProducerConfig::new(["localhost:8081", "10.0.0.1:9876"])
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn backoff_grows_exponentially_to_the_cap() {
        let cfg = ProducerConfig::default();
        assert_eq!(cfg.backoff(1, false), Duration::from_millis(10));
        assert_eq!(cfg.backoff(2, false), Duration::from_millis(20));
        assert_eq!(cfg.backoff(3, false), Duration::from_millis(40));
        assert_eq!(cfg.backoff(30, false), Duration::from_secs(1));
        assert_eq!(cfg.backoff(u32::MAX, false), Duration::from_secs(1));
    }

    #[test]
    fn throttled_backoff_is_longer() {
        let cfg = ProducerConfig::default();
        assert_eq!(cfg.backoff(1, true), Duration::from_millis(40));
        assert!(cfg.backoff(3, true) > cfg.backoff(3, false));
    }
}
