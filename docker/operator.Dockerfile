# syntax=docker/dockerfile:1.7
# The Barge operator (crate barge-operator). Build from the repository root:
#   docker build -f docker/operator.Dockerfile -t ghcr.io/barge-dev/barge-operator:0.1.0 .

# ---- build --------------------------------------------------------------------------------------
FROM rust:1.95-bookworm AS builder
WORKDIR /src
# The whole workspace: Cargo resolves every member's manifest even when building one package.
COPY . .
# Registry and target caches survive between builds (BuildKit); the binary is copied out of the
# cached target folder within the same step, since cache mounts are not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p barge-operator \
 && install -D -m 0755 target/release/barge-operator /out/barge-operator

# ---- runtime ------------------------------------------------------------------------------------
FROM debian:bookworm-slim
# CA roots for TLS (the API server's own CA comes from the ServiceAccount mount).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 65532 nonroot \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin nonroot
COPY --from=builder /out/barge-operator /usr/local/bin/barge-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/barge-operator"]
