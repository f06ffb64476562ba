#!/usr/bin/env bash
# Installs the official RocketMQ 5 Python client into a project-local venv
# ($CARGO_TARGET_DIR/compat-venv, default target/compat-venv), once. Idempotent; prints the interpreter path last.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv="${CARGO_TARGET_DIR:-target}/compat-venv"
want="rocketmq-python-client==5.1.2"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import rocketmq.v5' 2>/dev/null; then
  echo "setup-python: creating $venv with $want" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$want"
fi
case "$venv" in /*) echo "$venv/bin/python" ;; *) echo "$PWD/$venv/bin/python" ;; esac
