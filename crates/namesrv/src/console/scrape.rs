//! Chart data: each broker's own Prometheus `/metrics`, fetched and cut down to the
//! families the charts draw. The page turns counter and histogram deltas between polls
//! into rates and quantiles; nothing here keeps history.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Extension, State};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::auth::Caller;
use super::brokers::why;
use super::{ApiResult, Console};

/// Largest `/metrics` document read from one broker.
const MAX_DOC: u64 = 8 * 1024 * 1024;
const FETCH_TIMEOUT: Duration = Duration::from_secs(3);

/// One sample line: name, labels, value.
#[derive(Debug, PartialEq)]
pub(crate) struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    fn label(&self, k: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses the Prometheus text format leniently: a line it cannot read is skipped.
pub(crate) fn parse(doc: &str) -> Vec<Sample> {
    doc.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' ', '\t'])?;
    let name = line[..name_end].to_string();
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices();
        let mut key = String::new();
        let mut end = None;
        while let Some((i, ch)) = chars.next() {
            match ch {
                '}' => {
                    end = Some(i);
                    break;
                }
                ',' | ' ' => {}
                '=' => {
                    if chars.next()?.1 != '"' {
                        return None;
                    }
                    let mut val = String::new();
                    loop {
                        let (_, c) = chars.next()?;
                        match c {
                            '\\' => match chars.next()?.1 {
                                'n' => val.push('\n'),
                                other => val.push(other),
                            },
                            '"' => break,
                            c => val.push(c),
                        }
                    }
                    labels.push((std::mem::take(&mut key), val));
                }
                c => key.push(c),
            }
        }
        rest = &body[end? + 1..];
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// Fetches `http://{addr}/metrics` (HTTP/1.0, bounded size and time).
async fn fetch(addr: &str) -> Result<String, String> {
    let go = async {
        let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        s.take(MAX_DOC)
            .read_to_end(&mut buf)
            .await
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").ok_or("malformed HTTP answer")?;
        if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
            return Err(format!("HTTP {}", head.lines().next().unwrap_or("")));
        }
        Ok(body.to_string())
    };
    tokio::time::timeout(FETCH_TIMEOUT, go)
        .await
        .map_err(|_| "no answer in time".to_string())?
}

/// The chart families of one broker's document.
pub(crate) fn summarize(samples: &[Sample]) -> Value {
    let mut in_by_topic: BTreeMap<&str, f64> = BTreeMap::new();
    let mut out_by_topic: BTreeMap<&str, f64> = BTreeMap::new();
    let mut send: BTreeMap<String, f64> = BTreeMap::new();
    let mut fsync: BTreeMap<String, f64> = BTreeMap::new();
    let (mut repl_lag, mut consumer_lag) = (0f64, 0f64);
    let mut lag_by_group: BTreeMap<&str, f64> = BTreeMap::new();
    for s in samples {
        match s.name.as_str() {
            "sofamq_messages_in_total" => {
                *in_by_topic
                    .entry(s.label("topic").unwrap_or(""))
                    .or_default() += s.value
            }
            "sofamq_messages_out_total" => {
                *out_by_topic
                    .entry(s.label("topic").unwrap_or(""))
                    .or_default() += s.value
            }
            "sofamq_send_latency_seconds_bucket" => {
                *send
                    .entry(s.label("le").unwrap_or("+Inf").to_string())
                    .or_default() += s.value
            }
            "sofamq_store_fsync_seconds_bucket" => {
                *fsync
                    .entry(s.label("le").unwrap_or("+Inf").to_string())
                    .or_default() += s.value
            }
            "sofamq_replication_lag_bytes" => repl_lag = repl_lag.max(s.value),
            "sofamq_consumer_group_lag" => {
                consumer_lag += s.value;
                *lag_by_group
                    .entry(s.label("group").unwrap_or(""))
                    .or_default() += s.value;
            }
            _ => {}
        }
    }
    let buckets = |m: BTreeMap<String, f64>| {
        let mut v: Vec<(f64, f64)> = m
            .into_iter()
            .filter_map(|(le, c)| {
                Some((
                    if le == "+Inf" {
                        f64::INFINITY
                    } else {
                        le.parse().ok()?
                    },
                    c,
                ))
            })
            .collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v.into_iter()
            .map(|(le, c)| {
                json!([
                    if le.is_finite() {
                        json!(le)
                    } else {
                        json!("+Inf")
                    },
                    c
                ])
            })
            .collect::<Vec<_>>()
    };
    json!({
        "in_total": in_by_topic.values().sum::<f64>(),
        "out_total": out_by_topic.values().sum::<f64>(),
        "in_by_topic": in_by_topic, "out_by_topic": out_by_topic,
        "send_buckets": buckets(send), "fsync_buckets": buckets(fsync),
        "replication_lag_bytes": repl_lag, "consumer_lag": consumer_lag, "lag_by_group": lag_by_group,
    })
}

/// `GET /console/api/metrics`: every broker's chart families, now.
pub(crate) async fn metrics(
    State(c): State<Arc<Console>>,
    Extension(who): Extension<Caller>,
) -> ApiResult {
    let mut out = Vec::new();
    for g in c.groups() {
        for m in &g.members {
            let mut row = json!({"broker": g.broker_name, "broker_id": m.broker_id, "address": m.grpc_endpoint});
            let http = match c.status(&m.grpc_endpoint, who.creds.as_ref()).await {
                Ok(s) if !s.http_addr.is_empty() => Ok(s.http_addr),
                Ok(_) => Err("serves no /metrics (http_listen unset)".to_string()),
                Err(e) => Err(why(&e)),
            };
            match http {
                Ok(h) => match fetch(&h).await {
                    Ok(doc) => row["metrics"] = summarize(&parse(&doc)),
                    Err(e) => row["error"] = format!("{h}/metrics: {e}").into(),
                },
                Err(e) => row["error"] = e.into(),
            }
            out.push(row);
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    Ok(Json(json!({"at_ms": now, "brokers": out})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_escapes_and_inf() {
        let s = parse(
            "# HELP x\nsofamq_messages_in_total{broker=\"a\",topic=\"t\\\"}q\"} 12\n\
             sofamq_send_latency_seconds_bucket{le=\"+Inf\"} 3\nup 1\nbroken{x=1} 2\n",
        );
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].label("topic"), Some("t\"}q"));
        assert_eq!(s[0].value, 12.0);
        assert_eq!(s[1].label("le"), Some("+Inf"));
        assert_eq!(s[2].name, "up");
    }

    #[test]
    fn summary_sums_topics_and_orders_buckets() {
        let s = parse(
            "sofamq_messages_in_total{topic=\"a\"} 2\nsofamq_messages_in_total{topic=\"b\"} 3\n\
             sofamq_send_latency_seconds_bucket{le=\"+Inf\"} 9\nsofamq_send_latency_seconds_bucket{le=\"0.01\"} 4\n\
             sofamq_send_latency_seconds_bucket{le=\"0.001\"} 1\nsofamq_consumer_group_lag{group=\"g\"} 7\n",
        );
        let v = summarize(&s);
        assert_eq!(v["in_total"], 5.0);
        assert_eq!(
            v["send_buckets"],
            json!([[0.001, 1.0], [0.01, 4.0], ["+Inf", 9.0]])
        );
        assert_eq!(v["lag_by_group"]["g"], 7.0);
    }
}
