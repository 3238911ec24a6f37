"""Artifact directories: ``artifact.json`` read and written, typed swap slots, digests.

``artifact.json``'s bytes and field names are a contract (docs/exporters.md; the Android and iOS
apps and the bundle readers read them): :meth:`SwapSlot.to_dict` writes a slot's fields in the
order the exporters always wrote them, and :func:`write_artifact_json` puts ``schema`` first.

Schema v2 adds quantized swap slots: a quantized weight is stored as parts (``P:q``, ``P:scale``,
see :mod:`loragen_mobile.quant`), each a slot with ``param``, ``part`` and ``encoding`` fields. An
artifact without quantized slots is still written as v1, so every v1 reader keeps reading it;
both versions are read.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Mapping
from typing import Any, Iterable

import torch

from .. import dtypes, quant
from ..dtypes import tensor_bytes, torch_name as dtype_name
from ..errors import LoragenError
from ..fsutil import read_json_object
from ..lazy import LazyTensors

ARTIFACT_FILE = "artifact.json"
ARTIFACT_SCHEMA = "loragen-mobile/artifact/v1"
#: the schema of an artifact with quantized swap slots
ARTIFACT_SCHEMA_V2 = "loragen-mobile/artifact/v2"
SCHEMAS = (ARTIFACT_SCHEMA, ARTIFACT_SCHEMA_V2)

#: dtypes a swap slot may have (torch names, as artifact.json records them)
SLOT_DTYPES = ("float32", "float16", "bfloat16")
#: dtypes a part of a quantized weight may have (the codes; scales are floating point)
PART_DTYPES = SLOT_DTYPES + ("uint8", "int8")

_REQUIRED = ("schema", "backend", "model_id", "model_type", "config_hash", "precision", "max_context",
             "inputs", "outputs", "files", "fingerprint", "swap_slots")
_SLOT_REQUIRED = ("name", "file", "dtype", "shape", "nbytes", "sha256")


def sha256_bytes(*chunks: bytes) -> str:
    h = hashlib.sha256()
    for c in chunks:
        h.update(c)
    return h.hexdigest()


def read_range(path: Path, offset: int, n: int) -> bytes:
    """Bytes [offset, offset + n) of a file (fewer at its end), without reading the rest."""
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(n)


def sha256_file(path: Path, skip: Iterable[tuple[int, int]] = ()) -> str:
    """sha256 of a file's bytes, with the byte ranges ``(offset, length)`` in ``skip`` left out."""
    h = hashlib.sha256()
    pos = 0
    with open(path, "rb") as f:
        for off, n in sorted(skip) + [(os.fstat(f.fileno()).st_size, 0)]:
            f.seek(pos)
            for at in range(pos, max(pos, off), _CHUNK):  # [pos, off) in pieces: the file is never held whole
                h.update(f.read(min(_CHUNK, off - at)))
            pos = max(pos, off + n)
    return h.hexdigest()


_CHUNK = 16 * 1024 * 1024


# --------------------------------------------------------------------------- swap slots


@dataclass
class SwapSlot:
    """One swappable tensor of an artifact: the HF parameter ``name``, where the backend keeps its
    bytes (``file`` + data ``key`` and/or absolute byte ``offset``, plus backend-specific locator
    fields in ``extra``, e.g. Core ML's ``header_offset``), and what they hold."""

    name: str
    file: str
    dtype: str
    shape: list[int]
    nbytes: int
    sha256: str
    key: str | None = None
    offset: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, name: str, t: torch.Tensor, file: str, *, key: str | None = None, offset: int | None = None,
           **extra: Any) -> "SwapSlot":
        """The slot of tensor ``t`` as exported (its sha256 is that of its bytes)."""
        return cls(name, file, dtype_name(t.dtype), list(t.shape), t.numel() * t.element_size(),
                   sha256_bytes(tensor_bytes(t)), key, offset, dict(extra))

    @classmethod
    def part_of(cls, param: str, part: str, encoding: "quant.Encoding", t: torch.Tensor, file: str, *,
                key: str | None = None, offset: int | None = None, **extra: Any) -> "SwapSlot":
        """The slot of one part (``q`` or ``scale``) of the quantized weight ``param``, stored as ``t``."""
        return cls.of(quant.part_name(param, part), t, file, key=key, offset=offset,
                      **extra, param=param, part=part, encoding=encoding.id)

    @property
    def param(self) -> str:
        """The HF parameter the slot belongs to (the slot's own name for an unquantized slot)."""
        return self.extra.get("param", self.name)

    @property
    def part(self) -> str | None:
        return self.extra.get("part")

    @property
    def encoding(self) -> "quant.Encoding | None":
        e = self.extra.get("encoding")
        return quant.get(e) if e is not None else None

    @classmethod
    def from_dict(cls, d: dict) -> "SwapSlot":
        known = {"name", "file", "dtype", "shape", "nbytes", "sha256", "key", "offset"}
        return cls(d["name"], d["file"], d["dtype"], list(d["shape"]), d["nbytes"], d["sha256"],
                   d.get("key"), d.get("offset"), {k: v for k, v in d.items() if k not in known})

    def to_dict(self) -> dict:
        """The artifact.json object (field order as always written: name, file, locator, description)."""
        where = {k: v for k, v in (("key", self.key), ("offset", self.offset)) if v is not None}
        return {"name": self.name, "file": self.file, **where, **self.extra, "dtype": self.dtype,
                "shape": list(self.shape), "nbytes": self.nbytes, "sha256": self.sha256}

    # read-only mapping access (``slot["name"]``), as when slots were plain dicts
    def __getitem__(self, k: str) -> Any:
        d = self.to_dict()
        if k not in d:
            raise KeyError(k)
        return d[k]

    def get(self, k: str, default: Any = None) -> Any:
        return self.to_dict().get(k, default)

    @property
    def torch_dtype(self) -> torch.dtype:
        return dtypes.lookup(self.dtype).torch

    def tensor(self, data: bytes) -> torch.Tensor:
        """The slot's bytes as a tensor of its dtype and shape."""
        return dtypes.from_bytes(data, self.dtype, self.shape)


# --------------------------------------------------------------------------- artifact


@dataclass
class Artifact:
    """An exported artifact directory and its parsed ``artifact.json`` (``meta``, as read), with
    typed swap slots (``slots``)."""

    path: Path
    meta: dict
    slots: list[SwapSlot] = field(init=False, repr=False)

    def __post_init__(self):
        self.path = Path(self.path)
        self.slots = [SwapSlot.from_dict(s) for s in self.meta.get("swap_slots", [])]

    @property
    def backend(self) -> str:
        return self.meta["backend"]

    @property
    def fingerprint(self) -> str:
        return self.meta["fingerprint"]

    @property
    def slot_map(self) -> dict[str, SwapSlot]:
        return {s.name: s for s in self.slots}

    @property
    def quantized(self) -> bool:
        return any(s.part is not None for s in self.slots)

    def quantized_params(self) -> dict[str, dict[str, SwapSlot]]:
        """param -> {part: slot} for every quantized swappable weight, in slot order."""
        out: dict[str, dict[str, SwapSlot]] = {}
        for s in self.slots:
            if s.part is not None:
                out.setdefault(s.param, {})[s.part] = s
        return out

    def file(self, name: str) -> Path:
        return self.path / name


def read_artifact(artifact_dir: str | os.PathLike, backend: str | None = None) -> Artifact:
    """Parse and sanity-check an artifact directory; every problem is a one-line LoragenError."""
    d = Path(artifact_dir)
    if not d.is_dir():
        raise LoragenError(f"artifact directory {d} does not exist")
    f = d / ARTIFACT_FILE
    if not f.is_file():
        raise LoragenError(f"{d} is not an exported artifact: {ARTIFACT_FILE} is missing")
    meta = read_json_object(f)
    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise LoragenError(f"{f} is missing field(s) {', '.join(missing)}")
    if meta["schema"] not in SCHEMAS:
        raise LoragenError(f"{f} has schema '{meta['schema']}'; this reader knows {', '.join(SCHEMAS)}",
                           code="version")
    if not isinstance(meta["swap_slots"], list) or not all(isinstance(s, dict) for s in meta["swap_slots"]):
        raise LoragenError(f"{f}: swap_slots must be a list of objects")
    for s in meta["swap_slots"]:
        miss = [k for k in _SLOT_REQUIRED if k not in s]
        if miss:
            raise LoragenError(f"{f}: swap slot {s.get('name', '?')} is missing {', '.join(miss)}")
        _check_slot(f, meta["schema"], s)
    if "adapter_slots" in meta:
        _check_adapter_slots(f, meta["adapter_slots"])
    if backend is not None and meta["backend"] != backend:
        raise LoragenError(f"{d} is a '{meta['backend']}' artifact, not '{backend}'")
    for name in meta["files"]:
        if not (d / name).exists():
            raise LoragenError(f"artifact {d} is incomplete: {name} is missing")
    return Artifact(d, meta)


def _check_adapter_slots(f: Path, a: Any) -> None:
    """The run-time LoRA slots' block: how a runtime fills them (ExecuTorch: a method name; ONNX: the
    input names, A and B per module), a rank >= 1, and one [out, in] shape per module."""
    def whole(v):
        return isinstance(v, int) and not isinstance(v, bool) and v >= 1

    ok = (isinstance(a, dict) and whole(a.get("rank"))
          and isinstance(a.get("modules"), list) and all(isinstance(m, str) for m in a["modules"])
          and isinstance(a.get("shapes"), list) and len(a["shapes"]) == len(a["modules"])
          and all(isinstance(s, list) and len(s) == 2 and all(map(whole, s)) for s in a["shapes"]))
    names = a.get("input_names") if isinstance(a, dict) else None
    ok = ok and (isinstance(a.get("method"), str) if names is None else
                 "method" not in a and isinstance(names, list) and len(names) == 2 * len(a["modules"])
                 and all(isinstance(n, str) for n in names))
    if not ok:
        raise LoragenError(f"{f}: adapter_slots must hold a method name or two input names per module, a rank >= 1, "
                           f"the module names and one [out, in] shape per module")


def _check_slot(f: Path, schema: str, s: dict) -> None:
    """A slot's dtype, and for a part of a quantized weight its encoding and shape (schema v2 only)."""
    if "encoding" not in s:
        if s["dtype"] not in SLOT_DTYPES:
            raise LoragenError(f"{f}: swap slot {s['name']} has unknown dtype {s['dtype']}")
        return
    if schema != ARTIFACT_SCHEMA_V2:
        raise LoragenError(f"{f}: swap slot {s['name']} has an encoding, which schema {schema} does not have",
                           code="version")
    try:
        enc = quant.get(s["encoding"])
    except LoragenError as e:
        raise LoragenError(f"{f}: swap slot {s['name']}: {e}", code="encoding") from None
    part, param = s.get("part"), s.get("param")
    if part not in quant.PARTS or not isinstance(param, str) or s["name"] != quant.part_name(param, part):
        raise LoragenError(f"{f}: swap slot {s['name']} is not a part ({'/'.join(quant.PARTS)}) of a quantized weight",
                           code="encoding")
    if s["dtype"] not in PART_DTYPES or s["dtype"] != enc.part_dtypes()[part]:
        raise LoragenError(f"{f}: swap slot {s['name']} has dtype {s['dtype']}, encoding {enc.id} stores "
                           f"{enc.part_dtypes()[part]}", code="encoding")


def as_artifact(artifact: "Artifact | str | os.PathLike", backend: str | None = None) -> Artifact:
    """``artifact`` itself when it is already read (checked to be of ``backend``), else :func:`read_artifact`."""
    if isinstance(artifact, Artifact):
        if backend is not None and artifact.backend != backend:
            raise LoragenError(f"{artifact.path} is a '{artifact.backend}' artifact, not '{backend}'")
        return artifact
    return read_artifact(artifact, backend)


def write_artifact_json(d: Path, meta: dict) -> None:
    """artifact.json, schema v2 when a slot is quantized (v1 otherwise)."""
    v2 = any("encoding" in s for s in (s if isinstance(s, dict) else s.to_dict() for s in meta.get("swap_slots", [])))
    meta = {"schema": ARTIFACT_SCHEMA_V2 if v2 else ARTIFACT_SCHEMA, **meta}
    (d / ARTIFACT_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def check_swap(artifact: Artifact, swap: Mapping[str, torch.Tensor] | None) -> Mapping[str, torch.Tensor]:
    """Check names, shapes and dtypes of a swap against the artifact's slots; returns contiguous CPU
    tensors. The names are checked at once; the tensors of a :class:`LazyTensors` swap are checked
    as they are read (still one at a time), those of a dict at once."""
    if not swap:
        return {}
    if not isinstance(swap, Mapping):
        raise LoragenError("swap must map parameter names to tensors")
    slots = artifact.slot_map
    for name in swap:
        if name not in slots:
            known = ", ".join(list(slots)[:3])
            raise LoragenError(f"'{name}' is not a swap slot of {artifact.path} (slots look like {known}, ...)")
    if isinstance(swap, LazyTensors):
        return LazyTensors(swap, lambda name: _checked(slots[name], swap[name], values=not swap.finite), swap.finite)
    return {name: _checked(slots[name], t) for name, t in swap.items()}


def _checked(s: "SwapSlot", t, values: bool = True) -> torch.Tensor:
    name = s.name
    if not isinstance(t, torch.Tensor):
        raise LoragenError(f"swap value for {name} is a {type(t).__name__}, not a tensor")
    if list(t.shape) != list(s.shape):
        raise LoragenError(f"swap tensor {name} has shape {list(t.shape)}, slot expects {s.shape}")
    if dtype_name(t.dtype) != s.dtype:
        raise LoragenError(f"swap tensor {name} has dtype {dtype_name(t.dtype)}, slot expects {s.dtype}")
    if values and not torch.isfinite(t).all():
        raise LoragenError(f"swap tensor {name} holds NaN or inf")
    return t.detach().contiguous().cpu()


def slot_corrupt(root: Path, slot: SwapSlot, why: str) -> LoragenError:
    """The one error for stored slot bytes that are not where or what artifact.json says."""
    return LoragenError(f"artifact {root}: swap slot {slot.name} {why}; artifact is corrupt")
