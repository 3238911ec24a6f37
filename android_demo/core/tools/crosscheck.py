"""Cross-check the Kotlin core against the Python reference on the vectors the Kotlin tests dump.

    LORAGEN_DUMP=/tmp/kdump android_demo/core/run-tests.sh
    /work/venv/bin/python android_demo/core/tools/crosscheck.py /tmp/kdump

Checks, with loragen_mobile.bundle (Python) and executorch's FlatTensorSerializer:
  - cases.json: every constructed defect gets the same code (or verdict) from core.verify;
  - fuzz-*/NNNN-<outcome>.bundle: every randomly damaged bundle gets the same outcome;
  - kotlin-sample.ptd, swap-*.ptd: the Kotlin .ptd writer's files load with the Python
    deserializer, with the expected keys and bytes.
Not run by CI (needs torch + executorch); run by hand after changing the core.
"""
import json
import sys
from pathlib import Path

from cryptography.hazmat.primitives.serialization import load_pem_public_key

from loragen_mobile.bundle import core
from loragen_mobile.bundle.format import BundleError

REPO = Path(__file__).resolve().parents[3]
GOLDEN = REPO / "tests/golden"


def outcome(raw, artifact, key, require):
    try:
        core.verify(raw, artifact, key, require_signature=require)
        return "valid"
    except BundleError as e:
        return e.code


def main(dump: Path) -> int:
    pub = load_pem_public_key((GOLDEN / "keys/public_key.pem").read_bytes())
    arts = {b: json.loads((GOLDEN / f"artifacts/{b}.json").read_text()) for b in ("executorch", "onnx", "coreml")}
    noslots = dict(arts["executorch"], swap_slots=[])
    bad = 0
    cases = json.loads((dump / "cases.json").read_text())
    for name, spec in cases.items():
        want, key, require, which = spec.split(";")
        got = outcome((dump / f"{name}.bundle").read_bytes(), noslots if which == "noslots" else arts["executorch"],
                      pub if key == "true" else None, require == "true")
        if got != want:
            bad += 1
            print(f"MISMATCH case {name}: kotlin {want}, python {got}")
    print(f"{len(cases)} constructed cases compared")
    n = 0
    for d in sorted(dump.glob("fuzz-*")):
        _, bname, key = d.name.rsplit("-", 2)[0], d.name[5:].rsplit("-", 1)[0], d.name.rsplit("-", 1)[1]
        backend = "executorch" if bname == "unsigned" else bname.split("-")[0]
        for f in sorted(d.glob("*.bundle")):
            want = f.stem.split("-", 1)[1]
            got = outcome(f.read_bytes(), arts[backend], pub if key == "true" else None, key == "true")
            n += 1
            if got != want:
                bad += 1
                print(f"MISMATCH {f}: kotlin {want}, python {got}")
    print(f"{n} fuzzed bundles compared")

    from executorch.exir._serialize._cord import Cord
    from executorch.extension.flat_tensor.serialize.serialize import FlatTensorSerializer

    def load(p):
        payload = FlatTensorSerializer().deserialize(Cord(p.read_bytes()))
        return {k: (bytes(payload.buffers[e.buffer_index]), e.tensor_layout) for k, e in payload.named_data.items()}

    s = load(dump / "kotlin-sample.ptd")
    ok = (list(s) == ["first", "0123456789abcdef" * 4, "empty"] and s["first"][0] == bytes(range(1, 11))
          and s["0123456789abcdef" * 4][0] == b"\xab" * 200 and s["empty"][0] == b""
          and list(s["0123456789abcdef" * 4][1].sizes) == [10, 5] and s["first"][1] is None)
    print("kotlin-sample.ptd:", "ok" if ok else "MISMATCH", {k: (len(v[0]), v[1]) for k, v in s.items()})
    bad += not ok
    expected = json.loads((GOLDEN / "expected.json").read_text())["bundles"]
    import hashlib
    for name in ("executorch-merged", "executorch-lora"):
        s = load(dump / f"swap-{name}.ptd")
        plan = expected[name]["swap_plan"]
        want = {v["key"]: v["sha256"] for v in plan.values()}
        got = {k: hashlib.sha256(v[0]).hexdigest() for k, v in s.items()}
        if name == "executorch-lora":  # fp32 lora: the Kotlin fp32 merge may differ from Python's fp64 one in the last bit
            same = set(got) == set(want)
        else:
            same = got == want
        print(f"swap-{name}.ptd:", "ok" if same else "MISMATCH", f"{len(got)} keys")
        bad += not same
    print("crosscheck:", "all agree" if not bad else f"{bad} mismatches")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
