"""Atomic writes: a failed job never leaves a half-written file or directory behind.

Outputs are first written to a temporary sibling named ``.<name>.tmp-<pid>-<random>`` and renamed
into place only on success. Missing parent directories of an output are created, and removed
again if the job fails. A process killed outright (SIGKILL, power loss) cannot clean up after
itself: the next atomic write into the same parent directory removes the temporaries of processes
that no longer exist (the pid in the name tells which).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import LoragenError

# .<name>.tmp-<pid>-<random>: the temporaries atomic_dir/atomic_file create
TMP_RE = re.compile(r"\..+\.tmp-(\d+)-[A-Za-z0-9_]+")


def refuse_existing(out: str | os.PathLike) -> Path:
    """Check that ``out`` can be created: it must not exist and no parent may be a file."""
    out = Path(out)
    if out.exists() or out.is_symlink():
        raise LoragenError(f"output path {out} already exists; choose a new path (nothing was written)",
                           code="exists")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise LoragenError(f"cannot create {out}: {parent} is not a directory", code="usage")
            break
    return out


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OverflowError:
        return False
    return True


def clean_stale_temporaries(parent: str | os.PathLike) -> list[Path]:
    """Remove the temporaries in ``parent`` left by atomic writes of processes that no longer run."""
    removed = []
    try:
        entries = list(Path(parent).iterdir())
    except OSError:
        return removed
    for p in entries:
        m = TMP_RE.fullmatch(p.name)
        if not m or _pid_alive(int(m.group(1))):
            continue
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
        except OSError:
            pass  # another process cleaned it, or no permission: harmless
    return removed


def missing_parents(out: str | os.PathLike) -> list[Path]:
    """``out``'s parent directories that do not exist yet, deepest first."""
    missing = []
    for parent in Path(out).parents:
        if parent.exists():
            break
        missing.append(parent)
    return missing


def _make_parents(out: Path) -> list[Path]:
    """Create ``out``'s missing parent directories; returns the ones created, deepest first."""
    created = missing_parents(out)
    for d in reversed(created):
        d.mkdir(exist_ok=True)
    return created


def remove_empty_dirs(dirs: list[Path]) -> None:
    """Remove the given directories (deepest first) while they are empty."""
    for d in dirs:
        try:
            d.rmdir()
        except OSError:
            break  # not empty (someone else wrote there) or already gone


def _default_mode(mode: int) -> int:
    """``mode`` under the process's umask: what ``open``/``mkdir`` would give a new file or directory
    (``tempfile`` makes its temporaries 0600/0700, too strict for a model directory or bundle that
    another user or a web server reads). The umask is read from /proc where there is one: setting
    and restoring it would briefly change it for the process's other threads (the service's)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return mode & ~int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask


def temp_prefix(out: Path) -> str:
    """The name prefix of this process's temporaries for ``out`` (``clean_stale_temporaries`` removes
    them once the process is gone)."""
    return f".{out.name}.tmp-{os.getpid()}-"


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside ``out``; rename it to ``out`` only on success."""
    out = refuse_existing(out)
    created = _make_parents(out)
    try:
        clean_stale_temporaries(out.parent)
        tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(out), dir=out.parent))
        os.chmod(tmp, _default_mode(0o777))
    except BaseException:
        remove_empty_dirs(created)
        raise
    try:
        yield tmp
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        remove_empty_dirs(created)
        raise


@contextlib.contextmanager
def atomic_file(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary file path beside ``out``; rename it over ``out`` only on success."""
    out = Path(out)
    if not overwrite:
        refuse_existing(out)
    elif out.is_dir():
        raise LoragenError(f"output path {out} is a directory", code="exists")
    created = _make_parents(out)
    try:
        clean_stale_temporaries(out.parent)
        fd, name = tempfile.mkstemp(prefix=temp_prefix(out), dir=out.parent)
        os.close(fd)
        os.chmod(name, _default_mode(0o666))
    except BaseException:
        remove_empty_dirs(created)
        raise
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        remove_empty_dirs(created)
        raise


def read_json_object(path: Path) -> dict:
    """Parse a JSON file that must hold an object; a one-line LoragenError otherwise."""
    try:
        doc = json.loads(Path(path).read_bytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError, over-long integers, bad UTF-8
        raise LoragenError(f"{path} is not valid JSON: {e}", code="json") from None
    if not isinstance(doc, dict):
        raise LoragenError(f"{path} must hold a JSON object", code="json")
    return doc
