//! The one stop signal every SofaMQ server takes: `run(listener(s), config, shutdown)`
//! serves until [`Shutdown::trigger`] (or, in the binary, Ctrl-C or SIGTERM).
//!
//! A cheap, cloneable handle: every clone sees the same trigger. A server derives a
//! [`Shutdown::child`] for its own tasks, so that it can also stop them itself (when its
//! transport fails) without stopping the servers next to it in the process.

use std::future::Future;

use tokio_util::sync::CancellationToken;

/// A cloneable "stop now" signal shared by a process's servers.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
}

impl Shutdown {
    /// A signal that trips only when [`Shutdown::trigger`] is called.
    pub fn new() -> Self {
        Self::default()
    }

    /// A signal that trips once `event` completes (a channel closing, a test's "stop").
    /// Must be called inside a tokio runtime: it spawns the task that awaits `event`.
    pub fn on(event: impl Future<Output = ()> + Send + 'static) -> Self {
        let shutdown = Self::new();
        let trip = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = event => trip.trigger(),
                // Nothing to wait for once tripped some other way.
                () = trip.token.cancelled() => {}
            }
        });
        shutdown
    }

    /// A signal that trips on Ctrl-C (SIGINT) or SIGTERM (see [`Shutdown::on`]).
    pub fn from_signals() -> Self {
        Self::on(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            let term = async {
                match term.as_mut() {
                    Some(t) => {
                        t.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                () = term => {}
            }
        })
    }

    /// Trips the signal (idempotent): every server holding a clone or a child stops.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    /// Whether the signal has tripped.
    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once the signal has tripped (at once if it already has).
    pub fn wait(&self) -> impl Future<Output = ()> + Send + 'static {
        self.token.clone().cancelled_owned()
    }

    /// A signal that trips with this one, or on its own when triggered, without
    /// tripping this one.
    pub fn child(&self) -> Self {
        Self {
            token: self.token.child_token(),
        }
    }

    /// The underlying token, for code that selects on a [`CancellationToken`].
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }
}

impl From<CancellationToken> for Shutdown {
    fn from(token: CancellationToken) -> Self {
        Self { token }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn clones_see_the_trigger_and_a_child_does_not_trip_its_parent() {
        let s = Shutdown::new();
        let clone = s.clone();
        let child = s.child();
        let waiting = tokio::spawn(clone.wait());
        assert!(!clone.is_triggered());

        child.trigger();
        assert!(child.is_triggered());
        assert!(!s.is_triggered(), "a child must not trip its parent");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());

        s.trigger();
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
        assert!(clone.is_triggered() && s.child().is_triggered());
        // Already tripped: resolves at once.
        s.wait().await;
    }

    #[tokio::test]
    async fn on_trips_when_its_event_completes() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let s = Shutdown::on(async move {
            let _ = rx.await;
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!s.is_triggered());
        // A dropped sender ends the event too.
        drop(tx);
        tokio::time::timeout(Duration::from_secs(5), s.wait())
            .await
            .unwrap();
        assert!(s.is_triggered());
    }
}
