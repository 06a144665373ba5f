#!/usr/bin/env bash
# Python venv for llama.cpp reference tooling (llama-cpp-python, built from
# the PyPI sdist for this CPU). Prints the venv's python path on stdout;
# progress on stderr. Idempotent: returns at once when the venv is complete.
#
# usage: PY=$(scripts/reference/llama-venv.sh) && "$PY" scripts/reference/...
#
# AMX is compiled out: -march=native enables it on Sapphire Rapids, but VMs
# (e.g. Firecracker) often do not grant the AMX tile state and the first
# matmul dies with SIGILL (tilezero). -mno-amx-* wins over -march=native in gcc.
set -euo pipefail

LLAMA_CPP_PYTHON=0.3.36
CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=ON}"
NO_AMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
CACHE="${BARGE_CACHE:-$HOME/.cache/barge}"
VENV="$CACHE/refvenv"
PY="$VENV/bin/python"
MARKER="$VENV/.barge-complete-$LLAMA_CPP_PYTHON-$(echo "$CMAKE_ARGS $NO_AMX" | md5sum | cut -c1-8)"

# The marker is written last, so a half-installed venv is rebuilt, not trusted.
if [[ -f "$MARKER" ]]; then
  echo "$PY"
  exit 0
fi

rm -rf "$VENV"
mkdir -p "$CACHE"
echo "creating $VENV (builds llama.cpp from source: ~20 min on 2 cores) ..." >&2
python3 -m venv "$VENV"
PIP=("$PY" -m pip --disable-pip-version-check --quiet)
"${PIP[@]}" install --upgrade pip >&2
"${PIP[@]}" install "numpy==2.2.6" "jinja2==3.1.6" "diskcache==5.6.3" "typing-extensions==4.16.0" >&2
# --no-cache-dir: never reuse a wheel built earlier with other flags.
CMAKE_ARGS="$CMAKE_ARGS" CFLAGS="$NO_AMX" CXXFLAGS="$NO_AMX" \
CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
  "${PIP[@]}" install --no-cache-dir --no-binary llama-cpp-python "llama-cpp-python==$LLAMA_CPP_PYTHON" >&2

touch "$MARKER"
echo "$PY"
