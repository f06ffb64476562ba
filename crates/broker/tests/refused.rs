//! A slave tells the controller when the master it follows refuses connections (its
//! process is gone), and stops saying so once a connect succeeds again.

use std::time::{Duration, Instant};

use sofamq_broker::BrokerConfig;
use tokio::net::TcpListener;

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "{what} within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slave_reports_a_master_that_refuses_connections_until_one_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = BrokerConfig {
        data_dir: dir.path().join("b"),
        listen: "127.0.0.1:0".parse().unwrap(),
        namesrv: vec![],
        ..Default::default()
    };
    cfg.replication.reconnect_backoff_ms = 20;
    let broker = sofamq_broker::server::open(cfg).await.unwrap();
    let repl = broker.repl().clone();
    assert_eq!(repl.master_refused(), None, "a master reports nothing");

    // An address nothing listens on: bind, note the port, close.
    let gone = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = gone.local_addr().unwrap().to_string();
    drop(gone);
    repl.demote(addr.clone()).await.unwrap();
    wait_for("the refused address reported", || {
        repl.master_refused().as_deref() == Some(addr.as_str())
    })
    .await;

    // Something listens there again (it does not speak replication: the handshake fails,
    // but the connect succeeded): no longer refused.
    let back = TcpListener::bind(&addr).await.unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = back.accept().await {
            held.push(s);
        }
    });
    wait_for("the report cleared", || repl.master_refused().is_none()).await;
}

/// A broker the slave was told to follow that has not taken the master role yet answers
/// "not master": the slave tries again on its base delay, not on a doubling backoff (which
/// would leave the new master without its in-sync slave for up to 16 delays).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slave_retries_a_broker_that_is_not_master_yet_without_backing_off() {
    use sofamq_broker::repl::frame::{self, Msg};

    let dir = tempfile::tempdir().unwrap();
    let mut cfg = BrokerConfig {
        data_dir: dir.path().join("b"),
        listen: "127.0.0.1:0".parse().unwrap(),
        namesrv: vec![],
        ..Default::default()
    };
    cfg.replication.reconnect_backoff_ms = 50;
    let broker = sofamq_broker::server::open(cfg).await.unwrap();
    // A peer that refuses every session the way a slave does.
    let peer = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = peer.local_addr().unwrap().to_string();
    let attempts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = attempts.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = peer.accept().await {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let reject = Msg::Reject {
                reason: "not master".into(),
            };
            let _ = frame::write_frame(&mut s, frame::MIN_VERSION, 0, &reject).await;
        }
    });
    broker.repl().demote(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let n = attempts.load(std::sync::atomic::Ordering::SeqCst);
    // On the base delay: about 1500 / 50 tries. Doubling (50, 100, 200, 400, 800 ms) would
    // give 5.
    assert!(n >= 10, "only {n} attempts in 1.5 s");
}
