#!/usr/bin/env bash
# The project's test command: every unit, integration, crash and compatibility test.
# Needs only the Rust toolchain and python3; everything else (the official Python
# RocketMQ client for the compatibility tests) is installed by scripts/compat/setup-python.sh
# into target/compat-venv on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
export RUST_BACKTRACE=1
# The process-level tests start the real `sofamq` binary: `cargo test` builds it itself
# (crates/cli has an integration test), so no separate build step is needed.
bash scripts/compat/setup-python.sh
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --no-fail-fast -- --test-threads="${SOFAMQ_TEST_THREADS:-2}" 2>&1 | tee "$log" || status=$?
# One closing line over every test binary (cargo prints one summary per binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
