"""Quantized weight encodings: how each backend stores a 4/8-bit linear weight, as data and rules.

A quantized swappable weight ``W`` (``[out, in]``, the HF parameter ``P``) is stored by the backend
as two *parts*, each a swap slot of its own in artifact.json (named ``P:q`` and ``P:scale``, with
``param``, ``part`` and ``encoding`` fields): the integer codes and their scales. An
:class:`Encoding` says, for one backend scheme, the parts' dtypes and shapes and the exact rule
that turns fp32 weights into those bytes (:meth:`Encoding.quantize`, bit-exact with the backend's
own quantizer: torchao for ExecuTorch, onnxruntime's MatMulNBits quantizer, coremltools.optimize)
and back (:meth:`Encoding.dequantize`, what the runtime computes). Encoding ids::

    xnnpack-int4-g32 | xnnpack-int4-g128 | xnnpack-int8-pc      (ExecuTorch, torchao 8da4w / 8da8w)
    ort-int4-b32 | ort-int4-b128 | ort-int8-b32 | ort-int8-b128  (ONNX MatMulNBits, symmetric)
    coreml-int4-b32 | coreml-int8-pc                            (Core ML, linear_symmetric)

``g``/``b`` N: N consecutive input features share one scale; ``pc``: one scale per output row.

:func:`device_merge` is the arithmetic a phone uses to merge a LoRA into a dequantized weight
before requantizing it (fp64 accumulation in a fixed order, so Python, Kotlin and Swift give the
same bits): a ``lora`` bundle for a quantized artifact is applied as
``quantize(device_merge(dequantize(parts), A, B, scale))``. The rules are in docs/quantization.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from .dtypes import lookup
from .errors import LoragenError

#: the parts of a quantized weight, in slot order
PARTS = ("q", "scale")

_ID = re.compile(r"^(xnnpack|ort|coreml)-int(4|8)-(g\d+|b\d+|pc)$")

#: the encodings a reader of this version knows (everything else is refused, code ``encoding``)
KNOWN = ("xnnpack-int4-g32", "xnnpack-int4-g128", "xnnpack-int8-pc",
         "ort-int4-b32", "ort-int4-b128", "ort-int8-b32", "ort-int8-b128",
         "coreml-int4-b32", "coreml-int8-pc")


def part_name(param: str, part: str) -> str:
    """The swap-slot name of one part of a quantized weight (``P:q``, ``P:scale``)."""
    return f"{param}:{part}"


def split_part_name(name: str) -> tuple[str, str | None]:
    """``(param, part)`` of a slot name (``part`` None for an unquantized slot)."""
    param, sep, part = name.rpartition(":")
    return (param, part) if sep and part in PARTS else (name, None)


@dataclass(frozen=True)
class Encoding:
    """One backend's storage of a quantized ``[out, in]`` weight (see the module docstring)."""

    id: str
    family: str        # xnnpack | ort | coreml
    bits: int          # 4 or 8
    group: int | None  # input features per scale; None: one scale per output row

    # ------------------------------------------------------------------ layout

    @property
    def q_dtype(self) -> str:
        return "int8" if self.bits == 8 and self.family != "ort" else "uint8"

    @property
    def scale_dtype(self) -> str:
        if self.family == "xnnpack":
            return "bfloat16" if self.bits == 4 else "float32"
        return "float32" if self.family == "ort" else "float16"

    def check_shape(self, shape) -> tuple[int, int]:
        if len(shape) != 2:
            raise LoragenError(f"{self.id} quantizes 2-D weights, not shape {list(shape)}", code="encoding")
        out_f, in_f = int(shape[0]), int(shape[1])
        if self.group is not None and in_f % self.group:
            raise LoragenError(f"{self.id}: {in_f} input features are not a multiple of the group size {self.group}",
                               code="encoding")
        return out_f, in_f

    def part_shapes(self, shape) -> dict[str, list[int]]:
        """The stored shape of each part for a weight of ``shape``."""
        out_f, in_f = self.check_shape(shape)
        groups = in_f // self.group if self.group else 1
        if self.family == "ort":
            per_block = self.group * self.bits // 8
            return {"q": [out_f, groups, per_block], "scale": [out_f, groups]}
        q_cols = in_f * self.bits // 8
        return {"q": [out_f, q_cols], "scale": [out_f, groups]}

    def weight_shape(self, q_shape) -> list[int]:
        """The ``[out, in]`` shape of the weight whose q part has the stored shape ``q_shape``."""
        n = 1
        for d in list(q_shape)[1:]:
            n *= int(d)
        return [int(q_shape[0]), n * 8 // self.bits]

    def part_dtypes(self) -> dict[str, str]:
        return {"q": self.q_dtype, "scale": self.scale_dtype}

    def nbytes(self, shape) -> int:
        return sum(int(np.prod(s)) * lookup(self.part_dtypes()[p]).itemsize for p, s in self.part_shapes(shape).items())

    def describe(self) -> dict:
        """The encoding's fields as artifact.json and bundle manifests record them."""
        return {"id": self.id, "bits": self.bits, "group": self.group, "symmetric": True,
                "q_dtype": self.q_dtype, "scale_dtype": self.scale_dtype}

    # ------------------------------------------------------------------ rules

    def quantize(self, w: torch.Tensor) -> dict[str, torch.Tensor]:
        """The stored parts of fp32 weights ``w`` (``[out, in]``), byte for byte what the backend's
        own quantizer writes."""
        out_f, in_f = self.check_shape(w.shape)
        w = w.detach().to(torch.float32).contiguous()
        g = self.group or in_f
        blocks = w.reshape(out_f, in_f // g, g)
        q, scale = _RULES[self.family](blocks, self.bits)
        shapes = self.part_shapes(w.shape)
        return {"q": _pack(self, q).reshape(shapes["q"]), "scale": scale.reshape(shapes["scale"]).contiguous()}

    def stored(self, w: torch.Tensor) -> torch.Tensor:
        """What an artifact holds for weights ``w``, as the runtime sees it: ``dequantize(quantize(w))``
        in ``w``'s dtype."""
        return self.dequantize(self.quantize(w.float())).to(w.dtype)

    def codes(self, q: torch.Tensor) -> torch.Tensor:
        """The signed integer codes ``[out, in]`` (as float32) of a stored q part."""
        return _unpack(self, q.reshape(q.shape[0], -1))

    def dequantize(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        """fp32 weights ``[out, in]`` from the stored parts, as the backend's runtime computes them."""
        q, scale = parts["q"], parts["scale"]
        out_f = q.shape[0]
        codes = self.codes(q)
        in_f = codes.shape[1]
        g = self.group or in_f
        s = scale.reshape(out_f, in_f // g, 1).to(torch.float32)
        codes = codes.reshape(out_f, in_f // g, g)
        if self.family == "coreml":  # fp16 arithmetic in the runtime: one fp16 rounding of q * s
            return (codes * s).to(torch.float16).to(torch.float32).reshape(out_f, in_f)
        return (codes * s).reshape(out_f, in_f)


def get(encoding_id) -> Encoding:
    """The encoding named ``encoding_id``; an unknown one is refused (code ``encoding``)."""
    m = _ID.match(encoding_id) if isinstance(encoding_id, str) else None
    if m is None or encoding_id not in KNOWN:
        raise LoragenError(f"unknown weight encoding {encoding_id!r}; this reader knows {', '.join(KNOWN)}",
                           code="encoding")
    family, bits, grp = m.group(1), int(m.group(2)), m.group(3)
    return Encoding(encoding_id, family, bits, None if grp == "pc" else int(grp[1:]))


# --------------------------------------------------------------------------- per-backend rules
# Each rule: fp32 blocks [out, groups, g] -> (signed integer codes as int32 [out, groups, g], scales).


def _xnnpack(blocks: torch.Tensor, bits: int):
    """torchao's symmetric affine quantization (Int8DynamicActivationIntxWeightConfig, "affine"
    qparams): scale = amax / ((qmax - qmin) / 2), at least the smallest normal fp32; q =
    clamp(round_half_even(w * (1 / scale))). XNNPACK stores 4-bit scales as bf16 (rounded to
    nearest even), 8-bit per-channel scales as fp32; the codes use the fp32 scale."""
    qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    amax = blocks.abs().amax(dim=-1, keepdim=True)
    scale = amax / torch.tensor((qmax - qmin) / 2, dtype=torch.float32)
    scale = torch.clamp(scale, min=torch.finfo(torch.float32).smallest_normal)
    q = torch.clamp(torch.round(blocks * (1.0 / scale)), qmin, qmax).to(torch.int32)
    return q, (scale.to(torch.bfloat16) if bits == 4 else scale).squeeze(-1)


def _ort(blocks: torch.Tensor, bits: int):
    """onnxruntime's symmetric block quantization (MatMulNBits): the block's value of largest
    magnitude, signed (the minimum on a tie), over -2^(bits-1) is the scale; u = clamp(roundf(w *
    (1 / scale) + 2^(bits-1))) with roundf rounding halves away from zero, in separate fp32 steps;
    stored unsigned. The codes returned here are u - 2^(bits-1)."""
    mid = 1 << (bits - 1)
    vmax = blocks.amax(dim=-1, keepdim=True)
    vmin = blocks.amin(dim=-1, keepdim=True)
    signed = torch.where(vmax.abs() > vmin.abs(), vmax, vmin)
    scale = signed / torch.tensor(-float(mid), dtype=torch.float32)
    recip = torch.where(scale != 0, 1.0 / scale, torch.zeros_like(scale))
    t = blocks * recip
    t = t + torch.tensor(float(mid), dtype=torch.float32)
    r = torch.trunc(t)
    r = r + torch.where((t - r).abs() >= 0.5, torch.sign(t), torch.zeros_like(t))
    u = torch.clamp(r, 0, 2 * mid - 1).to(torch.int32)
    return u - mid, scale.squeeze(-1)


def _coreml(blocks: torch.Tensor, bits: int):
    """coremltools.optimize's linear_symmetric quantization of fp16 weights, in numpy fp16
    arithmetic (each operation computed in fp32 and rounded to fp16): scale = max|w| / qmax, q =
    clip(round_half_even(w / scale), -qmax, qmax) with qmax = 7 (int4) or 127 (int8); a block of
    zeros has scale 0 and codes 0."""
    qmax = (1 << (bits - 1)) - 1
    w = blocks.numpy().astype(np.float16)
    ma = np.abs(w).max(axis=-1, keepdims=True)
    scale = (ma.astype(np.float32) / np.float32(qmax)).astype(np.float16)
    safe = np.where(scale == 0, np.float16(1), scale)
    q = np.round((w.astype(np.float32) / safe.astype(np.float32)).astype(np.float16).astype(np.float32))
    q = np.where(scale == 0, 0, np.clip(q, -qmax, qmax)).astype(np.int32)
    return torch.from_numpy(q), torch.from_numpy(scale.squeeze(-1))


_RULES = {"xnnpack": _xnnpack, "ort": _ort, "coreml": _coreml}


def _pack(enc: Encoding, q: torch.Tensor) -> torch.Tensor:
    """Signed codes [out, groups, g] -> the stored q part (flat per row)."""
    out_f = q.shape[0]
    q = q.reshape(out_f, -1)
    if enc.bits == 8:
        return (q + 128).to(torch.uint8) if enc.family == "ort" else q.to(torch.int8)
    u = (q + 8) if enc.family in ("xnnpack", "ort") else (q & 0xF)  # Core ML: two's complement nibbles
    u = u.to(torch.uint8)
    return (u[:, 0::2] | (u[:, 1::2] << 4)).contiguous()  # element 2i in the low nibble


def _unpack(enc: Encoding, q: torch.Tensor) -> torch.Tensor:
    """The stored q part (rows) -> signed codes [out, in] as float32."""
    if enc.bits == 8:
        v = q.to(torch.int32)
        return (v - 128 if enc.family == "ort" else v).to(torch.float32)
    u = q.to(torch.int32)
    lo, hi = u & 0xF, (u >> 4) & 0xF
    codes = torch.stack([lo, hi], dim=-1).reshape(q.shape[0], -1)
    codes = codes - 8 if enc.family in ("xnnpack", "ort") else torch.where(codes > 7, codes - 16, codes)
    return codes.to(torch.float32)


# --------------------------------------------------------------------------- the device merge


def device_merge(w: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """``W + scale * B @ A`` as phones compute it before requantizing (fp32 result): every product
    ``B[i,k] * A[k,j]`` in fp64 (exact for fp32 inputs), summed over k = 0..r-1 in order from 0 in
    fp64, times ``scale`` (fp64), added to ``W`` (fp64), one rounding to fp32. Kotlin and Swift
    compute the same sequence of IEEE operations, so the bits agree everywhere."""
    a64, b64 = a.to(torch.float64), b.to(torch.float64)
    acc = torch.zeros(w.shape, dtype=torch.float64)
    for k in range(a64.shape[0]):
        acc += b64[:, k:k + 1] * a64[k:k + 1, :]
    acc *= float(scale)
    return (w.to(torch.float64) + acc).to(torch.float32)


def requantize(enc: Encoding, parts: dict[str, torch.Tensor], a: torch.Tensor, b: torch.Tensor,
               scale: float) -> dict[str, torch.Tensor]:
    """What a phone does with a ``lora`` bundle for a quantized slot: dequantize, merge
    (:func:`device_merge`), quantize again with the backend's rule."""
    return enc.quantize(device_merge(enc.dequantize(parts), a, b, scale))
