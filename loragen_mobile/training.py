"""Pieces shared by every training loop: tokenising records, the optimiser and its schedule,
atomic checkpoints with RNG state, and the distributed context under torchrun."""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import LoragenError

IGNORE = -100


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def chat_messages(system: str | None, user_input: str, target: str | None = None) -> list[dict]:
    """The chat messages of one record (the system message only when there is a system prompt)."""
    msgs = [{"role": "system", "content": system}] if system else []
    msgs.append({"role": "user", "content": user_input})
    if target is not None:
        msgs.append({"role": "assistant", "content": target})
    return msgs


def render_ids(tokenizer, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
    """Token ids of ``messages`` rendered with the tokenizer's chat template (the prompt contract)."""
    if not tokenizer.chat_template:
        raise LoragenError("the tokenizer has no chat template (tokenizer_config.json 'chat_template')",
                           code="template")
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                              tokenize=True, return_dict=False))


def prompt_ids(tokenizer, system: str | None, user_input: str) -> list[int]:
    """What the edge model reads before it answers: the chat template applied to the record."""
    return render_ids(tokenizer, chat_messages(system, user_input))


def lm_example(tokenizer, system: str | None, user_input: str, target: str | None) -> tuple[list[int], int]:
    """Token ids of the rendered conversation (prompt, then the target as the assistant's turn)
    and the index where the target starts; with ``target=None``, the prompt alone."""
    ids = prompt_ids(tokenizer, system, user_input)
    start = len(ids)
    if target is not None:
        full = render_ids(tokenizer, chat_messages(system, user_input, target), add_generation_prompt=False)
        if full[:start] != ids:
            raise LoragenError("the chat template does not render the prompt as a prefix of the conversation",
                               code="template")
        ids = full
    return ids, start


def pad_lm_batch(examples: list[tuple[list[int], int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded input ids and labels (loss only on target tokens and EOS)."""
    T = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), T), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), T), IGNORE, dtype=torch.long)
    for i, (ids, start) in enumerate(examples):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, start: len(ids)] = torch.tensor(ids[start:])
    return input_ids, labels


def length_groups(lengths: list[int], max_groups: int = 3, group_tokens: int = 256) -> list[list[int]]:
    """Split the indices of ``lengths`` into at most ``max_groups`` groups of similar length, each
    to be padded to its own longest: the split (contiguous in length order) with the fewest padded
    tokens, counting ``group_tokens`` for each group's extra forward pass. A batch that mixes short
    reasoning descriptions with long tool definitions then stops paying for padding."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    ls = [lengths[i] for i in order]
    n = len(ls)
    # cost[g][j]: the cheapest split of the j shortest into g groups; cut[g][j] where its last group starts
    cost = [[math.inf] * (n + 1) for _ in range(max_groups + 1)]
    cut = [[0] * (n + 1) for _ in range(max_groups + 1)]
    cost[0][0] = 0
    for g in range(1, max_groups + 1):
        for j in range(1, n + 1):
            for i in range(g - 1, j):
                c = cost[g - 1][i] + (j - i) * ls[j - 1] + group_tokens
                if c < cost[g][j]:
                    cost[g][j], cut[g][j] = c, i
    g = min(range(1, max_groups + 1), key=lambda k: cost[k][n]) if n else 0
    groups, j = [], n
    while g:
        i = cut[g][j]
        groups.append(order[i:j])
        j, g = i, g - 1
    return groups[::-1]


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, T - len(s):] = torch.tensor(s)
        mask[i, T - len(s):] = 1
    return ids, mask


def token_ce_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Sum of next-token cross-entropy over labelled positions, and their count."""
    lg = logits[:, :-1].float().reshape(-1, logits.shape[-1])
    lb = labels[:, 1:].reshape(-1)
    return torch.nn.functional.cross_entropy(lg, lb, ignore_index=IGNORE, reduction="sum"), int((lb != IGNORE).sum())


def param_groups(named_params, lr: float, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only (not on biases, norms or BatchNorm parameters)."""
    decay, no_decay = [], []
    for _, p in named_params:
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [g for g in ({"params": decay, "lr": lr, "weight_decay": weight_decay},
                        {"params": no_decay, "lr": lr, "weight_decay": 0.0}) if g["params"]]


def warmup_cosine(optimizer, warmup: int, total: int):
    """Linear warmup to the base learning rate, then cosine decay to zero at ``total`` steps."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def save_checkpoint(state: dict, path: Path) -> None:
    """torch.save to a temporary file beside ``path``, then rename: never a half checkpoint."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: Path) -> dict:
    if not path.is_file():
        raise LoragenError(f"no checkpoint to resume from at {path}")
    try:
        return torch.load(path, weights_only=False)
    except Exception as e:  # a truncated or foreign file
        raise LoragenError(f"{path} is not a readable checkpoint: {str(e).splitlines()[0]}") from None


@dataclass
class Dist:
    """The process group context under torchrun (rank 0 of 1 otherwise)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def init(cls) -> "Dist":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo")
        return cls(dist.get_rank(), dist.get_world_size())

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            torch.distributed.all_reduce(x)
        return x

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.world > 1 and torch.distributed.is_initialized():
            # gloo's worker thread may still be releasing the last collective's work, which needs the
            # GIL; destroying the group joins that thread while this one holds the GIL, and both then
            # wait forever (seen once under torchrun with 2 CPU ranks, in the torch 2.13 destructor).
            # Hand the GIL over first.
            time.sleep(0.2)
            torch.distributed.destroy_process_group()
