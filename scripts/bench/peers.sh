#!/usr/bin/env bash
# Side-by-side benchmark: SofaMQ against NATS JetStream and RabbitMQ on this
# machine, loopback only, every publish confirmed only after an fsync.
# See docs/benchmarks.md for what each system is configured as.
#
#   sudo bash scripts/bench/peers.sh            # needs root for apt-get
#
# Environment (all optional):
#   BENCH_SECONDS=10          measured seconds per run (each run adds a 1 s warm-up)
#   BENCH_SIZE=1024           message body bytes
#   BENCH_INFLIGHT="1 64"     in-flight windows to run
#   BENCH_SYSTEMS="sofamq nats rabbitmq"
#   BENCH_NATS_REPLICAS="1 3" JetStream: 1 = one server, 3 = a 3-node cluster
#   BENCH_RABBIT_NODES="1 3"  RabbitMQ: nodes in the cluster (the quorum queue spans all)
#   BENCH_SOFAMQ_BATCH=32     extra SofaMQ run with send_batch of this size (0 = skip)
#   BENCH_FSYNC_COUNT=3000    appends of the raw fdatasync loop run before SofaMQ each round
#   BENCH_ROUNDS=1            rounds of every run; the table shows per-config medians
#   BENCH_SKIP_INSTALL=1      do not run apt-get
#   BENCH_OUT=DIR             results (default target/bench-peers/<timestamp>)
#   BENCH_KEEP=1              keep the scratch directory (server data and logs)
#
# Everything listens on 127.0.0.1 only. Every server process is started here in
# its own process group (setsid) and stopped here, by that id, on exit or failure.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SECONDS_PER_RUN="${BENCH_SECONDS:-10}"
SIZE="${BENCH_SIZE:-1024}"
INFLIGHTS="${BENCH_INFLIGHT:-1 64}"
SYSTEMS="${BENCH_SYSTEMS:-sofamq nats rabbitmq}"
NATS_REPLICAS="${BENCH_NATS_REPLICAS:-1 3}"
RABBIT_NODES="${BENCH_RABBIT_NODES:-1 3}"
SOFAMQ_BATCH="${BENCH_SOFAMQ_BATCH:-32}"
FSYNC_COUNT="${BENCH_FSYNC_COUNT:-3000}"
ROUNDS="${BENCH_ROUNDS:-1}"
ROUND=1
OUT="${BENCH_OUT:-$ROOT/target/bench-peers/$(date -u +%Y%m%dT%H%M%SZ)}"
CACHE="$ROOT/target/bench-peers/cache"
# NATS >= 2.10 is needed for `sync_interval: always`; Debian 12 ships 2.9.10.
NATS_MIN_MINOR=10

mkdir -p "$OUT" "$CACHE"
RESULTS="$OUT/results.jsonl"
: >"$RESULTS"
WORK="$(mktemp -d /tmp/sofamq-peers.XXXXXX)"
PGIDS=()

log() { echo "[peers] $*" >&2; }

# Stops one process group we started: TERM, then KILL after 15 s.
stop_group() {
    local pg="$1" i
    kill -TERM -- "-$pg" 2>/dev/null || return 0
    for i in $(seq 1 150); do
        kill -0 -- "-$pg" 2>/dev/null || return 0
        sleep 0.1
    done
    log "process group $pg did not stop on TERM; KILL"
    kill -KILL -- "-$pg" 2>/dev/null || true
}

stop_all() {
    local i
    for ((i = ${#PGIDS[@]} - 1; i >= 0; i--)); do
        stop_group "${PGIDS[$i]}"
    done
    PGIDS=()
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_all
    if [[ "${BENCH_KEEP:-0}" == 1 ]]; then
        log "scratch kept in $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start LOGFILE CMD...: runs CMD in a new session (its pid is its process group
# id); sets STARTED to that pid. (Not run in $(...): PGIDS must be updated here.)
start() {
    local logf="$1"
    shift
    setsid "$@" >"$logf" 2>&1 </dev/null &
    STARTED=$!
    PGIDS+=("$STARTED")
}

# wait_for FILE REGEX SECONDS [PID]: waits for a line in a log file.
wait_for() {
    local f="$1" re="$2" secs="$3" pid="${4:-}" i
    for i in $(seq 1 $((secs * 10))); do
        if grep -Eq "$re" "$f" 2>/dev/null; then return 0; fi
        if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then
            log "process $pid exited early; its log ($f):"
            tail -20 "$f" >&2
            return 1
        fi
        sleep 0.1
    done
    log "timed out after ${secs}s waiting for /$re/ in $f:"
    tail -20 "$f" >&2
    return 1
}

# Fails if any process we started listens on anything but loopback.
check_loopback() {
    local pg pids=() line bad=0
    for pg in "${PGIDS[@]}"; do
        mapfile -t -O "${#pids[@]}" pids < <(pgrep -g "$pg" || true)
    done
    ((${#pids[@]})) || return 0
    local re="pid=($(IFS='|'; echo "${pids[*]}")),"
    while read -r line; do
        [[ "$line" =~ $re ]] || continue
        local addr
        addr="$(awk '{print $4}' <<<"$line")"
        case "$addr" in
        127.*:* | "[::1]:"*) ;;
        *) log "NOT LOOPBACK: $line"; bad=1 ;;
        esac
    done < <(ss -Htlnp)
    ((bad == 0)) || { log "a started server listens beyond loopback; stopping"; exit 1; }
}

port_free() { ! ss -Htln "sport = :$1" | grep -q .; }

# ---------------------------------------------------------------- install
want_nats=0; want_rabbit=0; want_sofamq=0
for s in $SYSTEMS; do
    case "$s" in
    nats) want_nats=1 ;;
    rabbitmq) want_rabbit=1 ;;
    sofamq) want_sofamq=1 ;;
    *) log "unknown system $s"; exit 2 ;;
    esac
done

if [[ "${BENCH_SKIP_INSTALL:-0}" != 1 ]] && ((want_nats + want_rabbit > 0)); then
    pkgs=()
    ((want_nats)) && ! command -v nats-server >/dev/null && pkgs+=(nats-server)
    ((want_rabbit)) && [[ ! -x /usr/lib/rabbitmq/bin/rabbitmq-server ]] && pkgs+=(rabbitmq-server)
    if ((${#pkgs[@]})); then
        # Keep the packages' maintainer scripts from starting system services
        # (we start our own, on loopback): a policy-rc.d that forbids it, only
        # while installing and only if the machine has none.
        tmp_policy=0
        if [[ ! -e /usr/sbin/policy-rc.d ]]; then
            printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
            chmod +x /usr/sbin/policy-rc.d
            tmp_policy=1
        fi
        log "apt-get install ${pkgs[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >&2
        ((tmp_policy)) && rm -f /usr/sbin/policy-rc.d
    fi
fi

NATS_BIN=""
if ((want_nats)); then
    NATS_BIN="$(command -v nats-server)"
    minor="$("$NATS_BIN" --version | sed -E 's/.*v2\.([0-9]+)\..*/\1/')"
    if ((minor < NATS_MIN_MINOR)); then
        # Debian 12's nats-server (2.9) has no `sync_interval`: it fsyncs every
        # 2 minutes, which is not the durability we compare at. Debian 13 ships
        # 2.10, a static binary: fetch its .deb with apt (a private package list,
        # the system's sources untouched) and unpack it under target/.
        NATS_BIN="$CACHE/nats-server-deb13/usr/sbin/nats-server"
        if [[ ! -x "$NATS_BIN" ]]; then
            log "nats-server $("$(command -v nats-server)" --version) lacks sync_interval; fetching Debian 13's nats-server"
            apt_dir="$CACHE/apt-deb13"
            mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
            echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" >"$apt_dir/sources.list"
            apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
                -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache"
                -o APT::Sandbox::User=root)
            apt-get "${apt_opts[@]}" update -qq
            (cd "$apt_dir" && apt-get "${apt_opts[@]}" download nats-server >&2)
            dpkg-deb -x "$(ls -t "$apt_dir"/nats-server_*.deb | head -1)" "$CACHE/nats-server-deb13"
        fi
    fi
    log "nats-server: $("$NATS_BIN" --version)"
fi

# ---------------------------------------------------------------- build
PEERBENCH=""
if ((want_nats + want_rabbit > 0)); then
    log "building peerbench (bench/peers, release)"
    (cd "$ROOT/bench/peers" && CARGO_TARGET_DIR="$ROOT/bench/peers/target" cargo build --release -q)
    PEERBENCH="$ROOT/bench/peers/target/release/peerbench"
fi
SOFAMQ=""
if ((want_sofamq)); then
    log "building sofamq (release)"
    (cd "$ROOT" && cargo build --release -q --bin sofamq)
    SOFAMQ="${CARGO_TARGET_DIR:-$ROOT/target}/release/sofamq"
fi

# ---------------------------------------------------------------- runs
record() { # one JSON line on stdout of "$@" -> results
    local line
    line="$("$@" | tail -1)"
    echo "$line" | sed "s/^{/{\"round\":$ROUND,/" | tee -a "$RESULTS" >&2
}

run_sofamq() {
    local base="" p ok ready replicas dir
    for p in 19876 23876 27876 31876 35876; do
        ok=1
        for i in 0 1 2 3 4 5 6 7; do port_free $((p + i)) || ok=0; done
        if ((ok)); then base=$p; break; fi
    done
    [[ -n "$base" ]] || { log "no free port block for sofamq"; return 1; }
    dir="$WORK/sofamq"
    mkdir -p "$dir"
    # The floors a 1-in-flight send is set beside, in the directory that will hold the
    # broker's data (same disk, same round): the disk's (raw SIZE-byte append + fdatasync,
    # one at a time) and the machine's under a replicated send (`bench floor`: client,
    # master and slave threads over loopback, each copy appended and fdatasynced), and the
    # raw loop into a zeroed file (fsync0: how SofaMQ's own writes land, overwriting the
    # zeros its store fills ahead).
    local what
    for floor in fsync fsync0 floor; do
        log "raw $floor loop: $FSYNC_COUNT of $SIZE B in $dir"
        case $floor in
            fsync0) what=(fsync --zeroed) ;;
            *) what=("$floor") ;;
        esac
        "$SOFAMQ" bench "${what[@]}" --dir "$dir" --size "$SIZE" --count "$FSYNC_COUNT" \
            --json "$dir/$floor.json" >&2
        python3 - "$dir/$floor.json" "$ROUND" "raw-$floor" <<'EOF' | tee -a "$RESULTS" >&2
import json, sys
f, rnd, system = sys.argv[1:]
d = json.load(open(f))
print(json.dumps({"round": int(rnd), "system": system, "size": d["size"],
                  "iterations": d["iterations"], "p50_ms": d["p50_ms"], "p99_ms": d["p99_ms"]}))
EOF
    done
    local pid
    start "$dir/server.log" "$SOFAMQ" standalone --data-dir "$dir/data" --port-base "$base" --topic bench:8
    pid=$STARTED
    wait_for "$dir/server.log" 'ready' 120 "$pid"
    ready="$(grep -m1 ready "$dir/server.log")"
    log "$ready"
    check_loopback
    # The ready line says whether standalone runs a slave (2 replicas) or not.
    if grep -q 'no slave' <<<"$ready"; then replicas=1
    elif grep -q 'slave' <<<"$ready"; then replicas=2
    else replicas=1; fi
    local inf batch runs=()
    for inf in $INFLIGHTS; do runs+=("$inf:1"); done
    ((SOFAMQ_BATCH > 1)) && runs+=("64:$SOFAMQ_BATCH")
    for r in "${runs[@]}"; do
        inf="${r%%:*}"; batch="${r##*:}"
        log "sofamq: $inf in flight, batch $batch"
        # The batch run is also compared with a raw loop writing its bytes twice (the
        # master's copy and the slave's) beside the broker's data.
        # Its batches are the broker's own mean fdatasync batch (the master's /metrics).
        local raw=() m_http
        m_http="$(sed -n 's/.*http namesrv [^ ]* \(brokers\|master\) \([^ ;)]*\).*/\2/p' <<<"$ready")"
        ((batch > 1)) && raw=(--raw-dir "$dir" --raw-metrics "$m_http")
        "$SOFAMQ" bench produce --access-point "127.0.0.1:$base" --topic bench --size "$SIZE" \
            --inflight "$inf" --batch "$batch" --seconds "$SECONDS_PER_RUN" \
            --json "$dir/out-$inf-$batch.json" "${raw[@]}" >&2
        python3 - "$dir/out-$inf-$batch.json" "$replicas" "$inf" "$batch" "$SIZE" "$ROUND" <<'EOF' | tee -a "$RESULTS" >&2
import json, sys
f, replicas, inf, batch, size, rnd = sys.argv[1:]
d = json.load(open(f))
row = {"round": int(rnd), "system": "sofamq", "replicas": int(replicas), "inflight": int(inf),
       "batch": int(batch), "size": int(size),
       "msgs_per_sec": round(d["msgs_per_sec"]), "p50_ms": d["latency_ms"]["p50"],
       "p99_ms": d["latency_ms"]["p99"], "failed": d.get("failed", 0)}
if "raw_two_copy" in d:
    row["raw2_msgs_per_sec"] = round(d["raw_two_copy"]["msgs_per_sec"])
    row["raw2_ratio"] = d["raw_two_copy"]["ratio"]
if "cpu" in d:
    row["cpu_busy"] = d["cpu"]["busy"]
print(json.dumps(row))
EOF
    done
    stop_all
}

nats_conf() { # nats_conf INDEX CLUSTER_SIZE
    local i="$1" n="$2" d="$WORK/nats$n-$1" routes="" j
    mkdir -p "$d"
    {
        echo "server_name: n$i"
        echo "listen: 127.0.0.1:$((14221 + i))"
        echo "jetstream { store_dir: \"$d/js\", sync_interval: always }"
        if ((n > 1)); then
            for j in $(seq 1 "$n"); do routes+="${routes:+, }\"nats-route://127.0.0.1:$((16221 + j))\""; done
            echo "cluster { name: bench, listen: \"127.0.0.1:$((16221 + i))\", routes: [ $routes ] }"
        fi
    } >"$d/nats.conf"
    echo "$d"
}

run_nats() {
    local n inf i d pid
    for n in $NATS_REPLICAS; do
        local pids=()
        for i in $(seq 1 "$n"); do
            port_free $((14221 + i)) && port_free $((16221 + i)) || { log "nats ports busy"; return 1; }
            d="$(nats_conf "$i" "$n")"
            start "$d/server.log" "$NATS_BIN" -c "$d/nats.conf"
            pids+=("$STARTED")
        done
        for i in $(seq 1 "$n"); do
            wait_for "$WORK/nats$n-$i/server.log" 'Server is ready' 60 "${pids[$((i - 1))]}"
        done
        check_loopback
        for inf in $INFLIGHTS; do
            log "nats: $n replicas, $inf in flight"
            record "$PEERBENCH" nats --url "nats://127.0.0.1:14222" --stream "BENCH$n" \
                --replicas "$n" --inflight "$inf" --size "$SIZE" --seconds "$SECONDS_PER_RUN"
        done
        stop_all
    done
}

rabbit_env() { # rabbit_env INDEX CLUSTER_SIZE -> env assignments for node INDEX
    local i="$1" n="$2" d="$WORK/rabbit$n-$1"
    echo HOME="$WORK/rabbit-home$n" \
        RABBITMQ_NODENAME="rabbit$i@localhost" \
        RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
        RABBITMQ_NODE_PORT=$((15671 + i)) \
        RABBITMQ_DIST_PORT=$((25671 + i)) \
        RABBITMQ_CONFIG_FILE="$d/rabbitmq.conf" \
        RABBITMQ_ENABLED_PLUGINS_FILE="$d/enabled_plugins" \
        RABBITMQ_MNESIA_BASE="$d/mnesia" \
        RABBITMQ_LOG_BASE="$d/log" \
        RABBITMQ_PID_FILE="$d/rabbit.pid" \
        RABBITMQ_CONF_ENV_FILE=/dev/null \
        ERL_EPMD_ADDRESS=127.0.0.1 \
        ERL_EPMD_PORT=14369
}

# Erlang distribution on loopback only (server nodes and the CLI's own node).
ERL_LOOPBACK='-kernel inet_dist_use_interface {127,0,0,1}'

rabbitctl() { # rabbitctl INDEX CLUSTER_SIZE ARGS...
    local i="$1" n="$2"
    shift 2
    env $(rabbit_env "$i" "$n") RABBITMQ_CTL_ERL_ARGS="$ERL_LOOPBACK" \
        /usr/lib/rabbitmq/bin/rabbitmqctl -n "rabbit$i@localhost" "$@"
}

run_rabbitmq() {
    local n i d pid inf
    for n in $RABBIT_NODES; do
        mkdir -p "$WORK/rabbit-home$n"
        # One cookie for the cluster and its CLI, in our own HOME.
        echo "sofamqbench$RANDOM$RANDOM" >"$WORK/rabbit-home$n/.erlang.cookie"
        chmod 400 "$WORK/rabbit-home$n/.erlang.cookie"
        port_free 14369 || { log "epmd port 14369 busy"; return 1; }
        # Our own epmd, in the foreground, on loopback, on a port of its own.
        start "$WORK/epmd$n.log" env ERL_EPMD_ADDRESS=127.0.0.1 epmd -port 14369
        sleep 0.3
        for i in $(seq 1 "$n"); do
            d="$WORK/rabbit$n-$i"
            mkdir -p "$d/log" "$d/mnesia"
            port_free $((15671 + i)) && port_free $((25671 + i)) || { log "rabbitmq ports busy"; return 1; }
            echo "[]." >"$d/enabled_plugins"
            cat >"$d/rabbitmq.conf" <<EOF
listeners.tcp.1 = 127.0.0.1:$((15671 + i))
disk_free_limit.absolute = 100MB
log.console = false
log.file.level = warning
EOF
            start "$d/server.log" env $(rabbit_env "$i" "$n") \
                RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="$ERL_LOOPBACK" \
                /usr/lib/rabbitmq/bin/rabbitmq-server
            # await_startup fails at once while the Erlang VM is not up yet: retry.
            local t up=0
            for t in $(seq 1 60); do
                if rabbitctl "$i" "$n" await_startup --timeout 30 >"$d/await.log" 2>&1; then up=1; break; fi
                kill -0 "$STARTED" 2>/dev/null || break
                sleep 1
            done
            ((up)) || { log "rabbit$i did not start:"; tail -20 "$d/await.log" "$d/server.log" >&2; return 1; }
        done
        for i in $(seq 2 "$n"); do
            rabbitctl "$i" "$n" stop_app >/dev/null
            rabbitctl "$i" "$n" join_cluster rabbit1@localhost >/dev/null
            rabbitctl "$i" "$n" start_app >/dev/null
        done
        log "rabbitmq: $(rabbitctl 1 "$n" cluster_status --formatter json 2>/dev/null |
            python3 -c 'import json,sys; print("running nodes", json.load(sys.stdin)["running_nodes"])')"
        check_loopback
        for inf in $INFLIGHTS; do
            log "rabbitmq: $n nodes, $inf in flight"
            record "$PEERBENCH" rabbitmq --url "amqp://guest:guest@127.0.0.1:15672/%2f" \
                --queue "bench$n" --replicas "$n" --inflight "$inf" --size "$SIZE" \
                --seconds "$SECONDS_PER_RUN"
        done
        for i in $(seq "$n" -1 1); do rabbitctl "$i" "$n" stop >/dev/null 2>&1 || true; done
        stop_all
    done
}

START_DATE="$(date -u '+%Y-%m-%d %H:%M UTC')"
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
    log "round $ROUND of $ROUNDS"
    if ((want_sofamq)); then run_sofamq; fi
    if ((want_nats)); then run_nats; fi
    if ((want_rabbit)); then run_rabbitmq; fi
done
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"

# ---------------------------------------------------------------- table
{
    echo "- Run: $START_DATE on $(nproc) cores; ${SIZE} B messages, ${SECONDS_PER_RUN} s per run after a 1 s warm-up; $ROUNDS round(s), medians shown."
    echo "- Load average (1/5/15 min) before: $LOAD_BEFORE; after: $LOAD_AFTER."
    [[ -n "$NATS_BIN" ]] && echo "- nats-server $("$NATS_BIN" --version | sed 's/nats-server: //')"
    ((want_rabbit)) && echo "- rabbitmq-server $(dpkg-query -W -f '${Version}' rabbitmq-server), erlang $(dpkg-query -W -f '${Version}' erlang-base)"
    echo
    python3 - "$RESULTS" <<'EOF'
import json, sys
from statistics import median
raw = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
fsyncs = [r for r in raw if r["system"] == "raw-fsync"]
floors = [r for r in raw if r["system"] == "raw-floor"]
zeroed = [r for r in raw if r["system"] == "raw-fsync0"]
raw = [r for r in raw if r["system"] not in ("raw-fsync", "raw-floor", "raw-fsync0")]
groups = {}
for r in raw:
    groups.setdefault((r["system"], r["replicas"], r["inflight"], r.get("batch", 1)), []).append(r)
rows = []
for (system, replicas, inflight, batch), rs in groups.items():
    rows.append({"system": system, "replicas": replicas, "inflight": inflight, "batch": batch,
                 "runs": len(rs), "msgs_per_sec": median(x["msgs_per_sec"] for x in rs),
                 "lo": min(x["msgs_per_sec"] for x in rs), "hi": max(x["msgs_per_sec"] for x in rs),
                 "p50_ms": median(x["p50_ms"] for x in rs), "p99_ms": median(x["p99_ms"] for x in rs)})
names = {"sofamq": "SofaMQ", "nats": "NATS JetStream", "rabbitmq": "RabbitMQ quorum queue"}
sofa = {r["inflight"]: r for r in rows if r["system"] == "sofamq" and r.get("batch", 1) == 1}
def ratio(a, b):
    return f"{a / b:.2f}" if a and b else "-"
print("| system | replicas | in flight | batch | runs | msgs/s (min-max) | p50 ms | p99 ms | SofaMQ/peer msgs/s | SofaMQ/peer p99 |")
print("|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    s = sofa.get(r["inflight"]) if r["system"] != "sofamq" else None
    print("| {} | {} | {} | {} | {} | {:,.0f} ({:,.0f}-{:,.0f}) | {:.3f} | {:.3f} | {} | {} |".format(
        names.get(r["system"], r["system"]), r["replicas"], r["inflight"], r["batch"], r["runs"],
        r["msgs_per_sec"], r["lo"], r["hi"], r["p50_ms"], r["p99_ms"],
        ratio(s["msgs_per_sec"], r["msgs_per_sec"]) if s else "",
        ratio(s["p99_ms"], r["p99_ms"]) if s else ""))

# The ratios DESIGN.md section 11 sets targets on, each from this run's own figures.
def per_round(pick):
    return {r["round"]: r for r in raw if pick(r)}
def fmt_rounds(vals, f):
    return ", ".join(f(v) for _, v in sorted(vals.items()))
print()
if fsyncs:
    fs = {r["round"]: r["p50_ms"] for r in fsyncs}
    fp50 = median(fs.values())
    print(f"- Raw {fsyncs[0]['size']} B append + fdatasync p50, same disk, {fsyncs[0]['iterations']} appends a round: "
          f"{fp50:.3f} ms (per round: {fmt_rounds(fs, lambda v: f'{v:.3f}')}).")
    if 1 in sofa:
        s1 = per_round(lambda r: r["system"] == "sofamq" and r["inflight"] == 1 and r.get("batch", 1) == 1)
        each = {k: s1[k]["p50_ms"] / fs[k] for k in s1 if k in fs and fs[k] > 0}
        print(f"- SofaMQ p50 at 1 in flight / raw fdatasync p50: {sofa[1]['p50_ms']:.3f} / {fp50:.3f} ms = "
              f"**{sofa[1]['p50_ms'] / fp50:.2f}x** (per round: {fmt_rounds(each, lambda v: f'{v:.2f}x')}; target <= 2x).")
if zeroed and 1 in sofa:
    zs = {r["round"]: r["p50_ms"] for r in zeroed}
    zp50 = median(zs.values())
    print(f"- The same raw loop into a zeroed file (how SofaMQ's writes land with its zero-fill ahead) p50: "
          f"{zp50:.3f} ms; SofaMQ at 1 in flight is {sofa[1]['p50_ms'] / zp50:.2f}x it.")
if floors and 1 in sofa:
    fl = {r["round"]: r["p50_ms"] for r in floors}
    flp50 = median(fl.values())
    s1 = per_round(lambda r: r["system"] == "sofamq" and r["inflight"] == 1 and r.get("batch", 1) == 1)
    each = {k: s1[k]["p50_ms"] / fl[k] for k in s1 if k in fl and fl[k] > 0}
    line = (f"- Machine floor of a replicated send (`bench floor`: threads over loopback, both copies fdatasynced) p50: "
            f"{flp50:.3f} ms")
    if fsyncs:
        line += f" = {flp50 / fp50:.2f}x the raw fdatasync"
    print(line + f"; SofaMQ at 1 in flight is {sofa[1]['p50_ms'] / flp50:.2f}x it "
          f"(per round: {fmt_rounds(each, lambda v: f'{v:.2f}x')}).")
s64 = per_round(lambda r: r["system"] == "sofamq" and r["inflight"] == 64 and r.get("batch", 1) == 1)
for system, reps, label in (("rabbitmq", 3, "RabbitMQ 3 nodes"), ("nats", 3, "NATS R3")):
    peer = per_round(lambda r: r["system"] == system and r["replicas"] == reps and r["inflight"] == 64)
    each = {k: s64[k]["msgs_per_sec"] / peer[k]["msgs_per_sec"] for k in s64 if k in peer and peer[k]["msgs_per_sec"]}
    if each:
        print(f"- SofaMQ/{label} msgs/s at 64 in flight, per round: {fmt_rounds(each, lambda v: f'{v:.2f}')} "
              f"(lowest **{min(each.values()):.2f}**; target >= 3 in every round).")
b = per_round(lambda r: r["system"] == "sofamq" and r.get("batch", 1) > 1 and "raw2_ratio" in r)
if b:
    print(f"- SofaMQ batches of {next(iter(b.values()))['batch']} / raw two-copy loop, msgs/s per round: "
          f"{fmt_rounds(b, lambda r: '{:,} / {:,} = {:.0%}'.format(r['msgs_per_sec'], r['raw2_msgs_per_sec'], r['raw2_ratio']))} "
          f"(median **{median(r['raw2_ratio'] for r in b.values()):.0%}**; target >= 80%).")
    busy = {k: r["cpu_busy"] for k, r in b.items() if "cpu_busy" in r}
    if busy:
        print(f"- Machine CPU busy during those batched sends (load generator and both brokers share the cores), per round: "
              f"{fmt_rounds(busy, lambda v: f'{v:.0%}')}.")
EOF
} | tee "$OUT/table.md"
log "results: $RESULTS, table: $OUT/table.md"
