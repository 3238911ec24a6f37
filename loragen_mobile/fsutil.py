"""Atomic writes: a failed job never leaves a half-written file or directory behind."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import LoragenError


def refuse_existing(out: str | os.PathLike) -> Path:
    out = Path(out)
    if out.exists():
        raise LoragenError(f"output path {out} already exists; choose a new path (nothing was written)")
    if not out.parent.exists():
        raise LoragenError(f"parent directory {out.parent} of output {out} does not exist")
    return out


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside ``out``; rename it to ``out`` only on success."""
    out = refuse_existing(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary file path beside ``out``; rename it over ``out`` only on success."""
    out = Path(out)
    if not overwrite:
        refuse_existing(out)
    elif not out.parent.exists():
        raise LoragenError(f"parent directory {out.parent} of output {out} does not exist")
    fd, name = tempfile.mkstemp(prefix=f".{out.name}.tmp-", dir=out.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_json_object(path: Path) -> dict:
    """Parse a JSON file that must hold an object; a one-line LoragenError otherwise."""
    try:
        doc = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LoragenError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise LoragenError(f"{path} must hold a JSON object")
    return doc
