"""Quantized ExecuTorch exports (8-bit dynamic activations, 4-bit grouped / 8-bit per-channel weights):
the stored part bytes are quant.py's rule, the program matches its same-scheme eager reference, swaps of
requantized parts run, bad input is refused. One export (the shared ``quant_artifacts`` of tiny-llama,
8da4w-g32); the other schemes are checked against torchao without an export."""

import hashlib

import pytest
import torch

from loragen_mobile import quant
from loragen_mobile.dtypes import tensor_bytes
from loragen_mobile.errors import LoragenError
from loragen_mobile.exporters import get_exporter
from loragen_mobile.exporters.artifact import read_artifact
from loragen_mobile.exporters.executorch import DATA, _locate_parts, _ptd_ranges, quantize_linears
from loragen_mobile.exporters.validation import ValidationReport, check_logits, validation_prompt
from loragen_mobile.models import load_model

EXP = get_exporter("executorch")
SCHEME = "8da4w-g32"
# One quantized ExecuTorch export (about 2 minutes): tiny-llama. The program matches its same-scheme
# reference to ~2e-6 where XNNPACK's float ops round as eager PyTorch's do (an AVX2 machine); elsewhere
# an ulp can flip one step of the dynamic int8 activation quantization, ~0.05-0.13 logits on these
# random std-0.15 models (measured on an AVX-512 machine, tiny-gemma alike): the exporter's
# same_scheme_threshold (validation.THRESHOLDS["dynamic_int8"]), greedy tokens exact; a wrong scale or
# layout is off by units. Gemma paths are tested quantized on ONNX and Core ML and unquantized here.
PRESETS = ("tiny-llama",)
SAME_SCHEME_BOUND = {"tiny-llama": EXP.same_scheme_threshold}


def _art(quant_artifacts, preset):
    return read_artifact(quant_artifacts("executorch", preset), "executorch")


@pytest.mark.parametrize("preset", PRESETS)
def test_validate_same_scheme(quant_artifacts, model_dirs, preset):
    art = _art(quant_artifacts, preset)
    assert art.meta["quantization"] == SCHEME and art.meta["weight_encoding"]["id"] == "xnnpack-int4-g32"
    rep = EXP.validate(art, model_dirs[preset])
    checks = {c.name: c for c in rep.checks}
    same = [c for n, c in checks.items() if n.endswith("_logits") and not n.startswith("fp32_")]
    fp32 = [c for n, c in checks.items() if n.endswith("_logits") and n.startswith("fp32_")]
    assert len(same) == 9 and len(fp32) == 9
    # the program computes what the XNNPACK-exact eager reference computes (~2e-6, or int8 steps apart)
    assert all(c.value <= SAME_SCHEME_BOUND[preset] for c in same), rep.summary()
    assert rep.ok, rep.summary()
    assert checks["greedy_tokens"].ok and checks["config_hash"].ok and checks["fingerprint"].ok
    # the distance from fp32 is reported: int4 weights of these random (std 0.15) test models move the
    # logits by a few units (~2-4.6, eager torchao alike), above THRESHOLDS["int4"]
    assert all(c.value is not None and 0 < c.value < 6 for c in fp32), rep.summary()


@pytest.mark.parametrize("preset", PRESETS)
def test_parts_are_the_rule(quant_artifacts, model_dirs, preset):
    art = _art(quant_artifacts, preset)
    enc = quant.get("xnnpack-int4-g32")
    model = load_model(model_dirs[preset], dtype=torch.float32)
    params = dict(model.named_parameters(remove_duplicate=False))
    linears = [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert art.meta["weight_encoding"]["params"] == linears and "lm_head.weight" in linears
    qp = art.quantized_params()
    assert qp and all(n.endswith(("mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight")) or
                      n.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight")) for n in qp)
    assert [s.name for s in art.slots] == [quant.part_name(p, part) for p in qp for part in quant.PARTS]
    stored = EXP.read_swap_tensors(art)
    for p, slots in qp.items():
        want = enc.quantize(params[p].detach())
        for part in quant.PARTS:
            assert slots[part].dtype == enc.part_dtypes()[part] and slots[part].shape == enc.part_shapes(params[p].shape)[part]
            assert tensor_bytes(stored[quant.part_name(p, part)]) == tensor_bytes(want[part]), (p, part)

    # every quantized weight (swappable or not) is in model.ptd in the encoding's size: <= 0.2x fp32
    ranges = _ptd_ranges(art.file(DATA))
    q_bytes = sum(s.nbytes for s in art.slots)
    for p in art.meta["weight_encoding"]["params"]:
        if p in qp:
            continue
        parts = enc.quantize(params[p].detach())
        for part, t in parts.items():
            key = ("scale_" if part == "scale" else "") + hashlib.sha256(tensor_bytes(t)).hexdigest()
            assert ranges[key][1] == t.numel() * t.element_size(), (p, part)
            q_bytes += ranges[key][1]
    fp32_bytes = sum(params[p].numel() * 4 for p in art.meta["weight_encoding"]["params"])
    assert q_bytes <= 0.2 * fp32_bytes, (q_bytes, fp32_bytes)
    assert q_bytes == sum(enc.nbytes(params[p].shape) for p in art.meta["weight_encoding"]["params"])


@pytest.mark.parametrize("preset", PRESETS)
def test_swap_requantized_parts(quant_artifacts, model_dirs, preset, tmp_path):
    art = _art(quant_artifacts, preset)
    enc = quant.get("xnnpack-int4-g32")
    merged = load_model(model_dirs[preset], dtype=torch.float32)
    params = dict(merged.named_parameters())
    g = torch.Generator().manual_seed(11)
    swap = {}
    with torch.no_grad():
        for p in art.quantized_params():
            w = params[p]
            w.add_(torch.randn(w.shape, generator=g) * 0.02)
            for part, t in enc.quantize(w.detach()).items():
                swap[quant.part_name(p, part)] = t
    swapped = EXP.apply_swap(art, swap, tmp_path / "swapped")
    stored = EXP.read_swap_tensors(swapped)
    assert all(tensor_bytes(stored[n]) == tensor_bytes(t) for n, t in swap.items())
    ref = EXP.reference_model(swapped, merged)
    prompt = validation_prompt(merged.config, swapped.meta["max_context"], 8)
    rep = ValidationReport(str(swapped.path), "executorch", "fp32")
    check_logits(rep, EXP.open_runner(swapped), ref, prompt, 8, SAME_SCHEME_BOUND[preset], exact_greedy=True)
    assert rep.ok, rep.summary()
    # the same swap applied at load (a patched temporary copy) gives the same logits, bit for bit
    a = EXP.open_runner(swapped).prefill(prompt)
    b = EXP.open_runner(art, swap=swap).prefill(prompt)
    c = EXP.open_runner(art).prefill(prompt)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_bad_part_swaps_refused(quant_artifacts, tmp_path):
    art = _art(quant_artifacts, "tiny-llama")
    good = EXP.read_swap_tensors(art)
    q_name = art.slots[0].name
    s_name = art.slots[1].name
    assert q_name.endswith(":q") and s_name.endswith(":scale")
    bad = {q_name: good[q_name].to(torch.int8),          # wrong dtype for the packed codes
           s_name: good[s_name].float()}                 # fp32 scales where bf16 are stored
    for name, t in bad.items():
        with pytest.raises(LoragenError) as e:
            EXP.open_runner(art, swap={name: t})
        assert e.value.code == "input" and "dtype" in str(e.value)
    with pytest.raises(LoragenError) as e:
        EXP.apply_swap(art, {q_name: good[q_name][:, :-1].contiguous()}, tmp_path / "out")
    assert e.value.code == "input" and "shape" in str(e.value) and not (tmp_path / "out").exists()


def test_locate_slots_checks_rule_and_shared_bytes(quant_artifacts, model_dirs):
    """locate_slots re-run on the written model.ptd: the recorded slots; a weight whose rule bytes are
    not stored, or two weights whose parts coincide (one shared entry in model.ptd), are refused."""
    art = _art(quant_artifacts, "tiny-llama")

    def job():
        j = EXP.load(model_dirs["tiny-llama"], art.path, "fp32", art.meta["max_context"], None, quantize=SCHEME)
        j.encoding, j.quantized = EXP.encoding_of(SCHEME), list(art.meta["weight_encoding"]["params"])
        return j

    assert [s.to_dict() for s in _locate_parts(job())] == art.meta["swap_slots"]
    j = job()
    first, second = j.swap_names[:2]
    j.params[first] = j.params[first].detach() * 1.5
    with pytest.raises(LoragenError) as e:
        _locate_parts(j)
    assert e.value.code == "model" and first in str(e.value)
    j = job()
    j.params[second] = j.params[first]  # identical weights: identical parts, one entry in model.ptd
    with pytest.raises(LoragenError) as e:
        _locate_parts(j)
    assert e.value.code == "model" and "separately" in str(e.value)


def test_bad_scheme_and_precision_refused(model_dirs, tmp_path):
    for kw in ({"quantize": "bogus"}, {"quantize": SCHEME, "dtype": "fp16"}):
        out = tmp_path / "out"
        with pytest.raises(LoragenError) as e:
            EXP.export(model_dirs["tiny-llama"], out, max_context=32, progress=False, **kw)
        assert e.value.code == "usage" and not out.exists()
        assert list(tmp_path.iterdir()) == []


def _xnnpack_stored(qdata: torch.Tensor, scale: torch.Tensor, bits: int) -> dict[str, bytes]:
    """What XNNPACK writes for torchao's codes and fp32 scales: 4-bit codes + 8 two per byte, element
    2i in the low nibble, bf16 scales; 8-bit codes as int8, fp32 scales [out, 1]."""
    if bits == 8:
        return {"q": qdata.to(torch.int8).numpy().tobytes(), "scale": scale.float().contiguous().numpy().tobytes()}
    u = (qdata.to(torch.int16) + 8).to(torch.uint8)
    packed = (u[:, 0::2] | (u[:, 1::2] << 4)).contiguous()
    return {"q": packed.numpy().tobytes(), "scale": tensor_bytes(scale.to(torch.bfloat16).contiguous())}


@pytest.mark.parametrize("scheme", ["8da4w-g32", "8da4w-g128", "8da8w"])
def test_rule_equals_torchao(scheme):
    enc = EXP.encoding_of(scheme)
    g = torch.Generator().manual_seed(3)
    w = torch.randn(24, 256, generator=g) * 0.1
    w[0] = 0.0                                   # all-zero rows / groups: the smallest-normal scale
    w[1, :128] = 0.0
    w[2] *= 1e-39                                # subnormal weights
    w[3, :32] *= 1e-30                           # tiny groups
    w[4] = torch.randint(-7, 8, (256,), generator=g).float() * 0.125 + 0.0625  # halves (round to even)
    w[5, :32] = torch.linspace(-1, 1, 32)
    lin = torch.nn.Sequential(torch.nn.Linear(256, 24, bias=False))
    with torch.no_grad():
        lin[0].weight.copy_(w)
    assert quantize_linears(lin, enc, lin) == ["0.weight"]
    t = lin[0].weight
    assert int(t.zero_point.abs().max()) == 0  # symmetric
    want = _xnnpack_stored(t.qdata, t.scale.reshape(24, -1), enc.bits)
    got = enc.quantize(w)
    assert {p: tensor_bytes(v) for p, v in got.items()} == want
    assert {p: list(v.shape) for p, v in got.items()} == enc.part_shapes(w.shape)
    # dequantize: codes times the stored scale, as the XNNPACK kernels read them
    codes = t.qdata.float().reshape(24, got["scale"].shape[1], -1)
    deq = (codes * got["scale"].float().reshape(24, -1, 1)).reshape(24, 256)
    assert torch.equal(enc.dequantize(got), deq)
