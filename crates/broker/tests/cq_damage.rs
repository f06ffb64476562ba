//! A consume queue whose entries point at the wrong records (damaged on disk, or a write lost
//! under it) is rebuilt from the commit log when the broker opens, the old files kept aside.

use sofamq_broker::Broker;
use sofamq_broker::config::BrokerConfig;
use sofamq_broker::topics::{PERM_READ, PERM_WRITE, TopicConfig, TopicType};

fn files_under(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_entry_pointing_at_the_wrong_record_is_rebuilt_from_the_log() {
    let data = tempfile::tempdir().unwrap();
    let cfg = BrokerConfig {
        data_dir: data.path().join("b"),
        listen: "127.0.0.1:0".parse().unwrap(),
        namesrv: vec![],
        ..Default::default()
    };
    let c = cfg.clone();
    let broker = tokio::task::spawn_blocking(move || Broker::open(c))
        .await
        .unwrap()
        .unwrap();
    for name in ["t1", "t2", "t3"] {
        broker
            .topics()
            .put(TopicConfig {
                name: name.into(),
                queue_count: 2,
                topic_type: TopicType::Normal,
                perm: PERM_READ | PERM_WRITE,
            })
            .await
            .unwrap();
    }
    drop(broker);
    // Swap the first two entries of the topic table's queue: both point at real records, at
    // the wrong queue offsets; the last entry (the one recovery checks) stays right.
    let mut files = Vec::new();
    files_under(&data.path().join("b/store/consumequeue"), &mut files);
    let cq = files
        .iter()
        .find(|p| p.to_string_lossy().contains("SYS%25TOPICS"))
        .unwrap_or_else(|| panic!("no topic-table queue among {files:?}"));
    let mut b = std::fs::read(cq).unwrap();
    const E: usize = 20;
    assert!(b.len() >= 3 * E, "{} bytes in {}", b.len(), cq.display());
    let first: Vec<u8> = b[..E].to_vec();
    b.copy_within(E..2 * E, 0);
    b[E..2 * E].copy_from_slice(&first);
    std::fs::write(cq, &b).unwrap();

    let c = cfg.clone();
    let broker = tokio::task::spawn_blocking(move || Broker::open(c))
        .await
        .unwrap()
        .expect("the broker must open, rebuilding its consume queues");
    let mut names: Vec<String> = broker.topics().list().into_iter().map(|t| t.name).collect();
    names.sort();
    assert_eq!(names, ["t1", "t2", "t3"]);
    let kept: Vec<_> = std::fs::read_dir(data.path().join("b/store/damaged"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        kept.iter().any(|n| n.starts_with("consumequeue-")),
        "old queues not kept aside: {kept:?}"
    );
}
