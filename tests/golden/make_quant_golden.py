"""Regenerate the on-device requantization vectors (tests/golden/quant/) that the Python, Kotlin and
Swift readers test against.

    python tests/golden/make_quant_golden.py            # rewrite tests/golden/quant/ in place
    python tests/golden/make_quant_golden.py --out DIR  # write DIR/<encoding>.safetensors, DIR/index.json

make_golden.py calls :func:`generate` too (into ``<out>/quant``), so one regeneration of
tests/golden writes every vector. Deterministic: seeded tensors, no clock.

One file per encoding of loragen_mobile.quant (``quant/<id>.safetensors``), tensors::

    w              fp32 [OUT, IN]   the weights (edge-case rows, see _weights)
    q, scale       parts            quant.get(id).quantize(w)
    dequantized    fp32 [OUT, IN]   Encoding.dequantize(parts)
    lora_A         fp32 [RANK, IN]
    lora_B         fp32 [OUT, RANK] (rows 0, 9 and 11 are zero: those rows requantize unchanged)
    merged         fp32 [OUT, IN]   quant.device_merge(dequantized, A, B, lora_scale)
    requant_q, requant_scale        quant.requantize(enc, parts, A, B, lora_scale)

metadata: ``encoding`` (the id) and ``lora_scale`` (Python ``repr`` of the float). ``index.json``
lists the files with shape, rank, dtypes, lora_scale and sha256.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import torch

from loragen_mobile import quant

_ST = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int8: "I8", torch.uint8: "U8"}

OUT, IN, RANK = 12, 256, 4
LORA_SCALE = 2.0 / 3.0  # not a power of two: the fp64 multiply rounds
SEED = 20260115
TINY_ROW = 9


def _tie_row(g: torch.Generator, extreme: float, lo: int, hi: int) -> torch.Tensor:
    """IN values: every block of 32 holds ``extreme`` once (so every group size's scale is exactly
    1 for the encoding the row is made for) and otherwise half-integers k + 0.5, lo <= k < hi
    (exact .5 ties of the rounding step)."""
    k = torch.randint(lo, hi, (IN,), generator=g).to(torch.float32) + 0.5
    pos = torch.randint(0, 32, (IN // 32,), generator=g) + torch.arange(0, IN, 32)
    k[pos] = extreme
    return k


def _tiny(enc: quant.Encoding, g: torch.Generator) -> torch.Tensor:
    """The small-magnitude row, per family: xnnpack below the smallest-normal clamp of the scale
    (with fp32 subnormals), ORT as small as keeps 1 / scale finite, Core ML in fp16's subnormal
    range."""
    u = torch.rand(IN, generator=g) * 2 - 1
    u[::32] = 1.0  # each block's extreme
    if enc.family == "xnnpack":
        half_range = ((1 << enc.bits) - 1) / 2
        amax = torch.finfo(torch.float32).smallest_normal * half_range * 0.75
        v = (u * amax).to(torch.float32)
        v[5::64] = 1e-40  # fp32 subnormals
        v[7::64] = -3e-41
        return v
    if enc.family == "ort":
        return (u * 2.0 ** -100).to(torch.float32)
    return (u * 4e-5).to(torch.float32)  # fp16 subnormals below 6.1e-5


def _weights(enc: quant.Encoding) -> torch.Tensor:
    g = torch.Generator().manual_seed(SEED)
    w = torch.randn(OUT, IN, generator=g) * 0.05
    w[0] = 0.0  # an all-zero row: an all-zero group/block/row in every encoding
    # sign ties: every block's extremes are +0.5 and -0.5
    r = (torch.rand(IN, generator=g) - 0.5) * 0.9
    r[0::32], r[17::32] = 0.5, -0.5
    w[1] = r
    w[2] = _tie_row(g, 7.5, -8, 7)         # xnnpack int4: amax 7.5 -> scale 1, round half even
    w[3] = _tie_row(g, -8.0, -8, 7)        # ort int4: signed extreme -8 -> scale 1, roundf half away
    w[4] = _tie_row(g, 7.0, -7, 7)         # coreml int4: max 7 -> scale 1
    w[5] = _tie_row(g, 127.5, -128, 127)   # xnnpack int8
    w[6] = _tie_row(g, -128.0, -128, 127)  # ort int8
    w[7] = _tie_row(g, 127.0, -127, 127)   # coreml int8
    w[8] = (torch.randn(IN, generator=g) * 1.5e4).clamp(-6e4, 6e4)  # large magnitude (fp16-finite)
    w[TINY_ROW] = _tiny(enc, g)
    w[10] = torch.randn(IN, generator=g) * 0.02
    w[11, :128] = 0.0  # an all-zero first half of a row
    w[10, 64:96] = 0.25 * torch.tensor([1.0, -1.0]).repeat(16)  # a block of +-0.25 only
    return w.to(torch.float32).contiguous()


def _lora(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    a = (torch.randn(RANK, IN, generator=g) * 0.1).to(torch.float32)
    b = (torch.randn(OUT, RANK, generator=g) * 0.1).to(torch.float32)
    b[8] *= 1000.0  # the large row moves by a comparable amount
    b[0] = 0.0
    b[TINY_ROW] = 0.0
    b[11] = 0.0
    return a.contiguous(), b.contiguous()


def vectors(enc_id: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of one encoding's file."""
    enc = quant.get(enc_id)
    w = _weights(enc)
    a, b = _lora(torch.Generator().manual_seed(SEED + 1))
    parts = enc.quantize(w)
    deq = enc.dequantize(parts)
    merged = quant.device_merge(deq, a, b, LORA_SCALE)
    re = quant.requantize(enc, parts, a, b, LORA_SCALE)
    tensors = {"w": w, "q": parts["q"], "scale": parts["scale"], "dequantized": deq, "lora_A": a, "lora_B": b,
               "merged": merged, "requant_q": re["q"], "requant_scale": re["scale"]}
    return {k: v.contiguous() for k, v in tensors.items()}, {"encoding": enc_id, "lora_scale": repr(LORA_SCALE)}


def serialize(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> bytes:
    """safetensors bytes with a fixed header order (``__metadata__`` with sorted keys, then the
    tensors by name, data in the same order): the safetensors library orders metadata keys
    arbitrarily, so the vectors are written here."""
    header: dict = {"__metadata__": dict(sorted(meta.items()))}
    data, pos = [], 0
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        raw = t.view(torch.uint8).numpy().tobytes()
        header[name] = {"dtype": _ST[t.dtype], "shape": list(t.shape), "data_offsets": [pos, pos + len(raw)]}
        data.append(raw)
        pos += len(raw)
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    return len(hb).to_bytes(8, "little") + hb + b"".join(data)


def generate(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    index = {"shape": [OUT, IN], "rank": RANK, "lora_scale": repr(LORA_SCALE), "encodings": {}}
    for enc_id in quant.KNOWN:
        tensors, meta = vectors(enc_id)
        raw = serialize(tensors, meta)
        (out / f"{enc_id}.safetensors").write_bytes(raw)
        enc = quant.get(enc_id)
        index["encodings"][enc_id] = {"file": f"quant/{enc_id}.safetensors", "q_dtype": enc.q_dtype,
                                      "scale_dtype": enc.scale_dtype, "part_shapes": enc.part_shapes((OUT, IN)),
                                      "sha256": hashlib.sha256(raw).hexdigest()}
    (out / "index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(Path(__file__).parent / "quant"))
    generate(Path(ap.parse_args().out))


if __name__ == "__main__":
    main()
