"""Content-addressed bundle store: atomic writes, content checks, survives restarts, optional LRU size cap."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import threading
import time
from pathlib import Path

from ..fsutil import atomic_file, clean_stale_temporaries, temp_prefix

log = logging.getLogger("loragen.serve")

ID_RE = re.compile(r"[0-9a-f]{32}")
QUARANTINE = "quarantine"
HASH_CHUNK = 1 << 20


def valid_id(bid: str) -> bool:
    return isinstance(bid, str) and ID_RE.fullmatch(bid) is not None


def bundle_id(generator_id: str, fingerprint: str, kind: str, task: str, key_id: str, format_version: str) -> str:
    """32 hex characters of sha256 over the length-prefixed parts (no two inputs collide by concatenation).

    The parts are everything the bundle bytes depend on: the generator, the base artifact, the kind,
    the task description, the signing key and the bundle format version. A new signing key or
    format therefore gives new ids, never new bytes under an old id.
    """
    h = hashlib.sha256()
    for part in (generator_id, fingerprint, kind, task, key_id, str(format_version)):
        b = part.encode("utf-8")
        h.update(len(b).to_bytes(8, "little") + b)
    return h.hexdigest()[:32]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


class BundleStore:
    """``<id>.bundle`` + ``<id>.json`` (size, sha256, manifest, artifact) per bundle, in one directory.

    Every file is written to a temporary name and renamed, bundle first and record last, so a
    crash leaves either a complete entry or none; a failed write (a full disk) removes what it
    wrote. An id is immutable: ``put`` keeps an intact entry that is already there (another
    server sharing the store may have written it) instead of writing it again.

    Content checks: the record holds the bundle's sha256. A bundle is hashed again before it is
    served the first time after the store opens and whenever its file changes (inode, size,
    mtime or ctime differ from the last check); a bundle whose content does not match is moved to
    ``quarantine/`` and reads as absent, so the next request for it regenerates it. A record whose
    bundle is missing or has the wrong size counts as absent. With ``max_bytes`` the least
    recently used bundles (record mtime, touched on every read) are evicted after a write; the
    bundle just written is always kept.
    """

    def __init__(self, root: str | os.PathLike, max_bytes: int | None = None, on_quarantine=None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.on_quarantine = on_quarantine
        self._lock = threading.RLock()
        self._verified: dict[str, tuple] = {}  # id -> stat signature of the bundle file when its hash matched
        clean_stale_temporaries(self.root)  # only those of processes that no longer run: a shared store stays usable
        for p in self.root.iterdir():
            if p.suffix == ".json" and valid_id(p.stem) and not p.with_suffix(".bundle").exists():
                p.unlink(missing_ok=True)
            elif p.suffix == ".bundle" and valid_id(p.stem) and not p.with_suffix(".json").exists():
                p.unlink(missing_ok=True)

    def _paths(self, bid: str) -> tuple[Path, Path]:
        if not valid_id(bid):
            raise ValueError("invalid bundle id")
        return self.root / f"{bid}.bundle", self.root / f"{bid}.json"

    @staticmethod
    def _signature(st: os.stat_result) -> tuple:
        return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns

    def get(self, bid: str) -> dict | None:
        """The record of an intact bundle (its content checked as described above), or None."""
        data, rec = self._paths(bid)
        try:
            info = json.loads(rec.read_text())
            st = data.stat()
            if st.st_size != info["size"]:
                return None
            sig = self._signature(st)
            if self._verified.get(bid) != sig:
                if file_sha256(data) != info["sha256"]:
                    self.quarantine(bid, "its content does not match the recorded sha256")
                    return None
                self._verified[bid] = sig
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

    def quarantine(self, bid: str, why: str) -> None:
        """Move an entry that failed its content check to ``quarantine/`` (kept for inspection)."""
        data, rec = self._paths(bid)
        with self._lock:
            self._verified.pop(bid, None)
            qdir = self.root / QUARANTINE
            qdir.mkdir(exist_ok=True)
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"-{time.time_ns() % 10 ** 9:09d}"
            for p in (rec, data):  # record first: a half-moved entry reads as absent
                try:
                    os.replace(p, qdir / f"{bid}-{stamp}{p.suffix}")
                except FileNotFoundError:
                    pass
        log.error("bundle %s quarantined: %s", bid, why)
        if self.on_quarantine is not None:
            self.on_quarantine()

    @staticmethod
    def _write(path: Path, raw: bytes) -> None:
        with open(path, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())

    def put(self, bid: str, content, info) -> dict:
        """Store a bundle; OSError (a full disk: ENOSPC) leaves nothing of it behind.

        ``content``: the bundle's bytes, or ``write(f)``, which writes it to the binary file ``f``
        (a multi-GB bundle is then streamed to disk, never held; it is written outside the store's
        lock and renamed into place under it). ``info``: the record's fields, or a function of the
        written file's path that returns them."""
        data, rec = self._paths(bid)
        staged = self._stage(data, content)
        try:
            info = {**(info(staged) if callable(info) else info), "id": bid, "size": staged.stat().st_size,
                    "sha256": file_sha256(staged)}
            with self._lock:
                existing = self.get(bid)
                if existing is not None:
                    return existing
                try:
                    os.replace(staged, data)
                    with atomic_file(rec, overwrite=True) as tmp:
                        self._write(tmp, json.dumps(info, sort_keys=True).encode())
                except BaseException:
                    rec.unlink(missing_ok=True)
                    data.unlink(missing_ok=True)
                    raise
                self._verified[bid] = self._signature(data.stat())
                self._evict(keep=bid)
            return info
        finally:
            staged.unlink(missing_ok=True)

    def _stage(self, data: Path, content) -> Path:
        """A temporary file beside ``data`` holding ``content`` (bytes or a writer), synced to disk."""
        fd, name = tempfile.mkstemp(prefix=temp_prefix(data), dir=self.root)
        staged = Path(name)
        try:
            with os.fdopen(fd, "w+b") as f:
                if callable(content):
                    content(f)
                else:
                    f.write(content)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        return staged

    def ids(self) -> list[str]:
        return sorted(p.stem for p in self.root.glob("*.json") if valid_id(p.stem))

    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.glob("*.bundle") if valid_id(p.stem))

    def _evict(self, keep: str) -> None:
        if self.max_bytes is None:
            return
        total = self.total_bytes()
        if total <= self.max_bytes:
            return
        for rec in sorted(self.root.glob("*.json"), key=lambda p: p.stat().st_mtime):
            if total <= self.max_bytes:
                break
            if rec.stem == keep or not valid_id(rec.stem):
                continue
            data = rec.with_suffix(".bundle")
            size = data.stat().st_size if data.exists() else 0
            rec.unlink(missing_ok=True)  # record first: a half-evicted entry reads as absent
            data.unlink(missing_ok=True)
            self._verified.pop(rec.stem, None)
            total -= size
