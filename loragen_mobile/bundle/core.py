"""Build and verify bundles against an artifact's manifest (backend-independent part).

``artifact`` below is the parsed ``artifact.json`` of an exported model: it names the backend,
the fingerprint and the swap slots (one per swappable tensor: parameter name, backend locator,
dtype, shape). Reading the base values of those tensors and writing swapped ones is the
exporter's job; this module only decides *what* goes into and comes out of a bundle.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from .. import dtypes
from ..errors import LoragenError
from ..lora import LoraAdapter, merged_tensors
from . import format as fmt
from .format import BundleError
from .keys import key_id

def st_dtype(d) -> str:
    """safetensors dtype code for a torch dtype or a dtype name used in artifact.json."""
    return dtypes.lookup(d).st


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


def build(artifact: dict, adapter: LoraAdapter, kind: str, base: dict[str, torch.Tensor] | None = None,
          private_key=None, generator_id: str | None = None, task: str | None = None,
          include_task: bool = False, created: str | None = None, task_sha256: str | None = None) -> bytes:
    """Serialize a bundle for ``artifact``; the same inputs give the same bytes.

    No wall-clock time enters the signed bytes: ``created`` is written only when the caller passes
    one (the golden vectors do). Nothing out of bounds is signed: every tensor is checked against
    the magnitude bounds of docs/bundle-format.md (code ``values``).

    merged: for every swap slot, W + scale * B @ A computed from ``base`` (the artifact's own
    values of the swappable tensors) in the slot's dtype. lora: the factors, cast to the slot's
    dtype, for every module that has a slot. Modules the adapter does not touch keep their base
    value in a merged bundle (the artifact's slots are always swapped as a set).
    """
    if kind not in fmt.KINDS:
        raise BundleError(f"unknown bundle kind '{kind}'; use one of {', '.join(fmt.KINDS)}", code="kind")
    check_lora_params(adapter.r, adapter.alpha, adapter.scale, code="build")
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
                          "sha256": dtypes.tensor_sha256(t)}
    else:
        for m, (a, b) in sorted(adapter.factors.items()):
            slot = slots[f"{m}.weight"]
            dt = dtypes.lookup(slot["dtype"]).torch
            if not dt.is_floating_point:
                raise BundleError(f"lora bundles need a floating-point artifact; slot {m}.weight is {slot['dtype']} (use kind merged)", code="build")
            for which, t in (("lora_A", a), ("lora_B", b)):
                t = t.to(dt).contiguous()
                name = f"{m}.{which}"
                tensors[name] = t
                entries[name] = {"param": f"{m}.weight", "slot": _locator(slot), "dtype": st_dtype(dt),
                                 "shape": list(t.shape), "sha256": dtypes.tensor_sha256(t)}
    manifest = {
        "format": fmt.FORMAT,
        "format_version": fmt.FORMAT_VERSION,
        "kind": kind,
        "base": {"fingerprint": artifact["fingerprint"], "backend": artifact["backend"],
                 "model_id": artifact.get("model_id"), "config_hash": artifact.get("config_hash")},
        "tensors": entries,
        "generator_id": generator_id,
        "task_sha256": hashlib.sha256(task.encode("utf-8")).hexdigest() if task is not None else task_sha256,
    }
    if created is not None:
        manifest["created"] = created
    if kind == "lora":
        manifest["lora"] = {"r": adapter.r, "alpha": adapter.alpha, "scale": adapter.scale}
    if include_task and task is not None:
        manifest["task"] = task
    for name, t in tensors.items():
        why = fmt.value_violation(dtypes.tensor_bytes(t), entries[name]["dtype"])
        if why:
            raise BundleError(f"tensor {name} has {why}; refusing to build the bundle", code="values")
    if private_key is not None:
        manifest["key_id"] = key_id(private_key.public_key())
    return fmt.serialize(tensors, manifest, private_key)


def check_lora_params(r, alpha, scale, code: str = "manifest") -> None:
    """r: an integer 1..MAX_LORA_RANK (never a bool or a float); alpha, scale: finite numbers;
    |scale| <= MAX_LORA_SCALE; scale = alpha / r (relative 1e-9)."""
    a, sc = fmt.finite_number(alpha), fmt.finite_number(scale)
    if (type(r) is not int or not 1 <= r <= fmt.MAX_LORA_RANK or a is None or sc is None
            or abs(sc) > fmt.MAX_LORA_SCALE or abs(sc - a / r) > 1e-9 * max(1.0, abs(sc))):
        raise BundleError(f"lora bundle has no valid 'lora' {{r, alpha, scale = alpha / r}} entry (r an integer "
                          f"1..{fmt.MAX_LORA_RANK}, alpha and scale finite, |scale| <= {fmt.MAX_LORA_SCALE:g})", code=code)


# manifest tensor entry fields and their JSON types
_ENTRY_TYPES = {"param": str, "slot": dict, "dtype": str, "shape": list, "sha256": str}


@dataclass
class VerifiedBundle:
    parsed: fmt.ParsedBundle
    kind: str
    manifest: dict
    signature_verified: bool = False

    @property
    def params(self) -> list[str]:
        return sorted({e["param"] for e in self.manifest["tensors"].values()})


def verify(raw: bytes, artifact: dict, public_key=None, require_signature: bool = True) -> VerifiedBundle:
    """Every check a phone makes before a swap, in the order of docs/bundle-format.md; raises
    BundleError with one line on the first failure."""
    pb = fmt.parse(raw)
    verified = fmt.check_signature(pb, public_key, require_signature)
    m = pb.manifest
    kind = m.get("kind")
    if not isinstance(kind, str) or kind not in fmt.KINDS:
        raise BundleError(f"bundle kind {kind!r} is not one of {', '.join(fmt.KINDS)}", code="kind")
    base = m.get("base") if isinstance(m.get("base"), dict) else {}
    if not fmt.json_equal(base.get("backend"), artifact.get("backend")):
        raise BundleError(f"bundle is for backend {base.get('backend')!r}, the artifact is {artifact.get('backend')!r}", code="backend")
    if not fmt.json_equal(base.get("fingerprint"), artifact.get("fingerprint")):
        raise BundleError(f"bundle is bound to base fingerprint {str(base.get('fingerprint'))[:16]}..., "
                          f"the artifact's is {str(artifact.get('fingerprint'))[:16]}...", code="fingerprint")
    entries = m.get("tensors")
    if not isinstance(entries, dict) or not all(isinstance(e, dict) for e in entries.values()):
        raise BundleError("bundle manifest has no valid 'tensors' object", code="manifest")
    for name, e in sorted(entries.items()):
        for k, t in _ENTRY_TYPES.items():
            if not isinstance(e.get(k), t):
                raise BundleError(f"bundle manifest entry of tensor {name} has no valid '{k}' ({t.__name__ if t is not dict else 'object'})", code="manifest")
    if set(entries) != set(pb.tensors):
        names = set(entries or {}) ^ set(pb.tensors)
        raise BundleError(f"bundle manifest and tensors disagree on {sorted(names)[:1]}", code="manifest")
    slots = slots_by_param(artifact)
    if kind == "merged":
        expected = set(slots)
    else:
        expected = {f"{module_of(p)}.{w}" for p in {e["param"] for e in entries.values()} if p in slots
                    for w in ("lora_A", "lora_B")}
        lora = m.get("lora")
        if not isinstance(lora, dict):
            raise BundleError("lora bundle has no valid 'lora' {r, alpha, scale = alpha / r} entry", code="manifest")
        check_lora_params(lora.get("r"), lora.get("alpha"), lora.get("scale"))
    missing, extra = sorted(expected - set(pb.tensors)), sorted(set(pb.tensors) - expected)
    if missing:
        raise BundleError(f"bundle is missing tensor {missing[0]}", code="missing_tensor")
    if extra:
        raise BundleError(f"bundle has unexpected tensor {extra[0]} (no such swap slot in the artifact)", code="extra_tensor")
    for name, e in sorted(entries.items()):
        te = pb.tensors[name]
        slot = slots.get(e["param"])
        if slot is None:
            raise BundleError(f"tensor {name} names parameter {e['param']!r}, which has no swap slot", code="slot")
        if not fmt.json_equal(e["slot"], _locator(slot)):
            raise BundleError(f"tensor {name} is addressed to slot {e['slot']}, the artifact has {_locator(slot)}", code="slot")
        if e["dtype"] != te.dtype or not fmt.json_equal(e["shape"], list(te.shape)):
            raise BundleError(f"tensor {name}: manifest says {e['dtype']} {e['shape']}, data is {te.dtype} {list(te.shape)}", code="manifest")
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
        data = pb.tensor_bytes(name)
        if hashlib.sha256(data).hexdigest() != e["sha256"]:
            raise BundleError(f"tensor {name} does not match its sha256 in the manifest", code="digest")
        why = fmt.value_violation(data, te.dtype)
        if why:
            raise BundleError(f"tensor {name} has {why}", code="values")
    return VerifiedBundle(pb, kind, m, verified)


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
    adapter = LoraAdapter(factors, r=lora["r"], alpha=float(lora["alpha"]))
    try:
        return merged_tensors({p: base[p] for p in (f"{m}.weight" for m in factors)}, adapter)
    except BundleError:
        raise
    except LoragenError as e:  # a merged weight out of bounds: the bundle does not fit this base
        raise BundleError(str(e), code="merge") from None
