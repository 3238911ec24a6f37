"""Gemma 2: alternating sliding-window / global layers, attention and final logit soft-capping,
``query_pre_attn_scalar`` attention scale, pre- and post-FFN norms."""

from transformers import Gemma2Config

from . import ALWAYS, BYTE_VOCAB_SIZE, Attention, Family, Preset


def _tiny_gemma2() -> Gemma2Config:
    # Gemma-2-2B's structure at toy size. The sliding window (16) is shorter than the test prompts
    # and query_pre_attn_scalar (48) differs from head_dim (32), so both paths are exercised.
    return Gemma2Config(
        vocab_size=BYTE_VOCAB_SIZE, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, query_pre_attn_scalar=48,
        hidden_activation="gelu_pytorch_tanh", max_position_embeddings=1024, rms_norm_eps=1e-6,
        sliding_window=16, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
        tie_word_embeddings=True, initializer_range=0.02,
    )


FAMILY = Family(
    model_type="gemma2",
    config_class="Gemma2Config",
    description="Gemma 2: sliding/global layers, logit soft-capping, sandwich norms",
    activation_field="hidden_activation",
    attention=Attention(qkv_bias="attention_bias", sliding_window=True, logit_softcap=True,
                        scale="query_pre_attn_scalar"),
    sandwich_norm=True,
    final_logit_softcap=True,
    embedding_scale=True,
    identity_fields={k: ALWAYS for k in ("rope_parameters", "attention_bias", "query_pre_attn_scalar",
                                         "sliding_window", "layer_types", "attn_logit_softcapping",
                                         "final_logit_softcapping")},
    genai_type="gemma2",
    presets=(
        Preset("tiny-gemma2", _tiny_gemma2, "Gemma-2 structure at toy size (sliding window 16, soft-capping)"),
    ),
)
