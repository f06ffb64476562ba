//! Crash-test child: appends deterministic records from several threads and prints every
//! append acknowledged as durable, until it is killed.
//!
//! Usage: `sofamq-store-crasher <dir> <round> <writers>`. Output lines:
//! `ok <log_offset> <queue_offset> <round> <writer> <seq>`.

use std::io::Write;
use std::time::Duration;

use sofamq_store::testutil::crash_record;
use sofamq_store::{Store, StoreConfig};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: sofamq-store-crasher <dir> <round> <writers>");
        std::process::exit(2);
    }
    let round: u64 = args[2].parse().unwrap_or(0);
    let writers: u32 = args[3].parse().unwrap_or(4);
    let mut cfg = StoreConfig::new(&args[1]);
    cfg.segment_size = 64 * 1024;
    cfg.cq_flush_interval = Duration::from_millis(15);
    let store = match Store::open(cfg) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("open failed: {e}");
            std::process::exit(3);
        }
    };
    if let Some(reason) = store.fenced() {
        eprintln!("fenced: {reason}");
        std::process::exit(4);
    }
    println!("ready");
    let mut handles = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        handles.push(std::thread::spawn(move || {
            let mut seq = 0u64;
            loop {
                // Alternate single appends and small multi-record appends.
                let n = 1 + (seq % 3) * u64::from(w % 2);
                let recs: Vec<_> = (seq..seq + n).map(|s| crash_record(round, w, s)).collect();
                match store.append_blocking(recs) {
                    Ok(done) => {
                        let mut out = std::io::stdout().lock();
                        for (i, a) in done.iter().enumerate() {
                            let _ = writeln!(
                                out,
                                "ok {} {} {round} {w} {}",
                                a.log_offset,
                                a.queue_offset,
                                seq + i as u64
                            );
                        }
                        let _ = out.flush();
                    }
                    Err(e) => {
                        eprintln!("append failed: {e}");
                        std::process::exit(5);
                    }
                }
                seq += n;
            }
        }));
    }
    for h in handles {
        let _ = h.join();
    }
}
