//! Durable log and vote: torn tails, reopen, truncate, purge.

use std::io::Write;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::{CommittedLeaderId, EntryPayload, RaftLogReader};
use sofamq_controller::raft::{Entry, LogId, Vote};
use sofamq_controller::store::LogStore;
use sofamq_controller::{BrokerAddrs, Command};

fn entry(term: u64, index: u64) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
        payload: EntryPayload::Normal(Command::Register {
            group: "g".into(),
            broker_id: index,
            addrs: BrokerAddrs {
                grpc: "a".into(),
                repl: "b".into(),
            },
            store_epoch: 0,
        }),
    }
}

async fn indexes(s: &mut LogStore) -> Vec<u64> {
    s.try_get_log_entries(0..)
        .await
        .unwrap()
        .iter()
        .map(|e| e.log_id.index)
        .collect()
}

#[tokio::test]
async fn entries_and_vote_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = LogStore::open(dir.path()).unwrap();
        s.blocking_append(vec![entry(1, 1), entry(1, 2)])
            .await
            .unwrap();
        s.blocking_append(vec![entry(2, 3)]).await.unwrap();
        s.save_vote(&Vote::new(2, 3)).await.unwrap();
    }
    let mut s = LogStore::open(dir.path()).unwrap();
    assert_eq!(indexes(&mut s).await, vec![1, 2, 3]);
    assert_eq!(s.read_vote().await.unwrap(), Some(Vote::new(2, 3)));
    let st = s.get_log_state().await.unwrap();
    assert_eq!(st.last_log_id.map(|l| l.index), Some(3));
}

#[tokio::test]
async fn one_store_per_dir() {
    let dir = tempfile::tempdir().unwrap();
    let s = LogStore::open(dir.path()).unwrap();
    assert!(
        LogStore::open(dir.path()).is_err(),
        "second open of a live dir is refused"
    );
    drop(s);
    LogStore::open(dir.path()).unwrap();
}

#[tokio::test]
async fn torn_last_record_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = LogStore::open(dir.path()).unwrap();
        s.blocking_append(vec![entry(1, 1), entry(1, 2)])
            .await
            .unwrap();
    }
    // Half a record at the end, as after a crash mid-append.
    let path = dir.path().join("log");
    let full = std::fs::read(&path).unwrap();
    let last_line_start = full[..full.len() - 1]
        .iter()
        .rposition(|b| *b == b'\n')
        .unwrap()
        + 1;
    let torn = full[last_line_start..full.len() - 10].to_vec();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(&torn)
        .unwrap();
    {
        let mut s = LogStore::open(dir.path()).unwrap();
        assert_eq!(indexes(&mut s).await, vec![1, 2]);
        // The torn tail was cut: appending again and reopening works.
        s.blocking_append(vec![entry(1, 3)]).await.unwrap();
    }
    let mut s = LogStore::open(dir.path()).unwrap();
    assert_eq!(indexes(&mut s).await, vec![1, 2, 3]);
    assert_eq!(
        s.catching_up(),
        None,
        "a torn append was never acknowledged"
    );
    drop(s);
    // A flipped byte in a whole last record is damage: that record may have been
    // acknowledged, so the store is catching up (see the next test).
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n - 5] ^= 0x20;
    std::fs::write(&path, &bytes).unwrap();
    let mut s = LogStore::open(dir.path()).unwrap();
    assert_eq!(indexes(&mut s).await, vec![1, 2]);
    assert!(s.catching_up().is_some());
}

#[tokio::test]
async fn damage_before_good_records_is_cut_kept_aside_and_caught_up() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = LogStore::open(dir.path()).unwrap();
        s.blocking_append(vec![entry(1, 1), entry(1, 2), entry(1, 3)])
            .await
            .unwrap();
    }
    let path = dir.path().join("log");
    let mut bytes = std::fs::read(&path).unwrap();
    let second = bytes.iter().position(|b| *b == b'\n').unwrap() + 1;
    bytes[second + 12] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let mut s = LogStore::open(dir.path()).unwrap();
    // The good prefix is kept, the rest cut; a copy of the whole file is kept aside.
    assert_eq!(indexes(&mut s).await, vec![1]);
    let why = s.catching_up().expect("catching up");
    assert!(
        why.contains(&format!("damaged at byte {second} (crc mismatch)")),
        "{why}"
    );
    let kept: Vec<_> = std::fs::read_dir(dir.path().join("damaged"))
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    assert_eq!(kept, vec![bytes.clone()]);
    assert!(std::fs::read(&path).unwrap().len() == second);
    // Catching up survives a restart, until it is over.
    drop(s);
    let s = LogStore::open(dir.path()).unwrap();
    assert_eq!(s.catching_up().as_deref(), Some(why.as_str()));
    s.caught_up().unwrap();
    drop(s);
    assert_eq!(LogStore::open(dir.path()).unwrap().catching_up(), None);
}

#[tokio::test]
async fn truncate_and_purge_are_durable() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = LogStore::open(dir.path()).unwrap();
        s.blocking_append((1..=6).map(|i| entry(1, i)))
            .await
            .unwrap();
        s.truncate(LogId::new(CommittedLeaderId::new(1, 1), 5))
            .await
            .unwrap();
        s.purge(LogId::new(CommittedLeaderId::new(1, 1), 2))
            .await
            .unwrap();
        assert_eq!(indexes(&mut s).await, vec![3, 4]);
        s.blocking_append(vec![entry(2, 5)]).await.unwrap();
    }
    let mut s = LogStore::open(dir.path()).unwrap();
    assert_eq!(indexes(&mut s).await, vec![3, 4, 5]);
    let st = s.get_log_state().await.unwrap();
    assert_eq!(st.last_purged_log_id.map(|l| l.index), Some(2));
    assert_eq!(
        st.last_log_id.map(|l| (l.leader_id.term, l.index)),
        Some((2, 5))
    );
}

/// A log cut short at a record boundary, or removed, looks like a clean shorter log; the
/// `log-end` mark says it once held more, so the store is catching up. A torn append and a
/// Raft truncation do not lower the log below the mark.
#[tokio::test]
async fn a_log_cut_short_or_removed_is_caught_by_its_durable_end() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    {
        let mut s = LogStore::open(dir.path()).unwrap();
        s.blocking_append(vec![entry(1, 1), entry(1, 2), entry(1, 3)])
            .await
            .unwrap();
        // A Raft truncation (a conflicting uncommitted tail) lowers the mark first.
        s.truncate(LogId::new(CommittedLeaderId::new(1, 1), 3))
            .await
            .unwrap();
        s.blocking_append(vec![entry(2, 3), entry(2, 4)])
            .await
            .unwrap();
    }
    let pristine = std::fs::read(&path).unwrap();
    {
        let mut s = LogStore::open(dir.path()).unwrap();
        assert_eq!(indexes(&mut s).await, vec![1, 2, 3, 4]);
        assert_eq!(s.catching_up(), None, "a truncation is not damage");
    }
    // Cut after the second whole record: a clean, shorter log.
    let cut = pristine
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .nth(1)
        .unwrap()
        .0
        + 1;
    std::fs::write(&path, &pristine[..cut]).unwrap();
    {
        let mut s = LogStore::open(dir.path()).unwrap();
        assert_eq!(indexes(&mut s).await, vec![1, 2]);
        let why = s.catching_up().expect("a log cut short is caught");
        assert!(why.contains("held index 4 durably"), "{why}");
        s.caught_up().unwrap();
        // Entries from the leader raise the log again; then a reopen is clean.
        s.blocking_append(vec![entry(2, 3), entry(2, 4)])
            .await
            .unwrap();
    }
    assert_eq!(LogStore::open(dir.path()).unwrap().catching_up(), None);
    // Removed.
    std::fs::remove_file(&path).unwrap();
    let s = LogStore::open(dir.path()).unwrap();
    let why = s.catching_up().expect("a removed log is caught");
    assert!(why.contains("ends at index none"), "{why}");
}
