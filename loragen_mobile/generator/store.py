"""Building, saving and loading a generator, and generating adapters from task descriptions.

A run directory holds:
  generator.json           format version, generator id, config, edge layout, edge and cloud sources,
                           the edge weights' fingerprint (``edge.weights_sha256``)
  generator.safetensors    meta tokens, routers (with BatchNorm running statistics), expert pools
  cloud-adapter/           the cloud model's LoRA, a standard PEFT adapter directory
  cloud-base/              only when the cloud model is a randomly initialised preset
  checkpoint.pt, log.jsonl training state and per-step losses
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import models
from ..data import iter_jsonl
from ..errors import LoragenError, LoragenWarning
from ..fsutil import (atomic_dir, atomic_file, missing_parents, read_json_object, refuse_existing,
    remove_empty_dirs)
from ..lora import LoraAdapter, merge_into_model, save_peft_adapter
from ..models import load_tokenizer
from ..training import encode, left_pad
from .model import EdgeLayout, GeneratorConfig, LoraGenerator

FORMAT_VERSION = 1
META = "generator.json"
WEIGHTS = "generator.safetensors"
CLOUD_ADAPTER = "cloud-adapter"
CLOUD_BASE = "cloud-base"
CHECKPOINT = "checkpoint.pt"
LOG = "log.jsonl"


@dataclass
class Generator:
    """A generator with everything needed to use it: plain attributes, no global state."""

    generator: LoraGenerator
    edge: torch.nn.Module
    layout: EdgeLayout
    cfg: GeneratorConfig
    cloud_tokenizer: object
    edge_tokenizer: object
    edge_dir: Path
    cloud_dir: Path | None           # None for a preset built from its seed
    generator_id: str = ""
    edge_fingerprint: str = ""       # edge_weights_fingerprint(edge_dir) when it was built/loaded


def edge_weights_fingerprint(model_dir: str | os.PathLike) -> str:
    """sha256 over every tensor of a model directory's safetensors files (name, dtype, shape, bytes).

    Tensors are read one at a time in name order (never the whole model at once), so the result
    does not depend on how the weights are sharded or ordered in the files, only on their values.
    """
    from safetensors import SafetensorError, safe_open

    d = Path(model_dir)
    files = sorted(d.glob("*.safetensors"))
    if not files:
        raise LoragenError(f"edge model {d} has no .safetensors weights", code="not-found")
    where: dict[str, Path] = {}
    try:
        for f in files:
            with safe_open(str(f), "pt") as st:
                for k in st.keys():
                    where[k] = f
        h = hashlib.sha256()
        for k in sorted(where):
            with safe_open(str(where[k]), "pt") as st:
                t = st.get_tensor(k)
            header = f"{k}\0{str(t.dtype).removeprefix('torch.')}\0{list(t.shape)}\0".encode()
            h.update(len(header).to_bytes(8, "little") + header)
            h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy())
            del t
    except (SafetensorError, OSError) as e:
        raise LoragenError(f"cannot read the weights of edge model {d}: {e}", code="io") from None
    return h.hexdigest()


def _load_cloud_base(cfg: GeneratorConfig, edge_dir: Path):
    if cfg.cloud == "edge":
        return models.load_model(edge_dir, dtype=torch.float32), models.load_tokenizer(edge_dir), edge_dir
    if cfg.cloud in models.PRESETS:
        return models.build_model(cfg.cloud, seed=cfg.seed), models.build_tokenizer(), None
    try:
        d = models.resolve_model_dir(cfg.cloud)
    except LoragenError as e:
        raise LoragenError(f"cloud model '{cfg.cloud}' is neither 'edge', a preset ({', '.join(models.PRESETS)}), "
                           f"a directory nor a Hugging Face id in the local cache", code=e.code) from None
    return models.load_model(d, dtype=torch.float32), models.load_tokenizer(d), d.resolve()


def build_generator(cfg: GeneratorConfig, edge_dir: str | os.PathLike) -> Generator:
    """A fresh generator for the edge model in ``edge_dir`` (uses the global torch RNG for init)."""
    from peft import LoraConfig, get_peft_model

    edge_dir = models.resolve_model_dir(edge_dir).resolve()
    edge = models.load_model(edge_dir, dtype=torch.float32)
    edge.requires_grad_(False)
    edge_tok = models.load_tokenizer(edge_dir)
    base, cloud_tok, cloud_dir = _load_cloud_base(cfg, edge_dir)
    base.requires_grad_(False)
    cloud = get_peft_model(base, LoraConfig(
        r=cfg.cloud_lora_r, lora_alpha=cfg.cloud_lora_alpha, lora_dropout=cfg.cloud_lora_dropout,
        target_modules=list(cfg.cloud_targets), bias="none"))
    layout = EdgeLayout.of(edge, cfg.targets)
    return Generator(LoraGenerator(cloud, layout, cfg), edge, layout, cfg, cloud_tok, edge_tok, edge_dir, cloud_dir,
                     edge_fingerprint=edge_weights_fingerprint(edge_dir))


def _generator_id(weights: bytes, cloud_adapter: bytes, edge_hash: str) -> str:
    h = hashlib.sha256()
    for part in (weights, cloud_adapter, edge_hash.encode()):
        h.update(hashlib.sha256(part).digest())
    return "lg-" + h.hexdigest()[:16]


def write_generator(g: Generator, out: Path, steps: int) -> str:
    """Write the trained generator's files into run directory ``out`` (each atomically)."""
    from safetensors.torch import save as st_save

    weights = st_save({k: v.contiguous() for k, v in g.generator.generator_state().items()})
    adapter_dir = out / CLOUD_ADAPTER
    if adapter_dir.exists():
        import shutil

        shutil.rmtree(adapter_dir)
    with atomic_dir(adapter_dir) as tmp:
        g.generator.cloud.save_pretrained(str(tmp))
    cloud_path = str(g.cloud_dir) if g.cloud_dir is not None else CLOUD_BASE
    if g.cloud_dir is None and not (out / CLOUD_BASE).exists():
        with atomic_dir(out / CLOUD_BASE) as tmp:
            g.generator.cloud.get_base_model().save_pretrained(tmp)  # LoRA layers are not saved here
            models.save_tokenizer(g.cloud_tokenizer, tmp)
    edge_hash = models.config_hash(models.read_config(g.edge_dir))
    gid = _generator_id(weights, (adapter_dir / "adapter_model.safetensors").read_bytes(), edge_hash)
    with atomic_file(out / WEIGHTS, overwrite=True) as tmp:
        tmp.write_bytes(weights)
    meta = {"format": FORMAT_VERSION, "generator_id": gid, "steps": steps, "config": g.cfg.to_dict(),
            "layout": g.layout.to_dict(),
            "edge": {"path": str(g.edge_dir), "config_hash": edge_hash,
                     "weights_sha256": g.edge_fingerprint or edge_weights_fingerprint(g.edge_dir)},
            "cloud": {"source": g.cfg.cloud, "path": cloud_path}}
    with atomic_file(out / META, overwrite=True) as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
    g.generator_id = gid
    return gid


def load_generator(run_dir: str | os.PathLike, edge_dir: str | os.PathLike | None = None) -> Generator:
    """Load a trained generator (eval mode: BatchNorm uses its running statistics)."""
    from peft import PeftModel
    from safetensors.torch import load_file

    run = Path(run_dir)
    if not (run / META).is_file():
        raise LoragenError(f"{run} is not a generator run directory ({META} is missing; train one with 'loragen train')")
    meta = read_json_object(run / META)
    if meta.get("format") != FORMAT_VERSION:
        raise LoragenError(f"{run / META}: unsupported generator format {meta.get('format')!r}")
    try:
        cfg = GeneratorConfig.from_dict(meta["config"])
        layout = EdgeLayout.from_dict(meta["layout"])
        # a relative edge path (as in the shipped checkpoints) is relative to the run directory
        edge_path = models.resolve_model_dir(edge_dir) if edge_dir is not None else run / meta["edge"]["path"]
        cloud_path = meta["cloud"]["path"]
        want_hash = meta["edge"]["config_hash"]
    except (KeyError, TypeError) as e:
        raise LoragenError(f"{run / META} is incomplete: {e}") from None
    want_weights = meta["edge"].get("weights_sha256")
    if models.config_hash(models.read_config(edge_path)) != want_hash:
        raise LoragenError(f"edge model {edge_path} is not the one this generator was trained for "
                           "(different architecture)", code="edge-mismatch")
    if want_weights is None:
        # runs written before the fingerprint existed: only the architecture can be checked
        import warnings

        warnings.warn(f"{run / META} records no edge weights fingerprint (written by an older version): "
                      f"only the architecture of {edge_path} was checked", LoragenWarning, stacklevel=2)
        have_weights = ""
    else:
        have_weights = edge_weights_fingerprint(edge_path)
        if have_weights != want_weights:
            raise LoragenError(f"edge model {edge_path} has the right architecture but not the weights this "
                               f"generator was trained for (weights sha256 {have_weights[:16]}, expected "
                               f"{str(want_weights)[:16]}); pass the edge model it was trained with",
                               code="edge-mismatch")
    edge = models.load_model(edge_path, dtype=torch.float32)
    edge.requires_grad_(False)
    if meta["cloud"].get("source") == "edge":
        cdir = edge_path  # the cloud backbone is the edge model itself (wherever it lives now)
    else:
        cdir = run / CLOUD_BASE if cloud_path == CLOUD_BASE else Path(cloud_path)
    base = models.load_model(cdir, dtype=torch.float32)
    cloud_tok = models.load_tokenizer(cdir)
    cloud = PeftModel.from_pretrained(base, str(run / CLOUD_ADAPTER))
    with torch.random.fork_rng():
        gen = LoraGenerator(cloud, layout, cfg)
    try:
        state = load_file(str(run / WEIGHTS))
    except Exception as e:
        raise LoragenError(f"{run / WEIGHTS} is not a valid safetensors file: {str(e).splitlines()[0]}") from None
    missing = set(gen.generator_state()) - set(state)
    if missing:
        raise LoragenError(f"{run / WEIGHTS} lacks {sorted(missing)[0]} (and {len(missing) - 1} more)")
    gen.load_state_dict(state, strict=False)
    gen.eval()
    return Generator(gen, edge, layout, cfg, cloud_tok, models.load_tokenizer(edge_path), edge_path.resolve(),
                     None if cloud_path == CLOUD_BASE else cdir, meta["generator_id"], have_weights)


def task_sha256(task: str) -> str:
    return hashlib.sha256(task.encode("utf-8")).hexdigest()


@torch.no_grad()
def generate_factors(g: Generator, tasks: list[str], allow_empty: bool = False
                     ) -> list[dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """Per description: module name -> (A (K*r, in), B (out, K*r)), scale 1. Nothing touches disk.
    ``allow_empty``: an empty description is read as the meta tokens alone (the evaluation's control)."""
    if not tasks:
        return []
    for t in tasks:
        if not isinstance(t, str) or (not t.strip() and not (allow_empty and t == "")):
            raise LoragenError("a task description must be a non-empty string")
    limit = g.cfg.max_length - g.layout.num_layers
    seqs = [([g.cloud_tokenizer.bos_token_id] + encode(g.cloud_tokenizer, t))[:limit] for t in tasks]
    ids, mask = left_pad(seqs, g.cloud_tokenizer.pad_token_id)
    was_training = g.generator.training
    g.generator.eval()
    try:
        _, _, factors = g.generator(ids, mask)
    finally:
        g.generator.train(was_training)
    out = []
    for b in range(len(tasks)):
        per = {}
        for m, (a, bb) in factors.items():
            for i in range(g.layout.num_layers):
                per[g.layout.module_name(m, i)] = (a[b, i].contiguous(), bb[b, i].contiguous())
        out.append(per)
    return out


def generate_adapters(g: Generator, tasks: list[str]) -> list[LoraAdapter]:
    """One LoRA adapter per description, in one batched generator forward."""
    rank = g.cfg.rank
    return [LoraAdapter(f, r=rank, alpha=float(rank), model_type=g.layout.model_type,
                        metadata={"loragen.generator_id": g.generator_id, "loragen.task_sha256": task_sha256(t)})
            for f, t in zip(generate_factors(g, tasks), tasks)]


def generate_adapter(g: Generator, task: str) -> LoraAdapter:
    return generate_adapters(g, [task])[0]


def save_generated(g: Generator, tasks: list[str], outs: list[str | os.PathLike],
                   merge_into: list[str | os.PathLike] | None = None) -> list[Path]:
    """Generate and write PEFT adapter directories (and optionally merged model directories)."""
    parents: list[Path] = []
    for p in list(outs) + list(merge_into or []):
        refuse_existing(p)
        parents += [d for d in missing_parents(p) if d not in parents]
    adapters = generate_adapters(g, tasks)
    written: list[Path] = []
    try:
        for i, (adapter, out) in enumerate(zip(adapters, outs)):
            if merge_into:
                import copy

                model = merge_into_model(copy.deepcopy(g.edge), adapter)  # checked before anything is written
            written.append(save_peft_adapter(adapter, out, base_model=str(g.edge_dir)))
            if merge_into:
                with atomic_dir(merge_into[i]) as tmp:
                    model.save_pretrained(tmp)
                    models.save_tokenizer(load_tokenizer(g.edge_dir), tmp)
                written.append(Path(merge_into[i]))
    except BaseException:
        import shutil

        for p in written:  # all or nothing: no adapter without its merged model (full disk, interrupt)
            shutil.rmtree(p, ignore_errors=True)
        for d in sorted(parents, key=lambda d: len(d.parts), reverse=True):  # and no parent it created
            remove_empty_dirs([d])
        raise
    return written[::2] if merge_into else written


def read_task_file(path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """Batch mode input: JSONL lines ``{"name": str, "task": str}`` -> (tasks, names)."""
    import re

    tasks, names = [], []
    for where, rec in iter_jsonl(path, "task file"):
        if not isinstance(rec, dict) or not isinstance(rec.get("name"), str) or not isinstance(rec.get("task"), str):
            raise LoragenError(f"{where}: expected {{\"name\": str, \"task\": str}}")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", rec["name"]):
            raise LoragenError(f"{where}: name {rec['name']!r} must be a plain file name (letters, digits, . _ -)")
        if rec["name"] in names:
            raise LoragenError(f"{where}: duplicate name {rec['name']!r}")
        names.append(rec["name"])
        tasks.append(rec["task"])
    return tasks, names


def generate_batch(g: Generator, tasks: list[str], names: list[str], out_dir: str | os.PathLike) -> Path:
    """Batch mode: one adapter directory per name under a new ``out_dir`` (written atomically)."""
    with atomic_dir(out_dir) as tmp:
        save_generated(g, tasks, [tmp / n for n in names])
    return Path(out_dir)
