#!/usr/bin/env bash
# The one list of what each Barge image holds. Lays out an image's root filesystem from a built
# binary and the Debian system it was built on:
#
#   docker/rootfs.sh IMAGE BINARY OUT [LIBRARY...]
#
# IMAGE is barge-operator, barge-runner or barge-runner-cuda; OUT must not exist yet. Extra
# LIBRARY paths are libraries the binary loads at run time (dlopen), which `ldd` cannot see: they
# go to /usr/local/lib, which the image puts on LD_LIBRARY_PATH.
#
# Both image routes run this script, so they cannot drift apart: scripts/build-images.sh runs it on
# the build machine and hands OUT to `buildah bud` as the Dockerfile's `build` stage; on a machine
# with public base images, the Dockerfiles run it inside their own `build` stage. Either way the
# final image is `FROM scratch` plus OUT: the binary, its ELF interpreter and shared libraries
# (with the Debian copyright files of the packages they come from), CA roots, and a non-root user.
set -euo pipefail

if [[ $# -lt 3 ]]; then
  echo "usage: $0 IMAGE BINARY OUT [LIBRARY...]" >&2
  exit 2
fi
image="$1" binary="$2" out="$3"
shift 3
extra_libs=("$@")

case "$image" in
  barge-operator | barge-runner | barge-runner-cuda) ;;
  *)
    echo "$0: unknown image '$image' (barge-operator, barge-runner or barge-runner-cuda)" >&2
    exit 2
    ;;
esac
[[ -x "$binary" ]] || { echo "$0: $binary is not an executable" >&2; exit 1; }
[[ ! -e "$out" ]] || { echo "$0: $out exists; give a new folder" >&2; exit 1; }

# The uid and gid every Barge pod runs as (operator/src/runner_pod.rs: RUNNER_UID; the chart's
# securityContext): distroless' `nonroot`.
NONROOT=65532
# Runner pods mount a writable volume here (the model cache) over the read-only root.
HOME_DIR=/home/nonroot

mkdir -p "$out"
out="$(cd "$out" && pwd)"

# copy_file SRC [DEST]: SRC's content (links followed) at DEST (default: the same path) in OUT.
copy_file() {
  local src="$1" dest="${2:-$1}"
  install -D -m "$(stat -L -c %a "$src")" "$src" "$out$dest"
}

# Debian packages whose files went in: their copyright files go in too, as Debian's licences ask.
declare -A packages=()
note_package() {
  local pkg
  # dpkg knows a file by the path its package installed, which may be behind /etc/alternatives.
  pkg="$(dpkg -S "$1" 2>/dev/null || dpkg -S "$(readlink -f "$1")" 2>/dev/null || true)"
  pkg="${pkg%%:*}"
  [[ -n "$pkg" ]] && packages["$pkg"]=1
  return 0
}

# copy_elf FILE: FILE plus everything the dynamic loader maps for it, each at the path the loader
# resolved on this system (the image's loader finds them at the same place).
copy_elf() {
  local file="$1" lib
  # `ldd` prints `name => /path (addr)` for libraries and `/path (addr)` for the interpreter.
  while read -r lib; do
    copy_file "$lib"
    note_package "$lib"
  done < <(ldd "$file" | sed -n 's#^\s*\(.* => \)\?\(/[^ ]*\) (0x.*#\2#p')
}

install -D -m 0755 "$binary" "$out/usr/local/bin/$image"
# The release profile keeps debug info for profiling; the image needs none of it (symbols stay,
# so panics still name their functions).
strip --strip-debug "$out/usr/local/bin/$image"
copy_elf "$binary"
for lib in "${extra_libs[@]}"; do
  copy_file "$lib" "/usr/local/lib/$(basename "$lib")"
  note_package "$lib"
  copy_elf "$lib"
done
# The CUDA image's binary names itself barge-runner, like the CPU one: pods run the same args.
if [[ "$image" == barge-runner-cuda ]]; then
  mv "$out/usr/local/bin/$image" "$out/usr/local/bin/barge-runner"
fi

# TLS roots: S3 (AWS or any HTTPS endpoint) from the runners; the API server's own CA comes from
# the ServiceAccount mount.
copy_file /etc/ssl/certs/ca-certificates.crt
note_package /usr/share/ca-certificates
for pkg in "${!packages[@]}"; do
  if [[ -f "/usr/share/doc/$pkg/copyright" ]]; then copy_file "/usr/share/doc/$pkg/copyright"; fi
done

# Users: root for files, nonroot for the process. No shell, no login.
mkdir -p "$out/etc"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%d:%d:nonroot:%s:/sbin/nologin\n' \
  "$NONROOT" "$NONROOT" "$HOME_DIR" >"$out/etc/passwd"
printf 'root:x:0:\nnonroot:x:%d:\n' "$NONROOT" >"$out/etc/group"
install -d -m 1777 "$out/tmp"
install -d -m 0755 -o "$NONROOT" -g "$NONROOT" "$out$HOME_DIR" "$out$HOME_DIR/.cache"
