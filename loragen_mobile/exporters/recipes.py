"""One-call entry points: export recipes (YAML) and export / validate / generate / open a runner for
any artifact, dispatching on the backend name or the one recorded in artifact.json."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import LoragenError
from .artifact import Artifact, as_artifact
from .pipeline import _BACKENDS, get_exporter
from .runner import Runner, Sampling
from .validation import ValidationReport


RECIPE_KEYS = {"name", "description", "model", "backend", "max_context", "dtype", "quantize", "targets"}


def load_recipe(path: str | os.PathLike) -> dict:
    """Read an export recipe (YAML): backend, max_context, dtype, quantize, targets (+ name, model)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise LoragenError(f"recipe {p} does not exist")
    try:
        r = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise LoragenError(f"recipe {p} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(r, dict):
        raise LoragenError(f"recipe {p} must be a mapping")
    unknown = set(r) - RECIPE_KEYS
    if unknown:
        raise LoragenError(f"recipe {p} has unknown key(s) {', '.join(sorted(unknown))}; "
                           f"allowed: {', '.join(sorted(RECIPE_KEYS))}")
    if "backend" not in r:
        raise LoragenError(f"recipe {p} must name a backend ({', '.join(_BACKENDS)})")
    if r["backend"] not in _BACKENDS:
        raise LoragenError(f"recipe {p}: unknown backend '{r['backend']}'; available: {', '.join(_BACKENDS)}")
    if "targets" in r and (not isinstance(r["targets"], list) or not r["targets"]):
        raise LoragenError(f"recipe {p}: targets must be a non-empty list of module names")
    return r


def export(model_dir, out_dir, *, backend: str | None = None, recipe=None, max_context: int | None = None,
           quantize: str | None = None, targets=None, dtype: str | None = None, progress: bool = True,
           adapter=None) -> Artifact:
    """Export with a backend name or a recipe file; explicit arguments override the recipe.
    ``adapter``: keep this PEFT adapter unmerged in the graph (see :meth:`Exporter.export`)."""
    r = load_recipe(recipe) if recipe else {}
    backend = backend or r.get("backend")
    if backend is None:
        raise LoragenError("give a backend (executorch, onnx, coreml) or a recipe")
    if r and backend != r["backend"]:
        raise LoragenError(f"--backend {backend} contradicts the recipe's backend {r['backend']}")
    kw = {"max_context": max_context or r.get("max_context") or 128,
          "quantize": quantize if quantize is not None else r.get("quantize"),
          "targets": tuple(targets or r.get("targets") or ()) or None,
          "progress": progress}
    dt = dtype or r.get("dtype")
    if dt:
        kw["dtype"] = dt
    if not Path(model_dir).is_dir():
        raise LoragenError(f"model directory {model_dir} does not exist")
    if adapter is not None:
        kw["adapter"] = adapter
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
    from ..models import load_tokenizer
    from ..training import prompt_ids

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
