#!/usr/bin/env bash
# Start a throwaway MinIO on a free loopback port for tests.
#   start-minio.sh DIR  -> data in DIR/data, log DIR/minio.log, pid DIR/pid,
#                          env DIR/env (source it); prints DIR/env on stdout.
set -euo pipefail

DIR="${1:?usage: start-minio.sh DIR}"
mkdir -p "$DIR/data"
DIR="$(cd "$DIR" && pwd)"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

healthy() { curl -sf -o /dev/null --max-time 2 "http://127.0.0.1:$1/minio/health/live"; }

# Already running from an earlier call: reuse it.
if [[ -f "$DIR/pid" && -f "$DIR/env" ]] && kill -0 "$(cat "$DIR/pid")" 2>/dev/null; then
  PORT="$(sed -n 's|.*AWS_ENDPOINT_URL=http://127.0.0.1:\([0-9]*\).*|\1|p' "$DIR/env")"
  if healthy "$PORT"; then echo "$DIR/env"; exit 0; fi
fi

MINIO="$("$HERE/build-minio.sh")"
# Ask the kernel for a free port (tiny race until MinIO binds it; acceptable for tests).
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
USER_=barge PASS=barge-secret-key

# MINIO_BROWSER=off: no web console, so no second port to allocate.
# All fds redirected: the server must not hold the caller's stdout open
# (that would hang `$(start-minio.sh ...)`).
MINIO_ROOT_USER="$USER_" MINIO_ROOT_PASSWORD="$PASS" MINIO_BROWSER=off MINIO_UPDATE=off \
  "$MINIO" server --quiet --address "127.0.0.1:$PORT" "$DIR/data" \
  </dev/null >"$DIR/minio.log" 2>&1 &
echo $! >"$DIR/pid"

for _ in $(seq 1 300); do   # 300 x 0.1 s = 30 s
  if healthy "$PORT"; then
    cat >"$DIR/env" <<ENV
export AWS_ENDPOINT_URL=http://127.0.0.1:$PORT AWS_ACCESS_KEY_ID=$USER_ AWS_SECRET_ACCESS_KEY=$PASS AWS_REGION=us-east-1
ENV
    echo "started minio pid $(cat "$DIR/pid") on 127.0.0.1:$PORT" >&2
    echo "$DIR/env"
    exit 0
  fi
  kill -0 "$(cat "$DIR/pid")" 2>/dev/null || break   # died early: no point waiting
  sleep 0.1
done

echo "minio failed to become healthy on port $PORT; log tail:" >&2
tail -n 30 "$DIR/minio.log" >&2 || true
"$HERE/stop-minio.sh" "$DIR" >/dev/null 2>&1 || true
exit 1
