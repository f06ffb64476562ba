//! The official Python client against `sofamq standalone --acl`: accepted with
//! credentials (a user created with `sofamq admin acl user add`), refused without.

use std::process::Command;

use sofamq_testkit::{Standalone, compat_python, repo_root, sofamq_bin};

fn sofamq(args: &[&str]) -> std::process::Output {
    Command::new(sofamq_bin()).args(args).output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_with_credentials_is_accepted_without_is_refused() {
    let py = compat_python().expect("python client install");
    let sa = Standalone::start(&[
        "--topic",
        "secure:4",
        "--no-slave",
        "--acl",
        "--admin-ak",
        "root",
        "--admin-sk",
        "root-secret",
    ])
    .unwrap();
    let broker = format!("127.0.0.1:{}", sa.port_base + 1);

    // Managing users needs the admin's credentials.
    let add = [
        "admin",
        "acl",
        "user",
        "add",
        "--broker-addr",
        &broker,
        "--user",
        "py",
        "--user-secret",
        "py-secret",
        "--rule",
        "allow:topic:secure:pub",
    ];
    let out = sofamq(&add);
    assert!(!out.status.success(), "no credentials: refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("40100"));
    let mut with_admin = add.to_vec();
    with_admin.extend(["--access-key", "root", "--secret-key", "root-secret"]);
    let out = sofamq(&with_admin);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = sofamq(&[
        "admin",
        "acl",
        "user",
        "list",
        "--broker-addr",
        &broker,
        "--access-key",
        "py",
        "--secret-key",
        "py-secret",
    ]);
    assert!(!out.status.success(), "a non-admin may not list users");
    assert!(String::from_utf8_lossy(&out.stderr).contains("40300"));
    let out = sofamq(&[
        "admin",
        "acl",
        "user",
        "list",
        "--broker-addr",
        &broker,
        "--access-key",
        "root",
        "--secret-key",
        "root-secret",
    ]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains("allow:topic:secure:pub") && !listed.contains("py-secret"));

    let script = repo_root().join("scripts/compat/python_producer.py");
    let with = Command::new(&py)
        .arg(&script)
        .args([sa.node.addr.as_str(), "secure", "20", "py", "py-secret"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&with.stdout);
    assert!(
        with.status.success(),
        "signed python producer failed: {stdout}\n{}",
        String::from_utf8_lossy(&with.stderr)
    );
    assert_eq!(
        stdout.lines().filter(|l| l.contains("message_id")).count(),
        20
    );

    let without = Command::new(&py)
        .arg(&script)
        .args([sa.node.addr.as_str(), "secure", "2"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&without.stdout);
    assert!(
        !without.status.success(),
        "unsigned sends must fail: {stdout}"
    );
    assert_eq!(
        stdout.lines().filter(|l| l.contains("\"error\"")).count(),
        2,
        "{stdout}"
    );

    let wrong = Command::new(&py)
        .arg(&script)
        .args([sa.node.addr.as_str(), "secure", "1", "py", "wrong"])
        .output()
        .unwrap();
    assert!(!wrong.status.success(), "a wrong secret must fail");
}
