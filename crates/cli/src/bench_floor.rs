//! `sofamq bench floor`: the least one replicated send can wait on this machine.
//!
//! Three threads stand for a client, a master and a slave, linked by TCP over 127.0.0.1,
//! each blocking in `read` between messages; no runtime, no framing beyond a fixed size, no
//! encoding. One round trip: the client writes `--size` bytes to the master; the master
//! forwards them to the slave, appends them to its own file and fdatasyncs it, then reads
//! the slave's one-byte ack and answers the client with one byte; the slave appends the
//! bytes to its file, fdatasyncs and acks. The two fdatasyncs overlap as far as the hops
//! allow, as in SofaMQ's send path. With `--no-sync` only the hops remain: four one-way
//! trips over loopback, each waking a parked thread.
//!
//! What it measures is the machine, not SofaMQ: the disk's fdatasync and the cost of waking
//! a thread on another core. `scripts/bench/latency.sh` and `peers.sh` set a send at 1 in
//! flight beside it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;

/// How long any one read, write or accept may wait before the run gives up.
const IO_WAIT: Duration = Duration::from_secs(10);

#[derive(Args, Debug)]
pub struct FloorBenchArgs {
    /// Directory on the disk to measure (default: the current directory); the two scratch
    /// files go to `DIR/.sofamq-bench-floor-<pid>/` and are removed afterwards.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Bytes the client sends per round trip (what the master and the slave append).
    #[arg(long, default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..=4 * 1024 * 1024))]
    pub size: u32,
    /// Round trips, one at a time.
    #[arg(long, default_value_t = 3000,
          value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub count: u32,
    /// Skip both fdatasyncs: only the four hops over loopback remain.
    #[arg(long)]
    pub no_sync: bool,
    /// Write the result as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

pub fn run(args: &FloorBenchArgs) -> anyhow::Result<()> {
    let base = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::current_dir()?,
    };
    let dir = base.join(format!(".sofamq-bench-floor-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let t0 = Instant::now();
    let res = round_trips(&dir, args.size as usize, args.count as usize, !args.no_sync);
    let secs = t0.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&dir);
    let t = crate::bench::Timings::new(res?, secs);
    let what = if args.no_sync {
        "hops only, no fdatasync"
    } else {
        "fdatasync on both"
    };
    println!(
        "replicated floor: {} B, {} round trips client -> master -> slave over 127.0.0.1, {what}: {}",
        args.size,
        t.count(),
        t.text()
    );
    let mut v = serde_json::json!({
        "mode": "floor", "sync": !args.no_sync, "size": args.size, "iterations": t.count(),
    });
    t.write_json(&mut v, args.json.as_deref())
}

/// `count` round trips of `size` bytes; the client's latency of each.
fn round_trips(dir: &Path, size: usize, count: usize, sync: bool) -> anyhow::Result<Vec<Duration>> {
    let to_slave = TcpListener::bind("127.0.0.1:0")?;
    let to_master = TcpListener::bind("127.0.0.1:0")?;
    let (slave_addr, master_addr) = (to_slave.local_addr()?, to_master.local_addr()?);
    let slave_file = scratch(&dir.join("slave"))?;
    let master_file = scratch(&dir.join("master"))?;
    std::thread::scope(|s| {
        let slave = s.spawn(move || slave_loop(&to_slave, &slave_file, size, count, sync));
        let master =
            s.spawn(move || master_loop(&to_master, slave_addr, &master_file, size, count, sync));
        let client = client_loop(master_addr, size, count);
        // A failed side closes its sockets, so the others see EOF and stop too.
        let master = master
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("master thread panicked")));
        let slave = slave
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("slave thread panicked")));
        let lat = client.context("client")?;
        master.context("master")?;
        slave.context("slave")?;
        Ok(lat)
    })
}

fn scratch(path: &Path) -> anyhow::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))
}

fn connect(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, IO_WAIT)?;
    tune(&s)?;
    Ok(s)
}

fn tune(s: &TcpStream) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(IO_WAIT))?;
    s.set_write_timeout(Some(IO_WAIT))
}

/// Accepts one connection, giving up after [`IO_WAIT`].
fn accept_one(l: &TcpListener) -> anyhow::Result<TcpStream> {
    l.set_nonblocking(true)?;
    let deadline = Instant::now() + IO_WAIT;
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)?;
                tune(&s)?;
                return Ok(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "no connection within {IO_WAIT:?}"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn client_loop(master: SocketAddr, size: usize, count: usize) -> anyhow::Result<Vec<Duration>> {
    let mut m = connect(master)?;
    let body = vec![0x5au8; size];
    let mut ack = [0u8; 1];
    let mut lat = Vec::with_capacity(count);
    for _ in 0..count {
        let t = Instant::now();
        m.write_all(&body)?;
        m.read_exact(&mut ack)?;
        lat.push(t.elapsed());
    }
    Ok(lat)
}

fn master_loop(
    listener: &TcpListener,
    slave: SocketAddr,
    file: &File,
    size: usize,
    count: usize,
    sync: bool,
) -> anyhow::Result<()> {
    let mut sl = connect(slave)?;
    let mut client = accept_one(listener)?;
    let mut buf = vec![0u8; size];
    let mut ack = [0u8; 1];
    let mut pos = 0u64;
    for _ in 0..count {
        client.read_exact(&mut buf)?;
        // The slave's copy first, so its fdatasync runs while the master's does.
        sl.write_all(&buf)?;
        file.write_all_at(&buf, pos)?;
        if sync {
            file.sync_data()?;
        }
        sl.read_exact(&mut ack)?;
        client.write_all(&ack)?;
        pos += size as u64;
    }
    Ok(())
}

fn slave_loop(
    listener: &TcpListener,
    file: &File,
    size: usize,
    count: usize,
    sync: bool,
) -> anyhow::Result<()> {
    let mut m = accept_one(listener)?;
    let mut buf = vec![0u8; size];
    let mut pos = 0u64;
    for _ in 0..count {
        m.read_exact(&mut buf)?;
        file.write_all_at(&buf, pos)?;
        if sync {
            file.sync_data()?;
        }
        m.write_all(&[1])?;
        pos += size as u64;
    }
    Ok(())
}
