"""Tensors made on access: how multi-GB weights move through the pipeline one tensor at a time."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch


class LazyTensors(Mapping):
    """Name -> tensor, each tensor made (read, merged, checked) on access and not kept: a caller
    that handles one tensor at a time holds one tensor, not the model's swappable weights."""

    def __init__(self, names: Iterable[str], get: Callable[[str], torch.Tensor], finite: bool = False):
        self._names = list(names)
        self._known = set(self._names)
        self._get = get
        #: every value is known to be finite and within the bundle bounds (a verified bundle's)
        self.finite = finite

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._known:
            raise KeyError(name)
        return self._get(name)

    def __contains__(self, name) -> bool:
        return name in self._known

    def __iter__(self):
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


class Parts:
    """The parts of one weight computed together (a quantized weight's codes and scales), handed out
    one part at a time: ``get(weight, part)`` computes ``make(weight)`` on the first request and keeps
    only the parts not handed out yet."""

    def __init__(self, make: Callable[[str], dict[str, torch.Tensor]]):
        self._make = make
        self._pending: dict[str, dict[str, torch.Tensor]] = {}

    def get(self, weight: str, part: str) -> torch.Tensor:
        if weight not in self._pending:
            self._pending[weight] = dict(self._make(weight))
        t = self._pending[weight].pop(part)
        if not self._pending[weight]:
            del self._pending[weight]
        return t


def mapped_tensor(path, offset: int, dtype, shape, copy_on_write: bool = False) -> torch.Tensor:
    """A read-only tensor over bytes [offset, offset + size) of a file, without reading or copying
    them: its pages load when it is first used and are shared with the page cache. For files the
    caller already trusts (a verified bundle, an artifact's own data). ``copy_on_write``: writable,
    a written page becomes the process's own copy and the file is never changed."""
    import warnings

    import numpy as np

    from . import dtypes

    d = dtypes.lookup(dtype)
    count = 1
    for n in shape:
        count *= n
    if count == 0:
        return torch.empty(list(shape), dtype=d.torch)
    stored = np.dtype(d.numpy) if d.numpy is not None else np.dtype("<u2")  # bfloat16: its bits
    a = np.memmap(path, dtype=stored, mode="c" if copy_on_write else "r", offset=offset, shape=tuple(shape))
    with warnings.catch_warnings():  # torch warns that the view is read-only: it is meant to be
        warnings.simplefilter("ignore", UserWarning)
        t = torch.from_numpy(a)
    return t if d.numpy is not None else t.view(d.torch)
