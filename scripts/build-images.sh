#!/usr/bin/env bash
# Build Barge's container images from this checkout with no registry access: the operator, the
# CPU runner (OpenBLAS) and, with --cuda, the CUDA runner.
#
#   scripts/build-images.sh [--cuda] [--push REGISTRY]
#
# Each image is `scratch` plus what docker/rootfs.sh lays out (binary, its shared libraries, CA
# roots, user 65532), built by `buildah bud` from the same docker/*.Dockerfile that an ordinary
# machine builds with public base images: here the Dockerfile's `build` stage is replaced by the
# folder rootfs.sh made on this machine (`--build-context build=DIR`), so no base image is pulled.
#
# The images go into local container storage (buildah/podman, as ghcr.io/barge-dev/NAME:VERSION)
# and into OCI archives under $BARGE_CACHE/images/; stdout carries one archive path per line.
# $BARGE_CACHE/images/refs.env names the images built last (BARGE_OPERATOR_IMAGE=REF, …) for
# scripts that import them. --push REGISTRY also pushes them as REGISTRY/NAME:VERSION (buildah's registry credentials, e.g.
# `buildah login REGISTRY` first). Progress goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."

cuda=0
push=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --cuda) cuda=1 ;;
    --push)
      [[ $# -ge 2 ]] || { echo "$0: --push needs a registry, e.g. --push registry.example.com/barge" >&2; exit 2; }
      push="${2%/}"
      shift
      ;;
    *)
      echo "usage: $0 [--cuda] [--push REGISTRY]" >&2
      exit 2
      ;;
  esac
  shift
done

export BARGE_CACHE="${BARGE_CACHE:-$HOME/.cache/barge}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$BARGE_CACHE/target}"
log() { echo "build-images: $*" >&2; }

for tool in buildah ldd dpkg; do
  if ! command -v "$tool" >/dev/null; then
    log "$tool not found; installing buildah with apt-get"
    { apt-get install -y buildah || { apt-get update && apt-get install -y buildah; }; } >&2
    break
  fi
done

VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)"
REVISION="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
if [[ -n "$(git status --porcelain 2>/dev/null)" ]]; then REVISION="$REVISION-dirty"; fi
REPOSITORY=ghcr.io/barge-dev
OUT="$BARGE_CACHE/images"
mkdir -p "$OUT"

# The same build as scripts/test.sh's (features included), so neither rebuilds for the other.
FEATURES="$(scripts/features.sh)"
if [[ -z "$FEATURES" ]]; then
  log "libopenblas is not installed (Debian/Ubuntu: apt-get install libopenblas-dev)"
  exit 1
fi
log "building the binaries (release)"
# shellcheck disable=SC2086
cargo build --release --workspace --bins $FEATURES >&2

REFS="$OUT/refs.env"
: >"$REFS.tmp"

# image NAME DOCKERFILE BINARY [LIBRARY...]: build one image and write its archive.
image() {
  local name="$1" dockerfile="$2" binary="$3" work ref archive
  shift 3
  ref="$REPOSITORY/$name:$VERSION"
  archive="$OUT/$name-$VERSION.oci.tar"
  work="$(mktemp -d "$OUT/.$name.XXXXXX")"
  # The Dockerfile's final stage reads only `build`; its main context stays empty.
  mkdir -p "$work/context"
  docker/rootfs.sh "$name" "$binary" "$work/build/rootfs" "$@"
  log "building $ref"
  buildah bud --quiet --layers=false -f "$dockerfile" --build-context "build=$work/build" \
    --build-arg "VERSION=$VERSION" --build-arg "REVISION=$REVISION" -t "$ref" "$work/context" >&2
  rm -rf "$work"
  rm -f "$archive"
  buildah push --quiet "$ref" "oci-archive:$archive:$ref" >&2
  log "$ref: $(du -m "$archive" | cut -f1) MB archive ($(buildah images --format '{{.Size}}' "$ref") unpacked)"
  if [[ -n "$push" ]]; then
    log "pushing $push/$name:$VERSION"
    buildah push --quiet "$ref" "docker://$push/$name:$VERSION" >&2
  fi
  # barge-runner-cuda -> BARGE_RUNNER_CUDA_IMAGE
  printf '%s_IMAGE=%q\n' "$(echo "$name" | tr 'a-z-' 'A-Z_')" "$ref" >>"$REFS.tmp"
  echo "$archive"
}

BIN="$CARGO_TARGET_DIR/release"
image barge-operator docker/operator.Dockerfile "$BIN/barge-operator"
image barge-runner docker/runner.Dockerfile "$BIN/barge-runner"
if [[ $cuda -eq 1 ]]; then
  # The CUDA build prints its binary last. The CUDA libraries it loads at run time (candle opens
  # cuBLAS, cuRAND and NVRTC; NVRTC opens its builtins) come from the same wheels.
  cuda_bin="$(scripts/build-cuda.sh | tail -n 1)"
  cuda_lib_dir="$(ls -d "$BARGE_CACHE"/cuda/*/site/nvidia/cu13/lib | tail -n 1)"
  cuda_libs=()
  for name in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13 \
    libnvrtc-builtins.so.13.4; do
    cuda_libs+=("$cuda_lib_dir/$name")
  done
  image barge-runner-cuda docker/runner-cuda.Dockerfile "$cuda_bin" "${cuda_libs[@]}"
fi
mv -f "$REFS.tmp" "$REFS"
