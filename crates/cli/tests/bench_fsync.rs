//! `sofamq bench fsync` and `sofamq bench floor` with a tiny count: their line, their JSON,
//! and no scratch file left.

use std::path::Path;
use std::process::Command;

/// Runs `sofamq ARGS --dir DIR --json DIR/NAME` and expects success; its stdout and JSON.
/// Afterwards DIR holds nothing but that JSON file, which is removed.
fn run_ok(args: &[&str], dir: &Path, name: &str) -> (String, serde_json::Value) {
    let json = dir.join(name);
    let out = Command::new(env!("CARGO_BIN_EXE_sofamq"))
        .args(args)
        .arg("--dir")
        .arg(dir)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from(name)]);
    std::fs::remove_file(&json).unwrap();
    let (p50, p99) = (v["p50_ms"].as_f64().unwrap(), v["p99_ms"].as_f64().unwrap());
    assert!(p50 > 0.0 && p50 <= p99, "{v}");
    assert!(v["per_sec"].as_f64().unwrap() > 0.0, "{v}");
    (stdout, v)
}

#[test]
fn bench_fsync_prints_p50_writes_json_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let (stdout, v) = run_ok(
        &["bench", "fsync", "--count", "20", "--size", "512"],
        dir.path(),
        "fsync.json",
    );
    assert!(
        stdout.starts_with("raw fdatasync: 512 B appends, 20 iterations: p50 "),
        "{stdout}"
    );
    assert_eq!(v["iterations"], 20);
    assert_eq!(v["size"], 512);
    assert_eq!(v["preallocate"], false);
    let (stdout, v) = run_ok(
        &[
            "bench",
            "fsync",
            "--count",
            "20",
            "--size",
            "512",
            "--preallocate",
        ],
        dir.path(),
        "fsync.json",
    );
    assert!(
        stdout.starts_with(
            "raw fdatasync: 512 B appends, 20 iterations into a preallocated file: p50 "
        ),
        "{stdout}"
    );
    assert_eq!(v["preallocate"], true);
    let (stdout, v) = run_ok(
        &[
            "bench", "fsync", "--count", "20", "--size", "512", "--zeroed",
        ],
        dir.path(),
        "fsync.json",
    );
    assert!(
        stdout.starts_with("raw fdatasync: 512 B appends, 20 iterations into a zeroed file: p50 "),
        "{stdout}"
    );
    assert_eq!(v["zeroed"], true);
    assert_eq!(v["preallocate"], false);
}

#[test]
fn bench_floor_runs_both_modes_writes_json_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    for (flag, what, sync) in [
        (None, "fdatasync on both", true),
        (Some("--no-sync"), "hops only, no fdatasync", false),
    ] {
        let mut args = vec!["bench", "floor", "--count", "25", "--size", "300"];
        args.extend(flag);
        let (stdout, v) = run_ok(&args, dir.path(), "floor.json");
        assert!(
            stdout.starts_with(&format!(
                "replicated floor: 300 B, 25 round trips client -> master -> slave over 127.0.0.1, {what}: p50 "
            )),
            "{stdout}"
        );
        assert_eq!(v["iterations"], 25);
        assert_eq!(v["size"], 300);
        assert_eq!(v["sync"], sync);
    }
}

#[test]
fn bench_floor_refuses_a_zero_size() {
    let out = Command::new(env!("CARGO_BIN_EXE_sofamq"))
        .args(["bench", "floor", "--size", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--size"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
