//! Telemetry behind the proxy.
//!
//! A client's Telemetry stream ends here (its `Settings` are answered at once, as without
//! the proxy), and is relayed to the current master of every broker group: the relay opens
//! one upstream stream per master with the client's identity headers, writes the client's
//! latest `Settings` on it, and passes down what the broker sends (its own settings, which
//! say e.g. whether a consumer group is FIFO, and transaction check-backs). When a group's
//! master changes, or its stream ends, the relay opens a new one to the new master within
//! `telemetry_check_ms`, so check-backs keep reaching producers across a failover.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sofamq_proto::v2::TelemetryCommand;
use sofamq_proto::v2::telemetry_command::Command;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataMap;
use tracing::debug;

use super::{Proxy, copy_identity};

/// Commands queued towards one upstream stream.
const UPSTREAM_QUEUE: usize = 16;

/// The client side of a relay: give it every command the client writes.
#[derive(Debug)]
pub struct ClientSide {
    settings: watch::Sender<Option<TelemetryCommand>>,
    _stop: tokio_util::sync::DropGuard,
}

impl ClientSide {
    /// Notes a command the client wrote (its `Settings` are relayed upstream).
    pub fn observe(&self, cmd: &TelemetryCommand) {
        if matches!(cmd.command, Some(Command::Settings(_))) {
            self.settings.send_replace(Some(cmd.clone()));
        }
    }
}

/// Starts a relay for one client stream: `down` receives what the brokers send to the
/// client. The relay stops when the returned [`ClientSide`] is dropped.
pub fn start(
    proxy: Arc<Proxy>,
    md: MetadataMap,
    down: mpsc::Sender<TelemetryCommand>,
) -> ClientSide {
    let (tx, rx) = watch::channel(None);
    let token = CancellationToken::new();
    tokio::spawn(relay(proxy, md, rx, down, token.clone()));
    ClientSide {
        settings: tx,
        _stop: token.drop_guard(),
    }
}

struct Upstream {
    addr: String,
    tx: mpsc::Sender<TelemetryCommand>,
    task: JoinHandle<()>,
}

async fn relay(
    proxy: Arc<Proxy>,
    md: MetadataMap,
    mut settings: watch::Receiver<Option<TelemetryCommand>>,
    down: mpsc::Sender<TelemetryCommand>,
    token: CancellationToken,
) {
    let check = Duration::from_millis(proxy.options().telemetry_check_ms);
    let mut ups: HashMap<String, Upstream> = HashMap::new();
    loop {
        let mut changed = false;
        tokio::select! {
            () = token.cancelled() => break,
            () = tokio::time::sleep(check) => {}
            r = settings.changed() => {
                if r.is_err() {
                    break;
                }
                changed = true;
            }
        }
        let Some(current) = settings.borrow_and_update().clone() else {
            continue;
        };
        if changed {
            for u in ups.values() {
                let _ = u.tx.try_send(current.clone());
            }
        }
        let masters = proxy.registry().masters(Instant::now());
        ups.retain(|g, u| {
            let keep = masters.iter().any(|(mg, addr)| mg == g && *addr == u.addr)
                && !u.task.is_finished();
            if !keep {
                u.task.abort();
            }
            keep
        });
        for (group, addr) in masters {
            if ups.contains_key(&group) {
                continue;
            }
            debug!(%group, %addr, "telemetry relay: opening upstream");
            ups.insert(
                group,
                open(&proxy, &md, addr, current.clone(), down.clone()),
            );
        }
    }
    for u in ups.into_values() {
        u.task.abort();
    }
}

fn open(
    proxy: &Proxy,
    md: &MetadataMap,
    addr: String,
    settings: TelemetryCommand,
    down: mpsc::Sender<TelemetryCommand>,
) -> Upstream {
    let (tx, rx) = mpsc::channel(UPSTREAM_QUEUE);
    let _ = tx.try_send(settings);
    let client = proxy.client(&addr);
    let mut req = tonic::Request::new(ReceiverStream::new(rx));
    copy_identity(md, req.metadata_mut());
    let a = addr.clone();
    let task = tokio::spawn(async move {
        let Ok(mut c) = client else { return };
        let mut s = match c.telemetry(req).await {
            Ok(s) => s.into_inner(),
            Err(e) => {
                debug!(addr = %a, error = %e.message(), "telemetry relay: upstream refused");
                return;
            }
        };
        while let Some(Ok(cmd)) = s.next().await {
            let pass = matches!(
                cmd.command,
                Some(
                    Command::Settings(_)
                        | Command::RecoverOrphanedTransactionCommand(_)
                        | Command::VerifyMessageCommand(_)
                        | Command::PrintThreadStackTraceCommand(_)
                )
            );
            // Never ReconnectEndpoints: the client must stay on this endpoint.
            if pass && down.send(cmd).await.is_err() {
                return;
            }
        }
    });
    Upstream { addr, tx, task }
}
