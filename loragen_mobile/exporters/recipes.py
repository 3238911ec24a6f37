"""One-call entry points: export recipes (YAML) and export / validate / generate / open a runner for
any artifact, dispatching on the backend name or the one recorded in artifact.json."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

from ..config import from_mapping, load_yaml
from ..errors import LoragenError
from ..models import PRESETS, load_tokenizer, preset_config, read_config, resolve_model_dir
from ..training import prompt_ids
from .artifact import Artifact, as_artifact
from .pipeline import _BACKENDS, get_exporter
from .runner import Runner, Sampling
from .validation import ValidationReport


@dataclass
class ExportRecipe:
    """An export recipe (``export/<preset>/<backend>.yaml``); command-line options override it."""

    backend: str
    name: str | None = None
    description: str | None = None
    model: dict[str, str] | None = None    # {preset: NAME}: the preset, hence the family, it is written for
    max_context: int | None = None
    dtype: str | None = None
    quantize: str | None = None
    targets: list[str] | None = None
    adapter_slots: int | None = None  # ExecuTorch, ONNX: rank of the run-time LoRA slots

    @property
    def preset(self) -> str | None:
        return (self.model or {}).get("preset")


RECIPE_KEYS = {f.name for f in fields(ExportRecipe)}


def load_recipe(path: str | os.PathLike) -> ExportRecipe:
    """Read and check an export recipe (one YAML loader and error style: :mod:`loragen_mobile.config`)."""
    what = f"recipe {path}"
    r = from_mapping(ExportRecipe, load_yaml(path), what)
    if r.backend not in _BACKENDS:
        raise LoragenError(f"{what}: unknown backend '{r.backend}'; available: {', '.join(_BACKENDS)}", code="config")
    if r.targets is not None and not r.targets:
        raise LoragenError(f"{what}: targets must be a non-empty list of module names", code="config")
    if r.model is not None and (set(r.model) != {"preset"} or r.preset not in PRESETS):
        raise LoragenError(f"{what}: model must be {{preset: NAME}} with a known preset ({', '.join(PRESETS)})",
                           code="config")
    return r


def export(model_dir, out_dir, *, backend: str | None = None, recipe=None, max_context: int | None = None,
           quantize: str | None = None, targets=None, dtype: str | None = None, progress: bool = True,
           adapter=None, adapter_slots: int | None = None) -> Artifact:
    """Export with a backend name or a recipe file; explicit arguments override the recipe.

    ``model_dir``: a Hugging Face directory or a Hub id in the local cache. A recipe written for a
    preset of another family than the model's is refused. ``adapter``: keep this PEFT adapter
    unmerged in the graph (see :meth:`Exporter.export`)."""
    r = load_recipe(recipe) if recipe else None
    backend = backend or (r.backend if r else None)
    if backend is None:
        raise LoragenError("give a backend (executorch, onnx, coreml) or a recipe")
    if r and backend != r.backend:
        raise LoragenError(f"--backend {backend} contradicts the recipe's backend {r.backend}")
    model_dir = resolve_model_dir(model_dir)
    if r and r.preset:
        want, have = preset_config(r.preset).model_type, read_config(model_dir).get("model_type")
        if want != have:
            raise LoragenError(f"recipe {recipe} is written for {r.preset} ({want}); the model in {model_dir} is "
                               f"'{have}': use a recipe of its family", code="config")
    kw = {"max_context": max_context or (r.max_context if r else None) or 128,
          "quantize": quantize if quantize is not None else (r.quantize if r else None),
          "targets": tuple(targets or (r.targets if r else None) or ()) or None,
          "progress": progress}
    dt = dtype or (r.dtype if r else None)
    if dt:
        kw["dtype"] = dt
    if adapter is not None:
        kw["adapter"] = adapter
    slots = adapter_slots if adapter_slots is not None else (r.adapter_slots if r else None)
    if slots:
        kw["adapter_slots"] = slots
    return get_exporter(backend).export(model_dir, out_dir, **kw)


def validate_artifact(artifact_dir, model_dir, *, steps: int = 8) -> ValidationReport:
    """Validate any artifact against its source model, dispatching on the recorded backend."""
    art = _dispatch(artifact_dir)
    return get_exporter(art.backend).validate(art, model_dir, steps=steps)


def generate_text(artifact_dir, prompt: str, max_new_tokens: int = 32, swap=None, *, system: str | None = None,
                  raw: bool = False, sampling: Sampling | None = None, on_token=None) -> dict:
    """Generate on the host runtime with the artifact's prompt contract.

    The prompt is rendered with the chat template in the artifact's tokenizer_config.json (with
    ``system`` as the optional system message); ``raw=True`` encodes ``prompt`` as it is (BOS
    added by the tokenizer). Greedy unless ``sampling``; ends at an EOS id or after
    ``max_new_tokens``. ``on_token(id)`` is called with each new token as it is chosen.
    Returns the prompt and new token ids, the decoded text (special tokens skipped) and why it
    stopped (``"eos"`` or ``"length"``).
    """
    if raw and system is not None:
        raise LoragenError("a system prompt is part of the chat template; it cannot go with raw text", code="usage")
    art = as_artifact(artifact_dir)
    tok = load_tokenizer(art.path)
    ids = tok(prompt)["input_ids"] if raw else prompt_ids(tok, system, prompt)
    runner = get_exporter(art.backend).open_runner(art, swap=swap)
    new: list[int] = []
    for t in runner.stream(ids, max_new_tokens, sampling=sampling):
        new.append(t)
        if on_token is not None:
            on_token(t)
    stop = "eos" if new and new[-1] in runner.eos_ids else "length"
    return {"prompt_ids": ids, "tokens": new, "text": tok.decode(new, skip_special_tokens=True), "stop": stop}


def open_artifact_runner(artifact_dir, swap=None) -> Runner:
    """Open a runner for any artifact, dispatching on its recorded backend."""
    art = _dispatch(artifact_dir)
    return get_exporter(art.backend).open_runner(art, swap=swap)


def _dispatch(artifact) -> Artifact:
    art = as_artifact(artifact)
    if art.backend not in _BACKENDS:
        raise LoragenError(f"{art.path}: unknown backend '{art.backend}'")
    return art
