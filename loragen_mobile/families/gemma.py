"""Gemma (1): Gemma-2B."""

from transformers import GemmaConfig

from . import BYTE_VOCAB_SIZE, DEFAULT_ROPE, Attention, Family, Preset


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


def _gemma_2b() -> GemmaConfig:
    # google/gemma-2b shapes (random weights).
    return GemmaConfig(
        vocab_size=256000, hidden_size=2048, intermediate_size=16384, num_hidden_layers=18,
        num_attention_heads=8, num_key_value_heads=1, head_dim=256,
        hidden_activation="gelu_pytorch_tanh", max_position_embeddings=8192, rms_norm_eps=1e-6,
        rope_theta=10000.0, tie_word_embeddings=True, initializer_range=0.02,
    )


FAMILY = Family(
    model_type="gemma",
    config_class="GemmaConfig",
    description="Gemma 1: MQA, GeLU-tanh gated FFN, (1 + w) RMSNorm, scaled embeddings, tied",
    # transformers 5's GemmaConfig reads hidden_act (a hidden_activation key is kept but unused) and
    # maps the official releases' "gelu" to the tanh approximation
    activation_field="hidden_act",
    legacy_activations={"gelu": "gelu_pytorch_tanh"},
    attention=Attention(qkv_bias="attention_bias"),
    embedding_scale=True,
    identity_fields={"rope_parameters": DEFAULT_ROPE, "attention_bias": False},
    genai_type="gemma",
    presets=(
        Preset("tiny-gemma", _tiny_gemma, "Gemma-2B structure at toy size (MQA, head_dim 48, GeLU-tanh, tied)"),
        Preset("gemma-2b", _gemma_2b, "Gemma-2B published shapes, random weights", tiny=False),
    ),
)
