"""Version-2 bundles for quantized artifacts: build, verify, swap and the refusals, on artifact
manifests made here (no export; the backends' own tests apply them to exported artifacts)."""

import json

import pytest
import torch

from loragen_mobile import quant
from loragen_mobile.bundle import core
from loragen_mobile.bundle import format as fmt
from loragen_mobile.bundle.format import BundleError
from loragen_mobile.exporters.artifact import SwapSlot
from loragen_mobile.lora import LoraAdapter, merged_tensors

PARAMS = {"model.layers.0.self_attn.q_proj.weight": (16, 256), "model.layers.0.self_attn.v_proj.weight": (32, 256)}


def _weights(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {p: torch.randn(s, generator=g) * 0.1 for p, s in PARAMS.items()}


def _artifact(enc_id="xnnpack-int4-g32", weights=None, backend="executorch"):
    enc = quant.get(enc_id)
    weights = weights or _weights()
    slots, stored = [], {}
    for p, w in weights.items():
        for part, t in enc.quantize(w).items():
            s = SwapSlot.part_of(p, part, enc, t, "weights.ptd", key=f"k-{p}-{part}")
            slots.append(s.to_dict())
            stored[s.name] = t
    meta = {"backend": backend, "fingerprint": "f" * 64, "model_id": "m", "config_hash": "c" * 64,
            "swap_slots": slots}
    return meta, stored


def _adapter(seed=1, r=4):
    g = torch.Generator().manual_seed(seed)
    return LoraAdapter({p[: -len(".weight")]: (torch.randn(r, s[1], generator=g) * 0.1, torch.randn(s[0], r, generator=g) * 0.1)
                        for p, s in PARAMS.items()}, r=r, alpha=8.0)


@pytest.mark.parametrize("enc_id", quant.KNOWN)
def test_merged_v2_carries_the_quantized_merge_from_full_precision(enc_id):
    weights = _weights()
    meta, stored = _artifact(enc_id, weights)
    adapter = _adapter()
    raw = core.build(meta, adapter, "merged", base=stored, full_precision=weights)
    vb = core.verify(raw, meta, require_signature=False)
    assert vb.manifest["format_version"] == 2
    swap = core.swap_tensors(vb)
    enc = quant.get(enc_id)
    merged = merged_tensors(weights, adapter)
    for p in PARAMS:
        want = enc.quantize(merged[p])
        for part in quant.PARTS:
            assert torch.equal(swap[quant.part_name(p, part)], want[part])
    # the fallback (no full-precision base) quantizes from the dequantized artifact
    vb2 = core.verify(core.build(meta, adapter, "merged", base=stored), meta, require_signature=False)
    swap2 = core.swap_tensors(vb2)
    for p in PARAMS:
        deq = enc.dequantize({k: stored[quant.part_name(p, k)] for k in quant.PARTS})
        one = LoraAdapter({p[: -len(".weight")]: adapter.factors[p[: -len(".weight")]]}, r=adapter.r, alpha=adapter.alpha)
        want = enc.quantize(merged_tensors({p: deq}, one)[p])
        assert all(torch.equal(swap2[quant.part_name(p, k)], want[k]) for k in quant.PARTS)


@pytest.mark.parametrize("enc_id", quant.KNOWN)
def test_lora_v2_is_requantized_as_on_the_phone(enc_id):
    meta, stored = _artifact(enc_id)
    adapter = _adapter()
    vb = core.verify(core.build(meta, adapter, "lora"), meta, require_signature=False)
    assert vb.manifest["format_version"] == 2
    swap = core.swap_tensors(vb, stored)
    enc = quant.get(enc_id)
    for p in PARAMS:
        a, b = adapter.factors[p[: -len(".weight")]]
        want = quant.requantize(enc, {k: stored[quant.part_name(p, k)] for k in quant.PARTS}, a, b, adapter.scale)
        for k in quant.PARTS:
            assert torch.equal(swap[quant.part_name(p, k)], want[k])
    # a zero LoRA: requantizing a dequantized weight may move a code by one step (the stored scale
    # is rounded, e.g. to bf16, so the requantized scale differs slightly), never more
    zero = LoraAdapter({m: (torch.zeros_like(a), torch.zeros_like(b)) for m, (a, b) in adapter.factors.items()},
                       r=adapter.r, alpha=adapter.alpha)
    same = core.swap_tensors(core.verify(core.build(meta, zero, "lora"), meta, require_signature=False), stored)
    for p in PARAMS:
        before = enc.dequantize({k: stored[quant.part_name(p, k)] for k in quant.PARTS})
        after = enc.dequantize({k: same[quant.part_name(p, k)] for k in quant.PARTS})
        step = stored[quant.part_name(p, "scale")].float().abs().max()
        assert float((after - before).abs().max()) <= 1.01 * float(step)


def _rewrite(raw: bytes, edit) -> bytes:
    """The bundle with its manifest edited (unsigned again)."""
    pb = fmt.parse(raw)
    m = json.loads(json.dumps(pb.manifest))
    edit(m)
    return fmt.serialize({n: pb.tensor(n) for n in pb.tensors}, m)


def test_v2_refusals():
    meta, stored = _artifact()
    adapter = _adapter()
    raw = core.build(meta, adapter, "merged", base=stored)

    def code(data, art=meta, **kw):
        with pytest.raises(BundleError) as e:
            core.verify(data, art, require_signature=False, **kw)
        return e.value.code

    # a v1 reader refuses a v2 bundle
    with pytest.raises(BundleError) as e:
        fmt.parse(raw, versions=(1,))
    assert e.value.code == "version"
    # wrong scheme named in an entry
    name = sorted(fmt.parse(raw).tensors)[0]
    assert code(_rewrite(raw, lambda m: m["tensors"][name].update(encoding="ort-int4-b32"))) == "encoding"
    assert code(_rewrite(raw, lambda m: m["tensors"][name].update(encoding="xnnpack-int3-g32"))) == "encoding"
    # claimed version 1 for a quantized artifact
    assert code(_rewrite(raw, lambda m: m.update(format_version=1))) == "version"
    # the same bytes against an artifact with another group size (fingerprint kept equal): refused
    meta128, _ = _artifact("xnnpack-int4-g128")
    assert code(raw, meta128) in ("encoding", "shape")
    # a v1 (unquantized) artifact does not take a v2 bundle
    fp_meta = {**meta, "swap_slots": [SwapSlot.of(p, w, "weights.ptd", key=p).to_dict() for p, w in _weights().items()]}
    assert code(raw, fp_meta) == "version"
    # a lora bundle whose factor does not fit the weight
    lraw = core.build(meta, adapter, "lora")
    bad = LoraAdapter({m: (a[:, :128], b) for m, (a, b) in adapter.factors.items()}, r=adapter.r, alpha=adapter.alpha)
    with pytest.raises(BundleError) as e:
        core.build(meta, bad, "lora")
    assert e.value.code == "build"
    assert core.verify(lraw, meta, require_signature=False).kind == "lora"


def test_unknown_encoding_in_artifact_is_refused(tmp_path):
    from loragen_mobile.errors import LoragenError
    from loragen_mobile.exporters import read_artifact
    from loragen_mobile.exporters.artifact import write_artifact_json

    meta, _ = _artifact()
    full = {"backend": "executorch", "model_id": "m", "model_type": "llama", "config_hash": "c" * 64,
            "precision": "fp32", "max_context": 64, "inputs": [], "outputs": [], "files": [],
            "fingerprint": "f" * 64, "swap_slots": meta["swap_slots"]}
    write_artifact_json(tmp_path, full)
    assert read_artifact(tmp_path).quantized
    assert json.loads((tmp_path / "artifact.json").read_text())["schema"].endswith("/v2")
    for edit, want in ((lambda s: s.update(encoding="xnnpack-int4-g64"), "encoding"),
                       (lambda s: s.update(dtype="float32"), "encoding")):
        d = json.loads((tmp_path / "artifact.json").read_text())
        edit(d["swap_slots"][0])
        (tmp_path / "artifact.json").write_text(json.dumps(d))
        with pytest.raises(LoragenError) as e:
            read_artifact(tmp_path)
        assert e.value.code == want
        write_artifact_json(tmp_path, full)
    d = json.loads((tmp_path / "artifact.json").read_text())
    d["schema"] = "loragen-mobile/artifact/v1"
    (tmp_path / "artifact.json").write_text(json.dumps(d))
    with pytest.raises(LoragenError) as e:
        read_artifact(tmp_path)
    assert e.value.code == "version"


# ------------------------------------------------------------------ on exported quantized artifacts

PROMPT = [1, 72, 105, 33, 32, 119, 101, 108]


def _keys(tmp_path):
    from loragen_mobile.bundle.keys import generate_keypair, load_private_key, load_public_key

    generate_keypair(tmp_path / "k.pem", tmp_path / "k.pub")
    return load_private_key(tmp_path / "k.pem"), load_public_key(tmp_path / "k.pub")


def _adapter_for(art, model_dir):
    from loragen_mobile.lora import random_adapter
    from loragen_mobile.models import load_model, target_module_names

    model = load_model(model_dir, dtype=torch.float32)
    return random_adapter(model, target_module_names(model, art.meta["target_modules"]), r=4, alpha=8, seed=2,
                          std=0.05)


def _check_bundles(art, model_dir, tmp_path):
    """Both bundle kinds applied to a quantized artifact: merged = the parts of the full-precision
    merge quantized by the slot's rule; lora = the phone's requantization of the stored parts.
    Returns the merged eager model (fp32) and the two swapped artifacts."""
    from loragen_mobile.bundle import apply_bundle, build_bundle
    from loragen_mobile.exporters import get_exporter
    from loragen_mobile.lora import merge_into_model
    from loragen_mobile.models import load_model

    exp = get_exporter(art.backend)
    key, pub = _keys(tmp_path)
    adapter = _adapter_for(art, model_dir)
    merged_model = merge_into_model(load_model(model_dir, dtype=torch.float32), adapter)
    merged_w = dict(merged_model.named_parameters())
    base = exp.read_swap_tensors(art)
    outs = {}
    for kind in ("merged", "lora"):
        raw = build_bundle(art, adapter, kind, private_key=key, base_model=model_dir if kind == "merged" else None)
        assert fmt.parse(raw).manifest["format_version"] == 2
        outs[kind] = apply_bundle(raw, art, tmp_path / kind, pub)
        stored = exp.read_swap_tensors(outs[kind])
        for p, group in art.quantized_params().items():
            enc = quant.get(group["q"].extra["encoding"])
            m = p[: -len(".weight")]
            if kind == "merged":
                want = enc.quantize(merged_w[p].detach())
            else:
                a, b = adapter.factors[m]
                want = quant.requantize(enc, {k: base[quant.part_name(p, k)] for k in quant.PARTS}, a, b, adapter.scale)
            for k in quant.PARTS:
                assert torch.equal(stored[quant.part_name(p, k)], want[k]), (kind, p, k)
        # the swap touched only slot bytes: the fingerprint is the source's
        assert exp.fingerprint(outs[kind].path, outs[kind].meta) == art.fingerprint
    return merged_model, outs


# ExecuTorch: tiny-llama only (one quantized export, as in test_quant_executorch)
@pytest.mark.parametrize("preset,backend", [("tiny-llama", "onnx"), ("tiny-gemma", "onnx"), ("tiny-llama", "executorch")])
def test_bundles_on_quantized_artifacts_run_as_the_quantized_merged_model(preset, backend, quant_artifacts,
                                                                          model_dirs, tmp_path):
    from loragen_mobile.exporters import get_exporter, read_artifact
    from loragen_mobile.exporters.common import Reference

    art = read_artifact(quant_artifacts(backend, preset))
    exp = get_exporter(backend)
    merged_model, outs = _check_bundles(art, model_dirs[preset], tmp_path)
    # the merged bundle's artifact equals the server-side quantized merged model: logits within the
    # same-scheme threshold, exact greedy tokens
    ref = Reference(exp.reference_model(art, merged_model))
    runner = exp.open_runner(outs["merged"])
    ref.reset()
    d = float((runner.prefill(PROMPT) - ref.step(PROMPT)[-1]).abs().max())
    assert d <= exp.same_scheme_threshold, d
    want = ref.generate(PROMPT, 10)
    assert exp.open_runner(outs["merged"]).generate(PROMPT, 10) == want


def test_bundles_on_a_quantized_coreml_artifact(quant_artifacts, model_dirs, tmp_path):
    from loragen_mobile.exporters import read_artifact

    art = read_artifact(quant_artifacts("coreml", "tiny-llama"))
    _check_bundles(art, model_dirs["tiny-llama"], tmp_path)
