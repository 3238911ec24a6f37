#!/usr/bin/env bash
# Evaluate the shipped checkpoints (loragen_mobile/assets) on the built-in suites, seed 0: every
# method and control on the unseen tasks, all but the per-task LoRA on the seen tasks; writes
# docs/eval/<preset>-<split>.json and renders docs/results.md's accuracy table from them.
# Usage: bash scripts/make-results.sh [WORKDIR] [PRESET...]   (default: tiny-llama tiny-gemma)
DEFAULT_PRESETS=(tiny-llama tiny-gemma)
source "$(dirname "$0")/preset-args.sh"
for S in train seen unseen; do
  $LORAGEN data make --suite all --split $S --out "$W/$S.jsonl" --seed 0
done
for P in "${PRESETS[@]}"; do
  G=loragen_mobile/assets/$P-generator
  [ -d "$G" ] || { echo "no shipped checkpoints for $P (bash scripts/make-assets.sh WORKDIR $P builds them)"; continue; }
  $LORAGEN eval --generator $G --data "$W/unseen.jsonl" --train-data "$W/train.jsonl" --out "docs/eval/$P-unseen.json"
  $LORAGEN eval --generator $G --data "$W/seen.jsonl" --train-data "$W/train.jsonl" --out "docs/eval/$P-seen.json" \
    --methods edge_prompt,edge_no_prompt,loragen,loragen_other_task,loragen_empty,mean_adapter
done
.venv/bin/python scripts/render_results.py
