# syntax=docker/dockerfile:1.7
# The Barge operator (crate barge-operator). Two routes build this one file (docker/README.md):
#   docker build -f docker/operator.Dockerfile -t ghcr.io/barge-dev/barge-operator:0.1.0 .
#   scripts/build-images.sh    # no registry: the `build` stage is laid out on this machine
# Either way the image holds what docker/rootfs.sh lists, on `scratch`.
ARG VERSION=0.1.0
ARG REVISION=unknown

# ---- build --------------------------------------------------------------------------------------
FROM rust:1.95-bookworm AS build
WORKDIR /src
# The whole workspace: Cargo resolves every member's manifest even when building one package.
COPY . .
# Registry and target caches survive between builds (BuildKit); the binary is laid out of the
# cached target folder within the same step, since cache mounts are not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p barge-operator \
 && docker/rootfs.sh barge-operator target/release/barge-operator /rootfs

# ---- runtime ------------------------------------------------------------------------------------
FROM scratch
ARG VERSION
ARG REVISION
COPY --from=build /rootfs/ /
LABEL org.opencontainers.image.title="barge-operator" \
      org.opencontainers.image.description="Barge's BatchJob operator" \
      org.opencontainers.image.source="https://github.com/barge-dev/barge" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/barge-operator"]
