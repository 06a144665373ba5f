# shellcheck shell=bash disable=SC2034 # the settings below are used by the scripts that source this
# Shared by tests/testbed/up and tests/testbed/down: where the testbed lives, which ports it uses,
# and how its processes are started, recognised and stopped. Sourced, never run.

TESTBED_HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$TESTBED_HERE/../.." && pwd)"

BARGE_CACHE="${BARGE_CACHE:-$HOME/.cache/barge}"
STATE="${BARGE_TESTBED_DIR:-$BARGE_CACHE/testbed/run}"

# Fixed loopback ports, so a kubeconfig or an endpoint written down once stays valid across runs.
# They sit outside the kernel's ephemeral range (32768+), where tests' own free-port picks land.
ETCD_PORT="${BARGE_TESTBED_ETCD_PORT:-23790}"
ETCD_PEER_PORT="${BARGE_TESTBED_ETCD_PEER_PORT:-23800}"
APISERVER_PORT="${BARGE_TESTBED_APISERVER_PORT:-6443}"
CONTROLLER_MANAGER_PORT="${BARGE_TESTBED_CONTROLLER_MANAGER_PORT:-10257}"
SCHEDULER_PORT="${BARGE_TESTBED_SCHEDULER_PORT:-10259}"
MINIO_PORT="${BARGE_TESTBED_MINIO_PORT:-9000}"

# Same credentials as scripts/start-minio.sh, so tests can use either server the same way.
MINIO_ACCESS_KEY=barge
MINIO_SECRET_KEY=barge-secret-key

# Every component is started with this variable in its environment, and every process it starts
# inherits it. `down` finds the testbed's processes by it: it names this state dir, so it tells
# apart two testbeds and a recycled pid, and unlike BARGE_TESTBED_DIR (exported to the user's
# shell by `up`) no process outside the testbed carries it.
OWNER_VAR=BARGE_TESTBED_OWNER

# Start order; `down` stops them all at once, so the order only matters for `up`.
COMPONENTS=(etcd minio kube-apiserver kube-controller-manager kube-scheduler node-agent containerd
  kube-proxy kubelet)

log() { echo "testbed: $*" >&2; }

pid_file() { echo "$STATE/$1.pid"; }
log_file() { echo "$STATE/$1.log"; }

# True when PID is alive and belongs to this testbed. A zombie's environ reads empty, so a
# killed-but-unreaped component counts as gone.
owned() {
  local pid="$1"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  grep -qzxF -- "$OWNER_VAR=$STATE" "/proc/$pid/environ" 2>/dev/null
}

# Pids of every live process that carries this testbed's mark: the components and anything they
# started (the node agent's pods), even when a pid file was lost. One grep over all of /proc.
owned_pids() {
  grep -lzxF -- "$OWNER_VAR=$STATE" /proc/[0-9]*/environ 2>/dev/null \
    | sed -n 's#^/proc/\([0-9]*\)/environ$#\1#p' || true
}

# start NAME CMD ARGS...: run CMD in the background as the leader of its own session (so `down`
# can signal its whole process group), with every fd redirected: a component holding `up`'s
# stdout would hang `eval "$(tests/testbed/up)"`.
start() {
  local name="$1"
  shift
  # setsid does not fork when its caller is not a group leader (a background job of a
  # non-interactive shell never is), so $! is the component's own pid and its group id.
  env "$OWNER_VAR=$STATE" setsid "$@" </dev/null >"$(log_file "$name")" 2>&1 &
  local pid=$!
  echo "$pid" >"$(pid_file "$name")"
  # Until the forked shell has exec'd, the pid carries no mark and would pass for dead (or not
  # ours) to the checks that follow; wait for that, usually milliseconds, but over a second on
  # two cores busy starting the API server (a CI run once failed "exited during startup" so).
  for _ in $(seq 1 1000); do
    if owned "$pid" || ! kill -0 "$pid" 2>/dev/null; then break; fi
    sleep 0.01
  done
}

# start_etcd BIN: etcd on its fixed ports, keeping whatever data $STATE/etcd holds (`up` wipes it
# first; `restart-etcd` does not).
# --unsafe-no-fsync: the data is thrown away on the next run anyway, and fsync is most of etcd's
# write latency on a slow disk.
start_etcd() {
  start etcd "$1/etcd" --name barge-testbed --data-dir "$STATE/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "barge-testbed=http://127.0.0.1:$ETCD_PEER_PORT" \
    --unsafe-no-fsync
}

# live_members GROUP...: the live (non-zombie) processes in these process groups. Their group
# leader was checked to be ours; a group id is not handed out again while any member lives.
live_members() {
  [[ $# -gt 0 ]] || return 0
  local list
  list="$(pgrep -d, -g "$(IFS=,; echo "$*")" || true)"
  [[ -n "$list" ]] || return 0
  ps -o pid=,stat= -p "$list" | awk '$2 !~ /^Z/ {print $1}' || true
}

# remaining KEEP GROUP...: what is still to stop: this testbed's marked processes, except those
# in the space-separated pid list KEEP (stopped later), and the live members of these groups. A
# pod the node agent started with a clean environment has lost the mark but not the group.
remaining() {
  local keep=" $1 " p
  shift
  { owned_pids; live_members "$@"; } | sort -un | while read -r p; do
    [[ "$keep" == *" $p "* ]] || echo "$p"
  done
}

# stop_set KEEP GROUP...: TERM to these process groups and to every marked process not in KEEP;
# KILL to what is left after 10 s.
stop_set() {
  local keep="$1" left=()
  shift
  mapfile -t left < <(remaining "$keep" "$@")
  [[ ${#left[@]} -gt 0 ]] || return 0
  signal_all TERM "$@" -- "${left[@]}"
  wait_gone 10 "$keep" "$@"
  mapfile -t left < <(remaining "$keep" "$@")
  [[ ${#left[@]} -gt 0 ]] || return 0
  log "still running after 10 s, sending KILL: ${left[*]}"
  signal_all KILL "$@" -- "${left[@]}"
  wait_gone 5 "$keep" "$@" # KILL cannot be ignored; this only waits for the kernel
}

# wait_gone SECONDS KEEP GROUP...: wait until nothing remains, or the time is up.
wait_gone() {
  local deadline=$((SECONDS + $1))
  shift
  while [[ -n "$(remaining "$@")" ]] && ((SECONDS < deadline)); do sleep 0.2; done
}

# Stop everything this testbed started, in three steps: the API's clients and MinIO, then
# kube-apiserver, then etcd. With etcd gone first, the API server's shutdown hangs on its
# reconnect attempts until it is killed. Quiet and successful when nothing runs.
stop_all() {
  [[ -d "$STATE" ]] || return 0
  # Arrays of at most one pid, so that a component not running adds no argument.
  local name pid pf groups=() apiserver=() etcd=() left=()
  for name in "${COMPONENTS[@]}"; do
    pf="$(pid_file "$name")"
    [[ -f "$pf" ]] || continue
    pid="$(cat "$pf")"
    # Only a live, marked leader proves the group is ours: a recycled pid could lead another's.
    owned "$pid" || continue
    case "$name" in
      kube-apiserver) apiserver=("$pid") ;;
      etcd) etcd=("$pid") ;;
      *) groups+=("$pid") ;;
    esac
  done
  mapfile -t left < <(remaining "" "${groups[@]}" "${apiserver[@]}" "${etcd[@]}")
  if [[ ${#left[@]} -gt 0 ]]; then
    log "stopping testbed in $STATE"
    stop_set "${apiserver[*]} ${etcd[*]}" "${groups[@]}"
    stop_set "${etcd[*]}" "${apiserver[@]}"
    stop_set "" "${etcd[@]}"
    mapfile -t left < <(remaining "" "${groups[@]}" "${apiserver[@]}" "${etcd[@]}")
    if [[ ${#left[@]} -gt 0 ]]; then
      log "could not stop: ${left[*]}"
      return 1
    fi
  fi
  # A real node's containers outlive the kubelet and containerd: they are stopped apart.
  kill_pods
  unmount_node
  rm -f "$STATE"/*.pid
}

# signal_all SIG GROUP_LEADERS... -- PIDS...
signal_all() {
  local sig="$1" p
  shift
  while [[ $# -gt 0 && "$1" != "--" ]]; do
    # The group first, so the leader's children get the signal even if the leader dies at once.
    kill "-$sig" -- "-$1" 2>/dev/null || true
    kill "-$sig" -- "$1" 2>/dev/null || true
    shift
  done
  [[ $# -gt 0 ]] && shift
  for p in "$@"; do kill "-$sig" -- "$p" 2>/dev/null || true; done
}

# shellcheck source-path=SCRIPTDIR source=node.sh
source "$TESTBED_HERE/node.sh"
