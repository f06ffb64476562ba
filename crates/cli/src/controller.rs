//! `sofamq controller`: a controller node as its own process, and the helper the namesrv
//! uses to host one (`sofamq namesrv --controller-id ...`).

use std::path::PathBuf;

use anyhow::{Context, bail};
use sofamq_controller::{Controller, ControllerConfig, parse_peers};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use sofamq_server::Shutdown;

/// Options of `sofamq controller`.
#[derive(clap::Args, Debug)]
pub struct ControllerArgs {
    /// This node's Raft id.
    #[arg(long)]
    pub id: u64,
    /// Address to listen on (port 0 picks a free port; single voter only).
    #[arg(long)]
    pub listen: String,
    /// Every voter: ID=HOST:PORT,... (this node included). Default: this node alone.
    #[arg(long)]
    pub peers: Option<String>,
    /// Where the Raft log, vote and snapshot live.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Replace a master not heard from for this long.
    #[arg(long)]
    pub master_timeout_ms: Option<u64>,
    /// How long a master may act after a heartbeat (must be below the master timeout).
    #[arg(long)]
    pub lease_ms: Option<u64>,
    /// Replace a master not heard from for this long when an in-sync slave finds its
    /// replication port refusing connections (above the lease, at most the master
    /// timeout; default: the lease plus a fifth of the gap to the master timeout).
    #[arg(long)]
    pub refused_timeout_ms: Option<u64>,
    /// Highest RPC protocol version offered: hold the controller on the old version while
    /// its nodes and brokers are upgraded one at a time.
    #[arg(long, env = "SOFAMQ_CONTROLLER_PROTOCOL_MAX")]
    pub protocol_max: Option<u8>,
}

/// What [`start`] needs (shared by `sofamq controller` and the embedded namesrv node).
pub struct ControllerOpts {
    pub id: u64,
    pub listen: String,
    pub peers: Option<String>,
    pub data_dir: PathBuf,
    pub master_timeout_ms: Option<u64>,
    pub lease_ms: Option<u64>,
    pub refused_timeout_ms: Option<u64>,
    pub protocol_max: Option<u8>,
}

/// A started controller node: its bound address and the serving task.
pub struct Running {
    pub bound: std::net::SocketAddr,
    pub controller: Controller,
    pub server: JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// Waits until the server and the node have stopped.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.server.await.context("controller task")??;
        self.controller.stopped().await;
        Ok(())
    }
}

/// Binds, starts and serves a controller node until `shutdown` trips.
pub async fn start(o: ControllerOpts, shutdown: Shutdown) -> anyhow::Result<Running> {
    let listener = TcpListener::bind(&o.listen)
        .await
        .with_context(|| format!("binding controller {}", o.listen))?;
    let bound = listener.local_addr()?;
    let mut peers = match &o.peers {
        Some(p) => parse_peers(p)?,
        None => [(o.id, bound.to_string())].into(),
    };
    if !peers.contains_key(&o.id) {
        bail!("controller id {} is not in --peers", o.id);
    }
    if o.listen.ends_with(":0") {
        // Port 0: the advertised address must be the bound one, which only works alone.
        if peers.len() > 1 {
            bail!("a controller with several voters needs a fixed --listen port");
        }
        peers.insert(o.id, bound.to_string());
    }
    let mut cfg = ControllerConfig::new(o.id, peers, o.data_dir);
    cfg.listen = bound.to_string();
    if let Some(t) = o.master_timeout_ms {
        cfg.master_timeout_ms = t;
    }
    if let Some(l) = o.lease_ms {
        cfg.lease_ms = l;
    }
    cfg.refused_timeout_ms = o.refused_timeout_ms;
    cfg.protocol_max = o.protocol_max;
    let controller = Controller::start(cfg, shutdown.clone()).await?;
    let server = tokio::spawn(sofamq_controller::serve(
        listener,
        controller.clone(),
        shutdown,
    ));
    Ok(Running {
        bound,
        controller,
        server,
    })
}

/// Runs a controller node until Ctrl-C / SIGTERM.
pub async fn run(a: ControllerArgs) -> anyhow::Result<()> {
    let shutdown = Shutdown::from_signals();
    let opts = ControllerOpts {
        id: a.id,
        listen: a.listen,
        peers: a.peers,
        data_dir: a.data_dir,
        master_timeout_ms: a.master_timeout_ms,
        lease_ms: a.lease_ms,
        refused_timeout_ms: a.refused_timeout_ms,
        protocol_max: a.protocol_max,
    };
    let running = start(opts, shutdown).await?;
    println!("controller ready on {}", running.bound);
    running.wait().await
}

/// `sofamq namesrv` flags that host a controller node in the namesrv process.
#[derive(clap::Args, Debug, Default)]
pub struct EmbeddedArgs {
    /// Host a controller node with this Raft id (with --controller-listen and
    /// --controller-data-dir).
    #[arg(long, requires_all = ["controller_listen", "controller_data_dir"])]
    pub controller_id: Option<u64>,
    /// Hosted controller listen address.
    #[arg(long, requires = "controller_id")]
    pub controller_listen: Option<String>,
    /// Hosted controller voters: ID=HOST:PORT,... (default: this node alone).
    #[arg(long, requires = "controller_id")]
    pub controller_peers: Option<String>,
    /// Hosted controller data directory.
    #[arg(long, requires = "controller_id")]
    pub controller_data_dir: Option<PathBuf>,
    /// Hosted controller: highest RPC protocol version offered.
    #[arg(
        long,
        requires = "controller_id",
        env = "SOFAMQ_CONTROLLER_PROTOCOL_MAX"
    )]
    pub controller_protocol_max: Option<u8>,
}

/// Starts the hosted controller when the namesrv flags ask for one (prints its ready line).
pub async fn start_embedded(
    a: &EmbeddedArgs,
    shutdown: &Shutdown,
) -> anyhow::Result<Option<Running>> {
    let (Some(id), Some(listen), Some(data_dir)) = (
        a.controller_id,
        a.controller_listen.clone(),
        a.controller_data_dir.clone(),
    ) else {
        return Ok(None);
    };
    let opts = ControllerOpts {
        id,
        listen,
        peers: a.controller_peers.clone(),
        data_dir,
        master_timeout_ms: None,
        lease_ms: None,
        refused_timeout_ms: None,
        protocol_max: a.controller_protocol_max,
    };
    let running = start(opts, shutdown.clone()).await?;
    println!("controller ready on {}", running.bound);
    Ok(Some(running))
}

/// Waits for a hosted controller (if any) to stop.
pub async fn finish(c: Option<Running>) -> anyhow::Result<()> {
    match c {
        Some(c) => c.wait().await,
        None => Ok(()),
    }
}
