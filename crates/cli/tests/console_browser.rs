//! The web console in headless Chromium (chromedriver), against a real
//! `sofamq standalone`. Chromium is installed by scripts/console/install-chromium.sh;
//! where that is impossible the tests print why and pass without running.
//! `SOFAMQ_CONSOLE_SHOTS=DIR` also saves a screenshot of each page there
//! (docs/console/*.png come from this).

#[path = "console/harness.rs"]
mod harness;
#[path = "console/webdriver.rs"]
mod webdriver;

use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use sofamq_client::{
    ConsumerConfig, Message, Producer, ProducerConfig, ReceivedMessage, SimpleConsumer,
};
use webdriver::Browser;

const LIMIT: Duration = Duration::from_secs(240);
const WAIT: Duration = Duration::from_secs(20);

fn skip() -> bool {
    match harness::ensure_chromium() {
        Ok(()) => false,
        Err(why) => {
            eprintln!("SKIPPED: cannot install chromium/chromedriver here: {why}");
            true
        }
    }
}

async fn shot(b: &Browser, name: &str) -> anyhow::Result<()> {
    if let Ok(dir) = std::env::var("SOFAMQ_CONSOLE_SHOTS") {
        tokio::time::sleep(Duration::from_millis(400)).await;
        std::fs::create_dir_all(&dir)?;
        std::fs::write(format!("{dir}/{name}.png"), b.screenshot().await?)?;
    }
    Ok(())
}

/// The page's text (for "does it say so" checks).
const BODY: &str = "return document.getElementById('main').innerText";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_topic_lookup_lag_and_dead_letter() -> anyhow::Result<()> {
    if skip() {
        return Ok(());
    }
    tokio::time::timeout(LIMIT, Box::pin(flow()))
        .await
        .context("test took too long")?
}

async fn flow() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let base = harness::free_base()?;
    let _cluster = harness::standalone(base, dir.path(), &[]).await?;
    let _driver = harness::chromedriver(base + 9)?;
    let b = Browser::start(base + 9).await?;
    let r = Box::pin(run(&b, base)).await;
    b.close().await;
    r
}

async fn run(b: &Browser, base: u16) -> anyhow::Result<()> {
    let console = format!("http://127.0.0.1:{}/console/", base + 5);
    let ap = format!("127.0.0.1:{base}");

    // Cluster page: the group, its master and slave, healthy.
    b.goto(&format!("{console}#cluster")).await?;
    b.wait_for("cluster table", "return document.querySelector('main table') && document.getElementById('main').innerText.includes('master')", WAIT).await?;
    shot(b, "cluster").await?;

    // Create a topic in the console.
    b.goto(&format!("{console}#topics")).await?;
    b.wait_for(
        "topics page",
        "return document.getElementById('topic-name')",
        WAIT,
    )
    .await?;
    b.fill("#topic-name", "console-e2e").await?;
    b.fill("#topic-queues", "2").await?;
    b.click("#topic-create").await?;
    b.wait_for("the new topic listed", "const t = document.getElementById('topics-table'); return t && t.innerText.includes('console-e2e')", WAIT).await?;
    b.fill("#topic-name", "console-dlq").await?;
    b.fill("#topic-queues", "1").await?;
    b.click("#topic-create").await?;
    b.wait_for("the DLQ test topic listed", "const t = document.getElementById('topics-table'); return t && t.innerText.includes('console-dlq')", WAIT).await?;

    // Send with the SDK; one message carries a JSON body with markup in it.
    let producer = Producer::start(ProducerConfig::new(vec![ap.clone()])).await?;
    for i in 0..40 {
        let body = if i == 7 {
            r#"{"html":"<img src=x onerror=alert(1)>","n":7}"#.to_string()
        } else {
            format!("message {i}")
        };
        producer
            .send(
                Message::builder("console-e2e", body)
                    .key(format!("key-{i}"))
                    .build(),
            )
            .await
            .map_err(|e| anyhow::anyhow!("send: {e}"))?;
    }
    for body in ["poison-1", "poison-2"] {
        producer
            .send(Message::builder("console-dlq", body).key(body).build())
            .await
            .map_err(|e| anyhow::anyhow!("send: {e}"))?;
    }
    b.goto(&format!("{console}#topics")).await?;
    b.wait_for(
        "40 messages counted",
        "const t = document.getElementById('topics-table'); return t && t.innerText.includes('40')",
        WAIT,
    )
    .await?;
    shot(b, "topics").await?;

    // Find one by key; its body is shown as text, never as markup.
    b.goto(&format!("{console}#messages")).await?;
    b.wait_for(
        "messages page",
        "return document.getElementById('msg-key')",
        WAIT,
    )
    .await?;
    b.fill("#msg-topic", "console-e2e").await?;
    b.fill("#msg-key", "key-7").await?;
    b.click("#msg-find").await?;
    b.wait_for(
        "the message found",
        "const t = document.getElementById('msg-table'); return t && t.innerText.includes('key-7')",
        WAIT,
    )
    .await?;
    b.click("#msg-table tbody tr").await?;
    b.wait_for("where it is", "const l = document.getElementById('msg-location'); return l && l.innerText.includes('durable')", WAIT).await?;
    let body = b
        .js(
            "return document.getElementById('msg-body').textContent",
            json!([]),
        )
        .await?;
    assert!(
        body.as_str().unwrap_or("").contains("<img src=x"),
        "body shown as text: {body}"
    );
    let imgs = b
        .js(
            "return document.querySelectorAll('main img').length",
            json!([]),
        )
        .await?;
    assert_eq!(imgs, 0, "message contents must never become markup");
    shot(b, "messages").await?;

    // A consumer group's lag falls as it consumes.
    let consumer = SimpleConsumer::start(
        ConsumerConfig::new(vec![ap.clone()], "console-group"),
        vec![("console-e2e".into(), "*".into())],
    )
    .await?;
    let first = receive(&consumer, 5).await?;
    b.goto(&format!("{console}#group/console-group")).await?;
    let lag0 = b
        .wait_for(
            "the group's lag",
            "const l = document.getElementById('group-lag'); return l && Number(l.textContent)",
            WAIT,
        )
        .await?;
    let lag0 = lag0.as_u64().context("lag is a number")?;
    b.wait_for("the consumer online", "const t = document.getElementById('consumers-table'); return t && t.tBodies[0].rows.length >= 1", WAIT).await?;
    assert!(lag0 > 0, "lag before consuming: {lag0}");
    shot(b, "group").await?;
    consumer.ack_all(&first).await?;
    let mut acked = first.len();
    while acked < 40 {
        let got = receive(&consumer, 16).await?;
        consumer.ack_all(&got).await?;
        acked += got.len();
    }
    let fell = format!(
        "const l = document.getElementById('group-lag'); return l && Number(l.textContent) < {lag0} && Number(l.textContent) === 0"
    );
    b.wait_for("the lag to fall to 0", &fell, WAIT).await?;
    // Reset to earliest in the console: all 40 are unconsumed again (the broker's
    // ResetOffset, through the log).
    b.js(
        "window.confirm = () => true; document.getElementById('reset-to').value = 'earliest'",
        json!([]),
    )
    .await?;
    b.click("#reset-submit").await?;
    b.wait_for(
        "the lag back to 40 after the reset",
        "const l = document.getElementById('group-lag'); return l && Number(l.textContent) === 40",
        WAIT,
    )
    .await?;
    let again = receive(&consumer, 40).await?;
    consumer.ack_all(&again).await?;
    b.goto(&format!("{console}#groups")).await?;
    b.wait_for("groups list", "const t = document.getElementById('groups-table'); return t && t.innerText.includes('console-group')", WAIT).await?;
    shot(b, "groups").await?;

    // Two dead letters: never acked, delivered until the group gives up on them. The
    // second is chosen and resent; then "resend all" resends only the first.
    let poison = SimpleConsumer::start(
        ConsumerConfig::new(vec![ap.clone()], "console-dlq-group"),
        vec![("console-dlq".into(), "*".into())],
    )
    .await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        b.goto(&format!("{console}#dlq")).await?;
        let seen = b.wait_for("dead letters page", "return document.querySelector('main h2') && document.getElementById('main').innerText", WAIT).await?;
        if seen
            .as_str()
            .unwrap_or("")
            .contains("Group console-dlq-group on broker-a: 2 dead letter(s) stored")
        {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "not two dead letters after 90 s: {seen}"
        );
        let _ = poison.receive(2, Duration::from_millis(100)).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    b.click("#dlq-table-console-dlq-group input[data-offset='1']")
        .await?;
    shot(b, "dlq").await?;
    b.wait_for(
        "the page without a stray 'null' where no broker erred",
        "return !document.getElementById('main').innerText.split('\\n').includes('null')",
        WAIT,
    )
    .await?;
    b.click("#dlq-resend-chosen-console-dlq-group").await?;
    b.wait_for(
        "chosen resend confirmed",
        "return document.getElementById('flash').textContent.includes('Resent 1 dead letter(s) of console-dlq-group (chosen)')",
        WAIT,
    )
    .await?;
    // The page now says which one was resent, and offers no box for it.
    b.wait_for(
        "the chosen one marked resent",
        "const t = document.getElementById('dlq-table-console-dlq-group'); return t && !t.querySelector(\"input[data-offset='1']\") && t.querySelector(\"input[data-offset='0']\") && t.innerText.includes('yes')",
        WAIT,
    )
    .await?;
    // Which of the two reached the dead-letter queue second depends on redelivery timing.
    let again = receive(&poison, 2).await?;
    let chosen: Vec<&[u8]> = again.iter().map(|m| m.body.as_ref()).collect();
    let other: &[u8] = match chosen.as_slice() {
        [b"poison-1"] => b"poison-2",
        [b"poison-2"] => b"poison-1",
        _ => anyhow::bail!("not just the chosen dead letter came back: {chosen:?}"),
    };
    poison.ack_all(&again).await?;
    b.click("#dlq-resend-all-console-dlq-group").await?;
    b.wait_for(
        "resend of the rest confirmed",
        "const f = document.getElementById('flash').textContent; return f.includes('Resent 1 dead letter(s) of console-dlq-group.')",
        WAIT,
    )
    .await?;
    let again = receive(&poison, 2).await?;
    let bodies: Vec<&[u8]> = again.iter().map(|m| m.body.as_ref()).collect();
    assert_eq!(bodies, [other], "only the one not chosen came back");
    poison.ack_all(&again).await?;

    // The remaining pages render (for the screenshots, and no errors); the charts
    // while messages flow.
    let load = tokio::spawn(async move {
        let end = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut i = 0u64;
        while tokio::time::Instant::now() < end {
            let _ = producer
                .send(Message::builder("console-e2e", format!("load {i}")).build())
                .await;
            i += 1;
        }
    });
    for page in ["acl", "charts"] {
        b.goto(&format!("{console}#{page}")).await?;
        b.wait_for(page, "return document.querySelector('main h2')", WAIT)
            .await?;
        if page == "charts" {
            b.wait_for("a non-zero send rate", "const l = document.querySelector('.chart .legend'); return l && /in: [1-9]/.test(l.textContent)", WAIT).await?;
            tokio::time::sleep(Duration::from_secs(4)).await;
        }
        let text = b.js(BODY, json!([])).await?;
        assert!(
            !text.as_str().unwrap_or("").starts_with("Error"),
            "{page}: {text}"
        );
        shot(b, page).await?;
    }
    load.abort();

    // A broker that is registered but does not answer: the pages say so plainly.
    let mut ns = sofamq_proto::namesrv::name_server_admin_client::NameServerAdminClient::connect(
        format!("http://{ap}"),
    )
    .await?;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .to_string();
    ns.register_broker(sofamq_proto::namesrv::RegisterBrokerRequest {
        cluster: "DefaultCluster".into(),
        broker_name: "broker-z".into(),
        broker_id: 0,
        grpc_endpoint: dead.clone(),
        heartbeat_timeout_ms: 120_000,
        ..Default::default()
    })
    .await?;
    b.goto(&format!("{console}#cluster")).await?;
    b.wait_for("the down broker", "const m = document.getElementById('main'); return m && m.innerText.includes('broker-z') && m.innerText.includes('DOWN: unreachable')", WAIT).await?;
    shot(b, "cluster-broker-down").await?;
    b.goto(&format!("{console}#topics")).await?;
    b.wait_for("the topics page naming the down broker", "const m = document.getElementById('main'); return m && m.innerText.includes('Broker broker-z') && m.innerText.includes('is not answering') && document.getElementById('topics-table')", WAIT).await?;
    Ok(())
}

async fn receive(c: &SimpleConsumer, n: u32) -> anyhow::Result<Vec<ReceivedMessage>> {
    for _ in 0..50 {
        let got = c.receive(n, Duration::from_secs(30)).await?;
        if !got.is_empty() {
            return Ok(got);
        }
    }
    anyhow::bail!("nothing to receive")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_with_acl_refuses_a_wrong_password() -> anyhow::Result<()> {
    if skip() {
        return Ok(());
    }
    tokio::time::timeout(
        LIMIT,
        Box::pin(async {
            let dir = tempfile::tempdir()?;
            let base = harness::free_base()?;
            let _cluster = harness::standalone(
                base,
                dir.path(),
                &["--acl", "--admin-ak", "root", "--admin-sk", "right-secret"],
            )
            .await?;
            let _driver = harness::chromedriver(base + 9)?;
            let b = Browser::start(base + 9).await?;
            let r = Box::pin(acl_flow(&b, base)).await;
            b.close().await;
            r
        }),
    )
    .await
    .context("test took too long")?
}

async fn acl_flow(b: &Browser, base: u16) -> anyhow::Result<()> {
    let console = format!("http://127.0.0.1:{}/console/", base + 5);
    b.goto(&console).await?;
    b.wait_for(
        "login form",
        "return document.getElementById('login-key')",
        WAIT,
    )
    .await?;
    // No API answers without a session.
    let anon = b
        .js(
            "return fetch('/console/api/topics').then(r => r.status)",
            json!([]),
        )
        .await?;
    assert_eq!(anon, 401, "anonymous API call");
    b.fill("#login-key", "root").await?;
    b.fill("#login-secret", "wrong-secret").await?;
    b.click("#login-submit").await?;
    b.wait_for("the refusal", "return document.getElementById('login-error').textContent.includes('wrong access key or secret')", WAIT).await?;
    shot(b, "login-refused").await?;
    let still = b
        .js(
            "return fetch('/console/api/cluster').then(r => r.status)",
            json!([]),
        )
        .await?;
    assert_eq!(still, 401, "a refused login gives no session");
    b.fill("#login-secret", "right-secret").await?;
    b.click("#login-submit").await?;
    b.wait_for("the cluster page after login", "const m = document.getElementById('main'); return m && m.innerText.includes('broker-a') && m.innerText.includes('master')", WAIT).await?;
    // A POST without the CSRF token is refused even with the session cookie.
    let csrf = b.js("return fetch('/console/api/topics', {method: 'POST', headers: {'content-type': 'application/json'}, body: JSON.stringify({name: 'x', queues: 1})}).then(r => r.status)", json!([])).await?;
    assert_eq!(csrf, 403, "POST without x-csrf-token");

    // Users and rules: add a user with a rule (the actions list has a comma of its own),
    // add a second rule to it, remove the first; the brokers hold what the page shows.
    b.goto(&format!("{console}#acl")).await?;
    b.wait_for(
        "the ACL page",
        "return document.getElementById('acl-key')",
        WAIT,
    )
    .await?;
    b.fill("#acl-key", "app").await?;
    b.fill("#acl-secret", "app-secret").await?;
    b.fill("#acl-rules", "allow:topic:orders*:pub,sub").await?;
    b.click("#acl-save").await?;
    b.wait_for(
        "the user listed with its rule",
        "const t = document.getElementById('acl-table-broker-a'); return t && t.innerText.includes('app') && t.innerText.includes('allow:topic:orders*:pub,sub')",
        WAIT,
    )
    .await?;
    b.fill(
        "input.acl-rule-new[data-user='app']",
        "allow:group:billing:sub",
    )
    .await?;
    b.click("button.acl-rule-add[data-user='app']").await?;
    b.wait_for(
        "the second rule",
        "const t = document.getElementById('acl-table-broker-a'); return t && t.innerText.includes('allow:group:billing:sub')",
        WAIT,
    )
    .await?;
    shot(b, "acl-rules").await?;
    b.click("button.acl-rule-remove[data-rule='allow:topic:orders*:pub,sub']")
        .await?;
    b.wait_for(
        "the first rule gone",
        "const t = document.getElementById('acl-table-broker-a'); return t && !t.innerText.includes('orders*') && t.innerText.includes('allow:group:billing:sub')",
        WAIT,
    )
    .await?;
    let users = b
        .js(
            "return fetch('/console/api/acl').then(r => r.json())",
            json!([]),
        )
        .await?;
    let app = users["brokers"][0]["users"]
        .as_array()
        .and_then(|us| us.iter().find(|u| u["access_key"] == "app"))
        .cloned()
        .context("user app on the broker")?;
    assert_eq!(app["rules"], json!(["allow:group:billing:sub"]), "{users}");
    Ok(())
}
