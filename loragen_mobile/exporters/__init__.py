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
* :func:`read_artifact`, :func:`check_swap`, ``Artifact.slots``
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

from ..errors import LoragenError
from ..fsutil import read_json_object

ARTIFACT_FILE = "artifact.json"
ARTIFACT_SCHEMA = "loragen-mobile/artifact/v1"

# backend name -> module under loragen_mobile.exporters defining EXPORTER
_BACKENDS = {"executorch": "executorch", "onnx": "onnx", "coreml": "coreml"}

# Validation thresholds (max abs logits difference vs eager PyTorch fp32), per precision.
THRESHOLDS = {"fp32": 1e-4, "fp16": 5e-2, "int8": 0.25, "int4": 1.0}

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


# --------------------------------------------------------------------------- artifact.json


@dataclass
class Artifact:
    """An exported artifact directory and its parsed ``artifact.json``."""

    path: Path
    meta: dict

    @property
    def backend(self) -> str:
        return self.meta["backend"]

    @property
    def slots(self) -> list[dict]:
        return self.meta["swap_slots"]

    @property
    def slot_map(self) -> dict[str, dict]:
        return {s["name"]: s for s in self.slots}

    def file(self, name: str) -> Path:
        return self.path / name


_REQUIRED = ("schema", "backend", "model_id", "model_type", "config_hash", "precision", "max_context",
             "inputs", "outputs", "files", "fingerprint", "swap_slots")
_SLOT_REQUIRED = ("name", "file", "dtype", "shape", "nbytes", "sha256")


def read_artifact(artifact_dir: str | os.PathLike, backend: str | None = None) -> Artifact:
    """Parse and sanity-check an artifact directory; every problem is a one-line LoragenError."""
    d = Path(artifact_dir)
    if not d.is_dir():
        raise LoragenError(f"artifact directory {d} does not exist")
    f = d / ARTIFACT_FILE
    if not f.is_file():
        raise LoragenError(f"{d} is not an exported artifact: {ARTIFACT_FILE} is missing")
    meta = read_json_object(f)
    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise LoragenError(f"{f} is missing field(s) {', '.join(missing)}")
    if meta["schema"] != ARTIFACT_SCHEMA:
        raise LoragenError(f"{f} has schema '{meta['schema']}', expected '{ARTIFACT_SCHEMA}'")
    if not isinstance(meta["swap_slots"], list) or not all(isinstance(s, dict) for s in meta["swap_slots"]):
        raise LoragenError(f"{f}: swap_slots must be a list of objects")
    for s in meta["swap_slots"]:
        miss = [k for k in _SLOT_REQUIRED if k not in s]
        if miss:
            raise LoragenError(f"{f}: swap slot {s.get('name', '?')} is missing {', '.join(miss)}")
        if s["dtype"] not in TORCH_DTYPES:
            raise LoragenError(f"{f}: swap slot {s['name']} has unknown dtype {s['dtype']}")
    if backend is not None and meta["backend"] != backend:
        raise LoragenError(f"{d} is a '{meta['backend']}' artifact, not '{backend}'")
    for name in meta["files"]:
        if not (d / name).exists():
            raise LoragenError(f"artifact {d} is incomplete: {name} is missing")
    return Artifact(d, meta)


def write_artifact_json(d: Path, meta: dict) -> None:
    meta = {"schema": ARTIFACT_SCHEMA, **meta}
    (d / ARTIFACT_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().contiguous().cpu()
    return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""


def sha256_bytes(*chunks: bytes) -> str:
    h = hashlib.sha256()
    for c in chunks:
        h.update(c)
    return h.hexdigest()


def sha256_file(path: Path, skip: Iterable[tuple[int, int]] = ()) -> str:
    """sha256 of a file's bytes, with the byte ranges ``(offset, length)`` in ``skip`` left out."""
    data = bytearray(Path(path).read_bytes())
    for off, n in sorted(skip, reverse=True):
        del data[off:off + n]
    return hashlib.sha256(data).hexdigest()


def make_slot(name: str, t: torch.Tensor, file: str, **where: Any) -> dict:
    return {"name": name, "file": file, **where, "dtype": dtype_name(t.dtype), "shape": list(t.shape),
            "nbytes": t.numel() * t.element_size(), "sha256": sha256_bytes(tensor_bytes(t))}


def check_swap(artifact: Artifact, swap: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """Check names, shapes and dtypes of a swap against the artifact's slots; returns contiguous CPU tensors."""
    if not swap:
        return {}
    if not isinstance(swap, dict):
        raise LoragenError("swap must map parameter names to tensors")
    slots = artifact.slot_map
    out = {}
    for name, t in swap.items():
        if name not in slots:
            known = ", ".join(list(slots)[:3])
            raise LoragenError(f"'{name}' is not a swap slot of {artifact.path} (slots look like {known}, ...)")
        if not isinstance(t, torch.Tensor):
            raise LoragenError(f"swap value for {name} is a {type(t).__name__}, not a tensor")
        s = slots[name]
        if list(t.shape) != list(s["shape"]):
            raise LoragenError(f"swap tensor {name} has shape {list(t.shape)}, slot expects {s['shape']}")
        if dtype_name(t.dtype) != s["dtype"]:
            raise LoragenError(f"swap tensor {name} has dtype {dtype_name(t.dtype)}, slot expects {s['dtype']}")
        if not torch.isfinite(t).all():
            raise LoragenError(f"swap tensor {name} holds NaN or inf")
        out[name] = t.detach().contiguous().cpu()
    return out


def read_swap_tensors(artifact_dir) -> dict[str, torch.Tensor]:
    """The values currently stored in every swap slot of an artifact, checked against their sha256.

    Works for every backend: ``.ptd`` slots are read by key, other slots at their byte offset.
    """
    art = artifact_dir if isinstance(artifact_dir, Artifact) else read_artifact(artifact_dir)
    ptd: dict[str, dict] = {}
    out = {}
    for s in art.slots:
        path = art.path / s["file"]
        if path.suffix == ".ptd":
            from .executorch import _entries, _read_ptd

            if s["file"] not in ptd:
                ptd[s["file"]] = _entries(_read_ptd(path))
            entry = ptd[s["file"]].get(s["key"])
            data = entry[0][: s["nbytes"]] if entry else b""
        else:
            with open(path, "rb") as f:
                f.seek(int(s["offset"]))
                data = f.read(int(s["nbytes"]))
        if len(data) != s["nbytes"] or sha256_bytes(data) != s["sha256"]:
            raise LoragenError(f"artifact {art.path}: stored bytes of {s['name']} do not match artifact.json")
        out[s["name"]] = torch.frombuffer(bytearray(data), dtype=TORCH_DTYPES[s["dtype"]]).reshape(s["shape"])
    return out


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
    from ..models import load_tokenizer

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
    from ..models import load_tokenizer
    from ..training import chat_messages

    tok = load_tokenizer(model_dir)

    def render(system):
        text = tok.apply_chat_template(chat_messages(system, "{input}"), tokenize=False,
                                       add_generation_prompt=True)
        bos = bool(tok.bos_token) and text.startswith(tok.bos_token)
        return (text[len(tok.bos_token):] if bos else text), bos

    with_system, bos = render("{system}")
    without_system, _ = render(None)
    from transformers import GenerationConfig

    from ..models import read_config

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
    from ..models import config_hash

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


# --------------------------------------------------------------------------- runner


class Runner:
    """Host runtime for an artifact: decoding with the KV cache (greedy or sampled, streamed,
    ending at the artifact's EOS ids).

    Subclasses implement ``_forward(ids: list[int], start: int) -> Tensor[rows, vocab]``: the rows the
    graph returns (the last position only by default; every position for an ``all_logits`` export).
    ``prefill`` and ``decode`` both return the last row, float32 ``[vocab]``.
    """

    max_context: int

    def __init__(self, artifact: Artifact):
        self.artifact = artifact
        self.max_context = int(artifact.meta["max_context"])
        self.pos = 0

    def reset(self) -> None:
        self.pos = 0
        self._reset()

    def _reset(self) -> None:  # pragma: no cover - overridden
        pass

    def _forward(self, ids: list[int], start: int) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def _feed(self, ids: list[int]) -> torch.Tensor:
        ids = [int(i) for i in ids]
        if not ids:
            raise LoragenError("cannot run an empty token sequence")
        vocab = int(self.artifact.meta["vocab_size"])
        if min(ids) < 0 or max(ids) >= vocab:
            raise LoragenError(f"token ids must lie in [0, {vocab})")
        if self.pos + len(ids) > self.max_context:
            raise LoragenError(
                f"sequence of {self.pos + len(ids)} tokens exceeds the artifact's max context {self.max_context}"
            )
        logits = self._forward(ids, self.pos)
        self.pos += len(ids)
        return logits[-1]

    def prefill(self, ids: list[int]) -> torch.Tensor:
        """Reset the cache and run the prompt; returns the float32 logits of its last position ``[vocab]``."""
        self.reset()
        return self._feed(ids)

    def decode(self, token: int) -> torch.Tensor:
        """Append one token to the cache; returns float32 logits ``[vocab]``."""
        return self._feed([token])

    @property
    def eos_ids(self) -> frozenset[int]:
        """The token ids that end a generation (artifact.json ``eos_token_ids``)."""
        return artifact_eos_ids(self.artifact.meta)

    def stream(self, ids: list[int], max_new_tokens: int, sampling: "Sampling | None" = None,
               stop_at_eos: bool = True) -> Iterator[int]:
        """Decode with the KV cache, yielding each new token id as soon as it is chosen.

        Greedy (argmax) unless ``sampling`` is given. Stops after an EOS id (which is yielded, as
        Hugging Face's ``generate`` keeps it) or after ``max_new_tokens`` tokens.
        """
        if max_new_tokens < 1:
            raise LoragenError("max_new_tokens must be at least 1", code="usage")
        if len(ids) + max_new_tokens > self.max_context:
            raise LoragenError(
                f"prompt ({len(ids)}) + max_new_tokens ({max_new_tokens}) exceeds max context {self.max_context}"
            )
        pick = sampling.picker() if sampling is not None else _argmax
        eos = self.eos_ids if stop_at_eos else frozenset()
        logits = _last_row(self.prefill(ids))

        def tokens() -> Iterator[int]:
            nonlocal logits
            for i in range(max_new_tokens):
                t = pick(logits)
                yield t
                if t in eos or i + 1 == max_new_tokens:
                    return
                logits = _last_row(self.decode(t))

        return tokens()

    def generate(self, ids: list[int], max_new_tokens: int, sampling: "Sampling | None" = None,
                 stop_at_eos: bool = True) -> list[int]:
        """The new tokens of :meth:`stream` as a list (greedy unless ``sampling`` is given; ends at EOS)."""
        return list(self.stream(ids, max_new_tokens, sampling=sampling, stop_at_eos=stop_at_eos))


def _last_row(logits: torch.Tensor) -> torch.Tensor:
    return logits[-1] if logits.dim() == 2 else logits


def _argmax(logits: torch.Tensor) -> int:
    return int(torch.argmax(logits))


def artifact_eos_ids(meta: dict) -> frozenset[int]:
    ids = meta.get("eos_token_ids", meta.get("eos_token_id"))
    if ids is None:
        return frozenset()
    return frozenset(int(i) for i in (ids if isinstance(ids, list) else [ids]))


@dataclass(frozen=True)
class Sampling:
    """Multinomial sampling settings: temperature, nucleus (top-p) and the seed of the random draws.

    The warpers are transformers' own (``TemperatureLogitsWarper``, ``TopPLogitsWarper``) and the
    draws come from a ``torch.Generator`` seeded with ``seed``, so a run equals Hugging Face's
    ``generate(do_sample=True, temperature=..., top_p=..., top_k=0)`` after ``torch.manual_seed(seed)``.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self):
        import math

        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise LoragenError(f"temperature must be a positive number, got {self.temperature}", code="usage")
        if not (0 < self.top_p <= 1):
            raise LoragenError(f"top-p must lie in (0, 1], got {self.top_p}", code="usage")

    def picker(self):
        """A fresh token chooser (its own random generator) for one generation."""
        from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

        warpers = LogitsProcessorList([TemperatureLogitsWarper(self.temperature)])
        if self.top_p < 1:
            warpers.append(TopPLogitsWarper(self.top_p))
        gen = torch.Generator().manual_seed(int(self.seed))
        none = torch.zeros((1, 0), dtype=torch.long)

        def pick(logits: torch.Tensor) -> int:
            scores = warpers(none, logits.float().reshape(1, -1))
            return int(torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=gen)[0, 0])

        return pick


# --------------------------------------------------------------------------- validation


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""
    value: float | None = None
    threshold: float | None = None


@dataclass
class ValidationReport:
    artifact: str
    backend: str
    precision: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def add(self, name: str, ok: bool, detail: str = "", value=None, threshold=None) -> Check:
        c = Check(name, bool(ok), detail, None if value is None else float(value), threshold)
        self.checks.append(c)
        return c

    def to_dict(self) -> dict:
        return {"artifact": self.artifact, "backend": self.backend, "precision": self.precision,
                "ok": self.ok, "checks": [c.__dict__ for c in self.checks]}

    def to_junit(self) -> str:
        from xml.sax.saxutils import quoteattr

        fails = sum(not c.ok for c in self.checks)
        suite = f"validate-{self.backend}"
        lines = ['<?xml version="1.0" encoding="utf-8"?>',
                 f'<testsuite name={quoteattr(suite)} tests="{len(self.checks)}" failures="{fails}" errors="0">']
        for c in self.checks:
            lines.append(f"  <testcase classname={quoteattr(suite)} name={quoteattr(c.name)}>")
            if not c.ok:
                lines.append(f"    <failure message={quoteattr(c.detail or 'failed')}/>")
            else:
                lines.append(f"    <system-out>{_xml_text(c.detail)}</system-out>")
            lines.append("  </testcase>")
        lines.append("</testsuite>")
        return "\n".join(lines) + "\n"

    def summary(self) -> str:
        rows = [f"{'PASS' if c.ok else 'FAIL'}  {c.name}  {c.detail}" for c in self.checks]
        rows.append(f"{'OK' if self.ok else 'FAILED'}: {sum(c.ok for c in self.checks)}/{len(self.checks)} "
                    f"checks passed ({self.backend}, {self.precision})")
        return "\n".join(rows)


def _xml_text(s: str) -> str:
    from xml.sax.saxutils import escape

    return escape(s)


VALIDATION_PROMPT = [1, 72, 105, 33, 32, 119, 101, 108, 99, 111, 109, 101]  # fixed ids: <s> + 11 byte tokens


def check_identity(report: ValidationReport, art: Artifact, model_dir: Path, model) -> None:
    from ..models import config_hash

    ch = config_hash(model.config)
    report.add("config_hash", ch == art.meta["config_hash"],
               "matches the model" if ch == art.meta["config_hash"] else
               f"artifact was exported from a different architecture ({art.meta['config_hash'][:12]} != {ch[:12]})")


def check_fingerprint(report: ValidationReport, exporter, art: Artifact) -> None:
    fp = exporter.fingerprint(art.path, art.meta)
    report.add("fingerprint", fp == art.meta["fingerprint"],
               "graph and non-swappable weights unchanged" if fp == art.meta["fingerprint"]
               else f"files changed since export ({fp[:12]} != {art.meta['fingerprint'][:12]})")


def check_logits(report: ValidationReport, runner: Runner, model, prompt: list[int], steps: int,
                 threshold: float) -> None:
    """Compare the prefill's last-position logits and ``steps`` decode steps with eager PyTorch (fp32),
    teacher-forced."""
    from .common import Reference

    ref = Reference(model.float())
    ref.reset()
    r_logits = ref.step(prompt)[-1]
    a_logits = runner.prefill(prompt)
    d = float((a_logits - r_logits).abs().max()) if a_logits.shape == r_logits.shape else float("inf")
    report.add("prefill_logits", d <= threshold, f"max abs diff {d:.3g} (<= {threshold:g})", d, threshold)
    same = True
    for i in range(steps):
        tok = int(r_logits.argmax())
        same &= tok == int(a_logits.argmax())
        r_logits = ref.step([tok])[-1]
        a_logits = runner.decode(tok)
        d = float((a_logits - r_logits).abs().max()) if a_logits.shape == r_logits.shape else float("inf")
        report.add(f"decode_step_{i + 1}_logits", d <= threshold, f"max abs diff {d:.3g} (<= {threshold:g})",
                   d, threshold)
    report.add("greedy_tokens", same or threshold > 1e-4,
               "greedy argmax equals eager at every step" if same else "greedy argmax differs from eager")


# --------------------------------------------------------------------------- interface + registry


class Exporter:
    """Interface every backend implements (see the module docstring)."""

    name: str = ""
    #: files that are part of the fingerprint or swap data; overridden per backend
    default_max_context = 128

    def export(self, model_dir, out_dir, *, max_context: int = 128, quantize: str | None = None,
               targets=None, dtype: str = "fp32", progress: bool = True, adapter=None) -> Artifact:
        """Export ``model_dir``. ``adapter``: a PEFT adapter kept UNMERGED in the graph (extra
        LoRA matmuls per target module), the conventional LoRA deployment that the speedup
        benchmark compares against; its swap slots are the base weights under the LoRA."""
        raise NotImplementedError

    def open_runner(self, artifact_dir, swap: dict[str, torch.Tensor] | None = None) -> Runner:
        raise NotImplementedError

    @staticmethod
    def _load_for_export(model_dir, dtype: torch.dtype, max_context: int, targets, adapter=None):
        """The export's first step, shared by every backend: (model, max_context, swap names, params)."""
        from ..models import load_model

        model = load_model(model_dir, dtype=dtype)
        max_context = check_max_context(max_context, model)
        swap_names = swap_param_names(model, targets)
        if adapter is not None:
            from peft import PeftModel

            from ..lora import load_peft_adapter

            lora_modules = set(load_peft_adapter(adapter).factors)  # validates the adapter first
            model = PeftModel.from_pretrained(model, str(adapter)).get_base_model().eval()
            swap_names = [n.replace(".weight", ".base_layer.weight") if n[: -len(".weight")] in lora_modules else n
                          for n in swap_names]
        return (model, max_context, swap_names, dict(model.named_parameters(remove_duplicate=False)))

    def _finish_export(self, tmp: Path, meta: dict) -> None:
        """The export's last step, shared by every backend: fingerprint, then artifact.json."""
        meta["fingerprint"] = self.fingerprint(tmp, meta)
        write_artifact_json(tmp, meta)

    def apply_swap(self, artifact_dir, swap: dict[str, torch.Tensor], out_dir) -> Artifact:
        raise NotImplementedError

    def swap_slots(self, artifact: Artifact | str | os.PathLike) -> list[dict]:
        if not isinstance(artifact, Artifact):
            artifact = read_artifact(artifact, self.name)
        return list(artifact.slots)

    def fingerprint(self, artifact_dir: Path, meta: dict) -> str:
        raise NotImplementedError

    def validate(self, artifact_dir, model_dir, *, steps: int = 8) -> ValidationReport:
        from ..models import load_model

        art = read_artifact(artifact_dir, self.name)
        model = load_model(model_dir, dtype=torch.float32)
        report = ValidationReport(str(art.path), self.name, art.meta["precision"])
        check_identity(report, art, Path(model_dir), model)
        check_fingerprint(report, self, art)
        threshold = THRESHOLDS.get(art.meta.get("quantization") or art.meta["precision"], THRESHOLDS["fp32"])
        prompt = VALIDATION_PROMPT[: max(1, min(len(VALIDATION_PROMPT), art.meta["max_context"] - steps - 1))]
        runner = self.open_runner(art.path)
        check_logits(report, runner, model, prompt, steps, threshold)
        return report

    # ---- shared helper for apply_swap implementations
    @staticmethod
    def _copy_artifact(art: Artifact, tmp: Path) -> None:
        for item in art.path.iterdir():
            dst = tmp / item.name
            if item.is_dir():
                shutil.copytree(item, dst)
            else:
                shutil.copy2(item, dst)


def available_backends() -> list[str]:
    return list(_BACKENDS)


def get_exporter(name: str) -> Exporter:
    """The exporter registered under ``name`` ("executorch", "onnx" or "coreml")."""
    if name not in _BACKENDS:
        raise LoragenError(f"unknown backend '{name}'; available: {', '.join(_BACKENDS)}")
    mod = importlib.import_module(f"{__name__}.{_BACKENDS[name]}")
    return mod.EXPORTER


# --------------------------------------------------------------------------- one-call entry points


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
    art = read_artifact(artifact_dir)
    if art.backend not in _BACKENDS:
        raise LoragenError(f"{art.path}: unknown backend '{art.backend}'")
    return get_exporter(art.backend).validate(art.path, model_dir, steps=steps)


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
    art = read_artifact(artifact_dir)
    tok = load_tokenizer(art.path)
    ids = tok(prompt)["input_ids"] if raw else prompt_ids(tok, system, prompt)
    runner = get_exporter(art.backend).open_runner(art.path, swap=swap)
    new: list[int] = []
    for t in runner.stream(ids, max_new_tokens, sampling=sampling):
        new.append(t)
        if on_token is not None:
            on_token(t)
    stop = "eos" if new and new[-1] in runner.eos_ids else "length"
    return {"prompt_ids": ids, "tokens": new, "text": tok.decode(new, skip_special_tokens=True), "stop": stop}


def open_artifact_runner(artifact_dir, swap=None) -> Runner:
    """Open a runner for any artifact, dispatching on its recorded backend."""
    art = read_artifact(artifact_dir)
    if art.backend not in _BACKENDS:
        raise LoragenError(f"{art.path}: unknown backend '{art.backend}'")
    return get_exporter(art.backend).open_runner(art.path, swap=swap)


def export_steps(total: int, desc: str, enabled: bool = True):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", disable=not enabled, leave=False)


def resolve_precision(dtype: str) -> torch.dtype:
    if dtype not in PRECISIONS:
        raise LoragenError(f"unknown precision '{dtype}'; use one of {', '.join(PRECISIONS)}")
    return PRECISIONS[dtype]


def check_max_context(max_context: int, model) -> int:
    mc = int(max_context)
    limit = int(getattr(model.config, "max_position_embeddings", 1 << 20))
    if mc < 8 or mc > limit:
        raise LoragenError(f"max context must lie in [8, {limit}], got {mc}")
    return mc


def swap_param_names(model, targets) -> list[str]:
    from ..models import target_module_names

    names = [f"{m}.weight" for m in target_module_names(model, targets)]
    if not names:
        raise LoragenError(f"no swappable modules match targets {list(targets)}")
    return names


__all__ = ["Artifact", "Exporter", "Runner", "ValidationReport", "Check", "get_exporter", "available_backends",
           "read_artifact", "read_swap_tensors", "check_swap", "open_artifact_runner", "export", "validate_artifact", "generate_text",
           "Sampling", "prompt_meta",
           "load_recipe", "ARTIFACT_SCHEMA", "THRESHOLDS"]
