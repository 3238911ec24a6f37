"""The exporter base class: one fixed export pipeline and one swap implementation for every backend.

``Exporter.export`` runs, inside an atomic output directory (renamed into place only on success)::

    load -> wrap -> quantize -> lower -> locate slots -> finish

``load`` (the model, the swap parameter names, an optional unmerged PEFT adapter) and ``finish``
(common + backend metadata, tokenizer copy, fingerprint, artifact.json) are shared; a backend
implements the hooks in between (docs/extending.md):

* :meth:`Exporter.wrap` -> the ``torch.nn.Module`` to export (a wrapper of :mod:`.common`);
* :meth:`Exporter.quantize` -> the wrapper, quantized with ``job.quantize``, one of the backend's
  ``schemes`` (scheme name -> :mod:`loragen_mobile.quant` encoding of the stored weights);
* :meth:`Exporter.lower` -> writes the backend files into the output directory;
* :meth:`Exporter.locate_slots` -> one :class:`SwapSlot` per swappable parameter, checked against
  the stored bytes;
* :meth:`Exporter.backend_meta` -> the backend's artifact.json fields (``files`` among them);
* ``fingerprint_files`` (or :meth:`Exporter.fingerprint`) and :meth:`Exporter.slot_offsets`
  (where a slot's bytes are, checked against the backend's own index of the file);
* :meth:`Exporter.make_runner` -> a :class:`Runner`.

:meth:`Exporter.apply_swap` and :meth:`Exporter.read_swap_tensors` are implemented once, here, on
top of :meth:`read_slot_bytes` / :meth:`write_slot_bytes` (byte ranges at :meth:`slot_offsets`).
"""

from __future__ import annotations

import gc
import importlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Mapping
from typing import Any, Iterable, Iterator

import torch

from .. import dtypes, quant
from ..errors import LoragenError
from ..families import family_of
from ..fsutil import atomic_dir
from ..lazy import mapped_tensor
from ..lora import load_peft_adapter
from ..models import load_model, target_module_names
from .artifact import (Artifact, LazyTensors, SwapSlot, as_artifact, check_swap, read_artifact, read_range,
    sha256_bytes, sha256_file, slot_corrupt, tensor_bytes, write_artifact_json)
from .metadata import common_meta, copy_tokenizer
from .runner import Runner
from .validation import (THRESHOLDS, ValidationReport, check_fingerprint, check_identity, check_logits,
                         validation_prompt)

# backend name -> module under loragen_mobile.exporters defining EXPORTER
_BACKENDS = {"executorch": "executorch", "onnx": "onnx", "coreml": "coreml"}

#: the precisions an artifact can be exported in (names of :mod:`loragen_mobile.dtypes`)
PRECISIONS = ("fp32", "fp16")

#: the run-time adapter slots' buffers of a target module: <module>.lora_slot_A, <module>.lora_slot_B
SLOT_BUFFER = "lora_slot_"

#: the pipeline's steps, in order (also the progress bar's labels)
STEPS = ("load", "wrap", "quantize", "lower", "swap slots", "artifact.json")


@dataclass
class ExportJob:
    """What one export works on, handed from hook to hook."""

    model_dir: Path
    out: Path  # the temporary output directory (renamed to the real one on success)
    model: torch.nn.Module
    precision: str  # "fp32" / "fp16": the stored weights' precision
    max_context: int
    targets: tuple[str, ...]
    swap_names: list[str]  # parameter names of the swap slots, in slot order
    params: dict[str, torch.Tensor]  # every parameter by name (duplicates kept)
    adapter: Any = None
    quantize: str | None = None
    all_logits: bool = False
    state: dict[str, Any] = field(default_factory=dict)  # a backend's own values between hooks
    encoding: quant.Encoding | None = None  # how quantized weights are stored (None: unquantized)
    quantized: list[str] = field(default_factory=list)  # parameter names the quantize hook quantized
    adapter_slots: int = 0  # rank of the run-time LoRA slots on the target modules (0: none)
    progress: bool = True  # progress bars, the export's own and its libraries' where they allow

    @property
    def dtype(self) -> torch.dtype:
        return dtypes.parse_precision(self.precision)

    def expected_parts(self, name: str) -> dict[str, torch.Tensor]:
        """The stored parts of the quantized parameter ``name``, by the encoding's rule, from the
        loaded (full-precision) weights: what locate_slots checks the written bytes against."""
        kept = self.state.get("expected_parts")
        if kept is not None:
            return kept[name]
        return self.encoding.quantize(self.params[name].detach().float())

    def release_weights(self, *modules: torch.nn.Module) -> None:
        """Free the loaded weights (of the model and ``modules``) once the backend holds its own
        copy, so that a full-size export never holds the model twice. What the later steps read is
        kept: the swap weights' expected parts (a quantized export) and every parameter's shape and
        dtype (:attr:`params` become meta tensors)."""
        if self.encoding is None:
            raise ValueError("release_weights: an unquantized export's swap slots read the weights")  # pragma: no cover
        self.state["expected_parts"] = {n: self.expected_parts(n) for n in self.swap_names}
        self.params = {n: torch.empty_like(p, device="meta") for n, p in self.params.items()}
        for m in (self.model, *modules):
            m.to("meta")
        gc.collect()

    def map_weights(self, path: Path) -> None:
        """Move the values of every parameter to a copy-on-write map of the file ``path`` (written
        here tensor by tensor, then unlinked; the map keeps it until the export ends). The values
        then live in the page cache, which the kernel reclaims under memory pressure, instead of
        the process's own memory: a backend that copies the weights while lowering (XNNPACK's
        preprocess) no longer needs room for the loaded model and that copy side by side."""
        placed: dict[int, tuple[int, torch.nn.Parameter]] = {}
        with open(path, "wb") as f:
            for p in self.params.values():
                if id(p) not in placed:  # a tied parameter once
                    placed[id(p)] = (f.tell(), p)
                    f.write(memoryview(p.detach().contiguous().reshape(-1).view(torch.uint8).numpy()))
        for offset, p in placed.values():
            p.data = mapped_tensor(path, offset, p.dtype, p.shape, copy_on_write=True)
        path.unlink()
        gc.collect()


class Exporter:
    """Base of every backend: the fixed export pipeline and the swap, over the backend's hooks."""

    name: str = ""
    default_max_context = 128
    #: precision names this backend accepts, and the one used when none is given
    precisions: tuple[str, ...] = PRECISIONS
    default_precision = "fp32"
    #: dtype the model is loaded in (None: the export precision's)
    load_dtype: torch.dtype | None = None
    #: quantization schemes :meth:`quantize` implements: scheme name -> encoding id of the stored weights
    schemes: dict[str, str] = {}
    #: max |logit difference| of a quantized artifact from the same-scheme quantized eager model
    same_scheme_threshold: float = THRESHOLDS["same_scheme"]
    #: the one precision a quantized export is made in (the backend's scale and activation precision)
    quantized_precision: str = "fp32"
    #: files digested, in order, by :meth:`fingerprint` (swap-slot byte ranges left out)
    fingerprint_files: tuple[str, ...] = ()
    #: whether the backend can export run-time LoRA slots (``adapter_slots``)
    has_adapter_slots = False

    # ------------------------------------------------------------------ the export pipeline

    def export(self, model_dir, out_dir, *, max_context: int = 128, quantize: str | None = None,
               targets=None, dtype: str | None = None, progress: bool = True, adapter=None,
               all_logits: bool = False, adapter_slots: int = 0) -> Artifact:
        """Export ``model_dir`` to the artifact directory ``out_dir``.

        ``adapter``: a PEFT adapter kept UNMERGED in the graph (extra LoRA matmuls per target
        module), the conventional LoRA deployment that the speedup benchmark compares against; its
        swap slots are the base weights under the LoRA. ``all_logits``: the graph returns logits for
        every input position (default: the last one only). ``adapter_slots``: a rank R > 0 gives every
        target module a run-time LoRA of rank <= R that a loaded program replaces in place
        (:meth:`Runner.set_adapter`; backends with ``has_adapter_slots``)."""
        if adapter_slots and not self.has_adapter_slots:
            raise LoragenError(f"{self.name}: run-time adapter slots are an ExecuTorch and ONNX export option",
                               code="usage")
        if adapter_slots < 0 or (adapter_slots and adapter is not None):
            raise LoragenError("adapter slots need a positive rank and no unmerged adapter", code="usage")
        if adapter_slots and quantize is not None:
            raise LoragenError(f"{self.name}: adapter slots are not built for quantized exports yet; export "
                               f"without --quantize", code="usage")
        targets = tuple(targets) if targets else None  # None: the model family's default targets
        encoding = self.encoding_of(quantize)
        precision = self.check_precision(dtype or (self.quantized_precision if encoding else self.default_precision))
        if encoding is not None and precision != self.quantized_precision:
            raise LoragenError(f"{self.name}: quantized exports ({quantize}) are made in {self.quantized_precision} "
                               f"(scales and activations), not {precision}", code="usage")
        with atomic_dir(out_dir) as tmp, export_steps(len(STEPS), f"export {self.name}", progress) as bar:
            def step(i: int) -> None:
                if i:
                    bar.update()
                bar.set_postfix_str(STEPS[i])

            step(0)
            job = self.load(model_dir, tmp, precision, max_context, targets, adapter, quantize, all_logits)
            job.encoding, job.adapter_slots, job.progress = encoding, int(adapter_slots), progress
            if job.adapter_slots:  # zero LoRA buffers on every target module, filled at run time
                job.state["slot_modules"] = [n[: -len(".weight")] for n in job.swap_names]
                add_adapter_slots(job.model, job.state["slot_modules"], job.adapter_slots, job.dtype)
            step(1)
            wrapper = self.wrap(job)
            step(2)
            wrapper = self.quantize(job, wrapper)
            step(3)
            self.lower(job, wrapper)
            step(4)
            slots = self.locate_slots(job)
            step(5)
            self.finish(job, slots)
            bar.update()
        return read_artifact(out_dir, self.name)

    @property
    def quantizations(self) -> tuple[str | None, ...]:
        """None (unquantized) and the backend's scheme names."""
        return (None, *self.schemes)

    def encoding_of(self, scheme: str | None) -> quant.Encoding | None:
        """The storage encoding of ``scheme`` (None for an unquantized export); unknown ones are refused."""
        if scheme is None:
            return None
        if scheme not in self.schemes:
            known = ", ".join(self.schemes) or "none"
            raise LoragenError(f"{self.name}: unknown quantization scheme '{scheme}'; this backend has: {known}",
                               code="usage")
        return quant.get(self.schemes[scheme])

    def check_precision(self, precision: str) -> str:
        if precision not in self.precisions:
            raise LoragenError(f"{self.name}: unknown precision '{precision}'; use one of {', '.join(self.precisions)}")
        return precision

    def load(self, model_dir, out: Path, precision: str, max_context: int, targets, adapter=None,
             quantize: str | None = None, all_logits: bool = False) -> ExportJob:
        """The export's first step: the model, its max context checked, the swap parameter names."""
        model = load_model(model_dir, dtype=self.load_dtype or dtypes.parse_precision(precision))
        max_context = check_max_context(max_context, model)
        targets = tuple(targets or family_of(model.config).default_targets)
        swap_names = swap_param_names(model, targets)
        if adapter is not None:
            from peft import PeftModel

            lora_modules = set(load_peft_adapter(adapter).factors)  # validates the adapter first
            model = PeftModel.from_pretrained(model, str(adapter)).get_base_model().eval()
            swap_names = [n.replace(".weight", ".base_layer.weight") if n[: -len(".weight")] in lora_modules else n
                          for n in swap_names]
        return ExportJob(Path(model_dir), out, model, precision, max_context, targets, swap_names,
                         dict(model.named_parameters(remove_duplicate=False)), adapter, quantize, all_logits)

    def wrap(self, job: ExportJob) -> torch.nn.Module:
        """Hook: the module to export (a wrapper of :mod:`loragen_mobile.exporters.common`)."""
        raise NotImplementedError

    def quantize(self, job: ExportJob, wrapper: torch.nn.Module) -> torch.nn.Module:
        """Hook: the wrapper with ``job.quantize`` applied (``job.encoding`` says how the weights
        are stored; the hook lists what it quantized in ``job.quantized``). Unquantized: as is."""
        if job.quantize is not None:
            raise LoragenError(f"{self.name}: quantization '{job.quantize}' is not implemented", code="usage")
        return wrapper

    def lower(self, job: ExportJob, wrapper: torch.nn.Module) -> None:
        """Hook: convert ``wrapper`` and write the backend files into ``job.out``."""
        raise NotImplementedError

    def locate_slots(self, job: ExportJob) -> list[SwapSlot]:
        """Hook: a :class:`SwapSlot` for each of ``job.swap_names`` (in that order), each checked to
        hold exactly the parameter's bytes in the written files."""
        raise NotImplementedError

    def backend_meta(self, job: ExportJob) -> dict:
        """Hook: the backend's artifact.json fields (``inputs``, ``outputs``, ``files``, ...), in the
        order they are written; ``tokenizer_files`` follows ``files``."""
        raise NotImplementedError

    def finish(self, job: ExportJob, slots: list[SwapSlot]) -> None:
        """The export's last step: metadata, tokenizer files, fingerprint, then artifact.json."""
        meta = common_meta(job.model, job.model_dir, self.name, job.precision, job.max_context, job.targets,
                           job.adapter)
        meta["quantization"] = job.quantize
        if job.encoding is not None:
            shapes = [job.params[n].shape for n in job.quantized]
            meta["weight_encoding"] = {
                **job.encoding.describe(), "params": list(job.quantized),
                # bytes of the quantized weights as stored (codes + scales) and as fp32
                "stored_bytes": sum(job.encoding.nbytes(s) for s in shapes),
                "fp32_bytes": sum(4 * s.numel() for s in shapes)}
        backend = self.backend_meta(job)
        if "files" not in backend:
            raise LoragenError(f"{self.name}: backend metadata names no files")  # pragma: no cover - a bug
        for k, v in backend.items():
            meta[k] = v
            if k == "files":
                meta["tokenizer_files"] = copy_tokenizer(job.model_dir, job.out)
        meta["swap_slots"] = [s.to_dict() for s in slots]
        meta["fingerprint"] = self.fingerprint(job.out, meta)
        write_artifact_json(job.out, meta)

    # ------------------------------------------------------------------ fingerprint

    def fingerprint(self, artifact_dir, meta: dict) -> str:
        """sha256 over ``fingerprint_files`` with every swap slot's byte range left out: two
        artifacts with the same fingerprint differ at most in their swap slots."""
        d = Path(artifact_dir)
        slots = [s if isinstance(s, SwapSlot) else SwapSlot.from_dict(s) for s in meta.get("swap_slots", [])]
        parts = [f"{self.name}\0".encode()]
        for f in self.fingerprint_files:
            skip = [(int(s.offset), int(s.nbytes)) for s in slots if s.file == f]
            parts.append(sha256_file(d / f, skip).encode())
        return sha256_bytes(*parts)

    # ------------------------------------------------------------------ slot bytes

    def slot_offsets(self, root: Path, slots: list[SwapSlot]) -> dict[str, int]:
        """Hook: slot name -> absolute byte offset of its bytes in ``root / slot.file``, checked
        against the backend's own index of that file. The default: the recorded ``offset``, which
        must lie inside the file."""
        sizes: dict[str, int] = {}
        out = {}
        for s in slots:
            if s.file not in sizes:
                sizes[s.file] = (root / s.file).stat().st_size
            if not isinstance(s.offset, int) or s.offset < 0 or s.offset + s.nbytes > sizes[s.file]:
                raise slot_corrupt(root, s, f"lies outside {s.file}")
            out[s.name] = s.offset
        return out

    def iter_slot_bytes(self, root: Path, slots: list[SwapSlot]) -> Iterator[tuple[SwapSlot, bytes]]:
        """Hook: ``(slot, stored bytes)`` for each slot under the artifact directory ``root``, one at a
        time (a caller that hashes or converts each slot holds one slot's bytes, not the model's)."""
        offsets = self.slot_offsets(root, slots)
        for file, group in _by_file(slots):
            with open(root / file, "rb") as f:
                for s in group:
                    f.seek(offsets[s.name])
                    yield s, f.read(s.nbytes)

    def read_slot_bytes(self, root: Path, slots: list[SwapSlot]) -> dict[str, bytes]:
        """The stored bytes of each slot under the artifact directory ``root``."""
        return {s.name: b for s, b in self.iter_slot_bytes(root, slots)}

    def write_slot_bytes(self, root: Path, slots: list[SwapSlot],
                         data: Mapping[str, bytes | torch.Tensor]) -> dict[str, str]:
        """Hook: write ``data[name]`` (bytes, or a tensor whose raw bytes are written; exactly
        ``nbytes``) over each named slot's bytes in place, reading ``data`` one slot at a time;
        returns the sha256 of the bytes written per slot."""
        chosen = [s for s in slots if s.name in data]
        offsets = self.slot_offsets(root, chosen)
        digests = {}
        for file, group in _by_file(chosen):
            with open(root / file, "r+b") as f:
                for s in group:
                    b = data[s.name]
                    b = tensor_bytes(b) if isinstance(b, torch.Tensor) else b
                    if len(b) != s.nbytes:
                        raise slot_corrupt(root, s, f"holds {s.nbytes} bytes, not {len(b)}")
                    f.seek(offsets[s.name])
                    f.write(b)
                    digests[s.name] = sha256_bytes(b)
        return digests

    def verified_slot_bytes(self, root: Path, slots: list[SwapSlot],
                            shown: Path | None = None) -> Iterator[tuple[SwapSlot, bytes]]:
        """:meth:`iter_slot_bytes`, each slot checked against its recorded size and sha256 before it
        is yielded (errors name ``shown``, e.g. the source of a copy, instead of ``root``)."""
        for s, b in self.iter_slot_bytes(root, slots):
            yield s, _as_recorded(shown or root, s, b)

    def slot_tensors(self, artifact: Artifact | str | os.PathLike, mapped: bool = False) -> LazyTensors:
        """The values stored in every swap slot, each read and checked against its sha256 when it is
        accessed (one slot's bytes at a time; nothing is kept). ``mapped``: views of the artifact's
        files instead, neither read nor hashed (the artifact trusted as the runtime that loads it
        trusts it)."""
        art = as_artifact(artifact, self.name)
        offsets = self.slot_offsets(art.path, art.slots)
        by_name = art.slot_map

        def get(name: str) -> torch.Tensor:
            s = by_name[name]
            if mapped:
                return mapped_tensor(art.path / s.file, offsets[name], s.dtype, s.shape)
            return s.tensor(_as_recorded(art.path, s, read_range(art.path / s.file, offsets[name], s.nbytes)))

        return LazyTensors([s.name for s in art.slots], get)

    # ------------------------------------------------------------------ swap (once, for every backend)

    def swap_slots(self, artifact: Artifact | str | os.PathLike) -> list[SwapSlot]:
        return list(as_artifact(artifact, self.name).slots)

    def read_swap_tensors(self, artifact: Artifact | str | os.PathLike) -> dict[str, torch.Tensor]:
        """The values stored in every swap slot, each checked against its sha256."""
        art = as_artifact(artifact, self.name)
        return {s.name: s.tensor(b) for s, b in self.verified_slot_bytes(art.path, art.slots)}

    def apply_swap(self, artifact: Artifact | str | os.PathLike, swap: dict[str, torch.Tensor], out_dir) -> Artifact:
        """A new artifact directory ``out_dir``: the artifact with ``swap``'s tensors written into
        their slots. Read -> check -> copy -> patch -> re-verify every slot's sha256 -> artifact.json,
        all in a temporary directory renamed into place on success (nothing is left on error)."""
        art = as_artifact(artifact, self.name)
        swap = check_swap(art, swap)
        if not swap:
            raise LoragenError("apply_swap needs at least one tensor")
        self.slot_offsets(art.path, art.slots)  # every slot is where artifact.json says, before any copy
        with atomic_dir(out_dir) as tmp:
            copy_tree(art.path, tmp)
            digests = self.write_slot_bytes(tmp, art.slots, swap)
            raw = [dict(d, sha256=digests[d["name"]]) if d["name"] in digests else dict(d)
                   for d in art.meta["swap_slots"]]
            for _ in self.verified_slot_bytes(tmp, [SwapSlot.from_dict(d) for d in raw], shown=art.path):
                pass  # every slot re-read and checked, one at a time
            meta = {k: v for k, v in art.meta.items() if k != "schema"}
            meta["swap_slots"] = raw
            meta["swapped_from"] = art.meta["fingerprint"]
            write_artifact_json(tmp, meta)
        return read_artifact(out_dir, self.name)

    # ------------------------------------------------------------------ run and validate

    def open_runner(self, artifact: Artifact | str | os.PathLike, swap: dict[str, torch.Tensor] | None = None) -> Runner:
        """A host runner for the artifact, ``swap`` applied at load (nothing written)."""
        art = as_artifact(artifact, self.name)
        return self.make_runner(art, check_swap(art, swap))

    def make_runner(self, art: Artifact, swap: dict[str, torch.Tensor]) -> Runner:
        """Hook: the backend's :class:`Runner` for ``art`` with the checked ``swap`` applied at load."""
        raise NotImplementedError

    def validate(self, artifact: Artifact | str | os.PathLike, model_dir, *, steps: int = 8) -> ValidationReport:
        """Identity and fingerprint checks, then the backend's own (:meth:`validate_backend`)."""
        art = as_artifact(artifact, self.name)
        model = load_model(model_dir, dtype=self.validate_dtype(model_dir))
        report = ValidationReport(str(art.path), self.name, art.meta["precision"])
        check_identity(report, art, Path(model_dir), model)
        check_fingerprint(report, self, art)
        self.validate_backend(report, art, model, steps)
        return report

    def validate_dtype(self, model_dir) -> torch.dtype:
        """Hook: the dtype :meth:`validate` loads the model in (fp32: the eager reference)."""
        return torch.float32

    def validate_backend(self, report: ValidationReport, art: Artifact, model, steps: int) -> None:
        """Hook: by default, prefill + ``steps`` decode logits vs eager PyTorch on the host runner. A
        quantized artifact is held to the same-scheme quantized eager model (:meth:`reference_model`,
        a tight threshold), and its distance from fp32 is reported next to it (a looser bound)."""
        prompt = validation_prompt(model.config, art.meta["max_context"], steps)
        scheme = art.meta.get("quantization")
        if not scheme:
            threshold = THRESHOLDS.get(art.meta["precision"], THRESHOLDS["fp32"])
            check_logits(report, self.open_runner(art), model, prompt, steps, threshold)
            return
        bits = quant.get((art.meta.get("weight_encoding") or {}).get("id")).bits
        check_logits(report, self.open_runner(art), model, prompt, steps, THRESHOLDS[f"int{bits}"], prefix="fp32_",
                     report_only=True)
        check_logits(report, self.open_runner(art), self.reference_model(art, model), prompt, steps,
                     self.scheme_threshold(art), exact_greedy=True)

    def scheme_threshold(self, art: Artifact) -> float:
        """Hook: the bound on a quantized artifact's distance from its same-scheme eager model."""
        return self.same_scheme_threshold

    def reference_model(self, art: Artifact, model) -> torch.nn.Module:
        """Hook: the eager model quantized with the artifact's scheme (what the artifact must
        reproduce). The default: every quantized weight replaced by its stored value
        (dequantize(quantize(W)) by the encoding's rule), computed in fp32."""
        return fake_quantize(model, art)


def quantizable_linears(model: torch.nn.Module, enc: quant.Encoding, swap_names, backend: str, *,
                        head: bool = True, tied_head: bool = False) -> list[str]:
    """The weights a quantized export stores with ``enc``: every ``nn.Linear`` weight less a PEFT
    adapter's LoRA factors, weights tied to another parameter (a tied ``lm_head`` is the embedding
    table too, kept unless ``tied_head``: the backend then looks the embedding up in the quantized
    head), the output head unless ``head``, and non-swappable weights the encoding cannot hold
    (their input features not a multiple of its group). A swappable weight that cannot be quantized
    is refused (code ``encoding``), one that is no linear weight too (code ``model``)."""
    counts: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        counts[id(p)] = counts.get(id(p), 0) + 1
    out_emb = model.get_output_embeddings()
    head_id = id(out_emb.weight) if out_emb is not None else None
    swap, out = set(swap_names), []
    for mod_name, m in model.named_modules():
        if not isinstance(m, torch.nn.Linear) or ".lora_" in f".{mod_name}":
            continue
        name = f"{mod_name}.weight"
        is_head = id(m.weight) == head_id
        skip = (counts.get(id(m.weight), 0) > 1 and not (tied_head and head and is_head)) or (not head and is_head)
        if name in swap:
            if skip:
                raise LoragenError(f"{backend}: swappable weight {name} is tied to another parameter or is the "
                                   f"output head; {enc.id} cannot store it", code="encoding")
            enc.check_shape(m.weight.shape)
        elif skip or (enc.group and m.in_features % enc.group):
            continue
        out.append(name)
    missing = swap - set(out)
    if missing:
        raise LoragenError(f"{backend}: swappable weight {sorted(missing)[0]} is not a linear weight; "
                           f"cannot quantize it", code="model")
    return out


#: whether a quantized export of each encoding family stores the output head with the encoding
#: (Core ML keeps it in full precision)
HEAD_QUANTIZED = {"xnnpack": True, "ort": True, "coreml": False}


def stored_weights(model: torch.nn.Module, enc: quant.Encoding, swap_names=(), backend: str = "eval") -> list[str]:
    """The weights a quantized export of ``enc``'s backend stores with ``enc``: :func:`quantizable_linears`
    with that backend's rule for the output head (a tied head included where the head is)."""
    return quantizable_linears(model, enc, swap_names, backend, head=HEAD_QUANTIZED[enc.family], tied_head=True)


#: elements of a weight that :func:`quantize_in_place` quantizes at a time
FAKE_QUANT_CHUNK = 1 << 24


def quantize_in_place(model: torch.nn.Module, enc: quant.Encoding, names) -> torch.nn.Module:
    """``model`` with each weight of ``names`` replaced by the value the backend computes from its
    stored parts, ``enc.stored(W)``. An output head tied to the embedding table: ONNX Runtime looks
    the embedding up in the quantized head, so the shared table is quantized in both its uses;
    ExecuTorch quantizes a copy for the head and keeps the table, so the head is untied first."""
    head = model.get_output_embeddings()
    emb = model.get_input_embeddings()
    head_name = next((f"{n}.weight" for n, m in model.named_modules() if m is head), None) if head is not None else None
    if enc.family != "ort" and head_name in names and emb is not None and head.weight is emb.weight:
        head.weight = torch.nn.Parameter(head.weight.detach().clone(), requires_grad=head.weight.requires_grad)
    params = dict(model.named_parameters(remove_duplicate=False))
    done: set[int] = set()
    with torch.no_grad():
        for name in names:
            w = params[name]
            if id(w) in done:
                continue
            done.add(id(w))
            # rows are quantized independently: a block of rows at a time bounds the temporaries
            # (a 256,000-row embedding table at once would need several times its size)
            rows = max(1, FAKE_QUANT_CHUNK // max(1, w.shape[1]))
            for i in range(0, w.shape[0], rows):
                w[i:i + rows].copy_(enc.stored(w[i:i + rows].detach()))
    return model


def fake_quantize(model: torch.nn.Module, art: Artifact) -> torch.nn.Module:
    """``model`` (in place) with each weight the artifact quantized replaced by its dequantized
    stored value, ``encoding.dequantize(encoding.quantize(W))`` (:func:`quantize_in_place`)."""
    info = art.meta.get("weight_encoding") or {}
    return quantize_in_place(model, quant.get(info.get("id")), info.get("params", []))


def graph_name(param: str) -> str:
    """A parameter's name as torch.export spells it in a graph (``p_<name with _ for .>``, less ``p_``)."""
    return param.replace(".", "_")


def _by_file(slots: Iterable[SwapSlot]) -> list[tuple[str, list[SwapSlot]]]:
    groups: dict[str, list[SwapSlot]] = {}
    for s in slots:
        groups.setdefault(s.file, []).append(s)
    return list(groups.items())


def copy_tree(src: Path, dst: Path) -> None:
    """Copy the contents of the directory ``src`` into the existing directory ``dst``."""
    for item in src.iterdir():
        if item.is_dir():
            shutil.copytree(item, dst / item.name)
        else:
            shutil.copy2(item, dst / item.name)


def _as_recorded(root: Path, s: SwapSlot, b: bytes) -> bytes:
    """``b``, the stored bytes of slot ``s``, when they have the size and sha256 artifact.json records."""
    if len(b) != s.nbytes or sha256_bytes(b) != s.sha256:
        raise slot_corrupt(root, s, "does not hold the bytes artifact.json records")
    return b


def slot_tensors(artifact: Artifact | str | os.PathLike, mapped: bool = False) -> LazyTensors:
    """:meth:`Exporter.slot_tensors` of any artifact (dispatches on the recorded backend)."""
    art = as_artifact(artifact)
    return get_exporter(art.backend).slot_tensors(art, mapped=mapped)


def read_swap_tensors(artifact: Artifact | str | os.PathLike) -> dict[str, torch.Tensor]:
    """The values stored in every swap slot of any artifact, checked against their sha256
    (dispatches on the recorded backend)."""
    art = as_artifact(artifact)
    return get_exporter(art.backend).read_swap_tensors(art)


# --------------------------------------------------------------------------- registry


def available_backends() -> list[str]:
    return list(_BACKENDS)


def get_exporter(name: str) -> Exporter:
    """The exporter registered under ``name`` ("executorch", "onnx" or "coreml")."""
    if name not in _BACKENDS:
        raise LoragenError(f"unknown backend '{name}'; available: {', '.join(_BACKENDS)}")
    mod = importlib.import_module(f"{__package__}.{_BACKENDS[name]}")
    return mod.EXPORTER


# --------------------------------------------------------------------------- export helpers


def export_steps(total: int, desc: str, enabled: bool = True):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", disable=not enabled, leave=False)


def resolve_precision(dtype: str) -> torch.dtype:
    return dtypes.parse_precision(dtype, PRECISIONS)


def check_max_context(max_context: int, model) -> int:
    mc = int(max_context)
    limit = int(getattr(model.config, "max_position_embeddings", 1 << 20))
    if mc < 8 or mc > limit:
        raise LoragenError(f"max context must lie in [8, {limit}], got {mc}")
    return mc


def swap_param_names(model, targets) -> list[str]:
    names = [f"{m}.weight" for m in target_module_names(model, targets)]
    if not names:
        raise LoragenError(f"no swappable modules match targets {list(targets)}")
    return names


def add_adapter_slots(model: torch.nn.Module, modules: list[str], rank: int, dtype: torch.dtype) -> None:
    """Give each linear in ``modules`` zero LoRA buffers ``lora_slot_A [rank, in]`` / ``lora_slot_B
    [out, rank]`` and a forward hook adding ``B (A x)`` (the parameter names stay the HF ones)."""
    for name in modules:
        lin = model.get_submodule(name)
        lin.register_buffer(SLOT_BUFFER + "A", torch.zeros(rank, lin.in_features, dtype=dtype))
        lin.register_buffer(SLOT_BUFFER + "B", torch.zeros(lin.out_features, rank, dtype=dtype))
        lin.register_forward_hook(_add_slot_lora)


def _add_slot_lora(mod, args, out):
    x = args[0]
    return out + torch.nn.functional.linear(torch.nn.functional.linear(x, mod.lora_slot_A), mod.lora_slot_B)


def adapter_slots_meta(job: ExportJob, how: dict, inputs: str) -> dict:
    """artifact.json's ``adapter_slots`` block: how a runtime fills the slots (``how``: a method or
    the input names), their rank, modules and ``[out, in]`` shapes, and ``inputs`` (the values' order
    and meaning)."""
    modules = job.state["slot_modules"]
    return {**how, "rank": job.adapter_slots, "modules": modules,
            "shapes": [list(job.params[m + ".weight"].shape) for m in modules], "inputs": inputs}


def adapter_slot_inputs(slots: dict, adapter) -> list[torch.Tensor]:
    """The run-time adapter slots' values for ``adapter`` (a :class:`~loragen_mobile.lora.LoraAdapter`
    of rank <= the slots' rank, on some or all of the slot modules; ``None``: the base model), in
    slot order (ExecuTorch: ``set_adapter``'s inputs; ONNX: the slot inputs): A and scale * B per slot
    module, fp32, zero-padded to the slot rank, zeros for a module it does not adapt."""
    rank, shapes = slots["rank"], slots["shapes"]  # checked by read_artifact
    factors = dict(adapter.factors) if adapter is not None else {}
    unknown = sorted(set(factors) - set(slots["modules"]))
    if unknown:
        raise LoragenError(f"the adapter adapts {unknown[0]}, which has no adapter slot in this artifact", code="input")
    if adapter is not None and adapter.r > rank:
        raise LoragenError(f"the adapter has rank {adapter.r}; this artifact's slots hold rank {rank} at most",
                           code="input")
    out = []
    for i, m in enumerate(slots["modules"]):
        out_f, in_f = shapes[i]
        a = torch.zeros(rank, in_f)
        b = torch.zeros(out_f, rank)
        if m in factors:
            fa, fb = factors[m]
            if tuple(fa.shape) != (adapter.r, in_f) or tuple(fb.shape) != (out_f, adapter.r):
                raise LoragenError(f"LoRA factors of {m} have shapes A {tuple(fa.shape)}, B {tuple(fb.shape)}; "
                                   f"the slot takes A [r, {in_f}], B [{out_f}, r]", code="input")
            a[: adapter.r] = fa.float()
            b[:, : adapter.r] = fb.float() * adapter.scale
        out += [a, b]
    return out
