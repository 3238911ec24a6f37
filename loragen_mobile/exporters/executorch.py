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

Quantized (``schemes``: 8da4w-g32, 8da4w-g128, 8da8w): torchao ``Int8DynamicActivationIntxWeightConfig``
on every ``nn.Linear``, subclasses unwrapped into plain parameters before ``torch.export`` (so they are
tagged as external data too); XNNPACK writes the packed codes and scales into ``model.ptd``, each under
the sha256 of its bytes (``scale_`` + digest for scales). Each swappable weight ``P`` becomes the
slots ``P:q`` and ``P:scale``, whose bytes are checked against :mod:`loragen_mobile.quant`'s rule.

Run-time adapter slots (``adapter_slots=R``): every target linear also adds ``B (A x)``, with
``A [R, in]`` and ``B [out, R]`` in buffers ``lora_slot_A`` / ``lora_slot_B`` (zero in the file, so
the program is the base model), and a second method ``set_adapter(A_0, B_0, A_1, B_1, ...)`` copies
new factors into them. The buffers are shared mutable buffers of both methods
(``MemoryPlanningPass(share_mutable_buffers=True)``, initial values kept by
``InitializedMutableBufferPass``); XNNPACK's partitioner is given its own configs with one extra
constraint, "reads no slot buffer", because it takes buffers for static weights and would pack the
zeros once at load. A loaded program then swaps a LoRA with one ``set_adapter`` call (the runtime
must share memory arenas across methods: ``executorch.runtime``'s ``Program``, or the C++ ``Module``
with ``share_memory_arenas``); the stock LLM runner, which loads ``forward`` only, runs the base.

Runner metadata (``constant_methods``, the names ``extension/llm/runner/constants.h`` reads):
``get_max_seq_len``, ``get_max_context_len`` (the KV-cache length), ``get_bos_id``, ``get_eos_ids``
(every EOS id of config.json, generation_config.json and the tokenizer), ``get_vocab_size``,
``use_kv_cache``, ``enable_dynamic_shape`` (prefill feeds the whole prompt in one call).
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

from .. import quant
from ..errors import LoragenError
from .artifact import Artifact, SwapSlot, dtype_name, read_range, slot_corrupt, tensor_bytes
from .common import StaticCacheLM
from .pipeline import SLOT_BUFFER, ExportJob, Exporter, adapter_slot_inputs, adapter_slots_meta, graph_name
from .runner import Runner
from .validation import THRESHOLDS

PTE = "model.pte"
DATA = "model.ptd"
DATA_TAG = "model"  # external-constant tag -> DATA
ADAPTER_METHOD = "set_adapter"


# bytes at the start of a .ptd that hold its FlatTensor header (far more than the header needs)
_PTD_HEAD = 4096


def _ptd_ranges(path: Path) -> dict[str, tuple[int, int]]:
    """key -> (absolute byte offset of its data in the file, size)."""
    from executorch.extension.flat_tensor.serialize.serialize import FlatTensorHeader, _deserialize_to_flat_tensor

    try:
        with open(path, "rb") as f:  # the header and the index only: the tensor data stays on disk
            header = FlatTensorHeader.from_bytes(f.read(_PTD_HEAD)[8:])
            if not header.is_valid():
                raise ValueError("invalid FlatTensor header")
            f.seek(0)
            ft = _deserialize_to_flat_tensor(f.read(header.flatbuffer_offset + header.flatbuffer_size))
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
            # loaded once (XNNPACK packs the weights then): a reset keeps the method and its KV-cache
            # buffers, whose entries at and past the new position are masked until overwritten
            self._method = self._program.load_method("forward")
            slots = artifact.meta.get("adapter_slots")
            # loaded after forward: loading a method sets the slots to the file's zeros
            self._setter = self._program.load_method(slots["method"]) if slots else None
        except LoragenError:
            self._cleanup()
            raise
        except Exception as e:
            self._cleanup()
            raise LoragenError(f"ExecuTorch cannot load {artifact.path}: {str(e).splitlines()[0]}") from None

    def set_adapter(self, adapter) -> None:
        slots = self.artifact.meta.get("adapter_slots")
        if not slots:
            super().set_adapter(adapter)
        self._setter.execute(adapter_slot_inputs(slots, adapter))
        self.reset()

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
    has_adapter_slots = True
    #: 8-bit dynamic (per-token) activations with 4-bit grouped or 8-bit per-channel weights
    schemes = {"8da4w-g32": "xnnpack-int4-g32", "8da4w-g128": "xnnpack-int4-g128", "8da8w": "xnnpack-int8-pc"}
    # activations are quantized to int8 at run time: a rounding-level difference between the program's
    # and the eager reference's float ops can move one activation by one int8 step (validation.py)
    same_scheme_threshold = THRESHOLDS["dynamic_int8"]

    def wrap(self, job: ExportJob) -> torch.nn.Module:
        job.state["metadata"] = runner_metadata(job.model, job.model_dir, job.max_context)
        # logits [1, 1, V] (last position) unless all_logits
        return StaticCacheLM(job.model, job.max_context, all_logits=job.all_logits).eval()

    def quantize(self, job: ExportJob, wrapper: torch.nn.Module) -> torch.nn.Module:
        """torchao ``Int8DynamicActivationIntxWeightConfig`` on every ``nn.Linear`` (lm_head included),
        then the tensor subclasses unwrapped into plain parameters (``<module>.parametrizations.weight.
        original0/1/2``: codes, scales, zero points) so that torch.export sees them as parameters and
        they can be tagged as external data (XNNPACK packs them into model.ptd)."""
        if job.encoding is None:
            return wrapper
        from torchao.utils import unwrap_tensor_subclass

        names = quantize_linears(wrapper, job.encoding, job.model)
        missing = [n for n in job.swap_names if n not in names]
        if missing:
            raise LoragenError(f"{job.quantize}: swappable weight {missing[0]} is not the weight of an "
                               f"nn.Linear torchao quantizes", code="model")
        job.quantized = names
        return unwrap_tensor_subclass(wrapper)

    def lower(self, job: ExportJob, wrapper: torch.nn.Module) -> None:
        """torch.export -> tag every parameter as external data -> re-export -> XNNPACK -> .pte + .ptd."""
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower
        from executorch.exir.passes import MemoryPlanningPass
        from executorch.exir.passes.external_constants_pass import delegate_external_constants_pass_unlifted
        from executorch.exir.passes.init_mutable_pass import InitializedMutableBufferPass

        if job.encoding is None:  # XNNPACK copies every weight: keep ours out of the process's memory
            job.map_weights(job.out / ".weights")
        ep = _export(wrapper, job.max_context)
        # every parameter: the HF ones, and after quantization the unwrapped codes/scales/zero points
        param_norm = {graph_name(n) for n in job.params}
        param_norm |= {graph_name(n) for n, _ in wrapper.named_parameters(remove_duplicate=False)}

        def tag(node):
            n = node.target if node.op == "get_attr" else node.name
            n = graph_name(str(n))
            if n.startswith("p_") and n[2:] in param_norm:
                n = n[2:]
            return DATA_TAG if n in param_norm else None

        gm = ep.module()
        delegate_external_constants_pass_unlifted(module=gm, gen_tag_fn=tag)
        ep = _export(gm, job.max_context)
        with _preprocess_sharing_weights():
            if not job.adapter_slots:
                edge = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()],
                                                   constant_methods=job.state["metadata"])
                et = edge.to_executorch(ExecutorchBackendConfig(external_constants=tag))
            else:
                methods = {"forward": ep, ADAPTER_METHOD: _export_setter(wrapper, job)}
                edge = to_edge_transform_and_lower(
                    methods, partitioner=[XnnpackPartitioner(configs=_slot_free_configs())],
                    constant_methods=job.state["metadata"])
                et = edge.to_executorch(ExecutorchBackendConfig(
                    external_constants=tag, emit_mutable_buffer_names=True,
                    memory_planning_pass=MemoryPlanningPass(share_mutable_buffers=True),
                    passes=[InitializedMutableBufferPass([SLOT_BUFFER])]))
        with open(job.out / PTE, "wb") as f:
            et.write_to_file(f)
        et.write_tensor_data_to_file(str(job.out))
        written = sorted(p.name for p in job.out.glob("*.ptd"))
        if written != [DATA]:
            raise LoragenError(f"executorch export wrote data files {written}, expected [{DATA}]")

    def locate_slots(self, job: ExportJob) -> list[SwapSlot]:
        """XNNPACK keys each delegated weight by the sha256 of its bytes: the slot is that key's range."""
        if job.encoding is not None:
            return _locate_parts(job)
        ranges = _ptd_ranges(job.out / DATA)
        keys_of: dict[str, set[str]] = {}
        for n, p in job.params.items():
            keys_of.setdefault(hashlib.sha256(tensor_bytes(p.detach())).hexdigest(), set()).add(n)
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
            if size != len(raw) or read_range(job.out / DATA, off, size) != raw:
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
            **({"adapter_slots": adapter_slots_meta(
                job, {"method": ADAPTER_METHOD},
                "A [rank, in], B [out, rank] of each module in this order; B carries the LoRA scale")}
               if job.adapter_slots else {}),
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

    def reference_model(self, art: Artifact, model) -> torch.nn.Module:
        """The eager fp32 model quantized as the XNNPACK program computes it: the artifact's weights
        quantized by the same torchao config (its codes and scales), each scale at its stored precision
        (bf16 for 4-bit), the dequantized weights used in fp32, and each quantized linear's input
        through XNNPACK's dynamic int8 activation quantization (:func:`xnnpack_qd8`). torchao's own
        eager activation quantization (scale (max - min) / 255, zero point from the minimum) and its
        fp32 scales differ from what XNNPACK runs by a few code steps, ~0.3 logits on the test models."""
        info = art.meta.get("weight_encoding") or {}
        enc = quant.get(info.get("id"))
        want = list(info.get("params") or [])
        got = quantize_linears(model, enc, model, only=set(want))
        if sorted(got) != sorted(want):
            miss = sorted(set(want) - set(got))
            raise LoragenError(f"{art.path}: quantized weight {miss[0]} is not an nn.Linear weight of the model",
                               code="model")
        for name in got:
            mod = model.get_submodule(name[: -len(".weight")])
            w = mod.weight
            out_f, in_f = w.qdata.shape
            scale = w.scale.to(getattr(torch, enc.scale_dtype)).to(torch.float32).reshape(out_f, -1, 1)
            codes = (w.qdata.to(torch.float32).reshape(out_f, scale.shape[1], -1)
                     - w.zero_point.to(torch.float32).reshape(out_f, -1, 1))
            mod.weight = torch.nn.Parameter((codes * scale).reshape(out_f, in_f), requires_grad=False)
            mod.register_forward_pre_hook(lambda m, args: (xnnpack_qd8(args[0]), *args[1:]))
        return model.eval()


def torchao_config(encoding):
    """The torchao config of an encoding: 8-bit dynamic per-token activations, symmetric int4 weights
    per group or int8 weights per output channel, "affine" qparams (the rule of ``quant._xnnpack``)."""
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig
    from torchao.quantization.granularity import PerAxis, PerGroup

    return Int8DynamicActivationIntxWeightConfig(
        weight_dtype=torch.int4 if encoding.bits == 4 else torch.int8,
        weight_granularity=PerGroup(encoding.group) if encoding.group else PerAxis(0),
        intx_choose_qparams_algorithm="affine")


def quantize_linears(module: torch.nn.Module, encoding, hf_model: torch.nn.Module,
                     only: set[str] | None = None) -> list[str]:
    """Quantize, in place, every ``nn.Linear`` of ``hf_model`` that ``module`` holds (all of them,
    lm_head included; a linear whose input features are not a multiple of the group size is left in
    fp32; ``only``: just these weights) with :func:`torchao_config`. A weight tied to another module
    (Gemma's lm_head and embedding) is untied: the linear gets the quantized copy. Returns the HF
    parameter names of the quantized weights."""
    from torchao.quantization import quantize_

    chosen = {id(m): f"{n}.weight" for n, m in hf_model.named_modules()
              if type(m) is torch.nn.Linear and (encoding.group is None or m.in_features % encoding.group == 0)
              and (only is None or f"{n}.weight" in only)}
    seen: list[str] = []

    def pick(m, fqn) -> bool:
        if id(m) in chosen and chosen[id(m)] not in seen:
            seen.append(chosen[id(m)])
            return True
        return False

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_(module, torchao_config(encoding), filter_fn=pick)
    order = list(chosen.values())
    return sorted(seen, key=order.index)


def xnnpack_qd8(x: torch.Tensor) -> torch.Tensor:
    """``x`` through XNNPACK's dynamic int8 quantization (qd8, one scale and zero point per row), then
    back to float: the row's range widened to contain 0, ``s = 255 / (max - min)`` (1 for an all-zero
    row), the zero point taken from the range end with the smaller error, clamped to [-128, 127] and
    rounded; ``q = clamp(round(x * s) + zp)`` (halves to even); the value is ``(q - zp) * (1 / s)``."""
    x32 = x.to(torch.float32)
    lo = torch.clamp(x32.amin(-1, keepdim=True), max=0.0)
    hi = torch.clamp(x32.amax(-1, keepdim=True), min=0.0)
    s = torch.where(lo == hi, torch.ones_like(lo), torch.tensor(255.0) / (hi - lo))
    lo_s, hi_s = lo * s, hi * s
    zp = torch.where((-128.0 + lo_s) + (127.0 + hi_s) > 0, -128.0 - lo_s, 127.0 - hi_s)
    zp = torch.round(torch.clamp(zp, -128.0, 127.0))
    q = torch.clamp(torch.round(x32 * s) + zp, -128.0, 127.0)
    return ((q - zp) * (1.0 / s)).to(x.dtype)


def _content_key(part: str, t: torch.Tensor) -> str:
    """The key XNNPACK stores a packed weight part under in model.ptd: the sha256 of its bytes
    (scales: ``scale_`` + that digest)."""
    digest = hashlib.sha256(tensor_bytes(t)).hexdigest()
    return f"scale_{digest}" if part == "scale" else digest


def _locate_parts(job: ExportJob) -> list[SwapSlot]:
    """The ``P:q`` and ``P:scale`` slots of each swappable weight: the model.ptd entries under the
    content keys of ``job.expected_parts(P)`` (quant.py's rule), checked to hold exactly those bytes.

    XNNPACK stores byte-identical data once: two tensors whose stored bytes coincide share one entry,
    which a swap of one would silently change for both. Such an export is refused (code ``model``)."""
    ranges = _ptd_ranges(job.out / DATA)
    quantized = set(job.quantized)
    expected = {n: job.expected_parts(n) for n in job.quantized}
    owners: dict[str, list[str]] = {}
    for n, parts in expected.items():
        for part, t in parts.items():
            owners.setdefault(_content_key(part, t), []).append(quant.part_name(n, part))
    seen: set[int] = set()
    for n, p in job.params.items():  # the unquantized weights (a tied duplicate once)
        if n not in quantized and id(p) not in seen:
            seen.add(id(p))
            owners.setdefault(_content_key("", p.detach()), []).append(n)
    slots = []
    for n in job.swap_names:
        for part in quant.PARTS:
            t, name = expected[n][part], quant.part_name(n, part)
            key = _content_key(part, t)
            if len(owners[key]) > 1:
                other = next(o for o in owners[key] if o != name)
                raise LoragenError(f"{job.quantize}: the stored bytes of {name} equal those of {other}; XNNPACK keeps "
                                   f"one copy in {DATA}, so they could not be swapped separately (re-initialise "
                                   f"one of the weights before export)", code="model")
            if key not in ranges:
                raise LoragenError(f"{job.quantize}: {name} ({job.encoding.id} rule) is not stored in {DATA}: the "
                                   f"XNNPACK weights differ from quant.py's rule or were not delegated", code="model")
            off, size = ranges[key]
            raw = tensor_bytes(t)
            if size != len(raw) or read_range(job.out / DATA, off, size) != raw:
                raise LoragenError(f"{DATA}: the data under {name}'s key is not its {job.encoding.id} bytes",
                                   code="model")
            slots.append(SwapSlot.part_of(n, part, job.encoding, t, DATA, key=key, offset=off))
    return slots


def _export_setter(wrapper: torch.nn.Module, job: ExportJob):
    """``set_adapter(A_0, B_0, ...)``: copies its inputs into the slot buffers (exported from the same
    module as ``forward``, so the buffers have the same names in both methods)."""
    linears = [job.model.get_submodule(m) for m in job.state["slot_modules"]]

    def set_adapter(*factors):
        for i, lin in enumerate(linears):
            lin.lora_slot_A.copy_(factors[2 * i])
            lin.lora_slot_B.copy_(factors[2 * i + 1])
        return factors[0].sum()

    example = tuple(t for lin in linears for t in (lin.lora_slot_A.clone(), lin.lora_slot_B.clone()))
    wrapper.forward = set_adapter
    try:
        with torch.no_grad():
            return torch.export.export(wrapper, example, strict=False)
    finally:
        del wrapper.forward


def _slot_free_configs() -> list:
    """XNNPACK's partitioner configs, each with one more constraint: the node reads no adapter-slot
    buffer (the partitioner would take the buffer for a static weight and pack it once at load)."""
    from executorch.backends.xnnpack.partition.config import ALL_PARTITIONER_CONFIGS

    def guarded(cls):
        def check_constraints(self, node, ep) -> bool:
            # the node itself, and what its partition would pull in (e.g. a matmul's weight seen
            # through a transpose)
            bufs = ep.graph_signature.inputs_to_buffers

            def slot(n) -> bool:
                return n.op == "placeholder" and SLOT_BUFFER in bufs.get(n.name, "")

            if any(slot(a) for a in node.all_input_nodes) or not cls.check_constraints(self, node, ep):
                return False
            return not any(slot(a) for n in self.get_partition(node, ep) for a in (n, *n.all_input_nodes))

        return type(cls.__name__, (cls,), {"check_constraints": check_constraints})

    return [guarded(c) for c in ALL_PARTITIONER_CONFIGS]


@contextmanager
def _preprocess_sharing_weights():
    """XNNPACK preprocessing without a copy of the weights, while the block runs.

    ExecuTorch deep-copies every partition's program, weights included, before preprocessing them
    all (``BackendDetails.copy_exported_program_for_preprocess``), and XNNPACK then serializes a
    copy of each weight: a full-size fp32 export held the weights three times (TinyLlama-1.1B: a
    12.6 GiB peak, 3.9 GiB of it these copies). XNNPACK's preprocessing reads the weights and
    never writes them, so its copies share the tensors and copy the graphs only, as ExecuTorch's
    own CUDA backend does in its low-memory mode."""
    import copy

    from executorch.backends.xnnpack.xnnpack_preprocess import XnnpackBackend

    def copy_sharing(cls, program, compile_specs):
        shared = {id(t): t for values in (program.state_dict, program.constants) for t in values.values()
                  if isinstance(t, torch.Tensor)}
        return copy.deepcopy(program, shared)

    own = XnnpackBackend.__dict__.get("copy_exported_program_for_preprocess")
    XnnpackBackend.copy_exported_program_for_preprocess = classmethod(copy_sharing)
    try:
        yield
    finally:
        if own is None:
            del XnnpackBackend.copy_exported_program_for_preprocess
        else:  # pragma: no cover - a later ExecuTorch that defines its own
            XnnpackBackend.copy_exported_program_for_preprocess = own


def _export(module, max_context: int):
    from torch.export import Dim

    seq = Dim("seq", min=1, max=max_context)
    ids = torch.zeros((1, 4), dtype=torch.long)
    pos = torch.arange(4, dtype=torch.long)
    with torch.no_grad():
        return torch.export.export(module, (ids, pos), dynamic_shapes=({1: seq}, {0: seq}), strict=False)


EXPORTER = ExecuTorchExporter()
