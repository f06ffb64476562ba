#!/usr/bin/env bash
# Installs the official RocketMQ 5 Node.js client (rocketmq-client-nodejs@1.0.8) with npm
# into a project-local prefix, $CARGO_TARGET_DIR/compat-node (default target/compat-node),
# once. Idempotent; prints the node_modules directory last (for NODE_PATH).
# Needs node and npm (Debian: `apt-get install nodejs npm`).
set -euo pipefail
cd "$(dirname "$0")/../.."
dir="${CARGO_TARGET_DIR:-$PWD/target}/compat-node"
want="rocketmq-client-nodejs@1.0.8"
command -v node >/dev/null || { echo "setup-node: node not found" >&2; exit 1; }
command -v npm >/dev/null || { echo "setup-node: npm not found" >&2; exit 1; }
if ! (cd "$dir" 2>/dev/null && node -e 'const p=require("rocketmq-client-nodejs/package.json"); if (p.version !== "1.0.8") process.exit(1)') 2>/dev/null; then
  echo "setup-node: installing $want into $dir" >&2
  rm -rf "$dir"
  mkdir -p "$dir"
  (cd "$dir" && echo '{"name":"compat-node","private":true}' > package.json \
    && npm install --silent --no-audit --no-fund "$want" >&2)
fi
echo "$dir/node_modules"
