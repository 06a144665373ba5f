# syntax=docker/dockerfile:1.7
# The Barge runner (crate barge-runner) for CPU nodes, with OpenBLAS for the fast CPU path.
# Build from the repository root:
#   docker build -f docker/runner.Dockerfile -t ghcr.io/barge-dev/barge-runner:0.1.0 .

# ---- build --------------------------------------------------------------------------------------
FROM rust:1.95-bookworm AS builder
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libopenblas-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# runner/build.rs links the system's libopenblas when the `openblas` feature is on.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p barge-runner --features openblas \
 && install -D -m 0755 target/release/barge-runner /out/barge-runner

# ---- runtime ------------------------------------------------------------------------------------
FROM debian:bookworm-slim
# libopenblas0: the shared library the binary was linked against (libopenblas.so.0);
# ca-certificates: TLS to S3.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ca-certificates libopenblas0 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 65532 nonroot \
 && useradd --uid 65532 --gid 65532 --create-home --home-dir /home/nonroot \
      --shell /usr/sbin/nologin nonroot
COPY --from=builder /out/barge-runner /usr/local/bin/barge-runner
# Models fetched from S3 are cached under $XDG_CACHE_HOME/barge (the operator mounts a volume
# there, since runner pods have a read-only root filesystem).
ENV HOME=/home/nonroot \
    XDG_CACHE_HOME=/home/nonroot/.cache
USER 65532:65532
WORKDIR /home/nonroot
ENTRYPOINT ["/usr/local/bin/barge-runner"]
