"""The on-device requantization vectors (tests/golden/quant/, read by the Kotlin core's QuantTest and
the Swift QuantTests): current, consistent with loragen_mobile/quant.py, and the rules' numeric
properties (error bounds, which encodings requantize a zero LoRA unchanged)."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from loragen_mobile import quant

GOLDEN = Path(__file__).resolve().parent / "golden"
QDIR = GOLDEN / "quant"


def _generator():
    spec = importlib.util.spec_from_file_location("make_quant_golden", GOLDEN / "make_quant_golden.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _load(enc_id):
    path = QDIR / f"{enc_id}.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    return load_file(str(path)), meta


def _bits(t: torch.Tensor) -> bytes:
    return t.contiguous().view(torch.uint8).numpy().tobytes()


def test_vectors_are_current(tmp_path):
    """Regenerated from scratch: byte-identical files (the phones' tests read these)."""
    _generator().generate(tmp_path)
    fresh = sorted(p.name for p in tmp_path.iterdir())
    assert fresh == sorted(p.name for p in QDIR.iterdir())
    assert fresh == sorted([f"{e}.safetensors" for e in quant.KNOWN] + ["index.json"])
    for name in fresh:
        assert (tmp_path / name).read_bytes() == (QDIR / name).read_bytes(), f"{name} is stale: run tests/golden/make_quant_golden.py"
    index = json.loads((QDIR / "index.json").read_text())
    assert sorted(index["encodings"]) == sorted(quant.KNOWN) and index["shape"] == [12, 256] and index["rank"] == 4
    sizes = [(QDIR / f"{e}.safetensors").stat().st_size for e in quant.KNOWN]
    assert max(sizes) < 50_000  # small files


@pytest.mark.parametrize("enc_id", quant.KNOWN)
def test_vectors_follow_the_reference(enc_id):
    t, meta = _load(enc_id)
    enc = quant.get(enc_id)
    assert meta == {"encoding": enc_id, "lora_scale": repr(2.0 / 3.0)}
    scale = float(meta["lora_scale"])
    parts = enc.quantize(t["w"])
    shapes, dts = enc.part_shapes(t["w"].shape), enc.part_dtypes()
    for p in ("q", "scale"):
        assert list(t[p].shape) == list(t["requant_" + p].shape) == shapes[p]
        assert str(t[p].dtype) == f"torch.{dts[p]}"
        assert _bits(parts[p]) == _bits(t[p])
    assert _bits(enc.dequantize(parts)) == _bits(t["dequantized"])
    assert _bits(quant.device_merge(t["dequantized"], t["lora_A"], t["lora_B"], scale)) == _bits(t["merged"])
    re = quant.requantize(enc, parts, t["lora_A"], t["lora_B"], scale)
    assert _bits(re["q"]) == _bits(t["requant_q"]) and _bits(re["scale"]) == _bits(t["requant_scale"])
    assert _bits(t["requant_q"]) != _bits(t["q"])  # the LoRA moves codes
    # device_merge is the fp64 sum in order, rounded once to fp32
    exact = t["dequantized"].double() + (t["lora_B"].double() @ t["lora_A"].double()) * scale
    assert (t["merged"].double() - exact).abs().max().item() <= (exact.abs() * 2.0 ** -24 * 1.001).max().item()


# |w - dequantize(quantize(w))| / |stored scale| on the vectors, per encoding family and bits: torchao
# rounds to nearest (0.5), its int4 scale stored as bf16 (8 codes * 2^-8 relative); ORT's opposite
# extreme clamps to 2^(bits-1) - 1 (up to 1 scale); Core ML rounds w to fp16 first (compared to that),
# the quotient to fp16 and the product to fp16 (normal fp16 scales only).
BOUNDS = {("xnnpack", 4): (0.5 + 8 * 2.0 ** -8) / (1 - 2.0 ** -8), ("xnnpack", 8): 0.5 + 2.0 ** -14,
          ("ort", 4): 1.0 + 2.0 ** -14, ("ort", 8): 1.0 + 2.0 ** -14,
          ("coreml", 4): 0.5 + 2.0 ** -9 + 7 * 2.0 ** -11, ("coreml", 8): 0.5 + 2.0 ** -5 + 127 * 2.0 ** -11}
MEASURED = {"xnnpack-int4-g32": 0.5259, "xnnpack-int4-g128": 0.5259, "xnnpack-int8-pc": 0.5000,
            "ort-int4-b32": 1.0, "ort-int4-b128": 1.0, "ort-int8-b32": 1.0, "ort-int8-b128": 1.0,
            "coreml-int4-b32": 0.5005, "coreml-int8-pc": 0.5347}


@pytest.mark.parametrize("enc_id", quant.KNOWN)
def test_dequantize_error_is_bounded_by_the_scale(enc_id):
    t, _ = _load(enc_id)
    enc = quant.get(enc_id)
    out_f, in_f = t["w"].shape
    g = enc.group or in_f
    s = t["scale"].to(torch.float32).abs().reshape(out_f, -1, 1).expand(out_f, in_f // g, g).reshape(out_f, in_f)
    w = t["w"].half().float() if enc.family == "coreml" else t["w"]
    d = t["dequantized"]
    zero = s == 0
    assert torch.equal(d[zero], w[zero]) and torch.equal(d[zero], torch.zeros_like(d[zero]))  # zero blocks stay zero
    normal = (s >= 2.0 ** -14) if enc.family == "coreml" else ~zero  # Core ML: normal fp16 scales
    ratio = ((w - d).abs()[normal] / s[normal]).max().item()
    assert ratio <= BOUNDS[enc.family, enc.bits]
    assert ratio == pytest.approx(MEASURED[enc_id], abs=1e-4)
    if enc.family == "ort":  # beyond half a step only where the opposite extreme is clamped
        codes = quant._unpack(enc, t["q"].reshape(out_f, -1))
        far = ((w - d).abs() > s * (0.5 + 2.0 ** -14)) & normal
        assert far.any() and torch.all(codes[far] == (1 << (enc.bits - 1)) - 1)


@pytest.mark.parametrize("enc_id", quant.KNOWN)
def test_zero_lora_requantization(enc_id):
    """A zero LoRA: merged == dequantized; ORT and Core ML requantize to the stored parts; torchao's
    rule (scale = amax / 7.5 or / 127.5: the extreme lands on 7.5, rounded to the clamped 7 when
    positive, to -8 when negative) rescales a group by 14/15 or 16/15 (254/255 or 256/255 for int8)
    per requantization, so xnnpack parts move: a phone requantizes from the artifact's stored parts,
    never from a previous result."""
    t, meta = _load(enc_id)
    enc = quant.get(enc_id)
    parts = {"q": t["q"], "scale": t["scale"]}
    zero_b = torch.zeros_like(t["lora_B"])
    merged = quant.device_merge(t["dequantized"], t["lora_A"], zero_b, float(meta["lora_scale"]))
    assert torch.equal(merged, t["dequantized"])
    re = quant.requantize(enc, parts, t["lora_A"], zero_b, float(meta["lora_scale"]))
    same = _bits(re["q"]) == _bits(parts["q"]) and _bits(re["scale"]) == _bits(parts["scale"])
    assert same == (enc.family != "xnnpack")
    if enc.family == "xnnpack":
        ratio = (re["scale"].float() / parts["scale"].float())
        tiny = torch.finfo(torch.float32).smallest_normal
        nz = parts["scale"].float() > tiny  # zero and tiny groups keep the clamped scale
        assert torch.all(re["scale"].float()[~nz] == tiny) and (~nz).any()
        # every group's scale moves by (qmax - qmin - 1) / (qmax - qmin) or (qmax - qmin + 1) / (qmax - qmin),
        # up to the bf16 rounding of int4 scales
        span = (1 << enc.bits) - 1
        slack = 2.0 ** -7 if enc.bits == 4 else 2.0 ** -22
        r = ratio[nz]
        down = (r - (span - 1) / span).abs() <= slack
        up = (r - (span + 1) / span).abs() <= slack
        assert torch.all(down | up) and down.any() and up.any()
