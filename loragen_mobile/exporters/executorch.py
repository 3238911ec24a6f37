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
import shutil
import tempfile
from pathlib import Path

import torch

from ..errors import LoragenError
from .artifact import Artifact, SwapSlot, dtype_name, slot_corrupt, tensor_bytes
from .common import StaticCacheLM
from .pipeline import ExportJob, Exporter, graph_name
from .runner import Runner

PTE = "model.pte"
DATA = "model.ptd"
DATA_TAG = "model"  # external-constant tag -> DATA


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

        self._tmp = None
        data = artifact.file(DATA)
        try:
            if swap:  # a temporary copy of model.ptd with the new bytes in the swap slots
                self._tmp = Path(tempfile.mkdtemp(prefix="loragen-swapped-"))
                shutil.copyfile(data, self._tmp / DATA)
                EXPORTER.write_slot_bytes(self._tmp, artifact.slots, swap)
                data = self._tmp / DATA
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
        p, self._tmp = getattr(self, "_tmp", None), None
        if p is not None:
            shutil.rmtree(p, ignore_errors=True)

    def __del__(self):
        self._cleanup()


class ExecuTorchExporter(Exporter):
    name = "executorch"
    fingerprint_files = (PTE, DATA)

    def wrap(self, job: ExportJob) -> torch.nn.Module:
        job.state["metadata"] = runner_metadata(job.model, job.model_dir, job.max_context)
        # logits [1, 1, V] (last position) unless all_logits
        return StaticCacheLM(job.model, job.max_context, all_logits=job.all_logits).eval()

    def lower(self, job: ExportJob, wrapper: torch.nn.Module) -> None:
        """torch.export -> tag every parameter as external data -> re-export -> XNNPACK -> .pte + .ptd."""
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower
        from executorch.exir.passes.external_constants_pass import delegate_external_constants_pass_unlifted

        ep = _export(wrapper, job.max_context)
        param_norm = {graph_name(n) for n in job.params}

        def tag(node):
            n = node.target if node.op == "get_attr" else node.name
            n = graph_name(str(n))
            if n.startswith("p_") and n[2:] in param_norm:
                n = n[2:]
            return DATA_TAG if n in param_norm else None

        gm = ep.module()
        delegate_external_constants_pass_unlifted(module=gm, gen_tag_fn=tag)
        ep = _export(gm, job.max_context)
        edge = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()],
                                           constant_methods=job.state["metadata"])
        et = edge.to_executorch(ExecutorchBackendConfig(external_constants=tag))
        with open(job.out / PTE, "wb") as f:
            et.write_to_file(f)
        et.write_tensor_data_to_file(str(job.out))
        written = sorted(p.name for p in job.out.glob("*.ptd"))
        if written != [DATA]:
            raise LoragenError(f"executorch export wrote data files {written}, expected [{DATA}]")

    def locate_slots(self, job: ExportJob) -> list[SwapSlot]:
        """XNNPACK keys each delegated weight by the sha256 of its bytes: the slot is that key's range."""
        ranges = _ptd_ranges(job.out / DATA)
        keys_of: dict[str, set[str]] = {}
        for n, p in job.params.items():
            keys_of.setdefault(hashlib.sha256(tensor_bytes(p.detach())).hexdigest(), set()).add(n)
        blob = (job.out / DATA).read_bytes()
        slots = []
        for n in job.swap_names:
            t = job.params[n].detach()
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
            slots.append(SwapSlot.of(n, t, DATA, key=key, offset=off))
        return slots

    def backend_meta(self, job: ExportJob) -> dict:
        metadata, seq = job.state["metadata"], "seq" if job.all_logits else 1
        return {
            "delegate": "xnnpack",
            "methods": {"forward": {"inputs": ["input_ids", "cache_position"], "outputs": ["logits"]},
                        **{k: {"constant": v} for k, v in metadata.items()}},
            "inputs": [{"name": "input_ids", "dtype": "int64", "shape": [1, "seq"]},
                       {"name": "cache_position", "dtype": "int64", "shape": ["seq"]}],
            "outputs": [{"name": "logits", "dtype": dtype_name(job.dtype),
                         "shape": [1, seq, job.model.config.vocab_size]}],
            "logits": "all" if job.all_logits else "last",
            "kv_cache": "static, in mutable buffers (memory-planned), max_context positions",
            "files": [PTE, DATA],
        }

    def slot_offsets(self, root: Path, slots: list[SwapSlot]) -> dict[str, int]:
        """A slot's bytes are the data stored under its key in model.ptd (checked against the file's index)."""
        ranges = _ptd_ranges(root / DATA) if slots else {}
        out = {}
        for s in slots:
            if s.file != DATA or ranges.get(s.key) != (s.offset, s.nbytes):
                raise slot_corrupt(root, s, f"is not the data stored under its key in {DATA}")
            out[s.name] = s.offset
        return out

    def make_runner(self, art: Artifact, swap: dict[str, torch.Tensor]) -> Runner:
        return ExecuTorchRunner(art, swap)


def _export(module, max_context: int):
    from torch.export import Dim

    seq = Dim("seq", min=1, max=max_context)
    ids = torch.zeros((1, 4), dtype=torch.long)
    pos = torch.arange(4, dtype=torch.long)
    with torch.no_grad():
        return torch.export.export(module, (ids, pos), dynamic_shapes=({1: seq}, {0: seq}), strict=False)


EXPORTER = ExecuTorchExporter()
