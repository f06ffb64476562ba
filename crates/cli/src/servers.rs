//! `sofamq namesrv` and `sofamq broker`: each part as its own process. A TOML
//! file (`--config`) gives the settings; flags and `SOFAMQ_*` env vars override.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use sofamq_broker::BrokerConfig;
use sofamq_broker::repl::Role;
use sofamq_namesrv::NamesrvConfig;
use sofamq_server::Shutdown;
use tokio::net::TcpListener;

/// Options of `sofamq namesrv`.
#[derive(clap::Args, Debug)]
pub struct NamesrvArgs {
    /// TOML configuration file.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address to listen on (port 0 picks a free port; the ready line says which).
    #[arg(long, env = "SOFAMQ_NAMESRV_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Drop a broker from routes after this long without a heartbeat.
    #[arg(long)]
    pub broker_expiry_ms: Option<u64>,
    /// HTTP address for `/metrics` and `/health` (port 0 picks a free port).
    #[arg(long, env = "SOFAMQ_NAMESRV_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// PEM certificate chain: serve the client port with TLS (with --tls-key).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    #[command(flatten)]
    pub controller: crate::controller::EmbeddedArgs,
}

/// Options of `sofamq broker`.
#[derive(clap::Args, Debug)]
pub struct BrokerArgs {
    /// TOML configuration file (see README for the keys).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Client gRPC listen address (port 0 picks a free port).
    #[arg(long, env = "SOFAMQ_BROKER_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// NameServer addresses, comma separated.
    #[arg(long, value_delimiter = ',', env = "SOFAMQ_NAMESRV")]
    pub namesrv: Option<Vec<String>>,
    /// Data directory.
    #[arg(long, env = "SOFAMQ_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Broker group name.
    #[arg(long)]
    pub broker_name: Option<String>,
    /// Broker id (0 = master).
    #[arg(long)]
    pub broker_id: Option<u64>,
    /// Heartbeat (re-registration) interval.
    #[arg(long)]
    pub heartbeat_ms: Option<u64>,
    /// Topic to create at start: NAME[:QUEUES[:TYPE]]. Repeatable.
    #[arg(long = "topic")]
    pub topics: Vec<String>,
    /// Start role: master or slave (default: master for broker id 0).
    #[arg(long, value_parser = parse_role)]
    pub role: Option<Role>,
    /// Replication listen address (port 0 picks a free port; the ready line says which).
    #[arg(long, env = "SOFAMQ_REPLICATION_LISTEN")]
    pub replication_listen: Option<SocketAddr>,
    /// The master's replication address (slaves).
    #[arg(long)]
    pub master_addr: Option<String>,
    /// Copies (master included) that must be durable before a send is acked.
    #[arg(long, env = "SOFAMQ_MIN_INSYNC_REPLICAS")]
    pub min_insync_replicas: Option<usize>,
    /// Longest a send waits for the slaves' acks (then SLAVE_PERSISTENCE_TIMEOUT).
    #[arg(long)]
    pub ack_timeout_ms: Option<u64>,
    /// A slave that does not catch up within this long leaves the in-sync set.
    #[arg(long)]
    pub max_lag_ms: Option<u64>,
    /// Slave reconnect delay.
    #[arg(long)]
    pub reconnect_backoff_ms: Option<u64>,
    /// Flush mode: sync (fsync before ack) or async.
    #[arg(long, value_parser = crate::startup::parse_flush)]
    pub flush: Option<sofamq_broker::FlushMode>,
    /// HTTP address for `/metrics` and `/health` (port 0 picks a free port).
    #[arg(long, env = "SOFAMQ_BROKER_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// Controller addresses, comma separated: the controller then decides master and
    /// slave (automatic failover); `--role` only names the preferred first master.
    #[arg(long, value_delimiter = ',', env = "SOFAMQ_CONTROLLER")]
    pub controller: Option<Vec<String>>,
    /// PEM certificate chain: serve the client gRPC port with TLS (with --tls-key).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Highest replication protocol version offered (`replication.protocol_max`): hold a
    /// group on the old version while its brokers are upgraded one at a time.
    #[arg(long, env = "SOFAMQ_REPLICATION_PROTOCOL_MAX")]
    pub replication_protocol_max: Option<u8>,
}

fn parse_role(s: &str) -> Result<Role, String> {
    match s {
        "master" => Ok(Role::Master),
        "slave" => Ok(Role::Slave),
        _ => Err(format!("role must be master or slave, not {s:?}")),
    }
}

fn read_toml<T: serde::de::DeserializeOwned + Default>(
    path: Option<&PathBuf>,
) -> anyhow::Result<T> {
    match path {
        None => Ok(T::default()),
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            toml::from_str(&text).with_context(|| format!("parsing {}", p.display()))
        }
    }
}

/// Runs a NameServer until Ctrl-C / SIGTERM.
pub async fn namesrv(args: NamesrvArgs) -> anyhow::Result<()> {
    let mut cfg: NamesrvConfig = read_toml(args.config.as_ref())?;
    if let Some(l) = args.listen {
        cfg.listen = l;
    }
    if let Some(e) = args.broker_expiry_ms {
        cfg.broker_expiry_ms = e;
    }
    if let Some(h) = args.http_listen {
        cfg.http_listen = Some(h);
    }
    if let (Some(c), Some(k)) = (&args.tls_cert, &args.tls_key) {
        cfg.tls = sofamq_server::tls::TlsConfig::new(c, k);
    }
    cfg.tls.validate()?;
    let http = match cfg.http_listen {
        Some(a) => Some(
            TcpListener::bind(a)
                .await
                .with_context(|| format!("binding HTTP {a}"))?,
        ),
        None => None,
    };
    let http_bound = match &http {
        Some(l) => l.local_addr()?.to_string(),
        None => "none".into(),
    };
    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("binding {}", cfg.listen))?;
    let bound = listener.local_addr()?;
    let shutdown = Shutdown::from_signals();
    let controller = crate::controller::start_embedded(&args.controller, &shutdown).await?;
    let task = tokio::spawn(sofamq_namesrv::run(
        sofamq_namesrv::Listeners {
            grpc: listener,
            http,
        },
        cfg,
        shutdown.clone(),
    ));
    println!("namesrv ready on {bound} (http {http_bound})");
    task.await.context("namesrv task")??;
    crate::controller::finish(controller).await?;
    Ok(())
}

/// Builds the broker configuration from file, then flags.
pub fn broker_config(args: &BrokerArgs) -> anyhow::Result<BrokerConfig> {
    let mut cfg: BrokerConfig = read_toml(args.config.as_ref())?;
    if let Some(l) = args.listen {
        cfg.listen = l;
    }
    if let Some(n) = &args.namesrv {
        cfg.namesrv = n.clone();
    }
    if let Some(d) = &args.data_dir {
        cfg.data_dir = d.clone();
    }
    if let Some(n) = &args.broker_name {
        cfg.broker_name = n.clone();
    }
    if let Some(i) = args.broker_id {
        cfg.broker_id = i;
    }
    if let Some(h) = args.heartbeat_ms {
        cfg.heartbeat_interval_ms = h;
    }
    let r = &mut cfg.replication;
    if let Some(x) = args.role {
        r.role = Some(x);
    }
    if let Some(x) = args.replication_listen {
        r.listen = Some(x);
    }
    if let Some(x) = &args.master_addr {
        r.master_addr = Some(x.clone());
    }
    if let Some(x) = args.min_insync_replicas {
        r.min_insync_replicas = x;
    }
    if let Some(x) = args.ack_timeout_ms {
        r.ack_timeout_ms = x;
    }
    if let Some(x) = args.replication_protocol_max {
        r.protocol_max = Some(x);
    }
    if let Some(x) = args.max_lag_ms {
        r.max_lag_ms = x;
    }
    if let Some(x) = args.reconnect_backoff_ms {
        r.reconnect_backoff_ms = x;
    }
    if let Some(x) = &args.controller {
        r.controller = x.clone();
    }
    if let Some(f) = args.flush {
        cfg.flush = f;
    }
    if let Some(h) = args.http_listen {
        cfg.http_listen = Some(h);
    }
    if let (Some(c), Some(k)) = (&args.tls_cert, &args.tls_key) {
        cfg.tls = sofamq_server::tls::TlsConfig::new(c, k);
    }
    if r.role == Some(Role::Slave) && cfg.broker_id == 0 {
        cfg.broker_id = 1;
    }
    Ok(cfg)
}

/// Runs a broker until Ctrl-C / SIGTERM.
pub async fn broker(args: BrokerArgs) -> anyhow::Result<()> {
    let cfg = broker_config(&args)?;
    let topics: Vec<_> = args
        .topics
        .iter()
        .map(|t| crate::startup::parse_topic(t))
        .collect::<anyhow::Result<_>>()?;
    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("binding {}", cfg.listen))?;
    let bound = listener.local_addr()?;
    let repl_listener = match cfg.replication.listen {
        Some(a) => Some(sofamq_broker::server::bind_replication(a).await?),
        None => None,
    };
    let repl_bound = match &repl_listener {
        Some(l) => l.local_addr()?.to_string(),
        None => "none".into(),
    };
    let name = cfg.broker_name.clone();
    let broker = sofamq_broker::server::open(cfg).await?;
    let role = broker.repl().role().as_str();
    if broker.config().replication.controlled() {
        // Roles come later from the controller: create the topics once this broker is master.
        if !topics.is_empty() {
            tokio::spawn(crate::startup::create_when_master(broker.clone(), topics));
        }
    } else {
        if broker.repl().role() == Role::Slave {
            anyhow::ensure!(
                topics.is_empty(),
                "--topic is for masters; a slave gets its topics from the master's log"
            );
        }
        for (t, q, ty) in &topics {
            broker
                .create_topic(t, *q, *ty)
                .await
                .with_context(|| format!("creating topic {t}"))?;
        }
    }
    let shutdown = Shutdown::from_signals();
    let mut reg_rx = broker.registered();
    let observed = broker.clone();
    let listeners = sofamq_broker::Listeners {
        grpc: listener,
        replication: repl_listener,
        http: None,
    };
    let mut task = tokio::spawn(sofamq_broker::serve(listeners, broker, shutdown.clone()));
    // Ready once a NameServer knows us, so clients can route to this broker.
    tokio::select! {
        r = reg_rx.wait_for(|r| *r) => { r.context("broker stopped before registering")?; }
        r = &mut task => { r.context("broker task")??; anyhow::bail!("broker stopped"); }
    }
    let http = observed
        .metrics()
        .http_addr()
        .map_or_else(|| "none".to_string(), |a| a.to_string());
    drop(observed);
    println!("broker {name} ready on {bound} ({role}, replication {repl_bound}, http {http})");
    task.await.context("broker task")??;
    Ok(())
}
