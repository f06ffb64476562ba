#!/usr/bin/env bash
# A multi-host SofaMQ cluster on this one machine, built from network namespaces, veth pairs
# and a bridge, with faults under continuous load (issue 19, parts 1 and 5).
#
#   sudo bash scripts/multihost.sh [--fault NAME]... [--groups K] [--keep] [--cleanup]
#
# Topology (everything on the project's own bridge, 192.0.2.0/24, a documentation range;
# nothing is added to the machine's root network namespace):
#   smqmh-sw       a namespace holding only the bridge smqmh-br0
#   smqmh-h1..h3   hosts 192.0.2.11-13: each runs one name server with an embedded controller
#                  node (3 voters, one Raft group) and two brokers: the master of one group
#                  and the slave of another (group g: master on host g, slave on host g%3+1)
#   smqmh-client   192.0.2.100: the SDK load (`sofamq chaos --against`, which also watches
#                  the controller) and the official Python client's load
# The servers run exactly as deploy/systemd/*.service start them, with the configuration of
# deploy/examples/3-host/ (only the binary path and the data directories are substituted).
#
# Faults, one after another under load, each followed by a recovery and a wait until every
# group has a master and an in-sync slave again:
#   cutoff     a host cut off with iptables (DROP everything on its interface), then restored
#   kill       every process of a host killed (kill -9), then restarted
#   namesrv    the name server + controller node that leads the Raft group killed, then restarted
#   partition  iptables DROP between one group's master host and its slave host, then healed
#   restore    deploy/README.md's backup and restore: a slave stopped, its data directory
#              copied (tar), started; later stopped again, its data replaced by that older
#              copy, started: it must cut or fetch what differs and rejoin the in-sync set
#   replace    deploy/README.md's "replacing a dead host": every process of a host killed,
#              its disks emptied (brokers and controller, with the catching-up marker), and
#              the host started again: its brokers fetch whole logs, its node rejoins Raft
#   rolling    every host restarted in turn (SIGTERM, wait, start; NEXT_BIN=path restarts each
#              host with that binary instead: a mixed-version rolling upgrade)
# Then the load stops, an audit group drains every queue, and the checker prints the SDK's
# and the official client's counts, the duplicates split into copies in another broker
# group (a client retried a send of unknown outcome elsewhere) and within one group, and
#   groups=K hosts=H acked=N lost=0 unexpected=0 dup=0 failovers=F
# (SDK and official loads summed; F = elections that named another master). Log
# divergence between master and slave is not checked (the logs stay in the namespaces).
# The exit status is non-zero when anything was lost, unexpected or duplicated, or a step failed.
#
# Options and environment:
#   --fault NAME    run only this fault (repeatable; default: all seven in the order above)
#   --groups K / K  broker groups (default 3, at most 9)
#   --keep          keep the namespaces and the work directory (logs, data) for debugging;
#                   processes are still stopped. Remove them later with --cleanup.
#   --cleanup       remove what a kept run left (namespaces smqmh-*) and exit
#   SOFAMQ_BIN      the sofamq binary (default target/release/sofamq, rebuilt when older
#                   than the sources)
#   NEXT_BIN        binary for the rolling restart (default: the same binary)
#   MH_TIMEOUT      overall time limit in seconds (default 2400); the run stops itself then
#   MH_SDK_RATE, MH_SDK_PRODUCERS, MH_PY_RATE, MH_PY_PRODUCERS: load shape (20, 3, 10, 2)
#   MH_SDK_ATTEMPTS attempts per SDK send (default 3; the SDK retries onto another group)
#   MH_FAULT_HOLD   seconds each fault lasts (default 15); MH_HEALTHY_WAIT: the longest
#                   wait for a healthy cluster after a recovery (default 180)
#
# Needs root and `ip` (iproute2); installs iptables with apt-get if it is missing; uses jq and
# the official Python client (scripts/compat/setup-python.sh installs it into a venv).
# Not run in CI: it needs root and takes minutes.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
EXAMPLES=$ROOT/deploy/examples/3-host
UNITS=$ROOT/deploy/systemd

PFX=smqmh                     # every namespace, link and file this script makes starts so
SW=$PFX-sw                    # namespace of the bridge
BR=$PFX-br0
CLIENT_NS=$PFX-client
CLIENT_IP=192.0.2.100
H=3                           # server hosts
ALL_FAULTS=(cutoff kill namesrv partition restore replace rolling)

K=${K:-3}
FAULTS=()
KEEP=0
CLEANUP_ONLY=0
MH_TIMEOUT=${MH_TIMEOUT:-2400}
SDK_RATE=${MH_SDK_RATE:-20}
SDK_PRODUCERS=${MH_SDK_PRODUCERS:-3}
SDK_ATTEMPTS=${MH_SDK_ATTEMPTS:-3}   # attempts per SDK send (the SDK retries onto another group)
PY_RATE=${MH_PY_RATE:-10}
PY_PRODUCERS=${MH_PY_PRODUCERS:-2}
FAULT_HOLD=${MH_FAULT_HOLD:-15}   # seconds a fault lasts before the recovery
HEALTHY_WAIT=${MH_HEALTHY_WAIT:-180}

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --fault) FAULTS+=("${2:?--fault needs a name}"); shift 2 ;;
    --groups) K=${2:?--groups needs a number}; shift 2 ;;
    --keep) KEEP=1; shift ;;
    --cleanup) CLEANUP_ONLY=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "multihost: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ ${#FAULTS[@]} -gt 0 ] || FAULTS=("${ALL_FAULTS[@]}")
for f in "${FAULTS[@]}"; do
  case " ${ALL_FAULTS[*]} " in *" $f "*) ;; *) echo "multihost: unknown fault $f (one of: ${ALL_FAULTS[*]})" >&2; exit 2 ;; esac
done
case "$K" in [1-9]) ;; *) echo "multihost: K must be 1..9, not $K" >&2; exit 2 ;; esac

log() { printf '%s multihost: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
now_ms() { date +%s%3N; }

# --- preconditions -----------------------------------------------------------------------
[ "$(id -u)" = 0 ] || { echo "multihost: must run as root (it creates network namespaces)" >&2; exit 2; }
command -v ip >/dev/null || { echo "multihost: the ip command (iproute2) is missing" >&2; exit 2; }
ip netns list >/dev/null 2>&1 || { echo "multihost: 'ip netns' does not work here" >&2; exit 2; }

# Removes every namespace of ours (their veths, bridge and iptables rules go with them).
remove_namespaces() {
  local ns
  for ns in $(ip netns list | awk '{print $1}' | grep "^$PFX-" || true); do
    ip netns del "$ns" 2>/dev/null || log "could not delete namespace $ns"
  done
}

if [ "$CLEANUP_ONLY" = 1 ]; then
  # Processes still in our namespaces (a run killed with SIGKILL): by PID, from ip netns pids.
  for ns in $(ip netns list | awk '{print $1}' | grep "^$PFX-" || true); do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
  done
  sleep 1
  remove_namespaces
  rm -rf /tmp/sofamq-multihost.* "/etc/netns/$CLIENT_NS"
  log "cleaned up"
  exit 0
fi

if ip netns list | grep -q "^$PFX-"; then
  die "namespaces $PFX-* exist already (another run, or a kept one): bash $0 --cleanup"
fi
if ! command -v iptables >/dev/null; then
  log "installing iptables (apt-get)"
  apt-get install -y iptables >/dev/null || die "apt-get install iptables failed"
fi
command -v jq >/dev/null || die "jq is missing (apt-get install jq)"

# --- the binary --------------------------------------------------------------------------
if [ -n "${SOFAMQ_BIN:-}" ]; then
  BIN=$SOFAMQ_BIN
else
  BIN=$ROOT/target/release/sofamq
  if [ ! -x "$BIN" ] || [ -n "$(find "$ROOT/crates" "$ROOT/Cargo.toml" "$ROOT/Cargo.lock" -newer "$BIN" \( -name '*.rs' -o -name '*.toml' -o -name '*.proto' -o -name Cargo.lock \) -print -quit)" ]; then
    log "building the release binary (cargo build --release -p sofamq-cli)"
    (cd "$ROOT" && cargo build --release -p sofamq-cli) || die "build failed"
  fi
fi
[ -x "$BIN" ] || die "no binary at $BIN"
NEXT_BIN=${NEXT_BIN:-}
[ -z "$NEXT_BIN" ] || [ -x "$NEXT_BIN" ] || die "NEXT_BIN=$NEXT_BIN is not executable"
"$BIN" chaos --help | grep -q -- '--against' || die "$BIN has no 'chaos --against' (rebuild it)"
PY=$(bash "$ROOT/scripts/compat/setup-python.sh" | tail -n1) || die "setup-python.sh failed"

# --- state, cleanup ----------------------------------------------------------------------
WORK=$(mktemp -d /tmp/sofamq-multihost.XXXXXX)
declare -A HOST_PIDS=()       # host number -> PIDs of its server processes
AUX_PIDS=()                   # load, official client, watchdog
CREATED_NS=()
CREATED_ETC=""               # /etc/netns/<client namespace>, removed with the namespaces
CREATED_NETNS_DIR=0          # 1: /etc/netns did not exist before this run
FAILED=0

stop_pids() {                 # stop_pids SIGNAL PID...: signal, then wait (bounded), then -9
  local sig=$1; shift
  local pid deadline
  for pid in "$@"; do kill "-$sig" "$pid" 2>/dev/null || true; done
  deadline=$(( $(date +%s) + 20 ))
  for pid in "$@"; do
    while alive "$pid" && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.2; done
    if alive "$pid"; then log "PID $pid ignored SIG$sig for 20 s: SIGKILL"; kill -9 "$pid" 2>/dev/null || true; fi
    { wait "$pid"; } 2>/dev/null || true   # (quietly: no "Killed" job notice)
  done
}

# A process of ours that has not exited (a zombie counts as exited).
alive() {
  local st
  st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [ "$st" != Z ]
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  local pids=() h
  for h in "${!HOST_PIDS[@]}"; do pids+=(${HOST_PIDS[$h]}); done
  pids+=("${AUX_PIDS[@]}")
  if [ ${#pids[@]} -gt 0 ]; then
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
    sleep 1
    for p in "${pids[@]}"; do alive "$p" && kill -9 "$p" 2>/dev/null; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
  fi
  if [ "$KEEP" = 1 ]; then
    log "kept: namespaces ${CREATED_NS[*]}, work directory $WORK (remove with: bash $0 --cleanup)"
  else
    for ns in "${CREATED_NS[@]}"; do ip netns del "$ns" 2>/dev/null; done
    [ -z "$CREATED_ETC" ] || rm -rf "$CREATED_ETC"
    [ "$CREATED_NETNS_DIR" = 0 ] || rmdir /etc/netns 2>/dev/null
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# The whole run is bounded: a watchdog ends it (through the trap) after MH_TIMEOUT seconds.
# (The sleep runs in the background of the watchdog so that stopping the watchdog stops it too.)
( trap 'kill "$sp" 2>/dev/null; exit 0' TERM
  sleep "$MH_TIMEOUT" & sp=$!; wait "$sp"
  echo "multihost: overall timeout ${MH_TIMEOUT}s reached" >&2; kill -TERM $$ ) &
AUX_PIDS+=($!)

# --- network -----------------------------------------------------------------------------
host_ip() { echo "192.0.2.1$1"; }
host_ns() { echo "$PFX-h$1"; }
in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

# add_host NS IP NAME: a namespace with loopback and eth0 on the bridge.
add_host() {
  local ns=$1 addr=$2 port=$3
  ip netns add "$ns"; CREATED_NS+=("$ns")
  in_ns "$SW" ip link add "$port" type veth peer name eth0 netns "$ns"
  in_ns "$SW" ip link set "$port" master "$BR" up
  in_ns "$ns" ip link set lo up
  in_ns "$ns" ip addr add "$addr/24" dev eth0
  in_ns "$ns" ip link set eth0 up
}

log "network: bridge $BR in namespace $SW, hosts 192.0.2.11-1$H, client $CLIENT_IP"
ip netns add "$SW"; CREATED_NS+=("$SW")
in_ns "$SW" ip link add "$BR" type bridge
in_ns "$SW" ip link set "$BR" up
for h in $(seq 1 $H); do add_host "$(host_ns "$h")" "$(host_ip "$h")" "h$h"; done
add_host "$CLIENT_NS" "$CLIENT_IP" client
NS_NAME=namesrv.sofamq.test
[ -d /etc/netns ] || CREATED_NETNS_DIR=1
mkdir -p "/etc/netns/$CLIENT_NS"; CREATED_ETC=/etc/netns/$CLIENT_NS
for h in $(seq 1 $H); do echo "$(host_ip "$h") $NS_NAME"; done >"$CREATED_ETC/hosts"
# Reachable: a TCP connection to a closed port is refused (not timed out).
reach=$(in_ns "$CLIENT_NS" timeout 3 bash -c "exec 3<>/dev/tcp/$(host_ip 1)/9" 2>&1 || true)
grep -q refused <<<"$reach" || die "client cannot reach host 1: $reach"

# --- configuration: the deploy/ examples with local paths ---------------------------------
GROUP_NAMES=()
declare -A HOST_OF=()          # "broker-a/0" -> host number
declare -A INSTANCES=()        # host number -> broker instances (config names) on it
for g in $(seq 1 "$K"); do
  name="broker-$(printf "\\x$(printf %x $((96 + g)))")"
  GROUP_NAMES+=("$name")
  master_host=$(( (g - 1) % H + 1 )); slave_host=$(( g % H + 1 ))
  HOST_OF[$name/0]=$master_host; HOST_OF[$name/1]=$slave_host
  INSTANCES[$master_host]+=" $name-0"; INSTANCES[$slave_host]+=" $name-1"
done
for h in $(seq 1 $H); do
  etc=$WORK/h$h/etc; mkdir -p "$etc" "$WORK/h$h/data"
  # Only the data directories change: /var/lib/sofamq -> this host's directory.
  for f in "$EXAMPLES/h$h"/*; do
    sed "s#/var/lib/sofamq#$WORK/h$h/data#g" "$f" > "$etc/$(basename "$f")"
  done
done
# Groups beyond the example's three: made from broker-a's files (name, host and ports changed).
for g in $(seq 4 "$K"); do
  name=${GROUP_NAMES[$((g - 1))]}
  for id in 0 1; do
    h=${HOST_OF[$name/$id]}
    tmpl=$WORK/h$(( id == 0 ? 1 : 2 ))/etc/broker-a-$id.toml
    sed -e "s/broker-a/$name/g" -e "s/192\.0\.2\.1[12]:1091\([0-9]\)/$(host_ip "$h"):109$g\1/g" \
        -e "s#$WORK/h[12]/data#$WORK/h$h/data#g" "$tmpl" > "$WORK/h$h/etc/$name-$id.toml"
  done
done
# Groups below three: their files are simply not used.

NAMESRVS=$(for h in $(seq 1 $H); do printf '%s:9876,' "$(host_ip "$h")"; done); NAMESRVS=${NAMESRVS%,}
CONTROLLERS=$(for h in $(seq 1 $H); do printf '%s:9901,' "$(host_ip "$h")"; done); CONTROLLERS=${CONTROLLERS%,}

# The ExecStart line of a unit, with this machine's binary and configuration directory.
exec_line() { # exec_line UNIT HOST BINARY [INSTANCE]
  sed -n 's/^ExecStart=//p' "$UNITS/$1" |
    sed -e "s#/usr/local/bin/sofamq#$3#" -e "s#/etc/sofamq/#$WORK/h$2/etc/#g" -e "s#%i#${4:-}#g"
}

# The units, checked with systemd-analyze verify (binary path substituted) when it exists.
if command -v systemd-analyze >/dev/null; then
  vd=$WORK/units; mkdir -p "$vd"
  sed "s#/usr/local/bin/sofamq#$BIN#" "$UNITS/sofamq-namesrv.service" > "$vd/sofamq-namesrv.service"
  sed "s#/usr/local/bin/sofamq#$BIN#" "$UNITS/sofamq-broker@.service" > "$vd/sofamq-broker@broker-a-0.service"
  if out=$(systemd-analyze verify "$vd/sofamq-namesrv.service" "$vd/sofamq-broker@broker-a-0.service" 2>&1) && [ -z "$out" ]; then
    log "systemd-analyze verify: units OK"
  else
    log "systemd-analyze verify complained:"; printf '%s\n' "$out" >&2; FAILED=1
  fi
else
  log "systemd-analyze not installed: units not verified"
fi

# --- processes ---------------------------------------------------------------------------
# start_host H [BINARY]: the host's name server (with controller node) and brokers, each as
# its unit would start it, in the host's namespace; their PIDs are remembered per host.
# (7>&-: a server must not hold the official driver's standard input open, see below.)
start_host() {
  local h=$1 bin=${2:-$BIN} ns inst cmd pid
  ns=$(host_ns "$h")
  HOST_PIDS[$h]=""
  cmd=$(exec_line sofamq-namesrv.service "$h" "$bin")
  # systemd reads EnvironmentFile= and expands ${VAR}: the same here.
  ( set -a; . "$WORK/h$h/etc/namesrv.env"; set +a
    eval "exec ip netns exec $ns $cmd" ) >>"$WORK/h$h/namesrv.log" 2>&1 7>&- &
  pid=$!; HOST_PIDS[$h]+=" $pid"
  for inst in ${INSTANCES[$h]}; do start_broker "$h" "$inst" "$bin"; done
  log "host $h started ($(basename "$bin")): PIDs${HOST_PIDS[$h]}"
}

# start_broker H INSTANCE [BINARY]: one broker as its unit would start it.
declare -A INST_PID=()
start_broker() {
  local h=$1 inst=$2 bin=${3:-$BIN} cmd
  cmd=$(exec_line sofamq-broker@.service "$h" "$bin" "$inst")
  ( eval "exec ip netns exec $(host_ns "$h") $cmd" ) >>"$WORK/h$h/$inst.log" 2>&1 7>&- &
  INST_PID[$inst]=$!; HOST_PIDS[$h]+=" $!"
}

# stop_broker H INSTANCE: SIGTERM to one broker (bounded wait, then -9).
stop_broker() {
  local h=$1 pid=${INST_PID[$2]}
  stop_pids TERM "$pid"
  HOST_PIDS[$h]=$(sed "s/\b$pid\b//" <<<"${HOST_PIDS[$h]}")
}

# wait_broker_ready H INSTANCE N: its log holds N ready lines (bounded).
wait_broker_ready() {
  local f=$WORK/h$1/$2.log deadline=$(( $(date +%s) + 90 ))
  until [ "$(grep -c "broker ${2%-*} ready on" "$f")" -ge "$3" ]; do
    [ "$(date +%s)" -lt "$deadline" ] || { log "$2: not ready after 90 s"; tail -5 "$f" >&2; return 1; }
    sleep 0.3
  done
}

# wait_ready H: every process of the host printed its ready line (bounded).
wait_ready() {
  local h=$1 inst deadline=$(( $(date +%s) + 90 ))
  local files=("$WORK/h$h/namesrv.log:namesrv ready on")
  for inst in ${INSTANCES[$h]}; do files+=("$WORK/h$h/$inst.log:broker ${inst%-*} ready on"); done
  for f in "${files[@]}"; do
    until [ -f "${f%%:*}" ] && [ "$(grep -c "${f#*:}" "${f%%:*}")" -ge "$(restarts_of "$h")" ]; do
      [ "$(date +%s)" -lt "$deadline" ] || { log "host $h: no '${f#*:}' in ${f%%:*} after 90 s"; tail -5 "${f%%:*}" >&2; return 1; }
      sleep 0.3
    done
  done
}
declare -A STARTS=()
restarts_of() { echo "${STARTS[$1]:-0}"; }
boot_host() { STARTS[$1]=$(( ${STARTS[$1]:-0} + 1 )); start_host "$@"; }

stop_host() { # stop_host H SIGNAL
  local h=$1 sig=$2
  log "host $h: SIG$sig to PIDs${HOST_PIDS[$h]}"
  # shellcheck disable=SC2086
  stop_pids "$sig" ${HOST_PIDS[$h]}
  HOST_PIDS[$h]=""
}

client() { in_ns "$CLIENT_NS" "$@"; }
first_ns=$(host_ip 1):9876

for h in $(seq 1 $H); do boot_host "$h"; done
for h in $(seq 1 $H); do wait_ready "$h" || die "host $h did not start"; done
log "all servers ready"

# Topics on every group, once every group has a master registered.
create_topic() {
  local t=$1 deadline=$(( $(date +%s) + 90 )) out
  while :; do
    out=$(client "$BIN" topic create "$t" --queues 8 --access-point "$first_ns" 2>&1 || true)
    [ "$(grep -c '^created' <<<"$out")" -ge "$K" ] && { log "topic $t on $K groups"; return 0; }
    [ "$(date +%s)" -lt "$deadline" ] || { log "topic $t: $out"; return 1; }
    sleep 1
  done
}
create_topic multihost || die "could not create topic multihost"
create_topic multihost-official || die "could not create topic multihost-official"

# --- load --------------------------------------------------------------------------------
STATE=$WORK/state; EVENTS=$WORK/events.jsonl
ip netns exec "$CLIENT_NS" "$BIN" chaos --against "$NAMESRVS" --controller "$CONTROLLERS" --groups "$K" \
  --topic multihost --producers "$SDK_PRODUCERS" --rate "$SDK_RATE" --max-attempts "$SDK_ATTEMPTS" \
  --stop-file "$WORK/stop" --official-topic multihost-official \
  --official-acked "$WORK/official.jsonl" --events "$EVENTS" --state "$STATE" \
  --json "$WORK/report.json" --duration "$MH_TIMEOUT" >"$WORK/load.out" 2>"$WORK/load.err" &
LOAD_PID=$!; AUX_PIDS+=("$LOAD_PID")

state() { awk -v k="$1" '$1 == k {print $2; exit}' "$STATE" 2>/dev/null || true; }
# The group's current master id from the watcher's state ("none" when it has none).
master_of() { awk -v g="$1" '$1 == "group" && $2 == g {print $4; exit}' "$STATE" 2>/dev/null || true; }

wait_healthy() { # wait_healthy WHY [T0_MS]: every group has a master and an in-sync slave
  local t0 deadline
  t0=${2:-$(now_ms)}; deadline=$(( $(date +%s) + HEALTHY_WAIT ))
  sleep 0.5
  until [ "$(state healthy)" = 1 ] && [ "$(( $(now_ms) - $(state t_ms || echo 0) ))" -lt 2000 ]; do
    alive "$LOAD_PID" || die "the load process exited: $(tail -3 "$WORK/load.err")"
    if [ "$(date +%s)" -ge "$deadline" ]; then
      log "$1: not healthy after ${HEALTHY_WAIT}s:"; cat "$STATE" >&2 || true
      FAILED=1; return 1
    fi
    sleep 0.2
  done
  HEALED_LINES+=("$1: every group has a master and an in-sync slave $(( $(now_ms) - t0 )) ms after the recovery began")
  log "${HEALED_LINES[-1]}"
}

wait_healthy "start" || die "the cluster never became healthy"

# The official client gets one DNS name for the three name servers (a list "a;b;c" becomes a
# gRPC authority "a,b,c" that the name server's HTTP/2 stack refuses with RST_STREAM): the
# client namespace's /etc/hosts (ip netns exec mounts /etc/netns/NS/hosts) names all three.
PY_ACCESS=$NS_NAME:9876
# The driver stops when its standard input closes: a FIFO whose writing end this script
# holds (fd 7) until the load phase ends.
mkfifo "$WORK/official.in"
GRPC_DNS_RESOLVER=native ip netns exec "$CLIENT_NS" "$PY" "$ROOT/scripts/compat/python_failover_producer.py" "$PY_ACCESS" \
  multihost-official "$PY_PRODUCERS" "$MH_TIMEOUT" "$PY_RATE" \
  <"$WORK/official.in" >"$WORK/official.jsonl" 2>"$WORK/official.err" &
PY_PID=$!; AUX_PIDS+=("$PY_PID")
exec 7>"$WORK/official.in"
log "load: SDK $SDK_PRODUCERS x $SDK_RATE/s on multihost, official Python client $PY_PRODUCERS x $PY_RATE/s on multihost-official"
sleep 10

# --- fault helpers -----------------------------------------------------------------------
FAULT_LINES=()
HEALED_LINES=()
# drop_iface H add|del: DROP everything in and out of the host's interface.
drop_iface() {
  local ns op=-I; ns=$(host_ns "$1"); [ "$2" = del ] && op=-D
  in_ns "$ns" iptables "$op" INPUT -i eth0 -j DROP
  in_ns "$ns" iptables "$op" OUTPUT -o eth0 -j DROP
}
# drop_between A B add|del: DROP traffic between two hosts only (rules on both).
drop_between() {
  local op=-I; [ "$3" = del ] && op=-D
  in_ns "$(host_ns "$1")" iptables "$op" INPUT -s "$(host_ip "$2")" -j DROP
  in_ns "$(host_ns "$1")" iptables "$op" OUTPUT -d "$(host_ip "$2")" -j DROP
  in_ns "$(host_ns "$2")" iptables "$op" INPUT -s "$(host_ip "$1")" -j DROP
  in_ns "$(host_ns "$2")" iptables "$op" OUTPUT -d "$(host_ip "$1")" -j DROP
}

# Groups whose current master runs on host H, as "group:master_id".
masters_on() {
  local g m
  for g in "${GROUP_NAMES[@]}"; do
    m=$(master_of "$g")
    [ "$m" != none ] && [ -n "$m" ] && [ "${HOST_OF[$g/$m]:-}" = "$1" ] && echo "$g:$m"
  done
  return 0
}

# measure_failovers FAULT T0 GROUP:OLD...: waits (up to 60 s) for the controller to name a
# new master of each group and prints the time from T0 (the fault) to that event.
measure_failovers() {
  local fault=$1 t0=$2; shift 2
  local gm g old line t to deadline
  for gm in "$@"; do
    g=${gm%%:*}; old=${gm#*:}
    deadline=$(( $(date +%s) + 60 ))
    line=""
    while [ -z "$line" ] && [ "$(date +%s)" -lt "$deadline" ]; do
      line=$(jq -c --arg g "$g" --argjson t0 "$t0" --argjson old "$old" \
        'select(.group == $g and .t_ms >= $t0 and .master != null and .master != $old)' "$EVENTS" 2>/dev/null | head -n1 || true)
      [ -n "$line" ] || sleep 0.2
    done
    if [ -z "$line" ]; then
      FAULT_LINES+=("$fault: $g: no new master within 60 s (master was $old)")
      log "${FAULT_LINES[-1]}"; FAILED=1; continue
    fi
    t=$(jq -r .t_ms <<<"$line"); to=$(jq -r .master <<<"$line")
    FAULT_LINES+=("$fault: $g failover $g-$old -> $g-$to in $(( t - t0 )) ms (epoch $(jq -r .epoch <<<"$line"))")
    log "${FAULT_LINES[-1]}"
  done
}

# report_changes FAULT T0: every master change of every group since T0, with the time
# from T0; "no master change" when there was none.
report_changes() {
  local fault=$1 t0=$2 g prev t m e n=0
  for g in "${GROUP_NAMES[@]}"; do
    prev=$(jq -r --arg g "$g" --argjson t0 "$t0" \
      'select(.group == $g and .t_ms < $t0 and .master != null) | .master' "$EVENTS" 2>/dev/null | tail -n1 || true)
    while read -r t m e; do
      [ "$m" != "$prev" ] || continue
      FAULT_LINES+=("$fault: $g failover $g-${prev:-none} -> $g-$m in $(( t - t0 )) ms (epoch $e)")
      log "${FAULT_LINES[-1]}"; n=$((n + 1)); prev=$m
    done < <(jq -r --arg g "$g" --argjson t0 "$t0" \
      'select(.group == $g and .t_ms >= $t0 and .master != null) | "\(.t_ms) \(.master) \(.epoch)"' "$EVENTS" 2>/dev/null || true)
  done
  [ "$n" -gt 0 ] || { FAULT_LINES+=("$fault: no master change"); log "${FAULT_LINES[-1]}"; }
}

# The controller leader's host (its Raft node id is the host number).
leader_host() { state leader; }

fault_cutoff() {
  local h t0 affected
  h=$(( ($(masters_on 1 | wc -l) > 0) ? 1 : 2 ))
  mapfile -t affected < <(masters_on "$h")
  log "cutoff: host $h cut off (iptables DROP on its interface); its masters: ${affected[*]:-none}"
  t0=$(now_ms); drop_iface "$h" add
  measure_failovers "cutoff h$h" "$t0" "${affected[@]}"
  sleep_until "$t0" "$FAULT_HOLD"
  local t1; t1=$(now_ms)
  drop_iface "$h" del; log "cutoff: host $h reconnected"
  wait_healthy "cutoff h$h" "$t1"
}

fault_kill() {
  local h=2 t0 affected
  mapfile -t affected < <(masters_on "$h")
  log "kill: every process of host $h (kill -9); its masters: ${affected[*]:-none}"
  t0=$(now_ms); stop_host "$h" KILL
  measure_failovers "kill h$h" "$t0" "${affected[@]}"
  sleep_until "$t0" "$FAULT_HOLD"
  local t1; t1=$(now_ms)
  boot_host "$h"; wait_ready "$h" || FAILED=1
  wait_healthy "kill h$h" "$t1"
}

fault_namesrv() {
  local h pid t0 deadline new=""
  h=$(leader_host); case "$h" in [1-9]) ;; *) h=3 ;; esac
  pid=$(awk '{print $1}' <<<"${HOST_PIDS[$h]}")   # start_host starts the name server first
  log "namesrv: name server + controller node $h (the Raft leader) killed (PID $pid)"
  t0=$(now_ms); stop_pids KILL "$pid"
  HOST_PIDS[$h]=$(sed "s/\b$pid\b//" <<<"${HOST_PIDS[$h]}")
  deadline=$(( $(date +%s) + 30 ))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    new=$(leader_host); case "$new" in [1-9]) [ "$new" != "$h" ] && break ;; esac; sleep 0.2
  done
  FAULT_LINES+=("namesrv h$h: controller leader $h -> ${new:-none} in $(( $(now_ms) - t0 )) ms")
  log "${FAULT_LINES[-1]}"
  sleep_until "$t0" "$FAULT_HOLD"
  report_changes "namesrv h$h" "$t0"
  # Back as its unit would start it (the host's brokers keep running).
  local cmd t1
  t1=$(now_ms)
  cmd=$(exec_line sofamq-namesrv.service "$h" "$BIN")
  ( set -a; . "$WORK/h$h/etc/namesrv.env"; set +a
    eval "exec ip netns exec $(host_ns "$h") $cmd" ) >>"$WORK/h$h/namesrv.log" 2>&1 7>&- &
  HOST_PIDS[$h]+=" $!"
  wait_healthy "namesrv h$h" "$t1"
}

fault_partition() {
  local g=${GROUP_NAMES[0]} m s t0 line
  m=$(master_of "$g"); case "$m" in 0|1) ;; *) m=0 ;; esac
  s=$(( 1 - m ))
  local mh=${HOST_OF[$g/$m]} sh=${HOST_OF[$g/$s]}
  log "partition: hosts $mh ($g master) and $sh ($g slave) cannot reach each other"
  t0=$(now_ms); drop_between "$mh" "$sh" add
  sleep_until "$t0" "$FAULT_HOLD"
  # The master keeps its role while it reaches the controller leader. When the leader is on
  # the other side of the cut, the brokers there lose their lease and their slaves are
  # elected: every master change from the cut to the healthy cluster is reported.
  FAULT_LINES+=("partition h$mh/h$sh: controller leader during the partition: node $(leader_host)")
  local t1; t1=$(now_ms)
  drop_between "$mh" "$sh" del; log "partition: healed"
  wait_healthy "partition h$mh/h$sh" "$t1"
  # Master changes from the cut until every group is healthy again (the heal included).
  report_changes "partition h$mh/h$sh (cut at +0 ms, healed at +$(( t1 - t0 )) ms)" "$t0"
}

fault_restore() {
  local g=${GROUP_NAMES[1]:-${GROUP_NAMES[0]}} m s sh inst data n t0 t1
  m=$(master_of "$g"); case "$m" in 0|1) ;; *) m=0 ;; esac
  s=$(( 1 - m )); sh=${HOST_OF[$g/$s]}; inst=$g-$s; data=$WORK/h$sh/data
  n=$(grep -c "broker $g ready on" "$WORK/h$sh/$inst.log" || true)
  log "restore: backup of $inst (slave of $g, host $sh): stop, tar, start"
  t0=$(now_ms); stop_broker "$sh" "$inst"
  tar -C "$data" -cf "$WORK/backup-$inst.tar" "$inst" || { log "restore: tar failed"; FAILED=1; }
  start_broker "$sh" "$inst"; wait_broker_ready "$sh" "$inst" $(( n + 1 )) || FAILED=1
  wait_healthy "restore h$sh: backup of $inst taken" "$t0" || true
  sleep_until "$t0" "$FAULT_HOLD"          # the group takes sends the copy does not hold
  log "restore: $inst stopped, its data replaced by the copy, started"
  t1=$(now_ms); stop_broker "$sh" "$inst"
  rm -rf "${data:?}/$inst" && tar -C "$data" -xf "$WORK/backup-$inst.tar" || { log "restore: untar failed"; FAILED=1; }
  start_broker "$sh" "$inst"; wait_broker_ready "$sh" "$inst" $(( n + 2 )) || FAILED=1
  wait_healthy "restore h$sh: $inst restored" "$t1" || true
  report_changes "restore h$sh ($inst)" "$t0"
}

fault_replace() {
  local h=3 t0 t1 affected
  mapfile -t affected < <(masters_on "$h")
  log "replace: host $h killed (kill -9), its disks emptied; its masters: ${affected[*]:-none}"
  t0=$(now_ms); stop_host "$h" KILL
  measure_failovers "replace h$h" "$t0" "${affected[@]}"
  # A new machine: empty data directories, the controller's with the catching-up marker.
  rm -rf "${WORK:?}/h$h/data"; mkdir -p "$WORK/h$h/data/controller"
  echo "replaced host: empty log" > "$WORK/h$h/data/controller/catching-up"
  sleep_until "$t0" "$FAULT_HOLD"
  t1=$(now_ms)
  boot_host "$h"; wait_ready "$h" || FAILED=1
  wait_healthy "replace h$h" "$t1"
  grep -h "voting again" "$WORK/h$h/namesrv.log" >/dev/null \
    || log "replace: host $h's controller node did not log that it votes again (yet)"
}

fault_rolling() {
  local h t0 t1 affected bin=${NEXT_BIN:-$BIN}
  for h in $(seq 1 $H); do
    mapfile -t affected < <(masters_on "$h")
    log "rolling: host $h (SIGTERM); its masters: ${affected[*]:-none}"
    t0=$(now_ms); stop_host "$h" TERM
    FAULT_LINES+=("rolling h$h: stopped in $(( $(now_ms) - t0 )) ms")
    measure_failovers "rolling h$h" "$t0" "${affected[@]}"
    t1=$(now_ms)
    boot_host "$h" "$bin"; wait_ready "$h" || FAILED=1
    wait_healthy "rolling h$h" "$t1" || true
  done
}

sleep_until() { # sleep_until T0_MS SECONDS
  local left=$(( $1 + $2 * 1000 - $(now_ms) ))
  [ "$left" -le 0 ] || sleep "$(( left / 1000 )).$(printf %03d $(( left % 1000 )))"
}

# --- the run -----------------------------------------------------------------------------
for f in "${FAULTS[@]}"; do
  log "=== fault: $f ==="
  "fault_$f" || { log "fault $f failed"; FAILED=1; }
  sleep 5
done

log "faults done: stopping the load, draining"
exec 7>&-    # the official driver's standard input closes: it stops
deadline=$(( $(date +%s) + 60 ))
while alive "$PY_PID" && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.5; done
alive "$PY_PID" && { log "the official client did not stop in 60 s"; kill -9 "$PY_PID"; FAILED=1; }
wait "$PY_PID" 2>/dev/null || true
touch "$WORK/stop"
deadline=$(( $(date +%s) + 420 ))
while alive "$LOAD_PID" && [ "$(date +%s)" -lt "$deadline" ]; do sleep 1; done
alive "$LOAD_PID" && { log "the load did not finish its drain in 420 s"; kill -9 "$LOAD_PID"; FAILED=1; }
load_rc=0; wait "$LOAD_PID" || load_rc=$?

cat "$WORK/load.out"
grep '^chaos:' "$WORK/load.err" >&2 || true
for l in "${FAULT_LINES[@]}" "${HEALED_LINES[@]}"; do echo "$l"; done
total=$(grep '^total:' "$WORK/load.out" || true)
[ -n "$total" ] || { tail -20 "$WORK/load.err" >&2; die "the load printed no result"; }
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$total"; }
[ "$load_rc" = 0 ] || FAILED=1
[ "$(field drained)" = true ] || { log "the audit drain gave up before reading everything"; }
echo "dup: $(field dup_cross_group) extra copies in another broker group than the first (a client retried a send of unknown outcome onto another group), $(field dup_within_group) within one group"
echo "groups=$K hosts=$H acked=$(field acked) lost=$(field lost) unexpected=$(field unexpected) dup=$(field dup) failovers=$(field failovers)"
[ "$FAILED" = 0 ] || { log "FAILED (see above)"; exit 1; }
