"""Presets, HF directory round trips and the loading path's errors."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from loragen_mobile import models
from loragen_mobile.errors import LoragenError


def test_init_model_round_trip_exact(preset_dirs):
    for preset, d in preset_dirs.items():
        ref = models.build_model(preset, seed=0)
        loaded = AutoModelForCausalLM.from_pretrained(d)
        sd_ref, sd = ref.state_dict(), loaded.state_dict()
        assert sd_ref.keys() == sd.keys()
        for k in sd_ref:
            assert torch.equal(sd_ref[k], sd[k]), k
        ids = torch.tensor([[1, 70, 80, 90, 100]])
        with torch.no_grad():
            assert torch.equal(ref(ids).logits, loaded(ids).logits)


def test_presets_have_the_published_structure():
    llama = models.preset_config("tiny-llama")
    assert llama.model_type == "llama" and llama.num_attention_heads // llama.num_key_value_heads == 4
    assert llama.hidden_act == "silu" and not llama.tie_word_embeddings
    gemma = models.preset_config("tiny-gemma")
    assert gemma.model_type == "gemma" and gemma.num_key_value_heads == 1
    assert gemma.head_dim != gemma.hidden_size // gemma.num_attention_heads
    assert gemma.hidden_activation == "gelu_pytorch_tanh" and gemma.tie_word_embeddings
    big = models.preset_config("tinyllama-1.1b")
    assert (big.hidden_size, big.intermediate_size, big.num_hidden_layers, big.num_key_value_heads) == (2048, 5632, 22, 4)
    g2b = models.preset_config("gemma-2b")
    assert (g2b.hidden_size, g2b.intermediate_size, g2b.num_hidden_layers, g2b.head_dim, g2b.vocab_size) == (2048, 16384, 18, 256, 256000)


def test_gemma_ties_embeddings_and_scales_them(preset_dirs):
    m = models.load_model(preset_dirs["tiny-gemma"])
    assert m.lm_head.weight.data_ptr() == m.model.embed_tokens.weight.data_ptr()
    assert float(m.model.embed_tokens.embed_scale) == pytest.approx(128 ** 0.5)


def test_tokenizer_is_byte_level_and_saved(preset_dirs):
    tok = AutoTokenizer.from_pretrained(preset_dirs["tiny-llama"])
    text = "tool: get_weather(city='Zürich')"
    ids = tok(text)["input_ids"]
    assert ids[0] == 1 and len(ids) == 1 + len(text.encode("utf-8"))
    assert tok.decode(ids, skip_special_tokens=True) == text
    a = (preset_dirs["tiny-llama"] / "tokenizer.json").read_bytes()
    b = (preset_dirs["tiny-gemma"] / "tokenizer.json").read_bytes()
    assert a == b


def test_target_modules_default_is_ffn(preset_dirs):
    m = models.load_model(preset_dirs["tiny-llama"])
    names = models.target_module_names(m)
    assert len(names) == 3 * 4 and all(n.split(".")[-1] in ("gate_proj", "up_proj", "down_proj") for n in names)
    qv = models.target_module_names(m, models.parse_targets("q_proj,v_proj"))
    assert qv[:2] == ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj"]
    with pytest.raises(LoragenError, match="unknown target module"):
        models.target_module_names(m, ("mlp",))


def test_load_errors(tmp_path):
    with pytest.raises(LoragenError, match="does not exist"):
        models.load_model(tmp_path / "nope")
    with pytest.raises(LoragenError, match="config.json is missing"):
        models.load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(LoragenError, match="unsupported model_type 'gpt2'.*supported: llama, gemma, gemma2, gemma3_text, qwen2, qwen3"):
        models.load_model(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(LoragenError, match="not valid JSON"):
        models.load_model(tmp_path)


def test_init_model_refuses_existing_dir(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(LoragenError, match="already exists"):
        models.init_model_dir("tiny-llama", tmp_path / "x")
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]


def test_config_that_is_not_an_object(tmp_path):
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(LoragenError, match="must hold a JSON object"):
        models.load_model(tmp_path)


def test_chat_template_reproduces_the_training_layout(preset_dirs):
    """The prompt contract: the chat template renders [BOS] (system "\\n") input "\\n" -> target [EOS]
    byte for byte, for the shipped edge model's tokenizer, a preset directory and a directory
    saved without a template (which gets models.CHAT_TEMPLATE)."""
    from pathlib import Path

    from transformers import AutoTokenizer

    from loragen_mobile.data import make_suite
    from loragen_mobile.training import lm_example

    asset = Path(models.__file__).parent / "assets" / "tiny-llama-edge"
    cfg = json.loads((preset_dirs["tiny-llama"] / "tokenizer_config.json").read_text())
    assert cfg["chat_template"] == models.CHAT_TEMPLATE  # in tokenizer_config.json, where og reads it
    assert json.loads((asset / "tokenizer_config.json").read_text())["chat_template"] == models.CHAT_TEMPLATE
    toks = [models.load_tokenizer(asset), models.load_tokenizer(preset_dirs["tiny-gemma"])]
    bare = models.build_tokenizer()
    bare.chat_template = None
    bare.save_pretrained(preset_dirs["tiny-llama"].parent / "no-template")
    assert AutoTokenizer.from_pretrained(preset_dirs["tiny-llama"].parent / "no-template").chat_template is None
    toks.append(models.load_tokenizer(preset_dirs["tiny-llama"].parent / "no-template"))
    recs = [r for s in ("reasoning", "tools") for split in ("train", "unseen")
            for r in make_suite(s, split, seed=0, per_task=1)]
    assert len(recs) >= 40
    for tok in toks:
        def b(text):
            return list(tok(text, add_special_tokens=False)["input_ids"])
        for r in recs:
            for system in (r["system"], None):
                head = b(f"{system}\n") if system else []
                prompt = [1] + head + b(f"{r['input']}\n")
                assert lm_example(tok, system, r["input"], None) == (prompt, len(prompt))
                full = prompt + b(r["target"]) + [2]
                assert lm_example(tok, system, r["input"], r["target"]) == (full, len(prompt))
