# syntax=docker/dockerfile:1.7
# The Barge runner (crate barge-runner) for CPU nodes, with OpenBLAS for the fast CPU path. Two
# routes build this one file (docker/README.md):
#   docker build -f docker/runner.Dockerfile -t ghcr.io/barge-dev/barge-runner:0.1.0 .
#   scripts/build-images.sh    # no registry: the `build` stage is laid out on this machine
# Either way the image holds what docker/rootfs.sh lists, on `scratch`.
ARG VERSION=0.1.0
ARG REVISION=unknown

# ---- build --------------------------------------------------------------------------------------
FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libopenblas-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# runner/build.rs links the system's libopenblas when the `openblas` feature is on; rootfs.sh
# copies it (and libgfortran) into the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p barge-runner --features openblas \
 && docker/rootfs.sh barge-runner target/release/barge-runner /rootfs

# ---- runtime ------------------------------------------------------------------------------------
FROM scratch
ARG VERSION
ARG REVISION
COPY --from=build /rootfs/ /
LABEL org.opencontainers.image.title="barge-runner" \
      org.opencontainers.image.description="Barge's batch inference runner (CPU, OpenBLAS)" \
      org.opencontainers.image.source="https://github.com/barge-dev/barge" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
# Models fetched from S3 are cached under $XDG_CACHE_HOME/barge: runner pods have a read-only
# root, so the operator mounts a volume there.
ENV HOME=/home/nonroot \
    XDG_CACHE_HOME=/home/nonroot/.cache
USER 65532:65532
WORKDIR /home/nonroot
ENTRYPOINT ["/usr/local/bin/barge-runner"]
