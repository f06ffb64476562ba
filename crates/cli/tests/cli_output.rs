//! Client commands against a real `sofamq standalone`: results on stdout, nothing
//! at INFO on stderr unless `-v`, no ANSI colour codes into a pipe, and tables whose
//! columns line up under their headers (a topic name longer than any fixed width).

#[path = "console/harness.rs"]
#[allow(dead_code)] // shared with the console tests
mod harness;

use std::time::Duration;

use anyhow::Context;

const LONG: &str = "a-topic-name-that-is-longer-than-thirty-two-characters";

fn sofamq(args: &[&str]) -> anyhow::Result<(String, String)> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sofamq"))
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .output()
        .with_context(|| format!("running sofamq {args:?}"))?;
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    anyhow::ensure!(out.status.success(), "sofamq {args:?} failed: {e}");
    Ok((o, e))
}

/// Cells as (start, end) byte spans, split at runs of two or more spaces.
fn spans(l: &str) -> Vec<(usize, usize)> {
    let b = l.as_bytes();
    let mut v = Vec::new();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && b[i] == b' ' {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        let start = i;
        while i < b.len() && !(b[i] == b' ' && (i + 1 >= b.len() || b[i + 1] == b' ')) {
            i += 1;
        }
        v.push((start, i));
    }
    v
}

/// Each column lines up under its header: every row's cell starts where the header
/// starts (left-aligned) or ends where it ends (right-aligned).
fn assert_aligned(table: &str) {
    let lines: Vec<&str> = table.lines().filter(|l| !l.trim().is_empty()).collect();
    let head = spans(lines[0]);
    let rows: Vec<Vec<(usize, usize)>> = lines[1..].iter().map(|l| spans(l)).collect();
    assert!(!rows.is_empty(), "no rows:\n{table}");
    for (i, h) in head.iter().enumerate() {
        let cells: Vec<(usize, usize)> = rows.iter().filter_map(|r| r.get(i).copied()).collect();
        let left = cells.iter().all(|c| c.0 == h.0);
        let right = cells.iter().all(|c| c.1 == h.1);
        assert!(
            left || right,
            "column {i} does not line up under its header:\n{table}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_commands_print_results_quietly_and_aligned() -> anyhow::Result<()> {
    tokio::time::timeout(
        Duration::from_secs(180),
        Box::pin(async {
            let dir = tempfile::tempdir()?;
            let base = harness::free_base()?;
            let _cluster = harness::standalone(base, dir.path(), &["--no-slave"]).await?;
            let ap = format!("127.0.0.1:{base}");
            let ap = ap.as_str();
            let all = tokio::task::spawn_blocking({
                let ap = ap.to_string();
                move || -> anyhow::Result<Vec<(String, String, String)>> {
                    let ap = ap.as_str();
                    let mut v = Vec::new();
                    for args in [
                        vec![
                            "topic",
                            "create",
                            LONG,
                            "--queues",
                            "2",
                            "--access-point",
                            ap,
                        ],
                        vec![
                            "topic",
                            "create",
                            "t",
                            "--queues",
                            "1024",
                            "--access-point",
                            ap,
                        ],
                        vec![
                            "produce",
                            "--topic",
                            LONG,
                            "--count",
                            "3",
                            "--body",
                            "hello",
                            "--access-point",
                            ap,
                        ],
                        vec![
                            "consume",
                            "--topic",
                            LONG,
                            "--group",
                            "g",
                            "--count",
                            "3",
                            "--access-point",
                            ap,
                        ],
                        vec!["topic", "list", "--access-point", ap],
                        vec!["topic", "describe", "t", "--access-point", ap],
                        vec!["admin", "cluster", "--access-point", ap],
                        vec!["admin", "group", "list", "--access-point", ap],
                        vec!["admin", "dlq", "list", "--group", "g", "--access-point", ap],
                        vec![
                            "admin",
                            "dlq",
                            "resend",
                            "--group",
                            "g",
                            "--offsets",
                            "0,3",
                            "--access-point",
                            ap,
                        ],
                    ] {
                        let (o, e) = sofamq(&args)?;
                        v.push((args.join(" "), o, e));
                    }
                    Ok(v)
                }
            })
            .await??;
            for (cmd, out, err) in &all {
                assert!(!out.trim().is_empty(), "{cmd}: nothing on stdout");
                assert!(
                    !err.contains(" INFO "),
                    "{cmd}: INFO on stderr without -v:\n{err}"
                );
                assert!(
                    !out.contains('\u{1b}') && !err.contains('\u{1b}'),
                    "{cmd}: ANSI codes into a pipe"
                );
            }
            let find = |c: &str| {
                all.iter()
                    .find(|(cmd, _, _)| cmd.starts_with(c))
                    .map(|x| x.1.clone())
                    .unwrap()
            };
            let list = find("topic list");
            assert!(list.contains(LONG));
            assert_aligned(&list);
            assert_aligned(&find("admin cluster"));
            assert_aligned(&find("admin group list"));
            assert!(find("admin dlq list").starts_with("BROKER"));
            let resend = find("admin dlq resend");
            assert!(
                resend.contains("resent 0 dead letter(s) of g")
                    && resend.contains("offset 0 not resent: not stored")
                    && resend.contains("offset 3 not resent: not stored"),
                "{resend}"
            );
            let describe = find("topic describe");
            let table: String = describe.lines().skip(1).map(|l| format!("{l}\n")).collect();
            assert!(table.contains("1023"));
            assert_aligned(&table);
            assert!(
                find("produce").lines().count() >= 3,
                "one receipt per message"
            );
            // -v brings the INFO logs back (the server-side default).
            let (_, err) = tokio::task::spawn_blocking({
                let ap = ap.to_string();
                move || sofamq(&["-vv", "topic", "list", "--access-point", &ap])
            })
            .await??;
            assert!(
                err.contains("DEBUG") || err.contains("INFO"),
                "-vv logs: {err}"
            );
            Ok(())
        }),
    )
    .await
    .context("took too long")?
}
