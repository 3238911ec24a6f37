"""Bundle container, signature and base binding, against the golden vectors (no exporter needed)."""

import hashlib
import json
import math
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from loragen_mobile import dtypes
from loragen_mobile.bundle import core
from loragen_mobile.bundle import format as fmt
from loragen_mobile.bundle.format import BundleError
from loragen_mobile.bundle.keys import generate_keypair, key_id, load_private_key, load_public_key
from loragen_mobile.errors import LoragenError

GOLDEN = Path(__file__).parent / "golden"
EXPECTED = json.loads((GOLDEN / "expected.json").read_text())
PUB = load_public_key(GOLDEN / "keys" / "public_key.pem")
KEY = load_private_key(GOLDEN / "keys" / "signing_key.pem")


def _art(backend):
    return json.loads((GOLDEN / "artifacts" / f"{backend}.json").read_text())


def _raw(name):
    return (GOLDEN / "bundles" / f"{name}.bundle").read_bytes()


def test_golden_vectors_are_current(tmp_path):
    """Regenerating the vectors gives byte-identical files (the phones' tests read these)."""
    subprocess.run([sys.executable, str(GOLDEN / "make_golden.py"), "--out", str(tmp_path)], check=True,
                   capture_output=True)
    ours = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    theirs = sorted(p.relative_to(GOLDEN) for p in GOLDEN.rglob("*") if p.is_file() and p.suffix != ".py"
                    and "__pycache__" not in p.parts)
    assert ours == theirs
    for rel in ours:
        assert (tmp_path / rel).read_bytes() == (GOLDEN / rel).read_bytes(), rel


@pytest.mark.parametrize("name", sorted(EXPECTED["bundles"]))
def test_golden_verdicts(name):
    e = EXPECTED["bundles"][name]
    raw = _raw(name)
    assert hashlib.sha256(raw).hexdigest() == e["sha256"] and len(raw) == e["size"]
    art = json.loads((GOLDEN / e["artifact"]).read_text())
    if e["verdict"] == "rejected":
        with pytest.raises(BundleError) as err:
            core.verify(raw, art, PUB)
        assert err.value.code == e["code"] and str(err.value) == e["message"]
        return
    vb = core.verify(raw, art, PUB)
    assert fmt.signing_digest(vb.parsed).hex() == e["signing_digest"]
    base = load_file(str(GOLDEN / e["base"]))
    new = core.swap_tensors(vb, base)
    want = load_file(str(GOLDEN / e["expected"]))
    assert new.keys() == want.keys() == e["swap_plan"].keys()
    for p, t in new.items():
        assert torch.equal(t, want[p]), p
        assert dtypes.tensor_sha256(t) == e["swap_plan"][p]["sha256"]


@pytest.mark.parametrize("backend", ["executorch", "onnx", "coreml"])
def test_lora_kind_equals_merged_kind_within_fp16_rounding(backend):
    art = _art(backend)
    base = load_file(str(GOLDEN / "base" / f"{backend}.safetensors"))
    merged = core.swap_tensors(core.verify(_raw(f"{backend}-merged"), art, PUB), base)
    on_device = core.swap_tensors(core.verify(_raw(f"{backend}-lora"), art, PUB), base)
    for p in merged:
        d = (merged[p].float() - on_device[p].float()).abs()
        if merged[p].dtype == torch.float32:
            assert d.max().item() == 0.0  # same factors, same fp32 merge
        else:
            # factors shipped in fp16: the error of rounding A and B (relative 2^-11 each, on
            # scale * |B| @ |A|) plus one fp16 rounding of the result
            lora = core.verify(_raw(f"{backend}-lora"), art, PUB)
            m = p[: -len(".weight")]
            a, b = lora.parsed.tensor(f"{m}.lora_A").float(), lora.parsed.tensor(f"{m}.lora_B").float()
            eps = torch.finfo(torch.float16).eps
            bound = 2 * eps * lora.manifest["lora"]["scale"] * (b.abs() @ a.abs()) + eps * merged[p].float().abs()
            assert (d <= bound).all(), p
            assert (d > 0).any()  # the two kinds really took different rounding paths


def test_merged_bundle_is_w_plus_scale_b_a():
    art, base = _art("onnx"), load_file(str(GOLDEN / "base" / "onnx.safetensors"))
    vb = core.verify(_raw("onnx-lora"), art, PUB)
    new = core.swap_tensors(core.verify(_raw("onnx-merged"), art, PUB), base)
    scale = vb.manifest["lora"]["scale"]
    assert scale == 2.0
    for p in new:
        m = p[: -len(".weight")]
        a, b = vb.parsed.tensor(f"{m}.lora_A").double(), vb.parsed.tensor(f"{m}.lora_B").double()
        assert (new[p].double() - (base[p].double() + scale * b @ a)).abs().max().item() < 1e-5


def test_unsigned_allowed_only_when_not_required():
    raw, art = _raw("unsigned"), _art("executorch")
    with pytest.raises(BundleError, match="public key is required") as e:
        core.verify(raw, art, None)
    assert e.value.code == "key_required"
    vb = core.verify(raw, art, None, require_signature=False)
    assert not vb.parsed.signed and vb.kind == "merged"


def test_other_fingerprint_rejected():
    art = _art("executorch")
    art["fingerprint"] = "0" * 64
    with pytest.raises(BundleError, match="bound to base fingerprint") as e:
        core.verify(_raw("executorch-merged"), art, PUB)
    assert e.value.code == "fingerprint"


def _resign(manifest_edit=None, tensor_edit=None, backend="executorch"):
    """A validly signed bundle whose content was changed before signing (a buggy or hostile server)."""
    pb = fmt.parse(_raw(f"{backend}-merged"))
    tensors = {n: pb.tensor(n) for n in pb.tensors}
    manifest = json.loads(json.dumps(pb.manifest))
    if tensor_edit:
        tensor_edit(tensors, manifest)
    if manifest_edit:
        manifest_edit(manifest)
    return _sign(fmt.serialize(tensors, manifest))


def _sign(unsigned: bytes) -> bytes:
    """Sign with the test key without parsing first (the content may be one the reader refuses):
    the signing digest of an unsigned file is the SHA-256 of the file itself."""
    raw = bytearray(unsigned)
    at = raw.index(f'"{fmt.SIG_KEY}":"{fmt.UNSIGNED}"'.encode(), 8) + len(fmt.SIG_KEY) + 4
    raw[at:at + 128] = KEY.sign(hashlib.sha256(unsigned).digest()).hex().encode()
    return bytes(raw)


def test_semantic_errors_of_signed_bundles():
    art = _art("executorch")
    p0 = "model.layers.0.mlp.up_proj.weight"

    def drop(t, m):
        del t[p0], m["tensors"][p0]

    def extra(t, m):
        t["model.layers.9.mlp.up_proj.weight"] = t[p0].clone()
        m["tensors"]["model.layers.9.mlp.up_proj.weight"] = dict(m["tensors"][p0], param="model.layers.9.mlp.up_proj.weight")

    def wrong_shape(t, m):
        t[p0] = t[p0][:8].clone()
        m["tensors"][p0].update(shape=[8, 8], sha256=dtypes.tensor_sha256(t[p0]))

    def wrong_dtype(t, m):
        t[p0] = t[p0].half()
        m["tensors"][p0].update(dtype="F16", sha256=dtypes.tensor_sha256(t[p0]))

    def wrong_digest(t, m):
        t[p0] = t[p0] + 1

    def wrong_slot(t, m):
        m["tensors"][p0]["slot"]["key"] = "0" * 64

    cases = [(drop, "missing_tensor", "missing tensor model.layers.0.mlp.up_proj.weight"),
             (extra, "extra_tensor", "unexpected tensor model.layers.9"),
             (wrong_shape, "shape", "shape [8, 8]"),
             (wrong_dtype, "dtype", "dtype F16, the artifact's slot is F32"),
             (wrong_digest, "digest", "does not match its sha256"),
             (wrong_slot, "slot", "is addressed to slot")]
    for edit, code, msg in cases:
        with pytest.raises(BundleError) as e:
            core.verify(_resign(tensor_edit=edit), art, PUB)
        assert e.value.code == code and msg in str(e.value), (code, str(e.value))
    with pytest.raises(BundleError, match="format_version 2") as e:
        core.verify(_resign(manifest_edit=lambda m: m.update(format_version=2)), art, PUB)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_corruptions_fail_cleanly(data):
    """Any corruption of a valid signed bundle: a clean BundleError, never another exception."""
    name = data.draw(st.sampled_from(["executorch-merged", "coreml-lora", "onnx-merged"]))
    raw = bytearray(_raw(name))
    art = _art(name.split("-")[0])
    how = data.draw(st.sampled_from(["flip", "truncate", "insert", "header-length"]))
    if how == "flip":
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] ^= data.draw(st.integers(1, 255))
    elif how == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    elif how == "insert":
        i = data.draw(st.integers(0, len(raw)))
        raw[i:i] = data.draw(st.binary(min_size=1, max_size=16))
    else:
        raw[:8] = struct.pack("<Q", data.draw(st.integers(0, 2 ** 64 - 1)))
    if bytes(raw) == _raw(name):
        return
    with pytest.raises(BundleError):
        core.verify(bytes(raw), art, PUB)


def test_keygen_writes_a_working_pair(tmp_path):
    kid = generate_keypair(tmp_path / "k.pem", tmp_path / "k.pub")
    key, pub = load_private_key(tmp_path / "k.pem"), load_public_key(tmp_path / "k.pub")
    assert kid == key_id(pub) and len(kid) == 16
    assert (tmp_path / "k.pem").stat().st_mode & 0o777 == 0o600
    pb = fmt.parse(_raw("unsigned"))
    signed = fmt.serialize({n: pb.tensor(n) for n in pb.tensors}, pb.manifest, key)
    core.verify(signed, _art("executorch"), pub)
    with pytest.raises(LoragenError, match="already exists"):
        generate_keypair(tmp_path / "k.pem", tmp_path / "k2.pub")
    assert not (tmp_path / "k2.pub").exists()
    with pytest.raises(LoragenError, match="not a PEM public key"):
        (tmp_path / "bad.pub").write_text("nope")
        load_public_key(tmp_path / "bad.pub")


# ------------------------------------------------------------------ hardening regressions

def _with_manifest_text(text: str, backend="executorch", kind="merged") -> bytes:
    """The golden bundle with its manifest replaced by ``text`` (verbatim JSON), re-signed."""
    pb = fmt.parse(_raw(f"{backend}-{kind}"))
    meta = {fmt.MANIFEST_KEY: text, fmt.SIG_KEY: fmt.UNSIGNED}
    header = {"__metadata__": meta, **{n: pb.header[n] for n in pb.header if n != "__metadata__"}}
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    raw = bytearray(struct.pack("<Q", len(hb)) + hb + pb.raw[pb.data_start:])
    sig = KEY.sign(hashlib.sha256(bytes(raw)).digest()).hex()  # the signing digest: the signature field is zeros
    at = raw.index(fmt.UNSIGNED.encode(), 8)
    raw[at:at + 128] = sig.encode()
    return bytes(raw)


def _manifest_text(backend="executorch", kind="merged") -> str:
    return json.dumps(fmt.parse(_raw(f"{backend}-{kind}")).manifest, sort_keys=True, separators=(",", ":"))


def _code(raw, backend="executorch", key=PUB, require=True):
    with pytest.raises(BundleError) as e:
        core.verify(raw, _art(backend), key, require_signature=require)
    assert "\n" not in str(e.value)
    return e.value.code


def test_huge_json_integers_are_bundle_errors():
    """A 4301-digit integer (Python's int-from-text limit) in the header or the manifest: a
    BundleError with a code, never ValueError."""
    raw = _raw("executorch-merged")
    (n,) = struct.unpack("<Q", raw[:8])
    header = raw[8:8 + n].rstrip() + b" "
    huge = header[:-2] + b',"zz":' + b"9" * 4301 + b"}"
    huge += b" " * (-len(huge) % 8)
    assert _code(struct.pack("<Q", len(huge)) + huge + raw[8 + n:]) == "header_json"
    text = _manifest_text().replace('"format_version":1', '"format_version":' + "1" * 4301)
    assert _code(_with_manifest_text(text)) == "manifest"
    # an integer of 4300 digits parses, and then is no valid format_version
    assert _code(_with_manifest_text(_manifest_text().replace('"format_version":1', '"format_version":' + "1" * 4300))) == "version"


def test_non_scalar_dtype_and_param_are_bundle_errors():
    p0 = "model.layers.0.mlp.up_proj.weight"
    for dtype in (["F32"], {"F32": 1}):
        raw = _resign(tensor_edit=lambda t, m: None)
        pb = fmt.parse(raw)
        text = raw[8:8 + pb.header_len].decode().replace(f'"{p0}":{{"dtype":"F32"', f'"{p0}":{{"dtype":{json.dumps(dtype, separators=(",", ":"))}')
        hb = text.rstrip().encode()
        hb += b" " * (-len(hb) % 8)
        assert _code(struct.pack("<Q", len(hb)) + hb + pb.raw[pb.data_start:]) == "tensor_header"
    for param in ([p0], {"p": p0}):
        assert _code(_resign(manifest_edit=lambda m: m["tensors"][p0].update(param=param))) == "manifest"
        lora = json.loads(_manifest_text(kind="lora"))
        lora["tensors"]["model.layers.0.mlp.up_proj.lora_A"]["param"] = param
        assert _code(_with_manifest_text(json.dumps(lora, sort_keys=True), kind="lora")) == "manifest"


@pytest.mark.parametrize("alpha,scale", [(math.nan, math.nan), (math.inf, math.inf), (1e38, 2.5e37),
                                         (8192.0, 2048.0), (8.0, math.inf)])
def test_lora_alpha_and_scale_bounds(alpha, scale):
    m = json.loads(_manifest_text(kind="lora"))
    m["lora"].update(alpha=alpha, scale=scale)
    assert _code(_with_manifest_text(json.dumps(m, sort_keys=True), kind="lora")) == "manifest"
    m["lora"].update(alpha=8.0, scale=2.0, r=4.0)  # r must be an integer
    assert _code(_with_manifest_text(json.dumps(m, sort_keys=True), kind="lora")) == "manifest"


@pytest.mark.parametrize("value", [math.nan, math.inf, -3e38, 1.6e37, 70000.0])
@pytest.mark.parametrize("kind", ["merged", "lora"])
def test_out_of_bound_tensor_values_are_refused_at_verify(kind, value):
    """Re-signed bundles whose data holds NaN/Inf or |x| > 65504: 'values', for both kinds."""
    pb = fmt.parse(_raw(f"executorch-{kind}"))
    tensors = {n: pb.tensor(n) for n in pb.tensors}
    manifest = json.loads(json.dumps(pb.manifest))
    name = sorted(tensors)[1]
    tensors[name] = tensors[name].clone()
    tensors[name][0, 1] = value
    manifest["tensors"][name]["sha256"] = dtypes.tensor_sha256(tensors[name])
    assert _code(fmt.serialize(tensors, manifest, KEY)) == "values"
    tensors[name][0, 1] = 65504.0  # the bound itself is allowed
    manifest["tensors"][name]["sha256"] = dtypes.tensor_sha256(tensors[name])
    core.verify(fmt.serialize(tensors, manifest, KEY), _art("executorch"), PUB)


def _golden_adapter(scale_factors=1.0, alpha=8.0):
    a = load_file(str(GOLDEN / "base" / "executorch.safetensors"))
    g = torch.Generator().manual_seed(1)
    from loragen_mobile.lora import LoraAdapter

    factors = {p[: -len(".weight")]: (torch.randn(4, w.shape[1], generator=g) * scale_factors,
                                      torch.randn(w.shape[0], 4, generator=g) * scale_factors) for p, w in a.items()}
    return LoraAdapter(factors, r=4, alpha=alpha), a


def test_build_refuses_to_sign_out_of_bound_content():
    from loragen_mobile.lora import LoraAdapter

    art = _art("executorch")
    ad, base = _golden_adapter()
    m = next(iter(ad.factors))
    for bad in (math.nan, math.inf, 3e38):
        a, b = ad.factors[m]
        a = a.clone()
        a[0, 0] = bad
        broken = LoraAdapter({**ad.factors, m: (a, b)}, r=4, alpha=8.0)
        with pytest.raises(BundleError) as e:
            core.build(art, broken, "lora", private_key=KEY)
        assert e.value.code == "values", bad
        with pytest.raises(LoragenError) as e:  # merged: the merge itself refuses
            core.build(art, broken, "merged", base=base, private_key=KEY)
        assert e.value.code in ("merge", "values")
    # finite factors whose product overflows the bound: the merged kind refuses, the lora kind is
    # signed (factors within bounds) and its merge is refused at apply
    big, _ = _golden_adapter(scale_factors=200.0)
    with pytest.raises(LoragenError) as e:
        core.build(art, big, "merged", base=base, private_key=KEY)
    assert e.value.code == "merge" and "beyond +-65504" in str(e.value)
    vb = core.verify(core.build(art, big, "lora", private_key=KEY), art, PUB)
    with pytest.raises(BundleError) as e:
        dict(core.swap_tensors(vb, base))  # the swap is made as it is read: reading it refuses
    assert e.value.code == "merge"
    for alpha in (math.nan, math.inf):
        with pytest.raises(LoragenError) as e:
            LoraAdapter(ad.factors, r=4, alpha=alpha)
        assert e.value.code == "adapter"
    with pytest.raises(BundleError) as e:
        core.build(art, LoraAdapter(ad.factors, r=4, alpha=1e38), "lora", private_key=KEY)
    assert e.value.code == "build"


@pytest.mark.parametrize("version", [True, 1.0, "1", 2])
def test_format_version_is_exactly_the_integer_1(version):
    assert _code(_resign(manifest_edit=lambda m: m.update(format_version=version))) == "version"


def test_signature_rule():
    """A bundle that carries a signature is always verified; require_signature=False admits only
    bundles with the all-zero signature; signature_verified says which happened."""
    art = _art("executorch")
    signed, unsigned = _raw("executorch-merged"), _raw("unsigned")
    assert _code(signed, key=None, require=False) == "key_required"
    assert _code(_raw("tampered-data"), key=None, require=False) == "key_required"
    assert _code(_raw("tampered-data"), key=PUB, require=False) == "bad_signature"
    # rewritten weights (manifest digest updated) under the old signature
    pb = fmt.parse(signed)
    tensors = {n: pb.tensor(n) for n in pb.tensors}
    manifest = json.loads(json.dumps(pb.manifest))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] * 2
    manifest["tensors"][name]["sha256"] = dtypes.tensor_sha256(tensors[name])
    forged = bytearray(fmt.serialize(tensors, manifest))
    at = forged.index(fmt.UNSIGNED.encode(), 8)
    forged[at:at + 128] = pb.signature_hex.encode()
    assert _code(bytes(forged), key=None, require=False) == "key_required"
    assert _code(bytes(forged), key=PUB, require=False) == "bad_signature"
    assert core.verify(signed, art, PUB, require_signature=False).signature_verified
    assert core.verify(signed, art, PUB).signature_verified
    assert not core.verify(unsigned, art, None, require_signature=False).signature_verified
    assert not core.verify(unsigned, art, PUB, require_signature=False).signature_verified


def test_same_inputs_same_bytes():
    """No wall-clock time in the signed bytes: two builds are byte-identical."""
    ad, base = _golden_adapter()
    art = _art("onnx")
    for kind in ("merged", "lora"):
        one = core.build(art, ad, kind, base=base if kind == "merged" else None, private_key=KEY, task="t")
        two = core.build(art, ad, kind, base=base if kind == "merged" else None, private_key=KEY, task="t")
        assert one == two
        assert "created" not in fmt.parse(one).manifest
    # a caller-supplied time is kept (the golden vectors pin one)
    with_time = core.build(art, ad, "lora", private_key=KEY, created="2026-01-01T00:00:00Z")
    assert fmt.parse(with_time).manifest["created"] == "2026-01-01T00:00:00Z"
