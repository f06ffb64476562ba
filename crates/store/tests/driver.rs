//! `Driver::Caller`: no store threads; the owner runs the writer (`Store::step`) or a task on
//! its own runtime (`Store::drive`).

mod common;

use std::time::Duration;

use common::{cfg, rec};
use sofamq_store::{Driver, Store, StoreConfig};
use tokio::sync::oneshot::error::TryRecvError;

fn caller(dir: &std::path::Path) -> StoreConfig {
    StoreConfig {
        driver: Driver::Caller,
        cq_flush_interval: Duration::from_millis(50),
        ..cfg(dir)
    }
}

#[test]
fn nothing_is_written_until_the_owner_steps_the_writer() {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(caller(d.path())).unwrap();
    let mut rx = s
        .submit_append(vec![rec("t", 0, "a"), rec("t", 1, "b")])
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    assert_eq!(s.log_end_offset(), 0, "no thread wrote it");
    assert_eq!(s.step(), 1);
    let done = rx.try_recv().unwrap().unwrap();
    assert_eq!(done.len(), 2);
    assert_eq!(s.durable_offset(), s.log_end_offset());
    assert_eq!(&s.read_at(done[1].log_offset).unwrap().body[..], b"b");
    assert_eq!(s.step(), 0);
    // The blocking calls step the writer themselves.
    let more = s.append_blocking(vec![rec("t", 0, "c")]).unwrap();
    s.truncate(more[0].log_offset).unwrap();
    s.begin_epoch(3).unwrap();
    assert_eq!(s.log_end_offset(), more[0].log_offset);
    s.flush_queues().unwrap();
    drop(s);
    // Reopened with the store's own threads, the log is what was synced.
    let s = Store::open(cfg(d.path())).unwrap();
    assert_eq!(s.log_end_offset(), more[0].log_offset);
    assert_eq!(s.queue_offsets("t", 1), (0, 1));
    assert_eq!(s.current_epoch(), 3);
}

#[tokio::test(flavor = "current_thread")]
async fn drive_runs_the_writer_and_flusher_as_a_task_on_the_callers_runtime() {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(caller(d.path())).unwrap();
    let driver = tokio::spawn({
        let s = s.clone();
        async move { s.drive().await }
    });
    for i in 0..20 {
        let a = s.append(vec![rec("q", 0, &format!("m{i}"))]).await.unwrap();
        assert_eq!(a[0].queue_offset, i);
    }
    // The periodic flush writes the checkpoint: a reopen needs no full scan to know the queue.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(d.path().join("checkpoint").exists());
    drop(s);
    tokio::time::timeout(Duration::from_secs(5), driver)
        .await
        .expect("drive returns once the store's other handles are gone")
        .unwrap();
    let s = Store::open(cfg(d.path())).unwrap();
    assert_eq!(s.queue_offsets("q", 0), (0, 20));
}

/// The real file system with a slow fdatasync, as a simulator's disk reports it.
#[derive(Debug)]
struct SlowSync(Duration);

impl sofamq_store::io::Fs for SlowSync {
    fn open(
        &self,
        path: &std::path::Path,
        mode: sofamq_store::io::OpenMode,
    ) -> std::io::Result<std::sync::Arc<dyn sofamq_store::io::FileIo>> {
        sofamq_store::io::StdFs.open(path, mode)
    }
    fn read(&self, path: &std::path::Path) -> std::io::Result<Vec<u8>> {
        sofamq_store::io::StdFs.read(path)
    }
    fn list(&self, dir: &std::path::Path) -> std::io::Result<Vec<sofamq_store::io::Entry>> {
        sofamq_store::io::StdFs.list(dir)
    }
    fn exists(&self, path: &std::path::Path) -> bool {
        sofamq_store::io::StdFs.exists(path)
    }
    fn create_dir_all(&self, dir: &std::path::Path) -> std::io::Result<()> {
        sofamq_store::io::StdFs.create_dir_all(dir)
    }
    fn rename(&self, from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
        sofamq_store::io::StdFs.rename(from, to)
    }
    fn remove_file(&self, path: &std::path::Path) -> std::io::Result<()> {
        sofamq_store::io::StdFs.remove_file(path)
    }
    fn remove_dir_all(&self, dir: &std::path::Path) -> std::io::Result<()> {
        sofamq_store::io::StdFs.remove_dir_all(dir)
    }
    fn hard_link(&self, original: &std::path::Path, link: &std::path::Path) -> std::io::Result<()> {
        sofamq_store::io::StdFs.hard_link(original, link)
    }
    fn sync_dir(&self, dir: &std::path::Path) -> std::io::Result<()> {
        sofamq_store::io::StdFs.sync_dir(dir)
    }
    fn sync_delay(&self) -> Option<Duration> {
        Some(self.0)
    }
}

/// A caller-driven store over a disk whose every fdatasync takes 40 ms, its `drive` task
/// running on this runtime.
fn driven_over_a_slow_disk(dir: &std::path::Path) -> (Store, tokio::task::JoinHandle<()>) {
    let s = Store::open(StoreConfig {
        fs: std::sync::Arc::new(SlowSync(Duration::from_millis(40))),
        ..caller(dir)
    })
    .unwrap();
    let driver = tokio::spawn({
        let s = s.clone();
        async move { s.drive().await }
    });
    (s, driver)
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn over_a_slow_disk_drive_publishes_the_write_and_completes_after_the_sync_delay() {
    let d = tempfile::tempdir().unwrap();
    let (s, driver) = driven_over_a_slow_disk(d.path());
    let t0 = tokio::time::Instant::now();
    let mut rx = s.submit_append(vec![rec("t", 0, "a")]).unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    // Written (a replication stream may ship it), not yet durable, not yet answered.
    assert!(s.written_offset() > 0);
    assert_eq!(s.durable_offset(), 0);
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    // Appends queued meanwhile wait for the next step: one fdatasync each round.
    let second = s.append(vec![rec("t", 0, "b")]);
    let first = (&mut rx).await.unwrap().unwrap();
    assert!(
        t0.elapsed() >= Duration::from_millis(40),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(s.durable_offset(), s.written_offset());
    let second = second.await.unwrap();
    assert!(
        t0.elapsed() >= Duration::from_millis(80),
        "{:?}",
        t0.elapsed()
    );
    assert!(second[0].log_offset > first[0].log_offset);
    // A truncation (a barrier) completes what waits for its sync first.
    let mut rx = s.submit_append(vec![rec("t", 0, "c")]).unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    s.truncate(second[0].log_offset).unwrap();
    let c = rx.try_recv().unwrap().unwrap();
    assert!(c[0].log_offset > second[0].log_offset);
    assert_eq!(s.log_end_offset(), second[0].log_offset);
    drop(s);
    driver.await.unwrap();
}

/// Group simulation seed 2849: while a batch waited for its slow fdatasync, a step taken by
/// another caller (a follow, a truncation) wrote the next batch and completed it first, so
/// its consume-queue entries went in ahead of the earlier one's and the queue's indices no
/// longer matched the records' queue offsets. Batches complete in log order.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_step_taken_while_a_batch_waits_for_its_sync_completes_after_it() {
    let d = tempfile::tempdir().unwrap();
    let (s, driver) = driven_over_a_slow_disk(d.path());
    let mut a = s.submit_append(vec![rec("t", 0, "a")]).unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(s.written_offset() > 0, "a is written, waiting for its sync");
    let mut b = s.submit_append(vec![rec("t", 0, "b")]).unwrap();
    assert_eq!(s.step(), 1, "the other caller's step writes b");
    assert!(
        matches!(b.try_recv(), Err(TryRecvError::Empty)),
        "b is not answered before a"
    );
    let a = (&mut a).await.unwrap().unwrap();
    let b = (&mut b).await.unwrap().unwrap();
    assert_eq!((a[0].queue_offset, b[0].queue_offset), (0, 1));
    let bodies: Vec<Vec<u8>> = s
        .read_queue("t", 0, 0, 10, 1 << 20)
        .unwrap()
        .iter()
        .map(|r| r.body.to_vec())
        .collect();
    assert_eq!(bodies, [b"a".to_vec(), b"b".to_vec()], "queue order");
    drop(s);
    driver.await.unwrap();
}
