"""Build and verify bundles against an artifact's manifest (backend-independent part).

``artifact`` below is the parsed ``artifact.json`` of an exported model: it names the backend,
the fingerprint and the swap slots (one per swappable tensor: parameter name, backend locator,
dtype, shape). Reading the base values of those tensors and writing swapped ones is the
exporter's job; this module only decides *what* goes into and comes out of a bundle.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from .. import dtypes, quant
from ..errors import LoragenError
from ..lazy import LazyTensors, Parts
from ..lora import MAX_ABS_WEIGHT, LoraAdapter, merged_tensors
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


def quantized_groups(slots: dict[str, dict]) -> dict[str, dict[str, dict]]:
    """param -> {part: slot} for the quantized swap slots (schema v2 part slots) of an artifact."""
    out: dict[str, dict[str, dict]] = {}
    for s in slots.values():
        if "encoding" in s:
            out.setdefault(s.get("param"), {})[s.get("part")] = s
    return out


def _encoding(group: dict[str, dict], code: str = "encoding") -> quant.Encoding:
    ids = {s.get("encoding") for s in group.values()}
    if len(ids) != 1 or set(group) != set(quant.PARTS):
        raise BundleError(f"quantized weight {next(iter(group.values())).get('param')} does not have one encoding "
                          f"over parts {'/'.join(quant.PARTS)}", code=code)
    try:
        return quant.get(ids.pop())
    except LoragenError as e:
        raise BundleError(str(e), code="encoding") from None


def weight_shape(enc: quant.Encoding, group: dict[str, dict]) -> list[int]:
    """The [out, in] shape of a quantized weight, from its q part's stored shape."""
    return enc.weight_shape(group["q"]["shape"])


def build(artifact: dict, adapter: LoraAdapter, kind: str, base: Mapping[str, torch.Tensor] | None = None,
          private_key=None, generator_id: str | None = None, task: str | None = None,
          include_task: bool = False, created: str | None = None, task_sha256: str | None = None,
          full_precision: Mapping[str, torch.Tensor] | None = None) -> bytes:
    """Serialize a bundle for ``artifact`` in memory; the same inputs give the same bytes
    (:func:`build_into` writes the same bytes to a file, one tensor at a time)."""
    buf = io.BytesIO()
    build_into(buf, artifact, adapter, kind, base, private_key, generator_id, task, include_task, created,
               task_sha256, full_precision)
    return buf.getvalue()


def build_into(f, artifact: dict, adapter: LoraAdapter, kind: str, base: Mapping[str, torch.Tensor] | None = None,
               private_key=None, generator_id: str | None = None, task: str | None = None,
               include_task: bool = False, created: str | None = None, task_sha256: str | None = None,
               full_precision: Mapping[str, torch.Tensor] | None = None) -> int:
    """Write a bundle for ``artifact`` to the seekable file ``f``; returns its size in bytes.

    No wall-clock time enters the signed bytes: ``created`` is written only when the caller passes
    one (the golden vectors do). Nothing out of bounds is signed: every tensor is checked against
    the magnitude bounds of docs/bundle-format.md (code ``values``).

    merged: for every swap slot, W + scale * B @ A computed from ``base`` (the artifact's own
    values of the swappable tensors) in the slot's dtype. lora: the factors, cast to the slot's
    dtype, for every module that has a slot. Modules the adapter does not touch keep their base
    value in a merged bundle (the artifact's slots are always swapped as a set).

    ``base`` and ``full_precision`` are read one tensor at a time (they may be lazy mappings, e.g.
    :func:`loragen_mobile.exporters.slot_tensors`), and each bundle tensor is computed, checked,
    hashed and written before the next: memory stays at a few tensors whatever the model size.
    """
    if kind not in fmt.KINDS:
        raise BundleError(f"unknown bundle kind '{kind}'; use one of {', '.join(fmt.KINDS)}", code="kind")
    check_lora_params(adapter.r, adapter.alpha, adapter.scale, code="build")
    slots = slots_by_param(artifact)
    groups = quantized_groups(slots)
    if groups:
        plan = _plan_quantized(slots, groups, adapter, kind, base, full_precision)
        version = fmt.FORMAT_VERSION_QUANTIZED
    else:
        plan = _plan(slots, adapter, kind, base)
        version = fmt.FORMAT_VERSION
    return _finish(f, artifact, adapter, kind, plan, version, private_key, generator_id, task, include_task,
                   created, task_sha256)


@dataclass
class _Plan:
    """What a bundle holds before any tensor is computed: name -> (entry, producer)."""

    entries: dict[str, dict]
    produce: dict[str, Callable[[], torch.Tensor]]


def _entry(param: str, locator: dict, dtype: str, shape, **extra) -> dict:
    return {"param": param, "slot": locator, "dtype": dtype, "shape": list(shape), "sha256": _PENDING, **extra}


# the digest a manifest entry carries until its tensor is written (same width as a sha256 hex digest)
_PENDING = "0" * 64


def _plan(slots, adapter: LoraAdapter, kind: str, base) -> _Plan:
    _adapter_modules(adapter, slots)
    plan = _Plan({}, {})
    if kind == "merged":
        _check_base(base, slots)
        for p, slot in slots.items():
            m = module_of(p)
            plan.entries[p] = _entry(p, _locator(slot), st_dtype(slot["dtype"]), slot["shape"])
            if m in adapter.factors:
                plan.produce[p] = lambda p=p, m=m: merged_tensors({p: base[p]}, _one(adapter, m))[p]
            else:
                plan.produce[p] = lambda p=p: base[p]
        return plan
    for m, (a, b) in sorted(adapter.factors.items()):
        slot = slots[f"{m}.weight"]
        dt = dtypes.lookup(slot["dtype"]).torch
        if not dt.is_floating_point:
            raise BundleError(f"lora bundles need a floating-point artifact; slot {m}.weight is {slot['dtype']} (use kind merged)", code="build")
        for which, t in (("lora_A", a), ("lora_B", b)):
            t = t.to(dt).contiguous()
            plan.entries[f"{m}.{which}"] = _entry(f"{m}.weight", _locator(slot), st_dtype(dt), t.shape)
            plan.produce[f"{m}.{which}"] = lambda t=t: t
    return plan


def _adapter_modules(adapter: LoraAdapter, params) -> None:
    extra = [m for m in adapter.factors if f"{m}.weight" not in params]
    if extra:
        raise BundleError(f"adapter module {extra[0]} has no swap slot in the artifact "
                          f"(artifact targets: {sorted({p.split('.')[-2] for p in params})})", code="slot")


def _check_base(base, slots) -> None:
    """A merged bundle starts from the artifact's own stored value of every slot."""
    if base is None:
        raise BundleError("a merged bundle needs the artifact's stored values of its swap slots", code="build")
    missing = [n for n in slots if n not in base]
    if missing:
        raise BundleError(f"base values missing for swap slot {missing[0]}", code="build")


def _plan_quantized(slots, groups, adapter: LoraAdapter, kind: str, base, full_precision) -> _Plan:
    """The tensors and manifest entries of a version-2 bundle (see :func:`build_into`)."""
    _adapter_modules(adapter, groups)
    plan = _Plan({}, {})
    if kind == "merged":
        _check_base(base, slots)
        parts = Parts(lambda p: _merged_parts(p, groups[p], adapter, base, full_precision))
        for p, group in groups.items():
            enc = _encoding(group, code="build")
            for k, slot in group.items():
                plan.entries[slot["name"]] = _entry(slot["name"], _locator(slot), st_dtype(slot["dtype"]),
                                                    slot["shape"], encoding=enc.id)
                plan.produce[slot["name"]] = lambda p=p, k=k: parts.get(p, k)
        return plan
    for m, (a, b) in sorted(adapter.factors.items()):
        p = f"{m}.weight"
        group = groups[p]
        enc = _encoding(group, code="build")
        out_f, in_f = weight_shape(enc, group)
        if list(a.shape) != [adapter.r, in_f] or list(b.shape) != [out_f, adapter.r]:
            raise BundleError(f"LoRA factors of {m} (A {list(a.shape)}, B {list(b.shape)}) do not fit the weight "
                              f"{[out_f, in_f]}", code="build")
        for which, t in (("lora_A", a), ("lora_B", b)):
            t = t.to(torch.float32).contiguous()
            plan.entries[f"{m}.{which}"] = _entry(p, {k: _locator(sl) for k, sl in sorted(group.items())}, "F32",
                                                  t.shape, encoding=enc.id)
            plan.produce[f"{m}.{which}"] = lambda t=t: t
    return plan


def _merged_parts(p: str, group: dict, adapter: LoraAdapter, base, full_precision) -> dict[str, torch.Tensor]:
    """The stored parts of weight ``p`` in a merged version-2 bundle: quantize(W + scale * B @ A)
    when the adapter touches it (W: the full-precision weight, else the dequantized artifact's),
    else the artifact's own parts."""
    enc = _encoding(group, code="build")
    m = module_of(p)
    if m not in adapter.factors:
        return {k: base[s["name"]] for k, s in group.items()}
    if full_precision is not None:
        if p not in full_precision:
            raise BundleError(f"the full-precision base has no tensor {p}", code="build")
        w = full_precision[p].float()
    else:
        w = enc.dequantize({k: base[s["name"]] for k, s in group.items()})
    if list(w.shape) != weight_shape(enc, group):
        raise BundleError(f"full-precision {p} is {list(w.shape)}, the artifact's weight is "
                          f"{weight_shape(enc, group)}", code="build")
    return enc.quantize(merged_tensors({p: w}, _one(adapter, m))[p])


def _one(adapter: LoraAdapter, module: str) -> LoraAdapter:
    return LoraAdapter({module: adapter.factors[module]}, r=adapter.r, alpha=adapter.alpha)


def _finish(f, artifact: dict, adapter: LoraAdapter, kind: str, plan: _Plan, version: int,
            private_key, generator_id, task, include_task, created, task_sha256) -> int:
    """The manifest around the planned tensors; each tensor computed, checked (dtype, shape, value
    bounds), hashed into its manifest entry and written by :func:`fmt.write`, then signed."""
    entries = plan.entries
    manifest = {
        "format": fmt.FORMAT,
        "format_version": version,
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
    if private_key is not None:
        manifest["key_id"] = key_id(private_key.public_key())

    def produce(name: str) -> bytes:
        t, e = plan.produce[name](), entries[name]
        if st_dtype(t.dtype) != e["dtype"] or list(t.shape) != e["shape"]:
            raise BundleError(f"tensor {name} is {st_dtype(t.dtype)} {list(t.shape)}, slot wants {e['dtype']} {e['shape']}",
                              code="build")
        data = dtypes.tensor_bytes(t)
        why = fmt.value_violation(data, e["dtype"])
        if why:
            raise BundleError(f"tensor {name} has {why}; refusing to build the bundle", code="values")
        e["sha256"] = hashlib.sha256(data).hexdigest()
        return data

    layout = {n: (e["dtype"], e["shape"]) for n, e in entries.items()}
    return fmt.write(f, layout, produce, manifest, private_key)


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

    def tensor(self, name: str) -> torch.Tensor:
        """Tensor ``name``, read again (from the file, for a bundle parsed from one) and checked
        against the verified manifest's sha256: a file changed after verification is refused."""
        data = self.parsed.tensor_bytes(name)
        if hashlib.sha256(data).hexdigest() != self.manifest["tensors"][name]["sha256"]:
            raise BundleError(f"tensor {name} changed after the bundle was verified", code="digest")
        e = self.parsed.tensors[name]
        return dtypes.from_bytes(data, e.dtype, e.shape)


def verify(raw: bytes | fmt.ParsedBundle, artifact: dict, public_key=None, require_signature: bool = True) -> VerifiedBundle:
    """Every check a phone makes before a swap, in the order of docs/bundle-format.md; raises
    BundleError with one line on the first failure. ``raw``: the bundle's bytes, or a bundle
    parsed from a file (:func:`fmt.parse_file`), whose tensors are then read one at a time."""
    pb = raw if isinstance(raw, fmt.ParsedBundle) else fmt.parse(raw)
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
    groups = quantized_groups(slots)
    version = m["format_version"]
    want_version = fmt.FORMAT_VERSION_QUANTIZED if groups else fmt.FORMAT_VERSION
    if version != want_version:
        raise BundleError(f"bundle format_version {version} does not fit this artifact (its "
                          f"{'quantized' if groups else 'unquantized'} swap slots take version {want_version})",
                          code="version")
    if kind == "merged":
        expected = set(slots)
    else:
        lora_params = groups if groups else slots
        expected = {f"{module_of(p)}.{w}" for p in {e["param"] for e in entries.values()} if p in lora_params
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
        if groups:
            out_f, in_f = _check_quantized_entry(name, e, te, kind, slots, groups)
        else:
            out_f, in_f = _check_entry(name, e, te, kind, slots)
        if kind == "merged":
            ok = True  # the slot's own shape, checked above
        elif name.endswith(".lora_A"):
            ok = len(te.shape) == 2 and te.shape[1] == in_f and te.shape[0] == m["lora"]["r"]
        else:
            ok = len(te.shape) == 2 and te.shape[0] == out_f and te.shape[1] == m["lora"]["r"]
        if not ok:
            raise BundleError(f"tensor {name} has shape {list(te.shape)}, which does not fit weight shape {[out_f, in_f]}",
                              code="shape")
        data = pb.tensor_bytes(name)
        if hashlib.sha256(data).hexdigest() != e["sha256"]:
            raise BundleError(f"tensor {name} does not match its sha256 in the manifest", code="digest")
        why = fmt.value_violation(data, te.dtype)
        if why:
            raise BundleError(f"tensor {name} has {why}", code="values")
    return VerifiedBundle(pb, kind, m, verified)


def _check_entry(name: str, e: dict, te, kind: str, slots: dict) -> tuple[int, int]:
    """A version-1 entry against its (unquantized) slot; returns the weight's [out, in]."""
    slot = slots.get(e["param"])
    if slot is None:
        raise BundleError(f"tensor {name} names parameter {e['param']!r}, which has no swap slot", code="slot")
    if not fmt.json_equal(e["slot"], _locator(slot)):
        raise BundleError(f"tensor {name} is addressed to slot {e['slot']}, the artifact has {_locator(slot)}", code="slot")
    _check_data_type(name, e, te)
    want_dt = st_dtype(slot["dtype"])
    if te.dtype != want_dt:
        raise BundleError(f"tensor {name} has dtype {te.dtype}, the artifact's slot is {want_dt}", code="dtype")
    if kind == "merged" and list(te.shape) != list(slot["shape"]):
        raise BundleError(f"tensor {name} has shape {list(te.shape)}, the slot's is {slot['shape']}", code="shape")
    out_f, in_f = slot["shape"]
    return out_f, in_f


def _check_quantized_entry(name: str, e: dict, te, kind: str, slots: dict, groups: dict) -> tuple[int, int]:
    """A version-2 entry: its encoding and slot(s) against the artifact's quantized slots."""
    if kind == "merged":
        slot = slots.get(e["param"])
        if slot is None or "encoding" not in slot:
            raise BundleError(f"tensor {name} names {e['param']!r}, which is no quantized swap slot", code="slot")
        group = groups[slot["param"]]
        locator = _locator(slot)
    else:
        group = groups.get(e["param"])
        if group is None:
            raise BundleError(f"tensor {name} names parameter {e['param']!r}, which has no quantized swap slot", code="slot")
        locator = {k: _locator(sl) for k, sl in sorted(group.items())}
    enc = _encoding(group)
    if e.get("encoding") != enc.id:
        raise BundleError(f"tensor {name} is encoded {e.get('encoding')!r}, the artifact stores {enc.id}", code="encoding")
    if not fmt.json_equal(e["slot"], locator):
        raise BundleError(f"tensor {name} is addressed to slot {e['slot']}, the artifact has {locator}", code="slot")
    _check_data_type(name, e, te)
    want_dt = st_dtype(slot["dtype"]) if kind == "merged" else "F32"
    if te.dtype != want_dt:
        raise BundleError(f"tensor {name} has dtype {te.dtype}, the artifact's slot takes {want_dt}", code="dtype")
    if kind == "merged" and list(te.shape) != list(slot["shape"]):
        raise BundleError(f"tensor {name} has shape {list(te.shape)}, the slot's is {slot['shape']}", code="shape")
    out_f, in_f = weight_shape(enc, group)
    return out_f, in_f


def _check_data_type(name: str, e: dict, te) -> None:
    if e["dtype"] != te.dtype or not fmt.json_equal(e["shape"], list(te.shape)):
        raise BundleError(f"tensor {name}: manifest says {e['dtype']} {e['shape']}, data is {te.dtype} {list(te.shape)}", code="manifest")


def swap_tensors(vb: VerifiedBundle, base: Mapping[str, torch.Tensor] | None = None,
                 mapped: bool = False) -> LazyTensors:
    """Parameter (or quantized part) name -> replacement tensor, each made when it is read. lora
    kind: merged here on the host (fp64 accumulation, output in the slot dtype) from ``base``, the
    artifact's own values.

    ``mapped`` (a merged bundle verified from a file): each tensor is a read-only view of the file's
    pages, neither read nor hashed again; the bundle file is then trusted to stay as verified, as
    the artifact's own files are (a phone keeps both in app-private storage). Otherwise every tensor
    is read again and checked against the verified manifest's sha256."""
    entries = vb.manifest["tensors"]
    if vb.kind == "merged":
        by_param = {e["param"]: n for n, e in entries.items()}
        if mapped:
            return LazyTensors(sorted(by_param), lambda p: vb.parsed.mapped_tensor(by_param[p]), finite=True)
        return LazyTensors(sorted(by_param), lambda p: vb.tensor(by_param[p]), finite=True)
    if base is None:
        raise BundleError("a lora bundle needs the artifact's base values to merge on the host", code="build")
    if vb.manifest["format_version"] == fmt.FORMAT_VERSION_QUANTIZED:
        return _requantized(vb, base)
    lora = vb.manifest["lora"]
    modules = _lora_modules(vb)

    def merged(p: str) -> torch.Tensor:
        m = module_of(p)
        adapter = LoraAdapter({m: (vb.tensor(f"{m}.lora_A"), vb.tensor(f"{m}.lora_B"))},
                              r=lora["r"], alpha=float(lora["alpha"]))
        try:
            return merged_tensors({p: base[p]}, adapter)[p]
        except BundleError:
            raise
        except LoragenError as e:  # a merged weight out of bounds: the bundle does not fit this base
            raise BundleError(str(e), code="merge") from None

    return LazyTensors([f"{m}.weight" for m in modules], merged, finite=True)  # the merge bounds every value


def _lora_modules(vb: VerifiedBundle) -> list[str]:
    return sorted(module_of(e["param"]) for n, e in vb.manifest["tensors"].items() if n.endswith(".lora_A"))


def bundle_adapter(vb: VerifiedBundle) -> LoraAdapter:
    """The LoRA of a verified lora bundle (its factors, each read again and checked against the
    manifest's sha256), for an artifact's run-time adapter slots (``Runner.set_adapter``)."""
    if vb.kind != "lora":
        raise BundleError("a merged bundle holds merged weights, not LoRA factors: adapter slots take a lora bundle",
                          code="usage")
    lora = vb.manifest["lora"]
    return LoraAdapter({m: (vb.tensor(f"{m}.lora_A"), vb.tensor(f"{m}.lora_B")) for m in _lora_modules(vb)},
                       r=lora["r"], alpha=float(lora["alpha"]))


def _requantized(vb: VerifiedBundle, base: Mapping[str, torch.Tensor]) -> LazyTensors:
    """A version-2 lora bundle applied as a phone does: per weight, dequantize the stored parts
    (``base``: the artifact's values by slot name), merge in fp64 (:func:`quant.device_merge`),
    quantize again with the slot's encoding; the new parts by slot name."""
    scale = float(vb.manifest["lora"]["scale"])
    weights = {e["param"]: (n, e["encoding"]) for n, e in vb.manifest["tensors"].items() if n.endswith(".lora_A")}

    def requantize(p: str) -> dict[str, torch.Tensor]:
        n, encoding = weights[p]
        enc = quant.get(encoding)
        w = quant.device_merge(enc.dequantize({k: base[quant.part_name(p, k)] for k in quant.PARTS}),
                               vb.tensor(n), vb.tensor(f"{module_of(p)}.lora_B"), scale)
        peak = float(w.abs().max()) if w.numel() else 0.0
        if not peak <= MAX_ABS_WEIGHT:  # NaN fails too
            raise BundleError(f"merge of {p} produced NaN or Inf values or a weight beyond +-{MAX_ABS_WEIGHT:g}; "
                              "the bundle does not fit this base", code="merge")
        return enc.quantize(w)

    parts = Parts(requantize)
    names = {quant.part_name(p, k): (p, k) for p in sorted(weights) for k in quant.PARTS}
    return LazyTensors(names, lambda name: parts.get(*names[name]))
