"""Build and verify bundles against an artifact's manifest (backend-independent part).

``artifact`` below is the parsed ``artifact.json`` of an exported model: it names the backend,
the fingerprint and the swap slots (one per swappable tensor: parameter name, backend locator,
dtype, shape). Reading the base values of those tensors and writing swapped ones is the
exporter's job; this module only decides *what* goes into and comes out of a bundle.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from dataclasses import dataclass

import torch

from ..lora import LoraAdapter, merged_tensors
from . import format as fmt
from .format import BundleError

_TORCH_TO_ST = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int8: "I8",
                torch.uint8: "U8", torch.int32: "I32", torch.int64: "I64"}
_ST_TO_TORCH = {v: k for k, v in _TORCH_TO_ST.items()}
_NAMES = {"float32": "F32", "fp32": "F32", "float16": "F16", "fp16": "F16", "bfloat16": "BF16", "bf16": "BF16",
          "int8": "I8", "uint8": "U8", "int32": "I32", "int64": "I64"}


def st_dtype(d) -> str:
    """safetensors dtype code for a torch dtype or a dtype name used in artifact.json."""
    if isinstance(d, torch.dtype):
        return _TORCH_TO_ST[d]
    s = str(d).replace("torch.", "")
    return _NAMES.get(s.lower(), s.upper())


def slots_by_param(artifact: dict) -> dict[str, dict]:
    slots = artifact.get("swap_slots")
    if isinstance(slots, dict):
        slots = [{"name": k, **v} for k, v in slots.items()]
    if not slots:
        raise BundleError("artifact has no swap slots; re-export it with loragen export", code="slot")
    return {s["name"]: s for s in slots}


# slot fields that describe the tensor rather than where the backend keeps it
_DESCRIPTIVE = ("name", "dtype", "shape", "nbytes", "sha256")


def _locator(slot: dict) -> dict:
    """Where the backend keeps a tensor: file plus data key and/or byte offset."""
    return {k: v for k, v in slot.items() if k not in _DESCRIPTIVE}


def module_of(param: str) -> str:
    return param[: -len(".weight")] if param.endswith(".weight") else param


def tensor_sha256(t: torch.Tensor) -> str:
    t = t.contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return hashlib.sha256(t.numpy().tobytes()).hexdigest()


def build(artifact: dict, adapter: LoraAdapter, kind: str, base: dict[str, torch.Tensor] | None = None,
          private_key=None, generator_id: str | None = None, task: str | None = None,
          include_task: bool = False, created: str | None = None, task_sha256: str | None = None) -> bytes:
    """Serialize a bundle for ``artifact``.

    merged: for every swap slot, W + scale * B @ A computed from ``base`` (the artifact's own
    values of the swappable tensors) in the slot's dtype. lora: the factors, cast to the slot's
    dtype, for every module that has a slot. Modules the adapter does not touch keep their base
    value in a merged bundle (the artifact's slots are always swapped as a set).
    """
    if kind not in fmt.KINDS:
        raise BundleError(f"unknown bundle kind '{kind}'; use one of {', '.join(fmt.KINDS)}", code="kind")
    slots = slots_by_param(artifact)
    extra = [m for m in adapter.factors if f"{m}.weight" not in slots]
    if extra:
        raise BundleError(f"adapter module {extra[0]} has no swap slot in the artifact "
                          f"(artifact targets: {sorted({p.split('.')[-2] for p in slots})})", code="slot")
    tensors: dict[str, torch.Tensor] = {}
    entries: dict[str, dict] = {}
    if kind == "merged":
        if base is None:
            raise BundleError("a merged bundle needs the artifact's base values of the swappable tensors", code="build")
        missing = [p for p in slots if p not in base]
        if missing:
            raise BundleError(f"base values missing for swap slot {missing[0]}", code="build")
        touched = merged_tensors({p: base[p] for p in slots}, adapter)
        for p, slot in slots.items():
            t = touched.get(p, base[p])
            want = st_dtype(slot["dtype"])
            if st_dtype(t.dtype) != want or list(t.shape) != list(slot["shape"]):
                raise BundleError(f"tensor {p} is {st_dtype(t.dtype)} {list(t.shape)}, slot wants {want} {slot['shape']}", code="build")
            tensors[p] = t.contiguous()
            entries[p] = {"param": p, "slot": _locator(slot), "dtype": want, "shape": list(t.shape),
                          "sha256": tensor_sha256(t)}
    else:
        for m, (a, b) in sorted(adapter.factors.items()):
            slot = slots[f"{m}.weight"]
            dt = _ST_TO_TORCH[st_dtype(slot["dtype"])]
            if not dt.is_floating_point:
                raise BundleError(f"lora bundles need a floating-point artifact; slot {m}.weight is {slot['dtype']} (use kind merged)", code="build")
            for which, t in (("lora_A", a), ("lora_B", b)):
                t = t.to(dt).contiguous()
                name = f"{m}.{which}"
                tensors[name] = t
                entries[name] = {"param": f"{m}.weight", "slot": _locator(slot), "dtype": st_dtype(dt),
                                 "shape": list(t.shape), "sha256": tensor_sha256(t)}
    manifest = {
        "format": fmt.FORMAT,
        "format_version": fmt.FORMAT_VERSION,
        "kind": kind,
        "base": {"fingerprint": artifact["fingerprint"], "backend": artifact["backend"],
                 "model_id": artifact.get("model_id"), "config_hash": artifact.get("config_hash")},
        "tensors": entries,
        "generator_id": generator_id,
        "task_sha256": hashlib.sha256(task.encode("utf-8")).hexdigest() if task is not None else task_sha256,
        "created": created or _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if kind == "lora":
        manifest["lora"] = {"r": adapter.r, "alpha": adapter.alpha, "scale": adapter.scale}
    if include_task and task is not None:
        manifest["task"] = task
    if private_key is not None:
        from .keys import key_id

        manifest["key_id"] = key_id(private_key.public_key())
    return fmt.serialize(tensors, manifest, private_key)


@dataclass
class VerifiedBundle:
    parsed: fmt.ParsedBundle
    kind: str
    manifest: dict

    @property
    def params(self) -> list[str]:
        return sorted({e["param"] for e in self.manifest["tensors"].values()})


def verify(raw: bytes, artifact: dict, public_key=None, require_signature: bool = True) -> VerifiedBundle:
    """Every check a phone makes before a swap; raises BundleError with one line on the first failure."""
    pb = fmt.parse(raw)
    if public_key is not None:
        fmt.verify_signature(pb, public_key)
    elif require_signature:
        raise BundleError("a public key is required to verify this bundle", code="key_required")
    else:
        fmt.signing_digest(pb)  # the signature field must still be well formed and unique
    m = pb.manifest
    kind = m.get("kind")
    if kind not in fmt.KINDS:
        raise BundleError(f"bundle kind {kind!r} is not one of {', '.join(fmt.KINDS)}", code="kind")
    base = m.get("base") if isinstance(m.get("base"), dict) else {}
    if base.get("backend") != artifact.get("backend"):
        raise BundleError(f"bundle is for backend {base.get('backend')!r}, the artifact is {artifact.get('backend')!r}", code="backend")
    if base.get("fingerprint") != artifact.get("fingerprint"):
        raise BundleError(f"bundle is bound to base fingerprint {str(base.get('fingerprint'))[:16]}..., "
                          f"the artifact's is {str(artifact.get('fingerprint'))[:16]}...", code="fingerprint")
    entries = m.get("tensors")
    if not isinstance(entries, dict) or not all(isinstance(e, dict) for e in entries.values()):
        raise BundleError("bundle manifest has no valid 'tensors' object", code="manifest")
    if set(entries) != set(pb.tensors):
        names = set(entries or {}) ^ set(pb.tensors)
        raise BundleError(f"bundle manifest and tensors disagree on {sorted(names)[:1]}", code="manifest")
    slots = slots_by_param(artifact)
    if kind == "merged":
        expected = set(slots)
    else:
        expected = {f"{module_of(p)}.{w}" for p in {e.get("param") for e in entries.values()} if p in slots
                    for w in ("lora_A", "lora_B")}
        lora = m.get("lora")
        if (not isinstance(lora, dict) or not all(isinstance(lora.get(k), (int, float)) for k in ("r", "alpha", "scale"))
                or lora["r"] <= 0 or abs(lora["scale"] - lora["alpha"] / lora["r"]) > 1e-9 * max(1.0, abs(lora["scale"]))):
            raise BundleError("lora bundle has no valid 'lora' {r, alpha, scale = alpha / r} entry", code="manifest")
    missing, extra = sorted(expected - set(pb.tensors)), sorted(set(pb.tensors) - expected)
    if missing:
        raise BundleError(f"bundle is missing tensor {missing[0]}", code="missing_tensor")
    if extra:
        raise BundleError(f"bundle has unexpected tensor {extra[0]} (no such swap slot in the artifact)", code="extra_tensor")
    for name, e in sorted(entries.items()):
        te = pb.tensors[name]
        slot = slots.get(e.get("param"))
        if slot is None:
            raise BundleError(f"tensor {name} names parameter {e.get('param')!r}, which has no swap slot", code="slot")
        if e.get("slot") != _locator(slot):
            raise BundleError(f"tensor {name} is addressed to slot {e.get('slot')}, the artifact has {_locator(slot)}", code="slot")
        if e.get("dtype") != te.dtype or e.get("shape") != list(te.shape):
            raise BundleError(f"tensor {name}: manifest says {e.get('dtype')} {e.get('shape')}, data is {te.dtype} {list(te.shape)}", code="manifest")
        want_dt = st_dtype(slot["dtype"])
        if te.dtype != want_dt:
            raise BundleError(f"tensor {name} has dtype {te.dtype}, the artifact's slot is {want_dt}", code="dtype")
        out_f, in_f = slot["shape"]
        if kind == "merged":
            ok = list(te.shape) == list(slot["shape"])
        elif name.endswith(".lora_A"):
            ok = len(te.shape) == 2 and te.shape[1] == in_f and te.shape[0] == m["lora"]["r"]
        else:
            ok = len(te.shape) == 2 and te.shape[0] == out_f and te.shape[1] == m["lora"]["r"]
        if not ok:
            raise BundleError(f"tensor {name} has shape {list(te.shape)}, which does not fit slot shape {slot['shape']}", code="shape")
        if hashlib.sha256(pb.tensor_bytes(name)).hexdigest() != e.get("sha256"):
            raise BundleError(f"tensor {name} does not match its sha256 in the manifest", code="digest")
    return VerifiedBundle(pb, kind, m)


def swap_tensors(vb: VerifiedBundle, base: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Parameter name -> replacement tensor. lora kind: merged here on the host (fp32 accumulation,
    output in the slot dtype) from ``base``, the artifact's own values."""
    if vb.kind == "merged":
        return {e["param"]: vb.parsed.tensor(n) for n, e in vb.manifest["tensors"].items()}
    if base is None:
        raise BundleError("a lora bundle needs the artifact's base values to merge on the host", code="build")
    lora = vb.manifest["lora"]
    factors = {}
    for n, e in vb.manifest["tensors"].items():
        if n.endswith(".lora_A"):
            m = module_of(e["param"])
            factors[m] = (vb.parsed.tensor(n), vb.parsed.tensor(f"{m}.lora_B"))
    adapter = LoraAdapter(factors, r=int(lora["r"]), alpha=float(lora["alpha"]))
    new = merged_tensors({p: base[p] for p in (f"{m}.weight" for m in factors)}, adapter)
    return new
