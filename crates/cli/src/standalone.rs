//! `sofamq standalone`: a whole local cluster in one process — a NameServer, a
//! single-voter controller and the broker group `broker-a` (master + synchronous
//! slave, failover on) — on consecutive ports from `--port-base`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use sofamq_broker::repl::Role;
use sofamq_broker::{BrokerConfig, FlushMode};
use sofamq_namesrv::NamesrvConfig;
use sofamq_server::Shutdown;
use tokio::net::TcpListener;

/// Port layout relative to `--port-base`.
pub mod ports {
    /// NameServer (the client access point).
    pub const NAMESRV: u16 = 0;
    /// broker-a master, client gRPC.
    pub const BROKER_A_MASTER: u16 = 1;
    /// broker-a master, replication.
    pub const BROKER_A_MASTER_REPL: u16 = 2;
    /// broker-a slave, client gRPC (admin; sends get HA_NOT_AVAILABLE).
    pub const BROKER_A_SLAVE: u16 = 3;
    /// broker-a slave, replication (used once it is promoted).
    pub const BROKER_A_SLAVE_REPL: u16 = 4;
    /// NameServer HTTP (`/metrics`, `/health`).
    pub const NAMESRV_HTTP: u16 = 5;
    /// broker-a master HTTP (`/metrics`, `/health`).
    pub const BROKER_A_MASTER_HTTP: u16 = 6;
    /// broker-a slave HTTP (`/metrics`, `/health`).
    pub const BROKER_A_SLAVE_HTTP: u16 = 7;
    /// The controller (a single voter) that decides broker-a's master.
    pub const CONTROLLER: u16 = 8;
}

/// Options of `sofamq standalone`.
#[derive(clap::Args, Debug)]
pub struct StandaloneArgs {
    /// Directory for every node's data.
    #[arg(long, default_value = "data/standalone", env = "SOFAMQ_DATA_DIR")]
    pub data_dir: PathBuf,
    /// First port; the NameServer (client access point) listens here, the
    /// broker on the next ones.
    #[arg(long, default_value_t = 9876, env = "SOFAMQ_PORT_BASE")]
    pub port_base: u16,
    /// Topic to create at start: NAME or NAME:QUEUES or NAME:QUEUES:TYPE
    /// (TYPE = NORMAL, FIFO, DELAY, TRANSACTION). Repeatable.
    #[arg(long = "topic")]
    pub topics: Vec<String>,
    /// Flush mode of the brokers: sync (fsync before ack) or async.
    #[arg(long, default_value = "sync", value_parser = crate::startup::parse_flush)]
    pub flush: FlushMode,
    /// Drop-behind, in MiB: each broker drops commit-log pages this far behind its durable
    /// end from the OS page cache (`drop_behind_bytes` of a broker's config). Off by
    /// default.
    #[arg(long, env = "SOFAMQ_DROP_BEHIND_MB", value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    pub drop_behind_mb: Option<u64>,
    /// Zero-fill ahead, in MiB: each broker keeps this much synced zeros past the write
    /// position of its active commit-log segment (`prefill_bytes` of a broker's config);
    /// 0 turns it off.
    #[arg(long, env = "SOFAMQ_PREFILL_MB", default_value_t = 16, value_parser = clap::value_parser!(u64).range(0..=1024))]
    pub prefill_mb: u64,
    /// Run broker-a's master alone (no slave; acks after the master's fsync only).
    #[arg(long)]
    pub no_slave: bool,
    /// No controller: broker 0 is master and broker 1 its slave until an operator switches
    /// them over (`sofamq admin promote|demote`).
    #[arg(long)]
    pub no_failover: bool,
    /// Turn access control on (every RPC then needs HMAC credentials).
    #[arg(long)]
    pub acl: bool,
    /// Access key of the bootstrap admin (with --acl).
    #[arg(long, env = "SOFAMQ_ADMIN_AK", requires = "acl")]
    pub admin_ak: Option<String>,
    /// Secret key of the bootstrap admin (with --acl).
    #[arg(
        long,
        env = "SOFAMQ_ADMIN_SK",
        requires = "admin_ak",
        hide_env_values = true
    )]
    pub admin_sk: Option<String>,
}

impl StandaloneArgs {
    fn acl_config(&self) -> sofamq_broker::acl::AclConfig {
        sofamq_broker::acl::AclConfig {
            enabled: self.acl,
            admin_access_key: self.admin_ak.clone().unwrap_or_default(),
            admin_secret_key: self.admin_sk.clone().unwrap_or_default(),
            ..Default::default()
        }
    }
}

fn addr(base: u16, offset: u16) -> anyhow::Result<SocketAddr> {
    let port = base
        .checked_add(offset)
        .context("--port-base too high for the port layout")?;
    Ok(SocketAddr::from(([127, 0, 0, 1], port)))
}

async fn bind(a: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(a)
        .await
        .with_context(|| format!("binding {what} on {a}"))
}

/// Runs the local cluster until Ctrl-C / SIGTERM.
pub async fn run(args: StandaloneArgs) -> anyhow::Result<()> {
    let shutdown = Shutdown::from_signals();
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let topics: Vec<_> = args
        .topics
        .iter()
        .map(|t| crate::startup::parse_topic(t))
        .collect::<anyhow::Result<_>>()?;

    let ns_addr = addr(args.port_base, ports::NAMESRV)?;
    let ns_listener = bind(ns_addr, "namesrv").await?;
    let ns_http = addr(args.port_base, ports::NAMESRV_HTTP)?;
    let m_http = addr(args.port_base, ports::BROKER_A_MASTER_HTTP)?;
    let s_http = addr(args.port_base, ports::BROKER_A_SLAVE_HTTP)?;
    let failover = !args.no_slave && !args.no_failover;
    let ctl_addr = addr(args.port_base, ports::CONTROLLER)?;
    let ns_cfg = NamesrvConfig {
        listen: ns_addr,
        http_listen: Some(ns_http),
        console: sofamq_namesrv::console::ConsoleConfig {
            controllers: if failover {
                vec![ctl_addr.to_string()]
            } else {
                Vec::new()
            },
            ..Default::default()
        },
        // One broker group, in this process: no retry can reach another group, so sends
        // need not wait for the registry to fill after a start.
        proxy: sofamq_namesrv::proxy::ProxyOptions {
            start_wait_ms: 0,
            ..Default::default()
        },
        ..Default::default()
    };
    let ns_task = tokio::spawn(sofamq_namesrv::run(ns_listener, ns_cfg, shutdown.clone()));

    let b_addr = addr(args.port_base, ports::BROKER_A_MASTER)?;
    let b_listener = bind(b_addr, "broker-a").await?;
    let m_repl = addr(args.port_base, ports::BROKER_A_MASTER_REPL)?;
    let s_addr = addr(args.port_base, ports::BROKER_A_SLAVE)?;
    let s_repl = addr(args.port_base, ports::BROKER_A_SLAVE_REPL)?;
    let ctl_task = if failover {
        Some(start_controller(ctl_addr, args.data_dir.join("controller"), &shutdown).await?)
    } else {
        None
    };
    let controller = if failover {
        vec![ctl_addr.to_string()]
    } else {
        Vec::new()
    };
    let mut b_cfg = BrokerConfig {
        broker_name: "broker-a".into(),
        broker_id: 0,
        listen: b_addr,
        namesrv: vec![ns_addr.to_string()],
        data_dir: args.data_dir.join("broker-a-0"),
        flush: args.flush,
        http_listen: Some(m_http),
        ..Default::default()
    };
    b_cfg.acl = args.acl_config();
    b_cfg.drop_behind_bytes = args.drop_behind_mb.map(|m| m << 20);
    b_cfg.prefill_bytes = args.prefill_mb << 20;
    // One build runs both brokers, so with async flush they may speak the newest replication
    // protocol: from version 3 a slave's acks carry what it received, which is what an
    // async-flush send waits for (not the slave's interval fdatasync).
    let repl_protocol = matches!(args.flush, sofamq_broker::FlushMode::Async)
        .then_some(sofamq_broker::repl::frame::MAX_VERSION);
    b_cfg.replication.protocol_max = repl_protocol;
    b_cfg.replication.role = Some(Role::Master);
    b_cfg.replication.controller = controller.clone();
    b_cfg.replication.min_insync_replicas = if args.no_slave { 1 } else { 2 };
    let m_repl_listener = if args.no_slave {
        None
    } else {
        b_cfg.replication.listen = Some(m_repl);
        Some(bind(m_repl, "broker-a master replication").await?)
    };
    let broker = sofamq_broker::server::open(b_cfg).await?;
    let mut reg_rx = broker.registered();
    let b_task = tokio::spawn(sofamq_broker::serve(
        sofamq_broker::Listeners {
            grpc: b_listener,
            replication: m_repl_listener,
            http: None,
        },
        broker.clone(),
        shutdown.clone(),
    ));
    let mut members = vec![broker.clone()];

    let s_task = if args.no_slave {
        None
    } else {
        let s_listener = bind(s_addr, "broker-a slave").await?;
        let s_repl_listener = bind(s_repl, "broker-a slave replication").await?;
        let mut s_cfg = BrokerConfig {
            broker_name: "broker-a".into(),
            broker_id: 1,
            listen: s_addr,
            namesrv: vec![ns_addr.to_string()],
            data_dir: args.data_dir.join("broker-a-1"),
            flush: args.flush,
            http_listen: Some(s_http),
            ..Default::default()
        };
        s_cfg.acl = args.acl_config();
        s_cfg.drop_behind_bytes = args.drop_behind_mb.map(|m| m << 20);
        s_cfg.prefill_bytes = args.prefill_mb << 20;
        s_cfg.replication.protocol_max = repl_protocol;
        s_cfg.replication.role = Some(Role::Slave);
        s_cfg.replication.listen = Some(s_repl);
        s_cfg.replication.controller = controller.clone();
        if !failover {
            s_cfg.replication.master_addr = Some(m_repl.to_string());
        }
        let slave = sofamq_broker::server::open(s_cfg).await?;
        members.push(slave.clone());
        Some(tokio::spawn(sofamq_broker::serve(
            sofamq_broker::Listeners {
                grpc: s_listener,
                replication: Some(s_repl_listener),
                http: None,
            },
            slave,
            shutdown.clone(),
        )))
    };
    // Ready needs a master (the controller's choice under failover) with its slave in sync.
    let master = wait_master(&members, !args.no_slave, Duration::from_secs(60)).await?;
    // Topics go through the master's log, so the slave gets them too; under failover each
    // member creates them again whenever it becomes master (idempotent).
    for (name, queues, ty) in &topics {
        master
            .create_topic(name, *queues, *ty)
            .await
            .with_context(|| format!("creating topic {name}"))?;
    }
    if failover {
        for m in &members {
            tokio::spawn(crate::startup::create_when_master(
                m.clone(),
                topics.clone(),
            ));
        }
    }
    let master_addr = if master.repl().identity() == 0 {
        b_addr
    } else {
        s_addr
    };
    tokio::select! {
        r = reg_rx.wait_for(|r| *r) => { r.context("broker stopped before registering")?; }
        _ = tokio::time::sleep(Duration::from_secs(30)) => anyhow::bail!("broker did not register with the namesrv within 30 s"),
    }
    // Ready means a client can route to every pre-created topic right now.
    wait_routable(
        ns_addr,
        topics.iter().map(|t| t.0.as_str()),
        Duration::from_secs(30),
    )
    .await?;
    if args.no_slave {
        println!(
            "sofamq standalone ready: access point {ns_addr} (broker-a master {b_addr}, no slave, data {}; http namesrv {ns_http} master {m_http}; console http://{ns_http}/console/)",
            args.data_dir.display()
        );
    } else {
        let slave_addr = if master_addr == b_addr {
            s_addr
        } else {
            b_addr
        };
        let how = if failover {
            format!("failover by the controller on {ctl_addr}")
        } else {
            "no failover".to_string()
        };
        println!(
            "sofamq standalone ready: access point {ns_addr} (broker-a master {master_addr}, slave {slave_addr}, in sync, {how}; replication {m_repl} / {s_repl}; data {}; http namesrv {ns_http} brokers {m_http} {s_http}; console http://{ns_http}/console/)",
            args.data_dir.display()
        );
    }

    shutdown.wait().await;
    tracing::info!("stopping");
    b_task.await.context("broker task")??;
    if let Some(t) = s_task {
        t.await.context("slave task")??;
    }
    if let Some(t) = ctl_task {
        t.await.context("controller task")??;
    }
    ns_task.await.context("namesrv task")??;
    Ok(())
}

/// Starts the single-voter controller on `addr` (stopped with the rest at shutdown).
async fn start_controller(
    addr: SocketAddr,
    data_dir: PathBuf,
    shutdown: &Shutdown,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<()>>> {
    let listener = bind(addr, "controller").await?;
    let cfg = sofamq_controller::ControllerConfig::new(
        1,
        [(1, addr.to_string())].into_iter().collect(),
        data_dir,
    );
    let ctl = sofamq_controller::Controller::start(cfg, shutdown.clone())
        .await
        .context("starting the controller")?;
    let shutdown = shutdown.clone();
    Ok(tokio::spawn(async move {
        sofamq_controller::serve(listener, ctl.clone(), shutdown).await?;
        ctl.stopped().await;
        Ok(())
    }))
}

/// Waits until one of `members` is master and (with `need_slave`) has a slave in sync.
async fn wait_master(
    members: &[sofamq_broker::Broker],
    need_slave: bool,
    limit: Duration,
) -> anyhow::Result<sofamq_broker::Broker> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        for m in members {
            let r = m.repl();
            if r.role() == Role::Master
                && r.check_lease().is_ok()
                && (!need_slave || r.tracker().snapshot().in_sync >= 1)
            {
                return Ok(m.clone());
            }
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "broker-a had no master with its slave in sync within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the namesrv at `ns` returns a route for every topic in `topics`.
async fn wait_routable<'a>(
    ns: SocketAddr,
    topics: impl Iterator<Item = &'a str>,
    limit: Duration,
) -> anyhow::Result<()> {
    use sofamq_proto::v2::messaging_service_client::MessagingServiceClient;
    use sofamq_proto::v2::{Code, QueryRouteRequest, Resource};
    let deadline = tokio::time::Instant::now() + limit;
    let channel = tonic::transport::Channel::from_shared(format!("http://{ns}"))?.connect_lazy();
    let mut client = MessagingServiceClient::new(channel);
    for topic in topics {
        loop {
            let req = QueryRouteRequest {
                topic: Some(Resource {
                    name: topic.to_string(),
                    resource_namespace: String::new(),
                }),
                endpoints: None,
            };
            let ok = match client.query_route(req).await {
                Ok(r) => r
                    .into_inner()
                    .status
                    .is_some_and(|s| s.code == Code::Ok as i32),
                Err(_) => false,
            };
            if ok {
                break;
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "topic {topic} not routable through the namesrv within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}
