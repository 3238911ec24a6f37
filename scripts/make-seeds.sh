#!/usr/bin/env bash
# LoRA-Gen over generator seeds: train the generator with seeds 1 and 2 (the shipped one is seed 0)
# for each preset's shipped edge model, with configs/tiny.yaml (and the preset's GEN_ARGS), and score LoRA-Gen and the
# other-task control on the unseen tasks: docs/eval/<preset>-unseen-seed<S>.json, rendered into
# docs/results.md's seed table. The two seeds train side by side, one thread each.
# Usage: bash scripts/make-seeds.sh [WORKDIR] [PRESET...]   (default: tiny-llama tiny-gemma)
DEFAULT_PRESETS=(tiny-llama tiny-gemma)
source "$(dirname "$0")/preset-args.sh"
export OMP_NUM_THREADS=1
mkdir -p "$W"
for S in train unseen; do
  [ -f "$W/$S.jsonl" ] || $LORAGEN data make --suite all --split $S --out "$W/$S.jsonl" --seed 0
done
for P in "${PRESETS[@]}"; do
  pids=()
  for SEED in 1 2; do
    G="$W/$P-generator-seed$SEED"
    ( $LORAGEN train --config configs/tiny.yaml --edge "loragen_mobile/assets/$P-edge" --data "$W/train.jsonl" \
        --out "$G" --seed $SEED --no-progress $(gen_args "$P")
      $LORAGEN eval --generator "$G" --data "$W/unseen.jsonl" --train-data "$W/train.jsonl" \
        --methods loragen,loragen_other_task --out "docs/eval/$P-unseen-seed$SEED.json" ) > "$G.log" 2>&1 &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid"; done
done
.venv/bin/python scripts/render_results.py
