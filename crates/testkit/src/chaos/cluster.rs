//! The chaos cluster: a namesrv, one broker group (master + slave) and, with the controller
//! failover strategy, 1 or 3 `sofamq controller` processes, each a real process on 127.0.0.1
//! in a temp dir. Every broker is reached through two fault-injecting proxies: clients dial its
//! client proxy (the broker's `advertise` address) and its peer dials its replication proxy.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sofamq_store::{Store, StoreConfig};

use super::history::{LogDigest, digest};
use super::rng::Rng;
use crate::disk::LoopDisk;
use crate::proxy::Proxy;
use crate::repl::free_port;
use crate::{Node, sofamq_bin};

/// Broker group name.
pub const GROUP: &str = "broker-a";

/// Who decides which broker is master after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failover {
    /// The kit promotes the slave (`sofamq admin promote`) after the master dies and restarts
    /// the old master as a slave of the new one.
    Manual,
    /// `sofamq controller` processes decide; the kit only kills, restarts and waits.
    Controller,
}

impl std::str::FromStr for Failover {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "manual" => Ok(Failover::Manual),
            "controller" => Ok(Failover::Controller),
            _ => Err(format!("failover must be manual or controller, not {s:?}")),
        }
    }
}

/// Cluster settings.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Failover strategy.
    pub failover: Failover,
    /// Controllers to start with [`Failover::Controller`] (1 or 3).
    pub controllers: usize,
    /// `--min-insync-replicas` of both brokers (1 = ack before replication: the broken build).
    pub min_insync: usize,
    /// `--ack-timeout-ms`.
    pub ack_timeout_ms: u64,
    /// `--max-lag-ms`.
    pub max_lag_ms: u64,
    /// Disk budget of the first master (`max_disk_bytes`).
    pub master_disk_budget: Option<u64>,
    /// Give each broker a real filesystem of this many MiB ([`LoopDisk`]) for its data.
    pub loop_disk_mib: Option<u64>,
    /// Make those filesystems thin ([`LoopDisk::thin`]: they can be starved into EIO).
    pub thin_disks: bool,
    /// Topic and its queue count.
    pub topic: String,
    /// Queues of the topic.
    pub queues: u32,
    /// More topics to create: (name, type as `sofamq topic create --type` takes it).
    pub extra_topics: Vec<(String, String)>,
    /// Added to every broker's TOML configuration before its `[replication]` table: top-level
    /// keys first, then tables (e.g. `[transaction]`), never `[replication]`.
    pub broker_toml: String,
    /// Run every process under this libfaketime (`LD_PRELOAD`), each with a wall clock of
    /// its own that [`ChaosCluster::set_clock`] moves; monotonic clocks stay real.
    pub fake_clocks: Option<PathBuf>,
    /// Put every broker's and controller's data on a power-loss filesystem of its own
    /// ([`sofamq_lazyfs::LazyFs`]): [`ChaosCluster::power_cut`] loses what it did not fsync.
    pub lazyfs: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            failover: Failover::Manual,
            controllers: 3,
            min_insync: 2,
            ack_timeout_ms: 2_000,
            max_lag_ms: 3_000,
            master_disk_budget: None,
            loop_disk_mib: None,
            thin_disks: false,
            topic: "chaos".into(),
            queues: 4,
            extra_topics: Vec::new(),
            broker_toml: String::new(),
            fake_clocks: None,
            lazyfs: false,
        }
    }
}

/// One broker process, restartable at the same addresses with the same data.
pub struct BrokerProc {
    /// `a0`, `a1`.
    pub name: String,
    /// Client gRPC address the broker binds.
    pub grpc: String,
    /// Replication address the broker binds.
    pub repl: String,
    /// `/health` and `/metrics` address the broker binds.
    pub http: String,
    /// Data directory.
    pub data: PathBuf,
    /// Clients reach the broker through this (its advertised address).
    pub client_proxy: Proxy,
    /// The peer reaches the replication port through this.
    pub repl_proxy: Proxy,
    /// Disk budget written to its config.
    pub disk_budget: Option<u64>,
    node: Option<Node>,
    starts: usize,
    /// The power-loss filesystem under `data` ([`ClusterOptions::lazyfs`]; dropped after
    /// the process is killed).
    pub lazy: Option<sofamq_lazyfs::LazyFs>,
    /// The filesystem under `data` (declared last: dropped after the process is killed).
    pub disk: Option<LoopDisk>,
}

impl BrokerProc {
    /// The store directory.
    pub fn store_dir(&self) -> PathBuf {
        self.data.join("store")
    }

    /// The running process's pid.
    pub fn pid(&self) -> Option<u32> {
        self.node.as_ref().and_then(Node::pid)
    }

    /// Running (started and not killed by the kit).
    pub fn running(&self) -> bool {
        self.node.is_some()
    }
}

/// A controller process.
pub struct ControllerProc {
    /// Raft node id (1-based).
    pub id: u64,
    /// Listen address.
    pub addr: String,
    /// Data directory.
    pub data: PathBuf,
    node: Option<Node>,
    /// Processes started so far: each incarnation logs to `controller-ID-N.log`.
    starts: usize,
    /// The power-loss filesystem under `data` ([`ClusterOptions::lazyfs`]).
    pub lazy: Option<sofamq_lazyfs::LazyFs>,
}

/// The running cluster.
pub struct ChaosCluster {
    /// Temp dir with data and process logs; removed on drop unless `SOFAMQ_CHAOS_KEEP` is set.
    pub dir: tempfile::TempDir,
    /// Settings.
    pub opts: ClusterOptions,
    /// NameServer address (fixed, so a restart keeps it).
    pub namesrv_addr: String,
    namesrv: Option<Node>,
    /// The two brokers.
    pub brokers: Vec<BrokerProc>,
    /// Controllers (empty with manual failover).
    pub controllers: Vec<ControllerProc>,
    /// Index of the broker the kit believes is master.
    pub master: usize,
}

async fn blocking<T, F>(f: F) -> anyhow::Result<T>
where
    F: FnOnce() -> anyhow::Result<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .context("blocking task")?
}

/// A LazyFs for node `name`: backing files in `dir/name-disk`, mounted on `dir/name-mnt`.
fn mount_lazy(dir: &Path, name: &str) -> anyhow::Result<sofamq_lazyfs::LazyFs> {
    let backing = dir.join(format!("{name}-disk"));
    let mnt = dir.join(format!("{name}-mnt"));
    std::fs::create_dir_all(&backing)?;
    std::fs::create_dir_all(&mnt)?;
    sofamq_lazyfs::LazyFs::mount(&backing, &mnt)
        .with_context(|| format!("mounting a LazyFs for {name}"))
}

async fn spawn_node(
    name: String,
    args: Vec<String>,
    log_dir: PathBuf,
    env: Vec<(String, String)>,
) -> anyhow::Result<Node> {
    blocking(move || {
        Node::spawn_retrying_env(&name, &args, &log_dir, 5, Duration::from_millis(300), &env)
    })
    .await
}

/// Runs `sofamq ARGS` to completion (bounded by `sofamq`'s own timeouts) and returns stdout.
pub async fn cli(args: Vec<String>) -> anyhow::Result<String> {
    blocking(move || {
        let out = Command::new(sofamq_bin()).args(&args).output()?;
        if !out.status.success() {
            bail!(
                "sofamq {args:?} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    })
    .await
}

/// True when this `sofamq` has the `controller` subcommand and `broker --controller`.
pub fn has_controller() -> bool {
    let help = |cmd: &str| {
        Command::new(sofamq_bin())
            .args([cmd, "--help"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    };
    help("controller").is_some() && help("broker").is_some_and(|h| h.contains("--controller"))
}

fn signal(pid: u32, sig: &str) -> anyhow::Result<()> {
    let st = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()?;
    anyhow::ensure!(st.success(), "kill -{sig} {pid} failed");
    Ok(())
}

fn sock(addr: &str) -> anyhow::Result<std::net::SocketAddr> {
    addr.parse().with_context(|| format!("address {addr}"))
}

impl ChaosCluster {
    /// Starts controllers (controller failover), the namesrv, the master `a0` and the slave
    /// `a1`, creates the topic and waits until the slave is in sync.
    pub async fn start(opts: ClusterOptions) -> anyhow::Result<ChaosCluster> {
        let keep = std::env::var_os("SOFAMQ_CHAOS_KEEP").is_some();
        let dir = tempfile::Builder::new()
            .prefix("sofamq-chaos-")
            .disable_cleanup(keep)
            .tempdir()?;
        if keep {
            eprintln!("chaos: keeping {}", dir.path().display());
        }
        let namesrv_addr = format!("127.0.0.1:{}", free_port()?);
        let mut brokers = Vec::new();
        for (i, name) in ["a0", "a1"].into_iter().enumerate() {
            let grpc = format!("127.0.0.1:{}", free_port()?);
            let repl = format!("127.0.0.1:{}", free_port()?);
            let http = format!("127.0.0.1:{}", free_port()?);
            let disk = match opts.loop_disk_mib {
                Some(mib) if opts.thin_disks => Some(LoopDisk::thin(mib)?),
                Some(mib) => Some(LoopDisk::new(mib)?),
                None => None,
            };
            let lazy = if opts.lazyfs {
                Some(mount_lazy(dir.path(), name)?)
            } else {
                None
            };
            brokers.push(BrokerProc {
                name: name.into(),
                client_proxy: Proxy::start(sock(&grpc)?).await?,
                repl_proxy: Proxy::start(sock(&repl)?).await?,
                grpc,
                repl,
                http,
                data: match (&disk, &lazy) {
                    (Some(d), _) => d.path().join("data"),
                    (None, Some(l)) => l.mountpoint().join("data"),
                    (None, None) => dir.path().join(name),
                },
                disk_budget: if i == 0 {
                    opts.master_disk_budget
                } else {
                    None
                },
                node: None,
                starts: 0,
                lazy,
                disk,
            });
        }
        let mut c = ChaosCluster {
            dir,
            opts,
            namesrv_addr,
            namesrv: None,
            brokers,
            controllers: Vec::new(),
            master: 0,
        };
        if c.opts.failover == Failover::Controller {
            c.start_controllers().await?;
        }
        c.start_namesrv().await?;
        c.start_broker(0, None).await?;
        c.start_broker(1, Some(0)).await?;
        c.settle(Duration::from_secs(30)).await?;
        let queues = c.opts.queues.to_string();
        let master = c.brokers[c.master].grpc.clone();
        let topics = std::iter::once((c.opts.topic.clone(), "NORMAL".to_string()))
            .chain(c.opts.extra_topics.iter().cloned());
        for (topic, ty) in topics {
            cli(vec![
                "topic".into(),
                "create".into(),
                topic,
                "--queues".into(),
                queues.clone(),
                "--type".into(),
                ty,
                "--broker-addr".into(),
                master.clone(),
            ])
            .await?;
        }
        // Let the namesrv learn the topic from a heartbeat.
        tokio::time::sleep(Duration::from_millis(600)).await;
        Ok(c)
    }

    fn clock_file(&self, clock: &str) -> PathBuf {
        self.dir.path().join(format!("clock-{clock}"))
    }

    /// The environment of a process whose wall clock is `clock` (`namesrv`, `controller-N`,
    /// a broker's name): empty unless [`ClusterOptions::fake_clocks`].
    fn clock_env(&self, clock: &str) -> anyhow::Result<Vec<(String, String)>> {
        let Some(lib) = &self.opts.fake_clocks else {
            return Ok(Vec::new());
        };
        let file = self.clock_file(clock);
        if !file.exists() {
            std::fs::write(&file, "+0\n")?;
        }
        Ok(vec![
            ("LD_PRELOAD".into(), lib.display().to_string()),
            ("FAKETIME_TIMESTAMP_FILE".into(), file.display().to_string()),
            // Only the wall clock moves: leases and timeouts run on the monotonic clock.
            ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
            // The file is read again at most every second.
            ("FAKETIME_CACHE_DURATION".into(), "1".into()),
        ])
    }

    /// Sets the wall clock `clock` (see [`ChaosCluster::clock_env`]) to real time plus
    /// `offset_s` seconds, for its running and future processes (within a second).
    pub fn set_clock(&self, clock: &str, offset_s: i64) -> anyhow::Result<()> {
        anyhow::ensure!(self.opts.fake_clocks.is_some(), "clocks are not faked");
        let file = self.clock_file(clock);
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, format!("{offset_s:+}\n"))?;
        std::fs::rename(&tmp, &file)?;
        Ok(())
    }

    /// The log directory (process logs are `NAME.log` in it).
    pub fn log_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts (or restarts, same address) the namesrv.
    pub async fn start_namesrv(&mut self) -> anyhow::Result<()> {
        let args = vec![
            "namesrv".into(),
            "--listen".into(),
            self.namesrv_addr.clone(),
            "--broker-expiry-ms".into(),
            "2000".into(),
        ];
        let env = self.clock_env("namesrv")?;
        let n = spawn_node("namesrv".into(), args, self.dir.path().to_path_buf(), env).await?;
        self.namesrv = Some(n);
        Ok(())
    }

    /// SIGTERM the namesrv.
    pub async fn stop_namesrv(&mut self) {
        if let Some(mut n) = self.namesrv.take() {
            let _ = blocking(move || Ok(n.terminate(Duration::from_secs(10)))).await;
        }
    }

    async fn start_controllers(&mut self) -> anyhow::Result<()> {
        if !has_controller() {
            bail!("needs controller: this sofamq has no `controller` subcommand");
        }
        let n = self.opts.controllers.max(1);
        self.controllers.clear();
        for id in 1..=n as u64 {
            let name = format!("controller-{id}");
            let lazy = if self.opts.lazyfs {
                Some(mount_lazy(self.dir.path(), &name)?)
            } else {
                None
            };
            self.controllers.push(ControllerProc {
                id,
                addr: format!("127.0.0.1:{}", free_port()?),
                data: match &lazy {
                    Some(l) => l.mountpoint().join("data"),
                    None => self.dir.path().join(name),
                },
                node: None,
                starts: 0,
                lazy,
            });
        }
        for i in 0..self.controllers.len() {
            self.start_controller(i).await?;
        }
        Ok(())
    }

    /// Starts (or restarts) controller `i` (`sofamq controller --id N --listen ADDR --peers
    /// 1=a,2=b,3=c --data-dir D`, ready line `controller ready on ADDR`).
    pub async fn start_controller(&mut self, i: usize) -> anyhow::Result<()> {
        let peers = self
            .controllers
            .iter()
            .map(|c| format!("{}={}", c.id, c.addr))
            .collect::<Vec<_>>()
            .join(",");
        let c = &self.controllers[i];
        let args = vec![
            "controller".into(),
            "--id".into(),
            c.id.to_string(),
            "--listen".into(),
            c.addr.clone(),
            "--peers".into(),
            peers,
            "--data-dir".into(),
            c.data.display().to_string(),
        ];
        let name = format!("controller-{}", c.id);
        let env = self.clock_env(&name)?;
        // One log per incarnation, as for brokers: a restart must not overwrite what the
        // previous process said.
        self.controllers[i].starts += 1;
        let log_name = format!("{name}-{}", self.controllers[i].starts);
        let node = spawn_node(log_name, args, self.dir.path().to_path_buf(), env).await?;
        self.controllers[i].node = Some(node);
        Ok(())
    }

    /// Controller `i` has a process.
    pub fn controller_alive(&self, i: usize) -> bool {
        self.controllers.get(i).is_some_and(|c| c.node.is_some())
    }

    /// kill -9 controller `i`.
    pub fn kill9_controller(&mut self, i: usize) {
        if let Some(mut n) = self.controllers[i].node.take() {
            n.kill9();
        }
    }

    /// Power cut on broker `i`'s node: kill -9 it, then its filesystem loses, keeps in part
    /// or tears what was not fsynced ([`sofamq_lazyfs::Fate`]) and is mounted again.
    pub fn power_cut(
        &mut self,
        i: usize,
        fate: sofamq_lazyfs::Fate,
        seed: u64,
    ) -> anyhow::Result<sofamq_lazyfs::CutReport> {
        self.kill9(i);
        let b = &mut self.brokers[i];
        let lazy = b.lazy.as_mut().context("power cut: not on a LazyFs")?;
        Ok(lazy.power_cut(fate, seed)?)
    }

    /// [`ChaosCluster::power_cut`] on controller `i`'s node.
    pub fn power_cut_controller(
        &mut self,
        i: usize,
        fate: sofamq_lazyfs::Fate,
        seed: u64,
    ) -> anyhow::Result<sofamq_lazyfs::CutReport> {
        self.kill9_controller(i);
        let c = &mut self.controllers[i];
        let lazy = c.lazy.as_mut().context("power cut: not on a LazyFs")?;
        Ok(lazy.power_cut(fate, seed)?)
    }

    /// The index of the controller that currently leads, from `sofamq admin cluster --json
    /// --controller ...` (`controller.leader_addr`); the first running controller when that
    /// query fails.
    pub async fn controller_leader(&self) -> Option<usize> {
        let out = cli(vec![
            "admin".into(),
            "cluster".into(),
            "--access-point".into(),
            self.namesrv_addr.clone(),
            "--json".into(),
            "--controller".into(),
            self.controller_list(),
        ])
        .await;
        if let Ok(out) = out
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(out.trim())
            && let Some(leader) = v["controller"]["leader_addr"].as_str()
            && let Some(i) = self
                .controllers
                .iter()
                .position(|c| c.addr == leader && c.node.is_some())
        {
            return Some(i);
        }
        self.controllers.iter().position(|c| c.node.is_some())
    }

    /// The controllers' addresses, comma separated.
    pub fn controller_list(&self) -> String {
        self.controllers
            .iter()
            .map(|c| c.addr.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    fn write_config(&self, i: usize) -> anyhow::Result<PathBuf> {
        let b = &self.brokers[i];
        let mut toml = format!("advertise = \"{}\"\n", b.client_proxy.addr());
        if let Some(budget) = b.disk_budget {
            toml.push_str(&format!("max_disk_bytes = {budget}\n"));
        }
        // The scenario's own settings come before the first table header, so that top-level
        // keys in them stay top-level; their tables must not include [replication].
        toml.push_str(&self.opts.broker_toml);
        toml.push_str(&format!(
            "[replication]\nadvertise = \"{}\"\n",
            b.repl_proxy.addr()
        ));
        let path = self.dir.path().join(format!("{}.toml", b.name));
        std::fs::write(&path, toml)?;
        Ok(path)
    }

    /// Starts broker `i`: as master (`follow` None) or as slave of broker `follow` through its
    /// replication proxy. With controller failover both are started alike with `--controller`
    /// and the controller assigns the roles.
    pub async fn start_broker(&mut self, i: usize, follow: Option<usize>) -> anyhow::Result<()> {
        let config = self.write_config(i)?;
        let o = &self.opts;
        let b = &self.brokers[i];
        let mut args: Vec<String> = vec![
            "broker".into(),
            "--config".into(),
            config.display().to_string(),
            "--broker-name".into(),
            GROUP.into(),
            "--listen".into(),
            b.grpc.clone(),
            "--replication-listen".into(),
            b.repl.clone(),
            "--http-listen".into(),
            b.http.clone(),
            "--namesrv".into(),
            self.namesrv_addr.clone(),
            "--data-dir".into(),
            b.data.display().to_string(),
            "--heartbeat-ms".into(),
            "200".into(),
            "--reconnect-backoff-ms".into(),
            "50".into(),
            "--min-insync-replicas".into(),
            o.min_insync.to_string(),
            "--ack-timeout-ms".into(),
            o.ack_timeout_ms.to_string(),
            "--max-lag-ms".into(),
            o.max_lag_ms.to_string(),
        ];
        match (o.failover, follow) {
            (Failover::Controller, _) => {
                // The controller decides the roles. Broker ids stay fixed (a0 = 0, a1 = 1; the
                // default role of id 0 only names the preferred first master); no `--role`,
                // since `--role slave` would turn id 0 into id 1.
                args.extend([
                    "--controller".into(),
                    self.controller_list(),
                    "--broker-id".into(),
                    i.to_string(),
                ]);
            }
            (Failover::Manual, None) => args.extend(["--role".into(), "master".into()]),
            (Failover::Manual, Some(m)) => args.extend([
                "--role".into(),
                "slave".into(),
                "--broker-id".into(),
                "1".into(),
                "--master-addr".into(),
                self.brokers[m].repl_proxy.addr().to_string(),
            ]),
        }
        let b = &mut self.brokers[i];
        b.starts += 1;
        let name = format!("{}-{}", b.name, b.starts);
        let clock = b.name.clone();
        let env = self.clock_env(&clock)?;
        let node = spawn_node(name, args, self.dir.path().to_path_buf(), env).await?;
        self.brokers[i].node = Some(node);
        Ok(())
    }

    /// The index of the broker that is not `i`.
    pub fn peer(&self, i: usize) -> usize {
        1 - i
    }

    /// kill -9 broker `i`.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut n) = self.brokers[i].node.take() {
            n.kill9();
        }
    }

    /// SIGTERM broker `i` and wait for it to exit.
    pub async fn stop(&mut self, i: usize) {
        if let Some(mut n) = self.brokers[i].node.take() {
            let _ = blocking(move || Ok(n.terminate(Duration::from_secs(15)))).await;
        }
    }

    /// SIGSTOP broker `i`.
    pub fn pause(&self, i: usize) -> anyhow::Result<()> {
        signal(self.brokers[i].pid().context("not running")?, "STOP")
    }

    /// SIGCONT broker `i`.
    pub fn resume(&self, i: usize) -> anyhow::Result<()> {
        signal(self.brokers[i].pid().context("not running")?, "CONT")
    }

    /// `sofamq admin status` of broker `i` (None when it does not answer).
    pub async fn status(&self, i: usize) -> Option<serde_json::Value> {
        let addr = self.brokers[i].grpc.clone();
        let out = cli(vec![
            "admin".into(),
            "status".into(),
            "--broker-addr".into(),
            addr,
        ])
        .await
        .ok()?;
        serde_json::from_str(out.trim()).ok()
    }

    /// Broker `i`'s `/health`: the HTTP status and the JSON answer (None if unreachable).
    pub async fn health(&self, i: usize) -> Option<(u16, serde_json::Value)> {
        let (code, body) =
            crate::http::get(&self.brokers[i].http, "/health", Duration::from_secs(5))
                .await
                .ok()?;
        Some((code, serde_json::from_str(&body).ok()?))
    }

    /// How far broker `i`'s wall clock is ahead of ours, in whole seconds (from the `Date`
    /// header of its `/health`; None if unreachable).
    pub async fn clock_offset(&self, i: usize) -> Option<i64> {
        let t = crate::http::server_time(&self.brokers[i].http, "/health", Duration::from_secs(5))
            .await
            .ok()?;
        let now = std::time::SystemTime::now();
        Some(match t.duration_since(now) {
            Ok(ahead) => ahead.as_secs_f64().round() as i64,
            Err(e) => -(e.duration().as_secs_f64().round() as i64),
        })
    }

    /// The first sample of metric `name` in broker `i`'s `/metrics` (None if unreachable).
    pub async fn metric(&self, i: usize, name: &str) -> Option<f64> {
        let (_, body) = crate::http::get(&self.brokers[i].http, "/metrics", Duration::from_secs(5))
            .await
            .ok()?;
        crate::http::sample(&body, name)
    }

    /// After the master died: make the slave master (manual: promote it; controller: wait for
    /// the controller to do it), and set `self.master`.
    pub async fn fail_over(&mut self, dead: usize) -> anyhow::Result<()> {
        let next = self.peer(dead);
        match self.opts.failover {
            Failover::Manual => {
                let addr = self.brokers[next].grpc.clone();
                let deadline = Instant::now() + Duration::from_secs(20);
                loop {
                    match cli(vec![
                        "admin".into(),
                        "promote".into(),
                        "--broker-addr".into(),
                        addr.clone(),
                    ])
                    .await
                    {
                        Ok(_) => break,
                        Err(e) if Instant::now() > deadline => return Err(e),
                        Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                }
                self.master = next;
            }
            Failover::Controller => {
                // The controller elects only an in-sync slave: when the dead master was alone
                // in the in-sync set, nobody takes over until it returns (the caller restarts
                // it next), so a timeout here is not an error.
                if let Ok(m) = self.wait_master(Duration::from_secs(10)).await {
                    self.master = m;
                }
            }
        }
        Ok(())
    }

    /// Restarts a stopped broker in the role it should have now: a slave of the current master.
    pub async fn restart_as_slave(&mut self, i: usize) -> anyhow::Result<()> {
        let m = self.peer(i);
        anyhow::ensure!(
            self.opts.failover == Failover::Controller || self.master == m,
            "broker {i} is the master"
        );
        self.start_broker(i, Some(m)).await
    }

    /// Waits for a stable group: manual failover: the known master has an in-sync slave;
    /// controller failover: exactly one running broker says it is master and it has an in-sync
    /// slave (then `self.master` is set to it).
    pub async fn settle(&mut self, max: Duration) -> anyhow::Result<()> {
        if self.opts.failover == Failover::Manual {
            return self.wait_in_sync(max).await;
        }
        let deadline = Instant::now() + max;
        loop {
            let mut masters = Vec::new();
            for i in 0..self.brokers.len() {
                if self.brokers[i].running()
                    && let Some(s) = self.status(i).await
                    && s["role"].as_str() == Some("master")
                {
                    masters.push((i, s["in_sync_slaves"].as_u64().unwrap_or(0)));
                }
            }
            if let [(m, in_sync)] = masters[..]
                && in_sync >= 1
            {
                self.master = m;
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("no single master with an in-sync slave within {max:?}: {masters:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Polls until some broker reports role master; returns its index.
    pub async fn wait_master(&self, max: Duration) -> anyhow::Result<usize> {
        let deadline = Instant::now() + max;
        loop {
            for i in 0..self.brokers.len() {
                if self.brokers[i].running()
                    && let Some(s) = self.status(i).await
                    && s["role"].as_str() == Some("master")
                {
                    return Ok(i);
                }
            }
            if Instant::now() > deadline {
                bail!("no master within {max:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until the master has an in-sync slave.
    pub async fn wait_in_sync(&self, max: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + max;
        loop {
            if let Some(s) = self.status(self.master).await
                && s["in_sync_slaves"].as_u64().unwrap_or(0) >= 1
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} has no in-sync slave within {max:?}",
                    self.brokers[self.master].name
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until the slave has acked the master's whole log (false on timeout).
    pub async fn wait_caught_up(&self, max: Duration) -> bool {
        let deadline = Instant::now() + max;
        while Instant::now() < deadline {
            if let Some(s) = self.status(self.master).await {
                let end = s["log_end_offset"].as_u64().unwrap_or(u64::MAX);
                let acked = s["slaves"]
                    .as_array()
                    .and_then(|a| a.iter().filter_map(|x| x["acked_offset"].as_u64()).max());
                if acked.is_some_and(|a| a >= end) {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    }

    /// Heals every proxy.
    pub fn heal_links(&self) {
        for b in &self.brokers {
            b.client_proxy.heal();
            b.repl_proxy.heal();
        }
    }

    /// Stops every process (brokers SIGTERM, then namesrv and controllers).
    pub async fn stop_all(&mut self) {
        for i in 0..self.brokers.len() {
            if let Some(pid) = self.brokers[i].pid() {
                let _ = signal(pid, "CONT");
            }
            self.stop(i).await;
        }
        self.stop_namesrv().await;
        for c in &mut self.controllers {
            if let Some(mut n) = c.node.take() {
                n.kill9();
            }
        }
    }

    /// Reads broker `i`'s log offline (after [`ChaosCluster::stop_all`]).
    pub async fn log_digest(&self, i: usize) -> anyhow::Result<LogDigest> {
        let dir = self.brokers[i].store_dir();
        let name = self.brokers[i].name.clone();
        blocking(move || log_digest(&name, &dir)).await
    }

    /// kill -9 broker `i`, then tear the tail of its last segment: append a partial copy of
    /// the log's last bytes plus garbage (`seed` picks the lengths). Returns the bytes added.
    pub fn tear_tail(&self, i: usize, seed: u64) -> anyhow::Result<usize> {
        anyhow::ensure!(!self.brokers[i].running(), "kill the broker first");
        tear_tail(&self.brokers[i].store_dir(), seed)
    }

    /// Flips one byte of a stopped broker's log, below its durable offset and in the part
    /// its recovery verifies: see [`flip_durable_byte`].
    pub fn flip_durable_byte(&self, i: usize, seed: u64) -> anyhow::Result<Option<u64>> {
        anyhow::ensure!(!self.brokers[i].running(), "kill the broker first");
        flip_durable_byte(&self.brokers[i].store_dir(), seed)
    }

    /// Flips one byte of running broker `i`'s log in a sealed segment (the first segment
    /// while there is only one), below the checkpoint's durable offset: rot that neither
    /// recovery nor a reader meets, only the broker's scrub. The flipped offset, or `None`
    /// when the durable log is too short.
    pub fn flip_sealed_byte(&self, i: usize, seed: u64) -> anyhow::Result<Option<u64>> {
        anyhow::ensure!(self.brokers[i].running(), "the broker must be running");
        flip_sealed_byte(&self.brokers[i].store_dir(), seed)
    }
}

impl ChaosCluster {
    /// Damages a file of stopped broker `i` by `kind` ([`FileDamage`]): see [`damage_file`].
    pub fn damage_file(
        &self,
        i: usize,
        kind: FileDamage,
        seed: u64,
    ) -> anyhow::Result<Option<String>> {
        anyhow::ensure!(!self.brokers[i].running(), "kill the broker first");
        damage_file(&self.brokers[i].store_dir(), kind, &self.opts.topic, seed)
    }

    /// Damages stopped controller `i`'s Raft log (`log`, one record per line): by seed,
    /// flips a byte of a whole record, cuts it short at a record boundary, or removes it;
    /// what it did, or `None` when the log has no record yet.
    pub fn damage_controller_log(&self, i: usize, seed: u64) -> anyhow::Result<Option<String>> {
        anyhow::ensure!(!self.controller_alive(i), "kill the controller first");
        let path = self.controllers[i].data.join("log");
        let mut bytes = std::fs::read(&path).with_context(|| format!("{}", path.display()))?;
        let ends: Vec<usize> = bytes
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'\n')
            .map(|(i, _)| i)
            .collect();
        if ends.is_empty() {
            return Ok(None);
        }
        let mut rng = Rng::new(seed);
        let k = rng.below(ends.len() as u64) as usize;
        match rng.below(3) {
            // Cut short at a record boundary: a clean, shorter log.
            0 => {
                std::fs::write(&path, &bytes[..if k == 0 { 0 } else { ends[k - 1] + 1 }])?;
                std::fs::File::open(&path)?.sync_all()?;
                return Ok(Some(format!(
                    "log cut to its first {k} of {} records",
                    ends.len()
                )));
            }
            1 => {
                std::fs::remove_file(&path)?;
                sync_parent(&path)?;
                return Ok(Some(format!("log of {} records removed", ends.len())));
            }
            _ => {}
        }
        let start = if k == 0 { 0 } else { ends[k - 1] + 1 };
        // A byte of the JSON after the CRC field ("xxxxxxxx "), never the newline.
        if ends[k] <= start + 10 {
            return Ok(None);
        }
        let at = start + 9 + rng.below((ends[k] - start - 9) as u64) as usize;
        bytes[at] ^= 0x01;
        std::fs::write(&path, &bytes)?;
        Ok(Some(format!(
            "byte {at} of record {k} of {} flipped",
            ends.len()
        )))
    }

    /// Truncates or removes one commit-log segment of stopped broker `i`: see
    /// [`lose_segment`].
    pub fn lose_segment(&self, i: usize, kind: u64, seed: u64) -> anyhow::Result<SegmentLoss> {
        anyhow::ensure!(!self.brokers[i].running(), "kill the broker first");
        lose_segment(&self.brokers[i].store_dir(), kind, seed)
    }
}

impl Drop for ChaosCluster {
    fn drop(&mut self) {
        for b in &mut self.brokers {
            if let Some(pid) = b.pid() {
                let _ = signal(pid, "CONT");
            }
            if let Some(mut n) = b.node.take() {
                n.kill9();
            }
            // Unmounted before the temp dir (dropped first) would walk into the mount.
            b.lazy.take();
        }
        for c in &mut self.controllers {
            if let Some(mut n) = c.node.take() {
                n.kill9();
            }
            c.lazy.take();
        }
    }
}

/// (offset, digest) of every record of the store in `dir`.
pub fn log_digest(name: &str, dir: &Path) -> anyhow::Result<LogDigest> {
    let store = Store::open(StoreConfig::new(dir))?;
    let mut records = Vec::new();
    for r in store.scan(0) {
        let r = r?;
        let mut props = Vec::new();
        for (k, v) in &r.properties {
            props.extend_from_slice(k.as_bytes());
            props.push(0);
            props.extend_from_slice(v.as_bytes());
            props.push(0);
        }
        let d = digest(&[
            &r.epoch.to_le_bytes(),
            r.topic.as_bytes(),
            &r.queue_id.to_le_bytes(),
            &r.queue_offset.to_le_bytes(),
            r.tag.as_bytes(),
            &r.store_ts_ms.to_le_bytes(),
            &props,
            &r.body,
        ]);
        records.push((r.log_offset, d));
    }
    Ok(LogDigest {
        name: name.to_string(),
        records,
        end: store.log_end_offset(),
    })
}

/// Appends a torn record to the last commit-log segment under `store_dir`.
pub fn tear_tail(store_dir: &Path, seed: u64) -> anyhow::Result<usize> {
    use std::io::Write;
    let segs = segment_files(store_dir)?;
    let last = segs.last().context("no segment")?;
    let bytes = std::fs::read(last)?;
    let mut rng = Rng::new(seed);
    // A prefix of a real-looking record (a copy of the segment's tail) cut at a random point,
    // then random garbage.
    let copy_len = (bytes.len().min(512) as u64 * (1 + rng.below(90)) / 100) as usize;
    let mut torn = bytes[bytes.len() - bytes.len().min(512)..][..copy_len].to_vec();
    for _ in 0..rng.below(64) + 1 {
        torn.push(rng.next_u64() as u8);
    }
    let mut f = std::fs::OpenOptions::new().append(true).open(last)?;
    f.write_all(&torn)?;
    f.sync_all()?;
    Ok(torn.len())
}

/// The commit-log segment files of the store in `store_dir`, in log order.
fn segment_files(store_dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(store_dir.join("commitlog"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.len() == 20 && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .collect();
    segs.sort();
    Ok(segs)
}

/// Flips one byte (xor 0x40) of the log in `store_dir` at a random offset below the durable
/// offset its checkpoint records, in the segments recovery verifies on open (from the one
/// holding the checkpoint's consume-queue offset): damage that must fence the log, not be
/// cut as a torn tail. Returns the offset, or `None` when that range is under 64 bytes.
pub fn flip_durable_byte(store_dir: &Path, seed: u64) -> anyhow::Result<Option<u64>> {
    let Some((at, start, path, _)) = durable_spot(store_dir, seed)? else {
        return Ok(None);
    };
    flip_at(&path, at - start)?;
    Ok(Some(at))
}

/// Flips byte `pos` of file `path` (xor 0x40), durably.
fn flip_at(path: &Path, pos: u64) -> anyhow::Result<()> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, pos)?;
    b[0] ^= 0x40;
    f.write_all_at(&b, pos)?;
    f.sync_all()?;
    Ok(())
}

/// The broker checkpoint's `(durable, cq_flushed)` offsets (see `sofamq_store`'s
/// `checkpoint.rs`: bytes 8..16 and 16..24).
fn checkpoint_offsets(store_dir: &Path) -> anyhow::Result<(u64, u64)> {
    let ck = std::fs::read(store_dir.join("checkpoint"))?;
    anyhow::ensure!(ck.len() >= 24, "short checkpoint");
    let word = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&ck[at..at + 8]);
        u64::from_le_bytes(b)
    };
    Ok((word(8), word(16)))
}

/// The commit-log segments of `store_dir` as `(start offset, path)`, in order.
fn segments_by_start(store_dir: &Path) -> anyhow::Result<Vec<(u64, PathBuf)>> {
    Ok(segment_files(store_dir)?
        .into_iter()
        .filter_map(|p| Some((p.file_name()?.to_str()?.parse().ok()?, p)))
        .collect())
}

/// Flips one byte in a sealed segment of the log in `store_dir` (the only segment when
/// there is one), below the checkpoint's durable offset; see
/// [`ChaosCluster::flip_sealed_byte`].
pub fn flip_sealed_byte(store_dir: &Path, seed: u64) -> anyhow::Result<Option<u64>> {
    let (durable, _) = checkpoint_offsets(store_dir)?;
    let segs = segments_by_start(store_dir)?;
    if segs.is_empty() {
        return Ok(None);
    }
    let sealed = segs.len().saturating_sub(1).max(1);
    let mut rng = Rng::new(seed);
    let (start, path) = &segs[rng.below(sealed as u64) as usize];
    let len = std::fs::metadata(path)?.len();
    let end = (start + len).min(durable);
    if end < start + 64 {
        return Ok(None);
    }
    let at = start + rng.below(end - start);
    flip_at(path, at - start)?;
    Ok(Some(at))
}

/// fsyncs the directory holding `path` (after a removal).
pub(crate) fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(d) => std::fs::File::open(d)?.sync_all(),
        None => Ok(()),
    }
}

/// What [`damage_file`] damages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileDamage {
    /// Zero a 4 KiB block of the log below the checkpoint's durable offset.
    ZeroBlock,
    /// Flip a byte of an epoch-history entry that is not the last one, remove the file, or
    /// cut its last entry (by seed).
    EpochEntry,
    /// Flip a byte of, zero, cut short or remove the checkpoint.
    Checkpoint,
    /// Swap the first two entries of a consume queue of `topic` (both below the
    /// checkpoint's flushed offset, so recovery does not rewrite them).
    QueueEntries,
}

/// Damages the store in `store_dir`: what it did, or `None` when there is nothing to damage
/// that way yet (a log too short, an epoch history of one entry).
pub fn damage_file(
    store_dir: &Path,
    kind: FileDamage,
    topic: &str,
    seed: u64,
) -> anyhow::Result<Option<String>> {
    use std::os::unix::fs::FileExt;
    let mut rng = Rng::new(seed);
    match kind {
        FileDamage::ZeroBlock => {
            let Some((at, start, path, durable)) = durable_spot(store_dir, seed)? else {
                return Ok(None);
            };
            let seg_len = std::fs::metadata(&path)?.len();
            let end = (at + 4096).min(durable).min(start + seg_len);
            let f = std::fs::OpenOptions::new().write(true).open(&path)?;
            f.write_all_at(&vec![0u8; (end - at) as usize], at - start)?;
            f.sync_all()?;
            Ok(Some(format!("log bytes {at}..{end} zeroed")))
        }
        FileDamage::EpochEntry => {
            let path = store_dir.join("epochs");
            let mut b = std::fs::read(&path)?;
            let n = b.len() / 20;
            let what = match rng.below(3) {
                0 if n >= 1 => {
                    std::fs::remove_file(&path)?;
                    sync_parent(&path)?;
                    return Ok(Some(format!("epoch history of {n} entries removed")));
                }
                1 if n >= 1 => {
                    b.truncate((n - 1) * 20);
                    format!("last epoch entry of {n} lost")
                }
                _ if n >= 2 => {
                    let k = rng.below(n as u64 - 1) as usize;
                    b[k * 20 + rng.below(20) as usize] ^= 0x10;
                    format!("epoch entry {k} of {n} corrupted")
                }
                _ => return Ok(None),
            };
            std::fs::write(&path, &b)?;
            let f = std::fs::File::open(&path)?;
            f.sync_all()?;
            Ok(Some(what))
        }
        FileDamage::QueueEntries => {
            let (_, flushed) = checkpoint_offsets(store_dir)?;
            let dir = store_dir.join("consumequeue").join(topic);
            let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
                Ok(d) => d.flatten().map(|e| e.path()).collect(),
                Err(_) => return Ok(None),
            };
            files.sort();
            let entry_end = |b: &[u8], i: usize| {
                let mut o = [0u8; 8];
                o.copy_from_slice(&b[i * 20..i * 20 + 8]);
                let mut z = [0u8; 4];
                z.copy_from_slice(&b[i * 20 + 8..i * 20 + 12]);
                u64::from_le_bytes(o) + u64::from(u32::from_le_bytes(z))
            };
            for f in files {
                let mut b = std::fs::read(&f)?;
                if b.len() < 3 * 20 || entry_end(&b, 1) > flushed {
                    continue;
                }
                let first: Vec<u8> = b[..20].to_vec();
                b.copy_within(20..40, 0);
                b[20..40].copy_from_slice(&first);
                std::fs::write(&f, &b)?;
                std::fs::File::open(&f)?.sync_all()?;
                return Ok(Some(format!(
                    "entries 0 and 1 of consume queue {topic}/{} swapped",
                    f.file_name().unwrap_or_default().to_string_lossy()
                )));
            }
            Ok(None)
        }
        FileDamage::Checkpoint => {
            let path = store_dir.join("checkpoint");
            let b = std::fs::read(&path)?;
            let what = match rng.below(4) {
                0 => {
                    let mut b = b.clone();
                    let i = rng.below(b.len() as u64) as usize;
                    b[i] ^= 0x04;
                    std::fs::write(&path, &b)?;
                    "checkpoint byte flipped"
                }
                1 => {
                    std::fs::write(&path, vec![0u8; b.len()])?;
                    "checkpoint zeroed"
                }
                2 => {
                    std::fs::write(&path, &b[..b.len() / 2])?;
                    "checkpoint cut short"
                }
                _ => {
                    std::fs::remove_file(&path)?;
                    "checkpoint removed"
                }
            };
            Ok(Some(what.into()))
        }
    }
}

/// A random log offset below the checkpoint's durable offset, in the part recovery verifies
/// (from the lowest segment start at or below the queues' flushed offset): `(offset, its
/// segment's start, that segment's path, durable)`.
fn durable_spot(store_dir: &Path, seed: u64) -> anyhow::Result<Option<(u64, u64, PathBuf, u64)>> {
    let (durable, cq_flushed) = checkpoint_offsets(store_dir)?;
    let segs = segments_by_start(store_dir)?;
    let from = durable.min(cq_flushed);
    let Some(lo) = segs.iter().map(|(s, _)| *s).filter(|s| *s <= from).max() else {
        return Ok(None);
    };
    if durable < lo + 64 {
        return Ok(None);
    }
    let mut rng = Rng::new(seed);
    let at = lo + rng.below(durable - lo);
    let Some((start, path)) = segs.iter().rev().find(|(s, _)| *s <= at) else {
        return Ok(None);
    };
    Ok(Some((at, *start, path.clone(), durable)))
}

/// What [`lose_segment`] did to a log.
#[derive(Debug, Clone)]
pub struct SegmentLoss {
    /// For the note, e.g. "segment 131072 truncated to 20011 of 65530 bytes".
    pub what: String,
    /// Whether bytes below the checkpoint's durable offset went: recovery must then open the
    /// log fenced and repair it from the master. (Bytes above it look like a torn tail or an
    /// unsynced end; the slave's normal catch-up fetches them.)
    pub below_durable: bool,
}

/// Damages the log in `store_dir` by `kind % 4`: 0 truncates a sealed segment at a random
/// point, 1 removes a sealed segment (the first included), 2 truncates the active segment at
/// a random point below the checkpoint's durable offset, 3 removes the active segment. Kinds
/// 0 and 1 fall back to 2 and 3 while the log has a single segment.
pub fn lose_segment(store_dir: &Path, kind: u64, seed: u64) -> anyhow::Result<SegmentLoss> {
    let (durable, _) = checkpoint_offsets(store_dir)?;
    let segs = segments_by_start(store_dir)?;
    anyhow::ensure!(!segs.is_empty(), "no segment");
    let mut rng = Rng::new(seed);
    let sealed = segs.len() - 1;
    let kind = match kind % 4 {
        0 | 1 if sealed == 0 => kind % 4 + 2,
        k => k,
    };
    let len = |p: &Path| std::fs::metadata(p).map(|m| m.len());
    let truncate = |p: &Path, to: u64| -> anyhow::Result<()> {
        let f = std::fs::OpenOptions::new().write(true).open(p)?;
        f.set_len(to)?;
        f.sync_all()?;
        Ok(())
    };
    let (start, path) = match kind {
        0 | 1 => segs[rng.below(sealed as u64) as usize].clone(),
        _ => segs[sealed].clone(),
    };
    let n = len(&path)?;
    Ok(match kind {
        0 => {
            let to = rng.below(n.max(1));
            truncate(&path, to)?;
            SegmentLoss {
                what: format!("sealed segment {start} truncated to {to} of {n} bytes"),
                below_durable: start + to < durable,
            }
        }
        1 => {
            std::fs::remove_file(&path)?;
            SegmentLoss {
                what: format!("sealed segment {start} ({n} bytes) removed"),
                below_durable: start < durable,
            }
        }
        2 => {
            let upto = durable.saturating_sub(start).min(n);
            let to = rng.below(upto.max(1));
            truncate(&path, to)?;
            SegmentLoss {
                what: format!(
                    "active segment {start} truncated to {to} of {n} bytes (durable {durable})"
                ),
                below_durable: start + to < durable,
            }
        }
        _ => {
            std::fs::remove_file(&path)?;
            SegmentLoss {
                what: format!("active segment {start} ({n} bytes) removed (durable {durable})"),
                below_durable: start < durable,
            }
        }
    })
}
