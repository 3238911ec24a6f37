"""Llama: TinyLlama-1.1B, Llama-3.x (llama3 rope scaling, tied embeddings) and the cloud backbone."""

from transformers import LlamaConfig

from . import BYTE_VOCAB_SIZE, DEFAULT_ROPE, Attention, Family, Preset

LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def _tiny_llama() -> LlamaConfig:
    # TinyLlama-1.1B's structure at toy size: GQA (4 query heads per KV head), SiLU gated FFN,
    # untied embeddings, RMSNorm, RoPE.
    return LlamaConfig(
        vocab_size=BYTE_VOCAB_SIZE, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
        num_attention_heads=8, num_key_value_heads=2, head_dim=16, hidden_act="silu",
        max_position_embeddings=1024, rms_norm_eps=1e-5, rope_theta=10000.0,
        tie_word_embeddings=False, initializer_range=0.02,
    )


def _tiny_cloud() -> LlamaConfig:
    # The cloud-side generator backbone at toy size: Llama architecture, larger than the edge presets.
    return LlamaConfig(
        vocab_size=BYTE_VOCAB_SIZE, hidden_size=192, intermediate_size=512, num_hidden_layers=4,
        num_attention_heads=6, num_key_value_heads=2, head_dim=32, hidden_act="silu",
        max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=10000.0,
        tie_word_embeddings=False, initializer_range=0.02,
    )


def _tiny_llama3() -> LlamaConfig:
    # Llama-3.2-1B's structure at toy size: llama3 rope scaling (original context 256, so the
    # scaled frequencies matter at test lengths), tied embeddings, GQA, head_dim 32 != 128/8.
    rope = {**LLAMA3_ROPE, "factor": 8.0, "original_max_position_embeddings": 256}
    return LlamaConfig(
        vocab_size=BYTE_VOCAB_SIZE, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
        num_attention_heads=8, num_key_value_heads=2, head_dim=32, hidden_act="silu",
        max_position_embeddings=1024, rms_norm_eps=1e-5, rope_parameters=rope,
        tie_word_embeddings=True, initializer_range=0.02,
    )


def _tinyllama_1_1b() -> LlamaConfig:
    # TinyLlama/TinyLlama-1.1B-Chat-v1.0 shapes (random weights).
    return LlamaConfig(
        vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
        num_attention_heads=32, num_key_value_heads=4, head_dim=64, hidden_act="silu",
        max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=10000.0,
        tie_word_embeddings=False, initializer_range=0.02,
    )


def _llama_3_2_1b() -> LlamaConfig:
    # meta-llama/Llama-3.2-1B shapes (random weights).
    return LlamaConfig(
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, head_dim=64, hidden_act="silu",
        max_position_embeddings=131072, rms_norm_eps=1e-5, rope_parameters=dict(LLAMA3_ROPE),
        tie_word_embeddings=True, initializer_range=0.02,
    )


FAMILY = Family(
    model_type="llama",
    config_class="LlamaConfig",
    description="Llama 2/3.x and TinyLlama: GQA, SiLU gated FFN, RoPE (incl. llama3 scaling)",
    activation_field="hidden_act",
    attention=Attention(qkv_bias="attention_bias"),
    identity_fields={"rope_parameters": DEFAULT_ROPE, "attention_bias": False, "mlp_bias": False},
    genai_type="llama",
    presets=(
        Preset("tiny-llama", _tiny_llama, "TinyLlama-1.1B structure at toy size (GQA, SiLU, untied)"),
        Preset("tiny-llama3", _tiny_llama3, "Llama-3.2-1B structure at toy size (llama3 rope scaling, tied)"),
        Preset("tiny-cloud", _tiny_cloud, "cloud-side generator backbone at toy size (Llama)"),
        Preset("tinyllama-1.1b", _tinyllama_1_1b, "TinyLlama-1.1B published shapes, random weights", tiny=False),
        Preset("llama-3.2-1b", _llama_3_2_1b, "Llama-3.2-1B published shapes, random weights", tiny=False),
    ),
)
