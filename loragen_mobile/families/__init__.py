"""Model families as data: one module per family declares what the rest of the code needs.

A :class:`Family` names the Hugging Face ``model_type`` it covers and states, as plain data, the
LoRA target modules, the activation, the attention features the export wrappers must reproduce
(q/k/v bias, q/k norm, sliding-window layers, logit soft-capping, the attention scale, per-layer
rotary tables, the Gemma-2 "sandwich" norms), the config fields that identify a base model, the
onnxruntime-genai model type and its presets. Exporters, the generator (edge targets), merge,
bundles and validation read it through :func:`get_family` / :func:`family_of`.

Adding a family is one module here (a ``FAMILY = Family(...)`` with a tiny preset for tests) and
its name in :data:`_MODULES`; docs/extending.md walks through it.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import LoragenError

# family module name -> HF model_type (module names are Python identifiers).
_MODULES = ("llama", "gemma", "gemma2", "gemma3_text", "qwen2", "qwen3")

#: Every projection a LoRA can target, in HF naming.
ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
FFN_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")

#: The fields of the first config hash (before families were data). They are always hashed, so
#: hashes recorded in existing artifacts, bundles and generators stay valid.
BASE_IDENTITY_FIELDS = ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                        "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_act",
                        "hidden_activation", "rms_norm_eps", "rope_theta", "tie_word_embeddings")

DEFAULT_ROPE = {"rope_theta": 10000.0, "rope_type": "default"}

#: Activations the export wrappers implement (SiLU; GeLU with the tanh approximation).
ACTIVATIONS = ("silu", "gelu_pytorch_tanh", "gelu_tanh")

#: identity_fields default for fields a family always hashes (families added after the first hash).
ALWAYS = "<always hashed>"

# Byte-level tokenizer size shared by every tiny preset (see loragen_mobile.models.build_tokenizer).
BYTE_VOCAB_SIZE = 4 + 256


@dataclass(frozen=True)
class Attention:
    """Attention features of a family, as the export wrappers reproduce them.

    ``scale``: ``"head_dim"`` (``head_dim ** -0.5``) or ``"query_pre_attn_scalar"``
    (``config.query_pre_attn_scalar ** -0.5``). The numbers come from the loaded model's own
    modules (``self_attn.scaling``, ``self_attn.sliding_window``); these flags say which code paths a
    family needs, and the wrappers refuse a model whose modules disagree.
    """

    qkv_bias: str | bool = False          # True, False, or the config field that switches it
    qk_norm: bool = False                 # RMSNorm over head_dim on q and k before RoPE (Qwen3, Gemma-3)
    sliding_window: bool = False          # layers whose layer_types entry is "sliding_attention"
    logit_softcap: bool = False           # tanh soft-capping of attention scores (Gemma-2)
    scale: str = "head_dim"
    per_layer_rope: bool = False          # one rotary table per layer type (Gemma-3)


@dataclass(frozen=True)
class Preset:
    name: str
    make_config: Callable[[], Any]
    description: str
    tiny: bool = True


@dataclass(frozen=True)
class Family:
    model_type: str
    config_class: str                      # transformers config class (documentation + checks)
    description: str
    activation_field: str                  # "hidden_act" or "hidden_activation"
    activations: tuple[str, ...] = ACTIVATIONS
    #: values of the activation field that transformers reads as another activation (Gemma 1's
    #: official config.json says "gelu" and means the tanh approximation)
    legacy_activations: dict[str, str] = field(default_factory=dict)
    attention: Attention = Attention()
    sandwich_norm: bool = False            # extra post-attention / pre+post-FFN norms (Gemma-2/3)
    final_logit_softcap: bool = False      # tanh soft-capping of the output logits
    embedding_scale: bool = False          # sqrt(hidden) scaling (inside HF's scaled embedding module)
    target_modules: tuple[str, ...] = ATTENTION_PROJECTIONS + FFN_PROJECTIONS
    default_targets: tuple[str, ...] = FFN_PROJECTIONS
    #: config fields (beyond BASE_IDENTITY_FIELDS) that identify a base model, with the value at
    #: which a field is left out of the hash (so older hashes of a family stay valid).
    identity_fields: dict[str, Any] = field(default_factory=dict)
    genai_type: str = ""                   # onnxruntime-genai genai_config.json model.type
    presets: tuple[Preset, ...] = ()

    def activation(self, config) -> str:
        d = _as_dict(config)
        act = d.get(self.activation_field) or d.get("hidden_act") or d.get("hidden_activation")
        return self.legacy_activations.get(act, act)

    def check_config(self, config) -> None:
        """Refuse a config this family's wrappers cannot reproduce (one line, code ``model``)."""
        act = self.activation(config)
        if act not in self.activations:
            raise LoragenError(f"{self.model_type}: activation '{act}' is not supported; "
                               f"supported: {', '.join(self.activations)}", code="model")

    def identity(self, config) -> dict:
        d = _as_dict(config)
        out = {k: d.get(k) for k in BASE_IDENTITY_FIELDS}
        for k, default in self.identity_fields.items():
            if k in d and d[k] != default:
                out[k] = d[k]
        return out


def _as_dict(config) -> dict:
    return config if isinstance(config, dict) else config.to_dict()


_LOADED: dict[str, Family] = {}


def families() -> dict[str, Family]:
    """Every registered family by HF ``model_type``."""
    if not _LOADED:
        for m in _MODULES:
            fam = importlib.import_module(f"{__name__}.{m}").FAMILY
            _LOADED[fam.model_type] = fam
    return _LOADED


def supported_model_types() -> tuple[str, ...]:
    return tuple(families())


def get_family(model_type: str | None) -> Family:
    fams = families()
    if model_type not in fams:
        raise LoragenError(f"unsupported model_type '{model_type}'; supported: {', '.join(fams)}", code="model")
    return fams[model_type]


def family_of(config) -> Family:
    """The family of a config object or config dict."""
    return get_family(_as_dict(config).get("model_type"))


def presets() -> dict[str, Preset]:
    return {p.name: p for fam in families().values() for p in fam.presets}


def config_hash(config) -> str:
    """sha256 of the fields that identify a base model (:meth:`Family.identity`)."""
    ident = family_of(config).identity(config)
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()
