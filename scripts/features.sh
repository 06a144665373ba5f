#!/usr/bin/env bash
# Prints the cargo feature flags for this machine: OpenBLAS when its library is installed
# (Debian: libopenblas-dev), the fast CPU path; nothing otherwise.
set -euo pipefail
if ldconfig -p 2>/dev/null | grep -q 'libopenblas\.so '; then
  echo "--features barge-runner/openblas"
fi
