"""`loragen eval`: LoRA-Gen against the baselines and controls, per suite and split.

Methods (accuracy = exact match of the greedy output, or choice scoring for multiple choice):
  edge_prompt         the edge model with the system prompt in context
  edge_no_prompt      the edge model without it
  task_lora           a LoRA fine-tuned per task on that task's adaptation examples, without the prompt
  loragen             the LoRA generated from the task's description, merged, without the prompt
Controls (each says what LoRA-Gen's figure would be without reading the right description):
  loragen_other_task  the LoRA generated from the description of a task that shares no skill with
                      this one (another string rule; a tool set with none of the same intents)
  loragen_empty       the LoRA generated from an empty description (the meta tokens alone)
  mean_adapter        one adapter for every task of the suite and split: the mean of their
                      generated LoRAs (delta W averaged exactly, as a LoRA of the summed rank)

Each task's records are split in half: the first half adapts ``task_lora`` (the same number of
examples per task as the built-in evaluation files hold), the second half is scored for every
method. With ``train_data``, scored examples whose (description, input) also occur in training
are left out and counted (``excluded_train_overlap``). Accuracies carry their standard error over
tasks (examples of one task are not independent). Input tokens count everything the edge model
reads before answering.
"""

from __future__ import annotations

import json
import math
import os
from collections import OrderedDict
from pathlib import Path

import torch

from .. import quant
from ..data import group_by_task, read_jsonl, task_skills
from ..errors import LoragenError
from ..fsutil import atomic_file
from ..lora import LoraAdapter, merged_tensors
from ..training import left_pad, lm_example, pad_lm_batch, token_ce_sum
from .model import batched_lora
from .store import Generator, generate_factors, load_generator

METHODS = ("edge_prompt", "edge_no_prompt", "task_lora", "loragen", "loragen_other_task", "loragen_empty",
           "mean_adapter")
#: the per-task LoRA baseline's budget: the 8 adaptation examples, full batch, Adam at LORA_LR
LORA_STEPS, LORA_LR = 150, 1e-2


class _Swapper:
    """Load per-task weights into one edge model instance and restore the base afterwards.

    With ``encoding`` (a :mod:`loragen_mobile.quant` encoding), every weight a quantized export of
    that backend stores with it (:func:`~loragen_mobile.exporters.pipeline.stored_weights`: the
    decoder's linears and, on ExecuTorch and ONNX, the output head) holds what the artifact stores
    (``dequantize(quantize(W))``, a tied head as that backend treats it), and a merged LoRA gives
    ``dequantize(quantize(W + scale * B @ A))`` from the full-precision W, as a merged bundle."""

    def __init__(self, model, encoding=None):
        self.model = model
        self.base = {}
        self.encoding = encoding
        self.full: dict[str, torch.Tensor] = {}
        if encoding is not None:
            from ..exporters.pipeline import quantize_in_place, stored_weights

            # a weight whose input features are not a multiple of the encoding's group (Gemma's
            # o_proj at head_dim 48) stays full precision, as in the export
            stored = stored_weights(model, encoding)
            params = dict(model.named_parameters(remove_duplicate=False))
            self.full = {n: params[n].detach().clone() for n in stored}
            quantize_in_place(model, encoding, stored)
        self.params = dict(model.named_parameters())

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


def other_tasks(ids: list[str], suites: list[str]) -> dict[int, int]:
    """For each task, a task of the same suite that shares no skill with it (:func:`task_skills`):
    the first such one after it, cyclically; where none exists, the one sharing the fewest skills."""
    out = {}
    for i, t in enumerate(ids):
        members = [j for j in range(len(ids)) if suites[j] == suites[i] and j != i]
        if not members:
            out[i] = i
            continue
        members.sort(key=lambda j: (j - i) % len(ids))
        out[i] = min(members, key=lambda j: len(task_skills(t) & task_skills(ids[j])))
    return out


def mean_factors(factors: list[dict]) -> dict:
    """One adapter whose delta is the mean of the given adapters' deltas (scale-1 factors): the
    factors stacked along the rank, B divided by their number."""
    n = len(factors)
    return {k: (torch.cat([f[k][0] for f in factors], 0), torch.cat([f[k][1] for f in factors], 1) / n)
            for k in factors[0]}


def accuracy_stats(per_task: list[tuple[float, int]]) -> dict:
    """Accuracy over all scored examples and its standard error with tasks as clusters (the
    examples of one task share its description and are not independent)."""
    n = sum(k for _, k in per_task)
    p = sum(c for c, _ in per_task) / n
    t = len(per_task)
    if t > 1:
        se = math.sqrt(t / (t - 1) * sum((c - p * k) ** 2 for c, k in per_task)) / n
    else:
        se = math.sqrt(p * (1 - p) / n)
    return {"accuracy": p, "stderr": se, "n": n, "tasks": t}


def evaluate(g: Generator | str | os.PathLike, data: str | os.PathLike, methods=METHODS,
             lora_steps: int = LORA_STEPS, lora_lr: float = LORA_LR, progress: bool = True,
             weight_encoding: str | None = None, train_data: str | os.PathLike | None = None) -> dict:
    """Accuracy (with standard error) and mean input tokens per (suite, split, method); compression.
    ``weight_encoding``: evaluate the edge model with quantized decoder weights (see :class:`_Swapper`).
    ``train_data``: the training records; scored examples that occur there are left out."""
    encoding = quant.get(weight_encoding) if weight_encoding else None
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise LoragenError(f"unknown method(s) {bad}; choose from {', '.join(METHODS)}")
    records = read_jsonl(data)
    seen_inputs = {(r["system"], r["input"]) for r in read_jsonl(train_data)} if train_data else set()
    if not isinstance(g, Generator):
        g = load_generator(g)
    tasks = group_by_task(records)
    for tid, recs in tasks.items():
        if len(recs) < 2:
            raise LoragenError(f"task '{tid}' has {len(recs)} record; evaluation needs at least 2 per task "
                               "(the first half adapts the per-task LoRA, the second half is scored)")
    ids = list(tasks)
    systems = [tasks[t][0]["system"] for t in ids]
    groups = [(tasks[t][0].get("suite", "custom"), tasks[t][0].get("split", "all")) for t in ids]
    other = other_tasks(ids, [s for s, _ in groups])
    gen_factors: list = []
    if {"loragen", "loragen_other_task", "mean_adapter"} & set(methods):
        for s in range(0, len(systems), 16):
            gen_factors += generate_factors(g, systems[s:s + 16])
    empty = generate_factors(g, [""], allow_empty=True)[0] if "loragen_empty" in methods else None
    means = {}
    if "mean_adapter" in methods:
        for key in dict.fromkeys(groups):
            means[key] = mean_factors([f for f, k in zip(gen_factors, groups) if k == key])
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
        adapt = recs[:half]
        scored = [r for r in recs[half:] if (r["system"], r["input"]) not in seen_inputs]
        cell = cells.setdefault(groups[i], {"excluded": 0, "methods": {m: [] for m in methods}, "tokens": {}})
        cell["excluded"] += len(recs) - half - len(scored)
        if bar is not None:
            bar.update()
        if not scored:
            continue
        for m in methods:
            system = systems[i] if m == "edge_prompt" else None
            if m == "task_lora":
                swap.apply(task_lora(g, adapt, lora_steps, lora_lr, seed=i))
            elif m == "loragen":
                swap.apply(gen_factors[i])
            elif m == "loragen_other_task":
                swap.apply(gen_factors[other[i]])
            elif m == "loragen_empty":
                swap.apply(empty)
            elif m == "mean_adapter":
                swap.apply(means[groups[i]])
            acc, n_in = _score(model, tok, scored, system)
            swap.restore()
            cell["methods"][m].append((acc * len(scored), len(scored)))
            cell["tokens"][m] = cell["tokens"].get(m, 0.0) + n_in * len(scored)
    if bar is not None:
        bar.close()
    results: dict = {}
    for (suite, split), cell in cells.items():
        row: dict = {}
        for m, per_task in cell["methods"].items():
            if per_task:
                row[m] = accuracy_stats(per_task)
                row[m]["mean_input_tokens"] = cell["tokens"][m] / row[m]["n"]
        row["excluded_train_overlap"] = cell["excluded"]
        if "edge_prompt" in row and "loragen" in row:
            row["compression_ratio"] = row["edge_prompt"]["mean_input_tokens"] / row["loragen"]["mean_input_tokens"]
        results.setdefault(suite, {})[split] = row
    return {"generator_id": g.generator_id, "data": str(data), "tasks": len(ids), "methods": list(methods),
            "weight_encoding": weight_encoding, "train_data": str(train_data) if train_data else None,
            "other_task": {ids[i]: ids[j] for i, j in other.items()},
            "task_lora": {"steps": lora_steps, "lr": lora_lr, "rank": g.cfg.rank}, "results": results}


def format_report(report: dict) -> str:
    methods = report["methods"]
    head = ["suite", "split"] + methods + ["tokens w/ prompt", "tokens w/o", "compression", "left out (in training)"]
    rows = [head]
    for suite, splits in report["results"].items():
        for split, row in splits.items():
            r = [suite, split] + [f"{row[m]['accuracy']:.3f}±{row[m]['stderr']:.3f}" if m in row else "-"
                                  for m in methods]
            if "edge_prompt" in row and "loragen" in row:
                r += [f"{row['edge_prompt']['mean_input_tokens']:.1f}", f"{row['loragen']['mean_input_tokens']:.1f}",
                      f"{row['compression_ratio']:.1f}x"]
            else:
                r += ["-", "-", "-"]
            rows.append(r + [str(row.get("excluded_train_overlap", 0))])
    widths = [max(len(str(x[c])) for x in rows) for c in range(len(head))]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


LABELS = {"edge_prompt": "edge + prompt", "edge_no_prompt": "edge, no prompt", "task_lora": "per-task LoRA",
          "loragen": "LoRA-Gen, no prompt", "loragen_other_task": "other task's description",
          "loragen_empty": "empty description", "mean_adapter": "one mean adapter"}


def _markdown(head: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] +
                     ["| " + " | ".join(cells) + " |" for cells in rows])


def _acc(stat: dict) -> str:
    return f"{stat['accuracy']:.3f} ± {stat['stderr']:.3f}"


def format_markdown(reports: list[tuple[str, dict]]) -> str:
    """One Markdown table for named reports (name, report): accuracy ± standard error per method,
    input tokens, compression and the scored / left-out example counts, per suite and split."""
    methods = [m for m in METHODS if any(m in r["methods"] for _, r in reports)]
    head = ["edge", "suite", "split"] + [LABELS[m] for m in methods] + [
        "tokens with / without prompt", "compression", "scored (tasks)", "left out (in training)"]
    lines = []
    for name, rep in reports:
        for suite, splits in rep["results"].items():
            for split, row in splits.items():
                cells = [name, suite, split] + [_acc(row[m]) if m in row else "-" for m in methods]
                if "compression_ratio" in row:
                    cells += [f"{row['edge_prompt']['mean_input_tokens']:.1f} / {row['loragen']['mean_input_tokens']:.1f}",
                              f"{row['compression_ratio']:.1f}x"]
                else:
                    cells += ["-", "-"]
                first = next(row[m] for m in methods if m in row)
                cells += [f"{first['n']} ({first['tasks']})", str(row["excluded_train_overlap"])]
                lines.append(cells)
    return _markdown(head, lines)


def format_seed_table(rows: list[tuple[str, dict, list[dict]]], split: str = "unseen", goal: float = 0.02) -> str:
    """One Markdown table of LoRA-Gen over generator seeds: for each (edge name, seed-0 report with
    ``edge_prompt``, reports of the other seeds) and suite, each seed's accuracy ± its standard error
    over tasks, the mean over seeds ± the standard error of that mean (over seeds), edge + prompt, and
    the gap between them against the goal (LoRA-Gen at least edge + prompt - ``goal``)."""
    import statistics

    n = max((1 + len(others) for _, _, others in rows), default=1)
    head = ["edge", "suite"] + [f"LoRA-Gen, seed {s}" for s in range(n)] + [
        f"mean of {n} seeds", "edge + prompt", f"gap (goal >= -{goal:.2f})"]
    lines = []
    for name, base, others in rows:
        for suite, splits in base["results"].items():
            runs = [r["results"][suite][split]["loragen"] for r in [base, *others]]
            accs = [r["accuracy"] for r in runs]
            mean = statistics.fmean(accs)
            se = statistics.stdev(accs) / math.sqrt(len(accs)) if len(accs) > 1 else float("nan")
            ref = splits[split]["edge_prompt"]["accuracy"]
            gap = mean - ref
            cells = [name, suite] + [_acc(r) for r in runs] + ["-"] * (n - len(runs))
            cells += [f"{mean:.3f} ± {se:.3f}", _acc(splits[split]["edge_prompt"]),
                      f"{gap:+.3f} ({'met' if gap >= -goal else 'missed'})"]
            lines.append(cells)
    return _markdown(head, lines)


def format_quant_table(rows: list[tuple[str, dict, list[dict]]], split: str = "unseen") -> str:
    """One Markdown table of LoRA-Gen with quantized edge weights: for each (edge name, fp32 report,
    reports of ``loragen eval --weight-encoding``), one row per edge weight encoding with LoRA-Gen and
    the other-task control ± their standard errors per suite, and LoRA-Gen's change from fp32 in
    points."""
    suites = [s for s in ("tools", "reasoning") if any(s in base["results"] for _, base, _ in rows)]
    head = ["edge", "edge weights"] + [x for s in suites for x in (f"{s}: LoRA-Gen", f"{s}: other task's description")] \
        + [f"{s}: LoRA-Gen minus fp32 (points)" for s in suites]
    lines = []
    for name, base, quantized in rows:
        for rep in [base, *quantized]:
            res = {s: rep["results"][s][split] for s in suites}
            ref = {s: base["results"][s][split]["loragen"]["accuracy"] for s in suites}
            cells = [name, f"`{rep['weight_encoding']}`" if rep["weight_encoding"] else "fp32"]
            cells += [_acc(res[s][m]) for s in suites for m in ("loragen", "loragen_other_task")]
            cells += ["-" if rep is base else f"{100 * (res[s]['loragen']['accuracy'] - ref[s]):+.1f}" for s in suites]
            lines.append(cells)
    return _markdown(head, lines)


def write_report(report: dict, out: str | os.PathLike) -> Path:
    with atomic_file(out, overwrite=True) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    return Path(out)
