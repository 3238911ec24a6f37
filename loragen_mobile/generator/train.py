"""Training the generator: frozen edge model, loss on targets without the system prompt.

loss = CE(edge with the generated LoRA, target | user input)  +  alpha_cv * CV(G)^2

Single process or ``torchrun`` (DistributedDataParallel over gloo/NCCL). The global batch of each
step is a deterministic function of (seed, step), so ``--resume`` continues exactly and a
multi-process run sees the same global batch as a single-process run; each process takes a
contiguous shard of it. Cross-process terms (BatchNorm statistics, the CV of the gate mass, the
token count that normalises the CE) are all-reduced, so the losses match a single process.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path

import torch

from ..config import load_section
from ..data import group_by_task, read_jsonl
from ..errors import LoragenError
from ..training import (Dist, lm_example, load_checkpoint, pad_lm_batch, param_groups, rng_state,
                        save_checkpoint, set_rng_state, token_ce_sum, warmup_cosine, left_pad, encode, length_groups)
from .model import GeneratorConfig, batched_lora, cv_squared
from .store import CHECKPOINT, LOG, build_generator, write_generator


#: a step runs the descriptions and the examples in up to this many length groups, each padded to
#: its own longest (tool definitions are several times longer than the reasoning tasks' rules):
#: 441 against 484 ms per step at the tiny presets, the same loss up to float rounding
LENGTH_GROUPS = 3


def load_config(path: str | os.PathLike | None, overrides: dict | None = None) -> GeneratorConfig:
    """The ``generator:`` section of a YAML config (a file without sections is the section itself),
    with ``overrides`` (command-line options; ``None`` = not given) on top."""
    d = load_section(path, "generator", whole_if_missing=True)
    return GeneratorConfig.from_dict(d, what=f"{path}: generator" if path else "generator config",
                                     overrides=overrides)


class TaskData:
    """Tokenised tasks: the cloud reads each description, the edge sees each example without it."""

    def __init__(self, records: list[dict], cloud_tok, edge_tok, max_desc_tokens: int):
        self.tasks = []
        self._cloud_tok, self._max_desc = cloud_tok, max_desc_tokens
        for task_id, recs in group_by_task(records).items():
            self.tasks.append({
                "task_id": task_id,
                "system": recs[0]["system"],
                "desc": self._encode(recs[0]["system"]),
                "examples": [lm_example(edge_tok, None, r["input"], r["target"]) for r in recs],
            })
        self.cloud_pad = cloud_tok.pad_token_id
        self.edge_pad = edge_tok.pad_token_id

    def _encode(self, text: str) -> list[int]:
        return ([self._cloud_tok.bos_token_id] + encode(self._cloud_tok, text))[: self._max_desc]

    def global_batch(self, step: int, cfg: GeneratorConfig) -> list[tuple[int, list[int], list[int]]]:
        """(task index, example indices, description ids) for every task of a step: a function of
        (seed, step) only. With ``cfg.shuffle_lists`` the description's list items are in an order
        drawn for the step (:func:`shuffle_list_items`)."""
        T, B = len(self.tasks), cfg.tasks_per_step
        out = []
        for pos in range(step * B, step * B + B):
            epoch, k = divmod(pos, T)
            perm = torch.randperm(T, generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch))
            t = int(perm[k])
            g = torch.Generator().manual_seed((cfg.seed * 1_000_003 + step) * 8191 + t)
            n = len(self.tasks[t]["examples"])
            ex = torch.randint(n, (cfg.examples_per_task,), generator=g).tolist()
            desc = self.tasks[t]["desc"]
            if cfg.shuffle_lists:
                text = shuffle_list_items(self.tasks[t]["system"], g)
                if text != self.tasks[t]["system"]:
                    desc = self._encode(text)
            out.append((t, ex, desc))
        return out

    def tensors(self, batch, groups: int = 1):
        """The descriptions (left-padded ids and mask) and the examples for the edge in up to
        ``groups`` length groups (:func:`length_groups`), each (rows, input ids, labels) with
        ``rows`` naming every example's task in the batch."""
        desc_ids, desc_mask = left_pad([desc for _, _, desc in batch], self.cloud_pad)
        rows, examples = [], []
        for i, (t, ex, _) in enumerate(batch):
            for e in ex:
                rows.append(i)
                examples.append(self.tasks[t]["examples"][e])
        edge = []
        for g in length_groups([len(ids) for ids, _ in examples], groups):
            input_ids, labels = pad_lm_batch([examples[i] for i in g], self.edge_pad)
            edge.append((torch.tensor([rows[i] for i in g]), input_ids, labels))
        return desc_ids, desc_mask, edge


def shuffle_list_items(text: str, gen: torch.Generator) -> str:
    """``text`` with each run of consecutive lines that start with ``"- "`` (a list: the tool
    definitions of a tool-use description) in a random order drawn from ``gen``; the rest as is."""
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        j = i
        while j < len(lines) and lines[j].startswith("- "):
            j += 1
        if j - i > 1:
            lines[i:j] = [lines[i + k] for k in torch.randperm(j - i, generator=gen).tolist()]
        i = max(j, i + 1)
    return "\n".join(lines)


def edge_ce_sum(edge, layout, factors: dict, groups, autocast=None) -> torch.Tensor:
    """Summed target-token cross-entropy of the edge model over the example groups of
    :meth:`TaskData.tensors`, every example with its own task's generated LoRA."""
    total = 0
    for rows, input_ids, labels in groups:
        with autocast or contextlib.nullcontext(), batched_lora(edge, layout, factors, rows):
            logits = edge(input_ids=input_ids).logits
        total = total + token_ce_sum(logits, labels)[0]
    return total


def total_steps(cfg: GeneratorConfig, n_tasks: int) -> int:
    if cfg.max_steps is not None:
        return int(cfg.max_steps)
    return max(1, math.ceil(cfg.epochs * n_tasks / cfg.tasks_per_step))


def train(cfg: GeneratorConfig, edge_dir: str | os.PathLike, data: str | os.PathLike, out: str | os.PathLike,
          resume: bool = False, progress: bool = True) -> Path:
    """Train a generator into RUN_DIR ``out``; returns it. Works alone or under torchrun."""
    out = Path(out)
    if cfg.max_steps is not None and int(cfg.max_steps) < 1:
        raise LoragenError(f"max_steps must be at least 1 (got {cfg.max_steps}); a generator that never "
                           "trained is not written", code="usage")
    records = read_jsonl(data)
    dist = Dist.init()
    created = False
    try:
        if cfg.tasks_per_step % dist.world:
            raise LoragenError(f"tasks_per_step ({cfg.tasks_per_step}) must be divisible by the number of processes ({dist.world})")
        ckpt_path = out / CHECKPOINT
        if resume:
            if not ckpt_path.is_file():
                raise LoragenError(f"nothing to resume: {ckpt_path} does not exist")
        elif out.exists() and any(out.iterdir()):
            raise LoragenError(f"run directory {out} is not empty; pass --resume to continue it, or choose a new one")
        torch.manual_seed(cfg.seed)
        parts = build_generator(cfg, edge_dir)
        gen, edge = parts.generator, parts.edge
        tasks = TaskData(records, parts.cloud_tokenizer, parts.edge_tokenizer,
                         cfg.max_length - parts.layout.num_layers)
        steps = total_steps(cfg, len(tasks.tasks))
        # inputs are valid: only now does the run directory appear
        dist.barrier()
        if dist.main:
            created = not out.exists()
            out.mkdir(parents=True, exist_ok=True)
        dist.barrier()
        cloud_params = [(n, p) for n, p in gen.named_parameters() if n.startswith("cloud.")]
        own_params = [(n, p) for n, p in gen.named_parameters() if not n.startswith("cloud.")]
        groups = (param_groups(own_params, cfg.lr, cfg.weight_decay)
                  + param_groups(cloud_params, cfg.lr_cloud or cfg.lr, cfg.weight_decay))
        opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
        sched = warmup_cosine(opt, cfg.warmup_steps, steps)
        start = 0
        if resume:
            ck = load_checkpoint(ckpt_path)
            gen.load_state_dict(ck["trainable"], strict=False)
            opt.load_state_dict(ck["optimizer"])
            sched.load_state_dict(ck["scheduler"])
            set_rng_state(ck["rng"][dist.rank])
            start = ck["step"]
            if dist.main:
                _truncate_log(out / LOG, start)
        model = gen
        if dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            model = DistributedDataParallel(gen)
        gen.train()
        edge.eval()
        per_rank = cfg.tasks_per_step // dist.world
        bar = None
        if progress and dist.main:
            from tqdm import tqdm

            bar = tqdm(total=steps, initial=start, desc="train generator", unit="step")
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.dtype == "bfloat16")
        for step in range(start, steps):
            batch = tasks.global_batch(step, cfg)
            n_tok = sum(len(tasks.tasks[t]["examples"][e][0]) - tasks.tasks[t]["examples"][e][1]
                        for t, ex, _ in batch for e in ex)
            local = batch[dist.rank * per_rank:(dist.rank + 1) * per_rank]
            desc_ids, desc_mask, edge_groups = tasks.tensors(local, LENGTH_GROUPS)
            with autocast:
                gates, _, factors = model(desc_ids, desc_mask, groups=LENGTH_GROUPS)
            ce_sum = edge_ce_sum(edge, parts.layout, factors, edge_groups, autocast)
            cv = cv_squared(gates)
            loss = dist.world * ce_sum / n_tok + cfg.alpha_cv * cv
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(gen.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            lm = float(dist.all_reduce(ce_sum.detach().clone())) / n_tok
            if dist.main:
                entry = {"step": step + 1, "lm_loss": lm, "cv_loss": float(cv.detach()),
                         "lr": sched.get_last_lr()[0], "grad_norm": float(gnorm)}
                with open(out / LOG, "a") as f:
                    f.write(json.dumps(entry) + "\n")
            if bar is not None:
                bar.set_postfix(lm=f"{lm:.3f}", cv=f"{float(cv.detach()):.3f}", lr=f"{sched.get_last_lr()[0]:.2e}")
                bar.update()
            if (step + 1) % cfg.save_every == 0 or step + 1 == steps:
                _checkpoint(gen, opt, sched, step + 1, dist, ckpt_path)
        if bar is not None:
            bar.close()
        if dist.main:
            write_generator(parts, out, steps=steps)
        dist.barrier()
        return out
    except BaseException:
        # a run that failed before its first checkpoint has nothing to resume: leave no directory
        if created and dist.main and not (out / CHECKPOINT).exists():
            import shutil

            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        model = None  # DistributedDataParallel's reducer holds the process group: release it first
        dist.close()


def trainable_state(gen) -> dict:
    """Parameters that train plus the routers' buffers (never the frozen cloud or edge weights)."""
    trainable = {n for n, p in gen.named_parameters() if p.requires_grad}
    return {k: v.detach().clone() for k, v in gen.state_dict().items()
            if k in trainable or not k.startswith("cloud.")}


def _checkpoint(gen, opt, sched, step, dist: Dist, path: Path) -> None:
    rngs = [rng_state()]
    if dist.world > 1:
        rngs = [None] * dist.world
        torch.distributed.all_gather_object(rngs, rng_state())
    if dist.main:
        save_checkpoint({"step": step, "trainable": trainable_state(gen), "optimizer": opt.state_dict(),
                         "scheduler": sched.state_dict(), "rng": rngs}, path)
    dist.barrier()


def _truncate_log(path: Path, step: int) -> None:
    if not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in keep))
