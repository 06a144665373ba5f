#!/usr/bin/env bash
# The chaos figures (docs/reliability.md): one 10,000-request embeddings job over 4 shards on the
# test cluster, through 10 runner SIGKILLs, 2 operator SIGKILLs, 1 etcd restart and S3 faults on
# 10% of requests (resets, stalls, bodies cut short, from tests/src/fault_proxy.rs), compared with
# a clean run of the same job. It is the CI story `chaos` (tests/tests/cluster/chaos.rs) with the
# full plan; any BARGE_CHAOS_* variable set by the caller wins (BARGE_CHAOS_SEED replays a run).
#
# Usage: scripts/chaos.sh            (brings the testbed up and down, as scripts/test.sh does)
set -euo pipefail
cd "$(dirname "$0")/.."
export BARGE_CHAOS_REQUESTS="${BARGE_CHAOS_REQUESTS:-10000}"
export BARGE_CHAOS_SHARDS="${BARGE_CHAOS_SHARDS:-4}"
export BARGE_CHAOS_RUNNER_KILLS="${BARGE_CHAOS_RUNNER_KILLS:-10}"
export BARGE_CHAOS_OPERATOR_KILLS="${BARGE_CHAOS_OPERATOR_KILLS:-2}"
export BARGE_CHAOS_ETCD_RESTARTS="${BARGE_CHAOS_ETCD_RESTARTS:-1}"
export BARGE_CHAOS_FAULT_RATE="${BARGE_CHAOS_FAULT_RATE:-0.1}"
exec scripts/test.sh -p barge-e2e --test cluster -- chaos::a_sharded_job --nocapture
