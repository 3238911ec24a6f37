"""Qwen 3: q/k RMSNorm over head_dim, head_dim independent of hidden/heads, optional bias and
sliding-window layers."""

from transformers import Qwen3Config

from . import ALWAYS, BYTE_VOCAB_SIZE, Attention, Family, Preset


def _tiny_qwen3() -> Qwen3Config:
    # Qwen3-0.6B's structure at toy size: q/k norm, head_dim (32) = 2 x hidden/heads, GQA, tied.
    return Qwen3Config(
        vocab_size=BYTE_VOCAB_SIZE, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
        num_attention_heads=8, num_key_value_heads=2, head_dim=32, hidden_act="silu",
        max_position_embeddings=1024, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        tie_word_embeddings=True, initializer_range=0.02,
    )


def _qwen3_0_6b() -> Qwen3Config:
    # Qwen/Qwen3-0.6B shapes (random weights).
    return Qwen3Config(
        vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
        num_attention_heads=16, num_key_value_heads=8, head_dim=128, hidden_act="silu",
        max_position_embeddings=40960, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        tie_word_embeddings=True, initializer_range=0.02,
    )


FAMILY = Family(
    model_type="qwen3",
    config_class="Qwen3Config",
    description="Qwen 3: q/k norm, GQA, optional bias and sliding-window layers",
    activation_field="hidden_act",
    attention=Attention(qkv_bias="attention_bias", qk_norm=True, sliding_window=True),
    identity_fields={k: ALWAYS for k in ("rope_parameters", "attention_bias", "use_sliding_window",
                                         "sliding_window", "layer_types")},
    genai_type="qwen3",
    presets=(
        Preset("tiny-qwen3", _tiny_qwen3, "Qwen3-0.6B structure at toy size (q/k norm, head_dim 32, tied)"),
        Preset("qwen3-0.6b", _qwen3_0_6b, "Qwen3-0.6B published shapes, random weights", tiny=False),
    ),
)
