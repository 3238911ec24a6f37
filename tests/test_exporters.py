"""Exporters: ExecuTorch, ONNX (+ onnxruntime-genai) and Core ML for both tiny presets.

Artifacts are exported once per session (XNNPACK lowering is the slow step) and shared.
Models get larger random weights than the presets' init so greedy decoding is not degenerate.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch

from loragen_mobile.errors import LoragenError
from loragen_mobile.exporters import get_exporter, read_artifact
from loragen_mobile.exporters.common import Reference
from loragen_mobile.models import build_model, build_tokenizer, load_model

from conftest import MAX_CTX, PRESETS, og_greedy

PROMPT = [1, 72, 101, 108, 108, 111, 44, 32, 119, 111]
N_NEW = 12


def _hf_greedy(model_dir: Path, ids: list[int], n: int) -> list[int]:
    m = load_model(model_dir, dtype=torch.float32)
    out = m.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, min_new_tokens=n)
    return out[0, len(ids):].tolist()


def _tree_digest(d: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in d.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(d)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def _new_weights(art_dir: Path, n: int = 3, seed: int = 11) -> dict[str, torch.Tensor]:
    art = read_artifact(art_dir)
    g = torch.Generator().manual_seed(seed)
    names = [s["name"] for s in art.slots]
    pick = [names[0], names[len(names) // 2], names[-1]][:n]
    dt = {"float32": torch.float32, "float16": torch.float16}
    return {s["name"]: (torch.randn(s["shape"], generator=g) * 0.2).to(dt[s["dtype"]])
            for s in art.slots if s["name"] in pick}


def _swapped_reference(model_dir: Path, swap: dict[str, torch.Tensor]):
    m = load_model(model_dir, dtype=torch.float32)
    params = dict(m.named_parameters())
    with torch.no_grad():
        for k, v in swap.items():
            params[k].copy_(v.float())
    return m


def _logit_diffs(runner, ref: Reference, ids: list[int], steps: int = 8) -> list[float]:
    ref.reset()
    r = ref.step(ids)[-1]
    a = runner.prefill(ids)
    assert a.shape == r.shape == (ref.model.config.vocab_size,)
    diffs = [float((a - r).abs().max())]
    for _ in range(steps):
        t = int(r.argmax())
        r = ref.step([t])[-1]
        a = runner.decode(t)
        diffs.append(float((a - r).abs().max()))
    return diffs


# ------------------------------------------------------------------------------------------ run


@pytest.mark.parametrize("backend", ["executorch", "onnx"])
@pytest.mark.parametrize("preset", PRESETS)
def test_greedy_tokens_and_validate(backend, preset, artifacts, model_dirs):
    a = artifacts(backend, preset)
    art = read_artifact(a, backend)
    assert art.meta["precision"] == "fp32" and art.meta["max_context"] == MAX_CTX
    assert len(art.slots) == 3 * 4  # gate/up/down of 4 layers
    want = _hf_greedy(model_dirs[preset], PROMPT, N_NEW)
    assert len(set(want)) > 2  # the test model does not decode a single repeated token
    runner = get_exporter(backend).open_runner(a)
    assert runner.generate(PROMPT, N_NEW) == want
    assert runner.generate(PROMPT, N_NEW) == want  # reset between generations
    rep = get_exporter(backend).validate(a, model_dirs[preset])
    assert rep.ok, rep.summary()
    steps = [c for c in rep.checks if c.name.startswith("decode_step_")]
    assert len(steps) >= 8
    assert max(c.value for c in rep.checks if c.value is not None) <= 1e-4


@pytest.mark.parametrize("preset", PRESETS)
def test_onnxruntime_genai_matches_transformers(preset, artifacts, model_dirs):
    import onnxruntime_genai as og

    a = artifacts("onnx", preset)
    got = og_greedy(a, PROMPT, N_NEW)
    model = og.Model(str(a))
    assert got == _hf_greedy(model_dirs[preset], PROMPT, N_NEW)
    tok = og.Tokenizer(model)
    assert list(tok.encode("Hi")) == build_tokenizer()("Hi", add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("backend", ["executorch", "onnx"])
def test_runner_streams_tokens_as_they_are_chosen(backend, artifacts, model_dirs):
    runner = get_exporter(backend).open_runner(artifacts(backend, "tiny-llama"))
    it = runner.stream(PROMPT, N_NEW)
    first = next(it)
    assert runner.pos == len(PROMPT)  # only the prompt has run when the first token arrives
    rest = list(it)
    assert [first] + rest == runner.generate(PROMPT, N_NEW) == _hf_greedy(model_dirs["tiny-llama"], PROMPT, N_NEW)
    with pytest.raises(LoragenError, match="max_new_tokens"):
        runner.generate(PROMPT, 0)


def test_runner_stops_at_the_artifacts_eos(edge_artifacts):
    """The shipped edge model ends its answer with </s>: generate keeps it and stops, as HF does."""
    from conftest import EDGE_ASSET

    from loragen_mobile.models import load_tokenizer
    from loragen_mobile.training import prompt_ids

    from loragen_mobile.models import CHAT_TEMPLATE

    art = read_artifact(edge_artifacts("onnx"))
    assert art.meta["eos_token_ids"] == [2]
    # the prompt contract, recorded once: the template and its placeholder rendering
    assert art.meta["chat_template"] == CHAT_TEMPLATE
    assert json.loads((art.path / "tokenizer_config.json").read_text())["chat_template"] == CHAT_TEMPLATE
    assert art.meta["prompt_format"] == {"with_system": "{system}\n{input}\n", "without_system": "{input}\n",
                                         "bos": True}
    runner = get_exporter("onnx").open_runner(art.path)
    ids = prompt_ids(load_tokenizer(EDGE_ASSET), "Reverse each word.", "pmey")
    m = load_model(EDGE_ASSET, dtype=torch.float32)
    want = m.generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False)[0, len(ids):].tolist()
    got = runner.generate(ids, 20)
    assert got == want and got[-1] == 2 and 2 not in got[:-1] and len(got) < 20
    longer = runner.generate(ids, 20, stop_at_eos=False)
    assert len(longer) == 20 and longer[:len(got)] == got


# ----------------------------------------------------------------------------------------- swap


@pytest.mark.parametrize("backend", ["executorch", "onnx"])
@pytest.mark.parametrize("preset", PRESETS)
def test_swap_runner_and_apply_swap_equal_eager(backend, preset, artifacts, model_dirs, workdir):
    exp = get_exporter(backend)
    a = artifacts(backend, preset)
    before = _tree_digest(a)
    swap = _new_weights(a)
    ref = Reference(_swapped_reference(model_dirs[preset], swap))

    d_open = _logit_diffs(exp.open_runner(a, swap=swap), ref, PROMPT)
    assert max(d_open) <= 1e-4, d_open
    # the base weights are still what a plain runner sees (nothing was written)
    base = _logit_diffs(exp.open_runner(a), ref, PROMPT, steps=1)
    assert max(base) > 1e-2

    out = workdir / f"{backend}-{preset}-swapped"
    new = exp.apply_swap(a, swap, out)
    assert _tree_digest(a) == before  # source untouched
    assert new.meta["fingerprint"] == read_artifact(a).meta["fingerprint"]
    assert new.meta["swapped_from"] == read_artifact(a).meta["fingerprint"]
    for s in new.slots:
        if s["name"] in swap:
            assert s["sha256"] == hashlib.sha256(swap[s["name"]].numpy().tobytes()).hexdigest()
    d_apply = _logit_diffs(exp.open_runner(out), ref, PROMPT)
    assert max(d_apply) <= 1e-4, d_apply
    want = ref.generate(PROMPT, N_NEW)
    assert exp.open_runner(out).generate(PROMPT, N_NEW) == want

    # the swapped artifact no longer matches the base model: validate says so (fingerprint still fine)
    rep = exp.validate(out, model_dirs[preset])
    assert not rep.ok
    checks = {c.name: c for c in rep.checks}
    assert checks["fingerprint"].ok and not checks["prefill_logits"].ok

    if backend == "onnx":  # the rewritten external data runs unmodified in onnxruntime-genai
        assert og_greedy(out, PROMPT, N_NEW) == want


def test_swap_is_checked(artifacts, workdir):
    exp = get_exporter("executorch")
    a = artifacts("executorch", "tiny-llama")
    slot = read_artifact(a).slots[0]
    good = torch.zeros(slot["shape"])
    with pytest.raises(LoragenError, match="not a swap slot"):
        exp.open_runner(a, swap={"model.layers.0.self_attn.q_proj.weight": torch.zeros(128, 128)})
    with pytest.raises(LoragenError, match="shape"):
        exp.open_runner(a, swap={slot["name"]: good.T.contiguous()})
    with pytest.raises(LoragenError, match="dtype"):
        get_exporter("onnx").apply_swap(artifacts("onnx", "tiny-llama"), {slot["name"]: good.half()}, workdir / "x")
    with pytest.raises(LoragenError, match="NaN"):
        exp.apply_swap(a, {slot["name"]: torch.full(slot["shape"], float("nan"))}, workdir / "y")
    assert not (workdir / "x").exists() and not (workdir / "y").exists()
    with pytest.raises(LoragenError, match="already exists"):
        exp.apply_swap(a, {slot["name"]: good}, a)


def _error(fn, *paths) -> tuple[str, str]:
    """(code, message) of the LoragenError ``fn`` raises, with ``paths`` written as <artifact>."""
    with pytest.raises(LoragenError) as e:
        fn()
    msg = str(e.value)
    for p in paths:
        msg = msg.replace(str(p), "<artifact>")
    return e.value.code, msg


def test_apply_swap_is_one_implementation_for_every_backend(artifacts, workdir):
    from loragen_mobile.exporters import Exporter, read_swap_tensors

    errors: dict[str, set] = {"sha256": set(), "shape": set()}
    for backend in ("executorch", "onnx", "coreml"):
        exp = get_exporter(backend)
        assert type(exp).apply_swap is Exporter.apply_swap
        assert type(exp).read_swap_tensors is Exporter.read_swap_tensors
        src = artifacts(backend, "tiny-llama")
        art = read_artifact(src)
        before = _tree_digest(src)
        s0, s1 = art.slots[0], art.slots[1]
        g = torch.Generator().manual_seed(3)
        new = (torch.randn(s0.shape, generator=g) * 0.1).to(s0.torch_dtype)

        # a good swap, given the Artifact object: exact bytes in the slot, every other slot untouched
        out = workdir / f"one-impl-{backend}"
        res = exp.apply_swap(art, {s0.name: new}, out)
        stored, base = read_swap_tensors(res), read_swap_tensors(art)
        assert torch.equal(stored[s0.name], new)
        assert all(torch.equal(stored[n], base[n]) for n in base if n != s0.name)
        assert res.fingerprint == art.fingerprint and res.meta["swapped_from"] == art.fingerprint
        assert ({k: v for k, v in res.meta.items() if k not in ("swap_slots", "swapped_from")}
                == {k: v for k, v in art.meta.items() if k != "swap_slots"})
        assert res.slot_map[s0.name].sha256 == hashlib.sha256(new.numpy().tobytes()).hexdigest()

        # a tampered sha256 of another slot: the same error on every backend, nothing written
        bad = workdir / f"one-impl-{backend}-tampered"
        shutil.copytree(src, bad)
        meta = json.loads((bad / "artifact.json").read_text())
        meta["swap_slots"][1]["sha256"] = "0" * 64
        (bad / "artifact.json").write_text(json.dumps(meta, indent=2) + "\n")
        bad_out = workdir / f"one-impl-{backend}-tampered-out"
        errors["sha256"].add(_error(lambda: exp.apply_swap(bad, {s0.name: new}, bad_out), bad, bad_out))
        errors["sha256"].add(_error(lambda: read_swap_tensors(bad), bad))
        # a wrong-shape tensor: the same error on every backend
        errors["shape"].add(_error(lambda: exp.apply_swap(art, {s1.name: new.T.contiguous()}, bad_out)))
        # a slot offset that does not match the backend's own index of the file: refused, nothing written
        meta = json.loads((src / "artifact.json").read_text())
        meta["swap_slots"][0]["offset"] += 64
        (bad / "artifact.json").write_text(json.dumps(meta, indent=2) + "\n")
        code, msg = _error(lambda: exp.apply_swap(bad, {s0.name: new}, bad_out), bad)
        assert code == "input" and msg.startswith(f"artifact <artifact>: swap slot {s0.name} ")
        assert msg.endswith("artifact is corrupt")
        assert not bad_out.exists() and not [p for p in workdir.iterdir() if ".tmp-" in p.name]
        assert _tree_digest(src) == before
    assert errors["sha256"] == {("input", f"artifact <artifact>: swap slot {s1.name} does not hold the bytes "
                                          f"artifact.json records; artifact is corrupt")}
    assert len(errors["shape"]) == 1 and "has shape" in next(iter(errors["shape"]))[1]


def test_swap_slots_schema(artifacts, model_dirs):
    from loragen_mobile.exporters import read_swap_tensors

    params = dict(load_model(model_dirs["tiny-gemma"], dtype=torch.float32).named_parameters())
    for backend in ("executorch", "onnx", "coreml"):
        stored = read_swap_tensors(artifacts(backend, "tiny-gemma"))
        assert len(stored) == 12
        for n, t in stored.items():
            assert torch.equal(t, params[n].detach().to(t.dtype))
    for backend in ("executorch", "onnx"):
        art = read_artifact(artifacts(backend, "tiny-gemma"))
        slots = get_exporter(backend).swap_slots(art)
        names = [s["name"] for s in slots]
        assert names[:3] == [f"model.layers.0.mlp.{m}_proj.weight" for m in ("gate", "up", "down")]
        m = build_model("tiny-gemma")
        shapes = dict((n, list(p.shape)) for n, p in m.named_parameters())
        for s in slots:
            assert s["shape"] == shapes[s["name"]] and s["dtype"] == "float32"
            assert s["nbytes"] == 4 * int(np.prod(s["shape"]))
        if backend == "executorch":
            assert all(s["key"] == s["sha256"] for s in slots) and len({s["key"] for s in slots}) == len(slots)
            # one data file (what the stock runners load); each slot is a byte range of it
            assert art.meta["files"] == ["model.pte", "model.ptd"]
            raw = (art.path / "model.ptd").read_bytes()
            for s in slots:
                assert s["file"] == "model.ptd" and s["offset"] % 16 == 0
                assert hashlib.sha256(raw[s["offset"]:s["offset"] + s["nbytes"]]).hexdigest() == s["sha256"]
        else:
            assert all(s["key"] == s["name"] and s["offset"] % 64 == 0 for s in slots)


# --------------------------------------------------------------------------------------- corrupt


def test_corrupted_weights_fail_validate(artifacts, model_dirs, workdir):
    # ONNX: corrupt one swappable weight (fingerprint stays, logits fail)
    src = artifacts("onnx", "tiny-llama")
    bad = workdir / "onnx-corrupt"
    shutil.copytree(src, bad)
    s = read_artifact(bad).slots[4]
    with open(bad / s["file"], "r+b") as f:
        f.seek(s["offset"] + 400)
        f.write(np.full(16, 3.0, dtype=np.float32).tobytes())
    rep = get_exporter("onnx").validate(bad, model_dirs["tiny-llama"])
    checks = {c.name: c for c in rep.checks}
    assert not rep.ok and checks["fingerprint"].ok and not checks["prefill_logits"].ok
    assert checks["prefill_logits"].value > 1e-3

    # ExecuTorch: corrupt a foundation weight (embedding) in model.ptd: fingerprint and logits fail
    from loragen_mobile.exporters.executorch import DATA, _ptd_ranges

    src = artifacts("executorch", "tiny-llama")
    bad = workdir / "et-corrupt"
    shutil.copytree(src, bad)
    emb = load_model(model_dirs["tiny-llama"], dtype=torch.float32).model.embed_tokens.weight
    ranges = _ptd_ranges(bad / DATA)
    off, size = ranges[next(k for k in ranges if "embed_tokens" in k)]  # not delegated: keyed by name
    assert size == emb.numel() * 4
    with open(bad / DATA, "r+b") as f:
        f.seek(off)
        f.write((emb.detach()[:80] + 0.5).numpy().tobytes())
    rep = get_exporter("executorch").validate(bad, model_dirs["tiny-llama"])
    checks = {c.name: c for c in rep.checks}
    assert not rep.ok and not checks["fingerprint"].ok and not checks["prefill_logits"].ok

    # CLI: exit status 1 and a JUnit report with one failing testcase per failed check
    from loragen_mobile.cli import main

    junit = workdir / "et-corrupt.xml"
    assert main(["validate", "--artifact", str(bad), "--model", str(model_dirs["tiny-llama"]),
                 "--junit", str(junit)]) == 1
    root = ET.parse(junit).getroot()
    assert int(root.get("failures")) == sum(not c.ok for c in rep.checks) >= 2


# ---------------------------------------------------------------------------------------- Core ML


@pytest.mark.parametrize("preset", PRESETS)
def test_coreml_export_validate_and_swap(preset, artifacts, model_dirs, workdir):
    from loragen_mobile.exporters.coreml import WEIGHTS

    exp = get_exporter("coreml")
    a = artifacts("coreml", preset)
    art = read_artifact(a, "coreml")
    assert art.meta["precision"] == "fp16" and art.meta["deployment_target"] == "iOS18"
    assert [s["name"] for s in art.meta["states"]] == ["keyCache", "valueCache"]
    rep = exp.validate(a, model_dirs[preset])
    assert rep.ok, rep.summary()
    with pytest.raises(LoragenError, match="macOS"):
        exp.open_runner(a)

    swap = _new_weights(a)
    before = _tree_digest(a)
    out = workdir / f"coreml-{preset}-swapped"
    new = exp.apply_swap(a, swap, out)
    assert _tree_digest(a) == before
    assert new.meta["fingerprint"] == art.meta["fingerprint"]
    # a fresh conversion of the model with the same replaced weights gives the same weight.bin bytes
    m = _swapped_reference(model_dirs[preset], swap)
    mdir = workdir / f"model-{preset}-swapped"
    m.save_pretrained(mdir)
    build_tokenizer().save_pretrained(mdir)
    fresh = exp.export(mdir, workdir / f"coreml-{preset}-fresh", max_context=MAX_CTX, progress=False)
    assert (out / WEIGHTS).read_bytes() == (fresh.path / WEIGHTS).read_bytes()
    assert exp.validate(out, mdir).ok
    # ... and the swapped package no longer matches the original model
    rep = exp.validate(out, model_dirs[preset])
    checks = {c.name: c for c in rep.checks}
    assert checks["fingerprint"].ok and not checks["weights_equal_model"].ok and not checks["swap_slots_bytes"].ok


def test_coreml_validate_loads_a_16bit_checkpoint_in_its_own_dtype(artifacts, model_dirs, workdir, monkeypatch):
    """Core ML's validate compares weights only (no prediction off Apple platforms): it loads an fp16
    checkpoint in fp16, half the memory of fp32, and its checks give the same results as with the
    model loaded in fp32. An fp32 checkpoint is still loaded in fp32."""
    from loragen_mobile.exporters import coreml, pipeline
    from loragen_mobile.models import stored_float_dtype

    a = artifacts("coreml", "tiny-llama")  # fp16 weights: the fp32 model's, rounded
    half = workdir / "model-tiny-llama-fp16"
    load_model(model_dirs["tiny-llama"], dtype=torch.float16).save_pretrained(half)
    assert stored_float_dtype(half) == torch.float16
    assert stored_float_dtype(model_dirs["tiny-llama"]) == torch.float32
    loaded = []

    def spy(model_dir, dtype=None):
        m = load_model(model_dir, dtype=dtype)
        loaded.append(next(m.parameters()).dtype)
        return m

    monkeypatch.setattr(pipeline, "load_model", spy)
    exp = get_exporter("coreml")
    reports = [exp.validate(a, half)]
    monkeypatch.setattr(coreml.CoreMLExporter, "validate_dtype", lambda self, d: torch.float32)
    reports.append(exp.validate(a, half))
    assert loaded == [torch.float16, torch.float32]
    got = [[(c.name, c.ok, c.value, c.detail) for c in r.checks] for r in reports]
    assert reports[0].ok and got[0] == got[1] and len(got[0]) == 8
    monkeypatch.undo()
    monkeypatch.setattr(pipeline, "load_model", spy)
    assert exp.validate(a, model_dirs["tiny-llama"]).ok and loaded[-1] == torch.float32


def test_coreml_corrupt_foundation_fails(artifacts, model_dirs, workdir):
    from loragen_mobile.exporters.coreml import WEIGHTS

    a = artifacts("coreml", "tiny-llama")
    bad = workdir / "coreml-corrupt"
    shutil.copytree(a, bad)
    import coremltools as ct

    from loragen_mobile.exporters.coreml import PACKAGE, blob_consts, read_blob_header

    consts = blob_consts(ct.utils.load_spec(str(bad / PACKAGE)))
    buf = (bad / WEIGHTS).read_bytes()
    _, _, off = read_blob_header(buf, consts["p_model_layers_0_self_attn_o_proj_weight_to_fp16"]["header_offset"])
    off += 256  # o_proj is not a swap slot
    with open(bad / WEIGHTS, "r+b") as f:
        f.seek(off)
        f.write(np.full(8, 7.0, dtype=np.float16).tobytes())
    rep = get_exporter("coreml").validate(bad, model_dirs["tiny-llama"])
    checks = {c.name: c for c in rep.checks}
    assert not checks["fingerprint"].ok and not checks["weights_equal_model"].ok
    assert checks["weights_equal_model"].value == pytest.approx(7.0, abs=1.0)


def test_coreml_spec_follows_the_stateful_llm_contract(artifacts, model_dirs):
    """The package read back has swift-transformers' names, shapes and dtypes and last-token logits."""
    import coremltools as ct
    from coremltools.proto import FeatureTypes_pb2 as ft

    from loragen_mobile.exporters.coreml import PACKAGE

    F16, I32 = ft.ArrayFeatureType.FLOAT16, ft.ArrayFeatureType.INT32
    for preset in PRESETS:
        a = artifacts("coreml", preset)
        cfg = load_model(model_dirs[preset]).config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        d = ct.models.MLModel(str(a / PACKAGE), skip_model_load=True).get_spec().description
        ins = {i.name: i.type.multiArrayType for i in d.input}
        assert list(ins) == ["inputIds", "causalMask"]
        ranges = {n: [(r.lowerBound, r.upperBound) for r in t.shapeRange.sizeRanges] for n, t in ins.items()}
        assert ins["inputIds"].dataType == I32 and ranges["inputIds"] == [(1, 1), (1, MAX_CTX)]
        assert ins["causalMask"].dataType == F16
        assert ranges["causalMask"] == [(1, 1), (1, 1), (1, MAX_CTX), (1, MAX_CTX)]
        kv_shape = [cfg.num_hidden_layers, 1, cfg.num_key_value_heads, MAX_CTX, head_dim]
        assert [(s.name, list(s.type.stateType.arrayType.shape), s.type.stateType.arrayType.dataType)
                for s in d.state] == [("keyCache", kv_shape, F16), ("valueCache", kv_shape, F16)]
        assert [(o.name, list(o.type.multiArrayType.shape), o.type.multiArrayType.dataType)
                for o in d.output] == [("logits", [1, 1, cfg.vocab_size], F16)]
        meta = read_artifact(a, "coreml").meta
        assert meta["logits"] == "last" and "swift-transformers" in meta["io_contract"]["consumer"]
        assert [(i["name"], i["dtype"], i["ranges"]) for i in meta["inputs"]] == [
            ("inputIds", "int32", [[1, 1], [1, MAX_CTX]]),
            ("causalMask", "float16", [[1, 1], [1, 1], [1, MAX_CTX], [1, MAX_CTX]])]
        assert meta["outputs"] == [{"name": "logits", "dtype": "float16", "shape": [1, 1, cfg.vocab_size]}]
        assert [(s["name"], s["shape"]) for s in meta["states"]] == [("keyCache", kv_shape), ("valueCache", kv_shape)]


@pytest.mark.parametrize("preset", PRESETS)
def test_coreml_graph_equals_eager_with_the_causal_mask_contract(preset, model_dirs):
    """The module converted to Core ML (fp32, eager) fed the documented inputs equals transformers:
    prefill in two chunks (q > 1 after a cached prefix), then decode steps; all_logits gives every row."""
    from loragen_mobile.exporters.common import StatefulCoreMLLM

    model = load_model(model_dirs[preset], dtype=torch.float32)
    ref = Reference(model)
    w = StatefulCoreMLLM(model, MAX_CTX).eval()
    w_all = StatefulCoreMLLM(model, MAX_CTX, all_logits=True).eval()
    mask = StatefulCoreMLLM.causal_mask
    assert mask(2, 5).tolist() == [[[[0.0, 0.0, 0.0, 0.0, float("-inf")], [0.0] * 5]]]
    want = ref.step(PROMPT)
    diffs = []
    with torch.no_grad():
        for m in (w, w_all):
            m(torch.tensor([PROMPT[:4]]), mask(4, 4))
            got = m(torch.tensor([PROMPT[4:]]), mask(len(PROMPT) - 4, len(PROMPT)))[0]
            assert got.shape == ((1 if m is w else len(PROMPT) - 4), model.config.vocab_size)
            diffs.append(float((got - want[4:][-got.shape[0]:]).abs().max()))
        pos = len(PROMPT)
        for _ in range(6):
            t = int(want[-1].argmax())
            want = ref.step([t])
            pos += 1
            got = w(torch.tensor([[t]]), mask(1, pos))
            assert got.shape == (1, 1, model.config.vocab_size)
            diffs.append(float((got[0, -1] - want[-1]).abs().max()))
    assert max(diffs) <= 1e-4, diffs
    # in fp16 (Core ML's default compute precision) the -inf mask entries give no NaN
    w16 = StatefulCoreMLLM(load_model(model_dirs[preset], dtype=torch.float16), MAX_CTX).eval()
    with torch.no_grad():
        got16 = w16(torch.tensor([PROMPT]), mask(len(PROMPT), len(PROMPT), torch.float16))[0, -1].float()
    assert bool(torch.isfinite(got16).all())
    ref.reset()
    d16 = float((got16 - ref.step(PROMPT)[-1]).abs().max())
    assert d16 <= 5e-2, d16  # the fp16 validation threshold


def test_coreml_fp16_overflow_check_answers_as_coremltools_does(monkeypatch):
    """The Core ML export's chunked overflow check (a bounded-memory stand-in for coremltools'
    ``FP16ComputePrecision.fp16_overflow`` during conversion) gives coremltools' answer for every op:
    values beyond 65504 in any chunk, values from 1e38 on, infinities and NaN (all three ignored),
    scalars."""
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil.passes.defs.quantization import FP16ComputePrecision

    from loragen_mobile.exporters import coreml

    monkeypatch.setattr(coreml, "OVERFLOW_CHUNK", 5)  # 3 x 4 weights span three chunks
    big, inf, nan = 7e4, np.float32(np.inf), np.float32(np.nan)
    cases = []
    for where in (0, 4, 5, 11):
        for value in (big, -big, 65504.0, inf, -inf, 1e38, 9e37, nan):
            w = np.full((3, 4), 0.5, np.float32)
            w.reshape(-1)[where] = value
            cases.append(w)
    cases += [np.float32(big), np.float32(1.0)]
    answers = []
    for w in cases:
        @mb.program(input_specs=[mb.TensorSpec(shape=(3, 4))])
        def prog(x):
            return mb.add(x=x, y=w)

        op = next(o for o in prog.functions["main"].operations if o.op_type == "add")
        want = FP16ComputePrecision.fp16_overflow(op)
        assert coreml._fp16_overflow(op) == want, (w, want)
        answers.append(want)
    assert answers.count(True) == 3 * 4 + 1  # +-7e4 and 9e37 in each of the 4 places, and the scalar 7e4
    with coreml._bounded_fp16_overflow_check():
        assert FP16ComputePrecision.fp16_overflow is coreml._fp16_overflow
    assert FP16ComputePrecision.fp16_overflow is not coreml._fp16_overflow


def test_coreml_progress_bars_follow_the_export_progress(capfd):
    """`loragen export --no-progress` on Core ML: coremltools' own bars (frontend, pass pipelines,
    weight compression) write nothing while the export runs without progress, and are coremltools'
    own again afterwards and in an export with progress."""
    import importlib

    from loragen_mobile.exporters import coreml

    mods = [(importlib.import_module(n), a) for n, a in coreml._PROGRESS_MODULES.items()]
    orig = [getattr(m, a) for m, a in mods]
    capfd.readouterr()
    with coreml._library_progress(False):
        for m, a in mods:
            assert sum(getattr(m, a)(range(3), desc="pipeline", unit=" ops")) == 3
    assert capfd.readouterr().err == ""
    assert [getattr(m, a) for m, a in mods] == orig
    with coreml._library_progress(True):
        assert [getattr(m, a) for m, a in mods] == orig
        for m, a in mods:
            assert sum(getattr(m, a)(range(3), desc="pipeline", unit=" ops")) == 3
    assert capfd.readouterr().err.count("pipeline") >= len(mods)


@pytest.mark.parametrize("preset", PRESETS)
def test_prefill_outputs_only_the_last_position(preset, artifacts, model_dirs):
    """ONNX graph output and ExecuTorch method output are [1, 1, vocab] for a 10-token prefill, and
    onnxruntime-genai takes the ONNX artifact as a last-token-logits model."""
    import onnx
    import onnxruntime_genai as og
    from executorch.runtime import Runtime

    vocab = load_model(model_dirs[preset]).config.vocab_size
    a = artifacts("onnx", preset)
    g = onnx.load(str(a / "model.onnx"), load_external_data=False).graph
    out = next(o for o in g.output if o.name == "logits")
    assert [d.dim_value if d.HasField("dim_value") else d.dim_param for d in out.type.tensor_type.shape.dim] == [1, 1, vocab]
    assert read_artifact(a).meta["logits"] == "last"
    runner = get_exporter("onnx").open_runner(a)
    assert tuple(runner._forward(PROMPT, 0).shape) == (1, vocab)

    model = og.Model(str(a))
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(PROMPT) + 2)
    gen = og.Generator(model, params)
    gen.append_tokens(PROMPT)
    assert gen.get_output("logits").shape == (1, 1, vocab)

    e = artifacts("executorch", preset)
    meta = read_artifact(e).meta
    assert meta["logits"] == "last" and meta["outputs"][0]["shape"] == [1, 1, vocab]
    data = [p for p in Path(e).glob("*.ptd")]
    prog = Runtime.get().load_program(str(Path(e) / "model.pte"), data_path=str(data[0]) if len(data) == 1 else None)
    got = prog.load_method("forward").execute([torch.tensor([PROMPT]), torch.arange(len(PROMPT))])[0]
    assert tuple(got.shape) == (1, 1, vocab)


def test_onnx_all_logits_export(model_dirs, workdir):
    """all_logits=True: the graph returns every position; runners and onnxruntime-genai still work."""
    import onnx

    exp = get_exporter("onnx")
    art = exp.export(model_dirs["tiny-llama"], workdir / "onnx-all-logits", max_context=MAX_CTX, progress=False,
                     all_logits=True)
    assert art.meta["logits"] == "all" and art.meta["outputs"][0]["shape"] == [1, "seq", 260]
    out = next(o for o in onnx.load(str(art.path / "model.onnx"), load_external_data=False).graph.output
               if o.name == "logits")
    assert out.type.tensor_type.shape.dim[1].HasField("dim_param")
    runner = exp.open_runner(art.path)
    m = load_model(model_dirs["tiny-llama"], dtype=torch.float32)
    with torch.no_grad():
        want = m(input_ids=torch.tensor([PROMPT])).logits[0]
    rows = runner._forward(PROMPT, 0)
    assert rows.shape == want.shape and float((rows - want).abs().max()) <= 1e-4
    assert exp.validate(art.path, model_dirs["tiny-llama"]).ok
    got = og_greedy(art.path, PROMPT, N_NEW)
    assert got == _hf_greedy(model_dirs["tiny-llama"], PROMPT, N_NEW)


# ------------------------------------------------------------------------------------ bad input


def test_bad_artifacts_raise_clear_errors(artifacts, workdir, model_dirs):
    exp = get_exporter("onnx")
    with pytest.raises(LoragenError, match="does not exist"):
        exp.open_runner(workdir / "nope")
    with pytest.raises(LoragenError, match="artifact.json is missing"):
        exp.open_runner(model_dirs["tiny-llama"])
    bad = workdir / "onnx-badjson"
    shutil.copytree(artifacts("onnx", "tiny-llama"), bad)
    (bad / "artifact.json").write_text("{not json")
    with pytest.raises(LoragenError, match="not valid JSON"):
        exp.open_runner(bad)
    meta = read_artifact(artifacts("onnx", "tiny-llama")).meta
    (bad / "artifact.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "swap_slots"}))
    with pytest.raises(LoragenError, match="missing field"):
        exp.validate(bad, model_dirs["tiny-llama"])
    (bad / "artifact.json").write_text(json.dumps(meta))
    (bad / "swap.onnx.data").unlink()
    with pytest.raises(LoragenError, match="incomplete"):
        exp.open_runner(bad)
    with pytest.raises(LoragenError, match="is a 'onnx' artifact"):
        get_exporter("executorch").open_runner(artifacts("onnx", "tiny-llama"))
    with pytest.raises(LoragenError, match="unknown backend"):
        get_exporter("tflite")
    with pytest.raises(LoragenError, match="already exists"):
        exp.export(model_dirs["tiny-llama"], artifacts("onnx", "tiny-llama"))
    with pytest.raises(LoragenError, match="does not exist"):
        exp.export(workdir / "no-model", workdir / "never")
    assert not (workdir / "never").exists()
    runner = exp.open_runner(artifacts("onnx", "tiny-llama"))
    with pytest.raises(LoragenError, match="max context"):
        runner.generate(PROMPT, MAX_CTX)
    with pytest.raises(LoragenError, match="token ids"):
        runner.prefill([1, 100000])


# ------------------------------------------------------------------------------------------- CLI


def test_cli_export_recipe_run_validate(model_dirs, workdir, capsys):
    from loragen_mobile.cli import main

    recipe = Path(__file__).resolve().parents[1] / "export" / "tiny-llama" / "onnx.yaml"
    out = workdir / "cli-onnx"
    assert main(["export", "--recipe", str(recipe), "--model", str(model_dirs["tiny-llama"]), "--out", str(out),
                 "--max-context", str(MAX_CTX), "--no-progress"]) == 0
    art = read_artifact(out, "onnx")
    assert art.meta["max_context"] == MAX_CTX
    capsys.readouterr()
    assert main(["run", "--artifact", str(out), "--prompt", "Hello, wo", "--max-new-tokens", str(N_NEW),
                 "--json", "--raw"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    ids = build_tokenizer()("Hello, wo")["input_ids"]
    assert res["prompt_ids"] == ids and ids[0] == 1 and len(ids) == 10
    assert res["tokens"] == _hf_greedy(model_dirs["tiny-llama"], ids, N_NEW)
    assert res["text"] == build_tokenizer().decode(res["tokens"])
    js, junit = workdir / "v.json", workdir / "v.xml"
    assert main(["validate", "--artifact", str(out), "--model", str(model_dirs["tiny-llama"]), "--json", str(js),
                 "--junit", str(junit)]) == 0
    rep = json.loads(js.read_text())
    assert rep["ok"] and len(rep["checks"]) == 12
    root = ET.parse(junit).getroot()
    assert root.get("failures") == "0" and len(root.findall("testcase")) == 12
    # bad recipe and contradicting options are one-line errors (exit 2)
    bad = workdir / "bad.yaml"
    bad.write_text("backend: onnx\nmax_ctx: 3\n")
    assert main(["export", "--recipe", str(bad), "--model", str(model_dirs["tiny-llama"]),
                 "--out", str(workdir / "z")]) == 2
    assert "unknown key" in capsys.readouterr().err
    assert main(["run", "--artifact", str(workdir / "missing"), "--prompt", "x"]) == 2


def test_recipes_are_valid():
    from loragen_mobile.exporters import load_recipe

    root = Path(__file__).resolve().parents[1] / "export"
    recipes = sorted(root.glob("*/*.yaml"))
    assert len(recipes) >= 6
    for r in recipes:
        rec = load_recipe(r)
        assert rec.backend in ("executorch", "onnx", "coreml") and rec.backend in r.stem
        assert rec.preset == r.parent.name and rec.name == f"{r.parent.name}-{r.stem}"


def test_map_weights_moves_the_values_to_a_file_map(model_dirs, tmp_path):
    """An unquantized ExecuTorch export moves the eager weights to a copy-on-write map of a file
    before lowering (XNNPACK copies them; the map's pages are reclaimable page cache): the values
    are unchanged, a tied table stays one parameter, the file is gone from the directory, and a
    parameter can still be written (the page becomes the process's own)."""
    from loragen_mobile.exporters.pipeline import ExportJob

    model = load_model(model_dirs["tiny-gemma"], dtype=torch.float32)
    params = dict(model.named_parameters(remove_duplicate=False))
    before = {n: p.detach().clone() for n, p in params.items()}
    job = ExportJob(model_dirs["tiny-gemma"], tmp_path, model, "fp32", MAX_CTX, ("gate_proj",), [], params)
    job.map_weights(tmp_path / ".weights")
    assert list(tmp_path.iterdir()) == []
    assert all(torch.equal(p, before[n]) for n, p in params.items())
    assert params["lm_head.weight"] is params["model.embed_tokens.weight"]
    mapped = params["model.layers.0.mlp.up_proj.weight"]
    assert not mapped.untyped_storage().resizable()  # a file map, not an allocation of its own
    with torch.no_grad():
        mapped.add_(1.0)
    assert torch.equal(mapped, before["model.layers.0.mlp.up_proj.weight"] + 1.0)
