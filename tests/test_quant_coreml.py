"""Quantized Core ML export (coremltools.optimize linear_symmetric): int4 in blocks of 32 and int8
per output row. The package cannot run on Linux, so everything is checked by reading it back: the
part slots' bytes equal loragen_mobile.quant's rule, coremltools' own loader reads the same codes and
scales, the quantized weights are small, and a swap of parts reads back exactly."""

import shutil
import struct

import numpy as np
import pytest
import torch

from loragen_mobile import quant
from loragen_mobile.dtypes import tensor_bytes
from loragen_mobile.errors import LoragenError
from loragen_mobile.exporters import get_exporter
from loragen_mobile.exporters.artifact import read_artifact
from loragen_mobile.models import load_model, target_module_names

CASES = [("tiny-llama", "int4-b32"), ("tiny-gemma", "int4-b32"), ("tiny-llama", "int8")]
#: quantized linear bytes (codes + scales, as stored in weight.bin) / the same weights in fp32
MAX_RATIO = {4: 0.2, 8: 0.3}


def _setup(quant_artifacts, model_dirs, preset, scheme):
    exp = get_exporter("coreml")
    art = read_artifact(quant_artifacts("coreml", preset, scheme), "coreml")
    model = load_model(model_dirs[preset], dtype=torch.float32)
    return exp, art, quant.get(exp.schemes[scheme]), dict(model.named_parameters()), model


@pytest.mark.parametrize("preset,scheme", CASES)
def test_coreml_quantized_parts_equal_the_rule_and_read_back(preset, scheme, quant_artifacts, model_dirs):
    import coremltools as ct

    from loragen_mobile.exporters.coreml import PACKAGE, WEIGHTS, blob_quantized, quant_const, read_blob_header

    exp, art, enc, params, model = _setup(quant_artifacts, model_dirs, preset, scheme)
    swap = [f"{m}.weight" for m in target_module_names(model)]
    assert art.meta["schema"] == "loragen-mobile/artifact/v2" and art.meta["quantization"] == scheme
    assert art.meta["deployment_target"] == "iOS18" and art.meta["precision"] == "fp16"
    # every swappable weight is two part slots, q then scale, holding exactly the rule's bytes
    assert [s.name for s in art.slots] == [quant.part_name(n, p) for n in swap for p in quant.PARTS]
    stored = exp.read_swap_tensors(art)
    for n in swap:
        want = enc.quantize(params[n])
        for p in quant.PARTS:
            s = art.slot_map[quant.part_name(n, p)]
            assert s.encoding == enc and s.shape == enc.part_shapes(params[n].shape)[p]
            assert tensor_bytes(stored[s.name]) == tensor_bytes(want[p])
    # quantized: every Linear weight of the decoder layers; embedding and lm_head stay fp16
    we = art.meta["weight_encoding"]
    L = model.config.num_hidden_layers
    assert we["id"] == enc.id and len(we["params"]) == 7 * L and set(swap) <= set(we["params"])
    assert not any("embed" in n or "lm_head" in n for n in we["params"])
    # coremltools' own loader reads back the rule's codes and scales and materializes its dequantization
    rb = exp.read_quantized(art.path)
    assert len(rb) == len(we["params"])
    worst, max_step = 0.0, 0.0
    for n in we["params"]:
        parts, got = enc.quantize(params[n]), rb[quant_const(n)]
        assert np.array_equal(got["q"].astype(np.float32), quant._unpack(enc, parts["q"]).numpy())
        assert np.array_equal(got["scale"].view(np.uint16), parts["scale"].numpy().view(np.uint16))
        dq = enc.dequantize(parts).numpy()
        assert np.array_equal(got["value"].astype(np.float32), dq)
        worst = max(worst, float(np.abs(dq - params[n].detach().numpy()).max()))
        max_step = max(max_step, float(parts["scale"].float().max()))
    # the quantized weights' blobs are small next to the fp32 weights
    spec = ct.utils.load_spec(str(art.path / PACKAGE))
    buf = (art.path / WEIGHTS).read_bytes()
    qops = blob_quantized(spec)
    q_bytes = sum(read_blob_header(buf, qops[quant_const(n)][a]["header_offset"])[1]
                  for n in we["params"] for a in ("data", "scale"))
    fp32_bytes = sum(params[n].numel() * 4 for n in we["params"])
    assert q_bytes == sum(enc.nbytes(params[n].shape) for n in we["params"])
    assert q_bytes <= MAX_RATIO[enc.bits] * fp32_bytes
    # validate reads it all back
    rep = exp.validate(art, model_dirs[preset])
    checks = {c.name: c for c in rep.checks}
    assert rep.ok, rep.summary()
    assert checks["quantized_vs_fp32"].value == pytest.approx(worst, rel=0, abs=0)
    assert 0 < worst <= 0.51 * max_step  # round to nearest: at most half a step (+ fp16 roundings)
    print(f"\n{preset} {scheme}: quantized linears {q_bytes} B vs fp32 {fp32_bytes} B "
          f"(ratio {q_bytes / fp32_bytes:.4f}), max |dequantized - fp32| {worst:.5g}, largest step {max_step:.5g}")


@pytest.mark.parametrize("preset,scheme", CASES)
def test_coreml_quantized_swap_reads_back_exactly(preset, scheme, quant_artifacts, model_dirs, tmp_path):
    from loragen_mobile.exporters.coreml import quant_const

    exp, art, enc, params, _ = _setup(quant_artifacts, model_dirs, preset, scheme)
    g = torch.Generator().manual_seed(11)
    new = {}
    for n in art.quantized_params():
        w = params[n].detach()
        new[n] = enc.quantize(w + torch.randn(w.shape, generator=g) * 0.05)
    swap = {quant.part_name(n, p): t for n, parts in new.items() for p, t in parts.items()}
    out = exp.apply_swap(art, swap, tmp_path / "swapped")
    assert out.fingerprint == art.fingerprint and exp.fingerprint(out.path, out.meta) == art.fingerprint
    stored = exp.read_swap_tensors(out)
    rb = exp.read_quantized(out.path)
    for n, parts in new.items():
        for p in quant.PARTS:
            assert tensor_bytes(stored[quant.part_name(n, p)]) == tensor_bytes(parts[p])
        got = rb[quant_const(n)]
        assert np.array_equal(got["q"].astype(np.float32), quant._unpack(enc, parts["q"]).numpy())
        assert np.array_equal(got["scale"].view(np.uint16), parts["scale"].numpy().view(np.uint16))
        assert np.array_equal(got["value"].astype(np.float32), enc.dequantize(parts).numpy())
    # the swapped package no longer holds the source model's quantized weights
    checks = {c.name: c for c in exp.validate(out, model_dirs[preset]).checks}
    assert checks["fingerprint"].ok and checks["weights_equal_model"].ok
    assert not checks["quantized_read_back"].ok and not checks["swap_slots_bytes"].ok

    # wrong part dtype or shape: refused, nothing written
    n = next(iter(new))
    q, sc = quant.part_name(n, "q"), quant.part_name(n, "scale")
    wrong_q = torch.uint8 if enc.q_dtype == "int8" else torch.int8
    for bad in ({q: new[n]["q"].to(wrong_q)}, {sc: new[n]["scale"].float()},
                {q: new[n]["q"].reshape(-1)}, {sc: new[n]["scale"][:-1].contiguous()}):
        with pytest.raises(LoragenError, match="swap tensor"):
            exp.apply_swap(art, bad, tmp_path / "bad")
        assert not (tmp_path / "bad").exists()


def test_coreml_part_slot_blob_type_is_checked(quant_artifacts, tmp_path):
    """A part slot's weight.bin blob must have the part's type (int4 codes here): a header that
    says otherwise makes the artifact corrupt before anything is written."""
    from loragen_mobile.exporters.coreml import BLOB_FP16, BLOB_INT4, WEIGHTS

    exp = get_exporter("coreml")
    src = read_artifact(quant_artifacts("coreml", "tiny-llama"), "coreml")
    bad = tmp_path / "bad-header"
    shutil.copytree(src.path, bad)
    s = src.slots[0]
    assert s.part == "q"
    with open(bad / WEIGHTS, "r+b") as f:
        f.seek(s.extra["header_offset"] + 4)
        assert struct.unpack("<I", f.read(4))[0] == BLOB_INT4
        f.seek(s.extra["header_offset"] + 4)
        f.write(struct.pack("<I", BLOB_FP16))
    with pytest.raises(LoragenError, match="does not match its weight.bin blob"):
        exp.apply_swap(bad, {s.name: exp.read_swap_tensors(src)[s.name]}, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_coreml_unknown_or_fp32_quantization_refused(model_dirs, tmp_path):
    exp = get_exporter("coreml")
    assert exp.quantizations == (None, "int4-b32", "int8")
    for kw in ({"quantize": "int4-b128"}, {"quantize": "8da4w-g32"}, {"quantize": "int8", "dtype": "fp32"}):
        with pytest.raises(LoragenError) as e:
            exp.export(model_dirs["tiny-llama"], tmp_path / "q", max_context=64, progress=False, **kw)
        assert e.value.code == "usage"
        assert not (tmp_path / "q").exists()
