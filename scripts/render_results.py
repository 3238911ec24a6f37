"""Render docs/results.md's generated blocks: the accuracy table from the evaluation reports in
docs/eval/ (written by scripts/make-results.sh), LoRA-Gen over generator seeds from the reports of
scripts/make-seeds.sh, LoRA-Gen with quantized edge weights from the reports of
scripts/make-quant-results.sh, and the full-size benchmark tables from the JSON
files of each `loragen bench all --preset P` run in docs/bench/P/. With
--check, fail if the document does not hold exactly those blocks."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "results.md"
BEGIN, END = "<!-- accuracy-table:begin (scripts/make-results.sh) -->", "<!-- accuracy-table:end -->"
#: the full-size runs rendered into docs/results.md, each from the JSON files in docs/bench/RUN/ (RUN: the
#: preset, with the backend where a preset was run one backend at a time)
BENCH_RUNS = ("tinyllama-1.1b", "llama-3.2-1b", "gemma-2b", "gemma-2b-executorch")


def bench_markers(preset: str) -> tuple[str, str]:
    return (f"<!-- bench-{preset}:begin (scripts/render_results.py, from docs/bench/{preset}/) -->",
            f"<!-- bench-{preset}:end -->")


BENCH_BEGIN, BENCH_END = bench_markers("tinyllama-1.1b")
SEEDS_BEGIN, SEEDS_END = "<!-- seed-table:begin (scripts/make-seeds.sh) -->", "<!-- seed-table:end -->"
QUANT_BEGIN, QUANT_END = "<!-- quant-table:begin (scripts/make-quant-results.sh) -->", "<!-- quant-table:end -->"
#: (table name, report file) in table order
REPORTS = [("tiny-llama", "tiny-llama-unseen.json"), ("tiny-llama", "tiny-llama-seen.json"),
           ("tiny-gemma", "tiny-gemma-unseen.json"), ("tiny-gemma", "tiny-gemma-seen.json")]


def table() -> str:
    from loragen_mobile.generator.evaluate import format_markdown

    reports = [(name, json.loads((ROOT / "docs" / "eval" / f).read_text())) for name, f in REPORTS
               if (ROOT / "docs" / "eval" / f).is_file()]
    return format_markdown(reports)


def seeds() -> str:
    from loragen_mobile.generator.evaluate import format_seed_table

    rows = []
    for name in dict.fromkeys(name for name, _ in REPORTS):  # the accuracy table's edge models, in order
        base = ROOT / "docs" / "eval" / f"{name}-unseen.json"
        others = sorted((ROOT / "docs" / "eval").glob(f"{name}-unseen-seed*.json"))
        if base.is_file() and others:
            rows.append((name, json.loads(base.read_text()), [json.loads(f.read_text()) for f in others]))
    return format_seed_table(rows)


def quant() -> str:
    from loragen_mobile.generator.evaluate import format_quant_table
    from loragen_mobile.quant import get

    rows = []
    for name in dict.fromkeys(name for name, _ in REPORTS):
        base = ROOT / "docs" / "eval" / f"{name}-unseen.json"
        reports = [json.loads(f.read_text()) for f in (ROOT / "docs" / "eval").glob(f"{name}-unseen-*.json")]
        reports = [r for r in reports if r["weight_encoding"]]  # not the generator-seed reports
        if base.is_file() and reports:  # 8-bit before 4-bit, then by runtime
            rows.append((name, json.loads(base.read_text()),
                         sorted(reports, key=lambda r: (-get(r["weight_encoding"]).bits, r["weight_encoding"]))))
    return format_quant_table(rows)


def bench(preset: str) -> str:
    from loragen_mobile.bench.all import render_run

    return render_run(ROOT / "docs" / "bench" / preset).rstrip()


def _fill(text: str, begin: str, end: str, body: str) -> str:
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{body}\n{end}{tail}"


def render(text: str) -> str:
    text = _fill(text, BEGIN, END, table())
    for preset in BENCH_RUNS:  # the runs made so far
        if (ROOT / "docs" / "bench" / preset / "all.json").is_file():
            text = _fill(text, *bench_markers(preset), bench(preset))
    return _fill(_fill(text, SEEDS_BEGIN, SEEDS_END, seeds()), QUANT_BEGIN, QUANT_END, quant())


if __name__ == "__main__":
    text = DOC.read_text()
    if sys.argv[1:] == ["--check"]:
        sys.exit(0 if render(text) == text else f"{DOC} does not hold the blocks rendered from docs/eval/ and docs/bench/")
    DOC.write_text(render(text))
