#!/usr/bin/env bash
# Builds barge-runner with CUDA (plus OpenBLAS for its CPU path) on a machine with no GPU and no
# system CUDA: nvcc, headers and libraries come from NVIDIA's PyPI wheels, cached by version.
#   scripts/build-cuda.sh               builds; the binary's path is the last line on stdout
#   scripts/build-cuda.sh -- CMD ARGS   runs CMD in the same build environment instead, e.g.
#     scripts/build-cuda.sh -- cargo clippy --workspace --all-targets --release \
#       --features barge-runner/cuda,barge-runner/openblas -- -D warnings
# Progress goes to stderr. Everything lands under $BARGE_CACHE (default ~/.cache/barge): the
# toolkit in cuda/<version>/, the build in target-cuda/ (or $BARGE_CUDA_TARGET_DIR; never the CPU
# build's target dir, see cuda-rustc-wrapper.sh for why the two must not mix).
#
# The binary needs at run time: libcudart.so.13 to start (found through its RUNPATH when built
# here, else on the library path); for a GPU, also an NVIDIA driver that supports CUDA 13.4 and
# libcublas/libcublasLt/libcurand/libnvrtc 13 on the library path. See docs/cuda.md.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${BARGE_CACHE:-$HOME/.cache/barge}"
# cuda-toolkit is NVIDIA's meta-package: it pins every component wheel to one CUDA release.
# 13.4 is the newest release cudarc 0.19.10 (candle 0.11's) knows; with a newer nvcc its build
# script would need CUDARC_CUDA_VERSION to claim 13.4 anyway.
TOOLKIT_VERSION=13.4.3
CUDARC_VERSION=13040
TOOLKIT="$CACHE/cuda/$TOOLKIT_VERSION"
ROOT="$TOOLKIT/site/nvidia/cu13"

log() { echo "build-cuda: $*" >&2; }

# TOOLKIT only ever appears complete (built in a temporary folder, then renamed), so its
# existence means done.
if [[ ! -d "$TOOLKIT" ]]; then
  mkdir -p "$CACHE/cuda"
  TMP="$(mktemp -d "$CACHE/cuda/.install-$TOOLKIT_VERSION.XXXXXX")"
  chmod 755 "$TMP" # mktemp's 0700 would hide the toolkit from other users of the cache
  trap 'rm -rf "$TMP"' EXIT
  log "installing CUDA $TOOLKIT_VERSION (nvcc, cudart, cccl, cuBLAS, cuRAND, NVRTC) from PyPI ..."
  python3 -m pip install --quiet --disable-pip-version-check --no-compile --target "$TMP/site" \
    "cuda-toolkit[nvcc,cudart,cccl,cublas,curand,nvrtc]==$TOOLKIT_VERSION" >&2
  # The wheels ship only versioned sonames (libcublas.so.13); the linker's -lcublas wants the
  # bare name. Relative links, so the rename below keeps them valid.
  mkdir "$TMP/link"
  for lib in cudart cublas cublasLt curand nvrtc; do
    real="$(cd "$TMP/site/nvidia/cu13/lib" && ls "lib$lib.so."[0-9]*)"
    ln -s "../site/nvidia/cu13/lib/$real" "$TMP/link/lib$lib.so"
  done
  # candle makes cudarc print -lcuda, so the link needs *a* libcuda.so; the driver's own is not
  # on a machine without a GPU. This one is empty on purpose: cudarc is built to dlopen the
  # driver (cuda-rustc-wrapper.sh), so nothing may bind to it, and a build that tried would fail
  # to link instead of producing a binary that needs a driver to start. Never shipped.
  gcc -shared -Wl,-soname,libcuda.so.1 -o "$TMP/link/libcuda.so" -x c /dev/null
  mv "$TMP" "$TOOLKIT"
  trap - EXIT
fi

# OpenBLAS: the CUDA binary's CPU path is the same fast one as the CPU build's.
if ! ldconfig -p | grep 'libopenblas\.so ' >/dev/null; then
  log "installing libopenblas-dev ..."
  apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libopenblas-dev >&2
fi

export CUDA_ROOT="$ROOT"            # cudarc's link search
export NVCC="$ROOT/bin/nvcc"        # candle-kernels' build script (cudaforge)
export PATH="$ROOT/bin:$PATH"
export CUDARC_CUDA_VERSION="$CUDARC_VERSION"
# One build for the GPUs users rent: A100 (sm_80), L4/L40S (sm_89), H100/H200 (sm_90).
# candle-kernels takes a single compute capability (CUDA_COMPUTE_CAP, no list) for two kinds of
# kernels. Most are PTX, loaded through the driver, which JIT-compiles PTX for compute_80 to any
# GPU of capability 8.0 or newer on first load (and caches it): 80 serves all three; 89 or 90
# would drop the A100 (and 90 means sm_90a, usable on Hopper only). The rest (GGUF matmul and
# MoE kernels) go into a static library compiled to sm_80 machine code, which runs on 8.x GPUs
# (A100, L4, L40S) but not on 9.0; NVCC_APPEND_FLAGS embeds their compute_80 PTX as well, so the
# driver can JIT them on an H100/H200. (nvcc reads that variable on every call, the PTX-only ones
# included, where the extra target is the same one and harmless.) Adding sm_90 machine code
# instead would double the longest part of the build for kernels the runner does not use today.
export CUDA_COMPUTE_CAP=80
export NVCC_APPEND_FLAGS="-gencode=arch=compute_80,code=compute_80"
export LIBRARY_PATH="$TOOLKIT/link${LIBRARY_PATH:+:$LIBRARY_PATH}"
export RUSTC_WRAPPER="$PWD/scripts/cuda-rustc-wrapper.sh"
export CARGO_TARGET_DIR="${BARGE_CUDA_TARGET_DIR:-$CACHE/target-cuda}"

if [[ "${1:-}" == -- ]]; then
  shift
  exec "$@"
fi

log "building barge-runner --features cuda,openblas into $CARGO_TARGET_DIR (cold: ~25 min on 2 cores) ..."
# The binary's RUNPATH names the cached toolkit's libraries: built here, it finds libcudart (and,
# on a GPU, cuBLAS & co.) without LD_LIBRARY_PATH; elsewhere that folder is absent and the usual
# library path applies. `cargo rustc` gives the link flag to the binary alone: in RUSTFLAGS it
# would change every crate's fingerprint, and a build without it would rebuild them all.
cargo rustc --release --locked -p barge-runner --bin barge-runner \
  --features barge-runner/cuda,barge-runner/openblas -- -C "link-arg=-Wl,-rpath,$ROOT/lib" >&2
BUILT="$CARGO_TARGET_DIR/release/barge-runner"
NEEDED="$(readelf -d "$BUILT" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | tr '\n' ' ')"
log "needs: $NEEDED"
if [[ " $NEEDED " == *" libcuda.so"* ]]; then
  log "error: the binary links libcuda, so it cannot start without an NVIDIA driver."
  log "cudarc was compiled without cuda-rustc-wrapper.sh; rebuild it: cargo clean -p cudarc"
  exit 1
fi
# A CPU build into the same target dir (cargo test, say) puts its own barge-runner in release/,
# and cargo may not put this one back when nothing of it changed.
if [[ " $NEEDED " != *" libcudart.so"* ]]; then
  log "error: $BUILT is not the CUDA build; touch runner/src/main.rs and run this again"
  exit 1
fi
# So the CUDA binary gets a place of its own.
BIN="$CARGO_TARGET_DIR/cuda/barge-runner"
mkdir -p "$(dirname "$BIN")"
cp -p "$BUILT" "$BIN"
echo "$BIN"
