#!/usr/bin/env bash
# RUSTC_WRAPPER for CUDA builds (set by scripts/build-cuda.sh): compiles the cudarc crate in its
# dlopen mode, everything else unchanged.
#
# Why: candle-core turns on cudarc's `dynamic-linking` feature, which links the binary against
# libcuda.so.1, the driver. A binary with DT_NEEDED libcuda.so.1 does not even start on a machine
# without an NVIDIA driver, so one CUDA build could not also serve CPU nodes. cudarc's own
# `dynamic-loading` feature cannot be added by feature unification: its build script refuses
# both at once. But its sources only ask `cfg(feature = "dynamic-loading")`, so setting that cfg
# on cudarc's compilation alone makes it dlopen libcuda, cuBLAS, cuRAND and NVRTC when a CUDA
# device is first created. The link lines the build script still prints then bind nothing, and
# rustc's --as-needed drops them from the binary (build-cuda.sh checks this with readelf).
set -euo pipefail
args=("$@")
for ((i = 0; i + 1 < ${#args[@]}; i++)); do
  if [[ "${args[i]}" == --crate-name && "${args[i + 1]}" == cudarc ]]; then
    exec "${args[@]}" --cfg 'feature="dynamic-loading"'
  fi
done
exec "${args[@]}"
