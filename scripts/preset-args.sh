# Sourced by the make-*.sh scripts after they set DEFAULT_PRESETS: moves to the repository root and
# sets LORAGEN (the CLI), W (the work directory: the first argument, else a new temporary one) and
# PRESETS (the other arguments, else DEFAULT_PRESETS).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
LORAGEN=${LORAGEN:-.venv/bin/loragen}
W=${1:-$(mktemp -d)}
shift || true
if [ $# -gt 0 ]; then PRESETS=("$@"); else PRESETS=("${DEFAULT_PRESETS[@]}"); fi
# The generator's training steps where a preset's recipe differs from configs/tiny.yaml's 800:
# tiny-gemma's generator gains from 1,600 (docs/results.md, "LoRA-Gen over generator seeds"); the
# full quickstart trains tiny-llama and keeps 800 for its time budget.
declare -A GEN_MAX_STEPS=([tiny-gemma]=1600)
gen_steps() { if [ -n "${GEN_MAX_STEPS[$1]:-}" ]; then echo "--max-steps ${GEN_MAX_STEPS[$1]}"; fi; }
