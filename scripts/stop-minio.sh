#!/usr/bin/env bash
# Stop a MinIO started by start-minio.sh DIR: TERM, then KILL after 5 s.
set -euo pipefail

DIR="${1:?usage: stop-minio.sh DIR}"
[[ -f "$DIR/pid" ]] || exit 0
PID="$(cat "$DIR/pid")"

# Only signal the pid if it is still our minio (pids get recycled).
if ps -p "$PID" -o command= 2>/dev/null | grep -q minio; then
  kill -TERM "$PID" 2>/dev/null || true
  for _ in $(seq 1 50); do   # 50 x 0.1 s = 5 s
    kill -0 "$PID" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$PID" 2>/dev/null; then
    echo "minio $PID ignored TERM; sending KILL" >&2
    kill -KILL "$PID" 2>/dev/null || true
  fi
fi
rm -f "$DIR/pid" "$DIR/env"
