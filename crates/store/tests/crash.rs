//! SIGKILL crash test: a child process appends from several threads and reports every append
//! acknowledged as durable; we kill it at random points, sometimes add a torn write past the
//! end (as an unsynced write would leave), reopen, and check that every acknowledged record is
//! intact and that the log holds nothing but whole valid records.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Rng, last_segment};
use sofamq_store::testutil::{crash_queue, crash_record, same_content};
use sofamq_store::{Store, StoreConfig};

const ROUNDS: u64 = 22;
const WRITERS: u32 = 6;

struct Acked {
    log_offset: u64,
    queue_offset: u64,
    round: u64,
    writer: u32,
    seq: u64,
}

fn parse(line: &str) -> Option<Acked> {
    let mut it = line.split(' ');
    if it.next()? != "ok" {
        return None;
    }
    let mut n = || it.next()?.parse::<u64>().ok();
    Some(Acked {
        log_offset: n()?,
        queue_offset: n()?,
        round: n()?,
        writer: u32::try_from(n()?).ok()?,
        seq: n()?,
    })
}

#[test]
fn sigkill_never_loses_acknowledged_records() {
    let d = tempfile::tempdir().unwrap();
    let exe = env!("CARGO_BIN_EXE_sofamq-store-crasher");
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut acked: Vec<Acked> = Vec::new();
    // Rounds whose last segment ended in the zeros written ahead of the writer.
    let mut zero_tails = 0;
    let started = Instant::now();
    for round in 0..ROUNDS {
        let mut child = Command::new(exe)
            .arg(d.path())
            .arg(round.to_string())
            .arg(WRITERS.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                if l == "ready" {
                    let _ = tx.send(());
                }
                lines.push(l);
            }
            lines
        });
        // Wait for the child to be up, then let it run for a random while.
        rx.recv_timeout(Duration::from_secs(20))
            .expect("child did not start");
        std::thread::sleep(Duration::from_millis(5 + rng.below(200)));
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert!(!status.success());
        let lines = reader.join().unwrap();
        acked.extend(lines.iter().filter_map(|l| parse(l)));
        let tail = std::fs::read(last_segment(d.path())).unwrap();
        if tail.len() >= 4096 && tail[tail.len() - 4096..].iter().all(|b| *b == 0) {
            zero_tails += 1;
        }

        // Sometimes leave a torn, never-synced write past the end of the log.
        if rng.below(3) == 0 {
            let seg = last_segment(d.path());
            let n = 1 + rng.below(600) as usize;
            let garbage: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
            std::io::Write::write_all(&mut f, &garbage).unwrap();
        }

        verify(d.path(), &acked, round);
    }
    assert!(
        acked.len() > 200,
        "only {} acknowledged appends",
        acked.len()
    );
    // The kills found zero-filled tails to recover from (`StoreConfig::prefill`).
    assert!(zero_tails > 0, "no round ended in a zero-filled tail");
    eprintln!(
        "{} rounds ({} with a zero-filled tail), {} acknowledged records, {:?}",
        ROUNDS,
        zero_tails,
        acked.len(),
        started.elapsed()
    );
}

fn verify(dir: &std::path::Path, acked: &[Acked], round: u64) {
    let mut cfg = StoreConfig::new(dir);
    cfg.segment_size = 64 * 1024;
    let s = Store::open(cfg).unwrap();
    assert!(
        s.fenced().is_none(),
        "round {round}: fenced: {:?}",
        s.fenced()
    );
    let end = s.log_end_offset();

    // The whole log is a sequence of valid records ending exactly at log_end.
    let mut pos = 0;
    let mut by_offset = HashMap::new();
    let mut per_queue: BTreeMap<u32, u64> = BTreeMap::new();
    for r in s.scan(0) {
        let r = r.unwrap_or_else(|e| panic!("round {round}: scan error {e}"));
        assert_eq!(r.log_offset, pos);
        let next = per_queue.entry(r.queue_id).or_default();
        assert_eq!(r.queue_offset, *next, "dense queue offsets");
        *next += 1;
        pos = r.next_offset();
        by_offset.insert(r.log_offset, r);
    }
    assert_eq!(pos, end, "round {round}: scan ends at log end");

    // Every acknowledged record is there, intact, where we were told.
    for a in acked {
        let r = by_offset
            .get(&a.log_offset)
            .unwrap_or_else(|| panic!("round {round}: acked record at {} lost", a.log_offset));
        let want = crash_record(a.round, a.writer, a.seq);
        assert!(
            same_content(r, &want),
            "round {round}: record at {} differs",
            a.log_offset
        );
        assert_eq!(r.queue_offset, a.queue_offset);
        assert_eq!(r.queue_id, crash_queue(a.writer));
    }

    // Consume queues agree with the log.
    for (q, n) in &per_queue {
        assert_eq!(
            s.queue_offsets("crash", *q),
            (0, *n),
            "round {round} queue {q}"
        );
        let entries = s.read_queue_entries("crash", *q, 0, usize::MAX).unwrap();
        assert_eq!(entries.len() as u64, *n);
        for (i, e) in entries.iter().enumerate() {
            let r = &by_offset[&e.log_offset];
            assert_eq!((r.queue_id, r.queue_offset), (*q, i as u64));
        }
    }
}
