//! The console's HTTP surface without brokers: the page is served with its security
//! headers, and every API call fails closed while no broker can say whether ACL is on.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn get(addr: &str, req: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test]
async fn page_has_security_headers_and_api_fails_closed_without_brokers() {
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let h = http.local_addr().unwrap().to_string();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(sofamq_namesrv::run(
        sofamq_namesrv::Listeners {
            grpc,
            http: Some(http),
        },
        sofamq_namesrv::NamesrvConfig::default(),
        sofamq_server::Shutdown::on(async move {
            let _ = rx.await;
        }),
    ));
    let page = get(&h, "GET /console/ HTTP/1.0\r\n\r\n").await;
    assert!(
        page.starts_with("HTTP/1.0 200") || page.starts_with("HTTP/1.1 200"),
        "{page}"
    );
    let lower = page.to_ascii_lowercase();
    assert!(lower.contains("content-security-policy: default-src 'self'"));
    assert!(lower.contains("x-frame-options: deny"));
    assert!(page.contains("/console/app.js"));

    for path in [
        "/console/api/cluster",
        "/console/api/topics",
        "/console/api/session",
    ] {
        let r = get(&h, &format!("GET {path} HTTP/1.0\r\n\r\n")).await;
        assert!(r.contains(" 503 "), "{path}: {r}");
        assert!(r.contains("cannot tell whether ACL is on"), "{path}: {r}");
    }
    // A cross-site POST is refused before anything else.
    let r = get(
        &h,
        "POST /console/api/topics HTTP/1.0\r\nHost: x\r\nOrigin: http://evil.example\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
    )
    .await;
    assert!(r.contains(" 403 "), "{r}");
    let _ = tx.send(());
    let _ = task.await;
}

#[tokio::test]
async fn console_can_be_turned_off() {
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let h = http.local_addr().unwrap().to_string();
    let mut cfg = sofamq_namesrv::NamesrvConfig::default();
    cfg.console.enabled = false;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(sofamq_namesrv::run(
        sofamq_namesrv::Listeners {
            grpc,
            http: Some(http),
        },
        cfg,
        sofamq_server::Shutdown::on(async move {
            let _ = rx.await;
        }),
    ));
    let r = get(&h, "GET /console/ HTTP/1.0\r\n\r\n").await;
    assert!(r.contains(" 404 "), "{r}");
    let m = get(&h, "GET /metrics HTTP/1.0\r\n\r\n").await;
    assert!(m.contains(" 200 "), "{m}");
    let _ = tx.send(());
    let _ = task.await;
}

/// With no HTTP listener given, `run` binds `http_listen` from the configuration (as
/// `sofamq standalone` relies on), and stops serving it with the shutdown.
#[tokio::test]
async fn run_binds_the_configured_http_address_when_given_no_listener() {
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let h = free.local_addr().unwrap();
    drop(free);
    let cfg = sofamq_namesrv::NamesrvConfig {
        http_listen: Some(h),
        ..Default::default()
    };
    let shutdown = sofamq_server::Shutdown::new();
    let task = tokio::spawn(sofamq_namesrv::run(grpc, cfg, shutdown.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(h).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "{h} never bound");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = get(&h.to_string(), "GET /health HTTP/1.0\r\n\r\n").await;
    assert!(r.contains(" 200 "), "{r}");
    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
