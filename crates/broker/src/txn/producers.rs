//! Live producers' Telemetry streams, by the topics their settings publish to: where
//! transaction check-backs go.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use sofamq_proto::v2::{Settings, TelemetryCommand, settings::PubSub};
use tokio::sync::mpsc;

/// Commands queued per stream before more are dropped (the check repeats later).
pub const STREAM_QUEUE: usize = 64;
/// Most streams registered at once.
const MAX_STREAMS: usize = 65_536;

struct Entry {
    topics: Vec<String>,
    tx: mpsc::Sender<TelemetryCommand>,
}

/// The registry. Cheap to share.
#[derive(Default)]
pub struct Producers {
    streams: Mutex<HashMap<u64, Entry>>,
    next_id: AtomicU64,
    rr: AtomicU64,
}

/// Removes its stream from the registry when dropped (the stream ended).
pub struct Registration {
    id: u64,
    registry: Arc<super::Txns>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.producers.streams.lock().remove(&self.id);
    }
}

impl Producers {
    /// Registers a new stream (no topics until its settings arrive). `None` when full.
    pub fn register(
        txns: &Arc<super::Txns>,
    ) -> Option<(u64, mpsc::Receiver<TelemetryCommand>, Registration)> {
        let me = &txns.producers;
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let mut g = me.streams.lock();
        if g.len() >= MAX_STREAMS {
            return None;
        }
        let id = me.next_id.fetch_add(1, Ordering::Relaxed);
        g.insert(
            id,
            Entry {
                topics: Vec::new(),
                tx,
            },
        );
        Some((
            id,
            rx,
            Registration {
                id,
                registry: txns.clone(),
            },
        ))
    }

    /// Records the topics a stream's client publishes to (from its settings).
    pub fn settings(&self, id: u64, s: &Settings) {
        let topics: Vec<String> = match &s.pub_sub {
            Some(PubSub::Publishing(p)) => p.topics.iter().map(|t| t.name.clone()).collect(),
            _ => Vec::new(),
        };
        if let Some(e) = self.streams.lock().get_mut(&id) {
            e.topics = topics;
        }
    }

    /// Queues `cmd` on one live producer stream of `topic` (rotating among them); false
    /// when there is none that can take it.
    pub fn send_to_one(&self, topic: &str, cmd: TelemetryCommand) -> bool {
        let g = self.streams.lock();
        let cands: Vec<&Entry> = g
            .values()
            .filter(|e| !e.tx.is_closed() && e.topics.iter().any(|t| t == topic))
            .collect();
        if cands.is_empty() {
            return false;
        }
        let start = self.rr.fetch_add(1, Ordering::Relaxed) as usize % cands.len();
        let mut cmd = Some(cmd);
        for i in 0..cands.len() {
            let e = cands[(start + i) % cands.len()];
            if let Some(c) = cmd.take() {
                match e.tx.try_send(c) {
                    Ok(()) => return true,
                    Err(
                        mpsc::error::TrySendError::Full(c) | mpsc::error::TrySendError::Closed(c),
                    ) => cmd = Some(c),
                }
            }
        }
        false
    }

    /// Registered streams (metrics).
    pub fn len(&self) -> usize {
        self.streams.lock().len()
    }

    /// Whether none is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
