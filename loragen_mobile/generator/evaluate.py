"""`loragen eval`: LoRA-Gen against the baselines, per suite and split.

Methods (accuracy = exact match of the greedy output, or choice scoring for multiple choice):
  edge_prompt      the edge model with the system prompt in context
  edge_no_prompt   the edge model without it
  task_lora        a LoRA fine-tuned per task on that task's adaptation examples, without the prompt
  loragen          the generated LoRA, merged, without the prompt
  loragen_wrong    control: the LoRA generated from another task's description

Each task's records are split in half: the first half adapts ``task_lora`` (the same number of
examples per task as the built-in training files hold), the second half is scored for every
method. Input tokens count everything the edge model reads before answering.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path

import torch

from .. import quant
from ..data import group_by_task, read_jsonl
from ..errors import LoragenError
from ..fsutil import atomic_file
from ..lora import LoraAdapter, merged_tensors
from ..training import left_pad, lm_example, pad_lm_batch, token_ce_sum
from .model import batched_lora
from .store import Generator, generate_factors, load_generator

METHODS = ("edge_prompt", "edge_no_prompt", "task_lora", "loragen", "loragen_wrong")


class _Swapper:
    """Load per-task weights into one edge model instance and restore the base afterwards.

    With ``encoding`` (a :mod:`loragen_mobile.quant` encoding), every decoder linear weight holds
    what a quantized artifact stores (``dequantize(quantize(W))``), and a merged LoRA gives
    ``dequantize(quantize(W + scale * B @ A))`` from the full-precision W, as a merged bundle."""

    def __init__(self, model, encoding=None):
        self.model = model
        self.params = dict(model.named_parameters())
        self.base = {}
        self.encoding = encoding
        self.full: dict[str, torch.Tensor] = {}
        if encoding is not None:
            self.full = {n: p.detach().clone() for n, p in self.params.items()
                         if ".layers." in n and n.endswith(".weight") and p.dim() == 2}
            with torch.no_grad():
                for n, w in self.full.items():
                    self.params[n].copy_(self._stored(w))

    def _stored(self, w: torch.Tensor) -> torch.Tensor:
        return self.encoding.stored(w)

    def apply(self, factors: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Merge scale-1 factors (module name -> (A, B)) with the project's one merge."""
        self.restore()
        rank = next(iter(factors.values()))[0].shape[0]
        merged = merged_tensors({k: self.full.get(k, p.detach()) for k, p in self.params.items()},
                                LoraAdapter(factors, r=rank, alpha=float(rank)))
        with torch.no_grad():
            for key, w in merged.items():
                self.base[key] = self.params[key].detach().clone()
                self.params[key].copy_(self._stored(w) if key in self.full else w)

    def restore(self) -> None:
        with torch.no_grad():
            for key, w in self.base.items():
                self.params[key].copy_(w)
        self.base = {}


@torch.no_grad()
def _greedy(model, tok, prompts: list[list[int]], max_new: int) -> list[list[int]]:
    ids, mask = left_pad(prompts, tok.pad_token_id)
    out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    res = []
    for row in out[:, ids.shape[1]:].tolist():
        res.append(row[: row.index(tok.eos_token_id)] if tok.eos_token_id in row else row)
    return res


@torch.no_grad()
def _score(model, tok, recs: list[dict], system: str | None) -> tuple[float, float]:
    """(accuracy, mean input tokens) of ``model`` on records, with or without the system prompt."""
    prompts = [lm_example(tok, system, r["input"], None)[0] for r in recs]
    n_in = sum(len(p) for p in prompts) / len(prompts)
    correct = 0
    free = [i for i, r in enumerate(recs) if "choices" not in r]
    if free:
        max_new = max(len(tok(recs[i]["target"], add_special_tokens=False)["input_ids"]) for i in free) + 2
        for i, gen in zip(free, _greedy(model, tok, [prompts[i] for i in free], max_new)):
            correct += tok.decode(gen, skip_special_tokens=True) == recs[i]["target"]
    for i, r in enumerate(recs):
        if "choices" in r:
            scores = []
            for c in r["choices"]:
                ids, labels = pad_lm_batch([lm_example(tok, system, r["input"], c)], tok.pad_token_id)
                ce, _ = token_ce_sum(model(input_ids=ids).logits, labels)
                scores.append(-float(ce))
            correct += int(max(range(len(scores)), key=scores.__getitem__) == r["answer"])
    return correct / len(recs), n_in


def task_lora(g: Generator, recs: list[dict], steps: int, lr: float, seed: int) -> dict:
    """A per-task LoRA (same rank and targets as the generated ones) trained without the prompt."""
    tok, layout = g.edge_tokenizer, g.layout
    input_ids, labels = pad_lm_batch([lm_example(tok, None, r["input"], r["target"]) for r in recs],
                                     tok.pad_token_id)
    gen = torch.Generator().manual_seed(seed)
    R, L = g.cfg.rank, layout.num_layers
    factors = {m: (torch.randn(1, L, R, fin, generator=gen).div_(fin ** 0.5).requires_grad_(),
                   torch.zeros(1, L, fout, R, requires_grad=True))
               for m, (fin, fout) in layout.modules.items()}
    opt = torch.optim.Adam([t for ab in factors.values() for t in ab], lr=lr)
    rows = torch.zeros(len(recs), dtype=torch.long)
    with torch.enable_grad():
        for _ in range(steps):
            with batched_lora(g.edge, layout, factors, rows):
                ce, n = token_ce_sum(g.edge(input_ids=input_ids).logits, labels)
            opt.zero_grad()
            (ce / n).backward()
            opt.step()
    return {layout.module_name(m, i): (a[0, i].detach(), b[0, i].detach())
            for m, (a, b) in factors.items() for i in range(L)}


def evaluate(g: Generator | str | os.PathLike, data: str | os.PathLike, methods=METHODS,
             lora_steps: int = 60, lora_lr: float = 1e-2, progress: bool = True,
             weight_encoding: str | None = None) -> dict:
    """Accuracy and mean input tokens per (suite, split, method); compression ratios.
    ``weight_encoding``: evaluate the edge model with quantized decoder weights (see :class:`_Swapper`)."""
    encoding = quant.get(weight_encoding) if weight_encoding else None
    if not isinstance(g, Generator):
        g = load_generator(g)
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise LoragenError(f"unknown method(s) {bad}; choose from {', '.join(METHODS)}")
    records = read_jsonl(data)
    tasks = group_by_task(records)
    for tid, recs in tasks.items():
        if len(recs) < 2:
            raise LoragenError(f"task '{tid}' has {len(recs)} record; evaluation needs at least 2 per task "
                               "(the first half adapts the per-task LoRA, the second half is scored)")
    ids = list(tasks)
    systems = [tasks[t][0]["system"] for t in ids]
    # control: the description of the next task of the same suite
    by_suite: dict[str, list[int]] = {}
    for i, t in enumerate(ids):
        by_suite.setdefault(tasks[t][0].get("suite", "custom"), []).append(i)
    wrong = {}
    for members in by_suite.values():
        for k, i in enumerate(members):
            wrong[i] = members[(k + 1) % len(members)] if len(members) > 1 else i
    gen_factors: list = []
    if "loragen" in methods or "loragen_wrong" in methods:
        for s in range(0, len(systems), 16):
            gen_factors += generate_factors(g, systems[s:s + 16])
    model, tok = g.edge, g.edge_tokenizer
    swap = _Swapper(model, encoding)
    cells: dict = OrderedDict()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(ids), desc="eval", unit="task")
    for i, tid in enumerate(ids):
        recs = tasks[tid]
        half = len(recs) // 2
        adapt, scored = recs[:half], recs[half:]
        key = (recs[0].get("suite", "custom"), recs[0].get("split", "all"))
        cell = cells.setdefault(key, {m: {"correct": 0.0, "n": 0, "tokens": 0.0} for m in methods})
        for m in methods:
            system = systems[i] if m == "edge_prompt" else None
            if m == "task_lora":
                swap.apply(task_lora(g, adapt, lora_steps, lora_lr, seed=i))
            elif m == "loragen":
                swap.apply(gen_factors[i])
            elif m == "loragen_wrong":
                swap.apply(gen_factors[wrong[i]])
            acc, n_in = _score(model, tok, scored, system)
            swap.restore()
            c = cell[m]
            c["correct"] += acc * len(scored)
            c["n"] += len(scored)
            c["tokens"] += n_in * len(scored)
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    results: dict = {}
    for (suite, split), cell in cells.items():
        row = {m: {"accuracy": c["correct"] / c["n"], "n": c["n"], "mean_input_tokens": c["tokens"] / c["n"]}
               for m, c in cell.items()}
        if "edge_prompt" in row and "loragen" in row:
            row["compression_ratio"] = row["edge_prompt"]["mean_input_tokens"] / row["loragen"]["mean_input_tokens"]
        results.setdefault(suite, {})[split] = row
    return {"generator_id": g.generator_id, "data": str(data), "tasks": len(ids), "methods": list(methods),
            "weight_encoding": weight_encoding,
            "task_lora": {"steps": lora_steps, "lr": lora_lr, "rank": g.cfg.rank}, "results": results}


def format_report(report: dict) -> str:
    methods = report["methods"]
    head = ["suite", "split"] + methods + ["tokens w/ prompt", "tokens w/o", "compression"]
    rows = [head]
    for suite, splits in report["results"].items():
        for split, row in splits.items():
            r = [suite, split] + [f"{row[m]['accuracy']:.3f}" for m in methods]
            if "edge_prompt" in row and "loragen" in row:
                r += [f"{row['edge_prompt']['mean_input_tokens']:.1f}", f"{row['loragen']['mean_input_tokens']:.1f}",
                      f"{row['compression_ratio']:.1f}x"]
            else:
                r += ["-", "-", "-"]
            rows.append(r)
    widths = [max(len(str(x[c])) for x in rows) for c in range(len(head))]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_report(report: dict, out: str | os.PathLike) -> Path:
    with atomic_file(out, overwrite=True) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    return Path(out)
