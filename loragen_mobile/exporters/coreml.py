"""Core ML backend: ``model.mlpackage`` (ML program, iOS 18, stateful KV cache, fp16 by default).

I/O contract: the stateful-LLM convention of Hugging Face swift-transformers' ``LanguageModel``
(``LanguageModelWithStatefulKVCache``, tag 1.3.3, Sources/Models/LanguageModel.swift) and of the
Core ML export example it ships (Examples/Mistral7B/export.py, the recipe of Apple's Core ML Llama
article): inputs ``inputIds`` int32 ``[1, q]`` and ``causalMask`` float16 ``[1, 1, q, end]``
(additive, 0 = attend, -inf = masked; the new tokens take positions ``end - q .. end - 1``), states
``keyCache``/``valueCache`` ``[layers, 1, kv_heads, max_context, head_dim]``, output ``logits``.
``logits`` is ``[1, 1, vocab]`` (last position) unless exported with ``all_logits=True``
(``[1, q, vocab]``). The contract is recorded in ``artifact.json`` (``inputs``, ``outputs``,
``states``, ``io_contract``).

Export: :class:`~.common.StatefulCoreMLLM` -> ``torch.export`` (``q`` and ``end`` dynamic in
1..max_context) -> ``run_decompositions({})`` -> drop ``aten.alias`` nodes -> ``ct.convert(...,
minimum_deployment_target=iOS18, states=[keyCache, valueCache])``. One ``main`` function serves
prefill and decode; the app creates the cache with ``model.make_state()``.

Swap slots are byte ranges of ``Data/com.apple.CoreML/weights/weight.bin``: the converter stores each
Linear weight as a ``const`` op (named ``p_<param path>_to_fp16``) whose ``blobFileValue.offset``
points at a 64-byte blob header ``{u32 0xDEADBEEF, u32 dtype, u64 size, u64 data_offset}``; the slot
records ``offset`` (= data_offset), ``header_offset``, dtype and shape. Export checks that the stored
bytes equal the parameter cast to the model precision, so a swap is just writing bytes there.

Quantized exports (``quantize="int4-b32"`` -> encoding ``coreml-int4-b32``, ``"int8"`` ->
``coreml-int8-pc``; fp16 only): after conversion, coremltools.optimize's
``linear_quantize_weights`` (linear_symmetric; int4 blocks of 32 input features, or int8 one scale
per output row) quantizes every Linear weight of the decoder layers (attention and MLP
projections, hence every swappable weight); the token embedding and ``lm_head`` stay fp16. Each such
weight becomes a ``constexpr_blockwise_shift_scale`` op (``<const>_quantized``) whose ``data`` (int4
two's complement nibbles, element 2i in the low nibble, or int8; ``[out, in]``) and ``scale`` (fp16
``[out, in / block]``) are weight.bin blobs of their own: the ``P:q`` and ``P:scale`` slots, equal
byte for byte to :mod:`loragen_mobile.quant`'s rule.

Core ML cannot predict on Linux: ``open_runner`` raises a LoragenError off macOS, and ``validate``
reads the package back (signature + every stored weight vs the PyTorch model; a quantized weight's
codes and scales vs the rule and the slots) instead of running it.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import platform
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .. import quant
from ..errors import LoragenError
from .artifact import Artifact, SwapSlot, slot_corrupt, tensor_bytes
from .common import StatefulCoreMLLM, _dims
from .pipeline import ExportJob, Exporter, graph_name, stored_weights
from .runner import Runner
from .validation import ValidationReport

PACKAGE = "model.mlpackage"
WEIGHTS = f"{PACKAGE}/Data/com.apple.CoreML/weights/weight.bin"
SPEC = f"{PACKAGE}/Data/com.apple.CoreML/model.mlmodel"
BLOB_MAGIC = 0xDEADBEEF
#: the ML program op that stores a quantized weight (its data and scale are weight.bin blobs)
QUANT_OP = "constexpr_blockwise_shift_scale"
#: weight.bin blob data type codes (MIL blob storage) of the stored parts of a quantized weight
BLOB_FP16, BLOB_INT8, BLOB_INT4 = 1, 4, 8
INPUT_IDS, CAUSAL_MASK, KEY_CACHE, VALUE_CACHE, LOGITS = "inputIds", "causalMask", "keyCache", "valueCache", "logits"
IO_CONTRACT = {
    "consumer": "huggingface/swift-transformers 1.3.3 LanguageModelWithStatefulKVCache "
                "(Sources/Models/LanguageModel.swift; Examples/Mistral7B/export.py)",
    "causal_mask": "additive float16 [1, 1, q, end]: 0 = attend, -inf = masked; the q new tokens "
                   "take positions end - q .. end - 1",
}


def _quiet():
    import logging

    logging.getLogger("coremltools").setLevel(logging.ERROR)


#: elements of a weight examined at once by :func:`_fp16_overflow`
OVERFLOW_CHUNK = 1 << 22


def _fp16_overflow(op) -> bool:
    """coremltools' ``FP16ComputePrecision.fp16_overflow`` (whether a float32 const input of ``op``
    holds a finite value, ``|v| < 1e38``, beyond float16's 65504), the same answer computed a chunk of
    the weight at a time. coremltools 9.0 takes ``abs_value[np.where(abs_value < 1e38)]`` of the whole
    weight: ``np.where`` gives an int64 index array per dimension, so the check holds about 8 times
    the weight's float32 bytes at once (17 GB for Gemma-2B's 256,000 x 2,048 embedding), which is what
    made the ``add_fp16_cast`` pass run a full-size conversion out of memory."""
    for inputs in op.inputs.values():
        for var in inputs if isinstance(inputs, (list, tuple)) else (inputs,):
            if var.op is None or var.op.op_type != "const" or not var.is_tensor_or_scalar_of(dtype="fp32"):
                continue
            flat = np.asarray(var.op.val.val).reshape(-1)
            for i in range(0, flat.size, OVERFLOW_CHUNK):
                a = np.abs(flat[i:i + OVERFLOW_CHUNK])
                if np.max(a, where=a < 1e38, initial=0.0) > 65504:
                    return True
    return False


@contextlib.contextmanager
def _patched(*targets):
    """Each ``(module or class, attribute, value)`` of TARGETS set for the duration and restored
    after: coremltools has no option for either use below."""
    from unittest import mock

    with contextlib.ExitStack() as stack:
        for obj, attr, value in targets:
            stack.enter_context(mock.patch.object(obj, attr, value))
        yield


def _bounded_fp16_overflow_check():
    """coremltools' fp16 pass with :func:`_fp16_overflow` as its overflow check, for one conversion."""
    from coremltools.converters.mil.mil.passes.defs.quantization import FP16ComputePrecision

    return _patched((FP16ComputePrecision, "fp16_overflow", staticmethod(_fp16_overflow)))


#: coremltools' modules whose progress bars an export shows (frontend ops, pass pipelines, weight
#: compression): each imports tqdm at module level, and coremltools has no option to turn them off
_PROGRESS_MODULES = {"coremltools.converters.mil.frontend.torch.ops": "_tqdm",
                     "coremltools.converters.mil.mil.passes.pass_pipeline": "tqdm",
                     "coremltools.optimize.coreml._post_training_quantization": "tqdm",
                     "coremltools.optimize.coreml._quantization_passes": "tqdm"}


def _library_progress(enabled: bool):
    """coremltools' progress bars follow the export's ``progress``: off, each module's ``tqdm`` is
    ``tqdm(..., disable=True)`` for the duration (``loragen export --no-progress`` stays quiet)."""
    import functools
    import importlib

    if enabled:
        return contextlib.nullcontext()
    mods = [(importlib.import_module(name), attr) for name, attr in _PROGRESS_MODULES.items()]
    return _patched(*[(m, attr, functools.partial(getattr(m, attr), disable=True)) for m, attr in mods])


def _convert(w, max_context: int, precision: str):
    """torch.export of the stateful wrapper ``w`` -> ``ct.convert`` (ML program, iOS 18, states)."""
    import coremltools as ct
    from torch.export import Dim

    q, end = Dim("q", min=1, max=max_context), Dim("end", min=1, max=max_context)
    ids, mask = torch.zeros((1, 2), dtype=torch.long), StatefulCoreMLLM.causal_mask(2, 5)
    with torch.no_grad():
        ep = torch.export.export(w, (ids, mask), dynamic_shapes=({1: q}, {2: q, 3: end}), strict=False)
        ep = ep.run_decompositions({})
    g = ep.graph
    for n in list(g.nodes):
        if n.op == "call_function" and n.target == torch.ops.aten.alias.default:
            n.replace_all_uses_with(n.args[0])
            g.erase_node(n)
    ep.graph_module.recompile()
    np_dtype = np.float16 if precision == "fp16" else np.float32
    states = [ct.StateType(wrapped_type=ct.TensorType(shape=tuple(w.keyCache.shape), dtype=np_dtype), name=n)
              for n in (KEY_CACHE, VALUE_CACHE)]
    inputs = [ct.TensorType(name=INPUT_IDS, dtype=np.int32), ct.TensorType(name=CAUSAL_MASK, dtype=np.float16)]
    cp = ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32
    try:
        with _bounded_fp16_overflow_check():
            return ct.convert(ep, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS18, inputs=inputs,
                              states=states, outputs=[ct.TensorType(name=LOGITS, dtype=np_dtype)],
                              compute_precision=cp, skip_model_load=True)
    except Exception as e:
        raise LoragenError(f"coremltools conversion failed: {str(e).splitlines()[0]}") from None


def _quant_config(enc: quant.Encoding):
    """coremltools.optimize's config for ``enc``: linear_symmetric, int4 per block or int8 per row."""
    import coremltools.optimize.coreml as cto

    kw = ({"granularity": "per_block", "block_size": enc.group} if enc.group else {"granularity": "per_channel"})
    return cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype=f"int{enc.bits}", weight_threshold=0, **kw)


def _quantize_program(mlmodel, consts: list[str], enc: quant.Encoding):
    """The converted ML program with the named weight consts quantized (and nothing else)."""
    import coremltools.optimize.coreml as cto

    cfg = _quant_config(enc)
    try:
        return cto.linear_quantize_weights(mlmodel, cto.OptimizationConfig(op_name_configs={c: cfg for c in consts}))
    except Exception as e:
        raise LoragenError(f"coremltools quantization failed: {str(e).splitlines()[0]}") from None


def quant_const(param: str) -> str:
    """The name of the quantized weight op of ``param`` (the fp16 const's name + ``_quantized``)."""
    return f"p_{graph_name(param)}_to_fp16_quantized"


def blob_quantized(spec) -> dict[str, dict]:
    """op output name -> {"data": {header_offset, shape}, "scale": {...}} for every
    quantized weight op, with the names of any other inputs (a zero point) under ``"other"``."""
    out = {}
    for fname, f in spec.mlProgram.functions.items():
        blk = f.block_specializations[f.opset]
        for op in blk.operations:
            if op.type != QUANT_OP:
                continue
            ent = {"function": fname, "other": sorted(k for k in op.inputs if k not in ("data", "scale"))}
            for arg in ("data", "scale"):
                args = op.inputs[arg].arguments if arg in op.inputs else []
                v = args[0].value if len(args) == 1 and args[0].WhichOneof("binding") == "value" else None
                if v is None or v.WhichOneof("value") != "blobFileValue":
                    continue
                ent[arg] = {"header_offset": int(v.blobFileValue.offset),
                            "shape": [int(d.constant.size) for d in v.type.tensorType.dimensions]}
            out[op.outputs[0].name] = ent
    return out


def blob_dtype(slot: SwapSlot) -> int | None:
    """The weight.bin blob data type code a part slot's blob must have (None: an unquantized slot)."""
    if slot.part is None:
        return None
    if slot.part == "scale":
        return BLOB_FP16
    return BLOB_INT4 if slot.encoding.bits == 4 else BLOB_INT8


def blob_consts(spec) -> dict[str, dict]:
    """const name -> {header_offset, shape, datatype} for every const stored in weight.bin."""
    out = {}
    for fname, f in spec.mlProgram.functions.items():
        blk = f.block_specializations[f.opset]
        for op in blk.operations:
            if op.type != "const":
                continue
            v = op.attributes["val"]
            if v.WhichOneof("value") != "blobFileValue":
                continue
            out[op.outputs[0].name] = {
                "function": fname, "header_offset": int(v.blobFileValue.offset),
                "shape": [int(d.constant.size) for d in v.type.tensorType.dimensions],
            }
    return out


@contextlib.contextmanager
def mapped_bytes(path: Path):
    """The bytes of ``path`` as a read-only map (slices read only their pages): weight.bin is as large
    as the model's weights, which a full-size export or validation must not read into memory."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            yield b""
            return
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            yield m


def read_blob_header(buf: bytes, header_offset: int) -> tuple[int, int, int]:
    if header_offset + 24 > len(buf):
        raise LoragenError(f"weight.bin is truncated (blob header at {header_offset})")
    magic, dt, size, data_off = struct.unpack_from("<IIQQ", buf, header_offset)
    if magic != BLOB_MAGIC:
        raise LoragenError(f"weight.bin has no blob header at offset {header_offset}")
    return dt, size, data_off


def _signature(spec) -> dict:
    from coremltools.proto import FeatureTypes_pb2 as ft

    names = {v: k for k, v in ft.ArrayFeatureType.ArrayDataType.items()}

    def arr(t):
        return {"dtype": names.get(t.dataType, str(t.dataType)).lower(), "shape": [int(s) for s in t.shape]}

    d = spec.description
    sig = {"inputs": [], "outputs": [], "states": []}
    for i in d.input:
        a = arr(i.type.multiArrayType)
        ranges = [[int(r.lowerBound), int(r.upperBound)] for r in i.type.multiArrayType.shapeRange.sizeRanges]
        sig["inputs"].append({"name": i.name, **a, "ranges": ranges})
    for o in d.output:
        sig["outputs"].append({"name": o.name, **arr(o.type.multiArrayType)})
    for s in d.state:
        sig["states"].append({"name": s.name, **arr(s.type.stateType.arrayType)})
    return sig


def _expected_signature(model, max_context: int, precision: str, all_logits: bool = False) -> dict:
    """The Core ML signature of the contract (see the module docstring) for this model."""
    L, _, kv, hd = _dims(model.config)
    dt = "float16" if precision == "fp16" else "float32"
    out = {"name": LOGITS, "dtype": dt}
    if not all_logits:  # last position only: a fixed [1, 1, vocab] output
        out["shape"] = [1, 1, model.config.vocab_size]
    return {
        "inputs": [{"name": INPUT_IDS, "dtype": "int32", "shape": [1, 1], "ranges": [[1, 1], [1, max_context]]},
                   {"name": CAUSAL_MASK, "dtype": "float16", "shape": [1, 1, 1, 1],
                    "ranges": [[1, 1], [1, 1], [1, max_context], [1, max_context]]}],
        "outputs": [out],
        "states": [{"name": n, "dtype": dt, "shape": [L, 1, kv, max_context, hd]} for n in (KEY_CACHE, VALUE_CACHE)],
    }


class CoreMLRunner(Runner):  # pragma: no cover - needs macOS (Core ML framework)
    def __init__(self, artifact: Artifact, swap):
        super().__init__(artifact)
        import coremltools as ct

        self.model = ct.models.MLModel(str(artifact.file(PACKAGE)))
        self._reset()

    def _reset(self):
        self.state = self.model.make_state()

    def _forward(self, ids, start):
        end = start + len(ids)
        x = {INPUT_IDS: np.array([ids], dtype=np.int32),
             CAUSAL_MASK: StatefulCoreMLLM.causal_mask(len(ids), end).numpy().astype(np.float16)}
        out = self.model.predict(x, state=self.state)
        return torch.from_numpy(np.asarray(out[LOGITS][0], dtype=np.float32))


class CoreMLExporter(Exporter):
    name = "coreml"
    precisions = ("fp16", "fp32")
    default_precision = "fp16"
    load_dtype = torch.float32  # converted in fp32; ct.convert's compute precision gives the stored one
    #: scheme -> encoding: int4 in blocks of 32 input features, int8 one scale per output row (fp16 scales)
    schemes = {"int4-b32": "coreml-int4-b32", "int8": "coreml-int8-pc"}
    quantized_precision = "fp16"  # fp16 scales, fp16 compute (iOS 18)
    fingerprint_files = (SPEC, WEIGHTS)

    def export(self, *args, **kw) -> Artifact:
        _quiet()
        return super().export(*args, **kw)

    def wrap(self, job: ExportJob) -> torch.nn.Module:
        return StatefulCoreMLLM(job.model.float(), job.max_context, all_logits=job.all_logits).eval()

    def quantize(self, job: ExportJob, wrapper: torch.nn.Module) -> torch.nn.Module:
        """Chooses the weights to quantize (:func:`stored_weights`); coremltools quantizes the
        converted program in :meth:`lower` (its optimizer works on ML programs, not on torch)."""
        if job.encoding is None:
            return wrapper
        job.quantized = stored_weights(job.model, job.encoding, job.swap_names, self.name)
        return wrapper

    def lower(self, job: ExportJob, wrapper: torch.nn.Module) -> None:
        # the converter's consts share the parameters' memory: keep the fp32 weights in the page cache
        job.map_weights(job.out / ".weights")
        with _library_progress(job.progress):
            ml = _convert(wrapper, job.max_context, job.precision)
            if job.encoding is not None:
                ml = _quantize_program(ml, [f"p_{graph_name(n)}_to_fp16" for n in job.quantized], job.encoding)
        ml.save(str(job.out / PACKAGE))

    def locate_slots(self, job: ExportJob) -> list[SwapSlot]:
        """Each slot is the data of its const's blob in weight.bin (the parameter cast to the precision);
        a quantized weight's two slots are its op's data and scale blobs (the encoding's rule)."""
        import coremltools as ct

        spec = ct.utils.load_spec(str(job.out / PACKAGE))
        job.state["signature"] = _signature(spec)
        with mapped_bytes(job.out / WEIGHTS) as buf:
            if job.encoding is not None:
                return self._quantized_slots(job, blob_quantized(spec), buf)
            return self._slots(job, blob_consts(spec), buf)

    def _slots(self, job: ExportJob, consts: dict, buf) -> list[SwapSlot]:
        suffix = "_to_fp16" if job.precision == "fp16" else ""
        slots = []
        for n in job.swap_names:
            cname = f"p_{graph_name(n)}{suffix}"
            if cname not in consts:
                raise LoragenError(f"coreml: weight {n} was not stored as const {cname} in weight.bin")
            c = consts[cname]
            _, size, off = read_blob_header(buf, c["header_offset"])
            t = job.params[n].detach().to(job.dtype)
            data = tensor_bytes(t)
            if size != len(data) or buf[off:off + size] != data or c["shape"] != list(t.shape):
                raise LoragenError(f"coreml stored {n} in a different layout; cannot record a swap slot")
            slots.append(SwapSlot.of(n, t, WEIGHTS, key=cname, offset=off, header_offset=c["header_offset"]))
        return slots

    def _quantized_slots(self, job: ExportJob, qops: dict, buf: bytes) -> list[SwapSlot]:
        enc = job.encoding
        for n in job.quantized:
            key = quant_const(n)
            ent = qops.get(key)
            if ent is None or "data" not in ent or "scale" not in ent or ent["other"]:
                raise LoragenError(f"coreml: weight {n} was not stored as a symmetric {QUANT_OP} op {key} "
                                   "with data and scale in weight.bin", code="model")
        slots = []
        for n in job.swap_names:
            key, parts = quant_const(n), job.expected_parts(n)
            ent = qops[key]
            shapes = {"q": list(job.params[n].shape), "scale": enc.part_shapes(job.params[n].shape)["scale"]}
            for part, arg in (("q", "data"), ("scale", "scale")):
                t, h = parts[part], ent[arg]["header_offset"]
                dt, size, off = read_blob_header(buf, h)
                data = tensor_bytes(t)
                want_dt = BLOB_FP16 if part == "scale" else (BLOB_INT4 if enc.bits == 4 else BLOB_INT8)
                if dt != want_dt or size != len(data) or ent[arg]["shape"] != shapes[part]:
                    raise LoragenError(f"coreml stored the {part} part of {n} as blob type {dt}, {size} bytes, shape "
                                       f"{ent[arg]['shape']}; {enc.id} stores type {want_dt}, {len(data)} bytes, "
                                       f"shape {shapes[part]}", code="model")
                if buf[off:off + size] != data:
                    raise LoragenError(f"coreml's {part} bytes of {n} differ from the {enc.id} rule "
                                       "(loragen_mobile.quant); cannot record a swap slot", code="model")
                slots.append(SwapSlot.part_of(n, part, enc, t, WEIGHTS, key=key, offset=off, header_offset=h))
        return slots

    def backend_meta(self, job: ExportJob) -> dict:
        sig = job.state["signature"]
        return {
            "deployment_target": "iOS18",
            "model_format": "mlprogram",
            "functions": ["main"],
            "kv_cache": f"Core ML states {KEY_CACHE}/{VALUE_CACHE} [layers, 1, kv_heads, max_context, head_dim]",
            "inputs": sig["inputs"], "outputs": sig["outputs"], "states": sig["states"],
            "logits": "all" if job.all_logits else "last",
            "io_contract": IO_CONTRACT,
            "files": [PACKAGE],
        }

    def slot_offsets(self, root: Path, slots: list[SwapSlot]) -> dict[str, int]:
        """A slot's bytes are the data of the weight.bin blob whose header it records (a part slot's
        blob also has the part's data type: int4/int8 codes, fp16 scales)."""
        out = {}
        if not slots:
            return out
        with open(root / WEIGHTS, "rb") as f:
            for s in slots:
                h = s.extra.get("header_offset")
                if s.file != WEIGHTS or not isinstance(h, int) or h < 0:
                    raise slot_corrupt(root, s, "has no blob header in weight.bin")
                f.seek(h)
                head = f.read(24)
                magic, dt, size, off = struct.unpack("<IIQQ", head) if len(head) == 24 else (0, 0, 0, 0)
                want_dt = blob_dtype(s)
                if magic != BLOB_MAGIC or off != s.offset or size != s.nbytes or want_dt not in (None, dt):
                    raise slot_corrupt(root, s, "does not match its weight.bin blob")
                out[s.name] = off
        return out

    def make_runner(self, art: Artifact, swap: dict[str, torch.Tensor]) -> Runner:
        if platform.system() != "Darwin":
            raise LoragenError("Core ML models can only run on macOS/iOS; on this host use "
                               "'loragen validate' (reads the package back) or the executorch/onnx backends")
        if swap:  # pragma: no cover
            raise LoragenError("coreml: use apply_swap to write a swapped package, then open that")
        return CoreMLRunner(art, swap)  # pragma: no cover

    def _program(self, artifact_dir):
        """The ML program read back through coremltools' milproto loader (weights from weight.bin)."""
        import coremltools as ct
        from coremltools.converters.mil.frontend.milproto.load import load as milload

        _quiet()
        d = Path(artifact_dir)
        spec = ct.utils.load_spec(str(d / PACKAGE))
        try:
            return milload(spec, spec.specificationVersion,
                           file_weights_dir=str(d / PACKAGE / "Data/com.apple.CoreML/weights"))
        except Exception as e:
            raise LoragenError(f"cannot read back {d / PACKAGE}: {str(e).splitlines()[0]}") from None

    def read_weights(self, artifact_dir) -> dict[str, np.ndarray]:
        """Every const of the ML program read back through coremltools' milproto loader."""
        out = {}
        for f in self._program(artifact_dir).functions.values():
            for op in f.operations:
                if op.op_type == "const" and op.outputs[0].val is not None:
                    out[op.outputs[0].name] = np.asarray(op.outputs[0].val)
        return out

    def iter_quantized(self, artifact_dir):
        """Every quantized weight op read back through coremltools' loader, one at a time: op name ->
        ``q`` (the signed integer codes, int8 ``[out, in]``), ``scale`` (fp16) and ``value`` (the fp16
        weight coremltools materializes from them, as the runtime does; made when the op is reached,
        so that a full-size model's materialized weights are never all held at once)."""
        for f in self._program(artifact_dir).functions.values():
            for op in f.operations:
                if op.op_type == QUANT_OP:
                    yield op.outputs[0].name, {"q": np.asarray(op.data.val), "scale": np.asarray(op.scale.val),
                                               "value": np.asarray(op.materialized_val_inference())}

    def read_quantized(self, artifact_dir) -> dict[str, dict[str, np.ndarray]]:
        """:meth:`iter_quantized` as a dict (every materialized weight held)."""
        return dict(self.iter_quantized(artifact_dir))

    def validate_dtype(self, model_dir) -> torch.dtype:
        """The checkpoint's own dtype when it is 16-bit: the read-back compares weights, each cast
        where it is compared, and a 16-bit weight is exact in fp32 (half the memory of an fp32 load:
        5 GB at Gemma-2B)."""
        from ..models import stored_float_dtype

        return stored_float_dtype(model_dir)

    def validate_backend(self, report: ValidationReport, art: Artifact, model, steps: int) -> None:
        """Core ML cannot predict off Apple platforms: the package is read back instead (signature,
        every stored weight vs the model, the swap slots' bytes; for a quantized artifact every
        quantized weight's codes and scales vs the encoding's rule and the slots, and its distance
        from the fp32 weights)."""
        import coremltools as ct

        prec = art.meta["precision"]
        spec = ct.utils.load_spec(str(art.file(PACKAGE)))
        sig = _signature(spec)
        exp = _expected_signature(model, art.meta["max_context"], prec, art.meta.get("logits") == "all")
        for part in ("inputs", "outputs", "states"):
            got = [{k: v for k, v in x.items() if k in e} for x, e in zip(sig[part], exp[part])]
            ok = len(sig[part]) == len(exp[part]) and got == exp[part]
            report.add(f"signature_{part}", ok, f"{len(sig[part])} {part} match the model" if ok
                       else f"expected {exp[part]}, found {sig[part]}")

        info = art.meta.get("weight_encoding") or {}
        enc = quant.get(info["id"]) if info else None
        qnames = list(info.get("params", [])) if enc is not None else []
        consts = self.read_weights(art.path)
        tdt = {"fp16": torch.float16, "fp32": torch.float32}[prec]
        suffix = "_to_fp16" if prec == "fp16" else ""
        aliases: dict[int, list[str]] = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            aliases.setdefault(id(p), []).append(name)
        seen, by_value, worst, bad, missing = set(), set(), 0.0, [], []
        for name, p in model.named_parameters():
            if name in qnames:
                continue  # checked below against the encoding's rule
            cands = [f"p_{graph_name(a)}{sfx}" for a in aliases[id(p)] for sfx in (suffix, "")]
            cname = next((c for c in cands if c in consts), None)
            want = p.detach().to(tdt).numpy()
            if cname is None:
                # Small parameters may be folded into a derived constant (Gemma's 1 + w norm, a
                # cast): accept a stored constant equal to the parameter or to 1 + parameter.
                derived = [want, (1.0 + p.detach().float()).to(tdt).numpy()]
                if p.dim() == 1 and any(np.all(w == 1) for w in derived):
                    by_value.add(name)  # a multiply by ones: the converter removes it (identity)
                elif any(c.shape == want.shape and any(np.array_equal(c, w) for w in derived)
                       for c in consts.values()):
                    by_value.add(name)
                else:
                    missing.append(name)
                continue
            got = consts[cname]
            if got.shape != want.shape:
                bad.append(f"{name} shape {list(got.shape)} != {list(want.shape)}")
                continue
            d = float(np.abs(got.astype(np.float32) - want.astype(np.float32)).max()) if want.size else 0.0
            worst = max(worst, d)
            if d != 0.0:
                bad.append(f"{name} differs by {d:.3g}")
            seen.add(name)
        report.add("weights_equal_model", not bad and len(seen) > 0,
                   f"{len(seen)} stored weights equal the model cast to {prec}" if not bad
                   else f"{len(bad)} weight(s) differ: {'; '.join(bad[:3])}", worst, 0.0)
        params = dict(model.named_parameters(remove_duplicate=False))
        with mapped_bytes(art.file(WEIGHTS)) as buf:
            def slot_holds(s: SwapSlot, t: torch.Tensor) -> bool:
                """The slot's blob header points at the slot's offset, and its data is ``t``'s bytes."""
                _, size, off = read_blob_header(buf, s.extra["header_offset"])
                return off == s.offset and buf[off:off + size] == tensor_bytes(t)

            found_q, parts_ok = (self._check_quantized(report, art, enc, qnames, params, slot_holds)
                                 if enc is not None else (set(), set()))
            missing += [n for n in qnames if n not in found_q]
            n_total = len(seen) + len(by_value) + len(missing) + len(bad) + len(found_q)
            quantized = f", {len(found_q)} quantized" if enc is not None else ""
            report.add("weights_present", not missing,
                       f"all {n_total} parameters stored ({len(seen)} by name{quantized}, {len(by_value)} folded or "
                       "identity)" if not missing else f"missing from the package: {', '.join(missing[:3])}")
            # a quantized weight's part slots were compared with its rule in _check_quantized (each
            # weight quantized once, its slot bytes read once)
            slot_bad = [s.name for s in art.slots if (s.name not in parts_ok if s.part is not None
                                                      else not slot_holds(s, params[s.name].detach().to(tdt)))]
        what = f"the model's weights ({enc.id} rule for quantized ones)" if enc is not None else "the model's weights"
        report.add("swap_slots_bytes", not slot_bad,
                   f"{len(art.slots)} slot byte ranges hold {what}" if not slot_bad
                   else f"slot bytes differ from the model: {', '.join(slot_bad[:3])}")

    def _check_quantized(self, report: ValidationReport, art: Artifact, enc: quant.Encoding, qnames: list[str],
                         params: dict, slot_holds: Callable[[SwapSlot, torch.Tensor], bool]) -> tuple[set[str], set[str]]:
        """Every quantized weight read back by coremltools' loader, one at a time, against the encoding's
        rule applied to the model's weight (each weight quantized when it is reached, so that a
        full-size model's rule is never all held): codes and scales equal the rule's, and so do the
        bytes of its swap slots; the materialized weight equals the rule's dequantization; its largest
        distance from the fp32 weight is reported (within one quantization step of its block).
        Returns the weights found and the part slots that hold their rule's bytes."""
        slots = art.quantized_params()
        names = {quant_const(n): n for n in qnames if n in params}
        found, parts_ok, bad, dq_bad, step_bad, worst = set(), set(), [], [], [], 0.0
        for key, op in self.iter_quantized(art.path):
            n = names.get(key)
            if n is None:
                continue
            found.add(n)
            parts = enc.quantize(params[n].detach().float())
            codes = enc.codes(parts["q"]).numpy()
            scale = parts["scale"].numpy()
            ok = op["q"].shape == codes.shape and np.array_equal(op["q"].astype(np.float32), codes) and \
                op["scale"].dtype == np.float16 and np.array_equal(op["scale"].view(np.uint16), scale.view(np.uint16))
            held = {s.name for s in slots.get(n, {}).values() if slot_holds(s, parts[s.part])}
            parts_ok |= held
            if not ok or len(held) != len(slots.get(n, {})):
                bad.append(n)
                continue
            dq = enc.dequantize(parts).numpy()
            if not np.array_equal(op["value"].astype(np.float32), dq):
                dq_bad.append(n)
            w = params[n].detach().float().numpy()
            err = np.abs(dq - w)
            worst = max(worst, float(err.max()))
            g = enc.group or w.shape[1]
            step = np.repeat(scale.astype(np.float32).reshape(w.shape[0], -1), g, axis=1)
            if np.any(err > step + np.abs(w) * 2.0 ** -10):
                step_bad.append(n)
        report.add("quantized_read_back", not bad and len(found) == len(names),
                   f"{len(found)} quantized weights read back: codes and scales equal the {enc.id} rule and the "
                   f"{len(parts_ok)} part slots" if not bad and len(found) == len(names)
                   else f"{len(bad)} quantized weight(s) differ from the rule or their slots: {', '.join(bad[:3])}")
        report.add("quantized_dequantize", not dq_bad,
                   "coremltools' materialized weights equal the rule's dequantization" if not dq_bad
                   else f"materialized weights differ: {', '.join(dq_bad[:3])}")
        report.add("quantized_vs_fp32", not step_bad and len(found) > 0,
                   f"max abs difference of dequantized vs fp32 weights {worst:.4g} (each within one quantization "
                   "step of its block)" if not step_bad else f"beyond one quantization step: {', '.join(step_bad[:3])}",
                   worst)
        return found, parts_ok


EXPORTER = CoreMLExporter()
