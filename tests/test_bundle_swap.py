"""Bundles swapped into real exported artifacts on all three backends, never re-exporting.

Uses the session-wide exported artifacts from conftest.py (``model_dirs``, ``artifacts``).
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import pytest
import torch

from loragen_mobile import lora
from loragen_mobile.bundle import (apply_bundle, build_bundle, bundle_swap, open_runner_with_bundle,
                                   read_base_tensors, verify_bundle, write_bundle)
from loragen_mobile.bundle.format import BundleError
from loragen_mobile.bundle.keys import generate_keypair, load_private_key, load_public_key
from loragen_mobile.cli import main
from loragen_mobile.errors import LoragenError
from loragen_mobile.exporters.common import Reference
from loragen_mobile.models import build_tokenizer, load_model, target_module_names

PROMPT = [1, 84, 114, 97, 110, 115, 108, 97, 116, 101]
STEPS = 8


def _digest(d: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in d.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(d)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    generate_keypair(d / "server.pem", d / "server.pub")
    generate_keypair(d / "other.pem", d / "other.pub")
    return {"key": load_private_key(d / "server.pem"), "pub": load_public_key(d / "server.pub"),
            "other_pub": load_public_key(d / "other.pub"), "dir": d}


def _adapter(model_dir, seed=5):
    model = load_model(model_dir, dtype=torch.float32)
    ad = lora.random_adapter(model, target_module_names(model), r=8, alpha=16, seed=seed, std=0.15)
    ad.metadata["loragen.task_sha256"] = hashlib.sha256(b"translate").hexdigest()
    return model, ad


def _compare(runner, model, adapter):
    """Prefill + STEPS teacher-forced decode steps vs eager PyTorch with the merged weights."""
    merged = lora.merge_into_model(copy.deepcopy(model), adapter)
    ref = Reference(merged)
    r, a = ref.step(PROMPT)[-1], runner.prefill(PROMPT)  # prefill returns the last position [vocab]
    diffs = [float((a - r).abs().max())]
    toks_ref, toks_art = [], []
    for _ in range(STEPS):
        t_ref, t_art = int(r.argmax()), int(a.argmax())
        toks_ref.append(t_ref)
        toks_art.append(t_art)
        r, a = ref.step([t_ref])[-1], runner.decode(t_ref)
        diffs.append(float((a - r).abs().max()))
    return max(diffs), toks_ref, toks_art


@pytest.mark.parametrize("backend", ["executorch", "onnx"])
@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-gemma"])
def test_swap_equals_merged_pytorch(backend, preset, artifacts, model_dirs, keys, tmp_path):
    art = artifacts(backend, preset)
    before = _digest(art)
    model, ad = _adapter(model_dirs[preset])
    raw = build_bundle(art, ad, "merged", private_key=keys["key"], generator_id="test-gen")
    # swap at load, nothing written
    runner = open_runner_with_bundle(raw, art, keys["pub"])
    diff, toks_ref, toks_art = _compare(runner, model, ad)
    assert diff <= 1e-4 and toks_art == toks_ref
    # the swap really changed the outputs
    base_runner = open_runner_with_bundle(build_bundle(art, lora.LoraAdapter({}, r=8, alpha=16), "merged",
                                                       private_key=keys["key"]), art, keys["pub"])
    assert float((base_runner.prefill(PROMPT) - runner.prefill(PROMPT)).abs().max()) > 1e-2
    # a new specialized artifact directory
    apply_bundle(raw, art, tmp_path / "special", keys["pub"])
    from loragen_mobile.exporters import get_exporter

    r2 = get_exporter(backend).open_runner(tmp_path / "special")
    diff2, toks_ref2, toks2 = _compare(r2, model, ad)
    assert diff2 <= 1e-4 and toks2 == toks_ref2
    assert _digest(art) == before


@pytest.mark.parametrize("backend", ["executorch", "onnx"])
def test_lora_kind_equals_merged_kind(backend, artifacts, model_dirs, keys):
    art = artifacts(backend, "tiny-llama")
    _, ad = _adapter(model_dirs["tiny-llama"], seed=9)
    merged = verify_bundle(build_bundle(art, ad, "merged", private_key=keys["key"]), art, keys["pub"])
    lor = verify_bundle(build_bundle(art, ad, "lora", private_key=keys["key"]), art, keys["pub"])
    a, b = bundle_swap(merged, art), bundle_swap(lor, art)
    touched = {f"{m}.weight" for m in ad.factors}
    assert set(b) == touched and set(a) >= touched
    for p in touched:  # fp32 artifact: identical merge on both paths
        assert torch.equal(a[p], b[p]), p
    assert lor.parsed.raw.__len__() < merged.parsed.raw.__len__()


@pytest.mark.parametrize("kind", ["merged", "lora"])
def test_bundle_files_are_streamed_and_checked_again_when_read(kind, artifacts, model_dirs, keys, tmp_path):
    """A bundle built into a file (one tensor at a time) has the in-memory bundle's exact bytes; a
    bundle verified from a file is read tensor by tensor, and bytes changed on disk after the
    verification are refused when the swap reads them (nothing is applied)."""
    from loragen_mobile.bundle import build_bundle_file
    from loragen_mobile.exporters import LazyTensors
    from loragen_mobile.lora import load_peft_adapter, save_peft_adapter

    art = artifacts("onnx", "tiny-llama")
    _, ad = _adapter(model_dirs["tiny-llama"], seed=11)
    save_peft_adapter(ad, tmp_path / "adapter")
    path, size = build_bundle_file(art, tmp_path / "b.bundle", kind, adapter_dir=tmp_path / "adapter",
                                   sign_key=keys["dir"] / "server.pem")
    raw = build_bundle(art, load_peft_adapter(tmp_path / "adapter"), kind, private_key=keys["key"])
    assert path.read_bytes() == raw and size == len(raw)
    assert isinstance(read_base_tensors(art), LazyTensors)
    from_file, from_bytes = verify_bundle(path, art, keys["pub"]), verify_bundle(raw, art, keys["pub"])
    assert from_file.parsed.raw is None and from_file.manifest == from_bytes.manifest
    swap_file, swap_bytes = bundle_swap(from_file, art), bundle_swap(from_bytes, art)
    assert isinstance(swap_file, LazyTensors) and list(swap_file) == list(swap_bytes)
    for p in swap_bytes:
        assert torch.equal(swap_file[p], swap_bytes[p]), p
    # flip one byte of the last tensor after verification: reading the swap refuses it
    before = _digest(art)
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError) as e:
        dict(swap_file)
    assert e.value.code == "digest" and "after the bundle was verified" in str(e.value)
    with pytest.raises(BundleError) as e:
        apply_bundle(path, art, tmp_path / "special", keys["pub"])
    assert e.value.code in ("digest", "bad_signature") and not (tmp_path / "special").exists()
    assert _digest(art) == before


def test_onnx_runner_swaps_in_place(artifacts, model_dirs, keys, tmp_path):
    """A loaded ONNX session takes a bundle without loading again (the slots are optional graph
    inputs fed per run): merged (mapped from its verified file) and lora bundles (merged from the
    mapped artifact) give the eager merged model's tokens, exactly the logits of a runner opened
    with the same swap; swapping the artifact's own values back gives the base logits again; a bad
    swap leaves the base weights."""
    from loragen_mobile.exporters import get_exporter, read_artifact

    art = artifacts("onnx", "tiny-llama")
    assert read_artifact(art).meta["swap_inputs"] is True
    exp = get_exporter("onnx")
    model, ad = _adapter(model_dirs["tiny-llama"], seed=13)
    runner = exp.open_runner(art)
    assert runner.swaps_in_place
    base_logits = runner.prefill(PROMPT)
    for kind in ("merged", "lora"):
        write_bundle(build_bundle(art, ad, kind, private_key=keys["key"]), tmp_path / f"{kind}.bundle")
        vb = verify_bundle(tmp_path / f"{kind}.bundle", art, keys["pub"])
        runner.swap(bundle_swap(vb, art, mapped=True))
        diff, toks_ref, toks = _compare(runner, model, ad)
        assert diff <= 1e-4 and toks == toks_ref, kind
        runner.reset()
        reopened = exp.open_runner(art, swap=bundle_swap(vb, art))
        assert torch.equal(runner.prefill(PROMPT), reopened.prefill(PROMPT)), kind
    runner.swap(read_base_tensors(art))
    assert torch.equal(runner.prefill(PROMPT), base_logits)
    bad = {"model.layers.0.mlp.up_proj.weight": torch.full_like(read_base_tensors(art)["model.layers.0.mlp.up_proj.weight"], float("nan"))}
    with pytest.raises(LoragenError):
        runner.swap(bad)
    assert torch.equal(runner.prefill(PROMPT), base_logits)
    et = get_exporter("executorch").open_runner(artifacts("executorch", "tiny-llama"))
    with pytest.raises(LoragenError) as e:
        et.swap(read_base_tensors(art))
    assert e.value.code == "usage"


def test_coreml_swap_is_byte_identical_to_fresh_conversion(artifacts, model_dirs, keys, tmp_path):
    from loragen_mobile.exporters import get_exporter
    from loragen_mobile.exporters.coreml import WEIGHTS

    art = artifacts("coreml", "tiny-llama")
    before = _digest(art)
    model, ad = _adapter(model_dirs["tiny-llama"], seed=11)
    for kind in ("merged", "lora"):
        raw = build_bundle(art, ad, kind, private_key=keys["key"])
        out = tmp_path / f"special-{kind}"
        apply_bundle(raw, art, out, keys["pub"])
        # the artifact holds fp16 weights: the merged model is the fp16 base merged with one rounding
        model16 = lora.merge_into_model(load_model(model_dirs["tiny-llama"], dtype=torch.float16), ad)
        params = dict(model16.named_parameters())
        if kind == "merged":
            merged_dir = tmp_path / "merged-model"
            model16.save_pretrained(merged_dir)
            build_tokenizer().save_pretrained(merged_dir)
            fresh = tmp_path / "fresh"
            get_exporter("coreml").export(merged_dir, fresh, max_context=64, progress=False)
            assert (out / WEIGHTS).read_bytes() == (fresh / WEIGHTS).read_bytes()
        # every swapped weight read back equals the merged model's (lora kind: within fp16 rounding)
        back = read_base_tensors(out)
        assert set(back) == {f"{m}.weight" for m in ad.factors}
        for p, t in back.items():
            want = params[p].detach()
            if kind == "merged":
                assert torch.equal(t, want), p
            else:
                a, b = ad.factors[p[: -len(".weight")]]
                eps = torch.finfo(torch.float16).eps
                bound = 2 * eps * ad.scale * (b.abs() @ a.abs()) + eps * want.float().abs()
                assert ((t.float() - want.float()).abs() <= bound).all(), p
    assert _digest(art) == before


def _cli_err(capsys, argv, needle):
    assert main(argv) == 2
    lines = [ln for ln in capsys.readouterr().err.replace("\r", "\n").splitlines() if ln.startswith("loragen")]
    assert len(lines) == 1 and lines[0].startswith("loragen: error: ") and needle in lines[0], lines


def test_bundle_cli_round_trip_and_rejections(artifacts, model_dirs, keys, tmp_path, capsys):
    art = artifacts("executorch", "tiny-llama")
    other_art = artifacts("executorch", "tiny-gemma")
    onnx_art = artifacts("onnx", "tiny-llama")
    _, ad = _adapter(model_dirs["tiny-llama"])
    lora.save_peft_adapter(ad, tmp_path / "ad")
    k = keys["dir"]
    b = tmp_path / "a.bundle"
    assert main(["bundle", "build", "--artifact", str(art), "--adapter", str(tmp_path / "ad"), "--kind", "merged",
                 "--sign-key", str(k / "server.pem"), "--out", str(b)]) == 0
    assert main(["bundle", "verify", str(b), "--artifact", str(art), "--pubkey", str(k / "server.pub")]) == 0
    before = {p: _digest(p) for p in (art, other_art, onnx_art)}
    _cli_err(capsys, ["bundle", "verify", str(b), "--artifact", str(art), "--pubkey", str(k / "other.pub")],
             "signature does not verify")
    _cli_err(capsys, ["bundle", "verify", str(b), "--artifact", str(other_art), "--pubkey", str(k / "server.pub")],
             "bound to base fingerprint")
    _cli_err(capsys, ["bundle", "verify", str(b), "--artifact", str(onnx_art), "--pubkey", str(k / "server.pub")],
             "is for backend 'executorch', the artifact is 'onnx'")
    _cli_err(capsys, ["bundle", "verify", str(b), "--artifact", str(art)], "public key is required")
    raw = bytearray(b.read_bytes())
    raw[-3] ^= 0x10
    (tmp_path / "flipped.bundle").write_bytes(bytes(raw))
    _cli_err(capsys, ["bundle", "apply", str(tmp_path / "flipped.bundle"), "--artifact", str(art), "--pubkey",
                      str(k / "server.pub"), "--out", str(tmp_path / "never")], "signature does not verify")
    (tmp_path / "trunc.bundle").write_bytes(b.read_bytes()[:100])
    _cli_err(capsys, ["bundle", "verify", str(tmp_path / "trunc.bundle"), "--artifact", str(art), "--pubkey",
                      str(k / "server.pub")], "header length")
    _cli_err(capsys, ["bundle", "verify", str(tmp_path / "missing.bundle"), "--artifact", str(art), "--pubkey",
                      str(k / "server.pub")], "does not exist")
    _cli_err(capsys, ["bundle", "build", "--artifact", str(art), "--adapter", str(tmp_path / "ad"),
                      "--out", str(tmp_path / "x.bundle")], "--sign-key is required")
    _cli_err(capsys, ["bundle", "build", "--artifact", str(other_art), "--adapter", str(tmp_path / "ad"),
                      "--sign-key", str(k / "server.pem"), "--out", str(tmp_path / "y.bundle")],
             "made for model_type 'llama', the artifact is 'gemma'")
    assert not (tmp_path / "never").exists() and not (tmp_path / "x.bundle").exists()
    assert not (tmp_path / "y.bundle").exists()
    assert {p: _digest(p) for p in before} == before
    # apply + run with the bundle at load
    assert main(["bundle", "apply", str(b), "--artifact", str(art), "--pubkey", str(k / "server.pub"),
                 "--out", str(tmp_path / "special")]) == 0
    assert _digest(art) == before[art]
    capsys.readouterr()
    # the swap at load (run --bundle) and the applied artifact decode the same tokens, which are
    # the merged eager model's greedy tokens
    import json

    assert main(["run", "--artifact", str(art), "--bundle", str(b), "--pubkey", str(k / "server.pub"),
                 "--prompt", "Translate", "--raw", "--max-new-tokens", "8", "--json"]) == 0
    swapped = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["tokens"]
    assert main(["run", "--artifact", str(tmp_path / "special"), "--prompt", "Translate", "--raw", "--max-new-tokens", "8",
                 "--json"]) == 0
    applied = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["tokens"]
    model, _ = _adapter(model_dirs["tiny-llama"])
    merged = lora.merge_into_model(model, ad)
    assert swapped == applied == Reference(merged).generate(build_tokenizer()("Translate")["input_ids"], 8)
    _cli_err(capsys, ["run", "--artifact", str(art), "--bundle", str(tmp_path / "flipped.bundle"), "--pubkey",
                      str(k / "server.pub"), "--prompt", "x"], "signature does not verify")


def test_unsigned_bundle_needs_explicit_opt_in(artifacts, model_dirs, keys, tmp_path):
    art = artifacts("onnx", "tiny-llama")
    _, ad = _adapter(model_dirs["tiny-llama"])
    raw = build_bundle(art, ad, "lora")
    with pytest.raises(BundleError, match="public key is required"):
        verify_bundle(raw, art)
    with pytest.raises(BundleError, match="unsigned"):
        verify_bundle(raw, art, keys["pub"])
    assert verify_bundle(raw, art, require_signature=False).kind == "lora"
    p = write_bundle(raw, tmp_path / "u.bundle")
    with pytest.raises(Exception, match="already exists"):
        write_bundle(b"other", p)
    assert p.read_bytes() == raw


def _cli_code(capsys, argv, code):
    assert main(argv) == 2
    lines = [ln for ln in capsys.readouterr().err.replace("\r", "\n").splitlines() if ln.startswith("loragen")]
    assert len(lines) == 1 and lines[0].startswith(f"loragen: error: {code}: "), lines


def test_cli_signature_rule_bounds_and_determinism(artifacts, model_dirs, keys, tmp_path, capsys):
    """verify/apply/run: a signed bundle is always verified (--allow-unsigned admits only the
    all-zero signature), 'signed' is printed only after a verification that passed, oversized
    integers and out-of-bound values get one line with a code, and builds are reproducible."""
    import json
    import struct

    from loragen_mobile.bundle import format as fmt

    art = artifacts("executorch", "tiny-llama")
    before = _digest(art)
    _, ad = _adapter(model_dirs["tiny-llama"], seed=13)
    lora.save_peft_adapter(ad, tmp_path / "ad")
    k = keys["dir"]
    # the same inputs give the same bytes (no wall-clock time in the manifest)
    outs = []
    for i in range(2):
        outs.append(tmp_path / f"b{i}.bundle")
        assert main(["bundle", "build", "--artifact", str(art), "--adapter", str(tmp_path / "ad"), "--kind", "lora",
                     "--sign-key", str(k / "server.pem"), "--out", str(outs[-1])]) == 0
    assert outs[0].read_bytes() == outs[1].read_bytes()
    signed = outs[0]
    capsys.readouterr()
    assert main(["bundle", "verify", str(signed), "--artifact", str(art), "--pubkey", str(k / "server.pub")]) == 0
    assert "signed, signature verified" in capsys.readouterr().out
    # rewritten weights under the old signature
    pb = fmt.parse(signed.read_bytes())
    tensors = {n: pb.tensor(n) for n in pb.tensors}
    manifest = json.loads(json.dumps(pb.manifest))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] * 3
    from loragen_mobile.dtypes import tensor_sha256

    manifest["tensors"][name]["sha256"] = tensor_sha256(tensors[name])
    forged = bytearray(fmt.serialize(tensors, manifest))
    at = forged.index(fmt.UNSIGNED.encode(), 8)
    forged[at:at + 128] = pb.signature_hex.encode()
    (tmp_path / "forged.bundle").write_bytes(bytes(forged))
    f = str(tmp_path / "forged.bundle")
    _cli_code(capsys, ["bundle", "verify", f, "--artifact", str(art), "--allow-unsigned"], "key_required")
    _cli_code(capsys, ["bundle", "verify", f, "--artifact", str(art), "--allow-unsigned", "--pubkey", str(k / "server.pub")],
              "bad_signature")
    _cli_code(capsys, ["bundle", "apply", f, "--artifact", str(art), "--allow-unsigned", "--out", str(tmp_path / "never")],
              "key_required")
    _cli_code(capsys, ["run", "--artifact", str(art), "--bundle", f, "--allow-unsigned", "--prompt", "x"], "key_required")
    # the unsigned bundle is admitted with --allow-unsigned, and reported as UNSIGNED
    unsigned = tmp_path / "u.bundle"
    assert main(["bundle", "build", "--artifact", str(art), "--adapter", str(tmp_path / "ad"), "--kind", "lora",
                 "--unsigned", "--out", str(unsigned)]) == 0
    capsys.readouterr()
    assert main(["bundle", "verify", str(unsigned), "--artifact", str(art), "--allow-unsigned"]) == 0
    out = capsys.readouterr().out
    assert "UNSIGNED" in out and "signed," not in out
    # a 4301-digit integer in the header: one line with a code from verify, apply and run
    raw = signed.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    hb = raw[8:8 + n].rstrip()[:-1] + b',"zz":' + b"9" * 4301 + b"}"
    hb += b" " * (-len(hb) % 8)
    (tmp_path / "huge.bundle").write_bytes(struct.pack("<Q", len(hb)) + hb + raw[8 + n:])
    h = str(tmp_path / "huge.bundle")
    pub = ["--pubkey", str(k / "server.pub")]
    _cli_code(capsys, ["bundle", "verify", h, "--artifact", str(art), *pub], "header_json")
    _cli_code(capsys, ["bundle", "apply", h, "--artifact", str(art), *pub, "--out", str(tmp_path / "never")], "header_json")
    _cli_code(capsys, ["run", "--artifact", str(art), "--bundle", h, *pub, "--prompt", "x"], "header_json")
    # an adapter with a NaN factor is never signed
    t = lora.load_peft_adapter(tmp_path / "ad")
    m0 = sorted(t.factors)[0]
    t.factors[m0][1][0, 0] = float("nan")
    lora.save_peft_adapter(t, tmp_path / "ad-nan")
    _cli_code(capsys, ["bundle", "build", "--artifact", str(art), "--adapter", str(tmp_path / "ad-nan"), "--kind", "lora",
                       "--sign-key", str(k / "server.pem"), "--out", str(tmp_path / "nan.bundle")], "values")
    assert not (tmp_path / "never").exists() and not (tmp_path / "nan.bundle").exists()
    assert _digest(art) == before
