"""artifact.json's model and prompt fields, shared by every backend, and the tokenizer files copied
into an artifact (the prompt contract: docs/exporters.md, "Prompt contract")."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..fsutil import read_json_object
from ..models import config_hash, load_tokenizer, read_config
from ..training import chat_messages


def copy_tokenizer(model_dir: Path, out: Path) -> list[str]:
    """Copy the tokenizer and config files into an artifact. The chat template (the prompt
    contract) is written into the copied tokenizer_config.json, where Hugging Face,
    onnxruntime-genai and other stock runtimes read it, whatever file the source kept it in."""
    names = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
             "generation_config.json", "config.json"]
    copied = []
    for n in names:
        if (Path(model_dir) / n).is_file():
            shutil.copy2(Path(model_dir) / n, out / n)
            copied.append(n)
    cfg_path = out / "tokenizer_config.json"
    if cfg_path.is_file():
        cfg, template = read_json_object(cfg_path), chat_template(model_dir)
        if cfg.get("chat_template") != template:
            cfg["chat_template"] = template
            cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
    return copied


def chat_template(model_dir) -> str:
    """The model directory's chat template (see :func:`loragen_mobile.models.load_tokenizer`)."""
    return _default_template(load_tokenizer(model_dir))


def _default_template(tok) -> str:
    t = tok.chat_template
    return t["default"] if isinstance(t, dict) else t


def prompt_meta(model_dir) -> dict:
    """artifact.json's prompt fields: the chat template, its rendering for runtimes without a
    Jinja engine, and the ids that end a generation.

    ``prompt_format`` is the template rendered by transformers with the placeholders ``{system}``
    and ``{input}``; a leading BOS text is removed and ``bos: true`` says the runtime adds the BOS
    id itself (as onnxruntime-genai with add_special_tokens, ExecuTorch's runner and the demo
    apps' tokenizers do).
    """
    tok = load_tokenizer(model_dir)

    def render(system):
        text = tok.apply_chat_template(chat_messages(system, "{input}"), tokenize=False,
                                       add_generation_prompt=True)
        bos = bool(tok.bos_token) and text.startswith(tok.bos_token)
        return (text[len(tok.bos_token):] if bos else text), bos

    with_system, bos = render("{system}")
    without_system, _ = render(None)
    from transformers import GenerationConfig

    eos = {tok.eos_token_id, read_config(model_dir).get("eos_token_id")}
    try:
        eos.add(GenerationConfig.from_pretrained(str(model_dir), local_files_only=True).eos_token_id)
    except OSError:
        pass
    eos = {i for e in eos for i in (e if isinstance(e, list) else [e]) if i is not None}
    return {"chat_template": _default_template(tok),
            "prompt_format": {"with_system": with_system, "without_system": without_system, "bos": bos},
            "eos_token_ids": sorted(int(i) for i in eos)}


def common_meta(model, model_dir: Path, backend: str, precision: str, max_context: int, targets,
                adapter=None) -> dict:
    cfg = model.config
    extra = {"unmerged_adapter": Path(adapter).name} if adapter is not None else {}
    return {**extra,
        "backend": backend,
        "model_id": getattr(cfg, "name_or_path", "") or Path(model_dir).name,
        "model_dir_name": Path(model_dir).resolve().name,
        "model_type": cfg.model_type,
        "config_hash": config_hash(cfg),
        "precision": precision,
        "quantization": None,
        "max_context": int(max_context),
        "vocab_size": cfg.vocab_size,
        "target_modules": list(targets),
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        **prompt_meta(model_dir),
    }
