#!/usr/bin/env bash
# Proves that the storage-fault chaos scenarios catch a broken build of each fault class:
# builds `sofamq` with the `mutants` feature (deliberate defects, off unless SOFAMQ_MUTANT
# names one; see crates/store/src/mutant.rs and crates/controller/src/mutant.rs) into its
# own target dir, runs each defect against the scenario that must catch it, and prints one
# line per pair: CAUGHT (the scenario failed) or MISSED. A control run of the same binary,
# scenario and seed with no defect switched on must pass, or the pair counts as UNCLEAR (a
# failure that is not the defect's). Exits non-zero if any was missed or unclear.
#
#   bash scripts/chaos/mutants.sh                  # every pair, 4 rounds each
#   ROUNDS=10 bash scripts/chaos/mutants.sh skip-crc:bit-flip
#   bash scripts/chaos/mutants.sh wall-clock-dedup:clock-jump:10:41   # rounds, seed
set -euo pipefail
cd "$(dirname "$0")/../.."
target="${MUTANTS_TARGET_DIR:-target/mutants}"
CARGO_TARGET_DIR="$target" cargo build -q -p sofamq-cli --features mutants
bin="$target/debug/sofamq"
duration="${DURATION:-120}"
pairs=("$@")
if [ ${#pairs[@]} -eq 0 ]; then
  pairs=(
    skip-fdatasync:power-loss
    fsync-error-ok:eio
    fsync-error-ok:eio-thin
    elect-fenced:eio
    fence-on-enospc:enospc
    skip-crc:bit-flip
    ignore-segment-loss:segment-loss
    # A retried send forgotten by the idempotency window needs a failover onto a node
    # whose wall clock is over 10 min ahead: seed 41 has one in its 6th round.
    wall-clock-dedup:clock-jump:10:41
  )
fi
logs="$target/mutant-logs"
mkdir -p "$logs"
missed=0
for pair in "${pairs[@]}"; do
  # mutant:scenario[:rounds[:seed]]
  IFS=: read -r mutant scenario pair_rounds pair_seed <<<"$pair"
  rounds="${pair_rounds:-${ROUNDS:-4}}"
  seed="${pair_seed:-${SEED:-7}}"
  log="$logs/$mutant-$scenario.log"
  start=$(date +%s)
  rc=0
  SOFAMQ_MUTANT="$mutant" "$bin" chaos --scenario "$scenario" --rounds "$rounds" \
    --duration "$duration" --seed "$seed" --failover controller >"$log" 2>&1 || rc=$?
  if grep -q "SKIPPED" "$log"; then
    verdict="SKIPPED"
    missed=$((missed + 1))
  elif [ "$rc" -eq 0 ]; then
    verdict=MISSED
    missed=$((missed + 1))
  else
    verdict=CAUGHT
  fi
  why=$(grep -E "FAIL|FAULT PHASE FAILED|Error|error:" "$log" | grep -v "^scenario" | head -2 | tr "\n" " " | cut -c1-220 || true)
  control="$logs/control-$mutant-$scenario.log"
  if [ "$verdict" = CAUGHT ]; then
    if "$bin" chaos --scenario "$scenario" --rounds "$rounds" --duration "$duration" \
         --seed "$seed" --failover controller >"$control" 2>&1; then
      verdict="CAUGHT (control PASS)"
    else
      verdict="UNCLEAR (control failed too)"
      missed=$((missed + 1))
    fi
  fi
  echo "mutant $mutant vs $scenario: $verdict in $(( $(date +%s) - start )) s ($why) [log $log]"
done
exit $(( missed > 0 ))
