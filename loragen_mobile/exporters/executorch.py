"""ExecuTorch backend: ``model.pte`` + ``model.ptd`` (XNNPACK delegate), runnable by ExecuTorch's stock LLM runner.

Export: :class:`~.common.StaticCacheLM` (static KV cache in mutable buffers, one ``forward(tokens[1, s],
cache_position[s])`` method with a dynamic token count for prefill and decode) -> ``torch.export`` ->
tag every parameter as external data ("model") with ``delegate_external_constants_pass_unlifted`` ->
re-export -> ``to_edge_transform_and_lower`` (XnnpackPartitioner, plus the runner metadata as
``constant_methods``) -> ``to_executorch(external_constants=tag)``.

One data file: the stock runners take at most one (``TextLLMRunner(model, tokenizer, data_path)`` in
Python, ``create_text_llm_runner(..., data_path, ...)``), and ``executorch.runtime`` needs every key
the program names to be in the data it is given. The swap slots are ranges of ``model.ptd``: XNNPACK
keys delegated weights by the sha256 of their bytes at export time, so each slot records ``key``
(that digest) and ``offset`` (absolute byte offset of its data in ``model.ptd``). Swapping writes new
bytes at those offsets (same keys, same size): the program and the file layout never change.

Runner metadata (``constant_methods``, the names ``extension/llm/runner/constants.h`` reads):
``get_max_seq_len``, ``get_max_context_len`` (the KV-cache length), ``get_bos_id``, ``get_eos_ids``
(every EOS id of config.json, generation_config.json and the tokenizer), ``get_vocab_size``,
``use_kv_cache``, ``enable_dynamic_shape`` (prefill feeds the whole prompt in one call).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import torch

from ..errors import LoragenError
from ..fsutil import atomic_dir
from . import (Artifact, Exporter, Runner, check_swap, common_meta, copy_tokenizer,
               export_steps, make_slot, read_artifact, resolve_precision, sha256_bytes, sha256_file, tensor_bytes, write_artifact_json)

PTE = "model.pte"
DATA = "model.ptd"
DATA_TAG = "model"  # external-constant tag -> DATA
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


def _ptd_ranges(path: Path) -> dict[str, tuple[int, int]]:
    """key -> (absolute byte offset of its data in the file, size)."""
    from executorch.extension.flat_tensor.serialize.serialize import FlatTensorHeader, _deserialize_to_flat_tensor

    data = Path(path).read_bytes()
    try:
        header = FlatTensorHeader.from_bytes(data[8:])
        if not header.is_valid():
            raise ValueError("invalid FlatTensor header")
        ft = _deserialize_to_flat_tensor(data[: header.flatbuffer_offset + header.flatbuffer_size])
    except Exception as e:
        raise LoragenError(f"cannot read ExecuTorch data file {path}: {str(e).splitlines()[0]}") from None
    out = {}
    for nd in ft.named_data:
        seg = ft.segments[nd.segment_index]
        out[nd.key] = (header.segment_base_offset + seg.offset, seg.size)
    return out


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


def _patch_slots(art: Artifact, swap: dict[str, torch.Tensor], path: Path) -> list[dict]:
    """Write each swap tensor's bytes at its slot's offset of the data file at ``path`` (a copy of the
    artifact's); returns the slots with their new sha256."""
    slots = [dict(s) for s in art.slots]
    size = path.stat().st_size
    with open(path, "r+b") as f:
        for s in slots:
            if s["name"] not in swap:
                continue
            off = s.get("offset")
            if not isinstance(off, int) or off < 0 or off + s["nbytes"] > size:
                raise LoragenError(f"swap slot {s['name']} lies outside {art.file(DATA)}; artifact is corrupt")
            data = tensor_bytes(swap[s["name"]])
            f.seek(off)
            f.write(data)
            s["sha256"] = sha256_bytes(data)
    return slots


def runner_metadata(model, model_dir: Path, max_context: int) -> dict[str, object]:
    """The metadata methods ExecuTorch's LLM runner reads (extension/llm/runner/constants.h)."""
    cfg, gen = model.config, getattr(model, "generation_config", None)
    tok = None
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(model_dir))
    except Exception:  # a model directory without tokenizer files: config ids only
        tok = None

    def ids(v) -> list[int]:
        if v is None:
            return []
        return [int(x) for x in (v if isinstance(v, (list, tuple)) else [v])]

    eos: list[int] = []
    for v in (cfg.eos_token_id, getattr(gen, "eos_token_id", None), getattr(tok, "eos_token_id", None)):
        eos += [i for i in ids(v) if i not in eos]
    bos = next(iter(ids(cfg.bos_token_id) or ids(getattr(gen, "bos_token_id", None))
                    or ids(getattr(tok, "bos_token_id", None))), None)
    if not eos or bos is None:
        raise LoragenError(f"{model_dir}: config, generation_config and tokenizer name no "
                           f"{'EOS' if not eos else 'BOS'} token id; the ExecuTorch runner needs one")
    return {
        "get_max_seq_len": int(max_context),
        "get_max_context_len": int(max_context),
        "get_bos_id": bos,
        "get_eos_ids": eos,
        "get_vocab_size": int(cfg.vocab_size),
        "use_kv_cache": True,
        "enable_dynamic_shape": True,
    }


class ExecuTorchRunner(Runner):
    def __init__(self, artifact: Artifact, swap: dict[str, torch.Tensor]):
        super().__init__(artifact)
        from executorch.runtime import Runtime

        self._data = None
        data = artifact.file(DATA)
        try:
            if swap:  # a temporary copy of model.ptd with the new bytes at the slot offsets
                fd, name = tempfile.mkstemp(suffix=".ptd", prefix="loragen-swapped-")
                os.close(fd)
                self._data = Path(name)
                shutil.copyfile(data, self._data)
                _patch_slots(artifact, swap, self._data)
                data = self._data
            self._program = Runtime.get().load_program(str(artifact.file(PTE)), data_path=str(data))
        except LoragenError:
            self._cleanup()
            raise
        except Exception as e:
            self._cleanup()
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

    def _cleanup(self) -> None:
        p, self._data = getattr(self, "_data", None), None
        if p is not None:
            try:
                p.unlink(missing_ok=True)
            except Exception:
                pass

    def __del__(self):
        self._cleanup()


class ExecuTorchExporter(Exporter):
    name = "executorch"

    def export(self, model_dir, out_dir, *, max_context=128, quantize=None, targets=None, dtype="fp32",
               progress=True, adapter=None, all_logits=False) -> Artifact:
        from ..models import DEFAULT_TARGET_MODULES

        targets = tuple(targets or DEFAULT_TARGET_MODULES)
        if quantize not in QUANTIZE:
            raise LoragenError(f"executorch: unsupported quantization '{quantize}' (only unquantized export is available)")
        tdtype = resolve_precision(dtype)
        with atomic_dir(out_dir) as tmp, export_steps(6, "export executorch", progress) as bar:
            bar.set_postfix_str("load")
            model, max_context, swap_names, params = self._load_for_export(model_dir, tdtype, max_context, targets, adapter)
            metadata = runner_metadata(model, Path(model_dir), max_context)
            bar.update()

            bar.set_postfix_str("torch.export")
            from .common import StaticCacheLM

            wrapper = StaticCacheLM(model, max_context, all_logits=all_logits).eval()  # logits [1, 1, V] unless all_logits
            ep = _export(wrapper, max_context)
            bar.update()

            bar.set_postfix_str("tag external weights")
            from executorch.exir.passes.external_constants_pass import delegate_external_constants_pass_unlifted

            param_norm = {_norm(n) for n in params}

            def tag(node):
                n = node.target if node.op == "get_attr" else node.name
                n = _norm(str(n))
                if n.startswith("p_") and n[2:] in param_norm:
                    n = n[2:]
                return DATA_TAG if n in param_norm else None

            gm = ep.module()
            delegate_external_constants_pass_unlifted(module=gm, gen_tag_fn=tag)
            ep = _export(gm, max_context)
            bar.update()

            bar.set_postfix_str("lower (XNNPACK)")
            from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
            from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower

            edge = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()], constant_methods=metadata)
            et = edge.to_executorch(ExecutorchBackendConfig(external_constants=tag))
            bar.update()

            bar.set_postfix_str("write")
            with open(tmp / PTE, "wb") as f:
                et.write_to_file(f)
            et.write_tensor_data_to_file(str(tmp))
            written = sorted(p.name for p in tmp.glob("*.ptd"))
            if written != [DATA]:
                raise LoragenError(f"executorch export wrote data files {written}, expected [{DATA}]")
            bar.update()

            bar.set_postfix_str("swap slots")
            ranges = _ptd_ranges(tmp / DATA)
            keys_of = {}
            for n, p in params.items():
                keys_of.setdefault(hashlib.sha256(tensor_bytes(p.detach())).hexdigest(), set()).add(n)
            blob = (tmp / DATA).read_bytes()
            slots = []
            for n in swap_names:
                t = params[n].detach()
                raw = tensor_bytes(t)
                key = hashlib.sha256(raw).hexdigest()
                if len(keys_of[key]) > 1:
                    other = sorted(keys_of[key] - {n})[0]
                    raise LoragenError(f"swappable tensor {n} has the same bytes as {other} and would share its "
                                       f"key in {DATA}; re-initialise one of them before export")
                if key not in ranges:
                    raise LoragenError(f"{n} was not stored under its content key in {DATA} "
                                       f"(was it delegated to XNNPACK?)")
                off, size = ranges[key]
                if size != len(raw) or blob[off:off + size] != raw:
                    raise LoragenError(f"{DATA}: the data under {n}'s key is not its bytes")
                slots.append(make_slot(n, t, DATA, key=key, offset=off))
            del blob
            meta = common_meta(model, Path(model_dir), self.name, dtype, max_context, targets, adapter)
            meta.update({
                "quantization": quantize,
                "delegate": "xnnpack",
                "methods": {"forward": {"inputs": ["input_ids", "cache_position"], "outputs": ["logits"]},
                            **{k: {"constant": v} for k, v in metadata.items()}},
                "inputs": [{"name": "input_ids", "dtype": "int64", "shape": [1, "seq"]},
                           {"name": "cache_position", "dtype": "int64", "shape": ["seq"]}],
                "outputs": [{"name": "logits", "dtype": dtype_out(tdtype), "shape": [1, "seq" if all_logits else 1, model.config.vocab_size]}],
                "logits": "all" if all_logits else "last",
                "kv_cache": "static, in mutable buffers (memory-planned), max_context positions",
                "files": [PTE, DATA],
                "tokenizer_files": copy_tokenizer(Path(model_dir), tmp),
                "swap_slots": slots,
            })
            self._finish_export(tmp, meta)
            bar.update()
        return read_artifact(out_dir, self.name)

    def fingerprint(self, artifact_dir, meta) -> str:
        d = Path(artifact_dir)
        skip = [(int(s["offset"]), int(s["nbytes"])) for s in meta.get("swap_slots", [])]
        return sha256_bytes(b"executorch\0", sha256_file(d / PTE).encode(), sha256_file(d / DATA, skip).encode())

    def open_runner(self, artifact_dir, swap=None) -> Runner:
        art = read_artifact(artifact_dir, self.name)
        return ExecuTorchRunner(art, check_swap(art, swap))

    def apply_swap(self, artifact_dir, swap, out_dir) -> Artifact:
        art = read_artifact(artifact_dir, self.name)
        swap = check_swap(art, swap)
        if not swap:
            raise LoragenError("apply_swap needs at least one tensor")
        with atomic_dir(out_dir) as tmp:
            self._copy_artifact(art, tmp)
            slots = _patch_slots(art, swap, tmp / DATA)
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
