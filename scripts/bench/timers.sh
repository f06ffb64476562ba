#!/usr/bin/env bash
# Timer (DELAY) benchmarks against one local `sofamq standalone` (release build,
# master + synchronous slave, sync flush), loopback only. See docs/benchmarks.md
# ("Timers") for what each measures and the figures measured so far.
#
#   bash scripts/bench/timers.sh rate       # DELAY vs NORMAL send rate, same broker, alternating
#   bash scripts/bench/timers.sh lateness   # lateness of 1,000 timers/s falling due
#   bash scripts/bench/timers.sh pending    # RSS with 1,000,000 pending timers; restart times;
#                                           # then the same load as NORMAL messages (control)
#   bash scripts/bench/timers.sh all
#
# Environment (all optional):
#   BENCH_ROUNDS=3            rounds (rate: each round runs NORMAL then DELAY; lateness: runs)
#   BENCH_SECONDS=10          rate: measured seconds per run (each adds a 1 s warm-up)
#   BENCH_INFLIGHT=64         rate: concurrent sends
#   BENCH_SIZE=1024           rate: body bytes
#   BENCH_TIMER_RATE=1000     lateness: timers per second
#   BENCH_TIMER_DELAY=5s      lateness: delay of each timer
#   BENCH_TIMER_SECONDS=30    lateness: seconds of sending per run
#   BENCH_PENDING=1000000     pending: timers to leave pending
#   BENCH_NO_SLAVE=1          run standalone with --no-slave
#   BENCH_PORT_BASE=21876     first port (9 consecutive ports are used)
#   BENCH_OUT=DIR             results (default target/bench-timers/<timestamp>)
#   BENCH_KEEP=1              keep the scratch directory (broker data and logs)
#   SOFAMQ=path               use this sofamq binary instead of building it
#
# The only processes started here are the standalone brokers; each is stopped here by its
# pid (SIGTERM, or SIGKILL where the kill -9 restart is measured).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
WHAT="${1:-all}"
ROUNDS="${BENCH_ROUNDS:-3}"
SECS="${BENCH_SECONDS:-10}"
INFLIGHT="${BENCH_INFLIGHT:-64}"
SIZE="${BENCH_SIZE:-1024}"
TRATE="${BENCH_TIMER_RATE:-1000}"
TDELAY="${BENCH_TIMER_DELAY:-5s}"
TSECS="${BENCH_TIMER_SECONDS:-30}"
PENDING_N="${BENCH_PENDING:-1000000}"
BASE="${BENCH_PORT_BASE:-21876}"
AP="127.0.0.1:$BASE"
OUT="${BENCH_OUT:-$ROOT/target/bench-timers/$(date -u +%Y%m%dT%H%M%SZ)}"
SLAVE_ARGS=()
[[ "${BENCH_NO_SLAVE:-0}" == 1 ]] && SLAVE_ARGS=(--no-slave)

mkdir -p "$OUT"
WORK="$(mktemp -d /tmp/sofamq-timers.XXXXXX)"
BROKER_PID=""

log() { echo "[timers] $*" >&2; }

stop_broker() { # [SIGNAL]
    local sig="${1:-TERM}" pid="$BROKER_PID" i
    [[ -n "$pid" ]] || return 0
    BROKER_PID=""
    kill "-$sig" "$pid" 2>/dev/null || return 0
    for i in $(seq 1 300); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
        sleep 0.1
    done
    log "broker $pid did not stop on $sig in 30 s; KILL"
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_broker TERM
    if [[ "${BENCH_KEEP:-0}" == 1 ]]; then log "scratch kept in $WORK"; else rm -rf "$WORK"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if [[ -z "${SOFAMQ:-}" ]]; then
    log "building sofamq (release)"
    (cd "$ROOT" && cargo build --release -q --bin sofamq)
    SOFAMQ="${CARGO_TARGET_DIR:-$ROOT/target}/release/sofamq"
fi

now_ms() { date +%s%3N; }

# start_broker DATA_DIR LOG TOPIC...: starts standalone in the background, waits for its
# ready line; sets BROKER_PID and READY_MS (ms from start to the ready line).
start_broker() {
    local data="$1" logf="$2" t0 i p
    shift 2
    for p in $(seq "$BASE" $((BASE + 8))); do
        port_free "$p" || { log "port $p is in use (set BENCH_PORT_BASE)"; return 1; }
    done
    local topics=()
    for t in "$@"; do topics+=(--topic "$t"); done
    t0=$(now_ms)
    "$SOFAMQ" standalone --data-dir "$data" --port-base "$BASE" "${SLAVE_ARGS[@]}" "${topics[@]}" \
        >"$logf" 2>&1 </dev/null &
    BROKER_PID=$!
    for i in $(seq 1 1800); do
        if grep -q 'standalone ready' "$logf" 2>/dev/null; then
            READY_MS=$(($(now_ms) - t0))
            return 0
        fi
        kill -0 "$BROKER_PID" 2>/dev/null || { log "broker exited:"; tail -20 "$logf" >&2; return 1; }
        sleep 0.1
    done
    log "broker not ready after 180 s"; tail -20 "$logf" >&2; return 1
}

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
hwm_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }

median() { sort -g | awk '{a[NR]=$1} END {if (NR==0) print "nan"; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

# ------------------------------------------------------------------ rate
bench_rate() {
    local dir="$WORK/rate" r
    mkdir -p "$dir"
    start_broker "$dir/data" "$dir/broker.log" norm:8 dly:8:DELAY
    log "$(grep -m1 'standalone ready' "$dir/broker.log")"
    : >"$OUT/rate.jsonl"
    for r in $(seq 1 "$ROUNDS"); do
        log "round $r/$ROUNDS: NORMAL"
        "$SOFAMQ" bench produce --access-point "$AP" --topic norm --size "$SIZE" \
            --inflight "$INFLIGHT" --seconds "$SECS" --json "$dir/normal-$r.json" >&2
        log "round $r/$ROUNDS: DELAY (due in 1h)"
        "$SOFAMQ" bench produce --access-point "$AP" --topic dly --size "$SIZE" \
            --inflight "$INFLIGHT" --seconds "$SECS" --delay 1h --json "$dir/delay-$r.json" >&2
        for k in normal delay; do
            jq -c --arg k "$k" --argjson r "$r" \
                '{bench:"rate", kind:$k, round:$r, msgs_per_sec, p50:.latency_ms.p50, p99:.latency_ms.p99, failed}' \
                "$dir/$k-$r.json" | tee -a "$OUT/rate.jsonl" >&2
        done
    done
    "$SOFAMQ" admin pending --access-point "$AP" >&2 || true
    stop_broker TERM
    local n d
    n=$(jq -r 'select(.kind=="normal") | .msgs_per_sec' "$OUT/rate.jsonl" | median)
    d=$(jq -r 'select(.kind=="delay") | .msgs_per_sec' "$OUT/rate.jsonl" | median)
    printf 'rate: inflight %s, %s B, %s rounds of %s s: median NORMAL %.0f msg/s, DELAY %.0f msg/s, DELAY/NORMAL %.2f\n' \
        "$INFLIGHT" "$SIZE" "$ROUNDS" "$SECS" "$n" "$d" "$(echo "$d $n" | awk '{print $1/$2}')" | tee -a "$OUT/summary.txt"
}

# ------------------------------------------------------------------ lateness
bench_lateness() {
    local dir="$WORK/lateness" r
    mkdir -p "$dir"
    start_broker "$dir/data" "$dir/broker.log" late:8:DELAY
    log "$(grep -m1 'standalone ready' "$dir/broker.log")"
    : >"$OUT/lateness.jsonl"
    for r in $(seq 1 "$ROUNDS"); do
        log "run $r/$ROUNDS: $TRATE timers/s due $TDELAY after sending, $TSECS s"
        "$SOFAMQ" bench timers --access-point "$AP" --topic late --rate "$TRATE" \
            --delay "$TDELAY" --seconds "$TSECS" --size 128 --json "$dir/late-$r.json" >&2
        jq -c --argjson r "$r" '{bench:"lateness", round:$r, sent, received, missing, duplicates, early,
            recv_p50:.latency_ms.p50, recv_p99:.latency_ms.p99, recv_max:.latency_ms.max,
            store_p50:.store_lateness_ms.quantiles.p50, store_p99:.store_lateness_ms.quantiles.p99,
            store_max:.store_lateness_ms.quantiles.max, send_msgs_per_sec}' \
            "$dir/late-$r.json" | tee -a "$OUT/lateness.jsonl" >&2
    done
    stop_broker TERM
    local f m=()
    for f in recv_p50 recv_p99 recv_max store_p50 store_p99 store_max missing; do
        m+=("$f=$(jq -r ".$f" "$OUT/lateness.jsonl" | median)")
    done
    echo "lateness: $TRATE/s due $TDELAY later, $TSECS s, medians of $ROUNDS runs (ms): ${m[*]}" | tee -a "$OUT/summary.txt"
}

# ------------------------------------------------------------------ pending
pending_total() { # total pending timers of topic pend, or empty when admin does not answer
    "$SOFAMQ" admin pending --access-point "$AP" --topic pend --json 2>/dev/null |
        jq -r '[.. | objects | select(has("pending_timers")) | .pending_timers] | add // 0' 2>/dev/null
}

# wait_served WANT: after a (re)start, ms until admin pending shows WANT and a send succeeds.
wait_served() {
    local want="$1" t0 i n="" pend_ms=""
    t0=$(now_ms)
    for i in $(seq 1 3000); do
        n="$(pending_total || true)"
        if [[ "$n" == "$want" ]]; then pend_ms=$(($(now_ms) - t0)); break; fi
        sleep 0.1
    done
    [[ -n "$pend_ms" ]] || { log "pending never reached $want (last: $n)"; return 1; }
    for i in $(seq 1 300); do
        if "$SOFAMQ" produce --access-point "$AP" --topic probe --size 64 --max-attempts 1 >/dev/null 2>&1; then
            SERVED_PENDING_MS=$pend_ms
            SERVED_SEND_MS=$(($(now_ms) - t0))
            return 0
        fi
        sleep 0.1
    done
    log "no send succeeded after the restart"; return 1
}

bench_pending() {
    local dir="$WORK/pending" idle rss hwm t0 send_ms n i
    mkdir -p "$dir"
    local topics=(pend:8:DELAY probe:1)
    start_broker "$dir/data" "$dir/broker-1.log" "${topics[@]}"
    log "$(grep -m1 'standalone ready' "$dir/broker-1.log")"
    log "fresh start: ready line ${READY_MS} ms"
    log "standalone is one process (namesrv, controller, master and slave): pid $BROKER_PID"
    sleep 5
    idle=$(rss_kib "$BROKER_PID")
    log "idle RSS ${idle} KiB"
    t0=$(now_ms)
    "$SOFAMQ" bench produce --access-point "$AP" --topic pend --size 64 --count "$PENDING_N" \
        --batch 32 --inflight 64 --delay 1h --delay-spread 1h --json "$dir/load.json" >&2
    send_ms=$(($(now_ms) - t0))
    # `bench produce` sends one warm-up message (a timer too) before the counted ones.
    local want=$((PENDING_N + 1))
    for i in $(seq 1 1200); do
        n="$(pending_total || true)"
        [[ "$n" == "$want" ]] && break
        sleep 0.5
    done
    [[ "$n" == "$want" ]] || { log "pending is $n, not $want"; return 1; }
    local indexed_ms=$(($(now_ms) - t0))
    sleep 10
    rss=$(rss_kib "$BROKER_PID")
    hwm=$(hwm_kib "$BROKER_PID")
    "$SOFAMQ" admin pending --access-point "$AP" >&2
    local du_log du_timer
    du_log=$(du -sk "$dir/data" | cut -f1)
    du_timer=$(du -skc "$dir"/data/*/timer 2>/dev/null | tail -1 | cut -f1)
    {
        echo "pending: $PENDING_N timers (64 B, due in 1-2 h): sent in ${send_ms} ms ($(jq -r '.msgs_per_sec|floor' "$dir/load.json") msg/s), all indexed ${indexed_ms} ms after the start"
        echo "pending: RSS idle ${idle} KiB, with $want pending ${rss} KiB (peak ${hwm} KiB): growth $(((rss - idle) / 1024)) MiB; data dir ${du_log} KiB, timer index ${du_timer} KiB"
    } | tee -a "$OUT/summary.txt"

    stop_broker TERM
    start_broker "$dir/data" "$dir/broker-2.log" "${topics[@]}"
    wait_served "$want"
    sleep 5
    echo "restart after SIGTERM: ready line ${READY_MS} ms; pending=$want ${SERVED_PENDING_MS} ms later; a send OK ${SERVED_SEND_MS} ms later; RSS 5 s later $(rss_kib "$BROKER_PID") KiB" | tee -a "$OUT/summary.txt"

    stop_broker KILL
    start_broker "$dir/data" "$dir/broker-3.log" "${topics[@]}"
    wait_served "$want"
    sleep 5
    echo "restart after SIGKILL: ready line ${READY_MS} ms; pending=$want ${SERVED_PENDING_MS} ms later; a send OK ${SERVED_SEND_MS} ms later; RSS 5 s later $(rss_kib "$BROKER_PID") KiB" | tee -a "$OUT/summary.txt"
    stop_broker TERM
}

# The same load as `pending`, as NORMAL messages: what the send path and the store cost in
# RSS without any timer.
bench_pending_control() {
    local dir="$WORK/control" idle rss hwm
    mkdir -p "$dir"
    start_broker "$dir/data" "$dir/broker.log" norm:8
    sleep 5
    idle=$(rss_kib "$BROKER_PID")
    "$SOFAMQ" bench produce --access-point "$AP" --topic norm --size 64 --count "$PENDING_N" \
        --batch 32 --inflight 64 --json "$dir/load.json" >&2
    sleep 10
    rss=$(rss_kib "$BROKER_PID")
    hwm=$(hwm_kib "$BROKER_PID")
    echo "control: $PENDING_N NORMAL messages (64 B, same load): RSS idle ${idle} KiB, after ${rss} KiB (peak ${hwm} KiB): growth $(((rss - idle) / 1024)) MiB" | tee -a "$OUT/summary.txt"
    stop_broker TERM
    start_broker "$dir/data" "$dir/broker-2.log" norm:8
    sleep 5
    echo "control: restart after SIGTERM: ready line ${READY_MS} ms; RSS $(rss_kib "$BROKER_PID") KiB" | tee -a "$OUT/summary.txt"
    stop_broker TERM
}

case "$WHAT" in
rate) bench_rate ;;
lateness) bench_lateness ;;
pending) bench_pending; bench_pending_control ;;
all) bench_rate; bench_lateness; bench_pending; bench_pending_control ;;
*) echo "usage: $0 rate|lateness|pending|all" >&2; exit 2 ;;
esac
log "results in $OUT"
cat "$OUT/summary.txt"
