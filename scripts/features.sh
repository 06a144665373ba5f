#!/usr/bin/env bash
# Prints the cargo feature flags for this machine: OpenBLAS when its library is installed
# (Debian: libopenblas-dev), the fast CPU path; nothing otherwise.
set -euo pipefail
# grep reads all of ldconfig's output (no -q): with pipefail, an early exit would SIGPIPE
# ldconfig and fail the test at random.
if ldconfig -p 2>/dev/null | grep 'libopenblas\.so ' >/dev/null; then
  echo "--features barge-runner/openblas"
fi
