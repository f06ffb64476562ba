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
