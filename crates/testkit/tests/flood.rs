//! Hostile clients against a real broker process: many connections sending
//! garbage bytes, oversized and malformed requests, while a well-behaved
//! producer keeps getting its receipts. Reports the process's peak RSS.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sofamq_client::{Message, Producer, ProducerConfig};
use sofamq_proto::v2 as pb;
use sofamq_proto::v2::messaging_service_client::MessagingServiceClient;
use sofamq_testkit::Standalone;
use tokio::io::AsyncWriteExt;

fn vm_hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn msg(topic: &str, body: Vec<u8>, id: &str) -> pb::Message {
    pb::Message {
        topic: Some(pb::Resource {
            name: topic.into(),
            resource_namespace: String::new(),
        }),
        user_properties: HashMap::new(),
        system_properties: Some(pb::SystemProperties {
            message_id: id.into(),
            message_type: pb::MessageType::Normal as i32,
            ..Default::default()
        }),
        body: body.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flood_of_hostile_clients_does_not_starve_a_good_producer() {
    let sa = Standalone::start(&["--topic", "flood:4", "--no-slave"]).unwrap();
    let pid = sa.node.pid().unwrap();
    let broker = format!("127.0.0.1:{}", sa.port_base + 1);
    let baseline = vm_hwm_kib(pid);
    let stop = Arc::new(AtomicBool::new(false));
    let hostile = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();

    // Raw garbage on fresh TCP connections (not HTTP/2 at all, or a preface
    // followed by junk frames).
    for i in 0..60 {
        let (stop, hostile, broker) = (stop.clone(), hostile.clone(), broker.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(mut s) = tokio::net::TcpStream::connect(&broker).await {
                    let mut junk = if i % 2 == 0 {
                        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec()
                    } else {
                        Vec::new()
                    };
                    junk.extend((0..4096u32).map(|x| (x.wrapping_mul(2654435761) >> 13) as u8));
                    let _ = s.write_all(&junk).await;
                    hostile.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    // Oversized (body over the 4 MiB limit; whole request over the 20 MiB
    // decode limit) and malformed requests over gRPC, each on its own connection.
    for i in 0..40 {
        let (stop, hostile, broker) = (stop.clone(), hostile.clone(), broker.clone());
        tasks.push(tokio::spawn(async move {
            let ch = tonic::transport::Channel::from_shared(format!("http://{broker}"))
                .unwrap()
                .connect_lazy();
            let mut c = MessagingServiceClient::new(ch)
                .max_encoding_message_size(64 << 20)
                .max_decoding_message_size(64 << 20);
            while !stop.load(Ordering::Relaxed) {
                let req = match i % 4 {
                    0 => pb::SendMessageRequest {
                        messages: vec![msg("flood", vec![b'x'; 5 << 20], "BIG")],
                    },
                    1 => pb::SendMessageRequest {
                        messages: vec![msg("flood", vec![b'y'; 21 << 20], "HUGE")],
                    },
                    2 => pb::SendMessageRequest {
                        messages: (0..2000).map(|_| msg("%SYS%ACL", vec![1], "")).collect(),
                    },
                    _ => pb::SendMessageRequest {
                        messages: vec![msg("no such topic!", vec![], "?")],
                    },
                };
                let _ = tokio::time::timeout(Duration::from_secs(5), c.send_message(req)).await;
                hostile.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    // The well-behaved producer: every message gets its receipt.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let producer = Producer::start(ProducerConfig::new([sa.node.addr.clone()]))
        .await
        .unwrap();
    let t0 = Instant::now();
    let mut slowest = Duration::ZERO;
    for i in 0..200 {
        let t = Instant::now();
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            producer.send(Message::builder("flood", format!("good-{i}")).build()),
        )
        .await
        .expect("a receipt within 10 s under the flood");
        r.expect("the good producer's send succeeds");
        slowest = slowest.max(t.elapsed());
    }
    let elapsed = t0.elapsed();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    producer.shutdown().await;
    let peak = vm_hwm_kib(pid);
    println!(
        "flood: 200 good sends in {elapsed:?} (slowest {slowest:?}) alongside {} hostile requests/connections; \
         broker process VmHWM {} MiB (baseline {} MiB)",
        hostile.load(Ordering::Relaxed),
        peak / 1024,
        baseline / 1024
    );
    assert!(hostile.load(Ordering::Relaxed) > 100, "the flood ran");
    assert!(peak < 2 * 1024 * 1024, "peak RSS {peak} KiB over 2 GiB");
}
