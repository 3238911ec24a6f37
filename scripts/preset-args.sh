# Sourced by the make-*.sh scripts after they set DEFAULT_PRESETS: moves to the repository root and
# sets LORAGEN (the CLI), W (the work directory: the first argument, else a new temporary one) and
# PRESETS (the other arguments, else DEFAULT_PRESETS).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
LORAGEN=${LORAGEN:-.venv/bin/loragen}
W=${1:-$(mktemp -d)}
shift || true
if [ $# -gt 0 ]; then PRESETS=("$@"); else PRESETS=("${DEFAULT_PRESETS[@]}"); fi
# The generator's options where a preset's recipe differs from configs/tiny.yaml: tiny-gemma's
# generator trains 2,400 steps instead of 800 and lists each description's tool definitions in a new
# order every step (`--shuffle-lists`); both raise its unseen-tools accuracy. The shuffle did not help
# tiny-llama, whose 800 steps fit the full quickstart's time budget (docs/results.md, "LoRA-Gen over
# generator seeds").
declare -A GEN_ARGS=([tiny-gemma]="--max-steps 2400 --shuffle-lists")
gen_args() { echo "${GEN_ARGS[$1]:-}"; }
