"""`loragen train-edge`: teach an edge model the seen tasks WITH their system prompts.

The tiny presets start from random weights while the paper's edge models are pretrained; this
gives them the skills the tasks need, so that "edge + system prompt" is a meaningful baseline and
LoRA-Gen has something to specialise. Full fine-tuning, loss on the target tokens only, batches of
similar length under a token budget.
"""

from __future__ import annotations

import os
import random
from dataclasses import asdict, dataclass

import torch

from . import models
from .config import from_mapping, load_section
from .data import read_jsonl
from .errors import LoragenError
from .fsutil import atomic_dir, refuse_existing
from .training import IGNORE, lm_example, pad_lm_batch, param_groups, token_ce_sum, warmup_cosine


@dataclass
class EdgeTrainConfig:
    lr: float = 1e-3
    warmup_steps: int = 50
    weight_decay: float = 0.1
    tokens_per_step: int = 4096
    max_steps: int = 3000
    grad_clip: float = 1.0
    seed: int = 0
    # every step takes one length-sorted micro-batch from each suite (the records' ``suite`` field),
    # the token budget split evenly: suites of very different lengths then share each step's Adam
    # update instead of alternating between whole-suite steps
    balance_suites: bool = False

    @classmethod
    def load(cls, path: str | os.PathLike | None, overrides: dict | None = None) -> "EdgeTrainConfig":
        """The ``edge:`` section of a YAML config, with ``overrides`` (``None`` = not given) on top."""
        return from_mapping(cls, load_section(path, "edge"), f"{path}: edge" if path else "edge config", overrides)


def length_batches(lengths: list[int], tokens_per_step: int, rng: random.Random) -> list[list[int]]:
    """Shuffle, sort by length within windows, cut into batches under a padded-token budget."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches = []
    window = 1024
    for w in range(0, len(order), window):
        chunk = sorted(order[w:w + window], key=lambda i: lengths[i])
        cur: list[int] = []
        for i in chunk:
            if cur and (len(cur) + 1) * max(lengths[j] for j in cur + [i]) > tokens_per_step:
                batches.append(cur)
                cur = []
            cur.append(i)
        if cur:
            batches.append(cur)
    rng.shuffle(batches)
    return batches


def balanced_steps(suites: list[str], lengths: list[int], tokens_per_step: int, rng: random.Random):
    """Endless training steps, each a list of micro-batches (example indices): one length batch of
    every suite, under an even share of the padded-token budget; each suite's examples are all used
    once before any repeats."""
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(suites):
        groups.setdefault(s, []).append(i)
    budget = tokens_per_step // len(groups)
    queues: dict[str, list[list[int]]] = {k: [] for k in groups}
    while True:
        step = []
        for k, members in groups.items():
            if not queues[k]:
                queues[k] = [[members[j] for j in b] for b in length_batches([lengths[i] for i in members], budget, rng)]
            step.append(queues[k].pop())
        yield step


def accumulate_step(model, micro: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Backward of one step made of micro-batches (input ids, labels): the gradient of the step's
    mean target-token cross-entropy, as if it were one batch. Returns that loss."""
    n_total = sum(int((labels[:, 1:] != IGNORE).sum()) for _, labels in micro)
    loss = 0.0
    for input_ids, labels in micro:
        ce_sum, _ = token_ce_sum(model(input_ids=input_ids).logits, labels)
        (ce_sum / n_total).backward()
        loss += float(ce_sum.detach()) / n_total
    return loss


def train_edge(model_dir: str | os.PathLike, data: str | os.PathLike, out: str | os.PathLike,
               cfg: EdgeTrainConfig, progress: bool = True) -> dict:
    """Fine-tune all weights of the edge model in ``model_dir`` on prompt+input -> target; write ``out``."""
    out = refuse_existing(out)
    records = read_jsonl(data)
    model = models.load_model(model_dir, dtype=torch.float32)
    tok = models.load_tokenizer(model_dir)
    examples = [lm_example(tok, r["system"], r["input"], r["target"]) for r in records]
    lengths = [len(ids) for ids, _ in examples]
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    model.train()
    opt = torch.optim.AdamW(param_groups(model.named_parameters(), cfg.lr, cfg.weight_decay), lr=cfg.lr,
                            betas=(0.9, 0.999))
    sched = warmup_cosine(opt, cfg.warmup_steps, cfg.max_steps)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.max_steps, desc="train edge", unit="step")
    suites = [r.get("suite", "custom") if cfg.balance_suites else "all" for r in records]
    budget = cfg.tokens_per_step // len(set(suites))
    if max(lengths) > budget:
        raise LoragenError(f"an example has {max(lengths)} tokens, more than tokens_per_step / number of suites "
                           f"({budget})")
    steps = balanced_steps(suites, lengths, cfg.tokens_per_step, rng)
    losses = []
    for step in range(cfg.max_steps):
        micro = [pad_lm_batch([examples[i] for i in b], tok.pad_token_id) for b in next(steps)]
        opt.zero_grad(set_to_none=True)
        loss = accumulate_step(model, micro)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        losses.append(loss)
        if bar is not None:
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}", lr=f"{sched.get_last_lr()[0]:.2e}")
            bar.update()
    if bar is not None:
        bar.close()
    model.eval()
    final_loss = sum(losses[-20:]) / len(losses[-20:])
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        models.save_tokenizer(tok, tmp)
        import json

        (tmp / "loragen_edge_training.json").write_text(json.dumps(
            {"config": asdict(cfg), "data": str(data), "examples": len(examples),
             "final_loss": final_loss,
             # the mean loss of every 100 steps: a run stalled on a plateau shows here
             "loss_per_100_steps": [round(sum(c) / len(c), 4) for c in
                                    (losses[i:i + 100] for i in range(0, len(losses), 100))]}, indent=2) + "\n")
    return {"out": str(out), "steps": cfg.max_steps, "final_loss": final_loss}
