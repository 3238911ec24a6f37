"""ONNX backend: ``model.onnx`` + ``model.onnx.data`` (foundation) + ``swap.onnx.data`` + genai config.

Export: :class:`~.common.PastKVLM` through ``torch.onnx.export(..., dynamo=True, optimize=False)``
so every initializer keeps its Hugging Face parameter name (``model.layers.0.mlp.up_proj.weight``,
stored untransposed, ``[out, in]``). Inputs/outputs follow onnxruntime-genai/optimum naming:
``input_ids``, ``attention_mask``, ``position_ids``, ``past_key_values.{i}.key/value`` in;
``logits``, ``present.{i}.key/value`` out; sequence and past lengths are dynamic. ``logits`` is
``[1, 1, vocab]`` (last position; onnxruntime-genai reads a static 1 there as last-token logits and
allocates ``[batch, 1, vocab]`` for prefill too) unless exported with ``all_logits=True``
(``[1, seq, vocab]``).

Weights live in external data: the swap slots (LoRA target weights) in ``swap.onnx.data``, each at a
64-byte aligned offset recorded in ``artifact.json``; all other large initializers in
``model.onnx.data``. ``genai_config.json`` and the tokenizer files make the directory a valid
onnxruntime-genai model folder (``og.Model(dir)``).

Swapping:

* ``open_runner(dir, swap=...)`` overrides the named initializers at session creation with
  ``SessionOptions.add_external_initializers`` (nothing written);
* ``apply_swap(dir, swap, out)`` copies the artifact and rewrites the new bytes in place at the
  recorded offsets of ``swap.onnx.data``; the graph and ``model.onnx.data`` are untouched, so the
  new directory also runs unmodified in onnxruntime-genai.

Run-time adapter slots (``adapter_slots=R``, unquantized): every target linear also adds ``B (A x)``,
with ``A [R, in]`` and ``B [out, R]`` the initializers ``<module>.lora_slot_A`` / ``lora_slot_B``
(zeros: the base model) that are also optional graph inputs (``artifact.json``:
``adapter_slots.input_names``). A loaded session takes a LoRA by feeding them with every run
(:meth:`ONNXRunner.set_adapter`; onnxruntime-genai: an adapter file of these inputs,
``og.Adapters``), so a lora bundle swaps without touching the base weights.

Quantized exports (``quantize=``, one of :attr:`ONNXExporter.schemes`, fp32 only): every linear
weight (the attention and MLP projections and ``lm_head``) is quantized by onnxruntime's own
``MatMulNBitsQuantizer`` (symmetric, no zero points) into a ``com.microsoft`` ``MatMulNBits`` node.
A ``lm_head`` tied to the embedding is stored once: the embedding lookup reads the head's quantized
table through ``com.microsoft`` ``GatherBlockQuantized`` (the same blocks and scales; without zero
points it uses MatMulNBits' implicit one), as onnxruntime-genai's model builder stores it. The
``int*`` schemes compute in fp32 (``accuracy_level`` 1); ``8da4w-b32`` stores the same weights as
``int4-b32`` and quantizes the activations to int8 at run time (``accuracy_level`` 4: symmetric,
one scale per 32 inputs), onnxruntime-genai's model builder's CPU default, several times faster to
decode on x86 (docs/results.md, "Peers"). Each initializer ``W`` becomes ``W_Q4`` / ``W_Q8`` (uint8 ``[out, in/block, block*bits/8]``) and ``W_scales`` (fp32
``[out, in/block]``), exactly :mod:`loragen_mobile.quant`'s ``ort-*`` rule; a swappable weight ``P``
is the two slots ``P:q`` and ``P:scale`` in ``swap.onnx.data``, the other quantized weights live in
``model.onnx.data``. Swapping works as above, with the part tensors.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .. import quant
from ..errors import LoragenError
from ..families import family_of
from .artifact import Artifact, SwapSlot, check_swap, dtype_name, read_range, slot_corrupt, tensor_bytes
from .common import PastKVLM, _dims as d
from .pipeline import (SLOT_BUFFER, ExportJob, Exporter, adapter_slot_inputs, adapter_slots_meta, fake_quantize,
                       stored_weights)
from .runner import Runner
from .validation import THRESHOLDS

MODEL = "model.onnx"
FOUNDATION = "model.onnx.data"
SWAP = "swap.onnx.data"
GENAI = "genai_config.json"
ALIGN = 64
INLINE_LIMIT = 1024  # initializers smaller than this stay inside model.onnx

_NP = {"float32": np.float32, "float16": np.float16}

#: MatMulNBits ``accuracy_level`` of quantized exports: 1 = fp32 activations and accumulation
ACCURACY_LEVEL = 1
#: schemes whose MatMulNBits quantize the activations to int8 (``accuracy_level`` 4)
INT8_ACTIVATIONS = {"8da4w-b32"}


def accuracy_level(scheme: str | None) -> int:
    return 4 if scheme in INT8_ACTIVATIONS else ACCURACY_LEVEL


def ort_qd8(x: torch.Tensor, block: int) -> torch.Tensor:
    """``x`` as MatMulNBits with ``accuracy_level`` 4 quantizes its A input on the CPU: int8,
    symmetric, one scale (block max / 127) per ``block`` consecutive inputs; dequantized (measured
    on the tiny test models: logits within 3e-7 of onnxruntime)."""
    xb = x.reshape(*x.shape[:-1], x.shape[-1] // block, block)
    scale = xb.abs().amax(-1, keepdim=True) / 127.0
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    return (torch.clamp(torch.round(xb / scale), -127, 127) * scale).reshape(x.shape)


def part_keys(param: str, enc: quant.Encoding) -> dict[str, str]:
    """The initializer names onnxruntime's quantizer gives the parts of the weight ``param``."""
    return {"q": f"{param}_Q{enc.bits}", "scale": f"{param}_scales"}


def adapter_input_names(modules: list[str]) -> list[str]:
    """The adapter slot inputs of ``modules``, in slot order: A then B of each module."""
    return [f"{m}.{SLOT_BUFFER}{x}" for m in modules for x in "AB"]


def io_names(n_layers: int) -> tuple[list[str], list[str]]:
    ins = ["input_ids", "attention_mask", "position_ids"]
    outs = ["logits"]
    for i in range(n_layers):
        ins += [f"past_key_values.{i}.key", f"past_key_values.{i}.value"]
        outs += [f"present.{i}.key", f"present.{i}.value"]
    return ins, outs


def slot_ort_values(artifact: Artifact, swap) -> dict[str, object]:
    """Slot key (the initializer / graph input name) -> onnxruntime OrtValue over each tensor of
    ``swap``, read one at a time. Each OrtValue keeps its array alive; a caller that hands the
    values to onnxruntime keeps them for as long as onnxruntime uses them."""
    import onnxruntime as ort

    slots = artifact.slot_map
    return {slots[n].key: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(swap[n].numpy())) for n in swap}


def adapter_ort_values(artifact: Artifact, values: list[torch.Tensor]) -> dict[str, object]:
    """Adapter slot input name -> OrtValue in the artifact's precision, for the values of
    :func:`~.pipeline.adapter_slot_inputs` (in the order of ``adapter_slots.input_names``)."""
    import onnxruntime as ort

    slots, np_dtype = artifact.meta["adapter_slots"], _NP[artifact.meta["kv_dtype"]]
    return {n: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v.numpy().astype(np_dtype)))
            for n, v in zip(slots["input_names"], values)}


class ONNXRunner(Runner):
    def __init__(self, artifact: Artifact, swap: dict[str, torch.Tensor], providers=None):
        super().__init__(artifact)
        import onnxruntime as ort

        m = artifact.meta
        self.n_layers, self.n_kv, self.head_dim = m["num_layers"], m["num_kv_heads"], m["head_dim"]
        self.np_dtype = _NP[m["kv_dtype"]]
        so = ort.SessionOptions()
        so.log_severity_level = 3
        self._fed: dict[str, object] = {}  # swap slot key -> OrtValue fed with every run
        self._adapter: dict[str, object] = {}  # adapter slot input -> OrtValue fed with every run
        self.swaps_in_place = bool(m.get("swap_inputs"))
        if swap and not self.swaps_in_place:  # slots that are no graph inputs: initializers replaced at load
            self._overrides = slot_ort_values(artifact, swap)  # must outlive the session
            so.add_external_initializers(list(self._overrides), list(self._overrides.values()))
        try:
            self.session = ort.InferenceSession(str(artifact.file(MODEL)), so,
                                                providers=providers or ["CPUExecutionProvider"])
        except Exception as e:
            raise LoragenError(f"onnxruntime cannot load {artifact.file(MODEL)}: {str(e).splitlines()[0]}") from None
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._reset()
        if swap and self.swaps_in_place:
            self.swap(swap)

    def swap(self, tensors) -> None:
        """The swap slots are optional graph inputs (initializers that are also inputs): a swap is
        what each run feeds them, so the loaded session is kept (docs/exporters.md). The previous
        swap is released before the new one is read (one set of swapped weights in memory); if the
        new one fails its checks, the runner is left with the artifact's own weights."""
        if not self.swaps_in_place:
            super().swap(tensors)
        tensors = check_swap(self.artifact, tensors)
        self._fed = {}
        try:
            self._fed = slot_ort_values(self.artifact, tensors)
        finally:
            self.reset()

    def set_adapter(self, adapter) -> None:
        """The LoRA ``adapter`` in the run-time adapter slots (``None``: the base model): the loaded
        session stays, the slot inputs are fed with every run; the KV cache is reset."""
        slots = self.artifact.meta.get("adapter_slots")
        if not slots:
            super().set_adapter(adapter)
        values = adapter_slot_inputs(slots, adapter)  # checked before the current adapter is dropped
        self._adapter = adapter_ort_values(self.artifact, values)
        self.reset()

    def _reset(self):
        empty = np.zeros((1, self.n_kv, 0, self.head_dim), dtype=self.np_dtype)
        self.past = [empty] * (2 * self.n_layers)

    def _forward(self, ids, start):
        s = len(ids)
        feed = {"input_ids": np.array([ids], dtype=np.int64),
                "attention_mask": np.ones((1, start + s), dtype=np.int64),
                "position_ids": np.arange(start, start + s, dtype=np.int64)[None]}
        for i in range(self.n_layers):
            feed[f"past_key_values.{i}.key"] = self.past[2 * i]
            feed[f"past_key_values.{i}.value"] = self.past[2 * i + 1]
        feed.update(self._fed)
        feed.update(self._adapter)
        outs = self.session.run(None, feed)
        self.past = list(outs[1:])
        return torch.from_numpy(np.asarray(outs[0][0], dtype=np.float32))


class ONNXExporter(Exporter):
    name = "onnx"
    fingerprint_files = (MODEL, FOUNDATION)  # the swap slots live in SWAP, outside the fingerprint
    #: MatMulNBits, symmetric: scheme -> encoding of the stored weights (quant.py)
    schemes = {"int4-b32": "ort-int4-b32", "int4-b128": "ort-int4-b128", "int8-b128": "ort-int8-b128",
               "8da4w-b32": "ort-int4-b32"}
    has_adapter_slots = True

    def wrap(self, job: ExportJob) -> torch.nn.Module:
        return PastKVLM(job.model, all_logits=job.all_logits).eval()

    def quantize(self, job: ExportJob, wrapper: torch.nn.Module) -> torch.nn.Module:
        """The graph is quantized in :meth:`lower` (onnxruntime's quantizer works on the ONNX
        graph); here the weights it must quantize are chosen (:func:`stored_weights`) and each
        of their linears becomes :class:`_InputMajorLinear`, so that the graph holds them as
        ``MatMul(x, W)`` with ``W`` stored ``[in, out]``, the form the quantizer takes. A head
        tied to the embedding gets its own ``[in, out]`` copy; :func:`_quantize_graph` then points
        the embedding lookup at its quantized parts (``job.state["tied_tables"]``)."""
        if job.encoding is None:
            return wrapper
        job.quantized = stored_weights(job.model, job.encoding, job.swap_names, self.name)
        head = job.model.get_output_embeddings().weight
        names = [n for n, p in job.params.items() if p is head]  # lm_head.weight and, if tied, the embedding's
        job.state["tied_tables"] = {n: e for n in names if n in job.quantized for e in names if e != n}
        for name in job.quantized:
            path = name[: -len(".weight")]
            linear = wrapper.get_submodule(path)
            new = _InputMajorLinear(linear)
            for root in (wrapper, job.model):  # the wrapper's own lm_head attribute, and the HF model's
                parent, _, attr = path.rpartition(".")
                owner = root.get_submodule(parent) if parent else root
                if getattr(owner, attr, None) is linear:
                    setattr(owner, attr, new)
            job.params[name] = new.weight.t()  # the [out, in] values, a view
        return wrapper

    def lower(self, job: ExportJob, wrapper: torch.nn.Module) -> None:
        """torch.onnx.export, then the initializers split into external data (swap slots in SWAP,
        other large ones in FOUNDATION, each 64-byte aligned), then genai_config.json.

        The split streams each initializer's bytes from the exported data file, so the weights are
        held once (by the loaded model). A quantized export loads them into the graph for
        onnxruntime's quantizer, after the loaded model's are released (:meth:`ExportJob.release_weights`)."""
        import shutil

        import onnx
        from onnx.external_data_helper import load_external_data_for_model

        raw = job.out / "raw"
        raw.mkdir()
        _onnx_export(wrapper, raw / MODEL, job.max_context)
        proto = onnx.load(str(raw / MODEL), load_external_data=False)
        names = {i.name for i in proto.graph.initializer}
        adapter = job.state["adapter_inputs"] = (adapter_input_names(job.state["slot_modules"])
                                                 if job.adapter_slots else [])
        missing = [n for n in [*job.swap_names, *adapter] if n not in names]
        if missing:
            raise LoragenError(f"onnx export renamed swappable weights or adapter slot buffers (e.g. {missing[0]}); "
                               f"cannot record slots")
        swap_names = set(job.swap_names)
        if job.encoding is not None:
            job.release_weights(wrapper)
            load_external_data_for_model(proto, str(raw))
            proto = _quantize_graph(proto, job.quantized, job.encoding, accuracy_level(job.quantize),
                                    job.state["tied_tables"])
            swap_names = {k for n in job.swap_names for k in part_keys(n, job.encoding).values()}
        with open(job.out / FOUNDATION, "wb") as fnd, open(job.out / SWAP, "wb") as swp:
            for init in proto.graph.initializer:
                data = _initializer_bytes(init, raw)
                if data is None:
                    continue
                is_swap = init.name in swap_names
                if not is_swap and len(data) < INLINE_LIMIT:
                    _place(init, data=data)
                    continue
                f, loc = (swp, SWAP) if is_swap else (fnd, FOUNDATION)
                f.write(b"\0" * ((-f.tell()) % ALIGN))
                off = f.tell()
                f.write(data)
                _place(init, location=loc, offset=off, length=len(data))
        if job.encoding is None:  # the slots become optional inputs: a loaded session swaps them per run
            by_name = {i.name: i for i in proto.graph.initializer}
            for n in [*job.swap_names, *adapter]:
                proto.graph.input.append(onnx.helper.make_tensor_value_info(n, by_name[n].data_type, list(by_name[n].dims)))
        onnx.save(proto, str(job.out / MODEL))
        shutil.rmtree(raw)
        job.state["opset"] = int(proto.opset_import[0].version)
        _, _, _, head_dim = _dims(job.model.config)
        (job.out / GENAI).write_text(json.dumps(genai_config(job.model.config, job.max_context, head_dim), indent=2)
                                     + "\n")

    def locate_slots(self, job: ExportJob) -> list[SwapSlot]:
        """Each slot is its initializer's external-data range in SWAP, keyed by the initializer name
        (the parameter name; for a quantized weight ``P`` the parts ``P_Q4``/``P_Q8`` and
        ``P_scales``, checked to hold exactly ``job.expected_parts(P)``)."""
        import onnx

        proto = onnx.load(str(job.out / MODEL), load_external_data=False)
        inits = {i.name: i for i in proto.graph.initializer}
        swap_file = job.out / SWAP
        slots = []
        for n in job.swap_names:
            if job.encoding is None:
                t = job.params[n].detach()
                off = _stored_at(inits.get(n), swap_file, t)
                if off is None:
                    raise LoragenError(f"initializer {n} is not stored as the parameter "
                                       f"(layout changed); cannot record a swap slot")
                slots.append(SwapSlot.of(n, t, SWAP, key=n, offset=off))
                continue
            expected, keys = job.expected_parts(n), part_keys(n, job.encoding)
            for part in quant.PARTS:
                off = _stored_at(inits.get(keys[part]), swap_file, expected[part])
                if off is None:
                    raise LoragenError(f"onnx: initializer {keys[part]} does not hold the {job.encoding.id} "
                                       f"{part} part of {n} (onnxruntime's quantizer and quant.py disagree)",
                                       code="model")
                slots.append(SwapSlot.part_of(n, part, job.encoding, expected[part], SWAP, key=keys[part],
                                              offset=off))
        return slots

    def backend_meta(self, job: ExportJob) -> dict:
        cfg, kvd = job.model.config, dtype_name(job.dtype)
        n_layers, _, n_kv, head_dim = _dims(cfg)
        ins, outs = io_names(n_layers)
        return {
            "opset": job.state["opset"],
            "graph_optimized": False,
            "initializer_names": "Hugging Face parameter names (exported with optimize=False)",
            "num_layers": n_layers, "num_kv_heads": n_kv, "head_dim": head_dim, "kv_dtype": kvd,
            "inputs": [{"name": n, "dtype": "int64" if i < 3 else kvd} for i, n in enumerate(ins)],
            "outputs": [{"name": n, "dtype": kvd, **({"shape": [1, "seq" if job.all_logits else 1, cfg.vocab_size]}
                                                      if n == "logits" else {})} for n in outs],
            "logits": "all" if job.all_logits else "last",
            "kv_cache": "past_key_values.{i}.key/value in, present.{i}.key/value out ([1, kv_heads, len, head_dim])",
            "files": [MODEL, FOUNDATION, SWAP, GENAI],
            "swap_method": ("a loaded session feeds the slots per run (each slot key is an optional graph input "
                            "whose default is its initializer)" if job.encoding is None else
                            "open_runner: SessionOptions.add_external_initializers")
                           + f"; apply_swap: rewrite {SWAP} at the slot offsets",
            "swap_inputs": job.encoding is None,
            **({"quantized_op": {"op": "com.microsoft.MatMulNBits", "accuracy_level": accuracy_level(job.quantize),
                                 "zero_points": None, "tool": "onnxruntime MatMulNBitsQuantizer"}}
               if job.encoding is not None else {}),
            **({"adapter_slots": adapter_slots_meta(
                job, {"input_names": job.state["adapter_inputs"]},
                "A [rank, in], B [out, rank] of each module in this order, optional graph inputs whose defaults "
                "are zero initializers (the base model); B carries the LoRA scale")}
               if job.adapter_slots else {}),
        }

    def slot_offsets(self, root: Path, slots: list[SwapSlot]) -> dict[str, int]:
        """A slot's bytes are its initializer's external-data range (model.onnx's own index)."""
        import onnx

        if not slots:
            return {}
        try:
            proto = onnx.load(str(root / MODEL), load_external_data=False)
        except Exception as e:
            raise LoragenError(f"cannot read {root / MODEL}: {str(e).splitlines()[0]}") from None
        where = {i.name: {e.key: e.value for e in i.external_data} for i in proto.graph.initializer}
        for s in slots:
            w = where.get(s.key, {})
            if (s.file != SWAP or w.get("location") != SWAP or w.get("offset", "0") != str(s.offset)
                    or w.get("length") != str(s.nbytes)):
                raise slot_corrupt(root, s, f"is not the external data of initializer {s.key} in {SWAP}")
        return super().slot_offsets(root, slots)  # the recorded offsets, checked to lie inside the file

    def scheme_threshold(self, art: Artifact) -> float:
        """int8 activations (``accuracy_level`` 4) are quantized at run time: validation.py's
        ``dynamic_int8`` bound; fp32 activations: the tight same-scheme one."""
        if art.meta["quantized_op"]["accuracy_level"] == 4:
            return THRESHOLDS["dynamic_int8"]
        return self.same_scheme_threshold

    def reference_model(self, art: Artifact, model) -> torch.nn.Module:
        """The stored weights (:func:`fake_quantize`); with int8 activations, each quantized linear's
        input also goes through :func:`ort_qd8`, as onnxruntime computes it."""
        model = fake_quantize(model, art)
        if art.meta["quantized_op"]["accuracy_level"] == 4:
            block = quant.get(art.meta["weight_encoding"]["id"]).group
            for name in art.meta["weight_encoding"]["params"]:
                model.get_submodule(name[: -len(".weight")]).register_forward_pre_hook(
                    lambda m, a: (ort_qd8(a[0], block), *a[1:]))
        return model

    def make_runner(self, art: Artifact, swap: dict[str, torch.Tensor]) -> Runner:
        return ONNXRunner(art, swap)


def _dims(cfg):
    return d(cfg)


def _stored_at(init, swap_file: Path, t: torch.Tensor) -> int | None:
    """The offset of ``init``'s external data in SWAP (the file ``swap_file``) if it holds exactly
    ``t``, else None (only that range is read)."""
    if init is None:
        return None
    where = {e.key: e.value for e in init.external_data}
    off, data = int(where.get("offset", 0)), tensor_bytes(t)
    if (where.get("location") != SWAP or list(init.dims) != list(t.shape)
            or int(where.get("length", -1)) != len(data) or read_range(swap_file, off, len(data)) != data):
        return None
    return off


_QUANT_LOGGERS = ("onnxruntime.quantization", "onnx_ir")


def _quantizer_class():
    """onnxruntime's MatMulNBitsQuantizer. Its module calls ``logging.basicConfig(level=INFO)`` on
    import, which would print every later INFO record of any library: the root logger's handlers
    and level are restored after the import."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    finally:
        for h in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(h)
        root.setLevel(level)
    return MatMulNBitsQuantizer


def _quantize_graph(proto, names: list[str], enc: quant.Encoding, level: int, tied: dict[str, str]):
    """``proto`` with the linear weights ``names`` quantized by onnxruntime's MatMulNBitsQuantizer.

    Each of them is an initializer read by one ``MatMul(x, W)`` (stored ``[in, out]``: the linears
    were :class:`_InputMajorLinear` when exported), the only MatMuls with a constant input, so the
    quantizer converts exactly ``names``; anything else is an error (code ``model``). ``tied``: weight
    -> the embedding table tied to it; that table's lookups become ``GatherBlockQuantized`` of the
    weight's quantized parts (:func:`_gather_quantized`) and the fp32 table is dropped."""
    import logging

    MatMulNBitsQuantizer = _quantizer_class()
    g = proto.graph
    inits = {i.name for i in g.initializer}
    users: dict[str, list] = {}
    for node in g.node:
        for i in node.input:
            users.setdefault(i, []).append(node)
    for name in names:
        mm = users.get(name, [])
        if name not in inits or len(mm) != 1 or mm[0].op_type != "MatMul" or list(mm[0].input).index(name) != 1:
            raise LoragenError(f"onnx: linear weight {name} is not MatMul(x, W) in the exported graph; "
                               f"cannot quantize it", code="model")
    for name, table in tied.items():
        readers = users.get(table, [])
        if not readers or not all(n.op_type == "Gather" and n.input[0] == table
                                  and all(a.i == 0 for a in n.attribute if a.name == "axis") for n in readers):
            raise LoragenError(f"onnx: the embedding table {table} is read by more than lookups; cannot share "
                               f"the quantized {name}", code="model")

    logs = [logging.getLogger(n) for n in _QUANT_LOGGERS]
    levels = [log.level for log in logs]
    for log in logs:
        log.setLevel(logging.WARNING)  # the quantizer logs every node at INFO
    try:
        q = MatMulNBitsQuantizer(proto, bits=enc.bits, block_size=enc.group, is_symmetric=True,
                                 accuracy_level=level)
        q.process()
    except Exception as e:
        raise LoragenError(f"onnxruntime's MatMulNBitsQuantizer failed: {str(e).splitlines()[0]}",
                           code="model") from None
    finally:
        for log, level in zip(logs, levels):
            log.setLevel(level)
    out = q.model.model
    for name, table in tied.items():
        _gather_quantized(out.graph, name, table, enc)
    have = {i.name for i in out.graph.initializer}
    converted = sum(n.op_type == "MatMulNBits" for n in out.graph.node)
    lost = [n for n in names if not set(part_keys(n, enc).values()) <= have or n in have]
    if lost or converted != len(names):
        what = lost[0] if lost else f"{converted} MatMuls, not {len(names)}"
        raise LoragenError(f"onnx: onnxruntime's quantizer did not convert the expected weights ({what})",
                           code="model")
    return out


def _gather_quantized(graph, name: str, table: str, enc: quant.Encoding) -> None:
    """``graph`` with the lookups ``Gather(table, ids)`` replaced by ``GatherBlockQuantized`` of the
    quantized parts of the weight ``name`` (the same values as ``table``; the quantizer stores one
    row of blocks per output feature, a row of the table): the q part viewed as
    ``[rows, in * bits / 8]`` and the scales ``[rows, in / block]``; the ``table`` initializer is
    dropped."""
    import onnx
    from onnx import helper

    def lookup(n) -> bool:
        return n.op_type == "Gather" and n.input[0] == table

    gathers = [n for n in graph.node if lookup(n)]
    del graph.initializer[[i.name for i in graph.initializer].index(table)]  # in place: no copy of the rest
    inits = {i.name: i for i in graph.initializer}
    keys = part_keys(name, enc)
    rows, *rest = [int(d) for d in inits[keys["q"]].dims]
    shape = f"{name}_gather_shape"
    graph.initializer.append(helper.make_tensor(shape, onnx.TensorProto.INT64, [2], [rows, int(np.prod(rest))]))
    nodes = [helper.make_node("Reshape", [keys["q"], shape], [f"{name}_gather_data"], name=f"{name}_gather_reshape")]
    nodes += [helper.make_node("GatherBlockQuantized", [f"{name}_gather_data", g.input[1], keys["scale"]],
                               list(g.output), name=f"{g.name}_quantized", domain="com.microsoft",
                               bits=enc.bits, block_size=enc.group, gather_axis=0, quantize_axis=1)
              for g in gathers]
    kept = [n for n in graph.node if not lookup(n)]
    graph.ClearField("node")
    graph.node.extend(nodes + kept)


def _initializer_bytes(init, base: Path) -> bytes | None:
    """An initializer's data: its ``raw_data``, or its range of an external data file in ``base``."""
    import onnx

    if init.data_location != onnx.TensorProto.EXTERNAL:
        return init.raw_data if init.HasField("raw_data") else None
    where = {e.key: e.value for e in init.external_data}
    return read_range(base / where["location"], int(where.get("offset", 0)), int(where["length"]))


def _place(init, *, data: bytes | None = None, location: str = "", offset: int = 0, length: int = 0) -> None:
    """Store an initializer's data inside the graph (``data``) or as the range ``offset``,
    ``length`` of the external file ``location`` (ONNX's external-data fields)."""
    import onnx

    init.ClearField("raw_data")
    del init.external_data[:]
    if data is not None:
        init.data_location = onnx.TensorProto.DEFAULT
        init.raw_data = data
        return
    init.data_location = onnx.TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", offset), ("length", length)):
        entry = init.external_data.add()
        entry.key, entry.value = k, str(v)


class _InputMajorLinear(torch.nn.Module):
    """``nn.Linear`` with its weight stored ``[in, out]`` (``x @ W + b``), same parameter names, so
    torch.onnx.export writes ``MatMul(x, W)`` on that initializer (``nn.Linear`` exports as
    ``MatMul(x, Transpose(W))``, which onnxruntime's quantizer does not take; folding the Transpose
    in the ONNX graph would hold every weight twice)."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.weight = torch.nn.Parameter(linear.weight.detach().t().contiguous(), requires_grad=False)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.matmul(x, self.weight)
        return y if self.bias is None else y + self.bias


def genai_config(cfg, max_context: int, head_dim: int) -> dict:
    n_layers = cfg.num_hidden_layers
    eos = cfg.eos_token_id
    return {
        "model": {
            "bos_token_id": cfg.bos_token_id,
            "context_length": int(max_context),
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": MODEL,
                "head_size": head_dim,
                "hidden_size": cfg.hidden_size,
                "inputs": {
                    "input_ids": "input_ids",
                    "attention_mask": "attention_mask",
                    "position_ids": "position_ids",
                    "past_key_names": "past_key_values.%d.key",
                    "past_value_names": "past_key_values.%d.value",
                },
                "outputs": {
                    "logits": "logits",
                    "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value",
                },
                "num_attention_heads": cfg.num_attention_heads,
                "num_hidden_layers": n_layers,
                "num_key_value_heads": cfg.num_key_value_heads,
            },
            "eos_token_id": eos,
            "pad_token_id": cfg.pad_token_id if cfg.pad_token_id is not None else eos,
            "type": family_of(cfg).genai_type,
            "vocab_size": cfg.vocab_size,
        },
        "search": {
            "diversity_penalty": 0.0, "do_sample": False, "early_stopping": True, "length_penalty": 1.0,
            "max_length": int(max_context), "min_length": 0, "no_repeat_ngram_size": 0, "num_beams": 1,
            "num_return_sequences": 1, "past_present_share_buffer": False, "repetition_penalty": 1.0,
            "temperature": 1.0, "top_k": 1, "top_p": 1.0,
        },
    }


def _onnx_export(wrapper, path: Path, max_context: int) -> None:
    import warnings

    from torch.export import Dim

    n_layers, _, n_kv, head_dim = wrapper.n_layers, wrapper.n_heads, wrapper.n_kv, wrapper.head_dim
    dtype = wrapper.lm_head.weight.dtype
    s, p = 3, 5
    ids = torch.zeros((1, s), dtype=torch.long)
    mask = torch.ones((1, p + s), dtype=torch.long)
    pos = torch.arange(p, p + s)[None]
    past = [torch.zeros((1, n_kv, p, head_dim), dtype=dtype) for _ in range(2 * n_layers)]
    ins, outs = io_names(n_layers)
    seq, plen = Dim("seq", min=1, max=max_context), Dim("past", min=0, max=max_context)
    dyn = {"input_ids": {1: seq}, "attention_mask": {1: plen + seq} if False else {1: Dim.AUTO},
           "position_ids": {1: seq}, "past": [{2: plen} for _ in range(2 * n_layers)]}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            prog = torch.onnx.export(wrapper, (ids, mask, pos, past), dynamo=True, optimize=False,
                                     input_names=ins, output_names=outs, dynamic_shapes=dyn,
                                     external_data=True, verbose=False)
        except Exception as e:
            raise LoragenError(f"torch.onnx.export failed: {str(e).splitlines()[0]}") from None
    prog.save(str(path), external_data=True)


EXPORTER = ONNXExporter()
