//! Operator tooling through the `sofamq` binary against a standalone cluster: the HTTP
//! endpoints on the standalone port layout, `admin cluster`, `topic describe`,
//! `admin message get` and `bench e2e` / `bench produce --count` with `--json`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use sofamq_client::{Message, Producer, ProducerConfig};
use sofamq_testkit::{Standalone, sofamq_bin};

fn cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(sofamq_bin())
        .args(args)
        .output()
        .expect("running sofamq");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (
        head.split(' ').nth(1).unwrap().parse().unwrap(),
        body.to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_http_admin_commands_and_bench_e2e_json() {
    let sa = Standalone::start(&["--topic", "ops:4"]).unwrap();
    let ap = sa.node.addr.clone();
    let base = sa.port_base;

    // HTTP: namesrv base+5, master base+6, slave base+7.
    for (port, role) in [
        (base + 5, "namesrv"),
        (base + 6, "master"),
        (base + 7, "slave"),
    ] {
        let (code, body) = http_get(port, "/health");
        assert_eq!(code, 200, "{port}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["role"], role, "{body}");
        let (code, metrics) = http_get(port, "/metrics");
        assert_eq!(code, 200);
        assert!(
            metrics.contains("# TYPE sofamq_connections_open gauge"),
            "{metrics}"
        );
    }
    // The master reports its slave as in sync, the slave labels itself broker_id 1.
    let (_, m) = http_get(base + 6, "/metrics");
    assert!(
        m.contains("sofamq_replication_in_sync{broker=\"broker-a\",broker_id=\"0\",slave="),
        "{m}"
    );
    let (_, s) = http_get(base + 7, "/metrics");
    assert!(
        s.contains("sofamq_broker_info{broker=\"broker-a\",broker_id=\"1\""),
        "{s}"
    );

    // Messages to look up.
    let p = Producer::start(ProducerConfig::new([ap.clone()]))
        .await
        .unwrap();
    let r = p
        .send(Message::builder("ops", "find me").key("invoice-7").build())
        .await
        .unwrap();
    p.shutdown().await;

    let (ok, out, err) = cli(&["admin", "cluster", "--access-point", &ap, "--json"]);
    assert!(ok, "{err}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(rows.len(), 2, "{out}");
    let master = rows.iter().find(|r| r["broker_id"] == 0).unwrap();
    assert_eq!(master["role"], "master");
    assert_eq!(master["in_sync_slaves"], 1);
    assert!(master["disk_bytes"].as_u64().unwrap() > 0);
    assert_eq!(master["http_address"], format!("127.0.0.1:{}", base + 6));
    let (ok, table, err) = cli(&["admin", "cluster", "--access-point", &ap]);
    assert!(
        ok && table.contains("master") && table.contains("slave"),
        "{table}{err}"
    );

    let (ok, out, err) = cli(&["topic", "describe", "ops", "--access-point", &ap, "--json"]);
    assert!(ok, "{err}");
    let t: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(t[0]["queue_count"], 4);
    assert_eq!(t[0]["messages"], 1);
    assert_eq!(t[0]["queues"].as_array().unwrap().len(), 4);

    for args in [
        vec!["--id", r.message_id.as_str()],
        vec!["--key", "invoice-7", "--topic", "ops"],
    ] {
        let mut full = vec!["admin", "message", "get", "--access-point", &ap, "--json"];
        full.extend(args);
        let (ok, out, err) = cli(&full);
        assert!(ok, "{full:?}: {err}");
        let found: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
        assert_eq!(found.len(), 1, "{out}");
        assert_eq!(found[0]["message_id"], r.message_id.as_str());
        assert_eq!(found[0]["body"], "find me");
    }
    let (ok, _, _) = cli(&[
        "admin",
        "message",
        "get",
        "--access-point",
        &ap,
        "--key",
        "nope",
        "--topic",
        "ops",
    ]);
    assert!(!ok, "a miss exits non-zero");

    // bench e2e: short, counted, JSON.
    let json = sa.dir.path().join("e2e.json");
    let (ok, out, err) = cli(&[
        "bench",
        "e2e",
        "--access-point",
        &ap,
        "--topic",
        "ops",
        "--count",
        "300",
        "--inflight",
        "8",
        "--size",
        "64",
        "--consumers",
        "2",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("msgs/s") && out.contains("p99.9 ms"), "{out}");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(v["mode"], "e2e");
    assert_eq!(v["sent"], 300);
    assert_eq!(v["messages"], 300, "{v}");
    assert_eq!(v["missing"], 0);
    assert!(v["msgs_per_sec"].as_f64().unwrap() > 0.0);
    let l = &v["latency_ms"];
    assert!(l["p50"].as_f64().unwrap() > 0.0);
    assert!(l["p50"].as_f64() <= l["p99"].as_f64() && l["p99"].as_f64() <= l["max"].as_f64());
    assert_eq!(v["client"]["send_failures"], 0);

    // bench produce --count with two producers.
    let json = sa.dir.path().join("produce.json");
    let (ok, out, err) = cli(&[
        "bench",
        "produce",
        "--access-point",
        &ap,
        "--topic",
        "ops",
        "--count",
        "200",
        "--producers",
        "2",
        "--inflight",
        "4",
        "--size",
        "128",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(ok, "{out}\n{err}");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(v["mode"], "produce");
    assert_eq!(v["messages"], 200);
    assert!(v["mib_per_sec"].as_f64().unwrap() > 0.0);
    assert_eq!(v["latency_ms"]["samples"], 200);
    // The machine's CPU over the window: printed and in the JSON together (a window shorter
    // than one tick of /proc/stat has no reading, and then neither has it).
    assert_eq!(
        out.contains("machine CPU over the measured window: "),
        v.get("cpu").is_some(),
        "{out}\n{v}"
    );
    if let Some(c) = v.get("cpu") {
        assert!(c["cores"].as_u64().unwrap() >= 1, "{c}");
        for k in ["busy", "iowait"] {
            let x = c[k].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&x), "{c}");
        }
    }
}
