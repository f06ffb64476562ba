//! `sofamq bench namesrv` with tiny figures: it starts its own namesrv and controller (child
//! processes on 127.0.0.1 ports they pick), registers every group, elects their masters,
//! answers route queries without errors, reports CPU and RSS, and leaves no child behind.

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn bench_namesrv_smoke() {
    let dir =
        std::env::temp_dir().join(format!("sofamq-bench-namesrv-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("report.json");
    let t0 = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_sofamq"))
        .args([
            "bench",
            "namesrv",
            "--groups",
            "5",
            "--queues",
            "200",
            "--clients",
            "50",
            "--duration",
            "2",
            "--route-interval",
            "1",
            "--register-conns",
            "2",
            "--client-conns",
            "4",
            "--controller-conns",
            "4",
            "--warmup-timeout",
            "30",
            "--tmp-dir",
        ])
        .arg(&dir)
        .arg("--json")
        .arg(&json)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(t0.elapsed() < Duration::from_secs(60));
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let ctx = format!("{stdout}\n{r:#}");
    assert_eq!(r["warmup"]["groups_registered"], 5, "{ctx}");
    assert_eq!(r["warmup"]["groups_elected"], 5, "{ctx}");
    assert_eq!(r["shape"]["members"], 10, "{ctx}");
    assert!(r["window"]["route_queries"].as_u64().unwrap() > 0, "{ctx}");
    assert_eq!(r["window"]["errors"], 0, "{ctx}");
    assert!(r["window"]["registrations"].as_u64().unwrap() > 0, "{ctx}");
    assert!(
        r["window"]["controller_heartbeats"].as_u64().unwrap() > 0,
        "{ctx}"
    );
    assert_eq!(r["burst"]["answered"], 50, "{ctx}");
    assert_eq!(r["burst"]["errors"], 0, "{ctx}");
    let procs = r["processes"].as_array().unwrap();
    let roles: Vec<&str> = procs.iter().map(|p| p["role"].as_str().unwrap()).collect();
    assert_eq!(
        roles,
        ["controller", "namesrv", "bench (load generator)"],
        "{ctx}"
    );
    for p in procs {
        assert!(p["window_cpu_s"].as_f64().is_some(), "{ctx}");
        assert!(p["rss_before_load_mib"].as_f64().unwrap() > 0.0, "{ctx}");
        assert!(p["rss_peak_vmhwm_mib"].as_f64().unwrap() > 0.0, "{ctx}");
    }
    // The text report says the same.
    assert!(
        stdout.contains("warm-up: 5/5 groups registered"),
        "{stdout}"
    );
    assert!(stdout.contains("errors: 0"), "{stdout}");
    assert!(stdout.contains("process namesrv (pid "), "{stdout}");
    assert!(
        !stdout.contains('\x1b'),
        "colour codes in a pipe: {stdout:?}"
    );
    // The children were killed and their data directory removed.
    for p in &procs[..2] {
        let pid = p["pid"].as_str().unwrap();
        let gone = (0..50).any(|_| {
            let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| !s.contains(") Z "));
            if alive {
                std::thread::sleep(Duration::from_millis(100));
            }
            !alive
        });
        assert!(gone, "child {pid} still running");
    }
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("sofamq-bench-namesrv-")
        })
        .collect();
    assert!(left.is_empty(), "temporary directory left behind: {left:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
