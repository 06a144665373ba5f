# syntax=docker/dockerfile:1.7
# The Barge runner for NVIDIA GPUs (candle's CUDA backend, feature `cuda`).
# Build from the repository root (no GPU needed to build):
#   docker build -f docker/runner-cuda.Dockerfile -t ghcr.io/barge-dev/barge-runner:0.1.0-cuda .
# Nodes need an NVIDIA driver that supports CUDA_VERSION (525 or newer for 12.x through minor
# version compatibility) and the NVIDIA container toolkit / device plugin.

ARG CUDA_VERSION=12.6.3
ARG UBUNTU_VERSION=22.04

# ---- build --------------------------------------------------------------------------------------
FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu${UBUNTU_VERSION} AS builder
# candle compiles its kernels with nvcc for one compute capability and cannot ask a GPU during
# `docker build`. Its kernels are PTX, which newer GPUs JIT-compile: 80 (A100) also runs on
# L4 (89) and H100 (90). Set 90 for an H100-only image, 75 for T4.
ARG CUDA_COMPUTE_CAP=80
ARG RUST_VERSION=1.95.0
# cudarc links libcuda dynamically; at build time the toolkit's stub stands in for the driver's
# library (LIBRARY_PATH), which the NVIDIA container runtime mounts into the pod at run time.
ENV CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP} \
    RUSTUP_HOME=/usr/local/rustup \
    CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:/usr/local/cuda/bin:${PATH} \
    CUDA_ROOT=/usr/local/cuda \
    LIBRARY_PATH=/usr/local/cuda/lib64/stubs
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ca-certificates curl build-essential pkg-config \
 && rm -rf /var/lib/apt/lists/* \
 && curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs \
      | sh -s -- -y --no-modify-path --profile minimal --default-toolchain "${RUST_VERSION}"
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p barge-runner --features cuda \
 && install -D -m 0755 target/release/barge-runner /out/barge-runner

# ---- runtime ------------------------------------------------------------------------------------
# The `runtime` flavour carries cuBLAS, cuRAND and NVRTC, which candle loads; `base` does not.
FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu${UBUNTU_VERSION}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 65532 nonroot \
 && useradd --uid 65532 --gid 65532 --create-home --home-dir /home/nonroot \
      --shell /usr/sbin/nologin nonroot
COPY --from=builder /out/barge-runner /usr/local/bin/barge-runner
ENV HOME=/home/nonroot \
    XDG_CACHE_HOME=/home/nonroot/.cache \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 65532:65532
WORKDIR /home/nonroot
ENTRYPOINT ["/usr/local/bin/barge-runner"]
