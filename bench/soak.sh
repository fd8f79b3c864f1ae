#!/usr/bin/env bash
# A longer run of the overlapping-fault soak of tests/tests/history.rs than
# CI's: more steps of two faults at once from a seeded schedule, longer load
# between them. Prints each run's seed, schedule, operations and violations.
#
#   bench/soak.sh [RUNS]            (default 3 runs)
#   SOAK_STEPS=12 HISTORY_SECS=4 bench/soak.sh 5
#   SOAK_SEED=12345 bench/soak.sh 1   (replay one schedule)
#
# Needs etcd (Debian's etcd-server) like the test. Each run is bounded by
# the test's own deadlines; the whole script by RUNS x (steps x ~15 s).
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-3}"
export SOAK_STEPS="${SOAK_STEPS:-12}"
export HISTORY_SECS="${HISTORY_SECS:-3}"
cargo build --release --workspace --bins --tests -q
failed=0
for run in $(seq 1 "$runs"); do
  echo "== run $run of $runs (SOAK_STEPS=$SOAK_STEPS HISTORY_SECS=$HISTORY_SECS${SOAK_SEED:+ SOAK_SEED=$SOAK_SEED})"
  if ! cargo test --release -q -p ringcache-tests --test history \
      overlapping_faults_from_a_seeded_schedule_serve_nothing_stale -- --nocapture 2>&1 |
      grep -E "overlapping faults|^step |VIOLATION|test result|panicked"; then
    failed=$((failed + 1))
  fi
done
echo "== $runs runs, $failed failed"
[[ $failed -eq 0 ]]
