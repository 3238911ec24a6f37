"""Runtime-swappable weight bundles: build, sign, verify, and swap into an exported artifact.

Library API (used by the CLI and the specialization service):

* :func:`build_bundle` (artifact + adapter -> signed bundle bytes), :func:`write_bundle`
* :func:`verify_bundle` (bytes or path + artifact + public key -> :class:`VerifiedBundle`)
* :func:`bundle_swap` (verified bundle -> parameter name -> replacement tensor)
* :func:`bundle_adapter` (verified lora bundle -> its LoRA, for an artifact's run-time adapter slots)
* :func:`apply_bundle` (writes a new, specialized artifact directory)
* :func:`open_runner_with_bundle` (host runner with the swap applied at load; nothing written)

The file format is in :mod:`loragen_mobile.bundle.format` and docs/bundle-format.md.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from ..errors import LoragenError
from ..exporters import as_artifact, get_exporter, slot_tensors
from ..fsutil import atomic_file, refuse_existing
from ..generator import generate_adapter, load_generator
from ..lazy import LazyTensors
from ..lora import LoraAdapter, load_peft_adapter
from ..models import config_hash, read_config, read_weights
from . import format as fmt
from .core import VerifiedBundle, build_into, bundle_adapter, swap_tensors, verify
from .format import BundleError
from .keys import load_private_key

__all__ = ["BundleError", "VerifiedBundle", "apply_bundle", "build_bundle", "build_bundle_file", "bundle_adapter",
           "bundle_swap",
           "full_precision_weights",
           "open_runner_with_bundle", "read_base_tensors", "verify_bundle", "write_bundle", "write_onnx_adapter"]


def read_base_tensors(artifact) -> LazyTensors:
    """The artifact's own values of its swappable tensors, each read and checked against the
    recorded sha256 when it is accessed (one tensor in memory at a time)."""
    return slot_tensors(artifact)


def full_precision_weights(artifact, base_model, params=None) -> LazyTensors | None:
    """The full-precision weights of a quantized artifact's swappable parameters (those in
    ``params``, default all), read from ``base_model``, the model it was exported from (checked by
    config hash). None when the artifact is not quantized or no base model is given."""
    art = as_artifact(artifact)
    if base_model is None or not art.quantized:
        return None
    if config_hash(read_config(base_model)) != art.meta.get("config_hash"):
        raise BundleError(f"base model {base_model} is not the model {art.path} was exported from "
                          "(config hashes differ)", code="build")
    names = [p for p in art.quantized_params() if params is None or p in params]
    return read_weights(base_model, names, lazy=True)


def build_bundle(artifact_dir, adapter: LoraAdapter, kind: str = "merged", private_key=None,
                 generator_id: str | None = None, task: str | None = None, include_task: bool = False,
                 created: str | None = None, base_model=None) -> bytes:
    """Bundle bytes for ``adapter`` against the exported artifact in ``artifact_dir``.

    ``base_model``: the full-precision HF model the artifact was exported from (a merged bundle
    for a quantized artifact quantizes W + scale * B @ A from its weights; without it, from the
    artifact's dequantized weights, the documented fallback). :func:`build_bundle_file` writes the
    same bytes to a file without holding them."""
    buf = io.BytesIO()
    _build(buf, artifact_dir, adapter, kind, private_key, generator_id, task, include_task, created, base_model)
    return buf.getvalue()


def _build(f, artifact_dir, adapter: LoraAdapter, kind: str, private_key, generator_id, task, include_task,
           created, base_model) -> int:
    art = as_artifact(artifact_dir)
    if adapter.model_type and adapter.model_type != art.meta.get("model_type"):
        raise BundleError(f"adapter was made for model_type '{adapter.model_type}', "
                          f"the artifact is '{art.meta.get('model_type')}'", code="build")
    base = read_base_tensors(art) if kind == "merged" else None
    full = full_precision_weights(art, base_model, [f"{m}.weight" for m in adapter.factors]) if kind == "merged" else None
    return build_into(f, art.meta, adapter, kind, base=base, private_key=private_key, generator_id=generator_id,
                      task=task, include_task=include_task, created=created,
                      task_sha256=adapter.metadata.get("loragen.task_sha256"), full_precision=full)


def build_bundle_file(artifact, out, kind: str = "merged", *, adapter_dir=None, generator_dir=None,
                      task: str | None = None, sign_key=None, include_task: bool = False,
                      base_model=None) -> tuple[Path, int]:
    """Build a bundle from a PEFT adapter directory, or from a generator and a task description, and
    write it to ``out`` (atomically, one tensor at a time); ``sign_key``: a private key PEM path
    (``None``: unsigned). Every input is checked before anything is written. Returns the path and
    the size in bytes."""
    refuse_existing(out)
    if (adapter_dir is None) == (generator_dir is None):
        raise LoragenError("give either an adapter directory or a generator", code="usage")
    key = load_private_key(sign_key) if sign_key else None
    if adapter_dir is not None:
        adapter = load_peft_adapter(adapter_dir)
    else:
        if not task:
            raise LoragenError("--generator needs --task \"<task description>\"", code="usage")
        adapter = generate_adapter(load_generator(generator_dir), task)
    with atomic_file(out) as tmp, open(tmp, "w+b") as f:
        size = _build(f, artifact, adapter, kind, key, adapter.metadata.get("loragen.generator_id"), task,
                      include_task, None, base_model)
    return Path(out), size


def write_bundle(data: bytes, out: str | os.PathLike, overwrite: bool = False) -> Path:
    with atomic_file(out, overwrite=overwrite) as tmp:
        tmp.write_bytes(data)
    return Path(out)


def verify_bundle(bundle: bytes | str | os.PathLike, artifact_dir, public_key=None,
                  require_signature: bool = True) -> VerifiedBundle:
    """Every check of :func:`~loragen_mobile.bundle.core.verify`; a bundle given by path is read one
    tensor at a time (its bytes are never all in memory)."""
    parsed = fmt.parse(bytes(bundle)) if isinstance(bundle, (bytes, bytearray)) else fmt.parse_file(bundle)
    return verify(parsed, as_artifact(artifact_dir).meta, public_key, require_signature)


def bundle_swap(vb: VerifiedBundle, artifact_dir, mapped: bool = False) -> LazyTensors:
    """Parameter name -> replacement tensor; lora bundles are merged here with the artifact's base
    values. ``mapped``: a merged bundle's tensors are views of its verified file, and a lora
    bundle's base values views of the artifact's files, none read again or hashed (see
    :func:`~loragen_mobile.bundle.core.swap_tensors`): for a swap into a runner that has loaded
    the artifact."""
    base = slot_tensors(artifact_dir, mapped=mapped) if vb.kind == "lora" else None
    return swap_tensors(vb, base, mapped=mapped)


def apply_bundle(bundle, artifact_dir, out, public_key=None, require_signature: bool = True):
    """Verify, then write a new specialized artifact directory (the source is never modified).
    artifact.json is read once; the :class:`~loragen_mobile.exporters.Artifact` goes to each step."""
    refuse_existing(out)
    art = as_artifact(artifact_dir)
    vb = verify_bundle(bundle, art, public_key, require_signature)
    return get_exporter(art.backend).apply_swap(art, bundle_swap(vb, art), out)


def write_onnx_adapter(bundle, artifact_dir, out, public_key=None, require_signature: bool = True) -> Path:
    """Verify a bundle, then write its swap as an onnxruntime adapter file (``.onnx_adapter``,
    ``onnxruntime.AdapterFormat``) for an ONNX artifact whose swap slots are graph inputs: the
    tensors keyed by the slots' input names. A lora bundle for an artifact with run-time adapter
    slots is its factors in those slots (``A``, scale * ``B`` per module: a file of the adapter's
    size); otherwise a lora bundle is merged on the host into full weights. onnxruntime-genai swaps
    the file into a loaded model with ``og.Adapters.load`` + ``Generator.set_active_adapter``;
    onnxruntime with ``RunOptions.add_active_adapter``. Written atomically to ``out``."""
    import onnxruntime as ort

    from ..exporters import check_swap
    from ..exporters.onnx import adapter_ort_values, slot_ort_values
    from ..exporters.pipeline import adapter_slot_inputs

    refuse_existing(out)
    art = as_artifact(artifact_dir)
    if art.backend != "onnx" or not art.meta.get("swap_inputs"):
        raise BundleError(f"{art.path} is not an ONNX artifact whose swap slots are graph inputs (an unquantized "
                          "ONNX export of this version has them)", code="backend")
    vb = verify_bundle(bundle, art, public_key, require_signature)
    adapter = ort.AdapterFormat()
    adapter.set_adapter_version(1)
    adapter.set_model_version(1)
    # the OrtValues (and the arrays under them) must outlive export_adapter: set_parameters keeps
    # only the native values, which do not own the memory
    slots = art.meta.get("adapter_slots")
    if vb.kind == "lora" and slots:
        values = adapter_ort_values(art, adapter_slot_inputs(slots, bundle_adapter(vb)))
    else:
        values = slot_ort_values(art, check_swap(art, bundle_swap(vb, art, mapped=True)))
    adapter.set_parameters(values)
    with atomic_file(out) as tmp:
        adapter.export_adapter(str(tmp))
    del values
    return Path(out)


def open_runner_with_bundle(bundle, artifact_dir, public_key=None, require_signature: bool = True):
    """A host runner for the artifact with the bundle swapped in (nothing written): a lora bundle goes
    to the artifact's run-time adapter slots where it has them, else the swap is made at load."""
    art = as_artifact(artifact_dir)
    vb = verify_bundle(bundle, art, public_key, require_signature)
    exp = get_exporter(art.backend)
    if vb.kind == "lora" and art.meta.get("adapter_slots"):
        runner = exp.open_runner(art)
        runner.set_adapter(bundle_adapter(vb))
        return runner
    return exp.open_runner(art, swap=bundle_swap(vb, art))
