#!/usr/bin/env bash
# Instructions per message on the master broker's send path, counted by valgrind's callgrind
# (docs/benchmarks.md, "callgrind"). Instruction counts hardly move with the machine's load,
# so two binaries can be compared on a busy, shared machine where wall-clock figures cannot.
#
#   bash scripts/bench/callgrind.sh BINARY MODE
#
#   BINARY  a `sofamq` release build (with line tables, the workspace's release profile)
#   MODE    single: `bench produce --inflight 64 --batch 1`
#           batch:  `bench produce --inflight 64 --batch 32`
#
# It starts, each as its own process, a namesrv, the master broker under
# `valgrind --tool=callgrind` and a slave broker (sync flush on both, the slave in sync, so
# every send waits for both fdatasyncs as in `standalone`), then sends COUNT 1 KiB messages.
# Instrumentation is switched on (`--instr-atstart=no`, then `callgrind_control -i on`) only once the slave is in sync and
# switched off before the load generator stops, so start-up and shutdown are left out;
# the figure is the master's Ir over that interval / the records its store appended in it
# (`sofamq_store_records_total` on its /metrics, read before and after), with the
# SendMessage requests it answered (`sofamq_send_latency_seconds_count`). The slave is not
# counted unless CALLGRIND_SLAVE=1 (then it runs under callgrind too and its Ir per
# message is printed on its own line).
#
# Environment (all optional):
#   COUNT=20000        messages to send
#   INFLIGHT=64        calls in flight
#   PORT_BASE=39876    first of 8 ports on 127.0.0.1
#   TOP=25             functions (self cost) listed from callgrind_annotate
#   OUT=DIR            results (default target/bench-callgrind/<timestamp>-<mode>)
#   CALLGRIND_SLAVE=1  count the slave as well
#
# Everything listens on 127.0.0.1; every process it starts is stopped here by its PID.
set -euo pipefail

if [ $# -ne 2 ]; then
    sed -n '2,30p' "$0" >&2
    exit 2
fi
BIN="$(realpath "$1")"
MODE="$2"
case "$MODE" in
single) BATCH=1 ;;
batch) BATCH=32 ;;
*) echo "MODE must be single or batch, not $MODE" >&2; exit 2 ;;
esac
[ -x "$BIN" ] || { echo "$BIN is not an executable" >&2; exit 2; }
for t in valgrind callgrind_annotate callgrind_control curl python3; do
    command -v "$t" >/dev/null || { echo "needs $t (apt-get install valgrind curl python3)" >&2; exit 2; }
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
COUNT="${COUNT:-20000}"
INFLIGHT="${INFLIGHT:-64}"
P="${PORT_BASE:-39876}"
TOP="${TOP:-25}"
OUT="${OUT:-$ROOT/target/bench-callgrind/$(date -u +%Y%m%dT%H%M%SZ)-$MODE}"
mkdir -p "$OUT"
OUT="$(realpath "$OUT")"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/sofamq-callgrind.XXXXXX")"
PIDS=()
log() { echo "[callgrind] $*" >&2; }

NS="127.0.0.1:$P"
M_GRPC="127.0.0.1:$((P + 1))"; M_REPL="127.0.0.1:$((P + 2))"; M_HTTP="127.0.0.1:$((P + 3))"
S_GRPC="127.0.0.1:$((P + 4))"; S_REPL="127.0.0.1:$((P + 5))"; S_HTTP="127.0.0.1:$((P + 6))"
NS_HTTP="127.0.0.1:$((P + 7))"

stop_pid() {
    local pid="$1" i
    kill -TERM "$pid" 2>/dev/null || return 0
    # A process under valgrind writes its profile on exit: give it time.
    for i in $(seq 1 600); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
        sleep 0.1
    done
    log "pid $pid did not stop on TERM in 60 s; KILL"
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    local i
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do stop_pid "${PIDS[$i]}"; done
    rm -rf "$WORK"
}
trap cleanup EXIT

# wait_line FILE REGEX SECONDS PID
wait_line() {
    local i
    for i in $(seq 1 $(($3 * 10))); do
        grep -Eq "$2" "$1" 2>/dev/null && return 0
        kill -0 "$4" 2>/dev/null || { tail -20 "$1" >&2; log "process $4 exited"; exit 1; }
        sleep 0.1
    done
    tail -20 "$1" >&2
    log "no /$2/ in $1 after $3 s"
    exit 1
}

records() { # the master's records appended so far
    curl -sf "http://$M_HTTP/metrics" | awk '/^sofamq_store_records_total[{ ]/ { printf "%d\n", $NF }'
}
requests() { # SendMessage requests the master answered so far
    curl -sf "http://$M_HTTP/metrics" | awk '/^sofamq_send_latency_seconds_count[{ ]/ { printf "%d\n", $NF }'
}

VG=(valgrind --tool=callgrind --fair-sched=yes --instr-atstart=no --dump-instr=no)

"$BIN" namesrv --listen "$NS" --http-listen "$NS_HTTP" >"$OUT/namesrv.log" 2>&1 &
PIDS+=($!)
wait_line "$OUT/namesrv.log" "namesrv ready" 30 "${PIDS[-1]}"

"${VG[@]}" --callgrind-out-file="$OUT/callgrind.out.master" \
    "$BIN" broker --listen "$M_GRPC" --replication-listen "$M_REPL" --http-listen "$M_HTTP" \
    --namesrv "$NS" --data-dir "$WORK/master" --broker-name broker-a --broker-id 0 \
    --role master --min-insync-replicas 2 --topic bench:8 >"$OUT/master.log" 2>&1 &
MPID=$!
PIDS+=("$MPID")
wait_line "$OUT/master.log" "broker broker-a ready" 300 "$MPID"

SLAVE=("$BIN")
if [ "${CALLGRIND_SLAVE:-0}" = 1 ]; then
    SLAVE=("${VG[@]}" --callgrind-out-file="$OUT/callgrind.out.slave" "$BIN")
fi
"${SLAVE[@]}" broker --listen "$S_GRPC" --replication-listen "$S_REPL" --http-listen "$S_HTTP" \
    --namesrv "$NS" --data-dir "$WORK/slave" --broker-name broker-a --broker-id 1 \
    --role slave --master-addr "$M_REPL" >"$OUT/slave.log" 2>&1 &
SPID=$!
PIDS+=("$SPID")
wait_line "$OUT/slave.log" "broker broker-a ready" 300 "$SPID"
# Under valgrind (and on a busy machine) the slave may take a while to catch up: 5 minutes.
for i in $(seq 1 3000); do
    curl -sf "http://$M_HTTP/health" | grep -q '"in_sync_slaves":1' && break
    sleep 0.1
done
curl -sf "http://$M_HTTP/health" | grep -q '"in_sync_slaves":1' || { log "the slave never got in sync"; exit 1; }

before="$(records)"
req_before="$(requests)"
callgrind_control -i on "$MPID" >/dev/null 2>&1
[ "${CALLGRIND_SLAVE:-0}" = 1 ] && callgrind_control -i on "$SPID" >/dev/null 2>&1
log "$MODE: $COUNT messages of 1024 B, $INFLIGHT in flight, batch $BATCH"
"$BIN" bench produce --access-point "$NS" --topic bench --size 1024 --inflight "$INFLIGHT" \
    --batch "$BATCH" --count "$COUNT" --json "$OUT/produce.json" >"$OUT/produce.txt" 2>&1
callgrind_control -i off "$MPID" >/dev/null 2>&1
[ "${CALLGRIND_SLAVE:-0}" = 1 ] && callgrind_control -i off "$SPID" >/dev/null 2>&1
after="$(records)"
stored=$((after - before))
reqs=$(($(requests) - req_before))

for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do stop_pid "${PIDS[$i]}"; done
PIDS=()

per_msg() { # per_msg OUTFILE: Ir per stored record
    local ir
    ir="$(awk '/^totals:/ { print $2 }' "$1")"
    python3 -c "import sys; print(f'{int(sys.argv[1]):,} Ir / {int(sys.argv[2]):,} messages = {int(sys.argv[1]) / int(sys.argv[2]):,.0f} Ir per message')" "$ir" "$stored"
}
callgrind_annotate --inclusive=no "$OUT/callgrind.out.master" >"$OUT/annotate-self.txt" 2>/dev/null || true
callgrind_annotate --inclusive=yes "$OUT/callgrind.out.master" >"$OUT/annotate-inclusive.txt" 2>/dev/null || true
failed="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("failed", 0))' "$OUT/produce.json")"
{
    echo "binary: $BIN"
    echo "mode: $MODE (--inflight $INFLIGHT --batch $BATCH --count $COUNT --size 1024); failed sends: $failed"
    # The SDK coalesces concurrent sends into one request, so requests vary run to run
    # (more with batch 1): Ir per message moves with messages per request.
    echo "requests: $reqs SendMessage requests, $(python3 -c "import sys; print(f'{int(sys.argv[1]) / max(1, int(sys.argv[2])):.1f}')" "$stored" "$reqs") messages per request"
    echo "master: $(per_msg "$OUT/callgrind.out.master")"
    if [ "${CALLGRIND_SLAVE:-0}" = 1 ]; then
        echo "slave:  $(per_msg "$OUT/callgrind.out.slave")"
    fi
    echo
    echo "top $TOP functions of the master by self cost (callgrind_annotate --inclusive=no):"
    grep -E '^ *[0-9,]+ +\(' "$OUT/annotate-self.txt" | awk -v n="$TOP" 'NR <= n + 1'
} | tee "$OUT/summary.txt"
log "results in $OUT"
