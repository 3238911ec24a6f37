"""Gemma 3 (text): five sliding-window layers per global layer, each kind with its own rotary
table, q/k norm, ``query_pre_attn_scalar`` attention scale, pre- and post-FFN norms."""

from dataclasses import replace

from transformers import Gemma3TextConfig

from . import BYTE_VOCAB_SIZE, Preset
from .gemma2 import FAMILY as GEMMA2

ROPE = {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        "full_attention": {"rope_type": "default", "rope_theta": 1000000.0}}


def _tiny_gemma3() -> Gemma3TextConfig:
    # Gemma-3-1B's structure at toy size: 6 layers (5 sliding + 1 global), sliding window 16 (shorter
    # than the test prompts), MQA, q/k norm, local and global rotary tables.
    return Gemma3TextConfig(
        vocab_size=BYTE_VOCAB_SIZE, hidden_size=128, intermediate_size=256, num_hidden_layers=6,
        num_attention_heads=4, num_key_value_heads=1, head_dim=32, query_pre_attn_scalar=32,
        hidden_activation="gelu_pytorch_tanh", max_position_embeddings=1024, rms_norm_eps=1e-6,
        sliding_window=16, rope_parameters={k: dict(v) for k, v in ROPE.items()},
        tie_word_embeddings=True, initializer_range=0.02,
    )


def _gemma_3_1b() -> Gemma3TextConfig:
    # google/gemma-3-1b-pt shapes (random weights).
    return Gemma3TextConfig(
        vocab_size=262144, hidden_size=1152, intermediate_size=6912, num_hidden_layers=26,
        num_attention_heads=4, num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256,
        hidden_activation="gelu_pytorch_tanh", max_position_embeddings=32768, rms_norm_eps=1e-6,
        sliding_window=512, rope_parameters={k: dict(v) for k, v in ROPE.items()},
        tie_word_embeddings=True, initializer_range=0.02,
    )


# Gemma 3 is Gemma 2's family (sandwich norms, query_pre_attn_scalar, sliding windows, final
# soft-capping, the same identity fields) plus q/k norm and one rotary table per layer type, and
# without attention soft-capping: transformers' Gemma3Attention keeps attn_logit_softcapping but never
# passes it to the attention function, so the eager model (the reference) does not apply it.
FAMILY = replace(
    GEMMA2,
    model_type="gemma3_text",
    config_class="Gemma3TextConfig",
    description="Gemma 3 text: 5:1 sliding/global layers, per-kind rotary tables, q/k norm",
    attention=replace(GEMMA2.attention, qk_norm=True, logit_softcap=False, per_layer_rope=True),
    genai_type="gemma3_text",
    presets=(
        Preset("tiny-gemma3", _tiny_gemma3, "Gemma-3-1B structure at toy size (5:1 sliding window 16, q/k norm)"),
        Preset("gemma-3-1b", _gemma_3_1b, "Gemma-3-1B published shapes, random weights", tiny=False),
    ),
)
