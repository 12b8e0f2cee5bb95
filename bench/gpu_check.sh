#!/usr/bin/env bash
# Prepares the GPU run of bench/gpu_check.py (issue #26) and prints what to run there.
#
#   bash bench/gpu_check.sh
#
# The GPU machine has no network; torch, transformers, peft and accelerate are installed there. This
# puts into build/gpu-carry (ignored by git, so it must be carried):
#   wheels/      trl (the version installed here), datasets, bitsandbytes: pip download --no-deps
#   wheels-peer/ trl==1.12.0 for section d's peer (installed there into its own --target folder)
#   align-cache/ SmolLM2-135M-Instruct's config and tokenizer (no weights: gpu_check draws random ones of
#                its shape there), the source of every random_like model
# and checks that it all stays under 64 MiB (what a run may carry).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
CARRY=build/gpu-carry
LIMIT_MIB=64
PEER_TRL=1.12.0
rm -rf "$CARRY" && mkdir -p "$CARRY/wheels" "$CARRY/wheels-peer" "$CARRY/align-cache/models"

version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
TRL=$(version trl); DATASETS=$(version datasets); BNB=$(version bitsandbytes)
"$PY" -m pip download --quiet --no-deps --only-binary=:all: -d "$CARRY/wheels" \
  "trl==$TRL" "datasets==$DATASETS" "bitsandbytes==$BNB"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: -d "$CARRY/wheels-peer" "trl==$PEER_TRL"

# the SmolLM2 source without its weights (config, tokenizer, generation config)
SRC=$(HF_HUB_OFFLINE=1 "$PY" -c "from align.core import modeling; print(modeling.resolve_model_path('smollm2-135m-instruct'))")
DEST="$CARRY/align-cache/models/smollm2-135m-instruct"
mkdir -p "$DEST"
find "$SRC" -maxdepth 1 -type f ! -name '*.safetensors' ! -name '*.bin' ! -name '*.gguf' -exec cp {} "$DEST/" \;

TOTAL=$(du -sb "$CARRY" | cut -f1)
ls -l "$CARRY/wheels" "$CARRY/wheels-peer"
echo "# build/gpu-carry: $((TOTAL / 1024)) KiB (limit ${LIMIT_MIB} MiB)"
if [ "$TOTAL" -ge $((LIMIT_MIB * 1024 * 1024)) ]; then
  echo "# too big to carry: $((TOTAL / 1048576)) MiB >= ${LIMIT_MIB} MiB" >&2
  exit 1
fi

cat <<MSG

# On the GPU machine (one H100), from the repository root; carry: build/gpu-carry
# time limit: 600 s (the sections' budgets add up to 470 s, plus start-up)
python -m pip install --no-deps --no-index build/gpu-carry/wheels/*.whl \\
 && python -m pip install --no-deps --no-index --target build/gpu-carry/trl112 build/gpu-carry/wheels-peer/*.whl \\
 && ALIGN_CACHE=\$PWD/build/gpu-carry/align-cache GPU_CHECK_TRL_DIR=\$PWD/build/gpu-carry/trl112 HF_HUB_OFFLINE=1 \\
    python -m bench.gpu_check --out "\${OUT:-bench/results}" --workdir /tmp/gpu-check
# writes gpu-<device>.json under \$OUT (what comes back; copy it to bench/results) and prints the table
MSG
