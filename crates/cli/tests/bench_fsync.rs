//! `sofamq bench fsync` with a tiny count: its line, its JSON, and no scratch file left.

use std::process::Command;

#[test]
fn bench_fsync_prints_p50_writes_json_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("fsync.json");
    let out = Command::new(env!("CARGO_BIN_EXE_sofamq"))
        .args(["bench", "fsync", "--count", "20", "--size", "512", "--dir"])
        .arg(dir.path())
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with("raw fdatasync: 512 B appends, 20 iterations: p50 "),
        "{stdout}"
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(v["iterations"], 20);
    assert_eq!(v["size"], 512);
    let (p50, p99) = (v["p50_ms"].as_f64().unwrap(), v["p99_ms"].as_f64().unwrap());
    assert!(p50 > 0.0 && p50 <= p99, "{v}");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("fsync.json")]);
}
