"""The weight encodings of loragen_mobile.quant: the rules against the backends' own quantizers where
they can be called directly, the layouts, and the quantized edge model of `loragen eval`."""

import numpy as np
import pytest
import torch

from loragen_mobile import quant
from loragen_mobile.errors import LoragenError


def _weights(out_f=48, in_f=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=g) * 0.05
    w[0, :128] = 0  # an all-zero group/block (every group size)
    w[1, :32] = torch.tensor([0.5, -0.5] * 16)  # a sign tie in one block
    w[2] *= 300  # a large-magnitude row
    return w


@pytest.mark.parametrize("bits,block", [(4, 32), (4, 128), (8, 32), (8, 128)])
def test_ort_rule_is_onnxruntimes_quantizer(bits, block):
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits, quantize_matmul_8bits

    w = _weights()
    b = w.T.contiguous().numpy()  # MatMul's B: [K = in, N = out]
    k, n = b.shape
    packed = np.zeros((n, k // block, block * bits // 8), dtype=np.uint8)
    scales = np.zeros(n * (k // block), dtype=np.float32)
    zp = np.zeros(n * ((k // block * bits + 7) // 8), dtype=np.uint8)
    (quantize_matmul_4bits if bits == 4 else quantize_matmul_8bits)(packed, b, scales, zp, block, n, k, True)
    parts = quant.get(f"ort-int{bits}-b{block}").quantize(w)
    assert np.array_equal(parts["q"].numpy(), packed)
    assert np.array_equal(parts["scale"].numpy(), scales.reshape(n, k // block))


@pytest.mark.parametrize("enc_id", quant.KNOWN)
def test_layout_and_round_trip(enc_id):
    enc = quant.get(enc_id)
    w = _weights()
    parts = enc.quantize(w)
    shapes, dts = enc.part_shapes(w.shape), enc.part_dtypes()
    for k in quant.PARTS:
        assert list(parts[k].shape) == shapes[k] and str(parts[k].dtype) == f"torch.{dts[k]}"
    assert enc.weight_shape(parts["q"].shape) == list(w.shape)
    assert sum(t.numel() * t.element_size() for t in parts.values()) == enc.nbytes(w.shape)
    # the dequantized weight is within a bounded number of steps of the original: half a step plus
    # the scale's rounding (bf16 for xnnpack int4, fp16 arithmetic for Core ML); ORT maps the signed
    # extreme to -8, so the opposite extreme clamps at +7: up to one step
    deq = enc.dequantize(parts)
    g = enc.group or w.shape[1]
    step = parts["scale"].float().abs().reshape(w.shape[0], -1).repeat_interleave(g, dim=1)
    err = (deq - w).abs()
    bound = {"xnnpack": 0.53, "ort": 1.0, "coreml": 0.6}[enc.family]  # Core ML: fp16 rounding of w, w / s and q * s
    assert bool((err <= step * bound + 1e-6).all()), float((err / step.clamp(min=1e-30)).max())
    # the all-zero group stays exactly zero
    assert float(deq[0, :128].abs().max()) == 0.0
    # stored bytes per fp32 byte: the bounds at a real shape (in = 2048)
    ratio = enc.nbytes([256, 2048]) / (256 * 2048 * 4)
    assert ratio <= (0.2 if enc.bits == 4 else 0.3), ratio


def test_unknown_encodings_and_shapes_are_refused():
    for bad in ("xnnpack-int4-g64", "ort-int3-b32", "coreml-int4-b16", "", None, 5):
        with pytest.raises(LoragenError) as e:
            quant.get(bad)
        assert e.value.code == "encoding"
    with pytest.raises(LoragenError) as e:
        quant.get("ort-int4-b128").quantize(torch.zeros(4, 96))
    assert e.value.code == "encoding"
    assert quant.split_part_name("a.weight:q") == ("a.weight", "q")
    assert quant.split_part_name("a.weight") == ("a.weight", None)


def test_device_merge_is_fp64_in_order():
    # 1e8 + 1 - 1e8 is 1 in fp64 and 0 in fp32: the sum over k is fp64, in order, rounded once
    w = torch.zeros(1, 1)
    a = torch.tensor([[1e8], [1.0], [-1e8]])
    b = torch.tensor([[1.0, 1.0, 1.0]])
    assert float(quant.device_merge(w, a, b, 1.0)[0, 0]) == 1.0
    g = torch.Generator().manual_seed(3)
    w, a, b = torch.randn(8, 16, generator=g), torch.randn(4, 16, generator=g), torch.randn(8, 4, generator=g)
    want = (w.double() + 0.5 * (b.double() @ a.double())).float()
    assert torch.equal(quant.device_merge(w, a, b, 0.5), want)


def test_eval_edge_model_holds_the_stored_weights(preset_dirs):
    from loragen_mobile.generator.evaluate import _Swapper
    from loragen_mobile.models import load_model

    model = load_model(preset_dirs["tiny-llama"], dtype=torch.float32)
    full = {n: p.detach().clone() for n, p in model.named_parameters()}
    enc = quant.get("ort-int8-b128")
    sw = _Swapper(model, enc)
    params = dict(model.named_parameters())
    name = "model.layers.0.mlp.down_proj.weight"
    assert torch.equal(params[name], enc.dequantize(enc.quantize(full[name])))
    assert torch.equal(params["model.embed_tokens.weight"], full["model.embed_tokens.weight"])
    g = torch.Generator().manual_seed(0)
    out_f, in_f = full[name].shape
    a, b = torch.randn(2, in_f, generator=g) * 0.1, torch.randn(out_f, 2, generator=g) * 0.1
    sw.apply({name[: -len(".weight")]: (a, b)})
    want = enc.dequantize(enc.quantize(full[name] + b @ a))
    assert float((params[name].detach() - want).abs().max()) <= float(enc.quantize(full[name] + b @ a)["scale"].max()) * 1.01
    sw.restore()
    assert torch.equal(params[name], enc.dequantize(enc.quantize(full[name])))
    # as in a quantized export, a weight whose input features are not a multiple of the group stays
    # full precision: tiny-gemma's o_proj reads 4 heads x 48 = 192 features, not a multiple of 128
    gemma = load_model(preset_dirs["tiny-gemma"], dtype=torch.float32)
    full = {n: p.detach().clone() for n, p in gemma.named_parameters()}
    _Swapper(gemma, enc)
    params = dict(gemma.named_parameters())
    o, down = "model.layers.0.self_attn.o_proj.weight", "model.layers.0.mlp.down_proj.weight"
    assert full[o].shape[1] == 192 and torch.equal(params[o], full[o])
    assert torch.equal(params[down], enc.dequantize(enc.quantize(full[down])))


@pytest.mark.parametrize("enc_id", ["ort-int4-b32", "xnnpack-int8-pc"])
def test_fake_quantize_in_row_blocks_equals_whole_weights(preset_dirs, monkeypatch, enc_id):
    """The validation's same-scheme model quantizes a few rows at a time (a full-size embedding
    table at once needs several times its size): the values are exactly those of whole weights. A
    head tied to the embedding: ONNX Runtime reads both uses from the quantized table (quantized
    once); ExecuTorch quantizes a copy for the head and keeps the table in full precision."""
    from loragen_mobile.exporters import pipeline
    from loragen_mobile.exporters.artifact import Artifact
    from loragen_mobile.models import load_model

    model = load_model(preset_dirs["tiny-gemma"], dtype=torch.float32)  # tied embedding / lm_head
    names = ["lm_head.weight", "model.layers.0.mlp.down_proj.weight"]
    full = {n: p.detach().clone() for n, p in model.named_parameters(remove_duplicate=False)}
    enc = quant.get(enc_id)
    art = Artifact(preset_dirs["tiny-gemma"], {"weight_encoding": {"id": enc_id, "params": names}})
    monkeypatch.setattr(pipeline, "FAKE_QUANT_CHUNK", 7 * 128)  # 7 rows of 128 features: a ragged last block
    pipeline.fake_quantize(model, art)
    params = dict(model.named_parameters(remove_duplicate=False))
    for n in names:
        assert torch.equal(params[n], enc.stored(full[n])), n
    table = params["model.embed_tokens.weight"]
    if enc.family == "ort":
        assert params["lm_head.weight"] is table
    else:
        assert params["lm_head.weight"] is not table and torch.equal(table, full["model.embed_tokens.weight"])
    assert torch.equal(params["model.layers.0.mlp.up_proj.weight"], full["model.layers.0.mlp.up_proj.weight"])


# ONNX and Core ML on both presets; ExecuTorch on tiny-llama (the session's one quantized ExecuTorch
# export; its tied-head rule is checked on tiny-gemma against torchao's choice below)
@pytest.mark.parametrize("backend,preset", [("onnx", "tiny-llama"), ("onnx", "tiny-gemma"), ("coreml", "tiny-llama"),
                                            ("coreml", "tiny-gemma"), ("executorch", "tiny-llama")])
def test_eval_quantized_edge_model_is_the_artifacts_same_scheme_model(backend, preset, quant_artifacts, model_dirs):
    """`loragen eval --weight-encoding E` scores the model a quantized export of E's backend
    stores: the same weights as the artifact records (the output head included on ExecuTorch and
    ONNX), and every parameter equal to the validation's same-scheme model of that artifact."""
    from loragen_mobile.exporters import read_artifact
    from loragen_mobile.exporters.pipeline import fake_quantize, stored_weights
    from loragen_mobile.generator.evaluate import _Swapper
    from loragen_mobile.models import load_model

    art = read_artifact(quant_artifacts(backend, preset), backend)
    info = art.meta["weight_encoding"]
    enc = quant.get(info["id"])
    model = load_model(model_dirs[preset], dtype=torch.float32)
    assert stored_weights(model, enc) == info["params"]
    assert ("lm_head.weight" in info["params"]) == (backend != "coreml")
    _Swapper(model, enc)
    ref = fake_quantize(load_model(model_dirs[preset], dtype=torch.float32), art)
    got = dict(model.named_parameters(remove_duplicate=False))
    for n, p in ref.named_parameters(remove_duplicate=False):
        assert torch.equal(got[n], p), n


def test_eval_executorch_encoding_quantizes_a_copy_of_a_tied_head(model_dirs):
    """tiny-gemma ties its head to the embedding: the weights torchao quantizes for ExecuTorch are
    the ones the eval model stores (the head included), and the eval model's head is the quantized
    table while its embedding lookup stays full precision, as in the export."""
    import copy

    from loragen_mobile.exporters.executorch import quantize_linears
    from loragen_mobile.exporters.pipeline import stored_weights
    from loragen_mobile.generator.evaluate import _Swapper
    from loragen_mobile.models import load_model

    enc = quant.get("xnnpack-int4-g32")
    model = load_model(model_dirs["tiny-gemma"], dtype=torch.float32)
    full = model.get_input_embeddings().weight.detach().clone()
    names = stored_weights(model, enc)
    twin = copy.deepcopy(model)
    assert names == quantize_linears(twin, enc, twin) and "lm_head.weight" in names
    _Swapper(model, enc)
    assert torch.equal(model.get_output_embeddings().weight, enc.stored(full))
    assert torch.equal(model.get_input_embeddings().weight, full)


def test_cli_help_names_every_backends_schemes():
    from loragen_mobile.cli.export import QUANTIZE_SCHEMES
    from loragen_mobile.exporters import available_backends, get_exporter

    assert {b: tuple(get_exporter(b).schemes) for b in available_backends()} == QUANTIZE_SCHEMES
    for b in available_backends():
        for scheme, enc in get_exporter(b).schemes.items():
            assert quant.get(enc).family == {"executorch": "xnnpack", "onnx": "ort", "coreml": "coreml"}[b]
