#!/usr/bin/env bash
# LoRA-Gen with quantized edge weights: score LoRA-Gen and the other-task control on the unseen tasks
# with each shipped edge model's weights as a quantized artifact of the backend stores them (`loragen eval
# --weight-encoding E`, generated LoRAs merged in full precision and then quantized, as a merged
# bundle is): docs/eval/<preset>-unseen-<E>.json, rendered into docs/results.md's quantized-accuracy
# table beside the fp32 report of scripts/make-results.sh. Two evaluations run side by side, one
# thread each.
# Usage: bash scripts/make-quant-results.sh [WORKDIR] [PRESET...]   (default: tiny-llama tiny-gemma)
DEFAULT_PRESETS=(tiny-llama tiny-gemma)
source "$(dirname "$0")/preset-args.sh"
ENCODINGS=(ort-int8-b128 xnnpack-int8-pc coreml-int8-pc ort-int4-b32 xnnpack-int4-g32 coreml-int4-b32)
export OMP_NUM_THREADS=1
mkdir -p "$W"
for S in train unseen; do
  [ -f "$W/$S.jsonl" ] || $LORAGEN data make --suite all --split $S --out "$W/$S.jsonl" --seed 0
done
jobs=()
for P in "${PRESETS[@]}"; do
  for E in "${ENCODINGS[@]}"; do jobs+=("$P $E"); done
done
# each line "PRESET ENCODING" runs as: bash -c BODY LORAGEN WORKDIR PRESET ENCODING
printf '%s\n' "${jobs[@]}" | xargs -P 2 -L 1 bash -c '
  $0 eval --generator "loragen_mobile/assets/$2-generator" --data "$1/unseen.jsonl" --train-data "$1/train.jsonl" \
    --methods loragen,loragen_other_task --weight-encoding "$3" --out "docs/eval/$2-unseen-$3.json" \
    > "$1/$2-$3.log" 2>&1 || { echo "eval $2 $3 failed: see $1/$2-$3.log"; exit 255; }' "$LORAGEN" "$W"
.venv/bin/python scripts/render_results.py
