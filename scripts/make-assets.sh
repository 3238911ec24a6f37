#!/usr/bin/env bash
# Rebuild the checkpoints shipped in loragen_mobile/assets (used by `loragen quickstart --fast`):
# the tiny-llama edge model trained on the seen tasks with their prompts, and the generator
# trained for it. Exactly the full quickstart's training commands with configs/tiny.yaml;
# about 20 minutes on 2 CPU cores. Usage: bash scripts/make-assets.sh [WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
LORAGEN=${LORAGEN:-.venv/bin/loragen}
W=${1:-$(mktemp -d)}
$LORAGEN init-model --preset tiny-llama --out "$W/tiny-llama-init" --seed 0
$LORAGEN data make --suite all --split train --out "$W/train.jsonl" --seed 0
$LORAGEN train-edge --model "$W/tiny-llama-init" --data "$W/train.jsonl" --config configs/tiny.yaml --out "$W/tiny-llama-edge"
$LORAGEN train --config configs/tiny.yaml --edge "$W/tiny-llama-edge" --data "$W/train.jsonl" --out "$W/generator"
A=loragen_mobile/assets
rm -rf "$A/tiny-llama-edge" "$A/tiny-generator"
mkdir -p "$A/tiny-generator"
cp -r "$W/tiny-llama-edge" "$A/tiny-llama-edge"
cp -r "$W/generator/generator.safetensors" "$W/generator/cloud-adapter" "$A/tiny-generator/"
# the shipped generator finds its edge model beside it
python3 - "$W/generator/generator.json" "$A/tiny-generator/generator.json" <<'PY'
import json, sys
meta = json.load(open(sys.argv[1]))
meta["edge"]["path"] = "../tiny-llama-edge"
meta["cloud"]["path"] = "../tiny-llama-edge"
open(sys.argv[2], "w").write(json.dumps(meta, indent=2) + "\n")
PY
echo "wrote $A/tiny-llama-edge and $A/tiny-generator"
