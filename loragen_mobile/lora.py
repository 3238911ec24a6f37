"""LoRA factors: a plain container, PEFT adapter directories, and the exact merge.

Convention (PEFT's): for a Linear with weight W of shape (out, in), a LoRA holds
A of shape (r, in) and B of shape (out, r), and the merged weight is W' = W + scale * B @ A
with scale = alpha / r. Module names are fully qualified (``model.layers.0.mlp.up_proj``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import LoragenError
from .fsutil import atomic_dir, read_json_object, refuse_existing
from .models import load_model, load_tokenizer, save_tokenizer

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
# Every weight a merge writes is finite with |w| <= MAX_ABS_WEIGHT, the largest finite fp16 value:
# a merged model must stay representable in the fp16 the mobile backends compute in (the bundle
# format holds merged weights and LoRA factors to the same bound; docs/bundle-format.md).
MAX_ABS_WEIGHT = 65504.0


def check_rank_alpha(r, alpha, where: str) -> None:
    """``r`` a positive JSON/Python integer (not a bool) and ``alpha`` a finite number; code ``adapter``."""
    if (isinstance(r, bool) or not isinstance(r, int) or r < 1 or isinstance(alpha, bool)
            or not isinstance(alpha, (int, float)) or not math.isfinite(alpha)):
        raise LoragenError(f"{where}: 'r' must be a positive integer and 'lora_alpha' a finite number "
                           f"(got r={r!r}, lora_alpha={alpha!r})", code="adapter")


@dataclass
class LoraAdapter:
    """Per-module LoRA factors with one rank and one alpha (scale = alpha / r)."""

    factors: dict[str, tuple[torch.Tensor, torch.Tensor]]  # module name -> (A, B)
    r: int
    alpha: float
    model_type: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def scale(self) -> float:
        return self.alpha / self.r

    @property
    def target_modules(self) -> list[str]:
        return sorted({name.split(".")[-1] for name in self.factors})

    def __post_init__(self):
        check_rank_alpha(self.r, self.alpha, "LoRA adapter")
        for name, (a, b) in self.factors.items():
            if not (a.dtype.is_floating_point and b.dtype.is_floating_point):
                raise LoragenError(f"LoRA factors of {name} must be floating point, got A {a.dtype}, B {b.dtype}",
                                   code="adapter")
            if a.dim() != 2 or b.dim() != 2 or a.shape[0] != self.r or b.shape[1] != self.r:
                raise LoragenError(
                    f"LoRA factors of {name} do not have rank {self.r}: "
                    f"A {tuple(a.shape)}, B {tuple(b.shape)} (expected A (r, in), B (out, r))"
                )

    def delta(self, name: str) -> torch.Tensor:
        """Dense update scale * B @ A in fp32 (for tests and small modules)."""
        a, b = self.factors[name]
        return (b.float() @ a.float()) * self.scale


def random_adapter(model: torch.nn.Module, module_names: list[str], r: int = 16, alpha: float = 32.0,
                   seed: int = 0, std: float = 0.02, dtype: torch.dtype = torch.float32) -> LoraAdapter:
    """A random adapter (both factors non-zero) for the given Linear modules, e.g. for tests/benches."""
    g = torch.Generator().manual_seed(seed)
    modules = dict(model.named_modules())
    factors = {}
    for name in module_names:
        out_f, in_f = modules[name].weight.shape
        a = (torch.randn(r, in_f, generator=g) * std).to(dtype)
        b = (torch.randn(out_f, r, generator=g) * std).to(dtype)
        factors[name] = (a, b)
    return LoraAdapter(factors, r=r, alpha=alpha, model_type=getattr(getattr(model, "config", None), "model_type", None))


# --------------------------------------------------------------------------------------------
# PEFT adapter directories
# --------------------------------------------------------------------------------------------

def save_peft_adapter(adapter: LoraAdapter, out: str | os.PathLike, base_model: str | None = None) -> Path:
    """Write a standard PEFT LoRA adapter directory (atomically)."""
    from peft import LoraConfig

    tensors = {}
    for name, (a, b) in adapter.factors.items():
        tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"] = a.contiguous()
        tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"] = b.contiguous()
    meta = {"format": "pt", **adapter.metadata}
    if adapter.model_type:
        meta["loragen.model_type"] = adapter.model_type
    config = LoraConfig(
        r=adapter.r, lora_alpha=adapter.alpha, lora_dropout=0.0, bias="none",
        target_modules=adapter.target_modules, task_type="CAUSAL_LM",
        base_model_name_or_path=base_model,
    )
    with atomic_dir(out) as tmp:
        config.save_pretrained(str(tmp))
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata=meta)
    return Path(out)


def load_peft_adapter(path: str | os.PathLike) -> LoraAdapter:
    """Read a PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors)."""
    d = Path(path)
    if not d.is_dir():
        raise LoragenError(f"adapter directory {d} does not exist")
    cfg_path, w_path = d / ADAPTER_CONFIG, d / ADAPTER_WEIGHTS
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise LoragenError(f"{d} is not a PEFT adapter directory: {p.name} is missing")
    cfg = read_json_object(cfg_path)
    if cfg.get("peft_type", "LORA") != "LORA":
        raise LoragenError(f"{cfg_path}: peft_type {cfg.get('peft_type')!r} is not LORA")
    for unsupported in ("rank_pattern", "alpha_pattern"):
        if cfg.get(unsupported):
            raise LoragenError(f"{cfg_path}: per-module {unsupported} is not supported")
    if cfg.get("use_rslora") or cfg.get("use_dora") or cfg.get("fan_in_fan_out"):
        raise LoragenError(f"{cfg_path}: rsLoRA, DoRA and fan_in_fan_out adapters are not supported")
    r, alpha = cfg.get("r"), cfg.get("lora_alpha")
    check_rank_alpha(r, alpha, str(cfg_path))
    alpha = float(alpha)
    try:
        tensors = load_file(str(w_path))
        from safetensors import safe_open

        with safe_open(str(w_path), "pt") as f:
            meta = dict(f.metadata() or {})
    except (SafetensorError, OSError) as e:
        raise LoragenError(f"{w_path} is not a valid safetensors file: {e}") from None
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        k = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
        for which in ("lora_A", "lora_B"):
            suffix = f".{which}.weight"
            if k.endswith(suffix):
                parts.setdefault(k[: -len(suffix)], {})[which] = t
                break
        else:
            raise LoragenError(f"{w_path}: unexpected tensor {key} (only lora_A/lora_B weights are supported)")
    if not parts:
        raise LoragenError(f"{w_path} holds no LoRA tensors (lora_A/lora_B weights)", code="adapter")
    factors = {}
    for name, ab in sorted(parts.items()):
        if set(ab) != {"lora_A", "lora_B"}:
            raise LoragenError(f"{w_path}: module {name} has only {', '.join(ab)}")
        factors[name] = (ab["lora_A"], ab["lora_B"])
    model_type = meta.pop("loragen.model_type", None)
    meta.pop("format", None)
    return LoraAdapter(factors, r=r, alpha=alpha, model_type=model_type, metadata=meta)


# --------------------------------------------------------------------------------------------
# Merge
# --------------------------------------------------------------------------------------------

def merged_tensors(base: Mapping[str, torch.Tensor], adapter: LoraAdapter) -> dict[str, torch.Tensor]:
    """The replacement weights ``W + scale * B @ A`` of every module the adapter touches.

    ``base`` maps parameter names (``<module>.weight``) to weights. Accumulates in fp64, casts back
    to each weight's dtype. Checks every shape before computing anything and refuses NaN/Inf
    results, naming the tensor. Returns only the touched tensors; ``base`` is not modified.
    """
    plan = []
    for name, (a, b) in adapter.factors.items():
        key = f"{name}.weight"
        if key not in base:
            raise LoragenError(f"adapter targets {name}, which the model does not have (no tensor {key})")
        w = base[key]
        want = (b.shape[0], a.shape[1])
        if tuple(w.shape) != want:
            raise LoragenError(
                f"shape mismatch for {key}: model weight {tuple(w.shape)}, "
                f"adapter B @ A {want} (A {tuple(a.shape)}, B {tuple(b.shape)})"
            )
        plan.append((key, w, a, b))
    return {key: _merge_one(key, w, a, b, adapter.scale) for key, w, a, b in plan}


# rows per block: the block's fp64 accumulators stay within a typical L2 cache (~2 MiB)
_BLOCK_ELEMS = 1 << 18


def _merge_one(key: str, w: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """W + scale * (B @ A), one block of rows at a time: fp64 accumulation (one GEMM with beta=1),
    one rounding to W's dtype, and the NaN/Inf/overflow check while the block is still in cache.

    fp64 makes the result independent of the CPU's GEMM kernel: each product of two fp32 factors is
    exact in fp64, the rank-r sum's rounding error is far below fp32's, so the one rounding to W's
    dtype gives the same bits on every machine (the BLAS's fp32 kernels differ in their order of
    accumulation between CPU generations, which moved results by one fp32 ulp). It is also what a
    phone computes for a lora bundle (:func:`loragen_mobile.quant.device_merge`), up to that
    rounding error."""
    out = torch.empty_like(w)
    af, bf = a.to(torch.float64), b.to(torch.float64)
    rows = max(1, _BLOCK_ELEMS // w.shape[1])
    buf = torch.empty(min(rows, w.shape[0]), w.shape[1], dtype=torch.float64)
    if not math.isfinite(scale):
        raise LoragenError(f"LoRA scale of {key} is {scale}; refusing to merge", code="adapter")
    limit = min(torch.finfo(w.dtype).max, MAX_ABS_WEIGHT)
    for i in range(0, w.shape[0], rows):
        j = min(i + rows, w.shape[0])
        acc = buf[: j - i]
        acc.copy_(w[i:j])
        torch.addmm(acc, bf[i:j], af, alpha=scale, out=acc)
        lo, hi = torch.aminmax(acc)  # NaN propagates; +-Inf or values beyond the bound fail
        if not (-limit <= float(lo) and float(hi) <= limit):
            raise LoragenError(f"merge of {key} produced NaN or Inf values or a weight beyond +-{limit:g}; "
                               "refusing to merge (nothing was written)", code="merge")
        out[i:j].copy_(acc)
    return out


def check_compatible(model: torch.nn.Module, adapter: LoraAdapter) -> None:
    mt = getattr(model.config, "model_type", None)
    if adapter.model_type and mt and adapter.model_type != mt:
        raise LoragenError(f"adapter was made for model_type '{adapter.model_type}', the model is '{mt}'")


def merge_into_model(model: torch.nn.Module, adapter: LoraAdapter) -> torch.nn.Module:
    """Merge in place (all tensors computed and checked before any weight changes)."""
    check_compatible(model, adapter)
    params = dict(model.named_parameters())
    new = merged_tensors({k: v.detach() for k, v in params.items()}, adapter)
    with torch.no_grad():
        for key, t in new.items():
            params[key].copy_(t)
    return model


def merge_dir(model_dir: str | os.PathLike, adapter_dir: str | os.PathLike, out: str | os.PathLike) -> Path:
    """``loragen merge``: base HF directory + PEFT adapter -> new merged HF directory (atomic)."""
    refuse_existing(out)
    model = load_model(model_dir)
    adapter = load_peft_adapter(adapter_dir)
    merge_into_model(model, adapter)
    tokenizer = load_tokenizer(model_dir)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        save_tokenizer(tokenizer, tmp)
    return Path(out)
