"""Render docs/results.md's accuracy table from the evaluation reports in docs/eval/ (written by
scripts/make-results.sh); with --check, fail if the document does not hold exactly that table."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "results.md"
BEGIN, END = "<!-- accuracy-table:begin (scripts/make-results.sh) -->", "<!-- accuracy-table:end -->"
#: (table name, report file) in table order
REPORTS = [("tiny-llama", "tiny-llama-unseen.json"), ("tiny-llama", "tiny-llama-seen.json"),
           ("tiny-gemma", "tiny-gemma-unseen.json"), ("tiny-gemma", "tiny-gemma-seen.json")]


def table() -> str:
    from loragen_mobile.generator.evaluate import format_markdown

    reports = [(name, json.loads((ROOT / "docs" / "eval" / f).read_text())) for name, f in REPORTS
               if (ROOT / "docs" / "eval" / f).is_file()]
    return format_markdown(reports)


def render(text: str) -> str:
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{table()}\n{END}{tail}"


if __name__ == "__main__":
    text = DOC.read_text()
    if sys.argv[1:] == ["--check"]:
        sys.exit(0 if render(text) == text else f"{DOC} does not hold the table rendered from docs/eval/")
    DOC.write_text(render(text))
