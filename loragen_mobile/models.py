"""Edge and cloud models: built-in presets and loading of local Hugging Face directories.

No weights can be downloaded, so every preset is built from transformers' own config classes
(``LlamaConfig`` for TinyLlama-1.1B's family, ``GemmaConfig`` for Gemma-2B's) and saved as a
standard, self-contained Hugging Face directory (config, safetensors weights, tokenizer) that
plain ``AutoModelForCausalLM.from_pretrained(dir)`` loads.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from transformers import (
    AutoModelForCausalLM,
    GemmaConfig,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from .errors import LoragenError
from .fsutil import atomic_dir, read_json_object

SUPPORTED_MODEL_TYPES = ("gemma", "llama")

# The paper puts LoRA on the FFN of every edge layer; attention projections are allowed too.
DEFAULT_TARGET_MODULES = ("gate_proj", "up_proj", "down_proj")
KNOWN_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# Byte-level tokenizer: 4 special tokens, then the 256 byte symbols.
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")
BYTE_VOCAB_SIZE = len(SPECIAL_TOKENS) + 256

# The prompt contract of every edge model the presets make (docs/exporters.md, "Prompt contract"):
# [BOS] system "\n" input "\n" -> target [EOS], the system message optional. It is written once, as
# the tokenizer's Jinja chat template (tokenizer_config.json "chat_template"), so Hugging Face's
# apply_chat_template, onnxruntime-genai's Tokenizer.apply_chat_template and the exported
# artifacts all render the same text; training, evaluation and every runner read it from there.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{{ message['content'] }}{{ eos_token }}"
    "{% else %}{{ message['content'] }}\n{% endif %}"
    "{% endfor %}"
)


def _tiny_llama() -> LlamaConfig:
    # TinyLlama-1.1B's structure at toy size: GQA (4 query heads per KV head), SiLU gated FFN,
    # untied embeddings, RMSNorm, RoPE.
    return LlamaConfig(
        vocab_size=BYTE_VOCAB_SIZE, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
        num_attention_heads=8, num_key_value_heads=2, head_dim=16, hidden_act="silu",
        max_position_embeddings=1024, rms_norm_eps=1e-5, rope_theta=10000.0,
        tie_word_embeddings=False, initializer_range=0.02,
    )


def _tiny_gemma() -> GemmaConfig:
    # Gemma-2B's structure at toy size: multi-query attention (1 KV head), head_dim (48) not equal
    # to hidden/heads (32), gelu_pytorch_tanh gated FFN, tied embeddings, Gemma RMSNorm (1 + w)
    # and sqrt(hidden) embedding scaling (both built into transformers' Gemma modules).
    return GemmaConfig(
        vocab_size=BYTE_VOCAB_SIZE, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=1, head_dim=48,
        hidden_activation="gelu_pytorch_tanh", max_position_embeddings=1024, rms_norm_eps=1e-6,
        rope_theta=10000.0, tie_word_embeddings=True, initializer_range=0.02,
    )


def _tiny_cloud() -> LlamaConfig:
    # The cloud-side generator backbone at toy size: Llama architecture, larger than the edge presets.
    return LlamaConfig(
        vocab_size=BYTE_VOCAB_SIZE, hidden_size=192, intermediate_size=512, num_hidden_layers=4,
        num_attention_heads=6, num_key_value_heads=2, head_dim=32, hidden_act="silu",
        max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=10000.0,
        tie_word_embeddings=False, initializer_range=0.02,
    )


def _tinyllama_1_1b() -> LlamaConfig:
    # TinyLlama/TinyLlama-1.1B-Chat-v1.0 shapes (random weights).
    return LlamaConfig(
        vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
        num_attention_heads=32, num_key_value_heads=4, head_dim=64, hidden_act="silu",
        max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=10000.0,
        tie_word_embeddings=False, initializer_range=0.02,
    )


def _gemma_2b() -> GemmaConfig:
    # google/gemma-2b shapes (random weights).
    return GemmaConfig(
        vocab_size=256000, hidden_size=2048, intermediate_size=16384, num_hidden_layers=18,
        num_attention_heads=8, num_key_value_heads=1, head_dim=256,
        hidden_activation="gelu_pytorch_tanh", max_position_embeddings=8192, rms_norm_eps=1e-6,
        rope_theta=10000.0, tie_word_embeddings=True, initializer_range=0.02,
    )


@dataclass(frozen=True)
class Preset:
    name: str
    make_config: Callable[[], PretrainedConfig]
    description: str


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("tiny-llama", _tiny_llama, "TinyLlama-1.1B structure at toy size (GQA, SiLU, untied)"),
        Preset("tiny-gemma", _tiny_gemma, "Gemma-2B structure at toy size (MQA, head_dim 48, GeLU-tanh, tied)"),
        Preset("tiny-cloud", _tiny_cloud, "cloud-side generator backbone at toy size (Llama)"),
        Preset("tinyllama-1.1b", _tinyllama_1_1b, "TinyLlama-1.1B published shapes, random weights"),
        Preset("gemma-2b", _gemma_2b, "Gemma-2B published shapes, random weights"),
    )
}


def preset_config(name: str) -> PretrainedConfig:
    if name not in PRESETS:
        raise LoragenError(f"unknown preset '{name}'; available: {', '.join(PRESETS)}")
    cfg = PRESETS[name].make_config()
    cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id = 1, 2, 0
    return cfg


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A self-contained byte-level tokenizer (one token per UTF-8 byte, no merges).

    Built with the ``tokenizers`` library: BPE model over the 256 byte-level symbols with an empty
    merge list, ByteLevel pre-tokenizer and decoder. Deterministic, so every preset directory
    carries byte-identical tokenizer files.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for sym in sorted(alphabet):
        vocab[sym] = len(vocab)
    assert len(vocab) == BYTE_VOCAB_SIZE
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        clean_up_tokenization_spaces=False, chat_template=CHAT_TEMPLATE,
    )


def save_tokenizer(tokenizer, out: str | os.PathLike) -> None:
    """``save_pretrained`` with the chat template kept in tokenizer_config.json, where
    onnxruntime-genai and other stock runtimes read it (not in a separate chat_template.jinja)."""
    tokenizer.save_pretrained(str(out), save_jinja_files=False)


def build_model(preset: str, seed: int = 0, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """A randomly initialised model of a preset (deterministic for a given seed)."""
    cfg = preset_config(preset)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    return model.eval()


def init_model_dir(preset: str, out: str | os.PathLike, seed: int = 0,
                   dtype: torch.dtype = torch.float32) -> Path:
    """Write a preset as a standard Hugging Face directory (atomically)."""
    model = build_model(preset, seed=seed, dtype=dtype)
    tokenizer = build_tokenizer()
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        save_tokenizer(tokenizer, tmp)
    return Path(out)


def read_config(model_dir: str | os.PathLike) -> dict:
    d = Path(model_dir)
    if not d.is_dir():
        raise LoragenError(f"model directory {d} does not exist")
    cfg_path = d / "config.json"
    if not cfg_path.is_file():
        raise LoragenError(f"{d} is not a Hugging Face model directory: {cfg_path} is missing")
    cfg = read_json_object(cfg_path)
    mt = cfg.get("model_type")
    if mt not in SUPPORTED_MODEL_TYPES:
        raise LoragenError(
            f"unsupported model_type '{mt}' in {cfg_path}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    return cfg


def load_model(model_dir: str | os.PathLike, dtype: torch.dtype | None = None) -> PreTrainedModel:
    """Load a local HF directory (llama or gemma); never touches a hub."""
    read_config(model_dir)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(model_dir), dtype=dtype if dtype is not None else "auto", local_files_only=True
        )
    except OSError as e:
        raise LoragenError(f"cannot load model from {model_dir}: {str(e).splitlines()[0]}") from None
    return model.eval()


def load_tokenizer(model_dir: str | os.PathLike):
    """The directory's tokenizer. A directory without a chat template (made before the template
    was recorded) gets :data:`CHAT_TEMPLATE`, the layout every preset model is trained with."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    except (OSError, ValueError) as e:
        raise LoragenError(f"cannot load tokenizer from {model_dir}: {str(e).splitlines()[0]}") from None
    if not tok.chat_template:
        tok.chat_template = CHAT_TEMPLATE
    return tok


def target_module_names(model: PreTrainedModel, targets=DEFAULT_TARGET_MODULES) -> list[str]:
    """Fully qualified Linear module names (e.g. ``model.layers.0.mlp.up_proj``) for LoRA targets."""
    bad = [t for t in targets if t not in KNOWN_TARGET_MODULES]
    if bad:
        raise LoragenError(f"unknown target module(s) {bad}; known: {', '.join(KNOWN_TARGET_MODULES)}")
    names = [
        n for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and n.split(".")[-1] in targets and ".layers." in f".{n}"
    ]
    return names


def parse_targets(spec: str | None) -> tuple[str, ...]:
    if not spec:
        return DEFAULT_TARGET_MODULES
    return tuple(t.strip() for t in spec.split(",") if t.strip())


def config_hash(config: PretrainedConfig | dict) -> str:
    """sha256 of the architecture-defining config fields (stable across save/load)."""
    d = config if isinstance(config, dict) else config.to_dict()
    keys = ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
            "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_act",
            "hidden_activation", "rms_norm_eps", "rope_theta", "tie_word_embeddings")
    stable = {k: d.get(k) for k in keys}
    return hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()


def parse_dtype(name: str) -> torch.dtype:
    table = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16,
             "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    if name not in table:
        raise LoragenError(f"unknown dtype '{name}'; use one of fp32, fp16, bf16")
    return table[name]
