"""ExecuTorch backend: ``model.pte`` + ``foundation.ptd`` + ``swap.ptd`` (XNNPACK delegate).

Export: :class:`~.common.StaticCacheLM` (static KV cache in mutable buffers, one ``forward`` method
with a dynamic token count for prefill and decode) -> ``torch.export`` -> tag every parameter as
external ("swap" for the LoRA target weights, "foundation" for the rest) with
``delegate_external_constants_pass_unlifted`` -> re-export -> ``to_edge_transform_and_lower``
(XnnpackPartitioner) -> ``to_executorch(external_constants=tag)``.

Keys: XNNPACK keys delegated weights by the sha256 of their bytes at export time, so each swap slot
records ``key`` (that digest). Swapping writes new bytes under the same keys; the program never
changes. On phones the C++ runtime loads both ``.ptd`` files (merged data map); the Python runtime
takes one data file, so the host runner merges foundation + swap tensors into one temporary ``.ptd``.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import torch

from ..errors import LoragenError
from ..fsutil import atomic_dir
from . import (Artifact, Exporter, Runner, check_swap, common_meta, copy_tokenizer,
               export_steps, make_slot, read_artifact, resolve_precision, sha256_bytes, sha256_file, tensor_bytes, write_artifact_json)

PTE = "model.pte"
FOUNDATION = "foundation.ptd"
SWAP = "swap.ptd"
QUANTIZE = (None,)  # weight-only int8/int4 (XNNPACK/torchao) is not implemented yet


def _norm(name: str) -> str:
    return name.replace(".", "_")


def _read_ptd(path: Path):
    from executorch.exir._serialize._cord import Cord
    from executorch.extension.flat_tensor.serialize.serialize import FlatTensorSerializer

    try:
        return FlatTensorSerializer().deserialize(Cord(Path(path).read_bytes()))
    except Exception as e:  # corrupt flatbuffer
        raise LoragenError(f"cannot read ExecuTorch data file {path}: {e}") from None


def _entries(payload) -> dict[str, tuple[bytes, object, int]]:
    """key -> (bytes, tensor_layout, alignment)."""
    out = {}
    for key, e in payload.named_data.items():
        out[key] = (bytes(payload.buffers[e.buffer_index]), e.tensor_layout, e.alignment)
    return out


def _write_ptd(entries: dict[str, tuple[bytes, object, int]], path: Path) -> None:
    from executorch.exir._serialize.data_serializer import DataEntry, DataPayload
    from executorch.extension.flat_tensor.serialize.serialize import FlatTensorConfig, FlatTensorSerializer

    buffers, named = [], {}
    for key, (data, layout, align) in entries.items():
        named[key] = DataEntry(len(buffers), max(int(align or 16), 16), layout)
        buffers.append(data)
    blob = FlatTensorSerializer(FlatTensorConfig()).serialize(DataPayload(buffers=buffers, named_data=named))
    Path(path).write_bytes(bytes(blob))


class ExecuTorchRunner(Runner):
    def __init__(self, artifact: Artifact, swap: dict[str, torch.Tensor]):
        super().__init__(artifact)
        from executorch.runtime import Runtime

        slots = artifact.slot_map
        entries = _entries(_read_ptd(artifact.file(FOUNDATION)))
        swap_entries = _entries(_read_ptd(artifact.file(SWAP)))
        for name, t in swap.items():
            key = slots[name]["key"]
            if key not in swap_entries:
                raise LoragenError(f"{artifact.file(SWAP)} has no entry {key[:12]}... for swap slot {name}")
            _, layout, align = swap_entries[key]
            swap_entries[key] = (tensor_bytes(t), layout, align)
        dup = set(entries) & set(swap_entries)
        if dup:
            raise LoragenError(f"key(s) present in both {FOUNDATION} and {SWAP}: {sorted(dup)[:2]}")
        entries.update(swap_entries)
        fd, name = tempfile.mkstemp(suffix=".ptd", prefix="loragen-merged-")
        os.close(fd)
        self._data = Path(name)
        try:
            _write_ptd(entries, self._data)
            self._program = Runtime.get().load_program(str(artifact.file(PTE)), data_path=str(self._data))
        except LoragenError:
            self._data.unlink(missing_ok=True)
            raise
        except Exception as e:
            self._data.unlink(missing_ok=True)
            raise LoragenError(f"ExecuTorch cannot load {artifact.path}: {str(e).splitlines()[0]}") from None
        self._reset()

    def _reset(self) -> None:
        # A fresh method instance gets fresh (zeroed) memory-planned KV-cache buffers; stale entries
        # past the current position are masked anyway.
        self._method = self._program.load_method("forward")

    def _forward(self, ids, start):
        x = torch.tensor([ids], dtype=torch.long)
        pos = torch.arange(start, start + len(ids), dtype=torch.long)
        out = self._method.execute([x, pos])
        return out[0][0].float()

    def __del__(self):
        p = getattr(self, "_data", None)
        if p is not None:
            try:
                p.unlink(missing_ok=True)
            except Exception:
                pass


class ExecuTorchExporter(Exporter):
    name = "executorch"

    def export(self, model_dir, out_dir, *, max_context=128, quantize=None, targets=None, dtype="fp32",
               progress=True, adapter=None) -> Artifact:
        from ..models import DEFAULT_TARGET_MODULES

        targets = tuple(targets or DEFAULT_TARGET_MODULES)
        if quantize not in QUANTIZE:
            raise LoragenError(f"executorch: unsupported quantization '{quantize}' (only unquantized export is available)")
        tdtype = resolve_precision(dtype)
        with atomic_dir(out_dir) as tmp, export_steps(6, "export executorch", progress) as bar:
            bar.set_postfix_str("load")
            model, max_context, swap_names, params = self._load_for_export(model_dir, tdtype, max_context, targets, adapter)
            bar.update()

            bar.set_postfix_str("torch.export")
            from .common import StaticCacheLM

            wrapper = StaticCacheLM(model, max_context).eval()
            ep = _export(wrapper, max_context)
            bar.update()

            bar.set_postfix_str("tag external weights")
            from executorch.exir.passes.external_constants_pass import delegate_external_constants_pass_unlifted

            swap_norm = {_norm(n) for n in swap_names}
            param_norm = {_norm(n) for n in params}

            def tag(node):
                n = node.target if node.op == "get_attr" else node.name
                n = _norm(str(n))
                if n.startswith("p_") and n[2:] in param_norm:
                    n = n[2:]
                if n in swap_norm:
                    return "swap"
                if n in param_norm:
                    return "foundation"
                return None

            gm = ep.module()
            delegate_external_constants_pass_unlifted(module=gm, gen_tag_fn=tag)
            ep = _export(gm, max_context)
            bar.update()

            bar.set_postfix_str("lower (XNNPACK)")
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
            from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower

            edge = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()])
            et = edge.to_executorch(ExecutorchBackendConfig(external_constants=tag))
            bar.update()

            bar.set_postfix_str("write")
            with open(tmp / PTE, "wb") as f:
                et.write_to_file(f)
            et.write_tensor_data_to_file(str(tmp))
            for f in ("swap.ptd", "foundation.ptd"):
                if not (tmp / f).is_file():
                    raise LoragenError(f"executorch export produced no {f}")
            bar.update()

            bar.set_postfix_str("swap slots")
            swap_keys = set(_read_ptd(tmp / SWAP).named_data)
            slots, seen = [], {}
            for n in swap_names:
                t = params[n].detach()
                key = hashlib.sha256(tensor_bytes(t)).hexdigest()
                if key in seen:
                    raise LoragenError(f"swappable tensors {seen[key]} and {n} have identical bytes and would "
                                       f"share one key in {SWAP}; re-initialise one of them before export")
                if key not in swap_keys:
                    raise LoragenError(f"{n} was not stored under its content key in {SWAP} "
                                       f"(was it delegated to XNNPACK?)")
                seen[key] = n
                slots.append(make_slot(n, t, SWAP, key=key))
            if len(swap_keys) != len(slots):
                raise LoragenError(f"{SWAP} holds {len(swap_keys)} tensors, expected {len(slots)}")
            meta = common_meta(model, Path(model_dir), self.name, dtype, max_context, targets, adapter)
            meta.update({
                "quantization": quantize,
                "delegate": "xnnpack",
                "methods": {"forward": {"inputs": ["input_ids", "cache_position"], "outputs": ["logits"]}},
                "inputs": [{"name": "input_ids", "dtype": "int64", "shape": [1, "seq"]},
                           {"name": "cache_position", "dtype": "int64", "shape": ["seq"]}],
                "outputs": [{"name": "logits", "dtype": dtype_out(tdtype), "shape": [1, "seq", model.config.vocab_size]}],
                "kv_cache": "static, in mutable buffers (memory-planned), max_context positions",
                "files": [PTE, FOUNDATION, SWAP],
                "tokenizer_files": copy_tokenizer(Path(model_dir), tmp),
                "swap_slots": slots,
            })
            self._finish_export(tmp, meta)
            bar.update()
        return read_artifact(out_dir, self.name)

    def fingerprint(self, artifact_dir, meta) -> str:
        d = Path(artifact_dir)
        return sha256_bytes(b"executorch\0", sha256_file(d / PTE).encode(), sha256_file(d / FOUNDATION).encode())

    def open_runner(self, artifact_dir, swap=None) -> Runner:
        art = read_artifact(artifact_dir, self.name)
        return ExecuTorchRunner(art, check_swap(art, swap))

    def apply_swap(self, artifact_dir, swap, out_dir) -> Artifact:
        art = read_artifact(artifact_dir, self.name)
        swap = check_swap(art, swap)
        if not swap:
            raise LoragenError("apply_swap needs at least one tensor")
        entries = _entries(_read_ptd(art.file(SWAP)))
        slots = [dict(s) for s in art.slots]
        for s in slots:
            if s["name"] in swap:
                if s["key"] not in entries:
                    raise LoragenError(f"{art.file(SWAP)} has no entry for swap slot {s['name']}")
                data = tensor_bytes(swap[s["name"]])
                _, layout, align = entries[s["key"]]
                entries[s["key"]] = (data, layout, align)
                s["sha256"] = sha256_bytes(data)
        with atomic_dir(out_dir) as tmp:
            self._copy_artifact(art, tmp)
            (tmp / SWAP).unlink()
            _write_ptd(entries, tmp / SWAP)
            meta = dict(art.meta)
            meta["swap_slots"] = slots
            meta["swapped_from"] = art.meta["fingerprint"]
            write_artifact_json(tmp, {k: v for k, v in meta.items() if k != "schema"})
        return read_artifact(out_dir, self.name)


def dtype_out(t: torch.dtype) -> str:
    return str(t).replace("torch.", "")


def _export(module, max_context: int):
    from torch.export import Dim

    seq = Dim("seq", min=1, max=max_context)
    ids = torch.zeros((1, 4), dtype=torch.long)
    pos = torch.arange(4, dtype=torch.long)
    with torch.no_grad():
        return torch.export.export(module, (ids, pos), dynamic_shapes=({1: seq}, {0: seq}), strict=False)


EXPORTER = ExecuTorchExporter()
