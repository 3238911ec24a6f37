"""Edge and cloud models: built-in presets and loading of local Hugging Face directories.

The supported families and their presets are data, one module each in
:mod:`loragen_mobile.families`. No weights can be downloaded, so every preset is built from
transformers' own config classes (``LlamaConfig``, ``GemmaConfig``, ``Qwen3Config``, ...) and saved as a
standard, self-contained Hugging Face directory (config, safetensors weights, tokenizer) that
plain ``AutoModelForCausalLM.from_pretrained(dir)`` loads.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from . import dtypes, families
from .errors import LoragenError
from .families import BYTE_VOCAB_SIZE, Preset
from .fsutil import atomic_dir, read_json_object

SUPPORTED_MODEL_TYPES = families.supported_model_types()

# The paper puts LoRA on the FFN of every edge layer; attention projections are allowed too.
DEFAULT_TARGET_MODULES = families.FFN_PROJECTIONS
KNOWN_TARGET_MODULES = families.ATTENTION_PROJECTIONS + families.FFN_PROJECTIONS

# Byte-level tokenizer: 4 special tokens, then the 256 byte symbols (BYTE_VOCAB_SIZE in all).
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")

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


#: Every family's presets by name (tiny ones for tests, published shapes with random weights).
PRESETS: dict[str, Preset] = families.presets()


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
                   dtype: torch.dtype = torch.float32, min_positions: int = 0) -> Path:
    """Write a preset as a standard Hugging Face directory (atomically); ``min_positions`` raises
    the config's ``max_position_embeddings`` (the longest KV cache an export may ask for)."""
    model = build_model(preset, seed=seed, dtype=dtype)
    if model.config.max_position_embeddings < min_positions:
        model.config.max_position_embeddings = min_positions
    tokenizer = build_tokenizer()
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        save_tokenizer(tokenizer, tmp)
    return Path(out)


_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def resolve_model_dir(model: str | os.PathLike) -> Path:
    """A model given as a local directory or as a Hugging Face id (``org/name``).

    An id is looked up in the local Hugging Face cache only (``HF_HUB_CACHE`` / ``HF_HOME``, the
    snapshot that ``refs/main`` names); nothing is downloaded. A path that exists is always taken as
    a path, so ``./org/name`` reaches a local directory of that name.
    """
    d = Path(model)
    if d.exists() or not _HUB_ID.match(str(model)):
        if not d.is_dir():
            raise LoragenError(f"model directory {d} does not exist", code="not-found")
        return d
    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import HF_HUB_CACHE
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(str(model), local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, ValueError):
        raise LoragenError(
            f"model '{model}' is neither a directory nor in the local Hugging Face cache ({HF_HUB_CACHE}); "
            f"download it first with: hf download {model}", code="not-found") from None


def read_config(model_dir: str | os.PathLike) -> dict:
    d = resolve_model_dir(model_dir)
    cfg_path = d / "config.json"
    if not cfg_path.is_file():
        raise LoragenError(f"{d} is not a Hugging Face model directory: {cfg_path} is missing")
    cfg = read_json_object(cfg_path)
    mt = cfg.get("model_type")
    if mt not in SUPPORTED_MODEL_TYPES:
        raise LoragenError(
            f"unsupported model_type '{mt}' in {cfg_path}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}",
            code="model")
    families.get_family(mt).check_config(cfg)
    return cfg


def load_model(model_dir: str | os.PathLike, dtype: torch.dtype | None = None) -> PreTrainedModel:
    """Load a local HF directory or a Hugging Face id from the local cache (any supported family);
    never downloads."""
    from safetensors import SafetensorError

    model_dir = resolve_model_dir(model_dir)
    read_config(model_dir)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(model_dir), dtype=dtype if dtype is not None else "auto", local_files_only=True
        )
    except (OSError, SafetensorError) as e:
        raise _unreadable(model_dir, e) from None
    return model.eval()


def _unreadable(model_dir, e: Exception) -> LoragenError:
    """The one error for a model directory whose weight files are missing or corrupt."""
    return LoragenError(f"cannot load model from {model_dir}: {str(e).splitlines()[0]}")


def read_weights(model_dir: str | os.PathLike, names, lazy: bool = False):
    """The named weights of a HF directory (or cached Hub id) as fp32, read tensor by tensor from its
    safetensors files (sharded or not) without loading the model. ``lazy``: a
    :class:`~loragen_mobile.lazy.LazyTensors` that reads each weight when it is accessed (every name
    is checked now)."""
    from safetensors import safe_open

    from .lazy import LazyTensors

    d = resolve_model_dir(model_dir)
    read_config(d)
    index = d / "model.safetensors.index.json"
    where = read_json_object(index).get("weight_map", {}) if index.is_file() else {}
    single = d / "model.safetensors"
    by_file: dict[str, list[str]] = {}
    for n in names:
        f = where.get(n) or (single.name if single.is_file() else None)
        if f is None:
            raise LoragenError(f"{d} has no safetensors weights for {n}", code="not-found")
        by_file.setdefault(f, []).append(n)
    file_of = {}
    for f, group in by_file.items():
        with safe_open(str(d / f), framework="pt") as st:
            have = set(st.keys())
        for n in group:
            if n not in have:
                raise LoragenError(f"{d / f} has no tensor {n}", code="not-found")
            file_of[n] = f

    def read(n: str) -> torch.Tensor:
        with safe_open(str(d / file_of[n]), framework="pt") as st:
            return st.get_tensor(n).to(torch.float32)

    weights = LazyTensors(list(file_of), read)
    return weights if lazy else dict(weights)


def stored_float_dtype(model_dir: str | os.PathLike) -> torch.dtype:
    """The one floating-point dtype of a HF directory's safetensors weights when it is 16-bit (fp16 or
    bf16: exact in fp32), else fp32. Reads the files' headers only."""
    from safetensors import SafetensorError, safe_open

    d = resolve_model_dir(model_dir)
    found = set()
    for f in sorted(d.glob("*.safetensors")):
        try:
            with safe_open(str(f), framework="pt") as st:
                found |= {st.get_slice(k).get_dtype() for k in st.keys()}
        except (OSError, SafetensorError) as e:
            raise _unreadable(d, e) from None
    floats = found & {"F64", "F32", "F16", "BF16"}
    return dtypes.lookup(floats.pop()).torch if floats in ({"F16"}, {"BF16"}) else torch.float32


def load_tokenizer(model_dir: str | os.PathLike):
    """The directory's tokenizer. A directory without a chat template (made before the template
    was recorded) gets :data:`CHAT_TEMPLATE`, the layout every preset model is trained with."""
    from transformers import AutoTokenizer

    model_dir = resolve_model_dir(model_dir)
    try:
        tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    except (OSError, ValueError) as e:
        raise LoragenError(f"cannot load tokenizer from {model_dir}: {str(e).splitlines()[0]}") from None
    if not tok.chat_template:
        tok.chat_template = CHAT_TEMPLATE
    return tok


def target_module_names(model: PreTrainedModel, targets=None) -> list[str]:
    """Fully qualified Linear module names (e.g. ``model.layers.0.mlp.up_proj``) for LoRA targets.

    ``targets`` (short names) default to the model family's ``default_targets`` and must be among its
    ``target_modules`` (:mod:`loragen_mobile.families`)."""
    mt = getattr(getattr(model, "config", None), "model_type", None)
    fam = families.families().get(mt)
    known = fam.target_modules if fam else KNOWN_TARGET_MODULES
    if targets is None:
        targets = fam.default_targets if fam else DEFAULT_TARGET_MODULES
    bad = [t for t in targets if t not in known]
    if bad:
        raise LoragenError(f"unknown target module(s) {bad}; known: {', '.join(known)}")
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
    """sha256 of the architecture-defining config fields (stable across save/load; see
    :meth:`loragen_mobile.families.Family.identity`)."""
    return families.config_hash(config)


def parse_dtype(name: str) -> torch.dtype:
    """fp32, fp16 or bf16 (see :mod:`loragen_mobile.dtypes`)."""
    return dtypes.parse_precision(name)
