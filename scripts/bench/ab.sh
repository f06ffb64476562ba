#!/usr/bin/env bash
# Before/after on one machine, alternated: `bench store --concurrency 1,64` and
# `bench produce --inflight 64` (standalone: master + synchronous slave) for two builds,
# ROUNDS times each in the order A B A B ..., then the median of each figure per build.
#
#   bash scripts/bench/ab.sh BEFORE_BINARY AFTER_BINARY [ROUNDS]   (default 3)
#
# Starts only its own processes (127.0.0.1, ports from 19876), stops them by process group,
# and keeps everything under one temporary directory that it removes at the end.
set -euo pipefail
A="${1:?before binary}"
B="${2:?after binary}"
ROUNDS="${3:-3}"
SECS="${AB_SECONDS:-10}"
work="$(mktemp -d "${TMPDIR:-/tmp}/sofamq-ab.XXXXXX")"
pgids=()
cleanup() {
    for p in "${pgids[@]}"; do kill -TERM -- "-$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
log() { echo "[ab] $*" >&2; }

run_one() { # run_one LABEL BINARY ROUND
    local label="$1" bin="$2" round="$3" dir="$work/$1-$3"
    mkdir -p "$dir"
    # bench store prints a table: conc, store msg/s, MiB/s, raw msg/s, MiB/s, ratio, ...
    "$bin" bench store --dir "$dir/store" --concurrency 1,64 --seconds 5 2>/dev/null |
        tee "$dir/store.txt" >&2
    setsid "$bin" standalone --data-dir "$dir/data" --port-base 19876 --topic bench:8 \
        >"$dir/server.log" 2>&1 </dev/null &
    local pid=$!
    pgids+=("$pid")
    for _ in $(seq 1 1200); do
        grep -q ready "$dir/server.log" 2>/dev/null && break
        kill -0 "$pid" 2>/dev/null || { tail -20 "$dir/server.log" >&2; return 1; }
        sleep 0.1
    done
    "$bin" bench produce --access-point 127.0.0.1:19876 --topic bench --size 1024 \
        --inflight 64 --seconds "$SECS" --json "$dir/produce.json" >&2
    kill -TERM -- "-$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    python3 - "$label" "$round" "$dir" <<'EOF' | tee -a "$work/rows.jsonl" >&2
import json, sys
label, rnd, d = sys.argv[1:]
s = {}
for line in open(f"{d}/store.txt"):
    f = line.split()
    if len(f) >= 6 and f[0].isdigit() and f[5].endswith("%"):
        s[f[0]] = {"store": float(f[1]), "raw": float(f[3]), "ratio": float(f[5].rstrip("%"))}
p = json.load(open(f"{d}/produce.json"))
print(json.dumps({"build": label, "round": int(rnd), "store": s, "produce_msgs_per_sec": round(p["msgs_per_sec"]),
                  "produce_p50_ms": p["latency_ms"]["p50"], "produce_p99_ms": p["latency_ms"]["p99"]}))
EOF
    rm -rf "$dir"
}

for r in $(seq 1 "$ROUNDS"); do
    log "round $r: before"; run_one before "$A" "$r"
    log "round $r: after"; run_one after "$B" "$r"
done
python3 - "$work/rows.jsonl" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def med(build, f):
    return statistics.median(f(r) for r in rows if r["build"] == build)
def store(level, key):
    return lambda r: r["store"][str(level)][key]
print("figure                          before      after   after/before")
for name, f in [
    ("store 1 concurrent (msg/s)", store(1, "store")),
    ("store 1: % of raw loop", store(1, "ratio")),
    ("store 64 concurrent (msg/s)", store(64, "store")),
    ("store 64: % of raw loop", store(64, "ratio")),
    ("produce 64 in flight (msg/s)", lambda r: r["produce_msgs_per_sec"]),
    ("produce p99 (ms)", lambda r: r["produce_p99_ms"]),
]:
    try:
        a, b = med("before", f), med("after", f)
        print(f"{name:30} {a:>10.1f} {b:>10.1f} {b / a:>10.3f}")
    except (KeyError, TypeError) as e:
        print(f"{name:30} (not in the JSON: {e})")
print(f"medians of {len(rows) // 2} alternated rounds")
EOF
