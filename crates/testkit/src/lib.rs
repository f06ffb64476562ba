//! Real-process test harness: starts `sofamq` namesrv and broker processes on
//! 127.0.0.1 (port 0, the bound address read back from the process) in a
//! temporary directory, and stops or kills exactly the processes it started.

mod binary;
pub mod chaos;
pub mod controller;
pub mod disk;
pub mod http;
pub mod logs;
pub mod official;
pub mod proxy;
pub mod repl;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, bail};

/// The `sofamq` binary under test, built first if need be, so that every process-level
/// test works on a clean target with no prior `cargo build`:
///
/// 1. the path given to [`set_sofamq_bin`] (`sofamq chaos` runs itself), as is;
/// 2. else `$SOFAMQ_BIN`, as is: never built nor checked (pin another build with it);
/// 3. else `<target-dir>/<profile>/sofamq` next to the running test executable
///    (`target/debug/deps/test-hash` -> `target/debug/sofamq`; also `target/release`,
///    custom profiles and `<target-dir>/<triple>/<profile>`). The first call in a process
///    builds it, when it is missing or older than a source (any file under `crates/` but
///    in `target` directories, the workspace `Cargo.toml`, `Cargo.lock`,
///    `.cargo/config.toml`), with `$CARGO build -p sofamq-cli --bin sofamq --profile
///    <profile> --target-dir <target-dir>` (default features) from the workspace root.
///    A file lock (`<profile-dir>/.sofamq-bin.lock`) makes concurrent test processes
///    (`cargo nextest run` starts one per test) wait for a single build and then find the
///    binary fresh; after a build the binary's mtime is raised to the build's start, so a
///    build cargo finds nothing to do for is not repeated. With `cargo test --workspace`
///    cargo has built it already, and nothing runs. A `sofamq` newer than the sources is
///    used as it is, whatever features it was built with.
///
/// Panics (it is test harness) if the build fails. Outside a source tree (the workspace
/// root this crate was compiled in is gone) the path is returned unbuilt.
pub fn sofamq_bin() -> PathBuf {
    if let Some(p) = BIN_OVERRIDE.get() {
        return p.clone();
    }
    if let Some(p) = std::env::var_os("SOFAMQ_BIN") {
        return PathBuf::from(p);
    }
    static BUILT: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    match BUILT.get_or_init(|| {
        let bin = default_bin();
        let root = repo_root();
        if !root.join("Cargo.lock").exists() {
            return Ok(bin);
        }
        let cargo = std::env::var_os("CARGO")
            .unwrap_or_else(|| option_env!("CARGO").unwrap_or("cargo").into());
        binary::ensure_built(&bin, &root, || Command::new(&cargo))
            .map(|_| bin)
            .map_err(|e| format!("{e:#}"))
    }) {
        Ok(bin) => bin.clone(),
        Err(e) => panic!("the sofamq binary for the process-level tests: {e}"),
    }
}

/// `target/<profile>/sofamq` next to the running test executable.
fn default_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/debug/deps/test-hash -> target/debug/sofamq
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join("sofamq")
}

static BIN_OVERRIDE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Makes [`sofamq_bin`] return `path` (used by `sofamq chaos`, which runs itself). First call wins.
pub fn set_sofamq_bin(path: &Path) {
    let _ = BIN_OVERRIDE.set(path.to_path_buf());
}

/// Calls `spawn` up to `attempts` times, `pause` apart, until it succeeds.
fn retry(
    attempts: usize,
    pause: Duration,
    mut spawn: impl FnMut() -> anyhow::Result<Node>,
) -> anyhow::Result<Node> {
    let mut last = None;
    for _ in 0..attempts.max(1) {
        match spawn() {
            Ok(n) => return Ok(n),
            Err(e) => {
                last = Some(e);
                std::thread::sleep(pause);
            }
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("spawn failed")))
}

/// One `sofamq` process this harness started.
pub struct Node {
    /// Name used in logs.
    pub name: String,
    /// Address the process reported it listens on.
    pub addr: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Node {
    /// Starts `sofamq ARGS`, waits (up to `wait`) for a stdout line containing
    /// "ready", and takes the address after the word "on" (or "point") from it.
    pub fn spawn(
        name: &str,
        args: &[String],
        log_dir: &Path,
        wait: Duration,
    ) -> anyhow::Result<Node> {
        Self::spawn_env(name, args, log_dir, wait, &[])
    }

    /// [`Node::spawn`] with more environment variables for the process.
    pub fn spawn_env(
        name: &str,
        args: &[String],
        log_dir: &Path,
        wait: Duration,
        env: &[(String, String)],
    ) -> anyhow::Result<Node> {
        Self::spawn_bin(&sofamq_bin(), name, args, log_dir, wait, env)
    }

    /// [`Node::spawn_env`] of another `sofamq` binary (another build, in an upgrade test).
    pub fn spawn_bin(
        bin: &Path,
        name: &str,
        args: &[String],
        log_dir: &Path,
        wait: Duration,
        env: &[(String, String)],
    ) -> anyhow::Result<Node> {
        anyhow::ensure!(
            bin.exists(),
            "{} missing: run `cargo build --bin sofamq`",
            bin.display()
        );
        let log = log_dir.join(format!("{name}.log"));
        let log_file = std::fs::File::create(&log)?;
        let mut child = Command::new(bin)
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = std::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains("ready") => {
                    let addr =
                        address_in(&line).with_context(|| format!("no address in {line:?}"))?;
                    // Keep draining stdout so the child never blocks on a full pipe.
                    std::thread::spawn(move || while rx.recv().is_ok() {});
                    return Ok(Node {
                        name: name.to_string(),
                        addr,
                        child: Some(child),
                        log,
                    });
                }
                Ok(_) => {}
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let tail = std::fs::read_to_string(&log).unwrap_or_default();
                    bail!("{name} not ready within {wait:?}; log:\n{tail}");
                }
            }
        }
    }

    /// [`Node::spawn`], tried up to `attempts` times `pause` apart: a fixed port can be
    /// briefly unavailable right after the previous process on it was killed.
    pub fn spawn_retrying(
        name: &str,
        args: &[String],
        log_dir: &Path,
        attempts: usize,
        pause: Duration,
    ) -> anyhow::Result<Node> {
        Self::spawn_retrying_env(name, args, log_dir, attempts, pause, &[])
    }

    /// [`Node::spawn_retrying`] of `bin` (None: [`sofamq_bin`]).
    pub fn spawn_retrying_bin(
        bin: Option<&Path>,
        name: &str,
        args: &[String],
        log_dir: &Path,
        attempts: usize,
        pause: Duration,
    ) -> anyhow::Result<Node> {
        let bin = bin.map_or_else(sofamq_bin, Path::to_path_buf);
        retry(attempts, pause, || {
            Node::spawn_bin(&bin, name, args, log_dir, Duration::from_secs(30), &[])
        })
    }

    /// [`Node::spawn_retrying`] with more environment variables for the process.
    pub fn spawn_retrying_env(
        name: &str,
        args: &[String],
        log_dir: &Path,
        attempts: usize,
        pause: Duration,
        env: &[(String, String)],
    ) -> anyhow::Result<Node> {
        retry(attempts, pause, || {
            Node::spawn_env(name, args, log_dir, Duration::from_secs(30), env)
        })
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait up to `wait` for a clean exit (SIGKILL after).
    pub fn terminate(&mut self, wait: Duration) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let deadline = std::time::Instant::now() + wait;
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            if std::time::Instant::now() > deadline {
                let _ = c.kill();
                return c.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process's log (stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Finds the first `host:port` token after "on " or "point " in a ready line.
fn address_in(line: &str) -> Option<String> {
    for marker in ["point ", "on "] {
        if let Some(i) = line.find(marker) {
            let rest = &line[i + marker.len()..];
            let tok: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '[' | ']'))
                .collect();
            if tok.contains(':') {
                return Some(tok);
            }
        }
    }
    None
}

/// A base port such that `base..base + n` are all free on 127.0.0.1 right now
/// (for `sofamq standalone --port-base`, which uses consecutive ports).
pub fn free_port_base(n: u16) -> anyhow::Result<u16> {
    fixed_ports(n)
}

/// `n` consecutive ports, free on 127.0.0.1 now, from 20000..32700: below Linux's
/// ephemeral range, so no port-0 listener or outgoing connection takes one before the
/// process meant to bind it does. Ports handed out once are not handed out again by this
/// process.
pub(crate) fn fixed_ports(n: u16) -> anyhow::Result<u16> {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU64, Ordering};
    static TAKEN: Mutex<Vec<(u16, u16)>> = Mutex::new(Vec::new());
    static SEED: AtomicU64 = AtomicU64::new(0);
    const LOW: u16 = 20_000;
    const HIGH: u16 = 32_700;
    anyhow::ensure!(n > 0 && n < 100, "ask for 1..100 ports");
    let mut x = SEED.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
        ^ u64::from(std::process::id()).rotate_left(32)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
    let mut taken = TAKEN.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..500 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let base = LOW + (x % u64::from(HIGH - LOW - n)) as u16;
        let overlaps = taken.iter().any(|&(b, len)| base < b + len && b < base + n);
        if overlaps {
            continue;
        }
        let all_free = (0..n).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok());
        if all_free {
            taken.push((base, n));
            return Ok(base);
        }
    }
    bail!("no {n} consecutive free ports found")
}

/// The repository root (for scripts under `scripts/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Installs (once) the official RocketMQ Python client into the project venv
/// and returns that venv's python.
pub fn compat_python() -> anyhow::Result<PathBuf> {
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/compat/setup-python.sh"))
        .stderr(Stdio::inherit())
        .output()?;
    anyhow::ensure!(out.status.success(), "setup-python.sh failed");
    let text = String::from_utf8_lossy(&out.stdout);
    let py = text
        .lines()
        .last()
        .context("setup-python.sh printed nothing")?;
    Ok(PathBuf::from(py.trim()))
}

/// `sofamq standalone` in its own process, on free ports, in a temp dir.
pub struct Standalone {
    /// Temporary directory holding data and logs.
    pub dir: tempfile::TempDir,
    /// The process; `node.addr` is the client access point.
    pub node: Node,
    /// The `--port-base` it runs on.
    pub port_base: u16,
}

impl Standalone {
    /// Starts a standalone cluster with extra arguments (e.g. `--topic T`).
    pub fn start(extra: &[&str]) -> anyhow::Result<Standalone> {
        let dir = tempfile::tempdir()?;
        let port_base = free_port_base(8)?;
        let mut args = vec![
            "standalone".to_string(),
            "--data-dir".into(),
            dir.path().join("data").display().to_string(),
            "--port-base".into(),
            port_base.to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let node = Node::spawn("standalone", &args, dir.path(), Duration::from_secs(60))?;
        Ok(Standalone {
            dir,
            node,
            port_base,
        })
    }
}

/// A namesrv plus broker groups (masters), each its own process.
pub struct Cluster {
    /// Temporary directory holding data and logs; removed on drop.
    pub dir: tempfile::TempDir,
    /// The NameServer (client access point).
    pub namesrv: Node,
    /// Broker masters, in the order started.
    pub brokers: Vec<Node>,
}

impl Cluster {
    /// Starts a namesrv on a free port.
    pub fn start_namesrv() -> anyhow::Result<Cluster> {
        let dir = tempfile::tempdir()?;
        let namesrv = Node::spawn(
            "namesrv",
            &["namesrv".into(), "--listen".into(), "127.0.0.1:0".into()],
            dir.path(),
            Duration::from_secs(20),
        )?;
        Ok(Cluster {
            dir,
            namesrv,
            brokers: Vec::new(),
        })
    }

    /// Starts a master of broker group `name` registered with the namesrv.
    pub fn add_broker(&mut self, name: &str, extra: &[String]) -> anyhow::Result<usize> {
        let data = self.dir.path().join(name);
        let mut args = vec![
            "broker".to_string(),
            "--broker-name".into(),
            name.into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--namesrv".into(),
            self.namesrv.addr.clone(),
            "--data-dir".into(),
            data.display().to_string(),
            "--heartbeat-ms".into(),
            "200".into(),
        ];
        args.extend(extra.iter().cloned());
        let node = Node::spawn(name, &args, self.dir.path(), Duration::from_secs(20))?;
        self.brokers.push(node);
        Ok(self.brokers.len() - 1)
    }

    /// Waits until the name server's direct route of `topic` (the one the SofaMQ SDK gets)
    /// names every broker group of `groups`: a broker's topics reach the name server with
    /// its next heartbeat, which a loaded machine can delay past any fixed sleep.
    pub async fn wait_route(
        &self,
        topic: &str,
        groups: &[&str],
        max: Duration,
    ) -> anyhow::Result<()> {
        use sofamq_proto::v2;
        let deadline = std::time::Instant::now() + max;
        let (host, port) = self
            .namesrv
            .addr
            .rsplit_once(':')
            .context("namesrv address")?;
        let endpoints = v2::Endpoints {
            scheme: v2::AddressScheme::IPv4 as i32,
            addresses: vec![v2::Address {
                host: host.into(),
                port: port.parse()?,
            }],
        };
        let mut seen = Vec::new();
        loop {
            if let Ok(mut c) = v2::messaging_service_client::MessagingServiceClient::connect(
                format!("http://{}", self.namesrv.addr),
            )
            .await
            {
                let mut req = tonic::Request::new(v2::QueryRouteRequest {
                    topic: Some(v2::Resource {
                        name: topic.into(),
                        ..Default::default()
                    }),
                    endpoints: Some(endpoints.clone()),
                });
                req.metadata_mut()
                    .insert("x-sofamq-route", "direct".parse()?);
                if let Ok(r) = c.query_route(req).await {
                    seen = r
                        .into_inner()
                        .message_queues
                        .iter()
                        .filter_map(|q| q.broker.as_ref().map(|b| b.name.clone()))
                        .collect();
                    if groups.iter().all(|g| seen.iter().any(|s| s == g)) {
                        return Ok(());
                    }
                }
            }
            if std::time::Instant::now() >= deadline {
                bail!("route of {topic} names {seen:?} after {max:?}, not all of {groups:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs `sofamq ARGS` to completion and returns its stdout (fails on a
    /// non-zero exit, with stderr in the error).
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(sofamq_bin()).args(args).output()?;
        if !out.status.success() {
            bail!(
                "sofamq {args:?} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::address_in;

    #[test]
    fn finds_addresses_in_ready_lines() {
        assert_eq!(
            address_in("namesrv ready on 127.0.0.1:4000").as_deref(),
            Some("127.0.0.1:4000")
        );
        assert_eq!(
            address_in("sofamq standalone ready: access point 127.0.0.1:9876 (broker-a ...)")
                .as_deref(),
            Some("127.0.0.1:9876")
        );
        assert_eq!(address_in("ready"), None);
    }
}
