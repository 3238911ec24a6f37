"""Content-addressed bundle store: atomic writes, survives restarts, optional LRU size cap."""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from pathlib import Path

from ..fsutil import atomic_file

ID_RE = re.compile(r"^[0-9a-f]{32}$")


def bundle_id(generator_id: str, fingerprint: str, kind: str, task: str) -> str:
    h = hashlib.sha256()
    for part in (generator_id, fingerprint, kind, task):
        b = part.encode("utf-8")
        h.update(len(b).to_bytes(8, "little") + b)
    return h.hexdigest()[:32]


class BundleStore:
    """``<id>.bundle`` + ``<id>.json`` (size, sha256, manifest) per bundle, in one directory.

    Every file is written to a temporary name and renamed, bundle first and record last, so a
    crash leaves either a complete entry or none (orphans are removed at start-up).
    """

    def __init__(self, root: str | os.PathLike, max_bytes: int | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        for p in self.root.iterdir():
            if p.name.startswith("."):
                p.unlink(missing_ok=True)  # temporary files of an interrupted write
            elif p.suffix == ".bundle" and not p.with_suffix(".json").exists():
                p.unlink(missing_ok=True)

    def _paths(self, bid: str) -> tuple[Path, Path]:
        if not ID_RE.match(bid):
            raise ValueError("invalid bundle id")
        return self.root / f"{bid}.bundle", self.root / f"{bid}.json"

    def get(self, bid: str) -> dict | None:
        data, rec = self._paths(bid)
        try:
            info = json.loads(rec.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        if not data.exists():
            return None
        os.utime(rec)  # LRU: last access
        return info

    def path(self, bid: str) -> Path:
        return self._paths(bid)[0]

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

    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.glob("*.bundle"))

    def _evict(self, keep: str) -> None:
        if self.max_bytes is None:
            return
        recs = sorted(self.root.glob("*.json"), key=lambda p: p.stat().st_mtime)
        total = self.total_bytes()
        for rec in recs:
            if total <= self.max_bytes:
                break
            if rec.stem == keep:
                continue
            data = rec.with_suffix(".bundle")
            size = data.stat().st_size if data.exists() else 0
            rec.unlink(missing_ok=True)
            data.unlink(missing_ok=True)
            total -= size
