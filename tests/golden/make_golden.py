"""Regenerate the golden bundle vectors that the Python, Kotlin and Swift readers test against.

    python tests/golden/make_golden.py            # rewrite tests/golden/ in place
    python tests/golden/make_golden.py --out DIR  # write elsewhere (the currentness test does this)

Deterministic: fixed keys derived from fixed seeds (Ed25519 signatures are deterministic), fixed
creation time, seeded tensors. The artifacts are small synthetic manifests with the same slot
schema as real exports (2 layers, hidden 8, FFN 16): one per backend.

Files:
  keys/signing_key.pem, keys/public_key.pem  test-only key pair (never use it for real bundles)
  keys/other_public_key.pem                  a second public key (the "wrong key" case)
  artifacts/<backend>.json                   the base artifacts' manifests (artifact.json subset)
  base/<backend>.safetensors                 the base values of every swap slot
  bundles/*.bundle                           valid and broken bundles
  expected/merged-<name>.safetensors         expected replacement tensors for each valid bundle
  expected/slots-onnx-lora.safetensors       the ONNX artifact's adapter slot inputs for its lora bundle
  quant/<encoding>.safetensors, quant/index.json  on-device requantization vectors (make_quant_golden.py)
  expected.json                              per bundle: file sha256, signing digest, verdict and
                                             error code, kind, swap plan (param -> slot + sha256)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import struct
import sys
from pathlib import Path

import torch
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from safetensors.torch import save

from loragen_mobile import dtypes
from loragen_mobile.bundle import core
from loragen_mobile.bundle import format as fmt
from loragen_mobile.exporters.onnx import adapter_input_names
from loragen_mobile.exporters.pipeline import adapter_slot_inputs
from loragen_mobile.lora import LoraAdapter

CREATED = "2026-01-01T00:00:00Z"
TASK = "Answer with the tool call get_weather(city) for weather questions."
HIDDEN, FFN, LAYERS, RANK = 8, 16, 2, 4
SLOT_RANK = 6  # the ONNX artifact's run-time adapter slots


def _key(seed: bytes) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(seed).digest())


def _params():
    for i in range(LAYERS):
        for m, shape in (("gate_proj", (FFN, HIDDEN)), ("up_proj", (FFN, HIDDEN)), ("down_proj", (HIDDEN, FFN))):
            yield f"model.layers.{i}.mlp.{m}.weight", shape


def _artifact(backend: str, base: dict[str, torch.Tensor]) -> dict:
    slots, offset = [], 0
    for name, t in base.items():
        raw = t.contiguous().view(torch.uint8).numpy().tobytes()
        s = {"name": name, "dtype": str(t.dtype).replace("torch.", ""), "shape": list(t.shape),
             "nbytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
        if backend == "executorch":
            s.update(file="swap.ptd", key=hashlib.sha256(raw).hexdigest())
        elif backend == "onnx":
            s.update(file="swap.onnx.data", key=name, offset=offset)
        else:
            const = "p_" + name.replace(".", "_")
            s.update(file="model.mlpackage/Data/com.apple.CoreML/weights/weight.bin", key=const,
                     offset=offset + 128, header_offset=offset + 64)
        offset += (len(raw) + 63) // 64 * 64 + (64 if backend == "coreml" else 0)
        slots.append(s)
    fp = hashlib.sha256(f"golden-{backend}-base".encode()).hexdigest()
    art = {"schema": "loragen-mobile/artifact/v1", "backend": backend, "model_id": "golden-tiny",
           "model_type": "llama", "config_hash": hashlib.sha256(b"golden-config").hexdigest(),
           "precision": "fp16" if backend == "coreml" else "fp32", "fingerprint": fp, "swap_slots": slots}
    if backend == "onnx":  # run-time adapter slots of a higher rank than the adapter's (zero-padded)
        modules = [n[: -len(".weight")] for n in base]
        art["adapter_slots"] = {"input_names": adapter_input_names(modules), "rank": SLOT_RANK, "modules": modules,
                                "shapes": [list(t.shape) for t in base.values()],
                                "inputs": "A [rank, in], B [out, rank] of each module in this order; B carries the LoRA scale"}
    return art


def _adapter(seed: int) -> LoraAdapter:
    g = torch.Generator().manual_seed(seed)
    factors = {}
    for name, (out_f, in_f) in _params():
        factors[name[: -len(".weight")]] = (torch.randn(RANK, in_f, generator=g) * 0.5,
                                            torch.randn(out_f, RANK, generator=g) * 0.5)
    return LoraAdapter(factors, r=RANK, alpha=8.0, model_type="llama")


_ARTIFACTS: dict = {}


def _with_header(raw: bytes, header: bytes) -> bytes:
    """Replace a bundle's header (for deliberately broken vectors)."""
    (n,) = struct.unpack("<Q", raw[:8])
    return struct.pack("<Q", len(header)) + header + raw[8 + n:]


def generate(out: Path) -> None:
    for sub in ("keys", "artifacts", "base", "bundles", "expected"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    key, other = _key(b"loragen golden signing key"), _key(b"loragen golden other key")
    (out / "keys" / "signing_key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    for name, k in (("public_key.pem", key), ("other_public_key.pem", other)):
        (out / "keys" / name).write_bytes(k.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))

    g = torch.Generator().manual_seed(0)
    artifacts = _ARTIFACTS
    for backend, dtype in (("executorch", torch.float32), ("onnx", torch.float32), ("coreml", torch.float16)):
        base = {n: (torch.randn(*s, generator=g) * 0.1).to(dtype) for n, s in _params()}
        art = _artifact(backend, base)
        artifacts[backend] = (art, base)
        (out / "artifacts" / f"{backend}.json").write_text(json.dumps(art, indent=2) + "\n")
        (out / "base" / f"{backend}.safetensors").write_bytes(save(base))

    adapter = _adapter(1)
    bundles: dict[str, tuple[bytes, str]] = {}  # name -> (bytes, backend)
    for backend in ("executorch", "onnx", "coreml"):
        art, base = artifacts[backend]
        for kind in ("merged", "lora"):
            bundles[f"{backend}-{kind}"] = (core.build(art, adapter, kind, base=base, private_key=key,
                                                      generator_id="golden-generator", task=TASK,
                                                      created=CREATED), backend)
    art, base = artifacts["executorch"]
    valid = bundles["executorch-merged"][0]
    unsigned = core.build(art, adapter, "merged", base=base, generator_id="golden-generator", task=TASK, created=CREATED)
    other_key = core.build(art, adapter, "merged", base=base, private_key=other, generator_id="golden-generator",
                           task=TASK, created=CREATED)
    (n,) = struct.unpack("<Q", valid[:8])
    flipped_data = bytearray(valid)
    flipped_data[-5] ^= 0x01
    flipped_header = bytearray(valid)
    at = valid.index(CREATED.encode(), 8)
    flipped_header[at + 3] ^= 0x01  # a digit of the creation time (2026 -> 2027)
    header = valid[8:8 + n]
    broken = {
        "tampered-data": bytes(flipped_data),
        "tampered-header": bytes(flipped_header),
        "wrong-key": other_key,
        "unsigned": unsigned,
        "truncated": valid[: len(valid) // 2],
        "truncated-data": valid[:-100],
        "short": valid[:5],
        "oversized-header-length": struct.pack("<Q", len(valid) * 4) + valid[8:],
        "non-utf8-header": _with_header(valid, b'{"\xff\xfe": 1}' + b" " * (n - 12)),
        "duplicate-names": _with_header(valid, header.rstrip()[:-1] + b',"__metadata__":{}}'),
        "other-backend": bundles["onnx-merged"][0],
    }
    for name, raw in broken.items():
        bundles[name] = (raw, "executorch")

    pub = key.public_key()
    expected = {"task": TASK, "public_key": "keys/public_key.pem", "bundles": {}}
    for name, (raw, backend) in sorted(bundles.items()):
        (out / "bundles" / f"{name}.bundle").write_bytes(raw)
        art, base = artifacts[backend]
        entry: dict = {"artifact": f"artifacts/{backend}.json", "base": f"base/{backend}.safetensors",
                       "size": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
        try:
            entry["signing_digest"] = fmt.signing_digest(fmt.parse(raw)).hex()
        except fmt.BundleError:
            entry["signing_digest"] = None
        try:
            vb = core.verify(raw, art, pub)
        except fmt.BundleError as e:
            entry.update(verdict="rejected", code=e.code, message=str(e))
        else:
            new = core.swap_tensors(vb, base)
            entry.update(verdict="valid", kind=vb.kind, expected=f"expected/merged-{name}.safetensors",
                         tolerance=0.0 if vb.kind == "merged" else (
                             "fp32 summation order: (r+2) * 2^-24 * (|W| + |scale| * |B| @ |A|)"
                             if art["precision"] == "fp32" else "fp16 rounding of the factors"),
                         swap_plan={p: {**core._locator(core.slots_by_param(art)[p]),
                                        "sha256": dtypes.tensor_sha256(t)} for p, t in sorted(new.items())})
            if vb.kind == "lora":
                entry["lora"] = vb.manifest["lora"]
            if vb.kind == "lora" and "adapter_slots" in art:  # what a loaded session is fed instead
                slots = art["adapter_slots"]
                values = adapter_slot_inputs(slots, core.bundle_adapter(vb))
                entry["adapter_slot_values"] = f"expected/slots-{name}.safetensors"
                (out / entry["adapter_slot_values"]).write_bytes(save(dict(zip(slots["input_names"], values))))
            (out / entry["expected"]).write_bytes(save(dict(sorted(new.items()))))
        expected["bundles"][name] = entry
    expected["mutations"] = _mutation_vectors(bundles, key)
    (out / "expected.json").write_text(json.dumps(expected, indent=2, sort_keys=True) + "\n")
    _quant_generator().generate(out / "quant")


def _quant_generator():
    """tests/golden/make_quant_golden.py: the on-device requantization vectors (quant/)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_quant_golden", Path(__file__).with_name("make_quant_golden.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


MUTATION_SEED, MUTATION_CASES = 20260101, 240


def _mutation_vectors(bundles, key) -> list[dict]:
    """A seeded sample of tests/golden/mutations.py, every family on every base bundle, with the
    Python reader's verdict (which must be the one the family's oracle expects)."""
    import importlib.util
    import random

    spec = importlib.util.spec_from_file_location("bundle_mutations", Path(__file__).with_name("mutations.py"))
    mutations = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mutations  # dataclasses look their module up
    spec.loader.exec_module(mutations)
    pick = mutations.RandomPick(random.Random(MUTATION_SEED))
    mut = mutations.Mutator(pick)
    arts = {b: json.loads(json.dumps(a)) for b, (a, _) in _ARTIFACTS.items()}
    out = []
    for i in range(MUTATION_CASES):
        fam = mutations.FAMILIES[i % len(mutations.FAMILIES)]
        name = mutations.BASES[(i // len(mutations.FAMILIES)) % len(mutations.BASES)]
        base = mutations.load_base(name, bundles[name][0])
        case = getattr(mut, fam)(base)
        raw = mutations.assemble(case.header_text, case.data, case.signature, key.sign)
        try:
            core.verify(raw, arts[name.split("-")[0]], key.public_key() if case.pubkey else None,
                        require_signature=not case.allow_unsigned)
            code = None
        except fmt.BundleError as e:
            code = e.code
        if code not in case.codes:
            raise SystemExit(f"mutation {i} ({fam} of {name}): reader says {code}, oracle expects {case.codes}")
        out.append(mutations.to_vector(base, case, code, hashlib.sha256(raw).hexdigest()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(Path(__file__).parent))
    generate(Path(ap.parse_args().out))


if __name__ == "__main__":
    main()
