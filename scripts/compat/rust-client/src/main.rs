//! Runs PRODUCERS producers of the official RocketMQ 5 Rust client (`rocketmq` 5.0.0),
//! each with one send in flight, for DURATION_S seconds against ACCESS_POINT, in the
//! client's default configuration (only the access point and the topic are set), and
//! prints one JSON line per send result:
//!
//! `{"producer":P,"seq":S,"ok":true,"message_id":"..","start_ms":..,"end_ms":..}` or
//! `{"producer":P,"seq":S,"ok":false,"error":"..","start_ms":..,"end_ms":..}`.
//!
//! Usage: rust_producer ACCESS_POINT TOPIC PRODUCERS DURATION_S
//! Body of a message is `p<P>-s<S>`. Each send runs in its own task so that a panic inside
//! the client (5.0.0 unwraps session creation) is reported as a failed send ("panic: ..")
//! instead of ending the producer. Producers stop at DURATION_S or when standard input
//! closes, whichever comes first; the program exits by itself at most 30 s after DURATION_S.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rocketmq::conf::{ClientOption, ProducerOption};
use rocketmq::model::message::MessageBuilder;
use rocketmq::Producer;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn emit(line: serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Kind, operation, message, the context pairs (status code and message of a server error)
/// and the source error (the gRPC status of a transport error).
fn error_text(e: &rocketmq::error::ClientError) -> String {
    let mut s = format!("{:?} at {}: {}", e.kind(), e.operation(), e.message());
    for (k, v) in e.context() {
        s.push_str(&format!("; {k}={v}"));
    }
    if let Some(src) = e.source() {
        s.push_str(&format!("; source: {src}"));
    }
    s
}

fn panic_text(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(p) => {
            let s = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "non-string payload".into());
            format!("panic: {s}")
        }
        Err(e) => format!("task failed: {e}"),
    }
}

static STOP: AtomicBool = AtomicBool::new(false);

async fn run_producer(p: usize, access_point: String, topic: String, until: Instant) {
    let mut producer_option = ProducerOption::default();
    producer_option.set_topics(vec![topic.clone()]);
    let mut client_option = ClientOption::default();
    client_option.set_access_url(access_point);
    let mut producer = match Producer::new(producer_option, client_option) {
        Ok(x) => x,
        Err(e) => {
            emit(
                serde_json::json!({"producer": p, "event": "start_failed", "error": e.to_string()}),
            );
            return;
        }
    };
    if let Err(e) = producer.start().await {
        emit(serde_json::json!({"producer": p, "event": "start_failed", "error": e.to_string()}));
        return;
    }
    emit(serde_json::json!({"producer": p, "event": "started", "at_ms": now_ms()}));
    let producer = Arc::new(producer);
    let mut seq: u64 = 0;
    while Instant::now() < until && !STOP.load(Ordering::Relaxed) {
        let message = match MessageBuilder::builder()
            .set_topic(topic.clone())
            .set_tag("failover")
            .set_body(format!("p{p}-s{seq}").into_bytes())
            .build()
        {
            Ok(m) => m,
            Err(e) => {
                emit(
                    serde_json::json!({"producer": p, "event": "build_failed", "error": e.to_string()}),
                );
                return;
            }
        };
        let start_ms = now_ms();
        let pr = producer.clone();
        let task = tokio::spawn(async move { pr.send(message).await });
        // Bound a send that never returns (the client's own timeout is 3 s).
        let result = match tokio::time::timeout(Duration::from_secs(60), task).await {
            Ok(Ok(Ok(receipt))) => Ok(receipt.message_id().to_string()),
            Ok(Ok(Err(e))) => Err(error_text(&e)),
            Ok(Err(join)) => Err(panic_text(join)),
            Err(_) => Err("driver: send did not return within 60 s".to_string()),
        };
        let end_ms = now_ms();
        match result {
            Ok(id) => emit(serde_json::json!({
                "producer": p, "seq": seq, "ok": true, "message_id": id,
                "start_ms": start_ms, "end_ms": end_ms
            })),
            Err(error) => emit(serde_json::json!({
                "producer": p, "seq": seq, "ok": false, "error": error,
                "start_ms": start_ms, "end_ms": end_ms
            })),
        }
        seq += 1;
    }
    // Shutdown may block on a dead endpoint; do not wait for it for long.
    if let Ok(producer) = Arc::try_unwrap(producer) {
        let _ = tokio::time::timeout(Duration::from_secs(5), producer.shutdown()).await;
    }
    emit(serde_json::json!({"producer": p, "event": "stopped", "at_ms": now_ms(), "sends": seq}));
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: rust_producer ACCESS_POINT TOPIC PRODUCERS DURATION_S");
        std::process::exit(2);
    }
    let access_point = args[1].clone();
    let topic = args[2].clone();
    let producers: usize = args[3].parse().expect("PRODUCERS");
    let duration: u64 = args[4].parse().expect("DURATION_S");
    let until = Instant::now() + Duration::from_secs(duration);
    // Hard stop, whatever the client does.
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(duration + 30));
        eprintln!("rust_producer: hard deadline reached, exiting");
        std::process::exit(3);
    });
    // Closing standard input stops the producers early.
    std::thread::spawn(|| {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
        STOP.store(true, Ordering::Relaxed);
    });
    let mut tasks = Vec::new();
    for p in 0..producers {
        tasks.push(tokio::spawn(run_producer(
            p,
            access_point.clone(),
            topic.clone(),
            until,
        )));
    }
    for t in tasks {
        let _ = t.await;
    }
    std::process::exit(0);
}
