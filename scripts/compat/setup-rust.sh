#!/usr/bin/env bash
# Builds the failover driver for the official RocketMQ 5 Rust client (crate `rocketmq`
# =5.0.0, scripts/compat/rust-client, not a workspace member) into its own target dir,
# $CARGO_TARGET_DIR/compat-rust (default target/compat-rust). Idempotent; prints the
# binary's path last. Needs cargo and crates.io.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
target="${CARGO_TARGET_DIR:-$root/target}/compat-rust"
command -v cargo >/dev/null || { echo "setup-rust: cargo not found" >&2; exit 1; }
echo "setup-rust: building scripts/compat/rust-client into $target" >&2
CARGO_TARGET_DIR="$target" cargo build --quiet \
  --manifest-path scripts/compat/rust-client/Cargo.toml >&2
echo "$target/debug/rust_producer"
