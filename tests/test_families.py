"""Every model family exports, validates, swaps and trains.

The tiny presets of the families after llama/gemma (Llama-3.x, Qwen2, Qwen3, Gemma-2, Gemma-3) are
exported once per backend (conftest ``family_artifacts``) and checked against eager transformers with
prompts longer than their sliding window (16), so the sliding-window masks matter; then unusual but
legal settings built from transformers' own config classes (attention bias, rope scaling, Qwen2's
partial sliding window, soft-capping, a query_pre_attn_scalar other than head_dim).
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

from conftest import (ET_FAMILY_PRESETS, FAMILY_MAX_CTX, FAMILY_PRESETS, GEN_OVERRIDES, SLOW_BACKEND_PRESETS,
                      make_family_model_dir, og_greedy)
from loragen_mobile import families, lora
from loragen_mobile.errors import LoragenError
from loragen_mobile.exporters import ValidationReport, check_logits, get_exporter
from loragen_mobile.exporters.common import PastKVLM, Reference, StatefulCoreMLLM
from loragen_mobile.models import build_tokenizer, config_hash, load_model, target_module_names

TEXT = "Once upon a time, in a land far away, there lived a"
LONG_PROMPT = [1] + build_tokenizer()(TEXT, add_special_tokens=False)["input_ids"]  # 52 tokens > window 16
STEPS = 8
FP32 = 1e-4


def _check_long(runner, model) -> ValidationReport:
    """Prefill with LONG_PROMPT + STEPS decode steps vs eager fp32 (logits within 1e-4, same argmax)."""
    rep = ValidationReport("", "", "fp32")
    check_logits(rep, runner, model, LONG_PROMPT, STEPS, FP32)
    assert rep.ok, rep.summary()
    return rep


def _hf_greedy(model, ids: list[int], n: int) -> list[int]:
    out = model.generate(torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[0, len(ids):].tolist()


def test_long_prompt_exceeds_every_sliding_window():
    from loragen_mobile.models import preset_config

    for p in FAMILY_PRESETS:
        cfg = preset_config(p)
        assert len(LONG_PROMPT) + STEPS < FAMILY_MAX_CTX
        if getattr(cfg, "sliding_window", None):
            assert len(LONG_PROMPT) > cfg.sliding_window
    # `loragen validate` itself prompts past the window of a model that has one
    from loragen_mobile.exporters.validation import VALIDATION_PROMPT, validation_prompt

    for p, want in [("tiny-gemma2", 24), ("tiny-gemma3", 24), ("tiny-qwen2", 12), ("tiny-llama", 12)]:
        prompt = validation_prompt(preset_config(p), FAMILY_MAX_CTX, STEPS)
        assert len(prompt) == want and prompt[:12] == VALIDATION_PROMPT
    assert len(validation_prompt(preset_config("tiny-gemma2"), 20, 8)) == 11


# ------------------------------------------------------------------------------ tiny presets


@pytest.mark.parametrize("preset,backend", [(p, b) for p in FAMILY_PRESETS for b in ("executorch", "onnx")
                                            if b == "onnx" or p in ET_FAMILY_PRESETS])
def test_export_validates_with_a_prompt_longer_than_the_window(preset, backend, family_artifacts, family_dirs):
    exp = get_exporter(backend)
    art = family_artifacts(backend, preset)
    assert exp.validate(art, family_dirs[preset]).ok
    model = load_model(family_dirs[preset], dtype=torch.float32)
    _check_long(exp.open_runner(art), model)


@pytest.mark.parametrize("preset", FAMILY_PRESETS)
def test_onnxruntime_genai_flow_matches_transformers(preset, family_artifacts, family_dirs):
    art = family_artifacts("onnx", preset)
    meta = json.loads((art / "genai_config.json").read_text())
    assert meta["model"]["type"] == families.get_family(meta["model"]["type"]).genai_type
    model = load_model(family_dirs[preset], dtype=torch.float32)
    assert og_greedy(art, LONG_PROMPT, 12) == _hf_greedy(model, LONG_PROMPT, 12)


@pytest.mark.parametrize("preset", ET_FAMILY_PRESETS)
def test_executorch_stock_runner_matches_transformers(preset, family_artifacts, family_dirs):
    from executorch.extension.llm.runner import GenerationConfig, TextLLMRunner
    from transformers import AutoTokenizer

    art = family_artifacts("executorch", preset)
    tok = AutoTokenizer.from_pretrained(family_dirs[preset])
    model = load_model(family_dirs[preset], dtype=torch.float32)
    runner = TextLLMRunner(str(art / "model.pte"), str(art / "tokenizer.json"), str(art / "model.ptd"))
    for prompt in (TEXT, TEXT.upper()):
        want = _hf_greedy(model, tok(prompt).input_ids, 16)
        pieces = []
        runner.reset()
        runner.generate(prompt, GenerationConfig(echo=False, max_new_tokens=16, temperature=0.0, num_bos=1),
                        token_callback=pieces.append)
        assert pieces == [tok.decode([t]) for t in want], (prompt, pieces, want)


@pytest.mark.parametrize("preset", SLOW_BACKEND_PRESETS)
def test_coreml_export_validates_and_its_graph_equals_eager(preset, family_artifacts, family_dirs):
    """Core ML cannot run on Linux: the package is checked (signature, every weight) and the module it
    was converted from is run eagerly with the documented inputs (two prefill chunks, then decode)."""
    exp = get_exporter("coreml")
    art = family_artifacts("coreml", preset)
    rep = exp.validate(art, family_dirs[preset])
    assert rep.ok, rep.summary()
    model = load_model(family_dirs[preset], dtype=torch.float32)
    ref = Reference(model)
    w = StatefulCoreMLLM(model, FAMILY_MAX_CTX).eval()
    mask = StatefulCoreMLLM.causal_mask
    want = ref.step(LONG_PROMPT)
    with torch.no_grad():
        w(torch.tensor([LONG_PROMPT[:20]]), mask(20, 20))
        got = w(torch.tensor([LONG_PROMPT[20:]]), mask(len(LONG_PROMPT) - 20, len(LONG_PROMPT)))[0, -1]
        diffs = [float((got - want[-1]).abs().max())]
        pos = len(LONG_PROMPT)
        for _ in range(STEPS):
            t = int(want[-1].argmax())
            assert int(got.argmax()) == t
            want = ref.step([t])
            pos += 1
            got = w(torch.tensor([[t]]), mask(1, pos))[0, -1]
            diffs.append(float((got - want[-1]).abs().max()))
    assert max(diffs) <= FP32, diffs


@pytest.mark.parametrize("preset", FAMILY_PRESETS)
def test_bundle_swaps_of_both_kinds_equal_the_peft_merge(preset, family_artifacts, family_dirs, tmp_path):
    from peft import PeftModel

    from loragen_mobile.bundle import apply_bundle, build_bundle
    from loragen_mobile.bundle.keys import generate_keypair, load_private_key, load_public_key

    md = family_dirs[preset]
    base = load_model(md, dtype=torch.float32)
    fam = families.get_family(base.config.model_type)
    ad = lora.random_adapter(base, target_module_names(base, fam.target_modules), r=8, alpha=16, seed=5, std=0.1)
    lora.save_peft_adapter(ad, tmp_path / "adapter")
    merged = PeftModel.from_pretrained(load_model(md, dtype=torch.float32), str(tmp_path / "adapter"))
    merged = merged.merge_and_unload().eval()
    generate_keypair(tmp_path / "k.pem", tmp_path / "k.pub")
    key, pub = load_private_key(tmp_path / "k.pem"), load_public_key(tmp_path / "k.pub")
    base_logits = Reference(base).step(LONG_PROMPT)[-1]
    slow = preset in SLOW_BACKEND_PRESETS  # exported to Core ML
    for backend in ("executorch", "onnx") if preset in ET_FAMILY_PRESETS else ("onnx",):
        art = family_artifacts(backend, preset)
        exp = get_exporter(backend)
        # swap targets: the artifact's default (FFN) slots; attention projections are not slots
        slot_ad = lora.LoraAdapter({k: v for k, v in ad.factors.items() if k.split(".")[-1] in fam.default_targets},
                                   r=8, alpha=16, model_type=ad.model_type)
        lora.save_peft_adapter(slot_ad, tmp_path / f"slot-{backend}")
        want = PeftModel.from_pretrained(load_model(md, dtype=torch.float32),
                                         str(tmp_path / f"slot-{backend}")).merge_and_unload().eval()
        for kind in ("merged", "lora"):
            out = tmp_path / f"{backend}-{kind}"
            apply_bundle(build_bundle(art, slot_ad, kind, private_key=key), art, out, pub)
            _check_long(exp.open_runner(out), want)
        # the swap changes the output
        assert float((Reference(want).step(LONG_PROMPT)[-1] - base_logits).abs().max()) > 1e-2
    # Core ML (cannot run here): the swapped package's stored fp16 slot weights are PEFT's merged
    # weights rounded to fp16 (within one fp16 step), and every other slot is untouched
    art = family_artifacts("coreml", preset) if slow else None
    want_sd = want.state_dict()
    for kind in ("merged", "lora") if slow else ():
        out = tmp_path / f"coreml-{kind}"
        apply_bundle(build_bundle(art, slot_ad, kind, private_key=key), art, out, pub)
        stored = get_exporter("coreml").read_swap_tensors(out)
        assert set(stored) == {s.name for s in get_exporter("coreml").swap_slots(art)}
        for name, t in stored.items():
            w = want_sd[name]
            assert t.dtype == torch.float16
            assert float((t.float() - w).abs().max()) <= float(w.abs().max()) * 2 ** -10 + 1e-6, name
    # the full adapter (attention projections too) merged by the project equals PEFT's merge
    ours = lora.merge_into_model(copy.deepcopy(base), ad)
    ids = torch.tensor([LONG_PROMPT])
    with torch.no_grad():
        assert float((ours(ids).logits - merged(ids).logits).abs().max()) <= FP32


@pytest.mark.parametrize("preset", FAMILY_PRESETS)
def test_generator_trains_with_the_family_as_edge(preset, family_dirs, gen_data, tmp_path):
    from pathlib import Path

    from loragen_mobile.generator import generate_adapter, load_config, load_generator, train

    cfg = load_config(Path(__file__).parent.parent / "configs" / "tiny.yaml", {**GEN_OVERRIDES, "max_steps": 2})
    run = train(cfg, family_dirs[preset], gen_data, tmp_path / "run", progress=False)
    g = load_generator(run)
    edge = load_model(family_dirs[preset], dtype=torch.float32)
    fam = families.family_of(edge.config)
    mods = dict(edge.named_modules())
    assert g.layout.model_type == fam.model_type and tuple(sorted(g.layout.modules)) == tuple(sorted(cfg.targets))
    a = generate_adapter(g, "Task: reverse the word.")
    assert a.model_type == fam.model_type
    assert sorted(a.factors) == sorted(target_module_names(edge, tuple(cfg.targets)))
    for name, (A, B) in a.factors.items():  # A [r, in], B [out, r]: the edge module's shape
        lin = mods[name]
        assert A.shape[1] == lin.in_features and B.shape[0] == lin.out_features and A.shape[0] == B.shape[1] > 0
        assert bool(torch.isfinite(A).all() and torch.isfinite(B).all())


# ------------------------------------------------------------------------- unusual settings


def _unusual_configs():
    from transformers import Gemma2Config, Gemma3TextConfig, LlamaConfig, Qwen2Config, Qwen3Config

    small = dict(vocab_size=families.BYTE_VOCAB_SIZE, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
                 bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return {
        "llama-bias-tied-llama3": LlamaConfig(
            **small, attention_bias=True, tie_word_embeddings=True,
            rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 32}),
        "llama-linear-rope": LlamaConfig(**small, rope_parameters={"rope_type": "linear", "rope_theta": 10000.0,
                                                                    "factor": 2.0}),
        "qwen2-partial-sliding": Qwen2Config(**small, use_sliding_window=True, sliding_window=8, max_window_layers=2,
                                             tie_word_embeddings=True),
        "qwen3-bias": Qwen3Config(**small, attention_bias=True),
        "gemma3-softcaps": Gemma3TextConfig(**small, query_pre_attn_scalar=16, sliding_window=8,
                                            sliding_window_pattern=2, attn_logit_softcapping=20.0,
                                            final_logit_softcapping=15.0),
        "gemma2-query-scalar": Gemma2Config(**small, query_pre_attn_scalar=40, sliding_window=8,
                                            attn_logit_softcapping=20.0, final_logit_softcapping=10.0),
    }


@pytest.fixture(scope="module")
def unusual_dirs(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("unusual")
    out = {}
    for name, cfg in _unusual_configs().items():
        torch.manual_seed(0)
        out[name] = make_family_model_dir(AutoModelForCausalLM.from_config(cfg).eval(), root / name)
    return out


def test_unusual_settings_reach_the_modules(unusual_dirs):
    m = {k: load_model(d, dtype=torch.float32) for k, d in unusual_dirs.items()}
    assert m["llama-bias-tied-llama3"].model.layers[0].self_attn.o_proj.bias is not None
    q2 = [layer.self_attn.sliding_window for layer in m["qwen2-partial-sliding"].model.layers]
    assert q2 == [None, None, 8, 8]
    g3 = m["gemma3-softcaps"]
    assert [layer.self_attn.sliding_window for layer in g3.model.layers] == [8, None, 8, None]
    assert g3.config.final_logit_softcapping == 15.0
    assert m["gemma2-query-scalar"].model.layers[0].self_attn.scaling == 40 ** -0.5


@pytest.mark.parametrize("name", list(_unusual_configs()))
def test_unusual_settings_export_and_validate_on_onnx(name, unusual_dirs, tmp_path):
    exp = get_exporter("onnx")
    art = exp.export(unusual_dirs[name], tmp_path / "onnx", max_context=FAMILY_MAX_CTX, progress=False)
    assert exp.validate(art.path, unusual_dirs[name]).ok
    _check_long(exp.open_runner(art.path), load_model(unusual_dirs[name], dtype=torch.float32))


def test_the_window_matters(unusual_dirs):
    """A wrapper that ignored the window would not match: dropping it changes the logits."""
    model = load_model(unusual_dirs["qwen2-partial-sliding"], dtype=torch.float32)
    w = PastKVLM(model, all_logits=True).eval()
    n = len(LONG_PROMPT)
    args = (torch.tensor([LONG_PROMPT]), torch.ones(1, n, dtype=torch.long), torch.arange(n)[None],
            [torch.zeros(1, 2, 0, 16) for _ in range(8)])
    ref = Reference(model).step(LONG_PROMPT)
    with torch.no_grad():
        assert float((w(*args)[0][0] - ref).abs().max()) <= FP32
        w.window = [None] * len(w.window)
        assert float((w(*args)[0][0] - ref).abs().max()) > 1e-2


def test_models_that_disagree_with_their_family_are_refused(unusual_dirs):
    model = load_model(unusual_dirs["qwen3-bias"], dtype=torch.float32)
    model.model.layers[1].self_attn.k_proj.bias = None
    with pytest.raises(LoragenError, match="layer 1 k_proj bias missing") as e:
        PastKVLM(model)
    assert e.value.code == "model"
    model = load_model(unusual_dirs["llama-linear-rope"], dtype=torch.float32)
    model.model.layers[0].self_attn.sliding_window = 4
    with pytest.raises(LoragenError, match="sliding window") as e:
        StatefulCoreMLLM(model, 32)
    assert e.value.code == "model"
    model.model.layers[0].self_attn.sliding_window = None
    model.config.hidden_act = "relu"
    with pytest.raises(LoragenError, match="activation 'relu' is not supported") as e:
        PastKVLM(model)
    assert e.value.code == "model"


# ------------------------------------------------------------------------------- config hash


def _changed(v):
    if isinstance(v, bool):
        return not v
    if isinstance(v, (int, float)):
        return v * 2 + 1
    if isinstance(v, str):
        return v + "x"
    if isinstance(v, list):
        return list(reversed(v)) + ["full_attention"]
    if isinstance(v, dict):
        return {**v, "rope_theta": 123.0}
    return 7


@pytest.mark.parametrize("model_type", list(families.families()))
def test_config_hash_is_stable_across_save_load_and_follows_every_identity_field(model_type, tmp_path):
    from transformers import AutoConfig

    from loragen_mobile.models import preset_config

    fam = families.get_family(model_type)
    cfgs = [preset_config(p.name) for p in fam.presets if p.tiny]
    cfgs += [c for c in _unusual_configs().values() if c.model_type == model_type]
    for i, cfg in enumerate(cfgs):
        h = config_hash(cfg)
        cfg.save_pretrained(tmp_path / str(i))
        d = json.loads((tmp_path / str(i) / "config.json").read_text())
        assert config_hash(d) == h == config_hash(AutoConfig.from_pretrained(tmp_path / str(i)))
        ident = fam.identity(d)
        fields = set(ident) | set(fam.identity_fields)
        for k in fields:
            if k not in d:
                continue
            changed = {**d, k: _changed(d[k])}
            if k == "model_type":
                continue  # another family: a different identity by construction
            assert config_hash(changed) != h, (model_type, k)


def test_gemma_1_official_gelu_config_is_read_as_the_tanh_approximation(tmp_path, preset_dirs):
    """google/gemma-2b's config.json says "hidden_act": "gelu" (no hidden_activation); transformers
    runs it as gelu_pytorch_tanh, and so must the family: the directory is accepted and the export
    wrapper uses the tanh approximation, giving transformers' logits."""
    import shutil

    from loragen_mobile import models
    from loragen_mobile.exporters.common import StaticCacheLM
    from loragen_mobile.families import get_family

    d = tmp_path / "legacy"
    shutil.copytree(preset_dirs["tiny-gemma"], d)
    cfg = json.loads((d / "config.json").read_text())
    cfg.pop("hidden_activation", None)
    cfg["hidden_act"] = "gelu"
    (d / "config.json").write_text(json.dumps(cfg))
    assert get_family("gemma").activation(models.read_config(d)) == "gelu_pytorch_tanh"
    m = models.load_model(d, dtype=torch.float32)
    w = StaticCacheLM(m, max_context=16, all_logits=True)
    assert w.tanh_gelu
    ids = torch.tensor([[1, 5, 9, 13]])
    with torch.no_grad():
        torch.testing.assert_close(w(ids, torch.arange(4)), m(ids).logits, rtol=0, atol=1e-4)
