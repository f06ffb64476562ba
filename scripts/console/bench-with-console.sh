#!/usr/bin/env bash
# Does the console disturb the send path? Alternates `sofamq bench produce`
# (64 in flight, short runs) without the console, with only the console's server
# side at work (curl fetching what the charts page polls, every 2 s), with headless
# Chromium open on a blank page (the browser's own cost on the same cores), and with it open on the
# console's live-charts page (which polls every broker's /metrics every 2 s), 3
# runs each; while the console is open, curl checks /console/ answers.
# Usage: scripts/console/bench-with-console.sh [path/to/sofamq] [seconds per run]
set -euo pipefail
BIN=${1:-target/release/sofamq}
SECS=${2:-5}
BASE=${PORT_BASE:-23400}
DIR=$(mktemp -d)
"$BIN" standalone --data-dir "$DIR/data" --port-base "$BASE" > "$DIR/standalone.log" 2>&1 &
SA=$!
CHROME=""
cleanup() { [ -n "$CHROME" ] && kill "$CHROME" 2>/dev/null; kill "$SA" 2>/dev/null; wait 2>/dev/null; rm -rf "$DIR"; }
trap cleanup EXIT
for _ in $(seq 60); do grep -q "standalone ready" "$DIR/standalone.log" && break; sleep 1; done
AP=127.0.0.1:$BASE
URL=http://127.0.0.1:$((BASE + 5))/console/
"$BIN" bench produce --access-point "$AP" --topic bench --queues 8 --inflight 64 --seconds 2 --warmup 1 >/dev/null 2>&1
run() { # $1 = label
  "$BIN" bench produce --access-point "$AP" --topic bench --inflight 64 --seconds "$SECS" --warmup 1 --json "$DIR/r.json" >/dev/null 2>&1
  python3 -c "import json;d=json.load(open('$DIR/r.json'));print('$1', round(d.get('msgs_per_sec') or d.get('throughput_msgs_per_sec') or d['msgs_per_s']))"
}
browser() { # $1 = URL: headless Chromium on it, in the background
  chromium --headless=new --no-sandbox --disable-gpu --remote-debugging-port=0 "$1" >/dev/null 2>&1 &
  CHROME=$!
  sleep 3
}
for i in 1 2 3; do
  run without
  # The console's server side alone: what the charts page asks for, every 2 s, by curl.
  ( for _ in $(seq $(((SECS + 2) / 2))); do curl -s -o /dev/null "${URL}api/metrics"; sleep 2; done ) &
  POLL=$!
  run api-poll
  wait "$POLL" || true
  # The same Chromium on a blank page: what the browser itself costs on these shared
  # cores, apart from the console (in use, the browser runs on the operator's machine).
  browser about:blank
  run blank-browser
  kill "$CHROME"; wait "$CHROME" 2>/dev/null || true; CHROME=""
  browser "$URL#charts"
  ( for _ in $(seq $((SECS + 1))); do curl -s -o /dev/null -w "%{http_code} %{time_total}\n" "$URL" >> "$DIR/curl.log"; sleep 1; done ) &
  CURL=$!
  run with
  wait "$CURL" || true
  kill "$CHROME"; wait "$CHROME" 2>/dev/null || true; CHROME=""
done
echo "console answers during the 'with' runs (HTTP code, seconds):"
sort "$DIR/curl.log" | awk '{print $1}' | uniq -c
awk '{print $2}' "$DIR/curl.log" | sort -n | awk '{a[NR]=$1} END {print "curl /console/ time: median " a[int((NR+1)/2)] " s, max " a[NR] " s over " NR " requests"}'
