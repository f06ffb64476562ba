//! The broker-side client: finds the controller leader and follows redirections.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::config::DEFAULT_MAX_FRAME_BYTES;
use crate::network::{Channel, Connector, TcpConnector};
use crate::rpc::{FrameLimits, Request, Response};
use crate::types::{
    AlterInSync, ControllerError, ControllerStatus, GroupState, Heartbeat, HeartbeatReply,
};

/// A client of a controller group. Tries the last known leader first, follows
/// `NotLeader` redirections, otherwise walks `addrs`; gives up after `timeout` overall.
pub struct ControllerClient {
    addrs: Vec<String>,
    timeout: Duration,
    connector: Arc<dyn Connector>,
    max_frame_bytes: usize,
    state: Mutex<Option<Channel>>,
    /// Where the next call without a known leader starts walking `addrs`: a call that
    /// failed leaves it past the addresses it tried, so an address that swallows packets
    /// (it times out rather than refusing) cannot take every call's whole deadline.
    next: AtomicUsize,
}

impl std::fmt::Debug for ControllerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControllerClient")
            .field("addrs", &self.addrs)
            .field("timeout", &self.timeout)
            .finish()
    }
}

enum Outcome<T> {
    Done(Result<T, ControllerError>),
    Redirect(Option<String>),
    Retry(ControllerError),
}

impl ControllerClient {
    /// A TCP client for the controllers at `addrs`, each call bounded by `timeout`.
    pub fn new(addrs: Vec<String>, timeout: Duration) -> Self {
        Self::with_connector(addrs, timeout, Arc::new(TcpConnector))
    }

    /// A client over a custom transport.
    pub fn with_connector(
        addrs: Vec<String>,
        timeout: Duration,
        connector: Arc<dyn Connector>,
    ) -> Self {
        Self {
            addrs,
            timeout,
            connector,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            state: Mutex::new(None),
            next: AtomicUsize::new(0),
        }
    }

    /// Sends a heartbeat to the leader.
    pub async fn heartbeat(&self, hb: &Heartbeat) -> Result<HeartbeatReply, ControllerError> {
        self.call(Request::Heartbeat(hb.clone()), |r| match r {
            Response::Heartbeat(r) => Some(r),
            _ => None,
        })
        .await
    }

    /// Reports an in-sync change to the leader.
    pub async fn alter_insync(&self, req: &AlterInSync) -> Result<GroupState, ControllerError> {
        self.call(Request::AlterInSync(req.clone()), |r| match r {
            Response::AlterInSync(r) => Some(r),
            _ => None,
        })
        .await
    }

    /// The status as seen by the leader (or by any reachable node when none leads).
    pub async fn status(&self) -> Result<ControllerStatus, ControllerError> {
        self.call(Request::Status, |r| match r {
            Response::Status(s) => Some(Ok(*s)),
            _ => None,
        })
        .await
    }

    async fn call<T>(
        &self,
        req: Request,
        pick: impl Fn(Response) -> Option<Result<T, ControllerError>>,
    ) -> Result<T, ControllerError> {
        if self.addrs.is_empty() {
            return Err(ControllerError::Transport("no controller addresses".into()));
        }
        let deadline = Instant::now() + self.timeout;
        let limits = FrameLimits::new(self.max_frame_bytes, self.timeout);
        let mut chan = self.state.lock().await;
        let mut next_idx = self.next.load(Ordering::Relaxed);
        let mut last_err = ControllerError::Unavailable("no controller answered".into());
        let max_attempts = self.addrs.len() * 3 + 3;
        for attempt in 0..max_attempts {
            // Out of time before picking an address: the next call starts at that address.
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let mut ch = match chan.take() {
                Some(c) => c,
                None => {
                    let addr = self.addrs[next_idx % self.addrs.len()].clone();
                    next_idx += 1;
                    Channel::new(addr, self.connector.clone(), limits)
                }
            };
            let outcome = match tokio::time::timeout(left, ch.call(&req)).await {
                Err(_) => Outcome::Retry(ControllerError::Transport(format!(
                    "{} timed out",
                    ch.addr()
                ))),
                Ok(Err(e)) => Outcome::Retry(ControllerError::Transport(e.to_string())),
                Ok(Ok(Response::Error(e))) => Outcome::Retry(e),
                Ok(Ok(resp)) => match pick(resp) {
                    None => {
                        Outcome::Retry(ControllerError::Transport("unexpected response".into()))
                    }
                    Some(Err(ControllerError::NotLeader { leader_addr })) => {
                        Outcome::Redirect(leader_addr)
                    }
                    Some(Err(e @ ControllerError::Unavailable(_))) => Outcome::Retry(e),
                    Some(r) => Outcome::Done(r),
                },
            };
            match outcome {
                Outcome::Done(r) => {
                    *chan = Some(ch);
                    self.next
                        .store(next_idx % self.addrs.len(), Ordering::Relaxed);
                    return r;
                }
                Outcome::Redirect(Some(addr)) if addr != ch.addr() => {
                    tracing::debug!(from = %ch.addr(), to = %addr, "controller redirect");
                    *chan = Some(Channel::new(addr, self.connector.clone(), limits));
                    last_err = ControllerError::NotLeader { leader_addr: None };
                }
                Outcome::Redirect(_) => {
                    last_err = ControllerError::NotLeader { leader_addr: None };
                    self.pause(attempt, deadline).await;
                }
                Outcome::Retry(e) => {
                    tracing::debug!(addr = %ch.addr(), error = %e, "controller call failed");
                    last_err = e;
                    self.pause(attempt, deadline).await;
                }
            }
        }
        self.next
            .store(next_idx % self.addrs.len(), Ordering::Relaxed);
        Err(last_err)
    }

    /// After a full pass over the addresses, wait a little (an election may be running).
    async fn pause(&self, attempt: usize, deadline: Instant) {
        if (attempt + 1).is_multiple_of(self.addrs.len()) {
            let until = (Instant::now() + Duration::from_millis(100)).min(deadline);
            tokio::time::sleep_until(until).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::{AsyncStream, BoxFuture};

    /// Records every address dialled; `hole` never answers (a host whose packets are
    /// dropped), any other address refuses at once.
    #[derive(Default)]
    struct Recording(std::sync::Mutex<Vec<String>>);

    impl Connector for Recording {
        fn connect<'a>(
            &'a self,
            addr: &'a str,
        ) -> BoxFuture<'a, std::io::Result<Box<dyn AsyncStream>>> {
            self.0.lock().unwrap().push(addr.to_string());
            Box::pin(async move {
                if addr == "hole" {
                    std::future::pending::<()>().await;
                }
                Err(std::io::ErrorKind::ConnectionRefused.into())
            })
        }
    }

    #[tokio::test]
    async fn a_black_holed_first_address_does_not_take_every_call() {
        let rec = Arc::new(Recording::default());
        let c = ControllerClient::with_connector(
            vec!["hole".into(), "other".into()],
            Duration::from_millis(200),
            rec.clone(),
        );
        assert!(c.status().await.is_err(), "nothing answers");
        assert!(c.status().await.is_err(), "nothing answers");
        let dialled = rec.0.lock().unwrap().clone();
        // The first call spent its whole deadline on `hole`; the second starts past it.
        assert_eq!(dialled[..2], ["hole".to_string(), "other".to_string()]);
    }
}
