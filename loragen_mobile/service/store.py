"""Content-addressed bundle store: atomic writes, survives restarts, optional LRU size cap."""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from pathlib import Path

from ..fsutil import atomic_file

ID_RE = re.compile(r"[0-9a-f]{32}")
_TMP_RE = re.compile(r"\..+\.tmp-.+")  # atomic_file's temporary names


def valid_id(bid: str) -> bool:
    return isinstance(bid, str) and ID_RE.fullmatch(bid) is not None


def bundle_id(generator_id: str, fingerprint: str, kind: str, task: str) -> str:
    """32 hex characters of sha256 over the length-prefixed parts (no two inputs collide by concatenation)."""
    h = hashlib.sha256()
    for part in (generator_id, fingerprint, kind, task):
        b = part.encode("utf-8")
        h.update(len(b).to_bytes(8, "little") + b)
    return h.hexdigest()[:32]


class BundleStore:
    """``<id>.bundle`` + ``<id>.json`` (size, sha256, manifest, artifact) per bundle, in one directory.

    Every file is written to a temporary name and renamed, bundle first and record last, so a
    crash leaves either a complete entry or none (leftovers are removed when the store opens).
    A record whose bundle is missing or has the wrong size counts as absent. With ``max_bytes``
    the least recently used bundles (record mtime, touched on every read) are evicted after a
    write; the bundle just written is always kept.
    """

    def __init__(self, root: str | os.PathLike, max_bytes: int | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        for p in self.root.iterdir():
            if _TMP_RE.fullmatch(p.name):
                p.unlink(missing_ok=True)  # temporary file of an interrupted write
            elif p.suffix == ".json" and not p.with_suffix(".bundle").exists():
                p.unlink(missing_ok=True)
            elif p.suffix == ".bundle" and not p.with_suffix(".json").exists():
                p.unlink(missing_ok=True)

    def _paths(self, bid: str) -> tuple[Path, Path]:
        if not valid_id(bid):
            raise ValueError("invalid bundle id")
        return self.root / f"{bid}.bundle", self.root / f"{bid}.json"

    def get(self, bid: str) -> dict | None:
        data, rec = self._paths(bid)
        try:
            info = json.loads(rec.read_text())
            if data.stat().st_size != info["size"]:
                return None
            os.utime(rec)  # LRU: last access
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return info

    def open(self, bid: str):
        """The bundle file opened for reading (stays readable if evicted meanwhile), or None."""
        try:
            return open(self._paths(bid)[0], "rb")
        except OSError:
            return None

    def put(self, bid: str, raw: bytes, info: dict) -> dict:
        data, rec = self._paths(bid)
        info = {**info, "id": bid, "size": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
        with self._lock:
            with atomic_file(data, overwrite=True) as tmp:
                tmp.write_bytes(raw)
            with atomic_file(rec, overwrite=True) as tmp:
                tmp.write_text(json.dumps(info, sort_keys=True))
            self._evict(keep=bid)
        return info

    def ids(self) -> list[str]:
        return sorted(p.stem for p in self.root.glob("*.json") if valid_id(p.stem))

    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.glob("*.bundle"))

    def _evict(self, keep: str) -> None:
        if self.max_bytes is None:
            return
        total = self.total_bytes()
        if total <= self.max_bytes:
            return
        for rec in sorted(self.root.glob("*.json"), key=lambda p: p.stat().st_mtime):
            if total <= self.max_bytes:
                break
            if rec.stem == keep:
                continue
            data = rec.with_suffix(".bundle")
            size = data.stat().st_size if data.exists() else 0
            rec.unlink(missing_ok=True)  # record first: a half-evicted entry reads as absent
            data.unlink(missing_ok=True)
            total -= size
