"""On-device exporters: one module per backend behind one small interface, registered by name.

>>> exp = get_exporter("executorch")          # or "onnx", "coreml"
>>> art = exp.export("models/tiny-llama", "out/tl-et", max_context=128)
>>> r = exp.open_runner("out/tl-et", swap={"model.layers.0.mlp.up_proj.weight": w})
>>> r.generate(ids, max_new_tokens=16)
>>> exp.apply_swap("out/tl-et", {"model.layers.0.mlp.up_proj.weight": w}, "out/tl-et-swapped")
>>> exp.validate("out/tl-et", "models/tiny-llama").ok

An *artifact* is a directory with the backend files, the tokenizer files and ``artifact.json``
(schema :data:`ARTIFACT_SCHEMA`, documented in docs/exporters.md). Its ``swap_slots`` list, for
each tensor of the LoRA target modules, the HF parameter name, where the backend keeps it
(``file`` + ``key`` and/or byte ``offset``), ``dtype``, ``shape``, ``nbytes`` and the ``sha256`` of
the bytes as exported. ``fingerprint`` is a sha256 over the graph and every weight that is not
swappable, so two artifacts with the same fingerprint differ at most in their swap slots.

Stable API used by signed weight bundles (keep these signatures):

* ``Exporter.open_runner(artifact_dir, swap: dict[str, Tensor] | None = None) -> Runner``
* ``Exporter.apply_swap(artifact_dir, swap: dict[str, Tensor], out_dir) -> Artifact``
* :func:`read_artifact`, :func:`check_swap`, ``Artifact.slots`` (typed :class:`SwapSlot` objects,
  which also answer ``slot["name"]`` as the artifact.json objects do)

Every method that takes an artifact accepts an :class:`Artifact` (already read) or its directory.

Modules: :mod:`.artifact` (artifact.json, swap slots, digests), :mod:`.pipeline` (the
:class:`Exporter` base: the fixed export pipeline, the one ``apply_swap`` / ``read_swap_tensors``,
the registry), :mod:`.runner` (:class:`Runner`, :class:`Sampling`), :mod:`.validation`,
:mod:`.metadata` (artifact.json's model and prompt fields, tokenizer files), :mod:`.recipes`
(recipes and the one-call entry points), :mod:`.common` (the decoder wrappers), and one module
per backend (:mod:`.executorch`, :mod:`.onnx`, :mod:`.coreml`). Adding a backend:
docs/extending.md.
"""

from __future__ import annotations

# every name the package exposed before the split stays importable from here
# ruff: noqa: F401
from .artifact import (ARTIFACT_FILE, ARTIFACT_SCHEMA, SLOT_DTYPES, Artifact, LazyTensors, SwapSlot, as_artifact, check_swap,
                       dtype_name, read_artifact, sha256_bytes, sha256_file, tensor_bytes, write_artifact_json)
from .metadata import chat_template, common_meta, copy_tokenizer, prompt_meta
from .pipeline import (PRECISIONS, ExportJob, Exporter, available_backends, check_max_context, export_steps,
                       get_exporter, read_swap_tensors, resolve_precision, slot_tensors, swap_param_names)
from .recipes import RECIPE_KEYS, export, generate_text, load_recipe, open_artifact_runner, validate_artifact
from .runner import Runner, Sampling, artifact_eos_ids
from .validation import (THRESHOLDS, VALIDATION_PROMPT, Check, ValidationReport, check_fingerprint,
                         check_identity, check_logits)

__all__ = ["Artifact", "SwapSlot", "Exporter", "ExportJob", "Runner", "ValidationReport", "Check", "get_exporter",
           "available_backends", "read_artifact", "as_artifact", "read_swap_tensors", "slot_tensors", "check_swap",
           "LazyTensors",
           "open_artifact_runner", "export", "validate_artifact", "generate_text", "Sampling", "prompt_meta",
           "load_recipe", "ARTIFACT_SCHEMA", "THRESHOLDS"]
