//! The `sofamq` binary as the process-level tests find it. Having an integration test in
//! this package makes `cargo test` (and `cargo nextest run`) build the binary before any
//! test runs; `sofamq_testkit::sofamq_bin` builds it itself when a narrower run
//! (`cargo test -p sofamq-testkit`) did not. Either way it must be the same file.

use std::process::Command;

#[test]
fn the_binary_cargo_test_builds_is_the_one_the_testkit_starts() {
    let built = std::path::Path::new(env!("CARGO_BIN_EXE_sofamq"));
    assert!(built.exists(), "{} missing", built.display());
    if std::env::var_os("SOFAMQ_BIN").is_none() {
        let used = sofamq_testkit::sofamq_bin();
        assert_eq!(
            std::fs::canonicalize(&used).expect("the testkit's binary exists"),
            std::fs::canonicalize(built).unwrap(),
            "the testkit would start another binary than the one cargo built"
        );
    }
}

#[test]
fn help_lists_every_subcommand_and_no_colour_reaches_a_pipe() {
    let out = Command::new(env!("CARGO_BIN_EXE_sofamq"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for cmd in [
        "standalone",
        "namesrv",
        "broker",
        "controller",
        "topic",
        "produce",
        "consume",
        "bench",
        "admin",
        "chaos",
    ] {
        assert!(
            text.lines().any(|l| l.trim_start().starts_with(cmd)),
            "{cmd} missing from:\n{text}"
        );
    }
    assert!(
        !text.contains('\x1b'),
        "ANSI escape in piped help:\n{text:?}"
    );
}
