"""Property-based fuzzing of the bundle reader with structural and manifest mutations.

Each case takes a valid golden bundle, applies one mutation of tests/golden/mutations.py (header
JSON edits: types swapped, keys dropped or added, 5000-digit integers, NaN/Inf, offsets
overlapping or out of range, shapes and dtypes inconsistent, repeated names, wrong slots, kind and
base binding, tensor values out of bounds, the signature rule), re-signs it with the golden test
key and verifies it in memory. The expected verdict comes from the mutation family (the oracle in
mutations.py, written from docs/bundle-format.md), not from the reader: the reader must raise
BundleError with exactly the expected code, or accept exactly the bundles the oracle calls valid.
Never another exception.
"""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loragen_mobile.bundle import core
from loragen_mobile.bundle.format import BundleError
from loragen_mobile.bundle.keys import load_private_key, load_public_key

GOLDEN = Path(__file__).parent / "golden"
PUB = load_public_key(GOLDEN / "keys" / "public_key.pem")
KEY = load_private_key(GOLDEN / "keys" / "signing_key.pem")
EXPECTED = json.loads((GOLDEN / "expected.json").read_text())
FUZZ_CASES = 10_000

_spec = importlib.util.spec_from_file_location("bundle_mutations", GOLDEN / "mutations.py")
mutations = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = mutations  # dataclasses look their module up
_spec.loader.exec_module(mutations)

BASES = {n: mutations.load_base(n, (GOLDEN / "bundles" / f"{n}.bundle").read_bytes()) for n in mutations.BASES}
ARTS = {b: json.loads((GOLDEN / "artifacts" / f"{b}.json").read_text()) for b in ("executorch", "onnx", "coreml")}


def _outcome(raw: bytes, base: str, pubkey: bool, allow_unsigned: bool):
    try:
        core.verify(raw, ARTS[base.split("-")[0]], PUB if pubkey else None, require_signature=not allow_unsigned)
    except BundleError as e:
        return e.code
    return None


def _bytes(case) -> bytes:
    return mutations.assemble(case.header_text, case.data, case.signature, KEY.sign)


def test_unmutated_rendering_reproduces_the_golden_bytes():
    """The mutation engine renders and signs exactly as format.serialize does."""
    for name, base in BASES.items():
        assert mutations.render(base.header, base.manifest) == base.header_text, name
        assert mutations.assemble(base.header_text, base.data, "key", KEY.sign) == base.raw, name


def test_fuzz_structural_and_manifest_mutations():
    """Hypothesis draws a mutation family and a seed; the seed drives the family's choices (which
    field, which value, which tensor) on each of the four base bundles (merged and lora, fp32 and
    fp16): FUZZ_CASES cases in all."""
    tally: Counter = Counter()
    families: Counter = Counter()

    @settings(max_examples=FUZZ_CASES // len(BASES), deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(family=st.sampled_from(mutations.FAMILIES), seed=st.integers(0, 2 ** 64 - 1))
    def one(family, seed):
        for name, base in BASES.items():
            case = getattr(mutations.Mutator(mutations.RandomPick(random.Random(seed))), family)(base)
            got = _outcome(_bytes(case), name, case.pubkey, case.allow_unsigned)
            assert got in case.codes, (family, seed, name, sorted(map(str, case.codes)), got)
            tally[got or "valid"] += 1
            families[family] += 1

    one()
    assert sum(tally.values()) >= FUZZ_CASES
    assert set(families) == set(mutations.FAMILIES)
    # every family of defects was refused with its own code at least once, and valid mutations
    # (ignored fields, the unsigned opt-in, a consistent new scale) were accepted
    for code in ("header_json", "duplicate_name", "metadata", "signature_field", "manifest", "format", "version",
                 "tensor_header", "data_offsets", "key_required", "unsigned", "bad_signature", "kind", "backend",
                 "fingerprint", "missing_tensor", "extra_tensor", "slot", "shape", "digest", "values", "valid"):
        assert tally[code] > 0, (code, dict(tally))


def test_shared_mutation_vectors():
    """expected.json "mutations": the seeded sample the Kotlin and Swift readers replay."""
    vectors = EXPECTED["mutations"]
    assert len(vectors) == 240
    assert {v["family"] for v in vectors} == set(mutations.FAMILIES)
    import hashlib

    for i, v in enumerate(vectors):
        raw = mutations.from_vector(BASES[v["base"]], v, KEY.sign)
        assert hashlib.sha256(raw).hexdigest() == v["sha256"], i
        unsigned = mutations.from_vector(BASES[v["base"]], dict(v, signature="zero"), KEY.sign)
        assert hashlib.sha256(unsigned).hexdigest() == v["unsigned_sha256"], i
        assert _outcome(raw, v["base"], v["pubkey"], v["allow_unsigned"]) == v["code"], (i, v["family"])


@pytest.mark.parametrize("digits,code", [(4300, "data_offsets"), (4301, "header_json")])
def test_integer_digit_limit_in_header(digits, code):
    """Integers of 4300 digits parse (and these offsets are then out of range); 4301 digits are
    refused as JSON, whatever the interpreter's own limit."""
    base = BASES["executorch-merged"]
    text = base.header_text[:-1] + ',"zz":{"dtype":"F32","shape":[0],"data_offsets":[%s,%s]}}' % ("9" * digits, "9" * digits)
    raw = mutations.assemble(text, base.data, "key", KEY.sign)
    assert _outcome(raw, base.name, True, False) == code
