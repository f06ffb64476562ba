//! Compatibility with the official RocketMQ 5 Python client
//! (`rocketmq-python-client==5.1.2`, installed into the project venv by
//! `scripts/compat/setup-python.sh`) against `sofamq standalone`.

use std::collections::{HashMap, HashSet};
use std::process::Command;

use sofamq_proto::admin::ReadQueueRequest;
use sofamq_proto::admin::broker_admin_client::BrokerAdminClient;
use sofamq_proto::namesrv::ListBrokersRequest;
use sofamq_proto::namesrv::name_server_admin_client::NameServerAdminClient;
use sofamq_testkit::{Standalone, compat_python, repo_root};

const COUNT: usize = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_producer_sends_1000_messages_each_stored_once() {
    let py = compat_python().expect("python client install");
    let sa = Standalone::start(&["--topic", "compat:8"]).unwrap();
    let out = Command::new(&py)
        .arg(repo_root().join("scripts/compat/python_producer.py"))
        .args([sa.node.addr.as_str(), "compat", &COUNT.to_string()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python producer failed: {}\n{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    let mut receipts: HashMap<String, usize> = HashMap::new();
    for line in stdout.lines().filter(|l| l.starts_with('{')) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(v.get("error").is_none(), "send failed: {line}");
        let id = v["message_id"].as_str().unwrap().to_string();
        let i = v["i"].as_u64().unwrap() as usize;
        assert!(receipts.insert(id, i).is_none(), "duplicate receipt id");
    }
    assert_eq!(receipts.len(), COUNT, "one receipt per message");

    // Read the broker's log back through the admin API.
    let mut ns = NameServerAdminClient::connect(format!("http://{}", sa.node.addr))
        .await
        .unwrap();
    let groups = ns
        .list_brokers(ListBrokersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .groups;
    let master = groups
        .iter()
        .flat_map(|g| g.members.iter())
        .find(|m| m.broker_id == 0)
        .expect("a master")
        .grpc_endpoint
        .clone();
    let mut admin = BrokerAdminClient::connect(format!("http://{master}"))
        .await
        .unwrap();
    let mut seen: HashSet<usize> = HashSet::new();
    let mut total = 0;
    for q in 0..8 {
        let mut offset = 0;
        loop {
            let r = admin
                .read_queue(ReadQueueRequest {
                    topic: "compat".into(),
                    queue_id: q,
                    offset,
                    max_count: 500,
                })
                .await
                .unwrap()
                .into_inner();
            if r.messages.is_empty() {
                break;
            }
            for m in r.messages {
                offset = m.queue_offset + 1;
                total += 1;
                let i = *receipts
                    .get(&m.message_id)
                    .unwrap_or_else(|| panic!("stored id {} has no receipt", m.message_id));
                assert_eq!(
                    m.body,
                    format!("compat-{i}").into_bytes(),
                    "body of message {i}"
                );
                assert_eq!(m.tag, "compat");
                assert!(seen.insert(i), "message {i} stored twice");
            }
        }
    }
    assert_eq!(total, COUNT, "exactly {COUNT} messages in the log");
}
