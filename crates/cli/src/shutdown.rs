//! One shutdown signal for every server in the process: Ctrl-C or SIGTERM.

use tokio::sync::watch;

/// A cloneable "stop now" signal.
#[derive(Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

impl Shutdown {
    /// Trips on Ctrl-C (SIGINT) or SIGTERM.
    pub fn from_signals() -> Self {
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
            }
            let _ = tx.send(true);
        });
        Self { rx }
    }

    /// Resolves once the signal tripped.
    pub fn wait(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }
}
