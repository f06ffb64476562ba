//! A real broker (`sofamq_broker::Broker`) on a turmoil host: its log on the host's simulated
//! disk ([`SimDisk`]), its store's writer a task on the host's runtime (`Driver::Caller` +
//! `Store::drive`), its replication over turmoil's TCP (the `Acceptor`/`Connector` seam).
//!
//! Every file of the broker (log, consume queues, checkpoint, epoch history, timer index,
//! transaction checkpoint) is on the host's simulated disk, so a crash keeps only what was
//! synced. The timer and transaction loops are not started (nothing here serves them).

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sofamq_broker::repl::{ReplicationConfig, Role};
use sofamq_broker::{Broker, BrokerConfig};
use sofamq_controller::network::{Acceptor, AsyncStream, BoxFuture, Connector};
use sofamq_store::Driver;
use tokio_util::sync::CancellationToken;

use crate::disk::{DiskFaults, SimDisk};

/// The replication port every simulated broker listens on (on its own host address).
pub const REPL_PORT: u16 = 10912;

/// A replication listener on turmoil's network.
pub struct TurmoilAcceptor(pub turmoil::net::TcpListener);

impl Acceptor for TurmoilAcceptor {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(Box<dyn AsyncStream>, String)>> {
        Box::pin(async move {
            let (s, peer) = self.0.accept().await?;
            Ok((Box::new(s) as Box<dyn AsyncStream>, peer.to_string()))
        })
    }
}

/// Dials a master's replication port over turmoil's network.
pub struct TurmoilConnector;

impl Connector for TurmoilConnector {
    fn connect<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, io::Result<Box<dyn AsyncStream>>> {
        Box::pin(async move {
            let s = turmoil::net::TcpStream::connect(addr).await?;
            Ok(Box::new(s) as Box<dyn AsyncStream>)
        })
    }
}

/// How one broker of a simulated group starts.
#[derive(Debug, Clone)]
pub struct BrokerHost {
    /// The broker's directory on the host's simulated disk.
    pub data_dir: PathBuf,
    /// The broker's configuration (roles are set per start by [`BrokerHost::config`]).
    pub base: BrokerConfig,
    /// How long each fdatasync of its log takes (zero: none).
    pub sync_latency: Duration,
}

impl BrokerHost {
    /// The configuration for a start as `role`; a slave follows `master` (a host name), a
    /// broker that should only be read (after the final power cut) gets neither.
    pub fn config(&self, role: Role, master: Option<&str>) -> BrokerConfig {
        let mut c = self.base.clone();
        c.data_dir = self.data_dir.clone();
        c.scrub_bytes_per_sec = 0;
        c.replication = ReplicationConfig {
            role: Some(role),
            listen: Some(([0, 0, 0, 0], REPL_PORT).into()),
            master_addr: master.map(|m| format!("{m}:{REPL_PORT}")),
            ..c.replication
        };
        c
    }
}

/// Opens a broker with its store on this host's simulated disk (each fdatasync taking
/// `sync_latency`), its writer driven by a task of this host's runtime. Blocking (the open
/// recovers the log), as `Broker::open` is.
pub fn open(
    config: BrokerConfig,
    sync_latency: Duration,
) -> Result<Broker, sofamq_broker::BrokerError> {
    let b = Broker::open_with(config, &|sc| {
        let disk = SimDisk::new(DiskFaults::default());
        disk.set_sync_latency(sync_latency);
        sc.fs = Arc::new(disk);
        sc.driver = Driver::Caller;
        sc.cq_flush_interval = Duration::from_millis(100);
        sc.scrub_bytes_per_sec = 0;
    })?;
    let store = b.store().clone();
    tokio::spawn(async move { store.drive().await });
    Ok(b)
}

/// Starts the broker's replication: it listens on [`REPL_PORT`] in every role (a promoted
/// slave serves its old master), and a slave dials its master through turmoil.
pub async fn start_replication(b: &Broker, token: &CancellationToken) -> io::Result<()> {
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", REPL_PORT)).await?;
    b.repl().use_connector(Arc::new(TurmoilConnector));
    b.repl()
        .start_with(Some(Box::new(TurmoilAcceptor(listener))), token.clone());
    Ok(())
}
