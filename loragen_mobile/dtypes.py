"""One dtype vocabulary for the whole pipeline.

Each dtype has the short name users type (``fp32``), the torch name that artifact.json, generator
configs and slot records carry (``float32``), the safetensors code bundles carry (``F32``), the
torch and numpy dtypes and the element size. Every table of dtypes in the project is this one;
:func:`lookup` accepts any of the names (or a torch dtype).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .errors import LoragenError


@dataclass(frozen=True)
class DType:
    short: str           # what users type: fp32, fp16, bf16, int8, ...
    name: str            # torch's name, recorded in artifact.json: float32, float16, ...
    st: str              # safetensors code, recorded in bundles: F32, F16, ...
    torch: torch.dtype
    numpy: Any           # None for bfloat16 (numpy has none)
    itemsize: int

    @property
    def floating(self) -> bool:
        return self.torch.is_floating_point


ALL = (
    DType("fp32", "float32", "F32", torch.float32, np.float32, 4),
    DType("fp16", "float16", "F16", torch.float16, np.float16, 2),
    DType("bf16", "bfloat16", "BF16", torch.bfloat16, None, 2),
    DType("int8", "int8", "I8", torch.int8, np.int8, 1),
    DType("uint8", "uint8", "U8", torch.uint8, np.uint8, 1),
    DType("int32", "int32", "I32", torch.int32, np.int32, 4),
    DType("int64", "int64", "I64", torch.int64, np.int64, 8),
)
_BY_TORCH = {d.torch: d for d in ALL}
_BY_NAME = {k: d for d in ALL for k in (d.short, d.name, d.st)}

#: Floating-point precisions a model can be loaded, trained or exported in.
PRECISIONS = ("fp32", "fp16", "bf16")


def lookup(x: str | torch.dtype) -> DType:
    """The dtype for a torch dtype or any of its names (``fp16``, ``float16``, ``F16``, ``torch.float16``)."""
    if isinstance(x, torch.dtype):
        if x in _BY_TORCH:
            return _BY_TORCH[x]
    elif isinstance(x, str):
        key = x.replace("torch.", "")
        if key in _BY_NAME:
            return _BY_NAME[key]
    raise LoragenError(f"unknown dtype {x!r}; known: {', '.join(d.short for d in ALL)}", code="usage")


def is_known(x: str) -> bool:
    return isinstance(x, str) and x.replace("torch.", "") in _BY_NAME


def parse_precision(name: str, allowed: tuple[str, ...] = PRECISIONS) -> torch.dtype:
    """A user-given floating-point precision (one of ``allowed``, by short or torch name)."""
    d = _BY_NAME.get(name) if isinstance(name, str) else None
    if d is None or d.short not in allowed:
        raise LoragenError(f"unknown dtype '{name}'; use one of {', '.join(allowed)}", code="usage")
    return d.torch


def torch_name(dtype: torch.dtype) -> str:
    """``float32`` for ``torch.float32`` (the form artifact.json records)."""
    return lookup(dtype).name


def tensor_bytes(t: torch.Tensor) -> bytes:
    """The raw little-endian bytes of a tensor, row-major (what every backend and bundle stores)."""
    t = t.detach().contiguous().cpu()
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def tensor_sha256(t: torch.Tensor) -> str:
    """sha256 of :func:`tensor_bytes` (the digest slot records and bundle manifests carry)."""
    return hashlib.sha256(tensor_bytes(t)).hexdigest()


def from_bytes(data: bytes, dtype: str | torch.dtype, shape) -> torch.Tensor:
    """The inverse of :func:`tensor_bytes` (a copy)."""
    d = lookup(dtype)
    return torch.frombuffer(bytearray(data), dtype=d.torch).reshape(list(shape)) if data else \
        torch.empty(list(shape), dtype=d.torch)
