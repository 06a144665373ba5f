#!/usr/bin/env bash
# Operator reconcile latency (docs/reliability.md): 1,000 BatchJobs created behind a queue limit
# of one, first created one at a time (as `kubectl apply -f folder/` does), then 16 at a time.
# Latency is from a job's creation to its first status (queued, with its position), p50/p99/max.
# It is the CI story `scale` (tests/tests/cluster/scale.rs), run twice; BARGE_SCALE_JOBS changes
# the count.
#
# Usage: scripts/bench-reconcile.sh   (brings the testbed up and down for each run)
set -euo pipefail
cd "$(dirname "$0")/.."
for c in 1 16; do
  BARGE_SCALE_CONCURRENCY=$c scripts/test.sh -p barge-e2e --test cluster -- scale --nocapture 2>&1 \
    | grep '^reconcile latency'
done
