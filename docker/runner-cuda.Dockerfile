# syntax=docker/dockerfile:1.7
# The Barge runner for NVIDIA GPUs (candle's CUDA backend, feature `cuda`, plus OpenBLAS for the
# CPU path). Two routes build this one file (docker/README.md):
#   docker build -f docker/runner-cuda.Dockerfile -t ghcr.io/barge-dev/barge-runner-cuda:0.1.0 .
#   scripts/build-images.sh --cuda    # no registry: the `build` stage is laid out on this machine
# Either way the image holds what docker/rootfs.sh lists, on `scratch`, plus the CUDA runtime
# libraries the runner loads (cudart, cuBLAS, cuBLASLt, cuRAND, NVRTC) from NVIDIA's PyPI wheels.
# The node provides the driver (libcuda.so.1, mounted by the NVIDIA container toolkit); it must
# support CUDA 13.4. See docs/cuda.md.
ARG VERSION=0.1.0
ARG REVISION=unknown

# ---- build --------------------------------------------------------------------------------------
FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libopenblas-dev python3-pip binutils \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# scripts/build-cuda.sh installs nvcc and the libraries from PyPI and builds the runner; the same
# rootfs.sh as the other images lays out the result.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/root/.cache/barge,sharing=locked \
    bin="$(scripts/build-cuda.sh | tail -n 1)" \
 && lib="$(ls -d /root/.cache/barge/cuda/*/site/nvidia/cu13/lib | tail -n 1)" \
 && docker/rootfs.sh barge-runner-cuda "$bin" /rootfs "$lib/libcudart.so.13" "$lib/libcublas.so.13" \
      "$lib/libcublasLt.so.13" "$lib/libcurand.so.10" "$lib/libnvrtc.so.13" \
      "$lib/libnvrtc-builtins.so.13.4"

# ---- runtime ------------------------------------------------------------------------------------
FROM scratch
ARG VERSION
ARG REVISION
COPY --from=build /rootfs/ /
LABEL org.opencontainers.image.title="barge-runner-cuda" \
      org.opencontainers.image.description="Barge's batch inference runner (NVIDIA GPUs, CUDA 13.4)" \
      org.opencontainers.image.source="https://github.com/barge-dev/barge" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
ENV HOME=/home/nonroot \
    XDG_CACHE_HOME=/home/nonroot/.cache \
    LD_LIBRARY_PATH=/usr/local/lib \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 65532:65532
WORKDIR /home/nonroot
ENTRYPOINT ["/usr/local/bin/barge-runner"]
