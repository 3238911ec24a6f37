"""Host runtime for an artifact: the decoding loop every backend's runner shares (KV cache, greedy
or sampled, streamed, ending at the artifact's EOS ids). Backends implement ``_forward``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from ..errors import LoragenError
from .artifact import Artifact


class Runner:
    """Host runtime for an artifact: decoding with the KV cache (greedy or sampled, streamed,
    ending at the artifact's EOS ids).

    Subclasses implement ``_forward(ids: list[int], start: int) -> Tensor[rows, vocab]``: the rows the
    graph returns (the last position only by default; every position for an ``all_logits`` export).
    ``prefill`` and ``decode`` both return the last row, float32 ``[vocab]``.
    """

    max_context: int

    def __init__(self, artifact: Artifact):
        self.artifact = artifact
        self.max_context = int(artifact.meta["max_context"])
        self.pos = 0

    def reset(self) -> None:
        self.pos = 0
        self._reset()

    #: whether :meth:`swap` replaces the swap slots of this loaded runner (else: open a new runner)
    swaps_in_place = False

    def swap(self, tensors) -> None:
        """Replace the values of the swap slots named in ``tensors`` (parameter name -> tensor, e.g.
        :func:`loragen_mobile.bundle.bundle_swap`) in this loaded runner, without loading the model
        again; the KV cache is reset. Only runners with ``swaps_in_place`` can."""
        raise LoragenError(f"{self.artifact.backend} runners cannot swap weights in place; open a new runner "
                           "with the swap instead", code="usage")

    def set_adapter(self, adapter) -> None:
        """Run the loaded program with ``adapter`` (a :class:`~loragen_mobile.lora.LoraAdapter`, e.g.
        :func:`loragen_mobile.bundle.bundle_adapter`; ``None``: the base model) in its run-time adapter
        slots, without loading it again; the KV cache is reset. Only artifacts exported with adapter
        slots (``loragen export --adapter-slots R``, ExecuTorch or ONNX) have them."""
        raise LoragenError(f"artifact {self.artifact.path} has no adapter slots (export it with --adapter-slots RANK, "
                           "ExecuTorch or ONNX)", code="usage")

    def _reset(self) -> None:
        """Hook: the backend's part of :meth:`reset` (none where cache entries at and past ``pos``
        are masked until overwritten)."""

    def _forward(self, ids: list[int], start: int) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def _feed(self, ids: list[int]) -> torch.Tensor:
        ids = [int(i) for i in ids]
        if not ids:
            raise LoragenError("cannot run an empty token sequence")
        vocab = int(self.artifact.meta["vocab_size"])
        if min(ids) < 0 or max(ids) >= vocab:
            raise LoragenError(f"token ids must lie in [0, {vocab})")
        if self.pos + len(ids) > self.max_context:
            raise LoragenError(
                f"sequence of {self.pos + len(ids)} tokens exceeds the artifact's max context {self.max_context}"
            )
        logits = self._forward(ids, self.pos)
        self.pos += len(ids)
        return logits[-1]

    def prefill(self, ids: list[int]) -> torch.Tensor:
        """Reset the cache and run the prompt; returns the float32 logits of its last position ``[vocab]``."""
        self.reset()
        return self._feed(ids)

    def decode(self, token: int) -> torch.Tensor:
        """Append one token to the cache; returns float32 logits ``[vocab]``."""
        return self._feed([token])

    @property
    def eos_ids(self) -> frozenset[int]:
        """The token ids that end a generation (artifact.json ``eos_token_ids``)."""
        return artifact_eos_ids(self.artifact.meta)

    def stream(self, ids: list[int], max_new_tokens: int, sampling: "Sampling | None" = None,
               stop_at_eos: bool = True) -> Iterator[int]:
        """Decode with the KV cache, yielding each new token id as soon as it is chosen.

        Greedy (argmax) unless ``sampling`` is given. Stops after an EOS id (which is yielded, as
        Hugging Face's ``generate`` keeps it) or after ``max_new_tokens`` tokens.
        """
        if max_new_tokens < 1:
            raise LoragenError("max_new_tokens must be at least 1", code="usage")
        if len(ids) + max_new_tokens > self.max_context:
            raise LoragenError(
                f"prompt ({len(ids)}) + max_new_tokens ({max_new_tokens}) exceeds max context {self.max_context}"
            )
        pick = sampling.picker() if sampling is not None else _argmax
        eos = self.eos_ids if stop_at_eos else frozenset()
        logits = _last_row(self.prefill(ids))

        def tokens() -> Iterator[int]:
            nonlocal logits
            for i in range(max_new_tokens):
                t = pick(logits)
                yield t
                if t in eos or i + 1 == max_new_tokens:
                    return
                logits = _last_row(self.decode(t))

        return tokens()

    def generate(self, ids: list[int], max_new_tokens: int, sampling: "Sampling | None" = None,
                 stop_at_eos: bool = True) -> list[int]:
        """The new tokens of :meth:`stream` as a list (greedy unless ``sampling`` is given; ends at EOS)."""
        return list(self.stream(ids, max_new_tokens, sampling=sampling, stop_at_eos=stop_at_eos))


def _last_row(logits: torch.Tensor) -> torch.Tensor:
    return logits[-1] if logits.dim() == 2 else logits


def _argmax(logits: torch.Tensor) -> int:
    return int(torch.argmax(logits))


def artifact_eos_ids(meta: dict) -> frozenset[int]:
    ids = meta.get("eos_token_ids", meta.get("eos_token_id"))
    if ids is None:
        return frozenset()
    return frozenset(int(i) for i in (ids if isinstance(ids, list) else [ids]))


@dataclass(frozen=True)
class Sampling:
    """Multinomial sampling settings: temperature, nucleus (top-p) and the seed of the random draws.

    The warpers are transformers' own (``TemperatureLogitsWarper``, ``TopPLogitsWarper``) and the
    draws come from a ``torch.Generator`` seeded with ``seed``, so a run equals Hugging Face's
    ``generate(do_sample=True, temperature=..., top_p=..., top_k=0)`` after ``torch.manual_seed(seed)``.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self):
        import math

        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise LoragenError(f"temperature must be a positive number, got {self.temperature}", code="usage")
        if not (0 < self.top_p <= 1):
            raise LoragenError(f"top-p must lie in (0, 1], got {self.top_p}", code="usage")

    def picker(self):
        """A fresh token chooser (its own random generator) for one generation."""
        from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

        warpers = LogitsProcessorList([TemperatureLogitsWarper(self.temperature)])
        if self.top_p < 1:
            warpers.append(TopPLogitsWarper(self.top_p))
        gen = torch.Generator().manual_seed(int(self.seed))
        none = torch.zeros((1, 0), dtype=torch.long)

        def pick(logits: torch.Tensor) -> int:
            scores = warpers(none, logits.float().reshape(1, -1))
            return int(torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=gen)[0, 0])

        return pick
