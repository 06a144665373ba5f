#!/usr/bin/env python3
"""Operator at scale: N BatchJobs applied at once under queue limits.

Run on a testbed that is up (`eval "$(tests/testbed/up)"`), with the operator built:

    python3 bench/operator_scale.py [--jobs 1000] [--max-running-jobs 10]

It starts barge-operator, creates N jobs in one `kubectl create`, and reports the time until
every job has a status, the operator's peak RSS, the API requests the operator made per job
(from kube-apiserver's own request counters, minus the bench's own creates), and reconcile
latency percentiles from the operator's histogram. Standard library only.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/barge/target"))


def kubectl(*args, stdin=None):
    return subprocess.run(["kubectl", *args], input=stdin, capture_output=True, text=True, check=True).stdout


def apiserver_requests():
    """apiserver_request_total summed by (verb, resource) for the resources the operator uses."""
    text = kubectl("get", "--raw", "/metrics")
    totals = {}
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
        res = labels.get("resource", "")
        if res not in ("batchjobs", "pods", "events", "leases", "priorityclasses"):
            continue
        key = (labels.get("verb", ""), res + ("/" + labels["subresource"] if labels.get("subresource") else ""))
        totals[key] = totals.get(key, 0) + float(line.rsplit(" ", 1)[1])
    return totals


def histogram_quantiles(metrics_text, name, qs):
    buckets = []
    count = 0.0
    for line in metrics_text.splitlines():
        if line.startswith(name + "_bucket"):
            le = re.search(r'le="([^"]+)"', line).group(1)
            buckets.append((float("inf") if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))
        elif line.startswith(name + "_count"):
            count = float(line.rsplit(" ", 1)[1])
    out = {}
    for q in qs:
        want = q * count
        out[q] = next((le for le, c in sorted(buckets) if c >= want), float("inf"))
    return out, count


def peak_rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--max-running-jobs", type=int, default=10)
    ap.add_argument("--namespace", default="scale")
    args = ap.parse_args()

    subprocess.run(["kubectl", "delete", "namespace", args.namespace, "--wait=true", "--ignore-not-found"],
                   capture_output=True)
    kubectl("create", "namespace", args.namespace)
    work = tempfile.mkdtemp(prefix="barge-scale-")
    cfg = os.path.join(work, "config.yaml")
    with open(cfg, "w") as f:
        f.write(f"queue:\n  maxRunningJobs: {args.max_running_jobs}\n")
    log = open(os.path.join(work, "operator.log"), "w")
    op = subprocess.Popen([os.path.join(TARGET, "release", "barge-operator"), "--config", cfg,
                           "--namespace", args.namespace, "--listen", "127.0.0.1:18181"],
                          stdout=subprocess.DEVNULL, stderr=log)
    # Ready once its caches are synced.
    for _ in range(100):
        try:
            if urllib.request.urlopen("http://127.0.0.1:18181/readyz", timeout=1).status == 200:
                break
        except Exception:
            time.sleep(0.2)
    before = apiserver_requests()

    docs = []
    for i in range(args.jobs):
        docs.append(json.dumps({
            "apiVersion": "barge.dev/v1alpha1", "kind": "BatchJob",
            "metadata": {"name": f"job-{i:04d}", "namespace": args.namespace},
            "spec": {"model": {"uri": "s3://models-x/minilm/"}, "input": {"uri": f"s3://input-x/{i}.jsonl"},
                     "output": {"uri": f"s3://output-x/{i}/"}},
        }))
    manifest = {"apiVersion": "v1", "kind": "List", "items": [json.loads(d) for d in docs]}
    start = time.monotonic()
    kubectl("create", "-f", "-", stdin=json.dumps(manifest))
    created = time.monotonic() - start

    while True:
        items = json.loads(kubectl("get", "bj", "-n", args.namespace, "-o", "json"))["items"]
        with_status = sum(1 for j in items if (j.get("status") or {}).get("phase"))
        if with_status >= args.jobs:
            break
        if time.monotonic() - start > 600:
            print(f"gave up: {with_status}/{args.jobs} jobs have a status", file=sys.stderr)
            break
        time.sleep(0.5)
    all_status = time.monotonic() - start
    phases = {}
    for j in items:
        p = (j.get("status") or {}).get("phase", "none")
        phases[p] = phases.get(p, 0) + 1
    time.sleep(2)
    after = apiserver_requests()
    metrics = urllib.request.urlopen("http://127.0.0.1:18181/metrics", timeout=5).read().decode()
    rss = peak_rss_mib(op.pid)
    op.terminate()
    op.wait(timeout=30)

    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    # The bench's own `kubectl create` and `kubectl get` polls are not the operator's.
    delta[("POST", "batchjobs")] = delta.get(("POST", "batchjobs"), 0) - args.jobs
    polls = delta.pop(("LIST", "batchjobs"), 0)
    operator_requests = sum(v for v in delta.values() if v > 0)
    qs, count = histogram_quantiles(metrics, "barge_operator_reconcile_duration_seconds", [0.5, 0.95, 0.99])
    print(f"jobs: {args.jobs} (maxRunningJobs {args.max_running_jobs}); created in {created:.1f} s")
    print(f"every job has a status after {all_status:.1f} s; phases: {phases}")
    print(f"operator peak RSS: {rss:.1f} MiB")
    print(f"operator API requests: {operator_requests:.0f} ({operator_requests / args.jobs:.2f} per job); "
          f"by verb/resource: " + ", ".join(f"{v} {r}={n:.0f}" for (v, r), n in sorted(delta.items()) if n > 0))
    print(f"(bench's own LIST polls excluded: {polls:.0f})")
    print(f"reconciles: {count:.0f}; latency p50 <= {qs[0.5] * 1000:.0f} ms, p95 <= {qs[0.95] * 1000:.0f} ms, "
          f"p99 <= {qs[0.99] * 1000:.0f} ms (histogram bucket bounds)")
    subprocess.run(["kubectl", "delete", "namespace", args.namespace, "--wait=false"], capture_output=True)


if __name__ == "__main__":
    main()
