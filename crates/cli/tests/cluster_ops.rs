//! Operator surface end to end, in process: `/metrics` (parsed with a strict Prometheus
//! text-format parser), `/health` (200, then 503 once the log is fenced) and the admin
//! message lookup by id and by key.
//!
//! A broker with an in-process name server: it lives in `sofamq-cli`, the crate that
//! depends on both, so that `sofamq-broker` does not depend on `sofamq-namesrv`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use sofamq_broker::topics::TopicType;
use sofamq_broker::{Broker, BrokerConfig};
use sofamq_client::{ConsumerConfig, Message, Producer, ProducerConfig, SimpleConsumer};
use sofamq_proto::admin::GetMessageRequest;
use sofamq_proto::admin::broker_admin_client::BrokerAdminClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

type Labels = BTreeMap<String, String>;
/// Histogram series: (le, cumulative count) buckets and the `_count` sample.
type Series = (Vec<(f64, f64)>, Option<f64>);

/// One sample: metric name, labels, value.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: Labels,
    value: f64,
}

fn valid_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_' || ch == ':')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s.parse().map_err(|_| format!("bad value {s:?}")),
    }
}

/// A strict parser of the Prometheus text exposition format 0.0.4: every sample belongs to
/// a family declared by `# TYPE` before it, names and label names are valid, label values
/// are quoted with only `\\`, `\"` and `\n` escapes, and histograms are consistent
/// (cumulative buckets ending in `+Inf` equal to `_count`).
fn parse_prometheus(text: &str) -> Result<Vec<Sample>, String> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut out = Vec::new();
    for (no, line) in text.lines().enumerate() {
        let err = |m: String| format!("line {}: {m}: {line:?}", no + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let mut parts = rest.trim_start().splitn(3, ' ');
            match parts.next() {
                Some("TYPE") => {
                    let name = parts
                        .next()
                        .ok_or_else(|| err("TYPE without name".into()))?;
                    let ty = parts
                        .next()
                        .ok_or_else(|| err("TYPE without type".into()))?;
                    if !valid_name(name) {
                        return Err(err("bad family name".into()));
                    }
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&ty) {
                        return Err(err("bad type".into()));
                    }
                    if types.insert(name.to_string(), ty.to_string()).is_some() {
                        return Err(err("family declared twice".into()));
                    }
                }
                Some("HELP") => {
                    let name = parts
                        .next()
                        .ok_or_else(|| err("HELP without name".into()))?;
                    if !valid_name(name) {
                        return Err(err("bad family name".into()));
                    }
                }
                _ => {}
            }
            continue;
        }
        let name_end = line
            .find(['{', ' '])
            .ok_or_else(|| err("no value".into()))?;
        let name = &line[..name_end];
        if !valid_name(name) {
            return Err(err("bad metric name".into()));
        }
        let mut labels = Labels::new();
        let mut rest = &line[name_end..];
        if let Some(r) = rest.strip_prefix('{') {
            let mut chars = r.char_indices().peekable();
            let end;
            loop {
                let Some((i, c)) = chars.next() else {
                    return Err(err("unterminated labels".into()));
                };
                if c == '}' {
                    end = i + 1;
                    break;
                }
                if c == ',' {
                    continue;
                }
                let start = i;
                let mut eq = None;
                for (j, c) in chars.by_ref() {
                    if c == '=' {
                        eq = Some(j);
                        break;
                    }
                }
                let eq = eq.ok_or_else(|| err("label without '='".into()))?;
                let lname = &r[start..eq];
                if !valid_name(lname) || lname.contains(':') {
                    return Err(err(format!("bad label name {lname:?}")));
                }
                if chars.next().map(|x| x.1) != Some('"') {
                    return Err(err("label value not quoted".into()));
                }
                let mut v = String::new();
                loop {
                    match chars.next() {
                        None => return Err(err("unterminated label value".into())),
                        Some((_, '"')) => break,
                        Some((_, '\\')) => match chars.next().map(|x| x.1) {
                            Some('\\') => v.push('\\'),
                            Some('"') => v.push('"'),
                            Some('n') => v.push('\n'),
                            _ => return Err(err("bad escape".into())),
                        },
                        Some((_, '\n')) => return Err(err("raw newline".into())),
                        Some((_, c)) => v.push(c),
                    }
                }
                if labels.insert(lname.to_string(), v).is_some() {
                    return Err(err("duplicate label".into()));
                }
                match chars.peek().map(|x| x.1) {
                    Some(',') | Some('}') => {}
                    _ => return Err(err("junk after label value".into())),
                }
            }
            rest = &r[end..];
        }
        let rest = rest
            .strip_prefix(' ')
            .ok_or_else(|| err("no space before value".into()))?;
        let mut fields = rest.split(' ');
        let value = parse_value(fields.next().unwrap_or_default()).map_err(err)?;
        if let Some(ts) = fields.next() {
            ts.parse::<i64>().map_err(|_| err("bad timestamp".into()))?;
        }
        if fields.next().is_some() {
            return Err(err("trailing fields".into()));
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        let ty = types
            .get(family)
            .ok_or_else(|| err(format!("sample of undeclared family {family}")))?;
        if ty == "histogram" && name == family {
            return Err(err("bare histogram sample".into()));
        }
        if name.ends_with("_bucket") && !labels.contains_key("le") {
            return Err(err("bucket without le".into()));
        }
        out.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    // Histogram consistency.
    for (family, ty) in &types {
        if ty != "histogram" {
            continue;
        }
        let mut series: BTreeMap<Labels, Series> = BTreeMap::new();
        for s in &out {
            let mut key = s.labels.clone();
            if s.name == format!("{family}_bucket") {
                let le = parse_value(&key.remove("le").unwrap_or_default())?;
                series.entry(key).or_default().0.push((le, s.value));
            } else if s.name == format!("{family}_count") {
                series.entry(key).or_default().1 = Some(s.value);
            }
        }
        for (labels, (buckets, count)) in series {
            let ctx = format!("{family} {labels:?}");
            let last = buckets.last().ok_or(format!("{ctx}: no buckets"))?;
            if last.0 != f64::INFINITY {
                return Err(format!("{ctx}: last bucket is not +Inf"));
            }
            if buckets
                .windows(2)
                .any(|w| w[1].0 <= w[0].0 || w[1].1 < w[0].1)
            {
                return Err(format!("{ctx}: buckets not increasing/cumulative"));
            }
            if Some(last.1) != count {
                return Err(format!("{ctx}: +Inf bucket {} != count {count:?}", last.1));
            }
        }
    }
    Ok(out)
}

fn find<'a>(samples: &'a [Sample], name: &str, want: &[(&str, &str)]) -> Option<&'a Sample> {
    samples.iter().find(|s| {
        s.name == name
            && want
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
    })
}

/// A minimal HTTP/1.1 GET: (status, body).
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(buf).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    loop {
        let (len, rest) = s.split_once("\r\n").unwrap();
        let n = usize::from_str_radix(len.trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
}

struct Cluster {
    _dir: tempfile::TempDir,
    ns: String,
    ns_http: SocketAddr,
    broker: Broker,
    addr: SocketAddr,
    _stops: Vec<watch::Sender<bool>>,
}

async fn start() -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let (ns_stop, mut ns_rx) = watch::channel(false);
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ns = l.local_addr().unwrap().to_string();
    let h = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ns_http = h.local_addr().unwrap();
    tokio::spawn(sofamq_namesrv::run(
        sofamq_namesrv::Listeners {
            grpc: l,
            http: Some(h),
        },
        sofamq_namesrv::NamesrvConfig::default(),
        sofamq_server::Shutdown::on(async move {
            let _ = ns_rx.wait_for(|s| *s).await;
        }),
    ));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let mut cfg = BrokerConfig {
        data_dir: dir.path().join("b"),
        listen: addr,
        namesrv: vec![ns.clone()],
        heartbeat_interval_ms: 200,
        http_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..Default::default()
    };
    cfg.consume.poll_interval_ms = 20;
    cfg.limits.shutdown_grace_ms = 200;
    let broker = sofamq_broker::server::open(cfg).await.unwrap();
    broker
        .create_topic("t", 4, TopicType::Normal)
        .await
        .unwrap();
    let (stop, mut rx) = watch::channel(false);
    let mut reg_rx = broker.registered();
    tokio::spawn(sofamq_broker::server::serve(
        l,
        broker.clone(),
        sofamq_server::Shutdown::on(async move {
            let _ = rx.wait_for(|s| *s).await;
        }),
    ));
    tokio::time::timeout(Duration::from_secs(10), reg_rx.wait_for(|r| *r))
        .await
        .unwrap()
        .unwrap();
    Cluster {
        _dir: dir,
        ns,
        ns_http,
        broker,
        addr,
        _stops: vec![stop, ns_stop],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_with_plausible_values_and_health_turns_503_when_fenced() {
    let c = start().await;
    let http = c.broker.metrics().http_addr().expect("HTTP endpoint bound");
    let p = Producer::start(ProducerConfig::new([c.ns.clone()]))
        .await
        .unwrap();
    for i in 0..20 {
        p.send(Message::new("t", format!("body-{i:04}")))
            .await
            .unwrap();
    }
    let cons = SimpleConsumer::start(
        ConsumerConfig::new([c.ns.clone()], "g1")
            .with_long_polling_timeout(Duration::from_millis(300)),
        vec![("t".to_string(), "*".to_string())],
    )
    .await
    .unwrap();
    let mut got = 0;
    for _ in 0..20 {
        let msgs = cons.receive(8, Duration::from_secs(30)).await.unwrap();
        cons.ack_all(&msgs).await.unwrap();
        got += msgs.len();
        if got >= 8 {
            break;
        }
    }
    assert!(got >= 8, "received {got}");

    let (status, body) = get(http, "/metrics").await;
    assert_eq!(status, 200);
    let samples = parse_prometheus(&body).unwrap_or_else(|e| panic!("{e}\n{body}"));
    let t = [("broker", "broker-a"), ("broker_id", "0"), ("topic", "t")];
    let v = |name: &str, l: &[(&str, &str)]| {
        find(&samples, name, l)
            .unwrap_or_else(|| panic!("no {name} {l:?} in\n{body}"))
            .value
    };
    assert_eq!(v("sofamq_messages_in_total", &t), 20.0);
    assert_eq!(v("sofamq_bytes_in_total", &t), 20.0 * 9.0);
    assert!(v("sofamq_messages_out_total", &t) >= got as f64);
    assert!(v("sofamq_bytes_out_total", &t) >= 9.0 * got as f64);
    assert!(v("sofamq_send_latency_seconds_count", &[]) >= 20.0);
    assert!(v("sofamq_send_latency_seconds_sum", &[]) > 0.0);
    assert!(v("sofamq_store_fsync_seconds_count", &[]) >= 1.0);
    assert!(v("sofamq_store_synced_bytes_total", &[]) > 0.0);
    assert!(v("sofamq_store_records_total", &[]) >= 20.0);
    assert!(v("sofamq_connections_open", &[]) >= 1.0);
    assert!(v("sofamq_connections_accepted_total", &[]) >= 1.0);
    assert_eq!(v("sofamq_broker_fenced", &[]), 0.0);
    assert_eq!(v("sofamq_broker_info", &[("role", "master")]), 1.0);
    let lag = v("sofamq_consumer_group_lag", &[("group", "g1")]);
    assert!(
        lag <= (20 - got) as f64,
        "lag {lag} after {got} acked of 20"
    );
    let per_queue: f64 = samples
        .iter()
        .filter(|s| s.name == "sofamq_consumer_lag" && s.labels["group"] == "g1")
        .map(|s| s.value)
        .sum();
    assert_eq!(per_queue, lag);
    assert!(find(&samples, "sofamq_replication_min_insync_replicas", &[]).is_some());

    // A rejected send (no messages in the request) is counted by its code.
    let mut raw = sofamq_proto::v2::messaging_service_client::MessagingServiceClient::connect(
        format!("http://{}", c.addr),
    )
    .await
    .unwrap();
    let resp = raw
        .send_message(sofamq_proto::v2::SendMessageRequest::default())
        .await
        .unwrap()
        .into_inner();
    let code = resp.status.unwrap().code.to_string();
    let samples = parse_prometheus(&get(http, "/metrics").await.1).unwrap();
    let rejected = find(
        &samples,
        "sofamq_rejected_requests_total",
        &[("code", &code)],
    );
    assert_eq!(
        rejected.map(|s| s.value),
        Some(1.0),
        "rejection counted by code {code}"
    );

    // The namesrv's endpoint.
    let (status, body) = get(c.ns_http, "/metrics").await;
    assert_eq!(status, 200);
    let ns = parse_prometheus(&body).unwrap_or_else(|e| panic!("{e}\n{body}"));
    assert!(find(&ns, "sofamq_namesrv_brokers", &[]).unwrap().value >= 1.0);
    assert_eq!(get(c.ns_http, "/health").await.0, 200);

    // Health: 200 while healthy ...
    let (status, body) = get(http, "/health").await;
    assert_eq!(status, 200, "{body}");
    let h: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(h["role"], "master");
    assert!(h["fenced_reason"].is_null());
    assert_eq!(h["in_sync"], true);

    // ... 503 once an fsync failure fenced the log.
    c.broker.store().inject_fault(sofamq_store::Fault::NextSync);
    let _ = p.send(Message::new("t", "after-fault")).await;
    assert!(c.broker.store().fenced().is_some());
    let (status, body) = get(http, "/health").await;
    assert_eq!(status, 503, "{body}");
    let h: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        h["fenced_reason"].as_str().unwrap().contains("fsync"),
        "{h}"
    );
    let samples = parse_prometheus(&get(http, "/metrics").await.1).unwrap();
    assert_eq!(
        find(&samples, "sofamq_broker_fenced", &[]).unwrap().value,
        1.0
    );
}

#[test]
fn parser_rejects_malformed_documents() {
    for bad in [
        "x 1\n",                                                 // undeclared family
        "# TYPE x gauge\nx{a=b} 1\n",                            // unquoted value
        "# TYPE x gauge\nx{a=\"b\\q\"} 1\n",                     // bad escape
        "# TYPE x gauge\nx 1 2 3\n",                             // trailing fields
        "# TYPE x gauge\nx one\n",                               // bad value
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_count 2\n", // no +Inf bucket
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n",
    ] {
        assert!(parse_prometheus(bad).is_err(), "accepted {bad:?}");
    }
    let ok = "# HELP x a\n# TYPE x counter\nx{a=\"q\\\"\\n\"} 1.5\n";
    let s = parse_prometheus(ok).unwrap();
    assert_eq!(s[0].labels["a"], "q\"\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_get_message_finds_by_id_and_by_key() {
    let c = start().await;
    let p = Producer::start(ProducerConfig::new([c.ns.clone()]))
        .await
        .unwrap();
    for i in 0..50 {
        p.send(
            Message::builder("t", format!("filler-{i}"))
                .key(format!("k-{i}"))
                .build(),
        )
        .await
        .unwrap();
    }
    let r = p
        .send(Message::builder("t", "the one").key("order-42").build())
        .await
        .unwrap();
    for i in 50..100 {
        p.send(Message::new("t", format!("filler-{i}")))
            .await
            .unwrap();
    }
    let mut admin = BrokerAdminClient::connect(format!("http://{}", c.addr))
        .await
        .unwrap();

    // By id, without a topic (every user topic is scanned).
    let resp = admin
        .get_message(GetMessageRequest {
            message_id: r.message_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.status.unwrap().code, 20000);
    assert_eq!(resp.messages.len(), 1);
    assert_eq!(resp.messages[0].body, b"the one");
    assert_eq!(resp.messages[0].message_id, r.message_id);

    // By key.
    let resp = admin
        .get_message(GetMessageRequest {
            topic: "t".into(),
            key: "order-42".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.messages.len(), 1, "{resp:?}");
    assert_eq!(resp.messages[0].message_id, r.message_id);
    assert_eq!(resp.messages[0].queue_offset, r.queue_offset as u64);

    // The scan is bounded: with a budget of 8 records the old message is not reached.
    let resp = admin
        .get_message(GetMessageRequest {
            topic: "t".into(),
            key: "k-0".into(),
            max_scan: 8,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(resp.messages.is_empty());
    assert!(resp.truncated);
    assert_eq!(resp.scanned, 8);

    // A key lookup needs a topic; exactly one of id and key.
    for req in [
        GetMessageRequest {
            key: "order-42".into(),
            ..Default::default()
        },
        GetMessageRequest::default(),
    ] {
        let resp = admin.get_message(req).await.unwrap().into_inner();
        assert_ne!(resp.status.unwrap().code, 20000);
    }
}

/// `serve` uses the HTTP socket it is given (not `http_listen`) and binds the configured
/// replication port it is not given one for; the shutdown ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_uses_given_listeners_and_binds_the_configured_rest() {
    let free = || {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let given_http = http.local_addr().unwrap();
    let (configured_http, configured_repl) = (free(), free());
    let mut cfg = BrokerConfig {
        data_dir: dir.path().join("b"),
        listen: grpc.local_addr().unwrap(),
        namesrv: vec![],
        http_listen: Some(configured_http),
        ..Default::default()
    };
    cfg.replication.listen = Some(configured_repl);
    cfg.limits.shutdown_grace_ms = 200;
    let broker = sofamq_broker::server::open(cfg).await.unwrap();
    let shutdown = sofamq_server::Shutdown::new();
    let task = tokio::spawn(sofamq_broker::serve(
        sofamq_broker::Listeners {
            grpc,
            replication: None,
            http: Some(http),
        },
        broker.clone(),
        shutdown.clone(),
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(configured_repl).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "replication port {configured_repl} never bound"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(broker.metrics().http_addr(), Some(given_http));
    let (code, _) = get(given_http, "/health").await;
    assert_eq!(code, 200);
    assert!(
        TcpStream::connect(configured_http).await.is_err(),
        "http_listen is not bound when a listener is given"
    );
    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
