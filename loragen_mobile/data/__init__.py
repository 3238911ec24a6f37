"""One JSONL format for every task, the prompt layout shared by every model, and synthetic suites.

A record is ``{"task_id", "system", "input", "target"}`` plus, for multiple choice, ``{"choices",
"answer"}`` (``answer`` is the index of the correct choice; ``target`` is that choice's text).
``system`` is the task description (instructions, tool definitions, few-shot examples); records that
share a ``task_id`` share it. Optional ``suite`` and ``split`` fields label where a record comes from.
See docs/data-format.md.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Iterable

from ..errors import LoragenError
from ..fsutil import atomic_file

REQUIRED = ("task_id", "system", "input", "target")
OPTIONAL = ("choices", "answer", "suite", "split")

def validate_record(rec, where: str = "record") -> dict:
    if not isinstance(rec, dict):
        raise LoragenError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    missing = [k for k in REQUIRED if k not in rec]
    if missing:
        raise LoragenError(f"{where}: missing field(s) {', '.join(missing)} (required: {', '.join(REQUIRED)})")
    for k in REQUIRED:
        if not isinstance(rec[k], str):
            raise LoragenError(f"{where}: field '{k}' must be a string")
    if not rec["task_id"]:
        raise LoragenError(f"{where}: 'task_id' must not be empty")
    unknown = [k for k in rec if k not in REQUIRED + OPTIONAL]
    if unknown:
        raise LoragenError(f"{where}: unknown field(s) {', '.join(unknown)}")
    if ("choices" in rec) != ("answer" in rec):
        raise LoragenError(f"{where}: 'choices' and 'answer' go together")
    if "choices" in rec:
        ch, ans = rec["choices"], rec["answer"]
        if not isinstance(ch, list) or len(ch) < 2 or not all(isinstance(c, str) for c in ch):
            raise LoragenError(f"{where}: 'choices' must be a list of at least 2 strings")
        if not isinstance(ans, int) or isinstance(ans, bool) or not 0 <= ans < len(ch):
            raise LoragenError(f"{where}: 'answer' must be an index into 'choices' (0..{len(ch) - 1})")
        if ch[ans] != rec["target"]:
            raise LoragenError(f"{where}: 'target' must equal choices[answer]")
    return rec


def iter_jsonl(path: str | os.PathLike, what: str = "data file"):
    """Yield ``(where, object)`` for each non-blank line of a JSONL file; one-line errors.

    Every malformed line (invalid UTF-8, invalid JSON, numbers Python refuses to parse such as
    integers longer than 4300 digits) raises a LoragenError with code ``jsonl`` naming FILE:LINE.
    """
    p = Path(path)
    if not p.is_file():
        raise LoragenError(f"{what} {p} does not exist", code="not-found")
    n = 0
    with p.open("rb") as f:
        for i, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise LoragenError(f"{p}:{i}: not valid UTF-8 (byte {e.start}: {e.reason})", code="jsonl") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise LoragenError(f"{p}:{i}: not valid JSON: {e}", code="jsonl") from None
            except (ValueError, RecursionError) as e:  # e.g. an integer longer than sys.get_int_max_str_digits()
                msg = str(e).split(";")[0] if isinstance(e, ValueError) else "nested too deeply"
                raise LoragenError(f"{p}:{i}: not valid JSON: {msg}", code="jsonl") from None
            n += 1
            yield f"{p}:{i}", obj
    if not n:
        raise LoragenError(f"{what} {p} has no records", code="jsonl")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    return [validate_record(rec, where) for where, rec in iter_jsonl(path)]


def write_jsonl(records: Iterable[dict], out: str | os.PathLike, overwrite: bool = False) -> Path:
    records = [validate_record(r) for r in records]
    with atomic_file(out, overwrite=overwrite) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n")
    return Path(out)


def group_by_task(records: list[dict]) -> "OrderedDict[str, list[dict]]":
    """task_id -> its records, in first-seen order. Every record of a task must share one system prompt."""
    groups: OrderedDict[str, list[dict]] = OrderedDict()
    for r in records:
        g = groups.setdefault(r["task_id"], [])
        if g and g[0]["system"] != r["system"]:
            raise LoragenError(f"task '{r['task_id']}' has records with different 'system' prompts")
        g.append(r)
    return groups


from .suites import SUITES, make_suite, task_skills  # noqa: E402

__all__ = ["REQUIRED", "OPTIONAL", "validate_record", "read_jsonl", "write_jsonl",
           "group_by_task", "SUITES", "make_suite", "make_records_file", "task_skills"]


def make_records_file(suite: str, split: str, out, seed: int = 0, per_task: int | None = None) -> int:
    """Write one suite (or ``all``) split to a JSONL file; returns the number of records."""
    suites = list(SUITES) if suite == "all" else [suite]
    records = [r for s in suites for r in make_suite(s, split, seed=seed, per_task=per_task)]
    write_jsonl(records, out)
    return len(records)
