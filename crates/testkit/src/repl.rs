//! Master/slave broker processes for replication tests: fixed addresses (picked free at
//! start) so a killed broker can be restarted where its peers and clients expect it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::Node;

/// A free 127.0.0.1 port right now, for a process that binds it later.
///
/// Taken below Linux's ephemeral range (32768 and up), so that listeners bound to port 0
/// (the test kit's proxies, in-process servers) and outgoing connections can never take it
/// between this check and the bind; never the same port twice in one test process.
pub fn free_port() -> anyhow::Result<u16> {
    crate::fixed_ports(1)
}

/// One broker process of a replicated group, restartable with the same addresses and data.
pub struct ReplBroker {
    /// Name used in logs.
    pub name: String,
    /// Client gRPC address.
    pub grpc: String,
    /// Replication address.
    pub repl: String,
    /// Data directory.
    pub data: PathBuf,
    /// The running process (None while stopped).
    pub node: Option<Node>,
    log_dir: PathBuf,
    namesrv: String,
    restarts: usize,
    /// The `sofamq` binary of the next start (None: [`crate::sofamq_bin`]); an upgrade
    /// test sets another build here.
    pub bin: Option<PathBuf>,
}

impl ReplBroker {
    /// Prepares (does not start) broker `name` of group `group` with fresh ports.
    pub fn new(log_dir: &Path, namesrv: &str, group: &str, name: &str) -> anyhow::Result<Self> {
        let _ = group;
        Ok(Self {
            name: name.to_string(),
            grpc: format!("127.0.0.1:{}", free_port()?),
            repl: format!("127.0.0.1:{}", free_port()?),
            data: log_dir.join(name),
            node: None,
            log_dir: log_dir.to_path_buf(),
            namesrv: namesrv.to_string(),
            restarts: 0,
            bin: None,
        })
    }

    /// Starts it under the controller at `controller` (comma-separated addresses) with
    /// broker id `id` (id 0 is the preferred first master); the controller decides its role.
    pub fn start_controlled(
        &mut self,
        group: &str,
        controller: &str,
        id: u64,
        extra: &[&str],
    ) -> anyhow::Result<()> {
        let id = id.to_string();
        let role = if id == "0" { "master" } else { "slave" };
        let mut args = vec![
            "--controller",
            controller,
            "--broker-id",
            &id,
            "--role",
            role,
        ];
        args.extend_from_slice(extra);
        self.spawn_with(group, &args)
    }

    /// Starts it as master (`master_addr` None) or as slave of `master_addr`, with `extra`
    /// flags (e.g. `--min-insync-replicas 1`).
    pub fn start(
        &mut self,
        group: &str,
        master_addr: Option<&str>,
        extra: &[&str],
    ) -> anyhow::Result<()> {
        let mut role: Vec<String> = match master_addr {
            None => vec!["--role".into(), "master".into()],
            Some(m) => vec![
                "--role".into(),
                "slave".into(),
                "--broker-id".into(),
                "1".into(),
                "--master-addr".into(),
                m.to_string(),
            ],
        };
        role.extend(extra.iter().map(|s| s.to_string()));
        let role: Vec<&str> = role.iter().map(String::as_str).collect();
        self.spawn_with(group, &role)
    }

    fn spawn_with(&mut self, group: &str, extra: &[&str]) -> anyhow::Result<()> {
        let mut args: Vec<String> = [
            "broker",
            "--broker-name",
            group,
            "--listen",
            &self.grpc,
            "--replication-listen",
            &self.repl,
            "--namesrv",
            &self.namesrv,
            "--heartbeat-ms",
            "200",
            "--reconnect-backoff-ms",
            "50",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push("--data-dir".into());
        args.push(self.data.display().to_string());
        args.extend(extra.iter().map(|s| s.to_string()));
        self.restarts += 1;
        let log_name = format!("{}-{}", self.name, self.restarts);
        // The port may be briefly unavailable right after a kill; retry a few times.
        self.node = Some(Node::spawn_retrying_bin(
            self.bin.as_deref(),
            &log_name,
            &args,
            &self.log_dir,
            20,
            Duration::from_millis(100),
        )?);
        Ok(())
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`) the running process.
    pub fn pause(&self, stop: bool) {
        if let Some(pid) = self.node.as_ref().and_then(Node::pid) {
            let sig = if stop { "-STOP" } else { "-CONT" };
            let _ = std::process::Command::new("kill")
                .arg(sig)
                .arg(pid.to_string())
                .status();
        }
    }

    /// SIGKILL.
    pub fn kill9(&mut self) {
        if let Some(mut n) = self.node.take() {
            n.kill9();
        }
    }

    /// SIGTERM and wait.
    pub fn stop(&mut self) {
        if let Some(mut n) = self.node.take() {
            n.terminate(Duration::from_secs(10));
        }
    }

    /// The store directory inside the data dir.
    pub fn store_dir(&self) -> PathBuf {
        self.data.join("store")
    }

    /// The current process log (stderr), or "" when stopped.
    pub fn log(&self) -> String {
        self.node.as_ref().map(Node::log).unwrap_or_default()
    }
}
