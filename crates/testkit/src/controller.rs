//! Controller processes (`sofamq controller`) for failover tests: a Raft group of one or
//! three voters on fixed free ports, each restartable from its data directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::Node;
use crate::repl::free_port;

/// One controller voter.
pub struct ControllerNode {
    /// Raft node id.
    pub id: u64,
    /// Listen address.
    pub addr: String,
    /// Data directory.
    pub data: PathBuf,
    /// The running process (None while stopped).
    pub node: Option<Node>,
    restarts: usize,
    /// The `sofamq` binary of its next start (None: [`crate::sofamq_bin`]).
    pub bin: Option<PathBuf>,
    /// Flags of its next start, after the group's.
    pub extra: Vec<String>,
}

/// A controller group.
pub struct Controllers {
    /// The voters.
    pub nodes: Vec<ControllerNode>,
    peers: String,
    log_dir: PathBuf,
    extra: Vec<String>,
}

impl Controllers {
    /// Starts `n` voters (1 or 3) with `extra` flags (e.g. `--master-timeout-ms 2000`).
    pub fn start(log_dir: &Path, n: u64, extra: &[&str]) -> anyhow::Result<Self> {
        let mut nodes = Vec::new();
        for id in 1..=n {
            nodes.push(ControllerNode {
                id,
                addr: format!("127.0.0.1:{}", free_port()?),
                data: log_dir.join(format!("controller-{id}")),
                node: None,
                restarts: 0,
                bin: None,
                extra: Vec::new(),
            });
        }
        let peers = nodes
            .iter()
            .map(|c| format!("{}={}", c.id, c.addr))
            .collect::<Vec<_>>()
            .join(",");
        let mut me = Self {
            nodes,
            peers,
            log_dir: log_dir.to_path_buf(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        for id in 1..=n {
            me.restart(id)?;
        }
        Ok(me)
    }

    /// Comma-separated addresses (the brokers' `--controller`).
    pub fn addrs(&self) -> String {
        self.nodes
            .iter()
            .map(|c| c.addr.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    fn get(&mut self, id: u64) -> anyhow::Result<&mut ControllerNode> {
        self.nodes
            .iter_mut()
            .find(|c| c.id == id)
            .ok_or_else(|| anyhow::anyhow!("no controller {id}"))
    }

    /// Starts (again) voter `id` from its data directory.
    pub fn restart(&mut self, id: u64) -> anyhow::Result<()> {
        let peers = self.peers.clone();
        let log_dir = self.log_dir.clone();
        let extra = self.extra.clone();
        let c = self.get(id)?;
        let mut args: Vec<String> = vec![
            "controller".into(),
            "--id".into(),
            id.to_string(),
            "--listen".into(),
            c.addr.clone(),
            "--peers".into(),
            peers,
            "--data-dir".into(),
            c.data.display().to_string(),
        ];
        args.extend(extra);
        args.extend(c.extra.iter().cloned());
        c.restarts += 1;
        let name = format!("controller-{id}-{}", c.restarts);
        c.node = Some(Node::spawn_retrying_bin(
            c.bin.as_deref(),
            &name,
            &args,
            &log_dir,
            20,
            Duration::from_millis(100),
        )?);
        Ok(())
    }

    /// SIGKILL voter `id`.
    pub fn kill9(&mut self, id: u64) {
        if let Ok(c) = self.get(id)
            && let Some(mut n) = c.node.take()
        {
            n.kill9();
        }
    }

    /// SIGTERM voter `id` and wait for it to exit.
    pub fn stop(&mut self, id: u64) {
        if let Ok(c) = self.get(id)
            && let Some(mut n) = c.node.take()
        {
            n.terminate(Duration::from_secs(10));
        }
    }

    /// The current Raft leader as the running voters report it (waits up to `wait`).
    pub async fn leader(&self, wait: Duration) -> anyhow::Result<u64> {
        let deadline = std::time::Instant::now() + wait;
        loop {
            for c in self.nodes.iter().filter(|c| c.node.is_some()) {
                let client = sofamq_controller::ControllerClient::new(
                    vec![c.addr.clone()],
                    Duration::from_millis(500),
                );
                if let Ok(s) = client.status().await
                    && let Some(l) = s.leader
                    && self.nodes.iter().any(|n| n.id == l && n.node.is_some())
                {
                    return Ok(l);
                }
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "no controller leader within {wait:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The committed state of `group`, from any running voter.
    pub async fn group(&self, group: &str) -> Option<sofamq_controller::GroupState> {
        for c in self.nodes.iter().filter(|c| c.node.is_some()) {
            let client = sofamq_controller::ControllerClient::new(
                vec![c.addr.clone()],
                Duration::from_millis(500),
            );
            if let Ok(s) = client.status().await
                && let Some(g) = s.groups.into_iter().find(|g| g.group == group)
            {
                return Some(g);
            }
        }
        None
    }
}
