//! The official RocketMQ 5 Python SimpleConsumer and PushConsumer against
//! `sofamq standalone`: every message received once, digests valid (the
//! client flags a wrong MD5 as corrupted), nothing redelivered after acks.

use std::collections::HashSet;
use std::process::Command;

use sofamq_client::{Message, Producer, ProducerConfig};
use sofamq_testkit::{Standalone, compat_python, repo_root};

const COUNT: usize = 200;

async fn produce(addr: &str, topic: &str) -> HashSet<String> {
    let p = Producer::start(ProducerConfig::new([addr.to_string()]))
        .await
        .unwrap();
    // The topic may reach the name server a heartbeat after "ready".
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while p
        .send(Message::builder(topic, "warm-up").tag("warmup").build())
        .await
        .is_err()
    {
        assert!(std::time::Instant::now() < deadline, "topic never routable");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let mut ids = HashSet::new();
    for i in 0..COUNT {
        let r = p
            .send(
                Message::builder(topic, format!("compat-{i}"))
                    .tag("compat")
                    .key(format!("k-{i}"))
                    .property("index", i.to_string())
                    .build(),
            )
            .await
            .unwrap();
        ids.insert(r.message_id);
    }
    p.shutdown().await;
    ids
}

fn run_py(script: &str, addr: &str, topic: &str, group: &str) -> (Vec<serde_json::Value>, String) {
    let py = compat_python().expect("python client install");
    let out = Command::new(&py)
        .arg(repo_root().join("scripts/compat").join(script))
        .args([addr, topic, group, &COUNT.to_string(), "90"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{script} failed:\n{stdout}\n{}",
        stderr
            .chars()
            .rev()
            .take(4000)
            .collect::<String>()
            .chars()
            .rev()
            .collect::<String>()
    );
    let lines = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (lines, stderr)
}

fn check(lines: &[serde_json::Value], ids: &HashSet<String>) {
    let msgs: Vec<_> = lines.iter().filter(|v| v.get("id").is_some()).collect();
    let got: HashSet<String> = msgs
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(msgs.len(), COUNT, "each message delivered once");
    assert_eq!(&got, ids, "exactly the produced messages");
    for v in &msgs {
        assert_eq!(v["corrupted"], false, "digest rejected: {v}");
        assert_eq!(v["attempt"], 1, "{v}");
        assert!(v["body"].as_str().unwrap().starts_with("compat-"));
    }
    let summary = lines.iter().find(|v| v.get("done").is_some()).unwrap();
    assert_eq!(summary["redelivered"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_simple_and_push_consumers_receive_and_ack() {
    let sa = Standalone::start(&["--topic", "compatc:4"]).unwrap();
    let addr = sa.node.addr.clone();
    let ids = produce(&addr, "compatc").await;
    assert_eq!(ids.len(), COUNT);
    let (lines, _) = run_py("python_simple_consumer.py", &addr, "compatc", "py-simple");
    check(&lines, &ids);
    let (lines, _) = run_py("python_push_consumer.py", &addr, "compatc", "py-push");
    check(&lines, &ids);
}
