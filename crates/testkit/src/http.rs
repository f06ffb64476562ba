//! A minimal HTTP/1.1 GET for the servers' `/health` and `/metrics` endpoints.

use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Answers larger than this are refused.
const MAX_ANSWER: u64 = 4 << 20;

/// `GET path` on `addr` (`host:port`), bounded by `wait`: the status code and the body.
pub async fn get(addr: &str, path: &str, wait: Duration) -> anyhow::Result<(u16, String)> {
    get_full(addr, path, wait)
        .await
        .map(|(code, _, body)| (code, body))
}

/// The server's wall clock, from the `Date` header of its answer to `GET path`.
pub async fn server_time(
    addr: &str,
    path: &str,
    wait: Duration,
) -> anyhow::Result<std::time::SystemTime> {
    let (_, head, _) = get_full(addr, path, wait).await?;
    let date = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("date").then(|| v.trim().to_string())
        })
        .with_context(|| format!("GET {addr}{path}: no Date header"))?;
    httpdate::parse_http_date(&date).with_context(|| format!("GET {addr}{path}: Date {date:?}"))
}

/// `GET path` on `addr`: the status code, the header block and the body.
async fn get_full(addr: &str, path: &str, wait: Duration) -> anyhow::Result<(u16, String, String)> {
    let fetch = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut buf = Vec::new();
        s.take(MAX_ANSWER).read_to_end(&mut buf).await?;
        anyhow::Ok(buf)
    };
    let buf = tokio::time::timeout(wait, fetch)
        .await
        .with_context(|| format!("GET {addr}{path}: no answer within {wait:?}"))??;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("GET {addr}{path}: no header end"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("GET {addr}{path}: bad status line"))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, head.to_string(), body))
}

/// Joins the chunks of a chunked body (ends at the last chunk or at anything malformed).
fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n || !after.is_char_boundary(n) {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].strip_prefix("\r\n").unwrap_or(&after[n..]);
    }
    out
}

/// The value of the first sample of metric `name` (any labels) in a Prometheus text
/// document.
pub fn sample(doc: &str, name: &str) -> Option<f64> {
    doc.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let rest = l.strip_prefix(name)?;
        let value = match rest.strip_prefix('{') {
            Some(labelled) => labelled.rsplit_once('}')?.1,
            None if rest.starts_with(' ') => rest,
            None => return None,
        };
        value.split_whitespace().next()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dechunks_and_finds_samples() {
        assert_eq!(
            dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            "hello world"
        );
        let doc = "# HELP x y\nsofamq_broker_fenced_total 3\nsofamq_broker_fenced{broker=\"a\"} 1\nsofamq_x 2\n";
        assert_eq!(sample(doc, "sofamq_broker_fenced"), Some(1.0));
        assert_eq!(sample(doc, "sofamq_x"), Some(2.0));
        assert_eq!(sample(doc, "sofamq_y"), None);
    }
}
