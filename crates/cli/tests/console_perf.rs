//! Load-time figures of the console (run by hand; see docs/console.md):
//! `cargo test -p sofamq-cli --test console_perf -- --ignored --nocapture`.
//! The topics page with 1,000 topics and a consumer group with 1,000 queues,
//! each loaded five times in headless Chromium; prints the median time from
//! navigation start to the page drawn (`window.sofamqRenderedAt`).

#[path = "console/harness.rs"]
mod harness;
#[path = "console/webdriver.rs"]
#[allow(dead_code)] // shared with console_browser.rs, which uses all of it
mod webdriver;

use std::time::Duration;

use anyhow::Context;
use serde_json::json;
use sofamq_client::{ConsumerConfig, SimpleConsumer};
use webdriver::Browser;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check; run by hand"]
async fn console_load_times() -> anyhow::Result<()> {
    if let Err(why) = harness::ensure_chromium() {
        eprintln!("SKIPPED: {why}");
        return Ok(());
    }
    tokio::time::timeout(Duration::from_secs(900), Box::pin(measure()))
        .await
        .context("took too long")?
}

async fn measure() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let base = harness::free_base()?;
    let _cluster = harness::standalone(base, dir.path(), &["--no-slave"]).await?;
    let _driver = harness::chromedriver(base + 9)?;
    let b = Browser::start(base + 9).await?;
    let console = format!("http://127.0.0.1:{}/console/", base + 5);
    b.goto(&console).await?;
    b.wait_for("the app", "return window.sofamqRenderedAt", WAIT)
        .await?;
    // 1,000 topics (4 queues each) and one of 1,000 queues, through the console's API.
    let made = b
        .js(
            "const done = arguments[arguments.length - 1];
             return (async () => {
               const s = await (await fetch('/console/api/session')).json();
               const post = (body) => fetch('/console/api/topics', {method: 'POST',
                 headers: {'content-type': 'application/json', 'x-csrf-token': s.csrf}, body: JSON.stringify(body)});
               for (let i = 0; i < 1000; i += 20) {
                 await Promise.all(Array.from({length: 20}, (_, j) => post({name: 'perf-' + String(i + j).padStart(4, '0'), queues: 4})));
               }
               await post({name: 'wide', queues: 1000});
               return 'ok';
             })()",
            json!([]),
        )
        .await?;
    anyhow::ensure!(made == "ok", "{made}");
    let c = SimpleConsumer::start(
        ConsumerConfig::new(vec![format!("127.0.0.1:{base}")], "wide-group"),
        vec![("wide".into(), "*".into())],
    )
    .await?;
    let _ = c.receive(1, Duration::from_secs(1)).await;

    let topics = median(&b, &format!("{console}#topics"), "const t = document.getElementById('topics-table'); return t && t.tBodies[0].rows.length >= 1001 && window.sofamqRenderedAt").await?;
    let group = median(&b, &format!("{console}#group/wide-group"), "const q = document.querySelector('#group-queues table'); return q && q.tBodies[0].rows.length >= 1000 && window.sofamqRenderedAt").await?;
    println!(
        "FIGURE topics page, 1,001 topics: median {topics:.0} ms from navigation start to drawn (5 loads)"
    );
    println!(
        "FIGURE consumer group, 1,000 queues: median {group:.0} ms from navigation start to drawn (5 loads)"
    );
    b.close().await;
    Ok(())
}

async fn median(b: &Browser, url: &str, ready: &str) -> anyhow::Result<f64> {
    let mut v = Vec::new();
    for _ in 0..5 {
        b.goto(url).await?;
        let t = b.wait_for(url, ready, WAIT).await?;
        v.push(t.as_f64().context("a time")?);
    }
    v.sort_by(f64::total_cmp);
    println!("{url}: {v:?} ms");
    Ok(v[2])
}
