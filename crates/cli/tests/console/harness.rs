//! Processes the console tests start: `sofamq standalone` on free ports, and
//! chromedriver. Both die with the test (kill_on_drop).

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Installs Chromium and chromedriver if needed (scripts/console/install-chromium.sh);
/// `Err(reason)` when that is impossible here.
pub fn ensure_chromium() -> Result<(), String> {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../scripts/console/install-chromium.sh"
    );
    let out = std::process::Command::new("bash")
        .arg(script)
        .output()
        .map_err(|e| format!("cannot run {script}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// A base port with the nine ports standalone needs (and one for chromedriver) free.
pub fn free_base() -> anyhow::Result<u16> {
    for _ in 0..200 {
        let seed = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let base = seed.clamp(20_000, 60_000);
        let ok = (0..10).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok());
        if ok {
            return Ok(base);
        }
    }
    bail!("no run of ten free ports")
}

/// `sofamq standalone` on `base`, waited for until it says it is ready.
pub async fn standalone(base: u16, dir: &std::path::Path, extra: &[&str]) -> anyhow::Result<Child> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sofamq"))
        .arg("standalone")
        .arg("--data-dir")
        .arg(dir)
        .arg("--port-base")
        .arg(base.to_string())
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("spawning sofamq standalone")?;
    let mut lines = BufReader::new(child.stdout.take().context("no stdout")?).lines();
    let ready = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(l) = lines.next_line().await? {
            if l.contains("sofamq standalone ready") {
                return Ok::<_, anyhow::Error>(());
            }
        }
        bail!("standalone exited before it was ready")
    })
    .await
    .context("standalone not ready in 60 s")?;
    ready?;
    // Keep draining its stdout so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(child)
}

/// chromedriver in its own process group; dropping this kills the group, so the
/// Chromium it started dies with it even when a test times out mid-session.
pub struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(pid) = self.0.id() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .stderr(Stdio::null())
                .status();
        }
    }
}

pub fn chromedriver(port: u16) -> anyhow::Result<Driver> {
    Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map(Driver)
        .context("spawning chromedriver")
}
