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

Core ML cannot predict on Linux: ``open_runner`` raises a LoragenError off macOS, and ``validate``
reads the package back (signature + every stored weight vs the PyTorch model) instead of running it.
"""

from __future__ import annotations

import platform
import struct
from pathlib import Path

import numpy as np
import torch

from ..errors import LoragenError
from .artifact import Artifact, SwapSlot, slot_corrupt, tensor_bytes
from .common import StatefulCoreMLLM, _dims
from .pipeline import ExportJob, Exporter, graph_name
from .runner import Runner
from .validation import ValidationReport

PACKAGE = "model.mlpackage"
WEIGHTS = f"{PACKAGE}/Data/com.apple.CoreML/weights/weight.bin"
SPEC = f"{PACKAGE}/Data/com.apple.CoreML/model.mlmodel"
BLOB_MAGIC = 0xDEADBEEF
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
        return ct.convert(ep, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS18, inputs=inputs,
                          states=states, outputs=[ct.TensorType(name=LOGITS, dtype=np_dtype)], compute_precision=cp,
                          skip_model_load=True)
    except Exception as e:
        raise LoragenError(f"coremltools conversion failed: {str(e).splitlines()[0]}") from None


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
    fingerprint_files = (SPEC, WEIGHTS)

    def export(self, *args, **kw) -> Artifact:
        _quiet()
        return super().export(*args, **kw)

    def wrap(self, job: ExportJob) -> torch.nn.Module:
        return StatefulCoreMLLM(job.model.float(), job.max_context, all_logits=job.all_logits).eval()

    def lower(self, job: ExportJob, wrapper: torch.nn.Module) -> None:
        _convert(wrapper, job.max_context, job.precision).save(str(job.out / PACKAGE))

    def locate_slots(self, job: ExportJob) -> list[SwapSlot]:
        """Each slot is the data of its const's blob in weight.bin (the parameter cast to the precision)."""
        import coremltools as ct

        spec = ct.utils.load_spec(str(job.out / PACKAGE))
        job.state["signature"] = _signature(spec)
        consts = blob_consts(spec)
        buf = (job.out / WEIGHTS).read_bytes()
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
        """A slot's bytes are the data of the weight.bin blob whose header it records."""
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
                magic, _, size, off = struct.unpack("<IIQQ", head) if len(head) == 24 else (0, 0, 0, 0)
                if magic != BLOB_MAGIC or off != s.offset or size != s.nbytes:
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

    def read_weights(self, artifact_dir) -> dict[str, np.ndarray]:
        """Every const of the ML program read back through coremltools' milproto loader."""
        import coremltools as ct
        from coremltools.converters.mil.frontend.milproto.load import load as milload

        _quiet()
        d = Path(artifact_dir)
        spec = ct.utils.load_spec(str(d / PACKAGE))
        try:
            prog = milload(spec, spec.specificationVersion,
                           file_weights_dir=str(d / PACKAGE / "Data/com.apple.CoreML/weights"))
        except Exception as e:
            raise LoragenError(f"cannot read back {d / PACKAGE}: {str(e).splitlines()[0]}") from None
        out = {}
        for f in prog.functions.values():
            for op in f.operations:
                if op.op_type == "const" and op.outputs[0].val is not None:
                    out[op.outputs[0].name] = np.asarray(op.outputs[0].val)
        return out

    def validate_backend(self, report: ValidationReport, art: Artifact, model, steps: int) -> None:
        """Core ML cannot predict off Apple platforms: the package is read back instead (signature,
        every stored weight vs the model, the swap slots' bytes)."""
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

        consts = self.read_weights(art.path)
        tdt = {"fp16": torch.float16, "fp32": torch.float32}[prec]
        suffix = "_to_fp16" if prec == "fp16" else ""
        aliases: dict[int, list[str]] = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            aliases.setdefault(id(p), []).append(name)
        seen, by_value, worst, bad, missing = set(), set(), 0.0, [], []
        for name, p in model.named_parameters():
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
        n_total = len(seen) + len(by_value) + len(missing) + len(bad)
        report.add("weights_present", not missing,
                   f"all {n_total} parameters stored ({len(seen)} by name, {len(by_value)} folded or identity)"
                   if not missing else f"missing from the package: {', '.join(missing[:3])}")
        buf = art.file(WEIGHTS).read_bytes()
        params = dict(model.named_parameters())
        slot_bad = []
        for s in art.slots:
            _, size, off = read_blob_header(buf, s.extra["header_offset"])
            want = tensor_bytes(params[s.name].detach().to(tdt))
            if off != s.offset or buf[off:off + size] != want:
                slot_bad.append(s.name)
        report.add("swap_slots_bytes", not slot_bad,
                   f"{len(art.slots)} slot byte ranges hold the model's weights" if not slot_bad
                   else f"slot bytes differ from the model: {', '.join(slot_bad[:3])}")


EXPORTER = CoreMLExporter()
