"""Qwen 2 / 2.5: q/k/v projections with bias, optional sliding-window layers."""

from transformers import Qwen2Config

from . import ALWAYS, BYTE_VOCAB_SIZE, Attention, Family, Preset


def _tiny_qwen2() -> Qwen2Config:
    # Qwen2.5-0.5B's structure at toy size: q/k/v bias, GQA, tied embeddings, rope theta 1e6.
    return Qwen2Config(
        vocab_size=BYTE_VOCAB_SIZE, hidden_size=128, intermediate_size=352, num_hidden_layers=4,
        num_attention_heads=8, num_key_value_heads=2, hidden_act="silu", max_position_embeddings=1024,
        rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        tie_word_embeddings=True, initializer_range=0.02,
    )


def _qwen2_5_0_5b() -> Qwen2Config:
    # Qwen/Qwen2.5-0.5B shapes (random weights).
    return Qwen2Config(
        vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
        num_attention_heads=14, num_key_value_heads=2, hidden_act="silu", max_position_embeddings=32768,
        rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        tie_word_embeddings=True, initializer_range=0.02,
    )


FAMILY = Family(
    model_type="qwen2",
    config_class="Qwen2Config",
    description="Qwen 2/2.5: q/k/v bias, GQA, optional sliding-window layers",
    activation_field="hidden_act",
    attention=Attention(qkv_bias=True, sliding_window=True),
    identity_fields={k: ALWAYS for k in ("rope_parameters", "use_sliding_window", "sliding_window",
                                         "layer_types")},
    genai_type="qwen2",
    presets=(
        Preset("tiny-qwen2", _tiny_qwen2, "Qwen2.5-0.5B structure at toy size (q/k/v bias, tied)"),
        Preset("qwen2.5-0.5b", _qwen2_5_0_5b, "Qwen2.5-0.5B published shapes, random weights", tiny=False),
    ),
)
