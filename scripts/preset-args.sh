# Sourced by the make-*.sh scripts after they set DEFAULT_PRESETS: moves to the repository root and
# sets LORAGEN (the CLI), W (the work directory: the first argument, else a new temporary one) and
# PRESETS (the other arguments, else DEFAULT_PRESETS).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
LORAGEN=${LORAGEN:-.venv/bin/loragen}
W=${1:-$(mktemp -d)}
shift || true
if [ $# -gt 0 ]; then PRESETS=("$@"); else PRESETS=("${DEFAULT_PRESETS[@]}"); fi
