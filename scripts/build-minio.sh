#!/usr/bin/env bash
# Build a pinned MinIO server from its Go module into the Barge cache.
# Prints the binary path on stdout; progress goes to stderr.
set -euo pipefail

# Pinned pseudo-version (what the Go proxy resolved as @latest when this was written).
MINIO_VERSION="${MINIO_VERSION:-v0.0.0-20260212201848-7aac2a2c5b7c}"

CACHE="${BARGE_CACHE:-$HOME/.cache/barge}"
BIN="$CACHE/bin/minio-$MINIO_VERSION"

if [[ -x "$BIN" ]]; then
  echo "$BIN"
  exit 0
fi

# Keep module + build caches in the Barge cache so CI can persist and reuse them.
export GOPATH="$CACHE/go" GOMODCACHE="$CACHE/go/pkg/mod" GOCACHE="$CACHE/go/build"
# -modcacherw: Go makes the module cache read-only by default, which breaks `rm -rf` of the cache.
export GOFLAGS="${GOFLAGS:-} -trimpath -modcacherw" CGO_ENABLED=0
# `go install` with an explicit version ignores any enclosing go.mod (we are in a Rust repo anyway).
# Install into a temp dir next to $BIN so the final mv is an atomic rename.
mkdir -p "$CACHE/bin"
export GOBIN
GOBIN="$(mktemp -d "$CACHE/bin/.minio-build.XXXXXX")"
trap 'rm -rf "$GOBIN"' EXIT

echo "building github.com/minio/minio@$MINIO_VERSION (cold build takes several minutes)..." >&2
go install "github.com/minio/minio@$MINIO_VERSION" >&2

# Atomic publish: a half-built binary never appears at $BIN.
mv -f "$GOBIN/minio" "$BIN"
echo "$BIN"
